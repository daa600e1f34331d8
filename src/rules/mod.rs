//! Rules and the compiled rule set: entries -> [`Snapshot`] (compile) and
//! (call facts, snapshot, now) -> [`Outcome`] (decide, explain). Pure: no I/O, no clock of its own.
//!
//! Precedence, the same everywhere (README "Precedence"): the most specific scope that has a
//! matching rule decides (tenant + DID, tenant, global + DID, global); inside it the rule that
//! matches the fewest numbers wins (exact < mask/range < prefix); when two are equally
//! specific, allow beats block; remaining ties go to the smaller canonical text.

pub mod action;
mod exact;
pub mod matcher;
pub mod pattern;
pub mod schedule;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::number::{CallerNumber, E164};

pub use self::exact::unix_ms;
use self::exact::{ExactTable, Strings};

pub use self::action::RuleAction;
pub use self::matcher::Matcher;
pub use self::pattern::{PatternError, RulePattern};
pub use self::schedule::{Schedule, TimeZone};

/// Which list an entry belongs to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
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
    /// Both lists in precedence order (allow beats block).
    pub const ALL_ALLOW_FIRST: [ListKind; 2] = [ListKind::Allow, ListKind::Block];
}

impl fmt::Display for ListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant: one customer of a hosted PBX, with its own rules. 1-64 characters of
/// `[a-z0-9_.-]`, case-folded, so it is safe in store keys, logs and channel variables.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Tenant(Box<str>);

/// A tenant name that is empty, too long or has other characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: a tenant name is 1-64 letters, digits, '_', '.' or '-'")]
pub struct TenantError(pub String);

impl Tenant {
    /// Checks and case-folds a tenant name.
    pub fn new(name: &str) -> Result<Tenant, TenantError> {
        let name = name.trim();
        let ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Tenant(name.to_ascii_lowercase().into()))
        } else {
            Err(TenantError(name.to_owned()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One rule, canonical, with its bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Block or allow list.
    pub list: ListKind,
    /// The tenant whose list it is on; `None` = the global list.
    pub tenant: Option<Tenant>,
    /// What it matches.
    pub pattern: RulePattern,
    /// Only for calls to these called numbers (DIDs); empty = every call.
    pub dids: Vec<CallerNumber>,
    /// What a block does; `None` = the configured default. Allow entries have none.
    pub action: Option<RuleAction>,
    /// Weekly windows in which the rule applies; `None` = always.
    pub schedule: Option<Schedule>,
    /// Time zone of `schedule` (IANA name or offset); `None` = `rules.time_zone` from config.
    pub time_zone: Option<String>,
    /// Why it is on the list (free text, may be empty).
    pub reason: String,
    /// Who added it (`user@host` for the CLI, `detector` for flood bans), if known.
    pub added_by: Option<String>,
    /// When it was added, if known.
    pub added_at: Option<SystemTime>,
    /// When it stops applying; `None` = never.
    pub expires_at: Option<SystemTime>,
}

impl Entry {
    /// A global, permanent, always-on entry with no bookkeeping.
    pub fn new(list: ListKind, pattern: RulePattern) -> Entry {
        Entry {
            list,
            tenant: None,
            pattern,
            dids: Vec::new(),
            action: None,
            schedule: None,
            time_zone: None,
            reason: String::new(),
            added_by: None,
            added_at: None,
            expires_at: None,
        }
    }

    /// True while the entry has not expired at `now` (schedules aside).
    pub fn is_live(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }

    /// What identifies a rule in a store: one per tenant, list and canonical pattern.
    pub fn key(&self) -> (Option<&Tenant>, ListKind, &RulePattern) {
        (self.tenant.as_ref(), self.list, &self.pattern)
    }

    /// Equal in everything but the expiry time (which a reload re-derives from a TTL).
    pub fn same_except_expiry(&self, other: &Entry) -> bool {
        self.list == other.list
            && self.tenant == other.tenant
            && self.pattern == other.pattern
            && self.same_meta(other)
            && self.expires_at.is_some() == other.expires_at.is_some()
    }

    /// Equal in what a store keeps beside the rule itself: DIDs, action, schedule and zone,
    /// reason and bookkeeping (not list, tenant, pattern or expiry).
    pub fn same_meta(&self, other: &Entry) -> bool {
        self.dids == other.dids
            && self.action == other.action
            && self.schedule == other.schedule
            && self.time_zone == other.time_zone
            && self.reason == other.reason
            && self.added_by == other.added_by
            && self.added_at == other.added_at
    }

    /// Of two entries for the same key, the one that applies longer wins the merge, so a
    /// short-lived duplicate can never cut a permanent entry's life short.
    pub fn outlives(&self, other: &Entry) -> bool {
        match (self.expires_at, other.expires_at) {
            (None, Some(_)) => true,
            (Some(a), Some(b)) => a > b,
            _ => false,
        }
    }
}

/// How specific the scope of a matching rule is; the first level with a match decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScopeLevel {
    /// The call's tenant, limited to the call's DID.
    TenantDid,
    /// The call's tenant.
    Tenant,
    /// The global list, limited to the call's DID.
    GlobalDid,
    /// The global list.
    Global,
}

impl ScopeLevel {
    /// `tenant+did`, `tenant`, `global+did`, `global`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeLevel::TenantDid => "tenant+did",
            ScopeLevel::Tenant => "tenant",
            ScopeLevel::GlobalDid => "global+did",
            ScopeLevel::Global => "global",
        }
    }
}

/// What the rules look at in a call.
#[derive(Debug, Clone, Copy)]
pub struct CallFacts<'a> {
    /// Canonical caller number.
    pub number: &'a CallerNumber,
    /// The call's tenant, if any.
    pub tenant: Option<&'a Tenant>,
    /// Canonical called number (DID), if known.
    pub did: Option<&'a CallerNumber>,
}

impl<'a> CallFacts<'a> {
    /// A call with no tenant and no DID.
    pub fn number(number: &'a CallerNumber) -> CallFacts<'a> {
        CallFacts {
            number,
            tenant: None,
            did: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ScopeKey {
    tenant: Option<Tenant>,
    did: Option<CallerNumber>,
}

/// The rules of one scope, indexed: exact numbers by hash, masks and ranges in one digit
/// automaton. Ids are positions in `Snapshot::rules`, which is in precedence order.
#[derive(Debug, Default)]
struct ScopeIndex {
    exact: HashMap<CallerNumber, Vec<u32>>,
    masks: Matcher,
    invalid: Vec<u32>,
}

#[derive(Debug)]
struct CompiledRule {
    entry: Arc<Entry>,
    /// Resolved zone of the entry's schedule (unused without one).
    zone: Option<TimeZone>,
}

/// What identifies a rule: tenant, list and canonical pattern (see [`Entry::key`]).
pub type RuleKey = (Option<Tenant>, ListKind, RulePattern);

/// The general rules: masks, ranges, words, and exact numbers with DIDs, actions or schedules.
/// Few even on big deployments, so an edit among them recompiles them all.
#[derive(Debug, Default)]
struct RichRules {
    rules: Vec<CompiledRule>,
    scopes: HashMap<ScopeKey, ScopeIndex>,
    counts: [usize; 2],
}

/// Everything a decision reads, compiled from the store's entries; immutable once built.
/// Plain exact numbers (the bulk of any big list) live in a compact sharded table, the rest in
/// indexed general rules; [`Snapshot::patched`] applies edits without recompiling either whole.
#[derive(Debug, Default)]
pub struct Snapshot {
    rich: Arc<RichRules>,
    exact: ExactTable,
    strings: Strings,
    version: u64,
}

/// Collects entries into a [`Snapshot`] one at a time, so a big load never holds them all as
/// general entries: plain numbers go straight into 32-byte slots.
#[derive(Debug)]
pub struct SnapshotBuilder {
    strings: Strings,
    slots: Vec<exact::Slot>,
    rich: HashMap<RuleKey, Entry>,
    zone: TimeZone,
}

impl SnapshotBuilder {
    /// An empty builder; `zone` reads schedules of entries that name none.
    pub fn new(zone: &TimeZone) -> SnapshotBuilder {
        SnapshotBuilder {
            strings: Strings::new(),
            slots: Vec::new(),
            rich: HashMap::new(),
            zone: zone.clone(),
        }
    }

    /// Adds one entry; of several for one key the longest-lived wins.
    pub fn add(&mut self, entry: Entry) {
        if let Some(slot) = exact::to_slot(&entry, &mut self.strings) {
            self.slots.push(slot);
            return;
        }
        let key = (entry.tenant.clone(), entry.list, entry.pattern.clone());
        match self.rich.get(&key) {
            Some(existing) if !entry.outlives(existing) => {}
            _ => {
                self.rich.insert(key, entry);
            }
        }
    }

    /// Entries added so far (duplicates included).
    pub fn len(&self) -> usize {
        self.slots.len() + self.rich.len()
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Compiles what was added.
    pub fn finish(self, version: u64) -> Snapshot {
        let strings = self.strings;
        let mut exact = ExactTable::build(self.slots);
        // One key written twice, once plainly and once with extras: keep the longer-lived.
        let mut evict = Vec::new();
        let rich: Vec<Arc<Entry>> = self
            .rich
            .into_values()
            .filter(|e| {
                match plain_key(e.tenant.as_ref(), e.list, &e.pattern, &strings)
                    .and_then(|k| exact.get(k.0, k.1))
                {
                    Some(slot) if e.outlives(&exact::to_entry(slot, &strings)) => {
                        evict.push((slot.key(), None));
                        true
                    }
                    Some(_) => false,
                    None => true,
                }
            })
            .map(Arc::new)
            .collect();
        if !evict.is_empty() {
            exact = exact.patched(&evict);
        }
        Snapshot {
            rich: Arc::new(RichRules::compile(rich, &self.zone)),
            exact,
            strings,
            version,
        }
    }
}

/// Where the rule `(tenant, list, pattern)` would sit in the compact table: `None` unless it is
/// an exact E.164 number whose tenant (if any) the string table knows.
fn plain_key(
    tenant: Option<&Tenant>,
    list: ListKind,
    pattern: &RulePattern,
    strings: &Strings,
) -> Option<(u64, exact::Scope)> {
    let RulePattern::Exact(CallerNumber::E164(n)) = pattern else {
        return None;
    };
    let tenant = match tenant {
        None => 0,
        Some(t) => strings.find(t.as_str())?,
    };
    Some((n.value(), exact::Scope::new(tenant, list)))
}

impl RichRules {
    /// Ranks (precedence order = ids) and indexes entries with distinct keys.
    fn compile(entries: Vec<Arc<Entry>>, zone: &TimeZone) -> RichRules {
        let mut ranked: Vec<(u128, u8, String, Arc<Entry>)> = entries
            .into_iter()
            .map(|e| {
                let list_rank = match e.list {
                    ListKind::Allow => 0,
                    ListKind::Block => 1,
                };
                // Exact rules of one scope never tie (different numbers never meet in one
                // call), so only the few wider rules pay for a text tie-break.
                let tie = match e.pattern {
                    RulePattern::Exact(_) => String::new(),
                    ref p => p.to_string(),
                };
                (e.pattern.breadth(), list_rank, tie, e)
            })
            .collect();
        ranked.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));

        let mut zones: HashMap<String, TimeZone> = HashMap::new();
        let mut out = RichRules::default();
        let mut masks: HashMap<ScopeKey, Vec<(matcher::DigitPattern, u32)>> = HashMap::new();
        for (id, (_, _, _, entry)) in ranked.into_iter().enumerate() {
            let Ok(id) = u32::try_from(id) else { break };
            out.counts[entry.list as usize] += 1;
            let scope_keys: Vec<ScopeKey> = if entry.dids.is_empty() {
                vec![ScopeKey {
                    tenant: entry.tenant.clone(),
                    did: None,
                }]
            } else {
                entry
                    .dids
                    .iter()
                    .map(|d| ScopeKey {
                        tenant: entry.tenant.clone(),
                        did: Some(d.clone()),
                    })
                    .collect()
            };
            for key in scope_keys {
                match &entry.pattern {
                    RulePattern::Exact(n) => out
                        .scopes
                        .entry(key)
                        .or_default()
                        .exact
                        .entry(n.clone())
                        .or_default()
                        .push(id),
                    RulePattern::AnyInvalid => {
                        out.scopes.entry(key).or_default().invalid.push(id);
                    }
                    pattern => {
                        let list = masks.entry(key).or_default();
                        list.extend(pattern.digit_patterns().into_iter().map(|d| (d, id)));
                    }
                }
            }
            let zone = entry.schedule.as_ref().map(|_| match &entry.time_zone {
                None => zone.clone(),
                Some(name) => zones
                    .entry(name.clone())
                    .or_insert_with(|| TimeZone::parse(name).unwrap_or_else(|_| zone.clone()))
                    .clone(),
            });
            out.rules.push(CompiledRule { entry, zone });
        }
        for (key, patterns) in masks {
            out.scopes.entry(key).or_default().masks = Matcher::build(patterns);
        }
        out
    }

    /// True when rule `id` is live and inside its schedule at `now`.
    fn applies(&self, id: u32, now: SystemTime) -> bool {
        let Some(rule) = self.rules.get(id as usize) else {
            return false;
        };
        rule.entry.is_live(now)
            && match (&rule.entry.schedule, &rule.zone) {
                (Some(schedule), Some(zone)) => schedule.is_active(now, zone),
                _ => true,
            }
    }

    fn scope(&self, level: ScopeLevel, facts: &CallFacts<'_>) -> Option<&ScopeIndex> {
        if self.scopes.is_empty() {
            return None;
        }
        let key = match level {
            ScopeLevel::TenantDid => ScopeKey {
                tenant: Some(facts.tenant?.clone()),
                did: Some(facts.did?.clone()),
            },
            ScopeLevel::Tenant => ScopeKey {
                tenant: Some(facts.tenant?.clone()),
                did: None,
            },
            ScopeLevel::GlobalDid => ScopeKey {
                tenant: None,
                did: Some(facts.did?.clone()),
            },
            ScopeLevel::Global => ScopeKey {
                tenant: None,
                did: None,
            },
        };
        self.scopes.get(&key)
    }

    /// The first rule in precedence order at `level` that matches and applies.
    fn best(&self, level: ScopeLevel, facts: &CallFacts<'_>, now: SystemTime) -> Option<u32> {
        let index = self.scope(level, facts)?;
        let applies = |id: u32| self.applies(id, now);
        let exact = index
            .exact
            .get(facts.number)
            .and_then(|ids| ids.iter().copied().find(|&id| applies(id)));
        let wider = match facts.number {
            CallerNumber::E164(e) => {
                let mut buf = [0u8; 20];
                index.masks.best(e164_digits(e.value(), &mut buf), applies)
            }
            CallerNumber::Invalid(_) => index.invalid.iter().copied().find(|&id| applies(id)),
            _ => None,
        };
        match (exact, wider) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn entry(&self, id: u32) -> Option<&Entry> {
        self.rules.get(id as usize).map(|r| r.entry.as_ref())
    }
}

impl Snapshot {
    /// Compiles entries with schedules read in UTC; see [`Snapshot::compile_in`].
    pub fn compile(entries: impl IntoIterator<Item = Entry>, version: u64) -> Snapshot {
        Snapshot::compile_in(entries, version, &TimeZone::utc())
    }

    /// Compiles entries into a snapshot. Duplicates (one rule written in several formats)
    /// merge into the entry that lives longest. `zone` reads schedules of entries without one.
    pub fn compile_in(
        entries: impl IntoIterator<Item = Entry>,
        version: u64,
        zone: &TimeZone,
    ) -> Snapshot {
        let mut builder = SnapshotBuilder::new(zone);
        for entry in entries {
            builder.add(entry);
        }
        builder.finish(version)
    }

    /// A new snapshot with `changes` applied: each key gets the entry given (it must have that
    /// key) or, for `None`, is removed. Only what the changes touch is rebuilt: the shards of
    /// the compact table they fall in, and the general rules when one of those changed.
    pub fn patched(
        &self,
        changes: Vec<(RuleKey, Option<Entry>)>,
        version: u64,
        zone: &TimeZone,
    ) -> Snapshot {
        let mut strings = self.strings.clone();
        let mut exact_changes = Vec::new();
        let mut rich_added = Vec::new();
        let mut touched: std::collections::HashSet<RuleKey> = std::collections::HashSet::new();
        // The last change to a key wins.
        let changes: HashMap<RuleKey, Option<Entry>> = changes.into_iter().collect();
        for (key, entry) in changes {
            let (tenant, list, pattern) = &key;
            if let Some(old) = plain_key(tenant.as_ref(), *list, pattern, &strings) {
                exact_changes.push((old, None));
            }
            if let Some(entry) = entry.filter(|e| e.key() == (tenant.as_ref(), *list, pattern)) {
                match exact::to_slot(&entry, &mut strings) {
                    Some(slot) => exact_changes.push((slot.key(), Some(slot))),
                    None => rich_added.push(Arc::new(entry)),
                }
            }
            touched.insert(key);
        }
        // Edits are mostly exact numbers and general rules mostly masks: compare the pattern
        // kind first, so checking 100,000 masks against an exact edit costs no allocation.
        let kinds: std::collections::HashSet<std::mem::Discriminant<RulePattern>> = touched
            .iter()
            .map(|k| std::mem::discriminant(&k.2))
            .collect();
        let is_touched = |e: &Entry| {
            kinds.contains(&std::mem::discriminant(&e.pattern)) && {
                let (t, l, p) = e.key();
                touched.contains(&(t.cloned(), l, p.clone()))
            }
        };
        let rich_hit = self.rich.rules.iter().any(|r| is_touched(&r.entry));
        let rich = if rich_hit || !rich_added.is_empty() {
            let mut entries: Vec<Arc<Entry>> = self
                .rich
                .rules
                .iter()
                .filter(|r| !is_touched(&r.entry))
                .map(|r| r.entry.clone())
                .collect();
            entries.extend(rich_added);
            Arc::new(RichRules::compile(entries, zone))
        } else {
            self.rich.clone()
        };
        let exact = if exact_changes.is_empty() {
            self.exact.clone()
        } else {
            self.exact.patched(&exact_changes)
        };
        Snapshot {
            rich,
            exact,
            strings,
            version,
        }
    }

    /// True when both hold the same rules with the same bookkeeping, expiries closer than
    /// `jitter` counting as equal (they are re-derived from TTLs on every read).
    pub fn same_rules(&self, other: &Snapshot, jitter: std::time::Duration) -> bool {
        let jitter_ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
        if self.exact.len() != other.exact.len() || self.rich.rules.len() != other.rich.rules.len()
        {
            return false;
        }
        let theirs: HashMap<(Option<&Tenant>, ListKind, &RulePattern), &Entry> = other
            .rich
            .rules
            .iter()
            .map(|r| (r.entry.key(), r.entry.as_ref()))
            .collect();
        let rich_same = self.rich.rules.iter().all(|r| {
            theirs.get(&r.entry.key()).is_some_and(|o| {
                let close = match (r.entry.expires_at, o.expires_at) {
                    (None, None) => true,
                    (Some(a), Some(b)) => {
                        a.duration_since(b)
                            .or_else(|_| b.duration_since(a))
                            .unwrap_or_default()
                            < jitter
                    }
                    _ => false,
                };
                close && r.entry.same_except_expiry(o)
            })
        });
        rich_same
            && self.exact.iter().all(|s| {
                let tenant = match s.tenant() {
                    None => Some(0),
                    Some(id) => other.strings.find(self.strings.get(id)),
                };
                tenant
                    .and_then(|t| {
                        other
                            .exact
                            .get(s.key().0, exact::Scope::new(t, s.scope().list()))
                    })
                    .is_some_and(|o| s.same_as(&self.strings, o, &other.strings, jitter_ms))
            })
    }

    /// What the snapshot file ([`crate::store::cache`]) stores: the string table, every compact
    /// rule as 32 bytes, and the general rules.
    pub fn cache_parts(
        &self,
    ) -> (
        impl Iterator<Item = &str>,
        impl Iterator<Item = [u8; 32]>,
        impl Iterator<Item = &Entry>,
    ) {
        (
            self.strings.iter(),
            self.exact.iter().map(|s| s.to_bytes()),
            self.rich.rules.iter().map(|r| r.entry.as_ref()),
        )
    }

    /// Rebuilds a snapshot from [`Snapshot::cache_parts`]; `None` when the parts do not fit
    /// together (a damaged file).
    pub fn from_cache_parts(
        strings: Vec<String>,
        slots: &[[u8; 32]],
        rich: Vec<Entry>,
        version: u64,
        zone: &TimeZone,
    ) -> Option<Snapshot> {
        let strings = Strings::from_list(strings)?;
        let slots = slots
            .iter()
            .map(|b| exact::Slot::from_bytes(b, strings.len()))
            .collect::<Option<Vec<_>>>()?;
        let mut builder = SnapshotBuilder::new(zone);
        for entry in rich {
            builder.add(entry);
        }
        let rich = builder.finish(version).rich;
        Some(Snapshot {
            rich,
            exact: ExactTable::build(slots),
            strings,
            version,
        })
    }

    /// Monotonic build counter, for logs.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of rules on `list` (expired ones included until the next sync drops them).
    pub fn len(&self, list: ListKind) -> usize {
        self.rich.counts[list as usize] + self.exact.count(list)
    }

    /// True when there are no rules at all.
    pub fn is_empty(&self) -> bool {
        self.rich.rules.is_empty() && self.exact.len() == 0
    }

    /// Every rule (deduplicated): general rules in precedence order, then compact ones.
    /// Compact rules are materialized one by one; a 10-million list takes seconds to walk.
    pub fn entries(&self) -> impl Iterator<Item = Cow<'_, Entry>> {
        self.rich
            .rules
            .iter()
            .map(|r| Cow::Borrowed(r.entry.as_ref()))
            .chain(
                self.exact
                    .iter()
                    .map(|s| Cow::Owned(exact::to_entry(s, &self.strings))),
            )
    }

    /// Counts live rules at `now` in one pass with no per-rule allocation or map lookup for
    /// compact rules (10 million take tens of milliseconds): what the rule-count metrics need.
    pub fn tally(&self, now: SystemTime, author: &str) -> Tally {
        let mut tally = Tally::default();
        for r in self.rich.rules.iter().filter(|r| r.entry.is_live(now)) {
            *tally
                .by_kind
                .entry((r.entry.list, r.entry.pattern.kind()))
                .or_default() += 1;
            if let Some(t) = &r.entry.tenant {
                tally.tenants.insert(t.as_str().to_owned());
            }
            if r.entry.added_by.as_deref() == Some(author) {
                tally.by_author += 1;
            }
        }
        let now_ms = exact::unix_ms(now);
        let author_id = self.strings.find(author).filter(|id| *id != 0);
        let mut per_list = [0usize; 2];
        let mut tenant_ids = std::collections::HashSet::new();
        let mut last_tenant = 0;
        for slot in self.exact.iter().filter(|s| s.is_live(now_ms)) {
            per_list[slot.scope().list() as usize] += 1;
            if let Some(t) = slot.tenant()
                && t != last_tenant
            {
                tenant_ids.insert(t);
                last_tenant = t;
            }
            if author_id.is_some() && slot.added_by() == author_id {
                tally.by_author += 1;
            }
        }
        for list in ListKind::ALL {
            if per_list[list as usize] > 0 {
                *tally.by_kind.entry((list, "exact")).or_default() += per_list[list as usize];
            }
        }
        tally.tenants.extend(
            tenant_ids
                .into_iter()
                .map(|id| self.strings.get(id).to_owned()),
        );
        tally
    }

    /// True when `tenant`'s (or the global) block or allow list has a rule for `pattern`.
    pub fn has_rule(&self, tenant: Option<&Tenant>, pattern: &RulePattern) -> bool {
        ListKind::ALL
            .into_iter()
            .any(|list| self.has_rule_on(list, tenant, pattern))
    }

    /// True when `tenant`'s (or the global) `list` has a rule for `pattern`.
    pub fn has_rule_on(
        &self,
        list: ListKind,
        tenant: Option<&Tenant>,
        pattern: &RulePattern,
    ) -> bool {
        plain_key(tenant, list, pattern, &self.strings)
            .is_some_and(|k| self.exact.get(k.0, k.1).is_some())
            || self.rich.rules.iter().any(|r| {
                r.entry.list == list
                    && r.entry.tenant.as_ref() == tenant
                    && r.entry.pattern == *pattern
            })
    }

    /// Entries live at `now` on `list` (both when `None`) of `tenant` (every tenant and the
    /// global lists when `None`; `Some(None)` = the global lists only) added by `author` (any
    /// when `None`), unsorted. Compact rules are tested on their packed fields and turned into
    /// entries only when they pass, so a walk of a 10-million list for the few rules of one
    /// tenant or author does not build 10 million entries.
    pub fn live_where<'a>(
        &'a self,
        now: SystemTime,
        list: Option<ListKind>,
        tenant: Option<Option<&'a Tenant>>,
        author: Option<&'a str>,
    ) -> impl Iterator<Item = Cow<'a, Entry>> + 'a {
        let now_ms = exact::unix_ms(now);
        // The packed ids to compare with; an unknown tenant or author has no compact rules.
        let tenant_id: Option<Option<u32>> = tenant.map(|t| match t {
            None => Some(0),
            Some(t) => self.strings.find(t.as_str()).filter(|id| *id != 0),
        });
        let author_id: Option<Option<u32>> =
            author.map(|a| self.strings.find(a).filter(|id| *id != 0));
        let rich = self
            .rich
            .rules
            .iter()
            .map(|r| r.entry.as_ref())
            .filter(move |e| {
                e.is_live(now)
                    && list.is_none_or(|l| e.list == l)
                    && tenant.is_none_or(|t| e.tenant.as_ref() == t)
                    && author.is_none_or(|a| e.added_by.as_deref() == Some(a))
            });
        let compact = self
            .exact
            .iter()
            .filter(move |s| {
                s.is_live(now_ms)
                    && list.is_none_or(|l| s.scope().list() == l)
                    && tenant_id
                        .is_none_or(|want| want.is_some_and(|id| s.tenant().unwrap_or(0) == id))
                    && author_id.is_none_or(|want| want.is_some() && s.added_by() == want)
            })
            .map(|s| Cow::Owned(exact::to_entry(s, &self.strings)));
        rich.map(Cow::Borrowed).chain(compact)
    }

    /// All entries live at `now`, sorted by tenant, list, then canonical pattern (stable output).
    pub fn live_entries(&self, now: SystemTime) -> Vec<Cow<'_, Entry>> {
        let mut out: Vec<(Cow<'_, Entry>, String)> = self
            .entries()
            .filter(|e| e.is_live(now))
            .map(|e| {
                let text = e.pattern.to_string();
                (e, text)
            })
            .collect();
        out.sort_by(|a, b| (&a.0.tenant, a.0.list, &a.1).cmp(&(&b.0.tenant, b.0.list, &b.1)));
        out.into_iter().map(|(e, _)| e).collect()
    }

    /// The live compact rule for the call at `level` (tenant or global only), allow first.
    fn plain(
        &self,
        level: ScopeLevel,
        facts: &CallFacts<'_>,
        now_ms: u64,
        live_only: bool,
    ) -> impl Iterator<Item = &exact::Slot> {
        let number = facts.number.as_e164().map(E164::value);
        let tenant = match level {
            ScopeLevel::Global => Some(0),
            ScopeLevel::Tenant => facts.tenant.and_then(|t| self.strings.find(t.as_str())),
            _ => None,
        };
        let key = number.zip(tenant);
        ListKind::ALL_ALLOW_FIRST
            .into_iter()
            .filter_map(move |list| {
                let (n, t) = key?;
                self.exact
                    .get(n, exact::Scope::new(t, list))
                    .filter(|s| !live_only || s.is_live(now_ms))
            })
    }
}

/// Live rules by list and kind, the tenants that own any, and how many were added by `author`
/// ([`Snapshot::tally`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// `(list, kind) -> live rules`, only kinds present.
    pub by_kind: HashMap<(ListKind, &'static str), usize>,
    /// Tenants with at least one live rule.
    pub tenants: std::collections::BTreeSet<String>,
    /// Live rules added by the author asked about.
    pub by_author: usize,
}

const LEVELS: [ScopeLevel; 4] = [
    ScopeLevel::TenantDid,
    ScopeLevel::Tenant,
    ScopeLevel::GlobalDid,
    ScopeLevel::Global,
];

/// Writes an E.164 number's digits (no `+`) into `buf` and returns them.
fn e164_digits(value: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut v = value;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Result of deciding one call against a snapshot.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    /// The rule that decided, if any; `None` means no rule matched (the call is allowed).
    /// Borrowed for general rules, built on the spot for compact ones.
    pub decided_by: Option<Cow<'a, Entry>>,
    /// The scope the deciding rule came from.
    pub level: Option<ScopeLevel>,
}

impl Outcome<'_> {
    /// Block when the deciding rule is on the block list.
    pub fn is_block(&self) -> bool {
        self.decided_by
            .as_ref()
            .is_some_and(|e| e.list == ListKind::Block)
    }
}

/// Decides one call: the most specific scope with an applying rule decides; inside it the
/// rule first in precedence order. O(number length) per scope, whatever the rule count.
pub fn decide<'a>(facts: CallFacts<'_>, snapshot: &'a Snapshot, now: SystemTime) -> Outcome<'a> {
    let now_ms = exact::unix_ms(now);
    for level in LEVELS {
        let rich = snapshot.rich.best(level, &facts, now);
        let plain = snapshot.plain(level, &facts, now_ms, true).next();
        let decided_by = match (plain, rich) {
            // A compact rule is exact, the narrowest kind: it loses only to an exact allow
            // (a compact allow for the same key cannot exist beside it).
            (Some(slot), Some(id))
                if slot.scope().list() == ListKind::Block
                    && snapshot.rich.entry(id).is_some_and(|e| {
                        e.list == ListKind::Allow && matches!(e.pattern, RulePattern::Exact(_))
                    }) =>
            {
                snapshot.rich.entry(id).map(Cow::Borrowed)
            }
            (Some(slot), _) => Some(Cow::Owned(exact::to_entry(slot, &snapshot.strings))),
            (None, Some(id)) => snapshot.rich.entry(id).map(Cow::Borrowed),
            (None, None) => None,
        };
        if decided_by.is_some() {
            return Outcome {
                decided_by,
                level: Some(level),
            };
        }
    }
    Outcome {
        decided_by: None,
        level: None,
    }
}

/// One rule that matched a call, for `check --explain`.
#[derive(Debug, Clone)]
pub struct Match<'a> {
    /// The rule.
    pub entry: Cow<'a, Entry>,
    /// The scope it matched at.
    pub level: ScopeLevel,
    /// False when it has expired or is outside its schedule at the time asked.
    pub applies: bool,
    /// True for the rule that decided.
    pub winner: bool,
}

impl Match<'_> {
    /// Why this match did not decide the call, given the one that did (`check --explain` and
    /// the admin API's `/api/check` both say it this way).
    pub fn why_lost(&self, winner: Option<&Match<'_>>) -> &'static str {
        match winner {
            _ if !self.applies => "does not apply now (expired or outside its schedule)",
            Some(w) if w.level != self.level => {
                "lost: a rule in a narrower scope decided (tenant+did, tenant, global+did, global)"
            }
            Some(w) if w.entry.pattern.breadth() < self.entry.pattern.breadth() => {
                "lost: a more specific rule in the same scope decided"
            }
            Some(w) if w.entry.list == ListKind::Allow && self.entry.list == ListKind::Block => {
                "lost: as specific, and allow beats block"
            }
            _ => "lost: as specific, and the smaller canonical text decided",
        }
    }
}

/// Every rule that matches the call, the deciding one first, then by scope and precedence.
pub fn explain<'a>(
    facts: CallFacts<'_>,
    snapshot: &'a Snapshot,
    now: SystemTime,
) -> Vec<Match<'a>> {
    let winner = decide(facts, snapshot, now);
    let now_ms = exact::unix_ms(now);
    let mut out: Vec<Match<'a>> = Vec::new();
    for level in LEVELS {
        let mut found: Vec<(Cow<'a, Entry>, bool)> = snapshot
            .plain(level, &facts, now_ms, false)
            .map(|s| {
                (
                    Cow::Owned(exact::to_entry(s, &snapshot.strings)),
                    s.is_live(now_ms),
                )
            })
            .collect();
        if let Some(index) = snapshot.rich.scope(level, &facts) {
            let mut ids: Vec<u32> = index.exact.get(facts.number).cloned().unwrap_or_default();
            match facts.number {
                CallerNumber::E164(e) => {
                    let mut buf = [0u8; 20];
                    ids.extend(index.masks.all(e164_digits(e.value(), &mut buf)));
                }
                CallerNumber::Invalid(_) => ids.extend(&index.invalid),
                _ => {}
            }
            ids.sort_unstable();
            ids.dedup();
            found.extend(ids.into_iter().filter_map(|id| {
                Some((
                    Cow::Borrowed(snapshot.rich.entry(id)?),
                    snapshot.rich.applies(id, now),
                ))
            }));
        }
        // Precedence order inside the level: breadth, allow before block, then text.
        found.sort_by_cached_key(|(e, _)| {
            (
                e.pattern.breadth(),
                e.list == ListKind::Block,
                match e.pattern {
                    RulePattern::Exact(_) => String::new(),
                    ref p => p.to_string(),
                },
            )
        });
        out.extend(found.into_iter().map(|(entry, applies)| {
            let is_winner = winner.level == Some(level)
                && winner
                    .decided_by
                    .as_ref()
                    .is_some_and(|w| w.key() == entry.key());
            Match {
                entry,
                level,
                applies,
                winner: is_winner,
            }
        }));
    }
    // Stable: keeps scope and precedence order behind the winner.
    out.sort_by_key(|m| !m.winner);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::number::Normalizer;
    use std::time::Duration;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    /// `"block +7495123*"`, `"allow@acme +74951234567"`, `"block@acme/+74951112233 +7495*"`.
    fn rule(spec: &str) -> Entry {
        let n = Normalizer::default();
        let (head, pattern) = spec.split_once(' ').expect("spec");
        let (head, did) = head.split_once('/').unwrap_or((head, ""));
        let (list, tenant) = head.split_once('@').unwrap_or((head, ""));
        let list = if list == "allow" {
            ListKind::Allow
        } else {
            ListKind::Block
        };
        let mut e = Entry::new(list, RulePattern::parse(pattern, &n).expect("pattern"));
        e.tenant = (!tenant.is_empty()).then(|| Tenant::new(tenant).expect("tenant"));
        if !did.is_empty() {
            e.dids = vec![n.normalize(did)];
        }
        e.reason = spec.to_owned();
        e
    }

    /// Which rule decides `number` (for `tenant`, `did`); "none" when none.
    fn winner(rules: &[&str], number: &str, tenant: &str, did: &str) -> String {
        let n = Normalizer::default();
        let snap = Snapshot::compile(rules.iter().map(|r| rule(r)), 1);
        let number = n.normalize(number);
        let tenant = (!tenant.is_empty()).then(|| Tenant::new(tenant).expect("tenant"));
        let did = (!did.is_empty()).then(|| n.normalize(did));
        let facts = CallFacts {
            number: &number,
            tenant: tenant.as_ref(),
            did: did.as_ref(),
        };
        decide(facts, &snap, t0())
            .decided_by
            .map_or_else(|| "none".to_owned(), |e| e.reason.clone())
    }

    #[test]
    fn live_where_filters_compact_and_general_rules_alike() {
        let mut rules: Vec<Entry> = [
            "block +74951234567",
            "block@acme +74951234568",
            "allow@acme +74951234569",
            "block@beta +74951234570",
            "block@acme +7495123*",
            "block +7812*",
        ]
        .iter()
        .map(|r| rule(r))
        .collect();
        let mut ban = rule("block@acme +74959990000");
        ban.added_by = Some("detector".into());
        let mut gone = rule("block@acme +74959990001");
        gone.added_by = Some("detector".into());
        gone.expires_at = Some(t0() - Duration::from_secs(1));
        rules.extend([ban, gone]);
        let snap = Snapshot::compile(rules, 1);
        let acme = Tenant::new("acme").expect("tenant");
        let nobody = Tenant::new("nobody").expect("tenant");
        let found = |list, tenant: Option<Option<&Tenant>>, author| {
            let mut v: Vec<String> = snap
                .live_where(t0(), list, tenant, author)
                .map(|e| e.reason.clone())
                .collect();
            v.sort();
            v
        };
        assert_eq!(found(None, None, None).len(), 7, "every live rule");
        assert_eq!(
            found(Some(ListKind::Block), Some(Some(&acme)), None),
            [
                "block@acme +7495123*",
                "block@acme +74951234568",
                "block@acme +74959990000",
            ]
        );
        assert_eq!(
            found(None, Some(None), None),
            ["block +74951234567", "block +7812*"]
        );
        assert_eq!(
            found(None, None, Some("detector")),
            ["block@acme +74959990000"]
        );
        assert!(found(None, Some(Some(&nobody)), None).is_empty());
        assert!(found(None, None, Some("nobody")).is_empty());
        // The same rules, counted the slow way.
        assert_eq!(snap.live_entries(t0()).len(), 7);
    }

    #[test]
    fn every_rule_kind_matches_every_delivered_format() {
        for rule_text in [
            "block 8 (495) 123-45-67",
            "block +7495123*",
            "block _7495123XXXX",
            "block 8 (495) 123-XX-XX",
            "block _7495ZXXXXXX",
            "block _749512[1-5]XXXX",
            "block _7495123.",
            "block _7495123!",
            "block +74951230000-+74951239999",
        ] {
            for caller in [
                "+74951234567",
                "84951234567",
                "4951234567",
                "sip:74951234567@x",
            ] {
                assert_eq!(winner(&[rule_text], caller, "", ""), rule_text, "{caller}");
            }
            assert_eq!(
                winner(&[rule_text], "+74961234567", "", ""),
                "none",
                "{rule_text}"
            );
        }
        // Boundaries: '.' needs one more digit, '!' none; classes and ranges are inclusive.
        assert_eq!(
            winner(&["block _74951234567."], "+74951234567", "", ""),
            "none"
        );
        assert_eq!(
            winner(&["block _74951234567!"], "+74951234567", "", ""),
            "block _74951234567!"
        );
        assert_eq!(
            winner(&["block _749512[1-2]XXXX"], "+74951234567", "", ""),
            "none"
        );
        assert_eq!(
            winner(&["block +74951230000-+74951234567"], "+74951234567", "", ""),
            "block +74951230000-+74951234567"
        );
        assert_eq!(
            winner(&["block +74951230000-+74951234566"], "+74951234567", "", ""),
            "none"
        );
    }

    #[test]
    fn precedence_table() {
        let cases: &[(&[&str], &str, &str, &str, &str)] = &[
            // Allow beats block when equally specific.
            (
                &["block +74951234567", "allow +74951234567"],
                "84951234567",
                "",
                "",
                "allow +74951234567",
            ),
            (
                &["block +7495123XXXX", "allow +74951230000-+74951239999"],
                "84951234567",
                "",
                "",
                "allow +74951230000-+74951239999",
            ),
            // More specific beats less specific, whichever list.
            (
                &["block +7495*", "allow +74951234567"],
                "84951234567",
                "",
                "",
                "allow +74951234567",
            ),
            (
                &["allow +7495*", "block +74951234567"],
                "84951234567",
                "",
                "",
                "block +74951234567",
            ),
            (
                &["allow +7495*", "block +7495123XXXX"],
                "84951234567",
                "",
                "",
                "block +7495123XXXX",
            ),
            (
                &["allow +749512XXXXX", "block +7495123XXXX"],
                "84951234567",
                "",
                "",
                "block +7495123XXXX",
            ),
            (
                &["block +7495*", "allow +74951*"],
                "84951234567",
                "",
                "",
                "allow +74951*",
            ),
            // A mask of 100 numbers beats a range of 1000; a range of 10 beats a mask of 100.
            (
                &["allow +74951230000-+74951234999", "block +74951234XXX"],
                "84951234567",
                "",
                "",
                "block +74951234XXX",
            ),
            (
                &["block +749512345XX", "allow +74951234560-+74951234569"],
                "84951234567",
                "",
                "",
                "allow +74951234560-+74951234569",
            ),
            // Tenant rules beat global rules, even less specific ones.
            (
                &["allow +74951234567", "block@acme +7495*"],
                "84951234567",
                "acme",
                "",
                "block@acme +7495*",
            ),
            (
                &["block +74951234567", "allow@acme +7*"],
                "84951234567",
                "acme",
                "",
                "allow@acme +7*",
            ),
            // Another tenant's rules do not apply.
            (
                &["block@other +74951234567"],
                "84951234567",
                "acme",
                "",
                "none",
            ),
            (&["block@acme +74951234567"], "84951234567", "", "", "none"),
            // DID-limited rules beat the scope's plain rules and apply only to that DID.
            (
                &["allow@acme +7*", "block@acme/+74951112233 +7495*"],
                "84951234567",
                "acme",
                "+74951112233",
                "block@acme/+74951112233 +7495*",
            ),
            (
                &["allow@acme +7*", "block@acme/+74951112233 +7495*"],
                "84951234567",
                "acme",
                "+74951112299",
                "allow@acme +7*",
            ),
            (
                &["block/+74951112233 +74951234567"],
                "84951234567",
                "",
                "84951112233",
                "block/+74951112233 +74951234567",
            ),
            (
                &["block/+74951112233 +74951234567"],
                "84951234567",
                "",
                "",
                "none",
            ),
            // Global DID rule vs tenant rule: tenant wins.
            (
                &["block/+74951112233 +74951234567", "allow@acme +7*"],
                "84951234567",
                "acme",
                "+74951112233",
                "allow@acme +7*",
            ),
            // Equal breadth and list: smaller canonical text wins (deterministic).
            (
                &["block +7495123XXXX", "block +749512X4XXX"],
                "84951234567",
                "",
                "",
                "block +7495123XXXX",
            ),
            // Anonymous and invalid callers.
            (&["block anonymous"], "Anonymous", "", "", "block anonymous"),
            (
                &["block anonymous", "allow@acme anonymous"],
                "",
                "acme",
                "",
                "allow@acme anonymous",
            ),
            (&["block invalid"], "SPAM", "", "", "block invalid"),
            (
                &["block invalid", "allow invalid:spam"],
                "SPAM",
                "",
                "",
                "allow invalid:spam",
            ),
            (&["block invalid"], "anonymous", "", "", "none"),
            (&["block invalid"], "101", "", "", "none"),
        ];
        for (rules, number, tenant, did, expected) in cases {
            assert_eq!(
                winner(rules, number, tenant, did),
                *expected,
                "rules {rules:?}, call from {number} tenant {tenant:?} did {did:?}"
            );
            // Order of entry must not matter.
            let reversed: Vec<&str> = rules.iter().rev().copied().collect();
            assert_eq!(
                winner(&reversed, number, tenant, did),
                *expected,
                "reversed {rules:?}"
            );
        }
    }

    #[test]
    fn expired_rules_fall_through_to_the_next() {
        let mut short = rule("block +74951234567");
        short.expires_at = Some(t0() + Duration::from_secs(60));
        let wide = rule("block +7495*");
        let snap = Snapshot::compile([short, wide], 1);
        let n = Normalizer::default().normalize("+74951234567");
        let at = |s| decide(CallFacts::number(&n), &snap, t0() + Duration::from_secs(s));
        assert_eq!(
            at(0).decided_by.map(|e| e.reason.clone()).as_deref(),
            Some("block +74951234567")
        );
        assert_eq!(
            at(60).decided_by.map(|e| e.reason.clone()).as_deref(),
            Some("block +7495*")
        );
        let all = explain(CallFacts::number(&n), &snap, t0() + Duration::from_secs(60));
        assert_eq!(all.len(), 2);
        assert!(all[0].winner && all[0].applies);
        assert!(!all[1].winner && !all[1].applies);
    }

    #[test]
    fn schedules_apply_only_inside_their_windows() {
        let mut night = rule("block +7495*");
        night.schedule = Some("daily 22:00-06:00".parse().expect("schedule"));
        night.time_zone = Some("UTC".into());
        let snap = Snapshot::compile([night], 1);
        let n = Normalizer::default().normalize("+74951234567");
        // t0 is 2027-01-15 08:00:00 UTC.
        let at = |h: u64| {
            decide(
                CallFacts::number(&n),
                &snap,
                t0() + Duration::from_secs(h * 3600),
            )
            .is_block()
        };
        assert!(!at(0));
        assert!(at(14));
        assert!(at(21));
        assert!(!at(22));
    }

    #[test]
    fn duplicates_merge_to_longest_life() {
        let mut short = rule("block +74951234567");
        short.reason = "short".into();
        short.expires_at = Some(t0());
        let mut permanent = rule("block 84951234567");
        permanent.reason = "permanent".into();
        let snap = Snapshot::compile([permanent, short], 1);
        assert_eq!(snap.len(ListKind::Block), 1);
        let n = Normalizer::default().normalize("4951234567");
        let outcome = decide(CallFacts::number(&n), &snap, t0() + Duration::from_secs(5));
        assert_eq!(
            outcome.decided_by.map(|e| e.reason.clone()).as_deref(),
            Some("permanent")
        );
    }

    #[test]
    fn explain_lists_every_match_winner_first() {
        let snap = Snapshot::compile(
            [
                rule("block +7495*"),
                rule("allow +74951234567"),
                rule("block +7495123XXXX"),
                rule("block@acme +7*"),
                rule("block +7496*"),
            ],
            1,
        );
        let n = Normalizer::default().normalize("+74951234567");
        let acme = Tenant::new("ACME").expect("tenant");
        let facts = CallFacts {
            number: &n,
            tenant: Some(&acme),
            did: None,
        };
        let all: Vec<String> = explain(facts, &snap, t0())
            .iter()
            .map(|m| format!("{} {} {}", m.winner, m.level.as_str(), m.entry.reason))
            .collect();
        assert_eq!(
            all,
            [
                "true tenant block@acme +7*",
                "false global allow +74951234567",
                "false global block +7495123XXXX",
                "false global block +7495*",
            ]
        );
    }

    #[test]
    fn tenant_names_are_checked_and_case_folded() {
        assert_eq!(
            Tenant::new(" Acme-1.ru ").map(|t| t.to_string()),
            Ok("acme-1.ru".into())
        );
        for bad in ["", "a b", "a:b", "ac\nme", "a\"b", &"x".repeat(65)] {
            assert!(Tenant::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tally_counts_live_rules_of_both_storages() {
        let mut expired = rule("block +74951110000");
        expired.expires_at = Some(t0() - Duration::from_secs(1));
        let mut ban = rule("block +74951110001");
        ban.added_by = Some("detector".into());
        ban.expires_at = Some(t0() + Duration::from_secs(60));
        let mut masked_ban = rule("block +7812*");
        masked_ban.added_by = Some("detector".into());
        let snap = Snapshot::compile(
            [
                expired,
                ban,
                masked_ban,
                rule("block +74951110002"),
                rule("allow@acme +74951110003"),
                rule("block@zeta +7495*"),
                rule("block@acme/+74951112233 +74951110004"),
            ],
            1,
        );
        let tally = snap.tally(t0(), "detector");
        let get = |list, kind| tally.by_kind.get(&(list, kind)).copied().unwrap_or(0);
        // The expired compact rule is not counted; the DID-scoped exact one is a general rule.
        assert_eq!(get(ListKind::Block, "exact"), 3);
        assert_eq!(get(ListKind::Allow, "exact"), 1);
        assert_eq!(get(ListKind::Block, "prefix"), 2);
        assert_eq!(tally.by_author, 2);
        assert_eq!(
            tally.tenants.iter().map(String::as_str).collect::<Vec<_>>(),
            ["acme", "zeta"]
        );
        assert_eq!(snap.len(ListKind::Block), 6);
    }

    #[test]
    fn no_match_allows() {
        let snap = Snapshot::default();
        let number = Normalizer::default().normalize("+74951234567");
        let outcome = decide(CallFacts::number(&number), &snap, SystemTime::UNIX_EPOCH);
        assert!(outcome.decided_by.is_none());
        assert!(!outcome.is_block());
    }

    mod agrees_with_naive {
        use super::*;
        use proptest::prelude::*;

        const TENANTS: [&str; 2] = ["a", "b"];
        const DIDS: [&str; 2] = ["+74951112233", "+74951112244"];

        fn digits4() -> impl Strategy<Value = String> {
            proptest::collection::vec(prop_oneof![Just('0'), Just('1'), Just('2')], 4)
                .prop_map(|d| d.into_iter().collect())
        }

        fn pattern_text() -> impl Strategy<Value = String> {
            let elem = prop_oneof![
                Just("0".to_owned()),
                Just("1".to_owned()),
                Just("2".to_owned()),
                Just("X".to_owned()),
                Just("[01]".to_owned()),
            ];
            prop_oneof![
                digits4().prop_map(|d| format!("+7495123{d}")),
                (0usize..4).prop_flat_map(|k| {
                    proptest::collection::vec(prop_oneof![Just('0'), Just('1'), Just('2')], k)
                        .prop_map(|d| format!("+7495123{}*", d.into_iter().collect::<String>()))
                }),
                proptest::collection::vec(elem, 4).prop_map(|e| format!("+7495123{}", e.concat())),
                (digits4(), digits4()).prop_map(|(a, b)| {
                    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                    format!("+7495123{lo}-+7495123{hi}")
                }),
                Just("anonymous".to_owned()),
                Just("invalid".to_owned()),
                Just("invalid:spam".to_owned()),
            ]
        }

        fn entry() -> impl Strategy<Value = Entry> {
            (
                any::<bool>(),
                proptest::option::of(0usize..2),
                proptest::collection::vec(0usize..2, 0..3),
                pattern_text(),
                0u8..4,
            )
                .prop_map(|(allow, tenant, dids, text, life)| {
                    let n = Normalizer::default();
                    let list = if allow {
                        ListKind::Allow
                    } else {
                        ListKind::Block
                    };
                    let mut e = Entry::new(list, RulePattern::parse(&text, &n).expect("pattern"));
                    e.tenant = tenant.map(|t| Tenant::new(TENANTS[t]).expect("tenant"));
                    let mut dids: Vec<CallerNumber> =
                        dids.into_iter().map(|d| n.normalize(DIDS[d])).collect();
                    dids.sort();
                    dids.dedup();
                    e.dids = dids;
                    // One in four has already expired; one in four expires later.
                    e.expires_at = match life {
                        0 => Some(t0() - std::time::Duration::from_secs(1)),
                        1 => Some(t0() + std::time::Duration::from_secs(60)),
                        _ => None,
                    };
                    e
                })
        }

        fn level_of(e: &Entry, facts: &CallFacts<'_>) -> Option<ScopeLevel> {
            let did_ok = |e: &Entry| facts.did.is_some_and(|d| e.dids.contains(d));
            match (&e.tenant, e.dids.is_empty()) {
                (Some(t), false) if facts.tenant == Some(t) && did_ok(e) => {
                    Some(ScopeLevel::TenantDid)
                }
                (Some(t), true) if facts.tenant == Some(t) => Some(ScopeLevel::Tenant),
                (None, false) if did_ok(e) => Some(ScopeLevel::GlobalDid),
                (None, true) => Some(ScopeLevel::Global),
                _ => None,
            }
        }

        /// The documented precedence, rule by rule, over the merged entries.
        fn naive<'e>(entries: &'e [Entry], facts: &CallFacts<'_>) -> Option<&'e Entry> {
            entries
                .iter()
                .filter(|e| e.is_live(t0()) && e.pattern.matches(facts.number))
                .filter_map(|e| level_of(e, facts).map(|l| (l, e)))
                .min_by(|(la, a), (lb, b)| {
                    let key = |e: &Entry| {
                        let text = match e.pattern {
                            RulePattern::Exact(_) => String::new(),
                            ref p => p.to_string(),
                        };
                        (e.pattern.breadth(), e.list == ListKind::Block, text)
                    };
                    (la, key(a)).cmp(&(lb, key(b)))
                })
                .map(|(_, e)| e)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn compiled_snapshot_decides_like_the_naive_matcher(
                entries in proptest::collection::vec(entry(), 1..25),
                calls in proptest::collection::vec(
                    (
                        prop_oneof![
                            digits4().prop_map(|d| format!("+7495123{d}")),
                            Just("anonymous".to_owned()),
                            Just("SPAM".to_owned()),
                            Just("EGGS".to_owned()),
                        ],
                        proptest::option::of(0usize..2),
                        proptest::option::of(0usize..2),
                    ),
                    1..12,
                ),
            ) {
                let snap = Snapshot::compile(entries.clone(), 1);
                // The merge the snapshot does: one entry per key, the longest-lived.
                let merged: Vec<Entry> = snap.entries().map(Cow::into_owned).collect();
                let n = Normalizer::default();
                for (number, tenant, did) in calls {
                    let number = n.normalize(&number);
                    let tenant = tenant.map(|t| Tenant::new(TENANTS[t]).expect("tenant"));
                    let did = did.map(|d| n.normalize(DIDS[d]));
                    let facts = CallFacts { number: &number, tenant: tenant.as_ref(), did: did.as_ref() };
                    let outcome = decide(facts, &snap, t0());
                    let got = outcome.decided_by.as_deref().map(Entry::key);
                    let want = naive(&merged, &facts).map(|e| e.key());
                    prop_assert_eq!(got, want, "call {} tenant {:?} did {:?}", number, tenant, did);
                    let explained = explain(facts, &snap, t0());
                    let all = merged
                        .iter()
                        .filter(|e| e.pattern.matches(&number) && level_of(e, &facts).is_some())
                        .count();
                    prop_assert_eq!(explained.len(), all);
                }
            }

            #[test]
            fn patched_snapshot_decides_like_a_fresh_compile(
                before in proptest::collection::vec(entry(), 0..20),
                added in proptest::collection::vec(entry(), 0..10),
                removed in proptest::collection::vec(0usize..20, 0..6),
                calls in proptest::collection::vec(
                    (
                        prop_oneof![
                            digits4().prop_map(|d| format!("+7495123{d}")),
                            Just("anonymous".to_owned()),
                            Just("SPAM".to_owned()),
                        ],
                        proptest::option::of(0usize..2),
                        proptest::option::of(0usize..2),
                    ),
                    1..12,
                ),
            ) {
                let zone = TimeZone::utc();
                let base = Snapshot::compile(before.clone(), 1);
                let mut want: HashMap<RuleKey, Entry> = base
                    .entries()
                    .map(|e| ((e.tenant.clone(), e.list, e.pattern.clone()), e.into_owned()))
                    .collect();
                let mut changes: Vec<(RuleKey, Option<Entry>)> = Vec::new();
                for i in removed {
                    if let Some(e) = before.get(i) {
                        let key = (e.tenant.clone(), e.list, e.pattern.clone());
                        want.remove(&key);
                        changes.push((key, None));
                    }
                }
                for e in added {
                    let key = (e.tenant.clone(), e.list, e.pattern.clone());
                    want.insert(key.clone(), e.clone());
                    changes.push((key, Some(e)));
                }
                let patched = base.patched(changes, 2, &zone);
                let fresh = Snapshot::compile(want.into_values(), 2);
                prop_assert_eq!(patched.len(ListKind::Block), fresh.len(ListKind::Block));
                prop_assert_eq!(patched.len(ListKind::Allow), fresh.len(ListKind::Allow));
                let n = Normalizer::default();
                for (number, tenant, did) in calls {
                    let number = n.normalize(&number);
                    let tenant = tenant.map(|t| Tenant::new(TENANTS[t]).expect("tenant"));
                    let did = did.map(|d| n.normalize(DIDS[d]));
                    let facts = CallFacts { number: &number, tenant: tenant.as_ref(), did: did.as_ref() };
                    let got = decide(facts, &patched, t0());
                    let want = decide(facts, &fresh, t0());
                    prop_assert_eq!(got.decided_by, want.decided_by);
                    prop_assert_eq!(got.level, want.level);
                    prop_assert_eq!(
                        explain(facts, &patched, t0()).len(),
                        explain(facts, &fresh, t0()).len()
                    );
                }
            }
        }
    }
}
