//! The static configuration of `lb run --config lb.toml`: the file format, its validation,
//! the resolved [`Plan`] the daemon programs the data plane from, and the ordered [`Change`]s
//! that take the data plane from one plan to the next.
//!
//! Three steps, only the last touches the kernel:
//!
//! 1. [`Config::load`] parses and validates the whole file. Every problem found is reported
//!    (not just the first), each as `file:line:column: field: what is wrong; what is valid`.
//!    Structural problems (TOML syntax, unknown or missing fields, a string where a number
//!    belongs) stop parsing, so they come one at a time; everything else is collected.
//! 2. [`Plan::build`] resolves the config into VIP indexes and backend ids, reusing the
//!    previous plan's numbers for unchanged entries, and [`Plan::diff`] lists the map writes.
//! 3. [`apply`] performs them in order on a [`Dataplane`].
//!
//! `deploy/examples/lb.toml` is a documented example of the format; the fields are:
//!
//! ```toml
//! interfaces = ["eth0", { name = "eth1", xdp_mode = "generic" }]  # required, >= 1
//! backend_interfaces = ["eth2"]   # optional: reverse NAT (TC) on the interfaces facing backends
//! metrics_addr = "127.0.0.1:9100"                                  # optional
//!
//! [reverse_nat]                   # optional; these are the defaults
//! max_flows = 262144              # reply-table capacity, 1..=16777216 (start-up only)
//! tcp_timeout_s = 21600           # idle timeouts from the last reply, in seconds
//! udp_timeout_s = 120
//! unreplied_timeout_s = 30
//! closing_timeout_s = 10          # after a TCP FIN or RST
//! mark_remote = true              # steering mark on packets to backends behind other nodes
//!
//! [[vips]]
//! name = "web"                    # optional label
//! address = "198.18.0.100"        # IPv4 or IPv6
//! ports = [443]                   # 1..=65535, at least one
//! protocols = ["tcp", "udp"]      # each (address, port, protocol) is one data-plane VIP
//! quic = true                     # default: true when the VIP has [[vips.quic_lb]] configs
//! maglev_table_size = 65537       # prime, <= 65537, >= the backends with weight > 0
//! learned_cid_len = 8             # optional, 1..=20: learned-CID mode (see below)
//! session_affinity = "client_ip"  # or "none" (default): Kubernetes sessionAffinity
//! source_ranges = ["198.18.0.0/24"]  # optional: loadBalancerSourceRanges (see below)
//!
//! [[vips.quic_lb]]
//! config_id = 0                   # config rotation value 0..=6
//! server_id_len = 2               # 1..=15 octets
//! nonce_len = 6                   # >= 4; server_id_len + nonce_len <= 19
//! key = "000102030405060708090a0b0c0d0e0f"  # or key_file = "web.key"; neither: plaintext
//! encode_length = true            # default true (servers self-encode the CID length)
//!
//! [[vips.backends]]
//! address = "198.19.0.10"         # same family as the VIP
//! port = 8443
//! weight = 1                      # default 1; 0 = drained (see below)
//! server_id = "0a01"              # or server_ids = { 0 = "0a01", 1 = "0b000001" }
//! ```
//!
//! Rules worth knowing:
//! - **Server IDs.** `server_id` is used under *every* QUIC-LB config of the VIP, so it must
//!   have the server-ID length of all of them. When the VIP's configs differ in length (a key
//!   or length rotation), give `server_ids`, a table from config rotation value to server ID,
//!   with one entry for every config. On a VIP that routes QUIC by server ID (`quic = true`)
//!   every backend needs its server ID(s); server IDs are unique per VIP and config.
//! - **Weights** are relative Maglev shares, 0..=65535. Weight 0 drains a backend: it gets no
//!   new flows from the Maglev ring, but its backend entry and server IDs stay, so existing
//!   QUIC connections (routed by connection ID) and pinned flows keep reaching it. A VIP whose
//!   backends are all drained (or that has none) drops new flows.
//! - **`quic = false`** on a VIP with QUIC-LB configs keeps the configs validated but does not
//!   install them: its UDP ports use 4-tuple Maglev hashing only. `quic` only affects UDP.
//! - **`learned_cid_len`** turns on learned-CID mode on the VIP's UDP ports, for QUIC
//!   servers that choose random connection IDs of this length (8 for aioquic): the reverse
//!   NAT (`backend_interfaces`) learns each CID from the source CID of the backend's
//!   long-header replies, and packets whose DCID is a learned CID go to that backend even
//!   when the client's address or port changed. Other packets use the connection table and
//!   Maglev as usual. Not combinable with QUIC-LB (`[[vips.quic_lb]]` / `quic = true`).
//! - **`source_ranges`** (Kubernetes `loadBalancerSourceRanges`): CIDR prefixes of the VIP's
//!   family with no host bits set; the XDP program drops packets from any other client
//!   (`drop_source_range`). Absent or empty: every client. Reloads add new ranges before the
//!   VIP's flag is set or old ranges are removed, and clear the flag before removing the
//!   last ones, so no allowed client is ever dropped in between.
//! - **`session_affinity = "client_ip"`** (Kubernetes `sessionAffinity: ClientIP`): Maglev
//!   hashes only the client address for new flows, so one client's flows share a backend
//!   while the backend set is unchanged; there is no affinity timeout. QUIC routed by
//!   connection ID is unaffected (the CID comes first).
//! - **Removing a backend** evicts the connection-table entries that name it (no flow
//!   lingers, and a backend that later gets its id inherits nothing); removing it from one
//!   VIP while another keeps it evicts that VIP's flows only. Draining (weight 0) evicts
//!   nothing: its flows keep reaching it, as Kubernetes expects of a terminating endpoint.
//! - **`key_file`** is read relative to the config file's directory. It holds the key as 32 hex
//!   digits (surrounding whitespace ignored) or as 16 raw octets.
//! - **Capacity.** At most [`lb_common::MAX_VIPS`] (address, port, protocol) VIPs,
//!   [`lb_common::MAX_BACKENDS`] distinct backend (address, port) pairs (a backend shared by
//!   several VIPs counts once), [`lb_common::MAX_SERVER_IDS`] server-ID entries and
//!   [`lb_common::MAX_SOURCE_RANGES`] source ranges (ranges x ports x protocols).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
};

use lb_common::{
    MAGLEV_RING_DEFAULT, MAGLEV_RING_MAX, MAX_BACKENDS, MAX_SERVER_IDS, MAX_SOURCE_RANGES,
    MAX_VIPS, PROTO_TCP, PROTO_UDP, VIP_F_AFFINITY_CLIENT_IP, VIP_F_QUIC_LB, VIP_F_SOURCE_RANGES,
    VipKey,
    maglev::{MaglevError, is_prime},
    quic_lb,
};
use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor},
};
use thiserror::Error;
use toml::Spanned;

use crate::{
    dataplane::{Dataplane, DataplaneError, backend, vip_key},
    maglev::{WeightedBackend, build_table},
};

/// Largest backend weight (a relative share; larger values only slow table builds down).
pub const MAX_WEIGHT: u32 = 65535;
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

// ---- errors -------------------------------------------------------------------------------

/// One problem with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as it was named to [`Config::load`] / [`Config::parse`].
    pub file: String,
    /// 1-based line and column (in characters) of the offending value; `None` when the
    /// problem is with the file as a whole (it cannot be read).
    pub position: Option<(usize, usize)>,
    /// Path of the field, e.g. `vips[1].backends[2].server_id`; empty for the whole file.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        f.write_str(": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config file, in file order. Displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The text being checked, for turning byte offsets into line:column.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        (line, col)
    }

    fn error(&self, span: Range<usize>, field: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            position: Some(self.position(span.start)),
            field: field.to_owned(),
            message,
        }
    }
}

/// Collects errors while validation goes on.
struct Errors<'a> {
    src: Source<'a>,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    fn at(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        let e = self.src.error(span, field, message.into());
        self.list.push(e);
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        self.src.position(span.start).0
    }
}

// ---- the file as written ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    interfaces: Option<Spanned<Vec<Spanned<RawInterface>>>>,
    /// The XDP mode of interfaces listed by bare name (default "native").
    #[serde(default)]
    xdp_mode: Option<Spanned<String>>,
    #[serde(default)]
    backend_interfaces: Vec<Spanned<String>>,
    #[serde(default)]
    metrics_addr: Option<Spanned<String>>,
    #[serde(default)]
    vips: Vec<Spanned<RawVip>>,
    #[serde(default)]
    kubernetes: Option<Spanned<RawKubernetes>>,
    #[serde(default)]
    reverse_nat: Option<Spanned<RawReverseNat>>,
}

/// `[reverse_nat]`: the reply table and the steering mark.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReverseNat {
    #[serde(default)]
    max_flows: Option<Spanned<i64>>,
    #[serde(default)]
    tcp_timeout_s: Option<Spanned<i64>>,
    #[serde(default)]
    udp_timeout_s: Option<Spanned<i64>>,
    #[serde(default)]
    unreplied_timeout_s: Option<Spanned<i64>>,
    #[serde(default)]
    closing_timeout_s: Option<Spanned<i64>>,
    #[serde(default)]
    mark_remote: Option<bool>,
}

/// `[kubernetes]`: settings of `lb run --kube`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    #[serde(default)]
    load_balancer_class: Option<Spanned<String>>,
    #[serde(default)]
    default_class: Option<bool>,
    #[serde(default)]
    lease_namespace: Option<Spanned<String>>,
    #[serde(default)]
    lease_duration_ms: Option<Spanned<i64>>,
    #[serde(default)]
    lease_renew_ms: Option<Spanned<i64>>,
}

/// `"eth0"` or `{ name = "eth0", xdp_mode = "generic" }`.
enum RawInterface {
    Name(String),
    Table(RawInterfaceTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterfaceTable {
    name: Spanned<String>,
    #[serde(default)]
    xdp_mode: Option<Spanned<String>>,
}

impl<'de> Deserialize<'de> for RawInterface {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawInterface;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an interface name (\"eth0\") or a table \
                     { name = \"eth0\", xdp_mode = \"native\" or \"generic\" }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawInterface, E> {
                Ok(RawInterface::Name(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawInterface, A::Error> {
                RawInterfaceTable::deserialize(de::value::MapAccessDeserializer::new(m))
                    .map(RawInterface::Table)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    #[serde(default)]
    name: Option<Spanned<String>>,
    address: Spanned<String>,
    ports: Spanned<Vec<Spanned<i64>>>,
    protocols: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    quic: Option<Spanned<bool>>,
    #[serde(default)]
    maglev_table_size: Option<Spanned<i64>>,
    #[serde(default)]
    learned_cid_len: Option<Spanned<i64>>,
    #[serde(default)]
    session_affinity: Option<Spanned<String>>,
    #[serde(default)]
    source_ranges: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    quic_lb: Vec<Spanned<RawQuicLb>>,
    #[serde(default)]
    backends: Vec<Spanned<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuicLb {
    config_id: Spanned<i64>,
    server_id_len: Spanned<i64>,
    nonce_len: Spanned<i64>,
    #[serde(default)]
    key: Option<Spanned<String>>,
    #[serde(default)]
    key_file: Option<Spanned<String>>,
    #[serde(default)]
    encode_length: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    port: Spanned<i64>,
    #[serde(default)]
    weight: Option<Spanned<i64>>,
    #[serde(default)]
    server_id: Option<Spanned<String>>,
    #[serde(default)]
    server_ids: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
}

// ---- the validated config ------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum XdpMode {
    /// Driver mode (the default).
    #[default]
    Native,
    /// SKB mode: works on any interface, slower.
    Generic,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub xdp_mode: XdpMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number, as in `VipKey::proto`.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One `[[vips]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipConfig {
    pub name: Option<String>,
    pub addr: IpAddr,
    pub ports: Vec<u16>,
    pub protocols: Vec<Protocol>,
    /// QUIC-LB routing on the UDP ports (explicit, or implied by having configs).
    pub quic: bool,
    pub quic_lb: Vec<quic_lb::Config>,
    pub maglev_table_size: u32,
    /// Learned-CID mode on the UDP ports with server CIDs of this many octets; 0: off.
    pub learned_cid_len: u8,
    /// How new flows without a connection-table entry pick a backend.
    pub session_affinity: SessionAffinity,
    /// Client prefixes allowed to reach the VIP; empty: every source.
    pub source_ranges: Vec<ipnet::IpNet>,
    pub backends: Vec<BackendConfig>,
}

/// Kubernetes' `sessionAffinity`, applied in the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SessionAffinity {
    /// Maglev over the whole 5-tuple.
    #[default]
    None,
    /// Maglev over the client address only, so every flow of one client reaches the same
    /// backend while the backend set is unchanged.
    ClientIp,
}

/// One `[[vips.backends]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
    /// (config rotation value, server ID), one per QUIC-LB config of the VIP (or none).
    pub server_ids: Vec<(u8, Vec<u8>)>,
}

/// A validated config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file, as named to [`Config::load`] (used in later messages).
    pub file: String,
    pub interfaces: Vec<Interface>,
    /// Interfaces that face the backends: replies arriving there are reverse-NATed back to
    /// the VIP (TC ingress). May repeat an external interface when backends sit on that LAN.
    pub backend_interfaces: Vec<String>,
    pub metrics_addr: Option<SocketAddr>,
    pub vips: Vec<VipConfig>,
    /// The `[kubernetes]` table, with defaults filled in (used by `lb run --kube`).
    pub kubernetes: KubeSettings,
    /// The `[reverse_nat]` table, with defaults filled in.
    pub reverse_nat: ReverseNatSettings,
}

/// The reply table's size and idle timeouts, and the steering mark (`[reverse_nat]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseNatSettings {
    /// Capacity of the reply table: flows whose replies can be rewritten at once. Fixed at
    /// start-up.
    pub max_flows: u32,
    pub timeouts: lb_common::reply::ReplyTimeouts,
    /// Packets to a backend behind another node carry the steering mark, so that node's lb
    /// rewrites the replies.
    pub mark_remote: bool,
}

impl Default for ReverseNatSettings {
    fn default() -> Self {
        ReverseNatSettings {
            max_flows: lb_common::REPLY_TABLE_ENTRIES,
            timeouts: lb_common::reply::ReplyTimeouts::DEFAULT,
            mark_remote: true,
        }
    }
}

/// Largest `[reverse_nat] max_flows`: 16 Mi flows, about 2.2 GiB of kernel memory.
pub const MAX_REPLY_FLOWS: i64 = 1 << 24;

/// Settings of `lb run --kube` (the `[kubernetes]` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// Services whose `spec.loadBalancerClass` is this are ours.
    pub load_balancer_class: String,
    /// Also take Services of type LoadBalancer that name no class (as MetalLB does).
    pub default_class: bool,
    /// Namespace of the per-node heartbeat Leases; `None`: `$POD_NAMESPACE`, else `lb-system`.
    pub lease_namespace: Option<String>,
    /// A node whose Lease was not renewed for this long is dead: its VIPs move.
    pub lease_duration: std::time::Duration,
    /// How often each node renews its own Lease.
    pub lease_renew: std::time::Duration,
}

/// The `loadBalancerClass` lb claims unless configured otherwise.
pub const DEFAULT_LOAD_BALANCER_CLASS: &str = "lb.dev/lb";

impl Default for KubeSettings {
    fn default() -> Self {
        KubeSettings {
            load_balancer_class: DEFAULT_LOAD_BALANCER_CLASS.to_owned(),
            default_class: false,
            lease_namespace: None,
            lease_duration: std::time::Duration::from_millis(1200),
            lease_renew: std::time::Duration::from_millis(300),
        }
    }
}

impl Config {
    /// Read, parse and validate `path`; `key_file`s are relative to its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                position: None,
                field: String::new(),
                message: format!("cannot read the config file: {e}"),
            }])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &file, base)
    }

    /// Parse and validate `text`; `file` names it in messages, `base_dir` anchors relative
    /// `key_file` paths.
    pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let src = Source { file, text };
        let raw: RawConfig = match toml::Deserializer::parse(text)
            .map_err(|e| (String::new(), e))
            .and_then(|de| {
                serde_path_to_error::deserialize(de)
                    .map_err(|e| (clean_path(&e.path().to_string()), e.into_inner()))
            }) {
            Ok(raw) => raw,
            Err((field, e)) => {
                let span = e.span().unwrap_or(0..0);
                return Err(ConfigErrors(vec![src.error(
                    span,
                    &field,
                    e.message().to_owned(),
                )]));
            }
        };
        let mut errs = Errors {
            src,
            list: Vec::new(),
        };
        let cfg = validate(raw, base_dir, &mut errs);
        if errs.list.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errs.list))
        }
    }
}

/// serde_path_to_error sees `Spanned`'s private wrapper field; users should not.
fn clean_path(p: &str) -> String {
    let p = p.replace(".$__serde_spanned_private_value", "");
    let p = p.replace("$__serde_spanned_private_value", "");
    if p == "." { String::new() } else { p }
}

fn int_in(v: i64, lo: i64, hi: i64) -> Option<i64> {
    (lo..=hi).contains(&v).then_some(v)
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    if let Some(c) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "{s:?} has the non-hex character {c:?}; write octets as hex digits, e.g. \"0a01\""
        ));
    }
    if !s.len().is_multiple_of(2) {
        return Err(format!(
            "{s:?} has an odd number of hex digits ({}); write two per octet",
            s.len()
        ));
    }
    Ok((0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
        .collect())
}

fn parse_key_hex(s: &str) -> Result<[u8; 16], String> {
    let bytes = parse_hex(s)?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "{s:?} is {} hex digits; a QUIC-LB key is 16 octets = 32 hex digits",
            b.len() * 2
        )
    })
}

fn read_key_file(path: &Path) -> Result<[u8; 16], String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if let Ok(text) = std::str::from_utf8(&data) {
        let t = text.trim();
        if t.len() == 32 && t.chars().all(|c| c.is_ascii_hexdigit()) {
            return parse_key_hex(t);
        }
    }
    data.as_slice().try_into().map_err(|_| {
        format!(
            "{} holds {} octets; a key file holds the 16-octet key as 32 hex digits or as 16 raw octets",
            path.display(),
            data.len()
        )
    })
}

fn parse_addr(s: &str) -> Result<IpAddr, String> {
    let a: IpAddr = s.parse().map_err(|_| {
        format!("{s:?} is not an IPv4 or IPv6 address (e.g. \"198.18.0.100\" or \"fd00:18::100\")")
    })?;
    if a.is_unspecified() || a.is_multicast() {
        return Err(format!(
            "{s:?} is an unspecified or multicast address; use a unicast address"
        ));
    }
    Ok(a)
}

/// One `source_ranges` entry: a CIDR prefix of the VIP's family (when the VIP address is
/// known) with no host bits set.
fn parse_source_range(s: &str, vip: Option<IpAddr>) -> Result<ipnet::IpNet, String> {
    let net: ipnet::IpNet = s.parse().map_err(|_| {
        format!(
            "{s:?} is not a CIDR prefix; write address/length, e.g. \"198.18.0.0/24\" or \
             \"fd00::/64\" (a single client: \"198.18.0.7/32\")"
        )
    })?;
    if let Some(va) = vip
        && va.is_ipv4() != net.addr().is_ipv4()
    {
        return Err(format!(
            "{net} is {} but the VIP {va} is {}; source ranges need the VIP's address family",
            family(&net.addr()),
            family(&va)
        ));
    }
    if net.trunc() != net {
        return Err(format!(
            "{net} has host bits set; the prefix is {}",
            net.trunc()
        ));
    }
    Ok(net)
}

fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn primes_near(n: i64) -> String {
    let below = (2..n.min(MAGLEV_RING_MAX as i64 + 1))
        .rev()
        .find(|&p| is_prime(p as u32));
    let above = (n.max(2)..=MAGLEV_RING_MAX as i64).find(|&p| is_prime(p as u32));
    match (below, above) {
        (Some(b), Some(a)) => format!("{b} or {a}"),
        (Some(b), None) => b.to_string(),
        (None, Some(a)) => a.to_string(),
        (None, None) => MAGLEV_RING_DEFAULT.to_string(),
    }
}

struct ServerIdSeen {
    backend: usize,
    line: usize,
}

fn parse_xdp_mode(m: &Spanned<String>, field: &str, errs: &mut Errors) -> XdpMode {
    match m.get_ref().as_str() {
        "native" => XdpMode::Native,
        "generic" => XdpMode::Generic,
        other => {
            errs.at(
                m.span(),
                field,
                format!("{other:?} is not an XDP mode: use \"native\" or \"generic\""),
            );
            XdpMode::Native
        }
    }
}

fn validate(raw: RawConfig, base_dir: &Path, errs: &mut Errors) -> Config {
    let default_mode = raw
        .xdp_mode
        .as_ref()
        .map(|m| parse_xdp_mode(m, "xdp_mode", errs))
        .unwrap_or_default();
    let mut interfaces = Vec::new();
    match &raw.interfaces {
        None => errs.at(
            0..0,
            "interfaces",
            "missing: name the external interface(s) XDP attaches to, e.g. interfaces = [\"eth0\"]",
        ),
        Some(list) if list.get_ref().is_empty() => errs.at(
            list.span(),
            "interfaces",
            "empty: name at least one interface, e.g. interfaces = [\"eth0\"]",
        ),
        Some(list) => {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for (i, item) in list.get_ref().iter().enumerate() {
                let field = format!("interfaces[{i}]");
                let (name, name_span, mode) = match item.get_ref() {
                    RawInterface::Name(n) => (n.clone(), item.span(), None),
                    RawInterface::Table(t) => {
                        (t.name.get_ref().clone(), t.name.span(), t.xdp_mode.as_ref())
                    }
                };
                if !is_ifname(&name) {
                    errs.at(
                        name_span.clone(),
                        &format!("{field}.name"),
                        format!(
                            "{name:?} is not an interface name: use 1..={IFNAME_MAX} characters \
                             without '/', ':' or spaces"
                        ),
                    );
                } else if let Some(line) = seen.get(&name) {
                    errs.at(
                        name_span.clone(),
                        &format!("{field}.name"),
                        format!("{name:?} is listed twice (also on line {line}); list each interface once"),
                    );
                } else {
                    seen.insert(name.clone(), errs.line_of(&name_span));
                }
                let xdp_mode = match mode {
                    None => default_mode,
                    Some(m) => parse_xdp_mode(m, &format!("{field}.xdp_mode"), errs),
                };
                interfaces.push(Interface { name, xdp_mode });
            }
        }
    }

    // Interfaces facing the backends: the reverse-NAT TC program goes on them.
    let mut backend_interfaces: Vec<String> = Vec::new();
    for (i, n) in raw.backend_interfaces.iter().enumerate() {
        let name = n.get_ref();
        let field = format!("backend_interfaces[{i}]");
        if !is_ifname(name) {
            errs.at(
                n.span(),
                &field,
                format!(
                    "{name:?} is not an interface name: use 1..={IFNAME_MAX} characters \
                     without '/', ':' or spaces"
                ),
            );
        } else if backend_interfaces.contains(name) {
            errs.at(
                n.span(),
                &field,
                format!("{name:?} is listed twice; list each interface once"),
            );
        } else {
            backend_interfaces.push(name.clone());
        }
    }

    let metrics_addr = raw.metrics_addr.as_ref().and_then(|m| {
        m.get_ref()
            .parse::<SocketAddr>()
            .map_err(|_| {
                errs.at(
                    m.span(),
                    "metrics_addr",
                    format!(
                        "{:?} is not an address:port (e.g. \"127.0.0.1:9100\" or \"[::1]:9100\")",
                        m.get_ref()
                    ),
                )
            })
            .ok()
    });

    let mut vips = Vec::new();
    // (addr, port, proto) -> the entry and line that defined it.
    let mut vip_keys: HashMap<(IpAddr, u16, Protocol), (usize, usize)> = HashMap::new();
    let mut vip_count: u32 = 0;
    let mut vip_limit_reported = false;
    let mut all_backends: HashSet<(IpAddr, u16)> = HashSet::new();
    let mut backend_limit_reported = false;
    let mut server_id_count: u32 = 0;
    let mut sid_limit_reported = false;
    let mut source_range_count: u32 = 0;
    let mut range_limit_reported = false;

    for (vi, sv) in raw.vips.iter().enumerate() {
        let v = sv.get_ref();
        let vf = format!("vips[{vi}]");
        let addr = parse_addr(v.address.get_ref())
            .map_err(|m| errs.at(v.address.span(), &format!("{vf}.address"), m))
            .ok();

        let mut ports = Vec::new();
        if v.ports.get_ref().is_empty() {
            errs.at(
                v.ports.span(),
                &format!("{vf}.ports"),
                "empty: list at least one port, e.g. ports = [443]",
            );
        }
        for (pi, p) in v.ports.get_ref().iter().enumerate() {
            match int_in(*p.get_ref(), 1, 65535) {
                Some(n) if ports.contains(&(n as u16)) => errs.at(
                    p.span(),
                    &format!("{vf}.ports[{pi}]"),
                    format!("port {n} is listed twice; list each port once"),
                ),
                Some(n) => ports.push(n as u16),
                None => errs.at(
                    p.span(),
                    &format!("{vf}.ports[{pi}]"),
                    format!("port {} is out of range: use 1..=65535", p.get_ref()),
                ),
            }
        }

        let mut protocols = Vec::new();
        if v.protocols.get_ref().is_empty() {
            errs.at(
                v.protocols.span(),
                &format!("{vf}.protocols"),
                "empty: list \"tcp\", \"udp\" or both, e.g. protocols = [\"tcp\", \"udp\"]",
            );
        }
        for (pi, p) in v.protocols.get_ref().iter().enumerate() {
            let proto = match p.get_ref().as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                other => {
                    errs.at(
                        p.span(),
                        &format!("{vf}.protocols[{pi}]"),
                        format!("{other:?} is not a protocol: use \"tcp\" or \"udp\""),
                    );
                    continue;
                }
            };
            if protocols.contains(&proto) {
                errs.at(
                    p.span(),
                    &format!("{vf}.protocols[{pi}]"),
                    format!(
                        "{:?} is listed twice; list each protocol once",
                        proto.name()
                    ),
                );
            } else {
                protocols.push(proto);
            }
        }

        if let Some(addr) = addr {
            let line = errs.line_of(&sv.span());
            for port in &ports {
                for proto in &protocols {
                    if let Some((other, oline)) = vip_keys.get(&(addr, *port, *proto)) {
                        errs.at(
                            sv.span(),
                            &vf,
                            format!(
                                "{} {addr} port {port} is already a VIP in vips[{other}] (line {oline}); \
                                 each (address, port, protocol) may appear once",
                                proto.name()
                            ),
                        );
                    } else {
                        vip_keys.insert((addr, *port, *proto), (vi, line));
                        vip_count += 1;
                    }
                }
            }
            if vip_count > MAX_VIPS && !vip_limit_reported {
                vip_limit_reported = true;
                errs.at(
                    sv.span(),
                    &vf,
                    format!(
                        "this entry brings the VIP count to {vip_count}; the data plane has room for \
                         {MAX_VIPS} (each address, port and protocol counts as one VIP)"
                    ),
                );
            }
        }

        // QUIC-LB configs.
        let mut configs: Vec<quic_lb::Config> = Vec::new();
        let mut config_lines: HashMap<u8, (usize, usize)> = HashMap::new();
        for (ci, sc) in v.quic_lb.iter().enumerate() {
            let c = sc.get_ref();
            let cf = format!("{vf}.quic_lb[{ci}]");
            let mut ok = true;
            let mut small = |f: &Spanned<i64>, name: &str, errs: &mut Errors| -> u8 {
                match u8::try_from(*f.get_ref()) {
                    Ok(n) => n,
                    Err(_) => {
                        ok = false;
                        errs.at(
                            f.span(),
                            &format!("{cf}.{name}"),
                            format!("{} is out of range for {name}", f.get_ref()),
                        );
                        0
                    }
                }
            };
            let config_id = small(&c.config_id, "config_id", errs);
            let sid_len = small(&c.server_id_len, "server_id_len", errs);
            let nonce_len = small(&c.nonce_len, "nonce_len", errs);
            let key = match (&c.key, &c.key_file) {
                (Some(_), Some(kf)) => {
                    errs.at(
                        kf.span(),
                        &format!("{cf}.key_file"),
                        "both key and key_file are given; give one of them (or neither for plaintext)",
                    );
                    ok = false;
                    None
                }
                (Some(k), None) => match parse_key_hex(k.get_ref()) {
                    Ok(k) => Some(k),
                    Err(m) => {
                        errs.at(k.span(), &format!("{cf}.key"), m);
                        ok = false;
                        None
                    }
                },
                (None, Some(kf)) => {
                    let path: PathBuf = base_dir.join(kf.get_ref());
                    match read_key_file(&path) {
                        Ok(k) => Some(k),
                        Err(m) => {
                            errs.at(kf.span(), &format!("{cf}.key_file"), m);
                            ok = false;
                            None
                        }
                    }
                }
                (None, None) => None,
            };
            let encode_length = c.encode_length.as_ref().is_none_or(|e| *e.get_ref());
            if !ok {
                continue;
            }
            match quic_lb::Config::new(config_id, sid_len, nonce_len, key, encode_length) {
                Ok(cfg) => {
                    if let Some((other, line)) = config_lines.get(&config_id) {
                        errs.at(
                            c.config_id.span(),
                            &format!("{cf}.config_id"),
                            format!(
                                "config rotation {config_id} is already used by {vf}.quic_lb[{other}] \
                                 (line {line}); each config of a VIP needs its own value in 0..={}",
                                quic_lb::MAX_CONFIG_ID
                            ),
                        );
                    } else {
                        config_lines.insert(config_id, (ci, errs.line_of(&c.config_id.span())));
                        configs.push(cfg);
                    }
                }
                Err(e) => {
                    let (span, name) = match e {
                        quic_lb::ConfigError::ConfigId { .. } => (c.config_id.span(), "config_id"),
                        quic_lb::ConfigError::ServerIdLength { .. } => {
                            (c.server_id_len.span(), "server_id_len")
                        }
                        _ => (c.nonce_len.span(), "nonce_len"),
                    };
                    errs.at(span, &format!("{cf}.{name}"), e.to_string());
                }
            }
        }

        let quic = match &v.quic {
            Some(q) if *q.get_ref() => {
                if v.quic_lb.is_empty() {
                    errs.at(
                        q.span(),
                        &format!("{vf}.quic"),
                        "quic = true needs at least one [[vips.quic_lb]] config on this VIP; \
                         add one, or set quic = false for 4-tuple hashing only",
                    );
                }
                if !protocols.contains(&Protocol::Udp) && !v.protocols.get_ref().is_empty() {
                    errs.at(
                        q.span(),
                        &format!("{vf}.quic"),
                        "quic = true but this VIP has no UDP port; add \"udp\" to protocols or drop quic",
                    );
                }
                true
            }
            Some(_) => false,
            None => !v.quic_lb.is_empty() && protocols.contains(&Protocol::Udp),
        };

        let learned_cid_len = match &v.learned_cid_len {
            None => 0,
            Some(l) => {
                let n = *l.get_ref();
                let field = format!("{vf}.learned_cid_len");
                if !(1..=lb_common::QUIC_LB_MAX_CID_LEN as i64).contains(&n) {
                    errs.at(
                        l.span(),
                        &field,
                        format!(
                            "{n} is not a QUIC connection ID length; use the length of the CIDs \
                             your servers choose, 1..=20 (aioquic: 8)"
                        ),
                    );
                    0
                } else if quic || !v.quic_lb.is_empty() {
                    errs.at(
                        l.span(),
                        &field,
                        "learned-CID mode and QUIC-LB ([[vips.quic_lb]], quic = true) cannot be \
                         combined on one VIP; drop one of them",
                    );
                    0
                } else {
                    if !protocols.contains(&Protocol::Udp) && !v.protocols.get_ref().is_empty() {
                        errs.at(
                            l.span(),
                            &field,
                            "learned_cid_len but this VIP has no UDP port; add \"udp\" to \
                             protocols or drop learned_cid_len",
                        );
                    }
                    n as u8
                }
            }
        };

        let maglev_table_size = match &v.maglev_table_size {
            None => MAGLEV_RING_DEFAULT,
            Some(m) => {
                let n = *m.get_ref();
                let field = format!("{vf}.maglev_table_size");
                if n > MAGLEV_RING_MAX as i64 {
                    errs.at(
                        m.span(),
                        &field,
                        format!("{n} is larger than the maximum {MAGLEV_RING_MAX}; use a prime no larger (e.g. 65537, 32749, 16381)"),
                    );
                    MAGLEV_RING_DEFAULT
                } else if n < 2 || !is_prime(n as u32) {
                    errs.at(
                        m.span(),
                        &field,
                        format!(
                            "{n} is not prime; Maglev tables need a prime size (nearby: {})",
                            primes_near(n)
                        ),
                    );
                    MAGLEV_RING_DEFAULT
                } else {
                    n as u32
                }
            }
        };

        let session_affinity = match &v.session_affinity {
            None => SessionAffinity::None,
            Some(a) => match a.get_ref().as_str() {
                "none" => SessionAffinity::None,
                "client_ip" => SessionAffinity::ClientIp,
                other => {
                    errs.at(
                        a.span(),
                        &format!("{vf}.session_affinity"),
                        format!(
                            "{other:?} is not a session affinity: use \"none\" (hash the whole \
                             5-tuple) or \"client_ip\" (every flow of a client to one backend)"
                        ),
                    );
                    SessionAffinity::None
                }
            },
        };

        let mut source_ranges: Vec<ipnet::IpNet> = Vec::new();
        if let Some(list) = &v.source_ranges {
            let mut seen: HashMap<ipnet::IpNet, usize> = HashMap::new();
            for (ri, r) in list.get_ref().iter().enumerate() {
                let field = format!("{vf}.source_ranges[{ri}]");
                match parse_source_range(r.get_ref(), addr) {
                    Err(m) => errs.at(r.span(), &field, m),
                    Ok(net) => {
                        if let Some(line) = seen.get(&net) {
                            errs.at(
                                r.span(),
                                &field,
                                format!("{net} is listed twice (also on line {line}); list each range once"),
                            );
                        } else {
                            seen.insert(net, errs.line_of(&r.span()));
                            source_ranges.push(net);
                        }
                    }
                }
            }
            let n = (source_ranges.len() * ports.len() * protocols.len()) as u32;
            source_range_count = source_range_count.saturating_add(n);
            if source_range_count > MAX_SOURCE_RANGES && !range_limit_reported {
                range_limit_reported = true;
                errs.at(
                    list.span(),
                    &format!("{vf}.source_ranges"),
                    format!(
                        "this entry brings the source-range entries (ranges x ports x protocols) to \
                         {source_range_count}; the data plane has room for {MAX_SOURCE_RANGES}; \
                         merge adjacent ranges into shorter prefixes"
                    ),
                );
            }
        }

        // Backends.
        let mut backends = Vec::new();
        let mut seen_backends: HashMap<(IpAddr, u16), (usize, usize)> = HashMap::new();
        let mut seen_sids: HashMap<(u8, Vec<u8>), ServerIdSeen> = HashMap::new();
        for (bi, sb) in v.backends.iter().enumerate() {
            let b = sb.get_ref();
            let bf = format!("{vf}.backends[{bi}]");
            let baddr = match parse_addr(b.address.get_ref()) {
                Ok(a) => {
                    if let Some(va) = addr
                        && va.is_ipv4() != a.is_ipv4()
                    {
                        errs.at(
                            b.address.span(),
                            &format!("{bf}.address"),
                            format!(
                                "{a} is {} but the VIP {va} is {}; backends need the VIP's address family",
                                family(&a),
                                family(&va)
                            ),
                        );
                    }
                    Some(a)
                }
                Err(m) => {
                    errs.at(b.address.span(), &format!("{bf}.address"), m);
                    None
                }
            };
            let port = match int_in(*b.port.get_ref(), 1, 65535) {
                Some(p) => Some(p as u16),
                None => {
                    errs.at(
                        b.port.span(),
                        &format!("{bf}.port"),
                        format!("port {} is out of range: use 1..=65535", b.port.get_ref()),
                    );
                    None
                }
            };
            let weight = match &b.weight {
                None => 1,
                Some(w) => match int_in(*w.get_ref(), 0, MAX_WEIGHT as i64) {
                    Some(w) => w as u32,
                    None => {
                        errs.at(
                            w.span(),
                            &format!("{bf}.weight"),
                            format!(
                                "weight {} is out of range: use 0..={MAX_WEIGHT} (0 drains the backend)",
                                w.get_ref()
                            ),
                        );
                        1
                    }
                },
            };
            if let (Some(a), Some(p)) = (baddr, port) {
                if let Some((other, line)) = seen_backends.get(&(a, p)) {
                    errs.at(
                        sb.span(),
                        &bf,
                        format!(
                            "backend {} is already {vf}.backends[{other}] (line {line}); list each backend once per VIP",
                            SocketAddr::new(a, p)
                        ),
                    );
                } else {
                    seen_backends.insert((a, p), (bi, errs.line_of(&sb.span())));
                    if all_backends.insert((a, p))
                        && all_backends.len() > MAX_BACKENDS as usize
                        && !backend_limit_reported
                    {
                        backend_limit_reported = true;
                        errs.at(
                            sb.span(),
                            &bf,
                            format!(
                                "this is backend number {}; the data plane has room for {MAX_BACKENDS} \
                                 distinct backend (address, port) pairs",
                                all_backends.len()
                            ),
                        );
                    }
                }
            }

            // Server IDs: (config id, sid, span, field).
            let mut sids: Vec<(u8, Vec<u8>, Range<usize>, String)> = Vec::new();
            match (&b.server_id, &b.server_ids) {
                (Some(_), Some(many)) => errs.at(
                    many.span(),
                    &format!("{bf}.server_ids"),
                    "both server_id and server_ids are given; give server_id (used under every \
                     config) or server_ids (one per config)",
                ),
                (Some(one), None) => {
                    let field = format!("{bf}.server_id");
                    match parse_hex(one.get_ref()) {
                        Err(m) => errs.at(one.span(), &field, m),
                        Ok(sid) => {
                            if v.quic_lb.is_empty() {
                                errs.at(
                                    one.span(),
                                    &field,
                                    "this VIP has no [[vips.quic_lb]] config for the server ID to \
                                     belong to; add one or remove server_id",
                                );
                            }
                            for cfg in &configs {
                                if sid.len() != cfg.server_id_len() as usize {
                                    errs.at(
                                        one.span(),
                                        &field,
                                        format!(
                                            "{:?} is {} octets; QUIC-LB config {} of this VIP has server \
                                             IDs of {} octets{}",
                                            one.get_ref(),
                                            sid.len(),
                                            cfg.config_id(),
                                            cfg.server_id_len(),
                                            if configs.len() > 1 {
                                                " (server_id is used under every config; give \
                                                 server_ids = { <config> = \"..\" } when their lengths differ)"
                                            } else {
                                                ""
                                            }
                                        ),
                                    );
                                } else {
                                    sids.push((
                                        cfg.config_id(),
                                        sid.clone(),
                                        one.span(),
                                        field.clone(),
                                    ));
                                }
                            }
                        }
                    }
                }
                (None, Some(many)) => {
                    let field = format!("{bf}.server_ids");
                    for (k, val) in many.get_ref() {
                        let kfield = format!("{field}.{}", k.get_ref());
                        let cfg = k
                            .get_ref()
                            .parse::<u8>()
                            .ok()
                            .and_then(|id| configs.iter().find(|c| c.config_id() == id));
                        let Some(cfg) = cfg else {
                            let have: Vec<String> =
                                configs.iter().map(|c| c.config_id().to_string()).collect();
                            errs.at(
                                k.span(),
                                &kfield,
                                format!(
                                    "{:?} is not a QUIC-LB config of this VIP; its configs are: [{}]",
                                    k.get_ref(),
                                    have.join(", ")
                                ),
                            );
                            continue;
                        };
                        match parse_hex(val.get_ref()) {
                            Err(m) => errs.at(val.span(), &kfield, m),
                            Ok(sid) if sid.len() != cfg.server_id_len() as usize => errs.at(
                                val.span(),
                                &kfield,
                                format!(
                                    "{:?} is {} octets; QUIC-LB config {} of this VIP has server IDs of {} octets",
                                    val.get_ref(),
                                    sid.len(),
                                    cfg.config_id(),
                                    cfg.server_id_len()
                                ),
                            ),
                            Ok(sid) => sids.push((cfg.config_id(), sid, val.span(), kfield)),
                        }
                    }
                    if quic {
                        let missing: Vec<String> = configs
                            .iter()
                            .filter(|c| {
                                !many
                                    .get_ref()
                                    .keys()
                                    .any(|k| k.get_ref().parse::<u8>() == Ok(c.config_id()))
                            })
                            .map(|c| c.config_id().to_string())
                            .collect();
                        if !missing.is_empty() {
                            errs.at(
                                many.span(),
                                &field,
                                format!(
                                    "no server ID for QUIC-LB config(s) [{}]; a VIP with quic = true \
                                     needs one per backend under every config",
                                    missing.join(", ")
                                ),
                            );
                        }
                    }
                }
                (None, None) => {
                    if quic && !configs.is_empty() {
                        let lens: BTreeSet<u8> =
                            configs.iter().map(|c| c.server_id_len()).collect();
                        let lens: Vec<String> = lens.iter().map(|l| l.to_string()).collect();
                        errs.at(
                            sb.span(),
                            &bf,
                            format!(
                                "no server_id: this VIP routes QUIC by server ID (quic = true), so every \
                                 backend needs one (server IDs of this VIP are {} octets)",
                                lens.join(" or ")
                            ),
                        );
                    }
                }
            }
            for (cid, sid, span, field) in &sids {
                let key = (*cid, sid.clone());
                if let Some(seen) = seen_sids.get(&key) {
                    errs.at(
                        span.clone(),
                        field,
                        format!(
                            "server ID {} under QUIC-LB config {cid} is already {vf}.backends[{}]'s \
                             (line {}); server IDs are unique per VIP and config",
                            hex(sid),
                            seen.backend,
                            seen.line
                        ),
                    );
                } else {
                    seen_sids.insert(
                        key,
                        ServerIdSeen {
                            backend: bi,
                            line: errs.line_of(span),
                        },
                    );
                }
            }
            if let (Some(addr), Some(port)) = (baddr, port) {
                backends.push(BackendConfig {
                    addr,
                    port,
                    weight,
                    server_ids: sids.into_iter().map(|(c, s, _, _)| (c, s)).collect(),
                });
            }
        }

        let weighted = backends.iter().filter(|b| b.weight > 0).count();
        if let Some(m) = &v.maglev_table_size
            && weighted as u32 > maglev_table_size
        {
            errs.at(
                m.span(),
                &format!("{vf}.maglev_table_size"),
                format!(
                    "{maglev_table_size} slots for {weighted} backends with weight > 0; use a prime \
                     of at least {weighted} (ideally 100 times as many)"
                ),
            );
        }

        if quic {
            let udp_ports = if protocols.contains(&Protocol::Udp) {
                ports.len()
            } else {
                0
            };
            let n = (udp_ports * configs.len() * backends.len()) as u32;
            server_id_count = server_id_count.saturating_add(n);
            if server_id_count > MAX_SERVER_IDS && !sid_limit_reported {
                sid_limit_reported = true;
                errs.at(
                    sv.span(),
                    &vf,
                    format!(
                        "this entry brings the server-ID entries (UDP ports x configs x backends) to \
                         {server_id_count}; the data plane has room for {MAX_SERVER_IDS}"
                    ),
                );
            }
        }

        if let Some(addr) = addr {
            vips.push(VipConfig {
                name: v.name.as_ref().map(|n| n.get_ref().clone()),
                addr,
                ports,
                protocols,
                quic,
                quic_lb: configs,
                maglev_table_size,
                learned_cid_len,
                session_affinity,
                source_ranges,
                backends,
            });
        }
    }

    let kubernetes = validate_kubernetes(raw.kubernetes.as_ref(), errs);
    let reverse_nat = validate_reverse_nat(raw.reverse_nat.as_ref(), errs);
    Config {
        file: errs.src.file.to_owned(),
        interfaces,
        backend_interfaces,
        metrics_addr,
        vips,
        kubernetes,
        reverse_nat,
    }
}

fn validate_reverse_nat(
    raw: Option<&Spanned<RawReverseNat>>,
    errs: &mut Errors,
) -> ReverseNatSettings {
    let mut r = ReverseNatSettings::default();
    let Some(raw) = raw else {
        return r;
    };
    let raw = raw.get_ref();
    let int =
        |v: &Option<Spanned<i64>>, field: &str, lo: i64, hi: i64, unit: &str, errs: &mut Errors| {
            v.as_ref().and_then(|v| match int_in(*v.get_ref(), lo, hi) {
                Some(n) => Some(n as u64),
                None => {
                    errs.at(
                        v.span(),
                        field,
                        format!("{} is out of range; use {lo}..={hi}{unit}", v.get_ref()),
                    );
                    None
                }
            })
        };
    if let Some(n) = int(
        &raw.max_flows,
        "reverse_nat.max_flows",
        1,
        MAX_REPLY_FLOWS,
        " flows",
        errs,
    ) {
        r.max_flows = n as u32;
    }
    const DAY: i64 = 86_400;
    let t = &mut r.timeouts;
    for (v, field, hi, slot) in [
        (
            &raw.tcp_timeout_s,
            "reverse_nat.tcp_timeout_s",
            7 * DAY,
            &mut t.tcp_ns,
        ),
        (
            &raw.udp_timeout_s,
            "reverse_nat.udp_timeout_s",
            DAY,
            &mut t.udp_ns,
        ),
        (
            &raw.unreplied_timeout_s,
            "reverse_nat.unreplied_timeout_s",
            DAY,
            &mut t.unreplied_ns,
        ),
        (
            &raw.closing_timeout_s,
            "reverse_nat.closing_timeout_s",
            DAY,
            &mut t.closing_ns,
        ),
    ] {
        if let Some(secs) = int(v, field, 1, hi, " seconds", errs) {
            *slot = secs * 1_000_000_000;
        }
    }
    if let Some(m) = raw.mark_remote {
        r.mark_remote = m;
    }
    r
}

fn validate_kubernetes(raw: Option<&Spanned<RawKubernetes>>, errs: &mut Errors) -> KubeSettings {
    let mut k = KubeSettings::default();
    let Some(raw) = raw else {
        return k;
    };
    let raw = raw.get_ref();
    if let Some(c) = &raw.load_balancer_class {
        let class = c.get_ref();
        // A loadBalancerClass must be a label-style key with a domain prefix.
        let ok = class.contains('/')
            && class.len() <= 253
            && class
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-._/".contains(ch));
        if ok {
            k.load_balancer_class = class.clone();
        } else {
            errs.at(
                c.span(),
                "kubernetes.load_balancer_class",
                format!(
                    "{class:?} is not a loadBalancerClass: use a prefixed name such as \"{DEFAULT_LOAD_BALANCER_CLASS}\""
                ),
            );
        }
    }
    if let Some(d) = raw.default_class {
        k.default_class = d;
    }
    if let Some(ns) = &raw.lease_namespace {
        let n = ns.get_ref();
        let ok = !n.is_empty()
            && n.len() <= 63
            && n.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
            && !n.starts_with('-')
            && !n.ends_with('-');
        if ok {
            k.lease_namespace = Some(n.clone());
        } else {
            errs.at(
                ns.span(),
                "kubernetes.lease_namespace",
                format!(
                    "{n:?} is not a namespace name: lower-case letters, digits and '-', at most 63"
                ),
            );
        }
    }
    let ms = |v: &Option<Spanned<i64>>, field: &str, lo: i64, hi: i64, errs: &mut Errors| {
        v.as_ref().and_then(|v| match int_in(*v.get_ref(), lo, hi) {
            Some(n) => Some(std::time::Duration::from_millis(n as u64)),
            None => {
                errs.at(
                    v.span(),
                    field,
                    format!(
                        "{} is out of range; use {lo}..={hi} milliseconds",
                        v.get_ref()
                    ),
                );
                None
            }
        })
    };
    if let Some(d) = ms(
        &raw.lease_duration_ms,
        "kubernetes.lease_duration_ms",
        200,
        600_000,
        errs,
    ) {
        k.lease_duration = d;
    }
    if let Some(d) = ms(
        &raw.lease_renew_ms,
        "kubernetes.lease_renew_ms",
        50,
        300_000,
        errs,
    ) {
        k.lease_renew = d;
    }
    if k.lease_renew * 2 > k.lease_duration {
        let span = raw
            .lease_renew_ms
            .as_ref()
            .or(raw.lease_duration_ms.as_ref())
            .map(|s| s.span())
            .unwrap_or(0..0);
        errs.at(
            span,
            "kubernetes.lease_renew_ms",
            format!(
                "{} ms renews a {} ms lease too rarely: one lost renewal would declare the node \
                 dead; renew at most every half lease (e.g. lease_renew_ms = {})",
                k.lease_renew.as_millis(),
                k.lease_duration.as_millis(),
                k.lease_duration.as_millis() / 3
            ),
        );
    }
    k
}

/// A name the kernel accepts for an interface (and `ip` prints unambiguously).
fn is_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---- the plan -----------------------------------------------------------------------------

/// A data-plane VIP: one (address, port, protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipId {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
}

impl VipId {
    pub fn key(&self) -> VipKey {
        vip_key(self.addr, self.port, self.proto.number())
    }
}

impl fmt::Display for VipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.proto.name(),
            SocketAddr::new(self.addr, self.port)
        )
    }
}

/// A backend in one VIP's Maglev ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlannedBackend {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlannedServerId {
    pub config_id: u8,
    pub server_id: Vec<u8>,
    pub backend: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedVip {
    /// The `name` of the `[[vips]]` entry it came from.
    pub name: Option<String>,
    pub key: VipId,
    /// Index in the per-VIP arrays (rings, QUIC-LB configs, counters).
    pub index: u32,
    /// `VIP_F_QUIC_LB` for a UDP VIP with QUIC-LB routing on; `learned_cid_flags(len)` for
    /// a UDP VIP in learned-CID mode; plus `VIP_F_SOURCE_RANGES` when `source_ranges` is not
    /// empty and `VIP_F_AFFINITY_CLIENT_IP` for `session_affinity = "client_ip"`.
    pub flags: u32,
    /// Allowed client prefixes (sorted); empty: every client.
    pub source_ranges: Vec<ipnet::IpNet>,
    /// Slots of the Maglev table to publish: the configured size, or 0 when no backend has
    /// a weight above zero (the VIP then drops new flows).
    pub ring_size: u32,
    /// Every backend of the VIP, drained ones (weight 0) included.
    pub backends: Vec<PlannedBackend>,
    /// Installed QUIC-LB configs (empty unless `flags` has `VIP_F_QUIC_LB`).
    pub quic: Vec<quic_lb::Config>,
    /// Installed server IDs (empty unless `flags` has `VIP_F_QUIC_LB`).
    pub server_ids: Vec<PlannedServerId>,
}

impl PlannedVip {
    /// The backends that get Maglev slots, in id order.
    pub fn ring_backends(&self) -> Vec<WeightedBackend> {
        let mut v: Vec<WeightedBackend> = self
            .backends
            .iter()
            .filter(|b| b.weight > 0)
            .map(|b| WeightedBackend {
                id: b.id,
                addr: b.addr,
                port: b.port,
                weight: b.weight,
            })
            .collect();
        v.sort_by_key(|b| b.id);
        v
    }
}

/// An `LB_BACKENDS` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackendEntry {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
}

/// What the data plane should hold, with VIP indexes and backend ids assigned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub interfaces: Vec<Interface>,
    /// In config order (entry, then port, then protocol).
    pub vips: Vec<PlannedVip>,
    /// Distinct backend (address, port) pairs over all VIPs, by id.
    pub backends: Vec<BackendEntry>,
    pub metrics_addr: Option<SocketAddr>,
}

/// Lowest number below `limit` in neither `taken` nor `avoid`, else the lowest not in `taken`.
fn allocate(limit: u32, taken: &HashSet<u32>, avoid: &HashSet<u32>) -> Option<u32> {
    (0..limit)
        .find(|i| !taken.contains(i) && !avoid.contains(i))
        .or_else(|| (0..limit).find(|i| !taken.contains(i)))
}

impl Plan {
    /// Resolve a validated config. With `previous` (the plan in force), an unchanged VIP
    /// (address, port, protocol) keeps its index and an unchanged backend (address, port)
    /// keeps its id, so a reload rewrites only what changed and connection-table entries
    /// keep naming the same backend. New entries get the lowest number that neither plan
    /// uses; only when the maps are full is a number freed by this reload reused (then
    /// [`Plan::diff`] retires the old user before the new one is written).
    pub fn build(config: &Config, previous: Option<&Plan>) -> Result<Plan, ConfigErrors> {
        let empty = Plan::default();
        let prev = previous.unwrap_or(&empty);
        let prev_vips: HashMap<VipId, u32> = prev.vips.iter().map(|v| (v.key, v.index)).collect();
        let prev_indexes: HashSet<u32> = prev_vips.values().copied().collect();
        let prev_backends: HashMap<(IpAddr, u16), u32> = prev
            .backends
            .iter()
            .map(|b| ((b.addr, b.port), b.id))
            .collect();
        let prev_ids: HashSet<u32> = prev_backends.values().copied().collect();
        let fail = |what: String| {
            ConfigErrors(vec![ConfigError {
                file: config.file.clone(),
                position: None,
                field: String::new(),
                message: what,
            }])
        };

        // Backend ids: reuse, then allocate in order of first appearance.
        let mut ids: HashMap<(IpAddr, u16), u32> = HashMap::new();
        let mut order: Vec<(IpAddr, u16)> = Vec::new();
        for v in &config.vips {
            for b in &v.backends {
                if !ids.contains_key(&(b.addr, b.port)) && !order.contains(&(b.addr, b.port)) {
                    order.push((b.addr, b.port));
                    if let Some(id) = prev_backends.get(&(b.addr, b.port)) {
                        ids.insert((b.addr, b.port), *id);
                    }
                }
            }
        }
        let mut taken: HashSet<u32> = ids.values().copied().collect();
        for k in &order {
            if !ids.contains_key(k) {
                let id = allocate(MAX_BACKENDS, &taken, &prev_ids)
                    .ok_or_else(|| fail(format!("more than {MAX_BACKENDS} backends")))?;
                taken.insert(id);
                ids.insert(*k, id);
            }
        }

        // VIP indexes likewise.
        let mut keys: Vec<(usize, VipId)> = Vec::new();
        for (vi, v) in config.vips.iter().enumerate() {
            for port in &v.ports {
                for proto in &v.protocols {
                    keys.push((
                        vi,
                        VipId {
                            addr: v.addr,
                            port: *port,
                            proto: *proto,
                        },
                    ));
                }
            }
        }
        let mut indexes: HashMap<VipId, u32> = keys
            .iter()
            .filter_map(|(_, k)| prev_vips.get(k).map(|i| (*k, *i)))
            .collect();
        let mut taken: HashSet<u32> = indexes.values().copied().collect();
        for (_, k) in &keys {
            if !indexes.contains_key(k) {
                let i = allocate(MAX_VIPS, &taken, &prev_indexes)
                    .ok_or_else(|| fail(format!("more than {MAX_VIPS} VIPs")))?;
                taken.insert(i);
                indexes.insert(*k, i);
            }
        }

        let mut vips = Vec::new();
        for (vi, key) in keys {
            let v = &config.vips[vi];
            let quic = v.quic && key.proto == Protocol::Udp;
            let backends: Vec<PlannedBackend> = v
                .backends
                .iter()
                .map(|b| PlannedBackend {
                    id: ids[&(b.addr, b.port)],
                    addr: b.addr,
                    port: b.port,
                    weight: b.weight,
                })
                .collect();
            let server_ids = if quic {
                let mut s: Vec<PlannedServerId> = v
                    .backends
                    .iter()
                    .flat_map(|b| {
                        let id = ids[&(b.addr, b.port)];
                        b.server_ids.iter().map(move |(c, sid)| PlannedServerId {
                            config_id: *c,
                            server_id: sid.clone(),
                            backend: id,
                        })
                    })
                    .collect();
                s.sort();
                s
            } else {
                Vec::new()
            };
            let mut quic_cfgs = if quic { v.quic_lb.clone() } else { Vec::new() };
            quic_cfgs.sort_by_key(|c| c.config_id());
            let mut source_ranges = v.source_ranges.clone();
            source_ranges.sort();
            source_ranges.dedup();
            let mut flags = if quic {
                VIP_F_QUIC_LB
            } else if v.learned_cid_len > 0 && key.proto == Protocol::Udp {
                lb_common::learned_cid_flags(v.learned_cid_len)
            } else {
                0
            };
            if !source_ranges.is_empty() {
                flags |= VIP_F_SOURCE_RANGES;
            }
            if v.session_affinity == SessionAffinity::ClientIp {
                flags |= VIP_F_AFFINITY_CLIENT_IP;
            }
            vips.push(PlannedVip {
                name: v.name.clone(),
                key,
                index: indexes[&key],
                flags,
                source_ranges,
                ring_size: if backends.iter().any(|b| b.weight > 0) {
                    v.maglev_table_size
                } else {
                    0
                },
                backends,
                quic: quic_cfgs,
                server_ids,
            });
        }
        let mut backends: Vec<BackendEntry> = ids
            .iter()
            .map(|((addr, port), id)| BackendEntry {
                id: *id,
                addr: *addr,
                port: *port,
            })
            .collect();
        backends.sort();
        Ok(Plan {
            interfaces: config.interfaces.clone(),
            vips,
            backends,
            metrics_addr: config.metrics_addr,
        })
    }
}

// ---- the diff -----------------------------------------------------------------------------

/// One data-plane write. [`apply`] maps each to one [`Dataplane`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    SetBackend {
        id: u32,
        addr: IpAddr,
        port: u16,
    },
    SetQuicConfig {
        vip_index: u32,
        config: quic_lb::Config,
    },
    SetServerId {
        vip_index: u32,
        config_id: u8,
        server_id: Vec<u8>,
        backend: u32,
    },
    /// Build the Maglev table (`ring_size` slots over `backends`; empty when `ring_size` is
    /// 0), write it into the VIP's spare ring and flip the VIP to it (creating the VIP).
    PublishVip {
        key: VipId,
        index: u32,
        flags: u32,
        ring_size: u32,
        backends: Vec<WeightedBackend>,
    },
    /// Change only the flags of a VIP whose ring is unchanged (source ranges, session
    /// affinity turned on or off).
    SetVipFlags {
        key: VipId,
        flags: u32,
    },
    AddSourceRange {
        vip_index: u32,
        range: ipnet::IpNet,
    },
    RemoveVip {
        key: VipId,
    },
    /// Evict the connection-table entries of the VIP's flows that name `backend`: the
    /// backend left this VIP but still serves another, so its id stays valid.
    EvictVipFlows {
        key: VipId,
        backend: u32,
    },
    RemoveSourceRange {
        vip_index: u32,
        range: ipnet::IpNet,
    },
    /// Evict every connection-table entry naming `id` (before the id is reused).
    EvictBackendFlows {
        id: u32,
    },
    RemoveServerId {
        vip_index: u32,
        config_id: u8,
        server_id: Vec<u8>,
    },
    ClearQuicConfig {
        vip_index: u32,
        config_id: u8,
    },
    ClearBackend {
        id: u32,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::SetBackend { id, addr, port } => {
                write!(f, "set backend {id} = {}", SocketAddr::new(*addr, *port))
            }
            Change::SetQuicConfig { vip_index, config } => {
                write!(
                    f,
                    "set QUIC-LB config {} of VIP {vip_index}",
                    config.config_id()
                )
            }
            Change::SetServerId {
                vip_index,
                config_id,
                server_id,
                backend,
            } => write!(
                f,
                "map server ID {} (config {config_id}) of VIP {vip_index} to backend {backend}",
                hex(server_id)
            ),
            Change::PublishVip {
                key,
                index,
                ring_size,
                backends,
                ..
            } => write!(
                f,
                "publish VIP {index} ({key}): {ring_size}-slot ring over {} backends",
                backends.len()
            ),
            Change::SetVipFlags { key, flags } => {
                write!(f, "set flags of VIP {key} to {flags:#x}")
            }
            Change::AddSourceRange { vip_index, range } => {
                write!(f, "allow source range {range} on VIP {vip_index}")
            }
            Change::RemoveVip { key } => write!(f, "remove VIP {key}"),
            Change::EvictVipFlows { key, backend } => {
                write!(f, "evict flows of VIP {key} to backend {backend}")
            }
            Change::RemoveSourceRange { vip_index, range } => {
                write!(f, "remove source range {range} of VIP {vip_index}")
            }
            Change::EvictBackendFlows { id } => write!(f, "evict flows to backend {id}"),
            Change::RemoveServerId {
                vip_index,
                config_id,
                server_id,
            } => write!(
                f,
                "remove server ID {} (config {config_id}) of VIP {vip_index}",
                hex(server_id)
            ),
            Change::ClearQuicConfig {
                vip_index,
                config_id,
            } => {
                write!(f, "clear QUIC-LB config {config_id} of VIP {vip_index}")
            }
            Change::ClearBackend { id } => write!(f, "clear backend {id}"),
        }
    }
}

impl Plan {
    /// The writes that take the data plane from `old` (what it holds; `Plan::default()` when
    /// empty) to `new`, ordered so no packet sees a half-updated VIP:
    ///
    /// 1. `SetBackend` for new backend ids: everything written later may name them.
    /// 2. `SetQuicConfig`, then `SetServerId`, new or changed: a VIP that turns QUIC-LB on in
    ///    step 3 finds its configs and server IDs already there; a CID that decodes to a new
    ///    server ID before its VIP exists is never looked up. Then `AddSourceRange` for new
    ///    ranges: a VIP that gains `VIP_F_SOURCE_RANGES` in step 3 already finds them (no
    ///    allowed client is dropped), and a VIP whose ranges change has the new ones before
    ///    the old ones go in step 5.
    /// 3. `PublishVip` for new VIPs and VIPs whose ring size, weighted backends or flags
    ///    changed: the spare ring is written, then one map update flips the VIP, so a packet
    ///    sees either the whole old table or the whole new one. Rings stop naming removed
    ///    backends here. When only the source-range or affinity flags changed, `SetVipFlags`
    ///    (one map update, no ring rewrite) instead.
    /// 4. `RemoveVip` for VIPs that are gone: their packets pass untouched from now on.
    /// 5. `EvictVipFlows` for backends that left a VIP but still serve another (their id
    ///    stays valid, so pinned flows would keep reaching them); `RemoveSourceRange`,
    ///    `RemoveServerId`, then `ClearQuicConfig`, for entries that are gone (a VIP that
    ///    dropped its ranges or QUIC-LB in step 3 no longer reads them).
    /// 6. Only when a number freed by this reload is reused (maps full, see [`Plan::build`]):
    ///    `EvictBackendFlows` and `SetBackend` of the reused ids (so the new backend inherits
    ///    no flow of the old one), then the configs, server IDs, source ranges and rings that
    ///    belong to a reused VIP index or name a reused backend id. Their previous users were
    ///    retired in steps 3-5, so the new entries never mix with the old ones.
    /// 7. `ClearBackend` for ids that are gone, last: by now no ring, server ID or VIP names
    ///    them; clearing also evicts the connection-table entries that still do
    ///    ([`Dataplane::clear_backend`]). Drained backends (weight 0) are still in the plan:
    ///    they keep their entry and their flows.
    pub fn diff(old: &Plan, new: &Plan) -> Vec<Change> {
        let old_be: BTreeMap<u32, (IpAddr, u16)> = old
            .backends
            .iter()
            .map(|b| (b.id, (b.addr, b.port)))
            .collect();
        let new_be: BTreeMap<u32, (IpAddr, u16)> = new
            .backends
            .iter()
            .map(|b| (b.id, (b.addr, b.port)))
            .collect();
        let reused_ids: HashSet<u32> = new_be
            .iter()
            .filter(|(id, v)| old_be.get(id).is_some_and(|o| o != *v))
            .map(|(id, _)| *id)
            .collect();
        let old_vips: BTreeMap<u32, &PlannedVip> = old.vips.iter().map(|v| (v.index, v)).collect();
        let new_vips: BTreeMap<u32, &PlannedVip> = new.vips.iter().map(|v| (v.index, v)).collect();
        let reused_idx: HashSet<u32> = new_vips
            .iter()
            .filter(|(i, v)| old_vips.get(i).is_some_and(|o| o.key != v.key))
            .map(|(i, _)| *i)
            .collect();

        type CfgMap = BTreeMap<(u32, u8), quic_lb::Config>;
        type SidMap = BTreeMap<(u32, u8, Vec<u8>), u32>;
        let cfgs = |p: &Plan| -> CfgMap {
            p.vips
                .iter()
                .flat_map(|v| v.quic.iter().map(move |c| ((v.index, c.config_id()), *c)))
                .collect()
        };
        let sids = |p: &Plan| -> SidMap {
            p.vips
                .iter()
                .flat_map(|v| {
                    v.server_ids
                        .iter()
                        .map(move |s| ((v.index, s.config_id, s.server_id.clone()), s.backend))
                })
                .collect()
        };
        let (old_cfgs, new_cfgs) = (cfgs(old), cfgs(new));
        let (old_sids, new_sids) = (sids(old), sids(new));
        let ranges = |p: &Plan| -> BTreeSet<(u32, ipnet::IpNet)> {
            p.vips
                .iter()
                .flat_map(|v| v.source_ranges.iter().map(move |r| (v.index, *r)))
                .collect()
        };
        let (old_ranges, new_ranges) = (ranges(old), ranges(new));

        let mut early = Vec::new();
        let mut late = Vec::new();

        // 1 (and 6): backends.
        for (id, (addr, port)) in &new_be {
            match old_be.get(id) {
                None => early.push(Change::SetBackend {
                    id: *id,
                    addr: *addr,
                    port: *port,
                }),
                Some(o) if o != &(*addr, *port) => {
                    late.push(Change::EvictBackendFlows { id: *id });
                    late.push(Change::SetBackend {
                        id: *id,
                        addr: *addr,
                        port: *port,
                    });
                }
                Some(_) => {}
            }
        }
        // 2: configs, then server IDs.
        for (k @ (idx, _), c) in &new_cfgs {
            if reused_idx.contains(idx) {
                late.push(Change::SetQuicConfig {
                    vip_index: *idx,
                    config: *c,
                });
            } else if old_cfgs.get(k) != Some(c) {
                early.push(Change::SetQuicConfig {
                    vip_index: *idx,
                    config: *c,
                });
            }
        }
        for (k @ (idx, cfg, sid), be) in &new_sids {
            let change = Change::SetServerId {
                vip_index: *idx,
                config_id: *cfg,
                server_id: sid.clone(),
                backend: *be,
            };
            if reused_idx.contains(idx) || reused_ids.contains(be) {
                late.push(change);
            } else if old_sids.get(k) != Some(be) {
                early.push(change);
            }
        }
        // 2: source ranges (after the rest of step 2: nothing there depends on them).
        for r @ (idx, range) in &new_ranges {
            let change = Change::AddSourceRange {
                vip_index: *idx,
                range: *range,
            };
            if reused_idx.contains(idx) {
                late.push(change);
            } else if !old_ranges.contains(r) {
                early.push(change);
            }
        }
        // 3: rings.
        const FLAGS_ONLY: u32 = VIP_F_SOURCE_RANGES | VIP_F_AFFINITY_CLIENT_IP;
        for (idx, v) in &new_vips {
            let ring = v.ring_backends();
            let changed = match old_vips.get(idx) {
                None => true,
                Some(o) => {
                    o.key != v.key
                        || o.ring_size != v.ring_size
                        || o.ring_backends() != ring
                        || (o.flags ^ v.flags) & !FLAGS_ONLY != 0
                }
            };
            if !changed {
                if old_vips.get(idx).is_some_and(|o| o.flags != v.flags) {
                    early.push(Change::SetVipFlags {
                        key: v.key,
                        flags: v.flags,
                    });
                }
                continue;
            }
            let is_late =
                reused_idx.contains(idx) || ring.iter().any(|b| reused_ids.contains(&b.id));
            let change = Change::PublishVip {
                key: v.key,
                index: *idx,
                flags: v.flags,
                ring_size: v.ring_size,
                backends: ring,
            };
            if is_late {
                late.push(change);
            } else {
                early.push(change);
            }
        }
        // 4: VIPs that are gone.
        let new_keys: HashSet<VipId> = new.vips.iter().map(|v| v.key).collect();
        for v in old_vips.values() {
            if !new_keys.contains(&v.key) {
                early.push(Change::RemoveVip { key: v.key });
            }
        }
        // 5: flows of backends that left a VIP but stay in use elsewhere (a backend that is
        // gone altogether is evicted by ClearBackend in step 7).
        for (idx, v) in &new_vips {
            let Some(o) = old_vips.get(idx).filter(|o| o.key == v.key) else {
                continue;
            };
            for b in &o.backends {
                if new_be.get(&b.id) == Some(&(b.addr, b.port))
                    && !reused_ids.contains(&b.id)
                    && !v.backends.iter().any(|n| n.id == b.id)
                {
                    early.push(Change::EvictVipFlows {
                        key: v.key,
                        backend: b.id,
                    });
                }
            }
        }
        // 5: source ranges, server IDs, then configs, that are gone (or belong to a reused
        // index).
        for r @ (idx, range) in &old_ranges {
            if reused_idx.contains(idx) || !new_ranges.contains(r) {
                early.push(Change::RemoveSourceRange {
                    vip_index: *idx,
                    range: *range,
                });
            }
        }
        for (idx, cfg, sid) in old_sids.keys() {
            if reused_idx.contains(idx) || !new_sids.contains_key(&(*idx, *cfg, sid.clone())) {
                early.push(Change::RemoveServerId {
                    vip_index: *idx,
                    config_id: *cfg,
                    server_id: sid.clone(),
                });
            }
        }
        for (idx, cfg) in old_cfgs.keys() {
            if reused_idx.contains(idx) || !new_cfgs.contains_key(&(*idx, *cfg)) {
                early.push(Change::ClearQuicConfig {
                    vip_index: *idx,
                    config_id: *cfg,
                });
            }
        }
        // 6: everything that waited for a reused number.
        early.append(&mut late);
        // 7: backends that are gone.
        for id in old_be.keys() {
            if !new_be.contains_key(id) {
                early.push(Change::ClearBackend { id: *id });
            }
        }
        early
    }
}

// ---- applying -----------------------------------------------------------------------------

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("building the Maglev table for {vip}: {source}")]
    Maglev { vip: VipId, source: MaglevError },
    #[error("change {step} of {total} ({change}) failed: {source}; changes before it are in force")]
    Dataplane {
        step: usize,
        total: usize,
        change: String,
        source: Box<DataplaneError>,
    },
}

/// Perform `changes` in order. Every Maglev table is built before the first map write, so a
/// table that cannot be built leaves the data plane untouched.
pub fn apply(dp: &mut Dataplane, changes: &[Change]) -> Result<(), ApplyError> {
    let mut tables: Vec<Option<Vec<u32>>> = Vec::with_capacity(changes.len());
    for c in changes {
        tables.push(match c {
            Change::PublishVip {
                key,
                ring_size,
                backends,
                ..
            } if *ring_size > 0 => Some(
                build_table(backends, *ring_size)
                    .map_err(|source| ApplyError::Maglev { vip: *key, source })?,
            ),
            _ => None,
        });
    }
    for (step, (c, table)) in changes.iter().zip(tables).enumerate() {
        let r = match c {
            Change::SetBackend { id, addr, port } => dp.set_backend(*id, &backend(*addr, *port)),
            Change::SetQuicConfig { vip_index, config } => dp.set_quic_config(*vip_index, config),
            Change::SetServerId {
                vip_index,
                config_id,
                server_id,
                backend,
            } => dp.set_server_id(*vip_index, *config_id, server_id, *backend),
            Change::PublishVip {
                key, index, flags, ..
            } => dp.publish_ring(&key.key(), *index, *flags, table.as_deref().unwrap_or(&[])),
            Change::SetVipFlags { key, flags } => dp.set_vip_flags(&key.key(), *flags),
            Change::AddSourceRange { vip_index, range } => dp.add_source_range(*vip_index, *range),
            Change::RemoveVip { key } => dp.remove_vip(&key.key()),
            Change::EvictVipFlows { key, backend } => {
                dp.evict_vip_backend_flows(&key.key(), *backend).map(|_| ())
            }
            Change::RemoveSourceRange { vip_index, range } => {
                dp.remove_source_range(*vip_index, *range)
            }
            Change::EvictBackendFlows { id } => dp.evict_backend_flows(*id).map(|_| ()),
            Change::RemoveServerId {
                vip_index,
                config_id,
                server_id,
            } => dp.remove_server_id(*vip_index, *config_id, server_id),
            Change::ClearQuicConfig {
                vip_index,
                config_id,
            } => dp.clear_quic_config(*vip_index, *config_id),
            Change::ClearBackend { id } => dp.clear_backend(*id),
        };
        r.map_err(|source| ApplyError::Dataplane {
            step: step + 1,
            total: changes.len(),
            change: c.to_string(),
            source: Box::new(source),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn data_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
    }

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, "lb.toml", &data_dir())
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    /// The config is rejected, and `expected` is one of its messages, in full.
    #[track_caller]
    fn assert_error(text: &str, expected: &str) {
        let errs = errors(text);
        assert!(
            errs.iter().any(|e| e == expected),
            "expected\n  {expected}\namong\n  {}",
            errs.join("\n  ")
        );
    }

    /// The config is rejected with a message at `prefix` (`lb.toml:L:C: field: `) that
    /// contains `needle`.
    #[track_caller]
    fn assert_error_like(text: &str, prefix: &str, needle: &str) {
        let errs = errors(text);
        assert!(
            errs.iter()
                .any(|e| e.starts_with(prefix) && e.contains(needle)),
            "expected {prefix}...{needle}... among\n  {}",
            errs.join("\n  ")
        );
    }

    const EXAMPLE: &str = include_str!("../../deploy/examples/lb.toml");

    fn v4(d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 19, 0, d))
    }

    #[test]
    fn example_config_parses() {
        let c = parse(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.interfaces,
            vec![
                Interface {
                    name: "eth0".into(),
                    xdp_mode: XdpMode::Native
                },
                Interface {
                    name: "eth1".into(),
                    xdp_mode: XdpMode::Generic
                },
            ]
        );
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.vips.len(), 3);
        let web = &c.vips[0];
        assert_eq!(web.name.as_deref(), Some("web"));
        assert_eq!(web.addr, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100)));
        assert_eq!(web.ports, vec![443]);
        assert_eq!(web.protocols, vec![Protocol::Tcp, Protocol::Udp]);
        assert!(web.quic);
        assert_eq!(web.maglev_table_size, 65537);
        assert_eq!(web.quic_lb.len(), 2);
        assert_eq!(web.quic_lb[0].mode(), quic_lb::Mode::Plaintext);
        assert_eq!(web.quic_lb[1].mode(), quic_lb::Mode::SinglePass);
        assert_eq!(web.quic_lb[1].key(), Some(*b"lb-example-key-1"));
        assert_eq!(
            web.backends[0],
            BackendConfig {
                addr: v4(10),
                port: 8443,
                weight: 2,
                server_ids: vec![(0, vec![0x0a, 0x01]), (1, vec![0x0b, 0, 0, 1])],
            }
        );
        assert_eq!(web.backends[2].weight, 0);
        let v6 = &c.vips[1];
        assert!(
            v6.quic,
            "quic defaults to true when the VIP has QUIC-LB configs"
        );
        assert_eq!(v6.backends[1].server_ids, vec![(0, vec![0x0a, 0x02])]);
        assert_eq!(
            v6.source_ranges,
            vec![
                "fd00:18::/64".parse::<ipnet::IpNet>().unwrap(),
                "fd00:1800::/24".parse().unwrap()
            ]
        );
        assert_eq!(v6.session_affinity, SessionAffinity::None);
        let dns = &c.vips[2];
        assert!(!dns.quic);
        assert_eq!(dns.maglev_table_size, 251);
        assert_eq!(dns.backends[0].weight, 1);
        assert_eq!(dns.session_affinity, SessionAffinity::ClientIp);
        assert_eq!(
            dns.source_ranges,
            vec!["198.18.0.0/15".parse::<ipnet::IpNet>().unwrap()]
        );
        assert!(web.source_ranges.is_empty());
        assert_eq!(web.session_affinity, SessionAffinity::None);
    }

    #[test]
    fn example_config_plans() {
        let c = parse(EXAMPLE).unwrap();
        let p = Plan::build(&c, None).unwrap();
        let keys: Vec<(String, u32, u32)> = p
            .vips
            .iter()
            .map(|v| (v.key.to_string(), v.index, v.flags))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("tcp 198.18.0.100:443".to_string(), 0, 0),
                ("udp 198.18.0.100:443".to_string(), 1, VIP_F_QUIC_LB),
                ("tcp [fd00:18::100]:443".to_string(), 2, VIP_F_SOURCE_RANGES),
                (
                    "udp [fd00:18::100]:443".to_string(),
                    3,
                    VIP_F_QUIC_LB | VIP_F_SOURCE_RANGES
                ),
                (
                    "udp 198.18.0.100:53".to_string(),
                    4,
                    VIP_F_SOURCE_RANGES | VIP_F_AFFINITY_CLIENT_IP
                ),
            ]
        );
        // 198.19.0.10 and .11 serve two VIPs on different ports: distinct backends.
        let be: Vec<String> = p
            .backends
            .iter()
            .map(|b| format!("{}={}", b.id, SocketAddr::new(b.addr, b.port)))
            .collect();
        assert_eq!(
            be,
            vec![
                "0=198.19.0.10:8443",
                "1=198.19.0.11:8443",
                "2=198.19.0.12:8443",
                "3=[fd00:19::10]:8443",
                "4=[fd00:19::11]:8443",
                "5=198.19.0.10:5353",
                "6=198.19.0.11:5353",
            ]
        );
        let udp = &p.vips[1];
        assert_eq!(udp.quic.len(), 2);
        assert_eq!(udp.server_ids.len(), 6);
        assert_eq!(
            udp.server_ids[0],
            PlannedServerId {
                config_id: 0,
                server_id: vec![0x0a, 0x01],
                backend: 0
            }
        );
        assert!(p.vips[0].quic.is_empty() && p.vips[0].server_ids.is_empty());
        // The drained backend stays in the VIP (and its server IDs) but not in the ring.
        assert_eq!(udp.backends.len(), 3);
        assert_eq!(
            udp.ring_backends().iter().map(|b| b.id).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(p.vips[4].ring_size, 251);
    }

    #[test]
    fn spec_example_server_id_length_message() {
        let text = r#"interfaces = ["eth0"]

[[vips]]
address = "198.18.0.100"
ports = [443]
protocols = ["udp"]

[[vips]]
address = "198.18.0.101"
ports = [443]
protocols = ["udp"]
quic_lb = [{ config_id = 0, server_id_len = 3, nonce_len = 6 }]
backends = [
  { address = "198.19.0.10", port = 1, server_id = "0a0101" },
  { address = "198.19.0.11", port = 1, server_id = "0a0102" },
  { address = "198.19.0.12", port = 1, server_id = "0a01" },
]
"#;
        assert_eq!(
            errors(text),
            vec![
                "lb.toml:16:52: vips[1].backends[2].server_id: \"0a01\" is 2 octets; QUIC-LB \
                 config 0 of this VIP has server IDs of 3 octets"
            ]
        );
    }

    #[test]
    fn structural_errors_name_field_line_and_column() {
        // Unknown field, with the path and the valid names.
        assert_error(
            "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [1]\nprotocols = [\"tcp\"]\n\n[[vips.backends]]\naddress = \"198.19.0.1\"\nport = 80\nwieght = 3\n",
            "lb.toml:10:1: vips[0].backends[0].wieght: unknown field `wieght`, expected one of \
             `address`, `port`, `weight`, `server_id`, `server_ids`",
        );
        assert_error(
            "interfaces = [\"eth0\"]\nmetrics = \"x\"\n",
            "lb.toml:2:1: metrics: unknown field `metrics`, expected one of `interfaces`, \
             `xdp_mode`, `backend_interfaces`, `metrics_addr`, `vips`, `kubernetes`, \
             `reverse_nat`",
        );
        // Wrong type.
        assert_error(
            "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [\"443\"]\nprotocols = [\"tcp\"]\n",
            "lb.toml:4:10: vips[0].ports[0]: invalid type: string \"443\", expected i64",
        );
        // Missing field.
        assert_error(
            "interfaces = [\"eth0\"]\n[[vips]]\nports = [1]\nprotocols = [\"tcp\"]\n",
            "lb.toml:2:1: vips[0]: missing field `address`",
        );
        // TOML syntax.
        assert_error(
            "interfaces = [\"eth0\"\n",
            "lb.toml:1:21: unclosed array, expected `]`",
        );
        assert_error(
            "interfaces = [{ name = \"eth0\", mode = \"native\" }]\n",
            "lb.toml:1:32: interfaces[0].mode: unknown field `mode`, expected `name` or `xdp_mode`",
        );
    }

    /// A VIP with one 2-octet plaintext config; `{vip}` and `{backends}` are spliced in.
    fn quic_vip(vip_extra: &str, backends: &str) -> String {
        format!(
            "interfaces = [\"eth0\"]\n\
             [[vips]]\n\
             address = \"198.18.0.100\"\n\
             ports = [443]\n\
             protocols = [\"tcp\", \"udp\"]\n\
             {vip_extra}\n\
             [[vips.quic_lb]]\n\
             config_id = 0\n\
             server_id_len = 2\n\
             nonce_len = 6\n\
             {backends}"
        )
    }

    fn be(addr: &str, port: u32, extra: &str) -> String {
        format!("[[vips.backends]]\naddress = \"{addr}\"\nport = {port}\n{extra}\n")
    }

    #[test]
    fn value_errors_are_all_reported_with_positions() {
        // Five independent problems in one file: all five come back, in file order.
        let text = "interfaces = [\"eth0\", \"eth0\"]\n\
                    metrics_addr = \"localhost\"\n\
                    [[vips]]\n\
                    address = \"198.18.0.300\"\n\
                    ports = [0, 443]\n\
                    protocols = [\"sctp\"]\n";
        assert_eq!(
            errors(text),
            vec![
                "lb.toml:1:23: interfaces[1].name: \"eth0\" is listed twice (also on line 1); list each interface once",
                "lb.toml:2:16: metrics_addr: \"localhost\" is not an address:port (e.g. \"127.0.0.1:9100\" or \"[::1]:9100\")",
                "lb.toml:4:11: vips[0].address: \"198.18.0.300\" is not an IPv4 or IPv6 address (e.g. \"198.18.0.100\" or \"fd00:18::100\")",
                "lb.toml:5:10: vips[0].ports[0]: port 0 is out of range: use 1..=65535",
                "lb.toml:6:14: vips[0].protocols[0]: \"sctp\" is not a protocol: use \"tcp\" or \"udp\"",
            ]
        );
    }

    #[test]
    fn vip_level_checks() {
        let head = "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\n";
        assert_error(
            &format!("{head}ports = []\nprotocols = [\"tcp\"]\n"),
            "lb.toml:4:9: vips[0].ports: empty: list at least one port, e.g. ports = [443]",
        );
        assert_error(
            &format!("{head}ports = [1]\nprotocols = []\n"),
            "lb.toml:5:13: vips[0].protocols: empty: list \"tcp\", \"udp\" or both, e.g. protocols = [\"tcp\", \"udp\"]",
        );
        assert_error(
            &format!("{head}ports = [70000]\nprotocols = [\"tcp\"]\n"),
            "lb.toml:4:10: vips[0].ports[0]: port 70000 is out of range: use 1..=65535",
        );
        // Duplicate (address, port, protocol) across entries.
        assert_error(
            &format!(
                "{head}ports = [443, 80]\nprotocols = [\"tcp\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [80]\nprotocols = [\"udp\", \"tcp\"]\n"
            ),
            "lb.toml:6:1: vips[1]: tcp 198.18.0.1 port 80 is already a VIP in vips[0] (line 2); \
             each (address, port, protocol) may appear once",
        );
        assert_error(
            &format!("{head}ports = [1]\nprotocols = [\"tcp\", \"tcp\"]\n"),
            "lb.toml:5:21: vips[0].protocols[1]: \"tcp\" is listed twice; list each protocol once",
        );
        // quic = true without configs, and without UDP.
        assert_error(
            &format!("{head}ports = [1]\nprotocols = [\"udp\"]\nquic = true\n"),
            "lb.toml:6:8: vips[0].quic: quic = true needs at least one [[vips.quic_lb]] config on \
             this VIP; add one, or set quic = false for 4-tuple hashing only",
        );
        assert_error_like(
            &format!("{head}ports = [1]\nprotocols = [\"tcp\"]\nquic = true\n"),
            "lb.toml:6:8: vips[0].quic: ",
            "has no UDP port",
        );
        // Maglev sizes.
        assert_error(
            &format!("{head}ports = [1]\nprotocols = [\"tcp\"]\nmaglev_table_size = 1000\n"),
            "lb.toml:6:21: vips[0].maglev_table_size: 1000 is not prime; Maglev tables need a \
             prime size (nearby: 997 or 1009)",
        );
        assert_error_like(
            &format!("{head}ports = [1]\nprotocols = [\"tcp\"]\nmaglev_table_size = 131071\n"),
            "lb.toml:6:21: vips[0].maglev_table_size: ",
            "larger than the maximum 65537",
        );
        let two = format!(
            "{head}ports = [1]\nprotocols = [\"tcp\"]\nmaglev_table_size = 2\n{}{}{}",
            be("198.19.0.1", 1, ""),
            be("198.19.0.2", 1, ""),
            be("198.19.0.3", 1, "")
        );
        assert_error(
            &two,
            "lb.toml:6:21: vips[0].maglev_table_size: 2 slots for 3 backends with weight > 0; use \
             a prime of at least 3 (ideally 100 times as many)",
        );
        // A drained backend needs no slot.
        let drained = two.replacen("port = 1\n\n", "port = 1\nweight = 0\n", 1);
        parse(&drained).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn capacity_checks() {
        // 65 ports x 1 protocol = 65 VIPs.
        let ports: Vec<String> = (1..=65).map(|p| p.to_string()).collect();
        let text = format!(
            "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [{}]\nprotocols = [\"tcp\"]\n",
            ports.join(", ")
        );
        assert_error(
            &text,
            "lb.toml:2:1: vips[0]: this entry brings the VIP count to 65; the data plane has room \
             for 64 (each address, port and protocol counts as one VIP)",
        );
        // 64 is fine: 32 ports x tcp + udp.
        let ports: Vec<String> = (1..=32).map(|p| p.to_string()).collect();
        let text = format!(
            "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [{}]\nprotocols = [\"tcp\", \"udp\"]\n",
            ports.join(", ")
        );
        parse(&text).unwrap_or_else(|e| panic!("{e}"));
        // MAX_BACKENDS + 1 distinct backends over two VIPs.
        let mut text = String::from(
            "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [1]\nprotocols = [\"tcp\"]\n",
        );
        for i in 0..MAX_BACKENDS {
            text += &format!(
                "[[vips.backends]]\naddress = \"198.19.{}.{}\"\nport = 80\n",
                i / 256,
                i % 256
            );
        }
        text += "[[vips]]\naddress = \"198.18.0.2\"\nports = [1]\nprotocols = [\"tcp\"]\n";
        text += "[[vips.backends]]\naddress = \"198.19.0.0\"\nport = 80\n"; // shared: counts once
        let line = text.lines().count() + 1;
        text += "[[vips.backends]]\naddress = \"198.20.0.0\"\nport = 80\n";
        assert_error(
            &text,
            &format!(
                "lb.toml:{line}:1: vips[1].backends[1]: this is backend number 4097; the data plane \
                 has room for 4096 distinct backend (address, port) pairs"
            ),
        );
    }

    #[test]
    fn backend_checks() {
        assert_error(
            &quic_vip("", &be("fd00:19::1", 8443, "server_id = \"0a01\"")),
            "lb.toml:12:11: vips[0].backends[0].address: fd00:19::1 is IPv6 but the VIP \
             198.18.0.100 is IPv4; backends need the VIP's address family",
        );
        assert_error(
            &quic_vip("", &be("198.19.0.1", 0, "server_id = \"0a01\"")),
            "lb.toml:13:8: vips[0].backends[0].port: port 0 is out of range: use 1..=65535",
        );
        assert_error(
            &quic_vip(
                "",
                &be("198.19.0.1", 1, "weight = 70000\nserver_id = \"0a01\""),
            ),
            "lb.toml:14:10: vips[0].backends[0].weight: weight 70000 is out of range: use \
             0..=65535 (0 drains the backend)",
        );
        assert_error(
            &quic_vip(
                "",
                &format!(
                    "{}{}",
                    be("198.19.0.1", 1, "server_id = \"0a01\""),
                    be("198.19.0.1", 1, "server_id = \"0a02\"")
                ),
            ),
            "lb.toml:15:1: vips[0].backends[1]: backend 198.19.0.1:1 is already \
             vips[0].backends[0] (line 11); list each backend once per VIP",
        );
        assert_error(
            &quic_vip(
                "",
                &format!(
                    "{}{}",
                    be("198.19.0.1", 1, "server_id = \"0a01\""),
                    be("198.19.0.2", 1, "server_id = \"0a01\"")
                ),
            ),
            "lb.toml:18:13: vips[0].backends[1].server_id: server ID 0a01 under QUIC-LB config 0 \
             is already vips[0].backends[0]'s (line 14); server IDs are unique per VIP and config",
        );
        assert_error(
            &quic_vip("", &be("198.19.0.1", 1, "")),
            "lb.toml:11:1: vips[0].backends[0]: no server_id: this VIP routes QUIC by server ID \
             (quic = true), so every backend needs one (server IDs of this VIP are 2 octets)",
        );
        // quic = false: server IDs are optional.
        parse(&quic_vip("quic = false", &be("198.19.0.1", 1, "")))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_error_like(
            &quic_vip("", &be("198.19.0.1", 1, "server_id = \"0g01\"")),
            "lb.toml:14:13: vips[0].backends[0].server_id: ",
            "non-hex character 'g'",
        );
        assert_error_like(
            &quic_vip(
                "",
                &be(
                    "198.19.0.1",
                    1,
                    "server_id = \"0a01\"\nserver_ids = { 0 = \"0a01\" }",
                ),
            ),
            "lb.toml:15:14: vips[0].backends[0].server_ids: ",
            "both server_id and server_ids",
        );
        assert_error(
            &quic_vip("", &be("198.19.0.1", 1, "server_ids = { 3 = \"0a01\" }")),
            "lb.toml:14:16: vips[0].backends[0].server_ids.3: \"3\" is not a QUIC-LB config of \
             this VIP; its configs are: [0]",
        );
        let no_cfg = "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [1]\nprotocols = [\"udp\"]\n[[vips.backends]]\naddress = \"198.19.0.1\"\nport = 1\nserver_id = \"0a01\"\n";
        assert_error_like(
            no_cfg,
            "lb.toml:9:13: vips[0].backends[0].server_id: ",
            "no [[vips.quic_lb]] config",
        );
    }

    #[test]
    fn quic_lb_config_checks() {
        let cfg = |body: &str| {
            format!(
                "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [1]\nprotocols = [\"udp\"]\nquic = false\n[[vips.quic_lb]]\n{body}\n"
            )
        };
        assert_error(
            &cfg("config_id = 7\nserver_id_len = 2\nnonce_len = 6"),
            "lb.toml:8:13: vips[0].quic_lb[0].config_id: QUIC-LB config ID 7 is out of range: \
             use 0..=6 (0b111 = 7 is reserved for unroutable connection IDs)",
        );
        assert_error(
            &cfg("config_id = 0\nserver_id_len = 0\nnonce_len = 6"),
            "lb.toml:9:17: vips[0].quic_lb[0].server_id_len: QUIC-LB server ID length 0 is out \
             of range: use 1..=15 octets",
        );
        assert_error(
            &cfg("config_id = 0\nserver_id_len = 2\nnonce_len = 3"),
            "lb.toml:10:13: vips[0].quic_lb[0].nonce_len: QUIC-LB nonce length 3 is too short: \
             use at least 4 octets",
        );
        assert_error_like(
            &cfg("config_id = 0\nserver_id_len = 15\nnonce_len = 5"),
            "lb.toml:10:13: vips[0].quic_lb[0].nonce_len: ",
            "= 20 octets is too long",
        );
        assert_error_like(
            &cfg("config_id = -1\nserver_id_len = 2\nnonce_len = 6"),
            "lb.toml:8:13: vips[0].quic_lb[0].config_id: ",
            "-1 is out of range",
        );
        assert_error(
            &cfg("config_id = 0\nserver_id_len = 2\nnonce_len = 6\nkey = \"0011\""),
            "lb.toml:11:7: vips[0].quic_lb[0].key: \"0011\" is 4 hex digits; a QUIC-LB key is 16 \
             octets = 32 hex digits",
        );
        assert_error(
            &cfg("config_id = 0\nserver_id_len = 2\nnonce_len = 6\nkey_file = \"missing.key\""),
            &format!(
                "lb.toml:11:12: vips[0].quic_lb[0].key_file: cannot read {}: No such file or \
                 directory (os error 2)",
                data_dir().join("missing.key").display()
            ),
        );
        assert_error_like(
            &cfg("config_id = 0\nserver_id_len = 2\nnonce_len = 6\nkey_file = \"short.key\""),
            "lb.toml:11:12: vips[0].quic_lb[0].key_file: ",
            "short.key holds 11 octets; a key file holds the 16-octet key as 32 hex digits or as 16 raw octets",
        );
        // Duplicate rotation value.
        let dup = cfg(
            "config_id = 2\nserver_id_len = 2\nnonce_len = 6\n[[vips.quic_lb]]\nconfig_id = 2\nserver_id_len = 4\nnonce_len = 6",
        );
        assert_error(
            &dup,
            "lb.toml:12:13: vips[0].quic_lb[1].config_id: config rotation 2 is already used by \
             vips[0].quic_lb[0] (line 8); each config of a VIP needs its own value in 0..=6",
        );
        // key_file relative to the config's directory, hex with a trailing newline.
        let ok = parse(&cfg(
            "config_id = 0\nserver_id_len = 4\nnonce_len = 12\nkey_file = \"quic-lb.key\"",
        ))
        .unwrap();
        let q = ok.vips[0].quic_lb[0];
        assert_eq!(
            q.key(),
            Some([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])
        );
        assert_eq!(q.mode(), quic_lb::Mode::SinglePass);
        assert!(!ok.vips[0].quic, "quic = false is kept");
    }

    #[test]
    fn server_id_under_configs_of_different_lengths() {
        let base = |sids: &str| {
            format!(
                "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"fd00:18::1\"\nports = [443]\nprotocols = [\"udp\"]\n\
                 quic_lb = [{{ config_id = 0, server_id_len = 2, nonce_len = 6 }}, {{ config_id = 1, server_id_len = 3, nonce_len = 6 }}]\n\
                 [[vips.backends]]\naddress = \"fd00:19::1\"\nport = 1\n{sids}\n"
            )
        };
        assert_error_like(
            &base("server_id = \"0a01\""),
            "lb.toml:10:13: vips[0].backends[0].server_id: \"0a01\" is 2 octets; QUIC-LB config 1 \
             of this VIP has server IDs of 3 octets",
            "give server_ids",
        );
        assert_error(
            &base("server_ids = { 0 = \"0a01\" }"),
            "lb.toml:10:14: vips[0].backends[0].server_ids: no server ID for QUIC-LB config(s) \
             [1]; a VIP with quic = true needs one per backend under every config",
        );
        let c = parse(&base("server_ids = { 0 = \"0a01\", 1 = \"0b0001\" }")).unwrap();
        let p = Plan::build(&c, None).unwrap();
        assert_eq!(
            p.vips[0].server_ids,
            vec![
                PlannedServerId {
                    config_id: 0,
                    server_id: vec![0x0a, 0x01],
                    backend: 0
                },
                PlannedServerId {
                    config_id: 1,
                    server_id: vec![0x0b, 0, 1],
                    backend: 0
                },
            ]
        );
        assert_eq!(
            c.vips[0].backends[0].addr,
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 1))
        );
    }

    #[test]
    fn interface_checks() {
        assert_error(
            "metrics_addr = \"127.0.0.1:9100\"\n",
            "lb.toml:1:1: interfaces: missing: name the external interface(s) XDP attaches to, \
             e.g. interfaces = [\"eth0\"]",
        );
        assert_error(
            "interfaces = []\n",
            "lb.toml:1:14: interfaces: empty: name at least one interface, e.g. interfaces = [\"eth0\"]",
        );
        assert_error(
            "interfaces = [{ name = \"eth0\", xdp_mode = \"offload\" }]\n",
            "lb.toml:1:43: interfaces[0].xdp_mode: \"offload\" is not an XDP mode: use \"native\" \
             or \"generic\"",
        );
        assert_error_like(
            "interfaces = [\"a-very-long-interface-name\"]\n",
            "lb.toml:1:15: interfaces[0].name: ",
            "use 1..=15 characters",
        );
        // [[interfaces]] tables work too.
        let c = parse("[[interfaces]]\nname = \"eth9\"\nxdp_mode = \"generic\"\n").unwrap();
        assert_eq!(
            c.interfaces,
            vec![Interface {
                name: "eth9".into(),
                xdp_mode: XdpMode::Generic
            }]
        );
        assert!(c.vips.is_empty() && c.metrics_addr.is_none());
    }

    #[test]
    fn unreadable_config_file_is_named() {
        let e = Config::load(Path::new("/nonexistent/lb.toml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/nonexistent/lb.toml: cannot read the config file: No such file or directory (os error 2)"
        );
    }

    // ---- plans, diffs ---------------------------------------------------------------------

    fn plan(text: &str, prev: Option<&Plan>) -> Plan {
        let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
        Plan::build(&c, prev).unwrap()
    }

    fn index_of(p: &Plan, s: &str) -> u32 {
        p.vips
            .iter()
            .find(|v| v.key.to_string() == s)
            .unwrap_or_else(|| panic!("no {s}"))
            .index
    }

    fn id_of(p: &Plan, s: &str) -> u32 {
        p.backends
            .iter()
            .find(|b| SocketAddr::new(b.addr, b.port).to_string() == s)
            .unwrap_or_else(|| panic!("no {s}"))
            .id
    }

    #[test]
    fn reload_keeps_indexes_and_ids_of_unchanged_entries() {
        let one = "interfaces = [\"eth0\"]\n\
            [[vips]]\naddress = \"198.18.0.1\"\nports = [443]\nprotocols = [\"tcp\", \"udp\"]\n\
            backends = [{ address = \"198.19.0.1\", port = 1 }, { address = \"198.19.0.2\", port = 1 }]\n\
            [[vips]]\naddress = \"198.18.0.2\"\nports = [80]\nprotocols = [\"tcp\"]\n\
            backends = [{ address = \"198.19.0.3\", port = 1 }]\n";
        let p1 = plan(one, None);
        assert_eq!(index_of(&p1, "tcp 198.18.0.1:443"), 0);
        assert_eq!(index_of(&p1, "udp 198.18.0.1:443"), 1);
        assert_eq!(index_of(&p1, "tcp 198.18.0.2:80"), 2);
        assert_eq!(id_of(&p1, "198.19.0.2:1"), 1);
        // A new VIP first in the file, TCP dropped from the first one, backends reordered,
        // one backend removed and one added.
        let two = "interfaces = [\"eth0\"]\n\
            [[vips]]\naddress = \"198.18.0.3\"\nports = [8080]\nprotocols = [\"tcp\"]\n\
            backends = [{ address = \"198.19.0.4\", port = 1 }]\n\
            [[vips]]\naddress = \"198.18.0.1\"\nports = [443]\nprotocols = [\"udp\"]\n\
            backends = [{ address = \"198.19.0.2\", port = 1 }, { address = \"198.19.0.1\", port = 1 }]\n\
            [[vips]]\naddress = \"198.18.0.2\"\nports = [80]\nprotocols = [\"tcp\"]\n\
            backends = [{ address = \"198.19.0.5\", port = 1 }, { address = \"198.19.0.2\", port = 1 }]\n";
        let p2 = plan(two, Some(&p1));
        assert_eq!(index_of(&p2, "udp 198.18.0.1:443"), 1);
        assert_eq!(index_of(&p2, "tcp 198.18.0.2:80"), 2);
        // Index 0 was freed by this reload; the new VIP takes the lowest never-used one.
        assert_eq!(index_of(&p2, "tcp 198.18.0.3:8080"), 3);
        assert_eq!(id_of(&p2, "198.19.0.1:1"), 0);
        assert_eq!(id_of(&p2, "198.19.0.2:1"), 1);
        assert_eq!(id_of(&p2, "198.19.0.4:1"), 3);
        assert_eq!(id_of(&p2, "198.19.0.5:1"), 4);
        // Building the same config again changes nothing, and the diff is empty.
        let p3 = plan(two, Some(&p2));
        assert_eq!(p3, p2);
        assert_eq!(Plan::diff(&p2, &p3), vec![]);
        // A fresh start numbers from 0 in file order.
        let fresh = plan(two, None);
        assert_eq!(index_of(&fresh, "tcp 198.18.0.3:8080"), 0);
        assert_eq!(id_of(&fresh, "198.19.0.4:1"), 0);
    }

    const DIFF_OLD: &str = "interfaces = [\"eth0\"]\n\
        [[vips]]\naddress = \"198.18.0.1\"\nports = [443]\nprotocols = [\"tcp\", \"udp\"]\nmaglev_table_size = 251\n\
        quic_lb = [{ config_id = 0, server_id_len = 2, nonce_len = 6 }]\n\
        backends = [{ address = \"198.19.0.1\", port = 1, server_id = \"0a01\" },\n\
                    { address = \"198.19.0.2\", port = 1, server_id = \"0a02\" }]\n\
        [[vips]]\naddress = \"198.18.0.1\"\nports = [53]\nprotocols = [\"udp\"]\nmaglev_table_size = 251\n\
        backends = [{ address = \"198.19.0.1\", port = 53 }]\n";

    const DIFF_NEW: &str = "interfaces = [\"eth0\"]\n\
        [[vips]]\naddress = \"198.18.0.1\"\nports = [443]\nprotocols = [\"tcp\", \"udp\"]\nmaglev_table_size = 251\n\
        quic_lb = [{ config_id = 0, server_id_len = 2, nonce_len = 8 }]\n\
        backends = [{ address = \"198.19.0.1\", port = 1, server_id = \"0a01\", weight = 2 },\n\
                    { address = \"198.19.0.3\", port = 1, server_id = \"0a03\" }]\n";

    fn wb(id: u32, d: u8, port: u16, weight: u32) -> WeightedBackend {
        WeightedBackend {
            id,
            addr: v4(d),
            port,
            weight,
        }
    }

    #[test]
    fn diff_orders_adds_before_publishes_before_removals() {
        let old = plan(DIFF_OLD, None);
        let new = plan(DIFF_NEW, Some(&old));
        let vip = |port, proto| VipId {
            addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            port,
            proto,
        };
        let ring = vec![wb(0, 1, 1, 2), wb(3, 3, 1, 1)];
        assert_eq!(
            Plan::diff(&old, &new),
            vec![
                Change::SetBackend {
                    id: 3,
                    addr: v4(3),
                    port: 1
                },
                Change::SetQuicConfig {
                    vip_index: 1,
                    config: quic_lb::Config::new(0, 2, 8, None, true).unwrap()
                },
                Change::SetServerId {
                    vip_index: 1,
                    config_id: 0,
                    server_id: vec![0x0a, 0x03],
                    backend: 3
                },
                Change::PublishVip {
                    key: vip(443, Protocol::Tcp),
                    index: 0,
                    flags: 0,
                    ring_size: 251,
                    backends: ring.clone()
                },
                Change::PublishVip {
                    key: vip(443, Protocol::Udp),
                    index: 1,
                    flags: VIP_F_QUIC_LB,
                    ring_size: 251,
                    backends: ring
                },
                Change::RemoveVip {
                    key: vip(53, Protocol::Udp)
                },
                Change::RemoveServerId {
                    vip_index: 1,
                    config_id: 0,
                    server_id: vec![0x0a, 0x02]
                },
                Change::ClearBackend { id: 1 },
                Change::ClearBackend { id: 2 },
            ]
        );
        // From nothing: backends, then configs and server IDs, then rings.
        let from_empty: Vec<String> = Plan::diff(&Plan::default(), &old)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            from_empty,
            vec![
                "set backend 0 = 198.19.0.1:1",
                "set backend 1 = 198.19.0.2:1",
                "set backend 2 = 198.19.0.1:53",
                "set QUIC-LB config 0 of VIP 1",
                "map server ID 0a01 (config 0) of VIP 1 to backend 0",
                "map server ID 0a02 (config 0) of VIP 1 to backend 1",
                "publish VIP 0 (tcp 198.18.0.1:443): 251-slot ring over 2 backends",
                "publish VIP 1 (udp 198.18.0.1:443): 251-slot ring over 2 backends",
                "publish VIP 2 (udp 198.18.0.1:53): 251-slot ring over 1 backends",
            ]
        );
        // To nothing: VIPs, then server IDs and configs, then backends.
        let to_empty: Vec<String> = Plan::diff(&old, &Plan::default())
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            to_empty,
            vec![
                "remove VIP tcp 198.18.0.1:443",
                "remove VIP udp 198.18.0.1:443",
                "remove VIP udp 198.18.0.1:53",
                "remove server ID 0a01 (config 0) of VIP 1",
                "remove server ID 0a02 (config 0) of VIP 1",
                "clear QUIC-LB config 0 of VIP 1",
                "clear backend 0",
                "clear backend 1",
                "clear backend 2",
            ]
        );
    }

    #[test]
    fn diff_turning_quic_off_flips_the_flag_before_clearing() {
        let old = plan(DIFF_NEW, None);
        let off = DIFF_NEW.replace(
            "maglev_table_size = 251\n",
            "maglev_table_size = 251\nquic = false\n",
        );
        let new = plan(&off, Some(&old));
        let d: Vec<String> = Plan::diff(&old, &new)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            d,
            vec![
                "publish VIP 1 (udp 198.18.0.1:443): 251-slot ring over 2 backends",
                "remove server ID 0a01 (config 0) of VIP 1",
                "remove server ID 0a03 (config 0) of VIP 1",
                "clear QUIC-LB config 0 of VIP 1",
            ]
        );
    }

    fn learned_vip(extra: &str) -> String {
        format!(
            "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [443]\n\
             protocols = [\"tcp\", \"udp\"]\n{extra}\n\
             backends = [{{ address = \"198.19.0.1\", port = 4433 }}]\n"
        )
    }

    #[test]
    fn learned_cid_len_sets_the_udp_vip_flags() {
        let c = parse(&learned_vip("learned_cid_len = 8")).expect("valid");
        assert_eq!(c.vips[0].learned_cid_len, 8);
        let p = Plan::build(&c, None).expect("plan");
        let flags: Vec<(Protocol, u32)> = p.vips.iter().map(|v| (v.key.proto, v.flags)).collect();
        assert!(flags.contains(&(Protocol::Udp, lb_common::learned_cid_flags(8))));
        assert!(flags.contains(&(Protocol::Tcp, 0)));
        let meta = lb_common::VipMeta {
            flags: lb_common::learned_cid_flags(8),
            ..Default::default()
        };
        assert_eq!(meta.learned_cid_len(), 8);
        // Off by default.
        let c = parse(&learned_vip("")).expect("valid");
        assert_eq!(c.vips[0].learned_cid_len, 0);
        // Turning it on republishes the VIP with the new flags.
        let old = Plan::build(&c, None).expect("plan");
        let new = Plan::build(
            &parse(&learned_vip("learned_cid_len = 8")).unwrap(),
            Some(&old),
        )
        .expect("plan");
        let d: Vec<String> = Plan::diff(&old, &new)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].starts_with("publish VIP") && d[0].contains("udp"),
            "{d:?}"
        );
    }

    #[test]
    fn learned_cid_len_checks() {
        assert_error_like(
            &learned_vip("learned_cid_len = 0"),
            "lb.toml:6:19: vips[0].learned_cid_len: ",
            "1..=20",
        );
        assert_error_like(
            &learned_vip("learned_cid_len = 21"),
            "lb.toml:6:19: vips[0].learned_cid_len: ",
            "not a QUIC connection ID length",
        );
        assert_error_like(
            &learned_vip(
                "learned_cid_len = 8\nquic_lb = [{ config_id = 0, server_id_len = 2, nonce_len = 6 }]",
            ),
            "lb.toml:6:19: vips[0].learned_cid_len: ",
            "cannot be combined",
        );
        assert_error_like(
            &learned_vip("learned_cid_len = 8").replace("[\"tcp\", \"udp\"]", "[\"tcp\"]"),
            "lb.toml:6:19: vips[0].learned_cid_len: ",
            "no UDP port",
        );
    }

    #[test]
    fn diff_retires_a_reused_vip_index_before_writing_it() {
        // 63 ports fill indexes 0..63, a second entry takes 63: the maps are full.
        let ports: Vec<String> = (1..=63).map(|p| p.to_string()).collect();
        let head = format!(
            "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [{}]\nprotocols = [\"tcp\"]\n\
             backends = [{{ address = \"198.19.0.1\", port = 1 }}]\n",
            ports.join(", ")
        );
        let tail = |port: u16| {
            format!(
                "[[vips]]\naddress = \"198.18.0.2\"\nports = [{port}]\nprotocols = [\"tcp\"]\n\
                 backends = [{{ address = \"198.19.0.1\", port = 1 }}]\n"
            )
        };
        let old = plan(&format!("{head}{}", tail(1000)), None);
        let new = plan(&format!("{head}{}", tail(2000)), Some(&old));
        assert_eq!(index_of(&new, "tcp 198.18.0.2:2000"), 63);
        let d: Vec<String> = Plan::diff(&old, &new)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            d,
            vec![
                "remove VIP tcp 198.18.0.2:1000",
                "publish VIP 63 (tcp 198.18.0.2:2000): 65537-slot ring over 1 backends",
            ]
        );
    }

    #[test]
    fn weights_set_ring_shares() {
        let text = "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [1]\nprotocols = [\"tcp\"]\n\
            maglev_table_size = 10007\n\
            backends = [{ address = \"198.19.0.1\", port = 1, weight = 1 },\n\
                        { address = \"198.19.0.2\", port = 1, weight = 3 },\n\
                        { address = \"198.19.0.3\", port = 1, weight = 0 }]\n";
        let p = plan(text, None);
        let changes = Plan::diff(&Plan::default(), &p);
        let Some(Change::PublishVip {
            ring_size,
            backends,
            ..
        }) = changes
            .iter()
            .find(|c| matches!(c, Change::PublishVip { .. }))
        else {
            panic!("no publish in {changes:?}")
        };
        let table = build_table(backends, *ring_size).unwrap();
        let count = |id| table.iter().filter(|&&s| s == id).count();
        assert_eq!(table.len(), 10007);
        assert_eq!(count(2), 0, "weight 0 gets no slots");
        let (a, b) = (count(0), count(1));
        assert_eq!(a + b, 10007);
        // 1 : 3, within 1% of the table.
        assert!((a as i64 - 10007 / 4).abs() < 100, "weight 1 got {a} slots");
        assert!(
            (b as i64 - 3 * 10007 / 4).abs() < 100,
            "weight 3 got {b} slots"
        );
    }

    // ---- source ranges, session affinity, eviction ------------------------------------

    fn policy_vip(addr: &str, extra: &str) -> String {
        format!(
            "interfaces = [\"eth0\"]\n\
             [[vips]]\n\
             address = \"{addr}\"\n\
             ports = [80]\n\
             protocols = [\"tcp\"]\n\
             maglev_table_size = 251\n\
             {extra}\n\
             backends = [{{ address = \"{}\", port = 8080 }}]\n",
            if addr.contains(':') {
                "fd00:19::1"
            } else {
                "198.19.0.1"
            }
        )
    }

    #[test]
    fn source_ranges_and_affinity_parse() {
        let c = parse(&policy_vip(
            "198.18.0.1",
            "source_ranges = [\"198.18.0.0/24\", \"203.0.113.7/32\"]\nsession_affinity = \"client_ip\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.vips[0].source_ranges,
            vec![
                "198.18.0.0/24".parse::<ipnet::IpNet>().unwrap(),
                "203.0.113.7/32".parse().unwrap()
            ]
        );
        assert_eq!(c.vips[0].session_affinity, SessionAffinity::ClientIp);
        let c = parse(&policy_vip(
            "fd00:18::1",
            "source_ranges = [\"fd00::/64\", \"::/0\"]",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.vips[0].source_ranges.len(), 2);
        assert_eq!(c.vips[0].session_affinity, SessionAffinity::None);
        // Explicit defaults.
        let c = parse(&policy_vip(
            "198.18.0.1",
            "source_ranges = []\nsession_affinity = \"none\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.vips[0].source_ranges.is_empty());
        assert_eq!(c.vips[0].session_affinity, SessionAffinity::None);
    }

    #[test]
    fn source_range_and_affinity_checks() {
        assert_error(
            &policy_vip("198.18.0.1", "source_ranges = [\"198.18.0.1/24\"]"),
            "lb.toml:7:18: vips[0].source_ranges[0]: 198.18.0.1/24 has host bits set; the prefix \
             is 198.18.0.0/24",
        );
        assert_error(
            &policy_vip("fd00:18::1", "source_ranges = [\"fd00::1/64\"]"),
            "lb.toml:7:18: vips[0].source_ranges[0]: fd00::1/64 has host bits set; the prefix is \
             fd00::/64",
        );
        assert_error(
            &policy_vip(
                "198.18.0.1",
                "source_ranges = [\"198.18.0.0/24\", \"fd00::/64\"]",
            ),
            "lb.toml:7:35: vips[0].source_ranges[1]: fd00::/64 is IPv6 but the VIP 198.18.0.1 is \
             IPv4; source ranges need the VIP's address family",
        );
        assert_error(
            &policy_vip("fd00:18::1", "source_ranges = [\"198.18.0.0/24\"]"),
            "lb.toml:7:18: vips[0].source_ranges[0]: 198.18.0.0/24 is IPv4 but the VIP fd00:18::1 \
             is IPv6; source ranges need the VIP's address family",
        );
        assert_error_like(
            &policy_vip("198.18.0.1", "source_ranges = [\"198.18.0.7\"]"),
            "lb.toml:7:18: vips[0].source_ranges[0]: ",
            "is not a CIDR prefix; write address/length",
        );
        assert_error_like(
            &policy_vip("198.18.0.1", "source_ranges = [\"198.18.0.0/33\"]"),
            "lb.toml:7:18: vips[0].source_ranges[0]: ",
            "is not a CIDR prefix",
        );
        assert_error(
            &policy_vip(
                "198.18.0.1",
                "source_ranges = [\"198.18.0.0/24\",\n  \"198.18.0.0/24\"]",
            ),
            "lb.toml:8:3: vips[0].source_ranges[1]: 198.18.0.0/24 is listed twice (also on line \
             7); list each range once",
        );
        assert_error(
            &policy_vip("198.18.0.1", "session_affinity = \"ClientIP\""),
            "lb.toml:7:20: vips[0].session_affinity: \"ClientIP\" is not a session affinity: use \
             \"none\" (hash the whole 5-tuple) or \"client_ip\" (every flow of a client to one \
             backend)",
        );
        // Not a list of strings: a structural error, one at a time.
        assert_error_like(
            &policy_vip("198.18.0.1", "source_ranges = \"198.18.0.0/24\""),
            "lb.toml:7:17: vips[0].source_ranges: ",
            "expected a sequence",
        );
    }

    #[test]
    fn source_range_capacity_is_checked() {
        // 2 ports x 2 protocols x n ranges per entry.
        let ranges = |n: u32, third: u32| -> String {
            let v: Vec<String> = (0..n)
                .map(|i| format!("\"10.{third}.{}.{}/32\"", i / 256, i % 256))
                .collect();
            v.join(", ")
        };
        let per_entry = MAX_SOURCE_RANGES / 4;
        let text = format!(
            "interfaces = [\"eth0\"]\n\
             [[vips]]\naddress = \"198.18.0.1\"\nports = [1, 2]\nprotocols = [\"tcp\", \"udp\"]\n\
             source_ranges = [{}]\n\
             [[vips]]\naddress = \"198.18.0.2\"\nports = [1]\nprotocols = [\"tcp\"]\n\
             source_ranges = [\"198.18.0.0/24\"]\n",
            ranges(per_entry, 0)
        );
        assert_error(
            &text,
            &format!(
                "lb.toml:11:17: vips[1].source_ranges: this entry brings the source-range entries \
                 (ranges x ports x protocols) to {}; the data plane has room for \
                 {MAX_SOURCE_RANGES}; merge adjacent ranges into shorter prefixes",
                MAX_SOURCE_RANGES + 1
            ),
        );
        // Exactly full is fine.
        parse(&text.replace("source_ranges = [\"198.18.0.0/24\"]\n", ""))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn source_ranges_and_affinity_set_vip_flags() {
        let p = plan(
            &policy_vip(
                "198.18.0.1",
                "source_ranges = [\"203.0.113.0/24\", \"198.18.0.0/24\"]\nsession_affinity = \"client_ip\"",
            ),
            None,
        );
        assert_eq!(
            p.vips[0].flags,
            VIP_F_SOURCE_RANGES | VIP_F_AFFINITY_CLIENT_IP
        );
        assert_eq!(
            p.vips[0].source_ranges,
            vec![
                "198.18.0.0/24".parse::<ipnet::IpNet>().unwrap(),
                "203.0.113.0/24".parse().unwrap()
            ],
            "sorted"
        );
        let p = plan(&policy_vip("198.18.0.1", ""), None);
        assert_eq!(p.vips[0].flags, 0);
        assert!(p.vips[0].source_ranges.is_empty());
        // With QUIC-LB on the UDP VIP the bits combine.
        let p = plan(
            &quic_vip(
                "source_ranges = [\"198.18.0.0/15\"]\nsession_affinity = \"client_ip\"",
                &be("198.19.0.1", 1, "server_id = \"0a01\"\n"),
            ),
            None,
        );
        let udp = p
            .vips
            .iter()
            .find(|v| v.key.proto == Protocol::Udp)
            .unwrap();
        assert_eq!(
            udp.flags,
            VIP_F_QUIC_LB | VIP_F_SOURCE_RANGES | VIP_F_AFFINITY_CLIENT_IP
        );
        let tcp = p
            .vips
            .iter()
            .find(|v| v.key.proto == Protocol::Tcp)
            .unwrap();
        assert_eq!(tcp.flags, VIP_F_SOURCE_RANGES | VIP_F_AFFINITY_CLIENT_IP);
        assert_eq!(udp.source_ranges, tcp.source_ranges);
    }

    fn diff_strings(old: &str, new: &str) -> Vec<String> {
        let o = plan(old, None);
        let n = plan(new, Some(&o));
        Plan::diff(&o, &n).iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn diff_orders_source_range_changes_safely() {
        let open = policy_vip("198.18.0.1", "");
        let ranged = policy_vip(
            "198.18.0.1",
            "source_ranges = [\"198.18.0.0/24\", \"203.0.113.0/24\"]",
        );
        let changed = policy_vip(
            "198.18.0.1",
            "source_ranges = [\"198.18.0.0/24\", \"198.18.7.0/24\"]",
        );
        // Closing an open VIP: the entries first, then the flag (no allowed client dropped).
        assert_eq!(
            diff_strings(&open, &ranged),
            vec![
                "allow source range 198.18.0.0/24 on VIP 0",
                "allow source range 203.0.113.0/24 on VIP 0",
                "set flags of VIP tcp 198.18.0.1:80 to 0x4",
            ]
        );
        // Opening it again: the flag first, then the entries.
        assert_eq!(
            diff_strings(&ranged, &open),
            vec![
                "set flags of VIP tcp 198.18.0.1:80 to 0x0",
                "remove source range 198.18.0.0/24 of VIP 0",
                "remove source range 203.0.113.0/24 of VIP 0",
            ]
        );
        // Changing the ranges: add the new before removing the old; the flag stays.
        assert_eq!(
            diff_strings(&ranged, &changed),
            vec![
                "allow source range 198.18.7.0/24 on VIP 0",
                "remove source range 203.0.113.0/24 of VIP 0",
            ]
        );
        // Affinity alone flips the flag in place, without rewriting the ring.
        assert_eq!(
            diff_strings(
                &open,
                &open.replace(
                    "\n\nbackends",
                    "\nsession_affinity = \"client_ip\"\nbackends"
                )
            ),
            vec!["set flags of VIP tcp 198.18.0.1:80 to 0x8"]
        );
        // A new VIP with ranges: its entries before its first publish; a removed VIP's
        // entries after it is gone.
        let two = format!(
            "{ranged}[[vips]]\naddress = \"198.18.0.2\"\nports = [80]\nprotocols = [\"tcp\"]\n\
             maglev_table_size = 251\nsource_ranges = [\"198.18.0.0/16\"]\n\
             backends = [{{ address = \"198.19.0.1\", port = 8080 }}]\n"
        );
        assert_eq!(
            diff_strings(&ranged, &two),
            vec![
                "allow source range 198.18.0.0/16 on VIP 1",
                "publish VIP 1 (tcp 198.18.0.2:80): 251-slot ring over 1 backends",
            ]
        );
        assert_eq!(
            diff_strings(&two, &ranged),
            vec![
                "remove VIP tcp 198.18.0.2:80",
                "remove source range 198.18.0.0/16 of VIP 1",
            ]
        );
    }

    #[test]
    fn diff_evicts_flows_of_removed_backends_but_not_drained_ones() {
        let two_vips = |b2: &str, web_extra: &str| {
            format!(
                "interfaces = [\"eth0\"]\n\
                 [[vips]]\naddress = \"198.18.0.1\"\nports = [80]\nprotocols = [\"tcp\"]\n\
                 maglev_table_size = 251\n\
                 backends = [{{ address = \"198.19.0.1\", port = 1 }}{b2}]\n\
                 [[vips]]\naddress = \"198.18.0.2\"\nports = [80]\nprotocols = [\"tcp\"]\n\
                 maglev_table_size = 251\n\
                 backends = [{{ address = \"198.19.0.1\", port = 1 }}{web_extra}]\n"
            )
        };
        let both = two_vips(", { address = \"198.19.0.2\", port = 1 }", "");
        // Backend 1 (198.19.0.2:1) leaves its only VIP: gone, cleared (which evicts) last.
        assert_eq!(
            diff_strings(&both, &two_vips("", "")),
            vec![
                "publish VIP 0 (tcp 198.18.0.1:80): 251-slot ring over 1 backends",
                "clear backend 1",
            ]
        );
        // Drained (weight 0): out of the ring, but its entry and flows stay.
        assert_eq!(
            diff_strings(
                &both,
                &two_vips(", { address = \"198.19.0.2\", port = 1, weight = 0 }", "")
            ),
            vec!["publish VIP 0 (tcp 198.18.0.1:80): 251-slot ring over 1 backends"]
        );
        // Backend 0 leaves VIP 0 but still serves VIP 1: its flows of VIP 0 only.
        let shared = two_vips(", { address = \"198.19.0.2\", port = 1 }", "");
        let moved = shared.replacen("{ address = \"198.19.0.1\", port = 1 }, ", "", 1);
        assert_eq!(
            diff_strings(&shared, &moved),
            vec![
                "publish VIP 0 (tcp 198.18.0.1:80): 251-slot ring over 1 backends",
                "evict flows of VIP tcp 198.18.0.1:80 to backend 0",
            ]
        );
    }

    #[test]
    fn top_level_xdp_mode_applies_to_bare_names_only() {
        let c = Config::parse(
            "xdp_mode = \"generic\"\ninterfaces = [\"eth0\", { name = \"eth1\", xdp_mode = \"native\" }]\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap();
        let modes: Vec<XdpMode> = c.interfaces.iter().map(|i| i.xdp_mode).collect();
        assert_eq!(modes, [XdpMode::Generic, XdpMode::Native]);
        let e = Config::parse(
            "xdp_mode = \"skb\"\ninterfaces = [\"eth0\"]\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("t.toml:1:12: xdp_mode: \"skb\" is not an XDP mode"),
            "{e}"
        );
    }

    #[test]
    fn kubernetes_table_defaults_and_values() {
        let c = Config::parse("interfaces = [\"eth0\"]\n", "t.toml", Path::new(".")).unwrap();
        assert_eq!(c.kubernetes, KubeSettings::default());
        assert_eq!(c.kubernetes.load_balancer_class, "lb.dev/lb");
        let c = Config::parse(
            "interfaces = [\"eth0\"]\n[kubernetes]\nload_balancer_class = \"example.com/lb\"\n\
             default_class = true\nlease_namespace = \"kube-lb\"\nlease_duration_ms = 3000\n\
             lease_renew_ms = 1000\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(
            c.kubernetes,
            KubeSettings {
                load_balancer_class: "example.com/lb".into(),
                default_class: true,
                lease_namespace: Some("kube-lb".into()),
                lease_duration: std::time::Duration::from_millis(3000),
                lease_renew: std::time::Duration::from_millis(1000),
            }
        );
    }

    #[test]
    fn kubernetes_table_errors_name_the_field() {
        let e = Config::parse(
            "interfaces = [\"eth0\"]\n[kubernetes]\nload_balancer_class = \"nope\"\n\
             lease_namespace = \"Bad_NS\"\nlease_duration_ms = 1000\nlease_renew_ms = 800\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("t.toml:3:23: kubernetes.load_balancer_class: \"nope\""),
            "{e}"
        );
        assert!(e.contains("t.toml:4:19: kubernetes.lease_namespace"), "{e}");
        assert!(
            e.contains("kubernetes.lease_renew_ms: 800 ms renews a 1000 ms lease too rarely"),
            "{e}"
        );
        let e = Config::parse(
            "interfaces = [\"eth0\"]\n[kubernetes]\nlease_ttl = 5\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lease_ttl"), "{e}");
    }

    #[test]
    fn reverse_nat_table_defaults_and_values() {
        let c = Config::parse("interfaces = [\"eth0\"]\n", "t.toml", Path::new(".")).unwrap();
        assert_eq!(c.reverse_nat, ReverseNatSettings::default());
        assert_eq!(c.reverse_nat.max_flows, 262_144);
        assert!(c.reverse_nat.mark_remote);
        let c = Config::parse(
            "interfaces = [\"eth0\"]\n[reverse_nat]\nmax_flows = 1000\ntcp_timeout_s = 3600\n\
             udp_timeout_s = 60\nunreplied_timeout_s = 5\nclosing_timeout_s = 2\n\
             mark_remote = false\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap();
        let s = 1_000_000_000;
        assert_eq!(
            c.reverse_nat,
            ReverseNatSettings {
                max_flows: 1000,
                timeouts: lb_common::reply::ReplyTimeouts {
                    tcp_ns: 3600 * s,
                    udp_ns: 60 * s,
                    unreplied_ns: 5 * s,
                    closing_ns: 2 * s,
                },
                mark_remote: false,
            }
        );
    }

    #[test]
    fn reverse_nat_table_errors_name_the_field() {
        let e = Config::parse(
            "interfaces = [\"eth0\"]\n[reverse_nat]\nmax_flows = 0\ntcp_timeout_s = 700000\n\
             closing_timeout_s = -1\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "t.toml:3:13: reverse_nat.max_flows: 0 is out of range; use 1..=16777216 flows"
            ),
            "{e}"
        );
        assert!(
            e.contains("reverse_nat.tcp_timeout_s: 700000 is out of range; use 1..=604800 seconds"),
            "{e}"
        );
        assert!(e.contains("reverse_nat.closing_timeout_s: -1"), "{e}");
        let e = Config::parse(
            "interfaces = [\"eth0\"]\n[reverse_nat]\nmax_entries = 5\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `max_entries`"), "{e}");
    }
}
