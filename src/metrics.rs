//! Process-wide Prometheus metrics, served as text by the admin listener.
//!
//! Names follow Prometheus conventions (`imgedge_` prefix, `_total` counters, base units).

use once_cell::sync::Lazy;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Every metric imgedge exports.
pub struct Metrics {
    /// The registry the admin listener renders.
    pub registry: Registry,
    /// Edge responses by status code and cache status (`hit`, `miss`, `stale`, ...).
    pub requests: IntCounterVec,
    /// Requests the origin service answered, by status code.
    pub origin_requests: IntCounterVec,
    /// Source fetches by source kind and result (`ok`, `not_found`, `too_large`, `timeout`, `error`).
    pub source_fetches: IntCounterVec,
    /// Variants produced, by output format.
    pub transforms: IntCounterVec,
    /// Misses refused with 503 because the pool was full.
    pub pool_rejected: IntCounter,
    /// Jobs running on the resize pool.
    pub pool_busy: IntGauge,
    /// Jobs waiting for a resize thread.
    pub pool_queued: IntGauge,
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
    /// Purges done through the admin listener, by scope (`url`, `id`).
    pub purges: IntCounterVec,
    /// Bytes stored per tier (set when scraped).
    pub cache_bytes: IntGaugeVec,
    /// Objects stored per tier (set when scraped).
    pub cache_objects: IntGaugeVec,
    /// Mirror mode, by result: `queued`, `dropped` (queue full), `ok`, `error` (target failed).
    pub mirror: IntCounterVec,
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
    for m in [&pool_busy, &pool_queued] {
        r.register(Box::new(m.clone()))
            .expect("metric registered once");
    }
    r.register(Box::new(pool_rejected.clone()))
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
    Metrics {
        registry: r,
        cache_lookups,
        cache_evictions,
        cache_corrupt,
        cache_write_failures,
        cache_coalesced,
        purges,
        cache_bytes,
        cache_objects,
        requests,
        origin_requests,
        source_fetches,
        transforms,
        pool_rejected,
        pool_busy,
        pool_queued,
        mirror,
    }
});

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The metrics in Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&metrics().registry.gather(), &mut out) {
        tracing::error!("metrics encoding failed: {e}");
    }
    out
}
