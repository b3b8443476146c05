//! `lb-lab bench-control-plane`: lb's Kubernetes control plane at scale, measured end to
//! end against the in-process fake API server (`fake-apiserver`).
//!
//! ```text
//!  lan ns: br0 198.18.0.2/24
//!    ├── n1 ── ext0 198.18.0.11  node-1: lb run --kube (XDP generic on ext0), API at 127.0.0.1:6443
//!    ├── n2 ── ext0 198.18.0.12  node-2
//!    └── n3 ── ext0 198.18.0.13  node-3
//! ```
//!
//! The bench plays the API server's clients: it creates `--services` Services of type
//! LoadBalancer with lb's class (TCP 443 and UDP 443 each: two VIPs per Service), one
//! EndpointSlice per Service holding `--endpoints` / `--services` endpoints spread over the
//! nodes, Ready Nodes and an IPPool big enough for every Service, all before the daemons
//! start. Then, per phase (each prints one progress line):
//!
//! 1. **Cold start**: from spawning the daemons until every node's `LB_VIPS` (read from the
//!    kernel through the map ids of the XDP program attached to its `ext0`) holds every VIP
//!    with a non-empty ring, the union of the nodes' announced VIPs (`/status`) covers every
//!    Service address, and every Service has its address in its status.
//! 2. **Update latency, idle**: one EndpointSlice change (one endpoint replaced by a fresh
//!    address) at a time; the time until the Service's two VIPs have flipped to a new ring
//!    in `LB_VIPS` on every node (the flip is the data plane's commit point: the new ring is
//!    written into free pool slots first, then `ring_offset` changes in one map update). A sample of changes is
//!    also checked in `LB_BACKENDS` (the new address is there on every node).
//! 3. **Update latency, busy**: the same while a load generator replaces endpoints of other
//!    Services at `--rate` changes per second.
//! 4. **Steady state**: nothing changes for `--window` seconds: API requests per minute
//!    per node (the fake API server logs every request), each daemon's RSS (VmRSS) and CPU
//!    time (utime + stime from /proc) over the window; then a forced re-list (history
//!    compacted, watches cut) must write nothing (`lb_map_changes_total` unchanged).
//! 5. **Small cluster**: all but `--small` Services deleted, the steady-state window again:
//!    the API request rate must not depend on the number of Services.
//!
//! Map writes per change: the sum of every node's `lb_map_changes_total` over the idle
//! phase, divided by the changes and the nodes.
//!
//! Everything lives in namespaces the bench creates (`lbcp<pid>-<n>`), with addresses from
//! 198.18.0.0/15 only: nodes 198.18.0.0/24, pods from 198.18.4.0, VIPs from 198.19.0.1,
//! fresh endpoint addresses from 198.19.64.0. The daemons and namespaces go on every exit
//! (drop), error or not.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd, AsRawFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use aya::maps::{HashMap, Map, MapData, MapInfo};
use fake_apiserver::FakeApiServer;
use k8s_openapi::{
    api::{
        core::v1::{
            Node, NodeAddress, NodeCondition, NodeStatus, Service, ServicePort, ServiceSpec,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use lb_common::{Backend, PROTO_TCP, PROTO_UDP, VipKey, VipMeta, map_names};
use lb_userspace::{
    dataplane::vip_key,
    kube::crd::{IPPool, IPPoolSpec},
    map_batch,
};
use serde::Serialize;
use serde_json::Value;

use crate::{
    children::Proc,
    demo::lb_binary,
    netns::{Mac, NetNs, veth_pair},
    topology::{http_get_in, stop_children},
};

const PREFIX: &str = "lbcp";
const API_PORT: u16 = 6443;
/// Each daemon's /status and /metrics, inside its own namespace.
const METRICS: &str = "127.0.0.1:9470";
const POD_PORT: u16 = 8443;
const NS: &str = "default";
/// First pod address; pods take consecutive addresses from here.
const POD_FIRST: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 0);
/// First Service address (the IPPool's range starts here).
const VIP_FIRST: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// Fresh endpoint addresses for the changes, handed out round robin from here to the end
/// of 198.19.0.0/16 (49,152 of them: far more than one run's changes keep alive at once).
const FRESH_FIRST: Ipv4Addr = Ipv4Addr::new(198, 19, 64, 0);
const FRESH_COUNT: u32 = 49_152;
/// Upper bounds that keep the three ranges apart.
const MAX_SERVICES: usize = 16_000;
const MAX_ENDPOINTS: usize = 60_000;
/// A change not seen in the maps within this is counted at this value (see
/// [`MAX_TIMEOUTS`]).
const CHANGE_DEADLINE: Duration = Duration::from_secs(10);
/// A latency phase ends after this many changes timed out.
const MAX_TIMEOUTS: usize = 3;
/// Every change's LB_BACKENDS is checked too, one in this many (a full read of the array).
const VERIFY_EVERY: usize = 10;

/// Set by SIGINT/SIGTERM: every loop of the bench checks it and returns an error, so the
/// daemons and namespaces go as on any other failure.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn interrupted() -> Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::Relaxed), "interrupted");
    Ok(())
}

/// Sleep `d` in short steps, returning early (an error) on SIGINT/SIGTERM.
fn sleep_checked(d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        interrupted()?;
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
    }
    Ok(())
}

pub const GOAL_COLD_START_S: f64 = 10.0;
pub const GOAL_UPDATE_P99_MS: f64 = 100.0;
pub const GOAL_RSS_MB: f64 = 300.0;

pub struct Options {
    pub services: usize,
    pub endpoints: usize,
    pub nodes: u8,
    /// Changes measured per latency phase.
    pub changes: usize,
    /// Background changes per second in the busy phase.
    pub rate: u32,
    /// Steady-state window.
    pub window: Duration,
    /// Services kept for the second steady-state window (0: skip it).
    pub small: usize,
    /// Cold start bound: past it the bench fails (and says what was missing).
    pub cold_start_limit: Duration,
    /// The `lb` binary; `None`: `$LB_BIN`, else `lb` beside this program.
    pub lb: Option<PathBuf>,
    pub json: Option<PathBuf>,
}

/// The figures; `--json` writes this object.
#[derive(Serialize, Debug, Default, Clone)]
pub struct Report {
    pub services: usize,
    pub endpoints: usize,
    pub nodes: usize,
    /// Why fewer nodes than asked, if so.
    pub nodes_note: Option<String>,
    /// VIPs in `LB_VIPS` with a ring, the minimum over nodes, after the cold start.
    pub vips_programmed: usize,
    pub cold_start_s: f64,
    /// Cold start: the slowest node's maps, the announcements, the Service statuses.
    pub cold_start_maps_s: f64,
    pub cold_start_announced_s: f64,
    pub cold_start_status_s: f64,
    /// Daemons spawned → every daemon has listed every Service and EndpointSlice (it opens
    /// the watches after its first complete list, as the fake API server counts them):
    /// the part of the cold start that is the API server's and the client's.
    pub cold_start_lists_s: f64,
    pub update_changes_idle: usize,
    pub update_p50_ms_idle: f64,
    pub update_p99_ms_idle: f64,
    pub update_max_ms_idle: f64,
    pub update_changes_busy: usize,
    pub busy_rate_per_s: f64,
    pub update_p50_ms_busy: f64,
    pub update_p99_ms_busy: f64,
    pub update_max_ms_busy: f64,
    /// Max over daemons of VmRSS at steady state, and of VmHWM (peak) at the end.
    pub rss_mb: f64,
    pub rss_peak_mb: f64,
    /// CPU seconds per minute (utime + stime), max over daemons, over the steady window.
    pub cpu_s_per_min_steady: f64,
    /// CPU seconds each daemon used from its start to the end of the cold start (max).
    pub cpu_s_cold_start: f64,
    pub steady_window_s: f64,
    pub api_requests_per_min_per_node: f64,
    /// Requests in the window by (method, resource), all nodes together.
    pub api_requests_by_kind: BTreeMap<String, u64>,
    pub services_small: usize,
    pub api_requests_per_min_per_node_small: Option<f64>,
    /// `lb_map_changes_total` per EndpointSlice change per node (idle phase).
    pub map_writes_per_change: f64,
    /// `lb_map_changes_total` written by a forced re-list of an unchanged cluster (all nodes).
    pub relist_map_writes: u64,
}

/// One node of the bench.
struct BenchNode {
    /// Shared with the cold start's `/status` reader thread.
    ns: Arc<NetNs>,
    daemon: Option<Proc>,
    maps: Option<NodeMaps>,
}

/// A daemon's maps, opened by id (they belong to its process, not to us).
struct NodeMaps {
    vips: HashMap<MapData, VipKey, VipMeta>,
    vips_fd: MapData,
    backends_fd: MapData,
}

impl NodeMaps {
    fn meta(&self, key: &VipKey) -> Option<VipMeta> {
        self.vips.get(key, 0).ok()
    }

    /// VIPs with a ring (backends), read in batches.
    fn vips_with_ring(&self) -> Result<usize> {
        let all: Vec<(VipKey, VipMeta)> =
            map_batch::lookup_all(self.vips_fd.fd().as_fd().as_raw_fd())?;
        Ok(all.iter().filter(|(_, m)| m.ring_size != 0).count())
    }

    fn backends(&self) -> Result<BTreeSet<IpAddr>> {
        let all: Vec<(u32, Backend)> =
            map_batch::lookup_all(self.backends_fd.fd().as_fd().as_raw_fd())?;
        Ok(all
            .iter()
            .filter(|(_, b)| b.flags & lb_common::BACKEND_F_VALID != 0)
            .map(|(_, b)| backend_ip(b))
            .collect())
    }
}

/// The address of a `LB_BACKENDS` entry (the daemon's layout: an IPv4 address in the first
/// four octets).
fn backend_ip(b: &Backend) -> IpAddr {
    if b.family == lb_common::FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(b.addr[0], b.addr[1], b.addr[2], b.addr[3]))
    } else {
        IpAddr::V6(b.addr.into())
    }
}

struct Bench {
    rt: tokio::runtime::Runtime,
    api: FakeApiServer,
    dir: PathBuf,
    /// Kept for its bridge; deleted on drop after the nodes.
    _lan: NetNs,
    nodes: Vec<BenchNode>,
    lb: PathBuf,
    /// The EndpointSlices as last written, by Service index.
    slices: Vec<EndpointSlice>,
    fresh: Arc<AtomicU32>,
    /// Keep the daemons' logs (in `dir`) when the bench stops: until it finished well.
    keep_logs: bool,
}

impl Drop for Bench {
    fn drop(&mut self) {
        stop_children(
            self.nodes
                .iter_mut()
                .filter_map(|n| n.daemon.as_mut())
                .map(|p| ("lb run", &mut p.child)),
        );
        if self.keep_logs {
            eprintln!(
                "control-plane bench: the daemons' logs are in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // The namespaces (fields) go after this, with every veth in them.
    }
}

fn node_name(i: u8) -> String {
    format!("node-{i}")
}

fn node_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + i)
}

fn plus(a: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(a) + n)
}

fn svc_name(i: usize) -> String {
    format!("svc-{i:05}")
}

fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        ..Default::default()
    }
}

fn ready_node(i: u8) -> Node {
    Node {
        metadata: meta(None, &node_name(i)),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: node_addr(i).to_string(),
            }]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// TCP 443 and UDP 443 to the pods' port `web`.
fn service(i: usize) -> Service {
    let port = |n: &str, proto: &str| ServicePort {
        name: Some(n.into()),
        port: 443,
        protocol: Some(proto.into()),
        target_port: Some(IntOrString::String("web".into())),
        ..Default::default()
    };
    Service {
        metadata: meta(Some(NS), &svc_name(i)),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: Some(lb_userspace::config::DEFAULT_LOAD_BALANCER_CLASS.into()),
            ports: Some(vec![port("https", "TCP"), port("h3", "UDP")]),
            selector: Some([("app".to_owned(), svc_name(i))].into()),
            ..Default::default()
        }),
        status: None,
    }
}

fn endpoint(addr: Ipv4Addr, node: u8) -> Endpoint {
    Endpoint {
        addresses: vec![addr.to_string()],
        node_name: Some(node_name(node)),
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        ..Default::default()
    }
}

fn slice(i: usize, endpoints: Vec<Endpoint>) -> EndpointSlice {
    let mut m = meta(Some(NS), &format!("{}-abc", svc_name(i)));
    m.labels = Some([("kubernetes.io/service-name".to_owned(), svc_name(i))].into());
    let port = |n: &str, proto: &str| EndpointPort {
        name: Some(n.into()),
        port: Some(POD_PORT.into()),
        protocol: Some(proto.into()),
        ..Default::default()
    };
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(vec![port("https", "TCP"), port("h3", "UDP")]),
    }
}

/// p-th percentile (nearest rank) of sorted `xs`, in ms.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let d = sorted[rank.clamp(1, sorted.len()) - 1];
    round2(d.as_secs_f64() * 1e3)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// (VmRSS, VmHWM) in MB of `pid`.
fn rss_mb(pid: u32) -> Result<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0))
}

/// utime + stime of `pid`, in seconds.
fn cpu_s(pid: u32) -> Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// The map ids of the XDP program attached to `ext0` in `ns` (none until the daemon
/// attached).
fn xdp_map_ids(ns: &NetNs) -> Result<Option<Vec<u32>>> {
    let out = ns.ip(&["-d", "-j", "link", "show", "dev", "ext0"])?;
    let v: Value = serde_json::from_str(&out)?;
    let Some(id) = v[0]["xdp"]["prog"]["id"].as_u64() else {
        return Ok(None);
    };
    let prog = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| u64::from(p.id()) == id);
    let Some(prog) = prog else { return Ok(None) };
    Ok(prog.map_ids()?)
}

fn open_maps(ids: &[u32]) -> Result<NodeMaps> {
    let find = |name: &str| -> Result<u32> {
        ids.iter()
            .copied()
            .find(|id| {
                MapInfo::from_id(*id)
                    .ok()
                    .is_some_and(|m| m.name_as_str() == Some(name))
            })
            .with_context(|| format!("the XDP program uses no map {name} (maps {ids:?})"))
    };
    let vips_id = find(map_names::VIPS)?;
    let backends_id = find(map_names::BACKENDS)?;
    let vips = HashMap::try_from(Map::from_map_data(MapData::from_id(vips_id)?)?)?;
    Ok(NodeMaps {
        vips,
        vips_fd: MapData::from_id(vips_id)?,
        backends_fd: MapData::from_id(backends_id)?,
    })
}

impl Bench {
    fn build(opts: &Options) -> Result<Bench> {
        let lb = match &opts.lb {
            Some(lb) => lb.clone(),
            None => lb_binary(&std::env::current_exe()?)?,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let dir = std::env::temp_dir().join(format!("lb-cp-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let lan = NetNs::create(PREFIX)?;
        lan.ip(&["link", "add", "br0", "type", "bridge"])?;
        lan.link_up("br0")?;
        lan.addr_add("br0", "198.18.0.2/24")?;
        let mut b = Bench {
            rt,
            api: FakeApiServer::new(),
            dir,
            _lan: lan,
            nodes: Vec::new(),
            lb,
            slices: Vec::new(),
            fresh: Arc::default(),
            keep_logs: true,
        };
        for i in 1..=opts.nodes {
            b.add_node(i)?;
        }
        Ok(b)
    }

    fn add_node(&mut self, i: u8) -> Result<()> {
        let ns = NetNs::create(PREFIX)?;
        let peer = format!("n{i}");
        veth_pair(
            &ns,
            "ext0",
            Mac::from([0x02, 0x6c, 0, 0, 1, i]),
            &self._lan,
            &peer,
            Mac::from([0x02, 0x6c, 0, 0, 2, i]),
        )?;
        self._lan.ip(&["link", "set", &peer, "master", "br0"])?;
        ns.addr_add("ext0", &format!("{}/24", node_addr(i)))?;
        // The API server as this node sees it: 127.0.0.1:6443 in its own namespace.
        let listener = ns.run_in(|| std::net::TcpListener::bind(("127.0.0.1", API_PORT)))??;
        let api = self.api.clone();
        self.rt.spawn(async move { api.serve(listener).await });
        self.nodes.push(BenchNode {
            ns: Arc::new(ns),
            daemon: None,
            maps: None,
        });
        Ok(())
    }

    /// Nodes, CRDs, the pool, the Services and their EndpointSlices.
    fn populate(&mut self, opts: &Options) -> Result<()> {
        for (_, crd) in lb_userspace::kube::crd::all_crds()? {
            self.api.create(&crd)?;
        }
        for i in 1..=opts.nodes {
            self.api.create(&ready_node(i))?;
        }
        let last = plus(VIP_FIRST, opts.services as u32 - 1);
        let pool = IPPool::new(
            "bench",
            IPPoolSpec {
                addresses: vec![format!("{VIP_FIRST}-{last}")],
                auto_assign: true,
                service_selector: None,
                l2: None,
            },
        );
        self.api.create_json(serde_json::to_value(&pool)?)?;
        let mut pod = 0u32;
        for s in 0..opts.services {
            // The remainder goes to the first Services, one each.
            let n =
                opts.endpoints / opts.services + usize::from(s < opts.endpoints % opts.services);
            let eps = (0..n)
                .map(|_| {
                    let node = (pod % u32::from(opts.nodes)) as u8 + 1;
                    let e = endpoint(plus(POD_FIRST, pod), node);
                    pod += 1;
                    e
                })
                .collect();
            let sl = slice(s, eps);
            self.api.create(&service(s))?;
            self.api.create(&sl)?;
            self.slices.push(sl);
        }
        Ok(())
    }

    fn start_daemon(&mut self, i: u8) -> Result<()> {
        let dir = self.dir.join(node_name(i));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            FakeApiServer::kubeconfig(&format!("http://127.0.0.1:{API_PORT}")),
        )?;
        let config = dir.join("lb.toml");
        std::fs::write(
            &config,
            format!(
                "interfaces = [{{ name = \"ext0\", xdp_mode = \"generic\" }}]\n\
                 metrics_addr = \"{METRICS}\"\n\
                 [kubernetes]\nlease_namespace = \"lb-system\"\n\
                 [bgp]\nrun_dir = \"{}\"\n",
                dir.join("bird").display()
            ),
        )?;
        let mut cmd = self.nodes[usize::from(i - 1)].ns.command(&self.lb)?;
        cmd.args(["run", "--kube", "--config"])
            .arg(&config)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--node-name", &node_name(i)])
            .arg("--control-socket")
            .arg(dir.join("lb.sock"));
        // The daemon dies with the bench, however the bench ends (SIGKILL included).
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let p = Proc::spawn(&dir, "lb-run", cmd, "info")?;
        self.nodes[usize::from(i - 1)].daemon = Some(p);
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.daemon.as_ref().map(|p| p.child.id()))
            .collect()
    }

    /// Every daemon still runs (else its log's tail as the error).
    fn check_alive(&mut self) -> Result<()> {
        interrupted()?;
        for n in &mut self.nodes {
            if let Some(p) = &mut n.daemon
                && let Some(status) = p.child.try_wait()?
            {
                let out = p.output();
                let tail: Vec<&str> = out.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("{} exited ({status}):\n{}", p.what, tail.join("\n"));
            }
        }
        Ok(())
    }

    /// `lb_map_changes_total` of node `k`, from /metrics.
    fn map_changes(&self, k: usize) -> Result<u64> {
        // /metrics waits for the daemon's lock, which a long map sync holds (and at 20,000
        // VIPs it is a large page): retry within a deadline rather than fail on one timeout.
        let deadline = Instant::now() + Duration::from_secs(120);
        let body = loop {
            interrupted()?;
            // curl, for a read timeout longer than `http_get_in`'s 5 s: at 20,000 VIPs a
            // scrape under load takes longer than that.
            match self.nodes[k].ns.exec(
                "curl",
                &[
                    "-sf",
                    "--max-time",
                    "60",
                    &format!("http://{METRICS}/metrics"),
                ],
            ) {
                Ok(body) => break body,
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("node-{}'s /metrics", k + 1)));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        body.lines()
            .find_map(|l| l.strip_prefix("lb_map_changes_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .context("no lb_map_changes_total in /metrics")
    }

    fn map_changes_all(&self) -> Result<u64> {
        (0..self.nodes.len()).map(|k| self.map_changes(k)).sum()
    }

    /// Service index -> its address, from the Services' status.
    fn vips(&self, services: usize) -> Result<Vec<IpAddr>> {
        let mut by_name: StdHashMap<String, IpAddr> = StdHashMap::new();
        for svc in self.api.list::<Service>() {
            if let (Some(name), Some(ip)) = (
                svc.metadata.name.clone(),
                lb_userspace::kube::status::ingress_ips(&svc)
                    .first()
                    .copied(),
            ) {
                by_name.insert(name, ip);
            }
        }
        (0..services)
            .map(|i| {
                by_name
                    .get(&svc_name(i))
                    .copied()
                    .with_context(|| format!("{} has no address", svc_name(i)))
            })
            .collect()
    }

    /// Cold start: spawn every daemon, then poll until every VIP is programmed on every
    /// node, announced by some node and in its Service's status. The announcements are
    /// read from `/status` on a thread of their own: `/status` waits for the daemon's lock,
    /// which a map sync holds, and that wait must not delay the other two observations.
    fn cold_start(&mut self, opts: &Options, report: &mut Report) -> Result<()> {
        let want_vips = opts.services * 2;
        let t0 = Instant::now();
        for i in 1..=opts.nodes {
            self.start_daemon(i)?;
        }
        let deadline = t0 + opts.cold_start_limit;
        let mut maps_done: Vec<Option<Duration>> = vec![None; self.nodes.len()];
        let mut programmed = vec![0usize; self.nodes.len()];
        let mut status_at = None;
        let mut lists_at = None;
        let mut last_status_poll = Instant::now() - Duration::from_secs(1);
        let give_up = Arc::new(AtomicBool::new(false));
        let maps_ready = Arc::new(AtomicBool::new(false));
        let nss: Vec<Arc<NetNs>> = self.nodes.iter().map(|n| n.ns.clone()).collect();
        let (announced_at, result) = std::thread::scope(|scope| {
            let announced = {
                let give_up = give_up.clone();
                let maps_ready = maps_ready.clone();
                scope.spawn(move || -> Option<Duration> {
                    while !give_up.load(Ordering::Relaxed) {
                        // A node announces after it programmed its maps, and `/status`
                        // (per-VIP counters of every VIP, under the daemon's lock) is not
                        // free: it is read only once the maps are done.
                        if !maps_ready.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        let mut union = BTreeSet::new();
                        for ns in &nss {
                            if let Ok(body) = http_get_in(ns, METRICS.parse().ok()?, "/status")
                                && let Ok(s) = serde_json::from_str::<Value>(&body)
                                && let Some(a) = s["sync"]["announced"].as_array()
                            {
                                union
                                    .extend(a.iter().filter_map(|v| v.as_str().map(str::to_owned)));
                            }
                        }
                        if union.len() >= opts.services {
                            return Some(t0.elapsed());
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    None
                })
            };
            let result = (|| -> Result<()> {
                loop {
                    interrupted()?;
                    let k_nodes = self.nodes.len() as u64;
                    if lists_at.is_none()
                        && self.api.watch_count("services") >= k_nodes
                        && self.api.watch_count("endpointslices.discovery.k8s.io") >= k_nodes
                    {
                        lists_at = Some(t0.elapsed());
                    }
                    for (k, n) in self.nodes.iter_mut().enumerate() {
                        if let Some(p) = &mut n.daemon
                            && let Some(st) = p.child.try_wait()?
                        {
                            bail!(
                                "{} on node-{} exited ({st}):\n{}",
                                p.what,
                                k + 1,
                                p.output()
                            );
                        }
                        if maps_done[k].is_some() {
                            continue;
                        }
                        if n.maps.is_none()
                            && let Some(ids) = xdp_map_ids(&n.ns)?
                        {
                            n.maps = Some(open_maps(&ids)?);
                        }
                        if let Some(m) = &n.maps {
                            programmed[k] = m.vips_with_ring()?;
                            if programmed[k] >= want_vips {
                                maps_done[k] = Some(t0.elapsed());
                            }
                        }
                    }
                    // Listing 10,000 Services from the fake API server costs it (and the
                    // bench) CPU the daemons need; a node programs a VIP only once its
                    // Service's status has the address, so the list is read once the maps
                    // are done (then every 250 ms).
                    if status_at.is_none()
                        && maps_done.iter().all(Option::is_some)
                        && last_status_poll.elapsed() >= Duration::from_millis(250)
                    {
                        last_status_poll = Instant::now();
                        if self.vips(opts.services).is_ok() {
                            status_at = Some(t0.elapsed());
                        }
                    }
                    if maps_done.iter().all(Option::is_some) {
                        maps_ready.store(true, Ordering::Relaxed);
                        if status_at.is_some() {
                            return Ok(());
                        }
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "cold start: not done after {:?}: VIPs with a ring per node \
                             {programmed:?} of {want_vips}, statuses {}",
                            opts.cold_start_limit,
                            status_at.is_some()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })();
            if result.is_err() {
                give_up.store(true, Ordering::Relaxed);
            } else {
                // The maps and statuses are done; the announcements get the rest of the
                // time limit.
                while !announced.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                give_up.store(true, Ordering::Relaxed);
            }
            (announced.join().ok().flatten(), result)
        });
        result?;
        let Some(announced) = announced_at else {
            bail!(
                "cold start: the nodes did not announce every Service address within {:?}",
                opts.cold_start_limit
            );
        };
        let maps_s = maps_done
            .iter()
            .flatten()
            .max()
            .copied()
            .unwrap_or_default();
        let status = status_at.unwrap_or_default();
        report.cold_start_maps_s = round2(maps_s.as_secs_f64());
        report.cold_start_announced_s = round2(announced.as_secs_f64());
        report.cold_start_status_s = round2(status.as_secs_f64());
        report.cold_start_lists_s = round2(lists_at.unwrap_or_default().as_secs_f64());
        report.cold_start_s = round2(maps_s.max(announced).max(status).as_secs_f64());
        report.vips_programmed = programmed.iter().copied().min().unwrap_or(0);
        report.cpu_s_cold_start = self
            .pids()
            .iter()
            .map(|p| cpu_s(*p).unwrap_or(0.0))
            .fold(0.0, f64::max);
        Ok(())
    }

    fn fresh_addr(&self) -> Ipv4Addr {
        plus(
            FRESH_FIRST,
            self.fresh.fetch_add(1, Ordering::Relaxed) % FRESH_COUNT,
        )
    }

    /// Replace endpoint 0 of Service `s` with a fresh address; returns it.
    fn change(&mut self, s: usize) -> Result<Ipv4Addr> {
        let addr = self.fresh_addr();
        let sl = &mut self.slices[s];
        ensure!(!sl.endpoints.is_empty(), "{} has no endpoints", svc_name(s));
        sl.endpoints[0].addresses = vec![addr.to_string()];
        sl.metadata.resource_version = None;
        self.api.replace(&*sl)?;
        Ok(addr)
    }

    /// `changes` changes to Services among `pick`, one at a time; each one's time until both
    /// of its VIPs flipped to a new ring on every node.
    fn measure_updates(
        &mut self,
        what: &str,
        vips: &[IpAddr],
        pick: std::ops::Range<usize>,
        changes: usize,
        budget: Duration,
    ) -> Result<Vec<Duration>> {
        let t_phase = Instant::now();
        let mut out = Vec::with_capacity(changes);
        let mut timeouts = 0;
        for c in 0..changes {
            interrupted()?;
            if t_phase.elapsed() > budget {
                println!(
                    "control-plane bench: {what}: time budget {budget:?} spent after {c} changes; \
                     reporting those"
                );
                break;
            }
            let s = pick.start + rand::random_range(0..pick.len());
            let keys = [
                vip_key(vips[s], 443, PROTO_TCP),
                vip_key(vips[s], 443, PROTO_UDP),
            ];
            let before: Vec<Vec<Option<VipMeta>>> = self
                .nodes
                .iter()
                .map(|n| {
                    let m = n.maps.as_ref();
                    keys.iter().map(|k| m.and_then(|m| m.meta(k))).collect()
                })
                .collect();
            let t = Instant::now();
            let addr = self.change(s)?;
            let deadline = t + CHANGE_DEADLINE;
            loop {
                let done = self.nodes.iter().zip(&before).all(|(n, b)| {
                    let m = n.maps.as_ref();
                    keys.iter()
                        .zip(b)
                        .all(|(k, old)| m.and_then(|m| m.meta(k)) != *old)
                });
                if done {
                    break;
                }
                if Instant::now() > deadline {
                    self.check_alive()?;
                    break;
                }
                // Half a millisecond of resolution; the polls are single-key lookups.
                std::thread::sleep(Duration::from_micros(500));
            }
            let took = t.elapsed();
            out.push(took);
            if took > CHANGE_DEADLINE {
                // Counted at the deadline (a lower bound): the percentiles stay honest and
                // the phase stays bounded in time.
                timeouts += 1;
                println!(
                    "control-plane bench: {what}: change {c} ({} endpoint -> {addr}) not in \
                     every node's LB_VIPS after {CHANGE_DEADLINE:?}",
                    svc_name(s)
                );
                if timeouts >= MAX_TIMEOUTS {
                    println!(
                        "control-plane bench: {what}: {MAX_TIMEOUTS} changes timed out; ending \
                         the phase"
                    );
                    break;
                }
                continue;
            }
            if c % VERIFY_EVERY == 0 {
                for (k, n) in self.nodes.iter().enumerate() {
                    if let Some(m) = &n.maps {
                        ensure!(
                            m.backends()?.contains(&IpAddr::V4(addr)),
                            "{what}: node-{}'s ring flipped but LB_BACKENDS lacks {addr}",
                            k + 1
                        );
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Wait until `lb_map_changes_total` stays put on every node for a second.
    fn quiesce(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let mut before = self.map_changes_all()?;
        loop {
            std::thread::sleep(Duration::from_secs(1));
            self.check_alive()?;
            let now = self.map_changes_all()?;
            if now == before {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the daemons still write their maps after {within:?}"
            );
            before = now;
        }
    }

    /// Wait until `addr` is in every node's LB_BACKENDS.
    fn wait_backend(&mut self, addr: IpAddr, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            self.check_alive()?;
            let mut all = true;
            for n in &self.nodes {
                if let Some(m) = &n.maps {
                    all &= m.backends()?.contains(&addr);
                }
            }
            if all {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{addr} not in every node's LB_BACKENDS after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Requests per minute per node, RSS and CPU over a quiet `window`.
    fn steady(&self, window: Duration) -> Result<(f64, BTreeMap<String, u64>, f64, f64)> {
        let pids = self.pids();
        let cpu0: Vec<f64> = pids.iter().map(|p| cpu_s(*p).unwrap_or(0.0)).collect();
        self.api.clear_requests();
        let t0 = Instant::now();
        sleep_checked(window)?;
        let secs = t0.elapsed().as_secs_f64();
        let log = self.api.requests();
        let cpu = pids
            .iter()
            .zip(&cpu0)
            .map(|(p, c0)| cpu_s(*p).unwrap_or(0.0) - c0)
            .fold(0.0, f64::max);
        let rss = pids
            .iter()
            .map(|p| rss_mb(*p).map(|r| r.0).unwrap_or(0.0))
            .fold(0.0, f64::max);
        let mut kinds = BTreeMap::new();
        for r in &log {
            // /api/v1/namespaces/x/services/y -> services; group paths likewise.
            let parts: Vec<&str> = r.path.split('/').filter(|p| !p.is_empty()).collect();
            let resource = parts
                .iter()
                .position(|p| *p == "namespaces")
                .and_then(|i| parts.get(i + 2))
                .or_else(|| parts.last())
                .copied()
                .unwrap_or("?");
            let kind = format!(
                "{} {resource}{}",
                r.method,
                if r.watch { " (watch)" } else { "" }
            );
            *kinds.entry(kind).or_insert(0) += 1;
        }
        let per_min_node = log.len() as f64 * 60.0 / secs / self.nodes.len() as f64;
        Ok((
            round2(per_min_node),
            kinds,
            round2(rss),
            round2(cpu * 60.0 / secs),
        ))
    }

    /// Force every daemon to re-list (history compacted, watches cut); wait until every
    /// node listed Services and EndpointSlices again and a sync ran; the map writes that
    /// caused.
    fn relist(&self, settle: Duration) -> Result<u64> {
        let before = self.map_changes_all()?;
        let lists = |r: &str| self.api.list_count(r);
        let (s0, e0) = (lists("services"), lists("endpointslices.discovery.k8s.io"));
        self.api.compact();
        self.api.cut_watches();
        let k = self.nodes.len() as u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while lists("services") < s0 + k || lists("endpointslices.discovery.k8s.io") < e0 + k {
            ensure!(
                Instant::now() < deadline,
                "re-list: the daemons did not list again within 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // A re-list is an event: the controller syncs right after. What is measured is that
        // nothing is written, so this is a window to watch, not a wait for a result.
        sleep_checked(settle)?;
        Ok(self.map_changes_all()? - before)
    }

    /// Delete every Service (and its slice) from `keep` on; wait until every node's maps
    /// hold only the rest.
    fn shrink(&mut self, total: usize, keep: usize) -> Result<()> {
        for s in keep..total {
            self.api.delete::<Service>(Some(NS), &svc_name(s))?;
            self.api
                .delete::<EndpointSlice>(Some(NS), &format!("{}-abc", svc_name(s)))?;
        }
        self.slices.truncate(keep);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            self.check_alive()?;
            let mut counts = Vec::new();
            for n in &self.nodes {
                if let Some(m) = &n.maps {
                    counts.push(m.vips_with_ring()?);
                }
            }
            if counts.iter().all(|c| *c == keep * 2) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "shrinking to {keep} Services: VIPs per node still {counts:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Background load: replace endpoints of Services in `pick` at `rate` per second until
/// `stop`; returns the changes made.
fn churn(
    api: FakeApiServer,
    mut slices: Vec<(usize, EndpointSlice)>,
    fresh: Arc<AtomicU32>,
    rate: u32,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
) -> Option<Ipv4Addr> {
    let mut last = None;
    let every = Duration::from_secs(1) / rate.max(1);
    let mut next = Instant::now();
    let mut j = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let n = slices.len();
        let (_, sl) = &mut slices[j % n];
        j += 1;
        let addr = plus(
            FRESH_FIRST,
            fresh.fetch_add(1, Ordering::Relaxed) % FRESH_COUNT,
        );
        if let Some(e) = sl.endpoints.last_mut() {
            e.addresses = vec![addr.to_string()];
        }
        sl.metadata.resource_version = None;
        if api.replace(&*sl).is_ok() {
            made.fetch_add(1, Ordering::Relaxed);
            last = Some(addr);
        }
        // Paced by a schedule, not by the time each write took: the offered load is `rate`.
        next += every;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            next = now;
        }
    }
    last
}

/// Run the whole bench; print the table and write `--json`.
pub fn run(opts: &Options) -> Result<Report> {
    ensure!(opts.services >= 2, "--services must be at least 2");
    ensure!(
        opts.services <= MAX_SERVICES,
        "--services is at most {MAX_SERVICES} (the bench's address plan)"
    );
    ensure!(
        opts.endpoints >= opts.services && opts.endpoints <= MAX_ENDPOINTS,
        "--endpoints must be between --services (one each) and {MAX_ENDPOINTS}"
    );
    ensure!(opts.nodes >= 1 && opts.nodes <= 8, "--nodes must be 1 to 8");
    crate::netns::require_root()?;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut report = Report {
        services: opts.services,
        endpoints: opts.endpoints,
        nodes: usize::from(opts.nodes),
        ..Report::default()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < usize::from(opts.nodes) {
        report.nodes_note = Some(format!(
            "{} daemons share {cores} CPU cores with the fake API server and the bench: \
             latencies include that contention",
            opts.nodes
        ));
    }
    println!(
        "control-plane bench: {} Services ({} VIPs), {} endpoints, {} nodes",
        opts.services,
        opts.services * 2,
        opts.endpoints,
        opts.nodes
    );
    let t = Instant::now();
    let mut b = Bench::build(opts)?;
    b.populate(opts)?;
    println!(
        "control-plane bench: [1/6] network and API objects ready in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    b.cold_start(opts, &mut report)?;
    println!(
        "control-plane bench: [2/6] cold start {:.2} s (initial lists {:.2} s, maps {:.2} s, \
         announced {:.2} s, statuses {:.2} s; {} VIPs programmed per node)",
        report.cold_start_s,
        report.cold_start_lists_s,
        report.cold_start_maps_s,
        report.cold_start_announced_s,
        report.cold_start_status_s,
        report.vips_programmed
    );
    let vips = b.vips(opts.services)?;
    // Idle means idle: the cold start's last syncs (status events coming back) are done.
    let t = Instant::now();
    b.quiesce(Duration::from_secs(300))?;
    println!(
        "control-plane bench: the daemons stopped writing their maps {:.1} s after the cold \
         start",
        t.elapsed().as_secs_f64()
    );
    // Measured changes go to the first half of the Services, the background load to the
    // second half: a measured VIP flips only for its own change.
    let half = opts.services / 2;
    let budget = Duration::from_secs(120);

    let m0 = b.map_changes_all()?;
    let idle = b.measure_updates("idle", &vips, 0..half, opts.changes, budget)?;
    let m1 = b.map_changes_all()?;
    report.update_changes_idle = idle.len();
    report.update_p50_ms_idle = percentile(&idle, 50.0);
    report.update_p99_ms_idle = percentile(&idle, 99.0);
    report.update_max_ms_idle = percentile(&idle, 100.0);
    report.map_writes_per_change = if idle.is_empty() {
        0.0
    } else {
        round2((m1 - m0) as f64 / idle.len() as f64 / b.nodes.len() as f64)
    };
    println!(
        "control-plane bench: [3/6] idle: {} changes, p50 {} ms, p99 {} ms, max {} ms; {} map \
         writes per change per node",
        idle.len(),
        report.update_p50_ms_idle,
        report.update_p99_ms_idle,
        report.update_max_ms_idle,
        report.map_writes_per_change
    );

    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let bg: Vec<(usize, EndpointSlice)> = (half..opts.services)
        .map(|s| (s, b.slices[s].clone()))
        .collect();
    let load = {
        let (api, fresh, stop, made) = (b.api.clone(), b.fresh.clone(), stop.clone(), made.clone());
        let rate = opts.rate;
        std::thread::spawn(move || churn(api, bg, fresh, rate, stop, made))
    };
    let tb = Instant::now();
    let busy = b.measure_updates("busy", &vips, 0..half, opts.changes, budget);
    stop.store(true, Ordering::Relaxed);
    let last = load.join().ok().flatten();
    let busy = busy?;
    report.busy_rate_per_s =
        round2(made.load(Ordering::Relaxed) as f64 / tb.elapsed().as_secs_f64());
    report.update_changes_busy = busy.len();
    report.update_p50_ms_busy = percentile(&busy, 50.0);
    report.update_p99_ms_busy = percentile(&busy, 99.0);
    report.update_max_ms_busy = percentile(&busy, 100.0);
    println!(
        "control-plane bench: [4/6] busy ({} other changes/s): {} changes, p50 {} ms, p99 {} \
         ms, max {} ms",
        report.busy_rate_per_s,
        busy.len(),
        report.update_p50_ms_busy,
        report.update_p99_ms_busy,
        report.update_max_ms_busy
    );
    // The quiet window starts once every node has caught up with the background load (the
    // last address it wrote is in every node's LB_BACKENDS; the controller applies the
    // cluster as a whole, so everything before it is in too).
    let t = Instant::now();
    if let Some(addr) = last {
        b.wait_backend(IpAddr::V4(addr), Duration::from_secs(120))?;
    }
    // The backend is written before the rings that use it: also wait until no node writes
    // its maps for a second.
    b.quiesce(Duration::from_secs(120))?;
    println!(
        "control-plane bench: every node caught up with the load {:.1} s after it stopped",
        t.elapsed().as_secs_f64()
    );

    let (rpm, kinds, rss, cpu) = b.steady(opts.window)?;
    report.api_requests_per_min_per_node = rpm;
    report.api_requests_by_kind = kinds;
    report.rss_mb = rss;
    report.cpu_s_per_min_steady = cpu;
    report.steady_window_s = opts.window.as_secs_f64();
    report.relist_map_writes = b.relist(opts.window.min(Duration::from_secs(3)))?;
    report.rss_peak_mb = round2(
        b.pids()
            .iter()
            .map(|p| rss_mb(*p).map(|r| r.1).unwrap_or(0.0))
            .fold(0.0, f64::max),
    );
    println!(
        "control-plane bench: [5/6] steady over {:?}: {} API requests/min/node, RSS {} MB \
         (peak {} MB), {} CPU s/min; a re-list wrote {} map entries",
        opts.window, rpm, rss, report.rss_peak_mb, cpu, report.relist_map_writes
    );

    if opts.small > 0 && opts.small < opts.services {
        b.shrink(opts.services, opts.small)?;
        let (rpm_small, _, _, _) = b.steady(opts.window)?;
        report.services_small = opts.small;
        report.api_requests_per_min_per_node_small = Some(rpm_small);
        println!(
            "control-plane bench: [6/6] {} Services: {} API requests/min/node",
            opts.small, rpm_small
        );
    } else {
        println!("control-plane bench: [6/6] small-cluster window skipped");
    }
    b.check_alive()?;
    b.keep_logs = false;
    drop(b);

    print_table(&report);
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

fn print_table(r: &Report) {
    println!();
    println!(
        "control plane: {} Services, {} endpoints, {} nodes",
        r.services, r.endpoints, r.nodes
    );
    if let Some(note) = &r.nodes_note {
        println!("  note: {note}");
    }
    println!("  {:<44} {:>12}  goal", "measure", "value");
    let row = |name: &str, value: String, goal: &str, v: &str| {
        println!("  {name:<44} {value:>12}  {goal:<14} {v}");
    };
    row(
        "VIPs programmed (min over nodes)",
        r.vips_programmed.to_string(),
        &format!("{}", r.services * 2),
        verdict(r.vips_programmed == r.services * 2),
    );
    row(
        "cold start to programmed + announced (s)",
        format!("{:.2}", r.cold_start_s),
        "< 10",
        verdict(r.cold_start_s < GOAL_COLD_START_S),
    );
    row(
        "  of which the daemons' initial lists (s)",
        format!("{:.2}", r.cold_start_lists_s),
        "",
        "",
    );
    row(
        "update p50 / p99, idle (ms)",
        format!("{} / {}", r.update_p50_ms_idle, r.update_p99_ms_idle),
        "p99 < 100",
        verdict(r.update_p99_ms_idle < GOAL_UPDATE_P99_MS),
    );
    row(
        &format!("update p50 / p99, {:.0} changes/s (ms)", r.busy_rate_per_s),
        format!("{} / {}", r.update_p50_ms_busy, r.update_p99_ms_busy),
        "p99 < 100",
        verdict(r.update_p99_ms_busy < GOAL_UPDATE_P99_MS),
    );
    row(
        "daemon RSS, steady (MB, max)",
        format!("{:.1}", r.rss_mb),
        "< 300",
        verdict(r.rss_mb < GOAL_RSS_MB),
    );
    row(
        "daemon CPU, steady (s per min, max)",
        format!("{:.2}", r.cpu_s_per_min_steady),
        "",
        "",
    );
    let flat = match r.api_requests_per_min_per_node_small {
        Some(small) => {
            row(
                &format!("API requests/min/node, {} Services", r.services_small),
                format!("{small:.1}"),
                "",
                "",
            );
            // Independent of the Service count: within a Lease renewal or two per minute (the
            // windows are short next to the 10 s renewals).
            verdict(r.api_requests_per_min_per_node <= small * 1.2 + 4.0)
        }
        None => "",
    };
    row(
        &format!("API requests/min/node, {} Services", r.services),
        format!("{:.1}", r.api_requests_per_min_per_node),
        "flat in N",
        flat,
    );
    row(
        "map writes per change per node",
        format!("{:.2}", r.map_writes_per_change),
        "",
        "",
    );
    row(
        "map writes of an unchanged re-list",
        r.relist_map_writes.to_string(),
        "0",
        verdict(r.relist_map_writes == 0),
    );
}

/// Check a report for every key with sane values (the quick test, and nothing else).
pub fn check_json(v: &Value, services: usize, nodes: usize) -> Result<()> {
    for key in [
        "services",
        "endpoints",
        "vips_programmed",
        "cold_start_s",
        "update_p50_ms_idle",
        "update_p99_ms_idle",
        "update_p50_ms_busy",
        "update_p99_ms_busy",
        "rss_mb",
        "cpu_s_per_min_steady",
        "api_requests_per_min_per_node",
        "map_writes_per_change",
        "relist_map_writes",
        "nodes",
    ] {
        ensure!(v.get(key).is_some(), "no {key:?} in {v}");
    }
    let f = |k: &str| v[k].as_f64().unwrap_or(-1.0);
    ensure!(
        v["services"].as_u64() == Some(services as u64),
        "services in {v}"
    );
    ensure!(v["nodes"].as_u64() == Some(nodes as u64), "nodes in {v}");
    ensure!(
        v["vips_programmed"].as_u64() == Some(2 * services as u64),
        "vips_programmed in {v}"
    );
    ensure!(f("cold_start_s") > 0.0, "cold_start_s in {v}");
    ensure!(
        f("update_p50_ms_idle") > 0.0 && f("update_p99_ms_idle") >= f("update_p50_ms_idle"),
        "idle percentiles in {v}"
    );
    ensure!(
        f("update_p50_ms_busy") > 0.0 && f("update_p99_ms_busy") >= f("update_p50_ms_busy"),
        "busy percentiles in {v}"
    );
    ensure!(f("rss_mb") > 1.0, "rss_mb in {v}");
    ensure!(f("cpu_s_per_min_steady") >= 0.0, "cpu in {v}");
    // A short window may see no Lease renewal (every 10 s): only a number is required.
    ensure!(f("api_requests_per_min_per_node") >= 0.0, "api rate in {v}");
    ensure!(
        f("map_writes_per_change") >= 1.0,
        "map writes per change in {v}"
    );
    ensure!(
        v["relist_map_writes"].as_u64() == Some(0),
        "a re-list wrote maps: {v}"
    );
    Ok(())
}
