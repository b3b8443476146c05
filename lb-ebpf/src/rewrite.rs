//! A steered packet's way to its backend: record the flow for the reverse NAT, DNAT with
//! incremental checksum updates, the steering mark or an ICMP "too big" when the backend is
//! behind another node, then out to the next hop (`nexthop`).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    Backend, Reason, SETTINGS_F_MARK_REMOTE, Settings, VipKey, csum,
    wire::{
        IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV6_DADDR_OFF, L4_DPORT_OFF, PROTO_UDP, TCP_CSUM_OFF,
        TCP_FLAG_FIN, TCP_FLAG_RST, UDP_CSUM_OFF,
    },
};

use crate::{
    flows, icmp,
    maps::LB_SETTINGS,
    mark, nexthop,
    packet::{Parsed, ptr_at, word},
    stats::VipCounters,
};

/// A VIP packet whose backend is chosen.
pub struct Steered {
    pub backend_id: u32,
    pub backend: Backend,
    /// The backend came from the connection table (`steer::Choice::pinned`).
    pub pinned: bool,
    pub vip: VipKey,
    pub vip_index: u32,
    pub learned_cid_len: u8,
}

/// Record the flow for the reverse NAT, then DNAT and forward; counts what happened and
/// returns the verdict.
#[inline(always)]
pub fn forward_steered(ctx: &XdpContext, p: &Parsed, s: &Steered, counters: &VipCounters) -> u32 {
    // Before the backend sees the packet, so its first reply finds the entry. A flow pinned
    // in the connection table was recorded with its first packet (the sweep deletes the
    // two together), so only its FIN or RST, which marks the entry closing, looks again:
    // one lookup saved on most TCP packets.
    if !s.pinned || p.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
        let target = flows::Target {
            vip: &s.vip.addr,
            vip_port: s.vip.port,
            flags: 0,
            learned_cid_len: s.learned_cid_len,
            backend: s.backend_id,
            vip_index: s.vip_index,
        };
        let (addr, port) = (&s.backend.addr, s.backend.port);
        if flows::record(&p.flow, addr, port, &target, p.is_syn(), p.tcp_flags).is_err() {
            counters.count_drop(Reason::DropFlowTableFull);
            return xdp_action::XDP_DROP;
        }
    }
    let (verdict, reason) = dnat_and_forward(ctx, p, s.backend_id, &s.backend, &s.vip, counters);
    counters.count_outcome(verdict, reason);
    verdict
}

/// Rewrite the destination to `backend`, then forward. Returns the verdict and the reason to
/// count. Only called for packets `parse` accepted, so every offset below was checked once;
/// the checks are repeated because the verifier needs them at each access.
///
/// A backend whose next hop is not one of the node's backend-facing interfaces is behind
/// another node: when marking is on, the packet leaves with the steering mark for `vip`
/// (`lb_common::mark`) so that node's reverse NAT rewrites the replies. A packet the mark
/// would make too big for the egress MTU is answered with an ICMP "too big" instead,
/// before anything is rewritten (the message quotes the client's packet).
#[inline(always)]
pub fn dnat_and_forward(
    ctx: &XdpContext,
    p: &Parsed,
    backend_id: u32,
    backend: &Backend,
    vip: &VipKey,
    counters: &VipCounters,
) -> (u32, Reason) {
    let ingress = ctx.ingress_ifindex() as u32;
    let settings = settings();
    let ttl = settings.fib_cache_ttl_ns;
    let hop = match nexthop::cached(backend_id, ingress, p.ip_tot_len, ttl) {
        Some(hop) => {
            counters.count(Reason::FibCached);
            Ok(hop)
        }
        None => nexthop::lookup(ctx, p, &backend.addr, backend.port, p.ip_tot_len, ingress)
            .inspect(|hop| nexthop::remember(backend_id, ingress, hop, ttl)),
    };
    let (remote, mtu) = match &hop {
        Ok(h) => (h.remote, h.mtu),
        Err(miss) => (miss.remote, 0),
    };
    let mark = remote && settings.flags & SETTINGS_F_MARK_REMOTE != 0;
    let mark_len = mark::len_for(p) as u16;
    if mark && mtu != 0 && p.ip_tot_len > mtu.saturating_sub(mark_len) {
        return icmp::too_big(ctx, p, (mtu - mark_len) as u32);
    }
    // From here on the packet goes to the backend (or to the kernel on its way there).
    counters.count_backend(backend_id);
    if dnat(ctx, p, backend).is_none() {
        return (xdp_action::XDP_PASS, Reason::PassMalformed);
    }
    if mark {
        if mark::insert(ctx, p, &vip.addr, vip.port).is_none() {
            return (xdp_action::XDP_DROP, Reason::DropAdjustFailed);
        }
        counters.count(Reason::MarkedForPeer);
    }
    match hop {
        Ok(hop) => nexthop::send(ctx, p, ingress, &hop, settings.flags),
        Err(miss) => (xdp_action::XDP_PASS, miss.reason),
    }
}

/// `LB_SETTINGS[0]`, or everything off.
#[inline(always)]
pub fn settings() -> Settings {
    LB_SETTINGS.get(0).copied().unwrap_or(Settings {
        fib_cache_ttl_ns: 0,
        flags: 0,
        _pad: 0,
    })
}

#[inline(always)]
fn dnat(ctx: &XdpContext, p: &Parsed, b: &Backend) -> Option<()> {
    let csum_off = if p.flow.proto == PROTO_UDP {
        p.l4_off + UDP_CSUM_OFF
    } else {
        p.l4_off + TCP_CSUM_OFF
    };
    let port_ptr = ptr_at::<u16, _>(ctx, p.l4_off + L4_DPORT_OFF)?;
    let l4_csum_ptr = ptr_at::<u16, _>(ctx, csum_off)?;
    // SAFETY (all raw accesses below): pointers come from ptr_at, bounds-checked; unaligned
    // word access to the packet is fine on BPF (see packet::load).
    let mut l4 = u16::from_be(unsafe { l4_csum_ptr.read() });
    // An IPv4 UDP checksum of zero means "none" and stays zero.
    let update_l4 = !(p.flow.proto == PROTO_UDP && l4 == 0);
    if p.is_v6 {
        let daddr = ptr_at::<[u32; 4], _>(ctx, p.l3_off + IPV6_DADDR_OFF)?;
        let old = [
            word(&p.flow.dst, 0),
            word(&p.flow.dst, 1),
            word(&p.flow.dst, 2),
            word(&p.flow.dst, 3),
        ];
        let new = [
            word(&b.addr, 0),
            word(&b.addr, 1),
            word(&b.addr, 2),
            word(&b.addr, 3),
        ];
        unsafe { daddr.write(new) };
        if update_l4 {
            l4 = csum::update_u32s(l4, &old.map(u32::from_be), &new.map(u32::from_be));
        }
    } else {
        let daddr = ptr_at::<u32, _>(ctx, p.l3_off + IPV4_DADDR_OFF)?;
        let ip_csum = ptr_at::<u16, _>(ctx, p.l3_off + IPV4_CSUM_OFF)?;
        let (old, new) = (word(&p.flow.dst, 0), word(&b.addr, 0));
        let (old_n, new_n) = (u32::from_be(old), u32::from_be(new));
        unsafe {
            daddr.write(new);
            let c = csum::update_u32(u16::from_be(ip_csum.read()), old_n, new_n);
            ip_csum.write(c.to_be());
        }
        if update_l4 {
            l4 = csum::update_u32(l4, old_n, new_n);
        }
    }
    if update_l4 {
        l4 = csum::update_u16(l4, p.flow.dport, b.port);
        if p.flow.proto == PROTO_UDP {
            l4 = csum::udp_fixup(l4);
        }
        unsafe { l4_csum_ptr.write(l4.to_be()) };
    }
    unsafe { port_ptr.write(b.port.to_be()) };
    Some(())
}
