//! A headless Chromium driven over the W3C WebDriver protocol (Debian's `chromium` and
//! `chromium-driver`, which `tests/run.sh` installs): just the commands the web-page tests use,
//! spoken as plain HTTP/1.1 JSON to a private `chromedriver` on a free port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::{free_port, within};

/// The key WebDriver names an element reference with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session; the browser and its driver stop on drop.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

fn executable(env: &str, default: &str) -> String {
    let path = std::env::var(env).unwrap_or_else(|_| default.to_owned());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: the web-page tests need Debian's chromium and chromium-driver \
         packages (tests/run.sh installs them; or set {env})"
    );
    path
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub fn start() -> Browser {
        let driver_path = executable("CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = executable("CHROMIUM", "/usr/bin/chromium");
        let port = free_port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let ready = within(Duration::from_secs(20), || {
            TcpStream::connect(addr).is_ok()
                && browser.raw("GET", "/status", None).1["value"]["ready"] == true
        });
        assert!(ready.is_some(), "chromedriver never became ready");
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--no-first-run", "--window-size=1280,1024",
                        format!("--user-data-dir={}", browser._profile.path().display()),
                    ],
                },
            }},
        });
        let (status, reply) = browser.raw("POST", "/session", Some(&caps));
        assert_eq!(status, 200, "new session: {reply}");
        browser.session = reply["value"]["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        browser
    }

    /// One request; reads exactly the answer's Content-Length (chromedriver may keep the
    /// connection open whatever the request says).
    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let mut s = TcpStream::connect(self.addr).expect("connect to chromedriver");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        s.write_all(request.as_bytes())
            .expect("write to chromedriver");
        let mut reader = BufReader::new(s);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).expect("header") == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().expect("content length");
            }
        }
        let mut answer = vec![0u8; length];
        reader.read_exact(&mut answer).expect("body");
        let value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        (status, value)
    }

    /// A command on the session; panics with the driver's message when it fails.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, reply) = self.try_cmd(method, path, body);
        assert_eq!(status, 200, "{method} {path}: {reply}");
        reply
    }

    fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let path = format!("/session/{}{path}", self.session);
        let body = body.or_else(|| (method == "POST").then(|| json!({})));
        let (status, reply) = self.raw(method, &path, body.as_ref());
        (status, reply["value"].clone())
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    /// The element `css` selects, waiting up to 10 s for it to exist.
    fn element(&self, css: &str) -> String {
        let mut found = None;
        within(Duration::from_secs(10), || {
            let (status, v) = self.try_cmd(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            );
            found = (status == 200)
                .then(|| v[ELEMENT].as_str().map(str::to_owned))
                .flatten();
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no element {css}; page text:\n{}", self.page_text()))
    }

    /// Types `text` into the field `css` (after clearing it).
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.cmd("POST", &format!("/element/{id}/clear"), None);
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Clicks the element `css`.
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.cmd("POST", &format!("/element/{id}/click"), None);
    }

    /// Runs `script` (a function body) in the page with `args`; its return value.
    pub fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// The rendered text of `css` ("" when it does not exist or is hidden).
    pub fn text(&self, css: &str) -> String {
        self.run(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            vec![json!(css)],
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// The whole page's rendered text (for failure messages).
    pub fn page_text(&self) -> String {
        self.text("body")
    }

    /// Waits up to `limit` for `css`'s text to satisfy `ok`; the text it ended with.
    pub fn wait_text(&self, css: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let done = within(limit, || {
            last = self.text(css);
            ok(&last)
        });
        assert!(
            done.is_some(),
            "{css} never showed what was expected; it shows:\n{last}\n--- page:\n{}",
            self.page_text()
        );
        last
    }

    /// Saves a PNG of the page as `name`.png in `$SCREENSHOTS_DIR`, when that is set
    /// (to look at the page the tests drive; nothing is saved otherwise).
    pub fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("SCREENSHOTS_DIR") else {
            return;
        };
        let png = self.cmd("GET", "/screenshot", None);
        let png = base64_decode(png.as_str().expect("base64 screenshot"));
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png)
            .expect("write screenshot");
    }

    /// Accepts the open `confirm()` dialog, waiting for it to open.
    pub fn accept_dialog(&self) {
        let done = within(Duration::from_secs(5), || {
            self.try_cmd("POST", "/alert/accept", None).0 == 200
        });
        assert!(done.is_some(), "no dialog opened");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.raw("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (the screenshot encoding), padding ignored.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
