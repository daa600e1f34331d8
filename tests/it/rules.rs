//! Rules engine end to end: every rule kind and action through the real AGI server, tenants
//! from the request and from the DID map, `check --explain`, and redis-cli edits of masks.

use std::time::Duration;

use crate::support::{Redis, Server, agi_call, agi_call_with, cli, cli_ok, temp_store, within};

#[test]
fn every_action_is_carried_out_over_agi() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    for (rule, action) in [
        ("+74950000001", "hangup 1"),
        ("+74950000002", "busy"),
        ("+74950000003", "congestion"),
        ("+74950000004", "playback ss-noservice"),
        ("+74950000005", "redirect voicemail,s,1"),
        ("+74950000006", "tag"),
        ("+74950000007", "hangup user-busy"),
    ] {
        cli_ok(
            store,
            &["block", rule, "--action", action, "--reason", action],
        );
    }
    cli_ok(store, &["block", "+74950000008"]);
    let server = Server::start(store, &[("CALLGUARD_RULES__DEFAULT_ACTION", "hangup 17")]);
    let cases: [(&str, &str, &[&str], &[&str]); 8] = [
        ("84950000001", "block", &["Hangup 1"], &[]),
        ("84950000002", "block", &["Busy 10"], &[]),
        ("84950000003", "block", &["Congestion 10"], &[]),
        (
            "84950000004",
            "block",
            &["Playback ss-noservice", "Hangup 16"],
            &[],
        ),
        ("84950000005", "block", &[], &["voicemail", "s", "1"]),
        ("84950000006", "tag", &[], &[]),
        ("84950000007", "block", &["Hangup 17"], &[]),
        // No action of its own: the configured default.
        ("84950000008", "block", &["Hangup 17"], &[]),
    ];
    for (caller, verdict, execs, location) in cases {
        let call = agi_call(server.agi, caller);
        assert_eq!(call.verdict(), verdict, "{caller}: {call:?}");
        assert_eq!(call.execs, execs, "{caller}: {call:?}");
        assert_eq!(call.location, location, "{caller}: {call:?}");
        assert_eq!(call.vars["CALLGUARD_RULE"], format!("+7{}", &caller[1..]));
        assert!(call.vars.contains_key("CALLGUARD_ACTION"), "{call:?}");
    }
    let allowed = agi_call(server.agi, "84950000009");
    assert_eq!(allowed.verdict(), "allow");
    assert!(allowed.execs.is_empty() && allowed.location.is_empty());
    assert!(!allowed.vars.contains_key("CALLGUARD_RULE"));

    // Dialplan mode: variables only, the action is left to the dialplan.
    let dialplan = Server::start(store, &[("CALLGUARD_AGI__ON_BLOCK", "dialplan")]);
    let call = agi_call(dialplan.agi, "84950000005");
    assert_eq!(call.verdict(), "block");
    assert_eq!(call.vars["CALLGUARD_ACTION"], "redirect voicemail,s,1");
    assert!(
        call.execs.is_empty() && call.location.is_empty(),
        "{call:?}"
    );
}

#[test]
fn masks_prefixes_and_ranges_block_as_cleanly_as_numbers() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    cli_ok(
        store,
        &["block", "8 (495) 123-XX-XX", "--reason", "collectors"],
    );
    cli_ok(store, &["block", "8 812 *", "--reason", "whole city"]);
    cli_ok(
        store,
        &["block", "+74997000000-+74997009999", "--reason", "range"],
    );
    cli_ok(
        store,
        &["allow", "_7812555XXXX", "--reason", "partner exchange"],
    );
    let server = Server::start(store, &[]);
    for (caller, verdict, rule) in [
        ("+7 (495) 123-45-67", "block", "+7495123XXXX"),
        ("sip:84951239999@carrier", "block", "+7495123XXXX"),
        ("4951240000", "allow", ""),
        ("88121234567", "block", "+7812*"),
        ("+78125551234", "allow", "+7812555XXXX"),
        ("84997001234", "block", "+74997000000-+74997009999"),
        ("84997010000", "allow", ""),
    ] {
        let call = agi_call(server.agi, caller);
        assert_eq!(call.verdict(), verdict, "{caller}: {call:?}");
        assert_eq!(
            call.vars.get("CALLGUARD_RULE").map_or("", String::as_str),
            rule,
            "{caller}"
        );
        // Masked calls get the same variables as exact ones, so the CRM can skip them alike.
        assert!(call.vars.contains_key("CALLGUARD_NUMBER"));
    }
}

#[test]
fn tenants_from_request_arguments_and_did_map() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    cli_ok(
        store,
        &[
            "block",
            "+74951234567",
            "--tenant",
            "acme",
            "--reason",
            "acme's list",
        ],
    );
    cli_ok(
        store,
        &[
            "block",
            "+7495*",
            "--did",
            "+74951112299",
            "--reason",
            "did-only",
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("callguard.toml");
    std::fs::write(&config, "[dids]\n\"8 (495) 111-22-33\" = \"acme\"\n").expect("config");
    let server = Server::start(
        store,
        &[("CALLGUARD_CONFIG", config.to_str().expect("utf8"))],
    );
    let request = "agi://127.0.0.1:4573/check?tenant=acme";
    let by_query = agi_call_with(
        server.agi,
        &[("agi_callerid", "84951234567"), ("agi_request", request)],
    );
    assert_eq!(by_query.verdict(), "block", "{by_query:?}");
    assert_eq!(by_query.vars["CALLGUARD_TENANT"], "acme");
    let by_arg = agi_call_with(
        server.agi,
        &[("agi_callerid", "84951234567"), ("agi_arg_1", "ACME")],
    );
    assert_eq!(by_arg.verdict(), "block", "{by_arg:?}");
    let by_kv_arg = agi_call_with(
        server.agi,
        &[
            ("agi_callerid", "84951234567"),
            ("agi_arg_1", "tenant=acme"),
        ],
    );
    assert_eq!(by_kv_arg.verdict(), "block");
    let by_did = agi_call_with(
        server.agi,
        &[
            ("agi_callerid", "84951234567"),
            ("agi_dnid", "+74951112233"),
        ],
    );
    assert_eq!(by_did.verdict(), "block", "{by_did:?}");
    assert_eq!(by_did.vars["CALLGUARD_TENANT"], "acme");
    let other_tenant = agi_call_with(
        server.agi,
        &[("agi_callerid", "84951234567"), ("agi_arg_1", "globex")],
    );
    assert_eq!(other_tenant.verdict(), "allow", "{other_tenant:?}");
    // A rule limited to one DID applies only to calls to it (here given as ?did=).
    let to_did = agi_call_with(
        server.agi,
        &[
            ("agi_callerid", "84957777777"),
            ("agi_request", "agi://127.0.0.1:4573/check?did=84951112299"),
        ],
    );
    assert_eq!(to_did.verdict(), "block", "{to_did:?}");
    assert_eq!(to_did.vars["CALLGUARD_REASON"], "did-only");
    assert_eq!(agi_call(server.agi, "84957777777").verdict(), "allow");
    // A tenant name that could inject anything is ignored, not trusted.
    let hostile = agi_call_with(
        server.agi,
        &[
            ("agi_callerid", "84951234567"),
            ("agi_arg_1", "acme\" EXEC System rm"),
        ],
    );
    assert_eq!(hostile.verdict(), "allow");
    assert!(
        hostile.commands.iter().all(|c| !c.contains("System")),
        "{hostile:?}"
    );
}

#[test]
fn check_explain_shows_winner_and_every_other_match() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    cli_ok(store, &["block", "+7495*", "--reason", "city"]);
    cli_ok(store, &["allow", "8 495 123 45 67", "--reason", "lawyer"]);
    cli_ok(
        store,
        &[
            "block",
            "_7495123XXXX",
            "--reason",
            "collectors",
            "--action",
            "hangup 1",
        ],
    );
    cli_ok(
        store,
        &[
            "block",
            "+7*",
            "--tenant",
            "acme",
            "--reason",
            "acme blocks all",
        ],
    );
    let out = cli_ok(store, &["check", "+7 495 123-45-67", "--explain"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("allow +74951234567 by allow exact +74951234567 [global]"),
        "{out}"
    );
    assert!(
        lines[1].contains("+7495123XXXX") && lines[1].contains("lost: a more specific rule"),
        "{out}"
    );
    assert!(lines[2].contains("+7495*"), "{out}");
    assert_eq!(lines.len(), 3, "{out}");

    let out = cli_ok(store, &["check", "84951239999"]);
    assert!(
        out.starts_with("block +74951239999 by block mask +7495123XXXX"),
        "{out}"
    );
    assert!(out.contains("action: hangup 1"), "{out}");
    let out = cli_ok(
        store,
        &["check", "84951234567", "--tenant", "ACME", "--explain"],
    );
    assert!(
        out.starts_with("block +74951234567 tenant acme by block prefix +7* [tenant]"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(
        out.lines()
            .skip(1)
            .all(|l| l.contains("lost: a rule in a narrower scope decided")),
        "{out}"
    );
    // Equally specific: allow beats block, and the line says so.
    cli_ok(store, &["block", "+74951234567"]);
    let out = cli_ok(store, &["check", "84951234567", "--explain"]);
    assert!(
        out.contains("block exact +74951234567 [global] (no reason)")
            && out.contains("lost: as specific, and allow beats block"),
        "{out}"
    );
    let out = cli_ok(store, &["check", "84951239999"]);
    assert!(out.trim_end().ends_with("action: hangup 1"), "{out}");
    let out = cli_ok(store, &["check", "84950000000"]);
    assert!(
        out.trim_end()
            .ends_with("action: hangup 21 (rules.default_action)"),
        "{out}"
    );
    let out = cli_ok(store, &["check", "+12125550100", "--explain"]);
    assert!(
        out.starts_with("allow +12125550100 no matching rule"),
        "{out}"
    );

    let bad = cli(store, &["block", "_7495*1"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("may only end"));
    let bad = cli(store, &["allow", "+7495*", "--action", "busy"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn schedules_limit_rules_to_their_windows() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    cli_ok(
        store,
        &[
            "block",
            "+7495*",
            "--schedule",
            "mon-fri 09:00-18:00",
            "--time-zone",
            "Europe/Moscow",
        ],
    );
    // 2026-11-30 is a Monday: 09:00 Moscow is 06:00 UTC.
    let at = |t: &str| cli_ok(store, &["check", "84951234567", "--at", t]);
    assert!(
        at("2026-11-30T06:00:00Z").starts_with("block"),
        "{}",
        at("2026-11-30T06:00:00Z")
    );
    assert!(at("2026-11-30T05:59:59Z").starts_with("allow"));
    assert!(at("2026-11-30T14:59:59Z").starts_with("block"));
    assert!(at("2026-11-30T15:00:00Z").starts_with("allow"));
    assert!(at("2026-11-29T10:00:00Z").starts_with("allow"), "Sunday");
    let list = cli_ok(store, &["list"]);
    assert!(
        list.contains("mon-fri 09:00-18:00") && list.contains("Europe/Moscow"),
        "{list}"
    );
}

#[test]
fn redis_cli_edits_of_every_rule_kind_and_tenant() {
    let redis = Redis::start();
    let url = redis.url();
    let server = Server::start(&url, &[]);
    redis.cmd(&[
        "SET",
        "callguard:block:8 (495) 123-XX-XX",
        "{\"reason\":\"mask\",\"action\":\"hangup 1\"}",
    ]);
    redis.cmd(&["SET", "callguard:tenant:Acme:block:8 812*", "acme prefix"]);
    redis.cmd(&["SET", "callguard:allow:84951230000-84951230099", "range"]);
    redis.cmd(&["SET", "callguard:block:_7495*1", "bad rule, ignored"]);
    let took = within(Duration::from_secs(5), || {
        agi_call(server.agi, "84951234567").verdict() == "block"
    });
    assert!(took.is_some(), "redis-cli mask did not arrive");
    let call = agi_call(server.agi, "84951234567");
    assert_eq!(call.execs, ["Hangup 1"]);
    assert_eq!(agi_call(server.agi, "84951230042").verdict(), "allow");
    let acme = agi_call_with(
        server.agi,
        &[("agi_callerid", "88121234567"), ("agi_arg_1", "acme")],
    );
    assert_eq!(acme.verdict(), "block", "{acme:?}");
    assert_eq!(agi_call(server.agi, "88121234567").verdict(), "allow");

    // The CLI removes the hand-typed spelling of the same rule.
    cli_ok(&url, &["unblock", "+7495123XXXX"]);
    cli_ok(&url, &["unblock", "+7812*", "--tenant", "acme"]);
    assert_eq!(
        redis.cmd(&["EXISTS", "callguard:block:8 (495) 123-XX-XX"]),
        ":0"
    );
    assert_eq!(
        redis.cmd(&["EXISTS", "callguard:tenant:Acme:block:8 812*"]),
        ":0"
    );
    let took = within(Duration::from_secs(5), || {
        agi_call(server.agi, "84951234567").verdict() == "allow"
    });
    assert!(took.is_some());
    // The CLI writes canonical keys.
    cli_ok(
        &url,
        &[
            "block",
            "8 (499) 1XX-XX-XX",
            "--tenant",
            "acme",
            "--did",
            "84951112233",
        ],
    );
    let exists = redis.cmd(&["EXISTS", "callguard:tenant:acme:block:+74991XXXXXX"]);
    assert_eq!(exists, ":1");
    let value = redis.cmd(&["GET", "callguard:tenant:acme:block:+74991XXXXXX"]);
    assert!(value.starts_with('$'), "{value}");
}

#[test]
fn feature_code_blocks_the_last_caller_of_an_extension() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let server = Server::start(store, &[]);
    // An outside caller is screened (allowed), then rings extension 101.
    let first = agi_call(server.agi, "+7 (495) 123-45-67");
    assert_eq!(first.verdict(), "allow");
    let remembered = agi_call_with(
        server.agi,
        &[
            ("agi_callerid", "84951234567"),
            ("agi_request", "agi://127.0.0.1:4573/remember?ext=101"),
            ("agi_network_script", "remember?ext=101"),
        ],
    );
    assert_eq!(remembered.vars["CALLGUARD_REMEMBERED"], "+74951234567");
    // Extension 101 dials *32: its own number is the caller ID.
    let blocked = agi_call_with(
        server.agi,
        &[
            ("agi_callerid", "101"),
            ("agi_request", "agi://127.0.0.1:4573/block-last"),
            ("agi_network_script", "block-last"),
        ],
    );
    assert_eq!(
        blocked.vars["CALLGUARD_BLOCKED"], "+74951234567",
        "{blocked:?}"
    );
    assert!(blocked.execs.is_empty(), "{blocked:?}");
    let took = within(Duration::from_secs(5), || {
        agi_call(server.agi, "84951234567").verdict() == "block"
    });
    assert!(took.is_some(), "the last caller was not blocked");
    let list = cli_ok(store, &["list"]);
    assert!(list.contains("blocked from extension 101"), "{list}");
    // Nobody called 102: nothing is blocked.
    let none = agi_call_with(
        server.agi,
        &[
            ("agi_callerid", "102"),
            ("agi_network_script", "block-last"),
        ],
    );
    assert_eq!(none.vars["CALLGUARD_BLOCKED"], "");
    // Screening remembers by called number too: block-last?ext=<DID>.
    agi_call_with(
        server.agi,
        &[("agi_callerid", "84997654321"), ("agi_dnid", "4951112233")],
    );
    let by_did = agi_call_with(
        server.agi,
        &[
            ("agi_callerid", "100"),
            (
                "agi_request",
                "agi://127.0.0.1:4573/block-last?ext=+74951112233",
            ),
            ("agi_network_script", "block-last?ext=+74951112233"),
        ],
    );
    assert_eq!(
        by_did.vars["CALLGUARD_BLOCKED"], "+74997654321",
        "{by_did:?}"
    );
}
