//! Limits and lifecycle of a running server: source allow lists, the connection cap, slow
//! clients, the fail policy, SIGHUP reload, SIGTERM drain and `serve --check-config`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{
    Redis, Server, agi_call, cli_ok, env_block, free_port, http_get, metric_sum, temp_store, within,
};

const BLOCKED: &str = "+74951234567";

fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

/// A server on an embedded store with `config` as its file.
fn server_with_config(config: &str) -> (tempfile::TempDir, Server, std::path::PathBuf) {
    let (dir, store) = temp_store();
    let store = store.to_string_lossy().into_owned();
    cli_ok(&store, &["block", BLOCKED, "--reason", "debt collector"]);
    let config_path = dir.path().join("callguard.toml");
    write_config(&config_path, config);
    let server = Server::launch(
        &[
            "--config",
            &config_path.to_string_lossy(),
            "--store",
            &store,
        ],
        &[],
        true,
    );
    (dir, server, config_path)
}

fn metrics_text(server: &Server) -> String {
    http_get(server.metrics.expect("metrics listener"), "/metrics").1
}

/// Connects, sends an environment block and reads until the server closes. Returns what the
/// server sent and how long it took to close.
fn closed_without_a_word(addr: SocketAddr) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // The server may already have closed: a reset on write or read is a refusal too.
    let _written = s.write_all(&env_block("env_sip_84951234567.rx.raw", BLOCKED));
    let mut got = Vec::new();
    let _read = s.read_to_end(&mut got);
    (got, started.elapsed())
}

#[test]
fn source_outside_allow_from_is_refused_then_admitted_after_reload() {
    let (_dir, server, config_path) = server_with_config(
        "[agi]\nallow_from = [\"10.0.0.0/8\"]\n[esl]\nallow_from = [\"192.0.2.1\"]\n",
    );
    let (got, took) = closed_without_a_word(server.agi);
    assert!(got.is_empty(), "a refused PBX gets no command: {got:?}");
    assert!(
        took < Duration::from_secs(2),
        "refused at once, took {took:?}"
    );
    // FreeSWITCH connecting from outside esl.allow_from never hears `connect`.
    let mut fs = TcpStream::connect(server.esl.expect("esl")).expect("connect");
    fs.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = Vec::new();
    let _read = fs.read_to_end(&mut got);
    assert!(got.is_empty(), "{got:?}");
    let text = metrics_text(&server);
    for listener in ["agi", "esl"] {
        let refused = metric_sum(
            &text,
            "callguard_connections_refused_total",
            &[
                &format!(r#"listener="{listener}""#),
                r#"reason="not_allowed""#,
            ],
        );
        assert_eq!(refused, 1.0, "{listener}: {text}");
    }
    assert!(
        server
            .wait_log(
                "source address not in agi.allow_from",
                Duration::from_secs(5)
            )
            .is_some()
    );

    write_config(
        &config_path,
        "[agi]\nallow_from = [\"10.0.0.0/8\", \"127.0.0.1\"]\n",
    );
    server.signal("HUP");
    assert!(
        server
            .wait_log("config reloaded", Duration::from_secs(5))
            .is_some()
    );
    assert_eq!(agi_call(server.agi, BLOCKED).verdict(), "block");
}

#[test]
fn connection_over_the_cap_is_refused_cleanly() {
    let (_dir, server, _config) =
        server_with_config("[agi]\nmax_connections = 2\nread_timeout_ms = 10000\n");
    // Two PBX connections that say nothing hold both slots.
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.agi).expect("connect"))
        .collect();
    let active = |server: &Server| {
        metric_sum(
            &metrics_text(server),
            "callguard_sessions_active",
            &[r#"protocol="agi""#],
        )
    };
    assert!(within(Duration::from_secs(5), || active(&server) == 2.0).is_some());

    let (got, took) = closed_without_a_word(server.agi);
    assert!(got.is_empty(), "the extra call gets no command: {got:?}");
    assert!(
        took < Duration::from_secs(2),
        "refused at once, took {took:?}"
    );
    let text = metrics_text(&server);
    assert_eq!(
        metric_sum(
            &text,
            "callguard_connections_refused_total",
            &[r#"listener="agi""#, r#"reason="max_connections""#],
        ),
        1.0,
        "{text}"
    );

    drop(idle);
    // The freed slots take calls again.
    assert!(within(Duration::from_secs(5), || active(&server) == 0.0).is_some());
    assert_eq!(agi_call(server.agi, BLOCKED).verdict(), "block");
}

/// Sends `bytes` one at a time, `gap` apart, until the server closes; returns when it closed
/// (from the first byte) and how many bytes went out.
fn trickle(stream: &mut TcpStream, bytes: &[u8], gap: Duration) -> (Duration, usize) {
    stream
        .set_read_timeout(Some(Duration::from_millis(1)))
        .expect("timeout");
    let started = Instant::now();
    for (sent, byte) in bytes.iter().enumerate() {
        if stream.write_all(&[*byte]).is_err() {
            return (started.elapsed(), sent);
        }
        std::thread::sleep(gap);
        let mut buf = [0u8; 256];
        match stream.read(&mut buf) {
            Ok(0) => return (started.elapsed(), sent + 1),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (started.elapsed(), sent + 1),
        }
    }
    (started.elapsed(), bytes.len())
}

#[test]
fn slow_clients_are_dropped_at_the_read_timeout() {
    let (_dir, server, _config) =
        server_with_config("[agi]\nread_timeout_ms = 1000\n[esl]\nread_timeout_ms = 1000\n");
    // FastAGI: an environment block sent one byte every 200 ms never completes in time.
    let env = env_block("env_sip_84951234567.rx.raw", BLOCKED);
    let mut agi = TcpStream::connect(server.agi).expect("connect");
    let (took, sent) = trickle(&mut agi, &env, Duration::from_millis(200));
    assert!(sent < env.len(), "dropped before the block was complete");
    assert!(took < Duration::from_secs(4), "dropped after {took:?}");

    // ESL outbound: a FreeSWITCH that answers `connect` one byte at a time.
    let esl = server.esl.expect("esl listener");
    let mut fs = TcpStream::connect(esl).expect("connect");
    fs.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut connect = [0u8; 9];
    fs.read_exact(&mut connect)
        .expect("callguard sends connect");
    assert_eq!(&connect, b"connect\n\n");
    let reply = crate::support::fixture("freeswitch/outbound/call1_connect_reply.raw");
    let (took, sent) = trickle(&mut fs, &reply, Duration::from_millis(200));
    assert!(
        sent < reply.len(),
        "dropped before the channel data was complete"
    );
    assert!(took < Duration::from_secs(4), "dropped after {took:?}");

    let text = metrics_text(&server);
    for protocol in ["agi", "esl"] {
        let timeouts = metric_sum(
            &text,
            "callguard_connection_errors_total",
            &[&format!(r#"protocol="{protocol}""#), r#"kind="timeout""#],
        );
        assert_eq!(timeouts, 1.0, "{protocol}: {text}");
    }
}

#[test]
fn without_any_list_the_fail_policy_decides_within_the_budget() {
    // Redis is not up yet: the server has never loaded a list.
    let port = free_port();
    let store = format!("redis://127.0.0.1:{port}/0");
    let open = Server::launch(
        &["--store", &store],
        &[("CALLGUARD_DECISION_BUDGET_MS", "50")],
        false,
    );
    let closed = Server::launch(
        &["--store", &store],
        &[
            ("CALLGUARD_DECISION_BUDGET_MS", "50"),
            ("CALLGUARD_FAIL_POLICY", "fail_closed"),
        ],
        false,
    );
    let started = Instant::now();
    let outcome = agi_call(open.agi, "+74959990000");
    assert_eq!(outcome.verdict(), "allow", "{outcome:?}");
    assert_eq!(outcome.vars["CALLGUARD_RULE"], "fail_open");
    assert!(outcome.hangup_cause.is_none());
    let outcome = agi_call(closed.agi, "+74959990000");
    assert_eq!(outcome.verdict(), "block", "{outcome:?}");
    assert_eq!(outcome.vars["CALLGUARD_RULE"], "fail_closed");
    assert_eq!(outcome.hangup_cause.as_deref(), Some("21"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a call without a list must not wait long"
    );
    for (server, policy) in [(&open, "fail_open"), (&closed, "fail_closed")] {
        let text = metrics_text(server);
        let counted = metric_sum(
            &text,
            "callguard_fail_policy_decisions_total",
            &[&format!(r#"policy="{policy}""#)],
        );
        assert_eq!(counted, 1.0, "{text}");
    }

    // Once Redis is up and the list loaded, the list decides again, not the policy.
    let redis = Redis::start_on(port);
    redis.cmd(&["SET", &format!("callguard:block:{BLOCKED}"), "spam"]);
    let listed = within(Duration::from_secs(15), || {
        agi_call(closed.agi, "+74959990000").verdict() == "allow"
            && agi_call(closed.agi, BLOCKED).verdict() == "block"
    });
    assert!(listed.is_some(), "the loaded list never took over");
}

#[test]
fn sighup_reloads_and_a_bad_config_keeps_the_running_one() {
    let (_dir, server, config_path) =
        server_with_config("[rules]\ndefault_action = \"hangup 21\"\n");
    assert_eq!(
        agi_call(server.agi, BLOCKED).hangup_cause.as_deref(),
        Some("21")
    );

    write_config(
        &config_path,
        "[rules]\ndefault_action = \"hangup 17\"\n[call_log]\nall_calls = true\n",
    );
    server.signal("HUP");
    let line = server
        .wait_log("config reloaded", Duration::from_secs(5))
        .expect("reload logged");
    assert!(
        line.contains("only after a restart") && line.contains("call_log"),
        "{line}"
    );
    assert_eq!(
        agi_call(server.agi, BLOCKED).hangup_cause.as_deref(),
        Some("17")
    );

    write_config(&config_path, "[rules]\ndefault_action = \"explode\"\n");
    server.signal("HUP");
    let line = server
        .wait_log("config reload failed", Duration::from_secs(5))
        .expect("failure logged");
    assert!(
        line.contains("keeping the running config") && line.contains("rules.default_action"),
        "{line}"
    );
    assert_eq!(
        agi_call(server.agi, BLOCKED).hangup_cause.as_deref(),
        Some("17"),
        "the running config stays"
    );
    let text = metrics_text(&server);
    assert_eq!(
        metric_sum(&text, "callguard_config_reloads_total", &[r#"result="ok""#]),
        1.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "callguard_config_reloads_total",
            &[r#"result="error""#]
        ),
        1.0
    );
}

#[test]
fn sigterm_finishes_the_call_in_flight_then_exits() {
    let (_dir, mut server, _config) = server_with_config("");
    // A call that has sent its environment and is slow to answer the first command.
    let mut pbx = TcpStream::connect(server.agi).expect("connect");
    pbx.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    pbx.write_all(&env_block("env_sip_84951234567.rx.raw", BLOCKED))
        .expect("env");
    let mut reader = BufReader::new(pbx.try_clone().expect("clone"));
    let mut first = String::new();
    reader.read_line(&mut first).expect("first command");
    assert!(
        first.starts_with("SET VARIABLE CALLGUARD_VERDICT"),
        "{first}"
    );

    server.signal("TERM");
    assert!(
        server
            .wait_log("draining", Duration::from_secs(5))
            .is_some()
    );
    // New calls are no longer taken...
    let refused = within(Duration::from_secs(2), || {
        TcpStream::connect(server.agi).is_err()
    });
    assert!(
        refused.is_some(),
        "the listener still accepts after SIGTERM"
    );
    // ...but the one in flight runs to its verdict.
    let mut commands = vec![first.trim_end().to_owned()];
    pbx.write_all(b"200 result=1\n").expect("reply");
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let reply: &[u8] = if line.starts_with("EXEC Hangup") {
            b"200 result=-1\nHANGUP\n"
        } else {
            b"200 result=1\n"
        };
        commands.push(line.trim_end().to_owned());
        if pbx.write_all(reply).is_err() {
            break;
        }
    }
    assert!(
        commands.iter().any(|c| c.starts_with("EXEC Hangup")),
        "the blocked call was hung up: {commands:?}"
    );
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("exits after draining");
    assert!(status.success(), "{status:?}");
}

#[test]
fn check_config_reports_ok_or_the_first_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("callguard.toml");
    let check = |text: &str| {
        write_config(&config, text);
        crate::support::callguard()
            .arg("--config")
            .arg(&config)
            .args(["serve", "--check-config"])
            .output()
            .expect("run callguard")
    };
    let ok = check(
        "store = \"redis://callguard:s3cret@127.0.0.1:6390/2\"\n\
         [agi]\nlisten = \"0.0.0.0:4573\"\nallow_from = [\"192.0.2.0/24\"]\n",
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("192.0.2.0/24"), "{stdout}");
    assert!(
        stdout.contains("callguard:***@") && !stdout.contains("s3cret"),
        "{stdout}"
    );

    for (text, key) in [
        ("[agi]\nallow_from = [\"10.0.0.0/33\"]\n", "agi.allow_from"),
        ("fail_policy = \"sometimes\"\n", "fail_policy"),
        ("log_level = \"info,[\"\n", "log_level"),
        ("store = \"/no/such/dir/lists.toml\"\n", "store"),
    ] {
        let bad = check(text);
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(bad.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains(key), "{text}: {stderr}");
    }
}

fn probe(url: &str) -> std::process::Output {
    crate::support::callguard()
        .args(["probe", url, "--timeout", "2s"])
        .output()
        .expect("run callguard probe")
}

#[test]
fn readyz_reports_the_snapshot_and_store_state_and_probe_checks_it() {
    let mut redis = Redis::start();
    redis.cmd(&["SET", &format!("callguard:block:{BLOCKED}"), "spam"]);
    let server = Server::start(&redis.url(), &[]);
    let metrics = server.metrics.expect("metrics listener");
    let ready = probe(&format!("http://{metrics}/readyz"));
    let body = String::from_utf8_lossy(&ready.stdout);
    assert!(ready.status.success(), "{body}");
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(body.contains("1 block and 0 allow rules"), "{body}");
    assert!(body.contains("store: up"), "{body}");

    // Redis going away does not make the node unready: calls are still decided from the
    // snapshot. /readyz says so.
    redis.kill();
    let down = within(Duration::from_secs(15), || {
        String::from_utf8_lossy(&probe(&format!("http://{metrics}/readyz")).stdout)
            .contains("store: down")
    });
    assert!(down.is_some(), "readyz never reported the store down");
    assert_eq!(agi_call(server.agi, BLOCKED).verdict(), "block");
    assert!(probe(&format!("http://{metrics}/healthz")).status.success());

    let missing = probe(&format!("http://{metrics}/nope"));
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    let closed = probe(&format!("http://127.0.0.1:{}/healthz", free_port()));
    assert_eq!(closed.status.code(), Some(1));
    let bad = probe("ftp://x:21/");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an http://"));
}
