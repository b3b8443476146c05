//! The API server load of lb's membership, bounded: 20 simulated nodes run the daemon's own
//! Lease renewer with the default settings against the in-process fake API server, and
//! write at most once per node per 10 s (kubelet's node-Lease cadence; failure detection is
//! gossip's, not the API server's). The full measurement at 10, 100 and 500 nodes, before
//! and after, is `cargo xtask bench-membership` (docs/kubernetes.md has the table).
//!
//! Needs no root. `cargo test -p lb-tests --test membership_load`

use std::time::Duration;

use lb_lab::membership_bench::{after, measure};

#[test]
fn membership_writes_at_most_once_per_node_per_ten_seconds() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let d = after();
    assert_eq!(
        d.renew,
        Duration::from_secs(10),
        "the default renew interval"
    );
    // Two renew intervals: each node writes exactly twice in it, give or take a renewal
    // that lands on both edges of the window.
    let row = rt.block_on(measure(d, 20, 3, Some(d.renew * 2))).unwrap();
    println!("{row:?}");
    assert_eq!(row.failed_writes, 0, "{row:?}");
    assert!(
        row.writes_per_node_per_10s <= 1.1,
        "more than one Lease write per node per 10 s: {row:?}"
    );
    assert!(
        row.writes_per_node_per_10s >= 0.9,
        "the simulated nodes did not renew (the measurement is broken): {row:?}"
    );
    // Every Lease watch receives each renewal once: 20 nodes / 10 s = 2 events/s each.
    assert!(
        (1.8..=2.2).contains(&row.events_per_watcher_per_s),
        "{row:?}"
    );
}
