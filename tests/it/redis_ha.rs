//! Redis deployments beyond one open server: AUTH/ACL users, TLS, Sentinel, Cluster, and
//! failovers while calls are being decided.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::redis_ha::{
    Cluster, MASTER_NAME, SentinelSetup, TlsFiles, cli_env, cli_env_ok, field, start_tls,
};
use crate::support::{Redis, Server, agi_call, agi_verdict_within, cli, cli_ok, http_get, within};

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
        agi_verdict_within(server.agi, "78123332211", "block", Duration::from_secs(5)),
        "a CLI edit did not reach the server"
    );
    let metrics = server.metrics.expect("metrics listener");
    let (_, body) = http_get(metrics, "/metrics");
    assert!(!body.contains("s3cret"), "password in /metrics");
    let logs = server.drain_logs().join("\n");
    assert!(!logs.contains("s3cret"), "password in the log: {logs}");

    let printed = cli_ok(&url, &["serve", "--print-config"]);
    assert!(printed.contains("cg:***@127.0.0.1"), "{printed}");
    assert!(!printed.contains("s3cret"), "{printed}");

    // A user without CONFIG rights: no keyspace notifications, hand edits arrive by polling.
    assert_eq!(
        redis.cmd(&[
            "ACL",
            "SETUSER",
            "nocfg",
            "on",
            ">pw2",
            "~callguard:*",
            "&*",
            "+@all",
            "-config"
        ]),
        "+OK"
    );
    let limited = Server::start(
        &format!("redis://nocfg:pw2@127.0.0.1:{}/0", redis.port),
        &[],
    );
    assert_eq!(
        redis.cmd(&["SET", "callguard:block:8 (383) 111-22-33", "hand"]),
        "+OK"
    );
    assert!(
        agi_verdict_within(limited.agi, "73831112233", "block", Duration::from_secs(3)),
        "a hand edit did not reach a server without CONFIG rights"
    );
    assert!(
        limited
            .drain_logs()
            .iter()
            .any(|l| l.contains("notifications=false")),
        "CONFIG refused must mean polling"
    );

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
        agi_verdict_within(server.agi, "78123332211", "block", Duration::from_secs(5)),
        "a CLI edit over TLS did not reach the server"
    );
    assert_eq!(
        node.cli(&["SET", "callguard:block:8 (383) 111-22-33", "x"]),
        "OK"
    );
    assert!(
        agi_verdict_within(server.agi, "+73831112233", "block", Duration::from_secs(5)),
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
            agi_verdict_within(server.agi, caller, "block", Duration::from_secs(10)),
            "{caller} not blocked after the failover: {:#?}",
            server.drain_logs()
        );
    }
    let logs = server.drain_logs().join("\n");
    assert!(logs.contains("master moved"), "{logs}");
}

/// Cluster: a load visits every master, CLI edits and `redis-cli -c` edits (any spelling, on
/// any node) reach the server through keyspace notifications on each master, and `unblock`
/// finds spellings on other nodes.
#[test]
fn cluster_loads_every_master_and_follows_edits_on_each() {
    let cluster = Cluster::start(0);
    let url = cluster.url();
    let numbers: Vec<String> = (0..30).map(|i| format!("+7495000{i:04}")).collect();
    let mut args = vec!["block"];
    args.extend(numbers.iter().map(String::as_str));
    cli_ok(&url, &args);
    // The keys are spread over the masters.
    let per_node: Vec<i64> = cluster
        .nodes
        .iter()
        .map(|n| n.cli(&["DBSIZE"]).parse().unwrap_or(0))
        .collect();
    assert!(per_node.iter().all(|&n| n > 0), "{per_node:?}");
    // A key of another type is skipped, as on a single server.
    assert_eq!(
        cluster.cli(&["HSET", "callguard:block:+79001112233", "f", "v"]),
        "1"
    );
    let server = Server::start(&url, &[]);
    assert_eq!(agi_call(server.agi, "89001112233").verdict(), "allow");
    for n in &numbers {
        assert_eq!(agi_call(server.agi, n).verdict(), "block", "{n}");
    }
    // Hand edits in other spellings land on whichever node owns their slot.
    let spellings = [
        ("callguard:block:8 (812) 333-22-11", "+78123332211"),
        ("callguard:block:8-383-111-22-33", "+73831112233"),
        ("callguard:block:+7 (999) 000 00 01", "+79990000001"),
    ];
    for (key, _) in spellings {
        assert_eq!(cluster.cli(&["SET", key, "hand"]), "OK");
    }
    for (_, caller) in spellings {
        assert!(
            agi_verdict_within(server.agi, caller, "block", Duration::from_secs(5)),
            "{caller}: redis-cli -c edit not seen: {:#?}",
            server.drain_logs()
        );
    }
    cli_ok(&url, &["block", "+7 383 000-00-07"]);
    assert!(
        agi_verdict_within(server.agi, "73830000007", "block", Duration::from_secs(5)),
        "a CLI edit on the cluster not seen"
    );
    // unblock finds the hand-typed spellings wherever they live.
    for (key, caller) in spellings {
        assert!(cli_ok(&url, &["unblock", caller]).contains("removed"));
        assert_eq!(cluster.cli(&["EXISTS", key]), "0");
    }
    cli_ok(&url, &["unblock", &numbers[0]]);
    for caller in [
        "+78123332211",
        "+73831112233",
        "+79990000001",
        numbers[0].as_str(),
    ] {
        assert!(
            agi_verdict_within(server.agi, caller, "allow", Duration::from_secs(5)),
            "{caller} still blocked"
        );
    }
    let listed = cli_ok(&url, &["list"]);
    assert!(listed.contains(&numbers[29]), "{listed}");

    // The bulk layout: buckets on every master (each written to the node of its slot), read by
    // the running server from the announcement, by a fresh one from each master's SCAN.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bulk.txt");
    let lines: String = (0..200).map(|i| format!("+7496000{i:04}\n")).collect();
    std::fs::write(&file, lines).expect("write list");
    let file = file.to_string_lossy().into_owned();
    let report = cli_ok(
        &url,
        &["import", &file, "--layout", "bulk", "--reason", "bulk"],
    );
    assert!(report.contains("imported 200 rules"), "{report}");
    for node in &cluster.nodes {
        let buckets = node.cli(&["--scan", "--pattern", "callguard:bulk:*"]);
        assert!(buckets.lines().count() > 10, "{buckets}");
    }
    assert!(agi_verdict_within(
        server.agi,
        "84960000199",
        "block",
        Duration::from_secs(5)
    ));
    cli_ok(&url, &["unblock", "+74960000007"]);
    assert!(agi_verdict_within(
        server.agi,
        "84960000007",
        "allow",
        Duration::from_secs(5)
    ));
    let fresh = Server::start(&url, &[]);
    assert_eq!(
        agi_call(fresh.agi, "84960000000").vars["CALLGUARD_REASON"],
        "bulk"
    );
    assert_eq!(agi_call(fresh.agi, "84960000007").verdict(), "allow");
}

/// Calls placed by [`Load`] and what came back.
#[derive(Debug, Default)]
struct LoadReport {
    calls: u64,
    /// Calls that ended without a verdict.
    no_verdict: u64,
    /// Calls from the number blocked before the start that were not blocked.
    not_blocked: u64,
}

/// Calls through FastAGI without pause until stopped: fresh callers (allowed), and every
/// tenth call the number blocked before the start.
struct Load {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<LoadReport>,
}

impl Load {
    fn start(agi: SocketAddr, blocked: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut report = LoadReport::default();
            let mut i: u64 = 0;
            while !flag.load(Ordering::Relaxed) {
                i += 1;
                let from_blocked = i.is_multiple_of(10);
                let caller = if from_blocked {
                    blocked.to_owned()
                } else {
                    format!("+7{:03}{:07}", 900 + i % 90, (i * 7919) % 10_000_000)
                };
                let verdict = agi_call(agi, &caller).verdict().to_owned();
                report.calls += 1;
                if verdict.is_empty() {
                    report.no_verdict += 1;
                } else if from_blocked && verdict != "block" {
                    report.not_blocked += 1;
                }
            }
            report
        });
        Load { stop, thread }
    }

    fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("load thread")
    }
}

/// Flood settings for failover tests: only the per-caller detector, tripped by a 4th call.
fn flood_config(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("callguard.toml");
    std::fs::write(
        &path,
        "[flood]\nshared = false\nranges = []\n\
         [flood.per_caller]\nthreshold = 3\n[flood.fan_out]\nenabled = false\n",
    )
    .expect("write config");
    path.display().to_string()
}

/// The topology-independent part of a master-crash-under-load test: `callguard serve` on the
/// HA URL with flood detection, FastAGI calls without pause, edits acknowledged before,
/// during and after the failover, and the checks that all of them and a flood ban detected
/// meanwhile are in force with no call left without a verdict.
struct CrashDrill {
    url: String,
    server: Server,
    load: Load,
    acknowledged: Vec<String>,
    _cfg_dir: tempfile::TempDir,
}

impl CrashDrill {
    /// A rule before the server starts, the server and the load, then two edits acknowledged
    /// once a replica has them (WAIT), so the crash cannot take them away.
    fn start(url: &str) -> CrashDrill {
        cli_ok(url, &["block", "+73830000000", "--reason", "before"]);
        let cfg_dir = tempfile::tempdir().expect("tempdir");
        let cfg = flood_config(&cfg_dir);
        let server = Server::start(
            url,
            &[
                ("CALLGUARD_CONFIG", cfg.as_str()),
                ("CALLGUARD_FLOOD__ENABLED", "true"),
                ("CALLGUARD_REDIS__MAX_BACKOFF_MS", "1000"),
            ],
        );
        let load = Load::start(server.agi, "+73830000000");
        let mut acknowledged: Vec<String> = Vec::new();
        for n in ["+73830000001", "+73830000002"] {
            let out = cli(url, &["block", n]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && !err.contains("replica"), "{err}");
            acknowledged.push(n.to_owned());
        }
        CrashDrill {
            url: url.to_owned(),
            server,
            load,
            acknowledged,
            _cfg_dir: cfg_dir,
        }
    }

    /// Right after the crash: a flooding caller, then an edit tried every 200 ms (kept when the
    /// CLI acknowledges it) until `switched` says the failover is done; how long that took.
    fn ride_out(&mut self, crashed: Instant, mut switched: impl FnMut() -> bool) -> Duration {
        for _ in 0..5 {
            agi_call(self.server.agi, "+73835550001");
        }
        let mut k = 0;
        loop {
            if switched() {
                return crashed.elapsed();
            }
            assert!(crashed.elapsed() < Duration::from_secs(20), "no failover");
            k += 1;
            let n = format!("+7383100{k:04}");
            if cli(&self.url, &["block", &n]).status.success() {
                self.acknowledged.push(n);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Edits after the failover, then: every acknowledged edit and the flood ban decide calls
    /// and are listed, the load saw no call without a verdict, the server reloaded.
    fn verify(mut self, switched: Duration) {
        let url = self.url.clone();
        for n in ["+73832000001", "+73832000002"] {
            assert!(
                within(Duration::from_secs(5), || cli(&url, &["block", n])
                    .status
                    .success())
                .is_some(),
                "the CLI cannot write after the failover"
            );
            self.acknowledged.push(n.to_owned());
        }
        self.acknowledged.push("+73835550001".to_owned());
        for n in &self.acknowledged {
            assert!(
                agi_verdict_within(self.server.agi, n, "block", Duration::from_secs(15)),
                "{n} is not blocked after the failover ({switched:?} after the crash): {:#?}",
                self.server.drain_logs()
            );
        }
        let report = self.load.finish();
        assert_eq!(report.no_verdict, 0, "{report:?}");
        assert_eq!(report.not_blocked, 0, "{report:?}");
        assert!(report.calls > 100, "{report:?}");
        let logs = self.server.drain_logs().join("\n");
        assert!(logs.contains("flood: banned"), "{logs}");
        assert!(
            logs.contains("loaded from redis"),
            "no reload after the switch: {logs}"
        );
        let listed = cli_ok(&url, &["list"]);
        for n in &self.acknowledged {
            assert!(
                listed.contains(n.as_str()),
                "{n} missing after the failover: {listed}"
            );
        }
    }
}

/// Sentinel, the master crashes while calls go through without pause: every call gets a
/// verdict; edits acknowledged before the crash, edits made during it (those the CLI
/// acknowledged) and after it, and a flood ban detected while no master was reachable are all
/// in force after the server has moved to the new master and reloaded.
#[test]
fn sentinel_master_crash_under_load_loses_no_verdict_edit_or_ban() {
    let mut setup = SentinelSetup::start();
    let mut drill = CrashDrill::start(&setup.url());
    let old = setup.master().port;
    let crashed = Instant::now();
    setup
        .nodes
        .iter_mut()
        .find(|n| n.port == old)
        .expect("master")
        .kill();
    let switched = drill.ride_out(crashed, || {
        setup
            .master_port()
            .filter(|&p| p != old)
            .is_some_and(|port| {
                setup
                    .nodes
                    .iter()
                    .any(|n| n.port == port && n.cli(&["ROLE"]).starts_with("master"))
            })
    });
    drill.verify(switched);
}

/// Cluster of 3 masters with a replica each; the master holding acknowledged edits crashes
/// while calls go through without pause: every call gets a verdict, the replica takes over,
/// the server resubscribes and reloads, and edits from before, during (acknowledged) and after
/// the failover, and a flood ban detected meanwhile, are all in force.
#[test]
fn cluster_master_crash_under_load_loses_no_verdict_edit_or_ban() {
    let mut cluster = Cluster::start(1);
    let mut drill = CrashDrill::start(&cluster.url());
    // The master holding the first edit, and its replica.
    let key = "callguard:block:+73830000001";
    let victim = cluster
        .nodes
        .iter()
        .position(|n| n.cli(&["ROLE"]).starts_with("master") && n.cli(&["EXISTS", key]) == "1")
        .expect("a master holds the key");
    let victim_port = cluster.nodes[victim].port.to_string();
    let replica = cluster
        .nodes
        .iter()
        .position(|n| {
            let role = n.cli(&["ROLE"]);
            role.starts_with("slave") && role.lines().nth(2) == Some(victim_port.as_str())
        })
        .expect("the master has a replica");
    let crashed = Instant::now();
    cluster.nodes[victim].kill();
    let switched = drill.ride_out(crashed, || {
        let info = cluster.nodes[replica].cli(&["CLUSTER", "INFO"]);
        cluster.nodes[replica].cli(&["ROLE"]).starts_with("master")
            && field(&info, "cluster_state") == Some("ok")
    });
    drill.verify(switched);
}

/// Sentinel where the data nodes and the sentinels each require a password: the URL's
/// credentials go to the master, `redis.sentinel_password` to the sentinels; a wrong sentinel
/// password is a clear error; neither password is logged.
#[test]
fn sentinel_with_passwords_on_nodes_and_sentinels() {
    let setup = SentinelSetup::start_full(None, Some(("data-pw", "sentinel-pw")));
    let hosts: Vec<String> = setup.sentinels.iter().map(|s| s.addr()).collect();
    let url = format!(
        "redis+sentinel://:data-pw@{}/{MASTER_NAME}/0",
        hosts.join(",")
    );
    let env = [("CALLGUARD_REDIS__SENTINEL_PASSWORD", "sentinel-pw")];
    cli_env_ok(&url, &env, &["block", "+7 495 123-45-67"]);
    let server = Server::start(&url, &env);
    assert_eq!(agi_call(server.agi, "84951234567").verdict(), "block");
    cli_env_ok(&url, &env, &["block", "+7 812 333-22-11"]);
    assert!(
        agi_verdict_within(server.agi, "78123332211", "block", Duration::from_secs(5)),
        "a CLI edit did not reach the server"
    );
    let logs = server.drain_logs().join("\n");
    assert!(
        !logs.contains("data-pw") && !logs.contains("sentinel-pw"),
        "{logs}"
    );
    let out = cli_env(
        &url,
        &[("CALLGUARD_REDIS__SENTINEL_PASSWORD", "wrong")],
        &["list"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("uthentication"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("pw"), "{err}");
}

/// `rediss+sentinel://` and `rediss+cluster://`: sentinels, masters, replicas and cluster
/// nodes on TLS only, trusted through `redis.tls_ca_file`; CLI edits reach the server.
#[test]
fn sentinel_and_cluster_over_tls() {
    let tls = TlsFiles::generate();
    let ca = tls.path("ca.crt").display().to_string();
    let env = [("CALLGUARD_REDIS__TLS_CA_FILE", ca.as_str())];
    let setup = SentinelSetup::start_with(Some(&tls));
    let cluster = Cluster::start_with(0, Some(&tls));
    let cluster_url = format!("rediss{}", cluster.url().trim_start_matches("redis"));
    for url in [setup.tls_url(), cluster_url] {
        cli_env_ok(&url, &env, &["block", "+7 495 123-45-67"]);
        let server = Server::start(&url, &env);
        assert_eq!(
            agi_call(server.agi, "84951234567").verdict(),
            "block",
            "{url}"
        );
        cli_env_ok(&url, &env, &["block", "+7 812 333-22-11"]);
        assert!(
            agi_verdict_within(server.agi, "78123332211", "block", Duration::from_secs(5)),
            "{url}: a CLI edit did not reach the server: {:#?}",
            server.drain_logs()
        );
        // Without the CA: refused.
        let out = cli_env(&url, &[], &["list"]);
        assert!(!out.status.success(), "{url}");
    }
}

/// Runs `callguard serve` against `store` for `how_long` and returns its log lines.
fn run_briefly(store: &str, how_long: Duration) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let mut child = crate::support::callguard()
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
