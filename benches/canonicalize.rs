//! URL → canonical variant → cache key: the work every request does before the cache lookup.

use criterion::{criterion_group, criterion_main, Criterion};
use imgedge::variant::{ParseOptions, Variant};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let opts = ParseOptions::default();
    let path = "/image/3972/b1/3972b16287e5a0c2f1d9e8b7a6c5d4e3.jpg";
    let query =
        "utm_source=newsletter&q=80&size=400x300&fit=cover&utm_campaign=spring&dpr=2&cb=1700000000";
    c.bench_function("parse+key (noisy query)", |b| {
        b.iter(|| {
            let v = Variant::parse(black_box(path), Some(black_box(query)), &opts).unwrap();
            black_box(v.cache_key())
        })
    });
    c.bench_function("parse+key (original)", |b| {
        b.iter(|| {
            let v = Variant::parse(black_box(path), None, &opts).unwrap();
            black_box(v.cache_key())
        })
    });
    let v = Variant::parse(path, Some(query), &opts).unwrap();
    c.bench_function("canonical_uri", |b| b.iter(|| black_box(v.canonical_uri())));
}

criterion_group!(benches, bench);
criterion_main!(benches);
