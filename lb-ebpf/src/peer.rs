//! The backend's node: packets another node steered here with the steering mark
//! (`lb_common::mark`).
//!
//! The mark names the VIP the client sent to. When the backend (the packet's destination)
//! is behind one of this node's backend-facing interfaces, the flow is recorded in the reply
//! table (so the reverse NAT here answers from the VIP, straight to the client), the mark is
//! removed and the packet goes to the backend as the steering node rewrote it. A marked
//! packet for a backend elsewhere is passed on untouched, mark and all.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{FAMILY_V4, REPLY_F_PEER, REPLY_NO_BACKEND, Reason, VipKey, mark};

use crate::{
    flows,
    maps::LB_VIPS,
    mark as marking,
    nexthop::{lookup, send},
    packet::{Parsed, parse_marked, read},
    rewrite,
    stats::{VipCounters, count},
};

// A BPF subprogram: a rare path with its own stack frame, so its buffers do not add to
// the fast path's.
///
/// `lb_xdp` tail-calls this (`lb_xdp_peer`, through `LB_PEER_PROG`) for the packets that
/// may carry a mark: an IPv6 packet with an extension header, an IPv4 packet with options
/// for no VIP. A separate program rather than a function: it has a stack of its own (the
/// load balancer's and this one's together would not fit the 512 octets a chain of BPF
/// calls may use) and the verifier checks it once, apart from the steering paths. One
/// without a mark is counted as the load balancer would have (`pass_ipv6_ext`,
/// `pass_not_vip`) and passed.
#[inline(always)]
pub fn deliver(ctx: &XdpContext) -> u32 {
    let pkt_len = (ctx.data_end() - ctx.data()) as u64;
    let mut parsed = Parsed::new();
    let p = &mut parsed;
    let found = match parse_marked(ctx, p) {
        Ok(()) if p.mark_off != 0 => read_mark(ctx, p),
        Ok(()) => None,
        Err(reason) => {
            count(reason, pkt_len);
            return xdp_action::XDP_PASS;
        }
    };
    let Some((vip, port)) = found else {
        count(
            if p.is_v6 {
                Reason::PassIpv6Ext
            } else {
                Reason::PassNotVip
            },
            pkt_len,
        );
        return xdp_action::XDP_PASS;
    };
    let ingress = ctx.ingress_ifindex() as u32;
    let unmarked_len = p.ip_tot_len - marking::len_for(p) as u16;
    let hop = lookup(ctx, p, &p.flow.dst, p.flow.dport, unmarked_len, ingress);
    let remote = match &hop {
        Ok(h) => h.remote,
        Err(miss) => miss.remote || miss.reason != Reason::PassNoNeighbour,
    };
    if remote {
        count(Reason::PassMarkTransit, pkt_len);
        return xdp_action::XDP_PASS;
    }
    let key = VipKey {
        addr: vip,
        port,
        proto: p.flow.proto,
        family: p.flow.family,
    };
    // Copy the value out: userspace may replace the element while we run.
    let Some(meta) = (unsafe { LB_VIPS.get(&key) }).copied() else {
        count(Reason::DropBadMark, pkt_len);
        return xdp_action::XDP_DROP;
    };
    let Some(counters) = VipCounters::new(meta.index, pkt_len) else {
        // A VIP entry without a counter slot: not one userspace wrote.
        count(Reason::DropBadMark, pkt_len);
        return xdp_action::XDP_DROP;
    };
    let target = flows::Target {
        vip: &vip,
        vip_port: port,
        flags: REPLY_F_PEER,
        learned_cid_len: 0,
        backend: REPLY_NO_BACKEND,
        vip_index: meta.index,
    };
    // The packet is addressed to the backend already.
    let (addr, bport) = (&p.flow.dst, p.flow.dport);
    if flows::record(&p.flow, addr, bport, &target, p.is_syn(), p.tcp_flags).is_err() {
        counters.count_drop(Reason::DropFlowTableFull);
        return xdp_action::XDP_DROP;
    }
    counters.count(Reason::FromPeer);
    if marking::strip(ctx, p).is_none() {
        counters.count_drop(Reason::DropAdjustFailed);
        return xdp_action::XDP_DROP;
    }
    let (verdict, reason) = match hop {
        Ok(hop) => send(ctx, p, ingress, &hop, rewrite::settings().flags),
        Err(miss) => (xdp_action::XDP_PASS, miss.reason),
    };
    counters.count_outcome(verdict, reason);
    verdict
}

/// The VIP and port in the packet's mark (address in key form).
#[inline(always)]
fn read_mark(ctx: &XdpContext, p: &Parsed) -> Option<([u8; 16], u16)> {
    let mut vip = [0u8; 16];
    if p.flow.family == FAMILY_V4 {
        let opt = read::<[u8; mark::IPV4_LEN], _>(ctx, p.mark_off)?;
        let (a, port) = mark::parse_ipv4_option(&opt)?;
        vip[..4].copy_from_slice(&a);
        Some((vip, port))
    } else {
        let h = read::<[u8; mark::IPV6_LEN], _>(ctx, p.mark_off)?;
        let (_, a, port) = mark::parse_ipv6_dstopts(&h)?;
        vip = a;
        Some((vip, port))
    }
}
