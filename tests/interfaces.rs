//! `interfaces` and `backend_interfaces` per node: globs and `auto`, a missing interface
//! waited for instead of fatal, and what the node attached to reported in `/status` and
//! the metrics.
//!
//! - `lb run` with `interfaces = ["ext*"]` and `backend_interfaces = ["pod*"]` in a
//!   namespace with neither: it runs, `/status` lists both entries as unmatched and
//!   `lb_interface_pattern_unmatched` is 1 for each; then the interfaces are created and
//!   within the daemon's one-second rescan XDP is on `ext0` (the kernel says so) and the
//!   reverse NAT on `pod0`, the metric is 0; `ext0` deleted, the entry is unmatched again
//!   and the daemon still runs.
//! - `interfaces = ["auto"]`, `backend_interfaces = ["auto"]`: XDP on the interface with
//!   the default route (not the one without), the reverse NAT on the `cali*` and `lxc*`
//!   veths and not on a veth named otherwise.
//!
//! - Kubernetes mode: an entry naming nothing is a Warning Event `InterfaceNotFound` on the
//!   Node (through the fake API server), once per episode.
//!
//! Needs root. `cargo test -p lb-tests --test interfaces -- --test-threads=1 --nocapture`

mod support;

use std::{
    fs::File,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_lab::{
    netns::{self, NetNs, veth_pair},
    topology,
};
use serde_json::Value;

const METRICS_ADDR: &str = "127.0.0.1:9467";
const DEADLINE: Duration = Duration::from_secs(20);

/// A daemon in its own namespace; Drop stops it, then the namespaces go.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    dir: PathBuf,
    ns: NetNs,
    peer: NetNs,
}

impl Daemon {
    fn start(tag: &str, config: &str) -> Daemon {
        netns::require_root().unwrap_or_else(|e| panic!("{e:#}"));
        for p in ["n", "p"] {
            let _ = netns::remove_stale(&format!("lbif{tag}{p}"));
        }
        let dir = std::env::temp_dir().join(format!("lbif{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut node = Daemon {
            child: None,
            log: dir.join("lb.log"),
            ns: NetNs::create(&format!("lbif{tag}n")).unwrap(),
            peer: NetNs::create(&format!("lbif{tag}p")).unwrap(),
            dir,
        };
        let path = node.dir.join("lb.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(support::lb());
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .args(["--netns", node.ns.name()])
            .arg("--control-socket")
            .arg(node.dir.join("lb.sock"))
            .stdin(Stdio::null())
            .stdout(File::create(&node.log).unwrap())
            .stderr(File::create(node.dir.join("lb.err")).unwrap())
            .env("RUST_LOG", "info");
        node.child = Some(cmd.spawn().unwrap());
        node.wait("lb: running", |n| n.stdout().contains("lb: running"));
        node
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let err = std::fs::read_to_string(self.dir.join("lb.err")).unwrap_or_default();
        format!("--- lb run ---\n{}{err}", self.stdout())
    }

    /// Poll `ok` until it holds, failing at the deadline or if the daemon exits.
    fn wait(&mut self, what: &str, ok: impl Fn(&Daemon) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if ok(self) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .flatten()
            {
                panic!(
                    "lb run exited ({status}) waiting for {what}\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {DEADLINE:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn get(&self, path: &str) -> String {
        let addr: SocketAddr = METRICS_ADDR.parse().unwrap();
        topology::http_get_in(&self.ns, addr, path).unwrap_or_default()
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.get("/status")).unwrap_or(Value::Null)
    }

    /// Names under `/status` → `interfaces` → `key`.
    fn attached(&self, key: &str) -> Vec<String> {
        self.status()["interfaces"][key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn unmatched(&self) -> Vec<String> {
        self.status()["interfaces"]["unmatched"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| {
                        Some(format!("{}={}", x["key"].as_str()?, x["pattern"].as_str()?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn unmatched_metric(&self, key: &str, pattern: &str) -> Option<u64> {
        let want =
            format!("lb_interface_pattern_unmatched{{key=\"{key}\",pattern=\"{pattern}\"}} ");
        self.get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(&want)?.trim().parse().ok())
    }

    /// The XDP program id the kernel reports on `dev`, if any.
    fn xdp_prog(&self, dev: &str) -> Option<u64> {
        let out = self.ns.ip(&["-j", "link", "show", "dev", dev]).ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        v[0]["xdp"]["prog"]["id"].as_u64()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            topology::stop_children([("lb run", &mut c)]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(interfaces: &str, backend: &str) -> String {
    format!(
        "interfaces = {interfaces}\nxdp_mode = \"generic\"\nbackend_interfaces = {backend}\n\
         metrics_addr = \"{METRICS_ADDR}\"\n"
    )
}

#[test]
fn missing_interfaces_are_waited_for_and_reported() {
    let mut n = Daemon::start("g", &config("[\"ext*\"]", "[\"pod*\"]"));
    n.wait("both entries unmatched in /status", |n| {
        n.unmatched() == ["interfaces=ext*", "backend_interfaces=pod*"]
    });
    assert_eq!(
        n.unmatched_metric("interfaces", "ext*"),
        Some(1),
        "{}",
        n.get("/metrics")
    );
    assert_eq!(n.unmatched_metric("backend_interfaces", "pod*"), Some(1));
    assert!(n.attached("xdp").is_empty() && n.attached("reverse_nat").is_empty());
    assert!(
        n.logs().contains("names no interface on this node"),
        "{}",
        n.logs()
    );

    veth_pair(
        &n.ns,
        "ext0",
        [2, 0x18, 0, 0, 0, 1],
        &n.peer,
        "c0",
        [2, 0x18, 0, 0, 0, 2],
    )
    .unwrap();
    veth_pair(
        &n.ns,
        "pod0",
        [2, 0x19, 0, 0, 0, 1],
        &n.peer,
        "p0",
        [2, 0x19, 0, 0, 0, 2],
    )
    .unwrap();
    n.wait("ext0 and pod0 attached", |n| {
        n.attached("xdp") == ["ext0"] && n.attached("reverse_nat") == ["pod0"]
    });
    assert!(n.unmatched().is_empty(), "{:?}", n.unmatched());
    assert_eq!(n.unmatched_metric("interfaces", "ext*"), Some(0));
    assert_eq!(n.unmatched_metric("backend_interfaces", "pod*"), Some(0));
    assert!(
        n.xdp_prog("ext0").is_some(),
        "the kernel shows no XDP program on ext0"
    );
    assert!(n.xdp_prog("pod0").is_none());
    let status = n.status();
    assert_eq!(
        status["interfaces"]["xdp"][0]["mode"], "generic",
        "{status}"
    );
    // veths take native redirects: both are redirect targets.
    let redirect = status["interfaces"]["native_redirect"].to_string();
    assert!(
        redirect.contains("ext0") && redirect.contains("pod0"),
        "{status}"
    );

    // The interface goes away: reported again, and the daemon carries on.
    n.ns.ip(&["link", "del", "ext0"]).unwrap();
    n.wait("ext* unmatched again", |n| {
        n.unmatched() == ["interfaces=ext*"]
    });
    assert!(n.attached("xdp").is_empty());
    assert_eq!(n.unmatched_metric("interfaces", "ext*"), Some(1));
    assert!(n.alive(), "{}", n.logs());
    // And comes back.
    veth_pair(
        &n.ns,
        "ext1",
        [2, 0x18, 0, 0, 0, 3],
        &n.peer,
        "c1",
        [2, 0x18, 0, 0, 0, 4],
    )
    .unwrap();
    n.wait("ext1 attached", |n| n.attached("xdp") == ["ext1"]);
    assert!(n.xdp_prog("ext1").is_some());
}

#[test]
fn auto_picks_the_default_route_interface_and_the_cni_veths() {
    let mut n = Daemon::start("a", &config("[\"auto\"]", "[\"auto\"]"));
    n.wait("auto unmatched (no default route yet)", |n| {
        n.unmatched() == ["interfaces=auto", "backend_interfaces=auto"]
    });
    let ns = &n.ns;
    veth_pair(
        ns,
        "uplink",
        [2, 0x18, 0, 0, 0, 1],
        &n.peer,
        "u0",
        [2, 0x18, 0, 0, 0, 2],
    )
    .unwrap();
    veth_pair(
        ns,
        "side",
        [2, 0x18, 1, 0, 0, 1],
        &n.peer,
        "s0",
        [2, 0x18, 1, 0, 0, 2],
    )
    .unwrap();
    ns.addr_add("uplink", "198.18.0.1/24").unwrap();
    ns.addr_add("side", "198.18.1.1/24").unwrap();
    ns.route_add("default", Some("198.18.0.254"), Some("uplink"))
        .unwrap();
    for (i, name) in ["cali0a1b2c3d4e5", "lxc12ab", "other0"].iter().enumerate() {
        let mac = [2, 0x19, i as u8, 0, 0, 1];
        veth_pair(
            ns,
            name,
            mac,
            &n.peer,
            &format!("pod{i}"),
            [2, 0x19, i as u8, 0, 0, 2],
        )
        .unwrap();
    }
    n.wait("auto resolved", |n| {
        n.attached("xdp") == ["uplink"] && n.attached("reverse_nat").len() == 2
    });
    let mut rnat = n.attached("reverse_nat");
    rnat.sort();
    assert_eq!(rnat, ["cali0a1b2c3d4e5", "lxc12ab"]);
    assert!(n.unmatched().is_empty());
    assert!(n.xdp_prog("uplink").is_some() && n.xdp_prog("side").is_none());
}

/// Kubernetes mode: an `interfaces` entry that names nothing on the node is a Warning Event
/// `InterfaceNotFound` on that Node (recorded through the fake API server), and the daemon
/// runs on; the interface appearing attaches XDP.
#[test]
fn kube_mode_reports_an_unmatched_entry_as_a_node_event() {
    use fake_apiserver::FakeApiServer;
    use k8s_openapi::api::{
        core::v1::{Node, NodeCondition, NodeStatus},
        events::v1::Event,
    };

    const NODE: &str = "node-if";
    netns::require_root().unwrap_or_else(|e| panic!("{e:#}"));
    let _ = netns::remove_stale("lbifkn");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = FakeApiServer::new();
    for (_, crd) in lb_userspace::kube::crd::all_crds().unwrap() {
        api.create(&crd).unwrap();
    }
    let mut node = Node::default();
    node.metadata.name = Some(NODE.into());
    node.status = Some(NodeStatus {
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    api.create(&node).unwrap();
    let ns = NetNs::create("lbifkn").unwrap();
    let peer = NetNs::create("lbifkp").unwrap();
    ns.link_up("lo").unwrap();
    // The API server as the node sees it: 127.0.0.1:6443 in its namespace.
    let listener = ns
        .run_in(|| std::net::TcpListener::bind(("127.0.0.1", 6443)))
        .unwrap()
        .unwrap();
    let served = api.clone();
    rt.spawn(async move { served.serve(listener).await });
    let dir = std::env::temp_dir().join(format!("lbifk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        FakeApiServer::kubeconfig("http://127.0.0.1:6443"),
    )
    .unwrap();
    let config = dir.join("lb.toml");
    std::fs::write(
        &config,
        format!(
            "interfaces = [{{ name = \"ext*\", xdp_mode = \"generic\" }}]\n\
             backend_interfaces = [\"pod*\"]\nmetrics_addr = \"{METRICS_ADDR}\"\n\
             [kubernetes]\nlease_namespace = \"lb-system\"\n"
        ),
    )
    .unwrap();
    let log = dir.join("lb.log");
    let child = ns
        .command(support::lb())
        .unwrap()
        .args(["run", "--kube", "--config"])
        .arg(&config)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--node-name", NODE])
        .arg("--control-socket")
        .arg(dir.join("lb.sock"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(File::create(&log).unwrap())
        .stderr(File::create(dir.join("lb.err")).unwrap())
        .spawn()
        .unwrap();
    let mut n = Daemon {
        child: Some(child),
        log,
        dir,
        ns,
        peer,
    };
    let events = |pattern: &str| {
        api.list::<Event>()
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some("InterfaceNotFound")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Node")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(NODE)
                    && e.note.as_deref().is_some_and(|t| t.contains(pattern))
            })
            .count()
    };
    let deadline = Instant::now() + DEADLINE;
    while !(events("\"ext*\"") > 0 && events("\"pod*\"") > 0) {
        if Instant::now() > deadline {
            let reqs: Vec<String> = api
                .requests()
                .iter()
                .filter(|r| !r.path.contains("lease"))
                .map(|r| format!("{} {} {}", r.method, r.path, r.code))
                .collect();
            panic!(
                "no InterfaceNotFound Events for both entries within {DEADLINE:?}; events: {:?}\nrequests: {reqs:#?}\n{}",
                api.list::<Event>(),
                n.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let note = api
        .list::<Event>()
        .into_iter()
        .find_map(|e| e.note.filter(|t| t.contains("\"ext*\"")))
        .unwrap_or_default();
    assert!(
        note.contains("interfaces entries") && note.contains(NODE),
        "{note}"
    );
    veth_pair(
        &n.ns,
        "ext0",
        [2, 0x18, 0, 0, 0, 1],
        &n.peer,
        "c0",
        [2, 0x18, 0, 0, 0, 2],
    )
    .unwrap();
    n.wait("ext0 attached", |n| n.attached("xdp") == ["ext0"]);
    assert!(n.alive(), "{}", n.logs());
    assert_eq!(events("\"ext*\""), 1, "one Event per episode");

    // The node settings reload in Kubernetes mode. A setting only a restart applies is
    // refused, naming it, and nothing changes.
    let kube_settings = |interfaces: &str, extra: &str| {
        format!(
            "interfaces = [{{ name = \"{interfaces}\", xdp_mode = \"generic\" }}]\n\
             backend_interfaces = [\"pod*\"]\nmetrics_addr = \"{METRICS_ADDR}\"\n\
             [kubernetes]\nlease_namespace = \"lb-system\"\n{extra}"
        )
    };
    std::fs::write(&config, kube_settings("lan*", "gossip_port = 7000\n")).unwrap();
    let reload =
        n.ns.command(support::lb())
            .unwrap()
            .args(["reload", "--control-socket"])
            .arg(n.dir.join("lb.sock"))
            .output()
            .unwrap();
    let reply = String::from_utf8_lossy(&reload.stdout).into_owned()
        + &String::from_utf8_lossy(&reload.stderr);
    assert!(!reload.status.success(), "{reply}");
    assert!(
        reply.contains("[kubernetes] changed, which only a restart applies")
            && reply.contains("nothing was applied"),
        "{reply}"
    );
    assert_eq!(
        n.attached("xdp"),
        ["ext0"],
        "a refused reload changed nothing"
    );
    // The interface lists apply live, and the daemon sees the file change by itself (the
    // kubelet rewrites a mounted ConfigMap; nobody sends SIGHUP): ext0 is no longer named,
    // so XDP leaves it, in lb's view and in the kernel's.
    std::fs::write(&config, kube_settings("lan*", "")).unwrap();
    n.wait("ext0 detached after the file changed", |n| {
        n.attached("xdp").is_empty() && n.xdp_prog("ext0").is_none()
    });
    assert!(
        n.unmatched().contains(&"interfaces=lan*".to_owned()),
        "{:?}",
        n.unmatched()
    );
    std::fs::write(&config, kube_settings("ext*", "")).unwrap();
    n.wait("ext0 attached again", |n| {
        n.attached("xdp") == ["ext0"] && n.xdp_prog("ext0").is_some()
    });
    assert!(n.alive(), "{}", n.logs());
    drop(n);
    rt.shutdown_background();
}
