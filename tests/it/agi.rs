//! FastAGI end to end with the embedded store.

use std::time::Duration;

use crate::support::{Server, agi_call, cli_ok, raw_session, temp_store, within};

#[test]
fn block_in_one_format_refuses_every_delivered_format() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    cli_ok(
        store,
        &[
            "block",
            "8 (495) 123-45-67",
            "--reason",
            "collectors \"Vostok\"",
        ],
    );
    let server = Server::start(store, &[]);
    for delivered in [
        "+7 (495) 123-45-67",
        "84951234567",
        "74951234567",
        "4951234567",
        "sip:+74951234567@203.0.113.5;user=phone",
        "8 (495) 123-45-67 доб. 45",
    ] {
        let call = agi_call(server.agi, delivered);
        assert_eq!(call.verdict(), "block", "{delivered}: {call:?}");
        assert_eq!(call.vars["CALLGUARD_NUMBER"], "+74951234567");
        assert_eq!(call.vars["CALLGUARD_REASON"], "collectors \"Vostok\"");
        assert_eq!(call.hangup_cause.as_deref(), Some("21"), "{call:?}");
    }
    let other = agi_call(server.agi, "84957654321");
    assert_eq!(other.verdict(), "allow");
    assert_eq!(other.vars["CALLGUARD_REASON"], "no match");
    assert_eq!(other.hangup_cause, None);
}

#[test]
fn allow_list_wins_and_edits_reach_a_running_server() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let server = Server::start(store, &[]);
    assert_eq!(agi_call(server.agi, "84951234567").verdict(), "allow");

    cli_ok(store, &["block", "+74951234567"]);
    let took = within(Duration::from_secs(5), || {
        agi_call(server.agi, "84951234567").verdict() == "block"
    });
    assert!(took.is_some(), "block did not reach the server");

    cli_ok(store, &["allow", "4951234567", "--reason", "our lawyer"]);
    let took = within(Duration::from_secs(5), || {
        agi_call(server.agi, "+7 495 123 45 67").verdict() == "allow"
    });
    assert!(took.is_some(), "allow did not win");
    assert_eq!(
        agi_call(server.agi, "84951234567").vars["CALLGUARD_REASON"],
        "our lawyer"
    );

    let check = cli_ok(store, &["check", "84951234567", "--explain"]);
    assert!(
        check.starts_with("allow +74951234567 by allow exact +74951234567 [global] \"our lawyer\""),
        "{check}"
    );
    assert!(
        check.contains("also matched: block exact +74951234567"),
        "{check}"
    );
}

#[test]
fn dialplan_mode_sets_variables_without_hanging_up() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    cli_ok(store, &["block", "+74951234567"]);
    let server = Server::start(store, &[("CALLGUARD_AGI__ON_BLOCK", "dialplan")]);
    let call = agi_call(server.agi, "84951234567");
    assert_eq!(call.verdict(), "block");
    assert_eq!(call.hangup_cause, None, "{call:?}");
}

#[test]
fn reason_text_cannot_inject_agi_commands() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    cli_ok(
        store,
        &[
            "block",
            "+74951234567",
            "--reason",
            "x\"\nEXEC Dial PJSIP/evil\n\\",
        ],
    );
    let server = Server::start(store, &[]);
    let call = agi_call(server.agi, "84951234567");
    assert_eq!(call.verdict(), "block");
    // Five variables and one EXEC Hangup: the reason's newlines did not add a line.
    assert_eq!(
        call.commands.len(),
        6,
        "one line per command: {:?}",
        call.commands
    );
    assert!(
        call.commands
            .iter()
            .all(|c| c.starts_with("SET VARIABLE ") || c.starts_with("EXEC Hangup "))
    );
}

#[test]
fn malformed_and_silent_peers_are_dropped_and_service_continues() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let server = Server::start(store, &[("CALLGUARD_AGI__READ_TIMEOUT_MS", "300")]);
    // Not AGI at all.
    assert!(raw_session(server.agi, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_empty());
    // A line far over the cap, never ended.
    assert!(raw_session(server.agi, &vec![b'a'; 100_000]).is_empty());
    // Half an env block, then silence: dropped after the read timeout.
    let started = std::time::Instant::now();
    assert!(raw_session(server.agi, b"agi_network: yes\nagi_callerid: 1").is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
    // The server still decides.
    assert_eq!(agi_call(server.agi, "84951234567").verdict(), "allow");
}

#[test]
fn anonymous_caller_gets_anonymous_number() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    cli_ok(store, &["block", "anonymous", "--reason", "withheld"]);
    let server = Server::start(store, &[]);
    for delivered in ["unknown", "anonymous", "Restricted"] {
        let call = agi_call(server.agi, delivered);
        assert_eq!(call.vars["CALLGUARD_NUMBER"], "anonymous");
        assert_eq!(call.verdict(), "block", "{delivered}");
    }
}

/// Plays Asterisk for a caller who hangs up while callguard thinks: the unsolicited `HANGUP`
/// line arrives before any reply, then every command gets `dead_reply`.
fn call_with_early_hangup(addr: std::net::SocketAddr, dead_reply: &[u8]) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut env = crate::support::env_block("env_sip_84951234567.rx.raw", "84951234567");
    env.extend_from_slice(b"HANGUP\n");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(&env).expect("write");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut commands = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("session did not end: {e}"),
        }
        commands.push(line.trim_end().to_owned());
        if s.write_all(dead_reply).is_err() {
            break;
        }
    }
    commands
}

#[test]
fn caller_hangup_mid_session_sets_variables_but_does_not_hang_up_again() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    cli_ok(store, &["block", "84951234567"]);
    let server = Server::start(store, &[]);
    // Dead channel: SET VARIABLE still works (Asterisk allows it), so the h extension sees it.
    let commands = call_with_early_hangup(server.agi, b"200 result=1\n");
    // VERDICT, REASON, NUMBER, RULE, ACTION; no EXEC Hangup on a channel already gone.
    assert_eq!(commands.len(), 5, "{commands:?}");
    assert!(
        commands[0].starts_with("SET VARIABLE CALLGUARD_VERDICT"),
        "{commands:?}"
    );
    assert!(
        commands.iter().all(|c| !c.starts_with("EXEC")),
        "{commands:?}"
    );
    // 511 (dead channel) stops the session at once.
    let commands = call_with_early_hangup(
        server.agi,
        b"511 Command Not Permitted on a dead channel or intercept routine\n",
    );
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert_eq!(agi_call(server.agi, "84951234567").verdict(), "block");
}
