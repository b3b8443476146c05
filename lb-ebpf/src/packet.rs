//! Header parsing. Everything here only reads; a packet that fails any check is passed on
//! untouched with the reason it failed.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, Reason};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
const TCP_MIN_HLEN: usize = 20;

pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

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
}

/// A pointer to `T` at `off` if the packet holds it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    // SAFETY: bounds checked by ptr_at; unaligned because headers are.
    ptr_at::<T>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

#[inline(always)]
fn be16(ctx: &XdpContext, off: usize) -> Option<u16> {
    read::<[u8; 2]>(ctx, off).map(u16::from_be_bytes)
}

impl Parsed {
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
        }
    }
}

/// Fill `p` from the packet, or say why the packet is not ours.
#[inline(always)]
pub fn parse(ctx: &XdpContext, p: &mut Parsed) -> Result<(), Reason> {
    let pkt_len = ctx.data_end() - ctx.data();
    let mut ethertype = be16(ctx, 12).ok_or(Reason::PassMalformed)?;
    let mut l3_off = ETH_HLEN;
    let mut vlan = false;
    if ethertype == ETH_P_8021Q {
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
        ETH_P_IP => parse_ipv4(ctx, p, pkt_len)?,
        ETH_P_IPV6 => parse_ipv6(ctx, p, pkt_len)?,
        _ => return Err(Reason::PassNotIp),
    }
    match p.flow.proto {
        PROTO_UDP => {
            let udp = read::<[u8; UDP_HLEN]>(ctx, p.l4_off).ok_or(Reason::PassMalformed)?;
            let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
            if udp_len < UDP_HLEN || p.l4_off + udp_len > p.l4_end {
                return Err(Reason::PassMalformed);
            }
            p.flow.sport = u16::from_be_bytes([udp[0], udp[1]]);
            p.flow.dport = u16::from_be_bytes([udp[2], udp[3]]);
            // IPv6 forbids a zero UDP checksum; such a packet is not ours to fix.
            if p.is_v6 && udp[6] == 0 && udp[7] == 0 {
                return Err(Reason::PassMalformed);
            }
            p.l4_end = p.l4_off + udp_len;
        }
        PROTO_TCP => {
            let ports = read::<[u8; 4]>(ctx, p.l4_off).ok_or(Reason::PassMalformed)?;
            let off_flags = read::<[u8; 2]>(ctx, p.l4_off + 12).ok_or(Reason::PassMalformed)?;
            // The rest of the minimal header must be there too (checksum at 16..18).
            read::<[u8; 2]>(ctx, p.l4_off + TCP_MIN_HLEN - 2).ok_or(Reason::PassMalformed)?;
            let doff = ((off_flags[0] >> 4) as usize) * 4;
            if doff < TCP_MIN_HLEN || p.l4_off + doff > p.l4_end {
                return Err(Reason::PassMalformed);
            }
            p.flow.sport = u16::from_be_bytes([ports[0], ports[1]]);
            p.flow.dport = u16::from_be_bytes([ports[2], ports[3]]);
            p.tcp_flags = off_flags[1];
        }
        _ => return Err(Reason::PassNotVip),
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, p: &mut Parsed, pkt_len: usize) -> Result<(), Reason> {
    let ip = read::<[u8; 20]>(ctx, p.l3_off).ok_or(Reason::PassMalformed)?;
    if ip[0] >> 4 != 4 {
        return Err(Reason::PassMalformed);
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if ihl < 20 || tot_len < ihl || p.l3_off + tot_len > pkt_len {
        return Err(Reason::PassMalformed);
    }
    // MF set or a non-zero offset: non-first fragments carry no ports, and reassembly is
    // the kernel's job.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(Reason::PassFragment);
    }
    p.flow.proto = ip[9];
    p.flow.family = FAMILY_V4;
    p.flow.src[..4].copy_from_slice(&ip[12..16]);
    p.flow.dst[..4].copy_from_slice(&ip[16..20]);
    p.l4_off = p.l3_off + ihl;
    p.l4_end = p.l3_off + tot_len;
    p.ip_tot_len = tot_len as u16;
    p.tos_or_flowinfo = ip[1] as u32;
    Ok(())
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, p: &mut Parsed, pkt_len: usize) -> Result<(), Reason> {
    let ip = read::<[u8; 8]>(ctx, p.l3_off).ok_or(Reason::PassMalformed)?;
    if ip[0] >> 4 != 6 {
        return Err(Reason::PassMalformed);
    }
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    if p.l3_off + IPV6_HLEN + payload_len > pkt_len {
        return Err(Reason::PassMalformed);
    }
    match ip[6] {
        PROTO_UDP | PROTO_TCP => {}
        // Hop-by-hop, routing, fragment, ESP, AH, destination options, mobility, HIP,
        // shim6, experimental: we do not walk extension headers.
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254 => {
            return Err(Reason::PassIpv6Ext);
        }
        _ => return Err(Reason::PassNotVip),
    }
    p.is_v6 = true;
    p.flow.proto = ip[6];
    p.flow.family = FAMILY_V6;
    p.flow.src = read::<[u8; 16]>(ctx, p.l3_off + 8).ok_or(Reason::PassMalformed)?;
    p.flow.dst = read::<[u8; 16]>(ctx, p.l3_off + 24).ok_or(Reason::PassMalformed)?;
    p.l4_off = p.l3_off + IPV6_HLEN;
    p.l4_end = p.l4_off + payload_len;
    p.ip_tot_len = (IPV6_HLEN + payload_len) as u16;
    p.tos_or_flowinfo = u32::from_ne_bytes([ip[0] & 0x0f, ip[1], ip[2], ip[3]]);
    Ok(())
}
