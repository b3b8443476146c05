//! AES-128 (FIPS-197) shaped for the BPF verifier: the classic 32-bit T-table formulation,
//! four table lookups per state column per round, every table 256 entries indexed by a `u8`
//! so no bounds check survives. The tables are `static` (read-only data in the BPF object)
//! and are computed at compile time from the GF(2^8) definitions, so there is no hand-typed
//! table to get wrong.
//!
//! The key schedule ([`RoundKeys::new`]) is separate and meant to run once, in userspace; the
//! per-block functions take the expanded [`RoundKeys`] (which can live in a BPF map value), so
//! the XDP program never expands a key.
//!
//! Words are big-endian: state word `i` is octets `4i..4i+4` of the block, most significant
//! first, exactly as FIPS-197 lays out a column.
//!
//! Not constant-time (table lookups index by secret state). QUIC-LB's threat model is an
//! off-path observer of connection IDs; cache-timing attackers sharing the load balancer's
//! CPU are out of scope.

use core::fmt;

/// Multiplication by x (0x02) in GF(2^8) modulo the AES polynomial x^8 + x^4 + x^3 + x + 1.
const fn xtime(b: u8) -> u8 {
    (b << 1) ^ (((b >> 7) & 1) * 0x1b)
}

const fn gmul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    let mut i = 0;
    while i < 8 {
        if b & 1 != 0 {
            p ^= a;
        }
        a = xtime(a);
        b >>= 1;
        i += 1;
    }
    p
}

/// Multiplicative inverse in GF(2^8) as x^254 (which maps 0 to 0, as the S-box needs).
const fn ginv(x: u8) -> u8 {
    let mut result = 1u8;
    let mut base = x;
    let mut e = 254u8;
    while e != 0 {
        if e & 1 != 0 {
            result = gmul(result, base);
        }
        base = gmul(base, base);
        e >>= 1;
    }
    result
}

const fn make_sbox() -> [u8; 256] {
    let mut s = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = ginv(i as u8);
        s[i] = b ^ b.rotate_left(1) ^ b.rotate_left(2) ^ b.rotate_left(3) ^ b.rotate_left(4) ^ 0x63;
        i += 1;
    }
    s
}

const fn invert(s: &[u8; 256]) -> [u8; 256] {
    let mut inv = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        inv[s[i] as usize] = i as u8;
        i += 1;
    }
    inv
}

/// Te0[x] = MixColumns applied to the column (S[x], 0, 0, 0): (2S, S, S, 3S). Te1..Te3 are
/// the same column rotated one octet further each, so a round needs no rotations.
const fn make_te(rot: u32) -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let s = SBOX_C[i];
        let w = (gmul(s, 2) as u32) << 24 | (s as u32) << 16 | (s as u32) << 8 | gmul(s, 3) as u32;
        t[i] = w.rotate_right(8 * rot);
        i += 1;
    }
    t
}

/// Td0[x] = InvMixColumns applied to (Si[x], 0, 0, 0): (14Si, 9Si, 13Si, 11Si).
const fn make_td(rot: u32) -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let s = INV_SBOX_C[i];
        let w = (gmul(s, 14) as u32) << 24
            | (gmul(s, 9) as u32) << 16
            | (gmul(s, 13) as u32) << 8
            | gmul(s, 11) as u32;
        t[i] = w.rotate_right(8 * rot);
        i += 1;
    }
    t
}

const SBOX_C: [u8; 256] = make_sbox();
const INV_SBOX_C: [u8; 256] = invert(&SBOX_C);
const TD_C: [[u32; 256]; 4] = [make_td(0), make_td(1), make_td(2), make_td(3)];

pub(crate) static SBOX: [u8; 256] = SBOX_C;
static INV_SBOX: [u8; 256] = INV_SBOX_C;
static TE0: [u32; 256] = make_te(0);
static TE1: [u32; 256] = make_te(1);
static TE2: [u32; 256] = make_te(2);
static TE3: [u32; 256] = make_te(3);
static TD0: [u32; 256] = TD_C[0];
static TD1: [u32; 256] = TD_C[1];
static TD2: [u32; 256] = TD_C[2];
static TD3: [u32; 256] = TD_C[3];

/// Octet 0 (most significant) .. 3 of a word, as a table index that is < 256 by type.
#[inline(always)]
const fn b0(w: u32) -> usize {
    (w >> 24) as u8 as usize
}
#[inline(always)]
const fn b1(w: u32) -> usize {
    (w >> 16) as u8 as usize
}
#[inline(always)]
const fn b2(w: u32) -> usize {
    (w >> 8) as u8 as usize
}
#[inline(always)]
const fn b3(w: u32) -> usize {
    w as u8 as usize
}

/// An AES-128 key expanded for both directions: 11 round keys of four big-endian words each.
///
/// `enc` is the FIPS-197 key schedule. `dec` is the schedule of the equivalent inverse cipher
/// (FIPS-197 §5.3.5): the encryption round keys in reverse order, with InvMixColumns applied to
/// rounds 1..=9, so decryption has the same table-lookup shape as encryption.
///
/// `#[repr(C)]`, 352 octets, no padding: it can be stored as (part of) a BPF map value.
/// `Debug` does not print the key material.
#[repr(C)]
#[derive(Copy, Clone, PartialEq, Eq)]
pub struct RoundKeys {
    pub enc: [[u32; 4]; 11],
    pub dec: [[u32; 4]; 11],
}

impl fmt::Debug for RoundKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoundKeys { .. }")
    }
}

impl RoundKeys {
    /// All-zero round keys, for configurations without a key (plaintext mode never reads
    /// them). Not the expansion of the all-zero key.
    pub const ZERO: RoundKeys = RoundKeys {
        enc: [[0; 4]; 11],
        dec: [[0; 4]; 11],
    };

    /// Expands `key` (the AES-128 key schedule, plus the inverse-cipher schedule). Run once per
    /// configuration, in userspace; `const` so tests and fixtures can build keys at compile time.
    pub const fn new(key: &[u8; 16]) -> RoundKeys {
        let mut w = [0u32; 44];
        let mut i = 0;
        while i < 4 {
            w[i] = u32::from_be_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]]);
            i += 1;
        }
        let mut rcon = 1u8;
        while i < 44 {
            let mut t = w[i - 1];
            if i % 4 == 0 {
                t = t.rotate_left(8);
                t = (SBOX_C[b0(t)] as u32) << 24
                    | (SBOX_C[b1(t)] as u32) << 16
                    | (SBOX_C[b2(t)] as u32) << 8
                    | SBOX_C[b3(t)] as u32;
                t ^= (rcon as u32) << 24;
                rcon = xtime(rcon);
            }
            w[i] = w[i - 4] ^ t;
            i += 1;
        }

        let mut enc = [[0u32; 4]; 11];
        let mut dec = [[0u32; 4]; 11];
        let mut r = 0;
        while r < 11 {
            let mut c = 0;
            while c < 4 {
                let k = w[4 * r + c];
                enc[r][c] = k;
                dec[10 - r][c] = if r == 0 || r == 10 {
                    k
                } else {
                    // InvMixColumns(k): Td includes the inverse S-box, so feed it S[octet].
                    TD_C[0][SBOX_C[b0(k)] as usize]
                        ^ TD_C[1][SBOX_C[b1(k)] as usize]
                        ^ TD_C[2][SBOX_C[b2(k)] as usize]
                        ^ TD_C[3][SBOX_C[b3(k)] as usize]
                };
                c += 1;
            }
            r += 1;
        }
        RoundKeys { enc, dec }
    }
}

/// Encrypts one block, given as four big-endian words, in place with the encryption schedule
/// `rk` (`RoundKeys::enc`). Pointer arguments only, so it is a valid BPF-to-BPF call whether or
/// not LLVM inlines it. The nine full rounds are written out (no loop for the verifier to walk,
/// no loop counter to spill).
#[inline]
pub fn encrypt_words(rk: &[[u32; 4]; 11], block: &mut [u32; 4]) {
    let k = &rk[0];
    let mut s = [
        block[0] ^ k[0],
        block[1] ^ k[1],
        block[2] ^ k[2],
        block[3] ^ k[3],
    ];
    s = enc_round(&s, &rk[1]);
    s = enc_round(&s, &rk[2]);
    s = enc_round(&s, &rk[3]);
    s = enc_round(&s, &rk[4]);
    s = enc_round(&s, &rk[5]);
    s = enc_round(&s, &rk[6]);
    s = enc_round(&s, &rk[7]);
    s = enc_round(&s, &rk[8]);
    s = enc_round(&s, &rk[9]);
    let k = &rk[10];
    let [s0, s1, s2, s3] = s;
    block[0] = sub_word(s0, s1, s2, s3) ^ k[0];
    block[1] = sub_word(s1, s2, s3, s0) ^ k[1];
    block[2] = sub_word(s2, s3, s0, s1) ^ k[2];
    block[3] = sub_word(s3, s0, s1, s2) ^ k[3];
}

/// One full encryption round: SubBytes, ShiftRows, MixColumns (the T-tables), AddRoundKey.
#[inline(always)]
fn enc_round(s: &[u32; 4], k: &[u32; 4]) -> [u32; 4] {
    let [s0, s1, s2, s3] = *s;
    [
        TE0[b0(s0)] ^ TE1[b1(s1)] ^ TE2[b2(s2)] ^ TE3[b3(s3)] ^ k[0],
        TE0[b0(s1)] ^ TE1[b1(s2)] ^ TE2[b2(s3)] ^ TE3[b3(s0)] ^ k[1],
        TE0[b0(s2)] ^ TE1[b1(s3)] ^ TE2[b2(s0)] ^ TE3[b3(s1)] ^ k[2],
        TE0[b0(s3)] ^ TE1[b1(s0)] ^ TE2[b2(s1)] ^ TE3[b3(s2)] ^ k[3],
    ]
}

/// Final-round column: S-box of octet 0 of `a`, 1 of `b`, 2 of `c`, 3 of `d` (ShiftRows).
#[inline(always)]
fn sub_word(a: u32, b: u32, c: u32, d: u32) -> u32 {
    (SBOX[b0(a)] as u32) << 24
        | (SBOX[b1(b)] as u32) << 16
        | (SBOX[b2(c)] as u32) << 8
        | SBOX[b3(d)] as u32
}

/// Decrypts one block in place with the inverse-cipher schedule `rk` (`RoundKeys::dec`).
#[inline]
pub fn decrypt_words(rk: &[[u32; 4]; 11], block: &mut [u32; 4]) {
    let k = &rk[0];
    let mut s = [
        block[0] ^ k[0],
        block[1] ^ k[1],
        block[2] ^ k[2],
        block[3] ^ k[3],
    ];
    s = dec_round(&s, &rk[1]);
    s = dec_round(&s, &rk[2]);
    s = dec_round(&s, &rk[3]);
    s = dec_round(&s, &rk[4]);
    s = dec_round(&s, &rk[5]);
    s = dec_round(&s, &rk[6]);
    s = dec_round(&s, &rk[7]);
    s = dec_round(&s, &rk[8]);
    s = dec_round(&s, &rk[9]);
    let k = &rk[10];
    let [s0, s1, s2, s3] = s;
    block[0] = inv_sub_word(s0, s3, s2, s1) ^ k[0];
    block[1] = inv_sub_word(s1, s0, s3, s2) ^ k[1];
    block[2] = inv_sub_word(s2, s1, s0, s3) ^ k[2];
    block[3] = inv_sub_word(s3, s2, s1, s0) ^ k[3];
}

/// One full round of the equivalent inverse cipher: InvSubBytes, InvShiftRows,
/// InvMixColumns (the Td tables), AddRoundKey (with InvMixColumns-transformed keys).
#[inline(always)]
fn dec_round(s: &[u32; 4], k: &[u32; 4]) -> [u32; 4] {
    let [s0, s1, s2, s3] = *s;
    [
        TD0[b0(s0)] ^ TD1[b1(s3)] ^ TD2[b2(s2)] ^ TD3[b3(s1)] ^ k[0],
        TD0[b0(s1)] ^ TD1[b1(s0)] ^ TD2[b2(s3)] ^ TD3[b3(s2)] ^ k[1],
        TD0[b0(s2)] ^ TD1[b1(s1)] ^ TD2[b2(s0)] ^ TD3[b3(s3)] ^ k[2],
        TD0[b0(s3)] ^ TD1[b1(s2)] ^ TD2[b2(s1)] ^ TD3[b3(s0)] ^ k[3],
    ]
}

#[inline(always)]
fn inv_sub_word(a: u32, b: u32, c: u32, d: u32) -> u32 {
    (INV_SBOX[b0(a)] as u32) << 24
        | (INV_SBOX[b1(b)] as u32) << 16
        | (INV_SBOX[b2(c)] as u32) << 8
        | INV_SBOX[b3(d)] as u32
}

#[inline(always)]
fn words(b: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

#[inline(always)]
fn octets(w: &[u32; 4]) -> [u8; 16] {
    let [a, b, c, d] = [
        w[0].to_be_bytes(),
        w[1].to_be_bytes(),
        w[2].to_be_bytes(),
        w[3].to_be_bytes(),
    ];
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// AES-128-ECB encryption of one 16-octet block.
pub fn encrypt_block(keys: &RoundKeys, block: &[u8; 16]) -> [u8; 16] {
    let mut w = words(block);
    encrypt_words(&keys.enc, &mut w);
    octets(&w)
}

/// AES-128-ECB decryption of one 16-octet block.
pub fn decrypt_block(keys: &RoundKeys, block: &[u8; 16]) -> [u8; 16] {
    let mut w = words(block);
    decrypt_words(&keys.dec, &mut w);
    octets(&w)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::quic_lb::tests::Rng;
    use aes::Aes128;
    use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};

    fn hex16(s: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn sbox_known_entries() {
        // FIPS-197 Figure 7 / Figure 14 spot checks.
        assert_eq!(SBOX[0x00], 0x63);
        assert_eq!(SBOX[0x01], 0x7c);
        assert_eq!(SBOX[0x53], 0xed);
        assert_eq!(SBOX[0xff], 0x16);
        assert_eq!(INV_SBOX[0x63], 0x00);
        assert_eq!(INV_SBOX[0xed], 0x53);
        // A permutation: the inverse really inverts.
        for x in 0..=255u8 {
            assert_eq!(INV_SBOX[SBOX[x as usize] as usize], x);
        }
    }

    #[test]
    fn fips197_appendix_c1() {
        let keys = RoundKeys::new(&hex16("000102030405060708090a0b0c0d0e0f"));
        let pt = hex16("00112233445566778899aabbccddeeff");
        let ct = hex16("69c4e0d86a7b0430d8cdb78070b4c55a");
        assert_eq!(encrypt_block(&keys, &pt), ct);
        assert_eq!(decrypt_block(&keys, &ct), pt);
    }

    #[test]
    fn fips197_appendix_a1_key_expansion() {
        let keys = RoundKeys::new(&hex16("2b7e151628aed2a6abf7158809cf4f3c"));
        assert_eq!(
            keys.enc[1],
            [0xa0fafe17, 0x88542cb1, 0x23a33939, 0x2a6c7605]
        );
        assert_eq!(
            keys.enc[10],
            [0xd014f9a8, 0xc9ee2589, 0xe13f0cc8, 0xb6630ca6]
        );
    }

    #[test]
    fn matches_rustcrypto_aes_on_random_keys_and_blocks() {
        let mut rng = Rng(0x5eed_0000_ae50_0001);
        for _ in 0..4000 {
            let key = rng.key();
            let ours = RoundKeys::new(&key);
            let theirs = Aes128::new(&key.into());
            for _ in 0..4 {
                let pt = rng.block();
                let mut b = pt.into();
                theirs.encrypt_block(&mut b);
                let ct: [u8; 16] = b.into();
                assert_eq!(
                    encrypt_block(&ours, &pt),
                    ct,
                    "encrypt key {key:02x?} pt {pt:02x?}"
                );
                assert_eq!(
                    decrypt_block(&ours, &ct),
                    pt,
                    "decrypt key {key:02x?} ct {ct:02x?}"
                );
                // Decryption of an arbitrary block, not only of our own ciphertexts.
                let other = rng.block();
                let mut b = other.into();
                theirs.decrypt_block(&mut b);
                let plain: [u8; 16] = b.into();
                assert_eq!(decrypt_block(&ours, &other), plain);
            }
        }
    }

    #[test]
    fn debug_hides_key_material() {
        let keys = RoundKeys::new(&[0xab; 16]);
        assert_eq!(std::format!("{keys:?}"), "RoundKeys { .. }");
    }
}
