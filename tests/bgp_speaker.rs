//! `lb run` driving its BGP speaker (BIRD) against a real upstream router (BIRD too), and
//! every way a session goes wrong.
//!
//! ```text
//!  router ns: eth0 198.18.1.1, .3 and .4 /24; BIRD AS 64500 on .1 (kernel export: ip route),
//!             a second BIRD AS 64500 on .3
//!     │  session "tor"       198.18.1.1:179  as 64500          (good)
//!     │  session "wrong-asn" 198.18.1.3:179  lb expects 64999  (router says 64500)
//!     │  session "refused"   198.18.1.4:1179                   (nothing listens: RST)
//!     │  session "nobody"    198.18.1.99                       (no host: unreachable)
//!     │  session "tor6"      fd00:1::1                         (good, IPv6)
//!  node ns:   ext0 198.18.1.2/24 and fd00:1::2/64, lb run (generic XDP), AS 64512,
//!             VIP 198.18.10.100 (bgp) and fd00:18::100 (both: BGP and NDP)
//! ```
//!
//! Asserted: the router learns the VIP from the node with the configured community; `/status`
//! and the metrics show the session, the prefixes exported, BFD up; three broken sessions
//! added by a reload each fail with their own error while the good one stays Established and
//! the route never leaves the router, and the data plane takes no map change; a speaker
//! configuration BIRD refuses (a link-local peer without an interface) is reported by the
//! reload, `/status` and a metric, and the previous configuration keeps running; SIGTERM
//! withdraws the route before the data plane goes; SIGKILL takes BIRD down with lb and the
//! router drops the route.
//!
//! Needs root and BIRD (`cargo xtask setup`). `cargo test -p lb-tests --test bgp_speaker -- --test-threads=1`

mod support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use lb_lab::{
    children::Proc,
    netns::{NetNs, remove_stale, veth_pair},
    topology::http_get_in,
};
use serde_json::Value;

const PREFIX: &str = "lbbgps";
const DEADLINE: Duration = Duration::from_secs(20);
const VIP: &str = "198.18.10.100";
const VIP6: &str = "fd00:18::100";
const METRICS: &str = "127.0.0.1:7472";

struct Lab {
    dir: PathBuf,
    router_bird: Option<Proc>,
    router_bird2: Option<Proc>,
    lb: Option<Proc>,
    node: NetNs,
    router: NetNs,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let procs = [
            self.lb.take(),
            self.router_bird.take(),
            self.router_bird2.take(),
        ];
        for p in procs.into_iter().flatten() {
            let mut c = p.child;
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const ROUTER_CONF: &str = r#"
router id 198.18.1.1;
protocol device { scan time 1; }
protocol kernel { ipv4 { import none; export all; }; }
protocol kernel { ipv6 { import none; export all; }; }
protocol bfd { }
protocol bgp node {
    local 198.18.1.1 as 64500; neighbor 198.18.1.2 as 64512; strict bind on;
    hold time 9; keepalive time 3; bfd on;
    ipv4 { import all; export none; };
}
protocol bgp node6 {
    local fd00:1::1 as 64500; neighbor fd00:1::2 as 64512; strict bind on;
    hold time 9; keepalive time 3;
    ipv6 { import all; export none; };
}
"#;

/// A second router BIRD, on the router's second address (one BIRD keeps a second protocol
/// to the same neighbour Idle); `strict bind` keeps the two BIRDs' listening sockets apart.
const ROUTER2_CONF: &str = r#"
router id 198.18.1.3;
protocol device { scan time 1; }
protocol bgp node_wrong_asn {
    local 198.18.1.3 as 64500; neighbor 198.18.1.2 as 64512; strict bind on;
    hold time 9; keepalive time 3;
    ipv4 { import all; export none; };
}
"#;

fn lb_config(extra_peers: &str) -> String {
    format!(
        r#"interfaces = [{{ name = "ext0", xdp_mode = "generic" }}]
metrics_addr = "{METRICS}"

[bgp]
asn = 64512
router_id = "198.18.1.2"
run_dir = "bird"
withdraw_timeout_ms = 3000

[[bgp.peers]]
name = "tor"
address = "198.18.1.1"
asn = 64500
hold_time_s = 9
keepalive_s = 3
bfd = {{ receive_interval_ms = 100, transmit_interval_ms = 100, detect_multiplier = 3 }}

[[bgp.peers]]
name = "tor6"
address = "fd00:1::1"
asn = 64500
hold_time_s = 9
keepalive_s = 3
{extra_peers}
[[vips]]
address = "{VIP}"
ports = [443]
protocols = ["tcp", "udp"]
announce = "bgp"
bgp_communities = ["64512:7"]

[[vips.backends]]
address = "198.19.0.10"
port = 8443

[[vips]]
address = "{VIP6}"
ports = [443]
protocols = ["udp"]
announce = "both"

[[vips.backends]]
address = "fd00:19::10"
port = 8443
"#
    )
}

const BAD_PEERS: &str = r#"
[[bgp.peers]]
name = "wrong-asn"
address = "198.18.1.3"
asn = 64999
hold_time_s = 9
keepalive_s = 3

[[bgp.peers]]
name = "refused"
address = "198.18.1.4"
port = 1179
asn = 64500
hold_time_s = 9
keepalive_s = 3

[[bgp.peers]]
name = "nobody"
address = "198.18.1.99"
asn = 64500
hold_time_s = 9
keepalive_s = 3
"#;

/// BIRD cannot open a session to a link-local address without an interface: lb's
/// validation lets it through, BIRD's `configure check` refuses it.
const LINK_LOCAL_PEER: &str = r#"
[[bgp.peers]]
name = "link-local"
address = "fe80::1"
asn = 64500
"#;

fn setup() -> Lab {
    if let Err(e) = lb_lab::netns::require_root() {
        panic!("{e:#}");
    }
    remove_stale(PREFIX).unwrap();
    let router = NetNs::create(&format!("{PREFIX}r")).unwrap();
    let node = NetNs::create(&format!("{PREFIX}n")).unwrap();
    veth_pair(
        &router,
        "eth0",
        [0x02, 0, 0x5e, 0xb0, 0, 1],
        &node,
        "ext0",
        [0x02, 0, 0x5e, 0xb0, 0, 2],
    )
    .unwrap();
    router.addr_add("eth0", "198.18.1.1/24").unwrap();
    router.addr_add("eth0", "198.18.1.3/24").unwrap();
    router.addr_add("eth0", "198.18.1.4/24").unwrap();
    node.addr_add("ext0", "198.18.1.2/24").unwrap();
    router.addr_add("eth0", "fd00:1::1/64").unwrap();
    node.addr_add("ext0", "fd00:1::2/64").unwrap();
    let dir = std::env::temp_dir().join(format!("{PREFIX}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab {
        dir: dir.clone(),
        router_bird: None,
        router_bird2: None,
        lb: None,
        node,
        router,
    };
    lab.router_bird = Some(lab.start_router_bird("router", ROUTER_CONF));
    lab.router_bird2 = Some(lab.start_router_bird("router2", ROUTER2_CONF));
    lab
}

impl Lab {
    /// A BIRD in the router's namespace with `conf`, its files named `<name>.*`.
    fn start_router_bird(&self, name: &str, conf: &str) -> Proc {
        let file = |ext: &str| self.dir.join(format!("{name}.{ext}"));
        std::fs::write(file("conf"), conf).unwrap();
        let mut cmd = self.router.command("bird").unwrap();
        cmd.arg("-f")
            .arg("-c")
            .arg(file("conf"))
            .arg("-s")
            .arg(file("ctl"))
            .arg("-P")
            .arg(file("pid"));
        Proc::spawn(&self.dir, &format!("{name}-bird"), cmd, "info").unwrap()
    }

    fn write_config(&self, text: &str) {
        std::fs::write(self.dir.join("lb.toml"), text).unwrap();
    }

    fn start_lb(&mut self) {
        let mut cmd = self.node.command(support::lb()).unwrap();
        cmd.arg("run")
            .arg("--config")
            .arg(self.dir.join("lb.toml"))
            .arg("--control-socket")
            .arg(self.dir.join("lb.sock"));
        let mut p = Proc::spawn(&self.dir, "lb-run", cmd, "info").unwrap();
        p.wait_for_line("lb: running", Instant::now() + DEADLINE)
            .unwrap_or_else(|e| panic!("{e:#}"));
        self.lb = Some(p);
    }

    fn lb_log(&self) -> String {
        self.lb.as_ref().map(Proc::output).unwrap_or_default()
    }

    fn reload(&self) -> (bool, String) {
        let out = Command::new(support::lb())
            .arg("reload")
            .arg("--control-socket")
            .arg(self.dir.join("lb.sock"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn status(&self) -> Value {
        let addr: SocketAddr = METRICS.parse().unwrap();
        let text = http_get_in(&self.node, addr, "/status")
            .unwrap_or_else(|e| panic!("/status: {e:#}\n{}", self.lb_log()));
        serde_json::from_str(&text).unwrap()
    }

    fn metrics(&self) -> String {
        let addr: SocketAddr = METRICS.parse().unwrap();
        http_get_in(&self.node, addr, "/metrics")
            .unwrap_or_else(|e| panic!("/metrics: {e:#}\n{}", self.lb_log()))
    }

    /// The router's kernel route to the VIP (BIRD exports what it learned), if any.
    fn router_route(&self) -> String {
        self.router
            .ip(&["-4", "route", "show", &format!("{VIP}/32")])
            .unwrap()
            .trim()
            .to_owned()
    }

    fn birdc(&self, cmd: &str) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.dir.join("router.ctl"))
            .args(cmd.split(' '))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The session `peer` as `/status` shows it; `null` until the daemon's next poll of
    /// the speaker shows it.
    fn session<'a>(status: &'a Value, peer: &str) -> &'a Value {
        static NONE: Value = Value::Null;
        status["bgp"]["sessions"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["peer"] == peer))
            .unwrap_or(&NONE)
    }

    /// Poll until `f(status)` holds.
    fn wait_status(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let s = self.status();
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {DEADLINE:?}; bgp status: {:#}\nlb log:\n{}",
                s["bgp"],
                self.lb_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_route(&self, present: bool) -> Duration {
        let start = Instant::now();
        loop {
            let r = self.router_route();
            if r.contains("via 198.18.1.2") == present {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < DEADLINE,
                "router route to {VIP} present={present} not reached: {r:?}\n{}\nlb log:\n{}",
                self.birdc("show protocols all"),
                self.lb_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn bird_pids(&self) -> String {
        let out = Command::new("pgrep")
            .args(["-f", &format!("{}/bird/bird.conf", self.dir.display())])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn established(s: &Value, peer: &str) -> bool {
    Lab::session(s, peer)["bgp_state"] == "Established"
}

#[test]
fn lb_drives_bird_and_reports_every_session() {
    let mut lab = setup();
    lab.write_config(&lb_config(""));
    lab.start_lb();

    // 1. The route, with its community, reaches the router; lb reports the session.
    lab.wait_route(true);
    let s = lab.wait_status("tor and tor6 Established with 1 prefix each", |s| {
        established(s, "tor")
            && Lab::session(s, "tor")["exported"] == 1
            && established(s, "tor6")
            && Lab::session(s, "tor6")["exported"] == 1
    });
    assert_eq!(
        s["bgp"]["advertised"],
        serde_json::json!([format!("{VIP}/32"), format!("{VIP6}/128")])
    );
    // Each family's VIP over its own session; "both" is announced by NDP too, "bgp" not.
    let r6 = lab
        .router
        .ip(&["-6", "route", "show", &format!("{VIP6}/128")])
        .unwrap();
    assert!(r6.contains("via fd00:1::2"), "{r6}");
    assert_eq!(s["sync"]["announced"], serde_json::json!([VIP6]));
    assert_eq!(Lab::session(&s, "tor")["address"], "198.18.1.1");
    let routes = lab.birdc(&format!("show route {VIP}/32 all"));
    assert!(routes.contains("BGP.community: (64512,7)"), "{routes}");
    assert!(routes.contains("BGP.as_path: 64512"), "{routes}");
    let s = lab.wait_status("BFD Up", |s| {
        s["bgp"]["bfd"].as_array().is_some_and(|b| {
            b.iter()
                .any(|b| b["address"] == "198.18.1.1" && b["state"] == "Up")
        })
    });
    let map_changes = s["sync"]["map_changes"].clone();
    let m = lab.metrics();
    assert_eq!(
        sample(&m, "lb_bgp_session_up{peer=\"tor\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "lb_bgp_prefixes_exported{peer=\"tor\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&m, "lb_bgp_bfd_session_up{peer=\"tor\"}"), Some(1.0));
    // The node's own routing table got nothing from the speaker.
    let node_routes = lab.node.ip(&["-4", "route", "show"]).unwrap();
    assert!(!node_routes.contains(VIP), "{node_routes}");

    // 2. Three broken sessions: each fails in its own way, the good one is untouched.
    lab.write_config(&lb_config(BAD_PEERS));
    let (ok, reply) = lab.reload();
    assert!(ok, "reload: {reply}");
    let error_has = |s: &Value, p: &str, text: &str| {
        Lab::session(s, p)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(text))
    };
    let s = lab.wait_status("each broken session reports its own error", |s| {
        error_has(s, "wrong-asn", "Bad peer AS") && error_has(s, "refused", "refused")
    });
    for _ in 0..20 {
        assert!(lab.router_route().contains("via 198.18.1.2"));
        let s = lab.status();
        assert!(established(&s, "tor"), "{}", s["bgp"]);
        std::thread::sleep(Duration::from_millis(25));
    }
    for p in ["wrong-asn", "refused", "nobody"] {
        assert!(!established(&s, p), "{p}: {}", s["bgp"]);
    }
    let wrong = Lab::session(&s, "wrong-asn")["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(wrong.contains("Bad peer AS"), "wrong-asn: {wrong}");
    let refused = Lab::session(&s, "refused")["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(refused.contains("refused"), "refused: {refused}");
    println!(
        "wrong ASN: {wrong}\nrefused: {refused}\nunreachable: {}",
        Lab::session(&s, "nobody")
    );
    assert_eq!(
        s["sync"]["map_changes"], map_changes,
        "the data plane was touched"
    );
    let m = lab.metrics();
    assert_eq!(
        sample(&m, "lb_bgp_session_up{peer=\"wrong-asn\"}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(sample(&m, "lb_bgp_session_up{peer=\"tor\"}"), Some(1.0));

    // 3. A configuration BIRD refuses: the reload says so, the previous one keeps running.
    lab.write_config(&lb_config(LINK_LOCAL_PEER));
    let (ok, reply) = lab.reload();
    assert!(!ok, "reload of a config BIRD refuses succeeded: {reply}");
    assert!(
        reply.contains("BIRD refused the new configuration"),
        "{reply}"
    );
    assert!(reply.contains("Link-local"), "{reply}");
    let s = lab.status();
    assert!(
        s["bgp"]["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("Link-local"))
    );
    assert_eq!(s["ready"], false);
    assert!(lab.dir.join("bird/bird.conf.rejected").is_file());
    let running = std::fs::read_to_string(lab.dir.join("bird/bird.conf")).unwrap();
    assert!(
        running.contains("\"wrong-asn\"") && !running.contains("fe80::1"),
        "{running}"
    );
    assert!(established(&s, "tor") && lab.router_route().contains("via 198.18.1.2"));
    // The metrics follow within the daemon's next poll of the speaker.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let m = lab.metrics();
        if sample(&m, "lb_bgp_config_applies_total{result=\"rejected\"}") == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    lab.write_config(&lb_config(""));
    let (ok, reply) = lab.reload();
    assert!(ok, "{reply}");
    let s = lab.wait_status("the broken sessions gone", |s| {
        s["bgp"]["sessions"].as_array().map(Vec::len) == Some(2)
    });
    assert!(
        s["bgp"]["config_error"].is_null() && s["ready"] == true,
        "{s:#}"
    );

    // 4. SIGTERM: the route leaves the router before the data plane goes.
    let mut p = lab.lb.take().unwrap();
    unsafe {
        libc::kill(p.child.id() as i32, libc::SIGTERM);
    }
    let took = lab.wait_route(false);
    let status = p.child.wait().unwrap();
    let log = p.output();
    assert!(status.success(), "{log}");
    let withdrawn = log
        .find("every prefix withdrawn")
        .unwrap_or_else(|| panic!("{log}"));
    let detached = log.find("XDP detached").unwrap_or_else(|| panic!("{log}"));
    assert!(
        withdrawn < detached,
        "withdrawn after the data plane went:\n{log}"
    );
    println!("SIGTERM: the router dropped the route {took:?} after the signal");
    assert_eq!(lab.bird_pids(), "", "BIRD outlived lb");

    // 5. SIGKILL: BIRD dies with lb, its session closes, the router drops the route.
    lab.start_lb();
    lab.wait_route(true);
    let mut p = lab.lb.take().unwrap();
    let _ = p.child.kill();
    let _ = p.child.wait();
    let took = lab.wait_route(false);
    println!("SIGKILL: the router dropped the route {took:?} after the kill");
    let deadline = Instant::now() + DEADLINE;
    while !lab.bird_pids().is_empty() {
        assert!(Instant::now() < deadline, "BIRD outlived a killed lb");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Path::new(&lab.dir);
}
