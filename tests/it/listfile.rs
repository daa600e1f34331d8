//! `callguard import` and `callguard export` against both stores, and migration from an
//! Asterisk AstDB blacklist dump and a FreePBX blacklist CSV, checked through the server.

use std::path::Path;
use std::process::Output;

use crate::support::{Redis, Server, agi_call, cli, cli_ok, temp_store};

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
