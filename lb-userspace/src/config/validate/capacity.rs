//! The data plane's maps have a fixed size: [`MAX_VIPS`] VIPs, [`MAX_BACKENDS`] distinct
//! backends, [`MAX_SERVER_IDS`] server-ID entries and [`MAX_SOURCE_RANGES`] source-range
//! entries. [`MapUsage`] counts what the `[[vips]]` entries checked so far use, and reports
//! each limit once, at the entry (or backend) that crosses it.
//!
//! The counts are kept as the entries are checked, not in a pass afterwards, so each
//! message comes right after the other messages of the entry that crossed the limit.

use std::{collections::HashSet, net::IpAddr, ops::Range};

use lb_common::{MAX_BACKENDS, MAX_SERVER_IDS, MAX_SOURCE_RANGES, MAX_VIPS};

use crate::config::error::Errors;

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
}

impl MapUsage {
    pub(super) fn new() -> MapUsage {
        MapUsage {
            vips: Tally::new(MAX_VIPS),
            backends: HashSet::new(),
            backends_reported: false,
            server_ids: Tally::new(MAX_SERVER_IDS),
            source_ranges: Tally::new(MAX_SOURCE_RANGES),
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
                     {MAX_VIPS} (each address, port and protocol counts as one VIP)"
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
            && self.backends.len() > MAX_BACKENDS as usize
            && !self.backends_reported
        {
            self.backends_reported = true;
            errs.at(
                span,
                field,
                format!(
                    "this is backend number {}; the data plane has room for {MAX_BACKENDS} \
                     distinct backend (address, port) pairs",
                    self.backends.len()
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
                     {count}; the data plane has room for {MAX_SERVER_IDS}"
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
