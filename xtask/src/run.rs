//! Running child processes: echo the command, stream its output, turn failure into an error
//! that carries the exit code, plus the few facts about the machine the tasks branch on.

use std::{
    env,
    ffi::{OsStr, OsString},
    fmt, fs,
    io::ErrorKind,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// A child process that ran and exited unsuccessfully. `main` exits with the child's code, so
/// `cargo xtask test` fails the way `cargo test` failed.
#[derive(Debug)]
pub struct CommandFailed {
    pub command: String,
    pub status: ExitStatus,
}

impl fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed ({})", self.command, self.status)
    }
}

impl std::error::Error for CommandFailed {}

/// The workspace root, so the tasks work from any directory the user runs them in.
pub fn workspace_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir).to_path_buf()
}

/// The cargo that runs this xtask (same toolchain), working in the workspace root.
pub fn cargo() -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    cmd
}

/// `cargo +nightly ...`: the `+toolchain` syntax needs rustup's `cargo` proxy from PATH, not
/// the toolchain binary in `$CARGO`.
pub fn cargo_nightly(toolchain: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{toolchain}"));
    cmd
}

/// The command as a user would type it: environment overrides first, program by file name.
pub fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    let program = Path::new(cmd.get_program());
    let program = program.file_name().unwrap_or(program.as_os_str());
    words.push(quote(&program.to_string_lossy()));
    words.extend(cmd.get_args().map(|arg| quote(&arg.to_string_lossy())));
    words.join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=+:@,%^".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with inherited stdout and stderr (streamed, never captured).
pub fn status(cmd: &mut Command) -> Result<()> {
    let command = display(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{command}`"))?;
    if status.success() {
        Ok(())
    } else {
        Err(CommandFailed { command, status }.into())
    }
}

/// Runs `cmd` for a check and returns its stdout; stderr is kept for the error message.
pub fn output(cmd: &mut Command) -> Result<String> {
    let command = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{command}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("`{command}` failed ({}): {}", out.status, stderr.trim_end());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`output`], but a program that is not installed is `Ok(None)`, not an error.
pub fn output_if_installed(cmd: &mut Command) -> Result<Option<String>> {
    match cmd.stdin(Stdio::null()).output() {
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("could not start `{}`", display(cmd))),
        Ok(out) => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
    }
}

/// Effective user ID 0, read from /proc so no libc is needed.
pub fn is_root() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

pub fn require_root(task: &str, why: &str) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    bail!("`cargo xtask {task}` must run as root: {why}. Run it from a root shell (CI does)")
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, else `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home).join("bin"));
    }
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".cargo").join("bin"))
}

/// Puts the cargo bin directory on this process's PATH (first, if it was missing), so every
/// child sees what `cargo install` just installed: rustup's proxies, and `bpf-linker` for the
/// build scripts of the BPF crate.
pub fn ensure_cargo_bin_on_path() {
    let Some(bin) = cargo_bin_dir() else { return };
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| dir == bin) {
        return;
    }
    // A directory name with a PATH separator in it cannot be added; children then see PATH
    // as it was, and setup reports what it cannot find.
    let Ok(joined) = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path))) else {
        return;
    };
    // SAFETY: called first thing in `main`, before this process starts any thread.
    unsafe { env::set_var("PATH", joined) };
}

/// The first executable file called `name` on PATH.
pub fn find_on_path(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name.as_ref()))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// `1m07s`, `42.3s`: for the one-line summaries.
pub fn human_duration(duration: std::time::Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = duration.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// `cargo build --release --package lb-userspace --bin lb`: the `lb` the lab runs (the demo
/// finds it beside `lb-lab`, in the same target directory).
pub fn build_lb_release() -> Command {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "--package",
        "lb-userspace",
        "--bin",
        "lb",
    ]);
    cmd
}

/// `cargo run --release --package lb-lab --bin lb-lab -- SUBCOMMAND`: how xtask runs the lab
/// (the demo, the benchmark).
pub fn lab_release(subcommand: &str) -> Command {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "--package",
        "lb-lab",
        "--bin",
        "lb-lab",
        "--",
        subcommand,
    ]);
    cmd
}
