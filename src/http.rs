//! The admin HTTP listener: `GET /metrics`, `/healthz`, `/readyz`. A deliberately tiny
//! HTTP/1.1 subset (one request per connection, no body, bounded head, read timeout) on its own
//! socket; owns no metric names (see `crate::metrics`) and never touches the decision path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::listener::SharedPolicy;

/// Longest request head (request line and headers) read; longer gets 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head; slower gets 408.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once: scrapers and probes are few, and more wait in the kernel.
pub const MAX_CONNECTIONS: usize = 16;
/// How often the recorder's upkeep runs, so histogram samples stay bounded between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How long shutdown waits for responses in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// After responding: how long, and how many bytes, to read and drop before closing.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// `Content-Type` of `/metrics`: the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// What `/readyz` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Serving decisions from a loaded snapshot: 200, with these detail lines (store state,
    /// snapshot age) after `ready`.
    Ready(String),
    /// Not yet (or no longer): 503 with this reason.
    NotReady(String),
}

/// Everything the handlers read. Cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    /// Renders `/metrics`.
    pub handle: PrometheusHandle,
    /// Answers `/readyz`; called once per probe, so it must be cheap and must not block.
    pub ready: Arc<dyn Fn() -> Readiness + Send + Sync>,
}

impl HttpState {
    /// State rendering `handle`, with `ready` deciding `/readyz`.
    pub fn new(
        handle: PrometheusHandle,
        ready: impl Fn() -> Readiness + Send + Sync + 'static,
    ) -> HttpState {
        HttpState {
            handle,
            ready: Arc::new(ready),
        }
    }
}

/// Serves until `shutdown`, then lets responses in flight finish (briefly). Also runs the
/// recorder's upkeep every [`UPKEEP_INTERVAL`]. Give it its own token, cancelled after the PBX
/// listeners and the store sync have stopped, so a scrape during shutdown still answers.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    policy: SharedPolicy,
    shutdown: CancellationToken,
) {
    let upkeep_handle = state.handle.clone();
    let upkeep_stop = shutdown.clone();
    let upkeep = async move {
        let mut tick = interval(UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = upkeep_stop.cancelled() => return,
                _ = tick.tick() => upkeep_handle.run_upkeep(),
            }
        }
    };
    let accept = crate::listener::serve(
        listener,
        "metrics",
        policy,
        SHUTDOWN_GRACE,
        shutdown,
        move |stream, peer| handle_connection(stream, peer, state.clone()),
    );
    tokio::join!(accept, upkeep);
}

/// One connection: read one request head, answer it, close.
async fn handle_connection(mut stream: TcpStream, peer: SocketAddr, state: HttpState) {
    let response = match timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Err(_elapsed) => Some(Response::text(408, "request timeout\n")),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "http read failed");
            None
        }
        Ok(Ok(Head::Closed)) => None,
        Ok(Ok(Head::TooLarge)) => Some(Response::text(431, "request head too large\n")),
        Ok(Ok(Head::Complete(bytes))) => Some(match parse_request(&bytes) {
            Ok(request) => respond(&request, &state),
            Err(e) => {
                debug!(%peer, error = %e, "bad http request");
                Response::text(400, "bad request\n")
            }
        }),
    };
    let Some(response) = response else {
        return;
    };
    send_and_close(&mut stream, &response.encode(), peer).await;
}

/// Writes a whole response, closes the write side, then reads and drops what the client still
/// sends, briefly and boundedly: closing with unread request bytes (a body, the rest of an
/// oversized head) makes the kernel send RST, which can destroy the response before the client
/// reads it. Shared by the metrics listener and the admin API.
pub async fn send_and_close(stream: &mut TcpStream, response: &[u8], peer: SocketAddr) {
    let written = timeout(WRITE_TIMEOUT, async {
        stream.write_all(response).await?;
        stream.shutdown().await
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "http write failed");
            return;
        }
        Err(_elapsed) => {
            debug!(%peer, "http client did not take the response in time");
            return;
        }
    }
    let mut sink = [0u8; 4096];
    let mut left = LINGER_BYTES;
    let drained = timeout(LINGER, async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    if drained.is_err() {
        debug!(%peer, "http client kept the connection open after the response");
    }
}

/// Result of reading a request head off a socket.
enum Head {
    /// Everything up to and including the blank line.
    Complete(Vec<u8>),
    /// [`MAX_HEAD`] bytes without a blank line.
    TooLarge,
    /// The client closed before finishing the head.
    Closed,
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// Length of the head (through the blank line) when `buf` holds a whole one within
/// [`MAX_HEAD`]. Bare `\n` line ends are accepted, as RFC 9112 allows.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    window.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        let rest = &window[i + 1..];
        if rest.starts_with(b"\r\n") {
            Some(i + 3)
        } else if rest.starts_with(b"\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Request method: the two served, or another valid one (405).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: as GET, without the body.
    Head,
    /// Any other token (`POST`, `PUT`...).
    Other(String),
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path of the target, without the query string.
    pub path: String,
}

/// Why a request head is not HTTP/1.x (the admin API's parser reads both listeners' heads).
pub use crate::api::request::RequestError;

/// Parses a complete head (as cut by [`head_end`]) with the admin API's parser, keeping what
/// this listener serves by: method and path. Header values are ignored: nothing served here
/// depends on them, and every response closes the connection.
pub fn parse_request(head: &[u8]) -> Result<Request, RequestError> {
    let head = crate::api::request::parse_head(head)?;
    let method = match head.method.as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other(head.method),
    };
    Ok(Request {
        method,
        path: head.path,
    })
}

/// A response ready to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra header lines (without CRLF), e.g. `Allow: GET, HEAD`.
    pub extra: Vec<&'static str>,
    /// Body (sent unless `head_only`).
    pub body: String,
    /// Answer to a HEAD request: headers as for GET, no body.
    pub head_only: bool,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: TEXT,
            extra: Vec::new(),
            body: body.into(),
            head_only: false,
        }
    }

    /// The bytes on the wire; `head_only` leaves out the body but keeps its `Content-Length`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
             Cache-Control: no-store\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len()
        );
        for line in &self.extra {
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Answers one parsed request.
pub fn respond(request: &Request, state: &HttpState) -> Response {
    let head_only = match request.method {
        Method::Get => false,
        Method::Head => true,
        Method::Other(_) => {
            let mut r = Response::text(405, "method not allowed\n");
            r.extra.push("Allow: GET, HEAD");
            return r;
        }
    };
    let mut response = match request.path.as_str() {
        "/metrics" => {
            crate::metrics::refresh(SystemTime::now());
            Response {
                content_type: METRICS_CONTENT_TYPE,
                ..Response::text(200, state.handle.render())
            }
        }
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => match (state.ready)() {
            Readiness::Ready(detail) => Response::text(200, format!("ready\n{detail}")),
            Readiness::NotReady(reason) => Response::text(503, format!("not ready: {reason}\n")),
        },
        _ => Response::text(404, "not found\n"),
    };
    response.head_only = head_only;
    response
}

/// Why `callguard probe` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// Not an `http://host:port/path` URL.
    #[error("{0:?} is not an http://HOST:PORT/PATH URL")]
    BadUrl(String),
    /// Could not connect, send or read.
    #[error("{url}: {source}")]
    Io {
        /// The URL probed.
        url: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No full answer in time.
    #[error("{0}: no answer in time")]
    Timeout(String),
    /// Answered, but not 200.
    #[error("{url}: {status}")]
    Status {
        /// The URL probed.
        url: String,
        /// The status line.
        status: String,
    },
}

/// GETs `url` (`http://HOST:PORT/PATH`) within `limit`: the body on a 200, else why not. The
/// container health check (`callguard probe`): distroless images have no curl.
pub async fn probe(url: &str, limit: Duration) -> Result<String, ProbeError> {
    let rest = match url.strip_prefix("http://") {
        Some(rest) => rest,
        None if !url.contains("://") => url,
        None => return Err(ProbeError::BadUrl(url.to_owned())),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || !authority.contains(':') || path.contains(char::is_whitespace) {
        return Err(ProbeError::BadUrl(url.to_owned()));
    }
    let io = |source| ProbeError::Io {
        url: url.to_owned(),
        source,
    };
    let work = async {
        let mut stream = TcpStream::connect(authority).await.map_err(io)?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_PROBE_RESPONSE)
            .read_to_end(&mut raw)
            .await
            .map_err(io)?;
        Ok(raw)
    };
    let raw = timeout(limit, work)
        .await
        .map_err(|_| ProbeError::Timeout(url.to_owned()))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").to_owned();
    if status.split(' ').nth(1) == Some("200") {
        Ok(body.to_owned())
    } else {
        Err(ProbeError::Status {
            url: url.to_owned(),
            status,
        })
    }
}

/// Most bytes `probe` reads of an answer (a /metrics page is a few hundred KiB at most).
const MAX_PROBE_RESPONSE: u64 = 4 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::AsyncReadExt;

    use crate::metrics::{build_recorder, record_call};

    struct TestServer {
        addr: SocketAddr,
        ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl TestServer {
        /// A server on port 0 whose recorder holds one decided call.
        async fn start() -> TestServer {
            let recorder = build_recorder().expect("recorder");
            ::metrics::with_local_recorder(&recorder, || {
                crate::metrics::describe();
                record_call("agi", "block", "exact", None, Duration::from_micros(3));
            });
            let ready = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&ready);
            let state = HttpState::new(recorder.handle(), move || {
                if flag.load(Ordering::Relaxed) {
                    Readiness::Ready(String::new())
                } else {
                    Readiness::NotReady("no snapshot loaded yet".to_owned())
                }
            });
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let shutdown = CancellationToken::new();
            let policy = crate::listener::shared(crate::listener::ListenerPolicy {
                max_connections: MAX_CONNECTIONS,
                allow: crate::access::AllowList::loopback(),
            });
            let task = tokio::spawn(serve(listener, state, policy, shutdown.clone()));
            TestServer {
                addr,
                ready,
                shutdown,
                task,
            }
        }

        /// Sends `bytes`, returns everything sent back before the server closed.
        async fn exchange(&self, bytes: &[u8]) -> String {
            let mut s = TcpStream::connect(self.addr).await.expect("connect");
            s.write_all(bytes).await.expect("write");
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.expect("read");
            String::from_utf8(out).expect("utf8 response")
        }

        async fn get(&self, path: &str) -> String {
            self.exchange(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.task.await.expect("server task");
        }
    }

    fn status(response: &str) -> &str {
        response.split(' ').nth(1).unwrap_or("")
    }

    fn body(response: &str) -> &str {
        response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let server = TestServer::start().await;

        let metrics = server.get("/metrics").await;
        assert_eq!(status(&metrics), "200", "{metrics}");
        assert!(metrics.contains(&format!("Content-Type: {METRICS_CONTENT_TYPE}\r\n")));
        assert!(metrics.contains("Connection: close\r\n"));
        assert!(
            body(&metrics).contains(
                r#"callguard_calls_total{verdict="block",reason_kind="exact",tenant="none",protocol="agi"} 1"#
            ),
            "{metrics}"
        );
        let length: usize = metrics
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|n| n.trim().parse().ok())
            .expect("content length");
        assert_eq!(length, body(&metrics).len());

        let health = server.get("/healthz").await;
        assert_eq!((status(&health), body(&health)), ("200", "ok\n"));

        let not_ready = server.get("/readyz").await;
        assert_eq!(status(&not_ready), "503");
        assert_eq!(body(&not_ready), "not ready: no snapshot loaded yet\n");
        server.ready.store(true, Ordering::Relaxed);
        let ready = server.get("/readyz").await;
        assert_eq!((status(&ready), body(&ready)), ("200", "ready\n"));

        // A query string does not change the path.
        assert_eq!(status(&server.get("/healthz?x=1").await), "200");
        server.stop().await;
    }

    #[tokio::test]
    async fn head_gets_headers_only() {
        let server = TestServer::start().await;
        let r = server.exchange(b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&r), "200");
        assert!(r.contains("Content-Length: 3\r\n"), "{r}");
        assert_eq!(body(&r), "");
        server.stop().await;
    }

    #[tokio::test]
    async fn unknown_paths_methods_and_garbage() {
        let server = TestServer::start().await;
        assert_eq!(status(&server.get("/").await), "404");
        assert_eq!(status(&server.get("/metricsx").await), "404");

        let post = server
            .exchange(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .await;
        assert_eq!(status(&post), "405");
        assert!(post.contains("Allow: GET, HEAD\r\n"));

        for garbage in [
            &b"hello\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nbad name: x\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
        ] {
            let r = server.exchange(garbage).await;
            assert_eq!(
                status(&r),
                "400",
                "{:?} -> {r}",
                String::from_utf8_lossy(garbage)
            );
        }
        // Bare LF line ends are HTTP too.
        assert_eq!(
            status(&server.exchange(b"GET /healthz HTTP/1.0\nHost: x\n\n").await),
            "200"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn oversized_head_is_refused() {
        let server = TestServer::start().await;
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while big.len() <= MAX_HEAD {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        big.extend_from_slice(b"\r\n");
        let r = server.exchange(&big).await;
        assert_eq!(status(&r), "431", "{r}");
        server.stop().await;
    }

    #[tokio::test]
    async fn client_that_closes_early_gets_nothing() {
        let server = TestServer::start().await;
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        s.write_all(b"GET /metr").await.expect("write");
        s.shutdown().await.expect("half close");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        assert!(out.is_empty());
        server.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn slow_client_times_out() {
        let server = TestServer::start().await;
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .expect("write");
        let started = tokio::time::Instant::now();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        assert_eq!(status(&String::from_utf8_lossy(&out)), "408");
        assert!(started.elapsed() >= HEAD_TIMEOUT);
        server.stop().await;
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn parse_request_keeps_path_and_method() {
        let r = parse_request(b"GET /metrics?name[]=x HTTP/1.1\r\nHost: a\r\n\r\n").expect("ok");
        assert_eq!((r.method, r.path.as_str()), (Method::Get, "/metrics"));
        let r = parse_request(b"DELETE /x HTTP/1.0\r\n\r\n").expect("ok");
        assert_eq!(r.method, Method::Other("DELETE".into()));
        assert_eq!(
            parse_request(b"G\xc3\xa9T / HTTP/1.1\r\n\r\n"),
            Err(RequestError::RequestLine)
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\n\xff\r\n\r\n"),
            Err(RequestError::NotText)
        );
    }

    #[test]
    fn respond_is_a_function_of_request_and_state() {
        let recorder = build_recorder().expect("recorder");
        let state = HttpState::new(recorder.handle(), || Readiness::Ready(String::new()));
        let r = respond(
            &Request {
                method: Method::Get,
                path: "/metrics".into(),
            },
            &state,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, METRICS_CONTENT_TYPE);
        let head = Response {
            head_only: true,
            ..Response::text(200, "ok\n")
        };
        assert!(head.encode().ends_with(
            b"Content-Length: 3\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n"
        ));
    }
}
