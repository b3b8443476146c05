//! VIP announcement on a LAN (static mode): answer ARP requests and IPv6 Neighbor
//! Solicitations for the VIPs this node owns, and send gratuitous ARP / unsolicited Neighbor
//! Advertisements when a VIP comes up.
//!
//! In lb a VIP is configured on no interface (the XDP program takes its packets before the
//! stack would), so the kernel never answers ARP or NDP for it; this module does, from the
//! interface's MAC address, so the LAN sends VIP traffic to this node.
//!
//! Why userspace and not XDP: ARP and NDP are rare control packets (a few per neighbour
//! every few minutes). Answering them in userspace keeps the XDP program small and its
//! verifier budget for the packet path, and lets us log, count and test them with ordinary
//! code. The XDP program passes ARP and ICMPv6 untouched (counted as `pass_not_ip` and
//! `pass_not_vip`), and the kernel hands those frames to our packet sockets: XDP runs before
//! the packet taps, so what XDP passes is exactly what we see.
//!
//! How: one thread per interface ([`Announcer::start`]) with two `AF_PACKET` raw sockets bound
//! to the interface, one for `ETH_P_ARP` and one for `ETH_P_IPV6` with a classic BPF filter
//! that keeps only ICMPv6 Neighbor Solicitations. Protocol-specific sockets rather than one
//! `ETH_P_ALL` socket: an `ETH_P_ALL` socket is also a transmit tap, so every packet the node
//! sends out of that interface (reverse-NATed replies included) would be cloned to it or at
//! least run through its filter; `ETH_P_ARP` / `ETH_P_IPV6` sockets see only received
//! frames. Each socket is created with protocol 0 (receives nothing), filtered, then bound,
//! so no unfiltered frame is ever queued. For IPv6 VIPs the socket joins the solicited-node
//! multicast group's MAC (`33:33:ff:xx:xx:xx`) with `PACKET_ADD_MEMBERSHIP`, so a NIC with a
//! hardware multicast filter delivers the solicitations.
//!
//! A std thread rather than a tokio task: the work is a poll loop over raw sockets that
//! tokio has no type for, the library does not otherwise need a runtime, and the thread is
//! independent of whoever starts it (the daemon, tests). Called from async code, the handle's
//! methods are cheap: `set_vips` waits only for the thread to apply the set (microseconds),
//! `stats` reads atomics, `stop` joins a thread that wakes at once (an eventfd).
//!
//! Replies: an ARP reply from the interface MAC (also to RFC 5227 probes, sender 0.0.0.0); a
//! Neighbor Advertisement with the Solicited and Override flags, a Target Link-Layer Address
//! option and hop limit 255, from the VIP itself (as keepalived does: the VIP is the address
//! being advertised and needs no link-local address). An NS from the unspecified address (DAD
//! by another node for our VIP) is answered to all-nodes without the Solicited flag (RFC 4861
//! §7.2.4), which defends the VIP. Someone else claiming a VIP in ARP is logged and counted
//! as a conflict.
//!
//! Gratuitous announcements, when a VIP is added (at start and by
//! [`AnnouncerHandle::set_vips`]): an ARP request with sender = target = VIP to broadcast
//! (updates existing ARP entries of every neighbour), and an unsolicited NA to all-nodes
//! (`ff02::1`) with Override and without Solicited; a burst of
//! [`AnnounceOptions::gratuitous_count`] packets [`AnnounceOptions::gratuitous_interval`]
//! apart, because a single one can be lost.
//!
//! Limits: untagged Ethernet only (for a VLAN, run on the VLAN interface); the interface's
//! MAC is read once at start.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lb_common::csum::{fold, pseudo_header_v6, sum_bytes};
use lb_common::wire::{
    ARP_REPLY, ARP_REQUEST, ETH_HLEN, ETH_P_ARP, ETH_P_IPV6, ICMPV6_NA, ICMPV6_NS, IPV6_HLEN,
    NA_FLAG_OVERRIDE, NA_FLAG_SOLICITED, NDP_OPT_SOURCE_LL, NDP_OPT_TARGET_LL, PROTO_ICMPV6,
};

use crate::mac::{Mac, format_mac};

/// A packet socket's protocol for every frame, sent or received (Linux `if_ether.h`).
pub const ETH_P_ALL: u16 = 0x0003;

pub const BROADCAST_MAC: Mac = [0xff; 6];
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Octets of an ARP packet for IPv4 over Ethernet.
const ARP_LEN: usize = 28;
/// Ethernet + ARP for IPv4 over Ethernet.
pub const ARP_FRAME_LEN: usize = ETH_HLEN + ARP_LEN;
/// ICMPv6 NA with one Target Link-Layer Address option.
const NA_LEN: usize = 4 + 4 + 16 + 8;
/// Ethernet + IPv6 + NA with a TLLA option.
pub const NA_FRAME_LEN: usize = ETH_HLEN + IPV6_HLEN + NA_LEN;

/// Why the announcer could not start or take new VIPs.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("no interface named {0:?} in this network namespace (check `ip link`)")]
    NoSuchInterface(String),
    #[error(
        "interface {0:?} is not Ethernet (hardware type {1}); ARP/NDP announcement needs an Ethernet interface"
    )]
    NotEthernet(String, u16),
    #[error("{0} cannot be a VIP: it is unspecified, multicast, broadcast or loopback")]
    BadVip(IpAddr),
    #[error("{what} on {iface}: {source} (packet sockets need CAP_NET_RAW)")]
    Io {
        what: String,
        iface: String,
        source: io::Error,
    },
    #[error("the announcer thread for {0} has stopped")]
    Stopped(String),
}

type Result<T, E = AnnounceError> = std::result::Result<T, E>;

/// Tuning of the gratuitous bursts.
#[derive(Debug, Clone)]
pub struct AnnounceOptions {
    /// Gratuitous ARPs (and, separately, unsolicited NAs) sent per VIP when it comes up.
    pub gratuitous_count: u32,
    /// Time between two packets of a burst.
    pub gratuitous_interval: Duration,
}

impl Default for AnnounceOptions {
    fn default() -> Self {
        AnnounceOptions {
            gratuitous_count: 3,
            gratuitous_interval: Duration::from_millis(200),
        }
    }
}

/// Counters since start. "Requests" are ARP requests and Neighbor Solicitations for any
/// address; `not_ours` counts those for addresses that are not VIPs (left to the kernel).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnnounceStats {
    pub arp_requests: u64,
    pub arp_replies: u64,
    pub ns_requests: u64,
    pub na_replies: u64,
    pub not_ours: u64,
    pub gratuitous_arp: u64,
    pub unsolicited_na: u64,
    /// Frames that failed validation (short, bad checksum, hop limit != 255, ...).
    pub malformed: u64,
    /// ARP from another MAC claiming one of our VIPs.
    pub conflicts: u64,
    pub send_errors: u64,
    pub recv_errors: u64,
}

#[derive(Default)]
struct Counters {
    arp_requests: AtomicU64,
    arp_replies: AtomicU64,
    ns_requests: AtomicU64,
    na_replies: AtomicU64,
    not_ours: AtomicU64,
    gratuitous_arp: AtomicU64,
    unsolicited_na: AtomicU64,
    malformed: AtomicU64,
    conflicts: AtomicU64,
    send_errors: AtomicU64,
    recv_errors: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> AnnounceStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AnnounceStats {
            arp_requests: l(&self.arp_requests),
            arp_replies: l(&self.arp_replies),
            ns_requests: l(&self.ns_requests),
            na_replies: l(&self.na_replies),
            not_ours: l(&self.not_ours),
            gratuitous_arp: l(&self.gratuitous_arp),
            unsolicited_na: l(&self.unsolicited_na),
            malformed: l(&self.malformed),
            conflicts: l(&self.conflicts),
            send_errors: l(&self.send_errors),
            recv_errors: l(&self.recv_errors),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pure frame builders and parsers.

/// An ARP packet for IPv4 over Ethernet, with the Ethernet addresses it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub oper: u16,
    pub sha: Mac,
    pub spa: Ipv4Addr,
    pub tha: Mac,
    pub tpa: Ipv4Addr,
}

/// The first `N` octets of `s`, which the caller has checked is long enough (a shorter `s`
/// is a bug in that length check, and panics on the index).
fn octets<const N: usize>(s: &[u8]) -> [u8; N] {
    std::array::from_fn(|i| s[i])
}

/// Parse an Ethernet frame holding ARP for IPv4 over Ethernet (trailing padding ignored).
pub fn parse_arp(frame: &[u8]) -> Option<Arp> {
    if frame.len() < ARP_FRAME_LEN || u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_ARP {
        return None;
    }
    let a = &frame[ETH_HLEN..];
    // htype Ethernet, ptype IPv4, hlen 6, plen 4.
    if a[0..6] != [0, 1, 0x08, 0x00, 6, 4] {
        return None;
    }
    let mac = octets::<6>;
    let ip = |s: &[u8]| Ipv4Addr::new(s[0], s[1], s[2], s[3]);
    Some(Arp {
        eth_dst: mac(&frame[0..6]),
        eth_src: mac(&frame[6..12]),
        oper: u16::from_be_bytes([a[6], a[7]]),
        sha: mac(&a[8..14]),
        spa: ip(&a[14..18]),
        tha: mac(&a[18..24]),
        tpa: ip(&a[24..28]),
    })
}

/// Serialize an [`Arp`] into a 42-octet frame (the NIC pads to the Ethernet minimum).
pub fn build_arp(arp: &Arp) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    f[0..6].copy_from_slice(&arp.eth_dst);
    f[6..12].copy_from_slice(&arp.eth_src);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..20].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f[20..22].copy_from_slice(&arp.oper.to_be_bytes());
    f[22..28].copy_from_slice(&arp.sha);
    f[28..32].copy_from_slice(&arp.spa.octets());
    f[32..38].copy_from_slice(&arp.tha);
    f[38..42].copy_from_slice(&arp.tpa.octets());
    f
}

/// The reply to ARP `request` for `vip` (its `tpa`), from `mac`, sent back to the requester.
pub fn arp_reply(mac: Mac, vip: Ipv4Addr, request: &Arp) -> [u8; ARP_FRAME_LEN] {
    build_arp(&Arp {
        eth_dst: request.sha,
        eth_src: mac,
        oper: ARP_REPLY,
        sha: mac,
        spa: vip,
        tha: request.sha,
        tpa: request.spa,
    })
}

/// Gratuitous ARP: a broadcast request with sender = target = `vip` (RFC 5227 announcement
/// form), target hardware address zero.
pub fn gratuitous_arp(mac: Mac, vip: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    build_arp(&Arp {
        eth_dst: BROADCAST_MAC,
        eth_src: mac,
        oper: ARP_REQUEST,
        sha: mac,
        spa: vip,
        tha: [0; 6],
        tpa: vip,
    })
}

/// `ff02::1:ffXX:XXXX`, the solicited-node multicast address of `addr` (RFC 4291 §2.7.1).
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// The Ethernet address of IPv6 multicast group `group`: `33:33` + its last 32 bits.
pub fn multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// ICMPv6 checksum of `icmp` (its checksum field zeroed or not: the field is skipped).
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum = pseudo_header_v6(src.octets(), dst.octets(), PROTO_ICMPV6, icmp.len() as u32);
    sum = sum_bytes(sum, &icmp[..2]);
    sum = sum_bytes(sum, &icmp[4..]);
    !fold(sum)
}

/// A received Neighbor Solicitation that passed RFC 4861 §7.1.1 validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborSolicitation {
    pub eth_src: Mac,
    pub eth_dst: Mac,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub target: Ipv6Addr,
    /// The Source Link-Layer Address option, if present.
    pub source_ll: Option<Mac>,
}

/// Why a frame is not a valid Neighbor Solicitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsError {
    /// Not IPv6 ICMPv6 type 135 at all (not counted as malformed).
    NotNs,
    Malformed(&'static str),
}

/// Parse and validate an Ethernet frame holding an ICMPv6 Neighbor Solicitation (no
/// extension headers; RFC 4861 §7.1.1 checks: hop limit 255, code 0, length, checksum,
/// non-multicast target, option lengths, no SLLA from the unspecified address).
pub fn parse_ns(frame: &[u8]) -> Result<NeighborSolicitation, NsError> {
    use NsError::{Malformed, NotNs};
    if frame.len() < ETH_HLEN + IPV6_HLEN + 4
        || u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_IPV6
        || frame[14] >> 4 != 6
        || frame[ETH_HLEN + 6] != PROTO_ICMPV6
        || frame[ETH_HLEN + IPV6_HLEN] != ICMPV6_NS
    {
        return Err(NotNs);
    }
    let ip = &frame[ETH_HLEN..];
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    if ip.len() < IPV6_HLEN + payload_len {
        return Err(Malformed("truncated IPv6 payload"));
    }
    let icmp = &ip[IPV6_HLEN..IPV6_HLEN + payload_len];
    if ip[7] != 255 {
        return Err(Malformed("hop limit is not 255"));
    }
    if icmp.len() < 24 {
        return Err(Malformed("NS shorter than 24 octets"));
    }
    if icmp[1] != 0 {
        return Err(Malformed("ICMPv6 code is not 0"));
    }
    let addr = |s: &[u8]| Ipv6Addr::from(octets::<16>(s));
    let (src, dst) = (addr(&ip[8..24]), addr(&ip[24..40]));
    if u16::from_be_bytes([icmp[2], icmp[3]]) != icmpv6_checksum(src, dst, icmp) {
        return Err(Malformed("bad ICMPv6 checksum"));
    }
    let target = addr(&icmp[8..24]);
    if target.is_multicast() {
        return Err(Malformed("multicast target"));
    }
    let mut source_ll = None;
    let mut opts = &icmp[24..];
    while !opts.is_empty() {
        if opts.len() < 2 || opts[1] == 0 || opts.len() < opts[1] as usize * 8 {
            return Err(Malformed("bad option length"));
        }
        let len = opts[1] as usize * 8;
        if opts[0] == NDP_OPT_SOURCE_LL && len >= 8 {
            source_ll = Some(octets::<6>(&opts[2..8]));
        }
        opts = &opts[len..];
    }
    if src.is_unspecified()
        && (source_ll.is_some() || dst.segments()[..6] != [0xff02, 0, 0, 0, 0, 1])
    {
        return Err(Malformed(
            "DAD solicitation with SLLA or not to solicited-node",
        ));
    }
    let mac = octets::<6>;
    Ok(NeighborSolicitation {
        eth_dst: mac(&frame[0..6]),
        eth_src: mac(&frame[6..12]),
        src,
        dst,
        target,
        source_ll,
    })
}

/// A Neighbor Advertisement frame for `target` with a Target Link-Layer Address option
/// (`mac`), hop limit 255, from `src` to `dst` at Ethernet `eth_dst`; `flags` from
/// [`NA_FLAG_SOLICITED`] etc.
pub fn neighbor_advertisement(
    mac: Mac,
    eth_dst: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    flags: u8,
) -> [u8; NA_FRAME_LEN] {
    let mut f = [0u8; NA_FRAME_LEN];
    f[0..6].copy_from_slice(&eth_dst);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let ip = &mut f[ETH_HLEN..];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(NA_LEN as u16).to_be_bytes());
    ip[6] = PROTO_ICMPV6;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    let icmp = &mut ip[IPV6_HLEN..];
    icmp[0] = ICMPV6_NA;
    icmp[4] = flags;
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24] = NDP_OPT_TARGET_LL;
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&mac);
    let c = icmpv6_checksum(src, dst, icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    f
}

/// The answer to `ns` for one of our VIPs (its target): solicited + override, to the
/// solicitor; or, for DAD (unspecified source), override only, to all-nodes.
pub fn na_reply(mac: Mac, ns: &NeighborSolicitation) -> [u8; NA_FRAME_LEN] {
    if ns.src.is_unspecified() {
        unsolicited_na(mac, ns.target)
    } else {
        neighbor_advertisement(
            mac,
            ns.source_ll.unwrap_or(ns.eth_src),
            ns.target,
            ns.src,
            ns.target,
            NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE,
        )
    }
}

/// Unsolicited NA for `vip` to all-nodes (`ff02::1`, `33:33:00:00:00:01`), Override set.
pub fn unsolicited_na(mac: Mac, vip: Ipv6Addr) -> [u8; NA_FRAME_LEN] {
    neighbor_advertisement(
        mac,
        multicast_mac(ALL_NODES),
        vip,
        ALL_NODES,
        vip,
        NA_FLAG_OVERRIDE,
    )
}

/// Classic BPF for the IPv6 socket: accept ICMPv6 (next header 58, no extension headers)
/// type 135, drop everything else, so ordinary IPv6 traffic is never queued to us.
fn ns_filter() -> [libc::sock_filter; 6] {
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ldb = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    [
        stmt(ldb, (ETH_HLEN + 6) as u32),
        jeq(u32::from(PROTO_ICMPV6), 0, 3),
        stmt(ldb, (ETH_HLEN + IPV6_HLEN) as u32),
        jeq(u32::from(ICMPV6_NS), 0, 1),
        stmt(ret, 0xffff),
        stmt(ret, 0),
    ]
}

// ---------------------------------------------------------------------------------------
// Packet sockets.

/// An `AF_PACKET` `SOCK_RAW` socket bound to one interface and EtherType, non-blocking.
/// Public so tests can capture and inject frames with it.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

/// `sll_pkttype` of a frame this host sent (seen by `ETH_P_ALL` sockets).
pub const PACKET_OUTGOING: u8 = 4;

impl PacketSocket {
    /// Open in the calling thread's network namespace. With `filter`, it is attached before
    /// the socket is bound, so no unfiltered frame is ever queued.
    pub fn open(
        ifindex: u32,
        ethertype: u16,
        filter: Option<&[libc::sock_filter]>,
    ) -> io::Result<PacketSocket> {
        // SAFETY: plain socket(2); protocol 0 receives nothing until bind.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is fresh and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Some(filter) = filter {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)?;
        }
        // SAFETY: sockaddr_ll is plain old data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ethertype.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd, ifindex })
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Receive one frame without blocking: `Ok(None)` when none is queued, else the frame
    /// length (truncated frames are reported at their real length, larger than `buf`) and
    /// its `sll_pkttype`.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, u8)>> {
        // SAFETY: sockaddr_ll is plain old data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buf and sll are valid for writes of the sizes given.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
                (&raw mut sll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some((n as usize, sll.sll_pkttype)))
    }

    /// Wait up to `timeout` for a frame (see [`PacketSocket::try_recv`]).
    pub fn recv_timeout(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> io::Result<Option<(usize, u8)>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.try_recv(buf)? {
                return Ok(Some(r));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            poll(&[self.fd.as_raw_fd()], Some(left))?;
        }
    }

    /// Send one complete Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is valid for reads of its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != frame.len() {
            return Err(io::Error::other(format!(
                "sent {n} of {} octets",
                frame.len()
            )));
        }
        Ok(())
    }

    /// Join (`add`) or leave a link-layer multicast group on the interface.
    pub fn multicast_membership(&self, mac: Mac, add: bool) -> io::Result<()> {
        let mut mr = libc::packet_mreq {
            mr_ifindex: self.ifindex as i32,
            mr_type: libc::PACKET_MR_MULTICAST as u16,
            mr_alen: 6,
            mr_address: [0; 8],
        };
        mr.mr_address[..6].copy_from_slice(&mac);
        let opt = if add {
            libc::PACKET_ADD_MEMBERSHIP
        } else {
            libc::PACKET_DROP_MEMBERSHIP
        };
        setsockopt(&self.fd, libc::SOL_PACKET, opt, &mr)
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: value points to a live T of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// poll(2) for readability; returns which fds are readable (EINTR: none).
fn poll(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = match timeout {
        // Round up so a timer is never polled for 0 ms repeatedly just before it is due.
        Some(t) => t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
        None => -1,
    };
    // SAFETY: pfds is a valid array of pollfd of the length given.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

fn interface(name: &str) -> Result<(u32, Mac)> {
    let io_err = |what: &str, source| AnnounceError::Io {
        what: what.to_string(),
        iface: name.to_string(),
        source,
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(AnnounceError::NoSuchInterface(name.to_string()));
    }
    let c = CString::new(name).map_err(|_| AnnounceError::NoSuchInterface(name.to_string()))?;
    // SAFETY: c is a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return Err(AnnounceError::NoSuchInterface(name.to_string()));
    }
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io_err("socket(AF_INET)", io::Error::last_os_error()));
    }
    // SAFETY: fresh fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(c.as_bytes_with_nul()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the name and writes the hardware address into ifr.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) } != 0 {
        return Err(io_err("SIOCGIFHWADDR", io::Error::last_os_error()));
    }
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member.
    let hw = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Err(AnnounceError::NotEthernet(name.to_string(), hw.sa_family));
    }
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok((ifindex, mac))
}

fn check_vips(vips: &[IpAddr]) -> Result<BTreeSet<IpAddr>> {
    for &vip in vips {
        let bad = match vip {
            IpAddr::V4(a) => {
                a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback()
            }
            IpAddr::V6(a) => a.is_unspecified() || a.is_multicast() || a.is_loopback(),
        };
        if bad {
            return Err(AnnounceError::BadVip(vip));
        }
    }
    Ok(vips.iter().copied().collect())
}

// ---------------------------------------------------------------------------------------
// The announcer thread.

/// Starts announcers; see the module documentation.
pub struct Announcer;

enum Command {
    SetVips(BTreeSet<IpAddr>, Sender<Result<()>>),
    Stop,
}

/// A running announcer. Dropping it stops the thread and closes its sockets.
pub struct AnnouncerHandle {
    iface: String,
    ifindex: u32,
    mac: Mac,
    commands: Sender<Command>,
    wake: Arc<OwnedFd>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl Announcer {
    /// Announce `vips` on interface `ifname` of the calling thread's network namespace (the
    /// sockets stay in that namespace; the worker thread may run anywhere). Sends the
    /// gratuitous bursts for all `vips` at once.
    pub fn start(ifname: &str, vips: &[IpAddr], opts: AnnounceOptions) -> Result<AnnouncerHandle> {
        let vips = check_vips(vips)?;
        let (ifindex, mac) = interface(ifname)?;
        let io_err = |what: &str, source| AnnounceError::Io {
            what: what.to_string(),
            iface: ifname.to_string(),
            source,
        };
        let arp = PacketSocket::open(ifindex, ETH_P_ARP, None)
            .map_err(|e| io_err("opening an ETH_P_ARP packet socket", e))?;
        let filter = ns_filter();
        let ndp = PacketSocket::open(ifindex, ETH_P_IPV6, Some(&filter))
            .map_err(|e| io_err("opening an ETH_P_IPV6 packet socket", e))?;
        // SAFETY: plain eventfd(2).
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io_err("eventfd", io::Error::last_os_error()));
        }
        // SAFETY: fresh fd.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(wake) });
        let counters = Arc::new(Counters::default());
        let mut worker = Worker {
            iface: ifname.to_string(),
            mac,
            arp,
            ndp,
            wake: wake.clone(),
            counters: counters.clone(),
            opts,
            vips: BTreeSet::new(),
            groups: BTreeSet::new(),
            bursts: Vec::new(),
        };
        worker
            .set_vips(vips)
            .map_err(|e| io_err("joining solicited-node multicast groups", e))?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("lb-ann-{ifname}"))
            .spawn(move || worker.run(rx))
            .map_err(|e| io_err("spawning the announcer thread", e))?;
        log::info!(
            "announcing VIPs on {ifname} (ifindex {ifindex}) from {}",
            format_mac(mac)
        );
        Ok(AnnouncerHandle {
            iface: ifname.to_string(),
            ifindex,
            mac,
            commands: tx,
            wake,
            counters,
            thread: Some(thread),
        })
    }

    /// [`Announcer::start`] by interface index.
    pub fn start_ifindex(
        ifindex: u32,
        vips: &[IpAddr],
        opts: AnnounceOptions,
    ) -> Result<AnnouncerHandle> {
        let mut buf = [0 as libc::c_char; libc::IFNAMSIZ];
        // SAFETY: buf has IFNAMSIZ bytes as if_indextoname requires.
        let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
        if p.is_null() {
            return Err(AnnounceError::NoSuchInterface(format!("ifindex {ifindex}")));
        }
        // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
        let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
        Self::start(&name.to_string_lossy(), vips, opts)
    }
}

impl AnnouncerHandle {
    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The MAC address the VIPs are announced with.
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// Replace the VIP set. Newly added VIPs get a gratuitous burst; removed ones are no
    /// longer answered. When this returns Ok, requests for the new set are answered.
    pub fn set_vips(&self, vips: &[IpAddr]) -> Result<()> {
        let vips = check_vips(vips)?;
        let (tx, rx) = mpsc::channel();
        self.send(Command::SetVips(vips, tx))?;
        rx.recv()
            .map_err(|_| AnnounceError::Stopped(self.iface.clone()))?
    }

    pub fn stats(&self) -> AnnounceStats {
        self.counters.snapshot()
    }

    /// Stop the thread, close the sockets and wait for it.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn send(&self, c: Command) -> Result<()> {
        self.commands
            .send(c)
            .map_err(|_| AnnounceError::Stopped(self.iface.clone()))?;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd. A full counter (EAGAIN)
        // still means the worker will wake, so the result is irrelevant.
        unsafe { libc::write(self.wake.as_raw_fd(), (&raw const one).cast(), 8) };
        Ok(())
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.send(Command::Stop);
        thread
            .join()
            .map_err(|_| AnnounceError::Stopped(self.iface.clone()))
    }
}

impl Drop for AnnouncerHandle {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::warn!("announcer on {}: {e}", self.iface);
        }
    }
}

struct Burst {
    vip: IpAddr,
    left: u32,
    next: Instant,
}

struct Worker {
    iface: String,
    mac: Mac,
    arp: PacketSocket,
    ndp: PacketSocket,
    wake: Arc<OwnedFd>,
    counters: Arc<Counters>,
    opts: AnnounceOptions,
    vips: BTreeSet<IpAddr>,
    /// Solicited-node group MACs joined (several VIPs can share one).
    groups: BTreeSet<Mac>,
    bursts: Vec<Burst>,
}

impl Worker {
    fn run(mut self, commands: Receiver<Command>) {
        let mut buf = vec![0u8; 4096];
        loop {
            let now = Instant::now();
            self.send_due(now);
            let timeout = self
                .bursts
                .iter()
                .map(|b| b.next.saturating_duration_since(now))
                .min();
            let fds = [
                self.wake.as_raw_fd(),
                self.arp.as_raw_fd(),
                self.ndp.as_raw_fd(),
            ];
            let ready = match poll(&fds, timeout) {
                Ok(r) => r,
                Err(e) => {
                    log::error!("announcer on {}: poll failed, stopping: {e}", self.iface);
                    return;
                }
            };
            if ready[0] {
                let mut v: u64 = 0;
                // SAFETY: reads 8 bytes into a live u64 (resets the eventfd counter).
                unsafe { libc::read(self.wake.as_raw_fd(), (&raw mut v).cast(), 8) };
                loop {
                    match commands.try_recv() {
                        Ok(Command::SetVips(vips, reply)) => {
                            let r = self.set_vips(vips).map_err(|source| AnnounceError::Io {
                                what: "changing solicited-node multicast groups".into(),
                                iface: self.iface.clone(),
                                source,
                            });
                            let _ = reply.send(r);
                        }
                        Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                        Err(mpsc::TryRecvError::Empty) => break,
                    }
                }
            }
            if ready[1] {
                self.drain(true, &mut buf);
            }
            if ready[2] {
                self.drain(false, &mut buf);
            }
        }
    }

    fn set_vips(&mut self, vips: BTreeSet<IpAddr>) -> io::Result<()> {
        let groups: BTreeSet<Mac> = vips
            .iter()
            .filter_map(|v| match v {
                IpAddr::V6(a) => Some(multicast_mac(solicited_node(*a))),
                IpAddr::V4(_) => None,
            })
            .collect();
        for g in groups.difference(&self.groups).copied().collect::<Vec<_>>() {
            self.ndp.multicast_membership(g, true)?;
            self.groups.insert(g);
        }
        for g in self.groups.difference(&groups).copied().collect::<Vec<_>>() {
            if let Err(e) = self.ndp.multicast_membership(g, false) {
                log::warn!("leaving {} on {}: {e}", format_mac(g), self.iface);
            }
            self.groups.remove(&g);
        }
        let now = Instant::now();
        let added: Vec<IpAddr> = vips.difference(&self.vips).copied().collect();
        self.bursts.retain(|b| vips.contains(&b.vip));
        // One line per VIP for a few; thousands (a node taking over at scale) in one line.
        const LISTED: usize = 8;
        if added.len() > LISTED {
            let first: Vec<String> = added[..LISTED].iter().map(|a| a.to_string()).collect();
            log::info!(
                "announcing {} VIPs on {}: {} and {} more",
                added.len(),
                self.iface,
                first.join(", "),
                added.len() - LISTED
            );
        }
        for vip in added.iter().copied() {
            if added.len() <= LISTED {
                log::info!("announcing {vip} on {}", self.iface);
            }
            if self.opts.gratuitous_count > 0 {
                self.bursts.push(Burst {
                    vip,
                    left: self.opts.gratuitous_count,
                    next: now,
                });
            }
        }
        self.vips = vips;
        Ok(())
    }

    fn send_due(&mut self, now: Instant) {
        let mut due = Vec::new();
        for b in &mut self.bursts {
            if b.next <= now {
                due.push(b.vip);
                b.left -= 1;
                b.next = now + self.opts.gratuitous_interval;
            }
        }
        self.bursts.retain(|b| b.left > 0);
        for vip in due {
            match vip {
                IpAddr::V4(a) => {
                    if self.transmit(true, &gratuitous_arp(self.mac, a)) {
                        inc(&self.counters.gratuitous_arp);
                    }
                }
                IpAddr::V6(a) => {
                    if self.transmit(false, &unsolicited_na(self.mac, a)) {
                        inc(&self.counters.unsolicited_na);
                    }
                }
            }
        }
    }

    fn transmit(&self, arp: bool, frame: &[u8]) -> bool {
        let sock = if arp { &self.arp } else { &self.ndp };
        match sock.send(frame) {
            Ok(()) => true,
            Err(e) => {
                inc(&self.counters.send_errors);
                log::warn!("announcer on {}: send failed: {e}", self.iface);
                false
            }
        }
    }

    /// Handle every queued frame of one socket (bounded, so the other socket, the timers and
    /// the commands are not starved by a flood).
    fn drain(&mut self, arp: bool, buf: &mut [u8]) {
        for _ in 0..256 {
            let sock = if arp { &self.arp } else { &self.ndp };
            let (n, pkttype) = match sock.try_recv(buf) {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    // E.g. ENETDOWN once when the link goes down; the socket stays usable.
                    inc(&self.counters.recv_errors);
                    log::warn!("announcer on {}: receive failed: {e}", self.iface);
                    return;
                }
            };
            if pkttype == PACKET_OUTGOING {
                continue;
            }
            if n > buf.len() {
                inc(&self.counters.malformed);
                continue;
            }
            if arp {
                self.on_arp(&buf[..n]);
            } else {
                self.on_ndp(&buf[..n]);
            }
        }
    }

    fn on_arp(&self, frame: &[u8]) {
        let Some(req) = parse_arp(frame) else {
            inc(&self.counters.malformed);
            return;
        };
        if self.vips.contains(&IpAddr::V4(req.spa)) && req.sha != self.mac {
            inc(&self.counters.conflicts);
            log::warn!(
                "{} on {} is also claimed by {} (ARP {}): another node announces our VIP",
                req.spa,
                self.iface,
                format_mac(req.sha),
                if req.oper == ARP_REPLY {
                    "reply"
                } else {
                    "request"
                }
            );
        }
        if req.oper != ARP_REQUEST {
            return;
        }
        inc(&self.counters.arp_requests);
        if req.spa == req.tpa {
            // Someone's gratuitous ARP: nothing to answer.
            inc(&self.counters.not_ours);
            return;
        }
        if !self.vips.contains(&IpAddr::V4(req.tpa)) {
            inc(&self.counters.not_ours);
            return;
        }
        log::debug!(
            "ARP who-has {} tell {} ({}) on {}: answering",
            req.tpa,
            req.spa,
            format_mac(req.sha),
            self.iface
        );
        if self.transmit(true, &arp_reply(self.mac, req.tpa, &req)) {
            inc(&self.counters.arp_replies);
        }
    }

    fn on_ndp(&self, frame: &[u8]) {
        let ns = match parse_ns(frame) {
            Ok(ns) => ns,
            Err(NsError::NotNs) => return,
            Err(NsError::Malformed(why)) => {
                inc(&self.counters.malformed);
                log::debug!("invalid neighbor solicitation on {}: {why}", self.iface);
                return;
            }
        };
        inc(&self.counters.ns_requests);
        if !self.vips.contains(&IpAddr::V6(ns.target)) {
            inc(&self.counters.not_ours);
            return;
        }
        log::debug!(
            "NS for {} from {} ({}) on {}: answering",
            ns.target,
            ns.src,
            format_mac(ns.eth_src),
            self.iface
        );
        if self.transmit(false, &na_reply(self.mac, &ns)) {
            inc(&self.counters.na_replies);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0x00, 0x5e, 0x00, 0x01, 0x02];
    const PEER: Mac = [0x02, 0x00, 0x5e, 0x00, 0x01, 0x01];

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn announce_arp_reply_exact_bytes() {
        let request: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // broadcast
            0x02, 0x00, 0x5e, 0x00, 0x01, 0x01, // requester
            0x08, 0x06, // ARP
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // Ethernet/IPv4, request
            0x02, 0x00, 0x5e, 0x00, 0x01, 0x01, 198, 18, 0, 1, // sender
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 198, 18, 0, 100, // target
        ];
        // Padded to the Ethernet minimum, as received from a NIC.
        let mut padded = request.to_vec();
        padded.resize(60, 0);
        let req = parse_arp(&padded).unwrap();
        assert_eq!(
            req,
            Arp {
                eth_dst: BROADCAST_MAC,
                eth_src: PEER,
                oper: ARP_REQUEST,
                sha: PEER,
                spa: Ipv4Addr::new(198, 18, 0, 1),
                tha: [0; 6],
                tpa: Ipv4Addr::new(198, 18, 0, 100),
            }
        );
        assert_eq!(build_arp(&req), request);
        let reply = arp_reply(MAC, req.tpa, &req);
        let expected: [u8; 42] = [
            0x02, 0x00, 0x5e, 0x00, 0x01, 0x01, // to the requester
            0x02, 0x00, 0x5e, 0x00, 0x01, 0x02, // from us
            0x08, 0x06, //
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, // reply
            0x02, 0x00, 0x5e, 0x00, 0x01, 0x02, 198, 18, 0, 100, // VIP is-at our MAC
            0x02, 0x00, 0x5e, 0x00, 0x01, 0x01, 198, 18, 0, 1, //
        ];
        assert_eq!(reply, expected);
    }

    #[test]
    fn announce_gratuitous_arp_exact_bytes() {
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, //
            0x02, 0x00, 0x5e, 0x00, 0x01, 0x02, //
            0x08, 0x06, //
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // request
            0x02, 0x00, 0x5e, 0x00, 0x01, 0x02, 198, 18, 0, 100, //
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 198, 18, 0, 100, // sender = target
        ];
        assert_eq!(
            gratuitous_arp(MAC, Ipv4Addr::new(198, 18, 0, 100)),
            expected
        );
    }

    #[test]
    fn announce_parse_arp_rejects_other_shapes() {
        let mut f = gratuitous_arp(MAC, Ipv4Addr::new(198, 18, 0, 100));
        assert!(parse_arp(&f[..41]).is_none());
        f[19] = 16; // plen: not IPv4
        assert!(parse_arp(&f).is_none());
        let mut f = gratuitous_arp(MAC, Ipv4Addr::new(198, 18, 0, 100));
        f[12] = 0x86;
        f[13] = 0xdd;
        assert!(parse_arp(&f).is_none());
    }

    #[test]
    fn announce_solicited_node_and_multicast_mac() {
        let sn = solicited_node(v6("fd00:18::1:2345:6789"));
        assert_eq!(sn, v6("ff02::1:ff45:6789"));
        assert_eq!(multicast_mac(sn), [0x33, 0x33, 0xff, 0x45, 0x67, 0x89]);
        assert_eq!(multicast_mac(ALL_NODES), [0x33, 0x33, 0, 0, 0, 1]);
    }

    /// NS from fd00:18::1 (SLLA 02:00:5e:00:01:01) for fd00:18::100 to its solicited-node
    /// group. Checksum 0x1c6b computed independently (Python, RFC 1071 over the pseudo-header).
    fn ns_frame() -> Vec<u8> {
        let mut f = vec![
            0x33, 0x33, 0xff, 0x00, 0x01, 0x00, // 33:33:ff:00:01:00
            0x02, 0x00, 0x5e, 0x00, 0x01, 0x01, //
            0x86, 0xdd, //
            0x60, 0x00, 0x00, 0x00, 0x00, 0x20, 58, 255, // payload 32, ICMPv6, hop limit 255
        ];
        f.extend_from_slice(&v6("fd00:18::1").octets());
        f.extend_from_slice(&v6("ff02::1:ff00:100").octets());
        f.extend_from_slice(&[135, 0, 0x1c, 0x6b, 0, 0, 0, 0]);
        f.extend_from_slice(&v6("fd00:18::100").octets());
        f.extend_from_slice(&[1, 1, 0x02, 0x00, 0x5e, 0x00, 0x01, 0x01]);
        f
    }

    #[test]
    fn announce_parse_ns() {
        let ns = parse_ns(&ns_frame()).unwrap();
        assert_eq!(
            ns,
            NeighborSolicitation {
                eth_src: PEER,
                eth_dst: [0x33, 0x33, 0xff, 0x00, 0x01, 0x00],
                src: v6("fd00:18::1"),
                dst: v6("ff02::1:ff00:100"),
                target: v6("fd00:18::100"),
                source_ll: Some(PEER),
            }
        );
        let mut bad = ns_frame();
        bad[56] ^= 1; // checksum
        assert_eq!(
            parse_ns(&bad),
            Err(NsError::Malformed("bad ICMPv6 checksum"))
        );
        let mut bad = ns_frame();
        bad[21] = 64; // hop limit
        assert_eq!(
            parse_ns(&bad),
            Err(NsError::Malformed("hop limit is not 255"))
        );
        let mut bad = ns_frame();
        bad[79] = 0; // option length 0
        bad[56] = 0;
        bad[57] = 0;
        let c = icmpv6_checksum(v6("fd00:18::1"), v6("ff02::1:ff00:100"), &bad[54..]);
        bad[56..58].copy_from_slice(&c.to_be_bytes());
        assert_eq!(parse_ns(&bad), Err(NsError::Malformed("bad option length")));
        let mut na = ns_frame();
        na[54] = ICMPV6_NA;
        assert_eq!(parse_ns(&na), Err(NsError::NotNs));
        assert_eq!(
            parse_ns(&ns_frame()[..60]),
            Err(NsError::Malformed("truncated IPv6 payload"))
        );
    }

    #[test]
    fn announce_solicited_na_exact_bytes() {
        let ns = parse_ns(&ns_frame()).unwrap();
        let mut expected = vec![
            0x02, 0x00, 0x5e, 0x00, 0x01, 0x01, // to the SLLA
            0x02, 0x00, 0x5e, 0x00, 0x01, 0x02, //
            0x86, 0xdd, //
            0x60, 0x00, 0x00, 0x00, 0x00, 0x20, 58, 255,
        ];
        expected.extend_from_slice(&v6("fd00:18::100").octets());
        expected.extend_from_slice(&v6("fd00:18::1").octets());
        // Type 136, code 0, checksum 0xbb55 (computed independently), S + O.
        expected.extend_from_slice(&[136, 0, 0xbb, 0x55, 0x60, 0, 0, 0]);
        expected.extend_from_slice(&v6("fd00:18::100").octets());
        expected.extend_from_slice(&[2, 1, 0x02, 0x00, 0x5e, 0x00, 0x01, 0x02]);
        assert_eq!(na_reply(MAC, &ns).to_vec(), expected);
        // Without SLLA the reply goes to the frame's source MAC.
        let no_slla = NeighborSolicitation {
            source_ll: None,
            eth_src: [2, 0, 0, 0, 0, 9],
            ..ns
        };
        assert_eq!(na_reply(MAC, &no_slla)[..6], [2, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn announce_unsolicited_na_exact_bytes() {
        let mut expected = vec![
            0x33, 0x33, 0x00, 0x00, 0x00, 0x01, // all-nodes
            0x02, 0x00, 0x5e, 0x00, 0x01, 0x02, //
            0x86, 0xdd, //
            0x60, 0x00, 0x00, 0x00, 0x00, 0x20, 58, 255,
        ];
        expected.extend_from_slice(&v6("fd00:18::100").octets());
        expected.extend_from_slice(&v6("ff02::1").octets());
        // Checksum 0xf96b (computed independently), Override only.
        expected.extend_from_slice(&[136, 0, 0xf9, 0x6b, 0x20, 0, 0, 0]);
        expected.extend_from_slice(&v6("fd00:18::100").octets());
        expected.extend_from_slice(&[2, 1, 0x02, 0x00, 0x5e, 0x00, 0x01, 0x02]);
        let na = unsolicited_na(MAC, v6("fd00:18::100"));
        assert_eq!(na.to_vec(), expected);
        // A DAD probe for the VIP is defended the same way (to all-nodes, not solicited).
        let dad = NeighborSolicitation {
            src: Ipv6Addr::UNSPECIFIED,
            source_ll: None,
            ..parse_ns(&ns_frame()).unwrap()
        };
        assert_eq!(na_reply(MAC, &dad), na);
    }

    #[test]
    fn announce_rejects_bad_vips() {
        for bad in [
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "127.0.0.1",
            "::",
            "ff02::1",
            "::1",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(
                matches!(check_vips(&[ip]), Err(AnnounceError::BadVip(v)) if v == ip),
                "{bad}"
            );
        }
        assert_eq!(
            check_vips(&["198.18.0.1".parse().unwrap(), "198.18.0.1".parse().unwrap()])
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn announce_ns_filter_shape() {
        // Jumps land inside the program and both exits are returns.
        let f = ns_filter();
        for (i, ins) in f.iter().enumerate() {
            if ins.code == (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16 {
                assert!(i + 1 + (ins.jt.max(ins.jf) as usize) < f.len());
            }
        }
        assert_eq!((f[4].k, f[5].k), (0xffff, 0));
    }
}
