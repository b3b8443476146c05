//! `lb-lab bench-membership`: the API server load of lb's membership, with simulated nodes
//! against the in-process fake API server (`fake-apiserver`, which logs every request and
//! counts the events it sends on watches).
//!
//! Each simulated node runs the daemon's own Lease renewer
//! ([`lb_userspace::kube::membership::renew_lease`]), started at a random moment within one
//! renew interval (daemons do not start in step). Each daemon also watches all Leases (the
//! same label selector as the daemon); every watcher receives the same stream, so the bench
//! runs `--watchers` real watches (a sample) and multiplies the events one of them received
//! by the node count: that is the fan-out the API server would serve, reported next to the
//! per-watcher rate actually measured.
//!
//! Two designs: `before` (the Lease as failure detector: renew 300 ms, lease 1200 ms) and
//! `after` (gossip detects failures, the Lease is kept at kubelet's cadence: renew 10 s,
//! lease 40 s). Writes are the PATCH requests on Leases in a window of at least three renew
//! intervals, after one interval of warm-up.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use fake_apiserver::FakeApiServer;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};
use lb_userspace::{
    config::KubeSettings,
    kube::{election::LEASE_LABEL, membership},
};
use serde::Serialize;
use tokio::sync::{Notify, watch};

/// Where the Leases live in the bench.
const NS: &str = "lb-system";
/// The fake API server's name for Leases in its counters.
const LEASES: &str = "leases.coordination.k8s.io";

pub struct Options {
    pub nodes: Vec<usize>,
    pub watchers: usize,
    pub json: Option<PathBuf>,
}

/// One design's Lease timing.
#[derive(Clone, Copy)]
pub struct Design {
    pub name: &'static str,
    pub renew: Duration,
    pub lease: Duration,
}

/// The Lease as failure detector (lb before gossip).
pub const BEFORE: Design = Design {
    name: "before",
    renew: Duration::from_millis(300),
    lease: Duration::from_millis(1200),
};

/// Gossip detects failures; the Lease at the daemon's defaults (kubelet's cadence).
pub fn after() -> Design {
    let k = KubeSettings::default();
    Design {
        name: "after",
        renew: k.lease_renew,
        lease: k.lease_duration,
    }
}

#[derive(Serialize, Debug)]
pub struct Row {
    pub design: &'static str,
    pub nodes: usize,
    pub renew_ms: u128,
    pub lease_ms: u128,
    pub window_s: f64,
    /// Lease PATCHes per second, all nodes (served by the fake API server).
    pub api_writes_per_s: f64,
    /// What the nodes would write if every write were answered at once (nodes / renew
    /// interval); when the measured rate falls short, the fake API server (one process on
    /// the bench machine) was saturated and the real load is this.
    pub offered_writes_per_s: f64,
    /// The same per node per 10 s (the goal: at most 1).
    pub writes_per_node_per_10s: f64,
    /// Lease PATCHes that failed (the fake could not keep up, or refused).
    pub failed_writes: usize,
    /// Watch events per second one watcher received (measured, averaged over the sample).
    pub events_per_watcher_per_s: f64,
    /// Watch events per second the API server sends to all `nodes` daemons' Lease watches.
    pub watch_events_per_s: f64,
    pub watchers_sampled: usize,
}

/// Run every design at every node count; print a table and optionally write JSON.
pub fn run(opts: &Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut rows = Vec::new();
    for d in [BEFORE, after()] {
        for &n in &opts.nodes {
            let row = rt.block_on(measure(d, n, opts.watchers.min(n).max(1), None))?;
            println!(
                "{:>6} {:>4} nodes: {:>8.1} writes/s (offered {:.1}; {:.2} per node per 10 s), \
                 {:>10.0} watch events/s ({:.1} per watcher, {} sampled){}",
                row.design,
                row.nodes,
                row.api_writes_per_s,
                row.offered_writes_per_s,
                row.writes_per_node_per_10s,
                row.watch_events_per_s,
                row.events_per_watcher_per_s,
                row.watchers_sampled,
                if row.failed_writes > 0 {
                    format!(", {} writes failed", row.failed_writes)
                } else {
                    String::new()
                }
            );
            rows.push(row);
        }
    }
    if let Some(path) = &opts.json {
        let v = serde_json::json!({ "membership": rows });
        std::fs::write(path, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn client(url: &str) -> Result<Client> {
    let kc = Kubeconfig::from_yaml(&FakeApiServer::kubeconfig(url))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}

/// `n` simulated nodes of design `d`, `watchers` of them watching Leases, measured over
/// `window` (default: three renew intervals, at least 10 s) after one interval of warm-up.
pub async fn measure(
    d: Design,
    n: usize,
    watchers: usize,
    window: Option<Duration>,
) -> Result<Row> {
    let api = FakeApiServer::new();
    let addr = api.bind("127.0.0.1:0".parse()?).await?;
    let url = format!("http://{addr}");
    let settings = KubeSettings {
        lease_renew: d.renew,
        lease_duration: d.lease,
        ..KubeSettings::default()
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    // A few clients, as many daemons would hold their own connections.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(client(&url).await?);
    }
    // The watchers only consume: the fake API server counts what it sent them.
    for w in 0..watchers {
        let api: Api<Lease> = Api::namespaced(clients[w % clients.len()].clone(), NS);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let s = watcher(api, watcher::Config::default().labels(LEASE_LABEL));
            futures::pin_mut!(s);
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    ev = s.next() => if ev.is_none() { return },
                }
            }
        });
    }
    for i in 0..n {
        let offset = d.renew.mul_f64(rand::random::<f64>());
        let client = clients[i % clients.len()].clone();
        let settings = settings.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            membership::renew_lease(
                client,
                NS.into(),
                format!("sim-node-{i}"),
                settings,
                Arc::default(),
                Arc::new(Notify::new()),
                stop,
            )
            .await;
        });
    }
    // Warm-up: every node has renewed once and every watch is established.
    tokio::time::sleep(d.renew + Duration::from_secs(1)).await;
    let window = window.unwrap_or((d.renew * 3).max(Duration::from_secs(10)));
    api.clear_requests();
    let events0 = api.watch_event_count(LEASES);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let secs = t0.elapsed().as_secs_f64();
    let events = api.watch_event_count(LEASES) - events0;
    let log = api.requests();
    stop_tx.send_replace(true);
    let patches = log
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.contains("/leases/"));
    let (ok, failed) = patches.fold((0usize, 0usize), |(ok, bad), r| {
        if r.code < 300 {
            (ok + 1, bad)
        } else {
            (ok, bad + 1)
        }
    });
    let per_watcher = events as f64 / watchers as f64 / secs;
    let writes = ok as f64 / secs;
    Ok(Row {
        design: d.name,
        nodes: n,
        renew_ms: d.renew.as_millis(),
        lease_ms: d.lease.as_millis(),
        window_s: (secs * 10.0).round() / 10.0,
        api_writes_per_s: round1(writes),
        offered_writes_per_s: round1(n as f64 / d.renew.as_secs_f64()),
        writes_per_node_per_10s: round2(writes * 10.0 / n as f64),
        failed_writes: failed,
        events_per_watcher_per_s: round1(per_watcher),
        watch_events_per_s: round1(per_watcher * n as f64),
        watchers_sampled: watchers,
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
