//! `config::apply` against the real program: a plan from a static config programs the maps
//! (VIPs, both Maglev rings, QUIC-LB server IDs), a reload's diff flips each VIP to its spare
//! ring, and QUIC short headers are steered by their CIDs before and after (needs root; runs
//! in a `lb_lab::testbed` namespace through BPF_PROG_TEST_RUN).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use anyhow::Result;
use lb_common::{Reason, VipKey, VipMeta};
use lb_lab::{
    netns::require_root,
    packet::{Packet, parse, quic},
    testbed::{CLIENT_MAC, CLIENT_V4, EXT_MAC, Testbed},
};
use lb_userspace::{
    config::{Change, Config, Plan, Protocol, VipId, apply},
    dataplane::Dataplane,
};

/// Two VIPs on 198.18.0.1: 443 tcp+udp with QUIC-LB (server IDs 0a01, 0a02) and 53 udp.
const OLD: &str = "interfaces = [\"eth0\"]\n\
    [[vips]]\naddress = \"198.18.0.1\"\nports = [443]\nprotocols = [\"tcp\", \"udp\"]\nmaglev_table_size = 251\n\
    quic_lb = [{ config_id = 0, server_id_len = 2, nonce_len = 6 }]\n\
    backends = [{ address = \"198.19.0.1\", port = 1, server_id = \"0a01\" },\n\
                { address = \"198.19.0.2\", port = 1, server_id = \"0a02\" }]\n\
    [[vips]]\naddress = \"198.18.0.1\"\nports = [53]\nprotocols = [\"udp\"]\nmaglev_table_size = 251\n\
    backends = [{ address = \"198.19.0.1\", port = 53 }]\n";

/// The reload: 0a02 leaves, 0a03 joins, 0a01 weighs twice, the nonce grows, port 53 goes.
const NEW: &str = "interfaces = [\"eth0\"]\n\
    [[vips]]\naddress = \"198.18.0.1\"\nports = [443]\nprotocols = [\"tcp\", \"udp\"]\nmaglev_table_size = 251\n\
    quic_lb = [{ config_id = 0, server_id_len = 2, nonce_len = 8 }]\n\
    backends = [{ address = \"198.19.0.1\", port = 1, server_id = \"0a01\", weight = 2 },\n\
                { address = \"198.19.0.3\", port = 1, server_id = \"0a03\" }]\n";

fn plan(text: &str, prev: Option<&Plan>) -> Plan {
    // Neither config names a key file, so the base directory is never read.
    let config =
        Config::parse(text, "lb.toml", Path::new("/nonexistent")).unwrap_or_else(|e| panic!("{e}"));
    Plan::build(&config, prev).unwrap_or_else(|e| panic!("{e}"))
}

fn v4(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 19, 0, d))
}

/// The VIP's meta and how many slots of its live ring each backend id owns.
fn live_ring(dp: &Dataplane, key: &VipKey) -> (VipMeta, BTreeMap<u32, usize>) {
    let meta = dp.vip(key).expect("VIP in the map");
    let mut owners = BTreeMap::new();
    for slot in 0..meta.ring_size {
        *owners
            .entry(dp.ring_slot(&meta, slot).expect("ring slot"))
            .or_insert(0) += 1;
    }
    (meta, owners)
}

/// Run a QUIC short-header packet to udp 198.18.0.1:443 whose DCID (config 0, plaintext)
/// carries `sid` and a `nonce_len`-octet nonce; where did the program send it?
fn send_quic(dp: &Dataplane, tb: &Testbed, sid: &[u8], nonce_len: usize) -> Result<(IpAddr, u16)> {
    let mut dcid = vec![(sid.len() + nonce_len) as u8];
    dcid.extend_from_slice(sid);
    dcid.extend(std::iter::repeat_n(0x5a, nonce_len));
    let pkt = Packet::eth(CLIENT_MAC, EXT_MAC)
        .ipv4(CLIENT_V4, Ipv4Addr::new(198, 18, 0, 1))
        .udp(40000, 443)
        .payload(quic::short(&dcid, 48))
        .build();
    let out = dp.test_run(&pkt, tb.ext_ifindex)?;
    let p = parse(&out.data).map_err(anyhow::Error::msg)?;
    Ok((p.dst_ip(), p.dport))
}

#[test]
fn config_apply_programs_the_dataplane_and_reloads() -> Result<()> {
    require_root()?;
    let tb = Testbed::new()?;
    let _inside = tb.enter()?;
    let mut dp = Dataplane::load()?;

    let old = plan(OLD, None);
    apply(&mut dp, &Plan::diff(&Plan::default(), &old))?;
    // A QUIC short header whose DCID names server 0a02 reaches 198.19.0.2 by its CID.
    let before = dp.vip_stats(1)?;
    assert_eq!(send_quic(&dp, &tb, &[0x0a, 0x02], 6)?, (v4(2), 1));
    let moved = dp.vip_stats(1)?.delta(&before);
    assert_eq!((moved.packets, moved.routed_cid), (1, 1), "{moved:?}");
    let mut old_rings = Vec::new();
    for v in &old.vips {
        let (meta, owners) = live_ring(&dp, &v.key.key());
        assert_eq!(
            (meta.index, meta.flags, meta.ring_size),
            (v.index, v.flags, 251)
        );
        old_rings.push(meta.ring_offset);
        let ids: Vec<u32> = v.backends.iter().map(|b| b.id).collect();
        assert_eq!(owners.keys().copied().collect::<Vec<_>>(), ids, "{}", v.key);
    }

    // Backend 198.19.0.2:1 (id 1) leaves, 198.19.0.3:1 (id 3) joins, port 53 goes.
    let new = plan(NEW, Some(&old));
    apply(&mut dp, &Plan::diff(&old, &new))?;
    for v in &new.vips {
        let (meta, owners) = live_ring(&dp, &v.key.key());
        assert_eq!((meta.index, meta.ring_size), (v.index, 251));
        assert!(
            !old_rings.contains(&meta.ring_offset),
            "a new ring in other slots: {meta:?}, old {old_rings:?}"
        );
        assert_eq!(
            owners.keys().copied().collect::<Vec<_>>(),
            vec![0, 3],
            "{}",
            v.key
        );
        assert!(
            owners[&0] > owners[&3],
            "weight 2 beats weight 1: {owners:?}"
        );
    }
    // Server 0a03 (new) is routed by CID under the new nonce length; 0a02 is gone, so
    // its CID takes the fallback to a live backend.
    let before = dp.vip_stats(1)?;
    let node_before = dp.stats()?;
    assert_eq!(send_quic(&dp, &tb, &[0x0a, 0x03], 8)?, (v4(3), 1));
    let fallback = send_quic(&dp, &tb, &[0x0a, 0x02], 8)?;
    assert!(
        fallback == (v4(1), 1) || fallback == (v4(3), 1),
        "{fallback:?}"
    );
    let moved = dp.vip_stats(1)?.delta(&before);
    assert_eq!((moved.packets, moved.routed_cid), (2, 1), "{moved:?}");
    // Node-wide, the second packet took the fallback.
    let node = dp.stats()?.delta(&node_before);
    assert_eq!(
        node.packets(Reason::FallbackUnknownServer),
        1,
        "{:?}",
        node.nonzero()
    );
    let gone = VipId {
        addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        port: 53,
        proto: Protocol::Udp,
    };
    assert!(dp.vip(&gone.key()).is_none());
    // Removing what is no longer there fails loudly: the server ID 0a02 is gone.
    let err = apply(
        &mut dp,
        &[Change::RemoveServerId {
            vip_index: 1,
            config_id: 0,
            server_id: vec![0x0a, 0x02],
        }],
    )
    .expect_err("removing a server ID that is gone");
    assert!(
        err.to_string()
            .starts_with("change 1 of 1 (remove server ID 0a02 (config 0) of VIP 1) failed"),
        "{err}"
    );
    Ok(())
}
