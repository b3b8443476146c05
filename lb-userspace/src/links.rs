//! The node's network interfaces as the daemon needs to know them: name, index, what kind
//! of device (from its ethtool driver name), and whether it holds a default route.
//!
//! Two decisions are made from these records, both pure functions with unit tests:
//! which interfaces take a native XDP redirect ([`takes_native_redirect`], the rule behind
//! `lb_common::egress`), and which interfaces the config's patterns name
//! (`crate::ifaces`).
//!
//! Everything is read through the calling thread's network namespace (ioctl on a socket,
//! `/proc/thread-self/net`), never `/sys/class/net`, which shows the namespace sysfs was
//! mounted in: `lb run --netns` enters a namespace without remounting.

use std::{ffi::CStr, os::fd::AsRawFd};

/// One interface of the namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub ifindex: u32,
    pub kind: LinkKind,
    /// An IPv4 or IPv6 default route leaves through it.
    pub default_route: bool,
}

/// What kind of device, as far as XDP forwarding cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Loopback,
    /// A veth: takes native redirects (`ndo_xdp_xmit`).
    Veth,
    /// A device with a bus address (a NIC; `driver` as ethtool names it).
    Physical {
        driver: String,
    },
    /// Any other virtual device: tunnels (`vxlan`, `geneve`, `wireguard`, `ipip`, `gre`,
    /// `tun`), bridges, bonds, VLANs, macvlans; `driver` is ethtool's name, empty if it
    /// has none.
    Virtual {
        driver: String,
    },
}

impl LinkKind {
    /// A short name for logs and /status.
    pub fn name(&self) -> &str {
        match self {
            LinkKind::Loopback => "loopback",
            LinkKind::Veth => "veth",
            LinkKind::Physical { driver } | LinkKind::Virtual { driver } if !driver.is_empty() => {
                driver
            }
            LinkKind::Physical { .. } => "physical",
            LinkKind::Virtual { .. } => "unknown",
        }
    }

    /// From ethtool's driver name and bus address (`ETHTOOL_GDRVINFO`); `None` when the
    /// device answers no driver information.
    pub fn from_drvinfo(loopback: bool, drv: Option<(&str, &str)>) -> LinkKind {
        if loopback {
            return LinkKind::Loopback;
        }
        match drv {
            Some(("veth", _)) => LinkKind::Veth,
            // Virtual drivers leave the bus empty (or write "N/A", "tun" and the like).
            Some((driver, bus)) if bus.contains(':') => LinkKind::Physical {
                driver: driver.to_string(),
            },
            Some((driver, _)) => LinkKind::Virtual {
                driver: driver.to_string(),
            },
            None => LinkKind::Virtual {
                driver: String::new(),
            },
        }
    }
}

/// Does a native XDP redirect to this interface deliver? The rule is conservative: a wrong
/// "yes" loses packets silently (the kernel drops a redirect the driver cannot take), a
/// wrong "no" only costs the kernel's slower path. So: veths (`ndo_xdp_xmit`), and physical
/// NICs whose driver lb has seen run XDP natively (`native_xdp`: lb attached its program
/// there in native mode). Tunnels (VXLAN, Geneve, IPIP, GRE, WireGuard), tun, bridges,
/// bonds, VLANs, macvlans, loopback and anything unknown: no.
pub fn takes_native_redirect(kind: &LinkKind, native_xdp: bool) -> bool {
    match kind {
        LinkKind::Veth => true,
        LinkKind::Physical { .. } => native_xdp,
        LinkKind::Loopback | LinkKind::Virtual { .. } => false,
    }
}

/// Every interface of the calling thread's namespace.
pub fn scan() -> Vec<Link> {
    let defaults = default_route_ifaces();
    let sock = socket();
    names()
        .into_iter()
        .map(|(name, ifindex)| {
            let loopback = name == "lo";
            let drv = sock.as_ref().and_then(|s| drvinfo(s.as_raw_fd(), &name));
            let kind = LinkKind::from_drvinfo(loopback, drv.as_ref().map(|(d, b)| (&**d, &**b)));
            Link {
                default_route: defaults.contains(&name),
                name,
                ifindex,
                kind,
            }
        })
        .collect()
}

/// (name, ifindex) of every interface.
pub fn names() -> Vec<(String, u32)> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return out;
        }
        let mut p = head;
        while (*p).if_index != 0 {
            let name = CStr::from_ptr((*p).if_name).to_string_lossy().into_owned();
            out.push((name, (*p).if_index));
            p = p.add(1);
        }
        libc::if_freenameindex(head);
    }
    out
}

fn socket() -> Option<std::os::fd::OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    // SAFETY: a fresh fd we own.
    (fd >= 0).then(|| unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    counts: [u32; 5],
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 3;

/// ethtool's (driver, bus address) of `name`.
fn drvinfo(fd: i32, name: &str) -> Option<(String, String)> {
    // SAFETY: plain C structs; all-zero is valid.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= ifr.ifr_name.len() {
        return None;
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: SIOCETHTOOL with an ifreq pointing at a drvinfo buffer of the kernel's size.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr) };
    if rc != 0 {
        return None;
    }
    let text = |b: &[u8]| {
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    Some((text(&info.driver), text(&info.bus_info)))
}

/// Interfaces that hold an IPv4 or IPv6 default route (main table), from
/// `/proc/thread-self/net/{route,ipv6_route}`.
fn default_route_ifaces() -> Vec<String> {
    let v4 = std::fs::read_to_string("/proc/thread-self/net/route").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/thread-self/net/ipv6_route").unwrap_or_default();
    parse_default_routes(&v4, &v6)
}

/// The parsing half of [`default_route_ifaces`].
pub fn parse_default_routes(route: &str, ipv6_route: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    for l in route.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000" {
            out.push(f[0].to_string());
        }
    }
    // dest prefix_len src src_len next_hop metric refcnt use flags device
    for l in ipv6_route.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo" {
            out.push(f[9].to_string());
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_ethtool() {
        assert_eq!(LinkKind::from_drvinfo(true, None), LinkKind::Loopback);
        assert_eq!(
            LinkKind::from_drvinfo(false, Some(("veth", ""))),
            LinkKind::Veth
        );
        assert_eq!(
            LinkKind::from_drvinfo(false, Some(("mlx5_core", "0000:3b:00.0"))),
            LinkKind::Physical {
                driver: "mlx5_core".into()
            }
        );
        for (d, bus) in [
            ("vxlan", ""),
            ("wireguard", ""),
            ("tun", "tun"),
            ("bridge", "N/A"),
        ] {
            assert_eq!(
                LinkKind::from_drvinfo(false, Some((d, bus))),
                LinkKind::Virtual { driver: d.into() },
                "{d}"
            );
        }
        assert_eq!(LinkKind::from_drvinfo(false, None).name(), "unknown");
    }

    #[test]
    fn only_veths_and_native_xdp_nics_take_a_redirect() {
        let nic = LinkKind::Physical {
            driver: "ice".into(),
        };
        assert!(takes_native_redirect(&LinkKind::Veth, false));
        assert!(takes_native_redirect(&nic, true));
        assert!(!takes_native_redirect(&nic, false));
        for d in [
            "vxlan",
            "geneve",
            "wireguard",
            "ipip",
            "ip_gre",
            "tun",
            "bridge",
            "",
        ] {
            let k = LinkKind::Virtual { driver: d.into() };
            assert!(!takes_native_redirect(&k, true), "{d}");
        }
        assert!(!takes_native_redirect(&LinkKind::Loopback, true));
    }

    #[test]
    fn default_routes_from_proc() {
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     cali1\t0A01A8C0\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n";
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 bond0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n\
                  fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth1\n";
        assert_eq!(parse_default_routes(route, v6), ["bond0", "eth0"]);
        assert!(parse_default_routes("", "").is_empty());
    }

    #[test]
    fn scan_sees_loopback() {
        let links = scan();
        let lo = links.iter().find(|l| l.name == "lo").expect("lo");
        assert_eq!(lo.kind, LinkKind::Loopback);
        assert!(lo.ifindex > 0);
    }
}
