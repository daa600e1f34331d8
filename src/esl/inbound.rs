//! Inbound Event Socket mode: callguard connects to FreeSWITCH (port 8021), authenticates,
//! subscribes to the event that hands calls over (CHANNEL_PARK from a one-line dialplan), and
//! screens each call with `api uuid_setvar` / `uuid_kill` / `uuid_transfer`. Reconnects with
//! backoff; never acts twice on one call. I/O glue only: bytes go through [`super::codec`].

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::codec::{self, CodecError, Event, Limits, Message};
use super::outbound::{call_from_channel, decision_variables};
use crate::call::{Decision, Verdict};
use crate::engine::Engine;
use crate::rules::RuleAction;
use crate::rules::action::CAUSE_NORMAL_CLEARING;

/// Calls remembered as handled, so a repeated event never acts twice.
const HANDLED_CAP: usize = 10_000;
/// First reconnect delay; doubles up to the configured maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Client settings.
#[derive(Debug, Clone)]
pub struct InboundSettings {
    /// FreeSWITCH's Event Socket address.
    pub addr: String,
    /// Its password.
    pub password: String,
    /// Event that hands a call over (e.g. `CHANNEL_PARK`).
    pub event: String,
    /// Context allowed and tagged calls are transferred to; empty = leave them.
    pub continue_context: String,
    /// Carry out block actions; false only sets variables and continues the call.
    pub act_on_block: bool,
    /// Longest wait for one reply (and for the connection itself).
    pub reply_timeout: Duration,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// Byte caps.
    pub limits: Limits,
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboundError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// FreeSWITCH sent bytes that are not ESL.
    #[error("protocol: {0}")]
    Codec(#[from] CodecError),
    /// No reply in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// FreeSWITCH closed the connection.
    #[error("FreeSWITCH closed the connection")]
    Closed,
    /// Wrong password or refused subscription.
    #[error("{what} refused: {reply}")]
    Refused {
        /// What was refused.
        what: &'static str,
        /// FreeSWITCH's Reply-Text.
        reply: String,
    },
    /// Something other than the `auth/request` greeting.
    #[error("unexpected greeting {0:?}")]
    Greeting(String),
}

/// Runs until `shutdown`: connect, serve, and on any failure reconnect with backoff.
pub async fn run(engine: Engine, settings: InboundSettings, shutdown: CancellationToken) {
    let mut handled = Handled::default();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = session(&engine, &settings, &mut handled, &mut backoff) => r,
        };
        if let Err(error) = result {
            use crate::metrics::ConnErrorKind;
            let kind = match &error {
                InboundError::Io(_) => ConnErrorKind::Io,
                InboundError::Timeout(_) => ConnErrorKind::Timeout,
                InboundError::Closed => ConnErrorKind::Closed,
                _ => ConnErrorKind::Protocol,
            };
            crate::metrics::connection_error("esl", kind);
            warn!(addr = %settings.addr, %error, retry_in = ?backoff, "esl inbound: connection ended");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

/// Unique-IDs already acted on, oldest forgotten first.
#[derive(Default)]
struct Handled {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Handled {
    /// True when `uuid` is new (and now remembered).
    fn insert(&mut self, uuid: &str) -> bool {
        if self.set.contains(uuid) {
            return false;
        }
        if self.order.len() >= HANDLED_CAP
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(uuid.to_owned());
        self.order.push_back(uuid.to_owned());
        true
    }
}

async fn session(
    engine: &Engine,
    settings: &InboundSettings,
    handled: &mut Handled,
    backoff: &mut Duration,
) -> Result<(), InboundError> {
    let stream = timeout(settings.reply_timeout, TcpStream::connect(&settings.addr))
        .await
        .map_err(|_elapsed| InboundError::Timeout("the connection"))??;
    let peer = stream.peer_addr()?;
    let mut client = Client {
        stream,
        buf: Vec::with_capacity(16 * 1024),
        pending: VecDeque::new(),
        settings: settings.clone(),
    };
    let deadline = Instant::now() + settings.reply_timeout;
    let greeting = client.next_message(Some(deadline), "the greeting").await?;
    if greeting.content_type() != Some("auth/request") {
        return Err(InboundError::Greeting(
            greeting.content_type().unwrap_or("").to_owned(),
        ));
    }
    let mut out = Vec::with_capacity(128);
    codec::encode_auth(&mut out, &settings.password);
    client.command(&out, "auth").await?;
    out.clear();
    codec::encode_event_plain(&mut out, &[settings.event.as_str()]);
    client.command(&out, "event subscription").await?;
    info!(addr = %settings.addr, event = %settings.event, "esl inbound connected");
    *backoff = FIRST_BACKOFF;

    loop {
        let message = match client.pending.pop_front() {
            Some(m) => m,
            None => client.next_message(None, "events").await?,
        };
        match message.content_type() {
            Some("text/event-plain") => {
                let event = message
                    .body()
                    .map(|b| codec::decode_event(b, &settings.limits))
                    .transpose()?;
                if let Some(event) = event
                    && event.name() == Some(settings.event.as_str())
                {
                    client.handle(engine, handled, &event, peer).await?;
                }
            }
            Some("text/disconnect-notice") => return Err(InboundError::Closed),
            _ => {}
        }
    }
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Events that arrived while a reply was awaited; handled next, never dropped.
    pending: VecDeque<Message>,
    settings: InboundSettings,
}

impl Client {
    /// Screens one handed-over call.
    async fn handle(
        &mut self,
        engine: &Engine,
        handled: &mut Handled,
        event: &Event,
        peer: SocketAddr,
    ) -> Result<(), InboundError> {
        let Some(uuid) = event.unique_id().map(uuid_only).filter(|u| !u.is_empty()) else {
            return Ok(());
        };
        if !handled.insert(&uuid) {
            return Ok(());
        }
        let call = call_from_channel(event, peer);
        let decided = engine.decide_when_ready(&call).await;
        engine.account(&call, &decided);
        let decision = decided.decision;
        for (name, value) in decision_variables(&decision) {
            self.api(&setvar_command(&uuid, name, &value)).await?;
        }
        let destination = event
            .get_defined("Caller-Destination-Number")
            .map(dialplan_word)
            .unwrap_or_default();
        for line in self.action_commands(&decision, &uuid, &destination) {
            self.api(&line).await?;
        }
        Ok(())
    }

    /// The `api` command lines that carry out a decision.
    fn action_commands(&self, decision: &Decision, uuid: &str, destination: &str) -> Vec<String> {
        let act = decision.verdict == Verdict::Block && self.settings.act_on_block;
        let kill = |cause: &str| vec![format!("uuid_kill {uuid} {cause}")];
        let action = decision.action.as_ref().filter(|_| act);
        if let Some(cause) = action.and_then(super::hangup_cause) {
            return kill(cause);
        }
        match action {
            Some(RuleAction::Playback { sound }) => vec![format!(
                "uuid_transfer {uuid} playback:{sound},hangup:{} inline",
                codec::hangup_cause_name(CAUSE_NORMAL_CLEARING)
            )],
            Some(RuleAction::Redirect { context, exten, .. }) => {
                vec![format!("uuid_transfer {uuid} {exten} XML {context}")]
            }
            // Tagged and allowed calls (the hang-up actions returned above).
            Some(
                RuleAction::Tag
                | RuleAction::Hangup { .. }
                | RuleAction::Busy
                | RuleAction::Congestion,
            )
            | None => {
                let context = dialplan_word(&self.settings.continue_context);
                if context.is_empty() || destination.is_empty() {
                    Vec::new()
                } else {
                    vec![format!("uuid_transfer {uuid} {destination} XML {context}")]
                }
            }
        }
    }

    /// Runs one `api` command; a `-ERR` answer is logged, not fatal (the call may be gone).
    async fn api(&mut self, line: &str) -> Result<(), InboundError> {
        let mut out = Vec::with_capacity(line.len() + 8);
        codec::encode_api(&mut out, line);
        self.stream.write_all(&out).await?;
        let deadline = Instant::now() + self.settings.reply_timeout;
        let reply = self.reply(deadline, "an api response").await?;
        let body = reply
            .body()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        if !body.starts_with("+OK") {
            let command = line.split(' ').next().unwrap_or("");
            warn!(command, reply = %body.trim_end(), "esl inbound: api command refused");
        }
        Ok(())
    }

    /// Sends a command and requires `+OK`.
    async fn command(&mut self, bytes: &[u8], what: &'static str) -> Result<(), InboundError> {
        self.stream.write_all(bytes).await?;
        let deadline = Instant::now() + self.settings.reply_timeout;
        let reply = self.reply(deadline, what).await?;
        if reply.is_ok_reply() {
            Ok(())
        } else {
            Err(InboundError::Refused {
                what,
                reply: reply.reply_text().unwrap_or("").to_owned(),
            })
        }
    }

    /// Reads until a reply, keeping events for later.
    async fn reply(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Message, InboundError> {
        loop {
            let message = self.next_message(Some(deadline), what).await?;
            match message.content_type() {
                Some("command/reply" | "api/response") => return Ok(message),
                Some("text/disconnect-notice") => return Err(InboundError::Closed),
                // Bounded: FreeSWITCH itself drops a listener that lags this far behind.
                Some("text/event-plain") if self.pending.len() < 100_000 => {
                    self.pending.push_back(message);
                }
                _ => {}
            }
        }
    }

    async fn next_message(
        &mut self,
        deadline: Option<Instant>,
        what: &'static str,
    ) -> Result<Message, InboundError> {
        loop {
            if let Some((message, used)) = codec::decode_message(&self.buf, &self.settings.limits)?
            {
                self.buf.drain(..used);
                return Ok(message);
            }
            let read = self.stream.read_buf(&mut self.buf);
            let n = match deadline {
                Some(deadline) => timeout_at(deadline, read)
                    .await
                    .map_err(|_elapsed| InboundError::Timeout(what))??,
                None => read.await?,
            };
            if n == 0 {
                return Err(InboundError::Closed);
            }
        }
    }
}

/// The `api` command line that sets channel variable `name` of call `uuid` to `value`, with
/// `$` defused; [`codec::encode_api`] sanitizes the line. `uuid_setvar` takes everything after
/// the name as the value, so spaces in it are kept.
pub fn setvar_command(uuid: &str, name: &str, value: &str) -> String {
    format!(
        "uuid_setvar {uuid} {name} {}",
        codec::defuse_expansion(value)
    )
}

/// A channel UUID as it may appear in an api command line: hex digits and dashes only.
pub(crate) fn uuid_only(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect()
}

/// A dialplan word (extension, context) safe inside an api command line.
fn dialplan_word(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '*' | '#' | '_' | '.' | '-'))
        .take(80)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handled_calls_are_bounded_and_never_repeat() {
        let mut handled = Handled::default();
        assert!(handled.insert("a"));
        assert!(!handled.insert("a"));
        for i in 0..HANDLED_CAP + 5 {
            handled.insert(&i.to_string());
        }
        assert!(handled.set.len() <= HANDLED_CAP);
        assert!(!handled.insert(&(HANDLED_CAP + 4).to_string()));
    }

    #[test]
    fn words_in_command_lines_are_inert() {
        assert_eq!(uuid_only("253ab832-04f8 \nkill"), "253ab832-04f8kill");
        assert_eq!(dialplan_word("1000 XML evil\n"), "1000XMLevil");
    }
}
