//! `callguard import` and `callguard export` against both stores, and migration from an
//! Asterisk AstDB blacklist dump and a FreePBX blacklist CSV, checked through the server.

use std::path::Path;
use std::process::Output;

use std::time::Duration;

use crate::support::{Redis, Server, agi_call, agi_verdict_within, cli, cli_ok, temp_store};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write input");
    path.to_string_lossy().into_owned()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Both stores: the embedded file and a private Redis.
fn stores(dir: &Path) -> Vec<(String, Option<Redis>)> {
    let redis = Redis::start();
    vec![
        (dir.join("lists.toml").to_string_lossy().into_owned(), None),
        (redis.url(), Some(redis)),
    ]
}

#[test]
fn a_bad_line_imports_nothing_unless_partial() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "numbers.txt",
        "8 (495) 123-45-67\n+7 495 765-43-21\n# comment\nJohn Smith\n84951234567\n",
    );
    for (store, _redis) in stores(dir.path()) {
        let out = cli(&store, &["import", &file]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        assert!(
            stderr.contains("numbers.txt:4: rejected \"John Smith\""),
            "{stderr}"
        );
        assert!(
            stderr.contains("numbers.txt:5: duplicate of line 1 (+74951234567)"),
            "{stderr}"
        );
        assert!(stdout.contains("nothing imported"), "{stdout}");
        assert_eq!(cli_ok(&store, &["list"]), "", "atomic: nothing written");

        let dry = cli_ok(&store, &["import", &file, "--partial", "--dry-run"]);
        assert!(dry.contains("dry run"), "{dry}");
        assert_eq!(cli_ok(&store, &["list"]), "");

        let done = cli_ok(
            &store,
            &["import", &file, "--partial", "--reason", "imported"],
        );
        assert!(
            done.contains("imported 2 rules (2 block, 0 allow)"),
            "{done}"
        );
        let listed = cli_ok(&store, &["list"]);
        assert!(
            listed.contains("+74951234567") && listed.contains("+74957654321"),
            "{listed}"
        );
        assert!(listed.contains("imported"), "{listed}");
    }
}

#[test]
fn export_then_import_round_trips_every_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (store, _redis) in stores(dir.path()) {
        cli_ok(
            &store,
            &[
                "block",
                "8 495 123-45-67",
                "--reason",
                "collector, \"daily\"",
            ],
        );
        cli_ok(
            &store,
            &[
                "block",
                "+7 812 555-XX-XX",
                "--action",
                "hangup 17",
                "--tenant",
                "acme",
            ],
        );
        cli_ok(
            &store,
            &[
                "block",
                "+74950000000-+74950000999",
                "--ttl",
                "7d",
                "--did",
                "84951112233",
                "--schedule",
                "mon-fri 09:00-18:00",
                "--time-zone",
                "Europe/Moscow",
            ],
        );
        cli_ok(&store, &["allow", "84957654321", "--reason", "our office"]);
        for format in ["csv", "json"] {
            let exported = cli_ok(&store, &["export", "--format", format]);
            assert!(exported.matches("+7").count() >= 4, "{exported}");
            let file = write(dir.path(), &format!("export.{format}"), &exported);
            let (_fresh_dir, fresh) = temp_store();
            let fresh = fresh.to_string_lossy().into_owned();
            let report = cli_ok(&fresh, &["import", &file]);
            assert!(
                report.contains("imported 4 rules (3 block, 1 allow)"),
                "{report}"
            );
            assert_eq!(
                cli_ok(&fresh, &["export", "--format", format]),
                exported,
                "{format} export -> import -> export changed something"
            );
        }
        // Filters.
        let acme = cli_ok(&store, &["export", "--tenant", "acme"]);
        assert_eq!(acme.lines().count(), 2, "{acme}");
        let allow = cli_ok(&store, &["export", "--list", "allow", "--format", "json"]);
        assert!(
            allow.contains("our office") && !allow.contains("collector"),
            "{allow}"
        );
    }
}

#[test]
fn migration_from_astdb_and_freepbx_blocks_every_delivered_form() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `asterisk -rx "database show blacklist"` on a FreePBX box: descriptions as values, the
    // `blocked` key for "block unknown caller ID".
    let astdb = write(
        dir.path(),
        "astdb.txt",
        "/blacklist/84951234567                           : Collector                \n\
         /blacklist/blocked                               : 1                        \n\
         /blacklist/4957000001                            : 1                        \n\
         3 results found.\n",
    );
    // FreePBX Blacklist module export.
    let freepbx = write(
        dir.path(),
        "blacklist.csv",
        "number,description\n\"+7 (812) 555-66-77\",\"Security sales\"\n79161234567,\n",
    );
    let (_store_dir, store) = temp_store();
    let store = store.to_string_lossy().into_owned();
    let report = cli_ok(&store, &["import", &astdb]);
    assert!(report.contains("imported 3 rules"), "{report}");
    let report = cli_ok(&store, &["import", &freepbx]);
    assert!(report.contains("imported 2 rules"), "{report}");
    let server = Server::start(&store, &[]);
    for (caller, verdict) in [
        ("+74951234567", "block"),
        ("74957000001", "block"),
        ("88125556677", "block"),
        ("+7 916 123-45-67", "block"),
        ("anonymous", "block"),
        ("84950000000", "allow"),
    ] {
        let outcome = agi_call(server.agi, caller);
        assert_eq!(outcome.verdict(), verdict, "{caller}: {outcome:?}");
    }
    let outcome = agi_call(server.agi, "8 812 555 66 77");
    assert_eq!(outcome.vars["CALLGUARD_REASON"], "Security sales");
}

#[test]
fn redis_import_replaces_hand_typed_spellings_in_one_transaction() {
    let redis = Redis::start();
    let store = redis.url();
    // Typed by hand with redis-cli in other formats.
    redis.cmd(&["SET", "callguard:block:8 (495) 123-45-67", "old"]);
    redis.cmd(&["SET", "callguard:block:74957654321", "old"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lines = String::from("number,reason\n+74951234567,new\n84957654321,new\n");
    for i in 0..3000 {
        lines.push_str(&format!("+7496{i:07},bulk\n"));
    }
    let file = write(dir.path(), "big.csv", &lines);
    let report = cli_ok(&store, &["import", &file]);
    assert!(report.contains("imported 3002 rules"), "{report}");
    // One key per rule, canonical, with the new reason.
    assert_eq!(
        redis.cmd(&["EXISTS", "callguard:block:8 (495) 123-45-67"]),
        ":0"
    );
    assert_eq!(redis.cmd(&["EXISTS", "callguard:block:74957654321"]), ":0");
    assert_eq!(redis.cmd(&["EXISTS", "callguard:block:+74951234567"]), ":1");
    let listed = cli_ok(&store, &["list"]);
    assert_eq!(
        listed.lines().count(),
        3002,
        "{}",
        &listed[..listed.len().min(500)]
    );
    assert!(!listed.contains("old"));
}

#[test]
fn redis_import_on_a_big_keyspace_uses_the_alias_sets() {
    let redis = Redis::start();
    redis.cmd(&["SET", "callguard:block:8 (495) 123-45-67", "old"]);
    // What a running server's sync records for that spelling.
    redis.cmd(&[
        "SADD",
        "callguard:alias:block:+74951234567",
        "callguard:block:8 (495) 123-45-67",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "one.txt", "+74951234567\n");
    let out = crate::support::callguard()
        .args(["--store", &redis.url(), "import", &file])
        // Pretend the keyspace is too big to walk.
        .env("CALLGUARD_REDIS__SPELLING_SCAN_MAX_KEYS", "1")
        .output()
        .expect("run callguard");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        redis.cmd(&["EXISTS", "callguard:block:8 (495) 123-45-67"]),
        ":0"
    );
    assert_eq!(
        redis.cmd(&["EXISTS", "callguard:alias:block:+74951234567"]),
        ":0"
    );
    assert_eq!(redis.cmd(&["EXISTS", "callguard:block:+74951234567"]), ":1");
}

/// `--layout bulk`: rules go into buckets (hashes) with their metadata stored once, replace
/// hand-typed keys of the same rules, reach a running server, load cold, export, and stay
/// editable with `block`/`unblock`; a rule with an expiry keeps a key of its own.
#[test]
fn redis_bulk_import_is_decided_edited_and_exported() {
    use callguard::store::bulk;
    let redis = Redis::start();
    let store = redis.url();
    redis.cmd(&["SET", "callguard:block:8 (495) 000-00-01", "old"]);
    // The rule that keeps a key of its own (it expires), there before in two spellings.
    redis.cmd(&["SET", "callguard:block:+74990000001", "old"]);
    redis.cmd(&["SET", "callguard:block:8 (499) 000-00-01", "old"]);
    let server = Server::start(&store, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lines = String::from("rule,reason,expires_at\n");
    for i in 1..=300 {
        lines.push_str(&format!("+7495{i:07},collectors,\n"));
    }
    lines.push_str("+7812XXXXXXX,a whole city,\n");
    lines.push_str("+74990000001,for a while,2099-01-01T00:00:00Z\n");
    let file = write(dir.path(), "list.csv", &lines);
    let report = cli_ok(&store, &["import", &file, "--layout", "bulk"]);
    assert!(report.contains("imported 302 rules"), "{report}");

    let bucket_of = |rule: &str| {
        format!(
            "callguard:bulk:block:{}",
            bulk::bucket_name(bulk::bucket_of(rule))
        )
    };
    assert_eq!(
        redis.cmd(&["HEXISTS", &bucket_of("+74950000001"), "+74950000001"]),
        ":1"
    );
    assert_eq!(
        redis.cmd(&["HEXISTS", &bucket_of("+7812XXXXXXX"), "+7812XXXXXXX"]),
        ":1"
    );
    // Metadata stored once per distinct reason (300 rules share "collectors").
    assert_eq!(redis.cmd(&["HLEN", "callguard:bulk-meta"]), ":2");
    // The hand-typed spelling was replaced; the expiring rule is a key with a TTL.
    assert_eq!(
        redis.cmd(&["EXISTS", "callguard:block:8 (495) 000-00-01"]),
        ":0"
    );
    assert_eq!(redis.cmd(&["EXISTS", "callguard:block:+74950000001"]), ":0");
    let ttl: i64 = redis
        .cmd(&["TTL", "callguard:block:+74990000001"])
        .trim_start_matches(':')
        .parse()
        .expect("TTL");
    assert!(ttl > 0, "TTL {ttl}: the expiring rule's key was not kept");
    assert_eq!(
        redis.cmd(&["EXISTS", "callguard:block:8 (499) 000-00-01"]),
        ":0"
    );

    // The running server heard the buckets (announced one by one: wait for each rule).
    for caller in [
        "84950000300",
        "7 (495) 000-00-01",
        "+78121234567",
        "84990000001",
    ] {
        assert!(agi_verdict_within(
            server.agi,
            caller,
            "block",
            Duration::from_secs(5)
        ));
    }
    // This number was blocked before (typed by hand, reason "old"): wait for the new reason.
    let reason_of = |caller: &str| {
        agi_call(server.agi, caller)
            .vars
            .get("CALLGUARD_REASON")
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        crate::support::within(Duration::from_secs(5), || reason_of("7 (495) 000-00-01")
            == "collectors")
        .is_some()
    );
    assert_eq!(reason_of("+78121234567"), "a whole city");
    // ~300 buckets of one rule each: patched in (each bucket's rules read), not reloaded.
    let logs = server.drain_logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("snapshot patched") || l.contains("snapshot published")),
        "{logs:#?}"
    );
    assert!(!logs.iter().any(|l| l.contains("big change")), "{logs:#?}");

    // Edits of bulk rules: unblock removes the field, block moves the rule to a key.
    let out = cli_ok(&store, &["unblock", "84950000002"]);
    assert!(out.contains("removed"), "{out}");
    assert_eq!(
        redis.cmd(&["HEXISTS", &bucket_of("+74950000002"), "+74950000002"]),
        ":0"
    );
    assert!(agi_verdict_within(
        server.agi,
        "84950000002",
        "allow",
        Duration::from_secs(5)
    ));
    cli_ok(&store, &["block", "+74950000003", "--reason", "moved"]);
    assert_eq!(
        redis.cmd(&["HEXISTS", &bucket_of("+74950000003"), "+74950000003"]),
        ":0"
    );
    assert!(
        crate::support::within(Duration::from_secs(5), || {
            agi_call(server.agi, "84950000003")
                .vars
                .get("CALLGUARD_REASON")
                == Some(&"moved".to_owned())
        })
        .is_some()
    );

    // A cold start reads the same rules; export lists every one of them.
    let fresh = Server::start(&store, &[]);
    assert_eq!(agi_call(fresh.agi, "84950000300").verdict(), "block");
    assert_eq!(agi_call(fresh.agi, "84950000002").verdict(), "allow");
    assert_eq!(
        agi_call(fresh.agi, "84950000003").vars["CALLGUARD_REASON"],
        "moved"
    );
    let exported = cli_ok(&store, &["export"]);
    // Header + 301 rules left.
    assert_eq!(exported.lines().count(), 302, "{exported}");
    assert!(exported.contains("+7812XXXXXXX,"), "{exported}");
}

/// An import of 12,000 rules (bulk by default from 10,000) reaches a running server (by
/// patches while the announcements trickle in, by a reload once enough are pending).
#[test]
fn redis_big_import_uses_the_bulk_layout_and_reaches_a_running_server() {
    let redis = Redis::start();
    let store = redis.url();
    let server = Server::start(&store, &[]);
    cli_ok(&store, &["block", "+74951234567", "--reason", "by hand"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: String = (0..12_000).map(|i| format!("+7496{i:07}\n")).collect();
    let file = write(dir.path(), "big.txt", &lines);
    let report = cli_ok(&store, &["import", &file, "--reason", "bulk"]);
    assert!(report.contains("imported 12000 rules"), "{report}");
    // Buckets, not 12,000 keys: the rule key, the meta hash, the call log and ~11,500 buckets.
    let keys: usize = redis
        .cmd(&["DBSIZE"])
        .trim_start_matches(':')
        .parse()
        .expect("DBSIZE");
    assert!((10_000..12_000).contains(&keys), "{keys} keys");
    assert_eq!(redis.cmd(&["EXISTS", "callguard:block:+74960000000"]), ":0");
    // The announcements arrive over a few milliseconds: the first buckets may be patched in
    // before the rest make the set big enough for a reload. Every rule is there in the end.
    for caller in ["84960011999", "+74960000000", "74960006000"] {
        assert!(agi_verdict_within(
            server.agi,
            caller,
            "block",
            Duration::from_secs(10)
        ));
    }
    assert_eq!(
        agi_call(server.agi, "+74960000000").vars["CALLGUARD_REASON"],
        "bulk"
    );
    assert_eq!(
        agi_call(server.agi, "84951234567").vars["CALLGUARD_REASON"],
        "by hand"
    );
    // One import is at most one reload: the announcements still in flight when it began
    // arrive before its marker and are known to be covered.
    std::thread::sleep(Duration::from_millis(500));
    let reloads = server
        .drain_logs()
        .iter()
        .filter(|l| l.contains("big change"))
        .count();
    assert!(reloads <= 1, "{reloads} reloads");
    let listed = cli_ok(&store, &["list"]);
    assert_eq!(listed.lines().count(), 12_001);
}
