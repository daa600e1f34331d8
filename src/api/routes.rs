//! Admin API routes: one function per endpoint, JSON in and out, tenant scoping of every
//! read and write. Errors are `{"error": "..."}` with a status that says whose fault it is.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::ApiState;
use super::auth::{Caller, Scope};
use super::request::Head;
use crate::call::{CallEvent, Protocol};
use crate::calllog::{self, CallRecord, Sink};
use crate::flood::TargetKey;
use crate::number::CallerNumber;
use crate::rules::{self, CallFacts, Entry, ListKind, RulePattern, Tenant};
use crate::store::{EntryJson, EntryMeta, Store, format_time, new_entry, parse_time};

/// The OpenAPI 3 description of every route, served at `/api/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route served: path and methods (the OpenAPI test holds the document to this list).
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/api/rules", &["GET", "POST", "DELETE"]),
    ("/api/check", &["GET"]),
    ("/api/calls", &["GET"]),
    ("/api/floods", &["GET"]),
    ("/api/preview", &["GET"]),
    ("/api/whoami", &["GET"]),
    ("/api/openapi.json", &["GET"]),
];

/// Most rules one listing returns; `limit` may ask for fewer.
const MAX_LIST: usize = 10_000;
/// Rules returned when no `limit` is given.
const DEFAULT_LIST: usize = 1_000;
/// Most call records one read returns.
const MAX_CALLS: usize = 10_000;
const DEFAULT_CALLS: usize = 100;

/// A response ready to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// JSON body.
    pub body: Value,
    /// A body already encoded (the OpenAPI document, the web page), sent instead of `body`.
    pub raw: Option<&'static str>,
    /// Media type of `raw` (`body` is always JSON).
    pub content_type: &'static str,
    /// Answer to `HEAD`: the headers `GET` would get (Content-Length included), no body.
    pub head_only: bool,
    /// Extra header lines (without CRLF).
    pub extra: Vec<String>,
}

impl Response {
    fn ok(status: u16, body: Value) -> Response {
        Response {
            status,
            body,
            raw: None,
            content_type: "application/json",
            head_only: false,
            extra: Vec::new(),
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::ok(status, json!({ "error": message }))
    }

    /// The bytes on the wire: one response, then the connection closes.
    pub fn encode(&self) -> Vec<u8> {
        let body = if let Some(raw) = self.raw {
            raw.to_owned()
        } else {
            let mut text = serde_json::to_string_pretty(&self.body).unwrap_or_default();
            text.push('\n');
            text
        };
        // Every response carries the page's security headers: a JSON body opened in a browser
        // gets the same protection as the page (no framing, no sniffing, no scripts).
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Connection: close\r\nCache-Control: no-store\r\n{}",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            body.len(),
            super::page::SECURITY_HEADERS,
        );
        for line in &self.extra {
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        if !self.head_only {
            out.push_str(&body);
        }
        out.into_bytes()
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// A request that cannot be served, as a response.
type Refusal = Response;

fn bad(message: impl AsRef<str>) -> Refusal {
    Response::error(400, message.as_ref())
}

/// Answers one request.
pub async fn respond(state: &ApiState, head: &Head, body: &[u8], peer: SocketAddr) -> Response {
    if let Some(asset) = super::page::asset(&head.path) {
        if !matches!(head.method.as_str(), "GET" | "HEAD") {
            let mut r = Response::error(405, &format!("{} takes only GET", head.path));
            r.extra.push("Allow: GET, HEAD".to_owned());
            return r;
        }
        // The page holds no data (it asks for a token and calls the API): served to anyone
        // the listener admits.
        return Response {
            raw: Some(asset.body),
            content_type: asset.content_type,
            head_only: head.method == "HEAD",
            ..Response::ok(200, Value::Null)
        };
    }
    let Some((_, methods)) = ROUTES.iter().find(|(path, _)| *path == head.path) else {
        return Response::error(404, &format!("no such endpoint: {}", head.path));
    };
    if !methods.contains(&head.method.as_str()) {
        let mut r = Response::error(405, &format!("{} does not take {}", head.path, head.method));
        r.extra.push(format!("Allow: {}", methods.join(", ")));
        return r;
    }
    if head.path == "/api/openapi.json" {
        // The description holds no data: served without a token, so tools can fetch it.
        return Response {
            raw: Some(OPENAPI),
            ..Response::ok(200, Value::Null)
        };
    }
    let caller = match authenticate(state, head) {
        Ok(caller) => caller,
        Err(refusal) => return refusal,
    };
    let result = match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/api/rules") => list_rules(state, head, &caller),
        ("POST", "/api/rules") => add_rule(state, head, body, &caller, peer).await,
        ("DELETE", "/api/rules") => remove_rule(state, head, &caller, peer).await,
        ("GET", "/api/check") => check(state, head, &caller),
        ("GET", "/api/calls") => calls(state, head, &caller).await,
        ("GET", "/api/floods") => floods(state, &caller),
        ("GET", "/api/preview") => preview(state, head),
        ("GET", "/api/whoami") => Ok(whoami(&caller)),
        _ => Err(Response::error(404, "no such endpoint")),
    };
    result.unwrap_or_else(|refusal| refusal)
}

fn authenticate(state: &ApiState, head: &Head) -> Result<Caller, Refusal> {
    let unauthorized = |message: &str| {
        let mut r = Response::error(401, message);
        r.extra.push("WWW-Authenticate: Bearer".to_owned());
        r
    };
    let Some(token) = head.bearer() else {
        return Err(unauthorized(
            "missing token: send Authorization: Bearer TOKEN (make one with `callguard api-token`)",
        ));
    };
    let tokens = state.tokens.load();
    tokens
        .check(token)
        .cloned()
        .ok_or_else(|| unauthorized("unknown token"))
}

/// The tenant a request acts on: `asked` (`?tenant=` or the body's `tenant`; `global` or
/// absent = the global list for global tokens), checked against what the token may touch.
fn acting_tenant(caller: &Caller, asked: Option<&str>) -> Result<Option<Tenant>, Refusal> {
    let asked = match asked.map(str::trim) {
        None | Some("") => None,
        Some(t) if t.eq_ignore_ascii_case("global") => Some(None),
        Some(t) => Some(Some(Tenant::new(t).map_err(|e| bad(e.to_string()))?)),
    };
    match (&caller.scope, asked) {
        (Scope::Global, asked) => Ok(asked.flatten()),
        (Scope::Tenant(own), None) => Ok(Some(own.clone())),
        (Scope::Tenant(own), Some(Some(t))) if t == *own => Ok(Some(t)),
        (Scope::Tenant(own), Some(_)) => Err(Response::error(
            403,
            &format!("this token is for tenant {own} only"),
        )),
    }
}

fn parse_list(text: Option<&str>) -> Result<Option<ListKind>, Refusal> {
    match text.map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => ListKind::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(t))
            .map(Some)
            .ok_or_else(|| bad(format!("list {t:?} is neither block nor allow"))),
    }
}

fn parse_limit(head: &Head, default: usize, max: usize) -> Result<usize, Refusal> {
    match head.param("limit") {
        None | Some("") => Ok(default),
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| bad(format!("limit {t:?} must be a number from 1 to {max}"))),
    }
}

/// `GET /api/rules?list=&tenant=&q=&limit=`: live rules of the running snapshot.
fn list_rules(state: &ApiState, head: &Head, caller: &Caller) -> Result<Response, Refusal> {
    let list = parse_list(head.param("list"))?;
    let limit = parse_limit(head, DEFAULT_LIST, MAX_LIST)?;
    // Which tenants' rules: a tenant token always its own; a global token all of them unless
    // it names one (`global` = the global list only).
    let only: Option<Option<Tenant>> = match (&caller.scope, head.param("tenant")) {
        (Scope::Global, None | Some("")) => None,
        (_, asked) => Some(acting_tenant(caller, asked)?),
    };
    let query = head.param("q").map(str::trim).filter(|q| !q.is_empty());
    let number = query.map(|q| state.engine.normalizer().normalize(q));
    let needle = query.map(str::to_lowercase);
    let snapshot = state.snapshot.load();
    let now = SystemTime::now();
    // The query's canonical text, once, not once per rule walked.
    let number_text = number.as_ref().map(|n| n.to_string().to_lowercase());
    let hit = |e: &Entry| {
        let (Some(needle), Some(number), Some(number_text)) = (&needle, &number, &number_text)
        else {
            return true;
        };
        let text = e.pattern.to_string().to_lowercase();
        text.contains(needle.as_str())
            || e.reason.to_lowercase().contains(needle.as_str())
            || text.contains(number_text.as_str())
            || (matches!(number, CallerNumber::E164(_)) && e.pattern.matches(number))
    };
    // One unsorted pass that keeps the first `limit` matches and counts the rest; only the
    // rows returned are sorted. A 10-million list is never copied or sorted whole.
    let mut rows: Vec<Entry> = Vec::new();
    let mut total = 0usize;
    let scope = only.as_ref().map(Option::as_ref);
    for e in snapshot.live_where(now, list, scope, None) {
        if !hit(&e) {
            continue;
        }
        total += 1;
        if rows.len() < limit {
            rows.push(e.into_owned());
        }
    }
    rows.sort_by_cached_key(|e| (e.tenant.clone(), e.list, e.pattern.to_string()));
    let rows: Vec<EntryJson> = rows.iter().map(EntryJson::of).collect();
    Ok(Response::ok(
        200,
        json!({ "rules": rows, "count": total, "truncated": total > limit }),
    ))
}

/// Body of `POST /api/rules`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRule {
    #[serde(default)]
    list: Option<String>,
    rule: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    dids: Vec<String>,
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
}

/// `POST /api/rules`: validated as `callguard block`/`allow` validate, written to the store.
async fn add_rule(
    state: &ApiState,
    head: &Head,
    body: &[u8],
    caller: &Caller,
    peer: SocketAddr,
) -> Result<Response, Refusal> {
    let json_type = head.header("content-type").is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json_type {
        return Err(Response::error(
            415,
            "send the rule as JSON with Content-Type: application/json",
        ));
    }
    let new: NewRule =
        serde_json::from_slice(body).map_err(|e| bad(format!("bad JSON body: {e}")))?;
    let list = parse_list(new.list.as_deref())?.unwrap_or(ListKind::Block);
    let tenant = acting_tenant(caller, new.tenant.as_deref())?;
    let now = SystemTime::now();
    let expires_at = match (new.ttl.as_deref(), new.expires_at.as_deref()) {
        (Some(_), Some(_)) => return Err(bad("give ttl or expires_at, not both")),
        (Some(ttl), None) => {
            let ttl = humantime::parse_duration(ttl.trim())
                .map_err(|e| bad(format!("ttl {ttl:?}: {e} (e.g. 90m, 7d)")))?;
            if ttl.is_zero() {
                return Err(bad("ttl must be longer than 0"));
            }
            Some(now.checked_add(ttl).ok_or_else(|| bad("ttl is too long"))?)
        }
        (None, Some(at)) => {
            let at_time = parse_time(at)
                .ok_or_else(|| bad(format!("expires_at {at:?} is not an RFC 3339 time")))?;
            if at_time <= now {
                return Err(bad(format!("expires_at {at:?} is in the past")));
            }
            Some(at_time)
        }
        (None, None) => None,
    };
    let meta = EntryMeta {
        reason: new.reason,
        added_by: Some(format!("api:{}", caller.name)),
        added_at: Some(format_time(now)),
        action: new.action,
        dids: new.dids,
        schedule: new.schedule,
        time_zone: new.time_zone,
    };
    let normalizer = state.engine.normalizer();
    let entry = new_entry(normalizer, tenant, list, &new.rule, meta, expires_at, now)
        .map_err(|e| bad(e.to_string()))?;
    write(&state.store, std::slice::from_ref(&entry)).await?;
    let in_force = in_force(
        state,
        entry.list,
        entry.tenant.as_ref(),
        &entry.pattern,
        true,
    )
    .await;
    info!(
        token = %caller.name,
        %peer,
        list = %entry.list,
        rule = %entry.pattern,
        tenant = entry.tenant.as_ref().map_or("global", Tenant::as_str),
        "api: rule added"
    );
    Ok(Response::ok(
        201,
        json!({ "rule": EntryJson::of(&entry), "from": new.rule, "in_force": in_force }),
    ))
}

/// Longest an edit waits to be in this node's running snapshot before it is answered.
const IN_FORCE_WAIT: Duration = Duration::from_secs(2);

/// Waits (briefly) until the running snapshot has (`present`) or no longer has the rule, so a
/// CRM's "block this caller" returns once calls are decided by it and the page lists what it
/// just saved. The store sync does the work; this only watches its publishes. False when it
/// took longer (the edit is stored and arrives with the sync).
async fn in_force(
    state: &ApiState,
    list: ListKind,
    tenant: Option<&Tenant>,
    pattern: &RulePattern,
    present: bool,
) -> bool {
    state
        .snapshot
        .wait_until(IN_FORCE_WAIT, |s| {
            s.has_rule_on(list, tenant, pattern) == present
        })
        .await
}

async fn write(store: &Store, entries: &[Entry]) -> Result<(), Refusal> {
    store
        .put(entries)
        .await
        .map_err(|e| Response::error(503, &format!("store: {e}")))
}

/// `DELETE /api/rules?list=&rule=&tenant=`: removes every spelling of the rule.
async fn remove_rule(
    state: &ApiState,
    head: &Head,
    caller: &Caller,
    peer: SocketAddr,
) -> Result<Response, Refusal> {
    let list = parse_list(head.param("list"))?
        .ok_or_else(|| bad("list=block or list=allow is required"))?;
    let text = head.param("rule").unwrap_or_default();
    if text.trim().is_empty() {
        return Err(bad(
            "rule= is required (any spelling; `anonymous` for withheld numbers)",
        ));
    }
    let pattern =
        RulePattern::parse(text, state.engine.normalizer()).map_err(|e| bad(e.to_string()))?;
    let tenant = acting_tenant(caller, head.param("tenant"))?;
    let removed = state
        .store
        .remove(tenant.as_ref(), list, std::slice::from_ref(&pattern))
        .await
        .map_err(|e| Response::error(503, &format!("store: {e}")))?;
    let scope = tenant.as_ref().map_or("global", Tenant::as_str).to_owned();
    let lifted = removed > 0 && in_force(state, list, tenant.as_ref(), &pattern, false).await;
    if removed == 0 {
        return Err(Response::error(
            404,
            &format!("{pattern} is not on the {scope} {list} list"),
        ));
    }
    info!(token = %caller.name, %peer, %list, rule = %pattern, tenant = %scope, "api: rule removed");
    Ok(Response::ok(
        200,
        json!({ "removed": pattern.to_string(), "list": list, "tenant": tenant.map(|t| t.to_string()), "in_force": lifted }),
    ))
}

/// `GET /api/check?number=&did=&tenant=&at=`: the running server's verdict and why.
fn check(state: &ApiState, head: &Head, caller: &Caller) -> Result<Response, Refusal> {
    let number = head.param("number").unwrap_or_default();
    if number.trim().is_empty() {
        return Err(bad(
            "number= is required (any format; `anonymous` for a withheld one)",
        ));
    }
    let now = match head.param("at") {
        None | Some("") => SystemTime::now(),
        Some(at) => {
            parse_time(at).ok_or_else(|| bad(format!("at {at:?} is not an RFC 3339 time")))?
        }
    };
    let did = head.param("did").map(str::trim).filter(|d| !d.is_empty());
    // A tenant token checks as its tenant; a global token as the tenant asked, or as the
    // call would be (the DID's tenant from [dids], else global).
    let tenant = acting_tenant(caller, head.param("tenant"))?;
    let normalizer = state.engine.normalizer();
    let settings = state.engine.settings();
    let snapshot = state.snapshot.load();
    let call = CallEvent {
        protocol: Some(Protocol::Cli),
        caller_id: number.to_owned(),
        called: did.map(str::to_owned),
        tenant: tenant.as_ref().map(ToString::to_string),
        ..CallEvent::default()
    };
    let decision = crate::engine::decide(&call, normalizer, &snapshot, &settings, now);
    let did_number = did.map(|d| normalizer.normalize(d));
    let facts = CallFacts {
        number: &decision.number,
        tenant: decision.tenant.as_ref(),
        did: did_number.as_ref(),
    };
    let matches = rules::explain(facts, &snapshot, now);
    let winner = matches.iter().find(|m| m.winner);
    let describe = |m: &rules::Match<'_>, why: Option<&str>| {
        let mut v = json!({
            "entry": EntryJson::of(&m.entry),
            "scope": m.level.as_str(),
            "applies": m.applies,
        });
        if let (Some(why), Some(obj)) = (why, v.as_object_mut()) {
            obj.insert("why".to_owned(), Value::String(why.to_owned()));
        }
        v
    };
    let others: Vec<Value> = matches
        .iter()
        .filter(|m| !m.winner)
        .map(|m| describe(m, Some(m.why_lost(winner))))
        .collect();
    Ok(Response::ok(
        200,
        json!({
            "verdict": decision.verdict.as_str(),
            "number": decision.number.to_string(),
            "number_kind": decision.number.kind(),
            "did": did_number.map(|d| d.to_string()),
            "tenant": decision.tenant.as_ref().map(ToString::to_string),
            "action": decision.action.as_ref().map(ToString::to_string),
            "action_is_default": winner.is_some_and(|w| w.entry.action.is_none()) && decision.action.is_some(),
            "reason": decision.reason,
            "decided_by": winner.map(|w| describe(w, None)),
            "also_matched": others,
            "at": format_time(now),
        }),
    ))
}

/// `GET /api/calls?since=1h&limit=&verdict=&tenant=`: the newest call-log records, oldest first.
async fn calls(state: &ApiState, head: &Head, caller: &Caller) -> Result<Response, Refusal> {
    let since_text = head.param("since").unwrap_or("1h");
    let ago = humantime::parse_duration(since_text.trim())
        .map_err(|e| bad(format!("since {since_text:?}: {e} (e.g. 15m, 1h, 7d)")))?;
    let limit = parse_limit(head, DEFAULT_CALLS, MAX_CALLS)?;
    let only: Option<Option<Tenant>> = match (&caller.scope, head.param("tenant")) {
        (Scope::Global, None | Some("")) => None,
        (_, asked) => Some(acting_tenant(caller, asked)?),
    };
    let verdict = match head.param("verdict").map(str::trim) {
        None | Some("") => None,
        Some(v @ ("block" | "allow" | "tag")) => Some(v.to_owned()),
        Some(v) => return Err(bad(format!("verdict {v:?} is not block, allow or tag"))),
    };
    let since = calllog::since(ago);
    let wanted = move |r: &CallRecord| {
        verdict.as_ref().is_none_or(|v| r.verdict == *v)
            && only.as_ref().is_none_or(|t| {
                let tenant = t.as_ref().map_or("", Tenant::as_str);
                r.tenant == tenant
            })
    };
    let (newest, truncated): (Vec<CallRecord>, bool) = match &state.call_log {
        None | Some(Sink::Redis(Store::Local(_))) => (Vec::new(), false),
        Some(Sink::Redis(Store::Redis(redis))) => {
            let ms = since
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let ms = u64::try_from(ms).unwrap_or(u64::MAX);
            redis
                .newest_calls(ms, limit, wanted)
                .await
                .map_err(|e| Response::error(503, &format!("store: {e}")))?
        }
        Some(Sink::File(path)) => {
            let path = path.clone();
            let keep = state.call_log_keep_files;
            // File reads block: off the runtime's worker threads.
            let mut records =
                tokio::task::spawn_blocking(move || calllog::read_file(&path, since, keep))
                    .await
                    .map_err(|e| Response::error(503, &format!("call log: {e}")))?;
            records.retain(|r| wanted(r));
            let total = records.len();
            let newest = records.split_off(total.saturating_sub(limit));
            (newest, total > limit)
        }
    };
    Ok(Response::ok(
        200,
        json!({
            "calls": newest,
            "count": newest.len(),
            "truncated": truncated,
            "call_log": if state.call_log.is_some() { "on" } else { "off" },
        }),
    ))
}

/// `GET /api/floods`: active detector bans (expiring block rules) and targets under attack.
fn floods(state: &ApiState, caller: &Caller) -> Result<Response, Refusal> {
    let snapshot = state.snapshot.load();
    let now = SystemTime::now();
    let scope = match &caller.scope {
        Scope::Global => None,
        Scope::Tenant(own) => Some(Some(own)),
    };
    let mut banned: Vec<Cow<'_, Entry>> = snapshot
        .live_where(
            now,
            Some(ListKind::Block),
            scope,
            Some(crate::bans::DETECTOR),
        )
        .collect();
    banned.sort_by_cached_key(|e| (e.tenant.clone(), e.pattern.to_string()));
    let bans: Vec<Value> = banned
        .iter()
        .map(|e| {
            let left = e
                .expires_at
                .and_then(|at| at.duration_since(now).ok())
                .map(|d| Duration::from_secs(d.as_secs()));
            json!({
                "ban": EntryJson::of(e),
                "expires_in_seconds": left.map(|d| d.as_secs()),
            })
        })
        .collect();
    let settings = state.engine.settings();
    // A tenant sees attacks on itself and on the DIDs `[dids]` maps to it.
    let visible = |target: &TargetKey| match (&caller.scope, target) {
        (Scope::Global, _) => true,
        (Scope::Tenant(own), TargetKey::Tenant(t)) => t == own,
        (Scope::Tenant(own), TargetKey::Did(did)) => settings.did_tenants.get(did) == Some(own),
    };
    let attacks: Option<Vec<Value>> = state.engine.flood().map(|f| {
        f.targets_under_attack()
            .into_iter()
            .filter(|a| visible(&a.target))
            .map(|a| {
                let (kind, target) = match &a.target {
                    TargetKey::Did(did) => ("did", did.to_string()),
                    TargetKey::Tenant(t) => ("tenant", t.to_string()),
                };
                json!({
                    "kind": kind,
                    "target": target,
                    "since": format_time(a.since),
                    "calls_per_second": (a.rate * 10.0).round() / 10.0,
                })
            })
            .collect()
    });
    let count = |kind: &str| {
        attacks
            .as_ref()
            .map(|list| list.iter().filter(|a| a["kind"] == kind).count())
    };
    Ok(Response::ok(
        200,
        json!({
            "flood_detection": if attacks.is_some() { "on" } else { "off" },
            "bans": bans,
            "targets_under_attack": attacks.as_ref().map(|_| json!({ "dids": count("did"), "tenants": count("tenant") })),
            "attacks": attacks,
        }),
    ))
}

/// `GET /api/whoami`: the token's name and what it may touch (the page shows it and hides the
/// tenant field for tenant tokens).
fn whoami(caller: &Caller) -> Response {
    let (scope, tenant) = match &caller.scope {
        Scope::Global => ("global", None),
        Scope::Tenant(t) => ("tenant", Some(t.to_string())),
    };
    Response::ok(
        200,
        json!({ "name": caller.name, "scope": scope, "tenant": tenant }),
    )
}

/// How many delivered spellings are shown per sample number.
const PREVIEW_SAMPLES: usize = 2;

/// `GET /api/preview?rule=`: what a rule would be saved as and examples of the caller IDs it
/// will catch, each example run through the normalizer and the pattern, so the page shows what
/// the server will do rather than what it is hoped to do. Writes nothing.
fn preview(state: &ApiState, head: &Head) -> Result<Response, Refusal> {
    let text = head.param("rule").unwrap_or_default();
    if text.trim().is_empty() {
        return Err(bad("rule= is required (a number or mask in any format)"));
    }
    let normalizer = state.engine.normalizer();
    let pattern = RulePattern::parse(text, normalizer).map_err(|e| bad(e.to_string()))?;
    let withheld = [
        "anonymous",
        "Anonymous",
        "unknown",
        "private",
        "restricted",
        "",
    ];
    let catches: Vec<Value> = pattern
        .sample_numbers(normalizer)
        .into_iter()
        .take(PREVIEW_SAMPLES)
        .map(|n| {
            let delivered: Vec<String> = match &n {
                CallerNumber::E164(e) => normalizer.delivered_forms(*e),
                CallerNumber::Anonymous => withheld
                    .iter()
                    .filter(|w| normalizer.normalize(w) == n)
                    .map(|w| (*w).to_owned())
                    .collect(),
                other => vec![other.to_string()],
            };
            json!({ "number": n.to_string(), "delivered_as": delivered })
        })
        .collect();
    // Breadth as a JSON number only while it is exact in a double.
    let count = pattern.breadth();
    let count = (count < 1 << 53).then(|| u64::try_from(count).unwrap_or(u64::MAX));
    Ok(Response::ok(
        200,
        json!({
            "rule": pattern.to_string(),
            "kind": pattern.kind(),
            "from": text,
            "numbers": count,
            "catches": catches,
            "default_country": normalizer.default_country(),
        }),
    ))
}
