//! `cargo xtask bench`: the data-plane benchmark (`lb-lab bench`), built with the release profile.

use std::{env, path::PathBuf};

use anyhow::{Context as _, Result};

use crate::{
    run::{self, display, status},
    setup::{self, Scope},
};

#[derive(clap::Args)]
pub struct Args {
    /// Also write the results as JSON to PATH (a relative PATH is taken from the directory
    /// you run `cargo xtask` in); passed to `lb-lab bench --json`
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// BPF_PROG_TEST_RUN iterations per measurement; passed to `lb-lab bench --repeat` [default:
    /// lb-lab bench's]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    repeat: Option<u32>,
    /// Measurement rounds per case; passed to `lb-lab bench --rounds` [default: lb-lab bench's]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rounds: Option<u32>,
    /// Skip the `_20k` cases (20,000 VIPs and 1,000,000 flows in the maps, measured after
    /// the others); passed to `lb-lab bench --no-scale`
    #[arg(long, conflicts_with = "control_plane")]
    no_scale: bool,
    /// Instead of the data plane, benchmark the Kubernetes control plane: real `lb run
    /// --kube` daemons against the fake API server (`lb-lab bench-control-plane`)
    #[arg(long)]
    control_plane: bool,
    /// With --control-plane: LoadBalancer Services (TCP+UDP 443 each) [default: 10000]
    #[arg(long, value_name = "N", requires = "control_plane")]
    services: Option<usize>,
    /// With --control-plane: endpoints over their EndpointSlices [default: 50000]
    #[arg(long, value_name = "M", requires = "control_plane")]
    endpoints: Option<usize>,
    /// With --control-plane: nodes, one daemon each [default: 3]
    #[arg(long, value_name = "K", requires = "control_plane")]
    nodes: Option<u8>,
    /// With --control-plane: EndpointSlice changes measured per phase [default: 1000]
    #[arg(long, value_name = "N", requires = "control_plane")]
    changes: Option<usize>,
}

/// `--json PATH` for lb-lab. cargo runs in the workspace root: keep a relative path relative
/// to where the user is.
fn json_arg(cmd: &mut std::process::Command, json: Option<&std::path::Path>) -> Result<()> {
    if let Some(json) = json {
        let json = if json.is_absolute() {
            json.to_path_buf()
        } else {
            env::current_dir()
                .context("reading the current directory")?
                .join(json)
        };
        cmd.arg("--json").arg(json);
    }
    Ok(())
}

pub fn bench(args: &Args) -> Result<()> {
    run::require_root(
        "bench",
        "the benchmark loads BPF programs and runs them with BPF_PROG_TEST_RUN, which needs \
         CAP_BPF and CAP_NET_ADMIN",
    )?;
    setup::setup(Scope::Everything)?;
    if args.control_plane {
        return bench_control_plane(args);
    }

    let mut cmd = run::lab_release("bench");
    json_arg(&mut cmd, args.json.as_deref())?;
    if let Some(repeat) = args.repeat {
        cmd.arg("--repeat").arg(repeat.to_string());
    }
    if let Some(rounds) = args.rounds {
        cmd.arg("--rounds").arg(rounds.to_string());
    }
    if args.no_scale {
        cmd.arg("--no-scale");
    }
    println!("bench: {}", display(&cmd));
    status(&mut cmd)
}

/// `cargo xtask bench --control-plane`: the release `lb` (which lb-lab runs in the node
/// namespaces), then `lb-lab bench-control-plane`.
fn bench_control_plane(args: &Args) -> Result<()> {
    let mut build = run::build_lb_release();
    println!("bench: {}", display(&build));
    status(&mut build)?;
    let mut cmd = run::lab_release("bench-control-plane");
    // Not an `lb` from elsewhere: the one just built.
    cmd.env_remove("LB_BIN");
    json_arg(&mut cmd, args.json.as_deref())?;
    if let Some(n) = args.services {
        cmd.arg("--services").arg(n.to_string());
    }
    if let Some(n) = args.endpoints {
        cmd.arg("--endpoints").arg(n.to_string());
    }
    if let Some(n) = args.nodes {
        cmd.arg("--nodes").arg(n.to_string());
    }
    if let Some(n) = args.changes {
        cmd.arg("--changes").arg(n.to_string());
    }
    println!("bench: {}", display(&cmd));
    status(&mut cmd)
}

#[derive(clap::Args)]
pub struct MembershipArgs {
    /// Also write the results as JSON to PATH (relative to where you run `cargo xtask`);
    /// passed to `lb-lab bench-membership --json`
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Node counts to simulate, comma-separated; passed to `lb-lab bench-membership --nodes`
    /// [default: 10,100,500]
    #[arg(long, value_name = "N,N,...")]
    nodes: Option<String>,
    /// Real Lease watches per scenario; passed to `lb-lab bench-membership --watchers`
    /// [default: lb-lab's]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    watchers: Option<u32>,
}

/// `cargo xtask bench-membership`: API writes/s and watch events/s of lb's membership with
/// simulated nodes against the fake API server (`lb-lab bench-membership`, release build).
pub fn bench_membership(args: &MembershipArgs) -> Result<()> {
    // lb-lab links lb-userspace, whose build script builds the BPF object.
    setup::setup(Scope::Build)?;
    let mut cmd = run::lab_release("bench-membership");
    json_arg(&mut cmd, args.json.as_deref())?;
    if let Some(nodes) = &args.nodes {
        cmd.arg("--nodes").arg(nodes);
    }
    if let Some(w) = args.watchers {
        cmd.arg("--watchers").arg(w.to_string());
    }
    println!("bench-membership: {}", display(&cmd));
    status(&mut cmd)
}
