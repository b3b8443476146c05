//! The BGP lab: an upstream router running BIRD 2 that learns a VIP from three nodes over
//! eBGP (with BFD) and installs it as an ECMP multipath route with an L4 hash, clients
//! behind the router, and backends ("pods") behind the nodes. Used by `e2e_bgp` and
//! `lb-lab demo-bgp`; torn down on drop (also on panic).
//!
//! ```text
//!                                   router ns (BIRD 2, AS 64500; ECMP on the 5-tuple)
//!  client ns                        rc 198.18.0.254/24
//!  c0 198.18.0.2/24 ─────────────── rc
//!                                   br1 198.18.1.254/24 ─ r1 ══ ext0 198.18.1.1/24  node 1 (BGP)
//!                                   br2 198.18.2.254/24 ─ r2 ══ ext0 198.18.2.1/24  node 2 (BGP)
//!                                   br3 198.18.3.254/24 ─ r3 ══ ext0 198.18.3.1/24  node 3 (BGP)
//!                                   br4 198.18.4.254/24 ─ r4 ══ ext0 198.18.4.1/24  node 4 (worker) ─ podN ── bN 198.19.4.1N
//!                                   (each brN also holds a spare port, so it stays      b1..b3, b4 added later
//!                                    up when the node's link dies: only BFD notices)
//! ```
//!
//! The backends are pods on a fourth node that does not announce the VIP (a worker), not on
//! the three announcing nodes: stopping lb on a node also stops the reverse NAT in front of
//! that node's own pods, so their connections end whatever the router does, and the lab
//! measures what ECMP reshuffles do, not that. Every announcing node reaches them as a
//! backend behind another node (the steering mark).
//!
//! - VIP [`VIP`]:443, TCP and UDP, QUIC-LB CIDs (config 0, server ID 2 octets, nonce 6);
//!   backends b1..b3 (server IDs 0a01..0a03), b4 (0a04) added by [`BgpLab::set_backends`].
//!   Every node (the worker too) has the same VIP and backend configuration.
//! - Nodes are AS 64512; the router AS 64500 with hold time 9 s, keepalive 3 s, BFD
//!   100 ms x 3. The router's `kernel` protocol merges equal BGP routes into one multipath
//!   route (`merge paths on`); the worker's pod CIDR 198.19.4.0/24 is a static route to it
//!   (what the CNI's routing would provide).
//! - [`Mode::Lb`]: every node runs `lb run` (generic XDP on ext0, reverse NAT on the pod
//!   veths). A node steers to a backend behind another node with the steering mark through
//!   the router; the backend's node delivers and reverse-NATs the replies to come from the
//!   VIP. The speaker is either lb's own (`[bgp]` in its config, [`Speaker::Lb`]) or a BIRD
//!   the lab starts beside lb with the configuration lb's renderer writes ([`Speaker::Lab`]).
//! - [`Mode::Baseline`]: no lb. Each node runs kube-proxy-style nftables rules
//!   ([`crate::kube_proxy_standin`]: a random backend per new connection, masquerade so
//!   replies return through the node that DNATed, as for `externalTrafficPolicy: Cluster`)
//!   and a BIRD the lab starts announcing the VIP.
//! - Nothing leaves the machine: addresses in 198.18.0.0/15 only.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use lb_userspace::bgp::{self, Advertisement, Bfd, Desired, Peer};

use crate::{
    children::Proc,
    kube_proxy_standin::KubeProxyRules,
    netns::{Mac, NetNs, veth_pair},
    topology,
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 100);
pub const VIP_PORT: u16 = 443;
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const BACKEND_PORT: u16 = 8443;
/// The nodes that announce the VIP (indexes 0..NODES); node [`WORKER`] hosts the pods.
pub const NODES: usize = 3;
pub const WORKER: usize = 3;
pub const ROUTER_ASN: u32 = 64500;
pub const NODE_ASN: u32 = 64512;
/// `fib_multipath_hash_fields`: source and destination address, IP protocol, source and
/// destination port.
pub const MULTIPATH_HASH_FIELDS: u32 = 0x0001 | 0x0002 | 0x0004 | 0x0010 | 0x0020;
/// Where each node's lb serves /metrics, inside the node's namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9467";
pub const HOLD_TIME_S: u16 = 9;
pub const KEEPALIVE_S: u16 = 3;
/// BFD: 100 ms both ways, 3 missed packets: a dead peer is noticed in about 300 ms.
pub const BFD_INTERVAL_MS: u32 = 100;
pub const BFD_MULTIPLIER: u8 = 3;
/// The cluster's pod CIDR (kube-proxy's `--cluster-cidr`).
const POD_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 16);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 10);
const START_DEADLINE: Duration = Duration::from_secs(30);
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// What the nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `lb run` on every node.
    Lb,
    /// kube-proxy-style nftables DNAT on every node, no lb.
    Baseline,
}

/// Who speaks BGP for an lb node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaker {
    /// lb itself: the `[bgp]` table in its config; lb starts BIRD (which dies with it).
    Lb,
    /// A BIRD the lab starts beside lb, with the configuration lb's renderer writes.
    Lab,
}

/// How to build a [`BgpLab`].
#[derive(Clone, Debug)]
pub struct Options {
    pub lb: PathBuf,
    pub lab: PathBuf,
    /// Namespace name prefix (a few letters).
    pub prefix: String,
    pub mode: Mode,
    pub speaker: Speaker,
    /// BFD on every session (otherwise a dead peer is noticed by the hold timer).
    pub bfd: bool,
    /// RUST_LOG of the children (default info).
    pub rust_log: Option<String>,
}

/// A backend: its number (`bN`), address, server ID, and the node it sits behind.
#[derive(Clone, Copy, Debug)]
pub struct Backend {
    pub n: u8,
    pub addr: Ipv4Addr,
    pub node: usize,
}

impl Backend {
    pub fn name(&self) -> String {
        format!("b{}", self.n)
    }
    pub fn server_id(&self) -> String {
        format!("0a{:02x}", self.n)
    }
}

/// The four backends, pods on the worker: b1..b3, and b4 (not configured at first).
pub fn backends() -> Vec<Backend> {
    (1..=4u8)
        .map(|n| Backend {
            n,
            addr: Ipv4Addr::new(198, 19, WORKER as u8 + 1, 10 + n),
            node: WORKER,
        })
        .collect()
}

/// Node `i`'s (0-based) uplink address.
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, i as u8 + 1, 1)
}

/// The router's address on node `i`'s link.
pub fn router_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, i as u8 + 1, 254)
}

fn node_mac(i: usize) -> Mac {
    [0x02, 0x18, i as u8 + 1, 0, 0, 1]
}
fn router_mac(i: usize) -> Mac {
    [0x02, 0x18, i as u8 + 1, 0, 0, 0xfe]
}

/// One node: its namespace and what runs there.
pub struct Node {
    pub ns: NetNs,
    pub lb: Option<Proc>,
    pub bird: Option<Proc>,
    pub config_path: PathBuf,
    pub control_socket: PathBuf,
    /// BIRD's directory (config and control socket) for this node.
    pub run_dir: PathBuf,
    starts: usize,
}

/// How a node stops advertising.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL (lb and, with it, its BIRD; in the baseline, the node's BIRD).
    Kill,
    /// SIGTERM: lb withdraws first, then stops (the baseline's BIRD closes its session).
    Graceful,
    /// The node's uplink goes down inside its namespace: a dead host, noticed by BFD only
    /// (the router's side of the link stays up).
    LinkDown,
}

/// The running lab. Drop stops every child and deletes the namespaces and the directory.
pub struct BgpLab {
    pub opts: Options,
    pub dir: PathBuf,
    router_bird: Option<Proc>,
    backend_procs: Vec<Proc>,
    pub nodes: Vec<Node>,
    pub client: NetNs,
    pub router: NetNs,
    pub pods: Vec<NetNs>,
    /// Backends in every node's configuration (numbers).
    configured: Vec<u8>,
}

fn ip(ns: &NetNs, args: &str) -> Result<()> {
    ns.ip(&args.split_whitespace().collect::<Vec<_>>())
        .map(drop)
}

impl BgpLab {
    /// Build the network, start the backends, the router's BIRD and every node, and wait
    /// until the router has the VIP with three next hops.
    pub fn start(opts: &Options) -> Result<BgpLab> {
        crate::netns::require_root()?;
        for p in ["c", "r", "n", "p"] {
            let _ = crate::netns::remove_stale(&format!("{}{p}", opts.prefix));
        }
        let dir = std::env::temp_dir().join(format!("{}-{}", opts.prefix, std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let client = NetNs::create(&format!("{}c", opts.prefix))?;
        let router = NetNs::create(&format!("{}r", opts.prefix))?;
        let mut nodes = Vec::new();
        for i in 0..=WORKER {
            let run_dir = dir.join(format!("node{}-bird", i + 1));
            std::fs::create_dir_all(&run_dir)?;
            nodes.push(Node {
                ns: NetNs::create(&format!("{}n", opts.prefix))?,
                lb: None,
                bird: None,
                config_path: dir.join(format!("node{}-lb.toml", i + 1)),
                control_socket: dir.join(format!("node{}-lb.sock", i + 1)),
                run_dir,
                starts: 0,
            });
        }
        let mut pods = Vec::new();
        for _ in backends() {
            pods.push(NetNs::create(&format!("{}p", opts.prefix))?);
        }
        let mut lab = BgpLab {
            opts: opts.clone(),
            dir,
            router_bird: None,
            backend_procs: Vec::new(),
            nodes,
            client,
            router,
            pods,
            configured: vec![1, 2, 3],
        };
        lab.wire().context("building the network")?;
        lab.start_backends()?;
        lab.start_router()?;
        for i in 0..=WORKER {
            lab.prepare_node(i)?;
        }
        for i in 0..=WORKER {
            lab.start_node(i)?;
        }
        let deadline = Instant::now() + START_DEADLINE;
        lab.wait_next_hops(&[0, 1, 2], deadline)?;
        for i in 0..NODES {
            lab.wait_bfd_up(i, deadline)?;
        }
        Ok(lab)
    }

    fn wire(&self) -> Result<()> {
        let (c, r) = (&self.client, &self.router);
        veth_pair(
            c,
            "c0",
            [2, 0x18, 0, 0, 0, 2],
            r,
            "rc",
            [2, 0x18, 0, 0, 0, 0xfe],
        )?;
        c.addr_add("c0", &format!("{CLIENT}/24"))?;
        r.addr_add("rc", "198.18.0.254/24")?;
        c.route_add("default", Some("198.18.0.254"), None)?;
        c.neigh_add("198.18.0.254".parse()?, [2, 0x18, 0, 0, 0, 0xfe], "c0")?;
        r.neigh_add(IpAddr::V4(CLIENT), [2, 0x18, 0, 0, 0, 2], "rc")?;
        r.sysctl("net.ipv4.ip_forward", "1")?;
        // ECMP by the flow's addresses, protocol and ports (L4), computed from the packet as
        // a datacenter router does. Policy 1 ("L4") would do, except that on a forwarded
        // packet it reuses a hash the skb already carries, and a packet that crossed a veth
        // from a local TCP socket carries that socket's random txhash (which TCP even
        // re-rolls after a timeout): the path would not be a function of the 5-tuple. Policy
        // 3 with these fields hashes the same 5-tuple and always reads it from the headers.
        r.sysctl("net.ipv4.fib_multipath_hash_policy", "3")?;
        r.sysctl(
            "net.ipv4.fib_multipath_hash_fields",
            &format!("{MULTIPATH_HASH_FIELDS:#06x}"),
        )?;
        for i in ["all", "default", "rc"] {
            r.sysctl(&format!("net/ipv4/conf/{i}/rp_filter"), "0")?;
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let n = &node.ns;
            let (br, port, dummy) = (
                format!("br{}", i + 1),
                format!("r{}", i + 1),
                format!("d{}", i + 1),
            );
            // The router's side is a bridge with a dummy port besides the node's veth, so
            // it keeps its carrier when the node's link dies: only BFD notices.
            ip(
                r,
                &format!(
                    "link add {br} address {} type bridge",
                    crate::netns::format_mac(router_mac(i))
                ),
            )?;
            // No `dummy` module everywhere: a veth pair inside the router is the spare port.
            ip(r, &format!("link add {dummy} type veth peer name {dummy}p"))?;
            ip(r, &format!("link set {dummy}p up"))?;
            ip(r, &format!("link set {dummy} master {br} up"))?;
            veth_pair(
                n,
                "ext0",
                node_mac(i),
                r,
                &port,
                [2, 0x18, i as u8 + 1, 0, 0, 0xfd],
            )?;
            ip(r, &format!("link set {port} master {br}"))?;
            r.link_up(&br)?;
            r.addr_add(&br, &format!("{}/24", router_addr(i)))?;
            r.sysctl(&format!("net/ipv4/conf/{br}/rp_filter"), "0")?;
            r.neigh_add(IpAddr::V4(node_addr(i)), node_mac(i), &br)?;
            // The pod CIDR of node i, as the CNI's routing would teach the router.
            if i == WORKER {
                r.route_add(
                    &format!("198.19.{}.0/24", i + 1),
                    Some(&node_addr(i).to_string()),
                    None,
                )?;
            }
            n.sysctl("net.ipv4.ip_forward", "1")?;
            for k in ["all", "default"] {
                n.sysctl(&format!("net/ipv4/conf/{k}/rp_filter"), "0")?;
            }
            self.node_uplink(i)?;
        }
        for (k, b) in backends().iter().enumerate() {
            let n = &self.nodes[b.node].ns;
            let pod = &self.pods[k];
            let dev = format!("pod{}", b.n);
            let dev = dev.as_str();
            let gw = Ipv4Addr::new(198, 19, b.node as u8 + 1, 1);
            veth_pair(
                n,
                dev,
                [2, 0x19, 4, b.n, 0, 1],
                pod,
                "eth0",
                [2, 0x19, 4, b.n, 0, 0x10],
            )?;
            n.addr_add(dev, &format!("{gw}/32"))?;
            n.route_add(&format!("{}/32", b.addr), None, Some(dev))?;
            n.sysctl(&format!("net/ipv4/conf/{dev}/rp_filter"), "0")?;
            n.neigh_add(IpAddr::V4(b.addr), [2, 0x19, 4, b.n, 0, 0x10], dev)?;
            pod.addr_add("eth0", &format!("{}/24", b.addr))?;
            pod.route_add("default", Some(&gw.to_string()), Some("eth0"))?;
            pod.neigh_add(IpAddr::V4(gw), [2, 0x19, 4, b.n, 0, 1], "eth0")?;
        }
        Ok(())
    }

    /// Node `i`'s uplink up, with its address, default route and the router's MAC (again
    /// after the link was down: routes and neighbours go with it).
    fn node_uplink(&self, i: usize) -> Result<()> {
        let n = &self.nodes[i].ns;
        n.link_up("ext0")?;
        let _ = n.addr_add("ext0", &format!("{}/24", node_addr(i)));
        n.neigh_add(IpAddr::V4(router_addr(i)), router_mac(i), "ext0")?;
        n.route_add("default", Some(&router_addr(i).to_string()), None)?;
        n.sysctl("net/ipv4/conf/ext0/rp_filter", "0")?;
        Ok(())
    }

    fn start_backends(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        for (k, b) in backends().iter().enumerate() {
            let mut cmd = self.pods[k].command(&self.opts.lab)?;
            cmd.args(["backend", "--listen", &format!("{}:{BACKEND_PORT}", b.addr)])
                .args(["--name", &b.name(), "--server-id", &b.server_id()])
                .args(["--server-id-len", "2", "--nonce-len", "6", "--cr-bits", "0"])
                .args(["--sni-names", &format!("localhost,{VIP}")]);
            let mut p = Proc::spawn(
                &self.dir,
                &format!("backend-{}", b.name()),
                cmd,
                &self.rust_log(),
            )?;
            p.wait_for_line("certificate sha256", deadline)?;
            self.backend_procs.push(p);
        }
        Ok(())
    }

    fn rust_log(&self) -> String {
        self.opts.rust_log.clone().unwrap_or_else(|| "info".into())
    }

    /// The router's BIRD configuration: one eBGP session per node, BFD, ECMP into the kernel.
    pub fn router_config(bfd: bool) -> String {
        let mut s = String::new();
        let bfd = if bfd { "on" } else { "off" };
        let _ = writeln!(
            s,
            "# Written by lb's BGP lab: the upstream router.\n\
             router id 198.18.0.254;\n\
             log stderr all;\n\
             protocol device {{ scan time 10; }}\n\
             # Equal BGP routes from several nodes become one multipath route in the kernel.\n\
             protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
             protocol bfd {{ interface \"br*\" {{ min rx interval {BFD_INTERVAL_MS} ms; \
             min tx interval {BFD_INTERVAL_MS} ms; multiplier {BFD_MULTIPLIER}; }}; }}\n\
             template bgp node {{\n    local as {ROUTER_ASN};\n    hold time {HOLD_TIME_S};\n    \
             keepalive time {KEEPALIVE_S};\n    bfd {bfd};\n    \
             # Come back quickly after a node restarts (the defaults wait up to minutes).\n    \
             connect delay time 1;\n    connect retry time 1;\n    error wait time 1, 2;\n    \
             ipv4 {{ import all; export none; }};\n}}"
        );
        for i in 0..NODES {
            let _ = writeln!(
                s,
                "protocol bgp node{} from node {{ neighbor {} as {NODE_ASN}; }}",
                i + 1,
                node_addr(i)
            );
        }
        s
    }

    fn start_router(&mut self) -> Result<()> {
        let conf = self.dir.join("router-bird.conf");
        std::fs::write(&conf, Self::router_config(self.opts.bfd))?;
        let sock = self.dir.join("router-bird.ctl");
        let p = spawn_bird(&self.router, &self.dir, "router-bird", &conf, &sock)?;
        self.router_bird = Some(p);
        wait_socket(&sock, Instant::now() + START_DEADLINE)
    }

    /// Node `i`'s BIRD configuration when the lab runs the speaker: what lb's renderer
    /// writes for the same peer and VIP.
    pub fn node_bird_config(i: usize, bfd: bool) -> Result<String> {
        let desired = Desired {
            router_id: Some(node_addr(i)),
            peers: vec![Peer {
                name: "router".into(),
                address: IpAddr::V4(router_addr(i)),
                local_asn: NODE_ASN,
                peer_asn: ROUTER_ASN,
                port: bgp::DEFAULT_PORT,
                hold_time_s: HOLD_TIME_S,
                keepalive_s: KEEPALIVE_S,
                password: None,
                source_address: Some(IpAddr::V4(node_addr(i))),
                multihop: None,
                graceful_restart: false,
                bfd: bfd.then_some(Bfd {
                    receive_interval_ms: BFD_INTERVAL_MS,
                    transmit_interval_ms: BFD_INTERVAL_MS,
                    detect_multiplier: BFD_MULTIPLIER,
                    passive: false,
                }),
            }],
            adverts: vec![Advertisement {
                prefix: ipnet::IpNet::new(IpAddr::V4(VIP), 32)?,
                peers: Vec::new(),
                communities: Vec::new(),
                local_pref: None,
            }],
        };
        Ok(bgp::render::render(&desired)?)
    }

    /// Node `i`'s lb.toml with backends `which`.
    pub fn lb_config(&self, i: usize, which: &[u8]) -> String {
        lb_config_text(
            i,
            which,
            self.opts.speaker,
            self.opts.bfd,
            &self.nodes[i].run_dir,
        )
    }
}

/// Node `i`'s lb.toml with backends `which`; `[bgp]` (BIRD in `run_dir`) when lb speaks BGP
/// and `i` is an announcing node.
pub fn lb_config_text(
    i: usize,
    which: &[u8],
    speaker: Speaker,
    bfd: bool,
    run_dir: &Path,
) -> String {
    {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Written by lb's BGP lab (node {}).\n\
             interfaces = [\"ext0\"]\n\
             xdp_mode = \"generic\"\n\
             backend_interfaces = [\"pod1\", \"pod2\", \"pod3\", \"pod4\"]\n\
             metrics_addr = \"{METRICS_ADDR}\"\n",
            i + 1
        );
        // The worker does not announce the VIP: no `[bgp]`.
        let speaker_lb = speaker == Speaker::Lb && i < NODES;
        if speaker_lb {
            let _ = writeln!(
                s,
                "[bgp]\nasn = {NODE_ASN}\nrouter_id = \"{}\"\nrun_dir = \"{}\"\n\n\
                 [[bgp.peers]]\nname = \"router\"\naddress = \"{}\"\nasn = {ROUTER_ASN}\n\
                 hold_time_s = {HOLD_TIME_S}\nkeepalive_s = {KEEPALIVE_S}\n\
                 source_address = \"{}\"\n\
                 bfd = {}\n",
                node_addr(i),
                run_dir.display(),
                router_addr(i),
                node_addr(i),
                if bfd {
                    format!(
                        "{{ receive_interval_ms = {BFD_INTERVAL_MS}, transmit_interval_ms = \
                         {BFD_INTERVAL_MS}, detect_multiplier = {BFD_MULTIPLIER}, passive = false }}"
                    )
                } else {
                    "false".to_string()
                }
            );
        }
        let _ = writeln!(
            s,
            "[[vips]]\nname = \"web\"\naddress = \"{VIP}\"\n{}ports = [{VIP_PORT}]\n\
             protocols = [\"tcp\", \"udp\"]\nmaglev_table_size = 1021\n\n\
             [[vips.quic_lb]]\nconfig_id = 0\nserver_id_len = 2\nnonce_len = 6\n",
            if speaker_lb {
                "announce = \"bgp\"\n"
            } else {
                ""
            }
        );
        for b in backends().iter().filter(|b| which.contains(&b.n)) {
            let _ = writeln!(
                s,
                "[[vips.backends]]\naddress = \"{}\"\nport = {BACKEND_PORT}\nserver_id = \"{}\"\n",
                b.addr,
                b.server_id()
            );
        }
        s
    }
}

impl BgpLab {
    fn baseline_rules() -> KubeProxyRules {
        let endpoints: Vec<SocketAddrV4> = backends()
            .iter()
            .filter(|b| b.n <= 3)
            .map(|b| SocketAddrV4::new(b.addr, BACKEND_PORT))
            .collect();
        KubeProxyRules::web_tcp_and_udp(POD_CIDR, CLUSTER_IP, VIP, VIP_PORT, endpoints)
    }

    fn prepare_node(&mut self, i: usize) -> Result<()> {
        match self.opts.mode {
            Mode::Lb => {
                let text = self.lb_config(i, &self.configured.clone());
                write_atomic(&self.nodes[i].config_path, &text)?;
            }
            Mode::Baseline if i == WORKER => {}
            Mode::Baseline => Self::baseline_rules()
                .install(&self.nodes[i].ns)
                .with_context(|| format!("kube-proxy rules on node {}", i + 1))?,
        }
        if self.uses_lab_bird() && i < NODES {
            let conf = self.nodes[i].run_dir.join("bird.conf");
            write_atomic(&conf, &Self::node_bird_config(i, self.opts.bfd)?)?;
        }
        Ok(())
    }

    fn uses_lab_bird(&self) -> bool {
        self.opts.mode == Mode::Baseline || self.opts.speaker == Speaker::Lab
    }

    /// Start what node `i` runs (lb and/or BIRD) and wait until it is ready (not for the
    /// router to learn its route: see [`BgpLab::wait_next_hops`]).
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        let rust_log = self.rust_log();
        let k = self.nodes[i].starts;
        self.nodes[i].starts += 1;
        if self.opts.mode == Mode::Lb {
            let node = &self.nodes[i];
            let mut run = Command::new(&self.opts.lb);
            run.arg("run")
                .arg("--config")
                .arg(&node.config_path)
                .args(["--netns", node.ns.name()])
                .arg("--control-socket")
                .arg(&node.control_socket);
            let mut p = Proc::spawn(&self.dir, &format!("node{}-lb-{k}", i + 1), run, &rust_log)?;
            p.wait_for_line("lb: running", deadline)
                .with_context(|| format!("starting lb on node {}", i + 1))?;
            self.nodes[i].lb = Some(p);
        }
        if self.uses_lab_bird() && i < NODES {
            let node = &self.nodes[i];
            let sock = node.run_dir.join("bird.ctl");
            let _ = std::fs::remove_file(&sock);
            let p = spawn_bird(
                &node.ns,
                &self.dir,
                &format!("node{}-bird-{k}", i + 1),
                &node.run_dir.join("bird.conf"),
                &sock,
            )?;
            self.nodes[i].bird = Some(p);
            wait_socket(&sock, deadline)?;
        }
        Ok(())
    }

    /// Stop node `i`'s advertisement as `how` says; returns once the processes are gone
    /// (for [`Stop::LinkDown`], once the link is down: the processes keep running).
    pub fn stop_node(&mut self, i: usize, how: Stop) -> Result<()> {
        let node = &mut self.nodes[i];
        match how {
            Stop::LinkDown => ip(&node.ns, "link set ext0 down"),
            Stop::Kill => {
                for p in [node.lb.as_mut(), node.bird.as_mut()].into_iter().flatten() {
                    let _ = p.child.kill();
                }
                for p in [node.lb.take(), node.bird.take()].into_iter().flatten() {
                    let mut p = p;
                    let _ = p.child.wait();
                }
                Ok(())
            }
            Stop::Graceful => {
                if self.opts.mode == Mode::Lb && self.opts.speaker == Speaker::Lb {
                    // lb withdraws, waits for the withdrawal to be sent, then stops.
                    if let Some(mut p) = node.lb.take() {
                        term_and_wait(&mut p)?;
                    }
                    return Ok(());
                }
                // The lab's BIRD: its SIGTERM closes the session (a Cease), which withdraws
                // the route; lb (if any) keeps forwarding until the router has moved on.
                if let Some(mut p) = node.bird.take() {
                    term_and_wait(&mut p)?;
                }
                if let Some(mut p) = self.nodes[i].lb.take() {
                    self.wait_next_hops_without(i, Instant::now() + STOP_DEADLINE)?;
                    term_and_wait(&mut p)?;
                }
                Ok(())
            }
        }
    }

    /// After [`BgpLab::stop_node`]: make sure nothing of node `i` runs, bring its link up,
    /// start it again and wait until the router has every node again.
    pub fn restore_node(&mut self, i: usize) -> Result<()> {
        self.stop_node(i, Stop::Kill)?;
        self.node_uplink(i)?;
        self.start_node(i)?;
        let deadline = Instant::now() + START_DEADLINE;
        self.wait_next_hops(&[0, 1, 2], deadline)?;
        self.wait_bfd_up(i, deadline)
    }

    /// With BFD: poll until the router's BFD session with node `i` is Up. BIRD brings it up
    /// after the BGP session, at a slow rate first; a link that dies before it is Up is
    /// noticed by the hold timer only.
    pub fn wait_bfd_up(&self, i: usize, deadline: Instant) -> Result<()> {
        if !self.opts.bfd {
            return Ok(());
        }
        let addr = node_addr(i).to_string();
        loop {
            let out = Command::new("birdc")
                .arg("-s")
                .arg(self.dir.join("router-bird.ctl"))
                .args(["show", "bfd", "sessions"])
                .output()
                .context("running birdc")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let up = text.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.first() == Some(&addr.as_str()) && w.get(2) == Some(&"Up")
            });
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the router's BFD session with node {} is not Up:\n{text}",
                    i + 1
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The next hops of the router's route to the VIP (node indexes); empty without one.
    pub fn next_hops(&self) -> Result<Vec<usize>> {
        let out = self
            .router
            .ip(&["-4", "-j", "route", "show", &format!("{VIP}/32")])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("{out:?}"))?;
        let mut hops = Vec::new();
        for r in v.as_array().into_iter().flatten() {
            let gws: Vec<&serde_json::Value> = match r["nexthops"].as_array() {
                Some(nh) => nh.iter().map(|h| &h["gateway"]).collect(),
                None => vec![&r["gateway"]],
            };
            for g in gws {
                if let Some(i) = g.as_str().and_then(|g| g.parse().ok()).and_then(node_of) {
                    hops.push(i);
                }
            }
        }
        hops.sort_unstable();
        Ok(hops)
    }

    /// Poll until the router's route to the VIP has exactly next hops `want`.
    pub fn wait_next_hops(&self, want: &[usize], deadline: Instant) -> Result<()> {
        loop {
            let got = self.next_hops()?;
            if got == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the router's route to {VIP} has next hops {got:?} (nodes, 0-based), not {want:?}\n{}",
                    self.router_status()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Poll until the router's route no longer goes to node `i`.
    pub fn wait_next_hops_without(&self, i: usize, deadline: Instant) -> Result<()> {
        let want: Vec<usize> = (0..NODES).filter(|&k| k != i).collect();
        self.wait_next_hops(&want, deadline)
    }

    /// `birdc show protocols` on the router.
    pub fn router_status(&self) -> String {
        let sock = self.dir.join("router-bird.ctl");
        Command::new("birdc")
            .arg("-s")
            .arg(&sock)
            .args(["show", "protocols"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("birdc: {e}"))
    }

    /// The node (0-based) the router sends the flow `local` → VIP:443 (`proto` "tcp" or
    /// "udp") to, from its kernel's multipath hash (`ip route get` with the ports).
    pub fn path_of(&self, proto: &str, local: SocketAddr) -> Result<usize> {
        let out = self.router.ip(&[
            "-4",
            "route",
            "get",
            &VIP.to_string(),
            "from",
            &CLIENT.to_string(),
            "iif",
            "rc",
            "ipproto",
            proto,
            "sport",
            &local.port().to_string(),
            "dport",
            &VIP_PORT.to_string(),
        ])?;
        let via = out
            .split_whitespace()
            .skip_while(|w| *w != "via")
            .nth(1)
            .ok_or_else(|| anyhow!("no next hop in {out:?}"))?;
        via.parse()
            .ok()
            .and_then(node_of)
            .ok_or_else(|| anyhow!("next hop not a node: {out:?}"))
    }

    /// Write every node's config with backends `which` and apply it (`lb reload`).
    pub fn set_backends(&mut self, which: &[u8]) -> Result<()> {
        self.configured = which.to_vec();
        for i in 0..=WORKER {
            let text = self.lb_config(i, which);
            write_atomic(&self.nodes[i].config_path, &text)?;
            if self.nodes[i].lb.is_some() {
                let out = Command::new(&self.opts.lb)
                    .arg("reload")
                    .arg("--control-socket")
                    .arg(&self.nodes[i].control_socket)
                    .stdin(Stdio::null())
                    .output()
                    .context("running lb reload")?;
                if !out.status.success() {
                    bail!(
                        "lb reload on node {}: {}{}",
                        i + 1,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        Ok(())
    }

    /// The sum of node `i`'s `/metrics` samples whose line starts with `prefix`.
    pub fn metric(&self, i: usize, prefix: &str) -> Result<u64> {
        let addr: SocketAddr = METRICS_ADDR.parse()?;
        let text = topology::http_get_in(&self.nodes[i].ns, addr, "/metrics")?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    /// Packets node `i`'s XDP program counted for the VIP (each once).
    pub fn vip_packets(&self, i: usize) -> Result<u64> {
        self.metric(i, &format!("lb_vip_packets_total{{vip=\"{VIP}\""))
    }

    /// The children's logs and the router's state, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "--- router: birdc show protocols ---\n{}",
            self.router_status()
        );
        if let Ok(r) = self.router.ip(&["-4", "route"]) {
            let _ = writeln!(s, "--- router: ip route ---\n{r}");
        }
        let mut logs: Vec<_> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for p in logs {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let _ = writeln!(
                s,
                "--- {} (last lines) ---\n{}",
                p.file_name().unwrap_or_default().to_string_lossy(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        s
    }
}

impl Drop for BgpLab {
    fn drop(&mut self) {
        let mut procs: Vec<&mut Proc> = Vec::new();
        for n in self.nodes.iter_mut() {
            procs.extend(n.lb.as_mut());
            procs.extend(n.bird.as_mut());
        }
        procs.extend(self.router_bird.as_mut());
        procs.extend(self.backend_procs.iter_mut());
        topology::stop_children(procs.into_iter().map(|p| (p.what.as_str(), &mut p.child)));
        let _ = std::fs::remove_dir_all(&self.dir);
        // The namespaces (fields) go after this, with every interface in them.
    }
}

/// The node whose uplink address is `a`.
fn node_of(a: Ipv4Addr) -> Option<usize> {
    (0..NODES).find(|&i| node_addr(i) == a)
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn spawn_bird(ns: &NetNs, dir: &Path, what: &str, conf: &Path, sock: &Path) -> Result<Proc> {
    let mut cmd = ns.command("bird")?;
    cmd.arg("-f").arg("-c").arg(conf).arg("-s").arg(sock);
    // BIRD dies with the process that started it (the test, the demo).
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Proc::spawn(dir, what, cmd, "info")
        .context("starting bird (Debian package bird2; `cargo xtask setup` installs it)")
}

fn wait_socket(sock: &Path, deadline: Instant) -> Result<()> {
    while !sock.exists() {
        if Instant::now() > deadline {
            bail!("BIRD did not create {} in time", sock.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn term_and_wait(p: &mut Proc) -> Result<()> {
    // SAFETY: kill(2) on our own child's pid, not yet reaped.
    unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_DEADLINE;
    loop {
        if p.child.try_wait()?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = p.child.kill();
            let _ = p.child.wait();
            bail!("{} did not stop on SIGTERM in {STOP_DEADLINE:?}", p.what);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bird_parses(text: &str, name: &str) {
        let dir = std::env::temp_dir().join(format!("lb-bgp-lab-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bird.conf");
        std::fs::write(&path, text).unwrap();
        let out = Command::new("bird").arg("-p").arg("-c").arg(&path).output();
        std::fs::remove_dir_all(&dir).unwrap();
        let out = out.expect("bird (Debian bird2; `cargo xtask setup` installs it)");
        assert!(
            out.status.success(),
            "{}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn bird_configs_parse() {
        bird_parses(&BgpLab::router_config(false), "router-nobfd");
        bird_parses(&BgpLab::node_bird_config(0, false).unwrap(), "node-nobfd");
        let router = BgpLab::router_config(true);
        for want in ["merge paths on", "bfd on", "neighbor 198.18.3.1 as 64512"] {
            assert!(router.contains(want), "{want:?} in\n{router}");
        }
        assert!(
            !router.contains("198.18.4.1"),
            "the worker is no peer:\n{router}"
        );
        bird_parses(&router, "router");
        let node = BgpLab::node_bird_config(1, true).unwrap();
        assert!(node.contains("198.18.10.100/32"), "{node}");
        bird_parses(&node, "node");
    }

    #[test]
    fn lb_configs_parse() {
        let dir = std::env::temp_dir().join(format!("lb-bgp-lab-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Without [bgp] (the lab's speaker, and the worker), and with it.
        for (i, speaker, bfd) in [
            (0, Speaker::Lab, true),
            (WORKER, Speaker::Lb, true),
            (1, Speaker::Lb, true),
            (2, Speaker::Lb, false),
        ] {
            let path = dir.join("lb.toml");
            std::fs::write(&path, lb_config_text(i, &[1, 2, 3, 4], speaker, bfd, &dir)).unwrap();
            let cfg = lb_userspace::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            let plan =
                lb_userspace::config::Plan::build(&cfg, None).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(plan.vips.len(), 2);
            assert!(plan.vips.iter().all(|v| v.backends.len() == 4));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn node_of_and_backends() {
        assert_eq!(node_of(Ipv4Addr::new(198, 18, 2, 1)), Some(1));
        assert_eq!(node_of(Ipv4Addr::new(198, 18, 4, 1)), None);
        let b = backends();
        assert_eq!(b[3].addr, Ipv4Addr::new(198, 19, 4, 14));
        assert_eq!(b[3].server_id(), "0a04");
    }
}
