//! Originals kept near: a bounded, byte-weighted cache of recently fetched originals, keyed by
//! image id, in front of the [`super::Source`].
//!
//! Ten new sizes of one image then cost one source GET, not ten, and concurrent misses for
//! different sizes of one id share one fetch (moka coalesces the loads of one key). In a
//! cluster the owner of an id makes all its variants, so this is where a POP's GETs per image
//! collapse to one.
//!
//! A purge of an id must drop its original too (the usual reason for a purge is that the image
//! behind the id changed). Rather than reaching into this cache from the purge path, each entry
//! carries the time its fetch began, and an entry whose fetch began at or before the id's purge
//! record ([`PurgeLog::is_purged`]) is discarded and fetched again. That also covers a fetch
//! that was in flight when the purge arrived, and durable purge records read from S3 later.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moka::future::Cache;
use once_cell::sync::Lazy;
use prometheus::{IntCounterVec, IntGauge, Opts};

use crate::cache::purge::PurgeLog;
use crate::error::Error;

use super::Original;

struct Entry {
    /// The original and its tag at the source (kept: variants' `ETag`s derive from it).
    original: Original,
    /// When the fetch that produced it began (compared with purge records).
    fetch_began: SystemTime,
}

/// The source cache; see the module docs.
pub struct SourceCache {
    entries: Cache<String, Arc<Entry>>,
    purges: Option<&'static PurgeLog>,
}

/// What a lookup cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Served from the cache, or from a fetch another request had started (no fetch of ours).
    Hit,
    /// This request fetched the original; it took this long.
    Fetched(Duration),
}

impl SourceCache {
    /// A cache holding at most `bytes` of originals (ids included), each for at most `ttl`;
    /// `None` when `bytes` is 0 (disabled).
    pub fn new(bytes: u64, ttl: Duration) -> Option<SourceCache> {
        (bytes > 0).then(|| SourceCache {
            entries: Cache::builder()
                .max_capacity(bytes)
                .weigher(|id: &String, e: &Arc<Entry>| {
                    u32::try_from(id.len() + e.original.bytes.len()).unwrap_or(u32::MAX)
                })
                .time_to_live(ttl)
                .build(),
            purges: None,
        })
    }

    /// Check entries against this purge log.
    pub fn with_purges(mut self, purges: &'static PurgeLog) -> Self {
        self.purges = Some(purges);
        self
    }

    fn purged(&self, id: &str, e: &Entry) -> bool {
        self.purges.is_some_and(|p| p.is_purged(id, e.fetch_began))
    }

    /// Keep `original`, fetched outside [`Self::get_or_fetch`] by a fetch that began at `began`
    /// (a conditional one that found it changed), unless a purge of `id` overtook that fetch.
    pub async fn insert(&self, id: &str, original: Original, began: SystemTime) {
        let entry = Arc::new(Entry {
            original,
            fetch_began: began,
        });
        if !self.purged(id, &entry) {
            self.entries.insert(id.to_string(), entry).await;
        }
    }

    /// The original of `id`: from the cache, from a fetch of the same id already in flight, or
    /// from `fetch` (called at most twice: again only when a purge overtook the first fetch).
    pub async fn get_or_fetch<F, Fut>(
        &self,
        id: &str,
        mut fetch: F,
    ) -> Result<(Original, Lookup), Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Original, Error>>,
    {
        for _ in 0..2 {
            let began = SystemTime::now();
            let started = Instant::now();
            let fut = fetch();
            let entry = self
                .entries
                .entry_by_ref(id)
                .or_try_insert_with(async move {
                    let original = fut.await?;
                    Ok::<_, Error>(Arc::new(Entry {
                        original,
                        fetch_began: began,
                    }))
                })
                .await
                .map_err(|e: Arc<Error>| (*e).clone())?;
            let fresh = entry.is_fresh();
            let value = entry.into_value();
            if self.purged(id, &value) {
                // Fetched before the id's purge: the image behind the id may have changed.
                self.entries.invalidate(id).await;
                source_cache_metrics()
                    .lookups
                    .with_label_values(&["purged"])
                    .inc();
                continue;
            }
            let m = source_cache_metrics();
            m.bytes.set(self.entries.weighted_size() as i64);
            return Ok(if fresh {
                m.lookups.with_label_values(&["miss"]).inc();
                (value.original.clone(), Lookup::Fetched(started.elapsed()))
            } else {
                m.lookups.with_label_values(&["hit"]).inc();
                (value.original.clone(), Lookup::Hit)
            });
        }
        // A purge overtook two fetches in a row: serve this fetch, keep nothing.
        let started = Instant::now();
        let original = fetch().await?;
        Ok((original, Lookup::Fetched(started.elapsed())))
    }
}

struct SourceCacheMetrics {
    lookups: IntCounterVec,
    bytes: IntGauge,
}

fn source_cache_metrics() -> &'static SourceCacheMetrics {
    static M: Lazy<SourceCacheMetrics> = Lazy::new(|| {
        let r = &crate::metrics::metrics().registry;
        let lookups = IntCounterVec::new(
            Opts::new(
                "imgedge_source_cache_lookups_total",
                "Originals asked of the source cache, by result (hit: cached or joined a fetch \
                 in flight; miss: fetched; purged: dropped because the id was purged since)",
            ),
            &["result"],
        )
        .expect("static metric");
        let bytes = IntGauge::new(
            "imgedge_source_cache_bytes",
            "Bytes of originals held by the source cache",
        )
        .expect("static metric");
        // A second registration (tests build several origins) keeps the first.
        let _ = r.register(Box::new(lookups.clone()));
        let _ = r.register(Box::new(bytes.clone()));
        SourceCacheMetrics { lookups, bytes }
    });
    &M
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn original(bytes: Bytes) -> Original {
        Original { bytes, etag: None }
    }

    async fn counting(calls: &AtomicUsize, body: &'static [u8]) -> Result<Original, Error> {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(original(Bytes::from_static(body)))
    }

    #[tokio::test]
    async fn concurrent_and_later_lookups_share_one_fetch() {
        let cache = SourceCache::new(1 << 20, Duration::from_secs(60)).unwrap();
        let calls = AtomicUsize::new(0);
        let lookups = (0..10).map(|_| cache.get_or_fetch("a", || counting(&calls, b"one")));
        let got = futures::future::join_all(lookups).await;
        assert!(got
            .iter()
            .all(|r| r.as_ref().unwrap().0.bytes == b"one"[..]));
        assert_eq!(
            got.iter()
                .filter(|r| matches!(r.as_ref().unwrap().1, Lookup::Fetched(_)))
                .count(),
            1
        );
        let (_, how) = cache
            .get_or_fetch("a", || counting(&calls, b"two"))
            .await
            .unwrap();
        assert_eq!(how, Lookup::Hit);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn errors_are_not_kept() {
        let cache = SourceCache::new(1 << 20, Duration::from_secs(60)).unwrap();
        let r = cache
            .get_or_fetch("a", || async { Err(Error::NotFound) })
            .await;
        assert!(matches!(r, Err(Error::NotFound)));
        let calls = AtomicUsize::new(0);
        let (b, _) = cache
            .get_or_fetch("a", || counting(&calls, b"ok"))
            .await
            .unwrap();
        assert_eq!(&b.bytes[..], b"ok");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_purge_drops_the_original_even_when_its_fetch_was_in_flight() {
        let purges: &'static PurgeLog =
            Box::leak(Box::new(PurgeLog::in_memory(Duration::from_secs(3600))));
        let cache = SourceCache::new(1 << 20, Duration::from_secs(60))
            .unwrap()
            .with_purges(purges);
        let calls = AtomicUsize::new(0);
        cache
            .get_or_fetch("a", || counting(&calls, b"old"))
            .await
            .unwrap();
        purges.purge("a").unwrap();
        let (b, how) = cache
            .get_or_fetch("a", || counting(&calls, b"new"))
            .await
            .unwrap();
        assert_eq!(
            (&b.bytes[..], matches!(how, Lookup::Fetched(_))),
            (&b"new"[..], true)
        );
        // A fetch that began before the purge and ends after it is not kept either.
        let slow = cache.get_or_fetch("b", || async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(original(Bytes::from_static(b"old")))
        });
        let purge = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            purges.purge("b").unwrap();
        };
        let (r, ()) = tokio::join!(slow, purge);
        // The first fetch was overtaken; the answer comes from a second fetch (same closure).
        assert_eq!(&r.unwrap().0.bytes[..], b"old");
        let (_, how) = cache
            .get_or_fetch("b", || counting(&calls, b"new"))
            .await
            .unwrap();
        assert_eq!(how, Lookup::Hit, "the refetch after the purge is kept");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_byte_bound_holds() {
        let cache = SourceCache::new(10_000, Duration::from_secs(60)).unwrap();
        for i in 0..100 {
            let id = format!("id{i}");
            cache
                .get_or_fetch(&id, || async { Ok(original(Bytes::from(vec![0u8; 1000]))) })
                .await
                .unwrap();
        }
        cache.entries.run_pending_tasks().await;
        assert!(
            cache.entries.weighted_size() <= 10_000,
            "{}",
            cache.entries.weighted_size()
        );
    }
}
