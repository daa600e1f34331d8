//! Tests of caller-ID normalization: the examples corpus, every accepted format, plan loading, and properties (idempotence, format variants, safe output).

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const EXAMPLES: &str = include_str!("../../tests/fixtures/numbers/examples.tsv");

fn norm(country: &str) -> Normalizer {
    match Normalizer::new(NumberingPlans::builtin(), country) {
        Ok(n) => n,
        Err(e) => panic!("{country}: {e}"),
    }
}

/// Asserts every `(input, expected Display)` pair for one default country.
fn check(country: &str, cases: &[(&str, &str)]) {
    let n = norm(country);
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|&(input, expected)| {
            let got = n.normalize(input).to_string();
            (got != expected)
                .then(|| format!("  [{country}] {input:?}: got {got}, want {expected}"))
        })
        .collect();
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}

#[test]
fn examples_corpus() {
    let mut failures = Vec::new();
    let mut rows = 0;
    for (i, line) in EXAMPLES.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [input, country, expected] = fields[..] else {
            failures.push(format!(
                "  line {}: expected 3 tab-separated fields: {line:?}",
                i + 1
            ));
            continue;
        };
        rows += 1;
        let got = norm(country).normalize(input).to_string();
        if got != expected {
            failures.push(format!(
                "  line {}: {input:?} [{country}]: got {got}, want {expected}",
                i + 1
            ));
        }
    }
    assert!(rows > 0, "examples.tsv has no rows");
    assert!(
        failures.is_empty(),
        "examples.tsv mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn russian_formats() {
    check(
        "RU",
        &[
            ("+7 (499) 765-43-21", "+74997654321"),
            ("+7(499)7654321", "+74997654321"),
            ("8-499-765-43-21", "+74997654321"),
            ("8.499.765.43.21", "+74997654321"),
            ("8/499/765 43 21", "+74997654321"),
            ("7 499 765 43 21", "+74997654321"),
            ("499 765 43 21", "+74997654321"),
            ("8123332211", "+78123332211"),
            ("88002000000", "+78002000000"),
            ("8 800 200 00 00", "+78002000000"),
            ("810 49 30 901820", "+4930901820"),
            ("00 49 30 901820", "+4930901820"),
            ("8 10 44 20 8123 4567", "+442081234567"),
            ("+7 8 499 765 43 21", "+74997654321"),
            ("+7 727 250 00 00", "+77272500000"),
            ("8 727 250 00 00", "+77272500000"),
        ],
    );
}

#[test]
fn unicode_spaces_and_dashes() {
    check(
        "RU",
        &[
            ("+7\u{A0}499\u{A0}765\u{A0}43\u{A0}21", "+74997654321"),
            (
                "+7\u{202F}499\u{2009}765\u{2007}43\u{2002}21",
                "+74997654321",
            ),
            (
                "8\u{2010}499\u{2011}765\u{2012}43\u{2013}21",
                "+74997654321",
            ),
            ("8\u{2014}499\u{2015}765\u{2212}43-21", "+74997654321"),
            (
                "\u{FEFF}\u{200E}+7 499 765 43 21\u{200F}\r\n",
                "+74997654321",
            ),
            (
                "\u{FF0B}\u{FF17}\u{FF14}\u{FF19}\u{FF19}7654321",
                "+74997654321",
            ),
            ("\t 8 (499) 765-43-21 \n", "+74997654321"),
        ],
    );
}

#[test]
fn sip_and_tel_uris() {
    check(
        "RU",
        &[
            (
                "sip:+74997654321@203.0.113.5:5060;user=phone",
                "+74997654321",
            ),
            ("SIP:84997654321@pbx.example.org", "+74997654321"),
            (
                "sips:74997654321@pbx.example.org;transport=tls",
                "+74997654321",
            ),
            ("sip:84997654321:secret@pbx.example.org", "+74997654321"),
            ("sip:+74997654321;isub=1@pbx", "+74997654321"),
            ("<sip:84997654321@pbx>", "+74997654321"),
            ("tel:+7-499-765-43-21", "+74997654321"),
            ("tel:+7-499-765-43-21;ext=12", "+74997654321"),
            ("tel:84997654321?x=1", "+74997654321"),
            ("sip:101@pbx.example.org", "local:101"),
            ("sip:alice@example.org", "invalid:alice"),
            ("sip:Alice.Smith@example.org", "invalid:alicesmith"),
            ("sip:@pbx", "anonymous"),
        ],
    );
}

#[test]
fn from_headers_with_display_names() {
    check(
        "RU",
        &[
            (
                r#""Office" <sip:84997654321@pbx.example.org>"#,
                "+74997654321",
            ),
            (
                r#""Office" <sip:84997654321@pbx.example.org>;tag=abc"#,
                "+74997654321",
            ),
            (
                r#""8 800 200 00 00" <sip:84997654321@pbx>;tag=1"#,
                "+74997654321",
            ),
            (
                r#""Ivan \"101\" <x>" <sip:84997654321@pbx>"#,
                "+74997654321",
            ),
            ("Office 2 <sip:+74997654321@pbx>;tag=9", "+74997654321"),
            (
                r#"From: "Office" <sip:84997654321@pbx>;tag=abc"#,
                "+74997654321",
            ),
            ("from: sip:84997654321@pbx", "+74997654321"),
            (
                r#""Anonymous" <sip:anonymous@anonymous.invalid>;tag=x"#,
                "anonymous",
            ),
            (r#""Anonymous" <sip:84997654321@pbx>"#, "+74997654321"),
            (r#""84997654321""#, "+74997654321"),
            (r#""Office" <sip:alice@pbx>"#, "invalid:alice"),
        ],
    );
}

#[test]
fn percent_encoded_user_parts() {
    check(
        "RU",
        &[
            ("sip:%2B74997654321@pbx", "+74997654321"),
            ("sip:%2b7%20499%20765%2043%2021@pbx", "+74997654321"),
            ("sip:8%28499%29765-43-21@pbx", "+74997654321"),
            ("sip:%61nonymous@anonymous.invalid", "anonymous"),
            ("sip:%zz@pbx", "invalid:zz"),
            (
                "sip:%D0%B8%D0%B2%D0%B0%D0%BD@pbx",
                "invalid:d0b8d0b2d0b0d0bd",
            ),
        ],
    );
}

#[test]
fn extensions_are_dropped() {
    check(
        "RU",
        &[
            ("8 (499) 765-43-21 доб. 123", "+74997654321"),
            ("8 (499) 765-43-21 доб 123", "+74997654321"),
            ("8 (499) 765-43-21 ДОБ.123", "+74997654321"),
            ("8 (499) 765-43-21, доб. 123", "+74997654321"),
            ("+7 499 765 43 21 ext 12", "+74997654321"),
            ("+7 499 765 43 21 ext. 12", "+74997654321"),
            ("+7 499 765 43 21 EXT12", "+74997654321"),
            ("+7 499 765 43 21 x12", "+74997654321"),
            ("+74997654321x12", "+74997654321"),
            ("+7 499 765 43 21 #12", "+74997654321"),
            ("+74997654321;ext=12", "+74997654321"),
            ("+7 499 765 43 21 вн. 5", "+74997654321"),
            ("+7 (499) 765-43-21 (office)", "+74997654321"),
            ("8 499 765 43 21 Иван", "+74997654321"),
        ],
    );
}

#[test]
fn anonymous_variants() {
    let n = Normalizer::default();
    for input in [
        "",
        " ",
        "\t\r\n",
        "\u{A0}",
        "anonymous",
        "Anonymous",
        "ANONYMOUS",
        "unknown",
        "Private",
        "RESTRICTED",
        "unavailable",
        "Withheld",
        " anonymous ",
        "\"anonymous\"",
        "sip:anonymous@anonymous.invalid",
        "sips:Anonymous@example.org;user=phone",
        "<sip:anonymous@anonymous.invalid>",
        "\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag=1",
        "tel:unknown",
        "-",
        "+",
        "( )",
        "!!!",
    ] {
        assert_eq!(n.normalize(input), CallerNumber::Anonymous, "{input:?}");
    }
}

#[test]
fn other_default_countries() {
    check(
        "GB",
        &[
            ("020 8123 4567", "+442081234567"),
            ("+44 (0)20 8123 4567", "+442081234567"),
            ("+44 020 8123 4567", "+442081234567"),
            ("0044 20 8123 4567", "+442081234567"),
            ("44 20 8123 4567", "+442081234567"),
            ("(0)20 8123 4567", "+442081234567"),
            ("07700 900123", "+447700900123"),
            ("999", "local:999"),
        ],
    );
    check(
        "DE",
        &[
            ("089 1234567", "+49891234567"),
            ("+49 (0)89 1234567", "+49891234567"),
            ("0049 30 901820", "+4930901820"),
            ("030/901820", "+4930901820"),
            ("0151 23456789", "+4915123456789"),
            ("110", "local:110"),
        ],
    );
    check(
        "US",
        &[
            ("(415) 555-0100", "+14155550100"),
            ("1-415-555-0100", "+14155550100"),
            ("+1 415 555 0100", "+14155550100"),
            ("415.555.0100", "+14155550100"),
            ("011 44 20 8123 4567", "+442081234567"),
            ("911", "local:911"),
            ("(115) 555-0100", "invalid:1155550100"),
        ],
    );
    check(
        "CA",
        &[
            ("(416) 555-0100", "+14165550100"),
            ("+7 499 765 43 21", "+74997654321"),
        ],
    );
    check(
        "KZ",
        &[
            ("8 727 250 00 00", "+77272500000"),
            ("+7 727 250 00 00", "+77272500000"),
            ("8 499 765 43 21", "+74997654321"),
        ],
    );
    check(
        "BY",
        &[
            ("8 017 200 00 00", "+375172000000"),
            ("8 029 123 45 67", "+375291234567"),
            ("+375 29 123 45 67", "+375291234567"),
            ("810 7 499 765 43 21", "+74997654321"),
        ],
    );
    check(
        "UA",
        &[
            ("044 123 4567", "+380441234567"),
            ("+380 44 123 4567", "+380441234567"),
            ("380441234567", "+380441234567"),
        ],
    );
    check(
        "FR",
        &[
            ("01 23 45 67 89", "+33123456789"),
            ("+33 (0)1 23 45 67 89", "+33123456789"),
            ("06.12.34.56.78", "+33612345678"),
        ],
    );
}

#[test]
fn countries_without_a_full_plan() {
    check(
        "RU",
        &[
            ("+39 06 1234 5678", "+390612345678"),
            ("+81 3-1234-5678", "+81312345678"),
            ("00 86 10 1234 5678", "+861012345678"),
            ("+1 876 555 0100", "+18765550100"),
            ("+999 123456789", "invalid:+999123456789"),
            ("+30 123", "invalid:+30123"),
        ],
    );
}

#[test]
fn local_and_short_numbers() {
    check(
        "RU",
        &[
            ("101", "local:101"),
            ("112", "local:112"),
            ("0911", "local:0911"),
            ("1", "local:1"),
            ("8 (800)", "local:8800"),
            ("123456789", "local:123456789"),
            ("sip:2001@pbx", "local:2001"),
        ],
    );
}

#[test]
fn invalid_inputs() {
    check(
        "RU",
        &[
            ("12345678901", "invalid:12345678901"),
            ("+7 499 765 43 2", "invalid:+7499765432"),
            ("+7 499 765 43 210", "invalid:+749976543210"),
            ("+0 123 456 7890", "invalid:+01234567890"),
            ("+1234567890123456", "invalid:+1234567890123456"),
            ("alice", "invalid:alice"),
            ("alice2", "invalid:alice2"),
            ("100abc", "invalid:100abc"),
            ("84997654321office", "invalid:84997654321office"),
            ("sip:203.0.113.5:5060", "invalid:20301135"),
            ("*67", "invalid:67"),
            ("Иван", "invalid:d098d0b2d0b0d0bd"),
            ("sip:user:name@host", "invalid:user"),
        ],
    );
}

#[test]
fn huge_inputs_are_bounded() {
    let n = Normalizer::default();
    let inputs = [
        "9".repeat(100_000),
        "a".repeat(100_000),
        "д".repeat(50_000),
        "%2B".repeat(33_000),
        format!("\"{}\" <sip:84997654321@pbx>", "x\\\"".repeat(30_000)),
        format!("{}84997654321", " - ".repeat(33_000)),
        "(0)".repeat(33_000),
        "<".repeat(100_000),
    ];
    let start = Instant::now();
    for input in &inputs {
        let out = n.normalize(input);
        assert!(out.to_string().len() <= 48, "{:?}...: {out}", &input[..10]);
        assert_eq!(n.normalize(&out.to_string()), out);
    }
    assert_eq!(n.normalize(&inputs[4]).to_string(), "+74997654321");
    assert_eq!(n.normalize(&inputs[5]).to_string(), "+74997654321");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn canonical_forms_are_fixed_points() {
    for country in NumberingPlans::builtin().countries() {
        let n = norm(country);
        for text in [
            "+74997654321",
            "+4930901820",
            "anonymous",
            "local:101",
            "local:0911",
            "invalid:alice",
            "invalid:+999123456789",
            "invalid:12345678901",
            "invalid:d098d0b2d0b0d0bd",
        ] {
            assert_eq!(n.normalize(text).to_string(), text, "[{country}] {text}");
        }
        assert_eq!(n.normalize("LOCAL:101").to_string(), "local:101");
        assert_eq!(n.normalize("Invalid:Alice").to_string(), "invalid:alice");
    }
}

#[test]
fn e164_type() {
    let e = E164::from_digits("74997654321").expect("valid digits");
    assert_eq!(e.value(), 74_997_654_321);
    assert_eq!(e.digit_count(), 11);
    assert_eq!(e.to_string(), "+74997654321");
    assert_eq!(E164::from_digits("1").map(E164::digit_count), Some(1));
    assert_eq!(
        E164::from_digits("999999999999999").map(E164::digit_count),
        Some(15)
    );
    for bad in ["", "0123", "1234567890123456", "+7499", "7 499", "７"] {
        assert_eq!(E164::from_digits(bad), None, "{bad:?}");
    }
    let n = CallerNumber::from(e);
    assert_eq!((n.kind(), n.as_e164()), ("e164", Some(e)));
    assert_eq!(CallerNumber::Anonymous.kind(), "anonymous");
    assert_eq!(CallerNumber::Local("1".into()).kind(), "local");
    assert_eq!(CallerNumber::Invalid("x".into()).as_e164(), None);
}

#[test]
fn normalizer_countries() {
    let plans = NumberingPlans::builtin();
    let countries: Vec<&str> = plans.countries().collect();
    for c in ["RU", "KZ", "BY", "UA", "GB", "DE", "FR", "US", "CA"] {
        assert!(countries.contains(&c), "{c} missing from {countries:?}");
    }
    assert_eq!(norm("ru").default_country(), "RU");
    assert_eq!(Normalizer::default().default_country(), "RU");
    let err = Normalizer::new(plans, "ZZ").expect_err("ZZ has no plan");
    let text = err.to_string();
    assert!(matches!(err, NumberError::UnknownCountry { .. }));
    assert!(
        text.contains("ZZ") && text.contains("RU") && text.contains("US"),
        "{text}"
    );
}

const MINIMAL: &str = r#"
[[plan]]
country = "XA"
calling_code = 999
trunk_prefix = "0"
international_prefixes = ["00"]
nsn_lengths = [6]
leading_digits = ["[1-9]"]
"#;

#[test]
fn from_toml_accepts_a_small_table() {
    let plans = NumberingPlans::from_toml(MINIMAL).expect("valid table");
    let n = Normalizer::new(&plans, "xa").expect("XA known");
    assert_eq!(n.normalize("0123456").to_string(), "+999123456");
    assert_eq!(
        n.normalize("+44 20 8123 4567").to_string(),
        "invalid:+442081234567"
    );
}

#[test]
fn from_toml_rejects_bad_entries() {
    let cases = [
        (
            "nsn_lengths = [6]",
            "nsn_lengths = [13]",
            "nsn_lengths entry 13",
        ),
        (
            "nsn_lengths = [6]",
            "nsn_lengths = []",
            "nsn_lengths is empty",
        ),
        ("country = \"XA\"", "country = \"XAX\"", "two-letter"),
        ("calling_code = 999", "calling_code = 0", "calling_code 0"),
        (
            "calling_code = 999",
            "calling_code = 1000",
            "calling_code 1000",
        ),
        (
            "trunk_prefix = \"0\"",
            "trunk_prefix = \"O\"",
            "trunk_prefix",
        ),
        ("[\"00\"]", "[\"+00\"]", "international prefix"),
        ("[\"[1-9]\"]", "[\"[9-1]\"]", "reversed range"),
        ("[\"[1-9]\"]", "[\"1a\"]", "unexpected 'a'"),
        ("[\"[1-9]\"]", "[\"[12\"]", "unclosed"),
        (
            "nsn_lengths = [6]",
            "nsn_lengths = [6]\ncolour = 1",
            "colour",
        ),
    ];
    for (from, to, expected) in cases {
        let text = MINIMAL.replace(from, to);
        assert_ne!(text, MINIMAL, "test case does not apply: {from}");
        match NumberingPlans::from_toml(&text) {
            Ok(_) => panic!("accepted bad table ({to})"),
            Err(e) => {
                let msg = e.to_string();
                assert!(matches!(e, NumberError::BadPlan(_)), "{msg}");
                assert!(
                    msg.contains(expected),
                    "{to}: message {msg:?} lacks {expected:?}"
                );
            }
        }
    }
    for (text, expected) in [
        (format!("{MINIMAL}{MINIMAL}"), "two plans"),
        ("[calling_codes]\n\"09\" = [5, 6]".into(), "\"09\""),
        ("[calling_codes]\n\"99\" = [5]".into(), "[min, max]"),
        ("[calling_codes]\n\"99\" = [7, 5]".into(), "min <= max"),
        ("[calling_codes]\n\"99\" = [5, 14]".into(), "<= 13"),
        (
            format!("{MINIMAL}[calling_codes]\n\"99\" = [5, 6]"),
            "prefix of",
        ),
        ("this is not toml".into(), "bad numbering plan"),
    ] {
        match NumberingPlans::from_toml(&text) {
            Ok(_) => panic!("accepted bad table: {text}"),
            Err(e) => assert!(e.to_string().contains(expected), "{e} lacks {expected:?}"),
        }
    }
}

#[test]
fn merged_with_overrides_and_adds() {
    let extra = NumberingPlans::from_toml(&format!(
        "{MINIMAL}\n[[plan]]\ncountry = \"RU\"\ncalling_code = 7\ntrunk_prefix = \"8\"\n\
         international_prefixes = [\"810\"]\nnsn_lengths = [10]\n\n[calling_codes]\n\"30\" = [3, 3]\n"
    ))
    .expect("valid extra");
    let merged = NumberingPlans::builtin().merged_with(extra);
    let countries: Vec<&str> = merged.countries().collect();
    assert!(
        countries.contains(&"XA") && countries.contains(&"US"),
        "{countries:?}"
    );
    assert_eq!(countries.iter().filter(|c| **c == "RU").count(), 1);
    let ru = Normalizer::new(&merged, "RU").expect("RU");
    // The replacement RU plan has no "00" prefix and no leading-digit rules.
    assert_eq!(ru.normalize("1234567890").to_string(), "+71234567890");
    assert_eq!(ru.normalize("+30 123").to_string(), "+30123");
    assert_eq!(ru.normalize("+999 123456").to_string(), "+999123456");
    // The builtin table itself is untouched.
    assert_eq!(Normalizer::default().normalize("+30 123").kind(), "invalid");
}

#[test]
fn builtin_table_is_consistent() {
    let n = Normalizer::default();
    // Every plan's own numbers round-trip through the international form.
    for country in NumberingPlans::builtin().countries() {
        let _ = norm(country);
    }
    assert!(NumberingPlans::builtin().countries().count() >= 9);
    assert_eq!(n.normalize("+4930901820").to_string(), "+4930901820");
}

// ---- properties ----

/// One generated valid number: its country, and its E.164 digits split into code and NSN.
#[derive(Debug, Clone)]
struct Generated {
    country: &'static str,
    code: &'static str,
    nsn: String,
}

/// Per country: calling code and a generator of NSNs that its plan accepts.
fn valid_number() -> impl Strategy<Value = Generated> {
    fn digits(n: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(0u8..10, n)
            .prop_map(|v| v.into_iter().map(|d| char::from(b'0' + d)).collect())
    }
    fn with(
        country: &'static str,
        code: &'static str,
        heads: &'static [&'static str],
        lengths: std::ops::RangeInclusive<usize>,
    ) -> impl Strategy<Value = Generated> {
        (proptest::sample::select(heads), lengths)
            .prop_flat_map(|(head, len)| (Just(head), digits(len - head.len())))
            .prop_map(move |(head, tail)| Generated {
                country,
                code,
                nsn: format!("{head}{tail}"),
            })
    }
    const RU: &[&str] = &["3", "4", "7", "80", "811", "819", "82", "89", "9"];
    const KZ: &[&str] = &["6", "70", "77", "3", "495", "812"];
    const BY: &[&str] = &["15", "16", "17", "21", "25", "29", "33", "44"];
    const UA: &[&str] = &["3", "4", "5", "6", "7", "8", "9"];
    const GB: &[&str] = &["1", "2", "3", "5", "7", "8", "9"];
    const DE: &[&str] = &["1", "2", "3", "4", "5", "6", "7", "8", "9"];
    const FR: &[&str] = &["1", "2", "3", "4", "5", "6", "7", "8", "9"];
    const NANP: &[&str] = &["2002", "4155", "9999", "8005", "6462", "3123"];
    prop_oneof![
        with("RU", "7", RU, 10..=10),
        with("KZ", "7", KZ, 10..=10),
        with("BY", "375", BY, 9..=9),
        with("UA", "380", UA, 9..=9),
        with("GB", "44", GB, 9..=10),
        with("DE", "49", DE, 6..=13),
        with("FR", "33", FR, 9..=9),
        with("US", "1", NANP, 10..=10),
        with("CA", "1", NANP, 10..=10),
    ]
}

/// Random visual separators between digit groups.
fn separated(digits: &str, cuts: &[usize], seps: &[&str]) -> String {
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && cuts.contains(&i) {
            out.push_str(seps[i % seps.len()]);
        }
        out.push(c);
    }
    out
}

const SEPARATORS: &[&str] = &[
    " ", "-", ".", "/", "\u{A0}", "\u{202F}", "\u{2009}", "\u{2013}", "\u{2212}", " - ", "",
];
const EXTENSIONS: &[&str] = &[
    "",
    " доб. 12",
    " доб 7",
    " ext 12",
    " ext. 3",
    "x12",
    " #12",
    ";ext=12",
    ", доб. 45",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (1) Normalizing a result's Display form gives the result back, for every default country.
    #[test]
    fn idempotent_on_arbitrary_text(s in any::<String>()) {
        for country in NumberingPlans::builtin().countries() {
            let n = norm(country);
            let once = n.normalize(&s);
            for other in NumberingPlans::builtin().countries() {
                prop_assert_eq!(norm(other).normalize(&once.to_string()), once.clone(), "[{}->{}] {:?}", country, other, s);
            }
        }
    }

    /// (1) Same, on text built from the pieces caller IDs are made of, which reaches far more
    /// of the parser than uniformly random strings do.
    #[test]
    fn idempotent_on_caller_id_like_text(
        parts in proptest::collection::vec(proptest::sample::select(&[
            "+", "7", "8", "0", "00", "810", "011", "1", "44", "49", "375", "4997654321", "123",
            "9", " ", "-", "(", ")", "(0)", ".", "\u{A0}", "\u{2013}", "sip:", "tel:", "@", "host",
            ";", ":", "<", ">", "\"", "\\", "%2B", "%", "%D0%B4", "anonymous", "local:", "invalid:",
            "доб", "ext", "x", "#", "*", "alice", "A", "Я", "\u{FEFF}", "\u{0}", "\u{FF11}",
            "from:", "user=phone", "=", ",", "%25", "%3A", "%40", "%3C", "%C2%A0", "%D0", "0)",
            "+7", "local:1", "invalid:+1", "sips:", "ext=", "\u{202F}", "(office)", "x1", "8 800",
        ][..]), 0..12)
    ) {
        let s = parts.concat();
        for country in NumberingPlans::builtin().countries() {
            let once = norm(country).normalize(&s);
            for other in NumberingPlans::builtin().countries() {
                prop_assert_eq!(norm(other).normalize(&once.to_string()), once.clone(), "[{}->{}] {:?}", country, other, s);
            }
        }
    }

    /// (3) The Display form is safe for logs and keys: no whitespace, no control characters, and
    /// exactly one of the four shapes.
    #[test]
    fn display_is_clean(s in any::<String>(), country in proptest::sample::select(&["RU", "KZ", "BY", "UA", "GB", "DE", "FR", "US", "CA"][..])) {
        let out = norm(country).normalize(&s).to_string();
        prop_assert!(!out.chars().any(|c| c.is_whitespace() || c.is_control()), "{:?} -> {:?}", s, out);
        prop_assert!(out.is_ascii() && out.len() <= 48, "{:?} -> {:?}", s, out);
        let shape_ok = match out.split_once(':') {
            None => out == "anonymous" || (out.starts_with('+') && out[1..].bytes().all(|b| b.is_ascii_digit())),
            Some(("local", d)) => !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()),
            Some(("invalid", t)) => {
                let t = t.strip_prefix('+').unwrap_or(t);
                !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
            }
            _ => false,
        };
        prop_assert!(shape_ok, "{:?} -> {:?}", s, out);
    }

    /// (2) Every way of writing one valid number gives the same E.164.
    #[test]
    fn format_variants_agree(
        g in valid_number(),
        cuts in proptest::collection::vec(1usize..13, 0..5),
        sep_pick in proptest::collection::vec(proptest::sample::select(SEPARATORS), 1..4),
        ext in proptest::sample::select(EXTENSIONS),
        parens in any::<bool>(),
        name in "[A-Za-z0-9 \"\\\\<>@:;]{0,12}",
    ) {
        let n = norm(g.country);
        let plans = NumberingPlans::builtin().tables();
        let plan = &plans.plans[plans.plan_index(g.country).unwrap_or_default()];
        let expected = format!("+{}{}", g.code, g.nsn);
        let nsn = if parens && g.nsn.len() > 3 {
            format!("({}) {}", &g.nsn[..3], separated(&g.nsn[3..], &cuts, &sep_pick))
        } else {
            separated(&g.nsn, &cuts, &sep_pick)
        };
        let trunk = String::from_utf8_lossy(plan.trunk_prefixes.first().map_or(&[][..], |t| &t[..])).into_owned();
        let mut variants = vec![
            format!("+{} {nsn}", g.code),
            format!("+{}{}", g.code, g.nsn),
            format!("+{} (0){nsn}", g.code),
            format!("{} {nsn}", g.code),
            format!("{trunk}{nsn}"),
            format!("{trunk} {nsn}"),
            format!("sip:+{}{}@203.0.113.5:5060;user=phone", g.code, g.nsn),
            format!("sip:%2B{}{}@pbx.example.org", g.code, g.nsn),
            format!("sips:{trunk}{}@pbx.example.org;transport=tls", g.nsn),
            format!("tel:+{}-{};ext=12", g.code, g.nsn),
            format!("\"{}\" <sip:{trunk}{}@pbx.example.org>;tag=abc", name.replace(['\\', '"'], ""), g.nsn),
            format!("\"Call 8 800 \\\"{}\\\"\" <sip:+{}{}@pbx>", g.code, g.code, g.nsn),
        ];
        for prefix in &plan.international_prefixes {
            variants.push(format!("{} {} {nsn}", String::from_utf8_lossy(prefix), g.code));
        }
        // A bare national number is ambiguous when it also reads as another interpretation of
        // a variable-length plan (DE "4921..." is also +49 21...); the order decides then.
        let prefixes = plan.trunk_prefixes.iter().chain(&plan.international_prefixes);
        let ambiguous = g.nsn.starts_with(g.code)
            || prefixes.clone().any(|p| g.nsn.as_bytes().starts_with(p));
        if !ambiguous {
            variants.push(nsn.clone());
        }
        for variant in variants {
            let with_ext = format!("{variant}{ext}");
            for text in [&variant, &with_ext] {
                prop_assert_eq!(n.normalize(text).to_string(), expected.clone(), "[{}] {:?}", g.country, text);
            }
            // The international form reads the same whatever the default country.
            prop_assert_eq!(norm("US").normalize(&format!("+{} {nsn}", g.code)).to_string(), expected.clone());
        }
    }
}

#[test]
fn delivered_forms_are_the_spellings_that_normalize_back() {
    let ru = norm("RU");
    let number = E164::from_digits("79161234567").expect("number");
    assert_eq!(
        ru.delivered_forms(number),
        [
            "+79161234567",
            "79161234567",
            "89161234567",
            "9161234567",
            "81079161234567",
            "0079161234567",
            "sip:+79161234567@carrier.example",
        ]
    );
    // A foreign number: no trunk or national form from a Russian PBX's point of view.
    let gb = E164::from_digits("442079460123").expect("number");
    let forms = ru.delivered_forms(gb);
    assert!(forms.contains(&"+442079460123".to_owned()), "{forms:?}");
    assert!(forms.contains(&"810442079460123".to_owned()), "{forms:?}");
    assert!(
        !forms.iter().any(|f| f.starts_with('8') && f.len() == 11),
        "{forms:?}"
    );
    for f in &forms {
        assert_eq!(ru.normalize(f), CallerNumber::E164(gb), "{f}");
    }
}
