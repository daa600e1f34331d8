//! Caller-ID normalization: caller-ID text as carriers and people send it -> one canonical [`CallerNumber`]; numbering plans are data (`plans.toml`).
//!
//! Canonical forms (their `Display`): `+<digits>` (valid E.164), `anonymous` (withheld or
//! empty), `local:<digits>` (too short for a national number: extensions, service codes) and
//! `invalid:<token>` (anything else; the token is short lowercase ASCII, safe for logs and keys).

mod lex;
mod normalize;
mod plans;
#[cfg(test)]
mod tests;

use std::fmt;

pub use normalize::Normalizer;
pub use plans::NumberingPlans;

/// A valid E.164 number stored as its digits' value. A country code never starts with 0, so the
/// value determines the digit string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct E164(u64);

impl E164 {
    /// From 1 to 15 ASCII digits, the first not `0`. Checks the form only, not any numbering plan.
    pub fn from_digits(digits: &str) -> Option<E164> {
        E164::from_parts(digits.as_bytes(), &[])
    }

    /// From the digits' value (as [`E164::value`] returns it): 1 to 15 digits, not 0.
    pub fn from_value(value: u64) -> Option<E164> {
        (value != 0 && value < 10u64.pow(plans::E164_MAX_DIGITS as u32)).then_some(E164(value))
    }

    /// From a calling code and a national significant number, both ASCII digits.
    pub(crate) fn from_parts(code: &[u8], nsn: &[u8]) -> Option<E164> {
        let len = code.len() + nsn.len();
        let first = code.first().or(nsn.first())?;
        if len > plans::E164_MAX_DIGITS || *first == b'0' {
            return None;
        }
        // Two plain folds rather than one over `chain`, which does not optimize as well.
        let fold = |acc: u64, digits: &[u8]| {
            digits.iter().try_fold(acc, |acc, &b| {
                b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
            })
        };
        fold(0, code).and_then(|acc| fold(acc, nsn)).map(E164)
    }

    /// The digits as a number, e.g. `74997654321` for `+74997654321`.
    pub fn value(self) -> u64 {
        self.0
    }

    /// How many digits the number has (1 to 15).
    pub fn digit_count(self) -> usize {
        self.0.checked_ilog10().map_or(1, |l| l as usize + 1)
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.0)
    }
}

/// Canonical form of a caller ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallerNumber {
    /// A valid international number.
    E164(E164),
    /// Withheld or empty caller ID (`anonymous`, `private`, `unknown`, ... or nothing at all).
    Anonymous,
    /// A number too short to be national (internal extension, short service code); digits only.
    Local(Box<str>),
    /// Fits no numbering plan or is not a number; a short lowercase ASCII token (digits with an
    /// optional leading `+`, or letters and digits), never containing whitespace or `:`.
    Invalid(Box<str>),
}

impl CallerNumber {
    /// `"e164"`, `"anonymous"`, `"local"` or `"invalid"`: the variant as a stable label.
    pub fn kind(&self) -> &'static str {
        match self {
            CallerNumber::E164(_) => "e164",
            CallerNumber::Anonymous => "anonymous",
            CallerNumber::Local(_) => "local",
            CallerNumber::Invalid(_) => "invalid",
        }
    }

    /// The E.164 number, if this is one.
    pub fn as_e164(&self) -> Option<E164> {
        match self {
            CallerNumber::E164(e) => Some(*e),
            _ => None,
        }
    }
}

impl From<E164> for CallerNumber {
    fn from(e: E164) -> CallerNumber {
        CallerNumber::E164(e)
    }
}

impl fmt::Display for CallerNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallerNumber::E164(e) => e.fmt(f),
            CallerNumber::Anonymous => f.write_str("anonymous"),
            CallerNumber::Local(digits) => write!(f, "local:{digits}"),
            CallerNumber::Invalid(token) => write!(f, "invalid:{token}"),
        }
    }
}

/// Errors from loading numbering plans or choosing a default country.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NumberError {
    /// The default country has no plan in the table.
    #[error("unknown country {country:?}; known countries: {known}")]
    UnknownCountry {
        /// The code as given.
        country: String,
        /// Comma-separated ISO codes that do have a plan.
        known: String,
    },
    /// A plan table failed to parse or validate; the message names the entry and field.
    #[error("bad numbering plan: {0}")]
    BadPlan(String),
}
