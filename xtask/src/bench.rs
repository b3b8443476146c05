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
    #[arg(long)]
    no_scale: bool,
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
