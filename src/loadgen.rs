//! `callguard loadgen`: plays Asterisk against a running FastAGI server, one new TCP
//! connection per call as Asterisk does, with caller IDs in mixed formats and a chosen share
//! of numbers it has blocked itself; checks every verdict and reports throughput and latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::rules::{Entry, ListKind, RulePattern};
use crate::store::{Store, StoreError};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// The FastAGI server.
    pub agi: SocketAddr,
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
    /// Verdicts that differ from the list the generator wrote.
    pub wrong: u64,
    /// Calls without a verdict (connection errors, timeouts, garbage).
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Sorted end-to-end latencies (connect to close), in microseconds.
    pub latencies_us: Vec<u64>,
}

impl LoadReport {
    /// The latency at quantile `q` (0-1), in microseconds.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        self.latencies_us[i.min(self.latencies_us.len() - 1)]
    }

    /// Human-readable summary.
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "calls {} in {:.2}s = {:.0} calls/s\nlatency us: p50 {} p99 {} p99.9 {} max {}\nverdicts: block {} allow {}\nwrong verdicts {} errors {}",
            self.calls,
            secs,
            self.calls as f64 / secs,
            self.quantile(0.5),
            self.quantile(0.99),
            self.quantile(0.999),
            self.latencies_us.last().copied().unwrap_or(0),
            self.blocked,
            self.allowed,
            self.wrong,
            self.errors
        )
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

/// Places one call; `Some(true)` for block, `Some(false)` for allow, `None` on any error.
pub(crate) async fn one_call(agi: SocketAddr, caller_id: &str) -> Option<bool> {
    let mut stream = TcpStream::connect(agi).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let env = format!(
        "agi_network: yes\nagi_network_script: check\nagi_request: agi://{agi}/check\n\
         agi_channel: PJSIP/pstn-00000006\nagi_language: en\nagi_type: PJSIP\n\
         agi_uniqueid: 1795873601.36\nagi_version: 22.10.1\nagi_callerid: {caller_id}\n\
         agi_calleridname: unknown\nagi_callingpres: 0\nagi_callingani2: 0\n\
         agi_callington: 0\nagi_callingtns: 0\nagi_dnid: 4951234567\nagi_rdnis: unknown\n\
         agi_context: from-pstn\nagi_extension: 4951234567\nagi_priority: 2\n\
         agi_enhanced: 0.0\nagi_accountcode: \nagi_threadid: 139764346042048\n\n"
    );
    stream.write_all(env.as_bytes()).await.ok()?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut verdict = None;
    while let Some(line) = lines.next_line().await.ok()? {
        // Replies as Asterisk 22 sends them (see tests/fixtures/asterisk).
        let reply: &[u8] = if line.starts_with("SET VARIABLE CALLGUARD_VERDICT ") {
            verdict = Some(line.ends_with("\"block\""));
            b"200 result=1\n"
        } else if line.starts_with("SET VARIABLE ") {
            b"200 result=1\n"
        } else if line.starts_with("EXEC Hangup") {
            b"200 result=-1\nHANGUP\n"
        } else if line.starts_with("EXEC ") || line.starts_with("SET ") {
            b"200 result=0\n"
        } else {
            b"510 Invalid or unknown command\n"
        };
        if write.write_all(reply).await.is_err() {
            break;
        }
    }
    verdict
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
                let blocked = ((i + 1) as f64 * share).floor() > (i as f64 * share).floor();
                let pick = if blocked {
                    i % s.blocked_numbers.max(1)
                } else {
                    i
                };
                let caller = delivered(national(pick, blocked && s.blocked_numbers > 0), i);
                let expect_block = blocked && s.blocked_numbers > 0;
                let t = Instant::now();
                let outcome = timeout(Duration::from_secs(5), one_call(s.agi, &caller))
                    .await
                    .ok()
                    .flatten();
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                report.calls += 1;
                match outcome {
                    Some(got) => {
                        report.latencies_us.push(us);
                        if got {
                            report.blocked += 1;
                        } else {
                            report.allowed += 1;
                        }
                        if got != expect_block {
                            report.wrong += 1;
                        }
                    }
                    None => report.errors += 1,
                }
            }
        }));
    }
    let mut total = LoadReport::default();
    for w in workers {
        match w.await {
            Ok(r) => {
                total.calls += r.calls;
                total.blocked += r.blocked;
                total.allowed += r.allowed;
                total.wrong += r.wrong;
                total.errors += r.errors;
                total.latencies_us.extend(r.latencies_us);
            }
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
}
