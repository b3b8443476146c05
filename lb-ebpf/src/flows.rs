//! The reply table (`LB_REPLIES`): which replies the reverse NAT may rewrite, and to what.
//!
//! The XDP program records a flow before its packet reaches the backend, so the backend's
//! first reply already finds its entry; the reverse NAT rewrites only replies that have
//! one. Everything else a backend sends (answers to kubelet's probes, to other pods, to
//! ClusterIP and NodePort clients, its own outbound connections) passes untouched.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use lb_common::{
    FlowKey, REPLY_F_CLOSING, REPLY_F_REPLIED, REPLY_REFRESH_NS, ReplyNat,
    wire::{TCP_FLAG_FIN, TCP_FLAG_RST},
};

use crate::{
    maps::{LB_REPLIES, scratch},
    packet::word,
};

/// The table is full: the flow cannot be recorded.
pub struct Full;

/// Where a steered flow's replies must come from: a [`ReplyNat`] without its timestamp.
pub struct Target<'a> {
    pub vip: &'a [u8; 16],
    pub vip_port: u16,
    pub flags: u8,
    pub learned_cid_len: u8,
    pub backend: u32,
    pub vip_index: u32,
}

/// Make sure the replies of `flow` (a client's packet as it arrived), once steered to
/// `backend`:`backend_port`, leave as `want` says. A packet of a flow already recorded for
/// the same VIP and backend costs one lookup; a new flow, a flow whose entry was swept, or
/// one that changed VIP or backend id is (re)written with a fresh timestamp. `fresh` (a TCP
/// SYN: a new connection that may reuse an old 5-tuple) always rewrites, so no state of an
/// earlier connection carries over. A FIN or RST from the client marks the flow closing.
/// The key and value are built in the per-CPU scratch space, not on the stack.
#[inline(always)]
pub fn record(
    flow: &FlowKey,
    backend_addr: &[u8; 16],
    backend_port: u16,
    want: &Target,
    fresh: bool,
    tcp_flags: u8,
) -> Result<(), Full> {
    let sc = scratch().ok_or(Full)?;
    let key = &mut sc.reply;
    key.src = *backend_addr;
    key.dst = flow.src;
    key.sport = backend_port;
    key.dport = flow.sport;
    key.proto = flow.proto;
    key.family = flow.family;
    key._pad = [0; 2];
    let closing = tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0;
    if !fresh && let Some(e) = LB_REPLIES.get_ptr_mut(key) {
        // SAFETY: a live map value; concurrent writers only set flags or the timestamp.
        let e = unsafe { &mut *e };
        if same_target(e, want) {
            if closing {
                e.flags |= REPLY_F_CLOSING;
            }
            return Ok(());
        }
    }
    let v = &mut sc.nat;
    v.vip = *want.vip;
    v.vip_port = want.vip_port;
    v.flags = want.flags | if closing { REPLY_F_CLOSING } else { 0 };
    v.learned_cid_len = want.learned_cid_len;
    v.backend = want.backend;
    v.vip_index = want.vip_index;
    v._pad = 0;
    // SAFETY: helper without arguments.
    v.last_ns = unsafe { bpf_ktime_get_coarse_ns() };
    LB_REPLIES.insert(&sc.reply, &sc.nat, 0).map_err(|_| Full)
}

#[inline(always)]
fn same_target(e: &ReplyNat, want: &Target) -> bool {
    e.vip_port == want.vip_port
        && e.backend == want.backend
        && word(&e.vip, 0) == word(&want.vip, 0)
        && word(&e.vip, 1) == word(&want.vip, 1)
        && word(&e.vip, 2) == word(&want.vip, 2)
        && word(&e.vip, 3) == word(&want.vip, 3)
}

/// The entry for a reply, copied out (userspace's sweep may delete it while we run), after
/// noting the reply in it: replied, closing on FIN or RST, and a timestamp at most
/// [`REPLY_REFRESH_NS`] old.
#[inline(always)]
pub fn reply_seen(key: &FlowKey, tcp_flags: u8) -> Option<ReplyNat> {
    let p = LB_REPLIES.get_ptr_mut(key)?;
    // SAFETY: a live map value.
    let e = unsafe { &mut *p };
    let nat = *e;
    let mut flags = nat.flags | REPLY_F_REPLIED;
    if tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
        flags |= REPLY_F_CLOSING;
    }
    if flags != nat.flags {
        e.flags = flags;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(nat.last_ns) > REPLY_REFRESH_NS {
        e.last_ns = now;
    }
    Some(nat)
}
