//! [`Plan::replace_vips`]: the plan after some VIPs' entries change, without planning the
//! others again. A Kubernetes EndpointSlice change touches the two VIPs of one Service; a
//! full [`Plan::build`] and [`Plan::diff`] of a 20,000-VIP cluster for it took most of a
//! second (every VIP planned and compared, every backend keyed). This plans only the changed
//! VIPs and diffs them against what they were, with the whole backend list, so the writes
//! are the ones a full build and diff would give (the tests check exactly that).

use std::collections::{HashMap, HashSet};

use super::{Allocator, BackendEntry, BackendIds, Plan, PlannedVip, VipId, planned_vip};
use crate::config::{Change, VipConfig};

/// The changed VIPs of a plan, planned: [`VipUpdate::changes`] are the writes, and
/// [`VipUpdate::commit`] makes the plan the new one once they are applied.
#[derive(Debug)]
pub struct VipUpdate {
    /// The changed VIPs as they were, with every backend of the plan in force.
    old: Plan,
    /// The changed VIPs as they are now, with every backend of the new plan.
    new: Plan,
    /// Where each of `new.vips` goes in the plan's `vips`.
    positions: Vec<usize>,
}

impl VipUpdate {
    /// The ordered writes (those of [`Plan::diff`] for the whole plans).
    pub fn changes(&self) -> Vec<Change> {
        Plan::diff(&self.old, &self.new)
    }

    /// Make `plan` (the one this update was made from) the new plan.
    pub fn commit(self, plan: &mut Plan) {
        for (v, i) in self.new.vips.into_iter().zip(self.positions) {
            plan.vips[i] = v;
        }
        plan.backends = self.new.backends;
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
        let position: HashMap<VipId, usize> = self
            .vips
            .iter()
            .enumerate()
            .map(|(i, v)| (v.key, i))
            .collect();
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
            let Some(&i) = position.get(&key) else {
                return Err(format!("VIP {key} is not in the plan in force"));
            };
            targets.push((i, key, v));
        }
        // In plan order, so new backends are numbered as a whole build would number them.
        targets.sort_by_key(|(i, _, _)| *i);
        if targets.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err("an update names one VIP twice".into());
        }

        let mut ids: BackendIds = self
            .backends
            .iter()
            .map(|b| ((b.addr, b.port), b.id))
            .collect();
        let in_use: HashSet<u32> = self.backends.iter().map(|b| b.id).collect();
        // Every id of this plan is taken: a new backend never takes the id of one that
        // this update frees (that needs the whole plan's diff; see `Plan::diff`, step 6).
        let mut free = Allocator::new(backend_limit, in_use.clone(), &in_use);
        let mut added: Vec<BackendEntry> = Vec::new();
        for b in targets.iter().flat_map(|(_, _, v)| &v.backends) {
            let k = (b.addr, b.port);
            if ids.contains_key(&k) {
                continue;
            }
            let id = free
                .allocate()
                .filter(|id| !in_use.contains(id))
                .ok_or_else(|| {
                    format!("no backend id free below {backend_limit} without reusing one")
                })?;
            ids.insert(k, id);
            added.push(BackendEntry {
                id,
                addr: b.addr,
                port: b.port,
            });
        }

        let old_vips: Vec<PlannedVip> = targets
            .iter()
            .map(|(i, _, _)| self.vips[*i].clone())
            .collect();
        let new_vips: Vec<PlannedVip> = targets
            .iter()
            .map(|(i, key, v)| planned_vip(v, *key, self.vips[*i].index, &ids))
            .collect();

        // Backends that left a changed VIP: gone unless some VIP still names them.
        let kept_by_changed: HashSet<u32> = new_vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.id))
            .collect();
        let mut departed: HashSet<u32> = old_vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.id))
            .filter(|id| !kept_by_changed.contains(id))
            .collect();
        if !departed.is_empty() {
            let changed: HashSet<usize> = targets.iter().map(|(i, _, _)| *i).collect();
            for (_, v) in self
                .vips
                .iter()
                .enumerate()
                .filter(|(i, _)| !changed.contains(i))
            {
                for b in &v.backends {
                    departed.remove(&b.id);
                }
                if departed.is_empty() {
                    break;
                }
            }
        }
        let mut backends: Vec<BackendEntry> = self
            .backends
            .iter()
            .filter(|b| !departed.contains(&b.id))
            .copied()
            .chain(added)
            .collect();
        backends.sort();

        let positions = targets.iter().map(|(i, _, _)| *i).collect();
        Ok(VipUpdate {
            old: Plan {
                vips: old_vips,
                backends: self.backends.clone(),
                ..Plan::default()
            },
            new: Plan {
                vips: new_vips,
                backends,
                ..Plan::default()
            },
            positions,
        })
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
