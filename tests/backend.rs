//! `lb-lab backend` end to end on loopback: the real binary, a quinn + h3 client and a plain TCP
//! client. The client trusts the server by the certificate fingerprint the binary prints (or by
//! a certificate the test generated and passed with --cert).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lb_common::quic_lb::{Config, MAX_SERVER_ID_LEN, decode};
use lb_lab::backend::{Whoami, cert_fingerprint, pem};
use lb_lab::probe::{self, H3Client, Trust};
use quinn::{ClientConfig, rustls::pki_types::CertificateDer};
use tokio::{net::UdpSocket, time::timeout};

mod support;

use support::lab_process::{Running, STEP};

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Runs `lb-lab backend ARGS` to completion (it must fail), returning (exit code, stderr).
fn run_failing(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(support::lab())
        .arg("backend")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + STEP;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "lb-lab backend {args:?} did not exit"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(!out.contains("listening"), "{args:?} started: {out}");
    (status.code().unwrap_or(-1), err)
}

/// Trusts the certificate with this SHA-256 fingerprint (`lb-lab probe --fingerprint`).
fn pinned_client(sha256: &str) -> ClientConfig {
    probe::client_config(&Trust::Fingerprint(sha256.to_string())).unwrap()
}

/// Trusts `root` as a certificate authority (webpki verification of name and chain).
fn rooted_client(root: CertificateDer<'static>) -> ClientConfig {
    probe::client_config(&Trust::Roots(vec![root])).unwrap()
}

fn std_socket() -> std::net::UdpSocket {
    std::net::UdpSocket::bind((LOOPBACK, 0)).unwrap()
}

/// An HTTP/3 client connection (`lb-lab probe`'s client) that panics on failure; derefs to
/// [`H3Client`] for its `endpoint` and `conn`.
struct H3(H3Client);

impl std::ops::Deref for H3 {
    type Target = H3Client;
    fn deref(&self) -> &H3Client {
        &self.0
    }
}

impl H3 {
    async fn connect(to: SocketAddr, config: ClientConfig) -> H3 {
        let local: SocketAddr = if to.is_ipv6() {
            "[::1]:0".parse().unwrap()
        } else {
            (LOOPBACK, 0).into()
        };
        H3(H3Client::connect(local, to, "localhost", config, STEP)
            .await
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}")))
    }

    async fn whoami(&mut self, path: &str) -> Whoami {
        self.0
            .whoami(path, STEP)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    async fn close(self) {
        self.0.close(STEP).await
    }
}

/// Polls `cond` every few milliseconds until it holds, failing after [`STEP`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One HTTP/1.1 exchange on an open connection: (status line, whoami body).
fn http1_get(s: &mut TcpStream, path: &str, extra: &str) -> (String, String) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (
        head.lines().next().unwrap().to_string(),
        String::from_utf8(body).unwrap(),
    )
}

#[tokio::test]
async fn http3_and_http1_on_one_port_say_who_answered() {
    let mut b = Running::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--name",
            "b1",
            "--server-id",
            "0A01",
            "--server-id-len",
            "2",
            "--cr-bits",
            "1",
            "--nonce-len",
            "6",
        ],
        &[],
    );
    // HTTP/3.
    let mut h3 = H3::connect(b.addr, pinned_client(&b.fingerprint)).await;
    let me = h3.endpoint.local_addr().unwrap();
    let w = h3.whoami("/some/path?q=1").await;
    assert_eq!(w.name, "b1");
    assert_eq!(w.server_id, "0a01");
    assert_eq!(w.protocol, "h3");
    assert_eq!(w.client, me);
    assert_eq!(w.local, Some(b.addr));
    assert_eq!((w.path_changes, w.requests_on_connection), (0, 1));
    assert_eq!(
        (w.method.as_str(), w.path.as_str()),
        ("GET", "/some/path?q=1")
    );
    assert_eq!(h3.whoami("/").await.requests_on_connection, 2);
    h3.close().await;

    // HTTP/1.1 on the same port, two requests on one connection.
    let addr = b.addr;
    let (w1, w2, me) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        let me = s.local_addr().unwrap();
        let (status, body1) = http1_get(&mut s, "/", "");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let (_, body2) = http1_get(&mut s, "/two", "Connection: close\r\n");
        // The server closes after `Connection: close`.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        (
            Whoami::parse(&body1).unwrap(),
            Whoami::parse(&body2).unwrap(),
            me,
        )
    })
    .await
    .unwrap();
    assert_eq!(w1.protocol, "http/1.1");
    assert_eq!((w1.name.as_str(), w1.server_id.as_str()), ("b1", "0a01"));
    assert_eq!((w1.client, w1.local), (me, Some(addr)));
    assert_eq!((w1.path_changes, w1.requests_on_connection), (0, 1));
    assert_eq!((w2.requests_on_connection, w2.path.as_str()), (2, "/two"));

    assert!(b.terminate().success(), "stderr:\n{}", b.stderr());
    assert!(b.stderr().contains("shut down"), "{}", b.stderr());
}

#[tokio::test]
async fn migration_is_counted_and_the_new_client_address_shown() {
    let b = Running::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--name",
            "m",
            "--server-id",
            "c0ffee",
        ],
        &[],
    );
    let mut h3 = H3::connect(b.addr, pinned_client(&b.fingerprint)).await;
    let first = h3.endpoint.local_addr().unwrap();
    let w = h3.whoami("/").await;
    assert_eq!(
        (w.client, w.path_changes, w.requests_on_connection),
        (first, 0, 1)
    );
    // The client needs a spare server CID to migrate to.
    let conn = h3.conn.clone();
    eventually("client received NEW_CONNECTION_ID", || {
        conn.stats().frame_rx.new_connection_id > 0
    })
    .await;
    h3.endpoint.rebind(std_socket()).unwrap();
    let second = h3.endpoint.local_addr().unwrap();
    assert_ne!(first, second);
    let w = h3.whoami("/").await;
    assert_eq!(w.client, second, "the server saw the new address");
    assert_eq!((w.path_changes, w.requests_on_connection), (1, 2));
    assert_eq!(w.server_id, "c0ffee");
    // No change without a move.
    let w = h3.whoami("/").await;
    assert_eq!((w.path_changes, w.requests_on_connection), (1, 3));
    h3.close().await;
}

/// What the relay saw: destination CIDs of client short headers, source CIDs of server long
/// headers (the CID the server chose for itself).
#[derive(Default)]
struct Seen {
    client_short_dcids: Vec<Vec<u8>>,
    server_long_scids: Vec<Vec<u8>>,
}

/// A UDP relay that plays lb: client → `front` → one back socket per client address → server
/// (so a migrated client reaches the server from a new address, as through a NAT), recording
/// CIDs.
async fn relay(front: UdpSocket, server: SocketAddr, cid_len: usize, seen: Arc<Mutex<Seen>>) {
    let front = Arc::new(front);
    let mut backs: std::collections::HashMap<SocketAddr, Arc<UdpSocket>> = Default::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = front.recv_from(&mut buf).await else {
            return;
        };
        let d = &buf[..n];
        if d[0] & 0x80 == 0 && n > cid_len {
            seen.lock()
                .unwrap()
                .client_short_dcids
                .push(d[1..1 + cid_len].to_vec());
        }
        let back = match backs.get(&from) {
            Some(b) => b.clone(),
            None => {
                let b = Arc::new(UdpSocket::bind((LOOPBACK, 0)).await.unwrap());
                b.connect(server).await.unwrap();
                let (b2, front, seen) = (b.clone(), front.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut down = vec![0u8; 65536];
                    while let Ok(n) = b2.recv(&mut down).await {
                        let d = &down[..n];
                        if d[0] & 0x80 != 0 && n > 6 {
                            let dl = usize::from(d[5]);
                            if n > 6 + dl {
                                let sl = usize::from(d[6 + dl]);
                                if n >= 7 + dl + sl {
                                    seen.lock()
                                        .unwrap()
                                        .server_long_scids
                                        .push(d[7 + dl..7 + dl + sl].to_vec());
                                }
                            }
                        }
                        let _ = front.send_to(d, from).await;
                    }
                });
                backs.insert(from, b.clone());
                b
            }
        };
        let _ = back.send(d).await;
    }
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lb-backend-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test]
async fn every_cid_the_client_uses_decodes_to_the_server_id() {
    const KEY: [u8; 16] = [
        0x8f, 0x95, 0xf0, 0x92, 0x45, 0x76, 0x5f, 0x80, 0x25, 0x69, 0x34, 0xe5, 0x0c, 0x66, 0x20,
        0x7f,
    ];
    let key_file = temp_path("quic-lb.key");
    std::fs::write(
        &key_file,
        format!("{}\n", lb_userspace::cli::cid::to_hex(&KEY)),
    )
    .unwrap();
    let sid = [0x31, 0x44, 0x1a];
    // Four-pass AES (server ID + nonce != 16), config 3, with a worker id, all from env.
    let cfg = Config::new(3, 3, 6, Some(KEY), true).unwrap();
    let b = Running::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--key-file",
            key_file.to_str().unwrap(),
        ],
        &[
            ("LB_BACKEND_NAME", "cids"),
            ("LB_QUIC_LB_SERVER_ID", "31441a"),
            ("LB_QUIC_LB_CR_BITS", "3"),
            ("LB_QUIC_LB_NONCE_LEN", "6"),
            ("LB_QUIC_LB_WORKER_ID", "5"),
            ("LB_QUIC_LB_WORKER_BITS", "4"),
        ],
    );
    let front = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let lb_addr = front.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let relay = tokio::spawn(relay(front, b.addr, cfg.cid_len(), seen.clone()));

    let mut h3 = H3::connect(lb_addr, pinned_client(&b.fingerprint)).await;
    let w = h3.whoami("/").await;
    assert_eq!((w.name.as_str(), w.server_id.as_str()), ("cids", "31441a"));
    let conn = h3.conn.clone();
    eventually("client received NEW_CONNECTION_ID", || {
        conn.stats().frame_rx.new_connection_id > 0
    })
    .await;
    h3.endpoint.rebind(std_socket()).unwrap();
    let w = h3.whoami("/").await;
    assert_eq!(
        w.path_changes, 1,
        "through the relay the server saw a new address"
    );
    let short = || -> std::collections::HashSet<Vec<u8>> {
        seen.lock()
            .unwrap()
            .client_short_dcids
            .iter()
            .cloned()
            .collect()
    };
    eventually("the client used a second server CID", || short().len() >= 2).await;
    h3.close().await;
    relay.abort();

    let seen = seen.lock().unwrap();
    let decodes = |cid: &[u8]| {
        let mut out = [0u8; MAX_SERVER_ID_LEN];
        let n = decode(&cfg, cid, &mut out).unwrap_or_else(|e| panic!("{cid:x?}: {e}"));
        assert_eq!(&out[..n], sid, "{cid:x?}");
    };
    assert!(!seen.server_long_scids.is_empty());
    for cid in seen
        .server_long_scids
        .iter()
        .chain(&seen.client_short_dcids)
    {
        assert_eq!(cid.len(), cfg.cid_len());
        assert_eq!(cid[0] >> 5, 3, "config rotation bits");
        decodes(cid);
    }
}

#[tokio::test]
async fn pem_certificate_keylog_qlog_and_graceful_shutdown() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (temp_path("cert.pem"), temp_path("key.pem"));
    std::fs::write(&cert_path, pem("CERTIFICATE", ck.cert.der())).unwrap();
    std::fs::write(
        &key_path,
        pem("PRIVATE KEY", &ck.signing_key.serialize_der()),
    )
    .unwrap();
    let (keylog, qlog, written) = (
        temp_path("keys.log"),
        temp_path("trace.sqlog"),
        temp_path("written.pem"),
    );
    let mut b = Running::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--server-id",
            "02",
            "--cert",
            cert_path.to_str().unwrap(),
            "--key-pem",
            key_path.to_str().unwrap(),
            "--qlog",
            qlog.to_str().unwrap(),
            "--write-cert",
            written.to_str().unwrap(),
        ],
        &[("SSLKEYLOGFILE", keylog.to_str().unwrap())],
    );
    assert_eq!(b.fingerprint, cert_fingerprint(ck.cert.der()));
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        pem("CERTIFICATE", ck.cert.der())
    );
    // Verified through a root store: the name and signature check out, not only a pin.
    let mut h3 = H3::connect(b.addr, rooted_client(ck.cert.der().clone())).await;
    assert_eq!(h3.whoami("/").await.server_id, "02");
    let keys = std::fs::read_to_string(&keylog).unwrap();
    assert!(keys.contains("CLIENT_TRAFFIC_SECRET_0 "), "{keys}");
    assert!(keys.contains("SERVER_HANDSHAKE_TRAFFIC_SECRET "), "{keys}");

    // SIGTERM closes the connection with H3_NO_ERROR and exits 0.
    let conn = h3.conn.clone();
    assert!(b.terminate().success(), "stderr:\n{}", b.stderr());
    let reason = timeout(STEP, conn.closed()).await.expect("closed in time");
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(u64::from(c.error_code), 0x100)
        }
        other => panic!("{other:?}"),
    }
    h3.close().await;
    let trace = std::fs::read_to_string(&qlog).unwrap();
    assert!(trace.contains("packet_received"), "{trace:.400}");
    assert!(trace.contains("packet_sent"));
}

#[test]
fn bad_arguments_exit_2_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--server-id", "0a01", "--server-id-len", "3"],
            "--server-id",
        ),
        (&["--server-id", "0a0"], "--server-id"),
        (&["--server-id", "zz"], "--server-id"),
        (&["--server-id", "01", "--key", "1234"], "--key"),
        (
            &["--server-id", "01", "--key-file", "/nonexistent/key"],
            "--key-file",
        ),
        (&["--server-id", "01", "--cr-bits", "7"], "--cr-bits"),
        (&["--server-id", "01", "--nonce-len", "3"], "--nonce-len"),
        (
            &["--server-id", "0102030405060708090a0b", "--nonce-len", "9"],
            "--server-id-len + --nonce-len",
        ),
        (
            &[
                "--server-id",
                "01",
                "--worker-bits",
                "2",
                "--worker-id",
                "4",
            ],
            "--worker",
        ),
        (&["--server-id", "01", "--cert", "/x.pem"], "--key-pem"),
        (
            &[
                "--server-id",
                "01",
                "--cert",
                "/nonexistent.pem",
                "--key-pem",
                "/k",
            ],
            "--cert",
        ),
        (&["--server-id", "01", "--listen", "nowhere"], "--listen"),
        (&[], "--server-id"),
    ];
    for (args, flag) in cases {
        let mut full = args.to_vec();
        if !args.contains(&"--listen") {
            full.extend(["--listen", "127.0.0.1:0"]);
        }
        let (code, err) = run_failing(&full);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?} should name {flag}: {err}");
    }
}

/// An independent HTTP/3 stack against the backend: aioquic (PyPI) through
/// tests/python/aioquic_client.py, trusting the certificate the backend wrote with --write-cert, with
/// a CID change between requests. Uses the Python named by LB_TEST_PYTHON, which
/// `cargo xtask test` points at the project's `.venv` (with aioquic installed by setup).
/// Without either, the test fails and says how to get it.
#[test]
fn aioquic_client_gets_whoami_over_several_cids() {
    let python = support::python_with("aioquic");
    let cert = temp_path("aioquic-cert.pem");
    let b = Running::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--name",
            "py",
            "--server-id",
            "0a01",
            "--write-cert",
            cert.to_str().unwrap(),
        ],
        &[],
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/aioquic_client.py");
    let mut child = Command::new(&python)
        .arg(script)
        .args(["--cafile", cert.to_str().unwrap(), "--requests", "3"])
        .args(["--change-cid", "--timeout", "10", "127.0.0.1"])
        .arg(b.addr.port().to_string())
        .arg("/py")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + 4 * STEP;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("aioquic client did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{out}\n{err}");
    let cfg = Config::new(0, 2, 8, None, true).unwrap();
    let mut dcids = std::collections::HashSet::new();
    let responses: Vec<&str> = out.split("--\n").filter(|r| !r.trim().is_empty()).collect();
    assert_eq!(responses.len(), 3, "{out}");
    for (i, r) in responses.iter().enumerate() {
        let w = Whoami::parse(r).unwrap();
        assert_eq!((w.name.as_str(), w.server_id.as_str()), ("py", "0a01"));
        assert_eq!((w.protocol.as_str(), w.path.as_str()), ("h3", "/py"));
        assert_eq!(w.requests_on_connection, i as u64 + 1);
        assert!(r.contains("status: 200\n"), "{r}");
        let dcid = r
            .lines()
            .find_map(|l| l.strip_prefix("dcid: "))
            .expect("dcid line");
        let dcid = lb_userspace::cli::cid::parse_hex("dcid", dcid).unwrap();
        let mut sid = [0u8; MAX_SERVER_ID_LEN];
        let n = decode(&cfg, &dcid, &mut sid).unwrap();
        assert_eq!(&sid[..n], [0x0a, 0x01]);
        dcids.insert(dcid);
    }
    assert_eq!(dcids.len(), 3, "a new CID for each request");
}

/// IPv6 loopback, both protocols, when the machine has ::1.
#[tokio::test]
async fn ipv6_loopback() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: no ::1 on this machine");
        return;
    }
    let b = Running::start(&["--listen", "[::1]:0", "--server-id", "06"], &[]);
    assert!(b.addr.is_ipv6());
    let mut h3 = H3::connect(b.addr, pinned_client(&b.fingerprint)).await;
    let w = h3.whoami("/").await;
    assert_eq!(w.client, h3.endpoint.local_addr().unwrap());
    assert_eq!((w.server_id.as_str(), w.local), ("06", Some(b.addr)));
    h3.close().await;
    let addr = b.addr;
    let w = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        let me = s.local_addr().unwrap();
        let w = Whoami::parse(&http1_get(&mut s, "/", "").1).unwrap();
        assert_eq!(w.client, me);
        w
    })
    .await
    .unwrap();
    assert_eq!((w.protocol.as_str(), w.local), ("http/1.1", Some(addr)));
}
