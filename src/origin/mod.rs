//! The origin service: the edge's upstream for misses, on a Unix socket in the same process.
//!
//! It answers `GET /image/{id}?<canonical query>` by fetching the original from the
//! [`source`], producing the variant on the [`pool`] with [`transform`], and labelling the answer
//! with `ETag` and `Cache-Control` so the edge's cache and clients' caches know what to keep.
//! Errors become one-line text answers with the status from [`Error::status`]; the ones that are
//! a property of the original (404, 422) carry the short negative TTL.
//!
//! Revalidation: a variant's `ETag` is derived from its original's tag at the source (S3's
//! `ETag`, a file's size and mtime), its canonical key and the transform's version, so it is
//! known before any work. The answer also carries the original's tag ([`SOURCE_ETAG`]), which
//! the edge keeps with the cached object. When an expired object is revalidated, the edge
//! sends both back; if they still belong together, the origin asks the source "changed since?"
//! (If-None-Match) and, when it has not, answers 304 without fetching the bytes or resizing.

pub mod mezzanine;
pub mod pool;
pub mod results;
pub mod source;
pub mod transform;
pub mod upgrade;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use sha2::{Digest, Sha256};

use crate::cache::purge::PurgeLog;
use crate::config::{Config, SourceKind};
use crate::error::{Error, Result};
use crate::metrics::metrics;
use crate::variant::{self, AcceptClass, OutputFormat, ParseOptions, Variant};
use mezzanine::Mezzanines;
use pool::ResizePool;
use results::Results;
use source::{
    Fallback, Fetched, KeyTemplate, LocalSource, Lookup, S3Source, Source, SourceCache, SourceError,
};
use transform::{TransformLimits, TransformSettings};
use upgrade::{Found, Upgrades};

/// A successful answer: the bytes and their type.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Body.
    pub body: Vec<u8>,
    /// `Content-Type`.
    pub mime: &'static str,
    /// The variant's strong `ETag`: derived from the original's tag when the source gave one,
    /// else a hash of the body computed on the resize thread (CPU work; the origin's async
    /// threads only move bytes).
    pub etag: String,
    /// The original's tag at the source, sent as [`SOURCE_ETAG`] for later revalidation.
    pub source_etag: Option<String>,
}

/// The tags of a cached variant, as the edge sends them when revalidating it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    /// The variant's `ETag` (the request's `If-None-Match`).
    pub etag: String,
    /// Its original's tag at the source ([`SOURCE_ETAG`]).
    pub source_etag: String,
}

/// The origin's answer to one canonical request.
#[derive(Debug)]
pub enum Answer {
    /// The variant (200).
    Body(Rendered),
    /// The edge's cached variant is still current (304): its original did not change.
    NotModified(Validators),
    /// A WebP standing in for an AVIF being made ([`upgrade`]): 200 with a short TTL, not kept
    /// by the edge.
    Interim(Rendered),
}

/// The internal header carrying the original's tag at the source with each variant, from the
/// origin to the edge's cache and back on revalidation. Never sent to clients.
pub const SOURCE_ETAG: http::HeaderName = http::HeaderName::from_static("x-imgedge-source-etag");

/// Bumped whenever the same original and variant key may come out as other bytes without a
/// release (the package version is part of every derived tag as well), so that caches refetch
/// instead of revalidating to the old bytes.
const TRANSFORM_VERSION: &str = "2";

/// Where a miss spent its time; sent to the edge as `Server-Timing` (`fetch`, `resize`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    /// Fetching the original from the source, retries included.
    pub fetch: Option<Duration>,
    /// Decoding, resizing and encoding on the pool (queueing excluded).
    pub resize: Option<Duration>,
}

impl Timings {
    /// The `Server-Timing` header value, e.g. `fetch;dur=12.1, resize;dur=30.4`.
    pub fn header(&self) -> Option<String> {
        let parts: Vec<String> = [("fetch", self.fetch), ("resize", self.resize)]
            .into_iter()
            .filter_map(|(n, d)| d.map(|d| format!("{n};dur={:.1}", d.as_secs_f64() * 1000.0)))
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// Parse a `Server-Timing` value written by [`Timings::header`].
    pub fn parse(value: &str) -> Timings {
        let mut t = Timings::default();
        for part in value.split(',') {
            let Some((name, dur)) = part.trim().split_once(";dur=") else {
                continue;
            };
            let d = dur
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|ms| Duration::from_secs_f64(ms / 1000.0));
            match name {
                "fetch" => t.fetch = d,
                "resize" => t.resize = d,
                _ => {}
            }
        }
        t
    }
}

/// The origin: source, pool and labelling policy.
pub struct Origin {
    source: Arc<dyn Source>,
    /// Recently fetched originals by id (`origin.source_cache_bytes`; `None` when 0).
    originals: Option<SourceCache>,
    template: KeyTemplate,
    pool: ResizePool,
    /// Fetches in flight, bounded apart from the pool (`origin.max_fetches`).
    fetches: Arc<tokio::sync::Semaphore>,
    retry_after: Duration,
    parse: ParseOptions,
    settings: TransformSettings,
    /// Decoded originals kept for further sizes (`transform.mezzanine_bytes`; `None` when 0).
    mezzanines: Option<Arc<Mezzanines>>,
    max_source_bytes: u64,
    fetch_timeout: Duration,
    cache_control: String,
    negative_cache_control: String,
    /// The shared result tier (`origin.results`), if configured.
    results: Option<Arc<Results>>,
    /// AVIF encodes: their pool and the background upgrades.
    upgrades: Upgrades,
    /// What else decides a variant's bytes besides its original and key: transform version,
    /// package version and settings; part of every derived `ETag`.
    etag_seed: String,
}

impl Origin {
    /// Build the origin from a validated config. No I/O happens until the first request.
    pub fn from_config(cfg: &Config) -> Result<Origin> {
        let source: Arc<dyn Source> = match cfg.origin.source {
            SourceKind::Local => Arc::new(LocalSource::new(cfg.origin.local.root.clone())),
            SourceKind::S3 => match &cfg.origin.s3.fallback {
                None => Arc::new(S3Source::new(cfg.origin.s3.clone())),
                Some(f) => Arc::new(Fallback::new(
                    Box::new(S3Source::new(cfg.origin.s3.clone())),
                    &cfg.origin.s3.bucket,
                    Box::new(S3Source::new(f.resolve(&cfg.origin.s3))),
                    &f.bucket,
                    f.primary_share(cfg.origin.fetch_timeout),
                )),
            },
        };
        Origin::new(cfg, source)
    }

    /// Build the origin around a given source (tests and benches use their own).
    pub fn new(cfg: &Config, source: Arc<dyn Source>) -> Result<Origin> {
        let template = KeyTemplate::parse(&cfg.origin.key_template)
            .map_err(|m| Error::Internal(format!("origin.key_template: {m}")))?;
        let settings = TransformSettings {
            limits: TransformLimits {
                max_source_pixels: cfg.limits.max_source_pixels,
                max_frames: cfg.limits.max_frames,
                max_metadata_bytes: cfg.limits.max_metadata_bytes.as_u64(),
            },
            background: cfg.transform.background_rgb(),
            default_quality: cfg.transform.default_quality,
            avif_speed: cfg.transform.avif_speed,
            planar_jpeg: cfg.transform.planar_jpeg,
        };
        Ok(Origin {
            source,
            originals: SourceCache::new(
                cfg.origin.source_cache_bytes.as_u64(),
                cfg.origin.source_cache_ttl,
            ),
            template,
            pool: ResizePool::new(
                cfg.transform.worker_count(),
                cfg.transform.queue,
                cfg.transform.retry_after,
            ),
            fetches: Arc::new(tokio::sync::Semaphore::new(cfg.origin.max_fetches)),
            retry_after: cfg.transform.retry_after,
            parse: cfg.parse_options(),
            settings,
            mezzanines: match cfg.transform.mezzanine_bytes.as_u64() {
                0 => None,
                n => Some(Arc::new(Mezzanines::new(n))),
            },
            etag_seed: format!(
                "{TRANSFORM_VERSION}/{}/{settings:?}",
                env!("CARGO_PKG_VERSION")
            ),
            max_source_bytes: cfg.limits.max_source_bytes.as_u64(),
            fetch_timeout: cfg.origin.fetch_timeout,
            cache_control: cfg.origin.cache_control.clone(),
            negative_cache_control: format!(
                "public, max-age={}",
                cfg.origin.negative_ttl.as_secs()
            ),
            results: None,
            upgrades: Upgrades::from_config(cfg),
        })
    }

    /// Look variants up in, and write them to, the shared result tier.
    pub fn with_results(mut self, results: Option<Arc<Results>>) -> Self {
        self.results = results;
        self
    }

    /// Check the source cache's entries against this node's purge records (an id purged since
    /// its original was fetched is fetched again).
    pub fn with_purges(mut self, purges: &'static PurgeLog) -> Self {
        self.originals = self.originals.map(|c| c.with_purges(purges));
        self.upgrades = self.upgrades.with_purges(purges);
        self
    }

    /// The variant's `ETag` for an original with tag `source_etag`: equal inputs, equal tag,
    /// across nodes and restarts of one version.
    fn variant_etag(&self, source_etag: &str, canonical_uri: &str) -> String {
        let mut h = Sha256::new();
        for part in [self.etag_seed.as_str(), source_etag, canonical_uri] {
            // Length-prefixed, so no two different triples hash the same bytes.
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        format!("\"{}\"", hex::encode(&h.finalize()[..16]))
    }

    /// The original of `id`: from the source cache, or fetched (holding a fetch permit only
    /// while it really fetches; requests joining a fetch in flight hold none). With
    /// `if_none_match` (revalidating) the source itself is asked "changed since?": the answer
    /// is small either way, and a changed original replaces the one the cache may hold.
    async fn original(
        &self,
        id: &str,
        if_none_match: Option<&str>,
        timings: &mut Timings,
    ) -> Result<Fetched> {
        let cache = match (&self.originals, if_none_match) {
            (Some(cache), None) => cache,
            (cache, _) => {
                let began = SystemTime::now();
                let started = Instant::now();
                let got = self.fetch_permitted(id, if_none_match).await;
                timings.fetch = Some(started.elapsed());
                if let (Some(cache), Ok(Fetched::Body(o))) = (cache, &got) {
                    cache.insert(id, o.clone(), began).await;
                }
                return got;
            }
        };
        let (original, how) = cache
            .get_or_fetch(id, || async {
                self.fetch_permitted(id, None)
                    .await?
                    .into_body()
                    .ok_or_else(|| Error::Upstream("source answered 304 to a plain GET".into()))
            })
            .await?;
        if let Lookup::Fetched(took) = how {
            timings.fetch = Some(took);
        }
        Ok(Fetched::Body(original))
    }

    async fn fetch_permitted(&self, id: &str, if_none_match: Option<&str>) -> Result<Fetched> {
        let _permit = self.fetches.clone().try_acquire_owned().map_err(|_| {
            metrics().fetches_rejected.inc();
            Error::Busy {
                retry_after: self.retry_after,
            }
        })?;
        self.fetch(id, if_none_match).await
    }

    /// Fetch the original of `id` from the source; conditional on its tag when `if_none_match`
    /// is given.
    async fn fetch(&self, id: &str, if_none_match: Option<&str>) -> Result<Fetched> {
        let key = self.template.render(id);
        let kind = self.source.kind();
        let started = Instant::now();
        let fetched = tokio::time::timeout(
            self.fetch_timeout,
            self.source
                .fetch(&key, self.max_source_bytes, if_none_match),
        )
        .await
        .unwrap_or(Err(SourceError::Timeout));
        let label = match &fetched {
            Ok(Fetched::Body(_)) => "ok",
            Ok(Fetched::NotModified) => "not_modified",
            Err(SourceError::NotFound) => "not_found",
            Err(SourceError::TooLarge { .. }) => "too_large",
            Err(SourceError::Timeout) => "timeout",
            Err(SourceError::Failed(_)) => "error",
        };
        let took = started.elapsed();
        metrics()
            .source_fetches
            .with_label_values(&[kind, label])
            .inc();
        metrics()
            .fetch_duration
            .with_label_values(&[kind, label])
            .observe(took.as_secs_f64());
        if let Err(SourceError::Failed(msg)) = &fetched {
            tracing::warn!(source = kind, key = %key, "fetch failed: {msg}");
        }
        Ok(fetched?)
    }

    /// Produce the answer for one canonical request; `cached` are the tags of the edge's copy
    /// when it is revalidating one.
    pub async fn render(
        &self,
        path: &str,
        query: Option<&str>,
        cached: Option<&Validators>,
        timings: &mut Timings,
    ) -> Result<Answer> {
        let variant = Variant::parse(path, query, &self.parse)?;
        let canonical = variant.canonical_uri();
        // Ask the source "changed since?" only when the cached tag is the one its original's
        // tag gives for this variant today: another transform version or settings mean other
        // bytes, and a 304 from the source would then leave nothing to answer with.
        let revalidating =
            cached.filter(|c| self.variant_etag(&c.source_etag, &canonical) == c.etag);
        // The result tier holds resized variants only; a hit needs no original and no resize.
        // An edge revalidating its copy asks the source instead (a 304 moves no bytes).
        let results = self
            .results
            .as_ref()
            .filter(|_| variant.transform.is_some());
        if let (Some(r), None) = (results, revalidating) {
            if let Some(hit) = r.lookup(&variant).await {
                return Ok(Answer::Body(hit));
            }
        }
        // A negotiated AVIF whose upgrade is under way or done: no fetch, no work.
        if revalidating.is_none() && variant.transform.is_some_and(|t| negotiated_avif(&t)) {
            match self.upgrades.lookup(&variant.cache_key()) {
                Some(Found::Avif(avif)) => {
                    if let Some(r) = results {
                        r.store(&variant, &avif, SystemTime::now());
                    }
                    return Ok(Answer::Body(avif));
                }
                Some(Found::Interim(webp)) => return Ok(Answer::Interim(webp)),
                None => {}
            }
        }
        let fetched_at = SystemTime::now();
        // A fetch waits on the source, not on a CPU: it takes a fetch permit, and a pool slot
        // only once its original is here, so a slow source cannot fill the pool (and answer
        // 503) while the resize threads idle.
        let fetched = self
            .original(
                &variant.id,
                revalidating.map(|c| c.source_etag.as_str()),
                timings,
            )
            .await?;
        let original = match (fetched, revalidating) {
            (Fetched::Body(o), _) => o,
            (Fetched::NotModified, Some(c)) => return Ok(Answer::NotModified(c.clone())),
            (Fetched::NotModified, None) => {
                return Err(Error::Upstream("source answered 304 to a plain GET".into()))
            }
        };
        let slot = self.pool.admit()?;
        let settings = self.settings;
        // Known before the work; only a source without tags makes the resize thread hash the
        // output instead.
        let known_etag = original
            .etag
            .as_deref()
            .map(|t| self.variant_etag(t, &canonical));
        let source_etag = original.etag;
        let original = original.bytes;
        match variant.transform {
            None => {
                // Served as stored, but only if it is an image whose header is within limits
                // and whose bytes end where the image ends: never pass HTML, an S3 error body
                // or a polyglot (image + trailing ZIP/HTML) through under an image URL.
                // Anything with trailing bytes, or a format without a defined end (TIFF), is
                // re-encoded at its own size instead.
                let (mime, body, etag) = self
                    .pool
                    .run(&slot, move || {
                        let format = transform::require_image(&original)?;
                        transform::decode::validate(&original, format, &settings.limits)?;
                        let end = transform::container::image_end(&original, format);
                        if end == Some(original.len()) {
                            let tag = known_etag.unwrap_or_else(|| etag(&original));
                            return Ok((format.mime(), Vec::from(original), tag));
                        }
                        tracing::debug!(?end, len = original.len(), "re-encoding an original");
                        let t = variant::Transform {
                            resize: None,
                            format: None,
                            negotiated: None,
                            quality: Some(settings.default_quality),
                        };
                        let out = transform::transform(&original, &t, &settings)?;
                        let tag = known_etag.unwrap_or_else(|| etag(&out.bytes));
                        Ok((out.format.mime(), out.bytes, tag))
                    })
                    .await?;
                Ok(Answer::Body(Rendered {
                    // Reuses the fetched buffer when nothing else holds it (no copy).
                    body,
                    mime,
                    etag,
                    source_etag,
                }))
            }
            Some(t) => {
                // The original's identity for the mezzanine cache: its id and tag (no tag, no
                // identity that follows its bytes, so no cache).
                let mezzanine = self.mezzanines.clone().zip(
                    source_etag
                        .as_deref()
                        .map(|e| format!("{}\n{e}", variant.id)),
                );
                let prepare = move |original: &[u8]| match &mezzanine {
                    Some((m, key)) => m.prepare(key, original, &t, &settings),
                    None => transform::prepare(original, &t, &settings),
                };
                if wants_avif(&t) {
                    return self
                        .render_avif(
                            &variant,
                            t,
                            slot,
                            original,
                            prepare,
                            known_etag,
                            source_etag,
                            fetched_at,
                            timings,
                        )
                        .await;
                }
                let (out, etag, took) = self
                    .pool
                    .run(&slot, move || {
                        let started = Instant::now();
                        let out = prepare(&original)?.encode()?;
                        let tag = known_etag.unwrap_or_else(|| etag(&out.bytes));
                        Ok((out, tag, started.elapsed()))
                    })
                    .await?;
                timings.resize = Some(took);
                count_transform(out.format, Some(took));
                let rendered = Rendered {
                    body: out.bytes,
                    mime: out.format.mime(),
                    etag,
                    source_etag,
                };
                if let Some(r) = results {
                    r.store(&variant, &rendered, fetched_at);
                }
                Ok(Answer::Body(rendered))
            }
        }
    }

    /// An AVIF variant (`format=avif`, or the `avif` class of `format=auto`): prepared on the
    /// resize pool, encoded on the AVIF pool. A negotiated one in deferred mode, or when the
    /// AVIF pool is full, answers the interim WebP instead ([`upgrade`]).
    #[allow(clippy::too_many_arguments)]
    async fn render_avif(
        &self,
        variant: &Variant,
        t: variant::Transform,
        slot: pool::Slot,
        original: bytes::Bytes,
        prepare: impl FnOnce(&[u8]) -> Result<transform::Prepared> + Send + 'static,
        known_etag: Option<String>,
        source_etag: Option<String>,
        fetched_at: SystemTime,
        timings: &mut Timings,
    ) -> Result<Answer> {
        let negotiated = t.format.is_none();
        let deferred = negotiated && self.upgrades.deferred();
        let (prepared, interim, took) = self
            .pool
            .run(&slot, move || {
                let started = Instant::now();
                let prepared = prepare(&original)?;
                let interim = match deferred {
                    true => Some(interim_of(&prepared)?),
                    false => None,
                };
                Ok((prepared, interim, started.elapsed()))
            })
            .await?;
        timings.resize = Some(took);
        let key = variant.cache_key();
        let label = {
            let source_etag = source_etag.clone();
            move |body: Vec<u8>| Rendered {
                etag: known_etag.unwrap_or_else(|| etag(&body)),
                body,
                mime: OutputFormat::Avif.mime(),
                source_etag,
            }
        };
        // Inline: wait for the AVIF pool, or stand the WebP in when it is full (an explicit
        // `format=avif` has no stand-in: 503).
        let avif_slot = match deferred {
            true => None,
            false => match self.upgrades.pool().admit() {
                Ok(s) => Some(s),
                Err(e) if !negotiated => return Err(e),
                Err(_) => None,
            },
        };
        let Some(avif_slot) = avif_slot else {
            let (prepared, interim) = match interim {
                Some(i) => (prepared, i),
                None => {
                    self.pool
                        .run(&slot, move || {
                            let i = interim_of(&prepared)?;
                            Ok((prepared, i))
                        })
                        .await?
                }
            };
            drop(slot);
            let answer = self.defer(
                variant,
                key,
                fetched_at,
                prepared,
                interim,
                source_etag,
                label,
            );
            return Ok(answer);
        };
        drop(slot);
        let (avif, took) = self
            .upgrades
            .pool()
            .run(&avif_slot, move || {
                let started = Instant::now();
                let avif = label(prepared.encode()?.bytes);
                Ok((avif, started.elapsed()))
            })
            .await?;
        timings.resize = timings.resize.map(|r| r + took);
        count_transform(OutputFormat::Avif, Some(took));
        if let Some(r) = self.results.as_ref() {
            r.store(variant, &avif, fetched_at);
        }
        Ok(Answer::Body(avif))
    }

    /// Answer `interim` and queue the AVIF upgrade of `prepared`.
    #[allow(clippy::too_many_arguments)]
    fn defer(
        &self,
        variant: &Variant,
        key: String,
        fetched_at: SystemTime,
        prepared: transform::Prepared,
        (interim, interim_etag): (transform::Output, String),
        source_etag: Option<String>,
        label: impl FnOnce(Vec<u8>) -> Rendered + Send + 'static,
    ) -> Answer {
        count_transform(interim.format, None);
        let rendered = Rendered {
            etag: interim_etag,
            body: interim.bytes,
            mime: interim.format.mime(),
            source_etag,
        };
        self.upgrades.defer(
            key,
            variant.id.clone(),
            fetched_at,
            prepared,
            rendered.clone(),
            label,
        );
        Answer::Interim(rendered)
    }

    /// Readiness of the source, within `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Result<()> {
        tokio::time::timeout(timeout, self.source.probe())
            .await
            .unwrap_or(Err(SourceError::Timeout))
            .map_err(Error::from)
    }

    /// Turn a result into the HTTP answer.
    pub fn respond(&self, result: Result<Answer>, timings: Timings) -> Response<Vec<u8>> {
        let built = match result {
            Ok(Answer::Body(r)) => {
                let b = Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", r.mime)
                    .header("content-length", r.body.len())
                    .header("etag", r.etag)
                    .header("cache-control", &self.cache_control)
                    .header("x-content-type-options", "nosniff");
                match r.source_etag {
                    Some(t) => b.header(SOURCE_ETAG, t),
                    None => b,
                }
                .body(r.body)
            }
            // Not kept by the edge (INTERIM), briefly by clients and downstream caches.
            Ok(Answer::Interim(r)) => {
                let b = Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", r.mime)
                    .header("content-length", r.body.len())
                    .header("etag", r.etag)
                    .header(
                        "cache-control",
                        format!("public, max-age={}", self.upgrades.interim_ttl().as_secs()),
                    )
                    .header(upgrade::INTERIM, "avif")
                    .header("x-content-type-options", "nosniff");
                b.body(r.body)
            }
            // The edge merges Cache-Control into its cached header and restarts the TTL.
            Ok(Answer::NotModified(v)) => Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .header("etag", v.etag)
                .header(SOURCE_ETAG, v.source_etag)
                .header("cache-control", &self.cache_control)
                .body(Vec::new()),
            Err(e) => {
                if e.status() >= 500 {
                    tracing::warn!("origin answered {}: {e}", e.status());
                }
                let cc = if e.is_negative_cacheable() {
                    self.negative_cache_control.as_str()
                } else {
                    "no-store"
                };
                let body = format!("{}\n", e.reason()).into_bytes();
                let mut b = Response::builder()
                    .status(e.status())
                    .header("content-type", "text/plain; charset=utf-8")
                    .header("content-length", body.len())
                    .header("cache-control", cc)
                    .header("x-content-type-options", "nosniff");
                if let Error::Busy { retry_after } = e {
                    b = b.header("retry-after", retry_after.as_secs().max(1));
                }
                b.body(body)
            }
        };
        let built = built.map(|mut r| {
            // For the edge's access log; the edge removes it before caching.
            if let Some(v) = timings
                .header()
                .and_then(|v| http::HeaderValue::from_str(&v).ok())
            {
                r.headers_mut().insert(SERVER_TIMING, v);
            }
            r
        });
        built.unwrap_or_else(|e| {
            tracing::error!("building origin response: {e}");
            let mut r = Response::new(b"internal error\n".to_vec());
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
    }
}

/// The origin service's readiness path (not an image path, so no client URL reaches it; the
/// origin listens only on its Unix socket anyway).
pub const PROBE_PATH: &str = "/.probe";

/// The header carrying [`Timings`] from the origin to the edge.
pub const SERVER_TIMING: http::HeaderName = http::HeaderName::from_static("server-timing");

/// Whether `t` is encoded as AVIF (explicitly, or as the `avif` class).
fn wants_avif(t: &variant::Transform) -> bool {
    t.format == Some(OutputFormat::Avif) || negotiated_avif(t)
}

/// Whether `t` is `format=auto` in the `avif` class.
fn negotiated_avif(t: &variant::Transform) -> bool {
    t.format.is_none() && t.negotiated == Some(AcceptClass::Avif)
}

/// The WebP that stands in for `prepared`'s AVIF, and its tag (a hash: it must differ from
/// the AVIF's).
fn interim_of(prepared: &transform::Prepared) -> Result<(transform::Output, String)> {
    let out = prepared.encode_as(OutputFormat::Webp)?;
    let tag = etag(&out.bytes);
    Ok((out, tag))
}

/// Count a produced variant, and its CPU time when it was made here and now.
fn count_transform(format: OutputFormat, took: Option<Duration>) {
    let format = format.as_str();
    metrics().transforms.with_label_values(&[format]).inc();
    if let Some(took) = took {
        metrics()
            .resize_duration
            .with_label_values(&[format])
            .observe(took.as_secs_f64());
    }
}

/// A strong validator from the content: equal bytes, equal tag, across nodes and restarts.
fn etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("\"{}\"", hex::encode(&digest[..16]))
}

/// The origin as a Pingora HTTP app.
pub struct OriginApp(pub Arc<Origin>);

#[async_trait]
impl ServeHttp for OriginApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.uri.path() == PROBE_PATH {
            // The admin listener's /readyz: this service answers, and so does the source.
            let (status, body) = match self.0.probe(Duration::from_secs(2)).await {
                Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("source: {e}\n")),
            };
            return Response::builder()
                .status(status)
                .header("content-length", body.len())
                .body(body.into_bytes())
                .unwrap_or_else(|_| Response::new(Vec::new()));
        }
        let mut timings = Timings::default();
        let result = if req.method != http::Method::GET {
            Err(Error::MethodNotAllowed)
        } else {
            let (path, query) = (
                req.uri.path().to_string(),
                req.uri.query().map(str::to_string),
            );
            // Only the edge reaches this socket: both headers are its own, sent when it
            // revalidates a cached variant.
            let header = |name| {
                req.headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let cached = header(http::header::IF_NONE_MATCH)
                .zip(header(SOURCE_ETAG))
                .map(|(etag, source_etag)| Validators { etag, source_etag });
            self.0
                .render(&path, query.as_deref(), cached.as_ref(), &mut timings)
                .await
        };
        let resp = self.0.respond(result, timings);
        metrics()
            .origin_requests
            .with_label_values(&[resp.status().as_str()])
            .inc();
        resp
    }
}
