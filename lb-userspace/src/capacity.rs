//! How large the data plane's maps are: the `[capacity]` table of the config, with the
//! defaults sized for a busy ingress node (20,000 VIPs: 10,000 Services with TCP and UDP on
//! one port each; a million flows). Each map is created with its size when the BPF object is
//! loaded, so a change takes a restart. The kernel memory each costs is measured in
//! docs/capacity.md.

use lb_common::{
    DEFAULT_BACKENDS, DEFAULT_CONN_TABLE, DEFAULT_LEARNED_CIDS, DEFAULT_MAGLEV_SLOTS,
    DEFAULT_QUIC_CONFIGS, DEFAULT_SERVER_IDS, DEFAULT_VIPS, MAGLEV_RING_MAX, map_names,
};

/// The sizes of the maps that grow with the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Data-plane VIPs (address, port, protocol): `LB_VIPS`, `LB_VIP_STATS`.
    pub vips: u32,
    /// Distinct backends (address, port): `LB_BACKENDS`, `LB_BE_STATS`; backend ids are
    /// below this.
    pub backends: u32,
    /// Flows in the connection table (`LB_CONNS`).
    pub conn_table_size: u32,
    /// Learned connection IDs (`LB_LEARNED`).
    pub learned_cids: u32,
    /// QUIC-LB server-ID entries (`LB_SERVER_IDS`).
    pub server_ids: u32,
    /// QUIC-LB configs, one per VIP and config rotation value (`LB_QUIC_CFG`).
    pub quic_configs: u32,
    /// Slots of the Maglev ring pool (`LB_MAGLEV`).
    pub maglev_slots: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            vips: DEFAULT_VIPS,
            backends: DEFAULT_BACKENDS,
            conn_table_size: DEFAULT_CONN_TABLE,
            learned_cids: DEFAULT_LEARNED_CIDS,
            server_ids: DEFAULT_SERVER_IDS,
            quic_configs: DEFAULT_QUIC_CONFIGS,
            maglev_slots: DEFAULT_MAGLEV_SLOTS,
        }
    }
}

/// One `[capacity]` key: its name, the map it sizes, and its valid range.
pub struct Knob {
    pub key: &'static str,
    pub map: &'static str,
    pub min: u32,
    pub max: u32,
    pub get: fn(&Capacity) -> u32,
    pub set: fn(&mut Capacity, u32),
}

/// Every `[capacity]` key. The upper bounds keep one map under a few GiB of kernel memory
/// (and ids within what the layouts hold); the kernel may refuse less on a small node,
/// which the loader reports with the key to lower.
pub const KNOBS: [Knob; 7] = [
    Knob {
        key: "vips",
        map: map_names::VIPS,
        min: 1,
        max: 1 << 20,
        get: |c| c.vips,
        set: |c, v| c.vips = v,
    },
    Knob {
        key: "backends",
        map: map_names::BACKENDS,
        min: 1,
        max: 1 << 20,
        get: |c| c.backends,
        set: |c, v| c.backends = v,
    },
    Knob {
        key: "conn_table_size",
        map: map_names::CONNS,
        min: 1,
        max: 1 << 26,
        get: |c| c.conn_table_size,
        set: |c, v| c.conn_table_size = v,
    },
    Knob {
        key: "learned_cids",
        map: map_names::LEARNED,
        min: 1,
        max: 1 << 24,
        get: |c| c.learned_cids,
        set: |c, v| c.learned_cids = v,
    },
    Knob {
        key: "server_ids",
        map: map_names::SERVER_IDS,
        min: 1,
        max: 1 << 24,
        get: |c| c.server_ids,
        set: |c, v| c.server_ids = v,
    },
    Knob {
        key: "quic_configs",
        map: map_names::QUIC_CFG,
        min: 1,
        max: 1 << 20,
        get: |c| c.quic_configs,
        set: |c, v| c.quic_configs = v,
    },
    Knob {
        key: "maglev_slots",
        // Room for two of the largest rings: one live, one being written.
        map: map_names::MAGLEV,
        min: 2 * MAGLEV_RING_MAX,
        max: 1 << 28,
        get: |c| c.maglev_slots,
        set: |c, v| c.maglev_slots = v,
    },
];

/// The knob that sizes `map`, if one does (the error of a refused map names it).
pub fn knob_of_map(map: &str) -> Option<&'static Knob> {
    KNOBS.iter().find(|k| k.map == map).or(match map {
        m if m == map_names::VIP_STATS => KNOBS.iter().find(|k| k.key == "vips"),
        m if m == map_names::BACKEND_STATS => KNOBS.iter().find(|k| k.key == "backends"),
        _ => None,
    })
}

impl Capacity {
    /// (map name, entries) for every map whose size comes from here.
    pub fn map_sizes(&self) -> [(&'static str, u32); 9] {
        [
            (map_names::VIPS, self.vips),
            (map_names::VIP_STATS, self.vips),
            (map_names::BACKENDS, self.backends),
            (map_names::BACKEND_STATS, self.backends),
            (map_names::CONNS, self.conn_table_size),
            (map_names::LEARNED, self.learned_cids),
            (map_names::SERVER_IDS, self.server_ids),
            (map_names::QUIC_CFG, self.quic_configs),
            (map_names::MAGLEV, self.maglev_slots),
        ]
    }

    /// The value of every knob is in its range.
    pub fn check(&self) -> Result<(), String> {
        for k in &KNOBS {
            let v = (k.get)(self);
            if v < k.min || v > k.max {
                return Err(format!(
                    "[capacity] {} = {v} is out of range; use {}..={}",
                    k.key, k.min, k.max
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_every_sized_map_has_a_knob() {
        let c = Capacity::default();
        c.check().unwrap();
        assert!(c.vips >= 20_000 && c.backends >= 65_536 && c.conn_table_size >= 1_000_000);
        for (map, _) in c.map_sizes() {
            assert!(knob_of_map(map).is_some(), "{map}");
        }
        let mut small = c;
        (KNOBS[6].set)(&mut small, 10);
        assert!(small.check().unwrap_err().contains("maglev_slots"));
    }
}
