//! The memory tier: TinyUFO (S3-FIFO admission + TinyLFU eviction) bounded in bytes.
//!
//! TinyUFO beats LRU on the long-tail Zipf traffic an image CDN sees, because one-hit wonders
//! never push out the hot set. Its weights are `u16`, so objects are weighed in 1 KiB pages
//! (fine enough that small thumbnails are not over-counted; the largest object is 64 MiB). It
//! keeps only a 64-bit hash of each key, so every entry carries the full 128-bit cache-key hash
//! and a lookup that lands on a different object is a miss, never a wrong image.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use pingora_cache::key::HashBinary;
use tinyufo::TinyUfo;

/// Weight unit: one page.
pub const PAGE: u64 = 1024;
/// Largest object the tier can weigh (u16::MAX pages).
pub const MAX_OBJECT: u64 = PAGE * u16::MAX as u64;

/// One cached response: serialized meta and body, shared by every reader.
#[derive(Debug)]
pub struct CachedObject {
    /// Full hash of the cache key this object was stored under.
    pub key: HashBinary,
    /// `CacheMeta::serialize` output: internal part and header part.
    pub meta: (Vec<u8>, Vec<u8>),
    /// The body. Hits hand out `Bytes` slices of it; nothing is copied.
    pub body: Bytes,
}

impl CachedObject {
    /// Bytes this object holds.
    pub fn size(&self) -> u64 {
        (self.meta.0.len() + self.meta.1.len() + self.body.len()) as u64
    }
}

/// A memory tier of at most `capacity` bytes (in whole pages).
pub struct MemoryTier {
    ufo: TinyUfo<u128, Arc<CachedObject>>,
    stored: AtomicU64,
    objects: AtomicU64,
}

impl MemoryTier {
    /// A tier holding up to `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        let pages = (capacity / PAGE).max(1) as usize;
        // TinyLFU's sketch is sized for the expected object count; thumbnails average ~16 KiB.
        let estimated_objects = (capacity / (16 * 1024)).max(64) as usize;
        MemoryTier {
            ufo: TinyUfo::new(pages, estimated_objects),
            stored: AtomicU64::new(0),
            objects: AtomicU64::new(0),
        }
    }

    fn weight(obj: &CachedObject) -> u16 {
        obj.size().div_ceil(PAGE).clamp(1, u16::MAX as u64) as u16
    }

    /// The object stored under `key`, if any.
    pub fn get(&self, key: &HashBinary) -> Option<Arc<CachedObject>> {
        self.ufo
            .get(&u128::from_be_bytes(*key))
            .filter(|obj| &obj.key == key)
    }

    /// Store a fresh fill, evicting others as needed. Fills use a forced put: requests
    /// coalesced on this fill are waiting to read it, and TinyLFU rejecting it would send them
    /// all to the origin.
    pub fn put(&self, obj: Arc<CachedObject>) {
        self.insert(obj, true);
    }

    /// Offer an object read from a lower tier. TinyLFU admission decides, so a one-off disk
    /// hit does not push a hot object out of memory.
    pub fn promote(&self, obj: Arc<CachedObject>) {
        self.insert(obj, false);
    }

    fn insert(&self, obj: Arc<CachedObject>, force: bool) {
        let key = u128::from_be_bytes(obj.key);
        let size = obj.size();
        let weight = Self::weight(&obj);
        // Replacing an entry happens in place (TinyUFO does not return the old value);
        // removing it first would leave the key queued twice and corrupt the queue weights.
        match self.ufo.get(&key) {
            Some(old) => self.stored.fetch_sub(old.size(), Ordering::Relaxed),
            None => self.objects.fetch_add(1, Ordering::Relaxed),
        };
        self.stored.fetch_add(size, Ordering::Relaxed);
        let evicted = if force {
            self.ufo.force_put(key, obj.clone(), weight)
        } else {
            self.ufo.put(key, obj.clone(), weight)
        };
        let mut evictions = 0;
        for kv in evicted {
            self.stored.fetch_sub(kv.data.size(), Ordering::Relaxed);
            self.objects.fetch_sub(1, Ordering::Relaxed);
            // A rejected admission comes back in the list; it was never in the cache.
            if !Arc::ptr_eq(&kv.data, &obj) {
                evictions += 1;
            }
        }
        if evictions > 0 {
            crate::metrics::metrics()
                .cache_evictions
                .with_label_values(&["memory"])
                .inc_by(evictions);
        }
    }

    /// Remove `key`; whether it was there.
    pub fn remove(&self, key: &HashBinary) -> bool {
        match self.ufo.remove(&u128::from_be_bytes(*key)) {
            Some(old) => {
                self.stored.fetch_sub(old.size(), Ordering::Relaxed);
                self.objects.fetch_sub(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Bytes currently stored (objects, not counting index overhead).
    pub fn stored_bytes(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Objects currently stored.
    pub fn objects(&self) -> u64 {
        self.objects.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(k: u8, size: usize) -> Arc<CachedObject> {
        Arc::new(CachedObject {
            key: [k; 16],
            meta: (vec![], vec![]),
            body: Bytes::from(vec![k; size]),
        })
    }

    #[test]
    fn bounded_in_bytes() {
        let tier = MemoryTier::new(64 * PAGE);
        for k in 0..200u8 {
            tier.put(obj(k, PAGE as usize));
            assert!(
                tier.stored_bytes() <= 64 * PAGE + PAGE,
                "{}",
                tier.stored_bytes()
            );
        }
        assert!(tier.get(&[199; 16]).is_some());
    }

    #[test]
    fn refills_under_eviction_pressure_keep_the_bound() {
        // Refilling existing keys (expired negative answers, meta updates) while others are
        // evicted must neither corrupt TinyUFO's queues nor the byte count.
        let tier = MemoryTier::new(32 * PAGE);
        for round in 0..2000usize {
            let k = (round % 50) as u8;
            tier.put(obj(k, 1 + (round * 7919) % (3 * PAGE as usize)));
            let stored = tier.stored_bytes();
            assert!(stored <= 36 * PAGE, "round {round}: {stored}");
        }
        // Broken accounting would evict everything on each admission; a healthy tier keeps a
        // share of its keys.
        let kept = (0..50u8).filter(|k| tier.get(&[*k; 16]).is_some()).count();
        assert!(kept >= 8, "only {kept} of 50 keys survive");
        assert!(tier.stored_bytes() >= 8 * PAGE, "{}", tier.stored_bytes());
    }

    #[test]
    fn replace_and_remove_keep_accounting() {
        let tier = MemoryTier::new(64 * PAGE);
        tier.put(obj(1, 100));
        tier.put(obj(1, 300));
        assert_eq!(tier.stored_bytes(), 300);
        assert_eq!(tier.get(&[1; 16]).map(|o| o.body.len()), Some(300));
        assert!(tier.remove(&[1; 16]));
        assert!(!tier.remove(&[1; 16]));
        assert_eq!(tier.stored_bytes(), 0);
        assert_eq!(tier.objects(), 0);
    }

    #[test]
    fn promotion_is_admission_controlled_and_counted() {
        let tier = MemoryTier::new(8 * PAGE);
        // A hot set that fills the tier, read often.
        for k in 0..8u8 {
            tier.put(obj(k, PAGE as usize));
            for _ in 0..5 {
                tier.promote(obj(k, PAGE as usize));
            }
        }
        // One-off promotions of cold objects must not flush it.
        for k in 100..140u8 {
            tier.promote(obj(k, PAGE as usize));
        }
        let hot = (0..8u8).filter(|k| tier.get(&[*k; 16]).is_some()).count();
        assert!(
            hot >= 6,
            "cold promotions evicted the hot set: {hot}/8 left"
        );
        let live = (0..=255u8)
            .filter(|k| tier.get(&[*k; 16]).is_some())
            .count() as u64;
        assert_eq!(tier.objects(), live);
    }
}
