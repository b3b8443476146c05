//! `lb cid encode` / `lb cid decode`, run as the real binary: outputs, exit codes, and error
//! messages that name the argument.
// Test code: a panic is the failure report (the product denies unwrap and expect).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn lb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("running the lb binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Runs `lb args` and expects exit 0 and one line of output.
fn ok(args: &[&str]) -> String {
    let o = lb(args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "lb {args:?}: stderr {}",
        stderr(&o)
    );
    assert!(o.stderr.is_empty(), "lb {args:?}: stderr {}", stderr(&o));
    let out = stdout(&o);
    assert!(out.ends_with('\n') && out.lines().count() == 1, "{out:?}");
    out.trim_end().to_string()
}

/// Runs `lb args` and expects exit `code`, nothing on stdout, and `needles` on stderr.
fn fails(args: &[&str], code: i32, needles: &[&str]) -> String {
    let o = lb(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "lb {args:?}: stderr {err}");
    assert!(o.stdout.is_empty(), "lb {args:?}: stdout {}", stdout(&o));
    for n in needles {
        assert!(err.contains(n), "lb {args:?}: stderr {err:?} lacks {n:?}");
    }
    err
}

/// Our own errors are one line: `lb cid: <argument>: <what>`.
fn fails_one_line(args: &[&str], code: i32, prefix: &str, needles: &[&str]) {
    let err = fails(args, code, needles);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(
        err.starts_with(prefix),
        "{err:?} does not start with {prefix:?}"
    );
}

fn cfg_args<'a>(cr: &'a str, sid_len: &'a str, nonce_len: &'a str) -> Vec<&'a str> {
    vec![
        "--cr-bits",
        cr,
        "--server-id-len",
        sid_len,
        "--nonce-len",
        nonce_len,
    ]
}

fn encode(cfg: &[&str], key: Option<&str>, sid: &str, nonce: &str) -> String {
    let mut a = vec!["cid", "encode"];
    a.extend_from_slice(cfg);
    if let Some(k) = key {
        a.extend(["--key", k]);
    }
    a.extend(["--server-id", sid, "--nonce", nonce]);
    ok(&a)
}

fn decode_args<'a>(cfg: &[&'a str], key: Option<&'a str>, cid: &'a str) -> Vec<&'a str> {
    let mut a = vec!["cid", "decode"];
    a.extend_from_slice(cfg);
    if let Some(k) = key {
        a.extend(["--key", k]);
    }
    a.push(cid);
    a
}

fn decode(cfg: &[&str], key: Option<&str>, cid: &str) -> String {
    ok(&decode_args(cfg, key, cid))
}

const KEY: &str = "8f95f09245765f80256934e50c66207f";

/// draft-ietf-quic-load-balancers-21 Appendix B (every vector self-encodes the length) and the
/// §5.4.2 example, as the codec's tests read them (two printed rows are errata there; these
/// are the corrected rows lb-common's tests establish): (cr, sid, nonce, key, cid).
const VECTORS: &[(&str, &str, &str, Option<&str>, &str)] = &[
    ("0", "c4605e", "4504cc4f", None, "07c4605e4504cc4f"),
    (
        "1",
        "350d28b420",
        "03487d970b",
        None,
        "2a350d28b42003487d970b",
    ),
    ("0", "ed793a", "ee080dbf", Some(KEY), "0720b1d07b359d3c"),
    (
        "1",
        "ed793a51d49b8f5fab65",
        "ee080dbf48",
        Some(KEY),
        "2fcc381bc74cb4fbad2823a3d1f8fed2",
    ),
    (
        "2",
        "ed793a51d49b8f5f",
        "ee080dbf48c0d1e5",
        Some(KEY),
        "504dd2d05a7b0de9b2b9907afb5ecf8cc3",
    ),
    (
        "3",
        "ed793a51d49b8f5fab",
        "ee080dbf48c0d1e55d",
        Some(KEY),
        "725779c9cc86beb3a3a4a3ca96fce4bfe0cdbc",
    ),
    (
        "0",
        "31441a",
        "9c69c275",
        Some("fdf726a9893ec05c0632d3956680baf0"),
        "0767947d29be054a",
    ),
];

#[test]
fn draft_test_vectors_end_to_end() {
    for &(cr, sid, nonce, key, cid) in VECTORS {
        let (sl, nl) = ((sid.len() / 2).to_string(), (nonce.len() / 2).to_string());
        let cfg = cfg_args(cr, &sl, &nl);
        assert_eq!(encode(&cfg, key, sid, nonce), cid, "encode {sid}/{nonce}");
        assert_eq!(decode(&cfg, key, cid), sid, "decode {cid}");
        // Input case does not matter; output is lowercase.
        assert_eq!(
            decode(
                &cfg,
                key.map(str::to_uppercase).as_deref(),
                &cid.to_uppercase()
            ),
            sid
        );
    }
}

#[test]
fn round_trips_in_every_mode() {
    // (sid_len, nonce_len, key): plaintext, single pass (3 + 13 = 16), four pass with the
    // nonce at least as long as the server ID (three decryption passes) and shorter (four),
    // and the longest CID (1 + 15 + 4 = 20 octets).
    let cases: &[(usize, usize, Option<&str>)] = &[
        (2, 6, None),
        (15, 4, None),
        (3, 13, Some(KEY)),
        (8, 8, Some(KEY)),
        (3, 6, Some(KEY)),
        (12, 5, Some(KEY)),
        (15, 4, Some(KEY)),
        (1, 4, Some("000102030405060708090a0b0c0d0e0f")),
    ];
    for (i, &(sl, nl, key)) in cases.iter().enumerate() {
        let sid: String = (0..sl)
            .map(|j| format!("{:02x}", (17 * j + i) as u8))
            .collect();
        let nonce: String = (0..nl)
            .map(|j| format!("{:02x}", (29 * j + 7) as u8))
            .collect();
        let cr = (i % 7).to_string();
        let (sls, nls) = (sl.to_string(), nl.to_string());
        let cfg = cfg_args(&cr, &sls, &nls);
        let cid = encode(&cfg, key, &sid, &nonce);
        assert_eq!(cid.len(), 2 * (1 + sl + nl), "{cid}");
        let first = u8::from_str_radix(&cid[..2], 16).unwrap();
        assert_eq!(first >> 5, (i % 7) as u8, "config rotation bits");
        assert_eq!(
            usize::from(first & 0x1f),
            sl + nl,
            "length self-description"
        );
        if key.is_none() {
            assert_eq!(cid[2..], format!("{sid}{nonce}"), "plaintext body");
        } else if sl >= 3 {
            assert!(!cid.contains(&sid), "server ID visible in {cid}");
        }
        assert_eq!(decode(&cfg, key, &cid), sid);
        // Octets past the configured length are ignored, as by the load balancer.
        if 1 + sl + nl < 20 {
            assert_eq!(decode(&cfg, key, &format!("{cid}ff")), sid);
        }
    }
}

#[test]
fn unroutable_cids_exit_3() {
    let cfg = cfg_args("0", "3", "4");
    let prefix = "lb cid: unroutable under this configuration: ";
    // Other config rotation bits (0x27: config 1).
    fails_one_line(
        &decode_args(&cfg, None, "27c4605e4504cc4f"),
        3,
        prefix,
        &["config 1, not config 0"],
    );
    // 0b111: unroutable whatever the configuration.
    fails_one_line(
        &decode_args(&cfg, None, "e7c4605e4504cc4f"),
        3,
        prefix,
        &["unroutable (config rotation bits 0b111)"],
    );
    fails_one_line(
        &decode_args(&cfg, Some(KEY), "ff20b1d07b359d3c"),
        3,
        prefix,
        &["0b111"],
    );
    // Too short: 7 octets where 8 are needed, and empty.
    fails_one_line(
        &decode_args(&cfg, None, "07c4605e4504cc"),
        3,
        prefix,
        &["7 octets", "at least 8"],
    );
    fails_one_line(
        &decode_args(&cfg, None, ""),
        3,
        prefix,
        &["0 octets", "at least 8"],
    );
}

#[test]
fn bad_arguments_exit_2_naming_the_argument() {
    let cfg = cfg_args("0", "3", "4");
    let enc = |key: Option<&str>, sid: &str, nonce: &str| {
        let mut a = vec!["cid", "encode"];
        a.extend_from_slice(&cfg);
        if let Some(k) = key {
            a.extend(["--key", k]);
        }
        a.extend(["--server-id", sid, "--nonce", nonce]);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>, prefix: &str, needles: &[&str]| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        fails_one_line(&a, 2, prefix, needles);
    };
    // Key: length, digits.
    run(
        enc(Some(&KEY[..30]), "c4605e", "4504cc4f"),
        "lb cid: --key: expected 32 hex digits (16 octets), got 30",
        &[],
    );
    run(
        enc(Some(&format!("{KEY}00")), "c4605e", "4504cc4f"),
        "lb cid: --key: expected 32 hex digits (16 octets), got 34",
        &[],
    );
    run(
        enc(
            Some("8f95f09245765f80256934e50c66207g"),
            "c4605e",
            "4504cc4f",
        ),
        "lb cid: --key: ",
        &["'g' at position 31 is not a hex digit"],
    );
    // Server ID: odd, not hex, wrong length.
    run(
        enc(None, "c4605", "4504cc4f"),
        "lb cid: --server-id: ",
        &["odd number of hex digits (5)"],
    );
    run(
        enc(None, "c4605z", "4504cc4f"),
        "lb cid: --server-id: ",
        &["'z' at position 5"],
    );
    run(
        enc(None, "c460", "4504cc4f"),
        "lb cid: --server-id: ",
        &["expected 3 octets (--server-id-len 3), got 2"],
    );
    run(
        enc(None, "c4605e00", "4504cc4f"),
        "lb cid: --server-id: ",
        &["expected 3 octets", "got 4"],
    );
    // Nonce: odd, not hex, wrong length.
    run(
        enc(None, "c4605e", "4504cc4"),
        "lb cid: --nonce: ",
        &["odd number of hex digits (7)"],
    );
    run(
        enc(None, "c4605e", "0x504cc4"),
        "lb cid: --nonce: ",
        &["'x' at position 1"],
    );
    run(
        enc(None, "c4605e", "4504cc4f00"),
        "lb cid: --nonce: ",
        &["expected 4 octets (--nonce-len 4), got 5"],
    );
    run(
        enc(None, "c4605e", ""),
        "lb cid: --nonce: ",
        &["expected 4 octets", "got 0"],
    );
    // Server ID + nonce longer than 19 octets: both lengths named.
    run(
        {
            let mut a: Vec<String> = ["cid", "encode"].map(String::from).to_vec();
            a.extend(
                cfg_args("0", "15", "5")
                    .into_iter()
                    .chain(["--server-id", "00", "--nonce", "00"])
                    .map(String::from),
            );
            a
        },
        "lb cid: --server-id-len + --nonce-len: ",
        &["15 + nonce length 5 = 20 octets is too long"],
    );
    // The CID to decode: odd, not hex, longer than any QUIC CID.
    let dec = |cid: &str| {
        decode_args(&cfg, None, cid)
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    run(
        dec("07c4605e4504cc4"),
        "lb cid: <CID>: ",
        &["odd number of hex digits (15)"],
    );
    run(
        dec("07c4605e4504cc4q"),
        "lb cid: <CID>: ",
        &["'q' at position 15"],
    );
    run(
        dec(&"07".repeat(21)),
        "lb cid: <CID>: ",
        &["21 octets is longer than a QUIC connection ID can be (20)"],
    );
    // Decode checks the key too.
    {
        let a = decode_args(&cfg, Some("abcd"), "07c4605e4504cc4f");
        fails_one_line(
            &a,
            2,
            "lb cid: --key: expected 32 hex digits (16 octets), got 4",
            &[],
        );
    }
}

#[test]
fn clap_usage_errors_exit_2_naming_the_argument() {
    let with = |cr: &str, sl: &str, nl: &str| {
        let mut a = vec!["cid", "decode"];
        a.extend(cfg_args(cr, sl, nl));
        a.push("07c4605e4504cc4f");
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    for (args, arg) in [
        (with("7", "3", "4"), "--cr-bits"),
        (with("x", "3", "4"), "--cr-bits"),
        (with("0", "0", "4"), "--server-id-len"),
        (with("0", "16", "4"), "--server-id-len"),
        (with("0", "3", "3"), "--nonce-len"),
        (with("0", "3", "19"), "--nonce-len"),
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&a, 2, &[arg]);
    }
    // Missing arguments.
    fails(
        &["cid", "decode", "--cr-bits", "0", "--server-id-len", "3"],
        2,
        &["--nonce-len"],
    );
    fails(
        &[
            "cid",
            "encode",
            "--cr-bits",
            "0",
            "--server-id-len",
            "3",
            "--nonce-len",
            "4",
        ],
        2,
        &["--server-id", "--nonce"],
    );
    fails(
        &[
            "cid",
            "decode",
            "--cr-bits",
            "0",
            "--server-id-len",
            "3",
            "--nonce-len",
            "4",
        ],
        2,
        &["<CID>"],
    );
    fails(&["cid"], 2, &["encode", "decode"]);
}

#[test]
fn help_describes_every_argument() {
    let o = lb(&["cid", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    let h = stdout(&o);
    for w in ["encode", "decode", "Exit status", "unroutable"] {
        assert!(h.contains(w), "cid --help lacks {w}: {h}");
    }
    for (sub, extra) in [
        ("encode", ["--server-id", "--nonce "]),
        ("decode", ["<CID>", "20 octets"]),
    ] {
        let o = lb(&["cid", sub, "--help"]);
        assert_eq!(o.status.code(), Some(0));
        let h = stdout(&o);
        for w in [
            "--cr-bits",
            "--server-id-len",
            "--nonce-len",
            "--key",
            "32 hex digits",
        ]
        .iter()
        .chain(extra.iter())
        {
            assert!(h.contains(w), "cid {sub} --help lacks {w}: {h}");
        }
    }
}
