//! One FastAGI session: read the environment, decide, set the variables, maybe hang up, close.
//! I/O glue only; bytes go through [`super::codec`], the decision through [`Engine`].

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info, warn};

use super::codec::{self, AgiEnv, CodecError, Limits, Location, Reply};
use crate::call::{CallEvent, Decision, Presentation, Protocol, Verdict};
use crate::engine::Engine;
use crate::lastcall::{LastCallers, extension_key};
use crate::number::CallerNumber;
use crate::rules::action::CAUSE_NORMAL_CLEARING;
use crate::rules::{Entry, ListKind, RuleAction, RulePattern, Tenant};
use crate::store::Store;

/// How long `Busy()`/`Congestion()` signal before Asterisk hangs up, in seconds.
const SIGNAL_SECONDS: &str = "10";

/// Session timing and size settings.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// Longest wait for the whole environment block.
    pub read_timeout: Duration,
    /// Longest wait for the reply to one command.
    pub reply_timeout: Duration,
    /// Byte caps.
    pub limits: Limits,
    /// Carry out block actions (`agi.on_block = "hangup"`); false leaves them to the dialplan.
    pub act_on_block: bool,
}

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Asterisk sent bytes that are not AGI.
    #[error("protocol: {0}")]
    Codec(#[from] CodecError),
    /// Asterisk did not send the environment or a reply in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// Asterisk closed the connection.
    #[error("peer closed the connection while we waited for {0}")]
    Closed(&'static str),
}

/// What sessions share: the decision engine, the last-caller memory and the store (written
/// only by the `block-last` feature code). Cheap to clone.
#[derive(Clone)]
pub struct AgiContext {
    /// Decisions.
    pub engine: Engine,
    /// Who last called each extension.
    pub last_callers: LastCallers,
    /// Lists store, for `block-last`.
    pub store: Store,
}

/// What an AGI request asks for, from its script path (`agi://host:4573/<path>?...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Screen the call (`check`, and any path not listed here).
    Check,
    /// Remember the caller as the last caller of `ext=` (run just before dialling an extension).
    Remember,
    /// Block the last caller of `ext=` (default: the calling extension): the `*32` feature code.
    BlockLast,
}

/// The route of a request: the first path segment of `agi_network_script` (or of
/// `agi_request`), case-insensitive.
pub fn route(env: &AgiEnv) -> Route {
    let script = env
        .get("agi_network_script")
        .or_else(|| {
            env.request()
                .and_then(|r| r.split_once("://"))
                .and_then(|(_, rest)| rest.split_once('/'))
                .map(|(_, path)| path)
        })
        .unwrap_or("");
    let path = script
        .split(['?', ','])
        .next()
        .unwrap_or("")
        .trim_matches('/');
    match path.to_ascii_lowercase().as_str() {
        "remember" => Route::Remember,
        "block-last" | "block_last" | "blocklast" => Route::BlockLast,
        _ => Route::Check,
    }
}

impl SessionError {
    /// The `kind` label of `callguard_connection_errors_total`.
    pub fn metric_kind(&self) -> crate::metrics::ConnErrorKind {
        use crate::metrics::ConnErrorKind;
        match self {
            SessionError::Io(_) => ConnErrorKind::Io,
            SessionError::Codec(_) => ConnErrorKind::Protocol,
            SessionError::Timeout(_) => ConnErrorKind::Timeout,
            SessionError::Closed(_) => ConnErrorKind::Closed,
        }
    }
}

/// Runs one session to its end; never panics on peer input, always closes the socket.
pub async fn run(
    mut stream: TcpStream,
    peer: SocketAddr,
    context: AgiContext,
    settings: SessionSettings,
) {
    let mut conn = Conn {
        buf: Vec::with_capacity(2048),
        settings,
        hung_up: false,
    };
    let _open = crate::metrics::session_started("agi");
    if let Err(e) = conn.session(&mut stream, peer, &context).await {
        crate::metrics::connection_error("agi", e.metric_kind());
        warn!(%peer, error = %e, "agi session ended early");
    }
    // Asterisk acts on the verdict only once the socket closes: close promptly, without waiting
    // for its trailing HANGUP line.
    let _shutdown_result = stream.shutdown().await;
}

struct Conn {
    buf: Vec<u8>,
    settings: SessionSettings,
    /// Asterisk reported the channel hung up (unsolicited `HANGUP`).
    hung_up: bool,
}

impl Conn {
    async fn session(
        &mut self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        context: &AgiContext,
    ) -> Result<(), SessionError> {
        let deadline = Instant::now() + self.settings.read_timeout;
        let (env, received) = loop {
            if let Some((env, used)) = codec::decode_env(&self.buf, &self.settings.limits)? {
                self.buf.drain(..used);
                break (env, Instant::now());
            }
            self.fill(stream, deadline, "the environment block").await?;
        };
        let call = call_from_env(&env, peer);
        match route(&env) {
            Route::Check => {
                let decided = context.engine.decide_when_ready(&call).await;
                // The bookkeeping waits until the verdict is written: the call does not.
                let account = || {
                    context.engine.account(&call, &decided);
                    remember_caller(context, &env, &call, &decided.decision);
                };
                self.carry_out(stream, &decided.decision, received, account)
                    .await
            }
            Route::Remember => {
                let number = context.engine.normalizer().normalize(&call.caller_id);
                let tenant = call.tenant.as_deref().and_then(|t| Tenant::new(t).ok());
                let remembered = match request_param(&env, "ext") {
                    Some(ext) if number != CallerNumber::Anonymous => {
                        context.last_callers.record(
                            tenant.as_ref(),
                            ext,
                            &number,
                            SystemTime::now(),
                        );
                        number.to_string()
                    }
                    _ => String::new(),
                };
                self.set_variables(stream, &[("CALLGUARD_REMEMBERED", remembered)])
                    .await
            }
            Route::BlockLast => {
                let blocked = block_last(context, &env, &call).await;
                self.set_variables(stream, &[("CALLGUARD_BLOCKED", blocked)])
                    .await
            }
        }
    }

    async fn set_variables(
        &mut self,
        stream: &mut TcpStream,
        vars: &[(&str, String)],
    ) -> Result<(), SessionError> {
        let mut out = Vec::with_capacity(128);
        for (name, value) in vars {
            out.clear();
            codec::encode_set_variable(&mut out, name, value);
            if !self.command(stream, &out).await? {
                break;
            }
        }
        Ok(())
    }

    /// Sets the variables and carries out the action; `received` is when the environment
    /// block was complete, the start of the in-server verdict time; `account` runs once the
    /// verdict is written (or its write failed).
    async fn carry_out(
        &mut self,
        stream: &mut TcpStream,
        decision: &Decision,
        received: Instant,
        account: impl FnOnce(),
    ) -> Result<(), SessionError> {
        let mut out = Vec::with_capacity(256);
        let mut account = Some(account);
        // Variables are set even after the caller hung up (allowed on a dead channel), so the
        // `h` extension and CDR/CRM hooks still see the verdict.
        for (name, value) in decision_variables(decision) {
            out.clear();
            codec::encode_set_variable(&mut out, name, &value);
            let written = stream.write_all(&out).await;
            if let Some(account) = account.take() {
                // CALLGUARD_VERDICT is written: the in-server part of the call is over.
                crate::metrics::record_verdict_time("agi", received.elapsed());
                account();
            }
            written?;
            if !self.await_reply(stream, &out).await? {
                return Ok(());
            }
        }
        if let Some(account) = account.take() {
            account();
        }
        if decision.verdict != Verdict::Block || !self.settings.act_on_block {
            return Ok(());
        }
        let Some(action) = &decision.action else {
            return Ok(());
        };
        for line in action_commands(action) {
            if self.hung_up || !self.command(stream, &line).await? {
                break;
            }
        }
        Ok(())
    }

    /// Sends one command and waits for its final reply. Returns false when the session should
    /// stop sending (dead channel).
    async fn command(&mut self, stream: &mut TcpStream, line: &[u8]) -> Result<bool, SessionError> {
        stream.write_all(line).await?;
        self.await_reply(stream, line).await
    }

    /// Waits for the final reply to `line`, already sent; see [`Conn::command`].
    async fn await_reply(
        &mut self,
        stream: &mut TcpStream,
        line: &[u8],
    ) -> Result<bool, SessionError> {
        let deadline = Instant::now() + self.settings.reply_timeout;
        loop {
            match codec::decode_reply(&self.buf, &self.settings.limits)? {
                Some((reply, used)) => {
                    self.buf.drain(..used);
                    match reply {
                        Reply::Success { .. } => return Ok(true),
                        // The reply to the command in flight still follows.
                        Reply::Hangup => self.hung_up = true,
                        Reply::Trying => {}
                        Reply::DeadChannel => return Ok(false),
                        other => {
                            warn!(command = %String::from_utf8_lossy(line).trim_end(), reply = ?other, "agi command refused");
                            return Ok(true);
                        }
                    }
                }
                None => self.fill(stream, deadline, "a command reply").await?,
            }
        }
    }

    async fn fill(
        &mut self,
        stream: &mut TcpStream,
        deadline: Instant,
        what: &'static str,
    ) -> Result<(), SessionError> {
        match timeout_at(deadline, stream.read_buf(&mut self.buf)).await {
            Err(_elapsed) => Err(SessionError::Timeout(what)),
            Ok(Ok(0)) => Err(SessionError::Closed(what)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
        }
    }
}

/// After a screened call: remember its caller as the last caller of the called number and of
/// `ext=` if the request names one.
fn remember_caller(context: &AgiContext, env: &AgiEnv, call: &CallEvent, decision: &Decision) {
    let now = SystemTime::now();
    let tenant = decision.tenant.as_ref();
    if let Some(key) = call
        .called
        .as_deref()
        .and_then(|called| did_key(context.engine.normalizer(), called))
    {
        context
            .last_callers
            .record(tenant, &key, &decision.number, now);
    }
    if let Some(ext) = request_param(env, "ext") {
        context
            .last_callers
            .record(tenant, ext, &decision.number, now);
    }
}

/// The key a called number (DID) is remembered under: its canonical form, so `*32<DID>`
/// finds it whatever format the DID is dialled in. `None` for what is not a number.
fn did_key(normalizer: &crate::number::Normalizer, did: &str) -> Option<String> {
    match normalizer.normalize(did) {
        n @ CallerNumber::E164(_) => Some(n.to_string()),
        n @ CallerNumber::Local(_) => {
            let key = n.to_string();
            Some(key.strip_prefix("local:").unwrap_or(&key).to_owned())
        }
        _ => None,
    }
}

/// The `*32` feature code: blocks the last caller of `ext=` (default: the calling extension)
/// on the request's tenant list (or the global one). Returns the blocked number, or "" when
/// there was none or the store refused (logged).
async fn block_last(context: &AgiContext, env: &AgiEnv, call: &CallEvent) -> String {
    let ext = request_param(env, "ext").unwrap_or(call.caller_id.as_str());
    let tenant = call.tenant.as_deref().and_then(|t| Tenant::new(t).ok());
    let now = SystemTime::now();
    let number = context
        .last_callers
        .last(tenant.as_ref(), ext, now)
        .or_else(|| {
            let key = did_key(context.engine.normalizer(), ext)?;
            context.last_callers.last(tenant.as_ref(), &key, now)
        });
    let Some(number) = number else {
        info!(ext, "block-last: no recent caller to block");
        return String::new();
    };
    let ext = extension_key(ext).map_or_else(String::new, |e| e.to_string());
    let mut entry = Entry::new(ListKind::Block, RulePattern::Exact(number.clone()));
    entry.tenant = tenant;
    entry.reason = format!("blocked from extension {ext} with the feature code");
    entry.added_by = Some(format!("extension {ext}"));
    entry.added_at = Some(now);
    match context.store.put(std::slice::from_ref(&entry)).await {
        Ok(()) => {
            info!(ext, caller = %number, "block-last: caller blocked");
            number.to_string()
        }
        Err(error) => {
            warn!(ext, caller = %number, %error, "block-last: store refused the block");
            String::new()
        }
    }
}

/// The channel variables for a decision, in the order they are set. The first three are always
/// set; the others only when they have a value (each one costs a round trip).
pub fn decision_variables(decision: &Decision) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("CALLGUARD_VERDICT", decision.verdict.as_str().to_owned()),
        ("CALLGUARD_REASON", decision.reason.clone()),
        ("CALLGUARD_NUMBER", decision.number.to_string()),
    ];
    if !decision.rule.is_empty() {
        vars.push(("CALLGUARD_RULE", decision.rule.clone()));
    }
    if let Some(action) = &decision.action {
        vars.push(("CALLGUARD_ACTION", action.to_string()));
    }
    if let Some(tenant) = &decision.tenant {
        vars.push(("CALLGUARD_TENANT", tenant.to_string()));
    }
    vars
}

/// The AGI commands that carry out a block action, each awaiting its own reply.
pub fn action_commands(action: &RuleAction) -> Vec<Vec<u8>> {
    let exec = |app: &str, args: &str| {
        let mut line = Vec::new();
        codec::encode_exec(&mut line, app, args);
        line
    };
    let set = |what, value: &str| {
        let mut line = Vec::new();
        codec::encode_set_location(&mut line, what, value);
        line
    };
    match action {
        RuleAction::Hangup { cause } => vec![exec("Hangup", &cause.to_string())],
        RuleAction::Busy => vec![exec("Busy", SIGNAL_SECONDS)],
        RuleAction::Congestion => vec![exec("Congestion", SIGNAL_SECONDS)],
        // Playback answers the channel itself (as the captures show), then we hang up.
        RuleAction::Playback { sound } => vec![
            exec("Playback", sound),
            exec("Hangup", &CAUSE_NORMAL_CLEARING.to_string()),
        ],
        // The dialplan continues there once the session ends.
        RuleAction::Redirect {
            context,
            exten,
            priority,
        } => vec![
            set(Location::Context, context),
            set(Location::Extension, exten),
            set(Location::Priority, priority),
        ],
        RuleAction::Tag => Vec::new(),
    }
}

/// A `key=value` parameter from the request's query string (`check?tenant=acme&did=...`) or
/// from an `agi_arg_N` written as `key=value`.
fn request_param<'e>(env: &'e AgiEnv, key: &str) -> Option<&'e str> {
    // Asterisk sends the query in both agi_request and agi_network_script; read either.
    let query =
        |value: Option<&'e str>| value.and_then(|r| r.split_once('?')).map_or("", |(_, q)| q);
    let args = env.args();
    query(env.get("agi_network_script"))
        .split('&')
        .chain(query(env.request()).split('&'))
        .chain(args)
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Maps Asterisk's environment to the protocol-neutral call.
pub fn call_from_env(env: &AgiEnv, peer: SocketAddr) -> CallEvent {
    // Asterisk writes the literal `unknown` for an unset name/DNID; treat it as absent.
    let known = |name: &str| {
        env.get(name)
            .filter(|v| !v.is_empty() && *v != "unknown")
            .map(str::to_owned)
    };
    let call = CallEvent {
        protocol: Some(Protocol::Agi),
        caller_id: env.get("agi_callerid").unwrap_or("").to_owned(),
        caller_name: known("agi_calleridname"),
        called: request_param(env, "did")
            .map(str::to_owned)
            .or_else(|| known("agi_dnid"))
            .or_else(|| known("agi_extension")),
        // `?tenant=acme`, an argument `tenant=acme`, or a bare first argument `acme`.
        tenant: request_param(env, "tenant")
            .or_else(|| env.args().first().copied().filter(|a| !a.contains('=')))
            .map(str::to_owned),
        presentation: env
            .get("agi_callingpres")
            .and_then(|v| v.trim().parse().ok())
            .map(Presentation::from_asterisk)
            .unwrap_or_default(),
        call_id: known("agi_uniqueid"),
        peer: Some(peer),
    };
    debug!(?call, "agi call");
    call
}
