//! The embedded store: one TOML file a person can read and edit by hand.
//! Owns the file format, locking and atomic replacement; knows nothing of snapshots.
//!
//! ```toml
//! [[block]]
//! number = "8 (495) 123-45-67"   # a number or rule (mask, prefix, range) in any format
//! reason = "collectors"
//! expires_at = "2026-12-01T00:00:00Z"   # optional
//!
//! [[block]]
//! tenant = "acme"                 # optional: on this tenant's list, not the global one
//! number = "+7495123XXXX"
//! action = "hangup 1"             # optional: default from config
//! dids = ["+74951112233"]         # optional: only calls to these numbers
//! schedule = "mon-fri 09:00-18:00" # optional, with time_zone = "Europe/Moscow"
//! ```
//! Writers take an exclusive lock on `<file>.lock`, rewrite the whole file into a temp file
//! in the same directory, fsync it and rename it over the original, so a reader (the running
//! server) sees either the old or the new file, never half of one.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{EntryMeta, StoreError, entry_from_parts, format_time, parse_time};
use crate::number::Normalizer;
use crate::rules::{Entry, ListKind, RulePattern, Tenant};

const HEADER: &str = "\
# callguard lists (embedded store). Edit by hand or with `callguard block/allow/unblock`.
# Numbers and rules (masks, prefixes, ranges) may be written in any format.
# Fields: number (required), tenant, reason, action, dids, schedule, time_zone, added_by,
# added_at, expires_at (RFC 3339, UTC). See README, section Rules.
# A running `callguard serve` picks up changes to this file within a second.
# Note: the CLI rewrites this file and does not keep comments other than this header.

";

/// The file's shape.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListsFile {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    block: Vec<FileRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allow: Vec<FileRecord>,
}

impl ListsFile {
    fn list_mut(&mut self, list: ListKind) -> &mut Vec<FileRecord> {
        match list {
            ListKind::Block => &mut self.block,
            ListKind::Allow => &mut self.allow,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    number: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    action: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    dids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    added_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    added_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

impl FileRecord {
    /// Whether this record is `pattern` on `tenant`'s list, in whatever spelling.
    fn means(
        &self,
        normalizer: &Normalizer,
        tenant: Option<&Tenant>,
        pattern: &RulePattern,
    ) -> bool {
        let record_tenant = self.tenant.as_deref().map(Tenant::new);
        let same_tenant = match (record_tenant, tenant) {
            (None, None) => true,
            (Some(Ok(a)), Some(b)) => a == *b,
            _ => false,
        };
        same_tenant && RulePattern::parse(&self.number, normalizer).is_ok_and(|p| p == *pattern)
    }
}

/// Identity of the file's current version, cheap to read (one `stat`), to notice edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// Handle to the local list file.
#[derive(Clone, Debug)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    normalizer: Normalizer,
}

impl LocalStore {
    /// Opens the store at `path`, creating its directory if needed; the file itself may be
    /// absent (an empty list) until the first write.
    pub fn open(path: &Path, normalizer: Normalizer) -> Result<LocalStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        Ok(LocalStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                normalizer,
            }),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Current version stamp of the file (`None` while it does not exist).
    pub fn stamp(&self) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(&self.inner.path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        })
    }

    /// Reads and normalizes every entry.
    pub async fn load(&self) -> Result<Vec<Entry>, StoreError> {
        let this = self.clone();
        run_blocking(move || {
            let file = this.read_file()?;
            this.to_entries(&file)
        })
        .await
    }

    /// Adds entries, replacing every earlier spelling of the same rule on the same list.
    pub async fn put(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let this = self.clone();
        let entries = entries.to_vec();
        run_blocking(move || {
            this.modify(|file, normalizer| {
                // One pass over each list however many entries come (an import can bring
                // hundreds of thousands): drop every record that means one of them.
                for list in ListKind::ALL {
                    let replaced: HashSet<(Option<Tenant>, String)> = entries
                        .iter()
                        .filter(|e| e.list == list)
                        .map(|e| (e.tenant.clone(), e.pattern.to_string()))
                        .collect();
                    if replaced.is_empty() {
                        continue;
                    }
                    file.list_mut(list).retain(|r| {
                        let tenant = match r.tenant.as_deref().map(Tenant::new) {
                            None => None,
                            Some(Ok(t)) => Some(t),
                            // Not a tenant name: it can mean none of the entries.
                            Some(Err(_)) => return true,
                        };
                        let Ok(pattern) = RulePattern::parse(&r.number, normalizer) else {
                            return true;
                        };
                        !replaced.contains(&(tenant, pattern.to_string()))
                    });
                }
                // Two spellings of one rule in the same call: the last one wins, as before.
                let mut last = HashMap::new();
                for (i, e) in entries.iter().enumerate() {
                    last.insert((e.list, e.tenant.clone(), e.pattern.to_string()), i);
                }
                for (i, entry) in entries.iter().enumerate() {
                    if last.get(&(entry.list, entry.tenant.clone(), entry.pattern.to_string()))
                        != Some(&i)
                    {
                        continue;
                    }
                    let records = file.list_mut(entry.list);
                    let meta = EntryMeta::of(entry);
                    records.push(FileRecord {
                        tenant: entry.tenant.as_ref().map(ToString::to_string),
                        number: entry.pattern.to_string(),
                        reason: meta.reason,
                        action: meta.action,
                        dids: meta.dids,
                        schedule: meta.schedule,
                        time_zone: meta.time_zone,
                        added_by: meta.added_by,
                        added_at: meta.added_at,
                        expires_at: entry.expires_at.map(format_time),
                    });
                }
                Ok(0)
            })
            .map(|_| ())
        })
        .await
    }

    /// Removes every spelling of each rule from `tenant`'s `list`; returns how many were present.
    pub async fn remove(
        &self,
        tenant: Option<&Tenant>,
        list: ListKind,
        patterns: &[RulePattern],
    ) -> Result<usize, StoreError> {
        let this = self.clone();
        let patterns = patterns.to_vec();
        let tenant = tenant.cloned();
        run_blocking(move || {
            this.modify(|file, normalizer| {
                let records = file.list_mut(list);
                let mut found = vec![false; patterns.len()];
                records.retain(|r| {
                    match patterns
                        .iter()
                        .position(|p| r.means(normalizer, tenant.as_ref(), p))
                    {
                        Some(i) => {
                            found[i] = true;
                            false
                        }
                        None => true,
                    }
                });
                Ok(found.iter().filter(|f| **f).count())
            })
        })
        .await
    }

    fn read_file(&self) -> Result<ListsFile, StoreError> {
        let path = &self.inner.path;
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ListsFile::default()),
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.clone(),
                    source,
                });
            }
        };
        toml::from_str(&text).map_err(|e| StoreError::BadFile {
            path: path.clone(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    fn to_entries(&self, file: &ListsFile) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::with_capacity(file.block.len() + file.allow.len());
        for (list, records) in [
            (ListKind::Block, &file.block),
            (ListKind::Allow, &file.allow),
        ] {
            for (i, record) in records.iter().enumerate() {
                let expires_at = match record.expires_at.as_deref() {
                    None => None,
                    // A wrong expiry must not silently turn into "never expires".
                    Some(text) => Some(parse_time(text).ok_or_else(|| StoreError::BadFile {
                        path: self.inner.path.clone(),
                        message: format!(
                            "{list} entry #{} ({}): expires_at {text:?} is not an RFC 3339 time",
                            i + 1,
                            record.number
                        ),
                    })?),
                };
                let bad = |message: String| StoreError::BadFile {
                    path: self.inner.path.clone(),
                    message: format!("{list} entry #{} ({}): {message}", i + 1, record.number),
                };
                let tenant = record
                    .tenant
                    .as_deref()
                    .map(Tenant::new)
                    .transpose()
                    .map_err(|e| bad(e.to_string()))?;
                let meta = EntryMeta {
                    reason: record.reason.clone(),
                    added_by: record.added_by.clone(),
                    added_at: record.added_at.clone(),
                    action: record.action.clone(),
                    dids: record.dids.clone(),
                    schedule: record.schedule.clone(),
                    time_zone: record.time_zone.clone(),
                };
                let entry = entry_from_parts(
                    &self.inner.normalizer,
                    tenant,
                    list,
                    &record.number,
                    meta,
                    expires_at,
                )
                .map_err(|e| bad(e.to_string()))?;
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Read-modify-write under the lock; expired records are dropped on the way.
    fn modify(
        &self,
        change: impl FnOnce(&mut ListsFile, &Normalizer) -> Result<usize, StoreError>,
    ) -> Result<usize, StoreError> {
        let path = &self.inner.path;
        let io_err = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let lock_path = with_suffix(path, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err)?;
        // Serializes concurrent CLI writers so no edit is lost; released when `lock` drops.
        lock.lock().map_err(io_err)?;

        let mut file = self.read_file()?;
        let now = SystemTime::now();
        for list in ListKind::ALL {
            file.list_mut(list).retain(|r| {
                r.expires_at
                    .as_deref()
                    .and_then(parse_time)
                    .is_none_or(|at| now < at)
            });
        }
        let result = change(&mut file, &self.inner.normalizer)?;

        let body = toml::to_string(&file).map_err(|e| StoreError::BadFile {
            path: path.clone(),
            message: format!("cannot encode lists: {e}"),
        })?;
        let tmp_path = with_suffix(path, &format!(".tmp.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut tmp = File::create(&tmp_path)?;
            tmp.write_all(HEADER.as_bytes())?;
            tmp.write_all(body.as_bytes())?;
            tmp.sync_all()?;
            fs::rename(&tmp_path, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        if let Err(source) = write() {
            // Best effort: a leftover temp file is harmless, but do not leave litter when we can help it.
            let _cleanup = fs::remove_file(&tmp_path);
            return Err(io_err(source));
        }
        Ok(result)
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| {
            Err(StoreError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(join.to_string()),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pattern(text: &str) -> RulePattern {
        RulePattern::parse(text, &Normalizer::default()).expect("pattern")
    }

    fn entry(list: ListKind, rule: &str, reason: &str) -> Entry {
        let mut e = Entry::new(list, pattern(rule));
        e.reason = reason.into();
        e.added_by = Some("tester".into());
        e.added_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000));
        e
    }

    #[tokio::test]
    async fn put_load_remove_roundtrip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            LocalStore::open(&dir.path().join("lists.toml"), Normalizer::default()).expect("open");
        assert!(store.load().await.expect("load empty").is_empty());

        let mut scoped = entry(ListKind::Block, "8 (495) 123-XX-XX", "masked");
        scoped.tenant = Some(Tenant::new("acme").expect("tenant"));
        scoped.action = Some("hangup 1".parse().expect("action"));
        scoped.dids = vec![Normalizer::default().normalize("+74951112233")];
        scoped.schedule = Some("mon-fri 09:00-18:00".parse().expect("schedule"));
        scoped.time_zone = Some("Europe/Moscow".into());
        store
            .put(&[
                entry(ListKind::Block, "8 (495) 123-45-67", "collectors"),
                entry(ListKind::Allow, "+74990000000", "boss"),
                scoped.clone(),
            ])
            .await
            .expect("put");
        let loaded = store.load().await.expect("load");
        assert_eq!(loaded.len(), 3);
        assert_eq!(loaded[0].pattern.to_string(), "+74951234567");
        assert_eq!(loaded[0].reason, "collectors");
        assert_eq!(loaded[0].added_by.as_deref(), Some("tester"));
        assert_eq!(loaded[1], scoped, "every field survives the file");

        let n = pattern("74951234567");
        assert_eq!(
            store
                .remove(None, ListKind::Block, std::slice::from_ref(&n))
                .await
                .expect("rm"),
            1
        );
        assert_eq!(
            store
                .remove(None, ListKind::Block, &[n])
                .await
                .expect("rm again"),
            0
        );
        // The tenant's mask is only removed from the tenant's list.
        let mask = pattern("+7495123XXXX");
        assert_eq!(
            store
                .remove(None, ListKind::Block, std::slice::from_ref(&mask))
                .await
                .expect("rm"),
            0
        );
        let acme = Tenant::new("ACME").expect("tenant");
        assert_eq!(
            store
                .remove(Some(&acme), ListKind::Block, &[mask])
                .await
                .expect("rm"),
            1
        );
        assert_eq!(store.load().await.expect("load").len(), 1);
    }

    #[tokio::test]
    async fn hand_edited_file_any_format_and_replacement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lists.toml");
        fs::write(
            &path,
            "[[block]]\nnumber = \"8 (495) 123-45-67\"\nreason = \"by hand\"\n",
        )
        .expect("write");
        let store = LocalStore::open(&path, Normalizer::default()).expect("open");
        let loaded = store.load().await.expect("load");
        assert_eq!(loaded[0].pattern.to_string(), "+74951234567");

        // Blocking the same number in another format replaces the hand-written record.
        store
            .put(&[entry(ListKind::Block, "+7 495 1234567", "cli")])
            .await
            .expect("put");
        let loaded = store.load().await.expect("load");
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].reason, "cli");
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("# callguard lists"), "{text}");
    }

    #[tokio::test]
    async fn bad_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lists.toml");
        let store = LocalStore::open(&path, Normalizer::default()).expect("open");
        for (text, needle) in [
            ("[[block]]\nnumbr = \"1\"\n", "numbr"),
            (
                "[[block]]\nnumber = \"1\"\nexpires_at = \"tomorrow\"\n",
                "expires_at",
            ),
            ("[[block]]\nnumber = \"_7495*1\"\n", "block entry #1"),
            (
                "[[block]]\nnumber = \"+7495*\"\naction = \"explode\"\n",
                "explode",
            ),
            (
                "[[allow]]\nnumber = \"+7495*\"\naction = \"busy\"\n",
                "allow rules take no action",
            ),
            (
                "[[block]]\nnumber = \"+7495*\"\ntenant = \"a b\"\n",
                "tenant",
            ),
            (
                "[[block]]\nnumber = \"+7495*\"\nschedule = \"someday\"\n",
                "schedule",
            ),
            (
                "[[block]]\nnumber = \"+7495*\"\ndids = [\"nope\"]\n",
                "nope",
            ),
        ] {
            fs::write(&path, text).expect("write");
            let err = store.load().await.expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
