//! VIP announcement (ARP / NDP) across a real veth, checked from the other side of the link.
//!
//! Two namespaces: "lan" (the client, 198.18.0.1/24 and fd00:18::1/64 on eth0) and "node"
//! (ext0, no address at all but its link-local), joined by a veth. The node runs the
//! [`Announcer`] for 198.18.0.100 and fd00:18::100, which are configured nowhere, so only the
//! announcer can make the client resolve them. Checked: neighbour resolution in the client's
//! kernel (ARP and NDP), the exact fields of the gratuitous frames captured on the client
//! side, and that addresses which are not VIPs (or no longer are) are left unanswered.
//!
//! Needs root. Run single-threaded:
//! `cargo test -p lb-tests --test announce -- --test-threads=1`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use lb_common::csum::{fold, pseudo_header_v6, sum_bytes};
use lb_lab::netns::{Mac, NetNs, format_mac, remove_stale, veth_pair};
use lb_userspace::announce::{
    AnnounceError, AnnounceOptions, AnnounceStats, Announcer, AnnouncerHandle, ETH_P_ALL,
    PACKET_OUTGOING, PacketSocket,
};
use serde_json::Value;

const PREFIX: &str = "lbann";
const CLIENT_MAC: Mac = [0x02, 0x00, 0x5e, 0xa0, 0x00, 0x01];
const NODE_MAC: Mac = [0x02, 0x00, 0x5e, 0xa0, 0x00, 0x02];
const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const VIP4_NEW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);
const NOT_VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 77);
const DEADLINE: Duration = Duration::from_secs(5);
const INTERVAL: Duration = Duration::from_millis(50);

fn vip6() -> Ipv6Addr {
    "fd00:18::100".parse().unwrap()
}
fn vip6_new() -> Ipv6Addr {
    "fd00:18::101".parse().unwrap()
}
fn not_vip6() -> Ipv6Addr {
    "fd00:18::77".parse().unwrap()
}

/// The two namespaces and the announcer. Field order is drop order: the announcer stops
/// before its namespace goes away.
struct Lan {
    announcer: AnnouncerHandle,
    lan: NetNs,
    node: NetNs,
    lan_ifindex: u32,
}

fn setup() -> Lan {
    if let Err(e) = lb_lab::netns::require_root() {
        panic!("{e:#}");
    }
    remove_stale(PREFIX).unwrap();
    let lan = NetNs::create(&format!("{PREFIX}l")).unwrap();
    let node = NetNs::create(&format!("{PREFIX}n")).unwrap();
    let v = veth_pair(&lan, "eth0", CLIENT_MAC, &node, "ext0", NODE_MAC).unwrap();
    lan.addr_add("eth0", "198.18.0.1/24").unwrap();
    lan.addr_add("eth0", "fd00:18::1/64").unwrap();
    let opts = AnnounceOptions {
        gratuitous_count: 3,
        gratuitous_interval: INTERVAL,
    };
    let announcer = node
        .run_in(|| Announcer::start("ext0", &[VIP4.into(), vip6().into()], opts))
        .unwrap()
        .unwrap();
    assert_eq!(announcer.mac(), NODE_MAC);
    assert_eq!(announcer.ifindex(), v.peer_ifindex);
    // The start-up bursts finish before any test looks at traffic.
    wait_stats(&announcer, "start-up gratuitous bursts", |s| {
        s.gratuitous_arp == 3 && s.unsolicited_na == 3
    });
    Lan {
        announcer,
        lan,
        node,
        lan_ifindex: v.ifindex,
    }
}

/// The link-layer multicast groups of the node's ext0 (`ip maddr`).
fn node_groups(node: &NetNs) -> Vec<String> {
    let out = node.ip(&["-j", "maddr", "show", "dev", "ext0"]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["maddr"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["link"].as_str().map(String::from))
        .collect()
}

fn wait_stats(
    a: &AnnouncerHandle,
    what: &str,
    ok: impl Fn(&AnnounceStats) -> bool,
) -> AnnounceStats {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = a.stats();
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "waiting for {what}: stats {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Send one UDP datagram from the client namespace, which makes its kernel resolve `dst`.
fn poke(lan: &NetNs, dst: IpAddr) {
    let bind: SocketAddr = match dst {
        IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        IpAddr::V6(_) => "[::]:0".parse().unwrap(),
    };
    let sock = lan.run_in(|| UdpSocket::bind(bind)).unwrap().unwrap();
    sock.send_to(b"who has it?", SocketAddr::new(dst, 9))
        .unwrap();
}

/// The client's neighbour entry for `addr` on eth0: (lladdr, states).
fn neigh(lan: &NetNs, addr: IpAddr) -> Option<(Option<String>, Vec<String>)> {
    let out = lan
        .ip(&["-j", "neigh", "show", &addr.to_string(), "dev", "eth0"])
        .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let e = v.get(0)?;
    let states = e["state"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Some((e["lladdr"].as_str().map(String::from), states))
}

/// Poll the client's neighbour table until `addr` resolves to the node's MAC.
fn wait_resolved(lan: &NetNs, addr: IpAddr) {
    let want = format_mac(NODE_MAC);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let n = neigh(lan, addr);
        if let Some((Some(ll), states)) = &n
            && *ll == want
            && states
                .iter()
                .any(|s| matches!(s.as_str(), "REACHABLE" | "STALE" | "DELAY" | "PROBE"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} did not resolve to {want} in the client namespace: {n:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn announce_answers_arp_and_ndp_for_vips() {
    let t = setup();
    let cap = t
        .lan
        .run_in(|| PacketSocket::open(t.lan_ifindex, ETH_P_ALL, None))
        .unwrap()
        .unwrap();
    t.lan.ip(&["neigh", "flush", "dev", "eth0"]).unwrap();
    let before = t.announcer.stats();
    // Joined the VIP's solicited-node group (ff02::1:ff00:100), so a NIC filtering
    // multicast in hardware would deliver its solicitations.
    let groups = node_groups(&t.node);
    assert!(
        groups.iter().any(|g| g == "33:33:ff:00:01:00"),
        "{groups:?}"
    );

    poke(&t.lan, VIP4.into());
    wait_resolved(&t.lan, VIP4.into());
    let s = t.announcer.stats();
    assert!(s.arp_requests > before.arp_requests, "{s:?}");
    assert!(s.arp_replies > before.arp_replies, "{s:?}");
    // The reply itself, field by field, as the client received it.
    let reply = capture_until(&cap, "the ARP reply", |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
    });
    let mut expected = Vec::new();
    expected.extend_from_slice(&CLIENT_MAC);
    expected.extend_from_slice(&NODE_MAC);
    expected.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
    expected.extend_from_slice(&NODE_MAC);
    expected.extend_from_slice(&VIP4.octets());
    expected.extend_from_slice(&CLIENT_MAC);
    expected.extend_from_slice(&[198, 18, 0, 1]);
    assert_eq!(reply[..42], expected[..], "ARP reply {reply:02x?}");

    poke(&t.lan, vip6().into());
    wait_resolved(&t.lan, vip6().into());
    let s = t.announcer.stats();
    assert!(s.ns_requests > before.ns_requests, "{s:?}");
    assert!(s.na_replies > before.na_replies, "{s:?}");
    // The client's own solicitation (outgoing on its side) names the address to answer.
    let ns = capture_until(&cap, "the client's NS", |f| {
        f.len() >= 78 && f[12..14] == [0x86, 0xdd] && f[20] == 58 && f[54] == 135
    });
    let na = capture_until(&cap, "the solicited NA", |f| {
        f.len() >= 55 && f[12..14] == [0x86, 0xdd] && f[20] == 58 && f[54] == 136
    });
    assert_eq!(na.len(), 86, "NA {na:02x?}");
    assert_eq!(na[0..6], CLIENT_MAC, "NA goes to the solicitor's MAC");
    assert_eq!(na[6..12], NODE_MAC);
    assert_eq!(na[14..22], [0x60, 0, 0, 0, 0, 32, 58, 255]);
    assert_eq!(na[22..38], vip6().octets(), "NA source is the VIP");
    assert_eq!(na[38..54], ns[22..38], "NA goes to the NS source");
    assert_eq!(na[55], 0);
    assert_eq!(na[58..62], [0x60, 0, 0, 0], "Solicited + Override");
    assert_eq!(na[62..78], vip6().octets(), "target");
    assert_eq!(na[78..80], [2, 1], "TLLA option");
    assert_eq!(na[80..86], NODE_MAC);
    let src: [u8; 16] = na[22..38].try_into().unwrap();
    let dst: [u8; 16] = na[38..54].try_into().unwrap();
    let sum = sum_bytes(pseudo_header_v6(src, dst, 58, 32), &na[54..86]);
    assert_eq!(fold(sum), 0xffff, "ICMPv6 checksum does not verify");

    assert_eq!(
        (s.malformed, s.send_errors, s.recv_errors, s.conflicts),
        (0, 0, 0, 0),
        "{s:?}"
    );
}

/// Read `cap` until a frame matches `want` (deadline [`DEADLINE`]); both directions count.
fn capture_until(cap: &PacketSocket, what: &str, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "captured no {what}");
        if let Some((n, _)) = cap.recv_timeout(&mut buf, left).unwrap()
            && n <= buf.len()
            && want(&buf[..n])
        {
            return buf[..n].to_vec();
        }
    }
}

/// A frame captured on the client side, with what the test reads from it.
enum Captured {
    Garp { spa: Ipv4Addr },
    Na { target: Ipv6Addr },
    Other,
}

/// Check a gratuitous ARP or unsolicited NA field by field (offsets written out here, not
/// taken from the module under test); anything else is `Other`.
fn classify(f: &[u8]) -> Captured {
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    if ethertype == 0x0806 && f[6..12] == NODE_MAC {
        assert!(f.len() >= 42, "short ARP {f:02x?}");
        assert_eq!(f[0..6], [0xff; 6], "gratuitous ARP must be broadcast");
        assert_eq!(
            f[14..22],
            [0, 1, 8, 0, 6, 4, 0, 1],
            "Ethernet/IPv4 ARP request"
        );
        assert_eq!(f[22..28], NODE_MAC, "sender MAC");
        assert_eq!(f[32..38], [0; 6], "target MAC");
        assert_eq!(f[28..32], f[38..42], "sender IP = target IP");
        return Captured::Garp {
            spa: Ipv4Addr::new(f[28], f[29], f[30], f[31]),
        };
    }
    if ethertype == 0x86dd && f.len() > 54 && f[20] == 58 && f[54] == 136 {
        assert_eq!(f.len(), 86, "NA with one option {f:02x?}");
        assert_eq!(f[0..6], [0x33, 0x33, 0, 0, 0, 1], "to all-nodes MAC");
        assert_eq!(f[6..12], NODE_MAC);
        assert_eq!(
            f[14..22],
            [0x60, 0, 0, 0, 0, 32, 58, 255],
            "IPv6 header, hop limit 255"
        );
        let src: [u8; 16] = f[22..38].try_into().unwrap();
        let dst: [u8; 16] = f[38..54].try_into().unwrap();
        assert_eq!(Ipv6Addr::from(dst), "ff02::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(f[55], 0, "code");
        assert_eq!(f[58..62], [0x20, 0, 0, 0], "Override only (not Solicited)");
        assert_eq!(f[62..78], src, "source = target = VIP");
        assert_eq!(
            f[78..86],
            [
                2,
                1,
                NODE_MAC[0],
                NODE_MAC[1],
                NODE_MAC[2],
                NODE_MAC[3],
                NODE_MAC[4],
                NODE_MAC[5]
            ],
            "TLLA"
        );
        let sum = sum_bytes(pseudo_header_v6(src, dst, 58, 32), &f[54..86]);
        assert_eq!(fold(sum), 0xffff, "ICMPv6 checksum does not verify");
        return Captured::Na {
            target: Ipv6Addr::from(src),
        };
    }
    Captured::Other
}

#[test]
fn announce_gratuitous_burst_when_vips_are_added() {
    let t = setup();
    let cap = t
        .lan
        .run_in(|| PacketSocket::open(t.lan_ifindex, ETH_P_ALL, None))
        .unwrap()
        .unwrap();
    // Stale entries with a wrong MAC: the announcements must override them.
    let wrong = "02:00:5e:a0:00:99";
    for a in [VIP4_NEW.to_string(), vip6_new().to_string()] {
        t.lan
            .ip(&[
                "neigh", "replace", &a, "lladdr", wrong, "dev", "eth0", "nud", "stale",
            ])
            .unwrap();
    }
    let before = t.announcer.stats();
    t.announcer
        .set_vips(&[
            VIP4.into(),
            vip6().into(),
            VIP4_NEW.into(),
            vip6_new().into(),
        ])
        .unwrap();

    let mut garps = Vec::new();
    let mut nas = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + DEADLINE;
    while garps.len() < 3 || nas.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "captured {} gratuitous ARPs and {} unsolicited NAs, want 3 each; stats {:?}",
            garps.len(),
            nas.len(),
            t.announcer.stats()
        );
        let Some((n, pkttype)) = cap.recv_timeout(&mut buf, left).unwrap() else {
            continue;
        };
        if pkttype == PACKET_OUTGOING {
            continue;
        }
        match classify(&buf[..n]) {
            Captured::Garp { spa } => garps.push((spa, Instant::now())),
            Captured::Na { target } => nas.push((target, Instant::now())),
            Captured::Other => {}
        }
    }
    // Only the new VIPs are announced; the old ones already were.
    assert!(garps.iter().all(|(a, _)| *a == VIP4_NEW), "{garps:?}");
    assert!(nas.iter().all(|(a, _)| *a == vip6_new()), "{nas:?}");
    // Spread over the burst (2 intervals), with scheduling slack.
    let span = garps[2].1 - garps[0].1;
    assert!(span >= INTERVAL, "3 gratuitous ARPs within {span:?}");
    // No fourth of either, for a few more intervals.
    let quiet_until = Instant::now() + 4 * INTERVAL;
    loop {
        let left = quiet_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Some((n, pkttype)) = cap.recv_timeout(&mut buf, left).unwrap()
            && pkttype != PACKET_OUTGOING
        {
            assert!(
                matches!(classify(&buf[..n]), Captured::Other),
                "more than 3 announcements"
            );
        }
    }
    let s = t.announcer.stats();
    assert_eq!(
        (
            s.gratuitous_arp - before.gratuitous_arp,
            s.unsolicited_na - before.unsolicited_na
        ),
        (3, 3),
        "{s:?}"
    );
    // The client's kernel took them: its stale entries now point at the node.
    wait_resolved(&t.lan, VIP4_NEW.into());
    wait_resolved(&t.lan, vip6_new().into());

    // Setting the same set again announces nothing.
    t.announcer
        .set_vips(&[
            VIP4_NEW.into(),
            vip6_new().into(),
            VIP4.into(),
            vip6().into(),
        ])
        .unwrap();
    let s2 = t.announcer.stats();
    assert_eq!(
        (s2.gratuitous_arp, s2.unsolicited_na),
        (s.gratuitous_arp, s.unsolicited_na)
    );
}

#[test]
fn announce_ignores_addresses_that_are_not_vips() {
    let t = setup();
    t.lan.ip(&["neigh", "flush", "dev", "eth0"]).unwrap();
    let before = t.announcer.stats();
    poke(&t.lan, NOT_VIP4.into());
    let s = wait_stats(&t.announcer, "the ARP request for a non-VIP", |s| {
        s.arp_requests > before.arp_requests && s.not_ours > before.not_ours
    });
    assert_eq!(s.arp_replies, before.arp_replies, "{s:?}");
    poke(&t.lan, not_vip6().into());
    let s = wait_stats(&t.announcer, "the NS for a non-VIP", |s| {
        s.ns_requests > before.ns_requests && s.not_ours >= before.not_ours + 2
    });
    assert_eq!(s.na_replies, before.na_replies, "{s:?}");

    // A VIP that is removed is no longer answered.
    t.announcer.set_vips(&[vip6().into()]).unwrap();
    let before = t.announcer.stats();
    poke(&t.lan, VIP4.into());
    let s = wait_stats(&t.announcer, "the ARP request for a removed VIP", |s| {
        s.arp_requests > before.arp_requests && s.not_ours > before.not_ours
    });
    assert_eq!(s.arp_replies, before.arp_replies, "{s:?}");
    for a in [IpAddr::from(NOT_VIP4), not_vip6().into(), VIP4.into()] {
        if let Some((Some(ll), _)) = neigh(&t.lan, a) {
            assert_ne!(ll, format_mac(NODE_MAC), "{a} resolved to the node");
        }
    }
    // The remaining VIP still is.
    poke(&t.lan, vip6().into());
    wait_resolved(&t.lan, vip6().into());
    // Without IPv6 VIPs the solicited-node group is left again.
    assert!(
        node_groups(&t.node)
            .iter()
            .any(|g| g == "33:33:ff:00:01:00")
    );
    t.announcer.set_vips(&[]).unwrap();
    let groups = node_groups(&t.node);
    assert!(
        !groups.iter().any(|g| g.starts_with("33:33:ff:00:01:")),
        "{groups:?}"
    );
}

fn announce_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with("lb-ann-"))
        .count()
}

/// Wait until exactly `n` announcer threads exist. A joined thread's /proc entry can outlive
/// pthread_join by a moment (the kernel wakes the joiner before it reaps the task).
fn wait_threads(n: usize) {
    let deadline = Instant::now() + DEADLINE;
    while announce_threads() != n {
        assert!(
            Instant::now() < deadline,
            "{} announcer threads, want {n}",
            announce_threads()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn announce_stop_and_drop_release_thread_and_sockets() {
    let t = setup();
    wait_threads(1);
    let fds = open_fds();
    t.announcer.stop().unwrap();
    wait_threads(0);
    // Two packet sockets and the eventfd are closed.
    assert_eq!(open_fds(), fds - 3);

    // Drop alone (as on a failed assertion) does the same.
    let node = NetNs::create(&format!("{PREFIX}n")).unwrap();
    veth_pair(&node, "d0", CLIENT_MAC, &node, "d1", NODE_MAC).unwrap();
    let fds = open_fds();
    let r = std::panic::catch_unwind(|| {
        let _a = node
            .run_in(|| Announcer::start("d0", &[VIP4.into()], AnnounceOptions::default()))
            .unwrap()
            .unwrap();
        assert_eq!(announce_threads(), 1);
        panic!("test failure while announcing");
    });
    assert!(r.is_err());
    wait_threads(0);
    assert_eq!(open_fds(), fds);

    let e = node
        .run_in(|| Announcer::start("nope0", &[VIP4.into()], AnnounceOptions::default()))
        .unwrap()
        .err()
        .unwrap();
    assert!(
        matches!(e, AnnounceError::NoSuchInterface(ref n) if n == "nope0"),
        "{e}"
    );
    let e = node
        .run_in(|| Announcer::start("lo", &[VIP4.into()], AnnounceOptions::default()))
        .unwrap()
        .err()
        .unwrap();
    assert!(matches!(e, AnnounceError::NotEthernet(..)), "{e}");
}
