//! FreeSWITCH Event Socket front end: `codec` is pure bytes <-> messages and commands, no I/O;
//! `outbound` serves the dialplan `socket` application; `inbound` is the client to port 8021.

pub mod codec;
pub mod inbound;
pub mod outbound;
