//! `lb-lab backend`: a whoami server for demos and tests, in the spirit of Traefik's `whoami`. It
//! serves HTTP/3 over QUIC and HTTP/1.1 over TCP on the same address and port, and answers every
//! request (any method, any path) with a short text that says which backend answered and what it
//! saw of the connection, so a client can tell whether lb routed a migrated QUIC connection back
//! to the same backend.
//!
//! Its QUIC endpoint issues QUIC-LB connection IDs ([`QuicLbCidGenerator`]) for the configured
//! server ID, so lb's XDP program routes its connections by connection ID.
//!
//! # Body format
//!
//! `text/plain`, one `key: value` line per field, in this order (values never contain a line
//! break; parsers must ignore keys they do not know, later versions may add some):
//!
//! ```text
//! name: b1
//! server_id: 0a01
//! protocol: h3
//! client: 198.18.0.2:40000
//! local: 198.18.1.10:8443
//! path_changes: 1
//! requests_on_connection: 3
//! method: GET
//! path: /
//! ```
//!
//! - `server_id`: the QUIC-LB server ID the backend encodes in its connection IDs, lowercase hex.
//! - `protocol`: `h3` or `http/1.1`.
//! - `client`: the peer address of the connection when the request arrived (for QUIC, the
//!   connection's current remote address, which changes when the client migrates). IPv4-mapped
//!   IPv6 addresses are shown as IPv4.
//! - `local`: the address the backend received the connection on (`unknown` when the socket
//!   cannot tell, e.g. QUIC on a platform without packet info).
//! - `path_changes`: how many times the connection's remote address changed, as seen at its
//!   requests (a change and a change back between two requests count zero); always 0 for TCP.
//! - `requests_on_connection`: this request's number on its connection, from 1.
//!
//! [`Whoami::parse`] reads it back.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use clap::Args;
use lb_common::quic_lb::Config;
use log::{debug, info, warn};
use quinn::{
    Endpoint, EndpointConfig, ServerConfig, TokioRuntime, TransportConfig,
    crypto::rustls::QuicServerConfig,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
};

use lb_userspace::cli::cid::{self as cid_cli, CidError};

use crate::quic_lb::QuicLbCidGenerator;

/// Exit status for bad arguments (clap's usage errors use the same).
pub const EXIT_USAGE: i32 = 2;
/// Exit status when the backend could not start or failed while running.
pub const EXIT_FAILURE: i32 = 1;

/// ALPN of HTTP/3.
pub const ALPN_H3: &[u8] = b"h3";
/// H3_NO_ERROR: the application error code of a clean close.
const H3_NO_ERROR: u32 = 0x100;
/// Longest HTTP/1.1 request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest HTTP/1.1 request body read (and thrown away).
const MAX_BODY: usize = 1 << 20;
/// An idle HTTP/1.1 connection is closed after this long.
const TCP_IDLE: Duration = Duration::from_secs(60);
/// How long a shutdown waits for QUIC connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Arguments of `lb-lab backend`.
#[derive(Args, Debug, Clone)]
#[command(
    about = "Run a whoami HTTP/3 + HTTP/1.1 backend that issues QUIC-LB connection IDs",
    after_help = "HTTP/3 (QUIC, ALPN h3) and HTTP/1.1 (plain TCP) share --listen's address and \
                  port. Every request, any method and path, gets 200 and a text/plain body of \
                  `key: value` lines:\n\n  \
                  name: b1\n  server_id: 0a01\n  protocol: h3            (or http/1.1)\n  \
                  client: 198.18.0.2:40000   (the connection's current remote address)\n  \
                  local: 198.18.1.10:8443    (or unknown)\n  \
                  path_changes: 1          (remote address changes seen at requests; 0 for TCP)\n  \
                  requests_on_connection: 3\n  method: GET\n  path: /\n\n\
                  Parsers must ignore unknown keys.\n\n\
                  On start it prints to stdout `listening on ADDR:PORT (h3+http/1.1)` and then \
                  `certificate sha256 HEX` (the SHA-256 of the certificate's DER, lowercase hex). \
                  Without --cert/--key-pem it generates a self-signed certificate for --sni-names.\n\n\
                  Debugging: SSLKEYLOGFILE=PATH writes the TLS secrets (NSS key log format) so \
                  Wireshark can decrypt a capture; --qlog PATH writes a qlog JSON-SEQ trace of all \
                  QUIC connections (quinn 0.11's qlog: packets sent, received and lost, recovery \
                  metrics; events grouped by original destination CID).\n\n\
                  SIGINT/SIGTERM close every connection (H3_NO_ERROR) and exit 0.\n\
                  Exit status: 0 clean shutdown; 1 failure while starting or running; 2 bad \
                  arguments."
)]
pub struct BackendArgs {
    /// Address and port for both HTTP/3 (UDP) and HTTP/1.1 (TCP); port 0 picks a port
    /// free for both.
    #[arg(
        long,
        env = "LB_BACKEND_LISTEN",
        value_name = "ADDR:PORT",
        default_value = "[::]:8443"
    )]
    pub listen: SocketAddr,
    /// Backend name shown in responses [default: the host name].
    #[arg(long, env = "LB_BACKEND_NAME", value_name = "NAME")]
    pub name: Option<String>,
    /// QUIC-LB server ID this backend encodes in its connection IDs, hex.
    #[arg(
        long,
        env = "LB_QUIC_LB_SERVER_ID",
        value_name = "HEX",
        required_unless_present = "pod_ip"
    )]
    pub server_id: Option<String>,
    /// Derive the server ID from this address instead of --server-id: its last
    /// server-ID-length octets (IPv4 left-padded with zero octets), the rule lb uses for
    /// Kubernetes pods. In a pod: the downward API's status.podIP.
    #[arg(
        long,
        env = "LB_POD_IP",
        value_name = "IP",
        conflicts_with = "server_id"
    )]
    pub pod_ip: Option<std::net::IpAddr>,
    /// Read the QUIC-LB configuration from a mounted Secret: files `config-id`,
    /// `server-id-len`, `nonce-len`, optional `key` (32 hex digits) and `encode-length`,
    /// the same Secret lb reads for the Service (replaces --cr-bits, --server-id-len,
    /// --nonce-len and --key).
    #[arg(
        long,
        env = "LB_QUIC_LB_SECRET_DIR",
        value_name = "DIR",
        conflicts_with_all = ["key", "key_file"]
    )]
    pub quic_lb_secret_dir: Option<PathBuf>,
    /// QUIC-LB server ID length in octets (1-15) [default: the length of --server-id].
    #[arg(long, env = "LB_QUIC_LB_SERVER_ID_LEN", value_name = "N",
          value_parser = clap::value_parser!(u8).range(1..=15))]
    pub server_id_len: Option<u8>,
    /// QUIC-LB config rotation bits (the configuration's ID, 0-6).
    #[arg(long, env = "LB_QUIC_LB_CR_BITS", value_name = "0-6", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=6))]
    pub cr_bits: u8,
    /// QUIC-LB nonce length in octets (at least 4; server ID + nonce at most 19).
    #[arg(long, env = "LB_QUIC_LB_NONCE_LEN", value_name = "M", default_value_t = 8,
          value_parser = clap::value_parser!(u8).range(4..=18))]
    pub nonce_len: u8,
    /// QUIC-LB AES-128 key, 32 hex digits; without --key or --key-file CIDs are plaintext.
    #[arg(
        long,
        env = "LB_QUIC_LB_KEY",
        value_name = "HEX",
        hide_env_values = true,
        conflicts_with = "key_file"
    )]
    pub key: Option<String>,
    /// File holding the QUIC-LB key: 32 hex digits (surrounding white space ignored) or 16 raw
    /// octets.
    #[arg(long, env = "LB_QUIC_LB_KEY_FILE", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Worker id of this endpoint among those sharing the server ID (see --worker-bits).
    #[arg(
        long,
        env = "LB_QUIC_LB_WORKER_ID",
        value_name = "ID",
        default_value_t = 0
    )]
    pub worker_id: u32,
    /// Nonce bits that carry --worker-id (0: no worker id). Endpoints sharing a server ID with
    /// different worker ids can never issue the same CID.
    #[arg(
        long,
        env = "LB_QUIC_LB_WORKER_BITS",
        value_name = "BITS",
        default_value_t = 0
    )]
    pub worker_bits: u32,
    /// Retire and replace every issued connection ID after this many seconds (lets a QUIC-LB
    /// configuration rotation reach established connections) [default: never].
    #[arg(long, env = "LB_QUIC_LB_CID_LIFETIME", value_name = "SECONDS")]
    pub cid_lifetime: Option<u64>,
    /// Stateless-reset key shared by every backend of the pool, 64 hex digits (32 octets).
    /// The load balancer sends packets for a server that is gone to a live one, which answers
    /// with a stateless reset; the client accepts it only if the token matches, i.e. only if
    /// both servers derive tokens from the same key [default: a random key per process].
    #[arg(
        long,
        env = "LB_BACKEND_RESET_KEY",
        value_name = "HEX",
        hide_env_values = true
    )]
    pub reset_key: Option<String>,
    /// TLS certificate chain, PEM (with --key-pem) [default: self-signed for --sni-names].
    #[arg(
        long,
        env = "LB_BACKEND_CERT",
        value_name = "PATH",
        requires = "key_pem"
    )]
    pub cert: Option<PathBuf>,
    /// TLS private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "LB_BACKEND_KEY_PEM",
        value_name = "PATH",
        requires = "cert"
    )]
    pub key_pem: Option<PathBuf>,
    /// Names (or IP addresses) the self-signed certificate is issued for, comma-separated.
    #[arg(
        long,
        env = "LB_BACKEND_SNI_NAMES",
        value_name = "NAMES",
        value_delimiter = ',',
        default_value = "localhost"
    )]
    pub sni_names: Vec<String>,
    /// Also write the certificate (PEM) here, e.g. for `curl --cacert` or a test client.
    #[arg(long, env = "LB_BACKEND_WRITE_CERT", value_name = "PATH")]
    pub write_cert: Option<PathBuf>,
    /// Write a qlog trace (JSON-SEQ, .sqlog) of every QUIC connection to this file.
    #[arg(long, env = "LB_BACKEND_QLOG", value_name = "PATH")]
    pub qlog: Option<PathBuf>,
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A bad argument: `arg` names it.
    #[error("lb-lab backend: {arg}: {msg}")]
    Usage { arg: &'static str, msg: String },
    /// Anything else (files, sockets, TLS).
    #[error("lb-lab backend: {0:#}")]
    Failed(#[from] anyhow::Error),
}

impl BackendError {
    pub fn exit_code(&self) -> i32 {
        match self {
            BackendError::Usage { .. } => EXIT_USAGE,
            BackendError::Failed(_) => EXIT_FAILURE,
        }
    }
}

fn usage(arg: &'static str, msg: impl Into<String>) -> BackendError {
    BackendError::Usage {
        arg,
        msg: msg.into(),
    }
}

fn from_cid_error(e: CidError, rename: Option<&'static str>) -> BackendError {
    match e {
        CidError::Usage { arg, msg } => usage(rename.unwrap_or(arg), msg),
        CidError::Unroutable(d) => usage("--server-id", d.to_string()),
    }
}

/// The QUIC-LB configuration from a mounted Secret (one file per key).
fn read_secret_dir(dir: &Path) -> Result<Config, BackendError> {
    let mut data = std::collections::BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| {
        usage(
            "--quic-lb-secret-dir",
            format!("cannot read {}: {e}", dir.display()),
        )
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Secret volumes hold ..data symlinks and dot-directories beside the keys.
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        let bytes = std::fs::read(entry.path()).map_err(|e| {
            usage(
                "--quic-lb-secret-dir",
                format!("cannot read {}: {e}", entry.path().display()),
            )
        })?;
        data.insert(name, bytes);
    }
    lb_userspace::kube::translate::parse_quic_lb_secret(&data)
        .map_err(|e| usage("--quic-lb-secret-dir", format!("{}: {e}", dir.display())))
}

/// Everything the backend needs, checked.
pub struct Settings {
    pub listen: SocketAddr,
    pub name: String,
    pub config: Config,
    pub server_id: Vec<u8>,
    pub worker_id: u32,
    pub worker_bits: u32,
    pub cid_lifetime: Option<Duration>,
    pub reset_key: Option<[u8; 32]>,
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub write_cert: Option<PathBuf>,
    pub qlog: Option<PathBuf>,
}

impl Settings {
    /// Checks the arguments and loads (or generates) the certificate.
    pub fn from_args(a: &BackendArgs) -> Result<Settings, BackendError> {
        let name = match &a.name {
            Some(n) => n.clone(),
            None => hostname(),
        };
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(usage(
                "--name",
                "must be non-empty and without control characters",
            ));
        }
        let secret = match &a.quic_lb_secret_dir {
            Some(dir) => Some(read_secret_dir(dir)?),
            None => None,
        };
        let server_id = match (&a.server_id, a.pod_ip) {
            (Some(hex), _) => {
                cid_cli::parse_hex("--server-id", hex).map_err(|e| from_cid_error(e, None))?
            }
            (None, Some(ip)) => {
                let len = secret
                    .as_ref()
                    .map(|c| c.server_id_len())
                    .or(a.server_id_len)
                    .ok_or_else(|| {
                        usage(
                            "--pod-ip",
                            "needs the server ID length: give --server-id-len or \
                             --quic-lb-secret-dir",
                        )
                    })?;
                lb_userspace::kube::translate::server_id_from_ip(ip, len)
            }
            (None, None) => {
                return Err(usage(
                    "--server-id",
                    "missing: give --server-id or --pod-ip",
                ));
            }
        };
        if server_id.is_empty() {
            return Err(usage("--server-id", "empty: give 1-15 octets in hex"));
        }
        let sid_len = match a.server_id_len {
            Some(n) if usize::from(n) != server_id.len() => {
                return Err(usage(
                    "--server-id",
                    format!(
                        "expected {n} octets (--server-id-len {n}), got {} ({} hex digits)",
                        server_id.len(),
                        2 * server_id.len()
                    ),
                ));
            }
            Some(n) => n,
            None => u8::try_from(server_id.len())
                .ok()
                .filter(|n| (1..=15).contains(n))
                .ok_or_else(|| {
                    usage(
                        "--server-id",
                        format!("{} octets; a server ID has 1-15", server_id.len()),
                    )
                })?,
        };
        let (key, key_arg) = match (&a.key, &a.key_file) {
            (Some(k), _) => (Some(k.clone()), "--key"),
            (None, Some(path)) => (Some(read_key_file(path)?), "--key-file"),
            (None, None) => (None, "--key"),
        };
        let config = match secret {
            Some(c) if c.server_id_len() != sid_len => {
                return Err(usage(
                    "--server-id",
                    format!(
                        "{} octets, but the Secret's server-id-len is {}",
                        server_id.len(),
                        c.server_id_len()
                    ),
                ));
            }
            Some(c) => c,
            None => cid_cli::config(&cid_cli::ConfigArgs {
                cr_bits: a.cr_bits,
                server_id_len: sid_len,
                nonce_len: a.nonce_len,
                key,
            })
            .map_err(|e| match e {
                CidError::Usage { arg: "--key", .. } => from_cid_error(e, Some(key_arg)),
                e => from_cid_error(e, None),
            })?,
        };
        // Check the worker id against the configuration now, for a message naming the flag.
        let generator = QuicLbCidGenerator::new(config, &server_id)
            .map_err(|e| usage("--server-id", e.to_string()))?;
        if a.worker_bits > 0 || a.worker_id > 0 {
            generator
                .with_worker(a.worker_id, a.worker_bits)
                .map_err(|e| usage("--worker-id/--worker-bits", e.to_string()))?;
        }
        let cid_lifetime = match a.cid_lifetime {
            Some(0) => return Err(usage("--cid-lifetime", "must be at least 1 second")),
            s => s.map(Duration::from_secs),
        };
        let reset_key = match &a.reset_key {
            None => None,
            Some(h) => {
                let bytes =
                    (h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit())).then(|| {
                        (0..32)
                            .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap_or(0))
                            .collect::<Vec<u8>>()
                    });
                match bytes {
                    Some(b) => Some(<[u8; 32]>::try_from(b).expect("32 octets")),
                    None => {
                        return Err(usage(
                            "--reset-key",
                            format!(
                                "expected 64 hex digits (32 octets), got {} characters",
                                h.len()
                            ),
                        ));
                    }
                }
            }
        };
        let (certs, key) = match (&a.cert, &a.key_pem) {
            (Some(c), Some(k)) => load_pem(c, k)?,
            _ => self_signed(&a.sni_names)?,
        };
        Ok(Settings {
            listen: a.listen,
            name,
            config,
            server_id,
            worker_id: a.worker_id,
            worker_bits: a.worker_bits,
            cid_lifetime,
            reset_key,
            certs,
            key,
            write_cert: a.write_cert.clone(),
            qlog: a.qlog.clone(),
        })
    }

    fn generator(&self) -> QuicLbCidGenerator {
        // Checked in from_args.
        let mut g = QuicLbCidGenerator::new(self.config, &self.server_id)
            .expect("server ID checked against the configuration");
        if self.worker_bits > 0 || self.worker_id > 0 {
            g = g
                .with_worker(self.worker_id, self.worker_bits)
                .expect("worker id checked");
        }
        g.with_lifetime(self.cid_lifetime)
    }

    /// SHA-256 of the leaf certificate's DER, lowercase hex.
    pub fn fingerprint(&self) -> String {
        cert_fingerprint(&self.certs[0])
    }
}

/// SHA-256 of a certificate's DER, lowercase hex (what `lb-lab backend` prints).
pub fn cert_fingerprint(cert: &[u8]) -> String {
    cid_cli::to_hex(ring::digest::digest(&ring::digest::SHA256, cert).as_ref())
}

fn read_key_file(path: &Path) -> Result<String, BackendError> {
    let raw = std::fs::read(path)
        .map_err(|e| usage("--key-file", format!("reading {}: {e}", path.display())))?;
    if let Ok(text) = std::str::from_utf8(&raw) {
        let t = text.trim();
        if t.len() == 32 && t.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(t.to_string());
        }
    }
    if raw.len() == 16 {
        return Ok(cid_cli::to_hex(&raw));
    }
    Err(usage(
        "--key-file",
        format!(
            "{}: expected 32 hex digits or 16 raw octets, found {} octets",
            path.display(),
            raw.len()
        ),
    ))
}

fn load_pem(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), BackendError> {
    let pem = std::fs::read(cert)
        .map_err(|e| usage("--cert", format!("reading {}: {e}", cert.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| usage("--cert", format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(usage(
            "--cert",
            format!("{}: no CERTIFICATE in this PEM file", cert.display()),
        ));
    }
    let pem = std::fs::read(key)
        .map_err(|e| usage("--key-pem", format!("reading {}: {e}", key.display())))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        usage(
            "--key-pem",
            format!("{}: no usable private key: {e}", key.display()),
        )
    })?;
    Ok((certs, key))
}

fn self_signed(
    names: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), BackendError> {
    let names: Vec<String> = names
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return Err(usage("--sni-names", "give at least one name"));
    }
    let ck = rcgen::generate_simple_self_signed(names.clone())
        .map_err(|e| usage("--sni-names", format!("{names:?}: {e}")))?;
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    Ok((vec![ck.cert.der().clone()], key))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() octets into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..n]) {
        Ok(s) if ok && !s.is_empty() => s.to_string(),
        _ => "backend".to_string(),
    }
}

/// What a response body says; see the module documentation for the text format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whoami {
    pub name: String,
    /// Lowercase hex.
    pub server_id: String,
    /// `h3` or `http/1.1`.
    pub protocol: String,
    pub client: SocketAddr,
    pub local: Option<SocketAddr>,
    pub path_changes: u64,
    pub requests_on_connection: u64,
    pub method: String,
    pub path: String,
}

/// A body that does not parse as [`Whoami`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("whoami body: {0}")]
pub struct WhoamiParseError(String);

impl Whoami {
    /// The body text, one `key: value` line per field.
    pub fn render(&self) -> String {
        let local = self
            .local
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        format!(
            "name: {}\nserver_id: {}\nprotocol: {}\nclient: {}\nlocal: {local}\n\
             path_changes: {}\nrequests_on_connection: {}\nmethod: {}\npath: {}\n",
            self.name,
            self.server_id,
            self.protocol,
            self.client,
            self.path_changes,
            self.requests_on_connection,
            printable(&self.method),
            printable(&self.path),
        )
    }

    /// Parses a body; unknown keys are ignored.
    pub fn parse(body: &str) -> Result<Whoami, WhoamiParseError> {
        let mut fields = HashMap::new();
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line
                .split_once(": ")
                .ok_or_else(|| WhoamiParseError(format!("line {line:?} is not `key: value`")))?;
            fields.insert(k.trim(), v.trim());
        }
        let get = |k: &str| {
            fields
                .get(k)
                .map(|v| v.to_string())
                .ok_or_else(|| WhoamiParseError(format!("no {k} line")))
        };
        let num = |k: &str| {
            get(k)?
                .parse::<u64>()
                .map_err(|e| WhoamiParseError(format!("{k}: {e}")))
        };
        let addr = |k: &str| {
            get(k)?
                .parse::<SocketAddr>()
                .map_err(|e| WhoamiParseError(format!("{k}: {e}")))
        };
        Ok(Whoami {
            name: get("name")?,
            server_id: get("server_id")?,
            protocol: get("protocol")?,
            client: addr("client")?,
            local: match fields.get("local") {
                None | Some(&"unknown") => None,
                Some(_) => Some(addr("local")?),
            },
            path_changes: num("path_changes")?,
            requests_on_connection: num("requests_on_connection")?,
            method: get("method")?,
            path: get("path")?,
        })
    }
}

/// Keeps a value on one line.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) as IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// What the backend shares with every connection.
struct Ctx {
    name: String,
    server_id: String,
    port: u16,
}

impl Ctx {
    fn whoami(&self, protocol: &str, conn: &ConnView, method: &str, path: &str) -> String {
        Whoami {
            name: self.name.clone(),
            server_id: self.server_id.clone(),
            protocol: protocol.to_string(),
            client: conn.client,
            local: conn.local,
            path_changes: conn.path_changes,
            requests_on_connection: conn.requests,
            method: method.to_string(),
            path: path.to_string(),
        }
        .render()
    }
}

/// A connection as seen at one request.
struct ConnView {
    client: SocketAddr,
    local: Option<SocketAddr>,
    path_changes: u64,
    requests: u64,
}

/// Per-QUIC-connection state: the remote address at the last look, and counts.
struct PathTracker {
    last: SocketAddr,
    changes: u64,
    requests: u64,
}

impl PathTracker {
    fn observe(&mut self, now: SocketAddr) -> (u64, u64) {
        if now != self.last {
            self.changes += 1;
            self.last = now;
        }
        self.requests += 1;
        (self.changes, self.requests)
    }
}

/// A bound backend: the QUIC endpoint and the TCP listener on the same address and port.
pub struct Backend {
    endpoint: Endpoint,
    tcp: TcpListener,
    local: SocketAddr,
    ctx: Arc<Ctx>,
}

impl Backend {
    /// Binds UDP and TCP on `settings.listen` (for port 0, one port free for both). Call
    /// within a tokio runtime.
    pub fn bind(settings: &Settings) -> anyhow::Result<Backend> {
        use anyhow::Context as _;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 with ring")?
            .with_no_client_auth()
            .with_single_cert(settings.certs.clone(), settings.key.clone_key())
            .context("the certificate and key do not make a TLS configuration")?;
        tls.alpn_protocols = vec![ALPN_H3.to_vec()];
        // Writes the secrets to $SSLKEYLOGFILE when it is set; otherwise does nothing.
        tls.key_log = Arc::new(rustls::KeyLogFile::new());
        let quic = QuicServerConfig::try_from(tls).context("QUIC TLS configuration")?;
        let mut server_config = ServerConfig::with_crypto(Arc::new(quic));
        let mut transport = TransportConfig::default();
        if let Some(path) = &settings.qlog {
            let file = std::fs::File::create(path)
                .with_context(|| format!("--qlog: creating {}", path.display()))?;
            let mut q = quinn::QlogConfig::default();
            // One record per line: a LineWriter hands each event to the file as it happens.
            q.writer(Box::new(std::io::LineWriter::new(file)))
                .title(Some(format!("lb-lab backend {}", settings.name)));
            let stream = q
                .into_stream()
                .with_context(|| format!("--qlog: starting the trace in {}", path.display()))?;
            transport.qlog_stream(Some(stream));
        }
        server_config.transport_config(Arc::new(transport));

        let mut endpoint_config = match settings.reset_key {
            Some(k) => {
                EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k)))
            }
            None => EndpointConfig::default(),
        };
        endpoint_config.cid_generator(settings.generator().factory());

        let (udp, tcp) = bind_pair(settings.listen)?;
        let local = udp.local_addr()?;
        let endpoint = Endpoint::new(
            endpoint_config,
            Some(server_config),
            udp,
            Arc::new(TokioRuntime),
        )
        .context("starting the QUIC endpoint")?;
        Ok(Backend {
            endpoint,
            tcp,
            local,
            ctx: Arc::new(Ctx {
                name: settings.name.clone(),
                server_id: cid_cli::to_hex(&settings.server_id),
                port: local.port(),
            }),
        })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves until `shutdown` completes, then closes every QUIC connection (H3_NO_ERROR),
    /// waits up to a few seconds for them, and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Backend {
            endpoint, tcp, ctx, ..
        } = self;
        let quic_ctx = ctx.clone();
        let ep = endpoint.clone();
        let quic = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                tokio::spawn(serve_quic(incoming, quic_ctx.clone()));
            }
        });
        let tcp_task = tokio::spawn(async move {
            loop {
                match tcp.accept().await {
                    Ok((stream, peer)) => {
                        tokio::spawn(serve_tcp(stream, peer, ctx.clone()));
                    }
                    // Out of file descriptors and the like: back off instead of spinning.
                    Err(e) => {
                        warn!("accepting a TCP connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        shutdown.await;
        info!("shutting down: closing connections");
        tcp_task.abort();
        endpoint.close(H3_NO_ERROR.into(), b"shutting down");
        if tokio::time::timeout(SHUTDOWN_GRACE, endpoint.wait_idle())
            .await
            .is_err()
        {
            warn!("some QUIC connections did not confirm the close in {SHUTDOWN_GRACE:?}");
        }
        quic.abort();
    }
}

/// A UDP socket and a TCP listener on the same address and port.
fn bind_pair(listen: SocketAddr) -> anyhow::Result<(std::net::UdpSocket, TcpListener)> {
    use anyhow::Context as _;
    // With port 0 the UDP port may be taken for TCP; try a few.
    let tries = if listen.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = std::net::UdpSocket::bind(listen)
            .with_context(|| format!("--listen: binding UDP {listen}"))?;
        let addr = udp.local_addr()?;
        let tcp = match listen {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }?;
        // A restarted backend must not wait for TIME_WAIT connections of the last one.
        tcp.set_reuseaddr(true)?;
        match tcp.bind(addr).and_then(|()| tcp.listen(1024)) {
            Ok(l) => return Ok((udp, l)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one try")).with_context(|| format!("--listen: binding TCP {listen}"))
}

async fn serve_quic(incoming: quinn::Incoming, ctx: Arc<Ctx>) {
    let from = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            debug!("QUIC handshake with {from} failed: {e}");
            return;
        }
    };
    debug!("QUIC connection from {from}");
    let tracker = Arc::new(Mutex::new(PathTracker {
        last: canonical(conn.remote_address()),
        changes: 0,
        requests: 0,
    }));
    let mut h3 = match h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(
        conn.clone(),
    ))
    .await
    {
        Ok(h) => h,
        Err(e) => {
            debug!("HTTP/3 setup with {from} failed: {e}");
            return;
        }
    };
    loop {
        match h3.accept().await {
            Ok(Some(resolver)) => {
                let (conn, tracker, ctx) = (conn.clone(), tracker.clone(), ctx.clone());
                tokio::spawn(async move {
                    let (req, mut stream) = match resolver.resolve_request().await {
                        Ok(r) => r,
                        Err(e) => {
                            debug!("HTTP/3 request from {from}: {e}");
                            return;
                        }
                    };
                    let client = canonical(conn.remote_address());
                    let (path_changes, requests) = tracker
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .observe(client);
                    let view = ConnView {
                        client,
                        local: conn
                            .local_ip()
                            .map(|ip| SocketAddr::new(ip.to_canonical(), ctx.port)),
                        path_changes,
                        requests,
                    };
                    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let body = ctx.whoami("h3", &view, req.method().as_str(), path);
                    let resp = http::Response::builder()
                        .status(http::StatusCode::OK)
                        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                        .header(http::header::CONTENT_LENGTH, body.len())
                        .body(())
                        .expect("static response parts");
                    let sent = async {
                        stream.send_response(resp).await?;
                        if req.method() != http::Method::HEAD {
                            stream.send_data(Bytes::from(body)).await?;
                        }
                        stream.finish().await
                    };
                    if let Err(e) = sent.await {
                        debug!("HTTP/3 response to {client}: {e}");
                    }
                });
            }
            Ok(None) => break,
            Err(e) => {
                if !e.is_h3_no_error() {
                    debug!("HTTP/3 connection from {from}: {e}");
                }
                break;
            }
        }
    }
}

/// A parsed HTTP/1.x request head.
struct Head {
    method: String,
    target: String,
    keep_alive: bool,
    content_length: usize,
    chunked: bool,
}

fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method.is_empty() || target.is_empty() {
        return None;
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return None,
    };
    let (mut connection, mut content_length, mut chunked) = (None, 0, false);
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':')?;
        let v = v.trim();
        if k.eq_ignore_ascii_case("connection") {
            connection = Some(v.to_ascii_lowercase());
        } else if k.eq_ignore_ascii_case("content-length") {
            content_length = v.parse().ok()?;
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    let keep_alive = match connection.as_deref() {
        Some(c) if c.split(',').any(|t| t.trim() == "close") => false,
        Some(c) if c.split(',').any(|t| t.trim() == "keep-alive") => true,
        _ => http11,
    };
    Some(Head {
        method: method.to_string(),
        target: target.to_string(),
        keep_alive,
        content_length,
        chunked,
    })
}

async fn write_status(stream: &mut TcpStream, status: &str) {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{status}\n",
        status.len() + 1
    );
    let _ = stream.write_all(msg.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A minimal HTTP/1.1 responder: keep-alive, Content-Length bodies (read and dropped); no
/// chunked request bodies, no pipelining beyond what arrives in order.
async fn serve_tcp(mut stream: TcpStream, peer: SocketAddr, ctx: Arc<Ctx>) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok().map(canonical);
    let client = canonical(peer);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut requests = 0u64;
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return write_status(&mut stream, "431 Request Header Fields Too Large").await;
            }
            match tokio::time::timeout(TCP_IDLE, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        };
        let Some(head) = parse_head(&buf[..end - 4]) else {
            return write_status(&mut stream, "400 Bad Request").await;
        };
        if head.chunked {
            return write_status(&mut stream, "411 Length Required").await;
        }
        if head.content_length > MAX_BODY {
            return write_status(&mut stream, "413 Content Too Large").await;
        }
        while buf.len() < end + head.content_length {
            match tokio::time::timeout(TCP_IDLE, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
        buf.drain(..end + head.content_length);
        requests += 1;
        let view = ConnView {
            client,
            local,
            path_changes: 0,
            requests,
        };
        let body = ctx.whoami("http/1.1", &view, &head.method, &head.target);
        let mut out = Vec::with_capacity(256 + body.len());
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nAlt-Svc: h3=\":{}\"\r\n{}\r\n",
            body.len(),
            ctx.port,
            if head.keep_alive {
                ""
            } else {
                "Connection: close\r\n"
            }
        );
        if head.method != "HEAD" {
            out.extend_from_slice(body.as_bytes());
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
        if !head.keep_alive {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Runs `lb-lab backend` until SIGINT/SIGTERM; returns the exit status. The first two stdout lines
/// are `listening on ADDR:PORT (h3+http/1.1)` and `certificate sha256 HEX`.
pub fn run(args: &BackendArgs) -> i32 {
    match run_inner(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    }
}

fn run_inner(args: &BackendArgs) -> Result<(), BackendError> {
    use anyhow::Context as _;
    let settings = Settings::from_args(args)?;
    if let Some(path) = &settings.write_cert {
        let pem: String = settings
            .certs
            .iter()
            .map(|c| pem("CERTIFICATE", c))
            .collect();
        std::fs::write(path, pem)
            .map_err(|e| usage("--write-cert", format!("writing {}: {e}", path.display())))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        // Install the handlers before announcing the address, so a signal sent right after
        // the announcement is never fatal.
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let backend = Backend::bind(&settings)?;
        let addr = backend.local_addr();
        let fp = settings.fingerprint();
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr} (h3+http/1.1)")
            .and_then(|()| writeln!(out, "certificate sha256 {fp}"))
            .and_then(|()| out.flush())
            .context("writing to stdout")?;
        drop(out);
        info!(
            "backend {} serving HTTP/3 and HTTP/1.1 on {addr}: QUIC-LB server ID {}, \
             config {} ({:?}, {}-octet CIDs), certificate sha256 {fp}",
            settings.name,
            cid_cli::to_hex(&settings.server_id),
            settings.config.config_id(),
            settings.config.mode(),
            settings.config.cid_len(),
        );
        backend
            .serve(async move {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            })
            .await;
        info!("shut down");
        Ok(())
    })
}

/// PEM text of one DER object, e.g. `pem("CERTIFICATE", der)`.
pub fn pem(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl fmt::Display for Whoami {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn whoami_round_trips_and_ignores_unknown_keys() {
        let w = Whoami {
            name: "b1".into(),
            server_id: "0a01".into(),
            protocol: "h3".into(),
            client: "198.18.0.2:40000".parse().unwrap(),
            local: None,
            path_changes: 1,
            requests_on_connection: 3,
            method: "GET".into(),
            path: "/x?y=1".into(),
        };
        let text = w.render();
        assert!(text.starts_with("name: b1\nserver_id: 0a01\nprotocol: h3\n"));
        assert!(text.contains("\nlocal: unknown\n"));
        assert_eq!(Whoami::parse(&text).unwrap(), w);
        assert_eq!(
            Whoami::parse(&format!("{text}future_field: 7\n")).unwrap(),
            w
        );
        assert!(Whoami::parse("name: b1\n").is_err());
    }

    #[test]
    fn http1_heads() {
        let h = parse_head(b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3").unwrap();
        assert_eq!((h.method.as_str(), h.target.as_str()), ("GET", "/a"));
        assert!(h.keep_alive && h.content_length == 3 && !h.chunked);
        assert!(!parse_head(b"GET / HTTP/1.0").unwrap().keep_alive);
        assert!(
            !parse_head(b"GET / HTTP/1.1\r\nConnection: close")
                .unwrap()
                .keep_alive
        );
        assert!(parse_head(b"GET / HTTP/2").is_none());
        assert!(parse_head(b"GET /\r\n").is_none());
    }

    #[test]
    fn pem_encodes_like_base64() {
        let text = pem("CERTIFICATE", b"hello!?");
        assert_eq!(
            text,
            "-----BEGIN CERTIFICATE-----\naGVsbG8hPw==\n-----END CERTIFICATE-----\n"
        );
        let der = vec![7u8; 100];
        let back = CertificateDer::from_pem_slice(pem("CERTIFICATE", &der).as_bytes()).unwrap();
        assert_eq!(back.as_ref(), der.as_slice());
    }

    #[test]
    fn ip_addresses_are_canonical() {
        let a: SocketAddr = "[::ffff:198.18.0.2]:5".parse().unwrap();
        assert_eq!(canonical(a), "198.18.0.2:5".parse().unwrap());
        assert_eq!(
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]).to_canonical(),
            "::1".parse::<IpAddr>().unwrap()
        );
    }
}
