//! Asterisk FastAGI front end: `codec` is pure bytes <-> messages, `session` drives one call.

pub mod codec;
pub mod session;
