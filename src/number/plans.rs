//! Numbering-plan tables: the TOML schema, its validation, and the compiled lookup form the normalizer reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use super::{E164, NumberError};

/// E.164 caps a whole number (country code + national significant number) at 15 digits.
pub(crate) const E164_MAX_DIGITS: usize = 15;

/// The builtin table, compiled into the binary so a deployment works without any data files.
const BUILTIN: &str = include_str!("plans.toml");

/// The numbering-plan table: full plans for some countries plus plausible lengths for every other
/// calling code. Loaded from TOML (see `src/number/plans.toml` for the format); cheap to clone.
#[derive(Clone, Debug)]
pub struct NumberingPlans {
    inner: Arc<Tables>,
}

/// Compiled tables. Plans are kept sorted by country so listings and merges are deterministic.
#[derive(Debug)]
pub(crate) struct Tables {
    pub(crate) plans: Vec<Plan>,
    /// NSN length range (inclusive) per calling code without a full plan.
    ranges: BTreeMap<CallingCode, (u8, u8)>,
    /// Direct-indexed by calling code (see [`slot_index`]) so the hot path does no hashing.
    slots: Vec<Slot>,
}

/// What a calling code means, for validating the digits after it.
#[derive(Debug, Clone, Default)]
enum Slot {
    #[default]
    Unassigned,
    /// Indices into `Tables::plans` of every plan using this code.
    Plans(Box<[usize]>),
    /// Inclusive NSN length range.
    Range(u8, u8),
}

/// A country calling code as ASCII digits (1 to 3 of them, first not `0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CallingCode {
    digits: [u8; 3],
    len: u8,
}

impl CallingCode {
    fn parse(text: &str) -> Option<CallingCode> {
        let b = text.as_bytes();
        if b.is_empty() || b.len() > 3 || b[0] == b'0' || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut digits = [0; 3];
        digits[..b.len()].copy_from_slice(b);
        Some(CallingCode {
            digits,
            len: b.len() as u8,
        })
    }

    /// The code's ASCII digits.
    pub(crate) fn digits(&self) -> &[u8] {
        &self.digits[..usize::from(self.len)]
    }
}

/// Position of a 1-3 digit code in `Tables::slots`: codes of each length get their own block,
/// because "1" and "100" are different codes.
fn slot_index(code: &[u8]) -> Option<usize> {
    let value = code.iter().try_fold(0usize, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + usize::from(b - b'0'))
    })?;
    match code.len() {
        1 => Some(value),
        2 => Some(10 + value),
        3 => Some(110 + value),
        _ => None,
    }
}
const SLOT_COUNT: usize = 1110;

/// One country's compiled plan.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) country: Box<str>,
    pub(crate) code: CallingCode,
    /// Canonical trunk prefix first (if any), then the other accepted spellings.
    pub(crate) trunk_prefixes: Vec<Box<[u8]>>,
    pub(crate) international_prefixes: Vec<Box<[u8]>>,
    /// Bit `n` set when an NSN of `n` digits is allowed.
    lengths: u16,
    pub(crate) min_len: usize,
    leading: Vec<Pattern>,
    /// Per first digit, bit `i` set when `leading[i]` allows it, so [`Plan::accepts`] tries only
    /// those patterns. Valid when `leading` has at most 64 entries; longer lists are all tried.
    leading_by_first: [u64; 10],
}

impl Plan {
    /// Whether `nsn` (ASCII digits) is a national significant number of this plan.
    pub(crate) fn accepts(&self, nsn: &[u8]) -> bool {
        nsn.len() < 16 && self.lengths & (1 << nsn.len()) != 0 && self.leading_allows(nsn)
    }

    fn leading_allows(&self, nsn: &[u8]) -> bool {
        if self.leading.is_empty() {
            return true;
        }
        if self.leading.len() > 64 {
            return self.leading.iter().any(|p| p.matches(nsn));
        }
        // No pattern matches an empty or non-digit start: patterns are non-empty digit classes.
        let Some(&first) = nsn.first().filter(|b| b.is_ascii_digit()) else {
            return false;
        };
        let mut candidates = self.leading_by_first[usize::from(first - b'0')];
        while candidates != 0 {
            let i = candidates.trailing_zeros() as usize;
            candidates &= candidates - 1;
            if self.leading.get(i).is_some_and(|p| p.matches(nsn)) {
                return true;
            }
        }
        false
    }

    /// Whether some national number of this plan could start with `nsn_start` (ASCII digits);
    /// used for open-ended patterns, whose length is unknown.
    pub(crate) fn may_start(&self, nsn_start: &[u8]) -> bool {
        self.leading.is_empty() || self.leading.iter().any(|p| p.agrees_with(nsn_start))
    }
}

/// A leading-digits pattern: one bit set per allowed digit, per position.
#[derive(Debug, Clone)]
struct Pattern(Box<[u16]>);

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        let mut masks = Vec::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            let mask = match c {
                '0'..='9' => 1u16 << (c as u8 - b'0'),
                'x' | 'X' => 0x3ff,
                '[' => {
                    let mut mask = 0u16;
                    let mut prev: Option<u8> = None;
                    let mut closed = false;
                    while let Some(c) = chars.next() {
                        match c {
                            ']' => {
                                closed = true;
                                break;
                            }
                            '0'..='9' => {
                                let d = c as u8 - b'0';
                                mask |= 1 << d;
                                prev = Some(d);
                            }
                            '-' => {
                                let (Some(lo), Some(hi @ '0'..='9')) = (prev, chars.next()) else {
                                    return Err(format!("bad range in pattern {text:?}"));
                                };
                                let hi = hi as u8 - b'0';
                                if hi < lo {
                                    return Err(format!("reversed range in pattern {text:?}"));
                                }
                                for d in lo..=hi {
                                    mask |= 1 << d;
                                }
                                prev = None;
                            }
                            _ => return Err(format!("unexpected {c:?} in pattern {text:?}")),
                        }
                    }
                    if !closed || mask == 0 {
                        return Err(format!("unclosed or empty class in pattern {text:?}"));
                    }
                    mask
                }
                _ => {
                    return Err(format!(
                        "unexpected {c:?} in pattern {text:?} (use digits, x, or [classes])"
                    ));
                }
            };
            masks.push(mask);
        }
        if masks.is_empty() || masks.len() > E164_MAX_DIGITS {
            return Err(format!("pattern {text:?} must cover 1 to 15 digits"));
        }
        Ok(Pattern(masks.into()))
    }

    /// True when `start` and the pattern agree on every position both have.
    fn agrees_with(&self, start: &[u8]) -> bool {
        self.0
            .iter()
            .zip(start)
            .all(|(mask, &d)| d.is_ascii_digit() && mask & (1 << (d - b'0')) != 0)
    }

    /// Digits (as bits) the pattern allows first.
    fn first_mask(&self) -> u16 {
        self.0.first().copied().unwrap_or(0)
    }

    fn matches(&self, nsn: &[u8]) -> bool {
        self.0.len() <= nsn.len()
            && self
                .0
                .iter()
                .zip(nsn)
                .all(|(mask, &d)| d.is_ascii_digit() && mask & (1 << (d - b'0')) != 0)
    }
}

/// The TOML document.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    #[serde(default)]
    plan: Vec<PlanEntry>,
    #[serde(default)]
    calling_codes: BTreeMap<String, Vec<i64>>,
}

/// One `[[plan]]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanEntry {
    country: String,
    calling_code: i64,
    trunk_prefix: String,
    #[serde(default)]
    other_trunk_prefixes: Vec<String>,
    international_prefixes: Vec<String>,
    nsn_lengths: Vec<i64>,
    #[serde(default)]
    leading_digits: Vec<String>,
}

/// A digit-string field (prefix) of at most `max` digits; empty allowed only when `allow_empty`.
fn digit_field(value: &str, max: usize, allow_empty: bool) -> Option<Box<[u8]>> {
    let ok = value.len() <= max
        && (allow_empty || !value.is_empty())
        && value.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| value.as_bytes().into())
}

impl PlanEntry {
    fn compile(self) -> Result<Plan, String> {
        let country = self.country.trim().to_ascii_uppercase();
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "country {:?} is not a two-letter ISO 3166 code",
                self.country
            ));
        }
        let fail = |what: String| format!("plan {country}: {what}");
        let code = (1..=999)
            .contains(&self.calling_code)
            .then(|| CallingCode::parse(&self.calling_code.to_string()))
            .flatten()
            .ok_or_else(|| {
                fail(format!(
                    "calling_code {} is not 1 to 999",
                    self.calling_code
                ))
            })?;
        // The canonical trunk prefix may be empty (no trunk prefix); extra spellings may not.
        let mut trunk_prefixes = Vec::new();
        let canonical = digit_field(&self.trunk_prefix, 4, true).ok_or_else(|| {
            fail(format!(
                "trunk_prefix {:?} must be 0 to 4 digits",
                self.trunk_prefix
            ))
        })?;
        if !canonical.is_empty() {
            trunk_prefixes.push(canonical);
        }
        for t in &self.other_trunk_prefixes {
            trunk_prefixes.push(digit_field(t, 4, false).ok_or_else(|| {
                fail(format!(
                    "other_trunk_prefixes entry {t:?} must be 1 to 4 digits"
                ))
            })?);
        }
        let mut international_prefixes = Vec::new();
        for p in &self.international_prefixes {
            international_prefixes.push(digit_field(p, 5, false).ok_or_else(|| {
                fail(format!("international prefix {p:?} must be 1 to 5 digits"))
            })?);
        }
        let max_nsn = E164_MAX_DIGITS - usize::from(code.len);
        if self.nsn_lengths.is_empty() {
            return Err(fail("nsn_lengths is empty".into()));
        }
        let mut lengths = 0u16;
        for &n in &self.nsn_lengths {
            if !(1..=max_nsn as i64).contains(&n) {
                return Err(fail(format!(
                    "nsn_lengths entry {n} is not 1 to {max_nsn} (E.164 allows 15 digits with the calling code)"
                )));
            }
            lengths |= 1 << n;
        }
        let leading = self
            .leading_digits
            .iter()
            .map(|p| Pattern::parse(p).map_err(&fail))
            .collect::<Result<Vec<_>, _>>()?;
        let mut leading_by_first = [0u64; 10];
        for (i, pattern) in leading.iter().enumerate().take(64) {
            for (d, set) in leading_by_first.iter_mut().enumerate() {
                if pattern.first_mask() & (1 << d) != 0 {
                    *set |= 1 << i;
                }
            }
        }
        Ok(Plan {
            country: country.into(),
            code,
            trunk_prefixes,
            international_prefixes,
            lengths,
            min_len: lengths.trailing_zeros() as usize,
            leading,
            leading_by_first,
        })
    }
}

impl Tables {
    /// Builds the lookup index. Infallible: entries were validated one by one already. Plans take
    /// precedence over a length range for the same code.
    fn build(mut plans: Vec<Plan>, ranges: BTreeMap<CallingCode, (u8, u8)>) -> Tables {
        plans.sort_by(|a, b| a.country.cmp(&b.country));
        let mut slots = vec![Slot::Unassigned; SLOT_COUNT];
        for (code, &(min, max)) in &ranges {
            if let Some(i) = slot_index(code.digits()) {
                slots[i] = Slot::Range(min, max);
            }
        }
        let mut by_code: BTreeMap<CallingCode, Vec<usize>> = BTreeMap::new();
        for (i, plan) in plans.iter().enumerate() {
            by_code.entry(plan.code).or_default().push(i);
        }
        for (code, indices) in by_code {
            if let Some(i) = slot_index(code.digits()) {
                slots[i] = Slot::Plans(indices.into());
            }
        }
        Tables {
            plans,
            ranges,
            slots,
        }
    }

    fn slot(&self, code: &[u8]) -> &Slot {
        slot_index(code)
            .and_then(|i| self.slots.get(i))
            .unwrap_or(&Slot::Unassigned)
    }

    /// Validates `digits` (calling code followed by an NSN, ASCII) as an international number.
    /// Every code length is tried because a merged table need not be prefix-free; the output is
    /// the input digits whenever they are valid as written, which keeps normalization idempotent.
    pub(crate) fn international(&self, digits: &[u8]) -> Option<E164> {
        (1..=3)
            .find_map(|k| self.with_code(digits, k, false))
            .or_else(|| (1..=3).find_map(|k| self.with_code(digits, k, true)))
    }

    /// Validates `digits` as a `k`-digit calling code followed by an NSN. With `lenient`, also
    /// accepts a trunk prefix written after the code ("+44 020...", "+7 8 499..."), dropping it.
    pub(crate) fn with_code(&self, digits: &[u8], k: usize, lenient: bool) -> Option<E164> {
        // Longer than 15 digits plus the longest trunk prefix (4) can never validate.
        if digits.len() <= k || digits.len() > E164_MAX_DIGITS + 4 {
            return None;
        }
        let (code, nsn) = digits.split_at(k);
        match self.slot(code) {
            Slot::Unassigned => None,
            Slot::Range(min, max) => (!lenient
                && (usize::from(*min)..=usize::from(*max)).contains(&nsn.len()))
            .then(|| E164::from_parts(code, nsn))
            .flatten(),
            Slot::Plans(indices) => {
                let plans = indices.iter().filter_map(|&i| self.plans.get(i));
                if !lenient {
                    return plans
                        .clone()
                        .any(|p| p.accepts(nsn))
                        .then(|| E164::from_parts(code, nsn))
                        .flatten();
                }
                plans
                    .clone()
                    .flat_map(|p| p.trunk_prefixes.iter())
                    .filter_map(|t| nsn.strip_prefix(&**t))
                    .find(|rest| plans.clone().any(|p| p.accepts(rest)))
                    .and_then(|rest| E164::from_parts(code, rest))
            }
        }
    }

    pub(crate) fn plan_index(&self, country: &str) -> Option<usize> {
        self.plans
            .iter()
            .position(|p| p.country.eq_ignore_ascii_case(country))
    }
}

impl NumberingPlans {
    /// The builtin table (`src/number/plans.toml`), parsed once.
    pub fn builtin() -> &'static NumberingPlans {
        static BUILTIN_PLANS: OnceLock<NumberingPlans> = OnceLock::new();
        BUILTIN_PLANS.get_or_init(|| match NumberingPlans::from_toml(BUILTIN) {
            Ok(plans) => plans,
            // The file is compiled in and covered by tests, so this is a build defect.
            Err(e) => panic!("builtin src/number/plans.toml is invalid: {e}"),
        })
    }

    /// Parses and validates a plan table in the format of `src/number/plans.toml`.
    pub fn from_toml(text: &str) -> Result<NumberingPlans, NumberError> {
        let file: PlanFile =
            toml::from_str(text).map_err(|e| NumberError::BadPlan(e.to_string().trim().into()))?;
        let mut plans = Vec::with_capacity(file.plan.len());
        for entry in file.plan {
            let plan = entry.compile().map_err(NumberError::BadPlan)?;
            if plans.iter().any(|p: &Plan| p.country == plan.country) {
                return Err(NumberError::BadPlan(format!(
                    "country {} has two plans",
                    plan.country
                )));
            }
            plans.push(plan);
        }
        let mut ranges = BTreeMap::new();
        for (key, bounds) in &file.calling_codes {
            let code = CallingCode::parse(key).ok_or_else(|| {
                NumberError::BadPlan(format!(
                    "calling_codes key {key:?} is not 1 to 3 digits without a leading 0"
                ))
            })?;
            let max_nsn = (E164_MAX_DIGITS - usize::from(code.len)) as i64;
            let &[min, max] = bounds.as_slice() else {
                return Err(NumberError::BadPlan(format!(
                    "calling_codes {key:?} must be [min, max] NSN lengths"
                )));
            };
            if !(1 <= min && min <= max && max <= max_nsn) {
                return Err(NumberError::BadPlan(format!(
                    "calling_codes {key:?} = [{min}, {max}] is not 1 <= min <= max <= {max_nsn}"
                )));
            }
            ranges.insert(code, (min as u8, max as u8));
        }
        // Calling codes must be prefix-free, as ITU assigns them, or "+3751..." would be ambiguous.
        let codes: Vec<CallingCode> = plans
            .iter()
            .map(|p| p.code)
            .chain(ranges.keys().copied())
            .collect();
        for a in &codes {
            for b in &codes {
                if a.len < b.len && b.digits().starts_with(a.digits()) {
                    return Err(NumberError::BadPlan(format!(
                        "calling code {} is a prefix of calling code {}",
                        String::from_utf8_lossy(a.digits()),
                        String::from_utf8_lossy(b.digits())
                    )));
                }
            }
        }
        Ok(NumberingPlans {
            inner: Arc::new(Tables::build(plans, ranges)),
        })
    }

    /// This table with `extra` laid over it: `extra`'s plans replace or add plans by ISO country
    /// code, and its `[calling_codes]` replace or add ranges by calling code. The result is not
    /// checked for prefix-freeness; if codes overlap, a number is valid under any matching one.
    pub fn merged_with(&self, extra: NumberingPlans) -> NumberingPlans {
        let mut plans: Vec<Plan> = self
            .inner
            .plans
            .iter()
            .filter(|p| extra.inner.plan_index(&p.country).is_none())
            .cloned()
            .collect();
        plans.extend(extra.inner.plans.iter().cloned());
        let mut ranges = self.inner.ranges.clone();
        ranges.extend(extra.inner.ranges.iter().map(|(k, v)| (*k, *v)));
        NumberingPlans {
            inner: Arc::new(Tables::build(plans, ranges)),
        }
    }

    /// ISO codes of the countries with a full plan (possible default countries), sorted.
    pub fn countries(&self) -> impl Iterator<Item = &str> {
        self.inner.plans.iter().map(|p| &*p.country)
    }

    pub(crate) fn tables(&self) -> &Tables {
        &self.inner
    }

    /// `"BY, CA, ..."` for error messages.
    pub(crate) fn country_list(&self) -> String {
        let mut out = String::new();
        for (i, c) in self.countries().enumerate() {
            let _ = write!(out, "{}{c}", if i == 0 { "" } else { ", " });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Plan::accepts` as it reads without the first-digit index.
    fn accepts_plainly(plan: &Plan, nsn: &[u8]) -> bool {
        nsn.len() < 16
            && plan.lengths & (1 << nsn.len()) != 0
            && (plan.leading.is_empty() || plan.leading.iter().any(|p| p.matches(nsn)))
    }

    fn assert_index_agrees(plans: &NumberingPlans) {
        let mut nsns: Vec<Vec<u8>> = vec![Vec::new(), b"x123".to_vec(), b"9a".to_vec()];
        for len in 1..=15 {
            for start in 0..1000u32 {
                let mut nsn = format!("{start:03}").into_bytes();
                nsn.resize(len, b'5');
                nsns.push(nsn);
            }
        }
        for plan in &plans.tables().plans {
            for nsn in &nsns {
                assert_eq!(
                    plan.accepts(nsn),
                    accepts_plainly(plan, nsn),
                    "{} {:?}",
                    plan.country,
                    String::from_utf8_lossy(nsn)
                );
            }
        }
    }

    #[test]
    fn leading_digit_index_agrees_with_trying_every_pattern() {
        assert_index_agrees(NumberingPlans::builtin());
        // More patterns than the index covers: all are tried.
        let many: Vec<String> = (10..90).map(|p| format!("\"{p}\"")).collect();
        let toml = format!(
            "[[plan]]\ncountry = \"ZZ\"\ncalling_code = 999\ntrunk_prefix = \"0\"\n\
             international_prefixes = [\"00\"]\nnsn_lengths = [4, 8]\n\
             leading_digits = [{}, \"9[0-4]x5\"]\n",
            many.join(", ")
        );
        match NumberingPlans::from_toml(&toml) {
            Ok(plans) => assert_index_agrees(&plans),
            Err(e) => panic!("{e}"),
        }
    }
}
