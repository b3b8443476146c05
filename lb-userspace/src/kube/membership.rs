//! This node's view of who is alive: its own Lease (renewed at kubelet's cadence), the
//! others' Leases (from the watch), and gossip ([`super::gossip`]), combined by
//! [`super::liveness::judge`].
//!
//! - **Connected** (to the API server): the last renewal of this node's Lease succeeded, the
//!   Lease watch is not failing, and this node saw its own renewal come back through the
//!   watch within two renew intervals (a watch that stalls silently counts as lost).
//! - **Members** are the Leases seen valid while connected; while disconnected the last
//!   members are kept as they were (frozen): a daemon that cannot see renewals judges no
//!   Lease expired, and gossip alone decides who died. On reconnection every Lease is timed
//!   afresh (the others could not renew either). So an API outage of any length moves no
//!   VIP.
//! - A node cut from the API server while its peers are not keeps its VIPs for a lease
//!   duration (40 s by default); then the peers drop its expired Lease and take them over,
//!   while it goes on announcing them (it cannot tell a lone cut from an outage for
//!   everyone, where stepping down would darken every VIP): two announcers, which route
//!   every connection the same way, until it reconnects and sees its Lease again.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Node},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use log::{info, warn};
use serde_json::json;
use tokio::sync::{Notify, watch};

use super::{
    election::{self, LEASE_LABEL, Liveness},
    gossip::Gossip,
    liveness::{self, GossipState},
    status,
};
use crate::config::KubeSettings;

/// Gossip's first moments: nodes it has not heard from yet count as alive (their Lease
/// says so), so a starting daemon does not take over every VIP before it joined. Ends
/// early once gossip has heard of every member.
pub const JOIN_GRACE: Duration = Duration::from_secs(2);
/// A failed renewal is retried this soon (not a whole renew interval later), so a
/// returning API server is seen quickly.
const RENEW_RETRY: Duration = Duration::from_secs(1);

/// The outcome of this node's Lease renewals, shared by the renewer and the controller.
#[derive(Debug, Default, Clone, Copy)]
pub struct Renewal {
    /// When the last successful renewal started.
    pub last_ok: Option<Instant>,
    /// The last attempt failed.
    pub failing: bool,
}

/// The election as this node sees it at one moment.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// This node's Lease renewals succeed and come back through the watch.
    pub connected: bool,
    /// Gossip runs and the members were seen once: liveness is judged even while
    /// disconnected. (Before the first connected moment the members are unknown, and a
    /// starting daemon that judged then would take every VIP.)
    pub gossip: bool,
    pub alive: BTreeSet<String>,
    /// Gossip reaches only a minority of the members: this node steps down.
    pub isolated: bool,
    /// The alive node that writes Service status.
    pub writer: Option<String>,
    /// Every Node or member with its Lease validity and gossip state, for `/status`.
    pub members: BTreeMap<String, MemberStatus>,
    /// Gossip's counters, when it runs.
    pub gossip_stats: Option<GossipStats>,
}

/// One node as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberStatus {
    /// Its Lease is valid (as of the last time this node could see Leases).
    pub lease: bool,
    /// What gossip says (`None`: never heard from, or gossip not running).
    pub gossip: Option<GossipState>,
    pub alive: bool,
}

/// Gossip's address and datagram counters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GossipStats {
    pub addr: String,
    pub sent: u64,
    pub received: u64,
    pub rejected: u64,
}

/// Each Node's first InternalIP: where its daemon gossips.
pub fn internal_ips(nodes: &[Node]) -> BTreeMap<String, IpAddr> {
    nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let ip = n
                .status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .filter(|a| a.type_ == "InternalIP")
                .find_map(|a| a.address.parse::<IpAddr>().ok())?;
            Some((name, ip))
        })
        .collect()
}

/// Gossip's members that are Nodes of this cluster gossiping from their InternalIP; any
/// other is ignored.
pub fn scoped(
    view: &BTreeMap<String, (std::net::SocketAddr, GossipState)>,
    ips: &BTreeMap<String, IpAddr>,
) -> BTreeMap<String, GossipState> {
    view.iter()
        .filter(|(n, (addr, _))| ips.get(*n) == Some(&addr.ip()))
        .map(|(n, (_, s))| (n.clone(), *s))
        .collect()
}

/// Lease liveness, gossip and this node's connection to the API server.
pub struct Membership {
    me: String,
    settings: KubeSettings,
    leases: Liveness,
    pub renewal: Arc<Mutex<Renewal>>,
    /// The Lease watch delivers (false while it fails).
    pub lease_watch_ok: Arc<AtomicBool>,
    /// The members as of the last connected moment.
    members: BTreeSet<String>,
    /// There was a connected moment (`members` means something).
    members_seen: bool,
    /// Connected at the last view (a reconnection restarts the Lease clocks).
    was_connected: bool,
    gossip: Option<Gossip>,
    /// Why gossip is not running, once warned.
    gossip_error: Option<String>,
}

impl Membership {
    pub fn new(me: String, settings: KubeSettings) -> Membership {
        Membership {
            me,
            settings,
            leases: Liveness::default(),
            renewal: Arc::default(),
            lease_watch_ok: Arc::new(AtomicBool::new(true)),
            members: BTreeSet::new(),
            members_seen: false,
            was_connected: false,
            gossip: None,
            gossip_error: None,
        }
    }

    /// Start gossip once this node's InternalIP is known (retried on every sync until it
    /// runs), and keep its peer list in step with the Nodes.
    pub async fn ensure_gossip(&mut self, nodes: &[Node], changed: &Arc<Notify>) {
        let ips = internal_ips(nodes);
        if self.gossip.is_none() {
            let started = match ips.get(&self.me) {
                None => Err(format!(
                    "Node {} has no InternalIP address: gossip cannot start, failure detection \
                     falls back to Leases alone (slow); check the Node's status.addresses",
                    self.me
                )),
                Some(ip) => {
                    Gossip::start(&self.me, *ip, &self.settings, ips.clone(), changed.clone())
                        .await
                        .map_err(|e| format!("{e:#}; failure detection falls back to Leases alone"))
                }
            };
            match started {
                Ok(g) => {
                    self.gossip = Some(g);
                    self.gossip_error = None;
                }
                Err(e) => {
                    if self.gossip_error.as_ref() != Some(&e) {
                        warn!("{e}");
                        self.gossip_error = Some(e);
                    }
                }
            }
        }
        if let Some(g) = &self.gossip {
            g.set_peers(ips);
        }
    }

    /// Whether the API server is reachable as far as this node can tell.
    fn connected(&self, now: Instant) -> bool {
        let fresh = self.settings.lease_renew * 2;
        let recent =
            |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) < fresh);
        let r = *self.renewal.lock().unwrap_or_else(PoisonError::into_inner);
        !r.failing
            && recent(r.last_ok)
            && self.lease_watch_ok.load(Ordering::Relaxed)
            && recent(self.leases.seen_at(&self.me))
    }

    /// Who is alive now, from the Lease store's contents and gossip.
    pub fn view(&mut self, leases: &[Lease], nodes: &[Node]) -> View {
        let now = Instant::now();
        self.leases.observe(leases, now);
        let connected = self.connected(now);
        if connected && !self.was_connected && self.members_seen {
            self.leases.restart_clocks(now);
        }
        self.was_connected = connected;
        if connected {
            self.members = self.leases.alive(self.settings.lease_duration, now);
            self.members_seen = true;
        }
        let ips = internal_ips(nodes);
        let gview = self.gossip.as_ref().map(Gossip::view);
        let gossip = gview.as_ref().map(|v| scoped(&v.members, &ips));
        // The grace ends early once gossip has heard of every member.
        let joining = self.gossip.as_ref().is_some_and(|g| {
            g.started().elapsed() < JOIN_GRACE
                && self
                    .members
                    .iter()
                    .any(|n| *n != self.me && !gossip.as_ref().is_some_and(|m| m.contains_key(n)))
        });
        let j = liveness::judge(&liveness::Inputs {
            me: &self.me,
            members: &self.members,
            gossip: gossip.as_ref(),
            joining,
        });
        let writer = election::winner(
            election::STATUS_WRITER_KEY,
            j.alive.iter().map(String::as_str),
        )
        .map(str::to_owned);
        let members = self.member_statuses(&ips, gossip.as_ref(), &j.alive);
        View {
            connected,
            gossip: self.gossip.is_some() && self.members_seen,
            alive: j.alive,
            isolated: j.isolated,
            writer,
            members,
            gossip_stats: self.gossip.as_ref().zip(gview).map(|(g, v)| GossipStats {
                addr: g.addr().to_string(),
                sent: v.sent,
                received: v.received,
                rejected: v.rejected,
            }),
        }
    }

    fn member_statuses(
        &self,
        ips: &BTreeMap<String, IpAddr>,
        gossip: Option<&BTreeMap<String, GossipState>>,
        alive: &BTreeSet<String>,
    ) -> BTreeMap<String, MemberStatus> {
        ips.keys()
            .chain(self.members.iter())
            .map(|n| {
                let status = MemberStatus {
                    lease: self.members.contains(n),
                    gossip: gossip.and_then(|g| g.get(n).copied()),
                    alive: alive.contains(n),
                };
                (n.clone(), status)
            })
            .collect()
    }
}

/// Renew `node`'s heartbeat Lease every `lease_renew` (server-side apply creates it; a
/// failed renewal is retried after [`RENEW_RETRY`]) until `stop` says so or its sender is
/// gone. Public for the membership benchmark, which runs it for simulated nodes.
pub async fn renew_lease(
    client: Client,
    ns: String,
    node: String,
    settings: KubeSettings,
    renewal: Arc<Mutex<Renewal>>,
    notify: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &ns);
    let name = election::lease_name(&node);
    let secs = settings.lease_duration.as_secs_f64().ceil() as i32;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            biased;
            // Returning drops `stop`, which tells give_up_lease it may delete the Lease.
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let started = Instant::now();
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": ns, "labels": {LEASE_LABEL: "true"}},
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": secs,
                "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now()),
            },
        });
        let r = api
            .patch(
                &name,
                &PatchParams::apply(status::FIELD_MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await;
        let was_failing = renewal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failing;
        match r {
            Ok(_) => {
                *renewal.lock().unwrap_or_else(PoisonError::into_inner) = Renewal {
                    last_ok: Some(started),
                    failing: false,
                };
                if was_failing {
                    info!("Lease {ns}/{name} renewed again");
                    notify.notify_one();
                }
                wait = settings.lease_renew.saturating_sub(started.elapsed());
            }
            Err(e) => {
                renewal
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .failing = true;
                if !was_failing {
                    warn!(
                        "renewing Lease {ns}/{name} failed ({e}); gossip goes on judging \
                         liveness, no Lease is judged expired until the API server answers, and \
                         this node keeps its VIPs for at most a lease duration"
                    );
                    notify.notify_one();
                }
                wait = RENEW_RETRY.min(settings.lease_renew);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use kube::api::ObjectMeta;

    fn node(name: &str, addrs: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    addrs
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: (*t).into(),
                            address: (*a).into(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn internal_ips_take_the_first_internal_address() {
        let nodes = [
            node(
                "a",
                &[
                    ("Hostname", "a"),
                    ("ExternalIP", "203.0.113.1"),
                    ("InternalIP", "198.18.0.11"),
                ],
            ),
            node(
                "b",
                &[("InternalIP", "fd00::12"), ("InternalIP", "198.18.0.12")],
            ),
            node("c", &[("Hostname", "c")]),
        ];
        let ips = internal_ips(&nodes);
        assert_eq!(ips.len(), 2);
        assert_eq!(ips["a"], "198.18.0.11".parse::<IpAddr>().unwrap());
        assert_eq!(ips["b"], "fd00::12".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn gossip_members_that_are_not_nodes_at_their_address_are_ignored() {
        let ips = BTreeMap::from([
            ("a".to_owned(), "198.18.0.11".parse().unwrap()),
            ("b".to_owned(), "198.18.0.12".parse().unwrap()),
        ]);
        let view = BTreeMap::from([
            (
                "a".to_owned(),
                ("198.18.0.11:7946".parse().unwrap(), GossipState::Alive),
            ),
            // b's name from another address: an impostor or a stale identity.
            (
                "b".to_owned(),
                ("198.18.0.99:7946".parse().unwrap(), GossipState::Alive),
            ),
            (
                "x".to_owned(),
                ("198.18.0.13:7946".parse().unwrap(), GossipState::Alive),
            ),
        ]);
        let s = scoped(&view, &ips);
        assert_eq!(s, BTreeMap::from([("a".to_owned(), GossipState::Alive)]));
    }
}
