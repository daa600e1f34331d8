//! The shipped dialplan library, exercised against the real server: every AGI request the
//! Asterisk and FreePBX snippets make is played, with the environment Asterisk would send
//! for it, through `callguard serve`, and every branch the snippets take on the result must
//! lead somewhere that exists; the FreeSWITCH snippets' `socket` data and the channel
//! variables they set and read are played through the ESL listener the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::esl::esl_call;
use crate::esl_inbound::{FakeFs, new_uuid, start};
use crate::support::{Server, agi_call_with, cli_ok, temp_store};

/// One `exten => …` or `same => …` line: extension, application, its argument text.
#[derive(Debug, Clone)]
struct Step {
    exten: String,
    app: String,
    args: String,
}

/// Contexts of an `extensions.conf`-style file, in order.
type Dialplan = BTreeMap<String, Vec<Step>>;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Parses the subset of extensions.conf the snippets use: `[context]`, `exten => E,P,App(…)`,
/// `same => P,App(…)`, `;` comments.
fn parse(text: &str, into: &mut Dialplan) {
    let mut context = String::new();
    let mut exten = String::new();
    for raw in text.lines() {
        let line = raw.split(';').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            context = name.to_owned();
            assert!(
                into.insert(context.clone(), Vec::new()).is_none(),
                "context [{context}] defined twice"
            );
            continue;
        }
        let (kind, rest) = line.split_once("=>").expect("exten/same line");
        let rest = rest.trim();
        let app_part = match kind.trim() {
            "exten" => {
                let mut parts = rest.splitn(3, ',');
                exten = parts.next().unwrap_or("").trim().to_owned();
                parts.nth(1).unwrap_or("")
            }
            "same" => rest.split_once(',').map_or("", |(_, a)| a),
            "include" => continue,
            other => panic!("unexpected line kind {other:?}: {raw}"),
        };
        let (app, args) = match app_part.split_once('(') {
            Some((app, args)) => (app, args.strip_suffix(')').expect("closing paren")),
            None => (app_part, ""),
        };
        into.get_mut(&context)
            .unwrap_or_else(|| panic!("line outside a context: {raw}"))
            .push(Step {
                exten: exten.clone(),
                app: app.trim().to_owned(),
                args: args.to_owned(),
            });
    }
}

/// The extension names an expression in a `Goto` can produce, given what callguard sets:
/// `${IF($[…]?a:b)}` gives both branches, `${CALLGUARD_VERDICT}` every verdict.
fn possible_extens(expr: &str) -> Vec<String> {
    let verdicts = ["block", "allow", "tag"];
    let expanded: Vec<String> = match expr
        .strip_prefix("${IF(")
        .and_then(|e| e.strip_suffix(")}"))
    {
        Some(inner) => {
            let (_, branches) = inner.rsplit_once('?').expect("IF has ?");
            let (yes, no) = branches.split_once(':').expect("IF has :");
            vec![yes.to_owned(), no.to_owned()]
        }
        None => vec![expr.to_owned()],
    };
    expanded
        .into_iter()
        .flat_map(|e| {
            if e.contains("${CALLGUARD_VERDICT}") {
                verdicts
                    .iter()
                    .map(|v| e.replace("${CALLGUARD_VERDICT}", v))
                    .collect()
            } else {
                vec![e]
            }
        })
        .collect()
}

/// Splits application arguments at the commas outside `${…}`, `$[…]` and `(…)`, as
/// Asterisk does.
fn split_args(args: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut depth = 0i32;
    for c in args.chars() {
        match c {
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

fn has_exten(plan: &Dialplan, context: &str, exten: &str) -> bool {
    plan.get(context).is_some_and(|steps| {
        steps.iter().any(|s| {
            s.exten == exten
                || (s.exten == "_." && !exten.is_empty())
                || (s.exten.starts_with("_X") && exten.starts_with(|c: char| c.is_ascii_digit()))
                || exten.starts_with("${EXTEN")
        })
    })
}

/// Contexts the snippets hand calls to that belong to the PBX, not to callguard.
const PBX_CONTEXTS: &[&str] = &["from-pstn"];

fn shipped_dialplan() -> Dialplan {
    let mut plan = Dialplan::new();
    parse(
        &read("dialplan/asterisk/extensions_callguard.conf"),
        &mut plan,
    );
    parse(&read("dialplan/freepbx/extensions_custom.conf"), &mut plan);
    plan
}

#[test]
fn every_goto_and_gosub_of_the_asterisk_and_freepbx_snippets_lands_somewhere() {
    let plan = shipped_dialplan();
    let mut checked = 0;
    for (context, steps) in &plan {
        for step in steps.iter().filter(|s| s.app == "Goto" || s.app == "Gosub") {
            let parts = split_args(&step.args);
            let (ctx, exten) = (parts[0].as_str(), parts.get(1).map_or("", String::as_str));
            if PBX_CONTEXTS.contains(&ctx) {
                continue;
            }
            for name in possible_extens(exten) {
                assert!(
                    has_exten(&plan, ctx, &name),
                    "[{context}] {}({}) goes to {ctx},{name}, which does not exist",
                    step.app,
                    step.args
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} jumps found: parser out of step"
    );
    // The FreePBX trunk context screens first, then hands every call to from-pstn.
    let freepbx = &plan["from-pstn-callguard"];
    assert_eq!(freepbx[0].app, "Gosub");
    assert!(freepbx[0].args.starts_with("callguard-screen,s,1"));
    assert!(
        freepbx
            .iter()
            .any(|s| s.app == "Goto" && s.args.starts_with("from-pstn,"))
    );
}

/// Every `AGI(agi://…)` of a context with Asterisk's variables replaced by sample values.
fn agi_urls(plan: &Dialplan, context: &str, samples: &[(&str, &str)]) -> Vec<String> {
    plan[context]
        .iter()
        .filter(|s| s.app == "AGI")
        .map(|s| {
            let mut url = s.args.clone();
            for (var, value) in samples {
                url = url.replace(var, value);
            }
            assert!(!url.contains("${"), "unreplaced variable in {url}");
            url
        })
        .collect()
}

/// Plays one `AGI(url)` as Asterisk would, against `server`: Asterisk connects to the URL's
/// host and sends the whole URL as `agi_request` and its path as `agi_network_script`.
fn run_agi(server: &Server, url: &str, caller: &str, dnid: &str) -> crate::support::AgiOutcome {
    let rest = url.strip_prefix("agi://").expect("agi:// URL");
    let (authority, script) = rest.split_once('/').unwrap_or((rest, ""));
    assert_eq!(
        authority, "127.0.0.1:4573",
        "the snippets point at callguard's default FastAGI address"
    );
    let request = format!("agi://{}/{script}", server.agi);
    agi_call_with(
        server.agi,
        &[
            ("agi_request", request.as_str()),
            ("agi_network_script", script),
            ("agi_callerid", caller),
            ("agi_dnid", dnid),
        ],
    )
}

#[test]
fn asterisk_and_freepbx_snippets_through_the_real_server() {
    let plan = shipped_dialplan();
    let (_dir, store) = temp_store();
    let store = store.to_string_lossy().into_owned();
    cli_ok(&store, &["block", "+74951234567", "--reason", "collector"]);
    cli_ok(&store, &["block", "+7812*", "--action", "tag"]);
    cli_ok(&store, &["block", "+79261112233", "--tenant", "acme"]);
    let server = Server::start(&store, &[]);

    // [callguard-screen], reached from FreePBX's [from-pstn-callguard]: each verdict leads to
    // the [callguard-verdict] extension of its name, whatever format the caller ID is in.
    let [screen] = agi_urls(&plan, "callguard-screen", &[])
        .try_into()
        .expect("one AGI");
    for (caller, verdict) in [
        ("84951234567", "block"),
        ("+7 812 555 00 00", "tag"),
        ("74957654321", "allow"),
    ] {
        let outcome = run_agi(&server, &screen, caller, "84951112233");
        assert_eq!(outcome.verdict(), verdict, "{caller}: {outcome:?}");
        assert!(has_exten(&plan, "callguard-verdict", verdict));
    }

    // [callguard-screen-tenant] with Gosub(…(acme)): the tenant's own list applies.
    let [tenant] = agi_urls(&plan, "callguard-screen-tenant", &[("${ARG1}", "acme")])
        .try_into()
        .expect("one AGI");
    assert_eq!(
        run_agi(&server, &tenant, "89261112233", "").verdict(),
        "block"
    );
    assert_eq!(
        run_agi(&server, &screen, "89261112233", "").verdict(),
        "allow"
    );

    // *32: [callguard-remember] before dialling 101, then 101 dials *32 and the caller is
    // blocked; CALLGUARD_BLOCKED picks [callguard-blocked-last]'s "done" branch.
    let [remember] = agi_urls(&plan, "callguard-remember", &[("${ARG1}", "101")])
        .try_into()
        .expect("one AGI");
    let remembered = run_agi(&server, &remember, "8 916 555-44-33", "");
    assert_eq!(remembered.vars["CALLGUARD_REMEMBERED"], "+79165554433");
    let features = agi_urls(
        &plan,
        "callguard-features",
        &[("${CALLERID(num)}", "101"), ("${EXTEN:3}", "84951112233")],
    );
    assert_eq!(features.len(), 2, "*32 and *32<DID>");
    let blocked = run_agi(&server, &features[0], "101", "*32");
    assert_eq!(blocked.vars["CALLGUARD_BLOCKED"], "+79165554433");
    assert!(has_exten(&plan, "callguard-blocked-last", "done"));
    let listed = crate::support::within(std::time::Duration::from_secs(5), || {
        run_agi(&server, &screen, "+79165554433", "").verdict() == "block"
    });
    assert!(
        listed.is_some(),
        "the *32 block did not reach the screening"
    );
    // *32<DID>: the last caller of a DID (remembered when [callguard-screen] screened it).
    let _ = run_agi(&server, &screen, "8 903 222-11-00", "84951112233");
    let by_did = run_agi(&server, &features[1], "101", "*3284951112233");
    assert_eq!(by_did.vars["CALLGUARD_BLOCKED"], "+79032221100");
}

/// Attribute values of every `<action application="APP" data="…"/>` in a FreeSWITCH snippet.
fn actions(xml: &str, app: &str) -> Vec<String> {
    let needle = format!("application=\"{app}\" data=\"");
    xml.lines()
        .filter(|l| !l.trim_start().starts_with("<!--"))
        .filter_map(|l| l.split_once(&needle))
        .map(|(_, rest)| rest.split('"').next().unwrap_or("").to_owned())
        .collect()
}

/// `${callguard_…}` variables a snippet reads.
fn variables_read(xml: &str) -> BTreeSet<String> {
    xml.split("${")
        .skip(1)
        .filter_map(|s| s.split('}').next())
        .filter(|v| v.starts_with("callguard_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn freeswitch_outbound_snippet_through_the_real_server() {
    let xml = read("dialplan/freeswitch/callguard_outbound.xml");
    let [socket] = actions(&xml, "socket")
        .try_into()
        .expect("one socket action");
    let mut words = socket.split_whitespace();
    assert_eq!(
        words.next(),
        Some("127.0.0.1:8084"),
        "callguard's default ESL address"
    );
    let flags: BTreeSet<&str> = words.collect();
    // `full` lets callguard use myevents/getvar; `async` lets it queue its commands.
    assert_eq!(flags, BTreeSet::from(["async", "full"]), "{socket}");

    let (_dir, store) = temp_store();
    let store = store.to_string_lossy().into_owned();
    cli_ok(&store, &["block", "+74951234567"]);
    cli_ok(&store, &["block", "+7812*", "--action", "tag"]);
    cli_ok(&store, &["block", "+79261112233", "--tenant", "acme"]);
    // Dialplan mode: the snippet's own conditions act on the variables.
    let server = Server::start(&store, &[("CALLGUARD_ESL__ON_BLOCK", "dialplan")]);
    let esl = server.esl.expect("esl listener");

    let mut set = BTreeSet::new();
    for (caller, extra, verdict) in [
        ("84951234567", vec![], "block"),
        ("8 812 555 00 00", vec![], "tag"),
        ("74957654321", vec![], "allow"),
        // The snippet's commented `set callguard_tenant=acme` arrives as a channel variable.
        (
            "89261112233",
            vec![("variable_callguard_tenant", "acme")],
            "block",
        ),
    ] {
        let outcome = esl_call(esl, caller, &extra);
        assert_eq!(outcome.verdict(), verdict, "{caller}: {outcome:?}");
        assert!(
            outcome.resumed,
            "dialplan mode resumes so the snippet's conditions run"
        );
        set.extend(outcome.vars.iter().map(|(n, _)| n.clone()));
    }
    let read_vars = variables_read(&xml);
    assert!(read_vars.contains("callguard_verdict"), "{read_vars:?}");
    for var in &read_vars {
        assert!(
            set.contains(var),
            "the snippet reads ${{{var}}}, callguard never sets it"
        );
    }
    // The conditions branch on exactly the verdict words callguard sets.
    for verdict in ["block", "tag"] {
        assert!(
            xml.contains(&format!("expression=\"^{verdict}$\"")),
            "{verdict}"
        );
    }
    assert!(xml.contains("<action application=\"set\" data=\"callguard_tenant=acme\"/>"));
}

#[test]
fn freeswitch_inbound_snippet_parks_for_the_configured_event() {
    let xml = read("dialplan/freeswitch/callguard_inbound.xml");
    // The snippet parks the call; callguard's inbound mode listens for CHANNEL_PARK by default
    // and must hear about every call the snippet parks.
    let parks: Vec<&str> = xml
        .lines()
        .filter(|l| l.contains("application=\"park\""))
        .collect();
    assert_eq!(parks.len(), 1, "{xml}");
    let config = callguard::config::Config::default();
    assert_eq!(config.esl_inbound.event, "CHANNEL_PARK");
    // A parked call must not wait forever if callguard is away: park_timeout hangs it up.
    let timeout = actions(&xml, "set")
        .into_iter()
        .find_map(|d| d.strip_prefix("park_timeout=").map(str::to_owned))
        .expect("park_timeout set before park");
    let seconds: u32 = timeout
        .split(':')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("park_timeout seconds");
    assert!((1..=30).contains(&seconds), "{timeout}");
    // The config keys the snippet's comment names exist, with those defaults.
    for key in [
        "connect = \"127.0.0.1:8021\"",
        "password = \"ClueCon\"",
        "continue_context",
    ] {
        assert!(xml.contains(key), "{key}");
    }
    let text = "[esl_inbound]\nconnect = \"127.0.0.1:8021\"\npassword = \"ClueCon\"\n\
                continue_context = \"from-pstn-screened\"\n";
    callguard::config::Config::from_toml(text).expect("the snippet's config parses");

    // Through the real server: calls parked by the snippet, with the variables it sets, as
    // FreeSWITCH's CHANNEL_PARK events carry them.
    let fs = FakeFs::start("ClueCon");
    let (_dir, _server) = start(
        &fs,
        &[
            &["block", "+74951234567"],
            &["block", "+79261112233", "--tenant", "acme"],
        ],
        &[(
            "CALLGUARD_ESL_INBOUND__CONTINUE_CONTEXT",
            "from-pstn-screened",
        )],
    );
    fs.wait_subscribed(1);
    let park_vars = [("variable_park_timeout", timeout.as_str())];
    let tenant_vars = [
        ("variable_park_timeout", timeout.as_str()),
        ("variable_callguard_tenant", "acme"),
    ];
    for (caller, vars, blocked) in [
        ("84951234567", &park_vars[..], true),
        ("74957654321", &park_vars[..], false),
        ("89261112233", &tenant_vars[..], true),
        ("89261112233", &park_vars[..], false),
    ] {
        let uuid = new_uuid();
        fs.park(&uuid, caller, "1001", vars);
        let acted = fs.acted_on(&uuid);
        let last = acted.last().map_or("", String::as_str);
        if blocked {
            assert_eq!(
                last,
                format!("api uuid_kill {uuid} CALL_REJECTED"),
                "{caller}"
            );
        } else {
            // Back into the routing context the snippet's comment names.
            assert_eq!(
                last,
                format!("api uuid_transfer {uuid} 1001 XML from-pstn-screened"),
                "{caller}"
            );
        }
    }
}
