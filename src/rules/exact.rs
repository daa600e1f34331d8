//! Compact storage for the bulk of a big list: exact E.164 numbers with nothing but bookkeeping
//! (no DIDs, action, schedule or zone). A national spam list is millions of these; as general
//! [`Entry`] values they cost ~900 bytes each, here 32 bytes in an open-addressing slot.
//!
//! The table is split into shards that are never changed once built: an edit rebuilds only the
//! shards it touches and shares the rest with the previous snapshot, so publishing an edit to
//! a 10-million-entry list copies kilobytes, not gigabytes, and readers never wait.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Entry, ListKind, RulePattern, Tenant};
use crate::number::{CallerNumber, E164};

/// Entries a shard holds on average after a (re)build; small enough that an edit copies ~80 KB.
const SHARD_TARGET: usize = 2048;
/// Re-shard when shards have grown to this many times the target on average.
const SHARD_GROWTH: usize = 8;

/// Where a rule applies: the tenant's string id (0 = global) and the list, packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Scope(u32);

impl Scope {
    pub(crate) fn new(tenant: u32, list: ListKind) -> Scope {
        Scope(tenant << 1 | list as u32)
    }

    fn tenant(self) -> u32 {
        self.0 >> 1
    }

    pub(crate) fn list(self) -> ListKind {
        if self.0 & 1 == ListKind::Block as u32 {
            ListKind::Block
        } else {
            ListKind::Allow
        }
    }
}

/// One stored rule. `number == 0` marks an empty slot (an E.164 value is never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Slot {
    number: u64,
    /// Unix milliseconds; 0 = never expires.
    expires_ms: u64,
    scope: u32,
    /// String ids: reason (0 = ""), who added it (0 = unknown).
    reason: u32,
    added_by: u32,
    /// Unix seconds; 0 = unknown.
    added_at: u32,
}

impl Slot {
    pub(crate) fn key(&self) -> (u64, Scope) {
        (self.number, Scope(self.scope))
    }

    pub(crate) fn scope(&self) -> Scope {
        Scope(self.scope)
    }

    /// String id of the tenant; `None` for the global list.
    pub(crate) fn tenant(&self) -> Option<u32> {
        Some(self.scope().tenant()).filter(|id| *id != 0)
    }

    /// String id of who added it, if known.
    pub(crate) fn added_by(&self) -> Option<u32> {
        Some(self.added_by).filter(|id| *id != 0)
    }

    /// Applies at `now_ms` (Unix milliseconds).
    pub(crate) fn is_live(&self, now_ms: u64) -> bool {
        self.expires_ms == 0 || now_ms < self.expires_ms
    }

    /// The slot's 32 bytes, little-endian, for the snapshot file.
    pub(crate) fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[0..8].copy_from_slice(&self.number.to_le_bytes());
        out[8..16].copy_from_slice(&self.expires_ms.to_le_bytes());
        out[16..20].copy_from_slice(&self.scope.to_le_bytes());
        out[20..24].copy_from_slice(&self.reason.to_le_bytes());
        out[24..28].copy_from_slice(&self.added_by.to_le_bytes());
        out[28..32].copy_from_slice(&self.added_at.to_le_bytes());
        out
    }

    /// Reads [`Slot::to_bytes`]; `None` when a string id is outside `strings` or the number
    /// is not an E.164 value.
    pub(crate) fn from_bytes(b: &[u8; 32], strings: usize) -> Option<Slot> {
        let u64_at = |i: usize| b.get(i..i + 8)?.try_into().ok().map(u64::from_le_bytes);
        let u32_at = |i: usize| b.get(i..i + 4)?.try_into().ok().map(u32::from_le_bytes);
        let slot = Slot {
            number: u64_at(0)?,
            expires_ms: u64_at(8)?,
            scope: u32_at(16)?,
            reason: u32_at(20)?,
            added_by: u32_at(24)?,
            added_at: u32_at(28)?,
        };
        let ids_ok = [slot.scope().tenant(), slot.reason, slot.added_by]
            .iter()
            .all(|&id| (id as usize) < strings);
        (ids_ok && E164::from_value(slot.number).is_some()).then_some(slot)
    }

    /// Equal as rules, reading string ids through each side's table; expiries closer than
    /// `jitter_ms` count as equal.
    pub(crate) fn same_as(
        &self,
        mine: &Strings,
        other: &Slot,
        theirs: &Strings,
        jitter_ms: u64,
    ) -> bool {
        self.number == other.number
            && self.scope().list() == other.scope().list()
            && mine.get(self.scope().tenant()) == theirs.get(other.scope().tenant())
            && mine.get(self.reason) == theirs.get(other.reason)
            && mine.get(self.added_by) == theirs.get(other.added_by)
            && self.added_at == other.added_at
            && (self.expires_ms == 0) == (other.expires_ms == 0)
            && self.expires_ms.abs_diff(other.expires_ms) < jitter_ms
    }

    /// Of two slots for one key, the one that lives longer (the same merge as for entries).
    fn outlives(&self, other: &Slot) -> bool {
        match (self.expires_ms, other.expires_ms) {
            (0, 0) => false,
            (0, _) => true,
            (_, 0) => false,
            (a, b) => a > b,
        }
    }
}

/// Strings the slots point at (reasons, `added_by`, tenant names), each stored once.
/// Id 0 is the empty string. Append-only between full rebuilds; cloning shares the storage.
#[derive(Debug, Clone, Default)]
pub(crate) struct Strings {
    list: Arc<Vec<Arc<str>>>,
    index: Arc<HashMap<Arc<str>, u32>>,
    // The last strings interned: a bulk load repeats one reason and one author for millions
    // of rules, and a byte compare is cheaper than hashing.
    recent: [u32; 2],
}

impl Strings {
    pub(crate) fn new() -> Strings {
        let empty: Arc<str> = Arc::from("");
        Strings {
            list: Arc::new(vec![empty.clone()]),
            index: Arc::new(HashMap::from([(empty, 0)])),
            recent: [0; 2],
        }
    }

    pub(crate) fn get(&self, id: u32) -> &str {
        self.list.get(id as usize).map_or("", |s| s)
    }

    pub(crate) fn find(&self, text: &str) -> Option<u32> {
        self.index.get(text).copied()
    }

    /// The id of `text`, adding it when new (copying the table only when shared).
    pub(crate) fn intern(&mut self, text: &str) -> Option<u32> {
        if let Some(&id) = self.recent.iter().find(|&&id| self.get(id) == text) {
            return Some(id);
        }
        if let Some(id) = self.find(text) {
            self.recent = [id, self.recent[0]];
            return Some(id);
        }
        let id = u32::try_from(self.list.len()).ok()?;
        let text: Arc<str> = Arc::from(text);
        Arc::make_mut(&mut self.list).push(text.clone());
        Arc::make_mut(&mut self.index).insert(text, id);
        self.recent = [id, self.recent[0]];
        Some(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    /// Every string by id (id 0 first, the empty string).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|s| &**s)
    }

    /// A table holding `list` by position; `None` unless it starts with the empty string and
    /// has no duplicates.
    pub(crate) fn from_list(list: Vec<String>) -> Option<Strings> {
        if list.first().map(String::as_str) != Some("") {
            return None;
        }
        let list: Vec<Arc<str>> = list.into_iter().map(Arc::from).collect();
        let mut index = HashMap::with_capacity(list.len());
        for (id, text) in list.iter().enumerate() {
            if index
                .insert(text.clone(), u32::try_from(id).ok()?)
                .is_some()
            {
                return None;
            }
        }
        Some(Strings {
            list: Arc::new(list),
            index: Arc::new(index),
            recent: [0; 2],
        })
    }
}

/// Turns an entry into a slot when it is plain enough to store compactly: an exact E.164 number
/// with no DIDs, action, schedule or zone, times that fit the slot without rounding.
pub(crate) fn to_slot(entry: &Entry, strings: &mut Strings) -> Option<Slot> {
    let RulePattern::Exact(CallerNumber::E164(number)) = entry.pattern else {
        return None;
    };
    if !entry.dids.is_empty()
        || entry.action.is_some()
        || entry.schedule.is_some()
        || entry.time_zone.is_some()
        || entry.added_by.as_deref() == Some("")
    {
        return None;
    }
    let added_at = match entry.added_at {
        None => 0,
        Some(t) => {
            let d = t.duration_since(UNIX_EPOCH).ok()?;
            if d.subsec_nanos() != 0 {
                return None;
            }
            u32::try_from(d.as_secs()).ok().filter(|s| *s != 0)?
        }
    };
    let expires_ms = match entry.expires_at {
        None => 0,
        Some(t) => {
            let d = t.duration_since(UNIX_EPOCH).ok()?;
            if d.subsec_nanos() % 1_000_000 != 0 {
                return None;
            }
            u64::try_from(d.as_millis()).ok().filter(|ms| *ms != 0)?
        }
    };
    let tenant = match &entry.tenant {
        None => 0,
        Some(t) => strings.intern(t.as_str())?,
    };
    if tenant >= 1 << 31 {
        return None;
    }
    Some(Slot {
        number: number.value(),
        expires_ms,
        scope: Scope::new(tenant, entry.list).0,
        reason: strings.intern(&entry.reason)?,
        added_by: match &entry.added_by {
            None => 0,
            Some(who) => strings.intern(who)?,
        },
        added_at,
    })
}

/// The entry a slot stands for.
pub(crate) fn to_entry(slot: &Slot, strings: &Strings) -> Entry {
    let scope = slot.scope();
    let pattern = RulePattern::Exact(
        E164::from_value(slot.number).map_or(CallerNumber::Anonymous, CallerNumber::E164),
    );
    let mut entry = Entry::new(scope.list(), pattern);
    entry.tenant = match scope.tenant() {
        0 => None,
        id => Some(Tenant(strings.get(id).into())),
    };
    entry.reason = strings.get(slot.reason).to_owned();
    entry.added_by = match slot.added_by {
        0 => None,
        id => Some(strings.get(id).to_owned()),
    };
    entry.added_at =
        (slot.added_at != 0).then(|| UNIX_EPOCH + Duration::from_secs(u64::from(slot.added_at)));
    entry.expires_at =
        (slot.expires_ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(slot.expires_ms));
    entry
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn hash(number: u64, scope: Scope) -> u64 {
    // A multiply-xorshift mix: numbers cluster in blocks of consecutive values, and both the
    // shard (high bits) and the slot (low bits) must spread them evenly.
    let mut x = number ^ (u64::from(scope.0) << 50) ^ u64::from(scope.0);
    x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 32)
}

/// One immutable open-addressing table (linear probing, at most 80% full). A full build puts
/// every shard in one shared block: one big allocation goes back to the OS whole when the
/// table is dropped, where thousands of 80 KB ones would stay in the allocator's heap and keep
/// a replaced table's memory resident. Shards rebuilt by a patch own their slots.
#[derive(Debug, Default)]
struct Shard {
    slots: ShardSlots,
}

#[derive(Debug)]
enum ShardSlots {
    /// `block[start..start + len]`.
    InBlock {
        block: Arc<Vec<Slot>>,
        start: usize,
        len: usize,
    },
    Own(Box<[Slot]>),
}

impl Default for ShardSlots {
    fn default() -> Self {
        ShardSlots::Own(Box::default())
    }
}

/// Slots an open-addressing table of `n` distinct keys takes.
fn capacity(n: usize) -> usize {
    if n == 0 { 0 } else { n + n / 4 + 1 }
}

/// Places distinct-key `items` into the empty `slots` (of [`capacity`] of their count).
fn fill(slots: &mut [Slot], items: &[Slot]) {
    let cap = slots.len();
    if cap == 0 {
        return;
    }
    for item in items {
        let mut i = start(hash(item.number, Scope(item.scope)), cap);
        while slots.get(i).is_some_and(|s| s.number != 0) {
            i = if i + 1 == cap { 0 } else { i + 1 };
        }
        if let Some(slot) = slots.get_mut(i) {
            *slot = *item;
        }
    }
}

impl Shard {
    /// Builds from slots with distinct keys, in its own allocation.
    fn build(items: &[Slot]) -> Shard {
        let mut slots = vec![Slot::default(); capacity(items.len())].into_boxed_slice();
        fill(&mut slots, items);
        Shard {
            slots: ShardSlots::Own(slots),
        }
    }

    fn slots(&self) -> &[Slot] {
        match &self.slots {
            ShardSlots::InBlock { block, start, len } => {
                block.get(*start..*start + *len).unwrap_or_default()
            }
            ShardSlots::Own(slots) => slots,
        }
    }

    fn get(&self, number: u64, scope: Scope, h: u64) -> Option<&Slot> {
        let slots = self.slots();
        let cap = slots.len();
        if cap == 0 {
            return None;
        }
        let mut i = start(h, cap);
        loop {
            let slot = slots.get(i)?;
            if slot.number == 0 {
                return None;
            }
            if slot.number == number && slot.scope == scope.0 {
                return Some(slot);
            }
            i = if i + 1 == cap { 0 } else { i + 1 };
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots().iter().filter(|s| s.number != 0)
    }
}

/// Maps a hash's low 32 bits onto `0..cap` without a division.
fn start(h: u64, cap: usize) -> usize {
    (((h & 0xFFFF_FFFF) * cap as u64) >> 32) as usize
}

/// A key and its new slot; `None` removes it.
pub(crate) type SlotChange = ((u64, Scope), Option<Slot>);

/// The compact table: shards chosen by the hash's high bits.
#[derive(Debug, Clone)]
pub(crate) struct ExactTable {
    shards: Vec<Arc<Shard>>,
    bits: u32,
    len: usize,
    counts: [usize; 2],
}

impl Default for ExactTable {
    fn default() -> Self {
        ExactTable {
            shards: vec![Arc::new(Shard::default())],
            bits: 0,
            len: 0,
            counts: [0; 2],
        }
    }
}

impl ExactTable {
    /// Builds from slots; of several for one key the longest-lived stays.
    pub(crate) fn build(items: Vec<Slot>) -> ExactTable {
        let bits = shard_bits(items.len());
        let shards = 1usize << bits;
        let shard_of = |s: &Slot| shard_index(hash(s.number, Scope(s.scope)), bits);
        // Distribute by shard in two linear passes (a counting sort), then sort each small
        // shard alone: a comparison sort of 10 million slots would hash each one ~50 times.
        let mut starts = vec![0usize; shards + 1];
        for s in &items {
            starts[shard_of(s) + 1] += 1;
        }
        for i in 0..shards {
            starts[i + 1] += starts[i];
        }
        let mut next = starts.clone();
        let mut grouped = vec![Slot::default(); items.len()];
        for s in items {
            let shard = shard_of(&s);
            if let (Some(pos), Some(spot)) = (next.get(shard).copied(), next.get_mut(shard)) {
                *spot += 1;
                if let Some(cell) = grouped.get_mut(pos) {
                    *cell = s;
                }
            }
        }
        // Each shard's group sorted by key, the longest-lived first, then deduplicated in place.
        let mut unique_len = vec![0usize; shards];
        for shard in 0..shards {
            let group = grouped
                .get_mut(starts[shard]..starts[shard + 1])
                .unwrap_or_default();
            group.sort_unstable_by(|a, b| {
                (a.number, a.scope).cmp(&(b.number, b.scope)).then_with(|| {
                    if a.outlives(b) {
                        std::cmp::Ordering::Less
                    } else if b.outlives(a) {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Equal
                    }
                })
            });
            let mut kept = 0;
            for i in 0..group.len() {
                if kept == 0 || group[kept - 1].key() != group[i].key() {
                    group[kept] = group[i];
                    kept += 1;
                }
            }
            unique_len[shard] = kept;
        }
        let total: usize = unique_len.iter().map(|&n| capacity(n)).sum();
        let mut block = vec![Slot::default(); total];
        let mut table = ExactTable {
            shards: Vec::with_capacity(shards),
            bits,
            len: 0,
            counts: [0; 2],
        };
        let mut regions = Vec::with_capacity(shards);
        let mut at = 0;
        for shard in 0..shards {
            let unique = grouped
                .get(starts[shard]..starts[shard] + unique_len[shard])
                .unwrap_or_default();
            let cap = capacity(unique.len());
            if let Some(region) = block.get_mut(at..at + cap) {
                fill(region, unique);
            }
            table.len += unique.len();
            for s in unique {
                table.counts[s.scope().list() as usize] += 1;
            }
            regions.push((at, cap));
            at += cap;
        }
        drop(grouped);
        let block = Arc::new(block);
        for (start, len) in regions {
            table.shards.push(Arc::new(Shard {
                slots: ShardSlots::InBlock {
                    block: block.clone(),
                    start,
                    len,
                },
            }));
        }
        table
    }

    pub(crate) fn get(&self, number: u64, scope: Scope) -> Option<&Slot> {
        let h = hash(number, scope);
        self.shards
            .get(shard_index(h, self.bits))?
            .get(number, scope, h)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Rules on `list`.
    pub(crate) fn count(&self, list: ListKind) -> usize {
        self.counts[list as usize]
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// A copy with `changes` applied (`None` removes the key); only touched shards are rebuilt.
    pub(crate) fn patched(&self, changes: &[SlotChange]) -> ExactTable {
        let added = changes.iter().filter(|(_, s)| s.is_some()).count();
        if (self.len + added) > (SHARD_TARGET * SHARD_GROWTH) << self.bits {
            // Grown far past its shard size: rebuild whole with more shards.
            let mut all: HashMap<(u64, Scope), Slot> = self.iter().map(|s| (s.key(), *s)).collect();
            for (key, slot) in changes {
                match slot {
                    Some(s) => all.insert(*key, *s),
                    None => all.remove(key),
                };
            }
            return ExactTable::build(all.into_values().collect());
        }
        let mut by_shard: HashMap<usize, Vec<&SlotChange>> = HashMap::new();
        for change in changes {
            let ((number, scope), _) = change;
            by_shard
                .entry(shard_index(hash(*number, *scope), self.bits))
                .or_default()
                .push(change);
        }
        let mut table = self.clone();
        for (index, shard_changes) in by_shard {
            let Some(old) = self.shards.get(index) else {
                continue;
            };
            let mut items: HashMap<(u64, Scope), Slot> =
                old.iter().map(|s| (s.key(), *s)).collect();
            for (key, slot) in shard_changes {
                let before = match slot {
                    Some(s) => items.insert(*key, *s),
                    None => items.remove(key),
                };
                if let Some(b) = before {
                    table.len -= 1;
                    table.counts[b.scope().list() as usize] -= 1;
                }
                if let Some(s) = slot {
                    table.len += 1;
                    table.counts[s.scope().list() as usize] += 1;
                }
            }
            let items: Vec<Slot> = items.into_values().collect();
            if let Some(shard) = table.shards.get_mut(index) {
                *shard = Arc::new(Shard::build(&items));
            }
        }
        table
    }
}

fn shard_bits(len: usize) -> u32 {
    (len / SHARD_TARGET)
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
}

fn shard_index(h: u64, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        (h >> (64 - bits)) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(number: u64, list: ListKind, expires_ms: u64) -> Slot {
        Slot {
            number,
            expires_ms,
            scope: Scope::new(0, list).0,
            ..Slot::default()
        }
    }

    #[test]
    fn build_get_patch() {
        let items: Vec<Slot> = (0..50_000u64)
            .map(|i| slot(79_990_000_000 + i, ListKind::Block, 0))
            .collect();
        let table = ExactTable::build(items);
        assert_eq!(table.len(), 50_000);
        assert!(table.shards.len() > 1);
        for i in [0u64, 1, 49_999] {
            let key = (79_990_000_000 + i, Scope::new(0, ListKind::Block));
            assert_eq!(table.get(key.0, key.1).map(|s| s.key()), Some(key));
        }
        assert!(
            table
                .get(79_990_000_000, Scope::new(0, ListKind::Allow))
                .is_none()
        );
        assert!(
            table
                .get(79_990_050_000, Scope::new(0, ListKind::Block))
                .is_none()
        );

        let gone = (79_990_000_005, Scope::new(0, ListKind::Block));
        let new = slot(74_951_234_567, ListKind::Allow, 0);
        let patched = table.patched(&[(gone, None), (new.key(), Some(new))]);
        assert!(patched.get(gone.0, gone.1).is_none());
        assert_eq!(patched.get(new.number, new.scope()), Some(&new));
        assert_eq!(patched.len(), 50_000);
        assert_eq!(patched.count(ListKind::Allow), 1);
        // The original is untouched, and untouched shards are shared.
        assert!(table.get(gone.0, gone.1).is_some());
        let shared = table
            .shards
            .iter()
            .zip(&patched.shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(shared >= table.shards.len() - 2);
    }

    #[test]
    fn duplicates_keep_the_longest_life() {
        let a = slot(74_951_234_567, ListKind::Block, 5_000);
        let b = slot(74_951_234_567, ListKind::Block, 0);
        let c = slot(74_951_234_567, ListKind::Block, 9_000);
        let table = ExactTable::build(vec![a, b, c]);
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.get(a.number, a.scope()).map(|s| s.expires_ms),
            Some(0)
        );
    }

    #[test]
    fn growth_reshards() {
        let mut table = ExactTable::build(Vec::new());
        let mut next = 0u64;
        for _ in 0..20 {
            let changes: Vec<_> = (0..5_000)
                .map(|_| {
                    next += 1;
                    let s = slot(70_000_000_000 + next * 7, ListKind::Block, 0);
                    (s.key(), Some(s))
                })
                .collect();
            table = table.patched(&changes);
        }
        assert_eq!(table.len(), 100_000);
        assert!(table.shards.len() >= 4);
        assert!(
            table
                .get(70_000_000_007, Scope::new(0, ListKind::Block))
                .is_some()
        );
    }
}
