//! The memory tier: size-aware GDSF eviction over TinyLFU frequencies, bounded in bytes, with a
//! small hand-off area for the fills it declines.
//!
//! Request hit ratio is about how many *requests* the bytes serve, so an object's value is its
//! popularity per byte. Frequencies come from a TinyLFU count-min sketch that also remembers
//! objects that are not cached and halves itself periodically (so popularity can shift).
//! - Eviction: each entry is ranked `clock + frequency / size` (GreedyDual-Size-Frequency), set
//!   when it is read; the lowest rank goes first and the clock rises to the evicted rank, which
//!   ages entries that stop being read.
//! - Admission: a new object gets in only if it is read more per byte than each entry it would
//!   evict (TinyLFU's rule, compared per byte). A large one-off never flushes many small hot
//!   objects, and a large object read often enough still gets in.
//!
//! On `benches/hit_ratio.rs` (see the README) this beats LRU of the same size by far more than
//! TinyUFO did (size-blind: +2.3 points at 10% of the working set), at 1%, 10% and 50%.
//!
//! A declined fill still has readers: requests coalesced on Pingora's cache lock look the key
//! up again when the fill finishes. Declined fills therefore go to the *hand-off* area, a FIFO of
//! at most 1/16 of the tier, until their disk write lands ([`MemoryTier::landed`]) or newer
//! declined fills push them out. A hand-off hit is offered to the main area again (by then its
//! frequency has grown), so on a memory-only node the hand-off is a probation queue. The sketch,
//! the hand-off and a per-entry index overhead are all charged to the tier's byte budget.
//!
//! A large tier is split into shards by key hash ([`MemoryTier::sharded`]), each all of the
//! above over its share of the bytes, so hits on different keys do not wait on one lock
//! (`benches/memory_tier.rs`); the hit-ratio bench reads the same with 4 shards as with one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use pingora_cache::key::HashBinary;

use pingora_http::ResponseHeader;

use super::head::HitHead;

/// Bytes charged per entry on top of its meta and body: map slots, the rank index and the
/// object header. An estimate on the high side, so the byte bound holds.
pub const ENTRY_OVERHEAD: u64 = 256;
/// Bytes charged per entry with a meta for its parsed header ([`HitHead`], kept once the edge's
/// fast path has served it): `tests/head_charge.rs` measures about 690 bytes for a stored image
/// answer with long values. An object without a meta never has one, so is not charged.
pub const HEAD_CHARGE: u64 = 1024;
/// The hand-off area's share of the tier (1/16).
const HANDOFF_SHARE: u64 = 16;
/// Rows of the count-min sketch. Each row has one counter per KiB of budget (rounded up to a
/// power of two), so the sketch tracks more distinct keys than the tier can hold objects, for
/// 0.4-0.8% of the budget.
const SKETCH_ROWS: usize = 4;
/// Count-min samples between halvings, per tracked entry (TinyLFU's W/C ratio).
const SAMPLE_PER_ENTRY: u64 = 10;

/// One cached response: serialized meta and body, shared by every reader.
#[derive(Debug)]
pub struct CachedObject {
    /// Full hash of the cache key this object was stored under.
    pub key: HashBinary,
    /// `CacheMeta::serialize` output: internal part and header part.
    pub meta: (Vec<u8>, Vec<u8>),
    /// The body. Hits hand out `Bytes` slices of it; nothing is copied.
    pub body: Bytes,
    /// `meta` parsed, on the first fast hit (`None` inside: it does not parse).
    head: OnceLock<Option<HitHead>>,
}

impl CachedObject {
    /// An object stored under `key`.
    pub fn new(key: HashBinary, meta: (Vec<u8>, Vec<u8>), body: Bytes) -> Self {
        CachedObject {
            key,
            meta,
            body,
            head: OnceLock::new(),
        }
    }

    /// The object's meta, parsed and its header prepared once, then kept (see [`HitHead`]).
    /// `prepare` runs only on the first call, so every caller must pass the same one (there is
    /// one caller: the edge's fast path).
    pub fn head(
        &self,
        prepare: impl FnOnce(&mut ResponseHeader) -> pingora_error::Result<()>,
    ) -> Option<&HitHead> {
        self.head
            .get_or_init(|| HitHead::parse(&self.meta, prepare))
            .as_ref()
    }

    /// Bytes this object holds.
    pub fn size(&self) -> u64 {
        (self.meta.0.len() + self.meta.1.len() + self.body.len()) as u64
    }

    fn charge(&self) -> u64 {
        let head = if self.meta.1.is_empty() {
            0
        } else {
            HEAD_CHARGE
        };
        self.size() + ENTRY_OVERHEAD + head
    }
}

/// Where [`MemoryTier::fill`] put an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Admitted to the main area.
    Admitted,
    /// Declined; held in the hand-off area for readers waiting on this fill.
    HandedOff,
    /// Larger than the tier can hold at all.
    TooLarge,
}

/// A count-min sketch of access frequencies with periodic halving (TinyLFU).
struct Sketch {
    counters: Vec<u8>,
    width_bits: u32,
    samples: u64,
}

impl Sketch {
    fn new(width: usize) -> Sketch {
        let width = width.next_power_of_two().max(256);
        Sketch {
            counters: vec![0; width * SKETCH_ROWS],
            width_bits: width.trailing_zeros(),
            samples: 0,
        }
    }

    fn bytes(&self) -> u64 {
        self.counters.len() as u64
    }

    fn slots(&self, key: u128) -> [usize; SKETCH_ROWS] {
        // Keys are already cryptographic hashes; odd multipliers spread them over each row.
        const SEEDS: [u64; SKETCH_ROWS] = [
            0x9E37_79B9_7F4A_7C15,
            0xC2B2_AE3D_27D4_EB4F,
            0x1656_67B1_9E37_79F9,
            0xD6E8_FEB8_6659_FD93,
        ];
        let h = (key as u64) ^ ((key >> 64) as u64).rotate_left(29);
        let width = 1usize << self.width_bits;
        let mut out = [0; SKETCH_ROWS];
        for (row, seed) in SEEDS.iter().enumerate() {
            let x = h.wrapping_add(row as u64).wrapping_mul(*seed);
            out[row] = row * width + (x >> (64 - self.width_bits)) as usize;
        }
        out
    }

    fn estimate(&self, key: u128) -> u32 {
        self.slots(key)
            .iter()
            .map(|&i| u32::from(self.counters[i]))
            .min()
            .unwrap_or(0)
    }

    /// Count one access (conservative update) and return the new estimate.
    fn increment(&mut self, key: u128, sample_size: u64) -> u32 {
        let slots = self.slots(key);
        let min = slots.iter().map(|&i| self.counters[i]).min().unwrap_or(0);
        if min < u8::MAX {
            for &i in &slots {
                if self.counters[i] == min {
                    self.counters[i] += 1;
                }
            }
        }
        self.samples += 1;
        if self.samples >= sample_size {
            // Age: halve every counter so the sketch follows popularity as it shifts.
            for c in &mut self.counters {
                *c >>= 1;
            }
            self.samples /= 2;
        }
        u32::from(min.saturating_add(1))
    }
}

/// Rank in eviction order: priority bits (non-negative `f64`s order like their bits), then a
/// sequence number so ranks are unique.
type Rank = (u64, u64);

struct Entry {
    obj: Arc<CachedObject>,
    charge: u64,
    rank: Rank,
}

struct Inner {
    main: HashMap<u128, Entry>,
    order: BTreeMap<Rank, u128>,
    used: u64,
    capacity: u64,
    clock: f64,
    seq: u64,
    sketch: Sketch,
    handoff: HashMap<u128, (Arc<CachedObject>, u64)>,
    handoff_queue: VecDeque<(u128, u64)>,
    handoff_used: u64,
    handoff_capacity: u64,
    stored: u64,
    evictions: u64,
}

impl Inner {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn sample_size(&self) -> u64 {
        SAMPLE_PER_ENTRY * (self.main.len() + self.handoff.len()).max(1024) as u64
    }

    fn rank(&mut self, freq: u32, charge: u64) -> Rank {
        let priority = self.clock + f64::from(freq) / charge as f64;
        (priority.to_bits(), self.next_seq())
    }

    fn remove_main(&mut self, key: u128) -> Option<Entry> {
        let e = self.main.remove(&key)?;
        self.order.remove(&e.rank);
        self.used -= e.charge;
        self.stored -= e.obj.size();
        Some(e)
    }

    fn remove_handoff(&mut self, key: u128) -> Option<Arc<CachedObject>> {
        let (obj, _) = self.handoff.remove(&key)?;
        self.handoff_used -= obj.charge();
        self.stored -= obj.size();
        // Queue slots of removed entries are skipped lazily; compact before they pile up.
        if self.handoff_queue.len() > 2 * self.handoff.len() + 64 {
            let live = &self.handoff;
            self.handoff_queue
                .retain(|(k, seq)| live.get(k).is_some_and(|(_, s)| s == seq));
        }
        Some(obj)
    }

    /// Estimated reads per byte of a main-area entry.
    fn density(&self, key: u128) -> f64 {
        let charge = self.main.get(&key).map_or(1, |e| e.charge);
        f64::from(self.sketch.estimate(key).max(1)) / charge as f64
    }

    /// Put `obj` in the main area, evicting the lowest-ranked entries to make room, if each of
    /// them is read less per byte than `obj` (or, with `force`, regardless). Whether it is in.
    fn admit(&mut self, obj: &Arc<CachedObject>, force: bool) -> bool {
        let key = u128::from_be_bytes(obj.key);
        let charge = obj.charge();
        if charge > self.capacity {
            return false;
        }
        let freq = self.sketch.estimate(key).max(1);
        let candidate_density = f64::from(freq) / charge as f64;
        // A replaced entry (refill, meta update) gives its room back first.
        let old = self.main.get(&key).map(|e| e.charge).unwrap_or(0);
        let need = (self.used - old + charge).saturating_sub(self.capacity);
        let mut victims = Vec::new();
        let mut freed = 0;
        for k in self.order.values() {
            if freed >= need {
                break;
            }
            if *k == key {
                continue;
            }
            // TinyLFU admission, per byte: the candidate must be read more often per byte than
            // each entry it displaces, by current (aged) sketch counts. Ties keep the incumbent,
            // so a stream of one-off objects cannot churn the tier.
            if !force && self.density(*k) >= candidate_density {
                return false;
            }
            victims.push(*k);
            freed += self.main.get(k).map_or(0, |e| e.charge);
        }
        if freed < need {
            return false;
        }
        self.remove_main(key);
        for k in victims {
            if let Some(e) = self.remove_main(k) {
                self.clock = self.clock.max(f64::from_bits(e.rank.0));
                self.evictions += 1;
            }
        }
        let rank = self.rank(freq, charge);
        self.order.insert(rank, key);
        self.used += charge;
        self.stored += obj.size();
        self.main.insert(
            key,
            Entry {
                obj: obj.clone(),
                charge,
                rank,
            },
        );
        true
    }

    fn hand_off(&mut self, obj: Arc<CachedObject>) -> bool {
        let key = u128::from_be_bytes(obj.key);
        let charge = obj.charge();
        if charge > self.handoff_capacity {
            return false;
        }
        self.remove_handoff(key);
        while self.handoff_used + charge > self.handoff_capacity {
            let Some((k, seq)) = self.handoff_queue.pop_front() else {
                break;
            };
            if self.handoff.get(&k).is_some_and(|(_, s)| *s == seq) {
                self.remove_handoff(k);
                self.evictions += 1;
            }
        }
        let seq = self.next_seq();
        self.handoff_queue.push_back((key, seq));
        self.handoff_used += charge;
        self.stored += obj.size();
        self.handoff.insert(key, (obj, seq));
        true
    }
}

/// Most shards a tier is split into.
const MAX_SHARDS: usize = 16;
/// Smallest shard: each shard runs its own eviction and admission, which need many objects
/// per shard to behave as one tier would.
const MIN_SHARD_BYTES: u64 = 64 * 1024 * 1024;
/// A shard holds at least this many of the largest objects, so sharding never turns an
/// admissible object into one too large for its shard.
const LARGEST_PER_SHARD: u64 = 8;

impl Inner {
    fn new(capacity: u64) -> Inner {
        let sketch = Sketch::new((capacity / 1024) as usize);
        let rest = capacity.saturating_sub(sketch.bytes());
        let handoff_capacity = rest / HANDOFF_SHARE;
        Inner {
            main: HashMap::new(),
            order: BTreeMap::new(),
            used: 0,
            capacity: rest - handoff_capacity,
            clock: 0.0,
            seq: 0,
            sketch,
            handoff: HashMap::new(),
            handoff_queue: VecDeque::new(),
            handoff_used: 0,
            handoff_capacity,
            stored: 0,
            evictions: 0,
        }
    }
}

/// One shard's lock and state, on its own cache lines (no false sharing between shards).
#[repr(align(128))]
struct Shard(Mutex<Inner>);

/// A memory tier of at most `capacity` bytes, index and sketch included: one or more shards,
/// each a whole tier (map, rank order, sketch, hand-off) over its share of the bytes, picked
/// by the key's hash, so concurrent hits on different keys rarely wait for each other.
pub struct MemoryTier {
    shards: Box<[Shard]>,
}

impl MemoryTier {
    /// A tier holding up to `capacity` bytes, in one shard.
    pub fn new(capacity: u64) -> Self {
        Self::with_shards(capacity, 1)
    }

    /// A tier of `capacity` bytes for objects up to `max_object` bytes, in as many shards (a
    /// power of two, at most 16) as keep each at least 64 MiB and 8 of the largest objects:
    /// 4 for the default 512 MiB with 16 MiB objects, 16 from 2 GiB.
    pub fn sharded(capacity: u64, max_object: u64) -> Self {
        let floor = MIN_SHARD_BYTES.max(max_object.saturating_mul(LARGEST_PER_SHARD));
        let mut n = 1;
        while n < MAX_SHARDS && capacity / (2 * n as u64) >= floor {
            n *= 2;
        }
        Self::with_shards(capacity, n)
    }

    /// A tier of `capacity` bytes in `n` shards (rounded down to a power of two, at least 1).
    pub fn with_shards(capacity: u64, n: usize) -> Self {
        let n = if n <= 1 { 1 } else { 1 << n.ilog2() };
        MemoryTier {
            shards: (0..n)
                .map(|_| Shard(Mutex::new(Inner::new(capacity / n as u64))))
                .collect(),
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The shard of key `k` (keys are hashes: their top bits are uniform).
    fn shard(&self, k: u128) -> &Mutex<Inner> {
        let i = (k >> 64) as usize & (self.shards.len() - 1);
        &self.shards[i].0
    }

    /// Sum `f` over the shards.
    fn sum(&self, f: impl Fn(&Inner) -> u64) -> u64 {
        self.shards.iter().map(|s| f(&s.0.lock())).sum()
    }

    /// The object stored under `key`, if any. Every call counts as one access.
    pub fn get(&self, key: &HashBinary) -> Option<Arc<CachedObject>> {
        let k = u128::from_be_bytes(*key);
        let mut g = self.shard(k).lock();
        let sample = g.sample_size();
        let freq = g.sketch.increment(k, sample);
        if let Some(e) = g.main.get(&k) {
            let (obj, charge, old) = (e.obj.clone(), e.charge, e.rank);
            let rank = g.rank(freq, charge);
            g.order.remove(&old);
            g.order.insert(rank, k);
            if let Some(e) = g.main.get_mut(&k) {
                e.rank = rank;
            }
            return Some(obj);
        }
        let obj = g.handoff.get(&k).map(|(obj, _)| obj.clone())?;
        // Read again while on probation: offer it to the main area with its grown frequency.
        if g.admit(&obj, false) {
            g.remove_handoff(k);
        }
        let evicted = std::mem::take(&mut g.evictions);
        drop(g);
        count_evictions(evicted);
        Some(obj)
    }

    /// Store a finished fill. Admission decides between the main area and the hand-off area;
    /// either way readers coalesced on this fill find it. Objects the hand-off cannot hold
    /// are forced into the main area so waiters are never sent to the origin.
    pub fn fill(&self, obj: Arc<CachedObject>) -> Placement {
        let key = u128::from_be_bytes(obj.key);
        let mut g = self.shard(key).lock();
        let placed = if g.admit(&obj, false) {
            g.remove_handoff(key);
            Placement::Admitted
        } else if g.hand_off(obj.clone()) {
            g.remove_main(key);
            Placement::HandedOff
        } else if g.admit(&obj, true) {
            Placement::Admitted
        } else {
            g.remove_main(key);
            Placement::TooLarge
        };
        let evicted = std::mem::take(&mut g.evictions);
        drop(g);
        count_evictions(evicted);
        placed
    }

    /// Offer an object read from a lower tier. Admission decides, so a one-off disk hit does
    /// not push hot objects out of memory.
    pub fn promote(&self, obj: Arc<CachedObject>) {
        let mut g = self.shard(u128::from_be_bytes(obj.key)).lock();
        g.admit(&obj, false);
        let evicted = std::mem::take(&mut g.evictions);
        drop(g);
        count_evictions(evicted);
    }

    /// `obj` is now readable from the disk tier: release its hand-off slot, if it still has
    /// one (a newer fill of the same key keeps its own).
    pub fn landed(&self, obj: &Arc<CachedObject>) {
        let key = u128::from_be_bytes(obj.key);
        let mut g = self.shard(key).lock();
        if g.handoff
            .get(&key)
            .is_some_and(|(held, _)| Arc::ptr_eq(held, obj))
        {
            g.remove_handoff(key);
        }
    }

    /// Remove `key`; whether it was there.
    pub fn remove(&self, key: &HashBinary) -> bool {
        let k = u128::from_be_bytes(*key);
        let mut g = self.shard(k).lock();
        let main = g.remove_main(k).is_some();
        let handoff = g.remove_handoff(k).is_some();
        main || handoff
    }

    /// Bytes of objects currently stored (meta and bodies, both areas).
    pub fn stored_bytes(&self) -> u64 {
        self.sum(|g| g.stored)
    }

    /// Bytes charged against the budget: objects, per-entry overhead and the sketch.
    pub fn charged_bytes(&self) -> u64 {
        self.sum(|g| g.used + g.handoff_used + g.sketch.bytes())
    }

    /// Objects currently stored (both areas).
    pub fn objects(&self) -> u64 {
        self.sum(|g| (g.main.len() + g.handoff.len()) as u64)
    }

    /// Whether `key` is held, without counting an access (tests).
    #[cfg(test)]
    fn contains(&self, key: &HashBinary) -> bool {
        let k = u128::from_be_bytes(*key);
        let g = self.shard(k).lock();
        g.main.contains_key(&k) || g.handoff.contains_key(&k)
    }

    /// Objects in the hand-off area.
    pub fn handed_off(&self) -> u64 {
        self.sum(|g| g.handoff.len() as u64)
    }
}

fn count_evictions(n: u64) {
    if n > 0 {
        crate::metrics::metrics()
            .cache_evictions
            .with_label_values(&["memory"])
            .inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    fn obj(k: u16, size: usize) -> Arc<CachedObject> {
        Arc::new(CachedObject::new(
            key(k),
            (vec![], vec![]),
            Bytes::from(vec![k as u8; size]),
        ))
    }

    fn key(k: u16) -> HashBinary {
        let mut key = [0u8; 16];
        key[..2].copy_from_slice(&k.to_be_bytes());
        key
    }

    #[test]
    fn bounded_in_bytes_including_index_and_sketch() {
        let cap = 256 * KIB;
        let tier = MemoryTier::new(cap);
        for k in 0..2000u16 {
            let size = 1 + (k as usize * 7919) % (12 * KIB as usize);
            tier.get(&key(k));
            tier.fill(obj(k, size));
            assert!(tier.charged_bytes() <= cap, "{}", tier.charged_bytes());
            assert!(tier.stored_bytes() < tier.charged_bytes());
        }
        assert!(tier.objects() > 10);
        let live = (0..2000u16).filter(|k| tier.contains(&key(*k))).count() as u64;
        assert_eq!(tier.objects(), live);
    }

    #[test]
    fn replace_and_remove_keep_accounting() {
        let tier = MemoryTier::new(64 * KIB);
        tier.fill(obj(1, 100));
        tier.fill(obj(1, 300));
        assert_eq!(tier.stored_bytes(), 300);
        assert_eq!(tier.get(&key(1)).map(|o| o.body.len()), Some(300));
        assert!(tier.remove(&key(1)));
        assert!(!tier.remove(&key(1)));
        assert_eq!(tier.stored_bytes(), 0);
        assert_eq!(tier.objects(), 0);
    }

    /// Fill the tier with small objects read `reads` times each.
    fn hot_set(tier: &MemoryTier, n: u16, size: usize, reads: usize) {
        for k in 0..n {
            tier.get(&key(k));
            assert_eq!(tier.fill(obj(k, size)), Placement::Admitted);
            for _ in 0..reads {
                assert!(tier.get(&key(k)).is_some());
            }
        }
    }

    #[test]
    fn a_large_one_off_is_handed_off_not_admitted() {
        let tier = MemoryTier::new(1024 * KIB);
        // About 940 KiB of small objects, read often: the main area is full.
        hot_set(&tier, 180, 5 * KIB as usize, 4);
        let before = tier.stored_bytes();
        // A 60 KiB object read once would evict a dozen hot ones: declined, but readable.
        tier.get(&key(1000));
        assert_eq!(
            tier.fill(obj(1000, 60 * KIB as usize)),
            Placement::HandedOff
        );
        assert_eq!(tier.handed_off(), 1);
        assert_eq!(tier.stored_bytes(), before + 60 * KIB);
        let hot = (0..180u16).filter(|k| tier.get(&key(*k)).is_some()).count();
        assert_eq!(hot, 180);
        // Once its disk copy lands the slot is released.
        let held = tier.get(&key(1000));
        assert!(held.is_some());
        if let Some(held) = held {
            tier.landed(&held);
        }
        assert!(tier.get(&key(1000)).is_none());
        assert_eq!(tier.handed_off(), 0);
        assert_eq!(tier.stored_bytes(), before);
    }

    #[test]
    fn a_small_new_object_displaces_a_large_cold_one() {
        let tier = MemoryTier::new(256 * KIB);
        // One big object read once fills most of the tier...
        tier.get(&key(1));
        assert_eq!(tier.fill(obj(1, 200 * KIB as usize)), Placement::Admitted);
        // ...then small objects arrive: each is worth more per byte, so they get in.
        for k in 2..40u16 {
            tier.get(&key(k));
            assert_eq!(tier.fill(obj(k, 2 * KIB as usize)), Placement::Admitted);
        }
        assert!(tier.get(&key(1)).is_none());
    }

    #[test]
    fn a_large_object_read_often_is_admitted() {
        let tier = MemoryTier::new(1024 * KIB);
        hot_set(&tier, 180, 5 * KIB as usize, 1);
        // Declined on its first fill, then read from the hand-off area until its frequency
        // per byte beats the coldest small objects.
        tier.get(&key(1000));
        assert_eq!(
            tier.fill(obj(1000, 60 * KIB as usize)),
            Placement::HandedOff
        );
        for _ in 0..40 {
            assert!(tier.get(&key(1000)).is_some());
        }
        assert_eq!(tier.handed_off(), 0, "promoted out of the hand-off area");
        assert!(tier.get(&key(1000)).is_some());
    }

    #[test]
    fn promotion_is_admission_controlled() {
        let tier = MemoryTier::new(64 * KIB);
        hot_set(&tier, 40, KIB as usize, 5);
        // One-off promotions of cold objects must not flush it.
        for k in 100..200u16 {
            tier.get(&key(k));
            tier.promote(obj(k, KIB as usize));
        }
        let hot = (0..40u16).filter(|k| tier.get(&key(*k)).is_some()).count();
        assert!(
            hot >= 36,
            "cold promotions evicted the hot set: {hot}/40 left"
        );
    }

    #[test]
    fn an_object_larger_than_the_hand_off_is_forced_in_and_one_larger_than_the_tier_refused() {
        let tier = MemoryTier::new(256 * KIB);
        hot_set(&tier, 55, 4 * KIB as usize, 4);
        // Over 1/16 of the tier: the hand-off cannot hold it, so waiters need it in main.
        tier.get(&key(500));
        assert_eq!(tier.fill(obj(500, 40 * KIB as usize)), Placement::Admitted);
        assert!(tier.get(&key(500)).is_some());
        assert_eq!(tier.fill(obj(501, 300 * KIB as usize)), Placement::TooLarge);
        assert!(tier.charged_bytes() <= 256 * KIB);
    }

    #[test]
    fn large_tiers_are_sharded_and_behave_as_one() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(MemoryTier::sharded(MIB, MIB).shards(), 1);
        assert_eq!(MemoryTier::sharded(512 * MIB, 16 * MIB).shards(), 4);
        assert_eq!(MemoryTier::sharded(512 * MIB, 512 * MIB).shards(), 1);
        assert_eq!(MemoryTier::sharded(4096 * MIB, 16 * MIB).shards(), 16);
        assert_eq!(MemoryTier::sharded(64 * 1024 * MIB, 16 * MIB).shards(), 16);
        assert_eq!(MemoryTier::with_shards(MIB, 6).shards(), 4);
        // Every key lands in some shard and is found there; the bound holds over all shards.
        let tier = MemoryTier::with_shards(4 * MIB, 4);
        let keys: Vec<HashBinary> = (0..2000u128)
            .map(|i| {
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
                    .to_be_bytes()
            })
            .collect();
        for k in &keys {
            for _ in 0..2 {
                tier.fill(Arc::new(CachedObject::new(
                    *k,
                    (vec![], vec![]),
                    Bytes::from(vec![1u8; 1000]),
                )));
                let _ = tier.get(k);
            }
        }
        let held = keys.iter().filter(|k| tier.contains(k)).count() as u64;
        assert_eq!(held, tier.objects());
        assert!(held > 1000, "{held} of 2000 small objects held in 4 MiB");
        assert!(tier.charged_bytes() <= 4 * MIB);
        let used: Vec<u64> = tier
            .shards
            .iter()
            .map(|s| s.0.lock().main.len() as u64)
            .collect();
        assert!(
            used.iter().all(|&n| n > 100),
            "keys spread over the shards: {used:?}"
        );
        assert!(tier.remove(&keys[0]) || !tier.contains(&keys[0]));
    }
}
