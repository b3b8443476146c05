//! Per-CPU counters. `lb_xdp` and `lb_xdp_peer`: per reason globally and per VIP (one
//! `CounterBlock` each), and per backend. `lb_tc_rnat`: per `RnatReason`.

use lb_common::{Counter, CounterBlock, Reason, RnatReason};

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
pub struct VipCounters {
    global: Option<*mut CounterBlock>,
    vip: Option<*mut CounterBlock>,
    bytes: u64,
}

impl VipCounters {
    #[inline(always)]
    pub fn new(vip_index: u32, bytes: u64) -> Self {
        VipCounters {
            global: LB_STATS.get_ptr_mut(0),
            vip: LB_VIP_STATS.get_ptr_mut(vip_index),
            bytes,
        }
    }

    /// Count globally and for the VIP.
    #[inline(always)]
    pub fn count(&self, reason: Reason) {
        if let Some(g) = self.global {
            bump(slot(g, reason), self.bytes);
        }
        if let Some(v) = self.vip {
            bump(slot(v, reason), self.bytes);
        }
    }

    #[inline(always)]
    pub fn count_backend(&self, backend_id: u32) {
        if let Some(c) = LB_BE_STATS.get_ptr_mut(backend_id) {
            bump(c, self.bytes);
        }
    }
}
