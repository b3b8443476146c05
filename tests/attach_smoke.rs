//! Smoke tests of the real `lb` binary: `lb attach` in a network namespace, checked from the
//! outside (iproute2, the kernel's BPF object tables, real UDP over a veth pair), then
//! SIGTERM and a clean detach; plus its argument errors and `--help`.
//!
//! Needs root (namespaces, veths, BPF). Run single-threaded:
//! `cargo test -p lb-tests --test attach_smoke -- --test-threads=1`.

mod support;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::maps::{Map, MapData, MapInfo, PerCpuArray};
use aya::programs::loaded_programs;
use lb_common::{Counter, CounterBlock, Reason};
use lb_lab::netns::{Mac, NetNs, remove_stale, veth_pair};
use serde_json::Value;

const PREFIX: &str = "lbsmoke";
const MAC_LB: Mac = [0x02, 0x00, 0x5e, 0x5a, 0x00, 0x01];
const MAC_PEER: Mac = [0x02, 0x00, 0x5e, 0x5a, 0x00, 0x02];
const ADDR_LB: &str = "198.18.1.1";
const ADDR_PEER: &str = "198.18.1.2";
/// How long `lb attach` may take to load (verifier) and attach, and to detach and exit.
const START_DEADLINE: Duration = Duration::from_secs(20);
const EXIT_DEADLINE: Duration = Duration::from_secs(10);
/// `XDP_ATTACHED_DRV` in `IFLA_XDP_ATTACHED` (iproute2's JSON `xdp.mode`).
const XDP_ATTACHED_DRV: u64 = 1;

/// A running `lb` child with its stdout as a line stream and stderr collected. Drop SIGKILLs
/// and reaps it if it is still running, so a failed assertion never leaves `lb` attached.
struct LbChild {
    child: Child,
    lines: Receiver<String>,
    /// Every stdout line seen so far.
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl LbChild {
    fn spawn(args: &[&str]) -> LbChild {
        let mut child = Command::new(support::lb())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", support::lb()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }),
            support::lab_process::collect_stderr(err, Arc::clone(&stderr)),
        ];
        LbChild {
            child,
            lines,
            stdout: Vec::new(),
            stderr,
            readers,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn describe(&self) -> String {
        format!(
            "lb stdout:\n{}\nlb stderr:\n{}",
            self.stdout.join("\n"),
            self.stderr()
        )
    }

    /// The first stdout line starting with `prefix`, waiting at most `within`. Panics (with
    /// everything lb printed) on timeout or if lb exits first.
    fn wait_line(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no line starting {prefix:?} from lb within {within:?}\n{}",
                    self.describe()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait(EXIT_DEADLINE);
                    panic!(
                        "lb closed stdout ({status}) before printing {prefix:?}\n{}",
                        self.describe()
                    );
                }
            }
        }
    }

    /// Wait (polling) for the child to exit, then drain its output. Panics on timeout.
    fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "lb still running {within:?} after it was asked to stop\n{}",
                    self.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The pipes close with the process; the readers finish promptly.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.stdout.extend(self.lines.try_iter());
        status
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own, not yet reaped, child.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for LbChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run `lb ARGS...` to completion (deadline `within`): (status, stdout, stderr).
fn run_lb(args: &[&str], within: Duration) -> (ExitStatus, String, String) {
    let mut lb = LbChild::spawn(args);
    let status = lb.wait(within);
    (status, lb.stdout.join("\n"), lb.stderr())
}

fn setup() -> NetNs {
    // Namespaces of an earlier run that was SIGKILLed (no destructors ran).
    remove_stale(PREFIX).unwrap();
    NetNs::create(PREFIX).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `ip -d -j link show dev DEV` in `ns`, as the single link object.
fn link_json(ns: &NetNs, dev: &str) -> Value {
    let out = ns
        .ip(&["-d", "-j", "link", "show", "dev", dev])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_else(|| panic!("no link object in {out}"))
}

/// The `LB_STATS` counter for `reason`, summed over CPUs, read straight from the kernel
/// through the program's map ids (the map belongs to the `lb` process, not to us).
fn pass_counter(prog_id: u32, reason: Reason) -> Counter {
    let prog = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
        .unwrap_or_else(|| panic!("no loaded BPF program with id {prog_id}"));
    let map_ids = prog
        .map_ids()
        .unwrap()
        .expect("kernel reports no map ids for programs");
    let stats_id = map_ids
        .iter()
        .copied()
        .find(|id| {
            MapInfo::from_id(*id)
                .ok()
                .is_some_and(|m| m.name_as_str() == Some(lb_common::map_names::STATS))
        })
        .unwrap_or_else(|| panic!("program {prog_id} uses no LB_STATS map (maps {map_ids:?})"));
    let map = Map::from_map_data(MapData::from_id(stats_id).unwrap()).unwrap();
    let stats: PerCpuArray<_, CounterBlock> = PerCpuArray::try_from(map).unwrap();
    stats
        .get(&0, 0)
        .unwrap()
        .iter()
        .fold(Counter::default(), |a, b| Counter {
            packets: a.packets + b.by_reason[reason as usize].packets,
            bytes: a.bytes + b.by_reason[reason as usize].bytes,
        })
}

/// Sum of the veth driver's `rx_queue_N_xdp_packets` (`ethtool -S`): packets that went
/// through the XDP program on `dev`, as the driver counts them.
fn veth_xdp_packets(ns: &NetNs, dev: &str) -> u64 {
    let out = ns
        .exec("ethtool", &["-S", dev])
        .unwrap_or_else(|e| panic!("{e:#}"));
    out.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter(|(k, _)| k.starts_with("rx_queue_") && k.ends_with("_xdp_packets"))
        .map(|(_, v)| v.trim().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn attach_runs_passes_traffic_and_detaches_on_sigterm() {
    let started = Instant::now();
    // Declared before the child guard, so they drop after it: lb is dead before the
    // namespaces go.
    let node = setup();
    let peer = NetNs::create(PREFIX).unwrap_or_else(|e| panic!("{e:#}"));
    let v = veth_pair(&node, "lbx0", MAC_LB, &peer, "lbx1", MAC_PEER).unwrap();
    node.addr_add("lbx0", &format!("{ADDR_LB}/24")).unwrap();
    peer.addr_add("lbx1", &format!("{ADDR_PEER}/24")).unwrap();

    // Nothing attached yet.
    let link = link_json(&node, "lbx0");
    assert!(link.get("xdp").is_none(), "XDP already on lbx0: {link}");

    let mut lb = LbChild::spawn(&["attach", "--iface", "lbx0", "--netns", node.name()]);
    let line = lb.wait_line("attached lb_xdp to lbx0", START_DEADLINE);
    assert_eq!(
        line,
        format!(
            "attached lb_xdp to lbx0 (ifindex {}, native mode)",
            v.ifindex
        ),
        "{}",
        lb.describe()
    );
    let attach_time = started.elapsed();

    // 1. iproute2 sees an XDP program in driver mode, named lb_xdp.
    let link = link_json(&node, "lbx0");
    let xdp = link
        .get("xdp")
        .unwrap_or_else(|| panic!("no xdp object on lbx0 while lb runs: {link}"));
    assert_eq!(
        xdp["mode"].as_u64(),
        Some(XDP_ATTACHED_DRV),
        "not native (driver) mode: {xdp}"
    );
    let prog_id = xdp["prog"]["id"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .unwrap_or_else(|| panic!("no prog id in {xdp}"));
    assert_ne!(prog_id, 0);
    assert_eq!(xdp["prog"]["name"].as_str(), Some("lb_xdp"), "{xdp}");
    let text = node.ip(&["-d", "link", "show", "dev", "lbx0"]).unwrap();
    assert!(
        text.contains(&format!("prog/xdp id {prog_id} name lb_xdp")),
        "{text}"
    );
    // The peer is untouched.
    let peer_link = link_json(&peer, "lbx1");
    assert!(peer_link.get("xdp").is_none(), "XDP on lbx1: {peer_link}");

    // 2. The kernel agrees: that id is an XDP program named lb_xdp.
    let info = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
        .unwrap_or_else(|| panic!("prog id {prog_id} not among loaded programs"));
    assert_eq!(info.name_as_str(), Some("lb_xdp"));
    assert_eq!(
        info.program_type(),
        aya::programs::ProgramType::Xdp.into(),
        "prog {prog_id} is not XDP"
    );

    // 3. Real traffic, peer namespace -> lbx1 -> lbx0 (through lb_xdp) -> node namespace.
    // No VIP is configured, so every packet must pass, counted as PassNotVip.
    let server = node
        .run_in(|| UdpSocket::bind(format!("{ADDR_LB}:0")))
        .unwrap()
        .unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let client = peer
        .run_in(|| UdpSocket::bind(format!("{ADDR_PEER}:0")))
        .unwrap()
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let server_addr = server.local_addr().unwrap();
    let client_addr = client.local_addr().unwrap();
    // The first datagram waits for ARP; resolve it now so counting below is about UDP.
    client.send_to(b"warm-up", server_addr).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = server
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("warm-up datagram never arrived through lbx0: {e}"));
    assert_eq!((&buf[..n], from), (&b"warm-up"[..], client_addr));

    let pass_before = pass_counter(prog_id, Reason::PassNotVip);
    let xdp_before = veth_xdp_packets(&node, "lbx0");
    const N: u64 = 10;
    for i in 0..N {
        let msg = format!("smoke {i}");
        client.send_to(msg.as_bytes(), server_addr).unwrap();
        let (n, from) = server
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} never arrived through lbx0: {e}"));
        assert_eq!((&buf[..n], from), (msg.as_bytes(), client_addr));
        // And back the other way (lbx0 -> lbx1, no XDP on the receiving end).
        server.send_to(&buf[..n], client_addr).unwrap();
        let (m, back) = client
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("reply {i} never arrived on lbx1: {e}"));
        assert_eq!((&buf[..m], back), (msg.as_bytes(), server_addr));
    }
    let pass = pass_counter(prog_id, Reason::PassNotVip);
    let xdp_after = veth_xdp_packets(&node, "lbx0");
    // At least our N datagrams (IPv6 neighbour discovery from lbx1 counts there too).
    assert!(
        pass.packets - pass_before.packets >= N,
        "lb_xdp counted {} PassNotVip packets for {N} datagrams",
        pass.packets - pass_before.packets
    );
    // Each datagram is at least 14 + 20 + 8 + 7 octets on the wire.
    assert!(pass.bytes - pass_before.bytes >= N * (14 + 20 + 8 + 7));
    assert!(
        xdp_after - xdp_before >= N,
        "veth driver saw {} XDP packets on lbx0 for {N} datagrams",
        xdp_after - xdp_before
    );
    // Nothing was dropped by XDP on lbx0.
    let drops = node.exec("ethtool", &["-S", "lbx0"]).unwrap();
    for (_, val) in drops
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter(|(k, _)| k.ends_with("_xdp_drops"))
    {
        assert_eq!(val.trim(), "0", "{drops}");
    }

    // 4. SIGTERM: lb detaches and exits 0.
    lb.signal(libc::SIGTERM);
    let status = lb.wait(EXIT_DEADLINE);
    assert!(status.success(), "lb exited {status}\n{}", lb.describe());
    assert!(
        lb.stdout
            .iter()
            .any(|l| l.starts_with("detached lb_xdp from lbx0")),
        "{}",
        lb.describe()
    );
    let link = link_json(&node, "lbx0");
    assert!(
        link.get("xdp").is_none(),
        "XDP still attached to lbx0 after lb exited: {link}"
    );
    let text = node.ip(&["-d", "link", "show", "dev", "lbx0"]).unwrap();
    assert!(!text.contains("prog/xdp"), "{text}");
    // The program is freed once lb's descriptors are gone (freeing may lag a little).
    let deadline = Instant::now() + EXIT_DEADLINE;
    while loaded_programs()
        .filter_map(Result::ok)
        .any(|p| p.id() == prog_id)
    {
        assert!(
            Instant::now() < deadline,
            "prog {prog_id} still loaded {EXIT_DEADLINE:?} after lb exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Traffic still flows without the program.
    client.send_to(b"after", server_addr).unwrap();
    let (n, _) = server.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"after");

    eprintln!(
        "attach_smoke: attached after {attach_time:?}, whole test {:?}",
        started.elapsed()
    );
}

#[test]
fn attach_errors_name_what_is_missing() {
    let ns = setup();
    veth_pair(&ns, "lbx0", MAC_LB, &ns, "lbx1", MAC_PEER).unwrap();

    let (status, out, err) = run_lb(
        &["attach", "--iface", "nonexistent0", "--netns", ns.name()],
        START_DEADLINE,
    );
    assert!(!status.success(), "exited {status}; stdout:\n{out}");
    assert!(
        err.contains("nonexistent0"),
        "stderr does not name the interface:\n{err}"
    );
    assert!(!out.contains("attached"), "{out}");

    let (status, out, err) = run_lb(
        &["attach", "--iface", "lbx0", "--netns", "no-such-ns-xyz"],
        START_DEADLINE,
    );
    assert!(!status.success(), "exited {status}; stdout:\n{out}");
    assert!(
        err.contains("no-such-ns-xyz"),
        "stderr does not name the namespace:\n{err}"
    );
    assert!(!out.contains("attached"), "{out}");

    // Neither run touched the real lbx0.
    let link = link_json(&ns, "lbx0");
    assert!(link.get("xdp").is_none(), "{link}");
}

#[test]
fn help_mentions_the_flags() {
    let (status, out, err) = run_lb(&["--help"], EXIT_DEADLINE);
    assert!(status.success(), "lb --help exited {status}: {err}");
    for word in ["attach", "run", "reload", "cid", "crds"] {
        assert!(
            out.contains(&format!("\n  {word} ")),
            "lb --help does not list {word}:\n{out}"
        );
    }
    // The product carries no lab tooling: those are `lb-lab`'s.
    for word in ["backend", "probe", "demo", "bench"] {
        assert!(
            !out.contains(&format!("\n  {word} ")),
            "lb --help lists the lab's {word}:\n{out}"
        );
    }

    let (status, out, err) = run_lb(&["attach", "--help"], EXIT_DEADLINE);
    assert!(status.success(), "lb attach --help exited {status}: {err}");
    for flag in ["--iface", "--netns", "--generic"] {
        assert!(
            out.contains(flag),
            "lb attach --help does not mention {flag}:\n{out}"
        );
    }

    // A missing required flag is a usage error, not a crash.
    let (status, _, err) = run_lb(&["attach"], EXIT_DEADLINE);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--iface"), "{err}");
}
