//! BGP in Kubernetes mode: the `BGPPeer`, `BGPAdvertisement` and `BFDProfile` resources
//! (MetalLB's fields, see [`super::crd`]), this node's `Node` and the translated Services →
//! what this node's speaker advertises ([`bgp::Desired`]), which VIPs leave ARP/NDP, and
//! what is wrong with which object. Pure: the controller reads, this decides.
//!
//! The rules:
//! - **Peers.** A `BGPPeer` whose `nodeSelectors` match this Node's labels (any of them;
//!   all nodes when empty) is a session of this node. A peer with a field lb cannot use
//!   (an unparsable address, hold time, password...) is reported; if the speaker runs it
//!   (an edit broke it) it keeps running as it was, otherwise it is left out; the other
//!   peers are unaffected. `vrf` and `interface` (not supported) leave the peer out too;
//!   `connectTime`, `disableMP` and `dynamicASN` are reported and ignored.
//! - **BFD.** `bfdProfile` names a `BFDProfile`; its timers become the session's. An
//!   unknown profile is reported and the session runs without BFD (dropping the session
//!   over a typo would withdraw every route of every node at once). BIRD has no echo mode
//!   and no minimum TTL: `echoMode: true`, `echoInterval` and `minimumTtl` are reported on
//!   the profile and not honoured.
//! - **Router ID.** The first (by name) selected peer's `routerID`; a different one on
//!   another selected peer is reported. Otherwise this Node's first IPv4 InternalIP.
//! - **Which VIPs.** A VIP belongs to the IPPool containing its address (the smallest
//!   name when pools overlap, as allocation does). A `BGPAdvertisement` selects the pools
//!   it names (`ipAddressPools`) and those whose labels match an `ipAddressPoolSelectors`
//!   entry; naming neither selects every pool. This node advertises a VIP when an
//!   advertisement selects its pool and its `nodeSelectors` match this Node, the Node is
//!   eligible ([`election::node_eligible`]: Ready, not cordoned, not excluded), and the
//!   VIP may be served here: `externalTrafficPolicy: Cluster` → every eligible node (the
//!   router spreads flows over them by ECMP); `Local` → only nodes with a ready endpoint
//!   (the translation's [`Eligible`], the same sets as the L2 election). An ineligible
//!   node keeps its sessions and withdraws every prefix.
//! - **L2 vs BGP.** A VIP whose pool any advertisement selects (whatever its node
//!   selectors: every node must agree) is not announced by ARP/NDP, unless the IPPool says
//!   `l2: true`; `l2: false` takes a pool off ARP/NDP in any case. Pools no advertisement
//!   selects keep the L2 election as before.
//! - **Prefixes.** Each VIP as /32 or /128, or truncated to `aggregationLength` /
//!   `aggregationLengthV6`. It goes to the advertisement's `peers` (by BGPPeer name; all of
//!   this node's peers of the family when empty) with its `communities` and `localPref`.
//!   Several advertisements reaching one (prefix, peer) merge their communities; two
//!   different `localPref`s keep the first advertisement's (by name) and are reported.
//!   A malformed advertisement (community, aggregation length, selector) is left out and
//!   reported, but still takes its pools off ARP/NDP, so a typo never moves VIPs to L2.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::IpNet;
use k8s_openapi::{
    api::core::v1::{Node, SecretReference},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};

use super::{
    crd::{
        BFDProfile, BFDProfileSpec, BGPAdvertisement, BGPAdvertisementSpec, BGPPeer, BGPPeerSpec,
        IPPool,
    },
    election,
    ipam::{Pool, Selector},
    translate::Eligible,
};
use crate::bgp::{self, Community};

/// Everything the BGP translation reads, from one consistent snapshot.
#[derive(Debug, Clone, Copy)]
pub struct BgpView<'a> {
    pub node_name: &'a str,
    /// This node's Node object; `None` while it is not listed (then: no BGP).
    pub node: Option<&'a Node>,
    pub pools: &'a [IPPool],
    pub peers: &'a [BGPPeer],
    pub adverts: &'a [BGPAdvertisement],
    pub profiles: &'a [BFDProfile],
    /// Every VIP address with the nodes that may serve it (the translation's announce set).
    pub vips: &'a BTreeMap<IpAddr, Eligible>,
    /// lb's namespace: where `passwordSecret`s live.
    pub namespace: &'a str,
    /// Secret name (in `namespace`) → its `password`, or why it could not be read.
    pub passwords: &'a BTreeMap<String, Result<String, String>>,
    /// What the speaker runs now: a peer whose object has become unusable keeps running
    /// as it was (as MetalLB keeps its last valid configuration).
    pub previous: Option<&'a bgp::Desired>,
}

/// What the translation decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// This node's speaker configuration; `None`: no BGPPeer selects this node.
    pub desired: Option<bgp::Desired>,
    /// VIP addresses that BGP carries (an advertisement selects their pool), each with
    /// its pool: the Services holding them get the `BGPAdvertised` condition.
    pub bgp_vips: BTreeMap<IpAddr, String>,
    /// VIP addresses that must not be announced by ARP/NDP (on any node).
    pub not_l2: BTreeSet<IpAddr>,
    /// What is wrong with which object, for Events and the log.
    pub problems: Vec<ObjectProblem>,
}

/// Something wrong with one BGP object (or a field of it lb does not honour).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectProblem {
    /// `BGPPeer`, `BGPAdvertisement`, `BFDProfile`.
    pub kind: &'static str,
    pub name: String,
    /// The field, as written in YAML (`spec.holdTime`, `spec.communities[1]`).
    pub field: String,
    /// UpperCamelCase, for the Event's reason.
    pub reason: &'static str,
    pub message: String,
}

impl fmt::Display for ObjectProblem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{} {}: {}: {}",
            self.kind, self.name, self.field, self.message
        )
    }
}

const PEER: &str = "BGPPeer";
const ADVERT: &str = "BGPAdvertisement";
const PROFILE: &str = "BFDProfile";
/// Reason of a value lb cannot use.
const INVALID: &str = "InvalidField";
/// Reason of a valid MetalLB field lb does not implement.
const UNSUPPORTED: &str = "UnsupportedField";

struct Problems(Vec<ObjectProblem>);

impl Problems {
    fn add(
        &mut self,
        kind: &'static str,
        name: &str,
        field: &str,
        reason: &'static str,
        msg: String,
    ) {
        self.0.push(ObjectProblem {
            kind,
            name: name.to_owned(),
            field: field.to_owned(),
            reason,
            message: msg,
        });
    }
}

fn name_of<K: kube::Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}

/// The Secrets (in lb's namespace) the peers' `passwordSecret`s name: the controller reads
/// these before [`plan`].
pub fn password_secrets(peers: &[BGPPeer], namespace: &str) -> BTreeSet<String> {
    peers
        .iter()
        .filter_map(|p| p.spec.password_secret.as_ref())
        .filter(|r| r.namespace.as_deref().is_none_or(|ns| ns == namespace))
        .filter_map(|r| r.name.clone())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Translate `view` (see the module doc for the rules).
pub fn plan(view: &BgpView) -> Plan {
    let mut problems = Problems(Vec::new());
    let pools = parse_pools(view.pools);
    let adverts = parse_adverts(view.adverts, &pools, &mut problems);
    let mut plan = Plan::default();
    split_l2_and_bgp(view.vips, &pools, &adverts, &mut plan);
    plan.desired = desired(view, &pools, &adverts, &mut problems);
    plan.problems = finish(problems);
    plan
}

/// The valid IPPools, parsed, by name: the first that contains a VIP owns it.
fn parse_pools(pools: &[IPPool]) -> Vec<(&IPPool, Pool)> {
    let mut pools: Vec<(&IPPool, Pool)> = pools
        .iter()
        .filter_map(|p| Pool::from_crd(p).ok().map(|parsed| (p, parsed)))
        .collect();
    pools.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    pools
}

/// The pool a VIP belongs to: the first (smallest name) containing it, as allocation does.
fn pool_of<'p, 'a>(pools: &'p [(&'a IPPool, Pool)], vip: IpAddr) -> Option<&'p (&'a IPPool, Pool)> {
    pools.iter().find(|(_, p)| p.contains(vip))
}

/// Every advertisement by name, parsed (and reported) whether or not it selects this node.
fn parse_adverts<'a>(
    adverts: &'a [BGPAdvertisement],
    pools: &[(&IPPool, Pool)],
    problems: &mut Problems,
) -> Vec<(&'a BGPAdvertisement, ParsedAdvert)> {
    let mut adverts: Vec<&BGPAdvertisement> = adverts.iter().collect();
    adverts.sort_by_key(|a| name_of(*a));
    adverts
        .into_iter()
        .map(|a| (a, ParsedAdvert::parse(a, pools, problems)))
        .collect()
}

/// Which VIPs BGP carries and which leave ARP/NDP: the same on every node, so it ignores
/// the advertisements' node selectors (and their validity: a typo never moves VIPs to L2).
fn split_l2_and_bgp(
    vips: &BTreeMap<IpAddr, Eligible>,
    pools: &[(&IPPool, Pool)],
    adverts: &[(&BGPAdvertisement, ParsedAdvert)],
    plan: &mut Plan,
) {
    for &vip in vips.keys() {
        let Some((crd, pool)) = pool_of(pools, vip) else {
            continue;
        };
        let selected = adverts.iter().any(|(_, a)| a.pools.contains(&pool.name));
        if selected {
            plan.bgp_vips.insert(vip, pool.name.clone());
        }
        let l2 = match crd.spec.l2 {
            Some(l2) => l2,
            None => !selected,
        };
        if !l2 {
            plan.not_l2.insert(vip);
        }
    }
}

/// This node's speaker configuration; `None` without a Node or without a selected peer.
fn desired(
    view: &BgpView,
    pools: &[(&IPPool, Pool)],
    adverts: &[(&BGPAdvertisement, ParsedAdvert)],
    problems: &mut Problems,
) -> Option<bgp::Desired> {
    let node = view.node?;
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let profiles = parse_profiles(view.profiles, problems);
    let mine = node_peers(view, &labels, &profiles, problems);
    if mine.is_empty() {
        return None;
    }
    let router_id = router_id(&mine, node, problems);
    let peers: Vec<bgp::Peer> = mine.into_iter().map(|(p, _)| p).collect();
    // An ineligible node keeps its sessions and withdraws every prefix.
    let routes = if election::node_eligible(node) {
        node_routes(view, &labels, pools, adverts, &peers, problems)
    } else {
        Routes::new()
    };
    Some(bgp::Desired {
        router_id,
        peers,
        adverts: group_routes(routes),
    })
}

/// This node's sessions with their `routerID`s: the selected usable peers, and the
/// unusable ones the speaker already runs. Every peer is checked, so every node reports
/// the same problems.
fn node_peers(
    view: &BgpView,
    labels: &BTreeMap<String, String>,
    profiles: &BTreeMap<String, bgp::Bfd>,
    problems: &mut Problems,
) -> Vec<(bgp::Peer, Option<Ipv4Addr>)> {
    let mut peers: Vec<&BGPPeer> = view.peers.iter().collect();
    peers.sort_by_key(|p| name_of(*p));
    let mut mine = Vec::new();
    for p in peers {
        let name = name_of(p);
        let selected = selectors_match(
            &p.spec.node_selectors,
            labels,
            PEER,
            &name,
            "spec.nodeSelectors",
            problems,
        );
        let parsed = parse_peer(p, &name, view, profiles, problems);
        match (selected, parsed) {
            (Some(false), _) => {}
            (Some(true), Some(peer)) => mine.push(peer),
            _ => {
                if let Some(prev) = kept_previous(view, &name, problems) {
                    mine.push((prev, None));
                }
            }
        }
    }
    mine
}

/// The session the speaker runs for an unusable peer, if it does: it runs on as it is
/// (reported) rather than drop every node's session over an edit.
fn kept_previous(view: &BgpView, name: &str, problems: &mut Problems) -> Option<bgp::Peer> {
    let prev = view
        .previous
        .and_then(|d| d.peers.iter().find(|q| q.name == name))?;
    problems.add(
        PEER,
        name,
        "spec",
        "KeptPrevious",
        "the session keeps its last valid configuration until the object is \
         fixed"
            .into(),
    );
    Some(prev.clone())
}

/// The speaker's router ID: the first peer's `routerID` (others that differ are reported),
/// else this Node's first IPv4 InternalIP.
fn router_id(
    mine: &[(bgp::Peer, Option<Ipv4Addr>)],
    node: &Node,
    problems: &mut Problems,
) -> Option<Ipv4Addr> {
    let router_id = mine
        .iter()
        .find_map(|(_, id)| *id)
        .or_else(|| internal_ipv4(node));
    if let Some(first) = mine
        .iter()
        .find_map(|(p, id)| id.map(|id| (p.name.clone(), id)))
    {
        for (p, id) in mine {
            if let Some(id) = id
                && *id != first.1
            {
                problems.add(
                    PEER,
                    &p.name,
                    "spec.routerID",
                    INVALID,
                    format!(
                        "router ID {id} differs from {} of BGPPeer {} on this node; the \
                         speaker has one router ID and uses {}",
                        first.1, first.0, first.1
                    ),
                );
            }
        }
    }
    router_id
}

/// A route's attributes: its communities, and its `localPref` with the advertisement that
/// set it (the first by name, to report a conflicting one).
type Attrs = (BTreeSet<Community>, Option<(u32, String)>);

/// (prefix, peer name) → the merged attributes of every advertisement reaching it.
type Routes = BTreeMap<(IpNet, String), Attrs>;

/// What this (eligible) node advertises to which peer: the valid advertisements whose node
/// selectors match it, merged per (prefix, peer). Unknown `peers` are reported here.
fn node_routes(
    view: &BgpView,
    labels: &BTreeMap<String, String>,
    pools: &[(&IPPool, Pool)],
    adverts: &[(&BGPAdvertisement, ParsedAdvert)],
    peers: &[bgp::Peer],
    problems: &mut Problems,
) -> Routes {
    let all_peer_names: BTreeSet<String> = view.peers.iter().map(name_of).collect();
    let mut routes = Routes::new();
    for (raw, a) in adverts {
        for unknown in raw
            .spec
            .peers
            .iter()
            .filter(|n| !all_peer_names.contains(*n))
        {
            problems.add(
                ADVERT,
                &a.name,
                "spec.peers",
                INVALID,
                format!("names BGPPeer {unknown:?}, which does not exist"),
            );
        }
        if !a.valid {
            continue;
        }
        let Some(true) = selectors_match(
            &raw.spec.node_selectors,
            labels,
            ADVERT,
            &a.name,
            "spec.nodeSelectors",
            &mut Problems(Vec::new()), // reported by ParsedAdvert::parse
        ) else {
            continue;
        };
        for prefix in advert_prefixes(view, pools, a) {
            for peer in peers.iter().filter(|p| reaches(raw, p, prefix)) {
                merge_route(&mut routes, prefix, peer, a, problems);
            }
        }
    }
    routes
}

/// The prefixes an advertisement makes of the VIPs this node may serve in its pools:
/// each VIP truncated to the family's aggregation length.
fn advert_prefixes(view: &BgpView, pools: &[(&IPPool, Pool)], a: &ParsedAdvert) -> Vec<IpNet> {
    let mut prefixes = Vec::new();
    for (&vip, elig) in view.vips {
        let serves_here = match elig {
            Eligible::AnyNode => true,
            Eligible::Nodes(set) => set.contains(view.node_name),
        };
        let in_pool = pool_of(pools, vip).is_some_and(|(_, p)| a.pools.contains(&p.name));
        if !serves_here || !in_pool {
            continue;
        }
        let len = if vip.is_ipv4() { a.agg_v4 } else { a.agg_v6 };
        let Ok(prefix) = IpNet::new(vip, len) else {
            continue;
        };
        prefixes.push(prefix.trunc());
    }
    prefixes
}

/// Whether an advertisement sends `prefix` to `peer`: same family, and the peer is one
/// of its `peers` (all when empty).
fn reaches(raw: &BGPAdvertisement, peer: &bgp::Peer, prefix: IpNet) -> bool {
    let v4 = matches!(prefix, IpNet::V4(_));
    peer.address.is_ipv4() == v4
        && (raw.spec.peers.is_empty() || raw.spec.peers.contains(&peer.name))
}

/// Add an advertisement's attributes to (prefix, peer): communities merge; the first
/// `localPref` is kept and a different later one reported.
fn merge_route(
    routes: &mut Routes,
    prefix: IpNet,
    peer: &bgp::Peer,
    a: &ParsedAdvert,
    problems: &mut Problems,
) {
    let entry = routes.entry((prefix, peer.name.clone())).or_default();
    entry.0.extend(a.communities.iter().copied());
    if let Some(lp) = a.local_pref {
        match &entry.1 {
            None => entry.1 = Some((lp, a.name.clone())),
            Some((had, by)) if *had != lp => problems.add(
                ADVERT,
                &a.name,
                "spec.localPref",
                INVALID,
                format!(
                    "localPref {lp} for {prefix} to BGPPeer {} conflicts with \
                     {had} of BGPAdvertisement {by}, which is used",
                    peer.name
                ),
            ),
            Some(_) => {}
        }
    }
}

/// The speaker's advertisements: one per (prefix, attributes), naming its peers.
fn group_routes(routes: Routes) -> Vec<bgp::Advertisement> {
    let mut grouped: BTreeMap<(IpNet, Vec<Community>, Option<u32>), Vec<String>> = BTreeMap::new();
    for ((prefix, peer), (communities, lp)) in routes {
        grouped
            .entry((
                prefix,
                communities.into_iter().collect(),
                lp.map(|(v, _)| v),
            ))
            .or_default()
            .push(peer);
    }
    grouped
        .into_iter()
        .map(
            |((prefix, communities, local_pref), peers)| bgp::Advertisement {
                prefix,
                peers,
                communities,
                local_pref,
            },
        )
        .collect()
}

fn finish(p: Problems) -> Vec<ObjectProblem> {
    let mut v = p.0;
    v.sort();
    v.dedup();
    v
}

/// This Node's first IPv4 InternalIP.
fn internal_ipv4(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse::<Ipv4Addr>().ok())
}

/// Whether any of `selectors` matches `labels` (all when empty); `None` (reported) when
/// one does not parse.
fn selectors_match(
    selectors: &[LabelSelector],
    labels: &BTreeMap<String, String>,
    kind: &'static str,
    name: &str,
    field: &str,
    problems: &mut Problems,
) -> Option<bool> {
    let mut any = selectors.is_empty();
    for (i, s) in selectors.iter().enumerate() {
        match Selector::from_label_selector(s) {
            Ok(sel) => any |= sel.matches(labels),
            Err(e) => {
                problems.add(kind, name, &format!("{field}[{i}]"), INVALID, e);
                return None;
            }
        }
    }
    Some(any)
}

/// A BGPAdvertisement as this module uses it.
struct ParsedAdvert {
    name: String,
    /// The pools it selects (also when it is otherwise invalid).
    pools: BTreeSet<String>,
    /// Everything parsed: it may advertise.
    valid: bool,
    agg_v4: u8,
    agg_v6: u8,
    communities: Vec<Community>,
    local_pref: Option<u32>,
}

impl ParsedAdvert {
    /// Parse (and report) one advertisement: the pools it selects, and whether it may
    /// advertise (everything parses).
    fn parse(a: &BGPAdvertisement, pools: &[(&IPPool, Pool)], problems: &mut Problems) -> Self {
        let name = name_of(a);
        let spec = &a.spec;
        let (selected, mut valid) = selected_pools(spec, &name, pools, problems);
        // Node selectors are matched per node (in plan); here they are only checked.
        if selectors_match(
            &spec.node_selectors,
            &BTreeMap::new(),
            ADVERT,
            &name,
            "spec.nodeSelectors",
            problems,
        )
        .is_none()
        {
            valid = false;
        }
        let agg_v4 = aggregation_length(
            &name,
            "spec.aggregationLength",
            spec.aggregation_length,
            32,
            problems,
        );
        let agg_v6 = aggregation_length(
            &name,
            "spec.aggregationLengthV6",
            spec.aggregation_length_v6,
            128,
            problems,
        );
        let communities = parse_communities(&name, spec, problems);
        valid &= agg_v4.is_some() && agg_v6.is_some() && communities.is_some();
        ParsedAdvert {
            name,
            pools: selected,
            valid,
            agg_v4: agg_v4.unwrap_or(32),
            agg_v6: agg_v6.unwrap_or(128),
            communities: communities.unwrap_or_default(),
            local_pref: spec.local_pref,
        }
    }
}

/// The pools an advertisement selects: those it names and those its
/// `ipAddressPoolSelectors` match, every pool when it has neither; and whether its pool
/// selectors all parse. Unknown pool names are reported.
fn selected_pools(
    spec: &BGPAdvertisementSpec,
    name: &str,
    pools: &[(&IPPool, Pool)],
    problems: &mut Problems,
) -> (BTreeSet<String>, bool) {
    let mut valid = true;
    let mut selected: BTreeSet<String> = spec.ip_address_pools.iter().cloned().collect();
    let known: BTreeSet<&str> = pools.iter().map(|(_, p)| p.name.as_str()).collect();
    for unknown in spec
        .ip_address_pools
        .iter()
        .filter(|n| !known.contains(n.as_str()))
    {
        problems.add(
            ADVERT,
            name,
            "spec.ipAddressPools",
            INVALID,
            format!("names IPPool {unknown:?}, which does not exist (or is invalid)"),
        );
    }
    if spec.ip_address_pools.is_empty() && spec.ip_address_pool_selectors.is_empty() {
        selected.extend(known.iter().map(|s| s.to_string()));
    }
    for (crd, pool) in pools {
        let labels = crd.metadata.labels.clone().unwrap_or_default();
        match selectors_match(
            &spec.ip_address_pool_selectors,
            &labels,
            ADVERT,
            name,
            "spec.ipAddressPoolSelectors",
            problems,
        ) {
            Some(true) if !spec.ip_address_pool_selectors.is_empty() => {
                selected.insert(pool.name.clone());
            }
            Some(_) => {}
            None => valid = false,
        }
    }
    (selected, valid)
}

/// An aggregation length: `max` (the host prefix) when unset; `None` (reported) when it is
/// not a prefix length of the family.
fn aggregation_length(
    name: &str,
    field: &str,
    v: Option<i32>,
    max: u8,
    problems: &mut Problems,
) -> Option<u8> {
    match v {
        None => Some(max),
        Some(v) if (0..=i32::from(max)).contains(&v) => Some(v as u8),
        Some(v) => {
            problems.add(
                ADVERT,
                name,
                field,
                INVALID,
                format!("{v} is not a prefix length (0..={max})"),
            );
            None
        }
    }
}

/// The advertisement's communities; `None` when one (each reported) does not parse, as
/// lb has no Community resource to look a name up in.
fn parse_communities(
    name: &str,
    spec: &BGPAdvertisementSpec,
    problems: &mut Problems,
) -> Option<Vec<Community>> {
    let mut communities = Vec::new();
    let mut ok = true;
    for (i, c) in spec.communities.iter().enumerate() {
        match c.parse::<Community>() {
            Ok(c) => communities.push(c),
            Err(e) => {
                problems.add(
                    ADVERT,
                    name,
                    &format!("spec.communities[{i}]"),
                    INVALID,
                    format!(
                        "{e} (lb has no Community resource to name); the advertisement \
                         is not applied until this is fixed"
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(communities)
}

/// Each profile's BFD timers; what BIRD cannot do is reported on the profile.
fn parse_profiles(profiles: &[BFDProfile], problems: &mut Problems) -> BTreeMap<String, bgp::Bfd> {
    let mut out = BTreeMap::new();
    for p in profiles {
        let name = name_of(p);
        let timers = bfd_timers(&name, &p.spec, problems);
        warn_bfd_unsupported(&name, &p.spec, problems);
        if let Some(bfd) = timers {
            out.insert(name, bfd);
        }
    }
    out
}

/// A profile's timers (BIRD's defaults for those unset); `None` (reported) when one is
/// out of range: the profile is then unknown to its peers.
fn bfd_timers(name: &str, s: &BFDProfileSpec, problems: &mut Problems) -> Option<bgp::Bfd> {
    let d = bgp::Bfd::default();
    let mut ok = true;
    let mut interval = |field: &str, v: Option<u32>, default: u32| match v {
        None => default,
        Some(v) if (10..=60000).contains(&v) => v,
        Some(v) => {
            problems.add(
                PROFILE,
                name,
                field,
                INVALID,
                format!("{v} ms is out of range (10..=60000)"),
            );
            ok = false;
            default
        }
    };
    let receive = interval(
        "spec.receiveInterval",
        s.receive_interval,
        d.receive_interval_ms,
    );
    let transmit = interval(
        "spec.transmitInterval",
        s.transmit_interval,
        d.transmit_interval_ms,
    );
    let multiplier = match s.detect_multiplier {
        None => d.detect_multiplier,
        Some(m) if (2..=255).contains(&m) => m as u8,
        Some(m) => {
            problems.add(
                PROFILE,
                name,
                "spec.detectMultiplier",
                INVALID,
                format!("{m} is out of range (2..=255)"),
            );
            ok = false;
            d.detect_multiplier
        }
    };
    ok.then_some(bgp::Bfd {
        receive_interval_ms: receive,
        transmit_interval_ms: transmit,
        detect_multiplier: multiplier,
        passive: s.passive_mode.unwrap_or(false),
    })
}

/// Reports what BIRD cannot do (echo mode, a minimum TTL); the profile applies without it.
fn warn_bfd_unsupported(name: &str, s: &BFDProfileSpec, problems: &mut Problems) {
    if s.echo_mode == Some(true) {
        problems.add(
            PROFILE,
            name,
            "spec.echoMode",
            UNSUPPORTED,
            "BIRD, lb's speaker, has no BFD echo mode: the sessions run without echo".into(),
        );
    }
    if s.echo_interval.is_some() {
        problems.add(
            PROFILE,
            name,
            "spec.echoInterval",
            UNSUPPORTED,
            "BIRD, lb's speaker, has no BFD echo mode: ignored".into(),
        );
    }
    if s.minimum_ttl.is_some() {
        problems.add(
            PROFILE,
            name,
            "spec.minimumTtl",
            UNSUPPORTED,
            "BIRD, lb's speaker, does not check a minimum TTL on BFD packets: ignored".into(),
        );
    }
}

/// A Go duration ("90s", "1m30s", "500ms", "1.5s", "0") in milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let (unit, len) = if rest.starts_with("ms") {
            (1.0, 2)
        } else if rest.starts_with('s') {
            (1000.0, 1)
        } else if rest.starts_with('m') {
            (60_000.0, 1)
        } else if rest.starts_with('h') {
            (3_600_000.0, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += n * unit;
    }
    (total.is_finite() && total < 1e15).then_some(total.round() as u64)
}

/// One BGPPeer as a session, with its `routerID`; `None` (reported) when it cannot be used.
fn parse_peer(
    p: &BGPPeer,
    name: &str,
    view: &BgpView,
    profiles: &BTreeMap<String, bgp::Bfd>,
    problems: &mut Problems,
) -> Option<(bgp::Peer, Option<Ipv4Addr>)> {
    let s = &p.spec;
    let before = problems.0.len();
    let mut r = PeerReport { name, problems };
    let address = peer_address(s, &mut r);
    check_asns_and_port(s, &mut r);
    let source_address = source_address(s, address, &mut r);
    let router_id = peer_router_id(s, &mut r);
    let (hold_time_s, keepalive_s) = hold_and_keepalive(s, &mut r);
    let password = peer_password(s, view, &mut r);
    check_vrf_and_interface(s, &mut r);
    // Everything so far leaves the peer out; what follows only warns.
    let fatal = r.problems.0.len() > before;
    warn_ignored_fields(s, &mut r);
    let bfd = peer_bfd(s, profiles, &mut r);
    if fatal {
        return None;
    }
    Some((
        bgp::Peer {
            name: name.to_owned(),
            address: address?,
            local_asn: s.my_asn,
            peer_asn: s.peer_asn,
            port: s.peer_port.unwrap_or(bgp::DEFAULT_PORT),
            hold_time_s: hold_time_s as u16,
            keepalive_s: keepalive_s as u16,
            password: password.map(bgp::Password),
            source_address,
            multihop: (s.ebgp_multi_hop == Some(true)).then_some(255),
            graceful_restart: s.enable_graceful_restart.unwrap_or(false),
            bfd,
        },
        router_id,
    ))
}

/// Reports the problems of one BGPPeer.
struct PeerReport<'a> {
    name: &'a str,
    problems: &'a mut Problems,
}

impl PeerReport<'_> {
    /// A value lb cannot use.
    fn bad(&mut self, field: &str, msg: String) {
        self.problems.add(PEER, self.name, field, INVALID, msg);
    }

    /// A MetalLB field lb does not implement.
    fn unsupported(&mut self, field: &str, msg: &str) {
        self.problems
            .add(PEER, self.name, field, UNSUPPORTED, msg.to_owned());
    }
}

/// The peer's `peerAddress`; `None` (reported) when it is not an IP address.
fn peer_address(s: &BGPPeerSpec, r: &mut PeerReport) -> Option<IpAddr> {
    match s.peer_address.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            r.bad(
                "spec.peerAddress",
                format!("{:?} is not an IP address", s.peer_address),
            );
            None
        }
    }
}

/// Reports an AS number or a port of 0 (the CRD's schema allows them).
fn check_asns_and_port(s: &BGPPeerSpec, r: &mut PeerReport) {
    for (field, asn) in [("spec.myASN", s.my_asn), ("spec.peerASN", s.peer_asn)] {
        if asn == 0 {
            r.bad(field, "0 is not an AS number (1..=4294967295)".into());
        }
    }
    if s.peer_port == Some(0) {
        r.bad("spec.peerPort", "0 is not a port (1..=65535)".into());
    }
}

/// The `sourceAddress`, which must be of the peer address's family.
fn source_address(s: &BGPPeerSpec, address: Option<IpAddr>, r: &mut PeerReport) -> Option<IpAddr> {
    let a = s.source_address.as_ref()?;
    match a.parse::<IpAddr>() {
        Ok(ip) if address.is_none_or(|p| p.is_ipv4() == ip.is_ipv4()) => Some(ip),
        Ok(ip) => {
            r.bad(
                "spec.sourceAddress",
                format!("{ip} is not of the family of peerAddress"),
            );
            None
        }
        Err(_) => {
            r.bad("spec.sourceAddress", format!("{a:?} is not an IP address"));
            None
        }
    }
}

/// The peer's `routerID`, an IPv4 address.
fn peer_router_id(s: &BGPPeerSpec, r: &mut PeerReport) -> Option<Ipv4Addr> {
    let id = s.router_id.as_ref()?;
    match id.parse::<Ipv4Addr>() {
        Ok(id) => Some(id),
        Err(_) => {
            r.bad("spec.routerID", format!("{id:?} is not an IPv4 address"));
            None
        }
    }
}

/// The hold time and keepalive in seconds, by the static config's rules: hold 0 or
/// 3..=65535 s; keepalive 1 s up to less than the hold time (a third of it by default).
fn hold_and_keepalive(s: &BGPPeerSpec, r: &mut PeerReport) -> (u64, u64) {
    let hold = whole_seconds("spec.holdTime", &s.hold_time, r);
    let keepalive = whole_seconds("spec.keepaliveTime", &s.keepalive_time, r);
    let hold_time_s = hold.unwrap_or(u64::from(bgp::DEFAULT_HOLD_TIME_S));
    if hold_time_s != 0 && !(3..=65535).contains(&hold_time_s) {
        r.bad(
            "spec.holdTime",
            format!("{hold_time_s}s: the hold time is 0 or 3s..=65535s"),
        );
    }
    let keepalive_s = match keepalive {
        Some(k) => k,
        None if s.hold_time.is_none() => u64::from(bgp::DEFAULT_KEEPALIVE_S),
        None => hold_time_s / 3,
    };
    // As the static config's rule: 1 s up to less than the hold time (any with hold 0).
    if keepalive.is_some() && (keepalive_s == 0 || (hold_time_s != 0 && keepalive_s >= hold_time_s))
    {
        r.bad(
            "spec.keepaliveTime",
            format!(
                "{keepalive_s}s is not a keepalive interval for a hold time of \
                 {hold_time_s}s; use 1s up to less than the hold time (usually a third of it)"
            ),
        );
    }
    (hold_time_s, keepalive_s)
}

/// A Go duration field as whole seconds; `None` when unset or (reported) unusable.
fn whole_seconds(field: &str, v: &Option<String>, r: &mut PeerReport) -> Option<u64> {
    let v = v.as_ref()?;
    match parse_duration_ms(v) {
        Some(ms) if ms % 1000 == 0 => Some(ms / 1000),
        Some(_) => {
            r.bad(field, format!("{v:?} is not a whole number of seconds"));
            None
        }
        None => {
            r.bad(
                field,
                format!("{v:?} is not a duration (\"90s\", \"1m30s\")"),
            );
            None
        }
    }
}

/// The TCP MD5 password, inline or from a Secret in lb's namespace; one BIRD can quote.
fn peer_password(s: &BGPPeerSpec, view: &BgpView, r: &mut PeerReport) -> Option<String> {
    let password = match (&s.password, &s.password_secret) {
        (Some(_), Some(_)) => {
            r.bad(
                "spec.passwordSecret",
                "password and passwordSecret are both set; set one".into(),
            );
            None
        }
        (Some(pw), None) => Some(pw.clone()),
        (None, Some(secret)) => secret_password(secret, view, r),
        (None, None) => None,
    };
    if password
        .as_ref()
        .is_some_and(|pw| pw.is_empty() || pw.len() > 80 || pw.contains(['"', '\n', '\r']))
    {
        r.bad(
            "spec.password",
            "a TCP MD5 password is one line of 1..=80 characters without a double quote \
             (BIRD cannot quote '\"')"
                .into(),
        );
    }
    password
}

/// The password a `passwordSecret` holds, as the controller read it (see
/// [`password_secrets`]); only lb's namespace is read.
fn secret_password(secret: &SecretReference, view: &BgpView, r: &mut PeerReport) -> Option<String> {
    if secret
        .namespace
        .as_deref()
        .is_some_and(|ns| ns != view.namespace)
    {
        r.bad(
            "spec.passwordSecret.namespace",
            format!(
                "the Secret must be in lb's namespace {:?}, not {:?}",
                view.namespace,
                secret.namespace.as_deref().unwrap_or_default()
            ),
        );
        return None;
    }
    let name = secret.name.clone().unwrap_or_default();
    match view.passwords.get(&name) {
        Some(Ok(pw)) => Some(pw.clone()),
        Some(Err(e)) => {
            r.bad("spec.passwordSecret", e.clone());
            None
        }
        None => {
            r.bad(
                "spec.passwordSecret",
                format!("Secret {}/{name} not read yet", view.namespace),
            );
            None
        }
    }
}

/// Reports `vrf` and `interface`, which lb cannot do: they leave the peer out.
fn check_vrf_and_interface(s: &BGPPeerSpec, r: &mut PeerReport) {
    for (field, set) in [
        ("spec.vrf", s.vrf.as_ref().is_some_and(|v| !v.is_empty())),
        (
            "spec.interface",
            s.interface.as_ref().is_some_and(|v| !v.is_empty()),
        ),
    ] {
        if set {
            r.unsupported(
                field,
                "lb does not support it (no VRFs, no unnumbered BGP): the session is not opened",
            );
        }
    }
}

/// Reports the fields lb ignores (BIRD's defaults apply); the session still opens.
fn warn_ignored_fields(s: &BGPPeerSpec, r: &mut PeerReport) {
    for (field, set) in [
        ("spec.connectTime", s.connect_time.is_some()),
        ("spec.dynamicASN", s.dynamic_asn.is_some()),
        ("spec.disableMP", s.disable_mp.is_some()),
    ] {
        if set {
            r.unsupported(
                field,
                "not honoured by lb (BIRD's defaults apply); the session opens without it",
            );
        }
    }
}

/// The `bfdProfile`'s timers; an unknown profile is reported and the session runs without
/// BFD (dropping it over a typo would withdraw every route of every node at once).
fn peer_bfd(
    s: &BGPPeerSpec,
    profiles: &BTreeMap<String, bgp::Bfd>,
    r: &mut PeerReport,
) -> Option<bgp::Bfd> {
    let prof = s.bfd_profile.as_ref()?;
    match profiles.get(prof) {
        Some(b) => Some(*b),
        None => {
            r.bad(
                "spec.bfdProfile",
                format!(
                    "BFDProfile {prof:?} does not exist (or is invalid): the session runs \
                     without BFD"
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{NodeAddress, NodeCondition, NodeSpec, NodeStatus},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;
    use crate::kube::crd::{BFDProfileSpec, BGPAdvertisementSpec, BGPPeerSpec, IPPoolSpec};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A Ready, schedulable Node with `labels` and an InternalIP.
    fn node(name: &str, labels: &[(&str, &str)], internal: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "fd00:1::9".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: internal.into(),
                    },
                ]),
                ..Default::default()
            }),
        }
    }

    fn pool(name: &str, addresses: &[&str], l2: Option<bool>, labels: &[(&str, &str)]) -> IPPool {
        let mut p = IPPool::new(
            name,
            IPPoolSpec {
                addresses: addresses.iter().map(|s| s.to_string()).collect(),
                auto_assign: true,
                service_selector: None,
                l2,
            },
        );
        p.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        p
    }

    fn peer(name: &str, addr: &str) -> BGPPeer {
        BGPPeer::new(
            name,
            BGPPeerSpec {
                my_asn: 64512,
                peer_asn: 64500,
                peer_address: addr.into(),
                ..Default::default()
            },
        )
    }

    fn advert(name: &str, pools: &[&str]) -> BGPAdvertisement {
        BGPAdvertisement::new(
            name,
            BGPAdvertisementSpec {
                ip_address_pools: pools.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        )
    }

    fn selector(k: &str, v: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some([(k.to_string(), v.to_string())].into()),
            match_expressions: None,
        }
    }

    /// A cluster: pools "bgp" (198.18.10.0/24, fd00:10::/120) and "l2" (198.18.20.0/24).
    struct Cluster {
        nodes: Vec<Node>,
        pools: Vec<IPPool>,
        peers: Vec<BGPPeer>,
        adverts: Vec<BGPAdvertisement>,
        profiles: Vec<BFDProfile>,
        vips: BTreeMap<IpAddr, Eligible>,
        passwords: BTreeMap<String, Result<String, String>>,
    }

    impl Cluster {
        fn new() -> Cluster {
            Cluster {
                nodes: vec![
                    node("node-a", &[("rack", "1")], "198.18.1.2"),
                    node("node-b", &[("rack", "2")], "198.18.1.3"),
                ],
                pools: vec![
                    pool("bgp", &["198.18.10.0/24", "fd00:10::/120"], None, &[]),
                    pool("l2", &["198.18.20.0/24"], None, &[]),
                ],
                peers: vec![peer("tor", "198.18.1.1"), peer("tor6", "fd00:1::1")],
                adverts: vec![advert("all", &["bgp"])],
                profiles: vec![],
                vips: [
                    (ip("198.18.10.1"), Eligible::AnyNode),
                    (ip("fd00:10::1"), Eligible::AnyNode),
                    (
                        ip("198.18.10.2"),
                        Eligible::Nodes(["node-b".to_string()].into()),
                    ),
                    (ip("198.18.20.1"), Eligible::AnyNode),
                ]
                .into(),
                passwords: BTreeMap::new(),
            }
        }

        fn plan(&self, node: &str) -> Plan {
            plan(&BgpView {
                node_name: node,
                node: self
                    .nodes
                    .iter()
                    .find(|n| n.metadata.name.as_deref() == Some(node)),
                pools: &self.pools,
                peers: &self.peers,
                adverts: &self.adverts,
                profiles: &self.profiles,
                vips: &self.vips,
                namespace: "lb-system",
                passwords: &self.passwords,
                previous: None,
            })
        }

        fn node_mut(&mut self, name: &str) -> &mut Node {
            self.nodes
                .iter_mut()
                .find(|n| n.metadata.name.as_deref() == Some(name))
                .unwrap()
        }
    }

    /// (prefix, peers) of a plan's advertisements.
    fn routes(p: &Plan) -> Vec<(String, Vec<String>)> {
        p.desired
            .as_ref()
            .unwrap()
            .adverts
            .iter()
            .map(|a| (a.prefix.to_string(), a.peers.clone()))
            .collect()
    }

    fn r(prefix: &str, peers: &[&str]) -> (String, Vec<String>) {
        (
            prefix.to_string(),
            peers.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn cluster_policy_vips_go_from_every_node_local_ones_from_nodes_with_endpoints() {
        let c = Cluster::new();
        let a = c.plan("node-a");
        assert_eq!(
            routes(&a),
            [
                r("198.18.10.1/32", &["tor"]),
                r("fd00:10::1/128", &["tor6"])
            ]
        );
        let b = c.plan("node-b");
        assert_eq!(
            routes(&b),
            [
                r("198.18.10.1/32", &["tor"]),
                r("198.18.10.2/32", &["tor"]),
                r("fd00:10::1/128", &["tor6"])
            ]
        );
        let d = a.desired.unwrap();
        assert_eq!(
            d.router_id,
            Some(Ipv4Addr::new(198, 18, 1, 2)),
            "InternalIP v4"
        );
        assert_eq!(d.peers.len(), 2);
        let tor = &d.peers[0];
        assert_eq!(
            (
                tor.port,
                tor.hold_time_s,
                tor.keepalive_s,
                tor.bfd,
                tor.multihop
            ),
            (179, 90, 30, None, None)
        );
        assert!(a.problems.is_empty(), "{:?}", a.problems);
    }

    #[test]
    fn selected_pools_leave_arp_unless_they_opt_in_and_others_keep_it() {
        let mut c = Cluster::new();
        let p = c.plan("node-a");
        let bgp: BTreeSet<IpAddr> = [ip("198.18.10.1"), ip("198.18.10.2"), ip("fd00:10::1")].into();
        assert_eq!(p.not_l2, bgp);
        assert_eq!(p.bgp_vips.keys().copied().collect::<BTreeSet<_>>(), bgp);
        assert_eq!(p.bgp_vips[&ip("198.18.10.1")], "bgp");
        // l2: true keeps ARP/NDP as well; l2: false drops it without BGP.
        c.pools[0].spec.l2 = Some(true);
        c.pools[1].spec.l2 = Some(false);
        let p = c.plan("node-a");
        assert_eq!(p.not_l2, [ip("198.18.20.1")].into());
        assert_eq!(p.bgp_vips.len(), 3);
        // The same on a node no peer selects: every node agrees on L2.
        c.peers.clear();
        let p = c.plan("node-b");
        assert_eq!(p.desired, None);
        assert_eq!(p.not_l2, [ip("198.18.20.1")].into());
    }

    #[test]
    fn an_advertisement_without_pools_selects_every_pool_or_those_its_selectors_match() {
        let mut c = Cluster::new();
        c.adverts = vec![advert("everything", &[])];
        assert_eq!(c.plan("node-a").not_l2.len(), 4);
        c.pools[1].metadata.labels = Some([("bgp".to_string(), "yes".to_string())].into());
        c.adverts[0].spec.ip_address_pool_selectors = vec![selector("bgp", "yes")];
        let p = c.plan("node-a");
        assert_eq!(p.not_l2, [ip("198.18.20.1")].into());
        assert_eq!(routes(&p), [r("198.18.20.1/32", &["tor"])]);
    }

    #[test]
    fn a_cordoned_excluded_or_unready_node_keeps_its_sessions_and_withdraws() {
        for how in ["cordon", "exclude", "unready"] {
            let mut c = Cluster::new();
            let n = c.node_mut("node-a");
            match how {
                "cordon" => n.spec.as_mut().unwrap().unschedulable = Some(true),
                "exclude" => {
                    n.metadata
                        .labels
                        .as_mut()
                        .unwrap()
                        .insert(election::EXCLUDE_LABEL.into(), String::new());
                }
                _ => {
                    n.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status =
                        "False".into()
                }
            }
            let d = c.plan("node-a").desired.unwrap();
            assert_eq!(d.peers.len(), 2, "{how}");
            assert!(d.adverts.is_empty(), "{how}: {:?}", d.adverts);
            assert_eq!(routes(&c.plan("node-b")).len(), 3, "{how}");
        }
        // Not listed at all: no BGP.
        let c = Cluster::new();
        assert_eq!(c.plan("node-x").desired, None);
    }

    #[test]
    fn node_selectors_pick_the_peers_and_the_advertisements_of_a_node() {
        let mut c = Cluster::new();
        c.peers[0].spec.node_selectors = vec![selector("rack", "1")];
        c.adverts.push(advert("rack2-only", &["l2"]));
        c.adverts[1].spec.node_selectors = vec![selector("rack", "2")];
        let a = c.plan("node-a");
        assert_eq!(
            routes(&a),
            [
                r("198.18.10.1/32", &["tor"]),
                r("fd00:10::1/128", &["tor6"])
            ]
        );
        // node-b has no IPv4 peer: nothing IPv4 goes anywhere from it.
        let b = c.plan("node-b");
        assert_eq!(
            b.desired
                .as_ref()
                .unwrap()
                .peers
                .iter()
                .map(|p| &p.name)
                .collect::<Vec<_>>(),
            ["tor6"]
        );
        assert_eq!(routes(&b), [r("fd00:10::1/128", &["tor6"])]);
        // The rack-2 advertisement still takes pool l2 off ARP on every node.
        assert!(a.not_l2.contains(&ip("198.18.20.1")));
    }

    #[test]
    fn peers_communities_local_pref_and_aggregation_per_advertisement() {
        let mut c = Cluster::new();
        c.peers.push(peer("tor-b", "198.18.1.5"));
        let mut x = advert("a-x", &["bgp"]);
        x.spec.peers = vec!["tor".into()];
        x.spec.communities = vec!["64512:100".into(), "no-export".into()];
        x.spec.local_pref = Some(150);
        let mut y = advert("b-y", &["bgp"]);
        y.spec.peers = vec!["tor".into(), "tor-b".into()];
        y.spec.communities = vec!["large:64512:1:2".into()];
        y.spec.aggregation_length_v6 = Some(64);
        c.adverts = vec![x, y];
        let d = c.plan("node-b").desired.unwrap();
        type Row = (String, Vec<String>, Vec<String>, Option<u32>);
        let got: Vec<Row> = d
            .adverts
            .iter()
            .map(|a| {
                (
                    a.prefix.to_string(),
                    a.peers.clone(),
                    a.communities.iter().map(|c| c.to_string()).collect(),
                    a.local_pref,
                )
            })
            .collect();
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            got,
            [
                (
                    "198.18.10.1/32".into(),
                    s(&["tor"]),
                    s(&["64512:100", "65535:65281", "large:64512:1:2"]),
                    Some(150)
                ),
                (
                    "198.18.10.1/32".into(),
                    s(&["tor-b"]),
                    s(&["large:64512:1:2"]),
                    None
                ),
                (
                    "198.18.10.2/32".into(),
                    s(&["tor"]),
                    s(&["64512:100", "65535:65281", "large:64512:1:2"]),
                    Some(150)
                ),
                (
                    "198.18.10.2/32".into(),
                    s(&["tor-b"]),
                    s(&["large:64512:1:2"]),
                    None
                ),
            ],
            "no advertisement names tor6: the IPv6 VIP goes nowhere"
        );

        // Aggregation: both IPv4 VIPs are one /24; a conflicting localPref is reported.
        let mut z = advert("c-z", &["bgp"]);
        z.spec.aggregation_length = Some(24);
        z.spec.local_pref = Some(200);
        z.spec.peers = vec!["tor".into(), "ghost".into()];
        c.adverts = vec![advert("a-plain", &["bgp"]), z];
        c.adverts[0].spec.local_pref = Some(100);
        c.adverts[0].spec.aggregation_length = Some(24);
        let p = c.plan("node-b");
        let d = p.desired.as_ref().unwrap();
        let agg: Vec<_> = d
            .adverts
            .iter()
            .map(|a| (a.prefix.to_string(), a.peers.clone(), a.local_pref))
            .collect();
        assert_eq!(
            agg,
            [
                ("198.18.10.0/24".into(), s(&["tor", "tor-b"]), Some(100)),
                ("fd00:10::1/128".into(), s(&["tor6"]), Some(100)),
            ]
        );
        let fields: Vec<(&str, &str, &str)> = p
            .problems
            .iter()
            .map(|p| (p.kind, p.name.as_str(), p.field.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                (ADVERT, "c-z", "spec.localPref"),
                (ADVERT, "c-z", "spec.peers")
            ],
            "{:?}",
            p.problems
        );
        assert!(p.problems[1].message.contains("\"ghost\""));
    }

    #[test]
    fn a_malformed_object_is_reported_by_field_and_leaves_the_others_alone() {
        let mut c = Cluster::new();
        let mut bad_peer = peer("bad", "198.18.1.300");
        bad_peer.spec.hold_time = Some("2s".into());
        bad_peer.spec.peer_asn = 0;
        c.peers.push(bad_peer);
        c.peers[0].spec.bfd_profile = Some("missing".into());
        c.peers[0].spec.connect_time = Some("10s".into());
        let mut vrf = peer("in-vrf", "198.18.1.7");
        vrf.spec.vrf = Some("red".into());
        c.peers.push(vrf);
        let mut bad_advert = advert("typo", &["l2"]);
        bad_advert.spec.communities = vec!["64512:100".into(), "65536:1".into()];
        bad_advert.spec.aggregation_length = Some(33);
        c.adverts.push(bad_advert);
        let p = c.plan("node-a");
        let d = p.desired.as_ref().unwrap();
        assert_eq!(
            d.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["tor", "tor6"]
        );
        assert_eq!(
            d.peers[0].bfd, None,
            "an unknown profile: no BFD, session kept"
        );
        assert_eq!(
            routes(&p),
            [
                r("198.18.10.1/32", &["tor"]),
                r("fd00:10::1/128", &["tor6"])
            ],
            "the malformed advertisement advertises nothing"
        );
        assert!(
            p.not_l2.contains(&ip("198.18.20.1")),
            "but still keeps its pool off ARP"
        );
        let got: Vec<String> = p.problems.iter().map(|p| p.to_string()).collect();
        let expect = [
            "BGPAdvertisement typo: spec.aggregationLength: 33 is not a prefix length (0..=32)",
            "BGPAdvertisement typo: spec.communities[1]: \"65536:1\" is not a BGP community",
            "BGPPeer bad: spec.holdTime: 2s: the hold time is 0 or 3s..=65535s",
            "BGPPeer bad: spec.peerASN: 0 is not an AS number",
            "BGPPeer bad: spec.peerAddress: \"198.18.1.300\" is not an IP address",
            "BGPPeer in-vrf: spec.vrf: lb does not support it",
            "BGPPeer tor: spec.bfdProfile: BFDProfile \"missing\" does not exist",
            "BGPPeer tor: spec.connectTime: not honoured by lb",
        ];
        assert_eq!(got.len(), expect.len(), "{got:#?}");
        for (g, e) in got.iter().zip(expect) {
            assert!(g.starts_with(e), "{g:?} should start with {e:?}");
        }
        assert!(p.problems.iter().all(|p| !p.reason.is_empty()));
    }

    #[test]
    fn bfd_profiles_and_peer_options_reach_the_session() {
        let mut c = Cluster::new();
        c.profiles = vec![BFDProfile::new(
            "fast",
            BFDProfileSpec {
                receive_interval: Some(100),
                transmit_interval: Some(50),
                detect_multiplier: Some(5),
                passive_mode: Some(true),
                echo_mode: Some(true),
                minimum_ttl: Some(254),
                ..Default::default()
            },
        )];
        let s = &mut c.peers[0].spec;
        s.bfd_profile = Some("fast".into());
        s.hold_time = Some("9s".into());
        s.peer_port = Some(1179);
        s.source_address = Some("198.18.1.2".into());
        s.router_id = Some("198.18.255.1".into());
        s.ebgp_multi_hop = Some(true);
        s.enable_graceful_restart = Some(true);
        s.password_secret = Some(k8s_openapi::api::core::v1::SecretReference {
            name: Some("tor-pw".into()),
            namespace: Some("lb-system".into()),
        });
        c.passwords.insert("tor-pw".into(), Ok("s3cret".into()));
        c.peers[1].spec.keepalive_time = Some("1m".into());
        c.peers[1].spec.hold_time = Some("3m".into());
        c.peers[1].spec.router_id = Some("198.18.255.2".into());
        let p = c.plan("node-a");
        let d = p.desired.unwrap();
        assert_eq!(d.router_id, Some(Ipv4Addr::new(198, 18, 255, 1)));
        let tor = &d.peers[0];
        assert_eq!(
            tor.bfd,
            Some(bgp::Bfd {
                receive_interval_ms: 100,
                transmit_interval_ms: 50,
                detect_multiplier: 5,
                passive: true
            })
        );
        assert_eq!((tor.hold_time_s, tor.keepalive_s, tor.port), (9, 3, 1179));
        assert_eq!(tor.source_address, Some(ip("198.18.1.2")));
        assert_eq!(tor.multihop, Some(255));
        assert!(tor.graceful_restart);
        assert_eq!(tor.password, Some(bgp::Password("s3cret".into())));
        assert_eq!((d.peers[1].hold_time_s, d.peers[1].keepalive_s), (180, 60));
        let got: Vec<String> = p.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[0].starts_with("BFDProfile fast: spec.echoMode: BIRD"));
        assert!(got[1].starts_with("BFDProfile fast: spec.minimumTtl:"));
        assert!(got[2].starts_with("BGPPeer tor6: spec.routerID: router ID 198.18.255.2 differs"));

        // A Secret in another namespace, or one that could not be read: that peer only.
        let mut c2 = Cluster::new();
        c2.peers[0].spec.password_secret = Some(k8s_openapi::api::core::v1::SecretReference {
            name: Some("tor-pw".into()),
            namespace: Some("default".into()),
        });
        c2.peers[1].spec.password_secret = Some(k8s_openapi::api::core::v1::SecretReference {
            name: Some("v6-pw".into()),
            namespace: None,
        });
        c2.passwords.insert(
            "v6-pw".into(),
            Err("Secret lb-system/v6-pw does not exist".into()),
        );
        assert_eq!(
            password_secrets(&c2.peers, "lb-system"),
            ["v6-pw".to_string()].into()
        );
        let p = c2.plan("node-a");
        assert!(p.desired.is_none(), "{:?}", p.desired);
        assert_eq!(p.problems.len(), 2, "{:?}", p.problems);
        assert_eq!(p.problems[0].field, "spec.passwordSecret.namespace");
        assert_eq!(
            p.problems[1].message,
            "Secret lb-system/v6-pw does not exist"
        );
    }

    #[test]
    fn a_running_peer_broken_by_an_edit_keeps_its_last_valid_configuration() {
        let mut c = Cluster::new();
        let before = c.plan("node-a").desired.unwrap();
        c.peers[0].spec.hold_time = Some("2s".into());
        c.peers.push(peer("new-and-bad", "198.18.1.300"));
        let p = plan(&BgpView {
            node_name: "node-a",
            node: c.nodes.first(),
            pools: &c.pools,
            peers: &c.peers,
            adverts: &c.adverts,
            profiles: &c.profiles,
            vips: &c.vips,
            namespace: "lb-system",
            passwords: &c.passwords,
            previous: Some(&before),
        });
        let d = p.desired.unwrap();
        assert_eq!(
            d.peers, before.peers,
            "tor runs on as it was; the new bad peer is left out"
        );
        assert_eq!(d.adverts, before.adverts);
        let got: Vec<String> = p.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            got.contains(&"BGPPeer tor: spec: the session keeps its last valid configuration until the object is fixed".to_string()),
            "{got:#?}"
        );
        assert!(
            got.iter()
                .any(|g| g.starts_with("BGPPeer tor: spec.holdTime:"))
        );
        assert!(
            got.iter()
                .any(|g| g.starts_with("BGPPeer new-and-bad: spec.peerAddress:"))
        );
        assert!(
            !got.iter()
                .any(|g| g.starts_with("BGPPeer new-and-bad: spec:"))
        );
    }

    #[test]
    fn keepalives_and_passwords_follow_the_static_configs_rules() {
        let mut c = Cluster::new();
        c.peers[0].spec.hold_time = Some("9s".into());
        c.peers[0].spec.keepalive_time = Some("9s".into());
        c.peers[1].spec.password = Some("a\"b".into());
        let p = c.plan("node-a");
        assert_eq!(p.desired, None, "both peers left out");
        let got: Vec<String> = p.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(got[0].starts_with(
            "BGPPeer tor: spec.keepaliveTime: 9s is not a keepalive interval for a hold time of 9s"
        ));
        assert!(got[1].starts_with("BGPPeer tor6: spec.password: a TCP MD5 password is one line"));
        // Hold time 0 (no keepalives) takes any keepalive; 1 s under the hold time is fine.
        c.peers[0].spec.hold_time = Some("0s".into());
        c.peers[1].spec.password = None;
        c.peers[1].spec.hold_time = Some("4s".into());
        c.peers[1].spec.keepalive_time = Some("3s".into());
        let p = c.plan("node-a");
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let d = p.desired.unwrap();
        assert_eq!((d.peers[0].hold_time_s, d.peers[0].keepalive_s), (0, 9));
        assert_eq!((d.peers[1].hold_time_s, d.peers[1].keepalive_s), (4, 3));
    }

    #[test]
    fn durations_parse_as_go_writes_them() {
        for (s, ms) in [
            ("90s", 90_000),
            ("1m30s", 90_000),
            ("500ms", 500),
            ("1.5s", 1500),
            ("0", 0),
            ("0s", 0),
            ("1h", 3_600_000),
        ] {
            assert_eq!(parse_duration_ms(s), Some(ms), "{s}");
        }
        for bad in ["", "90", "s", "1x", "-1s", "1s2"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad}");
        }
    }

    /// MetalLB's own examples, with only `apiVersion` changed, read into lb's types field
    /// by field (serde fails on a misspelt field name only with deny_unknown_fields, so
    /// compare with what was written).
    #[test]
    fn metallb_yaml_reads_line_by_line() {
        let yaml = r#"
apiVersion: lb.dev/v1beta2
kind: BGPPeer
metadata:
  name: sample
  namespace: metallb-system
spec:
  myASN: 64512
  peerASN: 64512
  peerAddress: 172.30.0.3
  peerPort: 180
  sourceAddress: 172.30.0.2
  routerID: 10.10.10.10
  holdTime: "90s"
  keepaliveTime: "30s"
  passwordSecret:
    name: secretname
    namespace: metallb-system
  bfdProfile: full
  ebgpMultiHop: true
  enableGracefulRestart: true
  nodeSelectors:
  - matchLabels:
      rack: frontend
    matchExpressions:
    - key: network-speed
      operator: NotIn
      values: [slow]
"#;
        let p: BGPPeer = serde_yaml::from_str(yaml).unwrap();
        let back = serde_json::to_value(&p.spec).unwrap();
        let orig: serde_json::Value =
            serde_yaml::from_str::<serde_json::Value>(yaml).unwrap()["spec"].clone();
        assert_eq!(back, orig);
        let yaml = r#"
apiVersion: lb.dev/v1beta1
kind: BGPAdvertisement
metadata: {name: local, namespace: metallb-system}
spec:
  ipAddressPools: [bgp-pool]
  ipAddressPoolSelectors:
  - matchLabels: {zone: east}
  aggregationLength: 32
  aggregationLengthV6: 128
  localPref: 100
  communities: ["65535:65282", "large:1:2:3", no-advertise]
  nodeSelectors:
  - matchLabels: {kubernetes.io/hostname: kind-worker}
  peers: [peer1]
"#;
        let a: BGPAdvertisement = serde_yaml::from_str(yaml).unwrap();
        let orig: serde_json::Value =
            serde_yaml::from_str::<serde_json::Value>(yaml).unwrap()["spec"].clone();
        assert_eq!(serde_json::to_value(&a.spec).unwrap(), orig);
        let yaml = r#"
apiVersion: lb.dev/v1beta1
kind: BFDProfile
metadata: {name: full, namespace: metallb-system}
spec:
  receiveInterval: 380
  transmitInterval: 270
  detectMultiplier: 37
  echoInterval: 62
  echoMode: true
  passiveMode: true
  minimumTtl: 254
"#;
        let b: BFDProfile = serde_yaml::from_str(yaml).unwrap();
        let orig: serde_json::Value =
            serde_yaml::from_str::<serde_json::Value>(yaml).unwrap()["spec"].clone();
        assert_eq!(serde_json::to_value(&b.spec).unwrap(), orig);
    }
}
