//! The BIRD process lb drives: started by lb (the default; it dies with lb) or run beside it
//! (a sidecar sharing the run directory), configured only through [`Speaker::apply`].
//!
//! Applying is atomic and never loses the running configuration: the new file is written
//! beside the old one, BIRD checks it (`configure check`), and only a file BIRD accepts is
//! renamed over `bird.conf` and loaded (`configure`). A refused file stays as
//! `bird.conf.rejected` for the operator to read, and BIRD keeps running the previous one.

use std::{
    fs,
    io::{self, BufRead, BufReader},
    os::unix::{fs::OpenOptionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use log::{info, warn};

use super::{
    Desired,
    bird::{self, BfdSession, Control, SessionStatus},
    render,
};

/// BIRD's binary, found on `PATH` (Debian's `bird2` installs `/usr/sbin/bird`).
pub const DEFAULT_BIRD: &str = "bird";
/// Where lb keeps BIRD's configuration and control socket by default.
pub const DEFAULT_RUN_DIR: &str = "/run/lb/bird";
/// Every control-socket exchange is bounded by this.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a started BIRD has to open its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How lb reaches its speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerOptions {
    /// The `bird` binary lb starts.
    pub bird: PathBuf,
    /// Holds `bird.conf` and the control socket `bird.ctl` (created 0700 if absent).
    pub run_dir: PathBuf,
    /// lb starts BIRD itself (it dies with lb); `false`: a BIRD run beside lb with
    /// `-c <run_dir>/bird.conf -s <run_dir>/bird.ctl` (a sidecar container).
    pub spawn: bool,
}

impl Default for SpeakerOptions {
    fn default() -> Self {
        SpeakerOptions {
            bird: PathBuf::from(DEFAULT_BIRD),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            spawn: true,
        }
    }
}

/// Why a configuration did not become the running one.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// lb could not write it as BIRD's language (a value BIRD cannot quote).
    #[error(transparent)]
    Render(#[from] render::RenderError),
    /// BIRD refused it; the previous configuration keeps running.
    #[error(
        "BIRD refused the new configuration (kept running the previous one; the refused file is {file}): {message}"
    )]
    Rejected { message: String, file: PathBuf },
    /// BIRD could not be reached.
    #[error("BIRD's control socket {socket}: {error}")]
    Control { socket: PathBuf, error: io::Error },
}

/// What the speaker has, read back from BIRD.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpeakerStatus {
    pub sessions: Vec<SessionStatus>,
    pub bfd: Vec<BfdSession>,
}

/// The speaker: its files, its process (when lb started it) and what it last accepted.
pub struct Speaker {
    opts: SpeakerOptions,
    child: Option<Child>,
    /// The configuration BIRD runs now (as rendered), to skip reloads that change nothing
    /// and to restore a restarted BIRD.
    running: Option<String>,
    /// Times lb started BIRD again after it died.
    pub restarts: u64,
}

impl Speaker {
    pub fn config_file(&self) -> PathBuf {
        self.opts.run_dir.join("bird.conf")
    }
    pub fn socket(&self) -> PathBuf {
        self.opts.run_dir.join("bird.ctl")
    }

    /// Write `initial` as BIRD's configuration and start BIRD (or, not spawning, wait for
    /// the sidecar's socket and load it there).
    pub fn start(opts: SpeakerOptions, initial: &Desired) -> anyhow::Result<Speaker> {
        fs::create_dir_all(&opts.run_dir).map_err(|e| {
            anyhow::anyhow!(
                "creating BIRD's run directory {}: {e}",
                opts.run_dir.display()
            )
        })?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&opts.run_dir, fs::Permissions::from_mode(0o700))?;
        let mut s = Speaker {
            opts,
            child: None,
            running: None,
            restarts: 0,
        };
        let text = render::render(initial)?;
        write_private(&s.config_file(), &text)?;
        if s.opts.spawn {
            s.spawn()?;
        } else {
            s.wait_for_socket()?;
            s.configure(&s.config_file())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        s.running = Some(text);
        Ok(s)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let _ = fs::remove_file(self.socket());
        let mut cmd = Command::new(&self.opts.bird);
        cmd.arg("-f")
            .arg("-c")
            .arg(self.config_file())
            .arg("-s")
            .arg(self.socket())
            .arg("-P")
            .arg(self.opts.run_dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // BIRD dies with lb, however lb ends: a speaker left advertising for a node whose
        // lb is gone would draw traffic to it. (A restart loses no traffic to this: the
        // data plane's forwarding does not depend on the daemon.)
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            anyhow::anyhow!(
                "starting the BGP speaker {}: {e} (install BIRD 2: Debian's bird2, or set [bgp] bird)",
                self.opts.bird.display()
            )
        })?;
        if let Some(err) = child.stderr.take() {
            std::thread::Builder::new()
                .name("bird-log".into())
                .spawn(move || {
                    for line in BufReader::new(err).lines().map_while(Result::ok) {
                        info!("bird: {line}");
                    }
                })?;
        }
        self.child = Some(child);
        self.wait_for_socket()
    }

    fn wait_for_socket(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                anyhow::bail!(
                    "the BGP speaker exited at start ({status}); its messages are above (bird: ...); configuration {}",
                    self.config_file().display()
                );
            }
            match Control::connect(&self.socket(), CONTROL_TIMEOUT) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => anyhow::bail!(
                    "BIRD's control socket {} did not answer within {START_TIMEOUT:?}: {e}",
                    self.socket().display()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Make `desired` BIRD's running configuration. `Ok(false)`: it already was.
    pub fn apply(&mut self, desired: &Desired) -> Result<bool, ApplyError> {
        let text = render::render(desired)?;
        if self.running.as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        let new = self.opts.run_dir.join("bird.conf.new");
        write_private(&new, &text).map_err(|error| self.control_error(error))?;
        let check = self.command(&format!("configure check \"{}\"", new.display()))?;
        if let Some(message) = check.error() {
            let file = self.opts.run_dir.join("bird.conf.rejected");
            let _ = fs::rename(&new, &file);
            return Err(ApplyError::Rejected {
                message: message.to_owned(),
                file,
            });
        }
        fs::rename(&new, self.config_file()).map_err(|error| self.control_error(error))?;
        self.configure(&self.config_file())?;
        self.running = Some(text);
        Ok(true)
    }

    fn configure(&self, file: &Path) -> Result<(), ApplyError> {
        let reply = self.command(&format!("configure \"{}\"", file.display()))?;
        match reply.error() {
            Some(message) => Err(ApplyError::Rejected {
                message: message.to_owned(),
                file: file.to_owned(),
            }),
            None => Ok(()),
        }
    }

    fn command(&self, cmd: &str) -> Result<bird::Reply, ApplyError> {
        Control::connect(&self.socket(), CONTROL_TIMEOUT)
            .and_then(|mut c| c.command(cmd))
            .map_err(|error| self.control_error(error))
    }

    fn control_error(&self, error: io::Error) -> ApplyError {
        ApplyError::Control {
            socket: self.socket(),
            error,
        }
    }

    /// The sessions and BFD sessions as BIRD has them now.
    pub fn status(&self) -> Result<SpeakerStatus, ApplyError> {
        let protocols = self.command("show protocols all \"lb_peer_*\"")?;
        let bfd = self.command("show bfd sessions")?;
        Ok(SpeakerStatus {
            sessions: bird::parse_protocols(&protocols),
            bfd: bird::parse_bfd_sessions(&bfd),
        })
    }

    /// Restart BIRD with the running configuration if the BIRD lb started has died.
    /// Returns the exit status it died with.
    pub fn revive(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let Some(child) = &mut self.child else {
            return Ok(None);
        };
        let Some(status) = child.try_wait()? else {
            return Ok(None);
        };
        warn!("the BGP speaker (BIRD) exited ({status}); starting it again");
        self.child = None;
        self.restarts += 1;
        self.spawn()?;
        Ok(Some(status))
    }

    /// Withdraw every prefix (keeping the sessions) and wait, at most `timeout`, until every
    /// established peer has them: BIRD exports nothing any more, and the TCP connections to
    /// the peers hold no byte the peer has not acknowledged (its kernel has the UPDATE).
    /// Returns how long that took; `Err` names what was still outstanding at the deadline.
    pub fn withdraw_all(
        &mut self,
        desired: &Desired,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let none = Desired {
            adverts: Vec::new(),
            ..desired.clone()
        };
        self.apply(&none).map_err(|e| anyhow::anyhow!("{e}"))?;
        loop {
            let status = self.status().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut left: Vec<String> = status
                .sessions
                .iter()
                .filter(|s| s.established() && s.exported > 0)
                .map(|s| format!("{} ({} prefixes)", s.peer, s.exported))
                .collect();
            if left.is_empty() {
                let peers: Vec<std::net::IpAddr> =
                    desired.peers.iter().map(|p| p.address).collect();
                left = unacknowledged(&peers)
                    .into_iter()
                    .map(|(a, n)| format!("{a} ({n} octets not acknowledged)"))
                    .collect();
            }
            if left.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                anyhow::bail!(
                    "after {timeout:?} BIRD still exported to {}",
                    left.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop the BIRD lb started: SIGTERM (BIRD closes its sessions with a Cease
    /// notification, so peers withdraw at once), then reap it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Established TCP connections of this network namespace to any of `peers` that hold
/// octets the peer has not acknowledged yet: (peer, octets). From `/proc/net/tcp{,6}`,
/// whose `tx_queue` is what was sent and not yet acknowledged.
fn unacknowledged(peers: &[std::net::IpAddr]) -> Vec<(std::net::IpAddr, u64)> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state), Some(queues)) = (cols.get(2), cols.get(3), cols.get(4))
            else {
                continue;
            };
            // 01: ESTABLISHED.
            if *state != "01" {
                continue;
            }
            let Some(addr) = remote.split(':').next().and_then(proc_net_addr) else {
                continue;
            };
            let tx = queues
                .split(':')
                .next()
                .and_then(|q| u64::from_str_radix(q, 16).ok())
                .unwrap_or(0);
            if tx > 0 && peers.contains(&addr) {
                out.push((addr, tx));
            }
        }
    }
    out
}

/// An address as `/proc/net/tcp{,6}` prints it: the network-order octets read as native
/// 32-bit words, each in hex.
fn proc_net_addr(hex: &str) -> Option<std::net::IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    match hex.len() {
        8 => Some(std::net::Ipv4Addr::from(word(0)?).into()),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(std::net::Ipv6Addr::from(b).into())
        }
        _ => None,
    }
}

/// Write `text` to `path`, readable by root only (it may hold BGP passwords).
fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_decode() {
        // As this (little-endian) machine's kernel prints 127.0.0.1 and ::1.
        #[cfg(target_endian = "little")]
        {
            assert_eq!(
                proc_net_addr("0100007F"),
                Some("127.0.0.1".parse().unwrap())
            );
            assert_eq!(
                proc_net_addr("00000000000000000000000001000000"),
                Some("::1".parse().unwrap())
            );
        }
        assert_eq!(proc_net_addr("zz"), None);
        // The machine's own listening sockets parse, and none is a peer with octets due.
        assert!(unacknowledged(&["198.18.255.254".parse().unwrap()]).is_empty());
    }
}
