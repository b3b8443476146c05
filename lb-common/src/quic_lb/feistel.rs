//! The QUIC-LB four-pass algorithm (draft-ietf-quic-load-balancers-21 §5.4.2 and §5.5.2): a
//! four-round Feistel network over the server ID || nonce plaintext with AES-128 *encryption*
//! of `expand(length, pass, half)` as the round function, for every key-protected length
//! other than 16.
//!
//! Representation. A CID body (the octets after the first) of up to 19 octets is a
//! big-endian 192-bit number, [`W192`], whose top 152 bits are the octets. A half (at most 10
//! octets) is a big-endian 128-bit number, [`W128`], with its octets in the most significant
//! positions and zeros below: exactly `expand()` without its last two octets, so the AES input
//! is the half with `length` and `pass` ORed into the low 16 bits. Halves are kept masked to
//! their `half_len` octets (and, for odd lengths, with the shared middle nibble cleared), so
//! the draft's "truncate" and "clear bits" steps are one AND with a per-length mask.
//!
//! Splitting off the right half and joining it back are shifts by `floor(len / 2)` octets.
//! They are written without branches and without variable indexing: a constant 16-bit shift
//! first (the offset is at least 2 octets), then a variable shift of at most 56 bits, which
//! never reaches a word's width. Masks come from 32-entry tables indexed by a masked length.

use super::aes::encrypt_words;

/// 128 bits, big-endian: `[0]` holds octets 0..8, `[1]` octets 8..16.
pub(crate) type W128 = [u64; 2];
/// A CID body: octets 0..19 in the top 152 bits of 192, the low 40 bits zero.
pub(crate) type W192 = [u64; 3];

const fn octet_mask(bytes: &[u8; 16]) -> W128 {
    let mut w = [0u64; 2];
    let mut i = 0;
    while i < 16 {
        w[i / 8] |= (bytes[i] as u64) << (56 - 8 * (i % 8));
        i += 1;
    }
    w
}

/// The `k` most significant octets of a 128-bit value (`k` saturates at 16).
const fn top(k: usize) -> W128 {
    let mut b = [0u8; 16];
    let mut i = 0;
    while i < 16 && i < k {
        b[i] = 0xff;
        i += 1;
    }
    octet_mask(&b)
}

/// Mask of a half for plaintext length `l`: `half_len = ceil(l / 2)` octets; for odd `l` the
/// left half loses the low nibble of its last octet and the right half the high nibble of its
/// first (draft step 2). Rows outside 5..=19 are never used by a validated configuration.
const fn half_masks(right: bool) -> [W128; 32] {
    let mut t = [[0u64; 2]; 32];
    let mut l: usize = 5;
    while l <= 19 {
        let h = l.div_ceil(2);
        let mut b = [0u8; 16];
        let mut i = 0;
        while i < h {
            b[i] = 0xff;
            i += 1;
        }
        if l % 2 == 1 {
            if right {
                b[0] = 0x0f;
            } else {
                b[h - 1] = 0xf0;
            }
        }
        t[l] = octet_mask(&b);
        l += 1;
    }
    t
}

const fn top_table() -> [W128; 32] {
    let mut t = [[0u64; 2]; 32];
    let mut k = 0;
    while k < 32 {
        t[k] = top(k);
        k += 1;
    }
    t
}

/// `TOP[k]`: the `k` most significant octets (server ID masks; `k` saturates at 16).
static TOP: [W128; 32] = top_table();
static LEFT: [W128; 32] = half_masks(false);
static RIGHT: [W128; 32] = half_masks(true);

/// `x & mask` as a table index, with `x` hidden from LLVM so the AND stays in the code. The
/// caller has validated the lengths, so LLVM knows the index is in range and would drop a
/// plain AND; the BPF verifier does not follow that reasoning (the validation tested a value
/// derived from `x`, not the register used for the index) and rejects the access as possibly
/// out of bounds. Costs a stack store and load.
#[inline(always)]
fn table_index(x: u8, mask: u8) -> usize {
    (core::hint::black_box(x) & mask) as usize
}

/// Keeps the first `k` octets of `x` and zeros the rest (`k` taken modulo 32, saturating at 16).
#[inline(always)]
pub(crate) fn keep_octets(x: &W128, k: u8) -> W128 {
    let m = &TOP[table_index(k, 31)];
    [x[0] & m[0], x[1] & m[1]]
}

#[inline(always)]
fn and(x: &W128, m: &W128) -> W128 {
    [x[0] & m[0], x[1] & m[1]]
}

#[inline(always)]
fn xor(x: &W128, y: &W128) -> W128 {
    [x[0] ^ y[0], x[1] ^ y[1]]
}

/// Variable part of a shift by `o` octets, `o` in 2..=9: 0..=56 bits (after the constant 16).
#[inline(always)]
fn var_shift(o: u8) -> u32 {
    8 * (o.wrapping_sub(2) & 7) as u32
}

/// The 128 most significant bits of `p << 8 * o`, for `o` in 2..=9: the right half starts at
/// octet `o = floor(len / 2)` of the block.
#[inline(always)]
pub(crate) fn shl_octets(p: &W192, o: u8) -> W128 {
    let a = (p[0] << 16) | (p[1] >> 48);
    let b = (p[1] << 16) | (p[2] >> 48);
    let c = p[2] << 16;
    let t = var_shift(o);
    // `(x >> 1) >> (63 - t)` is `x >> (64 - t)` without the undefined 64-bit shift at t = 0.
    [
        a.wrapping_shl(t) | (b >> 1).wrapping_shr(63 - t),
        b.wrapping_shl(t) | (c >> 1).wrapping_shr(63 - t),
    ]
}

/// `x` (as the top 128 bits of a 192-bit value) shifted right by `8 * o` bits, `o` in 2..=9:
/// places a right half at octet `o` of a block.
#[inline(always)]
pub(crate) fn shr_octets(x: &W128, o: u8) -> W192 {
    let a = x[0] >> 16;
    let b = (x[1] >> 16) | (x[0] << 48);
    let c = x[1] << 48;
    let t = var_shift(o);
    [
        a.wrapping_shr(t),
        b.wrapping_shr(t) | (a << 1).wrapping_shl(63 - t),
        c.wrapping_shr(t) | (b << 1).wrapping_shl(63 - t),
    ]
}

/// Octets 0..19 of `b` as a [`W192`].
#[inline(always)]
pub(crate) fn load19(b: &[u8; 19]) -> W192 {
    [
        u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        u64::from_be_bytes([b[16], b[17], b[18], 0, 0, 0, 0, 0]),
    ]
}

/// The 19 octets of a [`W192`] (its low 40 bits are dropped).
#[inline(always)]
pub(crate) fn store19(w: &W192) -> [u8; 19] {
    let [a, b, c] = [w[0].to_be_bytes(), w[1].to_be_bytes(), w[2].to_be_bytes()];
    [
        a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6],
        b[7], c[0], c[1], c[2],
    ]
}

/// One Feistel pass: `truncate(AES(expand(len, pass, half)), half_len)`, masked with `mask`.
/// `half` must already be masked to its `half_len` (<= 10) octets, so octets 10..16 of the
/// AES input are the zero pad, `len` and `pass`.
#[inline(always)]
fn pass(rk: &[[u32; 4]; 11], w: &mut [u32; 4], half: &W128, len_pass: u32, mask: &W128) -> W128 {
    *w = [
        (half[0] >> 32) as u32,
        half[0] as u32,
        (half[1] >> 32) as u32,
        len_pass,
    ];
    encrypt_words(rk, w);
    [
        ((w[0] as u64) << 32 | w[1] as u64) & mask[0],
        ((w[2] as u64) << 32 | w[3] as u64) & mask[1],
    ]
}

/// The last two octets of `expand(len, pass, _)`.
#[inline(always)]
fn len_pass(len: u8, pass: u8) -> u32 {
    (len as u32) << 8 | pass as u32
}

/// Encrypts a plaintext of `len` (5..=19, not 16) octets held in the top of `p` (octets past
/// `len` zero); returns the ciphertext the same way (octets past `len` zero).
#[inline(always)]
pub(crate) fn encrypt(rk: &[[u32; 4]; 11], len: u8, p: &W192) -> W192 {
    let i = table_index(len, 31);
    let (lm, rm) = (&LEFT[i], &RIGHT[i]);
    let o = len / 2;
    let mut w = [0u32; 4];
    let left0 = and(&[p[0], p[1]], lm);
    let right0 = and(&shl_octets(p, o), rm);
    let right1 = xor(&right0, &pass(rk, &mut w, &left0, len_pass(len, 1), rm));
    let left1 = xor(&left0, &pass(rk, &mut w, &right1, len_pass(len, 2), lm));
    let right2 = xor(&right1, &pass(rk, &mut w, &left1, len_pass(len, 3), rm));
    let left2 = xor(&left1, &pass(rk, &mut w, &right2, len_pass(len, 4), lm));
    // For odd lengths the last nibble of left2 and the first of right2 are both zero, so an
    // OR joins them into the shared middle octet.
    let r = shr_octets(&right2, o);
    [left2[0] | r[0], left2[1] | r[1], r[2]]
}

/// Decrypts a ciphertext of `sid_len + nonce_len` (5..=19, not 16) octets held in the top of
/// `c` (octets past the length are ignored). Returns at least the first `sid_len` octets of
/// the plaintext in the top of a [`W128`]; the caller masks to `sid_len`. Three passes when
/// the nonce is at least as long as the server ID (the ID then lies in the left half), else
/// four.
#[inline(always)]
pub(crate) fn decrypt(rk: &[[u32; 4]; 11], sid_len: u8, nonce_len: u8, c: &W192) -> W128 {
    let len = sid_len.wrapping_add(nonce_len);
    let i = table_index(len, 31);
    let (lm, rm) = (&LEFT[i], &RIGHT[i]);
    let o = len / 2;
    let mut w = [0u32; 4];
    let left2 = and(&[c[0], c[1]], lm);
    let right2 = and(&shl_octets(c, o), rm);
    let left1 = xor(&left2, &pass(rk, &mut w, &right2, len_pass(len, 4), lm));
    let right1 = xor(&right2, &pass(rk, &mut w, &left1, len_pass(len, 3), rm));
    let left0 = xor(&left1, &pass(rk, &mut w, &right1, len_pass(len, 2), lm));
    if nonce_len >= sid_len {
        return left0;
    }
    let right0 = xor(&right1, &pass(rk, &mut w, &left0, len_pass(len, 1), rm));
    let r = shr_octets(&right0, o);
    [left0[0] | r[0], left0[1] | r[1]]
}
