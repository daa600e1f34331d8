//! The call log: one record per screened call (blocked and tagged calls by default, every call
//! optionally), written off the decision path by a background task to Redis (a capped stream)
//! or to a rotating local file next to the embedded store; read back by `callguard log`.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::call::{CallEvent, Decision, Verdict};
use crate::store::{Store, StoreError, format_time, parse_time};

/// Records waiting for the writer; when full, new records are dropped (and counted), never
/// delaying a call.
const QUEUE: usize = 10_000;
/// Records written per batch.
const BATCH: usize = 256;
/// Records kept while the store is away (a few hundred bytes each); older ones go first.
const MAX_PENDING: usize = 100_000;
/// First and longest wait between write attempts while the store is away.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Longest raw caller ID kept (it is caller-controlled).
const MAX_RAW: usize = 128;

/// One screened call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// When it was decided (RFC 3339, UTC).
    pub at: String,
    /// `agi`, `esl` or `cli`.
    pub protocol: String,
    /// Canonical caller number.
    pub number: String,
    /// Caller ID as delivered (control characters removed, at most 128 bytes).
    pub raw: String,
    /// Called number as delivered, if known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub did: String,
    /// Tenant, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// `block`, `allow` or `tag`.
    pub verdict: String,
    /// Canonical text of the deciding rule, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,
    /// Action carried out, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
    /// Reason text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

fn clean(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

impl CallRecord {
    /// The record of one decision.
    pub fn of(call: &CallEvent, decision: &Decision, at: SystemTime) -> CallRecord {
        CallRecord {
            at: format_time(at),
            protocol: call.protocol.map_or("-", |p| p.as_str()).to_owned(),
            number: decision.number.to_string(),
            raw: clean(&call.caller_id, MAX_RAW),
            did: call
                .called
                .as_deref()
                .map(|d| clean(d, MAX_RAW))
                .unwrap_or_default(),
            tenant: decision
                .tenant
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            verdict: decision.verdict.as_str().to_owned(),
            rule: decision.rule.clone(),
            action: decision
                .action
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            reason: clean(&decision.reason, 512),
        }
    }

    /// The time of the record, if it parses.
    pub fn time(&self) -> Option<SystemTime> {
        parse_time(&self.at)
    }

    /// One line for `callguard log`: time, verdict, number, raw, DID, tenant, rule, action, reason.
    pub fn line(&self) -> String {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_owned()
            } else {
                s.to_owned()
            }
        };
        format!(
            "{}\t{}\t{}\t{:?}\t{}\t{}\t{}\t{}\t{}",
            self.at,
            self.verdict,
            self.number,
            self.raw,
            dash(&self.did),
            dash(&self.tenant),
            dash(&self.rule),
            dash(&self.action),
            self.reason
        )
    }
}

/// Call log settings.
#[derive(Debug, Clone)]
pub struct CallLogSettings {
    /// Record allowed calls too (default: only blocked and tagged ones).
    pub all_calls: bool,
    /// Redis: the stream keeps about this many records (`XADD MAXLEN ~`).
    pub max_entries: u64,
    /// Local: the file rotates at this size, keeping `keep_files` old files.
    pub max_file_bytes: u64,
    /// Local: rotated files kept (`calls.log.1` ...).
    pub keep_files: u32,
}

/// Handle the engine records through. Cheap to clone; never blocks.
#[derive(Clone, Debug)]
pub struct CallLog {
    tx: mpsc::Sender<CallRecord>,
    all_calls: bool,
}

impl CallLog {
    /// Queues the record of a decision; allowed calls only with `all_calls`. Returns false when
    /// the queue is full and the record was dropped.
    pub fn record(&self, call: &CallEvent, decision: &Decision) -> bool {
        if decision.verdict == Verdict::Allow && !self.all_calls {
            return true;
        }
        self.tx
            .try_send(CallRecord::of(call, decision, SystemTime::now()))
            .is_ok()
    }
}

/// Where records go.
#[derive(Clone)]
pub enum Sink {
    /// The Redis stream `<prefix>:calls`.
    Redis(Store),
    /// A rotating JSON-lines file.
    File(PathBuf),
}

/// The local log file for an embedded store at `store_path`: `calls.log` in the same directory.
pub fn file_for_store(store_path: &Path) -> PathBuf {
    store_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("calls.log"), |d| d.join("calls.log"))
}

/// Starts the writer task; returns the handle to record through.
pub fn start(sink: Sink, settings: CallLogSettings, shutdown: CancellationToken) -> CallLog {
    let (tx, rx) = mpsc::channel(QUEUE);
    let all_calls = settings.all_calls;
    tokio::spawn(writer(rx, sink, settings, shutdown));
    CallLog { tx, all_calls }
}

async fn writer(
    mut rx: mpsc::Receiver<CallRecord>,
    sink: Sink,
    settings: CallLogSettings,
    shutdown: CancellationToken,
) {
    // Records taken from the queue and not yet written: kept across a store outage (a Redis
    // restart, a full disk) and written once the store is back, up to MAX_PENDING.
    let mut pending: Vec<CallRecord> = Vec::with_capacity(BATCH);
    let mut backoff = RETRY_MIN;
    let mut failing = false;
    loop {
        if pending.is_empty() {
            tokio::select! {
                _ = rx.recv_many(&mut pending, BATCH) => {}
                () = shutdown.cancelled() => {
                    while let Ok(r) = rx.try_recv() {
                        pending.push(r);
                    }
                }
            }
            if pending.is_empty() {
                // The queue closed, or shutdown with nothing left.
                return;
            }
        }
        let take = pending.len().min(BATCH);
        match write_batch(&sink, &pending[..take], &settings).await {
            Ok(()) => {
                pending.drain(..take);
                if failing {
                    info!(pending = pending.len(), "call log: writing again");
                    failing = false;
                }
                backoff = RETRY_MIN;
            }
            Err(error) => {
                if shutdown.is_cancelled() {
                    warn!(%error, dropped = pending.len(), "call log: stopping with records not written");
                    return;
                }
                if !failing {
                    warn!(%error, pending = pending.len(), "call log: write failed; keeping the records, retrying");
                    failing = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => {}
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
        // Take what queued up meanwhile (never waiting), so the bounded queue keeps room for
        // new calls while the store is away; past MAX_PENDING the oldest records go.
        while let Ok(r) = rx.try_recv() {
            pending.push(r);
        }
        if pending.len() > MAX_PENDING {
            let over = pending.len() - MAX_PENDING;
            pending.drain(..over);
            warn!(
                dropped = over,
                "call log: store away too long; oldest records dropped"
            );
        }
    }
}

/// Writes one batch to the sink.
async fn write_batch(
    sink: &Sink,
    records: &[CallRecord],
    settings: &CallLogSettings,
) -> Result<(), StoreError> {
    match sink {
        Sink::Redis(Store::Redis(redis)) => redis.append_calls(records, settings.max_entries).await,
        Sink::Redis(Store::Local(_)) => Ok(()),
        Sink::File(path) => {
            let path = path.clone();
            let records = records.to_vec();
            let settings = settings.clone();
            match tokio::task::spawn_blocking(move || append_file(&path, &records, &settings)).await
            {
                Ok(r) => r,
                Err(e) => Err(StoreError::Io {
                    path: PathBuf::from("calls.log"),
                    source: std::io::Error::other(e.to_string()),
                }),
            }
        }
    }
}

/// Appends records as JSON lines, rotating `calls.log` -> `calls.log.1` -> ... first when the
/// file has reached `max_file_bytes`.
pub fn append_file(
    path: &Path,
    records: &[CallRecord],
    settings: &CallLogSettings,
) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size >= settings.max_file_bytes {
        for i in (1..settings.keep_files.max(1)).rev() {
            let from = rotated(path, i);
            if from.exists() {
                fs::rename(&from, rotated(path, i + 1)).map_err(io)?;
            }
        }
        if settings.keep_files == 0 {
            fs::remove_file(path).map_err(io)?;
        } else {
            fs::rename(path, rotated(path, 1)).map_err(io)?;
        }
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    let mut text = String::new();
    for r in records {
        if let Ok(line) = serde_json::to_string(r) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    file.write_all(text.as_bytes()).map_err(io)
}

fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{i}"));
    PathBuf::from(name)
}

/// Records from the local files (oldest first) at or after `since`.
pub fn read_file(path: &Path, since: SystemTime, keep_files: u32) -> Vec<CallRecord> {
    let mut files: Vec<PathBuf> = (1..=keep_files.max(1))
        .rev()
        .map(|i| rotated(path, i))
        .collect();
    files.push(path.to_owned());
    let mut out = Vec::new();
    for file in files {
        let Ok(f) = File::open(&file) else { continue };
        for line in BufReader::new(f).lines().map_while(Result::ok) {
            if let Ok(r) = serde_json::from_str::<CallRecord>(&line)
                && r.time().is_some_and(|t| t >= since)
            {
                out.push(r);
            }
        }
    }
    out
}

/// `since` for a `--since` duration before now.
pub fn since(ago: Duration) -> SystemTime {
    SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at: SystemTime, number: &str) -> CallRecord {
        CallRecord {
            at: format_time(at),
            protocol: "agi".into(),
            number: number.into(),
            raw: "8 (495) 123\n45-67".into(),
            did: String::new(),
            tenant: String::new(),
            verdict: "block".into(),
            rule: "+7495*".into(),
            action: "hangup 21".into(),
            reason: "r".into(),
        }
    }

    #[test]
    fn files_rotate_and_read_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("calls.log");
        let settings = CallLogSettings {
            all_calls: false,
            max_entries: 10,
            max_file_bytes: 300,
            keep_files: 2,
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for i in 0..10u64 {
            let r = record(t0 + Duration::from_secs(i), &format!("+7495000000{i}"));
            append_file(&path, &[r], &settings).expect("append");
        }
        assert!(path.exists() && rotated(&path, 1).exists() && rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists(), "only keep_files old files");
        let all = read_file(&path, SystemTime::UNIX_EPOCH, 2);
        assert!(
            !all.is_empty() && all.len() < 10,
            "oldest rotated away: {}",
            all.len()
        );
        let times: Vec<_> = all.iter().filter_map(CallRecord::time).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first");
        assert_eq!(all.last().map(|r| r.number.as_str()), Some("+74950000009"));
        let recent = read_file(&path, t0 + Duration::from_secs(9), 2);
        assert_eq!(recent.len(), 1);
        // A caller-controlled raw caller ID cannot break the line format.
        let r = CallRecord::of(
            &CallEvent {
                caller_id: "x\n\ty".repeat(100),
                ..CallEvent::default()
            },
            &crate::call::Decision {
                verdict: Verdict::Block,
                action: None,
                number: crate::number::CallerNumber::Anonymous,
                reason: "a\nb".into(),
                rule: String::new(),
                matched: None,
                reason_kind: "none",
                tenant: None,
            },
            t0,
        );
        assert!(!r.line().contains('\n') && r.raw.len() <= MAX_RAW);
    }
}
