//! Which node settings a running daemon can take from a reloaded file, and which need a
//! restart. Interfaces are resolved and (de)attached every second, the steering mark is one
//! settings word, and the reply timeouts are read by each sweep, so those apply live; the
//! metrics socket, the map sizes (the reply table's, `[capacity]`) and the controller's settings (class, Leases,
//! gossip) are fixed when they are created.

use super::Config;

/// The settings of `new` that differ from `running` and that only a restart applies, named
/// as in the file. Empty: the reload can go ahead.
pub fn restart_needed(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut needed = Vec::new();
    // A file without metrics_addr keeps the running one (the daemon's default or --metrics-addr).
    if new.metrics_addr.is_some() && new.metrics_addr != running.metrics_addr {
        needed.push("metrics_addr");
    }
    if new.reverse_nat.max_flows != running.reverse_nat.max_flows {
        needed.push("reverse_nat.max_flows");
    }
    // Every map is created with its size.
    if new.capacity != running.capacity {
        needed.push("[capacity]");
    }
    if new.kubernetes != running.kubernetes {
        needed.push("[kubernetes]");
    }
    // The speaker process is started once; its sessions and routes apply live.
    if new.bgp.speaker != running.bgp.speaker {
        needed.push("bgp.run_dir, bgp.bird, bgp.spawn");
    }
    // An entry kept but with another mode would need its links re-attached in place; a new
    // or removed entry is attached or detached by the next scan.
    let mode_changed = new.interfaces.iter().any(|n| {
        running
            .interfaces
            .iter()
            .any(|r| r.name == n.name && r.xdp_mode != n.xdp_mode)
    });
    if mode_changed {
        needed.push("interfaces[].xdp_mode");
    }
    needed
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, "lb.toml", Path::new(".")).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    const BASE: &str = "interfaces = [{ name = \"eth*\", xdp_mode = \"generic\" }]\n\
                        backend_interfaces = [\"veth*\"]\n";

    #[test]
    fn interface_lists_the_mark_and_timeouts_apply_live() {
        let running = config(BASE);
        let new = config(
            "interfaces = [{ name = \"eth*\", xdp_mode = \"generic\" }, \"bond0\"]\n\
             backend_interfaces = [\"cali*\", \"lxc*\"]\n\
             [reverse_nat]\nmark_remote = false\nudp_timeout_s = 30\n",
        );
        assert_eq!(restart_needed(&running, &new), Vec::<&str>::new());
    }

    #[test]
    fn sockets_table_size_controller_and_xdp_mode_need_a_restart() {
        let running = config(&format!("{BASE}metrics_addr = \"0.0.0.0:7472\"\n"));
        let new = config(
            "interfaces = [{ name = \"eth*\", xdp_mode = \"native\" }]\n\
             backend_interfaces = [\"veth*\"]\nmetrics_addr = \"0.0.0.0:9999\"\n\
             [reverse_nat]\nmax_flows = 1024\n[kubernetes]\ngossip_port = 7000\n\
             [capacity]\nconn_table_size = 4096\n",
        );
        assert_eq!(
            restart_needed(&running, &new),
            [
                "metrics_addr",
                "reverse_nat.max_flows",
                "[capacity]",
                "[kubernetes]",
                "interfaces[].xdp_mode"
            ]
        );
        // Leaving metrics_addr out keeps the running address: nothing to restart for.
        assert_eq!(restart_needed(&running, &config(BASE)), Vec::<&str>::new());
    }
}
