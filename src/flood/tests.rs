use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::number::Normalizer;
use crate::rules::RulePattern;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn at(t0: Instant, s: f64) -> Instant {
    t0 + Duration::from_secs_f64(s)
}

fn e164(text: &str) -> E164 {
    E164::from_digits(text.trim_start_matches('+')).expect("test number")
}

fn num(text: &str) -> CallerNumber {
    CallerNumber::E164(e164(text))
}

fn tenant(name: &str) -> Tenant {
    Tenant::new(name).expect("test tenant")
}

fn from(number: &CallerNumber) -> Observed<'_> {
    Observed {
        number,
        did: None,
        tenant: None,
    }
}

fn to<'a>(number: &'a CallerNumber, did: &'a CallerNumber) -> Observed<'a> {
    Observed {
        number,
        did: Some(did),
        tenant: None,
    }
}

fn per_caller(threshold: u32, window: u64, ban: u64) -> FloodSettings {
    FloodSettings {
        per_caller: Some(RateLimit {
            window: secs(window),
            threshold,
            ban: secs(ban),
        }),
        ..FloodSettings::default()
    }
}

fn range(k: u8, threshold: u32) -> RangeLimit {
    RangeLimit {
        suffix_digits: k,
        window: secs(60),
        threshold,
        ban: secs(3600),
    }
}

fn fan_out(range_suffix_digits: Option<u8>) -> FloodSettings {
    FloodSettings {
        fan_out: Some(FanOutLimit {
            window: secs(300),
            distinct_targets: 10,
            ban: secs(3600),
            range_suffix_digits,
        }),
        ..FloodSettings::default()
    }
}

fn target(calls_per_second: f64, window: u64, hold_down: u64) -> FloodSettings {
    FloodSettings {
        target: Some(TargetLimit {
            window: secs(window),
            calls_per_second,
            hold_down: secs(hold_down),
        }),
        ..FloodSettings::default()
    }
}

/// Every detector at the limits the brief gives as examples.
fn everything(max_tracked: usize) -> FloodSettings {
    FloodSettings {
        per_caller: Some(RateLimit {
            window: secs(60),
            threshold: 5,
            ban: secs(3600),
        }),
        ranges: vec![range(2, 20), range(4, 20)],
        fan_out: Some(FanOutLimit {
            window: secs(300),
            distinct_targets: 10,
            ban: secs(3600),
            range_suffix_digits: None,
        }),
        target: Some(TargetLimit {
            window: secs(10),
            calls_per_second: 5.0,
            hold_down: secs(60),
        }),
        max_tracked,
    }
}

/// Deterministic test randomness (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn per_caller_fires_on_threshold_plus_one_only() {
    let t0 = Instant::now();
    let mut det = FloodDetector::new(per_caller(5, 60, 600));
    let caller = num("+74951234567");
    for i in 0..5 {
        assert!(det.observe(&from(&caller), at(t0, f64::from(i))).is_empty());
    }
    let sixth = det.observe(&from(&caller), at(t0, 5.0));
    assert_eq!(
        sixth.bans,
        vec![Ban {
            detector: Detector::PerCaller,
            rule: BanRule::Number(e164("+74951234567")),
            duration: secs(600),
            reason: "flood: 6 calls in 60s from +74951234567".into(),
        }]
    );
    assert_eq!(sixth.bans[0].rule.rule_text(), "+74951234567");
    // Reported once: the store write is not repeated on every further call.
    for i in 6..50 {
        assert!(det.observe(&from(&caller), at(t0, f64::from(i))).is_empty());
    }
    // Another number is counted apart.
    let other = num("+74951234568");
    assert!(det.observe(&from(&other), at(t0, 50.0)).is_empty());
}

#[test]
fn per_caller_window_slides() {
    let t0 = Instant::now();
    let caller = num("+74951234567");

    // Five calls at 0..4 s, the sixth just inside the window (59 s later than the first).
    let mut det = FloodDetector::new(per_caller(5, 60, 600));
    for i in 0..5 {
        assert!(det.observe(&from(&caller), at(t0, f64::from(i))).is_empty());
    }
    assert_eq!(det.observe(&from(&caller), at(t0, 59.0)).bans.len(), 1);

    // The same, the sixth at 60 s: the first call has left the window.
    let mut det = FloodDetector::new(per_caller(5, 60, 600));
    det.observe(&from(&caller), at(t0, 0.0));
    for i in 1..5 {
        assert!(det.observe(&from(&caller), at(t0, f64::from(i))).is_empty());
    }
    assert!(det.observe(&from(&caller), at(t0, 60.0)).is_empty());
    // ...but the second (1 s) has not, so one more call at 60.5 makes six.
    assert_eq!(det.observe(&from(&caller), at(t0, 60.5)).bans.len(), 1);

    // Spread out: calls every 10 s never put more than 5 in one 60 s window... until they
    // come faster.
    let mut det = FloodDetector::new(per_caller(5, 60, 600));
    for i in 0..20 {
        assert!(
            det.observe(&from(&caller), at(t0, 12.0 * f64::from(i)))
                .is_empty()
        );
    }
    let bans: usize = (0..6)
        .map(|i| {
            let t = 240.0 + 10.0 * f64::from(i);
            det.observe(&from(&caller), at(t0, t)).bans.len()
        })
        .sum();
    assert_eq!(bans, 1);
}

#[test]
fn per_caller_window_counts_whole_seconds() {
    // Documented semantics: a call counts while floor(now) - floor(call) < window (seconds
    // since the first instant seen), so five calls at 0.5..0.9 s still count at 59.99 s and
    // no longer at 60.0 s.
    let t0 = Instant::now();
    let caller = num("+74951234567");
    for (sixth, bans) in [(59.99, 1), (60.0, 0)] {
        let mut det = FloodDetector::new(per_caller(5, 60, 600));
        // Another caller fixes the epoch at t0.
        det.observe(&from(&num("+15550000000")), t0);
        for i in 0..5 {
            det.observe(&from(&caller), at(t0, 0.5 + f64::from(i) * 0.1));
        }
        let found = det.observe(&from(&caller), at(t0, sixth));
        assert_eq!(found.bans.len(), bans, "sixth call at {sixth}");
    }
}

#[test]
fn per_caller_refires_only_after_the_ban() {
    let t0 = Instant::now();
    let mut det = FloodDetector::new(per_caller(5, 60, 120));
    let caller = num("+74951234567");
    let mut bans_at = Vec::new();
    for s in 0..=130 {
        if !det
            .observe(&from(&caller), at(t0, f64::from(s)))
            .bans
            .is_empty()
        {
            bans_at.push(s);
        }
    }
    // First ban on the sixth call; the next only when 120 s have passed.
    assert_eq!(bans_at, vec![5, 125]);
}

#[test]
fn range_k2_trips_while_each_number_stays_under_per_caller() {
    let t0 = Instant::now();
    let mut det = FloodDetector::new(FloodSettings {
        ranges: vec![range(2, 20)],
        ..per_caller(5, 60, 3600)
    });
    let mut bans = Vec::new();
    for i in 0..30u64 {
        let caller = num(&format!("+749512345{i:02}"));
        let found = det.observe(&from(&caller), at(t0, i as f64));
        if !found.bans.is_empty() {
            bans.push((i, found.bans));
        }
    }
    assert_eq!(bans.len(), 1, "{bans:?}");
    let (i, found) = &bans[0];
    assert_eq!(*i, 20, "on the 21st call");
    assert_eq!(found.len(), 1);
    let ban = &found[0];
    assert_eq!(ban.detector, Detector::Range);
    assert_eq!(ban.rule.rule_text(), "+749512345XX");
    assert_eq!(ban.reason, "flood: 21 calls in 60s from range +749512345XX");
    assert!(ban.rule.matches(e164("+74951234599")));
    assert!(!ban.rule.matches(e164("+749512345001")));
    assert!(!ban.rule.matches(e164("+74951234600")));
}

#[test]
fn range_k4_trips_with_its_mask() {
    let t0 = Instant::now();
    let mut det = FloodDetector::new(FloodSettings {
        ranges: vec![range(2, 20), range(4, 20)],
        ..per_caller(5, 60, 3600)
    });
    let mut bans = Vec::new();
    for i in 0..30u64 {
        // Spread over the 10,000-block so no 100-block gets more than one call.
        let caller = num(&format!("+7495123{:04}", i * 331));
        bans.extend(det.observe(&from(&caller), at(t0, i as f64)).bans);
    }
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].detector, Detector::Range);
    assert_eq!(bans[0].rule.rule_text(), "+7495123XXXX");
}

#[test]
fn range_mask_is_our_rule_syntax_and_fixed_length() {
    let normalizer = Normalizer::default();
    let rule = BanRule::Range(NumberRange::of(e164("+74951234567"), 2).expect("range"));
    let pattern = RulePattern::parse(&rule.rule_text(), &normalizer).expect("parses");
    assert_eq!(pattern.to_string(), "+749512345XX");
    assert_eq!(pattern.kind(), "mask");
    for (number, inside) in [
        ("+74951234500", true),
        ("+74951234599", true),
        ("+749512345001", false),
        ("+7495123450", false),
        ("+74951234600", false),
    ] {
        assert_eq!(pattern.matches(&num(number)), inside, "{number}");
        assert_eq!(rule.matches(e164(number)), inside, "{number}");
    }
}

#[test]
fn number_ranges_keep_enough_fixed_digits() {
    let n = e164("+74951234567");
    assert_eq!(NumberRange::of(n, 0), None);
    assert_eq!(NumberRange::of(n, 7), None);
    let r = NumberRange::of(n, 6).expect("K=6");
    assert_eq!(r.to_string(), "+74951XXXXXX");
    assert_eq!(NumberRange::from_parts(r.prefix(), 6), Some(r));
    // A short number: a range must never cover a whole country code.
    assert_eq!(NumberRange::of(e164("+2901234"), 4), None);
    assert!(NumberRange::of(e164("+2901234"), 3).is_some());
    assert_eq!(NumberRange::from_parts(0, 2), None);
    assert_eq!(NumberRange::from_parts(749, 2), None);
    assert_eq!(NumberRange::from_parts(1_000_000_000_000_000, 2), None);
}

#[test]
fn fan_out_counts_distinct_dids() {
    let t0 = Instant::now();
    let caller = num("+74951234567");
    let dids: Vec<CallerNumber> = (0..11).map(|i| num(&format!("+7812555{i:04}"))).collect();

    let mut det = FloodDetector::new(fan_out(None));
    let mut bans = Vec::new();
    for (i, did) in dids.iter().enumerate() {
        let found = det.observe(&to(&caller, did), at(t0, 25.0 * i as f64));
        bans.extend(found.bans.into_iter().map(|b| (i, b)));
    }
    assert_eq!(bans.len(), 1);
    let (i, ban) = &bans[0];
    assert_eq!(*i, 10, "on the 11th distinct DID");
    assert_eq!(ban.detector, Detector::FanOut);
    assert_eq!(ban.rule, BanRule::Number(e164("+74951234567")));
    assert_eq!(
        ban.reason,
        "flood: +74951234567 called 11 destinations in 300s"
    );

    // The same DID eleven times is per-caller's business, not fan-out's.
    let mut det = FloodDetector::new(fan_out(None));
    for i in 0..11 {
        assert!(
            det.observe(&to(&caller, &dids[0]), at(t0, f64::from(i)))
                .is_empty()
        );
    }

    // Eleven DIDs over more than the window: the early ones have left it.
    let mut det = FloodDetector::new(fan_out(None));
    for (i, did) in dids.iter().enumerate() {
        let t = 31.0 * i as f64;
        assert!(det.observe(&to(&caller, did), at(t0, t)).is_empty());
    }
}

#[test]
fn fan_out_counts_tenants_and_ranges() {
    let t0 = Instant::now();
    let caller = num("+74951234567");
    let tenants: Vec<Tenant> = (0..11).map(|i| tenant(&format!("t{i}"))).collect();
    let mut det = FloodDetector::new(fan_out(None));
    let mut bans = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        let call = Observed {
            number: &caller,
            did: None,
            tenant: Some(t),
        };
        bans.extend(det.observe(&call, at(t0, i as f64)).bans);
    }
    assert_eq!(bans.len(), 1);

    // One DID reached through different tenants is different destinations too.
    let did = num("+78125550000");
    let mut det = FloodDetector::new(fan_out(None));
    let mut bans = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        let call = Observed {
            number: &caller,
            did: Some(&did),
            tenant: Some(t),
        };
        bans.extend(det.observe(&call, at(t0, i as f64)).bans);
    }
    assert_eq!(bans.len(), 1);

    // Per range: eleven numbers of one 100-block, one DID each.
    let mut det = FloodDetector::new(fan_out(Some(2)));
    let mut bans = Vec::new();
    for i in 0..11 {
        let caller = num(&format!("+749512345{i:02}"));
        let did = num(&format!("+7812555{i:04}"));
        bans.extend(det.observe(&to(&caller, &did), at(t0, f64::from(i))).bans);
    }
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].rule.rule_text(), "+749512345XX");
    assert_eq!(bans[0].detector, Detector::FanOut);
}

#[test]
fn target_attack_starts_holds_and_ends() {
    let t0 = Instant::now();
    let mut det = FloodDetector::new(target(5.0, 10, 30));
    let did = num("+78125550000");
    let acme = tenant("acme");
    let anonymous = CallerNumber::Anonymous;
    let call = Observed {
        number: &anonymous,
        did: Some(&did),
        tenant: Some(&acme),
    };
    // 10 calls/s for 10 s, from withheld numbers: they count toward the target rate.
    let start = at(t0, 50.0 * 0.1);
    let mut started = Vec::new();
    for i in 0..100 {
        let t = f64::from(i) * 0.1;
        let found = det.observe(&call, at(t0, t));
        assert!(found.bans.is_empty());
        started.extend(found.attacks.into_iter().map(|a| (i, a)));
    }
    // Both the DID and the tenant go above 5/s (50 per 10 s) on the 51st call.
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(started.iter().all(|(i, _)| *i == 50));
    assert!(matches!(
        &started[0].1,
        AttackEvent::Started { target: TargetKey::Did(d), rate } if *d == did && *rate > 5.0
    ));
    assert!(matches!(
        &started[1].1,
        AttackEvent::Started { target: TargetKey::Tenant(t), .. } if *t == acme
    ));
    let state = det
        .under_attack(Some(&did), Some(&acme), at(t0, 10.0))
        .expect("under attack");
    assert_eq!(state.target, TargetKind::Did);
    assert_eq!(state.since, start);
    assert!(state.rate > 5.0);
    let other = num("+78125559999");
    assert_eq!(
        det.under_attack(Some(&other), Some(&acme), at(t0, 10.0))
            .map(|s| s.target),
        Some(TargetKind::Tenant)
    );
    assert_eq!(det.under_attack(Some(&other), None, at(t0, 10.0)), None);

    // The calls stop at 9.9 s. The rate is 50 per 10 s (not above) from 14 s; the hold-down
    // keeps the state until 44 s.
    assert!(det.expire(at(t0, 20.0)).is_empty());
    let held = det
        .under_attack(Some(&did), None, at(t0, 43.9))
        .expect("held down");
    assert_eq!(held.rate, 0.0);
    assert!(det.under_attack(Some(&did), None, at(t0, 44.0)).is_none());
    let ended = det.expire(at(t0, 44.0));
    assert_eq!(ended.attacks.len(), 2, "{ended:?}");
    assert!(ended.attacks.iter().all(|a| matches!(
        a,
        AttackEvent::Ended { since, .. } if *since == start
    )));
    assert!(det.expire(at(t0, 45.0)).is_empty());
}

/// The shared handle answers "no attack" without its lock while nothing is under attack, and
/// still sees an attack from the call that starts it to the expiry that ends it.
#[test]
fn shared_detector_skips_the_lock_only_while_no_attack_is_on() {
    let t0 = Instant::now();
    let det = SharedDetector::new(FloodDetector::new(target(5.0, 10, 30)));
    let did = num("+78125550000");
    let anonymous = CallerNumber::Anonymous;
    let call = Observed {
        number: &anonymous,
        did: Some(&did),
        tenant: None,
    };
    assert!(!det.attacks.load(Ordering::Acquire));
    for i in 0..50 {
        det.observe(&call, at(t0, f64::from(i) * 0.1));
        assert!(!det.attacks.load(Ordering::Acquire), "call {i}");
    }
    assert_eq!(det.under_attack(Some(&did), None, at(t0, 5.0)), None);
    // The 51st call starts the attack.
    assert_eq!(det.observe(&call, at(t0, 5.0)).attacks.len(), 1);
    assert!(det.attacks.load(Ordering::Acquire));
    assert!(det.under_attack(Some(&did), None, at(t0, 5.0)).is_some());
    // Held down until 45 s (above the limit until 15 s, then 30 s), ended by the expiry.
    assert!(det.expire(at(t0, 20.0)).is_empty());
    assert!(det.under_attack(Some(&did), None, at(t0, 20.0)).is_some());
    assert_eq!(det.expire(at(t0, 46.0)).attacks.len(), 1);
    assert!(!det.attacks.load(Ordering::Acquire));
    assert_eq!(det.under_attack(Some(&did), None, at(t0, 46.0)), None);
}

#[test]
fn target_attack_lasts_while_the_rate_stays_high() {
    let t0 = Instant::now();
    let mut det = FloodDetector::new(target(5.0, 10, 30));
    let did = num("+78125550000");
    let caller = CallerNumber::Anonymous;
    // 6 calls/s for 60 s: above the limit the whole time after the first 10 s.
    let mut events = Vec::new();
    for i in 0..360 {
        let found = det.observe(&to(&caller, &did), at(t0, f64::from(i) / 6.0));
        events.extend(found.attacks);
        events.extend(det.expire(at(t0, f64::from(i) / 6.0)).attacks);
    }
    assert_eq!(events.len(), 1, "started once, still going: {events:?}");
    // Then 1 call/s. At 61 s the window (52..61 s) holds 8 * 6 + 2 = 50 calls: no longer
    // above 5/s, so with the 30 s hold-down the attack ends at 91 s.
    let mut ended_at = None;
    for s in 60..120 {
        let now = at(t0, f64::from(s));
        let found = det.observe(&to(&caller, &did), now);
        if found
            .attacks
            .iter()
            .any(|a| matches!(a, AttackEvent::Ended { .. }))
        {
            ended_at.get_or_insert(s);
        }
        events.extend(found.attacks);
        assert_eq!(
            det.under_attack(Some(&did), None, now).is_some(),
            s < 91,
            "at {s}s"
        );
    }
    assert_eq!(ended_at, Some(91));
    assert_eq!(events.len(), 2, "{events:?}");
}

#[test]
fn target_exactly_at_the_limit_is_no_attack() {
    let t0 = Instant::now();
    let mut det = FloodDetector::new(target(5.0, 10, 30));
    let did = num("+78125550000");
    let caller = CallerNumber::Anonymous;
    for i in 0..500 {
        let found = det.observe(&to(&caller, &did), at(t0, f64::from(i) / 5.0));
        assert!(found.is_empty(), "call {i}: {found:?}");
    }
}

#[test]
fn only_e164_callers_count_toward_bans() {
    let t0 = Instant::now();
    let mut det = FloodDetector::new(everything(1000));
    let callers = [
        CallerNumber::Anonymous,
        CallerNumber::Local("101".into()),
        CallerNumber::Invalid("abc".into()),
    ];
    let dids: Vec<CallerNumber> = (0..20).map(|i| num(&format!("+7812555{i:04}"))).collect();
    for i in 0..600 {
        let caller = &callers[i % callers.len()];
        let did = &dids[i % dids.len()];
        // 1 call/s overall: no target attack either.
        let found = det.observe(&to(caller, did), at(t0, i as f64));
        assert!(found.is_empty(), "{found:?}");
    }
}

#[test]
fn normal_traffic_triggers_nothing() {
    let t0 = Instant::now();
    let mut det = FloodDetector::new(everything(100_000));
    let mut rng = Rng(7);
    let dids: Vec<CallerNumber> = (0..50).map(|i| num(&format!("+7495777{i:04}"))).collect();
    let tenants: Vec<Tenant> = (0..5).map(|i| tenant(&format!("tenant{i}"))).collect();
    let prefixes = ["7495", "7812", "7916", "7926", "7903"];
    // 10,000 distinct callers, each calling once or twice at random times in one hour.
    let mut calls = Vec::new();
    for _ in 0..10_000 {
        let prefix = prefixes[rng.below(prefixes.len() as u64) as usize];
        let caller = num(&format!("+{prefix}{:07}", rng.below(10_000_000)));
        for _ in 0..=rng.below(2) {
            let d = rng.below(dids.len() as u64) as usize;
            let ms = rng.below(3_600_000);
            calls.push((ms, caller.clone(), d));
        }
    }
    calls.sort_by_key(|c| c.0);
    for (ms, caller, d) in &calls {
        let now = t0 + Duration::from_millis(*ms);
        let call = Observed {
            number: caller,
            did: Some(&dids[*d]),
            tenant: Some(&tenants[*d % tenants.len()]),
        };
        let found = det.observe(&call, now);
        assert!(found.is_empty(), "{found:?}");
        assert!(det.under_attack(call.did, call.tenant, now).is_none());
        if ms % 1000 == 0 {
            assert!(det.expire(now).is_empty());
        }
    }
    assert_eq!(det.evicted(), 0);
}

#[test]
fn memory_stays_bounded_and_expire_clears_idle_state() {
    let t0 = Instant::now();
    let max = 10_000;
    let mut det = FloodDetector::new(everything(max));
    assert_eq!(det.capacity(), 5 * max);
    let dids: Vec<CallerNumber> = (0..50).map(|i| num(&format!("+7495777{i:04}"))).collect();
    let mut rng = Rng(11);
    let mut last = t0;
    // 200,000 callers overflow a 10,000-key bound twenty times over (debug builds run this
    // in every `cargo test`, so it stays small enough to be quick).
    for i in 0..200_000u64 {
        // 1,000 calls/s from distinct random numbers.
        let caller = num(&format!("+79{:09}", rng.below(1_000_000_000)));
        last = t0 + Duration::from_millis(i);
        let did = &dids[(i % 50) as usize];
        det.observe(&to(&caller, did), last);
        if i % 1000 == 0 {
            det.expire(last);
        }
        assert!(det.tracked() <= det.capacity());
        if i % 4096 == 0 {
            let c = det.per_caller.as_ref().expect("on");
            assert!(c.table.len() <= max && c.bans.len() <= max);
            for r in &det.ranges {
                assert!(r.table.len() <= max && r.bans.len() <= max);
            }
            assert!(det.fan_out.as_ref().expect("on").table.len() <= max);
        }
    }
    assert!(
        det.evicted() > 0,
        "60 s of callers do not fit in 10,000 keys"
    );
    // Still inside every window: nothing is idle yet.
    det.expire(last);
    assert!(det.tracked() > 0);
    // Past the longest window and hold-down, everything is idle.
    det.expire(last + secs(301));
    assert_eq!(det.tracked(), 0);
    // Freed rows are reused.
    let caller = num("+74951234567");
    det.observe(&from(&caller), last + secs(302));
    assert_eq!(det.tracked(), 3);
}

#[test]
fn expire_keeps_live_state() {
    let t0 = Instant::now();
    let mut det = FloodDetector::new(per_caller(5, 60, 600));
    let caller = num("+74951234567");
    for i in 0..3 {
        det.observe(&from(&caller), at(t0, f64::from(i)));
    }
    det.expire(at(t0, 30.0));
    assert_eq!(det.tracked(), 1);
    // The state survived: three more calls make six.
    det.observe(&from(&caller), at(t0, 31.0));
    det.observe(&from(&caller), at(t0, 32.0));
    assert_eq!(det.observe(&from(&caller), at(t0, 33.0)).bans.len(), 1);
    det.expire(at(t0, 93.0));
    assert_eq!(det.tracked(), 0);
}

#[test]
fn merge_remote_adds_to_local_counts() {
    let t0 = Instant::now();
    let mut det = FloodDetector::new(FloodSettings {
        ranges: vec![range(2, 20)],
        ..everything(1000)
    });
    let caller = num("+74951234567");
    for i in 0..3 {
        assert!(det.observe(&from(&caller), at(t0, f64::from(i))).is_empty());
    }
    let key = FloodKey::Caller(e164("+74951234567"));
    assert_eq!(key.to_string(), "caller:+74951234567");
    assert!(det.merge_remote(&key, 2, at(t0, 3.0)).is_empty());
    let found = det.merge_remote(&key, 1, at(t0, 4.0));
    assert_eq!(found.bans.len(), 1);
    assert_eq!(found.bans[0].rule, BanRule::Number(e164("+74951234567")));
    // Reported once, whichever side the next calls come from.
    assert!(det.merge_remote(&key, 10, at(t0, 5.0)).is_empty());
    assert!(det.observe(&from(&caller), at(t0, 6.0)).bans.is_empty());
    assert!(det.merge_remote(&key, 0, at(t0, 7.0)).is_empty());

    let block = NumberRange::of(e164("+78121234567"), 2).expect("range");
    let key = FloodKey::Range(block);
    assert_eq!(key.to_string(), "range:+781212345XX");
    let found = det.merge_remote(&key, 21, at(t0, 8.0));
    assert_eq!(found.bans.len(), 1);
    assert_eq!(found.bans[0].rule.rule_text(), "+781212345XX");

    let did = num("+78125550000");
    let key = FloodKey::Target(TargetKey::Did(did.clone()));
    assert_eq!(key.to_string(), "did:+78125550000");
    // 50 calls in 10 s is exactly 5/s: not yet above.
    assert!(det.merge_remote(&key, 50, at(t0, 9.0)).is_empty());
    let anonymous = CallerNumber::Anonymous;
    let found = det.observe(&to(&anonymous, &did), at(t0, 9.5));
    assert!(matches!(&found.attacks[..], [AttackEvent::Started { .. }]));
    let found = det.observe(&to(&anonymous, &did), at(t0, 9.6));
    assert!(found.is_empty());
    let more = det.merge_remote(&key, 100, at(t0, 9.7));
    assert!(more.is_empty());
    assert!(det.under_attack(Some(&did), None, at(t0, 10.0)).is_some());
}

#[test]
fn settings_are_validated() {
    assert_eq!(everything(10).validate(), Ok(()));
    assert_eq!(FloodSettings::default().validate(), Ok(()));
    let bad = |f: fn(&mut FloodSettings)| {
        let mut s = everything(10);
        f(&mut s);
        s.validate().expect_err("invalid")
    };
    assert_eq!(bad(|s| s.max_tracked = 0), FloodError::NoRoom);
    assert!(matches!(
        bad(|s| s.ranges[0].suffix_digits = 7),
        FloodError::SuffixDigits { value: 7, .. }
    ));
    assert!(matches!(
        bad(|s| s.per_caller.as_mut().expect("on").window = Duration::ZERO),
        FloodError::ZeroWindow {
            detector: Detector::PerCaller
        }
    ));
    assert!(matches!(
        bad(|s| s.per_caller.as_mut().expect("on").threshold = 0),
        FloodError::ZeroThreshold { .. }
    ));
    assert!(matches!(
        bad(|s| s.ranges[1].ban = Duration::ZERO),
        FloodError::ZeroBan {
            detector: Detector::Range
        }
    ));
    assert!(matches!(
        bad(|s| {
            let r = &mut s.ranges[0];
            r.threshold = 1000;
            r.window = Duration::from_secs(3600);
        }),
        FloodError::TooMuchState { cells: 1001, .. }
    ));
    assert!(matches!(
        bad(|s| s.fan_out.as_mut().expect("on").distinct_targets = 500),
        FloodError::TooMuchState { .. }
    ));
    assert!(matches!(
        bad(|s| s.target.as_mut().expect("on").calls_per_second = f64::NAN),
        FloodError::BadRate { .. }
    ));
    assert!(matches!(
        bad(|s| s.target.as_mut().expect("on").window = Duration::from_secs(1000)),
        FloodError::TooMuchState {
            detector: Detector::Target,
            ..
        }
    ));
    // A long window with a small threshold needs little state.
    let mut s = everything(10);
    s.ranges[0].window = Duration::from_secs(86_400);
    assert_eq!(s.validate(), Ok(()));
    // new() never panics on invalid settings.
    let mut s = everything(0);
    s.ranges[0].suffix_digits = 0;
    s.target.as_mut().expect("on").calls_per_second = -1.0;
    let det = FloodDetector::new(s);
    assert_eq!(det.capacity(), 3);
}

#[test]
fn labels_are_stable() {
    let labels: Vec<_> = Detector::ALL.iter().map(|d| d.as_str()).collect();
    assert_eq!(labels, ["per_caller", "range", "fan_out", "target"]);
    assert_eq!(TargetKind::Tenant.as_str(), "tenant");
    assert_eq!(TargetKey::Tenant(tenant("Acme")).to_string(), "tenant:acme");
}

#[test]
fn shared_detector_is_one_detector() {
    let t0 = Instant::now();
    let shared = SharedDetector::new(FloodDetector::new(per_caller(1, 60, 60)));
    let other = shared.clone();
    let caller = num("+74951234567");
    assert!(shared.observe(&from(&caller), t0).is_empty());
    assert_eq!(other.observe(&from(&caller), t0).bans.len(), 1);
    assert_eq!(other.tracked(), 1);
    assert!(shared.expire(at(t0, 61.0)).is_empty());
    assert_eq!(other.tracked(), 0);
}

#[test]
fn suppress_stays_bounded() {
    let mut s = table::Suppress::new(3);
    for key in 0..10 {
        s.insert(key, 100, 0);
        assert!(s.len() <= 3);
    }
    assert!(s.active(9, 99));
    assert!(!s.active(0, 0), "the oldest was forgotten to make room");
    s.expire(100);
    assert_eq!(s.len(), 0);
}

/// One call (or remote count) of a random run, for the reference counts.
struct Logged {
    at: Instant,
    caller: usize,
    count: u32,
    remote: bool,
    destination: Option<(Option<usize>, Option<usize>)>,
}

/// One step of a random run.
#[derive(Debug, Clone)]
enum Op {
    Call {
        caller: usize,
        did: Option<usize>,
        tenant: Option<usize>,
    },
    Remote {
        caller: usize,
        count: u32,
    },
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..6usize, proptest::option::of(0..6usize), proptest::option::of(0..3usize))
            .prop_map(|(caller, did, tenant)| Op::Call { caller, did, tenant }),
        1 => (0..6usize, 0..4u32).prop_map(|(caller, count)| Op::Remote { caller, count }),
        1 => Just(Op::Expire),
    ]
}

const CALLERS: [&str; 6] = [
    "+74951234500",
    "+74951234501",
    "+74951234517",
    "+74951234620",
    "+2901234",
    "+15551234567",
];

/// Tight limits so random runs hit them often.
fn tight(max_tracked: usize) -> FloodSettings {
    FloodSettings {
        per_caller: Some(RateLimit {
            window: secs(10),
            threshold: 3,
            ban: secs(20),
        }),
        ranges: vec![RangeLimit {
            suffix_digits: 2,
            window: secs(10),
            threshold: 5,
            ban: secs(20),
        }],
        fan_out: Some(FanOutLimit {
            window: secs(20),
            distinct_targets: 3,
            ban: secs(20),
            range_suffix_digits: None,
        }),
        target: Some(TargetLimit {
            window: secs(5),
            calls_per_second: 1.0,
            hold_down: secs(5),
        }),
        max_tracked,
    }
}

proptest! {
    /// observe, merge_remote and expire never panic, and every ban is backed by more calls
    /// (or destinations) than the limit inside one real window-long interval, whatever the
    /// timing and even when the key bound forces evictions.
    #[test]
    fn bans_are_always_earned(
        steps in proptest::collection::vec((op(), 0..4000u64), 1..200),
        max_tracked in 1..8usize,
    ) {
        let t0 = Instant::now();
        let mut det = FloodDetector::new(tight(max_tracked));
        let numbers: Vec<CallerNumber> = CALLERS.iter().map(|c| num(c)).collect();
        let dids: Vec<CallerNumber> = (0..6).map(|i| num(&format!("+7812555000{i}"))).collect();
        let tenants: Vec<Tenant> = (0..3).map(|i| tenant(&format!("t{i}"))).collect();
        let mut log: Vec<Logged> = Vec::new();
        let mut now = t0;
        for (step, gap_ms) in steps {
            now += Duration::from_millis(gap_ms);
            let found = match step {
                Op::Call { caller, did, tenant } => {
                    let destination = (did.is_some() || tenant.is_some()).then_some((did, tenant));
                    log.push(Logged { at: now, caller, count: 1, remote: false, destination });
                    let call = Observed {
                        number: &numbers[caller],
                        did: did.map(|d| &dids[d]),
                        tenant: tenant.map(|t| &tenants[t]),
                    };
                    let found = det.observe(&call, now);
                    if let Some(state) = det.under_attack(call.did, call.tenant, now) {
                        prop_assert!(state.rate > 0.0 || state.since <= now);
                    }
                    found
                }
                Op::Remote { caller, count } => {
                    log.push(Logged { at: now, caller, count, remote: true, destination: None });
                    let key = FloodKey::Caller(e164(CALLERS[caller]));
                    det.merge_remote(&key, count, now)
                }
                Op::Expire => det.expire(now),
            };
            prop_assert!(det.tracked() <= det.capacity());
            let recent = |window: u64| {
                log.iter().filter(move |l| now.duration_since(l.at) < secs(window))
            };
            for ban in &found.bans {
                prop_assert_ne!(ban.detector, Detector::Target);
                let hits = |l: &&Logged| ban.rule.matches(e164(CALLERS[l.caller]));
                match ban.detector {
                    Detector::PerCaller => {
                        let calls: u32 = recent(10).filter(hits).map(|l| l.count).sum();
                        prop_assert!(calls > 3, "{:?} after {} calls", ban, calls);
                    }
                    Detector::Range => {
                        // Remote counts are per caller only.
                        let calls: u32 =
                            recent(10).filter(hits).filter(|l| !l.remote).map(|l| l.count).sum();
                        prop_assert!(calls > 5, "{:?} after {} calls", ban, calls);
                    }
                    _ => {
                        let distinct: HashSet<_> =
                            recent(20).filter(hits).filter_map(|l| l.destination).collect();
                        prop_assert!(distinct.len() > 3, "{:?} after {:?}", ban, distinct);
                    }
                }
            }
        }
    }

    /// On whole-second instants the per-caller detector is an exact sliding window: it bans
    /// exactly when a reference model does (more than the threshold in the last `window`
    /// seconds, not already banned).
    #[test]
    fn per_caller_matches_a_sliding_window_model(
        calls in proptest::collection::vec((0..3usize, 0..5u64), 1..300),
        threshold in 1..6u32,
        window in 1..15u64,
        ban in 1..30u64,
    ) {
        let t0 = Instant::now();
        let mut det = FloodDetector::new(per_caller(threshold, window, ban));
        let mut log: Vec<(u64, usize)> = Vec::new();
        let mut banned_until = [0u64; 3];
        let mut s = 0;
        for (caller, gap) in calls {
            s += gap;
            log.push((s, caller));
            let count = log.iter().filter(|&&(t, c)| c == caller && s - t < window).count();
            let expected = count > threshold as usize && s >= banned_until[caller];
            if expected {
                banned_until[caller] = s + ban;
            }
            let number = num(CALLERS[caller]);
            let found = det.observe(&from(&number), t0 + secs(s));
            prop_assert_eq!(found.bans.len(), usize::from(expected), "caller {} at {}s", caller, s);
        }
    }
}
