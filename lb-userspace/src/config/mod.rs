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
//! 3. [`apply`](fn@apply) performs them in order on a [`Dataplane`](crate::dataplane::Dataplane).
//!
//! Where each part lives:
//! - `mod.rs` (here): the validated types ([`Config`], [`VipConfig`], [`BackendConfig`],
//!   ...) and [`Config::load`] / [`Config::parse`];
//! - `raw.rs`: the file as written, the serde types TOML is read into (values with spans);
//! - `error.rs`: [`ConfigError`] and [`ConfigErrors`], and the collector that turns spans
//!   into `line:column`;
//! - `validate/`: from the raw file to a [`Config`], one concern per file (interfaces,
//!   VIP entries, QUIC-LB configs, backends and server IDs, map capacity, `[kubernetes]`,
//!   `[reverse_nat]`);
//! - `plan.rs`: [`Plan`] and [`Plan::build`], which assigns VIP indexes and backend ids;
//! - `diff.rs`: [`Change`] and [`Plan::diff`], the ordered writes from one plan to the next;
//! - `apply.rs`: [`apply`](fn@apply) and [`ApplyError`], the writes on the data plane.
//!
//! `deploy/examples/lb.toml` is a documented example of the format; the fields are:
//!
//! ```toml
//! interfaces = ["eth0", { name = "eth1", xdp_mode = "generic" }]  # required, >= 1
//! backend_interfaces = ["eth2"]   # optional: reverse NAT (TC) on the interfaces facing backends
//! # Entries of both are names, globs ("veth*") or "auto", resolved on the node (crate::ifaces).
//! metrics_addr = "127.0.0.1:7472"  # optional (static mode: off without it; --kube: 0.0.0.0:7472)
//!
//! [capacity]                      # optional; these are the defaults (start-up only)
//! vips = 32768                    # data-plane VIPs (address, port, protocol)
//! backends = 65536                # distinct backends (address, port)
//! conn_table_size = 1048576       # flows in the connection table (an LRU)
//! learned_cids = 262144           # learned connection IDs (an LRU)
//! server_ids = 65536              # QUIC-LB server-ID entries (UDP ports x configs x backends)
//! quic_configs = 16384            # QUIC-LB configs (VIPs x config rotation values in use)
//! maglev_slots = 16777216         # shared pool of Maglev ring slots (4 octets each)
//!
//! [reverse_nat]                   # optional; these are the defaults
//! max_flows = 262144              # reply-table capacity, 1..=16777216 (start-up only)
//! tcp_timeout_s = 21600           # idle timeouts from the last reply, in seconds
//! udp_timeout_s = 120
//! unreplied_timeout_s = 30
//! closing_timeout_s = 10          # after a TCP FIN or RST
//! mark_remote = true              # steering mark on packets to backends behind other nodes
//!
//! [bgp]                           # optional: lb drives BIRD (crate::bgp, docs/bgp.md)
//! asn = 64512                     # required with peers
//! router_id = "198.18.1.2"        # optional; run_dir, bird, spawn, withdraw_timeout_ms too
//!
//! [[bgp.peers]]
//! name = "tor-a"                  # optional, default the address
//! address = "198.18.1.1"
//! asn = 64500
//! hold_time_s = 9                 # optional: port, keepalive_s, password_file,
//! bfd = true                      # source_address, multihop, graceful_restart; bfd table
//!
//! [[vips]]
//! name = "web"                    # optional label
//! address = "198.18.0.100"        # IPv4 or IPv6
//! ports = [443]                   # 1..=65535, at least one
//! protocols = ["tcp", "udp"]      # each (address, port, protocol) is one data-plane VIP
//! quic = true                     # default: true when the VIP has [[vips.quic_lb]] configs
//! maglev_table_size = 641         # optional prime <= 131071; default: sized to the backends
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
//! announce = "l2"                 # or "bgp" or "both" (see crate::bgp and docs/bgp.md)
//! bgp_communities = ["64512:100"] # bgp/both only: communities, LOCAL_PREF, peer names
//! bgp_local_pref = 150
//! bgp_peers = ["tor-a"]
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
//! - **Capacity.** At most `[capacity] vips` (address, port, protocol) VIPs, `backends`
//!   distinct backend (address, port) pairs (a backend shared by several VIPs counts once),
//!   `server_ids` server-ID entries, `quic_configs` QUIC-LB configs (configs x UDP ports),
//!   Maglev rings whose slots fit in `maglev_slots` with room to replace the largest, and
//!   [`lb_common::MAX_SOURCE_RANGES`] source ranges (ranges x ports x protocols). A config
//!   past any of them is rejected whole, naming the entry that crossed the limit.
//! - **Maglev rings** are sized to their backends by default: the smallest prime with 128
//!   slots per backend of weight > 0, at least 257 and at most 131071
//!   ([`lb_common::maglev::ring_size_for`]); `maglev_table_size` fixes one.

mod apply;
mod diff;
mod error;
mod live;
mod plan;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use lb_common::{PROTO_TCP, PROTO_UDP, quic_lb};

pub use self::{
    apply::{ApplyError, apply},
    diff::Change,
    error::{ConfigError, ConfigErrors},
    live::restart_needed,
    plan::{BackendEntry, Plan, PlannedBackend, PlannedServerId, PlannedVip, VipId, VipUpdate},
};
use self::{
    error::{Errors, Source},
    raw::RawConfig,
};

/// Largest backend weight (a relative share; larger values only slow table builds down).
pub const MAX_WEIGHT: u32 = 65535;

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
    /// The Maglev ring's size as given; 0 (absent): sized to the backends
    /// ([`lb_common::maglev::ring_size_for`]).
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

/// The port of `/metrics`, `/status`, `/healthz` and `/readyz` in every shipped config, and
/// the default in Kubernetes mode (`0.0.0.0:7472` when `metrics_addr` is not set): MetalLB's
/// port, so it stays clear of node-exporter (9100) on hostNetwork, and an operator coming
/// from MetalLB finds it where the speaker's was (the two are not run together).
pub const DEFAULT_METRICS_PORT: u16 = 7472;

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
    /// The `[capacity]` table: the data plane's map sizes, with defaults filled in.
    pub capacity: crate::capacity::Capacity,
    /// The `[bgp]` table (the speaker and its peers), with defaults filled in.
    pub bgp: BgpSettings,
    /// How each VIP address is announced (`announce` and the `bgp_*` keys of its
    /// `[[vips]]` entries); an address not here is announced by ARP/NDP only.
    pub announce: std::collections::BTreeMap<IpAddr, Announce>,
}

/// How one VIP address is made reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// ARP/NDP on the external interfaces (the default).
    pub l2: bool,
    /// Originated over BGP to the peers, with these attributes.
    pub bgp: Option<VipBgp>,
}

impl Default for Announce {
    fn default() -> Self {
        Announce {
            l2: true,
            bgp: None,
        }
    }
}

/// The BGP attributes of a VIP address (`bgp_communities`, `bgp_local_pref`, `bgp_peers`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VipBgp {
    pub communities: Vec<crate::bgp::Community>,
    pub local_pref: Option<u32>,
    /// Peer names; empty: every peer of the address's family.
    pub peers: Vec<String>,
}

/// The `[bgp]` table: lb's speaker (BIRD) and the sessions it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpSettings {
    /// This node's AS; required with `[[bgp.peers]]`.
    pub asn: Option<u32>,
    pub router_id: Option<std::net::Ipv4Addr>,
    pub speaker: crate::bgp::speaker::SpeakerOptions,
    /// On SIGTERM, how long lb waits for the withdrawals to be sent before the data plane
    /// goes.
    pub withdraw_timeout: std::time::Duration,
    pub peers: Vec<crate::bgp::Peer>,
}

impl Default for BgpSettings {
    fn default() -> Self {
        BgpSettings {
            asn: None,
            router_id: None,
            speaker: crate::bgp::speaker::SpeakerOptions::default(),
            withdraw_timeout: std::time::Duration::from_secs(3),
            peers: Vec::new(),
        }
    }
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
    /// A node whose Lease was not renewed for this long is no member any more, whatever
    /// gossip says: its VIPs move (kubelet's node Lease: 40 s).
    pub lease_duration: std::time::Duration,
    /// How often each node renews its own Lease (kubelet: 10 s). Fast failure detection is
    /// gossip's job (`gossip_*`), so this only bounds how long a member lasts without it.
    pub lease_renew: std::time::Duration,
    /// UDP port of the node-to-node SWIM gossip, on each node's InternalIP (memberlist's,
    /// as MetalLB's speakers use: 7946).
    pub gossip_port: u16,
    /// A file holding the cluster's gossip key (a mounted Secret): every datagram carries
    /// an HMAC-SHA256 of it and others are dropped. `None`: datagrams are only scoped to
    /// the cluster's Node addresses.
    pub gossip_key_file: Option<std::path::PathBuf>,
    /// How often each node probes one member (SWIM's protocol period).
    pub gossip_probe: std::time::Duration,
    /// How long a suspected member has to refute the suspicion before it is declared down.
    pub gossip_suspect: std::time::Duration,
}

/// The default `[kubernetes] gossip_port` (memberlist's).
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;

/// The `loadBalancerClass` lb claims unless configured otherwise.
pub const DEFAULT_LOAD_BALANCER_CLASS: &str = "lb.dev/lb";

impl Default for KubeSettings {
    fn default() -> Self {
        KubeSettings {
            load_balancer_class: DEFAULT_LOAD_BALANCER_CLASS.to_owned(),
            default_class: false,
            lease_namespace: None,
            lease_duration: std::time::Duration::from_secs(40),
            lease_renew: std::time::Duration::from_secs(10),
            gossip_port: DEFAULT_GOSSIP_PORT,
            gossip_key_file: None,
            gossip_probe: std::time::Duration::from_millis(150),
            gossip_suspect: std::time::Duration::from_millis(300),
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
        let src = Source::new(file, text);
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
        let cfg = validate::validate(raw, base_dir, &mut errs);
        if errs.list.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errs.list))
        }
    }
}

impl Config {
    /// How `addr` is announced.
    pub fn announce_of(&self, addr: IpAddr) -> Announce {
        self.announce.get(&addr).cloned().unwrap_or_default()
    }

    /// What the static config asks of the BGP speaker: its peers and every VIP address
    /// announced over BGP as a /32 or /128. `None`: no peers and no such VIP (no speaker).
    pub fn bgp_desired(&self) -> Option<crate::bgp::Desired> {
        let adverts: Vec<crate::bgp::Advertisement> = self
            .announce
            .iter()
            .filter_map(|(addr, a)| {
                let b = a.bgp.as_ref()?;
                Some(crate::bgp::Advertisement {
                    prefix: ipnet::IpNet::from(*addr),
                    peers: b.peers.clone(),
                    communities: b.communities.clone(),
                    local_pref: b.local_pref,
                })
            })
            .collect();
        if self.bgp.peers.is_empty() && adverts.is_empty() {
            return None;
        }
        Some(crate::bgp::Desired {
            router_id: self.bgp.router_id,
            peers: self.bgp.peers.clone(),
            adverts,
        })
    }

    /// The VIP addresses announced by ARP/NDP.
    pub fn l2_addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .vips
            .iter()
            .map(|v| v.addr)
            .filter(|a| self.announce_of(*a).l2)
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// serde_path_to_error sees `Spanned`'s private wrapper field; users should not.
fn clean_path(p: &str) -> String {
    let p = p.replace(".$__serde_spanned_private_value", "");
    let p = p.replace("$__serde_spanned_private_value", "");
    if p == "." { String::new() } else { p }
}

/// `b` as lower-case hex digits, two per octet (server IDs in messages).
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
