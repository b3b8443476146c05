//! Tests of validation: every kind of problem is reported, with its field, line, column
//! and message, in order; valid values come through with defaults filled in.

use std::{
    net::{IpAddr, Ipv6Addr},
    path::Path,
};

use lb_common::{MAX_SOURCE_RANGES, quic_lb};

use crate::config::{
    Config, Interface, KubeSettings, Plan, PlannedServerId, ReverseNatSettings, SessionAffinity,
    XdpMode,
    tests::{
        assert_error, assert_error_like, be, data_dir, errors, learned_vip, parse, policy_vip,
        quic_vip,
    },
};

#[test]
fn spec_example_server_id_length_message() {
    let text = r#"interfaces = ["eth0"]

[[vips]]
address = "198.18.0.100"
ports = [443]
protocols = ["udp"]

[[vips]]
address = "198.18.0.101"
ports = [443]
protocols = ["udp"]
quic_lb = [{ config_id = 0, server_id_len = 3, nonce_len = 6 }]
backends = [
  { address = "198.19.0.10", port = 1, server_id = "0a0101" },
  { address = "198.19.0.11", port = 1, server_id = "0a0102" },
  { address = "198.19.0.12", port = 1, server_id = "0a01" },
]
"#;
    assert_eq!(
        errors(text),
        vec![
            "lb.toml:16:52: vips[1].backends[2].server_id: \"0a01\" is 2 octets; QUIC-LB \
             config 0 of this VIP has server IDs of 3 octets"
        ]
    );
}

#[test]
fn value_errors_are_all_reported_with_positions() {
    // Five independent problems in one file: all five come back, in file order.
    let text = "interfaces = [\"eth0\", \"eth0\"]\n\
                metrics_addr = \"localhost\"\n\
                [[vips]]\n\
                address = \"198.18.0.300\"\n\
                ports = [0, 443]\n\
                protocols = [\"sctp\"]\n";
    assert_eq!(
        errors(text),
        vec![
            "lb.toml:1:23: interfaces[1].name: \"eth0\" is listed twice (also on line 1); list each interface once",
            "lb.toml:2:16: metrics_addr: \"localhost\" is not an address:port (e.g. \"127.0.0.1:7472\" or \"[::1]:7472\")",
            "lb.toml:4:11: vips[0].address: \"198.18.0.300\" is not an IPv4 or IPv6 address (e.g. \"198.18.0.100\" or \"fd00:18::100\")",
            "lb.toml:5:10: vips[0].ports[0]: port 0 is out of range: use 1..=65535",
            "lb.toml:6:14: vips[0].protocols[0]: \"sctp\" is not a protocol: use \"tcp\" or \"udp\"",
        ]
    );
}

#[test]
fn vip_level_checks() {
    let head = "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\n";
    assert_error(
        &format!("{head}ports = []\nprotocols = [\"tcp\"]\n"),
        "lb.toml:4:9: vips[0].ports: empty: list at least one port, e.g. ports = [443]",
    );
    assert_error(
        &format!("{head}ports = [1]\nprotocols = []\n"),
        "lb.toml:5:13: vips[0].protocols: empty: list \"tcp\", \"udp\" or both, e.g. protocols = [\"tcp\", \"udp\"]",
    );
    assert_error(
        &format!("{head}ports = [70000]\nprotocols = [\"tcp\"]\n"),
        "lb.toml:4:10: vips[0].ports[0]: port 70000 is out of range: use 1..=65535",
    );
    // Duplicate (address, port, protocol) across entries.
    assert_error(
        &format!(
            "{head}ports = [443, 80]\nprotocols = [\"tcp\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [80]\nprotocols = [\"udp\", \"tcp\"]\n"
        ),
        "lb.toml:6:1: vips[1]: tcp 198.18.0.1 port 80 is already a VIP in vips[0] (line 2); \
         each (address, port, protocol) may appear once",
    );
    assert_error(
        &format!("{head}ports = [1]\nprotocols = [\"tcp\", \"tcp\"]\n"),
        "lb.toml:5:21: vips[0].protocols[1]: \"tcp\" is listed twice; list each protocol once",
    );
    // quic = true without configs, and without UDP.
    assert_error(
        &format!("{head}ports = [1]\nprotocols = [\"udp\"]\nquic = true\n"),
        "lb.toml:6:8: vips[0].quic: quic = true needs at least one [[vips.quic_lb]] config on \
         this VIP; add one, or set quic = false for 4-tuple hashing only",
    );
    assert_error_like(
        &format!("{head}ports = [1]\nprotocols = [\"tcp\"]\nquic = true\n"),
        "lb.toml:6:8: vips[0].quic: ",
        "has no UDP port",
    );
    // Maglev sizes.
    assert_error(
        &format!("{head}ports = [1]\nprotocols = [\"tcp\"]\nmaglev_table_size = 1000\n"),
        "lb.toml:6:21: vips[0].maglev_table_size: 1000 is not prime; Maglev tables need a \
         prime size (nearby: 997 or 1009)",
    );
    assert_error_like(
        &format!("{head}ports = [1]\nprotocols = [\"tcp\"]\nmaglev_table_size = 131101\n"),
        "lb.toml:6:21: vips[0].maglev_table_size: ",
        "larger than the maximum 131071",
    );
    let two = format!(
        "{head}ports = [1]\nprotocols = [\"tcp\"]\nmaglev_table_size = 2\n{}{}{}",
        be("198.19.0.1", 1, ""),
        be("198.19.0.2", 1, ""),
        be("198.19.0.3", 1, "")
    );
    assert_error(
        &two,
        "lb.toml:6:21: vips[0].maglev_table_size: 2 slots for 3 backends with weight > 0; use \
         a prime of at least 3 (ideally 100 times as many)",
    );
    // A drained backend needs no slot.
    let drained = two.replacen("port = 1\n\n", "port = 1\nweight = 0\n", 1);
    parse(&drained).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn capacity_checks() {
    // Small maps, so the limits are quick to reach.
    const HEAD: &str = "interfaces = [\"eth0\"]\n[capacity]\nvips = 64\nbackends = 4096\n";
    const MAX_BACKENDS: u32 = 4096;
    // 65 ports x 1 protocol = 65 VIPs.
    let ports: Vec<String> = (1..=65).map(|p| p.to_string()).collect();
    let text = format!(
        "{HEAD}[[vips]]\naddress = \"198.18.0.1\"\nports = [{}]\nprotocols = [\"tcp\"]\n",
        ports.join(", ")
    );
    assert_error(
        &text,
        "lb.toml:5:1: vips[0]: this entry brings the VIP count to 65; the data plane has room \
         for 64 (each address, port and protocol counts as one VIP); raise [capacity] vips",
    );
    // 64 is fine: 32 ports x tcp + udp.
    let ports: Vec<String> = (1..=32).map(|p| p.to_string()).collect();
    let text = format!(
        "{HEAD}[[vips]]\naddress = \"198.18.0.1\"\nports = [{}]\nprotocols = [\"tcp\", \"udp\"]\n",
        ports.join(", ")
    );
    parse(&text).unwrap_or_else(|e| panic!("{e}"));
    // MAX_BACKENDS + 1 distinct backends over two VIPs.
    let mut text =
        format!("{HEAD}[[vips]]\naddress = \"198.18.0.1\"\nports = [1]\nprotocols = [\"tcp\"]\n",);
    for i in 0..MAX_BACKENDS {
        text += &format!(
            "[[vips.backends]]\naddress = \"198.19.{}.{}\"\nport = 80\n",
            i / 256,
            i % 256
        );
    }
    text += "[[vips]]\naddress = \"198.18.0.2\"\nports = [1]\nprotocols = [\"tcp\"]\n";
    text += "[[vips.backends]]\naddress = \"198.19.0.0\"\nport = 80\n"; // shared: counts once
    let line = text.lines().count() + 1;
    text += "[[vips.backends]]\naddress = \"198.20.0.0\"\nport = 80\n";
    assert_error(
        &text,
        &format!(
            "lb.toml:{line}:1: vips[1].backends[1]: this is backend number 4097; the data plane \
             has room for 4096 distinct backend (address, port) pairs; raise [capacity] backends"
        ),
    );
}

#[test]
fn capacity_table() {
    let c = parse("interfaces = [\"eth0\"]\n").unwrap();
    assert_eq!(c.capacity, crate::capacity::Capacity::default());
    let c = parse("interfaces = [\"eth0\"]\n[capacity]\nconn_table_size = 4000000\n").unwrap();
    assert_eq!(c.capacity.conn_table_size, 4_000_000);
    assert_error(
        "interfaces = [\"eth0\"]\n[capacity]\nconn_table = 5\n",
        "lb.toml:3:14: capacity.conn_table: unknown key; expected one of `vips`, `backends`, \
         `conn_table_size`, `learned_cids`, `server_ids`, `quic_configs`, `maglev_slots`",
    );
    assert_error(
        "interfaces = [\"eth0\"]\n[capacity]\nvips = 0\n",
        "lb.toml:3:8: capacity.vips: 0 is out of range; use 1..=1048576 (it sizes the map \
         LB_VIPS)",
    );
    // Rings: two VIPs of one backend take 257 slots each, plus 257 to replace one.
    let vip = |a: &str| {
        format!(
            "[[vips]]\naddress = \"{a}\"\nports = [1]\nprotocols = [\"tcp\", \"udp\"]\n\
             [[vips.backends]]\naddress = \"198.19.0.1\"\nport = 80\n"
        )
    };
    let head = "interfaces = [\"eth0\"]\n[capacity]\nmaglev_slots = 262142\n";
    parse(&format!("{head}{}", vip("198.18.0.1"))).unwrap_or_else(|e| panic!("{e}"));
    let many: String = (0..510)
        .map(|i| vip(&format!("198.18.{}.{}", i / 250, i % 250 + 1)))
        .collect();
    let err = parse(&format!("{head}{many}")).unwrap_err().to_string();
    assert!(
        err.contains(
            "this entry brings the Maglev ring slots (rings x slots, plus room to \
             replace the largest) to 262397; the pool has 262142; raise [capacity] maglev_slots"
        ),
        "{err}"
    );
}

#[test]
fn backend_checks() {
    assert_error(
        &quic_vip("", &be("fd00:19::1", 8443, "server_id = \"0a01\"")),
        "lb.toml:12:11: vips[0].backends[0].address: fd00:19::1 is IPv6 but the VIP \
         198.18.0.100 is IPv4; backends need the VIP's address family",
    );
    assert_error(
        &quic_vip("", &be("198.19.0.1", 0, "server_id = \"0a01\"")),
        "lb.toml:13:8: vips[0].backends[0].port: port 0 is out of range: use 1..=65535",
    );
    assert_error(
        &quic_vip(
            "",
            &be("198.19.0.1", 1, "weight = 70000\nserver_id = \"0a01\""),
        ),
        "lb.toml:14:10: vips[0].backends[0].weight: weight 70000 is out of range: use \
         0..=65535 (0 drains the backend)",
    );
    assert_error(
        &quic_vip(
            "",
            &format!(
                "{}{}",
                be("198.19.0.1", 1, "server_id = \"0a01\""),
                be("198.19.0.1", 1, "server_id = \"0a02\"")
            ),
        ),
        "lb.toml:15:1: vips[0].backends[1]: backend 198.19.0.1:1 is already \
         vips[0].backends[0] (line 11); list each backend once per VIP",
    );
    assert_error(
        &quic_vip(
            "",
            &format!(
                "{}{}",
                be("198.19.0.1", 1, "server_id = \"0a01\""),
                be("198.19.0.2", 1, "server_id = \"0a01\"")
            ),
        ),
        "lb.toml:18:13: vips[0].backends[1].server_id: server ID 0a01 under QUIC-LB config 0 \
         is already vips[0].backends[0]'s (line 14); server IDs are unique per VIP and config",
    );
    assert_error(
        &quic_vip("", &be("198.19.0.1", 1, "")),
        "lb.toml:11:1: vips[0].backends[0]: no server_id: this VIP routes QUIC by server ID \
         (quic = true), so every backend needs one (server IDs of this VIP are 2 octets)",
    );
    // quic = false: server IDs are optional.
    parse(&quic_vip("quic = false", &be("198.19.0.1", 1, ""))).unwrap_or_else(|e| panic!("{e}"));
    assert_error_like(
        &quic_vip("", &be("198.19.0.1", 1, "server_id = \"0g01\"")),
        "lb.toml:14:13: vips[0].backends[0].server_id: ",
        "non-hex character 'g'",
    );
    assert_error_like(
        &quic_vip(
            "",
            &be(
                "198.19.0.1",
                1,
                "server_id = \"0a01\"\nserver_ids = { 0 = \"0a01\" }",
            ),
        ),
        "lb.toml:15:14: vips[0].backends[0].server_ids: ",
        "both server_id and server_ids",
    );
    assert_error(
        &quic_vip("", &be("198.19.0.1", 1, "server_ids = { 3 = \"0a01\" }")),
        "lb.toml:14:16: vips[0].backends[0].server_ids.3: \"3\" is not a QUIC-LB config of \
         this VIP; its configs are: [0]",
    );
    let no_cfg = "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [1]\nprotocols = [\"udp\"]\n[[vips.backends]]\naddress = \"198.19.0.1\"\nport = 1\nserver_id = \"0a01\"\n";
    assert_error_like(
        no_cfg,
        "lb.toml:9:13: vips[0].backends[0].server_id: ",
        "no [[vips.quic_lb]] config",
    );
}

#[test]
fn quic_lb_config_checks() {
    let cfg = |body: &str| {
        format!(
            "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [1]\nprotocols = [\"udp\"]\nquic = false\n[[vips.quic_lb]]\n{body}\n"
        )
    };
    assert_error(
        &cfg("config_id = 7\nserver_id_len = 2\nnonce_len = 6"),
        "lb.toml:8:13: vips[0].quic_lb[0].config_id: QUIC-LB config ID 7 is out of range: \
         use 0..=6 (0b111 = 7 is reserved for unroutable connection IDs)",
    );
    assert_error(
        &cfg("config_id = 0\nserver_id_len = 0\nnonce_len = 6"),
        "lb.toml:9:17: vips[0].quic_lb[0].server_id_len: QUIC-LB server ID length 0 is out \
         of range: use 1..=15 octets",
    );
    assert_error(
        &cfg("config_id = 0\nserver_id_len = 2\nnonce_len = 3"),
        "lb.toml:10:13: vips[0].quic_lb[0].nonce_len: QUIC-LB nonce length 3 is too short: \
         use at least 4 octets",
    );
    assert_error_like(
        &cfg("config_id = 0\nserver_id_len = 15\nnonce_len = 5"),
        "lb.toml:10:13: vips[0].quic_lb[0].nonce_len: ",
        "= 20 octets is too long",
    );
    assert_error_like(
        &cfg("config_id = -1\nserver_id_len = 2\nnonce_len = 6"),
        "lb.toml:8:13: vips[0].quic_lb[0].config_id: ",
        "-1 is out of range",
    );
    assert_error(
        &cfg("config_id = 0\nserver_id_len = 2\nnonce_len = 6\nkey = \"0011\""),
        "lb.toml:11:7: vips[0].quic_lb[0].key: \"0011\" is 4 hex digits; a QUIC-LB key is 16 \
         octets = 32 hex digits",
    );
    assert_error(
        &cfg("config_id = 0\nserver_id_len = 2\nnonce_len = 6\nkey_file = \"missing.key\""),
        &format!(
            "lb.toml:11:12: vips[0].quic_lb[0].key_file: cannot read {}: No such file or \
             directory (os error 2)",
            data_dir().join("missing.key").display()
        ),
    );
    assert_error_like(
        &cfg("config_id = 0\nserver_id_len = 2\nnonce_len = 6\nkey_file = \"short.key\""),
        "lb.toml:11:12: vips[0].quic_lb[0].key_file: ",
        "short.key holds 11 octets; a key file holds the 16-octet key as 32 hex digits or as 16 raw octets",
    );
    // Duplicate rotation value.
    let dup = cfg(
        "config_id = 2\nserver_id_len = 2\nnonce_len = 6\n[[vips.quic_lb]]\nconfig_id = 2\nserver_id_len = 4\nnonce_len = 6",
    );
    assert_error(
        &dup,
        "lb.toml:12:13: vips[0].quic_lb[1].config_id: config rotation 2 is already used by \
         vips[0].quic_lb[0] (line 8); each config of a VIP needs its own value in 0..=6",
    );
    // key_file relative to the config's directory, hex with a trailing newline.
    let ok = parse(&cfg(
        "config_id = 0\nserver_id_len = 4\nnonce_len = 12\nkey_file = \"quic-lb.key\"",
    ))
    .unwrap();
    let q = ok.vips[0].quic_lb[0];
    assert_eq!(
        q.key(),
        Some([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])
    );
    assert_eq!(q.mode(), quic_lb::Mode::SinglePass);
    assert!(!ok.vips[0].quic, "quic = false is kept");
}

#[test]
fn server_id_under_configs_of_different_lengths() {
    let base = |sids: &str| {
        format!(
            "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"fd00:18::1\"\nports = [443]\nprotocols = [\"udp\"]\n\
             quic_lb = [{{ config_id = 0, server_id_len = 2, nonce_len = 6 }}, {{ config_id = 1, server_id_len = 3, nonce_len = 6 }}]\n\
             [[vips.backends]]\naddress = \"fd00:19::1\"\nport = 1\n{sids}\n"
        )
    };
    assert_error_like(
        &base("server_id = \"0a01\""),
        "lb.toml:10:13: vips[0].backends[0].server_id: \"0a01\" is 2 octets; QUIC-LB config 1 \
         of this VIP has server IDs of 3 octets",
        "give server_ids",
    );
    assert_error(
        &base("server_ids = { 0 = \"0a01\" }"),
        "lb.toml:10:14: vips[0].backends[0].server_ids: no server ID for QUIC-LB config(s) \
         [1]; a VIP with quic = true needs one per backend under every config",
    );
    let c = parse(&base("server_ids = { 0 = \"0a01\", 1 = \"0b0001\" }")).unwrap();
    let p = Plan::build(&c, None).unwrap();
    assert_eq!(
        p.vips[0].server_ids,
        vec![
            PlannedServerId {
                config_id: 0,
                server_id: vec![0x0a, 0x01],
                backend: 0
            },
            PlannedServerId {
                config_id: 1,
                server_id: vec![0x0b, 0, 1],
                backend: 0
            },
        ]
    );
    assert_eq!(
        c.vips[0].backends[0].addr,
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 1))
    );
}

#[test]
fn interface_checks() {
    assert_error(
        "metrics_addr = \"127.0.0.1:7472\"\n",
        "lb.toml:1:1: interfaces: missing: name the external interface(s) XDP attaches to, \
         e.g. interfaces = [\"eth0\"]",
    );
    assert_error(
        "interfaces = []\n",
        "lb.toml:1:14: interfaces: empty: name at least one interface, e.g. interfaces = [\"eth0\"]",
    );
    assert_error(
        "interfaces = [{ name = \"eth0\", xdp_mode = \"offload\" }]\n",
        "lb.toml:1:43: interfaces[0].xdp_mode: \"offload\" is not an XDP mode: use \"native\" \
         or \"generic\"",
    );
    assert_error_like(
        "interfaces = [\"a-very-long-interface-name\"]\n",
        "lb.toml:1:15: interfaces[0].name: ",
        "use 1..=15 characters",
    );
    // [[interfaces]] tables work too.
    let c = parse("[[interfaces]]\nname = \"eth9\"\nxdp_mode = \"generic\"\n").unwrap();
    assert_eq!(
        c.interfaces,
        vec![Interface {
            name: "eth9".into(),
            xdp_mode: XdpMode::Generic
        }]
    );
    assert!(c.vips.is_empty() && c.metrics_addr.is_none());
}

#[test]
fn interface_globs_and_auto_are_entries_like_names() {
    let c = parse(
        "interfaces = [\"auto\", \"enp*s0\", { name = \"flannel.1\", xdp_mode = \"generic\" }]\n\
         backend_interfaces = [\"auto\", \"cali*\", \"pod?\"]\n",
    )
    .unwrap();
    let names: Vec<&str> = c.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["auto", "enp*s0", "flannel.1"]);
    assert_eq!(c.backend_interfaces, ["auto", "cali*", "pod?"]);
    // Still checked: a repeated entry names the key and both lines.
    assert_error_like(
        "interfaces = [\"auto\",\n\"auto\"]\n",
        "lb.toml:2:1: interfaces[1].name: ",
        "listed twice (also on line 1)",
    );
    assert_error_like(
        "interfaces = [\"eth0\"]\nbackend_interfaces = [\"cali*\", \"cali*\"]\n",
        "lb.toml:2:32: backend_interfaces[1]: ",
        "listed twice",
    );
}

#[test]
fn learned_cid_len_checks() {
    assert_error_like(
        &learned_vip("learned_cid_len = 0"),
        "lb.toml:6:19: vips[0].learned_cid_len: ",
        "1..=20",
    );
    assert_error_like(
        &learned_vip("learned_cid_len = 21"),
        "lb.toml:6:19: vips[0].learned_cid_len: ",
        "not a QUIC connection ID length",
    );
    assert_error_like(
        &learned_vip(
            "learned_cid_len = 8\nquic_lb = [{ config_id = 0, server_id_len = 2, nonce_len = 6 }]",
        ),
        "lb.toml:6:19: vips[0].learned_cid_len: ",
        "cannot be combined",
    );
    assert_error_like(
        &learned_vip("learned_cid_len = 8").replace("[\"tcp\", \"udp\"]", "[\"tcp\"]"),
        "lb.toml:6:19: vips[0].learned_cid_len: ",
        "no UDP port",
    );
}

#[test]
fn top_level_xdp_mode_applies_to_bare_names_only() {
    let c = Config::parse(
        "xdp_mode = \"generic\"\ninterfaces = [\"eth0\", { name = \"eth1\", xdp_mode = \"native\" }]\n",
        "t.toml",
        Path::new("."),
    )
    .unwrap();
    let modes: Vec<XdpMode> = c.interfaces.iter().map(|i| i.xdp_mode).collect();
    assert_eq!(modes, [XdpMode::Generic, XdpMode::Native]);
    let e = Config::parse(
        "xdp_mode = \"skb\"\ninterfaces = [\"eth0\"]\n",
        "t.toml",
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("t.toml:1:12: xdp_mode: \"skb\" is not an XDP mode"),
        "{e}"
    );
}

#[test]
fn source_ranges_and_affinity_parse() {
    let c = parse(&policy_vip(
        "198.18.0.1",
        "source_ranges = [\"198.18.0.0/24\", \"203.0.113.7/32\"]\nsession_affinity = \"client_ip\"",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.vips[0].source_ranges,
        vec![
            "198.18.0.0/24".parse::<ipnet::IpNet>().unwrap(),
            "203.0.113.7/32".parse().unwrap()
        ]
    );
    assert_eq!(c.vips[0].session_affinity, SessionAffinity::ClientIp);
    let c = parse(&policy_vip(
        "fd00:18::1",
        "source_ranges = [\"fd00::/64\", \"::/0\"]",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.vips[0].source_ranges.len(), 2);
    assert_eq!(c.vips[0].session_affinity, SessionAffinity::None);
    // Explicit defaults.
    let c = parse(&policy_vip(
        "198.18.0.1",
        "source_ranges = []\nsession_affinity = \"none\"",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(c.vips[0].source_ranges.is_empty());
    assert_eq!(c.vips[0].session_affinity, SessionAffinity::None);
}

#[test]
fn source_range_and_affinity_checks() {
    assert_error(
        &policy_vip("198.18.0.1", "source_ranges = [\"198.18.0.1/24\"]"),
        "lb.toml:7:18: vips[0].source_ranges[0]: 198.18.0.1/24 has host bits set; the prefix \
         is 198.18.0.0/24",
    );
    assert_error(
        &policy_vip("fd00:18::1", "source_ranges = [\"fd00::1/64\"]"),
        "lb.toml:7:18: vips[0].source_ranges[0]: fd00::1/64 has host bits set; the prefix is \
         fd00::/64",
    );
    assert_error(
        &policy_vip(
            "198.18.0.1",
            "source_ranges = [\"198.18.0.0/24\", \"fd00::/64\"]",
        ),
        "lb.toml:7:35: vips[0].source_ranges[1]: fd00::/64 is IPv6 but the VIP 198.18.0.1 is \
         IPv4; source ranges need the VIP's address family",
    );
    assert_error(
        &policy_vip("fd00:18::1", "source_ranges = [\"198.18.0.0/24\"]"),
        "lb.toml:7:18: vips[0].source_ranges[0]: 198.18.0.0/24 is IPv4 but the VIP fd00:18::1 \
         is IPv6; source ranges need the VIP's address family",
    );
    assert_error_like(
        &policy_vip("198.18.0.1", "source_ranges = [\"198.18.0.7\"]"),
        "lb.toml:7:18: vips[0].source_ranges[0]: ",
        "is not a CIDR prefix; write address/length",
    );
    assert_error_like(
        &policy_vip("198.18.0.1", "source_ranges = [\"198.18.0.0/33\"]"),
        "lb.toml:7:18: vips[0].source_ranges[0]: ",
        "is not a CIDR prefix",
    );
    assert_error(
        &policy_vip(
            "198.18.0.1",
            "source_ranges = [\"198.18.0.0/24\",\n  \"198.18.0.0/24\"]",
        ),
        "lb.toml:8:3: vips[0].source_ranges[1]: 198.18.0.0/24 is listed twice (also on line \
         7); list each range once",
    );
    assert_error(
        &policy_vip("198.18.0.1", "session_affinity = \"ClientIP\""),
        "lb.toml:7:20: vips[0].session_affinity: \"ClientIP\" is not a session affinity: use \
         \"none\" (hash the whole 5-tuple) or \"client_ip\" (every flow of a client to one \
         backend)",
    );
    // Not a list of strings: a structural error, one at a time.
    assert_error_like(
        &policy_vip("198.18.0.1", "source_ranges = \"198.18.0.0/24\""),
        "lb.toml:7:17: vips[0].source_ranges: ",
        "expected a sequence",
    );
}

#[test]
fn source_range_capacity_is_checked() {
    // 2 ports x 2 protocols x n ranges per entry.
    let ranges = |n: u32, third: u32| -> String {
        let v: Vec<String> = (0..n)
            .map(|i| format!("\"10.{third}.{}.{}/32\"", i / 256, i % 256))
            .collect();
        v.join(", ")
    };
    let per_entry = MAX_SOURCE_RANGES / 4;
    let text = format!(
        "interfaces = [\"eth0\"]\n\
         [[vips]]\naddress = \"198.18.0.1\"\nports = [1, 2]\nprotocols = [\"tcp\", \"udp\"]\n\
         source_ranges = [{}]\n\
         [[vips]]\naddress = \"198.18.0.2\"\nports = [1]\nprotocols = [\"tcp\"]\n\
         source_ranges = [\"198.18.0.0/24\"]\n",
        ranges(per_entry, 0)
    );
    assert_error(
        &text,
        &format!(
            "lb.toml:11:17: vips[1].source_ranges: this entry brings the source-range entries \
             (ranges x ports x protocols) to {}; the data plane has room for \
             {MAX_SOURCE_RANGES}; merge adjacent ranges into shorter prefixes",
            MAX_SOURCE_RANGES + 1
        ),
    );
    // Exactly full is fine.
    parse(&text.replace("source_ranges = [\"198.18.0.0/24\"]\n", ""))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn kubernetes_table_defaults_and_values() {
    let c = Config::parse("interfaces = [\"eth0\"]\n", "t.toml", Path::new(".")).unwrap();
    assert_eq!(c.kubernetes, KubeSettings::default());
    assert_eq!(c.kubernetes.load_balancer_class, "lb.dev/lb");
    let c = Config::parse(
        "interfaces = [\"eth0\"]\n[kubernetes]\nload_balancer_class = \"example.com/lb\"\n\
         default_class = true\nlease_namespace = \"kube-lb\"\nlease_duration_ms = 3000\n\
         lease_renew_ms = 1000\ngossip_port = 7000\ngossip_key_file = \"/etc/lb/gossip-key\"\n\
         gossip_probe_ms = 500\ngossip_suspect_ms = 2000\n",
        "t.toml",
        Path::new("."),
    )
    .unwrap();
    assert_eq!(
        c.kubernetes,
        KubeSettings {
            load_balancer_class: "example.com/lb".into(),
            default_class: true,
            lease_namespace: Some("kube-lb".into()),
            lease_duration: std::time::Duration::from_millis(3000),
            lease_renew: std::time::Duration::from_millis(1000),
            gossip_port: 7000,
            gossip_key_file: Some("/etc/lb/gossip-key".into()),
            gossip_probe: std::time::Duration::from_millis(500),
            gossip_suspect: std::time::Duration::from_millis(2000),
        }
    );
}

#[test]
fn kubernetes_defaults_are_kubelets_lease_cadence_and_fast_gossip() {
    let k = KubeSettings::default();
    assert_eq!(k.lease_renew, std::time::Duration::from_secs(10));
    assert_eq!(k.lease_duration, std::time::Duration::from_secs(40));
    assert_eq!(k.gossip_port, 7946);
    // A dead node is declared down within a probe period, the probe and the suspicion:
    // well under a second.
    assert!(k.gossip_probe * 2 + k.gossip_suspect < std::time::Duration::from_secs(1));
}

#[test]
fn gossip_keys_are_checked() {
    let e = Config::parse(
        "interfaces = [\"eth0\"]\n[kubernetes]\ngossip_port = 70000\ngossip_key_file = \"\"\n\
         gossip_probe_ms = 5\n",
        "t.toml",
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("kubernetes.gossip_port: 70000 is not a UDP port"),
        "{e}"
    );
    assert!(e.contains("kubernetes.gossip_key_file: is empty"), "{e}");
    assert!(
        e.contains("kubernetes.gossip_probe_ms: 5 is out of range"),
        "{e}"
    );
}

#[test]
fn kubernetes_table_errors_name_the_field() {
    let e = Config::parse(
        "interfaces = [\"eth0\"]\n[kubernetes]\nload_balancer_class = \"nope\"\n\
         lease_namespace = \"Bad_NS\"\nlease_duration_ms = 1000\nlease_renew_ms = 800\n",
        "t.toml",
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("t.toml:3:23: kubernetes.load_balancer_class: \"nope\""),
        "{e}"
    );
    assert!(e.contains("t.toml:4:19: kubernetes.lease_namespace"), "{e}");
    assert!(
        e.contains("kubernetes.lease_renew_ms: 800 ms renews a 1000 ms lease too rarely"),
        "{e}"
    );
    let e = Config::parse(
        "interfaces = [\"eth0\"]\n[kubernetes]\nlease_ttl = 5\n",
        "t.toml",
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("lease_ttl"), "{e}");
}

#[test]
fn reverse_nat_table_defaults_and_values() {
    let c = Config::parse("interfaces = [\"eth0\"]\n", "t.toml", Path::new(".")).unwrap();
    assert_eq!(c.reverse_nat, ReverseNatSettings::default());
    assert_eq!(c.reverse_nat.max_flows, 262_144);
    assert!(c.reverse_nat.mark_remote);
    let c = Config::parse(
        "interfaces = [\"eth0\"]\n[reverse_nat]\nmax_flows = 1000\ntcp_timeout_s = 3600\n\
         udp_timeout_s = 60\nunreplied_timeout_s = 5\nclosing_timeout_s = 2\n\
         mark_remote = false\n",
        "t.toml",
        Path::new("."),
    )
    .unwrap();
    let s = 1_000_000_000;
    assert_eq!(
        c.reverse_nat,
        ReverseNatSettings {
            max_flows: 1000,
            timeouts: lb_common::reply::ReplyTimeouts {
                tcp_ns: 3600 * s,
                udp_ns: 60 * s,
                unreplied_ns: 5 * s,
                closing_ns: 2 * s,
            },
            mark_remote: false,
        }
    );
}

#[test]
fn reverse_nat_table_errors_name_the_field() {
    let e = Config::parse(
        "interfaces = [\"eth0\"]\n[reverse_nat]\nmax_flows = 0\ntcp_timeout_s = 700000\n\
         closing_timeout_s = -1\n",
        "t.toml",
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("t.toml:3:13: reverse_nat.max_flows: 0 is out of range; use 1..=16777216 flows"),
        "{e}"
    );
    assert!(
        e.contains("reverse_nat.tcp_timeout_s: 700000 is out of range; use 1..=604800 seconds"),
        "{e}"
    );
    assert!(e.contains("reverse_nat.closing_timeout_s: -1"), "{e}");
    let e = Config::parse(
        "interfaces = [\"eth0\"]\n[reverse_nat]\nmax_entries = 5\n",
        "t.toml",
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `max_entries`"), "{e}");
}
