//! The edge's cache: tiered storage behind `pingora_cache::Storage`, the lock that coalesces
//! misses, and the purge log.
//!
//! [`storage::EdgeStorage`] is what Pingora talks to; it owns the [`memory`] tier and the
//! optional [`disk`] tier. [`purge::PurgeLog`] makes "every variant of an id" purgeable without
//! a scan. [`head::HitHead`] is an object's meta parsed once, for the edge's memory-hit fast
//! path. Pingora wants the storage and the lock as `&'static`, so [`Cache::from_config`] leaks
//! them once at start-up, after the disk index is loaded and before anything is served.
//! [`StateSaver`] saves the disk tier's eviction state periodically and at shutdown.

pub mod disk;
pub mod head;
pub mod memory;
pub mod purge;
pub mod storage;

use std::time::Duration;

use async_trait::async_trait;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::CacheKey;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::config::Config;
use crate::error::Error;
use crate::variant::Variant;
use disk::DiskTier;
use purge::PurgeLog;
use storage::EdgeStorage;

/// The storage key of a variant: its canonical key string and nothing else (no headers).
pub fn storage_key(variant: &Variant) -> CacheKey {
    CacheKey::new(variant.cache_key().as_bytes(), "")
}

/// The process-wide cache parts handed to every request.
#[derive(Clone, Copy)]
pub struct Cache {
    /// Where objects live.
    pub storage: &'static EdgeStorage,
    /// One fill per key; everyone else waits for it.
    pub lock: &'static CacheKeyLockImpl,
    /// When each id was last purged.
    pub purges: &'static PurgeLog,
}

impl Cache {
    /// Build (and leak) the cache for the process: open the disk tier and load its index.
    pub fn from_config(cfg: &Config) -> Result<Cache, Error> {
        let c = &cfg.cache;
        let d = &c.disk;
        let horizon = cfg.longest_keep();
        let startup = |e: std::io::Error| {
            Error::Internal(format!("cache.disk.dir: {}: {e}", d.dir.display()))
        };
        let (disk, purges) = if d.enabled() {
            let (tier, report) =
                DiskTier::open(&d.dir, d.max_bytes.as_u64(), d.fsync).map_err(startup)?;
            tracing::info!(
                "cache: disk tier {} ready: {} objects, {} bytes ({} from saved state, {} stale temp files removed) in {:?}",
                d.dir.display(),
                report.objects,
                report.bytes,
                report.from_state,
                report.temps_removed,
                report.elapsed
            );
            (
                Some(tier),
                PurgeLog::open(&d.dir, horizon).map_err(startup)?,
            )
        } else {
            (None, PurgeLog::in_memory(horizon))
        };
        let storage: &'static EdgeStorage = Box::leak(Box::new(EdgeStorage::new(
            c.memory_bytes.as_u64(),
            c.max_object_bytes.as_u64(),
            disk,
            d.write_queue,
            d.read_concurrency,
        )));
        let lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(c.lock_age_timeout));
        let purges: &'static PurgeLog = Box::leak(Box::new(purges));
        Ok(Cache {
            storage,
            lock,
            purges,
        })
    }
}

/// Saves the disk tier's eviction state every `interval` and once more at shutdown, so a
/// restart keeps both the objects and their recency.
pub struct StateSaver {
    /// The storage whose state is saved.
    pub storage: &'static EdgeStorage,
    /// Time between saves.
    pub interval: Duration,
}

#[async_trait]
impl BackgroundService for StateSaver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.storage.disk().is_none() {
            return;
        }
        let mut tick = tokio::time::interval(self.interval);
        tick.tick().await; // the first tick is immediate; the index was just loaded
        loop {
            tokio::select! {
                _ = tick.tick() => self.storage.save_state().await,
                _ = shutdown.changed() => break,
            }
        }
        self.storage.save_state().await;
        tracing::info!("cache: eviction state saved at shutdown");
    }
}
