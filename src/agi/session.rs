//! One FastAGI session: read the environment, decide, set the variables, maybe hang up, close.
//! I/O glue only; bytes go through [`super::codec`], the decision through [`Engine`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, warn};

use super::codec::{self, AgiEnv, CodecError, Limits, Reply};
use crate::call::{Action, CallEvent, Decision, Presentation, Protocol};
use crate::engine::Engine;

/// Session timing and size settings.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// Longest wait for the whole environment block.
    pub read_timeout: Duration,
    /// Longest wait for the reply to one command.
    pub reply_timeout: Duration,
    /// Byte caps.
    pub limits: Limits,
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

/// Runs one session to its end; never panics on peer input, always closes the socket.
pub async fn run(
    mut stream: TcpStream,
    peer: SocketAddr,
    engine: Engine,
    settings: SessionSettings,
) {
    let mut conn = Conn {
        buf: Vec::with_capacity(2048),
        settings,
        hung_up: false,
    };
    if let Err(e) = conn.session(&mut stream, peer, &engine).await {
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
        engine: &Engine,
    ) -> Result<(), SessionError> {
        let deadline = Instant::now() + self.settings.read_timeout;
        let env = loop {
            if let Some((env, used)) = codec::decode_env(&self.buf, &self.settings.limits)? {
                self.buf.drain(..used);
                break env;
            }
            self.fill(stream, deadline, "the environment block").await?;
        };
        let call = call_from_env(&env, peer);
        let decision = engine.decide(&call);
        self.carry_out(stream, &decision).await
    }

    async fn carry_out(
        &mut self,
        stream: &mut TcpStream,
        decision: &Decision,
    ) -> Result<(), SessionError> {
        let number = decision.number.to_string();
        let vars = [
            ("CALLGUARD_VERDICT", decision.verdict.as_str()),
            ("CALLGUARD_REASON", decision.reason.as_str()),
            ("CALLGUARD_NUMBER", number.as_str()),
        ];
        let mut out = Vec::with_capacity(256);
        // Variables are set even after the caller hung up (allowed on a dead channel), so the
        // `h` extension and CDR/CRM hooks still see the verdict.
        for (name, value) in vars {
            out.clear();
            codec::encode_set_variable(&mut out, name, value);
            if !self.command(stream, &out).await? {
                return Ok(());
            }
        }
        if let Action::Hangup { cause } = decision.action
            && !self.hung_up
        {
            out.clear();
            codec::encode_exec(&mut out, "Hangup", &cause.to_string());
            self.command(stream, &out).await?;
        }
        Ok(())
    }

    /// Sends one command and waits for its final reply. Returns false when the session should
    /// stop sending (dead channel).
    async fn command(&mut self, stream: &mut TcpStream, line: &[u8]) -> Result<bool, SessionError> {
        stream.write_all(line).await?;
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
        called: known("agi_dnid").or_else(|| known("agi_extension")),
        tenant: None,
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
