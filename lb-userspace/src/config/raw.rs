//! The config file as written: what TOML deserializes into before any value is checked.
//! Every value keeps its [`Spanned`] byte range so a problem can be reported at its
//! `line:column`; unknown fields are rejected here (structurally), everything else in
//! `validate`.

use std::{collections::BTreeMap, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor},
};
use toml::Spanned;

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) interfaces: Option<Spanned<Vec<Spanned<RawInterface>>>>,
    /// The XDP mode of interfaces listed by bare name (default "native").
    #[serde(default)]
    pub(super) xdp_mode: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) backend_interfaces: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) metrics_addr: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) vips: Vec<Spanned<RawVip>>,
    #[serde(default)]
    pub(super) kubernetes: Option<Spanned<RawKubernetes>>,
    #[serde(default)]
    pub(super) reverse_nat: Option<Spanned<RawReverseNat>>,
    #[serde(default)]
    pub(super) capacity: Option<Spanned<std::collections::BTreeMap<String, Spanned<i64>>>>,
    #[serde(default)]
    pub(super) bgp: Option<Spanned<RawBgp>>,
}

/// `[bgp]`: the speaker and its sessions.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    #[serde(default)]
    pub(super) asn: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) router_id: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) run_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) bird: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) spawn: Option<bool>,
    #[serde(default)]
    pub(super) withdraw_timeout_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) peers: Vec<Spanned<RawBgpPeer>>,
}

/// One `[[bgp.peers]]` session.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgpPeer {
    #[serde(default)]
    pub(super) name: Option<Spanned<String>>,
    pub(super) address: Spanned<String>,
    pub(super) asn: Spanned<i64>,
    #[serde(default)]
    pub(super) port: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) hold_time_s: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) keepalive_s: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) password_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) source_address: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) multihop: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) graceful_restart: Option<bool>,
    #[serde(default)]
    pub(super) bfd: Option<Spanned<RawBfd>>,
}

/// `bfd = true` (the default timers) or `bfd = { receive_interval_ms = 100, ... }`.
pub(super) enum RawBfd {
    On(bool),
    Table(RawBfdTable),
}

/// The table form of `bfd`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBfdTable {
    #[serde(default)]
    pub(super) receive_interval_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) transmit_interval_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) detect_multiplier: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) passive: Option<bool>,
}

impl<'de> Deserialize<'de> for RawBfd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawBfd;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "true, false, or a table { receive_interval_ms = 300, \
                     transmit_interval_ms = 300, detect_multiplier = 3, passive = false }",
                )
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawBfd, E> {
                Ok(RawBfd::On(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawBfd, A::Error> {
                RawBfdTable::deserialize(de::value::MapAccessDeserializer::new(m))
                    .map(RawBfd::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// `[reverse_nat]`: the reply table and the steering mark.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReverseNat {
    #[serde(default)]
    pub(super) max_flows: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) tcp_timeout_s: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) udp_timeout_s: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) unreplied_timeout_s: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) closing_timeout_s: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) mark_remote: Option<bool>,
}

/// `[kubernetes]`: settings of `lb run --kube`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    #[serde(default)]
    pub(super) load_balancer_class: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) default_class: Option<bool>,
    #[serde(default)]
    pub(super) lease_namespace: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) lease_duration_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) lease_renew_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) gossip_port: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) gossip_key_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) gossip_probe_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) gossip_suspect_ms: Option<Spanned<i64>>,
}

/// `"eth0"` or `{ name = "eth0", xdp_mode = "generic" }`.
pub(super) enum RawInterface {
    Name(String),
    Table(RawInterfaceTable),
}

/// The table form of an `interfaces` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInterfaceTable {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) xdp_mode: Option<Spanned<String>>,
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

/// One `[[vips]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    #[serde(default)]
    pub(super) name: Option<Spanned<String>>,
    pub(super) address: Spanned<String>,
    pub(super) ports: Spanned<Vec<Spanned<i64>>>,
    pub(super) protocols: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) quic: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) maglev_table_size: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) learned_cid_len: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) session_affinity: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) source_ranges: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) quic_lb: Vec<Spanned<RawQuicLb>>,
    #[serde(default)]
    pub(super) backends: Vec<Spanned<RawBackend>>,
    #[serde(default)]
    pub(super) announce: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) bgp_communities: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) bgp_local_pref: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) bgp_peers: Option<Spanned<Vec<Spanned<String>>>>,
}

/// One `[[vips.quic_lb]]` config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuicLb {
    pub(super) config_id: Spanned<i64>,
    pub(super) server_id_len: Spanned<i64>,
    pub(super) nonce_len: Spanned<i64>,
    #[serde(default)]
    pub(super) key: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) key_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) encode_length: Option<Spanned<bool>>,
}

/// One `[[vips.backends]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: Spanned<String>,
    pub(super) port: Spanned<i64>,
    #[serde(default)]
    pub(super) weight: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) server_id: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) server_ids: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
}
