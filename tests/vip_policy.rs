//! BPF_PROG_TEST_RUN fixtures for the per-VIP policies Kubernetes Services ask for, enforced
//! in the XDP program: `loadBalancerSourceRanges` (`VIP_F_SOURCE_RANGES` and the
//! `LB_SRC_RANGES` trie), `sessionAffinity: ClientIP` (`VIP_F_AFFINITY_CLIENT_IP`), and the
//! eviction of connection-table entries of removed backends. Same style as `xdp_fixtures`:
//! the real object through the verifier, exact verdicts, bytes and counters.
//!
//! ```sh
//! cargo test -p lb-tests --test vip_policy -- --test-threads=1
//! ```

mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context, Result};
use lb_common::{
    ConnEntry, FlowKey, PROTO_TCP, PROTO_UDP,
    Reason::{self, *},
    VIP_F_AFFINITY_CLIENT_IP, VIP_F_QUIC_LB, VIP_F_SOURCE_RANGES, affinity_key,
    hash::flow_hash,
};
use lb_lab::{
    packet::{quic, tcp_flags},
    testbed::{fixture::*, *},
};
use lb_userspace::{
    config::{Change, Config, Plan, apply},
    dataplane::{Dataplane, vip_key},
};
use support::fixture::*;

fn net(s: &str) -> ipnet::IpNet {
    s.parse().expect("test prefix")
}

fn v4(c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, c, d)
}

fn v6(g: u16, h: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x18, 0, g, 0, 0, 0, h)
}

/// The packet must be dropped untouched, counted as `drop_source_range` for `vip`.
fn expect_denied(lb: &Lb, what: &str, p: &Pkt, vip: u32) {
    let b = p.bytes();
    lb.check(
        what,
        &b,
        Want {
            verdict: XDP_DROP,
            out: &b,
            reasons: &[DropSourceRange],
            vip: Some(vip),
            backend: None,
        },
    );
}

/// Redirected to backend `id` (0..3 IPv4, 3..6 IPv6 behind `be`), exact bytes and counters.
fn expect_to(lb: &Lb, what: &str, p: &Pkt, steering: &[Reason], id: u32, vip: u32) {
    expect_redirect_on(lb, what, p, steering, id, vip);
}

fn proto_of(p: &Pkt) -> u8 {
    match p.proto {
        Proto::Udp => PROTO_UDP,
        Proto::Tcp(_) => PROTO_TCP,
    }
}

/// The backend the live ring names for `p` under ClientIP affinity: the slot of the hash
/// of the client address alone (`lb_common::affinity_key`).
fn affinity_pick(lb: &Lb, p: &Pkt) -> u32 {
    let meta = lb
        .dp
        .vip(&vip_key(p.dst, p.dport, proto_of(p)))
        .expect("the VIP exists");
    let h = flow_hash(&affinity_key(&p.flow_key()));
    lb.dp
        .ring_slot(&meta, h % meta.ring_size)
        .expect("reading LB_MAGLEV")
}

fn set_flags(lb: &mut Lb, vip: (IpAddr, u16, u8), flags: u32) -> Result<()> {
    lb.dp.set_vip_flags(&vip_key(vip.0, vip.1, vip.2), flags)?;
    Ok(())
}

// ---- loadBalancerSourceRanges ----------------------------------------------------------

/// Ranges on the standard TCP VIPs (v4 and v6): clients inside pass through Maglev as
/// before, clients outside are dropped untouched and counted globally and per VIP under
/// `drop_source_range`; a single-host prefix and nested prefixes work; other VIPs (no flag)
/// are unaffected even for the denied clients; a flagged VIP without entries admits nobody.
#[test]
fn source_ranges_allow_and_deny_v4_and_v6() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        lb.dp.add_source_range(VIP_V4_TCP, net("198.18.0.0/24"))?;
        lb.dp.add_source_range(VIP_V4_TCP, net("198.18.5.7/32"))?;
        lb.dp.add_source_range(VIP_V6_TCP, net("fd00:18::/64"))?;
        lb.dp
            .add_source_range(VIP_V6_TCP, net("fd00:18:0:9::/64"))?;
        assert_eq!(
            lb.dp.source_ranges(VIP_V4_TCP),
            vec![net("198.18.0.0/24"), net("198.18.5.7/32")]
        );
        assert_eq!(
            lb.dp.source_ranges(VIP_V6_TCP),
            vec![net("fd00:18::/64"), net("fd00:18:0:9::/64")]
        );
        // Entries alone change nothing: the flag turns the check on.
        let outsider = Pkt::tcp(v4(1, 5), VIP_V4, 40000, VIP_PORT, tcp_flags::SYN);
        let id = maglev_pick(lb, &outsider);
        expect_redirect(lb, "outsider before the flag", &outsider, &[Maglev], id);

        set_flags(
            lb,
            (VIP_V4.into(), VIP_PORT, PROTO_TCP),
            VIP_F_SOURCE_RANGES,
        )?;
        set_flags(
            lb,
            (VIP_V6.into(), VIP_PORT, PROTO_TCP),
            VIP_F_SOURCE_RANGES,
        )?;

        for (what, src) in [
            ("v4 client in /24", CLIENT_V4),
            ("v4 first of /24", v4(0, 0)),
            ("v4 last of /24", v4(0, 255)),
            ("v4 single host /32", v4(5, 7)),
        ] {
            let p = Pkt::tcp(src, VIP_V4, 40001, VIP_PORT, tcp_flags::SYN);
            let id = maglev_pick(lb, &p);
            expect_redirect(lb, what, &p, &[Maglev], id);
        }
        for (what, src) in [
            ("v4 next /24", v4(1, 0)),
            ("v4 neighbour of /32", v4(5, 6)),
            ("v4 outsider", v4(1, 5)),
        ] {
            let p = Pkt::tcp(src, VIP_V4, 40002, VIP_PORT, tcp_flags::SYN);
            expect_denied(lb, what, &p, VIP_V4_TCP);
            // Established-looking packets too, and the denied flow leaves no table entry.
            let ack = Pkt::tcp(src, VIP_V4, 40002, VIP_PORT, tcp_flags::ACK).payload([1; 20]);
            expect_denied(lb, &format!("{what}, ACK"), &ack, VIP_V4_TCP);
            assert!(lb.dp.conn_entries(&ack.flow_key()).is_empty(), "{what}");
        }
        for (what, src) in [
            ("v6 client in /64", CLIENT_V6),
            ("v6 second /64", v6(9, 0x42)),
        ] {
            let p = Pkt::tcp(src, VIP_V6, 40003, VIP_PORT, tcp_flags::SYN).vlan(7);
            let id = maglev_pick(lb, &p);
            expect_redirect(lb, what, &p, &[Maglev], id);
        }
        for (what, src) in [
            ("v6 next /64", v6(1, 2)),
            (
                "v6 other /16",
                Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 2),
            ),
        ] {
            let p = Pkt::tcp(src, VIP_V6, 40004, VIP_PORT, tcp_flags::SYN).vlan(7);
            expect_denied(lb, what, &p, VIP_V6_TCP);
        }

        // The same denied clients reach the VIPs without the flag.
        let p = Pkt::udp(v4(1, 5), VIP_V4, 40005, PLAIN_UDP_PORT).payload([9; 30]);
        let id = maglev_pick(lb, &p);
        expect_redirect(lb, "no ranges: plain UDP VIP", &p, &[Maglev], id);
        let p = quic_short(v4(1, 5), VIP_V4, &dcid(2, NONCE));
        expect_redirect(
            lb,
            "no ranges: QUIC VIP",
            &p,
            &[RoutedCid],
            v4_backend_id(2),
        );
        let p = quic_short(v6(1, 2), VIP_V6, &dcid(1, NONCE));
        expect_redirect(
            lb,
            "no ranges: v6 QUIC VIP",
            &p,
            &[RoutedCid],
            v6_backend_id(1),
        );

        // Ranges are per VIP index: the QUIC VIP with the flag and no entries of its own
        // admits nobody, not even clients the TCP VIP of the same address admits. The check
        // comes before routing by connection ID.
        set_flags(
            lb,
            (VIP_V4.into(), VIP_PORT, PROTO_UDP),
            VIP_F_QUIC_LB | VIP_F_SOURCE_RANGES,
        )?;
        let p = quic_short(CLIENT_V4, VIP_V4, &dcid(0, NONCE));
        expect_denied(lb, "flag without entries", &p, VIP_V4_QUIC);
        lb.dp.add_source_range(VIP_V4_QUIC, net("198.18.0.0/15"))?;
        expect_redirect(lb, "QUIC VIP with /15", &p, &[RoutedCid], v4_backend_id(0));

        // Removing a range takes effect at once; removing one that is not there is fine.
        lb.dp
            .remove_source_range(VIP_V4_TCP, net("198.18.5.7/32"))?;
        lb.dp
            .remove_source_range(VIP_V4_TCP, net("198.18.5.7/32"))?;
        let p = Pkt::tcp(v4(5, 7), VIP_V4, 40006, VIP_PORT, tcp_flags::SYN);
        expect_denied(lb, "/32 removed", &p, VIP_V4_TCP);
        assert_eq!(lb.dp.source_ranges(VIP_V4_TCP), vec![net("198.18.0.0/24")]);

        // Host bits are refused by the API too.
        let err = lb
            .dp
            .add_source_range(VIP_V4_TCP, net("198.18.0.1/24"))
            .expect_err("host bits set");
        assert!(err.to_string().contains("use 198.18.0.0/24"), "{err}");
        Ok(())
    })
}

fn quic_short(src: impl Into<IpAddr>, vip: impl Into<IpAddr>, dcid: &[u8]) -> Pkt {
    Pkt::udp(src, vip, 40100, VIP_PORT).payload(quic::short(dcid, 48))
}

const NONCE: [u8; 6] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66];

/// A bare data plane (nothing programmed) in a fresh testbed, for tests that program it from
/// a config through `Plan::diff` and `apply`.
fn with_bare(f: impl FnOnce(&mut Lb) -> Result<()>) -> Result<()> {
    lb_lab::netns::require_root()?;
    let tb = Testbed::new()?;
    let _inside = tb.enter()?;
    let mut dp = Dataplane::load().context("loading the XDP program (verifier)")?;
    dp.set_fib_cache_ttl(0)?;
    let mut lb = Lb { tb: &tb, dp };
    f(&mut lb)
}

const PORT: u16 = 8080;

/// A config with a v4 and a v6 TCP VIP on `PORT` over the three backends behind `be`
/// (backend ids 0..3 and 3..6), each with `v4_extra` / `v6_extra` added to its entry.
fn policy_config(v4_extra: &str, v6_extra: &str) -> String {
    let bes = |v6: bool| -> String {
        (0..BACKENDS)
            .map(|i| {
                let a: IpAddr = if v6 {
                    backend_v6(i).into()
                } else {
                    backend_v4(i).into()
                };
                format!("{{ address = \"{a}\", port = {BACKEND_PORT} }}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "interfaces = [\"ext\"]\n\
         [[vips]]\naddress = \"{VIP_V4}\"\nports = [{PORT}]\nprotocols = [\"tcp\"]\n\
         maglev_table_size = 251\n{v4_extra}\nbackends = [{}]\n\
         [[vips]]\naddress = \"{VIP_V6}\"\nports = [{PORT}]\nprotocols = [\"tcp\"]\n\
         maglev_table_size = 251\n{v6_extra}\nbackends = [{}]\n",
        bes(false),
        bes(true)
    )
}

/// Take the data plane from `prev` to the plan of `text`, as `lb run` does on reload.
fn reload(lb: &mut Lb, prev: &Plan, text: &str) -> Result<Plan> {
    let cfg = Config::parse(text, "policy.toml", Path::new("."))?;
    let plan = Plan::build(&cfg, Some(prev))?;
    apply(&mut lb.dp, &Plan::diff(prev, &plan))?;
    Ok(plan)
}

/// Reloads that add, change and remove `source_ranges`, applied on the live maps: after each
/// one the trie holds exactly the planned ranges, the flag is set exactly when there are
/// ranges, and packets from inside and outside get the matching verdicts.
#[test]
fn source_ranges_follow_reloads() -> Result<()> {
    with_bare(|lb| {
        let inside4 = CLIENT_V4;
        let other4 = v4(1, 5);
        let inside6 = CLIENT_V6;
        let other6 = v6(1, 2);
        let mut sport = 30000;
        let mut check = |lb: &Lb, plan: &Plan, allowed: &[IpAddr], denied: &[IpAddr]| {
            for v in &plan.vips {
                assert_eq!(
                    lb.dp.source_ranges(v.index),
                    v.source_ranges,
                    "trie of {}",
                    v.key
                );
                let meta = lb.dp.vip(&v.key.key()).expect("VIP");
                assert_eq!(meta.flags, v.flags, "flags of {}", v.key);
                assert_eq!(
                    meta.flags & VIP_F_SOURCE_RANGES != 0,
                    !v.source_ranges.is_empty()
                );
            }
            for src in allowed {
                sport += 1;
                let vip: IpAddr = if src.is_ipv4() {
                    VIP_V4.into()
                } else {
                    VIP_V6.into()
                };
                let p = Pkt::tcp(*src, vip, sport, PORT, tcp_flags::SYN);
                let index = plan.vips.iter().find(|v| v.key.addr == vip).unwrap().index;
                let id = maglev_pick(lb, &p);
                expect_to(lb, &format!("{src} allowed"), &p, &[Maglev], id, index);
            }
            for src in denied {
                sport += 1;
                let vip: IpAddr = if src.is_ipv4() {
                    VIP_V4.into()
                } else {
                    VIP_V6.into()
                };
                let p = Pkt::tcp(*src, vip, sport, PORT, tcp_flags::SYN);
                let index = plan.vips.iter().find(|v| v.key.addr == vip).unwrap().index;
                expect_denied(lb, &format!("{src} denied"), &p, index);
            }
        };
        let all = [inside4.into(), other4.into(), inside6.into(), other6.into()];

        let open = reload(lb, &Plan::default(), &policy_config("", ""))?;
        check(lb, &open, &all, &[]);

        let closed = reload(
            lb,
            &open,
            &policy_config(
                "source_ranges = [\"198.18.0.0/24\"]",
                "source_ranges = [\"fd00:18::/64\"]",
            ),
        )?;
        check(
            lb,
            &closed,
            &[inside4.into(), inside6.into()],
            &[other4.into(), other6.into()],
        );

        // Swap the ranges: the other clients in, the first ones out.
        let swapped = reload(
            lb,
            &closed,
            &policy_config(
                "source_ranges = [\"198.18.1.0/24\"]",
                "source_ranges = [\"fd00:18:0:1::/64\", \"fd00:18:0:2::/64\"]",
            ),
        )?;
        check(
            lb,
            &swapped,
            &[other4.into(), other6.into()],
            &[inside4.into(), inside6.into()],
        );

        // Only the v4 VIP keeps ranges.
        let half = reload(
            lb,
            &swapped,
            &policy_config("source_ranges = [\"198.18.0.0/15\"]", ""),
        )?;
        check(lb, &half, &all, &[]);
        assert!(lb.dp.source_ranges(half.vips[1].index).is_empty());

        let reopened = reload(lb, &half, &policy_config("", ""))?;
        check(lb, &reopened, &all, &[]);
        for v in &reopened.vips {
            assert!(lb.dp.source_ranges(v.index).is_empty());
        }
        Ok(())
    })
}

// ---- sessionAffinity: ClientIP ----------------------------------------------------------

/// With `VIP_F_AFFINITY_CLIENT_IP`, every new flow of one client (any source port) goes to
/// the backend the ring names for the client address alone, while different clients spread
/// over the backends. Without the flag, the same client's ports spread.
#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        // Without affinity one client's ports spread over the backends.
        let mut spread = BTreeSet::new();
        for port in 0..40u16 {
            let p = Pkt::tcp(CLIENT_V4, VIP_V4, 41000 + port, VIP_PORT, tcp_flags::SYN);
            spread.insert(maglev_pick(lb, &p));
        }
        assert!(
            spread.len() > 1,
            "5-tuple hashing spreads one client: {spread:?}"
        );

        set_flags(
            lb,
            (VIP_V4.into(), VIP_PORT, PROTO_TCP),
            VIP_F_AFFINITY_CLIENT_IP,
        )?;
        set_flags(
            lb,
            (VIP_V6.into(), VIP_PORT, PROTO_TCP),
            VIP_F_AFFINITY_CLIENT_IP,
        )?;

        let mut per_client: BTreeMap<IpAddr, u32> = BTreeMap::new();
        for c in 0..12u8 {
            let client: IpAddr = v4(2, 10 + c).into();
            let mut chosen = None;
            for port in 0..20u16 {
                let p = Pkt::tcp(client, VIP_V4, 42000 + port * 13, VIP_PORT, tcp_flags::SYN);
                let id = affinity_pick(lb, &p);
                expect_redirect(lb, &format!("{client} port {}", p.sport), &p, &[Maglev], id);
                assert_eq!(
                    *chosen.get_or_insert(id),
                    id,
                    "{client}: one backend for all ports"
                );
            }
            per_client.insert(client, chosen.unwrap());
        }
        let used: BTreeSet<u32> = per_client.values().copied().collect();
        assert!(
            used.len() > 1,
            "clients spread over the backends: {per_client:?}"
        );

        // IPv6, with a VLAN tag.
        let mut used6 = BTreeSet::new();
        for c in 0..12u16 {
            let client = v6(3, 0x10 + c);
            let first = Pkt::tcp(client, VIP_V6, 43000, VIP_PORT, tcp_flags::SYN).vlan(9);
            let id = affinity_pick(lb, &first);
            for port in 0..8u16 {
                let p =
                    Pkt::tcp(client, VIP_V6, 43000 + port * 7, VIP_PORT, tcp_flags::SYN).vlan(9);
                expect_redirect(lb, &format!("{client} port {}", p.sport), &p, &[Maglev], id);
            }
            used6.insert(id);
        }
        assert!(used6.len() > 1, "v6 clients spread: {used6:?}");

        // The connection table still pins each flow: turn affinity off and an established
        // flow stays where affinity put it, while a new SYN uses the 5-tuple again.
        let client: IpAddr = v4(2, 10).into();
        let ack = Pkt::tcp(client, VIP_V4, 42000, VIP_PORT, tcp_flags::ACK).payload([3; 12]);
        let pinned = per_client[&client];
        expect_redirect(lb, "ACK under affinity", &ack, &[LruHit], pinned);
        set_flags(lb, (VIP_V4.into(), VIP_PORT, PROTO_TCP), 0)?;
        expect_redirect(lb, "ACK after affinity off", &ack, &[LruHit], pinned);
        let mut back = BTreeSet::new();
        for port in 0..40u16 {
            let p = Pkt::tcp(client, VIP_V4, 44000 + port, VIP_PORT, tcp_flags::SYN);
            let id = maglev_pick(lb, &p);
            expect_redirect(lb, "SYN after affinity off", &p, &[Maglev], id);
            back.insert(id);
        }
        assert!(back.len() > 1, "5-tuple hashing again: {back:?}");
        Ok(())
    })
}

/// On a QUIC-LB VIP with affinity, packets whose CID names a server still go there (the
/// CID comes first); only the fallback (client-chosen Initial DCIDs) uses the client hash.
#[test]
fn client_ip_affinity_leaves_cid_routing_first() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        set_flags(
            lb,
            (VIP_V4.into(), VIP_PORT, PROTO_UDP),
            VIP_F_QUIC_LB | VIP_F_AFFINITY_CLIENT_IP,
        )?;
        let client = v4(2, 50);
        let probe = Pkt::udp(client, VIP_V4, 45000, VIP_PORT);
        let affine = affinity_pick(lb, &probe);
        for i in 0..BACKENDS {
            let p = Pkt::udp(client, VIP_V4, 45000 + i as u16, VIP_PORT)
                .payload(quic::short(&dcid(i, NONCE), 48));
            expect_redirect(lb, "routed by CID", &p, &[RoutedCid], v4_backend_id(i));
        }
        // Initials from many ports of the client: the fallback picks the affinity backend.
        let client_dcid = [0xc7, 0x1f, 0x22, 0x9e, 0x41, 0x08, 0x5a, 0x33];
        for port in 0..10u16 {
            let p = Pkt::udp(client, VIP_V4, 46000 + port, VIP_PORT).payload(quic::initial(
                &client_dcid,
                &[1, 2, 3, 4],
                &[],
                1200,
            ));
            expect_redirect(
                lb,
                "Initial under affinity",
                &p,
                &[FallbackInitial, Maglev],
                affine,
            );
        }
        Ok(())
    })
}

// ---- evicting flows of removed backends ---------------------------------------------------

fn entries_by_backend(dp: &Dataplane, dport: u16) -> BTreeMap<u32, HashSet<FlowKey>> {
    let mut m: BTreeMap<u32, HashSet<FlowKey>> = BTreeMap::new();
    for (k, v) in dp.conn_table() {
        if k.dport != dport {
            continue;
        }
        for e in v {
            m.entry(e.backend).or_default().insert(k);
        }
    }
    m
}

fn udp_config(backends: &[(u8, Option<u32>)], second_vip: &[u8]) -> String {
    let list = |bs: &mut dyn Iterator<Item = String>| bs.collect::<Vec<_>>().join(", ");
    let mut first = backends.iter().map(|(i, w)| {
        let weight = w.map(|w| format!(", weight = {w}")).unwrap_or_default();
        format!(
            "{{ address = \"{}\", port = {BACKEND_PORT}{weight} }}",
            backend_v4(*i)
        )
    });
    let mut second = second_vip.iter().map(|i| {
        format!(
            "{{ address = \"{}\", port = {BACKEND_PORT} }}",
            backend_v4(*i)
        )
    });
    format!(
        "interfaces = [\"ext\"]\n\
         [[vips]]\naddress = \"{VIP_V4}\"\nports = [{PORT}]\nprotocols = [\"udp\"]\n\
         maglev_table_size = 251\nbackends = [{}]\n\
         [[vips]]\naddress = \"{VIP_V4}\"\nports = [{}]\nprotocols = [\"udp\"]\n\
         maglev_table_size = 251\nbackends = [{}]\n",
        list(&mut first),
        PORT + 1,
        list(&mut second)
    )
}

/// Reloads through `Plan::diff`/`apply`: draining a backend (weight 0) keeps its flows in
/// the connection table (they keep reaching it); removing it evicts exactly its entries, and
/// its flows move on through Maglev; a backend removed from one VIP but kept by another loses
/// only that VIP's flows; `evict_backend_flows` reports how many it evicted.
#[test]
fn removed_backends_lose_their_flows_drained_ones_keep_them() -> Result<()> {
    with_bare(|lb| {
        let all = [(0, None), (1, None), (2, None)];
        let plan = reload(lb, &Plan::default(), &udp_config(&all, &[0, 1, 2]))?;
        let flows = |port: u16| -> Vec<Pkt> {
            (0..45u16)
                .map(|n| Pkt::udp(v4(3, n as u8), VIP_V4, 20000 + n, port).payload([n as u8; 16]))
                .collect()
        };
        let vip_index =
            |plan: &Plan, port: u16| plan.vips.iter().find(|v| v.key.port == port).unwrap().index;
        for port in [PORT, PORT + 1] {
            let index = vip_index(&plan, port);
            for p in flows(port) {
                let id = maglev_pick(lb, &p);
                expect_to(lb, "first datagram", &p, &[Maglev], id, index);
            }
        }
        let before = entries_by_backend(&lb.dp, PORT);
        let before_b = entries_by_backend(&lb.dp, PORT + 1);
        assert_eq!(
            before.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2],
            "flows on every backend"
        );
        assert_eq!(before.values().map(|s| s.len()).sum::<usize>(), 45);

        // Drain backend 1: nothing evicted, its flows still reach it.
        let drained = reload(
            lb,
            &plan,
            &udp_config(&[(0, None), (1, Some(0)), (2, None)], &[0, 1, 2]),
        )?;
        assert_eq!(
            entries_by_backend(&lb.dp, PORT),
            before,
            "draining evicts nothing"
        );
        let index = vip_index(&drained, PORT);
        for p in flows(PORT) {
            let k = p.flow_key();
            if before[&1].contains(&k) {
                expect_to(
                    lb,
                    "drained backend keeps its flow",
                    &p,
                    &[LruHit],
                    1,
                    index,
                );
            }
        }

        // Remove backend 1 altogether: exactly its entries go.
        let removed = reload(lb, &drained, &udp_config(&[(0, None), (2, None)], &[0, 2]))?;
        let after = entries_by_backend(&lb.dp, PORT);
        assert_eq!(after.get(&1), None, "no entry names the removed backend");
        assert_eq!(after.get(&0), before.get(&0));
        assert_eq!(after.get(&2), before.get(&2));
        assert_eq!(entries_by_backend(&lb.dp, PORT + 1).get(&1), None);
        for p in flows(PORT) {
            if before[&1].contains(&p.flow_key()) {
                let id = maglev_pick(lb, &p);
                assert_ne!(id, 1);
                expect_to(lb, "evicted flow re-hashed", &p, &[Maglev], id, index);
                assert_eq!(
                    lb.dp.conn_entries(&p.flow_key()),
                    vec![ConnEntry {
                        backend: id,
                        flags: lb_common::CONN_F_VALID
                    }]
                );
            }
        }

        // Backend 0 leaves the first VIP only: its flows there go, the second VIP's stay.
        let before_b = {
            let mut b = before_b;
            b.remove(&1);
            b
        };
        let moved = reload(lb, &removed, &udp_config(&[(2, None)], &[0, 2]))?;
        let after = entries_by_backend(&lb.dp, PORT);
        assert_eq!(after.get(&0), None, "backend 0's flows of the first VIP");
        assert_eq!(
            entries_by_backend(&lb.dp, PORT + 1).get(&0),
            before_b.get(&0),
            "backend 0's flows of the second VIP stay"
        );
        assert!(
            moved.backends.iter().any(|b| b.id == 0),
            "backend 0 is still in use"
        );

        // The direct API: evict everything naming backend 2, with the count.
        let expect = entries_by_backend(&lb.dp, PORT)
            .get(&2)
            .map_or(0, |s| s.len())
            + entries_by_backend(&lb.dp, PORT + 1)
                .get(&2)
                .map_or(0, |s| s.len());
        assert!(expect > 0);
        assert_eq!(lb.dp.evict_backend_flows(2)?, expect);
        assert_eq!(lb.dp.evict_backend_flows(2)?, 0);
        assert!(
            lb.dp
                .conn_table()
                .iter()
                .all(|(_, v)| v.iter().all(|e| e.backend != 2)),
            "no entry names backend 2"
        );
        Ok(())
    })
}

/// Several backends leaving at once are evicted in one walk of the connection table
/// (`apply` batches a run of `EvictVipFlows`, and a run of `ClearBackend`): exactly their
/// flows go, first from one VIP while the other keeps them, then altogether.
#[test]
fn backends_leaving_together_lose_exactly_their_flows() -> Result<()> {
    with_bare(|lb| {
        let all = [(0, None), (1, None), (2, None)];
        let plan = reload(lb, &Plan::default(), &udp_config(&all, &[0, 1, 2]))?;
        for port in [PORT, PORT + 1] {
            let index = plan.vips.iter().find(|v| v.key.port == port).unwrap().index;
            for n in 0..45u16 {
                let p = Pkt::udp(v4(3, n as u8), VIP_V4, 20000 + n, port).payload([n as u8; 16]);
                let id = maglev_pick(lb, &p);
                expect_to(lb, "first datagram", &p, &[Maglev], id, index);
            }
        }
        let before = entries_by_backend(&lb.dp, PORT);
        let before_b = entries_by_backend(&lb.dp, PORT + 1);
        for b in [0, 1, 2] {
            assert!(before.contains_key(&b) && before_b.contains_key(&b), "{b}");
        }

        // The diffs hold the runs this test is about.
        let count = |prev: &Plan, text: &str, kind: fn(&Change) -> bool| -> Result<usize> {
            let cfg = Config::parse(text, "policy.toml", Path::new("."))?;
            let next = Plan::build(&cfg, Some(prev))?;
            Ok(Plan::diff(prev, &next).iter().filter(|c| kind(c)).count())
        };

        // 0 and 1 leave the first VIP only: two EvictVipFlows in a row.
        let text = udp_config(&[(2, None)], &[0, 1, 2]);
        let evict = |c: &Change| matches!(c, Change::EvictVipFlows { .. });
        assert_eq!(count(&plan, &text, evict)?, 2);
        let left = reload(lb, &plan, &text)?;
        let after = entries_by_backend(&lb.dp, PORT);
        assert_eq!(after.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(after.get(&2), before.get(&2));
        assert_eq!(
            entries_by_backend(&lb.dp, PORT + 1),
            before_b,
            "second VIP untouched"
        );

        // Then they leave altogether: two ClearBackends in a row.
        let text = udp_config(&[(2, None)], &[2]);
        let clear = |c: &Change| matches!(c, Change::ClearBackend { .. });
        assert_eq!(count(&left, &text, clear)?, 2);
        reload(lb, &left, &text)?;
        let after_b = entries_by_backend(&lb.dp, PORT + 1);
        assert_eq!(after_b.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(after_b.get(&2), before_b.get(&2));
        assert_eq!(entries_by_backend(&lb.dp, PORT).get(&2), before.get(&2));
        Ok(())
    })
}
