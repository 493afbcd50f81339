//! Concurrent lookups in the memory tier (`MemoryTier::get`, the call every hit makes) on 1, 2
//! and 4 threads, unsharded and in 16 shards: whether the tier scales with cores or its lock
//! serializes them (issue 15).
//!
//!   cargo bench --bench memory_tier
//!
//! Each thread reads its own stream of 4,096 hot keys (all resident: a hit, as a busy node's
//! hot set). Throughput is lookups per second over all threads; on a machine with at least
//! N free cores, flat per-thread time means the tier scales. On this repo's 2-core machines
//! only the 1- and 2-thread rows say something.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imgedge::cache::memory::{CachedObject, MemoryTier};

const KEYS: usize = 4096;

fn key(i: usize) -> [u8; 16] {
    // Spread like the cache's hashed keys.
    let x = (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    x.to_be_bytes()
}

fn tier(shards: usize) -> Arc<MemoryTier> {
    let tier = MemoryTier::with_shards(256 * 1024 * 1024, shards);
    let body = Bytes::from(vec![7u8; 22 * 1024]);
    for i in 0..KEYS {
        // Twice, so each key is hot enough to be admitted to the main area.
        for _ in 0..2 {
            let obj = Arc::new(CachedObject::new(
                key(i),
                (vec![0u8; 64], vec![0u8; 320]),
                body.clone(),
            ));
            tier.fill(obj);
            let _ = tier.get(&key(i));
        }
    }
    let resident = (0..KEYS).filter(|&i| tier.get(&key(i)).is_some()).count();
    assert_eq!(resident, KEYS, "every key is resident");
    Arc::new(tier)
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_tier_get");
    // One shard (a tier under 256 MiB) and 16 (what a tier of 2 GiB or more gets).
    for (shards, threads) in [(1usize, 1usize), (1, 2), (1, 4), (16, 1), (16, 2), (16, 4)] {
        let tier = tier(shards);
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(format!("{shards}_shards_{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                let start = Arc::new(Barrier::new(threads + 1));
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let (tier, start) = (tier.clone(), start.clone());
                        std::thread::spawn(move || {
                            start.wait();
                            let mut found = 0u64;
                            for n in 0..iters as usize {
                                let k = key((n * 7 + t * 977) % KEYS);
                                found += u64::from(tier.get(&k).is_some());
                            }
                            found
                        })
                    })
                    .collect();
                start.wait();
                let began = Instant::now();
                let found: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
                let took = began.elapsed();
                assert_eq!(found, iters * threads as u64);
                // Time per round of `threads` lookups (one per thread).
                took.max(Duration::from_nanos(1))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
