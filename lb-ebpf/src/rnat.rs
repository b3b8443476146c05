//! Reverse NAT (`lb_tc_rnat`): the replies of flows lb steered leave the node from the VIP.
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
//! Which replies: exactly those with an entry in the reply table (`LB_REPLIES`, keyed by the
//! reply's own 5-tuple), which the XDP program writes for every flow it steers, or
//! delivers here with another node's steering mark. Everything else from a backend
//! (answers to kubelet's probes, pod-to-pod, ClusterIP and NodePort traffic through
//! kube-proxy, the pod's own outbound connections) passes untouched, counted
//! `pass_not_steered`. The entry names the VIP, so one backend port can answer for any
//! number of VIPs, each client hearing from the address it used.
//!
//! With `RNAT_F_FORWARD` (`LB_RNAT_CFG`; `lb run` sets it) the program then sends the
//! rewritten reply out itself through the FIB ([`forward`]), so the node's stack and its
//! netfilter never see it; what the FIB cannot route still goes to the stack as above.
//!
//! Checksums go through the kernel helpers (`bpf_skb_store_bytes`, `bpf_l3_csum_replace`,
//! `bpf_l4_csum_replace`), not direct packet writes: on an skb the L4 checksum may be
//! CHECKSUM_PARTIAL (the field holds only the pseudo-header sum; the port must not be
//! folded into it) or CHECKSUM_COMPLETE (`skb->csum` must follow the change), and the
//! helpers handle both, unclone the skb, and work when the headers are not linear.
//! `BPF_F_MARK_MANGLED_0` keeps an IPv4 UDP checksum of 0 at 0 and sends a computed 0 as
//! 0xffff. Reading uses direct packet access (after `bpf_skb_pull_data` if the headers are
//! not all in the linear part).

use core::ptr::null_mut;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::generated::{
        bpf_l3_csum_replace, bpf_l4_csum_replace, bpf_redirect, bpf_redirect_neigh,
        bpf_skb_store_bytes,
    },
    programs::TcContext,
};
use lb_common::{
    FlowKey, LearnedKey, QUIC_LB_MAX_CID_LEN, REPLY_NO_BACKEND, RNAT_F_FORWARD, Reason, ReplyNat,
    RnatReason, quic,
    wire::{
        ETH_ALEN, ETH_HLEN, IPV4_CSUM_OFF, IPV4_MAX_HLEN, IPV4_SADDR_OFF, IPV6_SADDR_OFF,
        L4_SPORT_OFF, PROTO_UDP, TCP_CSUM_OFF, TCP_MIN_HLEN, UDP_CSUM_OFF, UDP_HLEN, VLAN_HLEN,
    },
};

use crate::{
    fib::{self, Fib},
    flows,
    maps::{LB_LEARNED, LB_RNAT_CFG},
    packet::{self, Parsed, read, word},
    stats::count_rnat,
};

/// A QUIC long header up to the end of a 20-octet source CID (first octet, version, DCID
/// length, DCID, SCID length, SCID) plus the 20-octet fixed-size load of the SCID.
const QUIC_LONG_MAX: usize = quic::LONG_DCID_OFFSET + QUIC_LB_MAX_CID_LEN + 1 + QUIC_LB_MAX_CID_LEN;
/// Ethernet + one VLAN tag + the longest IPv4 header + a TCP header, or + UDP and a QUIC
/// long header (learned-CID mode): everything the program reads.
const HEADERS_MAX: u32 = {
    let tcp = ETH_HLEN + VLAN_HLEN + IPV4_MAX_HLEN + TCP_MIN_HLEN;
    let quic = ETH_HLEN + VLAN_HLEN + IPV4_MAX_HLEN + UDP_HLEN + QUIC_LONG_MAX;
    (if tcp > quic { tcp } else { quic }) as u32
};

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
    /// The reply's 5-tuple: its key in the reply table.
    flow: FlowKey,
    tcp_flags: u8,
    /// End of the UDP payload (UDP length, not frame length).
    l4_end: usize,
    /// The client: destination address and port (network order) of the reply.
    dst: [u8; 16],
    dport_raw: u16,
    /// IPv4 TOS or the IPv6 flow-info word, for the FIB lookup.
    tos_or_flowinfo: u32,
    /// An 802.1Q tag in the frame itself (not offloaded to skb metadata).
    vlan: bool,
}

#[inline(always)]
pub fn rnat(ctx: &TcContext) -> i32 {
    let len = ctx.len();
    let (verdict, reason) = run(ctx, len);
    count_rnat(reason, len as u64);
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
    let reply = match parse(ctx) {
        Ok(r) => r,
        Err(reason) => return (TC_ACT_OK, reason),
    };
    let Some(nat) = flows::reply_seen(&reply.flow, reply.tcp_flags) else {
        return (TC_ACT_OK, RnatReason::PassNotSteered);
    };
    if reply.flow.proto == PROTO_UDP && nat.learned_cid_len != 0 && nat.backend != REPLY_NO_BACKEND
    {
        learn(ctx, &reply, &nat);
    }
    let new_src = [
        word(&nat.vip, 0),
        word(&nat.vip, 1),
        word(&nat.vip, 2),
        word(&nat.vip, 3),
    ];
    if rewrite(ctx, &reply, &new_src, nat.vip_port.to_be()).is_err() {
        // Ours, but half rewritten: it could only reach the client with a bad checksum or
        // from the backend's address.
        return (TC_ACT_SHOT, RnatReason::DropRewriteFailed);
    }
    if LB_RNAT_CFG
        .get(0)
        .is_some_and(|s| s.flags & RNAT_F_FORWARD != 0)
    {
        let (verdict, how) = forward(ctx, &reply, &nat.vip, nat.vip_port.to_be());
        count_rnat(how, len as u64);
        return (verdict, RnatReason::Rewritten);
    }
    (TC_ACT_OK, RnatReason::Rewritten)
}

/// Send the rewritten reply towards the client ourselves: `bpf_fib_lookup` from the VIP to
/// the client, new MACs, `bpf_redirect` out of the egress interface; when the next hop's
/// neighbour entry is not resolved yet, `bpf_redirect_neigh`, which resolves it (and does
/// not check the MTU first). The node's stack, and so its netfilter, never sees the reply:
/// kube-proxy's conntrack would call a SYN-ACK whose SYN it never saw INVALID and drop it,
/// and CNI masquerade rules would rewrite the source. TTL / hop limit are not decremented
/// (as on the XDP path). Anything the FIB cannot route (no route, forwarding off, larger
/// than the egress MTU) or a frame carrying its VLAN tag goes to the stack: `TC_ACT_OK`.
#[inline(always)]
fn forward(ctx: &TcContext, r: &Reply, src: &[u8; 16], sport_raw: u16) -> (i32, RnatReason) {
    let fallback = (TC_ACT_OK, RnatReason::FibFallback);
    let skb = ctx.skb.skb;
    // A tag in the frame or in the skb's metadata belongs to the ingress segment: leave
    // such replies to the stack rather than carry the tag out of another interface.
    // SAFETY: reading a field of our own context.
    if r.vlan || unsafe { (*skb).vlan_present } != 0 {
        return fallback;
    }
    // On the stack: this program has room. Cleared before the query reads the reply
    // (`fib::Params::clear`).
    let mut storage = fib::Params::new();
    let params = storage.clear();
    let q = fib::Query {
        is_v6: r.is_v6,
        proto: r.flow.proto,
        sport: sport_raw,
        dport: r.dport_raw,
        src,
        dst: &r.dst,
        tos_or_flowinfo: r.tos_or_flowinfo,
        tot_len: 0,
        // SAFETY: reading a field of our own context.
        ifindex: unsafe { (*skb).ifindex },
    };
    match fib::lookup(ctx, params, &q) {
        Fib::Found(route) => {
            let mut macs = [0u8; 2 * ETH_ALEN];
            macs[..ETH_ALEN].copy_from_slice(&route.dmac);
            macs[ETH_ALEN..].copy_from_slice(&route.smac);
            // SAFETY: helper copies the MACs from our stack; it checks the offset.
            let len = macs.len() as u32;
            if unsafe { bpf_skb_store_bytes(skb.cast(), 0, macs.as_ptr().cast(), len, 0) } != 0 {
                return fallback;
            }
            // SAFETY: helper without pointers.
            let v = unsafe { bpf_redirect(route.ifindex, 0) } as i32;
            if v == TC_ACT_REDIRECT {
                return (v, RnatReason::Forwarded);
            }
        }
        Fib::NoNeighbour { ifindex } => {
            // SAFETY: no parameters: the helper looks the next hop up itself.
            let v = unsafe { bpf_redirect_neigh(ifindex, null_mut(), 0, 0) } as i32;
            if v == TC_ACT_REDIRECT {
                return (v, RnatReason::Forwarded);
            }
        }
        Fib::Failed => {}
    }
    fallback
}

/// Learned-CID mode: if the reply's VIP is in that mode and the reply is a QUIC long-header
/// packet (not Version Negotiation) whose source CID has the VIP's CID length, record
/// (VIP index, SCID) -> the backend in `LB_LEARNED`. Only reads the packet; anything that
/// does not fit is skipped silently (the packet is rewritten as usual).
#[inline(always)]
fn learn(ctx: &TcContext, r: &Reply, nat: &ReplyNat) {
    let (index, len) = (nat.vip_index, nat.learned_cid_len as usize);
    if len > QUIC_LB_MAX_CID_LEN {
        return;
    }
    let payload = r.l4_off + UDP_HLEN;
    let Some(hdr) = read::<[u8; 6], _>(ctx, payload) else {
        return;
    };
    if !quic::is_long_header(hdr[0]) || (hdr[1] | hdr[2] | hdr[3] | hdr[4]) == 0 {
        return;
    }
    let dcid_len = hdr[5] as usize;
    if dcid_len > QUIC_LB_MAX_CID_LEN {
        return;
    }
    let scid_len_off = payload + quic::LONG_DCID_OFFSET + dcid_len;
    // One fixed-size load for the SCID length and 20 octets from the SCID on (a real
    // long-header packet has a 16-octet AEAD tag after its SCID, and more); the key keeps
    // only the CID.
    let Some(block) = read::<[u8; 1 + QUIC_LB_MAX_CID_LEN], _>(ctx, scid_len_off) else {
        return;
    };
    if block[0] as usize != len || scid_len_off + 1 + len > r.l4_end {
        return;
    }
    let mut cid = [0u8; QUIC_LB_MAX_CID_LEN];
    cid.copy_from_slice(&block[1..]);
    let _ = LB_LEARNED.insert(&LearnedKey::new(index, cid, len), &nat.backend, 0);
}

/// The reply's source, or why the packet is not ours. The XDP program's parser
/// (`packet::parse`), so both programs agree on what a well-formed packet is: at most one
/// VLAN tag, IPv4 with any IHL but no fragments, IPv6 without extension headers, UDP/TCP.
#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Reply, RnatReason> {
    let mut p = Parsed::new();
    packet::parse(ctx, &mut p).map_err(|r| match r {
        Reason::PassNotIp => RnatReason::PassNotIp,
        Reason::PassFragment => RnatReason::PassFragment,
        Reason::PassIpv6Ext => RnatReason::PassIpv6Ext,
        // Not UDP or TCP: nothing lb steers.
        Reason::PassNotVip => RnatReason::PassNotSteered,
        _ => RnatReason::PassMalformed,
    })?;
    let udp = p.flow.proto == PROTO_UDP;
    Ok(Reply {
        is_v6: p.is_v6,
        l3_off: p.l3_off,
        l4_off: p.l4_off,
        csum_off: p.l4_off + if udp { UDP_CSUM_OFF } else { TCP_CSUM_OFF },
        l4_flags: if udp { BPF_F_MARK_MANGLED_0 } else { 0 },
        src: [
            word(&p.flow.src, 0),
            word(&p.flow.src, 1),
            word(&p.flow.src, 2),
            word(&p.flow.src, 3),
        ],
        sport_raw: p.flow.sport.to_be(),
        flow: p.flow,
        tcp_flags: p.tcp_flags,
        l4_end: p.l4_end,
        dst: p.flow.dst,
        dport_raw: p.flow.dport.to_be(),
        tos_or_flowinfo: p.tos_or_flowinfo,
        vlan: p.vlan,
    })
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
            bpf_skb_store_bytes(
                skb,
                (r.l3_off + IPV6_SADDR_OFF) as u32,
                new_src.as_ptr().cast(),
                16,
                0,
            )
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
                (r.l3_off + IPV4_SADDR_OFF) as u32,
                (&new as *const u32).cast(),
                4,
                0,
            )
        };
        if rc != 0 {
            return Err(());
        }
        // SAFETY: helper on our own skb; it checks the offset.
        let csum_off = (r.l3_off + IPV4_CSUM_OFF) as u32;
        if unsafe { bpf_l3_csum_replace(skb, csum_off, old as u64, new as u64, 4) } != 0 {
            return Err(());
        }
        l4_replace(ctx, r.csum_off, old as u64, new as u64, pseudo)?;
    }
    // SAFETY: helper copies 2 octets from our stack.
    let rc = unsafe {
        bpf_skb_store_bytes(
            skb,
            (r.l4_off + L4_SPORT_OFF) as u32,
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
