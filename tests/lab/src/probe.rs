//! `lb-lab probe`: the client the demo and the end-to-end tests drive through the load balancer.
//! It asks `lb-lab backend` whoami servers who answered, and tells whether QUIC connections survive
//! a client migration (a new local UDP port, as after a NAT rebinding).
//!
//! - `lb-lab probe h3`: N HTTP/3 connections (quinn, ALPN h3), each on its own UDP socket, K
//!   `GET /` per phase. With `--migrate` each connection's endpoint is rebound to a new UDP
//!   socket (a new local port, [`Endpoint::rebind`]) once it holds a spare connection ID, and
//!   does K more requests. A migrated connection *survived* when every request after the move
//!   succeeded and was answered by the backend (whoami `name`) that answered before it; it
//!   *broke* otherwise (a timeout, the connection closed, or another backend answered).
//! - `lb-lab probe http1`: N HTTP/1.1 `GET`s over TCP, each on a new connection
//!   (`Connection: close`), so through lb every request is a new flow.
//!
//! # JSON (`--json`)
//!
//! `lb-lab probe h3`:
//!
//! ```text
//! {"target": "198.18.0.1:443", "connections": 10, "requests_per_phase": 2, "migrate": true,
//!  "succeeded": 10, "migrated": 10, "survived": 10,
//!  "per_backend": {"b1": 6, "b2": 4},
//!  "failures": [{"conn": 3, "phase": "after", "kind": "timeout", "error": "..."}],
//!  "results": [{"conn": 0, "ok": true, "migrated": true,
//!               "backend_before": "b1", "backend_after": "b1",
//!               "server_id_before": "0a01", "server_id_after": "0a01",
//!               "client_before": "198.18.0.2:40000", "client_after": "198.18.0.2:40001"}]}
//! ```
//!
//! `per_backend` counts connections by the backend that answered their first request;
//! `succeeded` counts connections without a failure; `migrated` those that were moved (their
//! first phase succeeded); `survived` the migrated ones that kept their backend. A field
//! without a value (no answer in that phase) is `null`. `phase` is `before` (handshake and
//! first phase) or `after` (the migration and second phase); `kind` is one of `handshake`,
//! `timeout`, `connection` (the connection closed), `http` (status not 200 or a stream error),
//! `body` (not a whoami body), `backend_changed`, `socket`.
//!
//! `lb-lab probe http1`:
//!
//! ```text
//! {"target": "...", "requests": 10, "succeeded": 10, "per_backend": {"b1": 10},
//!  "failures": [{"request": 3, "kind": "timeout", "error": "..."}],
//!  "results": [{"request": 0, "backend": "b1", "server_id": "0a01", "client": "..."}]}
//! ```
//!
//! # Exit status
//!
//! 0 when every connection or request attempted succeeded (with `--migrate`: all survived),
//! 1 otherwise, 2 for bad arguments.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::{Buf, Bytes};
use clap::{ArgGroup, Args, Subcommand};
use quinn::{
    ClientConfig, Connection, Endpoint,
    crypto::rustls::QuicClientConfig,
    rustls::{
        self,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
    },
};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use crate::backend::{ALPN_H3, Whoami, cert_fingerprint};

/// Exit status: everything attempted succeeded.
pub const EXIT_OK: i32 = 0;
/// Exit status: some connection or request failed (or did not survive migration).
pub const EXIT_FAILED: i32 = 1;
/// Exit status: bad arguments (clap's usage errors use the same).
pub const EXIT_USAGE: i32 = 2;

/// H3_NO_ERROR, the application error code of a clean close.
const H3_NO_ERROR: u32 = 0x100;
/// Largest response read.
const MAX_RESPONSE: usize = 1 << 20;

/// Arguments of `lb-lab probe`.
#[derive(Args, Debug, Clone)]
#[command(
    about = "Probe lb backends through the load balancer: who answers, and do QUIC connections \
             survive migration",
    after_help = "Exit status: 0 everything attempted succeeded (with --migrate: every \
                  connection survived); 1 some connection or request failed; 2 bad arguments."
)]
pub struct ProbeArgs {
    #[command(subcommand)]
    pub mode: ProbeMode,
}

/// `lb-lab probe h3` or `lb-lab probe http1`.
#[derive(Subcommand, Debug, Clone)]
pub enum ProbeMode {
    /// HTTP/3 connections, optionally migrated to a new local port half-way.
    H3(H3Args),
    /// HTTP/1.1 requests over TCP, a new connection for each.
    Http1(Http1Args),
}

/// Arguments of `lb-lab probe h3`.
#[derive(Args, Debug, Clone)]
#[command(
    group(ArgGroup::new("trust").required(true).args(["insecure", "fingerprint", "cafile"])),
    after_help = "Every connection has its own UDP socket bound to --bind with port 0. It does \
                  --requests-per-phase GETs and records the whoami answer (name, server_id, \
                  client). With --migrate it then waits (up to --timeout-ms) for a spare \
                  connection ID, rebinds to a new UDP socket (a new local port) and does \
                  --requests-per-phase more: it survived if all succeed and the same backend \
                  name answers; it broke otherwise (timeout, connection closed, other backend).\n\n\
                  --json prints one JSON object: {\"connections\", \"requests_per_phase\", \
                  \"migrate\", \"succeeded\", \"migrated\", \"survived\", \"per_backend\": \
                  {NAME: connections}, \"failures\": [{\"conn\", \"phase\": before|after, \
                  \"kind\", \"error\"}], \"results\": [{\"conn\", \"ok\", \"migrated\", \
                  \"backend_before\", \"backend_after\", \"server_id_before\", \
                  \"server_id_after\", \"client_before\", \"client_after\"}]}.\n\n\
                  Exit status: 0 all succeeded (and, with --migrate, survived); 1 otherwise; 2 \
                  bad arguments."
)]
pub struct H3Args {
    /// Where to connect (lb's VIP, or a backend directly).
    #[arg(long, value_name = "ADDR:PORT")]
    pub target: SocketAddr,
    /// TLS server name sent and, with --cafile, verified.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub sni: String,
    /// Accept any server certificate (handshake signatures are still checked).
    #[arg(long)]
    pub insecure: bool,
    /// Accept only the certificate with this SHA-256 (hex, as `lb-lab backend` prints it; colons
    /// allowed).
    #[arg(long, value_name = "HEX")]
    pub fingerprint: Option<String>,
    /// Trust the certificate authorities (or self-signed certificates) in this PEM file.
    #[arg(long, value_name = "PEM")]
    pub cafile: Option<PathBuf>,
    /// Number of connections.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub connections: usize,
    /// Requests per connection before the migration (and again after it).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub requests_per_phase: usize,
    /// Migrate every connection to a new local UDP port between the two phases.
    #[arg(long)]
    pub migrate: bool,
    /// Connections in flight at once.
    #[arg(long, value_name = "C", default_value_t = 16)]
    pub concurrency: usize,
    /// Bound on the handshake, on each request, and on the wait for a spare connection ID.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Local address of the UDP sockets [default: 0.0.0.0 or ::, the target's family].
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<IpAddr>,
    /// Request path.
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub path: String,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `lb-lab probe http1`.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Every request is a GET on a new TCP connection with `Connection: close`, so \
                  through lb each one is a new flow (Maglev-hashed). --json prints {\"requests\", \
                  \"succeeded\", \"per_backend\": {NAME: requests}, \"failures\": [{\"request\", \
                  \"kind\", \"error\"}], \"results\": [{\"request\", \"backend\", \"server_id\", \
                  \"client\"}]}.\n\n\
                  Exit status: 0 all succeeded; 1 otherwise; 2 bad arguments."
)]
pub struct Http1Args {
    /// Where to connect.
    #[arg(long, value_name = "ADDR:PORT")]
    pub target: SocketAddr,
    /// Number of requests (each on its own TCP connection).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, value_name = "C", default_value_t = 16)]
    pub concurrency: usize,
    /// Bound on each request (connect, send, read).
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Request path.
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub path: String,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Why a probe step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError {
    pub kind: ErrorKind,
    pub msg: String,
}

/// What kind of failure a [`ProbeError`] is (its JSON `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Handshake,
    Timeout,
    Connection,
    Http,
    Body,
    BackendChanged,
    Socket,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Handshake => "handshake",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::Http => "http",
            ErrorKind::Body => "body",
            ErrorKind::BackendChanged => "backend_changed",
            ErrorKind::Socket => "socket",
        }
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.msg)
    }
}

impl std::error::Error for ProbeError {}

fn err(kind: ErrorKind, msg: impl Into<String>) -> ProbeError {
    ProbeError {
        kind,
        msg: msg.into(),
    }
}

/// Which server certificates a client accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Any certificate (signatures over the handshake are still verified).
    Insecure,
    /// Exactly the certificate with this SHA-256 (lowercase hex).
    Fingerprint(String),
    /// Certificates that chain to these roots and name the server (webpki verification).
    Roots(Vec<CertificateDer<'static>>),
}

/// Accepts any certificate, or only the one with a given SHA-256.
#[derive(Debug)]
struct AnyOrPinned {
    sha256: Option<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AnyOrPinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.sha256 {
            Some(pin) if cert_fingerprint(end_entity) != *pin => {
                Err(rustls::Error::General(format!(
                    "certificate sha256 {} is not the pinned {pin}",
                    cert_fingerprint(end_entity)
                )))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A quinn client configuration for HTTP/3 (TLS 1.3, ALPN h3, ring) trusting `trust`.
pub fn client_config(trust: &Trust) -> Result<ClientConfig, ProbeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(ErrorKind::Handshake, e.to_string()))?;
    let mut tls = match trust {
        Trust::Insecure | Trust::Fingerprint(_) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyOrPinned {
                sha256: match trust {
                    Trust::Fingerprint(f) => Some(f.clone()),
                    _ => None,
                },
                provider,
            }))
            .with_no_client_auth(),
        Trust::Roots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for r in roots {
                store
                    .add(r.clone())
                    .map_err(|e| err(ErrorKind::Handshake, format!("root certificate: {e}")))?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![ALPN_H3.to_vec()];
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| err(ErrorKind::Handshake, format!("QUIC TLS configuration: {e}")))?;
    Ok(ClientConfig::new(Arc::new(quic)))
}

/// The unspecified address of `target`'s family.
pub fn default_bind(target: SocketAddr) -> IpAddr {
    match target {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// An HTTP/3 client connection on its own endpoint (UDP socket): the quinn connection and h3's
/// request sender.
pub struct H3Client {
    pub endpoint: Endpoint,
    pub conn: Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: tokio::task::JoinHandle<()>,
    authority: String,
}

impl H3Client {
    /// A new endpoint on `bind` (port 0 for any), then [`H3Client::connect_on`].
    pub async fn connect(
        bind: SocketAddr,
        to: SocketAddr,
        sni: &str,
        config: ClientConfig,
        step: Duration,
    ) -> Result<H3Client, ProbeError> {
        let endpoint = Endpoint::client(bind)
            .map_err(|e| err(ErrorKind::Socket, format!("binding UDP {bind}: {e}")))?;
        H3Client::connect_on(endpoint, to, sni, config, step).await
    }

    /// QUIC handshake and HTTP/3 set-up on `endpoint`, each bounded by `step`.
    pub async fn connect_on(
        mut endpoint: Endpoint,
        to: SocketAddr,
        sni: &str,
        config: ClientConfig,
        step: Duration,
    ) -> Result<H3Client, ProbeError> {
        endpoint.set_default_client_config(config);
        let connecting = endpoint
            .connect(to, sni)
            .map_err(|e| err(ErrorKind::Handshake, format!("connecting to {to}: {e}")))?;
        let conn = match timeout(step, connecting).await {
            Err(_) => {
                return Err(err(
                    ErrorKind::Timeout,
                    format!("no QUIC handshake with {to} in {} ms", step.as_millis()),
                ));
            }
            Ok(Err(e)) => {
                return Err(err(
                    ErrorKind::Handshake,
                    format!("QUIC handshake with {to}: {e}"),
                ));
            }
            Ok(Ok(c)) => c,
        };
        let (mut driver, send) = match timeout(
            step,
            h3::client::new(h3_quinn::Connection::new(conn.clone())),
        )
        .await
        {
            Err(_) => {
                return Err(err(
                    ErrorKind::Timeout,
                    format!("no HTTP/3 set-up in {} ms", step.as_millis()),
                ));
            }
            Ok(Err(e)) => return Err(err(ErrorKind::Http, format!("HTTP/3 set-up: {e}"))),
            Ok(Ok(x)) => x,
        };
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(H3Client {
            endpoint,
            conn,
            send,
            driver,
            authority: sni.to_string(),
        })
    }

    /// The error for a failed stream: the connection's close reason if it closed.
    fn stream_error(&self, what: &str, e: impl fmt::Display) -> ProbeError {
        match self.conn.close_reason() {
            Some(reason) => err(
                ErrorKind::Connection,
                format!("connection closed: {reason}"),
            ),
            None => err(ErrorKind::Http, format!("{what}: {e}")),
        }
    }

    /// GET `path`: (status, body), bounded by `step`.
    pub async fn get(
        &mut self,
        path: &str,
        step: Duration,
    ) -> Result<(http::StatusCode, String), ProbeError> {
        let req = http::Request::get(format!("https://{}{path}", self.authority))
            .body(())
            .map_err(|e| err(ErrorKind::Http, format!("request for {path:?}: {e}")))?;
        let work = async {
            let mut stream = self
                .send
                .send_request(req)
                .await
                .map_err(|e| self.stream_error("sending the request", e))?;
            // A GET has no body. A server that has read the headers may already have stopped
            // our send side (STOP_SENDING) by the time we finish it; that is not a failure,
            // and any real one (a dead connection) shows up in recv_response below.
            let _ = stream.finish().await;
            let resp = stream
                .recv_response()
                .await
                .map_err(|e| self.stream_error("receiving the response", e))?;
            let mut body = Vec::new();
            while let Some(mut chunk) = stream
                .recv_data()
                .await
                .map_err(|e| self.stream_error("receiving the body", e))?
            {
                while chunk.has_remaining() {
                    let c = chunk.chunk();
                    body.extend_from_slice(c);
                    let n = c.len();
                    chunk.advance(n);
                }
                if body.len() > MAX_RESPONSE {
                    return Err(err(ErrorKind::Body, "response body over 1 MiB"));
                }
            }
            let body = String::from_utf8(body)
                .map_err(|_| err(ErrorKind::Body, "response body is not UTF-8"))?;
            Ok((resp.status(), body))
        };
        match timeout(step, work).await {
            Ok(r) => r,
            Err(_) => Err(match self.conn.close_reason() {
                Some(reason) => err(
                    ErrorKind::Connection,
                    format!("connection closed: {reason}"),
                ),
                None => err(
                    ErrorKind::Timeout,
                    format!("no response in {} ms", step.as_millis()),
                ),
            }),
        }
    }

    /// GET `path` and parse the whoami body (status must be 200).
    pub async fn whoami(&mut self, path: &str, step: Duration) -> Result<Whoami, ProbeError> {
        let (status, body) = self.get(path, step).await?;
        if status != http::StatusCode::OK {
            return Err(err(
                ErrorKind::Http,
                format!("status {status}: {:.200}", body.trim()),
            ));
        }
        Whoami::parse(&body).map_err(|e| err(ErrorKind::Body, format!("{e}: {body:.200?}")))
    }

    /// Waits (up to `step`) until the server has issued a spare connection ID, so a migration
    /// moves to a new one; true if it has.
    pub async fn wait_spare_cid(&self, step: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + step;
        loop {
            if self.conn.stats().frame_rx.new_connection_id > 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline || self.conn.close_reason().is_some() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Moves the connection to a new UDP socket on `bind` (port 0: a new local port); returns
    /// the new local address.
    pub fn migrate(&self, bind: SocketAddr) -> Result<SocketAddr, ProbeError> {
        let socket = std::net::UdpSocket::bind(bind)
            .map_err(|e| err(ErrorKind::Socket, format!("binding UDP {bind}: {e}")))?;
        let addr = socket
            .local_addr()
            .map_err(|e| err(ErrorKind::Socket, e.to_string()))?;
        self.endpoint
            .rebind(socket)
            .map_err(|e| err(ErrorKind::Socket, format!("rebinding to {addr}: {e}")))?;
        Ok(addr)
    }

    /// Closes the connection (H3_NO_ERROR) and waits up to `grace` for the close to be
    /// confirmed.
    pub async fn close(self, grace: Duration) {
        self.conn.close(H3_NO_ERROR.into(), b"done");
        let _ = timeout(grace, self.endpoint.wait_idle()).await;
        self.driver.abort();
    }
}

/// A failure of one connection (h3) in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct H3Failure {
    pub conn: usize,
    /// `before` or `after`.
    pub phase: &'static str,
    pub kind: ErrorKind,
    pub error: String,
}

/// What one connection saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct H3Result {
    pub conn: usize,
    pub ok: bool,
    pub migrated: bool,
    pub backend_before: Option<String>,
    pub backend_after: Option<String>,
    pub server_id_before: Option<String>,
    pub server_id_after: Option<String>,
    pub client_before: Option<String>,
    pub client_after: Option<String>,
}

/// The outcome of `lb-lab probe h3` (its JSON).
#[derive(Debug, Clone, Serialize)]
pub struct H3Report {
    pub target: String,
    pub connections: usize,
    pub requests_per_phase: usize,
    pub migrate: bool,
    pub succeeded: usize,
    pub migrated: usize,
    pub survived: usize,
    pub per_backend: BTreeMap<String, usize>,
    pub failures: Vec<H3Failure>,
    pub results: Vec<H3Result>,
}

impl H3Report {
    /// True when every connection succeeded (with migration: survived).
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
            && self.succeeded == self.connections
            && (!self.migrate || self.survived == self.connections)
    }
}

/// What an h3 probe needs, checked.
#[derive(Clone)]
pub struct H3Plan {
    pub target: SocketAddr,
    pub sni: String,
    pub client: ClientConfig,
    pub bind: IpAddr,
    pub connections: usize,
    pub requests_per_phase: usize,
    pub migrate: bool,
    pub concurrency: usize,
    pub step: Duration,
    pub path: String,
}

/// A bad argument: (flag, message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lb-lab probe: {arg}: {msg}")]
pub struct UsageError {
    pub arg: &'static str,
    pub msg: String,
}

fn usage(arg: &'static str, msg: impl Into<String>) -> UsageError {
    UsageError {
        arg,
        msg: msg.into(),
    }
}

fn parse_fingerprint(hex: &str) -> Result<String, UsageError> {
    let f: String = hex
        .trim()
        .chars()
        .filter(|&c| c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if f.len() != 64 || !f.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(usage(
            "--fingerprint",
            format!("{hex:?}: expected a SHA-256, 64 hex digits"),
        ));
    }
    Ok(f)
}

fn positive(arg: &'static str, n: usize) -> Result<usize, UsageError> {
    if n == 0 {
        Err(usage(arg, "must be at least 1"))
    } else {
        Ok(n)
    }
}

fn step(ms: u64) -> Result<Duration, UsageError> {
    if ms == 0 {
        Err(usage("--timeout-ms", "must be at least 1"))
    } else {
        Ok(Duration::from_millis(ms))
    }
}

fn check_path(path: &str) -> Result<String, UsageError> {
    if !path.starts_with('/') || path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(usage(
            "--path",
            "must start with / and contain no spaces or control characters",
        ));
    }
    Ok(path.to_string())
}

impl H3Plan {
    /// Checks the arguments and loads --cafile.
    pub fn from_args(a: &H3Args) -> Result<H3Plan, UsageError> {
        let trust = match (&a.fingerprint, &a.cafile, a.insecure) {
            (Some(f), None, false) => Trust::Fingerprint(parse_fingerprint(f)?),
            (None, Some(path), false) => {
                let pem = std::fs::read(path)
                    .map_err(|e| usage("--cafile", format!("reading {}: {e}", path.display())))?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| usage("--cafile", format!("{}: {e}", path.display())))?;
                if certs.is_empty() {
                    return Err(usage(
                        "--cafile",
                        format!("{}: no CERTIFICATE in this PEM file", path.display()),
                    ));
                }
                Trust::Roots(certs)
            }
            (None, None, true) => Trust::Insecure,
            _ => {
                return Err(usage(
                    "--insecure/--fingerprint/--cafile",
                    "give exactly one",
                ));
            }
        };
        let client = client_config(&trust).map_err(|e| usage("--cafile", e.msg))?;
        if ServerName::try_from(a.sni.as_str()).is_err() {
            return Err(usage("--sni", format!("{:?} is not a server name", a.sni)));
        }
        let bind = a.bind.unwrap_or_else(|| default_bind(a.target));
        if bind.is_ipv4() != a.target.is_ipv4() {
            return Err(usage(
                "--bind",
                format!("{bind} and --target {} are of different families", a.target),
            ));
        }
        if a.target.port() == 0 || a.target.ip().is_unspecified() {
            return Err(usage(
                "--target",
                format!("{}: not a destination", a.target),
            ));
        }
        Ok(H3Plan {
            target: a.target,
            sni: a.sni.clone(),
            client,
            bind,
            connections: positive("--connections", a.connections)?,
            requests_per_phase: positive("--requests-per-phase", a.requests_per_phase)?,
            migrate: a.migrate,
            concurrency: positive("--concurrency", a.concurrency)?,
            step: step(a.timeout_ms)?,
            path: check_path(&a.path)?,
        })
    }
}

/// One phase of a connection: `requests_per_phase` whoami requests, all answered by the
/// backend that answered the first request of the connection.
async fn run_phase(
    c: &mut H3Client,
    r: &mut H3Result,
    plan: &H3Plan,
    after: bool,
) -> Result<(), ProbeError> {
    for _ in 0..plan.requests_per_phase {
        let w = c.whoami(&plan.path, plan.step).await?;
        if let Some(prev) = r.backend_before.as_ref()
            && *prev != w.name
        {
            return Err(err(
                ErrorKind::BackendChanged,
                format!(
                    "backend {prev} answered before, now {} (server_id {}, client {})",
                    w.name, w.server_id, w.client
                ),
            ));
        }
        let (name, sid, client) = if after {
            (
                &mut r.backend_after,
                &mut r.server_id_after,
                &mut r.client_after,
            )
        } else {
            (
                &mut r.backend_before,
                &mut r.server_id_before,
                &mut r.client_before,
            )
        };
        *name = Some(w.name);
        *sid = Some(w.server_id);
        *client = Some(w.client.to_string());
    }
    Ok(())
}

/// One connection: handshake, a phase, and with migration the move and a second phase.
async fn probe_connection(i: usize, plan: Arc<H3Plan>) -> (H3Result, Option<H3Failure>) {
    let mut r = H3Result {
        conn: i,
        ..H3Result::default()
    };
    let fail = |phase: &'static str, e: ProbeError| H3Failure {
        conn: i,
        phase,
        kind: e.kind,
        error: e.msg,
    };
    let bind = SocketAddr::new(plan.bind, 0);
    let mut c =
        match H3Client::connect(bind, plan.target, &plan.sni, plan.client.clone(), plan.step).await
        {
            Ok(c) => c,
            Err(e) => return (r, Some(fail("before", e))),
        };
    if let Err(e) = run_phase(&mut c, &mut r, &plan, false).await {
        c.close(Duration::ZERO).await;
        return (r, Some(fail("before", e)));
    }
    if plan.migrate {
        c.wait_spare_cid(plan.step).await;
        if let Err(e) = c.migrate(bind) {
            c.close(Duration::ZERO).await;
            return (r, Some(fail("after", e)));
        }
        r.migrated = true;
        if let Err(e) = run_phase(&mut c, &mut r, &plan, true).await {
            c.close(Duration::ZERO).await;
            return (r, Some(fail("after", e)));
        }
    }
    r.ok = true;
    c.close(plan.step).await;
    (r, None)
}

/// Runs an h3 probe: connections concurrently, at most `plan.concurrency` at once.
pub async fn probe_h3(plan: H3Plan) -> H3Report {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..plan.concurrency.min(plan.connections) {
        let (plan, next) = (plan.clone(), next.clone());
        workers.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= plan.connections {
                    return out;
                }
                out.push(probe_connection(i, plan.clone()).await);
            }
        });
    }
    let mut outcomes = Vec::with_capacity(plan.connections);
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(v) => outcomes.extend(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    outcomes.sort_by_key(|(r, _)| r.conn);
    let mut report = H3Report {
        target: plan.target.to_string(),
        connections: plan.connections,
        requests_per_phase: plan.requests_per_phase,
        migrate: plan.migrate,
        succeeded: 0,
        migrated: 0,
        survived: 0,
        per_backend: BTreeMap::new(),
        failures: Vec::new(),
        results: Vec::new(),
    };
    for (r, f) in outcomes {
        if let Some(b) = &r.backend_before {
            *report.per_backend.entry(b.clone()).or_default() += 1;
        }
        report.succeeded += usize::from(r.ok);
        report.migrated += usize::from(r.migrated);
        report.survived += usize::from(r.migrated && r.ok);
        report.failures.extend(f);
        report.results.push(r);
    }
    report
}

fn print_h3(report: &H3Report, plan: &H3Plan) {
    println!(
        "lb-lab probe h3 {} (sni {}): {} connection(s), {} request(s) per phase{}",
        plan.target,
        plan.sni,
        report.connections,
        report.requests_per_phase,
        if plan.migrate { ", with migration" } else { "" }
    );
    println!("connections per backend:");
    if report.per_backend.is_empty() {
        println!("  (none answered)");
    }
    for (name, n) in &report.per_backend {
        println!("  {name}: {n}");
    }
    println!("succeeded {}/{}", report.succeeded, report.connections);
    if plan.migrate {
        println!(
            "survived migration {}/{} (survived/migrated; {} connection(s) attempted)",
            report.survived, report.migrated, report.connections
        );
    }
    for f in &report.failures {
        let r = &report.results[f.conn];
        println!(
            "  conn {} {}: {}: {} (backend before {}, after {})",
            f.conn,
            match (plan.migrate, f.phase) {
                (false, _) => "failed",
                (true, "before") => "failed before migration",
                (true, _) => "broke after migration",
            },
            f.kind.as_str(),
            f.error,
            r.backend_before.as_deref().unwrap_or("-"),
            r.backend_after.as_deref().unwrap_or("-"),
        );
    }
    println!("{}", if report.ok() { "OK" } else { "FAILED" });
}

/// One HTTP/1.1 request's failure.
#[derive(Debug, Clone, Serialize)]
pub struct Http1Failure {
    pub request: usize,
    pub kind: ErrorKind,
    pub error: String,
}

/// One HTTP/1.1 request's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Http1Result {
    pub request: usize,
    pub backend: Option<String>,
    pub server_id: Option<String>,
    pub client: Option<String>,
}

/// The outcome of `lb-lab probe http1` (its JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Http1Report {
    pub target: String,
    pub requests: usize,
    pub succeeded: usize,
    pub per_backend: BTreeMap<String, usize>,
    pub failures: Vec<Http1Failure>,
    pub results: Vec<Http1Result>,
}

/// One GET on a new TCP connection, `Connection: close`, bounded by `step`.
pub async fn http1_get(
    target: SocketAddr,
    path: &str,
    step: Duration,
) -> Result<Whoami, ProbeError> {
    let work = async {
        let mut s = TcpStream::connect(target).await.map_err(|e| {
            err(
                ErrorKind::Connection,
                format!("connecting to {target}: {e}"),
            )
        })?;
        let _ = s.set_nodelay(true);
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: lb-probe\r\n\
             Connection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| err(ErrorKind::Connection, format!("sending: {e}")))?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| err(ErrorKind::Connection, format!("receiving: {e}")))?;
        Ok::<_, ProbeError>(buf)
    };
    let buf = match timeout(step, work).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(err(
                ErrorKind::Timeout,
                format!("no complete response in {} ms", step.as_millis()),
            ));
        }
    };
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(err(
            ErrorKind::Http,
            format!("incomplete response ({} octets)", buf.len()),
        ));
    };
    let status = head.lines().next().unwrap_or_default();
    let code = status.split(' ').nth(1).unwrap_or_default();
    if code != "200" {
        return Err(err(ErrorKind::Http, format!("status line {status:?}")));
    }
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let body = match len {
        Some(n) if n <= body.len() => &body[..n],
        Some(n) => {
            return Err(err(
                ErrorKind::Http,
                format!("body of {} octets, Content-Length {n}", body.len()),
            ));
        }
        None => body,
    };
    Whoami::parse(body).map_err(|e| err(ErrorKind::Body, format!("{e}: {body:.200?}")))
}

/// Runs an HTTP/1.1 probe: `requests` GETs, at most `concurrency` at once.
pub async fn probe_http1(
    target: SocketAddr,
    path: &str,
    requests: usize,
    concurrency: usize,
    step: Duration,
) -> Http1Report {
    let next = Arc::new(AtomicUsize::new(0));
    let path: Arc<str> = path.into();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(requests) {
        let (next, path) = (next.clone(), path.clone());
        workers.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return out;
                }
                out.push((i, http1_get(target, &path, step).await));
            }
        });
    }
    let mut outcomes = Vec::with_capacity(requests);
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(v) => outcomes.extend(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    outcomes.sort_by_key(|(i, _)| *i);
    let mut report = Http1Report {
        target: target.to_string(),
        requests,
        succeeded: 0,
        per_backend: BTreeMap::new(),
        failures: Vec::new(),
        results: Vec::new(),
    };
    for (i, outcome) in outcomes {
        match outcome {
            Ok(w) => {
                report.succeeded += 1;
                *report.per_backend.entry(w.name.clone()).or_default() += 1;
                report.results.push(Http1Result {
                    request: i,
                    backend: Some(w.name),
                    server_id: Some(w.server_id),
                    client: Some(w.client.to_string()),
                });
            }
            Err(e) => {
                report.failures.push(Http1Failure {
                    request: i,
                    kind: e.kind,
                    error: e.msg,
                });
                report.results.push(Http1Result {
                    request: i,
                    backend: None,
                    server_id: None,
                    client: None,
                });
            }
        }
    }
    report
}

fn print_http1(report: &Http1Report) {
    println!(
        "lb-lab probe http1 {}: {} request(s), each on a new TCP connection",
        report.target, report.requests
    );
    println!("requests per backend:");
    if report.per_backend.is_empty() {
        println!("  (none answered)");
    }
    for (name, n) in &report.per_backend {
        println!("  {name}: {n}");
    }
    println!("succeeded {}/{}", report.succeeded, report.requests);
    for f in &report.failures {
        println!(
            "  request {} failed: {}: {}",
            f.request,
            f.kind.as_str(),
            f.error
        );
    }
    println!(
        "{}",
        if report.succeeded == report.requests {
            "OK"
        } else {
            "FAILED"
        }
    );
}

fn runtime() -> Result<tokio::runtime::Runtime, i32> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("lb-lab probe: starting the tokio runtime: {e}");
            EXIT_FAILED
        })
}

fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("lb-lab probe: JSON: {e}"),
    }
}

/// Runs `lb-lab probe`; returns the exit status.
pub fn run(args: &ProbeArgs) -> i32 {
    match &args.mode {
        ProbeMode::H3(a) => {
            let plan = match H3Plan::from_args(a) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{e}");
                    return EXIT_USAGE;
                }
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let report = rt.block_on(probe_h3(plan.clone()));
            if a.json {
                print_json(&report);
            } else {
                print_h3(&report, &plan);
            }
            if report.ok() { EXIT_OK } else { EXIT_FAILED }
        }
        ProbeMode::Http1(a) => {
            let checked = (|| {
                if a.target.port() == 0 || a.target.ip().is_unspecified() {
                    return Err(usage(
                        "--target",
                        format!("{}: not a destination", a.target),
                    ));
                }
                Ok((
                    positive("--requests", a.requests)?,
                    positive("--concurrency", a.concurrency)?,
                    step(a.timeout_ms)?,
                    check_path(&a.path)?,
                ))
            })();
            let (requests, concurrency, step, path) = match checked {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("{e}");
                    return EXIT_USAGE;
                }
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let report = rt.block_on(probe_http1(a.target, &path, requests, concurrency, step));
            if a.json {
                print_json(&report);
            } else {
                print_http1(&report);
            }
            if report.succeeded == report.requests && report.failures.is_empty() {
                EXIT_OK
            } else {
                EXIT_FAILED
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalised_and_checked() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_fingerprint(&hex).unwrap(), "ab".repeat(32));
        let colons = vec!["Ab"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons).unwrap(), "ab".repeat(32));
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn default_bind_matches_the_target_family() {
        assert_eq!(
            default_bind("127.0.0.1:1".parse().unwrap()),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        );
        assert_eq!(
            default_bind("[::1]:1".parse().unwrap()),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        );
    }
}
