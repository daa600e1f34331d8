//! The admin HTTP API: JSON over HTTP/1.1 on its own listener (off by default), bearer tokens
//! scoped to a tenant or global. This module owns the connection (timeouts, byte caps, one
//! request per connection); [`request`] parses, [`auth`] checks tokens, [`routes`] answers.
//! Edits go to the store like the CLI's do; the running snapshot picks them up through the
//! normal sync. Nothing here runs on a call's decision path.

pub mod auth;
pub mod request;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::calllog::Sink;
use crate::engine::Engine;
use crate::http::{HEAD_TIMEOUT, MAX_HEAD, WRITE_TIMEOUT, head_end};
use crate::listener::SharedPolicy;
use crate::snapshot::SnapshotHandle;
use crate::store::Store;

use self::auth::Tokens;
use self::request::Body;

/// Time a client has to send its whole body after the head; slower gets 408.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for responses in flight (a store write can take a moment).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// After responding: how long, and how many bytes, to read and drop before closing.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Tokens shared with whoever reloads the config (SIGHUP adds and revokes tokens).
pub type SharedTokens = Arc<ArcSwap<Tokens>>;

/// Everything the handlers read. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// The lists store, for edits.
    pub store: Store,
    /// The running snapshot, for listings, checks and bans.
    pub snapshot: SnapshotHandle,
    /// The engine: normalizer, current decision settings, flood state.
    pub engine: Engine,
    /// Accepted tokens.
    pub tokens: SharedTokens,
    /// Where the call log is read from (`None`: the call log is off).
    pub call_log: Option<Sink>,
    /// Rotated call-log files kept (file sink).
    pub call_log_keep_files: u32,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

/// Serves until `shutdown`, then lets responses in flight finish briefly.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    policy: SharedPolicy,
    shutdown: CancellationToken,
) {
    crate::listener::serve(
        listener,
        "api",
        policy,
        SHUTDOWN_GRACE,
        shutdown,
        move |stream, peer| handle_connection(stream, peer, state.clone()),
    )
    .await;
}

/// What reading one request produced.
enum Read {
    Request(request::Head, Vec<u8>),
    Answer(routes::Response),
    Closed,
}

async fn read_request(stream: &mut TcpStream, max_body: usize) -> std::io::Result<Read> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_len = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Read::Answer(routes::Response::error(
                431,
                "request head too large",
            )));
        }
        let n = match timeout(HEAD_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(read) => read?,
            Err(_elapsed) => {
                return Ok(Read::Answer(routes::Response::error(
                    408,
                    "request timeout",
                )));
            }
        };
        if n == 0 {
            return Ok(Read::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = match request::parse_head(&buf[..head_len]) {
        Ok(head) => head,
        Err(e) => return Ok(Read::Answer(routes::Response::error(400, &e.to_string()))),
    };
    let length = match head.body() {
        Ok(Body::None) => 0,
        Ok(Body::Length(n)) if n > max_body => {
            return Ok(Read::Answer(routes::Response::error(
                413,
                &format!("request body over {max_body} bytes (api.max_body_bytes)"),
            )));
        }
        Ok(Body::Length(n)) => n,
        Ok(Body::Chunked) => {
            return Ok(Read::Answer(routes::Response::error(
                411,
                "send the body with Content-Length, not Transfer-Encoding",
            )));
        }
        Err(e) => return Ok(Read::Answer(routes::Response::error(400, &e.to_string()))),
    };
    let mut body = buf.split_off(head_len);
    let filled = timeout(BODY_TIMEOUT, async {
        while body.len() < length {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Ok(true)
    })
    .await;
    match filled {
        Err(_elapsed) => Ok(Read::Answer(routes::Response::error(
            408,
            "request timeout",
        ))),
        Ok(Err(e)) => Err(e),
        Ok(Ok(false)) => Ok(Read::Closed),
        Ok(Ok(true)) => {
            // Bytes past Content-Length would be a second request: not served, dropped.
            body.truncate(length);
            Ok(Read::Request(head, body))
        }
    }
}

/// One connection: read one request, answer it, close.
async fn handle_connection(mut stream: TcpStream, peer: SocketAddr, state: ApiState) {
    let response = match read_request(&mut stream, state.max_body_bytes).await {
        Ok(Read::Request(head, body)) => routes::respond(&state, &head, &body, peer).await,
        Ok(Read::Answer(response)) => response,
        Ok(Read::Closed) => return,
        Err(e) => {
            debug!(%peer, error = %e, "api read failed");
            return;
        }
    };
    let bytes = response.encode();
    let written = timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "api write failed");
            return;
        }
        Err(_elapsed) => {
            debug!(%peer, "api client did not take the response in time");
            return;
        }
    }
    // Unread request bytes at close make the kernel send RST, which can destroy the response
    // before the client reads it (a refused huge body): drain briefly and boundedly.
    let mut sink = [0u8; 4096];
    let mut left = LINGER_BYTES;
    let _drained = timeout(LINGER, async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}
