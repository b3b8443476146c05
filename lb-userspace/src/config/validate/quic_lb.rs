//! A VIP's `[[vips.quic_lb]]` configs: rotation value, server-ID and nonce lengths (as
//! [`quic_lb::Config::new`] accepts them), the key (`key` in hex, or `key_file`, or neither
//! for plaintext), and one config per rotation value.

use std::{collections::HashMap, path::Path};

use lb_common::quic_lb;
use toml::Spanned;

use super::parse_hex;
use crate::config::{
    error::Errors,
    raw::{RawQuicLb, RawVip},
};

/// The valid configs of the entry `vf`, in file order; invalid ones are reported and left
/// out.
pub(super) fn configs(
    v: &RawVip,
    vf: &str,
    base_dir: &Path,
    errs: &mut Errors,
) -> Vec<quic_lb::Config> {
    let mut configs: Vec<quic_lb::Config> = Vec::new();
    // Rotation value -> the config (index, line) that uses it.
    let mut config_lines: HashMap<u8, (usize, usize)> = HashMap::new();
    for (ci, sc) in v.quic_lb.iter().enumerate() {
        let c = sc.get_ref();
        let cf = format!("{vf}.quic_lb[{ci}]");
        let Some(cfg) = config(c, &cf, base_dir, errs) else {
            continue;
        };
        let config_id = cfg.config_id();
        if let Some((other, line)) = config_lines.get(&config_id) {
            errs.at(
                c.config_id.span(),
                &format!("{cf}.config_id"),
                format!(
                    "config rotation {config_id} is already used by {vf}.quic_lb[{other}] \
                     (line {line}); each config of a VIP needs its own value in 0..={}",
                    quic_lb::MAX_CONFIG_ID
                ),
            );
        } else {
            config_lines.insert(config_id, (ci, errs.line_of(&c.config_id.span())));
            configs.push(cfg);
        }
    }
    configs
}

/// One config (`cf`), when all its values are valid. Every value is checked, so one config
/// can report several problems; [`quic_lb::Config::new`]'s own checks run only when the
/// numbers fit and the key is good.
fn config(c: &RawQuicLb, cf: &str, base_dir: &Path, errs: &mut Errors) -> Option<quic_lb::Config> {
    let config_id = octet(&c.config_id, cf, "config_id", errs);
    let sid_len = octet(&c.server_id_len, cf, "server_id_len", errs);
    let nonce_len = octet(&c.nonce_len, cf, "nonce_len", errs);
    let key = key(c, cf, base_dir, errs);
    let encode_length = c.encode_length.as_ref().is_none_or(|e| *e.get_ref());
    let (Some(config_id), Some(sid_len), Some(nonce_len), Ok(key)) =
        (config_id, sid_len, nonce_len, key)
    else {
        return None;
    };
    match quic_lb::Config::new(config_id, sid_len, nonce_len, key, encode_length) {
        Ok(cfg) => Some(cfg),
        Err(e) => {
            let (span, name) = match e {
                quic_lb::ConfigError::ConfigId { .. } => (c.config_id.span(), "config_id"),
                quic_lb::ConfigError::ServerIdLength { .. } => {
                    (c.server_id_len.span(), "server_id_len")
                }
                _ => (c.nonce_len.span(), "nonce_len"),
            };
            errs.at(span, &format!("{cf}.{name}"), e.to_string());
            None
        }
    }
}

/// `cf.name` as an octet; the range proper is [`quic_lb::Config::new`]'s to check.
fn octet(f: &Spanned<i64>, cf: &str, name: &str, errs: &mut Errors) -> Option<u8> {
    match u8::try_from(*f.get_ref()) {
        Ok(n) => Some(n),
        Err(_) => {
            errs.at(
                f.span(),
                &format!("{cf}.{name}"),
                format!("{} is out of range for {name}", f.get_ref()),
            );
            None
        }
    }
}

/// The config's key: `Ok(None)` for plaintext, `Err(())` when a problem was reported.
fn key(
    c: &RawQuicLb,
    cf: &str,
    base_dir: &Path,
    errs: &mut Errors,
) -> Result<Option<[u8; 16]>, ()> {
    match (&c.key, &c.key_file) {
        (Some(_), Some(kf)) => {
            errs.at(
                kf.span(),
                &format!("{cf}.key_file"),
                "both key and key_file are given; give one of them (or neither for plaintext)",
            );
            Err(())
        }
        (Some(k), None) => parse_key_hex(k.get_ref())
            .map(Some)
            .map_err(|m| errs.at(k.span(), &format!("{cf}.key"), m)),
        (None, Some(kf)) => read_key_file(&base_dir.join(kf.get_ref()))
            .map(Some)
            .map_err(|m| errs.at(kf.span(), &format!("{cf}.key_file"), m)),
        (None, None) => Ok(None),
    }
}

/// A key written as 32 hex digits.
fn parse_key_hex(s: &str) -> Result<[u8; 16], String> {
    let bytes = parse_hex(s)?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "{s:?} is {} hex digits; a QUIC-LB key is 16 octets = 32 hex digits",
            b.len() * 2
        )
    })
}

/// A `key_file`: the key as 32 hex digits (surrounding whitespace ignored) or 16 raw octets.
fn read_key_file(path: &Path) -> Result<[u8; 16], String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if let Ok(text) = std::str::from_utf8(&data) {
        let t = text.trim();
        if t.len() == 32 && t.chars().all(|c| c.is_ascii_hexdigit()) {
            return parse_key_hex(t);
        }
    }
    data.as_slice().try_into().map_err(|_| {
        format!(
            "{} holds {} octets; a key file holds the 16-octet key as 32 hex digits or as 16 raw octets",
            path.display(),
            data.len()
        )
    })
}
