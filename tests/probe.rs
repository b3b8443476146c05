//! `lb-lab probe` end to end on loopback: the real binary against real `lb-lab backend` processes,
//! directly and through a UDP relay (in the test) that either keeps a migrated connection on
//! its backend, as lb does, or sends it to another backend, as a 4-tuple hash would.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use serde_json::{Value, json};
use tokio::net::UdpSocket;

mod support;

use support::lab_process::Running;

/// Bound on a whole probe run.
const PROBE_LIMIT: Duration = Duration::from_secs(60);
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A running `lb-lab backend` named `name` with QUIC-LB server ID `server_id`, on loopback.
fn backend(name: &str, server_id: &str) -> Running {
    Running::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--name",
            name,
            "--server-id",
            server_id,
        ],
        &[],
    )
}

/// What a probe run returned.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "probe stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `lb-lab probe ARGS` to completion (bounded by PROBE_LIMIT).
async fn probe(args: &[&str]) -> Run {
    let child = tokio::process::Command::new(support::lab())
        .arg("probe")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn lb-lab probe");
    let out = tokio::time::timeout(PROBE_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("lb-lab probe {args:?} did not finish in {PROBE_LIMIT:?}"))
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A UDP relay in front of two servers, one back socket per client address (so the servers
/// see a new address when a client migrates, as through a NAT). A client address whose first
/// packet is a long header (a handshake) goes to `first`; one whose first packet is a short
/// header (a connection that migrated to this address) goes to `migrated`. With `migrated ==
/// first` this is lb routing by connection ID; with another server, it is a 4-tuple hash that
/// picked another backend for the new address.
async fn relay(front: UdpSocket, first: SocketAddr, migrated: SocketAddr) {
    let front = Arc::new(front);
    let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = front.recv_from(&mut buf).await else {
            return;
        };
        let d = &buf[..n];
        let back = match backs.get(&from) {
            Some(b) => b.clone(),
            None => {
                let server = if n > 0 && d[0] & 0x80 != 0 {
                    first
                } else {
                    migrated
                };
                let b = Arc::new(UdpSocket::bind((LOOPBACK, 0)).await.unwrap());
                b.connect(server).await.unwrap();
                let (b2, front) = (b.clone(), front.clone());
                tokio::spawn(async move {
                    let mut down = vec![0u8; 65536];
                    while let Ok(n) = b2.recv(&mut down).await {
                        let _ = front.send_to(&down[..n], from).await;
                    }
                });
                backs.insert(from, b.clone());
                b
            }
        };
        let _ = back.send(d).await;
    }
}

/// Starts a relay on loopback; returns its address and the task (abort it when done).
async fn start_relay(
    first: SocketAddr,
    migrated: SocketAddr,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let front = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let addr = front.local_addr().unwrap();
    (addr, tokio::spawn(relay(front, first, migrated)))
}

#[tokio::test]
async fn h3_every_migrated_connection_survives_on_one_backend() {
    let b = backend("b1", "0a01");
    let target = b.addr.to_string();
    let run = probe(&[
        "h3",
        "--target",
        &target,
        "--fingerprint",
        &b.fingerprint,
        "--connections",
        "10",
        "--requests-per-phase",
        "2",
        "--migrate",
        "--json",
    ])
    .await;
    assert_eq!(run.code, 0, "{run}\nbackend stderr:\n{}", b.stderr());
    let j = run.json();
    assert_eq!(j["connections"], 10, "{run}");
    assert_eq!(j["succeeded"], 10, "{run}");
    assert_eq!(j["migrated"], 10, "{run}");
    assert_eq!(j["survived"], 10, "{run}");
    assert_eq!(j["per_backend"], json!({"b1": 10}), "{run}");
    assert_eq!(j["failures"], json!([]), "{run}");
    let results = j["results"].as_array().unwrap();
    assert_eq!(results.len(), 10);
    let mut clients = std::collections::HashSet::new();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["conn"], i);
        assert_eq!((&r["ok"], &r["migrated"]), (&json!(true), &json!(true)));
        assert_eq!(
            (&r["backend_before"], &r["backend_after"]),
            (&json!("b1"), &json!("b1"))
        );
        assert_eq!(r["server_id_after"], "0a01");
        // The backend saw each connection move to a new client port.
        let (before, after) = (
            r["client_before"].as_str().unwrap(),
            r["client_after"].as_str().unwrap(),
        );
        assert_ne!(before, after, "{r}");
        for c in [before, after] {
            let a: SocketAddr = c.parse().unwrap();
            assert_eq!(a.ip(), LOOPBACK);
            assert!(clients.insert(a), "client address {a} used twice");
        }
    }

    // The readable summary says the same.
    let run = probe(&[
        "h3",
        "--target",
        &target,
        "--fingerprint",
        &b.fingerprint,
        "--connections",
        "3",
        "--requests-per-phase",
        "1",
        "--migrate",
    ])
    .await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("  b1: 3\n"), "{run}");
    assert!(run.stdout.contains("survived migration 3/3"), "{run}");
}

#[tokio::test]
async fn h3_probe_tells_survival_from_a_migration_to_another_backend() {
    let a = backend("alpha", "0a01");
    let b = backend("beta", "0b02");
    assert_ne!(a.fingerprint, b.fingerprint);
    let args = |target: &str| -> Vec<String> {
        [
            "h3",
            "--target",
            target,
            "--insecure",
            "--connections",
            "3",
            "--requests-per-phase",
            "2",
            "--migrate",
            "--timeout-ms",
            "500",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    // Control: the relay keeps migrated connections on their backend (as lb does): survived.
    let (relay_addr, relay) = start_relay(a.addr, a.addr).await;
    let target = relay_addr.to_string();
    let argv = args(&target);
    let run = probe(&argv.iter().map(String::as_str).collect::<Vec<_>>()).await;
    relay.abort();
    assert_eq!(run.code, 0, "{run}");
    let j = run.json();
    assert_eq!(
        (&j["migrated"], &j["survived"]),
        (&json!(3), &json!(3)),
        "{run}"
    );
    assert_eq!(j["per_backend"], json!({"alpha": 3}));

    // The relay sends every migrated connection's new address to the other backend: broke.
    let (relay_addr, relay) = start_relay(a.addr, b.addr).await;
    let target = relay_addr.to_string();
    let argv = args(&target);
    let run = probe(&argv.iter().map(String::as_str).collect::<Vec<_>>()).await;
    relay.abort();
    assert_eq!(run.code, 1, "{run}");
    let j = run.json();
    assert_eq!(j["connections"], 3, "{run}");
    assert_eq!(j["migrated"], 3, "{run}");
    assert_eq!(j["survived"], 0, "{run}");
    assert_eq!(j["succeeded"], 0, "{run}");
    assert_eq!(j["per_backend"], json!({"alpha": 3}), "{run}");
    let failures = j["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3, "{run}");
    for (i, f) in failures.iter().enumerate() {
        assert_eq!(f["conn"], i);
        assert_eq!(f["phase"], "after", "{run}");
        // beta has no state for the connection: the requests go unanswered.
        assert!(
            ["timeout", "connection"].contains(&f["kind"].as_str().unwrap()),
            "{run}"
        );
        assert!(!f["error"].as_str().unwrap().is_empty());
    }
    for r in j["results"].as_array().unwrap() {
        assert_eq!(r["backend_before"], "alpha");
        assert_eq!(r["backend_after"], Value::Null);
        assert_eq!(r["ok"], false);
    }
}

#[tokio::test]
async fn h3_failures_and_bad_arguments() {
    let b = backend("b1", "01");
    let target = b.addr.to_string();
    // Another certificate pinned: the handshake fails, before any request; exit 1.
    let wrong = "ab".repeat(32);
    let run = probe(&[
        "h3",
        "--target",
        &target,
        "--fingerprint",
        &wrong,
        "--connections",
        "2",
        "--json",
    ])
    .await;
    assert_eq!(run.code, 1, "{run}");
    let j = run.json();
    assert_eq!(j["succeeded"], 0);
    assert_eq!(j["per_backend"], json!({}));
    for f in j["failures"].as_array().unwrap() {
        assert_eq!(
            (&f["phase"], &f["kind"]),
            (&json!("before"), &json!("handshake")),
            "{run}"
        );
    }
    assert_eq!(j["failures"].as_array().unwrap().len(), 2);

    // Bad arguments: exit 2, naming the flag.
    let dir = std::env::temp_dir().join(format!("lb-probe-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bogus = dir.join("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();

    let cases: &[(&[&str], &str)] = &[
        (&["h3", "--target", &target], "--insecure"),
        (
            &[
                "h3",
                "--target",
                &target,
                "--insecure",
                "--fingerprint",
                &wrong,
            ],
            "--fingerprint",
        ),
        (
            &["h3", "--target", &target, "--fingerprint", "abcd"],
            "--fingerprint",
        ),
        (
            &[
                "h3",
                "--target",
                &target,
                "--cafile",
                bogus.to_str().unwrap(),
            ],
            "--cafile",
        ),
        (
            &["h3", "--target", &target, "--cafile", "/nonexistent.pem"],
            "--cafile",
        ),
        (
            &[
                "h3",
                "--target",
                &target,
                "--insecure",
                "--connections",
                "0",
            ],
            "--connections",
        ),
        (
            &[
                "h3",
                "--target",
                &target,
                "--insecure",
                "--requests-per-phase",
                "0",
            ],
            "--requests-per-phase",
        ),
        (
            &["h3", "--target", &target, "--insecure", "--bind", "::"],
            "--bind",
        ),
        (&["h3", "--target", "nowhere", "--insecure"], "--target"),
        (
            &["http1", "--target", &target, "--requests", "0"],
            "--requests",
        ),
        (
            &["http1", "--target", &target, "--timeout-ms", "0"],
            "--timeout-ms",
        ),
        (&["nonsense"], "nonsense"),
    ];
    for (args, flag) in cases {
        let run = probe(args).await;
        assert_eq!(run.code, 2, "{args:?}: {run}");
        assert!(
            run.stderr.contains(flag),
            "{args:?} should name {flag}: {run}"
        );
    }
}

#[tokio::test]
async fn http1_counts_requests_per_backend() {
    let b = backend("web", "0c");
    let target = b.addr.to_string();
    let run = probe(&["http1", "--target", &target, "--requests", "7", "--json"]).await;
    assert_eq!(run.code, 0, "{run}");
    let j = run.json();
    assert_eq!((&j["requests"], &j["succeeded"]), (&json!(7), &json!(7)));
    assert_eq!(j["per_backend"], json!({"web": 7}));
    assert_eq!(j["failures"], json!([]));
    let results = j["results"].as_array().unwrap();
    assert_eq!(results.len(), 7);
    let clients: std::collections::HashSet<&str> = results
        .iter()
        .map(|r| {
            assert_eq!(
                (&r["backend"], &r["server_id"]),
                (&json!("web"), &json!("0c"))
            );
            r["client"].as_str().unwrap()
        })
        .collect();
    assert_eq!(clients.len(), 7, "a new TCP connection for each request");

    let run = probe(&["http1", "--target", &target, "--requests", "3"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("  web: 3\n"), "{run}");
    assert!(run.stdout.contains("succeeded 3/3"), "{run}");

    // Nothing listening: every request fails, exit 1.
    let closed = {
        let l = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
        l.local_addr().unwrap().to_string()
    };
    let run = probe(&["http1", "--target", &closed, "--requests", "2", "--json"]).await;
    assert_eq!(run.code, 1, "{run}");
    let j = run.json();
    assert_eq!(j["succeeded"], 0);
    assert_eq!(j["failures"].as_array().unwrap().len(), 2, "{run}");
}
