//! Per-CPU counters: global per reason, per VIP per reason, per backend.

use lb_common::{Counter, REASON_STRIDE, Reason};

use crate::maps::{LB_BE_STATS, LB_STATS, LB_VIP_STATS};

#[inline(always)]
fn bump(c: Option<*mut Counter>, bytes: u64) {
    if let Some(c) = c {
        // SAFETY: per-CPU slot of a live map; no other writer on this CPU while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count(reason: Reason, bytes: u64) {
    bump(LB_STATS.get_ptr_mut(reason as u32), bytes);
}

/// Count globally and for the VIP.
#[inline(always)]
pub fn count_vip(reason: Reason, vip_index: u32, bytes: u64) {
    count(reason, bytes);
    bump(
        LB_VIP_STATS.get_ptr_mut(vip_index * REASON_STRIDE + reason as u32),
        bytes,
    );
}

#[inline(always)]
pub fn count_backend(backend_id: u32, bytes: u64) {
    bump(LB_BE_STATS.get_ptr_mut(backend_id), bytes);
}
