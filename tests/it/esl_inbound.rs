//! FreeSWITCH inbound mode end to end: the real `callguard serve` connects as a client to a
//! FreeSWITCH-faithful Event Socket (port 8021) played by a thread from the 1.10.12 captures in
//! tests/fixtures/freeswitch/inbound: banner, `auth`, `event plain CHANNEL_PARK`, parked calls,
//! `api` replies, the wrong-password disconnect, restarts and garbage.

use std::collections::{HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::{Server, agi_call, cli_ok, fixture, temp_store, within};

/// Generous limit for anything callguard has to do (connect, answer an event).
const WAIT: Duration = Duration::from_secs(5);
/// What callguard logs once it is authenticated and subscribed.
const CONNECTED: &str = "esl inbound connected";

fn inbound(name: &str) -> Vec<u8> {
    fixture(&format!("freeswitch/inbound/{name}"))
}

/// FreeSWITCH URL-encodes header values (but leaves existing `%XX` alone, which our values
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

fn header_end(raw: &[u8]) -> usize {
    raw.windows(2)
        .position(|w| w == b"\n\n")
        .expect("outer header")
        + 2
}

/// The captured CHANNEL_PARK event for another call: every header naming the channel's uuid,
/// caller ID or destination replaced (URL-encoded as FreeSWITCH does), `extra` channel variables
/// appended after the last `variable_*` line (where FreeSWITCH puts them), and the outer
/// Content-Length recomputed (it counts the body's closing empty line).
fn park_event(uuid: &str, caller_id: &str, destination: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let raw = inbound("event_CHANNEL_PARK.raw");
    let body = String::from_utf8(raw[header_end(&raw)..].to_vec()).expect("utf8 event");
    let mut new_body = String::new();
    for line in body.split_inclusive('\n') {
        if line == "\n" {
            for (name, value) in extra {
                new_body.push_str(&format!("{name}: {}\n", url_encode(value)));
            }
            new_body.push('\n');
            continue;
        }
        let name = line.split(": ").next().unwrap_or("");
        let value = match name {
            "Unique-ID" | "Channel-Call-UUID" | "Caller-Unique-ID" | "variable_uuid"
            | "variable_call_uuid" => Some(uuid),
            "Caller-Caller-ID-Number"
            | "Channel-Caller-ID-Number"
            | "Caller-Orig-Caller-ID-Number"
            | "Caller-ANI"
            | "variable_origination_caller_id_number" => Some(caller_id),
            "Caller-Destination-Number" => Some(destination),
            _ => None,
        };
        match value {
            Some(v) => new_body.push_str(&format!("{name}: {}\n", url_encode(v))),
            None => new_body.push_str(line),
        }
    }
    format!(
        "Content-Length: {}\nContent-Type: text/event-plain\n\n{new_body}",
        new_body.len()
    )
    .into_bytes()
}

/// An `api` reply framed as in api_status_reply.raw (no closing empty line after the body).
fn api_reply(body: &str) -> Vec<u8> {
    format!(
        "Content-Type: api/response\nContent-Length: {}\n\n{body}",
        body.len()
    )
    .into_bytes()
}

pub(crate) fn new_uuid() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "253ab832-04f8-4b63-a362-{:012x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Bytes the fake FreeSWITCH sent.
    Fs,
    /// Bytes callguard sent.
    Callguard,
}

/// One accepted connection, as the fake FreeSWITCH saw it.
#[derive(Debug, Default)]
struct Conn {
    /// Every chunk written or read, in order.
    transcript: Vec<(Dir, Vec<u8>)>,
    /// Every command callguard sent (`auth ...`, `api ...`), without its closing empty line;
    /// a command is one line, so any `\n` left in here is a smuggled header line.
    commands: Vec<String>,
    /// Subscribed to CHANNEL_PARK and still open.
    subscribed: bool,
    /// Callguard closed (or reset) it.
    closed_by_callguard: bool,
    /// Over, whoever ended it.
    ended: bool,
}

#[derive(Debug, Default)]
struct State {
    password: String,
    /// While true every `auth` is refused (the wrong-password test flips it).
    refuse_auth: bool,
    /// Every `auth` attempt: when, and the password given.
    auths: Vec<(Instant, String)>,
    conns: Vec<Conn>,
    /// Bytes to send on the current connection once it is subscribed.
    outbox: VecDeque<Vec<u8>>,
    /// Bytes to send just before the next `api` reply (an event racing a reply).
    before_api_reply: VecDeque<Vec<u8>>,
    /// Channels that exist: `api` on others gets `-ERR No such channel!`.
    channels: HashSet<String>,
    close_current: bool,
    /// Stop listening for this long, then listen again on the same port.
    restart: Option<Duration>,
}

struct Shared {
    // A std Mutex: sections are short bookkeeping, never held across socket I/O.
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A fake FreeSWITCH Event Socket on 127.0.0.1: answers as 1.10.12 did in the captures, one
/// connection at a time (callguard keeps one).
pub(crate) struct FakeFs {
    port: u16,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl FakeFs {
    pub(crate) fn start(password: &str) -> FakeFs {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake FreeSWITCH");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                password: password.to_owned(),
                ..State::default()
            }),
            stop: AtomicBool::new(false),
        });
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::spawn(move || accept_loop(&for_thread, listener, port));
        FakeFs {
            port,
            shared,
            thread: Some(thread),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }

    /// Parks a call: the channel exists, and its CHANNEL_PARK event goes out.
    pub(crate) fn park(
        &self,
        uuid: &str,
        caller_id: &str,
        destination: &str,
        extra: &[(&str, &str)],
    ) {
        let mut st = self.state();
        st.channels.insert(uuid.to_owned());
        st.outbox
            .push_back(park_event(uuid, caller_id, destination, extra));
    }

    /// A CHANNEL_PARK whose channel is already gone (the caller hung up at once).
    fn park_vanished(&self, uuid: &str, caller_id: &str) {
        self.state()
            .outbox
            .push_back(park_event(uuid, caller_id, "1001", &[]));
    }

    fn send_raw(&self, bytes: Vec<u8>) {
        self.state().outbox.push_back(bytes);
    }

    fn before_next_api_reply(&self, bytes: Vec<u8>) {
        self.state().before_api_reply.push_back(bytes);
    }

    fn drop_connection(&self) {
        self.state().close_current = true;
    }

    fn restart(&self, down: Duration) {
        self.state().restart = Some(down);
    }

    fn set_refuse_auth(&self, refuse: bool) {
        self.state().refuse_auth = refuse;
    }

    fn conn_count(&self) -> usize {
        self.state().conns.len()
    }

    fn commands(&self, conn: usize) -> Vec<String> {
        self.state()
            .conns
            .get(conn)
            .map(|c| c.commands.clone())
            .unwrap_or_default()
    }

    fn closed_by_callguard(&self, conn: usize) -> bool {
        self.state()
            .conns
            .get(conn)
            .is_some_and(|c| c.closed_by_callguard)
    }

    fn auths(&self) -> Vec<(Instant, String)> {
        self.state().auths.clone()
    }

    /// Number of connections that got as far as subscribing.
    fn subscriptions(&self) -> usize {
        self.state()
            .conns
            .iter()
            .filter(|c| c.commands.iter().any(|l| l.starts_with("event ")))
            .count()
    }

    /// Waits until `n` connections have subscribed and the last one is live.
    pub(crate) fn wait_subscribed(&self, n: usize) {
        let ok = within(WAIT, || {
            let st = self.state();
            let subscribed = st
                .conns
                .iter()
                .filter(|c| c.commands.iter().any(|l| l.starts_with("event ")))
                .count();
            subscribed >= n && st.conns.last().is_some_and(|c| c.subscribed)
        });
        assert!(
            ok.is_some(),
            "callguard did not subscribe ({n} subscriptions expected)\n{}",
            self.transcript()
        );
    }

    /// Every `api` command line about one channel, over all connections, in order.
    pub(crate) fn api_for(&self, uuid: &str) -> Vec<String> {
        self.state()
            .conns
            .iter()
            .flat_map(|c| c.commands.iter())
            .filter(|l| l.starts_with("api ") && l.split(' ').nth(2) == Some(uuid))
            .cloned()
            .collect()
    }

    /// Waits for callguard's final command on a call (`uuid_kill` or `uuid_transfer`) and
    /// returns all its commands for it.
    pub(crate) fn acted_on(&self, uuid: &str) -> Vec<String> {
        let done = within(WAIT, || self.api_for(uuid).iter().any(|c| is_action(c)));
        assert!(
            done.is_some(),
            "no uuid_kill/uuid_transfer for {uuid}\n{}",
            self.transcript()
        );
        self.api_for(uuid)
    }

    /// Both directions of every connection, readably (long chunks cut).
    fn transcript(&self) -> String {
        let st = self.state();
        let mut out = String::new();
        for (i, conn) in st.conns.iter().enumerate() {
            out.push_str(&format!(
                "--- connection {i} (closed by callguard: {}, ended: {})\n",
                conn.closed_by_callguard, conn.ended
            ));
            for (dir, bytes) in &conn.transcript {
                let who = match dir {
                    Dir::Fs => "FS>",
                    Dir::Callguard => "CG>",
                };
                let shown = &bytes[..bytes.len().min(240)];
                let mut text = String::from_utf8_lossy(shown).replace('\n', "\\n");
                if bytes.len() > shown.len() {
                    text.push_str(&format!("...[{} bytes]", bytes.len()));
                    let full = String::from_utf8_lossy(bytes);
                    if let Some(uuid) = full.split("\nUnique-ID: ").nth(1) {
                        let uuid = uuid.split('\n').next().unwrap_or("");
                        text.push_str(&format!(" Unique-ID: {uuid}"));
                    }
                }
                out.push_str(&format!("{who} {text}\n"));
            }
        }
        out
    }
}

impl Drop for FakeFs {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _joined = t.join();
        }
    }
}

fn is_action(command: &str) -> bool {
    command.starts_with("api uuid_kill ") || command.starts_with("api uuid_transfer ")
}

fn accept_loop(shared: &Shared, mut listener: TcpListener, port: u16) {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    while !shared.stop.load(Ordering::SeqCst) {
        let restart = shared.state().restart.take();
        if let Some(down) = restart {
            // FreeSWITCH going down: nothing listens (connects are refused), then the same
            // port again. std sets SO_REUSEADDR on Unix; retry anyway in case of a slow release.
            drop(listener);
            std::thread::sleep(down);
            let mut again = None;
            let ok = within(WAIT, || {
                again = TcpListener::bind(("127.0.0.1", port)).ok();
                again.is_some()
            });
            assert!(ok.is_some(), "could not listen again on port {port}");
            listener = again.expect("listener");
            listener
                .set_nonblocking(true)
                .expect("nonblocking listener");
        }
        match listener.accept() {
            Ok((stream, _peer)) => serve(shared, stream),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Writes to callguard; false when the connection is gone.
fn send(shared: &Shared, idx: usize, stream: &mut TcpStream, bytes: &[u8]) -> bool {
    let result = stream.write_all(bytes);
    let mut st = shared.state();
    let conn = &mut st.conns[idx];
    conn.transcript.push((Dir::Fs, bytes.to_vec()));
    match result {
        Ok(()) => true,
        Err(e) => {
            conn.ended = true;
            conn.subscribed = false;
            // A stalled write is not callguard closing; a reset or broken pipe is.
            conn.closed_by_callguard =
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
            false
        }
    }
}

fn end(shared: &Shared, idx: usize, by_callguard: bool) {
    let mut st = shared.state();
    let conn = &mut st.conns[idx];
    conn.ended = true;
    conn.subscribed = false;
    conn.closed_by_callguard |= by_callguard;
}

/// One Event Socket connection, as mod_event_socket runs it.
fn serve(shared: &Shared, mut stream: TcpStream) {
    let idx = {
        let mut st = shared.state();
        st.conns.push(Conn::default());
        st.conns.len() - 1
    };
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(Duration::from_millis(10))))
        .and_then(|()| stream.set_write_timeout(Some(WAIT)))
        .and_then(|()| stream.set_nodelay(true));
    setup.expect("socket options");
    if !send(shared, idx, &mut stream, &inbound("banner.raw")) {
        return;
    }
    let mut buf = Vec::new();
    let mut authed = false;
    loop {
        let next = {
            let mut st = shared.state();
            if shared.stop.load(Ordering::SeqCst) || st.restart.is_some() || st.close_current {
                st.close_current = false;
                drop(st);
                end(shared, idx, false);
                return;
            }
            if st.conns[idx].subscribed {
                st.outbox.pop_front()
            } else {
                None
            }
        };
        if let Some(bytes) = next {
            if !send(shared, idx, &mut stream, &bytes) {
                return;
            }
            continue;
        }
        let mut chunk = [0u8; 65536];
        match stream.read(&mut chunk) {
            Ok(0) => {
                end(shared, idx, true);
                return;
            }
            Ok(n) => {
                shared.state().conns[idx]
                    .transcript
                    .push((Dir::Callguard, chunk[..n].to_vec()));
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                end(shared, idx, true);
                return;
            }
        }
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let command: Vec<u8> = buf.drain(..pos + 2).collect();
            let text = String::from_utf8_lossy(&command[..pos]).into_owned();
            let (replies, close) = respond(shared, idx, &text, &mut authed);
            for reply in replies {
                if !send(shared, idx, &mut stream, &reply) {
                    return;
                }
            }
            if close {
                end(shared, idx, false);
                return;
            }
        }
    }
}

/// What FreeSWITCH writes after one command (its reply, maybe preceded by an event), and
/// whether it then closes the socket.
fn respond(shared: &Shared, idx: usize, text: &str, authed: &mut bool) -> (Vec<Vec<u8>>, bool) {
    let first = text.split('\n').next().unwrap_or("").to_owned();
    let mut st = shared.state();
    st.conns[idx].commands.push(text.to_owned());
    if !*authed {
        if let Some(password) = first.strip_prefix("auth ") {
            st.auths.push((Instant::now(), password.to_owned()));
            if !st.refuse_auth && password == st.password {
                *authed = true;
                return (vec![inbound("auth_ok_reply.raw")], false);
            }
        }
        // Anything but the right password: `-ERR invalid`, the disconnect notice, close.
        let mut reply = inbound("wrongpw_reply.raw");
        reply.extend(inbound("wrongpw_after_reply.raw"));
        return (vec![reply], true);
    }
    let words: Vec<&str> = first.split(' ').collect();
    match words.as_slice() {
        ["event", "plain", events @ ..] => {
            let park = events.iter().any(|e| matches!(*e, "CHANNEL_PARK" | "ALL"));
            st.conns[idx].subscribed = park;
            (vec![inbound("event_plain_reply.raw")], false)
        }
        ["api", name, args @ ..] => {
            let uuid = args.first().copied().unwrap_or("");
            let exists = st.channels.contains(uuid);
            let body = match *name {
                "uuid_kill" if exists => {
                    st.channels.remove(uuid);
                    "+OK\n".to_owned()
                }
                "uuid_setvar" | "uuid_transfer" if exists => "+OK\n".to_owned(),
                "uuid_setvar" | "uuid_transfer" | "uuid_kill" => {
                    "-ERR No such channel!\n".to_owned()
                }
                other => format!("-ERR {other} Command not found!\n"),
            };
            let mut out: Vec<Vec<u8>> = st.before_api_reply.drain(..).collect();
            out.push(api_reply(&body));
            (out, false)
        }
        ["exit"] => {
            let mut reply = inbound("exit_reply.raw");
            reply.extend(inbound("after_exit.raw"));
            (vec![reply], true)
        }
        _ => (vec![inbound("unknown_command_reply.raw")], false),
    }
}

/// A store with `rules`, and `callguard serve` connecting to `fs` with `env` added.
pub(crate) fn start(
    fs: &FakeFs,
    rules: &[&[&str]],
    env: &[(&str, &str)],
) -> (tempfile::TempDir, Server) {
    let (dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    for rule in rules {
        cli_ok(store, rule);
    }
    let connect = format!("127.0.0.1:{}", fs.port);
    let mut all = vec![("CALLGUARD_ESL_INBOUND__CONNECT", connect.as_str())];
    all.extend_from_slice(env);
    (dir, Server::start(store, &all))
}

/// The `api uuid_setvar` lines for `vars`, in order.
fn setvars(uuid: &str, vars: &[(&str, &str)]) -> Vec<String> {
    vars.iter()
        .map(|(name, value)| format!("api uuid_setvar {uuid} callguard_{name} {value}"))
        .collect()
}

/// How many log lines so far contain `needle` (`seen` keeps what was drained before).
fn logged(server: &Server, seen: &mut Vec<String>, needle: &str) -> usize {
    seen.extend(server.drain_logs());
    seen.iter().filter(|l| l.contains(needle)).count()
}

#[test]
fn fake_freeswitch_rebuilds_the_captures_byte_for_byte() {
    let park = park_event(
        "253ab832-04f8-4b63-a362-3b71c950497b",
        "+7 (495) 123-45-67",
        "1001",
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&park),
        String::from_utf8_lossy(&inbound("event_CHANNEL_PARK.raw"))
    );
    let status = inbound("api_status_reply.raw");
    let body = String::from_utf8(status[header_end(&status)..].to_vec()).expect("utf8");
    assert_eq!(api_reply(&body), status);
    let unknown = inbound("api_unknown_reply.raw");
    assert_eq!(api_reply("-ERR nosuchapi Command not found!\n"), unknown);
}

#[test]
fn parked_calls_get_variables_then_each_action_over_api() {
    let fs = FakeFs::start("ClueCon");
    let (_dir, _server) = start(
        &fs,
        &[
            &["block", "8 (495) 123-45-67", "--reason", "collectors"],
            &[
                "block",
                "+74950000001",
                "--action",
                "hangup 1",
                "--reason",
                "r1",
            ],
            &[
                "block",
                "+74950000002",
                "--action",
                "busy",
                "--reason",
                "r2",
            ],
            &[
                "block",
                "+74950000003",
                "--action",
                "congestion",
                "--reason",
                "r3",
            ],
            &[
                "block",
                "+74950000004",
                "--action",
                "playback ivr/ivr-not_available.wav",
                "--reason",
                "r4",
            ],
            &[
                "block",
                "+74950000005",
                "--action",
                "redirect voicemail,1000",
                "--reason",
                "r5",
            ],
            &["block", "+74950000006", "--action", "tag", "--reason", "r6"],
        ],
        &[("CALLGUARD_ESL_INBOUND__CONTINUE_CONTEXT", "default")],
    );
    fs.wait_subscribed(1);
    // Default password, and exactly one subscription.
    assert_eq!(
        fs.commands(0),
        ["auth ClueCon", "event plain CHANNEL_PARK"],
        "{}",
        fs.transcript()
    );

    let block = |number: &str, reason: &str, action: &str| {
        vec![
            ("verdict", "block".to_owned()),
            ("reason", reason.to_owned()),
            ("number", number.to_owned()),
            ("rule", number.to_owned()),
            ("action", action.to_owned()),
        ]
    };
    let cases = vec![
        (
            "+7 (495) 123-45-67",
            "1001",
            block("+74951234567", "collectors", "hangup 21"),
            "uuid_kill {} CALL_REJECTED",
        ),
        (
            "84950000001",
            "1001",
            block("+74950000001", "r1", "hangup 1"),
            "uuid_kill {} UNALLOCATED_NUMBER",
        ),
        (
            "84950000002",
            "1001",
            block("+74950000002", "r2", "busy"),
            "uuid_kill {} USER_BUSY",
        ),
        (
            "84950000003",
            "1001",
            block("+74950000003", "r3", "congestion"),
            "uuid_kill {} NORMAL_CIRCUIT_CONGESTION",
        ),
        (
            "84950000004",
            "1001",
            block("+74950000004", "r4", "playback ivr/ivr-not_available.wav"),
            "uuid_transfer {} playback:ivr/ivr-not_available.wav,hangup:NORMAL_CLEARING inline",
        ),
        (
            "84950000005",
            "1001",
            block("+74950000005", "r5", "redirect voicemail,1000,1"),
            "uuid_transfer {} 1000 XML voicemail",
        ),
        (
            "84950000006",
            "1001",
            vec![
                ("verdict", "tag".to_owned()),
                ("reason", "r6".to_owned()),
                ("number", "+74950000006".to_owned()),
                ("rule", "+74950000006".to_owned()),
                ("action", "tag".to_owned()),
            ],
            "uuid_transfer {} 1001 XML default",
        ),
        (
            "84957654321",
            "84951112233",
            vec![
                ("verdict", "allow".to_owned()),
                ("reason", "no match".to_owned()),
                ("number", "+74957654321".to_owned()),
            ],
            "uuid_transfer {} 84951112233 XML default",
        ),
    ];
    for (caller, destination, vars, action) in cases {
        let uuid = new_uuid();
        fs.park(&uuid, caller, destination, &[]);
        let got = fs.acted_on(&uuid);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut want = setvars(&uuid, &vars);
        want.push(format!("api {}", action.replace("{}", &uuid)));
        assert_eq!(got, want, "{caller}\n{}", fs.transcript());
    }

    // The caller hung up before callguard acted: `-ERR No such channel!` is logged and the
    // session goes on with the next call, on the same connection.
    let gone = new_uuid();
    fs.park_vanished(&gone, "84951234567");
    let next = new_uuid();
    fs.park(&next, "84957654321", "1001", &[]);
    let got = fs.acted_on(&next);
    assert_eq!(
        got.last().map(String::as_str),
        Some(format!("api uuid_transfer {next} 1001 XML default").as_str())
    );
    assert_eq!(
        fs.api_for(&gone).first().map(String::as_str),
        Some(format!("api uuid_setvar {gone} callguard_verdict block").as_str()),
        "{}",
        fs.transcript()
    );
    assert_eq!(fs.conn_count(), 1, "{}", fs.transcript());
}

#[test]
fn a_call_parked_twice_is_acted_on_once() {
    let fs = FakeFs::start("ClueCon");
    let (_dir, _server) = start(
        &fs,
        &[&["block", "+74951234567", "--reason", "dup"]],
        &[("CALLGUARD_ESL_INBOUND__CONTINUE_CONTEXT", "default")],
    );
    fs.wait_subscribed(1);
    let blocked = new_uuid();
    let allowed = new_uuid();
    // The same park again, arriving while callguard waits for the reply to its first api
    // command on that call (FreeSWITCH interleaves events and replies freely).
    fs.before_next_api_reply(park_event(&blocked, "84951234567", "1001", &[]));
    fs.park(&blocked, "84951234567", "1001", &[]);
    // A duplicate back to back with the original.
    fs.park(&allowed, "84957654321", "1001", &[]);
    fs.park(&allowed, "84957654321", "1001", &[]);
    let mut want_blocked = setvars(
        &blocked,
        &[
            ("verdict", "block"),
            ("reason", "dup"),
            ("number", "+74951234567"),
            ("rule", "+74951234567"),
            ("action", "hangup 21"),
        ],
    );
    want_blocked.push(format!("api uuid_kill {blocked} CALL_REJECTED"));
    let mut want_allowed = setvars(
        &allowed,
        &[
            ("verdict", "allow"),
            ("reason", "no match"),
            ("number", "+74957654321"),
        ],
    );
    want_allowed.push(format!("api uuid_transfer {allowed} 1001 XML default"));
    assert_eq!(fs.acted_on(&blocked), want_blocked, "{}", fs.transcript());
    assert_eq!(fs.acted_on(&allowed), want_allowed, "{}", fs.transcript());

    // FreeSWITCH drops the connection; the same calls are parked again on the new one.
    fs.drop_connection();
    fs.wait_subscribed(2);
    fs.park(&blocked, "84951234567", "1001", &[]);
    fs.park(&allowed, "84957654321", "1001", &[]);
    // A new call behind them: once it is done, the repeats have been seen and skipped.
    let sentinel = new_uuid();
    fs.park(&sentinel, "84951234567", "1001", &[]);
    assert_eq!(
        fs.acted_on(&sentinel).last().map(String::as_str),
        Some(format!("api uuid_kill {sentinel} CALL_REJECTED").as_str())
    );
    assert_eq!(fs.api_for(&blocked), want_blocked, "{}", fs.transcript());
    assert_eq!(fs.api_for(&allowed), want_allowed, "{}", fs.transcript());
}

#[test]
fn values_cannot_inject_event_socket_commands() {
    let fs = FakeFs::start("ClueCon");
    let (_dir, _server) = start(
        &fs,
        &[&[
            "block",
            "+74951234567",
            "--reason",
            "x\n\napi system rm -rf /tmp/x\n\n${rm}\r\nbgapi system reboot\n\n",
        ]],
        &[("CALLGUARD_ESL_INBOUND__CONTINUE_CONTEXT", "default")],
    );
    fs.wait_subscribed(1);
    // A rule reason, destination numbers, a caller ID and a tenant that each carry commands
    // or extra arguments.
    let by_reason = new_uuid();
    fs.park(&by_reason, "84951234567", "1001", &[]);
    let by_destination = new_uuid();
    fs.park(
        &by_destination,
        "84957654321",
        "1001\n\napi system rm -rf /tmp/y\n\n",
        &[],
    );
    // uuid_transfer takes `<dest> [<dialplan>] [<context>]`: a destination with spaces would
    // pick the context (toll fraud through a privileged context).
    let by_context = new_uuid();
    fs.park(&by_context, "84957654321", "1000 XML internal", &[]);
    let by_caller = new_uuid();
    fs.park(
        &by_caller,
        "84957654321\n\napi system id\n\n",
        "1001",
        &[("variable_callguard_tenant", "acme\n\napi system id\n\n")],
    );
    let sentinel = new_uuid();
    fs.park(&sentinel, "84957654321", "1001", &[]);
    fs.acted_on(&sentinel);

    let reason = fs.api_for(&by_reason);
    assert_eq!(reason.len(), 6, "{reason:#?}\n{}", fs.transcript());
    assert!(reason[1].starts_with(&format!("api uuid_setvar {by_reason} callguard_reason x")));
    assert!(!reason[1].contains('$'), "{reason:#?}");
    assert_eq!(
        reason.last().map(String::as_str),
        Some(format!("api uuid_kill {by_reason} CALL_REJECTED").as_str())
    );
    for uuid in [&by_destination, &by_context, &by_caller] {
        let got = fs.api_for(uuid);
        assert!(
            (3..=5).contains(&got.len()),
            "{got:#?}\n{}",
            fs.transcript()
        );
        // Allowed: sent on to `default` with a one-word destination, or left alone.
        for line in got.iter().filter(|l| l.starts_with("api uuid_transfer ")) {
            let words: Vec<&str> = line.split(' ').collect();
            assert!(
                words.len() == 6 && line.ends_with(" XML default"),
                "{line:?}"
            );
        }
    }
    // Nothing but the subscription and api commands about these calls, no control bytes.
    let commands = fs.commands(0);
    let uuids = [
        &by_reason,
        &by_destination,
        &by_context,
        &by_caller,
        &sentinel,
    ];
    for line in &commands[1..] {
        let api_on_a_call = ["uuid_setvar", "uuid_kill", "uuid_transfer"]
            .iter()
            .any(|api| line.starts_with(&format!("api {api} ")))
            && uuids
                .iter()
                .any(|u| line.split(' ').nth(2) == Some(u.as_str()));
        assert!(
            line == "event plain CHANNEL_PARK" || api_on_a_call,
            "unexpected command {line:?}\n{}",
            fs.transcript()
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
    assert!(
        !commands.iter().any(|l| l.starts_with("system")
            || l.starts_with("bgapi")
            || l.starts_with("api system")),
        "{commands:#?}"
    );
    assert_eq!(fs.conn_count(), 1, "{}", fs.transcript());
}

#[test]
fn wrong_password_is_retried_with_backoff_until_accepted() {
    let fs = FakeFs::start("s3cret");
    fs.set_refuse_auth(true);
    let (_dir, server) = start(
        &fs,
        &[&["block", "+74951234567"]],
        &[
            ("CALLGUARD_ESL_INBOUND__PASSWORD", "s3cret"),
            ("CALLGUARD_ESL_INBOUND__MAX_BACKOFF_MS", "1000"),
        ],
    );
    let refused = within(WAIT, || fs.auths().len() >= 3);
    assert!(refused.is_some(), "{}", fs.transcript());
    let attempts = fs.auths();
    // Each attempt waits out its backoff (100 ms, doubling): a handful a second, not hundreds.
    for pair in attempts.windows(2) {
        let gap = pair[1].0.duration_since(pair[0].0);
        assert!(
            gap >= Duration::from_millis(50),
            "reconnected after {gap:?}\n{}",
            fs.transcript()
        );
    }
    // Every refused connection went exactly as in the capture: banner, `auth`, `-ERR invalid`
    // with the disconnect notice, FreeSWITCH closes; callguard sent nothing else.
    let mut refused_bytes = inbound("wrongpw_reply.raw");
    refused_bytes.extend(inbound("wrongpw_after_reply.raw"));
    {
        let st = fs.state();
        for conn in st.conns.iter().filter(|c| c.ended) {
            assert_eq!(conn.commands, ["auth s3cret"], "{:?}", conn.transcript);
            let sent: Vec<&[u8]> = conn
                .transcript
                .iter()
                .filter(|(d, _)| *d == Dir::Fs)
                .map(|(_, b)| b.as_slice())
                .collect();
            assert_eq!(
                sent,
                [inbound("banner.raw").as_slice(), refused_bytes.as_slice()]
            );
        }
    }
    let mut logs = Vec::new();
    assert_eq!(logged(&server, &mut logs, CONNECTED), 0);
    assert_eq!(fs.subscriptions(), 0);

    // The password is fixed on FreeSWITCH's side: the next attempt gets in and subscribes.
    fs.set_refuse_auth(false);
    fs.wait_subscribed(1);
    let last = fs.conn_count() - 1;
    assert_eq!(
        fs.commands(last),
        ["auth s3cret", "event plain CHANNEL_PARK"]
    );
    let connected = within(WAIT, || logged(&server, &mut logs, CONNECTED) == 1);
    assert!(connected.is_some(), "{logs:#?}");
    let uuid = new_uuid();
    fs.park(&uuid, "84951234567", "1001", &[]);
    assert_eq!(
        fs.acted_on(&uuid).last().map(String::as_str),
        Some(format!("api uuid_kill {uuid} CALL_REJECTED").as_str())
    );
}

#[test]
fn freeswitch_restart_is_followed_by_reconnect_and_resubscribe() {
    let fs = FakeFs::start("ClueCon");
    let (_dir, server) = start(&fs, &[&["block", "+74951234567", "--reason", "r"]], &[]);
    fs.wait_subscribed(1);
    let before = new_uuid();
    fs.park(&before, "84951234567", "1001", &[]);
    fs.acted_on(&before);

    // Only lines from here on count: Server::start may have read the first "connected" line
    // while it waited for its own start-up lines.
    let mut logs = Vec::new();
    logged(&server, &mut logs, "");
    logs.clear();

    // FreeSWITCH restarts: the socket closes, nothing listens for a while, then the same port.
    fs.restart(Duration::from_millis(300));
    fs.wait_subscribed(2);
    assert!(!fs.closed_by_callguard(0), "{}", fs.transcript());
    let last = fs.conn_count() - 1;
    assert_eq!(
        fs.commands(last),
        ["auth ClueCon", "event plain CHANNEL_PARK"],
        "{}",
        fs.transcript()
    );
    let connected = within(WAIT, || logged(&server, &mut logs, CONNECTED) == 1);
    assert!(connected.is_some(), "{logs:#?}");
    let after = new_uuid();
    fs.park(&after, "84951234567", "1001", &[]);
    let mut want = setvars(
        &after,
        &[
            ("verdict", "block"),
            ("reason", "r"),
            ("number", "+74951234567"),
            ("rule", "+74951234567"),
            ("action", "hangup 21"),
        ],
    );
    want.push(format!("api uuid_kill {after} CALL_REJECTED"));
    assert_eq!(fs.acted_on(&after), want, "{}", fs.transcript());
}

#[test]
fn garbage_from_freeswitch_drops_the_connection_not_the_server() {
    let fs = FakeFs::start("ClueCon");
    let (_dir, server) = start(&fs, &[&["block", "+74951234567"]], &[]);
    let payloads: [(&str, Vec<u8>); 3] = [
        ("100 KB without a newline", vec![b'x'; 100_000]),
        (
            "a Content-Length that is not a number",
            b"Content-Length: abc\nContent-Type: text/event-plain\n\nEvent-Name: CHANNEL_PARK\n\n"
                .to_vec(),
        ),
        (
            "a Content-Length far over any cap",
            b"Content-Length: 99999999999\nContent-Type: text/event-plain\n\nEvent-Name: CHAN"
                .to_vec(),
        ),
    ];
    for (i, (what, payload)) in payloads.into_iter().enumerate() {
        fs.wait_subscribed(i + 1);
        let conn = fs.conn_count() - 1;
        fs.send_raw(payload);
        assert!(
            within(WAIT, || fs.closed_by_callguard(conn)).is_some(),
            "{what}: callguard kept the connection\n{}",
            fs.transcript()
        );
    }
    // Reconnected after each, and still screening.
    fs.wait_subscribed(4);
    let uuid = new_uuid();
    fs.park(&uuid, "84951234567", "1001", &[]);
    assert_eq!(
        fs.acted_on(&uuid).last().map(String::as_str),
        Some(format!("api uuid_kill {uuid} CALL_REJECTED").as_str())
    );
    assert_eq!(agi_call(server.agi, "84951234567").verdict(), "block");
}

#[test]
fn tenant_from_channel_variable_or_did_and_dialplan_mode() {
    let fs = FakeFs::start("ClueCon");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("callguard.toml");
    std::fs::write(&config, "[dids]\n\"8 (495) 111-22-33\" = \"acme\"\n").expect("config");
    let (_dir, _server) = start(
        &fs,
        &[&[
            "block",
            "+7495*",
            "--tenant",
            "acme",
            "--action",
            "hangup 17",
            "--reason",
            "acme list",
        ]],
        &[
            ("CALLGUARD_CONFIG", config.to_str().expect("utf8")),
            ("CALLGUARD_ESL_INBOUND__ON_BLOCK", "dialplan"),
            ("CALLGUARD_ESL_INBOUND__CONTINUE_CONTEXT", "default"),
        ],
    );
    fs.wait_subscribed(1);
    let blocked = [
        ("1001", vec![("variable_callguard_tenant", "acme")]),
        ("84951112233", vec![]),
    ];
    for (destination, extra) in blocked {
        let uuid = new_uuid();
        fs.park(&uuid, "84951234567", destination, &extra);
        // Dialplan mode: the variables, then back to the dialplan, which decides.
        let mut want = setvars(
            &uuid,
            &[
                ("verdict", "block"),
                ("reason", "acme list"),
                ("number", "+74951234567"),
                ("rule", "+7495*"),
                ("action", "hangup 17"),
                ("tenant", "acme"),
            ],
        );
        want.push(format!(
            "api uuid_transfer {uuid} {destination} XML default"
        ));
        assert_eq!(fs.acted_on(&uuid), want, "{}", fs.transcript());
    }
    // No tenant: the acme rule does not apply.
    let uuid = new_uuid();
    fs.park(&uuid, "84951234567", "1001", &[]);
    let got = fs.acted_on(&uuid);
    assert_eq!(
        got.first().map(String::as_str),
        Some(format!("api uuid_setvar {uuid} callguard_verdict allow").as_str()),
        "{}",
        fs.transcript()
    );
}
