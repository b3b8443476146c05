//! A real quinn server issuing QUIC-LB CIDs through `QuicLbCidGenerator`, and a quinn client,
//! on 127.0.0.1, with a UDP relay between them that plays the load balancer's part: it sees
//! every client-to-server datagram and records the destination CIDs, as lb's XDP program would
//! route them. In every mode (plaintext, single-pass, four-pass) the test completes a handshake,
//! exchanges data, makes the client migrate to a new socket (so it switches to a CID from a
//! NEW_CONNECTION_ID frame), exchanges data again, and checks that every CID the server issued
//! decodes to its server ID and that the client addressed the server only with those CIDs.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use lb_common::quic_lb::{Config, MAX_SERVER_ID_LEN, Mode, decode};
use lb_lab::quic_lb::QuicLbCidGenerator;
use quinn::{
    ClientConfig, Connection, ConnectionId, ConnectionIdGenerator, Endpoint, EndpointConfig,
    ServerConfig, TokioRuntime,
    rustls::{
        RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    },
};
use tokio::{net::UdpSocket, time::timeout};

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Bound on each step; on loopback each takes milliseconds.
const STEP: Duration = Duration::from_secs(10);

/// Records every CID the wrapped generator issues.
struct Recording {
    inner: QuicLbCidGenerator,
    issued: Arc<Mutex<Vec<ConnectionId>>>,
}

impl ConnectionIdGenerator for Recording {
    fn generate_cid(&mut self) -> ConnectionId {
        let cid = self.inner.generate_cid();
        self.issued.lock().unwrap().push(cid);
        cid
    }
    fn validate(&self, cid: &ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        self.inner.validate(cid)
    }
    fn cid_len(&self) -> usize {
        self.inner.cid_len()
    }
    fn cid_lifetime(&self) -> Option<Duration> {
        self.inner.cid_lifetime()
    }
}

/// What the relay saw in one client-to-server datagram (its first QUIC packet).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Short(Vec<u8>),
    /// Long header: v1 packet type (0 Initial, 1 0-RTT, 2 Handshake, 3 Retry) and DCID.
    Long(u8, Vec<u8>),
}

/// A UDP relay: client → `front` → `back` → server, and back to whichever client address
/// spoke last (so a migrated client keeps getting answers), recording DCIDs.
async fn relay(front: UdpSocket, back: UdpSocket, cid_len: usize, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut client: Option<SocketAddr> = None;
    let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
    loop {
        tokio::select! {
            r = front.recv_from(&mut up) => {
                let Ok((n, from)) = r else { return };
                client = Some(from);
                let d = &up[..n];
                let s = if d[0] & 0x80 == 0 {
                    Seen::Short(d[1..(1 + cid_len).min(n)].to_vec())
                } else {
                    let l = usize::from(d[5]);
                    Seen::Long((d[0] >> 4) & 0b11, d[6..(6 + l).min(n)].to_vec())
                };
                seen.lock().unwrap().push(s);
                let _ = back.send(d).await;
            }
            r = back.recv(&mut down) => {
                let Ok(n) = r else { return };
                if let Some(c) = client {
                    let _ = front.send_to(&down[..n], c).await;
                }
            }
        }
    }
}

fn tls() -> (ServerConfig, ClientConfig) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let server = ServerConfig::with_single_cert(vec![cert.clone()], key).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
    (server, client)
}

fn std_socket() -> std::net::UdpSocket {
    std::net::UdpSocket::bind((LOOPBACK, 0)).unwrap()
}

/// Echo server: answers each bidirectional stream with "echo: " + what it read.
async fn serve(endpoint: Endpoint) -> Connection {
    let incoming = endpoint.accept().await.expect("an incoming connection");
    let conn = incoming.await.expect("server handshake");
    let c = conn.clone();
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = c.accept_bi().await {
            let data = recv.read_to_end(1 << 16).await.unwrap();
            send.write_all(b"echo: ").await.unwrap();
            send.write_all(&data).await.unwrap();
            send.finish().unwrap();
        }
    });
    conn
}

async fn exchange(conn: &Connection, msg: &[u8]) {
    let (mut send, mut recv) = timeout(STEP, conn.open_bi()).await.unwrap().unwrap();
    send.write_all(msg).await.unwrap();
    send.finish().unwrap();
    let reply = timeout(STEP, recv.read_to_end(1 << 16))
        .await
        .expect("reply in time")
        .unwrap();
    assert_eq!(reply, [b"echo: ".as_slice(), msg].concat());
}

/// Polls `cond` every few milliseconds until it holds, failing after [`STEP`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A connected client and server with the relay between them.
struct Harness {
    server: Endpoint,
    client: Endpoint,
    conn: Connection,
    server_conn: Connection,
    issued: Arc<Mutex<Vec<ConnectionId>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    relay: tokio::task::JoinHandle<()>,
}

async fn connect(base: QuicLbCidGenerator) -> Harness {
    let cid_len = base.cid_len();
    let issued = Arc::new(Mutex::new(Vec::new()));
    let mut endpoint_config = EndpointConfig::default();
    {
        let issued = issued.clone();
        endpoint_config.cid_generator(move || {
            Box::new(Recording {
                inner: base.fresh(),
                issued: issued.clone(),
            })
        });
    }
    let (server_config, client_config) = tls();
    let server = Endpoint::new(
        endpoint_config,
        Some(server_config),
        std_socket(),
        Arc::new(TokioRuntime),
    )
    .unwrap();
    let server_addr = server.local_addr().unwrap();

    let front = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let lb_addr = front.local_addr().unwrap();
    let back = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    back.connect(server_addr).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let relay = tokio::spawn(relay(front, back, cid_len, seen.clone()));

    let mut client = Endpoint::client((LOOPBACK, 0).into()).unwrap();
    client.set_default_client_config(client_config);
    let serving = tokio::spawn(serve(server.clone()));
    let conn = timeout(STEP, client.connect(lb_addr, "localhost").unwrap())
        .await
        .expect("handshake in time")
        .expect("client handshake");
    let server_conn = timeout(STEP, serving).await.unwrap().unwrap();
    Harness {
        server,
        client,
        conn,
        server_conn,
        issued,
        seen,
        relay,
    }
}

impl Harness {
    async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        timeout(STEP, self.client.wait_idle()).await.unwrap();
        self.server.close(0u32.into(), b"done");
        self.relay.abort();
    }
}

async fn run_mode(cfg: Config, server_id: &[u8], expect: Mode) {
    assert_eq!(cfg.mode(), expect);
    let h = connect(QuicLbCidGenerator::new(cfg, server_id).unwrap()).await;
    let (conn, client, seen) = (h.conn.clone(), h.client.clone(), h.seen.clone());

    exchange(&conn, b"before migration").await;
    // The server sends NEW_CONNECTION_ID right after the handshake; the client needs a spare
    // CID to migrate to.
    eventually("client received NEW_CONNECTION_ID", || {
        conn.stats().frame_rx.new_connection_id > 0
    })
    .await;
    let short_before: HashSet<Vec<u8>> = short_dcids(&seen);
    assert_eq!(
        short_before.len(),
        1,
        "one CID before migrating: {short_before:x?}"
    );

    // Migrate: a new local socket; quinn then switches to an unused CID of the server's.
    client.rebind(std_socket()).unwrap();
    exchange(&conn, b"after migration").await;
    eventually("client uses a second server CID", || {
        short_dcids(&seen).len() >= 2
    })
    .await;

    let (issued, server_conn) = (h.issued.clone(), h.server_conn.clone());
    h.close().await;

    // (a) Every CID the server issued (its handshake SCID and every NEW_CONNECTION_ID) has
    // the configured length and decodes to the server ID.
    let issued = issued.lock().unwrap().clone();
    assert!(
        issued.len() >= 2,
        "the initial CID and at least one NEW_CONNECTION_ID: {issued:?}"
    );
    let checker = QuicLbCidGenerator::new(cfg, server_id).unwrap();
    for cid in &issued {
        assert_eq!(cid.len(), cfg.cid_len());
        assert_eq!(usize::from(cid[0] & 0x1f), cfg.cid_len() - 1, "length bits");
        let mut sid = [0u8; MAX_SERVER_ID_LEN];
        let n = decode(&cfg, cid, &mut sid).unwrap_or_else(|e| panic!("{cid:?}: {e}"));
        assert_eq!(&sid[..n], server_id, "{cid:?}");
        assert!(checker.validate(cid).is_ok());
    }
    let issued_set: HashSet<Vec<u8>> = issued.iter().map(|c| c.to_vec()).collect();
    // (c) No CID (so no server ID + nonce pair) was issued twice.
    assert_eq!(issued_set.len(), issued.len(), "a CID was issued twice");
    let tx = server_conn.stats().frame_tx.new_connection_id;
    assert!(
        tx >= 1 && issued.len() as u64 > tx,
        "NEW_CONNECTION_ID frames sent: {tx}"
    );

    // (b) The client addressed the server with issued CIDs only: every short header, every
    // Handshake packet, and every Initial after the first (which carries the client's own
    // random DCID, routed by the fallback).
    let seen = seen.lock().unwrap().clone();
    let mut initial_dcid = None;
    let mut short = HashSet::new();
    for s in &seen {
        match s {
            Seen::Short(d) => {
                assert!(
                    issued_set.contains(d),
                    "short header DCID {d:x?} not issued"
                );
                short.insert(d.clone());
            }
            Seen::Long(2, d) => assert!(issued_set.contains(d), "Handshake DCID {d:x?}"),
            Seen::Long(0, d) => {
                if issued_set.contains(d) {
                    continue;
                }
                let first = initial_dcid.get_or_insert_with(|| d.clone());
                assert_eq!(
                    first, d,
                    "Initial with a DCID neither the client's nor issued"
                );
            }
            Seen::Long(t, d) => panic!("unexpected long header type {t} DCID {d:x?}"),
        }
    }
    assert!(short.len() >= 2, "short-header DCIDs {short:x?}");
    assert!(initial_dcid.is_some(), "saw the client's first Initial");
}

fn short_dcids(seen: &Mutex<Vec<Seen>>) -> HashSet<Vec<u8>> {
    seen.lock()
        .unwrap()
        .iter()
        .filter_map(|s| match s {
            Seen::Short(d) => Some(d.clone()),
            Seen::Long(..) => None,
        })
        .collect()
}

const KEY: [u8; 16] = [
    0x8f, 0x95, 0xf0, 0x92, 0x45, 0x76, 0x5f, 0x80, 0x25, 0x69, 0x34, 0xe5, 0x0c, 0x66, 0x20, 0x7f,
];

#[tokio::test]
async fn plaintext() {
    let cfg = Config::new(1, 2, 6, None, true).unwrap();
    run_mode(cfg, &[0x0a, 0x07], Mode::Plaintext).await;
}

#[tokio::test]
async fn single_pass() {
    let cfg = Config::new(2, 4, 12, Some(KEY), true).unwrap();
    run_mode(cfg, &[0xc6, 0x33, 0x00, 0x12], Mode::SinglePass).await;
}

#[tokio::test]
async fn four_pass() {
    let cfg = Config::new(3, 3, 6, Some(KEY), true).unwrap();
    run_mode(cfg, &[0x31, 0x44, 0x1a], Mode::FourPass).await;
}

/// With a CID lifetime, a configuration rotation reaches an established connection: quinn
/// retires the old CIDs and issues new ones under the new configuration (new config ID and
/// key), and the client moves to them without a handshake.
#[tokio::test]
async fn rotation_takes_over_established_connections_with_cid_lifetime() {
    let old = Config::new(0, 3, 6, Some(KEY), true).unwrap();
    let new = Config::new(4, 3, 6, Some([0x5a; 16]), true).unwrap();
    let sid = [0x31, 0x44, 0x1a];
    let base = QuicLbCidGenerator::new(old, &sid)
        .unwrap()
        .with_lifetime(Some(Duration::from_millis(150)));
    let rotation = base.rotation();
    let h = connect(base).await;
    exchange(&h.conn, b"under the old configuration").await;
    let decodes = |cfg: &Config, cid: &[u8]| {
        let mut out = [0u8; MAX_SERVER_ID_LEN];
        decode(cfg, cid, &mut out).is_ok_and(|n| out[..n] == sid)
    };
    assert!(short_dcids(&h.seen).iter().all(|d| decodes(&old, d)));

    rotation.rotate(new, &sid).unwrap();
    // Keep traffic flowing until the client addresses the server with a new-config CID.
    let deadline = tokio::time::Instant::now() + STEP;
    let mut round = 0;
    while !short_dcids(&h.seen).iter().any(|d| decodes(&new, d)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new-config CID in use"
        );
        round += 1;
        exchange(&h.conn, format!("round {round}").as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    exchange(&h.conn, b"under the new configuration").await;
    let issued = h.issued.lock().unwrap().clone();
    let (n_old, n_new) = (
        issued.iter().filter(|c| decodes(&old, c)).count(),
        issued.iter().filter(|c| decodes(&new, c)).count(),
    );
    assert!(n_old >= 1 && n_new >= 1, "old {n_old}, new {n_new}");
    assert_eq!(
        n_old + n_new,
        issued.len(),
        "every issued CID decodes to the server"
    );
    // The client retired old-configuration CIDs at the server's request.
    assert!(h.server_conn.stats().frame_rx.retire_connection_id >= 1);
    h.close().await;
}
