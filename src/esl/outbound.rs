//! One outbound Event Socket session: FreeSWITCH's `socket` application connected to us.
//! `connect` -> channel data -> decide -> set the variables -> carry out the action, or
//! `resume` the dialplan (without an application to wait for, all of it in one write). I/O glue only: bytes go through [`super::codec`], the decision
//! through [`Engine`]. Every accepted socket ends with a verdict and a `resume` or a hang-up
//! whenever FreeSWITCH is still there, because a socket that just closes leaves the caller
//! parked in silence.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, warn};

use super::codec::{self, CodecError, Limits, Message};
use crate::call::{CallEvent, Decision, Presentation, Protocol, Verdict};
use crate::engine::Engine;
use crate::rules::RuleAction;
use crate::rules::action::CAUSE_NORMAL_CLEARING;

/// Session timing and size settings.
#[derive(Debug, Clone, Copy)]
pub struct EslSessionSettings {
    /// Longest wait for the channel data after `connect`.
    pub read_timeout: Duration,
    /// Longest wait for the reply to one command.
    pub reply_timeout: Duration,
    /// Longest wait for an executed application to complete.
    pub execute_timeout: Duration,
    /// Longest wait for a `playback` action.
    pub playback_timeout: Duration,
    /// Byte caps.
    pub limits: Limits,
    /// Carry out block actions; false only sets the variables and resumes.
    pub act_on_block: bool,
}

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EslSessionError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// FreeSWITCH sent bytes that are not ESL.
    #[error("protocol: {0}")]
    Codec(#[from] CodecError),
    /// No message in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// FreeSWITCH closed the connection.
    #[error("peer closed the connection while we waited for {0}")]
    Closed(&'static str),
    /// FreeSWITCH refused a command.
    #[error("{command} refused: {reply}")]
    Refused {
        /// The command's first line.
        command: String,
        /// FreeSWITCH's Reply-Text.
        reply: String,
    },
}

impl EslSessionError {
    /// The `kind` label of `callguard_connection_errors_total`.
    pub fn metric_kind(&self) -> crate::metrics::ConnErrorKind {
        use crate::metrics::ConnErrorKind;
        match self {
            EslSessionError::Io(_) => ConnErrorKind::Io,
            EslSessionError::Codec(_) | EslSessionError::Refused { .. } => ConnErrorKind::Protocol,
            EslSessionError::Timeout(_) => ConnErrorKind::Timeout,
            EslSessionError::Closed(_) => ConnErrorKind::Closed,
        }
    }
}

/// Runs one session to its end; never panics on peer input, always closes the socket.
pub async fn run(
    mut stream: TcpStream,
    peer: SocketAddr,
    engine: Engine,
    settings: EslSessionSettings,
) {
    let mut conn = Conn {
        buf: Vec::with_capacity(8192),
        settings,
        events: VecDeque::new(),
        hung_up: false,
    };
    let _open = crate::metrics::session_started("esl");
    if let Err(e) = conn.session(&mut stream, peer, &engine).await {
        crate::metrics::connection_error("esl", e.metric_kind());
        warn!(%peer, error = %e, "esl session ended early");
    }
    let _shutdown_result = stream.shutdown().await;
}

/// What the session needs from an event: which one it was and which application it is about.
#[derive(Debug)]
struct EventSeen {
    name: Option<String>,
    application_uuid: Option<String>,
}

struct Conn {
    buf: Vec<u8>,
    settings: EslSessionSettings,
    /// Events that arrived while waiting for a command reply.
    events: VecDeque<EventSeen>,
    /// FreeSWITCH reported the channel gone (CHANNEL_HANGUP or a disconnect notice).
    hung_up: bool,
}

impl Conn {
    async fn session(
        &mut self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        engine: &Engine,
    ) -> Result<(), EslSessionError> {
        let mut out = Vec::with_capacity(512);
        codec::encode_connect(&mut out);
        stream.write_all(&out).await?;
        let deadline = Instant::now() + self.settings.read_timeout;
        let data = self.reply(stream, deadline, "the channel data").await?;
        let received = std::time::Instant::now();
        if !data.is_ok_reply() {
            return Err(EslSessionError::Refused {
                command: "connect".into(),
                reply: data.reply_text().unwrap_or("").to_owned(),
            });
        }
        let call = call_from_channel(&data, peer);
        let decided = engine.decide_when_ready(&call).await;
        // The bookkeeping waits until the answer is written: the call does not. It runs right
        // after that write returns, in the same poll of this task.
        let account = || engine.account(&call, &decided);
        let decision = &decided.decision;
        let act = decision.verdict == Verdict::Block && self.settings.act_on_block;
        let action = decision.action.as_ref().filter(|_| act);
        let uuid = data
            .get("Unique-ID")
            .map(super::inbound::uuid_only)
            .filter(|u| !u.is_empty());
        // Without an application to wait for, the whole answer goes in one write and no
        // events are asked for (see `answer_at_once`).
        let waits_for_an_app = matches!(
            action,
            Some(RuleAction::Playback { .. } | RuleAction::Redirect { .. })
        );
        // `api` needs `socket ... full`; without it FreeSWITCH answers `-ERR command not found`.
        let full_control = data.get("Control") == Some("full");
        if let (Some(uuid), false, true) = (uuid.as_deref(), waits_for_an_app, full_control) {
            return self
                .answer_at_once(stream, uuid, decision, action, received, account)
                .await;
        }

        // Events tell us when our `set` has run, so `resume` cannot overtake it. `myevents`
        // and every `set` go out in one write and their replies are read after: FreeSWITCH's
        // reader (mod_event_socket's read_packet) takes the socket one byte at a time, so it
        // parses them one after another and answers each in order. One round trip instead of
        // one per command; the bytes are the same as sending them one by one.
        out.clear();
        codec::encode_myevents(&mut out);
        let vars = decision_variables(decision);
        let uuid = event_uuid();
        for (i, (name, value)) in vars.iter().enumerate() {
            let last = i + 1 == vars.len();
            // The last `set` carries the id whose CHANNEL_EXECUTE_COMPLETE is awaited; without
            // events (a refused `myevents`) the id is simply never reported.
            encode_set(&mut out, name, value, last.then_some(uuid.as_str()), last);
        }
        let written = stream.write_all(&out).await;
        // callguard_verdict is written.
        crate::metrics::record_verdict_time("esl", received.elapsed());
        account();
        written?;
        let events_on = self
            .expect_reply(stream, b"myevents", "myevents")
            .await
            .is_ok();
        for _ in &vars {
            self.expect_reply(stream, b"sendmsg set", "sendmsg set")
                .await?;
        }
        if events_on && !vars.is_empty() {
            self.wait_executed(stream, &uuid, self.settings.execute_timeout)
                .await?;
        }
        if self.hung_up {
            return Ok(());
        }
        if let Some(cause) = action.and_then(super::hangup_cause) {
            return self.hangup(stream, cause).await;
        }
        match action {
            Some(RuleAction::Playback { sound }) => {
                let timeout = self.settings.playback_timeout;
                self.execute(stream, "playback", sound, timeout, events_on)
                    .await?;
                if self.hung_up {
                    return Ok(());
                }
                self.hangup(stream, codec::hangup_cause_name(CAUSE_NORMAL_CLEARING))
                    .await
            }
            Some(RuleAction::Redirect { context, exten, .. }) => {
                // `transfer` moves the channel to the new extension; once the socket app
                // ends, the dialplan runs there.
                let timeout = self.settings.execute_timeout;
                let arg = format!("{exten} XML {context}");
                self.execute(stream, "transfer", &arg, timeout, events_on)
                    .await?;
                self.exit(stream).await
            }
            // Tagged and allowed calls (the hang-up actions returned above).
            Some(
                RuleAction::Tag
                | RuleAction::Hangup { .. }
                | RuleAction::Busy
                | RuleAction::Congestion,
            )
            | None => {
                // `resume` and `exit` in one write, as `myevents` and the sets above.
                out.clear();
                codec::encode_resume(&mut out);
                codec::encode_exit(&mut out);
                stream.write_all(&out).await?;
                self.expect_reply(stream, b"resume", "resume").await?;
                self.exit_reply(stream).await
            }
        }
    }

    /// Runs an application and, with events on, waits until it has completed.
    async fn execute(
        &mut self,
        stream: &mut TcpStream,
        app: &str,
        arg: &str,
        timeout: Duration,
        events_on: bool,
    ) -> Result<(), EslSessionError> {
        let uuid = events_on.then(event_uuid);
        let mut out = Vec::with_capacity(256);
        codec::encode_sendmsg_execute(&mut out, None, app, arg, uuid.as_deref(), true);
        self.command(stream, &out, "sendmsg execute").await?;
        if let Some(uuid) = uuid {
            self.wait_executed(stream, &uuid, timeout).await?;
        }
        Ok(())
    }

    /// The answer for a call whose action needs no application to run (allow, tag, hang-up,
    /// busy, congestion), in one write: the variables with `api uuid_setvar` (set at once by
    /// the API, before FreeSWITCH reads the next command, so no events are needed to order them)
    /// then `sendmsg hangup`, or `resume` and `exit`. FreeSWITCH's reader takes the socket a
    /// byte at a time and answers each command in order; the replies are read after. Two round
    /// trips for the whole call (the `connect` and this), no event traffic.
    async fn answer_at_once(
        &mut self,
        stream: &mut TcpStream,
        uuid: &str,
        decision: &Decision,
        action: Option<&RuleAction>,
        received: std::time::Instant,
        account: impl FnOnce(),
    ) -> Result<(), EslSessionError> {
        let vars = decision_variables(decision);
        let mut out = Vec::with_capacity(1024);
        for (name, value) in &vars {
            codec::encode_api(&mut out, &super::inbound::setvar_command(uuid, name, value));
        }
        let hangup_cause = action.and_then(super::hangup_cause);
        match hangup_cause {
            Some(cause) => codec::encode_sendmsg_hangup(&mut out, None, cause),
            None => {
                codec::encode_resume(&mut out);
                codec::encode_exit(&mut out);
            }
        }
        // Recorded before the write: this one write is the whole answer, and FreeSWITCH may
        // finish the call (and a scrape see the histogram) before this task runs again.
        crate::metrics::record_verdict_time("esl", received.elapsed());
        let written = stream.write_all(&out).await;
        account();
        written?;
        match self
            .read_answers(stream, uuid, &vars, hangup_cause.is_some())
            .await
        {
            // The caller hung up meanwhile (FreeSWITCH said so, then closed): nothing is
            // left to do for this call, and nothing went wrong.
            Err(EslSessionError::Closed(_)) if self.hung_up => Ok(()),
            other => other,
        }
    }

    /// The replies to what [`Conn::answer_at_once`] wrote, in order.
    async fn read_answers(
        &mut self,
        stream: &mut TcpStream,
        uuid: &str,
        vars: &[(&'static str, String)],
        hangs_up: bool,
    ) -> Result<(), EslSessionError> {
        for (name, _) in vars {
            let reply = self
                .expect_reply(stream, b"api uuid_setvar", "api uuid_setvar")
                .await?;
            if reply.body().is_some_and(|b| b.starts_with(b"-ERR")) {
                let text = String::from_utf8_lossy(reply.body().unwrap_or_default());
                warn!(uuid, variable = name, reply = %text.trim_end(), "esl: uuid_setvar refused");
            }
        }
        if hangs_up {
            self.expect_reply(stream, b"sendmsg hangup", "sendmsg hangup")
                .await?;
            return Ok(());
        }
        self.expect_reply(stream, b"resume", "resume").await?;
        self.exit_reply(stream).await
    }

    async fn hangup(&mut self, stream: &mut TcpStream, cause: &str) -> Result<(), EslSessionError> {
        let mut out = Vec::with_capacity(128);
        codec::encode_sendmsg_hangup(&mut out, None, cause);
        self.command(stream, &out, "sendmsg hangup").await?;
        Ok(())
    }

    async fn exit(&mut self, stream: &mut TcpStream) -> Result<(), EslSessionError> {
        let mut out = Vec::with_capacity(16);
        codec::encode_exit(&mut out);
        stream.write_all(&out).await?;
        self.exit_reply(stream).await
    }

    /// Reads the reply to an `exit` already sent: FreeSWITCH answers `+OK bye` and closes; a
    /// channel already gone may close first.
    async fn exit_reply(&mut self, stream: &mut TcpStream) -> Result<(), EslSessionError> {
        match self.expect_reply(stream, b"exit", "exit").await {
            Ok(_) | Err(EslSessionError::Closed(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends one command and returns its reply, keeping events that arrive meanwhile.
    async fn command(
        &mut self,
        stream: &mut TcpStream,
        line: &[u8],
        what: &'static str,
    ) -> Result<Message, EslSessionError> {
        stream.write_all(line).await?;
        self.expect_reply(stream, line, what).await
    }

    /// Waits for the reply to `line`, already sent; see [`Conn::command`].
    async fn expect_reply(
        &mut self,
        stream: &mut TcpStream,
        line: &[u8],
        what: &'static str,
    ) -> Result<Message, EslSessionError> {
        let deadline = Instant::now() + self.settings.reply_timeout;
        let reply = self.reply(stream, deadline, what).await?;
        if reply.is_ok_reply() || reply.content_type() == Some("api/response") {
            Ok(reply)
        } else {
            let first = String::from_utf8_lossy(line.split(|&b| b == b'\n').next().unwrap_or(b""))
                .into_owned();
            Err(EslSessionError::Refused {
                command: first,
                reply: reply.reply_text().unwrap_or("").to_owned(),
            })
        }
    }

    /// Reads until a `command/reply` or `api/response`, queueing events on the way.
    async fn reply(
        &mut self,
        stream: &mut TcpStream,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Message, EslSessionError> {
        loop {
            let message = self.next_message(stream, deadline, what).await?;
            match message.content_type() {
                Some("command/reply" | "api/response") => return Ok(message),
                _ => {
                    self.note(message);
                }
            }
        }
    }

    /// Waits for the CHANNEL_EXECUTE_COMPLETE of the application sent with `uuid`. A timeout or
    /// a hang-up is not an error: the call must still get its resume or hang-up.
    async fn wait_executed(
        &mut self,
        stream: &mut TcpStream,
        uuid: &str,
        timeout: Duration,
    ) -> Result<(), EslSessionError> {
        let done = |e: &EventSeen| {
            e.name.as_deref() == Some("CHANNEL_EXECUTE_COMPLETE")
                && e.application_uuid.as_deref() == Some(uuid)
        };
        if self.events.iter().any(done) {
            self.events.clear();
            return Ok(());
        }
        self.events.clear();
        let deadline = Instant::now() + timeout;
        while !self.hung_up {
            match self
                .next_message(stream, deadline, "an execute-complete event")
                .await
            {
                Ok(message) => {
                    if self.note(message).is_some_and(done) {
                        return Ok(());
                    }
                }
                Err(EslSessionError::Timeout(what)) => {
                    warn!(
                        what,
                        uuid, "esl: application did not complete in time; going on"
                    );
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Records what a non-reply message means; returns what matters of it when it is an event.
    fn note(&mut self, message: Message) -> Option<&EventSeen> {
        match message.content_type() {
            Some("text/event-plain") => {
                // Two headers of ~90: decoding only those keeps events cheap (issue [5/8]).
                let [name, application_uuid] = message.body().and_then(|b| {
                    codec::event_fields(
                        b,
                        &self.settings.limits,
                        ["Event-Name", "Application-UUID"],
                    )
                    .ok()
                })?;
                if matches!(
                    name.as_deref(),
                    Some("CHANNEL_HANGUP" | "CHANNEL_HANGUP_COMPLETE")
                ) {
                    self.hung_up = true;
                }
                // Bounded: only the newest few matter for the wait in progress.
                while self.events.len() >= 64 {
                    self.events.pop_front();
                }
                self.events.push_back(EventSeen {
                    name,
                    application_uuid,
                });
                self.events.back()
            }
            Some("text/disconnect-notice") => {
                self.hung_up = true;
                None
            }
            other => {
                debug!(content_type = ?other, "esl: ignoring message");
                None
            }
        }
    }

    async fn next_message(
        &mut self,
        stream: &mut TcpStream,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Message, EslSessionError> {
        loop {
            if let Some((message, used)) = codec::decode_message(&self.buf, &self.settings.limits)?
            {
                self.buf.drain(..used);
                return Ok(message);
            }
            match timeout_at(deadline, stream.read_buf(&mut self.buf)).await {
                Err(_elapsed) => return Err(EslSessionError::Timeout(what)),
                Ok(Ok(0)) => return Err(EslSessionError::Closed(what)),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }
}

/// Channel variables for a decision (FreeSWITCH spells them in lower case), in the order they
/// are set; the first three always, the others when they have a value.
pub fn decision_variables(decision: &Decision) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("callguard_verdict", decision.verdict.as_str().to_owned()),
        ("callguard_reason", decision.reason.clone()),
        ("callguard_number", decision.number.to_string()),
    ];
    if !decision.rule.is_empty() {
        vars.push(("callguard_rule", decision.rule.clone()));
    }
    if let Some(action) = &decision.action {
        vars.push(("callguard_action", action.to_string()));
    }
    if let Some(tenant) = &decision.tenant {
        vars.push(("callguard_tenant", tenant.to_string()));
    }
    vars
}

/// Append the `sendmsg` that sets channel variable `name` to `value` on the socket's own
/// channel: `set name=value` with `$` defused (FreeSWITCH expands the argument) and the value
/// sanitized by the encoder; `lock` adds `event-lock: true` and `event_uuid` the `Event-UUID`
/// whose CHANNEL_EXECUTE_COMPLETE is awaited.
pub fn encode_set(
    out: &mut Vec<u8>,
    name: &str,
    value: &str,
    event_uuid: Option<&str>,
    lock: bool,
) {
    let arg = format!("{name}={}", codec::defuse_expansion(value));
    codec::encode_sendmsg_execute(out, None, "set", &arg, event_uuid, lock);
}

/// A unique id for one executed application, so its completion event can be told apart.
fn event_uuid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("callguard-{nanos:x}-{n:x}")
}

/// Maps FreeSWITCH's channel data (the reply to `connect`) to the protocol-neutral call.
pub fn call_from_channel(data: &Message, peer: SocketAddr) -> CallEvent {
    let defined = |name: &str| data.get_defined(name).map(str::to_owned);
    let number = defined("Caller-Caller-ID-Number").or_else(|| defined("Channel-Caller-ID-Number"));
    // A withheld number often still travels in P-Asserted-Identity (Privacy: id): screen on it.
    let withheld = number.as_deref().is_none_or(|n| {
        let n = n.trim().to_ascii_lowercase();
        n.is_empty()
            || matches!(
                n.as_str(),
                "anonymous" | "unknown" | "private" | "restricted" | "0000000000"
            )
    });
    let asserted = defined("variable_sip_P-Asserted-Identity")
        .or_else(|| defined("variable_sip_p_asserted_identity"));
    let caller_id = match (withheld, asserted) {
        (true, Some(pai)) => pai,
        _ => number
            .or_else(|| defined("variable_sip_from_user"))
            .or_else(|| defined("Caller-ANI"))
            .unwrap_or_default(),
    };
    let presentation = if data.get("Caller-Privacy-Hide-Number") == Some("true")
        || data.get("Channel-Privacy-Hide-Number") == Some("true")
    {
        Presentation::Restricted
    } else {
        Presentation::Allowed
    };
    CallEvent {
        protocol: Some(Protocol::Esl),
        caller_id,
        caller_name: defined("Caller-Caller-ID-Name"),
        called: defined("variable_callguard_did").or_else(|| defined("Caller-Destination-Number")),
        tenant: defined("variable_callguard_tenant"),
        presentation,
        call_id: defined("Unique-ID"),
        peer: Some(peer),
    }
}
