//! FreeSWITCH Event Socket wire format: frame and decode what FreeSWITCH sends, encode the
//! commands callguard sends. No I/O.
//!
//! What FreeSWITCH does on its side (`mod_event_socket.c`, `switch_event.c`, `switch_utils.c`,
//! checked against the FreeSWITCH 1.10.12 captures in `tests/fixtures/freeswitch/`):
//! - Every message is `Name: value\n` lines, an empty line, then, iff a `Content-Length` header is
//!   present, exactly that many body bytes. Lines end with LF only. Header order is not fixed: the
//!   outbound `connect` reply has no `Content-Length`, and its `Content-Type: command/reply`,
//!   `Reply-Text`, `Socket-Mode` and `Control` come last, after ~108 channel headers.
//! - Serialized events (the `connect` reply, `text/event-plain` bodies) URL-encode every value with
//!   `switch_url_encode`, which passes `%` plus two *uppercase* hex digits through unchanged: caller
//!   ID `pct%41%2B x` arrives as `pct%41%2B%20x`, which is also the encoding of `pctA+ x`. The original
//!   cannot be recovered, so values are decoded leniently and the raw text is kept next to them.
//!   Empty values are written as `_undef_`. Plain replies (`Reply-Text` of `getvar`, api bodies) are
//!   written raw, not encoded: use [`Message::get_raw`] where a literal `%41` matters.
//! - A `text/event-plain` body is itself a serialized event: header lines and an empty line, then,
//!   if the event has a body (BACKGROUND_JOB), `Content-Length: N` as its last header and N bytes
//!   with no empty line after them. The outer `Content-Length` covers all of it.
//! - Commands: `read_packet` reads until two LFs with only CRs between them, CR or LF ends a line,
//!   the first line is the command and every other line `name: value` (split at the first `:`,
//!   leading spaces of the value dropped, no decoding). `parse_command` matches commands by prefix
//!   (`exit`, `linger`, ...) on the whole header block and, before anything else, turns every
//!   command whose block contains both `unload` (or `reload`) and `mod_event_socket`,
//!   case-insensitively, into `api bgapi unload mod_event_socket`. Hence the encoders below replace
//!   CR, LF and every other control character, cap lengths, and defuse `mod_event_socket` in every
//!   piece of text they are given (see [`sanitize_value`]).
//! - Applications run through `sendmsg` get `${...}` expanded in their argument
//!   (`switch_core_session_exec`), and `${name(args)}` runs the API `name`: see
//!   [`defuse_expansion`] before putting caller-controlled text into an application argument.

use std::borrow::Cow;

/// Longest value (application argument, api command line, password, ...) the encoders write, in
/// bytes. FreeSWITCH itself accepts up to 10 MiB per command; the cap keeps one hostile caller ID
/// from growing every command callguard sends.
pub const MAX_VALUE_BYTES: usize = 2048;

/// Longest name (application, uuid, variable, event, header) the encoders write. Names are
/// configuration or FreeSWITCH-issued uuids (36 bytes), never caller data.
const MAX_NAME_BYTES: usize = 128;

/// How much of an offending line an error keeps, for logs.
const ERROR_LINE_CHARS: usize = 80;

/// FreeSWITCH's marker for an empty header value in serialized events.
const UNDEF: &str = "_undef_";

/// The module name `parse_command` looks for (with `unload`/`reload`) to rewrite a command.
const TRIGGER: &[u8] = b"mod_event_socket";

/// Caps on what FreeSWITCH (or whatever answers on its port) can make us buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest header block in bytes, terminating empty line (and skipped leading empty lines)
    /// included. The `connect` reply is the largest one: every channel variable is a header
    /// (4 KiB for the loopback calls in the captures, more for SIP channels with many variables).
    pub max_header_block: usize,
    /// Largest body in bytes, as announced by `Content-Length` (an event with all channel
    /// variables, or an `api` reply such as `show channels`).
    pub max_body: usize,
    /// Most header lines in one header block.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_block: 64 * 1024,
            max_body: 4 * 1024 * 1024,
            max_headers: 1024,
        }
    }
}

/// One header: name as sent, value URL-decoded, and the value exactly as sent when that differs
/// (most values have no `%`: one allocation fewer per header, and the channel data has ~110).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    name: String,
    value: String,
    raw: Option<String>,
}

/// One framed message from FreeSWITCH: its headers in arrival order and, iff it had a
/// `Content-Length` header, its body.
///
/// The outbound `connect` reply is a message whose headers *are* the channel data
/// (`Caller-Caller-ID-Number`, `Unique-ID`, `variable_*`, ...), so the accessors below read it
/// directly; an [`Event`] decoded from a `text/event-plain` body has the same shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    headers: Vec<Header>,
    body: Option<Vec<u8>>,
}

/// An event decoded from a `text/event-plain` body by [`decode_event`]: headers (`Event-Name`,
/// `Unique-ID`, ...) and, for events such as BACKGROUND_JOB, the inner body.
pub type Event = Message;

impl Message {
    /// URL-decoded value of the first header with this name, compared ASCII case-insensitively
    /// (FreeSWITCH matches names that way too). `_undef_` is returned as-is; see
    /// [`Message::get_defined`].
    pub fn get(&self, name: &str) -> Option<&str> {
        self.find(name).map(|h| h.value.as_str())
    }

    /// Like [`Message::get`], but `None` for FreeSWITCH's `_undef_` marker and for empty values,
    /// so callers cannot mistake the marker for data (a caller ID of `_undef_`).
    pub fn get_defined(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty() && *v != UNDEF)
    }

    /// The value exactly as sent (lossy UTF-8), for replies that FreeSWITCH writes unencoded
    /// (e.g. a `getvar` value that itself contains `%41`).
    pub fn get_raw(&self, name: &str) -> Option<&str> {
        self.find(name)
            .map(|h| h.raw.as_deref().unwrap_or(h.value.as_str()))
    }

    /// All headers in arrival order as (name, URL-decoded value).
    pub fn headers(
        &self,
    ) -> impl DoubleEndedIterator<Item = (&str, &str)> + ExactSizeIterator + '_ {
        self.headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
    }

    /// `Content-Type`, e.g. `command/reply`, `api/response`, `text/event-plain`,
    /// `text/disconnect-notice`, `auth/request`.
    pub fn content_type(&self) -> Option<&str> {
        self.get("Content-Type")
    }

    /// `Reply-Text` (decoded: the `connect` reply sends `%2BOK%0A`, i.e. `+OK\n`).
    pub fn reply_text(&self) -> Option<&str> {
        self.get("Reply-Text")
    }

    /// Whether `Reply-Text` starts with `+OK` (`+OK`, `+OK accepted`, `+OK Job-UUID: ...`).
    pub fn is_ok_reply(&self) -> bool {
        self.reply_text().is_some_and(|t| t.starts_with("+OK"))
    }

    /// The body, present iff the message had a `Content-Length` header (possibly `0`).
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }

    /// `Event-Name` (`CHANNEL_DATA` for the `connect` reply, `CHANNEL_PARK`, ...).
    pub fn name(&self) -> Option<&str> {
        self.get("Event-Name")
    }

    /// `Unique-ID`: the channel's uuid.
    pub fn unique_id(&self) -> Option<&str> {
        self.get_defined("Unique-ID")
    }

    /// The event carried in the body of a `text/event-plain` message; `Ok(None)` for any other
    /// content type.
    pub fn event(&self, limits: &Limits) -> Result<Option<Event>, CodecError> {
        if !self
            .content_type()
            .is_some_and(|ct| ct.eq_ignore_ascii_case("text/event-plain"))
        {
            return Ok(None);
        }
        decode_event(self.body().unwrap_or_default(), limits).map(Some)
    }

    fn find(&self, name: &str) -> Option<&Header> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
    }
}

/// Why bytes from FreeSWITCH could not be decoded. An error from [`decode_message`] means the
/// stream can no longer be framed and the connection should be closed; the event variants come
/// from [`decode_event`] and concern that one event only.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// No empty line within `max_header_block` bytes.
    #[error("ESL header block larger than {limit} bytes")]
    HeaderBlockTooLarge {
        /// The cap that was exceeded.
        limit: usize,
    },
    /// More than `max_headers` header lines.
    #[error("ESL header block has more than {limit} headers")]
    TooManyHeaders {
        /// The cap that was exceeded.
        limit: usize,
    },
    /// A header line is not `Name: value`.
    #[error("malformed ESL header line: {line:?}")]
    MalformedHeader {
        /// The line, lossy UTF-8, control characters replaced by `?`, at most 80 chars.
        line: String,
    },
    /// `Content-Length` is not a decimal number.
    #[error("invalid ESL Content-Length: {value:?}")]
    InvalidContentLength {
        /// The value, printable as for `MalformedHeader`.
        value: String,
    },
    /// `Content-Length` exceeds `max_body`.
    #[error("ESL body larger than {limit} bytes")]
    BodyTooLarge {
        /// The cap that was exceeded.
        limit: usize,
    },
    /// An event body ends before its header block (or its inner body) does.
    #[error("ESL event body is truncated")]
    TruncatedEvent,
    /// An event body has bytes after its header block and inner body.
    #[error("ESL event body has {count} unexpected trailing bytes")]
    TrailingEventBytes {
        /// How many bytes were left over.
        count: usize,
    },
}

/// Decode one message from the start of `buf`.
///
/// `Ok(None)`: incomplete, call again with more bytes. `Ok(Some((message, consumed)))`:
/// `consumed` counts the header block, its empty line and the body; the rest of `buf` is left for
/// the next call. Empty lines before a header block are skipped, as FreeSWITCH's own command
/// reader does.
/// Caps are enforced on incomplete input too, and at most `max_header_block` bytes are scanned,
/// so a peer cannot make the caller buffer or rescan without bound.
pub fn decode_message(buf: &[u8], limits: &Limits) -> Result<Option<(Message, usize)>, CodecError> {
    let Some(block) = scan_header_block(buf, limits)? else {
        return Ok(None);
    };
    let body_len = block.content_length.unwrap_or(0);
    let end = block
        .end
        .checked_add(body_len)
        .ok_or(CodecError::BodyTooLarge {
            limit: limits.max_body,
        })?;
    let Some(body) = buf.get(block.end..end) else {
        return Ok(None);
    };
    let headers = block
        .lines
        .iter()
        .filter_map(|&(start, end)| split_header(&buf[start..end]))
        .map(|(name, raw)| Header {
            name: String::from_utf8_lossy(name).into_owned(),
            value: url_decode_lossy(raw),
            raw: raw
                .contains(&b'%')
                .then(|| String::from_utf8_lossy(raw).into_owned()),
        })
        .collect();
    let message = Message {
        headers,
        body: block.content_length.map(|_| body.to_vec()),
    };
    Ok(Some((message, end)))
}

/// Decode the event in the body of a `text/event-plain` message: its header block with the same
/// lenient URL decoding and, if it has its own `Content-Length`, the inner body. The body must
/// hold exactly one complete event.
pub fn decode_event(body: &[u8], limits: &Limits) -> Result<Event, CodecError> {
    match decode_message(body, limits)? {
        None => Err(CodecError::TruncatedEvent),
        Some((event, used)) if used == body.len() => Ok(event),
        Some((_, used)) => Err(CodecError::TrailingEventBytes {
            count: body.len() - used,
        }),
    }
}

/// The URL-decoded values of the first header named `names[i]` (ASCII case-insensitive) of the
/// event in a `text/event-plain` body: what [`decode_event`] followed by [`Message::get`] gives,
/// with the same checks and errors, without building every header of the event (a channel event
/// has about 90; a session that only needs `Event-Name` and `Application-UUID` saves as many
/// allocations per event).
pub fn event_fields<const N: usize>(
    body: &[u8],
    limits: &Limits,
    names: [&str; N],
) -> Result<[Option<String>; N], CodecError> {
    let Some(block) = scan_header_block(body, limits)? else {
        return Err(CodecError::TruncatedEvent);
    };
    let end = block
        .end
        .checked_add(block.content_length.unwrap_or(0))
        .ok_or(CodecError::BodyTooLarge {
            limit: limits.max_body,
        })?;
    if end > body.len() {
        return Err(CodecError::TruncatedEvent);
    }
    if end < body.len() {
        return Err(CodecError::TrailingEventBytes {
            count: body.len() - end,
        });
    }
    let mut values = [const { None }; N];
    for (name, raw) in block
        .lines
        .iter()
        .filter_map(|&(start, end)| split_header(&body[start..end]))
    {
        for (i, wanted) in names.iter().enumerate() {
            if values[i].is_none() && name.eq_ignore_ascii_case(wanted.as_bytes()) {
                values[i] = Some(url_decode_lossy(raw));
            }
        }
    }
    Ok(values)
}

/// Where a complete header block lies in the buffer.
struct HeaderBlock {
    /// (start, end) of each header line, without its line end.
    lines: Vec<(usize, usize)>,
    /// Offset just after the terminating empty line.
    end: usize,
    content_length: Option<usize>,
}

/// Find and check the header block at the start of `buf`, looking at no more than
/// `max_header_block` bytes. Lines are checked as soon as they are complete, so a bad line is
/// reported without waiting for the rest of the block.
fn scan_header_block(buf: &[u8], limits: &Limits) -> Result<Option<HeaderBlock>, CodecError> {
    let window = &buf[..buf.len().min(limits.max_header_block)];
    let mut lines = Vec::new();
    let mut content_length = None;
    let mut pos = 0;
    loop {
        let Some(len) = memchr::memchr(b'\n', &window[pos..]) else {
            return if buf.len() > limits.max_header_block {
                Err(CodecError::HeaderBlockTooLarge {
                    limit: limits.max_header_block,
                })
            } else {
                Ok(None)
            };
        };
        let next = pos + len + 1;
        let line = &window[pos..pos + len];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if lines.is_empty() {
                pos = next;
                continue;
            }
            return Ok(Some(HeaderBlock {
                lines,
                end: next,
                content_length,
            }));
        }
        if lines.len() >= limits.max_headers {
            return Err(CodecError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        let (name, value) = split_header(line).ok_or_else(|| CodecError::MalformedHeader {
            line: printable(line),
        })?;
        // The first one wins; FreeSWITCH never sends two.
        if content_length.is_none() && name.eq_ignore_ascii_case(b"Content-Length") {
            content_length = Some(parse_content_length(value, limits)?);
        }
        lines.push((pos, pos + line.len()));
        pos = next;
    }
}

/// `Name: value` split at the first `": "`; the name must not be empty. The value may be empty
/// (`Reply-Text: ` for an empty `getvar`).
fn split_header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut from = 0;
    let at = loop {
        let colon = from + memchr::memchr(b':', &line[from..])?;
        if line.get(colon + 1) == Some(&b' ') {
            break colon;
        }
        from = colon + 1;
    };
    (at > 0).then(|| (&line[..at], &line[at + 2..]))
}

/// Plain decimal digits only (FreeSWITCH writes `%d`), at most `max_body`.
fn parse_content_length(value: &[u8], limits: &Limits) -> Result<usize, CodecError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(CodecError::InvalidContentLength {
            value: printable(value),
        });
    }
    // Saturate instead of overflowing: any value past the cap is rejected the same way.
    let length = value.iter().fold(0usize, |acc, &d| {
        acc.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    });
    if length > limits.max_body {
        return Err(CodecError::BodyTooLarge {
            limit: limits.max_body,
        });
    }
    Ok(length)
}

/// `%XX` with two hex digits (either case) becomes that byte; any other `%` stays literal, so a
/// bad escape never fails a call. `+` is not a space here: FreeSWITCH encodes `+` as `%2B`, and
/// raw replies start with `+OK`. Bytes that are not UTF-8 become U+FFFD.
fn url_decode_lossy(raw: &[u8]) -> String {
    if !raw.contains(&b'%') {
        return String::from_utf8_lossy(raw).into_owned();
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'%'
            && let (Some(hi), Some(lo)) = (hex_value(raw.get(i + 1)), hex_value(raw.get(i + 2)))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(b: Option<&u8>) -> Option<u8> {
    let b = *b?;
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Lossy, control characters replaced so a hostile peer cannot forge log lines, capped.
fn printable(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(ERROR_LINE_CHARS)
        .collect()
}

/// Make text safe to write as an ESL header value or command argument.
///
/// Every control character (CR, LF, NUL, tab, DEL, C1) becomes a space: FreeSWITCH ends a line at
/// CR or LF and a command at two LFs, and reads commands as C strings, so any of them could end the
/// value early and start an injected header or command. `mod_event_socket` (any case) becomes
/// `mod-event-socket`, because `parse_command` rewrites a command containing it and `unload` into
/// `api bgapi unload mod_event_socket`. The result is cut to [`MAX_VALUE_BYTES`] on a char
/// boundary. Borrows when nothing changes.
pub fn sanitize_value(value: &str) -> Cow<'_, str> {
    let clean = !value.chars().any(char::is_control) && find_trigger(value.as_bytes()).is_none();
    if clean {
        return Cow::Borrowed(truncate(value, MAX_VALUE_BYTES));
    }
    let mut out = String::with_capacity(value.len().min(MAX_VALUE_BYTES));
    for c in value.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_VALUE_BYTES {
            break;
        }
        out.push(c);
    }
    defuse_trigger(&mut out);
    Cow::Owned(out)
}

/// Make caller-controlled text inert inside an application argument sent with
/// [`encode_sendmsg_execute`]: every `$` becomes a space.
///
/// FreeSWITCH expands `${var}`, `$${global}` and `${api(args)}` (which runs an API command) in
/// application data before the application runs, and `set` expands its value once more, so no
/// escape survives reliably; removing `$` does. [`sanitize_value`] is still applied by the
/// encoder.
pub fn defuse_expansion(value: &str) -> Cow<'_, str> {
    if value.contains('$') {
        Cow::Owned(value.replace('$', " "))
    } else {
        Cow::Borrowed(value)
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let cut = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[..cut]
}

/// Offset of the first ASCII-case-insensitive `mod_event_socket`.
fn find_trigger(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(TRIGGER.len())
        .position(|w| w.eq_ignore_ascii_case(TRIGGER))
}

/// `mod_event_socket` (any case) -> `mod-event-socket`, keeping the letters' case. The matched
/// bytes are ASCII, so the replaced ranges are char boundaries and the length is unchanged.
fn defuse_trigger(s: &mut String) {
    let mut from = 0;
    while let Some(at) = find_trigger(&s.as_bytes()[from..]).map(|i| i + from) {
        for underscore in [at + 3, at + 9] {
            s.replace_range(underscore..underscore + 1, "-");
        }
        from = at + TRIGGER.len();
    }
}

/// A name filtered to the bytes `allowed` accepts, capped at [`MAX_NAME_BYTES`], defused like a
/// value. Names never need escaping, so anything else is dropped rather than replaced.
fn clean_name(name: &str, allowed: fn(u8) -> bool) -> String {
    let mut out: String = name
        .bytes()
        .filter(|&b| allowed(b))
        .take(MAX_NAME_BYTES)
        .map(char::from)
        .collect();
    defuse_trigger(&mut out);
    out
}

/// Applications, uuids, hangup causes, header names.
fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')
}

/// Channel variable names (`sip_h_X-Foo`, `callguard.reason`).
fn is_var_byte(b: u8) -> bool {
    is_ident_byte(b) || b == b'.'
}

/// Event names, including CUSTOM subclasses such as `sofia::register`.
fn is_event_byte(b: u8) -> bool {
    is_var_byte(b) || b == b':'
}

/// Append `connect\n\n`, the first command on an outbound socket; FreeSWITCH answers with the
/// channel data. No caller text, nothing to escape.
pub fn encode_connect(out: &mut Vec<u8>) {
    out.extend_from_slice(b"connect\n\n");
}

/// Append `myevents\n\n`: subscribe to this channel's events (plain format). No caller text.
pub fn encode_myevents(out: &mut Vec<u8>) {
    out.extend_from_slice(b"myevents\n\n");
}

/// Append `linger\n\n` (keep the socket after hang-up until we close it: FreeSWITCH then never
/// closes on its own) or `linger N\n\n` (close N seconds after hang-up). A number, nothing to
/// escape.
pub fn encode_linger(out: &mut Vec<u8>, seconds: Option<u32>) {
    match seconds {
        None => out.extend_from_slice(b"linger\n\n"),
        Some(s) => out.extend_from_slice(format!("linger {s}\n\n").as_bytes()),
    }
}

/// Append `resume\n\n`: continue the dialplan after the socket closes. No caller text.
pub fn encode_resume(out: &mut Vec<u8>) {
    out.extend_from_slice(b"resume\n\n");
}

/// Append `exit\n\n`: FreeSWITCH replies `+OK bye`, sends a disconnect notice and closes. No
/// caller text.
pub fn encode_exit(out: &mut Vec<u8>) {
    out.extend_from_slice(b"exit\n\n");
}

/// Append `auth <password>\n\n`. The password goes through [`sanitize_value`]: a CR or LF in it
/// would otherwise end the command and make the rest of it a second command, run once authed. A
/// password that needed changing simply fails with `-ERR invalid`.
pub fn encode_auth(out: &mut Vec<u8>, password: &str) {
    out.extend_from_slice(b"auth ");
    out.extend_from_slice(sanitize_value(password).as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Append `event plain NAME NAME...\n\n`. Names keep only `[A-Za-z0-9_.:-]` (CUSTOM subclasses
/// use `::`), so a name cannot add a line; names left empty are skipped. With no names left
/// FreeSWITCH answers `-ERR no keywords supplied`.
pub fn encode_event_plain(out: &mut Vec<u8>, events: &[&str]) {
    out.extend_from_slice(b"event plain");
    for name in events {
        let name = clean_name(name, is_event_byte);
        if !name.is_empty() {
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
        }
    }
    out.extend_from_slice(b"\n\n");
}

/// Append `filter <header> <value>\n\n`: only events whose `header` equals `value` are sent.
///
/// FreeSWITCH splits the line at the first space, so the header keeps only `[A-Za-z0-9_-]`; one
/// left empty is sent as `_`, a header no event has, so the value's first word never becomes the
/// header. The value goes through [`sanitize_value`] (a line end would start a new command).
pub fn encode_filter(out: &mut Vec<u8>, header: &str, value: &str) {
    let header = clean_name(header, is_ident_byte);
    out.extend_from_slice(b"filter ");
    out.extend_from_slice(if header.is_empty() { "_" } else { &header }.as_bytes());
    out.push(b' ');
    out.extend_from_slice(sanitize_value(value).as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Append `api <command line>\n\n` (blocking; the reply is `api/response` with a body).
///
/// The line goes through [`sanitize_value`]: FreeSWITCH takes the command up to the first CR or
/// LF, and a blank line inside would make the remainder a second command. It does *not* split or
/// quote arguments for the API: build `command_line` from configuration and uuids only.
pub fn encode_api(out: &mut Vec<u8>, command_line: &str) {
    out.extend_from_slice(b"api ");
    out.extend_from_slice(sanitize_value(command_line).as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Append `bgapi <command line>\n\n` (the reply carries a `Job-UUID`; the result arrives later as
/// a BACKGROUND_JOB event). Escaped exactly like [`encode_api`], for the same reasons.
pub fn encode_bgapi(out: &mut Vec<u8>, command_line: &str) {
    out.extend_from_slice(b"bgapi ");
    out.extend_from_slice(sanitize_value(command_line).as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Append `getvar <name>\n\n` (outbound mode; the value comes back raw as `Reply-Text`, read it
/// with [`Message::get_raw`]). The name keeps only `[A-Za-z0-9_.-]`.
pub fn encode_getvar(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b"getvar ");
    out.extend_from_slice(clean_name(name, is_var_byte).as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Append `sendmsg [uuid]\n`: `uuid` keeps only `[A-Za-z0-9_-]`; `None` (or nothing left)
/// means the socket's own channel in outbound mode.
fn push_sendmsg_line(out: &mut Vec<u8>, uuid: Option<&str>) {
    out.extend_from_slice(b"sendmsg");
    let uuid = uuid
        .map(|u| clean_name(u, is_ident_byte))
        .unwrap_or_default();
    if !uuid.is_empty() {
        out.push(b' ');
        out.extend_from_slice(uuid.as_bytes());
    }
    out.push(b'\n');
}

/// Append a `sendmsg` that executes one dialplan application, exactly as the captures show:
///
/// ```text
/// sendmsg [uuid]
/// call-command: execute
/// execute-app-name: APP
/// execute-app-arg: ARG
/// [event-lock: true]
/// [Event-UUID: ID]
///
/// ```
///
/// `event-lock: true` makes the channel run it before anything else queued; `Event-UUID` comes
/// back as `Application-UUID` in the CHANNEL_EXECUTE_COMPLETE event, which is how completion is
/// matched. Header names are fixed; `app`, `uuid` and `event_uuid` keep only `[A-Za-z0-9_-]` (an
/// empty Event-UUID is left out); `arg` goes through [`sanitize_value`], because a line end in it
/// would start a header or a command of the caller's choosing. FreeSWITCH drops leading spaces
/// of `arg` and expands `${...}` in it: pass caller text through [`defuse_expansion`] first.
pub fn encode_sendmsg_execute(
    out: &mut Vec<u8>,
    uuid: Option<&str>,
    app: &str,
    arg: &str,
    event_uuid: Option<&str>,
    event_lock: bool,
) {
    push_sendmsg_line(out, uuid);
    out.extend_from_slice(b"call-command: execute\nexecute-app-name: ");
    out.extend_from_slice(clean_name(app, is_ident_byte).as_bytes());
    out.extend_from_slice(b"\nexecute-app-arg: ");
    out.extend_from_slice(sanitize_value(arg).as_bytes());
    out.push(b'\n');
    if event_lock {
        out.extend_from_slice(b"event-lock: true\n");
    }
    let event_uuid = event_uuid
        .map(|u| clean_name(u, is_ident_byte))
        .unwrap_or_default();
    if !event_uuid.is_empty() {
        out.extend_from_slice(b"Event-UUID: ");
        out.extend_from_slice(event_uuid.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Append `sendmsg [uuid]\ncall-command: hangup\nhangup-cause: CAUSE\n\n`.
///
/// `cause` is a FreeSWITCH cause name (see [`hangup_cause_name`]) or a Q.850 number; it keeps
/// only `[A-Za-z0-9_-]`, and when nothing is left the header is omitted (FreeSWITCH then uses
/// NORMAL_CLEARING). `uuid` is filtered as in [`encode_sendmsg_execute`].
pub fn encode_sendmsg_hangup(out: &mut Vec<u8>, uuid: Option<&str>, cause: &str) {
    push_sendmsg_line(out, uuid);
    out.extend_from_slice(b"call-command: hangup\n");
    let cause = clean_name(cause, is_ident_byte);
    if !cause.is_empty() {
        out.extend_from_slice(b"hangup-cause: ");
        out.extend_from_slice(cause.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// FreeSWITCH's name for a Q.850 cause code (`switch_channel.c` CAUSE_CHART), e.g. 21 ->
/// `CALL_REJECTED`, 17 -> `USER_BUSY`.
///
/// Codes FreeSWITCH has no name for map, as Q.850 says unrecognised causes are to be treated, to
/// the "unspecified" cause of their class: 1-31 -> NORMAL_UNSPECIFIED, 32-47 ->
/// NORMAL_TEMPORARY_FAILURE (FreeSWITCH has no name for 47), 48-63 -> SERVICE_UNAVAILABLE,
/// 64-79 -> SERVICE_NOT_IMPLEMENTED, 80-95 -> INVALID_MSG_UNSPECIFIED, 96-111 -> PROTOCOL_ERROR,
/// 112-127 -> INTERWORKING. 0 and codes above 127 are not Q.850 causes: NORMAL_UNSPECIFIED.
pub fn hangup_cause_name(code: u8) -> &'static str {
    named_cause(code).unwrap_or(match code {
        32..=47 => "NORMAL_TEMPORARY_FAILURE",
        48..=63 => "SERVICE_UNAVAILABLE",
        64..=79 => "SERVICE_NOT_IMPLEMENTED",
        80..=95 => "INVALID_MSG_UNSPECIFIED",
        96..=111 => "PROTOCOL_ERROR",
        112..=127 => "INTERWORKING",
        _ => "NORMAL_UNSPECIFIED",
    })
}

/// The Q.850 codes of FreeSWITCH's CAUSE_CHART (`switch_types.h` values).
fn named_cause(code: u8) -> Option<&'static str> {
    Some(match code {
        1 => "UNALLOCATED_NUMBER",
        2 => "NO_ROUTE_TRANSIT_NET",
        3 => "NO_ROUTE_DESTINATION",
        6 => "CHANNEL_UNACCEPTABLE",
        7 => "CALL_AWARDED_DELIVERED",
        16 => "NORMAL_CLEARING",
        17 => "USER_BUSY",
        18 => "NO_USER_RESPONSE",
        19 => "NO_ANSWER",
        20 => "SUBSCRIBER_ABSENT",
        21 => "CALL_REJECTED",
        22 => "NUMBER_CHANGED",
        23 => "REDIRECTION_TO_NEW_DESTINATION",
        25 => "EXCHANGE_ROUTING_ERROR",
        27 => "DESTINATION_OUT_OF_ORDER",
        28 => "INVALID_NUMBER_FORMAT",
        29 => "FACILITY_REJECTED",
        30 => "RESPONSE_TO_STATUS_ENQUIRY",
        31 => "NORMAL_UNSPECIFIED",
        34 => "NORMAL_CIRCUIT_CONGESTION",
        38 => "NETWORK_OUT_OF_ORDER",
        41 => "NORMAL_TEMPORARY_FAILURE",
        42 => "SWITCH_CONGESTION",
        43 => "ACCESS_INFO_DISCARDED",
        44 => "REQUESTED_CHAN_UNAVAIL",
        45 => "PRE_EMPTED",
        50 => "FACILITY_NOT_SUBSCRIBED",
        52 => "OUTGOING_CALL_BARRED",
        54 => "INCOMING_CALL_BARRED",
        57 => "BEARERCAPABILITY_NOTAUTH",
        58 => "BEARERCAPABILITY_NOTAVAIL",
        63 => "SERVICE_UNAVAILABLE",
        65 => "BEARERCAPABILITY_NOTIMPL",
        66 => "CHAN_NOT_IMPLEMENTED",
        69 => "FACILITY_NOT_IMPLEMENTED",
        79 => "SERVICE_NOT_IMPLEMENTED",
        81 => "INVALID_CALL_REFERENCE",
        88 => "INCOMPATIBLE_DESTINATION",
        95 => "INVALID_MSG_UNSPECIFIED",
        96 => "MANDATORY_IE_MISSING",
        97 => "MESSAGE_TYPE_NONEXIST",
        98 => "WRONG_MESSAGE",
        99 => "IE_NONEXIST",
        100 => "INVALID_IE_CONTENTS",
        101 => "WRONG_CALL_STATE",
        102 => "RECOVERY_ON_TIMER_EXPIRE",
        103 => "MANDATORY_IE_LENGTH_ERROR",
        111 => "PROTOCOL_ERROR",
        127 => "INTERWORKING",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::peers::{FsPacket, fs_read_packets};
    use proptest::prelude::*;
    use std::path::{Path, PathBuf};

    fn fixture_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/freeswitch")
    }

    fn fixture(rel: &str) -> Vec<u8> {
        std::fs::read(fixture_dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Everything FreeSWITCH sent in the captures: `*.raw` and `*.rx`, relative paths, sorted.
    fn received_fixtures() -> Vec<String> {
        let mut out = Vec::new();
        for dir in ["outbound", "inbound", "encoding_rec"] {
            for entry in std::fs::read_dir(fixture_dir().join(dir)).expect("fixture dir") {
                let path = entry.expect("dir entry").path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_owned();
                if name.ends_with(".raw") || name.ends_with(".rx") {
                    out.push(format!("{dir}/{name}"));
                }
            }
        }
        out.sort();
        assert_eq!(out.len(), 38, "fixtures missing or added");
        out
    }

    fn limits() -> Limits {
        Limits::default()
    }

    /// Every message in `bytes`; the bytes must end exactly after the last one.
    fn decode_all(bytes: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let (message, used) = decode_message(&bytes[pos..], &limits())
                .unwrap_or_else(|e| panic!("at {pos}: {e}"))
                .unwrap_or_else(|| panic!("incomplete at {pos}"));
            assert!(used > 0 && pos + used <= bytes.len());
            out.push(message);
            pos += used;
        }
        out
    }

    fn one(bytes: &[u8]) -> Message {
        let mut all = decode_all(bytes);
        assert_eq!(all.len(), 1, "expected one message");
        all.remove(0)
    }

    /// Decode `bytes` the way a connection would: append each chunk to a buffer and drain every
    /// complete message.
    fn feed<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Message> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some((message, used)) = decode_message(&buf, &limits()).expect("valid") {
                assert!(used > 0 && used <= buf.len());
                out.push(message);
                buf.drain(..used);
            }
        }
        assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
        out
    }

    /// One line per message, to compare whole sessions against what the captures show.
    fn summary(message: &Message) -> String {
        match message.content_type().unwrap_or("none") {
            "command/reply" => format!("reply:{}", message.reply_text().unwrap_or("?")),
            "api/response" => {
                let body = String::from_utf8_lossy(message.body().unwrap_or_default()).into_owned();
                format!("api:{}", body.lines().next().unwrap_or_default())
            }
            "text/event-plain" => {
                let event = message.event(&limits()).expect("event").expect("plain");
                format!("event:{}", event.name().unwrap_or("?"))
            }
            "text/disconnect-notice" => format!(
                "disconnect:{}",
                message.get("Content-Disposition").unwrap_or_default()
            ),
            other => other.to_owned(),
        }
    }

    fn expected_session(rel: &str) -> Vec<String> {
        let connect = "reply:+OK\n";
        let lines: Vec<&str> = match rel {
            "outbound/call1.stream.rx" => vec![
                connect,
                "reply:+OK Events Enabled",
                "reply:+OK will linger",
                "reply:+OK",
                "event:CHANNEL_PARK",
                "event:CHANNEL_EXECUTE",
                "event:CHANNEL_EXECUTE_COMPLETE",
                "reply:-ERR command not found",
                "reply:continue",
                "api:+OK",
                "event:CHANNEL_HANGUP",
                "disconnect:linger",
                "event:CHANNEL_UNPARK",
                "event:CHANNEL_EXECUTE_COMPLETE",
                "event:CHANNEL_STATE",
                "event:CHANNEL_STATE",
                "event:CHANNEL_HANGUP_COMPLETE",
            ],
            "outbound/call2.stream.rx" | "outbound/call3.stream.rx" => vec![
                connect,
                "reply:+OK",
                "reply:+OK bye",
                "disconnect:disconnect",
            ],
            "outbound/linger2.stream.rx" => vec![
                connect,
                "reply:+OK will linger 2 seconds",
                "reply:+OK",
                "disconnect:linger",
                "disconnect:disconnect",
            ],
            "encoding_rec/conn-001.rx" => vec![
                connect,
                "reply:+OK Events Enabled",
                "reply:+OK will linger",
                "reply:+OK",
                "event:CHANNEL_EXECUTE",
                "event:CHANNEL_EXECUTE_COMPLETE",
                "reply:+OK",
                "reply:+OK bye",
                "disconnect:disconnect",
            ],
            "inbound/main.stream.rx" => vec![
                "auth/request",
                "reply:+OK accepted",
                "reply:+OK event listener enabled plain",
                "api:UP 0 years, 0 days, 0 hours, 3 minutes, 13 seconds, 69 milliseconds, 311 microseconds",
                "reply:-ERR command not found",
                "api:-ERR nosuchapi Command not found!",
                "reply:+OK Job-UUID: 89fd7e0f-f7c3-4ffd-a7d7-9c139d6110dc",
                "event:CHANNEL_CREATE",
                "event:CHANNEL_CREATE",
                "event:CHANNEL_PARK",
                "reply:+OK Job-UUID: b871e000-221e-4ab3-8007-4b88b50d4e1f",
                "event:CHANNEL_CREATE",
                "event:CHANNEL_CREATE",
                "event:CHANNEL_PARK",
                "event:CHANNEL_PARK",
                "reply:+OK Job-UUID: 3fa13e46-8c77-4bcb-bda8-6894f542a48b",
                "event:CHANNEL_CREATE",
                "event:CHANNEL_CREATE",
                "event:CHANNEL_PARK",
                "event:CHANNEL_PARK",
                "reply:+OK bye",
                // The inbound socket's notice has neither a disposition nor a session uuid.
                "disconnect:",
            ],
            "outbound/call1_after_uuid_kill.raw" => vec![
                "event:CHANNEL_HANGUP",
                "disconnect:linger",
                "event:CHANNEL_UNPARK",
                "event:CHANNEL_EXECUTE_COMPLETE",
                "event:CHANNEL_STATE",
                "event:CHANNEL_STATE",
                "event:CHANNEL_HANGUP_COMPLETE",
            ],
            _ => panic!("no expectation for {rel}"),
        };
        lines.into_iter().map(str::to_owned).collect()
    }

    const STREAMS: [&str; 7] = [
        "outbound/call1.stream.rx",
        "outbound/call2.stream.rx",
        "outbound/call3.stream.rx",
        "outbound/linger2.stream.rx",
        "outbound/call1_after_uuid_kill.raw",
        "inbound/main.stream.rx",
        "encoding_rec/conn-001.rx",
    ];

    #[test]
    fn every_capture_decodes_completely() {
        let known = [
            "auth/request",
            "command/reply",
            "api/response",
            "text/event-plain",
            "text/disconnect-notice",
        ];
        for rel in received_fixtures() {
            let messages = decode_all(&fixture(&rel));
            assert!(!messages.is_empty(), "{rel}");
            for message in &messages {
                let ct = message.content_type().unwrap_or_else(|| panic!("{rel}"));
                assert!(known.contains(&ct), "{rel}: {ct}");
                if let Some(event) = message.event(&limits()).expect("event body decodes") {
                    assert!(event.name().is_some(), "{rel}");
                    assert!(event.get("Event-Sequence").is_some(), "{rel}");
                }
                // Only bodies announced by Content-Length exist.
                assert_eq!(
                    message.body().is_some(),
                    message.get("Content-Length").is_some(),
                    "{rel}"
                );
            }
        }
    }

    #[test]
    fn sessions_decode_to_the_captured_sequence() {
        for rel in STREAMS {
            let got: Vec<String> = decode_all(&fixture(rel)).iter().map(summary).collect();
            assert_eq!(got, expected_session(rel), "{rel}");
        }
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_messages() {
        for rel in STREAMS {
            let bytes = fixture(rel);
            let whole = decode_all(&bytes);
            let fed = feed(bytes.chunks(1));
            assert_eq!(fed, whole, "{rel}");
        }
    }

    #[test]
    fn every_prefix_of_a_connect_reply_is_incomplete() {
        let bytes = fixture("outbound/call1_connect_reply.raw");
        for cut in 0..bytes.len() {
            assert_eq!(decode_message(&bytes[..cut], &limits()), Ok(None), "{cut}");
        }
        let (_, used) = decode_message(&bytes, &limits())
            .expect("valid")
            .expect("complete");
        assert_eq!(used, bytes.len());
    }

    #[test]
    fn connect_replies_are_the_channel_data() {
        let cases = [
            (
                "outbound/call1_connect_reply.raw",
                "+7 (495) 123-45-67",
                "%2B7%20(495)%20123-45-67",
                "253ab832-04f8-4b63-a362-3b71c950497b",
                "1001",
                "Test 1",
            ),
            (
                "outbound/call2_connect_reply.raw",
                "84951234567",
                "84951234567",
                "e012712b-08e1-4830-b25d-4bfa7f6e5add",
                "1002",
                "Test 2",
            ),
            (
                "outbound/call3_connect_reply.raw",
                "anon 100%&x=y/é",
                "anon%20100%25%26x%3Dy/%C3%A9",
                "d4185962-6971-420e-b226-c36c44d14411",
                "1003",
                "Test 3",
            ),
        ];
        for (rel, number, raw, uuid, dnid, name) in cases {
            let reply = one(&fixture(rel));
            assert_eq!(reply.get("Caller-Caller-ID-Number"), Some(number), "{rel}");
            assert_eq!(reply.get_raw("Caller-Caller-ID-Number"), Some(raw), "{rel}");
            assert_eq!(reply.get("Caller-ANI"), Some(number), "{rel}");
            assert_eq!(reply.get("Caller-Caller-ID-Name"), Some(name), "{rel}");
            assert_eq!(reply.unique_id(), Some(uuid), "{rel}");
            assert_eq!(reply.get("Caller-Destination-Number"), Some(dnid), "{rel}");
            assert_eq!(reply.get("variable_callguard_ingress"), Some("from-pstn"));
            assert_eq!(
                reply.get("variable_current_application_data"),
                Some("127.0.0.1:8084 async full")
            );
            assert_eq!(reply.name(), Some("CHANNEL_DATA"));
            assert_eq!(reply.headers().len(), 112, "{rel}");
            assert_eq!(reply.headers().next(), Some(("Event-Name", "CHANNEL_DATA")));
            // The reply headers come LAST, after the channel data.
            let tail: Vec<_> = reply.headers().rev().take(4).collect();
            assert_eq!(
                tail,
                vec![
                    ("Control", "full"),
                    ("Socket-Mode", "async"),
                    ("Reply-Text", "+OK\n"),
                    ("Content-Type", "command/reply"),
                ],
                "{rel}"
            );
            assert_eq!(reply.content_type(), Some("command/reply"));
            assert_eq!(reply.get_raw("Reply-Text"), Some("%2BOK%0A"));
            assert!(reply.is_ok_reply());
            assert_eq!(reply.body(), None, "no Content-Length, no body");
            assert_eq!(reply.event(&limits()), Ok(None));
            // Names are matched case-insensitively.
            assert_eq!(reply.get("unique-id"), Some(uuid));
            assert_eq!(reply.get("CONTENT-TYPE"), Some("command/reply"));
        }
    }

    /// The caller ID was set to `pct%41%2B x`. FreeSWITCH's `switch_url_encode` leaves `%`
    /// followed by two uppercase hex digits alone and encodes only the space, so the wire carries
    /// `pct%41%2B%20x`, byte for byte the encoding of `pctA+ x`. No decoder can tell the two apart;
    /// a careful (standard, lenient) decoder returns `pctA+ x`, and the raw text is kept for
    /// anyone who needs to see what was on the wire.
    #[test]
    fn already_percent_encoded_caller_id_is_ambiguous() {
        let messages = decode_all(&fixture("encoding_rec/conn-001.rx"));
        let connect = &messages[0];
        assert_eq!(
            connect.get_raw("Caller-Caller-ID-Number"),
            Some("pct%41%2B%20x")
        );
        assert_eq!(connect.get("Caller-Caller-ID-Number"), Some("pctA+ x"));
        assert_eq!(
            connect.get("Caller-Caller-ID-Name"),
            None,
            "no name was set"
        );
        assert_eq!(
            connect.unique_id(),
            Some("ca5af810-83dd-4172-bc5c-f4a4924818d8")
        );
        let job = one(&fixture("inbound/event_BACKGROUND_JOB.raw"));
        let event = job.event(&limits()).expect("valid").expect("plain");
        assert_eq!(
            event.get("Job-Command-Arg"),
            Some("{origination_caller_id_number='pctA+ x'}loopback/1000/from-pstn &park")
        );
    }

    #[test]
    fn replies_on_the_outbound_socket() {
        let reply = |rel: &str| one(&fixture(rel));
        for (rel, text, ok) in [
            (
                "outbound/call1_myevents_reply.raw",
                "+OK Events Enabled",
                true,
            ),
            ("outbound/call1_linger_reply.raw", "+OK will linger", true),
            ("outbound/call1_sendmsg_execute_reply.raw", "+OK", true),
            (
                "outbound/call1_unknown_command_reply.raw",
                "-ERR command not found",
                false,
            ),
            ("outbound/call1_getvar_reply.raw", "continue", false),
            ("outbound/call2_resume_reply.raw", "+OK", true),
            ("outbound/call2_exit_reply.raw", "+OK bye", true),
            ("outbound/call3_exit_reply.raw", "+OK bye", true),
        ] {
            let m = reply(rel);
            assert_eq!(m.content_type(), Some("command/reply"), "{rel}");
            assert_eq!(m.reply_text(), Some(text), "{rel}");
            assert_eq!(m.is_ok_reply(), ok, "{rel}");
            assert_eq!(m.headers().len(), 2, "{rel}");
        }
        let api = reply("outbound/call1_api_uuid_kill_reply.raw");
        assert_eq!(api.content_type(), Some("api/response"));
        assert_eq!(api.body(), Some(&b"+OK\n"[..]));
        assert_eq!(api.reply_text(), None);
        assert!(!api.is_ok_reply());
        let bye = reply("outbound/call2_after_exit.raw");
        assert_eq!(bye.content_type(), Some("text/disconnect-notice"));
        assert_eq!(bye.get("Content-Disposition"), Some("disconnect"));
        assert_eq!(
            bye.get("Controlled-Session-UUID"),
            Some("e012712b-08e1-4830-b25d-4bfa7f6e5add")
        );
        assert_eq!(
            bye.body(),
            Some(&b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"[..])
        );
        let after_kill = decode_all(&fixture("outbound/call1_after_uuid_kill.raw"));
        let linger = &after_kill[1];
        assert_eq!(linger.get("Content-Disposition"), Some("linger"));
        assert_eq!(linger.get("Linger-Time"), Some("-1"));
        assert_eq!(linger.get("Channel-Name"), Some("loopback/1001-b"));
        assert_eq!(
            linger.body(),
            Some(&b""[..]),
            "Content-Length: 0 is an empty body"
        );
        let hangup = after_kill[0]
            .event(&limits())
            .expect("valid")
            .expect("plain");
        assert_eq!(hangup.get("Hangup-Cause"), Some("NORMAL_CLEARING"));
        assert_eq!(
            hangup.unique_id(),
            Some("253ab832-04f8-4b63-a362-3b71c950497b")
        );
    }

    #[test]
    fn replies_on_the_inbound_socket() {
        let reply = |rel: &str| one(&fixture(rel));
        for rel in ["inbound/banner.raw", "inbound/wrongpw_banner.raw"] {
            let m = reply(rel);
            assert_eq!(m.content_type(), Some("auth/request"));
            assert_eq!(m.headers().len(), 1);
            assert_eq!(m.reply_text(), None);
        }
        for (rel, text, ok) in [
            ("inbound/auth_ok_reply.raw", "+OK accepted", true),
            ("inbound/wrongpw_reply.raw", "-ERR invalid", false),
            (
                "inbound/event_plain_reply.raw",
                "+OK event listener enabled plain",
                true,
            ),
            (
                "inbound/unknown_command_reply.raw",
                "-ERR command not found",
                false,
            ),
            ("inbound/exit_reply.raw", "+OK bye", true),
        ] {
            let m = reply(rel);
            assert_eq!(m.content_type(), Some("command/reply"), "{rel}");
            assert_eq!(m.reply_text(), Some(text), "{rel}");
            assert_eq!(m.is_ok_reply(), ok, "{rel}");
        }
        let bg = reply("inbound/bgapi_originate_reply.raw");
        assert_eq!(
            bg.reply_text(),
            Some("+OK Job-UUID: 89fd7e0f-f7c3-4ffd-a7d7-9c139d6110dc")
        );
        assert_eq!(
            bg.get("Job-UUID"),
            Some("89fd7e0f-f7c3-4ffd-a7d7-9c139d6110dc")
        );
        assert!(bg.is_ok_reply());
        let status = reply("inbound/api_status_reply.raw");
        assert_eq!(status.body().map(<[u8]>::len), Some(370));
        let unknown = reply("inbound/api_unknown_reply.raw");
        assert_eq!(
            unknown.body(),
            Some(&b"-ERR nosuchapi Command not found!\n"[..])
        );
        for rel in ["inbound/wrongpw_after_reply.raw", "inbound/after_exit.raw"] {
            let m = reply(rel);
            assert_eq!(m.content_type(), Some("text/disconnect-notice"));
            assert_eq!(m.body().map(<[u8]>::len), Some(67));
        }
    }

    #[test]
    fn events_decode_with_their_inner_body() {
        let event = |rel: &str| {
            one(&fixture(rel))
                .event(&limits())
                .expect("valid")
                .expect("plain")
        };
        let create = event("inbound/event_CHANNEL_CREATE.raw");
        assert_eq!(create.name(), Some("CHANNEL_CREATE"));
        assert_eq!(
            create.unique_id(),
            Some("84c24114-8c29-425a-8a40-0464f0124edb")
        );
        assert_eq!(
            create.get("Caller-Caller-ID-Number"),
            Some("+7 (495) 123-45-67")
        );
        assert_eq!(create.get("FreeSWITCH-IPv6"), Some("fd00::2"));
        assert_eq!(create.body(), None);
        let park = event("inbound/event_CHANNEL_PARK.raw");
        assert_eq!(park.name(), Some("CHANNEL_PARK"));
        assert_eq!(
            park.unique_id(),
            Some("253ab832-04f8-4b63-a362-3b71c950497b")
        );
        assert_eq!(park.get("variable_DP_MATCH"), Some("ARRAY::1001|:1001"));

        let job = event("inbound/event_BACKGROUND_JOB.raw");
        assert_eq!(job.name(), Some("BACKGROUND_JOB"));
        assert_eq!(
            job.get("Job-UUID"),
            Some("abd2f553-d9d6-4101-9644-7c41a47d3150")
        );
        assert_eq!(job.get("Job-Command"), Some("originate"));
        assert_eq!(job.get("Content-Length"), Some("41"));
        assert_eq!(
            job.body(),
            Some(&b"+OK c21ac420-408e-4592-816e-90f0c3bcca00\n"[..])
        );
        assert_eq!(job.unique_id(), None, "a job has no channel");

        // The CHANNEL_EXECUTE_COMPLETE for the sendmsg'd `set` carries the Event-UUID we sent
        // (call1.stream.tx) as Application-UUID.
        let done = event("outbound/call1_event_CHANNEL_EXECUTE_COMPLETE_set.raw");
        assert_eq!(done.name(), Some("CHANNEL_EXECUTE_COMPLETE"));
        assert_eq!(done.get("Application"), Some("set"));
        assert_eq!(
            done.get("Application-Data"),
            Some("callguard_verdict=continue")
        );
        assert_eq!(
            done.get("Application-UUID"),
            Some("4773a6f5-43fe-4181-8b87-f4741820f22f")
        );
        assert_eq!(done.get("variable_callguard_verdict"), Some("continue"));
        assert_eq!(done.get("Application-Response"), Some("_none_"));
    }

    #[test]
    fn decode_event_needs_exactly_one_event() {
        let l = limits();
        assert_eq!(decode_event(b"", &l), Err(CodecError::TruncatedEvent));
        assert_eq!(
            decode_event(b"Event-Name: X\n", &l),
            Err(CodecError::TruncatedEvent)
        );
        assert_eq!(
            decode_event(b"Event-Name: X\nContent-Length: 5\n\nab", &l),
            Err(CodecError::TruncatedEvent)
        );
        assert_eq!(
            decode_event(b"Event-Name: X\n\nextra", &l),
            Err(CodecError::TrailingEventBytes { count: 5 })
        );
        let e = decode_event(b"Event-Name: X\nContent-Length: 2\n\nab", &l).expect("valid");
        assert_eq!((e.name(), e.body()), (Some("X"), Some(&b"ab"[..])));
        let not_event = one(b"Content-Type: text/event-json\nContent-Length: 2\n\n{}");
        assert_eq!(not_event.event(&l), Ok(None));
        let empty = one(b"Content-Type: text/event-plain\n\n");
        assert_eq!(empty.event(&l), Err(CodecError::TruncatedEvent));
    }

    #[test]
    fn event_fields_agree_with_decode_event() {
        let l = limits();
        let names = ["Event-Name", "application-uuid", "Content-Length", "Nope"];
        let check = |body: &[u8]| {
            let full = decode_event(body, &l).map(|e| names.map(|n| e.get(n).map(str::to_owned)));
            assert_eq!(event_fields(body, &l, names), full, "{body:?}");
        };
        let mut bodies: Vec<Vec<u8>> = [
            &b""[..],
            b"Event-Name: X\n",
            b"Event-Name: X\nContent-Length: 5\n\nab",
            b"Event-Name: X\n\nextra",
            b"Event-Name: X\nContent-Length: 2\n\nab",
            b"Event-Name: X\nbad line\n\n",
            b"Event-Name: X\nContent-Length: x\n\n",
            b"\nevent-name: a%20b\nEvent-Name: second\nApplication-UUID: 1%2\n\n",
        ]
        .iter()
        .map(|b| b.to_vec())
        .collect();
        for rel in received_fixtures() {
            let raw = fixture(&rel);
            let mut at = 0;
            while let Ok(Some((m, used))) = decode_message(&raw[at..], &l) {
                bodies.extend(m.body().map(<[u8]>::to_vec));
                at += used;
            }
        }
        assert!(bodies.len() > 30);
        for body in &bodies {
            check(body);
        }
    }

    #[test]
    fn header_line_forms() {
        let m = one(b"\n\r\nA: 1\r\nB: x: y\nC: \nD:  two\nA: 2\nE: _undef_\n\r\n");
        assert_eq!(m.get("A"), Some("1"), "first occurrence");
        assert_eq!(m.get("a"), Some("1"));
        assert_eq!(m.get("B"), Some("x: y"), "split at the first \": \"");
        assert_eq!(m.get("C"), Some(""));
        assert_eq!(m.get_defined("C"), None);
        assert_eq!(m.get("D"), Some(" two"), "only one space is the separator");
        assert_eq!(m.get("E"), Some("_undef_"));
        assert_eq!(m.get_defined("E"), None);
        assert_eq!(m.get_defined("A"), Some("1"));
        assert_eq!(m.get("missing"), None);
        assert_eq!(m.headers().len(), 6);
        let (_, used) = decode_message(b"\n\nX: y\n\nrest", &limits())
            .expect("valid")
            .expect("complete");
        assert_eq!(used, 8, "leading empty lines are skipped and consumed");
        assert_eq!(decode_message(b"\n\n\n", &limits()), Ok(None));
        let mut out = b"Content-Length: 3\r\n\r\nabcX".to_vec();
        let (m, used) = decode_message(&out, &limits())
            .expect("valid")
            .expect("done");
        assert_eq!((m.body(), used), (Some(&b"abc"[..]), 24));
        out.truncate(23);
        assert_eq!(decode_message(&out, &limits()), Ok(None));
    }

    #[test]
    fn malformed_header_lines_are_errors() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"no colon\n",
            b"Name:value\n",
            b": empty name\n",
            b"Name:\n",
            b"\x00\x01\x02\n",
            b"Content-Type: command/reply\ngarbage\n\n",
        ] {
            assert!(
                matches!(
                    decode_message(bad, &limits()),
                    Err(CodecError::MalformedHeader { .. })
                ),
                "{bad:?}"
            );
        }
        let long = format!("bad\u{1b}line {}\n", "z".repeat(200));
        let Err(CodecError::MalformedHeader { line }) = decode_message(long.as_bytes(), &limits())
        else {
            panic!("expected MalformedHeader");
        };
        assert_eq!(line.chars().count(), 80);
        assert!(line.starts_with("bad?line zz"));
        // An incomplete last line is not judged yet.
        assert_eq!(
            decode_message(b"Content-Type: x\ngarba", &limits()),
            Ok(None)
        );
    }

    #[test]
    fn lenient_url_decoding() {
        for (raw, decoded) in [
            ("plain", "plain"),
            ("%2BOK%0A", "+OK\n"),
            ("%2b%2B", "++"),
            ("100%", "100%"),
            ("100%2", "100%2"),
            ("%zz%4", "%zz%4"),
            ("%%41", "%A"),
            ("%C3%A9", "é"),
            ("%FF%FEx", "\u{fffd}\u{fffd}x"),
            ("%C3", "\u{fffd}"),
            ("a+b", "a+b"),
            ("%00", "\0"),
            ("%e2%82%AC", "€"),
        ] {
            assert_eq!(url_decode_lossy(raw.as_bytes()), decoded, "{raw}");
        }
        let m = one(b"X: \xff%41\n\n");
        assert_eq!(m.get("X"), Some("\u{fffd}A"));
        assert_eq!(m.get_raw("X"), Some("\u{fffd}%41"));
    }

    #[test]
    fn header_block_cap_is_exact_and_bounded() {
        let small = Limits {
            max_header_block: 16,
            ..limits()
        };
        // "Abcdefghij: 12\n\n" is exactly 16 bytes.
        let exact = b"Abcdefghij: 12\n\nmore";
        assert!(decode_message(exact, &small).expect("valid").is_some());
        let over = b"Abcdefghij: 123\n\n";
        assert_eq!(
            decode_message(over, &small),
            Err(CodecError::HeaderBlockTooLarge { limit: 16 })
        );
        assert_eq!(
            decode_message(&over[..16], &small),
            Ok(None),
            "not yet over"
        );

        // A 64 MiB line without a newline fails after looking at 64 KiB.
        let huge = vec![b'a'; 64 * 1024 * 1024];
        let start = std::time::Instant::now();
        assert_eq!(
            decode_message(&huge, &limits()),
            Err(CodecError::HeaderBlockTooLarge { limit: 65536 })
        );
        let mut lines = format!("Long-Header: {}\n", "v".repeat(200))
            .repeat(400)
            .into_bytes();
        lines.extend_from_slice(&huge[..1024]);
        assert_eq!(
            decode_message(&lines, &limits()),
            Err(CodecError::HeaderBlockTooLarge { limit: 65536 })
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn too_many_headers() {
        let block = |n: usize| {
            let mut b: Vec<u8> = (0..n)
                .flat_map(|i| format!("H{i}: v\n").into_bytes())
                .collect();
            b.push(b'\n');
            b
        };
        let (m, _) = decode_message(&block(1024), &limits())
            .expect("valid")
            .expect("complete");
        assert_eq!(m.headers().len(), 1024);
        assert_eq!(
            decode_message(&block(1025), &limits()),
            Err(CodecError::TooManyHeaders { limit: 1024 })
        );
        // Even before the block ends.
        let partial = block(1100);
        assert_eq!(
            decode_message(&partial[..partial.len() - 1], &limits()),
            Err(CodecError::TooManyHeaders { limit: 1024 })
        );
    }

    #[test]
    fn content_length_is_checked_before_the_body_arrives() {
        for bad in ["abc", "-1", "1.5", " 5", "5 ", "0x10", "", "+3", "٣"] {
            let msg = format!("Content-Length: {bad}\n\n");
            assert!(
                matches!(
                    decode_message(msg.as_bytes(), &limits()),
                    Err(CodecError::InvalidContentLength { .. })
                ),
                "{bad:?}"
            );
        }
        for huge in ["4194305", "99999999999999999999999999999999"] {
            let msg = format!("Content-Type: api/response\nContent-Length: {huge}\n\n");
            assert_eq!(
                decode_message(msg.as_bytes(), &limits()),
                Err(CodecError::BodyTooLarge { limit: 4194304 }),
                "{huge}"
            );
        }
        // At the cap: valid, waits for the body.
        let at_cap = b"Content-Length: 4194304\n\n";
        assert_eq!(decode_message(at_cap, &limits()), Ok(None));
        let mut full = at_cap.to_vec();
        full.resize(at_cap.len() + 4194304, b'x');
        let (m, used) = decode_message(&full, &limits())
            .expect("valid")
            .expect("done");
        assert_eq!(
            (m.body().map(<[u8]>::len), used),
            (Some(4194304), full.len())
        );
        // The bad value is seen as soon as its line is complete.
        assert!(matches!(
            decode_message(b"Content-Length: x\nContent-Typ", &limits()),
            Err(CodecError::InvalidContentLength { .. })
        ));
        // Only the first Content-Length counts; the name is case-insensitive.
        let (m, used) = decode_message(b"content-length: 1\nContent-Length: 5\n\nab", &limits())
            .expect("valid")
            .expect("done");
        assert_eq!((m.body(), used), (Some(&b"a"[..]), 38));
    }

    // ---- encoding ----

    fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out);
        out
    }

    /// The commands in a `.tx` capture, each with its terminating empty line.
    fn commands(tx: &[u8]) -> Vec<Vec<u8>> {
        let text = String::from_utf8(tx.to_vec()).expect("utf8");
        let parts: Vec<&str> = text.split_inclusive("\n\n").collect();
        assert_eq!(parts.concat(), text);
        parts.into_iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    #[test]
    fn encoders_reproduce_the_outbound_captures() {
        let mut out = Vec::new();
        encode_connect(&mut out);
        encode_myevents(&mut out);
        encode_linger(&mut out, None);
        encode_sendmsg_execute(
            &mut out,
            None,
            "set",
            "callguard_verdict=continue",
            Some("4773a6f5-43fe-4181-8b87-f4741820f22f"),
            true,
        );
        out.extend_from_slice(b"foobar\n\n"); // the deliberately unknown command
        encode_getvar(&mut out, "callguard_verdict");
        encode_api(&mut out, "uuid_kill 253ab832-04f8-4b63-a362-3b71c950497b");
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&fixture("outbound/call1.stream.tx"))
        );
        for rel in ["outbound/call2.stream.tx", "outbound/call3.stream.tx"] {
            let out = encoded(|o| {
                encode_connect(o);
                encode_resume(o);
                encode_exit(o);
            });
            assert_eq!(out, fixture(rel), "{rel}");
        }
    }

    #[test]
    fn encoders_reproduce_the_inbound_capture() {
        let tx = fixture("inbound/main.stream.tx");
        let captured = commands(&tx);
        let mut out = Vec::new();
        encode_auth(&mut out, "ClueCon");
        encode_event_plain(&mut out, &["CHANNEL_CREATE", "CHANNEL_PARK"]);
        encode_api(&mut out, "status");
        out.extend_from_slice(b"foobar\n\n");
        encode_api(&mut out, "nosuchapi");
        // The originate lines carry `+`, quotes, `%`, `&`, `=`, `/`, `é`: none of it is touched.
        let originates: Vec<String> = captured
            .iter()
            .filter_map(|c| std::str::from_utf8(c).ok()?.strip_prefix("bgapi "))
            .map(|c| c.trim_end_matches('\n').to_owned())
            .collect();
        assert_eq!(originates.len(), 3);
        assert!(originates[2].contains("'anon 100%&x=y/é'"));
        for line in &originates {
            encode_bgapi(&mut out, line);
        }
        encode_exit(&mut out);
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&tx));
    }

    #[test]
    fn other_encoders_exact_bytes() {
        let s = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            f(&mut out);
            String::from_utf8(out).expect("utf8")
        };
        assert_eq!(s(&|o| encode_linger(o, Some(2))), "linger 2\n\n");
        assert_eq!(s(&|o| encode_linger(o, Some(0))), "linger 0\n\n");
        assert_eq!(
            s(&|o| encode_filter(o, "Unique-ID", "253ab832-04f8")),
            "filter Unique-ID 253ab832-04f8\n\n"
        );
        assert_eq!(s(&|o| encode_filter(o, " :", "a b")), "filter _ a b\n\n");
        assert_eq!(
            s(&|o| encode_sendmsg_hangup(o, None, "CALL_REJECTED")),
            "sendmsg\ncall-command: hangup\nhangup-cause: CALL_REJECTED\n\n"
        );
        assert_eq!(
            s(&|o| encode_sendmsg_hangup(o, Some("253ab832-04f8"), hangup_cause_name(17))),
            "sendmsg 253ab832-04f8\ncall-command: hangup\nhangup-cause: USER_BUSY\n\n"
        );
        assert_eq!(
            s(&|o| encode_sendmsg_hangup(o, Some(" \n"), "\n")),
            "sendmsg\ncall-command: hangup\n\n"
        );
        assert_eq!(
            s(&|o| encode_sendmsg_execute(o, Some("u-1"), "answer", "", None, false)),
            "sendmsg u-1\ncall-command: execute\nexecute-app-name: answer\nexecute-app-arg: \n\n"
        );
        assert_eq!(
            s(&|o| encode_sendmsg_execute(
                o,
                None,
                "set",
                "x=a\n\nexit\n\n",
                Some("{bad uuid}\n"),
                false
            )),
            "sendmsg\ncall-command: execute\nexecute-app-name: set\n\
             execute-app-arg: x=a  exit  \nEvent-UUID: baduuid\n\n"
        );
        assert_eq!(s(&|o| encode_auth(o, "pw\r\nexit")), "auth pw  exit\n\n");
        assert_eq!(
            s(&|o| encode_event_plain(o, &["CUSTOM", "sofia::register", "BAD NAME\n", "\n"])),
            "event plain CUSTOM sofia::register BADNAME\n\n"
        );
        assert_eq!(
            s(&|o| encode_getvar(o, "sip_h_X-Foo bar\n")),
            "getvar sip_h_X-Foobar\n\n"
        );
        assert_eq!(
            s(&|o| encode_api(o, "reload Mod_Event_Socket")),
            "api reload Mod-Event-Socket\n\n"
        );
        assert_eq!(
            s(&|o| encode_sendmsg_execute(o, None, "unload", "mod_event_socket", None, false)),
            "sendmsg\ncall-command: execute\nexecute-app-name: unload\n\
             execute-app-arg: mod-event-socket\n\n"
        );
        let mut out = b"keep".to_vec();
        encode_exit(&mut out);
        assert_eq!(out, b"keepexit\n\n", "appends");
    }

    #[test]
    fn sanitize_value_cases() {
        assert!(matches!(
            sanitize_value("+7 (495) 123"),
            Cow::Borrowed("+7 (495) 123")
        ));
        assert_eq!(
            sanitize_value("a\nb\rc\0d\te\u{7f}f\u{85}g"),
            "a b c d e f g"
        );
        assert_eq!(
            sanitize_value("x\u{2028}y"),
            "x\u{2028}y",
            "not a line end for FreeSWITCH"
        );
        assert_eq!(
            sanitize_value("unload MOD_event_SOCKET and mod_event_socket"),
            "unload MOD-event-SOCKET and mod-event-socket"
        );
        let long = "x".repeat(5000);
        assert!(matches!(sanitize_value(&long), Cow::Borrowed(s) if s.len() == MAX_VALUE_BYTES));
        // Cut on a char boundary: 4-byte chars, 2048 = 512 * 4.
        let emoji = "😀".repeat(600);
        assert_eq!(sanitize_value(&emoji), "😀".repeat(512));
        let odd = format!("a{}", "я".repeat(1500));
        let cut = sanitize_value(&odd);
        assert_eq!(cut.len(), 2047, "the 1024th я does not fit after `a`");
        let with_nl = format!("\n{}", "я".repeat(1500));
        assert_eq!(sanitize_value(&with_nl).len(), 2047);
        // A C1 control is 2 bytes but its replacement 1: the cap applies to the output.
        let c1 = "\u{85}".repeat(3000);
        assert_eq!(sanitize_value(&c1), " ".repeat(MAX_VALUE_BYTES));
    }

    #[test]
    fn defuse_expansion_cases() {
        assert!(matches!(defuse_expansion("Ivan"), Cow::Borrowed("Ivan")));
        assert_eq!(
            defuse_expansion("${system(rm -rf /)}"),
            " {system(rm -rf /)}"
        );
        assert_eq!(defuse_expansion("$${x}$"), "  {x} ");
    }

    #[test]
    fn hangup_cause_names() {
        for (code, name) in [
            (1, "UNALLOCATED_NUMBER"),
            (16, "NORMAL_CLEARING"),
            (17, "USER_BUSY"),
            (18, "NO_USER_RESPONSE"),
            (19, "NO_ANSWER"),
            (21, "CALL_REJECTED"),
            (27, "DESTINATION_OUT_OF_ORDER"),
            (31, "NORMAL_UNSPECIFIED"),
            (34, "NORMAL_CIRCUIT_CONGESTION"),
            (38, "NETWORK_OUT_OF_ORDER"),
            (41, "NORMAL_TEMPORARY_FAILURE"),
            (42, "SWITCH_CONGESTION"),
            (127, "INTERWORKING"),
            // Unnamed codes: the unspecified cause of their class.
            (0, "NORMAL_UNSPECIFIED"),
            (4, "NORMAL_UNSPECIFIED"),
            (40, "NORMAL_TEMPORARY_FAILURE"),
            (47, "NORMAL_TEMPORARY_FAILURE"),
            (60, "SERVICE_UNAVAILABLE"),
            (70, "SERVICE_NOT_IMPLEMENTED"),
            (90, "INVALID_MSG_UNSPECIFIED"),
            (110, "PROTOCOL_ERROR"),
            (120, "INTERWORKING"),
            (142, "NORMAL_UNSPECIFIED"),
            (255, "NORMAL_UNSPECIFIED"),
        ] {
            assert_eq!(hangup_cause_name(code), name, "{code}");
        }
        // Every name is something encode_sendmsg_hangup passes through unchanged.
        for code in 0..=u8::MAX {
            let name = hangup_cause_name(code);
            assert!(name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
        }
    }

    /// One command, ended by the only empty line, with `lines` LFs, no other control character,
    /// and nothing `parse_command` would rewrite.
    fn assert_one_command(bytes: &[u8], lines: usize) -> FsPacket {
        let text = std::str::from_utf8(bytes).expect("encoders keep UTF-8 intact");
        assert_eq!(text.matches('\n').count(), lines, "{text:?}");
        assert_eq!(text.matches("\n\n").count(), 1, "{text:?}");
        assert!(text.ends_with("\n\n"), "{text:?}");
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(find_trigger(bytes).is_none(), "{text:?}");
        let mut packets = fs_read_packets(bytes);
        assert_eq!(packets.len(), 1, "{text:?}");
        packets.remove(0)
    }

    fn tricky_string() -> impl Strategy<Value = String> {
        let tricky = prop_oneof![
            Just("\n".to_owned()),
            Just("\r".to_owned()),
            Just("\r\n".to_owned()),
            Just("\n\nexit\n\n".to_owned()),
            Just("\ncall-command: hangup\n".to_owned()),
            Just("\0".to_owned()),
            Just("\u{85}".to_owned()),
            Just(" ".to_owned()),
            Just(":".to_owned()),
            Just("$".to_owned()),
            Just("unload ".to_owned()),
            Just("mod_event_socket".to_owned()),
            Just("MOD_EVENT_SOCKET".to_owned()),
            Just("я".to_owned()),
            Just("😀".to_owned()),
            any::<char>().prop_map(String::from),
        ];
        prop_oneof![
            any::<String>(),
            prop::collection::vec(tricky.clone(), 0..32).prop_map(|v| v.concat()),
            (prop::collection::vec(tricky, 1..8), 50usize..400)
                .prop_map(|(pattern, n)| pattern.concat().repeat(n)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn sendmsg_execute_is_always_one_command(
            uuid in prop::option::of(tricky_string()),
            app in tricky_string(),
            arg in tricky_string(),
            event_uuid in prop::option::of(tricky_string()),
            lock in any::<bool>(),
        ) {
            let out = encoded(|o| encode_sendmsg_execute(
                o, uuid.as_deref(), &app, &arg, event_uuid.as_deref(), lock));
            let ev = event_uuid.as_deref().map(|u| clean_name(u, is_ident_byte)).unwrap_or_default();
            let lines = 5 + usize::from(lock) + usize::from(!ev.is_empty());
            let (command, headers) = assert_one_command(&out, lines);
            let uuid = uuid.as_deref().map(|u| clean_name(u, is_ident_byte)).unwrap_or_default();
            let expected_command = if uuid.is_empty() { "sendmsg".to_owned() } else { format!("sendmsg {uuid}") };
            prop_assert_eq!(command, expected_command);
            let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
            let mut expected = vec!["call-command", "execute-app-name", "execute-app-arg"];
            if lock { expected.push("event-lock"); }
            if !ev.is_empty() { expected.push("Event-UUID"); }
            prop_assert_eq!(names, expected);
            prop_assert_eq!(&headers[0].1, "execute");
            prop_assert_eq!(&headers[1].1, &clean_name(&app, is_ident_byte));
            let sanitized = sanitize_value(&arg);
            prop_assert_eq!(headers[2].1.as_str(), sanitized.trim_start_matches(' '));
            prop_assert!(sanitized.len() <= MAX_VALUE_BYTES);
            prop_assert!(arg.starts_with(&*sanitized) || arg.chars().any(char::is_control)
                || find_trigger(arg.as_bytes()).is_some());
        }

        #[test]
        fn single_line_commands_stay_single(value in tricky_string(), other in tricky_string()) {
            let cases: [(&str, Vec<u8>); 6] = [
                ("api ", encoded(|o| encode_api(o, &value))),
                ("bgapi ", encoded(|o| encode_bgapi(o, &value))),
                ("auth ", encoded(|o| encode_auth(o, &value))),
                ("filter ", encoded(|o| encode_filter(o, &other, &value))),
                ("getvar ", encoded(|o| encode_getvar(o, &value))),
                ("event plain", encoded(|o| encode_event_plain(o, &[&value, &other]))),
            ];
            for (prefix, out) in cases {
                let (command, headers) = assert_one_command(&out, 2);
                prop_assert!(command.starts_with(prefix), "{command:?}");
                prop_assert!(headers.is_empty());
                prop_assert!(!command.to_ascii_lowercase().starts_with("exit"));
            }
            let (command, _) = assert_one_command(&encoded(|o| encode_api(o, &value)), 2);
            prop_assert_eq!(command, format!("api {}", sanitize_value(&value)));
            let out = encoded(|o| encode_sendmsg_hangup(o, Some(&other), &value));
            let cause = clean_name(&value, is_ident_byte);
            assert_one_command(&out, 3 + usize::from(!cause.is_empty()));
        }

        #[test]
        fn decoded_then_sanitized_values_have_no_control_chars(
            raw in prop::collection::vec(prop_oneof![
                Just(b"%0A".to_vec()), Just(b"%0d".to_vec()), Just(b"%00".to_vec()),
                Just(b"%C2%85".to_vec()), Just(b"%".to_vec()), Just(b"\r".to_vec()),
                Just(b"\t".to_vec()), Just(b"%7F".to_vec()),
                prop::collection::vec(any::<u8>(), 0..4),
            ], 0..40)
        ) {
            let raw: Vec<u8> = raw.concat().into_iter().filter(|&b| b != b'\n').collect();
            let mut msg = b"X-Test: ".to_vec();
            msg.extend_from_slice(&raw);
            msg.extend_from_slice(b"\n\n");
            let (m, used) = decode_message(&msg, &limits()).expect("valid").expect("complete");
            prop_assert_eq!(used, msg.len());
            let value = m.get("X-Test").unwrap_or_default();
            let clean = sanitize_value(value);
            prop_assert!(!clean.chars().any(char::is_control), "{clean:?}");
            let out = encoded(|o| encode_sendmsg_execute(o, None, "set", &format!("x={value}"), None, true));
            assert_one_command(&out, 6);
        }

        #[test]
        fn decode_never_panics_and_never_overconsumes(
            bytes in prop::collection::vec(any::<u8>(), 0..2048),
            cap in 1usize..512,
            max_headers in 0usize..16,
        ) {
            let small = Limits { max_header_block: cap, max_body: 256, max_headers };
            for l in [limits(), small] {
                if let Ok(Some((m, used))) = decode_message(&bytes, &l) {
                    prop_assert!(used > 0 && used <= bytes.len());
                    prop_assert!(m.headers().len() <= l.max_headers);
                    prop_assert!(m.body().map_or(0, <[u8]>::len) <= l.max_body);
                }
                let _ = decode_event(&bytes, &l);
            }
        }

        #[test]
        fn decode_never_panics_on_message_like_bytes(
            parts in prop::collection::vec(prop_oneof![
                Just(b"Content-Length: ".to_vec()),
                Just(b"Content-Type: text/event-plain".to_vec()),
                Just(b"Event-Name: X".to_vec()),
                Just(b": ".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"\r".to_vec()),
                Just(b"%".to_vec()),
                (0u32..40).prop_map(|n| n.to_string().into_bytes()),
                prop::collection::vec(any::<u8>(), 0..6),
            ], 0..60)
        ) {
            let bytes = parts.concat();
            let mut rest = &bytes[..];
            while let Ok(Some((m, used))) = decode_message(rest, &limits()) {
                prop_assert!(used > 0 && used <= rest.len());
                let _ = m.event(&limits());
                rest = &rest[used..];
            }
        }

        #[test]
        fn any_chunking_gives_the_same_messages(
            stream in 0..STREAMS.len(),
            sizes in prop::collection::vec(1usize..700, 1..64),
        ) {
            let bytes = fixture(STREAMS[stream]);
            let whole = decode_all(&bytes);
            let mut chunks = Vec::new();
            let mut pos = 0;
            for size in sizes.iter().cycle() {
                if pos >= bytes.len() { break; }
                let end = (pos + size).min(bytes.len());
                chunks.push(&bytes[pos..end]);
                pos = end;
            }
            prop_assert_eq!(feed(chunks), whole);
        }
    }

    #[test]
    fn fixture_dir_layout() {
        // The server and client tests replay these too; keep the capture layout.
        for rel in [
            "outbound/call1.stream.tx",
            "outbound/linger2.stream.rx",
            "inbound/main.stream.tx",
            "encoding_rec/conn-001.rx",
        ] {
            assert!(Path::new(&fixture_dir().join(rel)).is_file(), "{rel}");
        }
    }
}
