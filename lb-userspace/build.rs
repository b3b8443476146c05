//! Builds the BPF object (lb-ebpf, target bpfel-unknown-none, nightly + bpf-linker) through
//! aya-build and leaves it at OUT_DIR/lb-xdp for `include_bytes!`.
//!
//! Without bpf-linker or nightly's rust-src a plain `cargo check`/`cargo build` still works:
//! it warns, embeds an empty object, and `lb` then refuses to load with a message that says
//! to run `cargo xtask setup` and rebuild.

use std::{env, fs, path::PathBuf, process::Command};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let object = out.join("lb-xdp");
    println!("cargo:rerun-if-env-changed=PATH");
    // aya-build watches lb-ebpf; the BPF object also compiles lb-common.
    println!("cargo:rerun-if-changed=../lb-common/src");
    if let Some(missing) = missing_tool() {
        println!(
            "cargo:warning=lb: building WITHOUT the BPF data plane: {missing}. \
             Run `cargo xtask setup` (installs it), then rebuild."
        );
        fs::write(&object, [])?;
        // Rebuild by itself once the missing piece is installed: `cargo install` adds a file
        // to $CARGO_HOME/bin, and rustup rewrites the toolchain's component list.
        let home = env::var("HOME").unwrap_or_else(|_| "/root".into());
        let cargo_home = env::var("CARGO_HOME").unwrap_or_else(|_| format!("{home}/.cargo"));
        let rustup_home = env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{home}/.rustup"));
        let host = env::var("HOST")?;
        println!("cargo:rerun-if-changed={cargo_home}/bin");
        println!(
            "cargo:rerun-if-changed={rustup_home}/toolchains/nightly-{host}/lib/rustlib/components"
        );
        return Ok(());
    }
    // The manifest directory of this run, not of the build script's compilation
    // (`env!`): worktrees sharing one CARGO_TARGET_DIR share the compiled build script, and a
    // path baked into it would watch another worktree's lb-ebpf for changes.
    let root_dir = format!("{}/../lb-ebpf", env::var("CARGO_MANIFEST_DIR")?);
    let pkg = aya_build::Package {
        name: "lb-ebpf",
        root_dir: &root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([pkg], aya_build::Toolchain::Nightly)
}

/// What the BPF build needs and this machine lacks, if anything.
fn missing_tool() -> Option<String> {
    let on_path = |bin: &str| {
        env::var_os("PATH")
            .map(|p| env::split_paths(&p).any(|d| d.join(bin).is_file()))
            .unwrap_or(false)
    };
    if !on_path("bpf-linker") {
        return Some("bpf-linker is not on PATH (need bpf-linker 0.10.4)".into());
    }
    let rust_src = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output();
    match rust_src {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src")) =>
        {
            None
        }
        Ok(_) => Some("the nightly toolchain has no rust-src component".into()),
        Err(e) => Some(format!(
            "cannot run rustup to check the nightly toolchain: {e}"
        )),
    }
}
