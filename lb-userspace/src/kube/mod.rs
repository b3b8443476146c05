//! Kubernetes as a source of truth (`lb run --kube`): IP pools, Services of type
//! LoadBalancer with our `loadBalancerClass`, their EndpointSlices, Nodes, and the Leases
//! and gossip that elect one announcing node per VIP. Everything feeds the same [`crate::config::Config`]
//! model, plan and map writer as the static config file.
//!
//! The controller never sees the daemon: it drives the node through [`NodeDataplane`],
//! which the daemon implements over its maps and announcers (the same seam as
//! [`crate::metrics::MetricsSource`]), and its unit tests implement with a fake.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde_json::{Value, json};

use crate::config::Config;

pub mod bgp;
pub mod controller;
pub mod crd;
pub mod election;
pub mod gossip;
pub mod ipam;
mod journal;
pub mod liveness;
pub mod membership;
pub mod status;
#[cfg(test)]
mod test_support;
pub mod translate;

/// What the controller needs from the node it runs on, and nothing more.
pub trait NodeDataplane {
    /// Program the difference between the running config and `config` (the node's settings
    /// with the cluster's VIPs); returns the number of map changes, 0 when nothing differs.
    /// A config that does not validate is rejected before any map is written.
    fn apply(&mut self, config: Config) -> anyhow::Result<usize>;
    /// Replace the entries of VIPs the running config has (each one address, port and
    /// protocol, as translated: the same VIPs with new backends after an EndpointSlice
    /// change) and program only their difference; returns the number of map changes. An
    /// update that cannot be made in place is refused before any map write, and the
    /// controller applies the whole config instead.
    fn update_vips(&mut self, vips: Vec<crate::config::VipConfig>) -> anyhow::Result<usize>;
    /// The VIP addresses this node answers ARP/NDP for.
    fn announced(&self) -> Vec<IpAddr>;
    /// Answer ARP/NDP for exactly `vips` (the ones this node won).
    fn set_announced(&mut self, vips: &[IpAddr]) -> anyhow::Result<()>;
    /// The error of the last sync for `/status`; `None` once a sync applies again.
    fn set_sync_error(&mut self, error: Option<String>);
    /// The controller's view of the cluster, for `/status`.
    fn set_status(&mut self, status: ControllerStatus);
    /// (config key, entry) of the `interfaces` / `backend_interfaces` entries that name no
    /// interface on this node now: the controller reports each as a Warning Event on the
    /// Node when it starts naming nothing.
    fn unmatched_interfaces(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Advertise exactly `desired` over BGP (this node's peers and the prefixes it
    /// originates); `None`: the cluster configures no BGP peer for this node. A speaker that
    /// refuses the configuration keeps the previous one and the error comes back here.
    fn set_bgp(&mut self, desired: Option<crate::bgp::Desired>) -> anyhow::Result<()> {
        let _ = desired;
        Ok(())
    }
    /// What the speaker reports of its sessions (for Service conditions and Events);
    /// `None` without BGP.
    fn bgp_status(&self) -> Option<crate::bgp::speaker::SpeakerStatus> {
        None
    }
}

/// What `/status` shows of the controller, under `kubernetes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerStatus {
    pub node: String,
    pub lease_namespace: String,
    /// This node's Lease renewals succeed and come back through its watch; when not,
    /// Leases are judged as last seen and gossip alone decides (see [`membership`]).
    pub connected: bool,
    pub alive_nodes: BTreeSet<String>,
    /// Gossip reaches only a minority of the members: this node announces nothing.
    pub isolated: bool,
    /// Every Node and member: Lease, gossip state, alive.
    pub members: BTreeMap<String, membership::MemberStatus>,
    /// This node's gossip (address, datagram counters); `None` when it is not running.
    pub gossip: Option<membership::GossipStats>,
    /// The node that allocates addresses and writes Service status.
    pub status_writer: Option<String>,
    /// lb's Services, as of the last full sync.
    pub services: usize,
    pub announced: Vec<IpAddr>,
    /// Service status writes by this node (only the status writer writes).
    pub status_writes: u64,
    pub status_errors: u64,
    /// Syncs of the whole cluster, and syncs of only the Services whose EndpointSlices
    /// changed (the common case; see `translate::Translation::update`).
    pub full_syncs: u64,
    pub endpoint_syncs: u64,
    /// Why this node's BGP speaker refused the configuration lb handed it (the previous
    /// one keeps running); `None` when it runs the latest.
    pub bgp_error: Option<String>,
    /// What is wrong with the BGPPeers, BGPAdvertisements and BFDProfiles.
    pub bgp_problems: Vec<String>,
}

impl ControllerStatus {
    /// The JSON object of `/status`'s `kubernetes` field.
    pub fn to_json(&self) -> Value {
        json!({
            "node": self.node,
            "lease_namespace": self.lease_namespace,
            "connected": self.connected,
            "alive_nodes": self.alive_nodes,
            "isolated": self.isolated,
            "members": self.members,
            "gossip": self.gossip,
            "status_writer": self.status_writer,
            "services": self.services,
            "announced": self.announced.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "status_writes": self.status_writes,
            "status_errors": self.status_errors,
            "syncs": {
                "full": self.full_syncs,
                "endpoints": self.endpoint_syncs,
            },
            "bgp": {
                "config_rejected": self.bgp_error,
                "problems": self.bgp_problems,
            },
        })
    }
}
