//! `lb-lab demo-bgp`: the BGP lab ([`crate::bgp_lab`]) with lb on every node, then the same
//! lab with kube-proxy-style nodes (the baseline); the ECMP reshuffle survival figures side
//! by side, the TCP survival after a backend change, and the failover times with BFD.
//! `e2e_bgp` runs the same [`measure`] with fewer runs and asserts [`Report::problems`] is
//! empty.
//!
//! Ends with `demo-bgp: OK` (exit 0) or `demo-bgp: FAILED: <what>` (exit 1).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{
    bgp_lab::{
        BACKEND_PORT, BgpLab, HOLD_TIME_S, Mode, NODES, Options, Speaker, Stop, VIP, VIP_PORT,
        WORKER, backends,
    },
    bgp_scenarios::{self, Failover, Moved},
    ecmp_client::{Churn, Client, Flow},
    prober::{PROBE_EVERY, Prober, Tally, Target},
};

/// Bound on opening a connection and its first request.
const OPEN_STEP: Duration = Duration::from_secs(5);
/// The failover bound the lab must meet with BFD.
pub const FAILOVER_BOUND: Duration = Duration::from_secs(1);

/// Arguments of `lb-lab demo-bgp`.
#[derive(Args, Debug, Clone)]
#[command(
    about = "The BGP lab: a BIRD router with ECMP in front of three lb nodes, then of three \
             kube-proxy-style nodes; ECMP reshuffle survival side by side and BFD failover \
             times; needs root",
    after_help = "Ends with a line `demo-bgp: OK` (exit 0) or `demo-bgp: FAILED: <what>` (exit 1)."
)]
pub struct DemoBgpArgs {
    /// Long-lived connections per transport (QUIC and TCP).
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub connections: usize,
    /// Failover measurements per kind (SIGKILL, link down).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub failover_runs: usize,
    /// Let the lab start BIRD beside lb instead of lb's own `[bgp]` speaker.
    #[arg(long)]
    pub lab_speaker: bool,
}

/// What [`measure`] saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Nodes the router sent the first set of long-lived connections to.
    pub spread: BTreeSet<usize>,
    /// The router's next hops for the VIP at the start.
    pub next_hops: Vec<usize>,
    /// Per node, packets lb's XDP program counted for the VIP.
    pub vip_packets: Vec<u64>,
    pub lb_kill: Vec<Moved>,
    pub lb_graceful: Vec<Moved>,
    pub baseline_kill: Vec<Moved>,
    pub baseline_graceful: Vec<Moved>,
    /// Connections alive after the backend change alone (before any reshuffle), of all.
    pub after_reload: (usize, usize),
    pub backend_change: Vec<Moved>,
    pub failovers: Vec<Failover>,
    /// The link-down failover with BFD off (hold timer only).
    pub without_bfd: Option<Failover>,
    pub churn: Churn,
    /// Baseline flows whose masquerading node differs from the router's `ip route get`.
    pub path_mismatches: Vec<String>,
    /// Kubelet-style probes from the worker node to its pods for the whole lb lab: traffic
    /// that is not lb's, which lb (XDP and reverse NAT on that node) must leave alone.
    pub kubelet_probes: Option<Tally>,
}

impl Report {
    /// Every claim the lab makes that did not hold; empty when all did.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let all: Vec<usize> = (0..NODES).collect();
        if self.next_hops != all {
            p.push(format!(
                "router next hops {:?}, not {all:?}",
                self.next_hops
            ));
        }
        if self.spread.len() != NODES {
            p.push(format!("flows went to nodes {:?} only", self.spread));
        }
        if self.vip_packets.len() != NODES || self.vip_packets.contains(&0) {
            p.push(format!(
                "per-node VIP packet counters {:?}",
                self.vip_packets
            ));
        }
        for m in self.lb_kill.iter().chain(&self.lb_graceful) {
            if m.moved() == 0 {
                p.push(format!("lb: {}: no connection moved", m.event));
            }
            if m.moved_ok() != m.moved() || m.alive_after != m.alive_before {
                p.push(format!("lb: {m}: {:?}", m.broken));
            }
        }
        let base_moved: usize = self
            .baseline_kill
            .iter()
            .chain(&self.baseline_graceful)
            .map(Moved::moved)
            .sum();
        let base_ok: usize = self
            .baseline_kill
            .iter()
            .chain(&self.baseline_graceful)
            .map(Moved::moved_ok)
            .sum();
        if base_moved == 0 || base_ok == base_moved {
            p.push(format!(
                "baseline: {base_ok}/{base_moved} moved connections survived: the lab cannot tell lb from kube-proxy"
            ));
        }
        match &self.kubelet_probes {
            Some(t) if t.all_ok() => {}
            Some(t) => p.push(format!(
                "kubelet-style probes from the worker to its pods: {}",
                t.summary()
            )),
            None => p.push("no kubelet-style probes ran beside lb".into()),
        }
        if !self.path_mismatches.is_empty() {
            p.push(format!(
                "the router's `ip route get` disagrees with the node that carried the flow: {:?}",
                self.path_mismatches
            ));
        }
        if self.after_reload.0 != self.after_reload.1 {
            p.push(format!(
                "backend change alone: {}/{} connections alive",
                self.after_reload.0, self.after_reload.1
            ));
        }
        for m in &self.backend_change {
            if m.quic_moved_ok != m.quic_moved {
                p.push(format!("after the backend change: {m}: {:?}", m.broken));
            }
        }
        for f in &self.failovers {
            if f.connect >= FAILOVER_BOUND {
                p.push(format!("failover over {FAILOVER_BOUND:?}: {f}"));
            }
        }
        if let Some(f) = self.without_bfd {
            let hold = Duration::from_secs(HOLD_TIME_S.into());
            if f.connect <= FAILOVER_BOUND || f.connect > hold + FAILOVER_BOUND {
                p.push(format!(
                    "without BFD the failover should take the hold timer ({hold:?}), not {f}"
                ));
            }
        }
        if self.churn.attempted == 0 || self.churn.failed != 0 {
            p.push(format!(
                "graceful withdrawal: {}/{} new connections failed: {:?}",
                self.churn.failed, self.churn.attempted, self.churn.errors
            ));
        }
        p
    }

    /// The figures, side by side.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "ECMP reshuffle, unchanged backends: moved connections that survived (QUIC, TCP)"
        );
        let _ = writeln!(s, "  {:<34} {:>16} {:>16}", "event", "lb", "kube-proxy");
        let frac = |ok: usize, n: usize| format!("{ok}/{n}");
        let rows = self
            .lb_kill
            .iter()
            .chain(&self.lb_graceful)
            .zip(self.baseline_kill.iter().chain(&self.baseline_graceful));
        for (l, b) in rows {
            let _ = writeln!(
                s,
                "  {:<34} {:>7} {:>8} {:>7} {:>8}",
                l.event,
                frac(l.quic_moved_ok, l.quic_moved),
                frac(l.tcp_moved_ok, l.tcp_moved),
                frac(b.quic_moved_ok, b.quic_moved),
                frac(b.tcp_moved_ok, b.tcp_moved)
            );
        }
        let (lm, lo) = sum(self.lb_kill.iter().chain(&self.lb_graceful));
        let (bm, bo) = sum(self.baseline_kill.iter().chain(&self.baseline_graceful));
        let _ = writeln!(
            s,
            "  {:<34} {:>16} {:>16}",
            "all moved connections",
            format!("{lo}/{lm} ({})", pct(lo, lm)),
            format!("{bo}/{bm} ({})", pct(bo, bm))
        );
        let _ = writeln!(
            s,
            "\nECMP reshuffle after adding backend b4 (lb): backend change alone {}/{} alive",
            self.after_reload.0, self.after_reload.1
        );
        for m in &self.backend_change {
            let _ = writeln!(
                s,
                "  {:<34} QUIC {} ({}), TCP {} ({})",
                m.event,
                frac(m.quic_moved_ok, m.quic_moved),
                pct(m.quic_moved_ok, m.quic_moved),
                frac(m.tcp_moved_ok, m.tcp_moved),
                pct(m.tcp_moved_ok, m.tcp_moved)
            );
        }
        let _ = writeln!(
            s,
            "  (a moved TCP flow whose Maglev slot changed misses the connection table on its new node)"
        );
        let _ = writeln!(s, "\nFailover with BFD (100 ms x 3), from the stop:");
        for (k, f) in self.failovers.iter().enumerate() {
            let _ = writeln!(s, "  run {:>2}: {f}", k + 1);
        }
        if let Some(f) = self.without_bfd {
            let _ = writeln!(s, "  without BFD (hold time {HOLD_TIME_S} s): {f}");
        }
        let _ = writeln!(
            s,
            "\nGraceful withdrawal under new connections: {}/{} failed (slowest {} ms)",
            self.churn.failed,
            self.churn.attempted,
            self.churn.slowest.as_millis()
        );
        if let Some(t) = &self.kubelet_probes {
            let _ = writeln!(
                s,
                "Kubelet-style probes from the worker to its pods, beside lb: {}",
                t.summary()
            );
        }
        s
    }
}

fn sum<'a>(ms: impl Iterator<Item = &'a Moved>) -> (usize, usize) {
    ms.fold((0, 0), |(m, o), x| (m + x.moved(), o + x.moved_ok()))
}

fn pct(ok: usize, n: usize) -> String {
    if n == 0 {
        "-".into()
    } else {
        format!("{:.0}%", 100.0 * ok as f64 / n as f64)
    }
}

/// What [`measure`] needs.
#[derive(Clone, Debug)]
pub struct Plan {
    pub lb: PathBuf,
    pub lab: PathBuf,
    pub prefix: String,
    pub speaker: Speaker,
    pub connections: usize,
    pub failover_runs: usize,
    /// Also measure a dead host without BFD (a lab of its own; about 20 s).
    pub without_bfd: bool,
}

fn open(client: &Client, n: usize) -> Result<Vec<Flow>> {
    let flows = client.open(n, n, OPEN_STEP)?;
    let broken: Vec<String> = flows
        .iter()
        .filter_map(|f| {
            f.broken
                .as_ref()
                .map(|b| format!("{:?} {}: {b}", f.proto, f.local))
        })
        .collect();
    if !broken.is_empty() {
        bail!("new connections failed: {broken:?}");
    }
    Ok(flows)
}

/// Run everything: the lb lab, then the baseline lab. `say` gets progress lines.
pub fn measure(plan: &Plan, say: &mut dyn FnMut(&str)) -> Result<Report> {
    let mut r = Report::default();
    let target = SocketAddr::new(IpAddr::V4(VIP), VIP_PORT);
    let n = plan.connections;
    let opts = |mode, suffix: &str, bfd| Options {
        lb: plan.lb.clone(),
        lab: plan.lab.clone(),
        prefix: format!("{}{suffix}", plan.prefix),
        mode,
        speaker: plan.speaker,
        bfd,
        rust_log: None,
    };
    {
        let t = Instant::now();
        let mut lab = BgpLab::start(&opts(Mode::Lb, "l", true)).context("starting the lb lab")?;
        say(&format!(
            "lb lab up in {:.1}s: the router has {VIP}/32 via nodes {:?}",
            t.elapsed().as_secs_f64(),
            lab.next_hops()?.iter().map(|i| i + 1).collect::<Vec<_>>()
        ));
        // The kubelet probes the worker's pods from the node throughout.
        let targets = backends()
            .iter()
            .filter(|b| b.n <= 3)
            .map(|b| Target {
                name: format!("b{}", b.n),
                addr: SocketAddr::new(IpAddr::V4(b.addr), BACKEND_PORT),
            })
            .collect();
        let prober = Prober::start(lab.nodes[WORKER].ns.path(), targets, PROBE_EVERY)
            .context("starting the kubelet-style prober on the worker")?;
        let res = lb_steps(plan, &mut lab, target, n, &mut r, say);
        if let Err(e) = res {
            return Err(e.context(lab.logs()));
        }
        r.kubelet_probes = Some(prober.tally());
    }
    {
        let t = Instant::now();
        let mut lab =
            BgpLab::start(&opts(Mode::Baseline, "b", true)).context("starting the baseline lab")?;
        say(&format!(
            "baseline lab up in {:.1}s",
            t.elapsed().as_secs_f64()
        ));
        if let Err(e) = baseline_steps(&mut lab, target, n, &mut r, say) {
            return Err(e.context(lab.logs()));
        }
    }
    if plan.without_bfd {
        // The same dead host without BFD: only the hold timer notices, which also shows
        // that nothing but BFD noticed it above.
        let mut lab =
            BgpLab::start(&opts(Mode::Lb, "h", false)).context("starting the lab without BFD")?;
        let client = Client::start(&lab.client, target)?;
        match bgp_scenarios::failover(&mut lab, &client, 0, Stop::LinkDown) {
            Ok(f) => {
                say(&format!("without BFD (hold time {HOLD_TIME_S} s): {f}"));
                r.without_bfd = Some(f);
            }
            Err(e) => return Err(e.context(lab.logs())),
        }
    }
    Ok(r)
}

fn lb_steps(
    plan: &Plan,
    lab: &mut BgpLab,
    target: SocketAddr,
    n: usize,
    r: &mut Report,
    say: &mut dyn FnMut(&str),
) -> Result<()> {
    r.next_hops = lab.next_hops()?;
    let client = Client::start(&lab.client, target)?;
    let flows = open(&client, n)?;
    r.spread = bgp_scenarios::nodes_used(&bgp_scenarios::paths(lab, &flows)?);
    r.vip_packets = (0..NODES)
        .map(|i| lab.vip_packets(i))
        .collect::<Result<_>>()?;
    say(&format!(
        "{n} QUIC + {n} TCP connections over nodes {:?}; VIP packets per node {:?}",
        r.spread.iter().map(|i| i + 1).collect::<Vec<_>>(),
        r.vip_packets
    ));
    for how in [Stop::Kill, Stop::Graceful] {
        let m = bgp_scenarios::reshuffle(lab, &client, 1, how)?;
        for x in &m {
            say(&format!("lb: {x}"));
            for b in &x.broken {
                say(&format!("    broken: {b}"));
            }
        }
        match how {
            Stop::Kill => r.lb_kill = m.to_vec(),
            _ => r.lb_graceful = m.to_vec(),
        }
    }
    client.close()?;
    for k in 0..plan.failover_runs {
        for how in [Stop::Kill, Stop::LinkDown] {
            let f = bgp_scenarios::failover(lab, &client, k % NODES, how)?;
            say(&format!("failover: node {}: {f}", k % NODES + 1));
            r.failovers.push(f);
        }
    }
    r.churn = bgp_scenarios::graceful_churn(lab, &client, 0)?;
    say(&format!(
        "graceful withdrawal of node 1 under new connections: {}/{} failed",
        r.churn.failed, r.churn.attempted
    ));
    let flows = open(&client, n)?;
    lab.set_backends(&[1, 2, 3, 4])?;
    let after = client.round(bgp_scenarios::AFTER_EVENT_STEP)?;
    r.after_reload = (after.iter().filter(|f| f.alive()).count(), flows.len());
    r.backend_change = bgp_scenarios::reshuffle(lab, &client, 2, Stop::Kill)?.to_vec();
    for x in &r.backend_change {
        say(&format!("lb after adding b4: {x}"));
        for b in &x.broken {
            say(&format!("    broken: {b}"));
        }
    }
    Ok(())
}

fn baseline_steps(
    lab: &mut BgpLab,
    target: SocketAddr,
    n: usize,
    r: &mut Report,
    say: &mut dyn FnMut(&str),
) -> Result<()> {
    let client = Client::start(&lab.client, target)?;
    let flows = open(&client, n)?;
    // The baseline's backends see the masquerading node: check the router's own answer
    // to "where does this flow go" against it, which is how the lab tells moved flows.
    let paths = bgp_scenarios::paths(lab, &flows)?;
    for (f, p) in flows.iter().zip(&paths) {
        if bgp_scenarios::masquerading_node(f.seen_as) != Some(*p) {
            r.path_mismatches.push(format!(
                "{:?} {}: route get says node {}, backend saw {}",
                f.proto,
                f.local,
                p + 1,
                f.seen_as
            ));
        }
    }
    for how in [Stop::Kill, Stop::Graceful] {
        // Each event on connections that all work: the ones the last event broke are gone.
        open(&client, n)?;
        let m = bgp_scenarios::reshuffle(lab, &client, 1, how)?;
        for x in &m {
            say(&format!("kube-proxy: {x}"));
            for b in x.broken.iter().take(2) {
                say(&format!("    broken: {b}"));
            }
        }
        match how {
            Stop::Kill => r.baseline_kill = m.to_vec(),
            _ => r.baseline_graceful = m.to_vec(),
        }
    }
    Ok(())
}

/// `lb-lab demo-bgp`; returns the exit status.
pub fn run(args: &DemoBgpArgs) -> i32 {
    let started = Instant::now();
    let result = (|| -> Result<Report> {
        let lab = std::env::current_exe().context("finding the lb-lab binary")?;
        let lb = crate::demo::lb_binary(&lab)?;
        println!(
            "demo-bgp: a BIRD router (ECMP, L4 hash) in front of three nodes; lb on each, then \
             kube-proxy-style nodes ..."
        );
        measure(
            &Plan {
                lb,
                lab,
                prefix: "lbg".into(),
                speaker: if args.lab_speaker {
                    Speaker::Lab
                } else {
                    Speaker::Lb
                },
                connections: args.connections,
                failover_runs: args.failover_runs,
                without_bfd: true,
            },
            &mut |line| println!("  {line}"),
        )
    })();
    match result {
        Ok(report) => {
            println!("\n{}", report.render());
            let problems = report.problems();
            if problems.is_empty() {
                println!("demo-bgp: OK ({:.1}s)", started.elapsed().as_secs_f64());
                0
            } else {
                println!("demo-bgp: FAILED: {}", problems.join("; "));
                1
            }
        }
        Err(e) => {
            println!("demo-bgp: FAILED: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(event: &str, quic: (usize, usize), tcp: (usize, usize)) -> Moved {
        Moved {
            event: event.into(),
            quic_moved: quic.1,
            quic_moved_ok: quic.0,
            tcp_moved: tcp.1,
            tcp_moved_ok: tcp.0,
            alive_before: 10,
            alive_after: 10 - (quic.1 - quic.0) - (tcp.1 - tcp.0),
            broken: Vec::new(),
        }
    }

    fn good() -> Report {
        Report {
            spread: (0..NODES).collect(),
            next_hops: (0..NODES).collect(),
            vip_packets: vec![5, 6, 7],
            lb_kill: vec![
                moved("k away", (2, 2), (3, 3)),
                moved("k back", (2, 2), (3, 3)),
            ],
            lb_graceful: vec![moved("g away", (1, 1), (1, 1))],
            baseline_kill: vec![moved("k away", (0, 2), (0, 3))],
            baseline_graceful: vec![moved("g away", (1, 1), (0, 1))],
            after_reload: (10, 10),
            backend_change: vec![moved("b away", (4, 4), (1, 3))],
            failovers: vec![Failover {
                how: Stop::LinkDown,
                route: Duration::from_millis(250),
                connect: Duration::from_millis(260),
            }],
            without_bfd: Some(Failover {
                how: Stop::LinkDown,
                route: Duration::from_millis(7000),
                connect: Duration::from_millis(7010),
            }),
            churn: Churn {
                attempted: 100,
                ..Churn::default()
            },
            path_mismatches: Vec::new(),
            kubelet_probes: Some(Tally {
                probes: 30,
                ..Tally::default()
            }),
        }
    }

    #[test]
    fn problems_name_each_broken_claim() {
        assert_eq!(good().problems(), Vec::<String>::new());
        let render = good().render();
        assert!(render.contains("12/12 (100%)"), "{render}");
        assert!(
            render.contains("2/7 (29%)") || render.contains("1/7 (14%)"),
            "{render}"
        );

        let mut r = good();
        r.lb_kill[0] = moved("k away", (1, 2), (3, 3));
        assert!(r.problems()[0].contains("k away"), "{:?}", r.problems());
        let mut r = good();
        r.baseline_kill[0] = moved("k away", (2, 2), (3, 3));
        r.baseline_graceful[0] = moved("g away", (1, 1), (1, 1));
        assert!(
            r.problems()[0].contains("cannot tell"),
            "{:?}",
            r.problems()
        );
        let mut r = good();
        r.kubelet_probes = Some(Tally {
            probes: 30,
            failed: 1,
            ..Tally::default()
        });
        assert!(r.problems()[0].contains("kubelet"), "{:?}", r.problems());
        r.kubelet_probes = None;
        assert!(r.problems()[0].contains("kubelet"), "{:?}", r.problems());
        let mut r = good();
        r.failovers[0].connect = Duration::from_millis(1200);
        assert!(r.problems()[0].contains("failover"), "{:?}", r.problems());
        let mut r = good();
        r.without_bfd.as_mut().unwrap().connect = Duration::from_millis(300);
        assert!(
            r.problems()[0].contains("without BFD"),
            "{:?}",
            r.problems()
        );
        let mut r = good();
        r.churn.failed = 1;
        assert!(r.problems()[0].contains("graceful"), "{:?}", r.problems());
        let mut r = good();
        r.backend_change[0] = moved("b away", (3, 4), (1, 3));
        assert!(
            r.problems()[0].contains("backend change"),
            "{:?}",
            r.problems()
        );
        let mut r = good();
        r.vip_packets[2] = 0;
        assert!(r.problems()[0].contains("counters"), "{:?}", r.problems());
    }
}
