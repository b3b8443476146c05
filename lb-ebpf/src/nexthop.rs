//! The next hop of a packet `lb_xdp` (or `lb_xdp_peer`) sends to a backend: the FIB
//! (`fib`), the per-CPU next-hop cache in front of it (`LB_FIB_CACHE`), whether the egress
//! leads to another node, and handing the frame to the egress interface, or to the kernel
//! when that interface takes no native redirect (`lb_common::egress`).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::{
    FIB_CACHE_CLOCK_EVERY, FIB_HOP_REMOTE, FIB_HOP_XMIT, FibCacheEntry, IFACE_F_BACKEND, Reason,
    egress::{Egress, egress, xmit_path},
    fib_cache_slot,
    wire::{ETH_ALEN, VLAN_HLEN},
};

use crate::{
    fib::{self, Fib},
    maps::{LB_FIB_CACHE, LB_IFACES, scratch},
    packet::{Parsed, ptr_at},
};

/// Where to send a packet for a backend: what a successful FIB lookup says.
pub struct NextHop {
    pub egress: u32,
    dmac: [u8; ETH_ALEN],
    smac: [u8; ETH_ALEN],
    pub mtu: u16,
    /// The egress is not a backend-facing interface: the backend is behind another node.
    pub remote: bool,
    /// Both the ingress and the egress take native XDP redirects
    /// (`lb_common::egress::xmit_path`).
    xmit: bool,
}

/// A FIB lookup that found no usable next hop: the reason to count, and whether the egress
/// it did find (with no neighbour entry yet) leads away from this node's backends.
pub struct FibMiss {
    pub reason: Reason,
    pub remote: bool,
}

/// `LB_IFACES[ifindex]`, 0 for an interface userspace did not list.
#[inline(always)]
fn iface_flags(ifindex: u32) -> u32 {
    // SAFETY: the value is copied out.
    unsafe { LB_IFACES.get(&ifindex) }.copied().unwrap_or(0)
}

/// `bpf_fib_lookup` from the client (`p`'s source) to `dst`:`dport`, for a packet of
/// `tot_len` octets arriving on `ingress`.
#[inline(always)]
pub fn lookup(
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
    // Cleared before the query reads the packet (`fib::Params::clear` says why).
    let params = sc.fib.clear();
    let q = fib::Query {
        is_v6: p.is_v6,
        proto: p.flow.proto,
        sport: p.flow.sport.to_be(),
        dport: dport.to_be(),
        src: &p.flow.src,
        dst,
        tos_or_flowinfo: p.tos_or_flowinfo,
        tot_len,
        ifindex: ingress,
    };
    match fib::lookup(ctx, params, &q) {
        Fib::Found(r) => {
            let flags = iface_flags(r.ifindex);
            Ok(NextHop {
                egress: r.ifindex,
                dmac: r.dmac,
                smac: r.smac,
                mtu: r.mtu,
                remote: flags & IFACE_F_BACKEND == 0,
                xmit: xmit_path(iface_flags(ingress), flags),
            })
        }
        Fib::NoNeighbour { ifindex } => Err(FibMiss {
            reason: Reason::PassNoNeighbour,
            remote: iface_flags(ifindex) & IFACE_F_BACKEND == 0,
        }),
        Fib::Failed => Err(FibMiss {
            reason: Reason::PassFibFailed,
            remote: false,
        }),
    }
}

/// This CPU's cached next hop towards backend `backend_id` for a packet of `ip_tot_len`
/// octets that arrived on `ingress`, if it is fresh (`ttl`: `Settings::fib_cache_ttl_ns`).
#[inline(always)]
pub fn cached(backend_id: u32, ingress: u32, ip_tot_len: u16, ttl: u64) -> Option<NextHop> {
    if ttl == 0 {
        return None;
    }
    // SAFETY: this CPU's slot of a live map.
    let e = unsafe { &mut *LB_FIB_CACHE.get_ptr_mut(fib_cache_slot(backend_id))? };
    // Too big for the egress MTU: let bpf_fib_lookup say so, so the kernel can answer
    // "fragmentation needed" / "packet too big".
    if e.backend != backend_id || e.ingress_ifindex != ingress || ip_tot_len > e.mtu {
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
        remote: e.hop_flags & FIB_HOP_REMOTE != 0,
        xmit: e.hop_flags & FIB_HOP_XMIT != 0,
    })
}

/// Cache a next hop [`lookup`] found.
#[inline(always)]
pub fn remember(backend_id: u32, ingress: u32, hop: &NextHop, ttl: u64) {
    // mtu 0: a kernel that does not report the MTU on success; never cache then.
    if ttl == 0 || hop.mtu == 0 {
        return;
    }
    if let Some(e) = LB_FIB_CACHE.get_ptr_mut(fib_cache_slot(backend_id)) {
        // SAFETY: this CPU's slot; helper without arguments.
        unsafe {
            *e = FibCacheEntry {
                expires_ns: bpf_ktime_get_coarse_ns() + ttl,
                backend: backend_id,
                ingress_ifindex: ingress,
                egress_ifindex: hop.egress,
                dmac: hop.dmac,
                smac: hop.smac,
                mtu: hop.mtu,
                unchecked: 0,
                hop_flags: if hop.remote { FIB_HOP_REMOTE } else { 0 }
                    | if hop.xmit { FIB_HOP_XMIT } else { 0 },
                _pad: 0,
            };
        }
    }
}

/// Rewrite the MACs and hand the frame to its egress interface; or, when the ingress or
/// the egress takes no native redirect (`settings_flags`: `Settings::flags`), leave the
/// frame as it is (addressed to this node) and pass it to the kernel, which routes it.
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    p: &Parsed,
    ingress: u32,
    hop: &NextHop,
    settings_flags: u32,
) -> (u32, Reason) {
    let how = egress(ingress, hop.egress, hop.xmit, settings_flags);
    if how == Egress::Kernel {
        return (xdp_action::XDP_PASS, Reason::PassKernelRoute);
    }
    let Some(eth) = ptr_at::<[u8; 2 * ETH_ALEN], _>(ctx, 0) else {
        return (xdp_action::XDP_PASS, Reason::PassMalformed);
    };
    let mut macs = [0u8; 2 * ETH_ALEN];
    macs[..ETH_ALEN].copy_from_slice(&hop.dmac);
    macs[ETH_ALEN..].copy_from_slice(&hop.smac);
    if how == Egress::Tx {
        // Same interface, same VLAN: keep any tag.
        unsafe { *eth = macs };
        return (xdp_action::XDP_TX, Reason::Tx);
    }
    if p.vlan {
        // The tag belongs to the ingress segment: move the MACs over it and drop 4 octets.
        let Some(inner) = ptr_at::<[u8; 2 * ETH_ALEN], _>(ctx, VLAN_HLEN) else {
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
