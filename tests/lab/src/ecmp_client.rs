//! The client side of the BGP lab ([`crate::bgp_lab`]): long-lived connections that keep
//! making requests while the router's ECMP set changes, and new connections opened one after
//! another (from a chosen source port when a test needs a flow that hashes to one node).
//!
//! Everything runs on one thread that entered the client's network namespace, with a
//! current-thread tokio runtime, so every socket (quinn's UDP sockets, the TCP streams)
//! belongs to that namespace. The test talks to it through [`Client`]'s blocking methods.
//!
//! A long-lived connection is *alive* until one of its requests fails or is answered by a
//! backend other than the one that answered its first request; from then on it is *broken*
//! and never used again. A connection that survives an ECMP reshuffle is one that is still
//! alive after requests made once the router's routes changed.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::timeout,
};

use crate::{
    backend::Whoami,
    netns::NetNs,
    probe::{H3Client, Trust, client_config},
};

/// The transport of a long-lived connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// HTTP/3 over QUIC (UDP), routed by lb through the QUIC-LB connection ID.
    Quic,
    /// HTTP/1.1 keep-alive over TCP.
    Tcp,
}

impl Proto {
    /// `udp` or `tcp`, as `ip route get ... ipproto` spells it.
    pub fn l4(self) -> &'static str {
        match self {
            Proto::Quic => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// One long-lived connection as the test sees it.
#[derive(Clone, Debug)]
pub struct Flow {
    pub id: usize,
    pub proto: Proto,
    /// The client's end (the router hashes on it with the VIP's end).
    pub local: SocketAddr,
    /// The backend that answered its first request.
    pub backend: String,
    /// The client address the backend saw last (the client's own, or a node's after a
    /// masquerade).
    pub seen_as: SocketAddr,
    /// Why it broke, if it did.
    pub broken: Option<String>,
}

impl Flow {
    pub fn alive(&self) -> bool {
        self.broken.is_none()
    }
}

/// The outcome of a stream of new connections ([`Client::churn`]).
#[derive(Clone, Debug, Default)]
pub struct Churn {
    pub attempted: usize,
    pub failed: usize,
    /// The first few failures.
    pub errors: Vec<String>,
    /// The slowest successful connection (connect + one request).
    pub slowest: Duration,
}

type Reply<T> = mpsc::Sender<Result<T>>;

enum Cmd {
    Open {
        quic: usize,
        tcp: usize,
        step: Duration,
        reply: Reply<()>,
    },
    Round {
        step: Duration,
        reply: Reply<Vec<Flow>>,
    },
    Close {
        reply: Reply<()>,
    },
    Connect {
        port: u16,
        step: Duration,
        reply: Reply<Whoami>,
    },
    Churn {
        stop: Arc<AtomicBool>,
        progress: Arc<AtomicUsize>,
        step: Duration,
        reply: Reply<Churn>,
    },
}

/// The client namespace's driver thread.
pub struct Client {
    tx: Option<mpsc::Sender<Cmd>>,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    /// Start the driver thread inside `ns`; its connections go to `target` (the VIP) and it
    /// accepts any certificate (the lab's backends have self-signed ones).
    pub fn start(ns: &NetNs, target: SocketAddr) -> Result<Client> {
        let path = ns.path();
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name("ecmp-client".into())
            .spawn(move || {
                let entered = (|| -> Result<()> {
                    let f = std::fs::File::open(&path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    // SAFETY: setns on a namespace fd we own, for this thread only.
                    if unsafe {
                        libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET)
                    } != 0
                    {
                        bail!("setns: {}", std::io::Error::last_os_error());
                    }
                    Ok(())
                })();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let rt = match (entered, rt) {
                    (Ok(()), Ok(rt)) => rt,
                    (Err(e), _) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                    (_, Err(e)) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                rt.block_on(drive(rx, target));
            })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the client thread died"))??;
        Ok(Client {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .context("client stopped")?
            .send(make(reply))
            .map_err(|_| anyhow!("the client thread died"))?;
        rx.recv().map_err(|_| anyhow!("the client thread died"))?
    }

    /// Open `quic` HTTP/3 and `tcp` HTTP/1.1 keep-alive connections (closing earlier ones),
    /// each answered once; every handshake and first request bounded by `step`.
    pub fn open(&self, quic: usize, tcp: usize, step: Duration) -> Result<Vec<Flow>> {
        self.call(|reply| Cmd::Open {
            quic,
            tcp,
            step,
            reply,
        })?;
        self.round(step)
    }

    /// One request on every alive connection, concurrently, each bounded by `step`; every
    /// connection's state afterwards.
    pub fn round(&self, step: Duration) -> Result<Vec<Flow>> {
        self.call(|reply| Cmd::Round { step, reply })
    }

    /// Close every long-lived connection.
    pub fn close(&self) -> Result<()> {
        self.call(|reply| Cmd::Close { reply })
    }

    /// A new TCP connection from source port `port` (0: any) and one HTTP/1.1 request on it,
    /// bounded by `step`: who answered.
    pub fn connect(&self, port: u16, step: Duration) -> Result<Whoami> {
        self.call(|reply| Cmd::Connect { port, step, reply })
    }

    /// Open new TCP connections one after another (each: connect, one request, close; each
    /// bounded by `step`) until `stop` is set. Returns a handle to wait for the tally.
    /// `progress` counts the connections attempted so far.
    pub fn churn(
        &self,
        stop: Arc<AtomicBool>,
        progress: Arc<AtomicUsize>,
        step: Duration,
    ) -> Result<mpsc::Receiver<Result<Churn>>> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .context("client stopped")?
            .send(Cmd::Churn {
                stop,
                progress,
                step,
                reply,
            })
            .map_err(|_| anyhow!("the client thread died"))?;
        Ok(rx)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Conn {
    Quic(H3Client),
    Tcp(TcpStream),
}

struct Live {
    flow: Flow,
    conn: Option<Conn>,
}

async fn drive(rx: mpsc::Receiver<Cmd>, target: SocketAddr) {
    let mut live: Vec<Live> = Vec::new();
    // The commands come from a blocking channel; the runtime has nothing else to do between
    // them except quinn's timers, which a blocking recv would starve: poll it.
    loop {
        let cmd = match rx.try_recv() {
            Ok(c) => c,
            Err(mpsc::TryRecvError::Empty) => {
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            Err(mpsc::TryRecvError::Disconnected) => break,
        };
        match cmd {
            Cmd::Open {
                quic,
                tcp,
                step,
                reply,
            } => {
                close_all(&mut live).await;
                let r = open(&mut live, target, quic, tcp, step).await;
                let _ = reply.send(r);
            }
            Cmd::Round { step, reply } => {
                round(&mut live, target, step).await;
                let _ = reply.send(Ok(live.iter().map(|l| l.flow.clone()).collect()));
            }
            Cmd::Close { reply } => {
                close_all(&mut live).await;
                let _ = reply.send(Ok(()));
            }
            Cmd::Connect { port, step, reply } => {
                let _ = reply.send(connect_once(target, port, step).await);
            }
            Cmd::Churn {
                stop,
                progress,
                step,
                reply,
            } => {
                let mut c = Churn::default();
                while !stop.load(Ordering::Relaxed) {
                    c.attempted += 1;
                    progress.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    match connect_once(target, 0, step).await {
                        Ok(_) => c.slowest = c.slowest.max(t.elapsed()),
                        Err(e) => {
                            c.failed += 1;
                            if c.errors.len() < 5 {
                                c.errors.push(format!("{e:#}"));
                            }
                        }
                    }
                }
                let _ = reply.send(Ok(c));
            }
        }
    }
    close_all(&mut live).await;
}

async fn close_all(live: &mut Vec<Live>) {
    for l in live.drain(..) {
        if let Some(Conn::Quic(c)) = l.conn {
            c.close(Duration::from_millis(100)).await;
        }
    }
}

async fn open(
    live: &mut Vec<Live>,
    target: SocketAddr,
    quic: usize,
    tcp: usize,
    step: Duration,
) -> Result<()> {
    let config = client_config(&Trust::Insecure).map_err(|e| anyhow!("{e}"))?;
    let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    let sni = target.ip().to_string();
    for _ in 0..quic {
        let c = H3Client::connect(bind, target, &sni, config.clone(), step)
            .await
            .map_err(|e| anyhow!("QUIC connection {}: {e}", live.len()))?;
        let local = c.endpoint.local_addr()?;
        live.push(Live {
            flow: new_flow(live.len(), Proto::Quic, local),
            conn: Some(Conn::Quic(c)),
        });
    }
    for _ in 0..tcp {
        let s = timeout(step, TcpStream::connect(target))
            .await
            .map_err(|_| anyhow!("TCP connection {}: no connection in {step:?}", live.len()))??;
        let local = s.local_addr()?;
        live.push(Live {
            flow: new_flow(live.len(), Proto::Tcp, local),
            conn: Some(Conn::Tcp(s)),
        });
    }
    Ok(())
}

fn new_flow(id: usize, proto: Proto, local: SocketAddr) -> Flow {
    Flow {
        id,
        proto,
        local,
        backend: String::new(),
        seen_as: local,
        broken: None,
    }
}

async fn round(live: &mut [Live], target: SocketAddr, step: Duration) {
    let work = live
        .iter_mut()
        .filter(|l| l.flow.alive())
        .map(|l| async move {
            let r = match l.conn.as_mut() {
                Some(Conn::Quic(c)) => c
                    .whoami(&format!("/quic/{}", l.flow.id), step)
                    .await
                    .map_err(|e| anyhow!("{e}")),
                Some(Conn::Tcp(s)) => timeout(
                    step,
                    http1_get(s, target, &format!("/tcp/{}", l.flow.id), true),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow!("no response in {step:?}"))),
                None => Err(anyhow!("closed")),
            };
            match r {
                Ok(who) if l.flow.backend.is_empty() || l.flow.backend == who.name => {
                    l.flow.backend = who.name;
                    l.flow.seen_as = who.client;
                }
                Ok(who) => {
                    l.flow.broken =
                        Some(format!("answered by {} after {}", who.name, l.flow.backend))
                }
                Err(e) => l.flow.broken = Some(format!("{e:#}")),
            }
            if !l.flow.alive()
                && let Some(Conn::Quic(c)) = l.conn.take()
            {
                c.conn.close(0u32.into(), b"broken");
            }
        });
    futures::future::join_all(work).await;
}

/// One GET on `s` (keep-alive unless `keep` is false): the whoami body, parsed.
async fn http1_get(
    s: &mut TcpStream,
    target: SocketAddr,
    path: &str,
    keep: bool,
) -> Result<Whoami> {
    let conn = if keep { "keep-alive" } else { "close" };
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: {conn}\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status = head.lines().next().unwrap_or_default().to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .ok_or_else(|| anyhow!("no Content-Length in {head:?}"))?;
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    bail!("connection closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            if !status.contains(" 200") {
                bail!("{status}");
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
            return Whoami::parse(&body).map_err(|e| anyhow!("{e}: {body:?}"));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed (reset or FIN) before a response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

async fn connect_once(target: SocketAddr, port: u16, step: Duration) -> Result<Whoami> {
    let work = async {
        let sock = TcpSocket::new_v4()?;
        if port != 0 {
            sock.set_reuseaddr(true)?;
            sock.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))?;
        }
        let mut s = sock.connect(target).await?;
        // Do not leave TIME_WAIT behind on the client: the server closes first.
        http1_get(&mut s, target, "/new", false).await
    };
    timeout(step, work)
        .await
        .unwrap_or_else(|_| Err(anyhow!("no connection and answer in {step:?}")))
}
