//! A quinn [`ConnectionIdGenerator`] that issues QUIC-LB connection IDs: every CID a quinn
//! server endpoint hands out (the SCID of its first Initial, every NEW_CONNECTION_ID) encodes
//! the backend's server ID, so lb's XDP program routes the connection to it whatever address
//! the client migrates to.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use lb_common::quic_lb::Config;
//! use lb_lab::quic_lb::QuicLbCidGenerator;
//!
//! let config = Config::new(0, 3, 6, Some([0x42; 16]), true)?;
//! let generator = QuicLbCidGenerator::new(config, &[0x0a, 0x00, 0x07])?
//!     .with_worker(1, 4)? // endpoint 1 of up to 16 sharing this server ID
//!     .with_lifetime(Some(std::time::Duration::from_secs(600)));
//! let rotation = generator.rotation(); // keep it to switch configurations later
//! let mut endpoint_config = quinn::EndpointConfig::default();
//! endpoint_config.cid_generator(generator.factory());
//! # Ok(()) }
//! ```
//!
//! # Nonces
//!
//! The draft requires that a server never issue the same nonce twice for one server ID under one
//! configuration (a repeated nonce repeats the CID, its stateless reset token, and under a key
//! leaks structure), and that plaintext nonces not be linkable. Each generator therefore splits
//! the `8 * nonce_len`-bit nonce, most significant bit first, into
//!
//! ```text
//! | worker id (W bits) | fresh random bits (R bits) | P(counter) (C bits) |
//! ```
//!
//! - `C = min(8 * nonce_len - W, 64)`: a counter that starts at a random value and counts
//!   through all `2^C` values, passed through `P`, a permutation of the `C`-bit values keyed
//!   by a random AES-128 key of this generator (a four-round Feistel network with AES as its
//!   round function). Distinct counter values give distinct nonces, so a generator never
//!   repeats a nonce, while the nonces look random (no sequence numbers in plaintext CIDs).
//! - `R = 8 * nonce_len - W - C`: only for nonces over 64 bits + W, filled from the CSPRNG
//!   on every CID; they add entropy, uniqueness never depends on them.
//! - `W`: the worker id, see below. 0 bits by default.
//!
//! **Exhaustion.** When the counter would come back to its start, all `2^C` nonces are used.
//! The draft says such a server "MUST either switch to a different configuration, or if none
//! exists, use the 4-tuple routing config rotation codepoint": from then on the generator
//! issues *unroutable* CIDs (config rotation bits 0b111, the rest random, same length, the length
//! self-description kept if configured) and logs a warning once. lb routes them by the fallback
//! (the client 4-tuple): the connection works but does not survive migration. A
//! [`ConfigRotation::rotate`] to a new key or config ID gives the generator a fresh nonce
//! space. With the default `W = 0` and `nonce_len >= 8` the space is `2^64` CIDs and this never
//! happens; it matters for 4-octet nonces with many worker bits (`2^(32 - W)` CIDs).
//!
//! # Several endpoints sharing one server ID
//!
//! Each quinn `Endpoint` calls the factory once and gets its own generator, with its own
//! random permutation key and counter start; a restarted process gets new ones too. Two
//! generators for the same server ID and configuration are kept disjoint by the **worker id**,
//! which the operator assigns: `with_worker(id, bits)` puts `id` in the top `bits` bits of every
//! nonce, so endpoints with different worker ids can never issue the same nonce, whatever their
//! keys and counters, and each still has `2^min(8 * nonce_len - bits, 64)` nonces of its own.
//! In plaintext mode the worker id is visible in the CID (it identifies the endpoint among those
//! of one server, which the visible server ID already narrows to); under a key it is encrypted.
//!
//! Without distinct worker ids (same id, or `bits = 0`), generators' nonces are independent
//! pseudorandom draws (independent permutation keys), so the birthday bound applies: `E`
//! endpoints that issue `n` CIDs each, with `b` bits not fixed by the worker id
//! (`b = 8 * nonce_len - W`), repeat some nonce with probability about
//! `(E * n)^2 / 2^(b + 1)` (a little less: a generator never collides with itself). Examples:
//! `nonce_len` 4, two endpoints, 10,000 CIDs each: `4e8 / 2^33 ~ 5%` — assign worker ids.
//! `nonce_len` 8, ten endpoints, 10^6 CIDs each: `1e14 / 2^65 ~ 3e-6`. `nonce_len` 12:
//! `1e18 / 2^97 ~ 6e-12` for 10^9 CIDs in total. The same bound covers a process that restarts
//! under the same worker id and configuration: rotate the configuration (or key) on restart, or
//! give restarts distinct worker ids, when the nonce is short.
//!
//! # Rotation and CID lifetime
//!
//! [`ConfigRotation::rotate`] switches every generator built from one
//! [`QuicLbCidGenerator`] (its [`factory`](QuicLbCidGenerator::factory) and
//! [`fresh`](QuicLbCidGenerator::fresh) copies) to a new configuration or server ID; each
//! generator adopts it the next time quinn asks it for a CID. The CID length must stay the same
//! (quinn parses short headers with one fixed length per endpoint). Quinn only asks for CIDs when
//! a connection starts or when it replaces one, so on its own a rotation reaches new connections
//! only. Set [`with_lifetime`](QuicLbCidGenerator::with_lifetime): quinn then retires every CID
//! it issued after that long (NEW_CONNECTION_ID with Retire Prior To) and issues replacements,
//! which come from the new configuration, so within one lifetime of a rotation every connection
//! runs on CIDs of the new configuration and the old configuration (and key) can be dropped
//! from the load balancer.

use std::{
    fmt,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use lb_common::quic_lb::{
    Codec, Config, MAX_CID_LEN, MAX_SERVER_ID_LEN, UNROUTABLE_CONFIG_ID,
    aes::{self, RoundKeys},
};
use quinn::{ConnectionId, ConnectionIdGenerator};
use quinn_proto::InvalidCid;
use rand::{Rng, RngCore};

/// Most worker-id bits [`QuicLbCidGenerator::with_worker`] accepts.
pub const MAX_WORKER_BITS: u32 = 32;
/// Fewest counter bits a generator keeps (a nonce space of at least 256 CIDs).
pub const MIN_COUNTER_BITS: u32 = 8;
/// Widest counter: `2^64` CIDs per key are more than any endpoint issues.
pub const MAX_COUNTER_BITS: u32 = 64;

/// Why a generator could not be built or rotated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeneratorError {
    #[error(
        "server ID is {len} octets but the QUIC-LB configuration says {expected}: \
         give the backend a server ID of the configured length"
    )]
    ServerIdLength { len: usize, expected: u8 },
    #[error(
        "{bits} worker-id bits do not fit a {nonce_len}-octet nonce: use at most {MAX_WORKER_BITS} \
         and leave at least {MIN_COUNTER_BITS} bits for the counter"
    )]
    WorkerBits { bits: u32, nonce_len: u8 },
    #[error("worker id {id} does not fit in {bits} bits: use 0..{}", 1u64 << bits)]
    WorkerId { id: u32, bits: u32 },
    #[error(
        "the new QUIC-LB configuration gives {new}-octet connection IDs but this endpoint issues \
         {old}-octet ones; quinn parses short headers with one fixed length, so a rotation must \
         keep server ID + nonce length the same"
    )]
    CidLength { old: usize, new: usize },
}

/// A server ID of at most [`MAX_SERVER_ID_LEN`] octets.
#[derive(Copy, Clone, PartialEq, Eq)]
struct ServerId {
    bytes: [u8; MAX_SERVER_ID_LEN],
    len: u8,
}

impl ServerId {
    fn new(config: &Config, sid: &[u8]) -> Result<ServerId, GeneratorError> {
        if sid.len() != config.server_id_len() as usize {
            return Err(GeneratorError::ServerIdLength {
                len: sid.len(),
                expected: config.server_id_len(),
            });
        }
        let mut bytes = [0u8; MAX_SERVER_ID_LEN];
        bytes[..sid.len()].copy_from_slice(sid);
        Ok(ServerId {
            bytes,
            len: sid.len() as u8,
        })
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// What every generator of one family issues under; replaced by a rotation.
#[derive(Copy, Clone)]
struct Target {
    config: Config,
    server_id: ServerId,
    worker_id: u32,
    worker_bits: u32,
}

impl Target {
    fn check_worker(config: &Config, id: u32, bits: u32) -> Result<(), GeneratorError> {
        let nonce_bits = 8 * config.nonce_len() as u32;
        if bits > MAX_WORKER_BITS || nonce_bits < bits + MIN_COUNTER_BITS {
            return Err(GeneratorError::WorkerBits {
                bits,
                nonce_len: config.nonce_len(),
            });
        }
        if bits < 32 && u64::from(id) >> bits != 0 {
            return Err(GeneratorError::WorkerId { id, bits });
        }
        Ok(())
    }
}

/// State shared by a generator, its `fresh` copies and its [`ConfigRotation`] handles.
struct Shared {
    /// Bumped by every rotation; generators compare it with their own on each CID.
    epoch: AtomicU64,
    target: RwLock<(u64, Target)>,
    cid_len: usize,
    lifetime: Option<Duration>,
}

/// A keyed permutation of the `bits`-bit integers (8..=64): a four-round Feistel network with
/// AES-128 as the round function. Four rounds of a pseudorandom function make a pseudorandom
/// permutation (Luby-Rackoff); odd widths alternate the halves' widths, which keeps each round
/// invertible.
struct Permutation {
    keys: RoundKeys,
    bits: u32,
}

const fn low_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

impl Permutation {
    fn round(&self, round: u8, x: u64) -> u64 {
        // Domain separation: a tag, the round and the width, then the input.
        let mut block = [0u8; 16];
        block[..4].copy_from_slice(b"lbn\0");
        block[4] = round;
        block[5] = self.bits as u8;
        block[8..].copy_from_slice(&x.to_be_bytes());
        let out = aes::encrypt_block(&self.keys, &block);
        u64::from_be_bytes(out[..8].try_into().unwrap_or([0; 8]))
    }

    fn apply(&self, x: u64) -> u64 {
        let (mut lw, mut rw) = (self.bits / 2, self.bits - self.bits / 2);
        let mut l = (x >> rw) & low_mask(lw);
        let mut r = x & low_mask(rw);
        for round in 0..4 {
            let f = self.round(round, r) & low_mask(lw);
            (l, r) = (r, l ^ f);
            (lw, rw) = (rw, lw);
        }
        // Four swaps: the widths are back to (left, right).
        (l << rw) | r
    }
}

/// One configuration's codec and nonce space, as this generator uses it.
struct Issuer {
    codec: Codec,
    server_id: ServerId,
    worker_id: u32,
    worker_bits: u32,
    perm: Permutation,
    start: u64,
    next: u64,
    /// CIDs issued under this issuer, for [`QuicLbCidGenerator::issued`].
    issued: u64,
    exhausted: bool,
}

impl Issuer {
    fn new(t: &Target, start: Option<u64>) -> Issuer {
        let nonce_bits = 8 * t.config.nonce_len() as u32;
        let bits = (nonce_bits - t.worker_bits).min(MAX_COUNTER_BITS);
        let mut rng = rand::rng();
        let mut key = [0u8; 16];
        rng.fill_bytes(&mut key);
        let start = start.unwrap_or_else(|| rng.random::<u64>()) & low_mask(bits);
        Issuer {
            codec: Codec::new(t.config),
            server_id: t.server_id,
            worker_id: t.worker_id,
            worker_bits: t.worker_bits,
            perm: Permutation {
                keys: RoundKeys::new(&key),
                bits,
            },
            start,
            next: start,
            issued: 0,
            exhausted: false,
        }
    }

    fn config(&self) -> &Config {
        self.codec.config()
    }

    /// The next unused nonce, or `None` once all are used.
    fn nonce(&mut self, out: &mut [u8]) -> Option<()> {
        if self.exhausted {
            return None;
        }
        let counter = self.next;
        let bits = self.perm.bits;
        self.next = (self.next.wrapping_add(1)) & low_mask(bits);
        self.exhausted = self.next == self.start;
        self.issued += 1;
        rand::rng().fill_bytes(out);
        let total = 8 * out.len() as u32;
        put_bits(out, 0, self.worker_bits, u64::from(self.worker_id));
        put_bits(out, total - bits, bits, self.perm.apply(counter));
        Some(())
    }

    fn remaining(&self) -> u128 {
        if self.exhausted {
            return 0;
        }
        let space = 1u128 << self.perm.bits;
        let used = (self.next.wrapping_sub(self.start) & low_mask(self.perm.bits)) as u128;
        space - used
    }
}

/// Whether `cid` decodes to `server_id` under `codec`.
fn decodes_to(codec: &Codec, server_id: &ServerId, cid: &[u8]) -> bool {
    let mut sid = [0u8; MAX_SERVER_ID_LEN];
    match codec.decode(cid, &mut sid) {
        Ok(n) => sid[..n] == *server_id.as_slice(),
        Err(_) => false,
    }
}

/// Writes the low `width` bits of `value` into `buf` at bit `offset`, counting from the most
/// significant bit of `buf[0]` (big-endian bit order).
fn put_bits(buf: &mut [u8], offset: u32, width: u32, value: u64) {
    for i in 0..width {
        let bit = (value >> (width - 1 - i)) & 1;
        let pos = (offset + i) as usize;
        let mask = 0x80u8 >> (pos % 8);
        if bit == 1 {
            buf[pos / 8] |= mask;
        } else {
            buf[pos / 8] &= !mask;
        }
    }
}

/// Issues QUIC-LB connection IDs for one server ID; see the [module docs](self) for the nonce
/// scheme, worker ids, exhaustion and rotation.
///
/// Constant length ([`Config::cid_len`]); the first octet carries the config rotation bits and,
/// if the configuration says so ([`Config::encode_length`]), the length self-description,
/// otherwise random bits.
pub struct QuicLbCidGenerator {
    shared: Arc<Shared>,
    epoch: u64,
    issuer: Issuer,
    /// What this generator issued under before the last rotation it adopted: those CIDs are
    /// live until quinn retires them, so `validate` accepts them.
    previous: Option<(Codec, ServerId)>,
    /// This generator has handed out unroutable CIDs (after exhausting a nonce space).
    issued_unroutable: bool,
}

impl fmt::Debug for QuicLbCidGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicLbCidGenerator")
            .field("config", self.issuer.config())
            .field("server_id", &self.issuer.server_id.as_slice())
            .field("worker_id", &self.issuer.worker_id)
            .field("worker_bits", &self.issuer.worker_bits)
            .field("counter_bits", &self.issuer.perm.bits)
            .field("issued", &self.issuer.issued)
            .field("exhausted", &self.issuer.exhausted)
            .finish_non_exhaustive()
    }
}

impl QuicLbCidGenerator {
    /// A generator issuing CIDs for `server_id` (exactly `config.server_id_len()` octets)
    /// under `config`, worker id 0 of 0 bits, no CID lifetime.
    pub fn new(config: Config, server_id: &[u8]) -> Result<Self, GeneratorError> {
        let target = Target {
            config,
            server_id: ServerId::new(&config, server_id)?,
            worker_id: 0,
            worker_bits: 0,
        };
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            target: RwLock::new((0, target)),
            cid_len: config.cid_len(),
            lifetime: None,
        });
        Ok(Self::from_shared(shared, None))
    }

    fn from_shared(shared: Arc<Shared>, start: Option<u64>) -> Self {
        let (epoch, target) = *shared.target.read().unwrap_or_else(|p| p.into_inner());
        QuicLbCidGenerator {
            shared,
            epoch,
            issuer: Issuer::new(&target, start),
            previous: None,
            issued_unroutable: false,
        }
    }

    /// Reserves the top `worker_bits` bits of every nonce for `worker_id`, so that endpoints
    /// with distinct worker ids never issue the same nonce (see the module docs). At most
    /// [`MAX_WORKER_BITS`], leaving at least [`MIN_COUNTER_BITS`] of the nonce to the counter.
    /// Call it before [`factory`](Self::factory), [`fresh`](Self::fresh) and
    /// [`rotation`](Self::rotation): it starts a new family of generators.
    pub fn with_worker(self, worker_id: u32, worker_bits: u32) -> Result<Self, GeneratorError> {
        let (_, mut target) = self.target();
        Target::check_worker(&target.config, worker_id, worker_bits)?;
        target.worker_id = worker_id;
        target.worker_bits = worker_bits;
        Ok(self.rebuilt(target, self.shared.lifetime))
    }

    /// Sets what [`cid_lifetime`](ConnectionIdGenerator::cid_lifetime) reports: with `Some`,
    /// quinn retires each CID it issued after that long and issues a replacement, which is how
    /// a [rotation](ConfigRotation::rotate) reaches established connections. `None` (the
    /// default): CIDs live as long as their connection. Like [`with_worker`](Self::with_worker),
    /// starts a new family.
    pub fn with_lifetime(self, lifetime: Option<Duration>) -> Self {
        let (_, target) = self.target();
        self.rebuilt(target, lifetime)
    }

    fn rebuilt(&self, target: Target, lifetime: Option<Duration>) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            target: RwLock::new((0, target)),
            cid_len: self.shared.cid_len,
            lifetime,
        });
        Self::from_shared(shared, None)
    }

    /// Starts the nonce counter at `start` (masked to the counter width) instead of a random
    /// value: for tests of exhaustion, and for reproducing a sequence.
    pub fn with_counter_start(mut self, start: u64) -> Self {
        let (_, target) = self.target();
        self.issuer = Issuer::new(&target, Some(start));
        self
    }

    /// A new generator of the same family (same configuration, server ID, worker id, lifetime,
    /// and rotations) with its own random permutation key and counter start. Two generators
    /// of one family can repeat each other's nonces with the birthday probability in the module
    /// docs; give concurrent endpoints distinct worker ids instead where that matters.
    pub fn fresh(&self) -> Self {
        Self::from_shared(self.shared.clone(), None)
    }

    /// A factory for [`quinn::EndpointConfig::cid_generator`]: each call (quinn makes one per
    /// endpoint) returns [`fresh`](Self::fresh) generator of this family.
    pub fn factory(&self) -> impl Fn() -> Box<dyn ConnectionIdGenerator> + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || Box::new(Self::from_shared(shared.clone(), None))
    }

    /// A handle that switches this family to another configuration or server ID.
    pub fn rotation(&self) -> ConfigRotation {
        ConfigRotation {
            shared: self.shared.clone(),
        }
    }

    fn target(&self) -> (u64, Target) {
        *self.shared.target.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration new CIDs are issued under (as of this generator's last CID).
    pub fn config(&self) -> &Config {
        self.issuer.config()
    }

    /// The server ID new CIDs encode (as of this generator's last CID).
    pub fn server_id(&self) -> &[u8] {
        self.issuer.server_id.as_slice()
    }

    /// Width of the nonce counter: this generator can issue `2^counter_bits()` CIDs per
    /// configuration.
    pub fn counter_bits(&self) -> u32 {
        self.issuer.perm.bits
    }

    /// Routable CIDs this generator has issued under its current configuration.
    pub fn issued(&self) -> u64 {
        self.issuer.issued
    }

    /// Routable CIDs it can still issue under its current configuration.
    pub fn remaining(&self) -> u128 {
        self.issuer.remaining()
    }

    /// Whether the nonce space of the current configuration is used up (new CIDs are
    /// unroutable until a rotation).
    pub fn is_exhausted(&self) -> bool {
        self.issuer.exhausted
    }

    /// Adopts a rotation published since the last CID, if any.
    fn adopt_rotation(&mut self) {
        if self.shared.epoch.load(Ordering::Acquire) == self.epoch {
            return;
        }
        let (epoch, target) = self.target();
        self.epoch = epoch;
        let same_space = *self.issuer.config() == target.config
            && self.issuer.worker_id == target.worker_id
            && self.issuer.worker_bits == target.worker_bits;
        self.previous = Some((self.issuer.codec, self.issuer.server_id));
        if same_space {
            // Same key and config ID: keep counting, or nonces could repeat.
            self.issuer.server_id = target.server_id;
        } else {
            self.issuer = Issuer::new(&target, None);
        }
    }

    /// The next CID as octets (quinn's [`ConnectionId`] aside): routable while nonces last,
    /// then unroutable.
    pub fn next_cid(&mut self) -> ([u8; MAX_CID_LEN], usize) {
        self.adopt_rotation();
        let mut out = [0u8; MAX_CID_LEN];
        let cfg = *self.issuer.config();
        let mut nonce = [0u8; MAX_CID_LEN];
        let nonce = &mut nonce[..cfg.nonce_len() as usize];
        let mut rng = rand::rng();
        if self.issuer.nonce(nonce).is_some() {
            let low_bits: u8 = rng.random();
            if let Ok(n) = self.issuer.codec.encode(
                self.issuer.server_id.as_slice(),
                nonce,
                low_bits,
                &mut out,
            ) {
                return (out, n);
            }
            // Unreachable: lengths were checked when the issuer was built.
        }
        if !self.issued_unroutable {
            log::warn!(
                "QUIC-LB: the nonce space of config {} is used up ({} CIDs); issuing unroutable \
                 connection IDs (4-tuple routing, no migration) until the configuration is rotated",
                cfg.config_id(),
                self.issuer.issued
            );
        }
        self.issued_unroutable = true;
        let len = self.shared.cid_len;
        rng.fill_bytes(&mut out[..len]);
        let low = if cfg.encode_length() {
            (len - 1) as u8
        } else {
            out[0] & 0x1f
        };
        out[0] = UNROUTABLE_CONFIG_ID << 5 | low;
        (out, len)
    }

    /// Whether `cid` decodes to this generator's server ID under its current configuration, or
    /// under the previous one (still in use until quinn retires those CIDs), or is an
    /// unroutable CID of this length after this generator has issued such CIDs.
    /// Whether `cid` could have been issued by any server of this pool: the right length and
    /// decodable under this generator's configuration (or the one before the last rotation),
    /// whatever server ID it names; or one of ours.
    pub fn in_pool(&self, cid: &[u8]) -> bool {
        if cid.len() != self.shared.cid_len {
            return false;
        }
        let mut sid = [0u8; MAX_SERVER_ID_LEN];
        self.issuer.codec.decode(cid, &mut sid).is_ok()
            || self
                .previous
                .as_ref()
                .is_some_and(|(codec, _)| codec.decode(cid, &mut sid).is_ok())
            || self.owns(cid)
    }

    pub fn owns(&self, cid: &[u8]) -> bool {
        if cid.len() != self.shared.cid_len {
            return false;
        }
        decodes_to(&self.issuer.codec, &self.issuer.server_id, cid)
            || self
                .previous
                .as_ref()
                .is_some_and(|(codec, sid)| decodes_to(codec, sid, cid))
            || (self.issued_unroutable && cid[0] >> 5 == UNROUTABLE_CONFIG_ID)
    }
}

impl ConnectionIdGenerator for QuicLbCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let (cid, len) = self.next_cid();
        ConnectionId::new(&cid[..len])
    }

    /// quinn calls this only for short-header packets whose DCID matches no connection, to
    /// decide whether to answer with a stateless reset: `Err` drops the packet silently.
    /// Accepts every CID of the server pool ([`QuicLbCidGenerator::in_pool`]), not only this
    /// server's: when the load balancer sends a packet for a server that is gone to a live
    /// one, the client gets a stateless reset instead of silence (and accepts it when the
    /// pool shares one reset key, `lb-lab backend --reset-key`).
    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if self.in_pool(cid) {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        self.shared.cid_len
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.shared.lifetime
    }
}

/// Switches a family of generators (see [`QuicLbCidGenerator::rotation`]) to another
/// configuration: a new config ID, key, or server ID of the same CID length.
#[derive(Clone)]
pub struct ConfigRotation {
    shared: Arc<Shared>,
}

impl fmt::Debug for ConfigRotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigRotation")
            .field("epoch", &self.shared.epoch.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ConfigRotation {
    /// Publishes `config` and `server_id`. Generators switch at their next CID; with a
    /// [lifetime](QuicLbCidGenerator::with_lifetime) quinn replaces every older CID within
    /// one lifetime. A new key or config ID starts a fresh nonce space (and clears exhaustion);
    /// the same configuration keeps counting where it was. The worker id stays; it must still
    /// fit the nonce, and the CID length must not change. Returns the rotation's sequence
    /// number.
    pub fn rotate(&self, config: Config, server_id: &[u8]) -> Result<u64, GeneratorError> {
        if config.cid_len() != self.shared.cid_len {
            return Err(GeneratorError::CidLength {
                old: self.shared.cid_len,
                new: config.cid_len(),
            });
        }
        let server_id = ServerId::new(&config, server_id)?;
        let mut guard = self
            .shared
            .target
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let (epoch, target) = &mut *guard;
        Target::check_worker(&config, target.worker_id, target.worker_bits)?;
        target.config = config;
        target.server_id = server_id;
        *epoch += 1;
        self.shared.epoch.store(*epoch, Ordering::Release);
        Ok(*epoch)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use lb_common::quic_lb::{DecodeError, Mode, decode};

    use super::*;

    const KEY: [u8; 16] = [
        0x8f, 0x95, 0xf0, 0x92, 0x45, 0x76, 0x5f, 0x80, 0x25, 0x69, 0x34, 0xe5, 0x0c, 0x66, 0x20,
        0x7f,
    ];

    fn cfg(cr: u8, sid: u8, nonce: u8, key: Option<[u8; 16]>) -> Config {
        Config::new(cr, sid, nonce, key, true).unwrap()
    }

    fn decoded(cfg: &Config, cid: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut sid = [0u8; MAX_SERVER_ID_LEN];
        let n = decode(cfg, cid, &mut sid)?;
        Ok(sid[..n].to_vec())
    }

    /// The nonce of a plaintext CID.
    fn plain_nonce(cfg: &Config, cid: &[u8]) -> Vec<u8> {
        cid[1 + cfg.server_id_len() as usize..].to_vec()
    }

    fn all_modes() -> [(Config, Vec<u8>); 3] {
        [
            (cfg(0, 2, 6, None), vec![0xbe, 0xef]),
            (cfg(1, 8, 8, Some(KEY)), (1..=8).collect()),
            (cfg(2, 3, 6, Some(KEY)), vec![0x0a, 0x00, 0x07]),
        ]
    }

    #[test]
    fn modes_are_the_intended_ones() {
        let m: Vec<Mode> = all_modes().iter().map(|(c, _)| c.mode()).collect();
        assert_eq!(m, [Mode::Plaintext, Mode::SinglePass, Mode::FourPass]);
    }

    #[test]
    fn constant_length_self_described_and_decodes_to_the_server_id() {
        for (cfg, sid) in all_modes() {
            let mut g = QuicLbCidGenerator::new(cfg, &sid).unwrap();
            assert_eq!(g.cid_len(), cfg.cid_len());
            for _ in 0..1000 {
                let cid = g.generate_cid();
                assert_eq!(cid.len(), cfg.cid_len());
                assert_eq!(cid[0] >> 5, cfg.config_id());
                assert_eq!(usize::from(cid[0] & 0x1f), cfg.cid_len() - 1);
                assert_eq!(decoded(&cfg, &cid).unwrap(), sid, "{cfg:?}");
                assert!(g.validate(&cid).is_ok());
            }
        }
    }

    #[test]
    fn first_octet_low_bits_random_without_length_encoding() {
        let cfg = Config::new(3, 2, 6, None, false).unwrap();
        let mut g = QuicLbCidGenerator::new(cfg, &[1, 2]).unwrap();
        let lows: HashSet<u8> = (0..500).map(|_| g.generate_cid()[0] & 0x1f).collect();
        assert!(lows.len() > 16, "low bits look constant: {lows:?}");
        assert!((0..100).all(|_| g.generate_cid()[0] >> 5 == 3));
    }

    #[test]
    fn hundred_thousand_cids_unique_per_mode() {
        for (cfg, sid) in all_modes() {
            let mut g = QuicLbCidGenerator::new(cfg, &sid).unwrap();
            let mut seen = HashSet::new();
            for _ in 0..100_000 {
                assert!(seen.insert(g.generate_cid()), "repeated CID under {cfg:?}");
            }
        }
    }

    #[test]
    fn plaintext_nonces_are_not_sequential() {
        // Sequential counters in plaintext CIDs would link a client's CIDs; the permutation
        // must scatter consecutive counter values.
        let cfg = cfg(0, 1, 8, None);
        let mut g = QuicLbCidGenerator::new(cfg, &[9]).unwrap();
        let n: Vec<u64> = (0..64)
            .map(|_| {
                let cid = g.generate_cid();
                u64::from_be_bytes(plain_nonce(&cfg, &cid).try_into().unwrap())
            })
            .collect();
        let small_steps = n
            .windows(2)
            .filter(|w| w[1].wrapping_sub(w[0]) < 1 << 32)
            .count();
        assert!(small_steps < 4, "nonces look sequential: {n:x?}");
    }

    #[test]
    fn permutation_is_a_bijection_of_small_widths() {
        for bits in [8, 9, 15, 16] {
            let mut key = [0u8; 16];
            rand::rng().fill_bytes(&mut key);
            let p = Permutation {
                keys: RoundKeys::new(&key),
                bits,
            };
            let out: HashSet<u64> = (0..1u64 << bits).map(|x| p.apply(x)).collect();
            assert_eq!(out.len(), 1 << bits, "width {bits}");
            assert!(out.iter().all(|&y| y < 1 << bits));
        }
    }

    #[test]
    fn workers_are_disjoint_and_visible_in_plaintext_nonce_top_bits() {
        let cfg = cfg(0, 1, 4, None);
        let mut a = QuicLbCidGenerator::new(cfg, &[7])
            .unwrap()
            .with_worker(0b101, 3)
            .unwrap();
        let mut b = QuicLbCidGenerator::new(cfg, &[7])
            .unwrap()
            .with_worker(0b110, 3)
            .unwrap();
        assert_eq!(a.counter_bits(), 29);
        let na: HashSet<Vec<u8>> = (0..20_000)
            .map(|_| plain_nonce(&cfg, &a.generate_cid()))
            .collect();
        let nb: HashSet<Vec<u8>> = (0..20_000)
            .map(|_| plain_nonce(&cfg, &b.generate_cid()))
            .collect();
        assert_eq!((na.len(), nb.len()), (20_000, 20_000));
        assert!(na.is_disjoint(&nb));
        assert!(na.iter().all(|n| n[0] >> 5 == 0b101));
        assert!(nb.iter().all(|n| n[0] >> 5 == 0b110));
        // Under a key the worker bits are inside the ciphertext: still decodes to the server.
        let kcfg = cfg_keyed();
        let mut k = QuicLbCidGenerator::new(kcfg, &[1, 2, 3])
            .unwrap()
            .with_worker(3, 2)
            .unwrap();
        assert_eq!(decoded(&kcfg, &k.generate_cid()).unwrap(), [1, 2, 3]);
    }

    fn cfg_keyed() -> Config {
        cfg(4, 3, 6, Some(KEY))
    }

    #[test]
    fn worker_arguments_are_checked() {
        let g = || QuicLbCidGenerator::new(cfg(0, 1, 4, None), &[1]).unwrap();
        assert_eq!(
            g().with_worker(4, 2).unwrap_err(),
            GeneratorError::WorkerId { id: 4, bits: 2 }
        );
        assert_eq!(
            g().with_worker(0, 25).unwrap_err(),
            GeneratorError::WorkerBits {
                bits: 25,
                nonce_len: 4
            }
        );
        assert!(g().with_worker(0, 24).is_ok());
        let wide = QuicLbCidGenerator::new(cfg(0, 1, 10, None), &[1]).unwrap();
        assert!(matches!(
            wide.with_worker(0, 33),
            Err(GeneratorError::WorkerBits { bits: 33, .. })
        ));
        assert_eq!(
            QuicLbCidGenerator::new(cfg(0, 2, 4, None), &[1]).unwrap_err(),
            GeneratorError::ServerIdLength {
                len: 1,
                expected: 2
            }
        );
    }

    #[test]
    fn long_nonces_use_a_64_bit_counter_and_random_filler() {
        let cfg = cfg(0, 1, 12, None);
        let mut g = QuicLbCidGenerator::new(cfg, &[5])
            .unwrap()
            .with_worker(1, 8)
            .unwrap();
        assert_eq!(g.counter_bits(), 64);
        let n: Vec<Vec<u8>> = (0..50)
            .map(|_| plain_nonce(&cfg, &g.generate_cid()))
            .collect();
        assert!(n.iter().all(|x| x[0] == 1), "worker id in the top octet");
        // Octets 1..4 are filler, fresh per CID.
        let fillers: HashSet<&[u8]> = n.iter().map(|x| &x[1..4]).collect();
        assert!(fillers.len() > 45);
    }

    #[test]
    fn validate_accepts_the_pool_and_rejects_others() {
        for (cfg, sid) in all_modes() {
            let mut g = QuicLbCidGenerator::new(cfg, &sid).unwrap();
            let own = g.generate_cid();
            assert!(g.validate(&own).is_ok());
            assert!(g.owns(&own));
            // Another server under the same configuration: in the pool (a live server answers
            // it with a stateless reset), but not ours.
            let mut other_sid = sid.clone();
            other_sid[0] ^= 0x80;
            let mut other = QuicLbCidGenerator::new(cfg, &other_sid).unwrap();
            let foreign = other.generate_cid();
            assert!(g.validate(&foreign).is_ok(), "{cfg:?}");
            assert!(!g.owns(&foreign), "{cfg:?}");
            // Same server ID, other config ID.
            let other_cfg = Config::new(
                (cfg.config_id() + 1) % 7,
                cfg.server_id_len(),
                cfg.nonce_len(),
                cfg.key(),
                true,
            )
            .unwrap();
            let mut other = QuicLbCidGenerator::new(other_cfg, &sid).unwrap();
            assert!(g.validate(&other.generate_cid()).is_err());
            // Unroutable, truncated, random.
            let mut unroutable = own;
            unroutable[0] |= 0xe0;
            assert!(g.validate(&unroutable).is_err());
            assert!(
                g.validate(&ConnectionId::new(&own[..own.len() - 1]))
                    .is_err()
            );
            assert!(g.validate(&ConnectionId::new(&[0u8; 8])).is_err());
        }
        // Under a key, a CID of another key has the same shape, so it is in the pool as far
        // as anyone can tell (it decodes to some server ID), but it is never ours: a random
        // 3-octet server ID matches with probability 2^-24.
        let (cfg, sid) = (cfg_keyed(), [1u8, 2, 3]);
        let g = QuicLbCidGenerator::new(cfg, &sid).unwrap();
        let other_key = Config::new(cfg.config_id(), 3, 6, Some([7; 16]), true).unwrap();
        let mut other = QuicLbCidGenerator::new(other_key, &sid).unwrap();
        let cids: Vec<ConnectionId> = (0..200).map(|_| other.generate_cid()).collect();
        assert!(cids.iter().all(|c| g.validate(c).is_ok()));
        assert_eq!(cids.iter().filter(|c| g.owns(c)).count(), 0);
    }

    #[test]
    fn exhaustion_wraps_through_the_whole_space_then_issues_unroutable_cids() {
        // 4-octet nonce, 24 worker bits: an 8-bit counter, 256 CIDs. Start near the end so
        // the counter wraps through zero before it comes back to its start.
        let cfg = cfg(2, 2, 4, Some(KEY));
        let mut g = QuicLbCidGenerator::new(cfg, &[0xab, 0xcd])
            .unwrap()
            .with_worker(0x00c0ff, 24)
            .unwrap()
            .with_counter_start(250);
        assert_eq!(g.counter_bits(), 8);
        assert_eq!(g.remaining(), 256);
        let mut seen = HashSet::new();
        for i in 0..256 {
            assert!(!g.is_exhausted(), "exhausted after {i}");
            let cid = g.generate_cid();
            assert_eq!(decoded(&cfg, &cid).unwrap(), [0xab, 0xcd]);
            assert!(seen.insert(cid), "nonce reused at {i}");
        }
        assert!(g.is_exhausted());
        assert_eq!((g.issued(), g.remaining()), (256, 0));
        // Every later CID is unroutable (0b111), of the same length, self-describing, random,
        // and still recognised by validate (it is ours).
        for _ in 0..100 {
            let cid = g.generate_cid();
            assert_eq!(cid.len(), cfg.cid_len());
            assert_eq!(cid[0], 0b111 << 5 | (cfg.cid_len() - 1) as u8);
            assert_eq!(decoded(&cfg, &cid), Err(DecodeError::Unroutable));
            assert!(g.validate(&cid).is_ok());
            assert!(seen.insert(cid));
        }
        // A rotation to a new key gives a fresh nonce space.
        let new_cfg = Config::new(3, 2, 4, Some([1; 16]), true).unwrap();
        g.rotation().rotate(new_cfg, &[0xab, 0xcd]).unwrap();
        let cid = g.generate_cid();
        assert_eq!(decoded(&new_cfg, &cid).unwrap(), [0xab, 0xcd]);
        assert!(!g.is_exhausted());
    }

    #[test]
    fn counter_start_is_masked_and_the_space_counts_exactly() {
        let cfg = cfg(0, 1, 4, None);
        let mut g = QuicLbCidGenerator::new(cfg, &[1])
            .unwrap()
            .with_worker(0, 24)
            .unwrap()
            .with_counter_start(0x1_0000_00ff);
        assert_eq!(g.remaining(), 256);
        let mut nonces = HashSet::new();
        for i in 0..256u128 {
            assert_eq!(g.remaining(), 256 - i);
            assert!(nonces.insert(plain_nonce(&cfg, &g.generate_cid())));
        }
        assert!(g.is_exhausted());
        // All 256 values of the 8-bit counter field were used once each.
        let low: HashSet<u8> = nonces.iter().map(|n| n[3]).collect();
        assert_eq!(low.len(), 256);
    }

    #[test]
    fn rotation_switches_new_cids_and_validate_keeps_the_previous_config() {
        let old = cfg(0, 3, 6, Some(KEY));
        let new = cfg(1, 3, 6, Some([0x5a; 16]));
        let mut g = QuicLbCidGenerator::new(old, &[1, 2, 3])
            .unwrap()
            .with_lifetime(Some(Duration::from_secs(30)));
        let mut sibling = g.fresh();
        let rot = g.rotation();
        let before = g.generate_cid();
        assert_eq!(rot.rotate(new, &[4, 5, 6]).unwrap(), 1);
        let after = g.generate_cid();
        assert_eq!(decoded(&new, &after).unwrap(), [4, 5, 6]);
        assert_eq!(g.config().config_id(), 1);
        assert_eq!(g.server_id(), [4, 5, 6]);
        assert!(
            g.validate(&before).is_ok(),
            "old CIDs stay valid until retired"
        );
        assert!(g.validate(&after).is_ok());
        // The whole family follows, lifetime included.
        assert_eq!(decoded(&new, &sibling.generate_cid()).unwrap(), [4, 5, 6]);
        assert_eq!(sibling.cid_lifetime(), Some(Duration::from_secs(30)));
        // A rotation must keep the CID length and the server ID length.
        assert_eq!(
            rot.rotate(cfg(2, 3, 7, None), &[1, 2, 3]).unwrap_err(),
            GeneratorError::CidLength { old: 10, new: 11 }
        );
        assert!(matches!(
            rot.rotate(cfg(2, 4, 5, None), &[1, 2, 3]),
            Err(GeneratorError::ServerIdLength { .. })
        ));
    }

    #[test]
    fn rotation_to_the_same_configuration_keeps_counting() {
        let cfg = cfg(0, 1, 4, None);
        let mut g = QuicLbCidGenerator::new(cfg, &[1])
            .unwrap()
            .with_worker(0, 24)
            .unwrap();
        for _ in 0..200 {
            g.generate_cid();
        }
        let old = g.generate_cid();
        g.rotation().rotate(cfg, &[2]).unwrap();
        // Same key and config ID: the 55 nonces left are all there is.
        for _ in 0..55 {
            assert_eq!(decoded(&cfg, &g.generate_cid()).unwrap(), [2]);
        }
        assert!(g.is_exhausted());
        assert!(
            g.validate(&old).is_ok(),
            "CIDs of the old server ID stay valid"
        );
    }

    #[test]
    fn factory_generators_are_independent_and_carry_the_lifetime() {
        let (cfg, sid) = all_modes()[2].clone();
        let base = QuicLbCidGenerator::new(cfg, &sid)
            .unwrap()
            .with_lifetime(Some(Duration::from_secs(5)));
        assert_eq!(base.cid_lifetime(), Some(Duration::from_secs(5)));
        let f = base.factory();
        let (mut a, mut b) = (f(), f());
        assert_eq!(a.cid_lifetime(), Some(Duration::from_secs(5)));
        assert_eq!(a.cid_len(), cfg.cid_len());
        let ca: HashSet<ConnectionId> = (0..1000).map(|_| a.generate_cid()).collect();
        let cb: HashSet<ConnectionId> = (0..1000).map(|_| b.generate_cid()).collect();
        assert!(ca.is_disjoint(&cb));
        assert!(
            ca.iter()
                .chain(&cb)
                .all(|c| decoded(&cfg, c).unwrap() == sid)
        );
        assert_eq!(
            QuicLbCidGenerator::new(cfg, &sid).unwrap().cid_lifetime(),
            None
        );
    }
}
