//! `cargo xtask`: the one place that knows how to set up a machine for lb, build its BPF
//! object, run its kernel test suite, its benchmark and the end-to-end demo.

mod bench;
mod build_ebpf;
mod demo;
mod lint;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::setup::Scope;

/// Tasks for the lb workspace: machine setup, BPF build, lints, kernel tests, benchmark, demo.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    after_help = "Run from anywhere inside the workspace. `setup`, `build-ebpf`, `lint`, `test`, \
                  `bench` and `demo` first check the machine and install only what is missing; `test`, \
                  `bench` and `demo` need root."
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check this machine and install what lb's build and tests need (idempotent)
    #[command(
        long_about = "Check this machine and install what lb's build and tests need. \
        Idempotent: every check prints one line, and only what is missing is installed.\n\n\
        - rust-src on the nightly toolchain (rustup component add rust-src --toolchain nightly)\n\
        - bpf-linker 0.10.4 (cargo +nightly install bpf-linker@0.10.4 --locked, ~1-4 min; if that \
          fails, Debian's llvm-22-dev and a build against /usr/lib/llvm-22)\n\
        - the Debian packages the tests use: iproute2, ethtool, iputils-ping, procps, nftables \
          (apt-get update once, then apt-get install -y --no-install-recommends; needs root)\n\
        - the project's Python virtualenv .venv/ (python3 -m venv, with python3-venv from \
          Debian if needed) with aioquic 1.7.2 and helm-python-sdk 0.2.2 from PyPI\n\n\
        ~/.cargo/bin (or $CARGO_HOME/bin) is put on PATH for every command xtask runs."
    )]
    Setup,

    /// Build lb-userspace, whose build script builds the BPF programs; print where they are
    #[command(
        long_about = "Set up the toolchain (nightly with rust-src, bpf-linker 0.10.4; \
        not the Debian test packages), then `cargo build --package lb-userspace`. Its build \
        script builds lb-ebpf for bpfel-unknown-none with aya-build (nightly, \
        -Z build-std=core, bpf-linker). Prints the path of the BPF object and of the `lb` \
        binary. Does not need root."
    )]
    BuildEbpf(build_ebpf::Args),

    /// Run the whole test suite as root against the real kernel
    #[command(
        long_about = "Run the whole test suite as root against the real kernel. \
        Requires root (the tests load BPF programs and create network namespaces: CAP_BPF, \
        CAP_NET_ADMIN). Runs `cargo xtask setup` first, then, stopping at the first failure:\n\n  \
        cargo clippy --workspace --exclude lb-ebpf --all-targets -- --deny warnings\n  \
        cargo build --package lb-userspace --bin lb --package lb-lab --bin lb-lab\n  \
        RUST_BACKTRACE=1 cargo test --workspace --exclude lb-ebpf -- --test-threads=1 \
        [TEST_ARGS]...\n\n\
        The workspace's test packages (tests/: the kernel and end-to-end tests; tests/lab; \
        tests/fake-apiserver) are not default members, so --workspace is what includes them. \
        Single-threaded because the tests share the kernel (network namespaces, BPF maps). \
        Cargo's output is streamed; a one-line summary ends the run. Exits with the failing \
        command's exit code."
    )]
    Test(test::Args),

    /// Lint every host package and target with clippy, warnings denied (also step 1 of `test`)
    #[command(
        long_about = "Set up the toolchain (the build scripts build the BPF object), then \
        `cargo clippy --workspace --exclude lb-ebpf --all-targets -- --deny warnings`. The \
        workspace lints in Cargo.toml deny `unwrap_used` and `expect_used` outside tests. Does \
        not need root."
    )]
    Lint,

    /// Run the data-plane benchmark (`lb-lab bench`, release build) as root; with
    /// --control-plane, the Kubernetes control plane at scale
    #[command(
        long_about = "Run the data-plane benchmark as root: `cargo xtask setup`, then \
        `cargo run --release --package lb-lab --bin lb-lab -- bench`, forwarding --json, \
        --repeat, --rounds and --no-scale. The `_20k` cases (20,000 VIPs programmed and \
        1,000,000 flows in the connection table) run by default, after the others; \
        --no-scale skips them. Requires root (BPF_PROG_TEST_RUN needs CAP_BPF and \
        CAP_NET_ADMIN).\n\n\
        With --control-plane: `cargo build --release --package lb-userspace --bin lb`, then \
        `cargo run --release --package lb-lab --bin lb-lab -- bench-control-plane`, forwarding \
        --json, --services, --endpoints, --nodes and --changes. Real `lb run --kube` daemons, \
        each in its own network namespace with XDP, against the in-process fake API server: \
        cold start, EndpointSlice change to map update (idle and under 100 changes/s), RSS \
        and CPU, API requests per minute per node, map writes per change, each beside its \
        goal. See docs/control-plane-bench.md. A few minutes at the defaults (10,000 \
        Services, 50,000 endpoints, 3 nodes)."
    )]
    Bench(bench::Args),

    /// The API server load of lb's membership: Lease writes/s and watch events/s at 10, 100
    /// and 500 simulated nodes, before (Lease renewed every 300 ms) and after (gossip, Lease
    /// every 10 s)
    #[command(
        long_about = "Set up the toolchain, then `cargo run --release --package lb-lab --bin \
        lb-lab -- bench-membership`, forwarding --json, --nodes and --watchers. Simulated nodes \
        run the daemon's own Lease renewer against the in-process fake API server, which logs \
        every request and counts the events it sends on watches. Does not need root; takes \
        about three minutes."
    )]
    BenchMembership(bench::MembershipArgs),

    /// The end-to-end demo as root: a client, an lb node and three backends in network
    /// namespaces, real HTTP/3, HTTP/1.1 and QUIC migration through `lb run`
    #[command(
        long_about = "The end-to-end demo as root: `cargo xtask setup` (everything, including \
        the .venv with aioquic), `cargo build --release --package lb-userspace --bin lb`, then \
        `cargo run --release --package lb-lab --bin lb-lab -- demo [--keep]` with \
        LB_DEMO_PYTHON=.venv/bin/python. It builds a client, a node running `lb run` and three \
        backends (`lb-lab backend`) in network namespaces and prints a report: an \
        aioquic HTTP/3 request, 30 QUIC connections migrating with CID routing and without it \
        (side by side), HTTP/1.1 over TCP on the same VIP and port, and the daemon's nonzero \
        metrics. Ends with `demo: OK` or `demo: FAILED: ...`; exits with lb-lab demo's exit code. \
        With --keep everything stays up and the demo prints how to reach it. \
        With --bgp it runs `lb-lab demo-bgp` instead: a BIRD router with ECMP multipath routes \
        in front of three nodes running `lb run` with `[bgp]`, then three kube-proxy-style nodes; \
        it prints the ECMP reshuffle survival figures side by side, TCP survival after a backend \
        change and ten BFD failover times, and ends with `demo-bgp: OK` or `demo-bgp: FAILED: ...`."
    )]
    Demo(demo::Args),
}

fn main() -> ExitCode {
    // Before anything else, so every child process inherits it.
    run::ensure_cargo_bin_on_path();
    let cli = Cli::parse();
    let result = match &cli.task {
        Task::Setup => setup::setup(Scope::Everything),
        Task::BuildEbpf(args) => build_ebpf::build_ebpf(args),
        Task::Test(args) => test::test(args),
        Task::Lint => lint::lint(),
        Task::Bench(args) => bench::bench(args),
        Task::BenchMembership(args) => bench::bench_membership(args),
        Task::Demo(args) => demo::demo(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            // A failed child's own exit code (cargo test's 101, say), else 1.
            let code = err
                .downcast_ref::<run::CommandFailed>()
                .and_then(|failed| failed.status.code())
                .and_then(|code| u8::try_from(code).ok())
                .filter(|&code| code != 0)
                .unwrap_or(1);
            ExitCode::from(code)
        }
    }
}
