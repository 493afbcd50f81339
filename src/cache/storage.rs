//! `pingora_cache::Storage` for the edge: lookups, fills, purges and meta updates over the tiers.
//!
//! Lookups try memory, then disk; a disk hit is offered to memory (size-aware admission
//! decides). Fills are buffered whole and published at `finish`: readers coalesced on the cache
//! lock wait for a complete object, and a fill that fails or is dropped half way never becomes
//! visible, so a truncated body is never served. A finished fill goes to memory at once (to the
//! main area if admitted, else to the hand-off area, where the coalesced readers find it until
//! its disk write lands) and to disk in the background through a bounded queue; a disk that is
//! full or failing costs hit ratio, never a request.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_cache::key::{CacheHashKey, CacheKey};
use pingora_cache::storage::{
    HandleHit, HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget, PurgeType,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheMeta, HitHandler, MissHandler, Storage};
use pingora_error::{Error, ErrorType, Result};

use pingora_cache::key::HashBinary;
use tokio::sync::Semaphore;

use super::disk::DiskTier;
use super::memory::{CachedObject, MemoryTier};
use crate::metrics::metrics;

/// The edge's storage: a memory tier over an optional disk tier.
pub struct EdgeStorage {
    memory: Arc<MemoryTier>,
    disk: Option<Arc<DiskTier>>,
    write_slots: Arc<Semaphore>,
    /// Bounds disk reads in flight: each holds one of tokio's blocking threads, whose pool is
    /// otherwise unbounded in practice (512 threads).
    read_slots: Arc<Semaphore>,
    max_object: u64,
}

const TIERS: [&str; 2] = ["memory", "disk"];
const RESULTS: [&str; 3] = ["hit", "stale", "miss"];

// Every lookup counts once; resolving the label pair each time would put a map lookup and a
// lock on every hit, so the six counters are resolved once.
static LOOKUPS: once_cell::sync::Lazy<Vec<prometheus::IntCounter>> =
    once_cell::sync::Lazy::new(|| {
        TIERS
            .iter()
            .flat_map(|t| {
                RESULTS
                    .iter()
                    .map(move |r| metrics().cache_lookups.with_label_values(&[t, r]))
            })
            .collect()
    });

fn count_lookup(tier: &str, result: &str) {
    let t = TIERS.iter().position(|x| *x == tier).unwrap_or(0);
    let r = RESULTS.iter().position(|x| *x == result).unwrap_or(2);
    if let Some(c) = LOOKUPS.get(t * RESULTS.len() + r) {
        c.inc();
    }
}

/// Count a fresh memory hit answered outside pingora-cache (the edge's fast path).
pub fn count_memory_hit() {
    count_lookup("memory", "hit");
}

fn freshness(meta: &CacheMeta) -> &'static str {
    if meta.is_fresh(std::time::SystemTime::now()) {
        "hit"
    } else {
        "stale"
    }
}

impl EdgeStorage {
    /// Storage with a memory tier of `memory_bytes` over `disk`, admitting objects up to
    /// `max_object` bytes, with at most `write_queue` disk writes and `read_concurrency` disk
    /// reads in flight.
    pub fn new(
        memory_bytes: u64,
        max_object: u64,
        disk: Option<DiskTier>,
        write_queue: usize,
        read_concurrency: usize,
    ) -> Self {
        EdgeStorage {
            memory: Arc::new(MemoryTier::sharded(memory_bytes, max_object)),
            disk: disk.map(Arc::new),
            write_slots: Arc::new(Semaphore::new(write_queue.max(1))),
            read_slots: Arc::new(Semaphore::new(read_concurrency.max(1))),
            max_object,
        }
    }

    /// The memory tier.
    pub fn memory(&self) -> &MemoryTier {
        &self.memory
    }

    /// The disk tier, if configured.
    pub fn disk(&self) -> Option<&DiskTier> {
        self.disk.as_deref()
    }

    /// Write `obj` to disk in the background, unless the queue is full. Once it is on disk its
    /// hand-off slot in memory (if it has one) is released.
    fn write_behind(&self, obj: Arc<CachedObject>) {
        let Some(disk) = &self.disk else { return };
        let Ok(permit) = self.write_slots.clone().try_acquire_owned() else {
            metrics()
                .cache_write_failures
                .with_label_values(&["disk", "queue_full"])
                .inc();
            return;
        };
        let disk = disk.clone();
        let memory = self.memory.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match disk.write(&obj) {
                Ok(()) => memory.landed(&obj),
                Err(e) => {
                    metrics()
                        .cache_write_failures
                        .with_label_values(&["disk", "io"])
                        .inc();
                    disk.warn_throttled("write", &e);
                }
            }
        });
    }

    /// Read `key` from disk on a blocking thread, if the disk index knows it: a memory miss of
    /// a key that was never on disk (every cold miss) costs no thread hop and no syscall.
    async fn read_disk(&self, key: HashBinary) -> Option<CachedObject> {
        let disk = self.disk.clone()?;
        if !disk.knows(&key) {
            return None;
        }
        let permit = self.read_slots.clone().acquire_owned().await.ok()?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            disk.read(&key)
        })
        .await
        .ok()
        .flatten()
    }

    /// Remove `key` from every tier; whether any held it.
    pub async fn remove(&self, key: HashBinary) -> bool {
        let in_memory = self.memory.remove(&key);
        let on_disk = match self.disk.clone() {
            Some(disk) => tokio::task::spawn_blocking(move || disk.remove(&key))
                .await
                .unwrap_or(false),
            None => false,
        };
        in_memory || on_disk
    }

    /// Save the disk tier's eviction state (no-op without a disk tier).
    pub async fn save_state(&self) {
        let Some(disk) = self.disk.clone() else {
            return;
        };
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let r = disk.save_state();
            (r, disk)
        })
        .await;
        match result {
            Ok((Ok(()), disk)) => tracing::debug!(
                "cache: saved eviction state of {} objects in {:?}",
                disk.objects(),
                started.elapsed()
            ),
            Ok((Err(e), disk)) => disk.warn_throttled("state save", &e),
            Err(e) => tracing::warn!("cache: state save task failed: {e}"),
        }
    }

    /// Refresh the per-tier size gauges (called when metrics are scraped).
    pub fn update_gauges(&self) {
        let m = metrics();
        m.cache_bytes
            .with_label_values(&["memory"])
            .set(self.memory.stored_bytes() as i64);
        m.cache_objects
            .with_label_values(&["memory"])
            .set(self.memory.objects() as i64);
        if let Some(disk) = &self.disk {
            m.cache_bytes
                .with_label_values(&["disk"])
                .set(disk.bytes() as i64);
            m.cache_objects
                .with_label_values(&["disk"])
                .set(disk.objects() as i64);
        }
    }

    /// Largest admitted object.
    pub fn max_object(&self) -> u64 {
        self.max_object
    }
}

/// Serves one stored body, or a range of it, as a zero-copy slice.
struct Hit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        let end = end.unwrap_or(len);
        if start > end || end > len {
            return Error::e_explain(ErrorType::InternalError, "seek out of range");
        }
        self.start = start;
        self.end = end;
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// The body as `Bytes` holding exactly its length: the tiers charge `len`, so a buffer grown
/// by doubling would keep up to twice what `cache.memory_bytes` allows (issue 13). Exact
/// already when the origin's Content-Length sized it; else copied once.
fn exact(body: BytesMut) -> Bytes {
    if body.capacity() == body.len() {
        body.freeze()
    } else {
        Bytes::copy_from_slice(&body)
    }
}

/// Buffers one fill; publishes it only on `finish`.
struct Fill {
    storage: &'static EdgeStorage,
    key: pingora_cache::key::HashBinary,
    meta: (Vec<u8>, Vec<u8>),
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if (self.body.len() + data.len()) as u64 > self.storage.max_object {
            return Error::e_explain(
                ErrorType::InternalError,
                "object over cache.max_object_bytes",
            );
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let obj = Arc::new(CachedObject::new(self.key, self.meta, exact(self.body)));
        let size = obj.size() as usize;
        // Admitted or handed off, the object is readable by the requests waiting on this fill
        // before the lock is released (it is released after `finish` returns).
        self.storage.memory.fill(obj.clone());
        self.storage.write_behind(obj);
        Ok(MissFinishType::Created(size))
    }
}

#[async_trait]
impl Storage for EdgeStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = key.combined_bin();
        let (obj, tier) = match self.memory.get(&hash) {
            Some(obj) => (obj, "memory"),
            None => {
                count_lookup("memory", "miss");
                let Some(obj) = self.read_disk(hash).await else {
                    if self.disk.is_some() {
                        count_lookup("disk", "miss");
                    }
                    return Ok(None);
                };
                (Arc::new(obj), "disk")
            }
        };
        let meta = match CacheMeta::deserialize(&obj.meta.0, &obj.meta.1) {
            Ok(meta) => meta,
            Err(e) => {
                // Checksummed but unparsable: written by an incompatible version. Drop it.
                self.memory.remove(&hash);
                if let Some(disk) = &self.disk {
                    disk.discard_key(&hash, &e.to_string());
                }
                count_lookup(tier, "miss");
                return Ok(None);
            }
        };
        count_lookup(tier, freshness(&meta));
        if tier == "disk" {
            self.memory.promote(obj.clone());
        }
        let len = obj.body.len();
        let hit = Hit {
            body: obj.body.clone(),
            start: 0,
            end: len,
            done: false,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        // The origin always sends Content-Length: the buffer is allocated once, exactly.
        let declared = meta
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .filter(|&n| n <= self.max_object)
            .unwrap_or(0);
        Ok(Box::new(Fill {
            storage: self,
            key: key.combined_bin(),
            meta: meta.serialize()?,
            body: BytesMut::with_capacity(declared as usize),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if self.remove(target.key().combined_bin()).await {
            Ok(PurgeOutcome::Purged(None))
        } else {
            Ok(PurgeOutcome::NotFound)
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let hash = key.combined_bin();
        let body = match self.memory.get(&hash) {
            Some(old) => old.body.clone(),
            None => match self.read_disk(hash).await {
                Some(old) => old.body,
                None => return Ok(false),
            },
        };
        let obj = Arc::new(CachedObject::new(hash, meta.serialize()?, body));
        self.memory.fill(obj.clone());
        self.write_behind(obj);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
