//! lb's BPF programs.
//!
//! `lb_xdp` is the load balancer: parse, look up the VIP, choose a backend (QUIC server ID,
//! connection table, or Maglev), DNAT, then forward through the FIB. It never returns
//! `XDP_ABORTED`, and every packet bumps at least one counter naming why it went where it
//! went (`lb_common::Reason`). `lb_xdp_peer` (tail-called by `lb_xdp`) delivers packets
//! another node marked with the steering mark; `lb_tc_rnat` is the reverse NAT on the
//! backend-facing interfaces. The `lb_bench_*` programs exist only for `lb-lab bench`.
#![no_std]
#![no_main]

mod fib;
mod flows;
mod icmp;
mod maps;
mod mark;
mod nexthop;
mod packet;
mod peer;
mod rewrite;
mod rnat;
mod stats;
mod steer;

use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    FlowKey, Reason, SOURCE_RANGE_LOOKUP_LEN, VIP_F_SOURCE_RANGES, VipKey, source_range_key,
    wire::IPV4_HLEN,
};

use crate::{
    packet::{Parsed, parse},
    stats::{VipCounters, count},
};

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let pkt_len = (ctx.data_end() - ctx.data()) as u64;
    let mut p = Parsed::new();
    if let Err(reason) = parse(&ctx, &mut p) {
        // A steering mark on an IPv6 packet is an extension header.
        if reason == Reason::PassIpv6Ext {
            to_peer_program(&ctx);
        }
        count(reason, pkt_len);
        return xdp_action::XDP_PASS;
    }
    let key = VipKey {
        addr: p.flow.dst,
        port: p.flow.dport,
        proto: p.flow.proto,
        family: p.flow.family,
    };
    // Copy the value out: userspace may replace the element while we run.
    let vip = match unsafe { maps::LB_VIPS.get(&key) } {
        Some(v) => *v,
        // An IPv4 header with options may carry a steering mark.
        None => {
            if !p.is_v6 && p.l4_off - p.l3_off > IPV4_HLEN {
                to_peer_program(&ctx);
            }
            count(Reason::PassNotVip, pkt_len);
            return xdp_action::XDP_PASS;
        }
    };
    let Some(counters) = VipCounters::new(vip.index, pkt_len) else {
        // A VIP entry without a counter slot: not one userspace wrote.
        count(Reason::PassNotVip, pkt_len);
        return xdp_action::XDP_PASS;
    };
    // One branch for VIPs without loadBalancerSourceRanges.
    if vip.flags & VIP_F_SOURCE_RANGES != 0 && !source_allowed(vip.index, &p.flow) {
        counters.count_drop(Reason::DropSourceRange);
        return xdp_action::XDP_DROP;
    }
    let choice = match steer::choose_backend(&ctx, &p, &vip, &counters) {
        Ok(c) => c,
        Err(reason) => {
            counters.count_drop(reason);
            return xdp_action::XDP_DROP;
        }
    };
    let steered = rewrite::Steered {
        backend_id: choice.id,
        backend: choice.backend,
        pinned: choice.pinned,
        vip: key,
        vip_index: vip.index,
        learned_cid_len: vip.learned_cid_len() as u8,
    };
    rewrite::forward_steered(&ctx, &p, &steered, &counters)
}

/// Hand a packet that may carry another node's steering mark to `lb_xdp_peer`. Returns
/// only if that program is not installed (the caller then counts and passes the packet as
/// it would have).
#[inline(always)]
fn to_peer_program(ctx: &XdpContext) {
    // SAFETY: a tail call with our own context; on success it does not return.
    unsafe {
        let _ = maps::LB_PEER_PROG.tail_call(ctx, 0);
    }
}

/// The backend's node: packets another node steered here with the steering mark.
#[xdp]
pub fn lb_xdp_peer(ctx: XdpContext) -> u32 {
    peer::deliver(&ctx)
}

/// Is the client's address in one of the VIP's source ranges?
#[inline(always)]
fn source_allowed(vip_index: u32, flow: &FlowKey) -> bool {
    let key = Key::new(
        SOURCE_RANGE_LOOKUP_LEN,
        source_range_key(vip_index, &flow.src, flow.family),
    );
    maps::LB_SRC_RANGES.get(&key).is_some()
}

/// Benchmark harness: every iteration of BPF_PROG_TEST_RUN reuses one buffer, so restore the
/// original packet from `BENCH_TEMPLATE[0]` first, then tail-call the program under test
/// (`BENCH_TARGET[0]`: `lb_xdp`, or `lb_bench_empty` for the floor).
#[xdp]
pub fn lb_bench_harness(ctx: XdpContext) -> u32 {
    let Some(t) = maps::BENCH_TEMPLATE.get_ptr(0) else {
        return xdp_action::XDP_PASS;
    };
    let len = unsafe { (*t).len } as usize;
    let head_delta = unsafe { (*t).head_delta };
    let data = unsafe { (*t).data.as_ptr() };
    // The previous iteration moved the head or the tail (a steering mark, an ICMP reply):
    // put both back where they were.
    if len != ctx.data_end() - ctx.data() {
        use aya_ebpf::helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail};
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -head_delta) } != 0 {
            return xdp_action::XDP_PASS;
        }
        // black_box: see icmp::make_room (no arithmetic on the packet end pointer).
        let tail = len as i32 - core::hint::black_box(ctx.data_end() - ctx.data()) as i32;
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, tail) } != 0 {
            return xdp_action::XDP_PASS;
        }
    }
    if len == 0 || len > lb_common::BENCH_TEMPLATE_MAX || len != ctx.data_end() - ctx.data() {
        return xdp_action::XDP_PASS;
    }
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_xdp_store_bytes(
            ctx.ctx.cast(),
            0,
            data as *mut _,
            len as u32,
        )
    };
    if rc != 0 {
        return xdp_action::XDP_PASS;
    }
    unsafe {
        let _ = maps::BENCH_TARGET.tail_call(&ctx, 0);
    }
    xdp_action::XDP_PASS
}

/// The floor: as little as an XDP program can do.
#[xdp]
pub fn lb_bench_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The TC benchmark harness: as `lb_bench_harness`, for the reverse NAT. BPF_PROG_TEST_RUN
/// with `repeat` reuses one skb, so restore the template (`BENCH_TEMPLATE[0]`, the same
/// length as the skb) with `bpf_skb_store_bytes`, then tail-call `BENCH_TC_TARGET[0]`.
#[aya_ebpf::macros::classifier]
pub fn lb_bench_tc_harness(ctx: aya_ebpf::programs::TcContext) -> i32 {
    const TC_ACT_OK: i32 = aya_ebpf::bindings::TC_ACT_OK;
    let Some(t) = maps::BENCH_TEMPLATE.get_ptr(0) else {
        return TC_ACT_OK;
    };
    let len = unsafe { (*t).len } as usize;
    if len == 0 || len > lb_common::BENCH_TEMPLATE_MAX || len != ctx.len() as usize {
        return TC_ACT_OK;
    }
    let data = unsafe { (*t).data.as_ptr() };
    // SAFETY: helper copies `len` (bounded above) octets from the map value into our skb.
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_skb_store_bytes(
            ctx.skb.skb.cast(),
            0,
            data as *const _,
            len as u32,
            0,
        )
    };
    if rc != 0 {
        return TC_ACT_OK;
    }
    unsafe {
        let _ = maps::BENCH_TC_TARGET.tail_call(&ctx, 0);
    }
    TC_ACT_OK
}

/// The floor of the TC cases.
#[aya_ebpf::macros::classifier]
pub fn lb_bench_tc_empty(_ctx: aya_ebpf::programs::TcContext) -> i32 {
    aya_ebpf::bindings::TC_ACT_OK
}

/// Reverse NAT on the interfaces that face backends (TC ingress): the reply of a flow lb
/// steered leaves from the VIP its client used; nothing else is touched (`rnat`).
#[aya_ebpf::macros::classifier]
pub fn lb_tc_rnat(ctx: aya_ebpf::programs::TcContext) -> i32 {
    rnat::rnat(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
