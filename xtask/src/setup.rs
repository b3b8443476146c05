//! Idempotent machine setup: everything the build and the tests need that a fresh machine of
//! the project's kind lacks. Each check prints one line; only what is missing is installed.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::run::{self, cargo_nightly, display, is_root, output, output_if_installed, status};

/// The toolchain that builds the BPF crate (`-Z build-std=core` needs nightly and rust-src).
pub const NIGHTLY_TOOLCHAIN: &str = "nightly";
/// The LLVM major version of that nightly; bpf-linker must read its bitcode.
pub const NIGHTLY_LLVM_MAJOR: &str = "22";
pub const RUST_SRC_COMPONENT: &str = "rust-src";

pub const BPF_LINKER: &str = "bpf-linker";
/// Exactly this version: it loads nightly's own LLVM 22. Newer releases default to LLVM 23
/// and cannot read this nightly's bitcode.
pub const BPF_LINKER_VERSION: &str = "0.10.4";
/// Fallback when bpf-linker cannot build against the toolchain's LLVM: Debian's LLVM 22.
pub const FALLBACK_LLVM_PACKAGE: &str = "llvm-22-dev";
pub const FALLBACK_LLVM_PREFIX: &str = "/usr/lib/llvm-22";
pub const FALLBACK_BPF_LINKER_FEATURES: &str = "llvm-22";

/// Debian packages the tests use, with what for.
pub const TEST_DEBIAN_PACKAGES: &[(&str, &str)] = &[
    (
        "iproute2",
        "ip: network namespaces, veth, addresses, routes, neighbours; tc",
    ),
    ("ethtool", "turning off checksum offload on test veths"),
    ("iputils-ping", "ping across test namespaces"),
    ("procps", "sysctl"),
    (
        "nftables",
        "nft: the kube-proxy stand-in of the end-to-end lab (kube-proxy's nftables mode)",
    ),
    (
        "bird2",
        "bird: lb's BGP speaker (lb run drives it), and the upstream router of the BGP lab",
    ),
];

/// PyPI packages the tests (and the demo) use, installed into the project-local virtualenv
/// `.venv/` (pinned: the tests parse what this version's API returns).
/// (pip requirement, module to import to check it is there, why).
pub const PYTHON_PACKAGES: &[(&str, &str, &str)] = &[
    (
        "aioquic==1.7.2",
        "aioquic",
        "a real HTTP/3 client for the end-to-end tests",
    ),
    (
        "helm-python-sdk==0.2.2",
        "helm_python",
        "Helm's own template engine, so deploy_manifests renders the chart as `helm template` \
         would (no helm binary is packaged for these registries)",
    ),
    (
        "kubernetes-validate==1.37.0",
        "kubernetes_validate",
        "deploy_manifests validates every manifest and the rendered chart against the schemas \
         of several Kubernetes versions (bundled: 1.25 to 1.37); brings PyYAML and jsonschema, \
         which validate the IPPools against lb's CRD",
    ),
    (
        "checkov==3.3.30",
        "checkov",
        "deploy_manifests runs checkov's Kubernetes policies on deploy/ and the rendered chart",
    ),
];
/// The virtualenv, relative to the workspace root.
pub const VENV_DIR: &str = ".venv";

/// The virtualenv's Python, for `LB_TEST_PYTHON`.
pub fn venv_python() -> std::path::PathBuf {
    crate::run::workspace_root()
        .join(VENV_DIR)
        .join("bin")
        .join("python")
}

/// Create `.venv` (once) and install [`PYTHON_PACKAGES`] into it when an import fails.
fn python_venv(apt: &mut Apt) -> Result<()> {
    let py = venv_python();
    if !py.is_file() {
        println!("setup: creating the Python virtualenv {VENV_DIR}/ (python3 -m venv)");
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(crate::run::workspace_root().join(VENV_DIR))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            // Debian splits venv out of python3.
            apt.install(&["python3-venv"], "python3 -m venv")?;
            crate::run::status(
                Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(crate::run::workspace_root().join(VENV_DIR)),
            )?;
        }
    }
    for (spec, module, why) in PYTHON_PACKAGES {
        let present = Command::new(&py)
            .args(["-c", &format!("import {module}")])
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if present {
            println!("setup: {spec} in {VENV_DIR}: present");
            continue;
        }
        println!("setup: installing {spec} into {VENV_DIR} ({why})");
        crate::run::status(Command::new(&py).args(["-m", "pip", "install", "--quiet", spec]))?;
    }
    Ok(())
}

/// What a task needs set up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Nightly with rust-src and bpf-linker: enough to build the BPF object.
    Build,
    /// Also the Debian packages the tests use.
    Everything,
}

pub fn setup(scope: Scope) -> Result<()> {
    let mut apt = Apt::default();
    nightly_toolchain()?;
    rust_src()?;
    if scope == Scope::Everything {
        debian_packages(&mut apt)?;
        python_venv(&mut apt)?;
    }
    bpf_linker(&mut apt)?;
    println!("setup: done");
    Ok(())
}

fn nightly_toolchain() -> Result<()> {
    // RUSTUP_AUTO_INSTALL=0: a missing nightly is reported, not silently downloaded.
    let version = output(
        Command::new("rustup")
            .args(["run", NIGHTLY_TOOLCHAIN, "rustc", "-vV"])
            .env("RUSTUP_AUTO_INSTALL", "0"),
    )
    .with_context(|| {
        format!(
            "the `{NIGHTLY_TOOLCHAIN}` toolchain is needed to build the BPF programs; install it \
             with `rustup toolchain install {NIGHTLY_TOOLCHAIN} --component {RUST_SRC_COMPONENT}`"
        )
    })?;
    let field = |name: &str| {
        version
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("unknown")
            .to_string()
    };
    let (release, llvm) = (field("release:"), field("LLVM version:"));
    println!("setup: {NIGHTLY_TOOLCHAIN} toolchain: present (rustc {release}, LLVM {llvm})");
    if llvm.split('.').next() != Some(NIGHTLY_LLVM_MAJOR) {
        println!(
            "setup: warning: {NIGHTLY_TOOLCHAIN} has LLVM {llvm}, but {BPF_LINKER} \
             {BPF_LINKER_VERSION} expects LLVM {NIGHTLY_LLVM_MAJOR}; the BPF link may fail"
        );
    }
    Ok(())
}

fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY_TOOLCHAIN,
        "--installed",
    ]))?;
    // rust-src is target-independent, so rustup lists it without a target suffix; accept one.
    let present = installed.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or("");
        name == RUST_SRC_COMPONENT || name.starts_with(&format!("{RUST_SRC_COMPONENT}-"))
    });
    if present {
        println!("setup: {RUST_SRC_COMPONENT} on {NIGHTLY_TOOLCHAIN}: present");
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args([
        "component",
        "add",
        RUST_SRC_COMPONENT,
        "--toolchain",
        NIGHTLY_TOOLCHAIN,
    ])
    .stdin(Stdio::null());
    println!(
        "setup: installing {RUST_SRC_COMPONENT} on {NIGHTLY_TOOLCHAIN} ({})",
        display(&add)
    );
    status(&mut add)
}

fn debian_packages(apt: &mut Apt) -> Result<()> {
    let mut missing = Vec::new();
    for &(package, used_for) in TEST_DEBIAN_PACKAGES {
        let present = dpkg_installed(package)?;
        println!(
            "setup: Debian package {package} ({used_for}): {}",
            if present { "present" } else { "missing" }
        );
        if !present {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    apt.install(&missing, "the tests")?;
    for &package in &missing {
        if !dpkg_installed(package)? {
            bail!("apt-get reported success, but Debian package {package} is still not installed");
        }
    }
    println!("setup: Debian packages {}: installed", missing.join(" "));
    Ok(())
}

/// `dpkg-query` says "install ok installed" for an installed package; it exits non-zero for
/// a package it has never heard of, which is just "not installed".
fn dpkg_installed(package: &str) -> Result<bool> {
    let mut query = Command::new("dpkg-query");
    query
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null());
    match output_if_installed(&mut query)? {
        Some(status) => Ok(status.trim() == "install ok installed"),
        None => bail!(
            "dpkg-query not found: `cargo xtask setup` installs system packages on Debian only; \
             elsewhere install the equivalents of {} yourself",
            TEST_DEBIAN_PACKAGES
                .iter()
                .map(|(package, _)| *package)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// apt-get, with `apt-get update` at most once per setup run, and only when something is
/// actually installed.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn install(&mut self, packages: &[&str], needed_by: &str) -> Result<()> {
        let mut install = apt_get();
        install
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages);
        if !is_root() {
            bail!(
                "the Debian packages {} (for {needed_by}) are missing, and installing them \
                 needs root: run `cargo xtask setup` as root, or `{}` as root",
                packages.join(" "),
                display(&install)
            );
        }
        if !self.updated {
            let mut update = apt_get();
            update.arg("update");
            println!("setup: refreshing the package lists ({})", display(&update));
            status(&mut update)?;
            self.updated = true;
        }
        println!(
            "setup: installing Debian packages {} ({})",
            packages.join(" "),
            display(&install)
        );
        status(&mut install)
    }
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    cmd
}

fn bpf_linker(apt: &mut Apt) -> Result<()> {
    match bpf_linker_on_path() {
        Some((path, version)) if version == BPF_LINKER_VERSION => {
            println!("setup: {BPF_LINKER} {BPF_LINKER_VERSION}: present ({path})");
            return Ok(());
        }
        Some((path, version)) => {
            println!("setup: {BPF_LINKER}: {path} is {version}, {BPF_LINKER_VERSION} is needed")
        }
        None => println!("setup: {BPF_LINKER}: not found on PATH"),
    }

    let crate_spec = format!("{BPF_LINKER}@{BPF_LINKER_VERSION}");
    let mut install = cargo_nightly(NIGHTLY_TOOLCHAIN);
    install
        .args(["install", &crate_spec, "--locked"])
        .stdin(Stdio::null());
    println!(
        "setup: installing {BPF_LINKER} {BPF_LINKER_VERSION} ({}, ~1-4 min)",
        display(&install)
    );
    if let Err(err) = status(&mut install) {
        println!(
            "setup: {BPF_LINKER}: {err:#}; falling back to building it against Debian's \
             {FALLBACK_LLVM_PACKAGE}"
        );
        if dpkg_installed(FALLBACK_LLVM_PACKAGE)? {
            println!("setup: Debian package {FALLBACK_LLVM_PACKAGE}: present");
        } else {
            apt.install(&[FALLBACK_LLVM_PACKAGE], "building bpf-linker")?;
        }
        let mut fallback = cargo_nightly(NIGHTLY_TOOLCHAIN);
        fallback
            .env("LLVM_PREFIX", FALLBACK_LLVM_PREFIX)
            .args([
                "install",
                &crate_spec,
                "--locked",
                "--no-default-features",
                "--features",
                FALLBACK_BPF_LINKER_FEATURES,
            ])
            .stdin(Stdio::null());
        println!(
            "setup: installing {BPF_LINKER} {BPF_LINKER_VERSION} against {FALLBACK_LLVM_PREFIX} \
             ({}, ~1-4 min)",
            display(&fallback)
        );
        status(&mut fallback).with_context(|| {
            format!("could not install {BPF_LINKER} {BPF_LINKER_VERSION}, either way")
        })?;
    }

    let bin_dir = run::cargo_bin_dir()
        .map(|dir| dir.display().to_string())
        .unwrap_or_else(|| "cargo's bin directory".to_string());
    match bpf_linker_on_path() {
        Some((path, version)) if version == BPF_LINKER_VERSION => {
            println!("setup: {BPF_LINKER} {BPF_LINKER_VERSION}: installed ({path})");
            Ok(())
        }
        Some((path, version)) => bail!(
            "installed {BPF_LINKER} {BPF_LINKER_VERSION} into {bin_dir}, but {path} ({version}) \
             comes first on PATH: remove it, or put {bin_dir} first on PATH"
        ),
        None => bail!(
            "installed {BPF_LINKER} {BPF_LINKER_VERSION}, but it is not on PATH; put {bin_dir} \
             on PATH"
        ),
    }
}

/// The `bpf-linker` that PATH resolves to and the version it reports ("bpf-linker 0.10.4").
fn bpf_linker_on_path() -> Option<(String, String)> {
    let path = run::find_on_path(BPF_LINKER)?;
    let shown = path.display().to_string();
    let version = match output(Command::new(&path).arg("--version")) {
        Ok(stdout) => stdout
            .split_whitespace()
            .nth(1)
            .map(str::to_string)
            .unwrap_or_else(|| format!("unrecognised (`--version` printed {:?})", stdout.trim())),
        Err(err) => format!("unusable ({err:#})"),
    };
    Some((shown, version))
}
