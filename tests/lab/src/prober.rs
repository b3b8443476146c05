//! Kubelet's probes, for the labs: from a node's network namespace, a TCP connect and an
//! HTTP GET to each pod's serving port every 100 ms, as kubelet's readiness and liveness
//! probes do. The labs run one for their whole life, and the tests require every probe to
//! have succeeded: lb must leave the cluster's own traffic to its pods alone (a probe
//! answered from a VIP instead of the pod fails, and kubelet would take the pod out of
//! service).
//!
//! A probe is one TCP connection: connect, `GET /healthz HTTP/1.1`, a `200` status line
//! back, within [`PROBE_TIMEOUT`] (kubelet's default timeout is one second).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// How long one probe may take, connect to status line.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The interval the labs probe at.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Failures kept in full in a [`Tally`] (the count is always exact).
const FAILURES_KEPT: usize = 20;

/// One pod port to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
}

/// What the probes found so far.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub probes: u64,
    pub failed: u64,
    /// The first failures: (time since the prober started, target name, what went wrong).
    pub failures: Vec<(Duration, String, String)>,
    /// Probes per target name.
    pub per_target: Vec<(String, u64)>,
}

impl Tally {
    pub fn all_ok(&self) -> bool {
        self.probes > 0 && self.failed == 0
    }

    /// One line for a test message or the demo.
    pub fn summary(&self) -> String {
        if self.failed == 0 {
            format!("{} probes, all succeeded", self.probes)
        } else {
            let first: Vec<String> = self
                .failures
                .iter()
                .map(|(t, name, e)| format!("{name} at {:.1}s: {e}", t.as_secs_f64()))
                .collect();
            format!(
                "{} of {} probes failed; first: {}",
                self.failed,
                self.probes,
                first.join("; ")
            )
        }
    }

    fn record(&mut self, at: Duration, target: &Target, outcome: Result<(), String>) {
        self.probes += 1;
        match self.per_target.iter_mut().find(|(n, _)| *n == target.name) {
            Some((_, n)) => *n += 1,
            None => self.per_target.push((target.name.clone(), 1)),
        }
        if let Err(e) = outcome {
            self.failed += 1;
            if self.failures.len() < FAILURES_KEPT {
                self.failures.push((at, target.name.clone(), e));
            }
        }
    }
}

struct Shared {
    stop: AtomicBool,
    targets: Mutex<Vec<Target>>,
    tally: Mutex<Tally>,
}

/// Probes running on a thread of their own inside one network namespace; stopped on drop.
pub struct Prober {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    /// Probe `targets` from the namespace at `netns` (a `/run/netns/NAME` path) every
    /// `every`, until stopped.
    pub fn start(netns: PathBuf, targets: Vec<Target>, every: Duration) -> Result<Prober> {
        let ns = std::fs::File::open(&netns)
            .with_context(|| format!("opening network namespace {}", netns.display()))?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            targets: Mutex::new(targets),
            tally: Mutex::new(Tally::default()),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kubelet-probes".into())
            .spawn(move || {
                use std::os::fd::AsRawFd;
                // SAFETY: setns(2) on this thread only, with a namespace fd we hold; the
                // thread lives in that namespace until it ends.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let e = std::io::Error::last_os_error();
                    s.tally.lock().unwrap_or_else(|p| p.into_inner()).record(
                        Duration::ZERO,
                        &Target {
                            name: "prober".into(),
                            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                        },
                        Err(format!("entering {}: {e}", netns.display())),
                    );
                    return;
                }
                run(&s, every);
            })
            .context("starting the prober thread")?;
        Ok(Prober {
            shared,
            thread: Some(thread),
        })
    }

    /// Probe these from now on (a test that stops a pod on purpose takes it out first, as
    /// kubelet stops probing a deleted pod).
    pub fn set_targets(&self, targets: Vec<Target>) {
        *self
            .shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = targets;
    }

    pub fn targets(&self) -> Vec<Target> {
        self.shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The probes so far.
    pub fn tally(&self) -> Tally {
        self.shared
            .tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Wait until every target has been probed at least `n` more times than now (bounded:
    /// each round takes at most a probe timeout per target plus the interval).
    pub fn wait_rounds(&self, n: u64) -> Tally {
        let start: Vec<(String, u64)> = self.tally().per_target;
        let targets = self.targets();
        let deadline =
            Instant::now() + (PROBE_TIMEOUT * targets.len() as u32 + PROBE_EVERY) * n as u32 * 2;
        loop {
            let t = self.tally();
            let done = targets.iter().all(|target| {
                let before = start
                    .iter()
                    .find(|(n, _)| *n == target.name)
                    .map_or(0, |(_, c)| *c);
                let now = t
                    .per_target
                    .iter()
                    .find(|(n, _)| *n == target.name)
                    .map_or(0, |(_, c)| *c);
                now >= before + n
            });
            if done || Instant::now() >= deadline {
                return t;
            }
            std::thread::sleep(PROBE_EVERY / 4);
        }
    }

    /// Stop probing and return everything the probes found.
    pub fn stop(mut self) -> Tally {
        self.halt();
        self.tally()
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(s: &Shared, every: Duration) {
    let started = Instant::now();
    let mut next = Instant::now();
    while !s.stop.load(Ordering::Relaxed) {
        let targets = s.targets.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for t in &targets {
            let outcome = probe(t.addr);
            s.tally
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(started.elapsed(), t, outcome);
        }
        next += every;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// One probe: TCP connect, GET, a 200 status line.
pub fn probe(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        .map_err(|e| format!("TCP connect to {addr}: {e}"))?;
    let left = deadline.saturating_duration_since(Instant::now());
    let left = left.max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left)).map_err(|e| e.to_string())?;
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/lb-lab\r\n\
         Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("sending the GET to {addr}: {e}"))?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)
        .map_err(|e| format!("reading the status line from {addr}: {e}"))?;
    if &head[..] != b"HTTP/1.1 200" {
        return Err(format!(
            "status line from {addr}: {:?}",
            String::from_utf8_lossy(&head)
        ));
    }
    Ok(())
}
