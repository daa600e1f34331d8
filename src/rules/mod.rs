//! List entries and the compiled rule set: entries -> [`Snapshot`] (compile) and
//! (number, snapshot, now) -> [`Outcome`] (decide). Pure: no I/O, no clock of its own.
//!
//! Today a rule is an exact canonical number on the block or allow list; masks, ranges and
//! scopes grow here (issue 2/8) behind the same `compile`/`decide` pair.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::number::CallerNumber;

/// Which list an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    /// Calls from the number are refused.
    Block,
    /// Calls from the number are always let through; wins over the block list.
    Allow,
}

impl ListKind {
    /// `block` or `allow`: used in store keys, files and output.
    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::Block => "block",
            ListKind::Allow => "allow",
        }
    }

    /// Both lists, in display order.
    pub const ALL: [ListKind; 2] = [ListKind::Block, ListKind::Allow];
}

impl fmt::Display for ListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One list entry, canonical, with its bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Block or allow list.
    pub list: ListKind,
    /// Canonical number the entry matches.
    pub number: CallerNumber,
    /// Why it is on the list (free text, may be empty).
    pub reason: String,
    /// Who added it (`user@host` for the CLI), if known.
    pub added_by: Option<String>,
    /// When it was added, if known.
    pub added_at: Option<SystemTime>,
    /// When it stops applying; `None` = never.
    pub expires_at: Option<SystemTime>,
}

impl Entry {
    /// True while the entry applies at `now`.
    pub fn is_live(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }

    /// Of two entries for the same number and list, the one that applies longer wins the merge,
    /// so a short-lived duplicate can never cut a permanent entry's life short.
    fn outlives(&self, other: &Entry) -> bool {
        match (self.expires_at, other.expires_at) {
            (None, Some(_)) => true,
            (Some(a), Some(b)) => a > b,
            _ => false,
        }
    }
}

/// Everything a decision reads, compiled from the store's entries; immutable once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    block: HashMap<CallerNumber, Arc<Entry>>,
    allow: HashMap<CallerNumber, Arc<Entry>>,
    version: u64,
}

impl Snapshot {
    /// Compiles entries into a snapshot. Duplicates (one number written in several formats)
    /// merge into the entry that lives longest.
    pub fn compile(entries: impl IntoIterator<Item = Entry>, version: u64) -> Snapshot {
        let mut snapshot = Snapshot {
            version,
            ..Snapshot::default()
        };
        for entry in entries {
            let map = match entry.list {
                ListKind::Block => &mut snapshot.block,
                ListKind::Allow => &mut snapshot.allow,
            };
            match map.get(&entry.number) {
                Some(existing) if !entry.outlives(existing) => {}
                _ => {
                    map.insert(entry.number.clone(), Arc::new(entry));
                }
            }
        }
        snapshot
    }

    /// Monotonic build counter, for logs.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The live entry for `number` on `list`, if any.
    pub fn lookup(&self, list: ListKind, number: &CallerNumber, now: SystemTime) -> Option<&Entry> {
        let map = match list {
            ListKind::Block => &self.block,
            ListKind::Allow => &self.allow,
        };
        map.get(number).map(Arc::as_ref).filter(|e| e.is_live(now))
    }

    /// Number of entries on `list` (expired ones included until the next sync drops them).
    pub fn len(&self, list: ListKind) -> usize {
        match list {
            ListKind::Block => self.block.len(),
            ListKind::Allow => self.allow.len(),
        }
    }

    /// True when both lists are empty.
    pub fn is_empty(&self) -> bool {
        self.block.is_empty() && self.allow.is_empty()
    }

    /// All entries live at `now`, sorted by list then number (stable output for `list`).
    pub fn live_entries(&self, now: SystemTime) -> Vec<&Entry> {
        let mut out: Vec<&Entry> = self
            .block
            .values()
            .chain(self.allow.values())
            .map(Arc::as_ref)
            .filter(|e| e.is_live(now))
            .collect();
        out.sort_by(|a, b| (a.list, &a.number).cmp(&(b.list, &b.number)));
        out
    }
}

/// Result of matching one number against a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// The entry that decided, if any; `None` means no list matched (default allow).
    pub decided_by: Option<&'a Entry>,
    /// A block entry that also matched but lost to an allow entry (for `check` output).
    pub overridden: Option<&'a Entry>,
}

impl Outcome<'_> {
    /// Block when the deciding entry is on the block list.
    pub fn is_block(&self) -> bool {
        self.decided_by.is_some_and(|e| e.list == ListKind::Block)
    }
}

/// Decides one canonical number: the allow list wins over the block list; no match allows.
pub fn decide<'a>(number: &CallerNumber, snapshot: &'a Snapshot, now: SystemTime) -> Outcome<'a> {
    let block = snapshot.lookup(ListKind::Block, number, now);
    match snapshot.lookup(ListKind::Allow, number, now) {
        Some(allow) => Outcome {
            decided_by: Some(allow),
            overridden: block,
        },
        None => Outcome {
            decided_by: block,
            overridden: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::number::Normalizer;
    use std::time::Duration;

    fn entry(list: ListKind, number: &str, reason: &str, expires: Option<SystemTime>) -> Entry {
        Entry {
            list,
            number: Normalizer::default().normalize(number),
            reason: reason.into(),
            added_by: None,
            added_at: None,
            expires_at: expires,
        }
    }

    #[test]
    fn allow_wins_over_block() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let snap = Snapshot::compile(
            [
                entry(ListKind::Block, "84951234567", "collectors", None),
                entry(ListKind::Allow, "+7 495 123-45-67", "our lawyer", None),
            ],
            1,
        );
        let number = Normalizer::default().normalize("74951234567");
        let outcome = decide(&number, &snap, now);
        assert!(!outcome.is_block());
        assert_eq!(
            outcome.decided_by.map(|e| e.reason.as_str()),
            Some("our lawyer")
        );
        assert_eq!(
            outcome.overridden.map(|e| e.reason.as_str()),
            Some("collectors")
        );
    }

    #[test]
    fn expired_entries_do_not_match() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let snap = Snapshot::compile(
            [entry(
                ListKind::Block,
                "84951234567",
                "temp",
                Some(t0 + Duration::from_secs(60)),
            )],
            1,
        );
        let number = Normalizer::default().normalize("+74951234567");
        assert!(decide(&number, &snap, t0).is_block());
        assert!(!decide(&number, &snap, t0 + Duration::from_secs(60)).is_block());
        assert!(snap.live_entries(t0 + Duration::from_secs(61)).is_empty());
    }

    #[test]
    fn duplicates_merge_to_longest_life() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let snap = Snapshot::compile(
            [
                entry(ListKind::Block, "84951234567", "permanent", None),
                entry(ListKind::Block, "+74951234567", "short", Some(t0)),
            ],
            1,
        );
        assert_eq!(snap.len(ListKind::Block), 1);
        let number = Normalizer::default().normalize("4951234567");
        let outcome = decide(&number, &snap, t0 + Duration::from_secs(5));
        assert_eq!(
            outcome.decided_by.map(|e| e.reason.as_str()),
            Some("permanent")
        );
    }

    #[test]
    fn no_match_allows() {
        let snap = Snapshot::default();
        let number = Normalizer::default().normalize("+74951234567");
        let outcome = decide(&number, &snap, SystemTime::UNIX_EPOCH);
        assert!(outcome.decided_by.is_none());
        assert!(!outcome.is_block());
    }
}
