//! `cargo xtask lint`: clippy over every host package and target, warnings denied.

use anyhow::Result;

use crate::{
    run::{display, status},
    setup::{self, Scope},
    test,
};

pub fn lint() -> Result<()> {
    // lb-userspace's build script builds the BPF object: nightly, rust-src, bpf-linker.
    setup::setup(Scope::Build)?;
    let mut cmd = test::clippy();
    println!("lint: {}", display(&cmd));
    status(&mut cmd)
}
