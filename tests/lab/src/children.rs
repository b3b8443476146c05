//! The lab's child processes (backends, `lb run`, helpers): each started with its stdout and
//! stderr in one log file, and waited for by a line it prints when ready. Shared by the demo's
//! topology and the end-to-end tests' own networks.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A started child and where its output goes.
pub struct Proc {
    /// Its name in logs and errors (`lb-run`, `backend-b1`, ...).
    pub what: String,
    pub child: Child,
    /// `<dir>/<what>.log`: stdout and stderr together.
    pub log: PathBuf,
}

impl Proc {
    /// Start `cmd` with stdin closed, stdout and stderr into `<dir>/<what>.log`, and
    /// `RUST_LOG=rust_log`.
    pub fn spawn(dir: &Path, what: &str, mut cmd: Command, rust_log: &str) -> Result<Proc> {
        let log = dir.join(format!("{what}.log"));
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env("RUST_LOG", rust_log);
        let program = Path::new(cmd.get_program()).display().to_string();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {what} ({program})"))?;
        Ok(Proc {
            what: what.to_string(),
            child,
            log,
        })
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Poll the log until a line starts with `marker`; an error with the output if the child
    /// exits first or `deadline` passes.
    pub fn wait_for_line(&mut self, marker: &str, deadline: Instant) -> Result<()> {
        loop {
            let text = self.output();
            if text.lines().any(|l| l.starts_with(marker)) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before printing {marker:?}; its output:\n{text}",
                    self.what
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not print {marker:?} in time; its output so far:\n{text}",
                    self.what
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}
