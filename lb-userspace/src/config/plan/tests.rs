//! Tests of [`Plan::build`]: VIP indexes and backend ids (kept across reloads), flags,
//! server IDs and rings.

use std::net::SocketAddr;

use lb_common::{VIP_F_AFFINITY_CLIENT_IP, VIP_F_QUIC_LB, VIP_F_SOURCE_RANGES};

use crate::config::{
    Plan, PlannedServerId, Protocol,
    tests::{EXAMPLE, be, index_of, learned_vip, parse, plan, policy_vip, quic_vip},
};

fn id_of(p: &Plan, s: &str) -> u32 {
    p.backends
        .iter()
        .find(|b| SocketAddr::new(b.addr, b.port).to_string() == s)
        .unwrap_or_else(|| panic!("no {s}"))
        .id
}

#[test]
fn example_config_plans() {
    let c = parse(EXAMPLE).unwrap();
    let p = Plan::build(&c, None).unwrap();
    let keys: Vec<(String, u32, u32)> = p
        .vips
        .iter()
        .map(|v| (v.key.to_string(), v.index, v.flags))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("tcp 198.18.0.100:443".to_string(), 0, 0),
            ("udp 198.18.0.100:443".to_string(), 1, VIP_F_QUIC_LB),
            ("tcp [fd00:18::100]:443".to_string(), 2, VIP_F_SOURCE_RANGES),
            (
                "udp [fd00:18::100]:443".to_string(),
                3,
                VIP_F_QUIC_LB | VIP_F_SOURCE_RANGES
            ),
            (
                "udp 198.18.0.100:53".to_string(),
                4,
                VIP_F_SOURCE_RANGES | VIP_F_AFFINITY_CLIENT_IP
            ),
        ]
    );
    // 198.19.0.10 and .11 serve two VIPs on different ports: distinct backends.
    let be: Vec<String> = p
        .backends
        .iter()
        .map(|b| format!("{}={}", b.id, SocketAddr::new(b.addr, b.port)))
        .collect();
    assert_eq!(
        be,
        vec![
            "0=198.19.0.10:8443",
            "1=198.19.0.11:8443",
            "2=198.19.0.12:8443",
            "3=[fd00:19::10]:8443",
            "4=[fd00:19::11]:8443",
            "5=198.19.0.10:5353",
            "6=198.19.0.11:5353",
        ]
    );
    let udp = &p.vips[1];
    assert_eq!(udp.quic.len(), 2);
    assert_eq!(udp.server_ids.len(), 6);
    assert_eq!(
        udp.server_ids[0],
        PlannedServerId {
            config_id: 0,
            server_id: vec![0x0a, 0x01],
            backend: 0
        }
    );
    assert!(p.vips[0].quic.is_empty() && p.vips[0].server_ids.is_empty());
    // The drained backend stays in the VIP (and its server IDs) but not in the ring.
    assert_eq!(udp.backends.len(), 3);
    assert_eq!(
        udp.ring_backends().iter().map(|b| b.id).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert_eq!(p.vips[4].ring_size, 251);
}

#[test]
fn reload_keeps_indexes_and_ids_of_unchanged_entries() {
    let one = "interfaces = [\"eth0\"]\n\
        [[vips]]\naddress = \"198.18.0.1\"\nports = [443]\nprotocols = [\"tcp\", \"udp\"]\n\
        backends = [{ address = \"198.19.0.1\", port = 1 }, { address = \"198.19.0.2\", port = 1 }]\n\
        [[vips]]\naddress = \"198.18.0.2\"\nports = [80]\nprotocols = [\"tcp\"]\n\
        backends = [{ address = \"198.19.0.3\", port = 1 }]\n";
    let p1 = plan(one, None);
    assert_eq!(index_of(&p1, "tcp 198.18.0.1:443"), 0);
    assert_eq!(index_of(&p1, "udp 198.18.0.1:443"), 1);
    assert_eq!(index_of(&p1, "tcp 198.18.0.2:80"), 2);
    assert_eq!(id_of(&p1, "198.19.0.2:1"), 1);
    // A new VIP first in the file, TCP dropped from the first one, backends reordered,
    // one backend removed and one added.
    let two = "interfaces = [\"eth0\"]\n\
        [[vips]]\naddress = \"198.18.0.3\"\nports = [8080]\nprotocols = [\"tcp\"]\n\
        backends = [{ address = \"198.19.0.4\", port = 1 }]\n\
        [[vips]]\naddress = \"198.18.0.1\"\nports = [443]\nprotocols = [\"udp\"]\n\
        backends = [{ address = \"198.19.0.2\", port = 1 }, { address = \"198.19.0.1\", port = 1 }]\n\
        [[vips]]\naddress = \"198.18.0.2\"\nports = [80]\nprotocols = [\"tcp\"]\n\
        backends = [{ address = \"198.19.0.5\", port = 1 }, { address = \"198.19.0.2\", port = 1 }]\n";
    let p2 = plan(two, Some(&p1));
    assert_eq!(index_of(&p2, "udp 198.18.0.1:443"), 1);
    assert_eq!(index_of(&p2, "tcp 198.18.0.2:80"), 2);
    // Index 0 was freed by this reload; the new VIP takes the lowest never-used one.
    assert_eq!(index_of(&p2, "tcp 198.18.0.3:8080"), 3);
    assert_eq!(id_of(&p2, "198.19.0.1:1"), 0);
    assert_eq!(id_of(&p2, "198.19.0.2:1"), 1);
    assert_eq!(id_of(&p2, "198.19.0.4:1"), 3);
    assert_eq!(id_of(&p2, "198.19.0.5:1"), 4);
    // Building the same config again changes nothing, and the diff is empty.
    let p3 = plan(two, Some(&p2));
    assert_eq!(p3, p2);
    assert_eq!(Plan::diff(&p2, &p3), vec![]);
    // A fresh start numbers from 0 in file order.
    let fresh = plan(two, None);
    assert_eq!(index_of(&fresh, "tcp 198.18.0.3:8080"), 0);
    assert_eq!(id_of(&fresh, "198.19.0.4:1"), 0);
}

#[test]
fn learned_cid_len_sets_the_udp_vip_flags() {
    let c = parse(&learned_vip("learned_cid_len = 8")).expect("valid");
    assert_eq!(c.vips[0].learned_cid_len, 8);
    let p = Plan::build(&c, None).expect("plan");
    let flags: Vec<(Protocol, u32)> = p.vips.iter().map(|v| (v.key.proto, v.flags)).collect();
    assert!(flags.contains(&(Protocol::Udp, lb_common::learned_cid_flags(8))));
    assert!(flags.contains(&(Protocol::Tcp, 0)));
    let meta = lb_common::VipMeta {
        flags: lb_common::learned_cid_flags(8),
        ..Default::default()
    };
    assert_eq!(meta.learned_cid_len(), 8);
    // Off by default.
    let c = parse(&learned_vip("")).expect("valid");
    assert_eq!(c.vips[0].learned_cid_len, 0);
    // Turning it on republishes the VIP with the new flags.
    let old = Plan::build(&c, None).expect("plan");
    let new = Plan::build(
        &parse(&learned_vip("learned_cid_len = 8")).unwrap(),
        Some(&old),
    )
    .expect("plan");
    let d: Vec<String> = Plan::diff(&old, &new)
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].starts_with("publish VIP") && d[0].contains("udp"),
        "{d:?}"
    );
}

#[test]
fn source_ranges_and_affinity_set_vip_flags() {
    let p = plan(
        &policy_vip(
            "198.18.0.1",
            "source_ranges = [\"203.0.113.0/24\", \"198.18.0.0/24\"]\nsession_affinity = \"client_ip\"",
        ),
        None,
    );
    assert_eq!(
        p.vips[0].flags,
        VIP_F_SOURCE_RANGES | VIP_F_AFFINITY_CLIENT_IP
    );
    assert_eq!(
        p.vips[0].source_ranges,
        vec![
            "198.18.0.0/24".parse::<ipnet::IpNet>().unwrap(),
            "203.0.113.0/24".parse().unwrap()
        ],
        "sorted"
    );
    let p = plan(&policy_vip("198.18.0.1", ""), None);
    assert_eq!(p.vips[0].flags, 0);
    assert!(p.vips[0].source_ranges.is_empty());
    // With QUIC-LB on the UDP VIP the bits combine.
    let p = plan(
        &quic_vip(
            "source_ranges = [\"198.18.0.0/15\"]\nsession_affinity = \"client_ip\"",
            &be("198.19.0.1", 1, "server_id = \"0a01\"\n"),
        ),
        None,
    );
    let udp = p
        .vips
        .iter()
        .find(|v| v.key.proto == Protocol::Udp)
        .unwrap();
    assert_eq!(
        udp.flags,
        VIP_F_QUIC_LB | VIP_F_SOURCE_RANGES | VIP_F_AFFINITY_CLIENT_IP
    );
    let tcp = p
        .vips
        .iter()
        .find(|v| v.key.proto == Protocol::Tcp)
        .unwrap();
    assert_eq!(tcp.flags, VIP_F_SOURCE_RANGES | VIP_F_AFFINITY_CLIENT_IP);
    assert_eq!(udp.source_ranges, tcp.source_ranges);
}
