//! The miss path's CPU work: decode → resize → encode, one image at a time on one thread.
//! Inputs are the samples in conf/samples and one AVIF from tests/corpus.

use criterion::{criterion_group, criterion_main, Criterion};
use imgedge::origin::transform::{transform, TransformLimits, TransformSettings};
use imgedge::variant::{ParseOptions, Variant};
use std::hint::black_box;

fn sample(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn bench(c: &mut Criterion) {
    let settings = TransformSettings {
        limits: TransformLimits::default(),
        background: [255, 255, 255],
        default_quality: 80,
        avif_speed: imgedge::origin::transform::encode::AVIF_SPEED,
        planar_jpeg: true,
    };
    let opts = ParseOptions::default();
    let mut g = c.benchmark_group("transform");
    g.sample_size(20);
    for (name, file, query) in [
        (
            "4MP jpeg -> 400w jpeg",
            "conf/samples/kite.jpg",
            "size=400x",
        ),
        (
            "4MP jpeg -> 400x400 cover webp",
            "conf/samples/kite.jpg",
            "size=400x400&format=webp",
        ),
        (
            "0.26MP rgba png -> 200 png",
            "conf/samples/astronaut.png",
            "size=200x200",
        ),
        (
            "1.7MP avif -> 400w jpeg",
            "tests/corpus/valid/avif-1600x1066.avif",
            "size=400x&format=jpeg",
        ),
    ] {
        let src = sample(file);
        let t = Variant::parse("/image/x", Some(query), &opts)
            .unwrap()
            .transform
            .unwrap();
        g.bench_function(name, |b| {
            b.iter(|| black_box(transform(black_box(&src), &t, &settings).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
