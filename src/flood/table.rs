//! Bounded per-key window state for the detectors: a slab of fixed-size cell rows indexed by a
//! `u64` key and kept in least-recently-touched order, so finding, evicting and expiring a key
//! are O(1) each and memory stops growing at `max` keys. No clock: ticks are passed in.

use std::collections::{HashMap, VecDeque};

/// Whole seconds since the detector's epoch: the resolution of every window.
pub(super) type Tick = u32;

/// End of the intrusive list.
const NIL: u32 = u32::MAX;

/// True while something stamped at `at` still falls inside a `window`-tick window ending at `now`:
/// the window is the `window` one-second buckets up to and including the current one.
pub(super) fn in_window(at: Tick, window: Tick, now: Tick) -> bool {
    u64::from(at) + u64::from(window) > u64::from(now)
}

/// Calls counted in one one-second bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Bucket {
    /// The second.
    pub tick: Tick,
    /// Calls in it (saturating).
    pub count: u32,
}

/// When a destination (by hash) was last called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Seen {
    /// Hash of the destination.
    pub target: u64,
    /// The second of its latest call.
    pub tick: Tick,
}

/// One row's bookkeeping; its cells live in `Table::cells` at `slot * stride`.
struct Slot<X> {
    key: u64,
    prev: u32,
    next: u32,
    last: Tick,
    len: u32,
    extra: X,
}

/// The result of [`Table::touch`].
pub(super) struct Touch<X> {
    /// The row now holding the key.
    pub slot: u32,
    /// The previous occupant's extra data when an idle or evicted key made room.
    pub displaced: Option<X>,
}

/// Rows of `stride` cells of `E` plus an `X` each, for at most `max` keys.
///
/// Memory is reused, never returned: rows freed by expiry go to a free list. A key that has not
/// been touched for `idle` ticks holds nothing worth keeping and is dropped by [`Table::expire`]
/// or reused by [`Table::touch`]; when the table is full and the oldest key is not idle yet, it
/// is evicted anyway (counted in `evicted`), which can only make a detector miss, never fire.
pub(super) struct Table<E, X> {
    index: HashMap<u64, u32>,
    slots: Vec<Slot<X>>,
    cells: Vec<E>,
    stride: usize,
    free: Vec<u32>,
    /// Most recently touched.
    head: u32,
    /// Least recently touched: the next to expire or evict.
    tail: u32,
    max: usize,
    idle: Tick,
    evicted: u64,
}

impl<E: Copy + Default, X: Default> Table<E, X> {
    /// An empty table; nothing is allocated until the first key arrives.
    pub fn new(stride: usize, max: usize, idle: Tick) -> Table<E, X> {
        Table {
            index: HashMap::new(),
            slots: Vec::new(),
            cells: Vec::new(),
            stride: stride.max(1),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            // Slot numbers are u32 and NIL is reserved.
            max: max.clamp(1, (NIL - 1) as usize),
            idle,
            evicted: 0,
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Keys dropped while not idle because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Finds or makes the row for `key` and marks it touched at `now`. A new row starts with no
    /// cells and a default extra.
    pub fn touch(&mut self, key: u64, now: Tick) -> Touch<X> {
        if let Some(&slot) = self.index.get(&key) {
            self.unlink(slot);
            self.push_front(slot);
            // A clock that steps back must not make a live key look idle.
            let row = self.slot_mut(slot);
            row.last = row.last.max(now);
            return Touch {
                slot,
                displaced: None,
            };
        }
        let (slot, displaced) = self.allocate(now);
        self.index.insert(key, slot);
        let row = self.slot_mut(slot);
        row.key = key;
        row.last = now;
        row.len = 0;
        self.push_front(slot);
        Touch { slot, displaced }
    }

    /// A free row: from the free list, else the oldest row if idle, else a new one while under
    /// `max`, else the oldest row evicted. Returns the displaced occupant's extra.
    fn allocate(&mut self, now: Tick) -> (u32, Option<X>) {
        if let Some(slot) = self.free.pop() {
            return (slot, None);
        }
        let tail_idle =
            self.tail != NIL && !in_window(self.slots[self.tail as usize].last, self.idle, now);
        if !tail_idle && self.slots.len() < self.max {
            let slot = self.slots.len() as u32;
            self.slots.push(Slot {
                key: 0,
                prev: NIL,
                next: NIL,
                last: now,
                len: 0,
                extra: X::default(),
            });
            self.cells
                .extend(std::iter::repeat_n(E::default(), self.stride));
            return (slot, None);
        }
        // Full, or the oldest key is idle anyway: reuse the least recently touched row.
        let slot = self.tail;
        if !tail_idle {
            self.evicted += 1;
        }
        let extra = self.detach(slot);
        (slot, Some(extra))
    }

    /// Unlinks and unindexes a row, leaving it free for reuse by the caller.
    fn detach(&mut self, slot: u32) -> X {
        self.unlink(slot);
        let row = &mut self.slots[slot as usize];
        self.index.remove(&row.key);
        row.len = 0;
        std::mem::take(&mut row.extra)
    }

    /// Drops every key idle at `now`, oldest first, handing each one's extra to `removed`.
    pub fn expire(&mut self, now: Tick, mut removed: impl FnMut(X)) {
        while self.tail != NIL && !in_window(self.slots[self.tail as usize].last, self.idle, now) {
            let slot = self.tail;
            removed(self.detach(slot));
            self.free.push(slot);
        }
    }

    /// The row's used cells, its cell count and all its cells, and its extra, for updating.
    pub fn row_mut(&mut self, slot: u32) -> (&mut [E], &mut u32, &mut X) {
        let start = slot as usize * self.stride;
        let row = &mut self.slots[slot as usize];
        (
            &mut self.cells[start..start + self.stride],
            &mut row.len,
            &mut row.extra,
        )
    }

    /// The used cells and the extra of `key`'s row, if the key is held.
    pub fn get(&self, key: u64) -> Option<(&[E], &X)> {
        let slot = *self.index.get(&key)? as usize;
        let row = &self.slots[slot];
        let start = slot * self.stride;
        Some((&self.cells[start..start + row.len as usize], &row.extra))
    }

    /// The extra of a row by slot number, for updating.
    pub fn extra_mut(&mut self, slot: u32) -> Option<&mut X> {
        self.slots.get_mut(slot as usize).map(|row| &mut row.extra)
    }

    fn slot_mut(&mut self, slot: u32) -> &mut Slot<X> {
        &mut self.slots[slot as usize]
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let row = &self.slots[slot as usize];
            (row.prev, row.next)
        };
        match prev {
            NIL if self.head == slot => self.head = next,
            NIL => {}
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL if self.tail == slot => self.tail = prev,
            NIL => {}
            n => self.slots[n as usize].prev = prev,
        }
        let row = self.slot_mut(slot);
        row.prev = NIL;
        row.next = NIL;
    }

    fn push_front(&mut self, slot: u32) {
        let old = self.head;
        {
            let row = self.slot_mut(slot);
            row.prev = NIL;
            row.next = old;
        }
        if old != NIL {
            self.slots[old as usize].prev = slot;
        }
        self.head = slot;
        if self.tail == NIL {
            self.tail = slot;
        }
    }
}

/// Adds `count` calls at `now` to a row of buckets kept oldest first, dropping buckets that left
/// the window. When the row is full the oldest bucket goes: the row is sized so that a full row
/// of in-window buckets already exceeds the threshold, so the decision stays exact (only the
/// reported count can then fall short of the true one).
pub(super) fn add_calls(cells: &mut [Bucket], len: &mut u32, now: Tick, count: u32, window: Tick) {
    prune(cells, len, |b| in_window(b.tick, window, now));
    let used = *len as usize;
    if let Some(last) = used.checked_sub(1).map(|i| &mut cells[i])
        && last.tick >= now
    {
        // Same second, or the clock went backwards: never reorder buckets.
        last.count = last.count.saturating_add(count);
        return;
    }
    let used = if used == cells.len() {
        cells.copy_within(1.., 0);
        used - 1
    } else {
        used
    };
    cells[used] = Bucket { tick: now, count };
    *len = used as u32 + 1;
}

/// Calls in the window ending at `now`.
pub(super) fn calls_in_window(cells: &[Bucket], now: Tick, window: Tick) -> u64 {
    cells
        .iter()
        .filter(|b| in_window(b.tick, window, now))
        .map(|b| u64::from(b.count))
        .sum()
}

/// Records a call to destination `target` at `now` in a row kept oldest call first, and returns
/// how many distinct destinations the row holds in the window. When full the destination called
/// longest ago goes; the row has room for one more than the limit, so that stays exact.
pub(super) fn add_destination(
    cells: &mut [Seen],
    len: &mut u32,
    target: u64,
    now: Tick,
    window: Tick,
) -> u32 {
    prune(cells, len, |s| in_window(s.tick, window, now));
    let mut used = *len as usize;
    if let Some(at) = cells[..used].iter().position(|s| s.target == target) {
        cells.copy_within(at + 1..used, at);
        used -= 1;
    } else if used == cells.len() {
        cells.copy_within(1.., 0);
        used -= 1;
    }
    // A backwards clock must not break the oldest-first order.
    let tick = used.checked_sub(1).map_or(now, |i| cells[i].tick.max(now));
    cells[used] = Seen { target, tick };
    *len = used as u32 + 1;
    *len
}

/// Drops the leading cells for which `keep` is false (cells are in time order).
fn prune<E: Copy>(cells: &mut [E], len: &mut u32, keep: impl Fn(&E) -> bool) {
    let used = *len as usize;
    let first = cells[..used].iter().position(keep).unwrap_or(used);
    if first > 0 {
        cells.copy_within(first..used, 0);
        *len = (used - first) as u32;
    }
}

/// Keys whose ban was reported recently, so the same ban is not reported again until it ends.
/// Bounded by `max`; when full the oldest ban is forgotten first, which can only cause one more
/// (harmless, idempotent) report of that ban.
pub(super) struct Suppress {
    until: HashMap<u64, Tick>,
    /// Bans in the order they were made; with one ban length per detector that is also the
    /// order they end in.
    order: VecDeque<(u64, Tick)>,
    max: usize,
}

impl Suppress {
    /// Remembers at most `max` bans.
    pub fn new(max: usize) -> Suppress {
        Suppress {
            until: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// True while a ban on `key` reported earlier is still in force at `now`.
    pub fn active(&self, key: u64, now: Tick) -> bool {
        self.until.get(&key).is_some_and(|&until| now < until)
    }

    /// Remembers a ban on `key` reported at `now` and lasting until `until`.
    pub fn insert(&mut self, key: u64, until: Tick, now: Tick) {
        self.expire(now);
        while self.order.len() >= self.max {
            self.pop_front();
        }
        self.until.insert(key, until);
        self.order.push_back((key, until));
    }

    /// Forgets bans that have ended by `now`.
    pub fn expire(&mut self, now: Tick) {
        while self.order.front().is_some_and(|&(_, until)| until <= now) {
            self.pop_front();
        }
    }

    /// Bans remembered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.until.len()
    }

    fn pop_front(&mut self) {
        if let Some((key, until)) = self.order.pop_front()
            && self.until.get(&key) == Some(&until)
        {
            self.until.remove(&key);
        }
    }
}
