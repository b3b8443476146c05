//! Choosing the backend: QUIC server ID from the DCID, else the connection table, else
//! Maglev (recorded in the connection table).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    BACKEND_F_VALID, Backend, CONN_F_VALID, ConnEntry, FlowKey, MAGLEV_RING_MAX, PROTO_TCP,
    PROTO_UDP, QUIC_LB_CONFIGS_PER_VIP, QUIC_LB_MAX_SID_LEN, QUIC_LB_MODE_NONE,
    QUIC_LB_MODE_PLAINTEXT, QUIC_LB_UNROUTABLE_CR, Reason, ServerIdKey, VIP_F_QUIC_LB, VipMeta,
    hash::flow_hash, quic,
};

use crate::{
    maps::{LB_BACKENDS, LB_CONNS, LB_MAGLEV, LB_QUIC_CFG, LB_SERVER_IDS},
    packet::{Parsed, TCP_FLAG_ACK, TCP_FLAG_SYN, load, read},
    stats::VipCounters,
};

const UDP_HLEN: usize = 8;

/// Pick the backend for a VIP packet and count how it was picked. `Err` is a drop reason.
#[inline(always)]
pub fn choose_backend(
    ctx: &XdpContext,
    p: &Parsed,
    vip: &VipMeta,
    c: &VipCounters,
) -> Result<(u32, Backend), Reason> {
    let flow = &p.flow;
    if flow.proto == PROTO_UDP && vip.flags & VIP_F_QUIC_LB != 0 {
        match quic_server(ctx, p, vip) {
            Ok(id) => {
                // A server ID that maps to a backend that is gone is treated like an
                // unknown one: fall back, so a live server answers with a stateless reset.
                if let Some(b) = valid_backend(id, flow.family) {
                    c.count(Reason::RoutedCid);
                    return Ok((id, b));
                }
                c.count(Reason::FallbackUnknownServer);
            }
            Err(reason) => c.count(reason),
        }
        return table_or_maglev(flow, vip, c);
    }
    if flow.proto == PROTO_TCP && p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
        // A new connection always consults Maglev, so a reused 5-tuple does not inherit a
        // stale entry.
        return maglev(flow, vip, c);
    }
    table_or_maglev(flow, vip, c)
}

#[inline(always)]
fn sid_octets(lo: u64, hi: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&lo.to_le_bytes());
    out[8..].copy_from_slice(&hi.to_le_bytes());
    out
}

#[inline(always)]
fn valid_backend(id: u32, family: u8) -> Option<Backend> {
    let b = *LB_BACKENDS.get(id)?;
    if b.flags & BACKEND_F_VALID != 0 && b.family == family {
        Some(b)
    } else {
        None
    }
}

#[inline(always)]
fn table_or_maglev(
    flow: &FlowKey,
    vip: &VipMeta,
    c: &VipCounters,
) -> Result<(u32, Backend), Reason> {
    if let Some(e) = unsafe { LB_CONNS.get(flow) } {
        if e.flags & CONN_F_VALID != 0 {
            if let Some(b) = valid_backend(e.backend, flow.family) {
                c.count(Reason::LruHit);
                return Ok((e.backend, b));
            }
        }
    }
    maglev(flow, vip, c)
}

#[inline(always)]
fn maglev(flow: &FlowKey, vip: &VipMeta, c: &VipCounters) -> Result<(u32, Backend), Reason> {
    if vip.ring_size == 0 || vip.ring_size > MAGLEV_RING_MAX {
        return Err(Reason::DropNoBackend);
    }
    let slot = vip.ring_base() + flow_hash(flow) % vip.ring_size;
    let id = *LB_MAGLEV.get(slot).ok_or(Reason::DropBadBackend)?;
    let b = valid_backend(id, flow.family).ok_or(Reason::DropBadBackend)?;
    let _ = LB_CONNS.insert(
        flow,
        ConnEntry {
            backend: id,
            flags: CONN_F_VALID,
        },
        0,
    );
    c.count(Reason::Maglev);
    Ok((id, b))
}

/// The backend id named by the server ID in the packet's DCID, or why there is none.
#[inline(always)]
fn quic_server(ctx: &XdpContext, p: &Parsed, vip: &VipMeta) -> Result<u32, Reason> {
    let payload = p.l4_off + UDP_HLEN;
    let payload_len = p.l4_end.saturating_sub(payload);
    let first = read::<u8>(ctx, payload).ok_or(Reason::FallbackUnroutable)?;
    let (dcid_off, dcid_len, client_chosen) = if quic::is_long_header(first) {
        let hdr = read::<[u8; 6]>(ctx, payload).ok_or(Reason::FallbackUnroutable)?;
        let version = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]);
        let dcid_len = hdr[5] as usize;
        let client_chosen = quic::long_header_has_client_dcid(first, version);
        if quic::LONG_DCID_OFFSET + dcid_len > payload_len {
            return Err(if client_chosen {
                Reason::FallbackInitial
            } else {
                Reason::FallbackUnroutable
            });
        }
        (payload + quic::LONG_DCID_OFFSET, dcid_len, client_chosen)
    } else {
        // Short headers do not carry the DCID length; the config says how long it is.
        (
            payload + quic::SHORT_DCID_OFFSET,
            payload_len.saturating_sub(1),
            false,
        )
    };
    // Initial and 0-RTT packets that do not decode carry a client-chosen DCID: one reason
    // for all of them, so `fallback_initial` counts new connection attempts.
    let fallback = |r: Reason| {
        if client_chosen {
            Reason::FallbackInitial
        } else {
            r
        }
    };

    let cid0 = read::<u8>(ctx, dcid_off).ok_or(fallback(Reason::FallbackUnroutable))?;
    let cr = quic::config_rotation(cid0);
    if cr == QUIC_LB_UNROUTABLE_CR {
        return Err(fallback(Reason::FallbackUnroutable));
    }
    let cfg = *LB_QUIC_CFG
        .get(vip.index * QUIC_LB_CONFIGS_PER_VIP + cr as u32)
        .ok_or(fallback(Reason::FallbackNoConfig))?;
    if cfg.mode == QUIC_LB_MODE_NONE {
        return Err(fallback(Reason::FallbackNoConfig));
    }
    let sid_len = cfg.sid_len as usize;
    if dcid_len < cfg.cid_len() {
        return Err(fallback(Reason::FallbackUnroutable));
    }
    if cfg.mode != QUIC_LB_MODE_PLAINTEXT || sid_len == 0 || sid_len > QUIC_LB_MAX_SID_LEN {
        // Encrypted modes arrive with the QUIC-LB codec; until then they are unroutable.
        return Err(fallback(Reason::FallbackNoConfig));
    }
    let mut key = ServerIdKey {
        vip_index: vip.index,
        config_id: cr,
        sid_len: cfg.sid_len,
        _pad: [0; 2],
        sid: [0; 16],
    };
    // Load a fixed 16 octets after the DCID's first octet and clear what is not server ID:
    // constant-size word loads, no helper call, and any real QUIC packet has that much there
    // (a 16-octet AEAD tag follows the header).
    let words = load::<[u64; 2]>(ctx, dcid_off + 1).ok_or(fallback(Reason::FallbackUnroutable))?;
    // Octet i of the ID is bits 8i..8i+8 of the little-endian words.
    let keep = |n: usize| {
        if n >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * n)) - 1
        }
    };
    key.sid = sid_octets(
        words[0] & keep(sid_len),
        words[1] & keep(sid_len.saturating_sub(8)),
    );
    match unsafe { LB_SERVER_IDS.get(&key) } {
        Some(id) => Ok(*id),
        None => Err(fallback(Reason::FallbackUnknownServer)),
    }
}
