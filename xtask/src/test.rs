//! `cargo xtask test`: the whole suite, as root, against the real kernel.

use std::{
    fmt,
    io::{Read as _, Write as _},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result};

use crate::{
    run::{self, CommandFailed, display, human_duration},
    setup::{self, BPF_LINKER, Scope},
};

/// The BPF crate only builds for bpfel-unknown-none (lb-userspace's build script builds it).
const HOST_EXCLUDED_PACKAGE: &str = "lb-ebpf";

#[derive(clap::Args)]
pub struct Args {
    /// Arguments for the test binaries, after `--`: a name filter (`cargo xtask test --
    /// fixture`), `--nocapture`, `--ignored`, ... They follow `--test-threads=1`.
    #[arg(last = true, value_name = "TEST_ARGS")]
    test_args: Vec<String>,
}

pub fn test(args: &Args) -> Result<()> {
    run::require_root(
        "test",
        "the tests load BPF programs and create network namespaces, which needs CAP_BPF and \
         CAP_NET_ADMIN",
    )?;
    setup::setup(Scope::Everything)?;
    // cargo's build scripts (aya-build, then rustc for the BPF target) find the linker on PATH.
    let linker = run::find_on_path(BPF_LINKER).with_context(|| {
        format!("{BPF_LINKER} is not on PATH after setup, so the BPF crate cannot be linked")
    })?;
    println!(
        "test: {BPF_LINKER} for cargo's build scripts: {}",
        linker.display()
    );

    // In order, stopping at the first failure: the lints (seconds once built), the binaries
    // the kernel and end-to-end tests run (`lb`, `lb-lab`), then every test.
    let mut steps = [clippy(), build_binaries(), cargo_test(&args.test_args)];
    let count = steps.len();
    let started = Instant::now();
    let mut totals = Totals::default();
    for (index, step) in steps.iter_mut().enumerate() {
        println!("test: step {}/{count}: {}", index + 1, display(step));
        if let Err(err) = run_counting_tests(step, &mut totals) {
            println!(
                "test: FAILED at step {}/{count} after {}: {totals}",
                index + 1,
                human_duration(started.elapsed())
            );
            return Err(err);
        }
    }
    println!(
        "test: all {count} step(s) passed in {}: {totals}",
        human_duration(started.elapsed())
    );
    Ok(())
}

/// `cargo clippy` over every host package and target (tests, the lab, xtask), warnings
/// denied; `[workspace.lints]` in Cargo.toml says what is denied beyond clippy's defaults.
pub fn clippy() -> Command {
    let mut cmd = run::cargo();
    cmd.args([
        "clippy",
        "--workspace",
        "--exclude",
        HOST_EXCLUDED_PACKAGE,
        "--all-targets",
        "--",
        "--deny",
        "warnings",
    ]);
    cmd
}

/// The `lb` and `lb-lab` binaries the tests in `tests/` start (they find them beside their
/// own `deps/` directory, in the same target directory and profile).
fn build_binaries() -> Command {
    let mut cmd = run::cargo();
    cmd.args([
        "build",
        "--package",
        "lb-userspace",
        "--bin",
        "lb",
        "--package",
        "lb-lab",
        "--bin",
        "lb-lab",
    ]);
    cmd
}

/// Single-threaded: tests share the kernel (network namespaces, interfaces, BPF maps).
fn cargo_test(test_args: &[String]) -> Command {
    let mut cmd = run::cargo();
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        HOST_EXCLUDED_PACKAGE,
        "--",
        "--test-threads=1",
    ])
    .args(test_args)
    .env("RUST_BACKTRACE", "1")
    // The binaries just built, not ones from elsewhere.
    .env_remove("LB_BIN")
    .env_remove("LB_LAB_BIN")
    // The Python of `.venv`: aioquic for the end-to-end tests; Helm's engine,
    // kubernetes-validate and checkov for deploy_manifests.
    .env("LB_TEST_PYTHON", crate::setup::venv_python());
    cmd
}

/// Sums of libtest's `test result:` lines.
#[derive(Default)]
struct Totals {
    binaries: u64,
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// `test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        self.binaries += 1;
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(number)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u64>() else {
                continue;
            };
            match kind {
                "passed" => self.passed += number,
                "failed" => self.failed += number,
                "ignored" => self.ignored += number,
                _ => {}
            }
        }
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tests passed, {} failed, {} ignored across {} test targets",
            self.passed, self.failed, self.ignored, self.binaries
        )
    }
}

/// Runs `cmd`, relaying its stdout byte for byte as it arrives (so a hanging test shows its
/// name) while reading the `test result:` lines; stderr is inherited untouched.
fn run_counting_tests(cmd: &mut Command, totals: &mut Totals) -> Result<()> {
    let command = display(cmd);
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{command}`"))?;
    let mut stdout = child
        .stdout
        .take()
        .context("the child's stdout was not piped")?;
    let mut out = std::io::stdout();
    let mut chunk = [0u8; 8192];
    let mut line = Vec::new();
    loop {
        let read = match stdout.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("reading the tests' output"),
        };
        out.write_all(&chunk[..read])?;
        out.flush()?;
        for &byte in &chunk[..read] {
            if byte == b'\n' {
                totals.add_line(&String::from_utf8_lossy(&line));
                line.clear();
            } else {
                line.push(byte);
            }
        }
    }
    totals.add_line(&String::from_utf8_lossy(&line));
    let status = child
        .wait()
        .with_context(|| format!("could not wait for `{command}`"))?;
    if status.success() {
        Ok(())
    } else {
        Err(CommandFailed { command, status }.into())
    }
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn sums_libtest_result_lines() {
        let mut totals = Totals::default();
        totals.add_line(
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 3 filtered out; \
             finished in 0.01s",
        );
        totals.add_line(
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; \
             finished in 1.50s",
        );
        totals.add_line("running 3 tests");
        assert_eq!(
            (
                totals.binaries,
                totals.passed,
                totals.failed,
                totals.ignored
            ),
            (2, 14, 1, 1)
        );
    }
}
