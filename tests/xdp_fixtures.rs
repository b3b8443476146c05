//! BPF_PROG_TEST_RUN fixtures for the XDP load balancer, in the Katran style: every case runs
//! the real object (through the real verifier) against the real kernel FIB of a scratch
//! namespace, and asserts the verdict, the exact output frame (built independently with the
//! packet builder), valid checksums on anything rewritten, and the complete set of counters
//! that moved: global and per VIP per reason, and per backend, packets and bytes.
//!
//! Run as root, single-threaded (the testbed pins the thread to one CPU because the
//! FIB cache is per-CPU):
//!
//! ```sh
//! cargo test -p lb-tests --test xdp_fixtures -- --test-threads=1
//! ```

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::Result;
use lb_common::{
    CONN_F_VALID, ConnEntry, FIB_CACHE_TTL_DEFAULT_NS, PROTO_TCP, PROTO_UDP,
    Reason::{self, *},
    VIP_F_QUIC_LB, VipMeta, fib_cache_slot,
    hash::flow_hash,
};
use lb_lab::{
    packet::{Ext6, Packet, hex, quic, tcp_flags, verify_checksums},
    testbed::{fixture::*, *},
};
use lb_userspace::{
    dataplane::{LoadOptions, backend, vip_key},
    maglev::{WeightedBackend, build_table},
};
use support::fixture::*;

/// The ring size of the standard fixture's VIPs (a prime; the largest ring before rings
/// were sized to their backends, so a slot per flow hash is spread over many).
const STANDARD_RING: u32 = 65537;

// ---- helpers --------------------------------------------------------------------------------

const NONCE: [u8; 6] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66];
/// A client-chosen Initial DCID: config rotation bits 0b110 name no config.
const CLIENT_DCID: [u8; 8] = [0xc7, 0x1f, 0x22, 0x9e, 0x41, 0x08, 0x5a, 0x33];
const OTHER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x77);

/// A QUIC short-header packet for `vip`:443 from the client, carrying `dcid`.
fn quic_short(src: impl Into<IpAddr>, vip: impl Into<IpAddr>, sport: u16, dcid: &[u8]) -> Pkt {
    Pkt::udp(src, vip, sport, VIP_PORT).payload(quic::short(dcid, 48))
}

fn v4_short(i: u8) -> Pkt {
    quic_short(CLIENT_V4, VIP_V4, 40000, &dcid(i, NONCE))
}

fn v6_short(i: u8) -> Pkt {
    quic_short(CLIENT_V6, VIP_V6, 40000, &dcid(i, NONCE))
}

fn conn(backend: u32) -> Vec<ConnEntry> {
    vec![ConnEntry {
        backend,
        flags: CONN_F_VALID,
    }]
}

/// Overwrite octets of a built packet (to make it inconsistent on purpose).
fn patched(b: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    v[at..at + bytes.len()].copy_from_slice(bytes);
    v
}

// ---- loading ----------------------------------------------------------------------------------

/// `Dataplane::load` succeeding means the kernel verifier accepted `lb_xdp`; every other test
/// depends on it too. Also checks the state `load` + `program_standard` leave behind.
#[test]
fn verifier_accepts_program() -> Result<()> {
    with_lb(RING, FibCache::Default, |lb| {
        let mut rings = Vec::new();
        assert_eq!(
            lb.dp.settings()?.fib_cache_ttl_ns,
            FIB_CACHE_TTL_DEFAULT_NS,
            "the FIB cache is on by default after load"
        );
        for (ip, port, proto, index, flags) in [
            (
                IpAddr::from(VIP_V4),
                VIP_PORT,
                PROTO_UDP,
                VIP_V4_QUIC,
                VIP_F_QUIC_LB,
            ),
            (VIP_V4.into(), VIP_PORT, PROTO_TCP, VIP_V4_TCP, 0),
            (
                VIP_V6.into(),
                VIP_PORT,
                PROTO_UDP,
                VIP_V6_QUIC,
                VIP_F_QUIC_LB,
            ),
            (VIP_V6.into(), VIP_PORT, PROTO_TCP, VIP_V6_TCP, 0),
            (
                VIP_V4.into(),
                PLAIN_UDP_PORT,
                PROTO_UDP,
                VIP_V4_PLAIN_UDP,
                0,
            ),
        ] {
            let meta = lb
                .dp
                .vip(&vip_key(ip, port, proto))
                .expect("VIP in LB_VIPS");
            assert_eq!(
                (meta.index, meta.flags, meta.ring_size),
                (index, flags, RING),
                "VIP {ip}:{port}/{proto}"
            );
            rings.push(meta.ring_offset);
        }
        // Each VIP's ring has its own slots of the pool.
        rings.sort();
        assert!(
            rings.windows(2).all(|w| w[1] - w[0] >= RING),
            "rings overlap: {rings:?}"
        );
        // And the loaded program runs: nothing has moved any counter yet.
        let s = Snapshot::take(&lb.dp);
        expect_counters("fresh load", &s.global, &[], Some(0));
        Ok(())
    })
}

// ---- not ours: passed untouched with exactly one Pass* reason -----------------------------------

#[test]
fn non_vip_destination_passes_untouched() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let v4 = quic_short(CLIENT_V4, OTHER_V4, 40000, &dcid(0, NONCE));
        lb.check_untouched("v4 non-VIP", &v4.bytes(), PassNotVip);
        let v6 = quic_short(CLIENT_V6, OTHER_V6, 40000, &dcid(0, NONCE));
        lb.check_untouched("v6 non-VIP", &v6.bytes(), PassNotVip);
        let tcp = Pkt::tcp(CLIENT_V4, OTHER_V4, 40000, VIP_PORT, tcp_flags::SYN);
        lb.check_untouched("tcp non-VIP", &tcp.bytes(), PassNotVip);
        Ok(())
    })
}

/// The VIP key is (address, port, protocol): the VIP address alone is not enough.
#[test]
fn vip_address_with_other_port_or_protocol_passes() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let cases = [
            ("v4 udp/444", Pkt::udp(CLIENT_V4, VIP_V4, 40000, 444)),
            (
                "v4 tcp/53 (53 is a UDP-only VIP)",
                Pkt::tcp(CLIENT_V4, VIP_V4, 40000, PLAIN_UDP_PORT, tcp_flags::SYN),
            ),
            (
                "v6 udp/53 (no v6 plain UDP VIP)",
                Pkt::udp(CLIENT_V6, VIP_V6, 40000, PLAIN_UDP_PORT),
            ),
            (
                "v6 tcp/80",
                Pkt::tcp(CLIENT_V6, VIP_V6, 40000, 80, tcp_flags::SYN),
            ),
        ];
        for (what, p) in cases {
            lb.check_untouched(what, &p.payload([1, 2, 3, 4]).bytes(), PassNotVip);
        }
        Ok(())
    })
}

/// Neither UDP nor TCP: not a VIP protocol, even to a VIP address.
#[test]
fn other_ip_protocols_to_vip_pass_not_vip() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let icmp = Packet::eth(CLIENT_MAC, EXT_MAC)
            .ipv4(CLIENT_V4, VIP_V4)
            .raw(1)
            .payload([8, 0, 0xf7, 0xff, 0, 0, 0, 0])
            .build();
        lb.check_untouched("ICMP echo to VIP", &icmp, PassNotVip);
        let gre = Packet::eth(CLIENT_MAC, EXT_MAC)
            .ipv4(CLIENT_V4, VIP_V4)
            .raw(47)
            .payload([0, 0, 0x08, 0, 1, 2, 3, 4])
            .build();
        lb.check_untouched("GRE to VIP", &gre, PassNotVip);
        let icmp6 = Packet::eth(CLIENT_MAC, EXT_MAC)
            .ipv6(CLIENT_V6, VIP_V6)
            .raw(58)
            .payload([128, 0, 0, 0, 0, 1, 0, 1])
            .build();
        lb.check_untouched("ICMPv6 echo to VIP", &icmp6, PassNotVip);
        Ok(())
    })
}

#[test]
fn non_ip_frames_pass_not_ip() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let arp_body: Vec<u8> = [
            &[0, 1, 0x08, 0, 6, 4, 0, 1][..],
            &CLIENT_MAC,
            &CLIENT_V4.octets(),
            &[0; 6],
            &VIP_V4.octets(),
        ]
        .concat();
        let arp = Packet::eth(CLIENT_MAC, [0xff; 6])
            .ethertype(0x0806)
            .payload(&arp_body)
            .build();
        lb.check_untouched("ARP who-has VIP", &arp, PassNotIp);
        let arp_tagged = Packet::eth(CLIENT_MAC, [0xff; 6])
            .vlan(100)
            .ethertype(0x0806)
            .payload(&arp_body)
            .build();
        lb.check_untouched("VLAN-tagged ARP", &arp_tagged, PassNotIp);
        let lldp = Packet::eth(CLIENT_MAC, [0x01, 0x80, 0xc2, 0, 0, 0x0e])
            .ethertype(0x88cc)
            .payload([2, 7, 4, 2, 0, 0, 0, 0, 1])
            .build();
        lb.check_untouched("LLDP", &lldp, PassNotIp);
        Ok(())
    })
}

/// One VLAN tag at most: a second 802.1Q tag, or an 802.1ad S-tag, passes as not-IP even
/// though an IPv4 packet to a VIP sits inside.
#[test]
fn stacked_vlan_tags_pass_not_ip() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        // The inner frame: one tag (VID 200) around a QUIC packet to the VIP.
        let inner = v4_short(0).vlan(200).bytes();
        let q_in_q = Packet::eth(CLIENT_MAC, EXT_MAC)
            .vlan(100)
            .ethertype(0x8100)
            .payload(&inner[14..])
            .build();
        assert_eq!(&q_in_q[12..18], &[0x81, 0x00, 0x00, 100, 0x81, 0x00]);
        lb.check_untouched("802.1Q in 802.1Q", &q_in_q, PassNotIp);
        let s_tag = Packet::eth(CLIENT_MAC, EXT_MAC)
            .ethertype(0x88a8)
            .payload([&[0x00, 100][..], &inner[12..]].concat())
            .build();
        assert_eq!(&s_tag[12..18], &[0x88, 0xa8, 0x00, 100, 0x81, 0x00]);
        lb.check_untouched("802.1ad S-tag + C-tag", &s_tag, PassNotIp);
        Ok(())
    })
}

// ---- malformed: truncated or inconsistent headers ---------------------------------------------

/// Cut exactly between two headers: Ethernet | VLAN | IP | ext headers | L4 | payload. Every
/// cut is PassMalformed (the IP length field always promises more than the frame holds).
#[test]
fn truncated_at_every_header_boundary_passes_malformed() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let packets: Vec<(&str, Packet)> = vec![
            ("quic short v4", v4_short(0).builder()),
            ("quic short v6 vlan", v6_short(1).vlan(7).builder()),
            (
                "quic initial v4",
                Pkt::udp(CLIENT_V4, VIP_V4, 40000, VIP_PORT)
                    .payload(quic::initial(&CLIENT_DCID, &[9; 4], &[], 64))
                    .builder(),
            ),
            (
                "tcp ack v4 vlan",
                Pkt::tcp(CLIENT_V4, VIP_V4, 40000, VIP_PORT, tcp_flags::ACK)
                    .vlan(12)
                    .payload([0x55; 20])
                    .builder(),
            ),
            (
                "tcp syn v6",
                Pkt::tcp(CLIENT_V6, VIP_V6, 40000, VIP_PORT, tcp_flags::SYN).builder(),
            ),
            (
                "udp v4 with options",
                Packet::eth(CLIENT_MAC, EXT_MAC)
                    .ipv4(CLIENT_V4, VIP_V4)
                    .ip_options(&[0x94, 0x04, 0, 0, 1, 1, 1, 0])
                    .udp(40000, PLAIN_UDP_PORT)
                    .payload([7; 16]),
            ),
            (
                "udp v6 with hop-by-hop and dest opts",
                Packet::eth(CLIENT_MAC, EXT_MAC)
                    .ipv6(CLIENT_V6, VIP_V6)
                    .hop_by_hop(&[])
                    .dest_opts(&[])
                    .udp(40000, VIP_PORT)
                    .payload([7; 16]),
            ),
        ];
        let mut cuts = 0;
        for (name, builder) in packets {
            let (bytes, layout) = builder.build_with_layout();
            let bounds = layout.boundaries();
            assert!(bounds.len() >= 2, "{name}: boundaries {bounds:?}");
            for cut in bounds {
                lb.check_untouched(
                    &format!("{name} cut at {cut} of {}", bytes.len()),
                    &bytes[..cut],
                    PassMalformed,
                );
                cuts += 1;
            }
        }
        assert!(cuts >= 20, "only {cuts} cuts tested");
        Ok(())
    })
}

/// Every prefix of the packet, one octet at a time. BPF_PROG_TEST_RUN refuses frames shorter
/// than an Ethernet header (EINVAL) before the program runs, so those are checked to run
/// nothing; from 14 octets on, each prefix must be PassMalformed and untouched.
fn every_prefix(lb: &Lb, name: &str, full: &[u8]) {
    for len in 0..14 {
        let before = Snapshot::take(&lb.dp);
        let r = lb.dp.test_run(&full[..len], lb.tb.ext_ifindex);
        assert!(
            r.is_err(),
            "{name}: the kernel ran a {len}-octet frame: {r:?}"
        );
        let d = before.delta_to(&Snapshot::take(&lb.dp));
        expect_counters(&format!("{name} len {len}"), &d.global, &[], Some(0));
    }
    for len in 14..full.len() {
        lb.check_untouched(
            &format!("{name} truncated to {len} of {}", full.len()),
            &full[..len],
            PassMalformed,
        );
    }
}

#[test]
fn truncated_at_every_length_quic_short_v4() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let p = v4_short(0);
        every_prefix(lb, "quic short v4", &p.bytes());
        // The whole packet still routes: the truncation, not the packet, was the problem.
        expect_redirect(
            lb,
            "quic short v4, whole",
            &p,
            &[RoutedCid],
            v4_backend_id(0),
        );
        Ok(())
    })
}

#[test]
fn truncated_at_every_length_vlan_v6_tcp() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let p = Pkt::tcp(CLIENT_V6, VIP_V6, 40000, VIP_PORT, tcp_flags::ACK)
            .vlan(42)
            .payload([0xaa; 12]);
        every_prefix(lb, "vlan v6 tcp", &p.bytes());
        let id = maglev_pick(lb, &p);
        expect_redirect(lb, "vlan v6 tcp, whole", &p, &[Maglev], id);
        Ok(())
    })
}

/// Headers whose fields contradict each other or the frame: each passes untouched as
/// PassMalformed, never steered on half-understood data.
#[test]
fn inconsistent_headers_pass_malformed() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        // IPv4 UDP to the plain UDP VIP: 14 Ethernet + 20 IP + 8 UDP + 16 payload = 58.
        let udp4 = Pkt::udp(CLIENT_V4, VIP_V4, 40000, PLAIN_UDP_PORT)
            .payload([1; 16])
            .bytes();
        assert_eq!(udp4.len(), 58);
        let tcp4 = Pkt::tcp(CLIENT_V4, VIP_V4, 40000, VIP_PORT, tcp_flags::ACK)
            .payload([1; 10])
            .bytes();
        let udp6 = v6_short(0).bytes();
        let udp6_len = udp6.len() - 54;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("IPv4 ethertype, IP version 6", patched(&udp4, 14, &[0x65])),
            ("IPv4 IHL 4", patched(&udp4, 14, &[0x44])),
            ("IPv4 total length 19 < IHL", patched(&udp4, 16, &[0, 19])),
            (
                "IPv4 total length one past the frame",
                patched(&udp4, 16, &45u16.to_be_bytes()),
            ),
            ("UDP length 7", patched(&udp4, 38, &[0, 7])),
            (
                "UDP length one past the IP datagram",
                patched(&udp4, 38, &25u16.to_be_bytes()),
            ),
            ("TCP data offset 4", patched(&tcp4, 46, &[0x40])),
            (
                "TCP data offset 15 past the segment",
                patched(&tcp4, 46, &[0xf0]),
            ),
            (
                "IPv4 says UDP, 4 octets of segment",
                Packet::eth(CLIENT_MAC, EXT_MAC)
                    .ipv4(CLIENT_V4, VIP_V4)
                    .raw(17)
                    .payload([0, 53, 0, 53])
                    .build(),
            ),
            (
                "IPv4 says TCP, 10 octets of segment",
                Packet::eth(CLIENT_MAC, EXT_MAC)
                    .ipv4(CLIENT_V4, VIP_V4)
                    .raw(6)
                    .payload([0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0])
                    .build(),
            ),
            (
                "IPv4 says TCP, 18 octets (no room for the checksum's neighbour)",
                Packet::eth(CLIENT_MAC, EXT_MAC)
                    .ipv4(CLIENT_V4, VIP_V4)
                    .raw(6)
                    .payload([
                        0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0,
                        0,
                    ])
                    .build(),
            ),
            ("IPv6 ethertype, IP version 4", patched(&udp6, 14, &[0x40])),
            (
                "IPv6 payload length one past the frame",
                patched(&udp6, 18, &(udp6_len as u16 + 1).to_be_bytes()),
            ),
            ("IPv6 UDP length 7", patched(&udp6, 58, &[0, 7])),
        ];
        for (what, pkt) in cases {
            lb.check_untouched(what, &pkt, PassMalformed);
        }
        Ok(())
    })
}

/// IPv6 UDP with checksum 0 is invalid (RFC 8200 §8.1): not ours to repair.
#[test]
fn ipv6_udp_zero_checksum_passes_malformed() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let mut p = v6_short(0);
        p.udp_no_checksum = true;
        let b = p.bytes();
        assert_eq!(&b[60..62], &[0, 0]);
        lb.check_untouched("v6 udp checksum 0", &b, PassMalformed);
        Ok(())
    })
}

/// The program does not walk IPv6 extension headers: any of them in front of the L4 header
/// passes, whatever follows.
#[test]
fn ipv6_extension_headers_pass() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let base = || Packet::eth(CLIENT_MAC, EXT_MAC).ipv6(CLIENT_V6, VIP_V6);
        let short = quic::short(&dcid(0, NONCE), 48);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "hop-by-hop",
                base()
                    .hop_by_hop(&[])
                    .udp(40000, VIP_PORT)
                    .payload(&short)
                    .build(),
            ),
            (
                "destination options",
                base()
                    .dest_opts(&[])
                    .udp(40000, VIP_PORT)
                    .payload(&short)
                    .build(),
            ),
            (
                "fragment (first, more follow)",
                base()
                    .fragment6(0, true, 0x1234)
                    .udp(40000, VIP_PORT)
                    .payload(&short)
                    .build(),
            ),
            (
                "routing",
                base()
                    .ext6(Ext6::Raw {
                        kind: 43,
                        body: vec![0, 0, 0, 0, 0, 0],
                    })
                    .tcp(40000, VIP_PORT)
                    .flags(tcp_flags::SYN)
                    .build(),
            ),
            (
                "ESP",
                base().raw(50).payload([0, 0, 0, 1, 0, 0, 0, 1]).build(),
            ),
            (
                "AH",
                base()
                    .raw(51)
                    .payload([59, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0])
                    .build(),
            ),
        ];
        for (what, pkt) in cases {
            lb.check_untouched(what, &pkt, PassIpv6Ext);
        }
        Ok(())
    })
}

/// IPv4 fragments (MF set or a non-zero offset) pass, first fragments included; DF alone is
/// not a fragment (see `ipv4_df_tos_ttl_and_ipv6_flow_label_are_preserved`).
#[test]
fn ipv4_fragments_pass() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let base = || {
            Packet::eth(CLIENT_MAC, EXT_MAC)
                .ipv4(CLIENT_V4, VIP_V4)
                .ip_id(0x4242)
        };
        let short = quic::short(&dcid(0, NONCE), 48);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "first fragment (MF, offset 0) of QUIC to the VIP",
                base().mf(true).udp(40000, VIP_PORT).payload(&short).build(),
            ),
            (
                "middle fragment (MF, offset 8)",
                base()
                    .mf(true)
                    .frag_offset(8)
                    .raw(17)
                    .payload([0xab; 64])
                    .build(),
            ),
            (
                "last fragment (offset 16)",
                base().frag_offset(16).raw(17).payload([0xab; 24]).build(),
            ),
            (
                "first fragment of a TCP segment",
                base()
                    .mf(true)
                    .tcp(40000, VIP_PORT)
                    .flags(tcp_flags::ACK)
                    .ack(1)
                    .seq(1)
                    .payload([0x55; 32])
                    .build(),
            ),
            (
                "DF and MF together",
                base()
                    .df(true)
                    .mf(true)
                    .udp(40000, PLAIN_UDP_PORT)
                    .payload([1; 8])
                    .build(),
            ),
        ];
        for (what, pkt) in cases {
            lb.check_untouched(what, &pkt, PassFragment);
        }
        Ok(())
    })
}

// ---- QUIC: routed by the server ID in the DCID ------------------------------------------------

#[test]
fn quic_short_v4_routed_by_server_id() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        for i in 0..BACKENDS {
            let p = v4_short(i);
            expect_redirect(
                lb,
                &format!("v4 sid {i}"),
                &p,
                &[RoutedCid],
                v4_backend_id(i),
            );
            // Routing by CID needs no connection-table state.
            assert!(lb.dp.conn_entries(&p.flow_key()).is_empty());
        }
        Ok(())
    })
}

#[test]
fn quic_short_v6_routed_by_server_id() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        for i in 0..BACKENDS {
            let p = v6_short(i);
            expect_redirect(
                lb,
                &format!("v6 sid {i}"),
                &p,
                &[RoutedCid],
                v6_backend_id(i),
            );
            assert!(lb.dp.conn_entries(&p.flow_key()).is_empty());
        }
        Ok(())
    })
}

/// The tag belongs to the ingress segment: a redirect out of `be` drops it, so the frame is
/// four octets shorter. Counters count the frame as it arrived (with the tag).
#[test]
fn quic_short_vlan_tag_is_stripped_on_redirect() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        for (p, id) in [
            (v4_short(2).vlan(100), v4_backend_id(2)),
            (v6_short(0).vlan(4094), v6_backend_id(0)),
        ] {
            let r = lb.check(
                "vlan quic",
                &p.bytes(),
                Want {
                    verdict: XDP_REDIRECT,
                    out: &redirected(&p, id),
                    reasons: &[RoutedCid, Redirect],
                    vip: Some(vip_of(&p)),
                    backend: Some(id),
                },
            );
            assert_eq!(r.data.len() + 4, p.bytes().len());
            let ethertype: [u8; 2] = if p.src.is_ipv4() {
                [0x08, 0x00]
            } else {
                [0x86, 0xdd]
            };
            assert_eq!(r.data[12..14], ethertype, "the inner ethertype moves up");
        }
        Ok(())
    })
}

/// The point of QUIC-LB: the client's address and port change (NAT rebinding, Wi-Fi to
/// cellular), the DCID does not, and the packet reaches the same backend.
#[test]
fn quic_connection_migration_keeps_backend() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let cid = dcid(1, [9, 8, 7, 6, 5, 4]);
        for (src, sport) in [
            (IpAddr::from(CLIENT_V4), 40000),
            (CLIENT_V4.into(), 61000),
            (Ipv4Addr::new(198, 18, 0, 3).into(), 40000),
            (Ipv4Addr::new(198, 19, 7, 7).into(), 1024),
        ] {
            let p = quic_short(src, VIP_V4, sport, &cid);
            expect_redirect(
                lb,
                &format!("from {src}:{sport}"),
                &p,
                &[RoutedCid],
                v4_backend_id(1),
            );
        }
        for (src, sport) in [
            (IpAddr::from(CLIENT_V6), 40000),
            (Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 3).into(), 50505),
        ] {
            let p = quic_short(src, VIP_V6, sport, &cid);
            expect_redirect(
                lb,
                &format!("from {src}:{sport}"),
                &p,
                &[RoutedCid],
                v6_backend_id(1),
            );
        }
        Ok(())
    })
}

/// Handshake packets carry the server-chosen DCID and route by it. So does an Initial whose
/// DCID decodes to a known server (e.g. the Initial after a Retry).
#[test]
fn quic_long_header_with_server_cid_routed_by_cid() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let scid = [0xc1; 8];
        let cases = [
            (
                "v4 handshake",
                Pkt::udp(CLIENT_V4, VIP_V4, 40000, VIP_PORT).payload(quic::handshake(
                    &dcid(2, NONCE),
                    &scid,
                    64,
                )),
                v4_backend_id(2),
            ),
            (
                "v6 handshake",
                Pkt::udp(CLIENT_V6, VIP_V6, 40000, VIP_PORT).payload(quic::handshake(
                    &dcid(1, NONCE),
                    &scid,
                    64,
                )),
                v6_backend_id(1),
            ),
            (
                "v4 initial with a server-chosen DCID",
                Pkt::udp(CLIENT_V4, VIP_V4, 40001, VIP_PORT).payload(quic::initial(
                    &dcid(0, NONCE),
                    &scid,
                    &[0x70; 16],
                    64,
                )),
                v4_backend_id(0),
            ),
        ];
        for (what, p, id) in cases {
            expect_redirect(lb, what, &p, &[RoutedCid], id);
        }
        Ok(())
    })
}

/// A client-chosen Initial DCID is not routable: the first packet falls back to Maglev over
/// the 4-tuple and is recorded in the connection table; the rest of the flight (and 0-RTT)
/// then hits the table and reaches the same backend, stably.
#[test]
fn quic_initial_with_client_dcid_falls_back_then_sticks() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let cases = [
            // Config rotation 0b110: no such config.
            (
                "cr=6 DCID",
                Pkt::udp(CLIENT_V4, VIP_V4, 41000, VIP_PORT).payload(quic::initial(
                    &CLIENT_DCID,
                    &[9; 4],
                    &[],
                    1200,
                )),
            ),
            // Config rotation 0, the configured one, but 8 octets < the config's 9.
            (
                "cr=0 DCID too short",
                Pkt::udp(CLIENT_V4, VIP_V4, 41001, VIP_PORT).payload(quic::initial(
                    &[0x08, 1, 2, 3, 4, 5, 6, 7],
                    &[9; 4],
                    &[],
                    200,
                )),
            ),
            (
                "v6 cr=6 DCID",
                Pkt::udp(CLIENT_V6, VIP_V6, 41002, VIP_PORT).payload(quic::initial(
                    &CLIENT_DCID,
                    &[],
                    &[0x33; 20],
                    300,
                )),
            ),
        ];
        for (what, p) in cases {
            let id = maglev_pick(lb, &p);
            expect_redirect(
                lb,
                &format!("{what}: first"),
                &p,
                &[FallbackInitial, Maglev],
                id,
            );
            assert_eq!(lb.dp.conn_entries(&p.flow_key()), conn(id), "{what}");
            for n in 0..5 {
                expect_redirect(
                    lb,
                    &format!("{what}: repeat {n}"),
                    &p,
                    &[FallbackInitial, LruHit],
                    id,
                );
            }
            // 0-RTT from the same 4-tuple with the same client DCID follows the Initial.
            let zero_rtt = p.clone().payload(quic::zero_rtt(
                &p.payload[6..6 + p.payload[5] as usize],
                &[9; 4],
                100,
            ));
            expect_redirect(
                lb,
                &format!("{what}: 0-RTT"),
                &zero_rtt,
                &[FallbackInitial, LruHit],
                id,
            );
            assert_eq!(lb.dp.conn_entries(&p.flow_key()), conn(id), "{what}");
        }
        Ok(())
    })
}

/// The server ID decodes but names no backend (its pod is gone): fall back to Maglev so a
/// live backend can answer with a stateless reset, then stick via the table.
#[test]
fn quic_short_unknown_server_id_falls_back_to_live_backend() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let mut cid = dcid(0, NONCE);
        cid[1..3].copy_from_slice(&[0x0b, 0x07]);
        for p in [
            quic_short(CLIENT_V4, VIP_V4, 42000, &cid),
            quic_short(CLIENT_V6, VIP_V6, 42000, &cid),
        ] {
            let id = maglev_pick(lb, &p);
            expect_redirect(
                lb,
                "unknown sid, first",
                &p,
                &[FallbackUnknownServer, Maglev],
                id,
            );
            assert_eq!(lb.dp.conn_entries(&p.flow_key()), conn(id));
            expect_redirect(
                lb,
                "unknown sid, second",
                &p,
                &[FallbackUnknownServer, LruHit],
                id,
            );
        }
        Ok(())
    })
}

/// Config rotation 0b111 is always unroutable.
#[test]
fn quic_short_config_rotation_7_is_unroutable() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let mut cid = dcid(0, NONCE);
        cid[0] = 0xe0 | 8;
        let p = quic_short(CLIENT_V4, VIP_V4, 42100, &cid);
        let id = maglev_pick(lb, &p);
        expect_redirect(lb, "cr=7, first", &p, &[FallbackUnroutable, Maglev], id);
        expect_redirect(lb, "cr=7, second", &p, &[FallbackUnroutable, LruHit], id);
        Ok(())
    })
}

/// Config rotation bits that name a config this VIP does not have (0, 1 and 2 are set).
#[test]
fn quic_short_unconfigured_config_rotation_falls_back() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        for cr in [3u8, 4, 6] {
            let mut cid = dcid(0, NONCE);
            cid[0] = (cr << 5) | 8;
            let p = quic_short(CLIENT_V4, VIP_V4, 42200 + cr as u16, &cid);
            let id = maglev_pick(lb, &p);
            expect_redirect(
                lb,
                &format!("cr={cr}, first"),
                &p,
                &[FallbackNoConfig, Maglev],
                id,
            );
            expect_redirect(
                lb,
                &format!("cr={cr}, second"),
                &p,
                &[FallbackNoConfig, LruHit],
                id,
            );
        }
        Ok(())
    })
}

/// Too little UDP payload to hold a DCID of the config's length is unroutable (and still
/// reaches a backend). The program loads the server ID with a fixed 16-octet read after the
/// DCID's first octet (two 64-bit words), so a short header needs 8 octets after its 9-octet
/// DCID to route by CID; any real short-header packet has more (packet number + 16-octet
/// AEAD tag), which the last case pins.
#[test]
fn quic_short_header_too_short_is_unroutable() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let cases: Vec<(&str, Vec<u8>, &[Reason])> = vec![
            ("empty UDP payload", vec![], &[FallbackUnroutable, Maglev]),
            (
                "first octet only",
                vec![0x40],
                &[FallbackUnroutable, Maglev],
            ),
            (
                "DCID cut to 4 octets",
                vec![0x40, 0x08, 0x0a, 0x01, 0x00],
                &[FallbackUnroutable, Maglev],
            ),
            (
                "9-octet DCID + 7 octets: the 16-octet server ID load fails",
                quic::short(&dcid(0, NONCE), 7),
                &[FallbackUnroutable, Maglev],
            ),
        ];
        for (i, (what, payload, steering)) in cases.into_iter().enumerate() {
            let p = Pkt::udp(CLIENT_V4, VIP_V4, 43000 + i as u16, VIP_PORT).payload(payload);
            let id = maglev_pick(lb, &p);
            expect_redirect(lb, what, &p, steering, id);
        }
        let p =
            Pkt::udp(CLIENT_V4, VIP_V4, 43100, VIP_PORT).payload(quic::short(&dcid(2, NONCE), 8));
        expect_redirect(
            lb,
            "9-octet DCID + 8 octets routes",
            &p,
            &[RoutedCid],
            v4_backend_id(2),
        );
        // The smallest real short-header packet: 1-octet packet number + 16-octet AEAD tag.
        let p =
            Pkt::udp(CLIENT_V4, VIP_V4, 43101, VIP_PORT).payload(quic::short(&dcid(1, NONCE), 17));
        expect_redirect(
            lb,
            "smallest real short header routes",
            &p,
            &[RoutedCid],
            v4_backend_id(1),
        );
        Ok(())
    })
}

/// A long header whose DCID length runs past the datagram is unroutable, whatever its type:
/// the length check comes before the Initial/0-RTT classification, so a truncated Initial is
/// FallbackUnroutable, not FallbackInitial (it is no real connection attempt).
#[test]
fn quic_long_header_truncated_dcid_falls_back() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        // Handshake (type 2), v1, DCID length 20, only 5 octets follow.
        let hs = vec![0xe0, 0, 0, 0, 1, 20, 1, 2, 3, 4, 5];
        let p = Pkt::udp(CLIENT_V4, VIP_V4, 44000, VIP_PORT).payload(&hs);
        let id = maglev_pick(lb, &p);
        expect_redirect(
            lb,
            "handshake, DCID past the end",
            &p,
            &[FallbackUnroutable, Maglev],
            id,
        );
        let init = vec![0xc0, 0, 0, 0, 1, 20, 1, 2, 3, 4, 5];
        let p = Pkt::udp(CLIENT_V4, VIP_V4, 44001, VIP_PORT).payload(&init);
        let id = maglev_pick(lb, &p);
        // An Initial's DCID is client-chosen whatever its length: counted as a new
        // connection attempt.
        expect_redirect(
            lb,
            "initial, DCID past the end",
            &p,
            &[FallbackInitial, Maglev],
            id,
        );
        // Only the 5 octets of header before the DCID length: the 6-octet read fails.
        let p = Pkt::udp(CLIENT_V4, VIP_V4, 44002, VIP_PORT).payload([0xe0, 0, 0, 0, 1]);
        let id = maglev_pick(lb, &p);
        expect_redirect(
            lb,
            "long header cut before the DCID length",
            &p,
            &[FallbackUnroutable, Maglev],
            id,
        );
        Ok(())
    })
}

/// A server ID that maps to a backend id of the other address family (a control-plane
/// mistake) is treated as unknown rather than DNATing a v4 packet to a v6 address.
#[test]
fn quic_server_id_naming_other_family_backend_falls_back() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        lb.dp
            .set_server_id(VIP_V4_QUIC, QUIC_CR, &[0x0c, 0x0c], v6_backend_id(0))?;
        let mut cid = dcid(0, NONCE);
        cid[1..3].copy_from_slice(&[0x0c, 0x0c]);
        let p = quic_short(CLIENT_V4, VIP_V4, 45000, &cid);
        let id = maglev_pick(lb, &p);
        assert!(id < 3);
        expect_redirect(
            lb,
            "sid -> v6 backend on a v4 VIP",
            &p,
            &[FallbackUnknownServer, Maglev],
            id,
        );
        Ok(())
    })
}

/// A server ID whose backend was cleared falls back to Maglev. The VIP's ring still names
/// the cleared backend in about a third of its slots until the control plane republishes it,
/// and flows hashing there are dropped (DropBadBackend): the data plane does not re-pick.
/// After the ring is republished without it, every flow reaches a live backend, flows that
/// were already pinned keep their backend, and restoring the backend restores routing by CID.
#[test]
fn quic_server_id_of_cleared_backend() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let gone = v4_backend_id(1);
        lb.dp.clear_backend(gone)?;
        let flows: Vec<Pkt> = (0..48)
            .map(|n| quic_short(CLIENT_V4, VIP_V4, 46000 + n, &dcid(1, NONCE)))
            .collect();
        let mut dropped = Vec::new();
        let mut pinned = Vec::new();
        for p in &flows {
            let id = maglev_pick(lb, p);
            if id == gone {
                let b = p.bytes();
                lb.check(
                    "stale ring slot",
                    &b,
                    Want {
                        verdict: XDP_DROP,
                        out: &b,
                        reasons: &[FallbackUnknownServer, DropBadBackend],
                        vip: Some(VIP_V4_QUIC),
                        backend: None,
                    },
                );
                assert!(lb.dp.conn_entries(&p.flow_key()).is_empty());
                dropped.push(p.clone());
            } else {
                expect_redirect(
                    lb,
                    "live ring slot",
                    p,
                    &[FallbackUnknownServer, Maglev],
                    id,
                );
                pinned.push((p.clone(), id));
            }
        }
        assert!(
            !dropped.is_empty() && !pinned.is_empty(),
            "48 flows should hash to both kinds of slots: {} dropped, {} pinned",
            dropped.len(),
            pinned.len()
        );

        let live = [
            (v4_backend_id(0), IpAddr::from(backend_v4(0))),
            (v4_backend_id(2), backend_v4(2).into()),
        ];
        publish(
            &mut lb.dp,
            &Vip {
                addr: VIP_V4.into(),
                port: VIP_PORT,
                proto: PROTO_UDP,
                index: VIP_V4_QUIC,
                flags: VIP_F_QUIC_LB,
            },
            &live,
            RING,
        )?;
        for p in &dropped {
            let id = maglev_pick(lb, p);
            assert_ne!(id, gone);
            expect_redirect(
                lb,
                "after republish, new",
                p,
                &[FallbackUnknownServer, Maglev],
                id,
            );
        }
        for (p, id) in &pinned {
            expect_redirect(
                lb,
                "after republish, pinned",
                p,
                &[FallbackUnknownServer, LruHit],
                *id,
            );
        }

        lb.dp
            .set_backend(gone, &backend(backend_v4(1).into(), BACKEND_PORT))?;
        expect_redirect(lb, "backend restored", &flows[0], &[RoutedCid], gone);
        Ok(())
    })
}

// ---- TCP and plain UDP: Maglev pinned by the connection table -----------------------------------

#[test]
fn tcp_syn_uses_maglev_then_flow_hits_table() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let syn = Pkt::tcp(CLIENT_V4, VIP_V4, 50000, VIP_PORT, tcp_flags::SYN);
        let id = maglev_pick(lb, &syn);
        expect_redirect(lb, "SYN", &syn, &[Maglev], id);
        assert_eq!(lb.dp.conn_entries(&syn.flow_key()), conn(id));
        for (what, flags, payload) in [
            ("ACK", tcp_flags::ACK, vec![]),
            ("data", tcp_flags::ACK | tcp_flags::PSH, vec![0x47; 100]),
            ("FIN", tcp_flags::ACK | tcp_flags::FIN, vec![]),
        ] {
            let p = Pkt::tcp(CLIENT_V4, VIP_V4, 50000, VIP_PORT, flags).payload(payload);
            expect_redirect(lb, what, &p, &[LruHit], id);
        }
        // An ECN-setup SYN (SYN|ECE|CWR) is still a new connection: Maglev, not the table.
        let ecn_syn = Pkt::tcp(
            CLIENT_V4,
            VIP_V4,
            50000,
            VIP_PORT,
            tcp_flags::SYN | tcp_flags::ECE | tcp_flags::CWR,
        );
        expect_redirect(lb, "ECN SYN", &ecn_syn, &[Maglev], id);
        // A SYN-ACK is not (SYN and ACK both set): the table.
        let syn_ack = Pkt::tcp(
            CLIENT_V4,
            VIP_V4,
            50000,
            VIP_PORT,
            tcp_flags::SYN | tcp_flags::ACK,
        );
        expect_redirect(lb, "SYN-ACK", &syn_ack, &[LruHit], id);
        // Mid-flow packet of a flow this CPU never saw (LRU eviction, another CPU): Maglev,
        // which gives the same answer as long as the ring is unchanged, and now recorded.
        let stray = Pkt::tcp(CLIENT_V4, VIP_V4, 50001, VIP_PORT, tcp_flags::ACK).payload([1; 10]);
        let id = maglev_pick(lb, &stray);
        expect_redirect(lb, "ACK without an entry", &stray, &[Maglev], id);
        expect_redirect(lb, "ACK with an entry now", &stray, &[LruHit], id);
        Ok(())
    })
}

#[test]
fn tcp_v6_vlan_syn_then_ack() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let syn = Pkt::tcp(CLIENT_V6, VIP_V6, 50100, VIP_PORT, tcp_flags::SYN).vlan(300);
        let id = maglev_pick(lb, &syn);
        assert!((3..6).contains(&id));
        expect_redirect(lb, "v6 SYN", &syn, &[Maglev], id);
        let ack = Pkt::tcp(CLIENT_V6, VIP_V6, 50100, VIP_PORT, tcp_flags::ACK)
            .vlan(300)
            .payload([0x61; 33]);
        expect_redirect(lb, "v6 ACK", &ack, &[LruHit], id);
        Ok(())
    })
}

/// The connection table is what makes Maglev safe for established flows: republish the ring
/// without a flow's backend and the flow keeps it, while a new SYN on the same 5-tuple
/// consults the new ring. Publishing writes the new ring into free slots of the pool, then
/// points the VIP at it.
#[test]
fn tcp_established_flow_survives_ring_change() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let key = vip_key(VIP_V4.into(), VIP_PORT, PROTO_TCP);
        let first = lb.dp.vip(&key).expect("VIP").ring_offset;
        let syn = Pkt::tcp(CLIENT_V4, VIP_V4, 51000, VIP_PORT, tcp_flags::SYN);
        let ack = Pkt::tcp(CLIENT_V4, VIP_V4, 51000, VIP_PORT, tcp_flags::ACK).payload([0x42; 20]);
        let old = maglev_pick(lb, &syn);
        expect_redirect(lb, "SYN", &syn, &[Maglev], old);
        expect_redirect(lb, "ACK", &ack, &[LruHit], old);

        let remaining: Vec<(u32, IpAddr)> = (0..BACKENDS)
            .map(|i| (v4_backend_id(i), IpAddr::from(backend_v4(i))))
            .filter(|(id, _)| *id != old)
            .collect();
        publish(
            &mut lb.dp,
            &Vip {
                addr: VIP_V4.into(),
                port: VIP_PORT,
                proto: PROTO_TCP,
                index: VIP_V4_TCP,
                flags: 0,
            },
            &remaining,
            RING,
        )?;
        let meta = lb.dp.vip(&key).expect("VIP");
        assert_eq!(
            (meta.index, meta.flags, meta.ring_size),
            (VIP_V4_TCP, 0, RING),
            "publish keeps the VIP"
        );
        // Not over the live ring: the old slots wait out their grace period.
        assert!(
            meta.ring_offset.abs_diff(first) >= RING,
            "{first} -> {meta:?}"
        );
        for slot in 0..RING {
            assert_ne!(lb.dp.ring_slot(&meta, slot)?, old, "live ring slot {slot}");
        }

        expect_redirect(lb, "ACK after the ring change", &ack, &[LruHit], old);
        let new = maglev_pick(lb, &syn);
        assert_ne!(new, old);
        expect_redirect(lb, "new SYN, same 5-tuple", &syn, &[Maglev], new);
        assert_eq!(lb.dp.conn_entries(&syn.flow_key()), conn(new));
        expect_redirect(lb, "ACK of the new connection", &ack, &[LruHit], new);

        // Publishing again flips back.
        let all: Vec<(u32, IpAddr)> = (0..BACKENDS)
            .map(|i| (v4_backend_id(i), IpAddr::from(backend_v4(i))))
            .collect();
        publish(
            &mut lb.dp,
            &Vip {
                addr: VIP_V4.into(),
                port: VIP_PORT,
                proto: PROTO_TCP,
                index: VIP_V4_TCP,
                flags: 0,
            },
            &all,
            RING,
        )?;
        let third = lb.dp.vip(&key).expect("VIP").ring_offset;
        assert!(
            third.abs_diff(first) >= RING && third.abs_diff(meta.ring_offset) >= RING,
            "the ring replaced a moment ago is still in its grace period: {first}, {}, {third}",
            meta.ring_offset
        );
        expect_redirect(lb, "ACK after the second change", &ack, &[LruHit], new);
        Ok(())
    })
}

/// Graceful removal: once a backend is taken out of the ring and cleared, a flow pinned to it
/// no longer hits the table (the entry names an invalid backend) and is re-hashed onto the
/// new ring, which re-pins it.
#[test]
fn tcp_flow_pinned_to_cleared_backend_moves_on() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let syn = Pkt::tcp(CLIENT_V4, VIP_V4, 51500, VIP_PORT, tcp_flags::SYN);
        let ack = Pkt::tcp(CLIENT_V4, VIP_V4, 51500, VIP_PORT, tcp_flags::ACK).payload([7; 9]);
        let old = maglev_pick(lb, &syn);
        expect_redirect(lb, "SYN", &syn, &[Maglev], old);
        let remaining: Vec<(u32, IpAddr)> = (0..BACKENDS)
            .map(|i| (v4_backend_id(i), IpAddr::from(backend_v4(i))))
            .filter(|(id, _)| *id != old)
            .collect();
        publish(
            &mut lb.dp,
            &Vip {
                addr: VIP_V4.into(),
                port: VIP_PORT,
                proto: PROTO_TCP,
                index: VIP_V4_TCP,
                flags: 0,
            },
            &remaining,
            RING,
        )?;
        lb.dp.clear_backend(old)?;
        let new = maglev_pick(lb, &ack);
        assert_ne!(new, old);
        expect_redirect(lb, "ACK after removal", &ack, &[Maglev], new);
        assert_eq!(lb.dp.conn_entries(&ack.flow_key()), conn(new));
        expect_redirect(lb, "ACK, re-pinned", &ack, &[LruHit], new);
        Ok(())
    })
}

/// Plain UDP VIP: Maglev then the table. A payload that looks like a routable QUIC packet is
/// not decoded, because the VIP has no QUIC-LB flag.
#[test]
fn plain_udp_maglev_then_lru_hit() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let dns = Pkt::udp(CLIENT_V4, VIP_V4, 53000, PLAIN_UDP_PORT).payload([0xab; 40]);
        let id = maglev_pick(lb, &dns);
        expect_redirect(lb, "first datagram", &dns, &[Maglev], id);
        assert_eq!(lb.dp.conn_entries(&dns.flow_key()), conn(id));
        expect_redirect(lb, "second datagram", &dns, &[LruHit], id);
        for i in 0..BACKENDS {
            let q = Pkt::udp(CLIENT_V4, VIP_V4, 53100 + i as u16, PLAIN_UDP_PORT)
                .payload(quic::short(&dcid(i, NONCE), 48));
            let id = maglev_pick(lb, &q);
            expect_redirect(
                lb,
                "QUIC-looking payload on a plain UDP VIP",
                &q,
                &[Maglev],
                id,
            );
        }
        Ok(())
    })
}

/// Through the real program with a 65537-slot ring: 300 client ports spread over
/// all three backends, and every flow lands exactly where the host computes it (the table
/// built by `lb_userspace::maglev::build_table`, the slot by `lb_common::hash::flow_hash`),
/// which cross-checks the BPF hash and ring indexing against the host's.
#[test]
fn maglev_matches_host_hash_and_spreads_flows() -> Result<()> {
    with_lb(STANDARD_RING, FibCache::Off, |lb| {
        let wb: Vec<WeightedBackend> = (0..BACKENDS)
            .map(|i| WeightedBackend {
                id: v4_backend_id(i),
                addr: backend_v4(i).into(),
                port: BACKEND_PORT,
                weight: 1,
            })
            .collect();
        let table = build_table(&wb, STANDARD_RING)?;
        let meta = lb
            .dp
            .vip(&vip_key(VIP_V4.into(), PLAIN_UDP_PORT, PROTO_UDP))
            .expect("VIP");
        assert_eq!(meta.ring_size, STANDARD_RING);
        let mut per_backend = [0u32; 3];
        for n in 0..300u16 {
            let p =
                Pkt::udp(CLIENT_V4, VIP_V4, 20000 + n * 7, PLAIN_UDP_PORT).payload([n as u8; 24]);
            let slot = flow_hash(&p.flow_key()) % STANDARD_RING;
            let id = table[slot as usize];
            assert_eq!(
                lb.dp.ring_slot(&meta, slot)?,
                id,
                "published ring slot {slot}"
            );
            expect_redirect(lb, &format!("flow {n}"), &p, &[Maglev], id);
            per_backend[id as usize] += 1;
        }
        for (i, n) in per_backend.iter().enumerate() {
            assert!(
                *n >= 60,
                "backend {i} got {n} of 300 flows: {per_backend:?}"
            );
        }
        Ok(())
    })
}

// ---- forwarding: XDP_TX, FIB misses, the next-hop cache -----------------------------------------

/// A backend reached back out of the ingress interface: XDP_TX with the FIB's MACs (`ext`'s
/// own as source). Same interface, same VLAN, so a tag is kept.
#[test]
fn xdp_tx_when_backend_is_behind_ingress() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        publish_single(
            lb,
            VIP_V4.into(),
            8001,
            PROTO_UDP,
            10,
            (TX_V4_ID, TX_BACKEND_V4.into()),
        )?;
        publish_single(
            lb,
            VIP_V6.into(),
            8001,
            PROTO_UDP,
            11,
            (TX_V6_ID, TX_BACKEND_V6.into()),
        )?;
        let cases = [
            (
                Pkt::udp(CLIENT_V4, VIP_V4, 47000, 8001).payload([5; 30]),
                10,
                TX_V4_ID,
                IpAddr::from(TX_BACKEND_V4),
            ),
            (
                Pkt::udp(CLIENT_V4, VIP_V4, 47001, 8001)
                    .payload([5; 30])
                    .vlan(55),
                10,
                TX_V4_ID,
                TX_BACKEND_V4.into(),
            ),
            (
                Pkt::udp(CLIENT_V6, VIP_V6, 47000, 8001).payload([6; 30]),
                11,
                TX_V6_ID,
                TX_BACKEND_V6.into(),
            ),
        ];
        for (p, vip, id, addr) in cases {
            let r = expect_tx(lb, "tx", &p, addr, &[Maglev, Tx], vip, Some(id));
            assert_eq!(
                r.data.len(),
                p.bytes().len(),
                "TX keeps the frame length (and any tag)"
            );
        }
        Ok(())
    })
}

/// Run `p` and require it sent back out of `ext` (`XDP_TX`) to the backend at `addr` (DNAT
/// to it, MACs of the same link), counted by exactly `reasons` under VIP `vip` (and backend
/// `backend`, when the fixture's snapshot covers it).
fn expect_tx(
    lb: &Lb,
    what: &str,
    p: &Pkt,
    addr: IpAddr,
    reasons: &[Reason],
    vip: u32,
    backend: Option<u32>,
) -> lb_userspace::dataplane::RunResult {
    let want = p
        .clone()
        .dnat(addr, BACKEND_PORT)
        .macs(EXT_MAC, TX_BACKEND_MAC)
        .bytes();
    lb.check(
        what,
        &p.bytes(),
        Want {
            verdict: XDP_TX,
            out: &want,
            reasons,
            vip: Some(vip),
            backend,
        },
    )
}

/// `lb run`'s rule (`SETTINGS_F_XMIT_ONLY`): the program redirects only between interfaces
/// userspace marked as taking a native redirect. Any other egress (here `be` unmarked, as a
/// VXLAN device would be) or ingress (`ext` unmarked, as on a tunnel where the program runs
/// in generic mode) gets the DNATed packet passed to the kernel with the MACs untouched, so
/// the node's routing and overlay carry it: `pass_kernel_route`, from the FIB and from the
/// next-hop cache alike. With the setting off (after load) everything is redirected.
#[test]
fn egress_without_native_redirect_goes_to_the_kernel() -> Result<()> {
    with_lb(RING, FibCache::Default, |lb| {
        let (ext, be) = (lb.tb.ext_ifindex, lb.tb.be_ifindex);
        lb.dp.set_xmit_only(true)?;
        lb.dp.set_iface_xmit(ext, true)?;
        lb.dp.set_iface_xmit(be, true)?;
        assert_eq!(lb.dp.xmit_ifindexes(), {
            let mut v = vec![ext, be];
            v.sort_unstable();
            v
        });
        let cases = [
            (v4_short(0), v4_backend_id(0)),
            (v6_short(1), v6_backend_id(1)),
        ];
        let kernel = |lb: &Lb, what: &str, p: &Pkt, id: u32, cached: bool| {
            let (addr, _) = backend_of(id);
            let want = p.clone().dnat(addr, BACKEND_PORT).bytes();
            let reasons: &[Reason] = if cached {
                &[RoutedCid, FibCached, PassKernelRoute]
            } else {
                &[RoutedCid, PassKernelRoute]
            };
            lb.check(
                what,
                &p.bytes(),
                Want {
                    verdict: XDP_PASS,
                    out: &want,
                    reasons,
                    vip: Some(vip_of(p)),
                    backend: Some(id),
                },
            );
        };
        for (p, id) in &cases {
            expect_redirect(lb, "both ends take redirects", p, &[RoutedCid], *id);
            // The egress is a tunnel.
            lb.dp.set_iface_xmit(be, false)?;
            lb.dp.flush_fib_cache(*id)?;
            kernel(lb, "egress without ndo_xdp_xmit", p, *id, false);
            kernel(lb, "egress without ndo_xdp_xmit, cached", p, *id, true);
            // The ingress is a tunnel.
            lb.dp.set_iface_xmit(be, true)?;
            lb.dp.set_iface_xmit(ext, false)?;
            lb.dp.flush_fib_cache(*id)?;
            kernel(lb, "ingress without native XDP", p, *id, false);
            kernel(lb, "ingress without native XDP, cached", p, *id, true);
            lb.dp.set_iface_xmit(ext, true)?;
            lb.dp.flush_fib_cache(*id)?;
        }
        // Off: the fixtures' (and `lb attach`'s) behaviour, whatever the list says.
        lb.dp.set_xmit_only(false)?;
        lb.dp.set_iface_xmit(be, false)?;
        lb.dp.set_iface_xmit(ext, false)?;
        assert!(lb.dp.xmit_ifindexes().is_empty());
        for (p, id) in &cases {
            lb.dp.flush_fib_cache(*id)?;
            expect_redirect(lb, "setting off", p, &[RoutedCid], *id);
        }
        Ok(())
    })
}

/// The FIB knows the route but not the neighbour: pass to the kernel (which resolves it and
/// forwards) with the DNAT already applied and the MACs (and tag) untouched.
#[test]
fn fib_no_neighbour_passes_rewritten() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        publish_single(
            lb,
            VIP_V4.into(),
            8002,
            PROTO_UDP,
            12,
            (NO_NEIGH_V4_ID, NO_NEIGH_V4.into()),
        )?;
        publish_single(
            lb,
            VIP_V6.into(),
            8002,
            PROTO_UDP,
            13,
            (NO_NEIGH_V6_ID, NO_NEIGH_V6.into()),
        )?;
        let cases = [
            (
                Pkt::udp(CLIENT_V4, VIP_V4, 47100, 8002).payload([1; 20]),
                12,
                NO_NEIGH_V4_ID,
                IpAddr::from(NO_NEIGH_V4),
            ),
            (
                Pkt::udp(CLIENT_V4, VIP_V4, 47101, 8002)
                    .payload([1; 20])
                    .vlan(9),
                12,
                NO_NEIGH_V4_ID,
                NO_NEIGH_V4.into(),
            ),
            (
                Pkt::udp(CLIENT_V6, VIP_V6, 47100, 8002).payload([2; 20]),
                13,
                NO_NEIGH_V6_ID,
                NO_NEIGH_V6.into(),
            ),
        ];
        for (p, vip, id, addr) in cases {
            let want = p.clone().dnat(addr, BACKEND_PORT).bytes();
            lb.check(
                "no neighbour",
                &p.bytes(),
                Want {
                    verdict: XDP_PASS,
                    out: &want,
                    reasons: &[Maglev, PassNoNeighbour],
                    vip: Some(vip),
                    backend: Some(id),
                },
            );
        }
        Ok(())
    })
}

/// No route to the backend: pass (rewritten) with PassFibFailed.
#[test]
fn fib_no_route_passes_fib_failed() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        publish_single(
            lb,
            VIP_V4.into(),
            8003,
            PROTO_TCP,
            14,
            (NO_ROUTE_V4_ID, NO_ROUTE_V4.into()),
        )?;
        publish_single(
            lb,
            VIP_V6.into(),
            8003,
            PROTO_TCP,
            15,
            (NO_ROUTE_V6_ID, NO_ROUTE_V6.into()),
        )?;
        let cases = [
            (
                Pkt::tcp(CLIENT_V4, VIP_V4, 47200, 8003, tcp_flags::SYN),
                14,
                NO_ROUTE_V4_ID,
                IpAddr::from(NO_ROUTE_V4),
            ),
            (
                Pkt::tcp(CLIENT_V6, VIP_V6, 47200, 8003, tcp_flags::SYN),
                15,
                NO_ROUTE_V6_ID,
                NO_ROUTE_V6.into(),
            ),
        ];
        for (p, vip, id, addr) in cases {
            let want = p.clone().dnat(addr, BACKEND_PORT).bytes();
            lb.check(
                "no route",
                &p.bytes(),
                Want {
                    verdict: XDP_PASS,
                    out: &want,
                    reasons: &[Maglev, PassFibFailed],
                    vip: Some(vip),
                    backend: Some(id),
                },
            );
        }
        Ok(())
    })
}

/// The per-CPU next-hop cache: the first packet for a backend does the FIB lookup, the next
/// one uses the cached answer (FibCached) with byte-identical output; rewriting the backend
/// (`set_backend`) or `flush_fib_cache` forces a fresh lookup; TTL 0 turns it off.
#[test]
fn fib_cache_hit_after_first_lookup_until_flushed() -> Result<()> {
    with_lb(RING, FibCache::Default, |lb| {
        // A long TTL so a slow machine cannot expire the entry between two runs.
        lb.fib_cache(60_000_000_000);
        let p0 = v4_short(0);
        let id0 = v4_backend_id(0);
        let first = lb.check(
            "first: lookup",
            &p0.bytes(),
            Want {
                verdict: XDP_REDIRECT,
                out: &redirected(&p0, id0),
                reasons: &[RoutedCid, Redirect],
                vip: Some(VIP_V4_QUIC),
                backend: Some(id0),
            },
        );
        let cached = Want {
            verdict: XDP_REDIRECT,
            out: &first.data,
            reasons: &[RoutedCid, FibCached, Redirect],
            vip: Some(VIP_V4_QUIC),
            backend: Some(id0),
        };
        let second = lb.check("second: cached", &p0.bytes(), cached);
        assert_eq!(first.data, second.data);
        // The cache is per backend: backend 1 still needs its own lookup.
        expect_redirect(
            lb,
            "other backend: lookup",
            &v4_short(1),
            &[RoutedCid],
            v4_backend_id(1),
        );
        expect_redirect(
            lb,
            "other backend: cached",
            &v4_short(1),
            &[RoutedCid, FibCached],
            v4_backend_id(1),
        );
        // v6 backends too.
        expect_redirect(
            lb,
            "v6: lookup",
            &v6_short(2),
            &[RoutedCid],
            v6_backend_id(2),
        );
        expect_redirect(
            lb,
            "v6: cached",
            &v6_short(2),
            &[RoutedCid, FibCached],
            v6_backend_id(2),
        );

        lb.dp
            .set_backend(id0, &backend(backend_v4(0).into(), BACKEND_PORT))?;
        expect_redirect(lb, "after set_backend: lookup", &p0, &[RoutedCid], id0);
        expect_redirect(
            lb,
            "after set_backend: cached",
            &p0,
            &[RoutedCid, FibCached],
            id0,
        );
        lb.dp.flush_fib_cache(id0)?;
        expect_redirect(lb, "after flush: lookup", &p0, &[RoutedCid], id0);
        // Flushing backend 0 left backend 1's entry alone.
        expect_redirect(
            lb,
            "backend 1 still cached",
            &v4_short(1),
            &[RoutedCid, FibCached],
            v4_backend_id(1),
        );

        lb.fib_cache(0);
        expect_redirect(lb, "TTL 0: lookup", &p0, &[RoutedCid], id0);
        expect_redirect(lb, "TTL 0: lookup again", &p0, &[RoutedCid], id0);
        Ok(())
    })
}

/// A cached next hop is only valid for packets arriving where it was looked up: the same
/// packet arriving on `be` (where the backend lives) is a fresh lookup, and an XDP_TX.
#[test]
fn fib_cache_is_keyed_by_ingress_interface() -> Result<()> {
    with_lb(RING, FibCache::Default, |lb| {
        lb.fib_cache(60_000_000_000);
        let p = v4_short(2);
        let id = v4_backend_id(2);
        let be = lb.tb.be_ifindex;
        expect_redirect(lb, "ext: lookup", &p, &[RoutedCid], id);
        expect_redirect(lb, "ext: cached", &p, &[RoutedCid, FibCached], id);
        let tx = p
            .clone()
            .dnat(backend_v4(2), BACKEND_PORT)
            .macs(BE_MAC, backend_mac(2))
            .bytes();
        for (what, reasons) in [
            ("be: lookup", &[RoutedCid, Tx][..]),
            ("be: cached", &[RoutedCid, FibCached, Tx][..]),
        ] {
            let want = Want {
                verdict: XDP_TX,
                out: &tx,
                reasons,
                vip: Some(VIP_V4_QUIC),
                backend: Some(id),
            };
            lb.check_on(what, be, &p.bytes(), want);
        }
        // One entry per backend per CPU: `be`'s answer replaced `ext`'s.
        expect_redirect(lb, "ext again: lookup", &p, &[RoutedCid], id);
        Ok(())
    })
}

/// Entries expire after the TTL even if nobody flushes them (poll with a deadline: the
/// program reads the coarse clock).
#[test]
fn fib_cache_entry_expires_after_ttl() -> Result<()> {
    with_lb(RING, FibCache::Default, |lb| {
        lb.fib_cache(20_000_000);
        let p = v4_short(0);
        expect_redirect(lb, "lookup", &p, &[RoutedCid], v4_backend_id(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut hits = 0;
        loop {
            let (r, d) = lb.run(&p.bytes());
            assert_eq!(r.verdict, XDP_REDIRECT);
            if d.global.packets(FibCached) == 0 {
                expect_counters(
                    "expired",
                    &d.global,
                    &[(RoutedCid, 1), (Redirect, 1)],
                    Some(p.bytes().len() as u64),
                );
                break;
            }
            hits += 1;
            assert!(
                Instant::now() < deadline,
                "a 20 ms entry still served after 5 s ({hits} hits)"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    })
}

/// bpf_fib_lookup also checks the packet against the egress MTU (BPF_FIB_LKUP_RET_FRAG_NEEDED
/// → PassFibFailed, so the kernel can send ICMP "fragmentation needed" / "packet too big").
/// The same oversized packet must get the same treatment when the backend's next hop happens
/// to be cached by an earlier small packet.
#[test]
fn fib_cache_does_not_bypass_mtu_check() -> Result<()> {
    with_lb(RING, FibCache::Default, |lb| {
        lb.fib_cache(60_000_000_000);
        // 1600-octet IP datagram; `be` has the default MTU of 1500.
        let big = Pkt::udp(CLIENT_V4, VIP_V4, 40000, VIP_PORT)
            .payload(quic::short(&dcid(0, NONCE), 1600 - 28 - 10));
        let id = v4_backend_id(0);
        let want = big.clone().dnat(backend_v4(0), BACKEND_PORT).bytes();
        let too_big = Want {
            verdict: XDP_PASS,
            out: &want,
            reasons: &[RoutedCid, PassFibFailed],
            vip: Some(VIP_V4_QUIC),
            backend: Some(id),
        };
        lb.check("oversized, cold cache", &big.bytes(), too_big);
        expect_redirect(
            lb,
            "small packet fills the cache",
            &v4_short(0),
            &[RoutedCid],
            id,
        );
        let too_big = Want {
            verdict: XDP_PASS,
            out: &want,
            reasons: &[RoutedCid, PassFibFailed],
            vip: Some(VIP_V4_QUIC),
            backend: Some(id),
        };
        lb.check("oversized, warm cache", &big.bytes(), too_big);
        Ok(())
    })
}

// ---- drops ------------------------------------------------------------------------------------

/// A VIP with no backends (ring size 0) drops what needs Maglev, untouched. A QUIC packet that
/// routes by CID does not need the ring and still gets through.
#[test]
fn vip_without_backends_drops() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let empty = |index, flags| VipMeta {
            index,
            flags,
            ring_size: 0,
            ring_offset: 0,
        };
        lb.dp
            .set_vip(&vip_key(VIP_V4.into(), 8004, PROTO_UDP), &empty(9, 0))?;
        // The control-plane way to empty a VIP: publish an empty ring.
        lb.dp.publish_ring(
            &vip_key(VIP_V4.into(), PLAIN_UDP_PORT, PROTO_UDP),
            VIP_V4_PLAIN_UDP,
            0,
            &[],
        )?;
        lb.dp.set_vip(
            &vip_key(VIP_V4.into(), VIP_PORT, PROTO_TCP),
            &empty(VIP_V4_TCP, 0),
        )?;
        lb.dp.set_vip(
            &vip_key(VIP_V6.into(), VIP_PORT, PROTO_UDP),
            &empty(VIP_V6_QUIC, VIP_F_QUIC_LB),
        )?;
        let dropped = |what: &str, p: &Pkt, vip: u32, reasons: &[Reason]| {
            let b = p.bytes();
            lb.check(
                what,
                &b,
                Want {
                    verdict: XDP_DROP,
                    out: &b,
                    reasons,
                    vip: Some(vip),
                    backend: None,
                },
            );
        };
        dropped(
            "plain UDP",
            &Pkt::udp(CLIENT_V4, VIP_V4, 48000, 8004).payload([1; 8]),
            9,
            &[DropNoBackend],
        );
        dropped(
            "TCP SYN",
            &Pkt::tcp(CLIENT_V4, VIP_V4, 48000, VIP_PORT, tcp_flags::SYN),
            VIP_V4_TCP,
            &[DropNoBackend],
        );
        dropped(
            "TCP ACK",
            &Pkt::tcp(CLIENT_V4, VIP_V4, 48000, VIP_PORT, tcp_flags::ACK),
            VIP_V4_TCP,
            &[DropNoBackend],
        );
        dropped(
            "QUIC Initial",
            &Pkt::udp(CLIENT_V6, VIP_V6, 48000, VIP_PORT).payload(quic::initial(
                &CLIENT_DCID,
                &[1; 8],
                &[],
                100,
            )),
            VIP_V6_QUIC,
            &[FallbackInitial, DropNoBackend],
        );
        dropped(
            "plain UDP VIP, empty ring published",
            &Pkt::udp(CLIENT_V4, VIP_V4, 48001, PLAIN_UDP_PORT).payload([1; 8]),
            VIP_V4_PLAIN_UDP,
            &[DropNoBackend],
        );
        expect_redirect(
            lb,
            "QUIC routed by CID",
            &v6_short(1),
            &[RoutedCid],
            v6_backend_id(1),
        );
        Ok(())
    })
}

/// A ring slot naming a backend id with no valid backend (never written, or of the other
/// family) drops the packet untouched.
#[test]
fn ring_naming_invalid_backend_drops_bad_backend() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        lb.dp.publish_ring(
            &vip_key(VIP_V4.into(), 8005, PROTO_UDP),
            7,
            0,
            &vec![50; RING as usize],
        )?;
        lb.dp.publish_ring(
            &vip_key(VIP_V4.into(), 8006, PROTO_UDP),
            8,
            0,
            &vec![v6_backend_id(0); RING as usize],
        )?;
        for (port, vip) in [(8005, 7), (8006, 8)] {
            let b = Pkt::udp(CLIENT_V4, VIP_V4, 48100, port)
                .payload([3; 12])
                .bytes();
            lb.check(
                &format!("ring of bad ids, port {port}"),
                &b,
                Want {
                    verdict: XDP_DROP,
                    out: &b,
                    reasons: &[DropBadBackend],
                    vip: Some(vip),
                    backend: None,
                },
            );
        }
        Ok(())
    })
}

// ---- header details survive the rewrite -------------------------------------------------------

/// IPv4 options (IHL > 5) are steered like any packet, options preserved, both checksums
/// updated (the L4 offset comes from IHL).
#[test]
fn ipv4_options_are_preserved() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let mut q = v4_short(1);
        q.ip_options = vec![0x94, 0x04, 0x00, 0x00]; // router alert
        expect_redirect(
            lb,
            "QUIC with router alert",
            &q,
            &[RoutedCid],
            v4_backend_id(1),
        );
        let mut t = Pkt::tcp(CLIENT_V4, VIP_V4, 49000, VIP_PORT, tcp_flags::SYN);
        t.ip_options = vec![0x01; 40]; // 40 octets of NOP: IHL 15
        let id = maglev_pick(lb, &t);
        let r = expect_redirect(lb, "TCP SYN with IHL 15", &t, &[Maglev], id);
        assert_eq!(r.data[14], 0x4f);
        Ok(())
    })
}

/// IPv4 UDP checksum 0 means "none": the DNAT must leave it 0 rather than "update" it.
#[test]
fn ipv4_udp_zero_checksum_stays_zero() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let mut p = v4_short(0);
        p.udp_no_checksum = true;
        let r = expect_redirect(
            lb,
            "QUIC, no UDP checksum",
            &p,
            &[RoutedCid],
            v4_backend_id(0),
        );
        assert_eq!(&r.data[40..42], &[0, 0]);
        assert_eq!(
            verify_checksums(&r.data).map(|c| c.l4),
            Ok(lb_lab::packet::L4Checksum::UdpNone)
        );
        let mut d = Pkt::udp(CLIENT_V4, VIP_V4, 49100, PLAIN_UDP_PORT).payload([9; 21]);
        d.udp_no_checksum = true;
        let id = maglev_pick(lb, &d);
        expect_redirect(lb, "plain UDP, no checksum, odd length", &d, &[Maglev], id);
        Ok(())
    })
}

/// One's-complement corner: a UDP checksum that computes to 0x0000 after the DNAT must go out
/// as 0xffff (0 means "no checksum" on IPv4 and is invalid on IPv6), and an input checksum of
/// 0xffff is a real checksum to update, not "none". The payload's last word (filler, after
/// any DCID) is chosen so the rewritten (resp. arriving) datagram sums to zero.
#[test]
fn udp_checksum_zero_corner_cases() -> Result<()> {
    fn udp_csum(p: &Pkt) -> u16 {
        let b = p.bytes();
        let off = if p.src.is_ipv4() { 40 } else { 60 };
        u16::from_be_bytes([b[off], b[off + 1]])
    }
    /// With the last payload word 0 the checksum field is ~S; putting ~S there instead makes
    /// the datagram sum to 0xffff: a computed checksum of 0, sent as 0xffff.
    fn zero_sum(mut p: Pkt) -> Pkt {
        let n = p.payload.len();
        assert!(n.is_multiple_of(2), "test bug: odd payload");
        p.payload[n - 2..].fill(0);
        let c = udp_csum(&p);
        p.payload[n - 2..].copy_from_slice(&c.to_be_bytes());
        assert_eq!(udp_csum(&p), 0xffff, "test bug: not a zero-sum datagram");
        p
    }
    with_lb(RING, FibCache::Off, |lb| {
        let plain = |sport| Pkt::udp(CLIENT_V4, VIP_V4, sport, PLAIN_UDP_PORT).payload([0x5a; 32]);
        let cases: Vec<(&str, Pkt, Pkt)> = vec![
            ("v4 plain UDP", plain(49300), plain(49301)),
            (
                "v4 QUIC",
                v4_short(1),
                quic_short(CLIENT_V4, VIP_V4, 49302, &dcid(1, NONCE)),
            ),
            (
                "v6 QUIC",
                v6_short(2),
                quic_short(CLIENT_V6, VIP_V6, 49302, &dcid(2, NONCE)),
            ),
        ];
        for (what, p, q) in cases {
            let (steer, id) = match vip_of(&p) {
                VIP_V4_PLAIN_UDP => (Maglev, maglev_pick(lb, &p)),
                VIP_V4_QUIC => (RoutedCid, v4_backend_id(1)),
                _ => (RoutedCid, v6_backend_id(2)),
            };
            let (addr, _) = backend_of(id);
            let mut input = p.clone();
            input.payload = zero_sum(p.dnat(addr, BACKEND_PORT)).payload;
            let r = expect_redirect(
                lb,
                &format!("{what}: rewritten sum is zero"),
                &input,
                &[steer],
                id,
            );
            let off = if input.src.is_ipv4() { 40 } else { 60 };
            assert_eq!(&r.data[off..off + 2], &[0xff, 0xff], "{what}");

            let input = zero_sum(q);
            let id = if steer == Maglev {
                maglev_pick(lb, &input)
            } else {
                id
            };
            expect_redirect(
                lb,
                &format!("{what}: arriving checksum 0xffff"),
                &input,
                &[steer],
                id,
            );
        }
        Ok(())
    })
}

/// Frames shorter than the Ethernet minimum arrive padded; the padding is not part of the IP
/// datagram (lengths come from the IP header) and is left as it is.
#[test]
fn ethernet_padding_is_ignored_and_kept() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let syn = Pkt::tcp(CLIENT_V4, VIP_V4, 49200, VIP_PORT, tcp_flags::SYN);
        let mut padded = syn.bytes();
        assert_eq!(padded.len(), 54);
        padded.extend_from_slice(&[0; 6]);
        let id = maglev_pick(lb, &syn);
        let mut want = redirected(&syn, id);
        want.extend_from_slice(&[0; 6]);
        lb.check(
            "padded SYN",
            &padded,
            Want {
                verdict: XDP_REDIRECT,
                out: &want,
                reasons: &[Maglev, Redirect],
                vip: Some(VIP_V4_TCP),
                backend: Some(id),
            },
        );
        // Any trailer after the IP datagram is not ours either.
        let short = Pkt::udp(CLIENT_V4, VIP_V4, 49201, PLAIN_UDP_PORT).payload([4; 10]);
        let mut padded = short.bytes();
        padded.extend_from_slice(&[0xee; 8]);
        let id = maglev_pick(lb, &short);
        let mut want = redirected(&short, id);
        want.extend_from_slice(&[0xee; 8]);
        lb.check(
            "UDP with trailer",
            &padded,
            Want {
                verdict: XDP_REDIRECT,
                out: &want,
                reasons: &[Maglev, Redirect],
                vip: Some(VIP_V4_PLAIN_UDP),
                backend: Some(id),
            },
        );
        Ok(())
    })
}

/// Only the destination changes: DF, TOS, TTL (not decremented: the LB is not a router hop
/// for the backend), the IPv6 traffic class and flow label all survive.
#[test]
fn ipv4_df_tos_ttl_and_ipv6_flow_label_are_preserved() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let mut p4 = v4_short(2);
        p4.df = true;
        p4.tos = 0xb8;
        p4.ttl = 7;
        expect_redirect(lb, "v4 DF, EF, TTL 7", &p4, &[RoutedCid], v4_backend_id(2));
        let mut p6 = v6_short(2);
        p6.tos = 0x2e;
        p6.flow_label = 0xabcde;
        p6.ttl = 1;
        expect_redirect(
            lb,
            "v6 tclass, flow label, hop limit 1",
            &p6,
            &[RoutedCid],
            v6_backend_id(2),
        );
        Ok(())
    })
}

/// XDP_ABORTED is never a verdict: every run in this file asserts it (`Lb::run_on`); this
/// test throws a mixed bag of odd frames at the program to make that explicit.
#[test]
fn never_aborts_on_odd_frames() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let mut frames: Vec<Vec<u8>> = vec![
            vec![0xff; 14],
            vec![0; 64],
            [&EXT_MAC[..], &CLIENT_MAC, &[0x08, 0x00], &[0x4f; 60]].concat(),
            [&EXT_MAC[..], &CLIENT_MAC, &[0x86, 0xdd], &[0x60; 60]].concat(),
            [
                &EXT_MAC[..],
                &CLIENT_MAC,
                &[0x81, 0x00, 0xff, 0xff, 0x08, 0x00],
                &[0x45; 40],
            ]
            .concat(),
        ];
        let mut seed = 0x2545_f491_u32;
        for len in [14usize, 20, 34, 42, 54, 60, 64, 100, 200] {
            let mut f: Vec<u8> = [&EXT_MAC[..], &CLIENT_MAC, &[0x08, 0x00]].concat();
            while f.len() < len {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                f.push(seed as u8);
            }
            frames.push(f);
        }
        for f in frames {
            let (r, d) = lb.run(&f);
            assert_eq!(r.verdict, XDP_PASS, "frame {}", hex(&f));
            assert_eq!(r.data, f);
            let moved: u64 = Reason::ALL.iter().map(|r| d.global.packets(*r)).sum();
            assert_eq!(
                moved,
                1,
                "exactly one reason for {}: {:?}",
                hex(&f),
                d.global.nonzero()
            );
        }
        Ok(())
    })
}

/// The next-hop cache has one slot per backend id modulo 4096 on each CPU: two backends
/// that share a slot must never be given each other's next hop. Backend 2 (behind `be`) and
/// backend 4098 (behind `ext`, XDP_TX) share slot 2.
#[test]
fn fib_cache_slot_shared_by_two_backends_never_serves_the_other() -> Result<()> {
    let mut sizes = LoadOptions::compact();
    sizes.capacity.backends = 8192;
    with_lb_sized(RING, FibCache::Default, sizes, |lb| {
        lb.fib_cache(60_000_000_000);
        let (near, far) = (v4_backend_id(2), 4096 + v4_backend_id(2));
        assert_eq!(fib_cache_slot(near), fib_cache_slot(far));
        lb.dp
            .set_backend(far, &backend(TX_BACKEND_V4.into(), BACKEND_PORT))?;
        let p = |port| Pkt::udp(CLIENT_V4, VIP_V4, port, 8001).payload([5; 30]);
        publish_single(
            lb,
            VIP_V4.into(),
            8001,
            PROTO_UDP,
            10,
            (near, backend_v4(2).into()),
        )?;
        expect_redirect_on(lb, "near: lookup", &p(47000), &[Maglev], near, 10);
        expect_redirect_on(
            lb,
            "near: cached",
            &p(47001),
            &[Maglev, FibCached],
            near,
            10,
        );

        // The slot holds backend 2's next hop; backend 4098 must look its own up.
        publish_single(
            lb,
            VIP_V4.into(),
            8001,
            PROTO_UDP,
            10,
            (far, TX_BACKEND_V4.into()),
        )?;
        // The backend is past the ids the fixture's snapshot covers: read below.
        let tx = TX_BACKEND_V4.into();
        expect_tx(lb, "far", &p(47002), tx, &[Maglev, Tx], 10, None);
        expect_tx(lb, "far", &p(47003), tx, &[Maglev, Tx, FibCached], 10, None);
        assert_eq!(lb.dp.backend_stats(far)?.packets, 2);

        // And back: backend 2 finds the slot taken by 4098 and looks up again.
        publish_single(
            lb,
            VIP_V4.into(),
            8001,
            PROTO_UDP,
            10,
            (near, backend_v4(2).into()),
        )?;
        expect_redirect_on(lb, "near again: lookup", &p(47004), &[Maglev], near, 10);
        Ok(())
    })
}
