//! Generic TCP accept loop: source-address allow list, connection cap with clean refusal,
//! per-connection tasks, graceful drain on shutdown. Knows no protocol.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::access::AllowList;

/// Who may connect and how many at once; swapped whole on a config reload.
#[derive(Debug, Clone)]
pub struct ListenerPolicy {
    /// Most sessions at once; one more is refused (closed at once).
    pub max_connections: usize,
    /// Source addresses allowed to connect.
    pub allow: AllowList,
}

/// A listener's policy, shared with whoever reloads the config.
pub type SharedPolicy = Arc<ArcSwap<ListenerPolicy>>;

/// Wraps a policy for [`serve`].
pub fn shared(policy: ListenerPolicy) -> SharedPolicy {
    Arc::new(ArcSwap::from_pointee(policy))
}

/// Accepts until `shutdown`, running `handler` for each connection the policy admits, then
/// waits up to `grace` for running sessions to finish. `name` labels logs and metrics.
///
/// A refused connection is closed at once, before any byte is read: both PBXs treat a closed
/// socket as a failed screening and go on with the call (Asterisk sets `AGISTATUS=FAILURE`,
/// FreeSWITCH's `socket` app returns), which beats leaving them in the accept queue: Asterisk
/// has no timeout of its own and would hold the caller in dead air.
pub async fn serve<H, F>(
    listener: TcpListener,
    name: &'static str,
    policy: SharedPolicy,
    grace: Duration,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let active = Arc::new(AtomicUsize::new(0));
    let refusal_log = RateLimitedLog::default();
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let current = policy.load();
        if !current.allow.permits(peer.ip()) {
            crate::metrics::connection_refused(name, crate::metrics::RefusalReason::NotAllowed);
            refusal_log.warn(|suppressed| {
                warn!(
                    listener = name,
                    %peer,
                    allowed = %current.allow,
                    suppressed,
                    "connection refused: source address not in {name}.allow_from"
                );
            });
            drop(stream);
            continue;
        }
        // Count first, then compare: concurrent session ends can only make room.
        let open = active.fetch_add(1, Ordering::AcqRel);
        if open >= current.max_connections {
            active.fetch_sub(1, Ordering::AcqRel);
            crate::metrics::connection_refused(name, crate::metrics::RefusalReason::MaxConnections);
            refusal_log.warn(|suppressed| {
                warn!(
                    listener = name,
                    %peer,
                    max = current.max_connections,
                    suppressed,
                    "connection refused: {name}.max_connections sessions already open"
                );
            });
            drop(stream);
            continue;
        }
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, %peer, "set_nodelay failed");
        }
        let session = handler(stream, peer);
        let slot = ActiveSlot(active.clone());
        tracker.spawn(async move {
            session.await;
            drop(slot);
        });
    }
    // Close the socket now, not when draining ends: new calls get "connection refused" at
    // once (Asterisk and FreeSWITCH then go on without screening, or fail over to the next
    // host in the dialplan) instead of waiting in a backlog nobody reads.
    drop(listener);
    tracker.close();
    if !tracker.is_empty() {
        info!(
            listener = name,
            sessions = tracker.len(),
            "draining sessions in flight"
        );
    }
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            listener = name,
            remaining = tracker.len(),
            "shutdown grace period over; dropping sessions"
        );
    }
}

/// One open session in the count; released on every exit path, panics included.
struct ActiveSlot(Arc<AtomicUsize>);

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// At most one warning per second: a scan or a flood of refusals must not flood the log.
#[derive(Default)]
struct RateLimitedLog {
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    fn warn(&self, log: impl FnOnce(u64)) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.last_second.swap(now, Ordering::Relaxed) == now {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        } else {
            log(self.suppressed.swap(0, Ordering::Relaxed));
        }
    }
}
