//! How full each sizable map is, and what it costs the kernel: entries against capacity,
//! and the map's `memlock` from the kernel's own accounting (`/proc/self/fdinfo`, the figure
//! `bpftool map show` prints). The daemon reads it every [`INTERVAL`] off its lock (counting
//! a million-flow table takes a batched walk), exports it as `lb_map_*` gauges and in
//! `/status` `maps`, and warns when a map crosses [`NEAR_FULL`].

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    time::Duration,
};

use lb_common::{ConnEntry, FlowKey, LearnedKey, ReplyNat, ServerIdKey, VipKey, VipMeta};
use serde::Serialize;

/// How often the daemon reads the maps' use.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// A map this full gets a warning naming the setting to raise.
pub const NEAR_FULL: f64 = 0.9;

/// One map's use.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MapUsage {
    /// The map's name (`LB_CONNS`, ...).
    pub map: &'static str,
    /// The setting that sizes it (`[capacity] conn_table_size`, ...).
    pub setting: &'static str,
    pub capacity: u64,
    /// Entries in use: counted in the map for hash maps, from the daemon's plan for arrays
    /// (whose slots always exist).
    pub entries: u64,
    /// Kernel memory charged for the map (`memlock` in its fdinfo), in octets.
    pub memory_bytes: Option<u64>,
}

impl MapUsage {
    pub fn fill(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            self.entries as f64 / self.capacity as f64
        }
    }

    pub fn near_full(&self) -> bool {
        self.fill() >= NEAR_FULL
    }

    /// The warning when it is near full.
    pub fn warning(&self) -> String {
        format!(
            "map {} is {:.0}% full ({} of {} entries); raise {} (takes a restart)",
            self.map,
            self.fill() * 100.0,
            self.entries,
            self.capacity,
            self.setting
        )
    }
}

/// How to count one map's entries.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Count {
    /// A hash map of these key and value types: walk it in batches.
    Vips,
    ServerIds,
    QuicConfigs,
    Conns,
    Learned,
    Replies,
    /// An array: this many slots are in use (from the daemon's own records).
    Known(u64),
}

/// A map to read, with its own duplicate of the map's file descriptor so it can be read
/// without the daemon's lock.
#[derive(Debug)]
pub(crate) struct MapHandle {
    pub(crate) map: &'static str,
    pub(crate) setting: &'static str,
    pub(crate) capacity: u64,
    pub(crate) count: Count,
    pub(crate) fd: OwnedFd,
}

/// What [`read`] needs: taken under the daemon's lock (cheap), read after it.
#[derive(Debug)]
pub struct UsageReader {
    pub(crate) maps: Vec<MapHandle>,
}

impl UsageReader {
    /// Read every map's use now (batched walks of the hash maps).
    pub fn read(&self) -> Vec<MapUsage> {
        self.maps.iter().map(read_one).collect()
    }
}

fn read_one(h: &MapHandle) -> MapUsage {
    let fd = h.fd.as_fd().as_raw_fd();
    let walk = |n: std::io::Result<usize>| n.map(|n| n as u64).unwrap_or(0);
    use crate::map_batch::lookup_all as all;
    let entries = match h.count {
        Count::Known(n) => n,
        Count::Vips => walk(all::<VipKey, VipMeta>(fd).map(|v| v.len())),
        Count::ServerIds => walk(all::<ServerIdKey, u32>(fd).map(|v| v.len())),
        Count::QuicConfigs => walk(all::<u32, lb_common::QuicLbConfig>(fd).map(|v| v.len())),
        Count::Conns => walk(all::<FlowKey, ConnEntry>(fd).map(|v| v.len())),
        Count::Learned => walk(all::<LearnedKey, u32>(fd).map(|v| v.len())),
        Count::Replies => walk(all::<FlowKey, ReplyNat>(fd).map(|v| v.len())),
    };
    MapUsage {
        map: h.map,
        setting: h.setting,
        capacity: h.capacity,
        entries,
        memory_bytes: memlock(fd),
    }
}

/// The `memlock:` line of a BPF map's fdinfo: the octets the kernel charges for it.
pub fn memlock(fd: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The maps that crossed [`NEAR_FULL`] since `before` (the warnings to log once).
pub fn newly_near_full<'a>(before: &[MapUsage], now: &'a [MapUsage]) -> Vec<&'a MapUsage> {
    now.iter()
        .filter(|u| u.near_full())
        .filter(|u| !before.iter().any(|b| b.map == u.map && b.near_full()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(map: &'static str, entries: u64) -> MapUsage {
        MapUsage {
            map,
            setting: "[capacity] conn_table_size",
            capacity: 100,
            entries,
            memory_bytes: None,
        }
    }

    #[test]
    fn warns_once_when_crossing_and_names_the_setting() {
        let quiet = [usage("LB_CONNS", 89)];
        let full = [usage("LB_CONNS", 90)];
        let warned = newly_near_full(&quiet, &full);
        assert_eq!(warned.len(), 1);
        assert_eq!(
            warned[0].warning(),
            "map LB_CONNS is 90% full (90 of 100 entries); raise [capacity] conn_table_size \
             (takes a restart)"
        );
        assert!(newly_near_full(&full, &full).is_empty(), "once");
        assert_eq!(newly_near_full(&full, &quiet).len(), 0);
        assert_eq!(newly_near_full(&quiet, &full).len(), 1, "again after a dip");
    }
}
