//! One `[[vips]]` entry: its address, ports and protocols (each (address, port, protocol)
//! once across the file), `quic`, `learned_cid_len`, `maglev_table_size`,
//! `session_affinity` and `source_ranges`; [`vip`] calls the checks of its QUIC-LB configs
//! and backends and counts what it adds to the data plane's maps, in that order.

use std::{collections::HashMap, net::IpAddr, path::Path};

use lb_common::{MAGLEV_RING_MAX, maglev::is_prime};
use toml::Spanned;

use super::{
    backends::{self, VipRules},
    capacity::MapUsage,
    family, int_in, parse_addr, quic_lb,
};
use crate::{
    capacity::Capacity,
    config::{BackendConfig, Protocol, SessionAffinity, VipConfig, error::Errors, raw::RawVip},
};

/// Which entry defined each (address, port, protocol), and on which line.
type VipKeysSeen = HashMap<(IpAddr, u16, Protocol), (usize, usize)>;

/// Every `[[vips]]` entry; an entry whose address is invalid is reported but left out.
pub(super) fn vips(
    raw: &[Spanned<RawVip>],
    base_dir: &Path,
    capacity: &Capacity,
    errs: &mut Errors,
) -> Vec<VipConfig> {
    let mut keys_seen = VipKeysSeen::new();
    let mut usage = MapUsage::new(capacity);
    let mut vips = Vec::new();
    for (vi, sv) in raw.iter().enumerate() {
        if let Some(v) = vip(vi, sv, base_dir, &mut keys_seen, &mut usage, errs) {
            vips.push(v);
        }
    }
    vips
}

/// `vips[vi]`. Its parts are checked in this order, which is the order of their messages.
fn vip(
    vi: usize,
    sv: &Spanned<RawVip>,
    base_dir: &Path,
    keys_seen: &mut VipKeysSeen,
    usage: &mut MapUsage,
    errs: &mut Errors,
) -> Option<VipConfig> {
    let v = sv.get_ref();
    let vf = format!("vips[{vi}]");
    let addr = parse_addr(v.address.get_ref())
        .map_err(|m| errs.at(v.address.span(), &format!("{vf}.address"), m))
        .ok();
    let ports = ports(v, &vf, errs);
    let protocols = protocols(v, &vf, errs);
    if let Some(addr) = addr {
        let added = claim_vip_keys(vi, sv, addr, &ports, &protocols, keys_seen, errs);
        usage.count_vips(added, sv.span(), &vf, errs);
    }
    let configs = quic_lb::configs(v, &vf, base_dir, errs);
    let quic = quic_routing(v, &vf, &protocols, errs);
    let learned_cid_len = learned_cid_len(v, &vf, quic, &protocols, errs);
    let maglev_table_size = maglev_table_size(v, &vf, errs);
    let session_affinity = session_affinity(v, &vf, errs);
    let source_ranges = source_ranges(v, &vf, addr, errs);
    if let Some(list) = &v.source_ranges {
        let n = (source_ranges.len() * ports.len() * protocols.len()) as u32;
        usage.count_source_ranges(n, list.span(), &format!("{vf}.source_ranges"), errs);
    }
    let rules = VipRules {
        field: &vf,
        addr,
        lists_quic_lb: !v.quic_lb.is_empty(),
        configs: &configs,
        quic,
    };
    let backends = backends::backends(&v.backends, &rules, usage, errs);
    check_ring_fits_backends(v, &vf, maglev_table_size, &backends, errs);
    let weighted = backends.iter().filter(|b| b.weight > 0).count() as u32;
    let ring = crate::config::plan::ring_size(maglev_table_size, weighted);
    let rings = (ports.len() * protocols.len()) as u32;
    usage.count_ring_slots(rings, ring, sv.span(), &vf, errs);
    if quic {
        let udp_ports = if protocols.contains(&Protocol::Udp) {
            ports.len()
        } else {
            0
        };
        let n = (udp_ports * configs.len() * backends.len()) as u32;
        usage.count_server_ids(n, sv.span(), &vf, errs);
        let n = (udp_ports * configs.len()) as u32;
        usage.count_quic_configs(n, sv.span(), &vf, errs);
    }
    let addr = addr?;
    Some(VipConfig {
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
    })
}

/// `ports`: at least one, each in 1..=65535 and listed once.
fn ports(v: &RawVip, vf: &str, errs: &mut Errors) -> Vec<u16> {
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
    ports
}

/// `protocols`: at least one of "tcp" and "udp", each listed once.
fn protocols(v: &RawVip, vf: &str, errs: &mut Errors) -> Vec<Protocol> {
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
    protocols
}

/// Record the entry's (address, port, protocol) keys in `keys_seen`, reporting the ones an
/// earlier entry already defined; returns how many were new.
fn claim_vip_keys(
    vi: usize,
    sv: &Spanned<RawVip>,
    addr: IpAddr,
    ports: &[u16],
    protocols: &[Protocol],
    keys_seen: &mut VipKeysSeen,
    errs: &mut Errors,
) -> u32 {
    let vf = format!("vips[{vi}]");
    let line = errs.line_of(&sv.span());
    let mut added = 0;
    for port in ports {
        for proto in protocols {
            if let Some((other, oline)) = keys_seen.get(&(addr, *port, *proto)) {
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
                keys_seen.insert((addr, *port, *proto), (vi, line));
                added += 1;
            }
        }
    }
    added
}

/// `quic`: explicit, or on when the VIP has QUIC-LB configs and a UDP port. `quic = true`
/// needs both (reported, but kept on).
fn quic_routing(v: &RawVip, vf: &str, protocols: &[Protocol], errs: &mut Errors) -> bool {
    match &v.quic {
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
    }
}

/// `learned_cid_len`: 0 (off) unless given as a CID length, on a VIP without QUIC-LB.
fn learned_cid_len(
    v: &RawVip,
    vf: &str,
    quic: bool,
    protocols: &[Protocol],
    errs: &mut Errors,
) -> u8 {
    let Some(l) = &v.learned_cid_len else {
        return 0;
    };
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

/// `maglev_table_size`: a prime no larger than [`MAGLEV_RING_MAX`]; 0 (sized to the
/// backends) when absent or wrong.
fn maglev_table_size(v: &RawVip, vf: &str, errs: &mut Errors) -> u32 {
    let Some(m) = &v.maglev_table_size else {
        return 0;
    };
    let n = *m.get_ref();
    let field = format!("{vf}.maglev_table_size");
    if n > MAGLEV_RING_MAX as i64 {
        errs.at(
            m.span(),
            &field,
            format!("{n} is larger than the maximum {MAGLEV_RING_MAX}; use a prime no larger (e.g. 65537, 32749, 16381), or leave it out to size the ring to the backends"),
        );
        0
    } else if n < 2 || !is_prime(n as u32) {
        errs.at(
            m.span(),
            &field,
            format!(
                "{n} is not prime; Maglev tables need a prime size (nearby: {})",
                primes_near(n)
            ),
        );
        0
    } else {
        n as u32
    }
}

/// The primes just below and above `n` (within Maglev's range), for the message.
fn primes_near(n: i64) -> String {
    let below = (2..n.min(MAGLEV_RING_MAX as i64 + 1))
        .rev()
        .find(|&p| is_prime(p as u32));
    let above = (n.max(2)..=MAGLEV_RING_MAX as i64).find(|&p| is_prime(p as u32));
    match (below, above) {
        (Some(b), Some(a)) => format!("{b} or {a}"),
        (Some(b), None) => b.to_string(),
        (None, Some(a)) => a.to_string(),
        (None, None) => MAGLEV_RING_MAX.to_string(),
    }
}

/// `session_affinity`: "none" (the default) or "client_ip".
fn session_affinity(v: &RawVip, vf: &str, errs: &mut Errors) -> SessionAffinity {
    let Some(a) = &v.session_affinity else {
        return SessionAffinity::None;
    };
    match a.get_ref().as_str() {
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
    }
}

/// `source_ranges`: CIDR prefixes of the VIP's family (`addr`, when valid), each once.
fn source_ranges(
    v: &RawVip,
    vf: &str,
    addr: Option<IpAddr>,
    errs: &mut Errors,
) -> Vec<ipnet::IpNet> {
    let mut source_ranges: Vec<ipnet::IpNet> = Vec::new();
    let Some(list) = &v.source_ranges else {
        return source_ranges;
    };
    // Range -> the line that listed it first.
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
                        format!(
                            "{net} is listed twice (also on line {line}); list each range once"
                        ),
                    );
                } else {
                    seen.insert(net, errs.line_of(&r.span()));
                    source_ranges.push(net);
                }
            }
        }
    }
    source_ranges
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

/// An explicit `maglev_table_size` needs a slot per backend with weight > 0.
fn check_ring_fits_backends(
    v: &RawVip,
    vf: &str,
    maglev_table_size: u32,
    backends: &[BackendConfig],
    errs: &mut Errors,
) {
    let weighted = backends.iter().filter(|b| b.weight > 0).count();
    // 0: absent or already reported as invalid.
    if let Some(m) = &v.maglev_table_size
        && maglev_table_size != 0
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
}
