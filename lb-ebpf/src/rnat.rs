//! Reverse NAT (`lb_tc_rnat`): replies from a backend leave the node from the VIP.
//!
//! Attach point: TC (clsact) **ingress** of the interfaces that face backends. A backend's
//! reply to a client enters the node there and is then routed by the kernel out of the
//! external interface; rewriting before routing needs no knowledge of which interface the
//! client sits behind, and every reply is seen exactly once. (Egress of the backend-facing
//! interface never sees replies; egress of the external interface would, but would also see
//! all the node's own traffic.) The rewritten packet then goes through the kernel's source
//! validation with the VIP as its source: the VIP must not be a local address of the node
//! (a local source is a martian) and strict `rp_filter` (1) on the backend-facing interface
//! drops it (the route back to the VIP does not go out there); use 0 or 2 (loose).
//!
//! Stateless: `LB_RNAT` maps (backend address, backend port, protocol) to (VIP, VIP port),
//! so there is no connection table to lose or to keep in sync across nodes.
//!
//! Checksums go through the kernel helpers (`bpf_skb_store_bytes`, `bpf_l3_csum_replace`,
//! `bpf_l4_csum_replace`), not direct packet writes: on an skb the L4 checksum may be
//! CHECKSUM_PARTIAL (the field holds only the pseudo-header sum; the port must not be
//! folded into it) or CHECKSUM_COMPLETE (`skb->csum` must follow the change), and the
//! helpers handle both, unclone the skb, and work when the headers are not linear.
//! `BPF_F_MARK_MANGLED_0` keeps an IPv4 UDP checksum of 0 at 0 and sends a computed 0 as
//! 0xffff. Reading uses direct packet access (after `bpf_skb_pull_data` if the headers are
//! not all in the linear part).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_l3_csum_replace, bpf_l4_csum_replace, bpf_skb_store_bytes},
    programs::TcContext,
};
use lb_common::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, RnatKey, RnatReason};

use crate::maps::{LB_RNAT, LB_RNAT_STATS};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
const TCP_MIN_HLEN: usize = 20;
/// Ethernet + one VLAN tag + the longest IPv4 header + a TCP header: everything the
/// program reads.
const HEADERS_MAX: u32 = (ETH_HLEN + VLAN_HLEN + 60 + TCP_MIN_HLEN) as u32;

// bpf_l4_csum_replace flags (uapi/linux/bpf.h).
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
/// Since Linux 6.16: an IPv6 address change must not touch `skb->csum` (no IP header
/// checksum compensates it). Older kernels reject the flag with EINVAL; then we retry
/// without it.
const BPF_F_IPV6: u64 = 1 << 7;
const EINVAL: i64 = 22;

/// What the rewrite needs to know about a reply.
struct Reply {
    is_v6: bool,
    l3_off: usize,
    l4_off: usize,
    /// Offset of the UDP/TCP checksum field.
    csum_off: usize,
    /// Flags for every `bpf_l4_csum_replace` of this packet.
    l4_flags: u64,
    /// Source address words and port as they are on the wire (network order in memory).
    src: [u32; 4],
    sport_raw: u16,
    key: RnatKey,
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + off + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *const T)
}

/// One instruction per word, as in `packet::load` (unaligned packet loads are fine on BPF).
#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    // SAFETY: bounds checked by ptr_at.
    ptr_at::<T>(ctx, off).map(|p| unsafe { p.read() })
}

#[inline(always)]
fn count(reason: RnatReason, bytes: u64) {
    if let Some(c) = LB_RNAT_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: this CPU's slot of a live map.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn rnat(ctx: &TcContext) -> i32 {
    let len = ctx.len();
    let (verdict, reason) = run(ctx, len);
    count(reason, len as u64);
    verdict
}

#[inline(always)]
fn run(ctx: &TcContext, len: u32) -> (i32, RnatReason) {
    // Headers in paged data (GRO, some drivers): make what we read linear. Packets that are
    // linear already (nearly all) skip the helper.
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < HEADERS_MAX && linear < len {
        let want = if len < HEADERS_MAX { len } else { HEADERS_MAX };
        let _ = ctx.pull_data(want);
    }
    let reply = match parse(ctx, len as usize) {
        Ok(r) => r,
        Err(reason) => return (TC_ACT_OK, reason),
    };
    // Copy the value out: userspace may replace the element while we run.
    let vip = match unsafe { LB_RNAT.get(reply.key) } {
        Some(v) => *v,
        None => return (TC_ACT_OK, RnatReason::PassNotBackend),
    };
    let new_src = [
        word(&vip.addr, 0),
        word(&vip.addr, 1),
        word(&vip.addr, 2),
        word(&vip.addr, 3),
    ];
    match rewrite(ctx, &reply, &new_src, vip.port.to_be()) {
        Ok(()) => (TC_ACT_OK, RnatReason::Rewritten),
        // Ours, but half rewritten: it could only reach the client with a bad checksum or
        // from the backend's address.
        Err(()) => (TC_ACT_SHOT, RnatReason::DropRewriteFailed),
    }
}

/// Word `i` of a 16-octet address, network order as in memory.
#[inline(always)]
fn word(addr: &[u8; 16], i: usize) -> u32 {
    // SAFETY: i < 4; RnatValue is 4-octet aligned with the address at offset 0.
    unsafe { (addr.as_ptr() as *const u32).add(i).read() }
}

#[inline(always)]
fn set_word(addr: &mut [u8; 16], i: usize, w: u32) {
    // SAFETY: as for word (RnatKey is 4-octet aligned too).
    unsafe { (addr.as_mut_ptr() as *mut u32).add(i).write(w) }
}

/// The reply's source, or why the packet is not ours. Mirrors the XDP parser: at most one
/// VLAN tag, IPv4 with any IHL but no fragments, IPv6 without extension headers.
#[inline(always)]
fn parse(ctx: &TcContext, pkt_len: usize) -> Result<Reply, RnatReason> {
    let mut ethertype = load::<u16>(ctx, 12)
        .map(u16::from_be)
        .ok_or(RnatReason::PassMalformed)?;
    let mut l3_off = ETH_HLEN;
    if ethertype == ETH_P_8021Q {
        ethertype = load::<u16>(ctx, ETH_HLEN + 2)
            .map(u16::from_be)
            .ok_or(RnatReason::PassMalformed)?;
        l3_off += VLAN_HLEN;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return Err(RnatReason::PassNotIp);
    }
    let mut r = Reply {
        is_v6: false,
        l3_off,
        l4_off: 0,
        csum_off: 0,
        l4_flags: 0,
        src: [0; 4],
        sport_raw: 0,
        key: RnatKey::default(),
    };
    let l4_end;
    match ethertype {
        ETH_P_IP => {
            let h = load::<[u32; 5]>(ctx, l3_off).ok_or(RnatReason::PassMalformed)?;
            let (w0, w1, w2) = (u32::from_be(h[0]), u32::from_be(h[1]), u32::from_be(h[2]));
            if w0 >> 28 != 4 {
                return Err(RnatReason::PassMalformed);
            }
            let ihl = (((w0 >> 24) & 0x0f) * 4) as usize;
            let tot_len = (w0 & 0xffff) as usize;
            if ihl < 20 || tot_len < ihl || l3_off + tot_len > pkt_len {
                return Err(RnatReason::PassMalformed);
            }
            if w1 & 0x3fff != 0 {
                return Err(RnatReason::PassFragment);
            }
            r.key.proto = (w2 >> 16) as u8;
            r.key.family = FAMILY_V4;
            r.src[0] = h[3];
            set_word(&mut r.key.addr, 0, h[3]);
            r.l4_off = l3_off + ihl;
            l4_end = l3_off + tot_len;
        }
        ETH_P_IPV6 => {
            let h = load::<[u32; 6]>(ctx, l3_off).ok_or(RnatReason::PassMalformed)?;
            let (w0, w1) = (u32::from_be(h[0]), u32::from_be(h[1]));
            if w0 >> 28 != 6 {
                return Err(RnatReason::PassMalformed);
            }
            let payload_len = (w1 >> 16) as usize;
            if l3_off + IPV6_HLEN + payload_len > pkt_len {
                return Err(RnatReason::PassMalformed);
            }
            // The destination is not needed, but the header must be whole.
            if load::<[u32; 10]>(ctx, l3_off).is_none() {
                return Err(RnatReason::PassMalformed);
            }
            let next = (w1 >> 8) as u8;
            match next {
                PROTO_UDP | PROTO_TCP => {}
                0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254 => {
                    return Err(RnatReason::PassIpv6Ext);
                }
                _ => return Err(RnatReason::PassNotBackend),
            }
            r.is_v6 = true;
            r.key.proto = next;
            r.key.family = FAMILY_V6;
            for i in 0..4 {
                r.src[i] = h[2 + i];
                set_word(&mut r.key.addr, i, h[2 + i]);
            }
            r.l4_off = l3_off + IPV6_HLEN;
            l4_end = r.l4_off + payload_len;
        }
        _ => return Err(RnatReason::PassNotIp),
    }
    let ports;
    match r.key.proto {
        PROTO_UDP => {
            let udp = load::<[u32; 2]>(ctx, r.l4_off).ok_or(RnatReason::PassMalformed)?;
            let len_csum = u32::from_be(udp[1]);
            let udp_len = (len_csum >> 16) as usize;
            if udp_len < UDP_HLEN || r.l4_off + udp_len > l4_end {
                return Err(RnatReason::PassMalformed);
            }
            // IPv6 forbids a zero UDP checksum; not ours to fix.
            if r.is_v6 && len_csum & 0xffff == 0 {
                return Err(RnatReason::PassMalformed);
            }
            ports = udp[0];
            r.csum_off = r.l4_off + 6;
            r.l4_flags = BPF_F_MARK_MANGLED_0;
        }
        PROTO_TCP => {
            let tcp = load::<[u32; 5]>(ctx, r.l4_off).ok_or(RnatReason::PassMalformed)?;
            let doff = ((u32::from_be(tcp[3]) >> 28) * 4) as usize;
            if doff < TCP_MIN_HLEN || r.l4_off + doff > l4_end {
                return Err(RnatReason::PassMalformed);
            }
            ports = tcp[0];
            r.csum_off = r.l4_off + 16;
        }
        _ => return Err(RnatReason::PassNotBackend),
    }
    let sport = (u32::from_be(ports) >> 16) as u16;
    r.sport_raw = sport.to_be();
    r.key.port = sport;
    Ok(r)
}

/// `bpf_l4_csum_replace`, retrying without `BPF_F_IPV6` on kernels that do not know it.
#[inline(always)]
fn l4_replace(ctx: &TcContext, off: usize, from: u64, to: u64, flags: u64) -> Result<(), ()> {
    let skb = ctx.skb.skb.cast();
    // SAFETY: helper on our own skb; it checks the offset itself.
    let mut rc = unsafe { bpf_l4_csum_replace(skb, off as u32, from, to, flags) };
    if rc == -EINVAL && flags & BPF_F_IPV6 != 0 {
        rc = unsafe { bpf_l4_csum_replace(skb, off as u32, from, to, flags & !BPF_F_IPV6) };
    }
    if rc == 0 { Ok(()) } else { Err(()) }
}

/// Source address and port to the VIP's, checksums updated by the kernel helpers. Offsets
/// were validated by `parse`; the helpers check them again against the skb.
#[inline(always)]
fn rewrite(ctx: &TcContext, r: &Reply, new_src: &[u32; 4], new_port_raw: u16) -> Result<(), ()> {
    let skb = ctx.skb.skb.cast();
    let pseudo = r.l4_flags | BPF_F_PSEUDO_HDR | 4;
    if r.is_v6 {
        // SAFETY: helper copies 16 octets from our stack.
        let rc = unsafe {
            bpf_skb_store_bytes(skb, (r.l3_off + 8) as u32, new_src.as_ptr().cast(), 16, 0)
        };
        if rc != 0 {
            return Err(());
        }
        for (old, new) in r.src.iter().zip(new_src) {
            if old != new {
                l4_replace(
                    ctx,
                    r.csum_off,
                    *old as u64,
                    *new as u64,
                    pseudo | BPF_F_IPV6,
                )?;
            }
        }
    } else {
        let (old, new) = (r.src[0], new_src[0]);
        // SAFETY: helper copies 4 octets from our stack.
        let rc = unsafe {
            bpf_skb_store_bytes(
                skb,
                (r.l3_off + 12) as u32,
                (&new as *const u32).cast(),
                4,
                0,
            )
        };
        if rc != 0 {
            return Err(());
        }
        // SAFETY: helper on our own skb; it checks the offset.
        if unsafe { bpf_l3_csum_replace(skb, (r.l3_off + 10) as u32, old as u64, new as u64, 4) }
            != 0
        {
            return Err(());
        }
        l4_replace(ctx, r.csum_off, old as u64, new as u64, pseudo)?;
    }
    // SAFETY: helper copies 2 octets from our stack.
    let rc = unsafe {
        bpf_skb_store_bytes(
            skb,
            r.l4_off as u32,
            (&new_port_raw as *const u16).cast(),
            2,
            0,
        )
    };
    if rc != 0 {
        return Err(());
    }
    l4_replace(
        ctx,
        r.csum_off,
        r.sport_raw as u64,
        new_port_raw as u64,
        r.l4_flags | 2,
    )
}
