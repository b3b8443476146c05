//! The reply table (`LB_REPLIES`) across both programs: the XDP program records every flow
//! it steers, and the reverse NAT rewrites only the replies of recorded flows, each from the
//! VIP its client used. BPF_PROG_TEST_RUN fixtures sharing the maps of one loaded object:
//! client packets through `lb_xdp`, then the backend's replies through `lb_tc_rnat`.
//!
//! ```sh
//! cargo test -p lb-tests --test reply_flows -- --test-threads=1
//! ```

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, ensure};
use lb_common::{
    PROTO_TCP, PROTO_UDP, REPLY_F_CLOSING, REPLY_F_REPLIED, Reason::*, ReplyNat, RnatReason,
    reply::ReplyTimeouts,
};
use lb_lab::{
    packet::{Packet, hex, hex_diff, quic, tcp_flags, verify_checksums},
    testbed::{fixture::*, *},
};
use lb_userspace::dataplane::{LoadOptions, RunResult, monotonic_ns};
use support::fixture::*;

const TC_ACT_OK: u32 = 0;
const SECOND: u64 = 1_000_000_000;

/// The reply of backend `id` (standard fixture ids) to the client of `p`, as it enters the
/// node on `be`.
fn reply_to(p: &Pkt, id: u32, flags: Option<u8>) -> Pkt {
    let (addr, mac) = backend_of(id);
    let r = Pkt::udp(addr, p.src, BACKEND_PORT, p.sport)
        .macs(mac, BE_MAC)
        .payload(b"from the backend");
    match (p.proto, flags) {
        (Proto::Tcp(_), Some(f)) => Pkt {
            proto: Proto::Tcp(f),
            ..r
        },
        (Proto::Tcp(_), None) => Pkt {
            proto: Proto::Tcp(tcp_flags::ACK),
            ..r
        },
        (Proto::Udp, _) => r,
    }
}

/// The reply as the client must get it: from `vip`:443.
fn from_vip(r: &Pkt, vip: IpAddr) -> Vec<u8> {
    Pkt {
        src: vip,
        sport: VIP_PORT,
        ..r.clone()
    }
    .bytes()
}

/// Run a reply through the reverse NAT (forwarding off: TC_ACT_OK either way) and require
/// exactly `want` out and exactly `reason` counted.
fn tc(lb: &mut Lb, what: &str, pkt: &[u8], want: &[u8], reason: RnatReason) -> RunResult {
    let before = lb.dp.rnat_stats().expect("reading LB_RNAT_STATS");
    let r = lb
        .dp
        .test_run_rnat(pkt)
        .unwrap_or_else(|e| panic!("{what}: TC test run failed: {e}"));
    let d = lb
        .dp
        .rnat_stats()
        .expect("reading LB_RNAT_STATS")
        .delta(&before);
    assert_eq!(
        r.verdict,
        TC_ACT_OK,
        "{what}: verdict; moved {:?}",
        d.nonzero()
    );
    assert!(
        r.data == want,
        "{what}: output differs\n{}\nexpected: {}\ngot:      {}",
        hex_diff(want, &r.data),
        hex(want),
        hex(&r.data)
    );
    if want != pkt {
        verify_checksums(&r.data).unwrap_or_else(|e| panic!("{what}: bad checksums: {e}"));
    }
    for x in RnatReason::ALL {
        assert_eq!(
            d.packets(x),
            u64::from(x == reason),
            "{what}: counter {}; moved {:?}",
            x.name(),
            d.nonzero()
        );
    }
    r
}

fn entry(lb: &Lb, reply: &Pkt) -> Option<ReplyNat> {
    let proto = match reply.proto {
        Proto::Udp => PROTO_UDP,
        Proto::Tcp(_) => PROTO_TCP,
    };
    lb.dp.reply_flow(
        SocketAddr::new(reply.src, reply.sport),
        SocketAddr::new(reply.dst, reply.dport),
        proto,
    )
}

/// A TCP connection through the VIP: the SYN records the flow (before the backend could
/// answer), the SYN-ACK and later replies leave from the VIP and mark the entry replied;
/// the same backend port answering anyone else (the node's kubelet, another pod) is left
/// alone.
#[test]
fn xdp_records_the_steered_flow_and_only_its_replies_are_rewritten() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let syn = Pkt::tcp(CLIENT_V4, VIP_V4, 40000, VIP_PORT, tcp_flags::SYN);
        let id = maglev_pick(lb, &syn);
        let before = monotonic_ns();
        expect_redirect(lb, "SYN", &syn, &[Maglev], id);
        let syn_ack = reply_to(&syn, id, Some(tcp_flags::SYN | tcp_flags::ACK));
        let e = entry(lb, &syn_ack).context("the SYN recorded no reply entry")?;
        assert_eq!(&e.vip[..4], &VIP_V4.octets());
        assert_eq!((e.vip_port, e.backend, e.flags), (VIP_PORT, id, 0));
        assert_eq!(e.vip_index, VIP_V4_TCP);
        ensure!(
            e.last_ns + SECOND > before && e.last_ns <= monotonic_ns(),
            "stamped {} around {before}",
            e.last_ns
        );
        tc(
            lb,
            "SYN-ACK",
            &syn_ack.bytes(),
            &from_vip(&syn_ack, VIP_V4.into()),
            RnatReason::Rewritten,
        );
        assert_eq!(entry(lb, &syn_ack).map(|e| e.flags), Some(REPLY_F_REPLIED));
        // The client's ACK: pinned by the connection table, no second record needed.
        let ack = Pkt::tcp(CLIENT_V4, VIP_V4, 40000, VIP_PORT, tcp_flags::ACK);
        expect_redirect(lb, "ACK", &ack, &[LruHit], id);
        // A probe from the node to the same backend port, and another pod talking to it:
        // their answers are not lb's.
        for (what, dst) in [
            ("answer to the node (kubelet)", Ipv4Addr::new(198, 19, 0, 1)),
            ("answer to another pod", backend_v4(2)),
        ] {
            let r = Pkt {
                dst: dst.into(),
                dport: 51000,
                ..syn_ack.clone()
            };
            tc(lb, what, &r.bytes(), &r.bytes(), RnatReason::PassNotSteered);
        }
        // The same client from another port is another flow (not steered yet).
        let other = Pkt {
            dport: 40001,
            ..syn_ack.clone()
        };
        tc(
            lb,
            "another client port",
            &other.bytes(),
            &other.bytes(),
            RnatReason::PassNotSteered,
        );
        Ok(())
    })
}

/// QUIC routed by connection ID keeps no connection-table state, so every packet records
/// (a lookup when the entry is there): a client that migrates to a new port gets a new
/// entry, and replies to both paths leave from the VIP.
#[test]
fn quic_routed_by_cid_records_each_client_path() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        for port in [40000u16, 40001] {
            let p = Pkt::udp(CLIENT_V4, VIP_V4, port, VIP_PORT)
                .payload(quic::short(&dcid(1, [9; 6]), 48));
            expect_redirect(
                lb,
                &format!("short header from {port}"),
                &p,
                &[RoutedCid],
                1,
            );
            expect_redirect(lb, &format!("again from {port}"), &p, &[RoutedCid], 1);
            let r = reply_to(&p, 1, None);
            tc(
                lb,
                &format!("reply to {port}"),
                &r.bytes(),
                &from_vip(&r, VIP_V4.into()),
                RnatReason::Rewritten,
            );
        }
        assert_eq!(lb.dp.reply_flows().len(), 2, "{:?}", lb.dp.reply_flows());
        Ok(())
    })
}

/// One pod port behind two IPv4 VIPs and an IPv6 one: every client hears from the address
/// it used. (A client using the same address and port through two VIPs to the same pod
/// port is indistinguishable to the pod itself; lb then answers from the VIP used last.)
#[test]
fn one_pod_port_answers_for_any_number_of_vips() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let vip2: IpAddr = Ipv4Addr::new(198, 18, 0, 102).into();
        let backends: Vec<(u32, IpAddr)> = (0..BACKENDS)
            .map(|i| (v4_backend_id(i), IpAddr::from(backend_v4(i))))
            .collect();
        let second = Vip {
            addr: vip2,
            port: VIP_PORT,
            proto: PROTO_UDP,
            index: 9,
            flags: lb_common::VIP_F_QUIC_LB,
        };
        publish(&mut lb.dp, &second, &backends, RING)?;
        lb.dp.set_quic_config(9, &quic_config(QUIC_CR))?;
        for i in 0..BACKENDS {
            lb.dp
                .set_server_id(9, QUIC_CR, &server_id_under(QUIC_CR, i), v4_backend_id(i))?;
        }
        let cid = quic::short(&dcid(0, [5; 6]), 48);
        let a = Pkt::udp(CLIENT_V4, VIP_V4, 40000, VIP_PORT).payload(&cid);
        let b = Pkt::udp(Ipv4Addr::new(198, 18, 0, 3), vip2, 40000, VIP_PORT).payload(&cid);
        let c = Pkt::udp(CLIENT_V6, VIP_V6, 40000, VIP_PORT).payload(&cid);
        expect_redirect(lb, "client A via VIP 1", &a, &[RoutedCid], 0);
        expect_redirect_on(lb, "client B via VIP 2", &b, &[RoutedCid], 0, 9);
        expect_redirect(lb, "client C via the IPv6 VIP", &c, &[RoutedCid], 3);
        for (what, p, id, vip) in [
            ("to A", &a, 0, IpAddr::from(VIP_V4)),
            ("to B", &b, 0, vip2),
            ("to C", &c, 3, IpAddr::from(VIP_V6)),
        ] {
            let r = reply_to(p, id, None);
            tc(
                lb,
                what,
                &r.bytes(),
                &from_vip(&r, vip),
                RnatReason::Rewritten,
            );
        }
        // Client A's address and port through VIP 2 as well: the latest VIP wins.
        let a2 = Pkt {
            dst: vip2,
            ..a.clone()
        };
        expect_redirect_on(lb, "client A via VIP 2", &a2, &[RoutedCid], 0, 9);
        let r = reply_to(&a, 0, None);
        tc(
            lb,
            "to A after VIP 2",
            &r.bytes(),
            &from_vip(&r, vip2),
            RnatReason::Rewritten,
        );
        Ok(())
    })
}

/// A full reply table refuses new flows, counted, and never takes an entry from an
/// established flow: those keep flowing both ways. The sweep makes room again.
#[test]
fn a_full_reply_table_refuses_new_flows_and_keeps_established_ones() -> Result<()> {
    const CAPACITY: u32 = 8;
    let sizes = LoadOptions {
        reply_flows: CAPACITY,
        ..LoadOptions::compact()
    };
    with_lb_sized(RING, FibCache::Off, sizes, |lb| {
        assert_eq!(lb.dp.reply_capacity(), CAPACITY);
        let syn = |port| Pkt::tcp(CLIENT_V4, VIP_V4, port, VIP_PORT, tcp_flags::SYN);
        let mut established = Vec::new();
        for port in 30000..30000 + CAPACITY as u16 {
            let p = syn(port);
            let id = maglev_pick(lb, &p);
            expect_redirect(lb, &format!("SYN {port}"), &p, &[Maglev], id);
            established.push((port, id));
        }
        assert_eq!(lb.dp.reply_flows().len(), CAPACITY as usize);
        // A flood of new flows: every one dropped and counted, per VIP.
        for port in 31000..31016u16 {
            let p = syn(port);
            let id = maglev_pick(lb, &p);
            let pkt = p.bytes();
            lb.check(
                &format!("SYN {port} into a full table"),
                &pkt,
                Want {
                    verdict: XDP_DROP,
                    out: &pkt,
                    reasons: &[Maglev, DropFlowTableFull],
                    vip: Some(VIP_V4_TCP),
                    backend: None,
                },
            );
            let _ = id;
        }
        // QUIC from a new client needs an entry too: dropped, not sent where its replies
        // could not be rewritten.
        let q =
            Pkt::udp(CLIENT_V4, VIP_V4, 42000, VIP_PORT).payload(quic::short(&dcid(0, [1; 6]), 48));
        let pkt = q.bytes();
        lb.check(
            "QUIC into a full table",
            &pkt,
            Want {
                verdict: XDP_DROP,
                out: &pkt,
                reasons: &[RoutedCid, DropFlowTableFull],
                vip: Some(VIP_V4_QUIC),
                backend: None,
            },
        );
        // The established flows carry on in both directions.
        for (port, id) in &established {
            let ack = Pkt::tcp(CLIENT_V4, VIP_V4, *port, VIP_PORT, tcp_flags::ACK);
            expect_redirect(lb, &format!("ACK {port}"), &ack, &[LruHit], *id);
            let r = reply_to(&ack, *id, None);
            tc(
                lb,
                &format!("reply {port}"),
                &r.bytes(),
                &from_vip(&r, VIP_V4.into()),
                RnatReason::Rewritten,
            );
        }
        // The sweep frees what is idle (here: everything, an hour from now); the refused
        // client's retry gets through.
        let swept = lb
            .dp
            .sweep_replies(monotonic_ns() + 7 * 3600 * SECOND, &ReplyTimeouts::DEFAULT)?;
        assert_eq!(swept.expired, CAPACITY as usize, "{swept:?}");
        let p = syn(31000);
        let id = maglev_pick(lb, &p);
        expect_redirect(lb, "SYN 31000 retried after the sweep", &p, &[Maglev], id);
        Ok(())
    })
}

/// The flags and the timestamp the sweep judges by: a reply marks the entry replied, a FIN
/// or RST from either side marks it closing, and each state has its own idle timeout. A
/// swept flow loses its connection-table entry too, so its next packet records it again.
#[test]
fn entries_age_by_state_and_the_sweep_removes_the_flow_whole() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let t = ReplyTimeouts {
            tcp_ns: 600 * SECOND,
            udp_ns: 120 * SECOND,
            unreplied_ns: 30 * SECOND,
            closing_ns: 10 * SECOND,
        };
        let syn = Pkt::tcp(CLIENT_V4, VIP_V4, 40000, VIP_PORT, tcp_flags::SYN);
        let id = maglev_pick(lb, &syn);
        expect_redirect(lb, "SYN", &syn, &[Maglev], id);
        let syn_ack = reply_to(&syn, id, Some(tcp_flags::SYN | tcp_flags::ACK));
        let stamp = entry(lb, &syn_ack).context("recorded")?.last_ns;
        // Unreplied: 30 s.
        assert_eq!(lb.dp.sweep_replies(stamp + 29 * SECOND, &t)?.expired, 0);
        tc(
            lb,
            "SYN-ACK",
            &syn_ack.bytes(),
            &from_vip(&syn_ack, VIP_V4.into()),
            RnatReason::Rewritten,
        );
        // Replied TCP: 600 s here.
        assert_eq!(lb.dp.sweep_replies(stamp + 300 * SECOND, &t)?.expired, 0);
        // The client's FIN (pinned by the table, but a FIN records again): closing.
        let fin = Pkt::tcp(
            CLIENT_V4,
            VIP_V4,
            40000,
            VIP_PORT,
            tcp_flags::FIN | tcp_flags::ACK,
        );
        expect_redirect(lb, "FIN", &fin, &[LruHit], id);
        let e = entry(lb, &syn_ack).context("still recorded")?;
        assert_eq!(e.flags, REPLY_F_REPLIED | REPLY_F_CLOSING);
        assert!(!lb.dp.conn_entries(&syn.flow_key()).is_empty());
        // Closing: 10 s after the last reply.
        assert_eq!(lb.dp.sweep_replies(e.last_ns + 9 * SECOND, &t)?.expired, 0);
        assert_eq!(lb.dp.sweep_replies(e.last_ns + 11 * SECOND, &t)?.expired, 1);
        assert!(entry(lb, &syn_ack).is_none());
        assert!(
            lb.dp.conn_entries(&syn.flow_key()).is_empty(),
            "the connection-table entry must go with the reply entry"
        );
        // A server-side RST closes a flow too.
        let syn2 = Pkt::tcp(CLIENT_V4, VIP_V4, 40002, VIP_PORT, tcp_flags::SYN);
        let id2 = maglev_pick(lb, &syn2);
        expect_redirect(lb, "SYN 2", &syn2, &[Maglev], id2);
        let rst = reply_to(&syn2, id2, Some(tcp_flags::RST | tcp_flags::ACK));
        tc(
            lb,
            "RST",
            &rst.bytes(),
            &from_vip(&rst, VIP_V4.into()),
            RnatReason::Rewritten,
        );
        assert_eq!(
            entry(lb, &rst).map(|e| e.flags),
            Some(REPLY_F_REPLIED | REPLY_F_CLOSING)
        );
        // UDP: 30 s unreplied, 120 s once answered.
        let u = Pkt::udp(CLIENT_V4, VIP_V4, 53001, PLAIN_UDP_PORT).payload([1u8; 20]);
        let uid = maglev_pick(lb, &u);
        expect_redirect(lb, "UDP", &u, &[Maglev], uid);
        let ur = reply_to(&u, uid, None);
        let ur = Pkt {
            sport: BACKEND_PORT,
            ..ur
        };
        let stamp = entry(lb, &ur).context("UDP recorded")?.last_ns;
        let udp_flows = |lb: &Lb| {
            lb.dp
                .reply_flows()
                .into_iter()
                .filter(|(k, _)| k.proto == PROTO_UDP)
                .count()
        };
        lb.dp.sweep_replies(stamp + 29 * SECOND, &t)?;
        assert_eq!(udp_flows(lb), 1);
        tc(
            lb,
            "UDP reply",
            &ur.bytes(),
            &Pkt {
                src: VIP_V4.into(),
                sport: PLAIN_UDP_PORT,
                ..ur.clone()
            }
            .bytes(),
            RnatReason::Rewritten,
        );
        let stamp = entry(lb, &ur).context("UDP still recorded")?.last_ns;
        lb.dp.sweep_replies(stamp + 119 * SECOND, &t)?;
        assert_eq!(udp_flows(lb), 1);
        lb.dp.sweep_replies(stamp + 121 * SECOND, &t)?;
        assert_eq!(udp_flows(lb), 0);
        // Its next packet records it again (the table entry went with it: Maglev anew).
        expect_redirect(lb, "UDP after the sweep", &u, &[Maglev], uid);
        assert_eq!(udp_flows(lb), 1);
        Ok(())
    })
}

/// Replies refresh the entry's timestamp, at most once a second, so a busy flow does not
/// write a shared cache line on every reply.
#[test]
fn replies_refresh_the_timestamp_at_most_once_a_second() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let p =
            Pkt::udp(CLIENT_V4, VIP_V4, 40000, VIP_PORT).payload(quic::short(&dcid(2, [3; 6]), 48));
        expect_redirect(lb, "client", &p, &[RoutedCid], 2);
        let r = reply_to(&p, 2, None);
        let backend = SocketAddr::new(r.src, r.sport);
        let client = SocketAddr::new(r.dst, r.dport);
        // Make the entry look five seconds old.
        let mut e = entry(lb, &r).context("recorded")?;
        let old = e.last_ns - 5 * SECOND;
        e.last_ns = old;
        lb.dp.set_reply_nat(backend, client, PROTO_UDP, &e)?;
        let want = from_vip(&r, VIP_V4.into());
        tc(lb, "first reply", &r.bytes(), &want, RnatReason::Rewritten);
        let fresh = entry(lb, &r).context("recorded")?.last_ns;
        ensure!(
            fresh >= old + 5 * SECOND - SECOND / 10,
            "refreshed to {fresh}, was {old}"
        );
        // Made one second old again minus a hair: the next reply leaves it alone.
        let mut e = entry(lb, &r).context("recorded")?;
        e.last_ns = monotonic_ns() - SECOND / 2;
        let kept = e.last_ns;
        lb.dp.set_reply_nat(backend, client, PROTO_UDP, &e)?;
        tc(lb, "second reply", &r.bytes(), &want, RnatReason::Rewritten);
        assert_eq!(entry(lb, &r).context("recorded")?.last_ns, kept);
        Ok(())
    })
}

/// Spoofed or stray packets claiming to come from a backend: nothing is rewritten unless
/// their exact 5-tuple belongs to a steered flow.
#[test]
fn spoofed_replies_from_a_backend_address_pass_untouched() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let syn = Pkt::tcp(CLIENT_V4, VIP_V4, 40000, VIP_PORT, tcp_flags::SYN);
        let id = maglev_pick(lb, &syn);
        expect_redirect(lb, "SYN", &syn, &[Maglev], id);
        let genuine = reply_to(&syn, id, Some(tcp_flags::SYN | tcp_flags::ACK));
        let (other_id, _) = ((id + 1) % 3, ());
        let (other_addr, _) = backend_of(other_id);
        for (what, r) in [
            (
                "another backend's address, same ports",
                Pkt {
                    src: other_addr,
                    ..genuine.clone()
                },
            ),
            (
                "UDP on the TCP flow's ports",
                Pkt {
                    proto: Proto::Udp,
                    ..genuine.clone()
                },
            ),
            (
                "the backend's address from another port",
                Pkt {
                    sport: BACKEND_PORT + 1,
                    ..genuine.clone()
                },
            ),
            (
                "to an address no client used",
                Pkt {
                    dst: Ipv4Addr::new(198, 18, 9, 9).into(),
                    ..genuine.clone()
                },
            ),
        ] {
            tc(lb, what, &r.bytes(), &r.bytes(), RnatReason::PassNotSteered);
        }
        // A non-TCP/UDP packet from the backend, and one built by hand with garbage ports.
        let raw = Packet::eth(backend_mac(0), BE_MAC)
            .ipv4(backend_v4(0), CLIENT_V4)
            .raw(47)
            .payload([0u8; 16])
            .build();
        tc(
            lb,
            "GRE from the backend",
            &raw,
            &raw,
            RnatReason::PassNotSteered,
        );
        assert_eq!(lb.dp.reply_flows().len(), 1);
        Ok(())
    })
}
