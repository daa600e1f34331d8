//! callguard: a call-screening sidecar for Asterisk (FastAGI) and FreeSWITCH.
//!
//! Module map (each module's `//!` line says what it owns):
//! - [`number`]: caller-ID text -> canonical [`number::CallerNumber`].
//! - [`call`]: protocol-neutral call, verdict and action types.
//! - [`calllog`]: the call log (Redis stream or rotating file) and its writer.
//! - [`rules`]: list entries, compiled [`rules::Snapshot`], `decide`.
//! - [`snapshot`]: the one shared snapshot handle.
//! - [`store`]: Redis and embedded stores, sync into the snapshot.
//! - [`engine`]: the decision every front end calls.
//! - [`flood`]: flood detectors over bounded windowed counters (time passed in).
//! - [`bans`]: detector bans -> expiring block rules in the store.
//! - [`metrics`]: metric names, labels and helpers; [`http`]: /metrics, /healthz, /readyz.
//! - [`lastcall`]: last caller per extension, for the "block the last caller" feature code.
//! - [`config`]: typed configuration.
//! - [`listener`]: generic accept loop.
//! - [`loadgen`]: the load generator (FastAGI and ESL) and the baseline servers (`callguard loadgen`).
//! - [`editbench`]: edit-to-decision latency (`callguard edit-latency`).
//! - [`agi`]: FastAGI front end.
//! - `fuzzing` (hidden): hostile-input checks shared by `tests/fuzz/` and the corpus replay tests.
//! - [`api`]: the admin HTTP API (JSON rules, check, call log, floods) with bearer tokens.

pub mod access;
pub mod agi;
pub mod api;
pub mod bans;
pub mod call;
pub mod calllog;
pub mod cli;
pub mod config;
pub mod editbench;
pub mod engine;
pub mod esl;
pub mod flood;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod lastcall;
pub mod listener;
pub mod listfile;
pub mod loadgen;
pub mod logwriter;
pub mod metrics;
pub mod number;
pub mod rules;
pub mod server;
pub mod snapshot;
pub mod store;
