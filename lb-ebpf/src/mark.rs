//! Inserting and removing the steering mark (`lb_common::mark`) in XDP.
//!
//! Both move the front of the frame (Ethernet header, VLAN tag if any, fixed IP header)
//! by the mark's length with `bpf_xdp_adjust_head`, so only those 34 to 58 octets are
//! copied, never the payload. The caller has validated every offset in `Parsed`.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    csum, mark,
    wire::{ETH_HLEN, IPV4_HLEN, IPV4_MAX_HLEN, IPV6_HLEN, NEXTHDR_DSTOPTS, VLAN_HLEN},
};

use crate::packet::{Parsed, ptr_at, read};

/// Move `N` octets (a multiple of 2) of the frame from offset `from` to offset `to`, in
/// place: 8-octet words, then 2-octet ones, in the order that never overwrites what is
/// still to be read (forward when moving towards the front, backward otherwise), with no
/// buffer on the stack. The distance must be at least 8 octets.
#[inline(always)]
fn shift<const N: usize>(ctx: &XdpContext, from: usize, to: usize) -> Option<()> {
    let far = if from > to { from } else { to };
    // One bounds check covers every access below (constant offsets from one pointer).
    ptr_at::<[u8; N], _>(ctx, far)?;
    let base = ctx.data();
    let words = N / 8;
    let halves = (N % 8) / 2;
    // SAFETY (all accesses): within [base, base + far + N), checked above; unaligned word
    // access to packet data is fine on the architectures lb runs on (see packet::load).
    unsafe {
        let word = |i: usize, off: usize| (base + off + i * 8) as *mut u64;
        let half = |i: usize, off: usize| (base + off + words * 8 + i * 2) as *mut u16;
        if to < from {
            for i in 0..words {
                word(i, to).write_unaligned(word(i, from).read_unaligned());
            }
            for i in 0..halves {
                half(i, to).write_unaligned(half(i, from).read_unaligned());
            }
        } else {
            for i in (0..halves).rev() {
                half(i, to).write_unaligned(half(i, from).read_unaligned());
            }
            for i in (0..words).rev() {
                word(i, to).write_unaligned(word(i, from).read_unaligned());
            }
        }
    }
    Some(())
}

/// Move the frame's first `len` octets (one of the four front sizes: Ethernet with or
/// without a VLAN tag, then an IPv4 or IPv6 fixed header) from `from` to `to`.
#[inline(always)]
pub fn shift_front(ctx: &XdpContext, len: usize, from: usize, to: usize) -> Option<()> {
    const V4: usize = ETH_HLEN + IPV4_HLEN;
    const V4_VLAN: usize = ETH_HLEN + VLAN_HLEN + IPV4_HLEN;
    const V6: usize = ETH_HLEN + IPV6_HLEN;
    const V6_VLAN: usize = ETH_HLEN + VLAN_HLEN + IPV6_HLEN;
    match len {
        V4 => shift::<V4>(ctx, from, to),
        V4_VLAN => shift::<V4_VLAN>(ctx, from, to),
        V6 => shift::<V6>(ctx, from, to),
        V6_VLAN => shift::<V6_VLAN>(ctx, from, to),
        _ => None,
    }
}

/// Move the Ethernet header (with its VLAN tag, if any) from `from` to `to`.
#[inline(always)]
pub fn shift_l2(ctx: &XdpContext, vlan: bool, from: usize, to: usize) -> Option<()> {
    if vlan {
        shift::<{ ETH_HLEN + VLAN_HLEN }>(ctx, from, to)
    } else {
        shift::<ETH_HLEN>(ctx, from, to)
    }
}

#[inline(always)]
fn adjust_head(ctx: &XdpContext, delta: i32) -> Option<()> {
    // SAFETY: helper on our own context.
    (unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } == 0).then_some(())
}

/// Octets the mark adds to this packet.
#[inline(always)]
pub fn len_for(p: &Parsed) -> usize {
    if p.is_v6 {
        mark::IPV6_LEN
    } else {
        mark::IPV4_LEN
    }
}

/// Insert the mark for `vip`:`port` (a rewritten packet of flow `p`). `None`: the head
/// could not move, or an IPv4 header has no room left for another option.
#[inline(always)]
pub fn insert(ctx: &XdpContext, p: &Parsed, vip: &[u8; 16], port: u16) -> Option<()> {
    let front = p.l3_off + if p.is_v6 { IPV6_HLEN } else { IPV4_HLEN };
    if p.is_v6 {
        adjust_head(ctx, -(mark::IPV6_LEN as i32))?;
        shift_front(ctx, front, mark::IPV6_LEN, 0)?;
        let h = ptr_at::<[u8; mark::IPV6_LEN], _>(ctx, front)?;
        // SAFETY (all writes below): bounds checked by ptr_at.
        unsafe { h.write_unaligned(mark::ipv6_dstopts(p.flow.proto, *vip, port)) };
        let fixed = ptr_at::<[u8; 8], _>(ctx, p.l3_off)?;
        let mut f = unsafe { fixed.read_unaligned() };
        let payload = u16::from_be_bytes([f[4], f[5]]) + mark::IPV6_LEN as u16;
        [f[4], f[5]] = payload.to_be_bytes();
        f[6] = NEXTHDR_DSTOPTS;
        unsafe { fixed.write_unaligned(f) };
        return Some(());
    }
    let ihl_words = (p.l4_off - p.l3_off) / 4;
    if ihl_words + mark::IPV4_LEN / 4 > IPV4_MAX_HLEN / 4 {
        return None;
    }
    adjust_head(ctx, -(mark::IPV4_LEN as i32))?;
    shift_front(ctx, front, mark::IPV4_LEN, 0)?;
    let opt = mark::ipv4_option([vip[0], vip[1], vip[2], vip[3]], port);
    let o = ptr_at::<[u8; mark::IPV4_LEN], _>(ctx, front)?;
    unsafe { o.write_unaligned(opt) };
    ipv4_resize(ctx, p.l3_off, &opt, true)
}

/// Remove another node's mark (at `p.mark_off`) so the backend gets the packet as the
/// client sent it, destination aside.
#[inline(always)]
pub fn strip(ctx: &XdpContext, p: &Parsed) -> Option<()> {
    let front = p.l3_off + if p.is_v6 { IPV6_HLEN } else { IPV4_HLEN };
    if p.mark_off != front {
        return None;
    }
    if p.is_v6 {
        let h = read::<[u8; mark::IPV6_LEN], _>(ctx, front)?;
        let fixed = ptr_at::<[u8; 8], _>(ctx, p.l3_off)?;
        // SAFETY (all accesses below): bounds checked by ptr_at.
        let mut f = unsafe { fixed.read_unaligned() };
        let payload = u16::from_be_bytes([f[4], f[5]]).checked_sub(mark::IPV6_LEN as u16)?;
        [f[4], f[5]] = payload.to_be_bytes();
        f[6] = h[0];
        unsafe { fixed.write_unaligned(f) };
        shift_front(ctx, front, 0, mark::IPV6_LEN)?;
        return adjust_head(ctx, mark::IPV6_LEN as i32);
    }
    let opt = read::<[u8; mark::IPV4_LEN], _>(ctx, front)?;
    ipv4_resize(ctx, p.l3_off, &opt, false)?;
    shift_front(ctx, front, 0, mark::IPV4_LEN)?;
    adjust_head(ctx, mark::IPV4_LEN as i32)
}

/// Grow (or shrink) the IPv4 header at `l3` by the option `opt`: IHL and total length
/// follow, and the header checksum gains (or loses) the option's words.
#[inline(always)]
fn ipv4_resize(ctx: &XdpContext, l3: usize, opt: &[u8; mark::IPV4_LEN], grow: bool) -> Option<()> {
    let h = ptr_at::<[u8; 12], _>(ctx, l3)?;
    // SAFETY (all accesses below): bounds checked by ptr_at.
    let mut b = unsafe { h.read_unaligned() };
    let old_w0 = u16::from_be_bytes([b[0], b[1]]);
    let old_len = u16::from_be_bytes([b[2], b[3]]);
    let words = (mark::IPV4_LEN / 4) as u8;
    let (ihl, len) = if grow {
        ((b[0] & 0x0f) + words, old_len + mark::IPV4_LEN as u16)
    } else {
        (
            (b[0] & 0x0f).checked_sub(words)?,
            old_len.checked_sub(mark::IPV4_LEN as u16)?,
        )
    };
    b[0] = (b[0] & 0xf0) | ihl;
    [b[2], b[3]] = len.to_be_bytes();
    let mut c = u16::from_be_bytes([b[10], b[11]]);
    c = csum::update_u16(c, old_w0, u16::from_be_bytes([b[0], b[1]]));
    c = csum::update_u16(c, old_len, len);
    let mut i = 0;
    while i < mark::IPV4_LEN {
        let w = u16::from_be_bytes([opt[i], opt[i + 1]]);
        c = if grow {
            csum::update_u16(c, 0, w)
        } else {
            csum::update_u16(c, w, 0)
        };
        i += 2;
    }
    [b[10], b[11]] = c.to_be_bytes();
    unsafe { h.write_unaligned(b) };
    Some(())
}
