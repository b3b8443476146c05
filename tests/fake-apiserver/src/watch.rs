//! Watch streams: newline-delimited JSON watch events over a chunked HTTP body.
//!
//! Semantics follow the real API server's watch cache:
//! - `resourceVersion` unset or `"0"`: synthetic `ADDED` events for every current object
//!   (unless `sendInitialEvents=false`), then changes.
//! - `resourceVersion=N`: every change strictly after N; if N is older than the kept
//!   history, one `ERROR` event (a `Status` with code 410, reason `Expired`) and the stream
//!   ends. The HTTP status is still 200, as with the real server (kube-rs then re-lists;
//!   an HTTP 410 reply would make it retry the same watch forever).
//! - `sendInitialEvents=true` (needs `resourceVersionMatch=NotOlderThan`): initial `ADDED`
//!   events, then a `BOOKMARK` annotated `k8s.io/initial-events-end: "true"`.
//! - `allowWatchBookmarks=true`: a `BOOKMARK` (kind, apiVersion, metadata.resourceVersion
//!   only) every bookmark interval, carrying the resourceVersion of the last change the
//!   stream has passed (matching or not).
//! - An object that starts / stops matching the selectors is sent as `ADDED` / `DELETED`.
//! - `timeoutSeconds`: the stream ends cleanly after that long.

use crate::error::ApiError;
use crate::resources::ResourceInfo;
use crate::selectors::Selectors;
use crate::store::{EventType, Store};
use crate::{Inner, ops};
use bytes::Bytes;
use hyper::body::Frame;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Error type of the watch body stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The parameters of one watch request.
#[derive(Clone, Debug, Default)]
pub struct WatchParams {
    /// Namespace scope (None: all namespaces / cluster-scoped).
    pub namespace: Option<String>,
    /// Selectors.
    pub selectors: Selectors,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub version_match: Option<String>,
    /// `sendInitialEvents`.
    pub send_initial_events: Option<bool>,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
}

impl WatchParams {
    /// Reject invalid combinations before the stream starts (422 like the real server).
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.send_initial_events == Some(true)
            && self.version_match.as_deref() != Some("NotOlderThan")
        {
            return Err(ApiError::invalid(
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if let Some(rv) = self.resource_version.as_deref()
            && !rv.is_empty()
            && rv.parse::<u64>().is_err()
        {
            return Err(ApiError::bad_request(format!(
                "invalid resource version: {rv:?}"
            )));
        }
        Ok(())
    }
}

type Chunk = Result<Frame<Bytes>, BoxError>;

fn line(v: &Value) -> Chunk {
    let mut s = serde_json::to_vec(v).expect("JSON values serialize");
    s.push(b'\n');
    Ok(Frame::data(Bytes::from(s)))
}

fn bookmark(res: &ResourceInfo, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version(), "metadata": meta}})
}

fn gone(message: String) -> Value {
    json!({"type": "ERROR", "object": ApiError::expired(message).to_status()})
}

/// Start a watch; the returned receiver yields the body's frames.
pub fn start(inner: Arc<Inner>, res: Arc<ResourceInfo>, p: WatchParams) -> mpsc::Receiver<Chunk> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(run(inner, res, p, tx));
    rx
}

async fn run(inner: Arc<Inner>, res: Arc<ResourceInfo>, p: WatchParams, tx: mpsc::Sender<Chunk>) {
    let store: &Store = &inner.store;
    let mut rv_rx = store.subscribe();
    let mut cut_rx = inner.faults.cut_tx.subscribe();
    cut_rx.borrow_and_update();
    rv_rx.borrow_and_update();
    let key = res.key();
    let ns = p.namespace.clone().filter(|_| res.namespaced);
    let in_scope = |obj_ns: &str| ns.as_deref().is_none_or(|n| n == obj_ns);

    // Initial state.
    let rv = p.resource_version.clone().unwrap_or_default();
    let want_initial = match p.send_initial_events {
        Some(b) => b,
        None => rv.is_empty() || rv == "0",
    };
    let (initial, mut cursor) = {
        let st = store.lock();
        if want_initial {
            let objs: Vec<Value> = st
                .objects
                .range((key.clone(), String::new(), String::new())..)
                .take_while(|((k, _, _), _)| *k == key)
                .filter(|((_, n, _), o)| in_scope(n) && p.selectors.matches(o))
                .map(|(_, o)| ops::present(&res, o.clone()))
                .collect();
            (Ok(objs), st.rv)
        } else if rv.is_empty() || rv == "0" {
            (Ok(Vec::new()), st.rv)
        } else {
            let n: u64 = rv.parse().unwrap_or(0);
            if n < st.floor {
                (
                    Err(format!("too old resource version: {n} ({})", st.floor)),
                    n,
                )
            } else {
                (Ok(Vec::new()), n.min(st.rv))
            }
        }
    };
    let initial = match initial {
        Ok(v) => v,
        Err(msg) => {
            let _ = tx.send(line(&gone(msg))).await;
            return;
        }
    };
    for obj in initial {
        if tx
            .send(line(&json!({"type": "ADDED", "object": obj})))
            .await
            .is_err()
        {
            return;
        }
    }
    if p.send_initial_events == Some(true)
        && tx.send(line(&bookmark(&res, cursor, true))).await.is_err()
    {
        return;
    }

    let bookmark_every = inner.bookmark_interval();
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + bookmark_every, bookmark_every);
    let deadline = p.timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        rv_rx.borrow_and_update();
        let evs = store.lock().events_after(cursor);
        let Some(evs) = evs else {
            let msg =
                format!("too old resource version: {cursor} (the event history was compacted)");
            let _ = tx.send(line(&gone(msg))).await;
            return;
        };
        for e in evs {
            cursor = e.rv;
            if e.key != key || !in_scope(&e.namespace) {
                continue;
            }
            let now = p.selectors.matches(&e.obj);
            let before = e.prev.as_ref().is_some_and(|o| p.selectors.matches(o));
            let ty = match (e.kind, before, now) {
                (EventType::Added, _, true) => "ADDED",
                (EventType::Modified, true, true) => "MODIFIED",
                (EventType::Modified, false, true) => "ADDED",
                (EventType::Modified, true, false) => "DELETED",
                (EventType::Deleted, true, _) => "DELETED",
                _ => continue,
            };
            let obj = ops::present(&res, e.obj.clone());
            if tx
                .send(line(&json!({"type": ty, "object": obj})))
                .await
                .is_err()
            {
                return;
            }
            inner.faults.count("event", &key);
        }
        tokio::select! {
            r = rv_rx.changed() => if r.is_err() { return },
            _ = cut_rx.changed() => {
                let _ = tx.send(Err("watch cut by fault injection".into())).await;
                return;
            }
            _ = ticker.tick(), if p.bookmarks => {
                if tx.send(line(&bookmark(&res, cursor, false))).await.is_err() {
                    return;
                }
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => return,
            _ = tx.closed() => return,
        }
    }
}
