//! The object store: every object as JSON, one global resourceVersion counter and a
//! bounded history of change events that watches and consistent (paged / `Exact`) lists
//! read from.

use crate::error::{ApiError, ApiResult};
use crate::resources::{Registry, ResourceInfo};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// The kind of a change event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted.
    Deleted,
}

impl EventType {
    /// The watch event `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion of this change.
    pub rv: u64,
    /// Storage key of the resource type (`services`, `ippools.lb.dev`).
    pub key: String,
    /// Namespace (`""` for cluster-scoped).
    pub namespace: String,
    /// What happened.
    pub kind: EventType,
    /// The object before (None for Added).
    pub prev: Option<Value>,
    /// The object after (for Deleted: the last state, carrying the deletion's RV).
    pub obj: Value,
}

/// Object map key: (resource key, namespace, name).
pub type ObjKey = (String, String, String);

/// Everything behind the store's lock.
#[derive(Debug)]
pub struct State {
    /// The last resourceVersion handed out.
    pub rv: u64,
    /// Served resource types.
    pub registry: Registry,
    /// Live objects, ordered like etcd keys (type, namespace, name).
    pub objects: BTreeMap<ObjKey, Value>,
    /// Events newer than `dropped_upto`, oldest first.
    pub history: VecDeque<Arc<Event>>,
    /// Bound on `history`.
    pub max_history: usize,
    /// Highest RV of an event no longer in `history` (an open watch behind it missed events).
    pub dropped_upto: u64,
    /// Lowest RV a new watch or an `Exact` list may start from.
    pub floor: u64,
}

/// The store shared by all listeners and the direct API.
#[derive(Debug)]
pub struct Store {
    state: Mutex<State>,
    rv_tx: watch::Sender<u64>,
}

impl Store {
    /// An empty store with the default namespaces.
    pub fn new(max_history: usize) -> Self {
        let mut st = State {
            rv: 0,
            registry: Registry::new(),
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            max_history,
            dropped_upto: 0,
            floor: 0,
        };
        let ns = st
            .registry
            .find("", "v1", "namespaces")
            .expect("namespaces are built in");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "uid": crate::util::uid(),
                    "creationTimestamp": crate::util::now_rfc3339(),
                    "labels": {"kubernetes.io/metadata.name": name}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            });
            st.put(&ns, obj, None);
        }
        let rv = st.rv;
        Store {
            state: Mutex::new(st),
            rv_tx: watch::channel(rv).0,
        }
    }

    /// Run `f` under the lock; wake watchers if it wrote anything.
    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut st = self.lock();
        let before = st.rv;
        let r = f(&mut st);
        let after = st.rv;
        drop(st);
        if after != before {
            self.rv_tx.send_replace(after);
        }
        r
    }

    /// The raw lock (no notification).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that changes whenever a write commits.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }
}

impl State {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn push(&mut self, ev: Event) {
        self.history.push_back(Arc::new(ev));
        while self.history.len() > self.max_history {
            if let Some(old) = self.history.pop_front() {
                self.dropped_upto = old.rv;
                self.floor = self.floor.max(old.rv);
            }
        }
    }

    /// Store `obj` (created if `prev` is None), stamping a new resourceVersion; returns it.
    pub fn put(&mut self, res: &ResourceInfo, mut obj: Value, prev: Option<Value>) -> Value {
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.objects
            .insert((res.key(), ns.clone(), name), obj.clone());
        let kind = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.push(Event {
            rv,
            key: res.key(),
            namespace: ns,
            kind,
            prev,
            obj: obj.clone(),
        });
        obj
    }

    /// Delete an object; returns its last state stamped with the deletion's resourceVersion.
    pub fn remove(&mut self, key: &str, ns: &str, name: &str) -> Option<Value> {
        let old = self
            .objects
            .remove(&(key.to_string(), ns.to_string(), name.to_string()))?;
        let rv = self.next_rv();
        let mut obj = old.clone();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.push(Event {
            rv,
            key: key.to_string(),
            namespace: ns.to_string(),
            kind: EventType::Deleted,
            prev: Some(old),
            obj: obj.clone(),
        });
        Some(obj)
    }

    /// Look up a live object.
    pub fn get(&self, key: &str, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(key.to_string(), ns.to_string(), name.to_string()))
    }
    /// Visit the objects of `key` as they were at `rv`, in key order, those after
    /// `start_after` (namespace, name) only, by reference; `f` returns false to stop. A page
    /// of a list copies just the objects it returns: a copy of every object per page of
    /// 500 made each initial list of 10,000 objects copy 200,000 of them (the control-plane
    /// bench's lists took 20 s).
    pub fn visit_at(
        &self,
        key: &str,
        rv: u64,
        start_after: Option<(&str, &str)>,
        mut f: impl FnMut((&str, &str), &Value) -> bool,
    ) -> ApiResult<()> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        if rv < self.floor {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                self.floor
            )));
        }
        // Objects changed after `rv`, as they were at `rv` (None: absent then). Newest
        // first, so the oldest change after `rv` has the last word.
        let mut then: BTreeMap<(&str, &str), Option<&Value>> = BTreeMap::new();
        for ev in self.history.iter().rev().take_while(|e| e.rv > rv) {
            if ev.key != key {
                continue;
            }
            let name = ev.obj["metadata"]["name"].as_str().unwrap_or_default();
            then.insert((ev.namespace.as_str(), name), ev.prev.as_ref());
        }
        let lower: ObjKey = match start_after {
            Some((ns, n)) => (key.to_owned(), ns.to_owned(), n.to_owned()),
            None => (key.to_owned(), String::new(), String::new()),
        };
        let bound = if start_after.is_some() {
            Excluded(&lower)
        } else {
            Included(&lower)
        };
        let live = self
            .objects
            .range::<ObjKey, _>((bound, Unbounded))
            .take_while(|((k, _, _), _)| k == key)
            .map(|((_, ns, n), v)| ((ns.as_str(), n.as_str()), v));
        let mut changed = then
            .iter()
            .filter(|(k, _)| start_after.is_none_or(|s| **k > s))
            .peekable();
        for (k, v) in live {
            while let Some((ck, cv)) = changed.next_if(|(ck, _)| **ck < k) {
                if let Some(cv) = cv
                    && !f(*ck, cv)
                {
                    return Ok(());
                }
            }
            let v = match changed.next_if(|(ck, _)| **ck == k) {
                Some((_, then_v)) => *then_v,
                None => Some(v),
            };
            if let Some(v) = v
                && !f(k, v)
            {
                return Ok(());
            }
        }
        for (ck, cv) in changed {
            if let Some(cv) = cv
                && !f(*ck, cv)
            {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Events after `cursor`, or None if some of them were dropped from the history.
    pub fn events_after(&self, cursor: u64) -> Option<Vec<Arc<Event>>> {
        if cursor < self.dropped_upto {
            return None;
        }
        let start = self.history.partition_point(|e| e.rv <= cursor);
        Some(self.history.range(start..).cloned().collect())
    }

    /// Forget the event history: every resourceVersion handed out so far becomes too old
    /// for a new watch (in-stream 410) or an `Exact` list (410 reply).
    pub fn compact(&mut self) {
        if let Some(last) = self.history.back() {
            self.dropped_upto = last.rv;
        }
        self.history.clear();
        let rv = self.next_rv();
        self.floor = rv;
    }
}
