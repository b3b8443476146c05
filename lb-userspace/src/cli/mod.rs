//! The `lb` command: what an operator runs. One module per subcommand; the binary's `main`
//! only calls [`main`]. (The demo, the whoami backend, the probe and the benchmark are the
//! lab's, `lb-lab`, in `tests/lab/`.)

mod attach;
pub mod cid;
mod crds;
mod reload;
mod run;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// lb: a QUIC-aware XDP ingress load balancer (the daemon and its operator commands).
#[derive(Parser)]
#[command(version, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program (through the kernel verifier) and attach it to an interface until
    /// SIGINT/SIGTERM, then detach. The maps start empty: every packet passes, counted.
    Attach {
        /// Interface to attach to.
        #[arg(long)]
        iface: String,
        /// Enter this network namespace (a name under /run/netns) first.
        #[arg(long)]
        netns: Option<String>,
        /// Use generic (skb) XDP instead of native (driver) mode.
        #[arg(long)]
        generic: bool,
    },
    /// Run the load balancer: validate the config, program the maps, attach XDP (external
    /// interfaces) and the reverse NAT (backend interfaces), answer ARP/NDP for the VIPs,
    /// serve metrics. Static mode: the VIPs are in the config file; SIGHUP or `lb reload`
    /// applies a changed config as a diff (a bad one is rejected and nothing changes).
    /// With --kube: the VIPs come from Services of type LoadBalancer (see deploy/README.md).
    /// SIGINT/SIGTERM detach all.
    Run {
        /// The config file (see deploy/examples/lb.toml; with --kube only node settings and
        /// the [kubernetes] table).
        #[arg(long)]
        config: PathBuf,
        /// Take VIPs from the Kubernetes API server: Services of type LoadBalancer with our
        /// loadBalancerClass, their EndpointSlices, Nodes and IPPools.
        #[arg(long)]
        kube: bool,
        /// Kubeconfig for --kube (default: in-cluster credentials, else $KUBECONFIG);
        /// ignored without --kube.
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// This node's name, as in its Node object (the DaemonSet sets NODE_NAME).
        #[arg(long, env = "NODE_NAME", required_if_eq("kube", "true"))]
        node_name: Option<String>,
        /// Serve /metrics and /status here (overrides metrics_addr in the config).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Unix socket `lb reload` talks to.
        #[arg(long, default_value = crate::daemon::DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
        /// Enter this network namespace (a name under /run/netns) first.
        #[arg(long)]
        netns: Option<String>,
    },
    /// Print the CustomResourceDefinitions lb uses (IPPool, BGPPeer, BGPAdvertisement,
    /// BFDProfile), generated from its types: the source of deploy/crds/.
    Crds,
    /// Ask a running `lb run` to re-read its config and apply the difference; prints the
    /// outcome (exit 1 if the new config was rejected: the running state is unchanged).
    Reload {
        /// The daemon's control socket.
        #[arg(long, default_value = crate::daemon::DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    },
    /// Encode or decode QUIC-LB connection IDs (exit 2: bad arguments, 3: unroutable CID).
    Cid(cid::CidArgs),
}

/// Parse the command line and run the subcommand.
pub fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Attach {
            iface,
            netns,
            generic,
        } => attach::attach(&iface, netns.as_deref(), generic),
        Command::Run {
            config,
            kube,
            kubeconfig,
            node_name,
            metrics_addr,
            control_socket,
            netns,
        } => run::run(run::RunArgs {
            config,
            kube,
            kubeconfig,
            node_name,
            metrics_addr,
            control_socket,
            netns,
        }),
        Command::Crds => crds::crds(),
        Command::Reload { control_socket } => reload::reload(&control_socket),
        Command::Cid(args) => std::process::exit(cid::run(
            &args,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )),
    }
}

/// Move this (single-threaded) process into /run/netns/NAME for good.
fn enter_netns(name: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{name}");
    let f = std::fs::File::open(&path).with_context(|| {
        format!("opening {path}: no network namespace named {name} (see `ip netns list`)")
    })?;
    // SAFETY: setns on a namespace fd we own.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns into {path}"));
    }
    Ok(())
}
