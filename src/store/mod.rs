//! Where the lists live: the [`Store`] (Redis or the embedded local file), its record format,
//! and the sync that turns store contents into published snapshots.
//! Decisions never call into this module; they read the snapshot it publishes.

pub mod bulk;
pub mod cache;
pub mod local;
pub mod redis;
pub mod redis_conn;
pub mod sync;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::number::{CallerNumber, Normalizer};
use crate::rules::action::ActionError;
use crate::rules::schedule::ScheduleError;
use crate::rules::{
    Entry, ListKind, PatternError, RuleAction, RulePattern, Schedule, Tenant, TimeZone,
};

pub use self::local::LocalStore;
pub use self::redis::RedisStore;

/// How Redis holds the rules of an import (the embedded store has one layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One key per rule (`callguard:block:+7...`): what `redis-cli SET`/`DEL` edit.
    Keys,
    /// Many rules per hash ([`bulk`]): a sixth of the memory and a fifteenth of Redis's work
    /// to load, for big lists.
    Bulk,
}

/// Errors from reading or writing a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Redis refused, failed or timed out.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// A Redis operation took longer than the configured budget.
    #[error("redis: no answer within {0:?}")]
    Timeout(Duration),
    /// The store URL or its TLS settings cannot be used.
    #[error("redis: {0}")]
    BadUrl(String),
    /// No sentinel named a reachable master of this name (or the cluster has none).
    #[error("redis: no master for {0:?} reachable")]
    NoMaster(String),
    /// The master changed (a failover): the sync reconnects and reloads.
    #[error("redis: the master moved ({from} -> {to}); reconnecting")]
    Failover {
        /// Masters before.
        from: String,
        /// Masters now.
        to: String,
    },
    /// The local list file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The local list file is not valid.
    #[error("{path}: {message}")]
    BadFile {
        /// File involved.
        path: PathBuf,
        /// What is wrong, with position where known.
        message: String,
    },
}

/// Where the lists are kept, parsed from `--store` / `store =`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A Redis URL (`redis://`, `rediss://`, `redis+unix://`, `unix://`, Sentinel
    /// `redis+sentinel://`/`rediss+sentinel://`, Cluster `redis+cluster://`/`rediss+cluster://`).
    Redis(String),
    /// The embedded store: a TOML file a person can read and edit.
    Local(PathBuf),
}

impl StoreLocation {
    /// A `redis`-scheme URL selects Redis; anything else is a path for the embedded store.
    pub fn parse(text: &str) -> StoreLocation {
        const REDIS_SCHEMES: [&str; 8] = [
            "redis://",
            "rediss://",
            "redis+unix://",
            "unix://",
            "redis+sentinel://",
            "rediss+sentinel://",
            "redis+cluster://",
            "rediss+cluster://",
        ];
        if REDIS_SCHEMES.iter().any(|s| text.starts_with(s)) {
            StoreLocation::Redis(text.to_owned())
        } else {
            StoreLocation::Local(PathBuf::from(text))
        }
    }
}

/// `text` with the password of a store URL (`redis://user:pass@host/...`) replaced by `***`,
/// for logs; paths and URLs without one come back unchanged.
pub fn redacted(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, hosts)) = authority.rsplit_once('@') else {
        return text.to_owned();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // `redis://secret@host`: the crate reads a lone userinfo as the password.
        None if !userinfo.is_empty() => "***".to_owned(),
        None => String::new(),
    };
    format!("{scheme}://{user}@{hosts}{tail}")
}

/// An open store.
#[derive(Clone)]
pub enum Store {
    /// Shared Redis.
    Redis(Box<RedisStore>),
    /// Embedded local file.
    Local(LocalStore),
}

impl Store {
    /// Opens (and for Redis, connects to) the store at `location`.
    pub async fn open(
        location: &StoreLocation,
        settings: &crate::config::RedisSettings,
        normalizer: Normalizer,
    ) -> Result<Store, StoreError> {
        Ok(match location {
            StoreLocation::Redis(url) => Store::Redis(Box::new(
                RedisStore::connect(url, settings, normalizer).await?,
            )),
            StoreLocation::Local(path) => Store::Local(LocalStore::open(path, normalizer)?),
        })
    }

    /// Adds or replaces entries (one per number; earlier spellings of the same number are replaced).
    pub async fn put(&self, entries: &[Entry]) -> Result<(), StoreError> {
        match self {
            Store::Redis(s) => s.put(entries).await,
            Store::Local(s) => s.put(entries).await,
        }
    }

    /// Adds or replaces many entries at once, all or none (`callguard import`): one file
    /// rewrite for the embedded store, one transaction for Redis, in `layout`.
    pub async fn put_all(&self, entries: &[Entry], layout: Layout) -> Result<(), StoreError> {
        match (self, layout) {
            (Store::Redis(s), Layout::Keys) => s.put_all(entries).await,
            (Store::Redis(s), Layout::Bulk) => s.put_all_bulk(entries).await,
            (Store::Local(s), _) => s.put(entries).await,
        }
    }

    /// Removes every spelling of each rule from `tenant`'s `list` (`None` = global); returns
    /// how many of the rules were present.
    pub async fn remove(
        &self,
        tenant: Option<&Tenant>,
        list: ListKind,
        patterns: &[RulePattern],
    ) -> Result<usize, StoreError> {
        match self {
            Store::Redis(s) => s.remove(tenant, list, patterns).await,
            Store::Local(s) => s.remove(tenant, list, patterns).await,
        }
    }

    /// Reads every entry, normalized; unexpired and expired alike (decisions filter by time).
    pub async fn load(&self) -> Result<Vec<Entry>, StoreError> {
        match self {
            Store::Redis(s) => s.load().await,
            Store::Local(s) => s.load().await,
        }
    }
}

/// Everything stored with a rule besides its key (Redis value JSON; the local file's fields).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EntryMeta {
    /// Free-text reason.
    #[serde(default)]
    pub reason: String,
    /// Who added it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_by: Option<String>,
    /// RFC 3339 time it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_at: Option<String>,
    /// Action text (`hangup 17`, `busy`, `tag`...); absent = the configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Called numbers (DIDs) the rule is limited to, any format; empty = all calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dids: Vec<String>,
    /// Weekly windows (`mon-fri 09:00-18:00`); absent = always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Time zone of the schedule; absent = `rules.time_zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

impl EntryMeta {
    /// The stored part of an entry.
    pub fn of(entry: &Entry) -> EntryMeta {
        EntryMeta {
            reason: entry.reason.clone(),
            added_by: entry.added_by.clone(),
            added_at: entry.added_at.map(format_time),
            action: entry.action.as_ref().map(ToString::to_string),
            dids: entry.dids.iter().map(ToString::to_string).collect(),
            schedule: entry.schedule.as_ref().map(ToString::to_string),
            time_zone: entry.time_zone.clone(),
        }
    }
}

/// A stored rule that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The key's rule text.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// The action.
    #[error("action {0}")]
    Action(#[from] ActionError),
    /// The schedule or its time zone.
    #[error("schedule {0}")]
    Schedule(#[from] ScheduleError),
    /// An allow rule with an action.
    #[error("allow rules take no action (got {0:?})")]
    AllowWithAction(String),
    /// A DID that is not a number.
    #[error("did {0:?} is not a number")]
    BadDid(String),
    /// An empty rule text (an edit, not a stored key).
    #[error("empty number; to block withheld numbers write `anonymous`")]
    Empty,
}

/// A rule being added (`callguard block`/`allow`, the admin API): as [`entry_from_parts`],
/// but an empty text is refused rather than read as a withheld number, and it is stamped `now`.
pub fn new_entry(
    normalizer: &Normalizer,
    tenant: Option<Tenant>,
    list: ListKind,
    rule_text: &str,
    meta: EntryMeta,
    expires_at: Option<SystemTime>,
    now: SystemTime,
) -> Result<Entry, RecordError> {
    if rule_text.trim().is_empty() {
        return Err(RecordError::Empty);
    }
    let mut entry = entry_from_parts(normalizer, tenant, list, rule_text, meta, expires_at)?;
    entry.added_at = Some(now);
    Ok(entry)
}

/// An entry as JSON (`callguard list --json`, the admin API): canonical rule, its kind,
/// tenant (`null` = global), the stored bookkeeping and the expiry.
#[derive(Debug, Serialize)]
pub struct EntryJson {
    /// Tenant, `None` for the global list.
    pub tenant: Option<String>,
    /// Block or allow.
    pub list: ListKind,
    /// `exact`, `mask`, `prefix`, `range`...
    pub kind: &'static str,
    /// Canonical rule text.
    pub rule: String,
    /// Reason, action, DIDs, schedule, who and when.
    #[serde(flatten)]
    pub meta: EntryMeta,
    /// RFC 3339 expiry, if any.
    pub expires_at: Option<String>,
}

impl EntryJson {
    /// The JSON view of `e`.
    pub fn of(e: &Entry) -> EntryJson {
        EntryJson {
            tenant: e.tenant.as_ref().map(ToString::to_string),
            list: e.list,
            kind: e.pattern.kind(),
            rule: e.pattern.to_string(),
            meta: EntryMeta::of(e),
            expires_at: e.expires_at.map(format_time),
        }
    }
}

/// Builds an entry from stored parts; `rule_text` and the DIDs may be in any format.
pub fn entry_from_parts(
    normalizer: &Normalizer,
    tenant: Option<Tenant>,
    list: ListKind,
    rule_text: &str,
    meta: EntryMeta,
    expires_at: Option<SystemTime>,
) -> Result<Entry, RecordError> {
    let pattern = RulePattern::parse(rule_text, normalizer)?;
    let action = match meta.action.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) if list == ListKind::Allow => {
            return Err(RecordError::AllowWithAction(text.to_owned()));
        }
        Some(text) => Some(text.parse::<RuleAction>()?),
    };
    let schedule = match meta.schedule.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(Schedule::parse(text)?),
    };
    if let Some(zone) = &meta.time_zone {
        TimeZone::parse(zone)?;
    }
    let dids = meta
        .dids
        .iter()
        .map(|d| match normalizer.normalize(d) {
            CallerNumber::Invalid(_) | CallerNumber::Anonymous => {
                Err(RecordError::BadDid(d.clone()))
            }
            n => Ok(n),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Entry {
        list,
        tenant,
        pattern,
        dids,
        action,
        schedule,
        time_zone: meta.time_zone,
        reason: meta.reason,
        added_by: meta.added_by,
        // A hand-typed timestamp that does not parse is bookkeeping only: drop it, keep the entry.
        added_at: meta.added_at.as_deref().and_then(parse_time),
        expires_at,
    })
}

/// RFC 3339, second precision, UTC.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Parses RFC 3339 (as written by [`format_time`], or by hand).
pub fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text.trim()).ok()
}

/// `user@host` of whoever runs the CLI, for `added_by`.
pub fn current_actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_parse() {
        assert_eq!(
            StoreLocation::parse("redis://127.0.0.1:6380/2"),
            StoreLocation::Redis("redis://127.0.0.1:6380/2".into())
        );
        assert_eq!(
            StoreLocation::parse("/var/lib/callguard/lists.toml"),
            StoreLocation::Local("/var/lib/callguard/lists.toml".into())
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("redis://cg:s3cr@t@10.0.0.1:6380/2"),
            "redis://cg:***@10.0.0.1:6380/2"
        );
        assert_eq!(
            redacted("redis://:pw@h/0?protocol=resp3"),
            "redis://:***@h/0?protocol=resp3"
        );
        assert_eq!(redacted("rediss://pw@h"), "rediss://***@h");
        assert_eq!(
            redacted("redis+sentinel://cg:pw@s1:26379,s2:26379/mymaster/0"),
            "redis+sentinel://cg:***@s1:26379,s2:26379/mymaster/0"
        );
        assert_eq!(redacted("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redacted("/var/lib/a@b.toml"), "/var/lib/a@b.toml");
    }

    #[test]
    fn time_roundtrip() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(parse_time(&format_time(t)), Some(t));
        assert_eq!(parse_time("yesterday"), None);
    }
}
