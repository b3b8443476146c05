//! Learned-CID mode (`learned_cid_len` on a VIP): the reverse NAT (`lb_tc_rnat`) learns the
//! connection ID a backend chose from the source CID of its long-header replies, and the
//! XDP program routes packets whose DCID is that CID to that backend, whatever the client's
//! address and port (NAT rebinding). BPF_PROG_TEST_RUN fixtures on both programs, sharing
//! the maps of one loaded object.
//!
//! ```sh
//! cargo test -p lb-tests --test learned_cid -- --test-threads=1
//! ```

mod support;

use std::net::IpAddr;

use anyhow::{Context, Result};
use lb_common::{
    PROTO_UDP, REPLY_NO_BACKEND, Reason::*, RnatReason, VIP_F_LEARNED_CID, learned_cid_flags,
};
use lb_lab::{
    packet::{Packet, quic},
    testbed::{fixture::*, *},
};
use support::fixture::*;

/// The learned-CID VIP: `VIP_V4`:`LEARNED_PORT`/UDP, index `LEARNED_VIP`, the three IPv4
/// backends (ids 0..3), server CIDs of 8 octets (aioquic's).
const LEARNED_PORT: u16 = 4433;
const LEARNED_VIP: u32 = 5;
const CID_LEN: u8 = 8;
/// The same, in IPv6.
const LEARNED_VIP6: u32 = 6;

const CLIENT_CID: [u8; 8] = [0xc1, 0x1e, 0x47, 0x00, 0x00, 0x00, 0x00, 0x01];
const SERVER_CID: [u8; 8] = [0x5e, 0x12, 0x7e, 0x40, 0xaa, 0xbb, 0xcc, 0xdd];

fn program_learned(lb: &mut Lb) -> Result<()> {
    let v4: Vec<(u32, IpAddr)> = (0..BACKENDS)
        .map(|i| (v4_backend_id(i), IpAddr::from(backend_v4(i))))
        .collect();
    let v6: Vec<(u32, IpAddr)> = (0..BACKENDS)
        .map(|i| (v6_backend_id(i), IpAddr::from(backend_v6(i))))
        .collect();
    for (addr, index, backends) in [
        (IpAddr::from(VIP_V4), LEARNED_VIP, &v4),
        (IpAddr::from(VIP_V6), LEARNED_VIP6, &v6),
    ] {
        let vip = Vip {
            addr,
            port: LEARNED_PORT,
            proto: PROTO_UDP,
            index,
            flags: learned_cid_flags(CID_LEN),
        };
        publish(&mut lb.dp, &vip, backends, RING)?;
    }
    lb.dp.load_rnat().context("loading lb_tc_rnat (verifier)")?;
    Ok(())
}

/// The id of fixture backend `addr` (v4 or v6).
fn id_of(addr: IpAddr) -> u32 {
    (0..BACKENDS)
        .find_map(|i| {
            if addr == IpAddr::from(backend_v4(i)) {
                Some(v4_backend_id(i))
            } else if addr == IpAddr::from(backend_v6(i)) {
                Some(v6_backend_id(i))
            } else {
                None
            }
        })
        .expect("a fixture backend")
}

/// The reverse NAT's entry for a flow the XDP program steered from `client`:`cport` to
/// `backend`:8443 through the VIP of the client's family on `vip_port`, naming the
/// backend's id when `with_id`.
fn steered(lb: &mut Lb, backend: IpAddr, client: IpAddr, cport: u16, vip_port: u16, with_id: bool) {
    let vip: IpAddr = if client.is_ipv4() {
        VIP_V4.into()
    } else {
        VIP_V6.into()
    };
    lb.dp
        .set_reply_flow(
            std::net::SocketAddr::new(backend, BACKEND_PORT),
            std::net::SocketAddr::new(client, cport),
            PROTO_UDP,
            std::net::SocketAddr::new(vip, vip_port),
            with_id.then(|| id_of(backend)),
        )
        .expect("writing a reply entry");
}

/// A reply of a flow steered through the learned VIP, as it enters the node from `be`:
/// from backend:8443 to the client (its reply entry written first).
fn reply(lb: &mut Lb, backend: IpAddr, client: IpAddr, cport: u16, payload: &[u8]) -> Vec<u8> {
    steered(lb, backend, client, cport, LEARNED_PORT, true);
    reply_bytes(backend, client, cport, payload)
}

/// The bytes of a reply from backend:8443 to the client, as it enters the node from `be`.
fn reply_bytes(backend: IpAddr, client: IpAddr, cport: u16, payload: &[u8]) -> Vec<u8> {
    let p = Packet::eth(BE_PEER_MAC, BE_MAC);
    let p = match (backend, client) {
        (IpAddr::V4(b), IpAddr::V4(c)) => p.ipv4(b, c),
        (IpAddr::V6(b), IpAddr::V6(c)) => p.ipv6(b, c),
        _ => panic!("test bug: mixed families"),
    };
    p.udp(BACKEND_PORT, cport).payload(payload).build()
}

/// Run a reply through the reverse NAT and require it to be rewritten.
fn run_reply(lb: &mut Lb, what: &str, pkt: &[u8]) {
    let before = lb.dp.rnat_stats().expect("reading LB_RNAT_STATS");
    let r = lb
        .dp
        .test_run_rnat(pkt)
        .unwrap_or_else(|e| panic!("{what}: TC test run failed: {e}"));
    assert_eq!(r.verdict, 0, "{what}: TC verdict");
    let d = lb
        .dp
        .rnat_stats()
        .expect("reading LB_RNAT_STATS")
        .delta(&before);
    assert_eq!(
        d.packets(RnatReason::Rewritten),
        1,
        "{what}: expected one rewritten reply; moved: {:?}",
        d.nonzero()
    );
}

fn redirected_to(p: &Pkt, addr: IpAddr, mac: [u8; 6]) -> Vec<u8> {
    p.clone()
        .dnat(addr, BACKEND_PORT)
        .macs(BE_MAC, mac)
        .untagged()
        .bytes()
}

/// `p` must be routed by its learned CID to backend `i` (of the family of `p`).
fn expect_learned(lb: &Lb, what: &str, p: &Pkt, vip: u32, i: u8) {
    let (addr, id) = match p.dst {
        IpAddr::V4(_) => (IpAddr::from(backend_v4(i)), v4_backend_id(i)),
        IpAddr::V6(_) => (IpAddr::from(backend_v6(i)), v6_backend_id(i)),
    };
    lb.check(
        what,
        &p.bytes(),
        Want {
            verdict: XDP_REDIRECT,
            out: &redirected_to(p, addr, backend_mac(i)),
            reasons: &[RoutedLearnedCid, Redirect],
            vip: Some(vip),
            backend: Some(id),
        },
    );
    // Routing by learned CID keeps no per-flow state.
    assert!(
        lb.dp.conn_entries(&p.flow_key()).is_empty(),
        "{what}: routed by CID but a connection-table entry appeared"
    );
}

fn v4_addr(i: u8) -> IpAddr {
    backend_v4(i).into()
}

fn v6_addr(i: u8) -> IpAddr {
    backend_v6(i).into()
}

#[test]
fn server_long_header_reply_is_learned_then_rebound_client_follows_it() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        program_learned(lb)?;
        for (client, vip_addr, vip, backend) in [
            (
                IpAddr::from(CLIENT_V4),
                IpAddr::from(VIP_V4),
                LEARNED_VIP,
                v4_addr as fn(u8) -> IpAddr,
            ),
            (
                IpAddr::from(CLIENT_V6),
                IpAddr::from(VIP_V6),
                LEARNED_VIP6,
                v6_addr,
            ),
        ] {
            for i in 0..BACKENDS {
                // Each backend picks its own CID.
                let mut scid = SERVER_CID;
                scid[7] = i;
                assert_eq!(lb.dp.learned_cid(vip, &scid), None);
                // The server's Initial answer: DCID = the client's CID, SCID = its own.
                let pkt = reply(
                    lb,
                    backend(i),
                    client,
                    40000,
                    &quic::initial(&CLIENT_CID, &scid, &[], 1100),
                );
                run_reply(lb, &format!("{vip_addr} backend {i}: Initial reply"), &pkt);
                let id = match client {
                    IpAddr::V4(_) => v4_backend_id(i),
                    IpAddr::V6(_) => v6_backend_id(i),
                };
                assert_eq!(
                    lb.dp.learned_cid(vip, &scid),
                    Some(id),
                    "the SCID of backend {i}'s reply was not learned"
                );
                // The client, from many source ports (NAT rebinding), short headers and a
                // Handshake packet: all reach backend i by the learned CID.
                for port in [40000u16, 40001, 50000, 61234, 1024, 33333] {
                    let p = Pkt::udp(client, vip_addr, port, LEARNED_PORT)
                        .payload(quic::short(&scid, 48));
                    expect_learned(
                        lb,
                        &format!("{vip_addr} short from port {port}"),
                        &p,
                        vip,
                        i,
                    );
                }
                let p = Pkt::udp(client, vip_addr, 45678, LEARNED_PORT).payload(quic::handshake(
                    &scid,
                    &CLIENT_CID,
                    64,
                ));
                expect_learned(lb, &format!("{vip_addr} handshake"), &p, vip, i);
            }
        }
        let all = lb.dp.learned_cids();
        assert_eq!(all.len(), 2 * BACKENDS as usize, "{all:?}");
        Ok(())
    })
}

#[test]
fn unknown_cid_falls_back_to_table_and_maglev() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        program_learned(lb)?;
        // The client's first Initial (client-chosen DCID) and a short header with a CID no
        // backend issued: the connection table, then Maglev, as for plain UDP.
        for (port, what, payload) in [
            (
                40000,
                "initial",
                quic::initial(&CLIENT_CID, &[1, 2, 3, 4, 5, 6, 7, 8], &[], 1200),
            ),
            (40001, "short unknown", quic::short(&[9; 8], 48)),
            (40002, "not quic", vec![0x40; 4]),
        ] {
            let p = Pkt::udp(CLIENT_V4, VIP_V4, port, LEARNED_PORT).payload(&payload);
            let id = maglev_pick(lb, &p);
            let (addr, mac) = backend_of(id);
            lb.check(
                &format!("{what}: first"),
                &p.bytes(),
                Want {
                    verdict: XDP_REDIRECT,
                    out: &redirected_to(&p, addr, mac),
                    reasons: &[Maglev, Redirect],
                    vip: Some(LEARNED_VIP),
                    backend: Some(id),
                },
            );
            lb.check(
                &format!("{what}: second"),
                &p.bytes(),
                Want {
                    verdict: XDP_REDIRECT,
                    out: &redirected_to(&p, addr, mac),
                    reasons: &[LruHit, Redirect],
                    vip: Some(LEARNED_VIP),
                    backend: Some(id),
                },
            );
        }
        Ok(())
    })
}

#[test]
fn only_fitting_replies_are_learned() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        program_learned(lb)?;
        let (b, c) = (IpAddr::from(backend_v4(0)), IpAddr::from(CLIENT_V4));
        let cases: [(&str, Vec<u8>); 4] = [
            // Short header: carries no SCID.
            ("short", quic::short(&CLIENT_CID, 48)),
            // SCID of another length than the VIP's.
            (
                "scid of 5 octets",
                quic::handshake(&CLIENT_CID, &[1, 2, 3, 4, 5], 64),
            ),
            // Version Negotiation (version 0).
            (
                "version negotiation",
                quic::Long::new(quic::LongType::Initial, &CLIENT_CID, &SERVER_CID)
                    .version(0)
                    .payload_len(64)
                    .build(),
            ),
            // DCID length 21 (invalid).
            ("dcid of 21 octets", {
                let mut v = vec![0xc0, 0, 0, 0, 1, 21];
                v.extend([7u8; 21]);
                v.push(8);
                v.extend(SERVER_CID);
                v.extend([0u8; 40]);
                v
            }),
        ];
        for (what, payload) in &cases {
            let pkt = reply(lb, b, c, 40000, payload);
            run_reply(lb, what, &pkt);
            assert!(
                lb.dp.learned_cids().is_empty(),
                "{what}: learned {:?}",
                lb.dp.learned_cids()
            );
        }
        // A flow whose reply entry names no backend id (one another node steered here):
        // nothing learned.
        steered(lb, b, c, 40000, LEARNED_PORT, false);
        let nat = lb
            .dp
            .reply_flow(
                std::net::SocketAddr::new(b, BACKEND_PORT),
                std::net::SocketAddr::new(c, 40000),
                PROTO_UDP,
            )
            .expect("the entry just written");
        assert_eq!(nat.backend, REPLY_NO_BACKEND);
        run_reply(
            lb,
            "no backend id",
            &reply_bytes(b, c, 40000, &quic::handshake(&CLIENT_CID, &SERVER_CID, 64)),
        );
        assert!(lb.dp.learned_cids().is_empty());
        Ok(())
    })
}

#[test]
fn vip_without_learned_mode_learns_nothing_and_removal_forgets() -> Result<()> {
    with_lb(RING, FibCache::Off, |lb| {
        program_learned(lb)?;
        // A flow of the plain UDP VIP (port 53), its reply entry naming the backend id.
        let (b, c) = (IpAddr::from(backend_v4(1)), IpAddr::from(CLIENT_V4));
        steered(lb, b, c, 40001, PLAIN_UDP_PORT, true);
        let pkt = reply_bytes(b, c, 40001, &quic::handshake(&CLIENT_CID, &SERVER_CID, 64));
        run_reply(lb, "plain VIP", &pkt);
        assert!(lb.dp.learned_cids().is_empty());
        // Learn one on the learned VIP, then remove the VIP: the entry goes with it.
        let pkt = reply(
            lb,
            b,
            c,
            40000,
            &quic::handshake(&CLIENT_CID, &SERVER_CID, 64),
        );
        run_reply(lb, "learned VIP", &pkt);
        assert_eq!(
            lb.dp.learned_cid(LEARNED_VIP, &SERVER_CID),
            Some(v4_backend_id(1))
        );
        let key = lb_userspace::dataplane::vip_key(VIP_V4.into(), LEARNED_PORT, PROTO_UDP);
        let meta = lb.dp.vip(&key).expect("VIP");
        assert_ne!(meta.flags & VIP_F_LEARNED_CID, 0);
        assert_eq!(meta.learned_cid_len(), CID_LEN as usize);
        lb.dp.remove_vip(&key)?;
        assert_eq!(lb.dp.learned_cid(LEARNED_VIP, &SERVER_CID), None);
        Ok(())
    })
}

// ---- end to end: aioquic servers with random CIDs, a client whose port changes ----------------

mod e2e {
    use std::{
        fs::File,
        path::PathBuf,
        process::{Child, Stdio},
        time::{Duration, Instant},
    };

    use anyhow::{Context, Result, bail};
    use lb_lab::topology::{
        self, BACKENDS, Options, Topology, VIP_PORT, backend_addr, workspace_path,
    };

    /// The learned-CID VIP of this test (added by a reload to the topology's config).
    const VIP_LEARNED: &str = "198.18.0.102";
    /// The aioquic servers' port in every backend pod.
    const AIOQUIC_PORT: u16 = 4433;
    /// Concurrent connections per client run.
    const CONNECTIONS: usize = 12;

    /// The aioquic servers, killed (by pid: they are our children) on drop.
    struct Servers(Vec<Child>);

    impl Drop for Servers {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    fn config(learned: bool) -> String {
        let mut s = Topology::config_text(&[1, 2, 3]);
        s.push_str(&format!(
            "[[vips]]\nname = \"legacy-quic\"\naddress = \"{VIP_LEARNED}\"\nports = [{VIP_PORT}]\n\
             protocols = [\"udp\"]\nmaglev_table_size = 1021\n{}\n",
            if learned { "learned_cid_len = 8" } else { "" }
        ));
        for n in 1..=BACKENDS {
            s.push_str(&format!(
                "[[vips.backends]]\naddress = \"{}\"\nport = {AIOQUIC_PORT}\n\n",
                backend_addr(n)
            ));
        }
        s
    }

    fn reload(topo: &Topology, learned: bool) -> Result<()> {
        topo.write_config_text(&config(learned))?;
        let out = topo.reload()?;
        if !out.status.success() {
            bail!(
                "lb reload failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn start_servers(topo: &Topology, py: &PathBuf) -> Result<Servers> {
        let script = workspace_path("tests/python/aioquic_server.py");
        let mut servers = Servers(Vec::new());
        let mut logs = Vec::new();
        for n in 1..=BACKENDS {
            let log = topo.dir.join(format!("aioquic-b{n}.log"));
            let f = File::create(&log)?;
            let child = topo.backends[n as usize - 1]
                .command(py)?
                .arg(&script)
                .args(["--name", &topology::backend_name(n)])
                .arg(backend_addr(n).to_string())
                .arg(AIOQUIC_PORT.to_string())
                .stdin(Stdio::null())
                .stdout(f.try_clone()?)
                .stderr(f)
                .spawn()
                .context("starting tests/python/aioquic_server.py")?;
            servers.0.push(child);
            logs.push(log);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for log in &logs {
            loop {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                if text.contains("ready") {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{} did not get ready: {text}", log.display());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(servers)
    }

    /// One connection: Ok((servers, client ports seen by the servers)) or Err(the line).
    type Outcome = std::result::Result<(Vec<String>, Vec<String>), String>;

    /// One outcome per connection.
    fn run_client(topo: &Topology, py: &PathBuf) -> Result<Vec<Outcome>> {
        let out = topo
            .client
            .command(py)?
            .arg(workspace_path("tests/python/aioquic_rebind_client.py"))
            .args(["--connections", &CONNECTIONS.to_string(), "--after", "2"])
            .args([VIP_LEARNED, &VIP_PORT.to_string()])
            .stdin(Stdio::null())
            .output()
            .context("running tests/python/aioquic_rebind_client.py")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "client failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut res = Vec::new();
        for line in text.lines().filter(|l| l.starts_with("conn ")) {
            let f: Vec<&str> = line.split(' ').collect();
            if f.get(2) == Some(&"ok") && f.len() == 5 {
                res.push(Ok((
                    f[3].split(',').map(str::to_owned).collect(),
                    f[4].split(',').map(str::to_owned).collect(),
                )));
            } else {
                res.push(Err(line.to_owned()));
            }
        }
        if res.len() != CONNECTIONS {
            bail!("expected {CONNECTIONS} result lines: {text}");
        }
        Ok(res)
    }

    fn learned_counter(topo: &Topology) -> u64 {
        let m = topo.metrics().unwrap_or_default();
        m.lines()
            .filter(|l| l.starts_with("lb_") && l.contains("routed_learned_cid"))
            .filter(|l| l.contains("packets"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .max()
            .unwrap_or(0)
    }

    /// aioquic's HTTP/3 server (random 8-octet CIDs, no QUIC-LB) on three backends behind a
    /// VIP with `learned_cid_len = 8`; clients move to a new source port after the first
    /// request (NAT rebinding, same CIDs). With learned-CID mode every connection survives on
    /// its backend; with the mode off (same VIP, reloaded) the rebound packets are hashed
    /// afresh and most connections break.
    #[test]
    fn aioquic_connections_survive_nat_rebinding_in_learned_cid_mode() -> Result<()> {
        let py = crate::support::python_with("aioquic");
        lb_lab::netns::require_root()?;
        let topo = Topology::start(&Options {
            lb: crate::support::lb().into(),
            lab: crate::support::lab().into(),
            prefix: "lcid".into(),
            rust_log: None,
            remove_stale: true,
        })?;
        let _servers = start_servers(&topo, &py)?;
        reload(&topo, true)?;

        let res = run_client(&topo, &py)?;
        for (i, r) in res.iter().enumerate() {
            let (servers, ports) = r.as_ref().map_err(|e| {
                anyhow::anyhow!(
                    "connection {i} failed in learned mode: {e}\n{}",
                    topo.log("lb-run")
                )
            })?;
            assert_eq!(servers.len(), 3, "{servers:?}");
            assert!(
                servers.iter().all(|s| s == &servers[0]),
                "connection {i} changed backend: {servers:?}"
            );
            assert_ne!(
                ports[0], ports[1],
                "connection {i}: the client port did not change: {ports:?}"
            );
            assert_eq!(ports[1], ports[2], "{ports:?}");
        }
        let learned = learned_counter(&topo);
        assert!(
            learned > 0,
            "no routed_learned_cid packets in the metrics:\n{}",
            topology::nonzero_samples(&topo.metrics()?).join("\n")
        );
        eprintln!(
            "learned mode: {CONNECTIONS}/{CONNECTIONS} connections survived; routed_learned_cid = {learned}"
        );

        // Control: the same VIP without learned-CID mode.
        reload(&topo, false)?;
        let res = run_client(&topo, &py)?;
        let failed = res.iter().filter(|r| r.is_err()).count();
        eprintln!("without learned mode: {failed}/{CONNECTIONS} connections broke");
        assert!(
            failed > 0,
            "every connection survived rebinding without learned-CID mode: the test proves nothing: {res:?}"
        );
        Ok(())
    }
}
