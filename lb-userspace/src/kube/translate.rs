//! From a snapshot of the cluster to the data-plane model of one node: pure, no I/O.
//!
//! [`translate`] turns Services of type LoadBalancer (already filtered to ours), their
//! EndpointSlices and the parsed QUIC-LB Secrets into the [`VipConfig`]s this node programs,
//! the nodes that may announce each VIP address, and the [`Problem`]s worth reporting on the
//! Services. The rules follow Kubernetes' own semantics (kube-proxy's), so a Service behaves
//! here as it would behind any other load balancer:
//!
//! - **VIPs.** Every `status.loadBalancer.ingress[].ip` (entries with only a `hostname` are
//!   skipped) times every `spec.ports` entry with protocol TCP or UDP is one [`VipConfig`],
//!   named `namespace/name:port-name-or-number/proto`. SCTP (or anything else) is reported
//!   as `UnsupportedProtocol` and that port is skipped. An address whose family (IPv4/IPv6)
//!   has no EndpointSlice (yet) is still programmed, with no backends: the node then drops
//!   new flows for it (`drop_no_backend`) instead of handing VIP packets to its kernel.
//! - **Backends** come from the EndpointSlices labelled `kubernetes.io/service-name=<name>`
//!   in the Service's namespace whose `addressType` is the VIP's family (FQDN slices are
//!   ignored). The backend port is the slice's port with the Service port's `name` (absent
//!   and empty are the same) and protocol; a slice without one contributes nothing. This is
//!   how a named `targetPort` resolves: per slice, so pods of two versions may listen on two
//!   numbers behind one Service port.
//! - **Endpoint conditions** (KEP-1669): `ready` (absent: true), `serving` (absent: ready),
//!   `terminating` (absent: false). When at least one endpoint is ready, ready endpoints get
//!   weight 1 and serving, terminating ones weight 0 — drained: they keep their backend
//!   entry and server IDs so established flows and QUIC connections still reach them, but
//!   get no new flows. When none is ready, the serving, terminating ones get weight 1, so a
//!   rolling restart of the last pods does not black-hole new clients. Endpoints that are
//!   not serving are left out. An address listed by several slices appears once; its most
//!   ready listing wins.
//! - **`externalTrafficPolicy: Local`**: only endpoints on this node are backends here, and
//!   the weights above are decided among them (as kube-proxy does), so a node still
//!   attracting traffic while its last local pod terminates drains it instead of dropping.
//!   The address may be announced by the nodes with a ready endpoint of the Service (in the
//!   address's family): [`Eligible::Nodes`]. Cluster (the default): every endpoint is a
//!   backend on every node, and any node may announce ([`Eligible::AnyNode`]). Services
//!   sharing an address: all Local → the intersection of their node sets (a node announcing
//!   the address must have local endpoints for all of them); all Cluster → any node; a mix
//!   is reported as `MixedTrafficPolicy` on the Cluster services and the Local services'
//!   intersection is used, because announcing from a node without local endpoints would
//!   break the Local services while Cluster services work from any node.
//! - **Two Services claiming one (address, port, protocol)**: the older Service (by
//!   `creationTimestamp`, then namespace/name) keeps it, the other gets `PortConflict` for
//!   that VIP, so adding a Service can never take traffic away from one already running.
//! - **`sessionAffinity: ClientIP`** → [`SessionAffinity::ClientIp`]: Maglev over the client
//!   address, so a client sticks to one backend while the backend set is unchanged.
//!   `sessionAffinityConfig.clientIP.timeoutSeconds` is not honoured; the affinity lasts as
//!   long as the backend set does.
//! - **`loadBalancerSourceRanges`** → `source_ranges`: CIDRs (host bits cleared) or bare
//!   addresses (/32, /128); each VIP gets the entries of its own family. One unparsable
//!   entry (`InvalidSourceRange`) means the Service gets *no* VIPs at all: failing closed,
//!   because serving a restricted Service to the whole Internet is worse than not serving
//!   it. Likewise a VIP address whose family has no range while the Service lists some
//!   (`NoSourceRangeForFamily`) is not programmed, since an empty list would mean "every
//!   source".
//! - **QUIC-LB.** The Service annotation [`QUIC_LB_SECRET_ANNOTATION`] names one Secret in
//!   the Service's namespace, or several separated by commas (config rotation; see
//!   [`parse_quic_lb_secret`] for their keys). The Service's UDP VIPs then route QUIC by
//!   server ID under all of their configs; TCP VIPs ignore the annotation. Each backend's
//!   server ID under a config is its pod's [`SERVER_ID_ANNOTATION`] when the endpoint
//!   references a pod that has one of the config's length (else `InvalidServerId`, and the
//!   derived ID is used), otherwise [`server_id_from_ip`] of its address — the same rule the
//!   pod applies to itself. Two backends of one VIP with one server ID under one config
//!   (`ServerIdCollision`) both lose their entry under that config: their CIDs then decode
//!   to an unknown server ID and take the fallback (connection table, then Maglev), which
//!   is what would happen anyway for one of them, and never misroutes the other's packets.
//!   A missing or unparsable Secret, or two configs with one config ID
//!   (`InvalidQuicLbSecret`), turns QUIC-LB off for the Service: its UDP ports use 4-tuple
//!   Maglev, and the Service keeps being served.
//! - **Order.** Everything is deterministic: VIPs by (address, port, protocol), backends by
//!   address, problems by Service (namespace, name) and then in the order found, each once.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    ops::RangeInclusive,
};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use lb_common::quic_lb;

use crate::{
    capacity::Capacity,
    config::{BackendConfig, Protocol, SessionAffinity, VipConfig},
};

/// Service annotation: the Secret(s) holding the Service's QUIC-LB config(s), comma-separated.
pub const QUIC_LB_SECRET_ANNOTATION: &str = "lb.dev/quic-lb-secret";
/// Service annotation: learned-CID mode on the UDP ports, for QUIC servers without QUIC-LB
/// (the value is their connection ID length, 1..=20; quic-go: 4, aioquic: 8).
pub const LEARNED_CID_ANNOTATION: &str = "lb.dev/learned-cid-len";
/// Pod annotation: the pod's QUIC-LB server ID in hex, overriding [`server_id_from_ip`].
pub const SERVER_ID_ANNOTATION: &str = "lb.dev/quic-lb-server-id";
/// EndpointSlice label naming the Service the slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What [`translate`] reads: one consistent snapshot of the cluster.
#[derive(Debug, Clone, Copy)]
pub struct ClusterView<'a> {
    /// Our Services; their VIPs are in `status.loadBalancer.ingress[].ip`.
    pub services: &'a [&'a Service],
    /// `discovery.k8s.io/v1` EndpointSlices (any namespace; matched by label).
    pub slices: &'a [&'a EndpointSlice],
    /// The node this data plane runs on.
    pub node_name: &'a str,
    /// The data plane's map sizes (`[capacity]`): Services past them are not served.
    pub capacity: &'a Capacity,
    /// (namespace, Secret name) → the Secret's QUIC-LB config(s), or why it did not parse.
    pub quic: &'a BTreeMap<(String, String), Result<Vec<quic_lb::Config>, String>>,
    /// (namespace, pod name) → the pod's [`SERVER_ID_ANNOTATION`] value.
    pub server_id_overrides: &'a BTreeMap<(String, String), String>,
}

/// What this node should program and announce.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    /// This node's VIPs, by (address, port, protocol).
    pub vips: Vec<VipConfig>,
    /// Which nodes may announce each VIP address.
    pub announce: BTreeMap<IpAddr, Eligible>,
    /// One per problem found on a Service, by Service.
    pub problems: Vec<Problem>,
}

/// The nodes allowed to announce a VIP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eligible {
    AnyNode,
    /// Only these (possibly none).
    Nodes(BTreeSet<String>),
}

/// Something wrong with a Service, for an Event or status condition on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    /// (namespace, name).
    pub service: (String, String),
    /// UpperCamelCase, as Kubernetes Event reasons are.
    pub reason: &'static str,
    pub message: String,
}

type ServiceKey = (String, String);

mod incremental;
pub use incremental::Translation;

/// Translate `view` into the VIPs of node `view.node_name` (see the module doc for the
/// rules), with what was decided per Service, so that a later change to some Services'
/// EndpointSlices can be translated for those Services alone ([`Translation::update`]).
pub fn translate(view: &ClusterView) -> (Desired, Translation) {
    let mut problems = Vec::new();
    let mut services: Vec<&Service> = view.services.to_vec();
    services.sort_by_key(|s| service_key(s));
    let by_service = slices_by_service(view.slices);
    let mut outs: Vec<ServiceOut> = services
        .iter()
        .filter_map(|s| {
            let slices = by_service
                .get(&(
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    s.metadata.name.as_deref().unwrap_or_default(),
                ))
                .map(Vec::as_slice)
                .unwrap_or_default();
            translate_service(view, slices, s, &mut problems)
        })
        .collect();
    resolve_port_conflicts(&mut outs, &mut problems);
    enforce_capacity(&mut outs, view.capacity, &mut problems);
    let announce = announce_sets(&outs, &mut problems);
    let problems = order_problems(problems);
    let kept = Translation::of(&outs, &problems);
    let mut vips: Vec<VipConfig> = outs.into_iter().flat_map(|o| o.vips).collect();
    vips.sort_by_key(|v| (v.addr, v.ports[0], v.protocols[0]));
    let desired = Desired {
        vips,
        announce,
        problems,
    };
    (desired, kept)
}

/// Parse a QUIC-LB Secret's (decoded) data: `config-id` (0..=6, default 0), `server-id-len`
/// (1..=15) and `nonce-len` (4..=18, the two summing to at most 19), both required, `key`
/// (32 hex digits; absent: plaintext CIDs) and `encode-length` (`true`/`false`, default
/// true). Surrounding whitespace is ignored, so values written with a trailing newline work.
pub fn parse_quic_lb_secret(data: &BTreeMap<String, Vec<u8>>) -> Result<quic_lb::Config, String> {
    let config_id = secret_u8(
        data,
        "config-id",
        0..=quic_lb::MAX_CONFIG_ID,
        Some(0),
        " (7 marks unroutable connection IDs)",
    )?;
    let server_id_len = secret_u8(
        data,
        "server-id-len",
        quic_lb::MIN_SERVER_ID_LEN as u8..=quic_lb::MAX_SERVER_ID_LEN as u8,
        None,
        "",
    )?;
    let nonce_len = secret_u8(
        data,
        "nonce-len",
        quic_lb::MIN_NONCE_LEN as u8..=(quic_lb::MAX_PLAINTEXT_LEN - 1) as u8,
        None,
        " (and server-id-len + nonce-len <= 19)",
    )?;
    let key = match secret_str(data, "key")? {
        None => None,
        Some(s) => Some(parse_key(s).ok_or_else(|| {
            "key: not 32 hex digits (a 16-octet AES-128 key); omit the key for plaintext \
             connection IDs"
                .to_string()
        })?),
    };
    let encode_length = match secret_str(data, "encode-length")? {
        None => true,
        Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(format!(
                "encode-length: {other:?} is not \"true\" or \"false\" (default true)"
            ));
        }
    };
    quic_lb::Config::new(config_id, server_id_len, nonce_len, key, encode_length)
        .map_err(|e| format!("server-id-len/nonce-len: {e}"))
}

/// The QUIC-LB server ID a pod derives from its own IP address, with no coordination: the
/// last `len` octets of the address in network order. An IPv4 address has 4 octets, so with
/// `len` > 4 the ID is left-padded with zero octets.
///
/// Example: 198.18.3.7 with `len` 2 → `0307`; with `len` 6 → `0000c6120307`;
/// fd00::a:b0c with `len` 3 → `0a0b0c`.
///
/// Pick `len` so that the pod addresses of one Service differ in their last `len` octets
/// (for IPv4, 2 covers pod CIDRs up to a /16); pods that do not are reported as a
/// `ServerIdCollision` and lose CID routing, and one of them can be given a
/// [`SERVER_ID_ANNOTATION`].
pub fn server_id_from_ip(ip: IpAddr, len: u8) -> Vec<u8> {
    let octets: Vec<u8> = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let len = len as usize;
    if len <= octets.len() {
        octets[octets.len() - len..].to_vec()
    } else {
        let mut id = vec![0; len - octets.len()];
        id.extend_from_slice(&octets);
        id
    }
}

// ---- one Service -----------------------------------------------------------------------------

/// What one Service contributes, before conflicts between Services are resolved.
struct ServiceOut {
    key: ServiceKey,
    created: Option<Time>,
    local: bool,
    vips: Vec<VipConfig>,
    /// Per VIP address, the nodes with a ready endpoint (any node, not just this one).
    ready_nodes: BTreeMap<IpAddr, BTreeSet<String>>,
}

/// A TCP or UDP Service port.
struct PortSpec {
    name: String,
    port: u16,
    proto: Protocol,
}

/// The Service-wide settings every VIP of the Service shares.
struct Shared<'a> {
    key: &'a ServiceKey,
    local: bool,
    affinity: SessionAffinity,
    source_ranges: Vec<ipnet::IpNet>,
    /// `Some` when the UDP ports route QUIC by server ID.
    quic: Option<Vec<quic_lb::Config>>,
    /// Learned-CID mode on the UDP ports (server CID length); 0: off.
    learned_cid_len: u8,
}

/// One Service, with its EndpointSlices (`slices`).
fn translate_service(
    view: &ClusterView,
    slices: &[&EndpointSlice],
    svc: &Service,
    problems: &mut Vec<Problem>,
) -> Option<ServiceOut> {
    let key = service_key(svc);
    let spec = svc.spec.as_ref()?;
    let source_ranges = match parse_source_ranges(spec) {
        Ok(r) => r,
        Err(bad) => {
            problems.push(problem(
                &key,
                "InvalidSourceRange",
                format!(
                    "loadBalancerSourceRanges entries {bad:?} are not CIDRs or addresses (e.g. \
                     198.18.0.0/24, fd00::/64); the Service gets no VIPs until they are fixed, \
                     since serving it without its source restriction would open it to everyone"
                ),
            ));
            return None;
        }
    };
    let ports = service_ports(spec, &key, problems);
    unsupported_fields(spec, &key, problems);
    let quic = if ports.iter().any(|p| p.proto == Protocol::Udp) {
        quic_configs(view, svc, &key, problems)
    } else {
        None
    };
    let shared = Shared {
        key: &key,
        local: spec.external_traffic_policy.as_deref() == Some("Local"),
        affinity: match spec.session_affinity.as_deref() {
            Some("ClientIP") => SessionAffinity::ClientIp,
            _ => SessionAffinity::None,
        },
        learned_cid_len: learned_cid_len(svc, &key, quic.is_some(), problems),
        source_ranges,
        quic,
    };
    let mut out = ServiceOut {
        key: key.clone(),
        created: svc.metadata.creation_timestamp.clone(),
        local: shared.local,
        vips: Vec::new(),
        ready_nodes: BTreeMap::new(),
    };
    for ip in ingress_ips(svc, &key, problems) {
        let family: Vec<&EndpointSlice> = slices
            .iter()
            .copied()
            .filter(|s| slice_family(s) == Some(is_v6(ip)))
            .collect();
        let Some(ranges) = ranges_for(ip, &shared, problems) else {
            continue;
        };
        for port in &ports {
            let candidates = candidates(&family, port, ip, &key.0);
            let nodes = out.ready_nodes.entry(ip).or_default();
            nodes.extend(
                candidates
                    .iter()
                    .filter(|c| c.cond.ready)
                    .filter_map(|c| c.node.map(str::to_owned)),
            );
            let local_node = shared.local.then_some(view.node_name);
            let backends = select_backends(candidates, local_node);
            out.vips.push(vip_config(
                view,
                &shared,
                ip,
                port,
                ranges.clone(),
                backends,
                problems,
            ));
        }
    }
    Some(out)
}

fn vip_config(
    view: &ClusterView,
    shared: &Shared,
    ip: IpAddr,
    port: &PortSpec,
    source_ranges: Vec<ipnet::IpNet>,
    backends: Vec<(Candidate, u32)>,
    problems: &mut Vec<Problem>,
) -> VipConfig {
    let label = if port.name.is_empty() {
        port.port.to_string()
    } else {
        port.name.clone()
    };
    let name = format!(
        "{}/{}:{label}/{}",
        shared.key.0,
        shared.key.1,
        port.proto.name()
    );
    let quic = match (&shared.quic, port.proto) {
        (Some(configs), Protocol::Udp) => Some(configs),
        _ => None,
    };
    let backends = match quic {
        Some(configs) => with_server_ids(view, shared.key, &name, configs, backends, problems),
        None => backends
            .into_iter()
            .map(|(c, weight)| backend(&c, weight, Vec::new()))
            .collect(),
    };
    VipConfig {
        name: Some(name),
        addr: ip,
        ports: vec![port.port],
        protocols: vec![port.proto],
        quic: quic.is_some(),
        quic_lb: quic.cloned().unwrap_or_default(),
        // Sized to the backends.
        maglev_table_size: 0,
        learned_cid_len: match (quic, port.proto) {
            (None, Protocol::Udp) => shared.learned_cid_len,
            _ => 0,
        },
        session_affinity: shared.affinity,
        source_ranges,
        backends,
    }
}

fn backend(c: &Candidate, weight: u32, server_ids: Vec<(u8, Vec<u8>)>) -> BackendConfig {
    BackendConfig {
        addr: c.addr,
        port: c.port,
        weight,
        server_ids,
    }
}

fn service_key(svc: &Service) -> ServiceKey {
    (
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

fn problem(key: &ServiceKey, reason: &'static str, message: String) -> Problem {
    Problem {
        service: key.clone(),
        reason,
        message,
    }
}

/// The `lb.dev/learned-cid-len` annotation, checked. Learned CIDs are recorded by the
/// reverse NAT of the node the replies pass, which is the pod's node: the announcing node
/// knows them only for its own pods, so the mode needs `externalTrafficPolicy: Local`
/// (said as a problem otherwise, and still programmed).
fn learned_cid_len(
    svc: &Service,
    key: &ServiceKey,
    quic_lb: bool,
    problems: &mut Vec<Problem>,
) -> u8 {
    let Some(v) = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEARNED_CID_ANNOTATION))
    else {
        return 0;
    };
    let Some(len) = v.trim().parse::<u8>().ok().filter(|n| (1..=20).contains(n)) else {
        problems.push(problem(
            key,
            "InvalidLearnedCidLen",
            format!(
                "{LEARNED_CID_ANNOTATION} {v:?} is not a connection ID length: give the QUIC \
                 servers' CID length, 1..=20 (quic-go 4, aioquic 8)"
            ),
        ));
        return 0;
    };
    if quic_lb {
        problems.push(problem(
            key,
            "ConflictingQuicModes",
            format!(
                "{LEARNED_CID_ANNOTATION} and {QUIC_LB_SECRET_ANNOTATION} are both set; QUIC-LB \
                 routing is used, remove one of them"
            ),
        ));
        return 0;
    }
    let local = svc
        .spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        == Some("Local");
    if !local {
        problems.push(problem(
            key,
            "LearnedCidNeedsLocal",
            "learned-CID mode learns each server's CIDs on the node its replies pass (the \
             pod's node), so with externalTrafficPolicy: Cluster the announcing node knows \
             them only for its own pods; set externalTrafficPolicy: Local"
                .to_owned(),
        ));
    }
    len
}

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const AFFINITY_TIMEOUT_DEFAULT: i32 = 10_800;

/// Fields lb accepts but cannot honour exactly: said on the Service, never silently.
fn unsupported_fields(spec: &ServiceSpec, key: &ServiceKey, problems: &mut Vec<Problem>) {
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    if spec.session_affinity.as_deref() == Some("ClientIP")
        && timeout.is_some_and(|t| t != AFFINITY_TIMEOUT_DEFAULT)
    {
        problems.push(problem(
            key,
            "UnsupportedField",
            format!(
                "sessionAffinityConfig.clientIP.timeoutSeconds {} is not honoured: lb's ClientIP \
                 affinity is a hash of the client address, so it lasts as long as the set of \
                 endpoints does, with no timeout",
                timeout.unwrap_or_default()
            ),
        ));
    }
}

/// The TCP and UDP ports; others are reported and skipped.
fn service_ports(
    spec: &ServiceSpec,
    key: &ServiceKey,
    problems: &mut Vec<Problem>,
) -> Vec<PortSpec> {
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let Some(proto) = port_protocol(p, key, problems) else {
            continue;
        };
        // The API server validates the range; a port outside it cannot be a VIP.
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        if port == 0 {
            continue;
        }
        out.push(PortSpec {
            name: p.name.clone().unwrap_or_default(),
            port,
            proto,
        });
    }
    out
}

fn port_protocol(
    p: &ServicePort,
    key: &ServiceKey,
    problems: &mut Vec<Problem>,
) -> Option<Protocol> {
    match p.protocol.as_deref() {
        None | Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        Some(other) => {
            problems.push(problem(
                key,
                "UnsupportedProtocol",
                format!(
                    "port {} is {other}; lb balances TCP and UDP only, so this port is not served",
                    p.port
                ),
            ));
            None
        }
    }
}

/// The ingress addresses, each once, in order.
fn ingress_ips(svc: &Service, key: &ServiceKey, problems: &mut Vec<Problem>) -> BTreeSet<IpAddr> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let mut ips = BTreeSet::new();
    for ip in ingress
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref())
    {
        match ip.parse() {
            Ok(ip) => {
                ips.insert(ip);
            }
            Err(_) => problems.push(problem(
                key,
                "InvalidIngressAddress",
                format!("status.loadBalancer.ingress ip {ip:?} is not an IP address; skipped"),
            )),
        }
    }
    ips
}

// ---- source ranges ---------------------------------------------------------------------------

/// All ranges, or the entries that do not parse.
fn parse_source_ranges(spec: &ServiceSpec) -> Result<Vec<ipnet::IpNet>, Vec<String>> {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for entry in spec.load_balancer_source_ranges.iter().flatten() {
        match parse_range(entry) {
            Some(net) => ok.push(net),
            None => bad.push(entry.clone()),
        }
    }
    if bad.is_empty() { Ok(ok) } else { Err(bad) }
}

/// A CIDR with its host bits cleared, or a bare address as a host prefix.
fn parse_range(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Some(net.trunc());
    }
    s.parse::<IpAddr>().ok().map(ipnet::IpNet::from)
}

/// The Service's ranges of `ip`'s family, or `None` when the Service restricts sources but
/// not for this family (then the VIP must not be programmed: empty means everyone).
fn ranges_for(
    ip: IpAddr,
    shared: &Shared,
    problems: &mut Vec<Problem>,
) -> Option<Vec<ipnet::IpNet>> {
    let ranges: Vec<ipnet::IpNet> = shared
        .source_ranges
        .iter()
        .copied()
        .filter(|n| matches!(n, ipnet::IpNet::V6(_)) == is_v6(ip))
        .collect();
    if ranges.is_empty() && !shared.source_ranges.is_empty() {
        problems.push(problem(
            shared.key,
            "NoSourceRangeForFamily",
            format!(
                "loadBalancerSourceRanges has no {} entry, so {ip} is not served (serving it \
                 unrestricted would open it to everyone); add a range of that family",
                if is_v6(ip) { "IPv6" } else { "IPv4" }
            ),
        ));
        return None;
    }
    Some(ranges)
}

fn is_v6(ip: IpAddr) -> bool {
    ip.is_ipv6()
}

// ---- endpoints -------------------------------------------------------------------------------

/// The EndpointSlices by the Service they belong to ([`slice_service`]), in their order in
/// `slices`. One pass: looking each Service's slices up among all of them made a
/// translation quadratic (10,000 Services x 10,000 slices took seconds, on every change).
pub(super) fn slices_by_service<'a>(
    slices: &[&'a EndpointSlice],
) -> BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>> {
    let mut out: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if let Some(svc) = slice_service(slice) {
            out.entry(svc).or_default().push(slice);
        }
    }
    out
}

/// The Service (namespace, `kubernetes.io/service-name` label) an EndpointSlice belongs to.
pub(super) fn slice_service(slice: &EndpointSlice) -> Option<(&str, &str)> {
    let ns = slice.metadata.namespace.as_deref()?;
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((ns, name.as_str()))
}

/// `Some(is_v6)` for IPv4/IPv6 slices; `None` for FQDN (and unknown) ones.
fn slice_family(slice: &EndpointSlice) -> Option<bool> {
    match slice.address_type.as_str() {
        "IPv4" => Some(false),
        "IPv6" => Some(true),
        _ => None,
    }
}

/// An endpoint's conditions with KEP-1669's defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Conditions {
    ready: bool,
    serving: bool,
    terminating: bool,
}

impl Conditions {
    fn of(c: Option<&EndpointConditions>) -> Conditions {
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        Conditions {
            ready,
            serving: c.and_then(|c| c.serving).unwrap_or(ready),
            terminating: c.and_then(|c| c.terminating).unwrap_or(false),
        }
    }

    fn serving_terminating(self) -> bool {
        self.serving && self.terminating
    }

    /// Which listing of a duplicated address wins: ready over draining over the rest.
    fn rank(self) -> u8 {
        if self.ready {
            2
        } else if self.serving_terminating() {
            1
        } else {
            0
        }
    }
}

/// One endpoint address as a possible backend of one VIP.
#[derive(Debug, Clone)]
struct Candidate<'a> {
    addr: IpAddr,
    port: u16,
    cond: Conditions,
    node: Option<&'a str>,
    /// (namespace, name) of the pod behind the endpoint.
    pod: Option<(&'a str, &'a str)>,
}

/// Every endpoint address of `slices` (all of `ip`'s family) for Service port `port`.
fn candidates<'a>(
    slices: &[&'a EndpointSlice],
    port: &PortSpec,
    ip: IpAddr,
    namespace: &'a str,
) -> Vec<Candidate<'a>> {
    let mut slices = slices.to_vec();
    // Slice order decides ties between duplicate listings; make it independent of list order.
    slices.sort_by_key(|s| s.metadata.name.as_deref());
    let mut out = Vec::new();
    for slice in slices {
        let Some(target) = slice_port(slice, port) else {
            continue;
        };
        for ep in &slice.endpoints {
            out.extend(endpoint_candidates(ep, target, ip, namespace));
        }
    }
    out
}

/// The slice's port for the Service port: same name (absent = ""), same protocol.
fn slice_port(slice: &EndpointSlice, port: &PortSpec) -> Option<u16> {
    slice
        .ports
        .iter()
        .flatten()
        .find(|p| {
            p.name.as_deref().unwrap_or("") == port.name
                && protocol_is(p.protocol.as_deref(), port.proto)
        })
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

fn protocol_is(name: Option<&str>, proto: Protocol) -> bool {
    match proto {
        Protocol::Tcp => matches!(name, None | Some("TCP")),
        Protocol::Udp => name == Some("UDP"),
    }
}

fn endpoint_candidates<'a>(
    ep: &'a Endpoint,
    port: u16,
    ip: IpAddr,
    namespace: &'a str,
) -> impl Iterator<Item = Candidate<'a>> + 'a {
    let cond = Conditions::of(ep.conditions.as_ref());
    let pod = ep
        .target_ref
        .as_ref()
        .filter(|r| r.kind.as_deref() == Some("Pod"))
        .and_then(|r| {
            let ns = r.namespace.as_deref().unwrap_or(namespace);
            r.name.as_deref().map(|n| (ns, n))
        });
    let node = ep.node_name.as_deref();
    ep.addresses
        .iter()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .filter(move |a| is_v6(*a) == is_v6(ip))
        .map(move |addr| Candidate {
            addr,
            port,
            cond,
            node,
            pod,
        })
}

/// The backends with their weights, by address: restricted to `local_node` when given,
/// duplicates merged (most ready wins), then KEP-1669's weights.
fn select_backends<'a>(
    candidates: Vec<Candidate<'a>>,
    local_node: Option<&str>,
) -> Vec<(Candidate<'a>, u32)> {
    let mut by_addr: BTreeMap<IpAddr, Candidate> = BTreeMap::new();
    for c in candidates {
        if local_node.is_some_and(|n| c.node != Some(n)) {
            continue;
        }
        match by_addr.get(&c.addr) {
            Some(seen) if seen.cond.rank() >= c.cond.rank() => {}
            _ => {
                by_addr.insert(c.addr, c);
            }
        }
    }
    let any_ready = by_addr.values().any(|c| c.cond.ready);
    by_addr
        .into_values()
        .filter_map(|c| {
            let weight = match (any_ready, c.cond.ready, c.cond.serving_terminating()) {
                (_, true, _) => 1,
                (true, false, true) => 0,
                (false, false, true) => 1,
                (_, false, false) => return None,
            };
            Some((c, weight))
        })
        .collect()
}

// ---- QUIC-LB ---------------------------------------------------------------------------------

/// The Service's QUIC-LB configs by config ID, or `None` (with a problem) when the
/// annotation is absent or any named Secret is unusable.
fn quic_configs(
    view: &ClusterView,
    svc: &Service,
    key: &ServiceKey,
    problems: &mut Vec<Problem>,
) -> Option<Vec<quic_lb::Config>> {
    let value = svc
        .metadata
        .annotations
        .as_ref()?
        .get(QUIC_LB_SECRET_ANNOTATION)?;
    let names: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let mut bad = |message: String| {
        problems.push(problem(
            key,
            "InvalidQuicLbSecret",
            format!("{message}; the UDP ports use 4-tuple hashing instead of QUIC-LB routing"),
        ));
        None
    };
    if names.is_empty() {
        return bad(format!("{QUIC_LB_SECRET_ANNOTATION} names no Secret"));
    }
    let mut configs: Vec<quic_lb::Config> = Vec::new();
    for name in names {
        match view.quic.get(&(key.0.clone(), name.to_owned())) {
            None => return bad(format!("Secret {}/{name} does not exist", key.0)),
            Some(Err(e)) => return bad(format!("Secret {}/{name}: {e}", key.0)),
            Some(Ok(c)) if c.is_empty() => {
                return bad(format!("Secret {}/{name} holds no QUIC-LB config", key.0));
            }
            Some(Ok(c)) => configs.extend_from_slice(c),
        }
    }
    configs.sort_by_key(|c| c.config_id());
    if let Some(w) = configs
        .windows(2)
        .find(|w| w[0].config_id() == w[1].config_id())
    {
        return bad(format!(
            "two of the Secrets in {value:?} use config-id {}; configs rotating together \
             need distinct config IDs",
            w[0].config_id()
        ));
    }
    Some(configs)
}

/// Backends with their server ID under each config; colliding IDs are left out.
fn with_server_ids(
    view: &ClusterView,
    key: &ServiceKey,
    vip: &str,
    configs: &[quic_lb::Config],
    backends: Vec<(Candidate, u32)>,
    problems: &mut Vec<Problem>,
) -> Vec<BackendConfig> {
    let mut ids: Vec<Vec<(u8, Vec<u8>)>> = backends
        .iter()
        .map(|(c, _)| {
            configs
                .iter()
                .map(|cfg| (cfg.config_id(), server_id(view, key, c, cfg, problems)))
                .collect()
        })
        .collect();
    for cfg in configs {
        drop_collisions(key, vip, cfg.config_id(), &backends, &mut ids, problems);
    }
    backends
        .iter()
        .zip(ids)
        .map(|((c, weight), sids)| backend(c, *weight, sids))
        .collect()
}

/// The pod's override when valid for `cfg`, else the ID derived from its address.
fn server_id(
    view: &ClusterView,
    key: &ServiceKey,
    c: &Candidate,
    cfg: &quic_lb::Config,
    problems: &mut Vec<Problem>,
) -> Vec<u8> {
    let derived = server_id_from_ip(c.addr, cfg.server_id_len());
    let Some((ns, pod)) = c.pod else {
        return derived;
    };
    let Some(value) = view
        .server_id_overrides
        .get(&(ns.to_owned(), pod.to_owned()))
    else {
        return derived;
    };
    match parse_hex(value) {
        Some(id) if id.len() == cfg.server_id_len() as usize => id,
        _ => {
            problems.push(problem(
                key,
                "InvalidServerId",
                format!(
                    "pod {ns}/{pod}: {SERVER_ID_ANNOTATION} {value:?} is not {} octets in hex, as \
                     QUIC-LB config {} needs; using the ID derived from {}, {}",
                    cfg.server_id_len(),
                    cfg.config_id(),
                    c.addr,
                    hex(&derived)
                ),
            ));
            derived
        }
    }
}

/// Under config `config_id`, remove every server ID that more than one backend has.
fn drop_collisions(
    key: &ServiceKey,
    vip: &str,
    config_id: u8,
    backends: &[(Candidate, u32)],
    ids: &mut [Vec<(u8, Vec<u8>)>],
    problems: &mut Vec<Problem>,
) {
    let mut owners: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
    for (i, sids) in ids.iter().enumerate() {
        for (_, sid) in sids.iter().filter(|(c, _)| *c == config_id) {
            owners.entry(sid.clone()).or_default().push(i);
        }
    }
    for (sid, who) in owners.into_iter().filter(|(_, who)| who.len() > 1) {
        let addrs: Vec<String> = who
            .iter()
            .map(|i| backends[*i].0.addr.to_string())
            .collect();
        problems.push(problem(
            key,
            "ServerIdCollision",
            format!(
                "{vip}: pods {} share server ID {} under QUIC-LB config {config_id}, so none of \
                 them gets QUIC packets routed by connection ID (they take the 4-tuple \
                 fallback); give them distinct {SERVER_ID_ANNOTATION} annotations or a longer \
                 server-id-len",
                addrs.join(", "),
                hex(&sid)
            ),
        ));
        for i in who {
            ids[i].retain(|(c, s)| !(*c == config_id && *s == sid));
        }
    }
}

// ---- across Services -------------------------------------------------------------------------

/// Indexes of `outs`, oldest Service first (creation time, then namespace/name): who wins
/// every conflict between Services.
fn oldest_first(outs: &[ServiceOut]) -> Vec<usize> {
    let mut by_age: Vec<usize> = (0..outs.len()).collect();
    by_age.sort_by(|a, b| {
        (&outs[*a].created, &outs[*a].key).cmp(&(&outs[*b].created, &outs[*b].key))
    });
    by_age
}

/// Give each (address, port, protocol) to its oldest claimant; the others lose that VIP.
fn resolve_port_conflicts(outs: &mut [ServiceOut], problems: &mut Vec<Problem>) {
    let by_age = oldest_first(outs);
    let mut owner: BTreeMap<(IpAddr, u16, Protocol), ServiceKey> = BTreeMap::new();
    for i in by_age {
        let out = &mut outs[i];
        let key = out.key.clone();
        out.vips.retain(|v| {
            let id = (v.addr, v.ports[0], v.protocols[0]);
            if let Some(first) = owner.get(&id) {
                problems.push(problem(
                    &key,
                    "PortConflict",
                    format!(
                        "{} {}/{} is already served by the older Service {}/{}; not served for \
                         this one",
                        id.0,
                        id.1,
                        id.2.name(),
                        first.0,
                        first.1
                    ),
                ));
                false
            } else {
                owner.insert(id, key.clone());
                true
            }
        });
    }
}

/// The data plane holds `[capacity]` VIPs (address, port, protocol), distinct backends,
/// server IDs, QUIC-LB configs and Maglev ring slots. Older Services keep theirs; a Service
/// that would not fit entirely gets none, and says which limit, rather than the whole
/// update being refused.
fn enforce_capacity(outs: &mut [ServiceOut], capacity: &Capacity, problems: &mut Vec<Problem>) {
    let by_age = oldest_first(outs);
    let mut used = DataPlaneUse::default();
    for i in by_age {
        let out = &mut outs[i];
        let mut with = used.counts;
        let mut new_backends = BTreeSet::new();
        for v in &out.vips {
            with.add(v);
            new_backends.extend(
                v.backends
                    .iter()
                    .map(|b| (b.addr, b.port))
                    .filter(|b| !used.backends.contains(b)),
            );
        }
        with.backends += new_backends.len() as u64;
        match with.over(capacity) {
            None => {
                used.counts = with;
                used.backends.extend(new_backends);
            }
            Some(what) => {
                problems.push(problem(
                    &out.key,
                    "DataPlaneFull",
                    format!(
                        "its {} ports would take the data plane past its {what}, which older \
                         Services use; it is not served",
                        out.vips.len()
                    ),
                ));
                out.vips.clear();
            }
        }
    }
}

/// What the VIPs counted so far take of the data plane's maps.
#[derive(Default)]
struct DataPlaneUse {
    counts: UseCounts,
    backends: BTreeSet<(IpAddr, u16)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct UseCounts {
    vips: u64,
    backends: u64,
    server_ids: u64,
    quic_configs: u64,
    ring_slots: u64,
    largest_ring: u32,
}

impl UseCounts {
    /// Count one VIP (translate makes one per port and protocol), but not its backends.
    fn add(&mut self, v: &VipConfig) {
        self.vips += 1;
        if v.quic {
            self.quic_configs += v.quic_lb.len() as u64;
            self.server_ids += (v.quic_lb.len() * v.backends.len()) as u64;
        }
        let weighted = v.backends.iter().filter(|b| b.weight > 0).count() as u32;
        if weighted > 0 {
            // Whole LB_MAGLEV elements, two slots each.
            let ring =
                lb_common::maglev::ring_pool_slots(lb_common::maglev::ring_size_for(weighted));
            self.ring_slots += ring as u64;
            self.largest_ring = self.largest_ring.max(ring);
        }
    }

    /// Add `o`'s VIPs (backends are counted apart: they are shared).
    fn plus(&mut self, o: &UseCounts) {
        self.vips += o.vips;
        self.server_ids += o.server_ids;
        self.quic_configs += o.quic_configs;
        self.ring_slots += o.ring_slots;
        self.largest_ring = self.largest_ring.max(o.largest_ring);
    }

    /// Take `o`'s VIPs away again (`largest_ring` stays: an upper bound).
    fn minus(&mut self, o: &UseCounts) {
        self.vips -= o.vips;
        self.server_ids -= o.server_ids;
        self.quic_configs -= o.quic_configs;
        self.ring_slots -= o.ring_slots;
    }

    /// The first limit this use is past, named for the message.
    fn over(&self, c: &Capacity) -> Option<String> {
        let checks = [
            (self.vips, c.vips, "VIPs (address, port, protocol)", "vips"),
            (self.backends, c.backends, "distinct backends", "backends"),
            (
                self.server_ids,
                c.server_ids,
                "QUIC-LB server IDs",
                "server_ids",
            ),
            (
                self.quic_configs,
                c.quic_configs,
                "QUIC-LB configs",
                "quic_configs",
            ),
            (
                // Room to write the largest ring while it is live.
                self.ring_slots + self.largest_ring as u64,
                c.maglev_slots,
                "Maglev ring slots",
                "maglev_slots",
            ),
        ];
        checks
            .into_iter()
            .find(|(used, room, _, _)| used > &(*room as u64))
            .map(|(_, room, what, key)| format!("{room} {what} ([capacity] {key})"))
    }
}

/// Which nodes may announce each address that has VIPs.
fn announce_sets(outs: &[ServiceOut], problems: &mut Vec<Problem>) -> BTreeMap<IpAddr, Eligible> {
    let mut users: BTreeMap<IpAddr, Vec<&ServiceOut>> = BTreeMap::new();
    for out in outs {
        let addrs: BTreeSet<IpAddr> = out.vips.iter().map(|v| v.addr).collect();
        for a in addrs {
            users.entry(a).or_default().push(out);
        }
    }
    let empty = BTreeSet::new();
    let mut announce = BTreeMap::new();
    for (ip, outs) in users {
        let (local, cluster): (Vec<&ServiceOut>, Vec<&ServiceOut>) =
            outs.into_iter().partition(|o| o.local);
        let Some(nodes) = local
            .iter()
            .map(|o| o.ready_nodes.get(&ip).unwrap_or(&empty).clone())
            .reduce(|a, b| a.intersection(&b).cloned().collect())
        else {
            announce.insert(ip, Eligible::AnyNode);
            continue;
        };
        for c in &cluster {
            problems.push(mixed_policy_problem(ip, c, &local, &nodes));
        }
        announce.insert(ip, Eligible::Nodes(nodes));
    }
    announce
}

fn mixed_policy_problem(
    ip: IpAddr,
    cluster: &ServiceOut,
    local: &[&ServiceOut],
    nodes: &BTreeSet<String>,
) -> Problem {
    let names: Vec<String> = local
        .iter()
        .map(|o| format!("{}/{}", o.key.0, o.key.1))
        .collect();
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    problem(
        &cluster.key,
        "MixedTrafficPolicy",
        format!(
            "{ip} is shared with externalTrafficPolicy: Local Service(s) {}, so it is announced \
             only from their nodes [{}]; give Services sharing an address the same \
             externalTrafficPolicy",
            names.join(", "),
            nodes.join(", ")
        ),
    )
}

/// By Service, in the order found within one Service, each problem once.
fn order_problems(problems: Vec<Problem>) -> Vec<Problem> {
    let mut seen = BTreeSet::new();
    let mut out: Vec<Problem> = problems
        .into_iter()
        .filter(|p| seen.insert(p.clone()))
        .collect();
    out.sort_by(|a, b| a.service.cmp(&b.service));
    out
}

// ---- small parsers ---------------------------------------------------------------------------

fn secret_str<'a>(
    data: &'a BTreeMap<String, Vec<u8>>,
    key: &str,
) -> Result<Option<&'a str>, String> {
    data.get(key)
        .map(|v| {
            std::str::from_utf8(v)
                .map(str::trim)
                .map_err(|_| format!("{key}: not UTF-8 text"))
        })
        .transpose()
}

fn secret_u8(
    data: &BTreeMap<String, Vec<u8>>,
    key: &str,
    range: RangeInclusive<u8>,
    default: Option<u8>,
    note: &str,
) -> Result<u8, String> {
    let valid = format!("{}..={}{note}", range.start(), range.end());
    match (secret_str(data, key)?, default) {
        (None, Some(d)) => Ok(d),
        (None, None) => Err(format!("{key}: missing; give a number in {valid}")),
        (Some(s), _) => s
            .parse::<u8>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| format!("{key}: {s:?} is not in {valid}")),
    }
}

fn parse_key(s: &str) -> Option<[u8; 16]> {
    parse_hex(s)?.try_into().ok()
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.is_empty() || !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            core::v1::{
                LoadBalancerIngress, LoadBalancerStatus, ObjectReference, ServiceSpec,
                ServiceStatus,
            },
            discovery::v1::EndpointPort,
        },
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };
    use lb_common::VIP_F_QUIC_LB;

    use super::*;
    use crate::config::{Config, Interface, Plan, XdpMode};
    use crate::kube::test_support::{annotate, spec};

    const NS: &str = "web";

    // ---- constructors --------------------------------------------------------------------

    fn opt(s: &str) -> Option<String> {
        (!s.is_empty()).then(|| s.to_owned())
    }

    /// A Service in `NS` with these ingress IPs and (name, port, protocol) ports.
    fn svc(name: &str, ips: &[&str], ports: &[(&str, i32, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some(NS.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| ServicePort {
                            name: opt(n),
                            port: *p,
                            protocol: Some((*proto).into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        ips.iter()
                            .map(|ip| LoadBalancerIngress {
                                ip: Some((*ip).into()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                }),
                ..Default::default()
            }),
        }
    }

    fn local(mut s: Service) -> Service {
        spec(&mut s).external_traffic_policy = Some("Local".into());
        s
    }

    /// An EndpointSlice of Service `service` in `NS`.
    fn slice(
        service: &str,
        name: &str,
        family: &str,
        ports: &[(&str, i32, &str)],
        endpoints: Vec<Endpoint>,
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(NS.into()),
                name: Some(name.into()),
                labels: Some([(SERVICE_NAME_LABEL.to_owned(), service.to_owned())].into()),
                ..Default::default()
            },
            address_type: family.into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, proto)| EndpointPort {
                        name: opt(n),
                        port: Some(*p),
                        protocol: Some((*proto).into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            endpoints,
        }
    }

    /// A ready endpoint (conditions absent, as older controllers write them) on `node`.
    fn ep(addr: &str, node: &str) -> Endpoint {
        Endpoint {
            addresses: vec![addr.into()],
            node_name: opt(node),
            ..Default::default()
        }
    }

    fn cond(mut e: Endpoint, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        e.conditions = Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        });
        e
    }

    fn draining(e: Endpoint) -> Endpoint {
        cond(e, false, true, true)
    }

    fn pod(mut e: Endpoint, name: &str) -> Endpoint {
        e.target_ref = Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(NS.into()),
            name: Some(name.into()),
            ..Default::default()
        });
        e
    }

    fn quic_cfg(id: u8, sid_len: u8) -> quic_lb::Config {
        quic_lb::Config::new(id, sid_len, 6, None, true).unwrap()
    }

    #[derive(Default)]
    struct World {
        services: Vec<Service>,
        slices: Vec<EndpointSlice>,
        quic: BTreeMap<(String, String), Result<Vec<quic_lb::Config>, String>>,
        overrides: BTreeMap<(String, String), String>,
        capacity: Capacity,
    }

    impl World {
        fn new(services: Vec<Service>, slices: Vec<EndpointSlice>) -> World {
            World {
                services,
                slices,
                ..Default::default()
            }
        }

        fn secret(mut self, name: &str, v: Result<Vec<quic_lb::Config>, String>) -> World {
            self.quic.insert((NS.into(), name.into()), v);
            self
        }

        fn server_id(mut self, pod: &str, value: &str) -> World {
            self.overrides.insert((NS.into(), pod.into()), value.into());
            self
        }

        fn run(&self, node: &str) -> Desired {
            self.keep(node).0
        }

        /// [`translate`] of this world.
        fn keep(&self, node: &str) -> (Desired, Translation) {
            let services: Vec<&Service> = self.services.iter().collect();
            let slices: Vec<&EndpointSlice> = self.slices.iter().collect();
            translate(&ClusterView {
                services: &services,
                slices: &slices,
                node_name: node,
                capacity: &self.capacity,
                quic: &self.quic,
                server_id_overrides: &self.overrides,
            })
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> ipnet::IpNet {
        s.parse().unwrap()
    }

    fn vip<'a>(d: &'a Desired, addr: &str, port: u16, proto: Protocol) -> &'a VipConfig {
        d.vips
            .iter()
            .find(|v| v.addr == ip(addr) && v.ports == [port] && v.protocols == [proto])
            .unwrap_or_else(|| panic!("no VIP {addr} {port} {proto:?} in {:#?}", d.vips))
    }

    /// (address, port, weight) of each backend.
    fn weights(v: &VipConfig) -> Vec<(IpAddr, u16, u32)> {
        v.backends
            .iter()
            .map(|b| (b.addr, b.port, b.weight))
            .collect()
    }

    /// (address, [(config ID, server ID)]) of each backend.
    type Sids = Vec<(IpAddr, Vec<(u8, Vec<u8>)>)>;

    fn sids(v: &VipConfig) -> Sids {
        v.backends
            .iter()
            .map(|b| (b.addr, b.server_ids.clone()))
            .collect()
    }

    fn reasons(d: &Desired) -> Vec<(&str, &str)> {
        d.problems
            .iter()
            .map(|p| (p.service.1.as_str(), p.reason))
            .collect()
    }

    fn nodes(names: &[&str]) -> Eligible {
        Eligible::Nodes(names.iter().map(|n| n.to_string()).collect())
    }

    const WEB_PORTS: &[(&str, i32, &str)] = &[("https", 443, "TCP"), ("h3", 443, "UDP")];
    const POD_PORTS: &[(&str, i32, &str)] = &[("https", 8443, "TCP"), ("h3", 8443, "UDP")];

    // ---- VIPs and backends ---------------------------------------------------------------

    #[test]
    fn tcp_and_udp_on_one_port_are_two_vips_on_one_address() {
        let w = World::new(
            vec![svc("web", &["198.18.0.100"], WEB_PORTS)],
            vec![slice(
                "web",
                "web-1",
                "IPv4",
                POD_PORTS,
                vec![ep("198.19.1.2", "node-b"), ep("198.19.1.1", "node-a")],
            )],
        );
        let d = w.run("node-a");
        let backends = vec![
            BackendConfig {
                addr: ip("198.19.1.1"),
                port: 8443,
                weight: 1,
                server_ids: vec![],
            },
            BackendConfig {
                addr: ip("198.19.1.2"),
                port: 8443,
                weight: 1,
                server_ids: vec![],
            },
        ];
        let vip = |name: &str, proto| VipConfig {
            name: Some(name.into()),
            addr: ip("198.18.0.100"),
            ports: vec![443],
            protocols: vec![proto],
            quic: false,
            quic_lb: vec![],
            maglev_table_size: 0,
            learned_cid_len: 0,
            session_affinity: SessionAffinity::None,
            source_ranges: vec![],
            backends: backends.clone(),
        };
        assert_eq!(
            d,
            Desired {
                vips: vec![
                    vip("web/web:https/tcp", Protocol::Tcp),
                    vip("web/web:h3/udp", Protocol::Udp)
                ],
                announce: [(ip("198.18.0.100"), Eligible::AnyNode)].into(),
                problems: vec![],
            }
        );
    }

    #[test]
    fn named_target_port_resolves_per_slice() {
        let w = World::new(
            vec![svc(
                "app",
                &["198.18.0.10"],
                &[("http", 80, "TCP"), ("", 81, "TCP")],
            )],
            vec![
                slice(
                    "app",
                    "app-v1",
                    "IPv4",
                    &[("http", 8080, "TCP"), ("", 9000, "TCP")],
                    vec![ep("198.19.1.1", "n")],
                ),
                slice(
                    "app",
                    "app-v2",
                    "IPv4",
                    &[("http", 9090, "TCP"), ("http", 7070, "UDP")],
                    vec![ep("198.19.2.1", "n")],
                ),
                // No port named "http" (and "metrics" is not the unnamed port either).
                slice(
                    "app",
                    "app-x",
                    "IPv4",
                    &[("metrics", 9100, "TCP")],
                    vec![ep("198.19.3.1", "n")],
                ),
            ],
        );
        let d = w.run("n");
        assert_eq!(
            weights(vip(&d, "198.18.0.10", 80, Protocol::Tcp)),
            vec![(ip("198.19.1.1"), 8080, 1), (ip("198.19.2.1"), 9090, 1)]
        );
        assert_eq!(
            weights(vip(&d, "198.18.0.10", 81, Protocol::Tcp)),
            vec![(ip("198.19.1.1"), 9000, 1)]
        );
        assert_eq!(
            vip(&d, "198.18.0.10", 81, Protocol::Tcp).name.as_deref(),
            Some("web/app:81/tcp")
        );
    }

    fn conditions_world(endpoints: Vec<Endpoint>) -> Desired {
        World::new(
            vec![svc("web", &["198.18.0.100"], &[("", 80, "TCP")])],
            vec![slice(
                "web",
                "web-1",
                "IPv4",
                &[("", 8080, "TCP")],
                endpoints,
            )],
        )
        .run("n")
    }

    #[test]
    fn terminating_endpoint_drains_while_another_is_ready() {
        let d = conditions_world(vec![
            cond(ep("198.19.1.1", "n"), true, true, false),
            draining(ep("198.19.1.2", "n")),
            // Not serving: gone, ready or not, terminating or not.
            cond(ep("198.19.1.3", "n"), false, false, true),
            cond(ep("198.19.1.4", "n"), false, false, false),
        ]);
        assert_eq!(
            weights(vip(&d, "198.18.0.100", 80, Protocol::Tcp)),
            vec![(ip("198.19.1.1"), 8080, 1), (ip("198.19.1.2"), 8080, 0)]
        );
    }

    #[test]
    fn all_terminating_endpoints_keep_serving_new_flows() {
        let d = conditions_world(vec![
            draining(ep("198.19.1.1", "n")),
            draining(ep("198.19.1.2", "n")),
            cond(ep("198.19.1.3", "n"), false, false, true),
        ]);
        assert_eq!(
            weights(vip(&d, "198.18.0.100", 80, Protocol::Tcp)),
            vec![(ip("198.19.1.1"), 8080, 1), (ip("198.19.1.2"), 8080, 1)]
        );
    }

    #[test]
    fn absent_conditions_follow_kep_1669_defaults() {
        let mut not_ready = ep("198.19.1.2", "n");
        // serving absent → ready (false) → left out; terminating absent → false.
        not_ready.conditions = Some(EndpointConditions {
            ready: Some(false),
            ..Default::default()
        });
        let d = conditions_world(vec![ep("198.19.1.1", "n"), not_ready]);
        assert_eq!(
            weights(vip(&d, "198.18.0.100", 80, Protocol::Tcp)),
            vec![(ip("198.19.1.1"), 8080, 1)]
        );
        // Nothing serving: the VIP stays (new flows are dropped, not passed to the node).
        let d = conditions_world(vec![cond(ep("198.19.1.1", "n"), false, false, true)]);
        assert_eq!(vip(&d, "198.18.0.100", 80, Protocol::Tcp).backends, vec![]);
    }

    #[test]
    fn duplicate_addresses_appear_once_and_ready_wins() {
        let w = World::new(
            vec![svc("web", &["198.18.0.100"], &[("", 80, "TCP")])],
            vec![
                slice(
                    "web",
                    "web-a",
                    "IPv4",
                    &[("", 8080, "TCP")],
                    vec![draining(ep("198.19.1.1", "n")), ep("198.19.1.2", "n")],
                ),
                slice(
                    "web",
                    "web-b",
                    "IPv4",
                    &[("", 8080, "TCP")],
                    vec![ep("198.19.1.1", "n"), ep("198.19.1.2", "n")],
                ),
            ],
        );
        assert_eq!(
            weights(vip(&w.run("n"), "198.18.0.100", 80, Protocol::Tcp)),
            vec![(ip("198.19.1.1"), 8080, 1), (ip("198.19.1.2"), 8080, 1)]
        );
    }

    // ---- traffic policy and announcement -------------------------------------------------

    fn local_world() -> World {
        World::new(
            vec![local(svc("web", &["198.18.0.100"], &[("", 80, "TCP")]))],
            vec![slice(
                "web",
                "web-1",
                "IPv4",
                &[("", 8080, "TCP")],
                vec![
                    ep("198.19.1.1", "node-a"),
                    ep("198.19.1.2", "node-a"),
                    ep("198.19.2.1", "node-b"),
                    draining(ep("198.19.3.1", "node-c")),
                ],
            )],
        )
    }

    #[test]
    fn local_policy_uses_this_nodes_endpoints_and_announces_from_ready_nodes() {
        let w = local_world();
        let a = w.run("node-a");
        assert_eq!(
            weights(vip(&a, "198.18.0.100", 80, Protocol::Tcp)),
            vec![(ip("198.19.1.1"), 8080, 1), (ip("198.19.1.2"), 8080, 1)]
        );
        assert_eq!(
            a.announce,
            [(ip("198.18.0.100"), nodes(&["node-a", "node-b"]))].into()
        );
        // node-c has only a terminating pod: not eligible, but while traffic still arrives
        // it goes to that pod (the fallback is decided among local endpoints).
        let c = w.run("node-c");
        assert_eq!(
            weights(vip(&c, "198.18.0.100", 80, Protocol::Tcp)),
            vec![(ip("198.19.3.1"), 8080, 1)]
        );
        assert_eq!(c.announce, a.announce);
        let none = w.run("node-z");
        assert_eq!(
            vip(&none, "198.18.0.100", 80, Protocol::Tcp).backends,
            vec![]
        );
        assert!(a.problems.is_empty());
    }

    #[test]
    fn cluster_policy_uses_every_endpoint_and_any_node() {
        let mut w = local_world();
        spec(&mut w.services[0]).external_traffic_policy = Some("Cluster".into());
        let d = w.run("node-z");
        assert_eq!(
            weights(vip(&d, "198.18.0.100", 80, Protocol::Tcp)),
            vec![
                (ip("198.19.1.1"), 8080, 1),
                (ip("198.19.1.2"), 8080, 1),
                (ip("198.19.2.1"), 8080, 1),
                (ip("198.19.3.1"), 8080, 0),
            ]
        );
        assert_eq!(d.announce, [(ip("198.18.0.100"), Eligible::AnyNode)].into());
    }

    /// Services a, b, c share 198.18.0.100 on ports 80, 81, 82 with ready pods on the nodes given.
    fn shared_world(policies: [bool; 3]) -> World {
        let spread = [["n1", "n2"], ["n2", "n3"], ["n2", "n4"]];
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let s = svc(name, &["198.18.0.100"], &[("", 80 + i as i32, "TCP")]);
            services.push(if policies[i] { local(s) } else { s });
            slices.push(slice(
                name,
                &format!("{name}-1"),
                "IPv4",
                &[("", 8080, "TCP")],
                spread[i]
                    .iter()
                    .enumerate()
                    .map(|(j, n)| ep(&format!("198.19.{i}.{j}"), n))
                    .collect(),
            ));
        }
        World::new(services, slices)
    }

    #[test]
    fn services_sharing_an_address_intersect_their_local_nodes() {
        let d = shared_world([true, true, true]).run("n2");
        assert_eq!(d.announce, [(ip("198.18.0.100"), nodes(&["n2"]))].into());
        assert!(d.problems.is_empty());
        let d = shared_world([false, false, false]).run("n2");
        assert_eq!(d.announce, [(ip("198.18.0.100"), Eligible::AnyNode)].into());
        assert!(d.problems.is_empty());
    }

    #[test]
    fn mixed_traffic_policies_use_the_local_set_and_report_the_cluster_services() {
        let d = shared_world([true, false, false]).run("n1");
        assert_eq!(
            d.announce,
            [(ip("198.18.0.100"), nodes(&["n1", "n2"]))].into()
        );
        assert_eq!(
            reasons(&d),
            vec![("b", "MixedTrafficPolicy"), ("c", "MixedTrafficPolicy")]
        );
        assert_eq!(
            d.problems[0].message,
            "198.18.0.100 is shared with externalTrafficPolicy: Local Service(s) web/a, so it is \
             announced only from their nodes [n1, n2]; give Services sharing an address the same \
             externalTrafficPolicy"
        );
        // Every VIP is still programmed: Cluster services work from any node.
        assert_eq!(d.vips.len(), 3);
    }

    #[test]
    fn an_affinity_timeout_is_reported_as_unsupported() {
        use k8s_openapi::api::core::v1::{ClientIPConfig, SessionAffinityConfig};
        let mut s = svc("web", &["198.18.0.100"], &[("", 80, "TCP")]);
        let spec = s.spec.as_mut().unwrap();
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(60),
            }),
        });
        let pods = slice(
            "web",
            "a",
            "IPv4",
            &[("", 8080, "TCP")],
            vec![ep("198.19.0.1", "n")],
        );
        let d = World::new(vec![s.clone()], vec![pods.clone()]).run("n");
        assert_eq!(reasons(&d), vec![("web", "UnsupportedField")]);
        assert_eq!(d.vips[0].session_affinity, SessionAffinity::ClientIp);
        // The default timeout is what lb does anyway (while the endpoints last): no problem.
        s.spec.as_mut().unwrap().session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(10_800),
            }),
        });
        let d = World::new(vec![s], vec![pods]).run("n");
        assert!(d.problems.is_empty(), "{:?}", d.problems);
    }

    /// `n` Services with TCP and UDP on port 80 and one pod each, created in order.
    fn dual_protocol_services(n: usize) -> World {
        use k8s_openapi::jiff::Timestamp;
        let ports = [("", 80, "TCP"), ("", 80, "UDP")];
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for i in 0..n {
            let name = format!("s{i:02}");
            let ip = format!("198.18.1.{i}");
            let mut s = svc(&name, &[ip.as_str()], &ports);
            s.metadata.creation_timestamp =
                Some(Time(Timestamp::from_second(1_000 + i as i64).unwrap()));
            services.push(s);
            let pod = format!("198.19.1.{i}");
            slices.push(slice(
                &name,
                &name,
                "IPv4",
                &[("", 8080, "TCP"), ("", 8080, "UDP")],
                vec![ep(&pod, "n")],
            ));
        }
        World::new(services, slices)
    }

    #[test]
    fn services_past_the_data_plane_capacity_are_refused_youngest_first() {
        let mut w = dual_protocol_services(33);
        w.capacity.vips = 64;
        let d = w.run("n");
        assert_eq!(d.vips.len(), 64);
        assert_eq!(reasons(&d), vec![("s32", "DataPlaneFull")]);
        assert!(
            d.problems[0].message.contains("[capacity] vips"),
            "{:?}",
            d.problems
        );
        assert!(!d.announce.contains_key(&ip("198.18.1.32")));
    }

    #[test]
    fn services_whose_rings_do_not_fit_the_pool_are_refused() {
        // Two 257-slot rings per Service (258 slots: whole pairs), plus room to replace
        // one: 3 x 258 fits one Service.
        let mut w = dual_protocol_services(2);
        w.capacity.maglev_slots = 3 * (lb_common::MAGLEV_RING_MIN + 1);
        let d = w.run("n");
        assert_eq!(d.vips.len(), 2);
        assert_eq!(reasons(&d), vec![("s01", "DataPlaneFull")]);
        assert!(
            d.problems[0].message.contains("[capacity] maglev_slots"),
            "{:?}",
            d.problems
        );
    }

    #[test]
    fn learned_cid_annotation_sets_the_mode_on_udp_ports() {
        let ports = [("https", 443, "TCP"), ("h3", 443, "UDP")];
        let pods = slice(
            "web",
            "a",
            "IPv4",
            &[("https", 8443, "TCP"), ("h3", 8443, "UDP")],
            vec![ep("198.19.0.1", "n")],
        );
        let run = |s: Service| World::new(vec![s], vec![pods.clone()]).run("n");
        let lens = |d: &Desired| d.vips.iter().map(|v| v.learned_cid_len).collect::<Vec<_>>();

        let s = local(annotate(
            svc("web", &["198.18.0.100"], &ports),
            LEARNED_CID_ANNOTATION,
            "4",
        ));
        let d = run(s);
        assert_eq!(lens(&d), [0, 4], "TCP off, UDP learned");
        assert!(d.problems.is_empty(), "{:?}", d.problems);

        // Cluster policy: programmed, and the Service says why it will mostly not help.
        let d = run(annotate(
            svc("web", &["198.18.0.100"], &ports),
            LEARNED_CID_ANNOTATION,
            "8",
        ));
        assert_eq!(lens(&d), [0, 8]);
        assert_eq!(reasons(&d), vec![("web", "LearnedCidNeedsLocal")]);

        let d = run(local(annotate(
            svc("web", &["198.18.0.100"], &ports),
            LEARNED_CID_ANNOTATION,
            "21",
        )));
        assert_eq!(lens(&d), [0, 0]);
        assert_eq!(reasons(&d), vec![("web", "InvalidLearnedCidLen")]);

        // With a QUIC-LB Secret as well, QUIC-LB wins.
        let both = annotate(
            local(annotate(
                svc("web", &["198.18.0.100"], &ports),
                LEARNED_CID_ANNOTATION,
                "4",
            )),
            QUIC_LB_SECRET_ANNOTATION,
            "web-quic",
        );
        let d = World::new(vec![both], vec![pods.clone()])
            .secret("web-quic", Ok(vec![quic_cfg(0, 1)]))
            .run("n");
        assert_eq!(lens(&d), [0, 0]);
        assert!(d.vips[1].quic);
        assert_eq!(reasons(&d), vec![("web", "ConflictingQuicModes")]);
    }

    #[test]
    fn a_pod_port_answers_for_any_number_of_vips() {
        use k8s_openapi::jiff::Timestamp;
        // Two Services on two addresses select the same pods and port (say a public and a
        // private address in front of one ingress): both get the pod. The reverse NAT
        // keeps each flow's VIP, so each client hears from the address it used.
        let mut old = svc(
            "zz-old",
            &["198.18.0.100"],
            &[("", 80, "TCP"), ("", 443, "UDP")],
        );
        old.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_000).unwrap()));
        let mut new = svc(
            "aa-new",
            &["198.18.0.101"],
            &[("", 80, "TCP"), ("", 81, "UDP")],
        );
        new.metadata.creation_timestamp = Some(Time(Timestamp::from_second(2_000).unwrap()));
        let pods = |name: &str| {
            slice(
                name,
                name,
                "IPv4",
                &[("", 8080, "TCP"), ("", 8080, "UDP")],
                vec![ep("198.19.0.1", "n")],
            )
        };
        let d = World::new(vec![new, old], vec![pods("zz-old"), pods("aa-new")]).run("n");
        let pod = vec![(ip("198.19.0.1"), 8080, 1)];
        assert_eq!(
            d.vips
                .iter()
                .map(|v| (v.name.as_deref().unwrap(), weights(v)))
                .collect::<Vec<_>>(),
            vec![
                ("web/zz-old:80/tcp", pod.clone()),
                ("web/zz-old:443/udp", pod.clone()),
                ("web/aa-new:80/tcp", pod.clone()),
                ("web/aa-new:81/udp", pod),
            ]
        );
        assert_eq!(reasons(&d), Vec::<(&str, &str)>::new());
    }

    #[test]
    fn older_service_keeps_a_contested_port() {
        use k8s_openapi::jiff::Timestamp;
        let mut old = svc("zz-old", &["198.18.0.100"], &[("", 80, "TCP")]);
        old.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_000).unwrap()));
        let mut new = svc(
            "aa-new",
            &["198.18.0.100"],
            &[("", 80, "TCP"), ("", 81, "TCP")],
        );
        new.metadata.creation_timestamp = Some(Time(Timestamp::from_second(2_000).unwrap()));
        let w = World::new(
            vec![new, old],
            vec![
                slice(
                    "zz-old",
                    "o",
                    "IPv4",
                    &[("", 8080, "TCP")],
                    vec![ep("198.19.0.1", "n")],
                ),
                slice(
                    "aa-new",
                    "n",
                    "IPv4",
                    &[("", 8080, "TCP")],
                    vec![ep("198.19.0.2", "n")],
                ),
            ],
        );
        let d = w.run("n");
        assert_eq!(
            d.vips
                .iter()
                .map(|v| (v.name.as_deref().unwrap(), weights(v)))
                .collect::<Vec<_>>(),
            vec![
                ("web/zz-old:80/tcp", vec![(ip("198.19.0.1"), 8080, 1)]),
                ("web/aa-new:81/tcp", vec![(ip("198.19.0.2"), 8080, 1)]),
            ]
        );
        assert_eq!(reasons(&d), vec![("aa-new", "PortConflict")]);
        assert_eq!(
            d.problems[0].message,
            "198.18.0.100 80/tcp is already served by the older Service web/zz-old; not served for this one"
        );
    }

    // ---- affinity and source ranges ------------------------------------------------------

    fn dual_stack(name: &str) -> (Service, Vec<EndpointSlice>) {
        let s = svc(name, &["198.18.0.100", "fd00::100"], &[("", 80, "TCP")]);
        let slices = vec![
            slice(
                name,
                "v4",
                "IPv4",
                &[("", 8080, "TCP")],
                vec![ep("198.19.1.1", "n")],
            ),
            slice(
                name,
                "v6",
                "IPv6",
                &[("", 8080, "TCP")],
                vec![ep("fd00:1::1", "n")],
            ),
        ];
        (s, slices)
    }

    #[test]
    fn client_ip_affinity_and_source_ranges_per_family() {
        let (mut s, slices) = dual_stack("web");
        spec(&mut s).session_affinity = Some("ClientIP".into());
        spec(&mut s).load_balancer_source_ranges = Some(vec![
            "198.18.10.0/24".into(),
            "198.18.20.5".into(),
            " 198.18.30.7/24 ".into(),
            "fd00:1::/64".into(),
        ]);
        let d = World::new(vec![s], slices).run("n");
        let v4 = vip(&d, "198.18.0.100", 80, Protocol::Tcp);
        assert_eq!(v4.session_affinity, SessionAffinity::ClientIp);
        assert_eq!(
            v4.source_ranges,
            vec![
                net("198.18.10.0/24"),
                net("198.18.20.5/32"),
                net("198.18.30.0/24")
            ]
        );
        let v6 = vip(&d, "fd00::100", 80, Protocol::Tcp);
        assert_eq!(v6.session_affinity, SessionAffinity::ClientIp);
        assert_eq!(v6.source_ranges, vec![net("fd00:1::/64")]);
        assert!(d.problems.is_empty());
    }

    #[test]
    fn an_unparsable_source_range_fails_closed() {
        let (mut s, mut slices) = dual_stack("web");
        spec(&mut s).load_balancer_source_ranges = Some(vec![
            "198.18.10.0/24".into(),
            "198.18.10.0/33".into(),
            "lan".into(),
        ]);
        let (other, more) = dual_stack("other");
        slices.extend(more);
        let d = World::new(vec![s, other], slices).run("n");
        assert!(
            d.vips
                .iter()
                .all(|v| v.name.as_deref().unwrap().starts_with("web/other"))
        );
        assert_eq!(d.vips.len(), 2);
        assert_eq!(reasons(&d), vec![("web", "InvalidSourceRange")]);
        assert!(
            d.problems[0]
                .message
                .contains(r#"["198.18.10.0/33", "lan"]"#)
        );
        assert_eq!(d.announce.len(), 2);
    }

    #[test]
    fn a_family_without_source_ranges_is_not_opened() {
        let (mut s, slices) = dual_stack("web");
        spec(&mut s).load_balancer_source_ranges = Some(vec!["198.18.10.0/24".into()]);
        let d = World::new(vec![s], slices).run("n");
        assert_eq!(
            d.vips.iter().map(|v| v.addr).collect::<Vec<_>>(),
            vec![ip("198.18.0.100")]
        );
        assert_eq!(d.announce, [(ip("198.18.0.100"), Eligible::AnyNode)].into());
        assert_eq!(reasons(&d), vec![("web", "NoSourceRangeForFamily")]);
    }

    // ---- QUIC-LB -------------------------------------------------------------------------

    fn quic_world(endpoints: Vec<Endpoint>, family: &str, vip_ip: &str) -> World {
        World::new(
            vec![annotate(
                svc("web", &[vip_ip], WEB_PORTS),
                QUIC_LB_SECRET_ANNOTATION,
                "web-quic",
            )],
            vec![slice("web", "web-1", family, POD_PORTS, endpoints)],
        )
        .secret("web-quic", Ok(vec![quic_cfg(0, 2)]))
    }

    #[test]
    fn quic_udp_port_gets_ids_derived_from_ipv4_addresses() {
        let d = quic_world(
            vec![ep("198.19.3.7", "n"), draining(ep("198.19.4.9", "n"))],
            "IPv4",
            "198.18.0.100",
        )
        .run("n");
        let udp = vip(&d, "198.18.0.100", 443, Protocol::Udp);
        assert!(udp.quic);
        assert_eq!(udp.quic_lb, vec![quic_cfg(0, 2)]);
        // The draining backend keeps its server ID: its connections still route to it.
        assert_eq!(
            sids(udp),
            vec![
                (ip("198.19.3.7"), vec![(0, vec![3, 7])]),
                (ip("198.19.4.9"), vec![(0, vec![4, 9])]),
            ]
        );
        assert_eq!(weights(udp)[1].2, 0);
        let tcp = vip(&d, "198.18.0.100", 443, Protocol::Tcp);
        assert!(!tcp.quic);
        assert_eq!(tcp.quic_lb, vec![]);
        assert!(tcp.backends.iter().all(|b| b.server_ids.is_empty()));
        assert!(d.problems.is_empty());
    }

    #[test]
    fn quic_rotation_derives_ids_from_ipv6_addresses_per_config() {
        let mut w = quic_world(vec![ep("fd00:1::a:b0c", "n")], "IPv6", "fd00::100");
        w.services[0] = annotate(
            w.services[0].clone(),
            QUIC_LB_SECRET_ANNOTATION,
            "web-quic-new, web-quic",
        );
        let w = w.secret("web-quic-new", Ok(vec![quic_cfg(1, 3)]));
        let d = w.run("n");
        let udp = vip(&d, "fd00::100", 443, Protocol::Udp);
        assert_eq!(udp.quic_lb, vec![quic_cfg(0, 2), quic_cfg(1, 3)]);
        assert_eq!(
            sids(udp),
            vec![(
                ip("fd00:1::a:b0c"),
                vec![(0, vec![0x0b, 0x0c]), (1, vec![0x0a, 0x0b, 0x0c])]
            )]
        );
        assert!(d.problems.is_empty());
    }

    #[test]
    fn pod_annotation_overrides_the_derived_id_and_a_bad_one_falls_back() {
        let w = quic_world(
            vec![
                pod(ep("198.19.3.7", "n"), "web-0"),
                pod(ep("198.19.3.8", "n"), "web-1"),
                pod(ep("198.19.3.9", "n"), "web-2"),
            ],
            "IPv4",
            "198.18.0.100",
        )
        .server_id("web-0", "BEEF")
        .server_id("web-1", "xyzw")
        .server_id("web-2", "abcdef");
        let d = w.run("n");
        assert_eq!(
            sids(vip(&d, "198.18.0.100", 443, Protocol::Udp)),
            vec![
                (ip("198.19.3.7"), vec![(0, vec![0xbe, 0xef])]),
                (ip("198.19.3.8"), vec![(0, vec![3, 8])]),
                (ip("198.19.3.9"), vec![(0, vec![3, 9])]),
            ]
        );
        assert_eq!(
            reasons(&d),
            vec![("web", "InvalidServerId"), ("web", "InvalidServerId")]
        );
        assert_eq!(
            d.problems[0].message,
            "pod web/web-1: lb.dev/quic-lb-server-id \"xyzw\" is not 2 octets in hex, as QUIC-LB \
             config 0 needs; using the ID derived from 198.19.3.8, 0308"
        );
    }

    #[test]
    fn colliding_server_ids_lose_cid_routing_under_that_config_only() {
        let w = quic_world(
            vec![
                ep("198.19.1.7", "n"),
                pod(ep("198.19.2.7", "n"), "web-1"),
                ep("198.19.2.8", "n"),
            ],
            "IPv4",
            "198.18.0.100",
        );
        let mut w = w.server_id("web-1", "0107");
        w.services[0] = annotate(w.services[0].clone(), QUIC_LB_SECRET_ANNOTATION, "a,b");
        let w = w
            .secret("a", Ok(vec![quic_cfg(0, 1)]))
            .secret("b", Ok(vec![quic_cfg(1, 2)]));
        let d = w.run("n");
        // Config 0 (1 octet): .1.7 and .2.7 both derive 07 ("0107" is 2 octets: invalid for
        // it). Config 1 (2 octets): .1.7 derives 0107, .2.7's override is 0107.
        assert_eq!(
            sids(vip(&d, "198.18.0.100", 443, Protocol::Udp)),
            vec![
                (ip("198.19.1.7"), vec![]),
                (ip("198.19.2.7"), vec![]),
                (ip("198.19.2.8"), vec![(0, vec![8]), (1, vec![2, 8])]),
            ]
        );
        assert_eq!(
            reasons(&d),
            vec![
                ("web", "InvalidServerId"),
                ("web", "ServerIdCollision"),
                ("web", "ServerIdCollision")
            ]
        );
        assert_eq!(
            d.problems[1].message,
            "web/web:h3/udp: pods 198.19.1.7, 198.19.2.7 share server ID 07 under QUIC-LB config \
             0, so none of them gets QUIC packets routed by connection ID (they take the 4-tuple \
             fallback); give them distinct lb.dev/quic-lb-server-id annotations or a longer \
             server-id-len"
        );
    }

    #[test]
    fn missing_or_bad_secret_turns_quic_off_but_keeps_serving() {
        let endpoints = vec![ep("198.19.3.7", "n")];
        let missing = World {
            quic: BTreeMap::new(),
            ..quic_world(endpoints.clone(), "IPv4", "198.18.0.100")
        };
        let bad = quic_world(endpoints, "IPv4", "198.18.0.100").secret(
            "web-quic",
            Err("nonce-len: missing; give a number in 4..=18".into()),
        );
        for (w, message) in [
            (
                missing,
                "Secret web/web-quic does not exist; the UDP ports use 4-tuple hashing instead \
                 of QUIC-LB routing",
            ),
            (
                bad,
                "Secret web/web-quic: nonce-len: missing; give a number in 4..=18; the UDP ports \
                 use 4-tuple hashing instead of QUIC-LB routing",
            ),
        ] {
            let d = w.run("n");
            let udp = vip(&d, "198.18.0.100", 443, Protocol::Udp);
            assert!(!udp.quic);
            assert_eq!(udp.quic_lb, vec![]);
            assert_eq!(sids(udp), vec![(ip("198.19.3.7"), vec![])]);
            assert_eq!(weights(udp), vec![(ip("198.19.3.7"), 8443, 1)]);
            assert_eq!(reasons(&d), vec![("web", "InvalidQuicLbSecret")]);
            assert_eq!(d.problems[0].message, message);
        }
    }

    #[test]
    fn duplicate_config_ids_across_secrets_turn_quic_off() {
        let mut w = quic_world(vec![ep("198.19.3.7", "n")], "IPv4", "198.18.0.100");
        w.services[0] = annotate(w.services[0].clone(), QUIC_LB_SECRET_ANNOTATION, "a,b");
        let d = w
            .secret("a", Ok(vec![quic_cfg(2, 2)]))
            .secret("b", Ok(vec![quic_cfg(2, 3)]))
            .run("n");
        assert!(!vip(&d, "198.18.0.100", 443, Protocol::Udp).quic);
        assert_eq!(reasons(&d), vec![("web", "InvalidQuicLbSecret")]);
    }

    #[test]
    fn tcp_only_service_ignores_the_quic_annotation() {
        let s = annotate(
            svc("web", &["198.18.0.100"], &[("https", 443, "TCP")]),
            QUIC_LB_SECRET_ANNOTATION,
            "nowhere",
        );
        let w = World::new(
            vec![s],
            vec![slice(
                "web",
                "w",
                "IPv4",
                POD_PORTS,
                vec![ep("198.19.3.7", "n")],
            )],
        );
        let d = w.run("n");
        assert!(!d.vips[0].quic);
        assert!(d.problems.is_empty());
    }

    // ---- protocols, ingress, families ----------------------------------------------------

    #[test]
    fn sctp_ports_are_reported_and_skipped() {
        let w = World::new(
            vec![svc(
                "web",
                &["198.18.0.100"],
                &[("sig", 3868, "SCTP"), ("", 80, "TCP")],
            )],
            vec![slice(
                "web",
                "w",
                "IPv4",
                &[("sig", 3868, "SCTP"), ("", 8080, "TCP")],
                vec![ep("198.19.3.7", "n")],
            )],
        );
        let d = w.run("n");
        assert_eq!(d.vips.len(), 1);
        assert_eq!(d.vips[0].ports, vec![80]);
        assert_eq!(reasons(&d), vec![("web", "UnsupportedProtocol")]);
        assert_eq!(
            d.problems[0].message,
            "port 3868 is SCTP; lb balances TCP and UDP only, so this port is not served"
        );
    }

    #[test]
    fn hostname_only_ingress_entries_are_skipped() {
        let mut s = svc("web", &["198.18.0.100"], &[("", 80, "TCP")]);
        let ingress = s
            .status
            .as_mut()
            .and_then(|st| st.load_balancer.as_mut())
            .and_then(|lb| lb.ingress.as_mut())
            .unwrap();
        ingress.insert(
            0,
            LoadBalancerIngress {
                hostname: Some("web.example".into()),
                ..Default::default()
            },
        );
        let mut only_host = s.clone();
        only_host.metadata.name = Some("host".into());
        only_host
            .status
            .as_mut()
            .unwrap()
            .load_balancer
            .as_mut()
            .unwrap()
            .ingress
            .as_mut()
            .unwrap()
            .truncate(1);
        let w = World::new(
            vec![s, only_host],
            vec![
                slice(
                    "web",
                    "w",
                    "IPv4",
                    &[("", 8080, "TCP")],
                    vec![ep("198.19.3.7", "n")],
                ),
                slice(
                    "host",
                    "h",
                    "IPv4",
                    &[("", 8080, "TCP")],
                    vec![ep("198.19.3.8", "n")],
                ),
            ],
        );
        let d = w.run("n");
        assert_eq!(
            d.vips
                .iter()
                .map(|v| v.name.clone().unwrap())
                .collect::<Vec<_>>(),
            vec!["web/web:80/tcp"]
        );
        assert!(d.problems.is_empty());
    }

    #[test]
    fn dual_stack_service_gets_a_vip_per_family_with_that_familys_backends() {
        let (s, slices) = dual_stack("web");
        let d = World::new(vec![s], slices).run("n");
        assert_eq!(
            d.vips
                .iter()
                .map(|v| (v.addr, weights(v)))
                .collect::<Vec<_>>(),
            vec![
                (ip("198.18.0.100"), vec![(ip("198.19.1.1"), 8080, 1)]),
                (ip("fd00::100"), vec![(ip("fd00:1::1"), 8080, 1)]),
            ]
        );
        assert_eq!(
            d.announce,
            [
                (ip("198.18.0.100"), Eligible::AnyNode),
                (ip("fd00::100"), Eligible::AnyNode)
            ]
            .into()
        );
        // A family without slices (here IPv6, and FQDN slices never count) is programmed
        // with no backends, so the node drops its new flows rather than passing them on.
        let (s, mut slices) = dual_stack("web");
        slices[1].address_type = "FQDN".into();
        let d = World::new(vec![s], slices).run("n");
        assert_eq!(
            d.vips
                .iter()
                .map(|v| (v.addr, v.backends.len()))
                .collect::<Vec<_>>(),
            vec![(ip("198.18.0.100"), 1), (ip("fd00::100"), 0)]
        );
    }

    #[test]
    fn output_does_not_depend_on_input_order() {
        let (mut s1, mut slices) = dual_stack("b");
        spec(&mut s1).ports.as_mut().unwrap()[0].port = 81;
        let (s2, more) = dual_stack("a");
        slices.extend(more);
        let forward = World::new(vec![s1.clone(), s2.clone()], slices.clone()).run("n");
        slices.reverse();
        let backward = World::new(vec![s2, s1], slices).run("n");
        assert_eq!(forward, backward);
        assert_eq!(
            forward
                .vips
                .iter()
                .map(|v| v.name.clone().unwrap())
                .collect::<Vec<_>>(),
            vec![
                "web/a:80/tcp",
                "web/b:81/tcp",
                "web/a:80/tcp",
                "web/b:81/tcp"
            ]
        );
    }

    // ---- helpers -------------------------------------------------------------------------

    #[test]
    fn server_id_from_ip_takes_the_last_octets() {
        assert_eq!(server_id_from_ip(ip("198.18.3.7"), 2), vec![0x03, 0x07]);
        assert_eq!(server_id_from_ip(ip("198.18.3.7"), 4), vec![198, 18, 3, 7]);
        assert_eq!(
            server_id_from_ip(ip("198.18.3.7"), 6),
            vec![0, 0, 198, 18, 3, 7]
        );
        assert_eq!(
            server_id_from_ip(ip("fd00::a:b0c"), 3),
            vec![0x0a, 0x0b, 0x0c]
        );
        assert_eq!(
            server_id_from_ip(ip("fd00::a:b0c"), 15),
            [&[0; 12][..], &[0x0a, 0x0b, 0x0c]].concat()
        );
    }

    fn secret(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn quic_lb_secret_parses_with_defaults() {
        assert_eq!(
            parse_quic_lb_secret(&secret(&[("server-id-len", "2"), ("nonce-len", "6\n")])),
            Ok(quic_lb::Config::new(0, 2, 6, None, true).unwrap())
        );
        let mut key = [0u8; 16];
        key.iter_mut().enumerate().for_each(|(i, k)| *k = i as u8);
        assert_eq!(
            parse_quic_lb_secret(&secret(&[
                ("config-id", "6"),
                ("server-id-len", "3"),
                ("nonce-len", "13"),
                ("key", "000102030405060708090A0b0c0d0e0f\n"),
                ("encode-length", "false"),
            ])),
            Ok(quic_lb::Config::new(6, 3, 13, Some(key), false).unwrap())
        );
    }

    #[test]
    fn quic_lb_secret_errors_name_the_key_and_range() {
        let base = [("server-id-len", "2"), ("nonce-len", "6")];
        let with = |k: &'static str, v: &'static str| {
            let mut s = secret(&base);
            s.insert(k.into(), v.as_bytes().to_vec());
            parse_quic_lb_secret(&s).unwrap_err()
        };
        assert_eq!(
            with("config-id", "7"),
            "config-id: \"7\" is not in 0..=6 (7 marks unroutable connection IDs)"
        );
        assert_eq!(
            with("server-id-len", "0"),
            "server-id-len: \"0\" is not in 1..=15"
        );
        assert_eq!(
            with("nonce-len", "x"),
            "nonce-len: \"x\" is not in 4..=18 (and server-id-len + nonce-len <= 19)"
        );
        assert_eq!(
            with("key", "0001"),
            "key: not 32 hex digits (a 16-octet AES-128 key); omit the key for plaintext \
             connection IDs"
        );
        assert_eq!(
            with("encode-length", "yes"),
            "encode-length: \"yes\" is not \"true\" or \"false\" (default true)"
        );
        assert!(with("nonce-len", "18").starts_with("server-id-len/nonce-len: "));
        assert_eq!(
            parse_quic_lb_secret(&secret(&[("nonce-len", "6")])).unwrap_err(),
            "server-id-len: missing; give a number in 1..=15"
        );
    }

    // ---- the output is a consumable model ------------------------------------------------

    #[test]
    fn plan_build_accepts_the_output() {
        let w = quic_world(
            vec![
                ep("198.19.1.7", "n"),
                ep("198.19.2.7", "n"), // collides with .1.7 under a 1-octet config
                ep("198.19.2.8", "n"),
                draining(ep("198.19.2.9", "n")),
            ],
            "IPv4",
            "198.18.0.100",
        )
        .secret("web-quic", Ok(vec![quic_cfg(0, 1)]));
        let d = w.run("n");
        assert_eq!(reasons(&d), vec![("web", "ServerIdCollision")]);
        let config = Config {
            file: "kubernetes".into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                xdp_mode: XdpMode::Native,
            }],
            backend_interfaces: vec!["eth1".into()],
            metrics_addr: None,
            vips: d.vips,
            kubernetes: Default::default(),
            reverse_nat: Default::default(),
            capacity: Default::default(),
            bgp: Default::default(),
            announce: Default::default(),
        };
        let plan = Plan::build(&config, None).expect("the translated model builds a plan");
        assert_eq!(plan.vips.len(), 2);
        assert_eq!(plan.backends.len(), 4);
        let udp = plan
            .vips
            .iter()
            .find(|v| v.key.proto == Protocol::Udp)
            .unwrap();
        assert_eq!(udp.flags, VIP_F_QUIC_LB);
        // Sized to its three backends: the smallest prime of at least 3 x 128.
        assert_eq!(udp.ring_size, 389);
        assert_eq!(udp.quic, vec![quic_cfg(0, 1)]);
        let id = |a: &str| plan.backends.iter().find(|b| b.addr == ip(a)).unwrap().id;
        assert_eq!(
            udp.server_ids
                .iter()
                .map(|s| (s.config_id, s.server_id.clone(), s.backend))
                .collect::<Vec<_>>(),
            vec![
                (0, vec![8], id("198.19.2.8")),
                (0, vec![9], id("198.19.2.9"))
            ]
        );
        let tcp = plan
            .vips
            .iter()
            .find(|v| v.key.proto == Protocol::Tcp)
            .unwrap();
        assert_eq!(tcp.flags, 0);
        assert!(tcp.server_ids.is_empty());
        assert_eq!(tcp.backends.iter().filter(|b| b.weight == 0).count(), 1);
    }

    // ---- translating only the Services whose EndpointSlices changed ----------------------

    impl World {
        /// The lookups of this world; the Services and slices are passed to the update.
        fn view<'a>(&'a self, node: &'a str) -> ClusterView<'a> {
            ClusterView {
                services: &[],
                slices: &[],
                node_name: node,
                capacity: &self.capacity,
                quic: &self.quic,
                server_id_overrides: &self.overrides,
            }
        }

        /// `Translation::update` for Service `name` with its slices in this world.
        fn update(&self, t: &mut Translation, name: &str) -> Option<Vec<VipConfig>> {
            let svc = self
                .services
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name))
                .unwrap();
            let slices: Vec<&EndpointSlice> = self
                .slices
                .iter()
                .filter(|s| s.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL] == name)
                .collect();
            t.update(&self.view("n1"), &[(svc, slices)])
        }
    }

    /// The VIPs of Service `name` in a full translation.
    fn vips_of(d: &Desired, name: &str) -> Vec<VipConfig> {
        d.vips
            .iter()
            .filter(|v| {
                v.name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&format!("{NS}/{name}:")))
            })
            .cloned()
            .collect()
    }

    /// Three Services: plain TCP+UDP, QUIC-LB with server ID overrides, and Local.
    fn churn_world() -> World {
        let ports = [("https", 443, "TCP"), ("quic", 443, "UDP")];
        let quic = annotate(
            svc("q", &["198.18.0.2"], &ports),
            QUIC_LB_SECRET_ANNOTATION,
            "qlb",
        );
        let eps = |n: u8| -> Vec<Endpoint> {
            (1..=n)
                .map(|i| {
                    pod(
                        ep(&format!("198.19.0.{i}"), &format!("n{}", i % 3)),
                        &format!("p{i}"),
                    )
                })
                .collect()
        };
        World::new(
            vec![
                svc("a", &["198.18.0.1"], &ports),
                quic,
                local(svc("l", &["198.18.0.3"], &[("https", 443, "TCP")])),
            ],
            vec![
                slice(
                    "a",
                    "a-1",
                    "IPv4",
                    &[("https", 8443, "TCP"), ("quic", 8443, "UDP")],
                    eps(4),
                ),
                slice(
                    "q",
                    "q-1",
                    "IPv4",
                    &[("https", 8443, "TCP"), ("quic", 8443, "UDP")],
                    eps(3),
                ),
                slice("l", "l-1", "IPv4", &[("https", 8443, "TCP")], eps(3)),
            ],
        )
        .secret("qlb", Ok(vec![quic_cfg(0, 2)]))
        .server_id("p1", "0a0b")
    }

    #[test]
    fn an_endpoint_change_translates_as_a_full_translation_does() {
        let mut w = churn_world();
        let (_, mut t) = w.keep("n1");
        type Edit = Box<dyn Fn(&mut Vec<Endpoint>)>;
        let edits: Vec<(&str, Edit)> = vec![
            (
                "a",
                Box::new(|e| e[0].addresses = vec!["198.19.1.9".into()]),
            ),
            ("a", Box::new(|e| e.push(ep("198.19.1.10", "n2")))),
            ("a", Box::new(|e| e[1] = draining(e[1].clone()))),
            (
                "q",
                Box::new(|e| e.push(pod(ep("198.19.1.11", "n1"), "p11"))),
            ),
            (
                "q",
                Box::new(|e| {
                    e.remove(0);
                }),
            ),
            ("a", Box::new(|e| e.clear())),
            // Local: ready endpoints still on the same nodes (n1, n2 and n0).
            ("l", Box::new(|e| e.push(ep("198.19.1.12", "n1")))),
        ];
        for (step, (name, edit)) in edits.iter().enumerate() {
            let s = w
                .slices
                .iter_mut()
                .find(|s| s.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL] == *name)
                .unwrap();
            edit(&mut s.endpoints);
            let full = w.run("n1");
            let got = w
                .update(&mut t, name)
                .unwrap_or_else(|| panic!("step {step}: the update declined"));
            assert_eq!(got, vips_of(&full, name), "step {step}");
            assert!(!got.is_empty(), "step {step}");
        }
    }

    #[test]
    fn an_endpoint_change_that_a_service_alone_cannot_judge_is_declined() {
        // Local: the nodes with a ready endpoint decide who announces.
        let mut w = churn_world();
        let (_, mut t) = w.keep("n1");
        w.slices[2].endpoints.push(ep("198.19.1.12", "n7"));
        assert_eq!(w.update(&mut t, "l"), None);

        // A new problem on the Service (an override that is not hex).
        let mut w = churn_world().server_id("p2", "zz");
        let (_, mut t) = w.keep("n1");
        let before = w.update(&mut t, "q");
        assert!(before.is_some(), "an unchanged Service is not declined");
        w.overrides.insert((NS.into(), "p3".into()), "yy".into());
        assert_eq!(w.update(&mut t, "q"), None);

        // A Service that lost a port to an older one: a cross-Service problem.
        let mut w = churn_world();
        let mut clash = svc("b", &["198.18.0.1"], &[("https", 443, "TCP")]);
        // Created later than "a" (which has no timestamp, so it sorts first).
        clash.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap(),
        ));
        w.services.push(clash);
        w.slices.push(slice(
            "b",
            "b-1",
            "IPv4",
            &[("https", 8443, "TCP")],
            vec![ep("198.19.2.1", "n1")],
        ));
        let (d, mut t) = w.keep("n1");
        assert_eq!(reasons(&d), vec![("b", "PortConflict")]);
        w.slices[3].endpoints.push(ep("198.19.2.2", "n1"));
        assert_eq!(w.update(&mut t, "b"), None);
        // ... while the Services without one still go alone.
        w.slices[0].endpoints.push(ep("198.19.2.3", "n1"));
        assert!(w.update(&mut t, "a").is_some());

        // A Service not translated before (it is new: a Service event, a full sync).
        let mut w = churn_world();
        let (_, mut t) = w.keep("n1");
        w.services
            .push(svc("new", &["198.18.0.9"], &[("https", 443, "TCP")]));
        assert_eq!(w.update(&mut t, "new"), None);
    }

    #[test]
    fn an_endpoint_change_past_a_capacity_limit_is_declined_and_records_nothing() {
        let mut w = churn_world();
        // Room for the distinct backends there are (an address and port shared by two
        // Services counts once) and one more.
        let (d, _) = w.keep("n1");
        let distinct: BTreeSet<(IpAddr, u16)> = d
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| (b.addr, b.port)))
            .collect();
        w.capacity.backends = distinct.len() as u32 + 1;
        let (_, mut t) = w.keep("n1");
        w.slices[0].endpoints.push(ep("198.19.3.1", "n1"));
        assert!(w.update(&mut t, "a").is_some(), "one more fits");
        w.slices[0].endpoints.push(ep("198.19.3.2", "n1"));
        assert_eq!(w.update(&mut t, "a"), None, "two more do not");
        // Declined means unrecorded: with 198.19.0.4 (only "a" has it) out, it fits.
        w.slices[0].endpoints.pop();
        w.slices[0].endpoints.remove(3);
        w.slices[0].endpoints.push(ep("198.19.3.2", "n1"));
        assert!(w.update(&mut t, "a").is_some(), "one out, one in");

        // Once a Service was left out for capacity, every change is a full translation.
        w.capacity.vips = 2;
        let (d, mut t) = w.keep("n1");
        assert!(reasons(&d).iter().any(|(_, r)| *r == "DataPlaneFull"));
        assert_eq!(w.update(&mut t, "a"), None);
    }
}
