//! `cargo xtask demo`: the end-to-end demo (`lb-lab demo`, which runs `lb`), as root; with
//! `--bgp`, the BGP/ECMP lab (`lb-lab demo-bgp`).

use anyhow::Result;

use crate::{
    run::{self, display, status},
    setup::{self, Scope},
};

#[derive(clap::Args)]
pub struct Args {
    /// Leave the namespaces, the daemon and the backends running afterwards and print how to
    /// reach them; passed to `lb-lab demo --keep`
    #[arg(long)]
    keep: bool,
    /// Run the BGP lab instead (`lb-lab demo-bgp`): a BIRD router with ECMP in front of three
    /// lb nodes, then three kube-proxy-style nodes; survival figures side by side and BFD
    /// failover times
    #[arg(long, conflicts_with = "keep")]
    bgp: bool,
}

pub fn demo(args: &Args) -> Result<()> {
    run::require_root(
        "demo",
        "the demo creates network namespaces and veths and loads and attaches BPF programs, \
         which needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN",
    )?;
    // Everything: the BPF toolchain, the Debian packages, and the .venv with aioquic.
    setup::setup(Scope::Everything)?;
    // The demo runs the `lb` beside `lb-lab` in the same target directory: build it first.
    let mut build = run::build_lb_release();
    println!("demo: {}", display(&build));
    status(&mut build)?;
    let mut cmd = run::lab_release(if args.bgp { "demo-bgp" } else { "demo" });
    // Not an `lb` from elsewhere: the one just built.
    cmd.env_remove("LB_BIN");
    if args.keep {
        cmd.arg("--keep");
    }
    cmd.env("LB_DEMO_PYTHON", setup::venv_python());
    println!("demo: {}", display(&cmd));
    status(&mut cmd)
}
