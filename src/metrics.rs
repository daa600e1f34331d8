//! Prometheus metrics: every metric name (described once, in [`describe`]), the latency bucket
//! table, the bounded tenant label set, and the typed helpers the rest of the code calls.
//! Owns no I/O: `crate::http` serves [`PrometheusHandle::render`].
//!
//! Label values are `&'static str` everywhere except `tenant`, which goes through
//! [`TenantLabels`]: so no caller ID (or any other per-call text) can ever become a label,
//! and every label has a small, fixed set of values.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use metrics::{
    Gauge, SharedString, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

pub use metrics_exporter_prometheus::PrometheusHandle;

use crate::number::CallerNumber;
use crate::rules::{ListKind, RulePattern, Snapshot, unix_ms};

/// Calls decided: `{verdict, reason_kind, tenant, protocol}`.
pub const CALLS_TOTAL: &str = "callguard_calls_total";
/// Time `engine.decide` took, in seconds: `{protocol}`.
pub const DECISION_SECONDS: &str = "callguard_decision_seconds";
/// Time from a call's data received (AGI environment block, ESL channel data) to the write of
/// the verdict, in seconds, not counting waits for the PBX's replies in between: `{protocol}`.
pub const VERDICT_SECONDS: &str = "callguard_verdict_seconds";
/// Flood bans currently in force.
pub const ACTIVE_BANS: &str = "callguard_active_bans";
/// Ban requests dropped because the store writer's queue was full.
pub const BAN_REQUESTS_DROPPED_TOTAL: &str = "callguard_ban_requests_dropped_total";
/// Floods detected: `{detector}`.
pub const FLOOD_DETECTIONS_TOTAL: &str = "callguard_flood_detections_total";
/// Targets the target detector currently sees under attack: `{kind}` (`did`, `tenant`).
pub const TARGETS_UNDER_ATTACK: &str = "callguard_targets_under_attack";
/// Live rules in the current snapshot: `{list, kind}`.
pub const RULES: &str = "callguard_rules";
/// Seconds since the snapshot was last known to match the store.
pub const SNAPSHOT_AGE_SECONDS: &str = "callguard_snapshot_age_seconds";
/// Version of the snapshot decisions read.
pub const SNAPSHOT_VERSION: &str = "callguard_snapshot_version";
/// 1 while the store answers, 0 while it does not: `{store}`.
pub const STORE_UP: &str = "callguard_store_up";
/// Store operations that failed: `{kind}`.
pub const STORE_ERRORS_TOTAL: &str = "callguard_store_errors_total";
/// PBX connections that ended in an error: `{protocol, kind}`.
pub const CONNECTION_ERRORS_TOTAL: &str = "callguard_connection_errors_total";
/// PBX sessions open now: `{protocol}`.
pub const SESSIONS_ACTIVE: &str = "callguard_sessions_active";
/// Connections closed at once without a session: `{listener, reason}`.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "callguard_connections_refused_total";
/// Calls decided by the fail policy because no list had been loaded within the decision
/// budget: `{policy}` (`fail_open`, `fail_closed`).
pub const FAIL_POLICY_DECISIONS_TOTAL: &str = "callguard_fail_policy_decisions_total";
/// Configuration reloads (SIGHUP): `{result}` (`ok`, `error`).
pub const CONFIG_RELOADS_TOTAL: &str = "callguard_config_reloads_total";

/// Every metric name the binary exports (histograms by their base name; see [`is_exported`]).
pub const ALL: &[&str] = &[
    CALLS_TOTAL,
    DECISION_SECONDS,
    VERDICT_SECONDS,
    ACTIVE_BANS,
    BAN_REQUESTS_DROPPED_TOTAL,
    FLOOD_DETECTIONS_TOTAL,
    TARGETS_UNDER_ATTACK,
    RULES,
    SNAPSHOT_AGE_SECONDS,
    SNAPSHOT_VERSION,
    STORE_UP,
    STORE_ERRORS_TOTAL,
    CONNECTION_ERRORS_TOTAL,
    SESSIONS_ACTIVE,
    CONNECTIONS_REFUSED_TOTAL,
    FAIL_POLICY_DECISIONS_TOTAL,
    CONFIG_RELOADS_TOTAL,
];

/// The names in [`ALL`] exported as Prometheus histograms (`_bucket`, `_sum`, `_count`).
pub const HISTOGRAMS: &[&str] = &[DECISION_SECONDS, VERDICT_SECONDS];

/// Upper bounds of [`DECISION_SECONDS`] buckets, in seconds: 5 µs to 50 ms. A decision is a
/// trie walk of a few microseconds; anything past a millisecond is a problem worth seeing.
pub const DECISION_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05,
];

/// Upper bounds of [`VERDICT_SECONDS`] buckets, in seconds: fine below 100 µs, where the
/// in-server target (p99 under 50 µs) lies, then coarse up to 100 ms.
pub const VERDICT_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_02, 0.000_03, 0.000_05, 0.000_075, 0.000_1, 0.000_25, 0.000_5,
    0.001, 0.002_5, 0.01, 0.1,
];

/// `tenant` value of calls with no tenant.
pub const TENANT_NONE: &str = "none";
/// `tenant` value of tenants that are unknown or past the cap.
pub const TENANT_OTHER: &str = "other";
/// `reason_kind` value when no rule decided.
pub const REASON_NONE: &str = "none";
/// The `kind` values of [`RULES`], zero-filled on every publish so a kind that disappears
/// drops to 0 instead of keeping its last value.
pub const RULE_KINDS: &[&str] = &["exact", "prefix", "mask", "range", "invalid"];
/// Protocols whose error and session series exist from the start.
pub const PROTOCOLS: &[&str] = &["agi", "esl"];
/// The `detector` values of [`FLOOD_DETECTIONS_TOTAL`] (`crate::flood::Detector::as_str`),
/// created at zero by [`init_series`].
pub const FLOOD_DETECTORS: &[&str] = &["per_caller", "range", "fan_out", "target"];
/// The `kind` values of [`TARGETS_UNDER_ATTACK`] (`crate::flood::TargetKind::as_str`).
pub const TARGET_KINDS: &[&str] = &["did", "tenant"];
/// The `listener` values of [`CONNECTIONS_REFUSED_TOTAL`].
pub const LISTENERS: &[&str] = &["agi", "esl", "metrics", "api"];
/// The `policy` values of [`FAIL_POLICY_DECISIONS_TOTAL`].
pub const FAIL_POLICIES: &[&str] = &["fail_open", "fail_closed"];

/// True when `series` (a name as it appears in the exposition text) is one the binary exports:
/// a name in [`ALL`], or a [`HISTOGRAMS`] name with `_bucket`, `_sum` or `_count`.
pub fn is_exported(series: &str) -> bool {
    ALL.contains(&series)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            series
                .strip_suffix(suffix)
                .is_some_and(|base| HISTOGRAMS.contains(&base))
        })
}

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The exporter refused its configuration (the bucket table).
    #[error("metrics exporter: {0}")]
    Build(#[from] metrics_exporter_prometheus::BuildError),
    /// Something else already installed a global `metrics` recorder in this process.
    #[error("another metrics recorder is already installed")]
    OtherRecorder,
}

/// Why a PBX connection ended badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnErrorKind {
    /// The PBX sent nothing (or no reply) in time.
    Timeout,
    /// The PBX closed the connection mid-session.
    Closed,
    /// Bytes that are not the protocol, or over a size cap.
    Protocol,
    /// Socket error.
    Io,
}

impl ConnErrorKind {
    /// Every kind, for zero-filling.
    pub const ALL: [ConnErrorKind; 4] = [
        ConnErrorKind::Timeout,
        ConnErrorKind::Closed,
        ConnErrorKind::Protocol,
        ConnErrorKind::Io,
    ];

    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnErrorKind::Timeout => "timeout",
            ConnErrorKind::Closed => "closed",
            ConnErrorKind::Protocol => "protocol",
            ConnErrorKind::Io => "io",
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// Redis refused or failed (connection, command error).
    Redis,
    /// No answer within the operation budget.
    Timeout,
    /// The local list file could not be read or written.
    Io,
    /// Stored data that does not parse (a bad list file, a bad key or value).
    BadData,
}

impl StoreErrorKind {
    /// Every kind, for zero-filling.
    pub const ALL: [StoreErrorKind; 4] = [
        StoreErrorKind::Redis,
        StoreErrorKind::Timeout,
        StoreErrorKind::Io,
        StoreErrorKind::BadData,
    ];

    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::Redis => "redis",
            StoreErrorKind::Timeout => "timeout",
            StoreErrorKind::Io => "io",
            StoreErrorKind::BadData => "bad_data",
        }
    }
}

/// The bounded set of tenant names that may appear as the `tenant` label.
///
/// Only *admitted* names appear: the caller admits tenants it knows (the `[dids]` map, tenants
/// that own rules), never names taken from a request, since a PBX can send any `tenant=`.
/// At most `cap` names are ever admitted in this process (default [`Self::DEFAULT_CAP`]) and
/// none is ever removed, so the label never has more than `cap + 2` values and no series
/// churns; every other tenant is counted as [`TENANT_OTHER`], calls without one as
/// [`TENANT_NONE`]. Tenants literally named `none` or `other` are counted as `other`.
///
/// Reads are lock-free (one `ArcSwap` load per call); admissions copy the set.
pub struct TenantLabels {
    cap: AtomicUsize,
    names: ArcSwap<HashSet<Arc<str>>>,
    // Serializes admissions so two concurrent copies cannot lose each other's names; held only
    // for the copy, never across `.await`.
    admit: Mutex<()>,
}

impl TenantLabels {
    /// Default cap on named tenants.
    pub const DEFAULT_CAP: usize = 50;

    /// An empty set that will admit at most `cap` names.
    pub fn new(cap: usize) -> TenantLabels {
        TenantLabels {
            cap: AtomicUsize::new(cap),
            names: ArcSwap::from_pointee(HashSet::new()),
            admit: Mutex::new(()),
        }
    }

    /// Changes the cap. Lowering it below the number already admitted only stops admissions:
    /// names already exported stay, so their series do not vanish mid-graph.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }

    /// Number of admitted names.
    pub fn len(&self) -> usize {
        self.names.load().len()
    }

    /// True when no name is admitted.
    pub fn is_empty(&self) -> bool {
        self.names.load().is_empty()
    }

    /// Admits known tenant names while there is room, in sorted order (so which ones make it
    /// past a full cap does not depend on hash order). Returns how many were new.
    pub fn admit<I>(&self, names: I) -> usize
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let wanted: BTreeSet<String> = names
            .into_iter()
            .map(|n| n.as_ref().to_owned())
            .filter(|n| !n.is_empty() && n != TENANT_NONE && n != TENANT_OTHER)
            .collect();
        let current = self.names.load();
        if wanted.iter().all(|n| current.contains(n.as_str())) {
            return 0;
        }
        let _one_writer = self.admit.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = HashSet::clone(&self.names.load());
        let cap = self.cap();
        let before = next.len();
        for name in wanted {
            if next.len() >= cap {
                break;
            }
            next.insert(Arc::from(name));
        }
        let added = next.len() - before;
        if added > 0 {
            self.names.store(Arc::new(next));
        }
        added
    }

    /// The label value for a call's tenant.
    pub fn label(&self, tenant: Option<&str>) -> SharedString {
        match tenant {
            None => SharedString::const_str(TENANT_NONE),
            Some(name) => match self.names.load().get(name) {
                Some(admitted) => SharedString::from(Arc::clone(admitted)),
                None => SharedString::const_str(TENANT_OTHER),
            },
        }
    }
}

impl Default for TenantLabels {
    fn default() -> Self {
        TenantLabels::new(TenantLabels::DEFAULT_CAP)
    }
}

static TENANTS: LazyLock<TenantLabels> = LazyLock::new(TenantLabels::default);

/// The process's tenant label set, used by [`record_call`]. Set its cap from config and admit
/// known tenants at startup and on every snapshot publish.
pub fn tenants() -> &'static TenantLabels {
    &TENANTS
}

// False until a callguard recorder exists in the process: [`record_call`], the one helper on
// every call, then returns before building labels (about 200 ns of allocation and hashing
// that a no-op recorder would throw away).
static RECORDING: AtomicBool = AtomicBool::new(false);

/// Builds a recorder with the bucket table, not installed: [`install`] installs one; tests use
/// one through `metrics::with_local_recorder`. From then on [`record_call`] records.
pub fn build_recorder() -> Result<PrometheusRecorder, MetricsError> {
    RECORDING.store(true, Ordering::Relaxed);
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DECISION_SECONDS.to_owned()), DECISION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(VERDICT_SECONDS.to_owned()), VERDICT_BUCKETS)?
        .build_recorder())
}

static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the process-wide recorder, describes every metric and creates the series that must
/// exist before their first event. Idempotent: later calls return the same handle. Until it
/// (or [`build_recorder`]) runs, every helper here is a no-op costing a few nanoseconds, which
/// is what tests and the CLI get; with it, [`record_call`] costs about 0.5-0.7 µs (release
/// build, 2-core CI machine: two registry lookups and a label vector).
///
/// The caller must run [`PrometheusHandle::run_upkeep`] periodically (`crate::http::serve`
/// does) so histogram samples do not pile up between scrapes.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    // Held only for this one-time setup; nothing here awaits.
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let recorder = build_recorder()?;
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder).map_err(|_| MetricsError::OtherRecorder)?;
    describe();
    init_series();
    started(SystemTime::now());
    *installed = Some(handle.clone());
    Ok(handle)
}

/// Describes every metric in [`ALL`] to the current recorder: the one place that says what
/// each metric means.
pub fn describe() {
    describe_counter!(
        CALLS_TOTAL,
        Unit::Count,
        "Calls decided, by verdict, the kind of rule that decided (none: no rule), tenant \
         (capped; other: unknown or past the cap; none: no tenant) and protocol."
    );
    describe_histogram!(
        DECISION_SECONDS,
        Unit::Seconds,
        "Time one decision took (normalize, snapshot, flood, rules), by protocol."
    );
    describe_histogram!(
        VERDICT_SECONDS,
        Unit::Seconds,
        "Time from a call's data received to its verdict written, not counting waits for the \
         PBX's replies, by protocol."
    );
    describe_gauge!(ACTIVE_BANS, Unit::Count, "Flood bans currently in force.");
    describe_counter!(
        BAN_REQUESTS_DROPPED_TOTAL,
        Unit::Count,
        "Ban requests dropped because the store writer's queue was full."
    );
    describe_counter!(
        FLOOD_DETECTIONS_TOTAL,
        Unit::Count,
        "Floods detected, by detector (per_caller, range, fan_out, target)."
    );
    describe_gauge!(
        TARGETS_UNDER_ATTACK,
        Unit::Count,
        "Targets currently under attack, by kind (did: called numbers, tenant)."
    );
    describe_gauge!(
        RULES,
        Unit::Count,
        "Live rules in the current snapshot, by list and kind."
    );
    describe_gauge!(
        SNAPSHOT_AGE_SECONDS,
        Unit::Seconds,
        "Seconds since the snapshot was last known to match the store (since start when never)."
    );
    describe_gauge!(
        SNAPSHOT_VERSION,
        Unit::Count,
        "Version of the snapshot decisions read; bumps on every publish."
    );
    describe_gauge!(
        STORE_UP,
        Unit::Count,
        "1 while the store answers, 0 while it does not, by store (redis, local)."
    );
    describe_counter!(
        STORE_ERRORS_TOTAL,
        Unit::Count,
        "Store operations that failed, by kind (redis, timeout, io, bad_data)."
    );
    describe_counter!(
        CONNECTION_ERRORS_TOTAL,
        Unit::Count,
        "PBX connections that ended in an error, by protocol and kind (timeout, closed, \
         protocol, io)."
    );
    describe_gauge!(
        SESSIONS_ACTIVE,
        Unit::Count,
        "PBX sessions open now, by protocol."
    );
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        Unit::Count,
        "Connections closed at once without a session, by listener (agi, esl, metrics, api) and \
         reason (not_allowed: source address outside allow_from; max_connections: full)."
    );
    describe_counter!(
        FAIL_POLICY_DECISIONS_TOTAL,
        Unit::Count,
        "Calls decided by the fail policy (fail_open, fail_closed) because no list had been \
         loaded within the decision budget."
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        Unit::Count,
        "Configuration reloads on SIGHUP, by result (ok; error: the old config stays)."
    );
}

/// Creates, at zero, the series whose first event must be visible to `increase()` and alerts
/// (a counter that appears at 1 has no earlier sample to increase from).
pub fn init_series() {
    for &detector in FLOOD_DETECTORS {
        counter!(FLOOD_DETECTIONS_TOTAL, "detector" => detector).absolute(0);
    }
    for &kind in TARGET_KINDS {
        gauge!(TARGETS_UNDER_ATTACK, "kind" => kind).set(0.0);
    }
    for kind in StoreErrorKind::ALL {
        counter!(STORE_ERRORS_TOTAL, "kind" => kind.as_str()).absolute(0);
    }
    for &protocol in PROTOCOLS {
        for kind in ConnErrorKind::ALL {
            counter!(CONNECTION_ERRORS_TOTAL, "protocol" => protocol, "kind" => kind.as_str())
                .absolute(0);
        }
        gauge!(SESSIONS_ACTIVE, "protocol" => protocol).set(0.0);
    }
    counter!(BAN_REQUESTS_DROPPED_TOTAL).absolute(0);
    gauge!(ACTIVE_BANS).set(0.0);
    for &listener in LISTENERS {
        for reason in RefusalReason::ALL {
            counter!(CONNECTIONS_REFUSED_TOTAL, "listener" => listener, "reason" => reason.as_str())
                .absolute(0);
        }
    }
    for &policy in FAIL_POLICIES {
        counter!(FAIL_POLICY_DECISIONS_TOTAL, "policy" => policy).absolute(0);
    }
    for result in ["ok", "error"] {
        counter!(CONFIG_RELOADS_TOTAL, "result" => result).absolute(0);
    }
}

/// The `reason_kind` of a decision: the deciding rule's kind (`anonymous` for the rule that
/// blocks withheld callers, which is an exact rule), or [`REASON_NONE`].
pub fn reason_kind(decided_by: Option<&RulePattern>) -> &'static str {
    match decided_by {
        None => REASON_NONE,
        Some(RulePattern::Exact(CallerNumber::Anonymous)) => "anonymous",
        Some(pattern) => pattern.kind(),
    }
}

/// Counts one decided call and its latency. `protocol`, `verdict` and `reason_kind` are the
/// `as_str()` of `Protocol`, `Verdict` and [`reason_kind`]; `tenant` goes through
/// [`tenants`].
pub fn record_call(
    protocol: &'static str,
    verdict: &'static str,
    reason_kind: &'static str,
    tenant: Option<&str>,
    elapsed: Duration,
) {
    if !RECORDING.load(Ordering::Relaxed) {
        return;
    }
    let tenant = tenants().label(tenant);
    counter!(
        CALLS_TOTAL,
        "verdict" => verdict,
        "reason_kind" => reason_kind,
        "tenant" => tenant,
        "protocol" => protocol
    )
    .increment(1);
    histogram!(DECISION_SECONDS, "protocol" => protocol).record(elapsed.as_secs_f64());
}

/// Records the in-server time of one call ([`VERDICT_SECONDS`]).
pub fn record_verdict_time(protocol: &'static str, elapsed: Duration) {
    if !RECORDING.load(Ordering::Relaxed) {
        return;
    }
    histogram!(VERDICT_SECONDS, "protocol" => protocol).record(elapsed.as_secs_f64());
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The source address is outside the listener's `allow_from`.
    NotAllowed,
    /// `max_connections` sessions were already open.
    MaxConnections,
}

impl RefusalReason {
    /// Every reason, for zero-filling.
    pub const ALL: [RefusalReason; 2] = [RefusalReason::NotAllowed, RefusalReason::MaxConnections];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NotAllowed => "not_allowed",
            RefusalReason::MaxConnections => "max_connections",
        }
    }
}

/// Counts a connection refused by a listener (`agi`, `esl`, `metrics`).
pub fn connection_refused(listener: &'static str, reason: RefusalReason) {
    counter!(CONNECTIONS_REFUSED_TOTAL, "listener" => listener, "reason" => reason.as_str())
        .increment(1);
}

/// Counts a call decided by the fail policy (`fail_open`, `fail_closed`).
pub fn fail_policy_decision(policy: &'static str) {
    counter!(FAIL_POLICY_DECISIONS_TOTAL, "policy" => policy).increment(1);
}

/// Counts a config reload (`ok`, `error`).
pub fn config_reload(result: &'static str) {
    counter!(CONFIG_RELOADS_TOTAL, "result" => result).increment(1);
}

/// Counts a PBX connection that ended in an error.
pub fn connection_error(protocol: &'static str, kind: ConnErrorKind) {
    counter!(CONNECTION_ERRORS_TOTAL, "protocol" => protocol, "kind" => kind.as_str()).increment(1);
}

/// An open PBX session; the gauge goes back down when it is dropped, on every exit path.
#[must_use = "the session counts as open only while the guard lives"]
pub struct SessionGuard {
    gauge: Gauge,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// Counts a session as open until the returned guard is dropped.
pub fn session_started(protocol: &'static str) -> SessionGuard {
    let gauge = gauge!(SESSIONS_ACTIVE, "protocol" => protocol);
    gauge.increment(1.0);
    SessionGuard { gauge }
}

/// Sets the number of live rules of one list and kind.
pub fn set_rules(list: &'static str, kind: &'static str, n: usize) {
    gauge!(RULES, "list" => list, "kind" => kind).set(n as f64);
}

/// Live rules of a snapshot by list and kind, and the tenants that own rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleCounts {
    /// `(list, kind) -> live rules`, every [`RULE_KINDS`] kind present (zero when none).
    pub by_kind: BTreeMap<(&'static str, &'static str), usize>,
    /// Tenants with at least one rule.
    pub tenants: BTreeSet<String>,
}

/// Counts a snapshot's live rules. O(rules): for big lists call it on the blocking pool, next
/// to `Snapshot::compile_in`.
pub fn rule_counts(snapshot: &Snapshot, now: SystemTime) -> RuleCounts {
    rule_counts_of(&snapshot.tally(now, crate::bans::DETECTOR))
}

/// [`RuleCounts`] from a [`Snapshot::tally`].
pub fn rule_counts_of(tally: &crate::rules::Tally) -> RuleCounts {
    let mut counts = RuleCounts::default();
    for list in ListKind::ALL {
        for &kind in RULE_KINDS {
            counts.by_kind.insert(
                (list.as_str(), kind),
                tally.by_kind.get(&(list, kind)).copied().unwrap_or(0),
            );
        }
    }
    counts.tenants = tally.tenants.clone();
    counts
}

/// Records a published snapshot: its version, its rule counts, the tenants that own rules
/// (admitted to [`tenants`]), and that it matches the store as of `at`. Call right after the
/// swap.
pub fn snapshot_published(version: u64, counts: &RuleCounts, at: SystemTime) {
    gauge!(SNAPSHOT_VERSION).set(version as f64);
    for (&(list, kind), &n) in &counts.by_kind {
        set_rules(list, kind, n);
    }
    tenants().admit(&counts.tenants);
    snapshot_fresh(at);
}

// Unix milliseconds; 0 = not yet. Process-wide like the recorder they feed.
static STARTED_MS: AtomicU64 = AtomicU64::new(0);
static FRESH_MS: AtomicU64 = AtomicU64::new(0);

/// Marks the start of the process: until the first [`snapshot_fresh`], the snapshot's age
/// counts from here, so a store that never loads trips the staleness alert.
pub fn started(at: SystemTime) {
    STARTED_MS.store(unix_ms(at).max(1), Ordering::Relaxed);
}

/// Records that the snapshot was known to match the store at `at`: a publish, or a check that
/// found nothing new (an unchanged file stamp, an equal full resync, a healthy subscription).
/// Call it at least every 60 s while that holds, so [`SNAPSHOT_AGE_SECONDS`] stays low on a
/// store that simply does not change.
/// Records a published snapshot's version and that it matches the store as of `at`; the rule
/// counts follow separately ([`snapshot_published`]) since they walk every rule.
pub fn snapshot_version(version: u64, at: SystemTime) {
    gauge!(SNAPSHOT_VERSION).set(version as f64);
    snapshot_fresh(at);
}

/// Records that the snapshot matches the store as of `at`.
pub fn snapshot_fresh(at: SystemTime) {
    FRESH_MS.fetch_max(unix_ms(at), Ordering::Relaxed);
}

/// Updates the metrics derived from time ([`SNAPSHOT_AGE_SECONDS`]); `crate::http` calls it
/// before every render.
pub fn refresh(now: SystemTime) {
    let since = match FRESH_MS.load(Ordering::Relaxed) {
        0 => STARTED_MS.load(Ordering::Relaxed),
        fresh => fresh,
    };
    if since == 0 {
        return;
    }
    let age_ms = unix_ms(now).saturating_sub(since);
    gauge!(SNAPSHOT_AGE_SECONDS).set(age_ms as f64 / 1000.0);
}

// The last `store_up` report, for `/readyz`: 0 none yet, 1 up, 2 down.
static STORE_STATE: AtomicU8 = AtomicU8::new(0);

/// Sets whether `store` (`redis` or `local`) answers.
pub fn store_up(store: &'static str, up: bool) {
    gauge!(STORE_UP, "store" => store).set(if up { 1.0 } else { 0.0 });
    STORE_STATE.store(if up { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether the store answered at its last contact; `None` before the first.
pub fn store_is_up() -> Option<bool> {
    match STORE_STATE.load(Ordering::Relaxed) {
        1 => Some(true),
        2 => Some(false),
        _ => None,
    }
}

/// Time since the snapshot was last known to match the store; `None` when it never was.
pub fn snapshot_age(now: SystemTime) -> Option<Duration> {
    match FRESH_MS.load(Ordering::Relaxed) {
        0 => None,
        fresh => Some(Duration::from_millis(unix_ms(now).saturating_sub(fresh))),
    }
}

/// Counts a failed store operation.
pub fn store_error(kind: StoreErrorKind) {
    counter!(STORE_ERRORS_TOTAL, "kind" => kind.as_str()).increment(1);
}

/// Counts a flood detection; `detector` is one of [`FLOOD_DETECTORS`].
pub fn flood_detected(detector: &'static str) {
    counter!(FLOOD_DETECTIONS_TOTAL, "detector" => detector).increment(1);
}

/// Sets the number of flood bans in force.
pub fn set_active_bans(n: usize) {
    gauge!(ACTIVE_BANS).set(n as f64);
}

/// Counts a ban request dropped on a full queue.
pub fn ban_request_dropped() {
    counter!(BAN_REQUESTS_DROPPED_TOTAL).increment(1);
}

/// Sets the number of targets of one kind ([`TARGET_KINDS`]) under attack.
pub fn set_targets_under_attack(kind: &'static str, n: usize) {
    gauge!(TARGETS_UNDER_ATTACK, "kind" => kind).set(n as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::number::Normalizer;
    use crate::rules::{Entry, Tenant};

    /// Runs `f` against a fresh local recorder (the global one stays untouched) and renders.
    fn render_with(f: impl FnOnce()) -> String {
        let recorder = build_recorder().expect("recorder");
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, f);
        handle.render()
    }

    /// Exposition-text series names that start with `callguard_`.
    fn series_names(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .filter(|n| n.starts_with("callguard_"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn tenant_labels_admit_known_names_up_to_the_cap() {
        let labels = TenantLabels::new(2);
        assert_eq!(&*labels.label(None), TENANT_NONE);
        assert_eq!(
            &*labels.label(Some("acme")),
            TENANT_OTHER,
            "not admitted yet"
        );
        assert_eq!(labels.admit(["globex", "acme", "initech"]), 2);
        // Sorted admission: acme and globex make it, initech is past the cap.
        assert_eq!(&*labels.label(Some("acme")), "acme");
        assert_eq!(&*labels.label(Some("globex")), "globex");
        assert_eq!(&*labels.label(Some("initech")), TENANT_OTHER);
        assert_eq!(labels.admit(["acme", "zeta"]), 0, "full: nothing new");
        assert_eq!(labels.len(), 2);
        // Lowering the cap keeps what is exported; raising it admits again.
        labels.set_cap(1);
        assert_eq!(&*labels.label(Some("globex")), "globex");
        labels.set_cap(3);
        assert_eq!(labels.admit(["initech"]), 1);
        assert_eq!(&*labels.label(Some("initech")), "initech");
    }

    #[test]
    fn tenant_labels_never_admit_the_reserved_values() {
        let labels = TenantLabels::default();
        assert_eq!(labels.cap(), TenantLabels::DEFAULT_CAP);
        assert_eq!(labels.admit(["none", "other", ""]), 0);
        assert!(labels.is_empty());
        assert_eq!(&*labels.label(Some("none")), TENANT_OTHER);
    }

    #[test]
    fn tenant_labels_are_safe_to_share() {
        let labels = Arc::new(TenantLabels::new(40));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let labels = Arc::clone(&labels);
                std::thread::spawn(move || {
                    for i in 0..20 {
                        labels.admit([format!("t{t}-{i}")]);
                        let _label = labels.label(Some("t0-0"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(labels.len(), 40, "exactly the cap, no lost admissions");
    }

    #[test]
    fn record_call_counts_and_times_with_bounded_labels() {
        let text = render_with(|| {
            record_call(
                "agi",
                "block",
                "prefix",
                Some("never-admitted"),
                Duration::from_micros(7),
            );
            record_call("esl", "allow", REASON_NONE, None, Duration::from_micros(30));
        });
        assert!(
            text.contains(
                r#"callguard_calls_total{verdict="block",reason_kind="prefix",tenant="other",protocol="agi"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"callguard_calls_total{verdict="allow",reason_kind="none",tenant="none",protocol="esl"} 1"#
            ),
            "{text}"
        );
        // 7 µs lands in the 10 µs bucket, not the 5 µs one.
        assert!(
            text.contains(r#"callguard_decision_seconds_bucket{protocol="agi",le="0.000005"} 0"#)
        );
        assert!(
            text.contains(r#"callguard_decision_seconds_bucket{protocol="agi",le="0.00001"} 1"#)
        );
        assert!(text.contains(r#"callguard_decision_seconds_count{protocol="esl"} 1"#));
        assert!(text.contains("# TYPE callguard_decision_seconds histogram"));
    }

    #[test]
    fn admitted_tenant_appears_by_name() {
        tenants().admit(["metrics-test-tenant"]);
        let text = render_with(|| {
            record_call(
                "agi",
                "block",
                "exact",
                Some("metrics-test-tenant"),
                Duration::ZERO,
            );
        });
        assert!(text.contains(r#"tenant="metrics-test-tenant""#), "{text}");
    }

    #[test]
    fn every_metric_is_described_and_nothing_else_is_exported() {
        let text = render_with(|| {
            describe();
            init_series();
            record_call("agi", "allow", REASON_NONE, None, Duration::ZERO);
            record_verdict_time("esl", Duration::from_micros(12));
            set_rules("block", "exact", 1);
            snapshot_published(3, &RuleCounts::default(), SystemTime::now());
            started(SystemTime::now());
            refresh(SystemTime::now());
            store_up("redis", true);
            store_error(StoreErrorKind::Timeout);
            connection_error("agi", ConnErrorKind::Closed);
            flood_detected("fan_out");
            set_active_bans(2);
            ban_request_dropped();
            set_targets_under_attack("did", 1);
            drop(session_started("esl"));
        });
        let exported = series_names(&text);
        for name in &exported {
            assert!(is_exported(name), "{name} is exported but not in ALL");
        }
        for name in ALL {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} undescribed"
            );
            let present = if HISTOGRAMS.contains(name) {
                exported.contains(&format!("{name}_bucket"))
            } else {
                exported.contains(*name)
            };
            assert!(present, "{name} not exported by any helper:\n{text}");
        }
    }

    #[test]
    fn zero_series_exist_before_their_first_event() {
        let text = render_with(init_series);
        assert!(text.contains(r#"callguard_flood_detections_total{detector="per_caller"} 0"#));
        assert!(
            text.contains(r#"callguard_connection_errors_total{protocol="esl",kind="timeout"} 0"#)
        );
        assert!(text.contains(r#"callguard_sessions_active{protocol="agi"} 0"#));
        assert!(text.contains(r#"callguard_targets_under_attack{kind="tenant"} 0"#));
    }

    #[test]
    fn sessions_gauge_follows_guards() {
        let recorder = build_recorder().expect("recorder");
        let handle = recorder.handle();
        let open = ::metrics::with_local_recorder(&recorder, || {
            let a = session_started("agi");
            let b = session_started("agi");
            drop(a);
            b
        });
        let line = r#"callguard_sessions_active{protocol="agi"}"#;
        assert!(handle.render().contains(&format!("{line} 1")));
        // The guard holds its gauge handle, so it decrements the recorder it started in.
        drop(open);
        assert!(handle.render().contains(&format!("{line} 0")));
    }

    #[test]
    fn rule_counts_zero_fill_and_collect_tenants() {
        let n = Normalizer::default();
        let entry = |list, text: &str, tenant: Option<&str>| {
            let mut e = Entry::new(list, RulePattern::parse(text, &n).expect("pattern"));
            e.tenant = tenant.map(|t| Tenant::new(t).expect("tenant"));
            e
        };
        let snapshot = Snapshot::compile(
            [
                entry(ListKind::Block, "+74951234567", None),
                entry(ListKind::Block, "+7495*", Some("acme")),
                entry(ListKind::Allow, "+74951230000-+74951230099", None),
                entry(ListKind::Block, "anonymous", None),
            ],
            1,
        );
        let counts = rule_counts(&snapshot, SystemTime::now());
        assert_eq!(counts.by_kind[&("block", "exact")], 2);
        assert_eq!(counts.by_kind[&("block", "prefix")], 1);
        assert_eq!(counts.by_kind[&("allow", "range")], 1);
        assert_eq!(counts.by_kind[&("allow", "mask")], 0);
        assert_eq!(counts.by_kind.len(), 2 * RULE_KINDS.len());
        assert_eq!(counts.tenants, BTreeSet::from(["acme".to_owned()]));
    }

    #[test]
    fn reason_kind_names_the_deciding_rule() {
        let n = Normalizer::default();
        let kind = |text: &str| reason_kind(Some(&RulePattern::parse(text, &n).expect("rule")));
        assert_eq!(reason_kind(None), REASON_NONE);
        assert_eq!(kind("anonymous"), "anonymous");
        assert_eq!(kind("+74951234567"), "exact");
        assert_eq!(kind("_7495123XXXX"), "mask");
        assert_eq!(kind("invalid"), "invalid");
    }

    #[test]
    fn exported_names_follow_histogram_suffix_rules() {
        assert!(is_exported("callguard_calls_total"));
        assert!(is_exported("callguard_decision_seconds_bucket"));
        assert!(is_exported("callguard_decision_seconds_count"));
        assert!(!is_exported("callguard_calls_total_bucket"));
        assert!(!is_exported("callguard_nope"));
        for name in ALL {
            assert!(name.starts_with("callguard_"));
        }
    }

    #[test]
    fn install_is_idempotent_and_ready_to_scrape() {
        let first = install().expect("install");
        let second = install().expect("second install returns the same recorder");
        let text = second.render();
        assert!(
            text.contains("# HELP callguard_flood_detections_total "),
            "{text}"
        );
        assert!(text.contains(r#"callguard_flood_detections_total{detector="target"} 0"#));
        assert_eq!(first.render().lines().count(), text.lines().count());
    }

    #[test]
    fn helpers_without_a_recorder_do_nothing() {
        // No recorder installed in unit tests: these must not panic or allocate series.
        record_call("agi", "allow", REASON_NONE, Some("x"), Duration::ZERO);
        drop(session_started("agi"));
        connection_error("agi", ConnErrorKind::Io);
    }
}
