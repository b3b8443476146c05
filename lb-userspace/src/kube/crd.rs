//! lb's custom resources and the CRD manifests generated from them: `IPPool`
//! (`ippools.lb.dev`), and the BGP ones whose fields are MetalLB's, so a MetalLB user's
//! YAML translates line by line (only `apiVersion` changes): `BGPPeer` (v1beta2),
//! `BGPAdvertisement` and `BFDProfile` (v1beta1). [`super::bgp`] turns them into what this
//! node's speaker advertises.
//!
//! `deploy/crds/` holds the output of `lb crds`, one file per CRD; a test fails when it is
//! stale.

use k8s_openapi::{
    api::core::v1::SecretReference,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of lb's own resources and annotations.
pub const GROUP: &str = "lb.dev";

/// A cluster-wide set of addresses that Services of type LoadBalancer get their VIPs from.
// Printer columns: `Addresses` is typed string because a column has no list type; the API
// server prints the list as JSON (`["198.18.100.0/28"]`). The counts come from the status
// the elected status writer keeps; the IPv6 ones show with `-o wide`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "lb.dev",
    version = "v1alpha1",
    kind = "IPPool",
    plural = "ippools",
    shortname = "lbpool",
    status = "IPPoolStatus",
    printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".spec.addresses","description":"CIDRs, ranges and addresses of the pool"}"#,
    printcolumn = r#"{"name":"Auto Assign","type":"boolean","jsonPath":".spec.autoAssign","description":"Whether Services that name no pool get addresses from it"}"#,
    printcolumn = r#"{"name":"Assigned IPv4","type":"integer","jsonPath":".status.assignedIPv4","description":"IPv4 addresses of the pool held by Services"}"#,
    printcolumn = r#"{"name":"Available IPv4","type":"integer","jsonPath":".status.availableIPv4","description":"IPv4 addresses of the pool still free"}"#,
    printcolumn = r#"{"name":"Assigned IPv6","type":"integer","jsonPath":".status.assignedIPv6","priority":1,"description":"IPv6 addresses of the pool held by Services"}"#,
    printcolumn = r#"{"name":"Available IPv6","type":"integer","jsonPath":".status.availableIPv6","priority":1,"description":"IPv6 addresses of the pool still free (at most 2^63-1)"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// The pool's addresses: CIDRs (`198.18.100.0/28`, `fd00:100::/120`), inclusive ranges
    /// (`198.18.100.10-198.18.100.20`) or single addresses, IPv4 or IPv6. Every address of
    /// a CIDR is usable, the network and broadcast addresses included. At least one entry;
    /// to drain a pool, delete it (its Services then get addresses from other pools, or none).
    pub addresses: Vec<String>,
    /// Hand out addresses to Services that name no pool. When false, only Services that
    /// name this pool (`metallb.io/address-pool`) or request one of its addresses get one.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
    /// Only Services whose labels match get addresses from this pool; all when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// Announce this pool's addresses by ARP/NDP (one elected node per address). Omitted:
    /// yes, unless a BGPAdvertisement selects the pool (then BGP alone carries them);
    /// true: by ARP/NDP as well as BGP; false: never by ARP/NDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<bool>,
}

fn default_true() -> bool {
    true
}

/// What the pool holds, kept by the elected status writer (the node that allocates): the
/// same four counts as MetalLB's `IPAddressPool` status.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct IPPoolStatus {
    /// IPv4 addresses of this pool assigned to Services (a shared address counts once).
    #[serde(rename = "assignedIPv4")]
    pub assigned_ipv4: i64,
    /// IPv6 addresses of this pool assigned to Services (a shared address counts once).
    #[serde(rename = "assignedIPv6")]
    pub assigned_ipv6: i64,
    /// IPv4 addresses of this pool not assigned to any Service.
    #[serde(rename = "availableIPv4")]
    pub available_ipv4: i64,
    /// IPv6 addresses of this pool not assigned to any Service, at most 2^63-1 (a /64 has
    /// more than an int64 holds).
    #[serde(rename = "availableIPv6")]
    pub available_ipv6: i64,
}

/// The CRD's top-level description (kube's derive writes a placeholder).
const DESCRIPTION: &str = "IPPool is a cluster-wide pool of addresses that lb assigns to \
Services of type LoadBalancer (its loadBalancerClass, or none with default_class). A Service \
names a pool with the annotation metallb.io/address-pool, requests addresses with \
metallb.io/loadBalancerIPs or spec.loadBalancerIP, or gets one from a pool with autoAssign \
whose serviceSelector matches its labels.";

/// An address entry: an IPv4 or IPv6 address, optionally `/prefix` or `-last address`. The
/// daemon parses each one fully (and reports a bad pool in its log); this catches typos at
/// `kubectl apply`.
const ADDRESS_PATTERN: &str = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*)(/[0-9]{1,3}|-([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*))?$";

/// [`IPPool::crd`] with what the derive cannot express: the description, validation
/// (at least one address, each shaped like an address, range or CIDR; selector operators
/// from their enum) and `helm.sh/resource-policy: keep` (the chart installs the CRD as a
/// template, and `helm uninstall` must not delete every IPPool with it).
pub fn crd() -> Result<CustomResourceDefinition, serde_json::Error> {
    let mut v = serde_json::to_value(IPPool::crd())?;
    v["metadata"]["annotations"] = serde_json::json!({"helm.sh/resource-policy": "keep"});
    let schema = &mut v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    schema["description"] = DESCRIPTION.into();
    let spec = &mut schema["properties"]["spec"]["properties"];
    let addresses = &mut spec["addresses"];
    addresses["minItems"] = 1.into();
    addresses["items"]["pattern"] = ADDRESS_PATTERN.into();
    addresses["items"]["maxLength"] = 91.into(); // two IPv6 addresses with a dash
    spec["serviceSelector"]["properties"]["matchExpressions"]["items"]["properties"]["operator"]
        ["enum"] = serde_json::json!(["In", "NotIn", "Exists", "DoesNotExist"]);
    let status = &mut schema["properties"]["status"];
    status["description"] =
        "Kept by lb's status writer; counts of the pool's addresses per family.".into();
    for count in [
        "assignedIPv4",
        "assignedIPv6",
        "availableIPv4",
        "availableIPv6",
    ] {
        status["properties"][count]["minimum"] = 0.into();
    }
    serde_json::from_value(v)
}

// ---------------------------------------------------------------------------------------
// BGP: MetalLB's resources under lb's group. Cluster-scoped like IPPool (a MetalLB YAML's
// `metadata.namespace` is ignored by the API server for them); every field keeps MetalLB's
// name and meaning, and the fields lb cannot honour are accepted and reported (an Event on
// the object and a log line), never silently dropped.

/// One BGP session every selected node opens (MetalLB's `BGPPeer`, v1beta2).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "lb.dev",
    version = "v1beta2",
    kind = "BGPPeer",
    plural = "bgppeers",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.peerAddress"}"#,
    printcolumn = r#"{"name":"ASN","type":"integer","jsonPath":".spec.myASN"}"#,
    printcolumn = r#"{"name":"Peer ASN","type":"integer","jsonPath":".spec.peerASN"}"#,
    printcolumn = r#"{"name":"BFD Profile","type":"string","jsonPath":".spec.bfdProfile"}"#,
    printcolumn = r#"{"name":"Multi Hops","type":"boolean","jsonPath":".spec.ebgpMultiHop"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// This node's AS number on the session.
    #[serde(rename = "myASN")]
    pub my_asn: u32,
    /// The peer's AS number; equal to myASN makes an iBGP session.
    #[serde(rename = "peerASN")]
    pub peer_asn: u32,
    /// The peer's address (IPv4 or IPv6).
    pub peer_address: String,
    /// The peer's port; 179 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
    /// The local address of the session; the speaker picks one when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    /// BGP router ID (an IPv4 address); default: the node's InternalIP (IPv4). All the
    /// peers of a node must agree: the speaker has one.
    #[serde(default, rename = "routerID", skip_serializing_if = "Option::is_none")]
    pub router_id: Option<String>,
    /// Hold time as a duration ("90s"); 0 or at least 3 s, whole seconds. Default 90s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<String>,
    /// Keepalive interval ("30s"), at most the hold time. Default: a third of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<String>,
    /// Not honoured (BIRD retries on its own timers); reported when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_time: Option<String>,
    /// TCP MD5 password, in clear. Prefer passwordSecret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A Secret of type kubernetes.io/basic-auth in lb's namespace; its key `password` is
    /// the TCP MD5 password. Not together with password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretReference>,
    /// The name of a BFDProfile: BFD runs on the session with its timers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd_profile: Option<String>,
    /// The peer is more than one hop away (eBGP multihop, TTL 255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebgp_multi_hop: Option<bool>,
    /// Graceful restart (RFC 4724): the peer keeps this node's routes while its speaker
    /// restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_graceful_restart: Option<bool>,
    /// Only nodes whose labels match one of these open the session; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// Not supported by lb (no VRFs); a peer that sets it is not opened, and reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrf: Option<String>,
    /// Not supported by lb (unnumbered BGP); a peer that sets it is not opened, and reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Not supported by lb (peerASN is required); reported when set.
    #[serde(
        default,
        rename = "dynamicASN",
        skip_serializing_if = "Option::is_none"
    )]
    pub dynamic_asn: Option<String>,
    /// Not honoured: BIRD carries IPv4 and IPv6 on sessions of their own family only;
    /// reported when set.
    #[serde(default, rename = "disableMP", skip_serializing_if = "Option::is_none")]
    pub disable_mp: Option<bool>,
}

/// Which VIPs go to which peers, with which attributes (MetalLB's `BGPAdvertisement`).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "lb.dev",
    version = "v1beta1",
    kind = "BGPAdvertisement",
    plural = "bgpadvertisements",
    printcolumn = r#"{"name":"IPAddressPools","type":"string","jsonPath":".spec.ipAddressPools"}"#,
    printcolumn = r#"{"name":"IPAddressPool Selectors","type":"string","jsonPath":".spec.ipAddressPoolSelectors"}"#,
    printcolumn = r#"{"name":"Peers","type":"string","jsonPath":".spec.peers"}"#,
    printcolumn = r#"{"name":"Node Selectors","type":"string","jsonPath":".spec.nodeSelectors","priority":10}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPAdvertisementSpec {
    /// Advertise each VIP as its /aggregationLength prefix (IPv4); default 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation_length: Option<i32>,
    /// Advertise each VIP as its /aggregationLengthV6 prefix (IPv6); default 128.
    #[serde(
        default,
        rename = "aggregationLengthV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub aggregation_length_v6: Option<i32>,
    /// LOCAL_PREF of the routes (iBGP peers only receive it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<u32>,
    /// Communities: "65000:100", "large:65000:1:2", or a well-known name (no-export,
    /// no-advertise, no-export-subconfed, no-peer, blackhole, graceful-shutdown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
    /// Names of the IPPools whose VIPs this advertises. With ipAddressPoolSelectors
    /// empty too: every pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pools: Vec<String>,
    /// IPPools whose labels match one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pool_selectors: Vec<LabelSelector>,
    /// Only nodes whose labels match one of these advertise; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// Names of the BGPPeers the routes go to; every peer when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
}

/// BFD timers for the sessions that name this profile (MetalLB's `BFDProfile`).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "lb.dev",
    version = "v1beta1",
    kind = "BFDProfile",
    plural = "bfdprofiles",
    printcolumn = r#"{"name":"Passive Mode","type":"boolean","jsonPath":".spec.passiveMode"}"#,
    printcolumn = r#"{"name":"Transmit Interval","type":"integer","jsonPath":".spec.transmitInterval"}"#,
    printcolumn = r#"{"name":"Receive Interval","type":"integer","jsonPath":".spec.receiveInterval"}"#,
    printcolumn = r#"{"name":"Multiplier","type":"integer","jsonPath":".spec.detectMultiplier"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BFDProfileSpec {
    /// Minimum interval at which this node can receive control packets, in ms; default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_interval: Option<u32>,
    /// Minimum interval at which this node sends control packets, in ms; default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transmit_interval: Option<u32>,
    /// Packets missed before the session is declared down; default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_multiplier: Option<u32>,
    /// Not supported: BIRD has no BFD echo mode. Reported when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_interval: Option<u32>,
    /// Not supported: BIRD has no BFD echo mode. true is reported, and the session runs
    /// without echo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_mode: Option<bool>,
    /// Wait for the peer to start the BFD session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_mode: Option<bool>,
    /// Not supported: BIRD does not check a minimum TTL on BFD. Reported when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ttl: Option<u32>,
}

/// Set `minimum`/`maximum` on a property of `props`.
fn range(props: &mut serde_json::Value, field: &str, min: i64, max: i64) {
    props[field]["minimum"] = min.into();
    props[field]["maximum"] = max.into();
}

/// Selector operators from their enum, in every list of label selectors under `props`.
fn selector_enums(props: &mut serde_json::Value, fields: &[&str]) {
    for f in fields {
        props[*f]["items"]["properties"]["matchExpressions"]["items"]["properties"]["operator"]["enum"] =
            serde_json::json!(["In", "NotIn", "Exists", "DoesNotExist"]);
    }
}

/// The common finishing of a BGP CRD: description, `keep` policy, and the spec's
/// properties handed to `f` for validation.
fn finish(
    crd: CustomResourceDefinition,
    description: &str,
    f: impl FnOnce(&mut serde_json::Value),
) -> Result<CustomResourceDefinition, serde_json::Error> {
    let mut v = serde_json::to_value(crd)?;
    v["metadata"]["annotations"] = serde_json::json!({"helm.sh/resource-policy": "keep"});
    let schema = &mut v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    schema["description"] = description.into();
    schema["required"] = serde_json::json!(["spec"]);
    f(&mut schema["properties"]["spec"]["properties"]);
    serde_json::from_value(v)
}

/// The `BGPPeer` CRD with validation: ASNs 1..=4294967295, a port, the address shaped
/// like one, durations shaped like Go's.
pub fn bgp_peer_crd() -> Result<CustomResourceDefinition, serde_json::Error> {
    finish(
        BGPPeer::crd(),
        "BGPPeer is a BGP session that the lb daemon of every node its nodeSelectors match \
         opens (through the BIRD speaker it runs), as MetalLB's BGPPeer (v1beta2): the same \
         fields, so a MetalLB BGPPeer applies with only its apiVersion changed. Fields lb \
         cannot honour (vrf, interface, dynamicASN, connectTime, disableMP) are reported as \
         Warning Events on the object.",
        |p| {
            range(p, "myASN", 1, 4_294_967_295);
            range(p, "peerASN", 1, 4_294_967_295);
            range(p, "peerPort", 1, 65535);
            p["peerAddress"]["pattern"] = IP_PATTERN.into();
            p["sourceAddress"]["pattern"] = IP_PATTERN.into();
            p["routerID"]["pattern"] = IPV4_PATTERN.into();
            for d in ["holdTime", "keepaliveTime", "connectTime"] {
                p[d]["pattern"] = DURATION_PATTERN.into();
            }
            selector_enums(p, &["nodeSelectors"]);
        },
    )
}

/// The `BGPAdvertisement` CRD with validation (aggregation lengths, community shapes).
pub fn bgp_advertisement_crd() -> Result<CustomResourceDefinition, serde_json::Error> {
    finish(
        BGPAdvertisement::crd(),
        "BGPAdvertisement says which VIPs (of which IPPools) the nodes advertise over BGP, to \
         which BGPPeers, with which communities and local preference, as MetalLB's \
         BGPAdvertisement: the same fields. A pool that a BGPAdvertisement selects is no \
         longer announced by ARP/NDP unless the IPPool sets l2: true.",
        |p| {
            range(p, "aggregationLength", 0, 32);
            range(p, "aggregationLengthV6", 0, 128);
            p["communities"]["items"]["pattern"] = COMMUNITY_PATTERN.into();
            selector_enums(p, &["ipAddressPoolSelectors", "nodeSelectors"]);
        },
    )
}

/// The `BFDProfile` CRD with MetalLB's ranges.
pub fn bfd_profile_crd() -> Result<CustomResourceDefinition, serde_json::Error> {
    finish(
        BFDProfile::crd(),
        "BFDProfile holds the BFD timers of the BGPPeers that name it, as MetalLB's \
         BFDProfile. BIRD (lb's speaker) has no echo mode and no minimum TTL check: \
         echoMode, echoInterval and minimumTtl are reported, not honoured.",
        |p| {
            range(p, "receiveInterval", 10, 60000);
            range(p, "transmitInterval", 10, 60000);
            range(p, "detectMultiplier", 2, 255);
            range(p, "echoInterval", 10, 60000);
            range(p, "minimumTtl", 1, 254);
        },
    )
}

/// An IPv4 address (dotted quad).
const IPV4_PATTERN: &str = r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$";
/// An IPv4 or IPv6 address (the daemon parses it fully).
const IP_PATTERN: &str = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*)$";
/// A Go duration as MetalLB writes them: "90s", "1m30s", "500ms".
const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$";
/// "a:b" (each 0..=65535), "large:a:b:c" (each at most ten digits; the daemon checks the
/// 32-bit range), or a well-known community name.
const COMMUNITY_PATTERN: &str = concat!(
    r"^((",
    r"[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]",
    r"):(",
    r"[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]",
    r")|large:[0-9]{1,10}:[0-9]{1,10}:[0-9]{1,10}",
    r"|no-export|no-advertise|no-export-subconfed|no-peer|blackhole|graceful-shutdown)$"
);

/// Every CRD lb defines, with the file each is checked in as under `deploy/crds/`.
pub fn all_crds() -> Result<Vec<(&'static str, CustomResourceDefinition)>, serde_json::Error> {
    Ok(vec![
        ("ippools.lb.dev.yaml", crd()?),
        ("bgppeers.lb.dev.yaml", bgp_peer_crd()?),
        ("bgpadvertisements.lb.dev.yaml", bgp_advertisement_crd()?),
        ("bfdprofiles.lb.dev.yaml", bfd_profile_crd()?),
    ])
}

const GENERATED: &str =
    "# Generated by `lb crds` from lb-userspace/src/kube/crd.rs; do not edit.\n";

/// One CRD as a YAML document, as checked in.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> anyhow::Result<String> {
    Ok(format!("{GENERATED}---\n{}", serde_yaml::to_string(crd)?))
}

/// Every CRD lb defines, as one multi-document YAML stream (what `lb crds` prints).
pub fn crds_yaml() -> anyhow::Result<String> {
    let mut out = String::from(GENERATED);
    for (_, crd) in all_crds()? {
        out += "---\n";
        out += &serde_yaml::to_string(&crd)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_assign_defaults_to_true() {
        let spec: IPPoolSpec =
            serde_json::from_str(r#"{"addresses":["198.18.100.0/28"]}"#).unwrap();
        assert!(spec.auto_assign);
        assert_eq!(spec.service_selector, None);
    }

    #[test]
    fn crd_is_cluster_scoped_with_a_status_subresource_and_validation() {
        let crd = crd().unwrap();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.plural, "ippools");
        assert_eq!(crd.metadata.name.as_deref(), Some("ippools.lb.dev"));
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some())
        );
        let v = serde_json::to_value(version).unwrap();
        let schema = &v["schema"]["openAPIV3Schema"];
        assert!(
            schema["description"]
                .as_str()
                .unwrap()
                .starts_with("IPPool is")
        );
        let addresses = &schema["properties"]["spec"]["properties"]["addresses"];
        assert_eq!(addresses["minItems"], 1);
        let columns: Vec<(String, String)> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["type"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert!(
            columns.contains(&("Age".into(), "date".into())),
            "{columns:?}"
        );
        assert!(columns.contains(&("Assigned IPv4".into(), "integer".into())));
        assert!(
            crd.metadata.annotations.unwrap()["helm.sh/resource-policy"] == "keep",
            "helm uninstall must not delete the IPPools"
        );
    }

    #[test]
    fn the_address_pattern_takes_what_the_daemon_parses() {
        let re = regex_lite(super::ADDRESS_PATTERN);
        for ok in [
            "198.18.100.0/28",
            "198.18.100.10-198.18.100.20",
            "198.18.100.7",
            "fd00:100::/120",
            "fd00::1-fd00::9",
            "::ffff:198.18.0.1",
        ] {
            assert!(re(ok), "{ok} should match");
        }
        for bad in [
            "",
            "eth0",
            "198.18.100.0/28 ",
            "198.18.100",
            "10.0.0.1/",
            "a-b",
        ] {
            assert!(!re(bad), "{bad:?} should not match");
        }
    }

    #[test]
    fn the_community_pattern_takes_what_the_daemon_parses() {
        let re = regex_lite(super::COMMUNITY_PATTERN);
        for ok in [
            "0:0",
            "65535:65535",
            "64512:100",
            "9999:1",
            "large:4294967295:1:2",
            "no-export",
            "graceful-shutdown",
        ] {
            assert!(re(ok), "{ok} should match");
            assert!(ok.parse::<crate::bgp::Community>().is_ok(), "{ok}");
        }
        for bad in [
            "65536:1",
            "1:65536",
            "70000:1",
            "1",
            "a:b",
            "large:1:2",
            "alias",
            "",
        ] {
            assert!(!re(bad), "{bad:?} should not match");
        }
    }

    /// The pattern through a real regex engine (the API server uses Go's RE2; this one
    /// accepts the same syntax for these constructs).
    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
        let re = regex::Regex::new(pattern).unwrap();
        move |s| re.is_match(s)
    }
}

/// The checked-in copies of [`all_crds`], one file per CRD: plain manifests and the Helm
/// chart's `files/`.
#[cfg(test)]
mod checked_in {
    use super::{all_crds, crd_yaml};

    const DIRS: [&str; 2] = [
        "deploy/crds",
        // Read by templates/crds.yaml (.Files.Get): a template, so `helm upgrade` upgrades it.
        "deploy/helm/lb/files",
    ];

    /// Fails when a copy is stale; `LB_UPDATE_CRDS=1` rewrites them instead.
    #[test]
    fn deploy_crds_match_the_rust_types() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (file, crd) in all_crds().unwrap() {
            let want = crd_yaml(&crd).unwrap();
            for dir in DIRS {
                let rel = format!("{dir}/{file}");
                let path = root.join(&rel);
                if std::env::var_os("LB_UPDATE_CRDS").is_some() {
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(&path, &want).unwrap();
                    continue;
                }
                let have = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    have == want,
                    "{rel} is stale (or missing): regenerate deploy/crds and the chart's files \
                     with LB_UPDATE_CRDS=1 cargo test -p lb-userspace --lib checked_in"
                );
            }
        }
    }
}
