//! `[kubernetes]`: the settings of `lb run --kube` (which Services are ours, the per-node
//! heartbeat Leases, and the gossip between nodes). Absent values keep their defaults ([`KubeSettings::default`]).

use std::time::Duration;

use toml::Spanned;

use super::int_in;
use crate::config::{DEFAULT_LOAD_BALANCER_CLASS, KubeSettings, error::Errors, raw::RawKubernetes};

/// The `[kubernetes]` table with defaults filled in; an invalid value is reported and its
/// default kept.
pub(super) fn validate_kubernetes(
    raw: Option<&Spanned<RawKubernetes>>,
    errs: &mut Errors,
) -> KubeSettings {
    let mut k = KubeSettings::default();
    let Some(raw) = raw else {
        return k;
    };
    let raw = raw.get_ref();
    if let Some(class) = load_balancer_class(raw.load_balancer_class.as_ref(), errs) {
        k.load_balancer_class = class;
    }
    if let Some(d) = raw.default_class {
        k.default_class = d;
    }
    if let Some(ns) = lease_namespace(raw.lease_namespace.as_ref(), errs) {
        k.lease_namespace = Some(ns);
    }
    if let Some(d) = millis(
        &raw.lease_duration_ms,
        "kubernetes.lease_duration_ms",
        200,
        600_000,
        errs,
    ) {
        k.lease_duration = d;
    }
    if let Some(d) = millis(
        &raw.lease_renew_ms,
        "kubernetes.lease_renew_ms",
        50,
        300_000,
        errs,
    ) {
        k.lease_renew = d;
    }
    check_renewal_rate(raw, &k, errs);
    validate_gossip(raw, &mut k, errs);
    k
}

/// The `gossip_*` keys (see [`KubeSettings`]).
fn validate_gossip(raw: &RawKubernetes, k: &mut KubeSettings, errs: &mut Errors) {
    if let Some(p) = &raw.gossip_port {
        match int_in(*p.get_ref(), 1, 65535) {
            Some(n) => k.gossip_port = n as u16,
            None => errs.at(
                p.span(),
                "kubernetes.gossip_port",
                format!("{} is not a UDP port; use 1..=65535", p.get_ref()),
            ),
        }
    }
    if let Some(f) = &raw.gossip_key_file {
        if f.get_ref().is_empty() {
            errs.at(
                f.span(),
                "kubernetes.gossip_key_file",
                "is empty: name the file holding the gossip key, or leave the key out",
            );
        } else {
            k.gossip_key_file = Some(f.get_ref().into());
        }
    }
    if let Some(d) = millis(
        &raw.gossip_probe_ms,
        "kubernetes.gossip_probe_ms",
        20,
        10_000,
        errs,
    ) {
        k.gossip_probe = d;
    }
    if let Some(d) = millis(
        &raw.gossip_suspect_ms,
        "kubernetes.gossip_suspect_ms",
        20,
        60_000,
        errs,
    ) {
        k.gossip_suspect = d;
    }
}

/// `load_balancer_class`, when given and valid.
fn load_balancer_class(c: Option<&Spanned<String>>, errs: &mut Errors) -> Option<String> {
    let c = c?;
    let class = c.get_ref();
    // A loadBalancerClass must be a label-style key with a domain prefix.
    let ok = class.contains('/')
        && class.len() <= 253
        && class
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-._/".contains(ch));
    if ok {
        return Some(class.clone());
    }
    errs.at(
        c.span(),
        "kubernetes.load_balancer_class",
        format!(
            "{class:?} is not a loadBalancerClass: use a prefixed name such as \"{DEFAULT_LOAD_BALANCER_CLASS}\""
        ),
    );
    None
}

/// `lease_namespace`, when given and a valid namespace name (an RFC 1123 label).
fn lease_namespace(ns: Option<&Spanned<String>>, errs: &mut Errors) -> Option<String> {
    let ns = ns?;
    let n = ns.get_ref();
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
        && !n.starts_with('-')
        && !n.ends_with('-');
    if ok {
        return Some(n.clone());
    }
    errs.at(
        ns.span(),
        "kubernetes.lease_namespace",
        format!("{n:?} is not a namespace name: lower-case letters, digits and '-', at most 63"),
    );
    None
}

/// A duration in milliseconds, when given and in `lo..=hi`.
fn millis(
    v: &Option<Spanned<i64>>,
    field: &str,
    lo: i64,
    hi: i64,
    errs: &mut Errors,
) -> Option<Duration> {
    v.as_ref().and_then(|v| match int_in(*v.get_ref(), lo, hi) {
        Some(n) => Some(Duration::from_millis(n as u64)),
        None => {
            errs.at(
                v.span(),
                field,
                format!(
                    "{} is out of range; use {lo}..={hi} milliseconds",
                    v.get_ref()
                ),
            );
            None
        }
    })
}

/// A node must renew its Lease at least twice per lease duration, or one lost renewal
/// declares it dead. Checked on the resulting settings, defaults included; reported at
/// `lease_renew_ms` (or `lease_duration_ms`, or the file's start, whichever is given).
fn check_renewal_rate(raw: &RawKubernetes, k: &KubeSettings, errs: &mut Errors) {
    if k.lease_renew * 2 <= k.lease_duration {
        return;
    }
    let span = raw
        .lease_renew_ms
        .as_ref()
        .or(raw.lease_duration_ms.as_ref())
        .map(|s| s.span())
        .unwrap_or(0..0);
    errs.at(
        span,
        "kubernetes.lease_renew_ms",
        format!(
            "{} ms renews a {} ms lease too rarely: one lost renewal would declare the node \
             dead; renew at most every half lease (e.g. lease_renew_ms = {})",
            k.lease_renew.as_millis(),
            k.lease_duration.as_millis(),
            k.lease_duration.as_millis() / 3
        ),
    );
}
