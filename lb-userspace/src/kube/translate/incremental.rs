//! [`Translation`]: what a full [`translate`](super::translate) decided per Service, and
//! [`Translation::update`], which translates the Services whose EndpointSlices changed
//! alone, when that provably gives what a full translation would.
//!
//! Why: a full translation of 10,000 Services, with the plan and diff of 20,000 VIPs
//! after it, took most of a second per EndpointSlice change (the control-plane bench's
//! p50 was 600 ms on one node). Endpoints are what changes most in a cluster, and they
//! change one Service's backends and nothing else, except in the cases below, where
//! [`Translation::update`] declines and the caller translates everything:
//!
//! - the Service was not translated last time, or gave no VIPs (it was rejected);
//! - its VIPs (address, port, protocol) differ: they come from the Service's status and
//!   ports, so that only happens when the Service changed too;
//! - its problems differ from the last full translation's for it; this includes every
//!   problem that involves other Services (a port conflict, a full data plane, a mixed
//!   traffic policy), which this path cannot judge and so never reproduces;
//! - it has `externalTrafficPolicy: Local` and the nodes with a ready endpoint changed
//!   (they decide which nodes announce the address);
//! - some Service was left out for a full data plane (a change may let it in), or the new
//!   backends would take the data plane past a `[capacity]` limit.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{
    ClusterView, Problem, ServiceKey, ServiceOut, UseCounts, order_problems, service_key,
    translate_service,
};
use crate::config::{Protocol, VipConfig};

/// A data-plane VIP: (address, port, protocol).
type VipId = (IpAddr, u16, Protocol);

/// A backend as the data plane keys it: (address, port).
type BackendKey = (IpAddr, u16);

/// What the last translation decided per Service, and what its VIPs take of the data
/// plane.
#[derive(Debug, Default)]
pub struct Translation {
    services: BTreeMap<ServiceKey, Kept>,
    /// The served VIPs' use of the maps, backends excluded (`largest_ring` only grows until
    /// the next full translation: an upper bound).
    counts: UseCounts,
    /// Distinct backend -> how many Services name it.
    backend_refs: HashMap<BackendKey, u32>,
    /// A Service was left out because the data plane is full.
    capacity_problem: bool,
}

/// One Service as last translated.
#[derive(Debug)]
struct Kept {
    /// Its served VIPs, sorted.
    vips: Vec<VipId>,
    /// Its problems, as [`super::Desired::problems`] lists them.
    problems: Vec<Problem>,
    local: bool,
    /// Nodes with a ready endpoint per address (`externalTrafficPolicy: Local` only).
    ready_nodes: BTreeMap<IpAddr, BTreeSet<String>>,
    counts: UseCounts,
    backends: BTreeSet<BackendKey>,
}

fn vip_ids(vips: &[VipConfig]) -> Vec<VipId> {
    let mut ids: Vec<VipId> = vips
        .iter()
        .map(|v| (v.addr, v.ports[0], v.protocols[0]))
        .collect();
    ids.sort();
    ids
}

fn counts_of(vips: &[VipConfig]) -> UseCounts {
    let mut c = UseCounts::default();
    for v in vips {
        c.add(v);
    }
    c
}

fn backends_of(vips: &[VipConfig]) -> BTreeSet<BackendKey> {
    vips.iter()
        .flat_map(|v| v.backends.iter().map(|b| (b.addr, b.port)))
        .collect()
}

impl Translation {
    /// The record of a full translation: `outs` after conflicts and capacity, `problems`
    /// ordered.
    pub(super) fn of(outs: &[ServiceOut], problems: &[Problem]) -> Translation {
        let mut by_service: BTreeMap<&ServiceKey, Vec<Problem>> = BTreeMap::new();
        for p in problems {
            by_service.entry(&p.service).or_default().push(p.clone());
        }
        let mut t = Translation {
            capacity_problem: problems.iter().any(|p| p.reason == "DataPlaneFull"),
            ..Translation::default()
        };
        for out in outs {
            let kept = Kept {
                vips: vip_ids(&out.vips),
                problems: by_service.remove(&out.key).unwrap_or_default(),
                local: out.local,
                ready_nodes: if out.local {
                    out.ready_nodes.clone()
                } else {
                    BTreeMap::new()
                },
                counts: counts_of(&out.vips),
                backends: backends_of(&out.vips),
            };
            t.counts.plus(&kept.counts);
            for b in &kept.backends {
                *t.backend_refs.entry(*b).or_default() += 1;
            }
            t.services.insert(out.key.clone(), kept);
        }
        t
    }

    /// The VIPs of `changed` (each a Service with all of its EndpointSlices now), translated
    /// alone, or `None` when that might differ from a full translation (see the module
    /// doc): then nothing is recorded and the caller translates everything. `view`
    /// supplies the node, the capacity and the lookups; its `services` and `slices` are
    /// not read.
    pub fn update(
        &mut self,
        view: &ClusterView,
        changed: &[(&Service, Vec<&EndpointSlice>)],
    ) -> Option<Vec<VipConfig>> {
        if self.capacity_problem {
            return None;
        }
        let mut outs: Vec<(ServiceKey, Kept, Vec<VipConfig>)> = Vec::with_capacity(changed.len());
        for (svc, slices) in changed {
            let key = service_key(svc);
            let before = self.services.get(&key)?;
            if outs.iter().any(|(k, _, _)| *k == key) {
                return None;
            }
            let mut problems = Vec::new();
            let out = translate_service(view, slices, svc, &mut problems)?;
            let problems = order_problems(problems);
            let vips = vip_ids(&out.vips);
            if problems != before.problems
                || vips != before.vips
                || out.local != before.local
                || (out.local && out.ready_nodes != before.ready_nodes)
            {
                return None;
            }
            let kept = Kept {
                vips,
                problems,
                local: out.local,
                ready_nodes: if out.local {
                    out.ready_nodes
                } else {
                    BTreeMap::new()
                },
                counts: counts_of(&out.vips),
                backends: backends_of(&out.vips),
            };
            outs.push((key, kept, out.vips));
        }

        // The data plane's use after the change: it must stay within every limit, or a
        // full translation decides which Services are left out.
        let mut counts = self.counts;
        let mut delta: HashMap<BackendKey, i64> = HashMap::new();
        for (key, kept, _) in &outs {
            let before = &self.services[key];
            counts.minus(&before.counts);
            counts.plus(&kept.counts);
            for b in &before.backends {
                *delta.entry(*b).or_default() -= 1;
            }
            for b in &kept.backends {
                *delta.entry(*b).or_default() += 1;
            }
        }
        let mut distinct = self.backend_refs.len() as i64;
        for (b, d) in &delta {
            let refs = i64::from(self.backend_refs.get(b).copied().unwrap_or(0));
            match (refs > 0, refs + d > 0) {
                (false, true) => distinct += 1,
                (true, false) => distinct -= 1,
                _ => {}
            }
        }
        counts.backends = distinct as u64;
        if counts.over(view.capacity).is_some() {
            return None;
        }

        for (b, d) in delta {
            let refs = i64::from(self.backend_refs.get(&b).copied().unwrap_or(0)) + d;
            if refs > 0 {
                self.backend_refs.insert(b, refs as u32);
            } else {
                self.backend_refs.remove(&b);
            }
        }
        self.counts = counts;
        let mut vips = Vec::new();
        for (key, kept, v) in outs {
            self.services.insert(key, kept);
            vips.extend(v);
        }
        Some(vips)
    }
}
