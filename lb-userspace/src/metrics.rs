//! Prometheus metrics on `/metrics`, the daemon's state as JSON on `/status`, and the
//! probes: `/healthz` (liveness) and `/readyz` (readiness), see [`MetricsSource::liveness`].
//!
//! The BPF maps are the source of truth: every scrape reads the per-CPU counter maps, sums
//! them over CPUs and exposes the kernel's values as counters. Nothing is accumulated in
//! userspace, so scrapes never double count and a daemon restart (the maps keep counting
//! while the program stays loaded) is not a counter reset. Only what the kernel cannot know
//! (labels, reload outcomes, map sync durations) comes from the daemon, through [`Labels`]
//! and [`DaemonStats`].
//!
//! The daemon owns the [`Dataplane`]; this module never sees the daemon. It implements
//! [`MetricsSource`] (typically over its `Mutex<Dataplane>` and current plan, calling
//! [`render`] and [`status`]) and hands it to [`serve`].
//!
//! `/metrics` answers in the Prometheus text format 0.0.4 by default and in OpenMetrics 1.0
//! when the scraper's `Accept` header asks for `application/openmetrics-text`.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `lb_vip_packets_total` | counter | `vip`, `port`, `proto` | packets of one VIP (address, port, `tcp`/`udp`), each once, whatever happened to it |
//! | `lb_vip_bytes_total` | counter | `vip`, `port`, `proto` | octets of those packets, as the frames arrived (Ethernet header included) |
//! | `lb_vip_routed_cid_packets_total` | counter | `vip`, `port`, `proto` | those routed by connection ID (QUIC-LB server ID or learned CID); the rest took the connection table or Maglev, or were dropped |
//! | `lb_vip_dropped_packets_total` | counter | `vip`, `port`, `proto` | those dropped (any `drop_*` reason; `lb_node_packets_total` says which) |
//! | `lb_node_packets_total` | counter | `reason` | packets seen by the XDP program on this node, every reason, whether or not a VIP matched (`pass_not_vip`, `pass_malformed`, ... happen before there is a VIP) |
//! | `lb_node_bytes_total` | counter | `reason` | octets of those packets |
//! | `lb_backend_packets_total` | counter | `vip`, `port`, `proto`, `backend` | packets sent to one backend (`backend` = `address:port`). The kernel counts per backend, not per (VIP, backend): a backend that serves several VIPs has one series whose `vip`, `port` and `proto` list them all, comma-separated and sorted (e.g. `proto="tcp,udp"`) |
//! | `lb_backend_bytes_total` | counter | `vip`, `port`, `proto`, `backend` | octets sent to that backend, as they arrived |
//! | `lb_rnat_packets_total` | counter | `reason` | packets seen by the reverse-NAT TC program (`rewritten`, `pass_not_steered`, ...) |
//! | `lb_rnat_bytes_total` | counter | `reason` | octets of those packets |
//! | `lb_map_sync_duration_seconds` | histogram | | time to write one new plan into the maps (config load or reload, Kubernetes update) |
//! | `lb_config_reloads_total` | counter | `result` (`ok`, `error`) | configuration reloads; on `error` the data plane keeps its last good state |
//! | `lb_map_changes_total` | counter | | data-plane changes the daemon applied to the maps (one per VIP, backend, ring, server ID or setting written or deleted, as the plan's diff lists them); an unchanged config or re-list adds nothing |
//! | `lb_build_info` | gauge (OpenMetrics: info) | `version` | always 1; the `lb` version |
//! | `lb_vips` | gauge | | VIPs (address, port, protocol) the daemon has programmed |
//! | `lb_backends` | gauge | | distinct backends (address, port) the daemon has programmed |
//! | `lb_fib_cache_ttl_seconds` | gauge | | lifetime of the XDP program's next-hop cache (`LB_SETTINGS`); 0 = off |
//! | `lb_scrape_map_errors` | gauge | | map reads that failed during this scrape (their series are left out) |
//! | `lb_map_capacity` | gauge | `map` | entries each sizable map can hold (`LB_CONNS`, `LB_VIPS`, ...: its `[capacity]` setting) |
//! | `lb_map_entries` | gauge | `map` | entries in use, read every 10 s (hash maps counted in the map; arrays: the VIPs, backends and ring slots in use). At 90% of capacity the daemon logs a warning naming the setting to raise |
//! | `lb_map_memory_bytes` | gauge | `map` | kernel memory charged for the map (`memlock` in its fdinfo, as `bpftool map show` reports it) |
//! | `lb_reply_flows` | gauge | | flows in the reply table (replies the reverse NAT rewrites), as of the last sweep |
//! | `lb_reply_flows_capacity` | gauge | | flows the reply table can hold (`[reverse_nat] max_flows`) |
//! | `lb_reply_flows_expired_total` | counter | | reply-table entries the sweep deleted as idle |
//! | `lb_reply_sweep_duration_seconds` | gauge | | how long the last sweep of the reply table took |
//! | `lb_gossip_members` | gauge | `state` (`alive`, `suspect`, `down`) | Kubernetes mode: cluster members by what this node's gossip (SWIM) says of them |
//! | `lb_gossip_messages_total` | counter | `result` (`sent`, `received`, `rejected`) | Kubernetes mode: gossip datagrams; `rejected`: not from a Node's InternalIP, a bad or missing key tag, or undecodable |
//! | `lb_bgp_session_up` | gauge | `peer` | 1 while the BGP session with the peer is Established (as BIRD reports it) |
//! | `lb_bgp_prefixes_exported` | gauge | `peer` | prefixes BIRD exports to the peer |
//! | `lb_bgp_bfd_session_up` | gauge | `peer` | 1 while the peer's BFD session is Up (peers with BFD only) |
//! | `lb_bgp_config_applies_total` | counter | `result` (`applied`, `rejected`) | speaker configurations; `rejected`: BIRD refused it and kept the previous one |
//! | `lb_bgp_speaker_restarts_total` | counter | | times lb started BIRD again after it died |
//! | `lb_interface_pattern_unmatched` | gauge | `key` (`interfaces`, `backend_interfaces`), `pattern` | 1 while the config entry names no interface on this node (a name, glob or `auto`), else 0; the daemon keeps looking every second |
//!
//! Every VIP has its four series, zeros included, so `rate()` works from the first scrape.
//! The reasons in full are node-wide (`lb_node_packets_total{reason}`): per VIP, per reason
//! and per CPU they would cost the kernel 512 octets per VIP per CPU (640 MiB for 20,000 VIPs
//! on 64 CPUs); the four per-VIP counters cost 32.

use std::{
    collections::HashMap,
    convert::Infallible,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use lb_common::{
    Counter as KernelCounter, PROTO_TCP, PROTO_UDP, Reason, RnatReason, Settings, VipCounter,
    VipMeta, quic_lb,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::{Registry, Unit},
};
use serde::Serialize;
use serde_json::{Value, json};
use thiserror::Error;
use tokio::net::TcpListener;

use crate::dataplane::{
    Dataplane, DataplaneError, ReasonCounters, RnatCounters, SweepStats, vip_key,
};

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Text format of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4: what every scraper reads.
    Prometheus,
    /// OpenMetrics 1.0 (ends with `# EOF`).
    OpenMetrics,
}

impl Format {
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }

    /// OpenMetrics when the `Accept` header names it (Prometheus asks for it first when it
    /// can read it), Prometheus text otherwise.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }
}

// ---- what the daemon knows ----------------------------------------------------------------

/// One QUIC-LB configuration of a VIP, as `/status` shows it: never the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuicLabel {
    pub config_id: u8,
    /// `plaintext`, `single_pass` or `four_pass`.
    pub mode: &'static str,
    pub server_id_len: u8,
    pub nonce_len: u8,
}

impl From<&quic_lb::Config> for QuicLabel {
    fn from(c: &quic_lb::Config) -> Self {
        QuicLabel {
            config_id: c.config_id(),
            mode: match c.mode() {
                quic_lb::Mode::Plaintext => "plaintext",
                quic_lb::Mode::SinglePass => "single_pass",
                quic_lb::Mode::FourPass => "four_pass",
            },
            server_id_len: c.server_id_len(),
            nonce_len: c.nonce_len(),
        }
    }
}

/// A programmed VIP: its index in the per-VIP maps and what to call it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipLabel {
    pub index: u32,
    /// The config entry's `name`, if any (shown on `/status` only).
    pub name: Option<String>,
    pub addr: IpAddr,
    pub port: u16,
    /// IP protocol number (`PROTO_TCP`, `PROTO_UDP`).
    pub proto: u8,
    /// Installed QUIC-LB configs (empty for TCP and plain UDP).
    pub quic: Vec<QuicLabel>,
}

/// A programmed backend: its id in `LB_BACKENDS` / `LB_BE_STATS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendLabel {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    /// Indexes of the VIPs ([`VipLabel::index`]) whose ring or server IDs name it.
    pub vip_indexes: Vec<u32>,
}

/// Names for the map slots the daemon has programmed. Slots not listed here are not
/// exported (their counters belong to nobody).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    pub vips: Vec<VipLabel>,
    pub backends: Vec<BackendLabel>,
}

/// Metrics only the daemon can know. Cheap to clone (shared handles): keep one, update it
/// from the reload path, pass it to [`render`].
#[derive(Clone, Debug)]
pub struct DaemonStats {
    map_sync: Histogram,
    /// (count, total nanoseconds) of `map_sync`, for `/status` (the histogram keeps its own).
    map_sync_totals: Arc<(AtomicU64, AtomicU64)>,
    /// `lb_map_changes_total`: the diff entries applied, so a benchmark (or an operator) can
    /// see what one Kubernetes change costs in map writes, and that a re-list costs none.
    map_changes: Counter,
    reloads: Family<[(&'static str, &'static str); 1], Counter>,
    reply_table: ReplyTableStats,
    gossip: GossipMetrics,
    bgp: BgpMetrics,
    /// `lb_interface_pattern_unmatched`, by (key, pattern).
    unmatched: Family<Vec<(String, String)>, Gauge>,
    maps: MapGauges,
    version: &'static str,
}

/// The maps' use as last read ([`crate::map_usage`]).
#[derive(Clone, Debug, Default)]
struct MapGauges {
    capacity: Family<Vec<(String, String)>, Gauge>,
    entries: Family<Vec<(String, String)>, Gauge>,
    memory: Family<Vec<(String, String)>, Gauge>,
    last: Arc<std::sync::Mutex<Vec<crate::map_usage::MapUsage>>>,
}

/// Kubernetes mode's gossip, as the controller last reported it.
#[derive(Clone, Debug, Default)]
struct GossipMetrics {
    members: Family<[(&'static str, &'static str); 1], Gauge>,
    messages: Family<[(&'static str, &'static str); 1], Counter>,
}

/// The BGP speaker as the daemon last read it back.
#[derive(Clone, Debug, Default)]
struct BgpMetrics {
    session_up: Family<Vec<(String, String)>, Gauge>,
    exported: Family<Vec<(String, String)>, Gauge>,
    bfd_up: Family<Vec<(String, String)>, Gauge>,
    applies: Family<[(&'static str, &'static str); 1], Counter>,
    restarts: Counter,
}

/// The reply table as the daemon's sweeps see it (counting entries needs a walk of the
/// table, which the sweep does anyway; a scrape does not).
#[derive(Clone, Debug, Default)]
struct ReplyTableStats {
    flows: Gauge,
    capacity: Gauge,
    expired: Counter,
    sweep_seconds: Gauge<f64, AtomicU64>,
}

impl Default for DaemonStats {
    fn default() -> Self {
        DaemonStats::new(env!("CARGO_PKG_VERSION"))
    }
}

impl DaemonStats {
    pub fn new(version: &'static str) -> DaemonStats {
        let reloads = Family::default();
        // Both series exist from the start, so an alert on `increase(...{result="error"})`
        // sees the first failure.
        for r in ["ok", "error"] {
            let _ = reloads.get_or_create(&[("result", r)]);
        }
        DaemonStats {
            // 100 µs .. ~3.3 s: one VIP's ring is well under a ms, programming 20,000 VIPs
            // from scratch takes seconds.
            map_sync: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            map_sync_totals: Arc::default(),
            map_changes: Counter::default(),
            reloads,
            reply_table: ReplyTableStats::default(),
            gossip: GossipMetrics::default(),
            bgp: BgpMetrics::default(),
            unmatched: Family::default(),
            maps: MapGauges::default(),
            version,
        }
    }

    /// Whether the config entry `pattern` of `key` names any interface on this node now.
    pub fn interface_pattern(&self, key: &str, pattern: &str, unmatched: bool) {
        self.unmatched
            .get_or_create(&vec![
                ("key".to_string(), key.to_string()),
                ("pattern".to_string(), pattern.to_string()),
            ])
            .set(i64::from(unmatched));
    }

    /// The maps' use as just read; returns the maps that crossed
    /// [`NEAR_FULL`](crate::map_usage::NEAR_FULL) since the last reading (to warn about).
    pub fn map_usage(
        &self,
        now: Vec<crate::map_usage::MapUsage>,
    ) -> Vec<crate::map_usage::MapUsage> {
        let m = &self.maps;
        for u in &now {
            let l = vec![("map".to_string(), u.map.to_string())];
            m.capacity.get_or_create(&l).set(u.capacity as i64);
            m.entries.get_or_create(&l).set(u.entries as i64);
            if let Some(b) = u.memory_bytes {
                m.memory.get_or_create(&l).set(b as i64);
            }
        }
        let mut last = m.last.lock().unwrap_or_else(|p| p.into_inner());
        let crossed = crate::map_usage::newly_near_full(&last, &now)
            .into_iter()
            .cloned()
            .collect();
        *last = now;
        crossed
    }

    /// The maps' use as last read, for `/status`.
    pub fn last_map_usage(&self) -> Vec<crate::map_usage::MapUsage> {
        self.maps
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The reply table holds at most `n` flows.
    pub fn set_reply_capacity(&self, n: u32) {
        self.reply_table.capacity.set(n as i64);
    }

    /// One sweep of the reply table finished: what it found and how long it took.
    pub fn reply_sweep(&self, s: &SweepStats, took: Duration) {
        let r = &self.reply_table;
        r.flows.set((s.scanned - s.expired) as i64);
        r.expired.inc_by(s.expired as u64);
        r.sweep_seconds.set(took.as_secs_f64());
    }

    /// One plan written into the maps took `d`.
    /// `n` data-plane changes were applied to the maps.
    pub fn map_changes(&self, n: usize) {
        self.map_changes.inc_by(n as u64);
    }

    pub fn observe_map_sync(&self, d: Duration) {
        self.map_sync.observe(d.as_secs_f64());
        self.map_sync_totals.0.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.map_sync_totals.1.fetch_add(nanos, Ordering::Relaxed);
    }

    /// One configuration reload finished (`ok`: applied; otherwise rejected and nothing
    /// changed).
    pub fn config_reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&[("result", if ok { "ok" } else { "error" })])
            .inc();
    }

    pub fn config_reloads(&self, ok: bool) -> u64 {
        self.reloads
            .get_or_create(&[("result", if ok { "ok" } else { "error" })])
            .get()
    }

    pub fn version(&self) -> &'static str {
        self.version
    }

    /// Gossip's members by state (`alive`, `suspect`, `down`) and its datagram totals
    /// (`sent`, `received`, `rejected`) as the controller last counted them; the counters
    /// only move forward.
    pub fn gossip(&self, members: &[(&'static str, usize)], totals: &[(&'static str, u64)]) {
        for (state, n) in members {
            self.gossip
                .members
                .get_or_create(&[("state", *state)])
                .set(*n as i64);
        }
        for (result, total) in totals {
            let c = self.gossip.messages.get_or_create(&[("result", *result)]);
            let now = c.get();
            if *total > now {
                c.inc_by(total - now);
            }
        }
    }
}

impl DaemonStats {
    /// The speaker's sessions as just read back: per peer (name, established, prefixes
    /// exported, BFD up when BFD is on), and the speaker's totals (configurations applied
    /// and refused, restarts), which only move forward.
    pub fn bgp(
        &self,
        peers: &[(String, bool, u64, Option<bool>)],
        applied: u64,
        rejected: u64,
        restarts: u64,
    ) {
        let b = &self.bgp;
        b.session_up.clear();
        b.exported.clear();
        b.bfd_up.clear();
        for (peer, up, exported, bfd) in peers {
            let l = vec![("peer".to_string(), peer.clone())];
            b.session_up.get_or_create(&l).set(i64::from(*up));
            b.exported.get_or_create(&l).set(*exported as i64);
            if let Some(bfd) = bfd {
                b.bfd_up.get_or_create(&l).set(i64::from(*bfd));
            }
        }
        for (result, total) in [("applied", applied), ("rejected", rejected)] {
            let c = b.applies.get_or_create(&[("result", result)]);
            if total > c.get() {
                c.inc_by(total - c.get());
            }
        }
        if restarts > b.restarts.get() {
            b.restarts.inc_by(restarts - b.restarts.get());
        }
    }
}

// ---- what the kernel knows ----------------------------------------------------------------

/// Every counter the labels name, read from the maps at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub global: Option<ReasonCounters>,
    pub vips: Vec<(VipLabel, Option<VipMeta>, Option<VipCounter>)>,
    pub backends: Vec<(BackendLabel, Option<KernelCounter>)>,
    pub rnat: Option<RnatCounters>,
    pub settings: Option<Settings>,
    /// Map reads that failed, for the log and `/status`.
    pub errors: Vec<String>,
}

impl Snapshot {
    pub fn read(dp: &Dataplane, labels: &Labels) -> Snapshot {
        let mut errors = Vec::new();
        let global = kept(&mut errors, "node counters", dp.stats());
        let vips = labels
            .vips
            .iter()
            .map(|v| {
                let what = format!("VIP {} counters", v.index);
                let c = kept(&mut errors, &what, dp.vip_stats(v.index));
                let meta = dp.vip(&vip_key(v.addr, v.port, v.proto));
                (v.clone(), meta, c)
            })
            .collect();
        let backends = labels
            .backends
            .iter()
            .map(|b| {
                let what = format!("backend {} counters", b.id);
                (b.clone(), kept(&mut errors, &what, dp.backend_stats(b.id)))
            })
            .collect();
        let rnat = kept(&mut errors, "reverse-NAT counters", dp.rnat_stats());
        let settings = kept(&mut errors, "settings", dp.settings());
        Snapshot {
            global,
            vips,
            backends,
            rnat,
            settings,
            errors,
        }
    }
}

fn kept<T>(errors: &mut Vec<String>, what: &str, r: Result<T, DataplaneError>) -> Option<T> {
    r.map_err(|e| errors.push(format!("{what}: {e}"))).ok()
}

/// Reasons the program counts per VIP: everything but the parse failures, which happen
/// before a VIP is known, and the steering marks that name no VIP of this node or are for a
/// backend elsewhere.
pub fn counted_per_vip(r: Reason) -> bool {
    !matches!(
        r,
        Reason::PassNotIp
            | Reason::PassMalformed
            | Reason::PassNotVip
            | Reason::PassFragment
            | Reason::PassIpv6Ext
            | Reason::DropBadMark
            | Reason::PassMarkTransit
    )
}

pub fn proto_name(proto: u8) -> String {
    match proto {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        other => other.to_string(),
    }
}

/// `backend` label value: `198.19.0.10:8443`, `[fd00:19::10]:8443`.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    SocketAddr::new(addr, port).to_string()
}

/// Sorted, deduplicated, comma-joined.
fn joined(mut v: Vec<String>) -> String {
    v.sort();
    v.dedup();
    v.join(",")
}

#[derive(Debug)]
struct SnapshotCollector {
    snap: Snapshot,
    vips: usize,
    backends: usize,
}

type LabelSet = Vec<(&'static str, String)>;

fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(LabelSet, u64)],
) -> Result<(), std::fmt::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge<N: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    labels: &LabelSet,
    v: N,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m.encode_family(labels)?)
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.snap;
        encode_vip_counters(&mut enc, s)?;
        if let Some(g) = &s.global {
            encode_node_counters(&mut enc, g)?;
        }
        encode_backend_counters(&mut enc, s)?;
        if let Some(rn) = &s.rnat {
            encode_rnat_counters(&mut enc, rn)?;
        }
        self.encode_gauges(&mut enc)
    }
}

/// `lb_vip_*`: per VIP.
fn encode_vip_counters(enc: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    let mut series: [Vec<(LabelSet, u64)>; 4] = Default::default();
    for (v, _, c) in &s.vips {
        let Some(c) = c else { continue };
        let labels: LabelSet = vec![
            ("vip", v.addr.to_string()),
            ("port", v.port.to_string()),
            ("proto", proto_name(v.proto)),
        ];
        for (out, value) in series
            .iter_mut()
            .zip([c.packets, c.bytes, c.routed_cid, c.dropped])
        {
            out.push((labels.clone(), value));
        }
    }
    let [packets, bytes, routed_cid, dropped] = series;
    counter_family(
        enc,
        "lb_vip_packets",
        "Packets of one VIP, each counted once.",
        &packets,
    )?;
    counter_family(
        enc,
        "lb_vip_bytes",
        "Octets of one VIP's packets, as they arrived.",
        &bytes,
    )?;
    counter_family(
        enc,
        "lb_vip_routed_cid_packets",
        "Packets of one VIP routed by connection ID (QUIC-LB server ID or learned CID).",
        &routed_cid,
    )?;
    counter_family(
        enc,
        "lb_vip_dropped_packets",
        "Packets of one VIP that were dropped (lb_node_packets_total says why).",
        &dropped,
    )
}

/// `lb_node_packets` / `lb_node_bytes`: everything the XDP program saw, by reason.
fn encode_node_counters(
    enc: &mut DescriptorEncoder,
    g: &ReasonCounters,
) -> Result<(), std::fmt::Error> {
    let (mut packets, mut bytes) = (Vec::new(), Vec::new());
    for r in Reason::ALL {
        let labels: LabelSet = vec![("reason", r.name().to_string())];
        packets.push((labels.clone(), g.get(r).packets));
        bytes.push((labels, g.get(r).bytes));
    }
    counter_family(
        enc,
        "lb_node_packets",
        "Packets seen by the XDP program on this node by reason, VIP or not.",
        &packets,
    )?;
    counter_family(
        enc,
        "lb_node_bytes",
        "Octets seen by the XDP program on this node by reason, VIP or not.",
        &bytes,
    )?;
    Ok(())
}

/// `lb_backend_packets` / `lb_backend_bytes`: per backend, labelled with the VIPs it serves.
fn encode_backend_counters(
    enc: &mut DescriptorEncoder,
    s: &Snapshot,
) -> Result<(), std::fmt::Error> {
    let (mut packets, mut bytes) = (Vec::new(), Vec::new());
    // By index: scanning every VIP for every backend was 50,000 x 20,000 comparisons per
    // scrape of a 10,000-Service cluster (2.8 s, 85 % of it in that scan).
    let by_index: HashMap<u32, &VipLabel> = s.vips.iter().map(|(v, _, _)| (v.index, v)).collect();
    for (b, c) in &s.backends {
        let Some(c) = c else { continue };
        // `vip_indexes` is in plan order, each once, as the VIPs are.
        let served: Vec<&VipLabel> = b
            .vip_indexes
            .iter()
            .filter_map(|i| by_index.get(i).copied())
            .collect();
        let labels: LabelSet = vec![
            (
                "vip",
                joined(served.iter().map(|v| v.addr.to_string()).collect()),
            ),
            (
                "port",
                joined(served.iter().map(|v| v.port.to_string()).collect()),
            ),
            (
                "proto",
                joined(served.iter().map(|v| proto_name(v.proto)).collect()),
            ),
            ("backend", endpoint(b.addr, b.port)),
        ];
        packets.push((labels.clone(), c.packets));
        bytes.push((labels, c.bytes));
    }
    counter_family(
        enc,
        "lb_backend_packets",
        "Packets sent to one backend.",
        &packets,
    )?;
    counter_family(
        enc,
        "lb_backend_bytes",
        "Octets sent to one backend, as they arrived.",
        &bytes,
    )?;
    Ok(())
}

/// `lb_rnat_packets` / `lb_rnat_bytes`: the reverse-NAT TC program, by reason.
fn encode_rnat_counters(
    enc: &mut DescriptorEncoder,
    rn: &RnatCounters,
) -> Result<(), std::fmt::Error> {
    let (mut packets, mut bytes) = (Vec::new(), Vec::new());
    for r in RnatReason::ALL {
        let labels: LabelSet = vec![("reason", r.name().to_string())];
        packets.push((labels.clone(), rn.get(r).packets));
        bytes.push((labels, rn.get(r).bytes));
    }
    counter_family(
        enc,
        "lb_rnat_packets",
        "Packets seen by the reverse-NAT TC program by reason.",
        &packets,
    )?;
    counter_family(
        enc,
        "lb_rnat_bytes",
        "Octets seen by the reverse-NAT TC program by reason.",
        &bytes,
    )?;
    Ok(())
}

impl SnapshotCollector {
    /// What is programmed (VIPs, backends), the next-hop cache's TTL, and this scrape's map
    /// read errors.
    fn encode_gauges(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.snap;
        let none = LabelSet::new();
        gauge(
            enc,
            "lb_vips",
            "VIPs (address, port, protocol) programmed.",
            None,
            &none,
            self.vips as i64,
        )?;
        gauge(
            enc,
            "lb_backends",
            "Distinct backends (address, port) programmed.",
            None,
            &none,
            self.backends as i64,
        )?;
        if let Some(st) = &s.settings {
            gauge(
                enc,
                "lb_fib_cache_ttl",
                "Lifetime of the XDP next-hop cache; 0 = off.",
                Some(&Unit::Seconds),
                &none,
                st.fib_cache_ttl_ns as f64 / 1e9,
            )?;
        }
        gauge(
            enc,
            "lb_scrape_map_errors",
            "Map reads that failed during this scrape (their series are left out).",
            None,
            &none,
            s.errors.len() as i64,
        )
    }
}

fn registry(snap: Snapshot, labels: &Labels, extra: &DaemonStats) -> Registry {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(SnapshotCollector {
        snap,
        vips: labels.vips.len(),
        backends: labels.backends.len(),
    }));
    reg.register_with_unit(
        "lb_map_sync_duration",
        "Time to write one plan into the maps",
        Unit::Seconds,
        extra.map_sync.clone(),
    );
    reg.register(
        "lb_map_changes",
        "Data-plane changes applied to the maps",
        extra.map_changes.clone(),
    );
    reg.register(
        "lb_config_reloads",
        "Configuration reloads by result",
        extra.reloads.clone(),
    );
    reg.register(
        "lb_interface_pattern_unmatched",
        "1 while this interfaces / backend_interfaces entry names no interface on this node",
        extra.unmatched.clone(),
    );
    let m = &extra.maps;
    reg.register(
        "lb_map_capacity",
        "Entries the map can hold (its [capacity] setting)",
        m.capacity.clone(),
    );
    reg.register(
        "lb_map_entries",
        "Entries in use in the map, as of the last reading (every 10 s)",
        m.entries.clone(),
    );
    reg.register_with_unit(
        "lb_map_memory",
        "Kernel memory charged for the map (memlock in its fdinfo)",
        Unit::Bytes,
        m.memory.clone(),
    );
    let r = &extra.reply_table;
    reg.register(
        "lb_reply_flows",
        "Flows in the reply table (whose replies the reverse NAT rewrites), as of the last sweep",
        r.flows.clone(),
    );
    reg.register(
        "lb_reply_flows_capacity",
        "Flows the reply table can hold; past that, new flows are dropped (drop_flow_table_full)",
        r.capacity.clone(),
    );
    reg.register(
        "lb_reply_flows_expired",
        "Reply-table entries deleted by the sweep as idle past their timeout",
        r.expired.clone(),
    );
    reg.register_with_unit(
        "lb_reply_sweep_duration",
        "Time the last sweep of the reply table took",
        Unit::Seconds,
        r.sweep_seconds.clone(),
    );
    reg.register(
        "lb_gossip_members",
        "Kubernetes mode: cluster members by gossip state",
        extra.gossip.members.clone(),
    );
    reg.register(
        "lb_gossip_messages",
        "Kubernetes mode: gossip datagrams sent, received, and rejected",
        extra.gossip.messages.clone(),
    );
    let b = &extra.bgp;
    reg.register(
        "lb_bgp_session_up",
        "1 while the BGP session with this peer is Established",
        b.session_up.clone(),
    );
    reg.register(
        "lb_bgp_prefixes_exported",
        "Prefixes the speaker exports to this peer, as it reports them",
        b.exported.clone(),
    );
    reg.register(
        "lb_bgp_bfd_session_up",
        "1 while the BFD session with this peer is Up (peers with BFD only)",
        b.bfd_up.clone(),
    );
    reg.register(
        "lb_bgp_config_applies",
        "Speaker configurations by result: applied, or rejected (the previous one kept running)",
        b.applies.clone(),
    );
    reg.register(
        "lb_bgp_speaker_restarts",
        "Times lb started its BGP speaker again after it died",
        b.restarts.clone(),
    );
    // `info` in OpenMetrics (`lb_build_info{version} 1`), a gauge of 1 in the 0.0.4 text.
    reg.register(
        "lb_build",
        "The lb version; always 1",
        Info::new([("version", extra.version)]),
    );
    reg
}

/// The metrics text for this moment: reads every map `labels` names.
pub fn render(dp: &Dataplane, labels: &Labels, extra: &DaemonStats, format: Format) -> String {
    render_snapshot(Snapshot::read(dp, labels), labels, extra, format)
}

/// [`render`] over counters already read.
pub fn render_snapshot(
    snap: Snapshot,
    labels: &Labels,
    extra: &DaemonStats,
    format: Format,
) -> String {
    for e in &snap.errors {
        log::warn!("metrics: reading {e}");
    }
    let reg = registry(snap, labels, extra);
    let mut out = String::new();
    let r = match format {
        Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut out, &reg),
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &reg),
    };
    if let Err(e) = r {
        // Writing into a String cannot fail; a metric that refuses to encode is a bug here.
        log::error!("metrics: encoding failed: {e}");
        let _ = writeln!(out, "# encoding failed: {e}");
    }
    out
}

fn counters_json(c: &ReasonCounters, which: impl Fn(Reason) -> bool) -> Value {
    let mut m = serde_json::Map::new();
    for r in Reason::ALL.into_iter().filter(|r| which(*r)) {
        let k = c.get(r);
        m.insert(
            r.name().into(),
            json!({ "packets": k.packets, "bytes": k.bytes }),
        );
    }
    Value::Object(m)
}

/// The `/status` document: VIPs (with their QUIC-LB configs, never keys, and the ring
/// state the maps hold), backends, settings and counters, read from the maps now.
pub fn status(dp: &Dataplane, labels: &Labels, extra: &DaemonStats) -> Value {
    status_snapshot(&Snapshot::read(dp, labels), extra)
}

/// [`status`] over counters already read.
pub fn status_snapshot(s: &Snapshot, extra: &DaemonStats) -> Value {
    let vips: Vec<Value> = s
        .vips
        .iter()
        .map(|(v, meta, c)| {
            json!({
                "index": v.index,
                "name": v.name,
                "addr": v.addr.to_string(),
                "port": v.port,
                "proto": proto_name(v.proto),
                "quic_lb": v.quic,
                // What the maps hold for this VIP (null: the VIP is not in LB_VIPS).
                "map": meta.map(|m| json!({
                    "index": m.index,
                    "flags": m.flags,
                    // Learned-CID mode: the server CID length (0: off).
                    "learned_cid_len": m.learned_cid_len(),
                    "ring_size": m.ring_size,
                    // First slot of its ring in the shared pool (LB_MAGLEV).
                    "ring_offset": m.ring_offset,
                })),
                "counters": c.as_ref().map(|c| json!({
                    "packets": c.packets,
                    "bytes": c.bytes,
                    "routed_cid": c.routed_cid,
                    "dropped": c.dropped,
                })),
            })
        })
        .collect();
    let backends: Vec<Value> = s
        .backends
        .iter()
        .map(|(b, c)| {
            json!({
                "id": b.id,
                "addr": b.addr.to_string(),
                "port": b.port,
                "backend": endpoint(b.addr, b.port),
                "vips": b.vip_indexes,
                "packets": c.map(|c| c.packets),
                "bytes": c.map(|c| c.bytes),
            })
        })
        .collect();
    let rnat = s.rnat.as_ref().map(|rn| {
        let mut m = serde_json::Map::new();
        for r in RnatReason::ALL {
            let k = rn.get(r);
            m.insert(
                r.name().into(),
                json!({ "packets": k.packets, "bytes": k.bytes }),
            );
        }
        Value::Object(m)
    });
    json!({
        "version": extra.version,
        "settings": s.settings.map(|st| json!({
            "fib_cache_ttl_ns": st.fib_cache_ttl_ns,
            "mark_remote": st.flags & lb_common::SETTINGS_F_MARK_REMOTE != 0,
        })),
        "vips": vips,
        "backends": backends,
        "counters": s.global.as_ref().map(|g| counters_json(g, |_| true)),
        "rnat_counters": rnat,
        "config_reloads": {
            "ok": extra.config_reloads(true),
            "error": extra.config_reloads(false),
        },
        "reply_table": {
            "flows": extra.reply_table.flows.get(),
            "capacity": extra.reply_table.capacity.get(),
            "expired": extra.reply_table.expired.get(),
            "last_sweep_seconds": extra.reply_table.sweep_seconds.get(),
        },
        // Each sizable map: capacity, entries, kernel memory, and whether it is near full.
        "maps": extra.last_map_usage().iter().map(|u| json!({
            "map": u.map,
            "setting": u.setting,
            "capacity": u.capacity,
            "entries": u.entries,
            "memory_bytes": u.memory_bytes,
            "near_full": u.near_full(),
        })).collect::<Vec<_>>(),
        "map_sync": {
            "count": extra.map_sync_totals.0.load(Ordering::Relaxed),
            "sum_seconds": extra.map_sync_totals.1.load(Ordering::Relaxed) as f64 / 1e9,
        },
        "errors": s.errors,
    })
}

// ---- HTTP -------------------------------------------------------------------------------

/// What the HTTP server serves. The daemon implements it over its own state (typically a
/// `Mutex<Dataplane>` plus its [`Labels`] and [`DaemonStats`], calling [`render`] and
/// [`status`]).
pub trait MetricsSource {
    fn metrics_text(&self, format: Format) -> String;
    fn status_json(&self) -> Value;
    /// `/healthz`, the liveness probe: `Ok` when the process and its data plane are alive
    /// (answering at all, within the prober's timeout, is most of it: a daemon stuck on its
    /// own lock times out). Never depends on the API server, so an API outage does not
    /// restart every node's daemon at once. `Err` says what is broken.
    fn liveness(&self) -> Result<(), String> {
        Ok(())
    }
    /// `/readyz`, the readiness probe: `Ok` when the node does its job (data plane attached
    /// and programmed, and in Kubernetes mode the API connection synced and announcements
    /// applied). `Err` lists every reason it is not.
    fn readiness(&self) -> Result<(), Vec<String>> {
        Ok(())
    }
}

/// Which probe a path is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    Live,
    Ready,
}

/// A probe's answer: 200 "ok", or 503 with one reason per line.
fn probe_reply(source: &dyn MetricsSource, probe: Probe) -> (StatusCode, String) {
    let result = match probe {
        Probe::Live => source.liveness().map_err(|e| vec![e]),
        Probe::Ready => source.readiness(),
    };
    match result {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(reasons) => {
            let what = if probe == Probe::Live {
                "not alive"
            } else {
                "not ready"
            };
            let mut body = String::new();
            for r in reasons {
                let _ = writeln!(body, "{what}: {r}");
            }
            (StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error(
        "cannot listen for metrics on {addr}: {source} (is another lb or exporter using the port? set a different metrics address)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Bind `addr` and serve `/metrics` and `/status` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    source: Arc<dyn MetricsSource + Send + Sync>,
) -> Result<(), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    serve_listener(listener, source).await;
    Ok(())
}

/// Serve on a bound listener (lets the caller learn the port of `127.0.0.1:0`). Runs until
/// the task is dropped; per-connection errors are logged, never fatal.
pub async fn serve_listener(listener: TcpListener, source: Arc<dyn MetricsSource + Send + Sync>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                log::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let source = source.clone();
                async move { Ok::<_, Infallible>(handle(source, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                log::debug!("metrics: connection: {e}");
            }
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `/healthz` or `/readyz`: the checks take the daemon's lock, so off the async workers.
async fn probe_response(
    source: Arc<dyn MetricsSource + Send + Sync>,
    probe: Probe,
    head: bool,
) -> Response<Full<Bytes>> {
    let (status, body) = tokio::task::spawn_blocking(move || probe_reply(&*source, probe))
        .await
        .unwrap_or_else(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the probe's check failed: {e}\n"),
            )
        });
    let len = body.len();
    let mut r = reply(
        status,
        "text/plain; charset=utf-8",
        if head { String::new() } else { body },
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

async fn handle(
    source: Arc<dyn MetricsSource + Send + Sync>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(path, "/metrics" | "/status" | "/healthz" | "/readyz");
    if !known {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: lb serves /metrics, /status, /healthz and /readyz\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let head = req.method() == Method::HEAD;
    let format = Format::from_accept(
        req.headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let metrics = path == "/metrics";
    let probe = match path {
        "/healthz" => Some(Probe::Live),
        "/readyz" => Some(Probe::Ready),
        _ => None,
    };
    if let Some(probe) = probe {
        return probe_response(source, probe, head).await;
    }
    // Reading the maps is a burst of syscalls under the daemon's lock: keep it off the
    // async workers.
    let body = tokio::task::spawn_blocking(move || {
        if metrics {
            source.metrics_text(format)
        } else {
            let mut s = serde_json::to_string_pretty(&source.status_json())
                .unwrap_or_else(|e| format!("{{\"error\":\"encoding status: {e}\"}}"));
            s.push('\n');
            s
        }
    })
    .await;
    let (status, ct, body) = match body {
        Ok(b) if metrics => (StatusCode::OK, format.content_type(), b),
        Ok(b) => (StatusCode::OK, "application/json", b),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("reading the data plane failed: {e}\n"),
        ),
    };
    let len = body.len();
    let mut r = reply(status, ct, if head { String::new() } else { body });
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}
