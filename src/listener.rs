//! Generic TCP accept loop: connection cap, per-connection tasks, graceful drain on shutdown.
//! Knows no protocol.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Accepts until `shutdown`, running `handler` for each connection with at most
/// `max_connections` at once (the rest wait in the kernel's accept queue), then waits up to
/// `grace` for running sessions to finish.
pub async fn serve<H, F>(
    listener: TcpListener,
    max_connections: usize,
    grace: Duration,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections));
    let tracker = TaskTracker::new();
    loop {
        // Take the permit before accepting, so a full server stops pulling connections in.
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_closed) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, %peer, "set_nodelay failed");
        }
        let session = handler(stream, peer);
        tracker.spawn(async move {
            session.await;
            drop(permit);
        });
    }
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            remaining = tracker.len(),
            "shutdown grace period over; dropping sessions"
        );
    }
}
