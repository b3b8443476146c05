//! Test support shared by the integration tests that start real `lb-lab backend` processes
//! (`backend.rs`, `probe.rs`): start one, read its banner (address and certificate
//! fingerprint), keep its stderr, stop it.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

/// Bound on each step; on loopback each takes milliseconds.
pub const STEP: Duration = Duration::from_secs(10);

/// A running `lb-lab backend`, killed on drop.
pub struct Running {
    pub child: Child,
    pub addr: SocketAddr,
    pub fingerprint: String,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut cmd = Command::new(super::lab());
        cmd.arg("backend")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn lb-lab backend");
        let stderr = Arc::new(Mutex::new(String::new()));
        collect_stderr(child.stderr.take().unwrap(), Arc::clone(&stderr));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let next = || {
            rx.recv_timeout(STEP).unwrap_or_else(|e| {
                panic!(
                    "lb-lab backend printed no line in {STEP:?} ({e}); stderr:\n{}",
                    stderr.lock().unwrap()
                )
            })
        };
        let first = next();
        let addr = first
            .strip_prefix("listening on ")
            .and_then(|r| r.strip_suffix(" (h3+http/1.1)"))
            .unwrap_or_else(|| panic!("first line: {first:?}"))
            .parse()
            .unwrap();
        let second = next();
        let fingerprint = second
            .strip_prefix("certificate sha256 ")
            .unwrap_or_else(|| panic!("second line: {second:?}"))
            .to_string();
        assert_eq!(fingerprint.len(), 64);
        Running {
            child,
            addr,
            fingerprint,
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM, then the exit status (within STEP).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "lb-lab backend ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 keep-alive connection from inside a network namespace: one TCP flow that
/// lives across reloads, endpoint changes and failovers, to see who still answers it.
pub struct KeepAlive {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
    to: SocketAddr,
}

impl KeepAlive {
    pub fn open(ns: &lb_lab::netns::NetNs, to: SocketAddr) -> KeepAlive {
        let stream = ns
            .run_in(|| std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)))
            .unwrap()
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.set_nodelay(true);
        KeepAlive {
            stream,
            buf: Vec::new(),
            to,
        }
    }

    /// Shorten how long a request waits for its answer (default 5 s).
    pub fn set_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).unwrap();
    }

    /// GET on this connection (keep-alive); the whoami answer.
    pub fn get(&mut self) -> Result<lb_lab::backend::Whoami, String> {
        use std::io::Write as _;
        write!(
            self.stream,
            "GET /keepalive HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.to
        )
        .map_err(|e| format!("sending: {e}"))?;
        let mut chunk = [0u8; 4096];
        let stream = &mut self.stream;
        let mut read = |buf: &mut Vec<u8>| -> Result<(), String> {
            match stream.read(&mut chunk) {
                Ok(0) => Err("connection closed".into()),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    Ok(())
                }
                Err(e) => Err(format!("receiving: {e}")),
            }
        };
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            read(&mut self.buf)?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        if !head.starts_with("HTTP/1.1 200 ") {
            return Err(format!("response {head:?}"));
        }
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
        while self.buf.len() < end + len {
            read(&mut self.buf)?;
        }
        let body = String::from_utf8_lossy(&self.buf[end..end + len]).to_string();
        self.buf.drain(..end + len);
        lb_lab::backend::Whoami::parse(&body).map_err(|e| format!("{e}: {body:?}"))
    }
}

/// Append everything a child writes to `pipe` to `into`, on a thread of its own (so a chatty
/// child never blocks on a full pipe), until the child closes it.
pub fn collect_stderr(
    mut pipe: std::process::ChildStderr,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}
