//! The origin service: the edge's upstream for misses, on a Unix socket in the same process.
//!
//! It answers `GET /image/{id}?<canonical query>` by fetching the original from the
//! [`source`], producing the variant on the [`pool`] with [`transform`], and labelling the answer
//! with `ETag` and `Cache-Control` so the edge's cache and clients' caches know what to keep.
//! Errors become one-line text answers with the status from [`Error::status`]; the ones that are
//! a property of the original (404, 422) carry the short negative TTL.

pub mod pool;
pub mod results;
pub mod source;
pub mod transform;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use sha2::{Digest, Sha256};

use crate::cache::purge::PurgeLog;
use crate::config::{Config, SourceKind};
use crate::error::{Error, Result};
use crate::metrics::metrics;
use crate::variant::{self, ParseOptions, Variant};
use pool::ResizePool;
use results::Results;
use source::{
    Fallback, KeyTemplate, LocalSource, Lookup, S3Source, Source, SourceCache, SourceError,
};
use transform::{TransformLimits, TransformSettings};

/// A successful answer: the bytes and their type.
#[derive(Debug)]
pub struct Rendered {
    /// Body.
    pub body: Vec<u8>,
    /// `Content-Type`.
    pub mime: &'static str,
    /// The body's strong `ETag`, computed on the resize thread (hashing the whole body is CPU
    /// work; the origin's async threads only move bytes).
    pub etag: String,
}

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
    max_source_bytes: u64,
    fetch_timeout: Duration,
    cache_control: String,
    negative_cache_control: String,
    /// The shared result tier (`origin.results`), if configured.
    results: Option<Arc<Results>>,
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
            settings: TransformSettings {
                limits: TransformLimits {
                    max_source_pixels: cfg.limits.max_source_pixels,
                    max_frames: cfg.limits.max_frames,
                    max_metadata_bytes: cfg.limits.max_metadata_bytes.as_u64(),
                },
                background: cfg.transform.background_rgb(),
                default_quality: cfg.transform.default_quality,
            },
            max_source_bytes: cfg.limits.max_source_bytes.as_u64(),
            fetch_timeout: cfg.origin.fetch_timeout,
            cache_control: cfg.origin.cache_control.clone(),
            negative_cache_control: format!(
                "public, max-age={}",
                cfg.origin.negative_ttl.as_secs()
            ),
            results: None,
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
        self
    }

    /// The original of `id`: from the source cache, or fetched (holding a fetch permit only
    /// while it really fetches; requests joining a fetch in flight hold none).
    async fn original(&self, id: &str, timings: &mut Timings) -> Result<Bytes> {
        let Some(cache) = &self.originals else {
            let started = Instant::now();
            let got = self.fetch_permitted(id).await;
            timings.fetch = Some(started.elapsed());
            return got;
        };
        let (bytes, how) = cache.get_or_fetch(id, || self.fetch_permitted(id)).await?;
        if let Lookup::Fetched(took) = how {
            timings.fetch = Some(took);
        }
        Ok(bytes)
    }

    async fn fetch_permitted(&self, id: &str) -> Result<Bytes> {
        let _permit = self.fetches.clone().try_acquire_owned().map_err(|_| {
            metrics().fetches_rejected.inc();
            Error::Busy {
                retry_after: self.retry_after,
            }
        })?;
        self.fetch(id).await
    }

    async fn fetch(&self, id: &str) -> Result<Bytes> {
        let key = self.template.render(id);
        let kind = self.source.kind();
        let started = Instant::now();
        let fetched = tokio::time::timeout(
            self.fetch_timeout,
            self.source.fetch(&key, self.max_source_bytes),
        )
        .await
        .unwrap_or(Err(SourceError::Timeout));
        let label = match &fetched {
            Ok(_) => "ok",
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

    /// Produce the answer for one canonical request.
    pub async fn render(
        &self,
        path: &str,
        query: Option<&str>,
        timings: &mut Timings,
    ) -> Result<Rendered> {
        let variant = Variant::parse(path, query, &self.parse)?;
        // The result tier holds resized variants only; a hit needs no original and no resize.
        let results = self
            .results
            .as_ref()
            .filter(|_| variant.transform.is_some());
        if let Some(hit) = match results {
            Some(r) => r.lookup(&variant).await,
            None => None,
        } {
            return Ok(hit);
        }
        let fetched_at = SystemTime::now();
        // A fetch waits on the source, not on a CPU: it takes a fetch permit, and a pool slot
        // only once its original is here, so a slow source cannot fill the pool (and answer
        // 503) while the resize threads idle.
        let original = self.original(&variant.id, timings).await?;
        let slot = self.pool.admit()?;
        let settings = self.settings;
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
                            let tag = etag(&original);
                            return Ok((format.mime(), Vec::from(original), tag));
                        }
                        tracing::debug!(?end, len = original.len(), "re-encoding an original");
                        let t = variant::Transform {
                            resize: None,
                            format: None,
                            quality: Some(settings.default_quality),
                        };
                        let out = transform::transform(&original, &t, &settings)?;
                        let tag = etag(&out.bytes);
                        Ok((out.format.mime(), out.bytes, tag))
                    })
                    .await?;
                Ok(Rendered {
                    // Reuses the fetched buffer when nothing else holds it (no copy).
                    body,
                    mime,
                    etag,
                })
            }
            Some(t) => {
                let (out, etag, took) = self
                    .pool
                    .run(&slot, move || {
                        let started = Instant::now();
                        let out = transform::transform(&original, &t, &settings)?;
                        let tag = etag(&out.bytes);
                        Ok((out, tag, started.elapsed()))
                    })
                    .await?;
                timings.resize = Some(took);
                let format = out.format.as_str();
                metrics().transforms.with_label_values(&[format]).inc();
                metrics()
                    .resize_duration
                    .with_label_values(&[format])
                    .observe(took.as_secs_f64());
                let rendered = Rendered {
                    body: out.bytes,
                    mime: out.format.mime(),
                    etag,
                };
                if let Some(r) = results {
                    r.store(&variant, &rendered, fetched_at);
                }
                Ok(rendered)
            }
        }
    }

    /// Readiness of the source, within `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Result<()> {
        tokio::time::timeout(timeout, self.source.probe())
            .await
            .unwrap_or(Err(SourceError::Timeout))
            .map_err(Error::from)
    }

    /// Turn a result into the HTTP answer.
    pub fn respond(&self, result: Result<Rendered>, timings: Timings) -> Response<Vec<u8>> {
        let built = match result {
            Ok(r) => Response::builder()
                .status(StatusCode::OK)
                .header("content-type", r.mime)
                .header("content-length", r.body.len())
                .header("etag", r.etag)
                .header("cache-control", &self.cache_control)
                .header("x-content-type-options", "nosniff")
                .body(r.body),
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
            self.0.render(&path, query.as_deref(), &mut timings).await
        };
        let resp = self.0.respond(result, timings);
        metrics()
            .origin_requests
            .with_label_values(&[resp.status().as_str()])
            .inc();
        resp
    }
}
