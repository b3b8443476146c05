//! End to end, static config: a client, a node running `lb run` and three backend pods in
//! network namespaces ([`lb_lab::topology`]), real traffic through the real daemon.
//!
//! One test function runs the scenarios in order on one topology (building it costs a few
//! seconds): an independent HTTP/3 client (aioquic) through the CID-routed VIP; TCP and UDP
//! on the same VIP and port at once; 100 QUIC connections migrating with and without routing
//! by connection ID; NAT rebinding (a relay changes the source port of live connections whose
//! client keeps its connection ID) with and without routing by connection ID; exact per-VIP
//! packet and byte counters; `lb reload` with a broken config and with a backend removed (new
//! connections avoid it, keep-alive TCP connections to the others carry on, packets for its
//! server ID reach a live backend through the fallback).
//!
//! Needs root. aioquic comes from `LB_TEST_PYTHON` (`cargo xtask test` sets it to
//! `.venv/bin/python`), else from `.venv`; a Python without aioquic fails the test.
//!
//! `cargo test -p lb-tests --test e2e_static -- --test-threads=1 --nocapture`

mod support;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lb_lab::{
    backend::Whoami,
    demo::{aioquic_in, failures, parse_json_output, per_backend},
    probe::{H3Client, Trust, client_config},
    topology::{self, CLIENT_ADDR, Options, Topology, VIP_CID, VIP_NOCID, VIP_PORT},
};
use serde_json::Value;
use tokio::net::UdpSocket;

const MIGRATING: usize = 100;
/// Connections through the NAT-rebinding relay, per VIP.
const REBINDING: usize = 30;
/// Datagrams of the exact-counter check.
const COUNTED: usize = 50;
/// Keep-alive TCP connections on surviving backends across the removal of b3.
const KEPT: usize = 8;
/// Short-header packets for a removed backend's server ID, and their size.
const ORPHANS: u64 = 20;
const ORPHAN_LEN: usize = 1200;

fn start() -> Topology {
    Topology::start(&Options {
        lb: support::lb().into(),
        lab: support::lab().into(),
        prefix: "lbe".into(),
        rust_log: None,
        remove_stale: true,
    })
    .unwrap_or_else(|e| panic!("building the end-to-end topology: {e:#}"))
}

fn probe_h3_cmd(topo: &Topology, target: std::net::Ipv4Addr, n: usize, migrate: bool) -> Command {
    let mut cmd = topo.client_lab().unwrap();
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
    let mut cmd = topo.client_lab().unwrap();
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
    let py = support::python_with("aioquic");
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

/// A sample of the daemon's Prometheus text: `metric{vip,port="443",proto,reason}` (0 when
/// absent).
/// A per-VIP series (`lb_vip_*_total`) of `vip`:443 over `proto`.
fn sample(metrics: &str, metric: &str, vip: Ipv4Addr, proto: &str) -> u64 {
    value(
        metrics,
        &format!("{metric}{{vip=\"{vip}\",port=\"{VIP_PORT}\",proto=\"{proto}\"}} "),
    )
}

/// A node-wide reason counter (`lb_node_packets_total`).
fn node_reason(metrics: &str, reason: &str) -> u64 {
    value(
        metrics,
        &format!("lb_node_packets_total{{reason=\"{reason}\"}} "),
    )
}

fn value(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn metrics_of(topo: &Topology) -> String {
    topo.metrics().unwrap_or_else(|e| panic!("/metrics: {e:#}"))
}

/// A UDP relay in the client namespace that plays a NAT rebinding: the client sends to
/// `listen`; the relay forwards to `upstream` from port A, and, once `rebound` is set, from
/// port B; replies on either port go back to the client from `listen`. The client (quinn)
/// does not know: it keeps its address, path and connection ID.
struct Relay {
    listen: SocketAddr,
    port_a: u16,
    port_b: u16,
    rebound: Arc<AtomicBool>,
    _tasks: tokio::task::JoinSet<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> std::io::Result<Relay> {
        let bind = SocketAddr::new(CLIENT_ADDR.into(), 0);
        let listen = Arc::new(UdpSocket::bind(bind).await?);
        let a = Arc::new(UdpSocket::bind(bind).await?);
        let b = Arc::new(UdpSocket::bind(bind).await?);
        let rebound = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let mut tasks = tokio::task::JoinSet::new();
        {
            let (listen, a, b, rebound, client) = (
                listen.clone(),
                a.clone(),
                b.clone(),
                rebound.clone(),
                client.clone(),
            );
            tasks.spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = listen.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    let out = if rebound.load(Ordering::SeqCst) {
                        &b
                    } else {
                        &a
                    };
                    let _ = out.send_to(&buf[..n], upstream).await;
                }
            });
        }
        for up in [a.clone(), b.clone()] {
            let (listen, client) = (listen.clone(), client.clone());
            tasks.spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = up.recv_from(&mut buf).await {
                    let to = *client.lock().unwrap();
                    if let (true, Some(to)) = (from == upstream, to) {
                        let _ = listen.send_to(&buf[..n], to).await;
                    }
                }
            });
        }
        Ok(Relay {
            listen: listen.local_addr()?,
            port_a: a.local_addr()?.port(),
            port_b: b.local_addr()?.port(),
            rebound,
            _tasks: tasks,
        })
    }
}

/// What one connection through a rebinding [`Relay`] saw.
#[derive(Debug)]
struct Rebinding {
    before: Whoami,
    /// The answer after the rebinding, or why there was none.
    after: Result<Whoami, String>,
    port_a: u16,
    port_b: u16,
}

/// One HTTP/3 connection (quinn, the probe's client) through a relay to `vip`: a request,
/// the relay rebinds to a new source port, another request (bounded by `after_step`).
async fn rebinding_connection(vip: Ipv4Addr, after_step: Duration) -> Result<Rebinding, String> {
    let step = Duration::from_secs(5);
    let relay = Relay::start(SocketAddr::new(vip.into(), VIP_PORT))
        .await
        .map_err(|e| format!("relay: {e}"))?;
    let config = client_config(&Trust::Insecure).map_err(|e| e.to_string())?;
    let mut c = H3Client::connect(
        SocketAddr::new(CLIENT_ADDR.into(), 0),
        relay.listen,
        "localhost",
        config,
        step,
    )
    .await
    .map_err(|e| format!("before the rebinding: {e}"))?;
    let before = c
        .whoami("/rebind", step)
        .await
        .map_err(|e| format!("before the rebinding: {e}"))?;
    relay.rebound.store(true, Ordering::SeqCst);
    let after = c
        .whoami("/rebind", after_step)
        .await
        .map_err(|e| e.to_string());
    c.close(Duration::ZERO).await;
    Ok(Rebinding {
        before,
        after,
        port_a: relay.port_a,
        port_b: relay.port_b,
    })
}

/// `n` rebinding connections to `vip` at once, from the client namespace.
fn rebinding_connections(
    topo: &Topology,
    vip: Ipv4Addr,
    n: usize,
    after_step: Duration,
) -> Vec<Result<Rebinding, String>> {
    topo.client
        .run_in(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for i in 0..n {
                    set.spawn(async move { (i, rebinding_connection(vip, after_step).await) });
                }
                let mut out: Vec<(usize, Result<Rebinding, String>)> = Vec::new();
                while let Some(r) = set.join_next().await {
                    out.push(r.expect("rebinding task"));
                }
                out.sort_by_key(|(i, _)| *i);
                out.into_iter().map(|(_, r)| r).collect()
            })
        })
        .unwrap()
}

/// Octets received on backend `n`'s eth0 (`ip -s -j link`).
fn rx_bytes(topo: &Topology, n: u8) -> u64 {
    let out = topo.backends[usize::from(n - 1)]
        .ip(&["-s", "-j", "link", "show", "eth0"])
        .unwrap_or_else(|e| panic!("ip -s link in b{n}: {e:#}"));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v[0]["stats64"]["rx"]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no stats64.rx.bytes in {out}"))
}

/// A short-header QUIC packet of `len` octets whose destination CID names `server_id`
/// (QUIC-LB config 0, plaintext, length self-encoded), random nonce and payload.
fn short_header_for(server_id: [u8; 2], len: usize) -> Vec<u8> {
    let cid_len = 1 + usize::from(topology::SERVER_ID_LEN) + usize::from(topology::NONCE_LEN);
    let mut p = vec![0u8; len];
    rand::fill(&mut p[..]);
    p[0] = 0x40 | (p[0] & 0x3f); // short header, fixed bit
    p[1] = (cid_len - 1) as u8; // config 0, CID length - 1
    p[2..4].copy_from_slice(&server_id);
    p
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

    // (v) NAT rebinding: a relay changes the source port of existing connections mid-way; the
    // client keeps its connection ID. Routed by CID, every connection stays on its backend.
    let t = Instant::now();
    let nat = rebinding_connections(&topo, VIP_CID, REBINDING, Duration::from_secs(5));
    let mut spread: BTreeSet<String> = BTreeSet::new();
    for (i, r) in nat.iter().enumerate() {
        let r = r.as_ref().unwrap_or_else(|e| {
            panic!(
                "rebinding connection {i} to {VIP_CID}: {e}\n{}",
                daemon_log(&topo)
            )
        });
        let after = r.after.as_ref().unwrap_or_else(|e| {
            panic!("rebinding connection {i} to {VIP_CID} broke after the rebinding: {e}\n{r:?}")
        });
        assert_eq!(r.before.client.port(), r.port_a, "{r:?}");
        // The backend saw the new source port, on the same connection, the same backend.
        assert_eq!(after.client.port(), r.port_b, "{r:?}");
        assert_eq!(after.name, r.before.name, "{r:?}");
        assert_eq!(after.server_id, r.before.server_id, "{r:?}");
        assert_eq!(after.requests_on_connection, 2, "{r:?}");
        spread.insert(after.name.clone());
    }
    assert_eq!(spread, all_backends(), "rebinding spread");
    // Without CID routing the new 4-tuple hashes elsewhere for about two thirds.
    let nat_nocid = rebinding_connections(&topo, VIP_NOCID, REBINDING, Duration::from_secs(2));
    let set_up = nat_nocid.iter().filter(|r| r.is_ok()).count();
    let broke = nat_nocid
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.after.is_err()))
        .count();
    for r in nat_nocid.iter().flatten() {
        if let Ok(after) = &r.after {
            assert_eq!(
                after.name, r.before.name,
                "survived on another backend? {r:?}"
            );
        }
    }
    assert!(
        set_up >= REBINDING * 9 / 10,
        "only {set_up} of {REBINDING} connections to {VIP_NOCID} were set up: {:?}",
        nat_nocid
            .iter()
            .filter_map(|r| r.as_ref().err())
            .collect::<Vec<_>>()
    );
    assert!(
        broke * 4 >= set_up,
        "without CID routing only {broke} of {set_up} NAT rebindings broke"
    );
    eprintln!(
        "e2e: NAT rebinding: {VIP_CID}: {REBINDING}/{REBINDING} stayed on their backend; \
         {VIP_NOCID}: {broke}/{set_up} broke ({:.1}s)",
        t.elapsed().as_secs_f64()
    );

    // Static mode: alive and ready once started (programmed and attached).
    let addr: SocketAddr = topology::METRICS_ADDR.parse().unwrap();
    for path in ["/healthz", "/readyz"] {
        let body = topology::http_get_in(&topo.node, addr, path)
            .unwrap_or_else(|e| panic!("{path}: {e:#}"));
        assert_eq!(body, "ok\n", "{path}");
    }

    // The daemon's counters saw it: QUIC routed by CID on .100, none on .101.
    let metrics = metrics_of(&topo);
    let routed_cid = |vip, proto| sample(&metrics, "lb_vip_routed_cid_packets_total", vip, proto);
    let packets = |vip, proto| sample(&metrics, "lb_vip_packets_total", vip, proto);
    assert!(routed_cid(VIP_CID, "udp") > 0, "{metrics}");
    assert!(packets(VIP_CID, "tcp") > 0, "{metrics}");
    assert_eq!(routed_cid(VIP_CID, "tcp"), 0, "{metrics}");
    assert_eq!(routed_cid(VIP_NOCID, "udp"), 0, "{metrics}");
    assert!(packets(VIP_NOCID, "udp") > 0, "{metrics}");
    assert!(node_reason(&metrics, "maglev") > 0, "{metrics}");
    // The reverse NAT sent the replies out itself (lb run turns forwarding on), none through
    // the node's stack.
    let rnat = |reason: &str| -> u64 {
        let prefix = format!("lb_rnat_packets_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
    };
    assert!(rnat("rewritten") > 0, "{metrics}");
    assert_eq!(rnat("forwarded"), rnat("rewritten"), "{metrics}");
    assert_eq!(rnat("fib_fallback"), 0, "{metrics}");

    // (vi) The counters are exact: N plain datagrams (not QUIC: fixed bit clear, too short for
    // a stateless reset, so nothing answers) to the 4-tuple VIP from one source port.
    let steering = |m: &str| {
        let p = sample(m, "lb_vip_packets_total", VIP_NOCID, "udp");
        let b = sample(m, "lb_vip_bytes_total", VIP_NOCID, "udp");
        (p, b)
    };
    let (p0, b0) = steering(&metrics_of(&topo));
    let sock = topo
        .client
        .run_in(|| std::net::UdpSocket::bind(SocketAddr::new(CLIENT_ADDR.into(), 0)))
        .unwrap()
        .unwrap();
    let mut frame_bytes = 0u64;
    for i in 0..COUNTED {
        let mut payload = vec![0u8; 16 + i % 5];
        payload[1..].fill(b'n');
        sock.send_to(&payload, (VIP_NOCID, VIP_PORT)).unwrap();
        frame_bytes += (14 + 20 + 8 + payload.len()) as u64;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let (p1, b1) = loop {
        let (p, b) = steering(&metrics_of(&topo));
        if p - p0 >= COUNTED as u64 || Instant::now() > deadline {
            break (p, b);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        (p1 - p0, b1 - b0),
        (COUNTED as u64, frame_bytes),
        "packets and bytes of {VIP_NOCID}:{VIP_PORT}/udp"
    );
    eprintln!(
        "e2e: counters: {} packets, {} octets counted for {COUNTED} datagrams of {frame_bytes} octets",
        p1 - p0,
        b1 - b0
    );

    // (vii) a bad config is rejected with file:line, and nothing changes.
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

    // (viii) Removing b3. First keep-alive TCP connections, some on b1 and b2.
    let vip_tcp = SocketAddr::new(VIP_CID.into(), VIP_PORT);
    let mut kept: Vec<(support::lab_process::KeepAlive, Whoami)> = Vec::new();
    for _ in 0..40 {
        if kept.len() >= KEPT {
            break;
        }
        let mut c = support::lab_process::KeepAlive::open(&topo.client, vip_tcp);
        let w = c
            .get()
            .unwrap_or_else(|e| panic!("keep-alive GET: {e}\n{}", daemon_log(&topo)));
        if w.name != "b3" {
            kept.push((c, w));
        }
    }
    assert_eq!(kept.len(), KEPT, "too few TCP connections landed on b1/b2");
    topo.write_config(&[1, 2]).unwrap();
    let out = topo.reload().unwrap();
    assert!(
        out.status.success(),
        "reload without b3: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // New connections avoid it.
    let h3 = run_json(probe_h3_cmd(&topo, VIP_CID, 30, false), "probe h3", &topo);
    assert_all_ok(&h3, 30, "connections", "HTTP/3 without b3");
    let http1 = run_json(http1_cmd(&topo, 30), "probe http1", &topo);
    assert_all_ok(&http1, 30, "requests", "HTTP/1.1 without b3");
    let two: BTreeSet<String> = ["b1", "b2"].into_iter().map(String::from).collect();
    assert_eq!(backends_of(&h3), two, "{}", per_backend(&h3));
    assert_eq!(backends_of(&http1), two, "{}", per_backend(&http1));
    // Established TCP flows to the surviving backends are unaffected.
    for (i, (c, before)) in kept.iter_mut().enumerate() {
        let after = c.get().unwrap_or_else(|e| {
            panic!(
                "keep-alive connection {i} to {} broke after b3 was removed: {e}\n{}",
                before.name,
                daemon_log(&topo)
            )
        });
        assert_eq!(after.name, before.name, "connection {i}");
        assert_eq!(after.client, before.client, "connection {i}");
        assert_eq!(after.requests_on_connection, 2, "connection {i}");
    }
    eprintln!(
        "e2e: {KEPT} keep-alive TCP connections on {:?} survived the removal of b3",
        kept.iter()
            .map(|(_, w)| w.name.as_str())
            .collect::<Vec<_>>()
    );
    drop(kept);

    // A QUIC packet for b3's server ID is not black-holed: the fallback (4-tuple Maglev)
    // delivers it to a live backend, which answers with a stateless reset (its CID
    // generator accepts every CID of the pool, and the pool shares one reset key).
    let fallback = |m: &str| {
        (
            node_reason(m, "fallback_unknown_server"),
            node_reason(m, "redirect"),
            node_reason(m, "drop_bad_backend"),
        )
    };
    let (f0, r0, d0) = fallback(&metrics_of(&topo));
    let rx0: Vec<u64> = (1..=topology::BACKENDS)
        .map(|n| rx_bytes(&topo, n))
        .collect();
    let sock = topo
        .client
        .run_in(|| std::net::UdpSocket::bind(SocketAddr::new(CLIENT_ADDR.into(), 0)))
        .unwrap()
        .unwrap();
    for _ in 0..ORPHANS {
        sock.send_to(
            &short_header_for([0x0a, 0x03], ORPHAN_LEN),
            (VIP_CID, VIP_PORT),
        )
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let (f1, r1, d1, rx1) = loop {
        let (f, r, d) = fallback(&metrics_of(&topo));
        let rx: Vec<u64> = (1..=topology::BACKENDS)
            .map(|n| rx_bytes(&topo, n))
            .collect();
        let live = (rx[0] - rx0[0]) + (rx[1] - rx0[1]);
        if (f - f0 >= ORPHANS && live >= ORPHANS * ORPHAN_LEN as u64) || Instant::now() > deadline {
            break (f, r, d, rx);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let delta: Vec<u64> = rx1.iter().zip(&rx0).map(|(a, b)| a - b).collect();
    assert!(
        f1 - f0 >= ORPHANS && r1 - r0 >= ORPHANS && d1 == d0,
        "{ORPHANS} packets for b3's server ID: fallback_unknown_server +{}, redirect +{}, \
         drop_bad_backend +{}",
        f1 - f0,
        r1 - r0,
        d1 - d0
    );
    assert!(
        delta[0] + delta[1] >= ORPHANS * ORPHAN_LEN as u64,
        "b1/b2 eth0 received {delta:?} octets (b1, b2, b3) for {ORPHANS} packets of {ORPHAN_LEN}"
    );
    assert!(
        delta[2] < ORPHAN_LEN as u64,
        "b3 (removed) still received {} octets",
        delta[2]
    );
    // The answer: a stateless reset from the VIP (reverse NATed), shaped like a short
    // header (form bit clear, fixed bit set) of at least 21 octets (RFC 9000 §10.3).
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("a stateless reset from a live backend for b3's server ID within 5 s");
    assert_eq!(
        from,
        SocketAddr::new(VIP_CID.into(), VIP_PORT),
        "the reset comes from the VIP"
    );
    assert!(
        n >= 21 && buf[0] & 0xc0 == 0x40,
        "stateless reset shape: {n} octets, first {:#04x}",
        buf[0]
    );
    let answered = true;
    eprintln!(
        "e2e: {ORPHANS} packets for b3's server ID after its removal: fallback_unknown_server \
         +{}, redirect +{}, drop_bad_backend +{}; eth0 octets b1 +{} b2 +{} b3 +{}; answered: \
         {answered}",
        f1 - f0,
        r1 - r0,
        d1 - d0,
        delta[0],
        delta[1],
        delta[2]
    );

    // All along (reloads, a backend removed, thousands of steered flows), kubelet's probes
    // from the node to every pod's serving port were answered by the pods themselves.
    let probes = topo.prober.as_ref().unwrap().wait_rounds(2);
    assert!(
        probes.all_ok(),
        "kubelet-style probes: {}",
        probes.summary()
    );
    eprintln!("e2e: kubelet-style probes: {}", probes.summary());

    // Clean shutdown: SIGTERM makes `lb run` detach everything it attached.
    let mut topo = topo;
    let (status, log) = topo.stop_daemon().expect("stopping lb run");
    assert!(status.success(), "lb run exited with {status}:\n{log}");
    assert!(
        log.contains("lb: stopped, everything detached"),
        "lb run's log:\n{log}"
    );
    let link = topo
        .node
        .ip(&["-d", "-j", "link", "show", "dev", "n0"])
        .unwrap();
    assert!(
        !link.contains("\"xdp\""),
        "XDP still attached to n0 after lb run stopped: {link}"
    );
    let rnat_loaded = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .any(|p| p.name_as_str() == Some(lb_common::program_names::TC_RNAT));
    assert!(
        !rnat_loaded,
        "the reverse-NAT program is still loaded after lb run stopped"
    );

    drop(topo);
    eprintln!("e2e: done in {:.1}s", t0.elapsed().as_secs_f64());
}
