//! [`Change`], one data-plane write, and [`Plan::diff`], the ordered writes that take the
//! data plane from one plan to the next. The order is the point: [`Plan::diff`]'s doc says
//! why each kind of write comes where it does, and [`Diff`] has one method per phase.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
};

use lb_common::{VIP_F_AFFINITY_CLIENT_IP, VIP_F_SOURCE_RANGES, quic_lb};

use super::{Plan, PlannedVip, VipId, hex};
use crate::maglev::WeightedBackend;

#[cfg(test)]
mod tests;

/// One data-plane write. [`apply`](fn@super::apply) maps each to one
/// [`Dataplane`](crate::dataplane::Dataplane) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    SetBackend {
        id: u32,
        addr: IpAddr,
        port: u16,
    },
    SetQuicConfig {
        vip_index: u32,
        config: quic_lb::Config,
    },
    SetServerId {
        vip_index: u32,
        config_id: u8,
        server_id: Vec<u8>,
        backend: u32,
    },
    /// Build the Maglev table (`ring_size` slots over `backends`; empty when `ring_size` is
    /// 0), write it into free slots of the ring pool and point the VIP at it (creating the
    /// VIP).
    PublishVip {
        key: VipId,
        index: u32,
        flags: u32,
        ring_size: u32,
        backends: Vec<WeightedBackend>,
    },
    /// Change only the flags of a VIP whose ring is unchanged (source ranges, session
    /// affinity turned on or off).
    SetVipFlags {
        key: VipId,
        flags: u32,
    },
    AddSourceRange {
        vip_index: u32,
        range: ipnet::IpNet,
    },
    RemoveVip {
        key: VipId,
    },
    /// Evict the connection-table entries of the VIP's flows that name `backend`: the
    /// backend left this VIP but still serves another, so its id stays valid.
    EvictVipFlows {
        key: VipId,
        backend: u32,
    },
    RemoveSourceRange {
        vip_index: u32,
        range: ipnet::IpNet,
    },
    /// Evict every connection-table entry naming `id` (before the id is reused).
    EvictBackendFlows {
        id: u32,
    },
    RemoveServerId {
        vip_index: u32,
        config_id: u8,
        server_id: Vec<u8>,
    },
    ClearQuicConfig {
        vip_index: u32,
        config_id: u8,
    },
    ClearBackend {
        id: u32,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::SetBackend { id, addr, port } => {
                write!(f, "set backend {id} = {}", SocketAddr::new(*addr, *port))
            }
            Change::SetQuicConfig { vip_index, config } => {
                write!(
                    f,
                    "set QUIC-LB config {} of VIP {vip_index}",
                    config.config_id()
                )
            }
            Change::SetServerId {
                vip_index,
                config_id,
                server_id,
                backend,
            } => write!(
                f,
                "map server ID {} (config {config_id}) of VIP {vip_index} to backend {backend}",
                hex(server_id)
            ),
            Change::PublishVip {
                key,
                index,
                ring_size,
                backends,
                ..
            } => write!(
                f,
                "publish VIP {index} ({key}): {ring_size}-slot ring over {} backends",
                backends.len()
            ),
            Change::SetVipFlags { key, flags } => {
                write!(f, "set flags of VIP {key} to {flags:#x}")
            }
            Change::AddSourceRange { vip_index, range } => {
                write!(f, "allow source range {range} on VIP {vip_index}")
            }
            Change::RemoveVip { key } => write!(f, "remove VIP {key}"),
            Change::EvictVipFlows { key, backend } => {
                write!(f, "evict flows of VIP {key} to backend {backend}")
            }
            Change::RemoveSourceRange { vip_index, range } => {
                write!(f, "remove source range {range} of VIP {vip_index}")
            }
            Change::EvictBackendFlows { id } => write!(f, "evict flows to backend {id}"),
            Change::RemoveServerId {
                vip_index,
                config_id,
                server_id,
            } => write!(
                f,
                "remove server ID {} (config {config_id}) of VIP {vip_index}",
                hex(server_id)
            ),
            Change::ClearQuicConfig {
                vip_index,
                config_id,
            } => {
                write!(f, "clear QUIC-LB config {config_id} of VIP {vip_index}")
            }
            Change::ClearBackend { id } => write!(f, "clear backend {id}"),
        }
    }
}

impl Plan {
    /// The writes that take the data plane from `old` (what it holds; `Plan::default()` when
    /// empty) to `new`, ordered so no packet sees a half-updated VIP:
    ///
    /// 1. `SetBackend` for new backend ids: everything written later may name them.
    /// 2. `SetQuicConfig`, then `SetServerId`, new or changed: a VIP that turns QUIC-LB on in
    ///    step 3 finds its configs and server IDs already there; a CID that decodes to a new
    ///    server ID before its VIP exists is never looked up. Then `AddSourceRange` for new
    ///    ranges: a VIP that gains `VIP_F_SOURCE_RANGES` in step 3 already finds them (no
    ///    allowed client is dropped), and a VIP whose ranges change has the new ones before
    ///    the old ones go in step 5.
    /// 3. `PublishVip` for new VIPs and VIPs whose ring size, weighted backends or flags
    ///    changed: the new ring is written, then one map update points the VIP at it, so a packet
    ///    sees either the whole old table or the whole new one. Rings stop naming removed
    ///    backends here. When only the source-range or affinity flags changed, `SetVipFlags`
    ///    (one map update, no ring rewrite) instead.
    /// 4. `RemoveVip` for VIPs that are gone: their packets pass untouched from now on.
    /// 5. `EvictVipFlows` for backends that left a VIP but still serve another (their id
    ///    stays valid, so pinned flows would keep reaching them); `RemoveSourceRange`,
    ///    `RemoveServerId`, then `ClearQuicConfig`, for entries that are gone (a VIP that
    ///    dropped its ranges or QUIC-LB in step 3 no longer reads them).
    /// 6. Only when a number freed by this reload is reused (maps full, see [`Plan::build`]):
    ///    `EvictBackendFlows` and `SetBackend` of the reused ids (so the new backend inherits
    ///    no flow of the old one), then the configs, server IDs, source ranges and rings that
    ///    belong to a reused VIP index or name a reused backend id. Their previous users were
    ///    retired in steps 3-5, so the new entries never mix with the old ones.
    /// 7. `ClearBackend` for ids that are gone, last: by now no ring, server ID or VIP names
    ///    them; clearing also evicts the connection-table entries that still do
    ///    ([`Dataplane::clear_backend`](crate::dataplane::Dataplane::clear_backend)). Drained backends (weight 0) are still in the plan:
    ///    they keep their entry and their flows.
    pub fn diff(old: &Plan, new: &Plan) -> Vec<Change> {
        let mut d = Diff::new(old, new);
        // 1 (and 6): backends.
        d.set_backends();
        // 2: configs, then server IDs, then source ranges.
        d.set_quic_configs();
        d.set_server_ids();
        d.add_source_ranges();
        // 3: rings and flags.
        d.publish_vips();
        // 4: VIPs that are gone.
        d.remove_vips(new);
        // 5: what departed VIPs, backends and configs leave behind.
        d.evict_departed_backends();
        d.remove_source_ranges();
        d.remove_server_ids();
        d.clear_quic_configs();
        // 6 and 7.
        d.finish()
    }
}

/// A plan's entries, keyed the way [`Plan::diff`] compares them.
struct Entries<'p> {
    /// Backend id -> (address, port).
    backends: BTreeMap<u32, (IpAddr, u16)>,
    /// VIP index -> VIP.
    vips: BTreeMap<u32, &'p PlannedVip>,
    /// (VIP index, config rotation value) -> config.
    quic_configs: BTreeMap<(u32, u8), quic_lb::Config>,
    /// (VIP index, config rotation value, server ID) -> backend id.
    server_ids: BTreeMap<(u32, u8, Vec<u8>), u32>,
    /// (VIP index, allowed client prefix).
    source_ranges: BTreeSet<(u32, ipnet::IpNet)>,
}

impl<'p> Entries<'p> {
    fn of(p: &'p Plan) -> Entries<'p> {
        Entries {
            backends: p
                .backends
                .iter()
                .map(|b| (b.id, (b.addr, b.port)))
                .collect(),
            vips: p.vips.iter().map(|v| (v.index, v)).collect(),
            quic_configs: p
                .vips
                .iter()
                .flat_map(|v| v.quic.iter().map(move |c| ((v.index, c.config_id()), *c)))
                .collect(),
            server_ids: p
                .vips
                .iter()
                .flat_map(|v| {
                    v.server_ids
                        .iter()
                        .map(move |s| ((v.index, s.config_id, s.server_id.clone()), s.backend))
                })
                .collect(),
            source_ranges: p
                .vips
                .iter()
                .flat_map(|v| v.source_ranges.iter().map(move |r| (v.index, *r)))
                .collect(),
        }
    }
}

/// [`Plan::diff`] under way: the two plans' entries, the numbers the new plan reuses for
/// something else, and the writes so far.
struct Diff<'p> {
    old: Entries<'p>,
    new: Entries<'p>,
    /// Backend ids the new plan gives to another (address, port) (maps full).
    reused_ids: HashSet<u32>,
    /// VIP indexes the new plan gives to another (address, port, protocol) (maps full).
    reused_indexes: HashSet<u32>,
    /// Steps 1-5, in order.
    early: Vec<Change>,
    /// Step 6: writes that wait until the previous user of a reused number is retired.
    late: Vec<Change>,
}

impl<'p> Diff<'p> {
    fn new(old: &'p Plan, new: &'p Plan) -> Diff<'p> {
        let (old, new) = (Entries::of(old), Entries::of(new));
        let reused_ids: HashSet<u32> = new
            .backends
            .iter()
            .filter(|(id, v)| old.backends.get(id).is_some_and(|o| o != *v))
            .map(|(id, _)| *id)
            .collect();
        let reused_indexes: HashSet<u32> = new
            .vips
            .iter()
            .filter(|(i, v)| old.vips.get(i).is_some_and(|o| o.key != v.key))
            .map(|(i, _)| *i)
            .collect();
        Diff {
            old,
            new,
            reused_ids,
            reused_indexes,
            early: Vec::new(),
            late: Vec::new(),
        }
    }

    /// Steps 1 and 6: new ids are set first; a reused id is evicted and set late.
    fn set_backends(&mut self) {
        for (id, (addr, port)) in &self.new.backends {
            match self.old.backends.get(id) {
                None => self.early.push(Change::SetBackend {
                    id: *id,
                    addr: *addr,
                    port: *port,
                }),
                Some(o) if o != &(*addr, *port) => {
                    self.late.push(Change::EvictBackendFlows { id: *id });
                    self.late.push(Change::SetBackend {
                        id: *id,
                        addr: *addr,
                        port: *port,
                    });
                }
                Some(_) => {}
            }
        }
    }

    /// Step 2: new or changed QUIC-LB configs (late for a reused VIP index).
    fn set_quic_configs(&mut self) {
        for (k @ (idx, _), c) in &self.new.quic_configs {
            let change = Change::SetQuicConfig {
                vip_index: *idx,
                config: *c,
            };
            if self.reused_indexes.contains(idx) {
                self.late.push(change);
            } else if self.old.quic_configs.get(k) != Some(c) {
                self.early.push(change);
            }
        }
    }

    /// Step 2: new or changed server IDs (late for a reused VIP index or backend id).
    fn set_server_ids(&mut self) {
        for (k @ (idx, cfg, sid), be) in &self.new.server_ids {
            let change = Change::SetServerId {
                vip_index: *idx,
                config_id: *cfg,
                server_id: sid.clone(),
                backend: *be,
            };
            if self.reused_indexes.contains(idx) || self.reused_ids.contains(be) {
                self.late.push(change);
            } else if self.old.server_ids.get(k) != Some(be) {
                self.early.push(change);
            }
        }
    }

    /// Step 2, after the rest of it (nothing there depends on them): new source ranges
    /// (late for a reused VIP index).
    fn add_source_ranges(&mut self) {
        for r @ (idx, range) in &self.new.source_ranges {
            let change = Change::AddSourceRange {
                vip_index: *idx,
                range: *range,
            };
            if self.reused_indexes.contains(idx) {
                self.late.push(change);
            } else if !self.old.source_ranges.contains(r) {
                self.early.push(change);
            }
        }
    }

    /// Step 3: publish each new or changed ring (late for a reused VIP index or when the
    /// ring names a reused backend id); only flip the flags when just the source-range or
    /// affinity flags changed.
    fn publish_vips(&mut self) {
        const FLAGS_ONLY: u32 = VIP_F_SOURCE_RANGES | VIP_F_AFFINITY_CLIENT_IP;
        for (idx, v) in &self.new.vips {
            let ring = v.ring_backends();
            let old = self.old.vips.get(idx);
            let changed = match old {
                None => true,
                Some(o) => {
                    o.key != v.key
                        || o.ring_size != v.ring_size
                        || o.ring_backends() != ring
                        || (o.flags ^ v.flags) & !FLAGS_ONLY != 0
                }
            };
            if !changed {
                if old.is_some_and(|o| o.flags != v.flags) {
                    self.early.push(Change::SetVipFlags {
                        key: v.key,
                        flags: v.flags,
                    });
                }
                continue;
            }
            let is_late = self.reused_indexes.contains(idx)
                || ring.iter().any(|b| self.reused_ids.contains(&b.id));
            let change = Change::PublishVip {
                key: v.key,
                index: *idx,
                flags: v.flags,
                ring_size: v.ring_size,
                backends: ring,
            };
            if is_late {
                self.late.push(change);
            } else {
                self.early.push(change);
            }
        }
    }

    /// Step 4: remove the old VIPs whose (address, port, protocol) is not in `new`.
    fn remove_vips(&mut self, new: &Plan) {
        let new_keys: HashSet<VipId> = new.vips.iter().map(|v| v.key).collect();
        for v in self.old.vips.values() {
            if !new_keys.contains(&v.key) {
                self.early.push(Change::RemoveVip { key: v.key });
            }
        }
    }

    /// Step 5: evict the flows of backends that left a VIP but stay in use elsewhere (a
    /// backend that is gone altogether is evicted by `ClearBackend` in step 7).
    fn evict_departed_backends(&mut self) {
        for (idx, v) in &self.new.vips {
            let Some(o) = self.old.vips.get(idx).filter(|o| o.key == v.key) else {
                continue;
            };
            for b in &o.backends {
                if self.new.backends.get(&b.id) == Some(&(b.addr, b.port))
                    && !self.reused_ids.contains(&b.id)
                    && !v.backends.iter().any(|n| n.id == b.id)
                {
                    self.early.push(Change::EvictVipFlows {
                        key: v.key,
                        backend: b.id,
                    });
                }
            }
        }
    }

    /// Step 5: remove the source ranges that are gone (or belong to a reused index).
    fn remove_source_ranges(&mut self) {
        for r @ (idx, range) in &self.old.source_ranges {
            if self.reused_indexes.contains(idx) || !self.new.source_ranges.contains(r) {
                self.early.push(Change::RemoveSourceRange {
                    vip_index: *idx,
                    range: *range,
                });
            }
        }
    }

    /// Step 5: remove the server IDs that are gone (or belong to a reused index).
    fn remove_server_ids(&mut self) {
        for (idx, cfg, sid) in self.old.server_ids.keys() {
            if self.reused_indexes.contains(idx)
                || !self.new.server_ids.contains_key(&(*idx, *cfg, sid.clone()))
            {
                self.early.push(Change::RemoveServerId {
                    vip_index: *idx,
                    config_id: *cfg,
                    server_id: sid.clone(),
                });
            }
        }
    }

    /// Step 5, after the server IDs that decode under them: clear the QUIC-LB configs that
    /// are gone (or belong to a reused index).
    fn clear_quic_configs(&mut self) {
        for (idx, cfg) in self.old.quic_configs.keys() {
            if self.reused_indexes.contains(idx)
                || !self.new.quic_configs.contains_key(&(*idx, *cfg))
            {
                self.early.push(Change::ClearQuicConfig {
                    vip_index: *idx,
                    config_id: *cfg,
                });
            }
        }
    }

    /// Step 6, everything that waited for a reused number, then step 7: clear the backends
    /// that are gone.
    fn finish(mut self) -> Vec<Change> {
        self.early.append(&mut self.late);
        for id in self.old.backends.keys() {
            if !self.new.backends.contains_key(id) {
                self.early.push(Change::ClearBackend { id: *id });
            }
        }
        self.early
    }
}
