//! The `lb-lab` command: the demo, the whoami backend, the probe and the benchmark.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::{backend, bench, demo, demo_bgp, membership_bench, probe};

/// lb-lab: lb's lab tools (demo, backend, probe, benchmark); the load balancer is `lb`.
#[derive(Parser)]
#[command(version, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whoami HTTP/3 + HTTP/1.1 backend (one address and port) that issues QUIC-LB
    /// connection IDs (exit 2: bad arguments).
    Backend(backend::BackendArgs),
    /// Probe backends through lb over HTTP/3 (optionally migrating every connection) or
    /// HTTP/1.1, and report who answered (exit 1: a failure, 2: bad arguments).
    Probe(probe::ProbeArgs),
    /// The end-to-end demo: a client, a node running `lb run` with a kube-proxy stand-in and
    /// kubelet-style probes, three backends and an in-cluster pod in network namespaces;
    /// real HTTP/3 and HTTP/1.1 traffic and QUIC migration (needs root, and the `lb` binary
    /// next to this one or in $LB_BIN; exit 1: a failure).
    Demo(demo::DemoArgs),
    /// The BGP lab: a BIRD router with ECMP multipath routes (L4 hash) in front of three nodes
    /// running `lb run` with `[bgp]`, then three kube-proxy-style nodes; ECMP reshuffle
    /// survival side by side, TCP after a backend change, BFD failover times (needs root;
    /// exit 1: a failure).
    DemoBgp(demo_bgp::DemoBgpArgs),
    /// Measure ns/packet of the XDP and TC programs through BPF_PROG_TEST_RUN against empty
    /// programs in the same run (needs root; builds a scratch network namespace).
    Bench {
        /// Also write the results as JSON: {"floor_ns": N, "cases": {"<name>": {"ns": N, "ratio": R}}}.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Iterations per BPF_PROG_TEST_RUN call.
        #[arg(long, default_value_t = bench::DEFAULT_REPEAT)]
        repeat: u32,
        /// Rounds per case; the median is reported.
        #[arg(long, default_value_t = bench::DEFAULT_ROUNDS)]
        rounds: u32,
        /// Skip the `_20k` cases (20,000 VIPs programmed and 1,000,000 flows in the
        /// connection table, measured after the others; they add about a minute).
        #[arg(long)]
        no_scale: bool,
    },
    /// Measure the API server load of lb's membership (Lease writes/s and watch events/s)
    /// with simulated nodes against the in-process fake API server, for the Lease as failure
    /// detector (renew 300 ms) and for gossip + kubelet-cadence Leases (renew 10 s). No root.
    BenchMembership {
        /// Node counts to simulate.
        #[arg(long, value_delimiter = ',', default_value = "10,100,500")]
        nodes: Vec<usize>,
        /// Real Lease watches per scenario (every daemon's watch receives the same events; the
        /// total is this sample's rate times the node count).
        #[arg(long, default_value_t = 10)]
        watchers: usize,
        /// Also write the results as JSON: {"membership": [{"design", "nodes", "api_writes_per_s", "watch_events_per_s", ...}]}.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// Parse the command line and run the subcommand.
pub fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Backend(args) => std::process::exit(backend::run(&args)),
        Command::Probe(args) => std::process::exit(probe::run(&args)),
        Command::Demo(args) => std::process::exit(demo::run(&args)),
        Command::DemoBgp(args) => std::process::exit(demo_bgp::run(&args)),
        Command::Bench {
            json,
            repeat,
            rounds,
            no_scale,
        } => {
            if repeat == 0 || rounds == 0 {
                bail!("--repeat and --rounds must be at least 1");
            }
            bench::run(&bench::Options {
                json,
                repeat,
                rounds,
                scale: !no_scale,
            })
        }
        Command::BenchMembership {
            nodes,
            watchers,
            json,
        } => {
            if nodes.contains(&0) || watchers == 0 {
                bail!("--nodes and --watchers must be at least 1");
            }
            membership_bench::run(&membership_bench::Options {
                nodes,
                watchers,
                json,
            })
        }
    }
}
