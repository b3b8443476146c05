//! What `e2e_bgp` asserts and `lb-lab demo-bgp` prints, measured on a [`BgpLab`] with an
//! [`ecmp_client::Client`] in its client namespace:
//!
//! - [`reshuffle`]: established connections while one node stops advertising (killed, or
//!   withdrawn gracefully) and comes back: which ones the router moved to another node (from
//!   its kernel's own multipath choice, `ip route get` with the ports, before and after), and
//!   which of those still work.
//! - [`failover`]: from stopping a node (SIGKILL, or its link down: only BFD notices) to the
//!   router's route losing it and to the first new connection that succeeds from a source
//!   port that hashed to that node.
//! - [`graceful_churn`]: new connections opened back to back while a node withdraws
//!   gracefully and comes back.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    bgp_lab::{BgpLab, CLIENT, NODES, Stop},
    ecmp_client::{Churn, Client, Flow, Proto},
};

/// Bound on one request of a long-lived connection after an event: long enough for TCP's and
/// QUIC's retransmissions across the moment the route changes.
pub const AFTER_EVENT_STEP: Duration = Duration::from_secs(5);
/// Bound on the router converging after an event.
const CONVERGE: Duration = Duration::from_secs(20);

/// Connections the router moved in one event, and how many of them still work.
#[derive(Clone, Debug, Default)]
pub struct Moved {
    pub event: String,
    pub quic_moved: usize,
    pub quic_moved_ok: usize,
    pub tcp_moved: usize,
    pub tcp_moved_ok: usize,
    /// Every connection alive before the event, and how many of them after.
    pub alive_before: usize,
    pub alive_after: usize,
    /// Why moved connections broke (the first few).
    pub broken: Vec<String>,
}

impl Moved {
    pub fn moved(&self) -> usize {
        self.quic_moved + self.tcp_moved
    }
    pub fn moved_ok(&self) -> usize {
        self.quic_moved_ok + self.tcp_moved_ok
    }
}

impl fmt::Display for Moved {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{}: moved QUIC {}/{} survived, moved TCP {}/{} survived (all connections {}/{})",
            self.event,
            self.quic_moved_ok,
            self.quic_moved,
            self.tcp_moved_ok,
            self.tcp_moved,
            self.alive_after,
            self.alive_before
        )
    }
}

/// The node the router sends each flow to.
pub fn paths(lab: &BgpLab, flows: &[Flow]) -> Result<Vec<usize>> {
    flows
        .iter()
        .map(|f| lab.path_of(f.proto.l4(), f.local))
        .collect()
}

/// Every node some flow goes through.
pub fn nodes_used(paths: &[usize]) -> BTreeSet<usize> {
    paths.iter().copied().collect()
}

/// The node whose address a masquerading node gave the flow (the baseline's backends see
/// the DNAT node's uplink or pod-side address), if it is one.
pub fn masquerading_node(seen_as: SocketAddr) -> Option<usize> {
    let IpAddr::V4(a) = seen_as.ip() else {
        return None;
    };
    let o = a.octets();
    (o[0] == 198 && (o[1] == 18 || o[1] == 19) && o[3] == 1 && (1..=NODES as u8).contains(&o[2]))
        .then(|| usize::from(o[2] - 1))
}

fn tally(event: &str, before: &[Flow], from: &[usize], to: &[usize], after: &[Flow]) -> Moved {
    let mut m = Moved {
        event: event.to_string(),
        ..Moved::default()
    };
    for (k, f) in before.iter().enumerate() {
        if !f.alive() {
            continue;
        }
        m.alive_before += 1;
        let ok = after[k].alive();
        m.alive_after += usize::from(ok);
        if from[k] == to[k] {
            continue;
        }
        match f.proto {
            Proto::Quic => {
                m.quic_moved += 1;
                m.quic_moved_ok += usize::from(ok);
            }
            Proto::Tcp => {
                m.tcp_moved += 1;
                m.tcp_moved_ok += usize::from(ok);
            }
        }
        if let (false, Some(why)) = (ok, &after[k].broken)
            && m.broken.len() < 5
        {
            m.broken.push(format!(
                "{:?} {} node {} -> {}: {why}",
                f.proto,
                f.local,
                from[k] + 1,
                to[k] + 1
            ));
        }
    }
    m
}

/// Requests on every connection after an event: two rounds, so a connection that answered
/// once by luck (a retransmission that got through before the move) is asked again.
fn settle(client: &Client) -> Result<Vec<Flow>> {
    client.round(AFTER_EVENT_STEP)?;
    client.round(AFTER_EVENT_STEP)
}

/// Node `node` stops advertising (`how`), then comes back: the connections the router moved
/// away, then back.
pub fn reshuffle(lab: &mut BgpLab, client: &Client, node: usize, how: Stop) -> Result<[Moved; 2]> {
    let name = match how {
        Stop::Kill => "SIGKILL",
        Stop::Graceful => "graceful withdrawal",
        Stop::LinkDown => "link down",
    };
    let before = client.round(AFTER_EVENT_STEP)?;
    let p0 = paths(lab, &before)?;
    lab.stop_node(node, how)?;
    lab.wait_next_hops_without(node, Instant::now() + CONVERGE)?;
    let p1 = paths(lab, &before)?;
    let mid = settle(client)?;
    let away = tally(
        &format!("node {} {name}: away", node + 1),
        &before,
        &p0,
        &p1,
        &mid,
    );
    lab.restore_node(node)?;
    let p2 = paths(lab, &before)?;
    let after = settle(client)?;
    let back = tally(
        &format!("node {} {name}: back", node + 1),
        &mid,
        &p1,
        &p2,
        &after,
    );
    Ok([away, back])
}

/// One failover measurement.
#[derive(Clone, Copy, Debug)]
pub struct Failover {
    pub how: Stop,
    /// From the stop to the router's route without the node.
    pub route: Duration,
    /// From the stop to the first successful new connection from a port that hashed to it.
    pub connect: Duration,
}

impl fmt::Display for Failover {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{:<9} route withdrawn after {:>4} ms, first new connection after {:>4} ms",
            match self.how {
                Stop::Kill => "SIGKILL",
                Stop::LinkDown => "link down",
                Stop::Graceful => "graceful",
            },
            self.route.as_millis(),
            self.connect.as_millis()
        )
    }
}

/// Source ports for [`failover`]'s probes: each used once, so none is in TIME_WAIT.
static NEXT_PORT: AtomicU16 = AtomicU16::new(30000);

/// Stop node `node` (`how`), measure, bring it back.
pub fn failover(lab: &mut BgpLab, client: &Client, node: usize, how: Stop) -> Result<Failover> {
    let port = loop {
        let p = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        if p > 60000 {
            bail!("out of probe ports");
        }
        if lab.path_of("tcp", SocketAddr::new(IpAddr::V4(CLIENT), p))? == node {
            break p;
        }
    };
    let t0 = Instant::now();
    lab.stop_node(node, how)?;
    let deadline = t0 + CONVERGE;
    while lab.next_hops()?.contains(&node) {
        if Instant::now() > deadline {
            bail!(
                "the router kept node {} after {how:?}\n{}",
                node + 1,
                lab.router_status()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let route = t0.elapsed();
    let connect = loop {
        match client.connect(port, Duration::from_millis(150)) {
            Ok(_) => break t0.elapsed(),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context(format!("no new connection from port {port} after {how:?}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    lab.restore_node(node)?;
    Ok(Failover {
        how,
        route,
        connect,
    })
}

/// New connections back to back while node `node` withdraws gracefully and comes back.
pub fn graceful_churn(lab: &mut BgpLab, client: &Client, node: usize) -> Result<Churn> {
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let rx = client.churn(stop.clone(), progress.clone(), Duration::from_secs(3))?;
    let wait_more = |n: usize| -> Result<()> {
        let target = progress.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + CONVERGE;
        while progress.load(Ordering::Relaxed) < target {
            if Instant::now() > deadline {
                bail!(
                    "the client stalled at {} connections",
                    progress.load(Ordering::Relaxed)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    };
    let run = (|| -> Result<()> {
        wait_more(30)?;
        lab.stop_node(node, Stop::Graceful)?;
        lab.wait_next_hops_without(node, Instant::now() + CONVERGE)?;
        wait_more(30)?;
        lab.restore_node(node)?;
        wait_more(30)
    })();
    stop.store(true, Ordering::Relaxed);
    let churn = rx.recv().context("the client thread died")??;
    run?;
    Ok(churn)
}
