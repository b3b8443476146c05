//! `cargo xtask build-ebpf`: set up the toolchain, build `lb-userspace` (its build script
//! builds the BPF crate through aya-build), and say where the BPF object and `lb` ended up.

use std::{
    collections::HashMap,
    fs,
    io::{BufReader, Read as _},
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    run::{self, CommandFailed, display},
    setup::{self, Scope},
};

const USERSPACE_PACKAGE: &str = "lb-userspace";
const USERSPACE_BINARY: &str = "lb";
/// `e_machine` of a BPF ELF object.
const EM_BPF: u16 = 247;

#[derive(clap::Args)]
pub struct Args {
    /// Build lb-userspace with the release profile (the BPF object itself is always built
    /// optimised by aya-build)
    #[arg(long)]
    release: bool,
}

pub fn build_ebpf(args: &Args) -> Result<()> {
    setup::setup(Scope::Build)?;

    let mut build = run::cargo();
    build.args(["build", "--package", USERSPACE_PACKAGE]);
    if args.release {
        build.arg("--release");
    }
    // JSON on stdout tells us the build script's OUT_DIR and the binary's path; cargo still
    // renders its progress and every diagnostic to stderr as usual.
    build
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    let command = display(&build);
    println!("build-ebpf: {command}");
    let mut child = build
        .spawn()
        .with_context(|| format!("could not start `{command}`"))?;
    let stdout = child
        .stdout
        .take()
        .context("cargo's stdout was not piped")?;
    let found = Artifacts::read(BufReader::new(stdout))?;
    let status = child
        .wait()
        .with_context(|| format!("could not wait for `{command}`"))?;
    if !status.success() {
        return Err(CommandFailed { command, status }.into());
    }

    let Some(out_dir) = found.userspace_out_dir() else {
        bail!(
            "`{command}` succeeded but ran no build script for {USERSPACE_PACKAGE}, so no BPF \
             object was built: {USERSPACE_PACKAGE}/build.rs must build lb-ebpf with aya-build"
        );
    };
    let objects = bpf_objects(&out_dir)?;
    if objects.is_empty() {
        bail!(
            "`{command}` succeeded but {} holds no BPF object: {USERSPACE_PACKAGE}/build.rs must \
             build lb-ebpf with aya-build (and AYA_BUILD_SKIP must be unset)",
            out_dir.display()
        );
    }
    for object in &objects {
        let size = fs::metadata(object).map(|m| m.len()).unwrap_or(0);
        println!(
            "build-ebpf: BPF object: {} ({size} bytes)",
            object.display()
        );
    }
    match &found.userspace_binary {
        Some(binary) => println!(
            "build-ebpf: {USERSPACE_BINARY} binary: {}",
            binary.display()
        ),
        None => println!("build-ebpf: cargo reported no `{USERSPACE_BINARY}` binary"),
    }
    Ok(())
}

/// What cargo's JSON messages say about lb-userspace.
#[derive(Default)]
struct Artifacts {
    /// package_id → OUT_DIR, for every build script that ran (or was fresh).
    out_dirs: HashMap<String, PathBuf>,
    userspace_package_id: Option<String>,
    userspace_binary: Option<PathBuf>,
}

impl Artifacts {
    fn read(stdout: impl std::io::BufRead) -> Result<Self> {
        let manifest = run::workspace_root()
            .join(USERSPACE_PACKAGE)
            .join("Cargo.toml");
        let mut found = Self::default();
        for line in stdout.lines() {
            let line = line.context("reading cargo's output")?;
            let Ok(message) = serde_json::from_str::<Value>(&line) else {
                // Not a cargo message: pass it on rather than swallow it.
                println!("{line}");
                continue;
            };
            let text = |key: &str| message.get(key).and_then(Value::as_str);
            match text("reason") {
                Some("build-script-executed") => {
                    if let (Some(id), Some(out_dir)) = (text("package_id"), text("out_dir")) {
                        found
                            .out_dirs
                            .insert(id.to_string(), PathBuf::from(out_dir));
                    }
                }
                Some("compiler-artifact")
                    if text("manifest_path").map(Path::new) == Some(manifest.as_path()) =>
                {
                    found.userspace_package_id = text("package_id").map(str::to_string);
                    let target = &message["target"];
                    let is_bin = target["kind"]
                        .as_array()
                        .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
                    if is_bin && target["name"] == USERSPACE_BINARY {
                        found.userspace_binary = text("executable").map(PathBuf::from);
                    }
                }
                _ => {}
            }
        }
        Ok(found)
    }

    fn userspace_out_dir(&self) -> Option<PathBuf> {
        self.out_dirs
            .get(self.userspace_package_id.as_deref()?)
            .cloned()
    }
}

/// The BPF ELF objects aya-build copied into OUT_DIR (its own target dir lives in a
/// subdirectory, which is not searched).
fn bpf_objects(out_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut objects = Vec::new();
    let entries =
        fs::read_dir(out_dir).with_context(|| format!("listing {}", out_dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_file() && is_bpf_elf(&path) {
            objects.push(path);
        }
    }
    objects.sort();
    Ok(objects)
}

fn is_bpf_elf(path: &Path) -> bool {
    let mut header = [0u8; 20];
    let Ok(mut file) = fs::File::open(path) else {
        return false;
    };
    if file.read_exact(&mut header).is_err() || &header[..4] != b"\x7fELF" {
        return false;
    }
    let machine = [header[18], header[19]];
    let machine = match header[5] {
        1 => u16::from_le_bytes(machine),
        2 => u16::from_be_bytes(machine),
        _ => return false,
    };
    machine == EM_BPF
}
