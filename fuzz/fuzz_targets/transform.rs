//! Fuzz the miss path's CPU work: arbitrary bytes as an original through sniff → container
//! checks → decode (with limits) → resize → encode, plus the pass-through validation of
//! originals. Any panic, abort, hang (libFuzzer `-timeout`) or allocation over `-rss_limit_mb`
//! is a failure: the resize pool would turn a panic into a 422, but it should never need to.
//!
//! The engine's source files are compiled in directly (`#[path]`), the same files the server
//! builds, so the fuzz build does not drag in Pingora and the AWS SDK.
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../../src/error.rs"]
mod error;
#[path = "../../src/variant.rs"]
mod variant;
// src/origin/transform/mod.rs, mounted at the crate root: it only names `crate::error` and
// `crate::variant`, which are mounted above.
#[path = "../../src/origin/transform/mod.rs"]
mod transform;

use libfuzzer_sys::fuzz_target;
use transform::{container, decode, sniff, transform, TransformLimits, TransformSettings};
use variant::{Fit, OutputFormat, Resize, Transform};

fuzz_target!(|data: &[u8]| {
    // The request is derived from the input itself, so every input is a whole image file
    // (corpus files work as seeds unchanged) and mutations explore requests too.
    let h = data
        .iter()
        .take(32)
        .fold(data.len() as u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let [a, b, c, ..] = h.to_le_bytes();
    let fit = match a & 3 {
        0 => Fit::Cover,
        1 => Fit::Inside,
        2 => Fit::Fill,
        _ => Fit::Contain([a, b, c]),
    };
    let format = match (a >> 2) & 3 {
        0 => None,
        1 => Some(OutputFormat::Jpeg),
        2 => Some(OutputFormat::Png),
        _ => Some(OutputFormat::Webp),
    };
    let (w, hgt) = (u32::from(b) + 1, u32::from(c) + 1);
    let resize = match a >> 6 {
        0 => None,
        1 => Some(Resize {
            width: Some(w),
            height: None,
            fit: Fit::Inside,
        }),
        _ => Some(Resize {
            width: Some(w),
            height: Some(hgt),
            fit,
        }),
    };
    let t = Transform {
        resize,
        format,
        negotiated: None,
        quality: Some(1 + b % 100),
    };
    // Small limits keep each run fast; the checks are the same at any size.
    let s = TransformSettings {
        limits: TransformLimits {
            max_source_pixels: 4_000_000,
            max_frames: 64,
            max_metadata_bytes: 1 << 20,
        },
        background: [255, 255, 255],
        default_quality: 80,
        avif_speed: transform::encode::AVIF_SPEED,
        planar_jpeg: true,
    };
    let _ = transform(data, &t, &s);
    if let Some(f) = sniff::sniff(data) {
        let _ = container::image_end(data, f);
        let _ = decode::validate(data, f, &s.limits);
    }
});
