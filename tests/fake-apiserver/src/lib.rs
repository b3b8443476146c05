//! A faithful in-process fake Kubernetes API server for lb's tests.
//!
//! The real `lb` daemon (kube-rs 5) and the real `kubectl` talk to it over plain HTTP on
//! TCP, with a kubeconfig from [`FakeApiServer::kubeconfig`] (`server: http://…`, no TLS,
//! no auth). Tests can also read and write the store directly ([`FakeApiServer::create`],
//! [`FakeApiServer::get`], …); those writes bump the resourceVersion and reach watchers
//! exactly like HTTP writes.
//!
//! # Usage
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use fake_apiserver::FakeApiServer;
//! use k8s_openapi::api::core::v1::Service;
//!
//! let server = FakeApiServer::new();
//! let addr = server.bind("127.0.0.1:0".parse().unwrap()).await?;
//! let kubeconfig = FakeApiServer::kubeconfig(&format!("http://{addr}"));
//! // kube-rs: kube::config::Kubeconfig::from_yaml(&kubeconfig) then
//! // kube::Config::from_custom_kubeconfig(..); kubectl: write it to a file, --kubeconfig.
//! # let svc: Service = Default::default();
//! server.create(&svc).expect("created"); // watchers see ADDED
//! server.cut_watches(); // every watch stream ends abruptly
//! server.compact(); // the next re-watch from an old resourceVersion gets 410 → re-list
//! # let _ = kubeconfig;
//! # Ok(()) }
//! ```
//!
//! # Direct access
//! Typed methods ([`create`](FakeApiServer::create), [`get`](FakeApiServer::get),
//! [`list`](FakeApiServer::list), [`replace`](FakeApiServer::replace),
//! [`apply`](FakeApiServer::apply), [`update_status`](FakeApiServer::update_status),
//! [`apply_status`](FakeApiServer::apply_status), [`delete`](FakeApiServer::delete)) take
//! any `k8s_openapi` resource type. Custom resources (kube `CustomResource` types
//! implement `kube::Resource`, not `k8s_openapi::Resource`) use the `*_json` variants with
//! a `serde_json::Value` (`serde_json::to_value(&pool)`); the type is found from
//! `apiVersion` + `kind`, so the CRD must exist. Direct `create` keeps `.status` (a test
//! convenience; HTTP POST drops it for types with a status subresource); everything
//! else behaves like the HTTP verb. [`load_yaml`](FakeApiServer::load_yaml) applies a
//! multi-document YAML.
//!
//! # Faithful
//! - One global resourceVersion (a stringified integer) for every write; `uid`,
//!   `creationTimestamp`, `generation` (bumped when anything but metadata/status changes),
//!   `generateName`, finalizers (`deletionTimestamp` set, object removed when the last
//!   finalizer goes), `DeleteOptions` preconditions, no-op updates that write nothing.
//! - GET, LIST (label selectors with every operator; field selectors `=`, `==`, `!=`;
//!   `limit`/`continue` paging that serves every page from the snapshot of the first, so
//!   each object is returned exactly once; `resourceVersionMatch=Exact` from the event
//!   history, 410 once compacted), cluster-wide lists of namespaced types, POST (409
//!   `AlreadyExists`), PUT (409 `Conflict` on a stale resourceVersion), PATCH (merge, JSON
//!   patch, strategic merge treated as merge, server-side apply), DELETE, deletecollection.
//! - `/status` subresources: writes there change only `.status`; writes to the main
//!   resource of a type with a status subresource ignore `.status`.
//! - WATCH as chunked newline-delimited JSON with selectors, resourceVersion, bookmarks,
//!   `timeoutSeconds`, `sendInitialEvents` (streaming lists), and a too-old
//!   resourceVersion answered by an in-stream `ERROR` event with a 410 `Expired` Status
//!   (see [`watch`]).
//! - Errors are `Status` objects with the matching HTTP code.
//! - Discovery for kubectl (legacy shapes) and CustomResourceDefinitions that register
//!   their group/versions/kind/scope/status subresource when created (and marked
//!   `Established`), so custom resources can be listed, watched and written.
//!
//! # Simplified (say it plainly)
//! - Server-side apply: every list is atomic (an applied list replaces the whole list;
//!   no merge keys), maps merge key by key, ownership is per leaf path in
//!   `managedFields` (`fieldsV1`), conflicts with other managers give 409 unless `force`.
//!   Fields a manager stops applying are removed if no other manager owns them.
//!   Update operations (PUT/PATCH) record the changed paths for their manager (the
//!   `fieldManager` or the User-Agent's product).
//! - No schema validation, defaulting (no clusterIP allocation, no `type: ClusterIP`),
//!   pruning, admission, authentication or authorization. Namespaces need not exist.
//! - No garbage collection (ownerReferences), no namespace cascading deletion; deleting a
//!   CRD deletes its custom objects.
//! - Field selectors evaluate any dotted path (the real server allows a per-type list).
//! - core/v1 `events` and events.k8s.io/v1 `events` are stored separately.
//! - A multi-version CRD stores one object per name; it is served with the requested
//!   apiVersion, unconverted.
//! - Aggregated discovery and Table output are not implemented: the legacy discovery
//!   documents and plain JSON lists are returned (kubectl falls back to both); OpenAPI
//!   (`/openapi/v2`, `/openapi/v3`) answers 404.
//! - Only HTTP/1.1, no TLS.

// Errors are Kubernetes Status objects carried to the HTTP layer; their size does not
// matter in a test fake, and boxing them everywhere would only add noise.
#![allow(clippy::result_large_err)]

pub mod discovery;
pub mod error;
pub mod faults;
pub mod fieldpath;
pub mod http;
pub mod ops;
pub mod resources;
pub mod selectors;
pub mod store;
pub mod util;
pub mod watch;

mod direct;

pub use error::{ApiError, ApiResult};
pub use faults::RequestRecord;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Shared state behind a [`FakeApiServer`].
#[derive(Debug)]
pub struct Inner {
    /// Objects, resourceVersions, event history, registered types.
    pub store: store::Store,
    /// Fault injection and request log.
    pub faults: faults::Faults,
    bookmark_interval: Mutex<Duration>,
}

impl Inner {
    /// The current bookmark interval.
    pub fn bookmark_interval(&self) -> Duration {
        *self
            .bookmark_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake API server. Cheap to clone (an `Arc` inside); every clone, listener and the
/// direct API share one state.
#[derive(Clone, Debug)]
pub struct FakeApiServer {
    inner: Arc<Inner>,
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new()
    }
}

/// Default bound of the event history (events kept for watches and `Exact` lists).
pub const DEFAULT_HISTORY: usize = 10_000;

impl FakeApiServer {
    /// A server with the namespaces `default`, `kube-system`, `kube-public` and
    /// `kube-node-lease`, the built-in types, and bookmarks every second.
    pub fn new() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }

    /// Like [`new`](Self::new), keeping at most `events` events of history (older
    /// resourceVersions get 410).
    pub fn with_history(events: usize) -> Self {
        FakeApiServer {
            inner: Arc::new(Inner {
                store: store::Store::new(events.max(1)),
                faults: faults::Faults::default(),
                bookmark_interval: Mutex::new(Duration::from_secs(1)),
            }),
        }
    }

    /// The shared state (store, faults) for advanced use.
    pub fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Serve HTTP/1.1 on an already bound listener until it fails (runs forever
    /// otherwise; spawn it). The listener may come from another network namespace.
    pub async fn serve(&self, listener: std::net::TcpListener) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let (sock, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) if is_transient(&e) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if self.inner.faults.is_down() {
                drop(sock);
                continue;
            }
            let _ = sock.set_nodelay(true);
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let mut down = inner.faults.down_tx.subscribe();
                let svc_inner = inner.clone();
                let svc = service_fn(move |req| {
                    let inner = svc_inner.clone();
                    async move { Ok::<_, std::convert::Infallible>(http::handle(inner, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc);
                tokio::select! {
                    r = conn => if let Err(e) = r { log::debug!("fake-apiserver connection: {e}") },
                    _ = down.wait_for(|d| *d) => {}
                }
            });
        }
    }

    /// Bind `addr` (port 0 for any), serve it on a spawned task, return the bound address.
    /// Must be called inside a tokio runtime.
    pub async fn bind(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let l = std::net::TcpListener::bind(addr)?;
        let local = l.local_addr()?;
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.serve(l).await {
                log::warn!("fake-apiserver listener {local}: {e}");
            }
        });
        Ok(local)
    }

    /// A kubeconfig (cluster `fake`, user `fake` without credentials, context `fake`,
    /// namespace `default`) for `server_url` (e.g. `http://127.0.0.1:6443`), accepted by
    /// kube-rs and kubectl.
    pub fn kubeconfig(server_url: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server_url}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\npreferences: {{}}\n"
        )
    }

    /// Set how often watches with `allowWatchBookmarks=true` get a BOOKMARK (default 1 s;
    /// applies to watches started afterwards).
    pub fn set_bookmark_interval(&self, every: Duration) {
        *self
            .inner
            .bookmark_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = every.max(Duration::from_millis(10));
    }

    /// The current (last handed-out) resourceVersion.
    pub fn resource_version(&self) -> String {
        self.inner.store.lock().rv.to_string()
    }

    /// End every open watch stream abruptly (the chunked body is aborted, no final chunk).
    pub fn cut_watches(&self) {
        self.inner.faults.cut();
    }

    /// Forget the event history. Every resourceVersion handed out so far becomes too old:
    /// a watch from one gets a single in-stream `ERROR` event (410 `Expired`), an `Exact`
    /// list or a continue token a 410 reply. Open watches keep running unless they had
    /// not yet sent events that were dropped (then they get the in-stream 410); a watch
    /// whose last seen resourceVersion predates the compaction gets 410 when it
    /// reconnects, so `compact()` + [`cut_watches`](Self::cut_watches) forces a re-list.
    pub fn compact(&self) {
        self.inner.store.with(|st| st.compact());
    }

    /// The next `n` non-watch requests get an error Status with `code` (429 comes with
    /// `Retry-After: 1`, `TooManyRequests`; 500 `InternalError`; 503, 504 also known).
    pub fn fail_next(&self, n: usize, code: u16) {
        self.inner.faults.fail_next(n, code);
    }

    /// While down, new connections are accepted and closed at once, open connections are
    /// closed and watches cut. Back up, the same state is served.
    pub fn set_down(&self, down: bool) {
        self.inner.faults.set_down(down);
    }

    /// Every request served so far (method, path, query, response code).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.inner.faults.log()
    }

    /// Empty the request log (the list/watch counters are kept).
    pub fn clear_requests(&self) {
        self.inner.faults.clear_log();
    }

    /// Number of LIST requests for `resource` (`services`, `leases.coordination.k8s.io`,
    /// `ippools.lb.dev`: plural, dot, group).
    pub fn list_count(&self, resource: &str) -> u64 {
        self.inner.faults.counted("list", resource)
    }

    /// Number of change events (`ADDED`, `MODIFIED`, `DELETED` after the initial state;
    /// not bookmarks) sent on all watches of `resource`, summed over watchers: the fan-out
    /// a real API server would serve.
    pub fn watch_event_count(&self, resource: &str) -> u64 {
        self.inner.faults.counted("event", resource)
    }

    /// Number of WATCH requests for `resource` (same naming as [`list_count`](Self::list_count)).
    pub fn watch_count(&self, resource: &str) -> u64 {
        self.inner.faults.counted("watch", resource)
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    ) || e.raw_os_error().is_some_and(|c| c == 24 || c == 23)
}
