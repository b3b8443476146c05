//! The draft's test vectors and worked example, an independent octet-by-octet reference
//! implementation of the draft's algorithm text (on the RustCrypto `aes` crate), random
//! round trips over every length and mode, and the error paths.

extern crate std;

use std::string::ToString;
use std::vec::Vec;

use super::*;
use ::aes::Aes128;
use ::aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};

/// SplitMix64: deterministic, so a failure reproduces.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next() as u8;
        }
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = std::vec![0u8; n];
        self.fill(&mut v);
        v
    }
    pub(crate) fn key(&mut self) -> [u8; 16] {
        let mut k = [0u8; 16];
        self.fill(&mut k);
        k
    }
    pub(crate) fn block(&mut self) -> [u8; 16] {
        self.key()
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn hex(s: &str) -> Vec<u8> {
    assert!(
        s.len().is_multiple_of(2),
        "odd number of hex digits in {s:?}"
    );
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex16(s: &str) -> [u8; 16] {
    hex(s).try_into().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Reference implementation: the draft's §5.4 text step by step, on octet vectors, with the
// RustCrypto AES. Deliberately shares no code with the codec.

fn rc_encrypt(key: &[u8; 16], block: [u8; 16]) -> [u8; 16] {
    let mut b = block.into();
    Aes128::new(&(*key).into()).encrypt_block(&mut b);
    b.into()
}

fn rc_decrypt(key: &[u8; 16], block: [u8; 16]) -> [u8; 16] {
    let mut b = block.into();
    Aes128::new(&(*key).into()).decrypt_block(&mut b);
    b.into()
}

/// expand(length, pass, input_bytes): input in the most significant octets, zero pad, then
/// length (15th octet) and pass (16th).
fn ref_expand(len: usize, pass: u8, half: &[u8]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..half.len()].copy_from_slice(half);
    b[14] = len as u8;
    b[15] = pass;
    b
}

/// right ^= truncate(AES(expand(len, pass, left)), half_len), then clear the right half's
/// first nibble (odd) or the left half's last nibble, as the draft's steps 3-11 do.
fn ref_pass(key: &[u8; 16], len: usize, pass: u8, input: &[u8], target: &mut [u8]) {
    let out = rc_encrypt(key, ref_expand(len, pass, input));
    for (t, o) in target.iter_mut().zip(out) {
        *t ^= o;
    }
}

fn ref_split(p: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let len = p.len();
    let h = len.div_ceil(2);
    let mut left = p[..h].to_vec();
    let mut right = p[len - h..].to_vec();
    if len % 2 == 1 {
        left[h - 1] &= 0xf0;
        right[0] &= 0x0f;
    }
    (left, right)
}

fn ref_four_pass_encrypt(key: &[u8; 16], p: &[u8]) -> Vec<u8> {
    let len = p.len();
    let odd = len % 2 == 1;
    let (mut left, mut right) = ref_split(p);
    let h = left.len();
    ref_pass(key, len, 1, &left.clone(), &mut right);
    if odd {
        right[0] &= 0x0f;
    }
    ref_pass(key, len, 2, &right.clone(), &mut left);
    if odd {
        left[h - 1] &= 0xf0;
    }
    ref_pass(key, len, 3, &left.clone(), &mut right);
    if odd {
        right[0] &= 0x0f;
    }
    ref_pass(key, len, 4, &right.clone(), &mut left);
    if odd {
        left[h - 1] &= 0xf0;
    }
    join_halves(&left, &right, odd)
}

fn ref_four_pass_decrypt(key: &[u8; 16], c: &[u8]) -> Vec<u8> {
    let len = c.len();
    let odd = len % 2 == 1;
    let (mut left, mut right) = ref_split(c);
    let h = left.len();
    ref_pass(key, len, 4, &right.clone(), &mut left);
    if odd {
        left[h - 1] &= 0xf0;
    }
    ref_pass(key, len, 3, &left.clone(), &mut right);
    if odd {
        right[0] &= 0x0f;
    }
    ref_pass(key, len, 2, &right.clone(), &mut left);
    if odd {
        left[h - 1] &= 0xf0;
    }
    ref_pass(key, len, 1, &left.clone(), &mut right);
    if odd {
        right[0] &= 0x0f;
    }
    join_halves(&left, &right, odd)
}

/// Step 12: concatenate, dropping the two zero nibbles in the middle for odd lengths.
fn join_halves(left: &[u8], right: &[u8], odd: bool) -> Vec<u8> {
    let mut out = left.to_vec();
    if odd {
        let last = out.len() - 1;
        out[last] |= right[0];
        out.extend_from_slice(&right[1..]);
    } else {
        out.extend_from_slice(right);
    }
    out
}

/// The whole CID by the reference: first octet, then the protected body.
fn ref_cid(cfg: &Config, sid: &[u8], nonce: &[u8], low_bits: u8) -> Vec<u8> {
    let mut p = sid.to_vec();
    p.extend_from_slice(nonce);
    let body = match cfg.key() {
        None => p.clone(),
        Some(k) if p.len() == 16 => rc_encrypt(&k, p.clone().try_into().unwrap()).to_vec(),
        Some(k) => ref_four_pass_encrypt(&k, &p),
    };
    let low = if cfg.encode_length() {
        p.len() as u8
    } else {
        low_bits & 0x1f
    };
    let mut cid = std::vec![cfg.config_id() << 5 | low];
    cid.extend_from_slice(&body);
    cid
}

// ---------------------------------------------------------------------------------------------
// The draft's vectors.

use super::vectors::{DRAFT_VECTORS as VECTORS, DraftVector as Vector, KEY};

fn vector_config(v: &Vector) -> Config {
    let sid = hex(v.sid);
    let nonce = hex(v.nonce);
    Config::new(
        v.cr,
        sid.len() as u8,
        nonce.len() as u8,
        v.key.map(hex16),
        true,
    )
    .unwrap()
}

#[test]
fn draft_vectors_encode() {
    for v in VECTORS {
        let cfg = vector_config(v);
        let mut out = [0xaa; MAX_CID_LEN];
        let n = encode(&cfg, &hex(v.sid), &hex(v.nonce), 0, &mut out).unwrap();
        assert_eq!(out[..n], hex(v.cid)[..], "encode, vector cid {}", v.cid);
        assert!(out[n..].iter().all(|&b| b == 0), "tail zeroed");
    }
}

#[test]
fn draft_vectors_decode() {
    for v in VECTORS {
        let cfg = vector_config(v);
        let sid = hex(v.sid);
        let mut out = [0xaa; MAX_SERVER_ID_LEN];
        let n = decode(&cfg, &hex(v.cid), &mut out).unwrap();
        assert_eq!(n, sid.len());
        assert_eq!(out[..n], sid[..], "decode, vector cid {}", v.cid);
        assert!(out[n..].iter().all(|&b| b == 0));

        // The data-path entry point on the same bytes, with junk after the CID.
        let cid = hex(v.cid);
        let mut block = [0x5a; BLOCK_LEN];
        block[..cid.len() - 1].copy_from_slice(&cid[1..]);
        let mut sid16 = [0xaa; 16];
        assert!(decode_block(
            cfg.mode(),
            cfg.server_id_len(),
            cfg.nonce_len(),
            &cfg.round_keys(),
            &block,
            &mut sid16
        ));
        assert_eq!(sid16[..n], sid[..]);
        assert!(sid16[n..].iter().all(|&b| b == 0));
    }
}

#[test]
fn draft_vectors_cover_every_mode_and_the_fourth_pass() {
    let modes: Vec<(Mode, bool)> = VECTORS
        .iter()
        .map(|v| {
            let c = vector_config(v);
            (c.mode(), c.nonce_len() < c.server_id_len())
        })
        .collect();
    assert!(modes.contains(&(Mode::Plaintext, false)));
    assert!(modes.contains(&(Mode::SinglePass, false)));
    assert!(
        modes.contains(&(Mode::FourPass, false)),
        "three-pass decode"
    );
    assert!(modes.contains(&(Mode::FourPass, true)), "four-pass decode");
}

#[test]
fn reference_implementation_reproduces_the_draft_vectors() {
    for v in VECTORS {
        let cfg = vector_config(v);
        assert_eq!(
            ref_cid(&cfg, &hex(v.sid), &hex(v.nonce), 0),
            hex(v.cid),
            "reference, vector cid {}",
            v.cid
        );
        if let Some(k) = cfg.key() {
            let cid = hex(v.cid);
            let plain = if cid.len() == 17 {
                rc_decrypt(&k, cid[1..].try_into().unwrap()).to_vec()
            } else {
                ref_four_pass_decrypt(&k, &cid[1..])
            };
            let mut expect = hex(v.sid);
            expect.extend(hex(v.nonce));
            assert_eq!(plain, expect);
        }
    }
}

#[test]
fn printed_fourth_encrypted_row_is_config_0() {
    // The row as printed: first octet 0x12 = config 0, length 18.
    let printed = hex("125779c9cc86beb3a3a4a3ca96fce4bfe0cdbc");
    let sid = hex("ed793a51d49b8f5fab");
    let cfg0 = Config::new(0, 9, 9, Some(hex16(KEY)), true).unwrap();
    let mut out = [0; MAX_CID_LEN];
    let n = encode(&cfg0, &sid, &hex("ee080dbf48c0d1e55d"), 0, &mut out).unwrap();
    assert_eq!(out[..n], printed[..]);
    let mut got = [0; MAX_SERVER_ID_LEN];
    assert_eq!(decode(&cfg0, &printed, &mut got), Ok(9));
    assert_eq!(got[..9], sid[..]);
    // Under its labelled config 3 the printed CID is another config's.
    let cfg3 = Config::new(3, 9, 9, Some(hex16(KEY)), true).unwrap();
    assert_eq!(
        decode(&cfg3, &printed, &mut got),
        Err(DecodeError::WrongConfig {
            found: 0,
            expected: 3
        })
    );
}

#[test]
fn printed_second_plaintext_row_is_inconsistent() {
    // As printed, "20a350d28b4203487d970b" under config 1 yields server ID a350d28b42, and its
    // length bits say 1 octet: neither fits the row, which is why the vector above is corrected.
    let printed = hex("20a350d28b4203487d970b");
    let cfg = Config::new(1, 5, 5, None, true).unwrap();
    let mut got = [0; MAX_SERVER_ID_LEN];
    assert_eq!(decode(&cfg, &printed, &mut got), Ok(5));
    assert_eq!(got[..5], hex("a350d28b42")[..]);
    assert_eq!(printed[0] & 0x1f, 0);
}

#[test]
fn worked_example_intermediate_values() {
    // §5.4.2: every AES input and output of the example, through our AES.
    let keys = RoundKeys::new(&hex16("fdf726a9893ec05c0632d3956680baf0"));
    let steps = [
        (
            "31441a90000000000000000000000701",
            "a255dd8cdacf01948d3a848c3c7fee23",
        ),
        (
            "0e3c1ff9000000000000000000000702",
            "e5e452cb9e1bedb0b2bf830506bf4c4e",
        ),
        (
            "d4a04850000000000000000000000703",
            "b7821ab3024fed0913b6a04d18e3216f",
        ),
        // The step-10 XOR line of the draft writes this output as 0xb3e4357c...; the output line
        // (0xb334357c...) is the right one: it gives the printed left_2 = 0x67947d2c.
        (
            "09be054a000000000000000000000704",
            "b334357cfdf81e3fafe180154eaf7378",
        ),
    ];
    for (input, output) in steps {
        assert_eq!(
            aes::encrypt_block(&keys, &hex16(input)),
            hex16(output),
            "{input}"
        );
    }
    assert_eq!(0xd4a04850u32 ^ 0xb334357c, 0x67947d2c);
    assert_ne!(0xd4a04850u32 ^ 0xb3e4357c, 0x67947d2c);
    // expand() example and the step-2 split example.
    assert_eq!(
        ref_expand(6, 2, &hex("aaba3c")),
        hex16("aaba3c00000000000000000000000602")
    );
    let (l, r) = ref_split(&hex("7040b81b55ccf3"));
    assert_eq!((l, r), (hex("7040b810"), hex("0b55ccf3")));
    // The same split by the codec's shift-based splitter and masks.
    let mut b = [0u8; BLOCK_LEN];
    b[..7].copy_from_slice(&hex("7040b81b55ccf3"));
    let w = feistel::load19(&b);
    let right = feistel::shl_octets(&w, 3);
    assert_eq!(right[0] >> 32, 0x1b55ccf3);
}

// ---------------------------------------------------------------------------------------------
// Random round trips over every length, split and mode.

/// Every (server ID length, nonce length) pair the draft allows.
fn all_length_pairs() -> Vec<(u8, u8)> {
    let mut v = Vec::new();
    for len in 5..=19u8 {
        for sid in 1..=15u8 {
            if sid < len && len - sid >= 4 {
                v.push((sid, len - sid));
            }
        }
    }
    v
}

#[test]
fn length_pairs_cover_every_plaintext_length() {
    let pairs = all_length_pairs();
    assert_eq!(pairs.len(), 120);
    for len in 5..=19u8 {
        assert!(pairs.iter().any(|&(s, n)| s + n == len));
    }
}

#[test]
fn random_round_trips_every_length_and_mode() {
    let mut rng = Rng(0x0051_c1b0_0000_0001);
    let mut seen = [0usize; 4];
    for (sid_len, nonce_len) in all_length_pairs() {
        for keyed in [false, true] {
            for _ in 0..60 {
                let key = keyed.then(|| rng.key());
                let cr = rng.below(7) as u8;
                let encode_length = rng.below(2) == 0;
                let cfg = Config::new(cr, sid_len, nonce_len, key, encode_length).unwrap();
                seen[cfg.mode() as usize] += 1;
                let codec = Codec::new(cfg);
                let sid = rng.bytes(sid_len as usize);
                let nonce = rng.bytes(nonce_len as usize);
                let low = rng.next() as u8;

                let mut cid = [0xaa; MAX_CID_LEN];
                let n = codec.encode(&sid, &nonce, low, &mut cid).unwrap();
                assert_eq!(n, cfg.cid_len());
                assert_eq!(
                    cid[..n],
                    ref_cid(&cfg, &sid, &nonce, low)[..],
                    "{cfg:?} sid {sid:02x?} nonce {nonce:02x?}"
                );
                assert!(cid[n..].iter().all(|&b| b == 0));
                assert_eq!(cid[0] >> 5, cr);
                if encode_length {
                    assert_eq!(cid[0] & 0x1f, (n - 1) as u8);
                }

                // decode, with and without trailing octets the server may have appended.
                let mut long = cid[..n].to_vec();
                let extra = rng.below((MAX_CID_LEN - n + 1) as u64) as usize;
                long.extend(rng.bytes(extra));
                for c in [&cid[..n], &long[..]] {
                    let mut out = [0xaa; MAX_SERVER_ID_LEN];
                    assert_eq!(codec.decode(c, &mut out), Ok(sid_len as usize));
                    assert_eq!(out[..sid.len()], sid[..], "{cfg:?}");
                    assert!(out[sid.len()..].iter().all(|&b| b == 0));
                }

                // decode_block, with junk past the CID in the fixed 19-octet block.
                let mut block = [0u8; BLOCK_LEN];
                rng.fill(&mut block);
                block[..n - 1].copy_from_slice(&cid[1..n]);
                let mut out = [0xaa; 16];
                assert!(decode_block(
                    cfg.mode(),
                    sid_len,
                    nonce_len,
                    codec.round_keys(),
                    &block,
                    &mut out
                ));
                assert_eq!(out[..sid.len()], sid[..]);
                assert!(out[sid.len()..].iter().all(|&b| b == 0));
            }
        }
    }
    // Plaintext for every pair; single pass for the 15 pairs that sum to 16, four-pass for the
    // rest.
    assert_eq!(seen[Mode::Plaintext as usize], 120 * 60);
    assert_eq!(seen[Mode::SinglePass as usize], 12 * 60);
    assert_eq!(seen[Mode::FourPass as usize], 108 * 60);
}

#[test]
fn decryption_of_random_ciphertexts_matches_the_reference() {
    // Not only our own ciphertexts: any body must decode as the reference's decryption does
    // (the load balancer sees arbitrary DCIDs).
    let mut rng = Rng(0xdec0_de00_0000_0002);
    for (sid_len, nonce_len) in all_length_pairs() {
        for _ in 0..40 {
            let key = rng.key();
            let cfg = Config::new(0, sid_len, nonce_len, Some(key), false).unwrap();
            let len = cfg.plaintext_len();
            let mut block = [0u8; BLOCK_LEN];
            rng.fill(&mut block);
            let plain = if len == 16 {
                rc_decrypt(&key, block[..16].try_into().unwrap()).to_vec()
            } else {
                ref_four_pass_decrypt(&key, &block[..len])
            };
            let mut out = [0u8; 16];
            assert!(decode_block(
                cfg.mode(),
                sid_len,
                nonce_len,
                &cfg.round_keys(),
                &block,
                &mut out
            ));
            assert_eq!(
                out[..sid_len as usize],
                plain[..sid_len as usize],
                "{cfg:?}"
            );
        }
    }
}

#[test]
fn split_and_join_shifts_every_offset() {
    let mut rng = Rng(7);
    for o in 2..=9u8 {
        let mut b = [0u8; BLOCK_LEN];
        rng.fill(&mut b);
        let w = feistel::load19(&b);
        assert_eq!(feistel::store19(&w), b);
        let r = feistel::shl_octets(&w, o);
        let mut expect = [0u8; 16];
        let avail = (BLOCK_LEN - o as usize).min(16);
        expect[..avail].copy_from_slice(&b[o as usize..o as usize + avail]);
        let mut got = [0u8; 16];
        got[..8].copy_from_slice(&r[0].to_be_bytes());
        got[8..].copy_from_slice(&r[1].to_be_bytes());
        assert_eq!(got, expect, "shl by {o}");

        // shr places the top 10 octets of a half at octet o.
        let half = [r[0], r[1] & !0xffff_ffff_ffff];
        let placed = feistel::store19(&feistel::shr_octets(&half, o));
        let mut want = [0u8; BLOCK_LEN];
        want[o as usize..o as usize + 10].copy_from_slice(&expect[..10]);
        assert_eq!(placed, want, "shr by {o}");
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and edges.

#[test]
fn config_errors() {
    assert_eq!(
        Config::new(0, 0, 8, None, true),
        Err(ConfigError::ServerIdLength { len: 0 })
    );
    assert_eq!(
        Config::new(0, 16, 4, None, true),
        Err(ConfigError::ServerIdLength { len: 16 })
    );
    assert_eq!(
        Config::new(0, 4, 3, None, true),
        Err(ConfigError::NonceLength { len: 3 })
    );
    assert_eq!(
        Config::new(0, 4, 0, None, true),
        Err(ConfigError::NonceLength { len: 0 })
    );
    assert_eq!(
        Config::new(0, 10, 10, None, true),
        Err(ConfigError::TooLong {
            server_id_len: 10,
            nonce_len: 10
        })
    );
    assert_eq!(
        Config::new(0, 15, 5, Some([0; 16]), true),
        Err(ConfigError::TooLong {
            server_id_len: 15,
            nonce_len: 5
        })
    );
    assert_eq!(
        Config::new(0, 1, 255, None, true),
        Err(ConfigError::TooLong {
            server_id_len: 1,
            nonce_len: 255
        })
    );
    assert_eq!(
        Config::new(7, 4, 4, None, true),
        Err(ConfigError::ConfigId { found: 7 })
    );
    assert_eq!(
        Config::new(255, 4, 4, None, true),
        Err(ConfigError::ConfigId { found: 255 })
    );
    // The boundaries that are allowed.
    for (cr, s, n) in [
        (0, 1, 4),
        (6, 15, 4),
        (3, 1, 18),
        (2, 8, 11),
        (1, 15, 1 + 3),
    ] {
        let c = Config::new(cr, s, n, None, false).unwrap();
        assert_eq!(c.cid_len(), 1 + s as usize + n as usize);
        assert!(lengths_valid(s, n));
    }
}

#[test]
fn error_messages_say_what_and_what_is_valid() {
    let m = Config::new(7, 4, 4, None, true).unwrap_err().to_string();
    assert!(m.contains('7') && m.contains("0..=6"), "{m}");
    let m = Config::new(0, 0, 4, None, true).unwrap_err().to_string();
    assert!(m.contains("length 0") && m.contains("1..=15"), "{m}");
    let m = Config::new(0, 4, 3, None, true).unwrap_err().to_string();
    assert!(m.contains("length 3") && m.contains("at least 4"), "{m}");
    let m = Config::new(0, 10, 10, None, true).unwrap_err().to_string();
    assert!(m.contains("= 20") && m.contains("at most 19"), "{m}");
    let m = DecodeError::TooShort { len: 5, need: 8 }.to_string();
    assert!(m.contains('5') && m.contains('8'), "{m}");
    let m = DecodeError::WrongConfig {
        found: 2,
        expected: 1,
    }
    .to_string();
    assert!(m.contains("config 2") && m.contains("config 1"), "{m}");
    assert!(DecodeError::Unroutable.to_string().contains("0b111"));
    let m = EncodeError::NonceLength {
        len: 3,
        expected: 4,
    }
    .to_string();
    assert!(m.contains('3') && m.contains('4'), "{m}");
    // They are std errors.
    let _: &dyn core::error::Error = &ConfigError::NonceLength { len: 3 };
}

#[test]
fn encode_errors() {
    let cfg = Config::new(1, 3, 4, Some([1; 16]), true).unwrap();
    let mut out = [0; MAX_CID_LEN];
    assert_eq!(
        encode(&cfg, &[1, 2], &[0; 4], 0, &mut out),
        Err(EncodeError::ServerIdLength {
            len: 2,
            expected: 3
        })
    );
    assert_eq!(
        encode(&cfg, &[1, 2, 3], &[0; 5], 0, &mut out),
        Err(EncodeError::NonceLength {
            len: 5,
            expected: 4
        })
    );
}

#[test]
fn first_octet_low_bits_without_length_encoding() {
    let cfg = Config::new(5, 3, 4, None, false).unwrap();
    let mut out = [0; MAX_CID_LEN];
    encode(&cfg, &[1, 2, 3], &[4, 5, 6, 7], 0xff, &mut out).unwrap();
    assert_eq!(out[0], 0b101_11111);
    encode(&cfg, &[1, 2, 3], &[4, 5, 6, 7], 0x0a, &mut out).unwrap();
    assert_eq!(out[0], 0b101_01010);
}

#[test]
fn decode_errors() {
    let cfg = Config::new(2, 3, 4, Some([9; 16]), true).unwrap();
    let mut out = [0; MAX_SERVER_ID_LEN];
    assert_eq!(
        decode(&cfg, &[], &mut out),
        Err(DecodeError::TooShort { len: 0, need: 8 })
    );
    assert_eq!(
        decode(&cfg, &[0xe7, 1, 2, 3, 4, 5, 6, 7], &mut out),
        Err(DecodeError::Unroutable)
    );
    // 0b111 is unroutable whatever the configuration and length.
    assert_eq!(
        decode(&cfg, &[0xff], &mut out),
        Err(DecodeError::Unroutable)
    );
    assert_eq!(
        decode(&cfg, &[0x27, 1, 2, 3, 4, 5, 6, 7], &mut out),
        Err(DecodeError::WrongConfig {
            found: 1,
            expected: 2
        })
    );
    assert_eq!(
        decode(&cfg, &[0x47, 1, 2, 3, 4, 5, 6], &mut out),
        Err(DecodeError::TooShort { len: 7, need: 8 })
    );
    assert_eq!(decode(&cfg, &[0x47, 1, 2, 3, 4, 5, 6, 7], &mut out), Ok(3));
}

#[test]
fn decode_block_rejects_invalid_parameters_and_leaves_output_alone() {
    let keys = RoundKeys::new(&[3; 16]);
    let block = [0x11; BLOCK_LEN];
    let cases = [
        (Mode::Plaintext, 0, 8),
        (Mode::Plaintext, 16, 4),
        (Mode::Plaintext, 4, 3),
        (Mode::Plaintext, 10, 10),
        (Mode::FourPass, 15, 255),
        (Mode::SinglePass, 8, 7),
        (Mode::SinglePass, 8, 9),
        (Mode::FourPass, 8, 8),
        (Mode::FourPass, 12, 4),
    ];
    for (mode, s, n) in cases {
        let mut out = [0xee; 16];
        assert!(
            !decode_block(mode, s, n, &keys, &block, &mut out),
            "{mode:?} {s} {n}"
        );
        assert_eq!(out, [0xee; 16]);
    }
}

#[test]
fn plaintext_decode_block_ignores_keys_and_masks_the_tail() {
    let mut block = [0u8; BLOCK_LEN];
    for (i, b) in block.iter_mut().enumerate() {
        *b = i as u8 + 1;
    }
    for sid_len in 1..=15u8 {
        let mut out = [0xee; 16];
        assert!(decode_block(
            Mode::Plaintext,
            sid_len,
            4,
            &RoundKeys::ZERO,
            &block,
            &mut out
        ));
        let mut want = [0u8; 16];
        want[..sid_len as usize].copy_from_slice(&block[..sid_len as usize]);
        assert_eq!(out, want);
    }
}

#[test]
fn modes() {
    assert_eq!(Mode::for_lengths(false, 8, 8), Mode::Plaintext);
    assert_eq!(Mode::for_lengths(true, 8, 8), Mode::SinglePass);
    assert_eq!(Mode::for_lengths(true, 12, 4), Mode::SinglePass);
    assert_eq!(Mode::for_lengths(true, 8, 9), Mode::FourPass);
    assert_eq!(Mode::for_lengths(true, 1, 4), Mode::FourPass);
    for m in [Mode::Plaintext, Mode::SinglePass, Mode::FourPass] {
        assert_eq!(Mode::from_raw(m as u8), Some(m));
    }
    assert_eq!(Mode::from_raw(0), None);
    assert_eq!(Mode::from_raw(4), None);
}

#[test]
fn debug_output_hides_the_key() {
    let cfg = Config::new(0, 4, 4, Some([0x42; 16]), true).unwrap();
    let s = std::format!("{cfg:?}");
    assert!(s.contains("keyed: true") && !s.contains("66"), "{s}");
}

#[test]
fn round_keys_layout_fits_a_map_value() {
    assert_eq!(core::mem::size_of::<RoundKeys>(), 352);
    assert_eq!(core::mem::align_of::<RoundKeys>(), 4);
}

#[test]
fn plaintext_fast_path_matches_decode_block() {
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..2_000 {
        let mut block = [0u8; BLOCK_LEN];
        rng.fill(&mut block);
        let head = [
            u64::from_le_bytes(block[..8].try_into().unwrap()),
            u64::from_le_bytes(block[8..16].try_into().unwrap()),
        ];
        for sid_len in 1..=MAX_SERVER_ID_LEN as u8 {
            let mut want = [0xeeu8; 16];
            assert!(decode_block(
                Mode::Plaintext,
                sid_len,
                4,
                &RoundKeys::ZERO,
                &block,
                &mut want
            ));
            assert_eq!(
                plaintext_server_id(head, sid_len),
                want,
                "sid_len {sid_len}"
            );
        }
    }
}
