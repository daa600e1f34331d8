//! FreeSWITCH Event Socket front end: `codec` is pure bytes <-> messages and commands, no I/O;
//! `outbound` serves the dialplan `socket` application.

pub mod codec;
pub mod outbound;
