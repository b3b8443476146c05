//! Cross-node backends over the three ways clusters join their nodes' pod networks: a flat
//! L2 network (the next hop is the other node), a kernel VXLAN overlay as flannel and
//! Calico's VXLAN mode build it (pod CIDR per node routed through a vxlan device with
//! static neighbour and FDB entries), and a routed L3 fabric without encapsulation
//! (Calico's BGP mode: pod CIDRs routed to the other node's address through a router).
//!
//! ```text
//!  flat L2 / VXLAN: client c0 198.18.0.2 ─┐
//!                   node A ext0 198.18.0.1 ┼─ br0 (a bridge in the client's namespace)
//!                   node B ext0 198.18.0.3 ┘
//!                   VXLAN: vx0 on A (198.19.0.0/32) and B (198.19.1.0/32), VNI 42
//!  routed L3:       client 198.18.0.2 ── router ── A ext0 198.18.1.1
//!                                              └── B ext0 198.18.2.1
//!  pods:            A: p0 198.19.0.10 (veth pa0)   B: b1 198.19.1.10 (veth be1, the backend)
//! ```
//!
//! Both nodes run `lb run` (generic XDP) with the same config: VIP 198.18.10.100:443, TCP
//! and UDP, QUIC-LB CIDs, one backend b1 behind node B. The client reaches the VIP through
//! node A (its route, as an L2 announcement or a BGP route would make it). A steers to b1
//! with the steering mark: out of ext0 again (flat, routed: `tx`) or, on the VXLAN, handed
//! to the kernel because vx0 takes no native redirect (`pass_kernel_route`); B's `lb_xdp`
//! (on ext0, and on vx0 for the overlay) removes the mark and records the flow
//! (`from_peer`) and delivers the packet (a redirect to be1; from vx0, where the program
//! runs in generic mode, through the kernel: `pass_kernel_route`), and B's reverse NAT
//! sends b1's replies from the VIP straight to the client.
//!
//! Asserted in each: HTTP/3 connections that migrate to a new source port all succeed and
//! survive, HTTP/1.1 over TCP succeeds, the backend saw the client's own address, the
//! client received replies from the VIP and none from a pod address, the counters of both
//! nodes name the path; and traffic not ours is untouched: pod p0 on A reaches b1 across
//! the same fabric, node A reaches b1 (a probe), both answered by b1 having seen the
//! caller's own address.
//!
//! Needs root. `cargo test -p lb-tests --test e2e_overlay -- --test-threads=1 --nocapture`

mod support;

use lb_lab::children::Proc;
use support::capture::Capture;

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_lab::{
    backend::Whoami,
    demo::{failures, parse_json_output},
    netns::{self, Mac, NetNs, veth_pair},
    topology,
};
use serde_json::Value;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 100);
const VIP_PORT: u16 = 443;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const B1: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
const P0: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const BACKEND_PORT: u16 = 8443;
const METRICS_ADDR: &str = "127.0.0.1:9466";
const H3_CONNECTIONS: usize = 8;
const HTTP1_REQUESTS: usize = 10;
const START_DEADLINE: Duration = Duration::from_secs(30);

const MAC_A_EXT: Mac = [0x02, 0x18, 0x00, 0x00, 0x00, 0x01];
const MAC_B_EXT: Mac = [0x02, 0x18, 0x00, 0x00, 0x00, 0x03];
const MAC_A_VX: Mac = [0x02, 0x18, 0x42, 0x00, 0x00, 0x01];
const MAC_B_VX: Mac = [0x02, 0x18, 0x42, 0x00, 0x00, 0x03];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fabric {
    FlatL2,
    Vxlan,
    RoutedL3,
}

/// Drop stops the children, then the namespaces go (fields), then the directory.
struct Cluster {
    procs: Vec<Proc>,
    dir: PathBuf,
    client: NetNs,
    router: Option<NetNs>,
    node_a: NetNs,
    node_b: NetNs,
    p0: NetNs,
    b1: NetNs,
}

fn ip(ns: &NetNs, args: &str) -> anyhow::Result<()> {
    ns.ip(&args.split_whitespace().collect::<Vec<_>>())
        .map(drop)
}

impl Cluster {
    fn start(fabric: Fabric) -> Cluster {
        netns::require_root().unwrap_or_else(|e| panic!("{e:#}"));
        let prefix = "lbov";
        for p in ["c", "r", "a", "b", "p", "q"] {
            let _ = netns::remove_stale(&format!("{prefix}{p}"));
        }
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ns = |p: &str| {
            NetNs::create(&format!("{prefix}{p}")).unwrap_or_else(|e| panic!("netns: {e:#}"))
        };
        let mut c = Cluster {
            procs: Vec::new(),
            dir,
            client: ns("c"),
            router: (fabric == Fabric::RoutedL3).then(|| ns("r")),
            node_a: ns("a"),
            node_b: ns("b"),
            p0: ns("p"),
            b1: ns("q"),
        };
        c.wire(fabric)
            .unwrap_or_else(|e| panic!("building the {fabric:?} network: {e:#}"));
        c.start_processes(fabric)
            .unwrap_or_else(|e| panic!("starting the processes: {e:#}\n{}", c.logs()));
        c
    }

    fn wire(&self, fabric: Fabric) -> anyhow::Result<()> {
        let (c, a, b) = (&self.client, &self.node_a, &self.node_b);
        match &self.router {
            None => {
                // The LAN: a bridge in the client's namespace, the nodes' ext0 on it.
                ip(c, "link add br0 type bridge")?;
                ip(c, "link set br0 up")?;
                c.addr_add("br0", "198.18.0.2/24")?;
                veth_pair(a, "ext0", MAC_A_EXT, c, "lana", [2, 0x18, 0, 0, 0xa, 1])?;
                veth_pair(b, "ext0", MAC_B_EXT, c, "lanb", [2, 0x18, 0, 0, 0xb, 1])?;
                ip(c, "link set lana master br0")?;
                ip(c, "link set lanb master br0")?;
                a.addr_add("ext0", "198.18.0.1/24")?;
                b.addr_add("ext0", "198.18.0.3/24")?;
                // Resolved from the start, so no packet waits for ARP (pass_no_neighbour).
                a.neigh_add("198.18.0.3".parse()?, MAC_B_EXT, "ext0")?;
                b.neigh_add("198.18.0.1".parse()?, MAC_A_EXT, "ext0")?;
                c.route_add(&format!("{VIP}/32"), Some("198.18.0.1"), None)?;
            }
            Some(r) => {
                veth_pair(
                    c,
                    "c0",
                    [2, 0x18, 0, 0, 0, 2],
                    r,
                    "rc",
                    [2, 0x18, 0, 0, 0, 0xfe],
                )?;
                veth_pair(a, "ext0", MAC_A_EXT, r, "ra", [2, 0x18, 1, 0, 0, 0xfe])?;
                veth_pair(b, "ext0", MAC_B_EXT, r, "rb", [2, 0x18, 2, 0, 0, 0xfe])?;
                c.addr_add("c0", "198.18.0.2/24")?;
                r.addr_add("rc", "198.18.0.254/24")?;
                r.addr_add("ra", "198.18.1.254/24")?;
                r.addr_add("rb", "198.18.2.254/24")?;
                a.addr_add("ext0", "198.18.1.1/24")?;
                b.addr_add("ext0", "198.18.2.1/24")?;
                c.route_add("default", Some("198.18.0.254"), None)?;
                a.route_add("default", Some("198.18.1.254"), None)?;
                b.route_add("default", Some("198.18.2.254"), None)?;
                // What BGP would teach the router: the VIP at A, each node's pod CIDR.
                r.route_add(&format!("{VIP}/32"), Some("198.18.1.1"), None)?;
                r.route_add("198.19.0.0/24", Some("198.18.1.1"), None)?;
                r.route_add("198.19.1.0/24", Some("198.18.2.1"), None)?;
                r.sysctl("net.ipv4.ip_forward", "1")?;
            }
        }
        // The pods: p0 behind A, b1 (the backend) behind B.
        veth_pair(
            a,
            "pa0",
            [2, 0x19, 0, 0, 0, 1],
            &self.p0,
            "eth0",
            [2, 0x19, 0, 0, 0, 0x10],
        )?;
        veth_pair(
            b,
            "be1",
            [2, 0x19, 1, 0, 0, 1],
            &self.b1,
            "eth0",
            [2, 0x19, 1, 0, 0, 0x10],
        )?;
        a.addr_add("pa0", "198.19.0.1/32")?;
        b.addr_add("be1", "198.19.1.1/32")?;
        a.route_add(&format!("{P0}/32"), None, Some("pa0"))?;
        b.route_add(&format!("{B1}/32"), None, Some("be1"))?;
        self.p0.addr_add("eth0", &format!("{P0}/24"))?;
        self.b1.addr_add("eth0", &format!("{B1}/24"))?;
        self.p0
            .route_add("default", Some("198.19.0.1"), Some("eth0"))?;
        self.b1
            .route_add("default", Some("198.19.1.1"), Some("eth0"))?;
        match fabric {
            Fabric::FlatL2 => {
                a.route_add("198.19.1.0/24", Some("198.18.0.3"), Some("ext0"))?;
                b.route_add("198.19.0.0/24", Some("198.18.0.1"), Some("ext0"))?;
            }
            Fabric::Vxlan => {
                // flannel's vxlan backend: per node a vxlan device with the node's pod
                // network address, a route per remote pod CIDR through it (onlink, via the
                // remote device's address), a permanent neighbour and an FDB entry.
                for (n, me, peer, mac, peer_mac, my_net, peer_net) in [
                    (a, "198.18.0.1", "198.18.0.3", MAC_A_VX, MAC_B_VX, 0, 1),
                    (b, "198.18.0.3", "198.18.0.1", MAC_B_VX, MAC_A_VX, 1, 0),
                ] {
                    let (m, pm) = (fmt_mac(mac), fmt_mac(peer_mac));
                    ip(
                        n,
                        &format!(
                            "link add vx0 address {m} type vxlan id 42 local {me} dev ext0 dstport 4789 nolearning"
                        ),
                    )?;
                    ip(n, "link set vx0 up")?;
                    n.addr_add("vx0", &format!("198.19.{my_net}.0/32"))?;
                    ip(
                        n,
                        &format!(
                            "route replace 198.19.{peer_net}.0/24 via 198.19.{peer_net}.0 dev vx0 onlink"
                        ),
                    )?;
                    ip(
                        n,
                        &format!(
                            "neigh replace 198.19.{peer_net}.0 lladdr {pm} dev vx0 nud permanent"
                        ),
                    )?;
                    n.exec("bridge", &["fdb", "append", &pm, "dev", "vx0", "dst", peer])?;
                }
            }
            Fabric::RoutedL3 => {
                // Pod CIDRs are routed by the router (the nodes' default route).
            }
        }
        // B's kernel forwards what arrives through vx0 from the client's address.
        let vx = if fabric == Fabric::Vxlan { "vx0" } else { "lo" };
        for (n, ifaces) in [(a, ["ext0", "pa0", vx]), (b, ["ext0", "be1", vx])] {
            n.sysctl("net.ipv4.ip_forward", "1")?;
            for i in ["all", "default"].iter().chain(&ifaces) {
                n.sysctl(&format!("net/ipv4/conf/{i}/rp_filter"), "0")?;
            }
        }
        Ok(())
    }

    fn config_text(fabric: Fabric) -> String {
        // With the overlay, marked packets reach B through vx0: lb_xdp runs there too.
        let ifaces = if fabric == Fabric::Vxlan {
            "[\"ext0\", \"vx0\"]"
        } else {
            "[\"ext0\"]"
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Written by lb's overlay end-to-end test.\n\
             interfaces = {ifaces}\n\
             xdp_mode = \"generic\"\n\
             backend_interfaces = [\"pa0\", \"be1\"]\n\
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
             nonce_len = 6\n\n\
             [[vips.backends]]\n\
             address = \"{B1}\"\n\
             port = {BACKEND_PORT}\n\
             server_id = \"0a01\"\n"
        );
        s
    }

    fn spawn(&mut self, what: &str, cmd: Command) -> anyhow::Result<usize> {
        self.procs.push(Proc::spawn(&self.dir, what, cmd, "info")?);
        Ok(self.procs.len() - 1)
    }

    fn start_processes(&mut self, fabric: Fabric) -> anyhow::Result<()> {
        let mut waits = Vec::new();
        let mut be = self.b1.command(support::lab())?;
        be.args(["backend", "--listen", &format!("{B1}:{BACKEND_PORT}")])
            .args(["--name", "b1", "--server-id", "0a01"])
            .args(["--server-id-len", "2", "--nonce-len", "6", "--cr-bits", "0"])
            .args(["--sni-names", &format!("localhost,{VIP}")]);
        waits.push((self.spawn("backend-b1", be)?, "certificate sha256"));
        let config = self.dir.join("lb.toml");
        std::fs::write(&config, Self::config_text(fabric))?;
        let nodes = [
            ("a", self.node_a.name().to_string()),
            ("b", self.node_b.name().to_string()),
        ];
        for (node, ns) in nodes {
            let mut run = Command::new(support::lb());
            run.arg("run")
                .arg("--config")
                .arg(&config)
                .args(["--netns", &ns])
                .arg("--control-socket")
                .arg(self.dir.join(format!("lb-{node}.sock")));
            waits.push((self.spawn(&format!("lb-run-{node}"), run)?, "lb: running"));
        }
        let deadline = Instant::now() + START_DEADLINE;
        for (i, marker) in waits {
            self.wait_for_line(i, marker, deadline)?;
        }
        Ok(())
    }

    fn wait_for_line(&mut self, i: usize, marker: &str, deadline: Instant) -> anyhow::Result<()> {
        self.procs[i].wait_for_line(marker, deadline)
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        let addr: SocketAddr = METRICS_ADDR.parse().unwrap();
        for ns in [&self.node_a, &self.node_b] {
            if let Ok(m) = topology::http_get_in(ns, addr, "/metrics") {
                let nonzero = topology::nonzero_samples(&m).join("\n");
                let _ = writeln!(s, "--- /metrics of {} (nonzero) ---\n{nonzero}", ns.name());
            }
        }
        for p in &self.procs {
            let _ = writeln!(s, "--- {} ---\n{}", p.what, p.output());
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

    /// The sum of the `/metrics` samples of node `ns` whose line starts with `prefix`.
    fn metric(&self, ns: &NetNs, prefix: &str) -> u64 {
        let addr: SocketAddr = METRICS_ADDR.parse().unwrap();
        let text = topology::http_get_in(ns, addr, "/metrics")
            .unwrap_or_else(|e| panic!("/metrics of {}: {e:#}", ns.name()));
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
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

fn fmt_mac(m: Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A node-wide reason counter (the nodes have this test's one VIP).
fn node_reason(reason: &str) -> String {
    format!("lb_node_packets_total{{reason=\"{reason}\"}} ")
}

/// The VIP's packets over one protocol.
fn vip_packets(proto: &str) -> String {
    format!("lb_vip_packets_total{{vip=\"{VIP}\",port=\"{VIP_PORT}\",proto=\"{proto}\"}} ")
}

fn client_ip(s: &Value) -> Option<IpAddr> {
    s.as_str()?.parse::<SocketAddr>().ok().map(|a| a.ip())
}

/// A GET from inside `ns` straight to b1: answered by b1, which saw `from`.
fn direct_get(c: &Cluster, ns: &NetNs, from: Ipv4Addr, what: &str) {
    let addr = SocketAddr::new(IpAddr::V4(B1), BACKEND_PORT);
    let body = topology::http_get_in(ns, addr, "/direct")
        .unwrap_or_else(|e| panic!("{what}: GET http://{addr}/direct: {e:#}\n{}", c.logs()));
    let who = Whoami::parse(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body:?}"));
    assert_eq!(who.name, "b1", "{what}: {who:?}");
    assert_eq!(who.client.ip(), IpAddr::V4(from), "{what}: {who:?}");
}

fn run(fabric: Fabric) {
    let t0 = Instant::now();
    let c = Cluster::start(fabric);
    let tag = format!("{fabric:?}");
    let capture = Capture::start(&c.client, if c.router.is_some() { "c0" } else { "br0" });

    let mut h3 = c.client_lab();
    h3.args(["probe", "h3", "--target", &format!("{VIP}:{VIP_PORT}")])
        .args(["--insecure", "--connections", &H3_CONNECTIONS.to_string()])
        .args(["--requests-per-phase", "2", "--migrate", "--json"]);
    let h3 = c.run_json(h3, "probe h3 --migrate");
    for k in ["succeeded", "migrated", "survived"] {
        assert_eq!(
            h3[k].as_u64(),
            Some(H3_CONNECTIONS as u64),
            "{tag}: h3 {k}: {} ({}): {}\n{}",
            h3[k],
            failures(&h3),
            h3["failures"],
            c.logs()
        );
    }
    for r in h3["results"].as_array().unwrap() {
        assert_eq!(r["backend_before"].as_str(), Some("b1"), "{r}");
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

    let mut http1 = c.client_lab();
    http1
        .args(["probe", "http1", "--target", &format!("{VIP}:{VIP_PORT}")])
        .args(["--requests", &HTTP1_REQUESTS.to_string(), "--json"]);
    let http1 = c.run_json(http1, "probe http1");
    assert_eq!(
        http1["succeeded"].as_u64(),
        Some(HTTP1_REQUESTS as u64),
        "{tag}: http1: {}: {}\n{}",
        failures(&http1),
        http1["failures"],
        c.logs()
    );
    for r in http1["results"].as_array().unwrap() {
        assert_eq!(client_ip(&r["client"]), Some(IpAddr::V4(CLIENT)), "{r}");
    }

    // Not ours: pod to pod across the fabric, and a node probing the pod.
    direct_get(&c, &c.p0, P0, "pod p0 on A to b1");
    let a_src = match fabric {
        Fabric::FlatL2 => Ipv4Addr::new(198, 18, 0, 1),
        Fabric::Vxlan => Ipv4Addr::new(198, 19, 0, 0),
        Fabric::RoutedL3 => Ipv4Addr::new(198, 18, 1, 1),
    };
    direct_get(&c, &c.node_a, a_src, "node A to b1");
    direct_get(&c, &c.node_b, Ipv4Addr::new(198, 19, 1, 1), "node B to b1");

    let seen = capture.finish();
    let from_vip: u64 = seen
        .iter()
        .filter(|((src, _, port), _)| *src == VIP && *port == VIP_PORT)
        .map(|(_, n)| n)
        .sum();
    let from_pods: Vec<_> = seen
        .iter()
        .filter(|((src, _, _), _)| src.octets()[..2] == [198, 19])
        .collect();
    eprintln!(
        "{tag}: client received {from_vip} packets from the VIP; from pod addresses: {from_pods:?}"
    );
    assert!(from_vip > 0, "{tag}: {seen:?}");
    assert!(
        from_pods.is_empty(),
        "{tag}: un-NATed replies: {from_pods:?}"
    );

    let (a, b) = (&c.node_a, &c.node_b);
    let mut report = String::new();
    for proto in ["udp", "tcp"] {
        // Both nodes counted the VIP's packets of this protocol; the reasons are node-wide.
        let (vip_a, vip_b) = (
            c.metric(a, &vip_packets(proto)),
            c.metric(b, &vip_packets(proto)),
        );
        assert!(
            vip_a > 0 && vip_b > 0,
            "{tag} {proto}: A {vip_a}, B {vip_b}"
        );
        let on_a = |r: &str| c.metric(a, &node_reason(r));
        let (tx, redirect, kernel, marked) = (
            on_a("tx"),
            on_a("redirect"),
            on_a("pass_kernel_route"),
            on_a("marked_for_peer"),
        );
        let on_b = |r: &str| c.metric(b, &node_reason(r));
        let (from_peer, b_redirect, b_kernel) = (
            on_b("from_peer"),
            on_b("redirect"),
            on_b("pass_kernel_route"),
        );
        let _ = write!(
            report,
            "{proto}: A tx {tx} redirect {redirect} pass_kernel_route {kernel} marked_for_peer \
             {marked}; B from_peer {from_peer} redirect {b_redirect} pass_kernel_route \
             {b_kernel}. "
        );
        assert!(
            marked > 0 && from_peer > 0,
            "{tag} {proto}: {report}\n{}",
            c.logs()
        );
        assert_eq!(redirect, 0, "{tag} {proto}: {report}");
        for r in ["pass_no_neighbour", "pass_fib_failed"] {
            assert_eq!(on_a(r), 0, "{tag} {proto} {r}: {report}");
        }
        if fabric == Fabric::Vxlan {
            // Into vx0 on A, out of vx0 on B: the kernel both times.
            assert!(kernel > 0 && b_kernel > 0, "{tag} {proto}: {report}");
            assert_eq!(tx + b_redirect, 0, "{tag} {proto}: {report}");
        } else {
            assert!(tx > 0 && b_redirect > 0, "{tag} {proto}: {report}");
            assert_eq!(kernel + b_kernel, 0, "{tag} {proto}: {report}");
        }
    }
    let rewritten = c.metric(b, "lb_rnat_packets_total{reason=\"rewritten\"} ");
    eprintln!("{tag}: {report}B's reverse NAT rewrote {rewritten}");
    assert!(
        from_vip <= rewritten,
        "{tag}: client saw {from_vip} from the VIP, B rewrote {rewritten}"
    );
    drop(c);
    eprintln!("{tag}: done in {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn overlay_flat_l2_backend_on_the_other_node() {
    run(Fabric::FlatL2);
}

#[test]
fn overlay_vxlan_backend_on_the_other_node() {
    run(Fabric::Vxlan);
}

#[test]
fn overlay_routed_l3_backend_on_the_other_node() {
    run(Fabric::RoutedL3);
}
