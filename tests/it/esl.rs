//! FreeSWITCH outbound mode end to end: a FreeSWITCH-faithful peer, built from the 1.10.12
//! captures in tests/fixtures/freeswitch, connects to the real `callguard serve` the way the
//! `socket` dialplan app does, and answers every command as FreeSWITCH did in the captures.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::{Server, cli_ok, fixture, temp_store, within};

/// What callguard did to one call, as the fake FreeSWITCH saw it.
#[derive(Debug, Default)]
pub struct EslOutcome {
    /// Variables set with `sendmsg` + `execute set name=value`, in order.
    pub vars: Vec<(String, String)>,
    /// Other executed applications with their argument (`playback ss-noservice`).
    pub execs: Vec<String>,
    /// `hangup-cause` of a `sendmsg` hang-up.
    pub hangup_cause: Option<String>,
    /// The first line of every command received.
    pub commands: Vec<String>,
    /// True when callguard sent `resume`.
    pub resumed: bool,
}

impl EslOutcome {
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn verdict(&self) -> &str {
        self.var("callguard_verdict").unwrap_or("")
    }
}

/// FreeSWITCH URL-encodes header values (but leaves existing `%XX` alone, which our callers
/// never contain).
fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.()".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The captured channel data (reply to `connect`) for another caller ID, with extra channel
/// variables added where FreeSWITCH puts them (before `Content-Type`, which comes last).
fn connect_reply(caller_id: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let raw =
        String::from_utf8(fixture("freeswitch/outbound/call1_connect_reply.raw")).expect("utf8");
    let mut out = String::new();
    for line in raw.split_inclusive('\n') {
        let name = line.split(": ").next().unwrap_or("");
        if name == "Content-Type" {
            for (k, v) in extra {
                out.push_str(&format!("{k}: {}\n", url_encode(v)));
            }
        }
        if extra.iter().any(|(k, _)| *k == name) {
            // Given in `extra` instead.
            continue;
        }
        if matches!(
            name,
            "Caller-Caller-ID-Number" | "Channel-Caller-ID-Number" | "Caller-ANI" | "Channel-ANI"
        ) {
            out.push_str(&format!("{name}: {}\n", url_encode(caller_id)));
        } else {
            out.push_str(line);
        }
    }
    out.into_bytes()
}

/// A captured event message with some body headers replaced; the outer Content-Length is
/// recomputed, as FreeSWITCH computes it.
fn event_with(fixture_name: &str, replace: &[(&str, &str)]) -> Vec<u8> {
    let raw = fixture(fixture_name);
    let split = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("outer header")
        + 2;
    let body = String::from_utf8_lossy(&raw[split..]).into_owned();
    let mut new_body = String::new();
    for line in body.split_inclusive('\n') {
        let name = line.split(": ").next().unwrap_or("");
        match replace.iter().find(|(n, _)| *n == name) {
            Some((n, v)) => new_body.push_str(&format!("{n}: {}\n", url_encode(v))),
            None => new_body.push_str(line),
        }
    }
    format!(
        "Content-Length: {}\nContent-Type: text/event-plain\n\n{new_body}",
        new_body.len()
    )
    .into_bytes()
}

/// The next command callguard sent: its lines up to the blank line; `None` once it closed.
fn read_command(reader: &mut impl BufRead) -> std::io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches('\n');
        if line.is_empty() {
            return Ok(Some(lines));
        }
        lines.push(line.to_owned());
    }
}

/// The first line of the next command, for a peer that only watches what callguard sends
/// (without replying); panics when nothing more comes or callguard closed.
fn next_command(reader: &mut impl BufRead) -> String {
    read_command(reader)
        .expect("a command, without any reply sent")
        .expect("callguard closed early")
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// Starts FreeSWITCH's side of a call by hand: connects, takes callguard's `connect` and sends
/// the channel data of a call from `caller_id`; the rest is up to the test.
fn channel_data_sent(addr: SocketAddr, caller_id: &str) -> (TcpStream, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    assert_eq!(next_command(&mut reader), "connect");
    s.write_all(&connect_reply(caller_id, &[]))
        .expect("channel data");
    (s, reader)
}

/// Plays FreeSWITCH's `socket` app for one call against callguard's ESL listener.
pub fn esl_call(addr: SocketAddr, caller_id: &str, extra: &[(&str, &str)]) -> EslOutcome {
    let mut s = TcpStream::connect(addr).expect("connect to callguard esl");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut outcome = EslOutcome::default();
    loop {
        let lines = match read_command(&mut reader) {
            Ok(Some(lines)) => lines,
            Ok(None) => return outcome,
            Err(e) => panic!("callguard did not finish the session: {e}"),
        };
        let Some(first) = lines.first().cloned() else {
            continue;
        };
        outcome.commands.push(first.clone());
        let header = |name: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
        };
        let mut reply: Vec<u8> = match first.split(' ').next().unwrap_or("") {
            "connect" => connect_reply(caller_id, extra),
            "myevents" => fixture("freeswitch/outbound/call1_myevents_reply.raw"),
            "api" => {
                // `api uuid_setvar <uuid> <name> <value...>`: the value is the rest of the line.
                let mut words = first.splitn(5, ' ');
                let (_, command, _uuid) = (words.next(), words.next(), words.next());
                if command == Some("uuid_setvar") {
                    let name = words.next().unwrap_or_default().to_owned();
                    let value = words.next().unwrap_or_default().to_owned();
                    outcome.vars.push((name, value));
                }
                fixture("freeswitch/outbound/call1_api_uuid_kill_reply.raw")
            }
            "resume" => {
                outcome.resumed = true;
                fixture("freeswitch/outbound/call2_resume_reply.raw")
            }
            "exit" => {
                let mut r = fixture("freeswitch/outbound/call2_exit_reply.raw");
                r.extend(fixture("freeswitch/outbound/call2_after_exit.raw"));
                let _sent = s.write_all(&r);
                return outcome;
            }
            "sendmsg" => {
                let mut r = fixture("freeswitch/outbound/call1_sendmsg_execute_reply.raw");
                match header("call-command").as_deref() {
                    Some("execute") => {
                        let app = header("execute-app-name").unwrap_or_default();
                        let arg = header("execute-app-arg").unwrap_or_default();
                        if app == "set" {
                            let (n, v) = arg.split_once('=').unwrap_or((&arg, ""));
                            outcome.vars.push((n.to_owned(), v.to_owned()));
                        } else {
                            outcome.execs.push(format!("{app} {arg}"));
                        }
                        if let Some(uuid) = header("Event-UUID") {
                            r.extend(event_with(
                                "freeswitch/outbound/call1_event_CHANNEL_EXECUTE_COMPLETE_set.raw",
                                &[
                                    ("Application", &app),
                                    ("Application-Data", &arg),
                                    ("Application-UUID", &uuid),
                                ],
                            ));
                        }
                    }
                    Some("hangup") => {
                        outcome.hangup_cause = header("hangup-cause");
                        // Without `linger`, FreeSWITCH reports the hang-up and closes.
                        r.extend(event_with(
                            "freeswitch/outbound/call1_after_uuid_kill.raw",
                            &[],
                        ));
                        let _sent = s.write_all(&r);
                        return outcome;
                    }
                    _ => {}
                }
                r
            }
            _ => fixture("freeswitch/outbound/call1_unknown_command_reply.raw"),
        };
        if s.write_all(&reply).is_err() {
            return outcome;
        }
        reply.clear();
    }
}

fn server_with_rules(rules: &[&[&str]], env: &[(&str, &str)]) -> (tempfile::TempDir, Server) {
    let (dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    for rule in rules {
        cli_ok(store, rule);
    }
    (dir, Server::start(store, env))
}

#[test]
fn block_and_allow_over_esl_with_every_action() {
    let (_dir, server) = server_with_rules(
        &[
            &["block", "8 (495) 123-45-67", "--reason", "collectors"],
            &["block", "+74950000002", "--action", "busy"],
            &["block", "+74950000003", "--action", "congestion"],
            &[
                "block",
                "+74950000004",
                "--action",
                "playback ivr/ivr-not_available.wav",
            ],
            &[
                "block",
                "+74950000005",
                "--action",
                "redirect voicemail,1000",
            ],
            &["block", "+74950000006", "--action", "tag"],
            &["block", "+74950000007", "--action", "hangup 1"],
        ],
        &[],
    );
    let esl = server.esl.expect("esl listener");
    let call = esl_call(esl, "+7 (495) 123-45-67", &[]);
    assert_eq!(call.verdict(), "block", "{call:?}");
    assert_eq!(call.var("callguard_number"), Some("+74951234567"));
    assert_eq!(call.var("callguard_reason"), Some("collectors"));
    assert_eq!(
        call.hangup_cause.as_deref(),
        Some("CALL_REJECTED"),
        "{call:?}"
    );
    assert!(!call.resumed);

    for (caller, cause) in [
        ("84950000002", "USER_BUSY"),
        ("84950000003", "NORMAL_CIRCUIT_CONGESTION"),
        ("84950000007", "UNALLOCATED_NUMBER"),
    ] {
        let call = esl_call(esl, caller, &[]);
        assert_eq!(
            call.hangup_cause.as_deref(),
            Some(cause),
            "{caller}: {call:?}"
        );
    }
    let played = esl_call(esl, "84950000004", &[]);
    assert_eq!(
        played.execs,
        ["playback ivr/ivr-not_available.wav"],
        "{played:?}"
    );
    assert_eq!(played.hangup_cause.as_deref(), Some("NORMAL_CLEARING"));
    // An application to wait for: events on, and the variables set ahead of it.
    assert_eq!(played.commands[..2], ["connect", "myevents"], "{played:?}");
    let redirected = esl_call(esl, "84950000005", &[]);
    assert_eq!(
        redirected.execs,
        ["transfer 1000 XML voicemail"],
        "{redirected:?}"
    );
    assert!(redirected.hangup_cause.is_none() && !redirected.resumed);
    let tagged = esl_call(esl, "84950000006", &[]);
    assert_eq!(tagged.verdict(), "tag");
    assert!(
        tagged.resumed && tagged.hangup_cause.is_none(),
        "{tagged:?}"
    );

    let allowed = esl_call(esl, "84957654321", &[]);
    assert_eq!(allowed.verdict(), "allow");
    assert_eq!(allowed.var("callguard_reason"), Some("no match"));
    assert!(allowed.resumed, "{allowed:?}");
    assert_eq!(allowed.commands.last().map(String::as_str), Some("exit"));
    // No application to wait for: the variables by `api uuid_setvar` (set before FreeSWITCH
    // reads the next command), then resume and exit, no events asked for.
    assert_eq!(allowed.commands[0], "connect");
    assert!(
        allowed.commands[1..4]
            .iter()
            .all(|c| c.starts_with("api uuid_setvar ")),
        "{allowed:?}"
    );
    assert_eq!(allowed.commands[4..], ["resume", "exit"]);
}

#[test]
fn tenant_from_channel_variable_and_dialplan_mode() {
    let (_dir, server) = server_with_rules(
        &[&[
            "block",
            "+7495*",
            "--tenant",
            "acme",
            "--action",
            "hangup 17",
        ]],
        &[("CALLGUARD_ESL__ON_BLOCK", "dialplan")],
    );
    let esl = server.esl.expect("esl listener");
    let call = esl_call(esl, "84951234567", &[("variable_callguard_tenant", "acme")]);
    assert_eq!(call.verdict(), "block", "{call:?}");
    assert_eq!(call.var("callguard_tenant"), Some("acme"));
    assert_eq!(call.var("callguard_action"), Some("hangup 17"));
    // Dialplan mode: variables, then resume; the dialplan hangs up.
    assert!(call.resumed && call.hangup_cause.is_none(), "{call:?}");
    assert_eq!(esl_call(esl, "84951234567", &[]).verdict(), "allow");
}

#[test]
fn values_cannot_inject_esl_headers_or_commands() {
    let (_dir, server) = server_with_rules(
        &[&[
            "block",
            "+74951234567",
            "--reason",
            "x\nexecute-app-name: system\n\nexit\n\n${rm}",
        ]],
        &[],
    );
    let esl = server.esl.expect("esl listener");
    let call = esl_call(esl, "84951234567", &[]);
    assert_eq!(call.verdict(), "block", "{call:?}");
    assert!(
        call.commands.iter().all(|c| c.starts_with("connect")
            || c.starts_with("myevents")
            || c.starts_with("api uuid_setvar ")
            || c.starts_with("sendmsg")),
        "{call:?}"
    );
    let reason = call.var("callguard_reason").unwrap_or("");
    assert!(
        !reason.contains('\n') && !reason.contains("${"),
        "{reason:?}"
    );
    assert_eq!(call.hangup_cause.as_deref(), Some("CALL_REJECTED"));
}

#[test]
fn garbage_silence_and_hangups_never_stall_the_server() {
    let (_dir, server) = server_with_rules(
        &[&["block", "+74951234567"]],
        &[("CALLGUARD_ESL__READ_TIMEOUT_MS", "300")],
    );
    let esl = server.esl.expect("esl listener");
    // Garbage instead of channel data: callguard drops the connection.
    let mut s = TcpStream::connect(esl).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut hello = [0u8; 9];
    s.read_exact(&mut hello).expect("connect command");
    assert_eq!(&hello, b"connect\n\n");
    s.write_all(&[b'x'; 100_000]).expect("garbage");
    let mut rest = Vec::new();
    let _closed = s.read_to_end(&mut rest);
    // Silence: dropped after the read timeout.
    let mut s = TcpStream::connect(esl).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let took = within(Duration::from_secs(3), || {
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(0))
    });
    assert!(took.is_some(), "a silent peer was not dropped");
    // The caller hangs up mid-session: FreeSWITCH closes after the channel data.
    let mut s = TcpStream::connect(esl).expect("connect");
    let mut hello = [0u8; 9];
    s.read_exact(&mut hello).expect("connect command");
    s.write_all(&connect_reply("84951234567", &[]))
        .expect("data");
    drop(s);
    // Service continues.
    assert_eq!(esl_call(esl, "84951234567", &[]).verdict(), "block");
}

/// The whole answer to an allowed call (every variable, `resume`, `exit`) goes out before any
/// reply is awaited (safe because FreeSWITCH's reader takes commands off the socket one by
/// one), with no `myevents`: this FreeSWITCH answers nothing after the channel data and still
/// receives it all, in order.
#[test]
fn an_allowed_call_is_answered_in_one_flight_without_events() {
    let (_dir, server) = server_with_rules(&[], &[]);
    let addr = server.esl.expect("esl listener");
    let (_freeswitch, mut reader) = channel_data_sent(addr, "84951234567");
    for name in ["verdict", "reason", "number"] {
        let command = next_command(&mut reader);
        assert!(
            command.starts_with("api uuid_setvar ")
                && command.contains(&format!(" callguard_{name}")),
            "{command}"
        );
    }
    assert_eq!(next_command(&mut reader), "resume");
    assert_eq!(next_command(&mut reader), "exit");
}

/// A `socket` app without `full` may not send `api` (FreeSWITCH answers `-ERR command not
/// found`): the channel data says `Control: single-channel`, and callguard sets the variables
/// with `sendmsg set` instead.
#[test]
fn without_full_control_the_variables_go_by_sendmsg() {
    let (_dir, server) = server_with_rules(&[], &[]);
    let esl = server.esl.expect("esl listener");
    let call = esl_call(esl, "84957654321", &[("Control", "single-channel")]);
    assert_eq!(call.verdict(), "allow", "{call:?}");
    assert!(call.resumed, "{call:?}");
    assert!(
        call.commands.iter().all(|c| !c.starts_with("api ")),
        "{call:?}"
    );
    assert_eq!(call.commands[..2], ["connect", "myevents"], "{call:?}");
}

/// The caller hangs up while callguard's answer is on its way: FreeSWITCH sends its disconnect
/// notice and closes instead of replying. That is the end of the call, not a session error.
#[test]
fn a_caller_gone_before_the_replies_is_not_an_error() {
    let (_dir, server) = server_with_rules(&[], &[]);
    let addr = server.esl.expect("esl listener");
    let (mut s, mut reader) = channel_data_sent(addr, "84957654321");
    assert!(next_command(&mut reader).starts_with("api uuid_setvar "));
    s.write_all(&fixture("freeswitch/outbound/call2_after_exit.raw"))
        .expect("disconnect notice");
    drop(s);
    drop(reader);
    std::thread::sleep(Duration::from_millis(300));
    let logs = server.drain_logs().join("\n");
    assert!(!logs.contains("ended early"), "{logs}");
}

/// FreeSWITCH refuses a `uuid_setvar` (`-ERR No such channel!`, e.g. a UUID it no longer
/// knows): callguard logs it and still finishes the call with `resume` and `exit`.
#[test]
fn a_refused_uuid_setvar_is_logged_and_the_call_still_resumes() {
    let (_dir, server) = server_with_rules(&[], &[]);
    let addr = server.esl.expect("esl listener");
    let (mut s, mut reader) = channel_data_sent(addr, "84957654321");
    let refusal = "-ERR No such channel!\n";
    for _ in 0..3 {
        assert!(next_command(&mut reader).starts_with("api uuid_setvar "));
        let reply = format!(
            "Content-Type: api/response\nContent-Length: {}\n\n{refusal}",
            refusal.len()
        );
        s.write_all(reply.as_bytes()).expect("api reply");
    }
    assert_eq!(next_command(&mut reader), "resume");
    s.write_all(&fixture("freeswitch/outbound/call2_resume_reply.raw"))
        .expect("resume reply");
    assert_eq!(next_command(&mut reader), "exit");
    let mut bye = fixture("freeswitch/outbound/call2_exit_reply.raw");
    bye.extend(fixture("freeswitch/outbound/call2_after_exit.raw"));
    s.write_all(&bye).expect("exit reply");
    drop(s);
    drop(reader);
    assert!(
        server
            .wait_log("uuid_setvar refused", Duration::from_secs(3))
            .is_some(),
        "the refusal was not logged"
    );
    std::thread::sleep(Duration::from_millis(200));
    let logs = server.drain_logs().join("\n");
    assert!(!logs.contains("ended early"), "{logs}");
}
