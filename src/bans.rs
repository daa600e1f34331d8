//! Automatic bans: what the flood detectors report on the decision path goes through a
//! bounded queue to this writer, which stores each ban as an ordinary expiring block rule
//! (`added_by = "detector"`), so every callguard node enforces it through the store sync.

use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::flood::{AttackEvent, Ban, Detections, SharedDetector, TargetKind};
use crate::metrics;
use crate::number::Normalizer;
use crate::rules::{Entry, ListKind, RulePattern};
use crate::snapshot::SnapshotHandle;
use crate::store::Store;

/// Bans waiting to be written; when full, new ones are dropped (counted), never blocking a call.
const QUEUE: usize = 1024;
/// Who a detector ban is `added_by`.
pub const DETECTOR: &str = "detector";

/// What the engine needs to feed the detectors and hand bans over.
#[derive(Clone)]
pub struct FloodHook {
    /// The detectors.
    pub detector: SharedDetector,
    tx: mpsc::Sender<Ban>,
    /// DIDs and tenants under attack now, for the gauge (starts and ends always pair up).
    attacked: Arc<[AtomicUsize; 2]>,
}

impl FloodHook {
    /// Hands bans to the writer and counts what fired; never waits.
    pub fn report(&self, detections: Detections) {
        for ban in detections.bans {
            metrics::flood_detected(ban.detector.as_str());
            if self.tx.try_send(ban).is_err() {
                metrics::ban_request_dropped();
            }
        }
        for event in detections.attacks {
            let (kind, started) = match &event {
                AttackEvent::Started { target, rate } => {
                    metrics::flood_detected("target");
                    warn!(target = %target, rate, "flood: target under attack");
                    (target.kind(), true)
                }
                AttackEvent::Ended { target, .. } => {
                    info!(target = %target, "flood: attack over");
                    (target.kind(), false)
                }
            };
            let slot = match kind {
                TargetKind::Did => 0,
                TargetKind::Tenant => 1,
            };
            let n = if started {
                self.attacked[slot].fetch_add(1, Ordering::Relaxed) + 1
            } else {
                let before = self.attacked[slot]
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_sub(1))
                    })
                    .unwrap_or(0);
                before.saturating_sub(1)
            };
            metrics::set_targets_under_attack(kind.as_str(), n);
        }
    }
}

/// Starts the ban writer and the detectors' housekeeping; returns the engine's hook.
pub fn start(
    detector: SharedDetector,
    store: Store,
    normalizer: Normalizer,
    snapshot: SnapshotHandle,
    shutdown: CancellationToken,
) -> FloodHook {
    let (tx, rx) = mpsc::channel(QUEUE);
    let hook = FloodHook {
        detector,
        tx,
        attacked: Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]),
    };
    tokio::spawn(writer(rx, store, normalizer, snapshot, shutdown.clone()));
    let housekeeping = hook.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let detections = housekeeping.detector.expire(Instant::now());
                    housekeeping.report(detections);
                }
            }
        }
    });
    hook
}

async fn writer(
    mut rx: mpsc::Receiver<Ban>,
    store: Store,
    normalizer: Normalizer,
    snapshot: SnapshotHandle,
    shutdown: CancellationToken,
) {
    loop {
        let ban = tokio::select! {
            () = shutdown.cancelled() => return,
            ban = rx.recv() => match ban {
                Some(ban) => ban,
                None => return,
            },
        };
        let text = ban.rule.rule_text();
        let pattern = match RulePattern::parse(&text, &normalizer) {
            Ok(p) => p,
            Err(error) => {
                warn!(rule = %text, %error, "flood: ban rule does not parse; skipped");
                continue;
            }
        };
        // Never replace a rule someone wrote (a permanent block, an allow): a ban is only for
        // callers no rule speaks about yet.
        if snapshot
            .load()
            .entries()
            .any(|e| e.tenant.is_none() && e.pattern == pattern)
        {
            continue;
        }
        let now = SystemTime::now();
        let mut entry = Entry::new(ListKind::Block, pattern);
        entry.reason = ban.reason.clone();
        entry.added_by = Some(DETECTOR.to_owned());
        entry.added_at = Some(now);
        entry.expires_at = Some(now + ban.duration);
        match store.put(std::slice::from_ref(&entry)).await {
            Ok(()) => warn!(
                rule = %entry.pattern,
                detector = ban.detector.as_str(),
                ban = ?ban.duration,
                reason = %ban.reason,
                "flood: banned"
            ),
            Err(error) => warn!(rule = %entry.pattern, %error, "flood: ban not stored"),
        }
    }
}
