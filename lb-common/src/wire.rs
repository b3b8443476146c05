//! Wire-format constants: the header sizes, field offsets, ethertypes, protocol numbers,
//! flags and message types of the headers lb parses or writes, in one place (as Katran's
//! `balancer_consts.h`). Shared by the BPF programs and userspace.
//!
//! Only what the standards fix lives here. Limits of lb's own (map sizes, loop bounds, how
//! much of a packet a program reads) stay with the code they bound; the formats lb defines
//! itself are in [`crate::mark`] (the steering mark) and [`crate::quic`] / [`crate::quic_lb`]
//! (QUIC and its connection IDs). Offsets are from the start of their own header; ports,
//! addresses and checksums are in network order on the wire.

// Ethernet (IEEE 802.3) and VLAN tags (IEEE 802.1Q).

/// Ethernet header: destination MAC, source MAC, ethertype.
pub const ETH_HLEN: usize = 14;
/// Octets of a MAC address.
pub const ETH_ALEN: usize = 6;
/// Offset of the ethertype (or of a VLAN tag's TPID) in the Ethernet header.
pub const ETH_TYPE_OFF: usize = 2 * ETH_ALEN;
/// An 802.1Q tag: TPID (where the ethertype was) and TCI; the ethertype follows it.
pub const VLAN_HLEN: usize = 4;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad service tag (the outer tag of QinQ).
pub const ETH_P_8021AD: u16 = 0x88a8;

// IPv4 (RFC 791).

/// IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// IPv4 header with the most options IHL can describe (15 words).
pub const IPV4_MAX_HLEN: usize = 60;
/// Flags and fragment offset (the low half of the second header word): more fragments.
pub const IP_MF: u16 = 0x2000;
/// Flags and fragment offset: the fragment offset.
pub const IP_OFFSET: u16 = 0x1fff;
pub const IPV4_CSUM_OFF: usize = 10;
pub const IPV4_SADDR_OFF: usize = 12;
pub const IPV4_DADDR_OFF: usize = 16;

// IPv6 (RFC 8200).

/// The fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;
pub const IPV6_SADDR_OFF: usize = 8;
pub const IPV6_DADDR_OFF: usize = 24;
/// The smallest MTU an IPv6 link may have.
pub const IPV6_MIN_MTU: u32 = 1280;

// IP protocol numbers: IPv4 protocol, IPv6 next header (IANA "Assigned Internet Protocol
// Numbers"). The upper-layer protocols are also the `proto` of lb's map keys
// (`FlowKey`, `VipKey`).

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

// IPv6 extension headers (RFC 8200 §4 and the IANA "IPv6 Extension Header Types").

pub const NEXTHDR_HOPOPTS: u8 = 0;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_ESP: u8 = 50;
pub const NEXTHDR_AH: u8 = 51;
/// Destination Options: also the steering mark's header ([`crate::mark`]).
pub const NEXTHDR_DSTOPTS: u8 = 60;
pub const NEXTHDR_MOBILITY: u8 = 135;
pub const NEXTHDR_HIP: u8 = 139;
pub const NEXTHDR_SHIM6: u8 = 140;
/// The two values for experimentation and testing (RFC 3692, RFC 4727).
pub const NEXTHDR_EXPERIMENT1: u8 = 253;
pub const NEXTHDR_EXPERIMENT2: u8 = 254;

// UDP (RFC 768) and TCP (RFC 9293): ports first in both.

pub const L4_SPORT_OFF: usize = 0;
pub const L4_DPORT_OFF: usize = 2;
pub const UDP_HLEN: usize = 8;
pub const UDP_CSUM_OFF: usize = 6;
/// TCP header without options.
pub const TCP_MIN_HLEN: usize = 20;
pub const TCP_CSUM_OFF: usize = 16;
pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

// ICMP (RFC 792, RFC 1191) and ICMPv6 (RFC 4443, RFC 4861).

/// Type, code, checksum and the type's 4-octet field: all the fixed part of the messages lb
/// sends.
pub const ICMP_HLEN: usize = 8;
pub const ICMP_DEST_UNREACH: u8 = 3;
/// Code of [`ICMP_DEST_UNREACH`]: fragmentation needed and DF set (the next-hop MTU is in
/// the low half of the 4-octet field).
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMPV6_PKT_TOOBIG: u8 = 2;
/// Neighbor Solicitation.
pub const ICMPV6_NS: u8 = 135;
/// Neighbor Advertisement.
pub const ICMPV6_NA: u8 = 136;
/// Neighbor Advertisement flags (the first octet after the checksum): Router, Solicited,
/// Override.
pub const NA_FLAG_ROUTER: u8 = 0x80;
pub const NA_FLAG_SOLICITED: u8 = 0x40;
pub const NA_FLAG_OVERRIDE: u8 = 0x20;
/// Neighbor Discovery option types.
pub const NDP_OPT_SOURCE_LL: u8 = 1;
pub const NDP_OPT_TARGET_LL: u8 = 2;

// ARP (RFC 826).

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
