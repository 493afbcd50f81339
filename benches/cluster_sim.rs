//! Fleet simulation: a long request trace replayed through the real ownership, cache-tier and
//! source-cache code for several POPs of several nodes, past what loopback can hold.
//!
//! Run: `cargo bench --bench cluster_sim` (full: 10M requests, Zipf s=1 over 1M images × 8
//! sizes, 5 POPs × 10 nodes) or `cargo bench --bench cluster_sim -- quick` (1M requests, about a
//! minute). Overrides, as `key=value` after `--`: `requests`, `images`, `pops`, `nodes`, `s`
//! (Zipf exponent), `memory_mib` and `source_mib` (per node), `disk_gib` (per node, 0 = memory
//! only), `rate` (requests a minute per POP), `seed`, `threads` (2: POPs run in parallel).
//!
//! What is real and what is modelled:
//! - **Ownership**: each node's `imgedge::cluster::ring::Ring` over its own pingora-load-balancing
//!   `LoadBalancer<KetamaHashing>`, built as the server builds it; `Ring::owner(id)` decides who
//!   fills a miss. A failed node is disabled in every survivor's load balancer
//!   (`Backends::set_enable`, what a failed health check amounts to: `select_with` skips it).
//!   A scale-out gives every node a new ring over the new peer list.
//! - **Memory tier**: `imgedge::cache::memory::MemoryTier`, the type and calls the edge's storage
//!   makes (`get` on lookup, `fill` on a finished miss, `promote` on a disk hit, `landed` once
//!   written to disk). Objects carry no meta; their bodies are slices of one static buffer.
//! - **Disk tier** (only with `disk_gib`): its eviction, pingora's `lru::Manager<16>` weighted in
//!   bytes as `src/cache/disk.rs` uses it; no files are written.
//! - **Source cache**: `imgedge::origin::source::SourceCache` (moka), driven on a current-thread
//!   tokio runtime; its `Lookup::Fetched` is one S3 GET. TTL 1 h (the default; longer than a POP's
//!   simulated trace, so it never expires anything here).
//! - **S3 keys**: the real `KeyTemplate` `{id:0:4}/{id:4:2}/{id}` over hex ids.
//! - Modelled: the trace (Zipf CDF by binary search; sizes skewed like product pages), object
//!   sizes (variants 10–60 KiB, originals 0.5–3 MB, fixed per image), the load balancer (uniform
//!   random over a POP's live nodes), requests one at a time (no coalescing of concurrent misses,
//!   which would only lower GETs further), simulated time (request `j` of a POP at
//!   `j / rate` minutes; POPs run side by side and share one bucket).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use imgedge::cache::memory::{CachedObject, MemoryTier};
use imgedge::cluster::ring::{Owner, PeerRing, Ring};
use imgedge::origin::source::{KeyTemplate, Lookup, Original, SourceCache};
use parking_lot::Mutex;
use pingora_cache::eviction::{lru::Manager, CacheEntryKey, EvictionManager};
use pingora_cache::key::CompactCacheKey;
use pingora_load_balancing::Backend;
use rand::prelude::*;

const MIB: u64 = 1 << 20;
/// Variant sizes by size class (KiB, before a per-image factor of 0.75–1.25): thumbnails to
/// zoom images. Size class 0 is the most requested.
const VARIANT_KIB: [u64; 8] = [14, 24, 10, 40, 20, 32, 48, 12];
/// How often each size class is asked for (product listing thumbnails dominate).
const SIZE_WEIGHTS: [f64; 8] = [30.0, 20.0, 14.0, 10.0, 9.0, 8.0, 5.0, 4.0];
/// S3's request rate per partitioned prefix the issue compares against (AWS documents 3,500
/// PUT/COPY/POST/DELETE and 5,500 GET/HEAD per second).
const S3_PREFIX_LIMIT: f64 = 3500.0;
/// Largest original: every body is a slice of this.
static ZEROS: [u8; 3 << 20] = [0; 3 << 20];

#[derive(Clone)]
struct Params {
    requests: u64,
    images: usize,
    pops: usize,
    nodes: usize,
    s: f64,
    memory: u64,
    source: u64,
    disk: u64,
    rate: u64,
    seed: u64,
    threads: usize,
}

impl Params {
    fn from_args() -> Params {
        let mut p = Params {
            requests: 10_000_000,
            images: 1_000_000,
            pops: 5,
            nodes: 10,
            s: 1.0,
            memory: 4096 * MIB,
            source: 1024 * MIB,
            disk: 0,
            rate: 80_000,
            seed: 1,
            threads: 2,
        };
        // `cargo bench` passes `--bench`; anything not ours is ignored.
        for a in std::env::args().skip(1) {
            if a == "quick" {
                p.requests = 1_000_000;
                continue;
            }
            let Some((k, v)) = a.split_once('=') else {
                continue;
            };
            let n: f64 = match v.parse() {
                Ok(n) => n,
                Err(_) => {
                    eprintln!("ignored {a}: not a number");
                    continue;
                }
            };
            match k {
                "requests" => p.requests = n as u64,
                "images" => p.images = n as usize,
                "pops" => p.pops = n as usize,
                "nodes" => p.nodes = n as usize,
                "s" => p.s = n,
                "memory_mib" => p.memory = (n * MIB as f64) as u64,
                "source_mib" => p.source = (n * MIB as f64) as u64,
                "disk_gib" => p.disk = (n * 1024.0 * MIB as f64) as u64,
                "rate" => p.rate = n as u64,
                "seed" => p.seed = n as u64,
                "threads" => p.threads = n as usize,
                _ => eprintln!("ignored {a}: unknown key"),
            }
        }
        p
    }

    fn per_pop(&self) -> u64 {
        self.requests / self.pops as u64
    }
}

/// SplitMix64: ids, sizes and keys derived from an image's index.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The catalogue: ids (32 hex digits, like content hashes), original sizes, S3 key prefixes.
struct Catalogue {
    ids: Vec<String>,
    original: Vec<u32>,
    /// The key template's first segment (`{id:0:4}`) as a number.
    prefix: Vec<u16>,
    /// Zipf CDF over popularity ranks; rank r is image r (ids are hashes, so popularity is
    /// independent of the key prefix).
    cdf: Vec<f64>,
    sizes: [f64; 8],
}

impl Catalogue {
    fn new(p: &Params) -> Catalogue {
        let template = KeyTemplate::parse("{id:0:4}/{id:4:2}/{id}").expect("valid template");
        let mut ids = Vec::with_capacity(p.images);
        let mut original = Vec::with_capacity(p.images);
        let mut prefix = Vec::with_capacity(p.images);
        for i in 0..p.images as u64 {
            let id = format!("{:016x}{:016x}.jpg", mix(i), mix(i ^ 0xABCD_EF01));
            let key = template.render(&id);
            let first = key.split('/').next().unwrap_or("0");
            prefix.push(u16::from_str_radix(first, 16).unwrap_or(0));
            // 0.5–3 MB, log-uniform.
            let u = (mix(i ^ 0x5151) >> 11) as f64 / (1u64 << 53) as f64;
            original.push((500_000.0 * 6f64.powf(u)) as u32);
            ids.push(id);
        }
        let mut cdf = Vec::with_capacity(p.images);
        let mut sum = 0.0;
        for r in 0..p.images {
            sum += 1.0 / ((r + 1) as f64).powf(p.s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        let total: f64 = SIZE_WEIGHTS.iter().sum();
        let mut sizes = [0.0; 8];
        let mut acc = 0.0;
        for (i, w) in SIZE_WEIGHTS.iter().enumerate() {
            acc += w / total;
            sizes[i] = acc;
        }
        Catalogue {
            ids,
            original,
            prefix,
            cdf,
            sizes,
        }
    }

    fn sample(&self, rng: &mut StdRng) -> (usize, usize) {
        let u: f64 = rng.gen();
        let img = self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1);
        let v: f64 = rng.gen();
        let size = self.sizes.partition_point(|&c| c < v).min(7);
        (img, size)
    }

    fn variant(&self, img: usize, size: usize) -> Arc<CachedObject> {
        let h = mix(((img as u64) << 3) | size as u64);
        let factor = 0.75 + (h % 1000) as f64 / 2000.0;
        let bytes = (VARIANT_KIB[size] as f64 * 1024.0 * factor) as usize;
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&h.to_be_bytes());
        key[8..].copy_from_slice(&mix(h).to_be_bytes());
        Arc::new(CachedObject::new(
            key,
            (Vec::new(), Vec::new()),
            Bytes::from_static(&ZEROS[..bytes]),
        ))
    }
}

/// One node: its tiers, its source cache and its view of the ring.
struct Node {
    memory: MemoryTier,
    disk: Option<Manager<16>>,
    source: SourceCache,
    lb: Option<Arc<PeerRing>>,
    ring: Option<Ring>,
}

fn addr(pop: usize, node: usize) -> SocketAddr {
    SocketAddr::from((
        [10, pop as u8, (node / 250) as u8, (node % 250) as u8 + 1],
        9092,
    ))
}

fn index(a: SocketAddr) -> usize {
    match a {
        SocketAddr::V4(v4) => {
            let o = v4.ip().octets();
            o[2] as usize * 250 + o[3] as usize - 1
        }
        SocketAddr::V6(_) => 0,
    }
}

fn disk_entry(key: [u8; 16]) -> CacheEntryKey {
    CacheEntryKey::key_only(CompactCacheKey {
        primary: key,
        variance: None,
        user_tag: "".into(),
    })
}

impl Node {
    fn new(p: &Params) -> Node {
        Node {
            memory: MemoryTier::new(p.memory),
            disk: (p.disk > 0).then(|| Manager::<16>::with_capacity(p.disk as usize, 1024)),
            source: SourceCache::new(p.source, Duration::from_secs(3600))
                .expect("source cache bytes > 0"),
            lb: None,
            ring: None,
        }
    }

    /// The storage's lookup: memory, then disk (a disk hit is offered to memory).
    fn lookup(&self, obj: &Arc<CachedObject>) -> bool {
        if self.memory.get(&obj.key).is_some() {
            return true;
        }
        let Some(disk) = &self.disk else {
            return false;
        };
        let e = disk_entry(obj.key);
        if disk.peek(&e) {
            disk.access(&e, obj.body.len(), SystemTime::now());
            self.memory.promote(obj.clone());
            return true;
        }
        false
    }

    /// The storage's finished miss: memory fill, write-behind to disk (landed at once).
    fn store(&self, obj: &Arc<CachedObject>) {
        self.memory.fill(obj.clone());
        if let Some(disk) = &self.disk {
            disk.admit(disk_entry(obj.key), obj.body.len(), SystemTime::now());
            self.memory.landed(obj);
        }
    }

    /// The origin's fetch of the original through the source cache: whether it cost a GET.
    async fn original(&self, cat: &Catalogue, img: usize) -> bool {
        let bytes = Bytes::from_static(&ZEROS[..cat.original[img] as usize]);
        let got = self
            .source
            .get_or_fetch(&cat.ids[img], || {
                let bytes = bytes.clone();
                async move { Ok(Original { bytes, etag: None }) }
            })
            .await;
        matches!(got, Ok((_, Lookup::Fetched(_))))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Event {
    None,
    /// Node `node` dies after `at` requests.
    Fail {
        at: u64,
        node: usize,
    },
    /// `to` nodes after `at` requests.
    ScaleOut {
        at: u64,
        to: usize,
    },
}

/// Per simulated minute of one POP.
#[derive(Clone, Copy, Default)]
struct Minute {
    requests: u64,
    local_hits: u64,
    pop_hits: u64,
    gets: u64,
}

#[derive(Default)]
struct PopResult {
    requests: u64,
    local_hits: u64,
    peer_hits: u64,
    resizes: u64,
    gets: u64,
    minutes: Vec<Minute>,
    /// GETs per (minute, key prefix).
    get_log: Vec<(u16, u16)>,
    /// Ids whose filling node changed at the event, and those of them that moved between
    /// nodes that were there before and after (consistent hashing: none should).
    moved: Option<(f64, u64)>,
}

struct Pop {
    index: usize,
    clustered: bool,
    nodes: Vec<Node>,
    live: Vec<usize>,
}

impl Pop {
    fn new(p: &Params, index: usize, n: usize, clustered: bool) -> Pop {
        let mut pop = Pop {
            index,
            clustered,
            nodes: (0..n).map(|_| Node::new(p)).collect(),
            live: (0..n).collect(),
        };
        if clustered {
            pop.build_rings();
        }
        pop
    }

    /// Every node's ring over the current peer list, as each node builds it from its config.
    fn build_rings(&mut self) {
        let peers: Vec<SocketAddr> = (0..self.nodes.len()).map(|i| addr(self.index, i)).collect();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let lb = Arc::new(PeerRing::try_from_iter(peers.iter().copied()).expect("peers"));
            node.ring = Some(Ring::new(lb.clone(), addr(self.index, i)));
            node.lb = Some(lb);
        }
    }

    /// Who fills a miss of `img` at node `at`.
    fn owner(&self, at: usize, id: &str) -> usize {
        match self.nodes[at].ring.as_ref().map(|r| r.owner(id)) {
            Some(Owner::Peer(a)) => index(a),
            _ => at,
        }
    }

    /// Node `k` dies: the load balancer stops sending it requests, every survivor's health
    /// check marks it down.
    fn fail(&mut self, k: usize) {
        self.live.retain(|&n| n != k);
        let dead = Backend::new(&addr(self.index, k).to_string()).expect("addr");
        for &n in &self.live {
            if let Some(lb) = &self.nodes[n].lb {
                lb.backends().set_enable(&dead, false);
            }
        }
        self.nodes[k] = Node {
            memory: MemoryTier::new(1 << 20),
            disk: None,
            source: SourceCache::new(1 << 20, Duration::from_secs(1)).expect("bytes > 0"),
            lb: None,
            ring: None,
        };
    }

    fn scale_to(&mut self, p: &Params, to: usize) {
        while self.nodes.len() < to {
            self.live.push(self.nodes.len());
            self.nodes.push(Node::new(p));
        }
        if self.clustered {
            self.build_rings();
        }
    }

    /// Where every id is filled from, seen from the first live node.
    fn placement(&self, cat: &Catalogue) -> Vec<u16> {
        let at = self.live[0];
        cat.ids.iter().map(|id| self.owner(at, id) as u16).collect()
    }

    /// One request at node `n`: (local hit, peer hit, S3 GET). Neither hit means a resize.
    async fn serve(
        &self,
        cat: &Catalogue,
        n: usize,
        img: usize,
        size: usize,
    ) -> (bool, bool, bool) {
        let obj = cat.variant(img, size);
        let node = &self.nodes[n];
        if node.lookup(&obj) {
            return (true, false, false);
        }
        let o = if self.clustered {
            self.owner(n, &cat.ids[img])
        } else {
            n
        };
        if o != n {
            let owner = &self.nodes[o];
            // The peer listener serves from the owner's cache, or fills it from its own origin.
            if owner.lookup(&obj) {
                node.store(&obj);
                return (false, true, false);
            }
            let get = owner.original(cat, img).await;
            owner.store(&obj);
            node.store(&obj);
            return (false, false, get);
        }
        let get = node.original(cat, img).await;
        node.store(&obj);
        (false, false, get)
    }
}

async fn run_pop(
    p: &Params,
    cat: &Catalogue,
    index: usize,
    clustered: bool,
    event: Event,
) -> PopResult {
    let mut pop = Pop::new(p, index, p.nodes, clustered);
    let mut rng = StdRng::seed_from_u64(p.seed.wrapping_mul(1000).wrapping_add(index as u64));
    let n = p.per_pop();
    let mut r = PopResult {
        minutes: vec![Minute::default(); (n / p.rate + 1) as usize],
        ..PopResult::default()
    };
    for j in 0..n {
        match event {
            Event::Fail { at, node } if at == j && clustered => {
                let before = pop.placement(cat);
                pop.fail(node);
                let after = pop.placement(cat);
                r.moved = Some(moves(&before, &after, |b, _| b as usize != node));
            }
            Event::Fail { at, node } if at == j => pop.fail(node),
            Event::ScaleOut { at, to } if at == j && clustered => {
                let before = pop.placement(cat);
                pop.scale_to(p, to);
                let after = pop.placement(cat);
                r.moved = Some(moves(&before, &after, |_, a| (a as usize) < p.nodes));
            }
            Event::ScaleOut { at, to } if at == j => pop.scale_to(p, to),
            _ => {}
        }
        let (img, size) = cat.sample(&mut rng);
        let node = pop.live[(rng.next_u64() % pop.live.len() as u64) as usize];
        let (local, peer, get) = pop.serve(cat, node, img, size).await;
        let minute = (j / p.rate) as usize;
        let m = &mut r.minutes[minute];
        m.requests += 1;
        r.requests += 1;
        if local {
            r.local_hits += 1;
            m.local_hits += 1;
        }
        if peer {
            r.peer_hits += 1;
        }
        if local || peer {
            m.pop_hits += 1;
        } else {
            r.resizes += 1;
        }
        if get {
            r.gets += 1;
            m.gets += 1;
            r.get_log.push((minute as u16, cat.prefix[img]));
        }
    }
    r
}

/// The share of ids whose filling node changed, and how many moved between nodes for which
/// `kept(before, after)` says the move should not have happened.
fn moves(before: &[u16], after: &[u16], kept: impl Fn(u16, u16) -> bool) -> (f64, u64) {
    let mut moved = 0u64;
    let mut wrong = 0u64;
    for (&b, &a) in before.iter().zip(after) {
        if a != b {
            moved += 1;
            if kept(b, a) {
                wrong += 1;
            }
        }
    }
    (moved as f64 / before.len() as f64, wrong)
}

fn pct(a: u64, b: u64) -> String {
    format!("{:.1}%", 100.0 * a as f64 / b.max(1) as f64)
}

/// Peak and mean GET/s over (minute, prefix) cells, prefixes cut to `hex` hex digits.
fn prefix_rates(
    results: &[PopResult],
    hex: u32,
    minutes: usize,
    warm_from: usize,
) -> (f64, f64, f64) {
    let shift = 16 - 4 * hex;
    let width = 1usize << (4 * hex);
    let mut cells = vec![0u32; minutes * width];
    for r in results {
        for &(m, prefix) in &r.get_log {
            cells[m as usize * width + (u32::from(prefix) >> shift) as usize] += 1;
        }
    }
    let peak = cells.iter().copied().max().unwrap_or(0) as f64 / 60.0;
    // Warm: the peak prefix's mean over the second half, and the fleet's mean per prefix.
    let mut per_prefix = vec![0u64; width];
    let mut total = 0u64;
    for m in warm_from..minutes {
        for (k, c) in cells[m * width..(m + 1) * width].iter().enumerate() {
            per_prefix[k] += u64::from(*c);
            total += u64::from(*c);
        }
    }
    let secs = ((minutes - warm_from) * 60) as f64;
    let warm_peak = per_prefix.iter().copied().max().unwrap_or(0) as f64 / secs;
    let warm_mean = total as f64 / secs / width as f64;
    (peak, warm_peak, warm_mean)
}

/// Run `jobs` (POP, clustered, event) on `p.threads` threads, each with its own current-thread
/// runtime for the source caches; results in the jobs' order.
fn run_all(p: &Params, cat: &Catalogue, jobs: &[(usize, bool, Event)]) -> Vec<PopResult> {
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, PopResult)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..p.threads.max(1) {
            scope.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(pop, clustered, event)) = jobs.get(k) else {
                        break;
                    };
                    let r = rt.block_on(run_pop(p, cat, pop, clustered, event));
                    done.lock().push((k, r));
                }
            });
        }
    });
    let mut done = done.into_inner();
    done.sort_by_key(|(k, _)| *k);
    done.into_iter().map(|(_, r)| r).collect()
}

fn main() {
    let p = Params::from_args();
    let started = Instant::now();
    let cat = Catalogue::new(&p);
    let n = p.per_pop();
    let minutes = (n / p.rate + 1) as usize;
    println!(
        "cluster_sim: {} requests ({} per POP = {:.1} min at {} req/min), Zipf s={} over {} images x 8 sizes, {} POPs x {} nodes; per node: memory tier {} MiB, disk {} GiB, source cache {} MiB",
        n * p.pops as u64,
        n,
        n as f64 / p.rate as f64,
        p.rate,
        p.s,
        p.images,
        p.pops,
        p.nodes,
        p.memory / MIB,
        p.disk / (1024 * MIB),
        p.source / MIB
    );
    // Every run up front, spread over `threads` workers (POPs are independent).
    // Events on POP 0's trace, on a minute boundary half way through, against its undisturbed run.
    let at = (n / p.rate / 2) * p.rate;
    let grow = Event::ScaleOut {
        at,
        to: p.nodes + 2,
    };
    let fail = Event::Fail { at, node: 3 };
    let mut jobs: Vec<(usize, bool, Event)> = Vec::new();
    jobs.extend((0..p.pops).map(|i| (i, true, Event::None)));
    jobs.extend((0..p.pops).map(|i| (i, false, Event::None)));
    jobs.extend([
        (0, true, fail),
        (0, false, fail),
        (0, true, grow),
        (0, false, grow),
    ]);
    let mut results = run_all(&p, &cat, &jobs).into_iter();
    let mut take = |k: usize| -> Vec<PopResult> { results.by_ref().take(k).collect() };
    let cluster = take(p.pops);
    let alone = take(p.pops);
    let mut events = take(4).into_iter();
    let (fail, fail_alone, scale, scale_alone) =
        match (events.next(), events.next(), events.next(), events.next()) {
            (Some(a), Some(b), Some(c), Some(d)) => (a, b, c, d),
            _ => unreachable!("four event runs"),
        };
    eprintln!("{} runs done in {:.0?}", jobs.len(), started.elapsed());

    println!();
    println!("Hit ratio per POP (edge hit: the node the load balancer picked had it; POP hit: edge hit or the owner had it; the rest are resizes)");
    println!();
    println!("| POP | requests | cluster: edge hit | cluster: POP hit | cluster: resizes | cluster: S3 GETs | independent: hit | independent: resizes | independent: S3 GETs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let sum = |rs: &[PopResult], f: fn(&PopResult) -> u64| rs.iter().map(f).sum::<u64>();
    for (i, (c, a)) in cluster.iter().zip(&alone).enumerate() {
        println!(
            "| {i} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.requests,
            pct(c.local_hits, c.requests),
            pct(c.local_hits + c.peer_hits, c.requests),
            c.resizes,
            c.gets,
            pct(a.local_hits, a.requests),
            a.resizes,
            a.gets
        );
    }
    let (cr, ar) = (sum(&cluster, |r| r.requests), sum(&alone, |r| r.requests));
    println!(
        "| all | {cr} | {} | {} | {} | {} | {} | {} | {} |",
        pct(sum(&cluster, |r| r.local_hits), cr),
        pct(sum(&cluster, |r| r.local_hits + r.peer_hits), cr),
        sum(&cluster, |r| r.resizes),
        sum(&cluster, |r| r.gets),
        pct(sum(&alone, |r| r.local_hits), ar),
        sum(&alone, |r| r.resizes),
        sum(&alone, |r| r.gets),
    );
    let warm_from = minutes / 2;
    let warm = |rs: &[PopResult], f: fn(&Minute) -> u64| -> u64 {
        rs.iter()
            .flat_map(|r| r.minutes[warm_from..].iter())
            .map(f)
            .sum()
    };
    println!(
        "| all, second half (warm) | {} | {} | {} | | {} | {} | | {} |",
        warm(&cluster, |m| m.requests),
        pct(
            warm(&cluster, |m| m.local_hits),
            warm(&cluster, |m| m.requests)
        ),
        pct(
            warm(&cluster, |m| m.pop_hits),
            warm(&cluster, |m| m.requests)
        ),
        warm(&cluster, |m| m.gets),
        pct(warm(&alone, |m| m.local_hits), warm(&alone, |m| m.requests)),
        warm(&alone, |m| m.gets),
    );

    println!();
    println!(
        "S3 GET/s per key prefix, {} POPs at {} req/min each into one bucket (keys {{id:0:4}}/{{id:4:2}}/{{id}}); peak: busiest (minute, prefix); warm: second half, busiest prefix and mean prefix; vs {} GET/s per partitioned prefix",
        p.pops, p.rate, S3_PREFIX_LIMIT
    );
    println!();
    println!("| prefix (as S3 partitions it) | prefixes | cluster: peak | cluster: warm busiest / mean | independent: peak | independent: warm busiest / mean | cluster peak / limit |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (label, hex) in [
        ("whole bucket (one partition)", 0u32),
        ("first hex digit", 1),
        ("first 2 hex digits", 2),
        ("`{id:0:4}/` (template's first segment)", 4),
    ] {
        let (cp, cw, cm) = prefix_rates(&cluster, hex, minutes, warm_from);
        let (ap, aw, am) = prefix_rates(&alone, hex, minutes, warm_from);
        println!(
            "| {label} | {} | {cp:.1} | {cw:.2} / {cm:.3} | {ap:.1} | {aw:.2} / {am:.3} | {:.2}% |",
            1u64 << (4 * hex),
            100.0 * cp / S3_PREFIX_LIMIT
        );
    }

    let ev = (at / p.rate) as usize;
    println!();
    println!(
        "Events on POP 0 after {at} requests (minute {ev}): POP hit ratio per minute around it, and S3 GETs in the 5 minutes after, against the same trace undisturbed"
    );
    println!();
    println!("| event | ids moved | ideal | moved that should not | minute before | 1st min after | 2nd | 5th | undisturbed 1st / 5th | GETs in 5 min after (undisturbed) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (k, grown) = (p.nodes, p.nodes + 2);
    let rows = [
        (
            format!("node 3 of {k} fails (cluster)"),
            &fail,
            &cluster[0],
            Some(1.0 / k as f64),
        ),
        (
            format!("node 3 of {k} fails (independent)"),
            &fail_alone,
            &alone[0],
            None,
        ),
        (
            format!("scale-out {k} → {grown} (cluster)"),
            &scale,
            &cluster[0],
            Some(2.0 / grown as f64),
        ),
        (
            format!("scale-out {k} → {grown} (independent)"),
            &scale_alone,
            &alone[0],
            None,
        ),
    ];
    for (label, r, control, ideal) in rows {
        let hit = |r: &PopResult, m: usize| {
            r.minutes
                .get(m)
                .map_or("-".to_string(), |x| pct(x.pop_hits, x.requests))
        };
        let gets = |r: &PopResult| -> u64 {
            r.minutes[ev..(ev + 5).min(minutes)]
                .iter()
                .map(|m| m.gets)
                .sum()
        };
        let (moved, wrong) = match r.moved {
            Some((m, w)) => (format!("{:.1}%", m * 100.0), w.to_string()),
            None => ("(no ring)".to_string(), "-".to_string()),
        };
        println!(
            "| {label} | {moved} | {} | {wrong} | {} | {} | {} | {} | {} / {} | {} ({}) |",
            ideal.map_or("-".to_string(), |i: f64| format!("{:.1}%", i * 100.0)),
            hit(r, ev.saturating_sub(1)),
            hit(r, ev),
            hit(r, ev + 1),
            hit(r, ev + 4),
            hit(control, ev),
            hit(control, ev + 4),
            gets(r),
            gets(control)
        );
    }
    println!();
    println!("({:.0?} in all)", started.elapsed());
}
