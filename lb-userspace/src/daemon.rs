//! `lb run`: the daemon in static mode.
//!
//! Start-up validates the whole config before touching the kernel, then: loads the BPF
//! object, programs every map (in the order `config::Plan::diff` gives), installs the
//! reverse-NAT entries, attaches XDP to the external interfaces (native, else generic with a
//! warning) and the reverse-NAT TC program to the backend-facing ones, starts answering
//! ARP/NDP for the VIPs, and serves metrics. SIGHUP or `lb reload` re-reads the config and
//! applies only the difference; a config that does not validate is rejected with its errors
//! and the running state stays as it was. With `[bgp]`, BIRD is started once the data plane
//! is attached (`crate::bgp`). SIGINT/SIGTERM withdraw the BGP routes first (waiting until
//! the peers have them), then detach everything that was attached.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use log::{info, warn};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::{
    announce::{AnnounceOptions, Announcer, AnnouncerHandle},
    bgp::{self, driver::BgpDriver},
    config::{self, Config, Plan, XdpMode},
    dataplane::{Dataplane, LoadOptions, monotonic_ns},
    ifaces,
    kube::{ControllerStatus, NodeDataplane, controller, liveness::GossipState},
    links, map_usage,
    metrics::{
        self, BackendLabel, DaemonStats, Format, Labels, MetricsSource, QuicLabel, VipLabel,
    },
};

/// Where `lb run` listens for `lb reload` unless told otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/lb/lb.sock";

pub struct RunOptions {
    pub config: PathBuf,
    /// Overrides `metrics_addr` of the config file.
    pub metrics_addr: Option<SocketAddr>,
    pub control_socket: PathBuf,
    /// Kubernetes mode: VIPs come from the API server, not the config file.
    pub kube: Option<controller::KubeOptions>,
}

/// How often the reply table is swept for idle flows.
pub const REPLY_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Everything the daemon owns while it runs.
pub struct State {
    pub dp: Dataplane,
    pub config: Config,
    pub plan: Plan,
    /// XDP and reverse-NAT attachments, by interface index, for detaching at exit.
    xdp_ifindexes: Vec<(String, u32)>,
    /// Where the XDP program runs in native mode (its driver runs XDP).
    xdp_native: Vec<u32>,
    rnat_ifindexes: Vec<(String, u32)>,
    /// The interfaces marked as taking a native XDP redirect (`LB_IFACES`), by ifindex,
    /// with the name they had.
    xmit_ifindexes: Vec<(String, u32)>,
    /// One announcer per XDP interface, by ifindex.
    announcers: Vec<(u32, AnnouncerHandle)>,
    /// Interfaces XDP could not be attached to (warned about once; retried every scan).
    attach_failed: Vec<u32>,
    /// (key, pattern) of the interface entries that name nothing on this node now.
    unmatched: Vec<(String, String)>,
    /// Kubernetes mode: the VIPs this node won the election for (static mode: `None`,
    /// every VIP address the config announces by ARP/NDP).
    announced: Option<Vec<IpAddr>>,
    /// Map changes applied since start-up (start-up included): stays put when a
    /// Kubernetes relist or reload changes nothing.
    pub map_changes: u64,
    /// Data-plane updates (reloads, Kubernetes syncs) that changed at least one map entry.
    pub syncs: u64,
    /// The last error a Kubernetes sync hit, if the last sync failed (set by the
    /// controller through [`NodeDataplane`]).
    last_sync_error: Option<String>,
    /// Kubernetes control-plane facts for /status (None in static mode, and in Kubernetes
    /// mode until the first sync after the initial lists).
    kube_status: Option<ControllerStatus>,
    /// Kubernetes mode: whether `--kube` is on (readiness then waits for the controller).
    kube_mode: bool,
    /// The last change of the announced VIPs that failed, until one succeeds (readiness).
    announce_error: Option<String>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// How long the last map sync (start-up or reload) took.
    pub last_sync: Duration,
    /// Names of the programmed map slots, for metrics; made again from `plan` at the
    /// next scrape when `labels_stale` (a sync of a large cluster does not pay for it).
    labels: Labels,
    labels_stale: bool,
    stats: DaemonStats,
    /// The BGP speaker (static mode: `[bgp]` and the VIPs' `announce`; Kubernetes mode:
    /// the controller's BGP objects).
    bgp: BgpDriver,
}

/// Metric labels for what a plan programs.
fn labels(plan: &Plan) -> Labels {
    let vips = plan
        .vips
        .iter()
        .map(|v| VipLabel {
            index: v.index,
            name: v.name.clone(),
            addr: v.key.addr,
            port: v.key.port,
            proto: v.key.proto.number(),
            quic: v.quic.iter().map(QuicLabel::from).collect(),
        })
        .collect();
    // Each backend's VIPs (in plan order, each once) from one pass over the VIPs: scanning
    // every VIP for every backend was 50,000 x 20,000 x 5 comparisons on each map sync of a
    // 10,000-Service cluster, three quarters of a daemon's CPU in its cold start.
    let mut vips_of: HashMap<u32, Vec<u32>> = HashMap::new();
    for v in &plan.vips {
        for b in &v.backends {
            let list = vips_of.entry(b.id).or_default();
            if list.last() != Some(&v.index) {
                list.push(v.index);
            }
        }
    }
    let backends = plan
        .backends
        .iter()
        .map(|b| BackendLabel {
            id: b.id,
            addr: b.addr,
            port: b.port,
            vip_indexes: vips_of.remove(&b.id).unwrap_or_default(),
        })
        .collect();
    Labels { vips, backends }
}

impl State {
    /// Load, program and attach. On error everything attached so far is detached again by
    /// the caller dropping the state (and the kernel, for the BPF links of a dead process).
    fn start(config: Config, announce_plan: bool) -> Result<State> {
        let plan = Plan::build(&config, None).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut dp = Dataplane::load_with(LoadOptions {
            reply_flows: config.reverse_nat.max_flows,
            capacity: config.capacity,
        })
        .context("loading the BPF object")?;
        dp.set_mark_remote(config.reverse_nat.mark_remote)
            .context("setting the steering mark")?;
        // Tunnels and devices without ndo_xdp_xmit: to the kernel (lb_common::egress).
        dp.set_xmit_only(true)
            .context("restricting redirects to interfaces that take them")?;
        let t = Instant::now();
        let changes = Plan::diff(&Plan::default(), &plan);
        config::apply(&mut dp, &changes).context("programming the maps")?;
        let last_sync = t.elapsed();
        let stats = DaemonStats::new(env!("CARGO_PKG_VERSION"));
        stats.observe_map_sync(last_sync);
        stats.set_reply_capacity(config.reverse_nat.max_flows);
        let labels = labels(&plan);
        let bgp = BgpDriver::new(config.bgp.speaker.clone(), config.bgp.withdraw_timeout);
        let mut state = State {
            dp,
            config,
            plan,
            xdp_ifindexes: Vec::new(),
            xdp_native: Vec::new(),
            xmit_ifindexes: Vec::new(),
            rnat_ifindexes: Vec::new(),
            announcers: Vec::new(),
            attach_failed: Vec::new(),
            unmatched: Vec::new(),
            announced: (!announce_plan).then(Vec::new),
            map_changes: changes.len() as u64,
            syncs: 0,
            last_sync_error: None,
            kube_status: None,
            kube_mode: !announce_plan,
            announce_error: None,
            reloads_ok: 0,
            reloads_failed: 0,
            last_sync,
            labels,
            labels_stale: false,
            stats,
            bgp,
        };
        state.attach()?;
        // Routes only once the data plane answers the VIPs: a peer that sends traffic
        // here the moment it learns a route finds XDP attached.
        if announce_plan {
            let desired = state.config.bgp_desired();
            state.bgp.set(desired).context("starting BGP")?;
        }
        Ok(state)
    }

    fn attach(&mut self) -> Result<()> {
        if !self.config.backend_interfaces.is_empty() {
            // Replies bypass the node's stack and netfilter (see lb_common::RNAT_F_FORWARD).
            self.dp
                .set_rnat_forward(true)
                .context("turning on forwarding in the reverse NAT")?;
        }
        self.rescan_interfaces();
        self.rescan_redirect_targets();
        let kernel: Vec<String> = links::scan()
            .iter()
            .filter(|l| l.kind != links::LinkKind::Loopback)
            .filter(|l| !self.xmit_ifindexes.iter().any(|(_, i)| *i == l.ifindex))
            .map(|l| format!("{} ({})", l.name, l.kind.name()))
            .collect();
        if !kernel.is_empty() {
            info!(
                "no native XDP redirect to {}: steered packets leaving through them go to the \
                 kernel's routing (pass_kernel_route)",
                kernel.join(", ")
            );
        }
        Ok(())
    }

    /// Tell the XDP program which interfaces take a native redirect
    /// (`links::takes_native_redirect`); packets for any other egress go to the kernel.
    /// Runs at start-up and every second (interfaces come and go with pods and tunnels).
    pub fn rescan_redirect_targets(&mut self) {
        let links = links::scan();
        let mut want = Vec::new();
        for l in &links {
            let native = self.xdp_native.contains(&l.ifindex);
            if links::takes_native_redirect(&l.kind, native) {
                want.push((l.name.clone(), l.ifindex));
            }
        }
        for (name, i) in std::mem::take(&mut self.xmit_ifindexes) {
            if want.iter().any(|(_, j)| *j == i) {
                self.xmit_ifindexes.push((name, i));
            } else if let Err(e) = self.dp.set_iface_xmit(i, false) {
                warn!("forgetting {name} as a redirect target: {e}");
            }
        }
        for (name, i) in want {
            if self.xmit_ifindexes.iter().any(|(_, j)| *j == i) {
                continue;
            }
            match self.dp.set_iface_xmit(i, true) {
                Ok(()) => self.xmit_ifindexes.push((name, i)),
                // The link may have vanished between listing and writing; next scan.
                Err(e) => warn!("marking {name} as a redirect target: {e:#}"),
            }
        }
    }

    /// Attach XDP (and announce) on the links `interfaces` names and the reverse NAT on
    /// those `backend_interfaces` names (`ifaces::resolve`: names, globs, `auto`), forget
    /// links that are gone (the kernel removed their programs with them), and report the
    /// entries that name nothing. Never fails: a missing interface is waited for. Runs at
    /// start-up and every second. Returns how many attachments were made.
    pub fn rescan_interfaces(&mut self) -> usize {
        let links = links::scan();
        let patterns: Vec<String> = self
            .config
            .interfaces
            .iter()
            .map(|i| i.name.clone())
            .collect();
        let external = ifaces::resolve(&patterns, ifaces::Role::External, &links, &[]);
        self.detach_unnamed_xdp(&ifaces::all_links(&external), &links);
        let mut attached = 0;
        for (k, m) in external.iter().enumerate() {
            let mode = self.config.interfaces[k].xdp_mode;
            for (name, i) in &m.links {
                if !self.xdp_ifindexes.iter().any(|(_, j)| j == i)
                    && self.attach_xdp(name, *i, mode)
                {
                    attached += 1;
                }
            }
        }
        let taken: Vec<u32> = self.xdp_ifindexes.iter().map(|(_, i)| *i).collect();
        let backend = ifaces::resolve(
            &self.config.backend_interfaces,
            ifaces::Role::Backend,
            &links,
            &taken,
        );
        let backend_links = ifaces::all_links(&backend);
        self.detach_unnamed_rnat(&backend_links, &links);
        for (name, i) in backend_links {
            if self.rnat_ifindexes.iter().any(|(_, j)| *j == i) {
                continue;
            }
            match self.dp.attach_rnat(i) {
                Ok(()) => {
                    info!("reverse NAT attached to {name} (backend_interfaces)");
                    self.rnat_ifindexes.push((name, i));
                    attached += 1;
                }
                // The link may have vanished between listing and attaching; next scan.
                Err(e) => warn!("attaching the reverse NAT to {name}: {e:#}"),
            }
        }
        self.report_unmatched(&external, &backend);
        attached
    }

    /// Forget XDP, and stop the announcer, on the attached links no `interfaces` entry names
    /// now: a link that is gone (the kernel removed its program with it; it is waited for),
    /// or one a reloaded file dropped or narrowed the entry for (detached here).
    fn detach_unnamed_xdp(&mut self, named: &[(String, u32)], links: &[links::Link]) {
        for (name, i) in std::mem::take(&mut self.xdp_ifindexes) {
            if named.iter().any(|(_, j)| *j == i) {
                self.xdp_ifindexes.push((name, i));
                continue;
            }
            if links.iter().any(|l| l.ifindex == i) {
                info!("{name}: no interfaces entry names it any more; detaching XDP");
                if let Err(e) = self.dp.detach(i) {
                    warn!("detaching XDP from {name}: {e:#}");
                }
            } else {
                warn!("{name} is gone: XDP and its announcer with it; waiting for it to return");
                let _ = self.dp.detach(i);
            }
            self.xdp_native.retain(|j| *j != i);
            if let Some(k) = self.announcers.iter().position(|(j, _)| *j == i) {
                let (_, a) = self.announcers.remove(k);
                let _ = a.stop();
            }
        }
    }

    /// Forget the reverse NAT on the attached links no `backend_interfaces` entry names now:
    /// gone ones (nothing to detach) and ones a reloaded file no longer names (detached).
    fn detach_unnamed_rnat(&mut self, named: &[(String, u32)], links: &[links::Link]) {
        for (name, i) in std::mem::take(&mut self.rnat_ifindexes) {
            if named.iter().any(|(_, j)| *j == i) {
                self.rnat_ifindexes.push((name, i));
                continue;
            }
            if !links.iter().any(|l| l.ifindex == i) {
                continue;
            }
            info!(
                "{name}: no backend_interfaces entry names it any more; detaching the reverse NAT"
            );
            if let Err(e) = self.dp.detach_rnat(i) {
                warn!("detaching the reverse NAT from {name}: {e:#}");
            }
        }
    }

    /// Attach `lb_xdp` to `name` (native, else generic as `mode` allows) and announce the
    /// VIPs there. A failure is logged once and retried by the next scans.
    fn attach_xdp(&mut self, name: &str, i: u32, mode: XdpMode) -> bool {
        let generic = mode == XdpMode::Generic;
        let result = match self.dp.attach(i, generic) {
            Ok(()) => Ok(!generic),
            Err(e) if !generic => {
                warn!(
                    "{name}: native XDP failed ({e}); falling back to generic mode, which is \
                     slower (set xdp_mode = \"generic\" to silence this)"
                );
                self.dp.attach(i, true).map(|()| false)
            }
            Err(e) => Err(e),
        };
        let native = match result {
            Ok(native) => native,
            Err(e) => {
                if !self.attach_failed.contains(&i) {
                    warn!("attaching XDP to {name}: {e:#}; retrying every second");
                    self.attach_failed.push(i);
                }
                return false;
            }
        };
        self.attach_failed.retain(|j| *j != i);
        if native {
            self.xdp_native.push(i);
        }
        self.xdp_ifindexes.push((name.to_string(), i));
        info!(
            "XDP attached to {name} ({})",
            if native { "native" } else { "generic" }
        );
        let vips = self
            .announced
            .clone()
            .unwrap_or_else(|| self.config.l2_addresses());
        match Announcer::start(name, &vips, AnnounceOptions::default()) {
            Ok(a) => self.announcers.push((i, a)),
            Err(e) => warn!("announcing VIPs on {name}: {e:#}"),
        }
        true
    }

    /// Log, count and (Kubernetes mode) report the entries that name nothing, when that
    /// changes.
    fn report_unmatched(&mut self, external: &[ifaces::Match], backend: &[ifaces::Match]) {
        let mut now = Vec::new();
        for (key, matches) in [("interfaces", external), ("backend_interfaces", backend)] {
            for m in matches {
                let none = m.links.is_empty();
                self.stats.interface_pattern(key, &m.pattern, none);
                if none {
                    now.push((key.to_string(), m.pattern.clone()));
                }
            }
        }
        for (key, pattern) in &now {
            if !self.unmatched.contains(&(key.clone(), pattern.clone())) {
                warn!(
                    "{key} entry {pattern:?} names no interface on this node (see `ip link`); \
                     lb keeps looking every second"
                );
            }
        }
        for (key, pattern) in &self.unmatched {
            if !now.contains(&(key.clone(), pattern.clone())) {
                info!("{key} entry {pattern:?} now names an interface");
            }
        }
        self.unmatched = now;
    }

    /// What the node attached to, for `/status`.
    fn interfaces_json(&self) -> serde_json::Value {
        let xdp: Vec<serde_json::Value> = self
            .xdp_ifindexes
            .iter()
            .map(|(name, i)| {
                serde_json::json!({
                    "name": name,
                    "ifindex": i,
                    "mode": if self.xdp_native.contains(i) { "native" } else { "generic" },
                })
            })
            .collect();
        let rnat: Vec<serde_json::Value> = self
            .rnat_ifindexes
            .iter()
            .map(|(name, i)| serde_json::json!({ "name": name, "ifindex": i }))
            .collect();
        let unmatched: Vec<serde_json::Value> = self
            .unmatched
            .iter()
            .map(|(key, pattern)| serde_json::json!({ "key": key, "pattern": pattern }))
            .collect();
        let redirect: Vec<&String> = self.xmit_ifindexes.iter().map(|(n, _)| n).collect();
        serde_json::json!({
            "xdp": xdp,
            "reverse_nat": rnat,
            "native_redirect": redirect,
            "unmatched": unmatched,
        })
    }

    /// Re-read the config and apply the difference. On any validation error nothing changes.
    pub fn reload(&mut self, path: &Path) -> Result<usize> {
        let result = self.try_reload(path);
        match &result {
            Ok(_) => self.reloads_ok += 1,
            Err(_) => self.reloads_failed += 1,
        }
        self.stats.config_reload(result.is_ok());
        result
    }

    fn try_reload(&mut self, path: &Path) -> Result<usize> {
        let mut config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let restart = config::restart_needed(&self.config, &config);
        if !restart.is_empty() {
            bail!(
                "{}: {} changed, which only a restart applies (the interface lists, the \
                 steering mark and the reply timeouts apply live); nothing was applied",
                path.display(),
                restart.join(", ")
            );
        }
        config.metrics_addr = self.config.metrics_addr;
        if !config.backend_interfaces.is_empty() {
            self.dp
                .set_rnat_forward(true)
                .context("turning on forwarding in the reverse NAT")?;
        }
        let changes = if self.kube_mode {
            self.apply_node_settings(config, path)?
        } else {
            self.apply_config(config)?
        };
        self.rescan_interfaces();
        self.rescan_redirect_targets();
        Ok(changes)
    }

    /// Turn the steering mark on or off as `config` says, if that is a change.
    fn follow_mark_remote(&mut self, config: &Config) -> Result<()> {
        if config.reverse_nat.mark_remote != self.config.reverse_nat.mark_remote {
            self.dp
                .set_mark_remote(config.reverse_nat.mark_remote)
                .context("setting the steering mark")?;
        }
        Ok(())
    }

    /// Kubernetes mode: the file holds only node settings (the VIPs are the controller's,
    /// in `self.plan`), so take them without touching the VIP maps.
    fn apply_node_settings(&mut self, config: Config, path: &Path) -> Result<usize> {
        if !config.vips.is_empty() {
            bail!(
                "{}: [[vips]] is not allowed with --kube (Kubernetes Services define the \
                 VIPs); nothing was applied",
                path.display()
            );
        }
        self.follow_mark_remote(&config)?;
        self.bgp.withdraw_timeout = config.bgp.withdraw_timeout;
        self.config = config;
        Ok(0)
    }

    /// Program the difference between the running plan and `config` (same interfaces).
    /// On an error before the first map write nothing changes.
    pub fn apply_config(&mut self, config: Config) -> Result<usize> {
        let plan = Plan::build(&config, Some(&self.plan)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let changes = Plan::diff(&self.plan, &plan);
        self.follow_mark_remote(&config)?;
        self.bgp.withdraw_timeout = config.bgp.withdraw_timeout;
        if changes.is_empty() {
            // Only how the VIPs are announced may have changed.
            self.config = config;
            return self.announce_config().map(|()| 0);
        }
        let t = Instant::now();
        config::apply(&mut self.dp, &changes).context("applying the new config")?;
        self.last_sync = t.elapsed();
        self.stats.observe_map_sync(self.last_sync);
        self.labels_stale = true;
        self.map_changes += changes.len() as u64;
        self.stats.map_changes(changes.len());
        self.syncs += 1;
        self.config = config;
        self.plan = plan;
        self.announce_config()
            .context("the maps were updated, but the announcements were not")?;
        Ok(changes.len())
    }

    /// Replace the entries of some VIPs the running config has (one address, port and
    /// protocol each; same VIPs, new backends or settings) and program the difference:
    /// the Kubernetes controller's path for an EndpointSlice change, which plans and diffs
    /// only those VIPs ([`Plan::replace_vips`]). The writes are those [`Self::apply_config`]
    /// would make for the whole config with these entries replaced. Refused before any
    /// map write when the plan cannot be updated in place (the caller then applies the
    /// whole config).
    pub fn update_vips(&mut self, vips: Vec<config::VipConfig>) -> Result<usize> {
        // One VIP per entry, as the controller's configs are: then the plan's positions
        // are the config's.
        if self.config.vips.len() != self.plan.vips.len() {
            bail!(
                "the running config has entries of several VIPs (ports or protocols); only a \
                 whole config can be applied to it"
            );
        }
        let update = self
            .plan
            .replace_vips(&vips, self.config.capacity.backends)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let changes = update.changes();
        if !changes.is_empty() {
            let t = Instant::now();
            config::apply(&mut self.dp, &changes).context("applying the changed VIPs")?;
            self.last_sync = t.elapsed();
            self.stats.observe_map_sync(self.last_sync);
            self.map_changes += changes.len() as u64;
            self.stats.map_changes(changes.len());
            self.syncs += 1;
            self.labels_stale = true;
        }
        let positions = update.positions().to_vec();
        update.commit(&mut self.plan);
        for (v, i) in vips.into_iter().zip(positions) {
            self.config.vips[i] = v;
        }
        Ok(changes.len())
    }

    /// The metric labels of the plan in force.
    fn fresh_labels(&mut self) {
        if self.labels_stale {
            self.labels = labels(&self.plan);
            self.labels_stale = false;
        }
    }

    /// Announce the VIPs as the running config says, after its maps are written: ARP/NDP
    /// for its `l2` addresses (static mode; Kubernetes mode elects them), BGP for the rest
    /// (static mode; the controller sets Kubernetes mode's).
    fn announce_config(&mut self) -> Result<()> {
        if self.announced.is_none() {
            let vips = self.config.l2_addresses();
            for (_, a) in &self.announcers {
                a.set_vips(&vips)?;
            }
        }
        if !self.kube_mode {
            let desired = self.config.bgp_desired();
            self.bgp
                .set(desired)
                .context("the BGP speaker kept its previous configuration")?;
        }
        Ok(())
    }

    /// One sweep of the reply table (see [`spawn_reply_sweep`]); its figures go to the
    /// metrics.
    pub fn sweep_replies(&mut self) {
        let t = Instant::now();
        let timeouts = self.config.reverse_nat.timeouts;
        let swept = match self.dp.sweep_replies(monotonic_ns(), &timeouts) {
            Ok(s) => s,
            Err(e) => {
                warn!("sweeping the reply table: {e:#}");
                return;
            }
        };
        let took = t.elapsed();
        self.stats.reply_sweep(&swept, took);
        if took > Duration::from_millis(200) {
            warn!(
                "sweeping the reply table took {took:?} for {} flows",
                swept.scanned
            );
        }
    }

    fn shutdown(&mut self) {
        // Withdraw the routes first, while the data plane still forwards what peers send
        // until they have processed the withdrawal.
        self.bgp.withdraw_and_stop();
        for (_, a) in self.announcers.drain(..) {
            if let Err(e) = a.stop() {
                warn!("stopping an announcer: {e}");
            }
        }
        for (name, i) in self.xdp_ifindexes.drain(..) {
            match self.dp.detach(i) {
                Ok(()) => info!("XDP detached from {name}"),
                Err(e) => warn!("detaching XDP from {name}: {e}"),
            }
        }
        for (name, i) in self.rnat_ifindexes.drain(..) {
            match self.dp.detach_rnat(i) {
                Ok(()) => info!("reverse NAT detached from {name}"),
                Err(e) => warn!("detaching the reverse NAT from {name}: {e}"),
            }
        }
    }
}

/// The daemon as the Kubernetes controller drives it.
impl NodeDataplane for State {
    fn apply(&mut self, config: Config) -> Result<usize> {
        self.apply_config(config)
    }

    fn update_vips(&mut self, vips: Vec<config::VipConfig>) -> Result<usize> {
        State::update_vips(self, vips)
    }

    fn announced(&self) -> Vec<IpAddr> {
        self.announced
            .clone()
            .unwrap_or_else(|| self.config.l2_addresses())
    }

    fn set_bgp(&mut self, desired: Option<bgp::Desired>) -> Result<()> {
        self.bgp.set(desired)
    }

    fn bgp_status(&self) -> Option<bgp::speaker::SpeakerStatus> {
        self.bgp.running().then(|| self.bgp.status.clone())
    }

    fn set_announced(&mut self, vips: &[IpAddr]) -> Result<()> {
        if self.announced.as_deref() == Some(vips) && self.announce_error.is_none() {
            return Ok(());
        }
        for (_, a) in &self.announcers {
            if let Err(e) = a.set_vips(vips) {
                self.announce_error = Some(format!("{e:#}"));
                return Err(e.into());
            }
        }
        self.announce_error = None;
        self.announced = Some(vips.to_vec());
        Ok(())
    }

    fn set_sync_error(&mut self, error: Option<String>) {
        self.last_sync_error = error;
    }

    fn set_status(&mut self, status: ControllerStatus) {
        if let Some(g) = &status.gossip {
            let mut by_state = [("alive", 0), ("suspect", 0), ("down", 0)];
            for m in status.members.values() {
                let i = match m.gossip {
                    Some(GossipState::Alive) => 0,
                    Some(GossipState::Suspect) => 1,
                    Some(GossipState::Down) => 2,
                    None => continue,
                };
                by_state[i].1 += 1;
            }
            self.stats.gossip(
                &by_state,
                &[
                    ("sent", g.sent),
                    ("received", g.received),
                    ("rejected", g.rejected),
                ],
            );
        }
        self.kube_status = Some(status);
    }

    fn unmatched_interfaces(&self) -> Vec<(String, String)> {
        self.unmatched.clone()
    }
}

/// Lock the state even if a task panicked while holding it: every task (and shutdown,
/// which must detach the programs) still needs it, and a map update that failed half-way
/// leaves the plan it diffs against as it was.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for State {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Serve `lb reload` on a Unix socket: one line in ("reload"), the outcome out.
async fn control(listener: UnixListener, state: Arc<Mutex<State>>, config: PathBuf) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (rd, mut wr) = stream.into_split();
        let mut line = String::new();
        if BufReader::new(rd).read_line(&mut line).await.is_err() {
            continue;
        }
        let reply = match line.trim() {
            "reload" => reload_reply(&state, &config),
            other => format!("error: unknown command {other:?}; the only command is \"reload\"\n"),
        };
        let _ = wr.write_all(reply.as_bytes()).await;
    }
}

fn reload_reply(state: &Mutex<State>, config: &Path) -> String {
    match lock(state).reload(config) {
        Ok(n) => {
            info!("reloaded {}: {n} map changes", config.display());
            format!(
                "ok: {} reloaded, {n} map changes applied\n",
                config.display()
            )
        }
        Err(e) => {
            warn!(
                "reload of {} rejected, running state unchanged: {e:#}",
                config.display()
            );
            format!("error: {e:#}\nthe running state is unchanged\n")
        }
    }
}

/// `lb run`.
pub fn run(opts: RunOptions) -> Result<()> {
    let mut config = match Config::load(&opts.config) {
        Ok(c) => c,
        Err(e) => bail!("{e}"),
    };
    if let Some(addr) = opts.metrics_addr {
        config.metrics_addr = Some(addr);
    }
    if opts.kube.is_some() && config.metrics_addr.is_none() {
        // The kubelet probes /healthz and /readyz: in Kubernetes mode the endpoint is always on.
        config.metrics_addr = Some(SocketAddr::from((
            [0, 0, 0, 0],
            config::DEFAULT_METRICS_PORT,
        )));
    }
    if opts.kube.is_some() && !config.bgp.peers.is_empty() {
        bail!(
            "{}: [[bgp.peers]] is not allowed with --kube: BGPPeer objects define the peers; \
             keep only the speaker's settings (run_dir, bird, spawn, withdraw_timeout_ms) in [bgp]",
            opts.config.display()
        );
    }
    if opts.kube.is_some() && !config.vips.is_empty() {
        bail!(
            "{}: [[vips]] is not allowed with --kube: Kubernetes Services of type LoadBalancer \
             define the VIPs; keep only the node settings (interfaces, backend_interfaces, \
             metrics_addr, [kubernetes]) in this file",
            opts.config.display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let kube_mode = opts.kube.is_some();
        let state = Arc::new(Mutex::new(State::start(config.clone(), !kube_mode)?));
        if let Some(dir) = opts.control_socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(&opts.control_socket);
        let listener = UnixListener::bind(&opts.control_socket)
            .with_context(|| format!("listening on {}", opts.control_socket.display()))?;
        // Both modes: with --kube the file holds only node settings (State::reload says which
        // apply live), the VIPs being the controller's.
        tokio::spawn(control(listener, state.clone(), opts.config.clone()));
        spawn_metrics(&state)?;
        spawn_rescan(&state);
        if kube_mode {
            spawn_config_watch(&state, opts.config.clone());
        }
        spawn_reply_sweep(&state);
        spawn_map_usage(&state);
        spawn_bgp_poll(&state);
        let mut lease_holder = None;
        if let Some(kube_opts) = opts.kube {
            let client = controller::client(&kube_opts).await?;
            // Stops this controller's Lease renewals at shutdown (give_up_lease).
            let (stop_renewing, renewer_stop) = watch::channel(false);
            lease_holder = Some((client.clone(), kube_opts.node_name.clone(), stop_renewing));
            tokio::spawn(controller::run(
                client,
                kube_opts,
                config.clone(),
                state.clone(),
                renewer_stop,
            ));
        }
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        info!(
            "lb running: {} VIPs, control socket {}",
            lock(&state).plan.vips.len(),
            opts.control_socket.display()
        );
        println!(
            "lb: running (control socket {}{})",
            opts.control_socket.display(),
            if kube_mode { ", Kubernetes mode" } else { "" }
        );
        loop {
            tokio::select! {
                _ = hup.recv() => { reload_reply(&state, &opts.config); }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        if let Some((client, node, stop_renewing)) = lease_holder {
            controller::give_up_lease(&client, &config.kubernetes, &node, stop_renewing).await;
        }
        lock(&state).shutdown();
        let _ = std::fs::remove_file(&opts.control_socket);
        println!("lb: stopped, everything detached");
        Ok(())
    })
}

/// Every second (pods come and go with their veths, tunnels with CNIs): re-attach the
/// interface entries (XDP and announcer; reverse NAT) to links that appeared, forget those
/// gone, and re-tell the XDP program which interfaces take a native redirect.
fn spawn_rescan(state: &Arc<Mutex<State>>) {
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let mut s = lock(&state);
            s.rescan_interfaces();
            s.rescan_redirect_targets();
        }
    });
}

/// How often Kubernetes mode looks at the config file for a change.
const CONFIG_WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// Kubernetes mode: reload the config file when its contents change. The kubelet swaps a
/// mounted ConfigMap's files in place (within about a minute of the update), and nobody is
/// there to send SIGHUP. A rejected file is not retried until it changes again.
fn spawn_config_watch(state: &Arc<Mutex<State>>, path: PathBuf) {
    let state = state.clone();
    tokio::spawn(async move {
        let mut last = std::fs::read(&path).ok();
        let mut tick = tokio::time::interval(CONFIG_WATCH_INTERVAL);
        loop {
            tick.tick().await;
            let now = std::fs::read(&path).ok();
            if now.is_some() && now != last {
                info!("{} changed: reloading it", path.display());
                reload_reply(&state, &path);
                last = now;
            }
        }
    });
}

/// Delete idle reply-table entries every [`REPLY_SWEEP_INTERVAL`], with the timeouts of the
/// current config (`lb_common::reply`): nothing in the kernel expires them.
fn spawn_reply_sweep(state: &Arc<Mutex<State>>) {
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REPLY_SWEEP_INTERVAL);
        loop {
            tick.tick().await;
            lock(&state).sweep_replies();
        }
    });
}

/// Read how full the sizable maps are every [`map_usage::INTERVAL`], for the `lb_map_*`
/// metrics and `/status`; warn once when one crosses 90%. Only taking the maps' file
/// descriptors holds the state's lock: the walks (a million flows is a few dozen batched
/// reads) run on a blocking thread, so they never delay a map update.
fn spawn_map_usage(state: &Arc<Mutex<State>>) {
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(map_usage::INTERVAL);
        loop {
            tick.tick().await;
            let (reader, stats) = {
                let s = lock(&state);
                let reader =
                    s.dp.usage_reader(s.plan.vips.len() as u64, s.plan.backends.len() as u64);
                (reader, s.stats.clone())
            };
            let reader = match reader {
                Ok(r) => r,
                Err(e) => {
                    warn!("reading the maps' use: {e:#}");
                    continue;
                }
            };
            let Ok(usage) = tokio::task::spawn_blocking(move || reader.read()).await else {
                continue;
            };
            for u in stats.map_usage(usage) {
                warn!("{}", u.warning());
            }
        }
    });
}

/// Read the BGP speaker's sessions back every [`bgp::driver::POLL_INTERVAL`] (and start
/// it again if it died), for `/status` and the metrics.
fn spawn_bgp_poll(state: &Arc<Mutex<State>>) {
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(bgp::driver::POLL_INTERVAL);
        loop {
            tick.tick().await;
            let mut s = lock(&state);
            s.bgp.poll();
            let figures = s.bgp.peer_figures();
            s.stats
                .bgp(&figures, s.bgp.applied, s.bgp.rejected, s.bgp.restarts());
        }
    });
}

/// `lb reload`: ask the running daemon to re-read its config; prints its answer.
pub fn reload(socket: &Path) -> Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut s = UnixStream::connect(socket).await.with_context(|| {
            format!("connecting to {} (is `lb run` running?)", socket.display())
        })?;
        s.write_all(b"reload\n").await?;
        let mut reply = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut reply).await?;
        print!("{reply}");
        Ok(reply.starts_with("ok"))
    })
}

/// The daemon's state as a metrics source: counters straight from the maps at scrape time.
struct DaemonMetrics(Arc<Mutex<State>>);

impl MetricsSource for DaemonMetrics {
    fn metrics_text(&self, format: Format) -> String {
        let mut s = lock(&self.0);
        s.fresh_labels();
        metrics::render(&s.dp, &s.labels, &s.stats, format)
    }

    fn status_json(&self) -> serde_json::Value {
        let mut s = lock(&self.0);
        s.fresh_labels();
        let mut v = metrics::status(&s.dp, &s.labels, &s.stats);
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "sync".into(),
                serde_json::json!({
                    "map_changes": s.map_changes,
                    "syncs": s.syncs,
                    "last_error": s.last_sync_error,
                    "announced": s.announced().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                }),
            );
            obj.insert("interfaces".into(), s.interfaces_json());
            obj.insert("bgp".into(), s.bgp.to_json());
            if let Some(k) = &s.kube_status {
                obj.insert("kubernetes".into(), k.to_json());
            }
            obj.insert(
                "ready".into(),
                match s.readiness() {
                    Ok(()) => serde_json::json!(true),
                    Err(_) => serde_json::json!(false),
                },
            );
        }
        v
    }

    fn liveness(&self) -> Result<(), String> {
        lock(&self.0).liveness()
    }

    fn readiness(&self) -> Result<(), Vec<String>> {
        lock(&self.0).readiness()
    }
}

impl State {
    /// Liveness (`/healthz`): the BPF maps still answer. Reaching this at all means the
    /// daemon's lock was free, which is the other half (a stuck daemon times the probe out).
    fn liveness(&self) -> Result<(), String> {
        self.dp.settings().map(|_| ()).map_err(|e| {
            format!("reading the BPF settings map failed ({e:#}); the data plane is gone")
        })?;
        if self.xdp_ifindexes.is_empty() {
            return Err("XDP is attached to no interface".to_owned());
        }
        Ok(())
    }

    /// Readiness (`/readyz`): attached and programmed; in Kubernetes mode also the first
    /// complete lists synced, this node's Lease renewing (the API connection), the last
    /// sync applied to the maps and the announcements applied.
    fn readiness(&self) -> Result<(), Vec<String>> {
        let mut not = Vec::new();
        if let Err(e) = self.liveness() {
            not.push(e);
        }
        if self.kube_mode {
            match &self.kube_status {
                None => not.push(
                    "Kubernetes: the initial lists are not complete yet (or no sync has run)"
                        .to_owned(),
                ),
                Some(k) if !k.connected => not.push(format!(
                    "Kubernetes: this node's Lease {}/lb-node-{} is not being renewed (API \
                     server unreachable?); announcements are frozen",
                    k.lease_namespace, k.node
                )),
                Some(_) => {}
            }
        }
        if let Some(e) = &self.last_sync_error {
            not.push(format!(
                "the last sync was rejected, data plane unchanged: {e}"
            ));
        }
        if let Some(e) = &self.announce_error {
            not.push(format!("changing the announced VIPs failed: {e}"));
        }
        if let Some(e) = &self.bgp.error {
            not.push(format!("BGP: {e}"));
        }
        if not.is_empty() { Ok(()) } else { Err(not) }
    }
}

/// Serve /metrics and /status when the config (or --metrics-addr) names an address.
fn spawn_metrics(state: &Arc<Mutex<State>>) -> Result<()> {
    let Some(addr) = lock(state).config.metrics_addr else {
        return Ok(());
    };
    let source: Arc<dyn MetricsSource + Send + Sync> = Arc::new(DaemonMetrics(state.clone()));
    // Bind here so a taken or foreign address fails start-up with its name, not later.
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("metrics_addr {addr}: cannot listen there"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokio::spawn(metrics::serve_listener(listener, source));
    info!("metrics on http://{addr}/metrics and /status");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_lists_loopback() {
        assert!(
            links::names()
                .iter()
                .any(|(name, i)| name == "lo" && *i > 0)
        );
    }
}
