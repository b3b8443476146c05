//! Fixtures for the reverse-NAT TC program (`lb_tc_rnat`): every case runs the real object
//! through the real verifier and BPF_PROG_TEST_RUN (an skb built from a whole Ethernet
//! frame, as at TC ingress), and asserts the return code, the exact output frame (the
//! expected one is built independently with the packet builder), valid checksums on
//! anything rewritten, and exactly which counters moved (packets and bytes). The last test
//! sends a real reply across three namespaces (client, node, backend) through the attached
//! program.
//!
//! Run as root:
//!
//! ```sh
//! cargo test -p lb-tests --test rnat_fixtures -- --test-threads=1
//! ```

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use lb_common::{PROTO_TCP, PROTO_UDP, RnatReason, reply::ReplyTimeouts};
use lb_lab::{
    netns::{NetNs, require_root, veth_pair},
    packet::{L4Checksum, Packet, hex, hex_diff, tcp_flags, verify_checksums},
};
use lb_userspace::dataplane::{Dataplane, RnatCounters};

const TC_ACT_OK: u32 = 0;

const BACKEND_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const BACKEND_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10);
const OTHER_BACKEND_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const OTHER_BACKEND_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x11);
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2);
const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x100);
const BACKEND_PORT: u16 = 8443;
const VIP_PORT: u16 = 443;
const CLIENT_PORT: u16 = 40000;

const BACKEND_MAC: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x10];
const NODE_BE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L4 {
    Udp,
    /// TCP with these flags.
    Tcp(u8),
}

/// A reply as the backend sends it (or as the client must get it), rendered by the packet
/// builder.
#[derive(Clone, Debug)]
struct Reply {
    vlan: Option<u16>,
    src: IpAddr,
    dst: IpAddr,
    l4: L4,
    sport: u16,
    dport: u16,
    payload: Vec<u8>,
    ip_options: Vec<u8>,
    udp_no_checksum: bool,
}

impl Reply {
    fn new(l4: L4, src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> Reply {
        Reply {
            vlan: None,
            src: src.into(),
            dst: dst.into(),
            l4,
            sport: BACKEND_PORT,
            dport: CLIENT_PORT,
            payload: b"reply from the backend".to_vec(),
            ip_options: Vec::new(),
            udp_no_checksum: false,
        }
    }
    fn v4(l4: L4) -> Reply {
        Reply::new(l4, BACKEND_V4, CLIENT_V4)
    }
    fn v6(l4: L4) -> Reply {
        Reply::new(l4, BACKEND_V6, CLIENT_V6)
    }

    /// The same reply from (addr, port): what the program must make of it.
    fn sent_from(&self, addr: impl Into<IpAddr>, port: u16) -> Reply {
        Reply {
            src: addr.into(),
            sport: port,
            ..self.clone()
        }
    }

    /// The reply as it must leave the node: from the VIP of its family.
    fn to_vip_source(&self) -> Reply {
        let vip: IpAddr = if self.src.is_ipv4() {
            VIP_V4.into()
        } else {
            VIP_V6.into()
        };
        self.sent_from(vip, VIP_PORT)
    }

    fn builder(&self) -> Packet {
        let mut p = Packet::eth(BACKEND_MAC, NODE_BE_MAC);
        if let Some(v) = self.vlan {
            p = p.vlan(v);
        }
        p = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut p = p.ipv4(s, d).df(true);
                if !self.ip_options.is_empty() {
                    p = p.ip_options(&self.ip_options);
                }
                p
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => p.ipv6(s, d).flow_label(0x12345),
            _ => panic!("test bug: mixed address families"),
        };
        p = p.ttl(63);
        p = match self.l4 {
            L4::Udp => p.udp(self.sport, self.dport),
            L4::Tcp(flags) => p
                .tcp(self.sport, self.dport)
                .flags(flags)
                .seq(0x1000_0001)
                .ack(0x2000_0001),
        };
        if self.udp_no_checksum {
            p = p.udp_no_checksum();
        }
        p.payload(&self.payload)
    }

    fn bytes(&self) -> Vec<u8> {
        self.builder().build()
    }
}

/// A loaded object with the reverse NAT program verified; its reply table is empty.
fn loaded() -> Result<Dataplane> {
    require_root()?;
    let mut dp = Dataplane::load().context("loading the BPF object")?;
    dp.load_rnat()
        .context("loading lb_tc_rnat (the verifier runs here)")?;
    Ok(dp)
}

fn proto_of(l4: L4) -> u8 {
    match l4 {
        L4::Udp => PROTO_UDP,
        L4::Tcp(_) => PROTO_TCP,
    }
}

fn vip_of(addr: IpAddr) -> IpAddr {
    if addr.is_ipv4() {
        VIP_V4.into()
    } else {
        VIP_V6.into()
    }
}

/// Record `r`'s flow as the XDP program does when it steers the client's packet: replies
/// from its source (the backend) to its destination (the client) leave from the VIP of
/// their family, port 443.
fn steered(dp: &mut Dataplane, r: &Reply) {
    dp.set_reply_flow(
        SocketAddr::new(r.src, r.sport),
        SocketAddr::new(r.dst, r.dport),
        proto_of(r.l4),
        SocketAddr::new(vip_of(r.src), VIP_PORT),
        Some(0),
    )
    .unwrap_or_else(|e| panic!("recording {r:?}: {e}"));
}

/// Run `pkt` once and require: TC_ACT_OK, output exactly `want`, valid checksums when
/// rewritten, and exactly one packet (of the input's length) counted, under `reason`.
fn check(dp: &mut Dataplane, what: &str, pkt: &[u8], want: &[u8], reason: RnatReason) {
    let before = dp.rnat_stats().expect("reading LB_RNAT_STATS");
    let r = dp.test_run_rnat(pkt).unwrap_or_else(|e| {
        panic!(
            "{what}: BPF_PROG_TEST_RUN failed: {e}\npacket: {}",
            hex(pkt)
        )
    });
    let d = dp
        .rnat_stats()
        .expect("reading LB_RNAT_STATS")
        .delta(&before);
    assert_eq!(
        r.verdict,
        TC_ACT_OK,
        "{what}: return code {}, expected TC_ACT_OK; counters moved: {:?}",
        r.verdict,
        d.nonzero()
    );
    assert!(
        r.data == want,
        "{what}: output differs from the expected packet\n{}\nexpected: {}\ngot:      {}",
        hex_diff(want, &r.data),
        hex(want),
        hex(&r.data)
    );
    if want != pkt {
        verify_checksums(&r.data)
            .unwrap_or_else(|e| panic!("{what}: bad checksums in the output: {e}"));
    }
    expect_one(what, &d, reason, pkt.len() as u64);
}

fn expect_one(what: &str, d: &RnatCounters, reason: RnatReason, bytes: u64) {
    for r in RnatReason::ALL {
        let want = if r == reason { (1, bytes) } else { (0, 0) };
        let got = d.get(r);
        assert_eq!(
            (got.packets, got.bytes),
            want,
            "{what}: counter {} moved by {got:?}, expected {want:?} (moved: {:?})",
            r.name(),
            d.nonzero()
        );
    }
}

/// `reply`'s flow is steered, and the reply leaves from the VIP.
fn rewritten(dp: &mut Dataplane, what: &str, reply: &Reply) {
    steered(dp, reply);
    check(
        dp,
        what,
        &reply.bytes(),
        &reply.to_vip_source().bytes(),
        RnatReason::Rewritten,
    );
}

fn untouched(dp: &mut Dataplane, what: &str, pkt: &[u8], reason: RnatReason) {
    check(dp, what, pkt, pkt, reason);
}

// ---- rewritten ---------------------------------------------------------------------------

#[test]
fn verifier_accepts_rnat_and_everything_starts_empty() -> Result<()> {
    let mut dp = loaded()?;
    assert_eq!(dp.rnat_stats()?, RnatCounters::default());
    assert!(dp.reply_flows().is_empty());
    let r = Reply::v4(L4::Udp);
    steered(&mut dp, &r);
    let nat = dp
        .reply_flow(
            SocketAddr::new(r.src, r.sport),
            SocketAddr::new(r.dst, r.dport),
            PROTO_UDP,
        )
        .context("the entry just written")?;
    assert_eq!(&nat.vip[..4], &VIP_V4.octets());
    assert_eq!(nat.vip_port, VIP_PORT);
    assert_eq!(nat.flags, 0, "no reply yet");
    Ok(())
}

#[test]
fn udp_and_tcp_replies_leave_from_the_vip() -> Result<()> {
    let mut dp = loaded()?;
    let syn_ack = L4::Tcp(tcp_flags::SYN | tcp_flags::ACK);
    let ack = L4::Tcp(tcp_flags::ACK);
    rewritten(&mut dp, "v4 UDP", &Reply::v4(L4::Udp));
    rewritten(&mut dp, "v6 UDP", &Reply::v6(L4::Udp));
    rewritten(&mut dp, "v4 TCP SYN-ACK", &Reply::v4(syn_ack));
    rewritten(&mut dp, "v6 TCP SYN-ACK", &Reply::v6(syn_ack));
    let mut big = Reply::v4(ack);
    big.payload = (0..1400).map(|i| (i * 7) as u8).collect();
    rewritten(&mut dp, "v4 TCP 1400-octet segment", &big);
    let mut big6 = Reply::v6(L4::Udp);
    big6.payload = (0..1200).map(|i| (i * 13) as u8).collect();
    rewritten(&mut dp, "v6 UDP 1200-octet datagram", &big6);
    let mut empty = Reply::v4(L4::Udp);
    empty.payload.clear();
    rewritten(&mut dp, "v4 UDP empty payload", &empty);
    let mut odd = Reply::v6(ack);
    odd.payload = vec![0xab; 13];
    rewritten(&mut dp, "v6 TCP odd-length payload", &odd);
    Ok(())
}

#[test]
fn ipv4_options_and_vlan_tag_are_kept() -> Result<()> {
    let mut dp = loaded()?;
    let mut opts = Reply::v4(L4::Udp);
    // Router alert (4 octets) + NOP padding to 8.
    opts.ip_options = vec![0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00];
    rewritten(&mut dp, "v4 UDP with IP options", &opts);
    let mut opts_tcp = opts.clone();
    opts_tcp.l4 = L4::Tcp(tcp_flags::ACK);
    rewritten(&mut dp, "v4 TCP with IP options", &opts_tcp);
    for (what, mut r) in [
        ("VLAN v4 UDP", Reply::v4(L4::Udp)),
        ("VLAN v6 UDP", Reply::v6(L4::Udp)),
        ("VLAN v4 TCP", Reply::v4(L4::Tcp(tcp_flags::ACK))),
        ("VLAN v6 TCP", Reply::v6(L4::Tcp(tcp_flags::ACK))),
    ] {
        r.vlan = Some(42);
        rewritten(&mut dp, what, &r);
    }
    Ok(())
}

/// IPv4 UDP without a checksum (0) stays without one; everything else is rewritten.
#[test]
fn ipv4_udp_zero_checksum_stays_zero() -> Result<()> {
    let mut dp = loaded()?;
    let mut r = Reply::v4(L4::Udp);
    r.udp_no_checksum = true;
    steered(&mut dp, &r);
    let out = r.to_vip_source();
    check(
        &mut dp,
        "v4 UDP checksum 0",
        &r.bytes(),
        &out.bytes(),
        RnatReason::Rewritten,
    );
    let report = verify_checksums(&out.bytes()).map_err(anyhow::Error::msg)?;
    assert_eq!(report.l4, L4Checksum::UdpNone);
    Ok(())
}

/// A UDP checksum that computes to 0 after the rewrite is sent as 0xffff (0 means "none").
#[test]
fn udp_checksum_computing_to_zero_is_sent_as_ffff() -> Result<()> {
    let mut dp = loaded()?;
    for base in [Reply::v4(L4::Udp), Reply::v6(L4::Udp)] {
        // Choose the last payload word so that the rewritten datagram sums to zero.
        let mut r = base.clone();
        r.payload = vec![0x5a, 0xa5, 0, 0];
        let probe = r.to_vip_source().bytes();
        let report = verify_checksums(&probe).map_err(anyhow::Error::msg)?;
        let L4Checksum::Valid(c) = report.l4 else {
            panic!("test bug: probe has no UDP checksum")
        };
        r.payload[2..].copy_from_slice(&c.to_be_bytes());
        let out = r.to_vip_source().bytes();
        let field = out.len() - r.payload.len() - 2;
        assert_eq!(
            u16::from_be_bytes([out[field], out[field + 1]]),
            0xffff,
            "test bug: the expected packet's checksum should compute to 0"
        );
        let input = r.bytes();
        assert_ne!(
            u16::from_be_bytes([input[field], input[field + 1]]),
            0xffff,
            "test bug: the input should not already carry 0xffff"
        );
        let what = format!("{:?} UDP checksum computing to 0", r.src);
        steered(&mut dp, &r);
        check(&mut dp, &what, &input, &out, RnatReason::Rewritten);
    }
    Ok(())
}

// ---- not ours: untouched -----------------------------------------------------------------

/// Only the replies of steered flows are rewritten: every other packet from a backend's
/// address and serving port (an answer to kubelet's probe from the node, to another pod, to
/// a ClusterIP client, the backend's own connection) passes untouched.
#[test]
fn replies_of_flows_lb_did_not_steer_pass_untouched() -> Result<()> {
    let mut dp = loaded()?;
    let not = RnatReason::PassNotSteered;
    for r in [
        Reply::v4(L4::Udp),
        Reply::v6(L4::Udp),
        Reply::v4(L4::Tcp(tcp_flags::ACK)),
    ] {
        steered(&mut dp, &r);
    }
    let to = |r: Reply, dst: IpAddr, dport: u16| Reply { dst, dport, ..r };
    let node_v4: IpAddr = Ipv4Addr::new(198, 19, 0, 1).into();
    let cases = [
        (
            "v4: the same backend port answering the node (a kubelet probe)",
            to(
                Reply::v4(L4::Tcp(tcp_flags::SYN | tcp_flags::ACK)),
                node_v4,
                51000,
            ),
        ),
        (
            "v4: the same backend port answering another pod",
            to(
                Reply::v4(L4::Udp),
                Ipv4Addr::new(198, 19, 0, 11).into(),
                40000,
            ),
        ),
        (
            "v4: the steered client, another client port",
            to(Reply::v4(L4::Udp), CLIENT_V4.into(), CLIENT_PORT + 1),
        ),
        (
            "v6: the steered client, another client port",
            to(Reply::v6(L4::Udp), CLIENT_V6.into(), CLIENT_PORT + 1),
        ),
        (
            "v4 other backend address",
            Reply::v4(L4::Udp).sent_from(OTHER_BACKEND_V4, BACKEND_PORT),
        ),
        (
            "v6 other backend address",
            Reply::v6(L4::Udp).sent_from(OTHER_BACKEND_V6, BACKEND_PORT),
        ),
        (
            "v4 other backend port",
            Reply::v4(L4::Udp).sent_from(BACKEND_V4, 8444),
        ),
        (
            "v6 TCP when only UDP was steered",
            Reply::v6(L4::Tcp(tcp_flags::ACK)),
        ),
        (
            "the client's address as a source",
            Reply::new(L4::Udp, CLIENT_V4, BACKEND_V4).sent_from(CLIENT_V4, BACKEND_PORT),
        ),
        (
            "v4 VIP address as a source",
            Reply::v4(L4::Udp).sent_from(VIP_V4, VIP_PORT),
        ),
    ];
    for (what, r) in cases {
        untouched(&mut dp, what, &r.bytes(), not);
    }
    // The steered flows themselves are rewritten.
    check(
        &mut dp,
        "v4 UDP steered",
        &Reply::v4(L4::Udp).bytes(),
        &Reply::v4(L4::Udp).to_vip_source().bytes(),
        RnatReason::Rewritten,
    );
    // Once their entries are swept, they pass untouched too.
    let swept = dp.sweep_replies(u64::MAX, &ReplyTimeouts::DEFAULT)?;
    assert_eq!((swept.scanned, swept.expired), (3, 3), "{swept:?}");
    untouched(
        &mut dp,
        "v4 UDP after its entry expired",
        &Reply::v4(L4::Udp).bytes(),
        not,
    );
    // Not UDP/TCP, from a backend address.
    let icmp = Packet::eth(BACKEND_MAC, NODE_BE_MAC)
        .ipv4(BACKEND_V4, CLIENT_V4)
        .raw(1)
        .payload([0, 0, 0xff, 0xff, 0, 0, 0, 0])
        .build();
    untouched(&mut dp, "ICMP from the backend", &icmp, not);
    let icmp6 = Packet::eth(BACKEND_MAC, NODE_BE_MAC)
        .ipv6(BACKEND_V6, CLIENT_V6)
        .raw(58)
        .payload([129, 0, 0, 0, 0, 1, 0, 1])
        .build();
    untouched(&mut dp, "ICMPv6 from the backend", &icmp6, not);
    Ok(())
}

#[test]
fn non_ip_fragments_and_extension_headers_pass_untouched() -> Result<()> {
    let mut dp = loaded()?;
    let arp = Packet::eth(BACKEND_MAC, [0xff; 6])
        .ethertype(0x0806)
        .payload([0u8; 28])
        .build();
    untouched(&mut dp, "ARP", &arp, RnatReason::PassNotIp);
    // Two tags (802.1Q in 802.1Q, and 802.1ad S-tag + C-tag) around a mapped reply.
    let mut tagged = Reply::v4(L4::Udp);
    tagged.vlan = Some(200);
    let inner = tagged.bytes();
    let q_in_q = Packet::eth(BACKEND_MAC, NODE_BE_MAC)
        .vlan(100)
        .ethertype(0x8100)
        .payload(&inner[14..])
        .build();
    assert_eq!(&q_in_q[12..18], &[0x81, 0x00, 0x00, 100, 0x81, 0x00]);
    untouched(&mut dp, "802.1Q in 802.1Q", &q_in_q, RnatReason::PassNotIp);
    let s_tag = Packet::eth(BACKEND_MAC, NODE_BE_MAC)
        .ethertype(0x88a8)
        .payload([&[0x00, 100][..], &inner[12..]].concat())
        .build();
    assert_eq!(&s_tag[12..18], &[0x88, 0xa8, 0x00, 100, 0x81, 0x00]);
    untouched(
        &mut dp,
        "802.1ad S-tag + C-tag",
        &s_tag,
        RnatReason::PassNotIp,
    );
    let frag = Reply::v4(L4::Udp).builder().mf(true).build();
    untouched(
        &mut dp,
        "v4 first fragment",
        &frag,
        RnatReason::PassFragment,
    );
    let later = Reply::v4(L4::Udp).builder().frag_offset(10).build();
    untouched(
        &mut dp,
        "v4 later fragment",
        &later,
        RnatReason::PassFragment,
    );
    let ext = Reply::v6(L4::Udp)
        .builder()
        .dest_opts(&[1, 4, 0, 0, 0, 0])
        .build();
    untouched(
        &mut dp,
        "v6 destination options",
        &ext,
        RnatReason::PassIpv6Ext,
    );
    let frag6 = Reply::v6(L4::Udp).builder().fragment6(0, true, 7).build();
    untouched(
        &mut dp,
        "v6 fragment header",
        &frag6,
        RnatReason::PassIpv6Ext,
    );
    Ok(())
}

#[test]
fn truncated_and_inconsistent_packets_pass_untouched() -> Result<()> {
    let mut dp = loaded()?;
    let bad = RnatReason::PassMalformed;
    // The kernel (6.18) refuses to test-run an untagged IPv4/IPv6 frame shorter than the
    // Ethernet + IP header (EINVAL); under a VLAN tag it does not look, so cuts inside the
    // Ethernet/VLAN/IP headers are made on tagged frames.
    for (what, r) in [
        ("v4 UDP", Reply::v4(L4::Udp)),
        ("v6 UDP", Reply::v6(L4::Udp)),
        ("v4 TCP", Reply::v4(L4::Tcp(tcp_flags::ACK))),
        ("v6 TCP", Reply::v6(L4::Tcp(tcp_flags::ACK))),
    ] {
        for vlan in [None, Some(7)] {
            let r = Reply { vlan, ..r.clone() };
            let full = r.bytes();
            let l3 = if vlan.is_some() { 18 } else { 14 };
            let ip_hlen = if r.src.is_ipv4() { 20 } else { 40 };
            let hdrs = full.len() - r.payload.len();
            // Right after the IP header, inside the L4 header, and one octet short of the
            // IP length (which the IP header then overstates).
            let mut cuts = vec![l3 + ip_hlen, hdrs - 3, full.len() - 1];
            if vlan.is_some() {
                // Inside the tag, right after it, inside the IP header.
                cuts.extend([16, 18, l3 + 10]);
            }
            for cut in cuts {
                let short = &full[..cut];
                let what = format!("{what} (VLAN {vlan:?}) cut to {cut} octets");
                untouched(&mut dp, &what, short, bad);
            }
        }
    }
    ensure!(
        dp.test_run_rnat(&Reply::v4(L4::Udp).bytes()[..13]).is_err(),
        "a frame shorter than an Ethernet header must be refused before the kernel"
    );
    // Inconsistent headers.
    let v4 = Reply::v4(L4::Udp).bytes();
    let mut ihl_small = v4.clone();
    ihl_small[14] = 0x44;
    untouched(&mut dp, "v4 IHL 4", &ihl_small, bad);
    let mut udp_len_long = v4.clone();
    let udp_len_at = 14 + 20 + 4;
    let l = u16::from_be_bytes([v4[udp_len_at], v4[udp_len_at + 1]]) + 1;
    udp_len_long[udp_len_at..udp_len_at + 2].copy_from_slice(&l.to_be_bytes());
    untouched(
        &mut dp,
        "v4 UDP length beyond the IP length",
        &udp_len_long,
        bad,
    );
    let tcp = Reply::v6(L4::Tcp(tcp_flags::ACK)).bytes();
    let mut doff_small = tcp.clone();
    doff_small[14 + 40 + 12] = 0x40;
    untouched(&mut dp, "v6 TCP data offset 4", &doff_small, bad);
    let mut v6_zero = Reply::v6(L4::Udp);
    v6_zero.udp_no_checksum = true;
    untouched(&mut dp, "v6 UDP checksum 0", &v6_zero.bytes(), bad);
    Ok(())
}

#[test]
fn set_reply_flow_refuses_mixed_families_and_other_protocols() -> Result<()> {
    let mut dp = loaded()?;
    let b4 = SocketAddr::new(BACKEND_V4.into(), 1);
    let c4 = SocketAddr::new(CLIENT_V4.into(), 2);
    let v6 = SocketAddr::new(VIP_V6.into(), 443);
    let v4 = SocketAddr::new(VIP_V4.into(), 443);
    assert!(dp.set_reply_flow(b4, c4, PROTO_UDP, v6, None).is_err());
    assert!(dp.set_reply_flow(b4, c4, 1, v4, None).is_err());
    assert!(dp.reply_flows().is_empty());
    Ok(())
}

// ---- forwarding -----------------------------------------------------------------------------

const TC_ACT_REDIRECT: u32 = 7;

/// With forwarding on, inside a node namespace whose FIB knows the clients: a reply to a
/// client with a neighbour entry is rewritten, gets the FIB's MACs (the egress interface's
/// own as source, the client's as destination) and is redirected (`forwarded`); one to a
/// client whose neighbour is unresolved is redirected through `bpf_redirect_neigh` with its
/// MACs left for the kernel to fill in; one the FIB cannot route, and a VLAN-tagged frame,
/// are rewritten and passed to the stack (`fib_fallback`). With forwarding off, TC_ACT_OK
/// and `rewritten` only, as in every other fixture.
#[test]
fn forwarding_redirects_with_fib_macs_or_falls_back() -> Result<()> {
    require_root()?;
    let client = NetNs::create("lbfc")?;
    let node = NetNs::create("lbfn")?;
    let ext_mac = [2, 0, 0, 0, 0, 1];
    let c = veth_pair(
        &client,
        "eth0",
        [2, 0xc1, 0, 0, 0, 2],
        &node,
        "ext",
        ext_mac,
    )?;
    node.addr_add("ext", "198.18.0.1/24")?;
    node.addr_add("ext", "fd00:18::1/64")?;
    node.sysctl("net.ipv4.ip_forward", "1")?;
    node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    node.neigh_add(CLIENT_V4.into(), c.mac, "ext")?;
    node.neigh_add(CLIENT_V6.into(), c.mac, "ext")?;

    let mut dp = loaded()?;
    dp.set_rnat_forward(true)?;
    let _in_node = node.enter()?;

    let run = |dp: &mut Dataplane,
               what: &str,
               reply: &Reply,
               verdict: u32,
               want: &[u8],
               how: &[RnatReason]| {
        steered(dp, reply);
        let pkt = reply.bytes();
        let before = dp.rnat_stats().expect("reading LB_RNAT_STATS");
        let r = dp
            .test_run_rnat(&pkt)
            .unwrap_or_else(|e| panic!("{what}: BPF_PROG_TEST_RUN failed: {e}"));
        let d = dp
            .rnat_stats()
            .expect("reading LB_RNAT_STATS")
            .delta(&before);
        assert_eq!(
            r.verdict,
            verdict,
            "{what}: return code; moved: {:?}",
            d.nonzero()
        );
        assert!(
            r.data == want,
            "{what}: output differs\n{}\nexpected: {}\ngot:      {}",
            hex_diff(want, &r.data),
            hex(want),
            hex(&r.data)
        );
        verify_checksums(&r.data).unwrap_or_else(|e| panic!("{what}: bad checksums: {e}"));
        for reason in RnatReason::ALL {
            let n = u64::from(reason == RnatReason::Rewritten || how.contains(&reason));
            assert_eq!(
                (d.get(reason).packets, d.get(reason).bytes),
                (n, n * pkt.len() as u64),
                "{what}: counter {}; moved: {:?}",
                reason.name(),
                d.nonzero()
            );
        }
    };
    let with_macs = |reply: &Reply, src: [u8; 6], dst: [u8; 6]| -> Vec<u8> {
        let mut b = reply.to_vip_source().bytes();
        b[..6].copy_from_slice(&dst);
        b[6..12].copy_from_slice(&src);
        b
    };

    let ack = L4::Tcp(tcp_flags::SYN | tcp_flags::ACK);
    for reply in [
        Reply::v4(L4::Udp),
        Reply::v6(L4::Udp),
        Reply::v4(ack),
        Reply::v6(ack),
    ] {
        let want = with_macs(&reply, ext_mac, c.mac);
        run(
            &mut dp,
            &format!("{reply:?} to a resolved client"),
            &reply,
            TC_ACT_REDIRECT,
            &want,
            &[RnatReason::Forwarded],
        );
    }
    for reply in [
        Reply::new(L4::Udp, BACKEND_V4, Ipv4Addr::new(198, 18, 0, 3)),
        Reply::new(
            L4::Udp,
            BACKEND_V6,
            Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 3),
        ),
    ] {
        let want = reply.to_vip_source().bytes();
        run(
            &mut dp,
            "unresolved neighbour",
            &reply,
            TC_ACT_REDIRECT,
            &want,
            &[RnatReason::Forwarded],
        );
    }
    for reply in [
        Reply::new(L4::Udp, BACKEND_V4, Ipv4Addr::new(198, 19, 250, 1)),
        Reply::new(
            L4::Udp,
            BACKEND_V6,
            Ipv6Addr::new(0xfd00, 0x19, 0x250, 0, 0, 0, 0, 1),
        ),
    ] {
        let want = reply.to_vip_source().bytes();
        run(
            &mut dp,
            "no route",
            &reply,
            TC_ACT_OK,
            &want,
            &[RnatReason::FibFallback],
        );
    }
    let mut tagged = Reply::v4(L4::Udp);
    tagged.vlan = Some(42);
    let want = tagged.to_vip_source().bytes();
    run(
        &mut dp,
        "VLAN tag in the frame",
        &tagged,
        TC_ACT_OK,
        &want,
        &[RnatReason::FibFallback],
    );

    dp.set_rnat_forward(false)?;
    let reply = Reply::v4(L4::Udp);
    let want = reply.to_vip_source().bytes();
    run(&mut dp, "forwarding off", &reply, TC_ACT_OK, &want, &[]);
    Ok(())
}

// ---- end to end ---------------------------------------------------------------------------

/// client ns — node ns — backend ns over veths. The backend sends UDP replies from its own
/// address and port to the client; with `lb_tc_rnat` on TC ingress of the node's
/// backend-facing interface, the client's socket receives them from the VIP. Run once with
/// checksum offload off everywhere and once with TX offload on at the backend, so the node
/// sees CHECKSUM_PARTIAL skbs (the client's kernel verifies the final checksum); with
/// offload on, a UDP GSO send also checks that a GSO skb rewritten once segments into
/// datagrams that all come from the VIP with valid checksums.
///
/// Then the same with forwarding on (`set_rnat_forward`): every rewritten reply is counted
/// `forwarded`, and the node's stack forwards none of them (its IP forwarding counters
/// move only for the unmapped datagram, which the stack routes as before).
#[test]
fn end_to_end_client_receives_reply_from_vip() -> Result<()> {
    require_root()?;
    for forward in [false, true] {
        for backend_tx_offload in [false, true] {
            end_to_end(backend_tx_offload, forward).with_context(|| {
                format!("backend TX checksum offload {backend_tx_offload}, forwarding {forward}")
            })?;
        }
    }
    Ok(())
}

/// The node's count of datagrams its stack forwarded (IPv4 `ForwDatagrams`, IPv6
/// `Ip6OutForwDatagrams`), read inside its namespace.
fn stack_forwarded(node: &NetNs, v6: bool) -> Result<u64> {
    let (file, name) = if v6 {
        ("/proc/thread-self/net/snmp6", "Ip6OutForwDatagrams")
    } else {
        ("/proc/thread-self/net/snmp", "ForwDatagrams")
    };
    let text = node.run_in(|| std::fs::read_to_string(file))??;
    if v6 {
        for l in text.lines() {
            let mut f = l.split_whitespace();
            if f.next() == Some(name) {
                return Ok(f.next().context("snmp6 value")?.parse()?);
            }
        }
    } else {
        let ip: Vec<&str> = text.lines().filter(|l| l.starts_with("Ip: ")).collect();
        ensure!(ip.len() == 2, "no Ip: lines in {file}");
        let names: Vec<&str> = ip[0].split_whitespace().collect();
        let values: Vec<&str> = ip[1].split_whitespace().collect();
        if let Some(i) = names.iter().position(|n| *n == name) {
            return Ok(values[i].parse()?);
        }
    }
    anyhow::bail!("no {name} in {file}")
}

fn end_to_end(backend_tx_offload: bool, forward: bool) -> Result<()> {
    let client = NetNs::create("lbrc")?;
    let node = NetNs::create("lbrn")?;
    let backend = NetNs::create("lbrb")?;
    let c = veth_pair(
        &client,
        "eth0",
        [2, 0xc1, 0, 0, 0, 2],
        &node,
        "ext",
        [2, 0, 0, 0, 0, 1],
    )?;
    let b = veth_pair(&node, "be", NODE_BE_MAC, &backend, "eth0", BACKEND_MAC)?;
    client.addr_add("eth0", "198.18.0.2/24")?;
    client.addr_add("eth0", "fd00:18::2/64")?;
    node.addr_add("ext", "198.18.0.1/24")?;
    node.addr_add("ext", "fd00:18::1/64")?;
    node.addr_add("be", "198.19.0.1/24")?;
    node.addr_add("be", "fd00:19::1/64")?;
    backend.addr_add("eth0", "198.19.0.10/24")?;
    backend.addr_add("eth0", "fd00:19::10/64")?;
    client.route_add("default", Some("198.18.0.1"), None)?;
    client.route_add("default", Some("fd00:18::1"), None)?;
    backend.route_add("default", Some("198.19.0.1"), None)?;
    backend.route_add("default", Some("fd00:19::1"), None)?;
    node.sysctl("net.ipv4.ip_forward", "1")?;
    node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    // The rewritten reply is source-checked on `be` with the VIP as source: strict
    // rp_filter would drop it (the route back to the VIP is not via `be`).
    node.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    node.sysctl("net.ipv4.conf.be.rp_filter", "0")?;
    // Permanent neighbours: no first-packet ARP/NDP race.
    backend.neigh_add("198.19.0.1".parse()?, b.mac, "eth0")?;
    backend.neigh_add("fd00:19::1".parse()?, b.mac, "eth0")?;
    node.neigh_add(CLIENT_V4.into(), c.mac, "ext")?;
    node.neigh_add(CLIENT_V6.into(), c.mac, "ext")?;
    if backend_tx_offload {
        backend.set_checksum_offload("eth0", true)?;
    }

    let mut dp = loaded()?;
    dp.set_rnat_forward(forward)?;
    assert_eq!(dp.rnat_forward()?, forward);
    {
        let _in_node = node.enter()?;
        dp.attach_rnat(b.ifindex)
            .context("attaching lb_tc_rnat to `be`")?;
    }

    let mut gso_rewrites = 0;
    for (client_ip, backend_ip, vip) in [
        (
            IpAddr::from(CLIENT_V4),
            IpAddr::from(BACKEND_V4),
            IpAddr::from(VIP_V4),
        ),
        (CLIENT_V6.into(), BACKEND_V6.into(), VIP_V6.into()),
    ] {
        let to_client = SocketAddr::new(client_ip, CLIENT_PORT);
        let sock = client.run_in(|| UdpSocket::bind(to_client))??;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mapped =
            backend.run_in(|| UdpSocket::bind(SocketAddr::new(backend_ip, BACKEND_PORT)))??;
        let unmapped = backend.run_in(|| UdpSocket::bind(SocketAddr::new(backend_ip, 8444)))??;

        // The flow the XDP program would have recorded when it steered the client to the
        // backend (`steered` uses VIP port 443, as the socket below expects).
        let flow = Reply::new(L4::Udp, backend_ip, client_ip);
        steered(&mut dp, &flow);
        let before = dp.rnat_stats()?;
        let stack_before = stack_forwarded(&node, vip.is_ipv6())?;
        let msg = format!("reply via {vip}");
        mapped.send_to(msg.as_bytes(), to_client)?;
        let mut buf = [0u8; 256];
        let (n, from) = sock
            .recv_from(&mut buf)
            .with_context(|| format!("the client got no reply within 5 s ({vip})"))?;
        assert_eq!(&buf[..n], msg.as_bytes());
        assert_eq!(
            from,
            SocketAddr::new(vip, VIP_PORT),
            "the reply must come from the VIP"
        );
        let d = dp.rnat_stats()?.delta(&before);
        assert_eq!(
            d.packets(RnatReason::Rewritten),
            1,
            "one reply rewritten: {:?}",
            d.nonzero()
        );
        assert_eq!(
            (
                d.packets(RnatReason::Forwarded),
                d.packets(RnatReason::FibFallback)
            ),
            (u64::from(forward), 0),
            "forwarded by the program when forwarding is on: {:?}",
            d.nonzero()
        );
        assert_eq!(
            stack_forwarded(&node, vip.is_ipv6())? - stack_before,
            u64::from(!forward),
            "the node's stack forwards the reply only when the program does not"
        );

        // A port lb never steered passes untouched: the client sees the backend itself.
        unmapped.send_to(b"not mapped", to_client)?;
        let (n, from) = sock
            .recv_from(&mut buf)
            .context("the client got no unmapped datagram within 5 s")?;
        assert_eq!(&buf[..n], b"not mapped");
        assert_eq!(from, SocketAddr::new(backend_ip, 8444));

        if backend_tx_offload {
            // UDP GSO: one 1000-octet send with 400-octet segments. The veth hands the node
            // one GSO skb (CHECKSUM_PARTIAL); it is rewritten once and segmented on the way
            // out of `ext` (no offloads there), each segment's checksum computed from the
            // rewritten pseudo-header. The client's kernel verifies every one.
            const UDP_SEGMENT: libc::c_int = 103;
            let seg: libc::c_int = 400;
            // SAFETY: setsockopt on an open socket with a c_int option value.
            let rc = unsafe {
                libc::setsockopt(
                    mapped.as_raw_fd(),
                    libc::SOL_UDP,
                    UDP_SEGMENT,
                    (&seg as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            ensure!(
                rc == 0,
                "setsockopt(UDP_SEGMENT): {}",
                std::io::Error::last_os_error()
            );
            let big: Vec<u8> = (0..1000).map(|i| (i * 31 % 251) as u8).collect();
            let before = dp.rnat_stats()?;
            mapped.send_to(&big, to_client)?;
            let mut got = Vec::new();
            let mut big_buf = [0u8; 2048];
            for i in 0..3 {
                let (n, from) = sock
                    .recv_from(&mut big_buf)
                    .with_context(|| format!("GSO segment {i} did not arrive within 5 s"))?;
                assert_eq!(from, SocketAddr::new(vip, VIP_PORT), "GSO segment {i}");
                got.extend_from_slice(&big_buf[..n]);
            }
            assert_eq!(got, big, "the three segments carry the datagram's bytes");
            let d = dp.rnat_stats()?.delta(&before);
            let n = d.packets(RnatReason::Rewritten);
            assert!(
                n == 1 || n == 3,
                "one GSO skb or three segments rewritten, not {n}: {:?}",
                d.nonzero()
            );
            assert_eq!(
                d.packets(RnatReason::Forwarded),
                if forward { n } else { 0 },
                "a GSO skb is forwarded whole: {:?}",
                d.nonzero()
            );
            gso_rewrites += n;
        }
    }
    let s = dp.rnat_stats()?;
    assert_eq!(
        s.packets(RnatReason::Rewritten),
        2 + gso_rewrites,
        "{:?}",
        s.nonzero()
    );
    assert_eq!(
        s.packets(RnatReason::DropRewriteFailed),
        0,
        "{:?}",
        s.nonzero()
    );
    assert_eq!(
        s.packets(RnatReason::Forwarded),
        if forward { 2 + gso_rewrites } else { 0 },
        "{:?}",
        s.nonzero()
    );
    assert_eq!(s.packets(RnatReason::FibFallback), 0, "{:?}", s.nonzero());
    assert!(
        s.packets(RnatReason::PassNotSteered) >= 2,
        "{:?}",
        s.nonzero()
    );
    {
        let _in_node = node.enter()?;
        dp.detach_rnat(b.ifindex)?;
    }
    ensure!(
        dp.detach_rnat(b.ifindex).is_err(),
        "detaching twice must fail"
    );
    Ok(())
}
