//! The shared result tier (`origin.results`): resized variants kept in an S3 bucket, so a new or
//! replaced node, or another POP, fills a miss from there instead of fetching the original and
//! resizing it again.
//!
//! - Lookup: before fetching an original, the origin GETs `{prefix}{id}/!/{hash}`, where the
//!   hash is of the variant's canonical cache key (`!` cannot occur in an id, so the objects of
//!   id `a` are exactly those under `{prefix}a/!/`). A result is served only when it was made
//!   after the id's last purge (the purge map of [`crate::cache::purge`]) and within the
//!   longest time an object is kept ([`Config::longest_keep`]): a purge record lives that long,
//!   so an older result could outlive the record of a purge that came after it.
//! - Write: after the origin produced a variant from the original, the result is queued for a
//!   background PUT (a bounded queue; when full it is dropped and counted). A node that filled
//!   from a peer never reaches its origin, so only the node that resized writes.
//! - Purge: the admin that receives a purge deletes the id's results (best effort, in the
//!   background; the purge-time check covers what a delete misses or races with), and a URL
//!   purge's one result before it answers.
//!
//! Each runtime (origin, writer, admin) builds its own client: connections stay on the runtime
//! that made them.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::BytesMut;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::{IntCounter, IntCounterVec, Opts};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, OnceCell, Semaphore};

use super::source::build_client as s3_client;
use super::Rendered;
use crate::cache::purge::PurgeLog;
use crate::config::{Config, S3Config};
use crate::variant::Variant;

/// Metadata key (`x-amz-meta-imgedge-created`) holding when the original was fetched.
const CREATED: &str = "imgedge-created";
/// Metadata key holding the body's `ETag` (hex, unquoted).
const ETAG: &str = "imgedge-etag";
/// Metadata key holding the original's tag at the source (for later revalidation).
const SOURCE_ETAG: &str = "imgedge-source-etag";
/// PUTs in flight at once from the writer.
const PUTS_IN_FLIGHT: usize = 8;
/// Pages of a listing walked per purge (1,000 keys each): an id has one object per variant.
const PURGE_PAGES: usize = 10;

/// The result tier's metrics, registered when the tier is configured.
struct ResultsMetrics {
    lookups: IntCounterVec,
    puts: IntCounterVec,
    dropped: IntCounter,
    deletes: IntCounterVec,
}

static METRICS: Lazy<ResultsMetrics> = Lazy::new(|| {
    let r = &crate::metrics::metrics().registry;
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric");
        r.register(Box::new(c.clone())).expect("registered once");
        c
    };
    let dropped = IntCounter::new(
        "imgedge_results_dropped_total",
        "Results not written because the write queue was full",
    )
    .expect("static metric");
    r.register(Box::new(dropped.clone()))
        .expect("registered once");
    ResultsMetrics {
        lookups: counter(
            "imgedge_results_lookups_total",
            "Result tier lookups, by result (hit, miss, stale: made before a purge or too old, \
             error, busy: no lookup slot)",
            &["result"],
        ),
        puts: counter(
            "imgedge_results_puts_total",
            "Results written, by result (ok, error)",
            &["result"],
        ),
        dropped,
        deletes: counter(
            "imgedge_results_deletes_total",
            "Results deleted by purges, by result (ok, error)",
            &["result"],
        ),
    }
});

/// One bucket and a lazily built client for it (built on the runtime that first uses it).
struct Bucket {
    config: S3Config,
    client: OnceCell<Client>,
}

impl Bucket {
    fn new(config: S3Config) -> Bucket {
        Bucket {
            config,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &Client {
        self.client.get_or_init(|| s3_client(&self.config)).await
    }

    fn name(&self) -> &str {
        &self.config.bucket
    }
}

/// A result waiting to be written.
struct Put {
    key: String,
    body: Vec<u8>,
    mime: &'static str,
    etag: String,
    source_etag: Option<String>,
    created: SystemTime,
}

/// The tier as the origin (lookups, queueing writes) and the admin (purges) use it.
pub struct Results {
    read: Bucket,
    purge: Bucket,
    prefix: String,
    lookup_timeout: Duration,
    /// Results older than this are not served (see the module docs).
    max_age: Duration,
    /// Larger results are neither read nor written (the cache would not keep them either).
    max_bytes: u64,
    purges: &'static PurgeLog,
    queue: mpsc::Sender<Put>,
    /// Lookups in flight, bounded like source fetches (`origin.max_fetches`).
    lookups: Semaphore,
}

/// The background service that writes queued results.
pub struct ResultsWriter {
    bucket: Arc<Bucket>,
    queue: Mutex<Option<mpsc::Receiver<Put>>>,
}

/// Seconds.nanoseconds since the epoch, as stored in the metadata.
fn stamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

fn parse_stamp(s: &str) -> Option<SystemTime> {
    let (secs, nanos) = s.split_once('.')?;
    Some(UNIX_EPOCH + Duration::new(secs.parse().ok()?, nanos.parse().ok()?))
}

/// Whether a result of `id` made at `created` may be served at `now`.
fn fresh(
    purges: &PurgeLog,
    id: &str,
    created: SystemTime,
    now: SystemTime,
    max_age: Duration,
) -> bool {
    let young = now
        .duration_since(created)
        .map_or(true, |age| age < max_age);
    young && !purges.is_purged(id, created)
}

impl Results {
    /// The tier for `cfg.origin.results` (None when unset) and its writer, reading purge times
    /// from `purges`.
    pub fn from_config(
        cfg: &Config,
        purges: &'static PurgeLog,
    ) -> Option<(Arc<Results>, ResultsWriter)> {
        let rc = cfg.origin.results.as_ref()?;
        let s3 = rc.resolve(&cfg.origin.s3);
        Lazy::force(&METRICS);
        let (tx, rx) = mpsc::channel(rc.queue);
        let results = Results {
            read: Bucket::new(s3.clone()),
            purge: Bucket::new(s3.clone()),
            prefix: rc.prefix.clone(),
            lookup_timeout: rc.lookup_timeout,
            max_age: cfg.longest_keep(),
            max_bytes: cfg.cache.max_object_bytes.as_u64(),
            purges,
            queue: tx,
            lookups: Semaphore::new(cfg.origin.max_fetches),
        };
        let writer = ResultsWriter {
            bucket: Arc::new(Bucket::new(s3)),
            queue: Mutex::new(Some(rx)),
        };
        Some((Arc::new(results), writer))
    }

    /// The object key of a variant's result.
    pub fn key(&self, variant: &Variant) -> String {
        let digest = Sha256::digest(variant.cache_key().as_bytes());
        format!(
            "{}{}/!/{}",
            self.prefix,
            variant.id,
            hex::encode(&digest[..16])
        )
    }

    /// The prefix every result of `id` is under.
    fn id_prefix(&self, id: &str) -> String {
        format!("{}{id}/!/", self.prefix)
    }

    /// The stored result of `variant`, if there is one that may be served. Any failure is a
    /// miss (logged and counted): the caller renders the variant itself.
    pub async fn lookup(&self, variant: &Variant) -> Option<Rendered> {
        let Ok(_slot) = self.lookups.try_acquire() else {
            METRICS.lookups.with_label_values(&["busy"]).inc();
            return None;
        };
        let key = self.key(variant);
        let got = tokio::time::timeout(self.lookup_timeout, self.get(&variant.id, &key)).await;
        let (label, found) = match got {
            Ok(Ok(Some(Lookup::Hit(r)))) => ("hit", Some(r)),
            Ok(Ok(Some(Lookup::Stale))) => ("stale", None),
            Ok(Ok(None)) => ("miss", None),
            Ok(Err(msg)) => {
                tracing::warn!(bucket = %self.read.name(), key, "result lookup failed: {msg}");
                ("error", None)
            }
            Err(_) => {
                tracing::warn!(bucket = %self.read.name(), key, "result lookup timed out");
                ("error", None)
            }
        };
        METRICS.lookups.with_label_values(&[label]).inc();
        found
    }

    async fn get(&self, id: &str, key: &str) -> Result<Option<Lookup>, String> {
        let out = match self
            .read
            .client()
            .await
            .get_object()
            .bucket(self.read.name())
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(SdkError::ServiceError(se))
                if matches!(se.raw().status().as_u16(), 403 | 404) || se.err().is_no_such_key() =>
            {
                // 403: a role without s3:ListBucket is told AccessDenied for a missing key.
                return Ok(None);
            }
            Err(e) => return Err(aws_sdk_s3::error::DisplayErrorContext(&e).to_string()),
        };
        let modified = out
            .last_modified()
            .and_then(|t| SystemTime::try_from(*t).ok());
        let meta = out.metadata();
        let written = meta
            .and_then(|m| m.get(CREATED))
            .and_then(|s| parse_stamp(s));
        // The older of the two: S3's clock (truncated to seconds) and the writer's record of
        // when it fetched the original (a write that raced a purge is older than the purge).
        let created = match (written, modified) {
            (Some(a), Some(b)) => a.min(b),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => return Ok(Some(Lookup::Stale)),
        };
        if !fresh(self.purges, id, created, SystemTime::now(), self.max_age) {
            return Ok(Some(Lookup::Stale));
        }
        let mime = match out.content_type() {
            Some("image/jpeg") => "image/jpeg",
            Some("image/png") => "image/png",
            Some("image/webp") => "image/webp",
            other => return Err(format!("unexpected content type {other:?}")),
        };
        let etag = meta
            .and_then(|m| m.get(ETAG))
            .filter(|e| e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|e| format!("\"{e}\""))
            .ok_or("no etag in the metadata")?;
        let source_etag = meta
            .and_then(|m| m.get(SOURCE_ETAG))
            .filter(|e| !e.is_empty() && e.len() <= 256 && e.is_ascii())
            .cloned();
        let declared = out.content_length().unwrap_or(0).max(0) as u64;
        if declared > self.max_bytes {
            return Err(format!("{declared} bytes, over cache.max_object_bytes"));
        }
        let mut body = out.body;
        let mut buf = BytesMut::with_capacity(declared as usize);
        while let Some(chunk) = body.try_next().await.map_err(|e| format!("body: {e}"))? {
            if (buf.len() + chunk.len()) as u64 > self.max_bytes {
                return Err("body over cache.max_object_bytes".into());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Some(Lookup::Hit(Rendered {
            body: buf.to_vec(),
            mime,
            etag,
            source_etag,
        })))
    }

    /// Queue `rendered` (made from an original fetched at `created`) for writing. Never waits:
    /// when the queue is full the result is dropped and counted.
    pub fn store(&self, variant: &Variant, rendered: &Rendered, created: SystemTime) {
        if rendered.body.len() as u64 > self.max_bytes {
            return;
        }
        // Reserve first, so the body is copied only when it will be written.
        let Ok(slot) = self.queue.try_reserve() else {
            METRICS.dropped.inc();
            return;
        };
        slot.send(Put {
            key: self.key(variant),
            body: rendered.body.clone(),
            mime: rendered.mime,
            etag: rendered.etag.trim_matches('"').to_string(),
            source_etag: rendered.source_etag.clone(),
            created,
        });
    }

    /// Delete every result of `id`, in the background (best effort: the purge-time check
    /// covers a result this misses).
    pub fn forget_id(self: &Arc<Self>, id: &str) {
        let (this, prefix) = (self.clone(), self.id_prefix(id));
        tokio::spawn(async move {
            if let Err(e) = this.delete_prefix(&prefix).await {
                tracing::warn!(bucket = %this.purge.name(), prefix, "deleting results failed: {e}");
            }
        });
    }

    /// Delete the result of one variant (a URL purge), within the lookup timeout.
    pub async fn forget_variant(&self, variant: &Variant) {
        if variant.transform.is_none() {
            return;
        }
        let key = self.key(variant);
        let deleted = tokio::time::timeout(self.lookup_timeout, self.delete(&key)).await;
        match deleted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(bucket = %self.purge.name(), key, "deleting a result failed: {e}")
            }
            Err(_) => {
                METRICS.deletes.with_label_values(&["error"]).inc();
                tracing::warn!(bucket = %self.purge.name(), key, "deleting a result timed out");
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        let sent = self
            .purge
            .client()
            .await
            .delete_object()
            .bucket(self.purge.name())
            .key(key)
            .send()
            .await;
        let label = if sent.is_ok() { "ok" } else { "error" };
        METRICS.deletes.with_label_values(&[label]).inc();
        sent.map(|_| ())
            .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(&e).to_string())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), String> {
        let mut token: Option<String> = None;
        for _ in 0..PURGE_PAGES {
            let page = self
                .purge
                .client()
                .await
                .list_objects_v2()
                .bucket(self.purge.name())
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| {
                    METRICS.deletes.with_label_values(&["error"]).inc();
                    aws_sdk_s3::error::DisplayErrorContext(&e).to_string()
                })?;
            for key in page.contents().iter().filter_map(|o| o.key()) {
                self.delete(key).await?;
            }
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(())
    }
}

/// What a GET of a result found.
enum Lookup {
    Hit(Rendered),
    /// There, but made before the id's last purge or too long ago.
    Stale,
}

async fn put(bucket: &Bucket, p: Put) {
    let mut req = bucket
        .client()
        .await
        .put_object()
        .bucket(bucket.name())
        .key(&p.key)
        .content_type(p.mime)
        .metadata(CREATED, stamp(p.created))
        .metadata(ETAG, &p.etag);
    if let Some(tag) = &p.source_etag {
        req = req.metadata(SOURCE_ETAG, tag);
    }
    let sent = req.body(ByteStream::from(p.body)).send().await;
    let label = match &sent {
        Ok(_) => "ok",
        Err(e) => {
            tracing::warn!(
                bucket = %bucket.name(),
                key = %p.key,
                "writing a result failed: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            );
            "error"
        }
    };
    METRICS.puts.with_label_values(&[label]).inc();
}

#[async_trait]
impl BackgroundService for ResultsWriter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut queue) = self.queue.lock().take() else {
            return;
        };
        // PUTs run concurrently (bounded) on this service's runtime; at shutdown the queued
        // rest is dropped: results are an optimisation, never a duty.
        let in_flight = Arc::new(Semaphore::new(PUTS_IN_FLIGHT));
        loop {
            let p = tokio::select! {
                p = queue.recv() => match p { Some(p) => p, None => break },
                _ = shutdown.changed() => break,
            };
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let bucket = self.bucket.clone();
            tokio::spawn(async move {
                put(&bucket, p).await;
                drop(permit);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_made_before_a_purge_or_too_long_ago_are_not_served() {
        let purges = PurgeLog::in_memory(Duration::from_secs(3600));
        let hour = Duration::from_secs(3600);
        let made = SystemTime::now() - Duration::from_secs(5);
        assert!(fresh(&purges, "a", made, SystemTime::now(), hour));
        purges.purge("a").unwrap();
        assert!(
            !fresh(&purges, "a", made, SystemTime::now(), hour),
            "purged since"
        );
        assert!(
            fresh(&purges, "b", made, SystemTime::now(), hour),
            "other ids unaffected"
        );
        let later = SystemTime::now() + Duration::from_millis(5);
        assert!(
            fresh(&purges, "a", later, later, hour),
            "made after the purge"
        );
        let old = SystemTime::now() - 2 * hour;
        assert!(
            !fresh(&purges, "b", old, SystemTime::now(), hour),
            "older than a purge record lives"
        );
        assert_eq!(parse_stamp(&stamp(made)), Some(made));
    }
}
