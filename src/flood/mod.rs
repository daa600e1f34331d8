//! Flood detectors: observed calls -> ban requests and "under attack" states, over bounded
//! windowed counters with an injected clock. Pure and synchronous: no I/O, no clock of its own;
//! it does not write bans anywhere (the caller turns each [`Ban`] into an expiring rule) and does
//! not decide calls (the policy reads [`FloodDetector::under_attack`]).
//!
//! # Windows
//! Time is counted in whole seconds ("ticks") since the first instant the detector was given.
//! A window of W seconds (a fraction of a second rounds up) is the current one-second bucket and
//! the W-1 before it: a call made at `t` counts at `now` while `floor(now) - floor(t) < W`, that
//! is for between W-1 and W seconds. So calls that cannot all fit in one W-second interval never
//! add up to a detection, and any burst that fits in W-1 seconds is caught on the call that
//! exceeds the limit. With instants on whole seconds this is an exact sliding window.
//!
//! - per caller: more than `threshold` calls from one E.164 number in the window.
//! - range: more than `threshold` calls from numbers of one length that differ only in their
//!   last K digits (the ban is a fixed-length mask such as `+749512345XX`).
//! - fan-out: one number (or one K-digit range) calling more than `distinct_targets` distinct
//!   destinations in the window; a destination is the call's (tenant, DID) pair, so different
//!   DIDs and different tenants both count and calls naming neither count for nothing.
//! - target: a DID's or tenant's rate is its calls in the window divided by W. Above
//!   `calls_per_second` it is under attack; the attack ends once the rate has stayed at or
//!   below the limit for `hold_down`. When the rate falls is worked out from the buckets, so an
//!   attack ends on time even if calls stop altogether.
//!
//! Only E.164 callers count toward per-caller, range and fan-out (anonymous, local and invalid
//! callers form no ranges); every call counts toward target rates. A ban is reported once, and
//! again for the same key only once its duration (in whole seconds) has passed, because each
//! report costs a store write.
//!
//! # Memory
//! Each detector (per caller, each range limit, fan-out, target) holds at most `max_tracked`
//! keys and remembers at most `max_tracked` recent bans. Per key it keeps a fixed row of cells,
//! allocated once and reused: per caller and range `min(threshold + 1, W)` buckets of 8 bytes,
//! fan-out `distinct_targets + 1` destinations of 16 bytes, target W buckets; never more than
//! [`MAX_CELLS`]. Add about 60 bytes of bookkeeping per key (row, hash map entry, and up to
//! twice the rows' memory while the slab grows). When a detector is full the least recently touched key makes room: an idle one
//! if there is one, else a live one (counted in [`FloodDetector::evicted`]); losing state can
//! only delay a detection, never cause one. Target keys are 64-bit hashes under a per-process
//! random key, so two targets sharing state is not a practical concern.

mod table;
#[cfg(test)]
mod tests;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use self::table::{
    Bucket, Seen, Suppress, Table, Tick, add_calls, add_destination, calls_in_window,
};
use crate::number::{CallerNumber, E164};
use crate::rules::Tenant;

/// Most cells (buckets or destinations) one key may hold; settings needing more fail
/// [`FloodSettings::validate`] and are clamped by [`FloodDetector::new`].
pub const MAX_CELLS: usize = 256;

/// Largest K a range may leave open (`+7495XXXXXX`).
pub const MAX_SUFFIX_DIGITS: u8 = 6;

/// Fewest digits a range keeps fixed. Country codes have at most 3 digits, so no automatic
/// range ban can ever cover a whole country.
pub const MIN_RANGE_PREFIX_DIGITS: usize = 4;

/// [`FloodSettings::max_tracked`] when not configured.
pub const DEFAULT_MAX_TRACKED: usize = 100_000;

/// Which detectors run and their limits. Plain data; config mapping is done elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub struct FloodSettings {
    /// Calls from one number, e.g. more than 5 in 60 s.
    pub per_caller: Option<RateLimit>,
    /// Calls from numbers sharing all but their last K digits, e.g. K=2: more than 20 in 60 s.
    pub ranges: Vec<RangeLimit>,
    /// Distinct destinations called by one number or range, e.g. more than 10 in 300 s.
    pub fan_out: Option<FanOutLimit>,
    /// Calls per second to one DID or tenant: the "under attack" state.
    pub target: Option<TargetLimit>,
    /// Keys each detector tracks at most (see the module docs for the bytes per key).
    pub max_tracked: usize,
}

impl Default for FloodSettings {
    /// Every detector off, [`DEFAULT_MAX_TRACKED`] keys.
    fn default() -> FloodSettings {
        FloodSettings {
            per_caller: None,
            ranges: Vec::new(),
            fan_out: None,
            target: None,
            max_tracked: DEFAULT_MAX_TRACKED,
        }
    }
}

/// More than `threshold` calls in `window` -> a ban for `ban`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Window length, in whole seconds (fractions round up).
    pub window: Duration,
    /// Calls allowed in the window; one more trips.
    pub threshold: u32,
    /// How long the ban lasts.
    pub ban: Duration,
}

/// More than `threshold` calls in `window` from one range -> a ban on the range for `ban`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeLimit {
    /// K: how many trailing digits the range leaves open, 1 to [`MAX_SUFFIX_DIGITS`].
    pub suffix_digits: u8,
    /// Window length, in whole seconds (fractions round up).
    pub window: Duration,
    /// Calls allowed in the window from the whole range; one more trips.
    pub threshold: u32,
    /// How long the ban lasts.
    pub ban: Duration,
}

/// More than `distinct_targets` destinations in `window` from one caller (or range) -> a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanOutLimit {
    /// Window length, in whole seconds (fractions round up).
    pub window: Duration,
    /// Distinct (tenant, DID) destinations allowed in the window; one more trips.
    pub distinct_targets: u32,
    /// How long the ban lasts.
    pub ban: Duration,
    /// `None`: count per calling number, ban the number. `Some(K)`: count per range of numbers
    /// differing only in their last K digits, ban the range.
    pub range_suffix_digits: Option<u8>,
}

/// More than `calls_per_second` to one DID or tenant over `window` -> under attack.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetLimit {
    /// Window the rate is measured over, in whole seconds (at most [`MAX_CELLS`]).
    pub window: Duration,
    /// Highest rate that is not an attack.
    pub calls_per_second: f64,
    /// How long the rate must stay at or below the limit before the attack is over.
    pub hold_down: Duration,
}

impl FloodSettings {
    /// Checks every limit is usable: windows, thresholds and bans non-zero, K in range, per-key
    /// state within [`MAX_CELLS`], a positive finite rate, room for at least one key.
    pub fn validate(&self) -> Result<(), FloodError> {
        if self.max_tracked == 0 {
            return Err(FloodError::NoRoom);
        }
        if let Some(limit) = &self.per_caller {
            check_rate(
                Detector::PerCaller,
                limit.window,
                limit.threshold,
                limit.ban,
            )?;
        }
        for limit in &self.ranges {
            check_suffix(Detector::Range, limit.suffix_digits)?;
            check_rate(Detector::Range, limit.window, limit.threshold, limit.ban)?;
        }
        if let Some(limit) = &self.fan_out {
            let detector = Detector::FanOut;
            check_rate(detector, limit.window, limit.distinct_targets, limit.ban)?;
            if let Some(k) = limit.range_suffix_digits {
                check_suffix(detector, k)?;
            }
            let cells = u64::from(limit.distinct_targets) + 1;
            if cells > MAX_CELLS as u64 {
                return Err(FloodError::TooMuchState { detector, cells });
            }
        }
        if let Some(limit) = &self.target {
            let detector = Detector::Target;
            if limit.window.is_zero() {
                return Err(FloodError::ZeroWindow { detector });
            }
            let cells = u64::from(ticks(limit.window));
            if cells > MAX_CELLS as u64 {
                return Err(FloodError::TooMuchState { detector, cells });
            }
            if !(limit.calls_per_second.is_finite() && limit.calls_per_second > 0.0) {
                return Err(FloodError::BadRate {
                    value: limit.calls_per_second,
                });
            }
        }
        Ok(())
    }
}

fn check_rate(
    detector: Detector,
    window: Duration,
    threshold: u32,
    ban: Duration,
) -> Result<(), FloodError> {
    if window.is_zero() {
        return Err(FloodError::ZeroWindow { detector });
    }
    if threshold == 0 {
        return Err(FloodError::ZeroThreshold { detector });
    }
    if ban.is_zero() {
        return Err(FloodError::ZeroBan { detector });
    }
    let cells = (u64::from(threshold) + 1).min(u64::from(ticks(window)));
    if cells > MAX_CELLS as u64 {
        return Err(FloodError::TooMuchState { detector, cells });
    }
    Ok(())
}

fn check_suffix(detector: Detector, value: u8) -> Result<(), FloodError> {
    if (1..=MAX_SUFFIX_DIGITS).contains(&value) {
        Ok(())
    } else {
        Err(FloodError::SuffixDigits { detector, value })
    }
}

/// Unusable flood settings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FloodError {
    /// A window of zero length.
    #[error("flood {detector}: window must be at least 1s")]
    ZeroWindow {
        /// The detector whose limit is wrong.
        detector: Detector,
    },
    /// A threshold (or distinct-target count) of zero, which would ban every caller.
    #[error("flood {detector}: threshold must be at least 1")]
    ZeroThreshold {
        /// The detector whose limit is wrong.
        detector: Detector,
    },
    /// A ban of zero length, which would be reported again on every call.
    #[error("flood {detector}: ban must be at least 1s")]
    ZeroBan {
        /// The detector whose limit is wrong.
        detector: Detector,
    },
    /// A range K outside 1..=6.
    #[error("flood {detector}: suffix_digits must be 1 to 6, got {value}")]
    SuffixDigits {
        /// The detector whose limit is wrong.
        detector: Detector,
        /// K as given.
        value: u8,
    },
    /// A window and threshold that need more than [`MAX_CELLS`] cells per key.
    #[error(
        "flood {detector}: needs {cells} counters per key, at most 256; shorten the window or lower the threshold"
    )]
    TooMuchState {
        /// The detector whose limit is wrong.
        detector: Detector,
        /// Cells the limit would need per key.
        cells: u64,
    },
    /// A target rate that is not a positive finite number.
    #[error("flood target: calls_per_second must be a positive number, got {value}")]
    BadRate {
        /// The rate as given.
        value: f64,
    },
    /// `max_tracked` of zero.
    #[error("flood: max_tracked must be at least 1")]
    NoRoom,
}

/// Which detector fired; `as_str` gives the metric label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detector {
    /// Too many calls from one number.
    PerCaller,
    /// Too many calls from one range of numbers.
    Range,
    /// One number or range calling too many destinations.
    FanOut,
    /// Too many calls to one DID or tenant.
    Target,
}

impl Detector {
    /// Every detector, for registering metric label values up front.
    pub const ALL: [Detector; 4] = [
        Detector::PerCaller,
        Detector::Range,
        Detector::FanOut,
        Detector::Target,
    ];

    /// `per_caller`, `range`, `fan_out` or `target`.
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::PerCaller => "per_caller",
            Detector::Range => "range",
            Detector::FanOut => "fan_out",
            Detector::Target => "target",
        }
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// All numbers of one length that share every digit but the last K: `+749512345XX` for K=2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NumberRange {
    /// The fixed digits as a number; never starts with 0 (a country code does not).
    prefix: u64,
    suffix_digits: u8,
}

impl NumberRange {
    /// The range of `number` with its last `suffix_digits` digits open; `None` unless K is
    /// 1..=6 and at least [`MIN_RANGE_PREFIX_DIGITS`] digits stay fixed.
    pub fn of(number: E164, suffix_digits: u8) -> Option<NumberRange> {
        let k = usize::from(suffix_digits);
        let ok = (1..=MAX_SUFFIX_DIGITS).contains(&suffix_digits)
            && number.digit_count() >= k + MIN_RANGE_PREFIX_DIGITS;
        ok.then(|| NumberRange {
            prefix: number.value() / 10u64.pow(u32::from(suffix_digits)),
            suffix_digits,
        })
    }

    /// From its fixed digits (as a number) and K, with the same checks as [`NumberRange::of`].
    pub fn from_parts(prefix: u64, suffix_digits: u8) -> Option<NumberRange> {
        let sample = prefix.checked_mul(10u64.checked_pow(u32::from(suffix_digits))?)?;
        let range = NumberRange::of(E164::from_digits(&sample.to_string())?, suffix_digits)?;
        (range.prefix == prefix).then_some(range)
    }

    /// The fixed digits as a number, e.g. `749512345`.
    pub fn prefix(self) -> u64 {
        self.prefix
    }

    /// K: how many trailing digits are open.
    pub fn suffix_digits(self) -> u8 {
        self.suffix_digits
    }

    /// True if `number` is in the range (same length, same fixed digits).
    pub fn contains(self, number: E164) -> bool {
        NumberRange::of(number, self.suffix_digits) == Some(self)
    }
}

impl fmt::Display for NumberRange {
    /// Our mask syntax: `+749512345XX`. Fixed length, so it never matches longer numbers.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.prefix)?;
        for _ in 0..self.suffix_digits {
            f.write_str("X")?;
        }
        Ok(())
    }
}

/// What a ban blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BanRule {
    /// One number.
    Number(E164),
    /// A fixed-length range of numbers.
    Range(NumberRange),
}

impl BanRule {
    /// The rule in our rule syntax: `+74951234567` or the mask `+749512345XX`.
    pub fn rule_text(&self) -> String {
        self.to_string()
    }

    /// True if the rule blocks `number`.
    pub fn matches(&self, number: E164) -> bool {
        match self {
            BanRule::Number(n) => *n == number,
            BanRule::Range(range) => range.contains(number),
        }
    }

    /// The key its detector counts it under (detectors are per K, so the prefix is unique).
    fn key(self) -> u64 {
        match self {
            BanRule::Number(n) => n.value(),
            BanRule::Range(range) => range.prefix,
        }
    }
}

impl fmt::Display for BanRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanRule::Number(n) => n.fmt(f),
            BanRule::Range(range) => range.fmt(f),
        }
    }
}

/// A request to block a number or range for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// What fired.
    pub detector: Detector,
    /// What to block.
    pub rule: BanRule,
    /// For how long.
    pub duration: Duration,
    /// Why, e.g. `flood: 6 calls in 60s from +74951234567`; ASCII, safe for logs and stores.
    pub reason: String,
}

/// A destination whose call rate is watched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetKey {
    /// A called number.
    Did(CallerNumber),
    /// A tenant.
    Tenant(Tenant),
}

impl TargetKey {
    /// DID or tenant.
    pub fn kind(&self) -> TargetKind {
        match self {
            TargetKey::Did(_) => TargetKind::Did,
            TargetKey::Tenant(_) => TargetKind::Tenant,
        }
    }

    fn as_ref(&self) -> TargetRef<'_> {
        match self {
            TargetKey::Did(did) => TargetRef::Did(did),
            TargetKey::Tenant(tenant) => TargetRef::Tenant(tenant),
        }
    }
}

impl fmt::Display for TargetKey {
    /// `did:+74951234567` or `tenant:acme`: safe ASCII.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetKey::Did(did) => write!(f, "did:{did}"),
            TargetKey::Tenant(tenant) => write!(f, "tenant:{tenant}"),
        }
    }
}

/// Whether an attacked target is a DID or a tenant (a metric label, unlike the target itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetKind {
    /// A called number.
    Did,
    /// A tenant.
    Tenant,
}

impl TargetKind {
    /// `did` or `tenant`.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Did => "did",
            TargetKind::Tenant => "tenant",
        }
    }
}

/// A borrowed [`TargetKey`], so the per-call path hashes without cloning.
#[derive(Clone, Copy)]
enum TargetRef<'a> {
    Did(&'a CallerNumber),
    Tenant(&'a Tenant),
}

impl TargetRef<'_> {
    fn hash(self, hasher: &RandomState) -> u64 {
        match self {
            TargetRef::Did(did) => hasher.hash_one((0u8, did)),
            TargetRef::Tenant(tenant) => hasher.hash_one((1u8, tenant)),
        }
    }

    fn to_key(self) -> TargetKey {
        match self {
            TargetRef::Did(did) => TargetKey::Did(did.clone()),
            TargetRef::Tenant(tenant) => TargetKey::Tenant(tenant.clone()),
        }
    }
}

/// What another node counted, for [`FloodDetector::merge_remote`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FloodKey {
    /// Calls from one number (per-caller detector).
    Caller(E164),
    /// Calls from a range (every range detector with the same K).
    Range(NumberRange),
    /// Calls to a DID or tenant (target detector).
    Target(TargetKey),
}

impl fmt::Display for FloodKey {
    /// `caller:+74951234567`, `range:+749512345XX`, `did:...` or `tenant:...`: safe ASCII,
    /// usable in store keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FloodKey::Caller(number) => write!(f, "caller:{number}"),
            FloodKey::Range(range) => write!(f, "range:{range}"),
            FloodKey::Target(target) => target.fmt(f),
        }
    }
}

/// One call as the detectors see it.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The canonical caller.
    pub number: &'a CallerNumber,
    /// The canonical called number, if known.
    pub did: Option<&'a CallerNumber>,
    /// The call's tenant, if any.
    pub tenant: Option<&'a Tenant>,
}

/// A change of a target's "under attack" state, for logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum AttackEvent {
    /// The target's rate went above the limit.
    Started {
        /// The target.
        target: TargetKey,
        /// Calls per second over the window when it started.
        rate: f64,
    },
    /// The rate stayed at or below the limit for the hold-down (or the state was dropped to
    /// make room, which is reported the same way so starts and ends always pair up).
    Ended {
        /// The target.
        target: TargetKey,
        /// When the attack started.
        since: Instant,
    },
}

/// What one call (or a merge, or an expiry pass) triggered. Usually empty, which allocates
/// nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detections {
    /// Bans to write, each reported once per ban period.
    pub bans: Vec<Ban>,
    /// Targets that came under attack or stopped being under attack.
    pub attacks: Vec<AttackEvent>,
}

impl Detections {
    /// True when nothing was triggered.
    pub fn is_empty(&self) -> bool {
        self.bans.is_empty() && self.attacks.is_empty()
    }
}

/// A target under attack, for the decision policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttackState {
    /// When the attack started.
    pub since: Instant,
    /// Calls per second over the window now.
    pub rate: f64,
    /// Whether the DID or the tenant is under attack (the DID when both are).
    pub target: TargetKind,
}

/// Rounds a duration up to whole ticks.
fn ticks(d: Duration) -> Tick {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Tick::try_from(secs).unwrap_or(Tick::MAX)
}

/// Per-caller or one range limit: calls per key in a window.
struct RateCounter {
    detector: Detector,
    /// K for a range detector, 0 for per caller.
    suffix_digits: u8,
    window: Tick,
    threshold: u32,
    ban: Duration,
    ban_ticks: Tick,
    table: Table<Bucket, ()>,
    bans: Suppress,
}

impl RateCounter {
    fn new(detector: Detector, suffix_digits: u8, limit: RateLimit, max: usize) -> RateCounter {
        let window = ticks(limit.window).max(1);
        let threshold = limit.threshold.max(1);
        let cells = (u64::from(threshold) + 1)
            .min(u64::from(window))
            .min(MAX_CELLS as u64) as usize;
        RateCounter {
            detector,
            suffix_digits,
            window,
            threshold,
            ban: limit.ban,
            ban_ticks: ticks(limit.ban).max(1),
            table: Table::new(cells, max, window),
            bans: Suppress::new(max),
        }
    }

    fn add(&mut self, rule: BanRule, count: u32, now: Tick, out: &mut Detections) {
        let key = rule.key();
        let slot = self.table.touch(key, now).slot;
        let (cells, len, ()) = self.table.row_mut(slot);
        add_calls(cells, len, now, count, self.window);
        let calls = calls_in_window(&cells[..*len as usize], now, self.window);
        if calls > u64::from(self.threshold) && !self.bans.active(key, now) {
            self.bans
                .insert(key, now.saturating_add(self.ban_ticks), now);
            let from = match rule {
                BanRule::Number(_) => "",
                BanRule::Range(_) => "range ",
            };
            out.bans.push(Ban {
                detector: self.detector,
                rule,
                duration: self.ban,
                reason: format!("flood: {calls} calls in {}s from {from}{rule}", self.window),
            });
        }
    }

    fn expire(&mut self, now: Tick) {
        self.table.expire(now, |()| {});
        self.bans.expire(now);
    }
}

/// Distinct destinations per caller or range in a window.
struct FanOutCounter {
    suffix_digits: Option<u8>,
    window: Tick,
    distinct: u32,
    ban: Duration,
    ban_ticks: Tick,
    table: Table<Seen, ()>,
    bans: Suppress,
}

impl FanOutCounter {
    fn new(limit: FanOutLimit, max: usize) -> FanOutCounter {
        let window = ticks(limit.window).max(1);
        let distinct = limit.distinct_targets.clamp(1, MAX_CELLS as u32 - 1);
        FanOutCounter {
            suffix_digits: limit.range_suffix_digits,
            window,
            distinct,
            ban: limit.ban,
            ban_ticks: ticks(limit.ban).max(1),
            table: Table::new(distinct as usize + 1, max, window),
            bans: Suppress::new(max),
        }
    }

    fn add(&mut self, rule: BanRule, destination: u64, now: Tick, out: &mut Detections) {
        let key = rule.key();
        let slot = self.table.touch(key, now).slot;
        let (cells, len, ()) = self.table.row_mut(slot);
        let seen = add_destination(cells, len, destination, now, self.window);
        if seen > self.distinct && !self.bans.active(key, now) {
            self.bans
                .insert(key, now.saturating_add(self.ban_ticks), now);
            out.bans.push(Ban {
                detector: Detector::FanOut,
                rule,
                duration: self.ban,
                reason: format!(
                    "flood: {rule} called {seen} destinations in {}s",
                    self.window
                ),
            });
        }
    }

    fn expire(&mut self, now: Tick) {
        self.table.expire(now, |()| {});
        self.bans.expire(now);
    }
}

/// A target's attack state, beside its buckets.
#[derive(Default)]
struct TargetState {
    /// The target itself, kept for reporting (the table knows only its hash).
    key: Option<TargetKey>,
    since: Option<Instant>,
    /// When the rate falls to the limit if no more calls come.
    above_until: Tick,
}

/// Call rate per DID and per tenant.
struct TargetCounter {
    window: Tick,
    /// The rate limit as calls per window.
    limit: f64,
    hold: Tick,
    table: Table<Bucket, TargetState>,
    /// Slots whose target is under attack, so expiry finds ended attacks without a full scan.
    attacking: Vec<u32>,
}

impl TargetCounter {
    fn new(limit: TargetLimit, max: usize) -> Option<TargetCounter> {
        let rate = limit.calls_per_second;
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        let window = ticks(limit.window).clamp(1, MAX_CELLS as Tick);
        let hold = ticks(limit.hold_down);
        Some(TargetCounter {
            window,
            limit: rate * f64::from(window),
            hold,
            // A key is idle once its rate is zero and any attack has run out its hold-down.
            table: Table::new(window as usize, max, window.saturating_add(hold)),
            attacking: Vec::new(),
        })
    }

    fn add(
        &mut self,
        target: TargetRef<'_>,
        hash: u64,
        count: u32,
        (tick, now): (Tick, Instant),
        out: &mut Detections,
    ) {
        let touch = self.table.touch(hash, tick);
        if let Some(old) = touch.displaced {
            report_end(old, out);
        }
        let (cells, len, state) = self.table.row_mut(touch.slot);
        if state.key.is_none() {
            state.key = Some(target.to_key());
        }
        add_calls(cells, len, tick, count, self.window);
        let cells = &cells[..*len as usize];
        let calls = calls_in_window(cells, tick, self.window);
        if calls as f64 > self.limit {
            state.above_until =
                state
                    .above_until
                    .max(falls_at(cells, calls, self.window, self.limit));
            if state.since.is_none() {
                state.since = Some(now);
                out.attacks.push(AttackEvent::Started {
                    target: target.to_key(),
                    rate: calls as f64 / f64::from(self.window),
                });
                if !self.attacking.contains(&touch.slot) {
                    self.attacking.push(touch.slot);
                }
            }
        } else if attack_over(state, self.hold, tick)
            && let Some(since) = state.since.take()
        {
            out.attacks.push(AttackEvent::Ended {
                target: target.to_key(),
                since,
            });
        }
    }

    fn state(&self, target: TargetRef<'_>, hasher: &RandomState, now: Tick) -> Option<AttackState> {
        let (cells, state) = self.table.get(target.hash(hasher))?;
        let since = state.since?;
        if attack_over(state, self.hold, now) {
            return None;
        }
        let calls = calls_in_window(cells, now, self.window);
        Some(AttackState {
            since,
            rate: calls as f64 / f64::from(self.window),
            target: match target {
                TargetRef::Did(_) => TargetKind::Did,
                TargetRef::Tenant(_) => TargetKind::Tenant,
            },
        })
    }

    fn expire(&mut self, now: Tick, out: &mut Detections) {
        let (table, hold) = (&mut self.table, self.hold);
        self.attacking.retain(|&slot| {
            let Some(state) = table.extra_mut(slot) else {
                return false;
            };
            if state.since.is_none() {
                // Ended on a call, or the slot was reused.
                return false;
            }
            if !attack_over(state, hold, now) {
                return true;
            }
            if let (Some(target), Some(since)) = (state.key.clone(), state.since.take()) {
                out.attacks.push(AttackEvent::Ended { target, since });
            }
            false
        });
        self.table.expire(now, |state| report_end(state, out));
    }
}

/// True when an attack is on record and the rate has been at or below the limit for `hold`.
fn attack_over(state: &TargetState, hold: Tick, now: Tick) -> bool {
    state.since.is_some() && u64::from(now) >= u64::from(state.above_until) + u64::from(hold)
}

/// The tick at which the calls in `cells` (oldest first, `calls` in all) fall to `limit` or
/// below if no more calls come: when enough of the oldest buckets have left the window.
fn falls_at(cells: &[Bucket], calls: u64, window: Tick, limit: f64) -> Tick {
    let mut remaining = calls;
    for bucket in cells {
        remaining -= u64::from(bucket.count);
        if remaining as f64 <= limit {
            return bucket.tick.saturating_add(window);
        }
    }
    cells
        .last()
        .map_or(0, |bucket| bucket.tick.saturating_add(window))
}

/// Reports the end of an attack whose state is being dropped.
fn report_end(state: TargetState, out: &mut Detections) {
    if let (Some(target), Some(since)) = (state.key, state.since) {
        out.attacks.push(AttackEvent::Ended { target, since });
    }
}

/// The flood detectors over one node's calls. A plain `&mut self` struct for one owner; share
/// it between tasks through [`SharedDetector`].
pub struct FloodDetector {
    /// Tick zero: the first instant seen. `None` until then.
    epoch: Option<Instant>,
    /// Keyed per process so callers cannot pick colliding targets.
    hasher: RandomState,
    per_caller: Option<RateCounter>,
    ranges: Vec<RateCounter>,
    fan_out: Option<FanOutCounter>,
    target: Option<TargetCounter>,
    max_tracked: usize,
}

impl FloodDetector {
    /// Detectors for `settings`, which should have passed [`FloodSettings::validate`]. Anything
    /// invalid is made safe instead of failing: zero windows, thresholds and bans become 1 (s),
    /// per-key state is capped at [`MAX_CELLS`] (a capped limit can only detect late), ranges
    /// with K outside 1..=6 and targets with a rate that is not positive are left out, and
    /// `max_tracked` is at least 1.
    pub fn new(settings: FloodSettings) -> FloodDetector {
        let max = settings.max_tracked.max(1);
        let ranges = settings
            .ranges
            .iter()
            .filter(|limit| (1..=MAX_SUFFIX_DIGITS).contains(&limit.suffix_digits))
            .map(|limit| {
                let rate = RateLimit {
                    window: limit.window,
                    threshold: limit.threshold,
                    ban: limit.ban,
                };
                RateCounter::new(Detector::Range, limit.suffix_digits, rate, max)
            })
            .collect();
        FloodDetector {
            epoch: None,
            hasher: RandomState::new(),
            per_caller: settings
                .per_caller
                .map(|limit| RateCounter::new(Detector::PerCaller, 0, limit, max)),
            ranges,
            fan_out: settings.fan_out.map(|limit| FanOutCounter::new(limit, max)),
            target: settings
                .target
                .and_then(|limit| TargetCounter::new(limit, max)),
            max_tracked: max,
        }
    }

    /// Records one call and returns what it triggers (usually nothing, without allocating).
    /// `now` is a monotonic instant from the caller; an instant earlier than one already seen
    /// counts as the latest second seen.
    pub fn observe(&mut self, call: &Observed<'_>, now: Instant) -> Detections {
        let tick = self.tick(now);
        let mut out = Detections::default();
        if let Some(number) = call.number.as_e164() {
            if let Some(counter) = &mut self.per_caller {
                counter.add(BanRule::Number(number), 1, tick, &mut out);
            }
            for counter in &mut self.ranges {
                if let Some(range) = NumberRange::of(number, counter.suffix_digits) {
                    counter.add(BanRule::Range(range), 1, tick, &mut out);
                }
            }
            if let Some(counter) = &mut self.fan_out
                && (call.did.is_some() || call.tenant.is_some())
            {
                let source = match counter.suffix_digits {
                    None => Some(BanRule::Number(number)),
                    Some(k) => NumberRange::of(number, k).map(BanRule::Range),
                };
                if let Some(rule) = source {
                    let destination = self.hasher.hash_one((2u8, call.tenant, call.did));
                    counter.add(rule, destination, tick, &mut out);
                }
            }
        }
        if let Some(counter) = &mut self.target {
            let targets = [
                call.did.map(TargetRef::Did),
                call.tenant.map(TargetRef::Tenant),
            ];
            for target in targets.into_iter().flatten() {
                let hash = target.hash(&self.hasher);
                counter.add(target, hash, 1, (tick, now), &mut out);
            }
        }
        out
    }

    /// Whether the DID or the tenant is under attack at `now` (the DID's state when both are).
    pub fn under_attack(
        &self,
        did: Option<&CallerNumber>,
        tenant: Option<&Tenant>,
        now: Instant,
    ) -> Option<AttackState> {
        let counter = self.target.as_ref()?;
        let tick = ticks_since(self.epoch?, now);
        let did = did.and_then(|did| counter.state(TargetRef::Did(did), &self.hasher, tick));
        did.or_else(|| tenant.and_then(|t| counter.state(TargetRef::Tenant(t), &self.hasher, tick)))
    }

    /// False when no DID or tenant is under attack ([`FloodDetector::under_attack`] answers
    /// `None` for every call); true when one may be.
    pub fn attacks_possible(&self) -> bool {
        self.target
            .as_ref()
            .is_some_and(|t| !t.attacking.is_empty())
    }

    /// Drops idle state and forgotten bans and reports attacks whose hold-down has run out.
    /// Call it from a timer (e.g. every second); `observe` also reuses idle state as it goes.
    pub fn expire(&mut self, now: Instant) -> Detections {
        let mut out = Detections::default();
        let Some(epoch) = self.epoch else {
            return out;
        };
        let tick = ticks_since(epoch, now);
        if let Some(counter) = &mut self.per_caller {
            counter.expire(tick);
        }
        for counter in &mut self.ranges {
            counter.expire(tick);
        }
        if let Some(counter) = &mut self.fan_out {
            counter.expire(tick);
        }
        if let Some(counter) = &mut self.target {
            counter.expire(tick, &mut out);
        }
        out
    }

    /// Keys tracked now over all detectors (for a gauge); at most [`FloodDetector::capacity`].
    pub fn tracked(&self) -> usize {
        self.counters().map(|(tracked, _)| tracked).sum()
    }

    /// The most keys [`FloodDetector::tracked`] can reach: `max_tracked` per detector.
    pub fn capacity(&self) -> usize {
        self.counters().count() * self.max_tracked
    }

    /// Live (not idle) keys dropped to make room since start, over all detectors (for a counter).
    pub fn evicted(&self) -> u64 {
        self.counters().map(|(_, evicted)| evicted).sum()
    }

    /// Adds `count` calls counted by other nodes for `key` at `now` (shared counting is done
    /// elsewhere; the counts must not include this node's own). Fan-out cannot be merged from
    /// counts and is not shared.
    pub fn merge_remote(&mut self, key: &FloodKey, count: u32, now: Instant) -> Detections {
        let mut out = Detections::default();
        if count == 0 {
            return out;
        }
        let tick = self.tick(now);
        match key {
            FloodKey::Caller(number) => {
                if let Some(counter) = &mut self.per_caller {
                    counter.add(BanRule::Number(*number), count, tick, &mut out);
                }
            }
            FloodKey::Range(range) => {
                for counter in &mut self.ranges {
                    if counter.suffix_digits == range.suffix_digits {
                        counter.add(BanRule::Range(*range), count, tick, &mut out);
                    }
                }
            }
            FloodKey::Target(target) => {
                if let Some(counter) = &mut self.target {
                    let target = target.as_ref();
                    let hash = target.hash(&self.hasher);
                    counter.add(target, hash, count, (tick, now), &mut out);
                }
            }
        }
        out
    }

    /// (tracked, evicted) of each detector.
    fn counters(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        let per_caller = self
            .per_caller
            .iter()
            .map(|c| (c.table.len(), c.table.evicted()));
        let ranges = self
            .ranges
            .iter()
            .map(|c| (c.table.len(), c.table.evicted()));
        let fan_out = self
            .fan_out
            .iter()
            .map(|c| (c.table.len(), c.table.evicted()));
        let target = self
            .target
            .iter()
            .map(|c| (c.table.len(), c.table.evicted()));
        per_caller.chain(ranges).chain(fan_out).chain(target)
    }

    fn tick(&mut self, now: Instant) -> Tick {
        let epoch = *self.epoch.get_or_insert(now);
        ticks_since(epoch, now)
    }
}

/// Whole seconds from `epoch` to `now` (0 for instants before it).
fn ticks_since(epoch: Instant, now: Instant) -> Tick {
    Tick::try_from(now.saturating_duration_since(epoch).as_secs()).unwrap_or(Tick::MAX)
}

/// A cheap-clone handle to one [`FloodDetector`] shared by every connection task.
///
/// A std `Mutex` because every operation is a few hash lookups and copies of at most
/// [`MAX_CELLS`] cells, with no I/O and no `.await` inside, so the lock is held for
/// microseconds and never across a suspension point.
#[derive(Clone)]
pub struct SharedDetector {
    inner: Arc<Mutex<FloodDetector>>,
    // Whether any DID or tenant may be under attack, refreshed by every change under the
    // lock: almost always false, and then deciding a call takes no lock at all (two workers
    // taking turns on it, one preempted while holding it, was the decision's tail).
    attacks: Arc<AtomicBool>,
}

impl SharedDetector {
    /// Shares `detector`.
    pub fn new(detector: FloodDetector) -> SharedDetector {
        SharedDetector {
            attacks: Arc::new(AtomicBool::new(detector.attacks_possible())),
            inner: Arc::new(Mutex::new(detector)),
        }
    }

    /// See [`FloodDetector::observe`].
    pub fn observe(&self, call: &Observed<'_>, now: Instant) -> Detections {
        self.changing(|d| d.observe(call, now))
    }

    /// See [`FloodDetector::under_attack`].
    pub fn under_attack(
        &self,
        did: Option<&CallerNumber>,
        tenant: Option<&Tenant>,
        now: Instant,
    ) -> Option<AttackState> {
        if !self.attacks.load(Ordering::Acquire) {
            return None;
        }
        self.lock().under_attack(did, tenant, now)
    }

    /// See [`FloodDetector::expire`].
    pub fn expire(&self, now: Instant) -> Detections {
        self.changing(|d| d.expire(now))
    }

    /// See [`FloodDetector::merge_remote`].
    pub fn merge_remote(&self, key: &FloodKey, count: u32, now: Instant) -> Detections {
        self.changing(|d| d.merge_remote(key, count, now))
    }

    /// Runs `change` under the lock and refreshes the attack flag before letting go.
    fn changing<T>(&self, change: impl FnOnce(&mut FloodDetector) -> T) -> T {
        let mut detector = self.lock();
        let out = change(&mut detector);
        self.attacks
            .store(detector.attacks_possible(), Ordering::Release);
        out
    }

    /// See [`FloodDetector::tracked`].
    pub fn tracked(&self) -> usize {
        self.lock().tracked()
    }

    /// See [`FloodDetector::capacity`].
    pub fn capacity(&self) -> usize {
        self.lock().capacity()
    }

    /// See [`FloodDetector::evicted`].
    pub fn evicted(&self) -> u64 {
        self.lock().evicted()
    }

    fn lock(&self) -> MutexGuard<'_, FloodDetector> {
        // The detector holds only counts: after a panic inside it (a bug), screening calls
        // with possibly wrong counts beats failing every later call.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
