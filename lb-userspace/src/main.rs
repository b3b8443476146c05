//! The `lb` command.

use std::{io::Write, path::PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use lb_userspace::{bench, dataplane::Dataplane};

/// lb: a QUIC-aware XDP ingress load balancer.
#[derive(Parser)]
#[command(version, about, long_about = None)]
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
    /// Measure ns/packet of the XDP program through BPF_PROG_TEST_RUN against an empty
    /// program in the same run (needs root; builds a scratch network namespace).
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
        #[arg(long, default_value = lb_userspace::daemon::DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
        /// Enter this network namespace (a name under /run/netns) first.
        #[arg(long)]
        netns: Option<String>,
    },
    /// Print the CustomResourceDefinitions lb uses (IPPool), generated from its types: the
    /// source of deploy/crds/.
    Crds,
    /// Ask a running `lb run` to re-read its config and apply the difference; prints the
    /// outcome (exit 1 if the new config was rejected: the running state is unchanged).
    Reload {
        /// The daemon's control socket.
        #[arg(long, default_value = lb_userspace::daemon::DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    },
    /// Encode or decode QUIC-LB connection IDs (exit 2: bad arguments, 3: unroutable CID).
    Cid(lb_userspace::cid_cli::CidArgs),
    /// Run a whoami HTTP/3 + HTTP/1.1 backend (one address and port) that issues QUIC-LB
    /// connection IDs (exit 2: bad arguments).
    Backend(lb_userspace::backend::BackendArgs),
    /// Probe backends through lb over HTTP/3 (optionally migrating every connection) or
    /// HTTP/1.1, and report who answered (exit 1: a failure, 2: bad arguments).
    Probe(lb_userspace::probe::ProbeArgs),
    /// The end-to-end demo: client, node and three backends in network namespaces, lb run,
    /// real HTTP/3 and HTTP/1.1 traffic and QUIC migration (needs root; exit 1: a failure).
    Demo(lb_userspace::demo::DemoArgs),
}

fn attach(iface: &str, ns: Option<&str>, generic: bool) -> Result<()> {
    // Block SIGINT/SIGTERM from the start and take them with sigwait below: a signal that
    // arrives while loading, or between a check and a wait, is then held rather than lost
    // or fatal, and the program is always detached.
    // SAFETY: plain libc calls on a zeroed sigset_t.
    let signals = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    if let Some(name) = ns {
        enter_netns(name)?;
    }
    let c_iface = std::ffi::CString::new(iface).context("interface name contains a NUL")?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c_iface.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {iface} in this network namespace (see `ip link`)");
    }
    let mut dp = Dataplane::load().context("loading the XDP program")?;
    dp.attach(ifindex, generic).with_context(|| {
        format!(
            "attaching to {iface} in {} mode{}",
            if generic { "generic" } else { "native" },
            if generic {
                ""
            } else {
                " (try --generic if the driver has no native XDP)"
            }
        )
    })?;
    println!(
        "attached lb_xdp to {iface} (ifindex {ifindex}, {} mode)",
        if generic { "generic" } else { "native" }
    );
    std::io::stdout().flush()?;
    let mut sig = 0;
    // SAFETY: waiting on the set blocked above.
    unsafe { libc::sigwait(&signals, &mut sig) };
    dp.detach(ifindex).context("detaching")?;
    println!("detached lb_xdp from {iface}");
    Ok(())
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

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Attach {
            iface,
            netns,
            generic,
        } => attach(&iface, netns.as_deref(), generic),
        Command::Run {
            config,
            kube,
            kubeconfig,
            node_name,
            metrics_addr,
            control_socket,
            netns,
        } => {
            if let Some(name) = netns {
                enter_netns(&name)?;
            }
            let kube = kube.then(|| lb_userspace::kube::controller::KubeOptions {
                kubeconfig,
                node_name: node_name.unwrap_or_default(),
            });
            lb_userspace::daemon::run(lb_userspace::daemon::RunOptions {
                config,
                metrics_addr,
                control_socket,
                kube,
            })
        }
        Command::Crds => {
            print!("{}", lb_userspace::kube::crd::crds_yaml());
            Ok(())
        }
        Command::Reload { control_socket } => {
            if !lb_userspace::daemon::reload(&control_socket)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Bench {
            json,
            repeat,
            rounds,
        } => {
            if repeat == 0 || rounds == 0 {
                bail!("--repeat and --rounds must be at least 1");
            }
            bench::run(&bench::Options {
                json,
                repeat,
                rounds,
            })
        }
        Command::Cid(args) => std::process::exit(lb_userspace::cid_cli::run(
            &args,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )),
        Command::Backend(args) => std::process::exit(lb_userspace::backend::run(&args)),
        Command::Probe(args) => std::process::exit(lb_userspace::probe::run(&args)),
        Command::Demo(args) => std::process::exit(lb_userspace::demo::run(&args)),
    }
}
