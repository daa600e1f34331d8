//! Protocol-neutral call model: what a front end (AGI, ESL) hands the engine, and what it gets back.
//! Owns no I/O and no decision logic.

use std::fmt;
use std::net::SocketAddr;

use crate::number::CallerNumber;
use crate::rules::{ListKind, RuleAction, Tenant};

/// Which front end delivered a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// Asterisk FastAGI.
    Agi,
    /// FreeSWITCH Event Socket.
    Esl,
    /// `callguard check` on the command line.
    Cli,
}

impl Protocol {
    /// Lower-case name used in logs and (later) metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Agi => "agi",
            Protocol::Esl => "esl",
            Protocol::Cli => "cli",
        }
    }
}

/// Caller-ID presentation as the PBX reports it (Asterisk `agi_callingpres` bits 0x60).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Presentation {
    /// Number may be shown.
    #[default]
    Allowed,
    /// Caller asked to withhold the number.
    Restricted,
    /// Network could not deliver the number.
    Unavailable,
}

impl Presentation {
    /// Decodes Asterisk's numeric presentation value (`AST_PRES_*`).
    pub fn from_asterisk(value: u32) -> Presentation {
        match value & 0x60 {
            0x20 => Presentation::Restricted,
            0x40 => Presentation::Unavailable,
            _ => Presentation::Allowed,
        }
    }
}

/// One incoming call, as raw as the PBX delivered it; normalization happens in the engine.
#[derive(Debug, Clone, Default)]
pub struct CallEvent {
    /// Front end that delivered the call (None only in unit tests).
    pub protocol: Option<Protocol>,
    /// Caller ID number text exactly as delivered (may be a URI, `unknown`, empty...).
    pub caller_id: String,
    /// Caller ID name, if any.
    pub caller_name: Option<String>,
    /// Called number (DID) as delivered.
    pub called: Option<String>,
    /// Tenant named by the request (`?tenant=` or an argument), as sent; checked by the engine.
    pub tenant: Option<String>,
    /// Presentation flags.
    pub presentation: Presentation,
    /// PBX's own call identifier (Asterisk uniqueid, FreeSWITCH UUID) for logs.
    pub call_id: Option<String>,
    /// Address of the PBX connection.
    pub peer: Option<SocketAddr>,
}

/// What to do with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Refuse the call (hang up, busy, play a message, redirect).
    Block,
    /// Let the dialplan continue.
    Allow,
    /// Let the call continue, marked so the CRM can flag it.
    Tag,
}

impl Verdict {
    /// `block`, `allow` or `tag`: the value of `CALLGUARD_VERDICT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Block => "block",
            Verdict::Allow => "allow",
            Verdict::Tag => "tag",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The engine's answer for one call.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Block, allow or tag.
    pub verdict: Verdict,
    /// For blocks: what to do (the rule's action or the configured default). `None` otherwise.
    pub action: Option<RuleAction>,
    /// Canonical caller number (`CALLGUARD_NUMBER`).
    pub number: CallerNumber,
    /// Human-readable reason (`CALLGUARD_REASON`): the deciding rule's reason, or why nothing matched.
    pub reason: String,
    /// Canonical text of the deciding rule (`CALLGUARD_RULE`), empty when none matched.
    pub rule: String,
    /// Which list decided, if a rule matched.
    pub matched: Option<ListKind>,
    /// Kind of the deciding rule for metrics (`exact`, `prefix`, `mask`, `range`, `invalid`,
    /// `anonymous`, or `none`): never the number itself.
    pub reason_kind: &'static str,
    /// The tenant whose rules applied (from the request or the DID map).
    pub tenant: Option<Tenant>,
}
