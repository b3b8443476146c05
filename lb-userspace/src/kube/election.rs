//! Which node announces each VIP, and which node writes Service status.
//!
//! Every node's daemon renews one heartbeat Lease, `lb-node-<node name>`, in the lease
//! namespace. There is no Lease per VIP: each node computes the same answer from the same
//! inputs, so API load grows with the number of nodes, not Services.
//!
//! - **Alive:** see [`super::liveness`]: a node whose Lease is valid (timed by this
//!   daemon's own monotonic clock from the moment it observed the renewal, as the node
//!   lifecycle controller does, so clock skew between nodes does not matter; a Lease found
//!   at start-up counts from its `renewTime`) and that gossip does not report down.
//! - **Eligible** for a VIP: alive, its Node is Ready, not cordoned (`spec.unschedulable`),
//!   not labelled `node.kubernetes.io/exclude-from-external-load-balancers`, and for
//!   `externalTrafficPolicy: Local` it hosts a ready endpoint of the Service.
//! - **Winner:** the eligible node with the highest rank, `SHA-256(node name, 0, VIP)`; ties
//!   (never in practice) go to the smaller name. Rankings are independent per VIP, so VIPs
//!   spread over nodes, and when a node dies only its VIPs move.
//! - **Status writer:** the alive node ranked first for the fixed key `status-writer`
//!   allocates addresses and writes Service status; the others only read it.
//! - **API server lost:** see [`super::membership`]: Leases are judged as last seen and
//!   gossip alone decides who died, so an outage moves no VIP. Without gossip (it could
//!   not start) a daemon that lost the API server keeps announcing what it announced and
//!   judges nobody. Two nodes may then answer ARP for one VIP; both route every
//!   connection the same way (connection IDs and Maglev), so the client is served by
//!   whichever it reaches.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node};

/// Prefix of every node's heartbeat Lease name.
pub const LEASE_PREFIX: &str = "lb-node-";
/// Label on lb's Leases, so the watch sees only them.
pub const LEASE_LABEL: &str = "lb.dev/node-heartbeat";
/// Label that takes a node out of load balancing (Kubernetes' well-known label).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The Lease name of `node`.
pub fn lease_name(node: &str) -> String {
    format!("{LEASE_PREFIX}{node}")
}

/// Rank of `node` for `key` (a VIP's address octets, or a fixed role name).
pub fn rank(node: &str, key: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(node.as_bytes());
    // The separator keeps ("ab", "c") and ("a", "bc") apart.
    ctx.update(&[0]);
    ctx.update(key);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn ip_octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The node among `candidates` that ranks first for `key`.
pub fn winner<'a>(key: &[u8], candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|n| (rank(n, key), std::cmp::Reverse(n)))
        .max()
        .map(|(_, std::cmp::Reverse(n))| n)
}

/// The node that announces `vip` among `candidates`.
pub fn vip_winner<'a>(
    vip: IpAddr,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    winner(&ip_octets(vip), candidates)
}

/// Key of the status-writer role.
pub const STATUS_WRITER_KEY: &[u8] = b"status-writer";

/// Whether a Node may carry VIPs: Ready, schedulable, not excluded.
pub fn node_eligible(node: &Node) -> bool {
    let excluded = node
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(EXCLUDE_LABEL));
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ready && !cordoned && !excluded
}

/// What this daemon has observed of every node's heartbeat Lease.
#[derive(Debug, Default)]
pub struct Liveness {
    /// Lease holder → (the renewTime last seen, when this daemon saw it change).
    seen: BTreeMap<String, (String, Instant)>,
}

impl Liveness {
    /// Record the Leases as they are now (call after every change of the Lease store).
    pub fn observe(&mut self, leases: &[Lease], now: Instant) {
        let mut live = BTreeSet::new();
        for l in leases {
            let Some(spec) = &l.spec else { continue };
            let Some(holder) = &spec.holder_identity else {
                continue;
            };
            let Some(renew) = &spec.renew_time else {
                continue;
            };
            live.insert(holder.clone());
            let stamp = renew.0.to_string();
            match self.seen.get(holder) {
                Some((s, _)) if *s == stamp => {}
                Some(_) => {
                    self.seen.insert(holder.clone(), (stamp, now));
                }
                None => {
                    // First sight: trust the writer's clock once, so a long-dead node's
                    // Lease found at start-up is not taken for fresh.
                    let age = k8s_openapi::jiff::Timestamp::now()
                        .duration_since(renew.0)
                        .try_into()
                        .unwrap_or(Duration::ZERO);
                    let at = now.checked_sub(age).unwrap_or(now);
                    self.seen.insert(holder.clone(), (stamp, at));
                }
            }
        }
        self.seen.retain(|h, _| live.contains(h));
    }

    /// Nodes whose Lease was renewed within `duration` of `now`.
    pub fn alive(&self, duration: Duration, now: Instant) -> BTreeSet<String> {
        self.seen
            .iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) < duration)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Time every Lease from `now`, as if just renewed: after this daemon could not see
    /// renewals (an API outage), the others had no way to renew either, so their Leases
    /// get a full duration from the moment this daemon sees again (as the node lifecycle
    /// controller waits after its own outage). Deaths meanwhile are gossip's to see.
    pub fn restart_clocks(&mut self, now: Instant) {
        for (_, at) in self.seen.values_mut() {
            *at = now;
        }
    }

    /// When this daemon last saw `node`'s Lease renewed.
    pub fn seen_at(&self, node: &str) -> Option<Instant> {
        self.seen.get(node).map(|(_, at)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::{
            coordination::v1::LeaseSpec,
            core::v1::{NodeCondition, NodeSpec, NodeStatus},
        },
        apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
        jiff::{SignedDuration, Timestamp},
    };

    fn node(name: &str, ready: bool, unschedulable: bool, excluded: bool) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: excluded.then(|| [(EXCLUDE_LABEL.to_owned(), String::new())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                unschedulable: Some(unschedulable),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn lease(holder: &str, renewed: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(lease_name(holder)),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(renewed)),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn eligibility_needs_ready_schedulable_not_excluded() {
        assert!(node_eligible(&node("a", true, false, false)));
        assert!(!node_eligible(&node("a", false, false, false)));
        assert!(!node_eligible(&node("a", true, true, false)));
        assert!(!node_eligible(&node("a", true, false, true)));
        assert!(!node_eligible(&Node::default()));
    }

    #[test]
    fn winner_is_order_independent_and_spreads_vips() {
        let nodes = ["node-a", "node-b", "node-c"];
        let mut per_node = BTreeMap::new();
        for i in 0..300u32 {
            let vip = IpAddr::from([198, 18, (i >> 8) as u8, i as u8]);
            let w = vip_winner(vip, nodes).unwrap();
            let mut rev = nodes;
            rev.reverse();
            assert_eq!(vip_winner(vip, rev), Some(w));
            *per_node.entry(w).or_insert(0) += 1;
        }
        // 300 VIPs over 3 nodes: each gets a fair share (binomial, sd ~8).
        for (n, c) in &per_node {
            assert!((60..=140).contains(c), "{n} won {c} of 300");
        }
        assert_eq!(per_node.len(), 3);
    }

    #[test]
    fn removing_a_node_moves_only_its_vips() {
        let all = ["node-a", "node-b", "node-c"];
        let rest = ["node-a", "node-c"];
        for i in 0..200u8 {
            let vip = IpAddr::from([198, 18, 1, i]);
            let before = vip_winner(vip, all).unwrap();
            let after = vip_winner(vip, rest).unwrap();
            if before != "node-b" {
                assert_eq!(before, after, "{vip} moved although its node stayed");
            }
        }
        assert_eq!(vip_winner(IpAddr::from([198, 18, 0, 1]), []), None);
    }

    #[test]
    fn rank_separates_name_and_key() {
        assert_ne!(rank("ab", b"c"), rank("a", b"bc"));
    }

    #[test]
    fn liveness_times_changes_by_local_clock() {
        let t0 = Instant::now();
        let d = Duration::from_millis(1500);
        let mut l = Liveness::default();
        let now = Timestamp::now();
        l.observe(&[lease("a", now), lease("b", now)], t0);
        assert_eq!(l.alive(d, t0).len(), 2);
        // a renews, b does not.
        let later = now + SignedDuration::from_millis(500);
        l.observe(
            &[lease("a", later), lease("b", now)],
            t0 + Duration::from_millis(1000),
        );
        let alive = l.alive(d, t0 + Duration::from_millis(1600));
        assert_eq!(alive, BTreeSet::from(["a".to_owned()]));
        // A Lease that disappears is forgotten.
        l.observe(&[lease("a", later)], t0 + Duration::from_millis(1700));
        assert!(l.seen_at("b").is_none());
        assert_eq!(l.seen_at("a"), Some(t0 + Duration::from_millis(1000)));
        // After an outage every Lease gets a full duration again.
        assert!(l.alive(d, t0 + Duration::from_millis(2600)).is_empty());
        l.restart_clocks(t0 + Duration::from_millis(2600));
        assert_eq!(l.alive(d, t0 + Duration::from_millis(4000)).len(), 1);
    }

    #[test]
    fn a_stale_lease_found_at_start_up_is_dead() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut l = Liveness::default();
        let old = Timestamp::now() - SignedDuration::from_secs(60);
        l.observe(&[lease("gone", old), lease("fresh", Timestamp::now())], t0);
        let alive = l.alive(Duration::from_millis(1500), t0);
        assert_eq!(alive, BTreeSet::from(["fresh".to_owned()]));
    }
}
