//! Choosing the backend: QUIC server ID from the DCID, else the connection table, else
//! Maglev (recorded in the connection table).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    BACKEND_F_VALID, Backend, CONN_F_VALID, ConnEntry, FlowKey, LearnedKey, MAGLEV_RING_MAX,
    PROTO_UDP, QUIC_LB_MAX_CID_LEN, QUIC_LB_UNROUTABLE_CR, Reason, ServerIdKey,
    VIP_F_AFFINITY_CLIENT_IP, VIP_F_LEARNED_CID, VIP_F_QUIC_LB, VipMeta, affinity_key,
    hash::flow_hash,
    quic, quic_config_key,
    quic_lb::{self, Mode},
    wire::UDP_HLEN,
};

use crate::{
    maps::{LB_BACKENDS, LB_CONNS, LB_LEARNED, LB_MAGLEV, LB_QUIC_CFG, LB_SERVER_IDS},
    packet::{Parsed, load, read},
    stats::VipCounters,
};

/// The backend chosen for a packet.
pub struct Choice {
    pub id: u32,
    pub backend: Backend,
    /// Taken from the connection table: the flow's reply entry was recorded when the entry
    /// was made (and the daemon's sweep deletes both together).
    pub pinned: bool,
}

/// Pick the backend for a VIP packet and count how it was picked. `Err` is a drop reason.
#[inline(always)]
pub fn choose_backend(
    ctx: &XdpContext,
    p: &Parsed,
    vip: &VipMeta,
    c: &VipCounters,
) -> Result<Choice, Reason> {
    let flow = &p.flow;
    if flow.proto == PROTO_UDP && vip.flags & VIP_F_QUIC_LB != 0 {
        match quic_server(ctx, p, vip) {
            Ok(id) => {
                // A server ID that maps to a backend that is gone is treated like an
                // unknown one: fall back, so a live server answers with a stateless reset.
                if let Some(b) = valid_backend(id, flow.family) {
                    c.count_routed_cid(Reason::RoutedCid);
                    return Ok(Choice {
                        id,
                        backend: b,
                        pinned: false,
                    });
                }
                c.count(Reason::FallbackUnknownServer);
            }
            Err(reason) => c.count(reason),
        }
        return table_or_maglev(flow, vip, c);
    }
    if flow.proto == PROTO_UDP && vip.flags & VIP_F_LEARNED_CID != 0 {
        if let Some(id) = learned_server(ctx, p, vip) {
            if let Some(b) = valid_backend(id, flow.family) {
                c.count_routed_cid(Reason::RoutedLearnedCid);
                return Ok(Choice {
                    id,
                    backend: b,
                    pinned: false,
                });
            }
        }
        return table_or_maglev(flow, vip, c);
    }
    if p.is_syn() {
        // A new connection always consults Maglev, so a reused 5-tuple does not inherit a
        // stale entry.
        return maglev(flow, vip, c);
    }
    table_or_maglev(flow, vip, c)
}

/// The 19 octets after a CID's first octet, from two little-endian word loads and a tail.
#[inline(always)]
fn cid_block(head: [u64; 2], tail: [u8; 3]) -> [u8; quic_lb::BLOCK_LEN] {
    let mut out = [0u8; quic_lb::BLOCK_LEN];
    out[..8].copy_from_slice(&head[0].to_le_bytes());
    out[8..16].copy_from_slice(&head[1].to_le_bytes());
    out[16..].copy_from_slice(&tail);
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
fn table_or_maglev(flow: &FlowKey, vip: &VipMeta, c: &VipCounters) -> Result<Choice, Reason> {
    if let Some(e) = unsafe { LB_CONNS.get(flow) } {
        if e.flags & CONN_F_VALID != 0 {
            if let Some(b) = valid_backend(e.backend, flow.family) {
                c.count(Reason::LruHit);
                return Ok(Choice {
                    id: e.backend,
                    backend: b,
                    pinned: true,
                });
            }
        }
    }
    maglev(flow, vip, c)
}

#[inline(always)]
fn maglev(flow: &FlowKey, vip: &VipMeta, c: &VipCounters) -> Result<Choice, Reason> {
    if vip.ring_size == 0 || vip.ring_size > MAGLEV_RING_MAX {
        return Err(Reason::DropNoBackend);
    }
    // sessionAffinity ClientIP: hash the client address only, so all of a client's flows
    // pick one backend; the table below still pins each flow by its own 5-tuple.
    let hash = if vip.flags & VIP_F_AFFINITY_CLIENT_IP != 0 {
        flow_hash(&affinity_key(flow))
    } else {
        flow_hash(flow)
    };
    let slot = vip.ring_offset.wrapping_add(hash % vip.ring_size);
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
    Ok(Choice {
        id,
        backend: b,
        pinned: false,
    })
}

/// The backend id named by the server ID in the packet's DCID, or why there is none.
#[inline(always)]
fn quic_server(ctx: &XdpContext, p: &Parsed, vip: &VipMeta) -> Result<u32, Reason> {
    let payload = p.l4_off + UDP_HLEN;
    let payload_len = p.l4_end.saturating_sub(payload);
    let first = read::<u8, _>(ctx, payload).ok_or(Reason::FallbackUnroutable)?;
    let (dcid_off, dcid_len, client_chosen) = if quic::is_long_header(first) {
        let hdr = read::<[u8; 6], _>(ctx, payload).ok_or(Reason::FallbackUnroutable)?;
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

    let cid0 = read::<u8, _>(ctx, dcid_off).ok_or(fallback(Reason::FallbackUnroutable))?;
    let cr = quic::config_rotation(cid0);
    if cr == QUIC_LB_UNROUTABLE_CR {
        return Err(fallback(Reason::FallbackUnroutable));
    }
    // A reference into the map value: the config carries 352 octets of round keys, more
    // than the stack can spare.
    let cfg = unsafe { LB_QUIC_CFG.get(&quic_config_key(vip.index, cr)) }
        .ok_or(fallback(Reason::FallbackNoConfig))?;
    let Some(mode) = Mode::from_raw(cfg.mode) else {
        return Err(fallback(Reason::FallbackNoConfig));
    };
    if dcid_len < cfg.cid_len() {
        return Err(fallback(Reason::FallbackUnroutable));
    }
    // Load a fixed block after the DCID's first octet with constant-size word loads (no
    // helper call): 16 octets cover any plaintext server ID, the encrypted modes need all 19
    // (server ID + nonce). Any real QUIC packet has that much there: a 16-octet AEAD tag
    // follows the header.
    let head =
        load::<[u64; 2], _>(ctx, dcid_off + 1).ok_or(fallback(Reason::FallbackUnroutable))?;
    let mut key = ServerIdKey {
        vip_index: vip.index,
        config_id: cr,
        sid_len: cfg.sid_len,
        _pad: [0; 2],
        sid: [0; 16],
    };
    // The one QUIC-LB implementation (lb_common::quic_lb), shared with the encoder that
    // userspace and the servers use; plaintext has its own fast path there.
    if mode == Mode::Plaintext && quic_lb::lengths_valid(cfg.sid_len, cfg.nonce_len) {
        key.sid = quic_lb::plaintext_server_id(head, cfg.sid_len);
    } else {
        let tail =
            read::<[u8; 3], _>(ctx, dcid_off + 17).ok_or(fallback(Reason::FallbackUnroutable))?;
        let block = cid_block(head, tail);
        if !quic_lb::decode_block(
            mode,
            cfg.sid_len,
            cfg.nonce_len,
            &cfg.keys,
            &block,
            &mut key.sid,
        ) {
            // Lengths that do not form a valid config for the mode: a bad map entry.
            return Err(fallback(Reason::FallbackNoConfig));
        }
    }
    match unsafe { LB_SERVER_IDS.get(&key) } {
        Some(id) => Ok(*id),
        None => Err(fallback(Reason::FallbackUnknownServer)),
    }
}

/// Learned-CID mode: the backend that chose the packet's DCID, if the reverse NAT learned
/// it. Short header: the DCID is the next `learned_cid_len` octets; long header: the DCID
/// as the header gives it, if it has that length.
#[inline(always)]
fn learned_server(ctx: &XdpContext, p: &Parsed, vip: &VipMeta) -> Option<u32> {
    let len = vip.learned_cid_len();
    if len == 0 || len > QUIC_LB_MAX_CID_LEN {
        return None;
    }
    let payload = p.l4_off + UDP_HLEN;
    let first = read::<u8, _>(ctx, payload)?;
    let cid_off = if quic::is_long_header(first) {
        let hdr = read::<[u8; 6], _>(ctx, payload)?;
        if hdr[5] as usize != len {
            return None;
        }
        payload + quic::LONG_DCID_OFFSET
    } else {
        payload + quic::SHORT_DCID_OFFSET
    };
    if cid_off + len > p.l4_end {
        return None;
    }
    // A fixed 20-octet load (any real QUIC packet has that much after its DCID's start: at
    // least a packet number and a 16-octet AEAD tag follow); the key keeps only the CID.
    let cid = read::<[u8; QUIC_LB_MAX_CID_LEN], _>(ctx, cid_off)?;
    let key = LearnedKey::new(vip.index, cid, len);
    unsafe { LB_LEARNED.get(&key) }.copied()
}
