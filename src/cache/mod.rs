//! The edge's cache: storage behind `pingora_cache::Storage`, and the lock that coalesces misses.
//!
//! [`storage::EdgeStorage`] is what Pingora talks to; it owns the tiers. Today that is the
//! [`memory`] tier; the disk tier slots in under it (lookup falls through memory → disk, a disk
//! hit is promoted, fills write through) without changing the edge. Pingora wants the storage and
//! the lock as `&'static`, so [`Cache::from_config`] leaks them once at start-up.

pub mod memory;
pub mod storage;

use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};

use crate::config::CacheConfig;
use storage::EdgeStorage;

/// The process-wide cache parts handed to every request.
#[derive(Clone, Copy)]
pub struct Cache {
    /// Where objects live.
    pub storage: &'static EdgeStorage,
    /// One fill per key; everyone else waits for it.
    pub lock: &'static CacheKeyLockImpl,
}

impl Cache {
    /// Build (and leak) the cache for the process.
    pub fn from_config(c: &CacheConfig) -> Cache {
        let storage: &'static EdgeStorage = Box::leak(Box::new(EdgeStorage::new(
            c.memory_bytes.as_u64(),
            c.max_object_bytes.as_u64(),
        )));
        let lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(c.lock_age_timeout));
        Cache { storage, lock }
    }
}
