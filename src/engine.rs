//! The decision shared by every protocol front end: normalize -> snapshot -> rules -> verdict.
//! Synchronous and pure given (call, snapshot, now); never waits on the network.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use tracing::{debug, info};

use crate::bans::FloodHook;
use crate::call::{CallEvent, Decision, Verdict};
use crate::calllog::CallLog;
use crate::config::{AttackPolicy, FailPolicy};
use crate::flood::{AttackState, Observed};
use crate::number::{CallerNumber, Normalizer};
use crate::rules::{self, CallFacts, ListKind, RuleAction, Snapshot, Tenant};
use crate::snapshot::SnapshotHandle;

/// Decision settings from config.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Action of block rules that have none of their own.
    pub default_action: RuleAction,
    /// Called number -> tenant, for calls whose request names no tenant.
    pub did_tenants: Arc<HashMap<CallerNumber, Tenant>>,
    /// What changes for a DID or tenant under attack.
    pub attack_policy: AttackPolicy,
    /// What a call gets when no list has been loaded within `decision_budget`.
    pub fail_policy: FailPolicy,
    /// Longest a call waits for the first list load.
    pub decision_budget: Duration,
}

impl Default for EngineSettings {
    fn default() -> EngineSettings {
        EngineSettings {
            default_action: RuleAction::default(),
            did_tenants: Arc::default(),
            attack_policy: AttackPolicy::BlockAnonymousInvalid,
            fail_policy: FailPolicy::FailOpen,
            decision_budget: Duration::from_millis(20),
        }
    }
}

/// Decides calls against the current snapshot. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    snapshot: SnapshotHandle,
    normalizer: Normalizer,
    // Swapped whole by a config reload; every clone sees the new settings.
    settings: Arc<ArcSwap<EngineSettings>>,
    call_log: Option<CallLog>,
    flood: Option<FloodHook>,
}

impl Engine {
    /// An engine reading `snapshot`.
    pub fn new(
        snapshot: SnapshotHandle,
        normalizer: Normalizer,
        settings: EngineSettings,
    ) -> Engine {
        Engine {
            snapshot,
            normalizer,
            settings: Arc::new(ArcSwap::from_pointee(settings)),
            call_log: None,
            flood: None,
        }
    }

    /// Feeds every call to the flood detectors too.
    pub fn with_flood(mut self, hook: FloodHook) -> Engine {
        self.flood = Some(hook);
        self
    }

    /// Records decisions in `log` too (off the decision path: a bounded queue).
    pub fn with_call_log(mut self, log: CallLog) -> Engine {
        self.call_log = Some(log);
        self
    }

    /// The settings decisions use now.
    pub fn settings(&self) -> Arc<EngineSettings> {
        self.settings.load_full()
    }

    /// The flood detectors' hook, when flood detection is on.
    pub fn flood(&self) -> Option<&FloodHook> {
        self.flood.as_ref()
    }

    /// Replaces the settings of this engine and all its clones (config reload).
    pub fn reconfigure(&self, settings: EngineSettings) {
        self.settings.store(Arc::new(settings));
    }

    /// Decides one call like [`Engine::decide`], but first, if no list has ever been loaded,
    /// waits for one up to the decision budget; past it the fail policy decides.
    pub async fn decide_when_ready(&self, call: &CallEvent) -> Decided {
        if !self.snapshot.is_ready() {
            let budget = self.settings.load().decision_budget;
            if tokio::time::timeout(budget, self.snapshot.wait_ready())
                .await
                .is_err()
            {
                return self.fail_decision(call);
            }
        }
        self.decide(call)
    }

    /// The fail policy's decision for a call no list could decide.
    fn fail_decision(&self, call: &CallEvent) -> Decided {
        let started = Instant::now();
        let settings = self.settings.load();
        let number = self.normalizer.normalize(&call.caller_id);
        let did = call.called.as_deref().map(|d| self.normalizer.normalize(d));
        let tenant = call_tenant(call, did.as_ref(), &settings);
        let policy = settings.fail_policy;
        let (verdict, action) = match policy {
            FailPolicy::FailOpen => (Verdict::Allow, None),
            FailPolicy::FailClosed => (Verdict::Block, Some(settings.default_action.clone())),
        };
        let decision = Decision {
            verdict,
            action,
            number,
            reason: format!("no list loaded yet ({})", policy.as_str()),
            rule: policy.as_str().to_owned(),
            matched: None,
            reason_kind: policy.as_str(),
            tenant,
        };
        crate::metrics::fail_policy_decision(policy.as_str());
        Decided {
            decision,
            took: started.elapsed(),
            counted: None,
        }
    }

    /// The normalizer decisions use.
    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
    }

    /// Decides one call now, and logs it (debug for every call, info for blocks and tags).
    pub fn decide(&self, call: &CallEvent) -> Decided {
        let started = Instant::now();
        let snapshot = self.snapshot.load();
        let settings = self.settings.load();
        let mut decision = decide(
            call,
            &self.normalizer,
            &snapshot,
            &settings,
            SystemTime::now(),
        );
        // Only calls no rule refused count toward floods (and an allow-listed caller never
        // does): a ban must never overwrite a rule someone wrote. They are counted in
        // `account`, after the verdict is out: counting cannot change this call's verdict
        // (bans reach later calls through the store), an attack already detected can.
        let mut counted = None;
        if let Some(flood) = &self.flood
            && decision.verdict != Verdict::Block
            && !decision.allowed_by_list()
        {
            let did = call.called.as_deref().map(|d| self.normalizer.normalize(d));
            if let Some(attack) =
                flood
                    .detector
                    .under_attack(did.as_ref(), decision.tenant.as_ref(), Instant::now())
            {
                // Still counted (as the call it was): an attack refused is an attack going on.
                apply_attack_policy(&mut decision, &attack, &settings);
            }
            counted = Some(FloodCount { did });
        }
        Decided {
            decision,
            took: started.elapsed(),
            counted,
        }
    }

    /// Flood counting, metrics, call log and log line of a decision made. The front ends
    /// call it once the verdict is on its way to the PBX: the call does not wait for them.
    pub fn account(&self, call: &CallEvent, decided: &Decided) {
        let Decided {
            decision,
            took: elapsed,
            counted,
        } = decided;
        if let (Some(flood), Some(FloodCount { did })) = (&self.flood, counted) {
            // The attack policy changes a verdict, never the number or tenant counted.
            let observed = Observed {
                number: &decision.number,
                did: did.as_ref(),
                tenant: decision.tenant.as_ref(),
            };
            flood.share(&observed);
            let detections = flood.detector.observe(&observed, Instant::now());
            if !detections.is_empty() {
                flood.report(detections);
            }
        }
        let elapsed = *elapsed;
        let micros = elapsed.as_micros();
        crate::metrics::record_call(
            call.protocol.map_or("none", |p| p.as_str()),
            decision.verdict.as_str(),
            decision.reason_kind,
            decision.tenant.as_ref().map(Tenant::as_str),
            elapsed,
        );
        if let Some(log) = &self.call_log
            && !log.record(call, decision)
        {
            debug!("call log queue full; record dropped");
        }
        let protocol = call.protocol.map_or("-", |p| p.as_str());
        let tenant = decision.tenant.as_ref().map_or("-", Tenant::as_str);
        if decision.verdict == Verdict::Allow {
            debug!(
                protocol,
                caller = %decision.number,
                raw = %call.caller_id,
                called = call.called.as_deref().unwrap_or("-"),
                tenant,
                rule = %decision.rule,
                reason = %decision.reason,
                micros,
                "call allowed"
            );
        } else {
            info!(
                protocol,
                verdict = %decision.verdict,
                caller = %decision.number,
                raw = %call.caller_id,
                called = call.called.as_deref().unwrap_or("-"),
                tenant,
                call_id = call.call_id.as_deref().unwrap_or("-"),
                rule = %decision.rule,
                action = %decision.action.as_ref().map(ToString::to_string).unwrap_or_default(),
                reason = %decision.reason,
                micros,
                "call {}",
                if decision.verdict == Verdict::Block { "blocked" } else { "tagged" }
            );
        }
    }
}

/// A decision and how long it took, not yet accounted for ([`Engine::account`]).
#[derive(Debug)]
#[must_use = "a decision must be accounted for with Engine::account"]
pub struct Decided {
    /// The decision.
    pub decision: Decision,
    /// Time spent deciding.
    pub took: Duration,
    /// Set when the call counts toward flood detection.
    counted: Option<FloodCount>,
}

/// What flood detection counts of a call besides its number and tenant.
#[derive(Debug)]
struct FloodCount {
    /// The called number, normalized.
    did: Option<CallerNumber>,
}

/// Under attack, a call no rule decided may still be refused: anonymous and invalid callers
/// (`block_anonymous_invalid`), or everyone not on an allow list (`allow_listed_only`).
pub fn apply_attack_policy(
    decision: &mut Decision,
    attack: &AttackState,
    settings: &EngineSettings,
) {
    if decision.verdict == Verdict::Block || decision.allowed_by_list() {
        return;
    }
    let refuse = match settings.attack_policy {
        AttackPolicy::None => false,
        AttackPolicy::BlockAnonymousInvalid => matches!(
            decision.number,
            CallerNumber::Anonymous | CallerNumber::Invalid(_)
        ),
        AttackPolicy::AllowListedOnly => true,
    };
    if refuse {
        decision.verdict = Verdict::Block;
        decision.action = Some(settings.default_action.clone());
        decision.reason = format!(
            "{} under attack ({:.0} calls/s)",
            attack.target.as_str(),
            attack.rate
        );
        decision.rule = "under-attack".to_owned();
        decision.reason_kind = "under_attack";
    }
}

/// The tenant whose rules apply: the one the request names (when it is a valid name), else
/// the one the called number maps to.
pub fn call_tenant(
    call: &CallEvent,
    did: Option<&CallerNumber>,
    settings: &EngineSettings,
) -> Option<Tenant> {
    call.tenant
        .as_deref()
        .and_then(|t| Tenant::new(t).ok())
        .or_else(|| did.and_then(|d| settings.did_tenants.get(d).cloned()))
}

/// The decision as a pure function of its inputs.
pub fn decide(
    call: &CallEvent,
    normalizer: &Normalizer,
    snapshot: &Snapshot,
    settings: &EngineSettings,
    now: SystemTime,
) -> Decision {
    let number = normalizer.normalize(&call.caller_id);
    let did = call.called.as_deref().map(|d| normalizer.normalize(d));
    let tenant = call_tenant(call, did.as_ref(), settings);
    let facts = CallFacts {
        number: &number,
        tenant: tenant.as_ref(),
        did: did.as_ref(),
    };
    let outcome = rules::decide(facts, snapshot, now);
    let decided_by = outcome.decided_by.as_deref();
    let (verdict, action) = match decided_by {
        Some(rule) if rule.list == ListKind::Block => {
            let action = rule
                .action
                .clone()
                .unwrap_or_else(|| settings.default_action.clone());
            let verdict = if action == RuleAction::Tag {
                Verdict::Tag
            } else {
                Verdict::Block
            };
            (verdict, Some(action))
        }
        _ => (Verdict::Allow, None),
    };
    let reason = match decided_by {
        Some(entry) if !entry.reason.is_empty() => entry.reason.clone(),
        Some(entry) => format!("{} list", entry.list),
        None => "no match".to_owned(),
    };
    Decision {
        verdict,
        action,
        number,
        reason,
        rule: decided_by
            .map(|e| e.pattern.to_string())
            .unwrap_or_default(),
        matched: decided_by.map(|e| e.list),
        reason_kind: crate::metrics::reason_kind(decided_by.map(|e| &e.pattern)),
        tenant,
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
    use crate::rules::{Entry, RulePattern};

    fn snapshot(rules: &[(&str, Option<&str>, Option<&str>)]) -> Snapshot {
        let n = Normalizer::default();
        Snapshot::compile(
            rules.iter().map(|(pattern, tenant, action)| {
                let mut e = Entry::new(
                    ListKind::Block,
                    RulePattern::parse(pattern, &n).expect("pattern"),
                );
                e.tenant = tenant.map(|t| Tenant::new(t).expect("tenant"));
                e.action = action.map(|a| a.parse().expect("action"));
                e.reason = format!("r {pattern}");
                e
            }),
            1,
        )
    }

    fn call(caller: &str, called: Option<&str>, tenant: Option<&str>) -> CallEvent {
        CallEvent {
            caller_id: caller.into(),
            called: called.map(Into::into),
            tenant: tenant.map(Into::into),
            ..CallEvent::default()
        }
    }

    #[test]
    fn block_gets_rule_or_default_action_and_reason() {
        let n = Normalizer::default();
        let snap = snapshot(&[
            ("+74951234567", None, None),
            ("+7495999XXXX", None, Some("hangup 1")),
            ("+7812*", None, Some("tag")),
        ]);
        let settings = EngineSettings::default();
        let d = decide(
            &call("8 (495) 123-45-67", None, None),
            &n,
            &snap,
            &settings,
            SystemTime::now(),
        );
        assert_eq!(d.verdict, Verdict::Block);
        assert_eq!(d.action, Some(RuleAction::Hangup { cause: 21 }));
        assert_eq!(d.reason, "r +74951234567");
        assert_eq!(d.rule, "+74951234567");
        assert_eq!(d.number.to_string(), "+74951234567");

        let d = decide(
            &call("84959991111", None, None),
            &n,
            &snap,
            &settings,
            SystemTime::now(),
        );
        assert_eq!(d.action, Some(RuleAction::Hangup { cause: 1 }));
        assert_eq!(d.rule, "+7495999XXXX");

        let d = decide(
            &call("88121112233", None, None),
            &n,
            &snap,
            &settings,
            SystemTime::now(),
        );
        assert_eq!(d.verdict, Verdict::Tag);

        let d = decide(
            &call("+74950000000", None, None),
            &n,
            &snap,
            &settings,
            SystemTime::now(),
        );
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.action, None);
        assert_eq!(d.reason, "no match");
        assert_eq!(d.rule, "");
    }

    #[test]
    fn tenant_from_request_or_did_map() {
        let n = Normalizer::default();
        let snap = snapshot(&[("+74951234567", Some("acme"), None)]);
        let mut dids = HashMap::new();
        dids.insert(
            n.normalize("+74951112233"),
            Tenant::new("acme").expect("tenant"),
        );
        let settings = EngineSettings {
            did_tenants: Arc::new(dids),
            ..EngineSettings::default()
        };
        let now = SystemTime::now();
        let by_request = decide(
            &call("84951234567", None, Some("ACME")),
            &n,
            &snap,
            &settings,
            now,
        );
        assert_eq!(by_request.verdict, Verdict::Block);
        assert_eq!(by_request.tenant.as_ref().map(Tenant::as_str), Some("acme"));
        let by_did = decide(
            &call("84951234567", Some("8 495 111 22 33"), None),
            &n,
            &snap,
            &settings,
            now,
        );
        assert_eq!(by_did.verdict, Verdict::Block);
        let other_did = decide(
            &call("84951234567", Some("84951119999"), None),
            &n,
            &snap,
            &settings,
            now,
        );
        assert_eq!(other_did.verdict, Verdict::Allow);
        // A request naming another tenant wins over the DID map.
        let other = decide(
            &call("84951234567", Some("84951112233"), Some("globex")),
            &n,
            &snap,
            &settings,
            now,
        );
        assert_eq!(other.verdict, Verdict::Allow);
    }

    #[test]
    fn attack_policies() {
        let n = Normalizer::default();
        let snap = snapshot(&[]);
        let attack = AttackState {
            since: std::time::Instant::now(),
            rate: 42.0,
            target: crate::flood::TargetKind::Tenant,
        };
        let now = SystemTime::now();
        for (policy, caller, refused) in [
            (AttackPolicy::None, "anonymous", false),
            (AttackPolicy::BlockAnonymousInvalid, "anonymous", true),
            (AttackPolicy::BlockAnonymousInvalid, "SPAM", true),
            (AttackPolicy::BlockAnonymousInvalid, "84951234567", false),
            (AttackPolicy::AllowListedOnly, "84951234567", true),
        ] {
            let settings = EngineSettings {
                attack_policy: policy,
                ..EngineSettings::default()
            };
            let mut d = decide(&call(caller, None, None), &n, &snap, &settings, now);
            apply_attack_policy(&mut d, &attack, &settings);
            assert_eq!(d.verdict == Verdict::Block, refused, "{policy:?} {caller}");
            if refused {
                assert_eq!(d.reason, "tenant under attack (42 calls/s)");
                assert_eq!(d.action, Some(RuleAction::Hangup { cause: 21 }));
            }
        }
    }
}
