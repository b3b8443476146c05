//! One's-complement Internet checksums (RFC 1071) and their incremental update (RFC 1624),
//! as pure functions over big-endian 16-bit words so the XDP program and host tests share
//! exactly the same arithmetic.

/// Fold a 32-bit accumulator of 16-bit words into 16 bits (end-around carry).
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Add `data` as big-endian 16-bit words (an odd trailing octet is padded with zero) to `sum`.
/// Host-side helper for building and verifying packets; the XDP program only updates.
pub fn sum_bytes(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u16::from_be_bytes([c[0], c[1]]) as u32);
        // Keep headroom: fold whenever the top bit is set.
        if sum & 0x8000_0000 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add((*last as u32) << 8);
    }
    sum
}

/// The checksum field value for `data` (which has its checksum field zeroed).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_bytes(0, data))
}

/// RFC 1624 eqn. 3, one word: HC' = ~(~HC + ~m + m'). `csum` is the field as a big-endian
/// number. Never turns a valid non-zero checksum into 0x0000 unless the sum really is zero
/// in one's complement (see [`udp_fixup`]).
#[inline(always)]
pub const fn update_u16(csum: u16, old: u16, new: u16) -> u16 {
    let sum = (!csum as u32) + (!old as u32 & 0xffff) + new as u32;
    !fold(sum)
}

/// RFC 1624 update for a run of `N` octets (N even) that changed from `old` to `new`,
/// e.g. an IPv4 address (N = 4) or an IPv6 address (N = 16).
#[inline(always)]
pub fn update_bytes<const N: usize>(csum: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    let mut sum = !csum as u32;
    let mut i = 0;
    while i + 1 < N {
        let o = u16::from_be_bytes([old[i], old[i + 1]]);
        let n = u16::from_be_bytes([new[i], new[i + 1]]);
        sum += (!o as u32 & 0xffff) + n as u32;
        i += 2;
    }
    !fold(sum)
}

/// RFC 1624 update for one 32-bit field (an IPv4 address), given as a big-endian number.
#[inline(always)]
pub const fn update_u32(csum: u16, old: u32, new: u32) -> u16 {
    let sum =
        (!csum as u32) + (!(old >> 16) & 0xffff) + (!old & 0xffff) + (new >> 16) + (new & 0xffff);
    !fold(sum)
}

/// RFC 1624 update for a run of 32-bit fields (an IPv6 address as four big-endian words).
#[inline(always)]
pub const fn update_u32s<const N: usize>(csum: u16, old: &[u32; N], new: &[u32; N]) -> u16 {
    // Fold after every word: 4 x 4 halves of 0xffff cannot overflow, but N is generic.
    let mut c = csum;
    let mut i = 0;
    while i < N {
        c = update_u32(c, old[i], new[i]);
        i += 1;
    }
    c
}

/// A UDP checksum that computes to 0x0000 is sent as 0xffff (RFC 768); 0x0000 on the wire
/// means "no checksum" (IPv4 only; IPv6 forbids it).
#[inline(always)]
pub const fn udp_fixup(csum: u16) -> u16 {
    if csum == 0 { 0xffff } else { csum }
}

/// One's-complement sum of the IPv4 pseudo-header (RFC 768 / 793).
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u32 {
    let mut s = sum_bytes(0, &src);
    s = sum_bytes(s, &dst);
    s + proto as u32 + l4_len as u32
}

/// One's-complement sum of the IPv6 pseudo-header (RFC 8200 §8.1).
pub fn pseudo_header_v6(src: [u8; 16], dst: [u8; 16], proto: u8, l4_len: u32) -> u32 {
    let mut s = sum_bytes(0, &src);
    s = sum_bytes(s, &dst);
    s + (l4_len >> 16) + (l4_len & 0xffff) + proto as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 1071 §3 example words.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_bytes(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    // A real IPv4 header (checksum 0xb861 from the classic Wikipedia example).
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn ipv4_header_checksum() {
        assert_eq!(checksum(&HDR), 0xb861);
        let mut h = HDR;
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&h), 0, "a header with its checksum sums to zero");
    }

    #[test]
    fn incremental_matches_recompute_for_address_change() {
        let mut h = HDR;
        let old_dst = [0xc0, 0xa8, 0x00, 0xc7];
        let new_dst = [198, 18, 3, 7];
        let updated = update_bytes(0xb861, &old_dst, &new_dst);
        h[16..20].copy_from_slice(&new_dst);
        assert_eq!(updated, checksum(&h));
    }

    #[test]
    fn incremental_matches_recompute_exhaustively_over_one_word() {
        // Every old/new value of one word in a small buffer, against a full recompute.
        let base = [0x12u8, 0x34, 0xab, 0xcd, 0x00, 0x00];
        for old in (0u32..=0xffff).step_by(251) {
            for new in (0u32..=0xffff).step_by(257) {
                let mut a = base;
                a[4..6].copy_from_slice(&(old as u16).to_be_bytes());
                let c = checksum(&a);
                let mut b = base;
                b[4..6].copy_from_slice(&(new as u16).to_be_bytes());
                let inc = update_u16(c, old as u16, new as u16);
                // One's complement has two zeros; both verify, so compare by verification.
                let mut with = b.to_vec();
                with.extend_from_slice(&inc.to_be_bytes());
                assert_eq!(
                    fold(sum_bytes(0, &with)),
                    0xffff,
                    "old {old:#x} new {new:#x}"
                );
            }
        }
    }

    #[test]
    fn ipv6_address_update() {
        let src = [0xfdu8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst = [0xfdu8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
        let new = [0xfdu8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xef];
        let payload = [0x11u8, 0x22, 0x33];
        let c = !fold(sum_bytes(pseudo_header_v6(src, dst, 17, 3), &payload));
        let want = !fold(sum_bytes(pseudo_header_v6(src, new, 17, 3), &payload));
        assert_eq!(update_bytes(c, &dst, &new), want);
    }

    #[test]
    fn word_updates_match_byte_updates() {
        let old = [198u8, 18, 0, 100];
        let new = [198u8, 19, 0, 11];
        for c in [0x0000u16, 0x1234, 0xb861, 0xffff] {
            assert_eq!(
                update_u32(c, u32::from_be_bytes(old), u32::from_be_bytes(new)),
                update_bytes(c, &old, &new)
            );
        }
        let o16 = [0xfdu8, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        let n16 = [0xfdu8, 0, 0, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12];
        let words = |a: [u8; 16]| {
            [0, 4, 8, 12].map(|i| u32::from_be_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]))
        };
        assert_eq!(
            update_u32s(0x4321, &words(o16), &words(n16)),
            update_bytes(0x4321, &o16, &n16)
        );
    }

    #[test]
    fn udp_zero_is_sent_as_ffff() {
        assert_eq!(udp_fixup(0), 0xffff);
        assert_eq!(udp_fixup(0x1234), 0x1234);
    }
}
