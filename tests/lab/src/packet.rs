//! Packet builder, parser and checksum verifier for tests: BPF_PROG_TEST_RUN fixtures compare
//! the program's output with exact expected bytes, so both sides are built here and every
//! mismatch is explained field by field ([`hex_diff`]).
//!
//! Checksums come from `lb_common::csum`, the same arithmetic the XDP program uses, so a
//! disagreement is a real bug in one of the paths rather than two implementations drifting.
//!
//! ```
//! use lb_lab::packet::{Packet, parse, quic, verify_checksums};
//! let dcid = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08];
//! let pkt = Packet::eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
//!     .vlan(100)
//!     .ipv4("198.18.0.1".parse().unwrap(), "198.18.1.1".parse().unwrap())
//!     .udp(40000, 443)
//!     .payload(quic::short(&dcid, 32))
//!     .build();
//! let p = parse(&pkt).unwrap();
//! assert_eq!((p.vlan, p.sport, p.dport), (Some(100), 40000, 443));
//! verify_checksums(&pkt).unwrap();
//! ```
//!
//! Misusing the builder (an IPv4-only setting on an IPv6 packet, a VLAN ID above 4095, UDP
//! without an IP header, ...) panics with a message: these are test fixtures, and a
//! mis-built fixture must never silently become a different packet.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::csum::{checksum, fold, pseudo_header_v4, pseudo_header_v6, sum_bytes, udp_fixup};

/// An Ethernet address.
pub use lb_userspace::mac::Mac;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_DSTOPTS: u8 = 60;

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
pub const TCP_HLEN: usize = 20;

/// TCP flag bits, combinable with `|`: `tcp_flags::SYN | tcp_flags::ACK`.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// An IPv6 extension header, emitted in the order added, before the L4 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext6 {
    /// Hop-by-hop options (type 0): the option TLVs; Pad1/PadN fill to a multiple of 8.
    HopByHop(Vec<u8>),
    /// Destination options (type 60): the option TLVs; Pad1/PadN fill to a multiple of 8.
    DestOpts(Vec<u8>),
    /// Fragment header (type 44). `offset` is in 8-octet units (13 bits).
    Fragment { offset: u16, more: bool, id: u32 },
    /// Any header using the generic "length in 8-octet units, not counting the first 8"
    /// layout (e.g. routing, 43): `body` follows the next-header and length octets and is
    /// zero-padded to a multiple of 8.
    Raw { kind: u8, body: Vec<u8> },
}

impl Ext6 {
    fn kind(&self) -> u8 {
        match self {
            Ext6::HopByHop(_) => IPPROTO_HOPOPTS,
            Ext6::DestOpts(_) => IPPROTO_DSTOPTS,
            Ext6::Fragment { .. } => IPPROTO_FRAGMENT,
            Ext6::Raw { kind, .. } => *kind,
        }
    }

    fn encode(&self, next: u8, out: &mut Vec<u8>) {
        let start = out.len();
        match self {
            Ext6::HopByHop(opts) | Ext6::DestOpts(opts) => {
                out.extend_from_slice(&[next, 0]);
                out.extend_from_slice(opts);
                // Options are TLVs, so the padding must be Pad1 / PadN options, not zeros.
                match (8 - (out.len() - start) % 8) % 8 {
                    0 => {}
                    1 => out.push(0),
                    n => {
                        out.extend_from_slice(&[1, (n - 2) as u8]);
                        out.resize(out.len() + n - 2, 0);
                    }
                }
            }
            Ext6::Fragment { offset, more, id } => {
                assert!(
                    *offset <= 0x1fff,
                    "IPv6 fragment offset {offset} does not fit 13 bits"
                );
                let off_flags = (offset << 3) | u16::from(*more);
                out.extend_from_slice(&[next, 0]);
                out.extend_from_slice(&off_flags.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
            }
            Ext6::Raw { body, .. } => {
                out.extend_from_slice(&[next, 0]);
                out.extend_from_slice(body);
                out.resize(start + (out.len() - start).div_ceil(8) * 8, 0);
            }
        }
        let units = (out.len() - start) / 8 - 1;
        assert!(
            units <= 255,
            "IPv6 extension header longer than 2048 octets"
        );
        out[start + 1] = units as u8;
    }
}

#[derive(Clone, Debug)]
enum L3Spec {
    None,
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

#[derive(Clone, Debug)]
enum L4Spec {
    None,
    Udp {
        sport: u16,
        dport: u16,
    },
    Tcp {
        sport: u16,
        dport: u16,
    },
    /// No L4 header: `proto` goes in the protocol / next-header field and the payload follows
    /// the IP headers as is (ICMP, non-first fragments, unknown protocols).
    Raw {
        proto: u8,
    },
}

/// Packet builder. Methods consume and return the builder; [`Packet::build`] renders it.
/// Defaults: TTL / hop limit 64, TOS 0, IP ID 0, no DF/MF, TCP flags none, window 65535,
/// empty payload, all lengths and checksums computed.
#[derive(Clone, Debug)]
#[must_use]
pub struct Packet {
    eth_src: Mac,
    eth_dst: Mac,
    vlan: Option<u16>,
    ethertype: Option<u16>,
    l3: L3Spec,
    ttl: u8,
    tos: u8,
    ip_id: u16,
    df: bool,
    mf: bool,
    frag_offset: u16,
    ip_options: Vec<u8>,
    ip_checksum: Option<u16>,
    flow_label: u32,
    ext6: Vec<Ext6>,
    l4: L4Spec,
    seq: u32,
    ack: u32,
    tcp_flags: u8,
    window: u16,
    l4_checksum: Option<u16>,
    payload: Vec<u8>,
}

impl Packet {
    /// Start a frame. Arguments are source then destination, like [`Packet::ipv4`]; on the
    /// wire the destination comes first.
    pub fn eth(src: Mac, dst: Mac) -> Packet {
        Packet {
            eth_src: src,
            eth_dst: dst,
            vlan: None,
            ethertype: None,
            l3: L3Spec::None,
            ttl: 64,
            tos: 0,
            ip_id: 0,
            df: false,
            mf: false,
            frag_offset: 0,
            ip_options: Vec::new(),
            ip_checksum: None,
            flow_label: 0,
            ext6: Vec::new(),
            l4: L4Spec::None,
            seq: 0,
            ack: 0,
            tcp_flags: 0,
            window: 65535,
            l4_checksum: None,
            payload: Vec::new(),
        }
    }

    /// One 802.1Q tag (TPID 0x8100, PCP 0, DEI 0) with this VLAN ID.
    pub fn vlan(mut self, vid: u16) -> Self {
        assert!(vid <= 0x0fff, "VLAN ID {vid} does not fit 12 bits");
        self.vlan = Some(vid);
        self
    }

    /// Override the (inner) ethertype, e.g. for a non-IP frame (no `ipv4`/`ipv6`) or an IP
    /// packet under a wrong ethertype.
    pub fn ethertype(mut self, ethertype: u16) -> Self {
        self.ethertype = Some(ethertype);
        self
    }

    pub fn ipv4(mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        self.l3 = L3Spec::V4 { src, dst };
        self
    }

    pub fn ipv6(mut self, src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        self.l3 = L3Spec::V6 { src, dst };
        self
    }

    /// IPv4 TTL or IPv6 hop limit.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// Same field as [`Packet::ttl`].
    pub fn hop_limit(self, hop_limit: u8) -> Self {
        self.ttl(hop_limit)
    }

    /// IPv4 TOS octet or IPv6 traffic class (DSCP << 2 | ECN).
    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }

    /// IPv6 flow label (20 bits).
    pub fn flow_label(mut self, label: u32) -> Self {
        assert!(
            label <= 0xfffff,
            "flow label {label:#x} does not fit 20 bits"
        );
        self.flow_label = label;
        self
    }

    /// IPv4 identification.
    pub fn ip_id(mut self, id: u16) -> Self {
        self.ip_id = id;
        self
    }

    /// IPv4 don't-fragment flag.
    pub fn df(mut self, df: bool) -> Self {
        self.df = df;
        self
    }

    /// IPv4 more-fragments flag.
    pub fn mf(mut self, mf: bool) -> Self {
        self.mf = mf;
        self
    }

    /// IPv4 fragment offset in 8-octet units (13 bits). A non-zero offset usually goes with
    /// [`Packet::raw`], since only the first fragment carries the L4 header.
    pub fn frag_offset(mut self, units: u16) -> Self {
        assert!(
            units <= 0x1fff,
            "IPv4 fragment offset {units} does not fit 13 bits"
        );
        self.frag_offset = units;
        self
    }

    /// IPv4 options (at most 40 octets), zero-padded (EOL) to a multiple of 4; IHL follows.
    pub fn ip_options(mut self, options: &[u8]) -> Self {
        assert!(
            options.len() <= 40,
            "IPv4 options are at most 40 octets, got {}",
            options.len()
        );
        self.ip_options = options.to_vec();
        self
    }

    /// lb's steering mark for `vip`:`port` (`lb_common::mark`), as a steering node adds it
    /// to a packet for a backend behind another node: the first IPv4 option (before any
    /// given with [`ip_options`](Self::ip_options)), or a Destination Options header in
    /// front of any other IPv6 extension header. Call after `ipv4`/`ipv6`.
    pub fn steering_mark(mut self, vip: std::net::IpAddr, port: u16) -> Self {
        match (&self.l3, vip) {
            (L3Spec::V4 { .. }, std::net::IpAddr::V4(v)) => {
                let mut o = lb_common::mark::ipv4_option(v.octets(), port).to_vec();
                o.extend_from_slice(&self.ip_options);
                self.ip_options = o;
            }
            (L3Spec::V6 { .. }, std::net::IpAddr::V6(v)) => {
                let h = lb_common::mark::ipv6_dstopts(0, v.octets(), port);
                // The option TLV; the builder adds the next-header, length and PadN octets.
                self.ext6.insert(0, Ext6::DestOpts(h[2..22].to_vec()));
            }
            _ => panic!("test bug: a steering mark needs ipv4/ipv6 of the VIP's family first"),
        }
        self
    }

    /// Force the IPv4 header checksum field (e.g. a wrong one) instead of computing it.
    pub fn ip_checksum(mut self, value: u16) -> Self {
        self.ip_checksum = Some(value);
        self
    }

    /// Append an IPv6 extension header (they are emitted in call order).
    pub fn ext6(mut self, ext: Ext6) -> Self {
        self.ext6.push(ext);
        self
    }

    /// Append a hop-by-hop options header with these option TLVs (may be empty).
    pub fn hop_by_hop(self, options: &[u8]) -> Self {
        self.ext6(Ext6::HopByHop(options.to_vec()))
    }

    /// Append a destination options header with these option TLVs (may be empty).
    pub fn dest_opts(self, options: &[u8]) -> Self {
        self.ext6(Ext6::DestOpts(options.to_vec()))
    }

    /// Append an IPv6 fragment header; `offset` in 8-octet units.
    pub fn fragment6(self, offset: u16, more: bool, id: u32) -> Self {
        self.ext6(Ext6::Fragment { offset, more, id })
    }

    pub fn udp(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = L4Spec::Udp { sport, dport };
        self
    }

    pub fn tcp(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = L4Spec::Tcp { sport, dport };
        self
    }

    /// No L4 header: `proto` in the IP header and the payload right after the IP headers.
    pub fn raw(mut self, proto: u8) -> Self {
        self.l4 = L4Spec::Raw { proto };
        self
    }

    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }

    pub fn ack(mut self, ack: u32) -> Self {
        self.ack = ack;
        self
    }

    /// TCP flags, from [`tcp_flags`].
    pub fn flags(mut self, flags: u8) -> Self {
        self.tcp_flags = flags;
        self
    }

    pub fn window(mut self, window: u16) -> Self {
        self.window = window;
        self
    }

    /// IPv4 UDP "no checksum": the field is 0. (Also allowed on IPv6, where it is invalid, to
    /// build packets a receiver must reject.)
    pub fn udp_no_checksum(self) -> Self {
        self.l4_checksum(0)
    }

    /// Force the UDP/TCP checksum field instead of computing it.
    pub fn l4_checksum(mut self, value: u16) -> Self {
        self.l4_checksum = Some(value);
        self
    }

    /// L4 payload (or, for [`Packet::raw`] / non-IP frames, everything after the headers).
    pub fn payload(mut self, payload: impl AsRef<[u8]>) -> Self {
        self.payload = payload.as_ref().to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        self.build_with_layout().0
    }

    /// The bytes and where each header ends in them.
    pub fn build_with_layout(&self) -> (Vec<u8>, Layout) {
        let mut out = Vec::with_capacity(128 + self.payload.len());
        out.extend_from_slice(&self.eth_dst);
        out.extend_from_slice(&self.eth_src);
        let inner_type = self.ethertype.unwrap_or_else(|| match self.l3 {
            L3Spec::V4 { .. } => ETH_P_IPV4,
            L3Spec::V6 { .. } => ETH_P_IPV6,
            L3Spec::None => panic!("a frame without ipv4()/ipv6() needs an explicit ethertype()"),
        });
        let mut vlan_end = None;
        if let Some(vid) = self.vlan {
            out.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            out.extend_from_slice(&vid.to_be_bytes());
            vlan_end = Some(ETH_HLEN + VLAN_HLEN);
        }
        out.extend_from_slice(&inner_type.to_be_bytes());
        let l3_offset = out.len();
        self.check_l3_settings();

        let (proto, segment, l4_hdr_len) = self.l4_segment();
        let mut ext_ends = Vec::new();
        let (ip_end, l4_offset) = match self.l3 {
            L3Spec::None => {
                assert!(
                    matches!(self.l4, L4Spec::None),
                    "an L4 header needs ipv4() or ipv6() first"
                );
                (l3_offset, l3_offset)
            }
            L3Spec::V4 { src, dst } => {
                let opt_len = self.ip_options.len().div_ceil(4) * 4;
                let hlen = IPV4_HLEN + opt_len;
                let total = hlen + segment.len();
                assert!(total <= 0xffff, "IPv4 total length {total} exceeds 65535");
                let frag =
                    (u16::from(self.df) << 14) | (u16::from(self.mf) << 13) | self.frag_offset;
                out.push(0x40 | (hlen / 4) as u8);
                out.push(self.tos);
                out.extend_from_slice(&(total as u16).to_be_bytes());
                out.extend_from_slice(&self.ip_id.to_be_bytes());
                out.extend_from_slice(&frag.to_be_bytes());
                out.push(self.ttl);
                out.push(proto);
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                out.extend_from_slice(&self.ip_options);
                out.resize(l3_offset + hlen, 0);
                let csum = self
                    .ip_checksum
                    .unwrap_or_else(|| checksum(&out[l3_offset..]));
                out[l3_offset + 10..l3_offset + 12].copy_from_slice(&csum.to_be_bytes());
                (l3_offset + hlen, l3_offset + hlen)
            }
            L3Spec::V6 { src, dst } => {
                let mut exts = Vec::new();
                for (i, ext) in self.ext6.iter().enumerate() {
                    let next = self.ext6.get(i + 1).map_or(proto, Ext6::kind);
                    ext.encode(next, &mut exts);
                    ext_ends.push(l3_offset + IPV6_HLEN + exts.len());
                }
                let payload_len = exts.len() + segment.len();
                assert!(
                    payload_len <= 0xffff,
                    "IPv6 payload length {payload_len} exceeds 65535"
                );
                let first_next = self.ext6.first().map_or(proto, Ext6::kind);
                let vtf = (6u32 << 28) | (u32::from(self.tos) << 20) | self.flow_label;
                out.extend_from_slice(&vtf.to_be_bytes());
                out.extend_from_slice(&(payload_len as u16).to_be_bytes());
                out.push(first_next);
                out.push(self.ttl);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                out.extend_from_slice(&exts);
                (l3_offset + IPV6_HLEN, l3_offset + IPV6_HLEN + exts.len())
            }
        };
        out.extend_from_slice(&segment);
        self.fill_l4_checksum(&mut out[l4_offset..]);
        let end = out.len();
        let l4_hdr_end = l4_hdr_len.map(|n| l4_offset + n);
        let layout = Layout {
            eth_end: ETH_HLEN,
            vlan_end,
            l3_offset,
            ip_end,
            ext_ends,
            l4_offset,
            l4_hdr_end,
            payload_offset: l4_hdr_end.unwrap_or(l4_offset),
            end,
        };
        (out, layout)
    }

    fn check_l3_settings(&self) {
        let v4_only = !self.ip_options.is_empty()
            || self.ip_id != 0
            || self.df
            || self.mf
            || self.frag_offset != 0
            || self.ip_checksum.is_some();
        match self.l3 {
            L3Spec::V6 { .. } => assert!(
                !v4_only,
                "IPv4-only settings (ip_options, ip_id, df, mf, frag_offset, ip_checksum) on an IPv6 packet"
            ),
            _ => assert!(
                self.ext6.is_empty() && self.flow_label == 0,
                "IPv6-only settings (extension headers, flow_label) on a non-IPv6 packet"
            ),
        }
        let tcp_only =
            self.seq != 0 || self.ack != 0 || self.tcp_flags != 0 || self.window != 65535;
        assert!(
            !tcp_only || matches!(self.l4, L4Spec::Tcp { .. }),
            "TCP settings (seq, ack, flags, window) on a non-TCP packet"
        );
        assert!(
            self.l4_checksum.is_none()
                || matches!(self.l4, L4Spec::Udp { .. } | L4Spec::Tcp { .. }),
            "an L4 checksum override needs udp() or tcp()"
        );
    }

    /// (IP protocol, L4 header + payload with checksum 0, L4 header length).
    fn l4_segment(&self) -> (u8, Vec<u8>, Option<usize>) {
        let mut seg = Vec::with_capacity(TCP_HLEN + self.payload.len());
        match self.l4 {
            L4Spec::None => {
                assert!(
                    matches!(self.l3, L3Spec::None),
                    "an IP packet needs udp(), tcp() or raw(proto)"
                );
                seg.extend_from_slice(&self.payload);
                (0, seg, None)
            }
            L4Spec::Raw { proto } => {
                seg.extend_from_slice(&self.payload);
                (proto, seg, None)
            }
            L4Spec::Udp { sport, dport } => {
                let len = UDP_HLEN + self.payload.len();
                assert!(len <= 0xffff, "UDP length {len} exceeds 65535");
                seg.extend_from_slice(&sport.to_be_bytes());
                seg.extend_from_slice(&dport.to_be_bytes());
                seg.extend_from_slice(&(len as u16).to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
                seg.extend_from_slice(&self.payload);
                (IPPROTO_UDP, seg, Some(UDP_HLEN))
            }
            L4Spec::Tcp { sport, dport } => {
                seg.extend_from_slice(&sport.to_be_bytes());
                seg.extend_from_slice(&dport.to_be_bytes());
                seg.extend_from_slice(&self.seq.to_be_bytes());
                seg.extend_from_slice(&self.ack.to_be_bytes());
                seg.push(((TCP_HLEN / 4) as u8) << 4);
                seg.push(self.tcp_flags);
                seg.extend_from_slice(&self.window.to_be_bytes());
                seg.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                seg.extend_from_slice(&self.payload);
                (IPPROTO_TCP, seg, Some(TCP_HLEN))
            }
        }
    }

    fn fill_l4_checksum(&self, seg: &mut [u8]) {
        let (field, is_udp) = match self.l4 {
            L4Spec::Udp { .. } => (6, true),
            L4Spec::Tcp { .. } => (16, false),
            _ => return,
        };
        let csum = self.l4_checksum.unwrap_or_else(|| {
            let proto = if is_udp { IPPROTO_UDP } else { IPPROTO_TCP };
            let pseudo = match self.l3 {
                L3Spec::V4 { src, dst } => {
                    pseudo_header_v4(src.octets(), dst.octets(), proto, seg.len() as u16)
                }
                L3Spec::V6 { src, dst } => {
                    pseudo_header_v6(src.octets(), dst.octets(), proto, seg.len() as u32)
                }
                L3Spec::None => unreachable!("checked in build"),
            };
            let c = !fold(sum_bytes(pseudo, seg));
            if is_udp { udp_fixup(c) } else { c }
        });
        seg[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    }
}

/// Where the headers of a packet start and end (offsets into the frame).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// End of destination MAC, source MAC and ethertype/TPID: always 14.
    pub eth_end: usize,
    /// End of the 802.1Q tag including the inner ethertype (18), if tagged.
    pub vlan_end: Option<usize>,
    /// Start of the IP header.
    pub l3_offset: usize,
    /// End of the IPv4 header including options, or of the fixed 40-octet IPv6 header.
    pub ip_end: usize,
    /// End of each IPv6 extension header, in order.
    pub ext_ends: Vec<usize>,
    /// Start of the L4 header (after all extension headers).
    pub l4_offset: usize,
    /// End of the UDP/TCP header; `None` when there is none (raw, non-first fragment).
    pub l4_hdr_end: Option<usize>,
    /// Start of the L4 payload (`l4_hdr_end`, or `l4_offset` without an L4 header).
    pub payload_offset: usize,
    /// End of the IP datagram (Ethernet padding after it is not counted).
    pub end: usize,
}

impl Layout {
    /// Every header boundary strictly inside the packet (0 < b < end), ascending: end of
    /// Ethernet, end of VLAN tag, end of IP header, end of each extension header, end of L4
    /// header. Truncating at each of these yields a packet cut exactly between two headers.
    pub fn boundaries(&self) -> Vec<usize> {
        let mut b = vec![self.eth_end];
        b.extend(self.vlan_end);
        b.push(self.ip_end);
        b.extend(&self.ext_ends);
        b.extend(self.l4_hdr_end);
        b.retain(|&o| o > 0 && o < self.end);
        b.sort_unstable();
        b.dedup();
        b
    }
}

/// Header boundaries of a well-formed packet; see [`Layout::boundaries`].
pub fn boundaries(bytes: &[u8]) -> Result<Vec<usize>, String> {
    Ok(parse(bytes)?.layout.boundaries())
}

/// Network layer of a parsed packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L3 {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
        tos: u8,
        id: u16,
        df: bool,
        mf: bool,
        /// In 8-octet units.
        frag_offset: u16,
        /// Options as on the wire, including padding.
        options: Vec<u8>,
        total_len: u16,
        checksum: u16,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        traffic_class: u8,
        flow_label: u32,
        payload_len: u16,
        /// Extension header types in order (0 hop-by-hop, 43 routing, 44 fragment, 51 AH,
        /// 60 destination options).
        ext_headers: Vec<u8>,
    },
}

/// Transport layer of a parsed packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Udp {
        len: u16,
        checksum: u16,
    },
    Tcp {
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        checksum: u16,
        hdr_len: usize,
    },
    /// A fragment with a non-zero offset: no L4 header in this packet.
    NotFirstFragment,
    /// Some other protocol; its bytes start at `l4_offset`.
    Other,
}

/// Fragmentation info (IPv4 flags/offset or the IPv6 fragment header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// In 8-octet units.
    pub offset: u16,
    pub more: bool,
    pub id: u32,
}

/// A parsed packet. Offsets are into the frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    /// VLAN ID of the single 802.1Q tag, if any.
    pub vlan: Option<u16>,
    pub l3: L3,
    /// The L4 protocol (after IPv6 extension headers).
    pub proto: u8,
    /// `Some` if this is a fragment (MF set or non-zero offset, or any IPv6 fragment header).
    pub fragment: Option<Fragment>,
    /// UDP/TCP ports; 0 when there is no UDP/TCP header.
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
    pub l3_offset: usize,
    pub l4_offset: usize,
    pub payload_offset: usize,
    pub layout: Layout,
}

impl Parsed {
    pub fn src_ip(&self) -> IpAddr {
        match &self.l3 {
            L3::V4 { src, .. } => IpAddr::V4(*src),
            L3::V6 { src, .. } => IpAddr::V6(*src),
        }
    }

    pub fn dst_ip(&self) -> IpAddr {
        match &self.l3 {
            L3::V4 { dst, .. } => IpAddr::V4(*dst),
            L3::V6 { dst, .. } => IpAddr::V6(*dst),
        }
    }

    /// IPv4 TTL or IPv6 hop limit.
    pub fn ttl(&self) -> u8 {
        match &self.l3 {
            L3::V4 { ttl, .. } => *ttl,
            L3::V6 { hop_limit, .. } => *hop_limit,
        }
    }

    /// The L4 payload (for UDP, the UDP payload as bounded by the UDP length).
    pub fn payload<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        let end = match self.l4 {
            L4::Udp { len, .. } if self.fragment.is_none() => self.l4_offset + len as usize,
            _ => self.layout.end,
        };
        &bytes[self.payload_offset..end]
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn need(bytes: &[u8], end: usize, what: &str) -> Result<(), String> {
    if bytes.len() < end {
        Err(format!(
            "truncated {what}: packet has {} octets, the header needs {end}",
            bytes.len()
        ))
    } else {
        Ok(())
    }
}

/// Parse Ethernet (+ one 802.1Q tag), IPv4 / IPv6 (+ extension headers), UDP / TCP. Strict:
/// anything truncated or inconsistent (lengths past the end, bad version or IHL) is an Err.
pub fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    need(bytes, ETH_HLEN, "Ethernet header")?;
    let eth_dst: Mac = bytes[0..6].try_into().unwrap();
    let eth_src: Mac = bytes[6..12].try_into().unwrap();
    let mut ethertype = be16(bytes, 12);
    let mut l3_offset = ETH_HLEN;
    let mut vlan = None;
    let mut vlan_end = None;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        need(bytes, ETH_HLEN + VLAN_HLEN, "VLAN tag")?;
        vlan = Some(be16(bytes, 14) & 0x0fff);
        ethertype = be16(bytes, 16);
        l3_offset += VLAN_HLEN;
        vlan_end = Some(l3_offset);
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            return Err("stacked VLAN tags are not supported".into());
        }
    }
    let l3 = l3_offset;
    let (l3_hdr, proto, ip_end, end, l4_offset, fragment, ext_ends) = match ethertype {
        ETH_P_IPV4 => {
            need(bytes, l3 + IPV4_HLEN, "IPv4 header")?;
            let (version, ihl) = (bytes[l3] >> 4, (bytes[l3] & 0x0f) as usize * 4);
            if version != 4 {
                return Err(format!("IPv4 ethertype but IP version {version}"));
            }
            if ihl < IPV4_HLEN {
                return Err(format!("IPv4 IHL {} is below 5", ihl / 4));
            }
            need(bytes, l3 + ihl, "IPv4 options")?;
            let total_len = be16(bytes, l3 + 2);
            if (total_len as usize) < ihl {
                return Err(format!(
                    "IPv4 total length {total_len} is shorter than the header ({ihl})"
                ));
            }
            need(
                bytes,
                l3 + total_len as usize,
                "IPv4 datagram (total length)",
            )?;
            let frag = be16(bytes, l3 + 6);
            let (df, mf, frag_offset) = (frag & 0x4000 != 0, frag & 0x2000 != 0, frag & 0x1fff);
            let id = be16(bytes, l3 + 4);
            let fragment = (mf || frag_offset != 0).then_some(Fragment {
                offset: frag_offset,
                more: mf,
                id: id.into(),
            });
            let hdr = L3::V4 {
                src: Ipv4Addr::from(be32(bytes, l3 + 12)),
                dst: Ipv4Addr::from(be32(bytes, l3 + 16)),
                ttl: bytes[l3 + 8],
                tos: bytes[l3 + 1],
                id,
                df,
                mf,
                frag_offset,
                options: bytes[l3 + IPV4_HLEN..l3 + ihl].to_vec(),
                total_len,
                checksum: be16(bytes, l3 + 10),
            };
            (
                hdr,
                bytes[l3 + 9],
                l3 + ihl,
                l3 + total_len as usize,
                l3 + ihl,
                fragment,
                Vec::new(),
            )
        }
        ETH_P_IPV6 => {
            need(bytes, l3 + IPV6_HLEN, "IPv6 header")?;
            let vtf = be32(bytes, l3);
            if vtf >> 28 != 6 {
                return Err(format!("IPv6 ethertype but IP version {}", vtf >> 28));
            }
            let payload_len = be16(bytes, l3 + 4);
            if payload_len == 0 {
                return Err("IPv6 payload length 0 (jumbogram or empty) is not supported".into());
            }
            let end = l3 + IPV6_HLEN + payload_len as usize;
            need(bytes, end, "IPv6 datagram (payload length)")?;
            let mut next = bytes[l3 + 6];
            let mut off = l3 + IPV6_HLEN;
            let mut ext_headers = Vec::new();
            let mut ext_ends = Vec::new();
            let mut fragment = None;
            loop {
                let len = match next {
                    IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                        need(&bytes[..end], off + 2, "IPv6 extension header")?;
                        (bytes[off + 1] as usize + 1) * 8
                    }
                    IPPROTO_AH => {
                        need(&bytes[..end], off + 2, "IPv6 AH header")?;
                        (bytes[off + 1] as usize + 2) * 4
                    }
                    IPPROTO_FRAGMENT => 8,
                    _ => break,
                };
                need(&bytes[..end], off + len, "IPv6 extension header")?;
                if next == IPPROTO_FRAGMENT {
                    let of = be16(bytes, off + 2);
                    fragment = Some(Fragment {
                        offset: of >> 3,
                        more: of & 1 != 0,
                        id: be32(bytes, off + 4),
                    });
                }
                ext_headers.push(next);
                next = bytes[off];
                off += len;
                ext_ends.push(off);
            }
            let hdr = L3::V6 {
                src: Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[l3 + 8..l3 + 24]).unwrap()),
                dst: Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[l3 + 24..l3 + 40]).unwrap()),
                hop_limit: bytes[l3 + 7],
                traffic_class: (vtf >> 20) as u8,
                flow_label: vtf & 0xfffff,
                payload_len,
                ext_headers,
            };
            (hdr, next, l3 + IPV6_HLEN, end, off, fragment, ext_ends)
        }
        other => return Err(format!("ethertype {other:#06x} is neither IPv4 nor IPv6")),
    };

    let datagram = &bytes[..end];
    let not_first = fragment.is_some_and(|f| f.offset != 0);
    let (l4, sport, dport, l4_hdr_end) = match proto {
        _ if not_first => (L4::NotFirstFragment, 0, 0, None),
        IPPROTO_UDP => {
            need(datagram, l4_offset + UDP_HLEN, "UDP header")?;
            let len = be16(bytes, l4_offset + 4);
            if (len as usize) < UDP_HLEN {
                return Err(format!("UDP length {len} is below 8"));
            }
            if fragment.is_none() {
                need(
                    datagram,
                    l4_offset + len as usize,
                    "UDP datagram (UDP length)",
                )?;
            }
            let udp = L4::Udp {
                len,
                checksum: be16(bytes, l4_offset + 6),
            };
            (
                udp,
                be16(bytes, l4_offset),
                be16(bytes, l4_offset + 2),
                Some(l4_offset + UDP_HLEN),
            )
        }
        IPPROTO_TCP => {
            need(datagram, l4_offset + TCP_HLEN, "TCP header")?;
            let hdr_len = (bytes[l4_offset + 12] >> 4) as usize * 4;
            if hdr_len < TCP_HLEN {
                return Err(format!("TCP data offset {} is below 5", hdr_len / 4));
            }
            need(datagram, l4_offset + hdr_len, "TCP options")?;
            let tcp = L4::Tcp {
                seq: be32(bytes, l4_offset + 4),
                ack: be32(bytes, l4_offset + 8),
                flags: bytes[l4_offset + 13],
                window: be16(bytes, l4_offset + 14),
                checksum: be16(bytes, l4_offset + 16),
                hdr_len,
            };
            (
                tcp,
                be16(bytes, l4_offset),
                be16(bytes, l4_offset + 2),
                Some(l4_offset + hdr_len),
            )
        }
        _ => (L4::Other, 0, 0, None),
    };
    let payload_offset = l4_hdr_end.unwrap_or(l4_offset);
    Ok(Parsed {
        eth_dst,
        eth_src,
        vlan,
        l3: l3_hdr,
        proto,
        fragment,
        sport,
        dport,
        l4,
        l3_offset,
        l4_offset,
        payload_offset,
        layout: Layout {
            eth_end: ETH_HLEN,
            vlan_end,
            l3_offset,
            ip_end,
            ext_ends,
            l4_offset,
            l4_hdr_end,
            payload_offset,
            end,
        },
    })
}

/// What [`verify_checksums`] checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChecksumReport {
    /// The (valid) IPv4 header checksum; `None` for IPv6.
    pub ipv4_header: Option<u16>,
    pub l4: L4Checksum,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Checksum {
    /// The UDP/TCP checksum field, which verifies.
    Valid(u16),
    /// IPv4 UDP with checksum 0: sender computed none.
    UdpNone,
    /// Not verifiable from this packet alone (a fragment) or not UDP/TCP.
    NotChecked(&'static str),
}

/// Check the IPv4 header checksum and the UDP/TCP checksum (pseudo-header included, IPv6
/// extension headers excluded). An IPv4 UDP checksum of 0 is accepted as "none" and reported;
/// on IPv6 it is an error. Either one's-complement zero (0x0000 / 0xffff) verifies, as for a
/// receiving kernel. The Err names every wrong checksum with expected vs found.
pub fn verify_checksums(bytes: &[u8]) -> Result<ChecksumReport, String> {
    let p = parse(bytes)?;
    let mut errors = Vec::new();
    let ipv4_header = match &p.l3 {
        L3::V4 {
            checksum: found, ..
        } => {
            let hdr = &bytes[p.l3_offset..p.layout.ip_end];
            if fold(sum_bytes(0, hdr)) != 0xffff {
                let mut zeroed = hdr.to_vec();
                zeroed[10..12].fill(0);
                errors.push(format!(
                    "IPv4 header checksum is wrong: expected {:#06x}, found {found:#06x}",
                    checksum(&zeroed)
                ));
            }
            Some(*found)
        }
        L3::V6 { .. } => None,
    };
    let (field, is_udp, seg_end, found) = match p.l4 {
        _ if p.fragment.is_some() => (0, false, 0, None),
        L4::Udp { len, checksum } => (6, true, p.l4_offset + len as usize, Some(checksum)),
        L4::Tcp { checksum, .. } => (16, false, p.layout.end, Some(checksum)),
        _ => (0, false, 0, None),
    };
    let l4 = match found {
        None if p.fragment.is_some() => {
            L4Checksum::NotChecked("fragment: the L4 checksum covers the reassembled datagram")
        }
        None => L4Checksum::NotChecked("neither UDP nor TCP"),
        Some(0) if is_udp && matches!(p.l3, L3::V4 { .. }) => L4Checksum::UdpNone,
        Some(found) => {
            let seg = &bytes[p.l4_offset..seg_end];
            let pseudo = match &p.l3 {
                L3::V4 { src, dst, .. } => {
                    pseudo_header_v4(src.octets(), dst.octets(), p.proto, seg.len() as u16)
                }
                L3::V6 { src, dst, .. } => {
                    pseudo_header_v6(src.octets(), dst.octets(), p.proto, seg.len() as u32)
                }
            };
            let name = if is_udp { "UDP" } else { "TCP" };
            let mut zeroed = seg.to_vec();
            zeroed[field..field + 2].fill(0);
            let expected = !fold(sum_bytes(pseudo, &zeroed));
            let expected = if is_udp {
                udp_fixup(expected)
            } else {
                expected
            };
            if is_udp && found == 0 {
                errors.push(format!(
                    "IPv6 UDP checksum is 0, which IPv6 forbids (RFC 8200 §8.1): expected {expected:#06x}"
                ));
            } else if fold(sum_bytes(pseudo, seg)) != 0xffff {
                errors.push(format!(
                    "{name} checksum is wrong: expected {expected:#06x}, found {found:#06x}"
                ));
            }
            L4Checksum::Valid(found)
        }
    };
    if errors.is_empty() {
        Ok(ChecksumReport { ipv4_header, l4 })
    } else {
        Err(errors.join("; "))
    }
}

/// Space-separated lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Named byte ranges of a parsed packet, for [`hex_diff`].
fn fields(p: &Parsed) -> Vec<(usize, usize, String)> {
    let mut f: Vec<(usize, usize, String)> = Vec::new();
    let mut add =
        |start: usize, len: usize, name: &str| f.push((start, start + len, name.to_string()));
    add(0, 6, "eth.dst");
    add(6, 6, "eth.src");
    if p.vlan.is_some() {
        add(12, 2, "vlan.tpid");
        add(14, 2, "vlan.tci");
        add(16, 2, "eth.type");
    } else {
        add(12, 2, "eth.type");
    }
    let l3 = p.l3_offset;
    match &p.l3 {
        L3::V4 { .. } => {
            for (o, n, name) in [
                (0, 1, "ipv4.ver_ihl"),
                (1, 1, "ipv4.tos"),
                (2, 2, "ipv4.total_len"),
                (4, 2, "ipv4.id"),
                (6, 2, "ipv4.frag"),
                (8, 1, "ipv4.ttl"),
                (9, 1, "ipv4.proto"),
                (10, 2, "ipv4.checksum"),
                (12, 4, "ipv4.src"),
                (16, 4, "ipv4.dst"),
            ] {
                add(l3 + o, n, name);
            }
            add(
                l3 + IPV4_HLEN,
                p.layout.ip_end - l3 - IPV4_HLEN,
                "ipv4.options",
            );
        }
        L3::V6 { ext_headers, .. } => {
            for (o, n, name) in [
                (0, 4, "ipv6.ver_tc_flow"),
                (4, 2, "ipv6.payload_len"),
                (6, 1, "ipv6.next_hdr"),
                (7, 1, "ipv6.hop_limit"),
                (8, 16, "ipv6.src"),
                (24, 16, "ipv6.dst"),
            ] {
                add(l3 + o, n, name);
            }
            let mut start = p.layout.ip_end;
            for (kind, &end) in ext_headers.iter().zip(&p.layout.ext_ends) {
                add(start, end - start, &format!("ipv6.ext[{kind}]"));
                start = end;
            }
        }
    }
    let l4 = p.l4_offset;
    match p.l4 {
        L4::Udp { .. } => {
            for (o, n, name) in [
                (0, 2, "udp.sport"),
                (2, 2, "udp.dport"),
                (4, 2, "udp.len"),
                (6, 2, "udp.checksum"),
            ] {
                add(l4 + o, n, name);
            }
        }
        L4::Tcp { hdr_len, .. } => {
            for (o, n, name) in [
                (0, 2, "tcp.sport"),
                (2, 2, "tcp.dport"),
                (4, 4, "tcp.seq"),
                (8, 4, "tcp.ack"),
                (12, 1, "tcp.data_off"),
                (13, 1, "tcp.flags"),
                (14, 2, "tcp.window"),
                (16, 2, "tcp.checksum"),
                (18, 2, "tcp.urgent"),
            ] {
                add(l4 + o, n, name);
            }
            add(l4 + TCP_HLEN, hdr_len - TCP_HLEN, "tcp.options");
        }
        _ => {}
    }
    add(p.payload_offset, p.layout.end - p.payload_offset, "payload");
    f.retain(|(s, e, _)| e > s);
    f
}

/// Human-readable diff of two packets for assertion messages: one line per run of differing
/// octets within a field (fields named from the expected packet when it parses), with
/// offsets, expected and got bytes. Empty-handed comparisons say "identical".
pub fn hex_diff(expected: &[u8], got: &[u8]) -> String {
    const MAX_RUNS: usize = 40;
    let layout_of = parse(expected).or_else(|_| parse(got)).ok();
    let fields = layout_of.as_ref().map(fields).unwrap_or_default();
    let field_at = |off: usize| -> &str {
        fields
            .iter()
            .find(|(s, e, _)| (*s..*e).contains(&off))
            .map_or(
                if off >= layout_of.as_ref().map_or(usize::MAX, |p| p.layout.end) {
                    "trailer"
                } else {
                    "?"
                },
                |(_, _, n)| n.as_str(),
            )
    };
    let mut out = String::new();
    let max = expected.len().max(got.len());
    let differs = |i: usize| expected.get(i) != got.get(i);
    if expected.len() == got.len() && !(0..max).any(differs) {
        return format!("packets are identical ({} octets)", expected.len());
    }
    let _ = writeln!(
        out,
        "expected {} octets, got {} octets",
        expected.len(),
        got.len()
    );
    let side = |b: &[u8], s: usize, e: usize| -> String {
        (s..e)
            .map(|i| b.get(i).map_or("--".to_string(), |x| format!("{x:02x}")))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut i = 0;
    let mut runs = 0;
    while i < max {
        if !differs(i) {
            i += 1;
            continue;
        }
        let name = field_at(i);
        let start = i;
        while i < max && differs(i) && field_at(i) == name && i - start < 16 {
            i += 1;
        }
        runs += 1;
        if runs > MAX_RUNS {
            let rest = (i..max).filter(|&j| differs(j)).count() + (i - start);
            let _ = writeln!(out, "  ... and {rest} more differing octets");
            break;
        }
        let _ = writeln!(
            out,
            "  {start:#06x}..{i:#06x} {name:<18} expected [{}] got [{}]",
            side(expected, start, i),
            side(got, start, i)
        );
    }
    out
}

/// QUIC packets as UDP payload bytes (RFC 9000 §17). Payload "filler" is the deterministic
/// pattern 0, 1, 2, ... (mod 256) so diffs stay readable; headers are not protected.
pub mod quic {
    /// Short header spin bit.
    pub const SPIN_BIT: u8 = 0x20;
    /// Short header key phase bit.
    pub const KEY_PHASE: u8 = 0x04;
    pub const VERSION_1: u32 = 1;

    /// Long header packet types (RFC 9000 §17.2, version 1 numbering).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum LongType {
        Initial = 0,
        ZeroRtt = 1,
        Handshake = 2,
        Retry = 3,
    }

    pub fn filler(len: usize) -> Vec<u8> {
        (0..len).map(|i| i as u8).collect()
    }

    /// A QUIC variable-length integer in its shortest encoding.
    pub fn varint(v: u64) -> Vec<u8> {
        let n = match v {
            0..=0x3f => 1,
            0x40..=0x3fff => 2,
            0x4000..=0x3fff_ffff => 4,
            _ => 8,
        };
        varint_sized(v, n)
    }

    /// A QUIC varint in exactly `n` octets (1, 2, 4 or 8), e.g. the 2-octet Length most
    /// clients send even for small values.
    pub fn varint_sized(v: u64, n: usize) -> Vec<u8> {
        let (prefix, max) = match n {
            1 => (0u64, 0x3f),
            2 => (1, 0x3fff),
            4 => (2, 0x3fff_ffff),
            8 => (3, 0x3fff_ffff_ffff_ffff),
            _ => panic!("a QUIC varint is 1, 2, 4 or 8 octets, not {n}"),
        };
        assert!(v <= max, "{v} does not fit a {n}-octet QUIC varint");
        let wire = (prefix << (8 * n - 2)) | v;
        wire.to_be_bytes()[8 - n..].to_vec()
    }

    /// Short header: `0x40 | bits`, DCID, then `payload_len` filler octets (packet number and
    /// protected payload). The receiver must know the DCID length.
    pub fn short(dcid: &[u8], payload_len: usize) -> Vec<u8> {
        short_with_bits(0, dcid, payload_len)
    }

    /// Short header with the low six bits of the first octet set (e.g. `SPIN_BIT | KEY_PHASE`).
    pub fn short_with_bits(bits: u8, dcid: &[u8], payload_len: usize) -> Vec<u8> {
        let mut out = vec![0x40 | (bits & 0x3f)];
        out.extend_from_slice(dcid);
        out.extend(filler(payload_len));
        out
    }

    /// A long header packet; build with [`Long::build`].
    #[derive(Clone, Debug)]
    #[must_use]
    pub struct Long {
        pub ty: LongType,
        pub version: u32,
        pub dcid: Vec<u8>,
        pub scid: Vec<u8>,
        /// Initial: the token; Retry: the retry token. Must be empty for 0-RTT / Handshake.
        pub token: Vec<u8>,
        /// Octets after the Length field (packet number + payload); ignored for Retry.
        pub payload_len: usize,
        /// Encoded size of the Length varint (default: shortest).
        pub length_size: Option<usize>,
    }

    impl Long {
        pub fn new(ty: LongType, dcid: &[u8], scid: &[u8]) -> Long {
            Long {
                ty,
                version: VERSION_1,
                dcid: dcid.to_vec(),
                scid: scid.to_vec(),
                token: Vec::new(),
                payload_len: 0,
                length_size: None,
            }
        }

        pub fn version(mut self, version: u32) -> Self {
            self.version = version;
            self
        }

        pub fn token(mut self, token: &[u8]) -> Self {
            self.token = token.to_vec();
            self
        }

        pub fn payload_len(mut self, len: usize) -> Self {
            self.payload_len = len;
            self
        }

        pub fn length_size(mut self, octets: usize) -> Self {
            self.length_size = Some(octets);
            self
        }

        pub fn build(&self) -> Vec<u8> {
            assert!(
                self.dcid.len() <= 255 && self.scid.len() <= 255,
                "connection IDs are at most 255 octets"
            );
            let mut out = vec![0x80 | 0x40 | ((self.ty as u8) << 4)];
            out.extend_from_slice(&self.version.to_be_bytes());
            out.push(self.dcid.len() as u8);
            out.extend_from_slice(&self.dcid);
            out.push(self.scid.len() as u8);
            out.extend_from_slice(&self.scid);
            match self.ty {
                LongType::Retry => {
                    out.extend_from_slice(&self.token);
                    out.extend(filler(16)); // Retry integrity tag
                    return out;
                }
                LongType::Initial => {
                    out.extend(varint(self.token.len() as u64));
                    out.extend_from_slice(&self.token);
                }
                LongType::ZeroRtt | LongType::Handshake => {
                    assert!(
                        self.token.is_empty(),
                        "only Initial and Retry packets carry a token"
                    );
                }
            }
            let len = self.payload_len as u64;
            out.extend(
                self.length_size
                    .map_or_else(|| varint(len), |n| varint_sized(len, n)),
            );
            out.extend(filler(self.payload_len));
            out
        }
    }

    /// Version 1 Initial.
    pub fn initial(dcid: &[u8], scid: &[u8], token: &[u8], payload_len: usize) -> Vec<u8> {
        Long::new(LongType::Initial, dcid, scid)
            .token(token)
            .payload_len(payload_len)
            .build()
    }

    /// Version 1 0-RTT.
    pub fn zero_rtt(dcid: &[u8], scid: &[u8], payload_len: usize) -> Vec<u8> {
        Long::new(LongType::ZeroRtt, dcid, scid)
            .payload_len(payload_len)
            .build()
    }

    /// Version 1 Handshake.
    pub fn handshake(dcid: &[u8], scid: &[u8], payload_len: usize) -> Vec<u8> {
        Long::new(LongType::Handshake, dcid, scid)
            .payload_len(payload_len)
            .build()
    }

    /// Version 1 Retry: token then a 16-octet filler integrity tag.
    pub fn retry(dcid: &[u8], scid: &[u8], token: &[u8]) -> Vec<u8> {
        Long::new(LongType::Retry, dcid, scid).token(token).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_A: Mac = [0x02, 0, 0, 0, 0, 0x01];
    const MAC_B: Mac = [0x02, 0, 0, 0, 0, 0x02];
    const V4_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const V4_B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// Reference RFC 1071 sum written independently of lb_common (plain u64 accumulation).
    fn ref_csum(chunks: &[&[u8]]) -> u16 {
        let data: Vec<u8> = chunks.concat();
        let mut sum: u64 = 0;
        for c in data.chunks(2) {
            sum += u64::from(c[0]) << 8 | u64::from(*c.get(1).unwrap_or(&0));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn roundtrip(pkt: &Packet) -> (Vec<u8>, Parsed) {
        let (bytes, layout) = pkt.build_with_layout();
        let p = parse(&bytes).unwrap_or_else(|e| panic!("parse failed: {e}\n{}", hex(&bytes)));
        assert_eq!(
            p.layout, layout,
            "parser and builder disagree on the layout"
        );
        verify_checksums(&bytes).unwrap_or_else(|e| panic!("{e}\n{}", hex(&bytes)));
        (bytes, p)
    }

    // Known-good bytes, cross-checked with scapy 2.8:
    // Ether(src="02:00:00:00:00:01",dst="02:00:00:00:00:02")/IP(src="198.18.0.1",
    // dst="198.18.1.10",id=0x1234,flags="DF",ttl=64)/UDP(sport=40000,dport=443)/b"\x40hello"
    #[test]
    fn packet_ipv4_udp_known_bytes() {
        let got = Packet::eth(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B)
            .ip_id(0x1234)
            .df(true)
            .udp(40000, 443)
            .payload(b"\x40hello")
            .build();
        let want: Vec<u8> = [
            &[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00][..],
            &[
                0x45, 0x00, 0x00, 0x22, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x9b, 0x67,
            ],
            &[198, 18, 0, 1, 198, 18, 1, 10],
            &[0x9c, 0x40, 0x01, 0xbb, 0x00, 0x0e, 0xc2, 0x62],
            b"\x40hello",
        ]
        .concat();
        assert_eq!(got, want, "\n{}", hex_diff(&want, &got));
        // Independent recomputation of both checksums.
        assert_eq!(ref_csum(&[&got[14..24], &[0, 0], &got[26..34]]), 0x9b67);
        let pseudo = [&got[26..34], &[0, 17, 0, 14][..]].concat();
        assert_eq!(
            ref_csum(&[&pseudo, &got[34..40], &[0, 0], &got[42..]]),
            0xc262
        );
        let r = verify_checksums(&got).unwrap();
        assert_eq!(
            r,
            ChecksumReport {
                ipv4_header: Some(0x9b67),
                l4: L4Checksum::Valid(0xc262)
            }
        );
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Bytes produced by scapy 2.8 for the same packets (E = Ether(src=02:..:01, dst=02:..:02)).
    #[test]
    fn packet_known_bytes_cross_checked_with_scapy() {
        let cases = [
            (
                // E/Dot1Q(vlan=100)/IP(src,dst,ttl=7,tos=0xb8,id=0xbeef,options=[94040000, 01])
                //  /UDP(40000,443)/short header
                Packet::eth(MAC_A, MAC_B)
                    .vlan(100)
                    .ipv4(V4_A, V4_B)
                    .ttl(7)
                    .tos(0xb8)
                    .ip_id(0xbeef)
                    .ip_options(&[0x94, 0x04, 0x00, 0x00, 0x01])
                    .udp(40000, 443)
                    .payload(quic::short(&[1, 2, 3, 4, 5, 6, 7, 8], 20)),
                "02000000000202000000000181000064080047b80041beef00000711cfd0c6120001c612010a9404\
                 0000010000009c4001bb00251c0e400102030405060708000102030405060708090a0b0c0d0e0f10\
                 111213",
            ),
            (
                // E/IPv6(hlim=3,tc=0x2e,fl=0xabcde)/HopByHop(RouterAlert)/DestOpt()
                //  /Routing(type=0)/UDP(5555,443)/Initial
                Packet::eth(MAC_A, MAC_B)
                    .ipv6(v6("fd00::1"), v6("fd00:1::10"))
                    .hop_limit(3)
                    .tos(0x2e)
                    .flow_label(0xabcde)
                    .hop_by_hop(&[0x05, 0x02, 0, 0])
                    .dest_opts(&[])
                    .ext6(Ext6::Raw {
                        kind: IPPROTO_ROUTING,
                        body: vec![0, 0],
                    })
                    .udp(5555, 443)
                    .payload(quic::initial(&[0xaa; 8], &[0xbb; 4], b"tok", 30)),
                "02000000000202000000000186dd62eabcde00560003fd000000000000000000000000000001fd00\
                 00010000000000000000000000103c000502000001002b0001040000000011000000000000001\
                 5b301bb003e5453c00000000108aaaaaaaaaaaaaaaa04bbbbbbbb03746f6b1e000102030405060708\
                 090a0b0c0d0e0f101112131415161718191a1b1c1d",
            ),
            (
                // E/IPv6/IPv6ExtHdrFragment(m=1,id=0xdeadbeef)/TCP(1,2,flags=S)/b"xyz"
                Packet::eth(MAC_A, MAC_B)
                    .ipv6(v6("fd00::1"), v6("fd00::2"))
                    .fragment6(0, true, 0xdeadbeef)
                    .tcp(1, 2)
                    .flags(tcp_flags::SYN)
                    .payload(b"xyz"),
                "02000000000202000000000186dd60000000001f2c40fd000000000000000000000000000001fd00\
                 000000000000000000000000000206000001deadbeef0001000200000000000000005002ffffc35e\
                 000078797a",
            ),
        ];
        for (pkt, want) in cases {
            let want = unhex(want);
            let got = pkt.build();
            assert_eq!(got, want, "\n{}", hex_diff(&want, &got));
        }
    }

    // scapy: Ether(...)/IPv6(src="fd00::1",dst="fd00::2",hlim=64)/TCP(sport=1234,dport=80,
    // seq=1,ack=2,flags="SA",window=1024)/b"hi"
    #[test]
    fn packet_ipv6_tcp_known_bytes() {
        let got = Packet::eth(MAC_A, MAC_B)
            .ipv6(v6("fd00::1"), v6("fd00::2"))
            .tcp(1234, 80)
            .seq(1)
            .ack(2)
            .flags(tcp_flags::SYN | tcp_flags::ACK)
            .window(1024)
            .payload(b"hi")
            .build();
        let mut want = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x86, 0xdd];
        want.extend_from_slice(&[0x60, 0, 0, 0, 0x00, 0x16, 0x06, 0x40]);
        want.extend_from_slice(&v6("fd00::1").octets());
        want.extend_from_slice(&v6("fd00::2").octets());
        want.extend_from_slice(&[
            0x04, 0xd2, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x12, 0x04, 0x00,
        ]);
        want.extend_from_slice(&[0x44, 0x3e, 0x00, 0x00, b'h', b'i']);
        assert_eq!(got, want, "\n{}", hex_diff(&want, &got));
        let pseudo = [&got[22..54], &[0, 0, 0, 22, 0, 0, 0, 6][..]].concat();
        assert_eq!(
            ref_csum(&[&pseudo, &got[54..70], &[0, 0], &got[72..]]),
            0x443e
        );
    }

    #[test]
    fn packet_checksum_verification_catches_flips() {
        let pkt = Packet::eth(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B)
            .udp(1, 2)
            .payload([9u8; 21])
            .build();
        verify_checksums(&pkt).unwrap();
        let mut bad = pkt.clone();
        *bad.last_mut().unwrap() ^= 0x01;
        let e = verify_checksums(&bad).unwrap_err();
        assert!(e.starts_with("UDP checksum is wrong: expected"), "{e}");
        let mut bad = pkt.clone();
        bad[14 + 8] ^= 0x01; // TTL
        let e = verify_checksums(&bad).unwrap_err();
        assert!(
            e.starts_with("IPv4 header checksum is wrong") && !e.contains("UDP"),
            "{e}"
        );
        let mut bad = pkt.clone();
        bad[14 + 12] ^= 0x80; // source address: both checksums break
        let e = verify_checksums(&bad).unwrap_err();
        assert!(e.contains("IPv4 header") && e.contains("UDP"), "{e}");

        for ip6 in [false, true] {
            let b = Packet::eth(MAC_A, MAC_B);
            let b = if ip6 {
                b.ipv6(v6("fd00::1"), v6("fd00::2"))
            } else {
                b.ipv4(V4_A, V4_B)
            };
            let mut tcp = b.tcp(5, 6).flags(tcp_flags::ACK).payload(b"abc").build();
            verify_checksums(&tcp).unwrap();
            let n = tcp.len();
            tcp[n - 2] ^= 0x10;
            let e = verify_checksums(&tcp).unwrap_err();
            assert!(e.starts_with("TCP checksum is wrong"), "{e}");
        }
    }

    #[test]
    fn packet_udp_zero_checksum() {
        let pkt = Packet::eth(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B)
            .udp(1, 2)
            .udp_no_checksum()
            .payload(b"x")
            .build();
        assert_eq!(&pkt[40..42], &[0, 0]);
        assert_eq!(verify_checksums(&pkt).unwrap().l4, L4Checksum::UdpNone);
        let pkt = Packet::eth(MAC_A, MAC_B)
            .ipv6(v6("fd00::1"), v6("fd00::2"))
            .udp(1, 2)
            .udp_no_checksum()
            .build();
        let e = verify_checksums(&pkt).unwrap_err();
        assert!(e.contains("IPv6 forbids"), "{e}");
    }

    #[test]
    fn packet_udp_checksum_never_zero_on_the_wire() {
        // Find a payload whose checksum computes to 0 and check it is sent as 0xffff.
        let base = Packet::eth(MAC_A, MAC_B).ipv4(V4_A, V4_B).udp(1000, 2000);
        let probe = base.clone().payload([0u8, 0]).l4_checksum(0).build();
        let p = parse(&probe).unwrap();
        let seg = &probe[p.l4_offset..];
        let sum = fold(sum_bytes(
            pseudo_header_v4(V4_A.octets(), V4_B.octets(), 17, seg.len() as u16),
            seg,
        ));
        // Payload word w makes the total sum 0xffff (checksum 0) when w = !sum in ones' complement.
        let w = !sum;
        let pkt = base.payload(w.to_be_bytes()).build();
        assert_eq!(&pkt[40..42], &[0xff, 0xff]);
        assert_eq!(
            verify_checksums(&pkt).unwrap().l4,
            L4Checksum::Valid(0xffff)
        );
    }

    #[test]
    fn packet_vlan_and_ipv4_options_roundtrip() {
        let pkt = Packet::eth(MAC_A, MAC_B)
            .vlan(100)
            .ipv4(V4_A, V4_B)
            .ttl(7)
            .tos(0xb8)
            .ip_id(0xbeef)
            .mf(true)
            .ip_options(&[0x94, 0x04, 0x00]) // router alert, 3 of 4 octets: one pad octet
            .udp(40000, 443)
            .payload(quic::short(&[1, 2, 3, 4, 5, 6, 7, 8], 20));
        let (bytes, p) = roundtrip(&pkt);
        assert_eq!(&bytes[12..18], &[0x81, 0x00, 0x00, 0x64, 0x08, 0x00]);
        assert_eq!(bytes[18], 0x46, "IHL 6 for 4 octets of options");
        assert_eq!(p.vlan, Some(100));
        assert_eq!(
            p.l3,
            L3::V4 {
                src: V4_A,
                dst: V4_B,
                ttl: 7,
                tos: 0xb8,
                id: 0xbeef,
                df: false,
                mf: true,
                frag_offset: 0,
                options: vec![0x94, 0x04, 0x00, 0x00],
                total_len: (24 + 8 + 29) as u16,
                checksum: be16(&bytes, 28),
            }
        );
        assert_eq!(
            p.fragment,
            Some(Fragment {
                offset: 0,
                more: true,
                id: 0xbeef
            })
        );
        // A first fragment still has its UDP header but its checksum is not checkable alone.
        assert_eq!((p.proto, p.sport, p.dport), (17, 40000, 443));
        assert!(matches!(
            verify_checksums(&bytes).unwrap().l4,
            L4Checksum::NotChecked(_)
        ));
        assert_eq!(p.payload(&bytes)[0], 0x40);
        assert_eq!(p.layout.boundaries(), vec![14, 18, 42, 50]);
        assert_eq!(boundaries(&bytes).unwrap(), vec![14, 18, 42, 50]);
        assert_eq!(p.ttl(), 7);
        assert_eq!(p.dst_ip(), IpAddr::V4(V4_B));
    }

    #[test]
    fn packet_ipv4_non_first_fragment() {
        let pkt = Packet::eth(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B)
            .ip_id(7)
            .frag_offset(185)
            .raw(IPPROTO_UDP)
            .payload([0xaa; 16]);
        let (bytes, p) = roundtrip(&pkt);
        assert_eq!(&bytes[20..22], &[0x00, 0xb9]);
        assert_eq!(p.l4, L4::NotFirstFragment);
        assert_eq!((p.sport, p.dport, p.payload_offset), (0, 0, 34));
        assert_eq!(p.layout.boundaries(), vec![14, 34]);
    }

    #[test]
    fn packet_ipv6_extension_headers_roundtrip() {
        let pkt = Packet::eth(MAC_A, MAC_B)
            .vlan(4095)
            .ipv6(v6("fd00::1"), v6("fd00:1::10"))
            .hop_limit(3)
            .tos(0x2e)
            .flow_label(0xabcde)
            .hop_by_hop(&[0x05, 0x02, 0x00, 0x00]) // router alert: 2+4 -> PadN 2
            .dest_opts(&[]) // 2 octets -> PadN 6
            .fragment6(0, true, 0xdeadbeef)
            .ext6(Ext6::Raw {
                kind: IPPROTO_ROUTING,
                body: vec![0, 0],
            })
            .udp(5555, 443)
            .payload(quic::initial(&[0xaa; 8], &[0xbb; 4], b"tok", 30));
        let (bytes, p) = roundtrip(&pkt);
        let l3 = 18;
        assert_eq!(&bytes[l3..l3 + 4], &[0x62, 0xea, 0xbc, 0xde]);
        assert_eq!(bytes[l3 + 6], IPPROTO_HOPOPTS);
        let e = l3 + 40;
        // hop-by-hop: next = dest opts, len 0, router alert, PadN(0)
        assert_eq!(&bytes[e..e + 8], &[60, 0, 0x05, 0x02, 0, 0, 0x01, 0x00]);
        // dest opts: next = fragment, len 0, PadN(4)
        assert_eq!(&bytes[e + 8..e + 16], &[44, 0, 0x01, 0x04, 0, 0, 0, 0]);
        // fragment: next = routing, offset 0, M, id
        assert_eq!(
            &bytes[e + 16..e + 24],
            &[43, 0, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef]
        );
        // routing (raw): next = UDP
        assert_eq!(&bytes[e + 24..e + 32], &[17, 0, 0, 0, 0, 0, 0, 0]);
        let L3::V6 {
            ext_headers,
            payload_len,
            hop_limit,
            traffic_class,
            flow_label,
            ..
        } = &p.l3
        else {
            panic!()
        };
        assert_eq!(ext_headers, &vec![0, 60, 44, 43]);
        assert_eq!(
            (*hop_limit, *traffic_class, *flow_label),
            (3, 0x2e, 0xabcde)
        );
        assert_eq!(*payload_len as usize, bytes.len() - l3 - 40);
        assert_eq!(
            p.fragment,
            Some(Fragment {
                offset: 0,
                more: true,
                id: 0xdeadbeef
            })
        );
        assert_eq!(
            (p.proto, p.sport, p.dport, p.l4_offset),
            (17, 5555, 443, e + 32)
        );
        assert_eq!(p.layout.boundaries(), vec![14, 18, 58, 66, 74, 82, 90, 98]);

        // Without the fragment header the UDP checksum is checked, over the UDP part only.
        let pkt = Packet::eth(MAC_A, MAC_B)
            .ipv6(v6("fd00::1"), v6("fd00::2"))
            .hop_by_hop(&[0x01, 0x00]) // PadN(0) given explicitly; 4 octets total -> pad to 8
            .dest_opts(&[0x01, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) // 14 octets -> Pad1 + ...
            .udp(1, 2)
            .payload(b"q");
        let (bytes, p) = roundtrip(&pkt);
        assert_eq!(p.layout.ext_ends, vec![62, 78]);
        assert_eq!(
            &bytes[62..78],
            &[17, 1, 0x01, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00]
        );
        let pseudo = [&bytes[22..54], &[0, 0, 0, 9, 0, 0, 0, 17][..]].concat();
        assert_eq!(
            ref_csum(&[&pseudo, &bytes[78..84], &[0, 0], &bytes[86..]]),
            be16(&bytes, 84)
        );
        assert!(matches!(
            verify_checksums(&bytes).unwrap().l4,
            L4Checksum::Valid(_)
        ));
    }

    #[test]
    fn packet_ipv6_non_first_fragment() {
        let pkt = Packet::eth(MAC_A, MAC_B)
            .ipv6(v6("fd00::1"), v6("fd00::2"))
            .fragment6(100, false, 1)
            .raw(IPPROTO_UDP)
            .payload([1u8; 24]);
        let (bytes, p) = roundtrip(&pkt);
        assert_eq!(&bytes[54..62], &[17, 0, 0x03, 0x20, 0, 0, 0, 1]);
        assert_eq!(p.l4, L4::NotFirstFragment);
        assert_eq!(
            p.fragment,
            Some(Fragment {
                offset: 100,
                more: false,
                id: 1
            })
        );
    }

    #[test]
    fn packet_tcp_roundtrip_and_boundaries() {
        for vlan in [None, Some(1)] {
            let mut b = Packet::eth(MAC_A, MAC_B);
            if let Some(v) = vlan {
                b = b.vlan(v);
            }
            let pkt = b
                .ipv4(V4_A, V4_B)
                .tcp(443, 55000)
                .seq(0xdeadbeef)
                .ack(0x01020304)
                .flags(tcp_flags::FIN | tcp_flags::PSH | tcp_flags::ACK | tcp_flags::RST)
                .window(512)
                .payload(b"data");
            let (bytes, p) = roundtrip(&pkt);
            assert_eq!(
                p.l4,
                L4::Tcp {
                    seq: 0xdeadbeef,
                    ack: 0x01020304,
                    flags: 0x1d,
                    window: 512,
                    checksum: be16(&bytes, p.l4_offset + 16),
                    hdr_len: 20
                }
            );
            let v = if vlan.is_some() { 4 } else { 0 };
            let mut want = vec![14];
            if vlan.is_some() {
                want.push(18);
            }
            want.extend([34 + v, 54 + v]);
            assert_eq!(p.layout.boundaries(), want);
            // Every truncation at or inside a header is an error, not a panic; cutting the
            // payload is caught by the IP length check.
            for cut in 0..bytes.len() {
                assert!(parse(&bytes[..cut]).is_err(), "cut at {cut} parsed");
            }
            // Ethernet padding after the datagram is ignored.
            let mut padded = bytes.clone();
            padded.resize(80, 0);
            assert_eq!(parse(&padded).unwrap().layout, p.layout);
            verify_checksums(&padded).unwrap();
        }
    }

    #[test]
    fn packet_non_ip_frame() {
        let arp = Packet::eth(MAC_A, [0xff; 6])
            .ethertype(0x0806)
            .payload([0u8; 28])
            .build();
        assert_eq!(arp.len(), 42);
        assert_eq!(&arp[12..14], &[0x08, 0x06]);
        assert!(parse(&arp).unwrap_err().contains("0x0806"));
    }

    #[test]
    #[should_panic(expected = "IPv4-only settings")]
    fn packet_rejects_v4_options_on_v6() {
        let _ = Packet::eth(MAC_A, MAC_B)
            .ipv6(v6("fd00::1"), v6("fd00::2"))
            .df(true)
            .udp(1, 2)
            .build();
    }

    #[test]
    fn packet_quic_short_and_long() {
        let dcid = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
        let s = quic::short_with_bits(quic::SPIN_BIT | quic::KEY_PHASE, &dcid, 4);
        assert_eq!(
            s,
            vec![
                0x64, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0, 1, 2, 3
            ]
        );
        assert_eq!(quic::short(&dcid, 0)[0], 0x40);

        let i = quic::initial(&[0xd1, 0xd2], &[0x51], b"TK", 3);
        assert_eq!(
            i,
            vec![
                0xc0, 0, 0, 0, 1, 2, 0xd1, 0xd2, 1, 0x51, 2, b'T', b'K', 3, 0, 1, 2
            ]
        );
        let i = quic::Long::new(quic::LongType::Initial, &[], &[])
            .version(0xff00_001d)
            .payload_len(1200)
            .length_size(4)
            .build();
        assert_eq!(
            &i[..13],
            &[0xc0, 0xff, 0, 0, 0x1d, 0, 0, 0, 0x80, 0, 0x04, 0xb0, 0]
        );
        assert_eq!(i.len(), 12 + 1200);
        let z = quic::zero_rtt(&[1], &[2], 64);
        assert_eq!(&z[..11], &[0xd0, 0, 0, 0, 1, 1, 1, 1, 2, 0x40, 0x40]);
        let h = quic::handshake(&[9; 20], &[], 0);
        assert_eq!((h[0], h[5], h[26], h[27], h.len()), (0xe0, 20, 0, 0, 28));
        let r = quic::retry(&[1], &[2, 3], b"token");
        assert_eq!(
            &r[..15],
            &[
                0xf0, 0, 0, 0, 1, 1, 1, 2, 2, 3, b't', b'o', b'k', b'e', b'n'
            ]
        );
        assert_eq!(r.len(), 15 + 16);
    }

    #[test]
    fn packet_quic_varints() {
        assert_eq!(quic::varint(37), vec![0x25]);
        assert_eq!(quic::varint(15293), vec![0x7b, 0xbd]);
        assert_eq!(quic::varint(494878333), vec![0x9d, 0x7f, 0x3e, 0x7d]);
        assert_eq!(
            quic::varint(151288809941952652),
            vec![0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]
        );
        assert_eq!(quic::varint_sized(37, 2), vec![0x40, 0x25]);
    }

    #[test]
    fn packet_hex_diff_names_fields() {
        let a = Packet::eth(MAC_A, MAC_B)
            .ipv4(V4_A, V4_B)
            .udp(1, 443)
            .payload(b"abc")
            .build();
        let b = Packet::eth(MAC_A, MAC_B)
            .ipv4(V4_A, "198.18.2.2".parse().unwrap())
            .udp(1, 443)
            .payload(b"abc")
            .build();
        assert_eq!(hex_diff(&a, &a), "packets are identical (45 octets)");
        let d = hex_diff(&a, &b);
        assert!(d.contains("ipv4.checksum"), "{d}");
        assert!(
            d.contains("0x0020..0x0022 ipv4.dst           expected [01 0a] got [02 02]"),
            "{d}"
        );
        assert!(d.contains("udp.checksum"), "{d}");
        let d = hex_diff(&a, &a[..40]);
        assert!(
            d.contains("expected 45 octets, got 40 octets") && d.contains("got [-- --]"),
            "{d}"
        );
    }
}
