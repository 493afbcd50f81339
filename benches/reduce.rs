//! `reduce` (libvips-exact Lanczos3) against fast_image_resize's Lanczos3 (what resize.rs used
//! for every opaque downsize before), on RGB sizes of the miss path, one thread; and `reduce`
//! alone on one-channel images.
//!
//!   cargo bench --bench reduce

use criterion::{criterion_group, criterion_main, Criterion};
use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use imgedge::origin::transform::reduce::reduce;
use std::hint::black_box;

/// A photo-like RGB test card: gradients plus deterministic noise.
fn card(w: u32, h: u32) -> Vec<u8> {
    let mut seed = 0x2545_f491_u32;
    let mut v = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let base = (x * 255 / w + y * 255 / h + c * 60) % 256;
                v.push(((base + (seed % 32)) % 256) as u8);
            }
        }
    }
    v
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("reduce");
    g.sample_size(30);
    for (w, h, ow, oh) in [
        (895, 560, 400, 250),
        (1000, 750, 400, 300),
        (1790, 1119, 1600, 1000),
        (1790, 1119, 1200, 750),
        (1790, 1119, 400, 250),
        (1790, 1119, 200, 125),
        (1414, 1414, 640, 640),
        (1414, 1414, 150, 150),
    ] {
        let src = card(w, h);
        let crop = (0.0, 0.0, f64::from(w), f64::from(h));
        g.bench_function(format!("reduce {w}x{h} -> {ow}x{oh}"), |b| {
            b.iter(|| black_box(reduce(black_box(&src), w, h, 3, crop, ow, oh).unwrap()))
        });
        let img = Image::from_vec_u8(w, h, src.clone(), PixelType::U8x3).unwrap();
        let mut resizer = Resizer::new();
        let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
        g.bench_function(format!("fir {w}x{h} -> {ow}x{oh}"), |b| {
            b.iter(|| {
                let mut dst = Image::new(ow, oh, PixelType::U8x3);
                resizer.resize(black_box(&img), &mut dst, &opts).unwrap();
                black_box(dst)
            })
        });
    }
    // One channel (grey images; the luma plane of a planar pipeline).
    for (w, h, ow, oh) in [(1790, 1119, 1600, 1000), (1790, 1119, 400, 250)] {
        let src: Vec<u8> = card(w, h).into_iter().step_by(3).collect();
        let crop = (0.0, 0.0, f64::from(w), f64::from(h));
        g.bench_function(format!("reduce grey {w}x{h} -> {ow}x{oh}"), |b| {
            b.iter(|| black_box(reduce(black_box(&src), w, h, 1, crop, ow, oh).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
