//! HostTable lookup at 1k, 100k and 1M mixed patterns, and build time at 100k.
//!
//! Run with `cargo bench -p portico-model --bench host_table`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portico_model::{HostPattern, HostTable};

/// `n` patterns: 70% exact names, 10% `*.zone`, 10% `**.zone`, 10% `api.*.zone`.
fn patterns(n: usize) -> Vec<HostPattern> {
    (0..n)
        .map(|i| {
            let text = match i % 10 {
                0 => format!("*.w{i}.example.net"),
                1 => format!("**.d{i}.example.org"),
                2 => format!("api.*.m{i}.example.io"),
                _ => format!("host{i}.z{}.example.com", i % 997),
            };
            HostPattern::parse(&text).expect("generated patterns are valid")
        })
        .collect()
}

/// Names that hit every kind of pattern, and some that miss.
fn names(n: usize) -> Vec<String> {
    let step = (n / 64).max(1);
    (0..n)
        .step_by(step)
        .flat_map(|i| {
            let hit = match i % 10 {
                0 => format!("www.w{i}.example.net"),
                1 => format!("a.b.d{i}.example.org"),
                2 => format!("api.v2.m{i}.example.io"),
                _ => format!("host{i}.z{}.example.com", i % 997),
            };
            [hit, format!("nohost{i}.example.com")]
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("host_table_lookup");
    for n in [1_000usize, 100_000, 1_000_000] {
        let table: HostTable<usize> = patterns(n).into_iter().enumerate().map(|(i, p)| (p, i)).collect();
        let names = names(n);
        for name in &names {
            let found = table.lookup(name).is_some();
            assert_eq!(found, !name.starts_with("nohost"), "{name}");
        }
        let mut i = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &table, |b, table| {
            b.iter(|| {
                i = (i + 1) % names.len();
                black_box(table.lookup(black_box(&names[i])))
            })
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let patterns = patterns(100_000);
    let mut group = c.benchmark_group("host_table_build");
    group.sample_size(20);
    group.bench_function("100000", |b| {
        b.iter(|| {
            let table: HostTable<usize> = patterns.iter().cloned().enumerate().map(|(i, p)| (p, i)).collect();
            black_box(table.len())
        })
    });
    group.finish();
}

criterion_group!(benches, lookup, build);
criterion_main!(benches);
