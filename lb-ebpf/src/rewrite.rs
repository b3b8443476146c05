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
use lb_common::{Backend, FIB_CACHE_CLOCK_EVERY, FibCacheEntry, PROTO_UDP, Reason, csum};

use crate::{
    maps::{LB_FIB_CACHE, LB_SETTINGS},
    packet::{Parsed, ptr_at, word},
    stats::VipCounters,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const VLAN_HLEN: usize = 4;

/// Rewrite the destination to `backend`, then forward. Returns the verdict and the reason to
/// count. Only called for packets `parse` accepted, so every offset below was checked once;
/// the checks are repeated because the verifier needs them at each access.
#[inline(always)]
pub fn dnat_and_forward(
    ctx: &XdpContext,
    p: &Parsed,
    backend_id: u32,
    backend: &Backend,
    counters: &VipCounters,
) -> (u32, Reason) {
    if dnat(ctx, p, backend).is_none() {
        return (xdp_action::XDP_PASS, Reason::PassMalformed);
    }
    let ingress = ctx.ingress_ifindex() as u32;
    let hop = match cached_hop(backend_id, ingress, p.ip_tot_len) {
        Some(hop) => {
            counters.count(Reason::FibCached);
            hop
        }
        None => match fib(ctx, p, backend, ingress) {
            Ok(hop) => {
                remember_hop(backend_id, ingress, &hop);
                hop
            }
            Err(reason) => return (xdp_action::XDP_PASS, reason),
        },
    };
    send(ctx, p, ingress, &hop)
}

/// Where to send a packet for a backend: what a successful FIB lookup says.
struct NextHop {
    egress: u32,
    dmac: [u8; 6],
    smac: [u8; 6],
    mtu: u16,
}

#[inline(always)]
fn cache_ttl() -> u64 {
    LB_SETTINGS.get(0).map(|s| s.fib_cache_ttl_ns).unwrap_or(0)
}

#[inline(always)]
fn cached_hop(backend_id: u32, ingress: u32, ip_tot_len: u16) -> Option<NextHop> {
    if cache_ttl() == 0 {
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
    })
}

#[inline(always)]
fn remember_hop(backend_id: u32, ingress: u32, hop: &NextHop) {
    let ttl = cache_ttl();
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

#[inline(always)]
fn fib(ctx: &XdpContext, p: &Parsed, b: &Backend, ingress: u32) -> Result<NextHop, Reason> {
    // SAFETY: plain C struct; all-zero is its documented initial state.
    let mut fib: bpf_fib_lookup = unsafe { zeroed() };
    fib.l4_protocol = p.flow.proto;
    fib.sport = p.flow.sport.to_be();
    fib.dport = b.port.to_be();
    fib.__bindgen_anon_1.tot_len = p.ip_tot_len;
    fib.ifindex = ingress;
    if p.is_v6 {
        fib.family = AF_INET6;
        fib.__bindgen_anon_2.flowinfo = p.tos_or_flowinfo;
        fib.__bindgen_anon_3.ipv6_src = words(&p.flow.src);
        fib.__bindgen_anon_4.ipv6_dst = words(&b.addr);
    } else {
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = p.tos_or_flowinfo as u8;
        fib.__bindgen_anon_3.ipv4_src =
            u32::from_ne_bytes([p.flow.src[0], p.flow.src[1], p.flow.src[2], p.flow.src[3]]);
        fib.__bindgen_anon_4.ipv4_dst =
            u32::from_ne_bytes([b.addr[0], b.addr[1], b.addr[2], b.addr[3]]);
    }
    let rc = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            &mut fib,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Err(Reason::PassNoNeighbour);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(Reason::PassFibFailed);
    }
    // SAFETY: on success the kernel leaves the egress MTU in this union member.
    let mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
    Ok(NextHop {
        egress: fib.ifindex,
        dmac: fib.dmac,
        smac: fib.smac,
        mtu,
    })
}

/// Rewrite the MACs and hand the frame to its egress interface.
#[inline(always)]
fn send(ctx: &XdpContext, p: &Parsed, ingress: u32, hop: &NextHop) -> (u32, Reason) {
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
