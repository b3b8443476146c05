//! DNAT to the chosen backend with incremental checksum updates, then forward through the
//! kernel FIB.

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect, bpf_xdp_adjust_head,
    },
    programs::XdpContext,
};
use lb_common::{
    Backend, FIB_CACHE_CLOCK_EVERY, FibCacheEntry, PROTO_UDP, Reason, SETTINGS_F_MARK_REMOTE,
    Settings, VipKey, csum,
};

use crate::{
    flows, icmp,
    maps::{LB_BACKEND_IFS, LB_FIB_CACHE, LB_SETTINGS, scratch},
    mark,
    packet::{Parsed, TCP_FLAG_FIN, TCP_FLAG_RST, ptr_at, word},
    stats::VipCounters,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const VLAN_HLEN: usize = 4;

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
            counters.count(Reason::DropFlowTableFull);
            return xdp_action::XDP_DROP;
        }
    }
    let (verdict, reason) = dnat_and_forward(ctx, p, s.backend_id, &s.backend, &s.vip, counters);
    counters.count(reason);
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
    let hop = match cached_hop(backend_id, ingress, p.ip_tot_len, settings.fib_cache_ttl_ns) {
        Some(hop) => {
            counters.count(Reason::FibCached);
            Ok(hop)
        }
        None => fib(ctx, p, &backend.addr, backend.port, p.ip_tot_len, ingress).inspect(|hop| {
            remember_hop(backend_id, ingress, hop, settings.fib_cache_ttl_ns);
        }),
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
        Ok(hop) => send(ctx, p, ingress, &hop),
        Err(miss) => (xdp_action::XDP_PASS, miss.reason),
    }
}

#[inline(always)]
fn settings() -> Settings {
    LB_SETTINGS.get(0).copied().unwrap_or(Settings {
        fib_cache_ttl_ns: 0,
        flags: 0,
        _pad: 0,
    })
}

/// Is `ifindex` one of the interfaces the reverse NAT is attached to (a local backend)?
#[inline(always)]
pub fn is_backend_if(ifindex: u32) -> bool {
    // SAFETY: reading a value we do not keep.
    unsafe { LB_BACKEND_IFS.get(&ifindex) }.is_some()
}

/// Where to send a packet for a backend: what a successful FIB lookup says.
pub struct NextHop {
    pub egress: u32,
    dmac: [u8; 6],
    smac: [u8; 6],
    pub mtu: u16,
    /// The egress is not a backend-facing interface: the backend is behind another node.
    pub remote: bool,
}

/// A FIB lookup that found no usable next hop: the reason to count, and whether the egress
/// it did find (with no neighbour entry yet) leads away from this node's backends.
pub struct FibMiss {
    pub reason: Reason,
    pub remote: bool,
}

#[inline(always)]
fn cached_hop(backend_id: u32, ingress: u32, ip_tot_len: u16, ttl: u64) -> Option<NextHop> {
    if ttl == 0 {
        return None;
    }
    // SAFETY: this CPU's slot of a live map.
    let e = unsafe { &mut *LB_FIB_CACHE.get_ptr_mut(backend_id)? };
    // Too big for the egress MTU: let bpf_fib_lookup say so, so the kernel can answer
    // "fragmentation needed" / "packet too big".
    if e.ingress_ifindex != ingress || ip_tot_len > e.mtu {
        return None;
    }
    if e.unchecked < FIB_CACHE_CLOCK_EVERY {
        e.unchecked += 1;
    } else {
        // SAFETY: helper without arguments.
        if e.expires_ns <= unsafe { bpf_ktime_get_coarse_ns() } {
            return None;
        }
        e.unchecked = 0;
    }
    Some(NextHop {
        egress: e.egress_ifindex,
        dmac: e.dmac,
        smac: e.smac,
        mtu: e.mtu,
        remote: e.remote != 0,
    })
}

#[inline(always)]
fn remember_hop(backend_id: u32, ingress: u32, hop: &NextHop, ttl: u64) {
    // mtu 0: a kernel that does not report the MTU on success; never cache then.
    if ttl == 0 || hop.mtu == 0 {
        return;
    }
    if let Some(e) = LB_FIB_CACHE.get_ptr_mut(backend_id) {
        // SAFETY: this CPU's slot; helper without arguments.
        unsafe {
            *e = FibCacheEntry {
                expires_ns: bpf_ktime_get_coarse_ns() + ttl,
                ingress_ifindex: ingress,
                egress_ifindex: hop.egress,
                dmac: hop.dmac,
                smac: hop.smac,
                mtu: hop.mtu,
                unchecked: 0,
                remote: hop.remote as u8,
            };
        }
    }
}

#[inline(always)]
fn dnat(ctx: &XdpContext, p: &Parsed, b: &Backend) -> Option<()> {
    let csum_off = if p.flow.proto == PROTO_UDP {
        p.l4_off + 6
    } else {
        p.l4_off + 16
    };
    let port_ptr = ptr_at::<u16, _>(ctx, p.l4_off + 2)?;
    let l4_csum_ptr = ptr_at::<u16, _>(ctx, csum_off)?;
    // SAFETY (all raw accesses below): pointers come from ptr_at, bounds-checked; unaligned
    // word access to the packet is fine on BPF (see packet::load).
    let mut l4 = u16::from_be(unsafe { l4_csum_ptr.read() });
    // An IPv4 UDP checksum of zero means "none" and stays zero.
    let update_l4 = !(p.flow.proto == PROTO_UDP && l4 == 0);
    if p.is_v6 {
        let daddr = ptr_at::<[u32; 4], _>(ctx, p.l3_off + 24)?;
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
        let daddr = ptr_at::<u32, _>(ctx, p.l3_off + 16)?;
        let ip_csum = ptr_at::<u16, _>(ctx, p.l3_off + 10)?;
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

/// `bpf_fib_lookup` from the client (`p`'s source) to `dst`:`dport`, for a packet of
/// `tot_len` octets arriving on `ingress`.
#[inline(always)]
pub fn fib(
    ctx: &XdpContext,
    p: &Parsed,
    dst: &[u8; 16],
    dport: u16,
    tot_len: u16,
    ingress: u32,
) -> Result<NextHop, FibMiss> {
    let Some(sc) = scratch() else {
        return Err(FibMiss {
            reason: Reason::PassFibFailed,
            remote: false,
        });
    };
    let fib = &mut sc.fib;
    // SAFETY: plain C struct; all-zero is its documented initial state.
    *fib = unsafe { zeroed() };
    fib.l4_protocol = p.flow.proto;
    fib.sport = p.flow.sport.to_be();
    fib.dport = dport.to_be();
    fib.__bindgen_anon_1.tot_len = tot_len;
    fib.ifindex = ingress;
    if p.is_v6 {
        fib.family = AF_INET6;
        fib.__bindgen_anon_2.flowinfo = p.tos_or_flowinfo;
        fib.__bindgen_anon_3.ipv6_src = words(&p.flow.src);
        fib.__bindgen_anon_4.ipv6_dst = words(dst);
    } else {
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = p.tos_or_flowinfo as u8;
        fib.__bindgen_anon_3.ipv4_src = word(&p.flow.src, 0);
        fib.__bindgen_anon_4.ipv4_dst = word(dst, 0);
    }
    let rc = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            fib as *mut bpf_fib_lookup,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // The kernel filled in the egress before it looked for the neighbour.
        return Err(FibMiss {
            reason: Reason::PassNoNeighbour,
            remote: !is_backend_if(fib.ifindex),
        });
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(FibMiss {
            reason: Reason::PassFibFailed,
            remote: false,
        });
    }
    // SAFETY: on success the kernel leaves the egress MTU in this union member.
    let mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
    Ok(NextHop {
        egress: fib.ifindex,
        dmac: fib.dmac,
        smac: fib.smac,
        mtu,
        remote: !is_backend_if(fib.ifindex),
    })
}

/// Rewrite the MACs and hand the frame to its egress interface.
#[inline(always)]
pub fn send(ctx: &XdpContext, p: &Parsed, ingress: u32, hop: &NextHop) -> (u32, Reason) {
    let Some(eth) = ptr_at::<[u8; 12], _>(ctx, 0) else {
        return (xdp_action::XDP_PASS, Reason::PassMalformed);
    };
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&hop.dmac);
    macs[6..].copy_from_slice(&hop.smac);
    if hop.egress == ingress {
        // Same interface, same VLAN: keep any tag.
        unsafe { *eth = macs };
        return (xdp_action::XDP_TX, Reason::Tx);
    }
    if p.vlan {
        // The tag belongs to the ingress segment: move the MACs over it and drop 4 octets.
        let Some(inner) = ptr_at::<[u8; 12], _>(ctx, VLAN_HLEN) else {
            return (xdp_action::XDP_PASS, Reason::PassMalformed);
        };
        unsafe { *inner = macs };
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, VLAN_HLEN as i32) } != 0 {
            return (xdp_action::XDP_DROP, Reason::DropAdjustFailed);
        }
    } else {
        unsafe { *eth = macs };
    }
    let verdict = unsafe { bpf_redirect(hop.egress, 0) } as u32;
    if verdict == xdp_action::XDP_REDIRECT {
        (verdict, Reason::Redirect)
    } else {
        (xdp_action::XDP_PASS, Reason::PassFibFailed)
    }
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [word(a, 0), word(a, 1), word(a, 2), word(a, 3)]
}
