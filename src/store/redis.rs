//! The Redis store: key layout, value format, reads and writes, change notifications.
//! Knows nothing of snapshots; [`super::sync`] drives it.
//!
//! Layout (prefix `callguard` by default), one key per entry so plain `redis-cli` edits work:
//! - `callguard:block:<number in any format>` = reason text, or the JSON that callguard writes
//!   (`{"reason":..,"added_by":..,"added_at":..}`); a TTL (`EX`) is the entry's expiry.
//! - `callguard:allow:<number in any format>` likewise.
//! - `callguard:alias:block:+7...` (a set): the other spellings of that canonical rule key
//!   that exist, recorded by the servers' sync, so `put`/`remove` find hand-typed spellings
//!   without walking a 10-million-key keyspace.
//! - `callguard:bulk:block:<bucket>` (hashes) and `callguard:bulk-meta`: big imported lists,
//!   many rules per hash (see [`super::bulk`]).
//! - channel `callguard:changes`: callguard publishes each key it writes (for an import in the
//!   bulk layout, each bucket), so running servers see CLI edits at once even when keyspace
//!   notifications are off.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use redis::{Cmd, Value};
use tokio::time::timeout;

use futures_util::StreamExt;
use tracing::warn;

use super::bulk;
use super::redis_conn::{Batch, Conn, RedisConn, Subscription};
use super::{EntryMeta, StoreError, entry_from_parts};
use crate::config::RedisSettings;
use crate::number::{CallerNumber, Normalizer};
use crate::rules::{Entry, ListKind, RuleKey, RulePattern, Tenant};

/// Keys fetched per pipelined round trip.
const BATCH: usize = 1000;
/// Keys per SCAN step and pipelined fetch when loading everything: big steps, few round trips.
const LOAD_BATCH: usize = 5000;
/// Buckets of the bulk layout read per pipelined round trip while loading (~80 rules each).
const BUCKET_BATCH: usize = 250;
/// A load decodes on the runtime's workers, which also answer calls: it lets them run after
/// this many buckets or keys (a millisecond or two of work).
const YIELD_BUCKETS: usize = 16;
const YIELD_KEYS: usize = 1000;

/// What one step of a load fetched: rule keys with their `fetch_raw` replies, or buckets of
/// the bulk layout with their `HGETALL` replies.
enum ScanBatch {
    Keys(Vec<String>, Vec<redis::RedisResult<Value>>),
    Buckets(Vec<(String, Value)>),
}

/// Metadata of the bulk layout by id. Ids are content hashes, so what was read once stays true.
type Metas = Arc<Mutex<HashMap<String, Arc<[u8]>>>>;

/// Handle to a Redis store; cheap to clone (one multiplexed, self-reconnecting connection to
/// the server, the Sentinel master or the Cluster).
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConn,
    prefix: String,
    normalizer: Normalizer,
    op_timeout: Duration,
    // Largest keyspace (DBSIZE) on which `put`/`remove` also SCAN for hand-typed spellings no
    // server has recorded yet; above it they trust the alias sets the servers keep.
    spelling_scan_max_keys: u64,
    topology_check_interval: std::time::Duration,
    metas: Metas,
}

impl RedisStore {
    /// Prepares a store for `url`; the connection is made on first use, so a server can start
    /// while Redis is down and catch up later.
    pub async fn connect(
        url: &str,
        settings: &RedisSettings,
        normalizer: Normalizer,
    ) -> Result<RedisStore, StoreError> {
        Ok(RedisStore {
            conn: RedisConn::new(url, settings)?,
            prefix: settings.key_prefix.clone(),
            normalizer,
            op_timeout: settings.op_timeout(),
            spelling_scan_max_keys: settings.spelling_scan_max_keys,
            topology_check_interval: settings.topology_check_interval(),
            metas: Metas::default(),
        })
    }

    /// The normalizer rule texts are read with.
    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
    }

    /// Names this store (server, database, key prefix) for the snapshot file; no credentials.
    pub fn identity(&self) -> String {
        format!("{} db{} {}", self.conn.identity(), self.db(), self.prefix)
    }

    /// Database number selected by the URL (for keyspace channel names).
    pub fn db(&self) -> i64 {
        self.conn.db()
    }

    /// A connection for commands (the server, the current master, or the cluster).
    pub async fn command_conn(&self) -> Result<Conn, StoreError> {
        self.conn.get().await
    }

    /// True for Sentinel and Cluster, whose masters can change (failover).
    pub fn is_replicated(&self) -> bool {
        self.conn.is_replicated()
    }

    /// The masters holding data now, sorted.
    pub async fn masters(&self) -> Result<Vec<String>, StoreError> {
        let result = self.conn.masters().await;
        if result.is_err() {
            self.conn.failed();
        }
        result
    }

    /// Sentinel: the next command asks the sentinels for the master again (a new sync session
    /// starts with this, so it never reads from a demoted master).
    pub fn refresh(&self) {
        self.conn.failed();
    }

    /// How often the sync compares [`RedisStore::masters`] with the ones it subscribed to.
    pub fn topology_check_interval(&self) -> std::time::Duration {
        self.topology_check_interval
    }

    /// Subscribes to the changes channel and, when `keyspace`, to keyspace notifications on
    /// every master.
    pub async fn subscribe(&self, keyspace: bool) -> Result<Subscription, StoreError> {
        let pattern = self.keyspace_pattern();
        let result = self
            .conn
            .subscribe(
                &self.changes_channel(),
                keyspace.then_some(pattern.as_str()),
            )
            .await;
        if result.is_err() {
            self.conn.failed();
        }
        result
    }

    /// Key for `rule_text` on `tenant`'s (or the global) `list`.
    pub fn key(&self, tenant: Option<&Tenant>, list: ListKind, rule_text: &str) -> String {
        let mut key = self.scope(tenant);
        key.push_str(list.as_str());
        key.push(':');
        key.push_str(rule_text);
        key
    }

    /// `<prefix>:` or `<prefix>:tenant:<t>:`, the start of every key of that scope.
    fn scope(&self, tenant: Option<&Tenant>) -> String {
        match tenant {
            None => format!("{}:", self.prefix),
            Some(t) => format!("{}:tenant:{t}:", self.prefix),
        }
    }

    /// Splits off a key's scope: the tenant (or `None`, global) and the rest.
    fn split_scope<'k>(&self, key: &'k str) -> Option<(Option<Tenant>, &'k str)> {
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix(':')?;
        Some(match rest.strip_prefix("tenant:") {
            Some(scoped) => {
                let (name, rest) = scoped.split_once(':')?;
                (Some(Tenant::new(name).ok()?), rest)
            }
            None => (None, rest),
        })
    }

    /// Splits a key into tenant, list and rule text; `None` for keys that are not rules
    /// (other prefixes, bad tenant names).
    pub fn parse_key<'k>(&self, key: &'k str) -> Option<(Option<Tenant>, ListKind, &'k str)> {
        let (tenant, rest) = self.split_scope(key)?;
        ListKind::ALL.into_iter().find_map(|list| {
            rest.strip_prefix(list.as_str())?
                .strip_prefix(':')
                .map(|text| (tenant.clone(), list, text))
        })
    }

    /// The bulk-layout bucket (a hash) that holds `rule_text` of `tenant`'s `list`.
    pub fn bulk_key(&self, tenant: Option<&Tenant>, list: ListKind, rule_text: &str) -> String {
        let mut key = self.scope(tenant);
        let _infallible = write!(
            key,
            "bulk:{}:{}",
            list.as_str(),
            bulk::bucket_name(bulk::bucket_of(rule_text))
        );
        key
    }

    /// Tenant and list of a bulk-layout bucket key; `None` for any other key.
    pub fn parse_bulk_key(&self, key: &str) -> Option<(Option<Tenant>, ListKind)> {
        let (tenant, rest) = self.split_scope(key)?;
        let (list, bucket) = rest.strip_prefix("bulk:")?.split_once(':')?;
        let list = ListKind::ALL.into_iter().find(|l| l.as_str() == list)?;
        bulk::parse_bucket_name(bucket).map(|_| (tenant, list))
    }

    /// The hash of the bulk layout's shared metadata (id -> JSON).
    pub fn bulk_meta_key(&self) -> String {
        format!("{}:bulk-meta", self.prefix)
    }

    /// Channel on which callguard announces the keys it wrote.
    pub fn changes_channel(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    /// Keyspace-notification pattern covering every entry key.
    pub fn keyspace_pattern(&self) -> String {
        format!("__keyspace@{}__:{}:*", self.db(), glob_escape(&self.prefix))
    }

    /// Extracts the key from a keyspace-notification channel name.
    pub fn key_from_keyspace_channel<'c>(&self, channel: &'c str) -> Option<&'c str> {
        channel.split_once("__:").map(|(_, key)| key)
    }

    async fn run<T>(
        &self,
        what: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let result = match timeout(self.op_timeout, what).await {
            Ok(result) => result.map_err(StoreError::from),
            Err(_elapsed) => Err(StoreError::Timeout(self.op_timeout)),
        };
        if result.is_err() {
            // With Sentinel the master may have moved: the next command asks again.
            self.conn.failed();
        }
        result
    }

    /// The command connection; a failure to get one counts as a failed command.
    async fn conn(&self) -> Result<Conn, StoreError> {
        let result = self.conn.get().await;
        if result.is_err() {
            self.conn.failed();
        }
        result
    }

    /// Adds or replaces entries: every other spelling of the same number on the same list is
    /// deleted, the canonical key is written with its TTL, and the change is announced.
    pub async fn put(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let now = SystemTime::now();
        for entry in entries {
            let canonical = self.key(
                entry.tenant.as_ref(),
                entry.list,
                &entry.pattern.to_string(),
            );
            let stale: Vec<String> = self
                .spellings(entry.tenant.as_ref(), entry.list, &entry.pattern)
                .await?
                .into_iter()
                .filter(|k| *k != canonical)
                .collect();
            // One transaction on a single server. A cluster cannot span slots: there the new
            // key is written first and the other spellings deleted after, so a server reading
            // in between sees the rule (under one spelling or two), never no rule.
            let mut batch = Batch::new();
            batch.atomic();
            self.queue_writes(&mut batch, &[(entry, &canonical, &stale)], now)?;
            let mut conn = self.conn().await?;
            self.run(batch.query::<()>(&mut conn)).await?;
        }
        self.wait_for_replica().await;
        Ok(())
    }

    /// Adds or replaces many entries in one MULTI/EXEC transaction: all are written or none.
    /// Other spellings of the same rules are found in one pass (one SCAN of the keyspace while
    /// it is small, else the alias sets, pipelined), not one search per entry.
    pub async fn put_all(&self, entries: &[Entry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = SystemTime::now();
        let canonical: Vec<String> = entries
            .iter()
            .map(|e| self.key(e.tenant.as_ref(), e.list, &e.pattern.to_string()))
            .collect();
        let stale = self.stale_spellings(&canonical, false).await?;
        let writes = with_stale(entries.iter(), &canonical, &stale);
        let mut batch = Batch::new();
        batch.atomic();
        self.queue_writes(&mut batch, &writes, now)?;
        self.run_big(batch, entries.len()).await?;
        self.wait_for_replica().await;
        Ok(())
    }

    /// Queues the writes of entries under their canonical keys, in three stages so that a
    /// cluster (command by command) never shows a rule missing: every value with its TTL, then
    /// the other spellings and alias sets deleted, then every key announced.
    fn queue_writes<K: AsRef<str>>(
        &self,
        batch: &mut Batch,
        writes: &[(&Entry, K, &[String])],
        now: SystemTime,
    ) -> Result<(), StoreError> {
        for (entry, canonical, _) in writes {
            let value = encode_meta(entry)?;
            let canonical = canonical.as_ref();
            match entry.expires_at {
                Some(at) => {
                    // An expiry already in the past still writes a 1 ms key, so the effect is
                    // a delete.
                    let ms = at
                        .duration_since(now)
                        .unwrap_or_default()
                        .as_millis()
                        .max(1);
                    let ms = u64::try_from(ms).unwrap_or(u64::MAX);
                    batch.add_ignored(Cmd::pset_ex(canonical, &value, ms));
                }
                None => {
                    batch.add_ignored(Cmd::set(canonical, &value));
                }
            }
        }
        batch.then();
        for (entry, canonical, stale) in writes {
            for key in *stale {
                batch.add_ignored(Cmd::del(key));
            }
            // Every other spelling is gone now, and so is the rule's place in a bulk import.
            batch.add_ignored(Cmd::del(self.alias_key(canonical.as_ref())));
            let text = entry.pattern.to_string();
            batch.add_ignored(Cmd::hdel(
                self.bulk_key(entry.tenant.as_ref(), entry.list, &text),
                text,
            ));
        }
        // Announced once written (a cluster sends each stage in turn).
        batch.then();
        for (_, canonical, stale) in writes {
            for key in stale.iter().map(String::as_str).chain([canonical.as_ref()]) {
                batch.add_ignored(Cmd::publish(self.changes_channel(), key));
            }
        }
        Ok(())
    }

    /// For each canonical key, the other keys of the same rule that exist now (with
    /// `with_canonical`, the canonical key too when it exists).
    async fn stale_spellings(
        &self,
        canonical: &[String],
        with_canonical: bool,
    ) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let wanted: std::collections::HashSet<&str> =
            canonical.iter().map(String::as_str).collect();
        let mut conn = self.conn().await?;
        // DBSIZE on a cluster is the sum over its masters.
        let dbsize: u64 = self
            .run(redis::cmd("DBSIZE").query_async(&mut conn))
            .await?;
        let mut candidates: Vec<String> = Vec::new();
        let mut stale: HashMap<String, Vec<String>> = HashMap::new();
        if dbsize <= self.spelling_scan_max_keys {
            candidates = self
                .scan(&format!("{}:*", glob_escape(&self.prefix)))
                .await?;
        } else {
            for chunk in canonical.chunks(BATCH) {
                let mut batch = Batch::new();
                for key in chunk {
                    batch.add(Cmd::smembers(self.alias_key(key)));
                    if with_canonical {
                        batch.add(Cmd::exists(key));
                    }
                }
                let mut replies = self
                    .run(batch.query::<Vec<Value>>(&mut conn))
                    .await?
                    .into_iter();
                for key in chunk {
                    let members: Vec<String> = replies
                        .next()
                        .map(redis::from_redis_value)
                        .transpose()
                        .map_err(redis::RedisError::from)?
                        .unwrap_or_default();
                    candidates.extend(members);
                    if with_canonical && replies.next() == Some(Value::Int(1)) {
                        stale.entry(key.clone()).or_default().push(key.clone());
                    }
                }
            }
        }
        for key in candidates {
            if let Some((_, rule_key)) = self.rule_of_key(&key)
                && (rule_key != key || with_canonical)
                && wanted.contains(rule_key.as_str())
            {
                stale.entry(rule_key).or_default().push(key);
            }
        }
        Ok(stale)
    }

    /// [`RedisStore::put_all`] in the bulk layout (see [`super::bulk`]): rules without an
    /// expiry go into the hashes of their buckets, with their metadata stored once, and every
    /// key of their own (any spelling) is deleted; rules with an expiry are written as keys.
    /// One transaction, announced bucket by bucket.
    pub async fn put_all_bulk(&self, entries: &[Entry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = SystemTime::now();
        let (keyed, bulked): (Vec<&Entry>, Vec<&Entry>) =
            entries.iter().partition(|e| e.expires_at.is_some());
        // Canonical keys, the keyed rules' first.
        let canonical: Vec<String> = keyed
            .iter()
            .chain(&bulked)
            .map(|e| self.key(e.tenant.as_ref(), e.list, &e.pattern.to_string()))
            .collect();
        let keyed_canonical = &canonical[..keyed.len()];
        // One lookup for both kinds (on a small keyspace, one SCAN of it): every key of each
        // rule that exists now. A keyed rule keeps its canonical key (it is rewritten); a bulk
        // rule loses it too.
        let mut existing = self.stale_spellings(&canonical, true).await?;
        let mut stale = HashMap::new();
        for key in keyed_canonical {
            if let Some(mut keys) = existing.remove(key) {
                keys.retain(|k| k != key);
                stale.insert(key.clone(), keys);
            }
        }

        let mut batch = Batch::new();
        batch.atomic();
        let writes = with_stale(keyed.iter().copied(), keyed_canonical, &stale);
        if !writes.is_empty() {
            self.queue_writes(&mut batch, &writes, now)?;
            batch.then();
        }
        // Metadata first (a cluster runs stage by stage), then the buckets.
        // Each bucket's HSET is built as its rules come (no copy of the list in between), and
        // consecutive rules of an import share their metadata, encoded once.
        let mut metas: HashMap<String, String> = HashMap::new();
        let mut buckets: HashMap<String, Cmd> = HashMap::new();
        let mut shared: Option<(&Entry, String)> = None;
        for entry in &bulked {
            let reference = match &shared {
                Some((prev, reference)) if prev.same_meta(entry) => reference,
                _ => {
                    let json = encode_meta(entry)?;
                    let id = bulk::meta_id(&json);
                    metas.insert(id.clone(), json);
                    &shared.insert((entry, bulk::meta_ref(&id))).1
                }
            };
            let text = entry.pattern.to_string();
            buckets
                .entry(self.bulk_key(entry.tenant.as_ref(), entry.list, &text))
                .or_insert_with_key(|key| {
                    let mut hset = redis::cmd("HSET");
                    hset.arg(key);
                    hset
                })
                .arg(text)
                .arg(reference.as_str());
        }
        if !metas.is_empty() {
            let pairs: Vec<(&String, &String)> = metas.iter().collect();
            batch.add_ignored(Cmd::hset_multiple(self.bulk_meta_key(), &pairs));
            batch.then();
        }
        let bucket_keys: Vec<String> = buckets.keys().cloned().collect();
        for hset in buckets.into_values() {
            batch.add_ignored(hset);
        }
        // Then every key of their own those rules had (written before, or typed by hand).
        batch.then();
        for (canonical, keys) in &existing {
            for key in keys {
                batch.add_ignored(Cmd::del(key));
            }
            batch.add_ignored(Cmd::del(self.alias_key(canonical)));
        }
        batch.then();
        for key in bucket_keys.iter().chain(existing.values().flatten()) {
            batch.add_ignored(Cmd::publish(self.changes_channel(), key));
        }
        self.run_big(batch, entries.len()).await?;
        self.wait_for_replica().await;
        for (id, json) in metas {
            if let Ok(mut known) = self.metas.lock() {
                known.insert(id, Arc::from(json.into_bytes()));
            }
        }
        Ok(())
    }

    /// Runs a transaction of `entries` writes on its own connection, with a time budget that
    /// grows with it: a hundred thousand writes take Redis a while, and the shared connection
    /// would time out and report a failure for a transaction Redis then applies.
    async fn run_big(&self, batch: Batch, entries: usize) -> Result<(), StoreError> {
        let budget = self.op_timeout + Duration::from_millis(entries as u64 / 10);
        let mut conn = self.conn.long_conn(budget).await?;
        match timeout(budget, batch.query::<()>(&mut conn)).await {
            Ok(result) => Ok(result?),
            Err(_elapsed) => Err(StoreError::Timeout(budget)),
        }
    }

    /// Sentinel and Cluster: waits (up to a second) until a replica of each master has the
    /// writes, so an acknowledged edit survives the master's crash and the failover that
    /// follows. Best effort: a master whose replicas lag keeps the edit alone (logged).
    async fn wait_for_replica(&self) {
        if !self.conn.is_replicated() {
            return;
        }
        let wait = self.op_timeout.min(Duration::from_secs(1));
        match self.conn.wait_for_replicas(wait).await {
            Ok(lagging) if lagging.is_empty() => {}
            Ok(lagging) => warn!(
                masters = %lagging.join(","),
                waited = ?wait,
                "edit written to the master, not yet on a replica"
            ),
            Err(error) => warn!(%error, "edit written; replica acknowledgement unknown"),
        }
    }

    /// Removes every spelling of each rule from `tenant`'s `list`; returns how many were present.
    pub async fn remove(
        &self,
        tenant: Option<&Tenant>,
        list: ListKind,
        patterns: &[RulePattern],
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        for pattern in patterns {
            let mut keys = self.spellings(tenant, list, pattern).await?;
            let canonical = self.key(tenant, list, &pattern.to_string());
            if !keys.contains(&canonical) {
                keys.push(canonical.clone());
            }
            let text = pattern.to_string();
            let mut batch = Batch::new();
            batch.add(Cmd::del(&keys));
            batch.add(Cmd::hdel(self.bulk_key(tenant, list, &text), &text));
            batch.add_ignored(Cmd::del(self.alias_key(&canonical)));
            batch.then();
            for key in &keys {
                batch.add_ignored(Cmd::publish(self.changes_channel(), key));
            }
            let mut conn = self.conn().await?;
            let (deleted, from_bulk): (usize, usize) = self.run(batch.query(&mut conn)).await?;
            if deleted + from_bulk > 0 {
                removed += 1;
            }
        }
        self.wait_for_replica().await;
        Ok(removed)
    }

    /// Every key of `tenant`'s `list` whose rule text means `pattern`: the canonical key, the
    /// spellings the servers' sync recorded in the rule's alias set, and (on keyspaces small
    /// enough to walk in well under a second) any other hand-typed spelling found by SCAN MATCH
    /// on the rule's national digits in order.
    async fn spellings(
        &self,
        tenant: Option<&Tenant>,
        list: ListKind,
        pattern: &RulePattern,
    ) -> Result<Vec<String>, StoreError> {
        let canonical = self.key(tenant, list, &pattern.to_string());
        let mut conn = self.conn().await?;
        let mut batch = Batch::new();
        // DBSIZE on a cluster is the sum over its masters.
        batch
            .add(Cmd::smembers(self.alias_key(&canonical)))
            .add(redis::cmd("DBSIZE"));
        let (members, dbsize): (Vec<String>, u64) = self.run(batch.query(&mut conn)).await?;
        let mut candidates = members;
        candidates.push(canonical);
        if dbsize <= self.spelling_scan_max_keys {
            let mut glob = glob_escape(&self.prefix);
            glob.push(':');
            if let Some(t) = tenant {
                glob.push_str("tenant:");
                glob.push_str(&glob_case_insensitive(t.as_str()));
                glob.push(':');
            }
            glob.push_str(list.as_str());
            glob.push_str(":*");
            for d in anchor_digits(pattern) {
                glob.push(char::from(d));
                glob.push('*');
            }
            candidates.extend(self.scan(&glob).await?);
        }
        candidates.sort_unstable();
        candidates.dedup();
        Ok(candidates
            .into_iter()
            .filter(|key| {
                self.parse_key(key)
                    .is_some_and(|(key_tenant, key_list, text)| {
                        key_tenant.as_ref() == tenant
                            && key_list == list
                            && RulePattern::parse(text, &self.normalizer)
                                .is_ok_and(|p| p == *pattern)
                    })
            })
            .collect())
    }

    /// The set of other spellings of the rule whose canonical key is `canonical`
    /// (`callguard:alias:block:+7...`); kept by every server's sync, read by `put`/`remove`.
    pub fn alias_key(&self, canonical: &str) -> String {
        let rest = canonical
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(':'))
            .unwrap_or(canonical);
        format!("{}:alias:{rest}", self.prefix)
    }

    /// The canonical key of the rule a key spells, with the rule's identity; `None` for keys
    /// that are not rules or whose text does not parse.
    pub fn rule_of_key(&self, key: &str) -> Option<(RuleKey, String)> {
        let (tenant, list, text) = self.parse_key(key)?;
        let pattern = RulePattern::parse(text, &self.normalizer).ok()?;
        let canonical = self.key(tenant.as_ref(), list, &pattern.to_string());
        Some(((tenant, list, pattern), canonical))
    }

    /// [`RedisStore::fetch_rules`] for changed keys that are rule keys or bulk-layout buckets
    /// (a bucket stands for every rule it now holds: one HKEYS each).
    pub async fn fetch_changes(
        &self,
        changed: &[String],
    ) -> Result<Vec<(RuleKey, Option<Entry>)>, StoreError> {
        let (buckets, mut keys): (Vec<&String>, Vec<String>) = (
            changed
                .iter()
                .filter(|k| self.parse_bulk_key(k).is_some())
                .collect(),
            changed
                .iter()
                .filter(|k| self.parse_key(k).is_some())
                .cloned()
                .collect(),
        );
        if !buckets.is_empty() {
            let mut conn = self.conn().await?;
            for chunk in buckets.chunks(BUCKET_BATCH) {
                let mut batch = Batch::new();
                for key in chunk {
                    batch.add(Cmd::hkeys(*key));
                }
                let fields: Vec<Vec<String>> = self.run(batch.query(&mut conn)).await?;
                for (bucket, fields) in chunk.iter().zip(fields) {
                    let Some((tenant, list)) = self.parse_bulk_key(bucket) else {
                        continue;
                    };
                    keys.extend(fields.iter().map(|f| self.key(tenant.as_ref(), list, f)));
                }
            }
        }
        self.fetch_rules(&keys).await
    }

    /// The current state of the rules that `changed` keys spell: for each rule, every spelling
    /// (canonical key, alias set, the changed keys) is read and merged as a snapshot compile
    /// would merge them; `None` when no spelling is left. Keeps the alias sets in step.
    pub async fn fetch_rules(
        &self,
        changed: &[String],
    ) -> Result<Vec<(RuleKey, Option<Entry>)>, StoreError> {
        let mut rules: HashMap<String, (RuleKey, Vec<String>)> = HashMap::new();
        for key in changed {
            if let Some((rule, canonical)) = self.rule_of_key(key) {
                let spot = rules
                    .entry(canonical.clone())
                    .or_insert_with(|| (rule, vec![canonical.clone()]));
                if *key != canonical {
                    spot.1.push(key.clone());
                }
            }
        }
        if rules.is_empty() {
            return Ok(Vec::new());
        }
        let canonicals: Vec<String> = rules.keys().cloned().collect();
        // Per rule: its alias set, and its field in the bulk layout's bucket.
        let mut batch = Batch::new();
        for c in &canonicals {
            batch.add(Cmd::smembers(self.alias_key(c)));
            if let Some(((tenant, list, pattern), _)) = rules.get(c) {
                let text = pattern.to_string();
                batch.add(Cmd::hget(
                    self.bulk_key(tenant.as_ref(), *list, &text),
                    text,
                ));
            }
        }
        let mut conn = self.conn().await?;
        let replies: Vec<Value> = self.run(batch.query(&mut conn)).await?;
        let mut in_bulk: HashMap<String, Vec<u8>> = HashMap::new();
        let mut replies = replies.into_iter();
        for c in &canonicals {
            let (Some(members), Some(bulk_value)) = (replies.next(), replies.next()) else {
                break;
            };
            let members: Vec<String> =
                redis::from_redis_value(members).map_err(redis::RedisError::from)?;
            let bulk_value: Option<Vec<u8>> =
                redis::from_redis_value(bulk_value).map_err(redis::RedisError::from)?;
            if let Some(spot) = rules.get_mut(c) {
                spot.1.extend(members);
                spot.1.sort_unstable();
                spot.1.dedup();
            }
            if let Some(value) = bulk_value {
                in_bulk.insert(c.clone(), value);
            }
        }
        let ids: Vec<&str> = in_bulk
            .values()
            .filter_map(|v| bulk::referenced_meta(v))
            .collect();
        let metas = self.metas_for(&ids).await?;
        let all: Vec<String> = rules
            .values()
            .flat_map(|(_, k)| k.iter().cloned())
            .collect();
        let mut found: HashMap<String, Entry> = HashMap::new();
        for batch in all.chunks(BATCH) {
            for (key, entry) in self.fetch(batch).await? {
                if let Some(entry) = entry {
                    found.insert(key, entry);
                }
            }
        }
        let mut aliases = Batch::new();
        let mut out = Vec::with_capacity(rules.len());
        for (canonical, (rule, keys)) in rules {
            let mut merged = in_bulk.get(&canonical).and_then(|value| {
                let (tenant, list, pattern) = &rule;
                self.bulk_entry(
                    tenant.as_ref(),
                    *list,
                    pattern.to_string().as_bytes(),
                    value,
                    &metas,
                    &mut ValueCache::default(),
                )
                .map_err(|error| warn!(key = %canonical, %error, "ignoring unusable bulk rule"))
                .ok()
            });
            for key in &keys {
                let entry = found.remove(key);
                if *key != canonical {
                    let alias = self.alias_key(&canonical);
                    match entry {
                        Some(_) => aliases.add_ignored(Cmd::sadd(alias, key)),
                        None => aliases.add_ignored(Cmd::srem(alias, key)),
                    };
                }
                if let Some(e) = entry
                    && merged.as_ref().is_none_or(|m| e.outlives(m))
                {
                    merged = Some(e);
                }
            }
            out.push((rule, merged));
        }
        // An empty pipeline is an error in the client, not a no-op.
        if !aliases.is_empty() {
            self.run(aliases.query::<()>(&mut conn)).await?;
        }
        Ok(out)
    }

    /// Every key matching the glob `pattern` (SCAN, so the server is never blocked; on each
    /// master of a cluster).
    async fn scan(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        for conn in self.nodes().await? {
            self.scan_node(conn, pattern, &mut keys).await?;
        }
        Ok(keys)
    }

    /// One connection per master (see [`RedisConn::nodes`]).
    async fn nodes(&self) -> Result<Vec<Conn>, StoreError> {
        let result = self.conn.nodes().await;
        if result.is_err() {
            self.conn.failed();
        }
        result
    }

    async fn scan_node(
        &self,
        mut conn: Conn,
        pattern: &str,
        keys: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .run(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(&mut conn),
                )
                .await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Reads every entry.
    pub async fn load(&self) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        self.load_each(|_, e| out.push(e)).await?;
        Ok(out)
    }

    /// Reads every entry with its key (SCAN, then pipelined MGET (+PTTL) for rule keys and
    /// HGETALL for buckets of the bulk layout, in batches), handing each to `each` (with its
    /// rule key, or its bucket's key) as it arrives so a 10-million-rule load never holds them
    /// all at once. Records the non-canonical spellings it meets in their rules' alias sets.
    pub async fn load_each(&self, mut each: impl FnMut(&str, Entry)) -> Result<(), StoreError> {
        // SCAN runs ahead in its own task and several fetches are in flight at once, so Redis
        // works on the next batches while this task decodes the current one.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ScanBatch, StoreError>>(4);
        let with_ttl = self.any_expiring_keys().await?;
        let metas = self.read_metas().await?;
        let scanner = self.clone();
        let producer = tokio::spawn(async move { scanner.scan_batches(tx, with_ttl).await });
        let mut fetched = std::pin::pin!(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|batch| (batch, rx))
        }));
        let mut cache = ValueCache::default();
        let mut conn = self.conn().await?;
        let mut text = String::new();
        let result = async {
            while let Some(batch) = fetched.next().await {
                let (keys, replies) = match batch? {
                    ScanBatch::Keys(keys, replies) => (keys, replies),
                    ScanBatch::Buckets(buckets) => {
                        for (i, (key, reply)) in buckets.iter().enumerate() {
                            self.decode_bucket(key, reply, &metas, &mut cache, |entry| {
                                each(key, entry)
                            });
                            if i % YIELD_BUCKETS == YIELD_BUCKETS - 1 {
                                tokio::task::yield_now().await;
                            }
                        }
                        continue;
                    }
                };
                let mut aliases = Batch::new();
                for (i, (key, entry)) in self
                    .decode(keys, &replies, &mut cache)
                    .into_iter()
                    .enumerate()
                {
                    if i % YIELD_KEYS == YIELD_KEYS - 1 {
                        tokio::task::yield_now().await;
                    }
                    let Some(entry) = entry else { continue };
                    // Most keys are canonical: check the rule text without building the key.
                    text.clear();
                    let _infallible = write!(text, "{}", entry.pattern);
                    let plainly_canonical = entry.tenant.is_none()
                        && self.parse_key(&key).is_some_and(|(_, _, t)| t == text);
                    if !plainly_canonical {
                        let canonical = self.key(
                            entry.tenant.as_ref(),
                            entry.list,
                            &entry.pattern.to_string(),
                        );
                        if canonical != key {
                            aliases.add_ignored(Cmd::sadd(self.alias_key(&canonical), &key));
                        }
                    }
                    each(&key, entry);
                }
                if !aliases.is_empty() {
                    self.run(aliases.query::<()>(&mut conn)).await?;
                }
            }
            Ok(())
        }
        .await;
        producer.abort();
        result
    }

    /// Walks the keyspace (of every master) for `load_each`, one SCAN step and its fetch per
    /// batch, into `tx`; the receiver decodes one batch while this task fetches the next.
    async fn scan_batches(
        &self,
        tx: tokio::sync::mpsc::Sender<Result<ScanBatch, StoreError>>,
        with_ttl: bool,
    ) {
        let nodes = match self.nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                let _closed = tx.send(Err(e)).await;
                return;
            }
        };
        for conn in nodes {
            if let Err(e) = self.scan_node_batches(conn, &tx, with_ttl).await {
                let _closed = tx.send(Err(e)).await;
                return;
            }
        }
    }

    /// One node's part of [`RedisStore::scan_batches`]; Ok also when the receiver is gone.
    async fn scan_node_batches(
        &self,
        mut conn: Conn,
        tx: &tokio::sync::mpsc::Sender<Result<ScanBatch, StoreError>>,
        with_ttl: bool,
    ) -> Result<(), StoreError> {
        let pattern = format!("{}:*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .run(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(LOAD_BATCH)
                        .query_async(&mut conn),
                )
                .await?;
            let (buckets, keys): (Vec<String>, Vec<String>) = keys
                .into_iter()
                .partition(|k| self.parse_bulk_key(k).is_some());
            // The values right after their keys: Redis still has the entries the SCAN walked
            // in its caches (fetching them later, in hash order, costs it twice the time).
            let replies = self.fetch_raw_on(&conn, &keys, with_ttl).await?;
            if tx.send(Ok(ScanBatch::Keys(keys, replies))).await.is_err() {
                return Ok(());
            }
            for chunk in buckets.chunks(BUCKET_BATCH) {
                let mut pipe = redis::pipe();
                for key in chunk {
                    pipe.hgetall(key);
                }
                let replies: Vec<Value> = self.run(pipe.query_async(&mut conn)).await?;
                let fetched = chunk.iter().cloned().zip(replies).collect();
                if tx.send(Ok(ScanBatch::Buckets(fetched))).await.is_err() {
                    return Ok(());
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Every metadata record of the bulk layout (one HGETALL), also kept for later edits.
    async fn read_metas(&self) -> Result<HashMap<String, Arc<[u8]>>, StoreError> {
        let mut conn = self.conn().await?;
        let all: HashMap<String, Vec<u8>> = self
            .run(Cmd::hgetall(self.bulk_meta_key()).query_async(&mut conn))
            .await?;
        let all: HashMap<String, Arc<[u8]>> = all
            .into_iter()
            .map(|(id, json)| (id, Arc::from(json)))
            .collect();
        if let Ok(mut known) = self.metas.lock() {
            known.extend(all.iter().map(|(id, json)| (id.clone(), json.clone())));
        }
        Ok(all)
    }

    /// The metadata records `ids` name, from what was read before or else from Redis.
    async fn metas_for(&self, ids: &[&str]) -> Result<HashMap<String, Arc<[u8]>>, StoreError> {
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        if let Ok(known) = self.metas.lock() {
            for id in ids {
                match known.get(*id) {
                    Some(json) => {
                        out.insert((*id).to_owned(), json.clone());
                    }
                    None => missing.push(*id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let mut conn = self.conn().await?;
        let found: Vec<Option<Vec<u8>>> = self
            .run(
                redis::cmd("HMGET")
                    .arg(self.bulk_meta_key())
                    .arg(&missing)
                    .query_async(&mut conn),
            )
            .await?;
        let mut known = self.metas.lock().ok();
        for (id, json) in missing.into_iter().zip(found) {
            if let Some(json) = json {
                let json: Arc<[u8]> = Arc::from(json);
                if let Some(known) = known.as_mut() {
                    known.insert(id.to_owned(), json.clone());
                }
                out.insert(id.to_owned(), json);
            }
        }
        Ok(out)
    }

    /// True unless Redis says no key in the database has a TTL (`INFO keyspace`, `expires=0`,
    /// on every master): then a load can skip asking PTTL key by key, a third of its Redis work.
    async fn any_expiring_keys(&self) -> Result<bool, StoreError> {
        let db = format!("db{}:", self.db());
        for mut conn in self.nodes().await? {
            let info: String = self
                .run(redis::cmd("INFO").arg("keyspace").query_async(&mut conn))
                .await?;
            let none = info
                .lines()
                .find_map(|l| l.strip_prefix(db.as_str()))
                .and_then(|fields| {
                    fields
                        .split(',')
                        .find_map(|f| f.strip_prefix("expires="))
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
                .is_some_and(|expires| expires == 0);
            if !none {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads the given keys; `None` for keys that are gone, are not entries or hold another type.
    pub async fn fetch(&self, keys: &[String]) -> Result<Vec<(String, Option<Entry>)>, StoreError> {
        let replies = self.fetch_raw(keys, true).await?;
        Ok(self.decode(keys.to_vec(), &replies, &mut ValueCache::default()))
    }

    /// The keys among `keys` that name rules (a SCAN also meets alias sets, the call log...).
    fn rule_keys<'k>(&self, keys: &'k [String]) -> Vec<&'k String> {
        keys.iter()
            .filter(|k| self.parse_key(k).is_some())
            .collect()
    }

    /// Value and TTL of every rule key among `keys`, in one pipelined round trip: one MGET
    /// (a key of another type reads as missing) and, when `with_ttl`, a PTTL per key; without,
    /// every TTL reads as "none". Replies come as `[value, ttl]` per rule key.
    async fn fetch_raw(
        &self,
        keys: &[String],
        with_ttl: bool,
    ) -> Result<Vec<redis::RedisResult<Value>>, StoreError> {
        let rule_keys = self.rule_keys(keys);
        if rule_keys.is_empty() {
            return Ok(Vec::new());
        }
        // A cluster client splits the MGET by slot and puts the replies back in order.
        let mut batch = Batch::new();
        batch.add(redis::cmd("MGET").arg(&rule_keys).to_owned());
        if with_ttl {
            for key in &rule_keys {
                batch.add(Cmd::pttl(*key));
            }
        }
        let mut conn = self.conn().await?;
        let mut replies: Vec<Value> = self.run(batch.query(&mut conn)).await?;
        let ttls = replies.split_off(1.min(replies.len()));
        let values = match replies.pop() {
            Some(Value::Array(values)) => values,
            _ => Vec::new(),
        };
        let mut out = Vec::with_capacity(2 * rule_keys.len());
        for (i, value) in values.into_iter().enumerate() {
            out.push(Ok(value));
            out.push(Ok(if with_ttl {
                ttls.get(i).cloned().unwrap_or(Value::Int(-2))
            } else {
                Value::Int(-1)
            }));
        }
        Ok(out)
    }

    /// [`RedisStore::fetch_raw`] for keys a SCAN on `node` returned. A cluster node holds
    /// them in many slots, which no MGET may span, and splitting one MGET per slot costs a
    /// request per key: a pipeline of GETs on the node itself is one round trip. A key that
    /// moved meanwhile (MOVED) fails the load, which the sync retries.
    async fn fetch_raw_on(
        &self,
        node: &Conn,
        keys: &[String],
        with_ttl: bool,
    ) -> Result<Vec<redis::RedisResult<Value>>, StoreError> {
        if !self.conn.is_cluster() {
            return self.fetch_raw(keys, with_ttl).await;
        }
        let rule_keys = self.rule_keys(keys);
        if rule_keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for key in &rule_keys {
            pipe.get(*key);
            if with_ttl {
                pipe.pttl(*key);
            }
        }
        let mut conn = node.clone();
        let replies: Vec<redis::RedisResult<Value>> = self.run(pipe.query_async(&mut conn)).await?;
        // A key of another type reads as missing (as MGET has it); anything else (MOVED
        // while slots migrate, CLUSTERDOWN) fails the load rather than leave rules out.
        if let Some(Err(e)) = replies
            .iter()
            .find(|r| r.as_ref().is_err_and(|e| e.code() != Some("WRONGTYPE")))
        {
            return Err(StoreError::Redis(e.clone()));
        }
        if with_ttl {
            return Ok(replies);
        }
        Ok(replies
            .into_iter()
            .flat_map(|value| [value, Ok(Value::Int(-1))])
            .collect())
    }

    /// Turns [`RedisStore::fetch_raw`] replies into entries; `None` for keys that are gone, are
    /// not entries or hold another type. Pure CPU; `cache` carries parsed values across batches.
    fn decode(
        &self,
        keys: Vec<String>,
        replies: &[redis::RedisResult<Value>],
        cache: &mut ValueCache,
    ) -> Vec<(String, Option<Entry>)> {
        // Whole milliseconds, like the TTL: an expiry then fits a compact snapshot slot.
        let now = SystemTime::UNIX_EPOCH
            + Duration::from_millis(crate::rules::unix_ms(SystemTime::now()));
        let mut out = Vec::with_capacity(keys.len());
        let mut i = 0;
        for key in keys {
            let Some((tenant, list, text)) = self.parse_key(&key) else {
                out.push((key, None));
                continue;
            };
            let value = replies.get(2 * i).and_then(|r| r.as_ref().ok());
            let ttl = replies.get(2 * i + 1).and_then(|r| r.as_ref().ok());
            i += 1;
            let entry = match (value, ttl) {
                (Some(Value::BulkString(bytes)), Some(Value::Int(ttl_ms))) if *ttl_ms != -2 => {
                    let expires_at = u64::try_from(*ttl_ms)
                        .ok()
                        .map(|ms| now + Duration::from_millis(ms));
                    let built = cache
                        .template(list, bytes, bytes, &self.normalizer)
                        .and_then(|template| self.with_rule(template, tenant, text, expires_at));
                    match built {
                        Ok(entry) => Some(entry),
                        Err(error) => {
                            // One bad hand-typed key must not stop the other rules from loading.
                            warn!(key = %key, %error, "ignoring unusable rule");
                            None
                        }
                    }
                }
                _ => None,
            };
            out.push((key, entry));
        }
        out
    }

    /// `template` (a parsed value) made the rule `text` of `tenant`, expiring at `expires_at`.
    fn with_rule(
        &self,
        template: Entry,
        tenant: Option<Tenant>,
        text: &str,
        expires_at: Option<SystemTime>,
    ) -> Result<Entry, String> {
        let pattern = RulePattern::parse(text, &self.normalizer).map_err(|e| e.to_string())?;
        Ok(Entry {
            tenant,
            pattern,
            expires_at,
            ..template
        })
    }

    /// Hands each rule of a bulk-layout bucket (an `HGETALL` reply) to `each`; fields that are
    /// not rules, or name metadata that does not exist, are skipped with a warning.
    fn decode_bucket(
        &self,
        key: &str,
        reply: &Value,
        metas: &HashMap<String, Arc<[u8]>>,
        cache: &mut ValueCache,
        mut each: impl FnMut(Entry),
    ) {
        let Some((tenant, list)) = self.parse_bulk_key(key) else {
            return;
        };
        let mut bad = 0usize;
        let mut last_error = String::new();
        for_each_field(reply, |field, value| {
            match self.bulk_entry(tenant.as_ref(), list, field, value, metas, cache) {
                Ok(entry) => each(entry),
                Err(error) => {
                    bad += 1;
                    last_error = error;
                }
            }
        });
        if bad > 0 {
            warn!(key = %key, rules = bad, error = %last_error, "ignoring unusable rules of a bulk bucket");
        }
    }

    /// The rule a bulk-layout field stands for.
    fn bulk_entry(
        &self,
        tenant: Option<&Tenant>,
        list: ListKind,
        field: &[u8],
        value: &[u8],
        metas: &HashMap<String, Arc<[u8]>>,
        cache: &mut ValueCache,
    ) -> Result<Entry, String> {
        let text = std::str::from_utf8(field).map_err(|_| "rule text is not UTF-8".to_owned())?;
        let meta = match bulk::referenced_meta(value) {
            Some(id) => metas
                .get(id)
                .map(|json| &json[..])
                .ok_or_else(|| format!("metadata {id:?} missing from {}", self.bulk_meta_key()))?,
            None => value,
        };
        let template = cache.template(list, value, meta, &self.normalizer)?;
        self.with_rule(template, tenant.cloned(), text, None)
    }

    /// Turns on the keyspace notifications callguard needs (`K$ghx`), keeping whatever flags the
    /// server already has. Ok(false) when the server refuses CONFIG (managed Redis, ACLs): the
    /// caller then falls back to periodic resync. An unreachable server (or, mid-failover, a
    /// master) is an error, not a refusal: the caller retries rather than poll for good.
    pub async fn enable_keyspace_notifications(&self) -> Result<bool, StoreError> {
        // Notifications stay on the node that holds the key: every master needs them.
        for conn in self.nodes().await? {
            if !self.enable_keyspace_notifications_on(conn).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn enable_keyspace_notifications_on(&self, mut conn: Conn) -> Result<bool, StoreError> {
        // A reply with an error code (NOPERM, ERR unknown command...) is a refusal.
        let refused = |e: &StoreError| matches!(e, StoreError::Redis(r) if r.code().is_some());
        let current: Vec<String> = match self
            .run(
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("notify-keyspace-events")
                    .query_async(&mut conn),
            )
            .await
        {
            Ok(current) => current,
            Err(e) if refused(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        let flags = current.get(1).cloned().unwrap_or_default();
        let merged = merge_notify_flags(&flags);
        if merged == flags {
            return Ok(true);
        }
        match self
            .run(
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("notify-keyspace-events")
                    .arg(&merged)
                    .query_async::<()>(&mut conn),
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if refused(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The channel nodes share flood counts on, `<prefix>:flood`.
    pub fn flood_channel(&self) -> String {
        format!("{}:flood", self.prefix)
    }

    /// Publishes `marker` on the changes channel (callguard's own messages there are keys;
    /// a marker is not one, so other servers ignore it).
    pub async fn publish_marker(&self, marker: &str) -> Result<(), StoreError> {
        self.publish(&self.changes_channel(), marker).await
    }

    /// Publishes one batch of flood counts.
    pub async fn publish_flood(&self, message: &str) -> Result<(), StoreError> {
        self.publish(&self.flood_channel(), message).await
    }

    async fn publish(&self, channel: &str, message: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        self.run(Cmd::publish(channel, message).query_async::<()>(&mut conn))
            .await
    }

    /// The call log stream key, `<prefix>:calls`.
    pub fn calls_key(&self) -> String {
        format!("{}:calls", self.prefix)
    }

    /// Appends call records to the capped stream (`XADD MAXLEN ~`), one pipeline per batch.
    pub async fn append_calls(
        &self,
        records: &[crate::calllog::CallRecord],
        max_entries: u64,
    ) -> Result<(), StoreError> {
        let key = self.calls_key();
        let mut pipe = redis::pipe();
        for r in records {
            let json = serde_json::to_string(r).unwrap_or_default();
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(max_entries)
                .arg("*")
                .arg("call")
                .arg(json)
                .ignore();
        }
        let mut conn = self.conn().await?;
        self.run(pipe.query_async::<()>(&mut conn)).await
    }

    /// Call records after stream id `after` (exclusive; `None` = from `since_ms`), oldest
    /// first, with the id of the last one; `block_ms` waits for new ones (XREAD BLOCK).
    pub async fn read_calls(
        &self,
        since_ms: u64,
        after: Option<&str>,
        block_ms: Option<u64>,
    ) -> Result<(Vec<crate::calllog::CallRecord>, Option<String>), StoreError> {
        let key = self.calls_key();
        let mut conn = self.conn().await?;
        let reply: Value = match (after, block_ms) {
            (Some(id), Some(ms)) => {
                let cmd = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1000)
                    .arg("BLOCK")
                    .arg(ms)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(id)
                    .to_owned();
                // BLOCK may legitimately outlast the per-operation timeout.
                match timeout(
                    Duration::from_millis(ms) + self.op_timeout,
                    cmd.query_async(&mut conn),
                )
                .await
                {
                    Ok(r) => r?,
                    Err(_elapsed) => return Err(StoreError::Timeout(self.op_timeout)),
                }
            }
            _ => {
                let start = match after {
                    Some(id) => format!("({id}"),
                    None => since_ms.to_string(),
                };
                self.run(
                    redis::cmd("XRANGE")
                        .arg(&key)
                        .arg(start)
                        .arg("+")
                        .query_async(&mut conn),
                )
                .await?
            }
        };
        let mut records = Vec::new();
        let mut last = None;
        collect_stream_entries(&reply, &mut records, &mut last);
        Ok((records, last))
    }

    /// The newest `limit` call records since `since_ms` that `keep` accepts, oldest first, and
    /// whether older accepted ones were left out. Reads the stream backwards a page at a time
    /// (XREVRANGE ... COUNT), so a short read of a long window reads only its newest part.
    pub async fn newest_calls(
        &self,
        since_ms: u64,
        limit: usize,
        keep: impl Fn(&crate::calllog::CallRecord) -> bool,
    ) -> Result<(Vec<crate::calllog::CallRecord>, bool), StoreError> {
        const PAGE: usize = 1000;
        let key = self.calls_key();
        let mut conn = self.conn().await?;
        let mut newest_first = Vec::new();
        let mut end = "+".to_owned();
        loop {
            let reply: Value = self
                .run(
                    redis::cmd("XREVRANGE")
                        .arg(&key)
                        .arg(&end)
                        .arg(since_ms)
                        .arg("COUNT")
                        .arg(PAGE)
                        .query_async(&mut conn),
                )
                .await?;
            let mut page = Vec::new();
            let mut oldest_id = None;
            collect_stream_entries(&reply, &mut page, &mut oldest_id);
            let entries = match &reply {
                Value::Array(items) => items.len(),
                _ => 0,
            };
            for record in page.into_iter().filter(|r| keep(r)) {
                if newest_first.len() == limit {
                    newest_first.reverse();
                    return Ok((newest_first, true));
                }
                newest_first.push(record);
            }
            match oldest_id {
                Some(id) if entries == PAGE => end = format!("({id}"),
                _ => break,
            }
        }
        newest_first.reverse();
        Ok((newest_first, false))
    }

    /// Opens a pub/sub connection to one node (PUBLISH reaches every node of a cluster).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, StoreError> {
        let result = self.conn.pubsub().await;
        if result.is_err() {
            self.conn.failed();
        }
        result
    }
}

/// A value is callguard's JSON when it parses as such; anything else is the reason text itself.
/// The digits every spelling of `pattern` contains in order: its national digits (past a
/// country code of up to 3 digits), at most 7 of them; none for ranges and words.
fn anchor_digits(pattern: &RulePattern) -> Vec<u8> {
    let lead: Vec<u8> = match pattern {
        RulePattern::Exact(CallerNumber::E164(e)) => e.to_string().into_bytes().split_off(1),
        RulePattern::Mask(mask) => mask
            .elems
            .iter()
            .take_while(|s| s.count_ones() == 1)
            .map(|s| b'0' + s.trailing_zeros() as u8)
            .collect(),
        _ => Vec::new(),
    };
    let national = lead.get(3..).unwrap_or_default();
    national[national.len().saturating_sub(7)..].to_vec()
}

/// `acme` -> `[aA][cC][mM][eE]`: tenant names are case-folded, hand-typed keys may not be.
fn glob_case_insensitive(name: &str) -> String {
    let mut out = String::with_capacity(name.len() * 4);
    for c in name.chars() {
        if c.is_ascii_alphabetic() {
            out.push('[');
            out.push(c.to_ascii_lowercase());
            out.push(c.to_ascii_uppercase());
            out.push(']');
        } else {
            out.push_str(&glob_escape(&c.to_string()));
        }
    }
    out
}

/// Walks an XRANGE reply (a list of `[id, [field, value...]]`) or an XREAD reply (the same,
/// nested under the stream name), collecting the `call` fields that parse.
fn collect_stream_entries(
    value: &Value,
    records: &mut Vec<crate::calllog::CallRecord>,
    last: &mut Option<String>,
) {
    let Value::Array(items) = value else { return };
    for item in items {
        let Value::Array(parts) = item else { continue };
        let [Value::BulkString(head), Value::Array(inner)] = parts.as_slice() else {
            continue;
        };
        if matches!(inner.first(), Some(Value::Array(_))) {
            // XREAD: [stream name, [entries...]]
            collect_stream_entries(&parts[1], records, last);
            continue;
        }
        // XRANGE entry: [id, [field, value, ...]]
        *last = Some(String::from_utf8_lossy(head).into_owned());
        for pair in inner.chunks(2) {
            if let [Value::BulkString(name), Value::BulkString(json)] = pair
                && name == b"call"
                && let Ok(r) = serde_json::from_slice(json)
            {
                records.push(r);
            }
        }
    }
}

/// Parsed values by their bytes: a bulk import writes one value for millions of keys, so a
/// cold load parses it once, not once per key.
#[derive(Default)]
struct ValueCache {
    last: Option<(ListKind, Vec<u8>, Result<Entry, String>)>,
}

impl ValueCache {
    /// The entry a value stands for (pattern, tenant and expiry still to fill in): `stored` is
    /// the value as stored (the cache key), `meta` the metadata it is or refers to.
    fn template(
        &mut self,
        list: ListKind,
        stored: &[u8],
        meta: &[u8],
        normalizer: &Normalizer,
    ) -> Result<Entry, String> {
        if let Some((l, b, parsed)) = &self.last
            && *l == list
            && b.as_slice() == stored
        {
            return parsed.clone();
        }
        let text = String::from_utf8_lossy(meta);
        // "invalid" parses to a placeholder pattern; the caller sets the key's own.
        let parsed = entry_from_parts(normalizer, None, list, "invalid", parse_value(&text), None)
            .map_err(|e| e.to_string());
        self.last = Some((list, stored.to_vec(), parsed.clone()));
        parsed
    }
}

/// Each entry with its canonical key and the other keys of its rule that exist (`stale`, by
/// canonical key), as [`RedisStore::queue_writes`] takes them.
fn with_stale<'a>(
    entries: impl Iterator<Item = &'a Entry>,
    canonical: &'a [String],
    stale: &'a HashMap<String, Vec<String>>,
) -> Vec<(&'a Entry, &'a String, &'a [String])> {
    entries
        .zip(canonical)
        .map(|(entry, key)| (entry, key, stale.get(key).map_or(&[][..], Vec::as_slice)))
        .collect()
}

/// The JSON value a rule is stored with (its [`EntryMeta`]).
fn encode_meta(entry: &Entry) -> Result<String, StoreError> {
    serde_json::to_string(&EntryMeta::of(entry)).map_err(|e| {
        StoreError::Redis(redis::RedisError::from((
            redis::ErrorKind::Client,
            "cannot encode entry",
            e.to_string(),
        )))
    })
}

/// Calls `each(field, value)` for every pair of an `HGETALL` reply (RESP2 array or RESP3 map).
fn for_each_field(reply: &Value, mut each: impl FnMut(&[u8], &[u8])) {
    match reply {
        Value::Array(items) => {
            for pair in items.chunks_exact(2) {
                if let [Value::BulkString(f), Value::BulkString(v)] = pair {
                    each(f, v);
                }
            }
        }
        Value::Map(pairs) => {
            for pair in pairs {
                if let (Value::BulkString(f), Value::BulkString(v)) = pair {
                    each(f, v);
                }
            }
        }
        _ => {}
    }
}

fn parse_value(value: &str) -> EntryMeta {
    if value.starts_with('{')
        && let Ok(meta) = serde_json::from_str::<EntryMeta>(value)
    {
        return meta;
    }
    EntryMeta {
        reason: value.to_owned(),
        ..EntryMeta::default()
    }
}

/// Adds K (keyspace channel), $ (string commands), g (DEL, EXPIRE, RENAME...), h (hash
/// commands: the bulk layout's buckets) and x (expired) to the server's flags. `A` already
/// covers `$ghx`.
fn merge_notify_flags(current: &str) -> String {
    let mut flags = current.to_owned();
    let has_all = current.contains('A');
    for flag in ['K', '$', 'g', 'h', 'x'] {
        let covered = current.contains(flag) || (has_all && flag != 'K');
        if !covered {
            flags.push(flag);
        }
    }
    flags
}

/// Escapes Redis glob metacharacters so a prefix matches literally.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_flags_merge() {
        assert_eq!(merge_notify_flags(""), "K$ghx");
        assert_eq!(merge_notify_flags("Ex"), "ExK$gh");
        assert_eq!(merge_notify_flags("AK"), "AK");
        assert_eq!(merge_notify_flags("KA"), "KA");
    }

    #[test]
    fn value_formats() {
        assert_eq!(parse_value("collectors").reason, "collectors");
        let meta = parse_value(r#"{"reason":"x","added_by":"root@pbx"}"#);
        assert_eq!(meta.reason, "x");
        assert_eq!(meta.added_by.as_deref(), Some("root@pbx"));
        // Looks like JSON but is not ours: keep it as text.
        assert_eq!(parse_value("{spam}").reason, "{spam}");
    }

    #[tokio::test]
    async fn identity_has_no_password() {
        let store = RedisStore::connect(
            "redis://cg:s3cret@127.0.0.1:1/3",
            &RedisSettings::default(),
            Normalizer::default(),
        )
        .await;
        let identity = store.map(|s| s.identity()).unwrap_or_default();
        assert!(identity.contains("127.0.0.1"), "{identity}");
        assert!(identity.contains("db3"), "{identity}");
        assert!(!identity.contains("s3cret"), "{identity}");
    }

    #[test]
    fn glob_escaping() {
        assert_eq!(glob_escape("cg*[x]"), "cg\\*\\[x\\]");
    }
}
