//! Header parsing. Everything here only reads; a packet that fails any check is passed on
//! untouched with the reason it failed.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use lb_common::{
    FAMILY_V4, FAMILY_V6, FlowKey, Reason, mark,
    wire::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ETH_TYPE_OFF, IP_MF, IP_OFFSET,
        IPV4_HLEN, IPV6_HLEN, NEXTHDR_AH, NEXTHDR_DSTOPTS, NEXTHDR_ESP, NEXTHDR_EXPERIMENT1,
        NEXTHDR_EXPERIMENT2, NEXTHDR_FRAGMENT, NEXTHDR_HIP, NEXTHDR_HOPOPTS, NEXTHDR_MOBILITY,
        NEXTHDR_ROUTING, NEXTHDR_SHIM6, PROTO_TCP, PROTO_UDP, TCP_FLAG_ACK, TCP_FLAG_SYN,
        TCP_MIN_HLEN, UDP_HLEN, VLAN_HLEN,
    },
};

/// What the rest of the program needs to know about a UDP/TCP packet.
#[derive(Copy, Clone)]
pub struct Parsed {
    pub vlan: bool,
    pub is_v6: bool,
    pub l3_off: usize,
    pub l4_off: usize,
    /// Where the UDP payload (or TCP segment data) ends: the IP length, not the frame length
    /// (frames may carry Ethernet padding).
    pub l4_end: usize,
    /// Addresses, ports (host order), protocol and family as they arrived: the connection
    /// table key, and the source of the VIP key.
    pub flow: FlowKey,
    pub tcp_flags: u8,
    /// IPv4 total length, or IPv6 payload length + 40: the FIB's MTU check wants it.
    pub ip_tot_len: u16,
    /// IPv4 TOS or the IPv6 flow-info word (network order), for the FIB lookup.
    pub tos_or_flowinfo: u32,
    /// Where another node's steering mark starts (`lb_common::mark`: the IPv4 option right
    /// after the fixed header, or the IPv6 Destination Options header); 0 when there is
    /// none.
    pub mark_off: usize,
}

/// The two program types that parse packets: XDP (`lb_xdp`) and TC (`lb_tc_rnat`). One
/// parser serves both, so they agree on what a well-formed packet is.
pub trait PacketCtx {
    /// Start and end of the directly readable (linear) part of the packet.
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The packet's full length, which IP lengths are checked against: the frame for XDP,
    /// the skb (linear and paged parts) for TC.
    fn packet_len(&self) -> usize;
}

impl PacketCtx for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn packet_len(&self) -> usize {
        XdpContext::data_end(self) - XdpContext::data(self)
    }
}

impl PacketCtx for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn packet_len(&self) -> usize {
        self.len() as usize
    }
}

/// A pointer to `T` at `off` if the packet holds it.
#[inline(always)]
pub fn ptr_at<T, C: PacketCtx>(ctx: &C, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
pub fn read<T: Copy, C: PacketCtx>(ctx: &C, off: usize) -> Option<T> {
    // SAFETY: bounds checked by ptr_at; unaligned because headers are.
    ptr_at::<T, C>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

/// Load a `T` (a u16/u32/u64, or an array of them) from the packet with one instruction per
/// word. Header fields are rarely naturally aligned in a frame, but BPF allows unaligned
/// packet loads on the architectures lb runs on (x86-64, arm64; the verifier checks bounds,
/// not alignment, there), and only an aligned-typed load makes LLVM emit `ldxw` instead of
/// four `ldxb` and the shifts to reassemble them.
#[inline(always)]
pub fn load<T: Copy, C: PacketCtx>(ctx: &C, off: usize) -> Option<T> {
    // SAFETY: bounds checked by ptr_at; alignment: see above.
    ptr_at::<T, C>(ctx, off).map(|p| unsafe { p.read() })
}

#[inline(always)]
fn be16<C: PacketCtx>(ctx: &C, off: usize) -> Option<u16> {
    load::<u16, _>(ctx, off).map(u16::from_be)
}

/// Store four octets (as loaded from the packet, network order) at word `i` of an address.
#[inline(always)]
pub fn set_word(addr: &mut [u8; 16], i: usize, w: u32) {
    // SAFETY: i < 4 at every call site; every key holding an address is 4-octet aligned
    // (lb_common::maps) and addresses sit at 4-aligned offsets in them.
    unsafe { (addr.as_mut_ptr() as *mut u32).add(i).write(w) }
}

/// Word `i` of an address, network order as in memory.
#[inline(always)]
pub fn word(addr: &[u8; 16], i: usize) -> u32 {
    // SAFETY: as for set_word.
    unsafe { (addr.as_ptr() as *const u32).add(i).read() }
}

impl Parsed {
    /// A TCP SYN without ACK: a new connection (possibly reusing an old 5-tuple).
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.flow.proto == PROTO_TCP
            && self.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }

    pub const fn new() -> Self {
        Parsed {
            vlan: false,
            is_v6: false,
            l3_off: 0,
            l4_off: 0,
            l4_end: 0,
            flow: FlowKey {
                src: [0; 16],
                dst: [0; 16],
                sport: 0,
                dport: 0,
                proto: 0,
                family: 0,
                _pad: [0; 2],
            },
            tcp_flags: 0,
            ip_tot_len: 0,
            tos_or_flowinfo: 0,
            mark_off: 0,
        }
    }
}

/// Fill `p` from the packet, or say why the packet is not ours. Steering marks are not
/// looked for (a marked IPv6 packet is `PassIpv6Ext`): see [`parse_marked`].
#[inline(always)]
pub fn parse<C: PacketCtx>(ctx: &C, p: &mut Parsed) -> Result<(), Reason> {
    parse_with::<C, false>(ctx, p)
}

/// [`parse`], also recognising another node's steering mark (`Parsed::mark_off`). Kept
/// off the main path on purpose: a branch on the mark there would double the states the
/// verifier walks through everything after it.
#[inline(always)]
pub fn parse_marked<C: PacketCtx>(ctx: &C, p: &mut Parsed) -> Result<(), Reason> {
    parse_with::<C, true>(ctx, p)
}

#[inline(always)]
fn parse_with<C: PacketCtx, const MARKS: bool>(ctx: &C, p: &mut Parsed) -> Result<(), Reason> {
    let pkt_len = ctx.packet_len();
    let mut ethertype = be16(ctx, ETH_TYPE_OFF).ok_or(Reason::PassMalformed)?;
    let mut l3_off = ETH_HLEN;
    let mut vlan = false;
    if ethertype == ETH_P_8021Q {
        // The tag's TCI, then the ethertype.
        ethertype = be16(ctx, ETH_HLEN + 2).ok_or(Reason::PassMalformed)?;
        l3_off += VLAN_HLEN;
        vlan = true;
    }
    // One tag at most: QinQ and anything else that is not IP pass untouched.
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return Err(Reason::PassNotIp);
    }
    p.vlan = vlan;
    p.l3_off = l3_off;
    match ethertype {
        ETH_P_IP => parse_ipv4::<C, MARKS>(ctx, p, pkt_len)?,
        ETH_P_IPV6 => parse_ipv6::<C, MARKS>(ctx, p, pkt_len)?,
        _ => return Err(Reason::PassNotIp),
    }
    match p.flow.proto {
        PROTO_UDP => {
            let udp = load::<[u32; 2], _>(ctx, p.l4_off).ok_or(Reason::PassMalformed)?;
            let (ports, len_csum) = (u32::from_be(udp[0]), u32::from_be(udp[1]));
            let udp_len = (len_csum >> 16) as usize;
            if udp_len < UDP_HLEN || p.l4_off + udp_len > p.l4_end {
                return Err(Reason::PassMalformed);
            }
            // IPv6 forbids a zero UDP checksum; such a packet is not ours to fix.
            if p.is_v6 && len_csum & 0xffff == 0 {
                return Err(Reason::PassMalformed);
            }
            p.flow.sport = (ports >> 16) as u16;
            p.flow.dport = ports as u16;
            p.l4_end = p.l4_off + udp_len;
        }
        PROTO_TCP => {
            // Ports | seq | ack | data offset, flags, window | checksum, urgent pointer.
            let tcp = load::<[u32; 5], _>(ctx, p.l4_off).ok_or(Reason::PassMalformed)?;
            let (ports, off_flags) = (u32::from_be(tcp[0]), u32::from_be(tcp[3]));
            let doff = ((off_flags >> 28) * 4) as usize;
            if doff < TCP_MIN_HLEN || p.l4_off + doff > p.l4_end {
                return Err(Reason::PassMalformed);
            }
            p.flow.sport = (ports >> 16) as u16;
            p.flow.dport = ports as u16;
            p.tcp_flags = (off_flags >> 16) as u8;
        }
        _ => return Err(Reason::PassNotVip),
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv4<C: PacketCtx, const MARKS: bool>(
    ctx: &C,
    p: &mut Parsed,
    pkt_len: usize,
) -> Result<(), Reason> {
    let l3 = p.l3_off;
    // Version, IHL, TOS, total length | ID, flags, fragment offset | TTL, protocol, checksum.
    // One bounds check for the fixed header, then plain word loads.
    let h = load::<[u32; 5], _>(ctx, l3).ok_or(Reason::PassMalformed)?;
    let (w0, w1, w2) = (u32::from_be(h[0]), u32::from_be(h[1]), u32::from_be(h[2]));
    let (src, dst) = (h[3], h[4]);
    if w0 >> 28 != 4 {
        return Err(Reason::PassMalformed);
    }
    let ihl = (((w0 >> 24) & 0x0f) * 4) as usize;
    let tot_len = (w0 & 0xffff) as usize;
    if ihl < IPV4_HLEN || tot_len < ihl || l3 + tot_len > pkt_len {
        return Err(Reason::PassMalformed);
    }
    // MF set or a non-zero offset: non-first fragments carry no ports, and reassembly is
    // the kernel's job.
    if w1 & (IP_MF | IP_OFFSET) as u32 != 0 {
        return Err(Reason::PassFragment);
    }
    // Options: another node's steering mark is always the first one.
    if MARKS && ihl >= IPV4_HLEN + mark::IPV4_LEN {
        // LLVM knows from the length checks above that the option is inside the packet and
        // would drop the bounds check the verifier needs; hide the offset from it.
        let off = core::hint::black_box(l3 + IPV4_HLEN);
        let opt = read::<[u8; mark::IPV4_LEN], _>(ctx, off).ok_or(Reason::PassMalformed)?;
        if mark::parse_ipv4_option(&opt).is_some() {
            p.mark_off = l3 + IPV4_HLEN;
        }
    }
    p.flow.proto = (w2 >> 16) as u8;
    p.flow.family = FAMILY_V4;
    set_word(&mut p.flow.src, 0, src);
    set_word(&mut p.flow.dst, 0, dst);
    p.l4_off = l3 + ihl;
    p.l4_end = l3 + tot_len;
    p.ip_tot_len = tot_len as u16;
    p.tos_or_flowinfo = (w0 >> 16) & 0xff;
    Ok(())
}

#[inline(always)]
fn parse_ipv6<C: PacketCtx, const MARKS: bool>(
    ctx: &C,
    p: &mut Parsed,
    pkt_len: usize,
) -> Result<(), Reason> {
    let l3 = p.l3_off;
    // Version, traffic class, flow label | payload length, next header, hop limit.
    let h = load::<[u32; 10], _>(ctx, l3).ok_or(Reason::PassMalformed)?;
    let (w0, w1) = (h[0], u32::from_be(h[1]));
    if u32::from_be(w0) >> 28 != 6 {
        return Err(Reason::PassMalformed);
    }
    let payload_len = (w1 >> 16) as usize;
    if l3 + IPV6_HLEN + payload_len > pkt_len {
        return Err(Reason::PassMalformed);
    }
    let mut next = (w1 >> 8) as u8;
    let mut l4_off = l3 + IPV6_HLEN;
    // Another node's steering mark: a Destination Options header of exactly our form
    // (other destination options, like every other extension header, are not walked).
    if MARKS && next == NEXTHDR_DSTOPTS {
        let h = read::<[u8; mark::IPV6_LEN], _>(ctx, l4_off).ok_or(Reason::PassIpv6Ext)?;
        if let Some((upper, _, _)) = mark::parse_ipv6_dstopts(&h)
            && payload_len >= mark::IPV6_LEN
        {
            p.mark_off = l4_off;
            l4_off += mark::IPV6_LEN;
            next = upper;
        }
    }
    match next {
        PROTO_UDP | PROTO_TCP => {}
        // We do not walk extension headers.
        NEXTHDR_HOPOPTS | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_ESP | NEXTHDR_AH
        | NEXTHDR_DSTOPTS | NEXTHDR_MOBILITY | NEXTHDR_HIP | NEXTHDR_SHIM6
        | NEXTHDR_EXPERIMENT1 | NEXTHDR_EXPERIMENT2 => {
            return Err(Reason::PassIpv6Ext);
        }
        _ => return Err(Reason::PassNotVip),
    }
    p.is_v6 = true;
    p.flow.proto = next;
    p.flow.family = FAMILY_V6;
    for i in 0..4 {
        set_word(&mut p.flow.src, i, h[2 + i]);
        set_word(&mut p.flow.dst, i, h[6 + i]);
    }
    p.l4_off = l4_off;
    p.l4_end = l3 + IPV6_HLEN + payload_len;
    p.ip_tot_len = (IPV6_HLEN + payload_len) as u16;
    // Traffic class and flow label, in network order as bpf_fib_lookup wants them.
    p.tos_or_flowinfo = w0 & u32::to_be(0x0fff_ffff);
    Ok(())
}
