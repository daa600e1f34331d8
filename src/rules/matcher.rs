//! Digit patterns over canonical numbers (E.164 digits without the `+`) and their compiled
//! form: (pattern, id) pairs -> one automaton that answers "which ids match this number" in
//! time linear in the number's length, whatever the pattern count. Pure data: knows nothing
//! of rules, scopes, liveness or time (the caller passes liveness in).
//!
//! Compilation: the patterns form a trie whose edges carry digit sets (an NFA, since sibling
//! sets may overlap, e.g. `7...` next to `X...`); subset construction turns it into a DFA.
//! The trie has no loops (tails are recorded as id lists, not as self-edges), so the DFA is
//! acyclic and at most 15 deep. Each DFA state keeps two ascending id lists: `end` (patterns
//! that match if the number ends here) and `passed` (patterns whose tail is already satisfied,
//! so they match whatever follows); a lookup collects `passed` along its walk and `end` at
//! its last state, and `best` stops in each list at the first live id.
//!
//! Worst case: subset construction can create up to `min(10^d, 2^nodes(d))` states at depth
//! `d` when many patterns have wildcards early and digits late (`X1XX...`, `XX1X...`, ...):
//! the DFA then has to remember every combination seen so far. Realistic sets (fixed
//! prefixes followed by `X`s or a tail, plus a few broad masks such as `XXXXXXXXXXX` or
//! `7XXX1234567`) stay near the trie size: a broad mask pairs with each trie node once, and
//! a set where only one side survives is the same state whatever came before. A build whose
//! DFA outgrows a budget linear in its trie (4x nodes in states, 16x in work) is abandoned
//! and its patterns are split in two (fixed-prefix patterns apart from the wildcard-heavy
//! ones, else halves), recursively; a single pattern always fits. So memory and build time
//! stay linear in the input times the split depth (at most 17 + log2 n), and in the
//! adversarial case a lookup walks one DFA per group: O(len * groups), never worse than
//! testing the patterns one by one. Measured once (release, 2 cores): 100k realistic masks
//! build in about 0.1-0.3 s into one DFA; 100k random 11-digit masks with 30% `X`
//! positions take about 12 s and split into about 120 DFAs (about 15 us per lookup).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::size_of;
use std::ops::Range;

/// Bit d set = digit d allowed; bits 10 and up are ignored.
pub type DigitSet = u16;

/// Every digit (Asterisk `X`).
pub const ANY_DIGIT: DigitSet = 0x3ff;

/// Longest canonical number.
const MAX_DIGITS: usize = 15;

/// What a number may hold after a pattern's elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tail {
    /// Nothing: the number ends right after the elements.
    None,
    /// At least one more digit (Asterisk `.`).
    OneOrMore,
    /// Any number of further digits, none included (Asterisk `!`, prefix rules `*`).
    ZeroOrMore,
}

/// A digit mask: one allowed-digit set per position, then a tail.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DigitPattern {
    /// Allowed digits at each position from the first; an empty set never matches.
    pub elems: Vec<DigitSet>,
    /// What may follow the elements.
    pub tail: Tail,
}

impl DigitPattern {
    /// Naive reference matcher (used by tests and `--explain`): digits are ASCII. Anything
    /// that is not a canonical number (1..=15 ASCII digits) matches nothing.
    pub fn matches(&self, digits: &[u8]) -> bool {
        if !is_canonical(digits) {
            return false;
        }
        let k = self.elems.len();
        let length_fits = match self.tail {
            Tail::None => digits.len() == k,
            Tail::OneOrMore => digits.len() > k,
            Tail::ZeroOrMore => digits.len() >= k,
        };
        length_fits
            && self
                .elems
                .iter()
                .zip(digits)
                .all(|(&set, &b)| set & (1 << (b - b'0')) != 0)
    }

    /// How many digit strings of length 1..=15 it matches (saturating u128). Used as
    /// "specificity": fewer = more specific.
    pub fn count(&self) -> u128 {
        let k = self.elems.len();
        if k > MAX_DIGITS {
            return 0;
        }
        let fixed = self.elems.iter().fold(1u128, |acc, &set| {
            acc.saturating_mul(u128::from((set & ANY_DIGIT).count_ones()))
        });
        let shortest = match self.tail {
            Tail::None => return if k == 0 { 0 } else { fixed },
            Tail::OneOrMore => k + 1,
            Tail::ZeroOrMore => k.max(1),
        };
        let mut free = (k..shortest).fold(1u128, |acc, _| acc.saturating_mul(10));
        let mut total = 0u128;
        for _ in shortest..=MAX_DIGITS {
            total = total.saturating_add(fixed.saturating_mul(free));
            free = free.saturating_mul(10);
        }
        total
    }

    /// Inclusive numeric range `lo..=hi` of two equal-length ASCII digit strings as a few
    /// disjoint fixed-length patterns (prefix, one class, then `X`s; at most about
    /// `2 * len`) whose union is exactly the range. None if the lengths differ, either is
    /// not all digits, `lo > hi`, or the length is not that of a canonical number (1..=15).
    pub fn from_range(lo: &[u8], hi: &[u8]) -> Option<Vec<DigitPattern>> {
        // Equal-length digit strings compare as their numeric values.
        if lo.len() != hi.len() || !is_canonical(lo) || !is_canonical(hi) || lo > hi {
            return None;
        }
        let mut out = Vec::new();
        let mut prefix = Vec::with_capacity(lo.len());
        split_range(&mut prefix, lo, hi, &mut out);
        Some(out)
    }
}

/// 1..=15 ASCII digits.
fn is_canonical(digits: &[u8]) -> bool {
    (1..=MAX_DIGITS).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit)
}

/// Digits `first..=last` (both at most 9).
fn digit_span(first: u8, last: u8) -> DigitSet {
    (first..=last).fold(0, |set, d| set | (1 << d))
}

/// Appends patterns for `prefix` followed by `lo..=hi` (equal length, digits, `lo <= hi`),
/// in ascending order. Recursion depth is the length, at most 15.
fn split_range(prefix: &mut Vec<DigitSet>, lo: &[u8], hi: &[u8], out: &mut Vec<DigitPattern>) {
    let (Some((&l, lo_rest)), Some((&h, hi_rest))) = (lo.split_first(), hi.split_first()) else {
        out.push(DigitPattern {
            elems: prefix.clone(),
            tail: Tail::None,
        });
        return;
    };
    let (l, h) = (l - b'0', h - b'0');
    if l == h {
        prefix.push(digit_span(l, l));
        split_range(prefix, lo_rest, hi_rest, out);
        prefix.pop();
        return;
    }
    // l < h: `l` followed by lo_rest..=99..9, whole decades l+1..h-1, `h` followed by
    // 00..0..=hi_rest; the first and last fold into the middle class when they are whole.
    let lo_whole = lo_rest.iter().all(|&b| b == b'0');
    let hi_whole = hi_rest.iter().all(|&b| b == b'9');
    if !lo_whole {
        prefix.push(digit_span(l, l));
        split_range(prefix, lo_rest, &vec![b'9'; lo_rest.len()], out);
        prefix.pop();
    }
    let first = if lo_whole { l } else { l + 1 };
    let last = if hi_whole { h } else { h - 1 };
    if first <= last {
        let mut elems = prefix.clone();
        elems.push(digit_span(first, last));
        elems.extend(std::iter::repeat_n(ANY_DIGIT, lo_rest.len()));
        out.push(DigitPattern {
            elems,
            tail: Tail::None,
        });
    }
    if !hi_whole {
        prefix.push(digit_span(h, h));
        split_range(prefix, &vec![b'0'; hi_rest.len()], hi_rest, out);
        prefix.pop();
    }
}

/// Compiled set of (pattern, id) pairs. Ids are chosen by the caller in precedence order:
/// a lower id is a better (winning) rule.
#[derive(Default)]
pub struct Matcher {
    /// Usually one; more only when wildcard-heavy patterns had to be split off (module docs).
    parts: Vec<Dfa>,
    len: usize,
}

impl Matcher {
    /// Compiles the pairs. Patterns that can match no canonical number (an empty digit set,
    /// more than 15 positions, nothing at all with no tail) are counted but not indexed.
    pub fn build(patterns: impl IntoIterator<Item = (DigitPattern, u32)>) -> Matcher {
        Matcher::build_within(patterns, Budget::LINEAR)
    }

    fn build_within(
        patterns: impl IntoIterator<Item = (DigitPattern, u32)>,
        budget: Budget,
    ) -> Matcher {
        let mut len = 0usize;
        let mut entries = Vec::new();
        for (pattern, id) in patterns {
            len += 1;
            entries.extend(Entry::new(&pattern, id));
        }
        entries.sort_unstable_by(|a, b| a.trie_key().cmp(&b.trie_key()));
        let mut parts = Vec::new();
        let mut pending: Vec<Range<usize>> = Vec::new();
        pending.push(0..entries.len());
        while let Some(range) = pending.pop() {
            let Some(group) = entries.get(range.clone()) else {
                continue;
            };
            if group.is_empty() {
                continue;
            }
            // A single pattern has at most 16 states: never refused, which ends the splitting.
            let budget = (group.len() > 1).then_some(budget);
            match Dfa::build(group, budget) {
                Ok(dfa) => parts.push(dfa),
                Err(TooBig) => {
                    // Fixed-prefix patterns first, so that the bulk (a plain trie, which never
                    // grows) stays together and early wildcards go elsewhere. Ranges of one
                    // key stay in trie order, sparing the trie a sort.
                    let Some(group) = entries.get_mut(range.clone()) else {
                        continue;
                    };
                    group.sort_unstable_by(|a, b| a.split_key().cmp(&b.split_key()));
                    let mid = range.start + split_point(group);
                    pending.push(range.start..mid);
                    pending.push(mid..range.end);
                }
            }
        }
        Matcher { parts, len }
    }

    /// The lowest id among patterns matching `digits` for which `is_live(id)` is true; None
    /// for input that is not 1..=15 ASCII digits. `is_live` is asked only about ids that
    /// would improve on the best found so far.
    pub fn best(&self, digits: &[u8], mut is_live: impl FnMut(u32) -> bool) -> Option<u32> {
        if !is_canonical(digits) {
            return None;
        }
        let mut best: Option<u32> = None;
        for part in &self.parts {
            part.walk(digits, |ids| {
                for &id in ids {
                    // Lists ascend: nothing further in this one can beat `best`.
                    if best.is_some_and(|b| id >= b) {
                        break;
                    }
                    if is_live(id) {
                        best = Some(id);
                        break;
                    }
                }
            });
        }
        best
    }

    /// Every id matching `digits`, sorted ascending, deduplicated (for explain output);
    /// empty for input that is not 1..=15 ASCII digits.
    pub fn all(&self, digits: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        if !is_canonical(digits) {
            return out;
        }
        for part in &self.parts {
            part.walk(digits, |ids| out.extend_from_slice(ids));
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Number of (pattern, id) pairs given to [`Matcher::build`].
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when built from no pairs.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Approximate heap bytes used (for logs and benchmarks).
    pub fn heap_bytes(&self) -> usize {
        self.parts.capacity() * size_of::<Dfa>()
            + self.parts.iter().map(Dfa::heap_bytes).sum::<usize>()
    }

    /// How many automata a lookup walks: 1 (0 when empty) unless wildcard-heavy patterns
    /// forced a split (module docs); worth logging when above 1.
    pub fn automata(&self) -> usize {
        self.parts.len()
    }

    /// Total DFA states, for logs and benchmarks.
    pub fn states(&self) -> usize {
        self.parts.iter().map(|p| p.states.len()).sum()
    }
}

// By hand: the derived form would print every state of a 100k-rule snapshot.
impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Matcher")
            .field("len", &self.len)
            .field("automata", &self.automata())
            .field("states", &self.states())
            .field("heap_bytes", &self.heap_bytes())
            .finish()
    }
}

/// A pattern as the automaton sees it: digit sets masked to 0..=9, a `.` tail rewritten as
/// one more `X` plus a zero-or-more tail (the same numbers), and no heap allocation.
#[derive(Debug, Clone, Copy)]
struct Entry {
    elems: [DigitSet; MAX_DIGITS],
    len: u8,
    /// Zero-or-more tail: matches whatever follows the elements.
    passed: bool,
    /// Position of the first element allowing more than one digit (16 when none): patterns
    /// with a late or no wildcard cannot blow up subset construction among themselves.
    first_wild: u8,
    id: u32,
}

impl Entry {
    /// None for patterns that cannot match a canonical number.
    fn new(pattern: &DigitPattern, id: u32) -> Option<Entry> {
        let extra = usize::from(pattern.tail == Tail::OneOrMore);
        let len = pattern.elems.len().checked_add(extra)?;
        if len > MAX_DIGITS || (len == 0 && pattern.tail == Tail::None) {
            return None;
        }
        // Starts all `X`, so the position a `.` tail adds is already in place.
        let mut elems = [ANY_DIGIT; MAX_DIGITS];
        for (slot, &set) in elems.iter_mut().zip(&pattern.elems) {
            *slot = set & ANY_DIGIT;
            if *slot == 0 {
                return None;
            }
        }
        let first_wild = elems[..len]
            .iter()
            .position(|s| s.count_ones() > 1)
            .unwrap_or(MAX_DIGITS + 1);
        Some(Entry {
            elems,
            len: u8::try_from(len).ok()?,
            passed: pattern.tail != Tail::None,
            first_wild: u8::try_from(first_wild).ok()?,
            id,
        })
    }

    fn elems(&self) -> &[DigitSet] {
        &self.elems[..usize::from(self.len)]
    }

    /// Order in which a trie is built in one pass; also puts each node's ids in order.
    fn trie_key(&self) -> (&[DigitSet], bool, u32) {
        (self.elems(), self.passed, self.id)
    }

    /// Order for splitting a group: latest wildcard first, then trie order.
    fn split_key(&self) -> (Reverse<u8>, &[DigitSet], bool, u32) {
        (Reverse(self.first_wild), self.elems(), self.passed, self.id)
    }
}

/// Where to split a group whose DFA was too big: at the change of `first_wild` nearest the
/// middle, else in the middle. Always in `1..group.len()` for groups of two or more.
fn split_point(group: &[Entry]) -> usize {
    let mid = group.len() / 2;
    (1..group.len())
        .filter(|&i| group[i - 1].first_wild != group[i].first_wild)
        .min_by_key(|&i| i.abs_diff(mid))
        .unwrap_or(mid)
        .max(1)
}

/// Dead-state sentinel in transitions.
const DEAD: u32 = u32::MAX;
/// The start state of every DFA.
const ROOT: u32 = 0;

/// One DFA state in 16 bytes. Most states split the digits between two successors (dead
/// included) and need no row: trie paths, `X` runs, and a broad mask alongside a fixed
/// prefix (the prefix's digit goes on to both, every other digit to the mask alone).
/// States that branch further use a 10-entry row.
#[derive(Debug, Clone, Copy)]
struct State {
    /// Successor for `digits` when that is non-zero, else an index into `Dfa::rows`.
    next: u32,
    /// Successor for the digits not in `digits`.
    other: u32,
    /// Index into `Dfa::slots`; 0 = no ids.
    slot: u32,
    /// Digits leading to `next`; 0 = look the digit up in the row.
    digits: DigitSet,
}

/// One deterministic automaton over part (usually all) of the patterns.
#[derive(Debug)]
struct Dfa {
    states: Vec<State>,
    rows: Vec<[u32; 10]>,
    /// `[start, split, end]` into `ids`: `end` list is `start..split`, `passed` is
    /// `split..end`. Singleton states share their trie node's slot.
    slots: Vec<[u32; 3]>,
    ids: Vec<u32>,
}

/// A build outgrew its budget.
#[derive(Debug)]
struct TooBig;

/// How far subset construction may grow before the group is split: `per_node` times the
/// trie size (nodes plus id entries) plus `slack`, for states and for work (set members and
/// merged list entries created).
#[derive(Debug, Clone, Copy)]
struct Budget {
    states: (usize, usize),
    work: (usize, usize),
}

impl Budget {
    /// Roomy for realistic sets, which stay near the trie size, yet a bound on time and
    /// memory for adversarial ones.
    const LINEAR: Budget = Budget {
        states: (4, 4096),
        work: (16, 65_536),
    };

    /// (max states, max work) for a trie of `trie_size`; unlimited without a budget.
    fn limits(budget: Option<Budget>, trie_size: usize) -> (usize, usize) {
        let scaled = |(per_node, slack): (usize, usize)| {
            trie_size.saturating_mul(per_node).saturating_add(slack)
        };
        budget.map_or((usize::MAX, usize::MAX), |b| {
            (scaled(b.states), scaled(b.work))
        })
    }
}

fn index(n: usize) -> Result<u32, TooBig> {
    u32::try_from(n).map_err(|_| TooBig)
}

/// The trie (NFA) of one group: nodes numbered in preorder, children in CSR form.
struct Trie {
    /// `edge_start[n]..edge_start[n + 1]` indexes `edges` for node `n`'s children.
    edge_start: Vec<u32>,
    /// (digit set, child), ascending child within each node.
    edges: Vec<(DigitSet, u32)>,
    /// Slot of each node's ids (0 = none); slots and ids become the DFA's.
    node_slot: Vec<u32>,
    slots: Vec<[u32; 3]>,
    ids: Vec<u32>,
}

impl Trie {
    fn build(group: &[Entry]) -> Result<Trie, TooBig> {
        let mut sorted: Vec<&Entry> = group.iter().collect();
        if !sorted.is_sorted_by(|a, b| a.trie_key() <= b.trie_key()) {
            sorted.sort_unstable_by(|a, b| a.trie_key().cmp(&b.trie_key()));
        }

        // Sorted input builds the trie in one pass: keep the previous pattern's path, cut
        // it at the common prefix, extend. Node numbers come out in preorder.
        let mut parent: Vec<(u32, DigitSet)> = vec![(DEAD, 0)];
        let mut node_slot: Vec<u32> = vec![0];
        let mut slots: Vec<[u32; 3]> = vec![[0, 0, 0]];
        let mut ids: Vec<u32> = Vec::new();
        let mut path: Vec<u32> = vec![ROOT];
        let mut prev: &[DigitSet] = &[];
        let mut i = 0;
        while let Some(first) = sorted.get(i) {
            let elems = first.elems();
            let run_len = sorted[i..]
                .iter()
                .take_while(|e| e.elems() == elems)
                .count();
            let common = prev.iter().zip(elems).take_while(|(a, b)| a == b).count();
            path.truncate(common + 1);
            for &set in &elems[common..] {
                let node = index(parent.len())?;
                let up = path.last().copied().unwrap_or(ROOT);
                parent.push((up, set));
                node_slot.push(0);
                path.push(node);
            }
            let node = path.last().copied().unwrap_or(ROOT);
            // The run is sorted by (passed, id): each list comes out ascending, and repeats
            // of one id are adjacent.
            let run = &sorted[i..i + run_len];
            let start = ids.len();
            for e in run.iter().filter(|e| !e.passed) {
                if ids.len() == start || ids.last() != Some(&e.id) {
                    ids.push(e.id);
                }
            }
            let split = ids.len();
            for e in run.iter().filter(|e| e.passed) {
                if ids.len() == split || ids.last() != Some(&e.id) {
                    ids.push(e.id);
                }
            }
            if let Some(slot) = node_slot.get_mut(node as usize) {
                *slot = index(slots.len())?;
            }
            slots.push([index(start)?, index(split)?, index(ids.len())?]);
            prev = elems;
            i += run_len;
        }

        // Children in CSR form; filling in node order keeps each node's children ascending.
        let nodes = parent.len();
        let mut edge_start = vec![0u32; nodes + 1];
        for &(up, _) in &parent[1..] {
            if let Some(count) = edge_start.get_mut(up as usize + 1) {
                *count += 1;
            }
        }
        for n in 0..nodes {
            edge_start[n + 1] += edge_start[n];
        }
        let mut fill: Vec<u32> = edge_start[..nodes].to_vec();
        let mut edges = vec![(0, DEAD); nodes - 1];
        for (child, &(up, set)) in parent.iter().enumerate().skip(1) {
            if let Some(at) = fill.get_mut(up as usize) {
                if let Some(edge) = edges.get_mut(*at as usize) {
                    *edge = (set, index(child)?);
                }
                *at += 1;
            }
        }
        Ok(Trie {
            edge_start,
            edges,
            node_slot,
            slots,
            ids,
        })
    }

    fn children(&self, node: u32) -> &[(DigitSet, u32)] {
        let n = node as usize;
        match (self.edge_start.get(n), self.edge_start.get(n + 1)) {
            (Some(&a), Some(&b)) => self.edges.get(a as usize..b as usize).unwrap_or(&[]),
            _ => &[],
        }
    }

    fn node_lists(&self, node: u32) -> (&[u32], &[u32]) {
        let slot = self.node_slot.get(node as usize).copied().unwrap_or(0);
        slot_lists(&self.slots, &self.ids, slot)
    }
}

fn slot_lists<'a>(slots: &[[u32; 3]], ids: &'a [u32], slot: u32) -> (&'a [u32], &'a [u32]) {
    let Some(&[start, split, end]) = slots.get(slot as usize) else {
        return (&[], &[]);
    };
    (
        ids.get(start as usize..split as usize).unwrap_or(&[]),
        ids.get(split as usize..end as usize).unwrap_or(&[]),
    )
}

/// Multiplicative (Fx-style) hasher for the memo tables: keys are node numbers made by this
/// module, so SipHash's resistance to chosen keys buys nothing and costs a tenth of a build.
#[derive(Debug, Default, Clone, Copy)]
struct NodeHasher(u64);

impl NodeHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for NodeHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

type Memo<K> = HashMap<K, u32, BuildHasherDefault<NodeHasher>>;

/// Subset-construction state: the DFA states so far, memo from node sets to states, and
/// the sets still to expand.
struct Subsets {
    states: Vec<State>,
    /// State of each singleton set, by node (`DEAD` = none yet): the common case, no hashing.
    single: Vec<u32>,
    /// Two-node sets: the usual shape where a broad mask runs alongside a fixed prefix.
    pairs: Memo<(u32, u32)>,
    multi: Memo<Box<[u32]>>,
    /// Stack of records `nodes..., node count, state`.
    pending: Vec<u32>,
    work: usize,
    max_states: usize,
    max_work: usize,
}

impl Subsets {
    /// The state for `set` (sorted node ids, non-empty), created and queued if new.
    fn intern(&mut self, set: &[u32]) -> Result<u32, TooBig> {
        let known = match *set {
            [n] => self.single.get(n as usize).copied().filter(|&s| s != DEAD),
            [a, b] => self.pairs.get(&(a, b)).copied(),
            _ => self.multi.get(set).copied(),
        };
        if let Some(state) = known {
            return Ok(state);
        }
        let state = index(self.states.len())?;
        if state == DEAD {
            return Err(TooBig);
        }
        self.work = self.work.saturating_add(set.len());
        self.charge(1)?;
        match *set {
            [n] => {
                if let Some(slot) = self.single.get_mut(n as usize) {
                    *slot = state;
                }
            }
            [a, b] => {
                self.pairs.insert((a, b), state);
            }
            _ => {
                self.multi.insert(set.into(), state);
            }
        }
        self.states.push(State {
            next: DEAD,
            other: DEAD,
            slot: 0,
            digits: ANY_DIGIT,
        });
        self.pending.extend_from_slice(set);
        self.pending.push(index(set.len())?);
        self.pending.push(state);
        Ok(state)
    }

    /// Fails once the states about to exist or the work done exceed the budget.
    fn charge(&self, new_states: usize) -> Result<(), TooBig> {
        if self.states.len() + new_states > self.max_states || self.work > self.max_work {
            Err(TooBig)
        } else {
            Ok(())
        }
    }

    /// Pops the next set to expand into `set`, returning its state.
    fn next_pending(&mut self, set: &mut Vec<u32>) -> Option<u32> {
        let state = self.pending.pop()?;
        let len = self.pending.pop()? as usize;
        let from = self.pending.len().checked_sub(len)?;
        set.clear();
        set.extend(self.pending.drain(from..));
        Some(state)
    }
}

impl Dfa {
    fn build(group: &[Entry], budget: Option<Budget>) -> Result<Dfa, TooBig> {
        let trie = Trie::build(group)?;
        let nodes = trie.node_slot.len();
        let (max_states, max_work) = Budget::limits(budget, nodes.saturating_add(trie.ids.len()));
        let mut sub = Subsets {
            states: Vec::new(),
            single: vec![DEAD; nodes],
            pairs: Memo::default(),
            multi: Memo::default(),
            pending: Vec::new(),
            work: 0,
            max_states,
            max_work,
        };
        let root = sub.intern(&[ROOT])?;
        debug_assert_eq!(root, ROOT);

        let mut rows: Vec<[u32; 10]> = Vec::new();
        // Lists of multi-node states, appended after the trie's own at the end.
        let mut extra_slots: Vec<[u32; 3]> = Vec::new();
        let mut extra_ids: Vec<u32> = Vec::new();
        let mut set: Vec<u32> = Vec::new();
        let mut kids: [Vec<u32>; 10] = Default::default();
        let mut end: Vec<u32> = Vec::new();
        let mut passed: Vec<u32> = Vec::new();

        while let Some(state) = sub.next_pending(&mut set) {
            let (digits, next, other) = match set.as_slice() {
                // A trie path or `X` run: one edge, one successor.
                &[node] if trie.children(node).len() <= 1 => match trie.children(node).first() {
                    Some(&(digits, child)) => (digits, sub.intern(&[child])?, DEAD),
                    None => (ANY_DIGIT, DEAD, DEAD),
                },
                _ => {
                    for k in &mut kids {
                        k.clear();
                    }
                    for &node in &set {
                        for &(digits, child) in trie.children(node) {
                            for (d, k) in kids.iter_mut().enumerate() {
                                if digits & (1 << d) != 0 {
                                    k.push(child);
                                }
                            }
                        }
                    }
                    let mut targets = [DEAD; 10];
                    for d in 0..10 {
                        if kids[d].is_empty() {
                            continue;
                        }
                        // Preorder numbering makes these ascending already; sorting is a
                        // cheap guarantee of the memo key's canonical form.
                        kids[d].sort_unstable();
                        targets[d] = if d > 0 && kids[d] == kids[d - 1] {
                            targets[d - 1]
                        } else {
                            sub.intern(&kids[d])?
                        };
                    }
                    encode(targets, &mut rows)?
                }
            };
            let slot = match set.as_slice() {
                &[node] => trie.node_slot.get(node as usize).copied().unwrap_or(0),
                _ => {
                    end.clear();
                    passed.clear();
                    for &node in &set {
                        let (e, p) = trie.node_lists(node);
                        end.extend_from_slice(e);
                        passed.extend_from_slice(p);
                    }
                    if end.is_empty() && passed.is_empty() {
                        0
                    } else {
                        end.sort_unstable();
                        end.dedup();
                        passed.sort_unstable();
                        passed.dedup();
                        sub.work = sub.work.saturating_add(end.len() + passed.len());
                        sub.charge(0)?;
                        let start = extra_ids.len();
                        extra_ids.extend_from_slice(&end);
                        let split = extra_ids.len();
                        extra_ids.extend_from_slice(&passed);
                        extra_slots.push([index(start)?, index(split)?, index(extra_ids.len())?]);
                        index(trie.slots.len() + extra_slots.len() - 1)?
                    }
                }
            };
            if let Some(s) = sub.states.get_mut(state as usize) {
                *s = State {
                    next,
                    other,
                    slot,
                    digits,
                };
            }
        }

        let Trie {
            mut slots, mut ids, ..
        } = trie;
        let base = index(ids.len())?;
        for [start, split, stop] in extra_slots {
            slots.push([start + base, split + base, stop + base]);
        }
        ids.extend_from_slice(&extra_ids);
        index(ids.len())?;
        let mut states = sub.states;
        states.shrink_to_fit();
        rows.shrink_to_fit();
        slots.shrink_to_fit();
        ids.shrink_to_fit();
        Ok(Dfa {
            states,
            rows,
            slots,
            ids,
        })
    }

    /// Calls `visit` with every id list that holds for `digits` (already checked canonical):
    /// `passed` of each state on the walk, then `end` of the last.
    fn walk(&self, digits: &[u8], mut visit: impl FnMut(&[u32])) {
        let mut state = ROOT;
        for &b in digits {
            let Some(s) = self.states.get(state as usize) else {
                return;
            };
            visit(self.lists(s).1);
            state = self.step(s, b.wrapping_sub(b'0'));
            if state == DEAD {
                return;
            }
        }
        if let Some(s) = self.states.get(state as usize) {
            let (end, passed) = self.lists(s);
            visit(passed);
            visit(end);
        }
    }

    fn step(&self, s: &State, digit: u8) -> u32 {
        if digit > 9 {
            DEAD
        } else if s.digits == 0 {
            self.rows
                .get(s.next as usize)
                .map_or(DEAD, |row| row[usize::from(digit)])
        } else if s.digits & (1 << digit) != 0 {
            s.next
        } else {
            s.other
        }
    }

    /// (`end`, `passed`) of a state.
    fn lists(&self, s: &State) -> (&[u32], &[u32]) {
        slot_lists(&self.slots, &self.ids, s.slot)
    }

    fn heap_bytes(&self) -> usize {
        self.states.capacity() * size_of::<State>()
            + self.rows.capacity() * size_of::<[u32; 10]>()
            + self.slots.capacity() * size_of::<[u32; 3]>()
            + self.ids.capacity() * size_of::<u32>()
    }
}

/// Transitions of one state as (digits, successor for them, successor for the rest) when
/// two successors (dead included) cover all ten digits, else (0, row index, dead).
fn encode(targets: [u32; 10], rows: &mut Vec<[u32; 10]>) -> Result<(DigitSet, u32, u32), TooBig> {
    let first = targets[0];
    let mut digits: DigitSet = 0;
    let mut other = None;
    for (d, &t) in targets.iter().enumerate() {
        if t == first {
            digits |= 1 << d;
        } else if other.is_none_or(|o| o == t) {
            other = Some(t);
        } else {
            let row = index(rows.len())?;
            rows.push(targets);
            return Ok((0, row, DEAD));
        }
    }
    // `digits` holds digit 0, so it cannot be mistaken for the row marker.
    Ok((digits, first, other.unwrap_or(DEAD)))
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    /// Test shorthand: digits, `X`, `N` (2-9), `Z` (1-9), `[1-5]`/`[135]` classes, then an
    /// optional `.` (one or more) or `*` (zero or more).
    fn pat(text: &str) -> DigitPattern {
        let mut elems = Vec::new();
        let mut tail = Tail::None;
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '0'..='9' => elems.push(1 << (c as u8 - b'0')),
                'X' => elems.push(ANY_DIGIT),
                'N' => elems.push(0x3fc),
                'Z' => elems.push(0x3fe),
                '[' => {
                    let class: Vec<u8> = chars
                        .by_ref()
                        .take_while(|&c| c != ']')
                        .map(|c| c as u8)
                        .collect();
                    let mut set = 0;
                    let mut i = 0;
                    while i < class.len() {
                        if class.get(i + 1) == Some(&b'-') {
                            set |= digit_span(class[i] - b'0', class[i + 2] - b'0');
                            i += 3;
                        } else {
                            set |= 1 << (class[i] - b'0');
                            i += 1;
                        }
                    }
                    elems.push(set);
                }
                '.' => tail = Tail::OneOrMore,
                '*' => tail = Tail::ZeroOrMore,
                _ => panic!("bad test pattern {text:?}"),
            }
        }
        DigitPattern { elems, tail }
    }

    fn build(rules: &[(&str, u32)]) -> Matcher {
        Matcher::build(rules.iter().map(|&(text, id)| (pat(text), id)))
    }

    fn naive_all(patterns: &[(DigitPattern, u32)], digits: &[u8]) -> Vec<u32> {
        let mut ids: Vec<u32> = patterns
            .iter()
            .filter(|(p, _)| p.matches(digits))
            .map(|&(_, id)| id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Small deterministic generator for the bulk tests (no dependency, same cases every run).
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }

        fn digit(&mut self) -> u8 {
            b'0' + self.below(10) as u8
        }
    }

    fn value(digits: &[u8]) -> u64 {
        digits.iter().fold(0, |v, &b| v * 10 + u64::from(b - b'0'))
    }

    #[test]
    fn matcher_is_shareable_and_defaults_to_empty() {
        fn assert_traits<T: Send + Sync + fmt::Debug + Default>() {}
        assert_traits::<Matcher>();
        let m = Matcher::default();
        assert!(m.is_empty());
        assert_eq!(m.len(), 0);
        assert_eq!(m.automata(), 0);
        assert_eq!(m.best(b"74951234567", |_| true), None);
        assert!(m.all(b"74951234567").is_empty());
    }

    #[test]
    fn exact_digits_match_only_that_number() {
        let m = build(&[("74951234567", 4)]);
        assert_eq!(m.len(), 1);
        for (number, want) in [
            ("74951234567", Some(4)),
            ("7495123456", None),
            ("749512345678", None),
            ("74951234568", None),
            ("84951234567", None),
        ] {
            assert_eq!(m.best(number.as_bytes(), |_| true), want, "{number}");
            assert_eq!(
                pat("74951234567").matches(number.as_bytes()),
                want.is_some(),
                "{number}"
            );
        }
    }

    #[test]
    fn classes_match_only_their_digits() {
        let m = build(&[("7N[1-3]X", 1), ("7Z[05-6]", 2), ("7[13579]", 3)]);
        for (number, want) in [
            ("7210", vec![1]),
            ("7939", vec![1]),
            ("7140", vec![]),
            ("7240", vec![]),
            ("710", vec![2]),
            ("706", vec![]),
            ("796", vec![2]),
            ("797", vec![]),
            ("79", vec![3]),
            ("78", vec![]),
        ] {
            assert_eq!(m.all(number.as_bytes()), want, "{number}");
        }
    }

    #[test]
    fn one_or_more_needs_a_digit_zero_or_more_does_not() {
        let m = build(&[
            ("7495.", 1),
            ("7495*", 2),
            ("7495", 3),
            ("X*", 4),
            ("X.", 5),
        ]);
        for (number, want) in [
            ("7", vec![4]),
            ("74", vec![4, 5]),
            ("749", vec![4, 5]),
            ("7495", vec![2, 3, 4, 5]),
            ("74951", vec![1, 2, 4, 5]),
            ("749512345678901", vec![1, 2, 4, 5]),
            ("7496", vec![4, 5]),
        ] {
            assert_eq!(m.all(number.as_bytes()), want, "{number}");
        }
        // Fifteen elements: a `.` tail would need a sixteenth digit, a `*` tail allows none.
        let fifteen = "749512345678901";
        let m = build(&[
            (&format!("{fifteen}."), 1),
            (&format!("{fifteen}*"), 2),
            ("74951234567890.", 3),
        ]);
        assert_eq!(m.all(fifteen.as_bytes()), vec![2, 3]);
        assert_eq!(pat(&format!("{fifteen}.")).count(), 0);
        assert_eq!(pat(&format!("{fifteen}*")).count(), 1);
    }

    #[test]
    fn overlapping_patterns_return_the_lowest_id() {
        let rules = [
            ("7*", 9),
            ("7495*", 5),
            ("74951234567", 3),
            ("7495123XXXX", 7),
            ("7X*", 8),
        ];
        let m = build(&rules);
        assert_eq!(m.best(b"74951234567", |_| true), Some(3));
        assert_eq!(m.all(b"74951234567"), vec![3, 5, 7, 8, 9]);
        assert_eq!(m.best(b"74951234568", |_| true), Some(5));
        assert_eq!(m.best(b"74961234568", |_| true), Some(8));
        assert_eq!(m.best(b"7", |_| true), Some(9));
        assert_eq!(m.best(b"8", |_| true), None);
        // Ids, not insertion order, decide.
        let mut reversed = rules;
        reversed.reverse();
        assert_eq!(build(&reversed).best(b"74951234567", |_| true), Some(3));
    }

    #[test]
    fn is_live_skips_to_the_next_best() {
        let m = build(&[
            ("7*", 9),
            ("7495*", 5),
            ("74951234567", 3),
            ("7495123XXXX", 7),
            ("74951234567", 4),
        ]);
        let number = b"74951234567";
        assert_eq!(m.best(number, |id| id != 3), Some(4));
        assert_eq!(m.best(number, |id| id > 4), Some(5));
        assert_eq!(m.best(number, |id| id == 9), Some(9));
        assert_eq!(m.best(number, |_| false), None);
        // Only ids that would beat the best found so far are asked about.
        let mut asked = Vec::new();
        assert_eq!(
            m.best(number, |id| {
                asked.push(id);
                true
            }),
            Some(3)
        );
        assert!(asked.windows(2).all(|w| w[1] < w[0]), "{asked:?}");
    }

    #[test]
    fn input_that_is_not_a_number_matches_nothing() {
        let m = build(&[("*", 1), ("X*", 2), ("7*", 3)]);
        assert_eq!(m.all(b"7"), vec![1, 2, 3]);
        assert_eq!(m.all(b"749512345678901"), vec![1, 2, 3]);
        for bad in [
            &b""[..],
            b"7495123456789012",
            b"74a5",
            b"+7495",
            b"7495 ",
            b"\xff",
            b"7/",
        ] {
            assert_eq!(m.best(bad, |_| true), None, "{bad:?}");
            assert!(m.all(bad).is_empty(), "{bad:?}");
            assert!(!pat("*").matches(bad), "{bad:?}");
        }
    }

    #[test]
    fn patterns_that_cannot_match_are_counted_but_never_match() {
        let too_long = DigitPattern {
            elems: vec![ANY_DIGIT; 16],
            tail: Tail::ZeroOrMore,
        };
        let empty_set = DigitPattern {
            elems: vec![1 << 7, 0, ANY_DIGIT],
            tail: Tail::None,
        };
        let only_high_bits = DigitPattern {
            elems: vec![0xfc00],
            tail: Tail::ZeroOrMore,
        };
        let nothing = DigitPattern {
            elems: vec![],
            tail: Tail::None,
        };
        // Bits above 9 are ignored, not an error.
        let high_bits_and_seven = DigitPattern {
            elems: vec![0xfc00 | 1 << 7],
            tail: Tail::None,
        };
        let patterns = vec![
            (too_long, 1),
            (empty_set, 2),
            (only_high_bits, 3),
            (nothing, 4),
            (high_bits_and_seven, 5),
        ];
        let m = Matcher::build(patterns.clone());
        assert_eq!(m.len(), 5);
        for number in [&b"7"[..], b"700", b"749512345678901", b"1"] {
            assert_eq!(m.all(number), naive_all(&patterns, number), "{number:?}");
        }
        assert_eq!(m.all(b"7"), vec![5]);
        assert_eq!(
            patterns.iter().map(|(p, _)| p.count()).collect::<Vec<_>>(),
            vec![0, 0, 0, 0, 1]
        );
    }

    #[test]
    fn count_of_examples() {
        let ones = |n: u32| (0..n).fold(0u128, |acc, _| acc * 10 + 1);
        assert_eq!(pat("74951234567").count(), 1);
        assert_eq!(pat("7495123XXXX").count(), 10_000);
        assert_eq!(pat("7N[1-3]").count(), 8 * 3);
        assert_eq!(pat("7*").count(), ones(15));
        assert_eq!(pat("7.").count(), ones(15) - 1);
        assert_eq!(pat("*").count(), ones(15) * 10);
        assert_eq!(pat(".").count(), ones(15) * 10);
        assert_eq!(pat("X").count(), 10);
        assert_eq!(pat("").count(), 0);
        // Fewer numbers = more specific: exact < mask < prefix.
        assert!(pat("74951234567").count() < pat("7495123XXXX").count());
        assert!(pat("7495123XXXX").count() < pat("7495123*").count());
    }

    fn range(lo: &str, hi: &str) -> Option<Vec<DigitPattern>> {
        DigitPattern::from_range(lo.as_bytes(), hi.as_bytes())
    }

    #[test]
    fn from_range_examples() {
        let cases: [(&str, &str, &[&str]); 8] = [
            ("0000", "9999", &["XXXX"]),
            ("1230", "1239", &["123X"]),
            ("1234", "1234", &["1234"]),
            ("0999", "1000", &["0999", "1000"]),
            ("1995", "2005", &["199[5-9]", "200[0-5]"]),
            ("1000", "2999", &["[1-2]XXX"]),
            ("0", "9", &["X"]),
            (
                "1234",
                "5678",
                &[
                    "123[4-9]", "12[4-9]X", "1[3-9]XX", "[2-4]XXX", "5[0-5]XX", "56[0-6]X",
                    "567[0-8]",
                ],
            ),
        ];
        for (lo, hi, want) in cases {
            let want: Vec<DigitPattern> = want.iter().map(|t| pat(t)).collect();
            assert_eq!(range(lo, hi), Some(want), "{lo}-{hi}");
        }
    }

    #[test]
    fn from_range_rejects_what_is_not_a_range() {
        for (lo, hi) in [
            ("123", "1234"),
            ("12a", "123"),
            ("200", "199"),
            ("", ""),
            ("1234567890123456", "1234567890123457"),
        ] {
            assert_eq!(range(lo, hi), None, "{lo}-{hi}");
        }
    }

    /// Union and disjointness checked against every number, for every two-digit range.
    #[test]
    fn from_range_covers_every_two_digit_range_exactly() {
        let numbers: Vec<[u8; 2]> = (0..100u8).map(|v| [b'0' + v / 10, b'0' + v % 10]).collect();
        for lo in &numbers {
            for hi in numbers.iter().filter(|hi| *hi >= lo) {
                let patterns = DigitPattern::from_range(lo, hi).unwrap();
                for x in &numbers {
                    let hits = patterns.iter().filter(|p| p.matches(x)).count();
                    assert_eq!(
                        hits,
                        usize::from(lo <= x && x <= hi),
                        "{lo:?}-{hi:?} at {x:?}"
                    );
                }
            }
        }
    }

    /// Many patterns with a wildcard early and a digit late: the DFA would have to remember
    /// every combination of digits seen, so the set is split; answers stay exact.
    #[test]
    fn wildcard_explosion_is_split_and_stays_exact() {
        let mut patterns = Vec::new();
        for at in 0..9 {
            for d in 0..10u16 {
                let mut elems = vec![ANY_DIGIT; 9];
                elems[at] = 1 << d;
                patterns.push((
                    DigitPattern {
                        elems,
                        tail: Tail::ZeroOrMore,
                    },
                    u32::from(d) * 9 + at as u32,
                ));
            }
        }
        let m = Matcher::build(patterns.clone());
        assert!(m.automata() > 1, "{m:?}");
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..300 {
            let len = 1 + rng.below(12) as usize;
            let number: Vec<u8> = (0..len).map(|_| rng.digit()).collect();
            let want = naive_all(&patterns, &number);
            assert_eq!(m.all(&number), want, "{number:?}");
            assert_eq!(m.best(&number, |_| true), want.first().copied());
            assert_eq!(
                m.best(&number, |id| id % 3 == 1),
                want.iter().copied().find(|id| id % 3 == 1)
            );
        }
    }

    /// The realistic shape: 100k masks `7` + 6..9 fixed digits + `X`s to 11 digits (some
    /// with a `*` tail instead), plus a few broad rules. Correctness only; speed is a bench.
    #[test]
    fn hundred_thousand_realistic_masks() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut patterns: Vec<(DigitPattern, u32)> = Vec::new();
        for id in 0..100_000u32 {
            let fixed = 6 + rng.below(4) as usize;
            let mut elems = vec![1 << 7];
            elems.extend((0..fixed).map(|_| 1 << (rng.digit() - b'0')));
            let tail = if rng.below(4) == 0 {
                Tail::ZeroOrMore
            } else {
                elems.resize(11, ANY_DIGIT);
                Tail::None
            };
            patterns.push((DigitPattern { elems, tail }, id));
        }
        patterns.push((pat("7*"), 100_000));
        patterns.push((pat("XXXXXXXXXXX"), 100_001));
        patterns.push((pat("79."), 100_002));
        let m = Matcher::build(patterns.clone());
        assert_eq!(m.len(), 100_003);
        assert_eq!(m.automata(), 1, "{m:?}");

        let mut numbers: Vec<Vec<u8>> = Vec::new();
        for (p, _) in patterns.iter().step_by(9_973) {
            // Its own digits, a random one for each `X`, padded to 11 digits.
            let mut number: Vec<u8> = p
                .elems
                .iter()
                .map(|&set| {
                    if set == ANY_DIGIT {
                        rng.digit()
                    } else {
                        b'0' + set.trailing_zeros() as u8
                    }
                })
                .collect();
            number.resize(11, b'5');
            numbers.push(number);
        }
        numbers.extend([
            b"89991234567".to_vec(),
            b"7".to_vec(),
            b"79".to_vec(),
            b"790".to_vec(),
        ]);
        for number in &numbers {
            let want = naive_all(&patterns, number);
            assert_eq!(m.all(number), want, "{number:?}");
            assert_eq!(
                m.best(number, |_| true),
                want.first().copied(),
                "{number:?}"
            );
            assert_eq!(
                m.best(number, |id| id >= 100_000),
                want.iter().copied().find(|&id| id >= 100_000)
            );
        }
        // Each sampled mask matches its own number.
        for ((p, id), number) in patterns.iter().step_by(9_973).zip(&numbers) {
            assert!(m.all(number).contains(id), "{p:?} {number:?}");
        }
    }

    fn digit_set() -> impl Strategy<Value = DigitSet> {
        prop_oneof![
            6 => (0u16..3).prop_map(|d| 1 << d),
            2 => Just(ANY_DIGIT),
            1 => Just(0b011),
            1 => Just(0b110),
            1 => any::<u16>(),
        ]
    }

    fn tail() -> impl Strategy<Value = Tail> {
        prop_oneof![
            Just(Tail::None),
            Just(Tail::OneOrMore),
            Just(Tail::ZeroOrMore)
        ]
    }

    fn pattern() -> impl Strategy<Value = DigitPattern> {
        let elems = prop_oneof![
            12 => vec(digit_set(), 0..=6),
            1 => vec(digit_set(), 14..=16),
        ];
        (elems, tail()).prop_map(|(elems, tail)| DigitPattern { elems, tail })
    }

    fn number() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            12 => vec(b'0'..=b'2', 1..=8),
            2 => vec(b'0'..=b'9', 0..=17),
            1 => vec(any::<u8>(), 0..=4),
        ]
    }

    /// (lo, hi, x) of one length 1..=6 with lo <= hi.
    fn range_case() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Vec<u8>)> {
        (1usize..=6)
            .prop_flat_map(|n| {
                (
                    vec(b'0'..=b'9', n),
                    vec(b'0'..=b'9', n),
                    vec(b'0'..=b'9', n),
                )
            })
            .prop_map(|(a, b, x)| if a <= b { (a, b, x) } else { (b, a, x) })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn from_range_is_the_range_split_disjointly((lo, hi, x) in range_case()) {
            let patterns = DigitPattern::from_range(&lo, &hi).unwrap();
            prop_assert!(patterns.len() <= 2 * lo.len());
            for p in &patterns {
                prop_assert_eq!(p.elems.len(), lo.len());
                prop_assert_eq!(p.tail, Tail::None);
            }
            // Counts add up to the range size and every member is hit once: so the
            // patterns cover exactly the range and never overlap.
            let total: u128 = patterns.iter().map(DigitPattern::count).sum();
            prop_assert_eq!(total, u128::from(value(&hi) - value(&lo)) + 1);
            for probe in [&x, &lo, &hi] {
                let hits = patterns.iter().filter(|p| p.matches(probe)).count();
                let inside = lo <= *probe && *probe <= hi;
                prop_assert_eq!(hits, usize::from(inside), "{:?}", probe);
            }
        }

        #[test]
        fn matcher_agrees_with_naive_matching(
            patterns in vec((pattern(), 0u32..60), 0..=40),
            numbers in vec(number(), 1..=20),
            live in any::<u64>(),
        ) {
            // The second one splits at the least growth, so that splitting is exercised too.
            let tiny = Budget { states: (1, 0), work: (1, 0) };
            let matchers = [Matcher::build(patterns.clone()), Matcher::build_within(patterns.clone(), tiny)];
            let is_live = |id: u32| live & (1 << id) != 0;
            for m in &matchers {
                prop_assert_eq!(m.len(), patterns.len());
                for number in &numbers {
                    let want = naive_all(&patterns, number);
                    prop_assert_eq!(m.all(number), want.clone(), "{:?}", number);
                    prop_assert_eq!(m.best(number, |_| true), want.first().copied());
                    prop_assert_eq!(m.best(number, is_live), want.iter().copied().find(|&id| is_live(id)));
                }
            }
        }
    }
}
