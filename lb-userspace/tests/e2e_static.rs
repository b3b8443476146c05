//! End to end, static config: a client, a node running `lb run` and three backend pods in
//! network namespaces ([`lb_userspace::topology`]), real traffic through the real daemon.
//!
//! One test function runs the scenarios in order on one topology (building it costs a few
//! seconds): an independent HTTP/3 client (aioquic) through the CID-routed VIP; TCP and UDP
//! on the same VIP and port at once; 100 QUIC connections migrating with and without routing
//! by connection ID; `lb reload` with a broken config and with a backend removed.
//!
//! Needs root. aioquic comes from `LB_TEST_PYTHON` (`cargo xtask test` sets it to
//! `.venv/bin/python`): when it is set, a Python without aioquic fails the test; when it is
//! unset, only the aioquic step is skipped.
//!
//! `cargo test -p lb-userspace --test e2e_static -- --test-threads=1 --nocapture`

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use lb_userspace::{
    demo::{aioquic_in, failures, parse_json_output, per_backend},
    topology::{self, Options, Topology, VIP_CID, VIP_NOCID, VIP_PORT},
};
use serde_json::Value;

const LB: &str = env!("CARGO_BIN_EXE_lb");
const MIGRATING: usize = 100;

fn start() -> Topology {
    Topology::start(&Options {
        lb: PathBuf::from(LB),
        prefix: "lbe".into(),
        rust_log: None,
        remove_stale: true,
    })
    .unwrap_or_else(|e| panic!("building the end-to-end topology: {e:#}"))
}

fn probe_h3_cmd(topo: &Topology, target: std::net::Ipv4Addr, n: usize, migrate: bool) -> Command {
    let mut cmd = topo.client_lb().unwrap();
    cmd.args(["probe", "h3", "--target", &format!("{target}:{VIP_PORT}")])
        .args(["--insecure", "--connections", &n.to_string()])
        .args(["--requests-per-phase", "2", "--json"])
        .stdin(Stdio::null());
    if migrate {
        cmd.arg("--migrate");
    }
    cmd
}

fn http1_cmd(topo: &Topology, n: usize) -> Command {
    let mut cmd = topo.client_lb().unwrap();
    cmd.args([
        "probe",
        "http1",
        "--target",
        &format!("{VIP_CID}:{VIP_PORT}"),
    ])
    .args(["--requests", &n.to_string(), "--json"])
    .stdin(Stdio::null());
    cmd
}

fn run_json(mut cmd: Command, what: &str, topo: &Topology) -> Value {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    parse_json_output(&out, what).unwrap_or_else(|e| panic!("{e:#}\n{}", daemon_log(topo)))
}

fn daemon_log(topo: &Topology) -> String {
    format!("--- lb run log ---\n{}", topo.log("lb-run"))
}

fn backends_of(v: &Value) -> BTreeSet<String> {
    v["per_backend"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn all_backends() -> BTreeSet<String> {
    (1..=topology::BACKENDS)
        .map(topology::backend_name)
        .collect()
}

/// Every connection (or request) of a probe succeeded.
fn assert_all_ok(v: &Value, n: usize, key: &str, what: &str) {
    assert_eq!(
        v["succeeded"].as_u64(),
        Some(n as u64),
        "{what}: {} of {n} {key} succeeded ({}): {}",
        v["succeeded"],
        failures(v),
        v["failures"]
    );
}

fn aioquic_step(topo: &Topology) {
    let Some(py) = std::env::var_os("LB_TEST_PYTHON") else {
        eprintln!("e2e: LB_TEST_PYTHON is unset: skipping the aioquic step");
        return;
    };
    let py = PathBuf::from(py);
    let check = Command::new(&py)
        .args(["-c", "import aioquic"])
        .output()
        .unwrap_or_else(|e| panic!("LB_TEST_PYTHON={}: cannot run it: {e}", py.display()));
    assert!(
        check.status.success(),
        "LB_TEST_PYTHON={} has no aioquic (run `cargo xtask setup`): {}",
        py.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    let answers = aioquic_in(topo, &py, 3)
        .unwrap_or_else(|e| panic!("aioquic through {VIP_CID}: {e:#}\n{}", daemon_log(topo)));
    let first = &answers[0].1;
    assert!(
        all_backends().contains(&first.name),
        "unexpected backend {first:?}"
    );
    for (i, (status, who)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "request {i}: {who:?}");
        assert_eq!(who.protocol, "h3");
        // Every request on a new server-issued CID, all routed to the connection's backend.
        assert_eq!(who.name, first.name, "request {i} reached another backend");
        let n: u8 = who.name[1..].parse().unwrap();
        assert_eq!(who.server_id, topology::server_id(n));
        assert_eq!(who.client.ip(), std::net::IpAddr::V4(topology::CLIENT_ADDR));
        assert_eq!(who.requests_on_connection, i as u64 + 1);
    }
}

#[test]
fn e2e_static_daemon_routes_real_traffic() {
    let t0 = Instant::now();
    let topo = start();
    eprintln!("e2e: topology up in {:.1}s", t0.elapsed().as_secs_f64());

    // (i) an independent HTTP/3 client through the CID-routed VIP.
    aioquic_step(&topo);

    // (ii) TCP and UDP on the same VIP and port at the same time.
    let http1 = http1_cmd(&topo, 40).stdout(Stdio::piped()).spawn().unwrap();
    let h3 = probe_h3_cmd(&topo, VIP_CID, 40, false)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (http1, h3) = (
        http1.wait_with_output().unwrap(),
        h3.wait_with_output().unwrap(),
    );
    let http1 = parse_json_output(&http1, "probe http1").unwrap();
    let h3 = parse_json_output(&h3, "probe h3").unwrap();
    assert_all_ok(&http1, 40, "requests", "HTTP/1.1 over TCP");
    assert_all_ok(&h3, 40, "connections", "HTTP/3 over UDP");
    for r in http1["results"].as_array().unwrap() {
        assert_eq!(
            r["client"].as_str().map(|c| c.starts_with("198.18.0.2:")),
            Some(true),
            "{r}"
        );
    }
    assert_eq!(
        backends_of(&http1),
        all_backends(),
        "TCP spread: {}",
        per_backend(&http1)
    );
    assert_eq!(
        backends_of(&h3),
        all_backends(),
        "UDP spread: {}",
        per_backend(&h3)
    );
    eprintln!(
        "e2e: concurrent TCP {} / UDP {}",
        per_backend(&http1),
        per_backend(&h3)
    );

    // (iii) 100 connections migrate to a new source port: all stay on their backend.
    let cid = run_json(
        probe_h3_cmd(&topo, VIP_CID, MIGRATING, true),
        "probe h3 --migrate",
        &topo,
    );
    assert_all_ok(&cid, MIGRATING, "connections", "migration with CID routing");
    assert_eq!(
        cid["migrated"].as_u64(),
        Some(MIGRATING as u64),
        "{}",
        failures(&cid)
    );
    assert_eq!(
        cid["survived"].as_u64(),
        Some(MIGRATING as u64),
        "{}",
        failures(&cid)
    );
    for r in cid["results"].as_array().unwrap() {
        assert_eq!(r["migrated"], Value::Bool(true), "{r}");
        assert!(r["backend_before"].is_string(), "{r}");
        assert_eq!(r["backend_before"], r["backend_after"], "{r}");
        assert_eq!(r["server_id_before"], r["server_id_after"], "{r}");
        // The backend really saw the new address.
        assert_ne!(r["client_before"], r["client_after"], "{r}");
    }
    assert_eq!(
        backends_of(&cid),
        all_backends(),
        "spread: {}",
        per_backend(&cid)
    );
    eprintln!(
        "e2e: CID routing: {}/{} survived; {}",
        cid["survived"],
        cid["migrated"],
        per_backend(&cid)
    );

    // (iv) the same without CID routing: a 4-tuple hash sends about 2/3 elsewhere.
    let nocid = run_json(
        probe_h3_cmd(&topo, VIP_NOCID, MIGRATING, true),
        "probe h3 --migrate (no CID routing)",
        &topo,
    );
    let migrated = nocid["migrated"].as_u64().unwrap_or(0);
    let survived = nocid["survived"].as_u64().unwrap_or(0);
    assert!(
        migrated >= (MIGRATING as u64) * 9 / 10,
        "only {migrated} connections to {VIP_NOCID} got to migrate: {}",
        failures(&nocid)
    );
    assert!(
        migrated - survived >= 40,
        "without CID routing only {} of {migrated} migrations broke ({})",
        migrated - survived,
        failures(&nocid)
    );
    assert_eq!(backends_of(&nocid).len(), 3, "{}", per_backend(&nocid));
    eprintln!(
        "e2e: 4-tuple only: {survived}/{migrated} survived ({}); {}",
        failures(&nocid),
        per_backend(&nocid)
    );

    // The daemon's counters saw it: QUIC routed by CID on .100, none on .101.
    let metrics = topo.metrics().unwrap_or_else(|e| panic!("/metrics: {e:#}"));
    let sample = |vip: &str, proto: &str, reason: &str| -> u64 {
        let prefix = format!(
            "lb_packets_total{{vip=\"{vip}\",port=\"443\",proto=\"{proto}\",reason=\"{reason}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    assert!(sample("198.18.0.100", "udp", "routed_cid") > 0, "{metrics}");
    assert!(sample("198.18.0.100", "tcp", "maglev") > 0, "{metrics}");
    assert_eq!(sample("198.18.0.101", "udp", "routed_cid"), 0, "{metrics}");
    assert!(sample("198.18.0.101", "udp", "maglev") > 0, "{metrics}");

    // (v) a bad config is rejected with file:line, and nothing changes.
    let good = Topology::config_text(&[1, 2, 3]);
    let bad = format!("{good}this line is not toml\n");
    let bad_line = bad.lines().count();
    topo.write_config_text(&bad).unwrap();
    let out = topo.reload().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "bad reload: {stdout}");
    let at = format!("{}:{bad_line}:", topo.config_path.display());
    assert!(stdout.contains(&at), "expected {at:?} in: {stdout}");
    let after_bad = run_json(probe_h3_cmd(&topo, VIP_CID, 15, false), "probe h3", &topo);
    assert_all_ok(&after_bad, 15, "connections", "after a rejected reload");
    let after_bad = run_json(http1_cmd(&topo, 15), "probe http1", &topo);
    assert_all_ok(&after_bad, 15, "requests", "after a rejected reload");

    // Removing b3: new connections avoid it.
    topo.write_config(&[1, 2]).unwrap();
    let out = topo.reload().unwrap();
    assert!(
        out.status.success(),
        "reload without b3: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let h3 = run_json(probe_h3_cmd(&topo, VIP_CID, 30, false), "probe h3", &topo);
    assert_all_ok(&h3, 30, "connections", "HTTP/3 without b3");
    let http1 = run_json(http1_cmd(&topo, 30), "probe http1", &topo);
    assert_all_ok(&http1, 30, "requests", "HTTP/1.1 without b3");
    let two: BTreeSet<String> = ["b1", "b2"].into_iter().map(String::from).collect();
    assert_eq!(backends_of(&h3), two, "{}", per_backend(&h3));
    assert_eq!(backends_of(&http1), two, "{}", per_backend(&http1));

    drop(topo);
    eprintln!("e2e: done in {:.1}s", t0.elapsed().as_secs_f64());
}
