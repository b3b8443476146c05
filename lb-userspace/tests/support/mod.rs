//! Test support shared by the integration tests that start real `lb backend` processes
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

/// A running `lb backend`, killed on drop.
pub struct Running {
    pub child: Child,
    pub addr: SocketAddr,
    pub fingerprint: String,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lb"));
        cmd.arg("backend")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn lb backend");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let (mut pipe, stderr) = (child.stderr.take().unwrap(), stderr.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stderr
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
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
                    "lb backend printed no line in {STEP:?} ({e}); stderr:\n{}",
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
            assert!(Instant::now() < deadline, "lb backend ignored SIGTERM");
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
