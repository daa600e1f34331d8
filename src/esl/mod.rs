//! FreeSWITCH Event Socket front end: `codec` is pure bytes <-> messages and commands, no I/O;
//! `outbound` serves the dialplan `socket` application; `inbound` is the client to port 8021.

pub mod codec;
pub mod inbound;
pub mod outbound;

use crate::rules::RuleAction;

/// The FreeSWITCH hang-up cause of an action that only ends the call (`hangup CAUSE`, `busy`,
/// `congestion`); `None` for the others, which run something first or let the call go on.
/// One mapping for both modes (outbound `sendmsg hangup`, inbound `uuid_kill`).
pub fn hangup_cause(action: &RuleAction) -> Option<&'static str> {
    match action {
        RuleAction::Hangup { cause } => Some(codec::hangup_cause_name(*cause)),
        RuleAction::Busy => Some("USER_BUSY"),
        RuleAction::Congestion => Some("NORMAL_CIRCUIT_CONGESTION"),
        RuleAction::Playback { .. } | RuleAction::Redirect { .. } | RuleAction::Tag => None,
    }
}
