//! The [`Plan`]: what the data plane should hold for a [`Config`], with the numbers the
//! maps are indexed by assigned: a VIP index per (address, port, protocol) and a backend id
//! per distinct backend (address, port). [`Plan::build`] makes one, reusing the numbers of
//! the plan in force so a reload rewrites only what changed.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    MAX_BACKENDS, MAX_VIPS, VIP_F_AFFINITY_CLIENT_IP, VIP_F_QUIC_LB, VIP_F_SOURCE_RANGES, VipKey,
    quic_lb,
};

use super::{
    BackendConfig, Config, ConfigError, ConfigErrors, Interface, Protocol, SessionAffinity,
    VipConfig,
};
use crate::{dataplane::vip_key, maglev::WeightedBackend};

#[cfg(test)]
mod tests;

/// A data-plane VIP: one (address, port, protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipId {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
}

impl VipId {
    pub fn key(&self) -> VipKey {
        vip_key(self.addr, self.port, self.proto.number())
    }
}

impl fmt::Display for VipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.proto.name(),
            SocketAddr::new(self.addr, self.port)
        )
    }
}

/// A backend in one VIP's Maglev ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlannedBackend {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlannedServerId {
    pub config_id: u8,
    pub server_id: Vec<u8>,
    pub backend: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedVip {
    /// The `name` of the `[[vips]]` entry it came from.
    pub name: Option<String>,
    pub key: VipId,
    /// Index in the per-VIP arrays (rings, QUIC-LB configs, counters).
    pub index: u32,
    /// `VIP_F_QUIC_LB` for a UDP VIP with QUIC-LB routing on; `learned_cid_flags(len)` for
    /// a UDP VIP in learned-CID mode; plus `VIP_F_SOURCE_RANGES` when `source_ranges` is not
    /// empty and `VIP_F_AFFINITY_CLIENT_IP` for `session_affinity = "client_ip"`.
    pub flags: u32,
    /// Allowed client prefixes (sorted); empty: every client.
    pub source_ranges: Vec<ipnet::IpNet>,
    /// Slots of the Maglev table to publish: the configured size, or 0 when no backend has
    /// a weight above zero (the VIP then drops new flows).
    pub ring_size: u32,
    /// Every backend of the VIP, drained ones (weight 0) included.
    pub backends: Vec<PlannedBackend>,
    /// Installed QUIC-LB configs (empty unless `flags` has `VIP_F_QUIC_LB`).
    pub quic: Vec<quic_lb::Config>,
    /// Installed server IDs (empty unless `flags` has `VIP_F_QUIC_LB`).
    pub server_ids: Vec<PlannedServerId>,
}

impl PlannedVip {
    /// The backends that get Maglev slots, in id order.
    pub fn ring_backends(&self) -> Vec<WeightedBackend> {
        let mut v: Vec<WeightedBackend> = self
            .backends
            .iter()
            .filter(|b| b.weight > 0)
            .map(|b| WeightedBackend {
                id: b.id,
                addr: b.addr,
                port: b.port,
                weight: b.weight,
            })
            .collect();
        v.sort_by_key(|b| b.id);
        v
    }
}

/// An `LB_BACKENDS` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackendEntry {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
}

/// What the data plane should hold, with VIP indexes and backend ids assigned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub interfaces: Vec<Interface>,
    /// In config order (entry, then port, then protocol).
    pub vips: Vec<PlannedVip>,
    /// Distinct backend (address, port) pairs over all VIPs, by id.
    pub backends: Vec<BackendEntry>,
    pub metrics_addr: Option<SocketAddr>,
}

/// Hands out, each time, the lowest number below `limit` in neither `taken` nor `avoid`,
/// else the lowest not in `taken`. Within one plan `taken` only grows (the caller inserts
/// each number handed out) and `avoid` is fixed, so each answer is at least the previous
/// one of its kind and the search resumes there: searching from 0 for every new entry made
/// a cold start with 50,000 backends quadratic (over a billion set lookups).
struct Allocator<'a> {
    limit: u32,
    avoid: &'a HashSet<u32>,
    /// Below this, every number is in `taken` or `avoid`.
    fresh: u32,
    /// Below this, every number is in `taken`.
    reuse: u32,
}

impl<'a> Allocator<'a> {
    fn new(limit: u32, avoid: &'a HashSet<u32>) -> Allocator<'a> {
        Allocator {
            limit,
            avoid,
            fresh: 0,
            reuse: 0,
        }
    }

    fn next(&mut self, taken: &HashSet<u32>) -> Option<u32> {
        while self.fresh < self.limit
            && (taken.contains(&self.fresh) || self.avoid.contains(&self.fresh))
        {
            self.fresh += 1;
        }
        if self.fresh < self.limit {
            return Some(self.fresh);
        }
        while self.reuse < self.limit && taken.contains(&self.reuse) {
            self.reuse += 1;
        }
        (self.reuse < self.limit).then_some(self.reuse)
    }
}

/// Backend (address, port) -> id.
type BackendIds = HashMap<(IpAddr, u16), u32>;

impl Plan {
    /// Resolve a validated config. With `previous` (the plan in force), an unchanged VIP
    /// (address, port, protocol) keeps its index and an unchanged backend (address, port)
    /// keeps its id, so a reload rewrites only what changed and connection-table entries
    /// keep naming the same backend. New entries get the lowest number that neither plan
    /// uses; only when the maps are full is a number freed by this reload reused (then
    /// [`Plan::diff`] retires the old user before the new one is written).
    pub fn build(config: &Config, previous: Option<&Plan>) -> Result<Plan, ConfigErrors> {
        let empty = Plan::default();
        let prev = previous.unwrap_or(&empty);
        let fail = |what: String| {
            ConfigErrors(vec![ConfigError {
                file: config.file.clone(),
                position: None,
                field: String::new(),
                message: what,
            }])
        };
        let ids = backend_ids(config, prev).map_err(fail)?;
        let vips = vip_indexes(config, prev)
            .map_err(fail)?
            .into_iter()
            .map(|(v, key, index)| planned_vip(v, key, index, &ids))
            .collect();
        let mut backends: Vec<BackendEntry> = ids
            .iter()
            .map(|((addr, port), id)| BackendEntry {
                id: *id,
                addr: *addr,
                port: *port,
            })
            .collect();
        backends.sort();
        Ok(Plan {
            interfaces: config.interfaces.clone(),
            vips,
            backends,
            metrics_addr: config.metrics_addr,
        })
    }
}

/// An id for every distinct backend of `config`: its id in `prev` when it has one, else
/// the lowest free one, allocated in order of first appearance.
fn backend_ids(config: &Config, prev: &Plan) -> Result<BackendIds, String> {
    let prev_ids: BackendIds = prev
        .backends
        .iter()
        .map(|b| ((b.addr, b.port), b.id))
        .collect();
    let prev_numbers: HashSet<u32> = prev_ids.values().copied().collect();
    // Reused ids first, so a new backend never takes one of them.
    let mut ids = BackendIds::new();
    let mut order: Vec<(IpAddr, u16)> = Vec::new();
    // A set beside `order`: `order.contains` made this quadratic in the backends.
    let mut seen: HashSet<(IpAddr, u16)> = HashSet::new();
    for b in config.vips.iter().flat_map(|v| &v.backends) {
        let k = (b.addr, b.port);
        if seen.insert(k) {
            order.push(k);
            if let Some(id) = prev_ids.get(&k) {
                ids.insert(k, *id);
            }
        }
    }
    let mut taken: HashSet<u32> = ids.values().copied().collect();
    let mut alloc = Allocator::new(MAX_BACKENDS, &prev_numbers);
    for k in &order {
        if !ids.contains_key(k) {
            let id = alloc
                .next(&taken)
                .ok_or_else(|| format!("more than {MAX_BACKENDS} backends"))?;
            taken.insert(id);
            ids.insert(*k, id);
        }
    }
    Ok(ids)
}

/// Every (address, port, protocol) of `config` in config order (entry, then port, then
/// protocol), with the entry it comes from and its index: the one in `prev` when it has
/// one, else the lowest free one.
fn vip_indexes<'c>(
    config: &'c Config,
    prev: &Plan,
) -> Result<Vec<(&'c VipConfig, VipId, u32)>, String> {
    let prev_indexes: HashMap<VipId, u32> = prev.vips.iter().map(|v| (v.key, v.index)).collect();
    let prev_numbers: HashSet<u32> = prev_indexes.values().copied().collect();
    let keys: Vec<(&VipConfig, VipId)> = config
        .vips
        .iter()
        .flat_map(|v| {
            v.ports.iter().flat_map(move |port| {
                v.protocols.iter().map(move |proto| {
                    (
                        v,
                        VipId {
                            addr: v.addr,
                            port: *port,
                            proto: *proto,
                        },
                    )
                })
            })
        })
        .collect();
    // Reused indexes first, so a new VIP never takes one of them.
    let mut indexes: HashMap<VipId, u32> = keys
        .iter()
        .filter_map(|(_, k)| prev_indexes.get(k).map(|i| (*k, *i)))
        .collect();
    let mut taken: HashSet<u32> = indexes.values().copied().collect();
    let mut planned = Vec::with_capacity(keys.len());
    let mut alloc = Allocator::new(MAX_VIPS, &prev_numbers);
    for (v, k) in keys {
        let index = match indexes.get(&k) {
            Some(i) => *i,
            None => {
                let i = alloc
                    .next(&taken)
                    .ok_or_else(|| format!("more than {MAX_VIPS} VIPs"))?;
                taken.insert(i);
                indexes.insert(k, i);
                i
            }
        };
        planned.push((v, k, index));
    }
    Ok(planned)
}

/// The data-plane VIP `key` (index `index`) of the entry `v`.
fn planned_vip(v: &VipConfig, key: VipId, index: u32, ids: &BackendIds) -> PlannedVip {
    // QUIC-LB applies to the entry's UDP VIPs only.
    let quic = v.quic && key.proto == Protocol::Udp;
    let backends: Vec<PlannedBackend> = v
        .backends
        .iter()
        .map(|b| PlannedBackend {
            id: backend_id(ids, b),
            addr: b.addr,
            port: b.port,
            weight: b.weight,
        })
        .collect();
    let server_ids = if quic {
        planned_server_ids(v, ids)
    } else {
        Vec::new()
    };
    let mut quic_cfgs = if quic { v.quic_lb.clone() } else { Vec::new() };
    quic_cfgs.sort_by_key(|c| c.config_id());
    let mut source_ranges = v.source_ranges.clone();
    source_ranges.sort();
    source_ranges.dedup();
    PlannedVip {
        name: v.name.clone(),
        key,
        index,
        flags: vip_flags(v, key, quic, &source_ranges),
        source_ranges,
        ring_size: if backends.iter().any(|b| b.weight > 0) {
            v.maglev_table_size
        } else {
            0
        },
        backends,
        quic: quic_cfgs,
        server_ids,
    }
}

/// Every server ID of the entry's backends, sorted.
fn planned_server_ids(v: &VipConfig, ids: &BackendIds) -> Vec<PlannedServerId> {
    let mut s: Vec<PlannedServerId> = v
        .backends
        .iter()
        .flat_map(|b| {
            let id = backend_id(ids, b);
            b.server_ids.iter().map(move |(c, sid)| PlannedServerId {
                config_id: *c,
                server_id: sid.clone(),
                backend: id,
            })
        })
        .collect();
    s.sort();
    s
}

/// The `VipMeta` flags of the VIP `key`: QUIC-LB or learned-CID mode (UDP only), source
/// ranges, client-IP affinity.
fn vip_flags(v: &VipConfig, key: VipId, quic: bool, source_ranges: &[ipnet::IpNet]) -> u32 {
    let mut flags = if quic {
        VIP_F_QUIC_LB
    } else if v.learned_cid_len > 0 && key.proto == Protocol::Udp {
        lb_common::learned_cid_flags(v.learned_cid_len)
    } else {
        0
    };
    if !source_ranges.is_empty() {
        flags |= VIP_F_SOURCE_RANGES;
    }
    if v.session_affinity == SessionAffinity::ClientIp {
        flags |= VIP_F_AFFINITY_CLIENT_IP;
    }
    flags
}

/// The id [`backend_ids`] gave `b`. It gave one to every backend of the config, so the
/// lookup cannot miss.
fn backend_id(ids: &BackendIds, b: &BackendConfig) -> u32 {
    ids[&(b.addr, b.port)]
}
