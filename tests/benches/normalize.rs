//! Caller-ID normalization cost per number, callguard's `Normalizer::normalize` beside the
//! `phonenumber` crate (libphonenumber's metadata: `parse(Some(country), text)` then E.164
//! formatting) as the reference, over the formats carriers and people deliver, one benchmark per
//! format plus the whole mix per iteration. `cargo bench --bench normalize`; with
//! `CALLGUARD_BENCH_SHOW=1` it first prints what each side makes of every input. Results and
//! commands: BENCHMARKS.md.

use std::fmt::Write as _;
use std::hint::black_box;

use callguard::number::{Normalizer, NumberingPlans};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use phonenumber::Mode;
use phonenumber::country::Id;

/// One delivered caller ID: a label for the report, the default country it arrives under, the
/// text, and callguard's canonical form for it (checked before measuring).
struct Case {
    label: &'static str,
    country: Id,
    input: &'static str,
    expected: &'static str,
}

const fn case(
    label: &'static str,
    country: Id,
    input: &'static str,
    expected: &'static str,
) -> Case {
    Case {
        label,
        country,
        input,
        expected,
    }
}

/// Russian plan first (the main deployment), then the other full plans of `plans.toml`, then
/// withheld, local and invalid caller IDs.
const CASES: &[Case] = &[
    case("ru-e164", Id::RU, "+79991234567", "+79991234567"),
    case("ru-trunk-8", Id::RU, "89991234567", "+79991234567"),
    case("ru-code-7", Id::RU, "79991234567", "+79991234567"),
    case("ru-national", Id::RU, "9991234567", "+79991234567"),
    case("ru-formatted", Id::RU, "+7 (999) 123-45-67", "+79991234567"),
    case(
        "ru-sip-uri",
        Id::RU,
        "sip:+79991234567@203.0.113.5;user=phone",
        "+79991234567",
    ),
    case(
        "ru-from-header",
        Id::RU,
        "\"Ivan\" <sip:+74951234567@pbx;user=phone>;tag=a1",
        "+74951234567",
    ),
    case(
        "ru-extension",
        Id::RU,
        "8 495 123 45 67 доб. 123",
        "+74951234567",
    ),
    case(
        "ru-intl-810",
        Id::RU,
        "810 44 20 7946 0958",
        "+442079460958",
    ),
    case("kz-e164", Id::KZ, "+77011234567", "+77011234567"),
    case("by-trunk-80", Id::BY, "8 029 123-45-67", "+375291234567"),
    case("ua-national", Id::UA, "044 123 4567", "+380441234567"),
    case("gb-national", Id::GB, "020 7946 0958", "+442079460958"),
    case("gb-plus-0", Id::GB, "+44 (0)20 7946 0958", "+442079460958"),
    case("de-national", Id::DE, "089 1234567", "+49891234567"),
    case("fr-national", Id::FR, "01 23 45 67 89", "+33123456789"),
    case("us-formatted", Id::US, "(415) 555-0100", "+14155550100"),
    case("us-e164", Id::US, "+14155550100", "+14155550100"),
    case("anonymous", Id::RU, "anonymous", "anonymous"),
    case(
        "anonymous-sip",
        Id::RU,
        "sip:anonymous@anonymous.invalid",
        "anonymous",
    ),
    case("empty", Id::RU, "", "anonymous"),
    case("local-ext", Id::RU, "101", "local:101"),
    case("invalid-word", Id::RU, "hello", "invalid:hello"),
    case("invalid-code", Id::RU, "+999123456", "invalid:+999123456"),
    case(
        "invalid-length",
        Id::RU,
        "+7999123456",
        "invalid:+7999123456",
    ),
];

/// callguard's normalizer for each case's default country, built once.
fn normalizers() -> Vec<Normalizer> {
    CASES
        .iter()
        .map(|c| {
            let country = c.country.as_ref();
            match Normalizer::new(NumberingPlans::builtin(), country) {
                Ok(n) => n,
                Err(e) => panic!("{country}: {e}"),
            }
        })
        .collect()
}

/// The reference: parse for the default country, then format to E.164 into a reused buffer (so
/// neither side pays for allocating its output string). Returns whether it produced a number.
fn reference(country: Id, input: &str, out: &mut String) -> bool {
    out.clear();
    match phonenumber::parse(Some(country), input) {
        Ok(number) => write!(out, "{}", number.format().mode(Mode::E164)).is_ok(),
        Err(_) => false,
    }
}

fn normalize(c: &mut Criterion) {
    let normalizers = normalizers();
    let show = std::env::var_os("CALLGUARD_BENCH_SHOW").is_some();
    let mut out = String::new();
    for (case, n) in CASES.iter().zip(&normalizers) {
        let got = n.normalize(case.input).to_string();
        assert_eq!(got, case.expected, "callguard on {:?}", case.input);
        if show {
            let reference = match reference(case.country, case.input, &mut out) {
                true => out.as_str(),
                false => "(error)",
            };
            println!("{:16} {:48} {got:22} {reference}", case.label, case.input);
        }
    }

    let mut group = c.benchmark_group("normalize");
    for (case, n) in CASES.iter().zip(&normalizers) {
        group.bench_with_input(
            BenchmarkId::new("callguard", case.label),
            case.input,
            |b, input| b.iter(|| n.normalize(black_box(input))),
        );
        group.bench_with_input(
            BenchmarkId::new("phonenumber", case.label),
            case.input,
            |b, input| b.iter(|| reference(case.country, black_box(input), &mut out)),
        );
    }
    // The whole list once per iteration: divide the median by CASES.len() for a per-number cost.
    group.bench_function(BenchmarkId::new("callguard", "mix"), |b| {
        b.iter(|| {
            for (case, n) in CASES.iter().zip(&normalizers) {
                black_box(n.normalize(black_box(case.input)));
            }
        })
    });
    group.bench_function(BenchmarkId::new("phonenumber", "mix"), |b| {
        b.iter(|| {
            for case in CASES {
                black_box(reference(case.country, black_box(case.input), &mut out));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, normalize);
criterion_main!(benches);
