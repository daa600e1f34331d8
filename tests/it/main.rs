//! Integration tests: the real `callguard` binary, a real `redis-server`, real TCP, and
//! FastAGI bytes from Asterisk 22 captures. One test binary (see tests/it/support).

mod agi;
mod api;
mod calllog;
mod cli;
mod dialplan;
mod esl;
mod esl_inbound;
mod flood;
mod hardening;
mod listfile;
mod loadgen;
mod metrics;
mod redis_ha;
mod redis_store;
mod rules;
mod support;
mod web;
