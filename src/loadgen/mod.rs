//! `callguard loadgen`: plays Asterisk (FastAGI, [`agi`]) or FreeSWITCH (outbound Event Socket,
//! [`esl`]) against a running server, one new TCP connection per call as the PBXs do, with
//! caller IDs in mixed formats and a chosen share of numbers it has blocked itself; checks every
//! verdict and reports throughput and latency. [`baseline`] is the bare server the issue compares
//! callguard with; against it the generator only counts replies ([`LoadSettings::count_only`]).
//! [`scrape`] reads the server's own decision-time histogram before and after a run.

pub mod agi;
pub mod baseline;
pub mod esl;
pub mod scrape;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::time::{MissedTickBehavior, timeout};

use crate::rules::{Entry, ListKind, RulePattern};
use crate::store::{Store, StoreError};

/// Longest one call may take before it counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Which PBX the generator plays, and where the server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Asterisk: FastAGI to this address.
    Agi(SocketAddr),
    /// FreeSWITCH's `socket` application (outbound mode) to this address.
    Esl(SocketAddr),
}

impl Target {
    /// `agi` or `esl`.
    pub fn protocol(&self) -> &'static str {
        match self {
            Target::Agi(_) => "agi",
            Target::Esl(_) => "esl",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// The server and its protocol.
    pub target: Target,
    /// Calls to place (at most; see `duration`).
    pub calls: u64,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Calls per second overall; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Share of calls from numbers the generator blocked (0.0-1.0).
    pub blocked_share: f64,
    /// Distinct blocked numbers written to the store.
    pub blocked_numbers: u64,
    /// Only count calls the server answered (any command after the call data), without
    /// reading verdicts: for servers that do not decide, such as [`baseline`].
    pub count_only: bool,
    /// Place no call due after this long from the start (a soak run); `None`: only `calls`.
    pub duration: Option<Duration>,
    /// Instead of generated numbers, one call from each of these callers, each checked
    /// against the verdict it must get (`calls` is then their number).
    pub expected: Option<Arc<[Expected]>>,
}

/// A caller and the verdict it must get ([`LoadSettings::expected`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Caller ID as delivered, any format.
    pub caller: String,
    /// `true`: must be blocked; `false`: must be allowed.
    pub block: bool,
}

/// A line of an expectations file that is not `NUMBER block|allow`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[error("expectations line {line}: {text:?} is not `NUMBER block|allow`")]
pub struct ExpectError {
    /// 1-based line number.
    pub line: usize,
    /// The line.
    pub text: String,
}

/// Reads expectations, one `NUMBER block|allow` a line (the number may contain spaces: the
/// last word is the verdict); empty lines and `#` comments are skipped.
pub fn parse_expected(text: &str) -> Result<Vec<Expected>, ExpectError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            let bad = || ExpectError {
                line: i + 1,
                text: l.to_owned(),
            };
            let (caller, verdict) = l.trim().rsplit_once(char::is_whitespace).ok_or_else(bad)?;
            let block = match verdict {
                "block" => true,
                "allow" => false,
                _ => return Err(bad()),
            };
            Ok(Expected {
                caller: caller.trim().to_owned(),
                block,
            })
        })
        .collect()
}

/// What the server did to one call, as the generator saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `CALLGUARD_VERDICT` was `block`.
    Block,
    /// `CALLGUARD_VERDICT` was `allow`.
    Allow,
    /// Some other verdict (`tag`), or none although the server answered.
    Other,
    /// The server sent at least one command (count-only runs).
    Answered,
}

/// Why a call got no outcome (besides timing out, which the run measures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection: refused, or the socket could not be set up.
    Connect,
    /// Connected, but the session ended (closed, reset, garbage) before any verdict
    /// (count-only: before any command).
    NoVerdict,
}

/// Most mismatches a report lists (they are all counted).
const MAX_MISMATCHES: usize = 100;

/// What happened.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Calls placed.
    pub calls: u64,
    /// Calls answered `block`.
    pub blocked: u64,
    /// Calls answered `allow`.
    pub allowed: u64,
    /// Calls answered without a verdict check (count-only runs).
    pub answered: u64,
    /// Verdicts that differ from the list the generator wrote.
    pub wrong: u64,
    /// Calls whose session ended without a verdict (count-only: without any command).
    pub no_verdict: u64,
    /// Calls not over within [`CALL_TIMEOUT`] (no verdict as far as the PBX is concerned).
    pub timed_out: u64,
    /// Calls that could not connect (and workers that failed).
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Sorted end-to-end latencies (connect to close) of calls with an outcome, in microseconds.
    pub latencies_us: Vec<u64>,
    /// True for count-only runs.
    pub count_only: bool,
    /// The first calls that went wrong: `caller: expected X, got Y`.
    pub mismatches: Vec<String>,
}

/// The value at quantile `q` (0-1) of ascending `sorted`; 0 when empty.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0;
    };
    let i = (last as f64 * q).round() as usize;
    sorted.get(i.min(last)).copied().unwrap_or(0)
}

impl LoadReport {
    /// The latency at quantile `q` (0-1), in microseconds.
    pub fn quantile(&self, q: f64) -> u64 {
        quantile(&self.latencies_us, q)
    }

    /// Calls per second over the run.
    pub fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Calls the PBX got no verdict for: sessions ended without one, and time-outs.
    pub fn without_verdict(&self) -> u64 {
        self.no_verdict + self.timed_out
    }

    /// True when every call got the verdict it should have.
    pub fn clean(&self) -> bool {
        self.wrong == 0 && self.without_verdict() == 0 && self.errors == 0
    }

    /// Human-readable summary.
    pub fn summary(&self) -> String {
        let verdicts = if self.count_only {
            format!(
                "replies: answered {} (count-only: verdicts not checked)",
                self.answered
            )
        } else {
            format!("verdicts: block {} allow {}", self.blocked, self.allowed)
        };
        let mut text = format!(
            "calls {} in {:.2}s = {:.0} calls/s\nlatency us: p50 {} p99 {} p99.9 {} max {}\n{verdicts}\nwrong verdicts {} calls without verdict {} (session ended {}, timed out {}) connect errors {}",
            self.calls,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.quantile(0.5),
            self.quantile(0.99),
            self.quantile(0.999),
            self.latencies_us.last().copied().unwrap_or(0),
            self.wrong,
            self.without_verdict(),
            self.no_verdict,
            self.timed_out,
            self.errors
        );
        for m in &self.mismatches {
            text.push_str("\nmismatch: ");
            text.push_str(m);
        }
        text
    }

    fn merge(&mut self, other: LoadReport) {
        self.calls += other.calls;
        self.blocked += other.blocked;
        self.allowed += other.allowed;
        self.answered += other.answered;
        self.wrong += other.wrong;
        self.no_verdict += other.no_verdict;
        self.timed_out += other.timed_out;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
        let room = MAX_MISMATCHES.saturating_sub(self.mismatches.len());
        self.mismatches
            .extend(other.mismatches.into_iter().take(room));
    }

    /// Counts one call: `expect_block` is what the list says (ignored when count-only).
    fn record(
        &mut self,
        caller: &str,
        expect_block: bool,
        result: Option<Result<Outcome, Failure>>,
        us: u64,
    ) {
        self.calls += 1;
        let expected = if self.count_only {
            "an answer"
        } else if expect_block {
            "block"
        } else {
            "allow"
        };
        let got = match result {
            None => {
                self.timed_out += 1;
                "a time-out"
            }
            Some(Err(Failure::Connect)) => {
                self.errors += 1;
                "no connection"
            }
            Some(Err(Failure::NoVerdict)) => {
                self.no_verdict += 1;
                "no verdict"
            }
            Some(Ok(outcome)) => {
                self.latencies_us.push(us);
                match outcome {
                    Outcome::Block => self.blocked += 1,
                    Outcome::Allow => self.allowed += 1,
                    Outcome::Other => {}
                    Outcome::Answered => self.answered += 1,
                }
                let right = match outcome {
                    Outcome::Answered => self.count_only,
                    Outcome::Block => expect_block && !self.count_only,
                    Outcome::Allow => !expect_block && !self.count_only,
                    Outcome::Other => false,
                };
                if right {
                    return;
                }
                self.wrong += 1;
                match outcome {
                    Outcome::Block => "block",
                    Outcome::Allow => "allow",
                    Outcome::Other => "another verdict",
                    Outcome::Answered => "an answer",
                }
            }
        };
        if self.mismatches.len() < MAX_MISMATCHES {
            self.mismatches
                .push(format!("{caller}: expected {expected}, got {got}"));
        }
    }
}

/// The calls that ended in one stretch of a run ([`run_reporting`]).
#[derive(Debug)]
pub struct Interval {
    /// Time from the start of the run to the end of the stretch.
    pub at: Duration,
    /// Its calls (`elapsed` is the stretch's length, latencies sorted).
    pub report: LoadReport,
    /// The server's verdict-time histogram over the stretch (when its /metrics was given and
    /// could be read).
    pub server: Option<scrape::Buckets>,
}

impl Interval {
    /// One line of `key=value` fields, for people and scripts alike.
    pub fn line(&self) -> String {
        let r = &self.report;
        let server = match self.server.as_ref().and_then(|b| b.quantile(0.99)) {
            None => "-".to_owned(),
            Some(s) if s.is_infinite() => "inf".to_owned(),
            Some(s) => format!("{:.0}", s * 1e6),
        };
        format!(
            "interval at={:.1}s calls={} calls/s={:.1} p50_us={} p99_us={} p99.9_us={} max_us={} block={} allow={} answered={} wrong={} no_verdict={} timed_out={} connect_errors={} server_p99_le_us={server}",
            self.at.as_secs_f64(),
            r.calls,
            r.rate(),
            r.quantile(0.5),
            r.quantile(0.99),
            r.quantile(0.999),
            r.latencies_us.last().copied().unwrap_or(0),
            r.blocked,
            r.allowed,
            r.answered,
            r.wrong,
            r.no_verdict,
            r.timed_out,
            r.errors,
        )
    }
}

/// Calls a run places when neither a number of calls nor a duration is given.
pub const DEFAULT_CALLS: u64 = 10_000;

/// How many calls a run may place: `calls` when given, else no limit but `duration`'s, else
/// [`DEFAULT_CALLS`].
pub fn call_budget(calls: Option<u64>, duration: Option<Duration>) -> u64 {
    match (calls, duration) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX,
        (None, None) => DEFAULT_CALLS,
    }
}

/// The `i`-th generated national number (10 digits, Moscow mobile-like `9xx`), deterministic.
fn national(i: u64, blocked: bool) -> u64 {
    // Blocked and allowed numbers come from disjoint halves of the space.
    let base = if blocked {
        9_000_000_000
    } else {
        9_500_000_000
    };
    base + (i.wrapping_mul(2_654_435_761) % 500_000_000)
}

/// One of the formats carriers deliver, chosen by `i`.
fn delivered(national: u64, i: u64) -> String {
    let d = national.to_string();
    match i % 6 {
        0 => format!("+7{d}"),
        1 => format!("8{d}"),
        2 => format!("7{d}"),
        3 => d,
        4 => format!("+7 ({}) {}-{}-{}", &d[..3], &d[3..6], &d[6..8], &d[8..]),
        _ => format!("sip:+7{d}@203.0.113.5;user=phone"),
    }
}

/// Writes the block list the run checks against.
pub async fn prepare(store: &Store, settings: &LoadSettings) -> Result<(), StoreError> {
    let normalizer = crate::number::Normalizer::default();
    let now = SystemTime::now();
    let entries: Vec<Entry> = (0..settings.blocked_numbers)
        .filter_map(|i| {
            let pattern =
                RulePattern::parse(&format!("+7{}", national(i, true)), &normalizer).ok()?;
            let mut e = Entry::new(ListKind::Block, pattern);
            e.reason = "loadgen".into();
            e.added_at = Some(now);
            Some(e)
        })
        .collect();
    for chunk in entries.chunks(1000) {
        store.put(chunk).await?;
    }
    Ok(())
}

/// Places one call of the target's protocol.
async fn one_call(
    target: Target,
    caller_id: &str,
    call: u64,
    count_only: bool,
) -> Result<Outcome, Failure> {
    match target {
        Target::Agi(addr) => agi::place(addr, caller_id, count_only).await,
        Target::Esl(addr) => esl::call(addr, caller_id, call, count_only).await,
    }
}

/// Runs the load and checks every verdict.
pub async fn run(settings: &LoadSettings) -> LoadReport {
    run_reporting(settings, None, None, |_| {}).await
}

/// The caller of call `i` and whether it must be blocked; `None` past the end of the list.
fn caller_of(s: &LoadSettings, i: u64) -> Option<(String, bool)> {
    if let Some(list) = &s.expected {
        let e = list.get(usize::try_from(i).ok()?)?;
        return Some((e.caller.clone(), e.block));
    }
    let blocked_numbers = if s.count_only { 0 } else { s.blocked_numbers };
    // Spread blocked calls evenly: call i is blocked when the running share says so.
    let share = s.blocked_share.clamp(0.0, 1.0);
    let blocked =
        blocked_numbers > 0 && ((i + 1) as f64 * share).floor() > (i as f64 * share).floor();
    let pick = if blocked { i % blocked_numbers } else { i };
    Some((delivered(national(pick, blocked), i), blocked))
}

/// Runs the load like [`run`]; with `every`, hands each stretch of that length to
/// `on_interval` as it ends (and the rest at the end), with the server's own verdict times
/// when `metrics` (its /metrics address) is given.
pub async fn run_reporting(
    settings: &LoadSettings,
    every: Option<Duration>,
    metrics: Option<SocketAddr>,
    mut on_interval: impl FnMut(Interval),
) -> LoadReport {
    // A zero period would make the interval timer panic: no intervals then.
    let every = every.filter(|d| !d.is_zero());
    // Read before the first call, so the first stretch's server figures hold all its calls.
    let mut before = match every {
        Some(_) => scrape_buckets(metrics, settings.target).await,
        None => None,
    };
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let fresh = || LoadReport {
        count_only: settings.count_only,
        ..LoadReport::default()
    };
    // The current stretch: every worker adds each call's result. A std mutex: held for a few
    // pushes, never across an await.
    let window = every.map(|_| Arc::new(Mutex::new(fresh())));
    let calls = match &settings.expected {
        Some(list) => u64::try_from(list.len()).unwrap_or(u64::MAX),
        None => settings.calls,
    };
    let stop_at = settings.duration.map(|d| started + d);
    let mut workers = Vec::new();
    for _ in 0..settings.concurrency.max(1) {
        let next = next.clone();
        let s = settings.clone();
        let window = window.clone();
        let mut report = fresh();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    return report;
                }
                let due = match s.rate.filter(|r| *r > 0.0) {
                    Some(rate) => started + Duration::from_secs_f64(i as f64 / rate),
                    None => Instant::now(),
                };
                if stop_at.is_some_and(|end| due >= end) {
                    return report;
                }
                tokio::time::sleep_until(due.into()).await;
                let Some((caller, blocked)) = caller_of(&s, i) else {
                    return report;
                };
                let t = Instant::now();
                let result = timeout(CALL_TIMEOUT, one_call(s.target, &caller, i, s.count_only))
                    .await
                    .ok();
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                report.record(&caller, blocked, result, us);
                if let Some(w) = &window {
                    // A poisoned window only loses the interval lines, never the totals.
                    if let Ok(mut w) = w.lock() {
                        w.record(&caller, blocked, result, us);
                    }
                }
            }
        }));
    }
    let mut all = std::pin::pin!(futures_util::future::join_all(workers));
    let mut total = fresh();
    let joined = match (every, &window) {
        (Some(every), Some(window)) => {
            let mut tick = tokio::time::interval_at((started + every).into(), every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut last = started;
            let mut flush = |before: &mut Option<scrape::Buckets>,
                             after: Option<scrape::Buckets>,
                             at: Instant| {
                let taken = window
                    .lock()
                    .map(|mut w| std::mem::replace(&mut *w, fresh()));
                let Ok(mut report) = taken else {
                    return;
                };
                let server = match (before.as_ref(), &after) {
                    (Some(b), Some(a)) => Some(a.since(b)),
                    _ => None,
                };
                *before = after;
                report.elapsed = at.saturating_duration_since(last);
                report.latencies_us.sort_unstable();
                last = at;
                on_interval(Interval {
                    at: at.saturating_duration_since(started),
                    report,
                    server,
                });
            };
            loop {
                tokio::select! {
                    joined = &mut all => {
                        let after = scrape_buckets(metrics, settings.target).await;
                        if window.lock().is_ok_and(|w| w.calls > 0) {
                            flush(&mut before, after, Instant::now());
                        }
                        break joined;
                    }
                    _ = tick.tick() => {
                        let at = Instant::now();
                        let after = scrape_buckets(metrics, settings.target).await;
                        flush(&mut before, after, at);
                    }
                }
            }
        }
        _ => all.await,
    };
    for w in joined {
        match w {
            Ok(r) => total.merge(r),
            Err(_) => total.errors += 1,
        }
    }
    total.elapsed = started.elapsed();
    total.latencies_us.sort_unstable();
    total
}

/// The server's verdict-time histogram for the target's protocol; `None` without an address
/// or when /metrics cannot be read (an interval then goes without it).
async fn scrape_buckets(metrics: Option<SocketAddr>, target: Target) -> Option<scrape::Buckets> {
    let body = scrape::fetch(metrics?).await.ok()?;
    Some(scrape::Buckets::parse(&body, target.protocol()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::number::Normalizer;

    #[test]
    fn every_format_normalizes_to_the_same_number() {
        let n = Normalizer::default();
        for blocked in [true, false] {
            let d = national(7, blocked);
            let canonical = format!("+7{d}");
            for i in 0..6 {
                assert_eq!(n.normalize(&delivered(d, i)).to_string(), canonical);
            }
        }
        assert_ne!(national(3, true), national(3, false));
    }

    #[test]
    fn quantiles_and_summary() {
        let report = LoadReport {
            calls: 4,
            allowed: 4,
            elapsed: Duration::from_secs(2),
            latencies_us: vec![10, 20, 30, 400],
            ..LoadReport::default()
        };
        assert_eq!(report.quantile(0.5), 30);
        assert_eq!(report.quantile(1.0), 400);
        assert!(
            report.summary().contains("= 2 calls/s"),
            "{}",
            report.summary()
        );
        assert!(report.summary().contains("verdicts: block 0 allow 4"));
        assert_eq!(LoadReport::default().quantile(0.99), 0);
    }

    #[test]
    fn each_kind_of_failure_is_counted_apart() {
        let mut r = LoadReport::default();
        r.record("a", true, Some(Ok(Outcome::Block)), 10);
        r.record("b", false, Some(Ok(Outcome::Block)), 20);
        r.record("c", false, Some(Err(Failure::NoVerdict)), 30);
        r.record("d", true, None, 40);
        r.record("e", true, Some(Err(Failure::Connect)), 50);
        assert_eq!((r.calls, r.blocked, r.wrong), (5, 2, 1));
        assert_eq!((r.no_verdict, r.timed_out, r.errors), (1, 1, 1));
        assert_eq!(r.without_verdict(), 2);
        assert!(!r.clean());
        // Only calls with an outcome have a latency.
        assert_eq!(r.latencies_us, vec![10, 20]);
        assert_eq!(
            r.mismatches,
            vec![
                "b: expected allow, got block",
                "c: expected allow, got no verdict",
                "d: expected block, got a time-out",
                "e: expected block, got no connection",
            ]
        );
        let line = Interval {
            at: Duration::from_millis(60_000),
            report: r,
            server: None,
        }
        .line();
        assert!(line.starts_with("interval at=60.0s calls=5 "), "{line}");
        assert!(
            line.contains("wrong=1 no_verdict=1 timed_out=1 connect_errors=1 server_p99_le_us=-"),
            "{line}"
        );
    }

    #[test]
    fn a_duration_lifts_the_default_number_of_calls() {
        let soak = Some(Duration::from_secs(1800));
        // 30 minutes at 1,000 calls/s must not stop at the default 10,000 calls.
        assert_eq!(call_budget(None, soak), u64::MAX);
        assert_eq!(call_budget(Some(50), soak), 50);
        assert_eq!(call_budget(None, None), DEFAULT_CALLS);
        assert_eq!(call_budget(Some(7), None), 7);
    }

    #[test]
    fn expectations_file() {
        let list = parse_expected("# x\n\n8 (916) 123-45-67 block\n+79161234568\tallow\n")
            .expect("parses");
        assert_eq!(
            list,
            vec![
                Expected {
                    caller: "8 (916) 123-45-67".into(),
                    block: true
                },
                Expected {
                    caller: "+79161234568".into(),
                    block: false
                },
            ]
        );
        let e = parse_expected("+7916 block\n+7916 maybe\n").expect_err("bad verdict");
        assert_eq!(e.line, 2);
        assert!(parse_expected("+79161234567").is_err());
    }
}
