//! A kube-proxy stand-in for the labs: real nftables rules, in the shape kube-proxy's
//! nftables mode writes them (table `ip kube-proxy`: `service-ips` verdict map, per-service
//! and per-endpoint chains with `numgen random` and `dnat`, masquerade marking,
//! `ct state invalid drop` in `filter-forward`), loaded with `nft -f` into a node's
//! namespace. It gives a lab what a cluster node has around lb:
//!
//! - ClusterIPs DNATed to the pods, for in-cluster clients;
//! - the LoadBalancer IP intercepted for in-cluster clients (`status.loadBalancer.ingress`
//!   with `ipMode: VIP`): a pod (or the node) talking to the VIP goes straight to an
//!   endpoint through the node's conntrack, never through lb's XDP program;
//! - conntrack judging every forwarded packet, and dropping what it calls INVALID (a
//!   SYN-ACK whose SYN it never saw, say) — which is why lb's reverse NAT must never rewrite
//!   a reply of a connection the node's stack owns.
//!
//! Simplified from kube-proxy: IPv4 only, one chain per service port and endpoint with
//! readable names (kube-proxy prefixes a hash), no NodePorts, no firewall and no
//! "no endpoints" reject maps, no session affinity sets, no health-check rules.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    process::Stdio,
};

use anyhow::{Context, Result, bail};

use crate::netns::NetNs;

/// kube-proxy's default masquerade mark (bit 14).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// One Service port as kube-proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name/protocol/port`-like, used in chain names (letters, digits, `-`).
    pub name: String,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// `status.loadBalancer.ingress` IPs (`ipMode: VIP`): intercepted like the ClusterIP.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    pub endpoints: Vec<SocketAddrV4>,
}

/// The rules for one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeProxyRules {
    /// The cluster's pod CIDR (`--cluster-cidr`): traffic to a ClusterIP from outside it is
    /// masqueraded, as kube-proxy's local-traffic detector does.
    pub pod_cidr: (Ipv4Addr, u8),
    pub services: Vec<ServicePort>,
}

impl KubeProxyRules {
    /// One Service `default/web` on `port` over TCP and UDP, at `cluster_ip` and the load
    /// balancer address `vip`, with `endpoints` (what the demo's and the labs' kube-proxy
    /// stand-ins serve).
    pub fn web_tcp_and_udp(
        pod_cidr: (Ipv4Addr, u8),
        cluster_ip: Ipv4Addr,
        vip: Ipv4Addr,
        port: u16,
        endpoints: Vec<SocketAddrV4>,
    ) -> KubeProxyRules {
        let service = |protocol: &'static str| ServicePort {
            name: format!("default-web-{protocol}-{port}"),
            protocol,
            cluster_ip,
            port,
            load_balancer_ips: vec![vip],
            endpoints: endpoints.clone(),
        };
        KubeProxyRules {
            pod_cidr,
            services: vec![service("tcp"), service("udp")],
        }
    }

    /// The `nft -f` script: deletes an earlier `ip kube-proxy` table, then writes the whole
    /// table (chains before the rules that jump to them).
    pub fn script(&self) -> String {
        let mut s = String::new();
        let (net, len) = self.pod_cidr;
        let _ = writeln!(s, "table ip kube-proxy\ndelete table ip kube-proxy\n");
        let _ = writeln!(s, "table ip kube-proxy {{");
        let _ = writeln!(s, "\tcomment \"rules for kube-proxy (lb lab stand-in)\"");
        let _ = writeln!(
            s,
            "\tchain mark-for-masquerade {{\n\t\tmark set mark or {MASQUERADE_MARK:#x}\n\t}}"
        );
        let _ = writeln!(
            s,
            "\tchain masquerading {{\n\t\tmark and {MASQUERADE_MARK:#x} == 0 return\n\t\t\
             mark set mark xor {MASQUERADE_MARK:#x}\n\t\tmasquerade fully-random\n\t}}"
        );
        let mut elements = Vec::new();
        for svc in &self.services {
            let base = &svc.name;
            for (i, ep) in svc.endpoints.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "\tchain endpoint-{base}-{i} {{\n\t\tip saddr {} jump mark-for-masquerade\n\t\t\
                     meta l4proto {} dnat to {ep}\n\t}}",
                    ep.ip(),
                    svc.protocol
                );
            }
            let _ = writeln!(s, "\tchain service-{base} {{");
            let _ = writeln!(
                s,
                "\t\tip daddr {} {} dport {} ip saddr != {net}/{len} jump mark-for-masquerade",
                svc.cluster_ip, svc.protocol, svc.port
            );
            if !svc.endpoints.is_empty() {
                let arms: Vec<String> = (0..svc.endpoints.len())
                    .map(|i| format!("{i} : goto endpoint-{base}-{i}"))
                    .collect();
                let _ = writeln!(
                    s,
                    "\t\tnumgen random mod {} vmap {{ {} }}",
                    svc.endpoints.len(),
                    arms.join(", ")
                );
            }
            let _ = writeln!(s, "\t}}");
            // externalTrafficPolicy: Cluster: the endpoint may be on another node, so
            // kube-proxy masquerades external destinations.
            let _ = writeln!(
                s,
                "\tchain external-{base} {{\n\t\tjump mark-for-masquerade\n\t\tgoto service-{base}\n\t}}"
            );
            elements.push(format!(
                "{} . {} . {} : goto service-{base}",
                svc.cluster_ip, svc.protocol, svc.port
            ));
            for lb in &svc.load_balancer_ips {
                elements.push(format!(
                    "{lb} . {} . {} : goto external-{base}",
                    svc.protocol, svc.port
                ));
            }
        }
        let _ = writeln!(
            s,
            "\tmap service-ips {{\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t\t\
             comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\""
        );
        if !elements.is_empty() {
            let _ = writeln!(s, "\t\telements = {{ {} }}", elements.join(", "));
        }
        let _ = writeln!(s, "\t}}");
        let _ = writeln!(
            s,
            "\tchain services {{\n\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\t}}"
        );
        // kube-proxy runs its filter chains before DNAT ("dstnat - 10", written as -110: the
        // nft of Debian 12 does not take the keyword on this hook). It drops
        // what conntrack calls INVALID unless nf_conntrack_tcp_be_liberal is set.
        let _ = writeln!(
            s,
            "\tchain filter-forward {{\n\t\ttype filter hook forward priority -110; policy accept;\n\t\t\
             ct state invalid drop\n\t}}"
        );
        // dstnat = -100, srcnat = 100 (numbers: Debian 12's nft knows the keywords on some
        // hooks only).
        for (name, hook, prio, jump) in [
            ("nat-prerouting", "prerouting", -100, "services"),
            ("nat-output", "output", -100, "services"),
            ("nat-postrouting", "postrouting", 100, "masquerading"),
        ] {
            let _ = writeln!(
                s,
                "\tchain {name} {{\n\t\ttype nat hook {hook} priority {prio}; policy accept;\n\t\tjump {jump}\n\t}}"
            );
        }
        let _ = writeln!(s, "}}");
        s
    }

    /// Load the rules into `ns` with `nft -f -`, replacing an earlier copy.
    pub fn install(&self, ns: &NetNs) -> Result<()> {
        for svc in &self.services {
            if !svc
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                bail!(
                    "service port name {:?}: only letters, digits and '-' go into chain names",
                    svc.name
                );
            }
        }
        let script = self.script();
        let mut child = ns
            .command("nft")?
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft (Debian package nftables; `cargo xtask setup` installs it)")?;
        child
            .stdin
            .take()
            .context("nft's stdin")?
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft -f refused the kube-proxy stand-in rules: {}\n{script}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_has_kube_proxys_shape() {
        let rules = KubeProxyRules {
            pod_cidr: (Ipv4Addr::new(198, 19, 0, 0), 16),
            services: vec![ServicePort {
                name: "default-web-tcp-443".into(),
                protocol: "tcp",
                cluster_ip: Ipv4Addr::new(198, 19, 255, 10),
                port: 443,
                load_balancer_ips: vec![Ipv4Addr::new(198, 18, 0, 100)],
                endpoints: vec![
                    SocketAddrV4::new(Ipv4Addr::new(198, 19, 1, 10), 8443),
                    SocketAddrV4::new(Ipv4Addr::new(198, 19, 2, 10), 8443),
                ],
            }],
        };
        let s = rules.script();
        for want in [
            "table ip kube-proxy {",
            "198.19.255.10 . tcp . 443 : goto service-default-web-tcp-443",
            "198.18.0.100 . tcp . 443 : goto external-default-web-tcp-443",
            "numgen random mod 2 vmap { 0 : goto endpoint-default-web-tcp-443-0, 1 : goto endpoint-default-web-tcp-443-1 }",
            "meta l4proto tcp dnat to 198.19.2.10:8443",
            "ip saddr != 198.19.0.0/16 jump mark-for-masquerade",
            "ct state invalid drop",
            "type nat hook prerouting priority -100; policy accept;",
            "masquerade fully-random",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        // Every chain a rule jumps or goes to is defined before it.
        let defined = |name: &str| s.find(&format!("chain {name} {{"));
        for (i, _) in s.match_indices("goto ") {
            let name: String = s[i + 5..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let at = defined(&name).unwrap_or_else(|| panic!("{name} is not defined"));
            assert!(at < i, "{name} is defined after a goto to it");
        }
    }
}
