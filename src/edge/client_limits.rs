//! Slow clients: a deadline for the whole request header.
//!
//! Pingora times out each *read* of a request header (60 s), not the header as a whole, so a
//! client that sends one byte a minute holds its connection (and its buffer) indefinitely:
//! the slowloris attack. [`HeaderDeadline`] wraps each plain or TLS HTTP/1 connection and
//! fails the read with `TimedOut` once a request header has been arriving for longer than
//! `edge.header_timeout`; Pingora then closes the connection. The clock starts when the
//! connection is accepted, and for each later request on a kept-alive connection when its
//! first byte arrives (idle time between requests is `edge.keepalive_timeout`'s business).
//! The header's end is found by scanning for the blank line, carrying 3 bytes across reads.
//!
//! It also closes *idle* kept-alive connections once the server starts shutting down (graceful
//! upgrade or stop): otherwise they stay open until the grace period ends and are then reset,
//! and a client that picks one from its pool at that moment loses its request. Closing at the
//! very instant of the shutdown would race with clients that just got a keep-alive response and
//! are sending their next request, so a connection is closed only after [`IDLE_LINGER`] of
//! silence (no byte read, none written): a request that arrives is served (with
//! `Connection: close`, see `drain`). A connection in the middle of a response keeps writing,
//! so it is never idle and is left to finish.
//!
//! HTTP/2 connections (ALPN `h2`) get the same deadline, found in frames rather than text
//! ([`H2Scan`]): from the accept until the first request's header block is complete (preface,
//! SETTINGS, HEADERS + CONTINUATIONs), and for each later header block from its first byte.
//! Pingora's h2 idle timeout only runs between streams, and a trickled header block (or a
//! preface that never comes) is not a stream yet, so without this such a connection stayed
//! open for `edge.keepalive_timeout` or, before the preface, indefinitely. Idle h2 connections
//! at shutdown are Pingora's business (GOAWAY).
//!
//! With `edge.proxy_protocol` on, a plain connection's PROXY header is read here first
//! ([`super::proxy_protocol`]).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics::metrics;

/// How long an idle connection is kept once shutdown starts, for a request already on its way.
pub const IDLE_LINGER: Duration = Duration::from_millis(500);

/// A Pingora app with the header deadline applied to its HTTP/1 connections.
pub struct ClientLimits<A> {
    inner: Arc<A>,
    header_timeout: Duration,
    /// Plain connections open with a PROXY header (TLS ones are read in the pre-TLS hook).
    proxy_protocol: bool,
}

impl<A> ClientLimits<A> {
    /// Wrap `inner`.
    pub fn new(inner: A, header_timeout: Duration) -> Self {
        ClientLimits {
            inner: Arc::new(inner),
            header_timeout,
            proxy_protocol: false,
        }
    }

    /// Require a PROXY protocol header on plain connections (see [`super::proxy_protocol`]).
    pub fn with_proxy_protocol(mut self, on: bool) -> Self {
        self.proxy_protocol = on;
        self
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ClientLimits<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream = if self.proxy_protocol && stream.get_ssl_digest().is_none() {
            super::proxy_protocol::accept_plain(stream, self.header_timeout).await?
        } else {
            stream
        };
        let stream: Stream = if stream.selected_alpn_proto() == Some(ALPN::H2) {
            Box::new(HeaderDeadline::new(stream, self.header_timeout).h2())
        } else {
            Box::new(
                HeaderDeadline::new(stream, self.header_timeout).closing_idle_on(shutdown.clone()),
            )
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        // Pingora's proxy, once cleaned up, drops every HTTP/1 connection waiting for its next
        // request at that instant — under steady keep-alive load most of them are, and a
        // request the client is sending right then is lost (the resets seen across graceful
        // upgrades). So the cleanup waits: meanwhile a connection that sends a request gets its
        // answer with `Connection: close`, and one that stays silent for IDLE_LINGER is closed
        // by its HeaderDeadline. Only connections left after that are dropped.
        tokio::time::sleep(IDLE_LINGER * 3).await;
        self.inner.cleanup().await
    }
}

/// A connection whose request headers must arrive within a deadline.
pub struct HeaderDeadline {
    inner: Stream,
    timeout: Duration,
    /// When the request header now arriving must be complete; `None` between requests.
    due: Option<Instant>,
    /// The timer for `due`, armed only when a read would wait while a header is incomplete:
    /// most headers arrive whole in one read, so most requests never touch the timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
    /// The last bytes of the header so far, to find a blank line split across reads.
    tail: [u8; 3],
    /// A response was written since the last header ended: the next bytes start a request.
    responded: bool,
    /// Bytes of the current request header received so far.
    header_bytes: usize,
    /// Resolves when the server starts shutting down (a Mutex only to make the stream Sync;
    /// it is reached through `&mut self`, never locked).
    shutdown: Option<Mutex<Pin<Box<dyn Future<Output = ()> + Send>>>>,
    /// Armed once shutdown is seen: fires [`IDLE_LINGER`] after the last byte either way.
    linger: Option<Pin<Box<Sleep>>>,
    /// When the last byte was read or written.
    last_io: Instant,
    /// Set on an HTTP/2 connection: where its frames stand (the HTTP/1 fields are then unused).
    h2: Option<H2Scan>,
}

impl fmt::Debug for HeaderDeadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderDeadline")
            .field("inner", &self.inner)
            .field("waiting", &self.due.is_some())
            .finish()
    }
}

impl HeaderDeadline {
    /// Wrap a just-accepted connection; its first header is due within `timeout`.
    pub fn new(inner: Stream, timeout: Duration) -> Self {
        HeaderDeadline {
            inner,
            timeout,
            due: Some(Instant::now() + timeout),
            timer: None,
            tail: [0; 3],
            responded: false,
            header_bytes: 0,
            shutdown: None,
            linger: None,
            last_io: Instant::now(),
            h2: None,
        }
    }

    /// Read the connection as HTTP/2 frames instead of HTTP/1 text.
    pub fn h2(mut self) -> Self {
        self.h2 = Some(H2Scan::default());
        self
    }

    /// Also end the connection at shutdown while it is idle.
    pub fn closing_idle_on(mut self, mut shutdown: ShutdownWatch) -> Self {
        self.shutdown = Some(Mutex::new(Box::pin(async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })));
        self
    }

    /// No byte of a request is pending: before the first one, or between requests.
    fn idle(&self) -> bool {
        if self.due.is_some() {
            self.header_bytes == 0
        } else {
            self.responded
        }
    }

    /// Look for the end of the header in newly read bytes (no allocation: this runs on every
    /// read of every request).
    fn scan(&mut self, new: &[u8]) {
        self.header_bytes += new.len();
        // A blank line split across reads lies within the 3 kept bytes and 3 new ones.
        let mut seam = [0u8; 6];
        seam[..3].copy_from_slice(&self.tail);
        let k = new.len().min(3);
        seam[3..3 + k].copy_from_slice(&new[..k]);
        if ends_head(&seam[..3 + k]) || ends_head(new) {
            self.header_done();
        } else if new.len() >= 3 {
            self.tail.copy_from_slice(&new[new.len() - 3..]);
        } else {
            // Shift the kept bytes left by the new ones.
            self.tail.rotate_left(new.len());
            self.tail[3 - new.len()..].copy_from_slice(new);
        }
    }

    /// A request header is complete: no deadline until the next one starts.
    fn header_done(&mut self) {
        self.due = None;
        // An armed timer would wake the task once more at the old deadline.
        self.timer = None;
        self.responded = false;
        self.tail = [0; 3];
        self.header_bytes = 0;
    }

    /// The header deadline passed: the read fails and Pingora closes the connection.
    fn timed_out() -> Poll<io::Result<()>> {
        metrics().client_timeouts.inc();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request header not received in time",
        )))
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(s) = this.shutdown.as_mut() {
            if s.get_mut().as_mut().poll(cx).is_ready() {
                this.shutdown = None;
                this.linger = Some(Box::pin(tokio::time::sleep(IDLE_LINGER)));
            }
        }
        if this.idle() {
            if let Some(l) = this.linger.as_mut() {
                let due = this.last_io + IDLE_LINGER;
                if l.deadline() != due {
                    l.as_mut().reset(due);
                }
                if l.as_mut().poll(cx).is_ready() {
                    // End of stream: Pingora treats it as the client closing a kept-alive
                    // connection and closes it cleanly.
                    return Poll::Ready(Ok(()));
                }
            }
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        match res {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() {
                    return res;
                }
                let now = Instant::now();
                // A client trickling bytes keeps reads ready, so the deadline is checked here
                // too (before the scan: a header completed late is still late).
                if this.due.is_some_and(|due| now >= due) {
                    return Self::timed_out();
                }
                if let Some(scan) = this.h2.as_mut() {
                    scan.feed(new);
                    if scan.pending() {
                        this.due.get_or_insert(now + this.timeout);
                    } else if scan.header_blocks > 0 && this.due.is_some() {
                        this.header_done();
                    }
                } else {
                    this.last_io = now;
                    if this.due.is_none() && this.responded {
                        // The first bytes of the next request on a kept-alive connection.
                        this.due = Some(now + this.timeout);
                        this.tail = [0; 3];
                        this.header_bytes = 0;
                    }
                    if this.due.is_some() {
                        this.scan(new);
                    }
                }
                res
            }
            Poll::Pending => {
                if let Some(due) = this.due {
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                    if timer.deadline() != due {
                        timer.as_mut().reset(due);
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        return Self::timed_out();
                    }
                }
                Poll::Pending
            }
            Poll::Ready(Err(_)) => res,
        }
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.responded = true;
        self.last_io = Instant::now();
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
        self.responded = true;
        self.last_io = Instant::now();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// HTTP/2's client connection preface.
const H2_PREFACE_LEN: usize = 24;
/// Frame types that carry a header block, and the flag that ends one (RFC 9113 §6.2, §6.10).
const H2_HEADERS: u8 = 0x1;
const H2_CONTINUATION: u8 = 0x9;
const H2_END_HEADERS: u8 = 0x4;

/// Follows an HTTP/2 connection's incoming frames far enough to tell whether a request header
/// is arriving: only frame headers are parsed, payloads are skipped by length.
#[derive(Debug)]
struct H2Scan {
    /// Bytes of the client preface still to come.
    preface_left: usize,
    /// The frame header being read, and how much of it has arrived.
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// The current frame is HEADERS or CONTINUATION, and whether it ends its block.
    header_frame: bool,
    ends_block: bool,
    /// A header block began (HEADERS) and has not ended (END_HEADERS).
    block_open: bool,
    /// Header blocks completed.
    header_blocks: u64,
}

impl Default for H2Scan {
    fn default() -> Self {
        H2Scan {
            preface_left: H2_PREFACE_LEN,
            head: [0; 9],
            head_len: 0,
            payload_left: 0,
            header_frame: false,
            ends_block: false,
            block_open: false,
            header_blocks: 0,
        }
    }
}

impl H2Scan {
    fn feed(&mut self, mut new: &[u8]) {
        while !new.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(new.len());
                self.preface_left -= n;
                new = &new[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(new.len());
                self.payload_left -= n;
                new = &new[n..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
            } else {
                let n = (9 - self.head_len).min(new.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&new[..n]);
                self.head_len += n;
                new = &new[n..];
                if self.head_len == 9 {
                    self.head_len = 0;
                    let [l0, l1, l2, kind, flags, ..] = self.head;
                    self.header_frame = kind == H2_HEADERS || kind == H2_CONTINUATION;
                    self.ends_block = self.header_frame && flags & H2_END_HEADERS != 0;
                    if kind == H2_HEADERS {
                        self.block_open = true;
                    }
                    self.payload_left = u32::from_be_bytes([0, l0, l1, l2]) as usize;
                    if self.payload_left == 0 {
                        self.frame_done();
                    }
                }
            }
        }
    }

    fn frame_done(&mut self) {
        if self.header_frame && self.ends_block && self.block_open {
            self.block_open = false;
            self.header_blocks += 1;
        }
        self.header_frame = false;
    }

    /// Part of a preface, a frame header or a header block has arrived and the rest has not.
    fn pending(&self) -> bool {
        self.preface_left > 0
            || self.head_len > 0
            || (self.header_frame && self.payload_left > 0)
            || self.block_open
    }
}

super::stream::delegate_stream_traits!(HeaderDeadline, inner);

/// Whether `w` holds the blank line that ends a request head: CRLF CRLF, or the bare-LF forms
/// httparse (the loop's and Pingora's parser) also accepts (`\n\n`, `\n\r\n`). A field line
/// never starts with CR or LF, so these occur nowhere else in a head.
fn ends_head(w: &[u8]) -> bool {
    w.windows(2).any(|p| p == b"\n\n") || w.windows(3).any(|p| p == b"\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(chunks: &[&[u8]]) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, _b) = tokio::io::duplex(64);
            let mut d = HeaderDeadline::new(Box::new(a), Duration::from_secs(1));
            for c in chunks {
                d.scan(c);
            }
            d.due.is_none()
        })
    }

    /// Feed `chunks` to a fresh scan: (pending after each chunk, header blocks at the end).
    fn h2_scan(chunks: &[&[u8]]) -> (Vec<bool>, u64) {
        let mut s = H2Scan::default();
        let pending = chunks
            .iter()
            .map(|c| {
                s.feed(c);
                s.pending()
            })
            .collect();
        (pending, s.header_blocks)
    }

    #[test]
    fn h2_header_blocks_are_followed_across_frames_and_reads() {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let settings: &[u8] = &[0, 0, 0, 0x4, 0, 0, 0, 0, 0];
        let headers_end: &[u8] = &[0, 0, 3, 0x1, 0x5, 0, 0, 0, 1, 0x82, 0x84, 0x86];
        let headers_open: &[u8] = &[0, 0, 1, 0x1, 0x1, 0, 0, 0, 3, 0x82];
        let continuation_end: &[u8] = &[0, 0, 2, 0x9, 0x4, 0, 0, 0, 3, 0x84, 0x86];
        let data: &[u8] = &[0, 0, 2, 0x0, 0x1, 0, 0, 0, 1, 7, 7];
        // Preface in two reads, then SETTINGS: nothing partial, no request yet either (the
        // accept's deadline stays armed until the first header block).
        assert_eq!(
            h2_scan(&[&PREFACE[..10], &PREFACE[10..], settings]),
            (vec![true, false, false], 0)
        );
        // A whole request in one read.
        let all: Vec<u8> = [PREFACE, settings, headers_end].concat();
        assert_eq!(h2_scan(&[&all]), (vec![false], 1));
        // A HEADERS frame split in the frame header and in the payload.
        assert_eq!(
            h2_scan(&[
                PREFACE,
                &headers_end[..4],
                &headers_end[4..10],
                &headers_end[10..]
            ]),
            (vec![false, true, true, false], 1)
        );
        // HEADERS without END_HEADERS keeps the block open through other bytes until the
        // CONTINUATION that ends it.
        assert_eq!(
            h2_scan(&[
                PREFACE,
                headers_open,
                &continuation_end[..9],
                &continuation_end[9..]
            ]),
            (vec![false, true, true, false], 1)
        );
        // A DATA payload arriving slowly is not a header.
        assert_eq!(
            h2_scan(&[PREFACE, headers_end, &data[..10], &data[10..]]),
            (vec![false, false, false, false], 1)
        );
    }

    #[test]
    fn the_blank_line_is_found_across_reads() {
        assert!(scanned(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]));
        assert!(scanned(&[b"GET / HTTP/1.1\r\n", b"\r", b"\n"]));
        assert!(scanned(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n\r\n"]));
        assert!(scanned(&[b"\r", b"\n", b"\r", b"\n"]));
        assert!(!scanned(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]));
        assert!(!scanned(&[b"GET / HTTP/1.1\r\n\r", b"x\n"]));
        assert!(scanned(&[b"GET / HTTP/1.1\r\nA: b\r\n", b"\r\n"]));
        assert!(scanned(&[b"GET / HTTP/1.1\r\nA: b\r", b"\n", b"\r\nxyz"]));
        let one_by_one: Vec<&[u8]> = b"GET / HTTP/1.1\r\nA: b\r\n\r\n".chunks(1).collect();
        assert!(scanned(&one_by_one));
        assert!(!scanned(&one_by_one[..one_by_one.len() - 1]));
        assert!(!scanned(&[b"\r\n", b"x", b"\r\n"]));
        // Bare-LF heads, which httparse (so the edge) accepts.
        assert!(scanned(&[b"GET / HTTP/1.1\nHost: a\n\n"]));
        assert!(scanned(&[b"GET / HTTP/1.1\nHost: a\n", b"\n"]));
        assert!(scanned(&[b"GET / HTTP/1.1\nA: b\n\r", b"\n"]));
        assert!(!scanned(&[b"GET / HTTP/1.1\nHost: a\n"]));
        assert!(!scanned(&[b"GET / HTTP/1.1\nHost: a\r\n", b"B: c\n"]));
    }

    #[test]
    fn whole_headers_never_arm_the_timer_and_slow_ones_time_out() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let timeout = Duration::from_millis(300);
            let (a, mut client) = tokio::io::duplex(1024);
            let mut d = HeaderDeadline::new(Box::new(a), timeout);
            let mut buf = [0u8; 1024];
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            assert!(d.read(&mut buf).await.unwrap() > 0);
            assert!(d.due.is_none() && d.timer.is_none(), "{d:?}");
            d.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            // A kept-alive connection, idle: a read waits without a deadline.
            let idle = tokio::time::timeout(timeout * 2, d.read(&mut buf)).await;
            assert!(idle.is_err(), "an idle connection is not timed out here");
            // The next request starts but stops halfway: the read that waits arms the timer.
            client.write_all(b"GET / HT").await.unwrap();
            assert!(d.read(&mut buf).await.unwrap() > 0);
            assert!(d.due.is_some() && d.timer.is_none());
            let err = d.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);

            // A client trickling a byte every 50 ms never lets a read wait long: still cut.
            let (a, mut client) = tokio::io::duplex(1024);
            let mut d = HeaderDeadline::new(Box::new(a), timeout);
            tokio::spawn(async move {
                for b in b"GET / HTTP/1.1\r\nHost: slowloris.example\r\n"
                    .iter()
                    .cycle()
                {
                    if client.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            let err = loop {
                match d.read(&mut buf).await {
                    Ok(n) => assert!(n > 0),
                    Err(e) => break e,
                }
            };
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        });
    }
}
