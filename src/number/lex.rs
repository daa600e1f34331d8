//! Lexical layer: peels SIP header / URI syntax and percent-encoding off caller-ID text and extracts its digits; knows nothing about numbering plans.

use std::fmt::Write as _;

/// Digits kept from one caller ID. More cannot be a phone number (an international prefix plus
/// 15 digits is at most 20), so the rest is only reported as overflow.
pub(crate) const MAX_DIGITS: usize = 32;

/// Longest `invalid:` token, so junk input cannot make huge log lines or store keys.
pub(crate) const MAX_TOKEN: usize = 32;

/// Caller IDs that mean "no number" (compared in ASCII lowercase).
const WITHHELD: [&str; 6] = [
    "anonymous",
    "unknown",
    "private",
    "restricted",
    "unavailable",
    "withheld",
];

/// Words that start an extension after a number ("доб. 123", "ext 12", "x12"); `p`/`w` are the
/// pause/wait dial characters phones use for the same purpose.
const EXTENSION_MARKERS: [&str; 12] = [
    "x",
    "p",
    "w",
    "ext",
    "extn",
    "extension",
    "доб",
    "добав",
    "добавочный",
    "вн",
    "внутр",
    "внутренний",
];

/// The digits of a caller ID, in a fixed buffer so the E.164 path never allocates.
#[derive(Debug, Clone)]
pub(crate) struct Digits {
    buf: [u8; MAX_DIGITS],
    len: usize,
    /// More than [`MAX_DIGITS`] digits were present.
    pub(crate) overflow: bool,
    /// Written with a leading `+` (international format).
    pub(crate) plus: bool,
}

impl Digits {
    fn new() -> Digits {
        Digits {
            buf: [0; MAX_DIGITS],
            len: 0,
            overflow: false,
            plus: false,
        }
    }

    /// The digits as ASCII.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The `invalid:` token for these digits: `+` if written, then the (capped) digits.
    pub(crate) fn token(&self) -> String {
        let mut out = String::with_capacity(self.len + 1);
        if self.plus {
            out.push('+');
        }
        out.extend(self.as_bytes().iter().map(|&b| char::from(b)));
        out
    }
}

/// What caller-ID text amounts to before any numbering plan is consulted.
#[derive(Debug)]
pub(crate) enum Lexed<'a> {
    /// Withheld, empty, or nothing but punctuation.
    Withheld,
    /// A phone number's digits.
    Number(Digits),
    /// Not a phone number (a SIP user like `alice`, text with letters); carries the user part.
    Word(&'a str),
}

/// Trims whitespace, control characters and invisible formatting marks (BOM, LRM, ZWSP...),
/// which copy-paste and some carriers add around numbers.
pub(crate) fn trim(text: &str) -> &str {
    match (text.as_bytes().first(), text.as_bytes().last()) {
        // Printable ASCII at both ends, as nearly always: nothing to trim, no chars to decode.
        (Some(b'!'..=b'~'), Some(b'!'..=b'~')) => text,
        _ => text.trim_matches(is_blank),
    }
}

/// `char::is_alphabetic`, answering the Cyrillic letters of extension markers (`доб.`) without
/// the Unicode table search.
#[inline]
fn is_letter(c: char) -> bool {
    // U+0400..U+045F are the basic Russian letters plus Ѐ-Џ and ѐ-џ, all alphabetic.
    matches!(c, '\u{0400}'..='\u{045F}') || c.is_alphabetic()
}

#[inline]
fn is_blank(c: char) -> bool {
    if c.is_ascii() {
        // ASCII whitespace and control characters are exactly these.
        return c <= ' ' || c == '\x7f';
    }
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// Characters people put between digits: spaces of every width, dashes of every kind, dots,
/// slashes, brackets, quotes.
fn is_separator(c: char) -> bool {
    match c {
        '-' | '.' | '/' | '(' | ')' | '[' | ']' | '"' | '\'' => true,
        // Hyphens and dashes U+2010..U+2015, minus sign, small/full-width hyphen-minus.
        '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}' | '\u{FF0D}' => true,
        // Middle dots, hyphenation point, full-width dot and parentheses.
        '\u{00B7}' | '\u{2027}' | '\u{30FB}' | '\u{FF0E}' | '\u{FF08}' | '\u{FF09}' => true,
        _ => is_blank(c),
    }
}

/// ASCII value of a decimal digit, also from full-width and Arabic-Indic digit blocks that
/// copy-pasted numbers sometimes contain.
fn digit_value(c: char) -> Option<u8> {
    let zero = match c {
        '0'..='9' => '0',
        '\u{FF10}'..='\u{FF19}' => '\u{FF10}',
        '\u{0660}'..='\u{0669}' => '\u{0660}',
        '\u{06F0}'..='\u{06F9}' => '\u{06F0}',
        _ => return None,
    };
    Some(b'0' + (c as u32 - zero as u32) as u8)
}

/// `text` without a case-insensitive ASCII `prefix`.
pub(crate) fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Characters of `text` with `%XX` escapes (RFC 3986) decoded, including multi-byte UTF-8 ones.
/// Works in place, so decoding never allocates.
#[derive(Clone)]
struct Decoded<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Decoded<'a> {
    fn new(text: &'a str) -> Decoded<'a> {
        Decoded { text, pos: 0 }
    }

    fn escape_at(&self, at: usize) -> Option<u8> {
        let b = self.text.as_bytes();
        if b.get(at) != Some(&b'%') {
            return None;
        }
        let hex = |i: usize| b.get(i).and_then(|&h| char::from(h).to_digit(16));
        Some((hex(at + 1)? * 16 + hex(at + 2)?) as u8)
    }
}

impl Iterator for Decoded<'_> {
    type Item = char;

    #[inline]
    fn next(&mut self) -> Option<char> {
        let &byte = self.text.as_bytes().get(self.pos)?;
        if byte.is_ascii() && byte != b'%' {
            // Fast path: caller IDs are nearly always plain ASCII.
            self.pos += 1;
            return Some(char::from(byte));
        }
        self.next_slow()
    }
}

impl Decoded<'_> {
    /// Escapes and non-ASCII characters, kept out of line so the ASCII path stays small.
    #[inline(never)]
    fn next_slow(&mut self) -> Option<char> {
        if let Some(first) = self.escape_at(self.pos) {
            let width = match first {
                0x00..=0x7F => 1,
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => 0,
            };
            let mut bytes = [first, 0, 0, 0];
            let mut ok = width > 0;
            for (i, slot) in bytes.iter_mut().enumerate().take(width).skip(1) {
                match self.escape_at(self.pos + 3 * i) {
                    Some(b) => *slot = b,
                    None => ok = false,
                }
            }
            let decoded = if ok {
                std::str::from_utf8(&bytes[..width])
                    .ok()
                    .and_then(|s| s.chars().next())
            } else {
                None
            };
            return Some(match decoded {
                Some(c) => {
                    self.pos += 3 * width;
                    c
                }
                // A broken escape decodes to U+FFFD, one escape at a time.
                None => {
                    self.pos += 3;
                    char::REPLACEMENT_CHARACTER
                }
            });
        }
        let c = self.text.get(self.pos..)?.chars().next()?;
        self.pos += c.len_utf8();
        Some(c)
    }
}

/// The digits of text that is nothing but ASCII digits after an optional `+`, the form PBXs
/// deliver nearly every caller ID in; `None` for anything else. A shortcut past [`lex`], which
/// returns the same digits for such text.
pub(crate) fn plain_number(text: &str) -> Option<Digits> {
    let (plus, body) = match text.strip_prefix('+') {
        Some(body) => (true, body),
        None => (false, text),
    };
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits = Digits::new();
    let kept = body.len().min(MAX_DIGITS);
    digits.buf[..kept].copy_from_slice(&body.as_bytes()[..kept]);
    digits.len = kept;
    digits.overflow = body.len() > MAX_DIGITS;
    digits.plus = plus;
    Some(digits)
}

/// Splits caller-ID text into what a plan-aware classifier needs. `text` must be [`trim`]med.
pub(crate) fn lex(text: &str) -> Lexed<'_> {
    let (user, is_host) = user_part(addr_spec(text));
    if is_withheld_word(user) {
        Lexed::Withheld
    } else if is_host {
        Lexed::Word(user)
    } else {
        scan(user)
    }
}

/// The address in a SIP name-addr / From header (`"Name" <sip:...>;tag=x`), or the text itself.
/// The display name is skipped without looking at its digits.
fn addr_spec(text: &str) -> &str {
    let text = strip_prefix_ci(text, "from:").map_or(text, trim);
    let b = text.as_bytes();
    let mut start = 0;
    let mut quoted = None;
    if b.first() == Some(&b'"') {
        let mut i = 1;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 2,
                b'"' => {
                    quoted = Some(i);
                    break;
                }
                _ => i += 1,
            }
        }
        // Only byte positions of ASCII quotes are used for slicing, so they are char boundaries.
        if let Some(q) = quoted {
            start = q + 1;
        }
    }
    let rest = &text[start..];
    if let Some(lt) = find_byte(rest, |b| b == b'<') {
        let inner = &rest[lt + 1..];
        return trim(&inner[..find_byte(inner, |b| b == b'>').unwrap_or(inner.len())]);
    }
    match quoted {
        // `"84997654321"`: a quoted value with nothing after it is the caller ID itself.
        Some(q) if trim(rest).is_empty() => trim(&text[1..q]),
        Some(_) => trim(rest),
        None => text,
    }
}

/// Position of the first byte matching `pred`, which must only accept ASCII bytes so the result
/// is a char boundary. A plain loop: caller IDs are short, and `memchr`'s setup costs more.
#[inline]
fn find_byte(text: &str, pred: impl Fn(u8) -> bool) -> Option<usize> {
    text.bytes().position(pred)
}

/// The user part of a `sip:`/`sips:`/`tel:` URI (without password or parameters), or the text.
/// Returns `(part, is_host)`: `is_host` for a SIP URI without a user part (`sip:203.0.113.5`),
/// which names a server rather than a caller, so its digits must not be read as a number.
fn user_part(addr: &str) -> (&str, bool) {
    let sip = strip_prefix_ci(addr, "sip:").or_else(|| strip_prefix_ci(addr, "sips:"));
    if let Some(rest) = sip {
        let at = find_byte(rest, |b| b == b'@');
        let userinfo = at.map_or(rest, |at| &rest[..at]);
        let end = find_byte(userinfo, |b| matches!(b, b':' | b';' | b'?'));
        return (&userinfo[..end.unwrap_or(userinfo.len())], at.is_none());
    }
    if let Some(rest) = strip_prefix_ci(addr, "tel:") {
        let end = find_byte(rest, |b| matches!(b, b';' | b'?'));
        return (&rest[..end.unwrap_or(rest.len())], false);
    }
    (addr, false)
}

/// Whether the user part is one of the [`WITHHELD`] words (any case, percent-encoded or quoted).
fn is_withheld_word(user: &str) -> bool {
    let mut buf = [0u8; 16];
    let mut len = 0;
    for c in Decoded::new(user) {
        if c.is_ascii_alphabetic() {
            let Some(slot) = buf.get_mut(len) else {
                return false;
            };
            *slot = c.to_ascii_lowercase() as u8;
            len += 1;
        } else if !(is_blank(c) || c == '"' || c == '\'') {
            return false;
        }
    }
    WITHHELD.iter().any(|w| w.as_bytes() == &buf[..len])
}

/// Collects the digits of a phone number, stopping at an extension, a parameter or a comment
/// after a separator ("... доб. 12", "...;ext=1", "... (office)"). Letters before the digits or
/// stuck to them (other than an extension marker: "x12") make the text a word, so SIP users
/// like `alice2` or `100abc` are never mistaken for numbers.
fn scan(user: &str) -> Lexed<'_> {
    let mut digits = Digits::new();
    let mut chars = Decoded::new(user);
    let mut after_digit = false;
    while let Some(c) = chars.next() {
        let was_after_digit = std::mem::replace(&mut after_digit, false);
        if let Some(d) = digit_value(c) {
            after_digit = true;
            if digits.len == MAX_DIGITS {
                // The rest cannot change the outcome (invalid), and stopping bounds the work.
                digits.overflow = true;
                break;
            }
            digits.buf[digits.len] = d;
            digits.len += 1;
            continue;
        }
        let seen = digits.len > 0;
        if c == '+' || c == '\u{FF0B}' {
            if seen {
                break;
            }
            digits.plus = true;
            continue;
        }
        if c == '(' && seen {
            // "(0)" after a country code is the trunk prefix people add for national callers:
            // "+44 (0)20 8123 4567". It is never dialled from abroad, so it is dropped.
            let mut ahead = chars.clone();
            if ahead.next() == Some('0') && ahead.next() == Some(')') {
                chars = ahead;
                continue;
            }
        }
        if is_separator(c) {
            continue;
        }
        if is_letter(c) {
            if seen && (!was_after_digit || is_extension_marker(c, &mut chars)) {
                break;
            }
            return Lexed::Word(user);
        }
        if seen {
            // ";ext=12", "#12", "@host", ",": the number ended; the rest is not part of it.
            break;
        }
        // A symbol before any digit ("*67", "#12", "<..."): not a phone number.
        return Lexed::Word(user);
    }
    if digits.len == 0 {
        Lexed::Withheld
    } else {
        Lexed::Number(digits)
    }
}

/// Whether the run of letters starting with `first` is an extension marker; consumes the run.
fn is_extension_marker(first: char, chars: &mut Decoded<'_>) -> bool {
    let mut word = ['\0'; 10];
    let mut len = 0;
    let mut c = first;
    loop {
        if let Some(slot) = word.get_mut(len) {
            *slot = c.to_lowercase().next().unwrap_or(c);
        }
        len += 1;
        let mut ahead = chars.clone();
        match ahead.next() {
            Some(next) if is_letter(next) => {
                *chars = ahead;
                c = next;
            }
            _ => break,
        }
    }
    len <= word.len()
        && EXTENSION_MARKERS
            .iter()
            .any(|m| m.chars().eq(word[..len].iter().copied()))
}

/// The `invalid:` token for a non-number: its ASCII letters and digits in lowercase, or, when it
/// has non-ASCII letters (`Иван`), the hex of their UTF-8 so distinct names stay distinct while
/// the token stays ASCII. `None` when there is nothing alphanumeric at all (`"!!!"`).
pub(crate) fn word_token(user: &str) -> Option<String> {
    let mut out = String::new();
    if Decoded::new(user).all(|c| c.is_ascii() || !c.is_alphanumeric()) {
        for c in Decoded::new(user).filter(char::is_ascii_alphanumeric) {
            if out.len() == MAX_TOKEN {
                break;
            }
            out.push(c.to_ascii_lowercase());
        }
    } else {
        let mut utf8 = [0u8; 4];
        'chars: for c in Decoded::new(user).filter(|c| c.is_alphanumeric()) {
            for b in c.encode_utf8(&mut utf8).bytes() {
                if out.len() + 2 > MAX_TOKEN {
                    break 'chars;
                }
                let _ = write!(out, "{b:02x}");
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(text: &str) -> Option<(bool, String)> {
        match lex(trim(text)) {
            Lexed::Number(d) => Some((d.plus, String::from_utf8_lossy(d.as_bytes()).into())),
            _ => None,
        }
    }

    #[test]
    fn percent_decoding_handles_ascii_multibyte_and_broken_escapes() {
        let decoded: String = Decoded::new("%2B7%20%D0%B4%zz%C3").collect();
        assert_eq!(decoded, "+7 д%zz\u{FFFD}");
    }

    #[test]
    fn display_name_digits_are_ignored() {
        assert_eq!(
            addr_spec(r#""Office 8 800 \"2\" <x>" <sip:101@pbx>;tag=1"#),
            "sip:101@pbx"
        );
        assert_eq!(user_part("sip:101:secret@pbx;user=phone"), ("101", false));
        assert_eq!(user_part("sips:+7499@pbx"), ("+7499", false));
        assert_eq!(user_part("tel:+7-499;ext=1"), ("+7-499", false));
        assert_eq!(
            user_part("sip:pbx.example.org;lr"),
            ("pbx.example.org", true)
        );
    }

    #[test]
    fn scan_stops_at_extensions_and_drops_trunk_zero() {
        assert_eq!(digits("+44 (0)20 x5"), Some((true, "4420".into())));
        assert_eq!(digits("8 499 ДОБ.45"), Some((false, "8499".into())));
        assert_eq!(digits("８４９９"), Some((false, "8499".into())));
        assert_eq!(digits("100 (office)"), Some((false, "100".into())));
        assert!(matches!(lex("100abc"), Lexed::Word("100abc")));
        assert!(matches!(
            lex("sip:203.0.113.5:5060"),
            Lexed::Word("203.0.113.5")
        ));
        assert!(matches!(lex("- ( ) -"), Lexed::Withheld));
    }

    #[test]
    fn shortcuts_agree_with_the_std_functions() {
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(is_letter(c), c.is_alphabetic(), "{c:?}");
        }
        for text in [
            "",
            " ",
            "+7",
            " +7",
            "+7\u{FEFF}",
            "\t7 ",
            "a",
            "\u{200B}x\u{200B}",
            "\x7f1",
        ] {
            assert_eq!(trim(text), text.trim_matches(is_blank), "{text:?}");
        }
    }

    #[test]
    fn plain_number_agrees_with_lex() {
        let long = "9".repeat(MAX_DIGITS + 5);
        let plus_long = format!("+{long}");
        for text in [
            "+79991234567",
            "89991234567",
            "0",
            "+0",
            "101",
            &long,
            &plus_long,
        ] {
            let (Some(fast), Lexed::Number(slow)) = (plain_number(text), lex(text)) else {
                panic!("{text:?}: not a number on both paths");
            };
            assert_eq!(
                (fast.plus, fast.as_bytes(), fast.overflow),
                (slow.plus, slow.as_bytes(), slow.overflow),
                "{text:?}"
            );
        }
        for text in ["", "+", "++7", "7+", "7 1", "+7-999", "٧", "７"] {
            assert!(plain_number(text).is_none(), "{text:?}");
        }
    }

    #[test]
    fn word_tokens_are_short_lowercase_ascii() {
        assert_eq!(word_token("Alice.Smith-2").as_deref(), Some("alicesmith2"));
        assert_eq!(word_token("Иван").as_deref(), Some("d098d0b2d0b0d0bd"));
        assert_eq!(word_token("!!!"), None);
        assert_eq!(
            word_token(&"a".repeat(100)).map(|t| t.len()),
            Some(MAX_TOKEN)
        );
        assert_eq!(
            word_token(&"я".repeat(100)).map(|t| t.len()),
            Some(MAX_TOKEN)
        );
    }
}
