//! `[reverse_nat]`: the reply table's capacity and idle timeouts, and the steering mark.
//! Absent values keep their defaults ([`ReverseNatSettings::default`]).

use toml::Spanned;

use super::int_in;
use crate::config::{MAX_REPLY_FLOWS, ReverseNatSettings, error::Errors, raw::RawReverseNat};

/// The `[reverse_nat]` table with defaults filled in; an out-of-range value is reported
/// and its default kept.
pub(super) fn validate_reverse_nat(
    raw: Option<&Spanned<RawReverseNat>>,
    errs: &mut Errors,
) -> ReverseNatSettings {
    let mut r = ReverseNatSettings::default();
    let Some(raw) = raw else {
        return r;
    };
    let raw = raw.get_ref();
    let int =
        |v: &Option<Spanned<i64>>, field: &str, lo: i64, hi: i64, unit: &str, errs: &mut Errors| {
            v.as_ref().and_then(|v| match int_in(*v.get_ref(), lo, hi) {
                Some(n) => Some(n as u64),
                None => {
                    errs.at(
                        v.span(),
                        field,
                        format!("{} is out of range; use {lo}..={hi}{unit}", v.get_ref()),
                    );
                    None
                }
            })
        };
    if let Some(n) = int(
        &raw.max_flows,
        "reverse_nat.max_flows",
        1,
        MAX_REPLY_FLOWS,
        " flows",
        errs,
    ) {
        r.max_flows = n as u32;
    }
    const DAY: i64 = 86_400;
    let t = &mut r.timeouts;
    for (v, field, hi, slot) in [
        (
            &raw.tcp_timeout_s,
            "reverse_nat.tcp_timeout_s",
            7 * DAY,
            &mut t.tcp_ns,
        ),
        (
            &raw.udp_timeout_s,
            "reverse_nat.udp_timeout_s",
            DAY,
            &mut t.udp_ns,
        ),
        (
            &raw.unreplied_timeout_s,
            "reverse_nat.unreplied_timeout_s",
            DAY,
            &mut t.unreplied_ns,
        ),
        (
            &raw.closing_timeout_s,
            "reverse_nat.closing_timeout_s",
            DAY,
            &mut t.closing_ns,
        ),
    ] {
        if let Some(secs) = int(v, field, 1, hi, " seconds", errs) {
            *slot = secs * 1_000_000_000;
        }
    }
    if let Some(m) = raw.mark_remote {
        r.mark_remote = m;
    }
    r
}
