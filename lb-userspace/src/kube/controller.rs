//! `lb run --kube`: watch the API server and keep this node's data plane, announcements
//! and (on the elected node) Service status in step with it.
//!
//! - Reflectors (list + watch, re-list on 410) hold Services, EndpointSlices, Nodes,
//!   IPPools and lb's heartbeat Leases. A relist fills a buffer and swaps it in whole, so
//!   a half-listed cluster is never seen, and nothing is programmed before every store
//!   finished its first list: a restart never shrinks the backend set.
//! - On every change: the status writer (see [`super::election`]) allocates addresses
//!   ([`super::ipam`]) and writes status; every node translates the Services that have
//!   addresses into the static config model ([`super::translate`]) and applies the
//!   difference to the maps through the same plan/diff/apply path as `lb run --config`.
//!   An unchanged cluster (a relist, a resync) produces an empty diff: no map writes.
//! - Every `lease_renew` the node renews its Lease; Lease changes and a tick of half that
//!   recompute which VIPs it announces, without a full sync. A failed status write or map
//!   update makes the next tick a full sync again.
//! - When the API server goes away the data plane keeps its last state, announcements
//!   freeze, and the watches retry (backoff capped at 2 s) and re-list on return.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, Pod, Secret, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt,
        events::{Recorder, Reporter},
        reflector::{self, Store},
        utils::Backoff,
        watcher,
    },
};
use log::{info, warn};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::Notify;

use super::{
    crd::IPPool,
    election::{self, LEASE_LABEL, Liveness},
    ipam, status,
    translate::{self, QUIC_LB_SECRET_ANNOTATION, SERVER_ID_ANNOTATION, SERVICE_NAME_LABEL},
};
use crate::{
    config::{Config, KubeSettings},
    daemon::State,
};

/// The namespace of the Leases when neither the config nor `$POD_NAMESPACE` names one.
pub const DEFAULT_LEASE_NAMESPACE: &str = "lb-system";
/// Set at shutdown: the Lease is no longer renewed (it is deleted instead).
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Secrets and pod annotations are re-read at most this often.
const CACHE_TTL: Duration = Duration::from_secs(30);

pub struct KubeOptions {
    /// A kubeconfig file; `None`: in-cluster config, else `$KUBECONFIG` / ~/.kube/config.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the DaemonSet passes `spec.nodeName`).
    pub node_name: String,
}

/// Where the heartbeat Leases live: the config's `lease_namespace`, else `$POD_NAMESPACE`,
/// else `lb-system`.
pub fn lease_namespace(settings: &KubeSettings) -> String {
    settings
        .lease_namespace
        .clone()
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_LEASE_NAMESPACE.to_owned())
}

/// Shutdown: stop renewing and delete this node's Lease, so the other nodes take its VIPs
/// over at once instead of after a lease duration (a rolling update moves VIPs quickly).
pub async fn give_up_lease(client: &Client, settings: &KubeSettings, node: &str) {
    STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
    let ns = lease_namespace(settings);
    let api: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let name = election::lease_name(node);
    match tokio::time::timeout(
        Duration::from_secs(1),
        api.delete(&name, &Default::default()),
    )
    .await
    {
        Ok(Ok(_)) => info!("Lease {ns}/{name} deleted: the other nodes take over this node's VIPs"),
        Ok(Err(e)) => warn!("deleting Lease {ns}/{name}: {e}; its VIPs move when it expires"),
        Err(_) => warn!("deleting Lease {ns}/{name} timed out; its VIPs move when it expires"),
    }
}

/// A client from `--kubeconfig`, or inferred (in-cluster, then `$KUBECONFIG`).
pub async fn client(opts: &KubeOptions) -> Result<Client> {
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes credentials: not in a pod, and no --kubeconfig / $KUBECONFIG",
        )?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// Watch retries: 200 ms doubling to 2 s, so a returning API server is seen quickly.
struct FastBackoff(Duration);

impl Iterator for FastBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
        Some(d)
    }
}

impl Backoff for FastBackoff {
    fn reset(&mut self) {
        self.0 = Duration::from_millis(200);
    }
}

/// Start a reflector; every change (and every watch error) wakes `notify`.
fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    notify: Arc<Notify>,
    what: &'static str,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    tokio::spawn(async move {
        let stream = watcher(api, cfg)
            .backoff(FastBackoff(Duration::from_millis(200)))
            .reflect(writer);
        futures::pin_mut!(stream);
        let mut failing = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => {
                    if failing {
                        info!("watch of {what} is back");
                        failing = false;
                    }
                    notify.notify_one();
                }
                Err(e) => {
                    if !failing {
                        warn!("watch of {what} failed, retrying: {e}");
                        failing = true;
                    }
                }
            }
        }
    });
    reader
}

struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    pools: Store<IPPool>,
    leases: Store<Lease>,
}

impl Stores {
    async fn wait_ready(&self) {
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.pools.wait_until_ready().await;
        let _ = self.leases.wait_until_ready().await;
    }
}

fn snapshot<K: Resource + Clone>(s: &Store<K>) -> Vec<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut v: Vec<K> = s.state().iter().map(|a| (**a).clone()).collect();
    v.sort_by(|a, b| {
        let key = |o: &K| (o.meta().namespace.clone(), o.meta().name.clone());
        key(a).cmp(&key(b))
    });
    v
}

/// Whether lb serves this Service.
pub fn is_ours(svc: &Service, settings: &KubeSettings) -> bool {
    let Some(spec) = &svc.spec else { return false };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    match spec.load_balancer_class.as_deref() {
        Some(class) => class == settings.load_balancer_class,
        None => settings.default_class,
    }
}

fn ns_name<K: Resource>(o: &K) -> (String, String) {
    (
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

/// QUIC-LB configs of a Secret annotation, or what is wrong with them.
type QuicConfigs = Result<Vec<lb_common::quic_lb::Config>, String>;

/// A read-through cache of Secrets and pod annotations, re-read after [`CACHE_TTL`].
#[derive(Default)]
struct Lookups {
    secrets: BTreeMap<(String, String), (Instant, QuicConfigs)>,
    pods: BTreeMap<(String, String), (Instant, Option<String>)>,
}

impl Lookups {
    async fn quic(
        &mut self,
        client: &Client,
        services: &[Service],
    ) -> BTreeMap<(String, String), QuicConfigs> {
        let mut out = BTreeMap::new();
        for svc in services {
            let Some(names) = svc
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(QUIC_LB_SECRET_ANNOTATION))
            else {
                continue;
            };
            let ns = svc.metadata.namespace.clone().unwrap_or_default();
            let key = (ns.clone(), names.clone());
            if !fresh(&self.secrets, &key) {
                let v = read_quic_secrets(client, &ns, names).await;
                self.secrets.insert(key.clone(), (Instant::now(), v));
            }
            out.insert(key.clone(), self.secrets[&key].1.clone());
        }
        out
    }

    async fn server_ids(
        &mut self,
        client: &Client,
        services: &[Service],
        slices: &[EndpointSlice],
    ) -> BTreeMap<(String, String), String> {
        let quic_services: BTreeSet<(String, String)> = services
            .iter()
            .filter(|s| {
                s.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(QUIC_LB_SECRET_ANNOTATION))
            })
            .map(ns_name)
            .collect();
        let mut out = BTreeMap::new();
        for slice in slices {
            let ns = slice.metadata.namespace.clone().unwrap_or_default();
            let Some(svc) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            if !quic_services.contains(&(ns.clone(), svc.clone())) {
                continue;
            }
            for ep in &slice.endpoints {
                let Some(r) = &ep.target_ref else { continue };
                if r.kind.as_deref() != Some("Pod") {
                    continue;
                }
                let Some(pod) = &r.name else { continue };
                let key = (ns.clone(), pod.clone());
                if !fresh(&self.pods, &key) {
                    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                    let v = match api.get_opt(pod).await {
                        Ok(p) => p.and_then(|p| {
                            p.metadata
                                .annotations
                                .and_then(|a| a.get(SERVER_ID_ANNOTATION).cloned())
                        }),
                        Err(e) => {
                            warn!("reading pod {ns}/{pod} for its server ID annotation: {e}");
                            None
                        }
                    };
                    self.pods.insert(key.clone(), (Instant::now(), v));
                }
                if let Some(v) = &self.pods[&key].1 {
                    out.insert(key, v.clone());
                }
            }
        }
        out
    }
}

/// Whether `cache` holds `key`, read less than [`CACHE_TTL`] ago.
fn fresh<V>(cache: &BTreeMap<(String, String), (Instant, V)>, key: &(String, String)) -> bool {
    cache
        .get(key)
        .is_some_and(|(at, _)| at.elapsed() < CACHE_TTL)
}

async fn read_quic_secrets(client: &Client, ns: &str, names: &str) -> QuicConfigs {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut out = Vec::new();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let secret = api
            .get_opt(name)
            .await
            .map_err(|e| format!("reading Secret {ns}/{name}: {e}"))?
            .ok_or_else(|| format!("Secret {ns}/{name} does not exist"))?;
        let data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .chain(
                secret
                    .string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            )
            .collect();
        out.push(
            translate::parse_quic_lb_secret(&data)
                .map_err(|e| format!("Secret {ns}/{name}: {e}"))?,
        );
    }
    Ok(out)
}

/// The state of one node's control loop.
struct Controller {
    client: Client,
    node: String,
    settings: KubeSettings,
    lease_ns: String,
    /// Node settings (interfaces...) from the config file; VIPs are filled in per sync.
    base: Config,
    state: Arc<Mutex<State>>,
    stores: Stores,
    liveness: Liveness,
    /// When this node's own Lease was last renewed successfully.
    renewed: Arc<Mutex<Option<Instant>>>,
    lookups: Lookups,
    recorder: Recorder,
    /// VIP address → eligible nodes, from the last translation.
    announce: BTreeMap<IpAddr, translate::Eligible>,
    status_writes: u64,
    status_errors: u64,
    /// The status writer and our connectivity as of the last full sync.
    last_writer: Option<String>,
    last_connected: bool,
    services_seen: usize,
    /// Pool warnings already logged (they repeat on every sync until fixed).
    warned: BTreeSet<String>,
    /// A status write or map update failed: the next tick is a full sync again.
    retry: bool,
}

/// `lb run --kube`'s control loop; runs until the process ends.
pub async fn run(client: Client, opts: KubeOptions, base: Config, state: Arc<Mutex<State>>) {
    let settings = base.kubernetes.clone();
    let lease_ns = lease_namespace(&settings);
    let notify = Arc::new(Notify::new());
    let lease_notify = Arc::new(Notify::new());
    let stores = Stores {
        services: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            notify.clone(),
            "Services",
        ),
        slices: reflect(
            Api::all(client.clone()),
            watcher::Config::default().labels(SERVICE_NAME_LABEL),
            notify.clone(),
            "EndpointSlices",
        ),
        nodes: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            notify.clone(),
            "Nodes",
        ),
        pools: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            notify.clone(),
            "IPPools",
        ),
        // Leases change several times a second: they wake the election, not a full sync.
        leases: reflect(
            Api::namespaced(client.clone(), &lease_ns),
            watcher::Config::default().labels(LEASE_LABEL),
            lease_notify.clone(),
            "Leases",
        ),
    };
    let renewed = Arc::new(Mutex::new(None));
    tokio::spawn(renew_lease(
        client.clone(),
        lease_ns.clone(),
        opts.node_name.clone(),
        settings.clone(),
        renewed.clone(),
        notify.clone(),
    ));
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "lb".into(),
            instance: Some(opts.node_name.clone()),
        },
    );
    let mut c = Controller {
        client,
        node: opts.node_name,
        settings,
        lease_ns,
        base,
        state,
        stores,
        liveness: Liveness::default(),
        renewed,
        lookups: Lookups::default(),
        recorder,
        announce: BTreeMap::new(),
        status_writes: 0,
        status_errors: 0,
        last_writer: None,
        last_connected: false,
        services_seen: 0,
        warned: BTreeSet::new(),
        retry: false,
    };
    info!("Kubernetes: waiting for the first complete list of every watched resource");
    c.stores.wait_ready().await;
    info!("Kubernetes: initial lists complete; programming");
    // Election needs time to pass as well as events: leases expire without any event.
    let tick = (c.settings.lease_renew / 2).max(Duration::from_millis(50));
    // A full sync on every change, and at least every CACHE_TTL (Secrets and pod
    // annotations are not watched); on the ticks in between only liveness and election.
    let mut full = true;
    let mut last_full = Instant::now();
    loop {
        if full || c.retry || last_full.elapsed() >= CACHE_TTL {
            c.sync().await;
            last_full = Instant::now();
        } else {
            c.tick().await;
        }
        full = tokio::select! {
            _ = notify.notified() => true,
            _ = lease_notify.notified() => false,
            _ = tokio::time::sleep(tick) => false,
        };
    }
}

impl Controller {
    /// Liveness and who this node is for the election.
    fn observe(&mut self) -> (bool, BTreeSet<String>, Option<String>) {
        let now = Instant::now();
        self.liveness.observe(&snapshot(&self.stores.leases), now);
        // Connected: our own renewal succeeded recently and came back through the watch,
        // so the Lease store is current (see election's "Frozen").
        let fresh = self.settings.lease_renew * 2;
        let recent =
            |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) < fresh);
        let connected = recent(*self.renewed.lock().expect("renew lock"))
            && recent(self.liveness.seen_at(&self.node));
        let alive = self.liveness.alive(self.settings.lease_duration, now);
        let writer = election::winner(
            election::STATUS_WRITER_KEY,
            alive.iter().map(String::as_str),
        )
        .map(str::to_owned);
        (connected, alive, writer)
    }

    /// Between changes: re-elect (a Lease may have expired); a new status writer, or
    /// this node reconnecting, makes it a full sync.
    async fn tick(&mut self) {
        let (connected, alive, writer) = self.observe();
        if writer != self.last_writer || connected != self.last_connected {
            return self.sync().await;
        }
        if connected {
            self.elect(&snapshot(&self.stores.nodes), &alive);
        }
        self.publish_status(connected, &alive, writer.as_deref(), None);
    }

    fn publish_status(
        &mut self,
        connected: bool,
        alive: &BTreeSet<String>,
        writer: Option<&str>,
        services: Option<usize>,
    ) {
        let mut st = self.state.lock().expect("state lock");
        let announced = st.announced();
        let services = services.unwrap_or(self.services_seen);
        self.services_seen = services;
        st.kube_status = Some(json!({
            "node": self.node,
            "lease_namespace": self.lease_ns,
            "connected": connected,
            "alive_nodes": alive,
            "status_writer": writer,
            "services": services,
            "announced": announced.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "status_writes": self.status_writes,
            "status_errors": self.status_errors,
        }));
    }

    async fn sync(&mut self) {
        self.retry = false;
        let services = snapshot(&self.stores.services);
        let (ours, others): (Vec<Service>, Vec<Service>) = services
            .into_iter()
            .partition(|s| is_ours(s, &self.settings));
        let slices = snapshot(&self.stores.slices);
        let nodes = snapshot(&self.stores.nodes);
        let (connected, alive, writer) = self.observe();
        self.last_writer = writer.clone();
        self.last_connected = connected;

        let quic = self.lookups.quic(&self.client, &ours).await;
        let overrides = self.lookups.server_ids(&self.client, &ours, &slices).await;
        let desired = translate::translate(&translate::ClusterView {
            services: &ours,
            slices: &slices,
            node_name: &self.node,
            quic: &quic,
            server_id_overrides: &overrides,
        });

        let is_writer = connected && writer.as_deref() == Some(self.node.as_str());
        if is_writer {
            self.write_statuses(&ours, &desired.problems).await;
            self.release(&others).await;
        }

        self.program(desired.vips);
        self.announce = desired.announce;
        if connected {
            self.elect(&nodes, &alive);
        }
        self.publish_status(connected, &alive, writer.as_deref(), Some(ours.len()));
    }

    /// Apply the translated VIPs to the data plane (an empty diff writes nothing).
    fn program(&mut self, vips: Vec<crate::config::VipConfig>) {
        let mut config = self.base.clone();
        config.vips = vips;
        let mut st = self.state.lock().expect("state lock");
        match st.apply_config(config) {
            Ok(0) => {}
            Ok(n) => {
                info!("Kubernetes sync: {n} map changes");
                st.last_sync_error = None;
            }
            Err(e) => {
                self.retry = true;
                let msg = format!("{e:#}");
                if st.last_sync_error.as_deref() != Some(&msg) {
                    warn!("Kubernetes sync rejected, data plane unchanged: {msg}");
                }
                st.last_sync_error = Some(msg);
            }
        }
    }

    /// Announce the VIPs this node wins.
    fn elect(&mut self, nodes: &[Node], alive: &BTreeSet<String>) {
        let eligible: BTreeSet<&str> = nodes
            .iter()
            .filter(|n| election::node_eligible(n))
            .filter_map(|n| n.metadata.name.as_deref())
            .filter(|n| alive.contains(*n))
            .collect();
        let mut mine = Vec::new();
        for (vip, elig) in &self.announce {
            let candidates: Vec<&str> = match elig {
                translate::Eligible::AnyNode => eligible.iter().copied().collect(),
                translate::Eligible::Nodes(set) => eligible
                    .iter()
                    .copied()
                    .filter(|n| set.contains(*n))
                    .collect(),
            };
            if election::vip_winner(*vip, candidates) == Some(self.node.as_str()) {
                mine.push(*vip);
            }
        }
        let mut st = self.state.lock().expect("state lock");
        let before = st.announced();
        if before != mine {
            info!("announcing {mine:?} (was {before:?})");
        }
        if let Err(e) = st.set_announced(&mine) {
            warn!("changing the announced VIPs: {e:#}");
        }
    }

    /// Clear lb's status from Services that stopped being lb's.
    async fn release(&mut self, others: &[Service]) {
        for svc in others.iter().filter(|s| status::written_by_lb(s)) {
            let (ns, name) = ns_name(svc);
            match status::release(&self.client, svc).await {
                Ok(()) => info!("Service {ns}/{name} is no longer lb's: address released"),
                Err(e) => {
                    self.retry = true;
                    warn!("releasing the status of Service {ns}/{name}: {e}");
                }
            }
        }
    }

    /// Allocate addresses and write every Service's status that differs from what lb wants.
    async fn write_statuses(&mut self, ours: &[Service], problems: &[translate::Problem]) {
        let pools: Vec<ipam::Pool> = snapshot(&self.stores.pools)
            .iter()
            .filter_map(|p| match ipam::Pool::from_crd(p) {
                Ok(pool) => Some(pool),
                Err(e) => {
                    let msg = format!("IPPool {}: {e}", p.metadata.name.as_deref().unwrap_or(""));
                    if self.warned.insert(msg.clone()) {
                        warn!("{msg}");
                    }
                    None
                }
            })
            .collect();
        let mut requests = Vec::new();
        let mut bad = BTreeMap::new();
        for svc in ours {
            match ipam::ServiceRequest::from_service(svc) {
                Ok(r) => requests.push(r),
                Err(e) => {
                    bad.insert(ns_name(svc), (e.reason().to_owned(), e.to_string()));
                }
            }
        }
        let allocation = ipam::allocate(&pools, &requests);
        for problem in &allocation.problems {
            let msg = format!("IPPool {}: {problem}", problem.pool);
            if self.warned.insert(msg.clone()) {
                warn!("{msg}");
            }
        }
        for svc in ours {
            let key = ns_name(svc);
            let ipam_key = ipam::ServiceKey::new(&key.0, &key.1);
            let (ingress, allocated) = match (bad.get(&key), allocation.services.get(&ipam_key)) {
                (Some((reason, msg)), _) => (Vec::new(), want_bad(reason, msg)),
                (None, Some(Ok(ips))) => (ips.clone(), want_allocated(ips)),
                (None, Some(Err(e))) => (Vec::new(), want_bad(e.reason(), &e.to_string())),
                (None, None) => continue,
            };
            let mine: Vec<&translate::Problem> =
                problems.iter().filter(|p| p.service == key).collect();
            let valid = match mine.first() {
                None => status::Want {
                    type_: status::COND_VALID,
                    ok: true,
                    reason: "Valid".into(),
                    message: "every port is programmed".into(),
                },
                Some(first) => status::Want {
                    type_: status::COND_VALID,
                    ok: false,
                    reason: first.reason.to_owned(),
                    message: mine
                        .iter()
                        .map(|p| p.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                },
            };
            let want = status::WantedStatus {
                ingress,
                conditions: vec![allocated, valid],
            };
            if status::up_to_date(svc, &want) {
                continue;
            }
            let changed: Vec<status::Want> = status::transitions(svc, &want)
                .into_iter()
                .cloned()
                .collect();
            match status::write(&self.client, svc, &want).await {
                Ok(()) => {
                    self.status_writes += 1;
                    info!("Service {}/{}: status {:?}", key.0, key.1, want.ingress);
                    for w in &changed {
                        if let Err(e) = status::event(&self.recorder, svc, w).await {
                            warn!("recording an Event on {}/{}: {e}", key.0, key.1);
                        }
                    }
                }
                Err(e) => {
                    self.status_errors += 1;
                    self.retry = true;
                    warn!("writing the status of Service {}/{}: {e}", key.0, key.1);
                }
            }
        }
    }
}

fn want_allocated(ips: &[IpAddr]) -> status::Want {
    status::Want {
        type_: status::COND_ALLOCATED,
        ok: true,
        reason: "Allocated".into(),
        message: format!(
            "allocated {}",
            ips.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn want_bad(reason: &str, msg: &str) -> status::Want {
    status::Want {
        type_: status::COND_ALLOCATED,
        ok: false,
        reason: reason.to_owned(),
        message: msg.to_owned(),
    }
}

/// Renew this node's heartbeat Lease every `lease_renew` (server-side apply creates it).
async fn renew_lease(
    client: Client,
    ns: String,
    node: String,
    settings: KubeSettings,
    renewed: Arc<Mutex<Option<Instant>>>,
    notify: Arc<Notify>,
) {
    let api: Api<Lease> = Api::namespaced(client, &ns);
    let name = election::lease_name(&node);
    let secs = settings.lease_duration.as_secs_f64().ceil() as i32;
    let mut tick = tokio::time::interval(settings.lease_renew);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        if STOPPING.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let started = Instant::now();
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": ns, "labels": {LEASE_LABEL: "true"}},
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": secs,
                "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now()),
            },
        });
        let r = api
            .patch(
                &name,
                &PatchParams::apply(status::FIELD_MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await;
        match r {
            Ok(_) => {
                *renewed.lock().expect("renew lock") = Some(started);
                if failing {
                    info!("Lease {ns}/{name} renewed again");
                    failing = false;
                    notify.notify_one();
                }
            }
            Err(e) => {
                if !failing {
                    warn!(
                        "renewing Lease {ns}/{name} failed ({e}); keeping the data plane and \
                         announcements as they are until the API server answers"
                    );
                    failing = true;
                }
            }
        }
    }
}
