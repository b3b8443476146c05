//! The node's interfaces: `interfaces` (where XDP attaches, each with its XDP mode, the
//! top-level `xdp_mode` being the default for bare names) and `backend_interfaces` (where
//! the reverse-NAT TC program goes). Entries are names, globs or `"auto"`; which interfaces
//! they name is decided on the node, every second (`crate::ifaces`), so an entry that names
//! nothing there is not a config error.

use std::{collections::HashMap, ops::Range};

use toml::Spanned;

use crate::config::{
    Interface, XdpMode,
    error::Errors,
    raw::{RawConfig, RawInterface},
};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// `interfaces`, required and not empty. The top-level `xdp_mode` is checked first: its
/// message comes before those of the list.
pub(super) fn interfaces(raw: &RawConfig, errs: &mut Errors) -> Vec<Interface> {
    let default_mode = raw
        .xdp_mode
        .as_ref()
        .map(|m| parse_xdp_mode(m, "xdp_mode", errs))
        .unwrap_or_default();
    let mut interfaces = Vec::new();
    match &raw.interfaces {
        None => errs.at(
            0..0,
            "interfaces",
            "missing: name the external interface(s) XDP attaches to, e.g. interfaces = [\"eth0\"]",
        ),
        Some(list) if list.get_ref().is_empty() => errs.at(
            list.span(),
            "interfaces",
            "empty: name at least one interface, e.g. interfaces = [\"eth0\"]",
        ),
        Some(list) => {
            // Name -> the line that listed it first.
            let mut seen: HashMap<String, usize> = HashMap::new();
            for (i, item) in list.get_ref().iter().enumerate() {
                interfaces.push(interface(i, item, default_mode, &mut seen, errs));
            }
        }
    }
    interfaces
}

/// `interfaces[i]`: a bare name (XDP mode `default_mode`) or a table with its own mode.
/// An invalid or repeated name is reported but kept, so its mode is still checked.
fn interface(
    i: usize,
    item: &Spanned<RawInterface>,
    default_mode: XdpMode,
    seen: &mut HashMap<String, usize>,
    errs: &mut Errors,
) -> Interface {
    let field = format!("interfaces[{i}]");
    let (name, name_span, mode) = match item.get_ref() {
        RawInterface::Name(n) => (n.clone(), item.span(), None),
        RawInterface::Table(t) => (t.name.get_ref().clone(), t.name.span(), t.xdp_mode.as_ref()),
    };
    check_interface_name(&name, name_span, &format!("{field}.name"), seen, errs);
    let xdp_mode = match mode {
        None => default_mode,
        Some(m) => parse_xdp_mode(m, &format!("{field}.xdp_mode"), errs),
    };
    Interface { name, xdp_mode }
}

/// A valid interface name not listed before (recorded in `seen` with its line).
fn check_interface_name(
    name: &str,
    span: Range<usize>,
    field: &str,
    seen: &mut HashMap<String, usize>,
    errs: &mut Errors,
) {
    if !is_ifname(name) {
        errs.at(
            span,
            field,
            format!(
                "{name:?} is not an interface name: use 1..={IFNAME_MAX} characters \
                 without '/', ':' or spaces"
            ),
        );
    } else if let Some(line) = seen.get(name) {
        errs.at(
            span,
            field,
            format!("{name:?} is listed twice (also on line {line}); list each interface once"),
        );
    } else {
        seen.insert(name.to_owned(), errs.line_of(&span));
    }
}

/// `backend_interfaces`: the interfaces facing the backends, where the reverse-NAT TC
/// program goes. Invalid and repeated names are reported and left out.
pub(super) fn backend_interfaces(raw: &[Spanned<String>], errs: &mut Errors) -> Vec<String> {
    let mut backend_interfaces: Vec<String> = Vec::new();
    for (i, n) in raw.iter().enumerate() {
        let name = n.get_ref();
        let field = format!("backend_interfaces[{i}]");
        if !is_ifname(name) {
            errs.at(
                n.span(),
                &field,
                format!(
                    "{name:?} is not an interface name: use 1..={IFNAME_MAX} characters \
                     without '/', ':' or spaces"
                ),
            );
        } else if backend_interfaces.contains(name) {
            errs.at(
                n.span(),
                &field,
                format!("{name:?} is listed twice; list each interface once"),
            );
        } else {
            backend_interfaces.push(name.clone());
        }
    }
    backend_interfaces
}

/// "native" or "generic"; anything else is reported and taken as native.
fn parse_xdp_mode(m: &Spanned<String>, field: &str, errs: &mut Errors) -> XdpMode {
    match m.get_ref().as_str() {
        "native" => XdpMode::Native,
        "generic" => XdpMode::Generic,
        other => {
            errs.at(
                m.span(),
                field,
                format!("{other:?} is not an XDP mode: use \"native\" or \"generic\""),
            );
            XdpMode::Native
        }
    }
}

/// A name the kernel accepts for an interface (and `ip` prints unambiguously).
fn is_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}
