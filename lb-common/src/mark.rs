//! The steering mark: how a node that steers a flow to a backend behind another node tells
//! that node which VIP the flow came in on, so its reverse NAT can answer from the VIP.
//!
//! The XDP program of the steering node inserts the mark right after the fixed IP header of
//! every packet it forwards to a backend that is not behind one of its own backend-facing
//! interfaces; the XDP program of the node in front of the backend removes it, records the
//! flow in its reply table and delivers the packet as the client sent it (destination
//! rewritten). The packet's destination stays the backend, so ordinary routing between
//! the nodes carries it, and no tunnel device is needed.
//!
//! - **IPv4**: one 8-octet option, type 158 (0x9e: an RFC 4727 experimental value with the
//!   copied flag set, so fragments keep it), length 8, the VIP port and the VIP address.
//!   Inserted before any option the packet already had; the header grows by 8 octets.
//! - **IPv6**: a 24-octet Destination Options header (next header 60,
//!   [`NEXTHDR_DSTOPTS`](crate::wire::NEXTHDR_DSTOPTS)) in front of the upper-layer header,
//!   holding one option of type 0x1e (RFC 4727 experimental; the top bits 00 tell a host
//!   that does not know it to skip it, and the change bit is clear) of 18 octets (port,
//!   address), then a 2-octet PadN.
//!
//! Neither changes the TCP/UDP checksum: the pseudo-header holds the addresses, the
//! upper-layer length and the upper-layer protocol, none of which the mark touches. The
//! IPv4 header checksum is updated for the new IHL, total length and option words.
//!
//! Pure functions over bytes, shared by the XDP program and userspace (tests, the packet
//! builder).

/// IPv4 option type of the mark.
pub const IPV4_OPTION_TYPE: u8 = 0x9e;
/// Octets the mark adds to an IPv4 packet (one option: type, length, port, address).
pub const IPV4_LEN: usize = 8;
/// Option type of the mark inside the Destination Options header.
pub const IPV6_OPTION_TYPE: u8 = 0x1e;
/// Octets the mark adds to an IPv6 packet (the whole Destination Options header).
pub const IPV6_LEN: usize = 24;
/// The option's data length inside the IPv6 header: port (2) + address (16).
const IPV6_OPTION_DATA_LEN: u8 = 18;
/// The header's "Hdr Ext Len": length in 8-octet units, not counting the first 8.
const IPV6_HDR_EXT_LEN: u8 = (IPV6_LEN / 8 - 1) as u8;

/// The mark for an IPv4 VIP.
#[inline(always)]
pub const fn ipv4_option(vip: [u8; 4], port: u16) -> [u8; IPV4_LEN] {
    let p = port.to_be_bytes();
    [
        IPV4_OPTION_TYPE,
        IPV4_LEN as u8,
        p[0],
        p[1],
        vip[0],
        vip[1],
        vip[2],
        vip[3],
    ]
}

/// The (VIP, port) of an IPv4 mark, if `opt` (the first option of a header) is one.
#[inline(always)]
pub const fn parse_ipv4_option(opt: &[u8; IPV4_LEN]) -> Option<([u8; 4], u16)> {
    if opt[0] != IPV4_OPTION_TYPE || opt[1] != IPV4_LEN as u8 {
        return None;
    }
    Some((
        [opt[4], opt[5], opt[6], opt[7]],
        u16::from_be_bytes([opt[2], opt[3]]),
    ))
}

/// The Destination Options header marking an IPv6 packet for `vip`:`port`, in front of an
/// upper-layer header of protocol `next_header`.
#[inline(always)]
pub const fn ipv6_dstopts(next_header: u8, vip: [u8; 16], port: u16) -> [u8; IPV6_LEN] {
    let p = port.to_be_bytes();
    let mut h = [0u8; IPV6_LEN];
    h[0] = next_header;
    h[1] = IPV6_HDR_EXT_LEN;
    h[2] = IPV6_OPTION_TYPE;
    h[3] = IPV6_OPTION_DATA_LEN;
    h[4] = p[0];
    h[5] = p[1];
    let mut i = 0;
    while i < 16 {
        h[6 + i] = vip[i];
        i += 1;
    }
    // PadN with no data octets: type 1, length 0.
    h[22] = 1;
    h[23] = 0;
    h
}

/// (upper-layer protocol, VIP, port) of an IPv6 mark, if `h` (a Destination Options
/// header) is exactly one.
#[inline(always)]
pub const fn parse_ipv6_dstopts(h: &[u8; IPV6_LEN]) -> Option<(u8, [u8; 16], u16)> {
    if h[1] != IPV6_HDR_EXT_LEN
        || h[2] != IPV6_OPTION_TYPE
        || h[3] != IPV6_OPTION_DATA_LEN
        || h[22] != 1
        || h[23] != 0
    {
        return None;
    }
    let mut vip = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        vip[i] = h[6 + i];
        i += 1;
    }
    Some((h[0], vip, u16::from_be_bytes([h[4], h[5]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_option_round_trips_and_is_a_whole_number_of_words() {
        let o = ipv4_option([198, 18, 0, 100], 443);
        assert_eq!(o, [0x9e, 8, 0x01, 0xbb, 198, 18, 0, 100]);
        assert_eq!(parse_ipv4_option(&o), Some(([198, 18, 0, 100], 443)));
        assert_eq!(IPV4_LEN % 4, 0, "IHL counts 4-octet words");
        // Copied flag set (bit 7), class 0, number 30: RFC 4727's experimental value.
        assert_eq!(IPV4_OPTION_TYPE >> 7, 1);
        assert_eq!(IPV4_OPTION_TYPE & 0x1f, 30);
    }

    #[test]
    fn other_ipv4_options_are_not_marks() {
        let mut o = ipv4_option([1, 2, 3, 4], 1);
        o[0] = 0x94; // router alert
        assert_eq!(parse_ipv4_option(&o), None);
        let mut o = ipv4_option([1, 2, 3, 4], 1);
        o[1] = 12;
        assert_eq!(parse_ipv4_option(&o), None);
    }

    #[test]
    fn ipv6_dstopts_round_trip_and_follow_rfc8200() {
        let vip = [0xfd, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        let h = ipv6_dstopts(17, vip, 443);
        assert_eq!(h[0], 17);
        // Length in 8-octet units after the first 8: 24 octets -> 2.
        assert_eq!((h[1] as usize + 1) * 8, IPV6_LEN);
        // Option type: action bits 00 (skip if unknown), change bit 0.
        assert_eq!(h[2] >> 5, 0);
        // The options (type-length-value, then PadN) fill the header exactly.
        assert_eq!(2 + 2 + h[3] as usize + 2 + h[23] as usize, IPV6_LEN);
        assert_eq!(parse_ipv6_dstopts(&h), Some((17, vip, 443)));
    }

    #[test]
    fn other_destination_options_are_not_marks() {
        let h = ipv6_dstopts(6, [7; 16], 80);
        for i in [1usize, 2, 3, 22, 23] {
            let mut bad = h;
            bad[i] ^= 0x40;
            assert_eq!(parse_ipv6_dstopts(&bad), None, "octet {i} changed");
        }
    }
}
