//! FreeSWITCH's side of one outbound Event Socket call, as FreeSWITCH 1.10.12 plays it
//! (tests/fixtures/freeswitch/outbound, compiled in): the channel data in reply to `connect`
//! (captured header order, `switch_url_encode`d values, `Content-Type` last), `command/reply`
//! for every command, and once `myevents` is on, the events the channel would send:
//! CHANNEL_PARK before the first queued application, CHANNEL_EXECUTE and
//! CHANNEL_EXECUTE_COMPLETE (with the sender's `Event-UUID` as `Application-UUID`) for each
//! `sendmsg` execute, CHANNEL_HANGUP after a `sendmsg` hang-up, then the disconnect notice and
//! close. Each reply and the events it causes go out in one write; the bytes are FreeSWITCH's.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Failure, Outcome};
use crate::esl::codec::{self, Limits};

const CONNECT_REPLY: &[u8] =
    include_bytes!("../../tests/fixtures/freeswitch/outbound/call1_connect_reply.raw");
const MYEVENTS_REPLY: &[u8] =
    include_bytes!("../../tests/fixtures/freeswitch/outbound/call1_myevents_reply.raw");
const LINGER_REPLY: &[u8] =
    include_bytes!("../../tests/fixtures/freeswitch/outbound/call1_linger_reply.raw");
const OK_REPLY: &[u8] =
    include_bytes!("../../tests/fixtures/freeswitch/outbound/call1_sendmsg_execute_reply.raw");
/// FreeSWITCH's answer to an `api` command that succeeded (`+OK`), as captured.
const API_OK_REPLY: &[u8] =
    include_bytes!("../../tests/fixtures/freeswitch/outbound/call1_api_uuid_kill_reply.raw");
const UNKNOWN_REPLY: &[u8] =
    include_bytes!("../../tests/fixtures/freeswitch/outbound/call1_unknown_command_reply.raw");
const EXIT_REPLY: &[u8] =
    include_bytes!("../../tests/fixtures/freeswitch/outbound/call2_exit_reply.raw");
const DISCONNECT: &[u8] =
    include_bytes!("../../tests/fixtures/freeswitch/outbound/call2_after_exit.raw");
const EXECUTE_COMPLETE: &[u8] = include_bytes!(
    "../../tests/fixtures/freeswitch/outbound/call1_event_CHANNEL_EXECUTE_COMPLETE_set.raw"
);
/// The whole call 1 as FreeSWITCH sent it: the source of CHANNEL_PARK, CHANNEL_EXECUTE and
/// CHANNEL_HANGUP.
const CALL1_STREAM: &[u8] =
    include_bytes!("../../tests/fixtures/freeswitch/outbound/call1.stream.rx");

/// Longest command block the generator buffers.
const MAX_COMMAND: usize = 64 * 1024;

/// What a templated header carries for this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    CallerId,
    ChannelUuid,
    App,
    AppData,
    AppUuid,
}

/// Headers whose captured value is replaced per call.
const SLOTS: &[(&str, Slot)] = &[
    ("Channel-Caller-ID-Number", Slot::CallerId),
    ("Channel-Orig-Caller-ID-Number", Slot::CallerId),
    ("Channel-ANI", Slot::CallerId),
    ("Caller-Caller-ID-Number", Slot::CallerId),
    ("Caller-Orig-Caller-ID-Number", Slot::CallerId),
    ("Caller-ANI", Slot::CallerId),
    ("variable_origination_caller_id_number", Slot::CallerId),
    ("Unique-ID", Slot::ChannelUuid),
    ("Channel-Unique-ID", Slot::ChannelUuid),
    ("Channel-Call-UUID", Slot::ChannelUuid),
    ("Caller-Unique-ID", Slot::ChannelUuid),
    ("Controlled-Session-UUID", Slot::ChannelUuid),
    ("variable_uuid", Slot::ChannelUuid),
    ("variable_call_uuid", Slot::ChannelUuid),
    ("Application", Slot::App),
    ("variable_current_application", Slot::App),
    ("Application-Data", Slot::AppData),
    ("variable_current_application_data", Slot::AppData),
    ("Application-UUID", Slot::AppUuid),
];

/// A captured header block with some header values left open.
#[derive(Debug, Default)]
struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug)]
enum Piece {
    Text(Vec<u8>),
    /// `Name: ` is already in the text before it; the value and its LF go here.
    Value(Slot),
}

/// One call's values, already URL-encoded as FreeSWITCH sends them.
#[derive(Debug, Default)]
struct Values {
    caller_id: String,
    channel_uuid: String,
    app: String,
    app_data: String,
    app_uuid: String,
}

/// The slots of the channel (the `connect` reply keeps its own `current_application`).
const CHANNEL: &[Slot] = &[Slot::CallerId, Slot::ChannelUuid];
/// Every slot (events about an executed application).
const ALL: &[Slot] = &[
    Slot::CallerId,
    Slot::ChannelUuid,
    Slot::App,
    Slot::AppData,
    Slot::AppUuid,
];

impl Template {
    /// `block` with the headers of `SLOTS` whose slot is in `open` left open.
    fn new(block: &[u8], open: &[Slot]) -> Template {
        let mut pieces = Vec::new();
        let mut text = Vec::new();
        for line in block.split_inclusive(|&b| b == b'\n') {
            let slot = line
                .iter()
                .position(|&b| b == b':')
                .and_then(|colon| {
                    SLOTS.iter().find(|(name, slot)| {
                        name.as_bytes() == &line[..colon] && open.contains(slot)
                    })
                })
                .map(|&(name, slot)| (name, slot));
            match slot {
                Some((name, slot)) => {
                    text.extend_from_slice(name.as_bytes());
                    text.extend_from_slice(b": ");
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                    pieces.push(Piece::Value(slot));
                }
                None => text.extend_from_slice(line),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Template { pieces }
    }

    fn render(&self, values: &Values, out: &mut Vec<u8>) {
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.extend_from_slice(text),
                Piece::Value(slot) => {
                    let value = match slot {
                        Slot::CallerId => &values.caller_id,
                        Slot::ChannelUuid => &values.channel_uuid,
                        Slot::App => &values.app,
                        Slot::AppData => &values.app_data,
                        Slot::AppUuid => &values.app_uuid,
                    };
                    out.extend_from_slice(value.as_bytes());
                    out.push(b'\n');
                }
            }
        }
    }

    /// Renders the template as the body of a `text/event-plain` message, framed.
    fn render_event(&self, values: &Values, scratch: &mut Vec<u8>, out: &mut Vec<u8>) {
        scratch.clear();
        self.render(values, scratch);
        out.extend_from_slice(
            format!(
                "Content-Length: {}\nContent-Type: text/event-plain\n\n",
                scratch.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(scratch);
    }
}

/// Everything FreeSWITCH says, parsed once from the captures.
struct Script {
    connect_reply: Template,
    disconnect_head: Template,
    disconnect_body: Vec<u8>,
    park: Template,
    execute: Template,
    execute_complete: Template,
    hangup: Template,
}

static SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    let event = |raw: &[u8], name: &str| -> Template {
        // The captured stream, message by message, with the codec that frames it for callguard.
        let limits = Limits::default();
        let mut at = 0;
        while let Ok(Some((message, used))) = codec::decode_message(&raw[at..], &limits) {
            let body = message.body().unwrap_or_default();
            if let Ok(event) = codec::decode_event(body, &limits)
                && event.name() == Some(name)
            {
                return Template::new(body, ALL);
            }
            at += used;
        }
        Template::default()
    };
    let split = DISCONNECT
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or(DISCONNECT.len(), |p| p + 2);
    Script {
        connect_reply: Template::new(CONNECT_REPLY, CHANNEL),
        disconnect_head: Template::new(&DISCONNECT[..split], CHANNEL),
        disconnect_body: DISCONNECT[split..].to_vec(),
        park: event(CALL1_STREAM, "CHANNEL_PARK"),
        execute: event(CALL1_STREAM, "CHANNEL_EXECUTE"),
        execute_complete: event(EXECUTE_COMPLETE, "CHANNEL_EXECUTE_COMPLETE"),
        hangup: event(CALL1_STREAM, "CHANNEL_HANGUP"),
    }
});

/// `switch_url_encode` as FreeSWITCH serializes header values: control characters, non-ASCII
/// and ``\r\n "#%&+:;<=>?@[\]^`{|}`` become `%XX`, except a `%` already followed by two
/// uppercase hex digits, which passes through.
pub fn url_encode(text: &str) -> String {
    const UNSAFE: &[u8] = b"\r\n \"#%&+:;<=>?@[\\]^`{|}";
    const HEX: &[u8] = b"0123456789ABCDEF";
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(bytes.len() + 8);
    for (i, &b) in bytes.iter().enumerate() {
        let escaped = b == b'%'
            && bytes.get(i + 1).is_some_and(|c| HEX.contains(c))
            && bytes.get(i + 2).is_some_and(|c| HEX.contains(c));
        if !escaped && (!(b' '..=b'~').contains(&b) || UNSAFE.contains(&b)) {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// A FreeSWITCH-shaped uuid, unique per (process, call, n).
fn uuid(call: u64, n: u64) -> String {
    static SEED: LazyLock<u64> = LazyLock::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        *SEED & 0xffff_ffff,
        n & 0xffff,
        (call >> 48) & 0xfff,
        (call >> 36) & 0xfff,
        call & 0xf_ffff_ffff
    )
}

/// One command block from the server: the first line and `name: value` headers.
struct Command<'a> {
    first: &'a str,
    lines: Vec<&'a str>,
}

impl<'a> Command<'a> {
    fn parse(block: &'a str) -> Command<'a> {
        let mut lines = block.split('\n').filter(|l| !l.is_empty());
        let first = lines.next().unwrap_or("");
        Command {
            first,
            lines: lines.collect(),
        }
    }

    fn header(&self, name: &str) -> Option<&'a str> {
        self.lines.iter().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim_start())
        })
    }
}

/// What the call's channel did.
#[derive(Debug, Default)]
struct Channel {
    events_on: bool,
    parked: bool,
    answered: bool,
    verdict: Option<Outcome>,
    executed: u64,
}

/// Places one call; a refused connection, or a session that ended without a verdict
/// (verifying) or without any command (count-only), is a [`Failure`].
pub async fn call(
    addr: SocketAddr,
    caller_id: &str,
    call: u64,
    count_only: bool,
) -> Result<Outcome, Failure> {
    let script = &*SCRIPT;
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|_| Failure::Connect)?;
    stream.set_nodelay(true).map_err(|_| Failure::Connect)?;
    let mut values = Values {
        caller_id: url_encode(caller_id),
        channel_uuid: uuid(call, 0),
        ..Values::default()
    };
    let mut channel = Channel::default();
    let mut buf = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(16 * 1024);
    let mut scratch = Vec::with_capacity(4 * 1024);
    'session: loop {
        // One command: bytes up to the empty line.
        let end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\n\n") {
                break p + 2;
            }
            if buf.len() > MAX_COMMAND {
                return Err(Failure::NoVerdict);
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => break 'session,
                Ok(_) => {}
                Err(_) if channel.answered => break 'session,
                Err(_) => return Err(Failure::NoVerdict),
            }
        };
        let block = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let command = Command::parse(&block);
        let word = command.first.split(' ').next().unwrap_or("");
        channel.answered |= !word.is_empty() && word != "connect";
        out.clear();
        let mut last = false;
        match word {
            "" => continue,
            "connect" => script.connect_reply.render(&values, &mut out),
            "myevents" => {
                channel.events_on = true;
                out.extend_from_slice(MYEVENTS_REPLY);
            }
            "linger" => out.extend_from_slice(LINGER_REPLY),
            "api" => {
                // `api uuid_setvar <uuid> callguard_verdict <verdict>` carries the verdict when
                // callguard answers without events.
                let mut words = command.first.split(' ').skip(1);
                if words.next() == Some("uuid_setvar") && words.nth(1) == Some("callguard_verdict")
                {
                    channel.verdict = Some(match words.next() {
                        Some("block") => Outcome::Block,
                        Some("allow") => Outcome::Allow,
                        _ => Outcome::Other,
                    });
                }
                out.extend_from_slice(API_OK_REPLY);
            }
            "resume" => out.extend_from_slice(OK_REPLY),
            "exit" => {
                out.extend_from_slice(EXIT_REPLY);
                script.disconnect_head.render(&values, &mut out);
                out.extend_from_slice(&script.disconnect_body);
                last = true;
            }
            "sendmsg" => {
                out.extend_from_slice(OK_REPLY);
                match command.header("call-command") {
                    Some("execute") => {
                        let app = command.header("execute-app-name").unwrap_or("");
                        let arg = command.header("execute-app-arg").unwrap_or("");
                        if app == "set"
                            && let Some(verdict) = arg.strip_prefix("callguard_verdict=")
                        {
                            channel.verdict = Some(match verdict {
                                "block" => Outcome::Block,
                                "allow" => Outcome::Allow,
                                _ => Outcome::Other,
                            });
                        }
                        if channel.events_on {
                            channel.executed += 1;
                            values.app = url_encode(app);
                            values.app_data = url_encode(arg);
                            values.app_uuid = command
                                .header("Event-UUID")
                                .map_or_else(|| uuid(call, channel.executed), str::to_owned);
                            if !channel.parked {
                                channel.parked = true;
                                script.park.render_event(&values, &mut scratch, &mut out);
                            }
                            script.execute.render_event(&values, &mut scratch, &mut out);
                            script
                                .execute_complete
                                .render_event(&values, &mut scratch, &mut out);
                        }
                    }
                    Some("hangup") => {
                        if channel.events_on {
                            script.hangup.render_event(&values, &mut scratch, &mut out);
                        }
                        // Not lingering: the listener ends with the channel.
                        script.disconnect_head.render(&values, &mut out);
                        out.extend_from_slice(&script.disconnect_body);
                        last = true;
                    }
                    _ => {}
                }
            }
            _ => out.extend_from_slice(UNKNOWN_REPLY),
        }
        if stream.write_all(&out).await.is_err() || last {
            break;
        }
    }
    if count_only {
        channel.answered.then_some(Outcome::Answered)
    } else {
        channel.verdict
    }
    .ok_or(Failure::NoVerdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_matches_the_captures() {
        // call3: caller ID `anon 100%&x=y/é`; encoding_rec: `pct%41%2B x`.
        assert_eq!(
            url_encode("anon 100%&x=y/é"),
            "anon%20100%25%26x%3Dy/%C3%A9"
        );
        assert_eq!(url_encode("pct%41%2B x"), "pct%41%2B%20x");
        assert_eq!(url_encode("+OK\n"), "%2BOK%0A");
        assert_eq!(url_encode("fd00::2"), "fd00%3A%3A2");
    }

    #[test]
    fn templates_keep_the_captured_bytes() {
        let script = &*SCRIPT;
        for t in [
            &script.park,
            &script.execute,
            &script.execute_complete,
            &script.hangup,
        ] {
            assert!(t.pieces.len() > 3);
        }
        // Rendering with the captured values gives back the capture byte for byte.
        let values = Values {
            caller_id: "%2B7%20(495)%20123-45-67".into(),
            channel_uuid: "253ab832-04f8-4b63-a362-3b71c950497b".into(),
            ..Values::default()
        };
        let mut out = Vec::new();
        script.connect_reply.render(&values, &mut out);
        assert_eq!(out, CONNECT_REPLY);
        let limits = Limits::default();
        let (data, used) = codec::decode_message(&out, &limits)
            .expect("frames")
            .expect("complete");
        assert_eq!(used, out.len());
        assert_eq!(
            data.get("Caller-Caller-ID-Number"),
            Some("+7 (495) 123-45-67")
        );
        assert!(data.is_ok_reply());
    }

    #[test]
    fn events_carry_the_application_and_frame() {
        let values = Values {
            caller_id: "84951234567".into(),
            channel_uuid: uuid(7, 0),
            app: "set".into(),
            app_data: url_encode("callguard_verdict=block"),
            app_uuid: "callguard-1".into(),
        };
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        SCRIPT
            .execute_complete
            .render_event(&values, &mut scratch, &mut out);
        let limits = Limits::default();
        let (message, used) = codec::decode_message(&out, &limits)
            .expect("frames")
            .expect("complete");
        assert_eq!(used, out.len());
        let event = message.event(&limits).expect("event").expect("event-plain");
        assert_eq!(event.name(), Some("CHANNEL_EXECUTE_COMPLETE"));
        assert_eq!(event.get("Application-UUID"), Some("callguard-1"));
        assert_eq!(
            event.get("Application-Data"),
            Some("callguard_verdict=block")
        );
        assert_eq!(event.unique_id(), Some(uuid(7, 0).as_str()));
    }

    #[test]
    fn commands_parse_like_freeswitch() {
        let c = Command::parse(
            "sendmsg\ncall-command: execute\nexecute-app-name: set\nexecute-app-arg: a=b\n\n",
        );
        assert_eq!(c.first, "sendmsg");
        assert_eq!(c.header("execute-app-arg"), Some("a=b"));
        assert_eq!(c.header("Event-UUID"), None);
    }
}
