//! QUIC invariants (RFC 8999) and the parts of QUIC v1/v2 the load balancer reads, plus the
//! QUIC-LB (draft-ietf-quic-load-balancers) connection-ID fields. Pure functions over octets.

/// Header form bit: set for long headers.
pub const HEADER_FORM_LONG: u8 = 0x80;
pub const QUIC_V1: u32 = 0x0000_0001;
pub const QUIC_V2: u32 = 0x6b33_43cf;

/// Offset of the DCID in a short-header packet (after the first octet).
pub const SHORT_DCID_OFFSET: usize = 1;
/// Offsets in a long-header packet: first octet, 4-octet version, DCID length, DCID.
pub const LONG_DCID_LEN_OFFSET: usize = 5;
pub const LONG_DCID_OFFSET: usize = 6;

#[inline(always)]
pub const fn is_long_header(first: u8) -> bool {
    first & HEADER_FORM_LONG != 0
}

/// Config rotation value of a QUIC-LB connection ID: the top three bits of its first octet.
#[inline(always)]
pub const fn config_rotation(cid_first: u8) -> u8 {
    cid_first >> 5
}

/// Long-header packet types that carry a client-chosen DCID at the start of a connection:
/// Initial and 0-RTT. (A client's later Initials echo the server's CID, which is why the
/// program still tries to decode them first.) Type bits differ between v1 and v2 (RFC 9369
/// §3.2); versions we do not know are treated as client-chosen, since only the server can
/// have issued a routable CID under a version it speaks.
#[inline(always)]
pub const fn long_header_has_client_dcid(first: u8, version: u32) -> bool {
    let ty = (first >> 4) & 0b11;
    match version {
        QUIC_V1 => ty == 0b00 || ty == 0b01,
        QUIC_V2 => ty == 0b01 || ty == 0b10,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_forms() {
        assert!(is_long_header(0xc3));
        assert!(!is_long_header(0x43));
    }

    #[test]
    fn config_rotation_is_top_three_bits() {
        assert_eq!(config_rotation(0b1110_0000), 0b111);
        assert_eq!(config_rotation(0b0011_1111), 0b001);
    }

    #[test]
    fn client_chosen_types_per_version() {
        // v1: Initial 0xc0, 0-RTT 0xd0, Handshake 0xe0, Retry 0xf0.
        assert!(long_header_has_client_dcid(0xc0, QUIC_V1));
        assert!(long_header_has_client_dcid(0xd0, QUIC_V1));
        assert!(!long_header_has_client_dcid(0xe0, QUIC_V1));
        assert!(!long_header_has_client_dcid(0xf0, QUIC_V1));
        // v2: Initial 0b01, 0-RTT 0b10, Handshake 0b11, Retry 0b00.
        assert!(long_header_has_client_dcid(0xd0, QUIC_V2));
        assert!(long_header_has_client_dcid(0xe0, QUIC_V2));
        assert!(!long_header_has_client_dcid(0xf0, QUIC_V2));
        assert!(!long_header_has_client_dcid(0xc0, QUIC_V2));
        assert!(long_header_has_client_dcid(0xe0, 0x1a2a_3a4a));
    }
}
