//! Network-namespace test topologies that clean up after themselves, even on panic.
//!
//! Everything here needs root (see [`require_root`]). A [`NetNs`] is deleted when dropped,
//! and with it every interface inside it (a veth pair dies when either end does), so tests
//! never leak state into the host. A SIGKILLed test cannot run destructors; its namespaces
//! are named `PREFIX<pid>-<n>` so [`remove_stale`] can delete them later.
//!
//! Entering a namespace is per thread: [`NetNs::enter`] calls `setns(2)` on the calling
//! thread only and its guard switches back. This is deliberately not `ip netns exec`, which
//! remounts `/sys` and so hides bpffs pins. Child processes spawned while a thread is inside
//! a namespace inherit it; [`NetNs::command`] does the same for one command from any thread.
//! Note that `/sys/class/net` always shows the namespace that mounted sysfs (the host's), so
//! interface facts come from `ip -j` or from ioctls made inside the namespace instead.
//!
//! ```no_run
//! use lb_lab::netns::{NetNs, veth_pair};
//! let client = NetNs::create("lbt-c").unwrap();
//! let node = NetNs::create("lbt-n").unwrap();
//! let v = veth_pair(&client, "eth0", [2, 0, 0, 0, 0, 1], &node, "ext0", [2, 0, 0, 0, 0, 2]).unwrap();
//! client.addr_add("eth0", "198.18.0.1/24").unwrap();
//! node.addr_add("ext0", "198.18.0.2/24").unwrap();
//! node.neigh_add("198.18.0.1".parse().unwrap(), v.mac, "ext0").unwrap();
//! node.sysctl("net.ipv4.ip_forward", "1").unwrap();
//! let ifindex = node.run_in(|| /* attach XDP to v.peer_ifindex here */ v.peer_ifindex).unwrap();
//! # let _ = ifindex;
//! ```

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, anyhow, bail, ensure};

pub use lb_userspace::mac::{Mac, format_mac, parse_mac};

const NETNS_DIR: &str = "/run/netns";

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Err unless this process can create namespaces and interfaces and load BPF programs
/// (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF: in practice, root).
pub fn require_root() -> Result<()> {
    const NEEDED: [(u32, &str); 3] = [
        (12, "CAP_NET_ADMIN"),
        (21, "CAP_SYS_ADMIN"),
        (39, "CAP_BPF"),
    ];
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| anyhow!("no CapEff line in /proc/self/status"))?;
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(bit, _)| cap_eff & (1 << bit) == 0)
        .map(|(_, n)| *n)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    bail!(
        "network-namespace tests (creating namespaces and veth pairs, loading and attaching BPF programs) \
         need root: this process (euid {euid}) lacks {}. Run them as root, e.g. `sudo -E cargo test ...`",
        missing.join(", ")
    )
}

/// Run a command; Err carries the command line, exit status and stderr. Ok is stdout.
fn run(cmd: &mut Command) -> Result<String> {
    let line = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .output()
        .with_context(|| format!("could not run `{line}` (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8"))
}

fn check_ifname(dev: &str) -> Result<()> {
    ensure!(
        !dev.is_empty() && dev.len() < libc::IFNAMSIZ && !dev.contains(['/', ' ', ':']),
        "bad interface name {dev:?}: 1 to {} characters, no '/', ':' or spaces",
        libc::IFNAMSIZ - 1
    );
    Ok(())
}

/// A network namespace (`/run/netns/NAME`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Create `PREFIX<pid>-<n>` with loopback up and IPv6 DAD off (so addresses added later
    /// are usable at once). `prefix`: letters, digits, '-' or '_'.
    pub fn create(prefix: &str) -> Result<NetNs> {
        require_root()?;
        ensure!(
            prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "namespace prefix {prefix:?} may only hold letters, digits, '-' and '_'"
        );
        let name = format!(
            "{prefix}{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on Drop deletes the namespace if the rest fails.
        let ns = NetNs { name };
        ns.link_up("lo")?;
        ns.disable_dad()?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, e.g. for `nsenter --net=PATH`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    fn open(&self) -> Result<OwnedFd> {
        let file = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        Ok(file.into())
    }

    /// `ip -n NAME ARGS...`; Ok is stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Move the calling thread into this namespace until the guard drops. Only this thread
    /// moves; the guard cannot be sent to another thread.
    pub fn enter(&self) -> Result<NsGuard<'_>> {
        let original: OwnedFd = File::open("/proc/thread-self/ns/net")
            .context("opening /proc/thread-self/ns/net")?
            .into();
        let target = self.open()?;
        setns(&target).with_context(|| format!("entering network namespace {}", self.name))?;
        Ok(NsGuard {
            original,
            ns: self.name.clone(),
            _borrow: PhantomData,
            _not_send: PhantomData,
        })
    }

    /// Run `f` on this thread inside the namespace (sockets it opens, XDP attachments it
    /// makes and processes it spawns belong to the namespace), then switch back.
    pub fn run_in<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let _guard = self.enter()?;
        Ok(f())
    }

    /// A `Command` that runs `program` inside this namespace, from any thread, without
    /// remounting `/sys` (unlike `ip netns exec`), so bpffs pins stay visible.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let fd = Arc::new(self.open()?);
        let mut cmd = Command::new(program);
        // SAFETY: the closure runs in the forked child before exec and only calls setns(2),
        // which is async-signal-safe; the fd stays open because the closure owns it.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Run `program ARGS...` inside the namespace; Ok is stdout, Err has stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program)?.args(args))
    }

    /// Write a sysctl inside the namespace: `net.ipv4.ip_forward` or, for keys whose parts
    /// contain dots (interface names), the `/`-separated form `net/ipv4/conf/eth0.100/rp_filter`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key);
        self.run_in(|| std::fs::write(&path, value))?
            .with_context(|| format!("setting {key} = {value} in namespace {}", self.name))
    }

    /// Read a sysctl inside the namespace (trimmed).
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        let v = self
            .run_in(|| std::fs::read_to_string(&path))?
            .with_context(|| format!("reading {key} in namespace {}", self.name))?;
        Ok(v.trim().to_string())
    }

    /// Turn IPv6 duplicate address detection off for existing and future interfaces, so
    /// addresses are not "tentative" (unusable) for a second after being added.
    pub fn disable_dad(&self) -> Result<()> {
        for iface in ["all", "default"] {
            self.sysctl(&format!("net/ipv6/conf/{iface}/accept_dad"), "0")?;
            self.sysctl(&format!("net/ipv6/conf/{iface}/dad_transmits"), "0")?;
        }
        Ok(())
    }

    pub fn link_up(&self, dev: &str) -> Result<()> {
        self.ip(&["link", "set", "dev", dev, "up"]).map(drop)
    }

    /// `ip addr add CIDR dev DEV` (`nodad` for IPv6), e.g. `"198.18.0.1/24"`, `"fd00::1/64"`.
    pub fn addr_add(&self, dev: &str, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    /// `ip route replace DEST [via VIA] [dev DEV]`; DEST may be `default` (the family then
    /// comes from VIA).
    pub fn route_add(&self, dest: &str, via: Option<&str>, dev: Option<&str>) -> Result<()> {
        let v6 = dest.contains(':') || via.is_some_and(|v| v.contains(':'));
        let mut args = vec![if v6 { "-6" } else { "-4" }, "route", "replace", dest];
        if let Some(via) = via {
            args.extend(["via", via]);
        }
        if let Some(dev) = dev {
            args.extend(["dev", dev]);
        }
        self.ip(&args).map(drop)
    }

    /// A permanent neighbour entry (ARP / NDP), so FIB lookups resolve without traffic.
    pub fn neigh_add(&self, addr: IpAddr, mac: Mac, dev: &str) -> Result<()> {
        let (addr, mac) = (addr.to_string(), format_mac(mac));
        self.ip(&[
            "neigh",
            "replace",
            &addr,
            "lladdr",
            &mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .map(drop)
    }

    fn link_json(&self, dev: &str) -> Result<serde_json::Value> {
        let out = self.ip(&["-j", "link", "show", "dev", dev])?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("parsing `ip -j link` output {out:?}"))?;
        v.get(0).cloned().ok_or_else(|| {
            anyhow!(
                "`ip -j link show dev {dev}` in {} listed nothing",
                self.name
            )
        })
    }

    /// Interface index of `dev` inside this namespace.
    pub fn ifindex(&self, dev: &str) -> Result<u32> {
        let link = self.link_json(dev)?;
        link["ifindex"]
            .as_u64()
            .map(|i| i as u32)
            .ok_or_else(|| anyhow!("no ifindex for {dev} in {}: {link}", self.name))
    }

    /// MAC address of `dev` inside this namespace.
    pub fn mac(&self, dev: &str) -> Result<Mac> {
        let link = self.link_json(dev)?;
        parse_mac(
            link["address"]
                .as_str()
                .ok_or_else(|| anyhow!("no address for {dev} in {}: {link}", self.name))?,
        )
        .map_err(|e| anyhow!(e))
    }

    /// Turn RX and TX checksum offload of `dev` on or off (what `ethtool -K DEV rx off tx off`
    /// does; the ethtool ioctl is made in-process, so the `ethtool` binary is not needed).
    /// Off matters on veths: with TX offload on, the kernel hands XDP packets whose checksum
    /// is only a partial pseudo-header sum.
    pub fn set_checksum_offload(&self, dev: &str, on: bool) -> Result<()> {
        check_ifname(dev)?;
        self.run_in(|| -> Result<()> {
            let sock = socket()?;
            ethtool(&sock, dev, ETHTOOL_SRXCSUM, u32::from(on)).context("ETHTOOL_SRXCSUM")?;
            ethtool(&sock, dev, ETHTOOL_STXCSUM, u32::from(on)).context("ETHTOOL_STXCSUM")?;
            Ok(())
        })?
        .with_context(|| {
            format!(
                "setting checksum offload of {dev} in {} {}",
                self.name,
                if on { "on" } else { "off" }
            )
        })
    }

    /// (RX, TX) checksum offload state of `dev`.
    pub fn checksum_offload(&self, dev: &str) -> Result<(bool, bool)> {
        check_ifname(dev)?;
        self.run_in(|| -> Result<(bool, bool)> {
            let sock = socket()?;
            let rx = ethtool(&sock, dev, ETHTOOL_GRXCSUM, 0).context("ETHTOOL_GRXCSUM")?;
            let tx = ethtool(&sock, dev, ETHTOOL_GTXCSUM, 0).context("ETHTOOL_GTXCSUM")?;
            Ok((rx != 0, tx != 0))
        })?
        .with_context(|| format!("reading checksum offload of {dev} in {}", self.name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!(
                "warning: could not delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    PathBuf::from("/proc/sys").join(rel.trim_start_matches('/'))
}

fn setns(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fd is a valid namespace fd for the duration of the call.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Proof that the calling thread is inside a namespace; dropping it switches the thread back
/// to the namespace it was in before. Not `Send`: setns is per thread.
#[must_use = "the thread leaves the namespace as soon as the guard is dropped"]
pub struct NsGuard<'a> {
    original: OwnedFd,
    ns: String,
    _borrow: PhantomData<&'a NetNs>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for NsGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.original) {
            // Carrying on in the test namespace would run the rest of the test (and, on the
            // test harness's thread, later tests) against the wrong network.
            let msg = format!("could not leave network namespace {}: {e}", self.ns);
            if std::thread::panicking() {
                eprintln!("error: {msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// Both ends of a veth pair, as created by [`veth_pair`]. Not a guard: the pair disappears
/// with either namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Veth {
    pub ns: String,
    pub name: String,
    pub ifindex: u32,
    pub mac: Mac,
    pub peer_ns: String,
    pub peer: String,
    pub peer_ifindex: u32,
    pub peer_mac: Mac,
}

/// Create a veth pair: `name` (MAC `mac`) in `ns` and `peer` (MAC `peer_mac`) in `peer_ns`,
/// which may be the same namespace. Both ends end up up, with checksum offload off, and the
/// reported ifindexes and MACs are read back from the kernel.
pub fn veth_pair(
    ns: &NetNs,
    name: &str,
    mac: Mac,
    peer_ns: &NetNs,
    peer: &str,
    peer_mac: Mac,
) -> Result<Veth> {
    check_ifname(name)?;
    check_ifname(peer)?;
    let (mac_s, peer_mac_s) = (format_mac(mac), format_mac(peer_mac));
    let mut args = vec![
        "link",
        "add",
        name,
        "address",
        &mac_s,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "address",
        &peer_mac_s,
    ];
    if peer_ns.name != ns.name {
        args.extend(["netns", &peer_ns.name]);
    }
    ns.ip(&args)?;
    for (n, dev) in [(ns, name), (peer_ns, peer)] {
        n.set_checksum_offload(dev, false)?;
        n.link_up(dev)?;
    }
    let v = Veth {
        ns: ns.name.clone(),
        name: name.to_string(),
        ifindex: ns.ifindex(name)?,
        mac: ns.mac(name)?,
        peer_ns: peer_ns.name.clone(),
        peer: peer.to_string(),
        peer_ifindex: peer_ns.ifindex(peer)?,
        peer_mac: peer_ns.mac(peer)?,
    };
    ensure!(
        v.mac == mac && v.peer_mac == peer_mac,
        "veth {name}/{peer} came up with MACs {} / {}, asked for {mac_s} / {peer_mac_s}",
        format_mac(v.mac),
        format_mac(v.peer_mac)
    );
    Ok(v)
}

/// Delete namespaces named `PREFIX<pid>-<n>` whose process is gone (left by a killed test
/// run). Returns the names deleted.
pub fn remove_stale(prefix: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).context("listing /run/netns"),
    };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|r| r.split_once('-'))
            .map(|(pid, _)| pid)
        else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if std::path::Path::new("/proc").join(pid).exists() {
            continue;
        }
        run(Command::new("ip").args(["netns", "del", &name]))?;
        removed.push(name);
    }
    Ok(removed)
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GRXCSUM: u32 = 0x14;
const ETHTOOL_SRXCSUM: u32 = 0x15;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value` from linux/ethtool.h.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

fn socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket(AF_INET, SOCK_DGRAM)");
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One legacy ethtool get/set-value ioctl; returns the value's data.
fn ethtool(sock: &OwnedFd, dev: &str, cmd: u32, data: u32) -> Result<u32> {
    let name = CString::new(dev)?;
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.as_bytes_with_nul()) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: SIOCETHTOOL reads ifr (name + pointer to `value`, both live for the call) and
    // writes only within `value`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("SIOCETHTOOL on {dev}"));
    }
    Ok(value.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
    use std::time::Duration;

    const MAC_A: Mac = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
    const MAC_B: Mac = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x02];

    fn root() {
        if let Err(e) = require_root() {
            panic!("{e:#}");
        }
    }

    fn ns_list() -> String {
        run(Command::new("ip").args(["netns", "list"])).unwrap()
    }

    fn listed(name: &str) -> bool {
        ns_list()
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name))
    }

    fn thread_netns() -> PathBuf {
        std::fs::read_link("/proc/thread-self/ns/net").unwrap()
    }

    fn if_nametoindex(dev: &str) -> u32 {
        let c = CString::new(dev).unwrap();
        // SAFETY: c is a valid C string.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    }

    #[test]
    fn netns_veth_in_one_namespace_matches_kernel_view() {
        root();
        let before = thread_netns();
        let name;
        {
            let ns = NetNs::create("lbt").unwrap();
            name = ns.name().to_string();
            assert!(
                listed(&name),
                "{name} not in `ip netns list`:\n{}",
                ns_list()
            );
            let v = veth_pair(&ns, "va", MAC_A, &ns, "vb", MAC_B).unwrap();
            assert_eq!((v.mac, v.peer_mac), (MAC_A, MAC_B));
            assert_ne!(v.ifindex, v.peer_ifindex);
            ns.addr_add("va", "198.18.0.1/24").unwrap();
            ns.addr_add("va", "fd00:18::1/64").unwrap();
            assert_eq!(ns.checksum_offload("va").unwrap(), (false, false));
            assert_eq!(ns.checksum_offload("vb").unwrap(), (false, false));
            // The host cannot see the interfaces.
            assert_eq!(if_nametoindex("va"), 0, "va leaked into the host namespace");
            {
                let _g = ns.enter().unwrap();
                assert_ne!(thread_netns(), before);
                assert_eq!(if_nametoindex("va"), v.ifindex);
                assert_eq!(if_nametoindex("vb"), v.peer_ifindex);
                // A child spawned from this thread is in the namespace too (no `-n`).
                let out =
                    run(Command::new("ip").args(["-j", "link", "show", "dev", "va"])).unwrap();
                let link: serde_json::Value = serde_json::from_str(&out).unwrap();
                assert_eq!(link[0]["ifindex"].as_u64(), Some(v.ifindex.into()));
                assert_eq!(link[0]["address"].as_str(), Some("02:00:5e:10:00:01"));
                assert!(
                    link[0]["flags"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|f| f == "UP"),
                    "{link}"
                );
                // IPv6 address usable at once: not tentative, and bindable.
                let addrs =
                    run(Command::new("ip").args(["-j", "addr", "show", "dev", "va"])).unwrap();
                assert!(
                    addrs.contains("\"198.18.0.1\"") && addrs.contains("\"fd00:18::1\""),
                    "{addrs}"
                );
                assert!(!addrs.contains("tentative"), "{addrs}");
                UdpSocket::bind("[fd00:18::1]:0").unwrap();
            }
            assert_eq!(
                thread_netns(),
                before,
                "guard did not restore the namespace"
            );
        }
        assert!(
            !listed(&name),
            "{name} still listed after drop:\n{}",
            ns_list()
        );
    }

    #[test]
    fn netns_two_namespaces_carry_udp_v4_and_v6() {
        root();
        let a = NetNs::create("lbt").unwrap();
        let b = NetNs::create("lbt").unwrap();
        let v = veth_pair(&a, "eth0", MAC_A, &b, "eth1", MAC_B).unwrap();
        assert_eq!((v.ns.as_str(), v.peer_ns.as_str()), (a.name(), b.name()));
        assert_eq!(a.ifindex("eth0").unwrap(), v.ifindex);
        assert_eq!(b.ifindex("eth1").unwrap(), v.peer_ifindex);
        assert_eq!(b.mac("eth1").unwrap(), MAC_B);
        assert!(
            a.ip(&["link", "show", "eth1"]).is_err(),
            "peer should be in the other namespace"
        );
        a.addr_add("eth0", "198.18.0.1/24").unwrap();
        b.addr_add("eth1", "198.18.0.2/24").unwrap();
        a.addr_add("eth0", "fd00:18::1/64").unwrap();
        b.addr_add("eth1", "fd00:18::2/64").unwrap();
        a.neigh_add("198.18.0.2".parse().unwrap(), MAC_B, "eth0")
            .unwrap();
        a.neigh_add("fd00:18::2".parse().unwrap(), MAC_B, "eth0")
            .unwrap();
        b.addr_add("lo", "198.19.0.1/32").unwrap();
        a.route_add("198.19.0.0/24", Some("198.18.0.2"), Some("eth0"))
            .unwrap();
        let routes = a.ip(&["-4", "route", "show", "198.19.0.0/24"]).unwrap();
        assert!(routes.contains("via 198.18.0.2 dev eth0"), "{routes}");
        let neigh = a.ip(&["neigh", "show", "dev", "eth0"]).unwrap();
        assert!(
            neigh.contains("198.18.0.2 lladdr 02:00:5e:10:00:02 PERMANENT"),
            "{neigh}"
        );

        for (listen, from) in [
            (
                IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
                IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            ),
            (
                IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)),
                IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            ),
            (
                "fd00:18::2".parse::<Ipv6Addr>().unwrap().into(),
                "fd00:18::1".parse::<Ipv6Addr>().unwrap().into(),
            ),
        ] {
            // A socket belongs to the namespace it was created in, even after leaving it.
            let server = b
                .run_in(|| UdpSocket::bind(SocketAddr::new(listen, 0)))
                .unwrap()
                .unwrap();
            server
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let client = a
                .run_in(|| UdpSocket::bind(SocketAddr::new(from, 0)))
                .unwrap()
                .unwrap();
            client
                .send_to(b"ping", server.local_addr().unwrap())
                .unwrap();
            let mut buf = [0u8; 16];
            let (n, peer) = server
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("nothing reached {listen}: {e}"));
            assert_eq!(
                (&buf[..n], peer),
                (&b"ping"[..], client.local_addr().unwrap())
            );
        }
    }

    #[test]
    fn netns_sysctl_is_per_namespace() {
        root();
        let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
        let ns = NetNs::create("lbt").unwrap();
        let flip = if host.trim() == "1" { "0" } else { "1" };
        ns.sysctl("net.ipv4.ip_forward", flip).unwrap();
        assert_eq!(ns.sysctl_get("net.ipv4.ip_forward").unwrap(), flip);
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
            host,
            "host sysctl changed"
        );
        // An independent reader inside the namespace agrees.
        assert_eq!(
            ns.exec("cat", &["/proc/sys/net/ipv4/ip_forward"])
                .unwrap()
                .trim(),
            flip
        );
        let nsenter = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["cat", "/proc/sys/net/ipv6/conf/default/accept_dad"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&nsenter.stdout).trim(), "0");
        let e = ns.sysctl("net.ipv4.no_such_key", "1").unwrap_err();
        assert!(format!("{e:#}").contains("net.ipv4.no_such_key"), "{e:#}");
    }

    #[test]
    fn netns_command_runs_inside_without_hiding_bpffs() {
        root();
        let ns = NetNs::create("lbt").unwrap();
        veth_pair(&ns, "x0", MAC_A, &ns, "x1", MAC_B).unwrap();
        let links = ns.exec("ip", &["-o", "link"]).unwrap();
        assert!(
            links.contains("x0@x1") && links.contains("x1@x0"),
            "{links}"
        );
        // /sys is the host's mount (not remounted as `ip netns exec` would), so bpffs is there
        // exactly when it is on the host.
        let host_mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let child_mounts = ns.exec("cat", &["/proc/self/mounts"]).unwrap();
        assert_eq!(
            host_mounts.contains(" /sys/fs/bpf "),
            child_mounts.contains(" /sys/fs/bpf ")
        );
        let e = ns.exec("ip", &["link", "show", "nope0"]).unwrap_err();
        assert!(
            format!("{e:#}").contains("`ip link show nope0` failed"),
            "{e:#}"
        );
        let e = ns.ip(&["link", "show", "nope0"]).unwrap_err();
        assert!(
            format!("{e:#}").contains(&format!("`ip -n {} link show nope0` failed", ns.name())),
            "{e:#}"
        );
    }

    #[test]
    fn netns_cleans_up_after_panic() {
        root();
        let before = thread_netns();
        let mut name = String::new();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let ns = NetNs::create("lbt").unwrap();
            name = ns.name().to_string();
            veth_pair(&ns, "p0", MAC_A, &ns, "p1", MAC_B).unwrap();
            let _g = ns.enter().unwrap();
            panic!("test panic inside the namespace");
        }));
        assert!(result.is_err());
        assert!(!name.is_empty());
        assert!(!listed(&name), "{name} survived a panic:\n{}", ns_list());
        assert_eq!(
            thread_netns(),
            before,
            "panic left the thread in the test namespace"
        );
        assert_eq!(if_nametoindex("p0"), 0);
    }

    #[test]
    fn netns_checksum_offload_toggles() {
        root();
        let ns = NetNs::create("lbt").unwrap();
        // Plain `ip link add` veths come with offloads on; veth_pair turns them off.
        ns.ip(&["link", "add", "o0", "type", "veth", "peer", "name", "o1"])
            .unwrap();
        assert_eq!(ns.checksum_offload("o0").unwrap(), (true, true));
        ns.set_checksum_offload("o0", false).unwrap();
        assert_eq!(ns.checksum_offload("o0").unwrap(), (false, false));
        assert_eq!(ns.checksum_offload("o1").unwrap(), (true, true));
        let e = ns.checksum_offload("nope0").unwrap_err();
        assert!(format!("{e:#}").contains("nope0"), "{e:#}");
    }

    #[test]
    fn netns_remove_stale_only_touches_dead_pids() {
        root();
        // pid 0 never belongs to a process with a /proc entry.
        let stale = format!("lbtstale0-{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &stale])).unwrap();
        let live = NetNs::create("lbtstale").unwrap();
        let removed = remove_stale("lbtstale").unwrap();
        assert_eq!(removed, vec![stale.clone()]);
        assert!(!listed(&stale) && listed(live.name()));
    }

    #[test]
    fn netns_rejects_bad_names() {
        root();
        assert!(NetNs::create("a/b").is_err());
        let ns = NetNs::create("lbt").unwrap();
        let e = veth_pair(&ns, "much-too-long-name0", MAC_A, &ns, "y", MAC_B).unwrap_err();
        assert!(e.to_string().contains("bad interface name"), "{e}");
    }

    #[test]
    fn netns_mac_helpers() {
        assert_eq!(format_mac(MAC_A), "02:00:5e:10:00:01");
        assert_eq!(parse_mac("02:00:5e:10:00:01").unwrap(), MAC_A);
        assert!(parse_mac("02:00").is_err() && parse_mac("zz:00:00:00:00:00").is_err());
    }
}
