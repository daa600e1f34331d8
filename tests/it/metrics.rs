//! Observability artifacts against the code: the Grafana dashboard's structure, the Prometheus
//! config and alert rules, and that every metric they name is one callguard exports (from
//! `callguard::metrics::ALL`, and from a running server's `/metrics` once `serve` has
//! `--metrics-listen`).

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use callguard::metrics;
use serde_json::Value;

use crate::support::{agi_call_with, cli_ok, temp_store};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/dashboards/callguard.json")).expect("dashboard is JSON")
}

/// Identifiers starting with `callguard_` outside string literals: PromQL metric names.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in expr.chars().chain([' ']) {
        if quoted {
            quoted = c != '"';
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if word.starts_with("callguard_") {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
        quoted = c == '"';
    }
    names
}

fn panels(dash: &Value) -> &Vec<Value> {
    dash["panels"].as_array().expect("panels")
}

/// Every PromQL text in the dashboard: panel targets and variable queries.
fn dashboard_exprs(dash: &Value) -> Vec<String> {
    let mut exprs: Vec<String> = panels(dash)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for var in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(def) = var["definition"].as_str() {
            exprs.push(def.to_owned());
        }
    }
    exprs
}

/// One `- alert:` block of alerts.yml: its name and (dedented) lines.
struct AlertRule {
    name: String,
    lines: Vec<String>,
}

impl AlertRule {
    /// A key's value: inline, or a `|`/`>` block of the more-indented lines after it.
    fn value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}:");
        let (i, line) = self
            .lines
            .iter()
            .enumerate()
            .find(|(_, l)| l.trim_start().starts_with(&prefix))?;
        let indent = line.len() - line.trim_start().len();
        let inline = line.trim_start()[prefix.len()..].trim();
        if !matches!(inline, "|" | ">" | "|-" | ">-") {
            return Some(inline.trim_matches('"').to_owned());
        }
        let block: Vec<&str> = self.lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .map(|l| l.trim())
            .collect();
        Some(block.join(" "))
    }
}

/// A light structural read of alerts.yml (no YAML parser among the dependencies; the full
/// check is deploy/prometheus/check.sh with promtool).
fn alert_rules() -> Vec<AlertRule> {
    let text = read("deploy/prometheus/alerts.yml");
    assert!(
        !text.contains('\t'),
        "alerts.yml: tabs are not YAML indentation"
    );
    assert!(
        text.lines().any(|l| l == "groups:"),
        "alerts.yml: no top-level `groups:`"
    );
    let mut rules: Vec<AlertRule> = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        if let Some(name) = line.trim_start().strip_prefix("- alert:") {
            rules.push(AlertRule {
                name: name.trim().to_owned(),
                lines: Vec::new(),
            });
        } else if let Some(rule) = rules.last_mut() {
            if line.starts_with("  - name:") {
                break;
            }
            rule.lines.push(line.to_owned());
        }
    }
    rules
}

#[test]
fn dashboard_is_well_formed() {
    let dash = dashboard();
    assert!(dash["schemaVersion"].as_u64().expect("schemaVersion") >= 36);
    assert_eq!(dash["uid"], "callguard");
    let vars = dash["templating"]["list"].as_array().expect("variables");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(var("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(var("DS_PROMETHEUS")["query"], "prometheus");
    assert_eq!(var("tenant")["type"], "query");
    assert_eq!(var("instance")["type"], "query");

    let mut ids = HashSet::new();
    let mut cells: HashSet<(u64, u64)> = HashSet::new();
    let mut graphs = 0;
    for panel in panels(&dash) {
        let title = panel["title"].as_str().expect("every panel has a title");
        let id = panel["id"].as_u64().expect("numeric id");
        assert!(ids.insert(id), "{title}: duplicate id {id}");
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            grid[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        });
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {grid}");
        // No two panels on the same grid cell.
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title}: overlaps another panel");
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        graphs += 1;
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = HashSet::new();
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{title}: empty expr");
            assert!(
                refs.insert(target["refId"].as_str().expect("refId")),
                "{title}: duplicate refId"
            );
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            if expr.contains("histogram_quantile") {
                assert!(
                    expr.contains("_bucket") && expr.contains("le"),
                    "{title}: histogram_quantile needs _bucket series by le: {expr}"
                );
            }
        }
    }
    assert!(graphs >= 10, "only {graphs} panels");
}

#[test]
fn dashboard_and_alerts_name_only_exported_metrics() {
    let dash = dashboard();
    let mut used = BTreeSet::new();
    for expr in dashboard_exprs(&dash) {
        used.extend(metric_names(&expr));
    }
    let dashboard_used = used.clone();
    for rule in alert_rules() {
        let expr = rule.value("expr").expect("expr");
        used.extend(metric_names(&expr));
    }
    let unknown: Vec<&String> = used.iter().filter(|n| !metrics::is_exported(n)).collect();
    assert!(unknown.is_empty(), "not exported by callguard: {unknown:?}");
    // And the reverse: every exported metric has a place on the dashboard.
    for name in metrics::ALL {
        let shown = dashboard_used
            .iter()
            .any(|u| u == name || u.strip_suffix("_bucket") == Some(name));
        assert!(shown, "{name} is exported but on no dashboard panel");
    }
}

#[test]
fn metric_name_tokenizer() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(callguard_decision_seconds_bucket{x="callguard_no"}[5m]))) / callguard_calls_total"#,
    );
    let expected: BTreeSet<String> = ["callguard_calls_total", "callguard_decision_seconds_bucket"]
        .map(str::to_owned)
        .into();
    assert_eq!(names, expected);
}

#[test]
fn alert_rules_cover_the_failure_modes() {
    let rules = alert_rules();
    let names: HashSet<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    for wanted in [
        "CallguardFloodInProgress",
        "CallguardStoreDown",
        "CallguardSnapshotStale",
        "CallguardDecisionLatencyHigh",
        "CallguardFailPolicyDeciding",
    ] {
        assert!(names.contains(wanted), "no {wanted} alert");
    }
    assert_eq!(names.len(), rules.len(), "duplicate alert names");
    for rule in &rules {
        let name = &rule.name;
        assert!(
            !rule.value("expr").unwrap_or_default().is_empty(),
            "{name}: no expr"
        );
        assert!(rule.value("severity").is_some(), "{name}: no severity");
        assert!(rule.value("summary").is_some(), "{name}: no summary");
        if let Some(wait) = rule.value("for") {
            humantime::parse_duration(&wait).unwrap_or_else(|e| panic!("{name}: for {wait}: {e}"));
        }
    }
    let by_name = |n: &str| rules.iter().find(|r| r.name == n).expect("rule");
    assert_eq!(
        by_name("CallguardStoreDown").value("for").as_deref(),
        Some("1m")
    );
    assert!(
        by_name("CallguardSnapshotStale")
            .value("expr")
            .unwrap_or_default()
            .contains("> 120")
    );
    let latency = by_name("CallguardDecisionLatencyHigh");
    assert!(latency.value("expr").unwrap_or_default().contains("0.99"));
    assert!(
        latency
            .value("expr")
            .unwrap_or_default()
            .contains("> 0.001")
    );
    assert_eq!(latency.value("for").as_deref(), Some("5m"));
}

#[test]
fn prometheus_and_grafana_provisioning_agree() {
    let prometheus = read("deploy/prometheus/prometheus.yml");
    for needle in [
        "rule_files:",
        "- alerts.yml",
        "job_name: callguard",
        "scrape_interval: 5s",
        "metrics_path: /metrics",
        "- 127.0.0.1:9573",
    ] {
        assert!(
            prometheus.contains(needle),
            "prometheus.yml lacks {needle:?}"
        );
    }
    let datasource = read("grafana/provisioning/datasources/prometheus.yaml");
    assert!(datasource.contains("type: prometheus"));
    assert!(datasource.contains("apiVersion: 1"));
    let provider = read("grafana/provisioning/dashboards/callguard.yaml");
    assert!(provider.contains("type: file"));
    assert!(provider.contains("path: /var/lib/grafana/dashboards/callguard"));
    let readme = read("grafana/README.md");
    assert!(
        readme.contains("/var/lib/grafana/dashboards/callguard"),
        "README and provider disagree on the dashboards path"
    );
}

/// A child process killed and reaped on drop, on every path (including a failed start).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _killed = self.0.kill();
        let _waited = self.0.wait();
    }
}

/// `callguard serve` with the metrics listener on port 0, stopped on drop.
struct MetricsServer {
    _child: Reaped,
    agi: SocketAddr,
    metrics: SocketAddr,
}

impl MetricsServer {
    /// None while `serve` has no `--metrics-listen` yet (clap rejects the flag).
    fn start(store: &str) -> Option<MetricsServer> {
        let mut child = crate::support::callguard()
            .args(["--store", store, "serve", "--agi-listen", "127.0.0.1:0"])
            .args(["--esl-listen", "off", "--metrics-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn callguard");
        let stderr = child.stderr.take().expect("stderr");
        let child = Reaped(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut agi, mut metrics, mut ready) = (None, None, false);
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while agi.is_none() || metrics.is_none() || !ready {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let all = seen.join("\n");
                panic!("callguard serve did not start:\n{all}");
            };
            let addr = |key: &str| {
                line.split(key)
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| a.parse().ok())
            };
            agi = agi.or_else(|| addr("agi="));
            metrics = metrics.or_else(|| addr("metrics="));
            ready |= line.contains("snapshot published");
            seen.push(line);
        }
        Some(MetricsServer {
            _child: child,
            agi: agi.expect("agi address"),
            metrics: metrics.expect("metrics address"),
        })
    }

    /// `GET path`: status code and body.
    fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.metrics).expect("connect to /metrics");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(s, "GET {path} HTTP/1.1\r\nHost: callguard\r\n\r\n").expect("write");
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
}

/// Label values of every sample line, except `le` (bucket bounds are numbers by design).
fn label_values(text: &str) -> Vec<String> {
    let mut values = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(labels) = line
            .split_once('{')
            .and_then(|(_, rest)| rest.rsplit_once('}'))
            .map(|(labels, _)| labels)
        else {
            continue;
        };
        for pair in labels.split("\",") {
            if let Some((key, value)) = pair.split_once("=\"")
                && key != "le"
            {
                values.push(value.trim_end_matches('"').to_owned());
            }
        }
    }
    values
}

#[test]
fn running_server_exports_every_metric_the_dashboard_and_alerts_use() {
    let (_dir, path) = temp_store();
    let store = path.to_str().expect("utf8 path");
    cli_ok(store, &["block", "+7495*", "--tenant", "acme"]);
    let server = MetricsServer::start(store).expect("serve with --metrics-listen");
    let outcome = agi_call_with(
        server.agi,
        &[
            ("agi_callerid", "84951234567"),
            ("agi_arg_1", "tenant=acme"),
        ],
    );
    assert_eq!(outcome.verdict(), "block");
    assert_eq!(server.get("/healthz").0, 200);
    assert_eq!(server.get("/readyz").0, 200);
    assert_eq!(server.get("/nope").0, 404);
    let (status, text) = server.get("/metrics");
    assert_eq!(status, 200);

    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|n| n.starts_with("callguard_"))
        .map(str::to_owned)
        .collect();
    for name in &exported {
        assert!(
            metrics::is_exported(name),
            "{name} missing from metrics::ALL"
        );
    }
    let dash = dashboard();
    let mut used = BTreeSet::new();
    for expr in dashboard_exprs(&dash) {
        used.extend(metric_names(&expr));
    }
    for rule in alert_rules() {
        used.extend(metric_names(&rule.value("expr").unwrap_or_default()));
    }
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or alerts, not served after one call: {missing:?}\n{text}"
    );
    assert!(
        text.contains(r#"tenant="acme""#),
        "a tenant that owns rules is a label: {text}"
    );
    // No caller ID, nor anything shaped like a phone number, is ever a label value.
    for value in label_values(&text) {
        let digits = value.chars().filter(char::is_ascii_digit).count();
        assert!(digits < 5, "label value {value:?} looks like a number");
    }
}

#[test]
fn every_exported_metric_is_in_the_reference() {
    let doc = read("docs/metrics.md");
    for name in metrics::ALL {
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "{name} is exported but not in docs/metrics.md"
        );
    }
    for rule in alert_rules() {
        assert!(
            doc.contains(&format!("| `{}` |", rule.name)),
            "alert {} is not in docs/metrics.md",
            rule.name
        );
    }
}
