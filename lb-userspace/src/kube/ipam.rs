//! VIP allocation for Services of type LoadBalancer: which addresses of which [`IPPool`]s each
//! Service gets. Pure: no I/O and no state between calls, so the daemon can re-run
//! [`allocate`] on every change of any pool or Service and write back whatever differs.
//!
//! # Inputs
//!
//! - [`Pool::from_crd`] parses an `IPPool`: each `addresses` entry is a CIDR (every address
//!   usable, network and broadcast included), an inclusive range `a-b` of one family, or a
//!   single address; `serviceSelector` supports `matchLabels` and `matchExpressions` (`In`,
//!   `NotIn`, `Exists`, `DoesNotExist`).
//! - [`ServiceRequest::from_service`] reads what a Service asks for: families from
//!   `spec.ipFamilies` and `spec.ipFamilyPolicy`, addresses from `spec.loadBalancerIP` and
//!   `metallb.io/loadBalancerIPs`, a pool from `metallb.io/address-pool`, a sharing key from
//!   `metallb.io/allow-shared-ip` (each annotation also under the legacy
//!   `metallb.universe.tf/` prefix), its ports, `externalTrafficPolicy`, pod selector, and the
//!   addresses it holds now (`status.loadBalancer.ingress[].ip`).
//!
//! # Rules
//!
//! 1. **Deterministic.** Pools are sorted by name and Services by creation timestamp, then
//!    namespace/name (missing timestamps sort last), so the result depends only on the inputs,
//!    never on their order. Pool names and Service keys are assumed unique (they are
//!    Kubernetes object names).
//! 2. **Overlaps.** An address in several pools belongs to the pool with the smallest name;
//!    each other pool loses it and a [`PoolProblem`] is reported for it.
//! 3. **A pool may serve a Service** when its `serviceSelector` matches the Service's labels,
//!    it is the pool the Service names (if it names one), and it has `autoAssign` or the
//!    Service names it or explicitly requests the address in question.
//! 4. **Keep first.** Pass one walks the Services in order and lets each keep its current
//!    addresses that are still valid: of a wanted family (one per family), equal to the
//!    requested address of that family if there is one, in a pool that may serve the Service,
//!    and not conflicting with an address already kept by an older Service (rule 7). A
//!    Service therefore never moves unless its request changed (other requested address,
//!    other pool annotation, other labels, pool changed) — not even to a "better" address.
//! 5. **Then allocate.** Pass two walks the Services in the same order and fills each wanted
//!    family that kept nothing:
//!    - a requested address must lie in a pool that may serve the Service, else
//!      [`AllocError::NotInAnyPool`]; it is never assigned from outside the pools;
//!    - otherwise, with a sharing key, the lowest address already held by a compatible
//!      Service with the same key in an eligible pool (as MetalLB does);
//!    - otherwise the lowest free address of the first eligible pool, in pool-name order,
//!      that has one free. Eligible means rule 3 without the "explicitly requested" case.
//!      Pools are never enumerated: the free address is found by walking the sorted used
//!      addresses inside each range, in `u128` arithmetic, so a /64 costs what a /30 does.
//! 6. **Families.** `SingleStack` wants the first of `ipFamilies` (IPv4 if empty);
//!    `PreferDualStack` and `RequireDualStack` want both. `PreferDualStack` does without a
//!    family that no eligible pool has ([`AllocError::FamilyUnavailable`]); every other
//!    failure of any family fails the Service. Addresses come out IPv4 first.
//! 7. **Sharing.** Two Services may hold the same address only if both carry the same
//!    non-empty `allow-shared-ip` key, their `(port, protocol)` sets are disjoint, and their
//!    `externalTrafficPolicy` is equal (for `Local`, their pod selectors are equal too).
//!    Otherwise [`AllocError::AddressInUse`] or [`AllocError::PortConflict`].
//! 8. **All or nothing.** A Service whose allocation fails holds no address: whatever it kept
//!    in pass one is released at its turn in pass two, for the Services after it.
//! 9. **Idempotent.** Feeding the result back as the Services' current addresses (and no
//!    address for the failed ones) yields the same allocation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

use super::crd::{IPPool, IPPoolStatus};

/// Prefix of the MetalLB annotations we honour, so Services written for MetalLB work as is.
pub const ANNOTATION_PREFIX: &str = "metallb.io/";
/// The older MetalLB prefix, still found on many Services.
pub const LEGACY_ANNOTATION_PREFIX: &str = "metallb.universe.tf/";
/// Annotation (after a prefix): comma-separated addresses, at most one per family.
pub const LOAD_BALANCER_IPS: &str = "loadBalancerIPs";
/// Annotation (after a prefix): the name of the pool to allocate from.
pub const ADDRESS_POOL: &str = "address-pool";
/// Annotation (after a prefix): Services with the same key may share an address.
pub const ALLOW_SHARED_IP: &str = "allow-shared-ip";

// ---------------------------------------------------------------------------------------
// Families and addresses as integers
// ---------------------------------------------------------------------------------------

/// An IP family. IPv4 sorts first, as `IpAddr` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn other(self) -> Family {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }

    /// The spelling of `spec.ipFamilies`.
    fn parse(value: &str) -> Option<Family> {
        match value {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Only called with values that came from an address of `family`, so the IPv4 case fits.
fn from_u128(family: Family, value: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// An inclusive range of addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    family: Family,
    first: u128,
    last: u128,
}

impl Range {
    fn new(first: IpAddr, last: IpAddr) -> Range {
        Range {
            family: Family::of(first),
            first: to_u128(first),
            last: to_u128(last),
        }
    }

    fn contains(&self, addr: IpAddr) -> bool {
        Family::of(addr) == self.family && (self.first..=self.last).contains(&to_u128(addr))
    }

    fn first_addr(&self) -> IpAddr {
        from_u128(self.family, self.first)
    }

    fn last_addr(&self) -> IpAddr {
        from_u128(self.family, self.last)
    }

    /// The part of `self` inside `other`, if any.
    fn intersection(&self, other: &Range) -> Option<Range> {
        let first = self.first.max(other.first);
        let last = self.last.min(other.last);
        (self.family == other.family && first <= last).then_some(Range {
            family: self.family,
            first,
            last,
        })
    }

    /// The parts of `self` outside `other`, in address order (zero, one or two ranges).
    fn minus(&self, other: &Range) -> Vec<Range> {
        let Some(cut) = self.intersection(other) else {
            return vec![*self];
        };
        let mut rest = Vec::new();
        if cut.first > self.first {
            rest.push(Range {
                last: cut.first - 1,
                ..*self
            });
        }
        if cut.last < self.last {
            rest.push(Range {
                first: cut.last + 1,
                ..*self
            });
        }
        rest
    }
}

/// Sorts ranges and merges overlapping or adjacent ones, so a pool's ranges are disjoint and
/// ascending: the lowest-free walk relies on both.
fn normalize(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort();
    let mut merged: Vec<Range> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(prev) if touches(prev, &range) => prev.last = prev.last.max(range.last),
            _ => merged.push(range),
        }
    }
    merged
}

/// Whether sorted `next` overlaps or directly follows `prev`.
fn touches(prev: &Range, next: &Range) -> bool {
    prev.family == next.family && prev.last.checked_add(1).is_none_or(|end| next.first <= end)
}

// ---------------------------------------------------------------------------------------
// Pools
// ---------------------------------------------------------------------------------------

/// Why an `IPPool` cannot be used. Each message names the pool, the entry and what would be
/// valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("an IPPool has no metadata.name")]
    MissingName,
    #[error("IP pool {pool:?}: address entry {entry:?} is not valid; expected {expected}")]
    InvalidEntry {
        pool: String,
        entry: String,
        expected: &'static str,
    },
    #[error("IP pool {pool:?}: CIDR {entry:?} has host bits set; write it as {network:?}")]
    HostBitsSet {
        pool: String,
        entry: String,
        network: String,
    },
    #[error(
        "IP pool {pool:?}: range {entry:?} mixes IPv4 and IPv6; both ends must be of one family"
    )]
    MixedFamilyRange { pool: String, entry: String },
    #[error("IP pool {pool:?}: range {entry:?} starts after it ends; write it as {suggestion:?}")]
    ReversedRange {
        pool: String,
        entry: String,
        suggestion: String,
    },
    #[error("IP pool {pool:?}: serviceSelector {reason}")]
    InvalidSelector { pool: String, reason: String },
}

impl PoolError {
    /// Short UpperCamelCase reason for a Kubernetes event or condition.
    pub fn reason(&self) -> &'static str {
        match self {
            PoolError::MissingName => "MissingName",
            PoolError::InvalidSelector { .. } => "InvalidSelector",
            _ => "InvalidAddresses",
        }
    }
}

const EXPECTED_CIDR: &str = "a CIDR such as 198.18.100.0/28 or fd00:100::/120";
const EXPECTED_RANGE: &str = "an inclusive range of one family such as 198.18.100.10-198.18.100.20";
const EXPECTED_ANY: &str = "a CIDR (198.18.100.0/28), an inclusive range \
     (198.18.100.10-198.18.100.20) or a single address (198.18.100.7)";

/// Parses one `addresses` entry of pool `pool`.
fn parse_entry(pool: &str, entry: &str) -> Result<Range, PoolError> {
    let text = entry.trim();
    let invalid = |expected| PoolError::InvalidEntry {
        pool: pool.to_owned(),
        entry: entry.to_owned(),
        expected,
    };
    if text.contains('/') {
        let net: IpNet = text.parse().map_err(|_| invalid(EXPECTED_CIDR))?;
        if net.trunc() != net {
            return Err(PoolError::HostBitsSet {
                pool: pool.to_owned(),
                entry: entry.to_owned(),
                network: net.trunc().to_string(),
            });
        }
        return Ok(Range::new(net.network(), net.broadcast()));
    }
    if let Some((a, b)) = text.split_once('-') {
        let parse = |s: &str| {
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| invalid(EXPECTED_RANGE))
        };
        let (first, last) = (parse(a)?, parse(b)?);
        return parse_range(pool, entry, first, last);
    }
    let addr: IpAddr = text.parse().map_err(|_| invalid(EXPECTED_ANY))?;
    Ok(Range::new(addr, addr))
}

fn parse_range(pool: &str, entry: &str, first: IpAddr, last: IpAddr) -> Result<Range, PoolError> {
    if Family::of(first) != Family::of(last) {
        return Err(PoolError::MixedFamilyRange {
            pool: pool.to_owned(),
            entry: entry.to_owned(),
        });
    }
    if first > last {
        return Err(PoolError::ReversedRange {
            pool: pool.to_owned(),
            entry: entry.to_owned(),
            suggestion: format!("{last}-{first}"),
        });
    }
    Ok(Range::new(first, last))
}

/// A `matchExpressions` operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Requirement {
    key: String,
    operator: Operator,
    values: BTreeSet<String>,
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A parsed Kubernetes label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Selector {
    labels: BTreeMap<String, String>,
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses `selector`; the error says which expression is wrong and what is valid.
    pub fn from_label_selector(selector: &LabelSelector) -> Result<Selector, String> {
        let requirements = selector
            .match_expressions
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, e)| parse_requirement(i, &e.key, &e.operator, e.values.as_deref()))
            .collect::<Result<_, _>>()?;
        Ok(Selector {
            labels: selector.match_labels.clone().unwrap_or_default(),
            requirements,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.requirements.iter().all(|r| r.matches(labels))
    }
}

fn parse_requirement(
    index: usize,
    key: &str,
    operator: &str,
    values: Option<&[String]>,
) -> Result<Requirement, String> {
    let operator = match operator {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => {
            return Err(format!(
                "matchExpressions[{index}] (key {key:?}) has operator {other:?}; \
                 valid operators are In, NotIn, Exists and DoesNotExist"
            ));
        }
    };
    let values: BTreeSet<String> = values.unwrap_or_default().iter().cloned().collect();
    let needs_values = matches!(operator, Operator::In | Operator::NotIn);
    if needs_values && values.is_empty() {
        return Err(format!(
            "matchExpressions[{index}] (key {key:?}, operator {operator:?}) needs at least one value"
        ));
    }
    if !needs_values && !values.is_empty() {
        return Err(format!(
            "matchExpressions[{index}] (key {key:?}, operator {operator:?}) must not have values"
        ));
    }
    Ok(Requirement {
        key: key.to_owned(),
        operator,
        values,
    })
}

/// A parsed, valid IP pool.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pool {
    /// First field, so the derived order is pool-name order.
    pub name: String,
    pub auto_assign: bool,
    /// Disjoint and ascending (see [`normalize`]).
    ranges: Vec<Range>,
    selector: Selector,
}

impl Pool {
    pub fn from_crd(pool: &IPPool) -> Result<Pool, PoolError> {
        let name = pool
            .metadata
            .name
            .as_deref()
            .ok_or(PoolError::MissingName)?;
        Pool::new(
            name,
            pool.spec.auto_assign,
            &pool.spec.addresses,
            pool.spec.service_selector.as_ref(),
        )
    }

    /// A pool from its parts, as in the CRD. An empty address list is valid (a drained pool).
    pub fn new(
        name: &str,
        auto_assign: bool,
        addresses: &[String],
        selector: Option<&LabelSelector>,
    ) -> Result<Pool, PoolError> {
        let ranges = addresses
            .iter()
            .map(|entry| parse_entry(name, entry))
            .collect::<Result<Vec<_>, _>>()?;
        let selector = match selector {
            Some(s) => {
                Selector::from_label_selector(s).map_err(|reason| PoolError::InvalidSelector {
                    pool: name.to_owned(),
                    reason,
                })?
            }
            None => Selector::default(),
        };
        Ok(Pool {
            name: name.to_owned(),
            auto_assign,
            ranges: normalize(ranges),
            selector,
        })
    }

    /// Whether `addr` is one of this pool's addresses (ignoring overlaps with other pools).
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(addr))
    }

    /// The pool's addresses as disjoint, ascending inclusive ranges.
    pub fn ranges(&self) -> impl Iterator<Item = (IpAddr, IpAddr)> + '_ {
        self.ranges.iter().map(|r| (r.first_addr(), r.last_addr()))
    }

    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    /// How many addresses the pool has per family, (IPv4, IPv6), saturating.
    fn sizes(&self) -> (u128, u128) {
        let mut sizes = (0u128, 0u128);
        for r in &self.ranges {
            let n = (r.last - r.first).saturating_add(1);
            match r.family {
                Family::V4 => sizes.0 = sizes.0.saturating_add(n),
                Family::V6 => sizes.1 = sizes.1.saturating_add(n),
            }
        }
        sizes
    }
}

/// The status of every pool after `allocation` (what `kubectl get ippools` shows): the
/// distinct allocated addresses each pool contains (a shared address counts once; an address
/// listed by two overlapping pools counts in both), and the rest of the pool as available.
pub fn pool_statuses(pools: &[Pool], allocation: &Allocation) -> BTreeMap<String, IPPoolStatus> {
    let assigned: BTreeSet<IpAddr> = allocation
        .services
        .values()
        .filter_map(|r| r.as_ref().ok())
        .flatten()
        .copied()
        .collect();
    let count = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
    pools
        .iter()
        .map(|pool| {
            let (mut v4, mut v6) = (0u128, 0u128);
            for addr in assigned.iter().filter(|a| pool.contains(**a)) {
                match Family::of(*addr) {
                    Family::V4 => v4 += 1,
                    Family::V6 => v6 += 1,
                }
            }
            let (size4, size6) = pool.sizes();
            let status = IPPoolStatus {
                assigned_ipv4: count(v4),
                assigned_ipv6: count(v6),
                available_ipv4: count(size4 - v4),
                available_ipv6: count(size6 - v6),
            };
            (pool.name.clone(), status)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Service requests
// ---------------------------------------------------------------------------------------

/// A Service's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// A port's protocol (`spec.ports[].protocol`, TCP when omitted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// `spec.externalTrafficPolicy` (Cluster when omitted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

/// What one Service asks of the allocator, and what it holds now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRequest {
    pub key: ServiceKey,
    /// `metadata.creationTimestamp`: older Services win conflicts.
    pub created: Option<Time>,
    pub labels: BTreeMap<String, String>,
    /// The families the Service wants, in preference order, without duplicates.
    pub families: Vec<Family>,
    pub family_policy: FamilyPolicy,
    /// Explicitly requested addresses, at most one per family, ascending.
    pub requested: Vec<IpAddr>,
    /// The pool named by the `address-pool` annotation.
    pub pool: Option<String>,
    /// The `allow-shared-ip` key; `None` when absent or empty.
    pub sharing_key: Option<String>,
    pub ports: BTreeSet<(u16, Protocol)>,
    pub traffic_policy: TrafficPolicy,
    /// `spec.selector`, the pod selector (Local Services share only with equal selectors).
    pub selector: BTreeMap<String, String>,
    /// The addresses in `status.loadBalancer.ingress[].ip`, ascending, unparsable ones dropped.
    pub current: Vec<IpAddr>,
}

/// Why a Service's request cannot be understood. Each message names the field or annotation
/// and its value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("a Service has no metadata.{field}")]
    MissingMetadata { field: &'static str },
    #[error(
        "service {service}: {source_name} has {value:?}, which is not an IP address; \
         write addresses such as 198.18.0.10 or fd00::10, comma-separated"
    )]
    InvalidAddress {
        service: ServiceKey,
        source_name: String,
        value: String,
    },
    #[error(
        "service {service}: {source_name} has {value:?}, more than one {family} address; \
         request at most one address per family"
    )]
    TwoAddressesOfFamily {
        service: ServiceKey,
        source_name: String,
        value: String,
        family: Family,
    },
    #[error(
        "service {service}: spec.loadBalancerIP {load_balancer_ip:?} is not among the \
         addresses of {annotation} {value:?}; drop spec.loadBalancerIP (it is deprecated)"
    )]
    ConflictingRequests {
        service: ServiceKey,
        load_balancer_ip: String,
        annotation: String,
        value: String,
    },
    /// Both `metallb.io/<suffix>` and `metallb.universe.tf/<suffix>` are set, differently.
    #[error(
        "service {service}: {}{suffix} is {value:?} but {}{suffix} is {legacy_value:?}; \
         keep only {}{suffix}",
        ANNOTATION_PREFIX,
        LEGACY_ANNOTATION_PREFIX,
        ANNOTATION_PREFIX
    )]
    ConflictingAnnotations {
        service: ServiceKey,
        suffix: &'static str,
        value: String,
        legacy_value: String,
    },
    #[error(
        "service {service}: {source_name} requests the {family} address {value}, but the \
         service's ipFamilies/ipFamilyPolicy do not include {family}; change one or the other"
    )]
    FamilyNotWanted {
        service: ServiceKey,
        source_name: String,
        value: IpAddr,
        family: Family,
    },
    #[error("service {service}: spec.ipFamilies has {value:?}; valid values are IPv4 and IPv6")]
    InvalidFamily { service: ServiceKey, value: String },
    #[error(
        "service {service}: spec.ipFamilyPolicy is {value:?}; valid values are SingleStack, \
         PreferDualStack and RequireDualStack"
    )]
    InvalidFamilyPolicy { service: ServiceKey, value: String },
    #[error("service {service}: spec.ports has port {port}; valid ports are 1 to 65535")]
    InvalidPort { service: ServiceKey, port: i32 },
    #[error(
        "service {service}: spec.ports has protocol {value:?}; valid protocols are TCP, UDP and SCTP"
    )]
    InvalidProtocol { service: ServiceKey, value: String },
    #[error(
        "service {service}: spec.externalTrafficPolicy is {value:?}; valid values are Cluster and Local"
    )]
    InvalidTrafficPolicy { service: ServiceKey, value: String },
}

impl RequestError {
    /// Short UpperCamelCase reason for a Kubernetes event or condition.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::MissingMetadata { .. } => "MissingMetadata",
            RequestError::InvalidAddress { .. }
            | RequestError::TwoAddressesOfFamily { .. }
            | RequestError::ConflictingRequests { .. }
            | RequestError::ConflictingAnnotations { .. } => "InvalidAnnotation",
            RequestError::FamilyNotWanted { .. } => "FamilyMismatch",
            RequestError::InvalidFamily { .. }
            | RequestError::InvalidFamilyPolicy { .. }
            | RequestError::InvalidPort { .. }
            | RequestError::InvalidProtocol { .. }
            | RequestError::InvalidTrafficPolicy { .. } => "InvalidSpec",
        }
    }
}

/// An annotation that was set: its full name (with the prefix actually used) and its value.
struct Annotation {
    name: String,
    value: String,
}

const LOAD_BALANCER_IP_FIELD: &str = "spec.loadBalancerIP";

impl ServiceRequest {
    pub fn from_service(service: &Service) -> Result<ServiceRequest, RequestError> {
        let key = service_key(service)?;
        let empty = BTreeMap::new();
        let annotations = service.metadata.annotations.as_ref().unwrap_or(&empty);
        let default_spec = ServiceSpec::default();
        let spec = service.spec.as_ref().unwrap_or(&default_spec);

        let (families, family_policy) = wanted_families(&key, spec)?;
        let requested = requested_addresses(&key, spec, annotations)?;
        check_requested_families(&key, annotations, &requested, &families)?;
        let pool = annotation(&key, annotations, ADDRESS_POOL)?.map(|a| a.value);
        let sharing_key = annotation(&key, annotations, ALLOW_SHARED_IP)?.map(|a| a.value);
        Ok(ServiceRequest {
            created: service.metadata.creation_timestamp.clone(),
            labels: service.metadata.labels.clone().unwrap_or_default(),
            families,
            family_policy,
            requested,
            pool,
            sharing_key,
            ports: service_ports(&key, spec)?,
            traffic_policy: traffic_policy(&key, spec)?,
            selector: spec.selector.clone().unwrap_or_default(),
            current: current_addresses(service),
            key,
        })
    }

    /// The explicitly requested address of `family`, if any.
    fn requested_of(&self, family: Family) -> Option<IpAddr> {
        self.requested
            .iter()
            .copied()
            .find(|a| Family::of(*a) == family)
    }
}

fn service_key(service: &Service) -> Result<ServiceKey, RequestError> {
    let namespace = service.metadata.namespace.as_deref();
    let name = service.metadata.name.as_deref();
    match (namespace, name) {
        (Some(namespace), Some(name)) => Ok(ServiceKey::new(namespace, name)),
        (None, _) => Err(RequestError::MissingMetadata { field: "namespace" }),
        (_, None) => Err(RequestError::MissingMetadata { field: "name" }),
    }
}

/// The families the Service wants, first family first.
fn wanted_families(
    key: &ServiceKey,
    spec: &ServiceSpec,
) -> Result<(Vec<Family>, FamilyPolicy), RequestError> {
    let policy = match spec.ip_family_policy.as_deref() {
        None | Some("SingleStack") => FamilyPolicy::SingleStack,
        Some("PreferDualStack") => FamilyPolicy::PreferDualStack,
        Some("RequireDualStack") => FamilyPolicy::RequireDualStack,
        Some(other) => {
            return Err(RequestError::InvalidFamilyPolicy {
                service: key.clone(),
                value: other.to_owned(),
            });
        }
    };
    let mut first = None;
    for value in spec.ip_families.iter().flatten() {
        let family = Family::parse(value).ok_or_else(|| RequestError::InvalidFamily {
            service: key.clone(),
            value: value.clone(),
        })?;
        first.get_or_insert(family);
    }
    let first = first.unwrap_or(Family::V4);
    let families = match policy {
        FamilyPolicy::SingleStack => vec![first],
        _ => vec![first, first.other()],
    };
    Ok((families, policy))
}

/// Looks up `metallb.io/<suffix>`, falling back to `metallb.universe.tf/<suffix>`. Empty
/// values count as absent; both set to different values is an error, since silently
/// preferring one would surprise whoever set the other.
fn annotation(
    key: &ServiceKey,
    annotations: &BTreeMap<String, String>,
    suffix: &'static str,
) -> Result<Option<Annotation>, RequestError> {
    let lookup = |prefix: &str| {
        let name = format!("{prefix}{suffix}");
        let value = annotations.get(&name)?.trim();
        (!value.is_empty()).then(|| Annotation {
            name,
            value: value.to_owned(),
        })
    };
    match (lookup(ANNOTATION_PREFIX), lookup(LEGACY_ANNOTATION_PREFIX)) {
        (Some(current), Some(legacy)) if current.value != legacy.value => {
            Err(RequestError::ConflictingAnnotations {
                service: key.clone(),
                suffix,
                value: current.value,
                legacy_value: legacy.value,
            })
        }
        (Some(current), _) => Ok(Some(current)),
        (None, legacy) => Ok(legacy),
    }
}

/// `spec.loadBalancerIP` and the `loadBalancerIPs` annotation, which must agree when both are
/// set: the deprecated field must be one of the annotation's addresses.
fn requested_addresses(
    key: &ServiceKey,
    spec: &ServiceSpec,
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<IpAddr>, RequestError> {
    let field = spec
        .load_balancer_ip
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let from_field = field
        .map(|v| parse_requested(key, LOAD_BALANCER_IP_FIELD, v))
        .transpose()?;
    let Some(ann) = annotation(key, annotations, LOAD_BALANCER_IPS)? else {
        return Ok(from_field.into_iter().collect());
    };
    let mut addrs = ann
        .value
        .split(',')
        .map(|item| parse_requested(key, &ann.name, item.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    addrs.sort();
    addrs.dedup();
    if let Some(family) = repeated_family(&addrs) {
        return Err(RequestError::TwoAddressesOfFamily {
            service: key.clone(),
            source_name: ann.name,
            value: ann.value,
            family,
        });
    }
    if let (Some(addr), Some(text)) = (from_field, field)
        && !addrs.contains(&addr)
    {
        return Err(RequestError::ConflictingRequests {
            service: key.clone(),
            load_balancer_ip: text.to_owned(),
            annotation: ann.name,
            value: ann.value,
        });
    }
    Ok(addrs)
}

fn parse_requested(key: &ServiceKey, source: &str, value: &str) -> Result<IpAddr, RequestError> {
    value.parse().map_err(|_| RequestError::InvalidAddress {
        service: key.clone(),
        source_name: source.to_owned(),
        value: value.to_owned(),
    })
}

/// The family that occurs twice in sorted `addrs`, if any.
fn repeated_family(addrs: &[IpAddr]) -> Option<Family> {
    addrs
        .windows(2)
        .find(|w| Family::of(w[0]) == Family::of(w[1]))
        .map(|w| Family::of(w[0]))
}

/// A requested address of a family the Service does not want is a contradiction in the
/// Service itself, so it is reported here rather than as an allocation failure.
fn check_requested_families(
    key: &ServiceKey,
    annotations: &BTreeMap<String, String>,
    requested: &[IpAddr],
    families: &[Family],
) -> Result<(), RequestError> {
    let Some(&addr) = requested
        .iter()
        .find(|a| !families.contains(&Family::of(**a)))
    else {
        return Ok(());
    };
    // Name the source the user wrote: the annotation when set (it wins), else the field.
    let source_name = annotation(key, annotations, LOAD_BALANCER_IPS)?
        .map_or_else(|| LOAD_BALANCER_IP_FIELD.to_owned(), |a| a.name);
    Err(RequestError::FamilyNotWanted {
        service: key.clone(),
        source_name,
        value: addr,
        family: Family::of(addr),
    })
}

fn service_ports(
    key: &ServiceKey,
    spec: &ServiceSpec,
) -> Result<BTreeSet<(u16, Protocol)>, RequestError> {
    spec.ports
        .iter()
        .flatten()
        .map(|p| {
            let port = u16::try_from(p.port)
                .ok()
                .filter(|&n| n != 0)
                .ok_or_else(|| RequestError::InvalidPort {
                    service: key.clone(),
                    port: p.port,
                })?;
            let protocol = match p.protocol.as_deref() {
                None | Some("TCP") => Protocol::Tcp,
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                Some(other) => {
                    return Err(RequestError::InvalidProtocol {
                        service: key.clone(),
                        value: other.to_owned(),
                    });
                }
            };
            Ok((port, protocol))
        })
        .collect()
}

fn traffic_policy(key: &ServiceKey, spec: &ServiceSpec) -> Result<TrafficPolicy, RequestError> {
    match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(RequestError::InvalidTrafficPolicy {
            service: key.clone(),
            value: other.to_owned(),
        }),
    }
}

/// Unparsable entries (hostnames, garbage) are dropped: the status is ours to rewrite, and a
/// Service without a valid current address simply gets a new one.
fn current_addresses(service: &Service) -> Vec<IpAddr> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let mut addrs: Vec<IpAddr> = ingress
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.trim().parse().ok())
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

// ---------------------------------------------------------------------------------------
// Allocation results
// ---------------------------------------------------------------------------------------

/// Why two Services cannot hold the same address (beyond a port conflict).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareRefusal {
    /// At least one of them carries no `allow-shared-ip` annotation.
    NoSharingKey,
    /// Both carry one, with different keys.
    DifferentSharingKey,
    /// Their `externalTrafficPolicy` differs.
    TrafficPolicy,
    /// Both are `externalTrafficPolicy: Local` with different pod selectors.
    Selector,
}

impl fmt::Display for ShareRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShareRefusal::NoSharingKey => {
                "to share it, give both Services the same metallb.io/allow-shared-ip annotation, \
                 or request another address"
            }
            ShareRefusal::DifferentSharingKey => {
                "their metallb.io/allow-shared-ip keys differ; use the same key on both, \
                 or request another address"
            }
            ShareRefusal::TrafficPolicy => {
                "their externalTrafficPolicy differs; make them equal, or request another address"
            }
            ShareRefusal::Selector => {
                "both have externalTrafficPolicy Local but different pod selectors; make the \
                 selectors equal, or request another address"
            }
        })
    }
}

/// Why a Service got no addresses. Display is one actionable sentence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every eligible pool with the family is full; `pool` is the first of them by name.
    #[error(
        "IP pool {pool:?} has no free {family} address left, nor has any other pool this \
         service may use; add addresses to a pool or delete Services that hold some"
    )]
    PoolExhausted { pool: String, family: Family },
    #[error(
        "no IP pool may give this service an address: a pool's serviceSelector must match \
         the service's labels, and a pool with autoAssign false must be named in the \
         metallb.io/address-pool annotation"
    )]
    NoEligiblePool,
    #[error(
        "the metallb.io/address-pool annotation names IP pool {name:?}, which does not exist \
         or is invalid; create or fix that pool, or fix the annotation"
    )]
    UnknownPool { name: String },
    #[error(
        "no IP pool this service may use has {family} addresses; add some to a pool, or \
         change the service's ipFamilies or ipFamilyPolicy"
    )]
    FamilyUnavailable { family: Family },
    #[error(
        "the requested address {addr} is not in any IP pool this service may use (check the \
         pools' addresses and serviceSelector and the metallb.io/address-pool annotation); \
         add it to a pool or request another address"
    )]
    NotInAnyPool { addr: IpAddr },
    #[error("address {addr} is already used by service {by}; {why}")]
    AddressInUse {
        addr: IpAddr,
        by: ServiceKey,
        why: ShareRefusal,
    },
    #[error(
        "address {addr} is shared with service {by}, which already uses port {port}/{protocol}; \
         use another port or another address"
    )]
    PortConflict {
        addr: IpAddr,
        by: ServiceKey,
        port: u16,
        protocol: Protocol,
    },
}

impl AllocError {
    /// Short UpperCamelCase reason for a Kubernetes event or condition.
    pub fn reason(&self) -> &'static str {
        match self {
            AllocError::PoolExhausted { .. } => "PoolExhausted",
            AllocError::NoEligiblePool => "NoEligiblePool",
            AllocError::UnknownPool { .. } => "UnknownPool",
            AllocError::FamilyUnavailable { .. } => "FamilyUnavailable",
            AllocError::NotInAnyPool { .. } => "NotInAnyPool",
            AllocError::AddressInUse { .. } => "AddressInUse",
            AllocError::PortConflict { .. } => "PortConflict",
        }
    }
}

/// Addresses listed by two pools: `pool` lost `first..=last` to `owner`, the smaller name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolProblem {
    pub pool: String,
    pub owner: String,
    pub first: IpAddr,
    pub last: IpAddr,
}

impl PoolProblem {
    /// Short UpperCamelCase reason for a Kubernetes event or condition.
    pub fn reason(&self) -> &'static str {
        "PoolOverlap"
    }
}

impl fmt::Display for PoolProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IP pool {:?} lists {}-{}, which IP pool {:?} also lists and keeps (the smaller \
             name wins); remove the addresses from one of the two pools",
            self.pool, self.first, self.last, self.owner
        )
    }
}

/// The outcome of [`allocate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Every input Service: its addresses (IPv4 first), or why it has none.
    pub services: BTreeMap<ServiceKey, Result<Vec<IpAddr>, AllocError>>,
    /// Overlapping pools, in pool-name order.
    pub problems: Vec<PoolProblem>,
}

// ---------------------------------------------------------------------------------------
// Allocation
// ---------------------------------------------------------------------------------------

/// A pool with the addresses it owns after overlaps went to smaller-named pools.
struct OwnedPool<'a> {
    pool: &'a Pool,
    ranges: Vec<Range>,
}

impl OwnedPool<'_> {
    fn contains(&self, addr: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(addr))
    }

    fn has_family(&self, family: Family) -> bool {
        self.ranges.iter().any(|r| r.family == family)
    }

    /// Rule 3: whether this pool may give `svc` an address; `explicit` when the Service
    /// requested the address in question.
    fn may_serve(&self, svc: &ServiceRequest, explicit: bool) -> bool {
        let named = svc.pool.as_deref();
        self.pool.selector.matches(&svc.labels)
            && named.is_none_or(|n| n == self.pool.name)
            && (self.pool.auto_assign || explicit || named.is_some())
    }

    /// The lowest address of `family` that nobody holds, found by walking the held addresses
    /// inside each range rather than the range itself.
    fn lowest_free(&self, family: Family, holders: &Holders) -> Option<IpAddr> {
        self.ranges
            .iter()
            .filter(|r| r.family == family)
            .find_map(|r| lowest_free_in(r, holders))
    }
}

fn lowest_free_in(range: &Range, holders: &Holders) -> Option<IpAddr> {
    let mut candidate = range.first;
    for held in holders
        .by_addr
        .range(range.first_addr()..=range.last_addr())
    {
        let held = to_u128(*held.0);
        if held > candidate {
            break;
        }
        // Held addresses are ascending and distinct, so here `held == candidate`.
        candidate = candidate.checked_add(1)?;
    }
    (candidate <= range.last).then(|| from_u128(range.family, candidate))
}

/// Rule 2: gives every address to the smallest-named pool that lists it.
fn resolve_overlaps(pools: &[Pool]) -> (Vec<OwnedPool<'_>>, Vec<PoolProblem>) {
    let mut sorted: Vec<&Pool> = pools.iter().collect();
    sorted.sort();
    let mut claimed: Vec<(Range, &str)> = Vec::new();
    let mut problems = Vec::new();
    let mut owned = Vec::with_capacity(sorted.len());
    for pool in sorted {
        let mut mine = pool.ranges.clone();
        for (taken, owner) in &claimed {
            for cut in mine.iter().filter_map(|r| r.intersection(taken)) {
                problems.push(PoolProblem {
                    pool: pool.name.clone(),
                    owner: (*owner).to_owned(),
                    first: cut.first_addr(),
                    last: cut.last_addr(),
                });
            }
            mine = mine.iter().flat_map(|r| r.minus(taken)).collect();
        }
        claimed.extend(mine.iter().map(|r| (*r, pool.name.as_str())));
        owned.push(OwnedPool { pool, ranges: mine });
    }
    (owned, problems)
}

/// Who holds which address, in the order they took it.
#[derive(Default)]
struct Holders<'a> {
    by_addr: BTreeMap<IpAddr, Vec<&'a ServiceRequest>>,
}

impl<'a> Holders<'a> {
    fn add(&mut self, addr: IpAddr, svc: &'a ServiceRequest) {
        self.by_addr.entry(addr).or_default().push(svc);
    }

    /// Drops every address `svc` holds; empty entries go, so the lowest-free walk sees only
    /// held addresses.
    fn release(&mut self, svc: &ServiceRequest) {
        self.by_addr.retain(|_, list| {
            list.retain(|h| h.key != svc.key);
            !list.is_empty()
        });
    }

    /// Rule 7: why `svc` may not hold `addr` next to its current holders, if it may not.
    fn conflict(&self, addr: IpAddr, svc: &ServiceRequest) -> Option<AllocError> {
        self.by_addr
            .get(&addr)?
            .iter()
            .filter(|h| h.key != svc.key)
            .find_map(|h| share_conflict(addr, svc, h))
    }
}

fn share_conflict(
    addr: IpAddr,
    svc: &ServiceRequest,
    other: &ServiceRequest,
) -> Option<AllocError> {
    let in_use = |why| {
        Some(AllocError::AddressInUse {
            addr,
            by: other.key.clone(),
            why,
        })
    };
    match (&svc.sharing_key, &other.sharing_key) {
        (Some(a), Some(b)) if a != b => return in_use(ShareRefusal::DifferentSharingKey),
        (Some(_), Some(_)) => {}
        _ => return in_use(ShareRefusal::NoSharingKey),
    }
    if svc.traffic_policy != other.traffic_policy {
        return in_use(ShareRefusal::TrafficPolicy);
    }
    if svc.traffic_policy == TrafficPolicy::Local && svc.selector != other.selector {
        return in_use(ShareRefusal::Selector);
    }
    let &(port, protocol) = svc.ports.intersection(&other.ports).next()?;
    Some(AllocError::PortConflict {
        addr,
        by: other.key.clone(),
        port,
        protocol,
    })
}

/// Rule 1: older first; missing timestamps last; then namespace/name.
fn processing_order(services: &[ServiceRequest]) -> Vec<&ServiceRequest> {
    let mut order: Vec<&ServiceRequest> = services.iter().collect();
    order.sort_by(|a, b| {
        (a.created.is_none(), &a.created, &a.key).cmp(&(b.created.is_none(), &b.created, &b.key))
    });
    order
}

/// Allocates addresses from `pools` to `services` by the rules in the module documentation.
pub fn allocate(pools: &[Pool], services: &[ServiceRequest]) -> Allocation {
    let (pools, problems) = resolve_overlaps(pools);
    let order = processing_order(services);
    let mut holders = Holders::default();

    let kept: Vec<Vec<IpAddr>> = order
        .iter()
        .map(|svc| {
            let kept = keepable(svc, &pools, &holders);
            for addr in &kept {
                holders.add(*addr, svc);
            }
            kept
        })
        .collect();

    let mut results = BTreeMap::new();
    for (svc, kept) in order.iter().zip(kept) {
        let result = complete(svc, kept, &pools, &mut holders);
        if result.is_err() {
            holders.release(svc);
        }
        results.insert(svc.key.clone(), result);
    }
    Allocation {
        services: results,
        problems,
    }
}

/// Rule 4: the current addresses `svc` may keep, at most one per family.
fn keepable(svc: &ServiceRequest, pools: &[OwnedPool<'_>], holders: &Holders) -> Vec<IpAddr> {
    let mut kept: Vec<IpAddr> = Vec::new();
    for &addr in &svc.current {
        let family = Family::of(addr);
        let valid = svc.families.contains(&family)
            && !kept.iter().any(|k| Family::of(*k) == family)
            && svc.requested_of(family).is_none_or(|r| r == addr)
            && pools
                .iter()
                .any(|p| p.contains(addr) && p.may_serve(svc, svc.requested.contains(&addr)))
            && holders.conflict(addr, svc).is_none();
        if valid {
            kept.push(addr);
        }
    }
    kept
}

/// Rules 5, 6 and 8: fills the families `svc` kept nothing of. On error the caller releases
/// whatever `svc` took.
fn complete<'a>(
    svc: &'a ServiceRequest,
    mut addrs: Vec<IpAddr>,
    pools: &[OwnedPool<'_>],
    holders: &mut Holders<'a>,
) -> Result<Vec<IpAddr>, AllocError> {
    let mut skipped = None;
    for &family in &svc.families {
        if addrs.iter().any(|a| Family::of(*a) == family) {
            continue;
        }
        match assign(svc, family, pools, holders) {
            Ok(addr) => {
                holders.add(addr, svc);
                addrs.push(addr);
            }
            Err(e @ AllocError::FamilyUnavailable { .. })
                if svc.family_policy == FamilyPolicy::PreferDualStack =>
            {
                skipped.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    match skipped {
        Some(e) if addrs.is_empty() => Err(e),
        _ => {
            addrs.sort();
            Ok(addrs)
        }
    }
}

/// One new address of `family` for `svc` (rule 5).
fn assign(
    svc: &ServiceRequest,
    family: Family,
    pools: &[OwnedPool<'_>],
    holders: &Holders,
) -> Result<IpAddr, AllocError> {
    if let Some(name) = &svc.pool
        && !pools.iter().any(|p| &p.pool.name == name)
    {
        return Err(AllocError::UnknownPool { name: name.clone() });
    }
    if let Some(addr) = svc.requested_of(family) {
        return assign_requested(svc, addr, pools, holders);
    }
    let eligible: Vec<&OwnedPool> = pools.iter().filter(|p| p.may_serve(svc, false)).collect();
    if eligible.is_empty() {
        return Err(AllocError::NoEligiblePool);
    }
    let with_family: Vec<&OwnedPool> = eligible
        .into_iter()
        .filter(|p| p.has_family(family))
        .collect();
    let Some(first) = with_family.first() else {
        return Err(AllocError::FamilyUnavailable { family });
    };
    if let Some(addr) = shared_address(svc, family, &with_family, holders) {
        return Ok(addr);
    }
    with_family
        .iter()
        .find_map(|p| p.lowest_free(family, holders))
        .ok_or_else(|| AllocError::PoolExhausted {
            pool: first.pool.name.clone(),
            family,
        })
}

fn assign_requested(
    svc: &ServiceRequest,
    addr: IpAddr,
    pools: &[OwnedPool<'_>],
    holders: &Holders,
) -> Result<IpAddr, AllocError> {
    if !pools
        .iter()
        .any(|p| p.contains(addr) && p.may_serve(svc, true))
    {
        return Err(AllocError::NotInAnyPool { addr });
    }
    match holders.conflict(addr, svc) {
        Some(e) => Err(e),
        None => Ok(addr),
    }
}

/// With a sharing key, the lowest address of `family` in an eligible pool that a Service
/// with the same key holds and `svc` may join.
fn shared_address(
    svc: &ServiceRequest,
    family: Family,
    pools: &[&OwnedPool<'_>],
    holders: &Holders,
) -> Option<IpAddr> {
    let key = svc.sharing_key.as_ref()?;
    holders
        .by_addr
        .iter()
        .filter(|(addr, list)| {
            Family::of(**addr) == family && list.iter().any(|h| h.sharing_key.as_ref() == Some(key))
        })
        .map(|(addr, _)| *addr)
        .find(|addr| {
            pools.iter().any(|p| p.contains(*addr)) && holders.conflict(*addr, svc).is_none()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::test_support::{annotate, spec};
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};
    use k8s_openapi::jiff::Timestamp;
    use std::time::Instant;

    // ---- helpers -------------------------------------------------------------------

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| ip(s)).collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn pool(name: &str, addresses: &[&str]) -> Pool {
        Pool::new(name, true, &strings(addresses), None).unwrap()
    }

    fn manual_pool(name: &str, addresses: &[&str]) -> Pool {
        Pool::new(name, false, &strings(addresses), None).unwrap()
    }

    fn selected_pool(name: &str, addresses: &[&str], selector: LabelSelector) -> Pool {
        Pool::new(name, true, &strings(addresses), Some(&selector)).unwrap()
    }

    fn pool_err(addresses: &[&str]) -> PoolError {
        Pool::new("p", true, &strings(addresses), None).unwrap_err()
    }

    fn crd(name: &str, addresses: &[&str]) -> IPPool {
        let mut p = IPPool::new(
            name,
            crate::kube::crd::IPPoolSpec {
                addresses: strings(addresses),
                auto_assign: true,
                service_selector: None,
                l2: None,
            },
        );
        p.metadata.name = Some(name.to_owned());
        p
    }

    fn expr(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: (!values.is_empty()).then(|| strings(values)),
        }
    }

    fn selector(labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: (!labels.is_empty()).then(|| label_map(labels)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    fn label_map(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A LoadBalancer Service in namespace `default` created `age` seconds after an epoch
    /// (smaller is older), with one port 80/TCP.
    fn svc(name: &str, age: i64) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                creation_timestamp: Some(Time(
                    Timestamp::from_second(1_700_000_000 + age).unwrap(),
                )),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ports: Some(vec![port(80, None)]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn port(number: i32, protocol: Option<&str>) -> ServicePort {
        ServicePort {
            port: number,
            protocol: protocol.map(Into::into),
            ..Default::default()
        }
    }

    fn labelled(mut s: Service, labels: &[(&str, &str)]) -> Service {
        s.metadata.labels = Some(label_map(labels));
        s
    }

    fn lb_ip(mut s: Service, addr: &str) -> Service {
        spec(&mut s).load_balancer_ip = Some(addr.into());
        s
    }

    fn families(mut s: Service, policy: &str, fams: &[&str]) -> Service {
        spec(&mut s).ip_family_policy = Some(policy.into());
        spec(&mut s).ip_families = Some(strings(fams));
        s
    }

    fn ports(mut s: Service, list: &[(i32, &str)]) -> Service {
        spec(&mut s).ports = Some(list.iter().map(|(n, p)| port(*n, Some(p))).collect());
        s
    }

    fn local(mut s: Service, pod_selector: &[(&str, &str)]) -> Service {
        spec(&mut s).external_traffic_policy = Some("Local".into());
        spec(&mut s).selector = Some(label_map(pod_selector));
        s
    }

    fn shared(s: Service, key: &str) -> Service {
        annotate(s, "metallb.io/allow-shared-ip", key)
    }

    fn with_status(mut s: Service, addrs: &[&str]) -> Service {
        let ingress = addrs
            .iter()
            .map(|a| LoadBalancerIngress {
                ip: Some(a.to_string()),
                ..Default::default()
            })
            .collect();
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(ingress),
            }),
            ..Default::default()
        });
        s
    }

    fn req(s: Service) -> ServiceRequest {
        ServiceRequest::from_service(&s).unwrap()
    }

    fn req_err(s: Service) -> RequestError {
        ServiceRequest::from_service(&s).unwrap_err()
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey::new("default", name)
    }

    fn got(a: &Allocation, name: &str) -> Result<Vec<IpAddr>, AllocError> {
        a.services[&key(name)].clone()
    }

    fn assert_addrs(a: &Allocation, name: &str, expected: &[&str]) {
        assert_eq!(got(a, name), Ok(ips(expected)), "service {name}");
    }

    /// The services with their results written back as current addresses, as the daemon
    /// does through the status.
    fn feed_back(services: &[ServiceRequest], a: &Allocation) -> Vec<ServiceRequest> {
        services
            .iter()
            .map(|s| ServiceRequest {
                current: a.services[&s.key].clone().unwrap_or_default(),
                ..s.clone()
            })
            .collect()
    }

    /// Fisher-Yates driven by a fixed LCG: reproducible without a rand dependency.
    fn shuffle<T>(items: &mut [T], seed: &mut u64) {
        for i in (1..items.len()).rev() {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let j = ((*seed >> 33) % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }

    // ---- pool parsing ----------------------------------------------------------------

    #[test]
    fn cidr_v4_uses_network_and_broadcast() {
        let p = pool("p", &["198.18.100.0/30"]);
        assert_eq!(
            p.ranges().collect::<Vec<_>>(),
            vec![(ip("198.18.100.0"), ip("198.18.100.3"))]
        );
    }

    #[test]
    fn cidr_v6() {
        let p = pool("p", &["fd00:100::/120"]);
        assert_eq!(
            p.ranges().collect::<Vec<_>>(),
            vec![(ip("fd00:100::"), ip("fd00:100::ff"))]
        );
    }

    #[test]
    fn range_and_single_address_and_merge() {
        let p = pool(
            "p",
            &[
                "198.18.0.10 - 198.18.0.20",
                "198.18.0.21",
                "198.18.0.5",
                "fd00::1-fd00::3",
                "fd00::2",
            ],
        );
        assert_eq!(
            p.ranges().collect::<Vec<_>>(),
            vec![
                (ip("198.18.0.5"), ip("198.18.0.5")),
                (ip("198.18.0.10"), ip("198.18.0.21")),
                (ip("fd00::1"), ip("fd00::3")),
            ]
        );
        assert!(p.contains(ip("198.18.0.15")));
        assert!(!p.contains(ip("198.18.0.22")));
    }

    #[test]
    fn from_crd_reads_name_auto_assign_and_addresses() {
        let mut c = crd("blue", &["198.18.1.0/31"]);
        c.spec.auto_assign = false;
        let p = Pool::from_crd(&c).unwrap();
        assert_eq!(p.name, "blue");
        assert!(!p.auto_assign);
        assert!(p.contains(ip("198.18.1.1")));
        c.metadata.name = None;
        assert_eq!(Pool::from_crd(&c), Err(PoolError::MissingName));
    }

    #[test]
    fn empty_pool_is_valid_and_serves_nothing() {
        let p = pool("empty", &[]);
        let a = allocate(&[p], &[req(svc("a", 0))]);
        assert_eq!(
            got(&a, "a"),
            Err(AllocError::FamilyUnavailable { family: Family::V4 })
        );
    }

    #[test]
    fn host_bits_set_names_the_network() {
        let e = pool_err(&["198.18.100.5/28"]);
        assert_eq!(
            e,
            PoolError::HostBitsSet {
                pool: "p".into(),
                entry: "198.18.100.5/28".into(),
                network: "198.18.100.0/28".into(),
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("\"p\"") && msg.contains("198.18.100.0/28"),
            "{msg}"
        );
        assert_eq!(e.reason(), "InvalidAddresses");
        assert_eq!(
            pool_err(&["fd00:100::1/120"]),
            PoolError::HostBitsSet {
                pool: "p".into(),
                entry: "fd00:100::1/120".into(),
                network: "fd00:100::/120".into(),
            }
        );
    }

    #[test]
    fn invalid_entries_say_what_is_valid() {
        for (entry, expected) in [
            ("198.18.100.0/33", EXPECTED_CIDR),
            ("fd00::/129", EXPECTED_CIDR),
            ("banana/24", EXPECTED_CIDR),
            ("198.18.0.1-banana", EXPECTED_RANGE),
            ("198.18.0.1-", EXPECTED_RANGE),
            ("198.18.0.256", EXPECTED_ANY),
            ("", EXPECTED_ANY),
        ] {
            let e = pool_err(&["198.18.0.0/24", entry]);
            assert_eq!(
                e,
                PoolError::InvalidEntry {
                    pool: "p".into(),
                    entry: entry.into(),
                    expected
                },
                "{entry}"
            );
            assert!(e.to_string().contains("expected"), "{e}");
        }
    }

    #[test]
    fn mixed_and_reversed_ranges() {
        assert_eq!(
            pool_err(&["198.18.0.1-fd00::1"]),
            PoolError::MixedFamilyRange {
                pool: "p".into(),
                entry: "198.18.0.1-fd00::1".into()
            }
        );
        let e = pool_err(&["198.18.0.9-198.18.0.2"]);
        assert_eq!(
            e,
            PoolError::ReversedRange {
                pool: "p".into(),
                entry: "198.18.0.9-198.18.0.2".into(),
                suggestion: "198.18.0.2-198.18.0.9".into(),
            }
        );
        assert!(e.to_string().contains("198.18.0.2-198.18.0.9"), "{e}");
    }

    #[test]
    fn selector_errors() {
        let bad = |exprs| Pool::new("p", true, &[], Some(&selector(&[], exprs))).unwrap_err();
        let e = bad(vec![expr("tier", "Equals", &["web"])]);
        assert_eq!(e.reason(), "InvalidSelector");
        let msg = e.to_string();
        assert!(
            msg.contains("\"p\"") && msg.contains("Equals") && msg.contains("DoesNotExist"),
            "{msg}"
        );
        let msg = bad(vec![expr("tier", "In", &[])]).to_string();
        assert!(msg.contains("needs at least one value"), "{msg}");
        let msg = bad(vec![expr("tier", "Exists", &["x"])]).to_string();
        assert!(msg.contains("must not have values"), "{msg}");
    }

    // ---- selectors -------------------------------------------------------------------

    #[test]
    fn selector_semantics() {
        let matches = |sel: LabelSelector, labels: &[(&str, &str)]| {
            Selector::from_label_selector(&sel)
                .unwrap()
                .matches(&label_map(labels))
        };
        let web = [("tier", "web"), ("env", "prod")];
        let empty: [(&str, &str); 0] = [];
        assert!(matches(selector(&[], vec![]), &empty));
        assert!(matches(selector(&[("tier", "web")], vec![]), &web));
        assert!(!matches(selector(&[("tier", "db")], vec![]), &web));
        assert!(!matches(selector(&[("tier", "web")], vec![]), &empty));
        assert!(matches(
            selector(&[], vec![expr("tier", "In", &["db", "web"])]),
            &web
        ));
        assert!(!matches(
            selector(&[], vec![expr("tier", "In", &["db"])]),
            &web
        ));
        assert!(!matches(
            selector(&[], vec![expr("tier", "In", &["web"])]),
            &empty
        ));
        assert!(matches(
            selector(&[], vec![expr("tier", "NotIn", &["db"])]),
            &web
        ));
        assert!(!matches(
            selector(&[], vec![expr("tier", "NotIn", &["web"])]),
            &web
        ));
        assert!(matches(
            selector(&[], vec![expr("tier", "NotIn", &["web"])]),
            &empty
        ));
        assert!(matches(
            selector(&[], vec![expr("env", "Exists", &[])]),
            &web
        ));
        assert!(!matches(
            selector(&[], vec![expr("env", "Exists", &[])]),
            &empty
        ));
        assert!(!matches(
            selector(&[], vec![expr("env", "DoesNotExist", &[])]),
            &web
        ));
        assert!(matches(
            selector(&[], vec![expr("env", "DoesNotExist", &[])]),
            &empty
        ));
        // All terms must hold.
        let both = selector(&[("tier", "web")], vec![expr("env", "In", &["staging"])]);
        assert!(!matches(both, &web));
    }

    #[test]
    fn pool_selector_picks_pool() {
        let pools = [
            selected_pool(
                "a-web",
                &["198.18.1.0/30"],
                selector(&[("tier", "web")], vec![]),
            ),
            pool("b-any", &["198.18.2.0/30"]),
        ];
        let services = [
            req(labelled(svc("web", 0), &[("tier", "web")])),
            req(labelled(svc("db", 1), &[("tier", "db")])),
        ];
        let a = allocate(&pools, &services);
        assert_addrs(&a, "web", &["198.18.1.0"]);
        assert_addrs(&a, "db", &["198.18.2.0"]);
        // Only the selective pool: the db service has none.
        let a = allocate(&pools[..1], &services);
        assert_eq!(got(&a, "db"), Err(AllocError::NoEligiblePool));
    }

    // ---- service requests ------------------------------------------------------------

    #[test]
    fn request_defaults() {
        let r = req(svc("a", 0));
        assert_eq!(r.key, key("a"));
        assert_eq!(r.families, vec![Family::V4]);
        assert_eq!(r.family_policy, FamilyPolicy::SingleStack);
        assert_eq!(r.ports, BTreeSet::from([(80, Protocol::Tcp)]));
        assert_eq!(r.traffic_policy, TrafficPolicy::Cluster);
        assert!(r.requested.is_empty() && r.current.is_empty());
        assert_eq!((r.pool, r.sharing_key), (None, None));
    }

    #[test]
    fn request_reads_every_field() {
        let s = svc("a", 7);
        let s = families(s, "RequireDualStack", &["IPv6", "IPv4"]);
        let s = annotate(s, "metallb.io/loadBalancerIPs", "fd00::5, 198.18.0.5");
        let s = lb_ip(s, "198.18.0.5");
        let s = annotate(s, "metallb.io/address-pool", "blue");
        let s = shared(s, "k1");
        let s = ports(s, &[(443, "UDP"), (443, "TCP"), (9000, "SCTP")]);
        let s = local(s, &[("app", "x")]);
        let s = labelled(s, &[("tier", "web")]);
        let s = with_status(s, &["fd00::5", "not-an-ip", "198.18.0.5"]);
        let r = req(s);
        assert_eq!(r.families, vec![Family::V6, Family::V4]);
        assert_eq!(r.family_policy, FamilyPolicy::RequireDualStack);
        assert_eq!(r.requested, ips(&["198.18.0.5", "fd00::5"]));
        assert_eq!(r.pool.as_deref(), Some("blue"));
        assert_eq!(r.sharing_key.as_deref(), Some("k1"));
        assert_eq!(
            r.ports,
            BTreeSet::from([
                (443, Protocol::Tcp),
                (443, Protocol::Udp),
                (9000, Protocol::Sctp)
            ])
        );
        assert_eq!(r.traffic_policy, TrafficPolicy::Local);
        assert_eq!(r.selector, label_map(&[("app", "x")]));
        assert_eq!(r.labels, label_map(&[("tier", "web")]));
        assert_eq!(r.current, ips(&["198.18.0.5", "fd00::5"]));
        assert_eq!(
            r.created,
            Some(Time(Timestamp::from_second(1_700_000_007).unwrap()))
        );
    }

    #[test]
    fn legacy_annotation_prefix() {
        let s = annotate(
            svc("a", 0),
            "metallb.universe.tf/loadBalancerIPs",
            "198.18.0.9",
        );
        let s = annotate(s, "metallb.universe.tf/address-pool", "blue");
        let s = annotate(s, "metallb.universe.tf/allow-shared-ip", "k");
        let r = req(s);
        assert_eq!(r.requested, ips(&["198.18.0.9"]));
        assert_eq!(r.pool.as_deref(), Some("blue"));
        assert_eq!(r.sharing_key.as_deref(), Some("k"));
        // Both prefixes with the same value are fine; with different values, an error.
        let s = annotate(svc("b", 0), "metallb.universe.tf/address-pool", "blue");
        let s = annotate(s, "metallb.io/address-pool", "blue");
        assert_eq!(req(s).pool.as_deref(), Some("blue"));
        let s = annotate(svc("b", 0), "metallb.universe.tf/address-pool", "red");
        let s = annotate(s, "metallb.io/address-pool", "blue");
        let e = req_err(s);
        assert_eq!(e.reason(), "InvalidAnnotation");
        assert!(
            e.to_string().contains("metallb.universe.tf/address-pool")
                && e.to_string().contains("red"),
            "{e}"
        );
        // The legacy prefix is honoured end to end.
        let s = annotate(
            svc("c", 0),
            "metallb.universe.tf/loadBalancerIPs",
            "198.18.0.3",
        );
        let a = allocate(&[pool("p", &["198.18.0.0/30"])], &[req(s)]);
        assert_addrs(&a, "c", &["198.18.0.3"]);
    }

    #[test]
    fn empty_sharing_key_is_no_key() {
        assert_eq!(req(shared(svc("a", 0), " ")).sharing_key, None);
    }

    #[test]
    fn bad_requests_name_the_annotation_and_value() {
        let e = req_err(annotate(
            svc("a", 0),
            "metallb.io/loadBalancerIPs",
            "198.18.0.1,nope",
        ));
        assert_eq!(
            e,
            RequestError::InvalidAddress {
                service: key("a"),
                source_name: "metallb.io/loadBalancerIPs".into(),
                value: "nope".into()
            }
        );
        assert!(e.to_string().contains("metallb.io/loadBalancerIPs"), "{e}");

        let e = req_err(lb_ip(svc("a", 0), "198.18.0.300"));
        assert_eq!(
            e,
            RequestError::InvalidAddress {
                service: key("a"),
                source_name: "spec.loadBalancerIP".into(),
                value: "198.18.0.300".into()
            }
        );

        let s = annotate(
            svc("a", 0),
            "metallb.io/loadBalancerIPs",
            "198.18.0.1,198.18.0.2",
        );
        let e = req_err(s);
        assert_eq!(
            e,
            RequestError::TwoAddressesOfFamily {
                service: key("a"),
                source_name: "metallb.io/loadBalancerIPs".into(),
                value: "198.18.0.1,198.18.0.2".into(),
                family: Family::V4
            }
        );

        let s = annotate(svc("a", 0), "metallb.io/loadBalancerIPs", "198.18.0.1");
        let e = req_err(lb_ip(s, "198.18.0.2"));
        assert_eq!(
            e,
            RequestError::ConflictingRequests {
                service: key("a"),
                load_balancer_ip: "198.18.0.2".into(),
                annotation: "metallb.io/loadBalancerIPs".into(),
                value: "198.18.0.1".into()
            }
        );
        assert_eq!(e.reason(), "InvalidAnnotation");

        // Agreeing field and annotation are fine, and so is a duplicated address.
        let s = annotate(
            svc("a", 0),
            "metallb.io/loadBalancerIPs",
            "198.18.0.1,198.18.0.1",
        );
        assert_eq!(req(lb_ip(s, "198.18.0.1")).requested, ips(&["198.18.0.1"]));

        let e = req_err(lb_ip(svc("a", 0), "fd00::1"));
        assert_eq!(
            e,
            RequestError::FamilyNotWanted {
                service: key("a"),
                source_name: "spec.loadBalancerIP".into(),
                value: ip("fd00::1"),
                family: Family::V6
            }
        );
        assert_eq!(e.reason(), "FamilyMismatch");
    }

    #[test]
    fn bad_spec_fields() {
        let mut s = svc("a", 0);
        spec(&mut s).ip_family_policy = Some("DualStackPlease".into());
        assert!(
            matches!(req_err(s), RequestError::InvalidFamilyPolicy { value, .. } if value == "DualStackPlease")
        );
        let e = req_err(families(svc("a", 0), "SingleStack", &["IPv5"]));
        assert!(matches!(e, RequestError::InvalidFamily { ref value, .. } if value == "IPv5"));
        assert_eq!(e.reason(), "InvalidSpec");
        let e = req_err(ports(svc("a", 0), &[(80, "ICMP")]));
        assert!(matches!(e, RequestError::InvalidProtocol { value, .. } if value == "ICMP"));
        let e = req_err(ports(svc("a", 0), &[(70000, "TCP")]));
        assert!(matches!(e, RequestError::InvalidPort { port: 70000, .. }));
        let mut s = svc("a", 0);
        spec(&mut s).external_traffic_policy = Some("Global".into());
        assert!(matches!(
            req_err(s),
            RequestError::InvalidTrafficPolicy { .. }
        ));
        let mut s = svc("a", 0);
        s.metadata.name = None;
        assert_eq!(req_err(s), RequestError::MissingMetadata { field: "name" });
    }

    // ---- allocation: basics, determinism, idempotence ---------------------------------

    #[test]
    fn lowest_address_of_first_pool_by_name_then_next_pool() {
        let pools = [pool("b", &["198.18.2.0/31"]), pool("a", &["198.18.1.0/31"])];
        let services: Vec<_> = (0..4).map(|i| req(svc(&format!("s{i}"), i))).collect();
        let a = allocate(&pools, &services);
        assert_addrs(&a, "s0", &["198.18.1.0"]);
        assert_addrs(&a, "s1", &["198.18.1.1"]);
        assert_addrs(&a, "s2", &["198.18.2.0"]);
        assert_addrs(&a, "s3", &["198.18.2.1"]);
        assert!(a.problems.is_empty());
    }

    #[test]
    fn exhaustion_fails_the_youngest() {
        let pools = [pool("small", &["198.18.3.0/30"])];
        // Ages deliberately not in name order: "e" is the youngest.
        let ages = [("a", 3), ("b", 0), ("c", 4), ("d", 1), ("e", 9)];
        let services: Vec<_> = ages.iter().map(|(n, age)| req(svc(n, *age))).collect();
        let a = allocate(&pools, &services);
        assert_addrs(&a, "b", &["198.18.3.0"]);
        assert_addrs(&a, "d", &["198.18.3.1"]);
        assert_addrs(&a, "a", &["198.18.3.2"]);
        assert_addrs(&a, "c", &["198.18.3.3"]);
        let e = got(&a, "e").unwrap_err();
        assert_eq!(
            e,
            AllocError::PoolExhausted {
                pool: "small".into(),
                family: Family::V4
            }
        );
        assert_eq!(e.reason(), "PoolExhausted");
        assert!(e.to_string().contains("\"small\""), "{e}");
    }

    #[test]
    fn same_timestamp_orders_by_namespace_then_name_and_missing_timestamp_is_youngest() {
        let mut late = svc("a-no-time", 0);
        late.metadata.creation_timestamp = None;
        let mut other_ns = svc("a", 5);
        other_ns.metadata.namespace = Some("zz".into());
        let services = [req(late), req(svc("b", 5)), req(other_ns), req(svc("c", 5))];
        let a = allocate(&[pool("p", &["198.18.4.0/30"])], &services);
        assert_addrs(&a, "b", &["198.18.4.0"]);
        assert_addrs(&a, "c", &["198.18.4.1"]);
        assert_eq!(
            a.services[&ServiceKey::new("zz", "a")],
            Ok(ips(&["198.18.4.2"]))
        );
        assert_addrs(&a, "a-no-time", &["198.18.4.3"]);
    }

    /// A mixed scenario: several pools, requests, sharing, dual stack, failures.
    fn scenario() -> (Vec<Pool>, Vec<ServiceRequest>) {
        let pools = vec![
            pool("a", &["198.18.10.0/29"]),
            pool("b", &["198.18.10.4-198.18.10.12", "fd00:10::/126"]),
            manual_pool("c", &["198.18.11.0/30"]),
        ];
        let services = vec![
            req(svc("s0", 0)),
            req(shared(ports(svc("s1", 1), &[(53, "UDP")]), "dns")),
            req(shared(ports(svc("s2", 2), &[(53, "TCP")]), "dns")),
            req(annotate(svc("s3", 3), "metallb.io/address-pool", "c")),
            req(lb_ip(svc("s4", 4), "198.18.10.9")),
            req(families(svc("s5", 5), "PreferDualStack", &["IPv4", "IPv6"])),
            req(families(
                svc("s6", 6),
                "RequireDualStack",
                &["IPv6", "IPv4"],
            )),
            req(lb_ip(svc("s7", 7), "198.18.10.9")),
            req(svc("s8", 8)),
            req(with_status(svc("s9", 9), &["198.18.10.11"])),
        ];
        let more: Vec<_> = (10..16).map(|i| req(svc(&format!("s{i}"), i))).collect();
        (pools, [services, more].concat())
    }

    #[test]
    fn scenario_exact_result() {
        let (pools, services) = scenario();
        let a = allocate(&pools, &services);
        assert_addrs(&a, "s0", &["198.18.10.0"]);
        assert_addrs(&a, "s1", &["198.18.10.1"]);
        assert_addrs(&a, "s2", &["198.18.10.1"]);
        assert_addrs(&a, "s3", &["198.18.11.0"]);
        assert_addrs(&a, "s4", &["198.18.10.9"]);
        assert_addrs(&a, "s5", &["198.18.10.2", "fd00:10::"]);
        assert_addrs(&a, "s6", &["198.18.10.3", "fd00:10::1"]);
        assert_eq!(
            got(&a, "s7"),
            Err(AllocError::AddressInUse {
                addr: ip("198.18.10.9"),
                by: key("s4"),
                why: ShareRefusal::NoSharingKey
            })
        );
        assert_addrs(&a, "s8", &["198.18.10.4"]);
        assert_addrs(&a, "s9", &["198.18.10.11"]);
        assert_addrs(&a, "s10", &["198.18.10.5"]);
        assert_addrs(&a, "s11", &["198.18.10.6"]);
        assert_addrs(&a, "s12", &["198.18.10.7"]);
        // Pool a is full; b's remaining: .8, .10, .12 (.9 and .11 are held).
        assert_addrs(&a, "s13", &["198.18.10.8"]);
        assert_addrs(&a, "s14", &["198.18.10.10"]);
        assert_addrs(&a, "s15", &["198.18.10.12"]);
        // a and b overlap on .4-.7: they belong to a.
        assert_eq!(
            a.problems,
            vec![PoolProblem {
                pool: "b".into(),
                owner: "a".into(),
                first: ip("198.18.10.4"),
                last: ip("198.18.10.7")
            }]
        );
    }

    #[test]
    fn deterministic_under_permutation() {
        let (mut pools, mut services) = scenario();
        let expected = allocate(&pools, &services);
        let mut seed = 42;
        for _ in 0..50 {
            shuffle(&mut pools, &mut seed);
            shuffle(&mut services, &mut seed);
            assert_eq!(allocate(&pools, &services), expected);
        }
    }

    #[test]
    fn idempotent_when_fed_back() {
        let (pools, services) = scenario();
        let first = allocate(&pools, &services);
        let round2 = feed_back(&services, &first);
        let second = allocate(&pools, &round2);
        assert_eq!(second, first);
        assert_eq!(allocate(&pools, &feed_back(&round2, &second)), first);
    }

    // ---- keeping and moving ----------------------------------------------------------

    #[test]
    fn keeps_current_address_even_when_a_lower_one_is_free() {
        let pools = [pool("p", &["198.18.5.0/29"])];
        let a = allocate(&pools, &[req(with_status(svc("a", 0), &["198.18.5.6"]))]);
        assert_addrs(&a, "a", &["198.18.5.6"]);
    }

    #[test]
    fn younger_holder_keeps_address_an_older_newcomer_cannot_take() {
        // "old" is older but new; "young" already holds .0: new allocations avoid it.
        let pools = [pool("p", &["198.18.5.0/30"])];
        let services = [
            req(svc("old", 0)),
            req(with_status(svc("young", 5), &["198.18.5.0"])),
        ];
        let a = allocate(&pools, &services);
        assert_addrs(&a, "young", &["198.18.5.0"]);
        assert_addrs(&a, "old", &["198.18.5.1"]);
    }

    #[test]
    fn on_duplicate_current_address_the_older_keeps_it() {
        let pools = [pool("p", &["198.18.5.0/30"])];
        let services = [
            req(with_status(svc("young", 5), &["198.18.5.2"])),
            req(with_status(svc("old", 0), &["198.18.5.2"])),
        ];
        let a = allocate(&pools, &services);
        assert_addrs(&a, "old", &["198.18.5.2"]);
        assert_addrs(&a, "young", &["198.18.5.0"]);
    }

    #[test]
    fn moves_when_request_changes() {
        let pools = [pool("a", &["198.18.6.0/30"]), pool("b", &["198.18.7.0/30"])];
        // New requested address.
        let s = with_status(lb_ip(svc("x", 0), "198.18.6.3"), &["198.18.6.1"]);
        assert_addrs(&allocate(&pools, &[req(s)]), "x", &["198.18.6.3"]);
        // Different pool annotation.
        let s = with_status(
            annotate(svc("x", 0), "metallb.io/address-pool", "b"),
            &["198.18.6.1"],
        );
        assert_addrs(&allocate(&pools, &[req(s)]), "x", &["198.18.7.0"]);
        // Same pool annotation: stays.
        let s = with_status(
            annotate(svc("x", 0), "metallb.io/address-pool", "a"),
            &["198.18.6.1"],
        );
        assert_addrs(&allocate(&pools, &[req(s)]), "x", &["198.18.6.1"]);
    }

    #[test]
    fn moves_when_current_address_is_no_longer_valid() {
        let pools = [pool("p", &["198.18.6.0/30"])];
        // Outside every pool (the pool shrank).
        let s = with_status(svc("x", 0), &["198.18.9.9"]);
        assert_addrs(&allocate(&pools, &[req(s)]), "x", &["198.18.6.0"]);
        // The pool stopped auto-assigning: only named or requested services stay.
        let manual = [manual_pool("p", &["198.18.6.0/30"])];
        let s = with_status(svc("x", 0), &["198.18.6.2"]);
        assert_eq!(
            got(&allocate(&manual, &[req(s)]), "x"),
            Err(AllocError::NoEligiblePool)
        );
        let s = with_status(lb_ip(svc("x", 0), "198.18.6.2"), &["198.18.6.2"]);
        assert_addrs(&allocate(&manual, &[req(s)]), "x", &["198.18.6.2"]);
        // Extra addresses of one family beyond the first valid one are dropped.
        let s = with_status(svc("x", 0), &["198.18.6.3", "198.18.6.1"]);
        assert_addrs(&allocate(&pools, &[req(s)]), "x", &["198.18.6.1"]);
    }

    // ---- requested addresses and named pools ------------------------------------------

    #[test]
    fn requested_address_inside_and_outside_pools() {
        let pools = [
            pool("a", &["198.18.8.0/30"]),
            manual_pool("m", &["198.18.8.8/30"]),
        ];
        let services = [
            req(lb_ip(svc("in", 0), "198.18.8.2")),
            req(lb_ip(svc("manual", 1), "198.18.8.9")),
            req(lb_ip(svc("out", 2), "198.18.9.1")),
            req(annotate(
                annotate(
                    svc("wrong-pool", 3),
                    "metallb.io/loadBalancerIPs",
                    "198.18.8.9",
                ),
                "metallb.io/address-pool",
                "a",
            )),
        ];
        let a = allocate(&pools, &services);
        assert_addrs(&a, "in", &["198.18.8.2"]);
        assert_addrs(&a, "manual", &["198.18.8.9"]);
        let e = got(&a, "out").unwrap_err();
        assert_eq!(
            e,
            AllocError::NotInAnyPool {
                addr: ip("198.18.9.1")
            }
        );
        assert!(e.to_string().contains("198.18.9.1"), "{e}");
        assert_eq!(
            got(&a, "wrong-pool"),
            Err(AllocError::NotInAnyPool {
                addr: ip("198.18.8.9")
            })
        );
    }

    #[test]
    fn requested_address_respects_the_pool_selector() {
        let pools = [selected_pool(
            "web",
            &["198.18.8.0/30"],
            selector(&[("tier", "web")], vec![]),
        )];
        let s = lb_ip(labelled(svc("db", 0), &[("tier", "db")]), "198.18.8.1");
        assert_eq!(
            got(&allocate(&pools, &[req(s)]), "db"),
            Err(AllocError::NotInAnyPool {
                addr: ip("198.18.8.1")
            })
        );
    }

    #[test]
    fn named_pools() {
        let pools = [
            pool("auto", &["198.18.12.0/30"]),
            manual_pool("manual", &["198.18.13.0/30"]),
        ];
        let services = [
            req(svc("plain", 0)),
            req(annotate(
                svc("named", 1),
                "metallb.io/address-pool",
                "manual",
            )),
            req(annotate(svc("ghost", 2), "metallb.io/address-pool", "nope")),
        ];
        let a = allocate(&pools, &services);
        assert_addrs(&a, "plain", &["198.18.12.0"]);
        assert_addrs(&a, "named", &["198.18.13.0"]);
        let e = got(&a, "ghost").unwrap_err();
        assert_eq!(
            e,
            AllocError::UnknownPool {
                name: "nope".into()
            }
        );
        assert!(e.to_string().contains("\"nope\""), "{e}");
        // With only the manual pool, a plain service has no eligible pool.
        let a = allocate(&pools[1..], &services[..1]);
        assert_eq!(got(&a, "plain"), Err(AllocError::NoEligiblePool));
    }

    #[test]
    fn named_pool_with_non_matching_selector_is_not_eligible() {
        let pools = [selected_pool(
            "web",
            &["198.18.8.0/30"],
            selector(&[("tier", "web")], vec![]),
        )];
        let s = annotate(svc("x", 0), "metallb.io/address-pool", "web");
        assert_eq!(
            got(&allocate(&pools, &[req(s)]), "x"),
            Err(AllocError::NoEligiblePool)
        );
    }

    // ---- sharing ---------------------------------------------------------------------

    #[test]
    fn compatible_sharers_share_the_address() {
        let pools = [pool("p", &["198.18.14.0/30"])];
        let services = [
            req(svc("first", 0)),
            req(shared(ports(svc("tcp", 1), &[(443, "TCP")]), "k")),
            req(shared(ports(svc("udp", 2), &[(443, "UDP")]), "k")),
            req(shared(
                ports(svc("other-key", 3), &[(8443, "UDP")]),
                "other",
            )),
        ];
        let a = allocate(&pools, &services);
        assert_addrs(&a, "first", &["198.18.14.0"]);
        assert_addrs(&a, "tcp", &["198.18.14.1"]);
        assert_addrs(&a, "udp", &["198.18.14.1"]);
        assert_addrs(&a, "other-key", &["198.18.14.2"]);
    }

    #[test]
    fn sharer_with_port_conflict_gets_its_own_address() {
        let pools = [pool("p", &["198.18.14.0/30"])];
        let services = [
            req(shared(ports(svc("a", 0), &[(443, "TCP")]), "k")),
            req(shared(
                ports(svc("b", 1), &[(443, "TCP"), (80, "TCP")]),
                "k",
            )),
        ];
        let a = allocate(&pools, &services);
        assert_addrs(&a, "a", &["198.18.14.0"]);
        assert_addrs(&a, "b", &["198.18.14.1"]);
    }

    #[test]
    fn requested_shared_address_port_conflict() {
        let pools = [pool("p", &["198.18.14.0/30"])];
        let services = [
            req(shared(
                lb_ip(ports(svc("a", 0), &[(443, "TCP")]), "198.18.14.3"),
                "k",
            )),
            req(shared(
                lb_ip(ports(svc("b", 1), &[(443, "TCP")]), "198.18.14.3"),
                "k",
            )),
            req(shared(
                lb_ip(ports(svc("c", 2), &[(443, "UDP")]), "198.18.14.3"),
                "k",
            )),
        ];
        let a = allocate(&pools, &services);
        assert_addrs(&a, "a", &["198.18.14.3"]);
        let e = got(&a, "b").unwrap_err();
        assert_eq!(
            e,
            AllocError::PortConflict {
                addr: ip("198.18.14.3"),
                by: key("a"),
                port: 443,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(e.reason(), "PortConflict");
        assert!(
            e.to_string().contains("443/TCP") && e.to_string().contains("default/a"),
            "{e}"
        );
        assert_addrs(&a, "c", &["198.18.14.3"]);
    }

    #[test]
    fn sharing_refusals() {
        let pools = [pool("p", &["198.18.14.0/30"])];
        let on = |s: Service| lb_ip(s, "198.18.14.2");
        let holder = req(shared(on(ports(svc("holder", 0), &[(80, "TCP")])), "k"));
        let refused = |s: Service| {
            let a = allocate(&pools, &[holder.clone(), req(on(ports(s, &[(81, "TCP")])))]);
            match got(&a, "x").unwrap_err() {
                AllocError::AddressInUse { addr, by, why } => {
                    assert_eq!((addr, by), (ip("198.18.14.2"), key("holder")));
                    why
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(refused(svc("x", 1)), ShareRefusal::NoSharingKey);
        assert_eq!(
            refused(shared(svc("x", 1), "other")),
            ShareRefusal::DifferentSharingKey
        );
        assert_eq!(
            refused(local(shared(svc("x", 1), "k"), &[])),
            ShareRefusal::TrafficPolicy
        );
        let e = AllocError::AddressInUse {
            addr: ip("198.18.14.2"),
            by: key("holder"),
            why: ShareRefusal::NoSharingKey,
        };
        assert_eq!(e.reason(), "AddressInUse");
        assert!(e.to_string().contains("default/holder"), "{e}");
    }

    #[test]
    fn local_sharers_need_equal_pod_selectors() {
        let pools = [pool("p", &["198.18.15.0/30"])];
        let local_svc = |name, age, app| {
            req(shared(
                local(
                    ports(svc(name, age), &[(age as i32 + 1, "TCP")]),
                    &[("app", app)],
                ),
                "k",
            ))
        };
        let services = [
            local_svc("a", 0, "x"),
            local_svc("b", 1, "x"),
            local_svc("c", 2, "y"),
        ];
        let a = allocate(&pools, &services);
        assert_addrs(&a, "a", &["198.18.15.0"]);
        assert_addrs(&a, "b", &["198.18.15.0"]);
        assert_addrs(&a, "c", &["198.18.15.1"]);
        // Requesting the shared address with another selector is refused.
        let c = req(lb_ip(
            shared(
                local(ports(svc("c", 2), &[(9, "TCP")]), &[("app", "y")]),
                "k",
            ),
            "198.18.15.0",
        ));
        let a = allocate(&pools, &[services[0].clone(), c]);
        assert_eq!(
            got(&a, "c"),
            Err(AllocError::AddressInUse {
                addr: ip("198.18.15.0"),
                by: key("a"),
                why: ShareRefusal::Selector
            })
        );
    }

    #[test]
    fn sharing_removed_moves_the_younger_service() {
        // Both hold .0; "b" lost its sharing key: the older keeps, the younger moves.
        let pools = [pool("p", &["198.18.15.0/30"])];
        let services = [
            req(with_status(
                shared(ports(svc("a", 0), &[(1, "TCP")]), "k"),
                &["198.18.15.0"],
            )),
            req(with_status(
                ports(svc("b", 1), &[(2, "TCP")]),
                &["198.18.15.0"],
            )),
        ];
        let a = allocate(&pools, &services);
        assert_addrs(&a, "a", &["198.18.15.0"]);
        assert_addrs(&a, "b", &["198.18.15.1"]);
    }

    // ---- dual stack --------------------------------------------------------------------

    fn dual_pools() -> Vec<Pool> {
        vec![
            pool("v4", &["198.18.16.0/30"]),
            pool("v6", &["fd00:16::/126"]),
        ]
    }

    #[test]
    fn single_stack_families() {
        let s = families(svc("six", 0), "SingleStack", &["IPv6"]);
        assert_addrs(
            &allocate(&dual_pools(), &[req(s.clone())]),
            "six",
            &["fd00:16::"],
        );
        let a = allocate(&dual_pools()[..1], &[req(s)]);
        let e = got(&a, "six").unwrap_err();
        assert_eq!(e, AllocError::FamilyUnavailable { family: Family::V6 });
        assert_eq!(e.reason(), "FamilyUnavailable");
        assert!(e.to_string().contains("IPv6"), "{e}");
    }

    #[test]
    fn prefer_dual_stack() {
        let s = families(svc("p", 0), "PreferDualStack", &["IPv6", "IPv4"]);
        assert_addrs(
            &allocate(&dual_pools(), &[req(s.clone())]),
            "p",
            &["198.18.16.0", "fd00:16::"],
        );
        // No IPv6 pool: fine with IPv4 alone.
        assert_addrs(
            &allocate(&dual_pools()[..1], &[req(s.clone())]),
            "p",
            &["198.18.16.0"],
        );
        // No IPv4 pool: fine with IPv6 alone.
        assert_addrs(
            &allocate(&dual_pools()[1..], &[req(s.clone())]),
            "p",
            &["fd00:16::"],
        );
        // No pool at all.
        assert_eq!(
            got(&allocate(&[], &[req(s)]), "p"),
            Err(AllocError::NoEligiblePool)
        );
    }

    #[test]
    fn prefer_dual_stack_with_exhausted_family_fails() {
        let pools = [
            pool("v4", &["198.18.16.0/30"]),
            pool("v6", &["fd00:16::/128"]),
        ];
        let services = [
            req(families(svc("a", 0), "SingleStack", &["IPv6"])),
            req(families(svc("b", 1), "PreferDualStack", &["IPv4", "IPv6"])),
        ];
        let a = allocate(&pools, &services);
        assert_addrs(&a, "a", &["fd00:16::"]);
        assert_eq!(
            got(&a, "b"),
            Err(AllocError::PoolExhausted {
                pool: "v6".into(),
                family: Family::V6
            })
        );
    }

    #[test]
    fn require_dual_stack() {
        let s = families(svc("r", 0), "RequireDualStack", &["IPv4", "IPv6"]);
        assert_addrs(
            &allocate(&dual_pools(), &[req(s.clone())]),
            "r",
            &["198.18.16.0", "fd00:16::"],
        );
        // Without an IPv6 pool it fails, and holds no IPv4 address: "next" gets .0.
        let next = req(svc("next", 1));
        let a = allocate(&dual_pools()[..1], &[req(s), next]);
        assert_eq!(
            got(&a, "r"),
            Err(AllocError::FamilyUnavailable { family: Family::V6 })
        );
        assert_addrs(&a, "next", &["198.18.16.0"]);
    }

    #[test]
    fn failing_service_releases_kept_address() {
        let s = families(svc("r", 0), "RequireDualStack", &["IPv4", "IPv6"]);
        let s = with_status(s, &["198.18.16.2", "fd00:99::1"]);
        let services = [req(s), req(svc("next", 1))];
        let a = allocate(&dual_pools()[..1], &services);
        assert_eq!(
            got(&a, "r"),
            Err(AllocError::FamilyUnavailable { family: Family::V6 })
        );
        assert_addrs(&a, "next", &["198.18.16.0"]);
        // Feeding back (r now has nothing) changes nothing.
        assert_eq!(allocate(&dual_pools()[..1], &feed_back(&services, &a)), a);
    }

    #[test]
    fn dual_stack_requested_v4_and_allocated_v6() {
        let s = lb_ip(
            families(svc("r", 0), "RequireDualStack", &["IPv4", "IPv6"]),
            "198.18.16.3",
        );
        assert_addrs(
            &allocate(&dual_pools(), &[req(s)]),
            "r",
            &["198.18.16.3", "fd00:16::"],
        );
    }

    // ---- overlaps ----------------------------------------------------------------------

    #[test]
    fn overlapping_pools_belong_to_the_smaller_name() {
        let pools = [
            manual_pool("alpha", &["198.18.17.4/30"]),
            pool("beta", &["198.18.17.0/29"]),
            pool("gamma", &["198.18.17.6-198.18.17.9"]),
        ];
        let services: Vec<_> = (0..6).map(|i| req(svc(&format!("s{i}"), i))).collect();
        let a = allocate(&pools, &services);
        // beta owns .0-.3; .4-.7 are alpha's (manual) ; gamma owns .8-.9.
        assert_addrs(&a, "s0", &["198.18.17.0"]);
        assert_addrs(&a, "s3", &["198.18.17.3"]);
        assert_addrs(&a, "s4", &["198.18.17.8"]);
        assert_addrs(&a, "s5", &["198.18.17.9"]);
        assert_eq!(
            a.problems,
            vec![
                PoolProblem {
                    pool: "beta".into(),
                    owner: "alpha".into(),
                    first: ip("198.18.17.4"),
                    last: ip("198.18.17.7")
                },
                PoolProblem {
                    pool: "gamma".into(),
                    owner: "alpha".into(),
                    first: ip("198.18.17.6"),
                    last: ip("198.18.17.7")
                },
            ]
        );
        assert_eq!(a.problems[0].reason(), "PoolOverlap");
        let msg = a.problems[0].to_string();
        assert!(
            msg.contains("\"beta\"")
                && msg.contains("\"alpha\"")
                && msg.contains("198.18.17.4-198.18.17.7"),
            "{msg}"
        );
        // A requested address in the overlap belongs to alpha only: naming beta fails.
        let s = annotate(
            lb_ip(svc("x", 0), "198.18.17.5"),
            "metallb.io/address-pool",
            "beta",
        );
        assert_eq!(
            got(&allocate(&pools, &[req(s)]), "x"),
            Err(AllocError::NotInAnyPool {
                addr: ip("198.18.17.5")
            })
        );
    }

    // ---- size ------------------------------------------------------------------------

    #[test]
    fn ipv6_slash_64_with_1000_services_is_fast() {
        let pools = [pool("big", &["fd00:64::/64"])];
        let services: Vec<_> = (0..1000)
            .map(|i| {
                req(families(
                    svc(&format!("s{i:04}"), i),
                    "SingleStack",
                    &["IPv6"],
                ))
            })
            .collect();
        let start = Instant::now();
        let a = allocate(&pools, &services);
        let elapsed = start.elapsed();
        assert!(elapsed.as_millis() < 500, "{elapsed:?}");
        assert_addrs(&a, "s0000", &["fd00:64::"]);
        assert_addrs(&a, "s0999", &["fd00:64::3e7"]);
        // Feeding back is just as quick and changes nothing.
        assert_eq!(allocate(&pools, &feed_back(&services, &a)), a);
    }

    #[test]
    fn range_ending_at_the_top_of_the_address_space_does_not_overflow() {
        // Not an address a test may use on the wire; only the arithmetic is exercised.
        let top = Range::new(
            ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"),
            ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        );
        let mut holders = Holders::default();
        let a = req(svc("a", 0));
        assert_eq!(lowest_free_in(&top, &holders), Some(top.first_addr()));
        holders.add(top.first_addr(), &a);
        holders.add(top.last_addr(), &a);
        assert_eq!(lowest_free_in(&top, &holders), None);
    }

    // ---- pool status -------------------------------------------------------------------

    #[test]
    fn pool_status_counts_distinct_assigned_addresses_per_family() {
        let pools = [
            pool(
                "dual",
                &[
                    "198.18.100.0/30",
                    "198.18.100.10-198.18.100.11",
                    "fd00::/64",
                ],
            ),
            pool("other", &["198.18.200.0/31"]),
        ];
        let mut services = BTreeMap::new();
        services.insert(key("a"), Ok(ips(&["198.18.100.1", "fd00::5"])));
        // Shares a's IPv4 address: counted once.
        services.insert(key("b"), Ok(ips(&["198.18.100.1"])));
        services.insert(key("c"), Ok(ips(&["198.18.100.10"])));
        services.insert(key("d"), Err(AllocError::NoEligiblePool));
        let a = Allocation {
            services,
            problems: Vec::new(),
        };
        let st = pool_statuses(&pools, &a);
        assert_eq!(
            st["dual"],
            IPPoolStatus {
                assigned_ipv4: 2,
                assigned_ipv6: 1,
                available_ipv4: 4,
                // 2^64 - 1 free addresses do not fit an int64.
                available_ipv6: i64::MAX,
            }
        );
        assert_eq!(
            st["other"],
            IPPoolStatus {
                available_ipv4: 2,
                ..IPPoolStatus::default()
            }
        );
    }

    // ---- messages ----------------------------------------------------------------------

    #[test]
    fn every_error_message_is_one_sentence_and_reason_is_camel_case() {
        let errors = [
            AllocError::PoolExhausted {
                pool: "p".into(),
                family: Family::V4,
            },
            AllocError::NoEligiblePool,
            AllocError::UnknownPool { name: "p".into() },
            AllocError::FamilyUnavailable { family: Family::V6 },
            AllocError::NotInAnyPool {
                addr: ip("198.18.0.1"),
            },
            AllocError::AddressInUse {
                addr: ip("198.18.0.1"),
                by: key("b"),
                why: ShareRefusal::Selector,
            },
            AllocError::PortConflict {
                addr: ip("198.18.0.1"),
                by: key("b"),
                port: 443,
                protocol: Protocol::Udp,
            },
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(!msg.contains('\n') && !msg.contains(". "), "{msg}");
            let reason = e.reason();
            assert!(
                reason.chars().next().unwrap().is_ascii_uppercase(),
                "{reason}"
            );
            assert!(reason.chars().all(|c| c.is_ascii_alphabetic()), "{reason}");
        }
    }
}
