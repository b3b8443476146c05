//! Tests of [`Plan::diff`]: which writes, in which order.

use std::net::{IpAddr, Ipv4Addr};

use lb_common::{VIP_F_QUIC_LB, quic_lb};

use crate::{
    config::{
        Change, Plan, Protocol, VipId,
        tests::{index_of, plan, policy_vip, v4},
    },
    maglev::{WeightedBackend, build_table},
};

const DIFF_OLD: &str = "interfaces = [\"eth0\"]\n\
    [[vips]]\naddress = \"198.18.0.1\"\nports = [443]\nprotocols = [\"tcp\", \"udp\"]\nmaglev_table_size = 251\n\
    quic_lb = [{ config_id = 0, server_id_len = 2, nonce_len = 6 }]\n\
    backends = [{ address = \"198.19.0.1\", port = 1, server_id = \"0a01\" },\n\
                { address = \"198.19.0.2\", port = 1, server_id = \"0a02\" }]\n\
    [[vips]]\naddress = \"198.18.0.1\"\nports = [53]\nprotocols = [\"udp\"]\nmaglev_table_size = 251\n\
    backends = [{ address = \"198.19.0.1\", port = 53 }]\n";

const DIFF_NEW: &str = "interfaces = [\"eth0\"]\n\
    [[vips]]\naddress = \"198.18.0.1\"\nports = [443]\nprotocols = [\"tcp\", \"udp\"]\nmaglev_table_size = 251\n\
    quic_lb = [{ config_id = 0, server_id_len = 2, nonce_len = 8 }]\n\
    backends = [{ address = \"198.19.0.1\", port = 1, server_id = \"0a01\", weight = 2 },\n\
                { address = \"198.19.0.3\", port = 1, server_id = \"0a03\" }]\n";

fn wb(id: u32, d: u8, port: u16, weight: u32) -> WeightedBackend {
    WeightedBackend {
        id,
        addr: v4(d),
        port,
        weight,
    }
}

fn diff_strings(old: &str, new: &str) -> Vec<String> {
    let o = plan(old, None);
    let n = plan(new, Some(&o));
    Plan::diff(&o, &n).iter().map(|c| c.to_string()).collect()
}

#[test]
fn diff_orders_adds_before_publishes_before_removals() {
    let old = plan(DIFF_OLD, None);
    let new = plan(DIFF_NEW, Some(&old));
    let vip = |port, proto| VipId {
        addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        port,
        proto,
    };
    let ring = vec![wb(0, 1, 1, 2), wb(3, 3, 1, 1)];
    assert_eq!(
        Plan::diff(&old, &new),
        vec![
            Change::SetBackend {
                id: 3,
                addr: v4(3),
                port: 1
            },
            Change::SetQuicConfig {
                vip_index: 1,
                config: quic_lb::Config::new(0, 2, 8, None, true).unwrap()
            },
            Change::SetServerId {
                vip_index: 1,
                config_id: 0,
                server_id: vec![0x0a, 0x03],
                backend: 3
            },
            Change::PublishVip {
                key: vip(443, Protocol::Tcp),
                index: 0,
                flags: 0,
                ring_size: 251,
                backends: ring.clone()
            },
            Change::PublishVip {
                key: vip(443, Protocol::Udp),
                index: 1,
                flags: VIP_F_QUIC_LB,
                ring_size: 251,
                backends: ring
            },
            Change::RemoveVip {
                key: vip(53, Protocol::Udp)
            },
            Change::RemoveServerId {
                vip_index: 1,
                config_id: 0,
                server_id: vec![0x0a, 0x02]
            },
            Change::ClearBackend { id: 1 },
            Change::ClearBackend { id: 2 },
        ]
    );
    // From nothing: backends, then configs and server IDs, then rings.
    let from_empty: Vec<String> = Plan::diff(&Plan::default(), &old)
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(
        from_empty,
        vec![
            "set backend 0 = 198.19.0.1:1",
            "set backend 1 = 198.19.0.2:1",
            "set backend 2 = 198.19.0.1:53",
            "set QUIC-LB config 0 of VIP 1",
            "map server ID 0a01 (config 0) of VIP 1 to backend 0",
            "map server ID 0a02 (config 0) of VIP 1 to backend 1",
            "publish VIP 0 (tcp 198.18.0.1:443): 251-slot ring over 2 backends",
            "publish VIP 1 (udp 198.18.0.1:443): 251-slot ring over 2 backends",
            "publish VIP 2 (udp 198.18.0.1:53): 251-slot ring over 1 backends",
        ]
    );
    // To nothing: VIPs, then server IDs and configs, then backends.
    let to_empty: Vec<String> = Plan::diff(&old, &Plan::default())
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(
        to_empty,
        vec![
            "remove VIP tcp 198.18.0.1:443",
            "remove VIP udp 198.18.0.1:443",
            "remove VIP udp 198.18.0.1:53",
            "remove server ID 0a01 (config 0) of VIP 1",
            "remove server ID 0a02 (config 0) of VIP 1",
            "clear QUIC-LB config 0 of VIP 1",
            "clear backend 0",
            "clear backend 1",
            "clear backend 2",
        ]
    );
}

#[test]
fn diff_turning_quic_off_flips_the_flag_before_clearing() {
    let old = plan(DIFF_NEW, None);
    let off = DIFF_NEW.replace(
        "maglev_table_size = 251\n",
        "maglev_table_size = 251\nquic = false\n",
    );
    let new = plan(&off, Some(&old));
    let d: Vec<String> = Plan::diff(&old, &new)
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(
        d,
        vec![
            "publish VIP 1 (udp 198.18.0.1:443): 251-slot ring over 2 backends",
            "remove server ID 0a01 (config 0) of VIP 1",
            "remove server ID 0a03 (config 0) of VIP 1",
            "clear QUIC-LB config 0 of VIP 1",
        ]
    );
}

#[test]
fn diff_retires_a_reused_vip_index_before_writing_it() {
    // 63 ports fill indexes 0..63, a second entry takes 63: the maps (64 VIPs) are full.
    let ports: Vec<String> = (1..=63).map(|p| p.to_string()).collect();
    let head = format!(
        "interfaces = [\"eth0\"]\n[capacity]\nvips = 64\n[[vips]]\naddress = \"198.18.0.1\"\nports = [{}]\nprotocols = [\"tcp\"]\n\
         backends = [{{ address = \"198.19.0.1\", port = 1 }}]\n",
        ports.join(", ")
    );
    let tail = |port: u16| {
        format!(
            "[[vips]]\naddress = \"198.18.0.2\"\nports = [{port}]\nprotocols = [\"tcp\"]\n\
             backends = [{{ address = \"198.19.0.1\", port = 1 }}]\n"
        )
    };
    let old = plan(&format!("{head}{}", tail(1000)), None);
    let new = plan(&format!("{head}{}", tail(2000)), Some(&old));
    assert_eq!(index_of(&new, "tcp 198.18.0.2:2000"), 63);
    let d: Vec<String> = Plan::diff(&old, &new)
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(
        d,
        vec![
            "remove VIP tcp 198.18.0.2:1000",
            "publish VIP 63 (tcp 198.18.0.2:2000): 257-slot ring over 1 backends",
        ]
    );
}

#[test]
fn weights_set_ring_shares() {
    let text = "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [1]\nprotocols = [\"tcp\"]\n\
        maglev_table_size = 10007\n\
        backends = [{ address = \"198.19.0.1\", port = 1, weight = 1 },\n\
                    { address = \"198.19.0.2\", port = 1, weight = 3 },\n\
                    { address = \"198.19.0.3\", port = 1, weight = 0 }]\n";
    let p = plan(text, None);
    let changes = Plan::diff(&Plan::default(), &p);
    let Some(Change::PublishVip {
        ring_size,
        backends,
        ..
    }) = changes
        .iter()
        .find(|c| matches!(c, Change::PublishVip { .. }))
    else {
        panic!("no publish in {changes:?}")
    };
    let table = build_table(backends, *ring_size).unwrap();
    let count = |id| table.iter().filter(|&&s| s == id).count();
    assert_eq!(table.len(), 10007);
    assert_eq!(count(2), 0, "weight 0 gets no slots");
    let (a, b) = (count(0), count(1));
    assert_eq!(a + b, 10007);
    // 1 : 3, within 1% of the table.
    assert!((a as i64 - 10007 / 4).abs() < 100, "weight 1 got {a} slots");
    assert!(
        (b as i64 - 3 * 10007 / 4).abs() < 100,
        "weight 3 got {b} slots"
    );
}

#[test]
fn diff_orders_source_range_changes_safely() {
    let open = policy_vip("198.18.0.1", "");
    let ranged = policy_vip(
        "198.18.0.1",
        "source_ranges = [\"198.18.0.0/24\", \"203.0.113.0/24\"]",
    );
    let changed = policy_vip(
        "198.18.0.1",
        "source_ranges = [\"198.18.0.0/24\", \"198.18.7.0/24\"]",
    );
    // Closing an open VIP: the entries first, then the flag (no allowed client dropped).
    assert_eq!(
        diff_strings(&open, &ranged),
        vec![
            "allow source range 198.18.0.0/24 on VIP 0",
            "allow source range 203.0.113.0/24 on VIP 0",
            "set flags of VIP tcp 198.18.0.1:80 to 0x4",
        ]
    );
    // Opening it again: the flag first, then the entries.
    assert_eq!(
        diff_strings(&ranged, &open),
        vec![
            "set flags of VIP tcp 198.18.0.1:80 to 0x0",
            "remove source range 198.18.0.0/24 of VIP 0",
            "remove source range 203.0.113.0/24 of VIP 0",
        ]
    );
    // Changing the ranges: add the new before removing the old; the flag stays.
    assert_eq!(
        diff_strings(&ranged, &changed),
        vec![
            "allow source range 198.18.7.0/24 on VIP 0",
            "remove source range 203.0.113.0/24 of VIP 0",
        ]
    );
    // Affinity alone flips the flag in place, without rewriting the ring.
    assert_eq!(
        diff_strings(
            &open,
            &open.replace(
                "\n\nbackends",
                "\nsession_affinity = \"client_ip\"\nbackends"
            )
        ),
        vec!["set flags of VIP tcp 198.18.0.1:80 to 0x8"]
    );
    // A new VIP with ranges: its entries before its first publish; a removed VIP's
    // entries after it is gone.
    let two = format!(
        "{ranged}[[vips]]\naddress = \"198.18.0.2\"\nports = [80]\nprotocols = [\"tcp\"]\n\
         maglev_table_size = 251\nsource_ranges = [\"198.18.0.0/16\"]\n\
         backends = [{{ address = \"198.19.0.1\", port = 8080 }}]\n"
    );
    assert_eq!(
        diff_strings(&ranged, &two),
        vec![
            "allow source range 198.18.0.0/16 on VIP 1",
            "publish VIP 1 (tcp 198.18.0.2:80): 251-slot ring over 1 backends",
        ]
    );
    assert_eq!(
        diff_strings(&two, &ranged),
        vec![
            "remove VIP tcp 198.18.0.2:80",
            "remove source range 198.18.0.0/16 of VIP 1",
        ]
    );
}

#[test]
fn diff_evicts_flows_of_removed_backends_but_not_drained_ones() {
    let two_vips = |b2: &str, web_extra: &str| {
        format!(
            "interfaces = [\"eth0\"]\n\
             [[vips]]\naddress = \"198.18.0.1\"\nports = [80]\nprotocols = [\"tcp\"]\n\
             maglev_table_size = 251\n\
             backends = [{{ address = \"198.19.0.1\", port = 1 }}{b2}]\n\
             [[vips]]\naddress = \"198.18.0.2\"\nports = [80]\nprotocols = [\"tcp\"]\n\
             maglev_table_size = 251\n\
             backends = [{{ address = \"198.19.0.1\", port = 1 }}{web_extra}]\n"
        )
    };
    let both = two_vips(", { address = \"198.19.0.2\", port = 1 }", "");
    // Backend 1 (198.19.0.2:1) leaves its only VIP: gone, cleared (which evicts) last.
    assert_eq!(
        diff_strings(&both, &two_vips("", "")),
        vec![
            "publish VIP 0 (tcp 198.18.0.1:80): 251-slot ring over 1 backends",
            "clear backend 1",
        ]
    );
    // Drained (weight 0): out of the ring, but its entry and flows stay.
    assert_eq!(
        diff_strings(
            &both,
            &two_vips(", { address = \"198.19.0.2\", port = 1, weight = 0 }", "")
        ),
        vec!["publish VIP 0 (tcp 198.18.0.1:80): 251-slot ring over 1 backends"]
    );
    // Backend 0 leaves VIP 0 but still serves VIP 1: its flows of VIP 0 only.
    let shared = two_vips(", { address = \"198.19.0.2\", port = 1 }", "");
    let moved = shared.replacen("{ address = \"198.19.0.1\", port = 1 }, ", "", 1);
    assert_eq!(
        diff_strings(&shared, &moved),
        vec![
            "publish VIP 0 (tcp 198.18.0.1:80): 251-slot ring over 1 backends",
            "evict flows of VIP tcp 198.18.0.1:80 to backend 0",
        ]
    );
}
