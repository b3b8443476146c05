//! End to end: lb in the middle of a cluster's own traffic. The static lab
//! ([`lb_lab::topology`]) has what a node has around lb: kubelet-style probes from the
//! node to every pod's serving port (running all along), a kube-proxy stand-in (nftables:
//! ClusterIP DNAT, the LoadBalancer IP intercepted for in-cluster clients, `ct state invalid
//! drop`) and an in-cluster client pod. lb must steer the external clients' flows and leave
//! everything else untouched. In order, on one topology:
//!
//! 1. Everyone at once: external HTTP/3 (migrating) and HTTP/1.1 through lb; the client pod
//!    through the ClusterIP and through the VIP (kube-proxy's path, HTTP/1.1 and HTTP/3);
//!    one pod talking to another on the serving port. Each backend must have seen the
//!    client's address it would see in a cluster.
//! 2. One pod port behind two IPv4 VIPs and an IPv6 one: QUIC with migration and TCP through
//!    each at once, and a connected UDP socket per VIP hearing the backend's answer from
//!    exactly the address it sent to.
//! 3. A backend's own traffic from its serving port (UDP and, with SO_REUSEPORT, TCP) leaves
//!    with the pod's address while the same port answers lb's clients from the VIP.
//! 4. `lb run` restarted under established connections: an HTTP/1.1 keep-alive connection and
//!    an HTTP/3 connection carry on afterwards (the reply table is rebuilt from the clients'
//!    next packets: identical Maglev rings, connection IDs naming their server).
//! 5. Every kubelet-style probe of the whole run succeeded.
//!
//! Needs root. `cargo test -p lb-tests --test e2e_cluster -- --test-threads=1 --nocapture`

mod support;

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_lab::{
    demo::{failures, parse_json_output, per_backend},
    packet::quic,
    probe::{H3Client, Trust, client_config},
    topology::{
        self, BACKEND_PORT_CID, CLIENT_ADDR, CLUSTER_IP, NONCE_LEN, Options, POD_CLIENT_ADDR,
        SERVER_ID_LEN, Topology, VIP_CID, VIP_PORT, backend_addr, server_id,
    },
};
use serde_json::Value;

/// A second IPv4 VIP and an IPv6 one in front of the same pods and port.
const VIP2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 102);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x100);
/// A VIP port whose backend (b1) is served by this test's own sockets.
const OWN_PORT: u16 = 9000;
/// Where b2 listens for b1's own connections.
const PEER_PORT: u16 = 7000;
const STEP: Duration = Duration::from_secs(5);

fn start() -> Topology {
    Topology::start(&Options {
        lb: support::lb().into(),
        lab: support::lab().into(),
        prefix: "lbk".into(),
        rust_log: None,
        remove_stale: true,
    })
    .unwrap_or_else(|e| panic!("building the end-to-end topology: {e:#}"))
}

/// The lab's config plus VIP2 and VIP6 in front of the same pods' port 8443 (same QUIC-LB
/// config), and VIP 198.18.0.100:9000 (TCP and UDP) in front of b1:9000.
fn config_with_more_vips() -> String {
    let mut s = Topology::config_text(&[1, 2, 3]);
    fn v4(n: u8) -> IpAddr {
        backend_addr(n).into()
    }
    fn v6(n: u8) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x19, n.into(), 0, 0, 0, 0, 0x10))
    }
    for (name, addr, family_addr) in [
        ("web-2", IpAddr::from(VIP2), v4 as fn(u8) -> IpAddr),
        ("web-6", IpAddr::from(VIP6), v6),
    ] {
        let _ = writeln!(
            s,
            "[[vips]]\nname = \"{name}\"\naddress = \"{addr}\"\nports = [{VIP_PORT}]\n\
             protocols = [\"tcp\", \"udp\"]\nmaglev_table_size = 1021\n\n\
             [[vips.quic_lb]]\nconfig_id = 0\nserver_id_len = {SERVER_ID_LEN}\n\
             nonce_len = {NONCE_LEN}\n"
        );
        for n in 1..=topology::BACKENDS {
            let _ = writeln!(
                s,
                "[[vips.backends]]\naddress = \"{}\"\nport = {BACKEND_PORT_CID}\nserver_id = \"{}\"\n",
                family_addr(n),
                server_id(n)
            );
        }
    }
    let _ = writeln!(
        s,
        "[[vips]]\nname = \"own\"\naddress = \"{VIP_CID}\"\nports = [{OWN_PORT}]\n\
         protocols = [\"tcp\", \"udp\"]\n\n[[vips.backends]]\naddress = \"{}\"\nport = {OWN_PORT}\n",
        backend_addr(1)
    );
    s
}

fn daemon_log(topo: &Topology) -> String {
    format!("--- lb run log ---\n{}", topo.log("lb-run"))
}

/// `lb-lab probe h3` from `cmd`'s namespace to `target`, JSON out.
fn h3(mut cmd: Command, target: SocketAddr, n: usize, migrate: bool) -> Command {
    cmd.args(["probe", "h3", "--target", &target.to_string()])
        .args(["--insecure", "--connections", &n.to_string()])
        .args(["--requests-per-phase", "2", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if migrate {
        cmd.arg("--migrate");
    }
    cmd
}

/// `lb-lab probe http1` from `cmd`'s namespace to `target`, JSON out.
fn http1(mut cmd: Command, target: SocketAddr, n: usize) -> Command {
    cmd.args(["probe", "http1", "--target", &target.to_string()])
        .args(["--requests", &n.to_string(), "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    cmd
}

/// Start every command at once, then collect their JSON reports (in order).
fn all_at_once(topo: &Topology, cmds: Vec<(&'static str, Command)>) -> Vec<(&'static str, Value)> {
    let children: Vec<_> = cmds
        .into_iter()
        .map(|(what, mut c)| (what, c.spawn().unwrap_or_else(|e| panic!("{what}: {e}"))))
        .collect();
    children
        .into_iter()
        .map(|(what, c)| {
            let out = c.wait_with_output().unwrap();
            let v = parse_json_output(&out, what)
                .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon_log(topo)));
            (what, v)
        })
        .collect()
}

/// Connections (h3) or requests (http1) a probe made.
fn attempted(v: &Value) -> usize {
    v["connections"]
        .as_u64()
        .or(v["requests"].as_u64())
        .unwrap_or(0) as usize
}

fn assert_all_ok(what: &str, v: &Value, n: usize) {
    assert_eq!(
        v["succeeded"].as_u64(),
        Some(n as u64),
        "{what}: {} of {n} succeeded ({}): {}",
        v["succeeded"],
        failures(v),
        v["failures"]
    );
}

/// The client addresses the backends reported, without ports.
fn clients_seen(v: &Value) -> BTreeSet<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["client"].as_str().or(r["client_before"].as_str()))
        .filter_map(|c| c.parse::<SocketAddr>().ok())
        .map(|a| a.ip().to_string())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A QUIC long header of an unknown version, padded past 1200 octets: any QUIC server answers
/// it with Version Negotiation, which a connected socket receives only from the address it
/// is connected to.
fn version_negotiation_probe(ns: &lb_lab::netns::NetNs, vip: SocketAddr) -> Result<(), String> {
    let sock = ns
        .run_in(|| {
            let bind: SocketAddr = if vip.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            UdpSocket::bind(bind)
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    sock.connect(vip).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let pkt = quic::Long::new(quic::LongType::Initial, &[0xd1; 8], &[0x5c; 8])
        .version(0x1a2a_3a4a)
        .payload_len(1250)
        .build();
    let mut buf = [0u8; 1500];
    // UDP may lose one; a few tries, each bounded.
    for _ in 0..5 {
        sock.send(&pkt).map_err(|e| e.to_string())?;
        if let Ok(n) = sock.recv(&mut buf) {
            // Version Negotiation: long header, version 0.
            return if n > 5 && buf[0] & 0x80 != 0 && buf[1..5] == [0, 0, 0, 0] {
                Ok(())
            } else {
                Err(format!(
                    "an answer that is not Version Negotiation: {:02x?}",
                    &buf[..n.min(16)]
                ))
            };
        }
    }
    Err(format!("no answer from {vip} on a socket connected to it"))
}

#[test]
fn e2e_lb_leaves_the_clusters_own_traffic_alone() {
    let t0 = Instant::now();
    let mut topo = start();
    eprintln!("e2e: topology up in {:.1}s", t0.elapsed().as_secs_f64());
    topo.write_config_text(&config_with_more_vips()).unwrap();
    let out = topo.reload().unwrap();
    assert!(
        out.status.success(),
        "reload with more VIPs: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // (1) Everyone at once.
    let vip = SocketAddr::new(VIP_CID.into(), VIP_PORT);
    let cluster_ip = SocketAddr::new(CLUSTER_IP.into(), VIP_PORT);
    let b2 = SocketAddr::new(backend_addr(2).into(), BACKEND_PORT_CID);
    let client = || topo.client_lab().unwrap();
    let pod = || topo.pod.command(&topo.lab).unwrap();
    let b1 = || topo.backends[0].command(&topo.lab).unwrap();
    let reports = all_at_once(
        &topo,
        vec![
            (
                "external HTTP/3, migrating, via lb",
                h3(client(), vip, 30, true),
            ),
            ("external HTTP/1.1 via lb", http1(client(), vip, 30)),
            (
                "pod HTTP/1.1 via the ClusterIP",
                http1(pod(), cluster_ip, 30),
            ),
            (
                "pod HTTP/1.1 via the VIP (kube-proxy)",
                http1(pod(), vip, 30),
            ),
            (
                "pod HTTP/3 via the VIP (kube-proxy)",
                h3(pod(), vip, 10, false),
            ),
            ("pod b1 to pod b2's serving port", http1(b1(), b2, 20)),
        ],
    );
    let node_side: Vec<String> = (1..=topology::BACKENDS)
        .map(|n| format!("198.19.{n}.1"))
        .collect();
    for (what, v) in &reports {
        let n = attempted(v);
        assert_all_ok(what, v, n);
        let seen = clients_seen(v);
        eprintln!(
            "e2e: {what}: {}/{n}, {} (clients {seen:?})",
            v["succeeded"],
            per_backend(v)
        );
        match *what {
            // lb keeps the client's address.
            w if w.starts_with("external") => {
                assert_eq!(seen, set(&[&CLIENT_ADDR.to_string()]), "{what}")
            }
            // kube-proxy: pod sources to a ClusterIP are not masqueraded...
            "pod HTTP/1.1 via the ClusterIP" => {
                assert_eq!(seen, set(&[&POD_CLIENT_ADDR.to_string()]), "{what}")
            }
            // ...traffic to an external destination (the LoadBalancer IP) is, to the node's
            // address on the pod's link: proof that kube-proxy, not lb, carried it.
            w if w.contains("(kube-proxy)") => assert!(
                seen.iter().all(|s| node_side.contains(s)),
                "{what}: {seen:?}"
            ),
            _ => assert_eq!(seen, set(&["198.19.1.10"]), "{what}"),
        }
    }

    // (2) One pod port behind VIP, VIP2 and VIP6.
    let vips = [
        SocketAddr::new(VIP_CID.into(), VIP_PORT),
        SocketAddr::new(VIP2.into(), VIP_PORT),
        SocketAddr::new(VIP6.into(), VIP_PORT),
    ];
    let mut cmds = Vec::new();
    for (i, v) in vips.iter().enumerate() {
        let names = [
            ("QUIC via VIP, migrating", "TCP via VIP"),
            ("QUIC via VIP2, migrating", "TCP via VIP2"),
            ("QUIC via VIP6, migrating", "TCP via VIP6"),
        ][i];
        cmds.push((names.0, h3(client(), *v, 20, true)));
        cmds.push((names.1, http1(client(), *v, 20)));
    }
    for (what, v) in all_at_once(&topo, cmds) {
        let n = attempted(&v);
        assert_all_ok(what, &v, n);
        if what.starts_with("QUIC") {
            assert_eq!(
                v["survived"].as_u64(),
                Some(n as u64),
                "{what}: {}",
                failures(&v)
            );
        }
        eprintln!("e2e: {what}: {}/{n}, {}", v["succeeded"], per_backend(&v));
    }
    for v in vips {
        version_negotiation_probe(&topo.client, v)
            .unwrap_or_else(|e| panic!("{v}: {e}\n{}", daemon_log(&topo)));
    }
    eprintln!("e2e: a socket connected to each of {vips:?} heard the backend from that address");

    // (3) The backend's own traffic from its serving port.
    own_port_step(&topo);

    // (4) Restart under established connections.
    restart_step(&mut topo);

    // (5) The probes, all along.
    let probes = topo.prober.as_ref().unwrap().wait_rounds(2);
    assert!(
        probes.all_ok(),
        "kubelet-style probes: {}",
        probes.summary()
    );
    eprintln!("e2e: kubelet-style probes: {}", probes.summary());
    let m = topo.metrics().unwrap();
    let not_steered = sample(&m, "lb_rnat_packets_total{reason=\"pass_not_steered\"}");
    let rewritten = sample(&m, "lb_rnat_packets_total{reason=\"rewritten\"}");
    assert!(
        not_steered > 0 && rewritten > 0,
        "{not_steered} {rewritten}"
    );
    eprintln!(
        "e2e: reverse NAT (since the restart): {rewritten} replies of steered flows rewritten, \
         {not_steered} other packets from pods left alone"
    );
    drop(topo);
    eprintln!("e2e: done in {:.1}s", t0.elapsed().as_secs_f64());
}

fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// b1's port 9000 answers lb's clients (VIP 198.18.0.100:9000) while the same socket talks to
/// b2 with b1's own address. UDP on one socket; TCP on two sockets sharing the port
/// (SO_REUSEPORT), a listener and an outbound connection.
fn own_port_step(topo: &Topology) {
    let own = SocketAddr::new(backend_addr(1).into(), OWN_PORT);
    let peer = SocketAddr::new(backend_addr(2).into(), PEER_PORT);
    let vip = SocketAddr::new(VIP_CID.into(), OWN_PORT);
    let (b1, b2) = (&topo.backends[0], &topo.backends[1]);
    let in_ns = |ns: &lb_lab::netns::NetNs, bind: SocketAddr| {
        ns.run_in(|| UdpSocket::bind(bind)).unwrap().unwrap()
    };
    // UDP.
    let server = in_ns(b1, own);
    let peer_sock = in_ns(b2, peer);
    let client = in_ns(&topo.client, "0.0.0.0:0".parse().unwrap());
    for s in [&server, &peer_sock, &client] {
        s.set_read_timeout(Some(STEP)).unwrap();
    }
    client.connect(vip).unwrap();
    let mut buf = [0u8; 64];
    client.send(b"ping").unwrap();
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("b1 got nothing through the VIP");
    assert_eq!(
        (&buf[..n], from.ip()),
        (&b"ping"[..], IpAddr::from(CLIENT_ADDR))
    );
    server.send_to(b"pong", from).unwrap();
    let n = client
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("the client (connected to {vip}) got no answer: {e}"));
    assert_eq!(&buf[..n], b"pong");
    // The same socket, on its own account.
    server.send_to(b"hello b2", peer).unwrap();
    let (n, from) = peer_sock
        .recv_from(&mut buf)
        .expect("b2 got nothing from b1");
    assert_eq!(
        (&buf[..n], from),
        (&b"hello b2"[..], own),
        "b1's own datagram was rewritten"
    );
    peer_sock.send_to(b"hello b1", from).unwrap();
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("b1 got no answer from b2");
    assert_eq!((&buf[..n], from), (&b"hello b1"[..], peer));
    // TCP: a listener and an outbound connection on b1:9000.
    let listener = b1.run_in(|| reuseport_tcp(own, None)).unwrap();
    let peer_listener = b2
        .run_in(|| std::net::TcpListener::bind(peer))
        .unwrap()
        .unwrap();
    let mut c = topo
        .client
        .run_in(|| std::net::TcpStream::connect_timeout(&vip, STEP))
        .unwrap()
        .unwrap_or_else(|e| panic!("connecting to {vip}: {e}"));
    let (mut accepted, from) = listener.accept().unwrap();
    assert_eq!(from.ip(), IpAddr::from(CLIENT_ADDR));
    roundtrip(&mut c, &mut accepted, "through the VIP");
    let mut out = b1.run_in(|| reuseport_tcp(own, Some(peer))).unwrap();
    let (mut theirs, from) = peer_listener.accept().unwrap();
    assert_eq!(
        from, own,
        "b1's own connection arrived from {from}, not its address"
    );
    roundtrip(&mut out, &mut theirs, "b1's own connection");
    eprintln!(
        "e2e: b1:{OWN_PORT} answered a client through {vip} and talked to b2 as {own} (UDP and TCP)"
    );
}

/// A TCP socket with SO_REUSEPORT bound to `addr`: listening, or connected to `to`.
fn reuseport_tcp(addr: SocketAddr, to: Option<SocketAddr>) -> ReuseportTcp {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr is built for IPv4.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
        }
        let sin = |a: SocketAddr| {
            let SocketAddr::V4(a) = a else {
                panic!("IPv4 only")
            };
            libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            }
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sin(addr);
        let rc = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "bind {addr}: {}", std::io::Error::last_os_error());
        match to {
            None => {
                assert_eq!(
                    libc::listen(fd, 8),
                    0,
                    "listen: {}",
                    std::io::Error::last_os_error()
                );
                ReuseportTcp::Listener(std::net::TcpListener::from_raw_fd(fd))
            }
            Some(peer) => {
                let remote = sin(peer);
                let rc = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
                assert_eq!(rc, 0, "connect {peer}: {}", std::io::Error::last_os_error());
                ReuseportTcp::Stream(std::net::TcpStream::from_raw_fd(fd))
            }
        }
    }
}

enum ReuseportTcp {
    Listener(std::net::TcpListener),
    Stream(std::net::TcpStream),
}

impl ReuseportTcp {
    fn accept(&self) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
        match self {
            ReuseportTcp::Listener(l) => l.accept(),
            ReuseportTcp::Stream(_) => panic!("test bug: accept on a connected socket"),
        }
    }
}

impl Read for ReuseportTcp {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ReuseportTcp::Stream(s) => s.read(buf),
            ReuseportTcp::Listener(_) => panic!("test bug: read on a listener"),
        }
    }
}

impl Write for ReuseportTcp {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            ReuseportTcp::Stream(s) => s.write(buf),
            ReuseportTcp::Listener(_) => panic!("test bug: write on a listener"),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A few octets each way; both ends bounded by STEP.
fn roundtrip(a: &mut (impl Read + Write), b: &mut std::net::TcpStream, what: &str) {
    b.set_read_timeout(Some(STEP)).unwrap();
    a.write_all(b"question").unwrap();
    let mut buf = [0u8; 8];
    b.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: nothing arrived: {e}"));
    assert_eq!(&buf, b"question", "{what}");
    b.write_all(b"answer!!").unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + STEP;
    while got.len() < 8 && Instant::now() < deadline {
        let mut chunk = [0u8; 8];
        match a.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("{what}: no answer: {e}"),
        }
    }
    assert_eq!(got, b"answer!!", "{what}");
}

/// `lb run` stopped and started again while an HTTP/1.1 keep-alive connection and an HTTP/3
/// connection are open: both carry on, on the same backend.
fn restart_step(topo: &mut Topology) {
    let vip = SocketAddr::new(VIP_CID.into(), VIP_PORT);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut tcp = support::lab_process::KeepAlive::open(&topo.client, vip);
    let before_tcp = tcp.get().unwrap_or_else(|e| panic!("keep-alive GET: {e}"));
    let mut quic = topo
        .client
        .run_in(|| {
            rt.block_on(H3Client::connect(
                SocketAddr::new(CLIENT_ADDR.into(), 0),
                vip,
                "localhost",
                client_config(&Trust::Insecure).unwrap(),
                STEP,
            ))
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("HTTP/3 connection: {e}"));
    let before_quic = rt
        .block_on(quic.whoami("/before-restart", STEP))
        .unwrap_or_else(|e| panic!("HTTP/3 request: {e}"));
    let t = Instant::now();
    let (status, log) = topo.stop_daemon().unwrap();
    assert!(status.success(), "lb run exited with {status}:\n{log}");
    let started = topo
        .start_daemon()
        .unwrap_or_else(|e| panic!("restarting lb run: {e:#}"));
    let down = t.elapsed();
    let after_tcp = tcp.get().unwrap_or_else(|e| {
        panic!(
            "the keep-alive connection broke across the restart: {e}\n{}",
            daemon_log(topo)
        )
    });
    let after_quic = rt
        .block_on(quic.whoami("/after-restart", STEP))
        .unwrap_or_else(|e| {
            panic!(
                "the HTTP/3 connection broke across the restart: {e}\n{}",
                daemon_log(topo)
            )
        });
    assert_eq!(
        (
            after_tcp.name.as_str(),
            after_tcp.client,
            after_tcp.requests_on_connection
        ),
        (before_tcp.name.as_str(), before_tcp.client, 2)
    );
    assert_eq!(after_quic.name, before_quic.name);
    assert_eq!(
        after_quic.requests_on_connection,
        before_quic.requests_on_connection + 1
    );
    eprintln!(
        "e2e: restart (stop, start: {} ms, of which start {} ms): the keep-alive TCP connection \
         to {} and the HTTP/3 connection to {} carried on",
        down.as_millis(),
        started.as_millis(),
        after_tcp.name,
        after_quic.name
    );
    rt.block_on(quic.close(Duration::ZERO));
}
