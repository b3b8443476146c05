//! [`Desired`] → a complete `bird.conf`.
//!
//! The shape, and why:
//! - `protocol static lb_vips4` / `lb_vips6` hold one `blackhole` route per prefix. They are
//!   only a source for BGP: the file has no `kernel` protocol, so nothing reaches the node's
//!   own routing table (the XDP program, not the kernel, answers the VIPs).
//! - one `protocol bgp lb_peer_<hash>` per [`Peer`] ([`peer_protocol`]): BIRD's symbols
//!   allow fewer characters than peer names; the name is in its `description`, which is
//!   how [`super::bird`] maps status back.
//! - each session's export filter accepts exactly its prefixes. Prefixes with the same
//!   communities and local preference are one prefix set (`net ~ [ ... ]`, a trie in BIRD),
//!   so 20,000 VIPs cost a handful of set lookups per route, not 20,000 comparisons.
//! - BFD, when any session wants it, is a `protocol bfd` with the timers per session
//!   (`bfd { ... }` inside the BGP protocol).

use std::{collections::BTreeMap, fmt::Write as _};

use super::{Community, Desired, Peer};

/// BIRD's name for the static protocol holding IPv4 (`true`) or IPv6 prefixes.
pub fn static_protocol(v4: bool) -> &'static str {
    if v4 { "lb_vips4" } else { "lb_vips6" }
}

/// BIRD's name for the session with the peer named `name`: `lb_peer_` and 12 hex digits of
/// SHA-256 of the name. Stable whatever other peers come and go (a name by position would
/// rename, and so restart, every session after an added or removed peer), and made only of
/// the characters BIRD's symbols allow, which peer names are not.
pub fn peer_protocol(name: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("lb_peer_{hex}")
}

/// Values BIRD's configuration language cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// BIRD strings have no escapes: a `"` or a line break cannot be written.
    #[error(
        "the BGP password of peer {peer} contains a double quote or a line break, which BIRD cannot take; choose a password without them"
    )]
    Password { peer: String },
}

/// The configuration BIRD runs for `desired`.
pub fn render(desired: &Desired) -> Result<String, RenderError> {
    let mut out = String::new();
    out.push_str(
        "# Written by lb on every change and applied with `birdc configure`; edits are lost.\n",
    );
    if let Some(id) = desired.router_id {
        let _ = writeln!(out, "router id {id};");
    }
    out.push_str("log stderr { info, remote, warning, error, auth, fatal, bug };\n");
    out.push_str("protocol device { scan time 10; }\n");
    for v4 in [true, false] {
        render_static(&mut out, desired, v4);
    }
    if desired.peers.iter().any(|p| p.bfd.is_some()) {
        out.push_str("protocol bfd lb_bfd { }\n");
    }
    for peer in &desired.peers {
        render_peer(&mut out, desired, peer)?;
    }
    Ok(out)
}

fn render_static(out: &mut String, desired: &Desired, v4: bool) {
    let mut prefixes: Vec<_> = desired
        .adverts
        .iter()
        .map(|a| a.prefix.trunc())
        .filter(|p| p.addr().is_ipv4() == v4)
        .collect();
    prefixes.sort();
    prefixes.dedup();
    let _ = writeln!(
        out,
        "protocol static {} {{\n    {};",
        static_protocol(v4),
        if v4 { "ipv4" } else { "ipv6" }
    );
    for p in prefixes {
        let _ = writeln!(out, "    route {p} blackhole;");
    }
    out.push_str("}\n");
}

/// What an export filter does to one group of prefixes.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Attributes {
    communities: Vec<Community>,
    local_pref: Option<u32>,
}

fn render_peer(out: &mut String, desired: &Desired, peer: &Peer) -> Result<(), RenderError> {
    let description: String = peer
        .name
        .chars()
        .map(|c| if c == '"' || c.is_control() { '_' } else { c })
        .collect();
    let _ = writeln!(out, "protocol bgp {} {{", peer_protocol(&peer.name));
    let _ = writeln!(out, "    description \"{description}\";");
    match peer.source_address {
        Some(a) => {
            let _ = writeln!(out, "    local {a} as {};", peer.local_asn);
        }
        None => {
            let _ = writeln!(out, "    local as {};", peer.local_asn);
        }
    }
    let _ = writeln!(
        out,
        "    neighbor {} port {} as {};",
        peer.address, peer.port, peer.peer_asn
    );
    let _ = writeln!(
        out,
        "    hold time {};\n    keepalive time {};",
        peer.hold_time_s, peer.keepalive_s
    );
    if let Some(super::Password(pw)) = &peer.password {
        if pw.contains('"') || pw.contains('\n') || pw.contains('\r') {
            return Err(RenderError::Password {
                peer: peer.name.clone(),
            });
        }
        let _ = writeln!(out, "    password \"{pw}\";");
    }
    if let Some(ttl) = peer.multihop {
        let _ = writeln!(out, "    multihop {ttl};");
    }
    if peer.graceful_restart {
        out.push_str("    graceful restart on;\n");
    }
    if let Some(b) = peer.bfd {
        let _ = writeln!(
            out,
            "    bfd {{ min rx interval {} ms; min tx interval {} ms; multiplier {}; passive {}; }};",
            b.receive_interval_ms,
            b.transmit_interval_ms,
            b.detect_multiplier,
            if b.passive { "on" } else { "off" }
        );
    }
    let v4 = peer.address.is_ipv4();
    let mut groups: BTreeMap<Attributes, Vec<ipnet::IpNet>> = BTreeMap::new();
    for advert in &desired.adverts {
        if desired.peers_of(advert).any(|p| std::ptr::eq(p, peer)) {
            let mut communities = advert.communities.clone();
            communities.sort();
            communities.dedup();
            groups
                .entry(Attributes {
                    communities,
                    local_pref: advert.local_pref,
                })
                .or_default()
                .push(advert.prefix.trunc());
        }
    }
    let _ = writeln!(
        out,
        "    {} {{\n        import none;\n        next hop self;\n        export filter {{",
        if v4 { "ipv4" } else { "ipv6" }
    );
    for (attrs, mut prefixes) in groups {
        prefixes.sort();
        prefixes.dedup();
        let set: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        let _ = write!(out, "            if net ~ [ {} ] then {{ ", set.join(", "));
        for c in &attrs.communities {
            match c {
                Community::Standard(a, b) => {
                    let _ = write!(out, "bgp_community.add(({a},{b})); ");
                }
                Community::Large(a, b, c) => {
                    let _ = write!(out, "bgp_large_community.add(({a},{b},{c})); ");
                }
            }
        }
        if let Some(lp) = attrs.local_pref {
            let _ = write!(out, "bgp_local_pref = {lp}; ");
        }
        out.push_str("accept; }\n");
    }
    out.push_str("            reject;\n        };\n    };\n}\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, process::Command};

    use super::*;
    use crate::bgp::{Advertisement, Bfd};

    fn peer(name: &str, addr: &str) -> Peer {
        Peer::for_test(name, addr)
    }

    fn advert(p: &str, peers: &[&str], communities: &[&str], lp: Option<u32>) -> Advertisement {
        Advertisement {
            prefix: p.parse().unwrap(),
            peers: peers.iter().map(|s| s.to_string()).collect(),
            communities: communities.iter().map(|c| c.parse().unwrap()).collect(),
            local_pref: lp,
        }
    }

    fn sample() -> Desired {
        let mut a = peer("tor-a", "198.18.1.1");
        a.bfd = Some(Bfd::default());
        a.graceful_restart = true;
        a.password = Some(crate::bgp::Password("s3cret".into()));
        let mut v6 = peer("tor-v6 \"x\"", "fd00:1::1");
        v6.source_address = Some("fd00:1::2".parse().unwrap());
        v6.multihop = Some(2);
        Desired {
            router_id: Some(Ipv4Addr::new(198, 18, 1, 2)),
            peers: vec![a, peer("tor-b", "198.18.1.5"), v6],
            adverts: vec![
                advert("198.18.0.100/32", &[], &["65000:7"], None),
                advert("198.18.0.101/32", &["tor-b"], &[], Some(150)),
                advert("198.18.0.102/32", &[], &["65000:7"], None),
                advert("fd00:18::100/128", &[], &["large:1:2:3", "no-export"], None),
            ],
        }
    }

    #[test]
    fn each_peer_exports_exactly_its_prefixes_grouped_by_attributes() {
        let text = render(&sample()).unwrap();
        let peer_block = |name: &str| {
            let start = text
                .find(&format!("protocol bgp {} {{", peer_protocol(name)))
                .unwrap();
            let end = text[start..].find("\n}\n").unwrap() + start;
            text[start..end].to_owned()
        };
        let a = peer_block("tor-a");
        assert!(a.contains(
            "if net ~ [ 198.18.0.100/32, 198.18.0.102/32 ] then { bgp_community.add((65000,7)); accept; }"
        ), "{a}");
        assert!(!a.contains("198.18.0.101"), "{a}");
        assert!(a.contains(
            "bfd { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; passive off; };"
        ));
        assert!(a.contains("graceful restart on;") && a.contains("password \"s3cret\";"));
        let b = peer_block("tor-b");
        assert!(
            b.contains("if net ~ [ 198.18.0.101/32 ] then { bgp_local_pref = 150; accept; }"),
            "{b}"
        );
        assert!(b.contains("if net ~ [ 198.18.0.100/32, 198.18.0.102/32 ]"));
        let v6 = peer_block("tor-v6 \"x\"");
        assert!(v6.contains("description \"tor-v6 _x_\";"), "{v6}");
        assert!(v6.contains("local fd00:1::2 as 64512;") && v6.contains("multihop 2;"));
        assert!(v6.contains(
            "if net ~ [ fd00:18::100/128 ] then { bgp_community.add((65535,65281)); bgp_large_community.add((1,2,3)); accept; }"
        ), "{v6}");
        assert!(text.contains("protocol static lb_vips4 {\n    ipv4;\n    route 198.18.0.100/32 blackhole;\n    route 198.18.0.101/32 blackhole;\n    route 198.18.0.102/32 blackhole;\n}"));
        assert!(text.contains("protocol bfd lb_bfd { }"));
        assert!(
            !text.contains("protocol kernel"),
            "lb's speaker never touches the node's routes"
        );
    }

    #[test]
    fn session_names_are_stable_per_peer_and_bird_symbols() {
        let a = peer_protocol("tor-a");
        assert_eq!(a, peer_protocol("tor-a"));
        assert_ne!(a, peer_protocol("tor-b"));
        assert!(a.starts_with("lb_peer_") && a.len() == 20, "{a}");
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        // Adding a peer before another leaves the other's session (and name) as it was.
        let one = render(&Desired {
            peers: vec![peer("tor-b", "198.18.1.5")],
            ..Desired::default()
        })
        .unwrap();
        let two = render(&Desired {
            peers: vec![peer("tor-a", "198.18.1.1"), peer("tor-b", "198.18.1.5")],
            ..Desired::default()
        })
        .unwrap();
        let b = format!("protocol bgp {} {{", peer_protocol("tor-b"));
        assert!(one.contains(&b) && two.contains(&b));
    }

    #[test]
    fn a_password_bird_cannot_quote_is_refused() {
        let mut d = sample();
        d.peers[1].password = Some(crate::bgp::Password("a\"b".into()));
        assert_eq!(
            render(&d),
            Err(RenderError::Password {
                peer: "tor-b".into()
            })
        );
    }

    /// The rendered file is what BIRD itself accepts: `bird -p` parses a configuration
    /// and exits. BIRD is installed by `cargo xtask setup`; its absence fails the test.
    #[test]
    fn bird_parses_what_is_rendered() {
        let dir = std::env::temp_dir().join(format!("lb-render-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = Desired {
            router_id: Some(Ipv4Addr::new(198, 18, 1, 2)),
            ..Desired::default()
        };
        for (i, d) in [sample(), empty].iter().enumerate() {
            let file = dir.join(format!("bird-{i}.conf"));
            std::fs::write(&file, render(d).unwrap()).unwrap();
            let out = Command::new(crate::bgp::speaker::DEFAULT_BIRD)
                .arg("-p")
                .arg("-c")
                .arg(&file)
                .output()
                .expect("running bird -p (cargo xtask setup installs Debian's bird2)");
            assert!(
                out.status.success(),
                "bird rejected:\n{}\n{}",
                std::fs::read_to_string(&file).unwrap(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
