//! Hit ratio of the memory tier (`MemoryTier`, the type and calls the edge uses) against LRU of
//! the same byte size, on a generated trace: Zipf over image ids × a skewed set of sizes, with
//! random User-Agent, parameter order and utm_* noise, canonicalized by the server's own parser.
//!
//! Run: `cargo bench --bench hit_ratio` (optionally `-- REQUESTS IDS ZIPF_S`).
//! Prints request hit ratios at 1%, 10% and 50% of the working set (bytes of every distinct
//! variant in the trace), and the ideal (an unbounded cache: only first requests miss). The
//! memory tier is charged for its index, sketch, metas and the parsed header it keeps per object
//! (as in the server); LRU and TinyUFO (the previous, size-blind memory tier, for reference)
//! only for the object bodies.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use imgedge::cache::memory::{CachedObject, MemoryTier};
use imgedge::variant::{ParseOptions, Variant};
use pingora_cache::eviction::{lru::Manager, CacheEntryKey, EvictionManager};
use pingora_cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use rand::prelude::*;
use rand_distr::Zipf;
use tinyufo::TinyUfo;

/// Widths product pages ask for, most common first.
const WIDTHS: [u32; 8] = [200, 400, 100, 800, 300, 600, 1200, 64];
const AGENTS: [&str; 4] = [
    "Mozilla/5.0 (iPhone)",
    "Mozilla/5.0 (X11)",
    "curl/8",
    "Googlebot",
];

/// One request URL of the trace (what a log would hold).
fn url(rng: &mut StdRng, ids: &Zipf<f64>, sizes: &Zipf<f64>) -> (String, String) {
    let id = ids.sample(rng) as u64;
    let w = WIDTHS[sizes.sample(rng) as usize - 1];
    let mut params = vec![format!("size={w}x{}", w * 3 / 4)];
    if rng.gen_bool(0.3) {
        params.push(format!("utm_source=campaign{}", rng.gen_range(0..50)));
    }
    if rng.gen_bool(0.2) {
        params.push(format!("_={}", rng.gen::<u32>()));
    }
    if rng.gen_bool(0.5) {
        params.push("format=webp".into());
    }
    params.shuffle(rng);
    let ua = AGENTS[rng.gen_range(0..AGENTS.len())].to_string();
    (
        format!("/image/{id:012x}product.jpg?{}", params.join("&")),
        ua,
    )
}

/// Bytes of a variant: about 1.2 bits per pixel, as product thumbnails come out.
fn variant_bytes(v: &Variant) -> usize {
    let (w, h) = v
        .transform
        .as_ref()
        .and_then(|t| t.resize.as_ref())
        .map_or((1600, 1200), |r| {
            (r.width.unwrap_or(1600), r.height.unwrap_or(1200))
        });
    (w as usize * h as usize * 3 / 20).max(1500)
}

struct Req {
    key: HashBinary,
    size: usize,
}

fn main() {
    let args: Vec<f64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let requests = args.first().copied().unwrap_or(2_000_000.0) as usize;
    let ids = args.get(1).copied().unwrap_or(100_000.0);
    let s = args.get(2).copied().unwrap_or(0.9);

    let mut rng = StdRng::seed_from_u64(42);
    let id_dist = Zipf::new(ids as u64, s).expect("zipf");
    let size_dist = Zipf::new(WIDTHS.len() as u64, 1.2).expect("zipf");
    let opts = ParseOptions {
        max_dimension: 4096,
        default_quality: 80,
        ..ParseOptions::default()
    };
    // The User-Agent is generated (it is in the trace) but never reaches the key.
    let mut trace = Vec::with_capacity(requests);
    let mut seen = HashSet::new();
    let mut working_set = 0usize;
    for _ in 0..requests {
        let (u, _user_agent) = url(&mut rng, &id_dist, &size_dist);
        let (path, query) = u.split_once('?').unwrap_or((&u, ""));
        let v = Variant::parse(path, Some(query), &opts).expect("trace URLs are valid");
        let key = imgedge::cache::storage_key(&v).combined_bin();
        let size = variant_bytes(&v);
        if seen.insert(key) {
            working_set += size;
        }
        trace.push(Req { key, size });
    }
    let ideal = 1.0 - seen.len() as f64 / requests as f64;
    println!(
        "trace: {requests} requests, {} distinct variants, working set {:.1} MiB, zipf s={s} over {ids} ids",
        seen.len(),
        working_set as f64 / 1048576.0
    );
    println!(
        "| cache size | memory tier (GDSF + TinyLFU) | same, 4 shards | LRU | difference | TinyUFO (previous tier) | ideal (unbounded) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for pct in [1.0, 10.0, 50.0] {
        let bytes = (working_set as f64 * pct / 100.0) as usize;
        let tier = memory_tier_ratio(&trace, bytes, 1);
        // The server shards a tier of 256 MiB or more (`MemoryTier::sharded`); 4 shards at
        // every size here shows what splitting costs even where the server would not.
        let sharded = memory_tier_ratio(&trace, bytes, 4);
        let lru = lru_ratio(&trace, bytes);
        let ufo = tinyufo_ratio(&trace, bytes);
        println!(
            "| {pct}% ({:.1} MiB) | {:.1}% | {:.1}% | {:.1}% | {:+.1} pt | {:.1}% | {:.1}% |",
            bytes as f64 / 1048576.0,
            tier * 100.0,
            sharded * 100.0,
            lru * 100.0,
            (tier - lru) * 100.0,
            ufo * 100.0,
            ideal * 100.0
        );
    }
}

/// A served object's meta: Pingora's internal part and its header block (sizes of a real
/// image answer's). Non-empty, so the tier charges the parsed head (`HEAD_CHARGE`) as it does
/// for real objects.
fn object(r: &Req) -> Arc<CachedObject> {
    Arc::new(CachedObject::new(
        r.key,
        (vec![0; 64], vec![0; 320]),
        Bytes::from_static(&ZEROS[..r.size.min(ZEROS.len())]),
    ))
}

/// The memory tier exactly as a memory-only edge drives it: a lookup, and on a miss the
/// finished fill (admitted, or held in the hand-off area until pushed out).
fn memory_tier_ratio(trace: &[Req], bytes: usize, shards: usize) -> f64 {
    let tier = MemoryTier::with_shards(bytes as u64, shards);
    let mut hits = 0usize;
    for r in trace {
        if tier.get(&r.key).is_some() {
            hits += 1;
        } else {
            tier.fill(object(r));
        }
    }
    assert!(tier.charged_bytes() <= bytes as u64);
    hits as f64 / trace.len() as f64
}

/// The previous memory tier: TinyUFO weighed in 1 KiB pages, fills forced in.
fn tinyufo_ratio(trace: &[Req], bytes: usize) -> f64 {
    let ufo = TinyUfo::new(bytes / 1024, bytes / (16 * 1024));
    let mut hits = 0usize;
    for r in trace {
        let key = u128::from_be_bytes(r.key);
        if ufo.get(&key).is_some() {
            hits += 1;
        } else {
            let pages = r.size.div_ceil(1024).clamp(1, u16::MAX as usize) as u16;
            ufo.force_put(key, object(r), pages);
        }
    }
    hits as f64 / trace.len() as f64
}

static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Plain LRU in bytes: pingora's eviction manager with one shard.
fn lru_ratio(trace: &[Req], bytes: usize) -> f64 {
    let lru = Manager::<1>::with_capacity(bytes, 1024);
    let mut hits = 0usize;
    let now = SystemTime::now();
    for r in trace {
        let e = CacheEntryKey::key_only(CompactCacheKey {
            primary: r.key,
            variance: None,
            user_tag: "".into(),
        });
        if lru.peek(&e) {
            hits += 1;
            lru.access(&e, r.size, now);
        } else {
            lru.admit(e, r.size, now);
        }
    }
    hits as f64 / trace.len() as f64
}
