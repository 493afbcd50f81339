//! The memory-hit fast path: a fresh object in the memory tier is answered from the request
//! filter, without pingora-cache's per-hit work.
//!
//! On pingora-cache's path a hit builds the cache key object, runs a boxed async lookup,
//! decompresses and parses the stored header block (`CacheMeta::deserialize`), runs the hit
//! filters and streams the body through a boxed hit handler. Most hits of an image CDN are the
//! plainest case: a GET, no validators, no range, a fresh object in memory. For those this
//! answers with the object's header parsed once ([`crate::cache::head::HitHead`], kept with the object), an `Age`,
//! and the body `Bytes` (no copy). Everything else takes pingora-cache's path, which keeps the
//! semantics this path does not implement: `Range`, `HEAD`, conditional requests (304),
//! stale-while-revalidate and stale-if-error, purged objects, disk hits, peers' requests.
//! The answer is the one pingora-cache's path gives (`tests/production.rs` compares them).

use std::sync::Arc;
use std::time::SystemTime;

use http::header;
use pingora_cache::key::CacheHashKey;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::cache::head::HitHead;
use crate::cache::memory::CachedObject;
use crate::cache::Cache;
use crate::origin::SOURCE_ETAG;
use crate::variant::Variant;

/// Request headers that need pingora-cache's handling (ranges, validators).
pub(super) const SLOW_PATH_HEADERS: [header::HeaderName; 6] = [
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// A fresh object of the memory tier for `variant`, with its prepared head, as both this path
/// and the HTTP/1 hit loop (`super::hit_loop`) answer it; `None` for anything pingora-cache's
/// path must handle (absent, stale, purged, a meta that does not parse).
pub(super) fn lookup(cache: &Cache, variant: &Variant, now: SystemTime) -> Option<FreshHit> {
    let key = crate::cache::storage_key(variant).combined_bin();
    let obj = cache.storage.memory().get(&key)?;
    let len = obj.body.len();
    let negotiated = variant.is_negotiated();
    let head = obj.head(|h| prepare(h, len, negotiated))?;
    if !head.is_fresh(now) || cache.purges.is_purged(&variant.id, head.created) {
        return None;
    }
    let age = head.age(now).as_secs();
    Some(FreshHit { obj, age })
}

/// A fresh memory hit (see [`lookup`]).
pub(super) struct FreshHit {
    /// The object; its head is prepared.
    pub obj: Arc<CachedObject>,
    /// The `Age` to send, in seconds.
    pub age: u64,
}

impl FreshHit {
    /// The object's prepared head ([`lookup`] made it).
    pub fn head(&self) -> Option<&HitHead> {
        // Prepared already: the closure does not run.
        self.obj.head(|_| Ok(()))
    }

    /// Count the hit (memory-tier lookups, fast hits).
    pub fn count(&self) {
        crate::cache::storage::count_memory_hit();
        crate::metrics::metrics().cache_fast_hits.inc();
    }
}

/// Answer `variant` from the memory tier if this path can; whether it did. `Err` only when
/// writing to the client failed (the request is then over either way).
pub(super) async fn serve(
    session: &mut Session,
    cache: &Cache,
    variant: &Variant,
    draining: bool,
) -> Result<bool> {
    let req = session.req_header();
    if req.method != http::Method::GET
        || SLOW_PATH_HEADERS
            .iter()
            .any(|h| req.headers.contains_key(h))
    {
        return Ok(false);
    }
    let Some(hit) = lookup(cache, variant, SystemTime::now()) else {
        return Ok(false);
    };
    let Some(mut resp) = hit.head().and_then(|h| h.header()) else {
        return Ok(false);
    };
    // pingora-cache: an `Age` on every answer served from the cache (RFC 9111 §4).
    resp.insert_header(header::AGE, hit.age)?;
    hit.count();
    if draining {
        // Pingora then sends `Connection: close` and closes after this response.
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(hit.obj.body.clone()), true)
        .await?;
    Ok(true)
}

/// Turn a stored header into the one pingora-cache's hit path plus the edge's response filter
/// would send, less `Age` (added per answer). Done once per object; `negotiated` is the
/// variant's (its key says it, so it is the same for every caller).
fn prepare(h: &mut ResponseHeader, len: usize, negotiated: bool) -> Result<()> {
    if !h.headers.contains_key(header::CONTENT_LENGTH) {
        // The whole body is at hand (pingora-cache would send it chunked).
        h.insert_header(header::CONTENT_LENGTH, len)?;
    } else if h.status == http::StatusCode::OK {
        // pingora-cache's range filter: a whole 200 of known length may be asked for in ranges.
        h.insert_header(header::ACCEPT_RANGES, "bytes")?;
    }
    // pingora-cache: stored headers are HTTP/1.1.
    h.set_version(http::Version::HTTP_11);
    // The edge's response filter (`Edge::response_filter`).
    h.insert_header("x-cache", "HIT")?;
    h.insert_header("x-content-type-options", "nosniff")?;
    h.remove_header(&header::VARY);
    if negotiated {
        h.insert_header(header::VARY, "Accept")?;
    }
    h.remove_header(&SOURCE_ETAG);
    // Per answer, appended by whoever answers: `Age` here (and by the hit loop), `Date` and
    // `Connection` by Pingora's H1 writer (and the hit loop). A stored one would otherwise be
    // replaced where it stands on one path and appended on the other.
    for per_answer in [header::AGE, header::DATE, header::CONNECTION] {
        h.remove_header(&per_answer);
    }
    Ok(())
}
