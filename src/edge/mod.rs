//! The edge service: Pingora's proxy with its cache in front of the origin service.
//!
//! Per request: check the request's size (414/431), parse the URL into a [`Variant`]
//! (400/404/405), apply the [`Policy`] (signature 403, size policy), all before the cache; key
//! the cache on the variant alone, serve hits from [`crate::cache`], and on a miss send the
//! variant's canonical URI to the origin service over its Unix socket. Pingora's cache lock
//! makes concurrent misses for one key wait for a single fill. Headers never enter the key: a
//! `format=auto` request's `Accept` is collapsed to one of three classes first
//! ([`crate::variant::AcceptClass`]), and only those answers carry `Vary: Accept`, so
//! User-Agent, Cookie or the many `Accept` strings cannot split the cache. A miss spends the
//! client's miss budget (429 past it); hits never do.
//!
//! In a cluster ([`crate::cluster`]) a miss goes to the id's owner instead of the local origin
//! when another node owns it; the same proxy also serves the peer listener, in "from a peer"
//! mode: requests must carry the POP's proof, skip the public policy, and fill locally only.
//!
//! Submodules: [`tls`] (certificates, SNI, ALPN), [`client_limits`] (slow clients),
//! [`access_log`], `fast_hit` (fresh memory hits answered without pingora-cache's machinery),
//! [`hit_loop`] (the same hits on HTTP/1 answered before Pingora's per-request session).

pub mod access_log;
pub mod client_limits;
pub mod drain;
mod fast_hit;
pub mod hit_loop;
pub mod proxy_protocol;
mod stream;
pub mod tls;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::cache_control::CacheControl;
use pingora_cache::filters::resp_cacheable;
use pingora_cache::{
    CacheKey, CacheMeta, CacheMetaDefaults, CachePhase, ForcedFreshness, HitHandler, NoCacheReason,
    RespCacheable,
};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error as PError, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::cache::Cache;
use crate::cluster::fill::{FillState, PEER_HEADER};
use crate::cluster::listener::PeerRequest;
use crate::cluster::purge::PurgeOrder;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::error::Error;
use crate::metrics::metrics;
use crate::origin::upgrade::INTERIM;
use crate::origin::{Timings, SERVER_TIMING, SOURCE_ETAG};
use crate::policy::Policy;
use crate::variant::{ParseOptions, Variant};
use access_log::{AccessLog, Entry};

/// Per-request state.
pub struct EdgeCtx {
    variant: Option<Variant>,
    started: Instant,
    started_at: SystemTime,
    timings: Timings,
    fill: FillState,
    /// When this request went to the origin (a fill began), for the purge check on its answer.
    fill_started: Option<SystemTime>,
    /// The cached object was purged: refetch it in full, never revalidate it.
    purged: bool,
    /// Answered by the memory-hit fast path (`fast_hit`).
    fast_hit: bool,
}

/// How the edge treats clients (from `edge.*`).
#[derive(Debug, Clone, Copy)]
struct ClientRules {
    max_uri_bytes: usize,
    max_header_bytes: usize,
    write_timeout: Duration,
    keepalive_secs: u64,
}

/// The edge's proxy logic.
pub struct Edge {
    cache: Cache,
    parse: ParseOptions,
    origin_socket: String,
    origin_read_timeout: Duration,
    meta_defaults: CacheMetaDefaults,
    lock_wait_timeout: Duration,
    mirror: Option<Arc<crate::mirror::Mirror>>,
    policy: Arc<Policy>,
    access_log: Option<Arc<AccessLog>>,
    rules: ClientRules,
    draining: drain::Draining,
    cluster: Option<std::sync::Arc<Cluster>>,
    // This instance is the peer listener: requests come from other nodes of the POP.
    from_peer: bool,
}

// Freshness comes from the origin's Cache-Control; nothing is cached on a guess.
fn no_default_ttl(_: http::StatusCode) -> Option<Duration> {
    None
}

impl Edge {
    /// The edge for a validated config and the process's cache. `access_log` comes from
    /// [`AccessLog::start`].
    pub fn new(
        cfg: &Config,
        cache: Cache,
        access_log: Option<AccessLog>,
        draining: drain::Draining,
    ) -> Edge {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let stale_if_error = secs(cfg.cache.stale_if_error);
        let stale_while_revalidate = secs(cfg.cache.stale_while_revalidate);
        Edge {
            cache,
            parse: cfg.parse_options(),
            origin_socket: cfg.origin.socket.to_string_lossy().into_owned(),
            origin_read_timeout: cfg.cache.origin_read_timeout,
            meta_defaults: CacheMetaDefaults::new(
                no_default_ttl,
                stale_while_revalidate,
                stale_if_error,
            ),
            lock_wait_timeout: cfg.cache.lock_wait_timeout,
            mirror: None,
            policy: Arc::new(Policy::from_config(cfg)),
            access_log: access_log.map(Arc::new),
            rules: ClientRules {
                max_uri_bytes: cfg.edge.max_uri_bytes,
                max_header_bytes: cfg.edge.max_header_bytes,
                write_timeout: cfg.edge.write_timeout,
                keepalive_secs: cfg.edge.keepalive_timeout.as_secs().max(1),
            },
            draining,
            cluster: None,
            from_peer: false,
        }
    }

    /// Join a cluster: misses go to the id's owner. `from_peer` makes this the peer listener's
    /// instance (authenticated requests only, always filled locally).
    pub fn with_cluster(
        mut self,
        cluster: Option<std::sync::Arc<Cluster>>,
        from_peer: bool,
    ) -> Edge {
        self.cluster = cluster;
        self.from_peer = from_peer && self.cluster.is_some();
        if self.from_peer {
            self.mirror = None;
        }
        self
    }

    /// The peer listener's door: 403 without the POP's proof; purges applied here. `Ok(true)`
    /// when the request was answered.
    async fn peer_door(&self, session: &mut Session) -> Result<bool> {
        let Some(cluster) = &self.cluster else {
            return Ok(false);
        };
        match cluster.auth.classify(session.req_header()) {
            PeerRequest::Fill => Ok(false),
            PeerRequest::Refused => {
                crate::cluster::metrics::cluster_metrics()
                    .refused
                    .with_label_values(&["auth"])
                    .inc();
                respond_error(session, &Error::Forbidden("not a node of this POP")).await?;
                Ok(true)
            }
            PeerRequest::Purge(path) => {
                let (p, q) = path
                    .split_once('?')
                    .map_or((path.as_str(), None), |(p, q)| (p, Some(q)));
                let done = match PurgeOrder::parse(p, q, &self.parse) {
                    Ok(order) => order.apply(&self.cache).await.map_err(|e| e.to_string()),
                    Err((_, reason)) => Err(reason),
                };
                let (status, body) = match done {
                    Ok(found) => (
                        200,
                        format!(
                            "{{\"purged\":true,\"found\":{}}}\n",
                            found.map_or("null".into(), |f| f.to_string())
                        ),
                    ),
                    Err(e) => (400, format!("{e}\n")),
                };
                let mut h = ResponseHeader::build(status, Some(3))?;
                h.insert_header("content-length", body.len())?;
                h.insert_header("cache-control", "no-store")?;
                session.write_response_header(Box::new(h), false).await?;
                session
                    .write_response_body(Some(Bytes::from(body)), true)
                    .await?;
                Ok(true)
            }
        }
    }

    /// The client's address: the trusted header's when configured, else the peer's.
    fn client_ip(&self, session: &Session) -> Option<IpAddr> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        match &self.policy.misses {
            Some(l) => l.client(&session.req_header().headers, peer),
            None => peer,
        }
    }

    /// 414/431 for requests over the configured sizes.
    fn check_size(&self, req: &RequestHeader) -> Result<(), Error> {
        let target = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        if target > self.rules.max_uri_bytes {
            return Err(Error::UriTooLong);
        }
        let header_bytes: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes > self.rules.max_header_bytes {
            return Err(Error::HeadersTooLarge);
        }
        Ok(())
    }

    /// Mirror a sample of served image requests (see [`crate::mirror`]).
    pub fn with_mirror(mut self, mirror: Option<crate::mirror::Mirror>) -> Edge {
        self.mirror = mirror.map(Arc::new);
        self
    }

    /// What the HTTP/1 hit loop needs of this edge to answer fresh memory hits as it would
    /// (`None` for the peer listener, whose requests take the proxy's path).
    pub fn hit_door(&self, cfg: &Config) -> Option<hit_loop::HitDoor> {
        (!self.from_peer && cfg.edge.hit_loop).then(|| hit_loop::HitDoor {
            cache: self.cache,
            parse: self.parse,
            policy: self.policy.clone(),
            max_uri_bytes: self.rules.max_uri_bytes,
            max_header_bytes: self.rules.max_header_bytes,
            write_timeout: self.rules.write_timeout,
            keepalive: Duration::from_secs(self.rules.keepalive_secs),
            keepalive_requests: (cfg.edge.keepalive_requests > 0)
                .then_some(cfg.edge.keepalive_requests),
            draining: self.draining.clone(),
            access_log: self.access_log.clone(),
            mirror: self.mirror.clone(),
            served: metrics().requests.with_label_values(&["200", "hit"]),
            duration: metrics().request_duration.with_label_values(&["hit"]),
        })
    }

    /// The `X-Cache` value for a request's cache phase.
    fn cache_status(session: &Session, ctx: &EdgeCtx) -> &'static str {
        if ctx.fast_hit {
            return "HIT";
        }
        match session.cache.phase() {
            CachePhase::Hit => "HIT",
            CachePhase::Miss => "MISS",
            CachePhase::Stale | CachePhase::StaleUpdating => "STALE",
            CachePhase::Expired => "EXPIRED",
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "REVALIDATED",
            CachePhase::Bypass => "BYPASS",
            // Went to the origin and was not kept (an interim WebP, a 5xx): a miss to clients.
            CachePhase::Disabled(r) if !matches!(r, NoCacheReason::NeverEnabled) => "MISS",
            _ => "NONE",
        }
    }
}

/// Write a short text error answer from the edge itself.
async fn respond_error(session: &mut Session, err: &Error) -> Result<()> {
    let body = Bytes::from(format!("{}\n", err.reason()));
    let mut h = ResponseHeader::build(err.status(), Some(6))?;
    h.insert_header("content-type", "text/plain; charset=utf-8")?;
    h.insert_header("content-length", body.len())?;
    h.insert_header("cache-control", "no-store")?;
    h.insert_header("x-content-type-options", "nosniff")?;
    match err {
        Error::MethodNotAllowed => h.insert_header("allow", "GET, HEAD")?,
        Error::Busy { retry_after } | Error::TooManyRequests { retry_after } => {
            h.insert_header("retry-after", retry_after.as_secs().max(1))?
        }
        _ => {}
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(h), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = EdgeCtx;

    fn new_ctx(&self) -> EdgeCtx {
        EdgeCtx {
            variant: None,
            started: Instant::now(),
            started_at: SystemTime::now(),
            timings: Timings::default(),
            fill: FillState::default(),
            fill_started: None,
            purged: false,
            fast_hit: false,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut EdgeCtx) -> Result<()> {
        // A client that stops reading cannot hold a response (and its buffers) forever.
        session.set_write_timeout(Some(self.rules.write_timeout));
        // HTTP/1.1 pipelining (RFC 9112 §9.3.2): answered in order. Off (Pingora's default), a
        // request arriving while the previous one is still being proxied failed that one with
        // a 400 and reset the connection under the next; clients such as wrk do this after a
        // reconnect, and a graceful upgrade's `Connection: close` makes them reconnect.
        session.set_pipelining_enabled(true);
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.rules.keepalive_secs));
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut EdgeCtx) -> Result<bool> {
        if self.from_peer && self.peer_door(session).await? {
            return Ok(true);
        }
        let req = session.req_header();
        let parsed = if req.method != http::Method::GET && req.method != http::Method::HEAD {
            Err(Error::MethodNotAllowed)
        } else {
            self.check_size(req)
                .and_then(|()| Variant::parse(req.uri.path(), req.uri.query(), &self.parse))
                // A peer's request was admitted, and its class negotiated, by the node the
                // client asked.
                .and_then(|v| match self.from_peer {
                    true => Ok(v),
                    false => self.policy.admit(req.uri.query(), v).map(|mut v| {
                        v.negotiate(req.headers.get(http::header::ACCEPT).map(|a| a.as_bytes()));
                        v
                    }),
                })
        };
        match parsed {
            Ok(v) => {
                if !self.from_peer
                    && fast_hit::serve(session, &self.cache, &v, self.draining.is_set()).await?
                {
                    ctx.fast_hit = true;
                    ctx.variant = Some(v);
                    return Ok(true);
                }
                ctx.variant = Some(v);
                Ok(false)
            }
            Err(e) => {
                respond_error(session, &e).await?;
                Ok(true)
            }
        }
    }

    fn request_cache_filter(&self, session: &mut Session, _ctx: &mut EdgeCtx) -> Result<()> {
        session.cache.enable(
            self.cache.storage,
            None, // the memory tier runs its own size-aware eviction and admission
            None,
            Some(self.cache.lock),
            Some({
                let mut o = pingora_cache::CacheOptionOverrides::default();
                o.wait_timeout = Some(self.lock_wait_timeout);
                o
            }),
        );
        session
            .cache
            .set_max_file_size_bytes(self.cache.storage.max_object() as usize);
        Ok(())
    }

    fn cache_key_callback(&self, _session: &Session, ctx: &mut EdgeCtx) -> Result<CacheKey> {
        ctx.variant
            .as_ref()
            .map(crate::cache::storage_key)
            .ok_or_else(|| PError::explain(ErrorType::InternalError, "no variant"))
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        _is_fresh: bool,
        ctx: &mut EdgeCtx,
    ) -> Result<Option<ForcedFreshness>> {
        // Every variant of a purged id created before the purge is out of service: refetch it,
        // and never serve it stale meanwhile.
        let purged = ctx
            .variant
            .as_ref()
            .is_some_and(|v| self.cache.purges.is_purged(&v.id, meta.created()));
        ctx.purged = purged;
        Ok(purged.then_some(ForcedFreshness::ForceExpired))
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut EdgeCtx,
        error: Option<&PError>,
    ) -> bool {
        match error {
            // Stale-while-revalidate: allowed within the object's window (cache.stale_while_revalidate
            // or the origin's Cache-Control); one background request refreshes it.
            None => true,
            // Stale-if-error: origin 5xx, timeouts and connection failures, within the window.
            Some(e) => e.esource() == &ErrorSource::Upstream,
        }
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut EdgeCtx,
    ) -> Result<RespCacheable> {
        // A fill that began before a purge of its id must not be served after it: its object
        // would be created after the purge and pass the hit filter's check. The client that
        // asked still gets the answer; coalesced waiters go to the origin again, one fill at a
        // time (Deferred releases the lock as a transient failure; a Custom reason would let
        // them all through at once).
        let purged_meanwhile = ctx
            .variant
            .as_ref()
            .zip(ctx.fill_started)
            .is_some_and(|(v, started)| self.cache.purges.is_purged(&v.id, started));
        if purged_meanwhile {
            tracing::debug!("a fill started before a purge of its id: not cached");
            return Ok(RespCacheable::Uncacheable(NoCacheReason::Deferred));
        }
        // A WebP standing in for an AVIF being made: the client may keep it briefly, the
        // cache must not (the AVIF answers the next miss).
        if resp.headers.contains_key(&INTERIM) {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::OriginNotCache));
        }
        // 200s for their TTL; 404/422 for the short negative TTL the origin sets, so a flood of
        // missing or broken ids does not hammer S3 or the pool. Transient failures never.
        match resp.status.as_u16() {
            200 | 404 | 422 => {
                let cc = CacheControl::from_resp_headers(resp);
                Ok(resp_cacheable(
                    cc.as_ref(),
                    resp.clone(),
                    false,
                    &self.meta_defaults,
                ))
            }
            // A transient failure must not release every coalesced waiter to the origin at once:
            // UpstreamError makes them contend for the lock again, one fill at a time.
            s if s >= 500 => Ok(RespCacheable::Uncacheable(NoCacheReason::UpstreamError)),
            _ => Ok(RespCacheable::Uncacheable(NoCacheReason::OriginNotCache)),
        }
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        _ctx: &mut EdgeCtx,
    ) -> Result<bool> {
        // Only requests that really go to the origin spend the budget; a background refresh
        // (stale-while-revalidate) is the node's own doing, not the client's.
        let Some(limiter) = &self.policy.misses else {
            return Ok(true);
        };
        if session.subrequest_ctx.is_some() || self.from_peer {
            return Ok(true);
        }
        let allowed = self.client_ip(session).is_none_or(|ip| limiter.allow(ip));
        if !allowed {
            metrics().rate_limited.inc();
            let err = Error::TooManyRequests {
                retry_after: limiter.retry_after(),
            };
            respond_error(session, &err).await?;
        }
        Ok(allowed)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut EdgeCtx,
    ) -> Result<()> {
        // The origin's timings are this request's, not the object's: log them, never cache them.
        if let Some(v) = upstream.remove_header(&SERVER_TIMING) {
            ctx.timings = Timings::parse(v.to_str().unwrap_or(""));
        }
        if ctx.fill.refuses(upstream.status) {
            // error_while_proxy turns this into a retry against the local origin.
            return Err(PError::explain(
                ErrorType::HTTPStatus(upstream.status.as_u16()),
                "the owner answered a server error",
            ));
        }
        ctx.fill.answered(upstream);
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut EdgeCtx,
    ) -> Result<Box<HttpPeer>> {
        // In a cluster, another node may own the id: ask its peer listener (unless this request
        // came from a peer, or asking the owner already failed).
        if let (Some(cluster), Some(v), false) = (&self.cluster, &ctx.variant, self.from_peer) {
            if let Some(peer) = ctx.fill.pick(cluster, &v.id, self.origin_read_timeout) {
                return Ok(peer);
            }
        }
        ctx.fill_started = Some(SystemTime::now());
        let mut peer = HttpPeer::new_uds(&self.origin_socket, false, String::new())?;
        peer.options.connection_timeout = Some(Duration::from_secs(1));
        peer.options.read_timeout = Some(self.origin_read_timeout);
        peer.options.write_timeout = Some(Duration::from_secs(5));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut EdgeCtx,
    ) -> Result<()> {
        // The origin sees exactly the canonical variant and nothing of the client's request:
        // GET even for HEAD (the fill needs the body), no client conditionals, no ranges, no
        // cookies.
        let uri = ctx
            .variant
            .as_ref()
            .map(Variant::canonical_uri)
            .ok_or_else(|| PError::explain(ErrorType::InternalError, "no variant"))?;
        let mut req = RequestHeader::build(http::Method::GET, uri.as_bytes(), Some(1))?;
        req.insert_header("host", "origin")?;
        // Revalidating an expired object: its tags, so the origin (or the owner) can answer 304
        // without a resize when the original did not change. Not for a purged object: a purge
        // takes every earlier copy out of service, so it is refetched in full.
        if let (false, Some(meta)) = (ctx.purged, session.cache.maybe_cache_meta()) {
            let h = meta.headers();
            if let (Some(etag), Some(source)) = (h.get(http::header::ETAG), h.get(&SOURCE_ETAG)) {
                req.insert_header(http::header::IF_NONE_MATCH, etag.clone())?;
                req.insert_header(SOURCE_ETAG, source.clone())?;
            }
        }
        if let Some(cluster) = &self.cluster {
            ctx.fill.sign(cluster, &mut req)?;
        }
        *upstream = req;
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut EdgeCtx,
    ) -> Result<()> {
        if self.draining.is_set() {
            // Pingora then sends `Connection: close` and closes after this response.
            session.set_keepalive(None);
        }
        resp.insert_header("x-cache", Self::cache_status(session, ctx))?;
        if let Some(peer) = ctx.fill.header() {
            resp.insert_header(PEER_HEADER, peer)?;
        }
        resp.insert_header("x-content-type-options", "nosniff")?;
        // Only the Accept class may vary an answer, and only a negotiated one's (`format=auto`).
        resp.remove_header("vary");
        if ctx.variant.as_ref().is_some_and(Variant::is_negotiated) {
            resp.insert_header("vary", "Accept")?;
        }
        // Internal; a peer's copy keeps them (the asking node caches by them).
        if !self.from_peer {
            resp.remove_header(&SOURCE_ETAG);
            resp.remove_header(&INTERIM);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut EdgeCtx,
        mut e: Box<PError>,
    ) -> Box<PError> {
        // The owner is down or unreachable: fill locally, now.
        if ctx.fill.failed(true) {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<PError>,
        ctx: &mut EdgeCtx,
        client_reused: bool,
    ) -> Box<PError> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // The owner broke off: fill locally if the client has been sent nothing yet.
        if ctx.fill.failed(session.response_written().is_none()) {
            e.set_retry(true);
        } else if !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &PError,
        _ctx: &mut EdgeCtx,
    ) -> FailToProxy {
        let err = match e.etype() {
            ErrorType::HTTPStatus(code) if *code == 504 => Error::Timeout,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Error::Timeout
            }
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
                if e.esource() == &ErrorSource::Downstream =>
            {
                // The client went away; nobody to answer.
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
            _ if e.esource() == &ErrorSource::Downstream => Error::bad_request("malformed request"),
            _ if e.esource() == &ErrorSource::Upstream => Error::Upstream(e.to_string()),
            _ => Error::Internal(e.to_string()),
        };
        tracing::warn!("edge failed to proxy: {e}");
        if session.response_written().is_some() {
            // Headers (and maybe part of the body) are out: an error text now would be spliced
            // into the image. Closing the connection is the only honest signal left.
            return FailToProxy {
                error_code: err.status(),
                can_reuse_downstream: false,
            };
        }
        if let Err(write_err) = respond_error(session, &err).await {
            tracing::debug!("could not send error answer: {write_err}");
        }
        FailToProxy {
            error_code: err.status(),
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &EdgeCtx, error: &PError) -> bool {
        // Clients hanging up mid-request is routine at an edge, not an error worth a log line.
        error.esource() == &ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    async fn logging(&self, session: &mut Session, e: Option<&PError>, ctx: &mut EdgeCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let cache = Self::cache_status(session, ctx);
        let elapsed = ctx.started.elapsed();
        if session.cache.lock_duration().is_some() {
            metrics().cache_coalesced.inc();
        }
        let cache_label = cache.to_ascii_lowercase();
        metrics()
            .requests
            .with_label_values(&[&status.to_string(), &cache_label])
            .inc();
        metrics()
            .request_duration
            .with_label_values(&[&cache_label])
            .observe(elapsed.as_secs_f64());
        if let Some(log) = &self.access_log {
            let req = session.req_header();
            let header = |name: http::header::HeaderName| {
                req.headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
            };
            let uri = req.uri.to_string();
            log.log(&Entry {
                time: access_log::rfc3339(ctx.started_at),
                client: self
                    .client_ip(session)
                    .map_or_else(|| "-".to_string(), |ip| ip.to_string()),
                method: req.method.as_str(),
                uri: &uri,
                protocol: if session.is_http2() {
                    "HTTP/2.0"
                } else {
                    "HTTP/1.1"
                },
                status,
                bytes: session.body_bytes_sent(),
                cache,
                ms: access_log::ms(elapsed),
                fetch_ms: ctx.timings.fetch.map(access_log::ms),
                resize_ms: ctx.timings.resize.map(access_log::ms),
                referer: header(http::header::REFERER),
                user_agent: header(http::header::USER_AGENT),
                error: e.map(|e| e.to_string()),
            });
        }
        // The response is complete: mirroring (a non-blocking enqueue) cannot delay it.
        if let (Some(mirror), Some(v)) = (&self.mirror, &ctx.variant) {
            let served = matches!(status, 200..=299 | 304);
            let mirrored = session
                .req_header()
                .headers
                .contains_key(crate::mirror::MIRROR_HEADER);
            if served && !mirrored {
                mirror.offer(v);
            }
        }
    }
}
