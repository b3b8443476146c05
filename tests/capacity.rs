//! The data plane at the sizes of a large cluster, through the real kernel:
//!
//! - 20,000 VIPs (10,000 entries with TCP and UDP on 443) programmed through the config,
//!   plan and diff into maps of the default sizes, with rings sized to their backends; a
//!   sample of them routes real packets (BPF_PROG_TEST_RUN), each counted for its own VIP;
//! - rings republished thousands of times while another thread runs packets: every packet
//!   goes to the backend the old ring or the new ring names for its flow, never elsewhere,
//!   and freed slots are reused after their grace period;
//! - the last of 65,536 backend ids routes;
//! - a map the kernel refuses (a memory cgroup too small for the connection table) stops
//!   `lb run` with an error naming the map and the `[capacity]` key, and nothing attached.
//!
//! cargo test -p lb-tests --test capacity -- --test-threads=1

#[path = "support/mod.rs"]
mod support;

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use lb_common::{FAMILY_V4, FlowKey, PROTO_TCP, maglev::ring_size_for};
use lb_lab::{
    packet::{Packet, parse, tcp_flags},
    testbed::{CLIENT_MAC, CLIENT_V4, EXT_MAC, Testbed, backend_v4, fixture::BACKEND_PORT},
};
use lb_userspace::{
    config::{self, Config, Plan},
    dataplane::{Dataplane, LoadOptions, addr_key, backend, vip_key},
    maglev::{WeightedBackend, build_table},
};

const XDP_REDIRECT: u32 = 4;

/// VIP address `i` (198.18.100.0 onwards: clear of the testbed's own addresses).
fn vip_addr(i: u32) -> Ipv4Addr {
    let n = u32::from(Ipv4Addr::new(198, 18, 100, 0)) + i;
    Ipv4Addr::from(n)
}

/// `entries` `[[vips]]` entries with TCP and UDP on 443 over the testbed's three backends.
fn big_config(entries: u32) -> String {
    let mut text = String::from("interfaces = [\"ext\"]\n");
    let backends: String = (0..3)
        .map(|i| {
            format!(
                "[[vips.backends]]\naddress = \"{}\"\nport = {BACKEND_PORT}\n",
                backend_v4(i)
            )
        })
        .collect();
    for i in 0..entries {
        text += &format!(
            "[[vips]]\naddress = \"{}\"\nports = [443]\nprotocols = [\"tcp\", \"udp\"]\n{backends}",
            vip_addr(i)
        );
    }
    text
}

fn syn(dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    Packet::eth(CLIENT_MAC, EXT_MAC)
        .ipv4(CLIENT_V4, dst)
        .tcp(sport, 443)
        .flags(tcp_flags::SYN)
        .build()
}

#[test]
fn twenty_thousand_vips_route_real_packets() -> Result<()> {
    lb_lab::netns::require_root()?;
    let t = Instant::now();
    let text = big_config(10_000);
    let config = Config::parse(&text, "lb.toml", std::path::Path::new("."))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let plan = Plan::build(&config, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        plan.vips.len() == 20_000,
        "{} VIPs planned",
        plan.vips.len()
    );
    let planned = t.elapsed();

    let tb = Testbed::new()?;
    let _inside = tb.enter()?;
    let t = Instant::now();
    let mut dp =
        Dataplane::load_with(LoadOptions::default()).context("loading at default sizes")?;
    let loaded = t.elapsed();
    let t = Instant::now();
    config::apply(&mut dp, &Plan::diff(&Plan::default(), &plan))?;
    let programmed = t.elapsed();
    eprintln!(
        "20,000 VIPs: parse+plan {planned:?}, load {loaded:?}, program {programmed:?}; \
         ring pool {} of {} slots",
        dp.ring_pool().used(),
        dp.capacity().maglev_slots
    );
    // Three backends each: 389-slot rings (the smallest prime >= 3 x 128), one per VIP.
    let ring = ring_size_for(3);
    assert_eq!(ring, 389);
    assert_eq!(dp.ring_pool().used(), 20_000 * ring as u64);

    // Every 97th entry (103 VIPs over the whole range, both ends included).
    let backends: Vec<IpAddr> = (0..3).map(|i| IpAddr::from(backend_v4(i))).collect();
    let mut sample: Vec<u32> = (0..10_000).step_by(97).collect();
    sample.push(9_999);
    for (n, i) in sample.iter().enumerate() {
        let addr = vip_addr(*i);
        let meta = dp
            .vip(&vip_key(addr.into(), 443, PROTO_TCP))
            .with_context(|| format!("VIP {addr}:443/tcp is not in LB_VIPS"))?;
        assert_eq!(meta.ring_size, ring, "{addr}");
        let before = dp.vip_stats(meta.index)?;
        let out = dp.test_run(&syn(addr, 20_000 + n as u16), tb.ext_ifindex)?;
        assert_eq!(out.verdict, XDP_REDIRECT, "SYN to {addr}:443");
        let p = parse(&out.data).map_err(anyhow::Error::msg)?;
        assert!(
            backends.contains(&p.dst_ip()) && p.dport == BACKEND_PORT,
            "{addr}: sent to {}:{}",
            p.dst_ip(),
            p.dport
        );
        let moved = dp.vip_stats(meta.index)?.delta(&before);
        assert_eq!((moved.packets, moved.dropped), (1, 0), "{addr}: {moved:?}");
    }
    Ok(())
}

/// The backend `table` gives the flow with this hash.
fn owner(table: &[u32], hash: u32) -> u32 {
    table[(hash % table.len() as u32) as usize]
}

#[test]
fn rings_flip_under_load_without_a_wrong_verdict() -> Result<()> {
    lb_lab::netns::require_root()?;
    let tb = Testbed::new()?;
    let _inside = tb.enter()?;
    // The smallest pool allowed: replaced rings must come back for reuse.
    let mut opts = LoadOptions::compact();
    opts.capacity.maglev_slots = 2 * lb_common::MAGLEV_RING_MAX;
    let mut dp = Dataplane::load_with(opts)?;
    dp.set_fib_cache_ttl(0)?;
    let ids = [10u32, 11, 12];
    for (n, id) in ids.iter().enumerate() {
        dp.set_backend(*id, &backend(backend_v4(n as u8).into(), BACKEND_PORT))?;
    }
    let ip = |id: u32| IpAddr::from(backend_v4((id - 10) as u8));
    // Two backend sets that share one backend, so flows really move between tables.
    let wb = |id: u32| WeightedBackend {
        id,
        addr: ip(id),
        port: BACKEND_PORT,
        weight: 1,
    };
    let a = build_table(&[wb(10), wb(11)], 257)?;
    let b = build_table(&[wb(11), wb(12)], 257)?;
    let vip = Ipv4Addr::new(198, 18, 0, 100);
    let key = vip_key(vip.into(), 443, PROTO_TCP);
    dp.publish_ring(&key, 0, 0, &a)?;

    let runner = dp.xdp_runner()?;
    let stop = Arc::new(AtomicBool::new(false));
    let ext = tb.ext_ifindex;
    let (tables_a, tables_b) = (a.clone(), b.clone());
    let stop_runner = stop.clone();
    let load = std::thread::spawn(move || -> Result<u64> {
        // Spawned from the thread inside the testbed: in its namespace too, where the
        // program's FIB lookups and ingress ifindex belong.
        let mut sent = 0u64;
        let mut sport = 1024u16;
        while !stop_runner.load(Ordering::Relaxed) {
            // 20,000 flows over and over: new SYNs for Maglev, within the reply table.
            sport = if sport >= 21_023 { 1024 } else { sport + 1 };
            let pkt = syn(vip, sport);
            let hash = lb_common::hash::flow_hash(&FlowKey {
                src: addr_key(CLIENT_V4.into()).0,
                dst: addr_key(vip.into()).0,
                sport,
                dport: 443,
                proto: PROTO_TCP,
                family: FAMILY_V4,
                _pad: [0; 2],
            });
            let out = runner.run(&pkt, ext)?;
            let p = parse(&out.data).map_err(anyhow::Error::msg)?;
            let want = [owner(&tables_a, hash), owner(&tables_b, hash)].map(ip);
            if out.verdict != XDP_REDIRECT || !want.contains(&p.dst_ip()) {
                bail!(
                    "packet {sent} (port {sport}): verdict {}, sent to {}; the old or new \
                     ring names {want:?}",
                    out.verdict,
                    p.dst_ip()
                );
            }
            sent += 1;
        }
        Ok(sent)
    });
    // Flip for 2.5 s: past the grace period, so freed slots are written again.
    let deadline = Instant::now() + Duration::from_millis(2500);
    let mut flips = 0u32;
    while Instant::now() < deadline && !load.is_finished() {
        let table = if flips.is_multiple_of(2) { &b } else { &a };
        dp.publish_ring(&key, 0, 0, table)?;
        flips += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let sent = load.join().expect("load thread")?;
    let pool = dp.ring_pool();
    eprintln!(
        "{flips} ring flips under {sent} packets; pool {} slots, {} in use, {} in grace",
        pool.capacity(),
        pool.used(),
        pool.in_grace()
    );
    ensure!(
        sent > 1000 && flips > 1000,
        "too little ran: {sent} packets, {flips} flips"
    );
    // More rings were written than the pool holds at once: slots were reused.
    ensure!(
        flips as u64 * 257 > pool.capacity() as u64,
        "{flips} flips never wrapped the pool"
    );
    Ok(())
}

#[test]
fn the_last_of_65536_backend_ids_routes() -> Result<()> {
    lb_lab::netns::require_root()?;
    let tb = Testbed::new()?;
    let _inside = tb.enter()?;
    let mut dp = Dataplane::load_with(LoadOptions::default())?;
    assert_eq!(dp.capacity().backends, 65_536);
    dp.set_fib_cache_ttl(0)?;
    let last = 65_535;
    dp.set_backend(last, &backend(backend_v4(1).into(), BACKEND_PORT))?;
    let key = vip_key(Ipv4Addr::new(198, 18, 0, 100).into(), 443, PROTO_TCP);
    dp.publish_ring(&key, 0, 0, &vec![last; 257])?;
    let out = dp.test_run(&syn(Ipv4Addr::new(198, 18, 0, 100), 4000), tb.ext_ifindex)?;
    assert_eq!(out.verdict, XDP_REDIRECT);
    let p = parse(&out.data).map_err(anyhow::Error::msg)?;
    assert_eq!(p.dst_ip(), IpAddr::from(backend_v4(1)));
    assert_eq!(dp.backend_stats(last)?.packets, 1);
    // One past the end is refused by the kernel, by name.
    let err = dp
        .set_backend(65_536, &backend(backend_v4(1).into(), BACKEND_PORT))
        .expect_err("backend id 65536 is past LB_BACKENDS");
    assert!(err.to_string().contains("LB_BACKENDS"), "{err}");
    Ok(())
}
