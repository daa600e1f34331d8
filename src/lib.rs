//! callguard: a call-screening sidecar for Asterisk (FastAGI) and FreeSWITCH.
//!
//! Module map (each module's `//!` line says what it owns):
//! - [`number`]: caller-ID text -> canonical [`number::CallerNumber`]; numbering plans as data.
//! - [`agi`]: FastAGI codec (pure bytes) and session glue.

pub mod agi;
pub mod number;
