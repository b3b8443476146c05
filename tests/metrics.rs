//! `/metrics` and `/status`: exact counter lines after known packets through the real XDP
//! program, and the HTTP server over loopback.
//!
//! ```sh
//! cargo test -p lb-tests --test metrics -- --test-threads=1
//! ```
//!
//! `data_plane_counters_*` need root (a scratch network namespace and BPF); the rest run
//! anywhere. HTTP is spoken with a plain `std::net::TcpStream`, so the server is checked
//! by an independent client, not by hyper talking to itself.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use lb_common::{Counter, PROTO_TCP, PROTO_UDP, Reason, VipCounter};
use lb_lab::{
    packet::{Packet, quic},
    testbed::{fixture::*, *},
};
use lb_userspace::{
    dataplane::Dataplane,
    metrics::{
        self, BackendLabel, DaemonStats, Format, Labels, MetricsSource, OPENMETRICS_CONTENT_TYPE,
        PROMETHEUS_CONTENT_TYPE, QuicLabel, Snapshot, VipLabel,
    },
};
use serde_json::Value;

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const RING: u32 = 251;

// ---- helpers --------------------------------------------------------------------------------

/// Sample lines of a text exposition: `name{labels}` -> value as written.
fn samples(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample line has a value");
            (series.to_string(), value.to_string())
        })
        .collect()
}

/// The standard fixture as the daemon would label it.
fn standard_labels() -> Labels {
    let quic: Vec<QuicLabel> = [QUIC_CR, SINGLE_PASS_CR, FOUR_PASS_CR]
        .iter()
        .map(|cr| QuicLabel::from(&quic_config(*cr)))
        .collect();
    let (v4, v6) = (IpAddr::from(VIP_V4), IpAddr::from(VIP_V6));
    let vip = |index, addr, port, proto, quic: &[QuicLabel]| VipLabel {
        index,
        name: Some(format!("fixture-{index}")),
        addr,
        port,
        proto,
        quic: quic.to_vec(),
    };
    let vips = vec![
        vip(VIP_V4_QUIC, v4, VIP_PORT, PROTO_UDP, &quic),
        vip(VIP_V4_TCP, v4, VIP_PORT, PROTO_TCP, &[]),
        vip(VIP_V6_QUIC, v6, VIP_PORT, PROTO_UDP, &quic),
        vip(VIP_V6_TCP, v6, VIP_PORT, PROTO_TCP, &[]),
        vip(VIP_V4_PLAIN_UDP, v4, PLAIN_UDP_PORT, PROTO_UDP, &[]),
    ];
    let mut backends = Vec::new();
    for i in 0..BACKENDS {
        backends.push(BackendLabel {
            id: v4_backend_id(i),
            addr: backend_v4(i).into(),
            port: BACKEND_PORT,
            vip_indexes: vec![VIP_V4_QUIC, VIP_V4_TCP, VIP_V4_PLAIN_UDP],
        });
        backends.push(BackendLabel {
            id: v6_backend_id(i),
            addr: backend_v6(i).into(),
            port: BACKEND_PORT,
            vip_indexes: vec![VIP_V6_QUIC, VIP_V6_TCP],
        });
    }
    Labels { vips, backends }
}

/// One HTTP/1.1 exchange: (status, headers lower-cased, body).
fn http(addr: SocketAddr, request: &str) -> Result<(u16, BTreeMap<String, String>, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context("reading the reply")?;
    let raw = String::from_utf8(raw).context("reply is not UTF-8")?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("empty reply")?;
    let mut parts = status_line.split(' ');
    if parts.next() != Some("HTTP/1.1") {
        bail!("not an HTTP/1.1 reply: {status_line}");
    }
    let status: u16 = parts.next().context("no status")?.parse()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<BTreeMap<_, _>>();
    let head_request = request.starts_with("HEAD ");
    if let Some(len) = headers.get("content-length").filter(|_| !head_request) {
        assert_eq!(
            len.parse::<usize>()?,
            body.len(),
            "Content-Length matches the body"
        );
    }
    Ok((status, headers, body.to_string()))
}

fn get(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
) -> Result<(u16, BTreeMap<String, String>, String)> {
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: lb\r\n{accept}Connection: close\r\n\r\n"),
    )
}

/// The daemon's side of the bargain, as the daemon would implement it.
struct Daemon {
    dp: Mutex<Dataplane>,
    labels: Labels,
    stats: DaemonStats,
}

impl MetricsSource for Daemon {
    fn metrics_text(&self, format: Format) -> String {
        let dp = self.dp.lock().expect("data plane lock");
        metrics::render(&dp, &self.labels, &self.stats, format)
    }
    fn status_json(&self) -> Value {
        let dp = self.dp.lock().expect("data plane lock");
        metrics::status(&dp, &self.labels, &self.stats)
    }
}

/// Start the server on 127.0.0.1:0 in its own runtime; the runtime lives as long as the
/// returned handle.
fn start(
    source: Arc<dyn MetricsSource + Send + Sync>,
) -> Result<(tokio::runtime::Runtime, SocketAddr)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    rt.spawn(metrics::serve_listener(listener, source));
    Ok((rt, addr))
}

// ---- the data plane's counters ---------------------------------------------------------------

const QUIC_PACKETS: u64 = 5;
const NON_VIP_PACKETS: u64 = 3;

/// 5 QUIC short headers routed by CID to backend 0 through VIP_V4:443/udp and 3 UDP
/// datagrams to an address that is no VIP; then the exact series, over the HTTP server too.
#[test]
fn data_plane_counters_render_exactly_and_serve() -> Result<()> {
    lb_lab::netns::require_root()?;
    let tb = Testbed::new()?;
    let inside = tb.enter()?;
    let mut dp = Dataplane::load().context("loading the XDP program (verifier)")?;
    program_standard(&mut dp, RING)?;
    // No next-hop cache: every packet counts `redirect` and never `fib_cached`.
    dp.set_fib_cache_ttl(0)?;

    let mut quic_len = 0;
    for n in 0..QUIC_PACKETS as u8 {
        let pkt = Packet::eth(CLIENT_MAC, EXT_MAC)
            .ipv4(CLIENT_V4, VIP_V4)
            .udp(40000 + n as u16, VIP_PORT)
            .payload(quic::short(&dcid(0, [n, 1, 2, 3, 4, 5]), 48))
            .build();
        quic_len = pkt.len() as u64;
        let r = dp.test_run(&pkt, tb.ext_ifindex)?;
        assert_eq!(r.verdict, XDP_REDIRECT, "QUIC packet {n} is redirected");
    }
    let mut other_len = 0;
    for n in 0..NON_VIP_PACKETS as u16 {
        let pkt = Packet::eth(CLIENT_MAC, EXT_MAC)
            .ipv4(CLIENT_V4, OTHER_V4)
            .udp(41000 + n, VIP_PORT)
            .payload([0xaa; 20])
            .build();
        other_len = pkt.len() as u64;
        let r = dp.test_run(&pkt, tb.ext_ifindex)?;
        assert_eq!(r.verdict, XDP_PASS, "non-VIP packet {n} passes");
    }
    assert_ne!(
        quic_len, other_len,
        "test bug: sizes must tell the packets apart"
    );
    // The maps are read through their file descriptors: no need to stay in the namespace.
    drop(inside);

    let labels = standard_labels();
    let stats = DaemonStats::new("9.9.9-test");
    stats.config_reload(true);
    stats.config_reload(true);
    stats.config_reload(false);
    stats.observe_map_sync(Duration::from_millis(3));

    let text = metrics::render(&dp, &labels, &stats, Format::Prometheus);
    let got = samples(&text);

    // Every series that may be non-zero, with its exact value.
    let vip0 = r#"vip="198.18.0.100",port="443",proto="udp""#;
    let be0 = r#"vip="198.18.0.100",port="443,53",proto="tcp,udp",backend="198.19.0.10:8443""#;
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    let mut put = |k: String, v: u64| {
        want.insert(k, v.to_string());
    };
    put(format!("lb_vip_packets_total{{{vip0}}}"), QUIC_PACKETS);
    put(
        format!("lb_vip_bytes_total{{{vip0}}}"),
        QUIC_PACKETS * quic_len,
    );
    put(
        format!("lb_vip_routed_cid_packets_total{{{vip0}}}"),
        QUIC_PACKETS,
    );
    for reason in ["routed_cid", "redirect"] {
        put(
            format!(r#"lb_node_packets_total{{reason="{reason}"}}"#),
            QUIC_PACKETS,
        );
        put(
            format!(r#"lb_node_bytes_total{{reason="{reason}"}}"#),
            QUIC_PACKETS * quic_len,
        );
    }
    put(
        r#"lb_node_packets_total{reason="pass_not_vip"}"#.into(),
        NON_VIP_PACKETS,
    );
    put(
        r#"lb_node_bytes_total{reason="pass_not_vip"}"#.into(),
        NON_VIP_PACKETS * other_len,
    );
    put(format!("lb_backend_packets_total{{{be0}}}"), QUIC_PACKETS);
    put(
        format!("lb_backend_bytes_total{{{be0}}}"),
        QUIC_PACKETS * quic_len,
    );
    put("lb_vips".into(), 5);
    put("lb_backends".into(), 6);
    put(r#"lb_build_info{version="9.9.9-test"}"#.into(), 1);
    put(r#"lb_config_reloads_total{result="ok"}"#.into(), 2);
    put(r#"lb_config_reloads_total{result="error"}"#.into(), 1);
    put("lb_map_sync_duration_seconds_count".into(), 1);

    for (series, value) in &want {
        assert_eq!(
            got.get(series),
            Some(value),
            "series {series}: expected {value}\n--- metrics ---\n{text}"
        );
    }
    // Everything else that counts packets is zero: nothing leaked into other VIPs, reasons
    // or backends.
    let counters = [
        "lb_vip_packets_total",
        "lb_vip_bytes_total",
        "lb_vip_routed_cid_packets_total",
        "lb_vip_dropped_packets_total",
        "lb_node_packets_total",
        "lb_node_bytes_total",
        "lb_backend_packets_total",
        "lb_backend_bytes_total",
        "lb_rnat_packets_total",
        "lb_rnat_bytes_total",
    ];
    let mut zeros = 0;
    for (series, value) in &got {
        let name = series.split('{').next().unwrap_or(series);
        if counters.contains(&name) && !want.contains_key(series) {
            assert_eq!(value, "0", "unrelated series {series} is not 0\n{text}");
            zeros += 1;
        }
    }
    // 5 VIPs x 4 per-VIP series (minus the 3 non-zero), 30 node reasons x 2 (minus the 3
    // non-zero), 6 backends x 2 (minus 1), 9 reverse-NAT reasons x 2.
    assert_eq!(Reason::ALL.len(), 30);
    assert_eq!(zeros, (5 * 4 - 3) + (30 - 3) * 2 + (6 - 1) * 2 + 9 * 2);
    // Reasons are node-wide only: no per-VIP series has a reason label.
    assert!(!text.contains(r#"proto="udp",reason="#), "{text}");
    assert!(
        text.contains("# TYPE lb_vip_packets_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE lb_map_sync_duration_seconds histogram"),
        "{text}"
    );
    let sum: f64 = got["lb_map_sync_duration_seconds_sum"].parse()?;
    assert!((sum - 0.003).abs() < 1e-9, "map sync sum {sum}");
    assert_eq!(got["lb_fib_cache_ttl_seconds"].parse::<f64>()?, 0.0);
    assert_eq!(got["lb_scrape_map_errors"], "0");

    // The kernel's values, not increments: a second scrape says the same.
    assert_eq!(
        samples(&metrics::render(&dp, &labels, &stats, Format::Prometheus)),
        got,
        "a second scrape changes nothing"
    );

    let open = metrics::render(&dp, &labels, &stats, Format::OpenMetrics);
    assert!(
        open.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF:\n{open}"
    );
    assert!(open.contains("# TYPE lb_build info\n"), "{open}");
    assert_eq!(
        samples(&open)[r#"lb_build_info{version="9.9.9-test"}"#],
        "1"
    );
    assert_eq!(
        samples(&open).get(&format!("lb_vip_routed_cid_packets_total{{{vip0}}}")),
        Some(&QUIC_PACKETS.to_string())
    );

    // ---- over HTTP ----
    let daemon = Arc::new(Daemon {
        dp: Mutex::new(dp),
        labels,
        stats,
    });
    let (_rt, addr) = start(daemon)?;

    let (status, headers, body) = get(addr, "/metrics", None)?;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], PROMETHEUS_CONTENT_TYPE);
    assert_eq!(samples(&body), got, "HTTP /metrics is the rendered text");

    let (status, headers, body) = get(
        addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )?;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], OPENMETRICS_CONTENT_TYPE);
    assert!(body.ends_with("# EOF\n"));

    let (status, headers, body) = get(addr, "/status", None)?;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let st: Value = serde_json::from_str(&body).context("/status is JSON")?;
    assert_eq!(st["version"], "9.9.9-test");
    assert_eq!(st["settings"]["fib_cache_ttl_ns"], 0);
    assert_eq!(st["vips"].as_array().map(Vec::len), Some(5));
    let v0 = &st["vips"][0];
    assert_eq!(v0["addr"], "198.18.0.100");
    assert_eq!(v0["proto"], "udp");
    assert_eq!(v0["name"], "fixture-0");
    assert_eq!(v0["map"]["ring_size"], RING);
    assert_eq!(v0["counters"]["packets"], QUIC_PACKETS);
    assert_eq!(v0["counters"]["bytes"], QUIC_PACKETS * quic_len);
    assert_eq!(v0["counters"]["routed_cid"], QUIC_PACKETS);
    assert_eq!(v0["counters"]["dropped"], 0);
    assert_eq!(v0["quic_lb"][0]["mode"], "plaintext");
    assert_eq!(v0["quic_lb"][1]["mode"], "single_pass");
    assert_eq!(v0["quic_lb"][2]["mode"], "four_pass");
    assert_eq!(st["vips"][1]["counters"]["packets"], 0);
    assert_eq!(st["backends"][0]["backend"], "198.19.0.10:8443");
    assert_eq!(st["backends"][0]["packets"], QUIC_PACKETS);
    assert_eq!(st["backends"][1]["packets"], 0);
    assert_eq!(st["counters"]["pass_not_vip"]["packets"], NON_VIP_PACKETS);
    assert_eq!(
        st["counters"]["pass_not_vip"]["bytes"],
        NON_VIP_PACKETS * other_len
    );
    assert_eq!(st["config_reloads"]["ok"], 2);
    assert_eq!(st["config_reloads"]["error"], 1);
    assert_eq!(st["map_sync"]["count"], 1);
    assert_eq!(st["errors"].as_array().map(Vec::len), Some(0));
    // Keys never leave the process: neither as text nor as octets.
    for key in [SINGLE_PASS_KEY, FOUR_PASS_KEY] {
        assert!(!body.contains(std::str::from_utf8(&key)?));
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!body.contains(&hex));
        let decimal = key.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
        assert!(!body.replace([' ', '\n'], "").contains(&decimal));
    }
    Ok(())
}

// ---- without a data plane ---------------------------------------------------------------------

/// A backend that serves one VIP carries that VIP's labels; a backend that serves none
/// carries empty ones; a failed map read leaves its series out and is counted.
#[test]
fn snapshot_labels_and_missing_reads() {
    let vip0 = VipCounter {
        packets: 7,
        bytes: 700,
        routed_cid: 0,
        dropped: 1,
    };
    let v = |index, port, proto| VipLabel {
        index,
        name: None,
        addr: "fd00:18::100".parse().expect("address"),
        port,
        proto,
        quic: Vec::new(),
    };
    let labels = Labels {
        vips: vec![v(0, 80, PROTO_TCP), v(1, 81, PROTO_TCP)],
        backends: vec![
            BackendLabel {
                id: 4,
                addr: "fd00:19::10".parse().expect("address"),
                port: 8080,
                vip_indexes: vec![0],
            },
            BackendLabel {
                id: 5,
                addr: "fd00:19::11".parse().expect("address"),
                port: 8080,
                vip_indexes: vec![],
            },
        ],
    };
    let snap = Snapshot {
        global: None,
        vips: vec![
            (labels.vips[0].clone(), None, Some(vip0)),
            (labels.vips[1].clone(), None, None),
        ],
        backends: vec![
            (
                labels.backends[0].clone(),
                Some(Counter {
                    packets: 7,
                    bytes: 700,
                }),
            ),
            (labels.backends[1].clone(), Some(Counter::default())),
        ],
        rnat: None,
        settings: None,
        errors: vec!["VIP 1 counters: test".into()],
    };
    let stats = DaemonStats::default();
    let text = metrics::render_snapshot(snap.clone(), &labels, &stats, Format::Prometheus);
    let got = samples(&text);
    assert_eq!(
        got[r#"lb_vip_packets_total{vip="fd00:18::100",port="80",proto="tcp"}"#],
        "7"
    );
    assert_eq!(
        got[r#"lb_vip_bytes_total{vip="fd00:18::100",port="80",proto="tcp"}"#],
        "700"
    );
    assert_eq!(
        got[r#"lb_vip_dropped_packets_total{vip="fd00:18::100",port="80",proto="tcp"}"#],
        "1"
    );
    assert!(
        !text.contains(r#"port="81""#),
        "VIP 1 was not read: no series\n{text}"
    );
    assert!(!text.contains("# TYPE lb_node_packets_total"), "{text}");
    assert_eq!(
        got[r#"lb_backend_packets_total{vip="fd00:18::100",port="80",proto="tcp",backend="[fd00:19::10]:8080"}"#],
        "7"
    );
    assert_eq!(
        got[r#"lb_backend_packets_total{vip="",port="",proto="",backend="[fd00:19::11]:8080"}"#],
        "0"
    );
    assert_eq!(got["lb_scrape_map_errors"], "1");
    assert_eq!(
        got[&format!(
            r#"lb_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )],
        "1"
    );
    assert_eq!(got[r#"lb_config_reloads_total{result="error"}"#], "0");
    assert_eq!(got["lb_map_sync_duration_seconds_count"], "0");

    let st = metrics::status_snapshot(&snap, &stats);
    assert_eq!(st["vips"][0]["counters"]["bytes"], 700);
    assert_eq!(st["vips"][0]["counters"]["dropped"], 1);
    assert!(st["vips"][1]["counters"].is_null());
    assert_eq!(st["errors"][0], "VIP 1 counters: test");
}

struct Fixed;

impl MetricsSource for Fixed {
    fn metrics_text(&self, format: Format) -> String {
        match format {
            Format::Prometheus => "lb_vips 1\n".into(),
            Format::OpenMetrics => "lb_vips 1\n# EOF\n".into(),
        }
    }
    fn status_json(&self) -> Value {
        serde_json::json!({ "ok": true })
    }
}

#[test]
fn http_routes_methods_and_content_types() -> Result<()> {
    let (_rt, addr) = start(Arc::new(Fixed))?;

    let (status, headers, body) = get(addr, "/metrics", None)?;
    assert_eq!((status, body.as_str()), (200, "lb_vips 1\n"));
    assert_eq!(headers["content-type"], PROMETHEUS_CONTENT_TYPE);

    let (status, headers, body) = get(addr, "/metrics?x=1", Some("application/openmetrics-text"))?;
    assert_eq!((status, body.as_str()), (200, "lb_vips 1\n# EOF\n"));
    assert_eq!(headers["content-type"], OPENMETRICS_CONTENT_TYPE);

    let (status, headers, body) = get(addr, "/status", None)?;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(&body)?,
        serde_json::json!({ "ok": true })
    );

    for path in ["/", "/metricsx", "/status/", "/favicon.ico"] {
        let (status, _, _) = get(addr, path, None)?;
        assert_eq!(status, 404, "GET {path}");
    }

    let (status, headers, _) = http(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: lb\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )?;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, HEAD");

    let (status, headers, body) = http(
        addr,
        "HEAD /metrics HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n",
    )?;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], "10");
    assert_eq!(body, "");

    // Keep-alive: two requests on one connection.
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\nGET /status HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    assert_eq!(raw.matches("HTTP/1.1 200 OK").count(), 2, "{raw}");
    Ok(())
}

/// A daemon that is alive but not ready, for the probes.
struct NotReady;

impl MetricsSource for NotReady {
    fn metrics_text(&self, _: Format) -> String {
        String::new()
    }
    fn status_json(&self) -> Value {
        serde_json::json!({})
    }
    fn readiness(&self) -> Result<(), Vec<String>> {
        Err(vec!["no API".into(), "no sync".into()])
    }
}

/// A daemon whose data plane is gone.
struct Dead;

impl MetricsSource for Dead {
    fn metrics_text(&self, _: Format) -> String {
        String::new()
    }
    fn status_json(&self) -> Value {
        serde_json::json!({})
    }
    fn liveness(&self) -> Result<(), String> {
        Err("maps gone".into())
    }
}

#[test]
fn healthz_and_readyz_answer_what_the_source_says() -> Result<()> {
    let (_rt, addr) = start(Arc::new(Fixed))?;
    for path in ["/healthz", "/readyz"] {
        let (status, headers, body) = get(addr, path, None)?;
        assert_eq!((status, body.as_str()), (200, "ok\n"), "{path}");
        assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    }

    let (_rt2, addr) = start(Arc::new(NotReady))?;
    let (status, _, body) = get(addr, "/healthz", None)?;
    assert_eq!(
        (status, body.as_str()),
        (200, "ok\n"),
        "alive while not ready"
    );
    let (status, _, body) = get(addr, "/readyz", None)?;
    assert_eq!(status, 503);
    assert_eq!(body, "not ready: no API\nnot ready: no sync\n");

    let (_rt3, addr) = start(Arc::new(Dead))?;
    let (status, _, body) = get(addr, "/healthz", None)?;
    assert_eq!((status, body.as_str()), (503, "not alive: maps gone\n"));
    Ok(())
}

#[test]
fn bind_error_names_the_address() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let err = rt
        .block_on(metrics::serve(addr, Arc::new(Fixed)))
        .expect_err("the port is taken");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    Ok(())
}
