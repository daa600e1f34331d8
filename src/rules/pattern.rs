//! What one rule matches: rule text in any number format -> canonical [`RulePattern`] (parse,
//! display, naive match). Pure; the compiled lookup lives in [`super::matcher`].
//!
//! Kinds, each written in any format the normalizer reads and shown in one canonical form:
//! - exact number: `8 (495) 123-45-67` -> `+74951234567` (also `anonymous`, `local:101`);
//! - prefix: `8 495 123*` -> `+7495123*` (every number that starts with it);
//! - mask, Asterisk style: `_7495123XXXX`, `8 (495) 123-XX-XX` -> `+7495123XXXX`, with `X`
//!   (any digit), `N` (2-9), `Z` (1-9), `[1-5]`/`[135-9]` classes, and at the end `.` (one or
//!   more digits) or `!` (zero or more, shown as `*`);
//! - range: `+74951230000-+74951239999` (inclusive, both ends of the same length);
//! - `invalid`: every caller ID that is not a valid number (the `invalid:` form).

use std::fmt;

use super::matcher::{ANY_DIGIT, DigitPattern, DigitSet, Tail};
use crate::number::{CallerNumber, E164, Normalizer};

const MAX_DIGITS: usize = 15;
const DIGITS_2_TO_9: DigitSet = 0x3fc;
const DIGITS_1_TO_9: DigitSet = 0x3fe;

/// Errors from reading rule text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// A character that belongs to no number or pattern syntax.
    #[error(
        "{text:?}: unexpected {found:?} (patterns use digits, X, N, Z, [1-5], a trailing * . or !)"
    )]
    Unexpected {
        /// The rule text.
        text: String,
        /// The offending character.
        found: char,
    },
    /// `*`, `.` or `!` somewhere other than the end, or `[...]` not closed.
    #[error("{text:?}: {why}")]
    Malformed {
        /// The rule text.
        text: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The pattern cannot be placed in a numbering plan.
    #[error(
        "{text:?}: cannot tell which country this pattern belongs to; write it with + and the country code (e.g. +7495123XXXX)"
    )]
    NoCountry {
        /// The rule text.
        text: String,
    },
    /// A range whose ends are not numbers of one length, or are reversed or ambiguous.
    #[error("{text:?}: {why}")]
    BadRange {
        /// The rule text.
        text: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// What a rule matches, in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RulePattern {
    /// One canonical caller number (including `anonymous`, `local:...`, `invalid:...`).
    Exact(CallerNumber),
    /// Every caller ID that is not a valid number.
    AnyInvalid,
    /// A digit mask over E.164 digits; a prefix is a mask with a zero-or-more tail.
    Mask(DigitPattern),
    /// Every E.164 number from the first to the second, inclusive, both of one length.
    Range(E164, E164),
}

impl RulePattern {
    /// Reads rule text in any format (see the module docs), using `normalizer`'s default
    /// country for numbers written without `+`.
    pub fn parse(text: &str, normalizer: &Normalizer) -> Result<RulePattern, PatternError> {
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("invalid") {
            return Ok(RulePattern::AnyInvalid);
        }
        if let Some(raw) = RawMask::lex(trimmed)? {
            return raw.canonical(trimmed, normalizer);
        }
        // Ranges first: the normalizer would read "+7...-+7..." as one number with trailing
        // text. Two numbers need at least twice the digits of any one, so no single number
        // written with dashes is taken for a range.
        if let Some(range) = parse_range(trimmed, normalizer)? {
            return Ok(range);
        }
        Ok(RulePattern::Exact(normalizer.normalize(trimmed)))
    }

    /// How many caller numbers it can match: the measure of specificity (fewer = more specific).
    pub fn breadth(&self) -> u128 {
        match self {
            RulePattern::Exact(_) => 1,
            // Overlaps only exact `invalid:` rules, which must win over it.
            RulePattern::AnyInvalid => u128::MAX,
            RulePattern::Mask(mask) => mask.count(),
            RulePattern::Range(lo, hi) => u128::from(hi.value() - lo.value()) + 1,
        }
    }

    /// Short name of the kind: `exact`, `invalid`, `prefix`, `mask` or `range`.
    pub fn kind(&self) -> &'static str {
        match self {
            RulePattern::Exact(_) => "exact",
            RulePattern::AnyInvalid => "invalid",
            RulePattern::Mask(m) if is_prefix(m) => "prefix",
            RulePattern::Mask(_) => "mask",
            RulePattern::Range(..) => "range",
        }
    }

    /// The digit patterns the compiled matcher indexes (masks and ranges; empty otherwise).
    pub fn digit_patterns(&self) -> Vec<DigitPattern> {
        match self {
            RulePattern::Mask(mask) => vec![mask.clone()],
            RulePattern::Range(lo, hi) => {
                let (lo, hi) = (lo.to_string(), hi.to_string());
                DigitPattern::from_range(&lo.as_bytes()[1..], &hi.as_bytes()[1..])
                    .unwrap_or_default()
            }
            RulePattern::Exact(_) | RulePattern::AnyInvalid => Vec::new(),
        }
    }

    /// Rule-by-rule match, for `--explain` and as the reference the compiled matcher is tested against.
    pub fn matches(&self, number: &CallerNumber) -> bool {
        match (self, number) {
            (RulePattern::Exact(n), number) => n == number,
            (RulePattern::AnyInvalid, CallerNumber::Invalid(_)) => true,
            (RulePattern::Mask(mask), CallerNumber::E164(e)) => {
                mask.matches(&e.to_string().as_bytes()[1..])
            }
            (RulePattern::Range(lo, hi), CallerNumber::E164(e)) => {
                e.digit_count() == lo.digit_count()
                    && (lo.value()..=hi.value()).contains(&e.value())
            }
            _ => false,
        }
    }

    /// A few numbers the rule catches, to show before it is saved: the number itself, the
    /// two ends of a range, or a mask's lowest and highest filling at the shortest length the
    /// numbering plans accept. Every one is checked to normalize to itself and to match.
    pub fn sample_numbers(&self, normalizer: &Normalizer) -> Vec<CallerNumber> {
        let candidates: Vec<CallerNumber> = match self {
            RulePattern::Exact(n) => vec![n.clone()],
            RulePattern::AnyInvalid => vec![normalizer.normalize("sip:alice@carrier.example")],
            RulePattern::Range(lo, hi) => vec![CallerNumber::E164(*lo), CallerNumber::E164(*hi)],
            RulePattern::Mask(mask) => {
                let fill = |pick: fn(DigitSet) -> u32, pad: char| -> Option<CallerNumber> {
                    let fixed: String = mask
                        .elems
                        .iter()
                        .filter_map(|&set| char::from_digit(pick(set), 10))
                        .collect();
                    let shortest = match mask.tail {
                        Tail::None | Tail::ZeroOrMore => fixed.len(),
                        Tail::OneOrMore => fixed.len() + 1,
                    };
                    let longest = match mask.tail {
                        Tail::None => fixed.len(),
                        Tail::OneOrMore | Tail::ZeroOrMore => 15,
                    };
                    (shortest..=longest).find_map(|len| {
                        let mut digits = fixed.clone();
                        digits.extend(std::iter::repeat_n(pad, len.saturating_sub(fixed.len())));
                        let n = normalizer.normalize(&format!("+{digits}"));
                        (n.to_string() == format!("+{digits}") && self.matches(&n)).then_some(n)
                    })
                };
                // Lowest allowed digit of each set, then the highest.
                let low: fn(DigitSet) -> u32 = |set| set.trailing_zeros();
                let high: fn(DigitSet) -> u32 = |set| 15 - set.leading_zeros();
                [fill(low, '0'), fill(high, '9')]
                    .into_iter()
                    .flatten()
                    .collect()
            }
        };
        let mut samples: Vec<CallerNumber> = Vec::new();
        for n in candidates {
            if self.matches(&n)
                && normalizer.normalize(&n.to_string()) == n
                && !samples.contains(&n)
            {
                samples.push(n);
            }
        }
        samples
    }
}

impl fmt::Display for RulePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RulePattern::Exact(n) => n.fmt(f),
            RulePattern::AnyInvalid => f.write_str("invalid"),
            RulePattern::Mask(mask) => {
                f.write_str("+")?;
                for &set in &mask.elems {
                    write_set(f, set)?;
                }
                match mask.tail {
                    Tail::None => Ok(()),
                    Tail::ZeroOrMore => f.write_str("*"),
                    // Not produced by `parse`, which rewrites it as `X*`.
                    Tail::OneOrMore => f.write_str("X*"),
                }
            }
            RulePattern::Range(lo, hi) => write!(f, "{lo}-{hi}"),
        }
    }
}

fn is_prefix(mask: &DigitPattern) -> bool {
    mask.tail == Tail::ZeroOrMore && mask.elems.iter().all(|s| s.count_ones() == 1)
}

fn write_set(f: &mut fmt::Formatter<'_>, set: DigitSet) -> fmt::Result {
    match set {
        ANY_DIGIT => return f.write_str("X"),
        DIGITS_2_TO_9 => return f.write_str("N"),
        DIGITS_1_TO_9 => return f.write_str("Z"),
        _ => {}
    }
    if set.count_ones() == 1 {
        return write!(f, "{}", set.trailing_zeros());
    }
    f.write_str("[")?;
    let mut d = 0u32;
    while d < 10 {
        if set & (1 << d) == 0 {
            d += 1;
            continue;
        }
        let start = d;
        while d + 1 < 10 && set & (1 << (d + 1)) != 0 {
            d += 1;
        }
        match d - start {
            0 => write!(f, "{start}")?,
            1 => write!(f, "{start}{d}")?,
            _ => write!(f, "{start}-{d}")?,
        }
        d += 1;
    }
    f.write_str("]")
}

/// A mask as typed, before the numbering plan is applied.
#[derive(Debug)]
struct RawMask {
    plus: bool,
    elems: Vec<DigitSet>,
    tail: Tail,
}

impl RawMask {
    /// `Ok(None)` when the text is no mask (an ordinary number, a range, a word).
    fn lex(text: &str) -> Result<Option<RawMask>, PatternError> {
        let (asterisk, body) = match text.strip_prefix('_') {
            Some(body) => (true, body),
            None => (false, text),
        };
        // Without `_` the text is a mask only if every character is mask syntax and there is a
        // wildcard: "UNKNOWN" or "sip:..." stay numbers and words.
        if !asterisk {
            let mask_chars = body.chars().all(|c| {
                c.is_ascii_digit()
                    || is_separator(c)
                    || matches!(c, '+' | 'X' | 'N' | 'Z' | 'Х' | 'х' | '[' | ']' | '*')
            });
            let wildcard = body
                .chars()
                .any(|c| matches!(c, 'X' | 'N' | 'Z' | 'Х' | 'х' | '[' | '*'));
            if !mask_chars || !wildcard {
                return Ok(None);
            }
        }
        let malformed = |why| PatternError::Malformed {
            text: text.to_owned(),
            why,
        };
        let body = body.trim();
        let (plus, body) = match body.strip_prefix('+') {
            Some(rest) => (true, rest.replacen("(0)", "", 1)),
            None => (false, body.to_owned()),
        };
        let mut elems = Vec::new();
        let mut tail = Tail::None;
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            if tail != Tail::None {
                if is_separator(c) {
                    continue;
                }
                return Err(malformed("*, . and ! may only end a pattern"));
            }
            let set = match c {
                '0'..='9' => 1 << (c as u32 - '0' as u32),
                'X' | 'Х' | 'х' => ANY_DIGIT,
                'x' if asterisk => ANY_DIGIT,
                'N' => DIGITS_2_TO_9,
                'n' if asterisk => DIGITS_2_TO_9,
                'Z' => DIGITS_1_TO_9,
                'z' if asterisk => DIGITS_1_TO_9,
                '[' => lex_class(&mut chars).ok_or_else(|| malformed("bad [...] class"))?,
                '*' | '!' if asterisk || c == '*' => {
                    tail = Tail::ZeroOrMore;
                    continue;
                }
                '.' if asterisk => {
                    tail = Tail::OneOrMore;
                    continue;
                }
                c if is_separator(c) => continue,
                found => {
                    return Err(PatternError::Unexpected {
                        text: text.to_owned(),
                        found,
                    });
                }
            };
            elems.push(set);
        }
        if elems.is_empty() {
            return Err(malformed("a pattern needs at least one digit"));
        }
        if elems.len() > MAX_DIGITS + 4 {
            return Err(malformed("too many digits"));
        }
        Ok(Some(RawMask { plus, elems, tail }))
    }

    /// Applies the numbering plan to the fixed digits in front of the first wildcard.
    fn canonical(self, text: &str, normalizer: &Normalizer) -> Result<RulePattern, PatternError> {
        let no_country = || PatternError::NoCountry {
            text: text.to_owned(),
        };
        let fixed = self
            .elems
            .iter()
            .take_while(|s| s.count_ones() == 1)
            .count();
        let lead: Vec<u8> = self.elems[..fixed]
            .iter()
            .map(|s| b'0' + s.trailing_zeros() as u8)
            .collect();
        let wild = &self.elems[fixed..];
        let canonical_lead = if self.plus {
            (lead.first().is_some_and(|&d| d != b'0')).then(|| lead.clone())
        } else if self.tail == Tail::None {
            fixed_length_lead(&lead, wild, normalizer)
        } else {
            normalizer.canonical_prefix(false, &lead)
        }
        .ok_or_else(no_country)?;
        let mut elems: Vec<DigitSet> = canonical_lead.iter().map(|d| 1 << (d - b'0')).collect();
        elems.extend_from_slice(wild);
        if elems.len() > MAX_DIGITS {
            return Err(PatternError::Malformed {
                text: text.to_owned(),
                why: "longer than an E.164 number (15 digits)",
            });
        }
        if self.tail == Tail::None && wild.is_empty() {
            // No wildcard at all (`_+7 495 123-45-67`, `+7495[1]234567`): the exact number a
            // caller ID with these digits normalizes to, so that `_+74` is `invalid:+74` (what
            // a caller sending +74 gets) and not an E.164 number no caller can have.
            let digits: String = elems
                .iter()
                .map(|s| char::from(b'0' + s.trailing_zeros() as u8))
                .collect();
            return Ok(RulePattern::Exact(
                normalizer.normalize(&format!("+{digits}")),
            ));
        }
        // "One or more" is shown as one X and "zero or more": `_7495123.` -> `+7495123X*`, a
        // form that reads back the same without the `_` syntax.
        let tail = if self.tail == Tail::OneOrMore {
            elems.push(ANY_DIGIT);
            Tail::ZeroOrMore
        } else {
            self.tail
        };
        if elems.len() > MAX_DIGITS {
            return Err(PatternError::Malformed {
                text: text.to_owned(),
                why: "longer than an E.164 number (15 digits)",
            });
        }
        Ok(RulePattern::Mask(DigitPattern { elems, tail }))
    }
}

/// For a mask of known length: fills the wildcards with sample digits, normalizes the whole
/// number as a caller ID would be, and keeps the transformation of the fixed lead if the
/// wildcard digits come out unchanged at the end.
fn fixed_length_lead(lead: &[u8], wild: &[DigitSet], normalizer: &Normalizer) -> Option<Vec<u8>> {
    let pickers: [fn(DigitSet) -> u32; 3] = [
        |s| 15 - (s.leading_zeros()),
        |s| s.trailing_zeros(),
        |s| {
            (0u32..10)
                .min_by_key(|&d| if s & (1 << d) != 0 { d.abs_diff(5) } else { 99 })
                .unwrap_or(0)
        },
    ];
    for pick in pickers {
        let fill: Vec<u8> = wild.iter().map(|&s| b'0' + pick(s) as u8).collect();
        let text: String = lead.iter().chain(&fill).map(|&b| char::from(b)).collect();
        if let CallerNumber::E164(e) = normalizer.normalize(&text) {
            let digits = e.to_string().into_bytes();
            let digits = &digits[1..];
            if let Some(head) = digits.strip_suffix(fill.as_slice()) {
                return Some(head.to_vec());
            }
        }
    }
    None
}

fn lex_class(chars: &mut std::str::Chars<'_>) -> Option<DigitSet> {
    let mut set: DigitSet = 0;
    let mut prev: Option<u32> = None;
    loop {
        match chars.next()? {
            ']' => return (set != 0).then_some(set),
            c @ '0'..='9' => {
                let d = c as u32 - '0' as u32;
                set |= 1 << d;
                prev = Some(d);
            }
            '-' => {
                let lo = prev.take()?;
                let hi = chars.next()?.to_digit(10)?;
                if hi < lo {
                    return None;
                }
                for d in lo..=hi {
                    set |= 1 << d;
                }
            }
            _ => return None,
        }
    }
}

fn is_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '\u{a0}' | '\u{202f}' | '\t' | '-' | '\u{2010}'
            ..='\u{2015}' | '\u{2212}' | '(' | ')' | '.' | '/'
    )
}

/// `lo-hi` with both ends numbers of one length; `Ok(None)` when the text has no such split.
fn parse_range(text: &str, normalizer: &Normalizer) -> Result<Option<RulePattern>, PatternError> {
    let bad = |why| PatternError::BadRange {
        text: text.to_owned(),
        why,
    };
    let mut found: Option<(E164, E164)> = None;
    let mut splits = 0;
    for (i, c) in text.char_indices() {
        let dash = matches!(c, '-' | '\u{2010}'..='\u{2015}' | '\u{2212}');
        let dots = c == '.' && text[i + 1..].starts_with('.');
        if !dash && !dots {
            continue;
        }
        let skip = if dots { 2 } else { c.len_utf8() };
        let (left, right) = (&text[..i], &text[i + skip..]);
        let (CallerNumber::E164(lo), CallerNumber::E164(hi)) =
            (normalizer.normalize(left), normalizer.normalize(right))
        else {
            continue;
        };
        if found != Some((lo, hi)) {
            splits += 1;
        }
        found = Some((lo, hi));
    }
    let Some((lo, hi)) = found else {
        return Ok(None);
    };
    if splits > 1 {
        return Err(bad("ambiguous range: write it as +FIRST-+LAST"));
    }
    if lo.digit_count() != hi.digit_count() {
        return Err(bad(
            "both ends of a range must have the same number of digits",
        ));
    }
    if lo > hi {
        return Err(bad("range is reversed (first end is larger)"));
    }
    if lo == hi {
        return Ok(Some(RulePattern::Exact(CallerNumber::E164(lo))));
    }
    Ok(Some(RulePattern::Range(lo, hi)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        match RulePattern::parse(text, &Normalizer::default()) {
            Ok(p) => p.to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn sample_numbers_are_caught_and_canonical() {
        let n = Normalizer::default();
        let samples = |text: &str| -> Vec<String> {
            let pattern = RulePattern::parse(text, &n).expect(text);
            pattern
                .sample_numbers(&n)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(samples("8 916 123-45-67"), ["+79161234567"]);
        assert_eq!(samples("8 916 123-45-XX"), ["+79161234500", "+79161234599"]);
        assert_eq!(samples("+7916*"), ["+79160000000", "+79169999999"]);
        assert_eq!(
            samples("+7 916 [2-4]00-00-0X"),
            ["+79162000000", "+79164000009"]
        );
        assert_eq!(
            samples("+74951234500-+74951234599"),
            ["+74951234500", "+74951234599"]
        );
        assert_eq!(samples("anonymous"), ["anonymous"]);
        assert_eq!(samples("invalid"), ["invalid:alice"]);
    }

    #[test]
    fn every_kind_in_any_format_has_one_canonical_form() {
        let table = [
            // exact
            ("8 (495) 123-45-67", "+74951234567"),
            ("+7 495 123 45 67", "+74951234567"),
            ("Anonymous", "anonymous"),
            ("101", "local:101"),
            ("invalid", "invalid"),
            ("INVALID", "invalid"),
            // masks
            ("8 (495) 123-XX-XX", "+7495123XXXX"),
            ("+7495123XXXX", "+7495123XXXX"),
            ("_7495123XXXX", "+7495123XXXX"),
            ("_84951234xxx", "+74951234XXX"),
            ("495 123 XX XX", "+7495123XXXX"),
            ("8 (495) 123-ХХ-ХХ", "+7495123XXXX"),
            ("_7495NXXXXXX", "+7495NXXXXXX"),
            ("_7495Z[1-5][135-9]XXXX", "+7495Z[1-5][135-9]XXXX"),
            ("_7495[0123456789]XXXXXX", "+7495XXXXXXX"),
            ("_7495[12]XXXXXX", "+7495[12]XXXXXX"),
            ("_7495123.", "+7495123X*"),
            ("_7495123!", "+7495123*"),
            ("_8495123.", "+7495123X*"),
            ("+44 (0)20 7946 XXXX", "+44207946XXXX"),
            // prefixes
            ("+7495123*", "+7495123*"),
            ("8 495 123*", "+7495123*"),
            ("7495123*", "+7495123*"),
            ("495123*", "+7495123*"),
            ("810 44 20*", "+4420*"),
            ("00 44 20*", "+4420*"),
            ("8 800*", "+7800*"),
            // ranges
            ("+74951230000-+74951239999", "+74951230000-+74951239999"),
            ("84951230000-84951239999", "+74951230000-+74951239999"),
            (
                "8 495 123-00-00 - 8 495 123-99-99",
                "+74951230000-+74951239999",
            ),
            ("+74951230000..+74951239999", "+74951230000-+74951239999"),
            ("+74951234567-+74951234567", "+74951234567"),
        ];
        let n = Normalizer::default();
        for (input, expected) in table {
            assert_eq!(canon(input), expected, "{input}");
            // The canonical form parses back to itself, whatever the default country.
            for country in ["RU", "GB", "US"] {
                let other = Normalizer::new(crate::number::NumberingPlans::builtin(), country)
                    .expect("builtin plan");
                let again = RulePattern::parse(expected, &other).expect("canonical parses");
                assert_eq!(again.to_string(), expected, "{expected} in {country}");
            }
            assert!(RulePattern::parse(input, &n).is_ok());
        }
    }

    #[test]
    fn other_countries_read_their_own_trunk_prefixes() {
        let by = Normalizer::new(crate::number::NumberingPlans::builtin(), "BY").expect("BY");
        let p = RulePattern::parse("8 029 123*", &by).expect("BY prefix");
        assert_eq!(p.to_string(), "+37529123*");
        let gb = Normalizer::new(crate::number::NumberingPlans::builtin(), "GB").expect("GB");
        let p = RulePattern::parse("020 7946 XXXX", &gb).expect("GB mask");
        assert_eq!(p.to_string(), "+44207946XXXX");
    }

    #[test]
    fn bad_rules_are_clear_errors() {
        for (input, needle) in [
            ("_7495*123", "may only end"),
            ("+7495[12XXXX", "class"),
            ("+7495[]XXXX", "class"),
            ("_7495?XXX", "unexpected '?'"),
            ("XXXXXXXXXXX", "country"),
            ("+7495123XXXXXXXXXXX", "15 digits"),
            ("+74951230000-+442079460958", "same number of digits"),
            ("84951239999-84951230000", "reversed"),
        ] {
            let got = canon(input);
            assert!(got.contains(needle), "{input}: {got}");
        }
    }

    /// Found by the `rule_parser` fuzz target: `_+74` became the E.164 number +74, whose
    /// canonical text `+74` reads back as `invalid:+74`, the form callers sending it get.
    #[test]
    fn masks_without_wildcards_are_the_numbers_callers_get() {
        let n = Normalizer::default();
        for (input, expected, caller) in [
            ("_+74", "invalid:+74", "+74"),
            ("+74[4]", "invalid:+744", "+744"),
            ("_+7 495 123-45-67", "+74951234567", "84951234567"),
            ("+7495[1]234567", "+74951234567", "+7 495 123 45 67"),
        ] {
            assert_eq!(canon(input), expected, "{input}");
            let again = RulePattern::parse(expected, &n).expect("canonical parses");
            assert_eq!(again.to_string(), expected);
            let pattern = RulePattern::parse(input, &n).expect("parses");
            assert!(pattern.matches(&n.normalize(caller)), "{input} vs {caller}");
        }
    }

    #[test]
    fn words_and_uris_stay_numbers() {
        assert_eq!(canon("UNKNOWN"), "anonymous");
        assert_eq!(canon("sip:+74951234567@carrier"), "+74951234567");
        assert_eq!(canon("SPAM"), "invalid:spam");
        assert_eq!(canon("+7-495-123-45-67"), "+74951234567");
    }

    #[test]
    fn naive_matching_and_breadth() {
        let n = Normalizer::default();
        let num = |t: &str| n.normalize(t);
        let p = |t: &str| RulePattern::parse(t, &n).expect("parses");
        assert!(p("+7495123XXXX").matches(&num("84951234567")));
        assert!(!p("+7495123XXXX").matches(&num("84951244567")));
        assert!(p("+7495123*").matches(&num("84951234567")));
        assert!(p("+74951230000-+74951239999").matches(&num("84951234567")));
        assert!(!p("+74951230000-+74951233999").matches(&num("84951234567")));
        assert!(p("invalid").matches(&num("SPAM")));
        assert!(!p("invalid").matches(&num("anonymous")));
        assert!(p("+74951234567").breadth() < p("+7495123456X").breadth());
        assert!(p("+7495123XXXX").breadth() < p("+7495123*").breadth());
        assert_eq!(
            p("+74951230000-+74951239999").breadth(),
            p("+7495123XXXX").breadth()
        );
        assert_eq!(p("+7495123*").kind(), "prefix");
        assert_eq!(p("+7495123XXXX").kind(), "mask");
        // A range compiles to digit patterns that cover it exactly.
        let r = p("+74951230000-+74951239999").digit_patterns();
        assert!(!r.is_empty());
        assert!(r.iter().any(|d| d.matches(b"74951234567")));
    }
}
