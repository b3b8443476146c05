//! The `lb-lab` command: the demo, the whoami backend, the probe and the benchmark.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::{backend, bench, control_plane_bench, demo, demo_bgp, membership_bench, probe};

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
    /// The Kubernetes control plane at scale: real `lb run --kube` daemons, each in its own
    /// network namespace with XDP, against the in-process fake API server with many
    /// LoadBalancer Services; cold start, EndpointSlice change to map update (idle and under
    /// load), RSS and CPU, API requests, map writes per change (needs root; the `lb` binary
    /// beside this one or in $LB_BIN).
    BenchControlPlane {
        /// LoadBalancer Services, each with TCP 443 and UDP 443 (two VIPs).
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        /// Endpoints, spread evenly over the Services' EndpointSlices.
        #[arg(long, default_value_t = 50_000)]
        endpoints: usize,
        /// Nodes, each running one daemon.
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        /// EndpointSlice changes measured per phase (idle, busy).
        #[arg(long, default_value_t = 1000)]
        changes: usize,
        /// Other EndpointSlice changes per second during the busy phase.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Seconds of the steady-state windows (API requests, CPU).
        #[arg(long, default_value_t = 30)]
        window: u64,
        /// Services kept for a second steady-state window (the API request rate must not
        /// depend on the Service count); 0 skips it. Default: a tenth of --services.
        #[arg(long)]
        small: Option<usize>,
        /// Fail if the cold start takes longer than this many seconds.
        #[arg(long, default_value_t = 120)]
        cold_start_limit: u64,
        /// Also write the results as JSON (one object: services, endpoints, vips_programmed,
        /// cold_start_s, update_p50_ms_idle, update_p99_ms_idle, update_p99_ms_busy, rss_mb,
        /// api_requests_per_min_per_node, map_writes_per_change, nodes, ...).
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
        Command::BenchControlPlane {
            services,
            endpoints,
            nodes,
            changes,
            rate,
            window,
            small,
            cold_start_limit,
            json,
        } => control_plane_bench::run(&control_plane_bench::Options {
            services,
            endpoints,
            nodes,
            changes,
            rate,
            window: std::time::Duration::from_secs(window),
            small: small.unwrap_or(services / 10),
            cold_start_limit: std::time::Duration::from_secs(cold_start_limit),
            lb: None,
            json,
        })
        .map(|_| ()),
    }
}
