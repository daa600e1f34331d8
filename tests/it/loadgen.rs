//! The CI-sized smoke run of the load generator: it must see no wrong verdict and no error
//! (speed figures are never asserted here; they go to BENCHMARKS.md).

use std::process::Command;

use crate::support::{Server, bin, temp_store};

#[test]
fn loadgen_smoke_run_has_no_wrong_verdict_and_no_error() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    let server = Server::start(store, &[]);
    let agi = server.agi.to_string();
    let out = Command::new(bin())
        .args(["--store", store, "loadgen", "--agi", &agi])
        .args([
            "--calls",
            "600",
            "--concurrency",
            "16",
            "--blocked-numbers",
            "50",
        ])
        .output()
        .expect("run loadgen");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
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
    let out = Command::new(bin())
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
