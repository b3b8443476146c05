//! [`Plan::replace_vips`]: the plan after some VIPs' entries change, without planning the
//! others again. A Kubernetes EndpointSlice change touches the two VIPs of one Service; a
//! full [`Plan::build`] and [`Plan::diff`] of a 20,000-VIP cluster for it took most of a
//! second (every VIP planned and compared, every backend keyed). This plans only the changed
//! VIPs and diffs them against what they were, with the backends they name, so the writes
//! are the ones a full build and diff would give (the tests check exactly that), and the
//! work grows with the change, not with the cluster: no map of every VIP or backend is
//! built (the VIPs are found by binary search when the plan is sorted by key, as a
//! Kubernetes plan is; the backends are sorted by id).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use super::{BackendEntry, BackendIds, Plan, PlannedVip, VipId, planned_vip};
use crate::config::{Change, VipConfig};

/// The changed VIPs of a plan, planned: [`VipUpdate::changes`] are the writes, and
/// [`VipUpdate::commit`] makes the plan the new one once they are applied.
#[derive(Debug)]
pub struct VipUpdate {
    /// The changed VIPs as they were, with the backends they named or name now.
    old: Plan,
    /// The changed VIPs as they are now, with the same backends as they are now.
    new: Plan,
    /// Where each of `new.vips` goes in the plan's `vips`.
    slots: Vec<usize>,
    /// Where each update (in the caller's order) goes in the plan's `vips`.
    positions: Vec<usize>,
    /// Backend ids no VIP names any more, and backends new to the plan.
    departed: Vec<u32>,
    added: Vec<BackendEntry>,
}

impl VipUpdate {
    /// The ordered writes (those of [`Plan::diff`] for the whole plans).
    pub fn changes(&self) -> Vec<Change> {
        Plan::diff(&self.old, &self.new)
    }

    /// The position in the plan's `vips` of each update, in the order they were given.
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    /// Make `plan` (the one this update was made from) the new plan.
    pub fn commit(self, plan: &mut Plan) {
        for (v, i) in self.new.vips.into_iter().zip(self.slots) {
            plan.vips[i] = v;
        }
        if !self.departed.is_empty() {
            plan.backends.retain(|b| !self.departed.contains(&b.id));
        }
        for b in self.added {
            let at = plan.backends.partition_point(|o| o < &b);
            plan.backends.insert(at, b);
        }
    }
}

impl Plan {
    /// Plan `updates`, each the new entry of one VIP the plan has (one address, port and
    /// protocol), keeping every other VIP as it is: its index and the ids of its backends
    /// are kept, a new backend gets the lowest id no backend of this plan has, and a
    /// backend no VIP names any more is cleared. `backend_limit` is `[capacity] backends`.
    ///
    /// Refused (the caller then plans the whole config with [`Plan::build`]) when an
    /// update names a VIP the plan does not have or more than one port or protocol, names
    /// one VIP twice, or when a new backend would need an id freed by this very update
    /// (the map is full: [`Plan::diff`]'s reuse ordering needs the whole plan).
    pub fn replace_vips(
        &self,
        updates: &[VipConfig],
        backend_limit: u32,
    ) -> Result<VipUpdate, String> {
        let find = self.vip_finder();
        let mut targets: Vec<(usize, VipId, &VipConfig)> = Vec::with_capacity(updates.len());
        for v in updates {
            let ([port], [proto]) = (v.ports.as_slice(), v.protocols.as_slice()) else {
                return Err(format!(
                    "VIP {} has {} ports and {} protocols; an update replaces one VIP",
                    v.addr,
                    v.ports.len(),
                    v.protocols.len()
                ));
            };
            let key = VipId {
                addr: v.addr,
                port: *port,
                proto: *proto,
            };
            let Some(i) = find(&key) else {
                return Err(format!("VIP {key} is not in the plan in force"));
            };
            targets.push((i, key, v));
        }
        let positions: Vec<usize> = targets.iter().map(|(i, _, _)| *i).collect();
        // In plan order, so new backends are numbered as a whole build would number them.
        targets.sort_by_key(|(i, _, _)| *i);
        if targets.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err("an update names one VIP twice".into());
        }

        // Ids: from the changed VIPs themselves, else from the plan, else new.
        let mut ids: BackendIds = targets
            .iter()
            .flat_map(|(i, _, _)| self.vips[*i].backends.iter())
            .map(|b| ((b.addr, b.port), b.id))
            .collect();
        let mut unknown: Vec<(IpAddr, u16)> = Vec::new();
        for b in targets.iter().flat_map(|(_, _, v)| &v.backends) {
            let k = (b.addr, b.port);
            if !ids.contains_key(&k) && !unknown.contains(&k) {
                unknown.push(k);
            }
        }
        if !unknown.is_empty() {
            let wanted: HashSet<(IpAddr, u16)> = unknown.iter().copied().collect();
            for b in self
                .backends
                .iter()
                .filter(|b| wanted.contains(&(b.addr, b.port)))
            {
                ids.insert((b.addr, b.port), b.id);
            }
            unknown.retain(|k| !ids.contains_key(k));
        }
        let fresh = self.lowest_unused_backend_ids(unknown.len(), backend_limit)?;
        let added: Vec<BackendEntry> = unknown
            .iter()
            .zip(fresh)
            .map(|((addr, port), id)| BackendEntry {
                id,
                addr: *addr,
                port: *port,
            })
            .collect();
        ids.extend(added.iter().map(|b| ((b.addr, b.port), b.id)));

        let old_vips: Vec<PlannedVip> = targets
            .iter()
            .map(|(i, _, _)| self.vips[*i].clone())
            .collect();
        let new_vips: Vec<PlannedVip> = targets
            .iter()
            .map(|(i, key, v)| planned_vip(v, *key, self.vips[*i].index, &ids))
            .collect();

        // Backends that left a changed VIP: gone unless some other VIP still names them.
        let named_now: HashSet<u32> = new_vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.id))
            .collect();
        let named_before: HashSet<u32> = old_vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.id))
            .collect();
        let mut departed: Vec<u32> = named_before.difference(&named_now).copied().collect();
        if !departed.is_empty() {
            let mut changed = vec![false; self.vips.len()];
            for (i, _, _) in &targets {
                changed[*i] = true;
            }
            for (v, _) in self.vips.iter().zip(&changed).filter(|(_, c)| !**c) {
                departed.retain(|id| !v.backends.iter().any(|b| b.id == *id));
                if departed.is_empty() {
                    break;
                }
            }
        }
        departed.sort_unstable();

        // The backends the diff needs: those the changed VIPs named or name.
        let mut relevant: Vec<u32> = named_before.union(&named_now).copied().collect();
        relevant.sort_unstable();
        let old_backends: Vec<BackendEntry> = relevant
            .iter()
            .filter_map(|id| {
                let at = self.backends.binary_search_by_key(id, |b| b.id).ok()?;
                Some(self.backends[at])
            })
            .collect();
        let mut new_backends: Vec<BackendEntry> = old_backends
            .iter()
            .filter(|b| departed.binary_search(&b.id).is_err())
            .copied()
            .chain(added.iter().copied())
            .collect();
        new_backends.sort();

        let slots = targets.iter().map(|(i, _, _)| *i).collect();
        Ok(VipUpdate {
            old: Plan {
                vips: old_vips,
                backends: old_backends,
                ..Plan::default()
            },
            new: Plan {
                vips: new_vips,
                backends: new_backends,
                ..Plan::default()
            },
            slots,
            positions,
            departed,
            added,
        })
    }

    /// Finds a VIP's position: by binary search when the VIPs are sorted by key (a
    /// Kubernetes plan is), else through an index made once.
    fn vip_finder(&self) -> impl Fn(&VipId) -> Option<usize> + '_ {
        let sorted = self.vips.windows(2).all(|w| w[0].key < w[1].key);
        let index: HashMap<VipId, usize> = if sorted {
            HashMap::new()
        } else {
            self.vips
                .iter()
                .enumerate()
                .map(|(i, v)| (v.key, i))
                .collect()
        };
        move |key| {
            if sorted {
                self.vips.binary_search_by(|v| v.key.cmp(key)).ok()
            } else {
                index.get(key).copied()
            }
        }
    }

    /// The `n` lowest backend ids below `limit` that no backend of this plan has (the
    /// backends are sorted by id).
    fn lowest_unused_backend_ids(&self, n: usize, limit: u32) -> Result<Vec<u32>, String> {
        let mut out = Vec::with_capacity(n);
        let mut candidate = 0u32;
        let mut used = self.backends.iter().map(|b| b.id).peekable();
        while out.len() < n && candidate < limit {
            match used.peek() {
                Some(&u) if u == candidate => {
                    used.next();
                    candidate += 1;
                }
                Some(&u) if u < candidate => {
                    used.next();
                }
                _ => {
                    out.push(candidate);
                    candidate += 1;
                }
            }
        }
        if out.len() < n {
            return Err(format!(
                "no backend id free below {limit} without reusing one"
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! Every update is checked against the whole-plan path it replaces: the same writes as
    //! [`Plan::diff`] of [`Plan::build`], and the same plan afterwards.

    use std::net::{IpAddr, Ipv4Addr};

    use lb_common::quic_lb;

    use crate::config::{
        BackendConfig, Config, Plan, Protocol, SessionAffinity, VipConfig, tests::parse,
    };

    /// A small deterministic generator (xorshift), so a failure replays.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn vip(n: u8, proto: Protocol, quic: bool, backends: Vec<BackendConfig>) -> VipConfig {
        let quic_lb = if quic {
            vec![quic_lb::Config::new(0, 2, 6, None, true).unwrap()]
        } else {
            Vec::new()
        };
        VipConfig {
            name: Some(format!("svc-{n}")),
            addr: IpAddr::V4(Ipv4Addr::new(198, 18, 1, n)),
            ports: vec![443],
            protocols: vec![proto],
            quic,
            quic_lb,
            maglev_table_size: 0,
            learned_cid_len: 0,
            session_affinity: SessionAffinity::None,
            source_ranges: Vec::new(),
            backends,
        }
    }

    /// Up to five backends from a pool of 24 addresses (so VIPs share some), some drained,
    /// with server IDs for QUIC-LB VIPs.
    fn backends(rng: &mut Rng, quic: bool) -> Vec<BackendConfig> {
        let mut out: Vec<BackendConfig> = Vec::new();
        for _ in 0..rng.below(6) {
            let d = rng.below(24) as u8 + 1;
            let addr = IpAddr::V4(Ipv4Addr::new(198, 19, 0, d));
            if out.iter().any(|b| b.addr == addr) {
                continue;
            }
            out.push(BackendConfig {
                addr,
                port: 8443,
                weight: if rng.below(5) == 0 { 0 } else { 1 },
                server_ids: if quic {
                    vec![(0, vec![0, d])]
                } else {
                    Vec::new()
                },
            });
        }
        out
    }

    fn base() -> Config {
        parse("interfaces = [\"eth0\"]\n").unwrap()
    }

    #[test]
    fn an_update_writes_what_a_whole_build_and_diff_write() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let mut config = base();
            for n in 1..=12u8 {
                for (proto, quic) in [(Protocol::Tcp, false), (Protocol::Udp, n % 3 == 0)] {
                    config
                        .vips
                        .push(vip(n, proto, quic, backends(&mut rng, quic)));
                }
            }
            // Every other round out of key order: the VIPs are then found by an index,
            // not by binary search.
            if round % 2 == 1 {
                config.vips.reverse();
            }
            let mut plan = Plan::build(&config, None).unwrap();
            // A few updates in a row, each from the plan the last one left.
            for step in 0..4 {
                let mut next = config.clone();
                let mut updates = Vec::new();
                for i in 0..next.vips.len() {
                    if rng.below(4) == 0 {
                        let quic = next.vips[i].quic;
                        next.vips[i].backends = backends(&mut rng, quic);
                        updates.push(next.vips[i].clone());
                    }
                }
                let whole = Plan::build(&next, Some(&plan)).unwrap();
                let update = plan
                    .replace_vips(&updates, config.capacity.backends)
                    .unwrap_or_else(|e| panic!("round {round} step {step}: {e}"));
                assert_eq!(
                    update.changes(),
                    Plan::diff(&plan, &whole),
                    "round {round} step {step}"
                );
                update.commit(&mut plan);
                assert_eq!(plan, whole, "round {round} step {step}");
                config = next;
            }
        }
    }

    #[test]
    fn an_update_outside_the_plan_is_refused_and_names_the_vip() {
        let mut config = base();
        config.vips.push(vip(1, Protocol::Tcp, false, Vec::new()));
        let plan = Plan::build(&config, None).unwrap();
        let stranger = vip(2, Protocol::Tcp, false, Vec::new());
        assert_eq!(
            plan.replace_vips(&[stranger], 16).unwrap_err(),
            "VIP tcp 198.18.1.2:443 is not in the plan in force"
        );
        let mut two_ports = vip(1, Protocol::Tcp, false, Vec::new());
        two_ports.ports.push(80);
        assert!(
            plan.replace_vips(&[two_ports], 16)
                .unwrap_err()
                .contains("has 2 ports and 1 protocols")
        );
        let same = vip(1, Protocol::Tcp, false, Vec::new());
        assert_eq!(
            plan.replace_vips(&[same.clone(), same], 16).unwrap_err(),
            "an update names one VIP twice"
        );
    }

    #[test]
    fn a_new_backend_that_would_reuse_a_freed_id_is_left_to_a_whole_build() {
        let be = |d: u8| BackendConfig {
            addr: IpAddr::V4(Ipv4Addr::new(198, 19, 0, d)),
            port: 8443,
            weight: 1,
            server_ids: Vec::new(),
        };
        let mut config = base();
        config
            .vips
            .push(vip(1, Protocol::Tcp, false, vec![be(1), be(2)]));
        let plan = Plan::build(&config, None).unwrap();
        // Two ids in a map of two: the third backend could only take the id be(2) frees.
        let update = vip(1, Protocol::Tcp, false, vec![be(1), be(3)]);
        assert_eq!(
            plan.replace_vips(std::slice::from_ref(&update), 2)
                .unwrap_err(),
            "no backend id free below 2 without reusing one"
        );
        assert!(plan.replace_vips(&[update], 3).is_ok());
    }
}
