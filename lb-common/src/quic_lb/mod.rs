//! The QUIC-LB connection-ID codec (draft-ietf-quic-load-balancers-21; the algorithms and test
//! vectors are unchanged since -19): servers *encode* their server ID into the connection IDs
//! they issue, the XDP program *decodes* it from the destination CID of each packet.
//!
//! ```text
//! CID = first octet || body
//! first octet = config rotation (3 bits: 0..=6, 0b111 = unroutable)
//!             || length self-description (5 bits: CID length - 1) or bits of the server's choosing
//! body (plaintext) = server ID (>= 1 octet) || nonce (>= 4 octets), together <= 19 octets
//! ```
//!
//! Three [`Mode`]s, fixed by the configuration: no key → the body is the plaintext; a key and
//! exactly 16 body octets → single-pass AES-128-ECB of the body; a key and any other length →
//! the four-pass Feistel network (`feistel.rs`). Octets past the configured length (servers may
//! append their own) are ignored by the decoder.
//!
//! Two layers:
//! - [`Config`], [`encode`], [`decode`] (and [`Codec`], which keeps the expanded key): checked,
//!   slice-based, typed errors; for userspace (the server-side CID generator, tools, tests).
//! - [`decode_block`]: the data-path entry point for the XDP program. Fixed-size arrays,
//!   precomputed [`RoundKeys`], no `Option`, no slices of unknown length, no panicking paths,
//!   no loops (the AES rounds are written out), no variable-offset memory access (splitting at
//!   the half-length is done with shifts), AES tables indexed by `u8`, and the per-length mask
//!   tables indexed through an AND the optimiser cannot remove (see `feistel::table_index`).
//!   Its working state is a handful of 64-bit words. An XDP program that loads the 19 octets
//!   from the packet and calls it passes the kernel verifier (checked on 6.18 with
//!   BPF_PROG_TEST_RUN against this module's host results).
//!
//! A leaf of the crate: it uses nothing else in it. The map layouts (`maps::QuicLbConfig`,
//! the `QUIC_LB_*` limits) are built on its types and constants.
//!
//! Draft text errors found while implementing this (see `tests.rs` for the vectors):
//! - Encryption example, step 10: the XOR line uses `0xb3e4357c` but the AES output printed just
//!   above starts `0xb334357c`; the latter is right (it gives the printed `left_2`).
//! - Load balancer actions, four-pass pseudocode: after computing `right_1` it says
//!   `clear_first_bits(left_1, 4)`; it must be `right_1`.
//! - Test vectors: the second unencrypted row and the fourth encrypted row are misprinted.

pub mod aes;
mod feistel;
pub mod vectors;

#[cfg(test)]
mod tests;

use core::fmt;

pub use aes::RoundKeys;

/// Longest QUIC v1 connection ID.
pub const MAX_CID_LEN: usize = 20;
pub const MIN_SERVER_ID_LEN: usize = 1;
pub const MAX_SERVER_ID_LEN: usize = 15;
pub const MIN_NONCE_LEN: usize = 4;
/// Longest server ID + nonce: the CID minus its first octet.
pub const MAX_PLAINTEXT_LEN: usize = MAX_CID_LEN - 1;
/// Octets [`decode_block`] reads after the first CID octet.
pub const BLOCK_LEN: usize = MAX_PLAINTEXT_LEN;
/// Highest usable config rotation value.
pub const MAX_CONFIG_ID: u8 = 6;
/// Config rotation value of CIDs that no configuration can decode.
pub const UNROUTABLE_CONFIG_ID: u8 = 0b111;
/// Body length at which a keyed configuration uses single-pass AES instead of four passes.
pub const SINGLE_PASS_LEN: usize = 16;

/// How the body of a CID is protected. The discriminants are stable (they can be stored in a
/// map value); 0 is left for "not configured", as in `maps::QUIC_LB_MODE_NONE`.
#[repr(u8)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// No key: the body is server ID || nonce.
    Plaintext = 1,
    /// Key, and server ID + nonce = 16 octets: one AES-128-ECB block.
    SinglePass = 2,
    /// Key, any other length: the four-pass Feistel network with AES-128 as round function.
    FourPass = 3,
}

impl Mode {
    /// The mode the draft prescribes for these parameters.
    pub const fn for_lengths(keyed: bool, server_id_len: u8, nonce_len: u8) -> Mode {
        if !keyed {
            Mode::Plaintext
        } else if server_id_len as usize + nonce_len as usize == SINGLE_PASS_LEN {
            Mode::SinglePass
        } else {
            Mode::FourPass
        }
    }

    /// The mode stored as `raw` (`mode as u8`), or `None` for 0 and unknown values.
    #[inline(always)]
    pub const fn from_raw(raw: u8) -> Option<Mode> {
        match raw {
            1 => Some(Mode::Plaintext),
            2 => Some(Mode::SinglePass),
            3 => Some(Mode::FourPass),
            _ => None,
        }
    }
}

/// Whether server ID and nonce lengths form a valid configuration (ignoring mode and key).
#[inline(always)]
pub const fn lengths_valid(server_id_len: u8, nonce_len: u8) -> bool {
    server_id_len as usize >= MIN_SERVER_ID_LEN
        && server_id_len as usize <= MAX_SERVER_ID_LEN
        && nonce_len as usize >= MIN_NONCE_LEN
        && server_id_len as usize + nonce_len as usize <= MAX_PLAINTEXT_LEN
}

/// Why a [`Config`] was rejected.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// Config rotation value outside 0..=6.
    ConfigId { found: u8 },
    /// Server ID length outside 1..=15.
    ServerIdLength { len: u8 },
    /// Nonce length below 4.
    NonceLength { len: u8 },
    /// Server ID + nonce longer than 19 octets.
    TooLong { server_id_len: u8, nonce_len: u8 },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ConfigError::ConfigId { found } => write!(
                f,
                "QUIC-LB config ID {found} is out of range: use 0..={MAX_CONFIG_ID} \
                 (0b111 = 7 is reserved for unroutable connection IDs)"
            ),
            ConfigError::ServerIdLength { len } => write!(
                f,
                "QUIC-LB server ID length {len} is out of range: use \
                 {MIN_SERVER_ID_LEN}..={MAX_SERVER_ID_LEN} octets"
            ),
            ConfigError::NonceLength { len } => write!(
                f,
                "QUIC-LB nonce length {len} is too short: use at least {MIN_NONCE_LEN} octets"
            ),
            ConfigError::TooLong {
                server_id_len,
                nonce_len,
            } => write!(
                f,
                "QUIC-LB server ID length {server_id_len} + nonce length {nonce_len} = {} octets \
                 is too long: the two may sum to at most {MAX_PLAINTEXT_LEN} \
                 (a connection ID is at most {MAX_CID_LEN} octets, one of them the first octet)",
                server_id_len as usize + nonce_len as usize
            ),
        }
    }
}

impl core::error::Error for ConfigError {}

/// Why [`encode`] refused its input.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    ServerIdLength { len: usize, expected: u8 },
    NonceLength { len: usize, expected: u8 },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EncodeError::ServerIdLength { len, expected } => write!(
                f,
                "QUIC-LB server ID is {len} octets but the configuration says {expected}"
            ),
            EncodeError::NonceLength { len, expected } => write!(
                f,
                "QUIC-LB nonce is {len} octets but the configuration says {expected}"
            ),
        }
    }
}

impl core::error::Error for EncodeError {}

/// Why [`decode`] found no server ID.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Config rotation bits 0b111: the issuer had no configuration (or the CID is the
    /// client's); route by the fallback algorithm.
    Unroutable,
    /// The CID carries config rotation value `found`, not this configuration's `expected`.
    WrongConfig { found: u8, expected: u8 },
    /// The CID has `len` octets; this configuration needs at least `need`.
    TooShort { len: usize, need: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::Unroutable => f.write_str(
                "connection ID is unroutable (config rotation bits 0b111): \
                 use the fallback algorithm",
            ),
            DecodeError::WrongConfig { found, expected } => write!(
                f,
                "connection ID uses QUIC-LB config {found}, not config {expected}: \
                 decode it with the configuration for {found}"
            ),
            DecodeError::TooShort { len, need } => write!(
                f,
                "connection ID is {len} octets but this QUIC-LB configuration needs at least {need}"
            ),
        }
    }
}

impl core::error::Error for DecodeError {}

/// One QUIC-LB configuration, validated by [`Config::new`].
///
/// `Debug` shows whether a key is set, not the key.
#[derive(Copy, Clone, PartialEq, Eq)]
pub struct Config {
    config_id: u8,
    server_id_len: u8,
    nonce_len: u8,
    key: Option<[u8; 16]>,
    encode_length: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("config_id", &self.config_id)
            .field("server_id_len", &self.server_id_len)
            .field("nonce_len", &self.nonce_len)
            .field("keyed", &self.key.is_some())
            .field("encode_length", &self.encode_length)
            .finish()
    }
}

impl Config {
    /// `config_id` 0..=6; `server_id_len` 1..=15; `nonce_len` >= 4; the two sum to <= 19.
    /// `encode_length`: servers put the CID length - 1 in the first octet's low five bits.
    pub const fn new(
        config_id: u8,
        server_id_len: u8,
        nonce_len: u8,
        key: Option<[u8; 16]>,
        encode_length: bool,
    ) -> Result<Config, ConfigError> {
        if config_id > MAX_CONFIG_ID {
            return Err(ConfigError::ConfigId { found: config_id });
        }
        if (server_id_len as usize) < MIN_SERVER_ID_LEN
            || server_id_len as usize > MAX_SERVER_ID_LEN
        {
            return Err(ConfigError::ServerIdLength { len: server_id_len });
        }
        if (nonce_len as usize) < MIN_NONCE_LEN {
            return Err(ConfigError::NonceLength { len: nonce_len });
        }
        if server_id_len as usize + nonce_len as usize > MAX_PLAINTEXT_LEN {
            return Err(ConfigError::TooLong {
                server_id_len,
                nonce_len,
            });
        }
        Ok(Config {
            config_id,
            server_id_len,
            nonce_len,
            key,
            encode_length,
        })
    }

    pub const fn config_id(&self) -> u8 {
        self.config_id
    }
    pub const fn server_id_len(&self) -> u8 {
        self.server_id_len
    }
    pub const fn nonce_len(&self) -> u8 {
        self.nonce_len
    }
    pub const fn key(&self) -> Option<[u8; 16]> {
        self.key
    }
    pub const fn encode_length(&self) -> bool {
        self.encode_length
    }
    pub const fn mode(&self) -> Mode {
        Mode::for_lengths(self.key.is_some(), self.server_id_len, self.nonce_len)
    }
    /// Server ID + nonce octets (the CID minus its first octet).
    pub const fn plaintext_len(&self) -> usize {
        self.server_id_len as usize + self.nonce_len as usize
    }
    /// Octets of a CID under this configuration (first octet included); decoders accept
    /// longer CIDs and ignore the extra octets.
    pub const fn cid_len(&self) -> usize {
        1 + self.plaintext_len()
    }
    /// The expanded key, or [`RoundKeys::ZERO`] without one (plaintext mode never reads it).
    pub const fn round_keys(&self) -> RoundKeys {
        match &self.key {
            Some(k) => RoundKeys::new(k),
            None => RoundKeys::ZERO,
        }
    }
}

/// A configuration with its key expanded once, for callers that encode or decode many CIDs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Codec {
    cfg: Config,
    keys: RoundKeys,
}

impl Codec {
    pub const fn new(cfg: Config) -> Codec {
        Codec {
            cfg,
            keys: cfg.round_keys(),
        }
    }

    pub const fn config(&self) -> &Config {
        &self.cfg
    }

    pub const fn round_keys(&self) -> &RoundKeys {
        &self.keys
    }

    /// See [`encode`].
    pub fn encode(
        &self,
        server_id: &[u8],
        nonce: &[u8],
        first_octet_low_bits: u8,
        out: &mut [u8; MAX_CID_LEN],
    ) -> Result<usize, EncodeError> {
        let cfg = &self.cfg;
        if server_id.len() != cfg.server_id_len as usize {
            return Err(EncodeError::ServerIdLength {
                len: server_id.len(),
                expected: cfg.server_id_len,
            });
        }
        if nonce.len() != cfg.nonce_len as usize {
            return Err(EncodeError::NonceLength {
                len: nonce.len(),
                expected: cfg.nonce_len,
            });
        }
        let len = cfg.plaintext_len() as u8;
        let mut plain = [0u8; BLOCK_LEN];
        for (d, s) in plain.iter_mut().zip(server_id.iter().chain(nonce)) {
            *d = *s;
        }
        let p = feistel::load19(&plain);
        let body = match cfg.mode() {
            Mode::Plaintext => p,
            Mode::SinglePass => {
                let mut w = [
                    (p[0] >> 32) as u32,
                    p[0] as u32,
                    (p[1] >> 32) as u32,
                    p[1] as u32,
                ];
                aes::encrypt_words(&self.keys.enc, &mut w);
                [
                    (w[0] as u64) << 32 | w[1] as u64,
                    (w[2] as u64) << 32 | w[3] as u64,
                    0,
                ]
            }
            Mode::FourPass => feistel::encrypt(&self.keys.enc, len, &p),
        };
        let low = if cfg.encode_length {
            len
        } else {
            first_octet_low_bits & 0x1f
        };
        out[0] = cfg.config_id << 5 | low;
        for (d, s) in out[1..].iter_mut().zip(feistel::store19(&body)) {
            *d = s;
        }
        Ok(cfg.cid_len())
    }

    /// See [`decode`].
    pub fn decode(
        &self,
        cid: &[u8],
        server_id_out: &mut [u8; MAX_SERVER_ID_LEN],
    ) -> Result<usize, DecodeError> {
        let cfg = &self.cfg;
        let Some(&first) = cid.first() else {
            return Err(DecodeError::TooShort {
                len: 0,
                need: cfg.cid_len(),
            });
        };
        let found = first >> 5;
        if found == UNROUTABLE_CONFIG_ID {
            return Err(DecodeError::Unroutable);
        }
        if found != cfg.config_id {
            return Err(DecodeError::WrongConfig {
                found,
                expected: cfg.config_id,
            });
        }
        if cid.len() < cfg.cid_len() {
            return Err(DecodeError::TooShort {
                len: cid.len(),
                need: cfg.cid_len(),
            });
        }
        let mut block = [0u8; BLOCK_LEN];
        for (d, s) in block
            .iter_mut()
            .zip(cid.iter().skip(1).take(cfg.plaintext_len()))
        {
            *d = *s;
        }
        let mut sid = [0u8; 16];
        // Cannot fail: the configuration was validated and its mode derived from it.
        let _ = decode_block(
            cfg.mode(),
            cfg.server_id_len,
            cfg.nonce_len,
            &self.keys,
            &block,
            &mut sid,
        );
        for (d, s) in server_id_out.iter_mut().zip(sid) {
            *d = s;
        }
        Ok(cfg.server_id_len as usize)
    }
}

/// Builds the CID for `server_id` and `nonce` under `cfg` into `out` and returns its length
/// (`cfg.cid_len()`); octets of `out` past that length are zeroed.
///
/// The first octet is the config ID in the top three bits and, below it, either the length
/// self-description (`cfg.encode_length()`) or the low five bits of `first_octet_low_bits`
/// (the caller's random bits; higher bits are ignored).
///
/// Expands the key on every call; use [`Codec`] to expand it once.
pub fn encode(
    cfg: &Config,
    server_id: &[u8],
    nonce: &[u8],
    first_octet_low_bits: u8,
    out: &mut [u8; MAX_CID_LEN],
) -> Result<usize, EncodeError> {
    Codec::new(*cfg).encode(server_id, nonce, first_octet_low_bits, out)
}

/// Extracts the server ID from `cid` under `cfg`: writes it to the start of `server_id_out`
/// (zeros after it) and returns its length. `cid` may be longer than `cfg.cid_len()`; the
/// extra octets are ignored. The length self-description bits are not checked (the draft lets
/// load balancers ignore them).
///
/// Expands the key on every call; use [`Codec`] to expand it once.
pub fn decode(
    cfg: &Config,
    cid: &[u8],
    server_id_out: &mut [u8; MAX_SERVER_ID_LEN],
) -> Result<usize, DecodeError> {
    Codec::new(*cfg).decode(cid, server_id_out)
}

/// Plaintext fast path of [`decode_block`] for the data plane: `head` is the 16 octets after
/// the CID's first octet as two little-endian 64-bit words (two loads from the packet), and
/// the result is what `decode_block(Mode::Plaintext, ..)` writes: the server ID octets, then
/// zeros. Plaintext needs no key and no block assembly, so the XDP program skips both.
/// `sid_len` must be 1..=15 (the caller has validated the configuration).
#[inline(always)]
pub fn plaintext_server_id(head: [u64; 2], sid_len: u8) -> [u8; 16] {
    // Octet i of the server ID is bits 8i..8i+8 of the little-endian words.
    let keep = |n: u8| {
        if n >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * n as u32)) - 1
        }
    };
    let lo = (head[0] & keep(sid_len)).to_le_bytes();
    let hi = (head[1] & keep(sid_len.saturating_sub(8))).to_le_bytes();
    [
        lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7], hi[0], hi[1], hi[2], hi[3], hi[4],
        hi[5], hi[6], hi[7],
    ]
}

/// The data-path decoder: extracts the server ID from `block`, the 19 octets that follow the
/// first CID octet in the packet (octets past `sid_len + nonce_len` are ignored, so the
/// program can load a fixed 19 octets whatever the configuration).
///
/// On success writes the server ID to `server_id_out[..sid_len]`, zeros to the rest (ready
/// to be `maps::ServerIdKey::sid`), and returns `true`. Returns `false`, leaving
/// `server_id_out` untouched, when the parameters are not a valid configuration: lengths
/// outside the limits of [`Config::new`], `SinglePass` with `sid_len + nonce_len != 16`, or
/// `FourPass` with it equal to 16. The caller checks the config rotation bits (0b111 and
/// which configuration) and the CID length before calling.
///
/// `keys` is `RoundKeys::new(key)`, computed by userspace; `Plaintext` does not read it
/// (pass [`RoundKeys::ZERO`] or anything). Cost: nothing for `Plaintext`, one AES block
/// decryption for `SinglePass`, three AES block encryptions for `FourPass` when
/// `nonce_len >= sid_len` and four otherwise.
///
/// `#[inline(always)]` because it has six arguments and BPF passes at most five; once inlined
/// into the program nothing is passed. The AES block functions it calls take two pointers
/// each, so they are valid BPF-to-BPF calls if LLVM keeps them out of line.
#[inline(always)]
pub fn decode_block(
    mode: Mode,
    sid_len: u8,
    nonce_len: u8,
    keys: &RoundKeys,
    block: &[u8; BLOCK_LEN],
    server_id_out: &mut [u8; 16],
) -> bool {
    if !lengths_valid(sid_len, nonce_len) {
        return false;
    }
    let single = sid_len + nonce_len == SINGLE_PASS_LEN as u8;
    let c = feistel::load19(block);
    let plain = match mode {
        Mode::Plaintext => [c[0], c[1]],
        Mode::SinglePass => {
            if !single {
                return false;
            }
            let mut w = [
                (c[0] >> 32) as u32,
                c[0] as u32,
                (c[1] >> 32) as u32,
                c[1] as u32,
            ];
            aes::decrypt_words(&keys.dec, &mut w);
            [
                (w[0] as u64) << 32 | w[1] as u64,
                (w[2] as u64) << 32 | w[3] as u64,
            ]
        }
        Mode::FourPass => {
            if single {
                return false;
            }
            feistel::decrypt(&keys.enc, sid_len, nonce_len, &c)
        }
    };
    let sid = feistel::keep_octets(&plain, sid_len);
    let [a, b] = [sid[0].to_be_bytes(), sid[1].to_be_bytes()];
    *server_id_out = [
        a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6],
        b[7],
    ];
    true
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], only u32 arrays, no padding.
    unsafe impl aya::Pod for super::RoundKeys {}
}
