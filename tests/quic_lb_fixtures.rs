//! BPF_PROG_TEST_RUN fixtures for QUIC-LB decoding in the XDP program: every mode
//! (plaintext, single-pass AES, four-pass AES) decoded from real packets, v4 and v6, short and
//! long headers, with the draft's own test vectors as CIDs; exact output bytes and counters,
//! as in `xdp_fixtures.rs` (same helpers, same testbed).
//!
//! ```sh
//! cargo test -p lb-tests --test quic_lb_fixtures -- --test-threads=1
//! ```

mod support;

use std::net::IpAddr;

use anyhow::Result;
use lb_common::{
    Reason::*,
    quic_lb::{self, Config, vectors::DRAFT_VECTORS},
};
use lb_lab::{
    packet::quic,
    testbed::{fixture::*, *},
};
use support::fixture::*;

const RING: u32 = 251;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn short(src: impl Into<IpAddr>, vip: impl Into<IpAddr>, sport: u16, dcid: &[u8]) -> Pkt {
    Pkt::udp(src, vip, sport, VIP_PORT).payload(quic::short(dcid, 48))
}

fn handshake(src: impl Into<IpAddr>, vip: impl Into<IpAddr>, sport: u16, dcid: &[u8]) -> Pkt {
    Pkt::udp(src, vip, sport, VIP_PORT).payload(quic::handshake(dcid, &[0x5c; 8], 40))
}

fn initial(src: impl Into<IpAddr>, vip: impl Into<IpAddr>, sport: u16, dcid: &[u8]) -> Pkt {
    Pkt::udp(src, vip, sport, VIP_PORT).payload(quic::initial(dcid, &[0x5c; 8], &[], 40))
}

/// (VIP index, VIP address, client address, backend id of backend i) of one QUIC VIP.
type QuicVip = (u32, IpAddr, IpAddr, fn(u8) -> u32);

/// The two QUIC VIPs of the fixture, with the client address and the backend id family that
/// goes with each.
fn quic_vips() -> [QuicVip; 2] {
    [
        (VIP_V4_QUIC, VIP_V4.into(), CLIENT_V4.into(), v4_backend_id),
        (VIP_V6_QUIC, VIP_V6.into(), CLIENT_V6.into(), v6_backend_id),
    ]
}

/// Every row of the draft's appendix (and its worked example), wrapped in real packets: the
/// VIP is given the row's configuration and key, the row's server ID is mapped to a backend,
/// and the row's CID in a short header and in a Handshake long header reaches that backend
/// with exact bytes. Backends rotate across rows so a decode that lands on the wrong server
/// cannot pass.
#[test]
fn draft_vectors_route_short_and_long_headers_v4_and_v6() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        for (n, v) in DRAFT_VECTORS.iter().enumerate() {
            let (sid, nonce, cid) = (hex(v.sid), hex(v.nonce), hex(v.cid));
            let key = v.key.map(|k| hex(k).try_into().unwrap());
            let cfg = Config::new(v.cr, sid.len() as u8, nonce.len() as u8, key, true)?;
            let i = (n % BACKENDS as usize) as u8;
            for (vip, addr, client, id_of) in quic_vips() {
                lb.dp.set_quic_config(vip, &cfg)?;
                lb.dp.set_server_id(vip, v.cr, &sid, id_of(i))?;
                let what = format!("draft row {n} ({:?}, cid {}) to {addr}", cfg.mode(), v.cid);
                let p = short(client, addr, 41000 + n as u16, &cid);
                expect_redirect(lb, &format!("{what}, short"), &p, &[RoutedCid], id_of(i));
                let p = handshake(client, addr, 41100 + n as u16, &cid);
                expect_redirect(
                    lb,
                    &format!("{what}, handshake"),
                    &p,
                    &[RoutedCid],
                    id_of(i),
                );
                // A client's later Initials echo the server's CID: routed too.
                let p = initial(client, addr, 41200 + n as u16, &cid);
                expect_redirect(lb, &format!("{what}, initial"), &p, &[RoutedCid], id_of(i));
                assert!(
                    lb.dp.conn_entries(&p.flow_key()).is_empty(),
                    "{what}: no table entry"
                );
                lb.dp.remove_server_id(vip, v.cr, &sid)?;
            }
        }
        Ok(())
    })
}

/// The fixture's own single-pass (config 1) and four-pass (config 2, odd length) configs,
/// encoded by the shared codec for every backend, decode in the program to that backend; a
/// client that migrates (new source port) with the same CID stays put.
#[test]
fn single_pass_and_four_pass_route_every_backend() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        for cr in [SINGLE_PASS_CR, FOUR_PASS_CR] {
            for (_, addr, client, id_of) in quic_vips() {
                for i in 0..BACKENDS {
                    for (nonce, sport) in [(0x01u8, 42000u16), (0x7f, 42001), (0xfe, 42002)] {
                        let cid = dcid_under(cr, i, nonce);
                        let p = short(client, addr, sport + 10 * i as u16, &cid);
                        let what = format!("cr {cr} backend {i} nonce {nonce:#x} via {addr}");
                        expect_redirect(lb, &what, &p, &[RoutedCid], id_of(i));
                    }
                }
            }
        }
        Ok(())
    })
}

/// A CID encrypted under another key decodes to noise. With three 3-octet server IDs mapped
/// the noise names one of them with probability 3 / 2^24 (about 1.8e-7) per CID, so these
/// cases take the fallback (unknown server → table or Maglev), never a confident misroute;
/// the test would see a misroute as an unexpected RoutedCid.
#[test]
fn wrong_key_falls_back_instead_of_misrouting() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let real = quic_config(FOUR_PASS_CR);
        let forged = Config::new(
            FOUR_PASS_CR,
            real.server_id_len(),
            real.nonce_len(),
            Some(*b"not-the-real-key"),
            true,
        )?;
        for n in 0..20u8 {
            let mut out = [0u8; quic_lb::MAX_CID_LEN];
            let nonce = [n; 6];
            let len = quic_lb::encode(
                &forged,
                &server_id_under(FOUR_PASS_CR, 0),
                &nonce,
                0,
                &mut out,
            )?;
            let p = short(CLIENT_V4, VIP_V4, 43000 + n as u16, &out[..len]);
            let id = maglev_pick(lb, &p);
            let what = format!("forged CID {n}");
            expect_redirect(lb, &what, &p, &[FallbackUnknownServer, Maglev], id);
            expect_redirect(
                lb,
                &format!("{what}, again"),
                &p,
                &[FallbackUnknownServer, LruHit],
                id,
            );
        }
        Ok(())
    })
}

/// Draft -21 order for what does not route: a server ID that is not (or no longer) mapped
/// takes the 4-tuple table, else Maglev recorded in the table, so a live server answers
/// (with a stateless reset) instead of silence. Removing the mapping mid-connection moves
/// the flow to the fallback; restoring it routes by CID again.
#[test]
fn unmapped_server_id_under_aes_takes_the_fallback() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let cid = dcid_under(SINGLE_PASS_CR, 2, 0x33);
        let p = short(CLIENT_V4, VIP_V4, 44000, &cid);
        expect_redirect(lb, "mapped", &p, &[RoutedCid], v4_backend_id(2));
        let sid = server_id_under(SINGLE_PASS_CR, 2);
        lb.dp.remove_server_id(VIP_V4_QUIC, SINGLE_PASS_CR, &sid)?;
        let id = maglev_pick(lb, &p);
        expect_redirect(
            lb,
            "unmapped, first",
            &p,
            &[FallbackUnknownServer, Maglev],
            id,
        );
        expect_redirect(
            lb,
            "unmapped, second",
            &p,
            &[FallbackUnknownServer, LruHit],
            id,
        );
        lb.dp
            .set_server_id(VIP_V4_QUIC, SINGLE_PASS_CR, &sid, v4_backend_id(2))?;
        expect_redirect(lb, "mapped again", &p, &[RoutedCid], v4_backend_id(2));
        Ok(())
    })
}

/// Clearing a config rotation value (a retired key) sends its CIDs to the fallback, counted
/// as "no config"; the other configs of the VIP are unaffected.
#[test]
fn cleared_config_falls_back_and_others_still_route() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        lb.dp.clear_quic_config(VIP_V4_QUIC, FOUR_PASS_CR)?;
        let p = short(CLIENT_V4, VIP_V4, 45000, &dcid_under(FOUR_PASS_CR, 1, 0x44));
        let id = maglev_pick(lb, &p);
        expect_redirect(lb, "cleared config", &p, &[FallbackNoConfig, Maglev], id);
        let p = short(
            CLIENT_V4,
            VIP_V4,
            45001,
            &dcid_under(SINGLE_PASS_CR, 1, 0x44),
        );
        expect_redirect(lb, "other config", &p, &[RoutedCid], v4_backend_id(1));
        Ok(())
    })
}

/// The encrypted modes read 19 octets after the CID's first octet; a datagram that ends
/// inside that block is unroutable (no real QUIC packet is that short: a 16-octet AEAD tag
/// follows the header) and still reaches a live backend.
#[test]
fn encrypted_cid_cut_short_is_unroutable() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        let cid = dcid_under(FOUR_PASS_CR, 0, 0x55);
        // Short header: first octet, the 10-octet CID, then 9 more: 1 + 19 = 20 octets from
        // the CID start are there only with at least 10 after it.
        for after in [0usize, 5, 9] {
            let mut payload = vec![0x40];
            payload.extend_from_slice(&cid);
            payload.extend(std::iter::repeat_n(0xab, after));
            let p = Pkt::udp(CLIENT_V4, VIP_V4, 46000 + after as u16, VIP_PORT).payload(&payload);
            let id = maglev_pick(lb, &p);
            expect_redirect(
                lb,
                &format!("{after} after"),
                &p,
                &[FallbackUnroutable, Maglev],
                id,
            );
        }
        let mut payload = vec![0x40];
        payload.extend_from_slice(&cid);
        payload.extend(std::iter::repeat_n(0xab, 10));
        let p = Pkt::udp(CLIENT_V4, VIP_V4, 46100, VIP_PORT).payload(&payload);
        expect_redirect(lb, "10 after", &p, &[RoutedCid], v4_backend_id(0));
        Ok(())
    })
}
