//! Which nodes are alive for failover: gossip (fast) and Leases (authority), combined by
//! one pure function, [`judge`], so every case of the partition behaviour is unit-tested.
//!
//! - **Member:** a node whose heartbeat Lease this daemon has seen renewed within the lease
//!   duration (kubelet's cadence: renewed every 10 s, 40 s). Leases say who belongs; they
//!   are too slow to say who died.
//! - **Alive:** a member that gossip (SWIM, [`super::gossip`]) reports `Alive` or `Suspect`
//!   (SWIM treats a suspect as alive until the suspicion times out: a member that misses
//!   one probe under load keeps its VIPs). A member gossip reports `Down` is dead at once,
//!   Lease or not: that is the sub-second failover.
//! - **Unknown to gossip** (never heard from): alive during this daemon's join grace (the
//!   first seconds of its gossip, before it could have heard anyone), dead afterwards. A
//!   node that joins later announces nothing until it has joined, which is the safe way.
//! - **This node** is alive in its own view unless [isolated](Judgement::isolated), whatever
//!   its own Lease: it cannot tell whether the others can see Leases either, and stepping
//!   down on its own Lease's expiry would darken every VIP of a cluster whose API server
//!   is away for longer than a lease.
//! - **Isolated:** when gossip reaches only a strict minority of the members (this node
//!   counted; a member it suspects does not count as reached), this node is the one cut
//!   off: it steps down (announces nothing) instead of taking over every VIP, because the
//!   majority declares it down and takes its VIPs. Counting suspects as unreached makes the
//!   cut-off node step down as soon as it suspects the majority, a suspicion timeout before
//!   the majority declares it down and takes over, so there are not two announcers in
//!   between. (A stepped-down node still forwards what reaches it: clients whose ARP cache
//!   still points at it are served until the new announcer's gratuitous ARP.) An even split (two nodes that cannot reach
//!   each other) has no minority: both sides keep announcing, availability first; both
//!   route every connection the same way (Maglev rings, QUIC connection IDs).
//! - **Without gossip** (it could not start: no InternalIP, port taken) liveness is the
//!   Lease alone, as before gossip existed.
//!
//! The Lease view is frozen by the caller while this daemon cannot reach the API server
//! (it passes the last members it saw), so an API outage moves no VIP: gossip goes on
//! judging deaths.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// What SWIM says of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GossipState {
    Alive,
    Suspect,
    Down,
}

/// The inputs of one judgement.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// This node.
    pub me: &'a str,
    /// Nodes whose Lease is valid (this node included when its own is seen).
    pub members: &'a BTreeSet<String>,
    /// Gossip's view by node name (only names whose address matches their Node's
    /// InternalIP); `None`: gossip is not running.
    pub gossip: Option<&'a BTreeMap<String, GossipState>>,
    /// This daemon's gossip started less than the join grace ago and has not yet heard
    /// from every member.
    pub joining: bool,
}

/// Who is alive, as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judgement {
    pub alive: BTreeSet<String>,
    /// Gossip reaches only a minority of the members: this node steps down (it is not in
    /// `alive`).
    pub isolated: bool,
}

/// Combine Leases and gossip into the alive set (see the module's rules).
pub fn judge(i: &Inputs) -> Judgement {
    let others = i.members.iter().filter(|n| n.as_str() != i.me);
    let Some(gossip) = i.gossip else {
        let mut alive: BTreeSet<String> = others.cloned().collect();
        alive.insert(i.me.to_owned());
        return Judgement {
            alive,
            isolated: false,
        };
    };
    let up = |n: &str| match gossip.get(n) {
        Some(GossipState::Alive | GossipState::Suspect) => true,
        Some(GossipState::Down) => false,
        None => i.joining,
    };
    let mut alive: BTreeSet<String> = others.clone().filter(|n| up(n)).cloned().collect();
    let reached = others
        .clone()
        .filter(|n| gossip.get(n.as_str()) == Some(&GossipState::Alive))
        .count();
    let total = others.count() + 1;
    // Strict minority, this node counted: (reached + 1) / total < 1/2.
    let isolated = !i.joining && (reached + 1) * 2 < total;
    if !isolated {
        alive.insert(i.me.to_owned());
    }
    Judgement { alive, isolated }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GossipState::*;

    fn set(ns: &[&str]) -> BTreeSet<String> {
        ns.iter().map(|n| (*n).to_owned()).collect()
    }

    fn gossip(g: &[(&str, GossipState)]) -> BTreeMap<String, GossipState> {
        g.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect()
    }

    fn judge_as(
        me: &str,
        members: &[&str],
        g: Option<&[(&str, GossipState)]>,
        joining: bool,
    ) -> Judgement {
        let members = set(members);
        let g = g.map(gossip);
        judge(&Inputs {
            me,
            members: &members,
            gossip: g.as_ref(),
            joining,
        })
    }

    #[test]
    fn alive_needs_a_lease_and_gossip_alive_or_suspect() {
        let j = judge_as(
            "a",
            &["a", "b", "c", "d"],
            Some(&[("b", Alive), ("c", Suspect), ("d", Down), ("x", Alive)]),
            false,
        );
        // d: gossip says down, Lease or not. x: gossip alive but no Lease (not a member).
        assert_eq!(j.alive, set(&["a", "b", "c"]));
        assert!(!j.isolated);
    }

    #[test]
    fn a_node_gossip_has_not_heard_is_alive_only_while_joining() {
        let g: &[(&str, GossipState)] = &[("b", Alive)];
        let j = judge_as("a", &["a", "b", "c"], Some(g), true);
        assert_eq!(j.alive, set(&["a", "b", "c"]));
        let j = judge_as("a", &["a", "b", "c"], Some(g), false);
        assert_eq!(j.alive, set(&["a", "b"]));
    }

    #[test]
    fn an_expired_lease_is_dead_even_if_gossip_says_alive() {
        let j = judge_as("a", &["a", "b"], Some(&[("b", Alive), ("c", Alive)]), false);
        assert_eq!(j.alive, set(&["a", "b"]));
    }

    #[test]
    fn this_node_is_alive_to_itself_without_its_lease() {
        // Its Lease expired in its own eyes (a long API outage for everyone): stepping down
        // would darken the VIP on every node at once.
        let j = judge_as("a", &["b"], Some(&[("b", Alive)]), false);
        assert_eq!(j.alive, set(&["a", "b"]));
        let j = judge_as("a", &["b"], None, false);
        assert_eq!(j.alive, set(&["a", "b"]));
    }

    /// (b) A node cut off from its peers by gossip, with the API: the majority declares it
    /// down and takes its VIPs; it sees itself in a minority and steps down.
    #[test]
    fn a_node_isolated_from_its_peers_steps_down_and_they_drop_it() {
        let members = ["a", "b", "c"];
        let isolated = judge_as("a", &members, Some(&[("b", Down), ("c", Down)]), false);
        assert!(isolated.isolated);
        assert!(isolated.alive.is_empty(), "{isolated:?}");
        let peer = judge_as("b", &members, Some(&[("a", Down), ("c", Alive)]), false);
        assert!(!peer.isolated);
        assert_eq!(peer.alive, set(&["b", "c"]));
        // Five nodes, two cut off together: still a minority.
        let five = ["a", "b", "c", "d", "e"];
        let j = judge_as(
            "a",
            &five,
            Some(&[("b", Alive), ("c", Down), ("d", Down), ("e", Down)]),
            false,
        );
        assert!(j.isolated && j.alive == set(&["b"]));
        // While joining nobody is isolated (nothing heard yet).
        let j = judge_as("a", &members, Some(&[]), true);
        assert!(!j.isolated);
        // Suspecting the majority is enough to step down (before they declare it down),
        // while the suspects still count as alive.
        let j = judge_as(
            "a",
            &members,
            Some(&[("b", Suspect), ("c", Suspect)]),
            false,
        );
        assert!(j.isolated);
        assert_eq!(j.alive, set(&["b", "c"]));
    }

    /// An even split (two nodes that cannot reach each other) has no minority: both keep
    /// their VIPs and take the other's.
    #[test]
    fn an_even_split_keeps_both_sides_serving() {
        let j = judge_as("a", &["a", "b"], Some(&[("b", Down)]), false);
        assert!(!j.isolated);
        assert_eq!(j.alive, set(&["a"]));
        let j = judge_as(
            "a",
            &["a", "b", "c", "d"],
            Some(&[("b", Alive), ("c", Down), ("d", Down)]),
            false,
        );
        assert!(!j.isolated);
        assert_eq!(j.alive, set(&["a", "b"]));
    }

    /// (a) and (c): the caller freezes the members while the API is unreachable; gossip
    /// alone decides, so nothing moves while everyone is alive.
    #[test]
    fn with_frozen_leases_gossip_alone_decides() {
        let j = judge_as(
            "a",
            &["a", "b", "c"],
            Some(&[("b", Alive), ("c", Alive)]),
            false,
        );
        assert_eq!(j.alive, set(&["a", "b", "c"]));
        // A crash during the outage is still noticed.
        let j = judge_as(
            "a",
            &["a", "b", "c"],
            Some(&[("b", Alive), ("c", Down)]),
            false,
        );
        assert_eq!(j.alive, set(&["a", "b"]));
    }

    #[test]
    fn without_gossip_the_lease_alone_decides() {
        let j = judge_as("a", &["a", "b"], None, false);
        assert_eq!(j.alive, set(&["a", "b"]));
        assert!(!j.isolated);
        // A single node is never isolated.
        let j = judge_as("a", &["a"], Some(&[]), false);
        assert_eq!(j.alive, set(&["a"]));
        assert!(!j.isolated);
    }
}
