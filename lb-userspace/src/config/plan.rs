//! The [`Plan`]: what the data plane should hold for a [`Config`], with the numbers the
//! maps are indexed by assigned: a VIP index per (address, port, protocol) and a backend id
//! per distinct backend (address, port). [`Plan::build`] makes one, reusing the numbers of
//! the plan in force so a reload rewrites only what changed.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
};

use lb_common::{VIP_F_AFFINITY_CLIENT_IP, VIP_F_QUIC_LB, VIP_F_SOURCE_RANGES, VipKey, quic_lb};

use super::{
    BackendConfig, Config, ConfigError, ConfigErrors, Interface, Protocol, SessionAffinity,
    VipConfig,
};
use crate::{dataplane::vip_key, maglev::WeightedBackend};

mod replace;
#[cfg(test)]
mod tests;

pub use replace::VipUpdate;

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

/// Hands out numbers below `limit`: the lowest in neither `taken` nor `avoid`, else the
/// lowest not in `taken`. Numbers only ever join `taken`, so each search resumes where the
/// last one stopped: allocating `n` numbers costs `O(n + limit)`, not `O(n * limit)` (which
/// was seconds for 20,000 VIPs).
struct Allocator<'a> {
    limit: u32,
    taken: HashSet<u32>,
    avoid: &'a HashSet<u32>,
    /// Below these, every number is taken (or avoided, for `fresh`).
    fresh: u32,
    reused: u32,
}

impl<'a> Allocator<'a> {
    fn new(limit: u32, taken: HashSet<u32>, avoid: &'a HashSet<u32>) -> Self {
        Allocator {
            limit,
            taken,
            avoid,
            fresh: 0,
            reused: 0,
        }
    }

    fn allocate(&mut self) -> Option<u32> {
        while self.fresh < self.limit
            && (self.taken.contains(&self.fresh) || self.avoid.contains(&self.fresh))
        {
            self.fresh += 1;
        }
        let i = if self.fresh < self.limit {
            self.fresh
        } else {
            while self.reused < self.limit && self.taken.contains(&self.reused) {
                self.reused += 1;
            }
            if self.reused >= self.limit {
                return None;
            }
            self.reused
        };
        self.taken.insert(i);
        Some(i)
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
    let limit = config.capacity.backends;
    let mut ids_left = Allocator::new(limit, ids.values().copied().collect(), &prev_numbers);
    for k in &order {
        if !ids.contains_key(k) {
            let id = ids_left
                .allocate()
                .ok_or_else(|| format!("more than {limit} backends; raise [capacity] backends"))?;
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
    let limit = config.capacity.vips;
    let mut free = Allocator::new(limit, indexes.values().copied().collect(), &prev_numbers);
    let mut planned = Vec::with_capacity(keys.len());
    for (v, k) in keys {
        let index = match indexes.get(&k) {
            Some(i) => *i,
            None => {
                let i = free
                    .allocate()
                    .ok_or_else(|| format!("more than {limit} VIPs; raise [capacity] vips"))?;
                indexes.insert(k, i);
                i
            }
        };
        planned.push((v, k, index));
    }
    Ok(planned)
}

/// A Maglev ring's size: `maglev_table_size` when given (not 0), else sized to the
/// `weighted` backends (weight above zero, [`lb_common::maglev::ring_size_for`]); none
/// without such backends. Validation counts the pool's slots with the same rule.
pub(super) fn ring_size(maglev_table_size: u32, weighted: u32) -> u32 {
    match (weighted, maglev_table_size) {
        (0, _) => 0,
        (n, 0) => lb_common::maglev::ring_size_for(n),
        (_, explicit) => explicit,
    }
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
        ring_size: ring_size(
            v.maglev_table_size,
            backends.iter().filter(|b| b.weight > 0).count() as u32,
        ),
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
