//! Process-wide Prometheus metrics, served as text by the admin listener.
//!
//! Names follow Prometheus conventions (`imgedge_` prefix, `_total` counters, base units).
//! Besides imgedge's own, the registry carries the Prometheus client's process collector
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`,
//! `process_start_time_seconds`, …), `imgedge_build_info` and, per configured certificate,
//! `imgedge_tls_certificate_expiry_seconds` (computed when scraped).

use std::time::SystemTime;

use once_cell::sync::Lazy;
use parking_lot::Mutex;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric imgedge exports.
pub struct Metrics {
    /// The registry the admin listener renders.
    pub registry: Registry,
    /// Edge responses by status code and cache status (`hit`, `miss`, `stale`, ...).
    pub requests: IntCounterVec,
    /// Requests the origin service answered, by status code.
    pub origin_requests: IntCounterVec,
    /// Source fetches by source kind and result (`ok`, `not_modified`, `not_found`, `too_large`, `timeout`, `error`).
    pub source_fetches: IntCounterVec,
    /// Variants produced, by output format.
    pub transforms: IntCounterVec,
    /// Misses refused with 503 because the pool was full.
    pub pool_rejected: IntCounter,
    /// Misses refused with 503 because `origin.max_fetches` fetches were in flight.
    pub fetches_rejected: IntCounter,
    /// Jobs running on the resize pool.
    pub pool_busy: IntGauge,
    /// Jobs waiting for a resize thread.
    pub pool_queued: IntGauge,
    /// AVIF encodes refused because the AVIF pool was full (`transform.avif_queue`).
    pub avif_rejected: IntCounter,
    /// AVIF encodes running.
    pub avif_busy: IntGauge,
    /// AVIF encodes waiting for an AVIF thread.
    pub avif_queued: IntGauge,
    /// Background AVIF upgrades by result: `queued`, `done`, `skipped` (queue full),
    /// `failed`, `served` (a ready AVIF answered a miss).
    pub avif_upgrades: IntCounterVec,
    /// Storage lookups by tier (`memory`, `disk`) and result (`hit`, `stale`, `miss`).
    pub cache_lookups: IntCounterVec,
    /// Objects evicted to keep a tier within its byte bound, by tier.
    pub cache_evictions: IntCounterVec,
    /// Disk entries found short, corrupt or unreadable (removed, never served).
    pub cache_corrupt: IntCounter,
    /// Cache writes that failed or were skipped, by tier and reason.
    pub cache_write_failures: IntCounterVec,
    /// Requests that waited for another request's fill instead of going to the origin.
    pub cache_coalesced: IntCounter,
    /// Fresh memory hits answered by the edge's fast path (also counted in `cache_lookups`).
    pub cache_fast_hits: IntCounter,
    /// Of those, the ones the HTTP/1 hit loop answered before Pingora's session.
    pub hit_loop_answers: IntCounter,
    /// Purges done through the admin listener, by scope (`url`, `id`).
    pub purges: IntCounterVec,
    /// Bytes stored per tier (set when scraped).
    pub cache_bytes: IntGaugeVec,
    /// Objects stored per tier (set when scraped).
    pub cache_objects: IntGaugeVec,
    /// Edge request duration, from the request header to the last body byte, by cache status.
    pub request_duration: HistogramVec,
    /// Source fetch duration (retries included) by source kind and result.
    pub fetch_duration: HistogramVec,
    /// Decode + resize + encode time by output format.
    pub resize_duration: HistogramVec,
    /// Mezzanine (decoded original) lookups by result: `hit` (no decode), `miss`, `upgrade`
    /// (kept too small for the size asked: decoded again, larger).
    pub mezzanine_lookups: IntCounterVec,
    /// Bytes of decoded originals kept (`transform.mezzanine_bytes` bounds it).
    pub mezzanine_bytes: IntGauge,
    /// Misses refused with 429 because the client spent its miss budget.
    pub rate_limited: IntCounter,
    /// Connections closed because a request header did not arrive within `edge.header_timeout`.
    pub client_timeouts: IntCounter,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// Mirror mode, by result: `queued`, `dropped` (queue full), `ok`, `error` (target failed).
    pub mirror: IntCounterVec,
    /// PROXY protocol headers read, by outcome (`ok`, `local`, `missing`, `malformed`, `timeout`).
    pub proxy_protocol: IntCounterVec,
    /// Seconds until each certificate's `notAfter` (set when scraped; negative once expired).
    pub tls_expiry: IntGaugeVec,
}

/// Certificates whose expiry is reported: (index, names, notAfter).
static CERTIFICATES: Mutex<Vec<(String, String, SystemTime)>> = Mutex::new(Vec::new());

/// Report these certificates' expiry (`imgedge_tls_certificate_expiry_seconds`).
pub fn set_certificates(certs: impl IntoIterator<Item = (Vec<String>, SystemTime)>) {
    let mut list = CERTIFICATES.lock();
    list.clear();
    for (i, (names, not_after)) in certs.into_iter().enumerate() {
        list.push((i.to_string(), names.join(","), not_after));
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    // 1 ms to 10 s: hits sit in the first buckets, misses (fetch + resize) in the middle ones.
    let buckets = vec![
        0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("static metric definition");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

static METRICS: Lazy<Metrics> = Lazy::new(|| {
    let r = Registry::new();
    let requests = counter_vec(
        &r,
        "imgedge_requests_total",
        "Edge responses.",
        &["status", "cache"],
    );
    let origin_requests = counter_vec(
        &r,
        "imgedge_origin_requests_total",
        "Requests answered by the origin service.",
        &["status"],
    );
    let source_fetches = counter_vec(
        &r,
        "imgedge_source_fetches_total",
        "Fetches of originals from the source.",
        &["source", "result"],
    );
    let transforms = counter_vec(
        &r,
        "imgedge_transforms_total",
        "Variants produced.",
        &["format"],
    );
    let mirror = counter_vec(
        &r,
        "imgedge_mirror_requests_total",
        "Requests mirrored to another node, by result.",
        &["result"],
    );
    let pool_rejected = IntCounter::new(
        "imgedge_resize_pool_rejected_total",
        "Misses refused because the resize pool was full.",
    )
    .expect("static metric definition");
    let pool_busy = IntGauge::new("imgedge_resize_pool_busy", "Resize jobs running.")
        .expect("static metric definition");
    let pool_queued = IntGauge::new("imgedge_resize_pool_queued", "Resize jobs waiting.")
        .expect("static metric definition");
    let avif_rejected = IntCounter::new(
        "imgedge_avif_pool_rejected_total",
        "AVIF encodes refused because the AVIF pool was full.",
    )
    .expect("static metric definition");
    let avif_busy = IntGauge::new("imgedge_avif_pool_busy", "AVIF encodes running.")
        .expect("static metric definition");
    let avif_queued = IntGauge::new("imgedge_avif_pool_queued", "AVIF encodes waiting.")
        .expect("static metric definition");
    for m in [&pool_busy, &pool_queued, &avif_busy, &avif_queued] {
        r.register(Box::new(m.clone()))
            .expect("metric registered once");
    }
    for m in [&pool_rejected, &avif_rejected] {
        r.register(Box::new(m.clone()))
            .expect("metric registered once");
    }
    let avif_upgrades = counter_vec(
        &r,
        "imgedge_avif_upgrades_total",
        "Background AVIF upgrades by result (queued, done, skipped: queue full, failed, served).",
        &["result"],
    );
    let fetches_rejected = IntCounter::new(
        "imgedge_source_fetches_rejected_total",
        "Misses refused because origin.max_fetches fetches were in flight.",
    )
    .expect("static metric definition");
    r.register(Box::new(fetches_rejected.clone()))
        .expect("metric registered once");
    let cache_lookups = counter_vec(
        &r,
        "imgedge_cache_lookups_total",
        "Cache storage lookups by tier and result.",
        &["tier", "result"],
    );
    let cache_evictions = counter_vec(
        &r,
        "imgedge_cache_evictions_total",
        "Objects evicted to keep a tier within its byte bound.",
        &["tier"],
    );
    let cache_corrupt = counter(
        &r,
        "imgedge_cache_corrupt_total",
        "Disk entries found short, corrupt or unreadable; removed, never served.",
    );
    let cache_write_failures = counter_vec(
        &r,
        "imgedge_cache_write_failures_total",
        "Cache writes that failed or were skipped.",
        &["tier", "reason"],
    );
    let cache_coalesced = counter(
        &r,
        "imgedge_cache_coalesced_waiters_total",
        "Requests that waited for another request's fill of the same variant.",
    );
    let cache_fast_hits = counter(
        &r,
        "imgedge_cache_fast_hits_total",
        "Fresh memory hits answered without pingora-cache's hit path (GET, no Range, no validators).",
    );
    let hit_loop_answers = counter(
        &r,
        "imgedge_hit_loop_answers_total",
        "Fast hits answered by the HTTP/1 hit loop, before Pingora's per-request session (also in imgedge_cache_fast_hits_total).",
    );
    let purges = counter_vec(
        &r,
        "imgedge_purges_total",
        "Purges through the admin listener.",
        &["scope"],
    );
    let cache_bytes = gauge_vec(
        &r,
        "imgedge_cache_bytes",
        "Bytes stored per cache tier.",
        &["tier"],
    );
    let cache_objects = gauge_vec(
        &r,
        "imgedge_cache_objects",
        "Objects stored per cache tier.",
        &["tier"],
    );
    let request_duration = histogram_vec(
        &r,
        "imgedge_request_duration_seconds",
        "Edge request duration by cache status (hit, miss, stale, ...).",
        &["cache"],
    );
    let fetch_duration = histogram_vec(
        &r,
        "imgedge_source_fetch_duration_seconds",
        "Fetch time of originals, retries included, by source and result.",
        &["source", "result"],
    );
    let resize_duration = histogram_vec(
        &r,
        "imgedge_resize_duration_seconds",
        "Decode, resize and encode time by output format.",
        &["format"],
    );
    let mezzanine_lookups = counter_vec(
        &r,
        "imgedge_mezzanine_lookups_total",
        "Decoded-original cache lookups by result (hit: no decode; miss; upgrade: decoded again, larger).",
        &["result"],
    );
    let mezzanine_bytes = IntGauge::new(
        "imgedge_mezzanine_bytes",
        "Bytes of decoded originals kept for further sizes.",
    )
    .expect("static metric definition");
    r.register(Box::new(mezzanine_bytes.clone()))
        .expect("metric registered once");
    let rate_limited = counter(
        &r,
        "imgedge_rate_limited_total",
        "Misses refused with 429: the client spent its miss budget.",
    );
    let client_timeouts = counter(
        &r,
        "imgedge_client_header_timeouts_total",
        "Connections closed because a request header was not received in time.",
    );
    let access_log_dropped = counter(
        &r,
        "imgedge_access_log_dropped_total",
        "Access-log lines dropped because the writer fell behind.",
    );
    let proxy_protocol = counter_vec(
        &r,
        "imgedge_proxy_protocol_headers_total",
        "PROXY protocol headers on public connections, by outcome.",
        &["result"],
    );
    let tls_expiry = gauge_vec(
        &r,
        "imgedge_tls_certificate_expiry_seconds",
        "Seconds until the certificate's notAfter (negative once expired).",
        &["certificate", "names"],
    );
    let build_info = gauge_vec(
        &r,
        "imgedge_build_info",
        "Always 1; the labels describe the running binary.",
        &["version", "allocator", "tls"],
    );
    let allocator = if cfg!(feature = "jemalloc") {
        "jemalloc"
    } else {
        "system"
    };
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), allocator, "rustls-ring"])
        .set(1);
    // CPU, memory, fds, threads and start time of this process, from /proc.
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
    .expect("metric registered once");
    Metrics {
        registry: r,
        request_duration,
        fetch_duration,
        resize_duration,
        mezzanine_lookups,
        mezzanine_bytes,
        rate_limited,
        client_timeouts,
        access_log_dropped,
        cache_lookups,
        cache_evictions,
        cache_corrupt,
        cache_write_failures,
        cache_coalesced,
        cache_fast_hits,
        hit_loop_answers,
        purges,
        cache_bytes,
        cache_objects,
        requests,
        origin_requests,
        source_fetches,
        transforms,
        pool_rejected,
        fetches_rejected,
        pool_busy,
        pool_queued,
        avif_rejected,
        avif_busy,
        avif_queued,
        avif_upgrades,
        mirror,
        proxy_protocol,
        tls_expiry,
    }
});

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The metrics in Prometheus text format.
pub fn render() -> String {
    let now = SystemTime::now();
    for (index, names, not_after) in CERTIFICATES.lock().iter() {
        let left = match not_after.duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        metrics()
            .tls_expiry
            .with_label_values(&[index.as_str(), names.as_str()])
            .set(left);
    }
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&metrics().registry.gather(), &mut out) {
        tracing::error!("metrics encoding failed: {e}");
    }
    out
}
