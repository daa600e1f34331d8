//! Flood defense end to end: attack shapes through the real AGI server trip the detectors,
//! bans land in the store as expiring rules (seen by a second node through Redis), normal
//! traffic triggers nothing, and /metrics counts the detections.

use std::time::Duration;

use crate::support::{Redis, Server, agi_call, cli_ok, http_get, metric_sum, temp_store, within};

fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("callguard.toml");
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf8").to_owned()
}

#[test]
fn one_caller_calling_too_often_is_banned() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let server = Server::start(
        store,
        &[
            ("CALLGUARD_FLOOD__ENABLED", "true"),
            ("CALLGUARD_FLOOD__PER_CALLER__THRESHOLD", "3"),
        ],
    );
    for _ in 0..4 {
        assert_eq!(agi_call(server.agi, "84951234567").verdict(), "allow");
    }
    let took = within(Duration::from_secs(2), || {
        agi_call(server.agi, "+7 495 123-45-67").verdict() == "block"
    });
    assert!(took.is_some(), "the flooding caller was not banned");
    let call = agi_call(server.agi, "84951234567");
    assert!(
        call.vars["CALLGUARD_REASON"].starts_with("flood: "),
        "{call:?}"
    );
    let list = cli_ok(store, &["list", "--json"]);
    let rules: serde_json::Value = serde_json::from_str(&list).expect("json");
    let ban = &rules[0];
    assert_eq!(ban["rule"], "+74951234567");
    assert_eq!(ban["added_by"], "detector");
    assert!(ban["expires_at"].is_string(), "{ban}");
    let (_, text) = http_get(server.metrics.expect("metrics"), "/metrics");
    assert_eq!(
        metric_sum(
            &text,
            "callguard_flood_detections_total",
            &["detector=\"per_caller\""]
        ),
        1.0,
        "{text}"
    );
    // An ordinary rule: unblock lifts it.
    cli_ok(store, &["unblock", "+74951234567"]);
    let took = within(Duration::from_secs(2), || {
        agi_call(server.agi, "84951234567").verdict() == "allow"
    });
    assert!(took.is_some());
}

#[test]
fn a_range_attack_is_banned_as_a_mask_and_normal_traffic_is_not() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let cfg_dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_file(
        &cfg_dir,
        "[flood]\n[[flood.ranges]]\nsuffix_digits = 2\nwindow_s = 60\nthreshold = 5\nban_s = 600\n",
    );
    let server = Server::start(
        store,
        &[
            ("CALLGUARD_CONFIG", &cfg),
            ("CALLGUARD_FLOOD__ENABLED", "true"),
        ],
    );
    // Normal traffic: 40 different callers from all over, once each.
    for i in 0..40 {
        let caller = format!("+7{}{:07}", 900 + i, 1_234_567 + i * 7_919);
        assert_eq!(agi_call(server.agi, &caller).verdict(), "allow", "{caller}");
    }
    assert!(
        cli_ok(store, &["list"]).is_empty(),
        "normal traffic banned something"
    );
    // Six numbers of one hundred-block, each calling once.
    for i in 0..6 {
        agi_call(server.agi, &format!("849512345{i:02}"));
    }
    let took = within(Duration::from_secs(2), || {
        agi_call(server.agi, "84951234599").verdict() == "block"
    });
    assert!(took.is_some(), "the range was not banned");
    let list = cli_ok(store, &["list"]);
    assert!(
        list.contains("+749512345XX") && list.contains("detector"),
        "{list}"
    );
    assert_eq!(agi_call(server.agi, "84951234699").verdict(), "allow");
}

#[test]
fn bans_reach_a_second_node_through_redis() {
    let redis = Redis::start();
    let url = redis.url();
    let a = Server::start(
        &url,
        &[
            ("CALLGUARD_FLOOD__ENABLED", "true"),
            ("CALLGUARD_FLOOD__PER_CALLER__THRESHOLD", "2"),
        ],
    );
    let b = Server::start(&url, &[("CALLGUARD_FLOOD__ENABLED", "false")]);
    for _ in 0..3 {
        agi_call(a.agi, "84997654321");
    }
    let took = within(Duration::from_secs(2), || {
        agi_call(b.agi, "+74997654321").verdict() == "block"
    });
    assert!(took.is_some(), "node B did not enforce node A's ban");
    let ttl = redis.cmd(&["PTTL", "callguard:block:+74997654321"]);
    assert!(ttl.starts_with(':') && ttl != ":-1", "bans expire: {ttl}");
}

#[test]
fn a_did_under_attack_admits_only_allow_listed_callers() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    cli_ok(store, &["allow", "+74957000001", "--reason", "our courier"]);
    let server = Server::start(
        store,
        &[
            ("CALLGUARD_FLOOD__ENABLED", "true"),
            ("CALLGUARD_FLOOD__TARGET__ENABLED", "true"),
            ("CALLGUARD_FLOOD__TARGET__WINDOW_S", "2"),
            ("CALLGUARD_FLOOD__TARGET__CALLS_PER_SECOND", "5"),
            ("CALLGUARD_FLOOD__TARGET__HOLD_DOWN_S", "60"),
            ("CALLGUARD_FLOOD__TARGET__POLICY", "allow_listed_only"),
        ],
    );
    let to = |caller: &str, did: &str| {
        crate::support::agi_call_with(server.agi, &[("agi_callerid", caller), ("agi_dnid", did)])
    };
    // Before: anyone gets through.
    assert_eq!(to("84959990000", "4951112233").verdict(), "allow");
    // 30 calls from 30 numbers within well under 2 s: more than 5 calls/s to one DID.
    for i in 0..30 {
        to(&format!("8916{:07}", 1_000_000 + i * 37), "4951112233");
    }
    let refused = to("84959990001", "4951112233");
    assert_eq!(refused.verdict(), "block", "{refused:?}");
    assert!(
        refused.vars["CALLGUARD_REASON"].starts_with("did under attack"),
        "{refused:?}"
    );
    assert_eq!(refused.vars["CALLGUARD_RULE"], "under-attack");
    // Allow-listed callers still get through, and other DIDs are not affected.
    assert_eq!(to("84957000001", "4951112233").verdict(), "allow");
    assert_eq!(to("84959990002", "4951114455").verdict(), "allow");
    let (_, text) = http_get(server.metrics.expect("metrics"), "/metrics");
    assert_eq!(
        metric_sum(&text, "callguard_targets_under_attack", &["kind=\"did\""]),
        1.0,
        "{text}"
    );
    // Calls of the burst after the attack began were refused too; every call is counted once.
    let refused = metric_sum(
        &text,
        "callguard_calls_total",
        &["reason_kind=\"under_attack\""],
    );
    assert!((1.0..=31.0).contains(&refused), "{refused}");
    assert_eq!(metric_sum(&text, "callguard_calls_total", &[]), 34.0);
}

#[test]
fn one_caller_sweeping_many_dids_is_banned_by_fan_out() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let server = Server::start(
        store,
        &[
            ("CALLGUARD_FLOOD__ENABLED", "true"),
            ("CALLGUARD_FLOOD__PER_CALLER__THRESHOLD", "100"),
            ("CALLGUARD_FLOOD__FAN_OUT__DISTINCT_TARGETS", "5"),
        ],
    );
    let to = |did: &str| {
        crate::support::agi_call_with(
            server.agi,
            &[("agi_callerid", "84951234567"), ("agi_dnid", did)],
        )
    };
    // The same DID again and again is per-caller's business, not fan-out's.
    for _ in 0..8 {
        assert_eq!(to("4951110000").verdict(), "allow");
    }
    // Five distinct DIDs (the one above and four more) are within the limit...
    for i in 1..=4 {
        assert_eq!(to(&format!("495111000{i}")).verdict(), "allow");
    }
    assert!(cli_ok(store, &["list"]).is_empty(), "banned too early");
    // ...the sixth trips it.
    to("4951110005");
    let took = within(Duration::from_secs(2), || {
        to("4951110007").verdict() == "block"
    });
    assert!(took.is_some(), "fan-out did not ban the sweeping caller");
    let list = cli_ok(store, &["list"]);
    assert!(
        list.contains("destinations") && list.contains("detector"),
        "{list}"
    );
}

#[test]
fn a_flood_spread_over_two_nodes_is_counted_together_through_redis() {
    let redis = Redis::start();
    let url = redis.url();
    let env = [
        ("CALLGUARD_FLOOD__ENABLED", "true"),
        ("CALLGUARD_FLOOD__PER_CALLER__THRESHOLD", "5"),
    ];
    let a = Server::start(&url, &env);
    let b = Server::start(&url, &env);
    // Each node sees 3 calls: under its own threshold, over it together.
    for _ in 0..3 {
        assert_eq!(agi_call(a.agi, "84991112233").verdict(), "allow");
        assert_eq!(agi_call(b.agi, "84991112233").verdict(), "allow");
    }
    let took = within(Duration::from_secs(3), || {
        redis.cmd(&["EXISTS", "callguard:block:+74991112233"]) == ":1"
    });
    assert!(took.is_some(), "the split flood was not banned");
    let took = within(Duration::from_secs(2), || {
        agi_call(a.agi, "84991112233").verdict() == "block"
            && agi_call(b.agi, "84991112233").verdict() == "block"
    });
    assert!(took.is_some());
}

#[test]
fn mixed_traffic_bans_each_attack_shape_and_no_normal_caller() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let cfg_dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_file(
        &cfg_dir,
        "[flood.per_caller]\nthreshold = 4\n\
         [flood.fan_out]\ndistinct_targets = 4\n\
         [[flood.ranges]]\nsuffix_digits = 2\nwindow_s = 60\nthreshold = 6\nban_s = 600\n",
    );
    let server = Server::start(
        store,
        &[
            ("CALLGUARD_CONFIG", &cfg),
            ("CALLGUARD_FLOOD__ENABLED", "true"),
        ],
    );
    let call = |caller: &str, did: &str| {
        crate::support::agi_call_with(server.agi, &[("agi_callerid", caller), ("agi_dnid", did)])
            .verdict()
            .to_owned()
    };
    // Interleave: every attack call is followed by a normal caller (distinct numbers from
    // all over, each calling once or twice, to one of three DIDs).
    let mut normal = 0;
    let mut background = |call: &dyn Fn(&str, &str) -> String| {
        normal += 1;
        let caller = format!("+7{}{:07}", 900 + normal % 60, 2_000_000 + normal * 7_919);
        let did = ["4951110001", "4951110002", "4951110003"][normal as usize % 3];
        assert_eq!(
            call(&caller, did),
            "allow",
            "normal caller {caller} refused"
        );
    };
    for _ in 0..5 {
        call("84951110001", "4951110001"); // one caller, too often
        background(&call);
    }
    for i in 0..7 {
        call(&format!("849733311{i:02}"), "4951110002"); // one hundred-block, once each
        background(&call);
    }
    for i in 0..5 {
        call("84962220002", &format!("49511100{i:02}")); // one caller, many DIDs
        background(&call);
    }
    let took = within(Duration::from_secs(2), || {
        let list = cli_ok(store, &["list"]);
        list.contains("+74951110001")
            && list.contains("+749733311XX")
            && list.contains("+74962220002")
    });
    assert!(took.is_some(), "{}", cli_ok(store, &["list"]));
    let list = cli_ok(store, &["list"]);
    assert_eq!(
        list.lines().count(),
        3,
        "only the three attackers are banned:\n{list}"
    );
    assert!(list.lines().all(|l| l.contains("detector")), "{list}");
}
