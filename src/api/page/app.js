// callguard admin page. Plain script, no build step, no outside requests: it calls the JSON API
// of the listener that served it, with the bearer token kept in this tab's sessionStorage.
// Everything that comes from the API is put into the page as text (textContent), never as
// markup, so a caller ID or a reason cannot add anything to the page.
"use strict";

const TOKEN_KEY = "callguard.token";
const REFRESH_MS = 5000;
const $ = (id) => document.getElementById(id);

let me = null; // the /api/whoami answer while signed in
let refreshTimer = null;

// ---- API -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + (sessionStorage.getItem(TOKEN_KEY) || "") };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "callguard is not answering (" + e.message + ")");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    const message = data && data.error ? data.error : "HTTP " + response.status;
    if (response.status === 401) {
      signOut("Signed out: " + message);
    }
    throw new ApiError(response.status, message);
  }
  return data;
}

// The API keeps `+` as `+` in a query (so `number=+44...` typed into curl means what it says):
// encode with encodeURIComponent (space as %20, + as %2B), not URLSearchParams (space as +).
function query(params) {
  const parts = [];
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && String(v).trim() !== "") {
      parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(String(v).trim()));
    }
  }
  return parts.length ? "?" + parts.join("&") : "";
}

// ---- small DOM helpers -----------------------------------------------------------------------

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (className) {
    td.className = className;
  }
  return td;
}

function fillTable(table, rows, emptyText, columns) {
  const body = table.tBodies[0];
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(emptyText, "empty");
    td.colSpan = columns;
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const row of rows) {
    body.append(row);
  }
}

function showError(id, error) {
  $(id).textContent = error ? error.message || String(error) : "";
}

function when(text) {
  if (!text) {
    return "";
  }
  const d = new Date(text);
  return isNaN(d) ? text : d.toLocaleString();
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// ---- sign in / out ---------------------------------------------------------------------------

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    me = await api("GET", "/api/whoami");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("login-error").textContent =
      e.status === 401 ? "That token is not accepted." : e.message;
    return;
  }
  $("login-error").textContent = "";
  $("token").value = "";
  $("login").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  const global = me.scope === "global";
  $("who").textContent = me.name + " · " + (global ? "all tenants" : "tenant " + me.tenant);
  // A tenant token acts on its own tenant: the server enforces it, the page does not ask.
  $("tenant-field").hidden = !global;
  $("filter-tenant-field").hidden = !global;
  refreshAll();
  clearInterval(refreshTimer);
  refreshTimer = setInterval(() => {
    if (!document.hidden) {
      loadCalls();
      loadFloods();
    }
  }, REFRESH_MS);
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  clearInterval(refreshTimer);
  $("app").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  $("who").textContent = "";
  $("login-error").textContent = message || "";
}

// ---- add a rule with a preview ---------------------------------------------------------------

let previewSeq = 0;

async function preview() {
  const text = $("rule").value;
  const seq = ++previewSeq;
  if (text.trim() === "") {
    $("preview").hidden = true;
    showError("preview-error", null);
    return;
  }
  try {
    const p = await api("GET", "/api/preview" + query({ rule: text }));
    if (seq !== previewSeq) {
      return; // the field changed while this was in flight
    }
    showError("preview-error", null);
    $("preview-rule").textContent = p.rule;
    $("preview-kind").textContent = p.kind;
    $("preview-count").textContent =
      p.numbers && p.numbers > 1 ? "(" + p.numbers.toLocaleString() + " numbers)" : "";
    const list = $("preview-forms");
    list.replaceChildren();
    for (const c of p.catches) {
      for (const form of c.delivered_as) {
        const li = document.createElement("li");
        const code = document.createElement("code");
        code.textContent = form === "" ? "(empty)" : form;
        li.append(code);
        // With several sample numbers (a mask, a range), say which one each spelling is.
        if (p.catches.length > 1 && form !== c.number) {
          li.append(" → " + c.number);
        }
        list.append(li);
      }
    }
    $("preview").hidden = false;
  } catch (e) {
    if (seq === previewSeq) {
      $("preview").hidden = true;
      showError("preview-error", e);
    }
  }
}

async function addRule(event) {
  event.preventDefault();
  $("add-status").textContent = "";
  const body = {
    list: $("list").value,
    rule: $("rule").value,
    reason: $("reason").value,
  };
  if ($("ttl").value) {
    body.ttl = $("ttl").value;
  }
  if (me && me.scope === "global" && $("tenant").value.trim() !== "") {
    body.tenant = $("tenant").value.trim();
  }
  $("add-button").disabled = true;
  try {
    const added = await api("POST", "/api/rules", body);
    const r = added.rule;
    $("add-status").textContent =
      "Added " + r.rule + " to the " + (r.tenant ? r.tenant + " " : "global ") + r.list +
      " list. It takes effect on every callguard node within a second.";
    $("rule").value = "";
    $("reason").value = "";
    $("preview").hidden = true;
    await loadRules();
  } catch (e) {
    showError("preview-error", e);
  } finally {
    $("add-button").disabled = false;
  }
}

// ---- lists -----------------------------------------------------------------------------------

async function removeRule(entry, button) {
  const scope = entry.tenant ? "tenant " + entry.tenant : "the global list";
  if (!window.confirm("Remove " + entry.rule + " from the " + entry.list + " list of " + scope + "?")) {
    return;
  }
  button.disabled = true;
  try {
    await api(
      "DELETE",
      "/api/rules" + query({ list: entry.list, rule: entry.rule, tenant: entry.tenant || "global" })
    );
    await Promise.all([loadRules(), loadFloods()]);
  } catch (e) {
    button.disabled = false;
    showError("rules-error", e);
  }
}

function removeButton(entry) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "remove";
  button.textContent = "Remove";
  button.title = "Remove " + entry.rule;
  button.addEventListener("click", () => removeRule(entry, button));
  const td = document.createElement("td");
  td.append(button);
  return td;
}

async function loadRules() {
  try {
    const params = { q: $("filter").value, list: $("filter-list").value, limit: 500 };
    if (me && me.scope === "global") {
      params.tenant = $("filter-tenant").value;
    }
    const data = await api("GET", "/api/rules" + query(params));
    const rows = data.rules.map((e) => {
      const tr = document.createElement("tr");
      tr.dataset.rule = e.rule;
      tr.append(
        cell(e.rule, "number"),
        cell(e.kind),
        cell(e.list, "list-" + e.list),
        cell(e.tenant || "global"),
        cell(e.reason),
        cell(e.expires_at ? when(e.expires_at) : "never"),
        cell(e.added_by),
        removeButton(e)
      );
      return tr;
    });
    fillTable($("rules-table"), rows, "No rules match.", 8);
    $("rules-count").textContent =
      data.count + (data.count === 1 ? " rule" : " rules") +
      (data.truncated ? " (first " + data.rules.length + " shown; narrow the search)" : "");
    showError("rules-error", null);
  } catch (e) {
    showError("rules-error", e);
  }
}

// ---- blocked calls ---------------------------------------------------------------------------

async function loadCalls() {
  try {
    const data = await api("GET", "/api/calls" + query({ since: $("calls-since").value, verdict: "block", limit: 200 }));
    const rows = data.calls
      .slice()
      .reverse()
      .map((c) => {
        const tr = document.createElement("tr");
        tr.append(
          cell(when(c.at)),
          cell(c.raw, "number"),
          cell(c.number, "number"),
          cell(c.did, "number"),
          cell(c.tenant || "global"),
          cell(c.rule, "number"),
          cell(c.reason)
        );
        return tr;
      });
    const empty = data.call_log === "on" ? "No blocked calls in this period." : "The call log is off ([call_log] in the config).";
    fillTable($("calls-table"), rows, empty, 7);
    $("calls-count").textContent = data.count + (data.truncated ? " newest shown" : "") + " · updated " + new Date().toLocaleTimeString();
    showError("calls-error", null);
  } catch (e) {
    showError("calls-error", e);
  }
}

// ---- floods ----------------------------------------------------------------------------------

async function loadFloods() {
  try {
    const data = await api("GET", "/api/floods");
    $("floods-state").textContent =
      data.flood_detection === "on"
        ? "Flood detection is on."
        : "Flood detection is off ([flood] in the config); bans below were added earlier.";
    const attacks = (data.attacks || []).map((a) => {
      const tr = document.createElement("tr");
      tr.append(cell(a.target, "number"), cell(a.kind), cell(when(a.since)), cell(a.calls_per_second));
      return tr;
    });
    fillTable($("attacks-table"), attacks, "Nothing is under attack.", 4);
    const bans = data.bans.map((b) => {
      const tr = document.createElement("tr");
      const left = b.expires_in_seconds;
      tr.append(
        cell(b.ban.rule, "number"),
        cell(b.ban.tenant || "global"),
        cell(b.ban.reason),
        cell(left === null || left === undefined ? "" : Math.ceil(left / 60) + " min"),
        removeButton(b.ban)
      );
      return tr;
    });
    fillTable($("bans-table"), bans, "No automatic bans.", 5);
    showError("floods-error", null);
  } catch (e) {
    showError("floods-error", e);
  }
}

function refreshAll() {
  loadRules();
  loadCalls();
  loadFloods();
}

// ---- wiring ----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token").value.trim());
  });
  $("signout").addEventListener("click", () => signOut(""));
  $("rule").addEventListener("input", debounce(preview, 200));
  $("add-form").addEventListener("submit", addRule);
  const reloadRules = debounce(loadRules, 250);
  $("filter").addEventListener("input", reloadRules);
  $("filter-list").addEventListener("change", loadRules);
  $("filter-tenant").addEventListener("input", reloadRules);
  $("calls-since").addEventListener("change", loadCalls);
  $("calls-refresh").addEventListener("click", loadCalls);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    signIn(saved);
  }
});
