//! Fault injection and observation: cut watches, fail requests, go down; the request log
//! and per-resource list/watch counters.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

/// One served request, as recorded in the request log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method (`GET`, `PATCH`, ...).
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string (may be empty).
    pub query: String,
    /// HTTP status code of the response (200 for a watch, even one that ended with an
    /// in-stream error).
    pub code: u16,
    /// Was this a watch?
    pub watch: bool,
}

/// Fault state shared by all connections.
#[derive(Debug)]
pub struct Faults {
    /// Bumped by `cut_watches()`; every watch stream ends abruptly when it changes.
    pub cut_tx: watch::Sender<u64>,
    /// `true` while the server is "down".
    pub down_tx: watch::Sender<bool>,
    fail: Mutex<(usize, u16)>,
    log: Mutex<Vec<RequestRecord>>,
    counts: Mutex<HashMap<(&'static str, String), u64>>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            cut_tx: watch::channel(0).0,
            down_tx: watch::channel(false).0,
            fail: Mutex::new((0, 500)),
            log: Mutex::new(Vec::new()),
            counts: Mutex::new(HashMap::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Faults {
    /// End every open watch stream abruptly.
    pub fn cut(&self) {
        self.cut_tx.send_modify(|g| *g += 1);
    }

    /// Fail the next `n` non-watch requests with `code`.
    pub fn fail_next(&self, n: usize, code: u16) {
        *lock(&self.fail) = (n, code);
    }

    /// Consume one injected failure, if any is pending.
    pub fn take_failure(&self) -> Option<u16> {
        let mut f = lock(&self.fail);
        if f.0 == 0 {
            return None;
        }
        f.0 -= 1;
        Some(f.1)
    }

    /// Is the server down?
    pub fn is_down(&self) -> bool {
        *self.down_tx.borrow()
    }

    /// Go down (cutting watches and connections) or come back.
    pub fn set_down(&self, down: bool) {
        self.down_tx.send_replace(down);
        if down {
            self.cut();
        }
    }

    /// Append to the request log.
    pub fn record(&self, r: RequestRecord) {
        lock(&self.log).push(r);
    }

    /// Count a list or watch of a resource, or an event sent on a watch (`verb` is
    /// `"list"`, `"watch"` or `"event"`).
    pub fn count(&self, verb: &'static str, resource: &str) {
        *lock(&self.counts)
            .entry((verb, resource.to_string()))
            .or_default() += 1;
    }

    /// The request log so far.
    pub fn log(&self) -> Vec<RequestRecord> {
        lock(&self.log).clone()
    }

    /// Empty the request log (counters are kept).
    pub fn clear_log(&self) {
        lock(&self.log).clear();
    }

    /// How many `verb` requests for `resource`.
    pub fn counted(&self, verb: &'static str, resource: &str) -> u64 {
        lock(&self.counts)
            .get(&(verb, resource.to_string()))
            .copied()
            .unwrap_or(0)
    }
}
