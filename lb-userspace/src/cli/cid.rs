//! `lb cid`: encode and decode QUIC-LB connection IDs offline, with the same codec the XDP
//! program decodes with (`lb_common::quic_lb`). For operators checking a configuration, and for
//! scripts: the output is bare lowercase hex, and the exit status says what went wrong.
//!
//! Exit status: 0 success; 2 bad arguments (clap's own usage errors, and ours: one line naming
//! the argument); 3 `decode` found the CID unroutable under the given configuration.

use std::io::Write;

use clap::{Args, Subcommand};
use lb_common::quic_lb::{self, Config, ConfigError, DecodeError, MAX_CID_LEN, MAX_SERVER_ID_LEN};

/// Exit status for bad arguments (the same as clap's usage errors).
pub const EXIT_USAGE: i32 = 2;
/// Exit status of `decode` for a CID that does not decode under the configuration.
pub const EXIT_UNROUTABLE: i32 = 3;

/// Arguments of `lb cid`.
#[derive(Args, Debug, Clone)]
#[command(
    about = "Encode or decode QUIC-LB connection IDs (draft-ietf-quic-load-balancers)",
    after_help = "Both subcommands use the codec the XDP program decodes with. Without --key the \
                  CID is plaintext (first octet || server ID || nonce); with --key it is \
                  encrypted: single-pass AES-128 when --server-id-len + --nonce-len is 16, the \
                  four-pass Feistel network otherwise. The first octet carries the config \
                  rotation bits (--cr-bits) and the CID length minus one.\n\n\
                  Exit status: 0 success; 2 bad arguments; 3 (decode) the CID is unroutable \
                  under this configuration (other config rotation bits, 0b111, too short)."
)]
pub struct CidArgs {
    #[command(subcommand)]
    pub command: CidCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CidCommand {
    /// Print the CID a server issues for this server ID and nonce (lowercase hex).
    #[command(after_help = "Example (a draft test vector):\n  \
                  lb cid encode --cr-bits 0 --server-id-len 3 --nonce-len 4 \
                  --server-id c4605e --nonce 4504cc4f\n  07c4605e4504cc4f")]
    Encode(EncodeArgs),
    /// Print the server ID the load balancer reads from a CID (lowercase hex); exit 3 if the
    /// CID is unroutable under this configuration.
    #[command(after_help = "Example (a draft test vector):\n  \
                  lb cid decode --cr-bits 0 --server-id-len 3 --nonce-len 4 \
                  --key 8f95f09245765f80256934e50c66207f 0720b1d07b359d3c\n  ed793a")]
    Decode(DecodeArgs),
}

/// The QUIC-LB configuration, shared by both subcommands.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// Config rotation bits: the configuration's ID, the top three bits of the CID's first
    /// octet (7 = 0b111 marks unroutable CIDs and cannot be configured).
    #[arg(long, value_name = "0-6", value_parser = clap::value_parser!(u8).range(0..=6))]
    pub cr_bits: u8,
    /// Server ID length in octets (1-15).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=15))]
    pub server_id_len: u8,
    /// Nonce length in octets (at least 4; server ID + nonce at most 19).
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u8).range(4..=18))]
    pub nonce_len: u8,
    /// AES-128 key, 32 hex digits (16 octets). Without it the CID is plaintext.
    #[arg(long, value_name = "HEX")]
    pub key: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct EncodeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Server ID, hex, exactly --server-id-len octets.
    #[arg(long, value_name = "HEX")]
    pub server_id: String,
    /// Nonce, hex, exactly --nonce-len octets. A server must never issue two CIDs with the
    /// same nonce under one configuration.
    #[arg(long, value_name = "HEX")]
    pub nonce: String,
}

#[derive(Args, Debug, Clone)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The connection ID, hex (at most 20 octets; octets past the configuration's length are
    /// ignored, as the load balancer does).
    #[arg(value_name = "CID")]
    pub cid: String,
}

/// Why `lb cid` failed; [`CidError::exit_code`] is the process exit status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidError {
    /// A bad argument: `arg` names it (`--key`, `<CID>`, ...).
    #[error("lb cid: {arg}: {msg}")]
    Usage { arg: &'static str, msg: String },
    /// The CID does not decode under the configuration.
    #[error("lb cid: unroutable under this configuration: {0}")]
    Unroutable(DecodeError),
}

impl CidError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CidError::Usage { .. } => EXIT_USAGE,
            CidError::Unroutable(_) => EXIT_UNROUTABLE,
        }
    }
}

fn usage(arg: &'static str, msg: impl Into<String>) -> CidError {
    CidError::Usage {
        arg,
        msg: msg.into(),
    }
}

/// Runs `lb cid`: the result on `out`, a one-line error on `err`; returns the exit status.
pub fn run(args: &CidArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let (result, code) = match execute(args) {
        Ok(line) => (writeln!(out, "{line}").and_then(|()| out.flush()), 0),
        Err(e) => (
            writeln!(err, "{e}").and_then(|()| err.flush()),
            e.exit_code(),
        ),
    };
    match result {
        Ok(()) => code,
        // stdout closed (e.g. a pipe to `head`): nothing more useful to say.
        Err(_) => 1,
    }
}

/// Runs `lb cid` and returns what it prints on success (lowercase hex, no newline).
pub fn execute(args: &CidArgs) -> Result<String, CidError> {
    match &args.command {
        CidCommand::Encode(a) => {
            let cfg = config(&a.config)?;
            let server_id = parse_hex("--server-id", &a.server_id)?;
            expect_len(
                "--server-id",
                &server_id,
                cfg.server_id_len(),
                "--server-id-len",
            )?;
            let nonce = parse_hex("--nonce", &a.nonce)?;
            expect_len("--nonce", &nonce, cfg.nonce_len(), "--nonce-len")?;
            let mut cid = [0u8; MAX_CID_LEN];
            // The lengths were checked above and the configuration encodes the CID length, so
            // the low bits argument is unused; an error here would be a codec bug.
            let n = quic_lb::encode(&cfg, &server_id, &nonce, 0, &mut cid)
                .map_err(|e| usage("--server-id/--nonce", e.to_string()))?;
            Ok(to_hex(&cid[..n]))
        }
        CidCommand::Decode(a) => {
            let cfg = config(&a.config)?;
            let cid = parse_hex("<CID>", &a.cid)?;
            if cid.len() > MAX_CID_LEN {
                return Err(usage(
                    "<CID>",
                    format!(
                        "{} octets is longer than a QUIC connection ID can be ({MAX_CID_LEN})",
                        cid.len()
                    ),
                ));
            }
            let mut sid = [0u8; MAX_SERVER_ID_LEN];
            let n = quic_lb::decode(&cfg, &cid, &mut sid).map_err(CidError::Unroutable)?;
            Ok(to_hex(&sid[..n]))
        }
    }
}

/// The codec configuration from the arguments; the CLI always self-encodes the CID length.
pub fn config(a: &ConfigArgs) -> Result<Config, CidError> {
    let key = match &a.key {
        None => None,
        Some(k) => Some(parse_key(k)?),
    };
    Config::new(a.cr_bits, a.server_id_len, a.nonce_len, key, true).map_err(|e| {
        let arg = match e {
            ConfigError::ConfigId { .. } => "--cr-bits",
            ConfigError::ServerIdLength { .. } => "--server-id-len",
            ConfigError::NonceLength { .. } => "--nonce-len",
            ConfigError::TooLong { .. } => "--server-id-len + --nonce-len",
        };
        usage(arg, e.to_string())
    })
}

fn parse_key(k: &str) -> Result<[u8; 16], CidError> {
    let digits = k.chars().count();
    if let Some((i, c)) = k.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(usage(
            "--key",
            format!("{c:?} at position {i} is not a hex digit (expected 32 hex digits)"),
        ));
    }
    if digits != 32 {
        return Err(usage(
            "--key",
            format!("expected 32 hex digits (16 octets), got {digits}"),
        ));
    }
    let bytes = parse_hex("--key", k)?;
    // 32 hex digits are 16 octets.
    Ok(bytes.try_into().unwrap_or([0; 16]))
}

fn expect_len(arg: &'static str, v: &[u8], want: u8, len_arg: &str) -> Result<(), CidError> {
    if v.len() == want as usize {
        return Ok(());
    }
    Err(usage(
        arg,
        format!(
            "expected {want} octets ({len_arg} {want}), got {} ({} hex digits)",
            v.len(),
            2 * v.len()
        ),
    ))
}

/// Parses hex digits (either case, no prefix or separators) into octets.
pub fn parse_hex(arg: &'static str, s: &str) -> Result<Vec<u8>, CidError> {
    if let Some((i, c)) = s.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(usage(
            arg,
            format!("{c:?} at position {i} is not a hex digit"),
        ));
    }
    if !s.len().is_multiple_of(2) {
        return Err(usage(
            arg,
            format!(
                "odd number of hex digits ({}): give whole octets, two digits each",
                s.len()
            ),
        ));
    }
    Ok(s.as_bytes()
        .chunks_exact(2)
        .map(|p| (nibble(p[0]) << 4) | nibble(p[1]))
        .collect())
}

fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// Lowercase hex.
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        assert_eq!(parse_hex("x", "00aBff").unwrap(), vec![0x00, 0xab, 0xff]);
        assert_eq!(to_hex(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(parse_hex("x", "").unwrap(), Vec::<u8>::new());
        let e = parse_hex("--nonce", "abc").unwrap_err();
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(
            e.to_string().starts_with("lb cid: --nonce: odd number"),
            "{e}"
        );
        let e = parse_hex("--nonce", "0x12").unwrap_err();
        assert!(e.to_string().contains("'x' at position 1"), "{e}");
    }
}
