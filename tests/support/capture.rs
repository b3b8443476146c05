//! Incoming IPv4 packets on one interface, counted by source, for the end-to-end tests that
//! must show what reached a node (and what did not: replies that leave unrewritten).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use lb_lab::netns::NetNs;

/// Packet counts by (source address, IP protocol, source port).
pub type Captured = BTreeMap<(Ipv4Addr, u8, u16), u64>;

/// Incoming IPv4 packets on one interface, by (source address, protocol, source port),
/// captured with an AF_PACKET socket on a background thread until dropped or finished.
pub struct Capture {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Captured>>,
}

impl Capture {
    pub fn start(ns: &NetNs, dev: &str) -> Capture {
        let ifindex = ns.ifindex(dev).unwrap();
        let fd = ns
            .run_in(|| {
                // SAFETY: plain socket(2); the fd is owned right away.
                let fd = unsafe {
                    libc::socket(
                        libc::AF_PACKET,
                        libc::SOCK_DGRAM,
                        i32::from((libc::ETH_P_IP as u16).to_be()),
                    )
                };
                assert!(
                    fd >= 0,
                    "AF_PACKET socket: {}",
                    std::io::Error::last_os_error()
                );
                // SAFETY: fd is a fresh socket we own.
                unsafe { OwnedFd::from_raw_fd(fd) }
            })
            .unwrap();
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: valid fd and a sockaddr_ll of the right size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "binding the capture: {}",
            std::io::Error::last_os_error()
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        let buf: libc::c_int = 8 << 20;
        // SAFETY: setsockopt with correctly sized option values.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&buf as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = BTreeMap::new();
            let mut pkt = [0u8; 2048];
            loop {
                // SAFETY: as above.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: buffers valid for their stated lengths.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        pkt.as_mut_ptr().cast(),
                        pkt.len(),
                        0,
                        (&mut from as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    // Timeout: stop once asked to and the queue is empty.
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    continue;
                }
                let p = &pkt[..n as usize];
                if from.sll_pkttype == libc::PACKET_OUTGOING || p.len() < 20 {
                    continue;
                }
                let ihl = usize::from(p[0] & 0x0f) * 4;
                let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
                let proto = p[9];
                let sport = if p.len() >= ihl + 2 {
                    u16::from_be_bytes([p[ihl], p[ihl + 1]])
                } else {
                    0
                };
                *seen.entry((src, proto, sport)).or_insert(0u64) += 1;
            }
            seen
        });
        Capture {
            stop,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> Captured {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
