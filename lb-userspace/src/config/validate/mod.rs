//! From the file as written ([`RawConfig`]) to a [`Config`]: every value is checked, every
//! problem is pushed to [`Errors`], and what is valid is kept so later checks can use it.
//!
//! The messages come out in the order the checks run, so the order of the calls here and
//! in [`vip`] is part of the behaviour: the top-level `xdp_mode` and `interfaces`, then
//! `backend_interfaces` and `metrics_addr`, then `[capacity]` (the map sizes the entries are
//! counted against), then each `[[vips]]` entry in turn (its own
//! values, its QUIC-LB configs, its backends, with the map-capacity checks at the points
//! where an entry adds to a map), then `[kubernetes]`, `[reverse_nat]`, `[bgp]` and how each VIP is announced.
//!
//! One file per concern:
//! - [`interfaces`]: `interfaces`, `xdp_mode` and `backend_interfaces`;
//! - [`vip`]: one `[[vips]]` entry (address, ports, protocols, Maglev size, learned-CID
//!   mode, session affinity, source ranges) and the order its parts are checked in;
//! - [`quic_lb`]: a VIP's `[[vips.quic_lb]]` configs and their keys;
//! - [`backends`]: a VIP's `[[vips.backends]]` and their server IDs;
//! - [`capacity`]: `[capacity]`, the map sizes, and what the entries so far use of them;
//! - [`kubernetes`] and [`reverse_nat`]: those two tables;
//! - [`bgp`]: `[bgp]` and the `announce` / `bgp_*` keys of the `[[vips]]` entries.
//!
//! The value parsers more than one of them uses are here.

mod backends;
mod bgp;
mod capacity;
mod interfaces;
mod kubernetes;
mod quic_lb;
mod reverse_nat;
mod vip;

#[cfg(test)]
mod tests;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use toml::Spanned;

use super::{Config, error::Errors, raw::RawConfig};

/// Check `raw` and build the [`Config`] from what is valid; `base_dir` anchors relative
/// `key_file` paths. The caller rejects the config when `errs` is not empty afterwards.
pub(super) fn validate(raw: RawConfig, base_dir: &Path, errs: &mut Errors) -> Config {
    let interfaces = interfaces::interfaces(&raw, errs);
    let backend_interfaces = interfaces::backend_interfaces(&raw.backend_interfaces, errs);
    let metrics_addr = metrics_addr(raw.metrics_addr.as_ref(), errs);
    let capacity = capacity::validate_capacity(raw.capacity.as_ref(), errs);
    let vips = vip::vips(&raw.vips, base_dir, &capacity, errs);
    let kubernetes = kubernetes::validate_kubernetes(raw.kubernetes.as_ref(), errs);
    let reverse_nat = reverse_nat::validate_reverse_nat(raw.reverse_nat.as_ref(), errs);
    let bgp = bgp::validate_bgp(raw.bgp.as_ref(), base_dir, errs);
    let announce = bgp::announcements(&raw.vips, raw.bgp.is_some(), &bgp, errs);
    Config {
        file: errs.src.file.to_owned(),
        interfaces,
        backend_interfaces,
        metrics_addr,
        vips,
        kubernetes,
        reverse_nat,
        capacity,
        bgp,
        announce,
    }
}

/// `metrics_addr`: an address:port to serve Prometheus metrics on.
fn metrics_addr(raw: Option<&Spanned<String>>, errs: &mut Errors) -> Option<SocketAddr> {
    raw.and_then(|m| {
        m.get_ref()
            .parse::<SocketAddr>()
            .map_err(|_| {
                errs.at(
                    m.span(),
                    "metrics_addr",
                    format!(
                        "{:?} is not an address:port (e.g. \"127.0.0.1:7472\" or \"[::1]:7472\")",
                        m.get_ref()
                    ),
                )
            })
            .ok()
    })
}

/// `v` when it is in `lo..=hi`.
fn int_in(v: i64, lo: i64, hi: i64) -> Option<i64> {
    (lo..=hi).contains(&v).then_some(v)
}

/// Octets written as hex digits, two per octet (server IDs, keys).
fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    if let Some(c) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "{s:?} has the non-hex character {c:?}; write octets as hex digits, e.g. \"0a01\""
        ));
    }
    if !s.len().is_multiple_of(2) {
        return Err(format!(
            "{s:?} has an odd number of hex digits ({}); write two per octet",
            s.len()
        ));
    }
    Ok((0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
        .collect())
}

/// A VIP or backend address: unicast IPv4 or IPv6.
fn parse_addr(s: &str) -> Result<IpAddr, String> {
    let a: IpAddr = s.parse().map_err(|_| {
        format!("{s:?} is not an IPv4 or IPv6 address (e.g. \"198.18.0.100\" or \"fd00:18::100\")")
    })?;
    if a.is_unspecified() || a.is_multicast() {
        return Err(format!(
            "{s:?} is an unspecified or multicast address; use a unicast address"
        ));
    }
    Ok(a)
}

/// "IPv4" or "IPv6", for messages about mixed families.
fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}
