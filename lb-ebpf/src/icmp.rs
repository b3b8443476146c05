//! "Fragmentation needed" (ICMP) and "packet too big" (ICMPv6) for the client, built in place
//! from its own packet and sent back out of the ingress interface (XDP_TX).
//!
//! Used when the steering mark would make a packet larger than the egress MTU towards the
//! backend's node: the client's stack lowers its path MTU for the VIP (TCP resends smaller
//! segments at once; QUIC stacks run their own path MTU discovery and need nothing), the
//! same way a router on the path would have told it. The message comes from the VIP (the
//! address the client sent to) and quotes the client's packet as it arrived: IP header and
//! the first 8 octets of UDP/TCP, enough for any stack to find the socket.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    Reason,
    wire::{
        ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_HLEN, ICMPV6_PKT_TOOBIG, IPV4_HLEN, IPV6_HLEN,
        IPV6_MIN_MTU, PROTO_ICMP, PROTO_ICMPV6,
    },
};

use crate::{
    mark::shift_l2,
    packet::{Parsed, load, ptr_at},
};

/// What is quoted of the client's packet after its IP header: the ports (and, for TCP, the
/// sequence number), enough for any stack to find the socket.
const QUOTE_L4: usize = 8;
/// TTL / hop limit of the messages we send.
const TTL: u8 = 64;

/// Answer the client's packet `p` (not rewritten yet) with "fragmentation needed" / "packet
/// too big" carrying `mtu`, the largest packet that fits once marked. Returns the verdict and
/// the reason to count.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, p: &Parsed, mtu: u32) -> (u32, Reason) {
    // A quote of an IPv4 header with options would need a variable-length copy; such
    // packets from clients are rare enough to drop (counted).
    if !p.is_v6 && p.l4_off - p.l3_off != IPV4_HLEN {
        return (xdp_action::XDP_DROP, Reason::DropTooBig);
    }
    if build(ctx, p, mtu) {
        (xdp_action::XDP_TX, Reason::IcmpTooBig)
    } else {
        (xdp_action::XDP_DROP, Reason::DropAdjustFailed)
    }
}

/// Rewrite the frame into the ICMP message; false if the frame could not be reshaped.
// A BPF subprogram: a rare path with its own stack frame, so its buffers do not add to the
// fast path's. It returns a plain bool: a reason coming back through the caller's stack
// would lose its value in the verifier's eyes.
#[inline(never)]
fn build(ctx: &XdpContext, p: &Parsed, mtu: u32) -> bool {
    if p.is_v6 {
        v6(ctx, p, mtu).is_ok()
    } else {
        v4(ctx, p, mtu).is_ok()
    }
}

/// One's-complement sum of 32-bit words as they are in memory. The sum of byte-swapped
/// words is the byte-swapped sum (RFC 1071 §2(B)), so the folded result can be stored back
/// as is.
#[inline(always)]
fn sum_words<const N: usize>(mut acc: u64, w: &[u32; N]) -> u64 {
    let mut i = 0;
    while i < N {
        acc += w[i] as u64;
        i += 1;
    }
    acc
}

#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Grow the head by `grow` octets, move the Ethernet header (and tag) to the new front, and
/// cut the frame to `len` octets: what is left between the Ethernet header and the quote
/// (the client's IP header, now at `l2 + grow`) is room for the new headers.
#[inline(always)]
fn make_room(ctx: &XdpContext, p: &Parsed, grow: usize, len: usize) -> Result<(), Reason> {
    // SAFETY: helpers on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return Err(Reason::DropAdjustFailed);
    }
    shift_l2(ctx, p.vlan, grow, 0).ok_or(Reason::DropAdjustFailed)?;
    // black_box: computed as `len - (end - data)`, LLVM would do arithmetic on the packet
    // end pointer, which the verifier refuses.
    let have = core::hint::black_box(ctx.data_end() - ctx.data()) as i32;
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, len as i32 - have) } != 0 {
        return Err(Reason::DropAdjustFailed);
    }
    // Back to whoever sent it: the source MAC becomes the destination.
    let eth = ptr_at::<[u8; 12], _>(ctx, 0).ok_or(Reason::DropAdjustFailed)?;
    // SAFETY: bounds checked by ptr_at.
    let mut m = unsafe { eth.read_unaligned() };
    for i in 0..6 {
        m.swap(i, i + 6);
    }
    unsafe { eth.write_unaligned(m) };
    Ok(())
}

#[inline(always)]
fn v4(ctx: &XdpContext, p: &Parsed, mtu: u32) -> Result<(), Reason> {
    let l2 = p.l3_off;
    const GROW: usize = IPV4_HLEN + ICMP_HLEN;
    const QUOTE: usize = IPV4_HLEN + QUOTE_L4;
    make_room(ctx, p, GROW, l2 + GROW + QUOTE)?;
    let quote = load::<[u32; QUOTE / 4], _>(ctx, l2 + GROW).ok_or(Reason::DropAdjustFailed)?;
    let total = (GROW + QUOTE) as u16;
    // Version/IHL, TOS, total length | ID, flags, offset | TTL, protocol, checksum |
    // source (the VIP: the quote's destination) | destination (the client).
    let mut ip: [u32; 5] = [
        u32::from_be(0x4500_0000 | total as u32),
        0,
        u32::from_be(((TTL as u32) << 24) | ((PROTO_ICMP as u32) << 16)),
        quote[4],
        quote[3],
    ];
    let c = !fold(sum_words(0, &ip));
    ip[2] = u32::from_be(((TTL as u32) << 24) | ((PROTO_ICMP as u32) << 16)) | (c as u32) << 16;
    // Type (destination unreachable), code (fragmentation needed), checksum | unused,
    // next-hop MTU.
    let mtu16 = if mtu > 0xffff { 0xffff } else { mtu };
    let type_code = ((ICMP_DEST_UNREACH as u32) << 24) | ((ICMP_FRAG_NEEDED as u32) << 16);
    let mut icmp: [u32; 2] = [u32::from_be(type_code), u32::from_be(mtu16)];
    let c = !fold(sum_words(sum_words(0, &icmp), &quote));
    icmp[0] |= (c as u32) << 16;
    write(ctx, l2, &ip)?;
    write(ctx, l2 + IPV4_HLEN, &icmp)
}

#[inline(always)]
fn v6(ctx: &XdpContext, p: &Parsed, mtu: u32) -> Result<(), Reason> {
    let l2 = p.l3_off;
    const GROW: usize = IPV6_HLEN + ICMP_HLEN;
    const QUOTE: usize = IPV6_HLEN + QUOTE_L4;
    make_room(ctx, p, GROW, l2 + GROW + QUOTE)?;
    let quote = load::<[u32; QUOTE / 4], _>(ctx, l2 + GROW).ok_or(Reason::DropAdjustFailed)?;
    let payload = (ICMP_HLEN + QUOTE) as u32;
    // Version, class, label | payload length, next header, hop limit | source (the VIP:
    // the quote's destination, words 6..10) | destination (the client, words 2..6).
    let ip: [u32; 10] = [
        u32::from_be(0x6000_0000),
        u32::from_be((payload << 16) | ((PROTO_ICMPV6 as u32) << 8) | TTL as u32),
        quote[6],
        quote[7],
        quote[8],
        quote[9],
        quote[2],
        quote[3],
        quote[4],
        quote[5],
    ];
    let mtu = if mtu < IPV6_MIN_MTU {
        IPV6_MIN_MTU
    } else {
        mtu
    };
    // Type (packet too big), code 0, checksum | MTU.
    let mut icmp: [u32; 2] = [
        u32::from_be((ICMPV6_PKT_TOOBIG as u32) << 24),
        u32::from_be(mtu),
    ];
    // Pseudo-header: source, destination, upper-layer length, next header.
    let pseudo: [u32; 10] = [
        ip[2],
        ip[3],
        ip[4],
        ip[5],
        ip[6],
        ip[7],
        ip[8],
        ip[9],
        u32::from_be(payload),
        u32::from_be(PROTO_ICMPV6 as u32),
    ];
    let c = !fold(sum_words(sum_words(sum_words(0, &pseudo), &icmp), &quote));
    icmp[0] |= (c as u32) << 16;
    write(ctx, l2, &ip)?;
    write(ctx, l2 + IPV6_HLEN, &icmp)
}

#[inline(always)]
fn write<const N: usize>(ctx: &XdpContext, off: usize, words: &[u32; N]) -> Result<(), Reason> {
    let dst = ptr_at::<[u32; N], _>(ctx, off).ok_or(Reason::DropAdjustFailed)?;
    // SAFETY: bounds checked by ptr_at; unaligned word stores to packet data are fine on
    // the architectures lb runs on (see packet::load).
    unsafe { dst.write(*words) };
    Ok(())
}
