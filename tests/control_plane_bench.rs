//! `cargo xtask bench --control-plane` at a tiny scale (20 Services, one node, 20 changes),
//! so the harness cannot rot: it runs end to end against a real `lb run --kube` and its
//! JSON report has every key with sane values (every VIP programmed, percentiles in
//! order, a re-list writing nothing). The figures themselves are the bench's business.
//!
//! Needs root. `cargo test -p lb-tests --test control_plane_bench -- --nocapture`

mod support;

use std::{path::PathBuf, time::Duration};

use lb_lab::control_plane_bench::{Options, check_json, run};

#[test]
fn the_control_plane_bench_reports_every_key_at_tiny_scale() {
    let json = std::env::temp_dir().join(format!("lb-cp-bench-test-{}.json", std::process::id()));
    let opts = Options {
        services: 20,
        endpoints: 60,
        nodes: 1,
        changes: 20,
        rate: 5,
        window: Duration::from_secs(2),
        small: 5,
        cold_start_limit: Duration::from_secs(60),
        lb: Some(PathBuf::from(support::lb())),
        json: Some(json.clone()),
    };
    let report = run(&opts).unwrap_or_else(|e| panic!("{e:#}"));
    let text = std::fs::read_to_string(&json).unwrap();
    let _ = std::fs::remove_file(&json);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    check_json(&v, 20, 1).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        report.api_requests_per_min_per_node_small.is_some(),
        "the small-cluster window ran"
    );
}
