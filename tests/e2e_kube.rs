//! End to end in Kubernetes mode: three real `lb run --kube` daemons, one per node
//! namespace, against the in-process fake API server (`fake-apiserver`: no real API server
//! can run on these machines), with real pods (`lb-lab backend`) and a real client.
//!
//! ```text
//!  client ns: br0 198.18.0.2/24 (a bridge: the LAN)
//!    ├── n1 ── ext0 198.18.0.11  node-1 (lb run --kube; XDP generic on ext0)  pod0 198.19.1.1 ── pod-1 198.19.1.10
//!    ├── n2 ── ext0 198.18.0.12  node-2                                         pod0 198.19.2.1 ── pod-2 198.19.2.10
//!    └── n3 ── ext0 198.18.0.13  node-3                                         pod0 198.19.3.1 ── pod-3 198.19.3.10
//! ```
//!
//! - Nodes route the other nodes' pod /24s via their LAN address (what a CNI would set up),
//!   forward, and run the reverse NAT on `pod*` (a `backend_interfaces` pattern).
//! - Each node's daemon reaches the fake at 127.0.0.1:6443 inside its own namespace (one
//!   listener per namespace, one shared state).
//! - The test plays kubelet and the EndpointSlice controller: it writes Nodes and
//!   EndpointSlices. The daemons allocate from an IPPool (198.18.0.100-198.18.0.109),
//!   write Service status, program their maps, and elect one announcer per VIP.
//! - Like kubelet, each node probes its own pods' serving port (TCP connect and HTTP GET
//!   every 100 ms, [`lb_lab::prober`]) until the lab goes, from the moment lb runs on
//!   every node (see [`Lab::start`] for why not from the pod's start); every test ends by
//!   requiring that every probe succeeded: lb must leave the cluster's own traffic to its
//!   pods alone, whatever it does to VIP traffic and whatever happens to lb (a SIGKILLed
//!   daemon is no reason for a probe to fail).
//!
//! Needs root. `cargo test -p lb-tests --test e2e_kube -- --test-threads=1 --nocapture`

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fake_apiserver::FakeApiServer;
use k8s_openapi::{
    ByteString,
    api::{
        core::v1::{
            Node, NodeAddress, NodeCondition, NodeStatus, ObjectReference, Secret, Service,
            ServicePort, ServiceSpec,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use lb_lab::{
    backend::Whoami,
    demo::parse_json_output,
    netns::{Mac, NetNs, veth_pair},
    probe::{H3Client, Trust, client_config},
    prober::{PROBE_EVERY, Prober, Target},
    topology::{self, http_get_in, stop_children},
};
use lb_userspace::kube::{
    crd::{IPPool, IPPoolSpec},
    election,
};
use serde_json::Value;

const PREFIX: &str = "lbk8s";
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const POOL_FIRST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const POD_PORT: u16 = 8443;
const API_PORT: u16 = 6443;
/// Each daemon's /status and /metrics, inside its own namespace.
const METRICS: &str = "127.0.0.1:9470";
/// Bound on each convergence; a healthy sync takes well under a second.
const CONVERGE: Duration = Duration::from_secs(15);
/// An API server stall as long as a control-plane upgrade's: no VIP may move through it.
const API_OUTAGE: Duration = Duration::from_secs(10);
/// The daemons' gossip port (the default).
const GOSSIP_PORT: u16 = 7946;

fn node_name(i: u8) -> String {
    format!("node-{i}")
}

fn node_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + i)
}

fn pod_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, i, 10)
}

/// Poll `f` until it yields, or panic with `what` and the last observation.
fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

struct LabNode {
    ns: NetNs,
    pod: NetNs,
    daemon: Option<Child>,
    backend: Option<Child>,
    /// kubelet's probes of this node's pod, from the node, once lb runs on every node.
    prober: Option<Prober>,
}

/// The topology above, torn down (children stopped, namespaces deleted) on drop.
struct Lab {
    rt: tokio::runtime::Runtime,
    api: FakeApiServer,
    dir: PathBuf,
    client: NetNs,
    nodes: Vec<LabNode>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A failing test's daemon logs (gossip's up/down lines, announcements) go with it.
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // First, so no probe sees the pods go.
        for n in &mut self.nodes {
            drop(n.prober.take());
        }
        let mut children: Vec<(&str, &mut Child)> = Vec::new();
        for n in &mut self.nodes {
            if let Some(c) = n.daemon.as_mut() {
                children.push(("lb run", c));
            }
            if let Some(c) = n.backend.as_mut() {
                children.push(("lb-lab backend", c));
            }
        }
        stop_children(children);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        ..Default::default()
    }
}

/// Node `i`, Ready, with its LAN address as InternalIP (where its daemon gossips).
fn ready_node(i: u8) -> Node {
    Node {
        metadata: meta(None, &node_name(i)),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: node_addr(i).to_string(),
            }]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// 443/TCP (https) and 443/UDP (h3) on one Service, both to the pods' named port `web`.
fn whoami_service(name: &str, annotations: &[(&str, &str)]) -> Service {
    let mut m = meta(Some("default"), name);
    m.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let port = |n: &str, proto: &str| ServicePort {
        name: Some(n.into()),
        port: 443,
        protocol: Some(proto.into()),
        target_port: Some(IntOrString::String("web".into())),
        ..Default::default()
    };
    Service {
        metadata: m,
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: Some("lb.dev/lb".into()),
            ports: Some(vec![port("https", "TCP"), port("h3", "UDP")]),
            selector: Some([("app".to_owned(), name.to_owned())].into()),
            ..Default::default()
        }),
        status: None,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cond {
    Ready,
    Terminating,
    NotServing,
}

/// One EndpointSlice for `service` with pods `on` (node index, condition).
fn slice(service: &str, on: &[(u8, Cond)]) -> EndpointSlice {
    let mut m = meta(Some("default"), &format!("{service}-abc"));
    m.labels = Some([("kubernetes.io/service-name".to_owned(), service.to_owned())].into());
    let port = |n: &str, proto: &str| EndpointPort {
        name: Some(n.into()),
        port: Some(POD_PORT.into()),
        protocol: Some(proto.into()),
        ..Default::default()
    };
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: on
            .iter()
            .map(|(i, c)| Endpoint {
                addresses: vec![pod_addr(*i).to_string()],
                node_name: Some(node_name(*i)),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some("default".into()),
                    name: Some(format!("pod-{i}")),
                    ..Default::default()
                }),
                conditions: Some(EndpointConditions {
                    ready: Some(*c == Cond::Ready),
                    serving: Some(*c != Cond::NotServing),
                    terminating: Some(*c != Cond::Ready),
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![port("https", "TCP"), port("h3", "UDP")]),
    }
}

/// An auto-assigning IPPool (a custom resource: created as JSON).
fn create_pool(api: &FakeApiServer, name: &str, addresses: &str) {
    let pool = IPPool::new(
        name,
        IPPoolSpec {
            addresses: vec![addresses.into()],
            auto_assign: true,
            service_selector: None,
            l2: None,
        },
    );
    api.create_json(serde_json::to_value(&pool).unwrap())
        .unwrap();
}

fn quic_secret() -> Secret {
    Secret {
        metadata: meta(Some("default"), "whoami-quic-lb"),
        data: Some(
            [
                ("config-id", "0"),
                ("server-id-len", "2"),
                ("nonce-len", "6"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect(),
        ),
        ..Default::default()
    }
}

impl Lab {
    /// Build the network, start the fake API server with Nodes, the pool and the QUIC-LB
    /// Secret, the pods on `pods` and kubelet's probes of them, then a daemon on every node
    /// (lb rolls out onto nodes whose pods kubelet is already probing; its start must not
    /// cost a probe), and wait until every daemon runs.
    fn start(nodes: u8, pods: &[u8]) -> Lab {
        let mut lab = Lab::without_daemons(nodes, pods);
        for &i in pods {
            lab.start_probing(i, PROBE_EVERY);
        }
        for i in 1..=nodes {
            lab.start_daemon(i);
        }
        lab.wait_daemons_attached();
        lab
    }

    /// The network, the fake API server with Nodes, the pool and the QUIC-LB Secret, and
    /// the pods on `pods`; no daemon, no probes yet.
    fn without_daemons(nodes: u8, pods: &[u8]) -> Lab {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("lb-e2e-kube-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let client = NetNs::create(PREFIX).unwrap();
        client
            .ip(&["link", "add", "br0", "type", "bridge"])
            .unwrap();
        client.link_up("br0").unwrap();
        client.addr_add("br0", &format!("{CLIENT}/24")).unwrap();
        let api = FakeApiServer::new();
        let mut lab = Lab {
            rt,
            api,
            dir,
            client,
            nodes: Vec::new(),
        };
        for i in 1..=nodes {
            lab.add_node(i, nodes);
        }
        // Every CRD of lb (IPPool and the BGP ones: without them the daemons would wait
        // for the BGP lists at start and run without BGP).
        for (_, crd) in lb_userspace::kube::crd::all_crds().unwrap() {
            lab.api.create(&crd).unwrap();
        }
        for i in 1..=nodes {
            lab.api.create(&ready_node(i)).unwrap();
        }
        create_pool(&lab.api, "lan", "198.18.0.100-198.18.0.109");
        lab.api.create(&quic_secret()).unwrap();
        for &i in pods {
            lab.start_pod(i);
        }
        lab
    }

    /// Wait until every running daemon answers /status: it has attached XDP and the
    /// reverse NAT by then.
    fn wait_daemons_attached(&self) {
        for i in 1..=self.nodes.len() as u8 {
            if self.node(i).daemon.is_some() {
                wait_for(&format!("node-{i}'s daemon to run"), CONVERGE, || {
                    self.status(i).map(|_| ())
                });
            }
        }
    }

    fn add_node(&mut self, i: u8, nodes: u8) {
        let ns = NetNs::create(PREFIX).unwrap();
        let pod = NetNs::create(PREFIX).unwrap();
        let lan_peer = format!("n{i}");
        veth_pair(
            &ns,
            "ext0",
            Mac::from([0x02, 0x6b, 0, 0, 1, i]),
            &self.client,
            &lan_peer,
            Mac::from([0x02, 0x6b, 0, 0, 2, i]),
        )
        .unwrap();
        self.client
            .ip(&["link", "set", &lan_peer, "master", "br0"])
            .unwrap();
        ns.addr_add("ext0", &format!("{}/24", node_addr(i)))
            .unwrap();
        veth_pair(
            &ns,
            "pod0",
            Mac::from([0x02, 0x6b, 0, 0, 3, i]),
            &pod,
            "eth0",
            Mac::from([0x02, 0x6b, 0, 0, 4, i]),
        )
        .unwrap();
        ns.addr_add("pod0", &format!("198.19.{i}.1/24")).unwrap();
        pod.addr_add("eth0", &format!("{}/24", pod_addr(i)))
            .unwrap();
        pod.route_add("default", Some(&format!("198.19.{i}.1")), None)
            .unwrap();
        for j in (1..=nodes).filter(|j| *j != i) {
            ns.route_add(
                &format!("198.19.{j}.0/24"),
                Some(&node_addr(j).to_string()),
                None,
            )
            .unwrap();
        }
        ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
        for k in ["all", "default", "ext0", "pod0"] {
            ns.sysctl(&format!("net.ipv4.conf.{k}.rp_filter"), "0")
                .unwrap();
        }
        // The API server as this node sees it: 127.0.0.1:6443 in its own namespace.
        let listener = ns
            .run_in(|| std::net::TcpListener::bind(("127.0.0.1", API_PORT)))
            .unwrap()
            .unwrap();
        let api = self.api.clone();
        self.rt.spawn(async move { api.serve(listener).await });
        self.nodes.push(LabNode {
            ns,
            pod,
            daemon: None,
            backend: None,
            prober: None,
        });
    }

    fn node(&self, i: u8) -> &LabNode {
        &self.nodes[usize::from(i - 1)]
    }

    fn node_mut(&mut self, i: u8) -> &mut LabNode {
        &mut self.nodes[usize::from(i - 1)]
    }

    /// `lb-lab backend` in pod `i`, deriving its server ID from its pod IP and reading the
    /// QUIC-LB config from files laid out as a mounted Secret.
    fn start_pod(&mut self, i: u8) {
        let secret_dir = self.dir.join("quic-lb-secret");
        std::fs::create_dir_all(&secret_dir).unwrap();
        for (k, v) in [
            ("config-id", "0"),
            ("server-id-len", "2"),
            ("nonce-len", "6"),
        ] {
            std::fs::write(secret_dir.join(k), v).unwrap();
        }
        let log = std::fs::File::create(self.dir.join(format!("pod-{i}.log"))).unwrap();
        let child = self
            .node(i)
            .pod
            .command(support::lab())
            .unwrap()
            .arg("backend")
            .args(["--listen", &format!("{}:{POD_PORT}", pod_addr(i))])
            .args(["--name", &format!("pod-{i}")])
            .env("LB_POD_IP", pod_addr(i).to_string())
            .env("LB_QUIC_LB_SECRET_DIR", &secret_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.node_mut(i).backend = Some(child);
        let addr = SocketAddr::new(IpAddr::V4(pod_addr(i)), POD_PORT);
        let ns = &self.node(i).pod;
        wait_for(&format!("pod-{i} to serve"), CONVERGE, || {
            http_get_in(ns, addr, "/").map_err(|e| format!("{e:#}"))
        });
    }

    /// Node `i` probes pod `i` (its only pod) on its serving port `every` from now until
    /// the lab goes, as kubelet probes a pod until it is deleted.
    fn start_probing(&mut self, i: u8, every: Duration) {
        let target = Target {
            name: format!("pod-{i}"),
            addr: SocketAddr::new(IpAddr::V4(pod_addr(i)), POD_PORT),
        };
        let node = self.node_mut(i);
        assert!(node.prober.is_none(), "node-{i} probes its pod already");
        node.prober = Some(Prober::start(node.ns.path(), vec![target], every).unwrap());
    }

    /// kubelet's probes from every node to its own pod, from their start until now, all
    /// succeeded (two more rounds first, so the last thing the test did is covered). Every
    /// test that builds a lab ends with this.
    fn assert_kubelet_probes_succeeded(&self) {
        let mut probed = 0;
        for (k, n) in self.nodes.iter().enumerate() {
            let Some(p) = &n.prober else { continue };
            let tally = p.wait_rounds(2);
            println!(
                "kubelet-style probes from node-{}: {}",
                k + 1,
                tally.summary()
            );
            assert!(
                tally.all_ok(),
                "kubelet-style probes from node-{} to its pods: {}\n{}",
                k + 1,
                tally.summary(),
                self.logs()
            );
            probed += 1;
        }
        assert!(probed > 0, "no node probed a pod: the lab has no pods");
    }

    fn start_daemon(&mut self, i: u8) {
        let dir = self.dir.join(node_name(i));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            FakeApiServer::kubeconfig(&format!("http://127.0.0.1:{API_PORT}")),
        )
        .unwrap();
        let config = dir.join("lb.toml");
        std::fs::write(
            &config,
            format!(
                "interfaces = [{{ name = \"ext0\", xdp_mode = \"generic\" }}]\n\
                 backend_interfaces = [\"pod*\"]\n\
                 metrics_addr = \"{METRICS}\"\n\
                 [kubernetes]\nlease_namespace = \"lb-system\"\n\
                 [bgp]\nrun_dir = \"{}\"\n",
                dir.join("bird").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("lb-run.log")).unwrap();
        let child = self
            .node(i)
            .ns
            .command(support::lb())
            .unwrap()
            .args(["run", "--kube", "--config"])
            .arg(&config)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--node-name", &node_name(i)])
            .arg("--control-socket")
            .arg(dir.join("lb.sock"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.node_mut(i).daemon = Some(child);
    }

    fn log(&self, i: u8) -> String {
        std::fs::read_to_string(self.dir.join(node_name(i)).join("lb-run.log")).unwrap_or_default()
    }

    fn logs(&self) -> String {
        (1..=self.nodes.len() as u8)
            .filter(|i| self.node(*i).daemon.is_some())
            .map(|i| format!("--- node-{i} lb run ---\n{}", self.log(i)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Node `i`'s daemon /status.
    fn status(&self, i: u8) -> Result<Value, String> {
        let body = http_get_in(&self.node(i).ns, METRICS.parse().unwrap(), "/status")
            .map_err(|e| format!("{e:#}"))?;
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
    }

    /// Node `i`'s daemon probe `path` (`/healthz`, `/readyz`): (HTTP status, body).
    fn daemon_probe(&self, i: u8, path: &str) -> Result<(u16, String), String> {
        let addr: SocketAddr = METRICS.parse().unwrap();
        let raw = self
            .node(i)
            .ns
            .run_in(|| -> std::io::Result<String> {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"
                )?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })
            .map_err(|e| format!("{e:#}"))?
            .map_err(|e| format!("GET {path} on node-{i}: {e}"))?;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .ok_or(format!("not HTTP: {raw:?}"))?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or(format!("no status in {head:?}"))?;
        Ok((code, body.to_owned()))
    }

    /// Wait until node `i`'s `/readyz` answers 200 `ok` (`ready`) or 503 (not).
    fn wait_ready(&self, i: u8, ready: bool) -> String {
        let what = if ready { "ready" } else { "not ready" };
        wait_for(&format!("node-{i} to be {what}"), CONVERGE, || {
            match self.daemon_probe(i, "/readyz")? {
                (200, body) if ready && body == "ok\n" => Ok(body),
                (503, body) if !ready => Ok(body),
                other => Err(format!("{other:?}")),
            }
        })
    }

    fn service(&self, name: &str) -> Option<Service> {
        self.api.get::<Service>(Some("default"), name)
    }

    /// Wait until the Service has an address in its status; returns it.
    fn wait_ip(&self, name: &str) -> Ipv4Addr {
        wait_for(&format!("{name} to get an address"), CONVERGE, || {
            let svc = self.service(name).ok_or("no such Service")?;
            match lb_userspace::kube::status::ingress_ips(&svc).first() {
                Some(IpAddr::V4(a)) => Ok(*a),
                _ => Err(format!("status {:?}", svc.status)),
            }
        })
    }

    /// VIPs node `i` announces, from its /status.
    fn announced(&self, i: u8) -> Result<Vec<String>, String> {
        let s = self.status(i)?;
        Ok(s["sync"]["announced"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Programmed data-plane VIPs (address:port/proto) of node `i`.
    fn programmed(&self, i: u8) -> Result<Vec<String>, String> {
        let s = self.status(i)?;
        let vips = s["vips"].as_array().ok_or(format!("no vips in {s}"))?;
        let mut out: Vec<String> = vips
            .iter()
            .map(|v| {
                format!(
                    "{}:{}/{}",
                    v["addr"].as_str().unwrap_or("?"),
                    v["port"],
                    v["proto"].as_str().unwrap_or("?")
                )
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn map_changes(&self, i: u8) -> u64 {
        self.status(i).unwrap()["sync"]["map_changes"]
            .as_u64()
            .unwrap()
    }

    /// Node `i`'s syncs of only the Services whose EndpointSlices changed.
    fn endpoint_syncs(&self, i: u8) -> u64 {
        self.status(i).unwrap()["kubernetes"]["syncs"]["endpoints"]
            .as_u64()
            .unwrap()
    }

    fn probe(&self, args: &[&str]) -> Result<Value, String> {
        let out = self
            .client
            .command(support::lab())
            .unwrap()
            .arg("probe")
            .args(args)
            .arg("--json")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        parse_json_output(&out, "lb-lab probe").map_err(|e| format!("{e:#}"))
    }

    fn h3(&self, vip: Ipv4Addr, connections: usize, migrate: bool) -> Result<Value, String> {
        let target = format!("{vip}:443");
        let n = connections.to_string();
        let mut args = vec![
            "h3",
            "--target",
            &target,
            "--insecure",
            "--connections",
            &n,
            "--requests-per-phase",
            "2",
        ];
        if migrate {
            args.push("--migrate");
        }
        self.probe(&args)
    }

    fn http1(&self, vip: Ipv4Addr, requests: usize) -> Result<Value, String> {
        let target = format!("{vip}:443");
        let n = requests.to_string();
        self.probe(&["http1", "--target", &target, "--requests", &n])
    }
}

fn succeeded(v: &Value) -> u64 {
    v["succeeded"].as_u64().unwrap_or(0)
}

fn per_backend(v: &Value) -> BTreeMap<String, u64> {
    v["per_backend"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn e2e_kube_service_lifecycle_kubectl_and_drain() {
    let _ = lb_lab::netns::remove_stale(PREFIX);
    let lab = Lab::start(3, &[1, 2, 3]);
    lab.api
        .create(&slice(
            "whoami",
            &[(1, Cond::Ready), (2, Cond::Ready), (3, Cond::Ready)],
        ))
        .unwrap();
    lab.api
        .create(&whoami_service(
            "whoami",
            &[("lb.dev/quic-lb-secret", "whoami-quic-lb")],
        ))
        .unwrap();

    // Create: the first pool address, status written by the elected node, the VIP
    // programmed on every node (443/TCP and 443/UDP), announced by exactly one.
    let vip = lab.wait_ip("whoami");
    assert_eq!(vip, POOL_FIRST);
    let svc = lab.service("whoami").unwrap();
    let conds = svc
        .status
        .as_ref()
        .unwrap()
        .conditions
        .clone()
        .unwrap_or_default();
    let allocated = conds
        .iter()
        .find(|c| c.type_ == "lb.dev/AddressAllocated")
        .unwrap();
    assert_eq!(
        (allocated.status.as_str(), allocated.reason.as_str()),
        ("True", "Allocated")
    );
    let valid = conds
        .iter()
        .find(|c| c.type_ == "lb.dev/ConfigValid")
        .unwrap();
    assert_eq!(valid.status, "True", "{valid:?}");
    let want = vec![format!("{vip}:443/tcp"), format!("{vip}:443/udp")];
    for i in 1..=3 {
        wait_for(&format!("node-{i} to program {vip}"), CONVERGE, || {
            let p = lab.programmed(i)?;
            if p == want {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            }
        });
    }
    let winner = election::vip_winner(IpAddr::V4(vip), ["node-1", "node-2", "node-3"]).unwrap();
    wait_for("exactly the elected node to announce", CONVERGE, || {
        let a = (1..=3)
            .map(|i| lab.announced(i).map(|v| (i, v)))
            .collect::<Result<Vec<(u8, Vec<String>)>, String>>()?;
        let holders: Vec<String> = a
            .iter()
            .filter(|(_, v)| v.contains(&vip.to_string()))
            .map(|(i, _)| node_name(*i))
            .collect();
        if holders == [winner.to_owned()] {
            Ok(())
        } else {
            Err(format!("{a:?}"))
        }
    });

    // kubectl, an independent client, sees the same status and lb's Events.
    let kubeconfig = lab.dir.join("kubectl.kubeconfig");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let api = lab.api.clone();
    lab.rt.spawn(async move { api.serve(listener).await });
    std::fs::write(
        &kubeconfig,
        FakeApiServer::kubeconfig(&format!("http://127.0.0.1:{port}")),
    )
    .unwrap();
    let kubectl = |args: &[&str]| -> String {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("kubectl is preinstalled on these machines (/usr/bin/kubectl)");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        kubectl(&[
            "get",
            "svc",
            "whoami",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}"
        ]),
        vip.to_string()
    );
    let pools = kubectl(&["get", "ippools", "-o", "jsonpath={.items[*].metadata.name}"]);
    assert_eq!(pools, "lan");
    // The status writer keeps the pool's counts: one of its ten addresses assigned.
    let pool_counts = || {
        kubectl(&[
            "get",
            "ippool",
            "lan",
            "-o",
            "jsonpath={.status.assignedIPv4}/{.status.availableIPv4} \
             {.status.assignedIPv6}/{.status.availableIPv6}",
        ])
    };
    wait_for("the IPPool status to count the address", CONVERGE, || {
        let got = pool_counts();
        (got == "1/9 0/0").then_some(()).ok_or(got)
    });

    // Traffic: HTTP/3 with migration (routed by the server ID derived from each pod's IP)
    // and HTTP/1.1 on the same VIP and port, spread over the three pods.
    let h3 = lab
        .h3(vip, 30, true)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert_eq!(succeeded(&h3), 30, "{h3}\n{}", lab.logs());
    assert_eq!(per_backend(&h3).len(), 3, "{h3}");
    let h1 = lab.http1(vip, 30).unwrap();
    assert_eq!(succeeded(&h1), 30, "{h1}");

    // Drain (KEP-1669): pod-3 terminating but still serving while others are ready: new
    // flows avoid it; a keep-alive connection already on it keeps working.
    let mut on_3 = None;
    for _ in 0..60 {
        let mut ka = support::lab_process::KeepAlive::open(
            &lab.client,
            SocketAddr::new(IpAddr::V4(vip), 443),
        );
        let who = ka.get().unwrap();
        if who.name == "pod-3" {
            on_3 = Some(ka);
            break;
        }
    }
    let mut on_3 = on_3.expect("no connection of 60 reached pod-3");
    let changes_before: Vec<u64> = (1..=3).map(|i| lab.map_changes(i)).collect();
    let endpoint_syncs_before: Vec<u64> = (1..=3).map(|i| lab.endpoint_syncs(i)).collect();
    lab.api
        .replace(&slice(
            "whoami",
            &[(1, Cond::Ready), (2, Cond::Ready), (3, Cond::Terminating)],
        ))
        .unwrap();
    wait_for("every node to drain pod-3", CONVERGE, || {
        let now: Vec<u64> = (1..=3).map(|i| lab.map_changes(i)).collect();
        if now.iter().zip(&changes_before).all(|(n, b)| n > b) {
            Ok(())
        } else {
            Err(format!("map changes {now:?}, before {changes_before:?}"))
        }
    });
    // Only the EndpointSlice changed: each node updated just that Service's VIPs.
    wait_for(
        "every node to count an EndpointSlice sync",
        CONVERGE,
        || {
            let now: Vec<u64> = (1..=3).map(|i| lab.endpoint_syncs(i)).collect();
            if now.iter().zip(&endpoint_syncs_before).all(|(n, b)| n > b) {
                Ok(())
            } else {
                Err(format!(
                    "EndpointSlice syncs {now:?}, before {endpoint_syncs_before:?}"
                ))
            }
        },
    );
    let h1 = lab.http1(vip, 30).unwrap();
    assert_eq!(succeeded(&h1), 30, "{h1}");
    assert!(
        !per_backend(&h1).contains_key("pod-3"),
        "new flows reached the draining pod: {h1}"
    );
    assert_eq!(
        on_3.get().expect("the drained connection broke").name,
        "pod-3"
    );

    // Gone (not serving): removed, its flows evicted; nothing reaches it any more.
    lab.api
        .replace(&slice(
            "whoami",
            &[(1, Cond::Ready), (2, Cond::Ready), (3, Cond::NotServing)],
        ))
        .unwrap();
    wait_for(
        "pod-3's connection to be cut off",
        CONVERGE,
        || match on_3.get() {
            Ok(w) if w.name == "pod-3" => Err("still reaches pod-3".to_owned()),
            _ => Ok(()),
        },
    );
    let h3 = lab.h3(vip, 20, false).unwrap();
    assert_eq!(succeeded(&h3), 20, "{h3}");
    assert!(!per_backend(&h3).contains_key("pod-3"), "{h3}");

    // Delete: status gone with the object, VIP removed from every node's maps, no answer.
    lab.api
        .delete::<Service>(Some("default"), "whoami")
        .unwrap();
    for i in 1..=3 {
        wait_for(&format!("node-{i} to remove {vip}"), CONVERGE, || {
            let p = lab.programmed(i)?;
            let a = lab.announced(i)?;
            if p.is_empty() && a.is_empty() {
                Ok(())
            } else {
                Err(format!("{p:?} {a:?}"))
            }
        });
    }
    wait_for("the IPPool status to free the address", CONVERGE, || {
        let got = pool_counts();
        (got == "0/10 0/0").then_some(()).ok_or(got)
    });
    // The address is free again: a new Service gets it.
    lab.api.create(&whoami_service("again", &[])).unwrap();
    assert_eq!(lab.wait_ip("again"), POOL_FIRST);
    // All along (pod-3 drained and taken out of the Service, but running), each node's
    // probes of its pod were answered by the pod.
    lab.assert_kubelet_probes_succeeded();
}

/// Node `i`'s counters that show flows crossing nodes: packets it marked for the pod's
/// node (`marked_for_peer`) and marked packets it took in for its own pod (`from_peer`),
/// node-wide (this test's traffic is the only VIP traffic); per protocol, the packets it
/// counted for `vip` (marked ones it took in included); replies its reverse NAT rewrote to
/// come from a VIP.
fn cross_node_counters(lab: &Lab, i: u8, vip: Ipv4Addr) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for reason in ["marked_for_peer", "from_peer"] {
        out.insert(reason.to_string(), node_counter(lab, i, reason));
    }
    for proto in ["tcp", "udp"] {
        out.insert(
            format!("{proto} packets"),
            vip_counter(lab, i, vip, proto, "packets"),
        );
    }
    out.insert("rnat rewritten".into(), rnat_counter(lab, i, "rewritten"));
    out
}

/// `after - before`, key by key.
fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .collect()
}

/// A GET from inside `ns` straight to pod `pod`'s serving port, no VIP involved: the pod's
/// whoami answer, which must come from the pod and name the address `ns` sent from.
fn direct_get(lab: &Lab, ns: &NetNs, from: Ipv4Addr, pod: u8, what: &str) -> Whoami {
    let to = SocketAddr::new(IpAddr::V4(pod_addr(pod)), POD_PORT);
    let body = http_get_in(ns, to, "/direct")
        .unwrap_or_else(|e| panic!("{what}: GET http://{to}/direct: {e:#}\n{}", lab.logs()));
    let who = Whoami::parse(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body:?}"));
    assert_eq!(who.name, format!("pod-{pod}"), "{what}: {who:?}");
    assert_eq!(who.client.ip(), IpAddr::V4(from), "{what}: {who:?}");
    who
}

/// `externalTrafficPolicy: Cluster` with a pod on every node: the announcing node steers
/// most flows to pods behind the other nodes. It marks those packets (an IPv4 option naming
/// the VIP); the pod's node takes the mark off, records the flow and delivers the packet,
/// and its reverse NAT answers the client straight from the VIP. The pod sees the client's
/// own address (DNAT only, no SNAT), HTTP/3 connections survive migrating to a new port,
/// and HTTP/1.1 works on the same VIP and port. Meanwhile the cluster's own traffic to the
/// same pod port (kubelet's probes, a node or a pod on another node) reaches the pod and
/// gets the pod's own answer.
#[test]
fn e2e_kube_cluster_policy_pods_behind_other_nodes() {
    let _ = lb_lab::netns::remove_stale(PREFIX);
    let lab = Lab::start(3, &[1, 2, 3]);
    let mut svc = whoami_service("whoami", &[("lb.dev/quic-lb-secret", "whoami-quic-lb")]);
    svc.spec.as_mut().unwrap().external_traffic_policy = Some("Cluster".into());
    lab.api
        .create(&slice(
            "whoami",
            &[(1, Cond::Ready), (2, Cond::Ready), (3, Cond::Ready)],
        ))
        .unwrap();
    lab.api.create(&svc).unwrap();
    let vip = lab.wait_ip("whoami");
    let want = vec![format!("{vip}:443/tcp"), format!("{vip}:443/udp")];
    for i in 1..=3 {
        wait_for(&format!("node-{i} to program {vip}"), CONVERGE, || {
            let p = lab.programmed(i)?;
            if p == want {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            }
        });
    }
    let winner = election::vip_winner(IpAddr::V4(vip), ["node-1", "node-2", "node-3"]).unwrap();
    let announcer: u8 = winner.trim_start_matches("node-").parse().unwrap();
    wait_for(
        &format!("node-{announcer} to announce {vip} alone"),
        CONVERGE,
        || match holders(&lab, 3, vip).as_slice() {
            [one] if *one == announcer => Ok(()),
            h => Err(format!("{h:?}")),
        },
    );
    let remote: Vec<u8> = (1..=3).filter(|i| *i != announcer).collect();
    let before: Vec<BTreeMap<String, u64>> =
        (1..=3).map(|i| cross_node_counters(&lab, i, vip)).collect();

    // HTTP/3 with migration, then HTTP/1.1, through the VIP from the client.
    let h3 = lab
        .h3(vip, 30, true)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    for k in ["succeeded", "migrated", "survived"] {
        assert_eq!(h3[k].as_u64(), Some(30), "h3 {k}: {h3}\n{}", lab.logs());
    }
    let h1 = lab
        .http1(vip, 30)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert_eq!(succeeded(&h1), 30, "{h1}\n{}", lab.logs());
    println!(
        "cross-node: node-{announcer} announces {vip}; h3 (migrating) {:?}, http1 {:?}",
        per_backend(&h3),
        per_backend(&h1)
    );
    // Every pod, on whatever node, saw the client's own address, before and after a
    // migration.
    let client = format!("{CLIENT}:");
    for r in h3["results"].as_array().unwrap() {
        for k in ["client_before", "client_after"] {
            assert!(
                r[k].as_str().is_some_and(|c| c.starts_with(&client)),
                "h3 {k}: {r}"
            );
        }
    }
    for r in h1["results"].as_array().unwrap() {
        assert!(
            r["client"].as_str().is_some_and(|c| c.starts_with(&client)),
            "http1: {r}"
        );
    }
    // Pods behind the other nodes answered, over both protocols.
    let answered = |v: &Value| -> Vec<u8> {
        remote
            .iter()
            .copied()
            .filter(|j| per_backend(v).contains_key(&format!("pod-{j}")))
            .collect()
    };
    let (remote_h3, remote_h1) = (answered(&h3), answered(&h1));
    assert!(
        !remote_h3.is_empty() && !remote_h1.is_empty(),
        "no pod behind another node than node-{announcer} answered: h3 {h3}\nhttp1 {h1}"
    );

    // The counters: every packet the announcer marked reached a pod's node, which took it
    // in for its pod; those nodes rewrote the replies.
    let counts = wait_for(
        "the marked packets to be counted where they landed",
        CONVERGE,
        || {
            let now: Vec<BTreeMap<String, u64>> =
                (1..=3).map(|i| cross_node_counters(&lab, i, vip)).collect();
            let d: Vec<BTreeMap<String, u64>> =
                now.iter().zip(&before).map(|(a, b)| delta(a, b)).collect();
            let at = |i: u8| &d[usize::from(i - 1)];
            let marked = at(announcer)["marked_for_peer"];
            let taken_in: u64 = remote.iter().map(|j| at(*j)["from_peer"]).sum();
            let balanced = marked == taken_in;
            if balanced {
                Ok(d)
            } else {
                Err(format!("{d:?}"))
            }
        },
    );
    for (i, c) in (1..=3).zip(&counts) {
        println!("cross-node: node-{i} counted {c:?}");
    }
    let at = |i: u8| &counts[usize::from(i - 1)];
    assert!(
        at(announcer)["marked_for_peer"] > 0,
        "node-{announcer} marked no packet: {counts:?}"
    );
    assert_eq!(
        at(announcer)["from_peer"],
        0,
        "the announcer took in marked packets: {counts:?}"
    );
    for proto in ["tcp", "udp"] {
        assert!(
            at(announcer)[&format!("{proto} packets")] > 0,
            "node-{announcer} counted no {proto} packet of the VIP: {counts:?}"
        );
    }
    for (proto, pods) in [("udp", &remote_h3), ("tcp", &remote_h1)] {
        for j in pods {
            assert!(
                at(*j)["from_peer"] > 0 && at(*j)[&format!("{proto} packets")] > 0,
                "pod-{j} answered over {proto}, but node-{j} took in no marked {proto} packet \
                 of the VIP: {counts:?}"
            );
            assert!(
                at(*j)["rnat rewritten"] > 0,
                "pod-{j} answered, but node-{j} rewrote no reply: {counts:?}"
            );
        }
    }

    // The same pod port, straight: from the pod's own node, from the announcing node and
    // from the pod on the announcing node (node-to-pod and pod-to-pod across nodes).
    let a = lab.node(announcer);
    for j in &remote {
        let j = *j;
        direct_get(
            &lab,
            &lab.node(j).ns,
            Ipv4Addr::new(198, 19, j, 1),
            j,
            &format!("node-{j} to its pod"),
        );
        direct_get(
            &lab,
            &a.ns,
            node_addr(announcer),
            j,
            &format!("node-{announcer} to pod-{j}"),
        );
        direct_get(
            &lab,
            &a.pod,
            pod_addr(announcer),
            j,
            &format!("pod-{announcer} to pod-{j}"),
        );
    }
    println!(
        "cross-node: pods {remote:?} answered GETs from their own node, node-{announcer} and \
         pod-{announcer} themselves"
    );
    // Each pod's node holds the reply entries of the flows it took in: one per client path
    // of each QUIC connection (two, with the migration), kept 120 s. /status counts them as
    // of the daemon's last sweep (every 5 s).
    for j in &remote {
        let quic = per_backend(&h3)
            .get(&format!("pod-{j}"))
            .copied()
            .unwrap_or(0);
        let flows = wait_for(
            &format!("node-{j}'s reply table to hold pod-{j}'s QUIC paths"),
            CONVERGE,
            || {
                let st = lab.status(*j)?;
                let flows = st["reply_table"]["flows"].as_u64().unwrap_or(0);
                if flows >= 2 * quic {
                    Ok(flows)
                } else {
                    Err(format!("{} (want {} or more)", st["reply_table"], 2 * quic))
                }
            },
        );
        println!(
            "cross-node: node-{j}'s reply table holds {flows} flows ({quic} migrated QUIC \
             connections to pod-{j})"
        );
    }
    lab.assert_kubelet_probes_succeeded();
}

/// The client's neighbour entry for `addr`: the MAC it sends VIP traffic to.
fn client_neigh(lab: &Lab, addr: Ipv4Addr) -> String {
    lab.client
        .ip(&["neigh", "show", &addr.to_string()])
        .unwrap_or_default()
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// One fresh HTTP/1.1 request through the VIP with short timeouts: did it get a 200?
fn quick_get(client: &NetNs, vip: Ipv4Addr) -> bool {
    let to = SocketAddr::new(IpAddr::V4(vip), 443);
    let Ok(Ok(mut s)) =
        client.run_in(|| std::net::TcpStream::connect_timeout(&to, Duration::from_millis(150)))
    else {
        return false;
    };
    use std::io::{Read, Write};
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    if write!(
        s,
        "GET / HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut head = [0u8; 16];
    matches!(s.read(&mut head), Ok(n) if n >= 12 && head.starts_with(b"HTTP/1.1 200"))
}

/// Bound on one step of a test's own HTTP/3 connection (handshake, one request).
const H3_STEP: Duration = Duration::from_secs(5);

/// An HTTP/3 connection (quinn, `lb-lab probe`'s client) from the client namespace through `vip`
/// that reached pod `pod`, and its first answer: a connection Maglev sent to another pod is
/// closed and a new one tried. The lab's runtime drives it from then on (ACKs, timers), so
/// it lives across whatever the test does next.
fn h3_connection_to_pod(lab: &Lab, vip: Ipv4Addr, pod: u8) -> (H3Client, Whoami) {
    let config = client_config(&Trust::Insecure).unwrap();
    let to = SocketAddr::new(IpAddr::V4(vip), 443);
    let mut elsewhere = Vec::new();
    for _ in 0..40 {
        // Its UDP socket is opened on this thread, inside the client namespace.
        let mut c = lab
            .client
            .run_in(|| {
                lab.rt.block_on(H3Client::connect(
                    SocketAddr::new(IpAddr::V4(CLIENT), 0),
                    to,
                    "localhost",
                    config.clone(),
                    H3_STEP,
                ))
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("HTTP/3 connection through {vip}: {e}\n{}", lab.logs()));
        let who = lab
            .rt
            .block_on(c.whoami("/established", H3_STEP))
            .unwrap_or_else(|e| panic!("HTTP/3 request through {vip}: {e}\n{}", lab.logs()));
        if who.name == format!("pod-{pod}") {
            return (c, who);
        }
        elsewhere.push(who.name);
        lab.rt.block_on(c.close(Duration::ZERO));
    }
    panic!("40 HTTP/3 connections through {vip}, none reached pod-{pod}: {elsewhere:?}");
}

/// The announcing node's daemon dies (SIGKILL: no goodbye, its Lease just stops renewing):
/// within a second (gossip declares it down; its Lease would last 40 s) another node
/// announces the VIP and new connections work. Established
/// QUIC and TCP connections to pods on the surviving nodes continue, on the same pod: every
/// node computes the same Maglev ring, a QUIC packet's connection ID names its pod, and the
/// pod's node, which recorded each flow when the dead node's marked packets reached it,
/// keeps the reply entry and goes on answering from the VIP; the new announcer steers (and
/// marks) the packets as the old one did. Connections to pods on the killed daemon's node
/// would lose their reverse NAT (its XDP and TC programs go with the process) until its
/// daemon restarts, so the Service's pods live on the other two nodes; the killed node runs
/// a pod outside the Service, which kubelet goes on probing through the kill. A graceful
/// stop (SIGTERM) then hands the VIP over without waiting for the lease.
#[test]
fn e2e_kube_announcer_failover_within_one_second() {
    let _ = lb_lab::netns::remove_stale(PREFIX);
    let all = ["node-1", "node-2", "node-3"];
    let vip = POOL_FIRST;
    let first = election::vip_winner(IpAddr::V4(vip), all).unwrap();
    let w: u8 = first.trim_start_matches("node-").parse().unwrap();
    let rest: Vec<&str> = all.iter().copied().filter(|n| *n != first).collect();
    let second = election::vip_winner(IpAddr::V4(vip), rest.iter().copied()).unwrap();
    let s: u8 = second.trim_start_matches("node-").parse().unwrap();
    // Neither announcing first nor taking over.
    let other = 6 - w - s;
    // The Service's pods live on the two nodes that survive; the pod on the killed node is
    // no endpoint of it.
    let pods: Vec<u8> = (1..=3).filter(|i| *i != w).collect();
    let mut lab = Lab::start(3, &[1, 2, 3]);
    let endpoints: Vec<(u8, Cond)> = pods.iter().map(|i| (*i, Cond::Ready)).collect();
    lab.api.create(&slice("whoami", &endpoints)).unwrap();
    lab.api
        .create(&whoami_service(
            "whoami",
            &[("lb.dev/quic-lb-secret", "whoami-quic-lb")],
        ))
        .unwrap();
    assert_eq!(lab.wait_ip("whoami"), vip);
    wait_for("the first-ranked node to announce alone", CONVERGE, || {
        let a = (1..=3)
            .map(|i| lab.announced(i))
            .collect::<Result<Vec<Vec<String>>, String>>()?;
        let holders: Vec<u8> = (1..=3)
            .filter(|i| a[usize::from(*i - 1)].contains(&vip.to_string()))
            .collect();
        if holders == [w] {
            Ok(())
        } else {
            Err(format!("{a:?}"))
        }
    });
    wait_for("traffic through the VIP", CONVERGE, || {
        if quick_get(&lab.client, vip) {
            Ok(())
        } else {
            Err("no answer".into())
        }
    });
    let mac_w = lb_lab::netns::format_mac(Mac::from([0x02, 0x6b, 0, 0, 1, w]));
    assert_eq!(client_neigh(&lab, vip), mac_w);
    // A TCP connection established through the first node.
    let mut kept =
        support::lab_process::KeepAlive::open(&lab.client, SocketAddr::new(IpAddr::V4(vip), 443));
    let before = kept.get().unwrap().name;
    // An HTTP/3 connection established through the first node to the pod on `other`: its
    // packets cross nodes before the failover (first node -> pod's node) and after it (new
    // announcer -> pod's node).
    let (mut quic, quic_before) = h3_connection_to_pod(&lab, vip, other);

    // Kill the announcing node's daemon (SIGKILL: no goodbye, its Lease just stops).
    let killed_at = Instant::now();
    lab.node_mut(w).daemon.as_mut().unwrap().kill().unwrap();
    let _ = lab.node_mut(w).daemon.as_mut().unwrap().wait();
    let outage = loop {
        let t = Instant::now();
        if quick_get(&lab.client, vip) {
            break t.saturating_duration_since(killed_at);
        }
        assert!(
            killed_at.elapsed() < CONVERGE,
            "no failover within {CONVERGE:?}\n{}",
            lab.logs()
        );
    };
    println!(
        "failover: traffic through {vip} flows again {} ms after node-{w}'s daemon was killed \
         (gossip probe 150 ms, suspicion 300 ms; lease 40 s, renew 10 s); node-{s} took over",
        outage.as_millis()
    );
    assert!(
        outage < Duration::from_secs(1),
        "failover took {outage:?}\n{}",
        lab.logs()
    );
    let mac_s = lb_lab::netns::format_mac(Mac::from([0x02, 0x6b, 0, 0, 1, s]));
    wait_for("the client to send to the new announcer", CONVERGE, || {
        let m = client_neigh(&lab, vip);
        if m == mac_s { Ok(()) } else { Err(m) }
    });
    assert_eq!(lab.announced(s).unwrap(), vec![vip.to_string()]);
    assert!(lab.announced(other).unwrap().is_empty());
    // The established connection survives: the new node's Maglev ring is the same.
    kept.set_timeout(Duration::from_secs(3));
    assert_eq!(
        kept.get()
            .expect("the connection died with the failover")
            .name,
        before
    );
    // So does the QUIC connection, on the same pod: the new announcer routes it by its
    // connection ID and marks it for the pod's node, which answers from the VIP.
    let marked_before = node_counter(&lab, s, "marked_for_peer");
    let from_peer_before = node_counter(&lab, other, "from_peer");
    let quic_after = lab
        .rt
        .block_on(quic.whoami("/after-failover", H3_STEP))
        .unwrap_or_else(|e| {
            panic!(
                "the HTTP/3 connection to pod-{other} died with the failover: {e}\n{}",
                lab.logs()
            )
        });
    assert_eq!(quic_after.name, quic_before.name, "{quic_after:?}");
    assert_eq!(
        (quic_after.client, quic_after.requests_on_connection),
        (quic_before.client, quic_before.requests_on_connection + 1),
        "not the same connection: before {quic_before:?}, after {quic_after:?}"
    );
    let marked = node_counter(&lab, s, "marked_for_peer") - marked_before;
    let from_peer = node_counter(&lab, other, "from_peer") - from_peer_before;
    println!(
        "failover: the HTTP/3 connection to pod-{other} went on through node-{s}: \
         marked_for_peer +{marked} on node-{s}, from_peer +{from_peer} on node-{other}"
    );
    assert!(
        marked > 0 && from_peer > 0,
        "the request after the failover did not go node-{s} -> node-{other} marked \
         (marked_for_peer +{marked}, from_peer +{from_peer})"
    );
    lab.rt.block_on(quic.close(Duration::ZERO));

    // A graceful stop (SIGTERM, as in a rolling update) deletes the Lease: the last node
    // takes over without waiting for the lease to expire.
    let pid = lab.node(s).daemon.as_ref().unwrap().id();
    let stopped_at = Instant::now();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let handover = wait_for("the last node to take over", CONVERGE, || {
        if holders(&lab, 3, vip) == [other] {
            Ok(stopped_at.elapsed())
        } else {
            Err(format!("{:?}", holders(&lab, 3, vip)))
        }
    });
    println!(
        "graceful handover: node-{other} announces {vip} {} ms after node-{s}'s daemon got SIGTERM",
        handover.as_millis()
    );
    assert!(
        handover < Duration::from_millis(1200),
        "the handover waited for the lease to expire ({handover:?}): was the Lease deleted?\n{}",
        lab.logs()
    );
    let status = lab.node_mut(s).daemon.as_mut().unwrap().wait().unwrap();
    assert!(
        status.success(),
        "lb run exited with {status}\n{}",
        lab.log(s)
    );
    assert!(
        lab.log(s).contains("deleted: the other nodes take over"),
        "{}",
        lab.log(s)
    );
    assert_rbac_is_least_privilege(&lab);
    // Through both daemons' deaths, each node's probes of its own pod were answered.
    lab.assert_kubelet_probes_succeeded();
}

/// (API group, resource[/subresource], verb, namespace) of every request the daemons made.
fn used_permissions(lab: &Lab) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for r in lab.api.requests() {
        let parts: Vec<&str> = r.path.trim_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => continue, // discovery, /version
        };
        let (ns, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (*ns, rest),
            rest => ("", rest),
        };
        let (resource, name) = match rest {
            [res] => (res.to_string(), None),
            [res, name] => (res.to_string(), Some(*name)),
            [res, name, sub] => (format!("{res}/{sub}"), Some(*name)),
            _ => continue,
        };
        let watch = r
            .query
            .split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1");
        let verb = match (r.method.as_str(), name) {
            ("GET", _) if watch => "watch",
            ("GET", Some(_)) => "get",
            ("GET", None) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", _) => "delete",
            _ => continue,
        };
        out.insert((group.to_owned(), resource, verb.to_owned(), ns.to_owned()));
    }
    out
}

/// deploy/manifests/10-rbac.yaml, with the QUIC-LB Role of the namespace of the QUIC-LB
/// Services (deploy/examples/h3-whoami.yaml's, in "default"), grants everything the daemons
/// did, and nothing they did not, but for the listed exceptions (with the reason). The
/// example's Role names its own Secret (resourceNames); this test's Secret has another name,
/// so names are not compared here (deploy_manifests checks the example's).
fn assert_rbac_is_least_privilege(lab: &Lab) {
    let text = [
        "deploy/manifests/10-rbac.yaml",
        "deploy/examples/h3-whoami.yaml",
    ]
    .map(|f| std::fs::read_to_string(topology::workspace_path(f)).unwrap())
    .join("\n---\n");
    // (group, resource, verb) -> the namespace it is limited to ("" = cluster-wide).
    let mut granted: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let scope = match v["kind"].as_str() {
            Some("ClusterRole") => String::new(),
            Some("Role") => v["metadata"]["namespace"].as_str().unwrap().to_owned(),
            _ => continue,
        };
        for rule in v["rules"].as_array().unwrap() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for res in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        granted.insert(
                            (
                                g.as_str().unwrap().into(),
                                res.as_str().unwrap().into(),
                                verb.as_str().unwrap().into(),
                            ),
                            scope.clone(),
                        );
                    }
                }
            }
        }
    }
    let used = used_permissions(lab);
    for (g, res, verb, ns) in &used {
        match granted.get(&(g.clone(), res.clone(), verb.clone())) {
            Some(scope) if scope.is_empty() || scope == ns => {}
            other => panic!(
                "the daemons did {verb} {g}/{res} in {ns:?}, which deploy/manifests/10-rbac.yaml \
                 and the example's QUIC-LB Role do not grant (grant: {other:?})"
            ),
        }
    }
    let used_keys: BTreeSet<(String, String, String)> = used
        .iter()
        .map(|(g, r, v, _)| (g.clone(), r.clone(), v.clone()))
        .collect();
    // Granted but maybe never seen here: a lease's first server-side apply is a create on a
    // real API server (the fake cannot tell), and only an event repeated becomes a patch of
    // a series (whether one repeats depends on the test's timing).
    let may_be_unused: BTreeSet<(String, String, String)> = [
        ("coordination.k8s.io", "leases", "create"),
        ("events.k8s.io", "events", "patch"),
    ]
    .iter()
    .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
    .collect();
    let unused: BTreeSet<(String, String, String)> = granted
        .keys()
        .filter(|k| !used_keys.contains(*k))
        .cloned()
        .collect();
    assert!(
        unused.is_subset(&may_be_unused),
        "granted but not used by the daemons: {:?}",
        unused.difference(&may_be_unused).collect::<Vec<_>>()
    );
}

/// What the daemons watch, as the fake API server counts requests (`plural[.group]`).
const WATCHED: [&str; 8] = [
    "services",
    "endpointslices.discovery.k8s.io",
    "nodes",
    "ippools.lb.dev",
    "leases.coordination.k8s.io",
    "bgppeers.lb.dev",
    "bgpadvertisements.lb.dev",
    "bfdprofiles.lb.dev",
];

#[test]
fn e2e_kube_watch_cuts_410_and_api_outage() {
    let _ = lb_lab::netns::remove_stale(PREFIX);
    let lab = Lab::start(2, &[1, 2]);
    lab.api
        .create(&slice("whoami", &[(1, Cond::Ready), (2, Cond::Ready)]))
        .unwrap();
    lab.api.create(&whoami_service("whoami", &[])).unwrap();
    let vip = lab.wait_ip("whoami");
    for i in 1..=2 {
        wait_for(&format!("node-{i} to program"), CONVERGE, || {
            let p = lab.programmed(i)?;
            if p.len() == 2 {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            }
        });
    }
    let h1 = lab.http1(vip, 20).unwrap();
    assert_eq!(succeeded(&h1), 20, "{h1}");
    let steady: Vec<u64> = (1..=2).map(|i| lab.map_changes(i)).collect();

    // Cut every watch: the daemons re-watch from their resourceVersion; nothing changes.
    let watches = |lab: &Lab| WATCHED.iter().map(|r| lab.api.watch_count(r)).sum::<u64>();
    let w0 = watches(&lab);
    lab.api.cut_watches();
    wait_for("the daemons to re-watch", CONVERGE, || {
        // Every watched resource, on both daemons.
        if watches(&lab) >= w0 + 2 * WATCHED.len() as u64 {
            Ok(())
        } else {
            Err(format!("{} watches", watches(&lab)))
        }
    });
    // Forget the history and cut again: every watch gets 410 in-stream and re-lists.
    let l0 = lab.api.list_count("services");
    lab.api.compact();
    lab.api.cut_watches();
    wait_for(
        "the daemons to re-list Services after 410",
        CONVERGE,
        || {
            let l = lab.api.list_count("services");
            if l >= l0 + 2 {
                Ok(())
            } else {
                Err(format!("{l} lists (before: {l0})"))
            }
        },
    );
    let h1 = lab.http1(vip, 20).unwrap();
    assert_eq!(succeeded(&h1), 20, "{h1}");
    let after: Vec<u64> = (1..=2).map(|i| lab.map_changes(i)).collect();
    assert_eq!(
        after,
        steady,
        "a relist of an unchanged cluster wrote the maps\n{}",
        lab.logs()
    );

    // 500s on the next requests: retried, and a new Service still converges.
    lab.api.fail_next(6, 500);
    lab.api.create(&whoami_service("second", &[])).unwrap();
    let vip2 = lab.wait_ip("second");
    assert_ne!(vip2, vip);

    // The API server goes away: forwarding and announcements carry on unchanged.
    for v in [vip, vip2] {
        wait_for(
            &format!("one announcer for {v}"),
            CONVERGE,
            || match holders(&lab, 2, v).len() {
                1 => Ok(()),
                n => Err(format!("{n} announcers")),
            },
        );
    }
    let announced: Vec<Vec<String>> = (1..=2).map(|i| lab.announced(i).unwrap()).collect();
    for i in 1..=2 {
        lab.wait_ready(i, true);
    }
    lab.api.set_down(true);
    let down_at = Instant::now();
    wait_for("both daemons to notice the outage", CONVERGE, || {
        let c: Vec<Value> = (1..=2)
            .map(|i| lab.status(i).unwrap()["kubernetes"]["connected"].clone())
            .collect();
        if c.iter().all(|v| v == false) {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    });
    // Not ready (the API connection is part of readiness), but alive: the kubelet must not
    // restart a data plane for an API outage.
    for i in 1..=2 {
        let why = lab.wait_ready(i, false);
        assert!(
            why.contains("not ready: Kubernetes: this node's Lease lb-system/lb-node-"),
            "node-{i}: {why}"
        );
        assert_eq!(
            lab.daemon_probe(i, "/healthz"),
            Ok((200, "ok\n".to_owned())),
            "node-{i}"
        );
    }
    // 10 s, a control-plane upgrade's stall: nobody is declared dead while nobody can renew
    // (gossip still sees everyone), no VIP moves at any moment, traffic flows throughout.
    while down_at.elapsed() < API_OUTAGE {
        assert!(
            quick_get(&lab.client, vip) || quick_get(&lab.client, vip),
            "traffic stopped with the API server down"
        );
        let now: Vec<Vec<String>> = (1..=2).map(|i| lab.announced(i).unwrap()).collect();
        assert_eq!(
            now,
            announced,
            "a VIP moved {} ms into the API outage\n{}",
            down_at.elapsed().as_millis(),
            lab.logs()
        );
    }
    println!(
        "API outage: {} ms down, no VIP moved, traffic flowed throughout",
        down_at.elapsed().as_millis()
    );
    // Meanwhile the cluster changes (pod-2 stops serving); the daemons converge on return.
    lab.api
        .replace(&slice("whoami", &[(1, Cond::Ready), (2, Cond::NotServing)]))
        .unwrap();
    lab.api.set_down(false);
    wait_for("the daemons to converge after the outage", CONVERGE, || {
        let h1 = lab.http1(vip, 10)?;
        let pb = per_backend(&h1);
        if succeeded(&h1) == 10 && pb.keys().collect::<Vec<_>>() == ["pod-1"] {
            Ok(())
        } else {
            Err(format!("{h1}"))
        }
    });
    for i in 1..=2 {
        lab.wait_ready(i, true);
    }
    lab.assert_kubelet_probes_succeeded();
}

fn condition(svc: &Service, type_: &str) -> Option<(String, String, String)> {
    svc.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn wait_condition(lab: &Lab, name: &str, type_: &str, status: &str, reason: &str) -> String {
    wait_for(
        &format!("{name}: {type_}={status} ({reason})"),
        CONVERGE,
        || {
            let svc = lab.service(name).ok_or("no Service")?;
            match condition(&svc, type_) {
                Some((s, r, m)) if s == status && r == reason => Ok(m),
                other => Err(format!("{other:?}")),
            }
        },
    )
}

/// Filter node `i`'s traffic with nftables `chains` (in a table of the test's own, gone
/// with the namespace if the test fails); [`heal`] removes it.
fn cut(lab: &Lab, i: u8, chains: &str) {
    let file = lab.dir.join(format!("cut-{i}.nft"));
    std::fs::write(&file, format!("table inet lbtestcut {{\n{chains}\n}}\n")).unwrap();
    lab.node(i)
        .ns
        .exec("nft", &["-f", file.to_str().unwrap()])
        .unwrap();
}

fn heal(lab: &Lab, i: u8) {
    lab.node(i)
        .ns
        .exec("nft", &["delete", "table", "inet", "lbtestcut"])
        .unwrap();
}

/// A three-node lab with a pod on every node and the whoami Service; returns the lab, the
/// VIP and the node that announces it (alone).
fn three_nodes_one_announcer() -> (Lab, Ipv4Addr, u8) {
    let lab = Lab::start(3, &[1, 2, 3]);
    lab.api
        .create(&slice(
            "whoami",
            &[(1, Cond::Ready), (2, Cond::Ready), (3, Cond::Ready)],
        ))
        .unwrap();
    lab.api.create(&whoami_service("whoami", &[])).unwrap();
    let vip = lab.wait_ip("whoami");
    let all = ["node-1", "node-2", "node-3"];
    let first = election::vip_winner(IpAddr::V4(vip), all).unwrap();
    let w: u8 = first.trim_start_matches("node-").parse().unwrap();
    wait_for(
        "the first-ranked node to announce alone",
        CONVERGE,
        || match holders(&lab, 3, vip) {
            h if h == [w] => Ok(()),
            h => Err(format!("{h:?}")),
        },
    );
    wait_for("traffic through the VIP", CONVERGE, || {
        quick_get(&lab.client, vip)
            .then_some(())
            .ok_or_else(|| "no answer".to_owned())
    });
    // Steady state: every node's gossip has every other node alive.
    wait_for("gossip to see every node alive", CONVERGE, || {
        for i in 1..=3 {
            for j in (1..=3).filter(|j| *j != i) {
                let m = member(&lab, i, j);
                if m["gossip"] != "alive" {
                    return Err(format!("node-{i} about node-{j}: {m}"));
                }
            }
        }
        Ok(())
    });
    (lab, vip, w)
}

/// What node `i` says of `node` under /status `kubernetes.members`.
fn member(lab: &Lab, i: u8, node: u8) -> Value {
    lab.status(i).map_or(Value::Null, |s| {
        s["kubernetes"]["members"][node_name(node)].clone()
    })
}

/// Partition (a): a node that reaches its peers but not the API server keeps serving. Its
/// Lease is not renewed, but a lease (40 s) outlasts the cut; gossip tells its peers it
/// is alive, so no VIP moves and the traffic through it flows throughout.
#[test]
fn e2e_kube_partition_node_cut_from_the_api_keeps_its_vips() {
    let _ = lb_lab::netns::remove_stale(PREFIX);
    let (lab, vip, w) = three_nodes_one_announcer();
    // Connections to the API server are refused from node w (its daemon's kube client
    // gets resets at once, as from a dead control plane).
    cut(
        &lab,
        w,
        &format!(
            "chain out {{ type filter hook output priority 0; tcp dport {API_PORT} reject with tcp reset; }}"
        ),
    );
    let cut_at = Instant::now();
    let sent = |i: u8| {
        lab.status(i).unwrap()["kubernetes"]["gossip"]["sent"]
            .as_u64()
            .unwrap()
    };
    let sent0: Vec<u64> = (1..=3).map(sent).collect();
    wait_for("node w to notice it lost the API server", CONVERGE, || {
        let s = lab.status(w)?;
        match s["kubernetes"]["connected"].as_bool() {
            Some(false) => Ok(()),
            c => Err(format!("connected: {c:?}")),
        }
    });
    while cut_at.elapsed() < API_OUTAGE {
        assert!(
            quick_get(&lab.client, vip) || quick_get(&lab.client, vip),
            "traffic stopped while node-{w} was cut from the API server\n{}",
            lab.logs()
        );
        assert_eq!(
            holders(&lab, 3, vip),
            [w],
            "the VIP moved {} ms into node-{w}'s API cut\n{}",
            cut_at.elapsed().as_millis(),
            lab.logs()
        );
    }
    for i in (1..=3).filter(|i| *i != w) {
        let m = member(&lab, i, w);
        assert_eq!(m["alive"], true, "node-{i} about node-{w}: {m}");
        assert_eq!(m["gossip"], "alive", "node-{i} about node-{w}: {m}");
    }
    let secs = cut_at.elapsed().as_secs_f64();
    let rates: Vec<String> = (1..=3)
        .map(|i| format!("{:.1}", (sent(i) - sent0[usize::from(i - 1)]) as f64 / secs))
        .collect();
    println!(
        "partition (a): node-{w} cut from the API server for {} ms kept {vip}; its peers saw \
         it alive through gossip; gossip datagrams sent per second by node-1..3: {rates:?}",
        cut_at.elapsed().as_millis()
    );
    // The same on /metrics: every node's gossip counts the two others alive and has
    // exchanged datagrams, none rejected.
    for i in 1..=3 {
        let m = http_get_in(&lab.node(i).ns, METRICS.parse().unwrap(), "/metrics").unwrap();
        let value = |series: &str| {
            m.lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("node-{i}: no {series} in /metrics:\n{m}"))
        };
        assert_eq!(value("lb_gossip_members{state=\"alive\"}"), 2.0, "node-{i}");
        assert_eq!(value("lb_gossip_members{state=\"down\"}"), 0.0, "node-{i}");
        assert!(
            value("lb_gossip_messages_total{result=\"sent\"}") > 0.0,
            "node-{i}"
        );
        assert!(
            value("lb_gossip_messages_total{result=\"received\"}") > 0.0,
            "node-{i}"
        );
        assert_eq!(
            value("lb_gossip_messages_total{result=\"rejected\"}"),
            0.0,
            "node-{i}"
        );
    }
    heal(&lab, w);
    wait_for(
        "node w to reconnect",
        CONVERGE,
        || match lab.status(w)?["kubernetes"]["connected"].as_bool() {
            Some(true) => Ok(()),
            c => Err(format!("connected: {c:?}")),
        },
    );
    assert_eq!(holders(&lab, 3, vip), [w]);
    lab.assert_kubelet_probes_succeeded();
}

/// Partition (b): a node cut off from its peers' gossip but not from the API server. Its
/// peers declare it down by gossip and the next-ranked one takes its VIP; it finds itself
/// in a minority (gossip reaches none of the two other members) and steps down rather
/// than take over every VIP, so one node announces. When the cut heals it rejoins and gets
/// its VIP back.
#[test]
fn e2e_kube_partition_node_cut_from_its_peers_steps_down() {
    let _ = lb_lab::netns::remove_stale(PREFIX);
    let (lab, vip, w) = three_nodes_one_announcer();
    let rest: Vec<String> = (1..=3).filter(|i| *i != w).map(node_name).collect();
    let s = election::vip_winner(IpAddr::V4(vip), rest.iter().map(String::as_str)).unwrap();
    let s: u8 = s.trim_start_matches("node-").parse().unwrap();
    cut(
        &lab,
        w,
        &format!(
            "chain in {{ type filter hook input priority 0; udp dport {GOSSIP_PORT} drop; }}\n\
             chain out {{ type filter hook output priority 0; udp dport {GOSSIP_PORT} drop; }}"
        ),
    );
    let cut_at = Instant::now();
    // When node s started announcing, and when node w stopped (each first seen).
    let (mut taken, mut left) = (None, None);
    let moved = wait_for("the next node to take the VIP over alone", CONVERGE, || {
        let h = holders(&lab, 3, vip);
        if h.contains(&s) {
            taken.get_or_insert(cut_at.elapsed());
        }
        if !h.contains(&w) {
            left.get_or_insert(cut_at.elapsed());
        }
        if h == [s] {
            Ok(cut_at.elapsed())
        } else {
            let k = lab.status(w).map(|st| st["kubernetes"].clone());
            Err(format!("holders {h:?}; node-{w}'s view: {k:?}"))
        }
    });
    let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis());
    println!(
        "partition (b): node-{w} cut from its peers' gossip; node-{s} announces {vip} after \
         {} ms, node-{w} stopped after {} ms; one announcer after {} ms",
        ms(taken),
        ms(left),
        moved.as_millis()
    );
    let st = lab.status(w).unwrap();
    assert_eq!(st["kubernetes"]["isolated"], true, "{st}");
    assert_eq!(st["kubernetes"]["connected"], true, "{st}");
    for i in (1..=3).filter(|i| *i != w) {
        let m = member(&lab, i, w);
        assert_eq!(m["alive"], false, "node-{i} about node-{w}: {m}");
        assert_eq!(m["gossip"], "down", "node-{i} about node-{w}: {m}");
    }
    wait_for("traffic through the new announcer", CONVERGE, || {
        quick_get(&lab.client, vip)
            .then_some(())
            .ok_or_else(|| "no answer".to_owned())
    });
    // Steady: one announcer, the majority's choice.
    let steady = Instant::now();
    while steady.elapsed() < Duration::from_secs(2) {
        assert_eq!(holders(&lab, 3, vip), [s], "{}", lab.logs());
    }
    heal(&lab, w);
    let healed_at = Instant::now();
    let back = wait_for("node w to rejoin and announce again", CONVERGE, || {
        let st = lab.status(w)?;
        match (holders(&lab, 3, vip), &st["kubernetes"]["isolated"]) {
            (h, Value::Bool(false)) if h == [w] => Ok(healed_at.elapsed()),
            (h, i) => Err(format!("holders {h:?}, isolated {i}")),
        }
    });
    println!(
        "partition (b) healed: node-{w} rejoined and announces {vip} again after {} ms",
        back.as_millis()
    );
    lab.assert_kubelet_probes_succeeded();
}

#[test]
fn e2e_kube_pool_exhaustion_shared_ips_and_events() {
    let _ = lb_lab::netns::remove_stale(PREFIX);
    // The Services here have no endpoints; the pod is there for kubelet to probe while
    // VIPs come and go on its node.
    let lab = Lab::start(1, &[1]);
    // Dual-stack: an IPv6 pool beside the IPv4 one, a RequireDualStack Service gets one
    // address of each family and both are programmed.
    create_pool(&lab.api, "lan-v6", "fd00:18::100/124");
    let mut ds = whoami_service("ds", &[]);
    let spec = ds.spec.as_mut().unwrap();
    spec.ip_family_policy = Some("RequireDualStack".into());
    spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
    lab.api.create(&ds).unwrap();
    let ips = wait_for("ds to get two addresses", CONVERGE, || {
        let svc = lab.service("ds").ok_or("no Service")?;
        let ips = lb_userspace::kube::status::ingress_ips(&svc);
        if ips.len() == 2 {
            Ok(ips)
        } else {
            Err(format!("{ips:?}"))
        }
    });
    assert_eq!(
        ips,
        [
            "198.18.0.100".parse::<IpAddr>().unwrap(),
            "fd00:18::100".parse().unwrap()
        ]
    );
    wait_for("both families programmed", CONVERGE, || {
        let p = lab.programmed(1)?;
        let want = [
            "198.18.0.100:443/tcp",
            "198.18.0.100:443/udp",
            "fd00:18::100:443/tcp",
            "fd00:18::100:443/udp",
        ];
        if p == want {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    });
    lab.api.delete::<Service>(Some("default"), "ds").unwrap();
    wait_for("ds removed", CONVERGE, || {
        let p = lab.programmed(1)?;
        if p.is_empty() {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    });

    // A two-address pool.
    let pool = lab
        .api
        .get_json("lb.dev/v1alpha1", "IPPool", None, "lan")
        .unwrap();
    let mut pool: IPPool = serde_json::from_value(pool).unwrap();
    pool.spec.addresses = vec!["198.18.0.100/31".into()];
    lab.api
        .replace_json(serde_json::to_value(&pool).unwrap())
        .unwrap();
    lab.api.create(&whoami_service("a", &[])).unwrap();
    assert_eq!(lab.wait_ip("a"), Ipv4Addr::new(198, 18, 0, 100));
    lab.api.create(&whoami_service("b", &[])).unwrap();
    assert_eq!(lab.wait_ip("b"), Ipv4Addr::new(198, 18, 0, 101));
    lab.api.create(&whoami_service("c", &[])).unwrap();
    let msg = wait_condition(
        &lab,
        "c",
        "lb.dev/AddressAllocated",
        "False",
        "PoolExhausted",
    );
    assert!(msg.contains("lan"), "the message names the pool: {msg}");
    assert!(lb_userspace::kube::status::ingress_ips(&lab.service("c").unwrap()).is_empty());
    // ... and an Event says so.
    wait_for("a PoolExhausted Event on c", CONVERGE, || {
        let evs = lab.api.list::<k8s_openapi::api::events::v1::Event>();
        evs.iter()
            .find(|e| {
                e.reason.as_deref() == Some("PoolExhausted")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("c")
                    && e.type_.as_deref() == Some("Warning")
            })
            .map(|_| ())
            .ok_or(format!("{} events", evs.len()))
    });
    // Freeing an address lets c have it.
    lab.api.delete::<Service>(Some("default"), "a").unwrap();
    assert_eq!(lab.wait_ip("c"), Ipv4Addr::new(198, 18, 0, 100));
    wait_condition(&lab, "c", "lb.dev/AddressAllocated", "True", "Allocated");

    // Requesting an address another Service holds, without a sharing key: refused.
    lab.api
        .create(&whoami_service(
            "d",
            &[("metallb.io/loadBalancerIPs", "198.18.0.101")],
        ))
        .unwrap();
    let msg = wait_condition(
        &lab,
        "d",
        "lb.dev/AddressAllocated",
        "False",
        "AddressInUse",
    );
    assert!(msg.contains("198.18.0.101"), "{msg}");
    // Sharing: same key, same ports → port conflict; same key, other port → shared.
    lab.api.delete::<Service>(Some("default"), "d").unwrap();
    lab.api.delete::<Service>(Some("default"), "b").unwrap();
    let shared = [
        ("metallb.io/allow-shared-ip", "web"),
        ("metallb.io/loadBalancerIPs", "198.18.0.101"),
    ];
    lab.api.create(&whoami_service("e", &shared)).unwrap();
    assert_eq!(lab.wait_ip("e"), Ipv4Addr::new(198, 18, 0, 101));
    lab.api.create(&whoami_service("f", &shared)).unwrap();
    let msg = wait_condition(
        &lab,
        "f",
        "lb.dev/AddressAllocated",
        "False",
        "PortConflict",
    );
    assert!(msg.contains("443"), "{msg}");
    let mut g = whoami_service("g", &shared);
    for p in g.spec.as_mut().unwrap().ports.as_mut().unwrap() {
        p.port = 8080;
    }
    lab.api.create(&g).unwrap();
    assert_eq!(lab.wait_ip("g"), Ipv4Addr::new(198, 18, 0, 101));
    // Both share one address on the node: 443 and 8080, TCP and UDP.
    wait_for("e and g programmed on one address", CONVERGE, || {
        let p = lab.programmed(1)?;
        let want: Vec<String> = [
            "198.18.0.100:443/tcp",
            "198.18.0.100:443/udp",
            "198.18.0.101:443/tcp",
            "198.18.0.101:443/udp",
            "198.18.0.101:8080/tcp",
            "198.18.0.101:8080/udp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if p == want {
            Ok(())
        } else {
            Err(format!("{p:?}"))
        }
    });

    // An unsupported protocol is reported, and the rest of the Service still works.
    let mut h = whoami_service("h", &shared);
    for p in h.spec.as_mut().unwrap().ports.as_mut().unwrap() {
        p.port = 9000;
    }
    h.spec.as_mut().unwrap().ports.as_mut().unwrap()[1].protocol = Some("SCTP".into());
    lab.api.create(&h).unwrap();
    wait_condition(
        &lab,
        "h",
        "lb.dev/ConfigValid",
        "False",
        "UnsupportedProtocol",
    );
    lab.assert_kubelet_probes_succeeded();
}

/// Node `i`'s counter `field` (`packets`, `bytes`, `routed_cid`, `dropped`) of the VIP
/// (address, 443, protocol); 0 while the node has not programmed it.
fn vip_counter(lab: &Lab, i: u8, vip: Ipv4Addr, proto: &str, field: &str) -> u64 {
    let s = lab.status(i).unwrap();
    s["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["addr"] == vip.to_string() && v["port"] == 443 && v["proto"] == proto)
        .map(|v| {
            v["counters"][field]
                .as_u64()
                .unwrap_or_else(|| panic!("no counters.{field} in node-{i}'s VIP {v}"))
        })
        .unwrap_or(0)
}

/// Packets node `i`'s XDP program counted for `reason`, node-wide (the reasons are not
/// kept per VIP).
fn node_counter(lab: &Lab, i: u8, reason: &str) -> u64 {
    let s = lab.status(i).unwrap();
    s["counters"][reason]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no counters.{reason} in node-{i}'s /status: {s}"))
}

/// Packets node `i`'s reverse NAT counted for `reason` (`rewritten`, `pass_not_steered`, ...).
fn rnat_counter(lab: &Lab, i: u8, reason: &str) -> u64 {
    let s = lab.status(i).unwrap();
    s["rnat_counters"][reason]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rnat_counters.{reason} in node-{i}'s /status: {s}"))
}

fn holders(lab: &Lab, nodes: u8, vip: Ipv4Addr) -> Vec<u8> {
    (1..=nodes)
        .filter(|i| {
            lab.announced(*i)
                .unwrap_or_default()
                .contains(&vip.to_string())
        })
        .collect()
}

#[test]
fn e2e_kube_local_policy_source_ranges_and_affinity() {
    let _ = lb_lab::netns::remove_stale(PREFIX);
    let lab = Lab::start(2, &[1, 2]);

    // externalTrafficPolicy: Local with its only ready pod on one node: that node announces,
    // whatever the ranking says; when the pod moves, so does the announcement.
    let vip = POOL_FIRST;
    let ranked_first = election::vip_winner(IpAddr::V4(vip), ["node-1", "node-2"]).unwrap();
    let (host, other): (u8, u8) = if ranked_first == "node-1" {
        (2, 1)
    } else {
        (1, 2)
    };
    let mut local = whoami_service("local", &[]);
    local.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
    lab.api
        .create(&slice(
            "local",
            &[(host, Cond::Ready), (other, Cond::NotServing)],
        ))
        .unwrap();
    lab.api.create(&local).unwrap();
    assert_eq!(lab.wait_ip("local"), vip);
    wait_for(
        "only the node with the local endpoint to announce",
        CONVERGE,
        || {
            let h = holders(&lab, 2, vip);
            if h == [host] {
                Ok(())
            } else {
                Err(format!("{h:?}"))
            }
        },
    );
    let h1 = lab.http1(vip, 10).unwrap();
    assert_eq!(succeeded(&h1), 10, "{h1}");
    assert_eq!(
        per_backend(&h1).keys().collect::<Vec<_>>(),
        [&format!("pod-{host}")]
    );
    lab.api
        .replace(&slice(
            "local",
            &[(host, Cond::NotServing), (other, Cond::Ready)],
        ))
        .unwrap();
    wait_for("the announcement to follow the pod", CONVERGE, || {
        let h = holders(&lab, 2, vip);
        if h == [other] {
            Ok(())
        } else {
            Err(format!("{h:?}"))
        }
    });
    wait_for("traffic to reach the moved pod", CONVERGE, || {
        let h1 = lab.http1(vip, 5)?;
        let pb = per_backend(&h1);
        if succeeded(&h1) == 5 && pb.keys().collect::<Vec<_>>() == [&format!("pod-{other}")] {
            Ok(())
        } else {
            Err(format!("{h1}"))
        }
    });
    lab.api.delete::<Service>(Some("default"), "local").unwrap();

    // loadBalancerSourceRanges that leave the client out: dropped in XDP and counted.
    let mut restricted = whoami_service("restricted", &[]);
    restricted
        .spec
        .as_mut()
        .unwrap()
        .load_balancer_source_ranges = Some(vec!["198.18.1.0/24".into()]);
    lab.api
        .create(&slice("restricted", &[(1, Cond::Ready), (2, Cond::Ready)]))
        .unwrap();
    lab.api.create(&restricted).unwrap();
    let rvip = lab.wait_ip("restricted");
    let announcer = wait_for(
        "an announcer for the restricted VIP",
        CONVERGE,
        || match holders(&lab, 2, rvip).as_slice() {
            [one] => Ok(*one),
            h => Err(format!("{h:?}")),
        },
    );
    assert!(
        !quick_get(&lab.client, rvip),
        "a client outside the ranges got through"
    );
    let dropped = vip_counter(&lab, announcer, rvip, "tcp", "dropped");
    let by_range = node_counter(&lab, announcer, "drop_source_range");
    assert!(
        dropped >= 1 && by_range >= 1,
        "no drop_source_range on node-{announcer} (the VIP's dropped: {dropped}, node-wide \
         drop_source_range: {by_range})"
    );
    // Widening the ranges to the client's /24 opens it.
    let mut svc = lab.service("restricted").unwrap();
    svc.spec.as_mut().unwrap().load_balancer_source_ranges = Some(vec!["198.18.0.0/24".into()]);
    lab.api.replace(&svc).unwrap();
    wait_for("the widened range to let the client in", CONVERGE, || {
        if quick_get(&lab.client, rvip) {
            Ok(())
        } else {
            Err("dropped".into())
        }
    });

    // Without affinity 30 connections spread over both pods.
    let h1 = lab.http1(rvip, 30).unwrap();
    assert_eq!(succeeded(&h1), 30, "{h1}");
    assert_eq!(per_backend(&h1).len(), 2, "{h1}");

    // A second Service on the same pods and port (a private address in front of the same
    // ingress, say): valid, and both addresses answer at once, each client hearing from the
    // address it used (a TCP reply from the wrong address would reset the connection).
    let mut sticky = whoami_service("sticky", &[]);
    sticky.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
    lab.api
        .create(&slice("sticky", &[(1, Cond::Ready), (2, Cond::Ready)]))
        .unwrap();
    lab.api.create(&sticky).unwrap();
    let svip = lab.wait_ip("sticky");
    assert_ne!(svip, rvip);
    wait_condition(&lab, "sticky", "lb.dev/ConfigValid", "True", "Valid");
    wait_for("the sticky VIP to answer", CONVERGE, || {
        if quick_get(&lab.client, svip) {
            Ok(())
        } else {
            Err("no answer".into())
        }
    });
    for round in 0..5 {
        assert!(
            quick_get(&lab.client, rvip),
            "round {round}: {rvip} stopped answering"
        );
        assert!(
            quick_get(&lab.client, svip),
            "round {round}: {svip} did not answer"
        );
    }
    lab.api
        .delete::<Service>(Some("default"), "restricted")
        .unwrap();

    // sessionAffinity: ClientIP: every new connection of this client reaches one pod.
    let h1 = lab.http1(svip, 30).unwrap();
    assert_eq!(succeeded(&h1), 30, "{h1}");
    assert_eq!(
        per_backend(&h1).len(),
        1,
        "ClientIP affinity spread one client: {h1}"
    );
    lab.assert_kubelet_probes_succeeded();
}

/// lb's start-up must leave the node's traffic to its pods alone: a DaemonSet rolls lb out
/// onto nodes whose pods kubelet is probing. It did not: `lb run` added a `clsact` qdisc to
/// each backend interface without one, although from kernel 6.6 on the reverse NAT attaches
/// through TCX and needs none, and grafting a qdisc deactivates the device for a moment:
/// what the node sent to its pod meanwhile was dropped, and a probe whose SYN it was waited
/// 1 s for the retransmission and timed out (with node-to-pod connections every 2 ms through
/// three daemons' start, one stalled for ~1 s in 4 of 6 lab starts). Here the probes run
/// every 5 ms through the daemons' start, and the cause is checked directly: no `clsact` on
/// the pods' veths after lb started (on kernels from 6.6).
#[test]
fn e2e_kube_daemon_start_drops_nothing_on_pod_veths() {
    let _ = lb_lab::netns::remove_stale(PREFIX);
    let mut lab = Lab::without_daemons(3, &[1, 2, 3]);
    for i in 1..=3 {
        lab.start_probing(i, Duration::from_millis(5));
    }
    for i in 1..=3 {
        lab.start_daemon(i);
    }
    lab.wait_daemons_attached();
    // What aya decides by when it attaches a TC program.
    let tcx = aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    let grafted: Vec<(u8, String)> = (1..=3)
        .map(|i| {
            let q = lab
                .node(i)
                .ns
                .exec("tc", &["qdisc", "show", "dev", "pod0"])
                .unwrap_or_else(|e| format!("{e:#}"));
            (i, q)
        })
        .filter(|(_, q)| tcx && q.contains("clsact"))
        .collect();
    lab.assert_kubelet_probes_succeeded();
    assert!(
        grafted.is_empty(),
        "lb added a clsact qdisc to pod veths although the reverse NAT attaches through TCX: \
         {grafted:?}"
    );
}

#[test]
fn kube_cli_errors_name_the_bad_input() {
    let dir = std::env::temp_dir().join(format!("lb-kube-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(support::lb());
        cmd.args(args)
            .env_remove("KUBECONFIG")
            .env_remove("NODE_NAME");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // --kube needs the node's name.
    let (code, err) = run(&["run", "--kube", "--config", "x.toml"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--node-name"), "{err}");
    // A KUBECONFIG in the environment does not get in the way of static mode.
    let missing = dir.join("missing.toml");
    let (code, err) = run(
        &["run", "--config", missing.to_str().unwrap()],
        &[("KUBECONFIG", "/nonexistent")],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("missing.toml: cannot read the config file"),
        "{err}"
    );
    // [[vips]] with --kube: refused before anything is loaded, saying what to keep.
    let with_vips = dir.join("vips.toml");
    std::fs::write(
        &with_vips,
        "interfaces = [\"lo\"]\n[[vips]]\naddress = \"198.18.0.100\"\nports = [443]\nprotocols = [\"tcp\"]\n\
         [[vips.backends]]\naddress = \"198.19.0.10\"\nport = 8443\n",
    )
    .unwrap();
    let run_kube = |config: &std::path::Path| {
        run(
            &[
                "run",
                "--kube",
                "--node-name",
                "n1",
                "--config",
                config.to_str().unwrap(),
            ],
            &[],
        )
    };
    let (code, err) = run_kube(&with_vips);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("[[vips]] is not allowed with --kube"), "{err}");
    // A bad [kubernetes] table is reported like any config error.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "interfaces = [\"lo\"]\n[kubernetes]\nlease_renew_ms = 10\n",
    )
    .unwrap();
    let (code, err) = run_kube(&bad);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("bad.toml:3:18: kubernetes.lease_renew_ms: 10 is out of range"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// BGP in Kubernetes mode against real daemons: a BGPPeer and a BGPAdvertisement of the
/// Service's pool become each node's BIRD configuration (the VIP's /32 with its community,
/// the session), the VIP leaves ARP/NDP, the Service says `lb.dev/BGPAdvertised`, and a
/// malformed BGPPeer is a Warning Event naming its field while the good peer keeps running.
/// (No BGP router here: the session itself is tests/bgp_speaker's and the BGP lab's.)
#[test]
fn e2e_kube_bgp_peer_and_advertisement_reach_the_speaker() {
    use k8s_openapi::api::events::v1::Event;
    use lb_userspace::kube::crd::{BGPAdvertisement, BGPAdvertisementSpec, BGPPeer, BGPPeerSpec};

    let _ = lb_lab::netns::remove_stale(PREFIX);
    let lab = Lab::start(2, &[1, 2]);
    lab.api
        .create(&slice("whoami", &[(1, Cond::Ready), (2, Cond::Ready)]))
        .unwrap();
    lab.api.create(&whoami_service("whoami", &[])).unwrap();
    let vip = lab.wait_ip("whoami");
    // Before any BGP object: announced by ARP from one node.
    wait_for("the VIP to be announced by ARP", CONVERGE, || {
        let n: usize = (1..=2)
            .map(|i| lab.announced(i).map(|a| a.len()))
            .sum::<Result<usize, String>>()?;
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} announcers"))
        }
    });

    let peer = |name: &str, asn: u32| {
        let mut p = BGPPeer::new(
            name,
            BGPPeerSpec {
                my_asn: 64512,
                peer_asn: asn,
                // The client's address: nothing listens on 179 there.
                peer_address: CLIENT.to_string(),
                hold_time: Some("9s".into()),
                ..Default::default()
            },
        );
        p.metadata.name = Some(name.into());
        serde_json::to_value(&p).unwrap()
    };
    lab.api.create_json(peer("tor", 64500)).unwrap();
    // The fake API server does not validate schemas: this reaches the daemons.
    lab.api.create_json(peer("bad", 0)).unwrap();
    let mut advert = BGPAdvertisement::new(
        "lan",
        BGPAdvertisementSpec {
            ip_address_pools: vec!["lan".into()],
            communities: vec!["64512:100".into()],
            ..Default::default()
        },
    );
    advert.metadata.name = Some("lan".into());
    lab.api
        .create_json(serde_json::to_value(&advert).unwrap())
        .unwrap();

    for i in 1..=2 {
        let conf = lab.dir.join(node_name(i)).join("bird").join("bird.conf");
        let text = wait_for(
            &format!("node-{i}'s bird.conf to carry the VIP"),
            CONVERGE,
            || {
                let text = std::fs::read_to_string(&conf)
                    .map_err(|e| format!("{}: {e}", conf.display()))?;
                if text.contains(&format!("route {vip}/32 blackhole;")) {
                    Ok(text)
                } else {
                    Err(text)
                }
            },
        );
        assert!(
            text.contains(&format!("neighbor {CLIENT} port 179 as 64500;")),
            "{text}"
        );
        assert!(text.contains("description \"tor\";"), "{text}");
        assert!(
            !text.contains("description \"bad\";"),
            "the malformed peer is left out: {text}"
        );
        assert!(text.contains("(64512,100)"), "the community: {text}");
        assert!(
            text.contains(&format!("router id {};", node_addr(i))),
            "{text}"
        );
        let status = wait_for(
            &format!("node-{i}'s /status to show the session"),
            CONVERGE,
            || {
                let s = lab.status(i)?;
                let peers: Vec<&str> = s["bgp"]["sessions"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|p| p["peer"].as_str()).collect())
                    .unwrap_or_default();
                if peers == ["tor"] {
                    Ok(s)
                } else {
                    Err(format!("{}", s["bgp"]))
                }
            },
        );
        let problems = status["kubernetes"]["bgp"]["problems"].to_string();
        assert!(
            problems.contains("BGPPeer bad: spec.peerASN: 0 is not an AS number"),
            "{problems}"
        );
    }
    wait_for("the VIP to leave ARP on every node", CONVERGE, || {
        let a: Vec<Vec<String>> = (1..=2)
            .map(|i| lab.announced(i))
            .collect::<Result<_, _>>()?;
        if a.iter().all(Vec::is_empty) {
            Ok(())
        } else {
            Err(format!("{a:?}"))
        }
    });
    let msg = wait_condition(&lab, "whoami", "lb.dev/BGPAdvertised", "True", "Advertised");
    assert!(msg.contains(&format!("{vip} (IPPool lan)")), "{msg}");
    // Cordon node-2: it keeps its session and withdraws the VIP; node-1 still advertises.
    let conf = |i: u8| {
        std::fs::read_to_string(lab.dir.join(node_name(i)).join("bird").join("bird.conf"))
            .unwrap_or_default()
    };
    let mut n2: Node = lab.api.get(None, &node_name(2)).unwrap();
    n2.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
    lab.api.replace(&n2).unwrap();
    let route = format!("route {vip}/32 blackhole;");
    wait_for("cordoned node-2 to withdraw the VIP", CONVERGE, || {
        let text = conf(2);
        if !text.contains(&route) && text.contains("description \"tor\";") {
            Ok(())
        } else {
            Err(text)
        }
    });
    assert!(conf(1).contains(&route), "{}", conf(1));
    wait_for("a Warning Event on BGPPeer bad", CONVERGE, || {
        let evs = lab.api.list::<Event>();
        evs.iter()
            .find(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad")
                    && e.reason.as_deref() == Some("InvalidField")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.starts_with("spec.peerASN:"))
            })
            .map(|_| ())
            .ok_or_else(|| format!("{evs:#?}"))
    });
}
