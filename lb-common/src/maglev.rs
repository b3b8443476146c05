//! Maglev consistent-hash table construction (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI '16), with weights.
//!
//! Every backend has a permutation of the `M` table slots (`M` prime):
//! `offset = h1(key) % M`, `skip = h2(key) % (M - 1) + 1`, `permutation[j] = (offset + j * skip)
//! % M`. The table is filled in rounds; in each round every backend claims its next preferred
//! slot that is still empty. Because `M` is prime and `1 <= skip < M`, a permutation visits
//! every slot, so a backend always finds an empty slot while the table is not full.
//!
//! Weights: a backend's turns are paced by a credit counter. Each round it earns `weight`
//! credit and takes a turn whenever its credit reaches the largest weight, which then costs
//! that much. The heaviest backends take one slot per round, a backend of half that weight
//! one slot every other round, and so on, so slot shares are proportional to weight. Credit
//! starts at `max_weight - weight`, so every backend with a weight above zero takes a slot in
//! the first round: after `r` rounds a backend has taken `ceil(r * weight / max_weight)` turns
//! (rather than `floor`), and no weighted backend is ever left without a slot.
//!
//! Order independence: the result depends only on the *set* of backends, not on their order
//! in the input slice. `populate` first sorts the working state (in the caller's scratch, no
//! allocation) by `(key, id, weight)` and runs the rounds in that order. Permutations come
//! from each backend's `key` (see [`backend_key`]), never from its position or `id`, so a
//! backend keeps its preferences when others come or go, which is what keeps disruption near
//! the minimum (about `1/N` of the slots move when one of `N` backends leaves).
//!
//! Integer arithmetic only, no allocation, no panics on input. The types, [`is_prime`] and
//! [`backend_key`] build for the BPF target too; [`populate`] is userspace only (the XDP
//! program only reads the finished table, and BPF cannot pass its seven arguments).

// On BPF `populate` is left out, so its seeds and scratch fields go unused there.
#![cfg_attr(target_arch = "bpf", allow(dead_code))]

use core::fmt;

use crate::hash::murmur3_32;
use crate::maps::{MAGLEV_RING_MAX, MAGLEV_RING_MIN, MAGLEV_SLOTS_PER_BACKEND};

/// Seeds of the two halves of [`backend_key`].
const KEY_SEED_HI: u32 = 0x6d67_6c01;
const KEY_SEED_LO: u32 = 0x6d67_6c02;
/// Seeds of the permutation hashes `h1` (offset) and `h2` (skip) over a backend's key.
const OFFSET_SEED: u32 = 0x6d67_6c11;
const SKIP_SEED: u32 = 0x6d67_6c12;

/// Marks an empty slot while the table is being filled. No backend may use this id.
pub const MAGLEV_RESERVED_ID: u32 = u32::MAX;

/// One backend as Maglev sees it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Written into the table slots this backend owns (its index in `LB_BACKENDS`). Must not
    /// be [`MAGLEV_RESERVED_ID`].
    pub id: u32,
    /// Relative share of slots; 0 means no slots (draining or down).
    pub weight: u32,
    /// Stable identity hash (see [`backend_key`]); the backend's permutation depends only on
    /// this, so it does not change when the backend moves in the slice or gets a new `id`.
    pub key: u64,
}

/// Per-backend working state the caller provides, one per backend (so the crate needs no
/// allocator). Contents are meaningless to the caller; a `Default` value is fine as input.
#[derive(Copy, Clone, Debug, Default)]
pub struct MaglevScratch {
    key: u64,
    id: u32,
    weight: u32,
    /// Next slot of this backend's permutation to try.
    next: u32,
    skip: u32,
    /// Credit towards the next turn; always below `2 * max_weight`, so `u64` cannot overflow.
    credit: u64,
}

/// Why a Maglev table could not be built. The table is left untouched on error.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The table length is not a prime number.
    TableSizeNotPrime(u32),
    /// Fewer slots than backends with a weight above zero.
    TableTooSmall { size: u32, backends: u32 },
    /// The table is longer than [`MAGLEV_RING_MAX`] (lengths beyond `u32` saturate).
    TableTooLarge(u32),
    /// `scratch` is shorter than `backends`.
    ScratchTooSmall,
    /// No backend has a weight above zero.
    NoWeight,
    /// A backend with a weight above zero uses [`MAGLEV_RESERVED_ID`] as its id.
    ReservedId(u32),
}

impl core::error::Error for MaglevError {}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MaglevError::TableSizeNotPrime(n) => write!(
                f,
                "Maglev table size {n} is not prime; use a prime between 2 and {MAGLEV_RING_MAX} \
                 (e.g. 65537, 32749, 16381, 251)"
            ),
            MaglevError::TableTooSmall { size, backends } => write!(
                f,
                "Maglev table size {size} is smaller than the {backends} backends with non-zero \
                 weight; use a prime of at least {backends} (ideally 100 times as many)"
            ),
            MaglevError::TableTooLarge(n) => write!(
                f,
                "Maglev table size {n} exceeds the maximum {MAGLEV_RING_MAX}; use a prime no \
                 larger than {MAGLEV_RING_MAX}"
            ),
            MaglevError::ScratchTooSmall => write!(
                f,
                "Maglev scratch space is too small; pass at least one scratch entry per backend"
            ),
            MaglevError::NoWeight => write!(
                f,
                "no Maglev backend has a weight above zero; at least one backend needs weight >= 1"
            ),
            MaglevError::ReservedId(id) => write!(
                f,
                "Maglev backend id {id} is reserved to mark empty slots; use ids below {id}"
            ),
        }
    }
}

/// Whether `n` is prime (trial division; fine for table sizes).
pub const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = n as u64;
    let mut d: u64 = 5;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// The ring size a VIP gets for `backends` backends with a weight above zero: the smallest
/// prime with at least [`MAGLEV_SLOTS_PER_BACKEND`] slots per backend, no smaller than
/// [`MAGLEV_RING_MIN`] and no larger than [`MAGLEV_RING_MAX`]. Maglev moves about `1/N` of
/// the flows when one of `N` backends leaves only while `M` is much larger than `N`; 128
/// slots each keeps the extra movement under about 1% (the NSDI paper's figure 12 shows
/// `M / N` of 100 is enough), without the 65,537 slots every VIP had before.
pub const fn ring_size_for(backends: u32) -> u32 {
    let want = backends.saturating_mul(MAGLEV_SLOTS_PER_BACKEND);
    if want >= MAGLEV_RING_MAX {
        return MAGLEV_RING_MAX;
    }
    let mut n = if want < MAGLEV_RING_MIN {
        MAGLEV_RING_MIN
    } else {
        want
    };
    while !is_prime(n) {
        n += 1;
    }
    if n > MAGLEV_RING_MAX {
        MAGLEV_RING_MAX
    } else {
        n
    }
}

/// The slots of the shared pool (`LB_MAGLEV`) a ring of `size` takes: whole elements of
/// [`MAGLEV_SLOTS_PER_ELEMENT`](crate::maps::MAGLEV_SLOTS_PER_ELEMENT) slots, so no two
/// rings share one.
pub const fn ring_pool_slots(size: u32) -> u32 {
    size.next_multiple_of(crate::maps::MAGLEV_SLOTS_PER_ELEMENT)
}

/// Stable identity key for a backend: two MurmurHash3 (x86, 32-bit) hashes, with different
/// seeds, of its 16-octet address followed by its port (little-endian), high half first.
pub fn backend_key(addr: &[u8; 16], port: u16) -> u64 {
    let mut buf = [0u8; 18];
    buf[..16].copy_from_slice(addr);
    buf[16..].copy_from_slice(&port.to_le_bytes());
    let hi = murmur3_32(&buf, KEY_SEED_HI) as u64;
    let lo = murmur3_32(&buf, KEY_SEED_LO) as u64;
    (hi << 32) | lo
}

/// `(offset, skip)` of the permutation of the backend with identity `key` in a table of `m`
/// slots (`m >= 2`).
#[cfg(not(target_arch = "bpf"))]
#[inline]
fn permutation(key: u64, m: u32) -> (u32, u32) {
    let k = key.to_le_bytes();
    let offset = murmur3_32(&k, OFFSET_SEED) % m;
    let skip = murmur3_32(&k, SKIP_SEED) % (m - 1) + 1;
    (offset, skip)
}

/// Total order the rounds run in: by key, ties (duplicate keys) by id, then weight. Entries
/// equal in all three are interchangeable, so the table never depends on the input order.
#[cfg(not(target_arch = "bpf"))]
#[inline]
fn less(a: &MaglevScratch, b: &MaglevScratch) -> bool {
    (a.key, a.id, a.weight) < (b.key, b.id, b.weight)
}

/// In-place heapsort by [`less`]: no allocation and constant stack (unlike `sort_unstable`,
/// whose small-sort buffers would not fit a BPF stack if this were ever built there).
#[cfg(not(target_arch = "bpf"))]
fn heapsort(v: &mut [MaglevScratch]) {
    fn sift_down(v: &mut [MaglevScratch], mut root: usize, end: usize) {
        loop {
            let mut child = 2 * root + 1;
            if child >= end {
                return;
            }
            if child + 1 < end && less(&v[child], &v[child + 1]) {
                child += 1;
            }
            if !less(&v[root], &v[child]) {
                return;
            }
            v.swap(root, child);
            root = child;
        }
    }
    let n = v.len();
    let mut start = n / 2;
    while start > 0 {
        start -= 1;
        sift_down(v, start, n);
    }
    let mut end = n;
    while end > 1 {
        end -= 1;
        v.swap(0, end);
        sift_down(v, 0, end);
    }
}

/// Fill `table` with backend ids: Maglev with weights (see the module docs).
///
/// `table.len()` is the table size `M`: it must be prime, at most [`MAGLEV_RING_MAX`], and at
/// least the number of backends with a weight above zero. Backends of weight 0 get no slots;
/// the others get shares of the slots proportional to their weights (each at least one).
/// `scratch` needs at least `backends.len()` entries; its contents on entry do not matter.
/// The result depends only on the set of backends, not on their order in `backends`.
///
/// On error `table` is left untouched; on success every slot holds the id of a backend with
/// a weight above zero.
///
/// Cost: about `M * ln M` permutation steps, plus `N` credit updates per round. There are
/// about `M * max_weight / total_weight` rounds (`M / N` with equal weights), so the worst
/// case is one dominant weight among thousands of backends: ~0.2 s for 4096 backends and
/// `M = 65537` in a release build, against ~3 ms with equal weights.
///
/// Userspace only: not built for the BPF target, whose calling convention cannot pass this
/// many arguments (the XDP program only reads the finished table).
#[cfg(not(target_arch = "bpf"))]
pub fn populate(
    backends: &[MaglevBackend],
    table: &mut [u32],
    scratch: &mut [MaglevScratch],
) -> Result<(), MaglevError> {
    let size = u32::try_from(table.len()).unwrap_or(u32::MAX);
    if size > MAGLEV_RING_MAX {
        return Err(MaglevError::TableTooLarge(size));
    }
    if !is_prime(size) {
        return Err(MaglevError::TableSizeNotPrime(size));
    }
    if scratch.len() < backends.len() {
        return Err(MaglevError::ScratchTooSmall);
    }

    // Copy the weighted backends into the scratch; `n` of them.
    let mut n = 0usize;
    let mut max_weight = 0u32;
    for (b, s) in backends
        .iter()
        .filter(|b| b.weight > 0)
        .zip(scratch.iter_mut())
    {
        if b.id == MAGLEV_RESERVED_ID {
            return Err(MaglevError::ReservedId(b.id));
        }
        let (offset, skip) = permutation(b.key, size);
        *s = MaglevScratch {
            key: b.key,
            id: b.id,
            weight: b.weight,
            next: offset,
            skip,
            credit: 0,
        };
        max_weight = max_weight.max(b.weight);
        n += 1;
    }
    if n == 0 {
        return Err(MaglevError::NoWeight);
    }
    let active = u32::try_from(n).unwrap_or(u32::MAX);
    if active > size {
        return Err(MaglevError::TableTooSmall {
            size,
            backends: active,
        });
    }

    let work = &mut scratch[..n];
    heapsort(work);
    let max_weight = max_weight as u64;
    for s in work.iter_mut() {
        // Everyone reaches `max_weight` in round one; see the module docs.
        s.credit = max_weight - s.weight as u64;
    }

    table.fill(MAGLEV_RESERVED_ID);
    let mut filled = 0u32;
    // Every round the heaviest backend takes a slot, so `size` rounds always suffice; the
    // bound only guards against looping forever on a bug.
    let mut rounds = 0u32;
    'rounds: while filled < size && rounds < size {
        rounds += 1;
        for s in work.iter_mut() {
            // credit < max_weight before, weight <= max_weight: at most one turn per round.
            s.credit += s.weight as u64;
            if s.credit < max_weight {
                continue;
            }
            s.credit -= max_weight;
            // Walk this backend's permutation to its next empty slot. The table is not full,
            // and the permutation visits every slot within `size` steps.
            for _ in 0..size {
                let slot = s.next;
                // Both < size <= 65537: the sum cannot overflow.
                s.next = (s.next + s.skip) % size;
                if let Some(t) = table.get_mut(slot as usize)
                    && *t == MAGLEV_RESERVED_ID
                {
                    *t = s.id;
                    filled += 1;
                    break;
                }
            }
            if filled == size {
                break 'rounds;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    /// The ring most tests use (the largest before rings were sized to their backends).
    const MAGLEV_RING_DEFAULT: u32 = 65537;
    use std::vec;
    use std::vec::Vec;
    use std::{eprintln, format};

    const M: usize = MAGLEV_RING_DEFAULT as usize;

    fn addr(i: u32) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        a
    }

    /// Backend `i` (id = i) with weight `w`, key from a made-up address.
    fn be(i: u32, w: u32) -> MaglevBackend {
        MaglevBackend {
            id: i,
            weight: w,
            key: backend_key(&addr(i), 8443),
        }
    }

    fn build(backends: &[MaglevBackend], m: usize) -> Vec<u32> {
        let mut table = vec![0u32; m];
        let mut scratch = vec![MaglevScratch::default(); backends.len()];
        populate(backends, &mut table, &mut scratch).expect("populate");
        table
    }

    fn counts(table: &[u32], ids: usize) -> Vec<usize> {
        let mut c = vec![0usize; ids];
        for &id in table {
            c[id as usize] += 1;
        }
        c
    }

    fn changed(a: &[u32], b: &[u32]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    /// Deterministic Fisher–Yates with a xorshift generator.
    fn shuffle<T>(v: &mut [T], mut seed: u64) {
        for i in (1..v.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            v.swap(i, (seed % (i as u64 + 1)) as usize);
        }
    }

    #[test]
    fn primes() {
        for p in [
            2u32,
            3,
            5,
            7,
            11,
            13,
            251,
            257,
            4093,
            16381,
            32749,
            65521,
            65537,
            2_147_483_647,
        ] {
            assert!(is_prime(p), "{p} is prime");
        }
        for c in [
            0u32,
            1,
            4,
            6,
            9,
            15,
            25,
            49,
            121,
            255,
            256,
            65535,
            65536,
            65539 * 3,
            u32::MAX,
        ] {
            assert!(!is_prime(c), "{c} is not prime");
        }
        // The largest prime below 2^32 exercises the u64 square in the loop.
        assert!(is_prime(4_294_967_291));
        assert!(is_prime(MAGLEV_RING_MAX) && is_prime(MAGLEV_RING_DEFAULT));
        assert!(is_prime(MAGLEV_RING_MIN));
    }

    #[test]
    fn rings_are_sized_to_their_backends() {
        assert_eq!(ring_size_for(0), MAGLEV_RING_MIN);
        assert_eq!(ring_size_for(1), MAGLEV_RING_MIN);
        assert_eq!(ring_size_for(2), MAGLEV_RING_MIN);
        // 5 x 128 = 640: the next prime.
        assert_eq!(ring_size_for(5), 641);
        assert_eq!(ring_size_for(100), 12_809);
        assert_eq!(ring_size_for(1023), 130_957);
        assert_eq!(ring_size_for(1024), MAGLEV_RING_MAX);
        assert_eq!(ring_size_for(65_536), MAGLEV_RING_MAX);
        for n in 0..2000 {
            let m = ring_size_for(n);
            assert!(is_prime(m) && m <= MAGLEV_RING_MAX, "{n}: {m}");
            assert!(
                m >= n
                    .saturating_mul(MAGLEV_SLOTS_PER_BACKEND)
                    .min(MAGLEV_RING_MAX)
            );
        }
    }

    #[test]
    fn errors() {
        let bs = [be(0, 1), be(1, 1), be(2, 1)];
        let mut scratch = [MaglevScratch::default(); 3];

        let mut t = [7u32; 10];
        assert_eq!(
            populate(&bs, &mut t, &mut scratch),
            Err(MaglevError::TableSizeNotPrime(10))
        );
        assert_eq!(t, [7; 10], "table untouched on error");
        assert_eq!(
            populate(&bs, &mut [], &mut scratch),
            Err(MaglevError::TableSizeNotPrime(0))
        );
        assert_eq!(
            populate(&bs, &mut [0], &mut scratch),
            Err(MaglevError::TableSizeNotPrime(1))
        );

        let mut t = [7u32; 2];
        assert_eq!(
            populate(&bs, &mut t, &mut scratch),
            Err(MaglevError::TableTooSmall {
                size: 2,
                backends: 3
            })
        );
        assert_eq!(t, [7; 2]);
        // Weight-0 backends don't count towards the minimum size.
        let mut t = [7u32; 2];
        let two = [be(0, 1), be(1, 0), be(2, 1)];
        assert_eq!(populate(&two, &mut t, &mut scratch), Ok(()));

        // 131101 is prime but too large.
        let mut big = vec![0u32; 131_101];
        assert_eq!(
            populate(&bs, &mut big, &mut scratch),
            Err(MaglevError::TableTooLarge(131_101))
        );

        let mut t = [0u32; 7];
        let mut short = [MaglevScratch::default(); 2];
        assert_eq!(
            populate(&bs, &mut t, &mut short),
            Err(MaglevError::ScratchTooSmall)
        );

        let zero = [be(0, 0), be(1, 0)];
        assert_eq!(
            populate(&zero, &mut t, &mut scratch),
            Err(MaglevError::NoWeight)
        );
        assert_eq!(
            populate(&[], &mut t, &mut scratch),
            Err(MaglevError::NoWeight)
        );

        let reserved = [
            be(0, 1),
            MaglevBackend {
                id: u32::MAX,
                weight: 1,
                key: 5,
            },
        ];
        assert_eq!(
            populate(&reserved, &mut t, &mut scratch),
            Err(MaglevError::ReservedId(u32::MAX))
        );
        // ... unless it has no weight.
        let reserved0 = [
            be(0, 1),
            MaglevBackend {
                id: u32::MAX,
                weight: 0,
                key: 5,
            },
        ];
        assert_eq!(populate(&reserved0, &mut t, &mut scratch), Ok(()));
        assert_eq!(t, [0; 7]);

        // Messages name the problem and the valid range.
        let msg = format!("{}", MaglevError::TableSizeNotPrime(10));
        assert!(
            msg.contains("10") && msg.contains("not prime") && msg.contains("65537"),
            "{msg}"
        );
        let msg = format!(
            "{}",
            MaglevError::TableTooSmall {
                size: 2,
                backends: 3
            }
        );
        assert!(msg.contains("at least 3"), "{msg}");
        let msg = format!("{}", MaglevError::TableTooLarge(131101));
        assert!(msg.contains("131101") && msg.contains("131071"), "{msg}");
    }

    #[test]
    fn equal_weights_are_even() {
        for n in [3usize, 7, 10, 50] {
            let bs: Vec<_> = (0..n as u32).map(|i| be(i, 1)).collect();
            let c = counts(&build(&bs, M), n);
            let (lo, hi) = (*c.iter().min().unwrap(), *c.iter().max().unwrap());
            eprintln!(
                "N={n} M={M}: ideal {:.2}, min {lo}, max {hi}",
                M as f64 / n as f64
            );
            // Equal weights: every backend takes one slot per round, so counts are
            // floor(M/N) or ceil(M/N).
            assert!(lo >= M / n && hi <= M.div_ceil(n), "N={n}: {c:?}");
            assert_eq!(c.iter().sum::<usize>(), M);
        }
    }

    #[test]
    fn weights_are_proportional() {
        let bs = [be(0, 1), be(1, 2), be(2, 3)];
        let c = counts(&build(&bs, M), 3);
        for (i, w) in [1usize, 2, 3].into_iter().enumerate() {
            let share = c[i] as f64 / M as f64;
            let ideal = w as f64 / 6.0;
            eprintln!(
                "weight {w}: {} slots, share {share:.5} (ideal {ideal:.5})",
                c[i]
            );
            assert!((share - ideal).abs() <= ideal * 0.03, "weight {w}: {c:?}");
            // Credit pacing is exact up to rounding: within one slot of w/6 of the table.
            assert!(
                (c[i] as f64 - M as f64 * ideal).abs() <= 1.0,
                "weight {w}: {c:?}"
            );
        }

        // Scaling every weight leaves the table alone; large weights don't overflow.
        let scaled = [be(0, 1_000_000), be(1, 2_000_000), be(2, 3_000_000)];
        assert_eq!(build(&bs, M), build(&scaled, M));
        let huge = [be(0, u32::MAX), be(1, u32::MAX - 1), be(2, 1)];
        let c = counts(&build(&huge, M), 3);
        eprintln!("weights MAX, MAX-1, 1: {c:?}");
        assert!(c[2] >= 1, "a backend with weight > 0 always gets a slot");

        // A backend of weight 0 gets nothing; the rest split the table.
        let bs = [be(0, 1), be(1, 0), be(2, 1)];
        let c = counts(&build(&bs, M), 3);
        assert_eq!(c[1], 0);
        assert!(c[0].abs_diff(c[2]) <= 1, "{c:?}");
    }

    #[test]
    fn removing_one_backend_moves_about_one_nth() {
        for n in [5u32, 10, 20] {
            let all: Vec<_> = (0..n).map(|i| be(i, 1)).collect();
            let before = build(&all, M);
            let victim = n / 2;
            let rest: Vec<_> = all.iter().copied().filter(|b| b.id != victim).collect();
            let after = build(&rest, M);
            assert!(!after.contains(&victim));
            let moved = changed(&before, &after);
            let owned = before.iter().filter(|&&id| id == victim).count();
            let extra = moved - owned;
            let frac = moved as f64 / M as f64;
            eprintln!(
                "remove 1 of N={n}: {moved} slots changed ({frac:.4} of M; 1/N = {:.4}); \
                 {owned} were the removed backend's, {extra} others ({:.4} of M)",
                1.0 / n as f64,
                extra as f64 / M as f64
            );
            assert!(frac <= 1.0 / n as f64 + 0.01, "N={n}: {frac}");
        }
    }

    #[test]
    fn adding_one_backend_moves_about_one_over_n_plus_one() {
        for n in [5u32, 10, 20] {
            let old: Vec<_> = (0..n).map(|i| be(i, 1)).collect();
            let before = build(&old, M);
            let mut new = old.clone();
            new.push(be(n, 1));
            let after = build(&new, M);
            let moved = changed(&before, &after);
            let gained = after.iter().filter(|&&id| id == n).count();
            let frac = moved as f64 / M as f64;
            eprintln!(
                "add 1 to N={n}: {moved} slots changed ({frac:.4} of M; 1/(N+1) = {:.4}); \
                 {gained} went to the new backend, {} moved between old ones ({:.4} of M)",
                1.0 / (n + 1) as f64,
                moved - gained,
                (moved - gained) as f64 / M as f64
            );
            assert!(frac <= 1.0 / (n + 1) as f64 + 0.01, "N={n}: {frac}");
        }
    }

    #[test]
    fn order_independent() {
        let mut bs: Vec<_> = (0..40u32).map(|i| be(i, 1 + i % 4)).collect();
        bs.push(be(40, 0));
        let reference = build(&bs, M);
        for seed in [1u64, 0x9e37_79b9_7f4a_7c15, 42] {
            let mut shuffled = bs.clone();
            shuffle(&mut shuffled, seed);
            assert_ne!(shuffled, bs);
            assert_eq!(build(&shuffled, M), reference, "seed {seed}");
        }
        bs.reverse();
        assert_eq!(build(&bs, M), reference);

        // Duplicate keys (a caller bug, but must still be order independent).
        let dup = [
            MaglevBackend {
                id: 1,
                weight: 1,
                key: 9,
            },
            MaglevBackend {
                id: 2,
                weight: 1,
                key: 9,
            },
            MaglevBackend {
                id: 3,
                weight: 2,
                key: 9,
            },
        ];
        let rev = [dup[2], dup[0], dup[1]];
        assert_eq!(build(&dup, 251), build(&rev, 251));
    }

    #[test]
    fn deterministic_and_scratch_contents_do_not_matter() {
        let bs: Vec<_> = (0..10u32).map(|i| be(i, 1 + i % 3)).collect();
        let a = build(&bs, M);
        let b = build(&bs, M);
        assert_eq!(a, b);
        // Reusing a dirty scratch and table gives the same result.
        let mut table = vec![3u32; M];
        let mut scratch = vec![MaglevScratch::default(); 12];
        populate(&bs[..4], &mut table, &mut scratch).unwrap();
        populate(&bs, &mut table, &mut scratch).unwrap();
        assert_eq!(table, a);
        // Pinned values: changing hashing or fill order reshuffles every VIP, so it must be
        // deliberate.
        assert_eq!(backend_key(&addr(1), 8443), 0x8d1d_516c_e2a6_407c);
        assert_eq!(build(&bs, 13), [9, 2, 0, 6, 7, 8, 5, 5, 2, 4, 8, 3, 1]);
        assert_ne!(backend_key(&addr(1), 8443), backend_key(&addr(1), 8444));
        assert_ne!(backend_key(&addr(1), 8443), backend_key(&addr(2), 8443));
    }

    #[test]
    fn small_tables() {
        let bs = [be(0, 1), be(1, 1), be(2, 1)];
        let t = build(&bs, 7);
        eprintln!("M=7, 3 backends: {t:?}");
        assert!(t.iter().all(|&id| id < 3), "{t:?}");
        assert_eq!(t, [2, 1, 1, 2, 0, 0, 2]);
        let c = counts(&t, 3);
        assert!(c.iter().all(|&k| (2..=3).contains(&k)), "{c:?}");

        // M equal to the number of backends: one slot each.
        let t = build(&bs, 3);
        let mut sorted = t.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2]);

        // Smallest tables and single backends.
        assert_eq!(build(&[be(5, 1)], 2), [5, 5]);
        assert_eq!(build(&[be(5, 3)], 7), [5; 7]);
        // Skewed weights in a small table: every weighted backend still gets a slot.
        let skew = [be(0, 1000), be(1, 1), be(2, 1)];
        let c = counts(&build(&skew, 5), 3);
        assert_eq!(c, [3, 1, 1]);
        // Every prime up to 251 with 2 backends works and fills every slot.
        for m in (2..=251u32).filter(|&m| is_prime(m)) {
            let t = build(&[be(0, 1), be(1, 2)], m as usize);
            assert!(t.iter().all(|&id| id < 2), "M={m}: {t:?}");
        }
    }
}
