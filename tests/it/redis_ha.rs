//! Redis deployments beyond one open server: AUTH/ACL users, TLS, Sentinel, Cluster, and
//! failovers while calls are being decided.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::redis_ha::{
    MASTER_NAME, SentinelSetup, TlsFiles, cli_env, cli_env_ok, start_tls,
};
use crate::support::{Redis, Server, agi_call, bin, cli, cli_ok, http_get, within};

/// An ACL user with a password, and `requirepass` for the default user: the URL's
/// credentials work for the CLI and the server, a wrong password is a clear error (no panic),
/// and the password shows in no log line, metric or error.
#[test]
fn acl_user_and_wrong_password() {
    let redis = Redis::start_with(&[], Some("adminpw"));
    assert_eq!(
        redis.cmd(&[
            "ACL",
            "SETUSER",
            "cg",
            "on",
            ">s3cret-pw",
            "~callguard:*",
            "&*",
            "+@all"
        ]),
        "+OK"
    );
    let url = format!("redis://cg:s3cret-pw@127.0.0.1:{}/0", redis.port);
    cli_ok(&url, &["block", "+7 495 123-45-67", "--reason", "acl"]);
    assert!(
        redis
            .cmd(&["EXISTS", "callguard:block:+74951234567"])
            .ends_with('1')
    );
    let server = Server::start(&url, &[]);
    assert_eq!(agi_call(server.agi, "84951234567").verdict(), "block");
    cli_ok(&url, &["block", "+7 812 333-22-11"]);
    assert!(
        within(Duration::from_secs(2), || {
            agi_call(server.agi, "78123332211").verdict() == "block"
        })
        .is_some(),
        "a CLI edit did not reach the server"
    );
    let metrics = server.metrics.expect("metrics listener");
    let (_, body) = http_get(metrics, "/metrics");
    assert!(!body.contains("s3cret"), "password in /metrics");
    let logs = server.drain_logs().join("\n");
    assert!(!logs.contains("s3cret"), "password in the log: {logs}");

    // The default user with `requirepass`, password only.
    let url = format!("redis://:adminpw@127.0.0.1:{}/0", redis.port);
    assert!(cli_ok(&url, &["list"]).contains("+74951234567"));

    // Wrong password: the CLI fails with an authentication error, without a panic.
    for bad in [
        format!("redis://cg:wrong-pw@127.0.0.1:{}/0", redis.port),
        format!("redis://127.0.0.1:{}/0", redis.port),
    ] {
        let out = cli(&bad, &["block", "+7 900 000-00-01"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!err.contains("wrong-pw"), "password in the error: {err}");
        assert!(
            err.contains("WRONGPASS") || err.contains("NOAUTH") || err.contains("uthentication"),
            "not an authentication error: {err}"
        );
    }
    // The server with a wrong password keeps retrying, saying why, and never panics.
    let bad = format!("redis://cg:wrong-pw@127.0.0.1:{}/0", redis.port);
    let lines = run_briefly(&bad, Duration::from_secs(3));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("redis sync interrupted") && l.contains("authentication failed")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("store=redis://cg:***@127.0.0.1")),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("panicked") || l.contains("wrong-pw"))
    );
}

/// `rediss://` to a TLS-only server with a private CA that wants client certificates: the
/// CLI's edits reach the server, calls are decided; without the client certificate or the CA
/// the connection is refused with a clear error.
#[test]
fn tls_with_a_private_ca_and_client_certificate() {
    let tls = TlsFiles::generate();
    let node = start_tls(&tls, true);
    let url = format!("rediss://127.0.0.1:{}/0", node.port);
    let (ca, cert, key) = (
        tls.path("ca.crt").display().to_string(),
        tls.path("client.crt").display().to_string(),
        tls.path("client.key").display().to_string(),
    );
    let env = [
        ("CALLGUARD_REDIS__TLS_CA_FILE", ca.as_str()),
        ("CALLGUARD_REDIS__TLS_CERT_FILE", cert.as_str()),
        ("CALLGUARD_REDIS__TLS_KEY_FILE", key.as_str()),
    ];
    cli_env_ok(
        &url,
        &env,
        &["block", "+7 495 123-45-67", "--reason", "tls"],
    );
    assert!(
        node.cli(&["GET", "callguard:block:+74951234567"])
            .contains("tls")
    );
    let server = Server::start(&url, &env);
    assert_eq!(agi_call(server.agi, "84951234567").verdict(), "block");
    cli_env_ok(&url, &env, &["block", "+7 812 333-22-11"]);
    assert!(
        within(Duration::from_secs(2), || {
            agi_call(server.agi, "78123332211").verdict() == "block"
        })
        .is_some(),
        "a CLI edit over TLS did not reach the server"
    );
    assert_eq!(
        node.cli(&["SET", "callguard:block:8 (383) 111-22-33", "x"]),
        "OK"
    );
    assert!(
        within(Duration::from_secs(2), || {
            agi_call(server.agi, "+73831112233").verdict() == "block"
        })
        .is_some(),
        "a redis-cli edit over TLS did not reach the server"
    );
    assert_eq!(agi_call(server.agi, "+73830000000").verdict(), "allow");

    // Without the client certificate, or without the CA: refused, said so, no panic.
    for env in [&env[..1], &[]] {
        let out = cli_env(&url, env, &["list"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains("redis"), "{err}");
    }
}

/// Sentinel: the CLI and the server find the master through the sentinels; after
/// `SENTINEL FAILOVER` the server follows the new master (commands, subscription, keyspace
/// notifications) and edits made there reach it.
#[test]
fn sentinel_finds_the_master_and_follows_a_failover() {
    let setup = SentinelSetup::start();
    let url = setup.url();
    let first = setup.master().port;
    cli_ok(&url, &["block", "+7 495 123-45-67", "--reason", "sentinel"]);
    let server = Server::start(&url, &[]);
    assert_eq!(agi_call(server.agi, "84951234567").verdict(), "block");

    assert_eq!(
        setup.sentinels[0].cli(&["SENTINEL", "FAILOVER", MASTER_NAME]),
        "OK"
    );
    let switched = within(Duration::from_secs(15), || {
        setup.master_port().is_some_and(|p| p != first)
            && setup.master().cli(&["ROLE"]).starts_with("master")
    });
    assert!(switched.is_some(), "no failover");
    // An edit by hand on the new master, and one through the CLI (which asks the sentinels).
    let new_master = setup.master();
    assert_eq!(
        new_master.cli(&["SET", "callguard:block:8 (812) 333-22-11", "x"]),
        "OK"
    );
    cli_ok(&url, &["block", "+7 383 111-22-33"]);
    for caller in ["78123332211", "73831112233", "84951234567"] {
        assert!(
            within(Duration::from_secs(10), || {
                agi_call(server.agi, caller).verdict() == "block"
            })
            .is_some(),
            "{caller} not blocked after the failover: {:#?}",
            server.drain_logs()
        );
    }
    let logs = server.drain_logs().join("\n");
    assert!(logs.contains("master moved"), "{logs}");
}

/// Runs `callguard serve` against `store` for `how_long` and returns its log lines.
fn run_briefly(store: &str, how_long: Duration) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(bin())
        .args(["--store", store, "serve", "--agi-listen", "127.0.0.1:0"])
        .args(["--esl-listen", "off", "--metrics-listen", "off"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn callguard");
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    std::thread::sleep(how_long);
    let _killed = child.kill();
    let _waited = child.wait();
    reader.join().unwrap_or_default()
}
