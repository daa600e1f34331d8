//! Lookup cost against rule count: one decision against 1k, 100k and 10M exact numbers plus
//! masks. `cargo bench --bench rules` runs 1k and 100k; the 10M case needs ~9 GB RAM and two
//! minutes to build, so it runs only with `CALLGUARD_BENCH_MAX=10000000` (and never under
//! `cargo test --all-targets`, which runs each bench once). Results and commands: BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use callguard::number::{CallerNumber, E164, Normalizer};
use callguard::rules::{CallFacts, Entry, ListKind, RulePattern, Snapshot, decide};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// A deterministic spread of 11-digit Russian mobile numbers (+79XXXXXXXXX).
fn exact_number(i: u64) -> u64 {
    // Multiplying by an odd constant permutes the 9-digit space, so numbers do not cluster.
    79_000_000_000 + (i.wrapping_mul(2_654_435_761) % 1_000_000_000)
}

fn snapshot(exact: u64, masks: u64) -> Snapshot {
    let n = Normalizer::default();
    let exact_entries = (0..exact).filter_map(|i| {
        let e = E164::from_digits(&exact_number(i).to_string())?;
        Some(Entry::new(
            ListKind::Block,
            RulePattern::Exact(CallerNumber::E164(e)),
        ))
    });
    // Masks over Moscow numbers: +7495 then 3 digits, the last 4 free; every tenth a prefix.
    let mask_entries = (0..masks).filter_map(move |i| {
        let text = if i % 10 == 0 {
            format!("+7495{:04}*", i % 10_000)
        } else {
            format!("+7495{:03}XXXX", i % 1_000)
        };
        let pattern = RulePattern::parse(&text, &n).ok()?;
        let list = if i % 7 == 0 {
            ListKind::Allow
        } else {
            ListKind::Block
        };
        Some(Entry::new(list, pattern))
    });
    Snapshot::compile(exact_entries.chain(mask_entries), 1)
}

fn lookups(c: &mut Criterion) {
    let max: u64 = std::env::var("CALLGUARD_BENCH_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let now = SystemTime::now();
    let n = Normalizer::default();
    let mut group = c.benchmark_group("decide");
    group.measurement_time(Duration::from_secs(5));
    for (exact, masks) in [(900, 100), (90_000, 10_000), (10_000_000, 100_000)] {
        if exact > max {
            continue;
        }
        let snap = snapshot(exact, masks);
        let label = format!("{exact}+{masks}");
        let hit_exact = n.normalize(&format!("+{}", exact_number(exact / 2)));
        let hit_mask = n.normalize("84950421234");
        let miss = n.normalize("+12125550100");
        for (case, number) in [
            ("exact-hit", &hit_exact),
            ("mask-hit", &hit_mask),
            ("miss", &miss),
        ] {
            group.bench_with_input(BenchmarkId::new(case, &label), number, |b, number| {
                b.iter(|| decide(CallFacts::number(black_box(number)), &snap, now).is_block())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
