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
//! - Every `lease_renew` (10 s, kubelet's cadence) the node renews its Lease; gossip
//!   ([`super::gossip`]) detects deaths in under a second. Lease and gossip changes and a
//!   tick of [`ELECTION_TICK`] recompute which VIPs it announces ([`super::membership`]),
//!   without a full sync. A failed status write or map update makes the next tick a full
//!   sync again.
//! - When the API server goes away the data plane keeps its last state, Leases are judged
//!   as last seen while gossip goes on detecting deaths, and the watches retry (backoff
//!   capped at 2 s) and re-list on return.
//!
//! The API calls live in `Controller`; what follows from what it read (the config to
//! program, the VIPs to announce, the status for `/status`) is decided by `Reconciler`
//! over a [`super::NodeDataplane`], without a client, so it is unit-tested.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, Pod, Secret, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, Store},
        utils::Backoff,
        watcher,
    },
};
use log::{info, warn};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use super::{
    ControllerStatus, NodeDataplane, bgp as kbgp,
    crd::{BFDProfile, BGPAdvertisement, BGPPeer, IPPool, IPPoolStatus},
    election::{self, LEASE_LABEL},
    ipam,
    journal::{SharedJournal, SliceRecorder},
    membership::{self, Membership, View},
    status,
    translate::{
        self, Eligible, QUIC_LB_SECRET_ANNOTATION, SERVER_ID_ANNOTATION, SERVICE_NAME_LABEL,
    },
};
use crate::{
    bgp,
    config::{Config, KubeSettings, VipConfig},
};

/// The namespace of the Leases when neither the config nor `$POD_NAMESPACE` names one.
pub const DEFAULT_LEASE_NAMESPACE: &str = "lb-system";

/// Service status writes (each with its Events) in flight at once on the status writer.
const STATUS_WRITES_IN_FLIGHT: usize = 16;

/// Secrets and pod annotations are re-read at most this often.
const CACHE_TTL: Duration = Duration::from_secs(30);

/// How long the start waits for the BGP resources' first list (their CRDs may not be
/// installed: then lb runs without BGP, and says so).
const BGP_LIST_WAIT: Duration = Duration::from_secs(5);

/// Between changes, re-elect this often: Leases expire and suspicions resolve without an
/// event (gossip's up/down notifications wake the election at once).
const ELECTION_TICK: Duration = Duration::from_millis(500);

/// The node's data plane, shared with the daemon's other tasks (reloads, metrics, sweeps).
pub type SharedDataplane = Arc<Mutex<dyn NodeDataplane + Send>>;

/// Lock the data plane even if a panic elsewhere poisoned the lock: `apply` validates a
/// config before its first map write, the data plane keeps forwarding either way, and a
/// controller that gave up here would freeze this node's VIPs and announcements.
fn lock(dataplane: &SharedDataplane) -> MutexGuard<'_, dyn NodeDataplane + Send + 'static> {
    dataplane.lock().unwrap_or_else(PoisonError::into_inner)
}

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
/// `stop` is the sender of the receiver [`run`] was given: the renewer finishes a renewal
/// under way and exits before the delete, so no late renewal re-creates the Lease.
pub async fn give_up_lease(
    client: &Client,
    settings: &KubeSettings,
    node: &str,
    stop: watch::Sender<bool>,
) {
    // One second in all: a renewal or a delete hanging on a dead API server must not hold
    // up the shutdown.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    stop.send_replace(true);
    // Every receiver dropped: the renewer returned (or never started).
    let _ = tokio::time::timeout_at(deadline, stop.closed()).await;
    let ns = lease_namespace(settings);
    let api: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let name = election::lease_name(node);
    match tokio::time::timeout_at(deadline, api.delete(&name, &Default::default())).await {
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

/// Start a reflector; every change (and every watch error) is handed to `record` (the
/// event, or `None` for an error) and then wakes `notify`; `healthy`, when given, says
/// whether the watch currently delivers.
fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    notify: Arc<Notify>,
    what: &'static str,
    healthy: Option<Arc<AtomicBool>>,
    mut record: impl FnMut(Option<&watcher::Event<K>>) + Send + 'static,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    tokio::spawn(async move {
        // managedFields are never read here, and every object the API server sends carries
        // them (server-side apply records each manager's fields): kept, they were a good
        // part of the stores of a 10,000-Service cluster.
        let stream = watcher(api, cfg)
            .modify(|o| kube::ResourceExt::managed_fields_mut(o).clear())
            .backoff(FastBackoff(Duration::from_millis(200)))
            .reflect(writer);
        futures::pin_mut!(stream);
        let mut failing = false;
        while let Some(ev) = stream.next().await {
            if let Some(h) = &healthy {
                h.store(ev.is_ok(), Ordering::Relaxed);
            }
            match ev {
                Ok(ev) => {
                    if failing {
                        info!("watch of {what} is back");
                        failing = false;
                    }
                    record(Some(&ev));
                    notify.notify_one();
                }
                Err(e) => {
                    record(None);
                    if !failing {
                        warn!("watch of {what} failed, retrying: {e}");
                        failing = true;
                        if healthy.is_some() {
                            notify.notify_one();
                        }
                    }
                }
            }
        }
    });
    reader
}

/// A watch recorder for the kinds whose every change makes a full sync.
fn marks_full<K>(journal: &SharedJournal) -> impl FnMut(Option<&watcher::Event<K>>) + use<K> {
    let journal = journal.clone();
    move |_| journal.mark_full()
}

struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    pools: Store<IPPool>,
    leases: Store<Lease>,
    bgp_peers: Store<BGPPeer>,
    bgp_adverts: Store<BGPAdvertisement>,
    bfd_profiles: Store<BFDProfile>,
}

impl Stores {
    /// Start the reflectors. A change of the cluster is recorded in `journal` and wakes
    /// `notify` (a sync: of the changed Services when only EndpointSlices changed, else a
    /// full one); a Lease change wakes `lease_notify` (the election only: every node renews
    /// its Lease).
    fn start(
        client: &Client,
        lease_ns: &str,
        notify: &Arc<Notify>,
        lease_notify: &Arc<Notify>,
        lease_watch_ok: &Arc<AtomicBool>,
        journal: &SharedJournal,
    ) -> Stores {
        let mut slices = SliceRecorder::new(journal.clone());
        Stores {
            services: reflect(
                Api::all(client.clone()),
                watcher::Config::default(),
                notify.clone(),
                "Services",
                None,
                marks_full(journal),
            ),
            slices: reflect(
                Api::all(client.clone()),
                watcher::Config::default().labels(SERVICE_NAME_LABEL),
                notify.clone(),
                "EndpointSlices",
                None,
                move |ev| slices.record(ev),
            ),
            nodes: reflect(
                Api::all(client.clone()),
                watcher::Config::default(),
                notify.clone(),
                "Nodes",
                None,
                marks_full(journal),
            ),
            pools: reflect(
                Api::all(client.clone()),
                watcher::Config::default(),
                notify.clone(),
                "IPPools",
                None,
                marks_full(journal),
            ),
            leases: reflect(
                Api::namespaced(client.clone(), lease_ns),
                watcher::Config::default().labels(LEASE_LABEL),
                lease_notify.clone(),
                "Leases",
                Some(lease_watch_ok.clone()),
                |_| {},
            ),
            bgp_peers: reflect(
                Api::all(client.clone()),
                watcher::Config::default(),
                notify.clone(),
                "BGPPeers",
                None,
                marks_full(journal),
            ),
            bgp_adverts: reflect(
                Api::all(client.clone()),
                watcher::Config::default(),
                notify.clone(),
                "BGPAdvertisements",
                None,
                marks_full(journal),
            ),
            bfd_profiles: reflect(
                Api::all(client.clone()),
                watcher::Config::default(),
                notify.clone(),
                "BFDProfiles",
                None,
                marks_full(journal),
            ),
        }
    }

    /// Whether the three BGP stores finished their first list. Until they have, lb
    /// leaves the speaker alone and every VIP to ARP/NDP: a cluster without lb's BGP CRDs
    /// runs as before.
    fn bgp_ready(&self) -> bool {
        use futures::FutureExt;
        self.bgp_peers.wait_until_ready().now_or_never().is_some()
            && self.bgp_adverts.wait_until_ready().now_or_never().is_some()
            && self
                .bfd_profiles
                .wait_until_ready()
                .now_or_never()
                .is_some()
    }

    async fn wait_ready(&self) {
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.pools.wait_until_ready().await;
        let _ = self.leases.wait_until_ready().await;
        // Bounded: without the BGP CRDs these lists never complete.
        let bgp = async {
            let _ = self.bgp_peers.wait_until_ready().await;
            let _ = self.bgp_adverts.wait_until_ready().await;
            let _ = self.bfd_profiles.wait_until_ready().await;
        };
        if tokio::time::timeout(BGP_LIST_WAIT, bgp).await.is_err() {
            warn!(
                "BGPPeers, BGPAdvertisements or BFDProfiles could not be listed (are lb's BGP \
                 CRDs installed? `lb crds`): no BGP until they can; VIPs are announced by ARP/NDP"
            );
        }
    }
}

fn snapshot<K: Resource + Clone>(s: &Store<K>) -> Vec<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    handles(s).iter().map(|a| (**a).clone()).collect()
}

/// The store's objects, sorted as [`snapshot`] sorts them, without copying them: what a
/// sync of 10,000 Services reads (deep copies of every Service and EndpointSlice on every
/// sync were a third of its time and most of the daemon's peak memory).
fn handles<K: Resource + Clone>(s: &Store<K>) -> Vec<Arc<K>>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut v: Vec<Arc<K>> = s.state();
    // Compared by reference: cloning both names on every comparison was two String
    // allocations per comparison, some 300,000 per sync of 10,000 objects.
    v.sort_by(|a, b| {
        let (a, b) = (a.meta(), b.meta());
        (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
    });
    v
}

/// VIPs that BGP carries leave the ARP/NDP election (unless their pool opts in); without
/// a plan (BGP resources not listed) every VIP stays.
fn leave_l2(announce: &mut BTreeMap<IpAddr, Eligible>, plan: Option<&kbgp::Plan>) {
    if let Some(plan) = plan {
        announce.retain(|vip, _| !plan.not_l2.contains(vip));
    }
}

/// Reason of the Event and Service condition when the speaker refuses its configuration.
const BGP_REJECTED: &str = "SpeakerConfigRejected";

/// The reference of the object `name` in `store` (for an Event on it).
fn find_ref<K>(store: &Store<K>, name: &str) -> Option<k8s_openapi::api::core::v1::ObjectReference>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store
        .find(|o| o.meta().name.as_deref() == Some(name))
        .map(|o| o.object_ref(&()))
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

/// What a full sync read through [`Lookups`]: when a periodic re-read finds the same, the
/// cluster needs no full sync.
#[derive(Debug, Default, PartialEq)]
struct LookedUp {
    quic: BTreeMap<(String, String), QuicConfigs>,
    overrides: BTreeMap<(String, String), String>,
    passwords: BTreeMap<String, Result<String, String>>,
}

/// A read-through cache of Secrets and pod annotations, re-read after [`CACHE_TTL`].
#[derive(Default)]
struct Lookups {
    secrets: BTreeMap<(String, String), (Instant, QuicConfigs)>,
    pods: BTreeMap<(String, String), (Instant, Option<String>)>,
    /// BGP passwords: (lb's namespace, Secret name) → the password or why not.
    passwords: BTreeMap<(String, String), (Instant, Result<String, String>)>,
}

impl Lookups {
    /// The `password` of each basic-auth Secret in `names` (in namespace `ns`).
    async fn passwords(
        &mut self,
        client: &Client,
        ns: &str,
        names: &BTreeSet<String>,
    ) -> BTreeMap<String, Result<String, String>> {
        let mut out = BTreeMap::new();
        for name in names {
            let key = (ns.to_owned(), name.clone());
            if !fresh(&self.passwords, &key) {
                let v = read_password(client, ns, name).await;
                self.passwords.insert(key.clone(), (Instant::now(), v));
            }
            out.insert(name.clone(), self.passwords[&key].1.clone());
        }
        out
    }

    async fn quic(
        &mut self,
        client: &Client,
        services: &[&Service],
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
        services: &[&Service],
        slices: &[&EndpointSlice],
    ) -> BTreeMap<(String, String), String> {
        let quic_services: BTreeSet<(String, String)> = services
            .iter()
            .filter(|s| {
                s.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(QUIC_LB_SECRET_ANNOTATION))
            })
            .map(|s| ns_name(*s))
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

/// A BGPPeer's `passwordSecret`: MetalLB's shape, a `kubernetes.io/basic-auth` Secret
/// whose key `password` is the password.
async fn read_password(client: &Client, ns: &str, name: &str) -> Result<String, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {ns}/{name}: {e}"))?
        .ok_or_else(|| format!("Secret {ns}/{name} does not exist"))?;
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    if type_ != "kubernetes.io/basic-auth" {
        return Err(format!(
            "Secret {ns}/{name} is of type {type_}; a BGP password Secret is of type \
             kubernetes.io/basic-auth"
        ));
    }
    let bytes = secret
        .data
        .and_then(|d| d.get("password").map(|b| b.0.clone()))
        .or_else(|| {
            secret
                .string_data
                .and_then(|d| d.get("password").map(|s| s.clone().into_bytes()))
        })
        .ok_or_else(|| format!("Secret {ns}/{name} has no key \"password\""))?;
    String::from_utf8(bytes).map_err(|_| format!("Secret {ns}/{name}: the password is not UTF-8"))
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

/// One node's control loop: the API side (watches, lookups, status writes) around a
/// [`Reconciler`], which decides what the node does with what was read.
struct Controller {
    client: Client,
    settings: KubeSettings,
    dataplane: SharedDataplane,
    stores: Stores,
    membership: Membership,
    /// Wakes the election (Lease and gossip changes).
    wake: Arc<Notify>,
    lookups: Lookups,
    recorder: Recorder,
    /// The status writer and our connectivity as of the last full sync.
    last_writer: Option<String>,
    last_connected: bool,
    /// Pool warnings already logged (they repeat on every sync until fixed).
    warned: BTreeSet<String>,
    /// BGP object problems already recorded as Events (by this node, as status writer).
    bgp_evented: BTreeSet<String>,
    /// Interface entries that named nothing at the last look (reported as Events).
    unmatched: Vec<(String, String)>,
    /// What changed since the last sync.
    journal: SharedJournal,
    /// The last full translation, updated by the syncs of EndpointSlice changes; `None`
    /// until a full sync, and after an update the data plane refused.
    translation: Option<translate::Translation>,
    /// The Secrets and pod annotations the last full sync used.
    looked_up: LookedUp,
    r: Reconciler,
}

/// `lb run --kube`'s control loop; runs until the process ends. Changes go to the node
/// through `dataplane`; `stop` ends this node's Lease renewals (see [`give_up_lease`]).
pub async fn run(
    client: Client,
    opts: KubeOptions,
    base: Config,
    dataplane: SharedDataplane,
    stop: watch::Receiver<bool>,
) {
    let settings = base.kubernetes.clone();
    let lease_ns = lease_namespace(&settings);
    let notify = Arc::new(Notify::new());
    let lease_notify = Arc::new(Notify::new());
    let membership = Membership::new(opts.node_name.clone(), settings.clone());
    let journal = SharedJournal::default();
    let stores = Stores::start(
        &client,
        &lease_ns,
        &notify,
        &lease_notify,
        &membership.lease_watch_ok,
        &journal,
    );
    tokio::spawn(membership::renew_lease(
        client.clone(),
        lease_ns.clone(),
        opts.node_name.clone(),
        settings.clone(),
        membership.renewal.clone(),
        notify.clone(),
        stop,
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
        settings,
        dataplane,
        stores,
        membership,
        wake: lease_notify.clone(),
        lookups: Lookups::default(),
        recorder,
        last_writer: None,
        last_connected: false,
        warned: BTreeSet::new(),
        bgp_evented: BTreeSet::new(),
        unmatched: Vec::new(),
        journal,
        translation: None,
        looked_up: LookedUp::default(),
        r: Reconciler::new(opts.node_name, lease_ns, base),
    };
    info!("Kubernetes: waiting for the first complete list of every watched resource");
    c.stores.wait_ready().await;
    info!("Kubernetes: initial lists complete; programming");
    // Election needs time to pass as well as events: leases expire without any event.
    let tick = ELECTION_TICK;
    // A sync on every change (of the changed Services when only EndpointSlices changed).
    // Secrets and pod annotations are not watched: every CACHE_TTL they are read again, and
    // a full sync follows when they changed. On the ticks in between only liveness and
    // election.
    let mut changed = true;
    let mut last_read = Instant::now();
    // A sync ran since the node was last idle.
    let mut busy = false;
    // A full sync that took T is followed by the next no sooner than T after it ends: on a
    // large cluster a stream of Service changes (a cold start's status writes coming back
    // one by one) then costs a node at most about half a core, and the status writer and
    // the API server keep the rest; on a small one T is milliseconds.
    let mut next_full = Instant::now();
    loop {
        let due = last_read.elapsed() >= CACHE_TTL;
        if changed || due || c.r.retry {
            if c.journal.wants_full() {
                tokio::time::sleep_until(next_full.into()).await;
            }
            let full = due && c.lookups_changed().await;
            if due {
                last_read = Instant::now();
            }
            let started = Instant::now();
            if c.sync(full).await {
                last_read = Instant::now();
                next_full = last_read + started.elapsed();
            }
            busy = true;
        } else {
            c.tick().await;
            if busy {
                // Idle again after a burst of changes: what the syncs freed goes back.
                release_freed_memory();
                busy = false;
            }
        }
        changed = tokio::select! {
            _ = notify.notified() => true,
            _ = lease_notify.notified() => false,
            _ = tokio::time::sleep(tick) => false,
        };
    }
}

/// Hand the heap memory the syncs freed back to the kernel (after each full sync, and
/// when the node is idle again after a burst of changes). A full sync of a large cluster
/// allocates and frees hundreds of megabytes (the translation, the config, the plan, the
/// diff), and glibc keeps freed memory in its per-thread arenas for reuse: in the
/// control-plane bench (10,000 Services) a daemon's RSS was 497 MB, of which 280 MB were
/// free heap (217 MB after a trim).
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas to the
    // kernel; it touches no memory the program holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The entries of `now` that were not in `before`: each is reported once, when it starts
/// naming nothing (again).
fn newly_unmatched(before: &[(String, String)], now: &[(String, String)]) -> Vec<(String, String)> {
    now.iter()
        .filter(|e| !before.contains(e))
        .cloned()
        .collect()
}

impl Controller {
    /// Liveness and who this node is for the election.
    fn observe(&mut self) -> View {
        self.membership.view(
            &snapshot(&self.stores.leases),
            &snapshot(&self.stores.nodes),
        )
    }

    /// Between changes: re-elect (a Lease may have expired); a new status writer, or
    /// this node reconnecting, makes it a full sync.
    async fn tick(&mut self) {
        let view = self.observe();
        if view.writer != self.last_writer || view.connected != self.last_connected {
            self.sync(true).await;
            return;
        }
        let nodes = snapshot(&self.stores.nodes);
        self.r.tick(&mut *lock(&self.dataplane), &nodes, &view);
        self.report_interfaces(&nodes).await;
    }

    /// A Warning Event on this Node for each interface entry that has just started to name
    /// nothing (a DaemonSet's one config on a node whose NICs are named differently).
    async fn report_interfaces(&mut self, nodes: &[Node]) {
        let now = lock(&self.dataplane).unmatched_interfaces();
        let fresh = newly_unmatched(&self.unmatched, &now);
        if fresh.is_empty() {
            self.unmatched = now;
            return;
        }
        // Not listed (yet): keep the entries fresh, to report once the Node is seen.
        let Some(node) = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(&self.r.node))
        else {
            return;
        };
        self.unmatched = now;
        // One Event per key: the recorder folds Events with the same reason and action on
        // one object into a series (a later note is not kept), so the action says which
        // list, and the note names every entry of it that has just started to name nothing.
        for (key, action) in [
            ("interfaces", "AttachXDP"),
            ("backend_interfaces", "AttachReverseNAT"),
        ] {
            let entries: Vec<String> = fresh
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, p)| format!("{p:?}"))
                .collect();
            if entries.is_empty() {
                continue;
            }
            let ev = Event {
                type_: EventType::Warning,
                reason: "InterfaceNotFound".into(),
                note: Some(format!(
                    "{key} entries {} name no interface on node {}; lb attaches when one \
                     appears (checked every second). Fix the node's config if none ever will.",
                    entries.join(", "),
                    self.r.node
                )),
                action: action.into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&ev, &node.object_ref(&())).await {
                warn!(
                    "recording the InterfaceNotFound Event on node {}: {e}",
                    self.r.node
                );
            }
        }
    }

    /// Bring the node up to date with what the watches recorded: only the changed
    /// Services when only EndpointSlices changed ([`Self::sync_endpoints`]), else (or with
    /// `full`, after a failed write, before the first full sync) everything. Returns
    /// whether it was a full sync.
    async fn sync(&mut self, full: bool) -> bool {
        // Taken before the stores are read: what changes from here on is in the next one.
        let journal = self.journal.take();
        let full = full || journal.full || self.r.retry || self.translation.is_none();
        if !full && (journal.services.is_empty() || self.sync_endpoints(&journal.services).await) {
            return false;
        }
        self.full_sync().await;
        true
    }

    /// Read the Secrets and pod annotations the cluster refers to again (those older than
    /// [`CACHE_TTL`]); whether any differs from what the last full sync used.
    async fn lookups_changed(&mut self) -> bool {
        let services = self.stores.services.state();
        let ours: Vec<&Service> = services
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| is_ours(s, &self.settings))
            .collect();
        let slices = self.stores.slices.state();
        let slices: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
        let quic = self.lookups.quic(&self.client, &ours).await;
        let overrides = self.lookups.server_ids(&self.client, &ours, &slices).await;
        let passwords = if self.stores.bgp_ready() {
            let peers = snapshot(&self.stores.bgp_peers);
            let ns = self.r.lease_ns.clone();
            let secrets = kbgp::password_secrets(&peers, &ns);
            self.lookups.passwords(&self.client, &ns, &secrets).await
        } else {
            BTreeMap::new()
        };
        let now = LookedUp {
            quic,
            overrides,
            passwords,
        };
        let changed = now != self.looked_up;
        if changed {
            info!("QUIC-LB Secrets, pod server IDs or BGP passwords changed: a full sync");
        }
        changed
    }

    /// Translate and program only `services` (their EndpointSlices changed; nothing else
    /// did): [`translate::Translation::update`] and [`NodeDataplane::update_vips`]. False
    /// when that cannot stand for a full sync (no full translation yet, a case the update
    /// declines, or a data plane that refused it): the caller then runs one.
    async fn sync_endpoints(&mut self, services: &BTreeSet<(String, String)>) -> bool {
        let Some(mut translation) = self.translation.take() else {
            return false;
        };
        // A Service that is gone (or no longer ours) was a Service event: a full sync.
        let handles: Vec<Arc<Service>> = services
            .iter()
            .filter_map(|(ns, name)| {
                self.stores
                    .services
                    .get(&reflector::ObjectRef::new(name).within(ns))
            })
            .filter(|s| is_ours(s, &self.settings))
            .collect();
        let ours: Vec<&Service> = handles.iter().map(|s| s.as_ref()).collect();
        let wanted: BTreeSet<(&str, &str)> = ours
            .iter()
            .map(|s| {
                (
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    s.metadata.name.as_deref().unwrap_or_default(),
                )
            })
            .collect();
        // Their slices: one pass over the store's handles (no copy of the others).
        let all_slices = self.stores.slices.state();
        let slices: Vec<&EndpointSlice> = all_slices
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| translate::slice_service(s).is_some_and(|k| wanted.contains(&k)))
            .collect();
        let by_service = translate::slices_by_service(&slices);
        let quic = self.lookups.quic(&self.client, &ours).await;
        let overrides = self.lookups.server_ids(&self.client, &ours, &slices).await;
        let view = translate::ClusterView {
            services: &[],
            slices: &[],
            node_name: &self.r.node,
            capacity: &self.r.base.capacity,
            quic: &quic,
            server_id_overrides: &overrides,
        };
        let changed: Vec<(&Service, Vec<&EndpointSlice>)> = ours
            .iter()
            .map(|svc| {
                let key = (
                    svc.metadata.namespace.as_deref().unwrap_or_default(),
                    svc.metadata.name.as_deref().unwrap_or_default(),
                );
                (*svc, by_service.get(&key).cloned().unwrap_or_default())
            })
            .collect();
        let Some(vips) = translation.update(&view, &changed) else {
            return false;
        };
        if !vips.is_empty() {
            let result = lock(&self.dataplane).update_vips(vips);
            match result {
                Ok(n) => {
                    if n > 0 {
                        info!(
                            "Kubernetes sync of the EndpointSlices of {} Services: {n} map \
                             changes",
                            ours.len()
                        );
                    }
                }
                Err(e) => {
                    warn!(
                        "updating the VIPs of {} Services in place: {e:#}; applying the whole \
                         cluster instead",
                        ours.len()
                    );
                    return false;
                }
            }
        }
        self.r.endpoint_syncs += 1;
        self.translation = Some(translation);
        true
    }

    /// Everything again: translate every Service, plan BGP, program the whole config and
    /// elect, then (the status writer) allocate and write statuses.
    async fn full_sync(&mut self) {
        self.r.retry = false;
        self.r.full_syncs += 1;
        let services = handles(&self.stores.services);
        let (ours, others): (Vec<&Service>, Vec<&Service>) = services
            .iter()
            .map(|s| s.as_ref())
            .partition(|s| is_ours(s, &self.settings));
        let slice_handles = handles(&self.stores.slices);
        let slices: Vec<&EndpointSlice> = slice_handles.iter().map(|s| s.as_ref()).collect();
        let nodes = snapshot(&self.stores.nodes);
        self.membership.ensure_gossip(&nodes, &self.wake).await;
        let view = self.observe();
        self.last_writer = view.writer.clone();
        self.last_connected = view.connected;

        let quic = self.lookups.quic(&self.client, &ours).await;
        let overrides = self.lookups.server_ids(&self.client, &ours, &slices).await;
        self.looked_up.quic = quic.clone();
        self.looked_up.overrides = overrides.clone();
        // The translation and the apply below are seconds of CPU at 10,000 Services: off
        // the async workers (block_in_place), so gossip, Lease renewal and the watches keep
        // their timing meanwhile (a starved gossip task declared live nodes down, and the
        // announcements flapped).
        let (mut desired, translation) = tokio::task::block_in_place(|| {
            translate::translate(&translate::ClusterView {
                services: &ours,
                slices: &slices,
                node_name: &self.r.node,
                capacity: &self.r.base.capacity,
                quic: &quic,
                server_id_overrides: &overrides,
            })
        });
        self.translation = Some(translation);
        let plan = self.bgp_plan(&nodes, &desired.announce).await;
        leave_l2(&mut desired.announce, plan.as_ref());
        let writer = view.connected && view.writer.as_deref() == Some(self.r.node.as_str());
        if let Some(plan) = &plan {
            self.report_bgp_problems(&plan.problems, writer).await;
        }

        let bgp_vips = plan
            .as_ref()
            .map(|p| p.bgp_vips.clone())
            .unwrap_or_default();
        // Program first, then write statuses: the status writer of a new 10,000-Service
        // cluster spends seconds writing them, and its own data plane need not wait.
        let rejected = tokio::task::block_in_place(|| {
            let dp = &mut *lock(&self.dataplane);
            self.r.settle(
                dp,
                desired.vips,
                desired.announce,
                plan.map(|p| p.desired),
                &nodes,
                &view,
                ours.len(),
            )
        });
        if writer {
            self.write_statuses(&ours, &desired.problems, &bgp_vips)
                .await;
            self.release(&others).await;
        }
        if let Some(error) = rejected {
            self.report_bgp_rejection(&nodes, &error).await;
        }
        drop((services, slice_handles, nodes));
        release_freed_memory();
    }

    /// What BGP does on this node, once the BGP resources are listed (`None` before).
    async fn bgp_plan(
        &mut self,
        nodes: &[Node],
        vips: &BTreeMap<IpAddr, Eligible>,
    ) -> Option<kbgp::Plan> {
        if !self.stores.bgp_ready() {
            return None;
        }
        let peers = snapshot(&self.stores.bgp_peers);
        let adverts = snapshot(&self.stores.bgp_adverts);
        let profiles = snapshot(&self.stores.bfd_profiles);
        let pools = snapshot(&self.stores.pools);
        let ns = self.r.lease_ns.clone();
        let secrets = kbgp::password_secrets(&peers, &ns);
        let passwords = self.lookups.passwords(&self.client, &ns, &secrets).await;
        self.looked_up.passwords = passwords.clone();
        let node = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(&self.r.node));
        Some(kbgp::plan(&kbgp::BgpView {
            node_name: &self.r.node,
            node,
            pools: &pools,
            peers: &peers,
            adverts: &adverts,
            profiles: &profiles,
            vips,
            namespace: &ns,
            passwords: &passwords,
            previous: self.r.bgp_sent.as_ref().and_then(Option::as_ref),
        }))
    }

    /// Log each problem of a BGP object once (every node), and record it as a Warning
    /// Event on the object (the status writer only, so a cluster of N nodes does not
    /// write N Events for one typo).
    async fn report_bgp_problems(&mut self, problems: &[kbgp::ObjectProblem], writer: bool) {
        self.r.bgp_problems = problems.iter().map(|p| p.to_string()).collect();
        // A problem fixed and made again is recorded again.
        let now: BTreeSet<&String> = self.r.bgp_problems.iter().collect();
        self.bgp_evented.retain(|m| now.contains(m));
        for p in problems {
            let msg = p.to_string();
            if self.warned.insert(msg.clone()) {
                warn!("{msg}");
            }
            // A node that becomes the status writer later records what is still wrong.
            if !writer || !self.bgp_evented.insert(msg) {
                continue;
            }
            let object = match p.kind {
                "BGPPeer" => find_ref(&self.stores.bgp_peers, &p.name),
                "BGPAdvertisement" => find_ref(&self.stores.bgp_adverts, &p.name),
                _ => find_ref(&self.stores.bfd_profiles, &p.name),
            };
            let Some(object) = object else { continue };
            let ev = Event {
                type_: EventType::Warning,
                reason: p.reason.into(),
                note: Some(format!("{}: {}", p.field, p.message)),
                action: "ConfigureBGP".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&ev, &object).await {
                warn!("recording an Event on {} {}: {e}", p.kind, p.name);
            }
        }
    }

    /// A Warning Event on this Node: its speaker refused the configuration lb rendered
    /// (the previous one keeps running).
    async fn report_bgp_rejection(&mut self, nodes: &[Node], error: &str) {
        let Some(node) = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(&self.r.node))
        else {
            return;
        };
        let ev = Event {
            type_: EventType::Warning,
            reason: BGP_REJECTED.into(),
            note: Some(format!(
                "the BGP speaker refused the configuration lb rendered; the previous one keeps \
                 running: {error}"
            )),
            action: "ConfigureBGP".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &node.object_ref(&())).await {
            warn!(
                "recording the {BGP_REJECTED} Event on node {}: {e}",
                self.r.node
            );
        }
    }

    /// Clear lb's status from Services that stopped being lb's.
    async fn release(&mut self, others: &[&Service]) {
        for svc in others.iter().filter(|s| status::written_by_lb(s)) {
            let (ns, name) = ns_name(*svc);
            match status::release(&self.client, svc).await {
                Ok(()) => info!("Service {ns}/{name} is no longer lb's: address released"),
                Err(e) => {
                    self.r.retry = true;
                    warn!("releasing the status of Service {ns}/{name}: {e}");
                }
            }
        }
    }

    /// The IPPools that are valid; what is wrong with the others is logged once.
    fn pools(&mut self) -> Vec<ipam::Pool> {
        snapshot(&self.stores.pools)
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
            .collect()
    }

    /// Allocate addresses and write every Service's status that differs from what lb wants.
    async fn write_statuses(
        &mut self,
        ours: &[&Service],
        problems: &[translate::Problem],
        bgp_vips: &BTreeMap<IpAddr, String>,
    ) {
        let pools = self.pools();
        let mut requests = Vec::new();
        let mut bad = BTreeMap::new();
        for svc in ours {
            match ipam::ServiceRequest::from_service(svc) {
                Ok(r) => requests.push(r),
                Err(e) => {
                    bad.insert(ns_name(*svc), (e.reason().to_owned(), e.to_string()));
                }
            }
        }
        let allocation = ipam::allocate(&pools, &requests);
        let mut writes = Vec::new();
        for problem in &allocation.problems {
            let msg = format!("IPPool {}: {problem}", problem.pool);
            if self.warned.insert(msg.clone()) {
                warn!("{msg}");
            }
        }
        self.write_pool_statuses(&pools, &allocation).await;
        for svc in ours {
            let key = ns_name(*svc);
            let ipam_key = ipam::ServiceKey::new(&key.0, &key.1);
            let (ingress, allocated) = match (bad.get(&key), allocation.services.get(&ipam_key)) {
                (Some((reason, msg)), _) => (Vec::new(), want_bad(reason, msg)),
                (None, Some(Ok(ips))) => (ips.clone(), want_allocated(ips)),
                (None, Some(Err(e))) => (Vec::new(), want_bad(e.reason(), &e.to_string())),
                (None, None) => continue,
            };
            let mut conditions = vec![allocated, want_valid(problems, &key)];
            conditions.extend(want_bgp(&ingress, bgp_vips, self.r.bgp_error.as_deref()));
            let want = status::WantedStatus {
                ingress,
                conditions,
            };
            if !status::up_to_date(svc, &want) {
                writes.push((svc, key, want));
            }
        }
        // Several writes in flight: one at a time, a first sync of 10,000 Services (a
        // status and an Event or two each) waited for some 30,000 round trips in a row,
        // and no node programs a VIP before its Service's status has the address.
        let client = &self.client;
        let recorder = &self.recorder;
        // The futures are made first: a lazy `map` in the stream is a closure over
        // references that the spawned controller's `Send` check cannot see through.
        let pending: Vec<_> = writes
            .iter()
            .map(|(svc, key, want)| write_status(client, recorder, svc, key, want))
            .collect();
        let results: Vec<bool> = futures::stream::iter(pending)
            .buffer_unordered(STATUS_WRITES_IN_FLIGHT)
            .collect()
            .await;
        for ok in results {
            if ok {
                self.r.status_writes += 1;
            } else {
                self.r.status_errors += 1;
                self.r.retry = true;
            }
        }
    }

    /// Keep each IPPool's assigned/available counts (`kubectl get ippools`); written only
    /// when they differ from what the pool shows, so an unchanged cluster writes nothing.
    async fn write_pool_statuses(&mut self, pools: &[ipam::Pool], allocation: &ipam::Allocation) {
        let shown: BTreeMap<String, Option<IPPoolStatus>> = snapshot(&self.stores.pools)
            .into_iter()
            .filter_map(|p| Some((p.metadata.name?, p.status)))
            .collect();
        for (name, want) in ipam::pool_statuses(pools, allocation) {
            if shown.get(&name).is_some_and(|s| s.as_ref() == Some(&want)) {
                continue;
            }
            match status::write_pool(&self.client, &name, &want).await {
                Ok(()) => self.r.status_writes += 1,
                Err(e) => {
                    self.r.status_errors += 1;
                    self.r.retry = true;
                    warn!("writing the status of IPPool {name}: {e}");
                }
            }
        }
    }
}

/// Write one Service's status, and an Event for every condition that changes; false on a
/// failed status write (logged).
async fn write_status(
    client: &Client,
    recorder: &Recorder,
    svc: &Service,
    (ns, name): &(String, String),
    want: &status::WantedStatus,
) -> bool {
    let changed: Vec<&status::Want> = status::transitions(svc, want);
    match status::write(client, svc, want).await {
        Ok(()) => {
            info!("Service {ns}/{name}: status {:?}", want.ingress);
            for w in changed {
                if let Err(e) = status::event(recorder, svc, w).await {
                    warn!("recording an Event on {ns}/{name}: {e}");
                }
            }
            true
        }
        Err(e) => {
            warn!("writing the status of Service {ns}/{name}: {e}");
            false
        }
    }
}

/// The decisions of a node's control loop that need no API server: what to program,
/// which VIPs to announce, what `/status` shows. They take what the loop read and the
/// node's [`NodeDataplane`], so they are unit-tested with a fake one.
struct Reconciler {
    node: String,
    lease_ns: String,
    /// Node settings (interfaces...) from the config file; VIPs are filled in per sync.
    base: Config,
    /// VIP address → eligible nodes, from the last translation.
    announce: BTreeMap<IpAddr, Eligible>,
    /// The error the last sync was rejected with, as the data plane has it: a rejection
    /// that repeats on every retry is warned about and recorded once.
    sync_error: Option<String>,
    /// lb's Services as of the last full sync.
    services_seen: usize,
    status_writes: u64,
    status_errors: u64,
    /// A status write or map update failed: the next tick is a full sync again.
    retry: bool,
    /// The speaker configuration last accepted (`None`: never handed one).
    bgp_sent: Option<Option<bgp::Desired>>,
    /// Why the speaker refused the last configuration handed to it, until one applies.
    bgp_error: Option<String>,
    /// What is wrong with the BGP objects, for `/status`.
    bgp_problems: Vec<String>,
    /// Syncs of everything, and syncs of only the Services whose EndpointSlices changed.
    full_syncs: u64,
    endpoint_syncs: u64,
    /// The last election: the alive eligible nodes and the `announce` it was run with (by
    /// generation), and the VIPs this node won. Elections run every tick; with 10,000
    /// addresses each one hashed every address for every node (most of an idle daemon's
    /// CPU), though the answer changes only when the nodes or the addresses do.
    elected: Option<(BTreeSet<String>, u64, Vec<IpAddr>)>,
    /// Bumped whenever `announce` is replaced.
    announce_generation: u64,
}

impl Reconciler {
    fn new(node: String, lease_ns: String, base: Config) -> Reconciler {
        Reconciler {
            node,
            lease_ns,
            base,
            announce: BTreeMap::new(),
            sync_error: None,
            services_seen: 0,
            status_writes: 0,
            status_errors: 0,
            retry: false,
            bgp_sent: None,
            bgp_error: None,
            bgp_problems: Vec::new(),
            full_syncs: 0,
            endpoint_syncs: 0,
            elected: None,
            announce_generation: 0,
        }
    }

    /// The end of a full sync: program the translated VIPs, hand the speaker its
    /// configuration (`bgp`: `None` while the BGP resources are not listed: the speaker
    /// is left alone), then as on every tick (ARP/NDP after BGP, so a VIP moving from L2
    /// to BGP is advertised before its ARP announcement stops). Returns the speaker's
    /// error when it newly refuses its configuration.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &mut self,
        dp: &mut dyn NodeDataplane,
        vips: Vec<VipConfig>,
        announce: BTreeMap<IpAddr, Eligible>,
        bgp: Option<Option<bgp::Desired>>,
        nodes: &[Node],
        view: &View,
        services: usize,
    ) -> Option<String> {
        self.program(dp, vips);
        let rejected = bgp.and_then(|desired| self.set_bgp(dp, desired));
        if self.announce != announce {
            self.announce = announce;
            self.announce_generation += 1;
        }
        self.services_seen = services;
        self.tick(dp, nodes, view);
        rejected
    }

    /// Hand `desired` to the speaker unless it is what the speaker already runs. A refused
    /// configuration is retried on the next full sync (the speaker may have been
    /// restarting) and warned about once per error; returns the error when it is new.
    fn set_bgp(
        &mut self,
        dp: &mut dyn NodeDataplane,
        desired: Option<bgp::Desired>,
    ) -> Option<String> {
        if self.bgp_sent.as_ref() == Some(&desired) {
            return None;
        }
        let summary = match &desired {
            None => "no BGP peer for this node".to_owned(),
            Some(d) => format!("{} peers, {} prefixes", d.peers.len(), d.adverts.len()),
        };
        match dp.set_bgp(desired.clone()) {
            Ok(()) => {
                info!("BGP: speaker configured ({summary})");
                // A refusal had been written to Service conditions: rewrite them now.
                self.retry |= self.bgp_error.take().is_some();
                self.bgp_sent = Some(desired);
                None
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if self.bgp_error.as_ref() == Some(&msg) {
                    return None;
                }
                warn!(
                    "BGP: the speaker refused the configuration ({summary}); the previous one \
                     keeps running: {msg}"
                );
                self.bgp_error = Some(msg.clone());
                // The next tick is a full sync: the status writer writes the condition.
                self.retry = true;
                Some(msg)
            }
        }
    }

    /// Announce the VIPs this node wins and report for `/status`. Without gossip and
    /// without the API server this node cannot judge anyone: announcements freeze.
    fn tick(&mut self, dp: &mut dyn NodeDataplane, nodes: &[Node], view: &View) {
        if view.connected || view.gossip {
            self.elect(dp, nodes, &view.alive);
        }
        let status = self.status(view, dp.announced());
        dp.set_status(status);
    }

    /// Apply `vips` with the node's settings (an unchanged cluster is an empty diff: no
    /// map writes). A rejected config leaves the data plane as it was and makes the next
    /// tick a full sync. Returns the number of map changes, `None` when rejected.
    fn program(&mut self, dp: &mut dyn NodeDataplane, vips: Vec<VipConfig>) -> Option<usize> {
        let mut config = self.base.clone();
        config.vips = vips;
        match dp.apply(config) {
            Ok(n) => {
                if n > 0 {
                    info!("Kubernetes sync: {n} map changes");
                }
                if self.sync_error.take().is_some() {
                    dp.set_sync_error(None);
                }
                Some(n)
            }
            Err(e) => {
                self.retry = true;
                let msg = format!("{e:#}");
                if self.sync_error.as_ref() != Some(&msg) {
                    warn!("Kubernetes sync rejected, data plane unchanged: {msg}");
                    dp.set_sync_error(Some(msg.clone()));
                    self.sync_error = Some(msg);
                }
                None
            }
        }
    }

    /// Announce exactly the VIPs this node wins.
    fn elect(&mut self, dp: &mut dyn NodeDataplane, nodes: &[Node], alive: &BTreeSet<String>) {
        let candidates = eligible_nodes(nodes, alive);
        let mine = match &self.elected {
            Some((c, generation, mine))
                if *c == candidates && *generation == self.announce_generation =>
            {
                mine.clone()
            }
            _ => {
                let mine = vips_won(&self.node, &self.announce, &candidates);
                self.elected = Some((candidates, self.announce_generation, mine.clone()));
                mine
            }
        };
        let before = dp.announced();
        if before != mine {
            info!("announcing {}", announcement_change(&before, &mine));
        }
        if let Err(e) = dp.set_announced(&mine) {
            warn!("changing the announced VIPs: {e:#}");
        }
    }

    fn status(&self, view: &View, announced: Vec<IpAddr>) -> ControllerStatus {
        ControllerStatus {
            node: self.node.clone(),
            lease_namespace: self.lease_ns.clone(),
            connected: view.connected,
            alive_nodes: view.alive.clone(),
            isolated: view.isolated,
            members: view.members.clone(),
            gossip: view.gossip_stats.clone(),
            status_writer: view.writer.clone(),
            services: self.services_seen,
            announced,
            status_writes: self.status_writes,
            status_errors: self.status_errors,
            full_syncs: self.full_syncs,
            endpoint_syncs: self.endpoint_syncs,
            bgp_error: self.bgp_error.clone(),
            bgp_problems: self.bgp_problems.clone(),
        }
    }
}

/// The VIPs `node` wins: each goes to its [`election::vip_winner`] among the alive,
/// eligible nodes it may go to.
fn vips_won(
    node: &str,
    announce: &BTreeMap<IpAddr, Eligible>,
    eligible: &BTreeSet<String>,
) -> Vec<IpAddr> {
    let eligible: BTreeSet<&str> = eligible.iter().map(String::as_str).collect();
    let mut mine = Vec::new();
    for (vip, elig) in announce {
        let candidates: Vec<&str> = match elig {
            Eligible::AnyNode => eligible.iter().copied().collect(),
            Eligible::Nodes(set) => eligible
                .iter()
                .copied()
                .filter(|n| set.contains(*n))
                .collect(),
        };
        if election::vip_winner(*vip, candidates) == Some(node) {
            mine.push(*vip);
        }
    }
    mine
}

/// The nodes that may announce anything: eligible (Ready, schedulable, not excluded) and
/// alive.
fn eligible_nodes(nodes: &[Node], alive: &BTreeSet<String>) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|n| election::node_eligible(n))
        .filter_map(|n| n.metadata.name.clone())
        .filter(|n| alive.contains(n))
        .collect()
}

/// "N VIPs", with what was added and removed (a few of each): with thousands of VIPs,
/// both lists in full made every line hundreds of kilobytes.
fn announcement_change(before: &[IpAddr], now: &[IpAddr]) -> String {
    const SHOWN: usize = 8;
    let was: BTreeSet<&IpAddr> = before.iter().collect();
    let is: BTreeSet<&IpAddr> = now.iter().collect();
    let list = |v: Vec<&&IpAddr>| {
        let mut s: Vec<String> = v.iter().take(SHOWN).map(|a| a.to_string()).collect();
        if v.len() > SHOWN {
            s.push(format!("and {} more", v.len() - SHOWN));
        }
        s.join(", ")
    };
    let added: Vec<&&IpAddr> = is.difference(&was).collect();
    let removed: Vec<&&IpAddr> = was.difference(&is).collect();
    let mut out = format!("{} VIPs", now.len());
    if !added.is_empty() {
        out += &format!("; now also {}", list(added));
    }
    if !removed.is_empty() {
        out += &format!("; no longer {}", list(removed));
    }
    out
}

/// The `Valid` condition of the Service `key`: its first problem's reason and every
/// problem's message, or valid.
fn want_valid(problems: &[translate::Problem], key: &(String, String)) -> status::Want {
    let mine: Vec<&translate::Problem> = problems.iter().filter(|p| p.service == *key).collect();
    match mine.first() {
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
    }
}

/// The `BGPAdvertised` condition of a Service holding `ingress`: present when BGP carries
/// one of its addresses; false while this (the status writer's) speaker refuses its
/// configuration.
fn want_bgp(
    ingress: &[IpAddr],
    bgp_vips: &BTreeMap<IpAddr, String>,
    error: Option<&str>,
) -> Option<status::Want> {
    let carried: Vec<String> = ingress
        .iter()
        .filter_map(|ip| bgp_vips.get(ip).map(|pool| format!("{ip} (IPPool {pool})")))
        .collect();
    if carried.is_empty() {
        return None;
    }
    Some(match error {
        None => status::Want {
            type_: status::COND_BGP,
            ok: true,
            reason: "Advertised".into(),
            message: format!(
                "{} advertised over BGP by every eligible node (externalTrafficPolicy Local: \
                 those with a ready endpoint)",
                carried.join(", ")
            ),
        },
        Some(e) => status::Want {
            type_: status::COND_BGP,
            ok: false,
            reason: BGP_REJECTED.into(),
            message: format!(
                "the BGP speaker refused lb's configuration, the previous one keeps running: {e}"
            ),
        },
    })
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use anyhow::anyhow;
    use k8s_openapi::{
        api::core::v1::{NodeCondition, NodeSpec, NodeStatus},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };
    use serde_json::json;

    use super::*;

    /// What the controller asked of the data plane, in order.
    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Apply(Box<Config>),
        UpdateVips(Vec<VipConfig>),
        SetAnnounced(Vec<IpAddr>),
        SetSyncError(Option<String>),
        SetStatus(Box<ControllerStatus>),
        SetBgp(Option<bgp::Desired>),
    }

    /// A data plane that records every call and answers `apply` as scripted.
    #[derive(Default)]
    struct Fake {
        calls: Vec<Call>,
        /// The VIPs of the last config applied (a rejected one changes nothing).
        programmed: Vec<VipConfig>,
        announced: Vec<IpAddr>,
        /// `Some(error)`: `apply` rejects every config with it.
        reject: Option<String>,
        /// What a successful `apply` reports.
        changes: usize,
        /// `Some(error)`: `set_bgp` refuses every configuration with it.
        reject_bgp: Option<String>,
        /// The speaker configuration last accepted.
        bgp: Option<bgp::Desired>,
    }

    impl NodeDataplane for Fake {
        fn apply(&mut self, config: Config) -> Result<usize> {
            self.calls.push(Call::Apply(Box::new(config.clone())));
            match &self.reject {
                Some(e) => Err(anyhow!("{e}")),
                None => {
                    self.programmed = config.vips;
                    Ok(self.changes)
                }
            }
        }

        fn update_vips(&mut self, vips: Vec<VipConfig>) -> Result<usize> {
            self.calls.push(Call::UpdateVips(vips.clone()));
            if let Some(e) = &self.reject {
                return Err(anyhow!("{e}"));
            }
            for v in vips {
                let same = |p: &&mut VipConfig| {
                    (p.addr, &p.ports, &p.protocols) == (v.addr, &v.ports, &v.protocols)
                };
                let Some(slot) = self.programmed.iter_mut().find(same) else {
                    return Err(anyhow!("VIP {} is not programmed", v.addr));
                };
                *slot = v;
            }
            Ok(self.changes)
        }

        fn announced(&self) -> Vec<IpAddr> {
            self.announced.clone()
        }

        fn set_announced(&mut self, vips: &[IpAddr]) -> Result<()> {
            self.calls.push(Call::SetAnnounced(vips.to_vec()));
            self.announced = vips.to_vec();
            Ok(())
        }

        fn set_sync_error(&mut self, error: Option<String>) {
            self.calls.push(Call::SetSyncError(error));
        }

        fn set_status(&mut self, status: ControllerStatus) {
            self.calls.push(Call::SetStatus(Box::new(status)));
        }

        fn set_bgp(&mut self, desired: Option<bgp::Desired>) -> Result<()> {
            self.calls.push(Call::SetBgp(desired.clone()));
            match &self.reject_bgp {
                Some(e) => Err(anyhow!("{e}")),
                None => {
                    self.bgp = desired;
                    Ok(())
                }
            }
        }
    }

    fn parse(toml: &str) -> Config {
        Config::parse(toml, "t.toml", Path::new(".")).unwrap()
    }

    fn base() -> Config {
        parse("interfaces = [\"eth0\"]\nbackend_interfaces = [\"veth*\"]\n")
    }

    /// A TCP VIP on port 80 of `addr` with one backend.
    fn vips(addrs: &[&str]) -> Vec<VipConfig> {
        let mut toml = String::from("interfaces = [\"eth0\"]\n");
        for a in addrs {
            toml += &format!(
                "[[vips]]\naddress = \"{a}\"\nports = [80]\nprotocols = [\"tcp\"]\n\
                 [[vips.backends]]\naddress = \"10.0.0.1\"\nport = 8080\n"
            );
        }
        parse(&toml).vips
    }

    fn reconciler(node: &str) -> Reconciler {
        Reconciler::new(node.into(), "lb-system".into(), base())
    }

    /// A Ready, schedulable Node.
    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn names(ns: &[&str]) -> BTreeSet<String> {
        ns.iter().map(|n| (*n).to_owned()).collect()
    }

    fn view(connected: bool, alive: &[&str], writer: Option<&str>) -> View {
        View {
            connected,
            alive: names(alive),
            writer: writer.map(str::to_owned),
            ..View::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn programming_applies_the_node_settings_with_the_cluster_vips() {
        let mut fake = Fake {
            changes: 3,
            ..Fake::default()
        };
        let mut r = reconciler("a");
        let want = vips(&["198.18.0.1", "198.18.0.2"]);
        assert_eq!(r.program(&mut fake, want.clone()), Some(3));
        let mut expected = base();
        expected.vips = want.clone();
        // A clean apply with no error before records nothing else.
        assert_eq!(fake.calls, [Call::Apply(Box::new(expected))]);
        assert_eq!(fake.programmed, want);
        assert!(!r.retry && r.sync_error.is_none());
    }

    #[test]
    fn a_rejected_apply_is_recorded_once_retried_and_changes_nothing() {
        let good = vips(&["198.18.0.1"]);
        let mut fake = Fake {
            changes: 1,
            ..Fake::default()
        };
        let mut r = reconciler("a");
        r.program(&mut fake, good.clone());
        fake.calls.clear();
        fake.reject = Some("VIP 198.18.0.2: no backends".into());

        let bad = vips(&["198.18.0.1", "198.18.0.2"]);
        assert_eq!(r.program(&mut fake, bad.clone()), None);
        assert!(r.retry, "a rejected sync makes the next tick a full sync");
        // The retry hits the same error: applied again, not recorded (or warned) again.
        r.retry = false;
        assert_eq!(r.program(&mut fake, bad), None);
        assert!(r.retry);
        let msg = Some("VIP 198.18.0.2: no backends".to_owned());
        let recorded: Vec<&Call> = fake
            .calls
            .iter()
            .filter(|c| !matches!(c, Call::Apply(_)))
            .collect();
        assert_eq!(recorded, [&Call::SetSyncError(msg.clone())]);
        assert_eq!(fake.calls.len(), 3, "{:?}", fake.calls);
        assert_eq!(
            fake.programmed, good,
            "the data plane keeps its last good state"
        );
        assert_eq!(r.sync_error, msg);

        // A different error is news.
        fake.reject = Some("something else".into());
        r.program(&mut fake, vips(&["198.18.0.3"]));
        assert_eq!(
            fake.calls.last(),
            Some(&Call::SetSyncError(Some("something else".into())))
        );
    }

    #[test]
    fn a_clean_apply_clears_the_previous_error_and_counts_changes() {
        for changes in [4, 0] {
            let mut fake = Fake {
                reject: Some("bad".into()),
                ..Fake::default()
            };
            let mut r = reconciler("a");
            r.program(&mut fake, vips(&["198.18.0.1"]));
            fake.reject = None;
            fake.changes = changes;
            fake.calls.clear();
            let want = vips(&["198.18.0.1"]);
            // Also when the fixed cluster is what already runs (no map changes).
            assert_eq!(r.program(&mut fake, want.clone()), Some(changes));
            assert!(matches!(
                &fake.calls[..],
                [Call::Apply(_), Call::SetSyncError(None)]
            ));
            assert_eq!(fake.programmed, want);
            assert_eq!(r.sync_error, None);
        }
    }

    /// Who announces what when every one of `nodes` elects over `announce`.
    fn elect_all(
        nodes: &[Node],
        alive: &[&str],
        announce: &BTreeMap<IpAddr, Eligible>,
    ) -> BTreeMap<String, Vec<IpAddr>> {
        let mut out = BTreeMap::new();
        for n in nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            let mut r = reconciler(&name);
            r.announce = announce.clone();
            let mut fake = Fake::default();
            r.elect(&mut fake, nodes, &names(alive));
            let [Call::SetAnnounced(mine)] = &fake.calls[..] else {
                panic!("{name}: {:?}", fake.calls);
            };
            out.insert(name, mine.clone());
        }
        out
    }

    #[test]
    fn each_vip_is_announced_by_its_winner_among_alive_eligible_nodes() {
        let all = ["node-a", "node-b", "node-c"];
        let announce: BTreeMap<IpAddr, Eligible> = (1..=30u8)
            .map(|i| (IpAddr::from([198, 18, 0, i]), Eligible::AnyNode))
            .collect();
        let mut cordoned = node("node-d");
        if let Some(spec) = cordoned.spec.as_mut() {
            spec.unschedulable = Some(true);
        }
        let mut nodes: Vec<Node> = all.iter().map(|n| node(n)).collect();
        nodes.push(cordoned);
        // node-d is alive but cordoned; node-e is alive but has no Node.
        let won = elect_all(
            &nodes,
            &["node-a", "node-b", "node-c", "node-d", "node-e"],
            &announce,
        );
        for (n, mine) in &won {
            let expected: Vec<IpAddr> = announce
                .keys()
                .copied()
                .filter(|v| election::vip_winner(*v, all) == Some(n.as_str()))
                .collect();
            assert_eq!(mine, &expected, "{n}");
        }
        assert!(won["node-d"].is_empty());
        assert_eq!(won.values().map(Vec::len).sum::<usize>(), announce.len());

        // node-b's Lease expired: its VIPs go to the winners among a and c.
        let won = elect_all(&nodes, &["node-a", "node-c"], &announce);
        assert!(won["node-b"].is_empty());
        for (n, mine) in &won {
            for v in mine {
                assert_eq!(
                    election::vip_winner(*v, ["node-a", "node-c"]),
                    Some(n.as_str())
                );
            }
        }
        assert_eq!(won.values().map(Vec::len).sum::<usize>(), announce.len());
    }

    #[test]
    fn a_vip_restricted_to_nodes_goes_only_to_those() {
        let all = ["node-a", "node-b", "node-c"];
        let nodes: Vec<Node> = all.iter().map(|n| node(n)).collect();
        // A VIP node-b would not win if every node could have it.
        let vip = (1..=255u8)
            .map(|i| IpAddr::from([198, 18, 1, i]))
            .find(|v| election::vip_winner(*v, all) != Some("node-b"))
            .unwrap();
        let only = |ns: &[&str]| BTreeMap::from([(vip, Eligible::Nodes(names(ns)))]);

        let won = elect_all(&nodes, &all, &only(&["node-b"]));
        assert_eq!(won["node-b"], [vip]);
        assert!(won["node-a"].is_empty() && won["node-c"].is_empty());

        // Its only node is dead (or not a Node at all): nobody announces it.
        let won = elect_all(&nodes, &["node-a", "node-c"], &only(&["node-b", "node-x"]));
        assert!(won.values().all(Vec::is_empty), "{won:?}");
        let won = elect_all(&nodes, &all, &only(&[]));
        assert!(won.values().all(Vec::is_empty), "{won:?}");
    }

    #[test]
    fn a_sync_programs_then_announces_then_reports() {
        let vip = ip("198.18.0.1");
        let mut fake = Fake {
            changes: 2,
            ..Fake::default()
        };
        let mut r = reconciler("node-a");
        let v = view(true, &["node-a"], Some("node-a"));
        let announce = BTreeMap::from([(vip, Eligible::AnyNode)]);
        r.settle(
            &mut fake,
            vips(&["198.18.0.1"]),
            announce,
            None,
            &[node("node-a")],
            &v,
            5,
        );
        assert_eq!(fake.calls.len(), 3, "{:?}", fake.calls);
        assert!(matches!(fake.calls[0], Call::Apply(_)));
        assert_eq!(fake.calls[1], Call::SetAnnounced(vec![vip]));
        let Call::SetStatus(status) = &fake.calls[2] else {
            panic!("{:?}", fake.calls[2]);
        };
        assert_eq!(status.announced, [vip]);
        assert_eq!(status.services, 5);
    }

    #[test]
    fn a_disconnected_node_keeps_its_announcements() {
        let vip = ip("198.18.0.1");
        let mut fake = Fake {
            announced: vec![vip],
            ..Fake::default()
        };
        let mut r = reconciler("node-a");
        r.announce = BTreeMap::from([(vip, Eligible::AnyNode)]);
        // node-b would win, but node-a cannot trust what it sees.
        r.tick(
            &mut fake,
            &[node("node-b")],
            &view(false, &["node-b"], None),
        );
        let [Call::SetStatus(status)] = &fake.calls[..] else {
            panic!("{:?}", fake.calls);
        };
        assert!(!status.connected);
        assert_eq!(status.announced, [vip]);
    }

    #[test]
    fn with_gossip_a_disconnected_node_still_elects() {
        let vip = ip("198.18.0.1");
        let mut fake = Fake {
            announced: vec![vip],
            ..Fake::default()
        };
        let mut r = reconciler("node-a");
        r.announce = BTreeMap::from([(vip, Eligible::AnyNode)]);
        // Gossip says node-a is down to the others and they dropped it: node-b wins.
        let mut v = view(false, &["node-b"], Some("node-b"));
        v.gossip = true;
        r.tick(&mut fake, &[node("node-a"), node("node-b")], &v);
        assert_eq!(fake.calls[0], Call::SetAnnounced(vec![]));
    }

    #[test]
    fn an_unmatched_interface_entry_is_reported_once_per_episode() {
        let e = |k: &str, p: &str| (k.to_string(), p.to_string());
        let none: Vec<(String, String)> = Vec::new();
        let ext = vec![e("interfaces", "eth9")];
        let both = vec![e("interfaces", "eth9"), e("backend_interfaces", "cali*")];
        assert_eq!(newly_unmatched(&none, &ext), ext);
        // Still unmatched: no new Event; another entry joins: only that one.
        assert!(newly_unmatched(&ext, &ext).is_empty());
        assert_eq!(newly_unmatched(&ext, &both), both[1..]);
        // Matched for a while, then unmatched again: reported again.
        assert!(newly_unmatched(&ext, &none).is_empty());
        assert_eq!(newly_unmatched(&none, &ext), ext);
    }

    #[test]
    fn an_announcement_change_is_logged_as_a_count_and_a_short_difference() {
        let a = |n: u8| IpAddr::from([198, 18, 0, n]);
        let before: Vec<IpAddr> = (1..=3).map(a).collect();
        let now: Vec<IpAddr> = (2..=14).map(a).collect();
        assert_eq!(
            announcement_change(&before, &now),
            "13 VIPs; now also 198.18.0.4, 198.18.0.5, 198.18.0.6, 198.18.0.7, 198.18.0.8, \
             198.18.0.9, 198.18.0.10, 198.18.0.11, and 3 more; no longer 198.18.0.1"
        );
        assert_eq!(
            announcement_change(&now, &[]),
            "0 VIPs; no longer 198.18.0.2, 198.18.0.3, \
             198.18.0.4, 198.18.0.5, 198.18.0.6, 198.18.0.7, 198.18.0.8, 198.18.0.9, and 5 more"
        );
    }

    #[test]
    fn status_has_the_fields_of_slash_status() {
        let mut fake = Fake {
            announced: vec![ip("198.18.0.1"), ip("fd00:18::1")],
            ..Fake::default()
        };
        let mut r = reconciler("node-a");
        r.services_seen = 2;
        r.status_writes = 7;
        r.status_errors = 1;
        r.full_syncs = 3;
        r.endpoint_syncs = 40;
        // No election while disconnected, so the status shows the fake's VIPs.
        let mut v = view(false, &["node-b", "node-a"], Some("node-b"));
        v.members = BTreeMap::from([(
            "node-b".to_owned(),
            membership::MemberStatus {
                lease: true,
                gossip: Some(super::super::liveness::GossipState::Suspect),
                alive: true,
            },
        )]);
        v.gossip_stats = Some(membership::GossipStats {
            addr: "198.18.0.11:7946".into(),
            sent: 10,
            received: 9,
            rejected: 1,
        });
        r.tick(&mut fake, &[], &v);
        let [Call::SetStatus(status)] = &fake.calls[..] else {
            panic!("{:?}", fake.calls);
        };
        assert_eq!(
            status.to_json(),
            json!({
                "node": "node-a",
                "lease_namespace": "lb-system",
                "connected": false,
                "alive_nodes": ["node-a", "node-b"],
                "isolated": false,
                "members": {"node-b": {"lease": true, "gossip": "suspect", "alive": true}},
                "gossip": {"addr": "198.18.0.11:7946", "sent": 10, "received": 9, "rejected": 1},
                "status_writer": "node-b",
                "services": 2,
                "announced": ["198.18.0.1", "fd00:18::1"],
                "status_writes": 7,
                "status_errors": 1,
                "syncs": {"full": 3, "endpoints": 40},
                "bgp": {"config_rejected": null, "problems": []},
            })
        );
        // Nobody alive: no writer (null, not missing).
        fake.calls.clear();
        r.tick(&mut fake, &[], &View::default());
        let [Call::SetStatus(status)] = &fake.calls[..] else {
            panic!("{:?}", fake.calls);
        };
        assert_eq!(status.to_json()["status_writer"], serde_json::Value::Null);
        assert_eq!(status.to_json()["alive_nodes"], json!([]));
    }

    // ------------------------------------------------------------------------------------
    // BGP: the sync's BGP steps (plan → leave_l2 → settle) against the fake data plane.

    mod bgp_sync {
        use k8s_openapi::api::core::v1::NodeAddress;

        use super::*;
        use crate::kube::crd::{BGPAdvertisementSpec, BGPPeerSpec, IPPoolSpec};

        /// Pools "bgp" (198.18.10.0/24) and "l2" (198.18.20.0/24); a peer "tor" for
        /// every node; one advertisement of pool "bgp" with a community and localPref.
        struct World {
            nodes: Vec<Node>,
            pools: Vec<IPPool>,
            peers: Vec<BGPPeer>,
            adverts: Vec<BGPAdvertisement>,
        }

        fn labelled(name: &str, rack: &str, addr: &str) -> Node {
            let mut n = node(name);
            n.metadata.labels = Some([("rack".to_string(), rack.to_string())].into());
            n.status.as_mut().unwrap().addresses = Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: addr.into(),
            }]);
            n
        }

        fn world() -> World {
            let pool = |name: &str, cidr: &str| {
                let mut p = IPPool::new(
                    name,
                    IPPoolSpec {
                        addresses: vec![cidr.into()],
                        auto_assign: true,
                        service_selector: None,
                        l2: None,
                    },
                );
                p.metadata.name = Some(name.into());
                p
            };
            let mut advert = BGPAdvertisement::new(
                "bgp",
                BGPAdvertisementSpec {
                    ip_address_pools: vec!["bgp".into()],
                    communities: vec!["64512:100".into()],
                    local_pref: Some(120),
                    ..Default::default()
                },
            );
            advert.metadata.name = Some("bgp".into());
            World {
                nodes: vec![
                    labelled("node-a", "1", "198.18.1.2"),
                    labelled("node-b", "2", "198.18.1.3"),
                ],
                pools: vec![pool("bgp", "198.18.10.0/24"), pool("l2", "198.18.20.0/24")],
                peers: vec![BGPPeer::new(
                    "tor",
                    BGPPeerSpec {
                        my_asn: 64512,
                        peer_asn: 64500,
                        peer_address: "198.18.1.1".into(),
                        ..Default::default()
                    },
                )],
                adverts: vec![advert],
            }
        }

        /// Cluster VIP .10.1, Local VIP .10.2 (endpoint on node-b), L2 VIP .20.1.
        fn announce() -> BTreeMap<IpAddr, Eligible> {
            BTreeMap::from([
                (ip("198.18.10.1"), Eligible::AnyNode),
                (ip("198.18.10.2"), Eligible::Nodes(names(&["node-b"]))),
                (ip("198.18.20.1"), Eligible::AnyNode),
            ])
        }

        /// One full sync of `node` in `w`: what the controller's sync does after reading.
        fn sync(r: &mut Reconciler, fake: &mut Fake, w: &World) -> Option<String> {
            let mut announce = announce();
            let plan = kbgp::plan(&kbgp::BgpView {
                node_name: &r.node.clone(),
                node: w
                    .nodes
                    .iter()
                    .find(|n| n.metadata.name.as_deref() == Some(&r.node)),
                pools: &w.pools,
                peers: &w.peers,
                adverts: &w.adverts,
                profiles: &[],
                vips: &announce,
                namespace: "lb-system",
                passwords: &BTreeMap::new(),
                previous: r.bgp_sent.as_ref().and_then(Option::as_ref),
            });
            r.bgp_problems = plan.problems.iter().map(|p| p.to_string()).collect();
            leave_l2(&mut announce, Some(&plan));
            let alive: Vec<&str> = w
                .nodes
                .iter()
                .filter_map(|n| n.metadata.name.as_deref())
                .collect();
            r.settle(
                fake,
                vips(&[]),
                announce,
                Some(plan.desired),
                &w.nodes,
                &view(true, &alive, Some("node-a")),
                3,
            )
        }

        fn bgp_calls(fake: &Fake) -> Vec<Option<bgp::Desired>> {
            fake.calls
                .iter()
                .filter_map(|c| match c {
                    Call::SetBgp(d) => Some(d.clone()),
                    _ => None,
                })
                .collect()
        }

        fn prefixes(d: &bgp::Desired) -> Vec<String> {
            d.adverts.iter().map(|a| a.prefix.to_string()).collect()
        }

        #[test]
        fn cluster_vips_from_every_node_local_ones_from_endpoint_nodes_l2_vips_by_arp() {
            let w = world();
            let mut won_l2 = Vec::new();
            for n in ["node-a", "node-b"] {
                let mut fake = Fake::default();
                let mut r = reconciler(n);
                assert_eq!(sync(&mut r, &mut fake, &w), None);
                let d = fake.bgp.clone().unwrap();
                let want: &[&str] = if n == "node-a" {
                    &["198.18.10.1/32"]
                } else {
                    &["198.18.10.1/32", "198.18.10.2/32"]
                };
                assert_eq!(prefixes(&d), want, "{n}");
                let id = if n == "node-a" {
                    "198.18.1.2"
                } else {
                    "198.18.1.3"
                };
                assert_eq!(d.router_id, Some(id.parse().unwrap()), "its InternalIP");
                let a = &d.adverts[0];
                assert_eq!(a.communities, [bgp::Community::Standard(64512, 100)]);
                assert_eq!(
                    (a.local_pref, a.peers.clone()),
                    (Some(120), vec!["tor".to_string()])
                );
                // BGP is handed over before ARP/NDP is decided, and BGP VIPs are not in it.
                let first_bgp = fake.calls.iter().position(|c| matches!(c, Call::SetBgp(_)));
                let first_arp = fake
                    .calls
                    .iter()
                    .position(|c| matches!(c, Call::SetAnnounced(_)));
                assert!(first_bgp < first_arp, "{:?}", fake.calls);
                assert!(fake.announced.iter().all(|v| *v == ip("198.18.20.1")));
                won_l2.extend(fake.announced.clone());
            }
            assert_eq!(
                won_l2,
                [ip("198.18.20.1")],
                "the L2 VIP has exactly one winner"
            );
        }

        #[test]
        fn a_cordoned_node_withdraws_and_an_unchanged_config_is_not_handed_again() {
            let mut w = world();
            let mut fake = Fake::default();
            let mut r = reconciler("node-a");
            sync(&mut r, &mut fake, &w);
            sync(&mut r, &mut fake, &w);
            assert_eq!(
                bgp_calls(&fake).len(),
                1,
                "an unchanged cluster: one set_bgp"
            );
            w.nodes[0].spec.as_mut().unwrap().unschedulable = Some(true);
            sync(&mut r, &mut fake, &w);
            let calls = bgp_calls(&fake);
            let d = calls.last().unwrap().as_ref().unwrap();
            assert_eq!(d.peers.len(), 1, "the session stays");
            assert!(d.adverts.is_empty(), "every prefix withdrawn");
            // No peer for this node any more (nodeSelectors): no BGP at all.
            w.peers[0].spec.node_selectors = vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some([("rack".to_string(), "2".to_string())].into()),
                    match_expressions: None,
                },
            ];
            sync(&mut r, &mut fake, &w);
            assert_eq!(bgp_calls(&fake).last(), Some(&None));
        }

        #[test]
        fn a_refused_speaker_config_is_reported_once_retried_and_cleared() {
            let w = world();
            let mut fake = Fake::default();
            let mut r = reconciler("node-a");
            sync(&mut r, &mut fake, &w);
            let good = fake.bgp.clone();
            let mut w2 = world();
            w2.adverts[0].spec.local_pref = Some(130);
            fake.reject_bgp = Some("bird: syntax error, line 12".into());
            assert_eq!(
                sync(&mut r, &mut fake, &w2).as_deref(),
                Some("bird: syntax error, line 12")
            );
            assert!(r.retry, "the next tick writes the Service condition");
            assert_eq!(fake.bgp, good, "the previous configuration keeps running");
            // Retried on the next sync; the same error is not news.
            r.retry = false;
            assert_eq!(sync(&mut r, &mut fake, &w2), None);
            assert_eq!(bgp_calls(&fake).len(), 3);
            let Some(Call::SetStatus(st)) = fake.calls.last() else {
                panic!("{:?}", fake.calls);
            };
            assert_eq!(
                st.to_json()["bgp"]["config_rejected"],
                "bird: syntax error, line 12"
            );
            let bgp_vips = BTreeMap::from([(ip("198.18.10.1"), "bgp".to_string())]);
            let cond = want_bgp(&[ip("198.18.10.1")], &bgp_vips, r.bgp_error.as_deref()).unwrap();
            assert_eq!((cond.ok, cond.reason.as_str()), (false, BGP_REJECTED));
            assert!(cond.message.contains("bird: syntax error, line 12"));
            // Accepted again: cleared, and the condition flips back on the next sync.
            fake.reject_bgp = None;
            r.retry = false;
            assert_eq!(sync(&mut r, &mut fake, &w2), None);
            assert!(r.retry && r.bgp_error.is_none());
            assert_eq!(fake.bgp.as_ref().unwrap().adverts[0].local_pref, Some(130));
            let cond = want_bgp(&[ip("198.18.10.1")], &bgp_vips, None).unwrap();
            assert_eq!((cond.ok, cond.reason.as_str()), (true, "Advertised"));
            assert_eq!(want_bgp(&[ip("198.18.20.1")], &bgp_vips, None), None);
        }

        #[test]
        fn a_malformed_peer_is_reported_and_the_other_peers_still_run() {
            let mut w = world();
            let mut bad = BGPPeer::new(
                "bad-asn",
                BGPPeerSpec {
                    my_asn: 64512,
                    peer_asn: 0,
                    peer_address: "198.18.1.9".into(),
                    ..Default::default()
                },
            );
            bad.spec.hold_time = Some("ninety".into());
            w.peers.push(bad);
            w.adverts[0]
                .spec
                .communities
                .push("no-such-community".into());
            let mut extra = w.adverts[0].clone();
            extra.metadata.name = Some("second".into());
            extra.spec.communities = vec![];
            w.adverts.push(extra);
            let mut fake = Fake::default();
            let mut r = reconciler("node-a");
            sync(&mut r, &mut fake, &w);
            let d = fake.bgp.clone().unwrap();
            assert_eq!(
                d.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
                ["tor"]
            );
            assert_eq!(
                prefixes(&d),
                ["198.18.10.1/32"],
                "the valid advertisement still runs"
            );
            assert!(d.adverts[0].communities.is_empty());
            let Some(Call::SetStatus(st)) = fake.calls.last() else {
                panic!("{:?}", fake.calls);
            };
            let problems = st.to_json()["bgp"]["problems"].clone();
            let problems: Vec<String> = serde_json::from_value(problems).unwrap();
            assert_eq!(problems.len(), 3, "{problems:#?}");
            assert!(
                problems[0].starts_with(
                    "BGPAdvertisement bgp: spec.communities[1]: \"no-such-community\""
                )
            );
            assert!(
                problems[1]
                    .starts_with("BGPPeer bad-asn: spec.holdTime: \"ninety\" is not a duration")
            );
            assert!(
                problems[2].starts_with("BGPPeer bad-asn: spec.peerASN: 0 is not an AS number")
            );
        }

        #[test]
        fn without_the_bgp_resources_every_vip_stays_on_arp_and_the_speaker_is_left_alone() {
            let mut fake = Fake::default();
            let mut r = reconciler("node-a");
            let mut a = announce();
            leave_l2(&mut a, None);
            assert_eq!(a, announce());
            let w = world();
            r.settle(
                &mut fake,
                vips(&[]),
                a,
                None,
                &w.nodes,
                &view(true, &["node-a"], Some("node-a")),
                0,
            );
            assert!(bgp_calls(&fake).is_empty());
        }
    }
}
