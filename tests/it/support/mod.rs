//! Test harness: a real `redis-server` on a free port, the real `callguard` binary, and an
//! Asterisk-faithful FastAGI client that replays captured environment blocks.

pub mod browser;
pub mod redis_ha;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The built binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_callguard")
}

/// The binary as a command, isolated from the machine: `CALLGUARD_CONFIG` names an empty file,
/// so a `/etc/callguard/callguard.toml` installed on the test machine (by the Debian package,
/// say) is not read. A test's own `--config` still wins.
pub fn callguard() -> Command {
    static EMPTY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let empty = EMPTY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let path = dir.join("empty.toml");
        std::fs::write(&path, "").expect("write empty config");
        path
    });
    let mut command = Command::new(bin());
    command.env("CALLGUARD_CONFIG", empty);
    command
}

/// A fixture file's bytes.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// A private redis-server (never 6379), stopped on drop.
pub struct Redis {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Password [`Redis::cmd`] authenticates with (as `default`), when the server wants one.
    pub password: Option<String>,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one and waits until it answers PING.
    pub fn start() -> Redis {
        Redis::start_with(&[], None)
    }

    /// [`Redis::start`] on a given port (e.g. one a server was told to use before).
    pub fn start_on(port: u16) -> Redis {
        Redis::start_on_with(port, &[], None)
    }

    /// Starts one with extra `redis-server` arguments; `password` is its `requirepass`.
    pub fn start_with(extra: &[&str], password: Option<&str>) -> Redis {
        Redis::start_on_with(free_port(), extra, password)
    }

    fn start_on_with(port: u16, extra: &[&str], password: Option<&str>) -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .args(password.map(|p| ["--requirepass", p]).into_iter().flatten())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (tests/run.sh installs it)");
        let redis = Redis {
            child: Some(child),
            port,
            password: password.map(str::to_owned),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.cmd(&["PING"]) != "+PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    /// `redis://` URL of db 0.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Sends one command (RESP) and returns the first reply line, or "" when unreachable.
    pub fn cmd(&self, args: &[&str]) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let mut req = String::new();
        let mut commands = Vec::new();
        if let Some(p) = &self.password {
            commands.push(vec!["AUTH", p.as_str()]);
        }
        commands.push(args.to_vec());
        for c in &commands {
            req.push_str(&format!("*{}\r\n", c.len()));
            for a in c {
                req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
        }
        if s.write_all(req.as_bytes()).is_err() {
            return String::new();
        }
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        for _ in &commands {
            line.clear();
            let _read = reader.read_line(&mut line);
        }
        line.trim_end().to_owned()
    }

    /// Kills the server (simulates Redis going down).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _killed = c.kill();
            let _waited = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `callguard serve`, stopped on drop.
pub struct Server {
    child: Child,
    /// Where it accepts FastAGI.
    pub agi: SocketAddr,
    /// Where it accepts FreeSWITCH's `socket` app (None when `esl.listen = "off"`).
    pub esl: Option<SocketAddr>,
    /// Where it serves /metrics, /healthz, /readyz (None when `metrics.listen = "off"`).
    pub metrics: Option<SocketAddr>,
    /// Where it serves the admin API (None unless `api.listen` is set).
    pub api: Option<SocketAddr>,
    logs: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `callguard --store STORE serve --agi-listen 127.0.0.1:0 --esl-listen 127.0.0.1:0`
    /// with `extra` env vars
    /// and waits for its "listening" line and first snapshot.
    pub fn start(store: &str, extra_env: &[(&str, &str)]) -> Server {
        Server::launch(&["--store", store], extra_env, true)
    }

    /// Starts `callguard GLOBAL_ARGS serve` on port-0 listeners with `extra_env`, waits for its
    /// "listening" line and, when `wait_snapshot`, its first snapshot.
    pub fn launch(global_args: &[&str], extra_env: &[(&str, &str)], wait_snapshot: bool) -> Server {
        let mut child = callguard()
            .args(global_args)
            .args([
                "serve",
                "--agi-listen",
                "127.0.0.1:0",
                "--esl-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "info")
            // Tests poll the same number many times a second; only flood tests (which turn it
            // back on) may have the detectors ban it, or a poll could pass for the wrong reason.
            .env("CALLGUARD_FLOOD__ENABLED", "false")
            .envs(extra_env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn callguard");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut agi = None;
        let mut esl = None;
        let mut metrics = None;
        let mut api = None;
        let mut ready = !wait_snapshot;
        let deadline = Instant::now() + Duration::from_secs(20);
        while agi.is_none() || !ready {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("callguard serve did not start");
            if let Some(rest) = line.split("agi=").nth(1) {
                agi = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.split("esl=").nth(1) {
                esl = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.split("metrics=").nth(1) {
                metrics = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.split(" api=").nth(1) {
                api = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            ready |= line.contains("snapshot published");
        }
        Server {
            child,
            agi: agi.expect("agi address"),
            esl,
            metrics,
            api,
            logs: rx,
        }
    }

    /// Log lines printed so far.
    pub fn drain_logs(&self) -> Vec<String> {
        self.logs.try_iter().collect()
    }

    /// Waits up to `limit` for a log line containing `needle`; returns it.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.logs.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Sends a signal (`HUP`, `TERM`...) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `limit` for the process to exit; its status, or None if still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _waited = self.child.wait();
    }
}

/// Runs the CLI against `store`.
pub fn cli(store: &str, args: &[&str]) -> Output {
    callguard()
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("run callguard")
}

/// Runs the CLI and returns stdout, asserting success.
pub fn cli_ok(store: &str, args: &[&str]) -> String {
    let out = cli(store, args);
    assert!(
        out.status.success(),
        "callguard {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the sidecar did to one call.
#[derive(Debug, Default)]
pub struct AgiOutcome {
    /// Variables set with SET VARIABLE.
    pub vars: HashMap<String, String>,
    /// Argument of `EXEC Hangup`, if the sidecar hung up.
    pub hangup_cause: Option<String>,
    /// Every command line received.
    pub commands: Vec<String>,
    /// `EXEC` applications with their argument, in order (`Hangup 21`, `Busy 10`...).
    pub execs: Vec<String>,
    /// Values of `SET CONTEXT`, `SET EXTENSION`, `SET PRIORITY`, in order.
    pub location: Vec<String>,
}

impl AgiOutcome {
    /// `CALLGUARD_VERDICT`.
    pub fn verdict(&self) -> &str {
        self.vars
            .get("CALLGUARD_VERDICT")
            .map_or("", String::as_str)
    }
}

/// The environment block of a captured call, with `agi_callerid` replaced.
pub fn env_block(fixture_name: &str, caller_id: &str) -> Vec<u8> {
    env_block_with(fixture_name, &[("agi_callerid", caller_id)])
}

/// The environment block of a captured call with some variables replaced (in place, keeping
/// Asterisk's order) and unknown ones (`agi_arg_1`...) appended after the last one, where
/// Asterisk puts arguments.
pub fn env_block_with(fixture_name: &str, vars: &[(&str, &str)]) -> Vec<u8> {
    let raw = fixture(&format!("asterisk/{fixture_name}"));
    let end = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("fixture has an env block")
        + 2;
    let text = String::from_utf8_lossy(&raw[..end]);
    let mut out = String::new();
    let mut used = vec![false; vars.len()];
    for line in text.split_inclusive('\n') {
        if line == "\n" {
            for (i, (name, value)) in vars.iter().enumerate() {
                if !used[i] {
                    out.push_str(&format!("{name}: {value}\n"));
                }
            }
            out.push('\n');
            continue;
        }
        let name = line.split(": ").next().unwrap_or("");
        match vars.iter().position(|(n, _)| *n == name) {
            Some(i) => {
                used[i] = true;
                out.push_str(&format!("{name}: {}\n", vars[i].1));
            }
            None => out.push_str(line),
        }
    }
    out.into_bytes()
}

/// Plays Asterisk for one call: sends the env block (in two segments, as Asterisk does),
/// answers each command as Asterisk 22 does, sends the unsolicited HANGUP after a hang-up.
pub fn agi_call(addr: SocketAddr, caller_id: &str) -> AgiOutcome {
    agi_call_with(addr, &[("agi_callerid", caller_id)])
}

/// Places FastAGI calls from `caller` until one gets `verdict` (an edit reaches a server through
/// its sync, not at once), for at most `limit`; whether one did.
pub fn agi_verdict_within(agi: SocketAddr, caller: &str, verdict: &str, limit: Duration) -> bool {
    within(limit, || agi_call(agi, caller).verdict() == verdict).is_some()
}

/// [`agi_call`] with some environment variables replaced or added (`agi_request`,
/// `agi_dnid`, `agi_arg_1`...).
pub fn agi_call_with(addr: SocketAddr, vars: &[(&str, &str)]) -> AgiOutcome {
    let env = env_block_with("env_sip_84951234567.rx.raw", vars);
    let mut s = TcpStream::connect(addr).expect("connect to callguard");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mid = env.len() / 2;
    s.write_all(&env[..mid]).expect("write env");
    s.write_all(&env[mid..]).expect("write env");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut outcome = AgiOutcome::default();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("callguard did not finish the session: {e}"),
        }
        let line = line.trim_end_matches('\n').to_owned();
        outcome.commands.push(line.clone());
        let words = asterisk_args(&line);
        let word = |i: usize| words.get(i).map_or("", String::as_str);
        // Replies as the Asterisk 22 captures show them: SET VARIABLE -> result=1; SET
        // CONTEXT/EXTENSION/PRIORITY and a finished Playback -> result=0; an application that
        // hangs the channel up (Hangup, and Busy/Congestion after their timeout) -> result=-1
        // followed by the unsolicited HANGUP.
        let reply: &[u8] = match (word(0), word(1)) {
            ("SET", "VARIABLE") if words.len() == 4 => {
                outcome.vars.insert(words[2].clone(), words[3].clone());
                b"200 result=1\n"
            }
            ("SET", "CONTEXT" | "EXTENSION" | "PRIORITY") if words.len() == 3 => {
                outcome.location.push(words[2].clone());
                b"200 result=0\n"
            }
            ("EXEC", app @ ("Hangup" | "Busy" | "Congestion")) => {
                outcome.execs.push(format!("{app} {}", word(2)));
                if app == "Hangup" {
                    outcome.hangup_cause = words.get(2).cloned();
                }
                b"200 result=-1\nHANGUP\n"
            }
            ("EXEC", "Playback") => {
                outcome.execs.push(format!("Playback {}", word(2)));
                b"200 result=0\n"
            }
            _ => b"510 Invalid or unknown command\n",
        };
        if s.write_all(reply).is_err() {
            break;
        }
    }
    outcome
}

/// Splits a command line as Asterisk's parse_args does: spaces separate, `"` quotes,
/// `\` escapes the next character.
pub fn asterisk_args(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut escaped, mut any) = (false, false, false);
    for c in line.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            any = true;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
            any = true;
        } else if (c == ' ' || c == '\t') && !quoted {
            if any {
                args.push(std::mem::take(&mut cur));
                any = false;
            }
        } else {
            cur.push(c);
            any = true;
        }
    }
    if any {
        args.push(cur);
    }
    args
}

/// Retries `f` until it returns true or `limit` passes; returns the time it took.
pub fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temp dir with a list-file path inside.
pub fn temp_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lists.toml");
    (dir, path)
}

/// Sends raw bytes and returns everything the server sent back before closing.
pub fn raw_session(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _written = s.write_all(bytes);
    let mut out = Vec::new();
    let _read = s.read_to_end(&mut out);
    out
}

/// `GET path` over plain HTTP/1.1: status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: callguard\r\n\r\n").expect("write request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// Sum of every sample of `metric` whose labels contain all of `labels` (`name="value"`).
pub fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An HTTP/1.1 answer: status, header lines, body.
#[derive(Debug)]
pub struct HttpAnswer {
    /// Status code (0 when the server answered nothing).
    pub status: u16,
    /// Header lines as sent.
    pub headers: Vec<String>,
    /// Body text.
    pub body: String,
}

impl HttpAnswer {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Sends raw request bytes, reads the whole answer and splits it.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> HttpAnswer {
    let out = String::from_utf8_lossy(&raw_session(addr, request)).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    HttpAnswer {
        status,
        headers: lines.map(str::to_owned).collect(),
        body: body.to_owned(),
    }
}

/// One admin API request: `method target` with an optional bearer token and JSON body.
pub fn api(
    addr: SocketAddr,
    method: &str,
    target: &str,
    token: Option<&str>,
    json: Option<&str>,
) -> HttpAnswer {
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: callguard\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = json {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    http_raw(addr, request.as_bytes())
}
