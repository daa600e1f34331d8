//! The one shared [`Snapshot`] every decision reads, swapped whole by the store sync.
//! Decisions only `load()`; only the sync task `publish()`es.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::rules::Snapshot;

/// Clone handle to the current snapshot and its readiness.
#[derive(Clone)]
pub struct SnapshotHandle {
    inner: Arc<Inner>,
}

struct Inner {
    current: ArcSwap<Snapshot>,
    // Flips to true after the first successful load; `serve` reports ready then. Every
    // publish sends on it, so it also wakes whoever waits for a particular change.
    ready: watch::Sender<bool>,
}

impl Default for SnapshotHandle {
    fn default() -> Self {
        SnapshotHandle::new()
    }
}

impl SnapshotHandle {
    /// Starts with an empty, not-ready snapshot.
    pub fn new() -> SnapshotHandle {
        SnapshotHandle {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(Snapshot::default()),
                ready: watch::channel(false).0,
            }),
        }
    }

    /// The current snapshot; cheap, lock-free, never waits on the store.
    pub fn load(&self) -> Arc<Snapshot> {
        self.inner.current.load_full()
    }

    /// Replaces the snapshot whole and marks the handle ready.
    pub fn publish(&self, snapshot: Snapshot) {
        self.publish_arc(Arc::new(snapshot));
    }

    /// [`SnapshotHandle::publish`] for a snapshot already behind an `Arc`.
    pub fn publish_arc(&self, snapshot: Arc<Snapshot>) {
        self.inner.current.store(snapshot);
        self.inner.ready.send_replace(true);
    }

    /// True once a snapshot has been loaded from the store.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Waits until the running snapshot satisfies `done` (checked now and after each publish),
    /// for at most `limit`; whether it did.
    pub async fn wait_until(&self, limit: Duration, done: impl Fn(&Snapshot) -> bool) -> bool {
        // Subscribed before the first check, so a publish in between is not missed.
        let mut rx = self.inner.ready.subscribe();
        let watch = async {
            while !done(&self.load()) {
                // The sender lives in `self`: `changed` cannot fail while we hold it.
                if rx.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(limit, watch).await.unwrap_or(false)
    }

    /// Waits until the first snapshot is published.
    pub async fn wait_ready(&self) {
        let mut rx = self.inner.ready.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we hold it.
        let _ready = rx.wait_for(|ready| *ready).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: u64) -> Snapshot {
        Snapshot::compile(Vec::new(), v)
    }

    #[tokio::test]
    async fn wait_until_wakes_on_the_publish_that_satisfies_it_and_gives_up_at_the_limit() {
        let handle = SnapshotHandle::new();
        handle.publish(version(1));
        // Already true: no wait.
        assert!(
            handle
                .wait_until(Duration::ZERO, |s| s.version() == 1)
                .await
        );
        // True after a later publish (an unrelated one first).
        let publisher = handle.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            publisher.publish(version(2));
            tokio::time::sleep(Duration::from_millis(20)).await;
            publisher.publish(version(3));
        });
        let started = std::time::Instant::now();
        assert!(
            handle
                .wait_until(Duration::from_secs(5), |s| s.version() == 3)
                .await
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        task.await.expect("publisher");
        // Never true: false once the limit has passed.
        assert!(
            !handle
                .wait_until(Duration::from_millis(50), |s| s.version() == 9)
                .await
        );
    }
}
