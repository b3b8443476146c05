//! End to end across two nodes: the VIP enters node A, whose XDP program DNATs packets for a
//! backend behind node B and forwards them through the FIB (next hop: B); B forwards them
//! like any router; the replies come back through A, whose reverse NAT makes them come from
//! the VIP. A local backend behind A shows both paths on one VIP.
//!
//! ```text
//!  client           node A (lb run)                      node B (router)          b1
//!  c0 198.18.0.2 ── ext0 198.18.0.1   tr0 198.18.5.1 ── tr0 198.18.5.2
//!                   (XDP, ARP for VIP) (reverse NAT)     (pass-all XDP)
//!                                                        be1 198.19.1.1 ──── eth0 198.19.1.10
//!                   be0 198.19.0.1 ── eth0 198.19.0.10 (b0, pass-all XDP)
//!                   (reverse NAT)
//! ```
//!
//! - VIP 198.18.0.100:443, TCP and UDP, QUIC routed by connection ID (config 0, plaintext,
//!   server ID 2 octets, nonce 6); backends b0 198.19.0.10:8443 (server ID 0a00, behind A)
//!   and b1 198.19.1.10:8443 (server ID 0a01, behind B).
//! - A: route 198.19.1.0/24 via 198.18.5.2. B: route 198.18.0.0/24 via 198.18.5.1, forwarding
//!   on. b1's default route is B. rp_filter 0 on A and B. No SNAT anywhere.
//! - XDP_REDIRECT into a veth only delivers when the peer has an XDP program, so B's tr0 and
//!   b0's eth0 run `lb attach` (empty maps: passes everything).
//!
//! Asserted: every HTTP/3 connection succeeds and survives a migration, HTTP/1.1 works, both
//! backends answer, the backends saw the client's real address, a packet capture on the
//! client shows replies from the VIP and none from a backend address, node A's counters show
//! `redirect` (and no `tx`, no passes to the kernel) for the VIP and reverse-NAT rewrites,
//! and node B forwarded at least as many packets as A steered to b1.
//!
//! Around lb, what a cluster has: kubelet-style probes (TCP connect and HTTP GET every
//! 100 ms, [`lb_lab::prober`]) from A to b0:8443 and from B to b1:8443 for the whole
//! test, and, while the VIP's HTTP/1.1 traffic flows, requests straight to the same ports
//! from B to b1, from A to b0 and from A to b1 (its replies cross A's reverse NAT on tr0).
//! All of them must be answered by the backend itself, never from the VIP.
//!
//! Needs root. `cargo test -p lb-tests --test e2e_two_nodes -- --test-threads=1 --nocapture`

mod support;

use lb_lab::children::Proc;
use support::capture::Capture;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_lab::{
    backend::Whoami,
    demo::{failures, parse_json_output, per_backend},
    netns::{self, Mac, NetNs, veth_pair},
    prober::{PROBE_EVERY, Prober, Target},
    topology,
};
use serde_json::Value;

const PREFIX: &str = "lb2n";
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const VIP_PORT: u16 = 443;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const BACKEND_PORT: u16 = 8443;
const METRICS_ADDR: &str = "127.0.0.1:9465";
/// HTTP/3 connections per probe: with two backends, Maglev misses one of them with
/// probability 2 * 2^-N.
const H3_CONNECTIONS: usize = 20;
const HTTP1_REQUESTS: usize = 20;
const START_DEADLINE: Duration = Duration::from_secs(30);

const MAC_CLIENT: Mac = [0x02, 0x18, 0x00, 0x00, 0x00, 0x02];
const MAC_A_EXT: Mac = [0x02, 0x18, 0x00, 0x00, 0x00, 0x01];
const MAC_A_TR: Mac = [0x02, 0x18, 0x05, 0x00, 0x00, 0x01];
const MAC_B_TR: Mac = [0x02, 0x18, 0x05, 0x00, 0x00, 0x02];
const MAC_A_BE0: Mac = [0x02, 0x19, 0x00, 0x00, 0x00, 0x01];
const MAC_B0: Mac = [0x02, 0x19, 0x00, 0x00, 0x00, 0x10];
const MAC_B_BE1: Mac = [0x02, 0x19, 0x01, 0x00, 0x00, 0x01];
const MAC_B1: Mac = [0x02, 0x19, 0x01, 0x00, 0x00, 0x10];

/// The two-node network. Drop stops the probes and the children (SIGTERM, then SIGKILL),
/// then the namespaces (fields) go, with every veth in them, and the temporary directory.
struct TwoNodes {
    /// kubelet's probes: from A of b0:8443, from B of b1:8443.
    probers: Vec<Prober>,
    procs: Vec<Proc>,
    dir: PathBuf,
    client: NetNs,
    node_a: NetNs,
    node_b: NetNs,
    b0: NetNs,
    b1: NetNs,
}

impl TwoNodes {
    fn start() -> TwoNodes {
        netns::require_root().unwrap_or_else(|e| panic!("{e:#}"));
        for p in ["c", "a", "b", "0", "1"] {
            let _ = netns::remove_stale(&format!("{PREFIX}{p}"));
        }
        let dir = std::env::temp_dir().join(format!("{PREFIX}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ns = |p: &str| {
            NetNs::create(&format!("{PREFIX}{p}")).unwrap_or_else(|e| panic!("netns: {e:#}"))
        };
        let mut t = TwoNodes {
            probers: Vec::new(),
            procs: Vec::new(),
            dir,
            client: ns("c"),
            node_a: ns("a"),
            node_b: ns("b"),
            b0: ns("0"),
            b1: ns("1"),
        };
        t.wire()
            .unwrap_or_else(|e| panic!("building the network: {e:#}"));
        t.start_processes()
            .unwrap_or_else(|e| panic!("starting the processes: {e:#}"));
        t
    }

    fn wire(&self) -> anyhow::Result<()> {
        let (c, a, b, b0, b1) = (&self.client, &self.node_a, &self.node_b, &self.b0, &self.b1);
        // client ↔ A
        veth_pair(c, "c0", MAC_CLIENT, a, "ext0", MAC_A_EXT)?;
        c.addr_add("c0", "198.18.0.2/24")?;
        a.addr_add("ext0", "198.18.0.1/24")?;
        a.neigh_add(IpAddr::V4(CLIENT), MAC_CLIENT, "ext0")?;
        // A ↔ B (transit)
        veth_pair(a, "tr0", MAC_A_TR, b, "tr0", MAC_B_TR)?;
        a.addr_add("tr0", "198.18.5.1/24")?;
        b.addr_add("tr0", "198.18.5.2/24")?;
        a.neigh_add("198.18.5.2".parse()?, MAC_B_TR, "tr0")?;
        b.neigh_add("198.18.5.1".parse()?, MAC_A_TR, "tr0")?;
        a.route_add("198.19.1.0/24", Some("198.18.5.2"), Some("tr0"))?;
        b.route_add("198.18.0.0/24", Some("198.18.5.1"), Some("tr0"))?;
        // A ↔ b0 (local backend)
        veth_pair(a, "be0", MAC_A_BE0, b0, "eth0", MAC_B0)?;
        a.addr_add("be0", "198.19.0.1/24")?;
        b0.addr_add("eth0", "198.19.0.10/24")?;
        a.neigh_add("198.19.0.10".parse()?, MAC_B0, "be0")?;
        b0.neigh_add("198.19.0.1".parse()?, MAC_A_BE0, "eth0")?;
        b0.route_add("default", Some("198.19.0.1"), Some("eth0"))?;
        // B ↔ b1 (remote backend)
        veth_pair(b, "be1", MAC_B_BE1, b1, "eth0", MAC_B1)?;
        b.addr_add("be1", "198.19.1.1/24")?;
        b1.addr_add("eth0", "198.19.1.10/24")?;
        b.neigh_add("198.19.1.10".parse()?, MAC_B1, "be1")?;
        b1.neigh_add("198.19.1.1".parse()?, MAC_B_BE1, "eth0")?;
        b1.route_add("default", Some("198.19.1.1"), Some("eth0"))?;
        for (n, ifaces) in [(a, &["ext0", "tr0", "be0"][..]), (b, &["tr0", "be1"][..])] {
            n.sysctl("net.ipv4.ip_forward", "1")?;
            for i in ["all", "default"].iter().chain(ifaces) {
                n.sysctl(&format!("net/ipv4/conf/{i}/rp_filter"), "0")?;
            }
        }
        Ok(())
    }

    fn config_text() -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Written by lb's two-node end-to-end test.\n\
             interfaces = [\"ext0\"]\n\
             backend_interfaces = [\"tr0\", \"be0\"]\n\
             metrics_addr = \"{METRICS_ADDR}\"\n\n\
             [[vips]]\n\
             name = \"web\"\n\
             address = \"{VIP}\"\n\
             ports = [{VIP_PORT}]\n\
             protocols = [\"tcp\", \"udp\"]\n\
             maglev_table_size = 1021\n\n\
             [[vips.quic_lb]]\n\
             config_id = 0\n\
             server_id_len = 2\n\
             nonce_len = 6\n"
        );
        for n in 0..2u8 {
            let _ = writeln!(
                s,
                "[[vips.backends]]\naddress = \"198.19.{n}.10\"\nport = {BACKEND_PORT}\nserver_id = \"0a{n:02x}\"\n"
            );
        }
        s
    }

    fn spawn(&mut self, what: &str, cmd: Command) -> anyhow::Result<usize> {
        self.procs.push(Proc::spawn(&self.dir, what, cmd, "info")?);
        Ok(self.procs.len() - 1)
    }

    fn start_processes(&mut self) -> anyhow::Result<()> {
        let mut waits = Vec::new();
        // XDP_REDIRECT targets need an XDP program on the veth peer.
        let targets = [
            ("xdp-pass-nodeb", "tr0", self.node_b.name().to_string()),
            ("xdp-pass-b0", "eth0", self.b0.name().to_string()),
        ];
        for (what, iface, ns) in targets {
            let mut attach = Command::new(support::lb());
            attach.args(["attach", "--iface", iface, "--netns", &ns]);
            waits.push((self.spawn(what, attach)?, "attached lb_xdp"));
        }
        for n in 0..2u8 {
            let ns = if n == 0 { &self.b0 } else { &self.b1 };
            let mut be = ns.command(support::lab())?;
            be.args([
                "backend",
                "--listen",
                &format!("198.19.{n}.10:{BACKEND_PORT}"),
            ])
            .args([
                "--name",
                &format!("b{n}"),
                "--server-id",
                &format!("0a{n:02x}"),
            ])
            .args(["--server-id-len", "2", "--nonce-len", "6", "--cr-bits", "0"])
            .args(["--sni-names", "localhost,198.18.0.100"]);
            waits.push((
                self.spawn(&format!("backend-b{n}"), be)?,
                "certificate sha256",
            ));
        }
        let deadline = Instant::now() + START_DEADLINE;
        for (i, marker) in waits.drain(..) {
            self.wait_for_line(i, marker, deadline)?;
        }
        // kubelet probes the pods from before lb starts: its start-up must not cost a probe.
        for (name, n) in [("b0", 0u8), ("b1", 1)] {
            let ns = if n == 0 { &self.node_a } else { &self.node_b };
            let target = Target {
                name: name.into(),
                addr: backend(n),
            };
            self.probers
                .push(Prober::start(ns.path(), vec![target], PROBE_EVERY)?);
        }
        let config = self.dir.join("lb.toml");
        std::fs::write(&config, Self::config_text())?;
        let mut run = Command::new(support::lb());
        run.arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--netns", self.node_a.name()])
            .arg("--control-socket")
            .arg(self.dir.join("lb.sock"));
        waits.push((self.spawn("lb-run", run)?, "lb: running"));
        let deadline = Instant::now() + START_DEADLINE;
        for (i, marker) in waits {
            self.wait_for_line(i, marker, deadline)?;
        }
        Ok(())
    }

    fn wait_for_line(&mut self, i: usize, marker: &str, deadline: Instant) -> anyhow::Result<()> {
        self.procs[i].wait_for_line(marker, deadline)
    }

    fn log(&self, what: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{what}.log"))).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            let _ = writeln!(s, "--- {} ---\n{}", p.what, self.log(&p.what));
        }
        s
    }

    fn client_lab(&self) -> Command {
        let mut cmd = self.client.command(support::lab()).unwrap();
        cmd.stdin(Stdio::null());
        cmd
    }

    fn run_json(&self, mut cmd: Command, what: &str) -> Value {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {what}: {e}"));
        parse_json_output(&out, what).unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()))
    }
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        // First, so no probe sees the backends go.
        self.probers.clear();
        topology::stop_children(
            self.procs
                .iter_mut()
                .rev()
                .map(|p| (p.what.as_str(), &mut p.child)),
        );
        self.procs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `Ip: ForwDatagrams` of the namespace (packets the kernel forwarded).
fn forwarded(ns: &NetNs) -> u64 {
    let snmp = ns
        .run_in(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .unwrap()
        .unwrap();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(k, _)| *k == "ForwDatagrams")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap()
}

/// GET /metrics from the daemon, inside `ns`.
fn metrics_in(ns: &NetNs) -> String {
    let addr: SocketAddr = METRICS_ADDR.parse().unwrap();
    topology::http_get_in(ns, addr, "/metrics")
        .unwrap_or_else(|e| panic!("/metrics of node A at {addr}: {e:#}"))
}

/// Backend `n`'s serving port (b0 behind A, b1 behind B).
fn backend(n: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 19, n, 10)), BACKEND_PORT)
}

/// A GET from inside `ns` (whose address toward the backend is `from`) straight to backend
/// `n`: it must be answered by the backend itself, having seen `from`.
fn direct_get(topo: &TwoNodes, ns: &NetNs, from: Ipv4Addr, n: u8) -> Result<Whoami, String> {
    let body = topology::http_get_in(ns, backend(n), "/direct")
        .map_err(|e| format!("GET http://{}/direct from {from}: {e:#}", backend(n)))?;
    let who = Whoami::parse(&body).map_err(|e| format!("{e}: {body:?}"))?;
    if who.name != format!("b{n}") || who.client.ip() != IpAddr::V4(from) {
        return Err(format!(
            "GET http://{}/direct from {from}: answered {who:?}\n{}",
            backend(n),
            topo.logs()
        ));
    }
    Ok(who)
}

fn backends_of(v: &Value) -> BTreeSet<String> {
    v["per_backend"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn both() -> BTreeSet<String> {
    ["b0", "b1"].into_iter().map(String::from).collect()
}

fn client_ip(s: &Value) -> Option<IpAddr> {
    s.as_str()?.parse::<SocketAddr>().ok().map(|a| a.ip())
}

#[test]
fn e2e_two_nodes_vip_on_a_backend_behind_b() {
    let t0 = Instant::now();
    let topo = TwoNodes::start();
    eprintln!(
        "two-nodes: topology up in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let forwarded_b_before = forwarded(&topo.node_b);
    let capture = Capture::start(&topo.client, "c0");

    // HTTP/3: N connections, 2 requests, migrate to a new port, 2 more.
    let mut h3 = topo.client_lab();
    h3.args(["probe", "h3", "--target", &format!("{VIP}:{VIP_PORT}")])
        .args(["--insecure", "--connections", &H3_CONNECTIONS.to_string()])
        .args(["--requests-per-phase", "2", "--migrate", "--json"]);
    let h3 = topo.run_json(h3, "probe h3 --migrate");
    let n = H3_CONNECTIONS as u64;
    for k in ["succeeded", "migrated", "survived"] {
        assert_eq!(
            h3[k].as_u64(),
            Some(n),
            "h3 {k}: {} of {n} ({}): {}\n{}",
            h3[k],
            failures(&h3),
            h3["failures"],
            topo.logs()
        );
    }
    assert_eq!(backends_of(&h3), both(), "h3 spread: {}", per_backend(&h3));
    for r in h3["results"].as_array().unwrap() {
        assert_eq!(r["backend_before"], r["backend_after"], "{r}");
        assert_eq!(r["server_id_before"], r["server_id_after"], "{r}");
        // DNAT only: the backend saw the client's own address, before and after migration.
        assert_eq!(
            client_ip(&r["client_before"]),
            Some(IpAddr::V4(CLIENT)),
            "{r}"
        );
        assert_eq!(
            client_ip(&r["client_after"]),
            Some(IpAddr::V4(CLIENT)),
            "{r}"
        );
        assert_ne!(r["client_before"], r["client_after"], "{r}");
    }
    eprintln!(
        "two-nodes: h3 {}/{} survived migration; {}",
        h3["survived"],
        h3["migrated"],
        per_backend(&h3)
    );

    // HTTP/1.1 over TCP on the same VIP and port. Meanwhile the nodes reach the same
    // backend ports directly, as a cluster does (kubelet, other pods, node-local clients):
    // B to b1 (lb is not on that path), A to b0 and A to b1 (their replies cross A's
    // reverse NAT, on be0 and tr0, which must leave them alone).
    let mut http1 = topo.client_lab();
    http1
        .args(["probe", "http1", "--target", &format!("{VIP}:{VIP_PORT}")])
        .args(["--requests", &HTTP1_REQUESTS.to_string(), "--json"]);
    let running = std::thread::spawn(move || http1.output());
    let direct = [
        (
            "node B to b1",
            &topo.node_b,
            Ipv4Addr::new(198, 19, 1, 1),
            1,
        ),
        (
            "node A to b0",
            &topo.node_a,
            Ipv4Addr::new(198, 19, 0, 1),
            0,
        ),
        (
            "node A to b1",
            &topo.node_a,
            Ipv4Addr::new(198, 18, 5, 1),
            1,
        ),
    ];
    let mut direct_rounds = 0u32;
    loop {
        for (what, ns, from, n) in &direct {
            if let Err(e) = direct_get(&topo, ns, *from, *n) {
                panic!("{what}, while the VIP's traffic flows: {e}");
            }
        }
        direct_rounds += 1;
        if running.is_finished() {
            break;
        }
    }
    let out = running
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("running probe http1: {e}"));
    let http1 =
        parse_json_output(&out, "probe http1").unwrap_or_else(|e| panic!("{e:#}\n{}", topo.logs()));
    assert_eq!(
        http1["succeeded"].as_u64(),
        Some(HTTP1_REQUESTS as u64),
        "http1: {}: {}\n{}",
        failures(&http1),
        http1["failures"],
        topo.logs()
    );
    assert_eq!(
        backends_of(&http1),
        both(),
        "http1 spread: {}",
        per_backend(&http1)
    );
    for r in http1["results"].as_array().unwrap() {
        assert_eq!(client_ip(&r["client"]), Some(IpAddr::V4(CLIENT)), "{r}");
    }
    eprintln!(
        "two-nodes: http1 {}; meanwhile {direct_rounds} rounds of direct GETs (B to b1, A to \
         b0, A to b1), all answered by the backend",
        per_backend(&http1)
    );

    // What reached the client: replies from the VIP, nothing from a backend address.
    let seen = capture.finish();
    let from_vip = |proto: u8| -> u64 {
        seen.iter()
            .filter(|((src, p, port), _)| *src == VIP && *p == proto && *port == VIP_PORT)
            .map(|(_, c)| c)
            .sum()
    };
    let (vip_udp, vip_tcp) = (from_vip(17), from_vip(6));
    let from_backends: Vec<_> = seen
        .iter()
        .filter(|((src, _, _), _)| src.octets()[..2] == [198, 19])
        .collect();
    let others: Vec<_> = seen
        .iter()
        .filter(|((src, p, port), _)| !(*src == VIP && (*p == 6 || *p == 17) && *port == VIP_PORT))
        .collect();
    eprintln!(
        "two-nodes: client captured from {VIP}:{VIP_PORT}: udp {vip_udp}, tcp {vip_tcp}; other sources: {others:?}"
    );
    assert!(vip_udp > 0 && vip_tcp > 0, "capture on c0: {seen:?}");
    assert!(
        from_backends.is_empty(),
        "un-NATed replies reached the client: {from_backends:?}"
    );

    // Node A's counters: the VIP's packets left through another interface (redirect), never
    // back out of ext0 (tx) or to A's kernel; replies were reverse-NATed.
    let metrics = metrics_in(&topo.node_a);
    let value = |prefix: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    // Reasons are counted node-wide (this node has the one VIP); per VIP and protocol,
    // packets and those routed by connection ID.
    let node_reason =
        |reason: &str| value(&format!("lb_node_packets_total{{reason=\"{reason}\"}} "));
    let vip_series = |metric: &str, proto: &str| {
        value(&format!(
            "{metric}{{vip=\"{VIP}\",port=\"{VIP_PORT}\",proto=\"{proto}\"}} "
        ))
    };
    let mut numbers = BTreeMap::new();
    for reason in [
        "redirect",
        "tx",
        "pass_no_neighbour",
        "pass_fib_failed",
        "routed_cid",
        "maglev",
        "fallback_initial",
        "lru_hit",
    ] {
        numbers.insert(reason.to_string(), node_reason(reason));
    }
    for proto in ["udp", "tcp"] {
        numbers.insert(
            format!("{proto}/packets"),
            vip_series("lb_vip_packets_total", proto),
        );
        numbers.insert(
            format!("{proto}/dropped"),
            vip_series("lb_vip_dropped_packets_total", proto),
        );
    }
    numbers.insert(
        "udp/routed_cid".into(),
        vip_series("lb_vip_routed_cid_packets_total", "udp"),
    );
    let backend_pkts = |be: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("lb_backend_packets_total{")
                    && l.contains(&format!("backend=\"{be}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let (pkts_b0, pkts_b1) = (
        backend_pkts("198.19.0.10:8443"),
        backend_pkts("198.19.1.10:8443"),
    );
    let rewritten = value("lb_rnat_packets_total{reason=\"rewritten\"} ");
    let not_steered = value("lb_rnat_packets_total{reason=\"pass_not_steered\"} ");
    let forwarded_b = forwarded(&topo.node_b) - forwarded_b_before;
    eprintln!(
        "two-nodes: node A: {numbers:?}; to b0 {pkts_b0}, to b1 {pkts_b1} packets; rnat rewritten {rewritten}, pass_not_steered {not_steered}; node B forwarded {forwarded_b}"
    );
    for proto in ["udp", "tcp"] {
        assert!(
            numbers[&format!("{proto}/packets")] > 0,
            "{proto} packets\n{metrics}"
        );
        assert_eq!(
            numbers[&format!("{proto}/dropped")],
            0,
            "{proto} dropped\n{metrics}"
        );
    }
    assert!(numbers["redirect"] > 0, "redirect\n{metrics}");
    for r in ["tx", "pass_no_neighbour", "pass_fib_failed"] {
        assert_eq!(numbers[r], 0, "{r}\n{metrics}");
    }
    assert!(numbers["udp/routed_cid"] > 0, "{metrics}");
    assert!(pkts_b0 > 0 && pkts_b1 > 0, "{metrics}");
    assert!(rewritten > 0, "{metrics}");
    // Every reply the client saw from the VIP was made so by A's reverse NAT.
    assert!(
        vip_udp + vip_tcp <= rewritten,
        "client saw {} packets from the VIP, A rewrote {rewritten}",
        vip_udp + vip_tcp
    );
    // Every packet A steered to b1 went through B (plus B forwarded the replies).
    assert!(
        forwarded_b >= pkts_b1,
        "node B forwarded {forwarded_b} packets, A sent {pkts_b1} to b1"
    );

    // All along, kubelet's probes from each node to its backend were answered by it.
    for (p, node) in topo.probers.iter().zip(["A", "B"]) {
        let probes = p.wait_rounds(2);
        eprintln!(
            "two-nodes: kubelet-style probes from node {node}: {}",
            probes.summary()
        );
        assert!(
            probes.all_ok(),
            "kubelet-style probes from node {node}: {}\n{}",
            probes.summary(),
            topo.logs()
        );
    }

    drop(topo);
    eprintln!("two-nodes: done in {:.1}s", t0.elapsed().as_secs_f64());
}
