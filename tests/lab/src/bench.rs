//! `lb-lab bench`: ns/packet of the XDP program through BPF_PROG_TEST_RUN, as ratios to an empty
//! program measured in the same run.
//!
//! Honesty rules (docs/benchmark.md): `repeat` reuses one buffer, and the load
//! balancer rewrites the packet, so every iteration goes through a harness program that first
//! restores the original packet from a template map and then tail-calls the program under
//! test. The floor is the same harness tail-calling an empty program. Each case's path is
//! proven by the program's own counters: the expected reasons advance by exactly `repeat` in
//! every round and no other reason moves; otherwise the bench fails rather than report a
//! figure for the wrong path.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use lb_common::{PROTO_TCP, PROTO_UDP, Reason, RnatReason};

use lb_userspace::dataplane::{CounterReason, Counters, Dataplane};

use crate::{
    packet::{Packet, quic, tcp_flags},
    testbed::{
        BE_MAC, CLIENT_MAC, CLIENT_V4, CLIENT_V6, EXT_MAC, OTHER_V4, Testbed, VIP_V4, VIP_V6,
        backend_mac, backend_v4, backend_v6, fixture,
    },
};

/// The ring size of the standard fixture's VIPs (a prime; the largest ring before rings
/// were sized to their backends, so a slot per flow hash is spread over many).
const STANDARD_RING: u32 = 65537;

pub const DEFAULT_REPEAT: u32 = 200_000;
const BENCH_FIB_CACHE_TTL_NS: u64 = 3_600_000_000_000;
pub const DEFAULT_ROUNDS: u32 = 9;

pub struct Options {
    pub json: Option<PathBuf>,
    pub repeat: u32,
    pub rounds: u32,
}

/// Which program a case measures, and the reasons its path must bump by `repeat`.
#[derive(Clone, Copy)]
enum Path {
    /// The XDP load balancer (floor: the XDP harness with the empty XDP program).
    Xdp(&'static [Reason]),
    /// The reverse NAT on TC ingress of the backend-facing interface, forwarding on
    /// (floor: the TC harness with the empty TC program).
    Tc(&'static [RnatReason]),
}

/// One benchmark case: a packet, and the path it must take.
struct Case {
    name: &'static str,
    packet: Vec<u8>,
    expect: Path,
    /// Packets run once (not measured) before the case, e.g. the SYN before an established
    /// flow. The case's own packet is always run once too, so the connection table and the
    /// FIB cache are in their steady state when measuring starts.
    warmup: Vec<Vec<u8>>,
    /// Whether the next-hop cache is on (the default); off measures `bpf_fib_lookup` itself.
    fib_cache: bool,
    /// How far the path moves the frame's head (the steering mark: -8 to insert it, +8 to
    /// remove it); the harness undoes it before every iteration.
    head_delta: i32,
    /// `lb run`'s rule on (`SETTINGS_F_XMIT_ONLY`) with no interface marked as taking a
    /// native redirect: the egress is a tunnel as far as the program knows.
    xmit_only: bool,
}

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
/// The server ID the bench maps to the backend reached back out of `ext`: a backend
/// behind another node, so its packets carry the steering mark.
const PEER_SERVER_INDEX: u8 = 0x4f;
const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
/// The client port of the flows the TC cases reply to.
const TC_CLIENT_PORT: u16 = 50000;

/// A reply from backend 0 (`be`) to the client, as it enters the node at TC ingress.
fn reply(v6: bool, proto: u8, sport: u16) -> Vec<u8> {
    let p = Packet::eth(backend_mac(0), BE_MAC);
    let p = if v6 {
        p.ipv6(backend_v6(0), CLIENT_V6)
    } else {
        p.ipv4(backend_v4(0), CLIENT_V4)
    };
    let p = if proto == PROTO_UDP {
        p.udp(sport, TC_CLIENT_PORT)
            .payload(quic::short(&fixture::dcid(0, [1, 2, 3, 4, 5, 6]), 64))
    } else {
        p.tcp(sport, TC_CLIENT_PORT)
            .flags(tcp_flags::ACK)
            .seq(1)
            .ack(1)
            .payload(vec![0x55; 64])
    };
    p.build()
}

fn udp(src: IpAddr, dst: IpAddr, dport: u16, payload: Vec<u8>) -> Vec<u8> {
    let p = Packet::eth(CLIENT_MAC, EXT_MAC);
    let p = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => p.ipv4(s, d),
        (IpAddr::V6(s), IpAddr::V6(d)) => p.ipv6(s, d),
        _ => unreachable!("mixed families in a bench packet"),
    };
    p.udp(50000, dport).payload(payload).build()
}

fn tcp(flags: u8) -> Vec<u8> {
    Packet::eth(CLIENT_MAC, EXT_MAC)
        .ipv4(CLIENT_V4, VIP_V4)
        .tcp(50001, fixture::VIP_PORT)
        .flags(flags)
        .seq(1)
        .ack(if flags & tcp_flags::ACK != 0 { 1 } else { 0 })
        .payload(if flags & tcp_flags::SYN != 0 {
            vec![]
        } else {
            vec![0x55; 64]
        })
        .build()
}

fn cases() -> Vec<Case> {
    let short_to = |src: IpAddr, dst: IpAddr, server: u8| {
        udp(
            src,
            dst,
            fixture::VIP_PORT,
            quic::short(&fixture::dcid(server, [1, 2, 3, 4, 5, 6]), 64),
        )
    };
    let short = |src: IpAddr, dst: IpAddr| short_to(src, dst, 0);
    let (c4, c6, v4, v6) = (
        IpAddr::from(CLIENT_V4),
        IpAddr::from(CLIENT_V6),
        IpAddr::from(VIP_V4),
        IpAddr::from(VIP_V6),
    );
    // A client-chosen 8-octet DCID whose config-rotation bits (0b110) name no config.
    let client_dcid = [0xc7, 0x1f, 0x22, 0x9e, 0x41, 0x08, 0x5a, 0x33];
    let initial = udp(
        c4,
        v4,
        fixture::VIP_PORT,
        quic::initial(&client_dcid, &[9, 9, 9, 9], &[], 64),
    );
    let case = |name, packet, expect, warmup| Case {
        name,
        packet,
        expect: Path::Xdp(expect),
        warmup,
        fib_cache: true,
        head_delta: 0,
        xmit_only: false,
    };
    let tc = |name, packet, expect| Case {
        name,
        packet,
        expect: Path::Tc(expect),
        warmup: vec![],
        fib_cache: true,
        head_delta: 0,
        xmit_only: false,
    };
    let port = fixture::BACKEND_PORT;
    // A packet another node steered to backend 0 with the steering mark, as it arrives.
    let from_peer = Packet::eth(CLIENT_MAC, EXT_MAC)
        .ipv4(CLIENT_V4, backend_v4(0))
        .steering_mark(v4, fixture::VIP_PORT)
        .udp(50000, port)
        .payload(quic::short(&fixture::dcid(0, [1, 2, 3, 4, 5, 6]), 64))
        .build();
    use Reason::*;
    use RnatReason::{Forwarded, PassNotSteered, Rewritten};
    vec![
        case("floor", short(c4, v4), &[], vec![]),
        tc("tc_floor", reply(false, PROTO_UDP, port), &[]),
        tc(
            "rnat_reply_udp_v4",
            reply(false, PROTO_UDP, port),
            &[Rewritten, Forwarded],
        ),
        tc(
            "rnat_reply_udp_v6",
            reply(true, PROTO_UDP, port),
            &[Rewritten, Forwarded],
        ),
        tc(
            "rnat_reply_tcp_v4",
            reply(false, PROTO_TCP, port),
            &[Rewritten, Forwarded],
        ),
        tc(
            "rnat_not_ours_v4",
            reply(false, PROTO_UDP, port + 1),
            &[PassNotSteered],
        ),
        case(
            "non_vip_pass",
            udp(
                c4,
                OTHER_V4.into(),
                fixture::VIP_PORT,
                quic::short(&[0; 9], 64),
            ),
            &[PassNotVip],
            vec![],
        ),
        case(
            "quic_short_plaintext_v4",
            short(c4, v4),
            &[RoutedCid, FibCached, Redirect],
            vec![],
        ),
        case(
            "quic_short_single_pass_v4",
            udp(
                c4,
                v4,
                fixture::VIP_PORT,
                quic::short(&fixture::dcid_under(fixture::SINGLE_PASS_CR, 0, 7), 64),
            ),
            &[RoutedCid, FibCached, Redirect],
            vec![],
        ),
        case(
            "quic_short_four_pass_v4",
            udp(
                c4,
                v4,
                fixture::VIP_PORT,
                quic::short(&fixture::dcid_under(fixture::FOUR_PASS_CR, 0, 7), 64),
            ),
            &[RoutedCid, FibCached, Redirect],
            vec![],
        ),
        case(
            "quic_short_plaintext_v6",
            short(c6, v6),
            &[RoutedCid, FibCached, Redirect],
            vec![],
        ),
        case(
            "quic_initial_v4",
            initial,
            &[FallbackInitial, LruHit, FibCached, Redirect],
            vec![],
        ),
        Case {
            name: "quic_short_to_peer_v4",
            packet: short_to(c4, v4, PEER_SERVER_INDEX),
            expect: Path::Xdp(&[RoutedCid, FibCached, MarkedForPeer, Tx]),
            warmup: vec![],
            fib_cache: true,
            head_delta: -(lb_common::mark::IPV4_LEN as i32),
            xmit_only: false,
        },
        Case {
            name: "quic_short_from_peer_v4",
            packet: from_peer,
            expect: Path::Xdp(&[FromPeer, Redirect]),
            warmup: vec![],
            fib_cache: true,
            head_delta: lb_common::mark::IPV4_LEN as i32,
            xmit_only: false,
        },
        case(
            "tcp_syn_v4",
            tcp(tcp_flags::SYN),
            &[Maglev, FibCached, Redirect],
            vec![],
        ),
        case(
            "tcp_established_v4",
            tcp(tcp_flags::ACK),
            &[LruHit, FibCached, Redirect],
            vec![tcp(tcp_flags::SYN)],
        ),
        // Not a required case: the same packets with the next-hop cache off, so the cost of
        // bpf_fib_lookup itself is on the record.
        // lb run's rule, the egress a tunnel (a VXLAN device): the rewritten packet goes to
        // the kernel instead of out of `be`.
        Case {
            name: "quic_short_to_kernel_route_v4",
            packet: short(c4, v4),
            expect: Path::Xdp(&[RoutedCid, FibCached, PassKernelRoute]),
            warmup: vec![],
            fib_cache: true,
            head_delta: 0,
            xmit_only: true,
        },
        Case {
            name: "quic_short_plaintext_v4_fib_uncached",
            packet: short(c4, v4),
            expect: Path::Xdp(&[RoutedCid, Redirect]),
            warmup: vec![],
            fib_cache: false,
            head_delta: 0,
            xmit_only: false,
        },
        Case {
            name: "quic_short_plaintext_v6_fib_uncached",
            packet: short(c6, v6),
            expect: Path::Xdp(&[RoutedCid, Redirect]),
            warmup: vec![],
            fib_cache: false,
            head_delta: 0,
            xmit_only: false,
        },
    ]
}

pub struct CaseResult {
    pub name: &'static str,
    pub ns: f64,
    pub ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn is_floor(case: &Case) -> bool {
    case.name == "floor" || case.name == "tc_floor"
}

fn measure(dp: &mut Dataplane, tb: &Testbed, case: &Case, repeat: u32) -> Result<Duration> {
    match case.expect {
        Path::Xdp(expect) => measure_xdp(dp, tb, case, expect, repeat),
        Path::Tc(expect) => measure_tc(dp, tb, case, expect, repeat),
    }
}

fn measure_xdp(
    dp: &mut Dataplane,
    tb: &Testbed,
    case: &Case,
    expect: &[Reason],
    repeat: u32,
) -> Result<Duration> {
    // A cached case measures the cache-hit path. The default lifetime would expire (and
    // refresh, one lookup per lifetime) somewhere inside a long run, which the exact counter
    // proof below would rightly reject; an hour keeps every iteration on the one path.
    let ttl = if case.fib_cache {
        BENCH_FIB_CACHE_TTL_NS
    } else {
        0
    };
    dp.set_fib_cache_ttl(ttl)?;
    dp.set_xmit_only(case.xmit_only)?;
    for w in case.warmup.iter().chain([&case.packet]) {
        dp.test_run(w, tb.ext_ifindex)?;
    }
    dp.bench_prepare(&case.packet, is_floor(case), case.head_delta)?;
    let before = dp.stats()?;
    let r = dp.bench_run(&case.packet, tb.ext_ifindex, repeat)?;
    let delta = dp.stats()?.delta(&before);
    let want_verdict = if expect.contains(&Reason::Redirect) {
        XDP_REDIRECT
    } else if expect.contains(&Reason::Tx) {
        XDP_TX
    } else {
        XDP_PASS
    };
    prove_path(case.name, repeat, (r.verdict, want_verdict), expect, &delta)?;
    Ok(r.duration)
}

fn measure_tc(
    dp: &mut Dataplane,
    tb: &Testbed,
    case: &Case,
    expect: &[RnatReason],
    repeat: u32,
) -> Result<Duration> {
    dp.set_rnat_forward(true)?;
    dp.bench_prepare_tc(&case.packet, is_floor(case))?;
    let before = dp.rnat_stats()?;
    let r = dp.bench_run_tc(&case.packet, tb.be_ifindex, repeat)?;
    let delta = dp.rnat_stats()?.delta(&before);
    let want_verdict = if expect.contains(&RnatReason::Forwarded) {
        TC_ACT_REDIRECT
    } else {
        TC_ACT_OK
    };
    prove_path(case.name, repeat, (r.verdict, want_verdict), expect, &delta)?;
    Ok(r.duration)
}

/// The counters must show that every iteration took the case's path, and nothing else.
fn prove_path<R: CounterReason + PartialEq, const N: usize>(
    name: &str,
    repeat: u32,
    (verdict, want_verdict): (u32, u32),
    expect: &[R],
    delta: &Counters<R, N>,
) -> Result<()> {
    ensure!(
        verdict == want_verdict,
        "bench case {name}: verdict {verdict}, expected {want_verdict}; counters moved: {:?}",
        delta.nonzero()
    );
    for &r in R::ALL {
        let want = if expect.contains(&r) {
            repeat as u64
        } else {
            0
        };
        if delta.packets(r) != want {
            bail!(
                "bench case {name}: counter {} advanced by {}, expected {want} (repeat {repeat}); \
                 the measured path is not the intended one. All counters that moved: {:?}",
                r.name(),
                delta.packets(r),
                delta.nonzero()
            );
        }
    }
    Ok(())
}

/// The state the TC and steering-mark cases need: the reverse NAT attached to `be` (so
/// backends behind it are local and the one back out of `ext` is behind a peer), marking on,
/// a server ID for that peer's backend, and reply entries for backend 0's replies to the
/// client (v4 and v6, UDP and TCP), as the XDP program writes them when it steers.
fn program_replies(dp: &mut Dataplane, tb: &Testbed) -> Result<()> {
    dp.attach_rnat(tb.be_ifindex)?;
    dp.set_mark_remote(true)?;
    dp.set_server_id(
        fixture::VIP_V4_QUIC,
        fixture::QUIC_CR,
        &fixture::server_id(PEER_SERVER_INDEX),
        fixture::TX_V4_ID,
    )?;
    for proto in [PROTO_UDP, PROTO_TCP] {
        for (backend, client, vip, id) in [
            (
                IpAddr::from(backend_v4(0)),
                IpAddr::from(CLIENT_V4),
                IpAddr::from(VIP_V4),
                fixture::v4_backend_id(0),
            ),
            (
                backend_v6(0).into(),
                CLIENT_V6.into(),
                VIP_V6.into(),
                fixture::v6_backend_id(0),
            ),
        ] {
            dp.set_reply_flow(
                SocketAddr::new(backend, fixture::BACKEND_PORT),
                SocketAddr::new(client, TC_CLIENT_PORT),
                proto,
                SocketAddr::new(vip, fixture::VIP_PORT),
                Some(id),
            )?;
        }
    }
    Ok(())
}

pub fn run(opts: &Options) -> Result<()> {
    let tb = Testbed::new().context("building the bench network namespace")?;
    let _inside = tb.enter()?;
    let mut dp = Dataplane::load().context("loading the XDP program")?;
    fixture::program_standard(&mut dp, STANDARD_RING).context("programming the bench VIPs")?;
    program_replies(&mut dp, &tb).context("programming the reverse NAT")?;
    let cases = cases();
    // samples[i]: case i's ns/packet per round; ratios[i]: case i over the floor measured
    // right before it. The machine's speed drifts (shared hosts, frequency scaling); pairing
    // each measurement with an adjacent floor cancels most of that drift out of the ratio.
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    eprintln!(
        "bench: {} cases x {} rounds x {} iterations (BPF_PROG_TEST_RUN, harness restores each packet)",
        cases.len(),
        opts.rounds,
        opts.repeat
    );
    let floor_of = |case: &Case| match case.expect {
        Path::Xdp(_) => 0,
        Path::Tc(_) => cases.iter().position(|c| c.name == "tc_floor").unwrap_or(0),
    };
    for round in 0..opts.rounds {
        for (i, case) in cases.iter().enumerate() {
            if is_floor(case) {
                continue;
            }
            let fi = floor_of(case);
            let f = ns(measure(&mut dp, &tb, &cases[fi], opts.repeat)?);
            let c = ns(measure(&mut dp, &tb, case, opts.repeat)?);
            ensure!(
                f > 0.0,
                "the floor measured 0 ns; the kernel's timer is too coarse here"
            );
            samples[fi].push(f);
            samples[i].push(c);
            ratios[i].push(c / f);
        }
        eprintln!("bench: round {}/{} done", round + 1, opts.rounds);
    }
    for (i, case) in cases.iter().enumerate() {
        if is_floor(case) {
            ratios[i] = vec![1.0];
        }
    }
    let floor_ns = median(samples[0].clone());
    let results: Vec<CaseResult> = cases
        .iter()
        .zip(samples.into_iter().zip(ratios))
        .map(|(c, (s, r))| CaseResult {
            name: c.name,
            ns: median(s),
            ratio: median(r),
        })
        .collect();
    println!("{:<38} {:>10} {:>8}", "case", "ns/packet", "ratio");
    for r in &results {
        println!("{:<38} {:>10.1} {:>7.2}x", r.name, r.ns, r.ratio);
    }
    println!(
        "(medians of {} rounds; ratio = median of case / the floor measured just before it: \
         `floor` for XDP cases, `tc_floor` for the reverse NAT's)",
        opts.rounds
    );
    if let Some(path) = &opts.json {
        std::fs::write(path, to_json(floor_ns, &results))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

pub fn to_json(floor_ns: f64, results: &[CaseResult]) -> String {
    let cases: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|r| {
            (
                r.name.to_string(),
                serde_json::json!({ "ns": round2(r.ns), "ratio": round2(r.ratio) }),
            )
        })
        .collect();
    let v = serde_json::json!({ "floor_ns": round2(floor_ns), "cases": cases });
    serde_json::to_string_pretty(&v).expect("JSON of numbers and strings") + "\n"
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
