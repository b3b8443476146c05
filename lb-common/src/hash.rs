//! Flow hashing for Maglev lookups. MurmurHash3 (x86, 32-bit) over the 40-octet [`FlowKey`]:
//! ten 32-bit blocks, no tail, so the XDP program runs a fixed, fully unrolled loop.

use crate::maps::FlowKey;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// Seed for flow hashes; changing it reshuffles every flow.
pub const FLOW_HASH_SEED: u32 = 0x6c62_0001;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// MurmurHash3_x86_32 of the key's 40 octets (little-endian blocks), seed [`FLOW_HASH_SEED`].
#[inline(always)]
pub fn flow_hash(k: &FlowKey) -> u32 {
    let mut h = FLOW_HASH_SEED;
    h = mix(h, word(&k.src, 0));
    h = mix(h, word(&k.src, 4));
    h = mix(h, word(&k.src, 8));
    h = mix(h, word(&k.src, 12));
    h = mix(h, word(&k.dst, 0));
    h = mix(h, word(&k.dst, 4));
    h = mix(h, word(&k.dst, 8));
    h = mix(h, word(&k.dst, 12));
    let ports = k.sport.to_le_bytes();
    let dports = k.dport.to_le_bytes();
    h = mix(
        h,
        u32::from_le_bytes([ports[0], ports[1], dports[0], dports[1]]),
    );
    h = mix(
        h,
        u32::from_le_bytes([k.proto, k.family, k._pad[0], k._pad[1]]),
    );
    fmix(h ^ 40)
}

/// MurmurHash3_x86_32 over arbitrary bytes (host side: Maglev permutations).
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        h = mix(h, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= (*b as u32) << (8 * i);
        }
        h ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    }
    fmix(h ^ data.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_reference_vectors() {
        // Published MurmurHash3_x86_32 vectors.
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"test", 0), 0xba6b_d213);
        assert_eq!(murmur3_32(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    fn key_bytes(k: &FlowKey) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[..16].copy_from_slice(&k.src);
        b[16..32].copy_from_slice(&k.dst);
        b[32..34].copy_from_slice(&k.sport.to_le_bytes());
        b[34..36].copy_from_slice(&k.dport.to_le_bytes());
        b[36] = k.proto;
        b[37] = k.family;
        b
    }

    #[test]
    fn flow_hash_is_murmur3_of_the_key_bytes() {
        let mut k = FlowKey {
            sport: 40000,
            dport: 443,
            proto: 17,
            family: 4,
            ..Default::default()
        };
        k.src[..4].copy_from_slice(&[198, 18, 0, 1]);
        k.dst[..4].copy_from_slice(&[198, 19, 0, 10]);
        assert_eq!(flow_hash(&k), murmur3_32(&key_bytes(&k), FLOW_HASH_SEED));
        let mut k2 = k;
        k2.sport = 40001;
        assert_ne!(flow_hash(&k), flow_hash(&k2));
    }

    #[test]
    fn flows_of_one_client_hash_alike_under_affinity() {
        let mut a = FlowKey {
            sport: 40000,
            dport: 443,
            proto: 17,
            family: 4,
            ..Default::default()
        };
        a.src[..4].copy_from_slice(&[198, 18, 0, 2]);
        let mut b = a;
        b.sport = 51234;
        b.dport = 80;
        b.proto = 6;
        assert_eq!(
            flow_hash(&crate::affinity_key(&a)),
            flow_hash(&crate::affinity_key(&b))
        );
    }
}
