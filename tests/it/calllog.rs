//! The call log end to end: blocked calls through the real server land in the embedded log
//! file or the Redis stream, and `callguard log` shows them.

use std::time::Duration;

use crate::support::{Redis, Server, agi_call, cli_ok, http_get, metric_sum, temp_store, within};

#[test]
fn blocked_calls_are_logged_in_the_embedded_store() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    cli_ok(
        store,
        &["block", "8 (495) 123-XX-XX", "--reason", "collectors"],
    );
    let server = Server::start(store, &[]);
    assert_eq!(
        agi_call(server.agi, "+7 (495) 123-45-67").verdict(),
        "block"
    );
    assert_eq!(agi_call(server.agi, "84957654321").verdict(), "allow");
    let took = within(Duration::from_secs(2), || {
        cli_ok(store, &["log", "--since", "10m"]).contains("+74951234567")
    });
    assert!(took.is_some(), "blocked call not in the log");
    let log = cli_ok(store, &["log"]);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "allowed calls are not logged by default: {log}"
    );
    assert!(
        lines[0].contains("\tblock\t+74951234567\t\"+7 (495) 123-45-67\"\t"),
        "{log}"
    );
    assert!(
        lines[0].contains("+7495123XXXX") && lines[0].contains("collectors"),
        "{log}"
    );
    let json = cli_ok(store, &["log", "--json"]);
    let record: serde_json::Value = serde_json::from_str(json.trim()).expect("json line");
    assert_eq!(record["rule"], "+7495123XXXX");
    assert_eq!(record["action"], "hangup 21");
    assert!(cli_ok(store, &["log", "--since", "0s"]).is_empty());

    // /metrics counts exactly the calls sent, by verdict and rule kind.
    let metrics = server.metrics.expect("metrics listener");
    assert_eq!(http_get(metrics, "/readyz").0, 200);
    let (status, text) = http_get(metrics, "/metrics");
    assert_eq!(status, 200);
    let calls = "callguard_calls_total";
    assert_eq!(metric_sum(&text, calls, &[]), 2.0, "{text}");
    assert_eq!(
        metric_sum(&text, calls, &["verdict=\"block\"", "reason_kind=\"mask\""]),
        1.0
    );
    assert_eq!(metric_sum(&text, calls, &["verdict=\"allow\""]), 1.0);
    assert_eq!(
        metric_sum(
            &text,
            "callguard_decision_seconds_count",
            &["protocol=\"agi\""]
        ),
        2.0
    );
    assert!(
        !text.contains("74951234567"),
        "no phone number in any label"
    );
}

#[test]
fn every_call_is_logged_to_redis_with_all_calls() {
    let redis = Redis::start();
    let url = redis.url();
    cli_ok(&url, &["block", "+74951234567", "--action", "tag"]);
    let server = Server::start(&url, &[("CALLGUARD_CALL_LOG__ALL_CALLS", "true")]);
    assert_eq!(agi_call(server.agi, "84951234567").verdict(), "tag");
    assert_eq!(agi_call(server.agi, "84957654321").verdict(), "allow");
    let took = within(Duration::from_secs(2), || {
        redis.cmd(&["XLEN", "callguard:calls"]) == ":2"
    });
    assert!(
        took.is_some(),
        "stream length {}",
        redis.cmd(&["XLEN", "callguard:calls"])
    );
    let log = cli_ok(&url, &["log"]);
    assert!(log.contains("\ttag\t+74951234567\t"), "{log}");
    assert!(log.contains("\tallow\t+74957654321\t"), "{log}");
}

#[test]
fn records_of_calls_made_while_redis_was_down_are_written_once_it_is_back() {
    let mut redis = Redis::start();
    let port = redis.port;
    let url = redis.url();
    cli_ok(&url, &["block", "+74951234567", "--reason", "collector"]);
    let server = Server::start(&url, &[]);
    redis.kill();
    // Decided from the snapshot while Redis is away; their records wait in the writer.
    for _ in 0..3 {
        assert_eq!(agi_call(server.agi, "84951234567").verdict(), "block");
    }
    std::thread::sleep(Duration::from_millis(500));
    let redis = Redis::start_on(port);
    let written = within(Duration::from_secs(15), || {
        redis.cmd(&["XLEN", "callguard:calls"]) == ":3"
    });
    assert!(
        written.is_some(),
        "call log records lost across the outage: XLEN {}",
        redis.cmd(&["XLEN", "callguard:calls"])
    );
}
