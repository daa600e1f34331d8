//! The decision shared by every protocol front end: normalize -> snapshot -> rules -> verdict.
//! Synchronous and pure given (call, snapshot, now); never waits on the network.

use std::time::{Instant, SystemTime};

use tracing::{debug, info};

use crate::call::{Action, CallEvent, Decision, Verdict};
use crate::number::Normalizer;
use crate::rules::{self, ListKind, Snapshot};
use crate::snapshot::SnapshotHandle;

/// What a blocked call gets; from config.
#[derive(Debug, Clone, Copy)]
pub struct BlockPolicy {
    /// Action for block verdicts.
    pub action: Action,
}

/// Decides calls against the current snapshot. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    snapshot: SnapshotHandle,
    normalizer: Normalizer,
    policy: BlockPolicy,
}

impl Engine {
    /// An engine reading `snapshot`.
    pub fn new(snapshot: SnapshotHandle, normalizer: Normalizer, policy: BlockPolicy) -> Engine {
        Engine {
            snapshot,
            normalizer,
            policy,
        }
    }

    /// Decides one call now, and logs it (debug for every call, info for blocks).
    pub fn decide(&self, call: &CallEvent) -> Decision {
        let started = Instant::now();
        let snapshot = self.snapshot.load();
        let decision = decide(
            call,
            &self.normalizer,
            &snapshot,
            self.policy,
            SystemTime::now(),
        );
        let micros = started.elapsed().as_micros();
        let protocol = call.protocol.map_or("-", |p| p.as_str());
        if decision.verdict == Verdict::Block {
            info!(
                protocol,
                caller = %decision.number,
                raw = %call.caller_id,
                called = call.called.as_deref().unwrap_or("-"),
                call_id = call.call_id.as_deref().unwrap_or("-"),
                reason = %decision.reason,
                micros,
                "call blocked"
            );
        } else {
            debug!(
                protocol,
                caller = %decision.number,
                raw = %call.caller_id,
                called = call.called.as_deref().unwrap_or("-"),
                reason = %decision.reason,
                micros,
                "call allowed"
            );
        }
        decision
    }
}

/// The decision as a pure function of its inputs.
pub fn decide(
    call: &CallEvent,
    normalizer: &Normalizer,
    snapshot: &Snapshot,
    policy: BlockPolicy,
    now: SystemTime,
) -> Decision {
    let number = normalizer.normalize(&call.caller_id);
    let outcome = rules::decide(&number, snapshot, now);
    let (verdict, action) = if outcome.is_block() {
        (Verdict::Block, policy.action)
    } else {
        (Verdict::Allow, Action::Continue)
    };
    let reason = match outcome.decided_by {
        Some(entry) if !entry.reason.is_empty() => entry.reason.clone(),
        Some(entry) => format!("{} list", entry.list),
        None => "no match".to_owned(),
    };
    Decision {
        verdict,
        action,
        number,
        reason,
        matched: outcome.decided_by.map(|e| e.list),
    }
}

impl Decision {
    /// True when an allow-list entry decided.
    pub fn allowed_by_list(&self) -> bool {
        self.matched == Some(ListKind::Allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Entry;

    #[test]
    fn block_gets_policy_action_and_reason() {
        let normalizer = Normalizer::default();
        let snapshot = Snapshot::compile(
            [Entry {
                list: ListKind::Block,
                number: normalizer.normalize("+74951234567"),
                reason: "collectors".into(),
                added_by: None,
                added_at: None,
                expires_at: None,
            }],
            1,
        );
        let policy = BlockPolicy {
            action: Action::Hangup { cause: 21 },
        };
        let call = CallEvent {
            caller_id: "8 (495) 123-45-67".into(),
            ..CallEvent::default()
        };
        let d = decide(&call, &normalizer, &snapshot, policy, SystemTime::now());
        assert_eq!(d.verdict, Verdict::Block);
        assert_eq!(d.action, Action::Hangup { cause: 21 });
        assert_eq!(d.reason, "collectors");
        assert_eq!(d.number.to_string(), "+74951234567");

        let call = CallEvent {
            caller_id: "+74950000000".into(),
            ..CallEvent::default()
        };
        let d = decide(&call, &normalizer, &snapshot, policy, SystemTime::now());
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.action, Action::Continue);
        assert_eq!(d.reason, "no match");
    }
}
