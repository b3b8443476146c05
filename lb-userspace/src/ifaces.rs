//! Which of the node's interfaces the config's `interfaces` and `backend_interfaces` name.
//!
//! Each entry is an exact name, a shell-style glob (`*` any run, `?` one character:
//! `"enp*s0"`, `"cali*"`), or the keyword [`AUTO`]:
//!
//! - in `interfaces`, the interfaces that hold the node's default route (IPv4 or IPv6):
//!   where the node's external traffic, and so the VIPs' traffic, arrives;
//! - in `backend_interfaces`, the host ends of pod veths as the common CNIs name them
//!   ([`CNI_PATTERNS`]).
//!
//! A DaemonSet has one config for nodes whose NICs are named differently, so an entry that
//! names nothing on a node is not an error: it is reported (log, `/status`, the metric
//! `lb_interface_pattern_unmatched`, and in Kubernetes mode an Event) and the daemon keeps
//! looking every second. [`resolve`] is the pure decision, over [`Link`] records.

use crate::links::{Link, LinkKind};

/// The keyword for the automatic choice.
pub const AUTO: &str = "auto";

/// Host-side names of pod interfaces by CNI, for `backend_interfaces = ["auto"]`. Only
/// veths are taken. OVS-based CNIs (Antrea, OVN-Kubernetes, Kube-OVN) name pod ports
/// after the pod or container and forward through an OVS bridge, so there is no pattern
/// for them: name the interfaces (or patterns) yourself.
pub const CNI_PATTERNS: &[(&str, &str)] = &[
    (
        "veth*",
        "kindnet, flannel, Weave Net, the bridge and ptp plugins",
    ),
    ("cali*", "Calico"),
    ("lxc*", "Cilium"),
    ("gke*", "GKE Dataplane V1"),
    ("eni*", "Amazon VPC CNI"),
    ("azv*", "Azure CNI"),
];

/// Which list a pattern is from: decides what [`AUTO`] means.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// `interfaces`: where XDP attaches and VIPs are announced.
    External,
    /// `backend_interfaces`: where the reverse NAT attaches.
    Backend,
}

/// What one config entry names on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// The entry as written.
    pub pattern: String,
    /// The links it names, in the order given (by ifindex).
    pub links: Vec<(String, u32)>,
}

/// Is `name` one the entry `pattern` names, as far as the name goes? (`AUTO` is decided
/// by [`resolve`].)
pub fn is_pattern(pattern: &str) -> bool {
    pattern == AUTO || pattern.contains(['*', '?'])
}

/// Resolve `patterns` against `links`. Loopback is never named by a glob or [`AUTO`];
/// an exact name names exactly that link. `exclude` are links another list already
/// claims (for backend [`AUTO`]: the external interfaces, which may be veths on kind).
pub fn resolve(patterns: &[String], role: Role, links: &[Link], exclude: &[u32]) -> Vec<Match> {
    patterns
        .iter()
        .map(|p| {
            let mut named: Vec<(String, u32)> = links
                .iter()
                .filter(|l| names(p, role, l, exclude))
                .map(|l| (l.name.clone(), l.ifindex))
                .collect();
            named.sort_by_key(|(_, i)| *i);
            Match {
                pattern: p.clone(),
                links: named,
            }
        })
        .collect()
}

fn names(pattern: &str, role: Role, l: &Link, exclude: &[u32]) -> bool {
    if pattern == l.name {
        return true;
    }
    if l.kind == LinkKind::Loopback {
        return false;
    }
    if pattern == AUTO {
        return match role {
            Role::External => l.default_route,
            Role::Backend => {
                l.kind == LinkKind::Veth
                    && !exclude.contains(&l.ifindex)
                    && CNI_PATTERNS.iter().any(|(p, _)| glob_match(p, &l.name))
            }
        };
    }
    pattern.contains(['*', '?']) && glob_match(pattern, &l.name)
}

/// The entries that name nothing on this node.
pub fn unmatched(matches: &[Match]) -> Vec<String> {
    matches
        .iter()
        .filter(|m| m.links.is_empty())
        .map(|m| m.pattern.clone())
        .collect()
}

/// Every link named by some entry, once, by ifindex.
pub fn all_links(matches: &[Match]) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = matches.iter().flat_map(|m| m.links.clone()).collect();
    v.sort_by_key(|(_, i)| *i);
    v.dedup_by_key(|(_, i)| *i);
    v
}

/// Shell-style match of `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    glob(pattern.as_bytes(), name.as_bytes())
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, ifindex: u32, kind: LinkKind, default_route: bool) -> Link {
        Link {
            name: name.into(),
            ifindex,
            kind,
            default_route,
        }
    }

    fn nic(driver: &str) -> LinkKind {
        LinkKind::Physical {
            driver: driver.into(),
        }
    }

    fn virt(driver: &str) -> LinkKind {
        LinkKind::Virtual {
            driver: driver.into(),
        }
    }

    /// A Calico node with two NICs (the default route on the second), an IPIP tunnel and
    /// pods; a kind node (its eth0 is a veth) with pods.
    fn calico_node() -> Vec<Link> {
        vec![
            link("lo", 1, LinkKind::Loopback, false),
            link("eno1", 2, nic("igb"), false),
            link("enp65s0f0", 3, nic("ice"), true),
            link("tunl0", 4, virt(""), false),
            link("cali12ab34cd56e", 7, LinkKind::Veth, false),
            link("cali98fe76dc54b", 9, LinkKind::Veth, false),
            link("vxlan.calico", 5, virt("vxlan"), false),
        ]
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn named(m: &Match) -> Vec<&str> {
        m.links.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn auto_external_is_the_default_route_interface() {
        let m = resolve(&s(&["auto"]), Role::External, &calico_node(), &[]);
        assert_eq!(named(&m[0]), ["enp65s0f0"]);
        // A dual-homed node with IPv4 and IPv6 default routes on different NICs.
        let mut links = calico_node();
        links[1].default_route = true;
        let m = resolve(&s(&["auto"]), Role::External, &links, &[]);
        assert_eq!(named(&m[0]), ["eno1", "enp65s0f0"]);
    }

    #[test]
    fn auto_backend_is_the_cni_veths() {
        let m = resolve(&s(&["auto"]), Role::Backend, &calico_node(), &[]);
        assert_eq!(named(&m[0]), ["cali12ab34cd56e", "cali98fe76dc54b"]);
        // kind: eth0 is a veth named like none of the patterns; a veth* one that is also
        // the external interface is left to `interfaces`.
        let kind = vec![
            link("eth0", 12, LinkKind::Veth, true),
            link("veth1a2b3c4d", 3, LinkKind::Veth, false),
            link("vethext", 4, LinkKind::Veth, true),
            link("lxc_health", 5, LinkKind::Veth, false),
            link("lxcbridge", 6, virt("bridge"), false),
        ];
        let m = resolve(&s(&["auto"]), Role::Backend, &kind, &[4]);
        assert_eq!(named(&m[0]), ["veth1a2b3c4d", "lxc_health"]);
    }

    #[test]
    fn globs_and_names() {
        let links = calico_node();
        let m = resolve(
            &s(&["en*", "cali?2*", "tunl0", "*"]),
            Role::External,
            &links,
            &[],
        );
        assert_eq!(named(&m[0]), ["eno1", "enp65s0f0"]);
        assert_eq!(named(&m[1]), ["cali12ab34cd56e"]);
        assert_eq!(named(&m[2]), ["tunl0"]);
        // `*` names everything but loopback; an exact "lo" would name it.
        assert_eq!(m[3].links.len(), links.len() - 1);
        let lo = resolve(&s(&["lo"]), Role::External, &links, &[]);
        assert_eq!(named(&lo[0]), ["lo"]);
    }

    #[test]
    fn unmatched_entries_are_reported_not_fatal() {
        let links = calico_node();
        let m = resolve(&s(&["eth0", "bond*", "auto"]), Role::External, &links, &[]);
        assert_eq!(unmatched(&m), ["eth0", "bond*"]);
        assert_eq!(all_links(&m), [("enp65s0f0".to_string(), 3)]);
        // No default route yet (DHCP pending): auto names nothing, for now.
        let none: Vec<Link> = links
            .into_iter()
            .map(|mut l| {
                l.default_route = false;
                l
            })
            .collect();
        let m = resolve(&s(&["auto"]), Role::External, &none, &[]);
        assert_eq!(unmatched(&m), ["auto"]);
    }

    #[test]
    fn all_links_dedups_overlapping_entries() {
        let m = resolve(&s(&["cali*", "auto"]), Role::Backend, &calico_node(), &[]);
        assert_eq!(all_links(&m).len(), 2);
    }

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(glob_match("veth*", "veth1a2b"));
        assert!(glob_match("veth*", "veth"));
        assert!(glob_match("e?h0", "eth0"));
        assert!(!glob_match("e?h0", "eh0"));
        assert!(glob_match("*0", "eth0"));
        assert!(!glob_match("cali*", "xcali1"));
        assert!(is_pattern("auto") && is_pattern("en*") && !is_pattern("eth0"));
    }
}
