//! `[capacity]`, the data plane's map sizes ([`validate_capacity`]), and [`MapUsage`], which
//! counts what the `[[vips]]` entries checked so far use of them (VIPs, distinct backends,
//! server-ID entries, QUIC-LB configs, Maglev ring slots, and the fixed
//! [`MAX_SOURCE_RANGES`] source-range entries) and reports each limit once, at the entry (or
//! backend) that crosses it.
//!
//! The counts are kept as the entries are checked, not in a pass afterwards, so each
//! message comes right after the other messages of the entry that crossed the limit.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    ops::Range,
};

use lb_common::MAX_SOURCE_RANGES;
use toml::Spanned;

use super::int_in;
use crate::{
    capacity::{Capacity, KNOBS},
    config::error::Errors,
};

/// The `[capacity]` table with defaults filled in; an unknown key or an out-of-range value is
/// reported (and the default kept).
pub(super) fn validate_capacity(
    raw: Option<&Spanned<BTreeMap<String, Spanned<i64>>>>,
    errs: &mut Errors,
) -> Capacity {
    let mut c = Capacity::default();
    let Some(raw) = raw else {
        return c;
    };
    for (key, v) in raw.get_ref() {
        let field = format!("capacity.{key}");
        let Some(knob) = KNOBS.iter().find(|k| k.key == key) else {
            let keys: Vec<String> = KNOBS.iter().map(|k| format!("`{}`", k.key)).collect();
            errs.at(
                v.span(),
                &field,
                format!("unknown key; expected one of {}", keys.join(", ")),
            );
            continue;
        };
        match int_in(*v.get_ref(), knob.min as i64, knob.max as i64) {
            Some(n) => (knob.set)(&mut c, n as u32),
            None => errs.at(
                v.span(),
                &field,
                format!(
                    "{} is out of range; use {}..={} (it sizes the map {})",
                    v.get_ref(),
                    knob.min,
                    knob.max,
                    knob.map
                ),
            ),
        }
    }
    c
}

/// Entries used in one map, against its size.
struct Tally {
    used: u32,
    room: u32,
    /// The limit was crossed and reported; it is not reported again.
    reported: bool,
}

impl Tally {
    const fn new(room: u32) -> Tally {
        Tally {
            used: 0,
            room,
            reported: false,
        }
    }

    /// Count `n` more entries; the new total if this is the first time it exceeds the room.
    fn add(&mut self, n: u32) -> Option<u32> {
        self.used = self.used.saturating_add(n);
        if self.used > self.room && !self.reported {
            self.reported = true;
            Some(self.used)
        } else {
            None
        }
    }
}

/// What the config uses of each data-plane map so far.
pub(super) struct MapUsage {
    /// (address, port, protocol) VIPs.
    vips: Tally,
    /// Distinct backend (address, port) pairs: a backend shared by several VIPs counts once.
    backends: HashSet<(IpAddr, u16)>,
    backends_reported: bool,
    /// Server-ID entries: UDP ports x configs x backends of each QUIC VIP.
    server_ids: Tally,
    /// Source-range entries: ranges x ports x protocols of each VIP.
    source_ranges: Tally,
    /// QUIC-LB configs: configs x UDP ports of each QUIC VIP.
    quic_configs: Tally,
    /// Maglev ring slots, with room kept to write the largest ring while it is live.
    ring_slots: Tally,
    largest_ring: u32,
    capacity: Capacity,
}

impl MapUsage {
    pub(super) fn new(capacity: &Capacity) -> MapUsage {
        MapUsage {
            vips: Tally::new(capacity.vips),
            backends: HashSet::new(),
            backends_reported: false,
            server_ids: Tally::new(capacity.server_ids),
            source_ranges: Tally::new(MAX_SOURCE_RANGES),
            quic_configs: Tally::new(capacity.quic_configs),
            ring_slots: Tally::new(capacity.maglev_slots),
            largest_ring: 0,
            capacity: *capacity,
        }
    }

    /// The entry at `span` (`field`) installs `added` QUIC-LB configs.
    pub(super) fn count_quic_configs(
        &mut self,
        added: u32,
        span: Range<usize>,
        field: &str,
        errs: &mut Errors,
    ) {
        if let Some(count) = self.quic_configs.add(added) {
            errs.at(
                span,
                field,
                format!(
                    "this entry brings the QUIC-LB configs (configs x UDP ports) to {count}; \
                     the data plane has room for {}; raise [capacity] quic_configs",
                    self.capacity.quic_configs
                ),
            );
        }
    }

    /// The entry at `span` (`field`) has `rings` Maglev rings of `size` slots each. The pool
    /// must also hold a second copy of the largest ring, written while the first is live.
    pub(super) fn count_ring_slots(
        &mut self,
        rings: u32,
        size: u32,
        span: Range<usize>,
        field: &str,
        errs: &mut Errors,
    ) {
        if rings == 0 || size == 0 {
            return;
        }
        // Rings take whole LB_MAGLEV elements (two slots each).
        let size = lb_common::maglev::ring_pool_slots(size);
        let grow = size.saturating_sub(self.largest_ring);
        self.largest_ring = self.largest_ring.max(size);
        if let Some(count) = self
            .ring_slots
            .add(rings.saturating_mul(size).saturating_add(grow))
        {
            errs.at(
                span,
                field,
                format!(
                    "this entry brings the Maglev ring slots (rings x slots, plus room to \
                     replace the largest) to {count}; the pool has {}; raise [capacity] \
                     maglev_slots (4 octets each)",
                    self.capacity.maglev_slots
                ),
            );
        }
    }

    /// The entry at `span` (`field`) defines `added` new VIPs.
    pub(super) fn count_vips(
        &mut self,
        added: u32,
        span: Range<usize>,
        field: &str,
        errs: &mut Errors,
    ) {
        if let Some(count) = self.vips.add(added) {
            errs.at(
                span,
                field,
                format!(
                    "this entry brings the VIP count to {count}; the data plane has room for \
                     {} (each address, port and protocol counts as one VIP); raise [capacity] \
                     vips",
                    self.capacity.vips
                ),
            );
        }
    }

    /// The backend at `span` (`field`) is `(addr, port)`; it counts only if no VIP had it.
    pub(super) fn count_backend(
        &mut self,
        addr: IpAddr,
        port: u16,
        span: Range<usize>,
        field: &str,
        errs: &mut Errors,
    ) {
        if self.backends.insert((addr, port))
            && self.backends.len() > self.capacity.backends as usize
            && !self.backends_reported
        {
            self.backends_reported = true;
            errs.at(
                span,
                field,
                format!(
                    "this is backend number {}; the data plane has room for {} distinct \
                     backend (address, port) pairs; raise [capacity] backends",
                    self.backends.len(),
                    self.capacity.backends
                ),
            );
        }
    }

    /// The QUIC VIP entry at `span` (`field`) installs `added` server-ID entries.
    pub(super) fn count_server_ids(
        &mut self,
        added: u32,
        span: Range<usize>,
        field: &str,
        errs: &mut Errors,
    ) {
        if let Some(count) = self.server_ids.add(added) {
            errs.at(
                span,
                field,
                format!(
                    "this entry brings the server-ID entries (UDP ports x configs x backends) to \
                     {count}; the data plane has room for {}; raise [capacity] server_ids",
                    self.capacity.server_ids
                ),
            );
        }
    }

    /// The `source_ranges` list at `span` (`field`) installs `added` entries.
    pub(super) fn count_source_ranges(
        &mut self,
        added: u32,
        span: Range<usize>,
        field: &str,
        errs: &mut Errors,
    ) {
        if let Some(count) = self.source_ranges.add(added) {
            errs.at(
                span,
                field,
                format!(
                    "this entry brings the source-range entries (ranges x ports x protocols) to \
                     {count}; the data plane has room for {MAX_SOURCE_RANGES}; \
                     merge adjacent ranges into shorter prefixes"
                ),
            );
        }
    }
}
