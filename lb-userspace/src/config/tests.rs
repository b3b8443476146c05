//! Tests of parsing a file as a whole (the documented example, structural errors, an
//! unreadable file), and the helpers the tests of `validate`, `plan` and `diff` share.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use lb_common::quic_lb;

use super::{
    BackendConfig, Config, ConfigErrors, Interface, Plan, Protocol, SessionAffinity, XdpMode,
};

pub(super) fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

pub(super) fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, "lb.toml", &data_dir())
}

pub(super) fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

/// The config is rejected, and `expected` is one of its messages, in full.
#[track_caller]
pub(super) fn assert_error(text: &str, expected: &str) {
    let errs = errors(text);
    assert!(
        errs.iter().any(|e| e == expected),
        "expected\n  {expected}\namong\n  {}",
        errs.join("\n  ")
    );
}

/// The config is rejected with a message at `prefix` (`lb.toml:L:C: field: `) that
/// contains `needle`.
#[track_caller]
pub(super) fn assert_error_like(text: &str, prefix: &str, needle: &str) {
    let errs = errors(text);
    assert!(
        errs.iter()
            .any(|e| e.starts_with(prefix) && e.contains(needle)),
        "expected {prefix}...{needle}... among\n  {}",
        errs.join("\n  ")
    );
}

pub(super) const EXAMPLE: &str = include_str!("../../../deploy/examples/lb.toml");

pub(super) fn v4(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 19, 0, d))
}

/// A VIP with one 2-octet plaintext config; `{vip}` and `{backends}` are spliced in.
pub(super) fn quic_vip(vip_extra: &str, backends: &str) -> String {
    format!(
        "interfaces = [\"eth0\"]\n\
         [[vips]]\n\
         address = \"198.18.0.100\"\n\
         ports = [443]\n\
         protocols = [\"tcp\", \"udp\"]\n\
         {vip_extra}\n\
         [[vips.quic_lb]]\n\
         config_id = 0\n\
         server_id_len = 2\n\
         nonce_len = 6\n\
         {backends}"
    )
}

pub(super) fn be(addr: &str, port: u32, extra: &str) -> String {
    format!("[[vips.backends]]\naddress = \"{addr}\"\nport = {port}\n{extra}\n")
}

pub(super) fn learned_vip(extra: &str) -> String {
    format!(
        "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [443]\n\
         protocols = [\"tcp\", \"udp\"]\n{extra}\n\
         backends = [{{ address = \"198.19.0.1\", port = 4433 }}]\n"
    )
}

pub(super) fn policy_vip(addr: &str, extra: &str) -> String {
    format!(
        "interfaces = [\"eth0\"]\n\
         [[vips]]\n\
         address = \"{addr}\"\n\
         ports = [80]\n\
         protocols = [\"tcp\"]\n\
         maglev_table_size = 251\n\
         {extra}\n\
         backends = [{{ address = \"{}\", port = 8080 }}]\n",
        if addr.contains(':') {
            "fd00:19::1"
        } else {
            "198.19.0.1"
        }
    )
}

pub(super) fn plan(text: &str, prev: Option<&Plan>) -> Plan {
    let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
    Plan::build(&c, prev).unwrap()
}

pub(super) fn index_of(p: &Plan, s: &str) -> u32 {
    p.vips
        .iter()
        .find(|v| v.key.to_string() == s)
        .unwrap_or_else(|| panic!("no {s}"))
        .index
}

#[test]
fn example_config_parses() {
    let c = parse(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.interfaces,
        vec![
            Interface {
                name: "eth0".into(),
                xdp_mode: XdpMode::Native
            },
            Interface {
                name: "eth1".into(),
                xdp_mode: XdpMode::Generic
            },
        ]
    );
    assert_eq!(c.metrics_addr, Some("127.0.0.1:7472".parse().unwrap()));
    assert_eq!(c.vips.len(), 3);
    let web = &c.vips[0];
    assert_eq!(web.name.as_deref(), Some("web"));
    assert_eq!(web.addr, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100)));
    assert_eq!(web.ports, vec![443]);
    assert_eq!(web.protocols, vec![Protocol::Tcp, Protocol::Udp]);
    assert!(web.quic);
    // Absent: sized to the backends when planned.
    assert_eq!(web.maglev_table_size, 0);
    assert_eq!(web.quic_lb.len(), 2);
    assert_eq!(web.quic_lb[0].mode(), quic_lb::Mode::Plaintext);
    assert_eq!(web.quic_lb[1].mode(), quic_lb::Mode::SinglePass);
    assert_eq!(web.quic_lb[1].key(), Some(*b"lb-example-key-1"));
    assert_eq!(
        web.backends[0],
        BackendConfig {
            addr: v4(10),
            port: 8443,
            weight: 2,
            server_ids: vec![(0, vec![0x0a, 0x01]), (1, vec![0x0b, 0, 0, 1])],
        }
    );
    assert_eq!(web.backends[2].weight, 0);
    let v6 = &c.vips[1];
    assert!(
        v6.quic,
        "quic defaults to true when the VIP has QUIC-LB configs"
    );
    assert_eq!(v6.backends[1].server_ids, vec![(0, vec![0x0a, 0x02])]);
    assert_eq!(
        v6.source_ranges,
        vec![
            "fd00:18::/64".parse::<ipnet::IpNet>().unwrap(),
            "fd00:1800::/24".parse().unwrap()
        ]
    );
    assert_eq!(v6.session_affinity, SessionAffinity::None);
    let dns = &c.vips[2];
    assert!(!dns.quic);
    assert_eq!(dns.maglev_table_size, 251);
    assert_eq!(dns.backends[0].weight, 1);
    assert_eq!(dns.session_affinity, SessionAffinity::ClientIp);
    assert_eq!(
        dns.source_ranges,
        vec!["198.18.0.0/15".parse::<ipnet::IpNet>().unwrap()]
    );
    assert!(web.source_ranges.is_empty());
    assert_eq!(web.session_affinity, SessionAffinity::None);
}

#[test]
fn structural_errors_name_field_line_and_column() {
    // Unknown field, with the path and the valid names.
    assert_error(
        "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [1]\nprotocols = [\"tcp\"]\n\n[[vips.backends]]\naddress = \"198.19.0.1\"\nport = 80\nwieght = 3\n",
        "lb.toml:10:1: vips[0].backends[0].wieght: unknown field `wieght`, expected one of \
         `address`, `port`, `weight`, `server_id`, `server_ids`",
    );
    assert_error(
        "interfaces = [\"eth0\"]\nmetrics = \"x\"\n",
        "lb.toml:2:1: metrics: unknown field `metrics`, expected one of `interfaces`, \
         `xdp_mode`, `backend_interfaces`, `metrics_addr`, `vips`, `kubernetes`, \
         `reverse_nat`, `capacity`, `bgp`",
    );
    // Wrong type.
    assert_error(
        "interfaces = [\"eth0\"]\n[[vips]]\naddress = \"198.18.0.1\"\nports = [\"443\"]\nprotocols = [\"tcp\"]\n",
        "lb.toml:4:10: vips[0].ports[0]: invalid type: string \"443\", expected i64",
    );
    // Missing field.
    assert_error(
        "interfaces = [\"eth0\"]\n[[vips]]\nports = [1]\nprotocols = [\"tcp\"]\n",
        "lb.toml:2:1: vips[0]: missing field `address`",
    );
    // TOML syntax.
    assert_error(
        "interfaces = [\"eth0\"\n",
        "lb.toml:1:21: unclosed array, expected `]`",
    );
    assert_error(
        "interfaces = [{ name = \"eth0\", mode = \"native\" }]\n",
        "lb.toml:1:32: interfaces[0].mode: unknown field `mode`, expected `name` or `xdp_mode`",
    );
}

#[test]
fn unreadable_config_file_is_named() {
    let e = Config::load(Path::new("/nonexistent/lb.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/nonexistent/lb.toml: cannot read the config file: No such file or directory (os error 2)"
    );
}
