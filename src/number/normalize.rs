//! The normalizer: picks the interpretation of a caller ID's digits that its default country's numbering plan accepts.

use super::lex::{self, Lexed, MAX_DIGITS, MAX_TOKEN};
use super::plans::Tables;
use super::{CallerNumber, E164, NumberError, NumberingPlans};

/// Normalizes caller-ID text for one default country. Cheap to clone and to call: the E.164
/// path works over the input in place with a fixed-size digit buffer and does not allocate.
#[derive(Clone, Debug)]
pub struct Normalizer {
    plans: NumberingPlans,
    /// Index of the default country's plan in `plans`.
    default: usize,
}

impl Default for Normalizer {
    /// Russia with the builtin plans.
    fn default() -> Normalizer {
        let plans = NumberingPlans::builtin();
        match plans.tables().plan_index("RU") {
            Some(default) => Normalizer {
                plans: plans.clone(),
                default,
            },
            // plans.toml is compiled in and tested to contain RU.
            None => panic!("builtin numbering plans lack RU"),
        }
    }
}

impl Normalizer {
    /// A normalizer for `default_country` (ISO code, any case) from `plans`; errors with the list
    /// of known countries if `plans` has no plan for it.
    pub fn new(plans: &NumberingPlans, default_country: &str) -> Result<Normalizer, NumberError> {
        let country = default_country.trim();
        match plans.tables().plan_index(country) {
            Some(default) => Ok(Normalizer {
                plans: plans.clone(),
                default,
            }),
            None => Err(NumberError::UnknownCountry {
                country: country.to_owned(),
                known: plans.country_list(),
            }),
        }
    }

    /// ISO code of the default country, e.g. `"RU"`.
    pub fn default_country(&self) -> &str {
        &self.tables().plans[self.default].country
    }

    fn tables(&self) -> &Tables {
        self.plans.tables()
    }

    /// The canonical form of caller-ID text. Never fails: text that is not a usable number
    /// becomes [`CallerNumber::Local`] or [`CallerNumber::Invalid`]. Idempotent: normalizing the
    /// `Display` form of a result, with any default country, gives the same result.
    pub fn normalize(&self, text: &str) -> CallerNumber {
        let text = lex::trim(text);
        if let Some(digits) = lex::plain_number(text) {
            return self.classify(&digits);
        }
        if let Some(canonical) = canonical_form(text) {
            return canonical;
        }
        match lex::lex(text) {
            Lexed::Withheld => CallerNumber::Anonymous,
            Lexed::Word(user) => match lex::word_token(user) {
                Some(token) => CallerNumber::Invalid(token.into()),
                None => CallerNumber::Anonymous,
            },
            Lexed::Number(digits) => self.classify(&digits),
        }
    }

    /// Tries the interpretations of a number's digits in order of how explicit they are, and
    /// takes the first one the plans accept.
    fn classify(&self, number: &lex::Digits) -> CallerNumber {
        let invalid = || CallerNumber::Invalid(number.token().into());
        if number.overflow {
            return invalid();
        }
        let tables = self.tables();
        let digits = number.as_bytes();
        if number.plus {
            // "+" leaves no doubt, and the default country must not matter (idempotence).
            return tables
                .international(digits)
                .map_or_else(invalid, CallerNumber::E164);
        }
        let plan = &tables.plans[self.default];
        let found = plan
            .international_prefixes
            .iter()
            .filter_map(|p| digits.strip_prefix(&**p))
            .find_map(|rest| tables.international(rest))
            .or_else(|| {
                plan.trunk_prefixes
                    .iter()
                    .filter_map(|t| digits.strip_prefix(&**t))
                    .find(|rest| plan.accepts(rest))
                    .and_then(|rest| E164::from_parts(plan.code.digits(), rest))
            })
            .or_else(|| {
                let k = plan.code.digits().len();
                if !digits.starts_with(plan.code.digits()) {
                    return None;
                }
                tables
                    .with_code(digits, k, false)
                    .or_else(|| tables.with_code(digits, k, true))
            })
            .or_else(|| {
                plan.accepts(digits)
                    .then(|| E164::from_parts(plan.code.digits(), digits))
                    .flatten()
            });
        match found {
            Some(e164) => CallerNumber::E164(e164),
            // Shorter than any national number: an extension or a service code (101, 112, 0911).
            None if digits.len() < plan.min_len => {
                CallerNumber::Local(String::from_utf8_lossy(digits).into())
            }
            None => invalid(),
        }
    }
}

impl Normalizer {
    /// The E.164 digits (no `+`) that every number written as `digits...` begins with once
    /// normalized, for open-ended patterns such as `8 (495) 123*` whose length is unknown.
    /// Without `+`, the readings are tried from the most explicit: an international prefix, a
    /// trunk prefix (the spelling whose remainder can start a national number), the default
    /// country's own calling code, and last a national number. `None` when `digits` is empty,
    /// starts with 0 after `+`, or is too long.
    pub(crate) fn canonical_prefix(&self, plus: bool, digits: &[u8]) -> Option<Vec<u8>> {
        let ok = |d: Vec<u8>| {
            (!d.is_empty() && d[0] != b'0' && d.len() <= crate::number::plans::E164_MAX_DIGITS)
                .then_some(d)
        };
        if plus {
            return ok(digits.to_vec());
        }
        let plan = &self.tables().plans[self.default];
        let code = plan.code.digits();
        if let Some(rest) = plan
            .international_prefixes
            .iter()
            .filter_map(|p| digits.strip_prefix(&**p))
            .find(|rest| !rest.is_empty())
        {
            return ok(rest.to_vec());
        }
        if let Some(rest) = plan
            .trunk_prefixes
            .iter()
            .filter_map(|t| digits.strip_prefix(&**t))
            .find(|rest| !rest.is_empty() && plan.may_start(rest))
        {
            return ok([code, rest].concat());
        }
        if digits.starts_with(code) {
            return ok(digits.to_vec());
        }
        ok([code, digits].concat())
    }
}

impl Normalizer {
    /// The ways a carrier may deliver `number` as caller ID to a PBX in the default country,
    /// each one checked to normalize back to `number` (so the list never promises a form the
    /// normalizer would read differently): `+` and international form, the default country's
    /// international prefixes, and for its own numbers the calling code without `+`, each trunk
    /// prefix, the bare national number and a SIP URI. Shown before a rule is saved.
    pub fn delivered_forms(&self, number: E164) -> Vec<String> {
        let full = number.to_string();
        let digits = &full[1..];
        let plan = &self.tables().plans[self.default];
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut candidates = vec![full.clone(), digits.to_owned()];
        let code = text(plan.code.digits());
        if let Some(nsn) = digits.strip_prefix(code.as_str()) {
            for trunk in &plan.trunk_prefixes {
                candidates.push(format!("{}{nsn}", text(trunk)));
            }
            candidates.push(nsn.to_owned());
        }
        for prefix in &plan.international_prefixes {
            candidates.push(format!("{}{digits}", text(prefix)));
        }
        candidates.push(format!("sip:{full}@carrier.example"));
        let mut forms: Vec<String> = Vec::with_capacity(candidates.len());
        for c in candidates {
            if self.normalize(&c) == CallerNumber::E164(number) && !forms.contains(&c) {
                forms.push(c);
            }
        }
        forms
    }
}

/// Recognizes the `Display` forms of `local:` and `invalid:` results, so that normalizing them
/// again returns them unchanged. (`+...` and `anonymous` go through the ordinary path.)
fn canonical_form(text: &str) -> Option<CallerNumber> {
    if let Some(rest) = lex::strip_prefix_ci(text, "local:") {
        let ok = (1..=MAX_DIGITS).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_digit());
        return ok.then(|| CallerNumber::Local(rest.into()));
    }
    let rest = lex::strip_prefix_ci(text, "invalid:")?;
    let (plus, body) = match rest.strip_prefix('+') {
        Some(body) => (true, body),
        None => (false, rest),
    };
    let ok = (1..=MAX_TOKEN).contains(&body.len())
        && if plus {
            body.bytes().all(|b| b.is_ascii_digit())
        } else {
            body.bytes().all(|b| b.is_ascii_alphanumeric())
        };
    ok.then(|| CallerNumber::Invalid(rest.to_ascii_lowercase().into()))
}
