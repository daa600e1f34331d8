//! `callguard edit-latency`: how long an edit takes to reach a running server's decisions.
//! Each round blocks a fresh number, alternately the way `callguard block` does and the way an
//! admin does with `redis-cli SET` (hand-typed format, no announcement), then places FastAGI
//! calls from it in another format until one is blocked. The time from just before the write
//! to that verdict is the edit's latency, end to end.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::loadgen::{Outcome, agi, quantile};
use crate::number::Normalizer;
use crate::rules::{Entry, ListKind, RulePattern};
use crate::store::{Store, StoreError};

/// What happened.
#[derive(Debug, Default)]
pub struct EditReport {
    /// Sorted latencies of edits made with the CLI's write path, in microseconds.
    pub cli_us: Vec<u64>,
    /// Sorted latencies of edits made as a plain `SET` (Redis only), in microseconds.
    pub redis_set_us: Vec<u64>,
    /// Edits never seen within the timeout.
    pub lost: u64,
}

impl EditReport {
    /// Human-readable summary.
    pub fn summary(&self) -> String {
        let line = |name: &str, v: &[u64]| {
            format!(
                "{name}: {} edits, visible after p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
                v.len(),
                quantile(v, 0.5) as f64 / 1000.0,
                quantile(v, 0.99) as f64 / 1000.0,
                v.last().copied().unwrap_or(0) as f64 / 1000.0
            )
        };
        let mut all: Vec<u64> = self
            .cli_us
            .iter()
            .chain(&self.redis_set_us)
            .copied()
            .collect();
        all.sort_unstable();
        format!(
            "{}\n{}\n{}\nnot seen within the timeout: {}",
            line("callguard block", &self.cli_us),
            line("redis-cli SET", &self.redis_set_us),
            line("all", &all),
            self.lost
        )
    }
}

/// Runs `edits` rounds against the server at `agi` whose store is `store`.
pub async fn run(
    store: &Store,
    agi: SocketAddr,
    edits: u64,
    timeout: Duration,
) -> Result<EditReport, StoreError> {
    let normalizer = Normalizer::default();
    let mut report = EditReport::default();
    // Numbers far from any the load generator or the scale fill use: +7 3xx.
    // A different stretch each run, so a rerun against the same store measures fresh edits.
    let run_offset = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() % 1000);
    let base = 3_000_000_000u64 + run_offset * 100_000;
    let mut redis_conn = match store {
        Store::Redis(r) => Some((r.command_conn().await?, r.as_ref().clone())),
        Store::Local(_) => None,
    };
    for i in 0..edits {
        let national = base + i;
        let digits = national.to_string();
        let via_set = i % 2 == 1 && redis_conn.is_some();
        let started = Instant::now();
        if let (true, Some((conn, redis))) = (via_set, redis_conn.as_mut()) {
            let hand_typed = format!(
                "8 ({}) {}-{}-{}",
                &digits[..3],
                &digits[3..6],
                &digits[6..8],
                &digits[8..]
            );
            let key = redis.key(None, ListKind::Block, &hand_typed);
            let () = redis::cmd("SET")
                .arg(key)
                .arg("edit-latency")
                .query_async(conn)
                .await?;
        } else {
            let pattern = RulePattern::parse(&format!("+7{digits}"), &normalizer).map_err(|e| {
                StoreError::BadFile {
                    path: "edit-latency".into(),
                    message: e.to_string(),
                }
            })?;
            let mut entry = Entry::new(ListKind::Block, pattern);
            entry.reason = "edit-latency".into();
            store.put(std::slice::from_ref(&entry)).await?;
        }
        let caller = format!("7{digits}");
        let seen = loop {
            if agi::call(agi, &caller, false).await == Some(Outcome::Block) {
                break Some(started.elapsed());
            }
            if started.elapsed() > timeout {
                break None;
            }
        };
        match seen {
            Some(d) => {
                let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
                if via_set {
                    report.redis_set_us.push(us);
                } else {
                    report.cli_us.push(us);
                }
            }
            None => report.lost += 1,
        }
    }
    report.cli_us.sort_unstable();
    report.redis_set_us.sort_unstable();
    Ok(report)
}
