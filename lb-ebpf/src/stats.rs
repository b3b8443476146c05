//! Per-CPU counters. `lb_xdp` and `lb_xdp_peer`: per reason node-wide (one `CounterBlock`),
//! per VIP (a `VipCounter`: packets, octets, routed by CID, dropped) and per backend.
//! `lb_tc_rnat`: per `RnatReason`.

use lb_common::{Counter, CounterBlock, Reason, RnatReason, VipCounter};

use crate::maps::{LB_BE_STATS, LB_RNAT_STATS, LB_STATS, LB_VIP_STATS};

/// One more packet of `bytes` octets in counter `c`.
#[inline(always)]
fn bump(c: *mut Counter, bytes: u64) {
    // SAFETY: a per-CPU slot of a live map; nothing else writes it on this CPU while we run.
    unsafe {
        (*c).packets += 1;
        (*c).bytes += bytes;
    }
}

#[inline(always)]
fn slot(block: *mut CounterBlock, reason: Reason) -> *mut Counter {
    // SAFETY: every Reason is below REASON_STRIDE (checked in lb-common's tests). A reason
    // must never come back from a BPF subprogram through the stack: the verifier would lose
    // its value (and LLVM would drop any mask, knowing the enum's range).
    unsafe { (*block).by_reason.as_mut_ptr().add(reason as usize) }
}

/// Count a packet that never matched a VIP.
#[inline(always)]
pub fn count(reason: Reason, bytes: u64) {
    if let Some(g) = LB_STATS.get_ptr_mut(0) {
        bump(slot(g, reason), bytes);
    }
}

/// Count a packet of the reverse NAT.
#[inline(always)]
pub fn count_rnat(reason: RnatReason, bytes: u64) {
    if let Some(c) = LB_RNAT_STATS.get_ptr_mut(reason as u32) {
        bump(c, bytes);
    }
}

/// The counters a VIP packet bumps, looked up once per packet.
///
/// Both pointers are checked once, here, and never again: each later "is it there?" test
/// would split the verifier's states in two for the rest of the program (the two slots are
/// always there: the node-wide block is slot 0, and userspace never gives a VIP an index
/// past `LB_VIP_STATS`).
pub struct VipCounters {
    global: *mut CounterBlock,
    vip: *mut VipCounter,
    bytes: u64,
}

impl VipCounters {
    /// Look the counters up and count the packet for the VIP (once, whatever happens to
    /// it). `None` only for a VIP entry whose index has no counter slot (a bad map entry).
    #[inline(always)]
    pub fn new(vip_index: u32, bytes: u64) -> Option<Self> {
        let vip = LB_VIP_STATS.get_ptr_mut(vip_index)?;
        let global = LB_STATS.get_ptr_mut(0)?;
        // SAFETY: this CPU's slot of a live map.
        unsafe {
            (*vip).packets += 1;
            (*vip).bytes += bytes;
        }
        Some(VipCounters { global, vip, bytes })
    }

    /// Count node-wide a reason that adds nothing more to the VIP's counter (steering by
    /// table or hash, fallbacks, forwarding). Which method counts a reason is checked by the
    /// fixture suite against `Reason::vip_class`. One method per class, rather than a match
    /// on a reason known only at run time: such a match multiplied the verifier's work by
    /// two (384k instructions walked became 767k).
    #[inline(always)]
    pub fn count(&self, reason: Reason) {
        bump(slot(self.global, reason), self.bytes);
    }

    /// Count a packet routed by connection ID (`RoutedCid`, `RoutedLearnedCid`).
    #[inline(always)]
    pub fn count_routed_cid(&self, reason: Reason) {
        self.count(reason);
        // SAFETY: this CPU's slot of a live map.
        unsafe { (*self.vip).routed_cid += 1 };
    }

    /// Count a dropped packet (any `Drop*` reason).
    #[inline(always)]
    pub fn count_drop(&self, reason: Reason) {
        self.count(reason);
        // SAFETY: as above.
        unsafe { (*self.vip).dropped += 1 };
    }

    /// Count the outcome of forwarding: a drop when the verdict is `XDP_DROP` (every drop
    /// reason comes with it, and no other reason does).
    #[inline(always)]
    pub fn count_outcome(&self, verdict: u32, reason: Reason) {
        if verdict == aya_ebpf::bindings::xdp_action::XDP_DROP {
            self.count_drop(reason);
        } else {
            self.count(reason);
        }
    }

    #[inline(always)]
    pub fn count_backend(&self, backend_id: u32) {
        if let Some(c) = LB_BE_STATS.get_ptr_mut(backend_id) {
            bump(c, self.bytes);
        }
    }
}
