//! The web page in a real headless Chromium (over WebDriver) against the real `callguard serve`:
//! sign in with a token, add a number in one format (seeing its canonical form and the caller
//! IDs it will catch first), see it listed, place a real FastAGI call with the number in another
//! format and see it in the blocked-calls view, filter, remove; tenant scope; floods.

use std::time::Duration;

use serde_json::json;

use crate::api::{post_rule, start, start_with_env, tokens};
use crate::support::browser::Browser;
use crate::support::{
    Redis, agi_call, agi_call_with, agi_verdict_within, api, http_get, temp_store, within,
};

const WAIT: Duration = Duration::from_secs(10);

/// Signs in with `token` and waits for the page to show who it is.
fn sign_in(browser: &Browser, token: &str, expect_who: &str) {
    browser.type_into("#token", token);
    browser.click("#login-button");
    browser.wait_text("#who", WAIT, |t| t.contains(expect_who));
}

/// Rows of a table body as text, one line per row.
fn table(browser: &Browser, id: &str) -> String {
    browser.text(&format!("#{id} tbody"))
}

/// Waits until a FastAGI call from `caller` gets `verdict` (edits reach the snapshot by sync).
fn wait_call_verdict(agi: std::net::SocketAddr, caller: &str, verdict: &str) {
    assert!(
        agi_verdict_within(agi, caller, verdict, WAIT),
        "a call from {caller} never got {verdict}"
    );
}

#[test]
fn page_is_served_embedded_with_security_headers() {
    let (_dir, path) = temp_store();
    let tokens = tokens();
    let (_server, addr, _cfg) = start(path.to_str().expect("utf8"), &tokens, "");
    for (target, media) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
    ] {
        let r = api(addr, "GET", target, None, None);
        assert_eq!(r.status, 200, "{target}: {}", r.body);
        let header = |name: &str| {
            r.headers
                .iter()
                .find_map(|h| {
                    let (k, v) = h.split_once(':')?;
                    k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                })
                .unwrap_or_default()
        };
        assert!(header("content-type").starts_with(media), "{target}");
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{target}: CSP {csp:?}");
        }
        assert_eq!(header("x-frame-options"), "DENY");
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(header("referrer-policy"), "no-referrer");
    }
    // The page carries no data: the API behind it still wants a token.
    assert_eq!(api(addr, "GET", "/api/rules", None, None).status, 401);
    let r = api(addr, "POST", "/", None, Some("{}"));
    assert_eq!(r.status, 405, "{}", r.body);
    assert!(r.headers.iter().any(|h| h == "Allow: GET, HEAD"), "{r:?}");
    // HEAD (link checkers, monitoring): GET's headers, no body.
    let get = api(addr, "GET", "/", None, None);
    let head = api(addr, "HEAD", "/", None, None);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "{}", head.body);
    let length = |r: &crate::support::HttpAnswer| {
        r.headers
            .iter()
            .find(|h| h.starts_with("Content-Length: "))
            .cloned()
    };
    assert_eq!(length(&head), length(&get));
    assert_eq!(
        length(&get),
        Some(format!("Content-Length: {}", get.body.len()))
    );
}

/// The whole story on the default embedded store.
#[test]
fn add_in_one_format_block_a_call_in_another_see_it_then_remove() {
    let (_dir, path) = temp_store();
    let tokens = tokens();
    let (server, addr, _cfg) = start(path.to_str().expect("utf8"), &tokens, "");
    let browser = Browser::start();
    browser.goto(&format!("http://{addr}/"));

    // A wrong token is refused on the sign-in form; the right one opens the page.
    browser.type_into("#token", "not-a-token");
    browser.click("#login-button");
    browser.wait_text("#login-error", WAIT, |t| t.contains("not accepted"));
    sign_in(&browser, &tokens.global, "ops · all tenants");

    // Typing shows the canonical form and delivered spellings before anything is saved.
    browser.type_into("#rule", "8 (916) 123-45-67");
    let preview = browser.wait_text("#preview", WAIT, |t| t.contains("+79161234567"));
    for spelling in ["89161234567", "9161234567", "79161234567", "0079161234567"] {
        assert!(
            preview.lines().any(|l| l.trim().starts_with(spelling)),
            "{spelling} missing from the preview:\n{preview}"
        );
    }
    assert!(preview.contains("exact"), "{preview}");
    browser.screenshot("preview");
    assert!(
        table(&browser, "rules-table").contains("No rules match"),
        "saved before Add"
    );

    // A reason with markup in it is shown as text, never run.
    let reason = r#"<img src=x id=pwned onerror="document.title='pwned'">collector"#;
    browser.type_into("#reason", reason);
    browser.click("#add-button");
    browser.wait_text("#add-status", WAIT, |t| t.contains("Added +79161234567"));
    let rules = browser.wait_text("#rules-table tbody", WAIT, |t| t.contains("+79161234567"));
    assert!(rules.contains(reason), "{rules}");
    assert!(rules.contains("api:ops"), "{rules}");
    let injected = browser.run(
        "return [document.querySelectorAll('#pwned').length, document.title];",
        vec![],
    );
    assert_eq!(injected, json!([0, "callguard"]));

    // A real FastAGI call, the number delivered in another format, is blocked...
    wait_call_verdict(server.agi, "9161234567", "block");
    let call = agi_call(server.agi, "+7 916 123-45-67");
    assert_eq!(call.vars["CALLGUARD_REASON"], reason, "{call:?}");
    // ...and shows in the blocked-calls view with both forms.
    browser.click("#calls-refresh");
    let calls = browser.wait_text("#calls-table tbody", WAIT, |t| t.contains("9161234567"));
    assert!(calls.contains("+79161234567"), "{calls}");
    assert!(calls.contains("+7 916 123-45-67"), "{calls}");
    browser.screenshot("blocked-calls");

    // Filtering finds the rule by any spelling of the number, and hides it for others.
    browser.type_into("#filter", "8-916-1234567");
    browser.wait_text("#rules-count", WAIT, |t| t.starts_with("1 rule"));
    browser.type_into("#filter", "+7 999");
    browser.wait_text("#rules-table tbody", WAIT, |t| t.contains("No rules match"));
    browser.type_into("#filter", "collector");
    browser.wait_text("#rules-table tbody", WAIT, |t| t.contains("+79161234567"));

    // Remove: confirm, gone from the list, the next call goes through.
    browser.click(r#"#rules-table tr[data-rule="+79161234567"] button.remove"#);
    browser.accept_dialog();
    browser.wait_text("#rules-table tbody", WAIT, |t| t.contains("No rules match"));
    wait_call_verdict(server.agi, "89161234567", "allow");

    // Signing out forgets the token: a reload shows the sign-in form.
    browser.click("#signout");
    browser.goto(&format!("http://{addr}/"));
    browser.wait_text("#login", WAIT, |t| t.contains("Sign in"));
    assert_eq!(browser.text("#who"), "");
}

/// A tenant token sees and edits only its tenant, on the Redis store.
#[test]
fn a_tenant_token_sees_and_edits_only_its_tenant() {
    let redis = Redis::start();
    let tokens = tokens();
    let (server, addr, _cfg) = start(&redis.url(), &tokens, "");
    let g = tokens.global.as_str();
    post_rule(addr, g, r#"{"rule":"+74950000001","reason":"global one"}"#);
    post_rule(
        addr,
        g,
        r#"{"rule":"+74950000002","tenant":"beta","reason":"beta one"}"#,
    );
    post_rule(
        addr,
        g,
        r#"{"rule":"+74950000003","tenant":"acme","reason":"acme one"}"#,
    );
    let took = within(WAIT, || {
        api(addr, "GET", "/api/rules", Some(g), None).json()["count"] == 3
    });
    assert!(took.is_some(), "rules never reached the snapshot");

    let browser = Browser::start();
    browser.goto(&format!("http://{addr}/"));
    sign_in(&browser, &tokens.acme, "tenant acme");
    let rules = browser.wait_text("#rules-table tbody", WAIT, |t| t.contains("+74950000003"));
    assert!(!rules.contains("+74950000001"), "{rules}");
    assert!(!rules.contains("+74950000002"), "{rules}");
    // No tenant fields: the token decides the tenant.
    let hidden = browser.run(
        "return [document.getElementById('tenant-field').hidden, \
                 document.getElementById('filter-tenant-field').hidden];",
        vec![],
    );
    assert_eq!(hidden, json!([true, true]));

    browser.type_into("#rule", "+7 (812) 555-XX-XX");
    browser.wait_text("#preview", WAIT, |t| {
        t.contains("+781255500XX") || t.contains("+7812555XXXX")
    });
    browser.type_into("#reason", "security sales");
    browser.click("#add-button");
    browser.wait_text("#rules-table tbody", WAIT, |t| t.contains("+7812555XXXX"));
    let saved = api(addr, "GET", "/api/rules?q=%2B7812555XXXX", Some(g), None).json();
    assert_eq!(saved["rules"][0]["tenant"], "acme", "{saved}");
    assert_eq!(saved["rules"][0]["kind"], "mask", "{saved}");
    // The mask blocks acme's calls, not another tenant's.
    let call = |tenant: &str| {
        agi_call_with(
            server.agi,
            &[
                ("agi_callerid", "88125554321"),
                (
                    "agi_request",
                    &format!("agi://127.0.0.1/screen?tenant={tenant}"),
                ),
            ],
        )
        .verdict()
        .to_owned()
    };
    let took = within(WAIT, || call("acme") == "block");
    assert!(took.is_some(), "acme's mask never blocked acme's call");
    assert_eq!(call("beta"), "allow");
}

/// A flood ban and a DID under attack show in the floods view; the ban can be lifted there.
#[test]
fn floods_view_shows_attacks_and_bans() {
    let (_dir, path) = temp_store();
    let tokens = tokens();
    // Flood settings by environment: the harness turns flood detection off that way.
    let (server, addr, _cfg) = start_with_env(
        path.to_str().expect("utf8"),
        &tokens,
        "",
        &[
            ("CALLGUARD_FLOOD__ENABLED", "true"),
            ("CALLGUARD_FLOOD__PER_CALLER__THRESHOLD", "3"),
            ("CALLGUARD_FLOOD__TARGET__ENABLED", "true"),
            ("CALLGUARD_FLOOD__TARGET__WINDOW_S", "2"),
            ("CALLGUARD_FLOOD__TARGET__CALLS_PER_SECOND", "5"),
            ("CALLGUARD_FLOOD__TARGET__HOLD_DOWN_S", "60"),
        ],
    );
    let browser = Browser::start();
    browser.goto(&format!("http://{addr}/"));
    sign_in(&browser, &tokens.global, "all tenants");
    browser.wait_text("#floods-state", WAIT, |t| t.contains("on"));
    browser.wait_text("#bans-table tbody", WAIT, |t| {
        t.contains("No automatic bans")
    });

    // One caller over its threshold, and a burst of callers from unrelated ranges (so no range
    // detector bans them) at one DID.
    for _ in 0..4 {
        agi_call(server.agi, "84951234567");
    }
    for i in 0..40 {
        agi_call_with(
            server.agi,
            &[
                ("agi_callerid", &format!("89{:02}5551234", 10 + i)),
                ("agi_dnid", "84957770000"),
            ],
        );
    }
    // The page refreshes the view by itself.
    let bans = browser.wait_text("#bans-table tbody", WAIT, |t| t.contains("+74951234567"));
    assert!(bans.contains("min"), "{bans}");
    let attacks = browser.wait_text("#attacks-table tbody", WAIT, |t| t.contains("+74957770000"));
    assert!(attacks.contains("did"), "{attacks}");
    browser.screenshot("floods");

    browser.click(r#"#bans-table tr:first-child button.remove"#);
    browser.accept_dialog();
    browser.wait_text("#bans-table tbody", WAIT, |t| {
        t.contains("No automatic bans")
    });
    let (status, body) = http_get(server.metrics.expect("metrics"), "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains("callguard_targets_under_attack{kind=\"did\"} 1"),
        "gauge and page disagree"
    );
}
