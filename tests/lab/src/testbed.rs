//! A one-node network for running the XDP program through BPF_PROG_TEST_RUN with a real FIB:
//! a scratch namespace with an "external" veth (where packets arrive) and a "backends" veth,
//! addresses, routes and permanent neighbours, so `bpf_fib_lookup` resolves exactly the
//! backends we want and misses exactly the ones we want. Used by the fixture tests and by
//! `lb-lab bench`. Dropping it leaves the namespace and restores the thread's namespace.
//!
//! Addresses (all inside the namespace; nothing leaves the machine):
//!
//! | what | IPv4 | IPv6 | where |
//! |---|---|---|---|
//! | node, external side | 198.18.0.1/24 | fd00:18::1/64 | `ext` |
//! | client | 198.18.0.2 | fd00:18::2 | neighbour on `ext` (replies of the reverse NAT) |
//! | VIP | 198.18.0.100 | fd00:18::100 | (only in the VIP map) |
//! | backend reached back out of `ext` | 198.18.0.50 | fd00:18::50 | neighbour on `ext` |
//! | node, backend side | 198.19.0.1/24 | fd00:19::1/64 | `be` |
//! | backends 0..3 | 198.19.0.10-12 | fd00:19::10-12 | neighbours on `be` |
//! | backend with no neighbour entry | 198.19.0.99 | fd00:19::99 | connected, unresolved |
//! | backend with no route | 198.18.250.1 | fd00:250::1 | no route in the namespace |

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};

use crate::netns::{NetNs, NsGuard};

pub const EXT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const EXT_PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
pub const BE_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x01, 0x01];
pub const BE_PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x01, 0x02];
/// MAC of the client / router that sent packets in on `ext`.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0x00, 0x00, 0x00, 0x02];

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2);
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x100);
/// Not a VIP, but in the external subnet.
pub const OTHER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 77);
pub const TX_BACKEND_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 50);
pub const TX_BACKEND_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x50);
pub const TX_BACKEND_MAC: [u8; 6] = [0x02, 0xbe, 0x00, 0x00, 0x00, 0x50];
pub const NO_NEIGH_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 99);
pub const NO_NEIGH_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x99);
pub const NO_ROUTE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 1);
pub const NO_ROUTE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 1);

/// Backend `i` (0..3) behind `be`.
pub fn backend_v4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 0, 10 + i)
}
pub fn backend_v6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10 + i as u16)
}
pub fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0xbe, 0x00, 0x00, 0x00, 0x10 + i]
}
pub const BACKENDS: u8 = 3;

pub struct Testbed {
    pub ns: NetNs,
    pub ext_ifindex: u32,
    pub be_ifindex: u32,
}

/// While alive, the calling thread is in the testbed's namespace and pinned to one CPU.
pub struct Entered<'a> {
    _ns: NsGuard<'a>,
    _cpu: AffinityGuard,
}

impl Testbed {
    /// Build the network. Deleted on drop (leave it first: drop any [`Entered`]).
    pub fn new() -> Result<Testbed> {
        let ns = NetNs::create("lbtb").context("building the test network namespace")?;
        let mut tb = Testbed {
            ns,
            ext_ifindex: 0,
            be_ifindex: 0,
        };
        tb.configure().context("configuring the test namespace")?;
        tb.ext_ifindex = tb.ns.ifindex("ext")?;
        tb.be_ifindex = tb.ns.ifindex("be")?;
        Ok(tb)
    }

    /// Enter the namespace on this thread (BPF_PROG_TEST_RUN resolves the ingress interface
    /// and does FIB lookups in the caller's namespace) and pin the thread to one CPU (the
    /// connection table is per-CPU, and a test run executes on the calling CPU).
    pub fn enter(&self) -> Result<Entered<'_>> {
        let ns = self.ns.enter()?;
        let cpu = AffinityGuard::pin_to_first_allowed()?;
        Ok(Entered { _ns: ns, _cpu: cpu })
    }

    fn configure(&self) -> Result<()> {
        let ns = &self.ns;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // The peer ends are sinks. With IPv6 on they would send MLD reports (hop-by-hop
        // header), router solicitations and DAD probes for a few seconds after coming up,
        // into the reverse NAT attached to `be`, and a counter-exact proof (a bench case, a
        // fixture) would see one stray `pass_ipv6_ext`. New interfaces start with IPv6 off;
        // only `ext` and `be` get it back.
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        for (dev, peer, m, pm) in [
            ("ext", "extp", EXT_MAC, EXT_PEER_MAC),
            ("be", "bep", BE_MAC, BE_PEER_MAC),
        ] {
            crate::netns::veth_pair(ns, dev, m, ns, peer, pm)?;
            ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "0")?;
        }
        ns.addr_add("ext", "198.18.0.1/24")?;
        ns.addr_add("ext", "fd00:18::1/64")?;
        ns.addr_add("be", "198.19.0.1/24")?;
        ns.addr_add("be", "fd00:19::1/64")?;
        let neigh = |ip: IpAddr, m: [u8; 6], dev: &str| ns.neigh_add(ip, m, dev);
        for i in 0..BACKENDS {
            neigh(backend_v4(i).into(), backend_mac(i), "be")?;
            neigh(backend_v6(i).into(), backend_mac(i), "be")?;
        }
        neigh(TX_BACKEND_V4.into(), TX_BACKEND_MAC, "ext")?;
        neigh(TX_BACKEND_V6.into(), TX_BACKEND_MAC, "ext")?;
        // The reverse NAT's replies go back to the client through the FIB.
        neigh(CLIENT_V4.into(), CLIENT_MAC, "ext")?;
        neigh(CLIENT_V6.into(), CLIENT_MAC, "ext")?;
        Ok(())
    }
}

/// Pins the current thread to one CPU and restores its previous mask on drop.
pub struct AffinityGuard {
    previous: libc::cpu_set_t,
}

impl AffinityGuard {
    pub fn pin_to_first_allowed() -> Result<AffinityGuard> {
        // SAFETY: plain libc calls on a zeroed cpu_set_t for the calling thread (pid 0).
        unsafe {
            let mut previous: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut previous)
                != 0
            {
                return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
            }
            let cpu = (0..libc::CPU_SETSIZE as usize)
                .find(|c| libc::CPU_ISSET(*c, &previous))
                .context("this thread may run on no CPU?")?;
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
                return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
            }
            Ok(AffinityGuard { previous })
        }
    }
}

impl Drop for AffinityGuard {
    fn drop(&mut self) {
        // SAFETY: restoring a mask the kernel gave us.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.previous);
        }
    }
}

/// The data-plane configuration the fixture tests and the bench share.
pub mod fixture {
    use std::net::IpAddr;

    use anyhow::Result;
    use lb_common::{PROTO_TCP, PROTO_UDP, VIP_F_QUIC_LB, quic_lb};

    use super::*;
    use lb_userspace::{
        dataplane::{Dataplane, backend, vip_key},
        maglev::{WeightedBackend, build_table},
    };

    pub const VIP_PORT: u16 = 443;
    pub const PLAIN_UDP_PORT: u16 = 53;
    pub const BACKEND_PORT: u16 = 8443;
    /// QUIC-LB config 0 of the QUIC VIPs: plaintext, 2-octet server ID, 6-octet nonce.
    pub const QUIC_CR: u8 = 0;
    pub const SID_LEN: u8 = 2;
    pub const NONCE_LEN: u8 = 6;

    /// VIP indexes.
    pub const VIP_V4_QUIC: u32 = 0;
    pub const VIP_V4_TCP: u32 = 1;
    pub const VIP_V6_QUIC: u32 = 2;
    pub const VIP_V6_TCP: u32 = 3;
    pub const VIP_V4_PLAIN_UDP: u32 = 4;

    /// Backend ids: 0..3 the IPv4 backends behind `be`, 3..6 the IPv6 ones, then one each
    /// reached back out of `ext`, with no neighbour, and with no route.
    pub fn v4_backend_id(i: u8) -> u32 {
        i as u32
    }
    pub fn v6_backend_id(i: u8) -> u32 {
        3 + i as u32
    }
    pub const TX_V4_ID: u32 = 6;
    pub const TX_V6_ID: u32 = 7;
    pub const NO_NEIGH_V4_ID: u32 = 8;
    pub const NO_NEIGH_V6_ID: u32 = 9;
    pub const NO_ROUTE_V4_ID: u32 = 10;
    pub const NO_ROUTE_V6_ID: u32 = 11;

    /// Server ID of backend `i` (the same for its IPv4 and IPv6 instance).
    pub fn server_id(i: u8) -> [u8; 2] {
        [0x0a, 0x01 + i]
    }

    /// A plaintext QUIC-LB CID under config 0 for server `i`, length self-encoded.
    pub fn dcid(i: u8, nonce: [u8; 6]) -> Vec<u8> {
        let len = 1 + SID_LEN + NONCE_LEN;
        let mut c = vec![(QUIC_CR << 5) | (len - 1)];
        c.extend_from_slice(&server_id(i));
        c.extend_from_slice(&nonce);
        c
    }

    pub fn plaintext_config() -> quic_lb::Config {
        quic_lb::Config::new(QUIC_CR, SID_LEN, NONCE_LEN, None, true).expect("valid fixture config")
    }

    /// QUIC-LB config 1 of the QUIC VIPs: single-pass AES (4-octet server ID + 12-octet
    /// nonce = one block).
    pub const SINGLE_PASS_CR: u8 = 1;
    pub const SINGLE_PASS_KEY: [u8; 16] = *b"lb-fixture-key-1";
    /// QUIC-LB config 2 of the QUIC VIPs: four-pass AES with an odd plaintext (3 + 6 octets),
    /// so the Feistel halves split an octet.
    pub const FOUR_PASS_CR: u8 = 2;
    pub const FOUR_PASS_KEY: [u8; 16] = *b"lb-fixture-key-2";

    /// The fixture's QUIC-LB configuration for config rotation value `cr` (0, 1 or 2).
    pub fn quic_config(cr: u8) -> quic_lb::Config {
        let (sid, nonce, key) = match cr {
            QUIC_CR => return plaintext_config(),
            SINGLE_PASS_CR => (4, 12, SINGLE_PASS_KEY),
            FOUR_PASS_CR => (3, 6, FOUR_PASS_KEY),
            _ => panic!("the fixture has QUIC-LB configs 0, 1 and 2, not {cr}"),
        };
        quic_lb::Config::new(cr, sid, nonce, Some(key), true).expect("valid fixture config")
    }

    /// Server ID of backend `i` under config `cr`: its last octet is 1 + i, the first names
    /// the config, zeros between.
    pub fn server_id_under(cr: u8, i: u8) -> Vec<u8> {
        let len = quic_config(cr).server_id_len() as usize;
        let mut sid = vec![0u8; len];
        sid[0] = 0x0a + cr;
        sid[len - 1] = 0x01 + i;
        if len == 1 {
            sid[0] = 0x01 + i;
        }
        sid
    }

    /// A CID for backend `i` under config `cr`, nonce octets all `nonce`, length
    /// self-encoded, encoded by the shared codec.
    pub fn dcid_under(cr: u8, i: u8, nonce: u8) -> Vec<u8> {
        let cfg = quic_config(cr);
        let nonce = vec![nonce; cfg.nonce_len() as usize];
        let mut out = [0u8; quic_lb::MAX_CID_LEN];
        let n = quic_lb::encode(&cfg, &server_id_under(cr, i), &nonce, 0, &mut out)
            .expect("fixture server ID and nonce fit the config");
        out[..n].to_vec()
    }

    fn weighted(ids: &[(u32, IpAddr)]) -> Vec<WeightedBackend> {
        ids.iter()
            .map(|(id, a)| WeightedBackend {
                id: *id,
                addr: *a,
                port: BACKEND_PORT,
                weight: 1,
            })
            .collect()
    }

    /// A VIP as the fixture programs it.
    pub struct Vip {
        pub addr: IpAddr,
        pub port: u16,
        pub proto: u8,
        pub index: u32,
        pub flags: u32,
    }

    /// Publish a Maglev ring of `ring_size` slots over `backends` for a VIP.
    pub fn publish(
        dp: &mut Dataplane,
        vip: &Vip,
        backends: &[(u32, IpAddr)],
        ring_size: u32,
    ) -> Result<()> {
        let table = build_table(&weighted(backends), ring_size)?;
        let key = vip_key(vip.addr, vip.port, vip.proto);
        dp.publish_ring(&key, vip.index, vip.flags, &table)?;
        Ok(())
    }

    /// Program every backend, the five standard VIPs and the QUIC server IDs.
    pub fn program_standard(dp: &mut Dataplane, ring_size: u32) -> Result<()> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for i in 0..BACKENDS {
            dp.set_backend(
                v4_backend_id(i),
                &backend(backend_v4(i).into(), BACKEND_PORT),
            )?;
            dp.set_backend(
                v6_backend_id(i),
                &backend(backend_v6(i).into(), BACKEND_PORT),
            )?;
            v4.push((v4_backend_id(i), IpAddr::from(backend_v4(i))));
            v6.push((v6_backend_id(i), IpAddr::from(backend_v6(i))));
        }
        for (id, ip) in [
            (TX_V4_ID, IpAddr::from(TX_BACKEND_V4)),
            (TX_V6_ID, TX_BACKEND_V6.into()),
            (NO_NEIGH_V4_ID, NO_NEIGH_V4.into()),
            (NO_NEIGH_V6_ID, NO_NEIGH_V6.into()),
            (NO_ROUTE_V4_ID, NO_ROUTE_V4.into()),
            (NO_ROUTE_V6_ID, NO_ROUTE_V6.into()),
        ] {
            dp.set_backend(id, &backend(ip, BACKEND_PORT))?;
        }
        let (vip4, vip6) = (IpAddr::from(VIP_V4), IpAddr::from(VIP_V6));
        let standard = [
            (vip4, VIP_PORT, PROTO_UDP, VIP_V4_QUIC, VIP_F_QUIC_LB, &v4),
            (vip4, VIP_PORT, PROTO_TCP, VIP_V4_TCP, 0, &v4),
            (vip6, VIP_PORT, PROTO_UDP, VIP_V6_QUIC, VIP_F_QUIC_LB, &v6),
            (vip6, VIP_PORT, PROTO_TCP, VIP_V6_TCP, 0, &v6),
            (vip4, PLAIN_UDP_PORT, PROTO_UDP, VIP_V4_PLAIN_UDP, 0, &v4),
        ];
        for (addr, port, proto, index, flags, backends) in standard {
            let vip = Vip {
                addr,
                port,
                proto,
                index,
                flags,
            };
            publish(dp, &vip, backends, ring_size)?;
        }
        for (vip, id_of) in [
            (VIP_V4_QUIC, v4_backend_id as fn(u8) -> u32),
            (VIP_V6_QUIC, v6_backend_id),
        ] {
            for cr in [QUIC_CR, SINGLE_PASS_CR, FOUR_PASS_CR] {
                dp.set_quic_config(vip, &quic_config(cr))?;
                for i in 0..BACKENDS {
                    dp.set_server_id(vip, cr, &server_id_under(cr, i), id_of(i))?;
                }
            }
        }
        Ok(())
    }
}
