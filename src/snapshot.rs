//! The one shared [`Snapshot`] every decision reads, swapped whole by the store sync.
//! Decisions only `load()`; only the sync task `publish()`es.

use std::sync::Arc;

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
    // Flips to true after the first successful load; `serve` reports ready then.
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

    /// Waits until the first snapshot is published.
    pub async fn wait_ready(&self) {
        let mut rx = self.inner.ready.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we hold it.
        let _ready = rx.wait_for(|ready| *ready).await;
    }
}
