//! Redis deployments beyond one open server: AUTH/ACL users, TLS, Sentinel, Cluster, and
//! failovers while calls are being decided.

use std::process::{Command, Stdio};
use std::time::Duration;

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
