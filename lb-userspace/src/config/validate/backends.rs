//! A VIP's `[[vips.backends]]`: address (of the VIP's family), port and weight, each
//! backend once per VIP (and counted once across VIPs against the backend map), and its
//! server IDs: `server_id` (one, used under every QUIC-LB config of the VIP) or
//! `server_ids` (one per config), of each config's length and unique per VIP and config.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    ops::Range,
};

use lb_common::quic_lb;
use toml::Spanned;

use super::{capacity::MapUsage, family, int_in, parse_addr, parse_hex};
use crate::config::{BackendConfig, MAX_WEIGHT, error::Errors, hex, raw::RawBackend};

/// What the backends of one VIP are checked against.
pub(super) struct VipRules<'a> {
    /// `vips[i]`, the start of every field path.
    pub(super) field: &'a str,
    /// The VIP's address when it is valid: backends need its family.
    pub(super) addr: Option<IpAddr>,
    /// The entry lists `[[vips.quic_lb]]` configs (valid or not): a server ID needs one.
    pub(super) lists_quic_lb: bool,
    /// Its valid QUIC-LB configs, the ones server IDs belong to.
    pub(super) configs: &'a [quic_lb::Config],
    /// The VIP routes QUIC by server ID: every backend needs one under every config.
    pub(super) quic: bool,
}

/// Appended to a length mismatch of `server_id` when the VIP has several configs (whose
/// lengths may differ).
const SERVER_IDS_HINT: &str = " (server_id is used under every config; give server_ids = { <config> = \"..\" } when their lengths differ)";

/// One server ID of a backend, with where it was written (for the uniqueness check).
struct ServerIdClaim {
    config_id: u8,
    server_id: Vec<u8>,
    span: Range<usize>,
    field: String,
}

/// Where a server ID was first used in this VIP.
struct ServerIdSeen {
    backend: usize,
    line: usize,
}

/// What the backends of one VIP checked so far have used.
#[derive(Default)]
struct SeenInVip {
    /// (address, port) -> the backend (index, line) that has it.
    backends: HashMap<(IpAddr, u16), (usize, usize)>,
    /// (config rotation value, server ID) -> the backend that has it.
    server_ids: HashMap<(u8, Vec<u8>), ServerIdSeen>,
}

/// The VIP's backends; one whose address or port is invalid is reported but left out.
pub(super) fn backends(
    raw: &[Spanned<RawBackend>],
    vip: &VipRules,
    usage: &mut MapUsage,
    errs: &mut Errors,
) -> Vec<BackendConfig> {
    let mut seen = SeenInVip::default();
    let mut backends = Vec::new();
    for (bi, sb) in raw.iter().enumerate() {
        if let Some(b) = backend(bi, sb, vip, &mut seen, usage, errs) {
            backends.push(b);
        }
    }
    backends
}

/// `backends[bi]` of the VIP, checked in this order (the order of its messages).
fn backend(
    bi: usize,
    sb: &Spanned<RawBackend>,
    vip: &VipRules,
    seen: &mut SeenInVip,
    usage: &mut MapUsage,
    errs: &mut Errors,
) -> Option<BackendConfig> {
    let b = sb.get_ref();
    let vf = vip.field;
    let bf = format!("{vf}.backends[{bi}]");
    let addr = address(b, &bf, vip.addr, errs);
    let port = port(b, &bf, errs);
    let weight = weight(b, &bf, errs);
    if let (Some(a), Some(p)) = (addr, port) {
        if let Some((other, line)) = seen.backends.get(&(a, p)) {
            errs.at(
                sb.span(),
                &bf,
                format!(
                    "backend {} is already {vf}.backends[{other}] (line {line}); list each backend once per VIP",
                    SocketAddr::new(a, p)
                ),
            );
        } else {
            seen.backends.insert((a, p), (bi, errs.line_of(&sb.span())));
            usage.count_backend(a, p, sb.span(), &bf, errs);
        }
    }
    let sids = server_ids(sb, &bf, vip, errs);
    claim_server_ids(&sids, bi, vf, seen, errs);
    let (Some(addr), Some(port)) = (addr, port) else {
        return None;
    };
    Some(BackendConfig {
        addr,
        port,
        weight,
        server_ids: sids
            .into_iter()
            .map(|s| (s.config_id, s.server_id))
            .collect(),
    })
}

/// `address`: unicast, of the VIP's family (a family mismatch is reported but the address
/// kept).
fn address(
    b: &RawBackend,
    bf: &str,
    vip_addr: Option<IpAddr>,
    errs: &mut Errors,
) -> Option<IpAddr> {
    match parse_addr(b.address.get_ref()) {
        Ok(a) => {
            if let Some(va) = vip_addr
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
    }
}

/// `port`: 1..=65535.
fn port(b: &RawBackend, bf: &str, errs: &mut Errors) -> Option<u16> {
    match int_in(*b.port.get_ref(), 1, 65535) {
        Some(p) => Some(p as u16),
        None => {
            errs.at(
                b.port.span(),
                &format!("{bf}.port"),
                format!("port {} is out of range: use 1..=65535", b.port.get_ref()),
            );
            None
        }
    }
}

/// `weight`: 0..=[`MAX_WEIGHT`], default 1 (also when invalid).
fn weight(b: &RawBackend, bf: &str, errs: &mut Errors) -> u32 {
    let Some(w) = &b.weight else {
        return 1;
    };
    match int_in(*w.get_ref(), 0, MAX_WEIGHT as i64) {
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
    }
}

/// The backend's valid server IDs, from `server_id` or `server_ids` (not both); none is
/// an error when the VIP routes QUIC by server ID.
fn server_ids(
    sb: &Spanned<RawBackend>,
    bf: &str,
    vip: &VipRules,
    errs: &mut Errors,
) -> Vec<ServerIdClaim> {
    let b = sb.get_ref();
    match (&b.server_id, &b.server_ids) {
        (Some(_), Some(many)) => {
            errs.at(
                many.span(),
                &format!("{bf}.server_ids"),
                "both server_id and server_ids are given; give server_id (used under every \
                 config) or server_ids (one per config)",
            );
            Vec::new()
        }
        (Some(one), None) => server_id_for_every_config(one, bf, vip, errs),
        (None, Some(many)) => server_id_per_config(many, bf, vip, errs),
        (None, None) => {
            if vip.quic && !vip.configs.is_empty() {
                let lens: BTreeSet<u8> = vip.configs.iter().map(|c| c.server_id_len()).collect();
                let lens: Vec<String> = lens.iter().map(|l| l.to_string()).collect();
                errs.at(
                    sb.span(),
                    bf,
                    format!(
                        "no server_id: this VIP routes QUIC by server ID (quic = true), so every \
                         backend needs one (server IDs of this VIP are {} octets)",
                        lens.join(" or ")
                    ),
                );
            }
            Vec::new()
        }
    }
}

/// `server_id`: one server ID, used under every config of the VIP, so it needs the length
/// of each.
fn server_id_for_every_config(
    one: &Spanned<String>,
    bf: &str,
    vip: &VipRules,
    errs: &mut Errors,
) -> Vec<ServerIdClaim> {
    let field = format!("{bf}.server_id");
    let sid = match parse_hex(one.get_ref()) {
        Ok(sid) => sid,
        Err(m) => {
            errs.at(one.span(), &field, m);
            return Vec::new();
        }
    };
    if !vip.lists_quic_lb {
        errs.at(
            one.span(),
            &field,
            "this VIP has no [[vips.quic_lb]] config for the server ID to \
             belong to; add one or remove server_id",
        );
    }
    let mut claims = Vec::new();
    for cfg in vip.configs {
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
                    if vip.configs.len() > 1 {
                        SERVER_IDS_HINT
                    } else {
                        ""
                    }
                ),
            );
        } else {
            claims.push(ServerIdClaim {
                config_id: cfg.config_id(),
                server_id: sid.clone(),
                span: one.span(),
                field: field.clone(),
            });
        }
    }
    claims
}

/// `server_ids`: a table from config rotation value to server ID; each key must name a
/// config of the VIP, and with `quic` every config needs an entry.
fn server_id_per_config(
    many: &Spanned<BTreeMap<Spanned<String>, Spanned<String>>>,
    bf: &str,
    vip: &VipRules,
    errs: &mut Errors,
) -> Vec<ServerIdClaim> {
    let field = format!("{bf}.server_ids");
    let mut claims = Vec::new();
    for (k, val) in many.get_ref() {
        let kfield = format!("{field}.{}", k.get_ref());
        let cfg = k
            .get_ref()
            .parse::<u8>()
            .ok()
            .and_then(|id| vip.configs.iter().find(|c| c.config_id() == id));
        let Some(cfg) = cfg else {
            let have: Vec<String> = vip
                .configs
                .iter()
                .map(|c| c.config_id().to_string())
                .collect();
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
            Ok(sid) => claims.push(ServerIdClaim {
                config_id: cfg.config_id(),
                server_id: sid,
                span: val.span(),
                field: kfield,
            }),
        }
    }
    if vip.quic {
        check_every_config_has_a_server_id(many, &field, vip.configs, errs);
    }
    claims
}

/// With `quic`, `server_ids` needs a key for every config of the VIP.
fn check_every_config_has_a_server_id(
    many: &Spanned<BTreeMap<Spanned<String>, Spanned<String>>>,
    field: &str,
    configs: &[quic_lb::Config],
    errs: &mut Errors,
) {
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
            field,
            format!(
                "no server ID for QUIC-LB config(s) [{}]; a VIP with quic = true \
                 needs one per backend under every config",
                missing.join(", ")
            ),
        );
    }
}

/// Server IDs are unique per VIP and config: record backend `bi`'s in `seen`, reporting
/// the ones an earlier backend of the VIP (`vf`) has.
fn claim_server_ids(
    sids: &[ServerIdClaim],
    bi: usize,
    vf: &str,
    seen: &mut SeenInVip,
    errs: &mut Errors,
) {
    for s in sids {
        let key = (s.config_id, s.server_id.clone());
        if let Some(first) = seen.server_ids.get(&key) {
            errs.at(
                s.span.clone(),
                &s.field,
                format!(
                    "server ID {} under QUIC-LB config {} is already {vf}.backends[{}]'s \
                     (line {}); server IDs are unique per VIP and config",
                    hex(&s.server_id),
                    s.config_id,
                    first.backend,
                    first.line
                ),
            );
        } else {
            seen.server_ids.insert(
                key,
                ServerIdSeen {
                    backend: bi,
                    line: errs.line_of(&s.span),
                },
            );
        }
    }
}
