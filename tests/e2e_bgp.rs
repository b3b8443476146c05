//! BGP and ECMP end to end ([`lb_lab::bgp_lab`]): an upstream router running BIRD 2 learns the
//! VIP over eBGP (BFD 100 ms x 3, hold 9 s) from three nodes and installs one multipath route
//! hashed on the 5-tuple; a client behind the router holds long-lived QUIC (routed by
//! connection ID) and HTTP/1.1 keep-alive connections to the VIP.
//!
//! ```text
//!  client ── router (BIRD, ECMP) ══ node 1 (lb run + BIRD)
//!                                ══ node 2 (lb run + BIRD)
//!                                ══ node 3 (lb run + BIRD)
//!                                ── node 4, a worker (lb run, no BGP) ── b1, b2, b3 (b4 later)
//! ```
//!
//! Asserted ([`lb_lab::demo_bgp::Report::problems`]), with lb on every node:
//! 1. the router has the VIP with three next hops and the connections spread over all three
//!    nodes (the router's own `ip route get` per flow, and every node's XDP counters);
//! 2. one node killed (SIGKILL) and, separately, withdrawn gracefully (SIGTERM), each time
//!    brought back: every connection the router moved (away, then back) keeps working,
//!    QUIC and TCP; the same against kube-proxy-style nodes (nftables DNAT to a random
//!    backend, masquerade) breaks at least one moved connection, and there the router's
//!    `ip route get` names the node each backend saw as the masquerading source;
//! 3. after adding a backend on every node (`lb reload`) and a reshuffle: every moved QUIC
//!    connection survives; the TCP fraction is printed;
//! 4. failover with BFD, three runs each of SIGKILL and of the node's uplink down (the
//!    router's side stays up: only BFD notices): the first new connection from a source port
//!    that hashed to the stopped node succeeds within 1 s;
//! 5. new connections opened back to back while a node withdraws gracefully and comes
//!    back: none fails.
//! 6. without BFD, the node's uplink down is noticed by the hold timer (9 s) only: the first
//!    new connection succeeds after more than 1 s and within the hold time plus 1 s.
//! 7. traffic that is not lb's: kubelet-style probes from the worker node to its pods (TCP
//!    connect and HTTP GET every 100 ms) for the whole lb lab, through every kill, reload
//!    and withdrawal: every probe succeeds.
//!
//! Needs root and BIRD (`cargo xtask setup`).
//! `cargo test -p lb-tests --test e2e_bgp -- --test-threads=1 --nocapture`

mod support;

use std::{path::PathBuf, time::Instant};

use lb_lab::{
    bgp_lab::Speaker,
    demo_bgp::{Plan, measure},
    netns,
};

/// lb's own `[bgp]` speaker, or BIRD started by the lab beside lb (`LB_BGP_LAB_SPEAKER=1`).
fn speaker() -> Speaker {
    if std::env::var_os("LB_BGP_LAB_SPEAKER").is_some_and(|v| v == "1") {
        Speaker::Lab
    } else {
        Speaker::Lb
    }
}

#[test]
fn bgp_ecmp_reshuffle_survival_failover_and_graceful_withdrawal() {
    netns::require_root().unwrap_or_else(|e| panic!("{e:#}"));
    let t0 = Instant::now();
    let plan = Plan {
        lb: PathBuf::from(support::lb()),
        lab: PathBuf::from(support::lab()),
        prefix: "lbbgp".into(),
        speaker: speaker(),
        connections: 12,
        failover_runs: 3,
        without_bfd: true,
    };
    let report = measure(&plan, &mut |line| eprintln!("e2e_bgp: {line}"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{}", report.render());
    let problems = report.problems();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!("e2e_bgp: done in {:.1}s", t0.elapsed().as_secs_f64());
}
