//! The admin HTTP API: JSON over HTTP/1.1 on its own listener (off by default), bearer tokens
//! scoped to a tenant or global. This module owns the connection (timeouts, byte caps, one
//! request per connection); [`request`] parses, [`auth`] checks tokens, [`routes`] answers.
//! Edits go to the store like the CLI's do; the running snapshot picks them up through the
//! normal sync. Nothing here runs on a call's decision path.

pub mod auth;
pub mod page;
pub mod request;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::calllog::Sink;
use crate::engine::Engine;
use crate::http::{HEAD_TIMEOUT, MAX_HEAD, head_end};
use crate::listener::SharedPolicy;
use crate::snapshot::SnapshotHandle;
use crate::store::Store;

use self::auth::Tokens;
use self::request::Body;

/// Time a client has to send its whole body after the head; slower gets 408.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for responses in flight (a store write can take a moment).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

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
    // One deadline for the whole head, not per read: a byte every few seconds must not hold
    // a connection slot for long.
    let head_deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
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
        let n = match tokio::time::timeout_at(head_deadline, stream.read(&mut chunk)).await {
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
    crate::http::send_and_close(&mut stream, &response.encode(), peer).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A server on port 0 over an embedded store in `dir`, with no tokens.
    async fn start(dir: &std::path::Path) -> (SocketAddr, CancellationToken) {
        let normalizer = crate::number::Normalizer::default();
        let store = Store::Local(
            crate::store::LocalStore::open(&dir.join("lists.toml"), normalizer.clone())
                .expect("store"),
        );
        let snapshot = SnapshotHandle::new();
        let engine = Engine::new(snapshot.clone(), normalizer, Default::default());
        let state = ApiState {
            store,
            snapshot,
            engine,
            tokens: Arc::new(ArcSwap::from_pointee(Tokens::default())),
            call_log: None,
            call_log_keep_files: 1,
            max_body_bytes: 1024,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let policy = crate::listener::shared(crate::listener::ListenerPolicy {
            max_connections: 4,
            allow: crate::access::AllowList::loopback(),
        });
        tokio::spawn(serve(listener, state, policy, shutdown.clone()));
        (addr, shutdown)
    }

    async fn answer_to(addr: SocketAddr, bytes: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (addr, shutdown) = start(dir.path()).await;
        let started = tokio::time::Instant::now();
        let r = answer_to(
            addr,
            b"POST /api/rules HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"rule\"",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 408 "), "{r}");
        assert!(r.contains("{\n  \"error\": \"request timeout\"\n}"), "{r}");
        assert!(started.elapsed() >= BODY_TIMEOUT);
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_trickled_in_times_out_as_a_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (addr, shutdown) = start(dir.path()).await;
        let started = tokio::time::Instant::now();
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // A byte a second: each read is quick, the head never completes.
        for b in b"GET /api/rules HTTP/1.1\r\nHost: x" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            if started.elapsed() > HEAD_TIMEOUT + Duration::from_secs(1) {
                break;
            }
        }
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        let r = String::from_utf8_lossy(&out);
        assert!(r.starts_with("HTTP/1.1 408 "), "{r}");
        assert!(started.elapsed() <= HEAD_TIMEOUT + Duration::from_secs(2));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn no_tokens_configured_means_every_request_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (addr, shutdown) = start(dir.path()).await;
        let r = answer_to(
            addr,
            b"GET /api/rules HTTP/1.1\r\nAuthorization: Bearer anything\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 401 "), "{r}");
        let big = format!(
            "GET /api/rules HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert!(
            answer_to(addr, big.as_bytes())
                .await
                .starts_with("HTTP/1.1 431 ")
        );
        shutdown.cancel();
    }
}
