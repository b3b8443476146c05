//! Shared helpers for the BPF_PROG_TEST_RUN fixture suite (`xdp_fixtures.rs`).
//!
//! Every test runs the real object through the real verifier, in a scratch namespace whose
//! FIB resolves exactly the backends the fixture expects (`lb_lab::testbed`). A run is
//! judged on four things at once: the verdict, the exact output bytes (expected packets are
//! built independently with the packet builder), valid checksums on anything rewritten, and
//! the exact set of counters that moved (global, per VIP, per backend; packets and bytes).
#![allow(dead_code)]

use std::net::IpAddr;

use anyhow::{Context, Result};
use lb_common::{Counter, FlowKey, PROTO_TCP, PROTO_UDP, Reason, VipClass, VipCounter};
use lb_lab::{
    packet::{Packet, hex, hex_diff, verify_checksums},
    testbed::{CLIENT_MAC, EXT_MAC, Testbed, fixture},
};
use lb_userspace::dataplane::{Dataplane, LoadOptions, ReasonCounters, RunResult, addr_key};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Small prime ring: the standard VIPs' rings stay small and quick to write.
pub const RING: u32 = 251;

/// VIP indexes and backend ids the standard fixture does not use, for per-test VIPs.
pub const MAX_VIP_INDEX: u32 = 16;
pub const MAX_BACKEND_ID: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FibCache {
    /// TTL 0: every forwarded packet does its own `bpf_fib_lookup`, so counters are the same
    /// for the first and the hundredth packet.
    Off,
    /// The default after `Dataplane::load()` (100 ms).
    Default,
}

/// A loaded, programmed data plane inside a live testbed namespace.
pub struct Lb<'a> {
    pub tb: &'a Testbed,
    pub dp: Dataplane,
}

/// Build the namespace, enter it (pinned to one CPU), load the program (the verifier runs
/// here), program the standard VIPs with a `ring`-slot Maglev ring, then run `f`. The RAII
/// guards leave and delete the namespace even when `f` panics.
pub fn with_lb(ring: u32, cache: FibCache, f: impl FnOnce(&mut Lb) -> Result<()>) -> Result<()> {
    with_lb_sized(ring, cache, LoadOptions::compact(), f)
}

/// [`with_lb`] with map sizes other than the defaults.
pub fn with_lb_sized(
    ring: u32,
    cache: FibCache,
    sizes: LoadOptions,
    f: impl FnOnce(&mut Lb) -> Result<()>,
) -> Result<()> {
    lb_lab::netns::require_root()?;
    let tb = Testbed::new()?;
    let _inside = tb.enter()?;
    let mut dp = Dataplane::load_with(sizes).context("loading the XDP program (verifier)")?;
    fixture::program_standard(&mut dp, ring)?;
    if cache == FibCache::Off {
        dp.set_fib_cache_ttl(0)?;
    }
    let mut lb = Lb { tb: &tb, dp };
    f(&mut lb)
}

/// Every counter the program keeps, summed over CPUs.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub global: ReasonCounters,
    pub vips: Vec<VipCounter>,
    pub backends: Vec<Counter>,
}

/// Counter movement across one or more runs.
#[derive(Clone, Debug)]
pub struct Delta {
    pub global: ReasonCounters,
    pub vips: Vec<VipCounter>,
    pub backends: Vec<Counter>,
}

impl Snapshot {
    pub fn take(dp: &Dataplane) -> Snapshot {
        Snapshot {
            global: dp.stats().expect("reading LB_STATS"),
            vips: (0..MAX_VIP_INDEX)
                .map(|i| dp.vip_stats(i).expect("reading LB_VIP_STATS"))
                .collect(),
            backends: (0..MAX_BACKEND_ID)
                .map(|i| dp.backend_stats(i).expect("reading LB_BE_STATS"))
                .collect(),
        }
    }

    pub fn delta_to(&self, after: &Snapshot) -> Delta {
        Delta {
            global: after.global.delta(&self.global),
            vips: after
                .vips
                .iter()
                .zip(&self.vips)
                .map(|(a, b)| a.delta(b))
                .collect(),
            backends: after
                .backends
                .iter()
                .zip(&self.backends)
                .map(|(a, b)| Counter {
                    packets: a.packets - b.packets,
                    bytes: a.bytes - b.bytes,
                })
                .collect(),
        }
    }
}

/// What one packet must do.
pub struct Want<'a> {
    pub verdict: u32,
    /// The exact frame the program must leave behind.
    pub out: &'a [u8],
    /// Each bumped by exactly one packet (of the input's length); every other reason by 0.
    pub reasons: &'a [Reason],
    /// The VIP whose per-VIP counters must show `reasons` (minus the global-only ones);
    /// `None`: no VIP counter may move.
    pub vip: Option<u32>,
    /// The backend whose counter must show this packet; `None`: no backend counter may move.
    pub backend: Option<u32>,
}

/// Reasons that are only ever counted globally: parse failures happen before there is a
/// VIP, and a steering mark that names no VIP of ours or is for a backend elsewhere has
/// none either.
pub fn global_only(r: Reason) -> bool {
    !lb_userspace::metrics::counted_per_vip(r)
}

/// Check that exactly the listed reasons moved, by exactly the listed packet counts, and (when
/// every packet had one size) by packets x that size in bytes. Any other reason moving fails.
pub fn expect_counters(
    what: &str,
    delta: &ReasonCounters,
    want: &[(Reason, u64)],
    bytes_per_packet: Option<u64>,
) {
    for r in Reason::ALL {
        let packets = want
            .iter()
            .filter(|(w, _)| *w == r)
            .map(|(_, n)| *n)
            .sum::<u64>();
        let got = delta.get(r);
        assert_eq!(
            got.packets,
            packets,
            "{what}: counter {} moved by {} packets, expected {packets}.\n  moved: {:?}\n  expected: {:?}",
            r.name(),
            got.packets,
            delta.nonzero(),
            want.iter().map(|(r, n)| (r.name(), *n)).collect::<Vec<_>>()
        );
        if let Some(size) = bytes_per_packet {
            assert_eq!(
                got.bytes,
                packets * size,
                "{what}: counter {} moved by {} bytes, expected {} packets x {size} octets",
                r.name(),
                got.bytes,
                packets
            );
        }
    }
}

/// Check the per-backend counters: `want` lists (backend id, packets); the rest are zero.
pub fn expect_backends(what: &str, delta: &Delta, want: &[(u32, u64)], bytes_per_packet: u64) {
    for (id, c) in delta.backends.iter().enumerate() {
        let packets = want
            .iter()
            .filter(|(w, _)| *w == id as u32)
            .map(|(_, n)| *n)
            .sum::<u64>();
        assert_eq!(
            (c.packets, c.bytes),
            (packets, packets * bytes_per_packet),
            "{what}: backend {id} counter moved by {c:?}, expected {packets} packets of \
             {bytes_per_packet} octets"
        );
    }
}

/// What one VIP's counter must show for `packets` packets of `bytes_per_packet` octets that
/// counted `want` (the reasons counted per VIP): each packet once, plus one `routed_cid` or
/// `dropped` per reason of that class.
pub fn vip_counter_for(packets: u64, bytes_per_packet: u64, want: &[(Reason, u64)]) -> VipCounter {
    let class = |c: VipClass| {
        want.iter()
            .filter(|(r, _)| r.vip_class() == c)
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    VipCounter {
        packets,
        bytes: packets * bytes_per_packet,
        routed_cid: class(VipClass::RoutedCid),
        dropped: class(VipClass::Dropped),
    }
}

/// Check the per-VIP counters after one packet: `vip` shows it with `want`'s reasons
/// ([`vip_counter_for`]); every other VIP is unchanged.
pub fn expect_vips(
    what: &str,
    delta: &Delta,
    vip: Option<u32>,
    want: &[(Reason, u64)],
    bytes_per_packet: u64,
) {
    for (i, d) in delta.vips.iter().enumerate() {
        let expected = if Some(i as u32) == vip {
            vip_counter_for(1, bytes_per_packet, want)
        } else {
            VipCounter::default()
        };
        assert_eq!(
            *d,
            expected,
            "{what} (VIP {i}): per-VIP counter moved by {d:?}, expected {expected:?} for \
             reasons {:?}",
            want.iter().map(|(r, n)| (r.name(), *n)).collect::<Vec<_>>()
        );
    }
}

pub fn assert_bytes(what: &str, expected: &[u8], got: &[u8]) {
    assert!(
        expected == got,
        "{what}: output differs from the expected packet\n{}\nexpected: {}\ngot:      {}",
        hex_diff(expected, got),
        hex(expected),
        hex(got)
    );
}

impl Lb<'_> {
    /// One packet arriving on `ext`: its result and every counter movement it caused.
    pub fn run(&self, pkt: &[u8]) -> (RunResult, Delta) {
        self.run_on(self.tb.ext_ifindex, pkt)
    }

    pub fn run_on(&self, ifindex: u32, pkt: &[u8]) -> (RunResult, Delta) {
        let before = Snapshot::take(&self.dp);
        let r = self
            .dp
            .test_run(pkt, ifindex)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed: {e}\npacket: {}", hex(pkt)));
        let after = Snapshot::take(&self.dp);
        assert_ne!(
            r.verdict,
            XDP_ABORTED,
            "XDP_ABORTED for packet {}",
            hex(pkt)
        );
        assert!(
            (XDP_DROP..=XDP_REDIRECT).contains(&r.verdict),
            "unknown verdict {} for packet {}",
            r.verdict,
            hex(pkt)
        );
        (r, before.delta_to(&after))
    }

    /// Run one packet and check everything `want` says: verdict, exact bytes, checksums of a
    /// rewritten packet, and the complete set of global, per-VIP and per-backend counters.
    pub fn check(&self, what: &str, pkt: &[u8], want: Want) -> RunResult {
        self.check_on(what, self.tb.ext_ifindex, pkt, want)
    }

    pub fn check_on(&self, what: &str, ifindex: u32, pkt: &[u8], want: Want) -> RunResult {
        let (r, d) = self.run_on(ifindex, pkt);
        assert_eq!(
            r.verdict,
            want.verdict,
            "{what}: verdict {}, expected {}; counters moved: {:?}",
            r.verdict,
            want.verdict,
            d.global.nonzero()
        );
        assert_bytes(what, want.out, &r.data);
        let rewritten = want.out != pkt;
        if rewritten {
            verify_checksums(&r.data)
                .unwrap_or_else(|e| panic!("{what}: bad checksums in the output: {e}"));
        }
        let len = pkt.len() as u64;
        let all: Vec<(Reason, u64)> = want.reasons.iter().map(|r| (*r, 1)).collect();
        expect_counters(&format!("{what} (global)"), &d.global, &all, Some(len));
        let per_vip: Vec<(Reason, u64)> = all
            .iter()
            .copied()
            .filter(|(r, _)| !global_only(*r))
            .collect();
        assert!(
            want.vip.is_some() || per_vip.is_empty(),
            "{what}: test bug: steering reasons without a VIP"
        );
        expect_vips(what, &d, want.vip, &per_vip, len);
        let be: Vec<(u32, u64)> = want.backend.map(|b| (b, 1)).into_iter().collect();
        expect_backends(what, &d, &be, len);
        r
    }

    /// A packet the program must not touch: XDP_PASS, same bytes, exactly one `reason`.
    pub fn check_untouched(&self, what: &str, pkt: &[u8], reason: Reason) {
        self.check(
            what,
            pkt,
            Want {
                verdict: XDP_PASS,
                out: pkt,
                reasons: &[reason],
                vip: None,
                backend: None,
            },
        );
    }

    pub fn fib_cache(&mut self, ttl_ns: u64) {
        self.dp
            .set_fib_cache_ttl(ttl_ns)
            .expect("writing LB_SETTINGS");
    }
}

// ---- packets ------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    /// TCP with these flags (seq 1, ack 1 when ACK is set).
    Tcp(u8),
}

/// The fields of a test packet. Inputs and expected outputs are both rendered from this by
/// the packet builder, so an expected packet is an independent build of the same datagram
/// with the destination (and MACs, VLAN) the load balancer should have produced.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    pub ip_options: Vec<u8>,
    pub df: bool,
    pub tos: u8,
    pub ttl: u8,
    pub flow_label: u32,
    pub udp_no_checksum: bool,
    /// lb's steering mark (VIP, port), as a steering node adds it.
    pub mark: Option<(IpAddr, u16)>,
}

impl Pkt {
    /// A UDP datagram from the client router (CLIENT_MAC) to this node (EXT_MAC).
    pub fn udp(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, sport: u16, dport: u16) -> Pkt {
        Pkt {
            smac: CLIENT_MAC,
            dmac: EXT_MAC,
            vlan: None,
            src: src.into(),
            dst: dst.into(),
            proto: Proto::Udp,
            sport,
            dport,
            payload: Vec::new(),
            ip_options: Vec::new(),
            df: false,
            tos: 0,
            ttl: 64,
            flow_label: 0,
            udp_no_checksum: false,
            mark: None,
        }
    }

    /// The same datagram with lb's steering mark for `vip`:`port`.
    pub fn marked(mut self, vip: impl Into<IpAddr>, port: u16) -> Pkt {
        self.mark = Some((vip.into(), port));
        self
    }

    pub fn tcp(
        src: impl Into<IpAddr>,
        dst: impl Into<IpAddr>,
        sport: u16,
        dport: u16,
        flags: u8,
    ) -> Pkt {
        Pkt {
            proto: Proto::Tcp(flags),
            ..Pkt::udp(src, dst, sport, dport)
        }
    }

    pub fn payload(mut self, p: impl AsRef<[u8]>) -> Pkt {
        self.payload = p.as_ref().to_vec();
        self
    }

    pub fn vlan(mut self, vid: u16) -> Pkt {
        self.vlan = Some(vid);
        self
    }

    pub fn untagged(mut self) -> Pkt {
        self.vlan = None;
        self
    }

    /// Ethernet source and destination.
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Pkt {
        self.smac = src;
        self.dmac = dst;
        self
    }

    /// The same datagram with its destination rewritten (DNAT).
    pub fn dnat(mut self, addr: impl Into<IpAddr>, port: u16) -> Pkt {
        self.dst = addr.into();
        self.dport = port;
        self
    }

    pub fn builder(&self) -> Packet {
        let mut p = Packet::eth(self.smac, self.dmac);
        if let Some(v) = self.vlan {
            p = p.vlan(v);
        }
        p = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut p = p.ipv4(s, d).df(self.df);
                if !self.ip_options.is_empty() {
                    p = p.ip_options(&self.ip_options);
                }
                p
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => p.ipv6(s, d).flow_label(self.flow_label),
            _ => panic!("test bug: mixed address families"),
        };
        if let Some((vip, port)) = self.mark {
            p = p.steering_mark(vip, port);
        }
        p = p.tos(self.tos).ttl(self.ttl);
        p = match self.proto {
            Proto::Udp => p.udp(self.sport, self.dport),
            Proto::Tcp(flags) => {
                let ack = flags & lb_lab::packet::tcp_flags::ACK != 0;
                p.tcp(self.sport, self.dport)
                    .flags(flags)
                    .seq(1)
                    .ack(if ack { 1 } else { 0 })
            }
        };
        if self.udp_no_checksum {
            p = p.udp_no_checksum();
        }
        p.payload(&self.payload)
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.builder().build()
    }

    /// The connection-table key of this packet as it arrives.
    pub fn flow_key(&self) -> FlowKey {
        let (src, family) = addr_key(self.src);
        let (dst, _) = addr_key(self.dst);
        FlowKey {
            src,
            dst,
            sport: self.sport,
            dport: self.dport,
            proto: match self.proto {
                Proto::Udp => PROTO_UDP,
                Proto::Tcp(_) => PROTO_TCP,
            },
            family,
            _pad: [0; 2],
        }
    }
}

// ---- steering expectations shared by the fixture files ---------------------------------

use Reason::Redirect;
use lb_common::hash::flow_hash;
use lb_lab::testbed::{BE_MAC, backend_mac, backend_v4, backend_v6, fixture::*};
use lb_userspace::dataplane::vip_key;

/// Address and MAC of a standard backend id (0..3 IPv4, 3..6 IPv6, all behind `be`).
pub fn backend_of(id: u32) -> (IpAddr, [u8; 6]) {
    match id {
        0..=2 => (backend_v4(id as u8).into(), backend_mac(id as u8)),
        3..=5 => (backend_v6(id as u8 - 3).into(), backend_mac(id as u8 - 3)),
        _ => panic!("test bug: {id} is not a backend behind `be`"),
    }
}

/// What `p` must look like redirected to backend `id`: DNAT to the backend, MACs from the
/// FIB (`be`'s own as source, the backend's neighbour entry as destination), VLAN tag gone.
pub fn redirected(p: &Pkt, id: u32) -> Vec<u8> {
    let (addr, mac) = backend_of(id);
    p.clone()
        .dnat(addr, BACKEND_PORT)
        .macs(BE_MAC, mac)
        .untagged()
        .bytes()
}

pub fn vip_of(p: &Pkt) -> u32 {
    let proto = match p.proto {
        Proto::Udp => PROTO_UDP,
        Proto::Tcp(_) => PROTO_TCP,
    };
    match (p.dst, p.dport, proto) {
        (IpAddr::V4(_), VIP_PORT, PROTO_UDP) => VIP_V4_QUIC,
        (IpAddr::V4(_), VIP_PORT, PROTO_TCP) => VIP_V4_TCP,
        (IpAddr::V6(_), VIP_PORT, PROTO_UDP) => VIP_V6_QUIC,
        (IpAddr::V6(_), VIP_PORT, PROTO_TCP) => VIP_V6_TCP,
        (IpAddr::V4(_), PLAIN_UDP_PORT, PROTO_UDP) => VIP_V4_PLAIN_UDP,
        other => panic!("test bug: {other:?} is not a standard VIP"),
    }
}

/// Run `p` (one of the standard VIPs) and require: steered by `steering`, redirected to
/// backend `id` with exact bytes, and exactly these counters.
pub fn expect_redirect(lb: &Lb, what: &str, p: &Pkt, steering: &[Reason], id: u32) -> RunResult {
    expect_redirect_on(lb, what, p, steering, id, vip_of(p))
}

/// [`expect_redirect`] for a VIP of the test's own, counted under VIP index `vip`.
pub fn expect_redirect_on(
    lb: &Lb,
    what: &str,
    p: &Pkt,
    steering: &[Reason],
    id: u32,
    vip: u32,
) -> RunResult {
    let reasons: Vec<Reason> = steering.iter().copied().chain([Redirect]).collect();
    lb.check(
        what,
        &p.bytes(),
        Want {
            verdict: XDP_REDIRECT,
            out: &redirected(p, id),
            reasons: &reasons,
            vip: Some(vip),
            backend: Some(id),
        },
    )
}

/// The backend the live Maglev ring of `p`'s VIP names for `p`'s flow, computed on the host
/// (`lb_common::hash::flow_hash`, the same function the program runs).
pub fn maglev_pick(lb: &Lb, p: &Pkt) -> u32 {
    let k = p.flow_key();
    let meta = lb
        .dp
        .vip(&vip_key(p.dst, p.dport, k.proto))
        .expect("the VIP exists");
    lb.dp
        .ring_slot(&meta, flow_hash(&k) % meta.ring_size)
        .expect("reading LB_MAGLEV")
}

/// Publish a plain (non-QUIC) VIP `addr:port/proto` with index `index` and one backend, for
/// the forwarding cases (TX, no neighbour, no route) that need a VIP of their own.
pub fn publish_single(
    lb: &mut Lb,
    addr: IpAddr,
    port: u16,
    proto: u8,
    index: u32,
    backend: (u32, IpAddr),
) -> Result<()> {
    let vip = Vip {
        addr,
        port,
        proto,
        index,
        flags: 0,
    };
    publish(&mut lb.dp, &vip, &[backend], RING_FOR_SINGLE_BACKEND)
}

/// A small prime: one backend fills any ring.
const RING_FOR_SINGLE_BACKEND: u32 = 251;
