//! The HTTP/1 hit loop (`edge::hit_loop`) through the real binary and raw sockets: it answers
//! fresh memory hits with the bytes Pingora's path sends, hands every other request to Pingora
//! with the bytes it read and takes the connection back afterwards, never reads a request's
//! body as a request, and keeps Pingora's keep-alive rules and access-log lines. Each check
//! runs against a node with `edge.hit_loop: false` too, the reference.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{eventually, read, Imgedge, S3Server};

const ID: &str = "3972b16287e5.jpg";

/// One answer off the wire: its head (status line and fields, without the blank line) and body.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The head with the per-answer values (`Age`, `Date`) masked.
    fn masked_head(&self) -> String {
        self.head
            .lines()
            .map(|l| match l.split_once(':') {
                Some((k, _)) if k.eq_ignore_ascii_case("age") || k.eq_ignore_ascii_case("date") => {
                    format!("{k}: *")
                }
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\r\n")
    }
}

/// Read one answer off `s` (`bodyless`: no body whatever its Content-Length, as for HEAD and
/// 304), keeping in `buf` what was read past it; `Err(closed)` if the connection ended first
/// (`true`) or failed or timed out (`false`).
fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>, bodyless: bool) -> Result<Answer, bool> {
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let mut answer = Answer {
                head: String::from_utf8_lossy(&buf[..end]).to_string(),
                body: vec![],
            };
            let len: usize = match bodyless {
                true => 0,
                false => answer
                    .field("content-length")
                    .map_or(0, |v| v.parse().unwrap()),
            };
            if buf.len() >= end + 4 + len {
                answer.body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return Ok(answer);
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(true),
            Err(_) => return Err(false),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

/// Send `requests` in one write, then read one answer per entry of `bodyless` (see
/// [`read_answer`]) until the connection ends. Returns the answers and whether the server
/// closed the connection after them.
fn exchange(addr: &str, requests: &[u8], bodyless: &[bool]) -> (Vec<Answer>, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(requests).unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for &bodyless in bodyless {
        match read_answer(&mut s, &mut buf, bodyless) {
            Ok(answer) => out.push(answer),
            Err(closed) => return (out, closed),
        }
    }
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return (out, true),
            Err(_) => return (out, false),
            Ok(_) => {}
        }
    }
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: images.test\r\n{extra}\r\n")
}

/// An origin holding the kite as `ID`, and two nodes on it: the hit loop on (the default)
/// and off.
async fn nodes(extra_edge: &str) -> (S3Server, Imgedge, Imgedge) {
    let s3 = S3Server::start().await;
    s3.put(ID, &read("kite.jpg"));
    let on = Imgedge::start(&s3, &format!("edge:\n{extra_edge}")).await;
    let off = Imgedge::start(&s3, &format!("edge:\n  hit_loop: false\n{extra_edge}")).await;
    (s3, on, off)
}

fn addr(node: &Imgedge) -> String {
    node.base.trim_start_matches("http://").to_string()
}

async fn loop_answers(node: &Imgedge) -> f64 {
    node.metric("imgedge_hit_loop_answers_total", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_hit_is_byte_for_byte_the_answer_of_pingoras_path() {
    let (_s3, on, off) = nodes("").await;
    let path = format!("/image/{ID}?size=300x200");
    let mut hits = Vec::new();
    for node in [&on, &off] {
        let a = addr(node);
        let req = get(&path, "User-Agent: t\r\nAccept: image/webp,*/*\r\n");
        let (miss, _) = tokio::task::spawn_blocking({
            let (a, req) = (a.clone(), req.clone());
            move || exchange(&a, req.as_bytes(), &[false])
        })
        .await
        .unwrap();
        assert_eq!(miss[0].field("x-cache"), Some("MISS"));
        let (hit, closed) = tokio::task::spawn_blocking(move || {
            exchange(&a, format!("{req}{req}").as_bytes(), &[false, false])
        })
        .await
        .unwrap();
        assert!(!closed, "kept alive");
        assert_eq!(hit.len(), 2);
        assert_eq!(hit[0], hit[1]);
        assert_eq!(hit[0].body, miss[0].body);
        hits.push(hit[0].clone());
    }
    let (via_loop, via_pingora) = (&hits[0], &hits[1]);
    assert_eq!(via_loop.field("x-cache"), Some("HIT"));
    assert!(via_loop.field("age").is_some() && via_loop.field("date").is_some());
    assert_eq!(via_loop.field("connection"), Some("keep-alive"));
    assert_eq!(via_loop.masked_head(), via_pingora.masked_head());
    assert_eq!(via_loop.body, via_pingora.body);
    assert_eq!(loop_answers(&on).await, 2.0);
    assert_eq!(loop_answers(&off).await, 0.0);
    for node in [&on, &off] {
        assert_eq!(node.metric("imgedge_cache_fast_hits_total", &[]).await, 2.0);
    }
}

/// Requests the loop does not answer go to Pingora with the bytes already read, in order, and
/// the loop answers the next hit on the same connection; a request body is never read as a
/// request, with or without the loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_over_requests_keep_their_order_and_bodies_stay_bodies() {
    let (_s3, on, off) = nodes("").await;
    let hot = format!("/image/{ID}?size=300x");
    let smuggled = get(&format!("/image/{ID}?size=302x"), "");
    for node in [&on, &off] {
        assert_eq!(node.get(&hot).await.status(), 200);
        let etag = node
            .get(&hot)
            .await
            .headers()
            .get("etag")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let before = loop_answers(node).await;
        let requests = [
            get(&hot, ""),                                     // loop hit
            get(&format!("/image/{ID}?size=301x"), ""),        // miss: Pingora
            format!("HEAD {hot} HTTP/1.1\r\nHost: x\r\n\r\n"), // HEAD: Pingora
            get(&hot, "Range: bytes=0-99\r\n"),                // range: Pingora
            get(&hot, &format!("If-None-Match: {etag}\r\n")),  // 304: Pingora
            get(&hot, ""),                                     // loop hit again
            format!(
                "POST {hot} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ), // 405, body unread
            get(&hot, ""),                                     // after a body: unanswered
        ]
        .concat();
        let bodyless = [false, false, true, false, true, false, false, false];
        let a = addr(node);
        let (answers, closed) =
            tokio::task::spawn_blocking(move || exchange(&a, requests.as_bytes(), &bodyless))
                .await
                .unwrap();
        let statuses: Vec<u16> = answers.iter().map(Answer::status).collect();
        // Pingora closes a connection whose request body it did not read (the 405 is sent
        // before it): the request after it goes unanswered, never the one in the body.
        assert_eq!(statuses, [200, 200, 200, 206, 304, 200, 405]);
        assert!(closed);
        assert_eq!(answers[6].field("connection"), Some("close"));
        assert_eq!(answers[0].body, answers[5].body);
        assert_eq!(answers[3].body, answers[0].body[..100]);
        assert_ne!(answers[1].body, answers[0].body, "301x is its own variant");
        let expected = if std::ptr::eq(node, &on) { 2.0 } else { 0.0 };
        assert_eq!(loop_answers(node).await - before, expected);

        // A chunked body carrying a request: one answer (405), and the body is no request.
        let chunked = format!(
            "POST {hot} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n{}",
            smuggled.len(),
            get(&hot, "Connection: close\r\n")
        );
        let a = addr(node);
        let (answers, _) =
            tokio::task::spawn_blocking(move || exchange(&a, chunked.as_bytes(), &[false, false]))
                .await
                .unwrap();
        let statuses: Vec<u16> = answers.iter().map(Answer::status).collect();
        assert_eq!(statuses, [405]);
    }
    // The smuggled size was never asked for: the origin made 300x and 301x only.
    for node in [&on, &off] {
        assert_eq!(node.transforms().await, 2.0);
    }
}

/// `edge.keepalive_requests` and `Connection: close` end a connection after the same answer
/// with the loop as without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_limits_are_pingoras() {
    let (_s3, on, off) = nodes("  keepalive_requests: 3\n").await;
    let hot = format!("/image/{ID}?size=200x");
    let mut seen = Vec::new();
    for node in [&on, &off] {
        assert_eq!(node.get(&hot).await.status(), 200);
        let requests = get(&hot, "").repeat(6);
        let a = addr(node);
        let (answers, closed) =
            tokio::task::spawn_blocking(move || exchange(&a, requests.as_bytes(), &[false; 6]))
                .await
                .unwrap();
        assert!(closed);
        assert!(answers.len() < 6, "{} answers", answers.len());
        let last = answers.last().unwrap();
        assert_eq!(last.field("connection"), Some("close"));
        assert!(answers[..answers.len() - 1]
            .iter()
            .all(|a| a.field("connection") == Some("keep-alive")));
        seen.push(answers.len());
    }
    assert_eq!(seen[0], seen[1], "answers before close: loop vs Pingora");
    assert!(loop_answers(&on).await >= 3.0);
}

/// A loop hit's access-log line is the one Pingora's path writes for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_hits_are_logged_as_pingora_logs_them() {
    let s3 = S3Server::start().await;
    s3.put(ID, &read("kite.jpg"));
    let logs = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    for (i, loop_on) in [true, false].into_iter().enumerate() {
        let log = logs.path().join(format!("{i}.log"));
        let node = Imgedge::start(
            &s3,
            &format!(
                "edge:\n  hit_loop: {loop_on}\n  access_log:\n    format: json\n    path: {}\n",
                log.display()
            ),
        )
        .await;
        let path = format!("/image/{ID}?size=120x&utm_source=x");
        let req = get(
            &path,
            "User-Agent: ua \"q\"\r\nReferer: https://shop.test/p\r\n",
        );
        let a = addr(&node);
        tokio::task::spawn_blocking(move || {
            exchange(&a, format!("{req}{req}").as_bytes(), &[false, false])
        })
        .await
        .unwrap();
        let mut got = Vec::new();
        eventually("two access-log lines", || {
            got = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("/image/"))
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect();
            let n = got.len();
            async move { n >= 2 }
        })
        .await;
        let mut hit = got[1].clone();
        assert_eq!(hit["cache"], "HIT");
        assert_eq!(loop_answers(&node).await, if loop_on { 1.0 } else { 0.0 });
        for per_request in ["time", "ms"] {
            assert!(hit.get(per_request).is_some());
            hit[per_request] = serde_json::Value::Null;
        }
        lines.push(hit);
    }
    assert_eq!(lines[0], lines[1]);
    assert_eq!(lines[0]["user_agent"], "ua \"q\"");
    assert_eq!(lines[0]["referer"], "https://shop.test/p");
    assert_eq!(lines[0]["client"], "127.0.0.1");
}

/// The keep-alive idle timeout counts from the last answer: a connection that keeps asking is
/// kept past the time its first idle wait would have ended, and one that goes quiet for the
/// whole timeout is closed, on both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_the_keepalive_timeout() {
    let (_s3, on, off) = nodes("  keepalive_timeout: 1s\n").await;
    let hot = format!("/image/{ID}?size=200x");
    for node in [&on, &off] {
        assert_eq!(node.get(&hot).await.status(), 200);
        let (a, req) = (addr(node), get(&hot, ""));
        let answered = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(&a).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let started = std::time::Instant::now();
            let mut answer = || -> bool {
                s.write_all(req.as_bytes()).unwrap();
                let mut buf = Vec::new();
                let ok = read_answer(&mut s, &mut buf, false).is_ok_and(|a| a.status() == 200);
                assert!(buf.is_empty(), "more than one answer");
                ok
            };
            // Idle 0.7 s at a time: each wait is under the timeout, their sum is not.
            for kept in 0..3 {
                assert!(answer(), "answered after {kept} idle waits");
                std::thread::sleep(Duration::from_millis(700));
            }
            assert!(answer());
            // Then quiet: the server closes within the timeout (and some slack).
            let quiet = std::time::Instant::now();
            let mut rest = [0u8; 16];
            let n = s
                .read(&mut rest)
                .expect("a quiet connection was kept past 10 s");
            assert_eq!(n, 0, "bytes on a quiet connection");
            let waited = quiet.elapsed();
            assert!(
                waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
                "closed after {waited:?}"
            );
            started.elapsed()
        })
        .await
        .unwrap();
        assert!(answered >= Duration::from_secs(3));
        // The start of a next request in the same segment as one answered, then silence: the
        // half-read head is not waited on for longer than the keep-alive timeout either.
        let (a, req) = (addr(node), format!("{}G", get(&hot, "")));
        let (answers, closed) =
            tokio::task::spawn_blocking(move || exchange(&a, req.as_bytes(), &[false]))
                .await
                .unwrap();
        assert_eq!(answers.len(), 1);
        assert!(closed, "a half-read head was waited on past 10 s");
    }
    assert!(loop_answers(&on).await >= 4.0);
}

/// What Pingora refuses in a request's `Host` (a second field, userinfo) the loop does not
/// answer as a hit either: the same 400 on both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_pingora_refuses_are_refused_on_hits_too() {
    let (_s3, on, off) = nodes("").await;
    let hot = format!("/image/{ID}?size=200x");
    for node in [&on, &off] {
        assert_eq!(node.get(&hot).await.status(), 200);
        for bad in [
            format!("GET {hot} HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"),
            format!("GET {hot} HTTP/1.1\r\nHost: user@images.test\r\n\r\n"),
        ] {
            let a = addr(node);
            let (answers, _) =
                tokio::task::spawn_blocking(move || exchange(&a, bad.as_bytes(), &[false]))
                    .await
                    .unwrap();
            assert_eq!(answers.len(), 1);
            assert_eq!(answers[0].status(), 400, "{}", answers[0].head);
        }
    }
    assert_eq!(loop_answers(&on).await, 0.0);
}
