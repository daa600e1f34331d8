//! Caller-ID text -> canonical [`CallerNumber`].
//!
//! PROVISIONAL: this first cut knows the Russian (+7) plan only and strips everything but
//! digits. The table-driven normalizer (numbering plans as data, URIs, extensions, access
//! codes, property tests) replaces it; the public API below stays.

use std::fmt;

/// A valid E.164 number stored as its digits value (a country code never starts with 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(u64);

impl E164 {
    /// 1..=15 ASCII digits, first not `0`.
    pub fn from_digits(digits: &str) -> Option<E164> {
        let ok = (1..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        ok.then(|| digits.parse().ok().map(E164)).flatten()
    }

    /// The digits as an integer.
    pub fn value(self) -> u64 {
        self.0
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.0)
    }
}

/// Canonical form of a caller ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallerNumber {
    /// A valid international number.
    E164(E164),
    /// Withheld or empty caller ID.
    Anonymous,
    /// Short number (extension, service code) that has no E.164 form: `local:<digits>`.
    Local(Box<str>),
    /// Anything else: `invalid:<digits>`.
    Invalid(Box<str>),
}

impl fmt::Display for CallerNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallerNumber::E164(e) => e.fmt(f),
            CallerNumber::Anonymous => f.write_str("anonymous"),
            CallerNumber::Local(d) => write!(f, "local:{d}"),
            CallerNumber::Invalid(d) => write!(f, "invalid:{d}"),
        }
    }
}

/// Numbering-plan table (provisional: built in, RU only).
#[derive(Debug, Clone)]
pub struct NumberingPlans;

/// Errors from plans and normalizer construction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NumberError {
    /// The country has no plan.
    #[error("unknown country {country:?}; known: {known}")]
    UnknownCountry {
        /// Requested code.
        country: String,
        /// Known codes.
        known: String,
    },
}

impl NumberingPlans {
    /// The built-in table.
    pub fn builtin() -> &'static NumberingPlans {
        &NumberingPlans
    }
    /// Extra plans are not supported by this provisional version.
    pub fn from_toml(_text: &str) -> Result<NumberingPlans, NumberError> {
        Ok(NumberingPlans)
    }
    /// Merge (no-op in this provisional version).
    pub fn merged_with(&self, _extra: NumberingPlans) -> NumberingPlans {
        NumberingPlans
    }
}

/// Normalizes caller-ID text for one default country.
#[derive(Debug, Clone)]
pub struct Normalizer {
    country: &'static str,
}

impl Default for Normalizer {
    fn default() -> Self {
        Normalizer { country: "RU" }
    }
}

impl Normalizer {
    /// Only `RU` (and `KZ`, same +7 plan) in this provisional version.
    pub fn new(_plans: &NumberingPlans, country: &str) -> Result<Normalizer, NumberError> {
        if country.eq_ignore_ascii_case("RU") {
            Ok(Normalizer { country: "RU" })
        } else if country.eq_ignore_ascii_case("KZ") {
            Ok(Normalizer { country: "KZ" })
        } else {
            Err(NumberError::UnknownCountry {
                country: country.to_owned(),
                known: "RU, KZ".into(),
            })
        }
    }

    /// The default country's ISO code.
    pub fn default_country(&self) -> &str {
        self.country
    }

    /// Canonical form of `text`.
    pub fn normalize(&self, text: &str) -> CallerNumber {
        let trimmed = text.trim();
        let word = trimmed.to_ascii_lowercase();
        if word.is_empty()
            || [
                "anonymous",
                "unknown",
                "private",
                "restricted",
                "unavailable",
            ]
            .contains(&word.as_str())
        {
            return CallerNumber::Anonymous;
        }
        for (prefix, make) in [
            (
                "local:",
                CallerNumber::Local as fn(Box<str>) -> CallerNumber,
            ),
            ("invalid:", CallerNumber::Invalid),
        ] {
            if let Some(rest) = word.strip_prefix(prefix) {
                return make(rest.into());
            }
        }
        let number_part = number_part(trimmed);
        let plus = number_part.trim_start().starts_with('+');
        let digits: String = number_part.chars().filter(char::is_ascii_digit).collect();
        let user = number_part.trim().to_ascii_lowercase();
        if [
            "anonymous",
            "unknown",
            "private",
            "restricted",
            "unavailable",
        ]
        .contains(&user.as_str())
        {
            return CallerNumber::Anonymous;
        }
        let e164 = match (plus, digits.len(), digits.as_bytes().first()) {
            (true, _, _) => Some(digits.clone()),
            (false, 11, Some(b'7' | b'8')) => Some(format!("7{}", &digits[1..])),
            (false, 10, _) => Some(format!("7{digits}")),
            _ => None,
        };
        match e164.as_deref().and_then(E164::from_digits) {
            Some(e) => CallerNumber::E164(e),
            None if !plus && (1..=6).contains(&digits.len()) => CallerNumber::Local(digits.into()),
            None if digits.is_empty() => CallerNumber::Invalid("".into()),
            None => CallerNumber::Invalid(digits.into()),
        }
    }
}

/// The number inside a From header / SIP or tel URI, without display name, host, parameters
/// or a trailing extension (`доб. 45`, `ext 12`, `x12`, `#12`).
fn number_part(text: &str) -> String {
    let mut s = text;
    if let (Some(open), Some(close)) = (s.rfind('<'), s.rfind('>'))
        && open < close
    {
        s = &s[open + 1..close];
    }
    let lower = s.to_ascii_lowercase();
    for scheme in ["sips:", "sip:", "tel:"] {
        if lower.starts_with(scheme) {
            s = &s[scheme.len()..];
            break;
        }
    }
    let s = s.split(['@', ';']).next().unwrap_or("");
    let decoded = s
        .replace("%2B", "+")
        .replace("%2b", "+")
        .replace("%20", " ");
    let lower = decoded.to_lowercase();
    let mut cut = decoded.len();
    for marker in ["доб", "ext", "x", "#"] {
        if let Some(at) = lower.find(marker)
            && lower[..at].chars().any(|c| c.is_ascii_digit())
            && at < cut
            && decoded.is_char_boundary(at)
        {
            cut = at;
        }
    }
    decoded[..cut].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn russian_formats_agree() {
        let n = Normalizer::default();
        for text in [
            "+7 (495) 123-45-67",
            "84951234567",
            "74951234567",
            "4951234567",
        ] {
            assert_eq!(n.normalize(text).to_string(), "+74951234567", "{text}");
        }
        assert_eq!(n.normalize("ANONYMOUS"), CallerNumber::Anonymous);
        assert_eq!(n.normalize("").to_string(), "anonymous");
        assert_eq!(n.normalize("101").to_string(), "local:101");
        assert_eq!(n.normalize("local:101").to_string(), "local:101");
        assert!(Normalizer::new(NumberingPlans::builtin(), "ZZ").is_err());
        for text in [
            "sip:+74951234567@203.0.113.5:5060;user=phone",
            "\"Office\" <sip:84951234567@pbx.example.org>;tag=1",
            "tel:+7-495-123-45-67;ext=12",
            "8 (495) 123-45-67 доб. 45",
            "+7 495 123 45 67 ext 12",
            "sip:%2B74951234567@h",
        ] {
            assert_eq!(n.normalize(text).to_string(), "+74951234567", "{text}");
        }
        assert_eq!(
            n.normalize("sip:anonymous@anonymous.invalid"),
            CallerNumber::Anonymous
        );
    }
}
