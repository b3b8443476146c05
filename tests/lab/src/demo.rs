//! `lb-lab demo`: build the end-to-end network ([`crate::topology`]), drive real traffic through
//! `lb run` and print what happened: an independent HTTP/3 client (aioquic), QUIC connection
//! migration with and without routing by connection ID, HTTP/1.1 over TCP on the same VIP and
//! port, and the daemon's own counters from /metrics.
//!
//! Ends with `demo: OK` (exit 0) or `demo: FAILED: <what>` (exit 1). `--keep` leaves the
//! network and the daemon running and prints how to poke at them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Instant,
};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde_json::Value;

use crate::{
    backend::Whoami,
    topology::{
        self, CLUSTER_IP, Options, POD_CLIENT_ADDR, Topology, VIP_CID, VIP_NOCID, VIP_PORT,
    },
};

/// Arguments of `lb-lab demo`.
#[derive(Args, Debug, Clone)]
#[command(
    about = "Build a client / node / 3-backend network in namespaces, run lb in it and show \
             QUIC migration surviving (and, without CID routing, breaking); needs root",
    after_help = "Prints a report and ends with a line `demo: OK` (exit 0) or `demo: FAILED: \
                  <what>` (exit 1). The aioquic step needs a Python with aioquic: \
                  $LB_DEMO_PYTHON, else .venv/bin/python (`cargo xtask setup` creates it); \
                  without either it is skipped."
)]
pub struct DemoArgs {
    /// Leave the namespaces, the daemon and the backends running, print how to reach them,
    /// and exit without cleaning up.
    #[arg(long)]
    pub keep: bool,
    /// Python interpreter with aioquic, for the independent HTTP/3 client.
    #[arg(long, env = "LB_DEMO_PYTHON", value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Connections per migration probe.
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub connections: usize,
}

/// `lb-lab demo`; returns the exit status.
pub fn run(args: &DemoArgs) -> i32 {
    let started = Instant::now();
    match demo(args) {
        Ok(summary) => {
            println!(
                "demo: OK ({summary}; {:.1}s)",
                started.elapsed().as_secs_f64()
            );
            0
        }
        Err(e) => {
            println!("demo: FAILED: {e:#}");
            1
        }
    }
}

fn demo(args: &DemoArgs) -> Result<String> {
    let lab = std::env::current_exe().context("finding the lb-lab binary")?;
    let lb = lb_binary(&lab)?;
    println!(
        "demo: building the network (client, node with a kube-proxy stand-in, b1..b3, an \
         in-cluster pod) and starting lb run ..."
    );
    let t = Instant::now();
    let topo = Topology::start(&Options {
        lb: lb.clone(),
        lab: lab.clone(),
        prefix: "lbd".into(),
        rust_log: None,
        remove_stale: false,
    })
    .context("starting the topology")?;
    println!(
        "demo: ready in {:.1}s: namespaces client={} node={} backends={}",
        t.elapsed().as_secs_f64(),
        topo.client.name(),
        topo.node.name(),
        topo.backends
            .iter()
            .map(|n| n.name().to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    println!(
        "      VIP {VIP_CID}:{VIP_PORT} tcp+udp, QUIC routed by connection ID -> b1..b3:8443\n      \
         VIP {VIP_NOCID}:{VIP_PORT} udp, quic = false (4-tuple Maglev only) -> b1..b3:8444\n"
    );
    let result = steps(args, &topo);
    if args.keep {
        print_keep(&topo);
        topo.leak();
    } else {
        drop(topo);
    }
    result
}

fn steps(args: &DemoArgs, topo: &Topology) -> Result<String> {
    let mut problems = Vec::new();

    // (a) an independent HTTP/3 client.
    println!("(a) aioquic HTTP/3 client -> https://{VIP_CID}/ (3 requests, a new CID for each)");
    match aioquic(args, topo) {
        Ok(line) => println!("    {line}\n"),
        Err(e) => {
            println!("    FAILED: {e:#}\n");
            problems.push(format!("aioquic: {e:#}"));
        }
    }

    // (b) migration with CID routing.
    let n = args.connections;
    println!(
        "(b) lb-lab probe h3: {n} QUIC connections to {VIP_CID}:{VIP_PORT}, 2 requests, migrate to a \
         new source port, 2 more"
    );
    let cid = probe_h3(topo, VIP_CID, n)?;
    let (cid_mig, cid_surv) = (num(&cid, "migrated"), num(&cid, "survived"));
    println!(
        "    per backend: {}\n    migrations survived: {cid_surv}/{cid_mig}\n",
        per_backend(&cid)
    );
    if cid_mig != n as u64 || cid_surv != cid_mig {
        problems.push(format!(
            "CID-routed VIP: {cid_surv}/{cid_mig} of {n} connections survived migration ({})",
            failures(&cid)
        ));
    }
    if cid["per_backend"].as_object().map_or(0, |m| m.len()) < topology::BACKENDS as usize {
        problems.push(format!(
            "CID-routed VIP: connections reached only {}",
            per_backend(&cid)
        ));
    }

    // (c) HTTP/1.1 over TCP on the same VIP and port.
    println!("(c) lb-lab probe http1: {n} HTTP/1.1 requests over TCP to {VIP_CID}:{VIP_PORT}");
    let http1 = run_json(
        topo.client_lab()?
            .args([
                "probe",
                "http1",
                "--target",
                &format!("{VIP_CID}:{VIP_PORT}"),
            ])
            .args(["--requests", &n.to_string(), "--json"]),
        "lb-lab probe http1",
    )?;
    let ok1 = num(&http1, "succeeded");
    println!(
        "    succeeded: {ok1}/{n}; per backend: {}\n",
        per_backend(&http1)
    );
    if ok1 != n as u64 {
        problems.push(format!(
            "HTTP/1.1: {ok1}/{n} succeeded ({})",
            failures(&http1)
        ));
    }

    // (d) the same migration without CID routing.
    println!(
        "(d) lb-lab probe h3 against {VIP_NOCID}:{VIP_PORT} (quic = false: 4-tuple hashing only)"
    );
    let nocid = probe_h3(topo, VIP_NOCID, n)?;
    let (no_mig, no_surv) = (num(&nocid, "migrated"), num(&nocid, "survived"));
    println!(
        "    per backend: {}\n    migrations survived: {no_surv}/{no_mig} (broken: {})\n",
        per_backend(&nocid),
        no_mig - no_surv.min(no_mig)
    );
    println!("    side by side          survived / migrated");
    println!("    CID routing on  (.100)   {cid_surv:>4} / {cid_mig}");
    println!("    CID routing off (.101)   {no_surv:>4} / {no_mig}\n");
    if no_mig == 0 {
        problems.push(format!(
            "no connection to {VIP_NOCID} got as far as migrating ({})",
            failures(&nocid)
        ));
    }

    // (e) the cluster's own traffic to the same pods, untouched by lb.
    println!(
        "(e) the cluster around lb: the in-cluster pod {POD_CLIENT_ADDR} through the ClusterIP \
         {CLUSTER_IP}:{VIP_PORT} and through the VIP (kube-proxy's nftables path), and \
         kubelet-style probes from the node"
    );
    let mut cluster_ok = 0;
    for target in [CLUSTER_IP, VIP_CID] {
        let v = run_json(
            topo.pod
                .command(&topo.lab)?
                .args([
                    "probe",
                    "http1",
                    "--target",
                    &format!("{target}:{VIP_PORT}"),
                ])
                .args(["--requests", "10", "--json"]),
            "lb-lab probe http1 from the pod",
        )?;
        let ok = num(&v, "succeeded");
        cluster_ok += ok;
        println!(
            "    pod -> {target}:{VIP_PORT}: {ok}/10 over HTTP/1.1; per backend: {}",
            per_backend(&v)
        );
        if ok != 10 {
            problems.push(format!(
                "in-cluster HTTP/1.1 to {target}: {ok}/10 ({})",
                failures(&v)
            ));
        }
    }
    let probes = topo.probes();
    println!(
        "    kubelet-style probes of b1..b3:8443: {}\n",
        probes.summary()
    );
    if !probes.all_ok() {
        problems.push(format!("kubelet-style probes: {}", probes.summary()));
    }

    // (f) the daemon's counters.
    println!("(f) /metrics (lb_* samples that are not zero; served inside the node namespace)");
    match topo.metrics() {
        Ok(text) => {
            let lines: Vec<&str> = topology::nonzero_samples(&text)
                .into_iter()
                .filter(|l| {
                    l.starts_with("lb_vip_packets_total")
                        || l.starts_with("lb_vip_routed_cid_packets_total")
                        || l.starts_with("lb_node_packets_total")
                        || l.starts_with("lb_backend_packets_total")
                        || l.starts_with("lb_rnat_packets_total")
                        || l.starts_with("lb_config_reloads_total")
                        || l.starts_with("lb_vips")
                        || l.starts_with("lb_backends")
                })
                .collect();
            if lines.is_empty() {
                println!("    (no nonzero lb_* samples)");
                problems.push("metrics: no nonzero lb_vip_packets_total samples".into());
            }
            for l in lines {
                println!("    {l}");
            }
            println!();
        }
        Err(e) => {
            println!("    metrics not available: {e:#}\n");
            problems.push(format!("metrics: {e:#}"));
        }
    }

    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(format!(
        "migrations survived: CID routing {cid_surv}/{cid_mig}, 4-tuple only {no_surv}/{no_mig}; \
         HTTP/1.1 {ok1}/{n}; in-cluster {cluster_ok}/20; probes {}",
        probes.summary()
    ))
}

fn probe_h3(topo: &Topology, vip: std::net::Ipv4Addr, n: usize) -> Result<Value> {
    run_json(
        topo.client_lab()?
            .args(["probe", "h3", "--target", &format!("{vip}:{VIP_PORT}")])
            .args(["--insecure", "--connections", &n.to_string()])
            .args(["--requests-per-phase", "2", "--migrate", "--json"]),
        "lb-lab probe h3",
    )
}

/// Run a probe and parse its JSON (exit status 1 only means some connection failed).
pub fn run_json(cmd: &mut Command, what: &str) -> Result<Value> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    parse_json_output(&out, what)
}

pub fn parse_json_output(out: &Output, what: &str) -> Result<Value> {
    if !matches!(out.status.code(), Some(0 | 1)) {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{what} printed no JSON: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn num(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// `b1 11, b2 9, b3 10`.
pub fn per_backend(v: &Value) -> String {
    let m: BTreeMap<String, u64> = v["per_backend"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    if m.is_empty() {
        return "(none)".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Failure kinds and counts, e.g. `backend_changed x19, timeout x1`.
pub fn failures(v: &Value) -> String {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for f in v["failures"].as_array().into_iter().flatten() {
        *kinds
            .entry(f["kind"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    if kinds.is_empty() {
        return "no failures".into();
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{k} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Python interpreter for the aioquic client: given, else a .venv next to us.
fn python(args: &DemoArgs) -> Option<PathBuf> {
    if let Some(p) = &args.python {
        return Some(p.clone());
    }
    [
        PathBuf::from(".venv/bin/python"),
        topology::workspace_path(".venv/bin/python"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

/// tests/python/aioquic_client.py, from the current directory or the source tree.
pub fn aioquic_script() -> Result<PathBuf> {
    [
        PathBuf::from("tests/python/aioquic_client.py"),
        topology::workspace_path("tests/python/aioquic_client.py"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .ok_or_else(|| anyhow!("tests/python/aioquic_client.py not found (run from the workspace)"))
}

/// The whoami answers an aioquic_client.py run printed: (status, body) per request.
pub fn parse_aioquic_output(stdout: &str) -> Result<Vec<(u16, Whoami)>> {
    let mut out = Vec::new();
    for chunk in stdout.split("\n--\n").filter(|c| !c.trim().is_empty()) {
        let status = chunk
            .lines()
            .find_map(|l| l.strip_prefix("status: "))
            .and_then(|s| s.trim().parse::<u16>().ok())
            .ok_or_else(|| anyhow!("no status line in {chunk:?}"))?;
        let who = Whoami::parse(chunk).map_err(|e| anyhow!("{e} in {chunk:?}"))?;
        out.push((status, who));
    }
    Ok(out)
}

/// Run tests/python/aioquic_client.py against `target` in the client namespace.
pub fn aioquic_in(topo: &Topology, python: &Path, requests: u32) -> Result<Vec<(u16, Whoami)>> {
    let script = aioquic_script()?;
    let out = topo
        .client
        .command(python)?
        .arg(&script)
        .args(["--insecure", "--change-cid", "--timeout", "5", "--requests"])
        .arg(requests.to_string())
        .args([&VIP_CID.to_string(), &VIP_PORT.to_string(), "/"])
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "aioquic client failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let answers = parse_aioquic_output(&stdout)?;
    if answers.len() != requests as usize {
        bail!(
            "aioquic client: {} answers for {requests} requests:\n{stdout}",
            answers.len()
        );
    }
    Ok(answers)
}

fn aioquic(args: &DemoArgs, topo: &Topology) -> Result<String> {
    let Some(py) = python(args) else {
        return Ok(
            "skipped: no Python with aioquic (set LB_DEMO_PYTHON or run `cargo xtask \
                   setup`)"
                .into(),
        );
    };
    let answers = aioquic_in(topo, &py, 3)?;
    let names: Vec<&str> = answers.iter().map(|(_, w)| w.name.as_str()).collect();
    if answers.iter().any(|(s, _)| *s != 200) {
        bail!(
            "statuses {:?}",
            answers.iter().map(|a| a.0).collect::<Vec<_>>()
        );
    }
    if names.windows(2).any(|w| w[0] != w[1]) {
        bail!("one connection was answered by several backends: {names:?}");
    }
    let w = &answers[0].1;
    Ok(format!(
        "3 x 200 from {} (server_id {}, protocol {}, client {}), every request on a new \
         connection ID",
        w.name, w.server_id, w.protocol, w.client
    ))
}

/// The `lb` binary the demo runs: `$LB_BIN`, else `lb` beside this `lb-lab` (cargo builds
/// both into one target directory; `cargo xtask demo` builds both).
pub fn lb_binary(lab: &Path) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("LB_BIN") {
        return Ok(PathBuf::from(path));
    }
    let beside = lab.with_file_name("lb");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "the lb binary is not beside {} and $LB_BIN is unset: build it (`cargo build --release \
         -p lb-userspace`, or run `cargo xtask demo`, which builds both) or set LB_BIN",
        lab.display()
    )
}

fn print_keep(topo: &Topology) {
    let (lb, lab) = (topo.lb.display(), topo.lab.display());
    let (c, n) = (topo.client.path(), topo.node.path());
    let (c, n) = (c.display(), n.display());
    let sock = topo.control_socket.display();
    println!("demo: --keep: everything stays up. To poke at it:");
    println!(
        "  nsenter --net={c} {lab} probe h3 --target {VIP_CID}:{VIP_PORT} --insecure --connections 10 --migrate"
    );
    println!(
        "  nsenter --net={c} {lab} probe h3 --target {VIP_NOCID}:{VIP_PORT} --insecure --connections 10 --migrate"
    );
    println!("  nsenter --net={c} {lab} probe http1 --target {VIP_CID}:{VIP_PORT} --requests 10");
    println!(
        "  nsenter --net={n} curl -s http://{}/metrics | grep -v ' 0$'",
        topology::METRICS_ADDR
    );
    println!("  nsenter --net={n} ip -s link; nsenter --net={n} tcpdump -ni n0 port 443");
    println!(
        "  edit {} then: {lb} reload --control-socket {sock}",
        topo.config_path.display()
    );
    println!("  logs: {}/*.log", topo.dir.display());
    let pids: Vec<String> = topo.pids().iter().map(|(_, p)| p.to_string()).collect();
    let mut names = vec![topo.client.name().to_string(), topo.node.name().to_string()];
    names.extend(topo.backends.iter().map(|b| b.name().to_string()));
    println!(
        "  tear down: kill {}; for ns in {}; do ip netns del $ns; done; rm -r {}",
        pids.join(" "),
        names.join(" "),
        topo.dir.display()
    );
    println!("  (`ip netns exec` works too, but remounts /sys; nsenter --net= does not)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_aioquic_output() {
        let out = "name: b1\nserver_id: 0a01\nprotocol: h3\nclient: 198.18.0.2:4000\n\
                   local: 198.19.1.10:8443\npath_changes: 0\nrequests_on_connection: 1\n\
                   method: GET\npath: /\nstatus: 200\ndcid: 0a01aabb\n--\n\
                   name: b1\nserver_id: 0a01\nprotocol: h3\nclient: 198.18.0.2:4000\n\
                   local: unknown\npath_changes: 0\nrequests_on_connection: 2\n\
                   method: GET\npath: /\nstatus: 200\ndcid: 0a01ccdd\n--\n";
        let a = parse_aioquic_output(out).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!((a[1].0, a[1].1.name.as_str()), (200, "b1"));
        assert_eq!(a[1].1.requests_on_connection, 2);
    }

    #[test]
    fn summarises_probe_json() {
        let v: Value = serde_json::from_str(
            r#"{"per_backend": {"b2": 4, "b1": 6},
                "failures": [{"kind": "timeout"}, {"kind": "backend_changed"}, {"kind": "timeout"}]}"#,
        )
        .unwrap();
        assert_eq!(per_backend(&v), "b1 6, b2 4");
        assert_eq!(failures(&v), "backend_changed x1, timeout x2");
    }
}
