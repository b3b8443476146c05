//! BGP announcement through an existing routing daemon: lb never speaks BGP itself.
//!
//! The speaker is BIRD 2 (Debian's `bird2`). lb decides *what* is advertised to *whom*
//! ([`Desired`]: the peers, and each VIP prefix with the peers it goes to, its communities
//! and local preference), renders it as a complete BIRD configuration ([`render`]), and
//! applies it with BIRD's own reload (`configure`), which keeps the previous configuration
//! running when the new one does not parse. It then reads back what BIRD really has: each
//! session's state, the prefixes it exports to each peer, and the BFD sessions ([`bird`]).
//!
//! Why BIRD, not FRR or GoBGP: one configuration file, checked and swapped atomically by the
//! daemon itself (`configure check`, then `configure`), BFD built in (no second daemon), a
//! line-based control socket lb reads without extra tooling, and a small footprint in the
//! image. FRR needs `frr-reload.py` (Python) to apply a file as a diff, and bfdd beside
//! bgpd; GoBGP needs a gRPC client and its BFD is not in Debian's 3.10 build.
//!
//! Where each part lives:
//! - here: the model ([`Desired`], [`Peer`], [`Bfd`], [`Advertisement`], [`Community`]);
//! - [`render`]: [`Desired`] → `bird.conf` text (pure; unit-tested);
//! - [`bird`]: BIRD's control-socket protocol and the parsing of its replies;
//! - [`speaker`]: the BIRD process lb runs, applying configurations, reading status,
//!   withdrawing on shutdown;
//! - [`driver`]: the daemon's side: the speaker kept in step with the config or the
//!   controller, polled for `/status` and metrics, withdrawn first at shutdown.

pub mod bird;
pub mod driver;
pub mod render;
pub mod speaker;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::IpNet;

/// The BGP well-known port.
pub const DEFAULT_PORT: u16 = 179;
/// BGP's hold time and keepalive when a peer sets neither (MetalLB's defaults: 90 s / 30 s).
pub const DEFAULT_HOLD_TIME_S: u16 = 90;
pub const DEFAULT_KEEPALIVE_S: u16 = 30;

/// Everything the speaker should do: its identity, its sessions, and what each one
/// carries. lb renders the whole of it on every change; BIRD reloads only what differs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    /// BGP router ID: an IPv4 address of the node (required even for IPv6-only peering).
    pub router_id: Option<Ipv4Addr>,
    pub peers: Vec<Peer>,
    /// The prefixes to originate. A prefix that names no peer goes to every peer of its
    /// address family.
    pub adverts: Vec<Advertisement>,
}

/// One BGP session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Unique name (the static config's `name`, or the BGPPeer's `namespace/name`); shown
    /// in metrics and `/status`. BIRD's protocol is named by index, see [`render`].
    pub name: String,
    pub address: IpAddr,
    /// This node's AS on the session (MetalLB's `myASN`).
    pub local_asn: u32,
    /// The peer's AS (`peerASN`); equal to `local_asn` makes an iBGP session.
    pub peer_asn: u32,
    pub port: u16,
    /// Seconds; 0 turns keepalives off (RFC 4271), otherwise at least 3.
    pub hold_time_s: u16,
    pub keepalive_s: u16,
    /// TCP MD5 password (read from a file or Secret).
    pub password: Option<Password>,
    /// The local address of the session (`sourceAddress`); BIRD picks one when absent.
    pub source_address: Option<IpAddr>,
    /// eBGP multihop TTL (`ebgpMultiHop`); `None`: directly connected.
    pub multihop: Option<u8>,
    /// Keep forwarding through a restart of the speaker (RFC 4724, `enableGracefulRestart`).
    pub graceful_restart: bool,
    pub bfd: Option<Bfd>,
}

/// A session's TCP MD5 password: shown as `***` by `Debug`, so no log or error carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("***")
    }
}

/// BFD timers of one session (MetalLB's `BFDProfile`). Milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bfd {
    pub receive_interval_ms: u32,
    pub transmit_interval_ms: u32,
    pub detect_multiplier: u8,
    /// Wait for the peer to start the BFD session (`passiveMode`).
    pub passive: bool,
}

impl Default for Bfd {
    /// MetalLB's BFDProfile defaults (FRR's): 300 ms both ways, multiplier 3.
    fn default() -> Self {
        Bfd {
            receive_interval_ms: 300,
            transmit_interval_ms: 300,
            detect_multiplier: 3,
            passive: false,
        }
    }
}

/// One prefix to originate and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// A VIP as /32 or /128, or an aggregate of it (`aggregationLength`).
    pub prefix: IpNet,
    /// Names of the [`Peer`]s it goes to; empty: every peer of its family.
    pub peers: Vec<String>,
    pub communities: Vec<Community>,
    /// LOCAL_PREF; only iBGP peers receive it (BGP strips it on eBGP sessions).
    pub local_pref: Option<u32>,
}

/// A BGP community attached to an advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Community {
    /// RFC 1997 `asn:value`, each 16 bits.
    Standard(u16, u16),
    /// RFC 8092 `global:local1:local2`, each 32 bits.
    Large(u32, u32, u32),
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Community::Standard(a, b) => write!(f, "{a}:{b}"),
            Community::Large(a, b, c) => write!(f, "large:{a}:{b}:{c}"),
        }
    }
}

/// Errors parsing a community, named for messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a BGP community; expected \"asn:value\" (each 0..=65535), \"large:a:b:c\" (each 0..=4294967295) or a well-known name (no-export, no-advertise, no-export-subconfed, no-peer, blackhole, graceful-shutdown)"
)]
pub struct BadCommunity(pub String);

impl std::str::FromStr for Community {
    type Err = BadCommunity;
    /// `"65000:100"`, `"large:65000:1:2"`, or a well-known name as MetalLB accepts them.
    fn from_str(s: &str) -> Result<Community, BadCommunity> {
        let bad = || BadCommunity(s.to_owned());
        let well_known = match s {
            "no-export" => Some((0xffff, 0xff01)),
            "no-advertise" => Some((0xffff, 0xff02)),
            "no-export-subconfed" => Some((0xffff, 0xff03)),
            "no-peer" => Some((0xffff, 0xff04)),
            "blackhole" => Some((0xffff, 0x029a)),
            "graceful-shutdown" => Some((0xffff, 0x0000)),
            _ => None,
        };
        if let Some((a, b)) = well_known {
            return Ok(Community::Standard(a, b));
        }
        if let Some(rest) = s.strip_prefix("large:") {
            let parts: Vec<&str> = rest.split(':').collect();
            let [a, b, c] = parts[..] else {
                return Err(bad());
            };
            let n = |p: &str| p.parse::<u32>().map_err(|_| bad());
            return Ok(Community::Large(n(a)?, n(b)?, n(c)?));
        }
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let n = |p: &str| p.parse::<u16>().map_err(|_| bad());
        Ok(Community::Standard(n(a)?, n(b)?))
    }
}

#[cfg(test)]
impl Peer {
    /// An eBGP session AS 64512 → 64500 on port 179, 9 s / 3 s, nothing else set.
    pub(crate) fn for_test(name: &str, addr: &str) -> Peer {
        Peer {
            name: name.into(),
            address: addr.parse().unwrap(),
            local_asn: 64512,
            peer_asn: 64500,
            port: DEFAULT_PORT,
            hold_time_s: 9,
            keepalive_s: 3,
            password: None,
            source_address: None,
            multihop: None,
            graceful_restart: false,
            bfd: None,
        }
    }
}

impl Desired {
    /// The peers `advert` goes to: those it names, or every peer of its family.
    pub fn peers_of<'a>(&'a self, advert: &'a Advertisement) -> impl Iterator<Item = &'a Peer> {
        self.peers.iter().filter(move |p| {
            p.address.is_ipv4() == advert.prefix.addr().is_ipv4()
                && (advert.peers.is_empty() || advert.peers.contains(&p.name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn communities_parse_as_metallb_writes_them() {
        assert_eq!("65000:100".parse(), Ok(Community::Standard(65000, 100)));
        assert_eq!(
            "no-advertise".parse(),
            Ok(Community::Standard(0xffff, 0xff02))
        );
        assert_eq!(
            "large:4200000000:1:2".parse(),
            Ok(Community::Large(4_200_000_000, 1, 2))
        );
        for bad in ["65536:1", "1", "a:b", "large:1:2", "large:1:2:3:4", ""] {
            assert_eq!(
                bad.parse::<Community>(),
                Err(BadCommunity(bad.to_owned())),
                "{bad}"
            );
        }
        assert_eq!(Community::Large(1, 2, 3).to_string(), "large:1:2:3");
    }

    #[test]
    fn an_advert_goes_to_its_named_peers_of_its_family_only() {
        let peer = Peer::for_test;
        let d = Desired {
            router_id: Some(Ipv4Addr::new(198, 18, 1, 2)),
            peers: vec![
                peer("a", "198.18.1.1"),
                peer("b", "198.18.1.5"),
                peer("v6", "fd00:1::1"),
            ],
            adverts: vec![],
        };
        let adv = |p: &str, peers: &[&str]| Advertisement {
            prefix: p.parse().unwrap(),
            peers: peers.iter().map(|s| s.to_string()).collect(),
            communities: vec![],
            local_pref: None,
        };
        let names = |a: &Advertisement| d.peers_of(a).map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&adv("198.18.0.100/32", &[])), ["a", "b"]);
        assert_eq!(names(&adv("198.18.0.100/32", &["b", "v6"])), ["b"]);
        assert_eq!(names(&adv("fd00::100/128", &[])), ["v6"]);
    }
}
