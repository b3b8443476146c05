//! `[bgp]` (the speaker and its `[[bgp.peers]]`) and, per `[[vips]]` entry, `announce`,
//! `bgp_communities`, `bgp_local_pref` and `bgp_peers`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use toml::Spanned;

use super::{family, int_in, parse_addr};
use crate::{
    bgp::{self, Bfd, Community, Password, Peer},
    config::{
        Announce, BgpSettings, VipBgp,
        error::Errors,
        raw::{RawBfd, RawBgp, RawBgpPeer, RawVip},
    },
};

/// The `[bgp]` table with defaults filled in; invalid values are reported and left out.
pub(super) fn validate_bgp(
    raw: Option<&Spanned<RawBgp>>,
    base_dir: &Path,
    errs: &mut Errors,
) -> BgpSettings {
    let mut b = BgpSettings::default();
    let Some(sraw) = raw else {
        return b;
    };
    let raw = sraw.get_ref();
    if let Some(a) = &raw.asn {
        b.asn = asn(a, "bgp.asn", errs);
    } else if !raw.peers.is_empty() {
        errs.at(
            sraw.span(),
            "bgp.asn",
            "missing: [[bgp.peers]] need this node's AS number, e.g. asn = 64512",
        );
    }
    if let Some(r) = &raw.router_id {
        match r.get_ref().parse::<Ipv4Addr>() {
            Ok(id) if !id.is_unspecified() => b.router_id = Some(id),
            _ => errs.at(
                r.span(),
                "bgp.router_id",
                format!(
                    "{:?} is not a BGP router ID: use an IPv4 address of this node, e.g. \"198.18.1.2\" (IPv6-only nodes too: any unique IPv4 address)",
                    r.get_ref()
                ),
            ),
        }
    }
    if let Some(d) = &raw.run_dir
        && let Some(p) = non_empty(d, "bgp.run_dir", errs)
    {
        b.speaker.run_dir = base_dir.join(p);
    }
    if let Some(d) = &raw.bird
        && let Some(p) = non_empty(d, "bgp.bird", errs)
    {
        b.speaker.bird = PathBuf::from(p);
    }
    if let Some(s) = raw.spawn {
        b.speaker.spawn = s;
    }
    if let Some(t) = &raw.withdraw_timeout_ms {
        match int_in(*t.get_ref(), 0, 60_000) {
            Some(ms) => b.withdraw_timeout = Duration::from_millis(ms as u64),
            None => errs.at(
                t.span(),
                "bgp.withdraw_timeout_ms",
                format!(
                    "{} is out of range; use 0..=60000 milliseconds",
                    t.get_ref()
                ),
            ),
        }
    }
    let local_asn = b.asn.unwrap_or(0);
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut addresses: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for (i, p) in raw.peers.iter().enumerate() {
        let Some(peer) = peer(i, p, local_asn, base_dir, errs) else {
            continue;
        };
        let f = format!("bgp.peers[{i}]");
        if let Some(j) = names.insert(peer.name.clone(), i) {
            errs.at(
                p.span(),
                &format!("{f}.name"),
                format!(
                    "{:?} is already the name of bgp.peers[{j}]; give each peer its own name",
                    peer.name
                ),
            );
            continue;
        }
        if let Some(j) = addresses.insert(peer.address, i) {
            errs.at(
                p.get_ref().address.span(),
                &format!("{f}.address"),
                format!(
                    "{} is already bgp.peers[{j}]; one session per peer address",
                    peer.address
                ),
            );
            continue;
        }
        b.peers.push(peer);
    }
    b
}

/// `bgp.peers[i]`, when every value is valid.
fn peer(
    i: usize,
    sp: &Spanned<RawBgpPeer>,
    local_asn: u32,
    base_dir: &Path,
    errs: &mut Errors,
) -> Option<Peer> {
    let p = sp.get_ref();
    let f = format!("bgp.peers[{i}]");
    let before = errs.list.len();
    let address = parse_addr(p.address.get_ref())
        .map_err(|m| errs.at(p.address.span(), &format!("{f}.address"), m))
        .ok();
    let peer_asn = asn(&p.asn, &format!("{f}.asn"), errs);
    let port = match &p.port {
        None => bgp::DEFAULT_PORT,
        Some(v) => int_in(*v.get_ref(), 1, 65535)
            .map(|n| n as u16)
            .unwrap_or_else(|| {
                errs.at(
                    v.span(),
                    &format!("{f}.port"),
                    format!(
                        "{} is not a TCP port; use 1..=65535 (BGP: 179)",
                        v.get_ref()
                    ),
                );
                0
            }),
    };
    let hold = match &p.hold_time_s {
        None => bgp::DEFAULT_HOLD_TIME_S,
        Some(v) => match *v.get_ref() {
            0 => 0,
            n @ 3..=65535 => n as u16,
            n => {
                errs.at(
                    v.span(),
                    &format!("{f}.hold_time_s"),
                    format!(
                        "{n} is not a BGP hold time; use 0 (no keepalives) or 3..=65535 seconds"
                    ),
                );
                0
            }
        },
    };
    let keepalive = match &p.keepalive_s {
        None if p.hold_time_s.is_none() => bgp::DEFAULT_KEEPALIVE_S,
        None => hold / 3,
        Some(v) => match int_in(*v.get_ref(), 1, 65535) {
            Some(n) if hold == 0 || (n as u16) < hold => n as u16,
            _ => {
                errs.at(
                    v.span(),
                    &format!("{f}.keepalive_s"),
                    format!(
                        "{} is not a keepalive interval for hold_time_s = {hold}; use 1 second up to less than the hold time (usually a third of it)",
                        v.get_ref()
                    ),
                );
                0
            }
        },
    };
    let password = p.password_file.as_ref().and_then(|pf| {
        let path = base_dir.join(pf.get_ref());
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let pw = text.trim_end_matches(['\n', '\r']).to_owned();
                if pw.is_empty() || pw.contains(['"', '\n', '\r']) || pw.len() > 80 {
                    errs.at(
                        pf.span(),
                        &format!("{f}.password_file"),
                        format!(
                            "{} must hold one line of 1..=80 characters without a double quote (TCP MD5 passwords; BIRD cannot quote '\"')",
                            path.display()
                        ),
                    );
                    None
                } else {
                    Some(Password(pw))
                }
            }
            Err(e) => {
                errs.at(
                    pf.span(),
                    &format!("{f}.password_file"),
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    });
    let source_address = p.source_address.as_ref().and_then(|s| {
        let a = parse_addr(s.get_ref())
            .map_err(|m| errs.at(s.span(), &format!("{f}.source_address"), m))
            .ok()?;
        match address {
            Some(peer) if peer.is_ipv4() != a.is_ipv4() => {
                errs.at(
                    s.span(),
                    &format!("{f}.source_address"),
                    format!(
                        "{a} is {} but the peer {peer} is {}; use an address of the peer's family",
                        family(&a),
                        family(&peer)
                    ),
                );
                None
            }
            _ => Some(a),
        }
    });
    let multihop = p.multihop.as_ref().and_then(|m| {
        int_in(*m.get_ref(), 1, 255).map(|n| n as u8).or_else(|| {
            errs.at(
                m.span(),
                &format!("{f}.multihop"),
                format!("{} is not a TTL; use 1..=255 hops", m.get_ref()),
            );
            None
        })
    });
    let bfd = p.bfd.as_ref().and_then(|b| bfd(b, &f, errs));
    let name = match &p.name {
        Some(n) if n.get_ref().is_empty() || n.get_ref().contains(['"', '\n']) => {
            errs.at(
                n.span(),
                &format!("{f}.name"),
                "must be non-empty and without double quotes or line breaks",
            );
            String::new()
        }
        Some(n) => n.get_ref().clone(),
        None => p.address.get_ref().clone(),
    };
    if errs.list.len() > before {
        return None;
    }
    Some(Peer {
        name,
        address: address?,
        local_asn,
        peer_asn: peer_asn?,
        port,
        hold_time_s: hold,
        keepalive_s: keepalive,
        password,
        source_address,
        multihop,
        graceful_restart: p.graceful_restart.unwrap_or(false),
        bfd,
    })
}

/// `bfd`: `true` for the defaults, `false` for none, or a table of timers.
fn bfd(b: &Spanned<RawBfd>, f: &str, errs: &mut Errors) -> Option<Bfd> {
    let t = match b.get_ref() {
        RawBfd::On(on) => return on.then(Bfd::default),
        RawBfd::Table(t) => t,
    };
    let mut out = Bfd::default();
    let ms = |v: &Option<Spanned<i64>>, key: &str, errs: &mut Errors| -> Option<u32> {
        let v = v.as_ref()?;
        int_in(*v.get_ref(), 10, 60_000)
            .map(|n| n as u32)
            .or_else(|| {
                errs.at(
                    v.span(),
                    &format!("{f}.bfd.{key}"),
                    format!(
                        "{} is out of range; use 10..=60000 milliseconds",
                        v.get_ref()
                    ),
                );
                None
            })
    };
    if let Some(v) = ms(&t.receive_interval_ms, "receive_interval_ms", errs) {
        out.receive_interval_ms = v;
    }
    if let Some(v) = ms(&t.transmit_interval_ms, "transmit_interval_ms", errs) {
        out.transmit_interval_ms = v;
    }
    if let Some(m) = &t.detect_multiplier {
        match int_in(*m.get_ref(), 1, 255) {
            Some(n) => out.detect_multiplier = n as u8,
            None => errs.at(
                m.span(),
                &format!("{f}.bfd.detect_multiplier"),
                format!("{} is out of range; use 1..=255", m.get_ref()),
            ),
        }
    }
    if let Some(p) = t.passive {
        out.passive = p;
    }
    Some(out)
}

/// An AS number: 1..=4294967295 (4-octet ASNs; 0 is reserved).
fn asn(a: &Spanned<i64>, field: &str, errs: &mut Errors) -> Option<u32> {
    int_in(*a.get_ref(), 1, u32::MAX as i64)
        .map(|n| n as u32)
        .or_else(|| {
            errs.at(
                a.span(),
                field,
                format!(
                    "{} is not an AS number; use 1..=4294967295 (private: 64512..=65534, 4200000000..=4294967294)",
                    a.get_ref()
                ),
            );
            None
        })
}

fn non_empty<'a>(s: &'a Spanned<String>, field: &str, errs: &mut Errors) -> Option<&'a str> {
    if s.get_ref().is_empty() {
        errs.at(
            s.span(),
            field,
            "is empty: give a path, or leave the key out for the default",
        );
        None
    } else {
        Some(s.get_ref())
    }
}

/// How each VIP address is announced, from the `announce` and `bgp_*` keys of its entries.
/// `has_bgp_table`: the file has a `[bgp]` table.
pub(super) fn announcements(
    vips: &[Spanned<RawVip>],
    has_bgp_table: bool,
    bgp: &BgpSettings,
    errs: &mut Errors,
) -> BTreeMap<IpAddr, Announce> {
    let mut out: BTreeMap<IpAddr, (usize, Announce)> = BTreeMap::new();
    for (vi, sv) in vips.iter().enumerate() {
        let v = sv.get_ref();
        let vf = format!("vips[{vi}]");
        let Ok(addr) = parse_addr(v.address.get_ref()) else {
            continue; // reported with the entry
        };
        let Some(a) = announce(v, &vf, addr, has_bgp_table, bgp, errs) else {
            continue;
        };
        match out.get(&addr) {
            Some((j, other)) if *other != a => {
                let span = v.announce.as_ref().map_or(sv.span(), |s| s.span());
                errs.at(
                    span,
                    &format!("{vf}.announce"),
                    format!(
                        "{addr} is also vips[{j}], announced differently ({}); every entry of one address must have the same announce and bgp_* keys",
                        describe(other)
                    ),
                );
            }
            Some(_) => {}
            None => {
                out.insert(addr, (vi, a));
            }
        }
    }
    out.into_iter()
        .filter(|(_, (_, a))| *a != Announce::default())
        .map(|(addr, (_, a))| (addr, a))
        .collect()
}

fn describe(a: &Announce) -> String {
    let how = match (a.l2, a.bgp.is_some()) {
        (true, true) => "both",
        (false, true) => "bgp",
        _ => "l2",
    };
    match &a.bgp {
        Some(b) => format!(
            "announce = \"{how}\", communities {:?}, local_pref {:?}, peers {:?}",
            b.communities
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>(),
            b.local_pref,
            b.peers
        ),
        None => format!("announce = \"{how}\""),
    }
}

/// One entry's announcement, `None` when it has an error.
fn announce(
    v: &RawVip,
    vf: &str,
    addr: IpAddr,
    has_bgp_table: bool,
    bgp: &BgpSettings,
    errs: &mut Errors,
) -> Option<Announce> {
    let before = errs.list.len();
    let (l2, over_bgp) = match v
        .announce
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None | Some(("l2", _)) => (true, false),
        Some(("bgp", _)) => (false, true),
        Some(("both", _)) => (true, true),
        Some((other, span)) => {
            errs.at(
                span,
                &format!("{vf}.announce"),
                format!("{other:?} is not an announcement; use \"l2\" (ARP/NDP, the default), \"bgp\" or \"both\""),
            );
            return None;
        }
    };
    if over_bgp {
        let span = v.announce.as_ref().map(|s| s.span()).unwrap_or_default();
        if !has_bgp_table {
            errs.at(
                span.clone(),
                &format!("{vf}.announce"),
                "BGP needs a [bgp] table with this node's asn and at least one [[bgp.peers]]",
            );
        } else if !bgp
            .peers
            .iter()
            .any(|p| p.address.is_ipv4() == addr.is_ipv4())
        {
            errs.at(
                span,
                &format!("{vf}.announce"),
                format!(
                    "{addr} is {} but no valid [[bgp.peers]] entry has an {} address: nobody would receive the route",
                    family(&addr),
                    family(&addr)
                ),
            );
        }
    }
    let mut vb = VipBgp::default();
    let not_bgp = |span: std::ops::Range<usize>, key: &str, errs: &mut Errors| {
        errs.at(
            span,
            &format!("{vf}.{key}"),
            "is set but the VIP is not announced over BGP; add announce = \"bgp\" or \"both\", or remove it",
        );
    };
    if let Some(list) = &v.bgp_communities {
        if !over_bgp {
            not_bgp(list.span(), "bgp_communities", errs);
        }
        for (ci, c) in list.get_ref().iter().enumerate() {
            match c.get_ref().parse::<Community>() {
                Ok(c) => vb.communities.push(c),
                Err(e) => errs.at(
                    c.span(),
                    &format!("{vf}.bgp_communities[{ci}]"),
                    e.to_string(),
                ),
            }
        }
    }
    if let Some(lp) = &v.bgp_local_pref {
        if !over_bgp {
            not_bgp(lp.span(), "bgp_local_pref", errs);
        }
        match int_in(*lp.get_ref(), 0, u32::MAX as i64) {
            Some(n) => vb.local_pref = Some(n as u32),
            None => errs.at(
                lp.span(),
                &format!("{vf}.bgp_local_pref"),
                format!("{} is out of range; use 0..=4294967295", lp.get_ref()),
            ),
        }
    }
    if let Some(list) = &v.bgp_peers {
        if !over_bgp {
            not_bgp(list.span(), "bgp_peers", errs);
        }
        for (pi, n) in list.get_ref().iter().enumerate() {
            match bgp.peers.iter().find(|p| p.name == *n.get_ref()) {
                Some(p) if p.address.is_ipv4() != addr.is_ipv4() => errs.at(
                    n.span(),
                    &format!("{vf}.bgp_peers[{pi}]"),
                    format!(
                        "peer {:?} is {} and cannot carry the {} route of {addr}",
                        p.name,
                        family(&p.address),
                        family(&addr)
                    ),
                ),
                Some(_) => vb.peers.push(n.get_ref().clone()),
                None => {
                    let known: Vec<&str> = bgp.peers.iter().map(|p| p.name.as_str()).collect();
                    errs.at(
                        n.span(),
                        &format!("{vf}.bgp_peers[{pi}]"),
                        format!(
                            "{:?} is not the name of a [[bgp.peers]] entry (names: {known:?})",
                            n.get_ref()
                        ),
                    );
                }
            }
        }
    }
    if errs.list.len() > before {
        return None;
    }
    Some(Announce {
        l2,
        bgp: over_bgp.then_some(vb),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{
        bgp::{Bfd, Community},
        config::tests::{errors, parse},
    };

    const PEER: &str = "[bgp]\nasn = 64512\nrouter_id = \"198.18.1.2\"\n\
                        [[bgp.peers]]\nname = \"tor\"\naddress = \"198.18.1.1\"\nasn = 64500\n";

    fn vip(extra: &str) -> String {
        format!(
            "[[vips]]\naddress = \"198.18.0.100\"\nports = [443]\nprotocols = [\"tcp\"]\n{extra}\n"
        )
    }

    #[test]
    fn a_bgp_vip_becomes_one_route_to_its_peers_with_its_attributes() {
        let text = format!(
            "interfaces = [\"eth0\"]\n{}{PEER}hold_time_s = 9\n\
             bfd = {{ receive_interval_ms = 100, detect_multiplier = 5 }}\n\
             [[bgp.peers]]\naddress = \"198.18.1.5\"\nasn = 64501\nbfd = true\n\
             [[bgp.peers]]\naddress = \"fd00:1::1\"\nasn = 64501\n",
            vip(
                "announce = \"both\"\nbgp_communities = [\"64512:7\", \"no-export\"]\n\
                 bgp_local_pref = 150\nbgp_peers = [\"tor\"]"
            )
        );
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let p = &c.bgp.peers;
        assert_eq!(c.bgp.asn, Some(64512));
        assert_eq!(
            (p[0].hold_time_s, p[0].keepalive_s, p[0].local_asn),
            (9, 3, 64512)
        );
        assert_eq!(
            p[0].bfd,
            Some(Bfd {
                receive_interval_ms: 100,
                transmit_interval_ms: 300,
                detect_multiplier: 5,
                passive: false
            })
        );
        // A peer without a name is named by its address; defaults are MetalLB's.
        assert_eq!(
            (p[1].name.as_str(), p[1].hold_time_s, p[1].keepalive_s),
            ("198.18.1.5", 90, 30)
        );
        assert_eq!(p[1].bfd, Some(Bfd::default()));
        assert_eq!(c.bgp.withdraw_timeout, Duration::from_secs(3));
        let d = c.bgp_desired().unwrap();
        assert_eq!(d.adverts.len(), 1);
        assert_eq!(d.adverts[0].prefix.to_string(), "198.18.0.100/32");
        assert_eq!(d.adverts[0].peers, ["tor"]);
        assert_eq!(
            d.adverts[0].communities,
            [
                Community::Standard(64512, 7),
                Community::Standard(0xffff, 0xff01)
            ]
        );
        assert_eq!(d.adverts[0].local_pref, Some(150));
        // "both": ARP/NDP too.
        assert_eq!(
            c.l2_addresses(),
            ["198.18.0.100".parse::<std::net::IpAddr>().unwrap()]
        );
        // "bgp" only: no ARP/NDP; "l2" (the default): no route.
        let c = parse(&format!(
            "interfaces = [\"eth0\"]\n{}{PEER}",
            vip("announce = \"bgp\"")
        ))
        .unwrap();
        assert!(c.l2_addresses().is_empty());
        let c = parse(&format!("interfaces = [\"eth0\"]\n{}", vip(""))).unwrap();
        assert_eq!(c.l2_addresses().len(), 1);
        assert_eq!(c.bgp_desired(), None);
    }

    #[test]
    fn bgp_errors_name_file_line_and_field() {
        let text = format!(
            "interfaces = [\"eth0\"]\n{}{}\
             [bgp]\nasn = 0\nrouter_id = \"fd00::1\"\n\
             [[bgp.peers]]\nname = \"tor\"\naddress = \"198.18.1.1\"\nasn = 64500\nhold_time_s = 2\n\
             [[bgp.peers]]\nname = \"tor\"\naddress = \"198.18.1.9\"\nasn = 1\n\
             [[bgp.peers]]\naddress = \"198.18.1.7\"\nasn = 1\nkeepalive_s = 0\npassword_file = \"missing.pw\"\n\
             source_address = \"fd00::2\"\nbfd = {{ receive_interval_ms = 1 }}\n",
            vip("announce = \"bgp\"\nbgp_communities = [\"65536:1\"]\nbgp_peers = [\"tor2\"]"),
            "[[vips]]\naddress = \"198.18.0.101\"\nports = [80]\nprotocols = [\"tcp\"]\nannounce = \"ospf\"\nbgp_local_pref = 5\n"
        );
        let e = errors(&text);
        let expect = [
            "lb.toml:16:7: bgp.asn: 0 is not an AS number",
            "lb.toml:17:13: bgp.router_id: \"fd00::1\" is not a BGP router ID",
            "lb.toml:22:15: bgp.peers[0].hold_time_s: 2 is not a BGP hold time",
            "lb.toml:30:15: bgp.peers[2].keepalive_s: 0 is not a keepalive interval for hold_time_s = 90",
            "lb.toml:31:17: bgp.peers[2].password_file: cannot read",
            "lb.toml:32:18: bgp.peers[2].source_address: fd00::2 is IPv6 but the peer 198.18.1.7 is IPv4",
            "lb.toml:33:31: bgp.peers[2].bfd.receive_interval_ms: 1 is out of range",
            "lb.toml:7:20: vips[0].bgp_communities[0]: \"65536:1\" is not a BGP community",
            "lb.toml:8:14: vips[0].bgp_peers[0]: \"tor2\" is not the name of a [[bgp.peers]] entry (names: [\"tor\"])",
            "lb.toml:13:12: vips[1].announce: \"ospf\" is not an announcement",
        ];
        assert_eq!(e.len(), expect.len(), "{}", e.join("\n"));
        for (got, want) in e.iter().zip(expect) {
            assert!(
                got.starts_with(want),
                "{got:?} does not start with {want:?}"
            );
        }
        // A VIP over BGP without a [bgp] table, or with no peer of its family.
        let e = errors(&format!(
            "interfaces = [\"eth0\"]\n{}",
            vip("announce = \"bgp\"")
        ));
        assert!(
            e[0].starts_with("lb.toml:6:12: vips[0].announce: BGP needs a [bgp] table"),
            "{e:?}"
        );
        let e = errors(&format!(
            "interfaces = [\"eth0\"]\n{}[bgp]\nasn = 1\n[[bgp.peers]]\naddress = \"fd00::1\"\nasn = 2\n",
            vip("announce = \"bgp\"")
        ));
        assert!(
            e[0].contains("no valid [[bgp.peers]] entry has an IPv4 address"),
            "{e:?}"
        );
        // bgp_* keys on an l2 VIP.
        let e = errors(&format!(
            "interfaces = [\"eth0\"]\n{}{PEER}",
            vip("bgp_local_pref = 1")
        ));
        assert_eq!(
            e,
            [
                "lb.toml:6:18: vips[0].bgp_local_pref: is set but the VIP is not announced over \
              BGP; add announce = \"bgp\" or \"both\", or remove it"
            ]
        );
        // Two entries of one address announced differently.
        let e = errors(&format!(
            "interfaces = [\"eth0\"]\n{}{}{PEER}",
            vip(""),
            vip("announce = \"bgp\"").replace("[443]", "[80]")
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "lb.toml:11:12: vips[1].announce: 198.18.0.100 is also vips[0], announced \
                 differently (announce = \"l2\")"
            ),
            "{e:?}"
        );
    }
}
