//! The CLI as an admin runs it: `normalize` from arguments and stdin, `serve --print-config`,
//! list edits in the embedded store, and clear errors.

use std::io::Write;
use std::process::Stdio;

use crate::support::{cli, cli_ok, temp_store};

fn normalize_stdin(args: &[&str], input: &[u8]) -> String {
    let mut child = crate::support::callguard()
        .arg("normalize")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn callguard normalize");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "normalize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn normalize_reads_stdin_one_result_per_line_in_order() {
    // CRLF, an empty line, bad UTF-8 and a missing final newline: still one line out per line in.
    let input = b"+7 (812) 123-45-67\r\n8 800 555-35-35\n\n\"Ivan\" <sip:+74951234567@pbx;user=phone>\n\xff\xfe 495\n101\nAnonymous\n8\xc2\xa0495\xc2\xa0123\xe2\x80\x9145\xe2\x80\x9167 \xd0\xb4\xd0\xbe\xd0\xb1. 123";
    let out = normalize_stdin(&[], input);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "+78121234567",
            "+78005553535",
            "anonymous",
            "+74951234567",
            lines.get(4).copied().unwrap_or("missing"),
            "local:101",
            "anonymous",
            "+74951234567",
        ]
    );
    assert!(lines[4].starts_with("invalid:"), "bad bytes: {}", lines[4]);
}

#[test]
fn normalize_arguments_and_country_flag() {
    let (_dir, store) = temp_store();
    let store = store.to_string_lossy().into_owned();
    let out = cli_ok(
        &store,
        &[
            "normalize",
            "--country",
            "GB",
            "020 7946 0958",
            "07911 123456",
            "+7 495 123 45 67",
        ],
    );
    assert_eq!(out, "+442079460958\n+447911123456\n+74951234567\n");
    let out = cli_ok(
        &store,
        &[
            "normalize",
            "--country",
            "US",
            "(212) 555-0100",
            "011 44 20 7946 0958",
        ],
    );
    assert_eq!(out, "+12125550100\n+442079460958\n");
    let out = cli(&store, &["normalize", "--country", "ZZ", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ZZ") && err.contains("RU"),
        "unclear error: {err}"
    );
}

#[test]
fn default_country_from_config_file_and_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("callguard.toml");
    std::fs::write(&config, "default_country = \"DE\"\n").expect("write config");
    let run = |env: Option<&str>| {
        let mut cmd = crate::support::callguard();
        cmd.arg("--config")
            .arg(&config)
            .args(["normalize", "030 1234567"]);
        if let Some(country) = env {
            cmd.env("CALLGUARD_DEFAULT_COUNTRY", country);
        }
        let out = cmd.output().expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(run(None), "+49301234567\n");
    // Environment beats the file: the same digits read with the French plan.
    assert_eq!(run(Some("FR")), "+33301234567\n");
}

#[test]
fn print_config_shows_effective_values_and_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("callguard.toml");
    std::fs::write(
        &config,
        "default_country = \"UA\"\n[agi]\non_block = \"dialplan\"\n",
    )
    .expect("write config");
    let out = crate::support::callguard()
        .arg("--config")
        .arg(&config)
        .args(["serve", "--agi-listen", "127.0.0.1:1", "--print-config"])
        .env("CALLGUARD_RULES__DEFAULT_ACTION", "hangup 17")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    for expected in [
        "default_country = \"UA\"",
        "on_block = \"dialplan\"",
        "default_action = \"hangup 17\"",
        "listen = \"127.0.0.1:1\"",
    ] {
        assert!(
            printed.contains(expected),
            "missing {expected:?} in:\n{printed}"
        );
    }
    // What it prints is itself a valid config file.
    let again = dir.path().join("printed.toml");
    std::fs::write(&again, &printed).expect("write printed");
    let out = crate::support::callguard()
        .arg("--config")
        .arg(&again)
        .args(["serve", "--print-config"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), printed);
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("callguard.toml");
    std::fs::write(&config, "[agi]\nonblock = \"dialplan\"\n").expect("write config");
    let out = crate::support::callguard()
        .arg("--config")
        .arg(&config)
        .args(["serve", "--print-config"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("onblock"),
        "error does not name the key: {err}"
    );
}

#[test]
fn local_store_block_list_check_unblock() {
    let (_dir, store) = temp_store();
    let store = store.to_string_lossy().into_owned();
    cli_ok(
        &store,
        &[
            "block",
            "8 (495) 123-45-67",
            "--reason",
            "collectors",
            "--ttl",
            "7d",
        ],
    );
    cli_ok(&store, &["allow", "+7 495 765 43 21"]);
    let list = cli_ok(&store, &["list"]);
    assert!(
        list.contains("+74951234567") && list.contains("collectors"),
        "{list}"
    );
    assert!(list.contains("+74957654321"), "{list}");
    let json = cli_ok(&store, &["list", "--json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("list --json is JSON");
    assert!(parsed.to_string().contains("+74951234567"), "{json}");

    for form in [
        "+74951234567",
        "74951234567",
        "4951234567",
        "sip:84951234567@carrier",
    ] {
        let out = cli_ok(&store, &["check", form]);
        assert!(out.starts_with("block"), "{form}: {out}");
    }
    assert!(cli_ok(&store, &["check", "84957654321"]).starts_with("allow"));
    cli_ok(&store, &["unblock", "+7-495-123-45-67"]);
    assert!(cli_ok(&store, &["check", "84951234567"]).starts_with("allow"));
    assert!(!cli_ok(&store, &["list"]).contains("+74951234567"));
}
