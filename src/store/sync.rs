//! Store -> snapshot: load everything, compile, publish; then follow changes and republish.
//! On any store error the last snapshot stays in force and the sync retries with backoff.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{LocalStore, RedisStore, Store, StoreError, bulk};
use crate::metrics;
use crate::rules::{Entry, ListKind, RuleKey, Snapshot, SnapshotBuilder, TimeZone};
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
    /// Redis only: where to keep the snapshot file, if anywhere.
    pub snapshot_file: Option<std::path::PathBuf>,
    /// Shortest time between two writes of the snapshot file.
    pub snapshot_file_interval: Duration,
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
    let mut builder = SnapshotBuilder::new(zone);
    for entry in entries {
        builder.add(entry);
    }
    publish_built(handle, version, builder).await;
}

/// Compiles what `builder` collected on the blocking pool and publishes it.
async fn publish_built(handle: &SnapshotHandle, version: &mut u64, builder: SnapshotBuilder) {
    *version += 1;
    let v = *version;
    match tokio::task::spawn_blocking(move || builder.finish(v)).await {
        Ok(snapshot) => swap_in(handle, snapshot).await,
        Err(error) => warn!(%error, "snapshot compile failed; keeping the previous snapshot"),
    }
}

/// Applies store changes to the current snapshot (only what they touch is rebuilt) and
/// publishes the result.
async fn publish_patch(
    handle: &SnapshotHandle,
    version: &mut u64,
    zone: &TimeZone,
    changes: Vec<(RuleKey, Option<Entry>)>,
) {
    if changes.is_empty() {
        return;
    }
    *version += 1;
    let (v, zone, current) = (*version, zone.clone(), handle.load());
    let n = changes.len();
    match tokio::task::spawn_blocking(move || current.patched(changes, v, &zone)).await {
        Ok(snapshot) => {
            debug!(changes = n, "snapshot patched");
            swap_in(handle, snapshot).await;
        }
        Err(error) => warn!(%error, "snapshot patch failed; keeping the previous snapshot"),
    }
}

/// Rule counts walk every rule: below this many the walk is done at every publish, above it
/// at most once per [`COUNT_INTERVAL`] (5 s), so a burst of edits to a huge list stays cheap.
const COUNT_INLINE_MAX: usize = 100_000;
const COUNT_INTERVAL: Duration = Duration::from_secs(5);

async fn swap_in(handle: &SnapshotHandle, snapshot: Snapshot) {
    let (v, block, allow) = (
        snapshot.version(),
        snapshot.len(ListKind::Block),
        snapshot.len(ListKind::Allow),
    );
    let snapshot = Arc::new(snapshot);
    // Small lists: count before the swap, so tenants that own rules are metric labels by the
    // time the first call decided by them is counted.
    let inline = block + allow <= COUNT_INLINE_MAX;
    if inline {
        let counted = snapshot.clone();
        if let Ok((counts, bans)) = tokio::task::spawn_blocking(move || count(&counted)).await {
            metrics::set_active_bans(bans);
            metrics::snapshot_published(v, &counts, SystemTime::now());
        }
    }
    // Log only after the swap: "published" must mean decisions already see it.
    handle.publish_arc(snapshot);
    metrics::snapshot_version(v, SystemTime::now());
    info!(version = v, block, allow, "snapshot published");
    if !inline {
        spawn_counter(handle.clone());
    }
}

fn count(snapshot: &Snapshot) -> (metrics::RuleCounts, usize) {
    let tally = snapshot.tally(SystemTime::now(), crate::bans::DETECTOR);
    (metrics::rule_counts_of(&tally), tally.by_author)
}

/// Recounts big snapshots in the background, at most once per [`COUNT_INTERVAL`], until the
/// counted version is the published one. One counter at a time.
fn spawn_counter(handle: SnapshotHandle) {
    static RUNNING: AtomicBool = AtomicBool::new(false);
    if RUNNING.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async move {
        let mut counted = None;
        loop {
            let current = handle.load();
            let v = current.version();
            if counted == Some(v) {
                break;
            }
            if let Ok((counts, bans)) = tokio::task::spawn_blocking(move || count(&current)).await {
                metrics::set_active_bans(bans);
                metrics::snapshot_published(v, &counts, SystemTime::now());
            }
            counted = Some(v);
            tokio::time::sleep(COUNT_INTERVAL).await;
        }
        RUNNING.store(false, Ordering::Release);
    });
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
    if let Some(path) = options.snapshot_file.clone() {
        read_snapshot_file(&store, &handle, &options, &path).await;
        tokio::spawn(write_snapshot_file(
            store.identity(),
            handle.clone(),
            path,
            options.snapshot_file_interval,
            shutdown.clone(),
        ));
    }
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

/// Publishes the snapshot file's list (version 0) so calls are decided by the last known list
/// while Redis streams in; any problem with the file is logged and the start goes on empty.
async fn read_snapshot_file(
    store: &RedisStore,
    handle: &SnapshotHandle,
    options: &SyncOptions,
    path: &std::path::Path,
) {
    let (path_buf, identity, normalizer, zone) = (
        path.to_path_buf(),
        store.identity(),
        store.normalizer().clone(),
        options.time_zone.clone(),
    );
    let read = tokio::task::spawn_blocking(move || {
        super::cache::read(&path_buf, &identity, &normalizer, &zone)
    })
    .await;
    match read {
        Ok(Ok(Some(snapshot))) => {
            let (block, allow) = (snapshot.len(ListKind::Block), snapshot.len(ListKind::Allow));
            handle.publish(snapshot);
            info!(path = %path.display(), block, allow, "snapshot published from the snapshot file; deciding from it until redis is loaded");
        }
        Ok(Ok(None)) => {
            warn!(path = %path.display(), "snapshot file is for another store; not used")
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            info!(path = %path.display(), "no snapshot file yet");
        }
        Ok(Err(error)) => {
            warn!(path = %path.display(), %error, "snapshot file not usable; starting empty")
        }
        Err(error) => warn!(%error, "snapshot file read failed; starting empty"),
    }
}

/// Writes the current snapshot to the file whenever a new version (from Redis: not the file's
/// own version 0) has been published, at most once per `every`.
async fn write_snapshot_file(
    identity: String,
    handle: SnapshotHandle,
    path: std::path::PathBuf,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut written: Option<(u64, Instant)> = None;
    let mut tick = interval(Duration::from_secs(1).min(every));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let current = handle.load();
        let v = current.version();
        let due = written.is_none_or(|(w, at)| w != v && at.elapsed() >= every);
        if v == 0 || !due {
            continue;
        }
        let (p, id) = (path.clone(), identity.clone());
        let started = Instant::now();
        match tokio::task::spawn_blocking(move || super::cache::write(&p, &id, &current)).await {
            Ok(Ok(())) => {
                debug!(version = v, took = ?started.elapsed(), "snapshot file written");
                written = Some((v, Instant::now()));
            }
            Ok(Err(error)) => {
                warn!(path = %path.display(), %error, "snapshot file not written");
                // Do not retry every second against a full disk or a read-only path.
                written = Some((v, Instant::now()));
            }
            Err(error) => warn!(%error, "snapshot file writer failed"),
        }
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
    store.refresh();
    let notifications =
        options.configure_notifications && store.enable_keyspace_notifications().await?;
    // Subscribe before loading, so no change between the load and the subscription is missed.
    let mut messages = store.subscribe(notifications).await?;
    let masters = messages.masters.clone();
    let single_connection = masters.len() == 1;
    let (mut reloaded_before, mut marker_count): (Option<String>, u64) = (None, 0);
    let started = Instant::now();
    let builder = full_load(store, &options.time_zone).await?;
    let loaded = builder.len();
    metrics::store_up("redis", true);
    publish_built(handle, version, builder).await;
    info!(entries = loaded, took = ?started.elapsed(), "loaded from redis");
    *backoff = Duration::from_millis(100);
    let resync_every = if notifications {
        options.full_resync_interval
    } else {
        options.poll_interval
    };
    info!(
        notifications,
        resync_every = ?resync_every,
        masters = %masters.join(","),
        "following redis changes"
    );

    // Sentinel and Cluster: a failover moves the data to other masters, whose keyspace
    // notifications this session does not hear; the check ends the session for a fresh one.
    let mut topology = interval(store.topology_check_interval());
    topology.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let check_topology = store.is_replicated();
    let mut pending: HashSet<String> = HashSet::new();
    let mut next_resync = Instant::now() + resync_every;
    // Changes arrive in bursts (a bulk `block`): gather them briefly, then fetch and patch once.
    let coalesce = Duration::from_millis(5);
    let mut flush_at: Option<Instant> = None;
    loop {
        let flush_deadline = flush_at.unwrap_or(next_resync);
        tokio::select! {
            _ = topology.tick(), if check_topology => {
                match store.masters().await {
                    Ok(now) if now != masters => {
                        return Err(StoreError::Failover {
                            from: masters.join(","),
                            to: now.join(","),
                        });
                    }
                    Ok(_) => {}
                    // Mid-failover the sentinels may have no answer yet; the pub/sub
                    // connection closing (or the next check) ends the session.
                    Err(error) => debug!(%error, "redis masters not checked"),
                }
            }
            msg = messages.next() => {
                let Some(msg) = msg else {
                    return Err(StoreError::Redis(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "pub/sub connection closed",
                    ))));
                };
                if let Some(marker) = &reloaded_before {
                    // Announced before the last reload began: it saw these writes.
                    if !msg.from_pattern() && msg.get_payload::<String>().ok().as_ref() == Some(marker) {
                        reloaded_before = None;
                    }
                } else if let Some(key) = changed_key(store, &msg) {
                    debug!(%key, "store change");
                    pending.insert(key);
                    flush_at.get_or_insert_with(|| Instant::now() + coalesce);
                }
            }
            () = sleep_until(flush_deadline) => {
                // Everything announced by now, not only what the loop took in the last few
                // milliseconds: an import's burst is then judged whole.
                pending.extend(
                    messages
                        .take_ready()?
                        .iter()
                        .filter_map(|msg| changed_key(store, msg)),
                );
                let big = reload_is_cheaper(store, &pending, &handle.load());
                if flush_at.is_some() && !big {
                    flush_at = None;
                    let keys: Vec<String> = pending.drain().collect();
                    let changes = store.fetch_changes(&keys).await?;
                    publish_patch(handle, version, &options.time_zone, changes).await;
                } else {
                    if big {
                        info!(keys = pending.len(), "big change (an import): reloading everything");
                    }
                    // Cleared before the load: whatever changes meanwhile is heard again. So
                    // is what was already announced: those writes came before the load starts,
                    // which sees them (an import's announcements arrive in a burst that would
                    // otherwise make a second reload).
                    pending.clear();
                    let covered = messages.take_ready()?.len();
                    debug!(covered, "announcements the reload covers dropped");
                    // On one server, messages reach us in the order Redis sent them: what
                    // arrives before this marker was announced before the reload began, so
                    // the reload covers it (an import's burst, still in flight, does not make
                    // a second reload). A cluster delivers each master's messages on its own
                    // connection, in no order between them: there every message counts.
                    if single_connection {
                        marker_count += 1;
                        let marker = format!("reload {} {marker_count}", std::process::id());
                        store.publish_marker(&marker).await?;
                        reloaded_before = Some(marker);
                    }
                    flush_at = None;
                    next_resync = Instant::now() + resync_every;
                    resync(store, handle, &options.time_zone, version).await?;
                }
            }
        }
    }
}

/// The rule key or bulk bucket a change message names (a keyspace notification's channel, or
/// the payload of a `callguard:changes` message); `None` for other keys.
fn changed_key(store: &RedisStore, msg: &redis::Msg) -> Option<String> {
    let key = if msg.from_pattern() {
        store
            .key_from_keyspace_channel(msg.get_channel_name())
            .map(str::to_owned)
    } else {
        msg.get_payload::<String>().ok()
    };
    key.filter(|k| store.parse_key(k).is_some() || store.parse_bulk_key(k).is_some())
}

/// Whether the `pending` changes are cheaper to apply by reloading all of `current`'s list
/// than by reading each rule's spellings (a patch).
fn reload_is_cheaper(store: &RedisStore, pending: &HashSet<String>, current: &Snapshot) -> bool {
    let buckets = pending
        .iter()
        .filter(|k| store.parse_bulk_key(k).is_some())
        .count();
    let loaded = current.len(ListKind::Block) + current.len(ListKind::Allow);
    reload_beats_patch(pending.len() - buckets, buckets, loaded)
}

/// [`reload_is_cheaper`] in numbers: reading a rule's spellings costs ~30 times what a
/// streamed load spends on one (measured at 10.1M rules: 77,000 rules patched in 3.5 s, the
/// whole list loaded in 15 s), and a bulk bucket holds its share of the list (an import
/// spreads rules evenly over the buckets). Up to 1,000 rules are always patched.
fn reload_beats_patch(rule_keys: usize, buckets: usize, loaded: usize) -> bool {
    let per_bucket = usize::try_from(bulk::BUCKETS)
        .map_or(1, |all| loaded / all)
        .max(1);
    rule_keys + buckets * per_bucket > (loaded / 30).max(1_000)
}

/// Loads everything and publishes it unless it holds the same rules as the current snapshot.
async fn resync(
    store: &RedisStore,
    handle: &SnapshotHandle,
    zone: &TimeZone,
    version: &mut u64,
) -> Result<(), StoreError> {
    let fresh = full_load(store, zone).await?;
    let current = handle.load();
    let v = *version + 1;
    let rebuilt = tokio::task::spawn_blocking(move || {
        let fresh = fresh.finish(v);
        let same = fresh.same_rules(&current, EXPIRY_JITTER);
        (fresh, same)
    })
    .await;
    match rebuilt {
        Ok((_, true)) => metrics::snapshot_fresh(SystemTime::now()),
        Ok((fresh, false)) => {
            *version = v;
            swap_in(handle, fresh).await;
        }
        Err(error) => warn!(%error, "resync compile failed; keeping the snapshot"),
    }
    Ok(())
}

/// Expiries are derived from PTTL at read time, so two reads of an unchanged key differ by the
/// time between them; closer than this counts as the same.
const EXPIRY_JITTER: Duration = Duration::from_secs(1);

/// The `kind` label of `callguard_store_errors_total`.
fn error_kind(error: &StoreError) -> metrics::StoreErrorKind {
    match error {
        StoreError::Redis(_)
        | StoreError::NoMaster(_)
        | StoreError::Failover { .. }
        | StoreError::BadUrl(_) => metrics::StoreErrorKind::Redis,
        StoreError::Timeout(_) => metrics::StoreErrorKind::Timeout,
        StoreError::Io { .. } => metrics::StoreErrorKind::Io,
        _ => metrics::StoreErrorKind::BadData,
    }
}

/// Streams every entry in Redis into a builder.
async fn full_load(store: &RedisStore, zone: &TimeZone) -> Result<SnapshotBuilder, StoreError> {
    let mut builder = SnapshotBuilder::new(zone);
    store.load_each(|_, entry| builder.add(entry)).await?;
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::reload_beats_patch;

    #[test]
    fn big_change_sets_reload_small_ones_patch() {
        // A small list: up to 1,000 rules patched, then a reload (it is cheap).
        assert!(!reload_beats_patch(1_000, 0, 50));
        assert!(reload_beats_patch(1_001, 0, 50));
        // On a small list a bucket holds about one rule.
        assert!(!reload_beats_patch(0, 900, 300));
        assert!(reload_beats_patch(0, 1_200, 300));
        // 10 million rules: ~76 a bucket; patches up to ~333,000 rules (~4,400 buckets).
        assert!(!reload_beats_patch(300_000, 0, 10_000_000));
        assert!(!reload_beats_patch(0, 4_000, 10_000_000));
        assert!(reload_beats_patch(0, 5_000, 10_000_000));
        assert!(reload_beats_patch(400_000, 0, 10_000_000));
    }
}
