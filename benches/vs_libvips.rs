//! imgedge's half of the libvips comparison (run it through `benches/vs_libvips.sh`, which
//! prepares the inputs, times libvips on the same cases and prints the table).
//!
//! Reads `$VS_LIBVIPS_DIR/cases.tsv` (name, input file, query), runs the real transform entry
//! point on one thread until it has used `$VS_LIBVIPS_SECONDS` (default 2) of CPU per case,
//! writes each output to `<name>.imgedge.<ext>` and the timings to `imgedge.tsv`, with, for a
//! JPEG input, its Huffman-decode floor: the time of a 1/8-scale decode (entropy decoding is
//! the same at every scale; the IDCT, colour conversion and resize nearly vanish). Without
//! `VS_LIBVIPS_DIR` (e.g. a plain `cargo bench`) it explains itself and exits.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use imgedge::metrics::metrics;
use imgedge::origin::mezzanine::Mezzanines;
use imgedge::origin::transform::{jpeg, transform, TransformLimits, TransformSettings};
use imgedge::variant::{ParseOptions, Variant};

// The server's allocator, so allocation costs are the production ones.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// CPU time used by this process (all threads), as libvips' side measures it.
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    let Ok(dir) = std::env::var("VS_LIBVIPS_DIR") else {
        eprintln!("vs_libvips: run benches/vs_libvips.sh (it sets VS_LIBVIPS_DIR); skipping");
        return;
    };
    let budget = std::env::var("VS_LIBVIPS_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    let dir = Path::new(&dir);
    let settings = TransformSettings {
        limits: TransformLimits::default(),
        background: [255, 255, 255],
        default_quality: 80,
        avif_speed: imgedge::origin::transform::encode::AVIF_SPEED,
        planar_jpeg: true,
    };
    let cases = std::fs::read_to_string(dir.join("cases.tsv")).expect("cases.tsv");
    let mut results = String::new();
    for line in cases.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let (name, input, query) = (f[0], f[1], f[2]);
        let src = std::fs::read(dir.join(input)).expect("input");
        let t = Variant::parse("/image/x", Some(query), &ParseOptions::default())
            .expect("query")
            .transform
            .expect("a transform");
        // Warm up: thread-local decompressor, compressor, resizer and allocator.
        let out = transform(&src, &t, &settings).expect("transform");
        for _ in 0..2 {
            black_box(transform(&src, &t, &settings).expect("transform"));
        }
        let start = cpu_time();
        let mut n = 0u32;
        while (cpu_time() - start).as_secs_f64() < budget || n < 5 {
            black_box(transform(black_box(&src), &t, &settings).expect("transform"));
            n += 1;
        }
        let per = (cpu_time() - start).as_secs_f64() / f64::from(n);
        let floor = if src.starts_with(&[0xFF, 0xD8]) {
            let eighth =
                || jpeg::decode(black_box(&src), u64::MAX >> 1, |_| Ok(1)).expect("decode");
            black_box(eighth());
            let (start, mut n) = (cpu_time(), 0u32);
            while (cpu_time() - start).as_secs_f64() < budget / 4.0 || n < 5 {
                black_box(eighth());
                n += 1;
            }
            format!("{}", (cpu_time() - start).as_secs_f64() / f64::from(n))
        } else {
            "-".to_string()
        };
        std::fs::write(
            dir.join(format!("{name}.imgedge.{}", out.format.as_str())),
            &out.bytes,
        )
        .expect("write output");
        println!(
            "{name:<22} {:>8.2} ms/img  {:>7.1} img/cpu-s",
            per * 1e3,
            1.0 / per
        );
        results.push_str(&format!(
            "{name}\t{per}\t{}\t{}x{}\t{floor}\n",
            out.bytes.len(),
            out.width,
            out.height
        ));
    }
    std::fs::write(dir.join("imgedge.tsv"), results).expect("write results");
    trace(dir, &settings);
}

/// The Zipf trace's misses (`trace.tsv`: id, input, query), once decoding every miss and once
/// through a mezzanine cache of the server's default size, keyed by id.
fn trace(dir: &Path, settings: &TransformSettings) {
    let Ok(lines) = std::fs::read_to_string(dir.join("trace.tsv")) else {
        return;
    };
    let misses: Vec<(String, Vec<u8>, _)> = lines
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let t = Variant::parse("/image/x", Some(f[2]), &ParseOptions::default())
                .expect("query")
                .transform
                .expect("a transform");
            (
                f[0].to_string(),
                std::fs::read(dir.join(f[1])).expect("input"),
                t,
            )
        })
        .collect();
    let mezzanines = Mezzanines::new(256 << 20);
    let decodes = || {
        let m = &metrics().mezzanine_lookups;
        m.with_label_values(&["miss"]).get() + m.with_label_values(&["upgrade"]).get()
    };
    let mut report = String::new();
    for (label, cache) in [("direct", None), ("mezzanine", Some(&mezzanines))] {
        let before = decodes();
        let start = cpu_time();
        for (k, (id, src, t)) in misses.iter().enumerate() {
            let out = match cache {
                Some(m) => m.transform(id, src, t, settings),
                None => transform(src, t, settings),
            }
            .expect("transform");
            std::fs::write(dir.join(format!("trace-{k}.{label}.jpg")), &out.bytes)
                .expect("write output");
        }
        let per = (cpu_time() - start).as_secs_f64() / misses.len() as f64;
        println!(
            "{:<22} {:>8.2} ms/img  {:>7.1} img/cpu-s",
            format!("zipf-trace-{label}"),
            per * 1e3,
            1.0 / per
        );
        report.push_str(&format!("{label}\t{per}\n"));
        if cache.is_some() {
            report.push_str(&format!("decodes\t{}\n", decodes() - before));
        }
    }
    std::fs::write(dir.join("imgedge-trace.tsv"), report).expect("write trace results");
}
