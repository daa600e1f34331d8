//! Store -> snapshot: load everything, compile, publish; then follow changes and republish.
//! On any store error the last snapshot stays in force and the sync retries with backoff.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{LocalStore, RedisStore, Store, StoreError};
use crate::metrics;
use crate::rules::{Entry, Snapshot, TimeZone};
use crate::snapshot::SnapshotHandle;

/// How the sync follows changes.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Local file: how often to `stat` it. Redis without keyspace notifications: how often to
    /// reload everything.
    pub poll_interval: Duration,
    /// Redis with notifications: safety-net full reload interval.
    pub full_resync_interval: Duration,
    /// Try `CONFIG SET notify-keyspace-events` on the Redis server.
    pub configure_notifications: bool,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// Zone for rule schedules that name none.
    pub time_zone: TimeZone,
}

/// Runs until `shutdown`, keeping `handle` in step with `store`.
pub async fn run(
    store: Store,
    handle: SnapshotHandle,
    options: SyncOptions,
    shutdown: CancellationToken,
) {
    match store {
        Store::Local(local) => run_local(local, handle, options, shutdown).await,
        Store::Redis(redis) => run_redis(*redis, handle, options, shutdown).await,
    }
}

/// Builds and publishes a snapshot, bumping `version`. The compile runs on the blocking pool:
/// a big list takes seconds, and the runtime's workers must keep serving calls meanwhile
/// (they read the previous snapshot until the swap).
async fn publish(
    handle: &SnapshotHandle,
    version: &mut u64,
    zone: &TimeZone,
    entries: impl IntoIterator<Item = Entry>,
) {
    *version += 1;
    let entries: Vec<Entry> = entries.into_iter().collect();
    let (v, zone) = (*version, zone.clone());
    // Rule counts for the metrics walk every rule: do it beside the compile, off the runtime.
    let compiled = tokio::task::spawn_blocking(move || {
        let snapshot = Snapshot::compile_in(entries, v, &zone);
        let now = SystemTime::now();
        let counts = metrics::rule_counts(&snapshot, now);
        let mut bans = 0;
        snapshot.for_each_rule(now, |r| {
            if r.live && r.added_by == Some(crate::bans::DETECTOR) {
                bans += 1;
            }
        });
        metrics::set_active_bans(bans);
        (snapshot, counts)
    })
    .await;
    let (snapshot, counts) = match compiled {
        Ok(compiled) => compiled,
        Err(error) => {
            warn!(%error, "snapshot compile failed; keeping the previous snapshot");
            return;
        }
    };
    let (block, allow) = (
        snapshot.len(crate::rules::ListKind::Block),
        snapshot.len(crate::rules::ListKind::Allow),
    );
    // Log only after the swap: "published" must mean decisions already see it.
    handle.publish(snapshot);
    metrics::snapshot_published(*version, &counts, SystemTime::now());
    info!(version = *version, block, allow, "snapshot published");
}

async fn run_local(
    store: LocalStore,
    handle: SnapshotHandle,
    options: SyncOptions,
    shutdown: CancellationToken,
) {
    let mut version = 0;
    // `None` forces the first load even when the file does not exist yet.
    let mut seen: Option<Option<super::local::FileStamp>> = None;
    let mut tick = interval(options.poll_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stamp = store.stamp();
        if seen == Some(stamp) {
            // Unchanged file: the snapshot still matches the store.
            metrics::snapshot_fresh(SystemTime::now());
            continue;
        }
        match store.load().await {
            Ok(entries) => {
                seen = Some(stamp);
                metrics::store_up("local", true);
                publish(&handle, &mut version, &options.time_zone, entries).await;
            }
            Err(e) => {
                // Remember the broken version so the error is logged once, not every tick.
                seen = Some(stamp);
                metrics::store_up("local", false);
                metrics::store_error(error_kind(&e));
                warn!(error = %e, "list file not loaded; keeping the previous snapshot");
            }
        }
    }
}

async fn run_redis(
    store: RedisStore,
    handle: SnapshotHandle,
    options: SyncOptions,
    shutdown: CancellationToken,
) {
    let mut version = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = redis_session(&store, &handle, &options, &mut version, &mut backoff) => r,
        };
        let Err(e) = result;
        metrics::store_up("redis", false);
        metrics::store_error(error_kind(&e));
        warn!(error = %e, retry_in = ?backoff, "redis sync interrupted; deciding from the last snapshot");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

/// One connected stretch: subscribe, load, then follow changes until something fails.
async fn redis_session(
    store: &RedisStore,
    handle: &SnapshotHandle,
    options: &SyncOptions,
    version: &mut u64,
    backoff: &mut Duration,
) -> Result<std::convert::Infallible, StoreError> {
    let notifications =
        options.configure_notifications && store.enable_keyspace_notifications().await;
    let mut pubsub = store.pubsub().await?;
    // Subscribe before loading, so no change between the load and the subscription is missed.
    pubsub.subscribe(store.changes_channel()).await?;
    if notifications {
        pubsub.psubscribe(store.keyspace_pattern()).await?;
    }
    let mut mirror: HashMap<String, Entry> = HashMap::new();
    for (key, entry) in full_load(store).await? {
        mirror.insert(key, entry);
    }
    metrics::store_up("redis", true);
    publish(
        handle,
        version,
        &options.time_zone,
        mirror.values().cloned(),
    )
    .await;
    *backoff = Duration::from_millis(100);
    let resync_every = if notifications {
        options.full_resync_interval
    } else {
        options.poll_interval
    };
    info!(
        notifications,
        resync_every = ?resync_every,
        "following redis changes"
    );

    let mut messages = pubsub.on_message();
    let mut pending: HashSet<String> = HashSet::new();
    let mut next_resync = Instant::now() + resync_every;
    // Changes arrive in bursts (a bulk `block`): gather them briefly, then fetch and publish once.
    let coalesce = Duration::from_millis(20);
    let mut flush_at: Option<Instant> = None;
    loop {
        let flush_deadline = flush_at.unwrap_or(next_resync);
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else {
                    return Err(StoreError::Redis(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "pub/sub connection closed",
                    ))));
                };
                let channel = msg.get_channel_name();
                let key = if msg.from_pattern() {
                    store.key_from_keyspace_channel(channel).map(str::to_owned)
                } else {
                    msg.get_payload::<String>().ok()
                };
                if let Some(key) = key.filter(|k| store.parse_key(k).is_some()) {
                    debug!(%key, "store change");
                    pending.insert(key);
                    flush_at.get_or_insert_with(|| Instant::now() + coalesce);
                }
            }
            () = sleep_until(flush_deadline) => {
                if flush_at.is_some() {
                    flush_at = None;
                    let keys: Vec<String> = pending.drain().collect();
                    for (key, entry) in store.fetch(&keys).await? {
                        match entry {
                            Some(entry) => mirror.insert(key, entry),
                            None => mirror.remove(&key),
                        };
                    }
                    publish(handle, version, &options.time_zone, mirror.values().cloned()).await;
                } else {
                    next_resync = Instant::now() + resync_every;
                    let fresh: HashMap<String, Entry> = full_load(store).await?.into_iter().collect();
                    if same_content(&fresh, &mirror) {
                        metrics::snapshot_fresh(SystemTime::now());
                    } else {
                        mirror = fresh;
                        publish(handle, version, &options.time_zone, mirror.values().cloned()).await;
                    }
                }
            }
        }
    }
}

/// The `kind` label of `callguard_store_errors_total`.
fn error_kind(error: &StoreError) -> metrics::StoreErrorKind {
    match error {
        StoreError::Redis(_) => metrics::StoreErrorKind::Redis,
        StoreError::Timeout(_) => metrics::StoreErrorKind::Timeout,
        StoreError::Io { .. } => metrics::StoreErrorKind::Io,
        _ => metrics::StoreErrorKind::BadData,
    }
}

async fn full_load(store: &RedisStore) -> Result<Vec<(String, Entry)>, StoreError> {
    store.load_keyed().await
}

/// Equal up to expiry jitter: expiries are derived from PTTL at read time, so two reads of an
/// unchanged key differ by the time between them.
fn same_content(a: &HashMap<String, Entry>, b: &HashMap<String, Entry>) -> bool {
    const JITTER: Duration = Duration::from_secs(1);
    a.len() == b.len()
        && a.iter().all(|(key, x)| {
            b.get(key).is_some_and(|y| {
                let expiry_close = match (x.expires_at, y.expires_at) {
                    (None, None) => true,
                    (Some(p), Some(q)) => {
                        p.duration_since(q)
                            .or_else(|_| q.duration_since(p))
                            .unwrap_or_default()
                            < JITTER
                    }
                    _ => false,
                };
                expiry_close && x.same_except_expiry(y)
            })
        })
}
