//! The one support module of the kernel and end-to-end tests (every test file says
//! `mod support;`): where the binaries under test are (`lb`, `lb-lab`), the
//! BPF_PROG_TEST_RUN fixture harness (`fixture`), and `lb-lab backend` processes and
//! keep-alive HTTP/1.1 clients (`lab_process`). Each test binary uses a different part of it.
#![allow(dead_code)]

pub mod capture;
pub mod fixture;
pub mod lab_process;

use std::{path::PathBuf, sync::OnceLock};

/// The `lb` binary under test: `$LB_BIN`, else `lb` in the cargo target directory these
/// tests were built into. `cargo xtask test` builds it just before the tests (and unsets
/// `$LB_BIN`, so the one it built is the one tested).
pub fn lb() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| locate("LB_BIN", "lb"))
}

/// The `lb-lab` binary (the whoami backend, the probe): `$LB_LAB_BIN`, else `lb-lab` in the
/// cargo target directory. `cargo xtask test` builds it just before the tests (and unsets
/// `$LB_LAB_BIN`).
pub fn lab() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| locate("LB_LAB_BIN", "lb-lab"))
}

/// `$var` if set; else `name` next to the target directory's `deps/`, where this test binary
/// is. Panics (failing the test that needs it) with what to do when neither exists.
fn locate(var: &str, name: &str) -> String {
    if let Some(path) = std::env::var_os(var) {
        return path.to_string_lossy().into_owned();
    }
    let beside_deps: Option<PathBuf> = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join(name)));
    match beside_deps {
        Some(path) if path.is_file() => path.to_string_lossy().into_owned(),
        _ => panic!(
            "the `{name}` binary under test was not found: set ${var}, or run the tests through \
             `cargo xtask test` (which builds lb and lb-lab first), or `cargo build -p \
             lb-userspace -p lb-lab` before `cargo test -p lb-tests`"
        ),
    }
}

/// The Python that has `module` (aioquic, for the end-to-end tests that drive a real QUIC
/// peer): `$LB_TEST_PYTHON` (`cargo xtask test` sets it), else the project's `.venv` that
/// `cargo xtask setup` creates. A test that needs it fails, saying how to get it, rather than
/// skip: a peer that silently did not run proves nothing.
pub fn python_with(module: &str) -> PathBuf {
    let repo_venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let python = std::env::var_os("LB_TEST_PYTHON").map_or(repo_venv, PathBuf::from);
    let imports = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output();
    match imports {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "{} cannot import {module} (run `cargo xtask setup`, or set $LB_TEST_PYTHON to a \
             Python that has it): {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run {} ({e}): run `cargo xtask setup` (it creates .venv with {module}), or \
             set $LB_TEST_PYTHON",
            python.display()
        ),
    }
}
