//! Flood glue with I/O: what the detectors report on the decision path goes through a bounded
//! queue to a writer that stores each ban as an ordinary expiring block rule
//! (`added_by = "detector"`), so every callguard node enforces it through the store sync; and,
//! with Redis, the counting itself is shared: each node publishes its per-key call counts in
//! batches (channel `<prefix>:flood`) and merges the other nodes' counts into its detectors.

use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use tracing::debug;

use crate::flood::{
    AttackEvent, Ban, Detections, FloodKey, NumberRange, Observed, SharedDetector, TargetKey,
};
use crate::metrics;
use crate::number::Normalizer;
use crate::number::{CallerNumber, E164};
use crate::rules::Tenant;
use crate::rules::{Entry, ListKind, RulePattern};
use crate::snapshot::SnapshotHandle;
use crate::store::RedisStore;
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
    /// With Redis: counting keys of each call, batched to the other nodes.
    share: Option<Share>,
    /// DIDs and tenants under attack now (starts and ends always pair up), for the gauge and
    /// the admin API. Locked only when an attack starts or ends and when the API reads it.
    attacked: Arc<Mutex<HashMap<TargetKey, Attack>>>,
}

/// A target under attack now.
#[derive(Debug, Clone, PartialEq)]
pub struct Attack {
    /// The DID or tenant.
    pub target: TargetKey,
    /// When the attack was detected.
    pub since: SystemTime,
    /// Calls per second over the detector's window when it was detected.
    pub rate: f64,
}

/// Local counts on their way to the other nodes.
#[derive(Clone)]
struct Share {
    tx: mpsc::Sender<FloodKey>,
    range_digits: Arc<[u8]>,
}

/// The counting keys one call adds to, as [`crate::flood::FloodDetector::merge_remote`] takes
/// them on the other nodes (fan-out is not shared).
pub fn keys_of(observed: &Observed<'_>, range_digits: &[u8]) -> Vec<FloodKey> {
    let mut keys = Vec::with_capacity(2 + range_digits.len());
    if let CallerNumber::E164(e) = observed.number {
        keys.push(FloodKey::Caller(*e));
        keys.extend(
            range_digits
                .iter()
                .filter_map(|&k| NumberRange::of(*e, k))
                .map(FloodKey::Range),
        );
    }
    if let Some(did) = observed.did {
        keys.push(FloodKey::Target(TargetKey::Did(did.clone())));
    }
    if let Some(tenant) = observed.tenant {
        keys.push(FloodKey::Target(TargetKey::Tenant(tenant.clone())));
    }
    keys
}

/// Reads a key as [`FloodKey`]'s `Display` writes it (`caller:+7...`, `range:+7...XX`,
/// `did:...`, `tenant:...`); `None` for anything else.
pub fn parse_key(text: &str, normalizer: &Normalizer) -> Option<FloodKey> {
    let (kind, value) = text.split_once(':')?;
    match kind {
        "caller" => E164::from_digits(value.strip_prefix('+')?).map(FloodKey::Caller),
        "range" => {
            let body = value.strip_prefix('+')?;
            let fixed = body.trim_end_matches('X');
            let k = u8::try_from(body.len() - fixed.len()).ok()?;
            NumberRange::from_parts(fixed.parse().ok()?, k).map(FloodKey::Range)
        }
        "did" => match normalizer.normalize(value) {
            n @ (CallerNumber::E164(_) | CallerNumber::Local(_)) => {
                Some(FloodKey::Target(TargetKey::Did(n)))
            }
            _ => None,
        },
        "tenant" => Tenant::new(value)
            .ok()
            .map(|t| FloodKey::Target(TargetKey::Tenant(t))),
        _ => None,
    }
}

impl FloodHook {
    /// Hands this call's counting keys to the sharer (with Redis); never waits.
    pub fn share(&self, observed: &Observed<'_>) {
        if let Some(share) = &self.share {
            for key in keys_of(observed, &share.range_digits) {
                // A full queue loses counts for the other nodes, never delays a call.
                let _lost = share.tx.try_send(key);
            }
        }
    }

    /// The DIDs and tenants under attack now, oldest first.
    pub fn targets_under_attack(&self) -> Vec<Attack> {
        let attacked = self.attacked.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<Attack> = attacked.values().cloned().collect();
        list.sort_by(|a, b| {
            a.since
                .cmp(&b.since)
                .then_with(|| a.target.to_string().cmp(&b.target.to_string()))
        });
        list
    }

    /// Hands bans to the writer and counts what fired; never waits.
    pub fn report(&self, detections: Detections) {
        for ban in detections.bans {
            metrics::flood_detected(ban.detector.as_str());
            if self.tx.try_send(ban).is_err() {
                metrics::ban_request_dropped();
            }
        }
        if detections.attacks.is_empty() {
            return;
        }
        let mut attacked = self.attacked.lock().unwrap_or_else(PoisonError::into_inner);
        for event in detections.attacks {
            let kind = match event {
                AttackEvent::Started { target, rate } => {
                    metrics::flood_detected("target");
                    warn!(target = %target, rate, "flood: target under attack");
                    let kind = target.kind();
                    attacked.insert(
                        target.clone(),
                        Attack {
                            target,
                            since: SystemTime::now(),
                            rate,
                        },
                    );
                    kind
                }
                AttackEvent::Ended { target, .. } => {
                    info!(target = %target, "flood: attack over");
                    attacked.remove(&target);
                    target.kind()
                }
            };
            let n = attacked.keys().filter(|t| t.kind() == kind).count();
            metrics::set_targets_under_attack(kind.as_str(), n);
        }
    }
}

/// Starts the ban writer, the detectors' housekeeping and, with Redis and `shared_ranges`
/// (the K of each range detector), the shared counting; returns the engine's hook.
pub fn start(
    detector: SharedDetector,
    store: Store,
    normalizer: Normalizer,
    snapshot: SnapshotHandle,
    shared_ranges: Option<Vec<u8>>,
    shutdown: CancellationToken,
) -> FloodHook {
    let (tx, rx) = mpsc::channel(QUEUE);
    let share = match (&store, shared_ranges) {
        (Store::Redis(redis), Some(range_digits)) => {
            let (share_tx, share_rx) = mpsc::channel(SHARE_QUEUE);
            let node = node_id();
            tokio::spawn(publisher(
                share_rx,
                (**redis).clone(),
                node.clone(),
                shutdown.clone(),
            ));
            Some((
                Share {
                    tx: share_tx,
                    range_digits: range_digits.into(),
                },
                (**redis).clone(),
                node,
            ))
        }
        _ => None,
    };
    let hook = FloodHook {
        detector,
        tx,
        share: share.as_ref().map(|(s, _, _)| s.clone()),
        attacked: Arc::default(),
    };
    if let Some((_, redis, node)) = share {
        tokio::spawn(subscriber(
            hook.clone(),
            redis,
            node,
            normalizer.clone(),
            shutdown.clone(),
        ));
    }
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

/// Counting keys waiting to be published.
const SHARE_QUEUE: usize = 65_536;
/// How often local counts go out: well inside the 1 s detection budget.
const SHARE_EVERY: Duration = Duration::from_millis(250);

/// This process's id in shared counts, so it can ignore its own messages.
fn node_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{}-{:x}", std::process::id(), nanos)
}

/// Aggregates local counting keys and publishes them every [`SHARE_EVERY`] as one message:
/// the node id on the first line, then `key count` lines.
async fn publisher(
    mut rx: mpsc::Receiver<FloodKey>,
    redis: RedisStore,
    node: String,
    shutdown: CancellationToken,
) {
    let mut counts: HashMap<String, u32> = HashMap::new();
    let mut tick = tokio::time::interval(SHARE_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            key = rx.recv() => match key {
                Some(key) => *counts.entry(key.to_string()).or_default() += 1,
                None => return,
            },
            _ = tick.tick() => {
                if counts.is_empty() {
                    continue;
                }
                let mut message = node.clone();
                for (key, n) in counts.drain() {
                    message.push('\n');
                    message.push_str(&key);
                    message.push(' ');
                    message.push_str(&n.to_string());
                }
                if let Err(error) = redis.publish_flood(&message).await {
                    debug!(%error, "flood: counts not shared");
                }
            }
        }
    }
}

/// Merges other nodes' counts into the local detectors; reconnects with backoff.
async fn subscriber(
    hook: FloodHook,
    redis: RedisStore,
    node: String,
    normalizer: Normalizer,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = async {
            let mut pubsub = redis.pubsub().await?;
            pubsub.subscribe(redis.flood_channel()).await?;
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let Ok(text) = msg.get_payload::<String>() else {
                    continue;
                };
                let mut lines = text.lines();
                if lines.next() == Some(node.as_str()) {
                    continue;
                }
                let now = Instant::now();
                for line in lines.take(100_000) {
                    let Some((key, n)) = line.split_once(' ') else {
                        continue;
                    };
                    let (Some(key), Ok(n)) = (parse_key(key, &normalizer), n.parse::<u32>()) else {
                        continue;
                    };
                    hook.report(hook.detector.merge_remote(&key, n, now));
                }
            }
            Ok::<(), crate::store::StoreError>(())
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = session => {
                if let Err(error) = result {
                    debug!(%error, "flood: shared counts interrupted");
                } else {
                    backoff = Duration::from_millis(100);
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
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
        if snapshot.load().has_rule(None, &pattern) {
            continue;
        }
        let now = SystemTime::now();
        let mut entry = Entry::new(ListKind::Block, pattern);
        entry.reason = ban.reason.clone();
        entry.added_by = Some(DETECTOR.to_owned());
        entry.added_at = Some(now);
        entry.expires_at = Some(now + ban.duration);
        match put_retrying(&store, &entry, &shutdown).await {
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

/// How long a ban is retried while the store is unreachable (a Redis failover takes seconds);
/// bans detected meanwhile wait in the queue.
const BAN_RETRY_FOR: Duration = Duration::from_secs(30);

/// Stores a ban, retrying with backoff for up to [`BAN_RETRY_FOR`] (or until shutdown).
async fn put_retrying(
    store: &Store,
    entry: &Entry,
    shutdown: &CancellationToken,
) -> Result<(), crate::store::StoreError> {
    let give_up = tokio::time::Instant::now() + BAN_RETRY_FOR;
    let mut backoff = Duration::from_millis(100);
    loop {
        let error = match store.put(std::slice::from_ref(entry)).await {
            Ok(()) => return Ok(()),
            Err(error) if tokio::time::Instant::now() + backoff < give_up => error,
            Err(error) => return Err(error),
        };
        debug!(rule = %entry.pattern, %error, retry_in = ?backoff, "flood: ban not stored yet");
        tokio::select! {
            () = shutdown.cancelled() => return Err(error),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_keys_read_back_as_written() {
        let n = Normalizer::default();
        let number = n.normalize("84951234567");
        let did = n.normalize("101");
        let tenant = Tenant::new("acme").expect("tenant");
        let observed = Observed {
            number: &number,
            did: Some(&did),
            tenant: Some(&tenant),
        };
        let keys = keys_of(&observed, &[2, 4]);
        let texts: Vec<String> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "caller:+74951234567",
                "range:+749512345XX",
                "range:+7495123XXXX",
                "did:local:101",
                "tenant:acme",
            ]
        );
        for (key, text) in keys.iter().zip(&texts) {
            assert_eq!(parse_key(text, &n).as_ref(), Some(key), "{text}");
        }
        for bad in [
            "",
            "caller:",
            "caller:abc",
            "range:+XX",
            "tenant:a b",
            "evil:1",
            "did:SPAM",
        ] {
            assert_eq!(parse_key(bad, &n), None, "{bad}");
        }
        // Withheld callers only count toward their targets.
        let anonymous = CallerNumber::Anonymous;
        let only_target = keys_of(
            &Observed {
                number: &anonymous,
                did: Some(&did),
                tenant: None,
            },
            &[2],
        );
        assert_eq!(only_target.len(), 1);
    }
}
