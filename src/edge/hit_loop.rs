//! The HTTP/1 hit loop: fresh memory hits answered before Pingora's per-request session.
//!
//! Even on the fast path in the request filter ([`super::fast_hit`]), a hit pays for what
//! Pingora builds per request: a boxed H1 session and its digest, the request and response
//! headers as `HeaderMap`s, the proxy's per-request session, modules and context, and a header
//! serialized for every answer — about a quarter of a hit's CPU, more than imgedge's own work
//! (README, "where a hit's CPU goes"). This loop owns each plain or TLS HTTP/1 connection of the
//! edge listener instead. It reads a request head into its own buffer and parses it with
//! `httparse` (Pingora's parser). A GET whose variant is a fresh object of the memory tier, with
//! nothing that needs pingora-cache (no range, no validators), is answered here: the object's
//! header as HTTP/1 writes it (kept with the object, [`crate::cache::head::HitHead::wire`]),
//! `Age`, `Date` and `Connection` as Pingora's writer adds them, and the body, in one write —
//! the same bytes the fast path sends (`tests/hit_loop.rs` compares them). It keeps what
//! Pingora's session would: keep-alive and its idle timeout, the request limit per connection,
//! `Connection: close` while draining, the write timeout, the access log, the metrics and
//! mirroring; the header deadline and PROXY protocol sit below it ([`super::client_limits`]).
//!
//! Every other request goes to Pingora's session with the bytes read so far, untouched
//! (`set_pipelined_prefix`: Pingora parses them as if it had read them itself).
//!
//! Request smuggling lives where two parsers disagree on where a request ends. The loop only
//! consumes bytes for requests that cannot carry a body: HTTP/1.1 without `Content-Length` or
//! `Transfer-Encoding` ends at its blank line for every parser (RFC 9112 §6.3, and Pingora's
//! body reader). A request handed to Pingora that cannot carry a body either comes back to the
//! loop afterwards: what Pingora read past it (the stream records it while Pingora has it,
//! [`Replay`]) is the start of the next request. Anything else — a body, HTTP/1.0, an
//! `Upgrade`, a header the parser refuses or one too large — hands the connection to Pingora for
//! good, as if the loop were not there. HTTP/2 connections go straight to Pingora.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use http::uri::PathAndQuery;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Shutdown, Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use prometheus::{Histogram, IntCounter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::access_log::{self, AccessLog, Entry};
use super::drain::Draining;
use super::fast_hit::{self, FreshHit};
use crate::cache::Cache;
use crate::mirror::Mirror;
use crate::policy::rate::MissLimiter;
use crate::policy::Policy;
use crate::variant::{ParseOptions, Variant};

/// Header fields the loop parses; a request with more goes to Pingora (which takes 256).
const MAX_FIELDS: usize = 64;
/// Bytes read per read call, at least.
const READ_CHUNK: usize = 4096;

/// What the loop needs of the edge to answer as the edge would (built by
/// [`super::Edge::hit_door`] from the edge's own parts).
pub struct HitDoor {
    /// The cache the edge serves from.
    pub cache: Cache,
    /// URL parsing limits and defaults.
    pub parse: ParseOptions,
    /// Signature and size policy (and the client-address header).
    pub policy: Arc<Policy>,
    /// `edge.max_uri_bytes`: longer targets go to Pingora (414).
    pub max_uri_bytes: usize,
    /// `edge.max_header_bytes`: larger headers go to Pingora (431).
    pub max_header_bytes: usize,
    /// `edge.write_timeout`.
    pub write_timeout: Duration,
    /// `edge.keepalive_timeout`.
    pub keepalive: Duration,
    /// `edge.keepalive_requests` (`None`: no limit).
    pub keepalive_requests: Option<u32>,
    /// Set while the server shuts down: answers close their connection.
    pub draining: Draining,
    /// The access log, when on.
    pub access_log: Option<Arc<AccessLog>>,
    /// Traffic mirroring, when on.
    pub mirror: Option<Arc<Mirror>>,
    /// `imgedge_requests_total{status="200",cache="hit"}`, resolved once.
    pub served: IntCounter,
    /// `imgedge_request_duration_seconds{cache="hit"}`, resolved once.
    pub duration: Histogram,
}

/// A Pingora HTTP app with the hit loop in front of its HTTP/1 connections.
pub struct HitLoop<A> {
    inner: Arc<A>,
    door: Option<HitDoor>,
}

impl<A> HitLoop<A> {
    /// Put the loop in front of `inner`; with no door every connection goes straight to it.
    pub fn new(inner: A, door: Option<HitDoor>) -> Self {
        HitLoop {
            inner: Arc::new(inner),
            door,
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for HitLoop<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        match &self.door {
            Some(door) if stream.selected_alpn_proto() != Some(ALPN::H2) => {
                self.serve(door, stream, shutdown).await
            }
            _ => self.inner.process_new(stream, shutdown).await,
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.inner).await
    }
}

/// What to do with the bytes read so far on a connection.
enum Step {
    /// The request head is not complete yet.
    Partial,
    /// Answer it from memory.
    Hit(Box<Answer>),
    /// Pingora answers it; it has no body, so the loop goes on after it.
    Hand { head_len: usize },
    /// Pingora takes the connection from here.
    Leave,
}

/// A request the loop answers.
struct Answer {
    /// Bytes of its head.
    head_len: usize,
    hit: FreshHit,
    /// The client asked to close.
    close: bool,
    /// For mirroring (when on and the request was not itself mirrored).
    mirror: Option<Variant>,
    /// For the access log (when on).
    log: Option<LogFields>,
    started: Instant,
    started_at: SystemTime,
}

/// The request's part of an access log line.
struct LogFields {
    uri: String,
    referer: String,
    user_agent: String,
    client: String,
}

impl<A: HttpServerApp + Send + Sync + 'static> HitLoop<A> {
    /// Serve one HTTP/1 connection; `None` when it is over.
    async fn serve(
        self: &Arc<Self>,
        door: &HitDoor,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned())
            .and_then(|a| a.as_inet().map(|a| a.ip()));
        let mut io = Box::new(Replay::new(stream));
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut out = BytesMut::new();
        // Requests answered on this connection so far.
        let mut served: u32 = 0;
        loop {
            match door.classify(&buf, peer) {
                Step::Partial => {
                    // Every read waits at most the keep-alive timeout, as Pingora's do: between
                    // requests that is the idle timeout; within a header the header deadline
                    // (below this) is usually tighter, but it is off once a read held a blank
                    // line, and a head may start in the read that ended the one before.
                    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                        buf.reserve(READ_CHUNK);
                    }
                    match within(Some(door.keepalive), io.read_buf(&mut buf)).await {
                        Some(Ok(n)) if n > 0 => {}
                        // Closed, failed, timed out (the header deadline fails the read), or
                        // idle past the keep-alive timeout.
                        _ => return None,
                    }
                }
                Step::Hit(answer) => {
                    let close = answer.close
                        || door.draining.is_set()
                        || *shutdown.borrow()
                        || door.keepalive_requests.is_some_and(|n| served >= n);
                    let body = answer.hit.obj.body.clone();
                    out.clear();
                    if !respond(&answer.hit, close, &mut out) {
                        return self.leave(door, io, buf, served, shutdown).await;
                    }
                    buf.advance(answer.head_len);
                    answer.hit.count();
                    crate::metrics::metrics().hit_loop_answers.inc();
                    let sent = within(Some(door.write_timeout), async {
                        io.write_all(&out).await?;
                        io.write_all(&body).await?;
                        io.flush().await
                    })
                    .await;
                    let ok = matches!(sent, Some(Ok(())));
                    door.record(&answer, ok, body.len());
                    if !ok {
                        // A client that stopped reading would stall a shutdown's flush too:
                        // drop the connection, as Pingora does after a failed write.
                        return None;
                    }
                    if close {
                        within(Some(door.write_timeout), Shutdown::shutdown(&mut *io)).await;
                        return None;
                    }
                    served = served.saturating_add(1);
                }
                Step::Hand { head_len } => {
                    let read = buf.split().freeze();
                    io.prefix = read.clone();
                    io.tap = Some(BytesMut::new());
                    let mut session = ServerSession::new_http1(io);
                    door.keep_alive(&mut session, served, shutdown);
                    let reused = self.inner.process_new_http(session, shutdown).await?;
                    let (stream, settings) = reused.consume();
                    io = match stream.into_any().downcast::<Replay>() {
                        Ok(io) => io,
                        // Not the stream handed over (cannot happen): Pingora's own reuse.
                        Err(_) => return None,
                    };
                    drop(settings);
                    // Everything read past this request (what Pingora did not take of the
                    // prefix, and what it read itself) starts the next one.
                    let tapped = io.tap.take().unwrap_or_default();
                    io.prefix = Bytes::new();
                    buf = BytesMut::with_capacity(READ_CHUNK.max(read.len() - head_len));
                    buf.extend_from_slice(&read[head_len..]);
                    buf.extend_from_slice(&tapped);
                    served = served.saturating_add(1);
                }
                Step::Leave => return self.leave(door, io, buf, served, shutdown).await,
            }
        }
    }

    /// Hand the connection to Pingora for the rest of its life, with the bytes read so far:
    /// Pingora's own keep-alive loop (as `ServerApp::process_new` runs it).
    async fn leave(
        self: &Arc<Self>,
        door: &HitDoor,
        io: Box<Replay>,
        read: BytesMut,
        served: u32,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut session = ServerSession::new_http1(io);
        door.keep_alive(&mut session, served, shutdown);
        if !read.is_empty() {
            session.set_pipelined_prefix(read);
        }
        let mut result = self.inner.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            result = self.inner.process_new_http(session, shutdown).await;
        }
        None
    }
}

impl HitDoor {
    /// Decide what the bytes read so far on a connection call for.
    fn classify(&self, buf: &[u8], peer: Option<IpAddr>) -> Step {
        if buf.is_empty() {
            return Step::Partial;
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut fields);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            // Pingora answers what is too large (414/431) or cannot be parsed (400).
            Ok(httparse::Status::Partial)
                if buf.len() <= self.max_uri_bytes + self.max_header_bytes + 1024 =>
            {
                return Step::Partial
            }
            Ok(httparse::Status::Partial) | Err(_) => return Step::Leave,
        };
        if req.version != Some(1) {
            return Step::Leave;
        }
        let mut wanted = Wanted::default();
        for f in req.headers.iter() {
            if !wanted.note(f, self.policy.misses.as_ref()) {
                return Step::Leave;
            }
        }
        let started = Instant::now();
        let (Some(method), Some(target)) = (req.method, req.path) else {
            return Step::Leave;
        };
        let hand = Step::Hand { head_len };
        if method != "GET"
            || wanted.slow
            || target.len() > self.max_uri_bytes
            || wanted.header_bytes > self.max_header_bytes
        {
            return hand;
        }
        // As Pingora makes the request's URI (a target it refuses is its to answer).
        let Ok(pq) = PathAndQuery::try_from(target) else {
            return hand;
        };
        let variant = Variant::parse(pq.path(), pq.query(), &self.parse)
            .and_then(|v| self.policy.admit(pq.query(), v));
        let Ok(mut variant) = variant else {
            return hand;
        };
        variant.negotiate(wanted.accept);
        let started_at = SystemTime::now();
        let Some(hit) = fast_hit::lookup(&self.cache, &variant, started_at) else {
            return hand;
        };
        let log = self.access_log.as_ref().map(|_| {
            let text = |v: Option<&[u8]>| String::from_utf8_lossy(v.unwrap_or(b"")).into_owned();
            let client = match &self.policy.misses {
                Some(_) => MissLimiter::client_from(wanted.client_ip, peer),
                None => peer,
            };
            LogFields {
                uri: pq.as_str().to_string(),
                referer: text(wanted.referer),
                user_agent: text(wanted.user_agent),
                client: client.map_or_else(|| "-".to_string(), |ip| ip.to_string()),
            }
        });
        let mirror = (self.mirror.is_some() && !wanted.mirrored).then_some(variant);
        Step::Hit(Box::new(Answer {
            head_len,
            hit,
            close: wanted.close,
            mirror,
            log,
            started,
            started_at,
        }))
    }

    /// Set a session handed to Pingora up as Pingora's own keep-alive loop would have.
    fn keep_alive(&self, session: &mut ServerSession, served: u32, shutdown: &ShutdownWatch) {
        let open = !*shutdown.borrow();
        session.set_keepalive(open.then_some(self.keepalive.as_secs().max(1)));
        // Pingora counts down from the limit, once per reuse.
        session.set_keepalive_reuses_remaining(
            self.keepalive_requests.map(|n| n.saturating_sub(served)),
        );
    }

    /// Metrics, access log and mirroring for an answered request (the edge's logging phase).
    fn record(&self, answer: &Answer, sent: bool, body_len: usize) {
        let elapsed = answer.started.elapsed();
        self.served.inc();
        self.duration.observe(elapsed.as_secs_f64());
        if let (Some(log), Some(f)) = (&self.access_log, &answer.log) {
            log.log(&Entry {
                time: access_log::rfc3339(answer.started_at),
                client: f.client.clone(),
                method: "GET",
                uri: &f.uri,
                protocol: "HTTP/1.1",
                status: 200,
                bytes: if sent { body_len } else { 0 },
                cache: "HIT",
                ms: access_log::ms(elapsed),
                fetch_ms: None,
                resize_ms: None,
                referer: &f.referer,
                user_agent: &f.user_agent,
                error: (!sent).then(|| "writing the response failed".to_string()),
            });
        }
        if let (Some(mirror), Some(v), true) = (&self.mirror, &answer.mirror, sent) {
            mirror.offer(v);
        }
    }
}

/// What the loop reads from a request's header fields.
#[derive(Default)]
struct Wanted<'a> {
    /// The first `Accept`.
    accept: Option<&'a [u8]>,
    referer: Option<&'a [u8]>,
    user_agent: Option<&'a [u8]>,
    /// The last value of the trusted client-address header.
    client_ip: Option<&'a [u8]>,
    /// `Connection: close`.
    close: bool,
    /// `Host` fields seen.
    hosts: u32,
    /// A range, a validator or a `Host` Pingora refuses: Pingora's to answer.
    slow: bool,
    /// A mirrored request (never mirrored again).
    mirrored: bool,
    /// The fields' size as the edge counts it for `max_header_bytes`.
    header_bytes: usize,
}

impl<'a> Wanted<'a> {
    /// Note one field; `false` when the connection must go to Pingora (a body, an upgrade).
    fn note(&mut self, f: &httparse::Header<'a>, misses: Option<&MissLimiter>) -> bool {
        let is = |n: &str| f.name.eq_ignore_ascii_case(n);
        self.header_bytes += f.name.len() + f.value.len() + 4;
        if is("content-length") || is("transfer-encoding") || is("upgrade") || is("expect") {
            return false;
        }
        if is("connection") {
            // Pingora trims tokens as `str` (Unicode whitespace): leave it what ASCII rules
            // might read differently.
            if !f.value.is_ascii() {
                return false;
            }
            for token in f.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return false;
                }
            }
        } else if is("host") {
            // Pingora refuses (400) a second Host or userinfo in it (RFC 9112 §3.2).
            self.hosts += 1;
            self.slow |= self.hosts > 1 || f.value.contains(&b'@');
        } else if is("accept") {
            self.accept.get_or_insert(f.value);
        } else if is("referer") {
            self.referer.get_or_insert(f.value);
        } else if is("user-agent") {
            self.user_agent.get_or_insert(f.value);
        } else if is(crate::mirror::MIRROR_HEADER) {
            self.mirrored = true;
        } else if fast_hit::SLOW_PATH_HEADERS
            .iter()
            .any(|h| f.name.eq_ignore_ascii_case(h.as_str()))
        {
            self.slow = true;
        }
        if misses
            .and_then(|m| m.ip_header())
            .is_some_and(|h| f.name.eq_ignore_ascii_case(h.as_str()))
        {
            self.client_ip = Some(f.value);
        }
        true
    }
}

/// Write the answer's header into `out`: the kept block, then what Pingora's writer adds per
/// answer, in its order. `false` if the object's header cannot be sent this way.
fn respond(hit: &FreshHit, close: bool, out: &mut BytesMut) -> bool {
    let Some(head) = hit.head() else {
        return false;
    };
    out.extend_from_slice(head.wire());
    out.extend_from_slice(b"Age: ");
    out.extend_from_slice(itoa::Buffer::new().format(hit.age).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(pingora_core::protocols::http::date::get_cached_date().as_bytes());
    out.extend_from_slice(if close {
        b"\r\nConnection: close\r\n\r\n".as_slice()
    } else {
        b"\r\nConnection: keep-alive\r\n\r\n".as_slice()
    });
    true
}

/// Run `fut` for at most `limit`, arming a timer only if it does not finish at once (most
/// reads and writes of a busy connection do not wait); `None` when the time ran out.
async fn within<F: Future>(limit: Option<Duration>, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    match (first, limit) {
        (Poll::Ready(v), _) => Some(v),
        (Poll::Pending, None) => Some(fut.await),
        (Poll::Pending, Some(limit)) => tokio::time::timeout(limit, fut).await.ok(),
    }
}

/// The connection as the loop hands it to Pingora: bytes the loop already read are read
/// again first, and while `tap` is set every byte read from the connection is also kept
/// there, so the loop knows what Pingora read past the request it handed over.
#[derive(Debug)]
struct Replay {
    inner: Stream,
    prefix: Bytes,
    tap: Option<BytesMut>,
}

impl Replay {
    fn new(inner: Stream) -> Self {
        Replay {
            inner,
            prefix: Bytes::new(),
            tap: None,
        }
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(tap)) = (&res, this.tap.as_mut()) {
            tap.extend_from_slice(&buf.filled()[before..]);
        }
        res
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

super::stream::delegate_stream_traits!(Replay, inner);
