//! The CI-sized smoke run of the load generator: it must see no wrong verdict and no error
//! (speed figures are never asserted here; they go to BENCHMARKS.md).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use crate::support::{Server, cli_ok, temp_store};

/// Runs loadgen with `args` and returns its stdout, asserting it succeeded.
fn loadgen_ok(store: &str, args: &[&str]) -> String {
    let out = crate::support::callguard()
        .args(["--store", store, "loadgen"])
        .args(args)
        .output()
        .expect("run loadgen");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn esl_loadgen_smoke_run_has_no_wrong_verdict_and_no_error() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let server = Server::start(store, &[]);
    let esl = server.esl.expect("esl listener").to_string();
    let metrics = server.metrics.expect("metrics listener").to_string();
    let text = loadgen_ok(
        store,
        &[
            "--esl",
            &esl,
            "--calls",
            "600",
            "--concurrency",
            "16",
            "--blocked-numbers",
            "50",
            "--metrics",
            &metrics,
        ],
    );
    assert!(text.contains("calls 600 in"), "{text}");
    assert!(text.contains("wrong verdicts 0 calls without verdict 0 (session ended 0, timed out 0) connect errors 0"), "{text}");
    assert!(text.contains("verdicts: block 180 allow 420"), "{text}");
    // The server's own histogram saw exactly this run's calls.
    assert!(
        text.contains(
            "in-server verdict time us (callguard_verdict_seconds, esl, 600 calls): p50 <= "
        ),
        "{text}"
    );
}

/// `callguard loadgen baseline`, killed on drop.
struct Baseline {
    child: Child,
    agi: String,
    esl: String,
}

impl Baseline {
    fn start() -> Baseline {
        let mut child = crate::support::callguard()
            .args(["loadgen", "baseline"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn baseline");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("baseline prints its addresses");
        let addr = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .to_owned()
        };
        Baseline {
            agi: addr("agi="),
            esl: addr("esl="),
            child,
        }
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _waited = self.child.wait();
    }
}

#[test]
fn baseline_smoke_run_counts_every_reply() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let baseline = Baseline::start();
    for (flag, addr) in [("--agi", &baseline.agi), ("--esl", &baseline.esl)] {
        let text = loadgen_ok(
            store,
            &[
                flag,
                addr,
                "--count-only",
                "--calls",
                "400",
                "--concurrency",
                "8",
            ],
        );
        assert!(text.contains("calls 400 in"), "{flag}: {text}");
        assert!(text.contains("replies: answered 400"), "{flag}: {text}");
        assert!(text.contains("wrong verdicts 0 calls without verdict 0 (session ended 0, timed out 0) connect errors 0"), "{flag}: {text}");
    }
}

#[test]
fn verifying_against_the_baseline_fails() {
    // The baseline decides nothing: a verifying run must not pass there.
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let baseline = Baseline::start();
    let out = crate::support::callguard()
        .args(["--store", store, "loadgen", "--agi", &baseline.agi])
        .args(["--calls", "10", "--blocked-numbers", "0"])
        .output()
        .expect("run loadgen");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    // The baseline hangs up without a verdict: that is a call without verdict, not a wrong one.
    assert!(
        text.contains("wrong verdicts 0 calls without verdict 10 (session ended 10, timed out 0)"),
        "{text}"
    );
    assert!(text.contains("expected allow, got no verdict"), "{text}");
}

#[test]
fn loadgen_smoke_run_has_no_wrong_verdict_and_no_error() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let server = Server::start(store, &[]);
    let agi = server.agi.to_string();
    let text = loadgen_ok(
        store,
        &[
            "--agi",
            &agi,
            "--calls",
            "600",
            "--concurrency",
            "16",
            "--blocked-numbers",
            "50",
        ],
    );
    assert!(text.contains("calls 600 in"), "{text}");
    assert!(text.contains("wrong verdicts 0 calls without verdict 0 (session ended 0, timed out 0) connect errors 0"), "{text}");
    assert!(text.contains("verdicts: block 180 allow 420"), "{text}");
}

#[test]
fn loadgen_fails_when_the_server_does_not_have_its_list() {
    let (_dir_a, path_a) = temp_store();
    let (_dir_b, path_b) = temp_store();
    let server = Server::start(path_a.to_str().expect("utf8"), &[]);
    let agi = server.agi.to_string();
    // The list goes to another store: the server never sees it, and loadgen must say so.
    let out = crate::support::callguard()
        .args([
            "--store",
            path_b.to_str().expect("utf8"),
            "loadgen",
            "--agi",
            &agi,
        ])
        .args([
            "--calls",
            "10",
            "--blocked-numbers",
            "5",
            "--ready-timeout",
            "1s",
        ])
        .output()
        .expect("run loadgen");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not pick up"));
}

/// The `key=value` field `key` of an `interval ...` line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn duration_at_a_fixed_rate_prints_intervals_that_add_up() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let server = Server::start(store, &[]);
    let agi = server.agi.to_string();
    let metrics = server.metrics.expect("metrics listener").to_string();
    let text = loadgen_ok(
        store,
        &[
            "--agi",
            &agi,
            "--duration",
            "2s",
            "--rate",
            "100",
            "--report-every",
            "500ms",
            "--blocked-numbers",
            "20",
            "--metrics",
            &metrics,
        ],
    );
    // Calls are due at i / rate: exactly 200 fall inside 2 s, whatever --calls says.
    assert!(text.contains("calls 200 in"), "{text}");
    assert!(text.contains("verdicts: block 60 allow 140"), "{text}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("interval "))
        .collect();
    assert!((4..=5).contains(&lines.len()), "{text}");
    let sum = |key: &str| -> u64 {
        lines
            .iter()
            .map(|l| field(l, key).parse::<u64>().expect("number"))
            .sum()
    };
    assert_eq!(sum("calls"), 200, "{text}");
    assert_eq!(sum("block"), 60, "{text}");
    for key in ["wrong", "no_verdict", "timed_out", "connect_errors"] {
        assert_eq!(sum(key), 0, "{key}: {text}");
    }
    assert_eq!(field(lines[0], "at"), "0.5s", "{text}");
    assert_eq!(field(lines[1], "at"), "1.0s", "{text}");
    // Every stretch saw calls, and the server's histogram was read for it.
    for l in &lines[..4] {
        assert!(
            field(l, "calls").parse::<u64>().expect("number") > 0,
            "{text}"
        );
        assert_ne!(field(l, "server_p99_le_us"), "-", "{text}");
    }
}

#[test]
fn calls_cap_a_duration_run() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let server = Server::start(store, &[]);
    let agi = server.agi.to_string();
    let args = ["--agi", &agi, "--blocked-numbers", "0", "--rate", "100"];
    let text = loadgen_ok(
        store,
        &[&args[..], &["--duration", "1s", "--calls", "30"]].concat(),
    );
    assert!(text.contains("calls 30 in"), "{text}");
}

#[test]
fn expect_checks_each_listed_caller_against_its_verdict() {
    let (dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    cli_ok(store, &["block", "+79161234567", "--reason", "test"]);
    let server = Server::start(store, &[]);
    let agi = server.agi.to_string();
    let file = dir.path().join("expect.txt");
    std::fs::write(
        &file,
        "# caller verdict\n8 (916) 123-45-67 block\n\n+79161234568 allow\n",
    )
    .expect("write");
    let file = file.to_str().expect("utf8 path");
    let text = loadgen_ok(store, &["--agi", &agi, "--expect", file]);
    assert!(text.contains("calls 2 in"), "{text}");
    assert!(text.contains("verdicts: block 1 allow 1"), "{text}");
    assert!(!text.contains("mismatch"), "{text}");

    std::fs::write(file, "+79161234567 allow\n+79161234568 allow\n").expect("write");
    let out = crate::support::callguard()
        .args(["--store", store, "loadgen", "--agi", &agi, "--expect", file])
        .output()
        .expect("run loadgen");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("wrong verdicts 1 calls without verdict 0"),
        "{text}"
    );
    assert!(
        text.contains("mismatch: +79161234567: expected allow, got block"),
        "{text}"
    );

    std::fs::write(file, "+79161234567 blocked\n").expect("write");
    let out = crate::support::callguard()
        .args(["--store", store, "loadgen", "--agi", &agi, "--expect", file])
        .output()
        .expect("run loadgen");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expectations line 1"));
}
