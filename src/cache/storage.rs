//! `pingora_cache::Storage` for the edge: lookups, fills, purges and meta updates over the tiers.
//!
//! Fills are buffered whole and published at `finish`: readers coalesced on the cache lock wait
//! for a complete object, and a fill that fails or is dropped half way never becomes visible, so
//! a truncated body is never served.

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

use super::memory::{CachedObject, MemoryTier, MAX_OBJECT};

/// The edge's storage: the memory tier (the disk tier comes under it).
pub struct EdgeStorage {
    memory: MemoryTier,
    max_object: u64,
}

impl EdgeStorage {
    /// Storage with a memory tier of `memory_bytes`, admitting objects up to `max_object` bytes.
    pub fn new(memory_bytes: u64, max_object: u64) -> Self {
        EdgeStorage {
            memory: MemoryTier::new(memory_bytes),
            max_object: max_object.min(MAX_OBJECT),
        }
    }

    /// The memory tier.
    pub fn memory(&self) -> &MemoryTier {
        &self.memory
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
        let obj = Arc::new(CachedObject {
            key: self.key,
            meta: self.meta,
            body: self.body.freeze(),
        });
        let size = obj.size() as usize;
        self.storage.memory.put(obj);
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
        let Some(obj) = self.memory.get(&key.combined_bin()) else {
            return Ok(None);
        };
        let meta = CacheMeta::deserialize(&obj.meta.0, &obj.meta.1)?;
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
        Ok(Box::new(Fill {
            storage: self,
            key: key.combined_bin(),
            meta: meta.serialize()?,
            body: BytesMut::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if self.memory.remove(&target.key().combined_bin()) {
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
        let Some(old) = self.memory.get(&hash) else {
            return Ok(false);
        };
        self.memory.put(Arc::new(CachedObject {
            key: hash,
            meta: meta.serialize()?,
            body: old.body.clone(),
        }));
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
