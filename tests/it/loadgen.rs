//! The CI-sized smoke run of the load generator: it must see no wrong verdict and no error
//! (speed figures are never asserted here; they go to BENCHMARKS.md).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use crate::support::{Server, temp_store};

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
    assert!(text.contains("wrong verdicts 0 errors 0"), "{text}");
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
        assert!(text.contains("wrong verdicts 0 errors 0"), "{flag}: {text}");
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
    assert!(String::from_utf8_lossy(&out.stdout).contains("errors 10"));
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
    assert!(text.contains("wrong verdicts 0 errors 0"), "{text}");
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
