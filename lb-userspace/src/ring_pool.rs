//! The allocator of `LB_MAGLEV`, the pool of Maglev ring slots every VIP's ring lives in.
//!
//! A VIP's ring is `ring_size` consecutive slots from its `VipMeta::ring_offset`. A new ring
//! goes into free slots, and the VIP's `VipMeta` is then replaced in one map update, so a
//! packet reads the old ring or the new one, never a half-written one. The old ring's slots
//! are not free at once: a packet that read the old `VipMeta` just before the update may
//! still be reading them. XDP runs to completion in softirq context, one packet in
//! microseconds, so the slots wait out a grace period ([`GRACE`]) before they can hold
//! another ring.
//!
//! Pure bookkeeping (no map access), so it is unit-tested here; the data plane owns one and
//! writes the slots it hands out.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// How long freed slots wait before they are handed out again: many orders of magnitude
/// longer than any XDP program run, even on a host whose vCPU is descheduled mid-packet.
pub const GRACE: Duration = Duration::from_secs(1);

/// Why a ring cannot be placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// Not enough free slots in one piece, even counting those still in their grace period.
    Full {
        wanted: u32,
        free: u64,
        capacity: u32,
    },
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Full {
                wanted,
                free,
                capacity,
            } => write!(
                f,
                "the Maglev ring pool has no room for a ring of {wanted} slots ({free} of \
                 {capacity} slots free, counting rings replaced less than {} ms ago); raise \
                 [capacity] maglev_slots",
                GRACE.as_millis()
            ),
        }
    }
}

impl std::error::Error for PoolError {}

/// Free and in-use slots of the pool.
#[derive(Clone, Debug)]
pub struct RingPool {
    capacity: u32,
    /// Free extents: offset -> length, never adjacent (neighbours are merged).
    free: BTreeMap<u32, u32>,
    /// Extents released but maybe still read, oldest first: (released at, offset, length).
    grace: Vec<(Instant, u32, u32)>,
    /// Slots handed out and not released.
    used: u64,
}

impl RingPool {
    /// A pool of `capacity` free slots.
    pub fn new(capacity: u32) -> RingPool {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        RingPool {
            capacity,
            free,
            grace: Vec::new(),
            used: 0,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slots held by rings (not counting those in their grace period).
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Slots waiting out their grace period.
    pub fn in_grace(&self) -> u64 {
        self.grace.iter().map(|&(_, _, len)| len as u64).sum()
    }

    /// Slots that can be handed out now or after the grace period.
    fn free_total(&self) -> u64 {
        self.free.values().map(|&l| l as u64).sum::<u64>() + self.in_grace()
    }

    /// `len` consecutive slots: the offset of the first. Best fit, so small rings do not
    /// split the large extents big rings need. When only slots in their grace period would
    /// fit, waits for them (at most [`GRACE`]).
    pub fn alloc(&mut self, len: u32) -> Result<u32, PoolError> {
        self.alloc_at(len, Instant::now(), true)
    }

    /// [`alloc`](Self::alloc) at time `now`; `wait`: sleep out a grace period if that helps.
    fn alloc_at(&mut self, len: u32, now: Instant, wait: bool) -> Result<u32, PoolError> {
        self.reclaim(now);
        if let Some(off) = self.best_fit(len) {
            return Ok(off);
        }
        if wait && let Some(&(released, _, _)) = self.grace.first() {
            // Merging more extents may help; wait for all of them (rare: a nearly full pool).
            let last = self.grace.last().map(|g| g.0).unwrap_or(released);
            let until = last + GRACE;
            let now = Instant::now();
            if until > now {
                std::thread::sleep(until - now);
            }
            return self.alloc_at(len, until.max(Instant::now()), false);
        }
        Err(PoolError::Full {
            wanted: len,
            free: self.free_total(),
            capacity: self.capacity,
        })
    }

    fn best_fit(&mut self, len: u32) -> Option<u32> {
        if len == 0 {
            return None;
        }
        let (&off, &have) = self
            .free
            .iter()
            .filter(|&(_, &have)| have >= len)
            .min_by_key(|&(&off, &have)| (have, off))?;
        self.free.remove(&off);
        if have > len {
            self.free.insert(off + len, have - len);
        }
        self.used += len as u64;
        Some(off)
    }

    /// Give back a ring's slots; they become free after the grace period.
    pub fn release(&mut self, offset: u32, len: u32) {
        self.release_at(offset, len, Instant::now());
    }

    fn release_at(&mut self, offset: u32, len: u32, now: Instant) {
        if len == 0 {
            return;
        }
        self.used = self.used.saturating_sub(len as u64);
        self.grace.push((now, offset, len));
    }

    /// Mark `len` slots at `offset` as in use, in a fresh pool: rebuilding the allocator from
    /// rings already in the map. False if they are not all free.
    pub fn claim(&mut self, offset: u32, len: u32) -> bool {
        let Some((&start, &have)) = self.free.range(..=offset).next_back() else {
            return false;
        };
        let end = offset as u64 + len as u64;
        if len == 0 || end > start as u64 + have as u64 {
            return false;
        }
        self.free.remove(&start);
        if offset > start {
            self.free.insert(start, offset - start);
        }
        let tail = (start as u64 + have as u64 - end) as u32;
        if tail > 0 {
            self.free.insert(end as u32, tail);
        }
        self.used += len as u64;
        true
    }

    /// Move extents whose grace period is over to the free list.
    fn reclaim(&mut self, now: Instant) {
        let done = self
            .grace
            .iter()
            .take_while(|(t, _, _)| now.duration_since(*t) >= GRACE)
            .count();
        for (_, off, len) in self.grace.drain(..done).collect::<Vec<_>>() {
            self.insert_free(off, len);
        }
    }

    /// Add a free extent, merging it with free neighbours.
    fn insert_free(&mut self, mut off: u32, mut len: u32) {
        if let Some((&prev, &plen)) = self.free.range(..off).next_back()
            && prev + plen == off
        {
            self.free.remove(&prev);
            off = prev;
            len += plen;
        }
        if let Some(&nlen) = self.free.get(&(off + len)) {
            self.free.remove(&(off + len));
            len += nlen;
        }
        self.free.insert(off, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_and_exhaustion_name_the_knob() {
        let mut p = RingPool::new(1000);
        let a = p.alloc_at(300, Instant::now(), false).unwrap();
        let b = p.alloc_at(300, Instant::now(), false).unwrap();
        let c = p.alloc_at(400, Instant::now(), false).unwrap();
        assert_eq!((a, b, c), (0, 300, 600));
        assert_eq!(p.used(), 1000);
        let err = p.alloc_at(1, Instant::now(), false).unwrap_err();
        assert_eq!(
            err,
            PoolError::Full {
                wanted: 1,
                free: 0,
                capacity: 1000
            }
        );
        assert!(err.to_string().contains("maglev_slots"), "{err}");
    }

    #[test]
    fn released_slots_wait_out_the_grace_period() {
        let t0 = Instant::now();
        let mut p = RingPool::new(600);
        let a = p.alloc_at(300, t0, false).unwrap();
        let _b = p.alloc_at(300, t0, false).unwrap();
        p.release_at(a, 300, t0);
        assert_eq!((p.used(), p.in_grace()), (300, 300));
        // Not yet: a packet may still read the old ring.
        assert!(p.alloc_at(300, t0 + GRACE / 2, false).is_err());
        assert_eq!(p.alloc_at(300, t0 + GRACE, false), Ok(a));
    }

    #[test]
    fn neighbours_merge_so_a_large_ring_fits_again() {
        let t0 = Instant::now();
        let mut p = RingPool::new(900);
        let offs: Vec<u32> = (0..3)
            .map(|_| p.alloc_at(300, t0, false).unwrap())
            .collect();
        // Release the outer two first, then the middle: one extent of 900.
        p.release_at(offs[0], 300, t0);
        p.release_at(offs[2], 300, t0);
        p.release_at(offs[1], 300, t0);
        let later = t0 + GRACE;
        assert_eq!(p.alloc_at(900, later, false), Ok(0));
    }

    #[test]
    fn small_rings_do_not_split_the_large_extent() {
        let t0 = Instant::now();
        let mut p = RingPool::new(1000);
        let a = p.alloc_at(100, t0, false).unwrap();
        let _keep = p.alloc_at(10, t0, false).unwrap();
        p.release_at(a, 100, t0);
        // Free now: [0,100) and [110,1000). A 50-slot ring goes into the smaller hole.
        assert_eq!(p.alloc_at(50, t0 + GRACE, false), Ok(0));
        assert_eq!(p.alloc_at(890, t0 + GRACE, false), Ok(110));
    }

    #[test]
    fn claim_rebuilds_from_rings_in_the_map() {
        let mut p = RingPool::new(1000);
        assert!(p.claim(100, 50));
        assert!(p.claim(0, 100));
        assert!(!p.claim(120, 10), "overlaps a claimed ring");
        assert!(!p.claim(990, 20), "runs past the end");
        assert_eq!(p.used(), 150);
        assert_eq!(p.alloc_at(850, Instant::now(), false), Ok(150));
    }

    #[test]
    fn waiting_for_the_grace_period_when_only_it_helps() {
        let mut p = RingPool::new(100);
        let a = p.alloc(100).unwrap();
        p.release(a, 100);
        let t = Instant::now();
        assert_eq!(p.alloc(100), Ok(0));
        assert!(t.elapsed() >= GRACE / 2, "waited {:?}", t.elapsed());
    }
}
