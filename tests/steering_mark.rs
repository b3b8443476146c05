//! The steering mark (`lb_common::mark`): a node that steers a flow to a backend behind
//! another node marks its packets with the VIP (an IPv4 option, an IPv6 destination
//! option); the node in front of the backend records the flow, removes the mark and
//! delivers the packet, so its reverse NAT answers from the VIP. A packet the mark would
//! make too big for the egress MTU is answered with ICMP. BPF_PROG_TEST_RUN fixtures with
//! exact bytes, checksums and counters.
//!
//! In the testbed, the reverse NAT is attached to `be` (its backends are local) and the
//! backend reached back out of `ext` (198.18.0.50 / fd00:18::50) stands for a pod on
//! another node.
//!
//! ```sh
//! cargo test -p lb-tests --test steering_mark -- --test-threads=1
//! ```

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use lb_common::{PROTO_TCP, PROTO_UDP, REPLY_F_PEER, REPLY_NO_BACKEND, Reason::*, csum, mark};
use lb_lab::{
    packet::{Packet, quic, tcp_flags, verify_checksums},
    testbed::{fixture::*, *},
};
use support::fixture::*;

/// Server index whose server ID the fixture maps to the backend behind the other node.
const PEER_SERVER: u8 = 0x4f;
/// The MTU of `ext`, towards the other node.
const EXT_MTU: usize = 1500;

/// The standard fixture, plus: the reverse NAT on `be`, marking on, and the peer backend
/// reachable by a server ID on both QUIC VIPs.
fn with_marking(f: impl FnOnce(&mut Lb) -> Result<()>) -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        lb.dp.attach_rnat(lb.tb.be_ifindex)?;
        lb.dp.set_mark_remote(true)?;
        assert_eq!(lb.dp.backend_ifindexes(), vec![lb.tb.be_ifindex]);
        for (vip, id) in [(VIP_V4_QUIC, TX_V4_ID), (VIP_V6_QUIC, TX_V6_ID)] {
            lb.dp
                .set_server_id(vip, QUIC_CR, &server_id(PEER_SERVER), id)?;
        }
        f(lb)
    })
}

fn quic_to(client: IpAddr, vip: IpAddr, server: u8, payload_len: usize) -> Pkt {
    Pkt::udp(client, vip, 40000, VIP_PORT).payload(quic::short(&dcid(server, [7; 6]), payload_len))
}

/// `p` steered to the peer backend: DNAT, the mark for its VIP, back out of `ext` to the
/// next hop (XDP_TX).
fn marked_to_peer(p: &Pkt) -> Vec<u8> {
    let (addr, vip): (IpAddr, IpAddr) = match p.dst {
        IpAddr::V4(v) => (TX_BACKEND_V4.into(), v.into()),
        IpAddr::V6(v) => (TX_BACKEND_V6.into(), v.into()),
    };
    p.clone()
        .dnat(addr, BACKEND_PORT)
        .marked(vip, p.dport)
        .macs(EXT_MAC, TX_BACKEND_MAC)
        .bytes()
}

#[test]
fn packets_for_a_backend_behind_another_node_carry_the_mark() -> Result<()> {
    with_marking(|lb| {
        for (what, p, vip, id) in [
            (
                "v4 QUIC",
                quic_to(CLIENT_V4.into(), VIP_V4.into(), PEER_SERVER, 64),
                VIP_V4_QUIC,
                TX_V4_ID,
            ),
            (
                "v6 QUIC",
                quic_to(CLIENT_V6.into(), VIP_V6.into(), PEER_SERVER, 64),
                VIP_V6_QUIC,
                TX_V6_ID,
            ),
        ] {
            let out = marked_to_peer(&p);
            lb.check(
                what,
                &p.bytes(),
                Want {
                    verdict: XDP_TX,
                    out: &out,
                    reasons: &[RoutedCid, MarkedForPeer, Tx],
                    vip: Some(vip),
                    backend: Some(id),
                },
            );
            let extra = if p.dst.is_ipv4() {
                mark::IPV4_LEN
            } else {
                mark::IPV6_LEN
            };
            assert_eq!(out.len(), p.bytes().len() + extra, "{what}");
        }
        // TCP to a VIP whose only backend is behind the other node; a VLAN-tagged frame
        // keeps its tag going back out where it came from.
        let vip: IpAddr = Ipv4Addr::new(198, 18, 0, 110).into();
        publish_single(lb, vip, 80, PROTO_TCP, 12, (TX_V4_ID, TX_BACKEND_V4.into()))?;
        for vlan in [None, Some(42)] {
            let mut syn = Pkt::tcp(
                CLIENT_V4,
                vip,
                40000 + vlan.unwrap_or(0),
                80,
                tcp_flags::SYN,
            );
            syn.vlan = vlan;
            let out = syn
                .clone()
                .dnat(TX_BACKEND_V4, BACKEND_PORT)
                .marked(vip, 80)
                .macs(EXT_MAC, TX_BACKEND_MAC)
                .bytes();
            lb.check(
                &format!("TCP SYN, VLAN {vlan:?}"),
                &syn.bytes(),
                Want {
                    verdict: XDP_TX,
                    out: &out,
                    reasons: &[Maglev, MarkedForPeer, Tx],
                    vip: Some(12),
                    backend: Some(TX_V4_ID),
                },
            );
        }
        // A client's packet that already has IPv4 options: the mark goes first.
        let mut opts = quic_to(CLIENT_V4.into(), VIP_V4.into(), PEER_SERVER, 64);
        opts.ip_options = vec![0x94, 0x04, 0x00, 0x00];
        lb.check(
            "v4 with options",
            &opts.bytes(),
            Want {
                verdict: XDP_TX,
                out: &marked_to_peer(&opts),
                reasons: &[RoutedCid, MarkedForPeer, Tx],
                vip: Some(VIP_V4_QUIC),
                backend: Some(TX_V4_ID),
            },
        );
        // Backends behind `be` are this node's own: no mark.
        let local = quic_to(CLIENT_V4.into(), VIP_V4.into(), 1, 64);
        expect_redirect(lb, "local backend", &local, &[RoutedCid], 1);
        // This node records the flow too (replies might come back through it).
        let e = lb
            .dp
            .reply_flow(
                SocketAddr::new(TX_BACKEND_V4.into(), BACKEND_PORT),
                SocketAddr::new(CLIENT_V4.into(), 40000),
                PROTO_UDP,
            )
            .context("the marked flow is recorded here too")?;
        assert_eq!(e.backend, TX_V4_ID);
        Ok(())
    })
}

#[test]
fn marking_off_sends_packets_unmarked() -> Result<()> {
    with_marking(|lb| {
        lb.dp.set_mark_remote(false)?;
        let p = quic_to(CLIENT_V4.into(), VIP_V4.into(), PEER_SERVER, 64);
        let out = p
            .clone()
            .dnat(TX_BACKEND_V4, BACKEND_PORT)
            .macs(EXT_MAC, TX_BACKEND_MAC)
            .bytes();
        lb.check(
            "marking off",
            &p.bytes(),
            Want {
                verdict: XDP_TX,
                out: &out,
                reasons: &[RoutedCid, Tx],
                vip: Some(VIP_V4_QUIC),
                backend: Some(TX_V4_ID),
            },
        );
        Ok(())
    })
}

/// The node in front of the backend: a marked packet for a local backend is recorded (the
/// reverse NAT here then answers from the VIP), unmarked and delivered.
#[test]
fn a_marked_packet_for_a_local_backend_is_recorded_unmarked_and_delivered() -> Result<()> {
    with_marking(|lb| {
        for (what, client, backend, vip, vip_index, vlan) in [
            (
                "v4",
                IpAddr::from(CLIENT_V4),
                IpAddr::from(backend_v4(0)),
                IpAddr::from(VIP_V4),
                VIP_V4_QUIC,
                None,
            ),
            (
                "v6",
                CLIENT_V6.into(),
                backend_v6(0).into(),
                VIP_V6.into(),
                VIP_V6_QUIC,
                None,
            ),
            (
                "v4 VLAN",
                CLIENT_V4.into(),
                backend_v4(0).into(),
                VIP_V4.into(),
                VIP_V4_QUIC,
                Some(7),
            ),
            (
                "v6 VLAN",
                CLIENT_V6.into(),
                backend_v6(0).into(),
                VIP_V6.into(),
                VIP_V6_QUIC,
                Some(7),
            ),
        ] {
            // One client port per case: each its own flow.
            let cport = 41000 + vlan.unwrap_or(0);
            let mut arriving = Pkt::udp(client, backend, cport, BACKEND_PORT)
                .payload(quic::short(&dcid(0, [1; 6]), 64))
                .marked(vip, VIP_PORT);
            arriving.vlan = vlan;
            let mut delivered = arriving.clone().macs(BE_MAC, backend_mac(0)).untagged();
            delivered.mark = None;
            lb.check(
                what,
                &arriving.bytes(),
                Want {
                    verdict: XDP_REDIRECT,
                    out: &delivered.bytes(),
                    reasons: &[FromPeer, Redirect],
                    vip: Some(vip_index),
                    backend: None,
                },
            );
            let e = lb
                .dp
                .reply_flow(
                    SocketAddr::new(backend, BACKEND_PORT),
                    SocketAddr::new(client, cport),
                    PROTO_UDP,
                )
                .with_context(|| format!("{what}: no reply entry"))?;
            assert_eq!(
                (e.flags, e.backend),
                (REPLY_F_PEER, REPLY_NO_BACKEND),
                "{what}"
            );
            assert_eq!(e.vip_index, vip_index, "{what}");
            // The pod's reply leaves from the VIP.
            let reply = Pkt::udp(backend, client, BACKEND_PORT, cport)
                .macs(backend_mac(0), BE_MAC)
                .payload(b"pong");
            let r = lb.dp.test_run_rnat(&reply.bytes())?;
            let want = Pkt {
                src: vip,
                sport: VIP_PORT,
                ..reply.clone()
            }
            .bytes();
            assert_eq!(r.data, want, "{what}: the reply must leave from the VIP");
        }
        // Other IPv4 options after the mark stay.
        let mut arriving = Pkt::tcp(
            CLIENT_V4,
            backend_v4(1),
            41001,
            BACKEND_PORT,
            tcp_flags::SYN,
        )
        .marked(VIP_V4, VIP_PORT);
        arriving.ip_options = vec![0x94, 0x04, 0x00, 0x00];
        let mut delivered = arriving.clone().macs(BE_MAC, backend_mac(1));
        delivered.mark = None;
        lb.check(
            "v4 with options after the mark",
            &arriving.bytes(),
            Want {
                verdict: XDP_REDIRECT,
                out: &delivered.bytes(),
                reasons: &[FromPeer, Redirect],
                vip: Some(VIP_V4_TCP),
                backend: None,
            },
        );
        Ok(())
    })
}

#[test]
fn marks_naming_no_vip_or_a_backend_elsewhere() -> Result<()> {
    with_marking(|lb| {
        // A VIP this node does not have (configuration not in sync yet, or forged): dropped.
        let forged = Pkt::udp(CLIENT_V4, backend_v4(0), 41000, BACKEND_PORT)
            .payload([0u8; 32])
            .marked(Ipv4Addr::new(198, 18, 0, 222), VIP_PORT);
        let pkt = forged.bytes();
        lb.check(
            "unknown VIP",
            &pkt,
            Want {
                verdict: XDP_DROP,
                out: &pkt,
                reasons: &[DropBadMark],
                vip: None,
                backend: None,
            },
        );
        // For a backend that is not behind this node: passed on, mark and all.
        for p in [
            Pkt::udp(CLIENT_V4, TX_BACKEND_V4, 41000, BACKEND_PORT)
                .payload([0u8; 32])
                .marked(VIP_V4, VIP_PORT),
            Pkt::udp(CLIENT_V6, TX_BACKEND_V6, 41000, BACKEND_PORT)
                .payload([0u8; 32])
                .marked(VIP_V6, VIP_PORT),
        ] {
            lb.check_untouched("a backend elsewhere", &p.bytes(), PassMarkTransit);
        }
        assert!(lb.dp.reply_flows().is_empty());
        // Options and destination options that are not a mark: as before.
        let mut ra = Pkt::udp(CLIENT_V4, backend_v4(0), 41000, BACKEND_PORT).payload([0u8; 8]);
        ra.ip_options = vec![0x94, 0x04, 0x00, 0x00];
        lb.check_untouched("router alert, no VIP", &ra.bytes(), PassNotVip);
        let dst6 = Packet::eth(CLIENT_MAC, EXT_MAC)
            .ipv6(CLIENT_V6, backend_v6(0))
            .dest_opts(&[0x1e, 18, 0, 0])
            .udp(41000, BACKEND_PORT)
            .payload([0u8; 8])
            .build();
        lb.check_untouched("another destination option", &dst6, PassIpv6Ext);
        Ok(())
    })
}

/// The ICMP message the client must get for `p` (as it arrived) when only `mtu` octets fit.
fn icmp_too_big(p: &Pkt, mtu: u32) -> Vec<u8> {
    let orig = p.bytes();
    let l3 = if p.vlan.is_some() { 18 } else { 14 };
    let b = Packet::eth(p.dmac, p.smac);
    let b = match p.vlan {
        Some(v) => b.vlan(v),
        None => b,
    };
    match (p.src, p.dst) {
        (IpAddr::V4(client), IpAddr::V4(vip)) => {
            let quote = &orig[l3..l3 + 28];
            let mut m = vec![3, 4, 0, 0, 0, 0];
            m.extend_from_slice(&(mtu as u16).to_be_bytes());
            m.extend_from_slice(quote);
            let c = csum::checksum(&m);
            m[2..4].copy_from_slice(&c.to_be_bytes());
            b.ipv4(vip, client).raw(1).payload(m).build()
        }
        (IpAddr::V6(client), IpAddr::V6(vip)) => {
            let quote = &orig[l3..l3 + 48];
            let mut m = vec![2, 0, 0, 0];
            m.extend_from_slice(&mtu.to_be_bytes());
            m.extend_from_slice(quote);
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&vip.octets());
            pseudo.extend_from_slice(&client.octets());
            pseudo.extend_from_slice(&(m.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            let c = !csum::fold(csum::sum_bytes(csum::sum_bytes(0, &pseudo), &m));
            m[2..4].copy_from_slice(&c.to_be_bytes());
            b.ipv6(vip, client).raw(58).payload(m).build()
        }
        _ => unreachable!(),
    }
}

/// A packet that fits the egress MTU but not with the mark: the client is told the MTU
/// that fits (by the VIP, quoting its packet), as a router would, and the backend gets
/// nothing. TCP then resends smaller segments; QUIC stacks probe their own path MTU.
#[test]
fn too_big_with_the_mark_is_answered_with_icmp() -> Result<()> {
    with_marking(|lb| {
        for (what, client, vip, vip_index, hdrs, mark_len) in [
            (
                "v4",
                IpAddr::from(CLIENT_V4),
                IpAddr::from(VIP_V4),
                VIP_V4_QUIC,
                28,
                mark::IPV4_LEN,
            ),
            (
                "v6",
                CLIENT_V6.into(),
                VIP_V6.into(),
                VIP_V6_QUIC,
                48,
                mark::IPV6_LEN,
            ),
        ] {
            // An IP packet of MTU - 3 octets: fits, but not with the mark.
            let payload = EXT_MTU - 3 - hdrs;
            let p = quic_to(client, vip, PEER_SERVER, payload - 1 - 9);
            assert_eq!(p.bytes().len(), 14 + EXT_MTU - 3, "test bug: {what} size");
            let out = icmp_too_big(&p, (EXT_MTU - mark_len) as u32);
            let r = lb.check(
                what,
                &p.bytes(),
                Want {
                    verdict: XDP_TX,
                    out: &out,
                    reasons: &[RoutedCid, IcmpTooBig],
                    vip: Some(vip_index),
                    backend: None,
                },
            );
            verify_checksums(&r.data).map_err(anyhow::Error::msg)?;
            // One octet less than what the ICMP names fits, marked.
            let fits = quic_to(client, vip, PEER_SERVER, payload - 1 - 9 - (mark_len - 3));
            lb.check(
                &format!("{what} at the MTU with the mark"),
                &fits.bytes(),
                Want {
                    verdict: XDP_TX,
                    out: &marked_to_peer(&fits),
                    reasons: &[RoutedCid, MarkedForPeer, Tx],
                    vip: Some(vip_index),
                    backend: Some(if client.is_ipv4() { TX_V4_ID } else { TX_V6_ID }),
                },
            );
        }
        // An IPv4 header with options cannot be quoted by a fixed-size copy: dropped.
        let mut opts = quic_to(
            CLIENT_V4.into(),
            VIP_V4.into(),
            PEER_SERVER,
            EXT_MTU - 3 - 28 - 4 - 10,
        );
        opts.ip_options = vec![0x94, 0x04, 0x00, 0x00];
        let pkt = opts.bytes();
        lb.check(
            "v4 with options, too big",
            &pkt,
            Want {
                verdict: XDP_DROP,
                out: &pkt,
                reasons: &[RoutedCid, DropTooBig],
                vip: Some(VIP_V4_QUIC),
                backend: None,
            },
        );
        Ok(())
    })
}

/// An IPv4 header already holding 40 octets of options has no room for the mark: dropped
/// and counted rather than sent where the reply could not be rewritten.
#[test]
fn no_room_for_the_mark_is_a_counted_drop() -> Result<()> {
    with_marking(|lb| {
        let mut full = quic_to(CLIENT_V4.into(), VIP_V4.into(), PEER_SERVER, 64);
        full.ip_options = [0x01u8; 40].to_vec();
        // Dropped after the DNAT: the destination is rewritten, the MACs are not.
        let out = full.clone().dnat(TX_BACKEND_V4, BACKEND_PORT).bytes();
        lb.check(
            "IHL 15",
            &full.bytes(),
            Want {
                verdict: XDP_DROP,
                out: &out,
                reasons: &[RoutedCid, DropAdjustFailed],
                vip: Some(VIP_V4_QUIC),
                backend: Some(TX_V4_ID),
            },
        );
        Ok(())
    })
}
