//! The end-to-end network of `lb-lab demo` and the end-to-end tests: a client, one node running
//! `lb run`, three backend "pods" and an in-cluster client pod, each in its own network
//! namespace, torn down on drop (also on panic). Around lb, the node has what a cluster node
//! has: a kube-proxy stand-in (nftables, [`crate::kube_proxy_standin`]) and kubelet-style
//! probes of every pod ([`crate::prober`]).
//!
//! ```text
//!  client ns            node ns (lb run: XDP on n0, reverse NAT on nb1..3, np)    bN ns
//!  c0 198.18.0.2/24 ── n0 198.18.0.1/24                  nbN 198.19.N.1/24 ── eth0 198.19.N.10/24
//!     fd00:18::2/64       fd00:18::1/64                      fd00:19:N::1/64      fd00:19:N::10/64
//!                                                        np  198.19.9.1/24 ── eth0 198.19.9.10/24 (pod ns)
//! ```
//!
//! - VIP 198.18.0.100, port 443, TCP and UDP: QUIC routed by connection ID (QUIC-LB config 0,
//!   plaintext, server ID 2 octets, nonce 6); backends `198.19.N.10:8443` with server ID
//!   `0a0N`. The backends listen on `[::]:8443` (both families, like most pods).
//! - VIP 198.18.0.101, port 443, UDP only, `quic = false`: 4-tuple Maglev only; backends
//!   `198.19.N.10:8444`, served by a second `lb-lab backend` per pod without QUIC-LB connection
//!   IDs (a server that is not QUIC-LB aware, as behind a 4-tuple balancer).
//! - The VIPs are on no interface: the node's announcer answers ARP for them on n0.
//! - Each backend namespace runs two `lb-lab backend` processes (ports 8443 and 8444), and
//!   `lb attach` on its eth0: XDP_REDIRECT into a veth only delivers when the peer end has an
//!   XDP program (the attached program has empty maps and passes everything).
//! - The node forwards (IPv4 and IPv6) with `rp_filter` off: replies are reverse-NATed to the
//!   VIP's address on nbN, where strict reverse-path filtering would drop them.
//! - The kube-proxy stand-in serves Service `default/web` (port 443, TCP and UDP) at the
//!   ClusterIP [`CLUSTER_IP`] and intercepts its LoadBalancer IP (the CID VIP) for
//!   in-cluster clients, DNATing both to the three pods' port 8443; it drops what conntrack
//!   calls INVALID. The pod namespace is an in-cluster client; its veth (`np`) is one of
//!   lb's backend interfaces, as every pod veth is on a node (`veth*`).
//! - A kubelet-style prober in the node namespace probes each pod's port 8443 (TCP connect
//!   and HTTP GET) every 100 ms for the topology's whole life ([`Topology::prober`]).
//!
//! Children write to log files in [`Topology::dir`]; [`Topology::leak`] leaves everything
//! running (for `lb-lab demo --keep`).

use std::{
    fmt::Write as _,
    io::{Read, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::{
    children::Proc,
    kube_proxy_standin::KubeProxyRules,
    netns::{Mac, NetNs, veth_pair},
    prober::{PROBE_EVERY, Prober, Target},
};

/// VIP with QUIC routed by connection ID (TCP and UDP on port [`VIP_PORT`]).
pub const VIP_CID: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// VIP with `quic = false` (UDP only, 4-tuple Maglev).
pub const VIP_NOCID: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);
pub const VIP_PORT: u16 = 443;
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Backend port behind [`VIP_CID`] and behind [`VIP_NOCID`].
pub const BACKEND_PORT_CID: u16 = 8443;
pub const BACKEND_PORT_NOCID: u16 = 8444;
/// Backends are numbered 1..=BACKENDS.
pub const BACKENDS: u8 = 3;
/// The in-cluster client pod's address.
pub const POD_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 9, 10);
/// The ClusterIP of Service `default/web` (port 443) in the kube-proxy stand-in.
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 10);
/// The cluster's pod CIDR: the backends and the client pod.
pub const POD_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 16);
/// Where the daemon serves /metrics, inside the node namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9464";
/// QUIC-LB parameters of the CID-routed VIP (config 0, plaintext).
pub const SERVER_ID_LEN: u8 = 2;
pub const NONCE_LEN: u8 = 6;

const START_DEADLINE: Duration = Duration::from_secs(30);
const STOP_DEADLINE: Duration = Duration::from_secs(5);

pub fn backend_addr(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, n, 10)
}

/// Server ID of backend `n` on the CID-routed VIP, hex.
pub fn server_id(n: u8) -> String {
    format!("0a{n:02x}")
}

/// The names the CID backends' certificate covers: every address a lab client may reach
/// them by.
pub const SNI_NAMES: &str = "localhost,198.18.0.100,198.18.0.102,fd00:18::100,198.19.255.10";

/// The Service the kube-proxy stand-in serves: `default/web`, port 443 over TCP and UDP, at
/// [`CLUSTER_IP`] and the CID VIP, endpoints the three pods' port 8443.
pub fn kube_proxy_rules() -> KubeProxyRules {
    let endpoints: Vec<std::net::SocketAddrV4> = (1..=BACKENDS)
        .map(|n| std::net::SocketAddrV4::new(backend_addr(n), BACKEND_PORT_CID))
        .collect();
    KubeProxyRules::web_tcp_and_udp(POD_CIDR, CLUSTER_IP, VIP_CID, VIP_PORT, endpoints)
}

/// What the kubelet-style prober probes: every pod's port 8443.
pub fn probe_targets() -> Vec<Target> {
    (1..=BACKENDS)
        .map(|n| Target {
            name: backend_name(n),
            addr: SocketAddr::new(backend_addr(n).into(), BACKEND_PORT_CID),
        })
        .collect()
}

/// Stateless-reset key shared by the CID-routed backends (`lb-lab backend --reset-key`).
pub const RESET_KEY: &str = "6c622d64656d6f2d706f6f6c2d72657365742d6b65792d6f662d7468652d7465";

pub fn backend_name(n: u8) -> String {
    format!("b{n}")
}

const MAC_CLIENT: Mac = [0x02, 0x18, 0x00, 0x00, 0x00, 0x02];
const MAC_NODE: Mac = [0x02, 0x18, 0x00, 0x00, 0x00, 0x01];
const MAC_NODE_POD: Mac = [0x02, 0x19, 0x09, 0x00, 0x00, 0x01];
const MAC_POD: Mac = [0x02, 0x19, 0x09, 0x00, 0x00, 0x10];
fn mac_node_be(n: u8) -> Mac {
    [0x02, 0x19, n, 0x00, 0x00, 0x01]
}
fn mac_backend(n: u8) -> Mac {
    [0x02, 0x19, n, 0x00, 0x00, 0x10]
}

/// How to build a [`Topology`].
#[derive(Clone, Debug)]
pub struct Options {
    /// The `lb` binary: `lb run` on the node, `lb attach` (the pass-everything program) on
    /// the backends.
    pub lb: PathBuf,
    /// The `lb-lab` binary: the backends (`lb-lab backend`) and the probes (`lb-lab probe`).
    pub lab: PathBuf,
    /// Namespace name prefix (letters and digits, a few characters): namespaces are named
    /// `<prefix>c<pid>-<n>` (client), `<prefix>n...` (node) and `<prefix>1...` (backends).
    pub prefix: String,
    /// RUST_LOG for the children (default: info).
    pub rust_log: Option<String>,
    /// First delete namespaces with this prefix whose process is gone (left by a killed run).
    /// Off for the demo: `lb-lab demo --keep` leaves namespaces of a dead process on purpose.
    pub remove_stale: bool,
}

/// The running end-to-end network. Dropping it stops every child (SIGTERM, then SIGKILL
/// after a deadline) and deletes the namespaces and the temporary directory.
pub struct Topology {
    /// Children, stopped in reverse start order on drop (the daemon first).
    procs: Vec<Proc>,
    pub client: NetNs,
    pub node: NetNs,
    /// Backend namespaces; `backends[n - 1]` is bN.
    pub backends: Vec<NetNs>,
    /// The in-cluster client pod ([`POD_CLIENT_ADDR`]).
    pub pod: NetNs,
    /// Kubelet-style probes of every backend's port 8443 from the node, running while the
    /// topology is up.
    pub prober: Option<Prober>,
    /// Temporary directory: config, control socket, logs.
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub control_socket: PathBuf,
    pub lb: PathBuf,
    pub lab: PathBuf,
    /// SHA-256 of each CID backend's certificate (`backend_certs[n - 1]`), lowercase hex.
    pub backend_certs: Vec<String>,
    /// RUST_LOG of the children.
    rust_log: String,
    keep: bool,
}

impl Topology {
    /// Build the namespaces and veths, attach the pass-everything XDP program on the backends'
    /// eth0, start the backends and `lb run`, and wait until all of them say they are ready.
    pub fn start(opts: &Options) -> Result<Topology> {
        crate::netns::require_root()?;
        if opts.remove_stale {
            for p in ["c", "n", "p", "1", "2", "3"] {
                let _ = crate::netns::remove_stale(&format!("{}{p}", opts.prefix));
            }
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{}-{}-{}",
            opts.prefix,
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let client = NetNs::create(&format!("{}c", opts.prefix))?;
        let node = NetNs::create(&format!("{}n", opts.prefix))?;
        let mut backends = Vec::new();
        for n in 1..=BACKENDS {
            backends.push(NetNs::create(&format!("{}{n}", opts.prefix))?);
        }
        let pod = NetNs::create(&format!("{}p", opts.prefix))?;
        let mut topo = Topology {
            procs: Vec::new(),
            client,
            node,
            backends,
            pod,
            prober: None,
            config_path: dir.join("lb.toml"),
            control_socket: dir.join("lb.sock"),
            dir,
            lb: opts.lb.clone(),
            lab: opts.lab.clone(),
            backend_certs: Vec::new(),
            rust_log: opts.rust_log.clone().unwrap_or_else(|| "info".into()),
            keep: false,
        };
        topo.wire().context("building the network")?;
        kube_proxy_rules()
            .install(&topo.node)
            .context("installing the kube-proxy stand-in")?;
        topo.start_processes(opts)?;
        Ok(topo)
    }

    fn wire(&self) -> Result<()> {
        let (client, node) = (&self.client, &self.node);
        veth_pair(client, "c0", MAC_CLIENT, node, "n0", MAC_NODE)?;
        client.addr_add("c0", "198.18.0.2/24")?;
        client.addr_add("c0", "fd00:18::2/64")?;
        node.addr_add("n0", "198.18.0.1/24")?;
        node.addr_add("n0", "fd00:18::1/64")?;
        client.route_add("198.19.0.0/16", Some("198.18.0.1"), Some("c0"))?;
        client.route_add("fd00:19::/32", Some("fd00:18::1"), Some("c0"))?;
        // Replies leave the node by the kernel's forwarding; no ARP round trip needed.
        node.neigh_add(IpAddr::V4(CLIENT_ADDR), MAC_CLIENT, "n0")?;
        node.neigh_add("fd00:18::2".parse()?, MAC_CLIENT, "n0")?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        for iface in ["all", "default", "n0"] {
            node.sysctl(&format!("net/ipv4/conf/{iface}/rp_filter"), "0")?;
        }
        for n in 1..=BACKENDS {
            let be = &self.backends[usize::from(n - 1)];
            let nb = format!("nb{n}");
            veth_pair(node, &nb, mac_node_be(n), be, "eth0", mac_backend(n))?;
            node.addr_add(&nb, &format!("198.19.{n}.1/24"))?;
            node.addr_add(&nb, &format!("fd00:19:{n}::1/64"))?;
            be.addr_add("eth0", &format!("198.19.{n}.10/24"))?;
            be.addr_add("eth0", &format!("fd00:19:{n}::10/64"))?;
            be.route_add("default", Some(&format!("198.19.{n}.1")), Some("eth0"))?;
            be.route_add("default", Some(&format!("fd00:19:{n}::1")), Some("eth0"))?;
            node.sysctl(&format!("net/ipv4/conf/{nb}/rp_filter"), "0")?;
            // The XDP program's FIB lookup must find the backend's MAC at once.
            node.neigh_add(IpAddr::V4(backend_addr(n)), mac_backend(n), &nb)?;
            node.neigh_add(format!("fd00:19:{n}::10").parse()?, mac_backend(n), &nb)?;
            be.neigh_add(format!("198.19.{n}.1").parse()?, mac_node_be(n), "eth0")?;
            be.neigh_add(format!("fd00:19:{n}::1").parse()?, mac_node_be(n), "eth0")?;
        }
        // The in-cluster client pod.
        let pod = &self.pod;
        veth_pair(node, "np", MAC_NODE_POD, pod, "eth0", MAC_POD)?;
        node.addr_add("np", "198.19.9.1/24")?;
        node.addr_add("np", "fd00:19:9::1/64")?;
        pod.addr_add("eth0", &format!("{POD_CLIENT_ADDR}/24"))?;
        pod.addr_add("eth0", "fd00:19:9::10/64")?;
        pod.route_add("default", Some("198.19.9.1"), Some("eth0"))?;
        pod.route_add("default", Some("fd00:19:9::1"), Some("eth0"))?;
        node.sysctl("net/ipv4/conf/np/rp_filter", "0")?;
        node.neigh_add(IpAddr::V4(POD_CLIENT_ADDR), MAC_POD, "np")?;
        pod.neigh_add("198.19.9.1".parse()?, MAC_NODE_POD, "eth0")?;
        Ok(())
    }

    /// The probes so far (empty before the prober started).
    pub fn probes(&self) -> crate::prober::Tally {
        self.prober.as_ref().map(Prober::tally).unwrap_or_default()
    }

    fn spawn(&mut self, what: &str, cmd: Command, rust_log: &str) -> Result<usize> {
        self.procs
            .push(Proc::spawn(&self.dir, what, cmd, rust_log)?);
        Ok(self.procs.len() - 1)
    }

    fn start_processes(&mut self, opts: &Options) -> Result<()> {
        let rust_log = opts.rust_log.clone().unwrap_or_else(|| "info".into());
        let (lb, lab) = (self.lb.clone(), self.lab.clone());
        let mut waits: Vec<(usize, &'static str)> = Vec::new();
        for n in 1..=BACKENDS {
            let be = &self.backends[usize::from(n - 1)];
            let mut attach = Command::new(&lb);
            attach.args(["attach", "--iface", "eth0", "--netns", be.name()]);
            waits.push((
                self.spawn(&format!("xdp-pass-b{n}"), attach, &rust_log)?,
                "attached lb_xdp",
            ));
            let be = &self.backends[usize::from(n - 1)];
            let mut cid = be.command(&lab)?;
            // Both families on one socket, as most pods listen.
            cid.args(["backend", "--listen"])
                .arg(format!("[::]:{BACKEND_PORT_CID}"))
                .args(["--name", &backend_name(n), "--server-id", &server_id(n)])
                .args(["--server-id-len", &SERVER_ID_LEN.to_string()])
                .args(["--nonce-len", &NONCE_LEN.to_string(), "--cr-bits", "0"])
                .args(["--sni-names", SNI_NAMES])
                // One stateless-reset key for the pool: a live backend can then reset a
                // connection of a backend that is gone, and the client believes it.
                .args(["--reset-key", RESET_KEY]);
            let mut nocid = be.command(&lab)?;
            nocid
                .args(["backend", "--listen"])
                .arg(SocketAddr::new(backend_addr(n).into(), BACKEND_PORT_NOCID).to_string())
                .args([
                    "--name",
                    &format!("b{n}-nocid"),
                    "--server-id",
                    &format!("0b{n:02x}"),
                ])
                .args(["--server-id-len", "2", "--nonce-len", "6"]);
            waits.push((
                self.spawn(&format!("backend-b{n}"), cid, &rust_log)?,
                "certificate sha256",
            ));
            waits.push((
                self.spawn(&format!("backend-b{n}-nocid"), nocid, &rust_log)?,
                "certificate sha256",
            ));
        }
        self.write_config(&[1, 2, 3])?;
        let deadline = Instant::now() + START_DEADLINE;
        for (i, marker) in waits {
            self.wait_for_line(i, marker, deadline)?;
        }
        // kubelet probes the pods from before lb starts, as on a node lb is rolled out to:
        // its start-up must not cost a probe either.
        self.prober = Some(Prober::start(
            self.node.path(),
            probe_targets(),
            PROBE_EVERY,
        )?);
        self.start_daemon()?;
        for n in 1..=BACKENDS {
            let log = self.log(&format!("backend-b{n}"));
            let fp = log
                .lines()
                .find_map(|l| l.strip_prefix("certificate sha256 "))
                .map(|s| s.trim().to_string())
                .ok_or_else(|| anyhow!("backend b{n} printed no certificate line:\n{log}"))?;
            self.backend_certs.push(fp);
        }
        Ok(())
    }

    /// Start `lb run` on the node with the current config file and wait until it says it is
    /// running; returns how long that took. At start-up, and after [`Topology::stop_daemon`]
    /// to restart it.
    pub fn start_daemon(&mut self) -> Result<Duration> {
        let t = Instant::now();
        let mut run = Command::new(&self.lb);
        run.arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .args(["--netns", self.node.name()])
            .arg("--control-socket")
            .arg(&self.control_socket);
        let rust_log = self.rust_log.clone();
        let i = self.spawn("lb-run", run, &rust_log)?;
        self.wait_for_line(i, "lb: running", Instant::now() + START_DEADLINE)?;
        Ok(t.elapsed())
    }

    /// Poll child `i`'s log for a line starting with `marker`.
    fn wait_for_line(&mut self, i: usize, marker: &str, deadline: Instant) -> Result<()> {
        self.procs[i].wait_for_line(marker, deadline)
    }

    /// The log (stdout and stderr) of the child started as `what` (`lb-run`, `backend-b1`,
    /// `backend-b1-nocid`, `xdp-pass-b1`, ...).
    pub fn log(&self, what: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{what}.log"))).unwrap_or_default()
    }

    /// The config text with backends `which` (numbers 1..=3) behind both VIPs.
    pub fn config_text(which: &[u8]) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Written by lb's end-to-end topology.\n\
             interfaces = [\"n0\"]\n\
             backend_interfaces = [\"nb1\", \"nb2\", \"nb3\", \"np\"]\n\
             metrics_addr = \"{METRICS_ADDR}\"\n\n\
             [[vips]]\n\
             name = \"web\"\n\
             address = \"{VIP_CID}\"\n\
             ports = [{VIP_PORT}]\n\
             protocols = [\"tcp\", \"udp\"]\n\
             maglev_table_size = 1021\n\n\
             [[vips.quic_lb]]\n\
             config_id = 0\n\
             server_id_len = {SERVER_ID_LEN}\n\
             nonce_len = {NONCE_LEN}\n"
        );
        for &n in which {
            let _ = writeln!(
                s,
                "[[vips.backends]]\naddress = \"{}\"\nport = {BACKEND_PORT_CID}\nserver_id = \"{}\"\n",
                backend_addr(n),
                server_id(n)
            );
        }
        let _ = writeln!(
            s,
            "[[vips]]\n\
             name = \"web-nocid\"\n\
             address = \"{VIP_NOCID}\"\n\
             ports = [{VIP_PORT}]\n\
             protocols = [\"udp\"]\n\
             quic = false\n\
             maglev_table_size = 1021\n"
        );
        for &n in which {
            let _ = writeln!(
                s,
                "[[vips.backends]]\naddress = \"{}\"\nport = {BACKEND_PORT_NOCID}\n",
                backend_addr(n)
            );
        }
        s
    }

    /// Write the config (backends `which`) to [`Topology::config_path`]; `lb reload` applies it.
    pub fn write_config(&self, which: &[u8]) -> Result<()> {
        self.write_config_text(&Self::config_text(which))
    }

    pub fn write_config_text(&self, text: &str) -> Result<()> {
        let tmp = self.config_path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.config_path)
            .with_context(|| format!("writing {}", self.config_path.display()))
    }

    /// `lb reload --control-socket ...`: its exit status and output.
    pub fn reload(&self) -> Result<Output> {
        Command::new(&self.lb)
            .arg("reload")
            .arg("--control-socket")
            .arg(&self.control_socket)
            .stdin(Stdio::null())
            .output()
            .context("running lb reload")
    }

    /// A command that runs `lb-lab ARGS...` (a probe) in the client namespace.
    pub fn client_lab(&self) -> Result<Command> {
        self.client.command(&self.lab)
    }

    /// GET /metrics from the daemon, inside the node namespace.
    pub fn metrics(&self) -> Result<String> {
        let addr: SocketAddr = METRICS_ADDR.parse()?;
        http_get_in(&self.node, addr, "/metrics")
    }

    /// Leave everything running (namespaces, daemon, backends, temporary directory) and
    /// forget about it: for `lb-lab demo --keep`.
    pub fn leak(mut self) {
        self.keep = true;
        drop(self.prober.take());
        // The children's handles are dropped without a wait; they keep running.
        std::mem::forget(std::mem::take(&mut self.procs));
        std::mem::forget(self);
    }

    /// Pids of the children, by what they are.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs
            .iter()
            .map(|p| (p.what.clone(), p.child.id()))
            .collect()
    }

    /// Stop only the daemon (`lb run`) with SIGTERM and wait for it (SIGKILL after the
    /// deadline): its exit status and its log, so a test can check the clean shutdown.
    pub fn stop_daemon(&mut self) -> Result<(std::process::ExitStatus, String)> {
        let i = self
            .procs
            .iter()
            .position(|p| p.what == "lb-run")
            .context("the daemon is not running")?;
        let mut p = self.procs.remove(i);
        // SAFETY: kill(2) on our own child's pid, which is not yet reaped.
        unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_DEADLINE;
        let status = loop {
            if let Some(st) = p.child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                let _ = p.child.kill();
                break p.child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok((status, std::fs::read_to_string(&p.log).unwrap_or_default()))
    }

    /// Stop the prober, then every child: SIGTERM (the daemon detaches), SIGKILL after a
    /// deadline.
    pub fn stop(&mut self) {
        // First, so no probe reports the pods going away.
        drop(self.prober.take());
        stop_children(
            self.procs
                .iter_mut()
                .rev()
                .map(|p| (p.what.as_str(), &mut p.child)),
        );
        self.procs.clear();
    }
}

/// SIGTERM every child still running (in the order given), then wait for each until one
/// shared deadline and SIGKILL whatever is left.
pub fn stop_children<'a>(children: impl IntoIterator<Item = (&'a str, &'a mut Child)>) {
    let mut children: Vec<(&str, &mut Child)> = children.into_iter().collect();
    for (_, child) in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child's pid, which is not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + STOP_DEADLINE;
    for (what, child) in children {
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    eprintln!("{what} did not stop on SIGTERM; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        // The namespaces (fields) are deleted after this, with every veth in them.
    }
}

/// A minimal HTTP/1.1 GET from inside `ns` (std only); the body on 200.
pub fn http_get_in(ns: &NetNs, addr: SocketAddr, path: &str) -> Result<String> {
    let stream = ns.run_in(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))??;
    http_get(stream, addr, path)
}

fn http_get(mut stream: TcpStream, addr: SocketAddr, path: &str) -> Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    stream
        .read_to_end(&mut buf)
        .with_context(|| format!("reading http://{addr}{path}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("http://{addr}{path}: no HTTP response: {text:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        bail!("http://{addr}{path}: {status}");
    }
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok(if chunked {
        dechunk(body)
    } else {
        body.to_string()
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The `lb_*` sample lines of a Prometheus text exposition whose value is not zero.
pub fn nonzero_samples(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| l.starts_with("lb_"))
        .filter(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v != 0.0)
        })
        .collect()
}

/// A file of the source tree, by its path from the workspace root (for finding
/// tests/python/aioquic_client.py and .venv when the binary runs from the workspace).
pub fn workspace_path(rel: &str) -> PathBuf {
    // This crate is tests/lab/.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_text_parses_and_lists_the_backends() {
        let dir = std::env::temp_dir().join(format!("lb-topo-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.toml");
        std::fs::write(&path, Topology::config_text(&[1, 2])).unwrap();
        let cfg = lb_userspace::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let plan = lb_userspace::config::Plan::build(&cfg, None).unwrap_or_else(|e| panic!("{e}"));
        // .100 tcp + udp, .101 udp.
        assert_eq!(plan.vips.len(), 3);
        for v in &plan.vips {
            assert_eq!(v.backends.len(), 2, "{:?}", v.key);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nonzero_samples_filters() {
        let text = "# HELP lb_x x\nlb_x{a=\"1\"} 0\nlb_y{a=\"1\"} 5\nother 3\nlb_z 1.5\n";
        assert_eq!(nonzero_samples(text), vec!["lb_y{a=\"1\"} 5", "lb_z 1.5"]);
    }

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
