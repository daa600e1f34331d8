//! The Redis store end to end: CLI and plain redis-cli edits, TTL, Redis going away.

use std::time::Duration;

use crate::support::{Redis, Server, agi_call, agi_verdict_within, cli, cli_ok, within};

#[test]
fn cli_block_and_redis_cli_edit_in_a_third_format() {
    let redis = Redis::start();
    let url = redis.url();
    cli_ok(
        &url,
        &["block", "+7 (495) 123-45-67", "--reason", "collectors"],
    );
    assert!(
        redis
            .cmd(&["EXISTS", "callguard:block:+74951234567"])
            .ends_with('1')
    );
    let server = Server::start(&url, &[]);
    assert_eq!(agi_call(server.agi, "84951234567").verdict(), "block");

    // A plain redis-cli edit, number typed in yet another format.
    assert_eq!(
        redis.cmd(&["SET", "callguard:block:8 (812) 333-22-11", "spam"]),
        "+OK"
    );
    let took = within(Duration::from_secs(5), || {
        agi_call(server.agi, "+78123332211").verdict() == "block"
    });
    assert!(took.is_some(), "redis-cli SET not seen");
    assert_eq!(
        agi_call(server.agi, "78123332211").vars["CALLGUARD_REASON"],
        "spam"
    );

    // DEL through redis-cli, and unblock through the CLI (finds the odd spelling).
    assert!(
        redis
            .cmd(&["DEL", "callguard:block:8 (812) 333-22-11"])
            .ends_with('1')
    );
    assert!(agi_verdict_within(
        server.agi,
        "+78123332211",
        "allow",
        Duration::from_secs(5)
    ));
    assert_eq!(
        redis.cmd(&["SET", "callguard:block:7-495-123-45-67", "dup"]),
        "+OK"
    );
    let out = cli_ok(&url, &["unblock", "84951234567"]);
    assert!(out.contains("removed"), "{out}");
    // Every spelling is gone (the only key left is the call log stream).
    assert_eq!(
        redis.cmd(&[
            "EXISTS",
            "callguard:block:+74951234567",
            "callguard:block:7-495-123-45-67",
            "callguard:block:8 (812) 333-22-11",
        ]),
        ":0"
    );
    assert_eq!(redis.cmd(&["DBSIZE"]), ":1");
    assert_eq!(redis.cmd(&["TYPE", "callguard:calls"]), "+stream");
    assert!(agi_verdict_within(
        server.agi,
        "84951234567",
        "allow",
        Duration::from_secs(5)
    ));
}

#[test]
fn edits_propagate_without_keyspace_notifications() {
    let redis = Redis::start();
    let url = redis.url();
    // The server may not change the Redis config (managed Redis): it falls back to polling.
    let server = Server::start(
        &url,
        &[("CALLGUARD_REDIS__CONFIGURE_NOTIFICATIONS", "false")],
    );
    assert_eq!(
        redis.cmd(&["SET", "callguard:block:+44 20 8123 4567", "uk spam"]),
        "+OK"
    );
    // Polling runs every 500 ms; the budget is for a loaded CI machine, not a speed target.
    let took = within(Duration::from_secs(5), || {
        agi_call(server.agi, "+442081234567").verdict() == "block"
    });
    assert!(took.is_some(), "polling resync did not pick up the edit");
}

#[test]
fn ttl_expiry_and_allow_override() {
    let redis = Redis::start();
    let url = redis.url();
    let server = Server::start(&url, &[]);
    cli_ok(&url, &["block", "84951234567", "--ttl", "1s"]);
    assert!(agi_verdict_within(
        server.agi,
        "84951234567",
        "block",
        Duration::from_secs(5)
    ));
    assert!(
        agi_verdict_within(server.agi, "84951234567", "allow", Duration::from_secs(3)),
        "entry did not expire"
    );
    cli_ok(&url, &["block", "84951234567"]);
    assert_eq!(
        redis.cmd(&["SET", "callguard:allow:+7 495 123-45-67", "vip"]),
        "+OK"
    );
    assert!(agi_verdict_within(
        server.agi,
        "84951234567",
        "allow",
        Duration::from_secs(5)
    ));
    let list = cli_ok(&url, &["list", "--json"]);
    assert!(
        list.contains("\"list\": \"allow\"") && list.contains("\"list\": \"block\""),
        "{list}"
    );
}

#[test]
fn redis_down_decisions_continue_from_last_snapshot() {
    let mut redis = Redis::start();
    let url = redis.url();
    cli_ok(&url, &["block", "84951234567"]);
    let server = Server::start(&url, &[]);
    assert_eq!(agi_call(server.agi, "84951234567").verdict(), "block");
    redis.kill();
    for _ in 0..5 {
        assert_eq!(agi_call(server.agi, "+74951234567").verdict(), "block");
        assert_eq!(agi_call(server.agi, "+74950000000").verdict(), "allow");
    }
    // The CLI reports the outage clearly instead of hanging.
    let out = cli(&url, &["block", "1234567890"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("redis"));
    let _ = server.drain_logs();
}

/// Two hand-typed spellings of one number: deleting one keeps the rule (the other still
/// blocks); the servers record the spellings in the alias set, so `unblock` finds them even
/// when the keyspace is too big to SCAN (forced here with `spelling_scan_max_keys = 0`).
#[test]
fn spellings_are_tracked_so_unblock_finds_them_without_scanning() {
    let redis = Redis::start();
    let url = redis.url();
    let server = Server::start(&url, &[]);
    assert_eq!(
        redis.cmd(&["SET", "callguard:block:8 (999) 123-45-67", "first"]),
        "+OK"
    );
    assert_eq!(
        redis.cmd(&["SET", "callguard:block:7-999-123-45-67", "second"]),
        "+OK"
    );
    let blocked = || agi_call(server.agi, "+79991234567").verdict() == "block";
    assert!(within(Duration::from_secs(5), blocked).is_some());
    // The sync recorded both spellings under the canonical key.
    assert!(
        within(Duration::from_secs(5), || {
            redis.cmd(&["SCARD", "callguard:alias:block:+79991234567"]) == ":2"
        })
        .is_some(),
        "alias set: {}",
        redis.cmd(&["SMEMBERS", "callguard:alias:block:+79991234567"])
    );

    // One spelling gone: the other still blocks.
    assert!(
        redis
            .cmd(&["DEL", "callguard:block:8 (999) 123-45-67"])
            .ends_with('1')
    );
    assert!(
        within(Duration::from_secs(5), || redis
            .cmd(&["SCARD", "callguard:alias:block:+79991234567"])
            == ":1")
        .is_some()
    );
    assert!(blocked(), "the remaining spelling must keep blocking");

    // unblock without SCAN: the alias set alone leads to the hand-typed key.
    let out = crate::support::callguard()
        .args(["--store", &url, "unblock", "89991234567"])
        .env("CALLGUARD_REDIS__SPELLING_SCAN_MAX_KEYS", "0")
        .output()
        .expect("run callguard");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        redis.cmd(&["EXISTS", "callguard:block:7-999-123-45-67"]),
        ":0"
    );
    assert!(agi_verdict_within(
        server.agi,
        "89991234567",
        "allow",
        Duration::from_secs(5)
    ));

    // A CLI edit while the server runs arrives as a patch: no resync, no reconnect.
    cli_ok(&url, &["block", "+79991112233"]);
    assert!(agi_verdict_within(
        server.agi,
        "89991112233",
        "block",
        Duration::from_secs(5)
    ));
    let logs = server.drain_logs();
    assert!(
        !logs.iter().any(|l| l.contains("sync interrupted")),
        "edits must not break the sync: {logs:?}"
    );
}

/// A cold load over many SCAN batches: one shared value for thousands of keys (a bulk
/// import), a hand-typed spelling (recorded as an alias), a key of another type and an unusable
/// key (both skipped), a key with a TTL (expires on time).
#[test]
fn a_big_list_loads_in_batches_with_ttls_spellings_and_odd_keys() {
    let redis = Redis::start();
    let fill = "for i = 0, 11999 do \
                redis.call('SET', 'callguard:block:+7900' .. string.format('%07d', i), ARGV[1]) \
                end return 1";
    assert_eq!(
        redis.cmd(&[
            "EVAL",
            fill,
            "0",
            r#"{"reason":"bulk","added_by":"import"}"#
        ]),
        ":1"
    );
    assert_eq!(
        redis.cmd(&["SET", "callguard:block:8 (812) 555-00-11", "hand typed"]),
        "+OK"
    );
    assert_eq!(
        redis.cmd(&["HSET", "callguard:block:+79001112233", "f", "v"]),
        ":1"
    );
    assert_eq!(redis.cmd(&["SET", "callguard:block:_7495*1", "x"]), "+OK");
    // A bulk bucket typed by hand: a rule with its reason inline (loads), a rule whose
    // metadata id names nothing and a field that is no rule (both skipped with a warning).
    let bucket = format!(
        "callguard:bulk:block:{}",
        callguard::store::bulk::bucket_name(callguard::store::bulk::bucket_of("+79005550002"))
    );
    assert_eq!(
        redis.cmd(&[
            "HSET",
            &bucket,
            "+79005550002",
            "hand bucket",
            "+79005550001",
            "@0000000000000000",
            "_7495*1",
            "x"
        ]),
        ":3"
    );
    assert_eq!(
        // Long enough to outlive a slow start; shortened below once the server has it.
        redis.cmd(&[
            "SET",
            "callguard:block:+79009999999",
            "short",
            "PX",
            "60000"
        ]),
        "+OK"
    );
    let server = Server::start(&redis.url(), &[]);
    let verdict = |n: &str| agi_call(server.agi, n).verdict().to_owned();
    assert!(within(Duration::from_secs(5), || verdict("89000000000") == "block").is_some());
    assert_eq!(verdict("+79000011999"), "block");
    assert_eq!(
        agi_call(server.agi, "79000005000").vars["CALLGUARD_REASON"],
        "bulk"
    );
    assert_eq!(verdict("88125550011"), "block");
    assert_eq!(verdict("89001112233"), "allow");
    assert_eq!(
        agi_call(server.agi, "89005550002").vars["CALLGUARD_REASON"],
        "hand bucket"
    );
    assert_eq!(verdict("89005550001"), "allow");
    // The same loader in the CLI says what it skipped.
    let listed = cli(&redis.url(), &["list"]);
    let warnings = String::from_utf8_lossy(&listed.stderr);
    assert!(
        warnings.contains("ignoring unusable rules of a bulk bucket")
            && warnings.contains("rules=2"),
        "{warnings}"
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("+79005550002"));
    assert_eq!(verdict("89009999999"), "block");
    assert_eq!(
        redis.cmd(&["PEXPIRE", "callguard:block:+79009999999", "300"]),
        ":1"
    );
    assert_eq!(
        redis.cmd(&["SMEMBERS", "callguard:alias:block:+78125550011"]),
        "*1"
    );
    assert!(
        within(Duration::from_secs(5), || verdict("89009999999") == "allow").is_some(),
        "the TTL must end the rule"
    );
}

/// With `redis.snapshot_file`, a restart while Redis is down still blocks what was blocked:
/// the file written after the last load is the list until Redis is back.
#[test]
fn a_restart_with_redis_down_decides_from_the_snapshot_file() {
    let mut redis = Redis::start();
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("snapshot.bin");
    let file_text = file.to_string_lossy().into_owned();
    let env = [
        ("CALLGUARD_REDIS__SNAPSHOT_FILE", file_text.as_str()),
        ("CALLGUARD_REDIS__SNAPSHOT_FILE_INTERVAL_MS", "100"),
    ];
    cli_ok(&url, &["block", "+79991234567", "--reason", "collectors"]);
    cli_ok(&url, &["block", "+7495123XXXX", "--reason", "exchange"]);
    {
        let server = Server::start(&url, &env);
        assert!(agi_verdict_within(
            server.agi,
            "89991234567",
            "block",
            Duration::from_secs(5)
        ));
        assert!(
            within(Duration::from_secs(5), || file.exists()).is_some(),
            "snapshot file not written"
        );
    }
    redis.kill();
    // `start` returns once a snapshot is published: with Redis down, only the file can do it.
    let server = Server::start(&url, &env);
    let call = agi_call(server.agi, "+7 999 123-45-67");
    assert_eq!(call.verdict(), "block");
    assert_eq!(call.vars["CALLGUARD_REASON"], "collectors");
    assert_eq!(agi_call(server.agi, "84951234444").verdict(), "block");
    assert_eq!(agi_call(server.agi, "89990000000").verdict(), "allow");
}
