//! `cargo xtask demo`: the end-to-end demo (`lb demo`), as root.

use anyhow::Result;

use crate::{
    run::{self, display, status},
    setup::{self, Scope},
};

#[derive(clap::Args)]
pub struct Args {
    /// Leave the namespaces, the daemon and the backends running afterwards and print how to
    /// reach them; passed to `lb demo --keep`
    #[arg(long)]
    keep: bool,
}

pub fn demo(args: &Args) -> Result<()> {
    run::require_root(
        "demo",
        "the demo creates network namespaces and veths and loads and attaches BPF programs, \
         which needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN",
    )?;
    // Everything: the BPF toolchain, the Debian packages, and the .venv with aioquic.
    setup::setup(Scope::Everything)?;
    let mut cmd = run::lb_release("demo");
    if args.keep {
        cmd.arg("--keep");
    }
    cmd.env("LB_DEMO_PYTHON", setup::venv_python());
    println!("demo: {}", display(&cmd));
    status(&mut cmd)
}
