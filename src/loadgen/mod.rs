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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::time::timeout;

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
    /// Calls to place.
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
    /// Calls without a verdict (connection errors, timeouts, garbage).
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Sorted end-to-end latencies (connect to close), in microseconds.
    pub latencies_us: Vec<u64>,
    /// True for count-only runs.
    pub count_only: bool,
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
        format!(
            "calls {} in {:.2}s = {:.0} calls/s\nlatency us: p50 {} p99 {} p99.9 {} max {}\n{verdicts}\nwrong verdicts {} errors {}",
            self.calls,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.quantile(0.5),
            self.quantile(0.99),
            self.quantile(0.999),
            self.latencies_us.last().copied().unwrap_or(0),
            self.wrong,
            self.errors
        )
    }

    fn merge(&mut self, other: LoadReport) {
        self.calls += other.calls;
        self.blocked += other.blocked;
        self.allowed += other.allowed;
        self.answered += other.answered;
        self.wrong += other.wrong;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
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
async fn one_call(target: Target, caller_id: &str, call: u64, count_only: bool) -> Option<Outcome> {
    match target {
        Target::Agi(addr) => agi::call(addr, caller_id, count_only).await,
        Target::Esl(addr) => esl::call(addr, caller_id, call, count_only).await,
    }
}

/// Runs the load and checks every verdict.
pub async fn run(settings: &LoadSettings) -> LoadReport {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..settings.concurrency.max(1) {
        let next = next.clone();
        let s = settings.clone();
        workers.push(tokio::spawn(async move {
            let mut report = LoadReport::default();
            let blocked_numbers = if s.count_only { 0 } else { s.blocked_numbers };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= s.calls {
                    return report;
                }
                if let Some(rate) = s.rate.filter(|r| *r > 0.0) {
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                // Spread blocked calls evenly: call i is blocked when the running share says so.
                let share = s.blocked_share.clamp(0.0, 1.0);
                let blocked = blocked_numbers > 0
                    && ((i + 1) as f64 * share).floor() > (i as f64 * share).floor();
                let pick = if blocked { i % blocked_numbers } else { i };
                let caller = delivered(national(pick, blocked), i);
                let t = Instant::now();
                let outcome = timeout(CALL_TIMEOUT, one_call(s.target, &caller, i, s.count_only))
                    .await
                    .ok()
                    .flatten();
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                report.calls += 1;
                let Some(outcome) = outcome else {
                    report.errors += 1;
                    continue;
                };
                report.latencies_us.push(us);
                match outcome {
                    Outcome::Block => report.blocked += 1,
                    Outcome::Allow => report.allowed += 1,
                    Outcome::Other => {}
                    Outcome::Answered => report.answered += 1,
                }
                let right = match outcome {
                    Outcome::Answered => s.count_only,
                    Outcome::Block => blocked,
                    Outcome::Allow => !blocked,
                    Outcome::Other => false,
                };
                if !right {
                    report.wrong += 1;
                }
            }
        }));
    }
    let mut total = LoadReport {
        count_only: settings.count_only,
        ..LoadReport::default()
    };
    for w in workers {
        match w.await {
            Ok(r) => total.merge(r),
            Err(_) => total.errors += 1,
        }
    }
    total.elapsed = started.elapsed();
    total.latencies_us.sort_unstable();
    total
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
}
