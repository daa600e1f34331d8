//! Hostile-input checks shared by the cargo-fuzz targets in `tests/fuzz/` and the corpus replay tests:
//! each takes arbitrary bytes, runs them through one reader, parser or encoder the way the
//! server does, and panics when an invariant breaks (a panic is what a fuzz target reports).
//! Not used by the server; public only so that `tests/fuzz/` can call it.
//!
//! Inputs whose first byte steers the check (limits, chunk sizes, default country) use it that
//! way on every run, so a corpus file replays exactly as it was fuzzed.

pub mod peers;
#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::agi::codec as agi;
use crate::call::{CallEvent, Decision};
use crate::engine::{self, EngineSettings};
use crate::esl::codec as esl;
use crate::number::{CallerNumber, E164, Normalizer, NumberingPlans};
use crate::rules::matcher::DigitPattern;
use crate::rules::{Entry, ListKind, Matcher, RuleAction, RulePattern, Schedule, Snapshot};
use crate::rules::{Tenant, TimeZone};

/// A fuzz target's check: panics when an invariant breaks.
pub type Check = fn(&[u8]);

/// The fuzz targets by name (the names of `tests/fuzz/fuzz_targets/*.rs` and `tests/fuzz/corpus/*`).
pub const TARGETS: [(&str, Check); 5] = [
    ("agi_reader", agi_reader),
    ("esl_reader", esl_reader),
    ("normalizer", normalizer),
    ("rule_parser", rule_parser),
    ("encoders", encoders),
];

const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 4573);

/// The first byte (0 for empty input) and the rest.
fn split_seed(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&seed, rest)) => (seed, rest),
        None => (0, data),
    }
}

/// `stream` cut into pieces the way reads from a socket may return it: one piece when
/// `seed` is 0, else pseudo-random sizes from 1 to `seed` bytes (a fixed sequence per seed).
fn chunks(stream: &[u8], seed: u8) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![stream];
    }
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = (state % u32::from(seed)) as usize + 1;
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

// ---- AGI reader ----

/// What the AGI session reader gets out of a stream, in order; an error ends it.
#[derive(Debug, PartialEq)]
enum AgiItem {
    Env(agi::AgiEnv),
    Reply(agi::Reply),
    Error(agi::CodecError),
}

/// Bytes from Asterisk fed to the FastAGI decoders the way `agi::session` reads them: appended
/// chunk by chunk to one buffer, the environment block first, then replies, each decoded
/// message drained. First byte: bit 7 picks small limits (caps reached with short inputs)
/// instead of the server's, bits 0-6 the chunk sizes.
///
/// Checks: no panic; every decode consumes 1..=buffered bytes; an incomplete message never
/// leaves more buffered than the caps allow; the caps hold on what is decoded; any chunking
/// gives the messages and the error of the whole stream at once (except which cap error ends
/// it); the call mapping accepts every environment.
pub fn agi_reader(data: &[u8]) {
    let (seed, stream) = split_seed(data);
    let limits = if seed & 0x80 != 0 {
        agi::Limits {
            max_line: 64,
            max_env_bytes: 256,
            max_env_vars: 8,
        }
    } else {
        agi::Limits::default()
    };
    let whole = agi_session(&[stream], &limits);
    let pieces = chunks(stream, seed & 0x7f);
    let chunked = agi_session(&pieces, &limits);
    if whole != chunked {
        // Which cap trips first may depend on how much had arrived: an unfinished line is
        // over max_env_bytes before it is over max_line. Anything else must not change.
        let is_cap = |item: Option<&AgiItem>| {
            matches!(
                item,
                Some(AgiItem::Error(
                    agi::CodecError::LineTooLong { .. }
                        | agi::CodecError::EnvTooLarge { .. }
                        | agi::CodecError::TooManyVars { .. }
                ))
            )
        };
        assert!(
            whole.len() == chunked.len()
                && whole[..whole.len() - 1] == chunked[..chunked.len() - 1]
                && is_cap(whole.last())
                && is_cap(chunked.last()),
            "chunking changed what was decoded: {whole:?} vs {chunked:?}"
        );
    }
    for item in &whole {
        if let AgiItem::Env(env) = item {
            assert!(env.vars().len() <= limits.max_env_vars);
            for (name, value) in env.vars() {
                assert!(name.starts_with("agi_") && !name.contains(['\n', ':']));
                assert!(!value.contains('\n'));
            }
            let call = crate::agi::session::call_from_env(env, PEER);
            std::hint::black_box(crate::agi::session::route(env));
            assert!(!call.caller_id.contains('\n'));
        }
    }
}

fn agi_session(pieces: &[&[u8]], limits: &agi::Limits) -> Vec<AgiItem> {
    // An incomplete env block is rejected past max_env_bytes, an incomplete reply line past
    // max_line, an incomplete 520 usage block past max_env_bytes.
    let most_buffered = limits.max_env_bytes.max(limits.max_line);
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut env_done = false;
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let decoded = if env_done {
                agi::decode_reply(&buf, limits).map(|r| r.map(|(m, n)| (AgiItem::Reply(m), n)))
            } else {
                agi::decode_env(&buf, limits).map(|r| r.map(|(m, n)| (AgiItem::Env(m), n)))
            };
            match decoded {
                Err(e) => {
                    out.push(AgiItem::Error(e));
                    return out;
                }
                Ok(None) => {
                    let cap = if env_done {
                        most_buffered
                    } else {
                        limits.max_env_bytes
                    };
                    assert!(buf.len() <= cap, "{} bytes buffered", buf.len());
                    break;
                }
                Ok(Some((item, used))) => {
                    assert!(used > 0 && used <= buf.len(), "consumed {used}");
                    buf.drain(..used);
                    env_done = true;
                    out.push(item);
                }
            }
        }
    }
    out
}

// ---- ESL reader ----

/// What the ESL reader gets out of a stream, in order; an error ends it.
#[derive(Debug, PartialEq)]
enum EslItem {
    Message(esl::Message),
    Error(esl::CodecError),
}

/// Bytes from FreeSWITCH fed to the Event Socket decoder the way `esl::outbound` and
/// `esl::inbound` read them, each message then read as the sessions do (its event, the channel
/// data). First byte as in [`agi_reader`].
///
/// Checks: no panic; consumption and buffering bounds as for AGI; caps hold; chunking does not
/// change the result; header lookups agree with the header list and with the raw values;
/// [`esl::event_fields`] agrees with [`esl::decode_event`] (same values, same errors).
pub fn esl_reader(data: &[u8]) {
    let (seed, stream) = split_seed(data);
    let limits = if seed & 0x80 != 0 {
        esl::Limits {
            max_header_block: 512,
            max_body: 1024,
            max_headers: 16,
        }
    } else {
        esl::Limits::default()
    };
    let whole = esl_session(&[stream], &limits);
    let pieces = chunks(stream, seed & 0x7f);
    assert_eq!(
        whole,
        esl_session(&pieces, &limits),
        "chunking changed what was decoded"
    );
    for item in &whole {
        if let EslItem::Message(message) = item {
            check_esl_message(message, &limits);
            if let Ok(Some(event)) = message.event(&limits) {
                check_esl_message(&event, &limits);
            }
            let body = message.body().unwrap_or_default();
            let names = ["Event-Name", "Unique-ID", "Caller-Caller-ID-Number"];
            let fields = esl::event_fields(body, &limits, names);
            let decoded = esl::decode_event(body, &limits)
                .map(|event| names.map(|name| event.get(name).map(str::to_owned)));
            assert_eq!(fields, decoded, "event_fields disagrees with decode_event");
        }
    }
}

fn esl_session(pieces: &[&[u8]], limits: &esl::Limits) -> Vec<EslItem> {
    let most_buffered = limits.max_header_block + limits.max_body;
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match esl::decode_message(&buf, limits) {
                Err(e) => {
                    out.push(EslItem::Error(e));
                    return out;
                }
                Ok(None) => {
                    assert!(buf.len() <= most_buffered, "{} bytes buffered", buf.len());
                    break;
                }
                Ok(Some((message, used))) => {
                    assert!(used > 0 && used <= buf.len(), "consumed {used}");
                    buf.drain(..used);
                    out.push(EslItem::Message(message));
                }
            }
        }
    }
    out
}

fn check_esl_message(message: &esl::Message, limits: &esl::Limits) {
    assert!(message.headers().len() <= limits.max_headers);
    assert!(message.body().map_or(0, <[u8]>::len) <= limits.max_body);
    for (name, _) in message.headers() {
        assert!(!name.is_empty() && !name.contains('\n'));
        // The first header of a name wins, in any case.
        let first = message.get(name);
        assert!(first.is_some());
        let raw = message.get_raw(name).unwrap_or_default();
        if !raw.contains('%') {
            assert_eq!(first, Some(raw));
        }
        let defined = first.filter(|v| !v.is_empty() && *v != "_undef_");
        assert_eq!(message.get_defined(name), defined);
    }
    let call = crate::esl::outbound::call_from_channel(message, PEER);
    std::hint::black_box((message.is_ok_reply(), message.unique_id(), call));
}

// ---- normalizer ----

/// One normalizer per builtin default country, built once.
fn normalizers() -> &'static [Normalizer] {
    static NORMALIZERS: OnceLock<Vec<Normalizer>> = OnceLock::new();
    NORMALIZERS.get_or_init(|| {
        let plans = NumberingPlans::builtin();
        plans
            .countries()
            .filter_map(|country| Normalizer::new(plans, country).ok())
            .collect()
    })
}

/// Any bytes (lossy UTF-8, as the front ends decode them) as a caller ID, with every builtin
/// default country.
///
/// Checks: no panic; the result's text form has one of the four canonical shapes (`+digits`
/// of a valid E.164 length, `anonymous`, `local:digits`, `invalid:token`), short, ASCII, no
/// whitespace or control characters; normalizing that text again, with any default country,
/// gives the same result (so it is stable under repetition).
pub fn normalizer(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for n in normalizers() {
        let once = n.normalize(&text);
        let shown = once.to_string();
        check_canonical_shape(&once, &shown);
        for other in normalizers() {
            assert_eq!(
                other.normalize(&shown),
                once,
                "{text:?} -> {shown:?} is not a fixed point with default country {}",
                other.default_country()
            );
        }
    }
    if let Ok(tenant) = Tenant::new(&text) {
        assert!(
            tenant
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        );
        assert_eq!(Tenant::new(tenant.as_str()).as_ref(), Ok(&tenant));
    }
}

fn check_canonical_shape(number: &CallerNumber, shown: &str) {
    assert!(
        shown.is_ascii() && shown.len() <= 48,
        "{number:?} shown as {shown:?}"
    );
    assert!(!shown.chars().any(|c| c.is_whitespace() || c.is_control()));
    match number {
        CallerNumber::E164(e) => {
            let digits = shown.strip_prefix('+').unwrap_or_default();
            assert!((1..=15).contains(&digits.len()), "{shown:?}");
            assert!(digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0'));
            assert_eq!(E164::from_digits(digits), Some(*e));
            assert_eq!(e.digit_count(), digits.len());
        }
        CallerNumber::Anonymous => assert_eq!(shown, "anonymous"),
        CallerNumber::Local(digits) => {
            assert_eq!(shown, format!("local:{digits}"));
            assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
        }
        CallerNumber::Invalid(token) => {
            assert_eq!(shown, format!("invalid:{token}"));
            let body = token.strip_prefix('+').unwrap_or(token);
            assert!(
                !body.is_empty()
                    && body
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
                "{shown:?}"
            );
        }
    }
}

// ---- rule parser ----

/// Instants the schedule checks probe: the epoch, a date in May 2026, and half an hour before
/// Europe/London (the zone used here when the system has it) springs forward and falls back
/// in 2026.
const PROBES: [u64; 4] = [0, 1_780_000_000, 1_774_744_200, 1_792_888_200];

fn london() -> Option<&'static TimeZone> {
    static LONDON: OnceLock<Option<TimeZone>> = OnceLock::new();
    LONDON
        .get_or_init(|| TimeZone::parse("Europe/London").ok())
        .as_ref()
}

/// Any text (lossy UTF-8) as a rule pattern with every builtin default country, as a block
/// action and as a schedule.
///
/// Checks: no panic; a parsed pattern's canonical text parses back to the same pattern with
/// any default country; the compiled matcher agrees with the pattern's own `matches` on
/// numbers around it; an action's text parses back to it and its words are inert in the
/// dialplan commands that carry it out; a schedule's canonical text parses back to it, and
/// `next_change` returns a later instant at which `is_active` has flipped.
pub fn rule_parser(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for n in normalizers() {
        if let Ok(pattern) = RulePattern::parse(&text, n) {
            check_pattern(&text, &pattern, n);
        }
    }
    if let Ok(action) = text.parse::<RuleAction>() {
        check_action(&action);
    }
    if let Ok(schedule) = Schedule::parse(&text) {
        check_schedule(&schedule);
    }
}

fn check_pattern(text: &str, pattern: &RulePattern, n: &Normalizer) {
    let shown = pattern.to_string();
    for other in normalizers() {
        match RulePattern::parse(&shown, other) {
            Ok(again) => assert_eq!(
                &again,
                pattern,
                "{text:?} -> {shown:?} reads back differently with default country {}",
                other.default_country()
            ),
            Err(e) => panic!(
                "{text:?} -> {shown:?} does not parse with default country {}: {e}",
                other.default_country()
            ),
        }
    }
    std::hint::black_box((pattern.kind(), pattern.breadth()));
    let digit_patterns = pattern.digit_patterns();
    let compiled = Matcher::build(digit_patterns.iter().cloned().zip(0u32..));
    let mut probes: Vec<E164> = Vec::new();
    if let CallerNumber::E164(e) = n.normalize(text) {
        probes.push(e);
    }
    match pattern {
        RulePattern::Mask(mask) => {
            assert!(!digit_patterns.is_empty());
            probes.extend(mask_samples(mask));
        }
        RulePattern::Range(lo, hi) => {
            assert!(!digit_patterns.is_empty() && lo < hi);
            assert_eq!(lo.digit_count(), hi.digit_count());
            for v in [lo.value(), hi.value()] {
                probes.extend(
                    [v.checked_sub(1), Some(v), v.checked_add(1)]
                        .into_iter()
                        .flatten()
                        .filter_map(E164::from_value),
                );
            }
        }
        RulePattern::Exact(_) | RulePattern::AnyInvalid => assert!(digit_patterns.is_empty()),
    }
    for e in probes {
        let digits = e.to_string();
        let naive = pattern.matches(&CallerNumber::E164(e));
        let fast = !compiled.all(&digits.as_bytes()[1..]).is_empty();
        if matches!(pattern, RulePattern::Mask(_) | RulePattern::Range(..)) {
            assert_eq!(
                naive, fast,
                "{shown} on {digits}: naive {naive}, compiled {fast}"
            );
        }
    }
}

/// Numbers a mask must or may match: its lowest, highest and middle digit in every place,
/// with 0 to 2 more digits for an open tail.
fn mask_samples(mask: &DigitPattern) -> Vec<E164> {
    let pickers: [fn(u16) -> u32; 3] = [
        |s| s.trailing_zeros(),
        |s| 15 - s.leading_zeros(),
        |s| (0..10).find(|d| s & (1 << d) != 0 && *d >= 5).unwrap_or(0),
    ];
    let mut out = Vec::new();
    for pick in pickers {
        let mut digits: String = mask
            .elems
            .iter()
            .map(|&s| char::from_digit(pick(s).min(9), 10).unwrap_or('0'))
            .collect();
        for extra in 0..3 {
            if extra > 0 {
                digits.push('7');
            }
            out.extend(E164::from_digits(&digits));
        }
    }
    out
}

fn check_action(action: &RuleAction) {
    let shown = action.to_string();
    assert_eq!(
        shown.parse::<RuleAction>().as_ref(),
        Ok(action),
        "{shown:?}"
    );
    // Sound names and redirect targets reach dialplan applications and api command lines.
    let words: Vec<&str> = match action {
        RuleAction::Playback { sound } => vec![sound],
        RuleAction::Redirect {
            context,
            exten,
            priority,
        } => vec![context, exten, priority],
        _ => Vec::new(),
    };
    for word in words {
        assert!(
            !word.is_empty()
                && word.bytes().all(|b| b.is_ascii_graphic()
                    && !matches!(b, b'"' | b'\\' | b'$' | b',' | b'\'' | b'{' | b'}')),
            "{word:?}"
        );
    }
    for line in crate::agi::session::action_commands(action) {
        let commands = peers::asterisk_reads(&line, 2048);
        assert_eq!(commands.len(), 1, "{commands:?}");
    }
}

fn check_schedule(schedule: &Schedule) {
    let shown = schedule.to_string();
    match Schedule::parse(&shown) {
        Ok(again) => assert_eq!(&again, schedule, "{shown:?}"),
        Err(e) => panic!("{shown:?} does not parse: {e}"),
    }
    let zones = [Some(TimeZone::utc()), london().cloned()];
    for zone in zones.iter().flatten() {
        for secs in PROBES {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let active = schedule.is_active(at, zone);
            if let Some(change) = schedule.next_change(at, zone) {
                assert!(change > at, "{shown:?}: change not after {secs}");
                assert_ne!(
                    schedule.is_active(change, zone),
                    active,
                    "{shown:?} in {}: nothing changes at {change:?}",
                    zone.name()
                );
            }
        }
    }
}

// ---- encoders ----

/// Fields of an [`encoders`] input, split at 0xFF bytes (never in UTF-8): caller ID, caller
/// name, reason text, tenant name, block action.
const FIELDS: usize = 5;

/// Caller and rule values through every encoder that writes them, and through the whole path
/// from a PBX's bytes to the commands callguard writes: the call arrives as an AGI environment
/// block and as ESL channel data carrying the caller ID, name and tenant, a block rule for
/// that caller carries the reason text and action, and the decision's variables and action go
/// out as AGI commands, outbound `sendmsg`s and inbound `api` lines.
///
/// Checks: each command is exactly one command for Asterisk (2 KiB and 8 KiB line buffers) and
/// for FreeSWITCH, with its arguments or headers in place and the value intact or only
/// sanitized (control characters to spaces, cut to the cap, `$` removed).
pub fn encoders(data: &[u8]) {
    let mut fields: Vec<String> = data
        .splitn(FIELDS, |&b| b == 0xff)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    fields.resize(FIELDS, String::new());
    for value in &fields {
        check_agi_value(value);
        check_esl_value(value);
    }
    let [caller_id, name, reason, tenant, action] = &fields[..] else {
        return;
    };
    check_call_path(caller_id, name, reason, tenant, action);
}

/// Control characters become spaces: what the encoders promise to do to a value.
fn sanitized(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `line` is one command for Asterisk whatever its buffer, starting with `head`, with one more
/// argument that is a prefix of the sanitized `value`; any other arguments follow it (`tail`).
fn check_agi_line(line: &[u8], head: &[&str], value: &str, tail: &[&str]) {
    assert!(line.len() <= agi::MAX_COMMAND_BYTES, "{} bytes", line.len());
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    assert_eq!(line.last(), Some(&b'\n'));
    assert!(!line.contains(&0) && !line.contains(&b'\r'));
    for buf_len in [2048, 8192] {
        let commands = peers::asterisk_reads(line, buf_len);
        assert_eq!(commands.len(), 1, "{commands:?}");
        let args = &commands[0];
        assert_eq!(args.len(), head.len() + 1 + tail.len(), "{args:?}");
        assert_eq!(&args[..head.len()], head);
        assert_eq!(&args[head.len() + 1..], tail);
        let got = &args[head.len()];
        assert!(sanitized(value).starts_with(got.as_str()), "{got:?}");
    }
}

fn check_agi_value(value: &str) {
    let mut line = Vec::new();
    agi::encode_set_variable(&mut line, "CALLGUARD_REASON", value);
    check_agi_line(&line, &["SET", "VARIABLE", "CALLGUARD_REASON"], value, &[]);
    line.clear();
    agi::encode_exec(&mut line, "NoOp", value);
    check_agi_line(&line, &["EXEC", "NoOp"], value, &[]);
    line.clear();
    agi::encode_verbose(&mut line, value, 3);
    check_agi_line(&line, &["VERBOSE"], value, &["3"]);
    for (what, word) in [
        (agi::Location::Context, "CONTEXT"),
        (agi::Location::Extension, "EXTENSION"),
        (agi::Location::Priority, "PRIORITY"),
    ] {
        line.clear();
        agi::encode_set_location(&mut line, what, value);
        check_agi_line(&line, &["SET", word], value, &[]);
    }
}

/// `bytes` is one ESL command with `headers` named in order and nothing FreeSWITCH would
/// rewrite; returns it as FreeSWITCH reads it.
fn check_esl_command(bytes: &[u8], headers: &[&str]) -> peers::FsPacket {
    let text = std::str::from_utf8(bytes).expect("encoders keep UTF-8 intact");
    assert!(
        text.ends_with("\n\n") && text.matches("\n\n").count() == 1,
        "{text:?}"
    );
    assert_eq!(text.matches('\n').count(), headers.len() + 2, "{text:?}");
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    assert!(
        !text.to_ascii_lowercase().contains("mod_event_socket"),
        "{text:?}"
    );
    let mut packets = peers::fs_read_packets(bytes);
    assert_eq!(packets.len(), 1, "{text:?}");
    let packet = packets.remove(0);
    let names: Vec<&str> = packet.1.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, headers, "{text:?}");
    packet
}

/// Whether `got` is what survives of caller text `value` in an ESL value: control characters
/// and `$` turned to spaces, cut to the cap, `mod_event_socket` defused to `mod-event-socket`
/// (so `-` and `_` are not told apart here).
fn esl_survives(value: &str, got: &str) -> bool {
    let loose = |s: &str| s.replace('-', "_");
    loose(&sanitized(value).replace('$', " ")).starts_with(&loose(got))
}

fn check_esl_value(value: &str) {
    let mut out = Vec::new();
    crate::esl::outbound::encode_set(&mut out, "callguard_reason", value, Some("ev-1"), true);
    let (command, headers) = check_esl_command(
        &out,
        &[
            "call-command",
            "execute-app-name",
            "execute-app-arg",
            "event-lock",
            "Event-UUID",
        ],
    );
    assert_eq!(command, "sendmsg");
    assert_eq!(
        (headers[0].1.as_str(), headers[1].1.as_str()),
        ("execute", "set")
    );
    let arg = headers[2].1.strip_prefix("callguard_reason=");
    let arg = arg.unwrap_or_else(|| panic!("variable name lost: {:?}", headers[2].1));
    assert!(!arg.contains('$') && esl_survives(value, arg), "{arg:?}");
    out.clear();
    let uuid = "253ab832-04f8-4b63-a362-3b71c950497b";
    let line = crate::esl::inbound::setvar_command(uuid, "callguard_reason", value);
    esl::encode_api(&mut out, &line);
    let (command, _) = check_esl_command(&out, &[]);
    let rest = command.strip_prefix(&format!("api uuid_setvar {uuid} callguard_reason "));
    let rest = rest.unwrap_or_else(|| panic!("arguments shifted: {command:?}"));
    assert!(!rest.contains('$') && esl_survives(value, rest), "{rest:?}");
}

/// URL-encoding as FreeSWITCH's `switch_url_encode` writes channel data (every byte outside
/// `[A-Za-z0-9-._~]`; it also passes `%XX` through, which makes no difference here).
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn check_call_path(caller_id: &str, name: &str, reason: &str, tenant: &str, action: &str) {
    // Asterisk writes values raw: a line end in them cannot be sent, a NUL ends the C string.
    let raw = |v: &str| v.split(['\n', '\0']).next().unwrap_or_default().to_owned();
    let env_bytes = format!(
        "agi_network: yes\nagi_request: agi://127.0.0.1/check\nagi_callerid: {}\n\
         agi_calleridname: {}\nagi_arg_1: tenant={}\n\n",
        raw(caller_id),
        raw(name),
        raw(tenant)
    );
    let agi_call = match agi::decode_env(env_bytes.as_bytes(), &agi::Limits::default()) {
        Ok(Some((env, _))) => crate::agi::session::call_from_env(&env, PEER),
        // A value too long for a line: Asterisk's line would be refused the same way.
        Ok(None) | Err(_) => return,
    };
    let channel = format!(
        "Event-Name: CHANNEL_DATA\nCaller-Caller-ID-Number: {}\nCaller-Caller-ID-Name: {}\n\
         variable_callguard_tenant: {}\nUnique-ID: 4773a6f5-43fe-4181-8b87-f4741820f22f\n\
         Content-Type: command/reply\nReply-Text: %2BOK%0A\n\n",
        url_encode(caller_id),
        url_encode(name),
        url_encode(tenant)
    );
    let esl_call = match esl::decode_message(channel.as_bytes(), &esl::Limits::default()) {
        Ok(Some((data, _))) => crate::esl::outbound::call_from_channel(&data, PEER),
        Ok(None) | Err(_) => return,
    };
    for call in [agi_call, esl_call] {
        let decision = decide_with_rule(&call, reason, action);
        check_agi_decision(&decision);
        check_esl_decision(&decision);
    }
}

/// The decision for `call` when a block rule for its caller (on its tenant's list, if it names
/// a valid tenant) has `reason` and `action` (the default when it does not parse).
fn decide_with_rule(call: &CallEvent, reason: &str, action: &str) -> Decision {
    let n = &normalizers()[0];
    let mut entry = Entry::new(
        ListKind::Block,
        RulePattern::Exact(n.normalize(&call.caller_id)),
    );
    entry.tenant = call.tenant.as_deref().and_then(|t| Tenant::new(t).ok());
    entry.reason = reason.to_owned();
    entry.action = action.parse().ok();
    let snapshot = Snapshot::compile([entry], 1);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(PROBES[1]);
    let decision = engine::decide(call, n, &snapshot, &EngineSettings::default(), now);
    assert!(
        decision.matched.is_some(),
        "the rule for the caller did not match"
    );
    decision
}

fn check_agi_decision(decision: &Decision) {
    let vars = crate::agi::session::decision_variables(decision);
    for (name, value) in &vars {
        let mut line = Vec::new();
        agi::encode_set_variable(&mut line, name, value);
        check_agi_line(&line, &["SET", "VARIABLE", *name], value, &[]);
    }
    if let Some(action) = &decision.action {
        for line in crate::agi::session::action_commands(action) {
            let commands = peers::asterisk_reads(&line, 2048);
            assert_eq!(commands.len(), 1, "{commands:?}");
            assert!(matches!(commands[0][0].as_str(), "EXEC" | "SET"));
        }
    }
}

fn check_esl_decision(decision: &Decision) {
    let vars = crate::esl::outbound::decision_variables(decision);
    for (i, (name, value)) in vars.iter().enumerate() {
        let last = i + 1 == vars.len();
        let mut out = Vec::new();
        crate::esl::outbound::encode_set(&mut out, name, value, last.then_some("ev-1"), last);
        let mut headers = vec!["call-command", "execute-app-name", "execute-app-arg"];
        if last {
            headers.extend(["event-lock", "Event-UUID"]);
        }
        let (_, got) = check_esl_command(&out, &headers);
        assert!(got[2].1.starts_with(&format!("{name}=")), "{got:?}");
        out.clear();
        let line = crate::esl::inbound::setvar_command("4773a6f5", name, value);
        esl::encode_api(&mut out, &line);
        let (command, _) = check_esl_command(&out, &[]);
        assert!(command.starts_with(&format!("api uuid_setvar 4773a6f5 {name} ")));
    }
}
