//! The admin HTTP API over real TCP against the real `callguard serve`: every endpoint, auth
//! failures, bad input, both stores, and rules added through the API deciding real AGI calls.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    Redis, Server, agi_call, api, cli_ok, http_get, http_raw, metric_sum, temp_store, within,
};

/// A global token and a tenant (acme) token with their `[[api.tokens]]` config.
pub(crate) struct Tokens {
    pub(crate) global: String,
    pub(crate) acme: String,
    pub(crate) config: String,
}

pub(crate) fn tokens() -> Tokens {
    let mint = |args: &[&str]| {
        let out = cli_ok("/nonexistent/unused.toml", &[&["api-token"], args].concat());
        let token = out
            .lines()
            .find_map(|l| l.strip_prefix("token: "))
            .expect("token line")
            .to_owned();
        let entry = out
            .split_once("[[api.tokens]]")
            .map(|(_, rest)| format!("[[api.tokens]]{rest}"))
            .expect("config entry");
        (token, entry)
    };
    let (global, global_entry) = mint(&["--global", "--name", "ops"]);
    let (acme, acme_entry) = mint(&["--tenant", "Acme"]);
    Tokens {
        global,
        acme,
        config: format!("{global_entry}\n{acme_entry}\n"),
    }
}

/// `callguard serve` on `store` with the API on a free port and `tokens` configured.
pub(crate) fn start(
    store: &str,
    tokens: &Tokens,
    extra: &str,
) -> (Server, SocketAddr, tempfile::TempDir) {
    start_with_env(store, tokens, extra, &[])
}

/// [`start`] with environment settings too (the harness turns flood detection off by
/// environment, so turning it back on has to go the same way).
pub(crate) fn start_with_env(
    store: &str,
    tokens: &Tokens,
    extra: &str,
    env: &[(&str, &str)],
) -> (Server, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("callguard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[api]\nlisten = \"127.0.0.1:0\"\n{}\n{extra}",
            tokens.config
        ),
    )
    .expect("write config");
    let config = [("CALLGUARD_CONFIG", cfg.to_str().expect("utf8"))];
    let server = Server::start(store, &[&config[..], env].concat());
    let addr = server.api.expect("api listener address in the startup log");
    (server, addr, dir)
}

pub(crate) fn post_rule(addr: SocketAddr, token: &str, body: &str) -> Value {
    let r = api(addr, "POST", "/api/rules", Some(token), Some(body));
    assert_eq!(r.status, 201, "{body} -> {}", r.body);
    r.json()
}

fn check(addr: SocketAddr, token: &str, query: &str) -> Value {
    let r = api(
        addr,
        "GET",
        &format!("/api/check?{query}"),
        Some(token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Waits for the running snapshot to give `number` `verdict` (edits arrive through sync).
fn wait_verdict(addr: SocketAddr, token: &str, number: &str, verdict: &str) {
    let took = within(Duration::from_secs(5), || {
        check(addr, token, &format!("number={number}"))["verdict"] == verdict
    });
    assert!(took.is_some(), "{number} never became {verdict}");
}

/// The end-to-end story on one store: add through the API in one spelling, a real AGI call
/// in another is blocked, the call shows in /api/calls, check explains, delete lifts it.
fn rules_decide_calls(store: &str) {
    let tokens = tokens();
    let (server, addr, _cfg) = start(store, &tokens, "");
    let t = tokens.global.as_str();

    let added = post_rule(
        addr,
        t,
        r#"{"list":"block","rule":"8 (495) 765-43-21","reason":"collector","ttl":"7d"}"#,
    );
    assert_eq!(added["rule"]["rule"], "+74957654321");
    assert_eq!(added["rule"]["kind"], "exact");
    assert_eq!(added["rule"]["tenant"], Value::Null);
    assert_eq!(added["rule"]["added_by"], "api:ops");
    assert!(added["rule"]["expires_at"].is_string(), "{added}");
    assert_eq!(added["from"], "8 (495) 765-43-21");

    wait_verdict(addr, t, "%2B7%20495%20765-43-21", "block");
    let call = agi_call(server.agi, "+7 (495) 765-43-21");
    assert_eq!(call.verdict(), "block", "{call:?}");
    assert_eq!(agi_call(server.agi, "84951112233").verdict(), "allow");

    let took = within(Duration::from_secs(5), || {
        let r = api(addr, "GET", "/api/calls?since=10m", Some(t), None);
        r.status == 200 && r.json()["calls"].as_array().is_some_and(|c| !c.is_empty())
    });
    assert!(
        took.is_some(),
        "the blocked call never showed in /api/calls"
    );
    let calls = api(addr, "GET", "/api/calls?since=10m&limit=5", Some(t), None).json();
    let record = &calls["calls"][0];
    assert_eq!(record["number"], "+74957654321");
    assert_eq!(record["raw"], "+7 (495) 765-43-21");
    assert_eq!(record["verdict"], "block");
    assert_eq!(record["reason"], "collector");
    assert_eq!(calls["call_log"], "on");

    // A mask over it and an allow for it: check says who won and why the others lost.
    post_rule(addr, t, r#"{"rule":"8 (495) 765-XX-XX","reason":"range"}"#);
    post_rule(
        addr,
        t,
        r#"{"list":"allow","rule":"+74957654321","reason":"boss"}"#,
    );
    wait_verdict(addr, t, "84957654321", "allow");
    let explained = check(addr, t, "number=8%20495%207654321");
    assert_eq!(explained["number"], "+74957654321");
    assert_eq!(explained["decided_by"]["entry"]["list"], "allow");
    assert_eq!(explained["decided_by"]["entry"]["reason"], "boss");
    let others = explained["also_matched"].as_array().expect("array");
    assert_eq!(others.len(), 2, "{explained}");
    let why_of = |rule: &str| {
        others
            .iter()
            .find(|m| m["entry"]["rule"] == rule)
            .map(|m| m["why"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("{rule} not in {explained}"))
    };
    assert_eq!(
        why_of("+74957654321"),
        "lost: as specific, and allow beats block"
    );
    assert_eq!(
        why_of("+7495765XXXX"),
        "lost: a more specific rule in the same scope decided"
    );

    // Search by number in any format, by reason, by list.
    let found = api(addr, "GET", "/api/rules?q=8(495)7654321", Some(t), None).json();
    assert_eq!(found["count"], 3, "{found}");
    let found = api(addr, "GET", "/api/rules?q=RANGE", Some(t), None).json();
    assert_eq!(found["rules"][0]["rule"], "+7495765XXXX", "{found}");
    let allow = api(addr, "GET", "/api/rules?list=allow", Some(t), None).json();
    assert_eq!(allow["count"], 1, "{allow}");
    let limited = api(addr, "GET", "/api/rules?limit=1", Some(t), None).json();
    assert_eq!(
        (limited["count"].clone(), limited["truncated"].clone()),
        (3.into(), true.into())
    );

    // Delete in yet another spelling removes every spelling; a second delete is a 404.
    let target = "/api/rules?list=allow&rule=%2B7%20(495)%20765%2043%2021";
    let removed = api(addr, "DELETE", target, Some(t), None);
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(removed.json()["removed"], "+74957654321");
    let again = api(addr, "DELETE", target, Some(t), None);
    assert_eq!(again.status, 404, "{}", again.body);
    assert!(
        again.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("not on"))
    );
    wait_verdict(addr, t, "84957654321", "block");
    for rule in ["84957654321", "8495765XXXX"] {
        let r = api(
            addr,
            "DELETE",
            &format!("/api/rules?list=block&rule={rule}"),
            Some(t),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    wait_verdict(addr, t, "84957654321", "allow");
    assert_eq!(agi_call(server.agi, "+74957654321").verdict(), "allow");
}

#[test]
fn rules_decide_calls_with_the_embedded_store() {
    let (_dir, path) = temp_store();
    rules_decide_calls(path.to_str().expect("utf8 path"));
}

#[test]
fn rules_decide_calls_with_redis() {
    let redis = Redis::start();
    rules_decide_calls(&redis.url());
}

#[test]
fn tokens_are_required_and_tenant_tokens_stay_in_their_tenant() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let tokens = tokens();
    let (_server, addr, _cfg) = start(store, &tokens, "");

    for route in [
        "/api/rules",
        "/api/check?number=1",
        "/api/calls",
        "/api/floods",
        "/api/preview?rule=1",
        "/api/whoami",
    ] {
        let missing = api(addr, "GET", route, None, None);
        assert_eq!(missing.status, 401, "{route}: {}", missing.body);
        assert!(
            missing
                .headers
                .iter()
                .any(|h| h == "WWW-Authenticate: Bearer")
        );
        assert!(
            missing.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("Bearer"))
        );
        let wrong = api(addr, "GET", route, Some("cg_0000"), None);
        assert_eq!(wrong.status, 401, "{route}");
        assert_eq!(wrong.json()["error"], "unknown token");
    }
    // The hash is not a token.
    let hash = tokens
        .config
        .lines()
        .find_map(|l| l.strip_prefix("token_sha256 = "))
        .expect("hash")
        .trim_matches('"')
        .to_owned();
    assert_eq!(
        api(addr, "GET", "/api/rules", Some(&hash), None).status,
        401
    );
    let basic = http_raw(
        addr,
        b"GET /api/rules HTTP/1.1\r\nAuthorization: Basic b3BzOnB3\r\n\r\n",
    );
    assert_eq!(basic.status, 401);

    let acme = tokens.acme.as_str();
    let global = tokens.global.as_str();
    // A tenant token writes to its tenant without saying so, and nowhere else.
    let own = post_rule(
        addr,
        acme,
        r#"{"rule":"+74951112233","reason":"acme spam"}"#,
    );
    assert_eq!(own["rule"]["tenant"], "acme");
    assert_eq!(own["rule"]["added_by"], "api:acme");
    let named = post_rule(addr, acme, r#"{"rule":"+74951112234","tenant":"ACME"}"#);
    assert_eq!(named["rule"]["tenant"], "acme");
    for body in [
        r#"{"rule":"+74951112235","tenant":"globex"}"#,
        r#"{"rule":"+74951112235","tenant":"global"}"#,
    ] {
        let r = api(addr, "POST", "/api/rules", Some(acme), Some(body));
        assert_eq!(r.status, 403, "{body}: {}", r.body);
        assert_eq!(r.json()["error"], "this token is for tenant acme only");
    }
    for target in [
        "/api/rules?tenant=globex",
        "/api/rules?tenant=global",
        "/api/check?number=84951112233&tenant=globex",
        "/api/calls?tenant=globex",
        "/api/rules?list=block&rule=84951112233&tenant=globex",
    ] {
        let method = if target.contains("rule=") {
            "DELETE"
        } else {
            "GET"
        };
        assert_eq!(
            api(addr, method, target, Some(acme), None).status,
            403,
            "{target}"
        );
    }
    // The global token writes anywhere; the tenant token sees only its own rules.
    post_rule(addr, global, r#"{"rule":"+74951112299"}"#);
    post_rule(addr, global, r#"{"rule":"+74951112298","tenant":"globex"}"#);
    let took = within(Duration::from_secs(5), || {
        api(addr, "GET", "/api/rules", Some(global), None).json()["count"] == 4
    });
    assert!(took.is_some(), "rules never reached the snapshot");
    let seen = api(addr, "GET", "/api/rules", Some(acme), None).json();
    assert_eq!(seen["count"], 2, "{seen}");
    assert!(
        seen["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .all(|r| r["tenant"] == "acme")
    );
    let globex = api(addr, "GET", "/api/rules?tenant=globex", Some(global), None).json();
    assert_eq!(globex["rules"][0]["rule"], "+74951112298", "{globex}");
    let only_global = api(addr, "GET", "/api/rules?tenant=global", Some(global), None).json();
    assert_eq!(
        only_global["rules"][0]["rule"], "+74951112299",
        "{only_global}"
    );
    // A tenant token checks as its tenant: its rule blocks, globex's does not apply.
    assert_eq!(check(addr, acme, "number=84951112233")["verdict"], "block");
    assert_eq!(check(addr, acme, "number=84951112233")["tenant"], "acme");
    assert_eq!(check(addr, acme, "number=84951112298")["verdict"], "allow");
    assert_eq!(
        check(addr, global, "number=84951112298&tenant=globex")["verdict"],
        "block"
    );
    // And deletes only in its tenant.
    let r = api(
        addr,
        "DELETE",
        "/api/rules?list=block&rule=84951112299",
        Some(acme),
        None,
    );
    assert_eq!(r.status, 404, "the global rule is not acme's: {}", r.body);
    let r = api(
        addr,
        "DELETE",
        "/api/rules?list=block&rule=84951112233",
        Some(acme),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn bad_input_gets_a_clear_json_error() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let tokens = tokens();
    let (_server, addr, _cfg) = start(store, &tokens, "");
    let t = tokens.global.as_str();
    let post = |body: &str| api(addr, "POST", "/api/rules", Some(t), Some(body));
    for (body, needle) in [
        (r#"{"rule":"8495XX"}"#, "cannot tell which country"),
        (r#"{"rule":"  "}"#, "empty number"),
        (
            r#"{"rule":"+74951234567","dids":["abc"]}"#,
            "did \"abc\" is not a number",
        ),
        (r#"{"rule":"+74951234567","action":"explode"}"#, "action"),
        (
            r#"{"list":"allow","rule":"+74951234567","action":"busy"}"#,
            "allow rules take no action",
        ),
        (
            r#"{"rule":"+74951234567","schedule":"someday"}"#,
            "schedule",
        ),
        (
            r#"{"list":"grey","rule":"+74951234567"}"#,
            "neither block nor allow",
        ),
        (r#"{"rule":"+74951234567","ttl":"soon"}"#, "ttl"),
        (
            r#"{"rule":"+74951234567","ttl":"1h","expires_at":"2099-01-01T00:00:00Z"}"#,
            "not both",
        ),
        (
            r#"{"rule":"+74951234567","expires_at":"2001-01-01T00:00:00Z"}"#,
            "in the past",
        ),
        (r#"{"rule":"+74951234567","tenant":"a b"}"#, "tenant name"),
        (r#"{"rule":"+74951234567","colour":"red"}"#, "unknown field"),
        (r#"{"rule":"+74951234567""#, "bad JSON"),
        ("[1,2]", "bad JSON"),
        ("", "bad JSON"),
    ] {
        let r = post(body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let error = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(needle), "{body}: {error}");
    }
    for (target, needle) in [
        ("/api/check", "number= is required"),
        ("/api/check?number=1&at=noon", "RFC 3339"),
        ("/api/rules?list=grey", "neither block nor allow"),
        ("/api/rules?limit=0", "limit"),
        ("/api/calls?since=forever", "since"),
        ("/api/calls?limit=x", "limit"),
        ("/api/check?number=%zz", "percent-encoding"),
    ] {
        let r = api(addr, "GET", target, Some(t), None);
        assert_eq!(r.status, 400, "{target}: {}", r.body);
        assert!(
            r.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains(needle)),
            "{target}: {}",
            r.body
        );
    }
    for (target, needle) in [
        ("/api/rules?rule=1", "list=block or list=allow"),
        ("/api/rules?list=block", "rule= is required"),
        (
            "/api/rules?list=block&rule=8495XX",
            "cannot tell which country",
        ),
    ] {
        let r = api(addr, "DELETE", target, Some(t), None);
        assert_eq!(r.status, 400, "{target}: {}", r.body);
        assert!(
            r.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains(needle)),
            "{}",
            r.body
        );
    }

    // Wrong media type, chunked bodies, huge bodies, unknown paths and methods.
    let text = http_raw(
        addr,
        format!(
            "POST /api/rules HTTP/1.1\r\nAuthorization: Bearer {t}\r\nContent-Type: text/plain\r\n\
             Content-Length: 2\r\n\r\n{{}}"
        )
        .as_bytes(),
    );
    assert_eq!(text.status, 415, "{}", text.body);
    let chunked = http_raw(
        addr,
        format!(
            "POST /api/rules HTTP/1.1\r\nAuthorization: Bearer {t}\r\n\
             Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(chunked.status, 411, "{}", chunked.body);
    let huge = format!(
        r#"{{"rule":"+74951234567","reason":"{}"}}"#,
        "x".repeat(100_000)
    );
    let r = post(&huge);
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("api.max_body_bytes"))
    );
    // A body that never arrives: refused by Content-Length before reading, not waited for.
    let claimed = http_raw(
        addr,
        format!("POST /api/rules HTTP/1.1\r\nAuthorization: Bearer {t}\r\nContent-Length: 999999999999\r\n\r\n").as_bytes(),
    );
    assert_eq!(claimed.status, 413);
    let r = api(addr, "GET", "/api/nothing", Some(t), None);
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    let r = api(addr, "PUT", "/api/rules", Some(t), Some("{}"));
    assert_eq!(r.status, 405);
    assert!(
        r.headers.iter().any(|h| h == "Allow: GET, POST, DELETE"),
        "{r:?}"
    );
    assert_eq!(
        api(addr, "POST", "/api/check", Some(t), Some("{}")).status,
        405
    );
    let garbage = http_raw(addr, b"HELLO\r\n\r\n");
    assert_eq!(garbage.status, 400);
    assert!(garbage.json()["error"].is_string());
    // Nothing bad was written, and the server still serves.
    assert_eq!(
        api(addr, "GET", "/api/rules", Some(t), None).json()["count"],
        0
    );
}

#[test]
fn openapi_describes_every_route() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let tokens = tokens();
    let (_server, addr, _cfg) = start(store, &tokens, "");
    // No token needed for the description.
    let r = api(addr, "GET", "/api/openapi.json", None, None);
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .iter()
            .any(|h| h == "Content-Type: application/json")
    );
    let doc = r.json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    for (route, methods) in callguard::api::routes::ROUTES {
        let item = paths
            .get(*route)
            .unwrap_or_else(|| panic!("{route} missing from openapi.json"));
        for method in *methods {
            assert!(
                item.get(method.to_lowercase()).is_some(),
                "{method} {route} missing from openapi.json"
            );
        }
    }
    assert_eq!(
        paths.len(),
        callguard::api::routes::ROUTES.len(),
        "described but not served"
    );
}

#[test]
fn floods_show_detector_bans() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let tokens = tokens();
    let (server, addr, _cfg) = start_with_env(
        store,
        &tokens,
        "",
        &[
            ("CALLGUARD_FLOOD__ENABLED", "true"),
            ("CALLGUARD_FLOOD__PER_CALLER__THRESHOLD", "3"),
        ],
    );
    let t = tokens.global.as_str();
    let before = api(addr, "GET", "/api/floods", Some(t), None).json();
    assert_eq!(before["flood_detection"], "on");
    assert_eq!(before["bans"].as_array().map(Vec::len), Some(0));
    for _ in 0..4 {
        agi_call(server.agi, "84951234567");
    }
    let took = within(Duration::from_secs(5), || {
        let floods = api(addr, "GET", "/api/floods", Some(t), None).json();
        floods["bans"].as_array().is_some_and(|b| !b.is_empty())
    });
    assert!(took.is_some(), "the ban never showed in /api/floods");
    let floods = api(addr, "GET", "/api/floods", Some(t), None).json();
    let ban = &floods["bans"][0];
    assert_eq!(ban["ban"]["rule"], "+74951234567");
    assert_eq!(ban["ban"]["added_by"], "detector");
    assert!(
        ban["expires_in_seconds"].as_u64().is_some_and(|s| s > 0),
        "{floods}"
    );
    assert_eq!(floods["targets_under_attack"]["dids"], 0);
    // A tenant token sees no global bans.
    let acme = api(addr, "GET", "/api/floods", Some(&tokens.acme), None).json();
    assert_eq!(acme["bans"].as_array().map(Vec::len), Some(0), "{acme}");
}

#[test]
fn api_is_off_by_default_and_refuses_sources_outside_allow_from() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let plain = Server::start(store, &[]);
    assert!(
        plain.api.is_none(),
        "the API must be off unless api.listen is set"
    );
    drop(plain);
    let tokens = tokens();
    // Only 192.0.2.1 may connect: the loopback test client is closed on, before any byte.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("callguard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[api]\nlisten = \"127.0.0.1:0\"\nallow_from = [\"192.0.2.1\"]\n{}",
            tokens.config
        ),
    )
    .expect("write config");
    let server = Server::start(store, &[("CALLGUARD_CONFIG", cfg.to_str().expect("utf8"))]);
    let r = api(
        server.api.expect("api"),
        "GET",
        "/api/openapi.json",
        None,
        None,
    );
    assert_eq!(r.status, 0, "refused connections get no answer: {r:?}");
    let (_, text) = http_get(server.metrics.expect("metrics"), "/metrics");
    let refused = metric_sum(
        &text,
        "callguard_connections_refused_total",
        &["listener=\"api\"", "reason=\"not_allowed\""],
    );
    assert_eq!(refused, 1.0, "{text}");
}

#[test]
fn sighup_adds_and_revokes_tokens() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let first = tokens();
    let (server, addr, cfg_dir) = start(store, &first, "");
    assert_eq!(
        api(addr, "GET", "/api/floods", Some(&first.global), None).status,
        200
    );
    // Replace every token with new ones: the old stop working, the new start, no restart.
    let second = tokens();
    std::fs::write(
        cfg_dir.path().join("callguard.toml"),
        format!("[api]\nlisten = \"127.0.0.1:0\"\n{}", second.config),
    )
    .expect("rewrite config");
    server.signal("HUP");
    assert!(
        server
            .wait_log("config reloaded", Duration::from_secs(5))
            .is_some()
    );
    assert_eq!(
        api(addr, "GET", "/api/floods", Some(&first.global), None).status,
        401
    );
    assert_eq!(
        api(addr, "GET", "/api/floods", Some(&second.global), None).status,
        200
    );
}

#[test]
fn preview_shows_the_canonical_rule_and_caught_spellings_without_saving() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let tokens = tokens();
    let (server, addr, _cfg) = start(store, &tokens, "");
    let t = tokens.global.as_str();

    let who = api(addr, "GET", "/api/whoami", Some(t), None).json();
    assert_eq!(who["name"], "ops");
    assert_eq!(who["scope"], "global");
    assert_eq!(who["tenant"], Value::Null);
    let who = api(addr, "GET", "/api/whoami", Some(&tokens.acme), None).json();
    assert_eq!(who["scope"], "tenant");
    assert_eq!(who["tenant"], "acme");
    assert_eq!(api(addr, "GET", "/api/whoami", None, None).status, 401);

    let preview = |rule: &str| {
        let r = api(
            addr,
            "GET",
            &format!("/api/preview?rule={rule}"),
            Some(t),
            None,
        );
        (r.status, r.json())
    };
    let (status, exact) = preview("8%20(916)%20123-45-67");
    assert_eq!(status, 200, "{exact}");
    assert_eq!(exact["rule"], "+79161234567");
    assert_eq!(exact["kind"], "exact");
    assert_eq!(exact["numbers"], 1);
    assert_eq!(exact["from"], "8 (916) 123-45-67");
    let forms: Vec<&str> = exact["catches"][0]["delivered_as"]
        .as_array()
        .expect("forms")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for form in ["+79161234567", "89161234567", "9161234567", "0079161234567"] {
        assert!(forms.contains(&form), "{form} missing: {forms:?}");
    }
    // Every promised spelling really is blocked once the rule is saved.
    let (_, mask) = preview("%2B7%20495%20123-45-XX");
    assert_eq!(mask["rule"], "+749512345XX");
    assert_eq!(mask["kind"], "mask");
    assert_eq!(mask["numbers"], 100);
    assert_eq!(mask["catches"].as_array().map(Vec::len), Some(2), "{mask}");
    let (_, anon) = preview("Anonymous");
    assert_eq!(anon["rule"], "anonymous");
    assert!(
        anon["catches"][0]["delivered_as"]
            .as_array()
            .is_some_and(|f| f.iter().any(|v| v == "restricted"))
    );
    assert_eq!(
        api(addr, "GET", "/api/rules", Some(t), None).json()["count"],
        0,
        "preview saved something"
    );
    for (query, needle) in [("", "rule= is required"), ("8495XX", "cannot tell")] {
        let (status, e) = preview(query);
        assert_eq!(status, 400, "{e}");
        assert!(
            e["error"].as_str().is_some_and(|m| m.contains(needle)),
            "{e}"
        );
    }

    // An edit is answered once this node decides by it.
    let added = post_rule(addr, t, r#"{"rule":"+7 495 123-45-XX"}"#);
    assert_eq!(added["in_force"], true, "{added}");
    for spelling in mask["catches"][1]["delivered_as"]
        .as_array()
        .expect("forms")
        .iter()
        .filter_map(Value::as_str)
    {
        assert_eq!(
            agi_call(server.agi, spelling).verdict(),
            "block",
            "{spelling}"
        );
    }
    let calls = |query: &str| api(addr, "GET", &format!("/api/calls?{query}"), Some(t), None);
    let took = within(Duration::from_secs(5), || {
        calls("verdict=block").json()["count"]
            .as_u64()
            .is_some_and(|n| n > 0)
    });
    assert!(took.is_some(), "blocked calls never reached the call log");
    assert_eq!(calls("verdict=allow").json()["count"], 0);
    let bad = calls("verdict=maybe");
    assert_eq!(bad.status, 400, "{}", bad.body);
    let removed = api(
        addr,
        "DELETE",
        "/api/rules?list=block&rule=84951234500",
        Some(t),
        None,
    );
    assert_eq!(removed.status, 404, "{}", removed.body);
    let removed = api(
        addr,
        "DELETE",
        "/api/rules?list=block&rule=8495123-45-XX",
        Some(t),
        None,
    )
    .json();
    assert_eq!(removed["in_force"], true, "{removed}");
    assert_eq!(agi_call(server.agi, "84951234500").verdict(), "allow");
}

/// `/api/calls` on Redis reads the stream newest first, page by page, and filters as it goes:
/// the newest few of a tenant come back without the whole window, and a rare match deep in
/// the window is still found.
#[test]
fn calls_on_redis_are_the_newest_matching_records() {
    let redis = Redis::start();
    let tokens = tokens();
    let (_server, addr, _cfg) = start(&redis.url(), &tokens, "");
    let now = callguard::store::format_time(std::time::SystemTime::now());
    for i in 0..2500u32 {
        let (tenant, verdict) = match i {
            5 => ("acme", "allow"),
            i if i % 10 == 0 => ("acme", "block"),
            _ => ("beta", "block"),
        };
        let record = format!(
            r#"{{"at":"{now}","protocol":"agi","number":"+7495{i:07}","raw":"{i}","tenant":"{tenant}","verdict":"{verdict}"}}"#
        );
        redis.cmd(&["XADD", "callguard:calls", "*", "call", &record]);
    }
    let calls = |query: &str| {
        let r = api(
            addr,
            "GET",
            &format!("/api/calls?{query}"),
            Some(&tokens.global),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };
    let raws = |v: &Value| -> Vec<String> {
        v["calls"]
            .as_array()
            .expect("calls")
            .iter()
            .map(|c| c["raw"].as_str().expect("raw").to_owned())
            .collect()
    };
    let newest = calls("tenant=acme&limit=5");
    assert_eq!(raws(&newest), ["2450", "2460", "2470", "2480", "2490"]);
    assert_eq!(newest["truncated"], true);
    let rare = calls("tenant=acme&verdict=allow");
    assert_eq!(raws(&rare), ["5"]);
    assert_eq!(rare["truncated"], false);
    let all_acme = calls("tenant=acme&limit=10000");
    assert_eq!(
        all_acme["count"], 251,
        "every tenth record and the allowed one"
    );
    assert_eq!(all_acme["truncated"], false);
    // A tenant token gets its own tenant's records only.
    let r = api(addr, "GET", "/api/calls?limit=3", Some(&tokens.acme), None);
    assert_eq!(raws(&r.json()), ["2470", "2480", "2490"]);
}

/// Redis down: reads the running snapshot serves keep working, edits and call-log reads say
/// 503 with the store's error, and nothing hangs.
#[test]
fn with_redis_down_edits_and_call_log_reads_are_503_and_listing_still_works() {
    let mut redis = Redis::start();
    let tokens = tokens();
    let (_server, addr, _cfg) = start(&redis.url(), &tokens, "");
    let t = tokens.global.as_str();
    let added = post_rule(addr, t, r#"{"rule":"+74951234567","reason":"before"}"#);
    assert_eq!(added["in_force"], true, "{added}");
    redis.kill();

    let started = std::time::Instant::now();
    let calls = api(addr, "GET", "/api/calls?since=1h", Some(t), None);
    assert_eq!(calls.status, 503, "{}", calls.body);
    assert!(
        calls.json()["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("store: ")),
        "{}",
        calls.body
    );
    let post = api(
        addr,
        "POST",
        "/api/rules",
        Some(t),
        Some(r#"{"rule":"+74951234568"}"#),
    );
    assert_eq!(post.status, 503, "{}", post.body);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let listed = api(addr, "GET", "/api/rules", Some(t), None);
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.json()["rules"][0]["rule"], "+74951234567");
    assert_eq!(
        api(addr, "GET", "/api/check?number=84951234567", Some(t), None).json()["verdict"],
        "block"
    );
}
