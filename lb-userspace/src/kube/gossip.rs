//! Membership and failure detection between the daemons: SWIM (the `foca` crate) over UDP
//! on each node's InternalIP, `[kubernetes] gossip_port` (7946, memberlist's).
//!
//! Why gossip and not the API server: a heartbeat Lease renewed fast enough to fail over in
//! a second costs one etcd write per node per few hundred milliseconds, fanned out to every
//! daemon's watch (N² watch events), and makes an API stall look like every node dying.
//! SWIM probes one member per protocol period directly (and through `k` others when the
//! direct probe gets no answer), so a crashed daemon is declared down in well under a
//! second while the API server sees only kubelet-cadence Lease renewals. foca is used as
//! is: it is transport-agnostic, so this module gives it a UDP socket, a timer queue and
//! (optionally) an HMAC; the protocol is foca's.
//!
//! - **Identity:** node name, gossip address and a start-up stamp (`bump`), so a restarted
//!   daemon is a new identity and is not held back by its old one's `Down`; foca renews it
//!   (bump + 1) when the others declared it down and it comes back (a healed partition).
//! - **Peers** are the cluster's Nodes (their InternalIP, from the Node watch): this daemon
//!   announces itself to every Node address that gossip does not count as active, every
//!   [`ANNOUNCE_EVERY`], so a new node or a healed partition joins within that time.
//! - **Joined:** foca's member list is believed only while it is connected (it has active
//!   members and probes them). Alone, or declared down by the others until it rejoined,
//!   foca stops probing and its list goes stale: every member is then reported down and
//!   every Node is announced to, so a node that lost the cluster in the middle of joining
//!   finds itself isolated instead of trusting a stale "alive".
//! - **Scope:** datagrams from an address that is no Node's InternalIP are dropped; with
//!   `gossip_key_file` every datagram carries an HMAC-SHA256 of the cluster key and one
//!   without a valid tag is dropped (counted as `rejected`). The controller further ignores
//!   members whose name is no Node or whose address is not that Node's InternalIP.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    net::{IpAddr, SocketAddr},
    num::{NonZeroU32, NonZeroUsize},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail};
use foca::{
    AccumulatingRuntime, Foca, Identity, OwnedNotification, PeriodicParams, PostcardCodec, Timer,
};
use log::{info, warn};
use serde::{Deserialize, Serialize};
use tokio::{
    net::UdpSocket,
    sync::{Notify, watch},
    time::Instant,
};

use super::liveness::GossipState;
use crate::config::KubeSettings;

/// How often this daemon announces itself to Node addresses gossip does not count active.
pub const ANNOUNCE_EVERY: Duration = Duration::from_millis(500);
/// Largest datagram (an Ethernet MTU's worth, less IP and UDP headers).
const MAX_DATAGRAM: usize = 1400;
/// Length of the HMAC-SHA256 tag in front of each datagram when a key is set.
const TAG_LEN: usize = 32;
/// Down members are forgotten after this (foca keeps them 24 h by default; a restarted
/// daemon is a new identity anyway).
const FORGET_DOWN_AFTER: Duration = Duration::from_secs(120);
/// Refresh the shared view at least this often (suspicions change no notification).
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// A daemon as gossip knows it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NodeId {
    pub name: String,
    pub addr: SocketAddr,
    /// Start-up stamp (µs since the epoch), renewed +1 when rejoining after being declared
    /// down.
    pub bump: u64,
}

impl Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

/// What gossip knows now, shared with the controller.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Node name → (gossip address, state) of its newest identity.
    pub members: BTreeMap<String, (SocketAddr, GossipState)>,
    /// Datagrams sent, accepted, and dropped (unknown source, bad tag, undecodable).
    pub sent: u64,
    pub received: u64,
    pub rejected: u64,
}

/// The running gossip agent, as the controller holds it.
pub struct Gossip {
    view: Arc<Mutex<View>>,
    peers: watch::Sender<BTreeMap<String, IpAddr>>,
    started: std::time::Instant,
    addr: SocketAddr,
}

impl Gossip {
    /// Bind `bind_ip:gossip_port` and start the agent as `node` among `peers` (see
    /// [`Gossip::set_peers`]); membership changes wake `changed`.
    pub async fn start(
        node: &str,
        bind_ip: IpAddr,
        settings: &KubeSettings,
        peers: BTreeMap<String, IpAddr>,
        changed: Arc<Notify>,
    ) -> Result<Gossip> {
        let key = match &settings.gossip_key_file {
            Some(path) => Some(read_key(path)?),
            None => None,
        };
        let addr = SocketAddr::new(bind_ip, settings.gossip_port);
        let socket = UdpSocket::bind(addr).await.with_context(|| {
            format!(
                "gossip: cannot bind UDP {addr} (is the port taken? set [kubernetes] gossip_port)"
            )
        })?;
        let bump = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        let me = NodeId {
            name: node.to_owned(),
            addr,
            bump,
        };
        let view = Arc::new(Mutex::new(View::default()));
        // The peers before the first datagram can arrive, so none is refused as unknown.
        let (peers, peers_rx) = watch::channel(peers);
        let foca = Foca::new(
            me,
            foca_config(settings)?,
            rand_foca::make_rng::<rand_foca::rngs::StdRng>(),
            PostcardCodec,
        );
        let agent = Agent {
            foca,
            rt: AccumulatingRuntime::new(),
            socket,
            key,
            timers: Timers::default(),
            peers: peers_rx,
            view: view.clone(),
            changed,
            last_publish: Instant::now(),
            unpublished_sent: 0,
            joined: false,
        };
        tokio::spawn(agent.run());
        info!("gossip: SWIM on udp {addr} as {node}");
        Ok(Gossip {
            view,
            peers,
            started: std::time::Instant::now(),
            addr,
        })
    }

    /// The cluster's Nodes (name → InternalIP): who may talk to us, whom to announce to.
    pub fn set_peers(&self, peers: BTreeMap<String, IpAddr>) {
        self.peers.send_if_modified(|p| {
            let changed = *p != peers;
            *p = peers;
            changed
        });
    }

    pub fn view(&self) -> View {
        self.view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// When the agent started (the join grace counts from here).
    pub fn started(&self) -> std::time::Instant {
        self.started
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// foca's settings from ours: probe every `gossip_probe`, a direct probe answered within
/// 40% of it (else `k` indirect ones), `gossip_suspect` to refute a suspicion.
fn foca_config(s: &KubeSettings) -> Result<foca::Config> {
    let mut c = foca::Config::new_lan(NonZeroU32::MIN.saturating_add(63));
    c.probe_period = s.gossip_probe;
    c.probe_rtt = s.gossip_probe * 2 / 5;
    c.suspect_to_down_after = s.gossip_suspect;
    c.remove_down_after = Some(FORGET_DOWN_AFTER);
    c.max_packet_size = NonZeroUsize::new(MAX_DATAGRAM - TAG_LEN).context("packet size")?;
    // Updates (a member down) spread within half a probe period, not only piggybacked on
    // the next probes.
    c.periodic_gossip = Some(PeriodicParams {
        frequency: (s.gossip_probe / 2).max(Duration::from_millis(10)),
        num_members: NonZeroUsize::MIN.saturating_add(2),
    });
    c.periodic_announce_to_down_members = Some(PeriodicParams {
        frequency: Duration::from_secs(2),
        num_members: NonZeroUsize::MIN.saturating_add(1),
    });
    Ok(c)
}

/// The gossip key: the file's bytes, surrounding whitespace trimmed.
fn read_key(path: &std::path::Path) -> Result<ring::hmac::Key> {
    let raw = std::fs::read(path).with_context(|| {
        format!(
            "gossip_key_file {}: cannot read it (mount the gossip key Secret there, or remove \
             the setting)",
            path.display()
        )
    })?;
    let key = raw.trim_ascii();
    if key.len() < 16 {
        bail!(
            "gossip_key_file {}: {} bytes; use at least 16 random bytes (e.g. `openssl rand \
             -base64 32`)",
            path.display(),
            key.len()
        );
    }
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key))
}

/// A datagram as sent: the HMAC-SHA256 tag of `data` in front when there is a key.
fn seal(key: Option<&ring::hmac::Key>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TAG_LEN + data.len());
    if let Some(key) = key {
        out.extend_from_slice(ring::hmac::sign(key, data).as_ref());
    }
    out.extend_from_slice(data);
    out
}

/// The payload of a received datagram, when its tag is valid (or there is no key).
fn open<'a>(key: Option<&ring::hmac::Key>, datagram: &'a [u8]) -> Option<&'a [u8]> {
    match key {
        None => Some(datagram),
        Some(key) => {
            let (tag, rest) = datagram.split_at_checked(TAG_LEN)?;
            ring::hmac::verify(key, rest, tag).ok().map(|_| rest)
        }
    }
}

/// foca's timers, delivered when due.
#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: HashMap<u64, Timer<NodeId>>,
    seq: u64,
}

impl Timers {
    fn add(&mut self, at: Instant, t: Timer<NodeId>) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq)));
        self.pending.insert(self.seq, t);
    }

    fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    fn due(&mut self, now: Instant) -> Vec<Timer<NodeId>> {
        let mut out = Vec::new();
        while let Some(Reverse((at, seq))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if let Some(t) = self.pending.remove(&seq) {
                out.push(t);
            }
        }
        out
    }
}

type Swim = Foca<NodeId, PostcardCodec, rand_foca::rngs::StdRng, foca::NoCustomBroadcast>;

struct Agent {
    foca: Swim,
    rt: AccumulatingRuntime<NodeId>,
    socket: UdpSocket,
    key: Option<ring::hmac::Key>,
    timers: Timers,
    peers: watch::Receiver<BTreeMap<String, IpAddr>>,
    view: Arc<Mutex<View>>,
    changed: Arc<Notify>,
    last_publish: Instant,
    /// Datagrams sent since the last publish.
    unpublished_sent: u64,
    /// foca is connected: it has active members and probes them. Not while it is alone,
    /// nor after the others declared this node down until it has rejoined: foca then
    /// stops probing and its member list goes stale, so none of it is believed.
    joined: bool,
}

impl Agent {
    async fn run(mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 64];
        let mut announce = tokio::time::interval(ANNOUNCE_EVERY);
        announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = self
                .timers
                .next()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.on_datagram(&buf[..n], from),
                    Err(e) => warn!("gossip: receiving: {e}"),
                },
                _ = tokio::time::sleep_until(next) => {
                    for t in self.timers.due(Instant::now()) {
                        if let Err(e) = self.foca.handle_timer(t, &mut self.rt) {
                            warn!("gossip: timer: {e}");
                        }
                    }
                }
                _ = announce.tick() => self.announce_to_strangers(),
                r = self.peers.changed() => if r.is_err() {
                    // The controller is gone: say goodbye so the others need not probe.
                    let _ = self.foca.leave_cluster(&mut self.rt);
                    self.flush().await;
                    return;
                },
            }
            self.flush().await;
        }
    }

    /// A datagram from a Node address with a valid tag goes to foca; others are dropped.
    fn on_datagram(&mut self, data: &[u8], from: SocketAddr) {
        let known = self.peers.borrow().values().any(|ip| *ip == from.ip());
        let payload = if known {
            open(self.key.as_ref(), data)
        } else {
            None
        };
        let ok = payload.is_some_and(|p| self.foca.handle_data(p, &mut self.rt).is_ok());
        let mut v = self.view.lock().unwrap_or_else(PoisonError::into_inner);
        if ok {
            v.received += 1;
        } else {
            v.rejected += 1;
        }
    }

    /// Announce to every Node address that no active member has (a new node, a restarted
    /// daemon, the other side of a healed partition); to every Node while not joined.
    fn announce_to_strangers(&mut self) {
        let active: Vec<IpAddr> = if self.joined {
            self.foca.iter_members().map(|m| m.id().addr.ip()).collect()
        } else {
            Vec::new()
        };
        let me = self.foca.identity().addr;
        let strangers: Vec<(String, IpAddr)> = self
            .peers
            .borrow()
            .iter()
            .filter(|(_, ip)| **ip != me.ip() && !active.contains(ip))
            .map(|(n, ip)| (n.clone(), *ip))
            .collect();
        for (name, ip) in strangers {
            let dst = NodeId {
                name,
                addr: SocketAddr::new(ip, me.port()),
                bump: 0,
            };
            if let Err(e) = self.foca.announce(dst, &mut self.rt) {
                warn!("gossip: announcing to {ip}: {e}");
            }
        }
    }

    /// Send what foca queued, schedule its timers, publish membership changes.
    async fn flush(&mut self) {
        let mut sent = 0;
        while let Some((to, data)) = self.rt.to_send() {
            let out = seal(self.key.as_ref(), &data);
            if self.socket.send_to(&out, to.addr).await.is_ok() {
                sent += 1;
            }
        }
        let now = Instant::now();
        while let Some((after, t)) = self.rt.to_schedule() {
            self.timers.add(now + after, t);
        }
        let mut changed = false;
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => {
                    info!("gossip: {} ({}) is up", id.name, id.addr);
                    changed = true;
                }
                OwnedNotification::MemberDown(id) => {
                    info!("gossip: {} ({}) is down", id.name, id.addr);
                    changed = true;
                }
                OwnedNotification::Active => {
                    info!("gossip: joined the cluster");
                    self.joined = true;
                    changed = true;
                }
                OwnedNotification::Idle => {
                    warn!("gossip: no member reachable");
                    self.joined = false;
                    changed = true;
                }
                OwnedNotification::Defunct => {
                    warn!("gossip: the others declared this node down; rejoining");
                    self.joined = false;
                    changed = true;
                }
                OwnedNotification::Rejoin(id) => {
                    info!("gossip: rejoining as {}/{}", id.name, id.bump);
                    self.joined = false;
                    changed = true;
                }
                _ => {}
            }
        }
        self.unpublished_sent += sent;
        if changed || now.duration_since(self.last_publish) >= PUBLISH_EVERY {
            self.publish(changed);
        }
    }

    /// Copy foca's membership into the shared view; a change wakes the controller.
    fn publish(&mut self, changed: bool) {
        let mut newest: BTreeMap<String, (u64, SocketAddr, GossipState)> = BTreeMap::new();
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            let state = match m.state() {
                // Not joined: what foca last knew is stale, nobody is reached.
                _ if !self.joined => GossipState::Down,
                foca::State::Alive => GossipState::Alive,
                foca::State::Suspect => GossipState::Suspect,
                foca::State::Down => GossipState::Down,
            };
            let e = newest
                .entry(id.name.clone())
                .or_insert((id.bump, id.addr, state));
            if id.bump > e.0 {
                *e = (id.bump, id.addr, state);
            }
        }
        let members = newest
            .into_iter()
            .map(|(n, (_, a, s))| (n, (a, s)))
            .collect();
        let mut v = self.view.lock().unwrap_or_else(PoisonError::into_inner);
        let moved = v.members != members;
        v.members = members;
        v.sent += std::mem::take(&mut self.unpublished_sent);
        drop(v);
        self.last_publish = Instant::now();
        if changed || moved {
            self.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &[u8]) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k)
    }

    #[test]
    fn sealed_datagrams_open_only_with_the_same_key_and_unaltered() {
        let k = key(b"0123456789abcdef-cluster-key");
        let d = seal(Some(&k), b"swim message");
        assert_eq!(d.len(), TAG_LEN + 12);
        assert_eq!(open(Some(&k), &d), Some(&b"swim message"[..]));
        assert_eq!(open(Some(&key(b"another key, also 16+")), &d), None);
        let mut tampered = d.clone();
        tampered[TAG_LEN] ^= 1;
        assert_eq!(open(Some(&k), &tampered), None);
        // Untagged (a node without the key) and runt datagrams are refused.
        assert_eq!(open(Some(&k), b"swim message"), None);
        assert_eq!(open(Some(&k), &d[..10]), None);
        // Without a key datagrams go through as they are.
        assert_eq!(seal(None, b"x"), b"x");
        assert_eq!(open(None, b"x"), Some(&b"x"[..]));
    }

    #[test]
    fn a_short_or_missing_key_file_is_refused_with_what_to_do() {
        let dir = std::env::temp_dir().join(format!("lb-gossip-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "tooshort\n").unwrap();
        let e = read_key(&short).err().unwrap().to_string();
        assert!(e.contains("8 bytes; use at least 16"), "{e}");
        let e = format!("{:#}", read_key(&dir.join("absent")).err().unwrap());
        assert!(
            e.contains("cannot read it (mount the gossip key Secret"),
            "{e}"
        );
        let good = dir.join("good");
        std::fs::write(&good, "  0123456789abcdef0123  \n").unwrap();
        let k = read_key(&good).unwrap();
        // Surrounding whitespace is not part of the key.
        let d = seal(Some(&k), b"m");
        assert!(open(Some(&key(b"0123456789abcdef0123")), &d).is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
