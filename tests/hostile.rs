//! Safety through the real binary: every corpus file (tests/corpus, per manifest.tsv) stored in
//! a real S3-protocol server and requested as a variant and as an original, while the test
//! watches the server process's memory in /proc.
//!
//! Hostile files must be 422 within a second each, the process must stay up, and its peak RSS
//! (VmHWM) must stay far below what any of the bombs would need (3.6 GB for the PNG, 4.3 GB for
//! the GIF screen, 1 GB for the WebP). The polyglot must never come back byte-for-byte.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Peak resident memory allowed for the whole server over the run. Two resize threads each
/// hold one decoded source (the largest valid one is ~50 MB as RGBA) plus the cache's outputs;
/// any bomb decoded for real would need gigabytes.
const MAX_PEAK_RSS_KIB: u64 = 512 * 1024;

fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
}

struct Row {
    file: String,
    expected: String,
    format: String,
}

fn manifest() -> Vec<Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/manifest.tsv");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Row {
                file: f[0].into(),
                expected: f[1].into(),
                format: f[2].into(),
            }
        })
        .collect()
}

/// An id in the seeds' layout for a corpus path: `xxxxxx` + the file name.
fn id_for(i: usize, file: &str) -> String {
    format!("c{i:05}{}", file.rsplit('/').next().unwrap_or(file))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_file_is_served_or_refused_with_bounded_memory() {
    let s3 = S3Server::start().await;
    let rows = manifest();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/");
    let originals: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| std::fs::read(format!("{root}{}", r.file)).unwrap())
        .collect();
    for (i, r) in rows.iter().enumerate() {
        s3.put(&id_for(i, &r.file), &originals[i]);
    }
    let mut node = Imgedge::start(&s3, "transform:\n  workers: 2\n").await;
    let pid = node.pid();
    let baseline = status_kib(pid, "VmRSS:");

    for (i, r) in rows.iter().enumerate() {
        let id = id_for(i, &r.file);
        for q in ["?size=300x200", "?size=300x&format=webp", ""] {
            let t = Instant::now();
            let resp = node.get(&format!("/image/{id}{q}")).await;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap();
            let took = t.elapsed();
            let what = format!("{}{q}", r.file);
            match (r.expected.as_str(), r.format.as_str()) {
                ("reject", _) => {
                    assert_eq!(status, 422, "{what}: {}", String::from_utf8_lossy(&body));
                    assert!(took < Duration::from_secs(1), "{what} took {took:?}");
                }
                _ => {
                    assert_eq!(status, 200, "{what}: {}", String::from_utf8_lossy(&body));
                    if r.file.contains("polyglot") {
                        assert_ne!(&body[..], &originals[i][..], "{what} passed through");
                        assert!(!body.windows(4).any(|w| w == b"PK\x03\x04"), "{what}");
                    }
                    if r.format == "avif" && q.is_empty() {
                        // Served as stored once it fully decoded (the test's image crate has
                        // no AVIF decoder to check it with).
                        assert_eq!(&body[..], &originals[i][..], "{what}");
                    } else {
                        let _ = dims(&body);
                    }
                }
            }
        }
        assert!(node.alive(), "server died on {}", r.file);
    }
    let peak = status_kib(pid, "VmHWM:");
    let now = status_kib(pid, "VmRSS:");
    println!("rss: baseline {baseline} KiB, peak {peak} KiB, end {now} KiB");
    assert!(
        peak < MAX_PEAK_RSS_KIB,
        "peak RSS {peak} KiB (baseline {baseline} KiB) is over {MAX_PEAK_RSS_KIB} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_hostile_files_keep_memory_near_the_baseline() {
    // Bombs alone: nothing legitimate is decoded, so the peak must stay near the idle process.
    let s3 = S3Server::start().await;
    let rows: Vec<Row> = manifest()
        .into_iter()
        .filter(|r| r.expected == "reject")
        .collect();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/");
    for (i, r) in rows.iter().enumerate() {
        s3.put(
            &id_for(i, &r.file),
            &std::fs::read(format!("{root}{}", r.file)).unwrap(),
        );
    }
    let mut node = Imgedge::start(&s3, "transform:\n  workers: 2\n").await;
    let pid = node.pid();
    // Warm the resize threads and decoders on a small valid image first.
    s3.put("warm00.png", &read("astronaut.png"));
    assert_eq!(node.get("/image/warm00.png?size=64x").await.status(), 200);
    let baseline = status_kib(pid, "VmHWM:");
    for (i, r) in rows.iter().enumerate() {
        for q in ["?size=1000x1000", "?format=webp", ""] {
            let resp = node.get(&format!("/image/{}{q}", id_for(i, &r.file))).await;
            assert_eq!(resp.status(), 422, "{}{q}", r.file);
        }
    }
    assert!(node.alive());
    let peak = status_kib(pid, "VmHWM:");
    println!("hostile only: peak {peak} KiB after warm-up {baseline} KiB");
    // 64 MiB of headroom: the largest hostile file is 350 KB; any decoded bomb is ≥ 1 GB.
    assert!(
        peak < baseline + 64 * 1024,
        "peak RSS grew from {baseline} to {peak} KiB on hostile files"
    );
}
