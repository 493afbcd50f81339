//! The production edge (issue 5) through the real binary: TLS with SNI and HTTP/2, the access
//! log, metrics and readiness, signed URLs, the size policy, the miss rate limit, and slow or
//! oversized requests.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{dev_certs, eventually, free_port, read, tls_client, Imgedge, S3Server};

const ID: &str = "3972b16287e5.jpg";

async fn s3_with_kite() -> S3Server {
    let s3 = S3Server::start().await;
    s3.put(ID, &read("kite.jpg"));
    s3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_h2_and_http1_and_picks_the_certificate_by_sni() {
    let s3 = s3_with_kite().await;
    let certs = dev_certs();
    let d = certs.path().display();
    let port = free_port();
    let node = Imgedge::start(
        &s3,
        &format!(
            "edge:\n  tls:\n    listen: [\"127.0.0.1:{port}\"]\n    certificates:\n      - cert: {d}/dev.pem\n        key: {d}/dev.key\n      - cert: {d}/alt.pem\n        key: {d}/alt.key\n"
        ),
    )
    .await;
    let names = [
        "images.example.test",
        "a.cdn.example.test",
        "other.example.test",
    ];
    let h2 = tls_client(certs.path(), false, &names, port);
    let h1 = tls_client(certs.path(), true, &names, port);
    let path = format!("/image/{ID}?size=120x80");

    // HTTP/2 over ALPN, verified against the dev CA for "localhost" (the default certificate).
    let r = h2
        .get(format!("https://localhost:{port}{path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "MISS");
    let body = r.bytes().await.unwrap();
    assert_eq!(common::dims(&body).0, 120);

    // HTTP/1.1 is still there; same cache (a HIT), same bytes.
    let r = h1
        .get(format!("https://localhost:{port}{path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(r.bytes().await.unwrap(), body);

    // SNI picks the second certificate by exact name and by wildcard; verification of the
    // name would fail with any other certificate.
    for host in ["images.example.test", "a.cdn.example.test"] {
        let r = h2.get(format!("https://{host}:{port}{path}")).send().await;
        let r = r.unwrap_or_else(|e| panic!("{host}: {e:?}"));
        assert_eq!(r.status(), 200, "{host}");
    }
    // An unknown name gets the default certificate, which does not cover it.
    let e = h2
        .get(format!("https://other.example.test:{port}{path}"))
        .send()
        .await;
    assert!(
        e.is_err(),
        "a certificate for other.example.test must not exist"
    );

    // The plain listener keeps working beside TLS.
    assert_eq!(node.get(&path).await.headers()["x-cache"], "HIT");
    assert_eq!(s3.gets(ID), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_validates_certificates_and_names_the_key() {
    let certs = dev_certs();
    let d = certs.path().display();
    let conf = certs.path().join("c.yaml");
    let run = |yaml: String| {
        std::fs::write(&conf, yaml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgedge"))
            .args(["check", "-c"])
            .arg(&conf)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let tls = |cert: &str, key: &str| {
        format!(
            "edge:\n  tls:\n    listen: [\"127.0.0.1:8443\"]\n    certificates:\n      - cert: {d}/{cert}\n        key: {d}/{key}\n"
        )
    };
    let (code, text) = run(tls("dev.pem", "dev.key"));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("localhost"), "{text}");

    // A key that belongs to another certificate.
    let (code, text) = run(tls("dev.pem", "alt.key"));
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("edge.tls.certificates[0].key"), "{text}");
    // A missing file, and a file that is not PEM.
    let (code, text) = run(tls("missing.pem", "dev.key"));
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("edge.tls.certificates[0].cert"), "{text}");
    std::fs::write(certs.path().join("junk.pem"), "not a certificate").unwrap();
    let (code, text) = run(tls("junk.pem", "dev.key"));
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("edge.tls.certificates[0]"), "{text}");
    // TLS listener without certificates.
    let (code, text) = run("edge:\n  tls:\n    listen: [\"127.0.0.1:8443\"]\n".into());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("edge.tls.certificates"), "{text}");
    // Validity, through the same loader `check` and `serve` use, at a clock past the dev
    // certificates' 30 days and before their start (openssl 3.0 cannot backdate a certificate).
    let c = imgedge::config::CertificateConfig {
        cert: certs.path().join("dev.pem"),
        key: certs.path().join("dev.key"),
    };
    let day = Duration::from_secs(86400);
    let now = std::time::SystemTime::now();
    let loaded = imgedge::edge::tls::load_one(0, &c, now).unwrap();
    assert!(loaded.not_after > now + 29 * day && loaded.not_after < now + 31 * day);
    assert_eq!(loaded.names, ["localhost"]);
    let later = imgedge::edge::tls::load_one(0, &c, now + 31 * day)
        .err()
        .unwrap();
    assert!(
        later.to_string().contains("edge.tls.certificates[0].cert"),
        "{later}"
    );
    assert!(later.to_string().contains("expired"), "{later}");
    let earlier = imgedge::edge::tls::load_one(0, &c, now - day)
        .err()
        .unwrap();
    assert!(earlier.to_string().contains("not valid yet"), "{earlier}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_records_cache_status_and_origin_timings() {
    let s3 = s3_with_kite().await;
    let logs = tempfile::tempdir().unwrap();
    for format in ["json", "combined"] {
        let log = logs.path().join(format!("{format}.log"));
        let node = Imgedge::start(
            &s3,
            &format!(
                "edge:\n  access_log:\n    format: {format}\n    path: {}\n",
                log.display()
            ),
        )
        .await;
        let path = format!(
            "/image/{ID}?size=64x64&format={}",
            if format == "json" { "png" } else { "webp" }
        );
        assert_eq!(node.get(&path).await.status(), 200);
        let r = node
            .client
            .get(node.url(&path))
            .header("user-agent", "imgedge-test \"quoted\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-cache"], "HIT");
        assert!(
            r.headers().get("server-timing").is_none(),
            "timings are not cached"
        );
        assert_eq!(
            node.get(&format!("/image/{ID}?size=0x0")).await.status(),
            400
        );
        let mut lines = Vec::new();
        eventually("three access-log lines", || {
            lines = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .filter(|l| l.contains("/image/"))
                .collect();
            let n = lines.len();
            async move { n >= 3 }
        })
        .await;
        if format == "json" {
            let v: Vec<serde_json::Value> = lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(v[0]["cache"], "MISS");
            assert_eq!(v[0]["status"], 200);
            assert!(v[0]["fetch_ms"].as_f64().unwrap() > 0.0, "{}", lines[0]);
            assert!(v[0]["resize_ms"].as_f64().unwrap() > 0.0, "{}", lines[0]);
            assert!(v[0]["bytes"].as_u64().unwrap() > 100);
            assert_eq!(v[0]["uri"], path);
            assert_eq!(v[1]["cache"], "HIT");
            assert!(v[1].get("resize_ms").is_none());
            assert_eq!(v[1]["user_agent"], "imgedge-test \"quoted\"");
            assert_eq!(v[2]["status"], 400);
            assert_eq!(v[2]["client"], "127.0.0.1");
        } else {
            assert!(lines[0].starts_with("127.0.0.1 - - ["), "{}", lines[0]);
            assert!(
                lines[0].contains(&format!("\"GET {path} HTTP/1.1\" 200 ")),
                "{}",
                lines[0]
            );
            assert!(lines[0].contains(" cache=MISS rt="), "{}", lines[0]);
            assert!(!lines[0].contains("resize=-"), "{}", lines[0]);
            assert!(
                lines[1].contains("\"imgedge-test \\\"quoted\\\"\" cache=HIT"),
                "{}",
                lines[1]
            );
            assert!(lines[1].contains("fetch=- resize=-"), "{}", lines[1]);
        }
        // The warm tool reads what the edge writes.
        let parsed = imgedge::warm::logs::LineParser::default().parse(&lines[0]);
        assert!(
            matches!(parsed, Ok(imgedge::warm::logs::Line::Request(ref r)) if r.path == format!("/image/{ID}")),
            "{format}: {parsed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_on_the_admin_listener_only() {
    let s3 = s3_with_kite().await;
    let node = Imgedge::start(&s3, "").await;
    let path = format!("/image/{ID}?size=50x50");
    assert_eq!(node.get(&path).await.status(), 200);
    assert_eq!(node.get(&path).await.headers()["x-cache"], "HIT");
    let text = node
        .metrics_text_with("imgedge_requests_total{cache=\"hit\",status=\"200\"} 1")
        .await;
    for needle in [
        "imgedge_requests_total{cache=\"hit\",status=\"200\"} 1",
        "imgedge_requests_total{cache=\"miss\",status=\"200\"} 1",
        "imgedge_request_duration_seconds_bucket{cache=\"hit\",le=\"0.02\"}",
        "imgedge_request_duration_seconds_count{cache=\"miss\"} 1",
        "imgedge_source_fetch_duration_seconds_count{result=\"ok\",source=\"s3\"} 1",
        "imgedge_source_fetches_total{result=\"ok\",source=\"s3\"} 1",
        "imgedge_resize_duration_seconds_count{format=\"jpeg\"} 1",
        "imgedge_resize_pool_busy 0",
        "imgedge_resize_pool_queued 0",
        "imgedge_cache_bytes{tier=\"memory\"}",
        "imgedge_cache_objects{tier=\"memory\"} 1",
        "imgedge_cache_coalesced_waiters_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    let get = |url: String| {
        let c = node.client.clone();
        async move { c.get(url).send().await.unwrap() }
    };
    assert_eq!(get(format!("{}/healthz", node.admin)).await.status(), 200);
    let r = get(format!("{}/readyz", node.admin)).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for p in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            get(node.url(p)).await.status(),
            404,
            "{p} on the public listener"
        );
    }
    // The origin's source becomes unreachable: not ready (alive all the same).
    drop(s3);
    eventually("readyz to fail", || {
        let r = get(format!("{}/readyz", node.admin));
        async { r.await.status() == 503 }
    })
    .await;
    assert_eq!(get(format!("{}/healthz", node.admin)).await.status(), 200);
}

fn sign(node: &Imgedge, url: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgedge"))
        .args(["sign", "-c"])
        .arg(node.config_path())
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_urls_are_required_and_rotate() {
    let s3 = s3_with_kite().await;
    const NEW: &str = "new-key-0123456789abcdef0123456789abcdef";
    const OLD: &str = "old-key-0123456789abcdef0123456789abcdef";
    let old_node = Imgedge::start(&s3, &format!("policy:\n  signing_keys: [\"{OLD}\"]\n")).await;
    let node = Imgedge::start(
        &s3,
        &format!("policy:\n  signing_keys: [\"{NEW}\", \"{OLD}\"]\n"),
    )
    .await;

    let path = format!("/image/{ID}?size=90x60&format=webp");
    let signed = sign(&node, &node.url(&path));
    assert!(signed.starts_with(&node.url(&path)), "{signed}");
    let r = node.client.get(&signed).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Unsigned, tampered, or with a wrong signature: 403 with a reason, before any origin work.
    let r = node.get(&path).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("missing signature"));
    let tampered = signed.replace("size=90x60", "size=91x60");
    assert_eq!(
        node.client.get(&tampered).send().await.unwrap().status(),
        403
    );
    let forged = format!("{}&sig=AAAA", node.url(&path));
    assert_eq!(node.client.get(&forged).send().await.unwrap().status(), 403);
    let twice = format!("{signed}&sig=AAAA");
    assert_eq!(node.client.get(&twice).send().await.unwrap().status(), 403);
    // A hit needs a signature too.
    assert_eq!(node.get(&path).await.status(), 403);

    // The signature covers the variant, not the spelling: order, utm noise, dpr folding.
    let sig = signed.rsplit("sig=").next().unwrap();
    let respelled = format!("/image/{ID}?utm_source=x&format=webp&size=45x30&dpr=2&sig={sig}");
    let r = node.get(&respelled).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "HIT");

    // Rotation: URLs signed with the old key still work on the new node.
    let by_old = sign(&old_node, &path);
    assert_eq!(node.get(&by_old).await.status(), 200);
    // ... but not the other way round.
    assert_eq!(
        old_node.get(&format!("{path}&sig={sig}")).await.status(),
        403
    );
    assert_eq!(s3.gets(ID), 1, "one fill; refused requests never reach S3");
}

/// Issue 13 item 1: rounding a tall box's width up scaled its height past
/// `limits.max_dimension`, and the origin refused the canonical URI: a valid request got 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_ladder_never_turns_a_valid_request_into_a_400() {
    let s3 = s3_with_kite().await;
    let node = Imgedge::start(
        &s3,
        "policy:\n  size_ladder: [64, 128, 256, 512, 1024, 2048]\n",
    )
    .await;
    for q in [
        "size=65x4096",
        "size=65x4000&fit=inside",
        "size=4096x4096&fit=fill",
    ] {
        let r = node.get(&format!("/image/{ID}?{q}")).await;
        let status = r.status();
        let body = r.bytes().await.unwrap();
        assert_eq!(status, 200, "{q}: {}", String::from_utf8_lossy(&body));
        let (w, h, _) = common::dims(&body);
        assert!(w <= 4096 && h <= 4096, "{q}: {w}x{h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_ladder_folds_sizes_and_the_allow_list_refuses_others() {
    let s3 = s3_with_kite().await;
    let ladder = Imgedge::start(&s3, "policy:\n  size_ladder: [100, 200, 400, 800]\n").await;
    let r = ladder.get(&format!("/image/{ID}?size=301x")).await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(common::dims(&r.bytes().await.unwrap()).0, 400);
    let r = ladder.get(&format!("/image/{ID}?size=399x")).await;
    assert_eq!(
        r.headers()["x-cache"],
        "HIT",
        "one variant for every width in (200, 400]"
    );
    assert_eq!(common::dims(&r.bytes().await.unwrap()).0, 400);
    // Two sides: the longer to a step, the ratio to 1/8 octave (3:2 → 200x130).
    let r = ladder.get(&format!("/image/{ID}?size=150x100")).await;
    assert_eq!(
        common::dims(&r.bytes().await.unwrap()),
        (200, 130, image::ImageFormat::Jpeg)
    );
    assert_eq!(ladder.transforms().await, 2.0);

    let allow = Imgedge::start(&s3, "policy:\n  sizes: [\"100x100\", \"400x\"]\n").await;
    assert_eq!(
        allow
            .get(&format!("/image/{ID}?size=100x100"))
            .await
            .status(),
        200
    );
    assert_eq!(
        allow.get(&format!("/image/{ID}?size=400x")).await.status(),
        200
    );
    let r = allow.get(&format!("/image/{ID}?size=401x")).await;
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("not one of the allowed sizes"));
    assert_eq!(
        allow.get(&format!("/image/{ID}")).await.status(),
        200,
        "originals are not sizes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_are_rate_limited_per_client_and_hits_never_are() {
    let s3 = s3_with_kite().await;
    let node = Imgedge::start(
        &s3,
        "policy:\n  misses_per_ip: 3\n  client_ip_header: x-forwarded-for\n",
    )
    .await;
    let hit = format!("/image/{ID}?size=33x33");
    assert_eq!(node.get(&hit).await.status(), 200);

    let get_as = |ip: &'static str, path: String| {
        let c = node.client.clone();
        let url = node.url(&path);
        async move {
            c.get(url)
                .header("x-forwarded-for", format!("203.0.113.9, {ip}"))
                .send()
                .await
                .unwrap()
        }
    };
    let (mut ok, mut limited) = (0, 0);
    for w in 100..130 {
        let r = get_as("198.51.100.1", format!("/image/{ID}?size={w}x")).await;
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(r.headers()["retry-after"], "1");
            }
            s => panic!("unexpected {s}"),
        }
        // Hits from the same client are served while it is over its miss budget.
        let h = get_as("198.51.100.1", hit.clone()).await;
        assert_eq!(h.status(), 200);
        assert_eq!(h.headers()["x-cache"], "HIT");
    }
    assert!(limited > 0, "30 misses in a burst, 3/s allowed");
    assert!(ok >= 3, "the budget itself is served ({ok})");
    // Another client is not affected.
    assert_eq!(
        get_as("198.51.100.2", format!("/image/{ID}?size=77x"))
            .await
            .status(),
        200
    );
    assert_eq!(
        node.metric("imgedge_rate_limited_total", &[]).await,
        f64::from(limited)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_requests_are_cut_off() {
    let s3 = s3_with_kite().await;
    let node = Imgedge::start(
        &s3,
        "edge:\n  header_timeout: 1s\n  max_uri_bytes: 200\n  max_header_bytes: 2048\n",
    )
    .await;
    let addr = node.base.trim_start_matches("http://").to_string();
    let path = format!("/image/{ID}?size=40x40");

    // Slowloris: a header trickling in, one byte every 200 ms, is cut off at the deadline,
    // while 50 idle connections and the trickle do not stop anyone else being served.
    let idle: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let trickle = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let started = Instant::now();
            let request = b"GET /image/3972b16287e5.jpg?size=40x40 HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
            for b in request {
                if s.write_all(&[*b]).is_err() {
                    return (started.elapsed(), true);
                }
                let mut buf = [0u8; 64];
                match s.read(&mut buf) {
                    Ok(0) => return (started.elapsed(), true),
                    Ok(_) => return (started.elapsed(), false), // answered: not cut off
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return (started.elapsed(), true),
                }
            }
            (started.elapsed(), false)
        })
    };
    for _ in 0..5 {
        assert_eq!(node.get(&path).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (took, cut) = tokio::task::spawn_blocking(move || trickle.join().unwrap())
        .await
        .unwrap();
    assert!(cut, "the trickling client was answered instead of cut off");
    // The whole header would take ~20 s at this pace; the cut comes at the 1 s deadline.
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The idle connections (no byte ever sent) were closed at the same deadline.
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        // Closed: end of stream or a reset. A read that times out means it was left open
        // (this once passed as `Err(_)`).
        let read = s.read(&mut buf);
        assert!(
            match &read {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            },
            "idle connection left open: {read:?}"
        );
    }
    assert!(
        node.metric("imgedge_client_header_timeouts_total", &[])
            .await
            >= 51.0
    );

    // A normal keep-alive client is not hurt by the deadline between its requests.
    for _ in 0..3 {
        assert_eq!(node.get(&path).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }

    // Too long a URI → 414; too many header bytes → 431; both with a reason.
    let long = format!("/image/{ID}?size=40x40&utm_x={}", "a".repeat(300));
    let r = node.get(&long).await;
    assert_eq!(r.status(), 414);
    let r = node
        .client
        .get(node.url(&path))
        .header("x-big", "b".repeat(3000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert!(r.text().await.unwrap().contains("too large"));
}

/// Read HTTP/1.1 responses off `s` until `n` have come whole (Content-Length bodies) or the
/// connection ends; returns each one's status and body length.
fn read_responses(s: &mut TcpStream, n: usize) -> Vec<(u16, usize)> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 65536];
    while out.len() < n {
        // Parse what is buffered.
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head[9..12].parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                out.push((status, len));
                buf.drain(..end + 4 + len);
                continue;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    out
}

/// Issue 13 item 13: HTTP/1.1 pipelining. A request that arrives while the previous one on
/// the connection is still being filled used to fail that one with a 400 and reset the
/// connection under the second (Pingora's default); one that arrived with it was dropped
/// with the connection. wrk sends a request that way right after reconnecting, which a
/// graceful upgrade's `Connection: close` makes it do: the resets seen across upgrades under
/// paced load. Both requests are now answered, in order, and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let s3 = S3Server::start().await;
    let slow = "3972b16287e5slow.jpg";
    s3.put(slow, &read("kite.jpg"));
    s3.put(ID, &read("kite.jpg"));
    s3.set_delay(Duration::from_millis(600));
    let node = Imgedge::start(&s3, "").await;
    let addr = node.base.trim_start_matches("http://").to_string();
    let get = |path: String| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
    let results = tokio::task::spawn_blocking(move || {
        // The second request arrives while the first waits on a slow original.
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&get(format!("/image/{slow}?size=90x")))
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        s.write_all(&get(format!("/image/{ID}?size=91x"))).unwrap();
        let during_a_fill = read_responses(&mut s, 2);
        // Both in one write, and the connection still serves a third afterwards.
        s.write_all(
            &[
                get(format!("/image/{ID}?size=92x")),
                get(format!("/image/{ID}?size=91x")),
            ]
            .concat(),
        )
        .unwrap();
        let mut one_write = read_responses(&mut s, 2);
        s.write_all(&get(format!("/image/{ID}?size=93x"))).unwrap();
        one_write.extend(read_responses(&mut s, 1));
        (during_a_fill, one_write)
    })
    .await
    .unwrap();
    let (during_a_fill, one_write) = results;
    assert_eq!(during_a_fill.len(), 2, "{during_a_fill:?}");
    assert!(
        during_a_fill.iter().all(|(st, len)| *st == 200 && *len > 0),
        "{during_a_fill:?}"
    );
    assert_eq!(one_write.len(), 3, "{one_write:?}");
    assert!(
        one_write.iter().all(|(st, len)| *st == 200 && *len > 0),
        "{one_write:?}"
    );
    // In order: the 91x answer (a hit the second time) has the same length both times.
    assert_eq!(during_a_fill[1].1, one_write[1].1);
}

/// Issue 13 item 10: an HTTP/2 connection gets the header deadline too. A client that opens
/// h2 and never sends a request, or trickles a HEADERS frame, is cut off at
/// `edge.header_timeout`, not left open for the keep-alive timeout (or forever, before the
/// preface); a normal h2 client keeps its connection between spaced requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_h2_clients_are_cut_off_at_the_header_deadline() {
    let s3 = s3_with_kite().await;
    let certs = dev_certs();
    let d = certs.path().display();
    let port = free_port();
    let node = Imgedge::start(
        &s3,
        &format!(
            "edge:\n  header_timeout: 1s\n  keepalive_timeout: 60s\n  tls:\n    listen: [\"127.0.0.1:{port}\"]\n    certificates:\n      - cert: {d}/dev.pem\n        key: {d}/dev.key\n"
        ),
    )
    .await;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const SETTINGS: &[u8] = &[0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    // HEADERS on stream 1, END_STREAM | END_HEADERS, 40 bytes of header block announced.
    const HEADERS: &[u8] = &[0, 0, 40, 0x1, 0x5, 0, 0, 0, 1];

    /// Open h2 over TLS, send `first`, then trickle `trickle` one byte per 250 ms while
    /// reading. Returns whether the server closed the connection (before the trickle ended
    /// and within the 10 s a read may wait).
    fn cut_off(certs: &Path, port: u16, first: &[u8], trickle: &[u8]) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(certs.join("dev-ca.pem")).unwrap();
        roots
            .add(rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let conn =
            rustls::ClientConnection::new(Arc::new(cfg), "localhost".try_into().unwrap()).unwrap();
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(first).unwrap();
        tls.flush().unwrap();
        assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
        let closed = |r: std::io::Result<usize>| match r {
            Ok(0) => Some(true),
            Ok(_) => None, // the server's SETTINGS and ACKs
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Some(false)
            }
            Err(_) => Some(true), // reset
        };
        let mut buf = [0u8; 256];
        for b in trickle {
            if tls.write_all(&[*b]).and_then(|_| tls.flush()).is_err() {
                return true;
            }
            tls.sock
                .set_read_timeout(Some(Duration::from_millis(250)))
                .unwrap();
            loop {
                match closed(tls.read(&mut buf)) {
                    Some(true) => return true,
                    Some(false) => break,
                    None => {}
                }
            }
        }
        tls.sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        loop {
            match closed(tls.read(&mut buf)) {
                Some(c) => return c,
                None => continue,
            }
        }
    }

    let p = certs.path().to_path_buf();
    let silent = [PREFACE, SETTINGS].concat();
    let trickled = [PREFACE, SETTINGS, HEADERS].concat();
    let (silent_cut, trickle_cut) = tokio::task::spawn_blocking(move || {
        (
            // Preface and SETTINGS, then silence: no request within the deadline.
            cut_off(&p, port, &silent, &[]),
            // A header block announced, its 40 bytes trickling (10 s at this pace).
            cut_off(&p, port, &trickled, &[0x82; 40]),
        )
    })
    .await
    .unwrap();
    assert!(
        silent_cut,
        "an h2 connection without a request was left open"
    );
    assert!(trickle_cut, "a trickling h2 header block was not cut off");
    assert!(
        node.metric("imgedge_client_header_timeouts_total", &[])
            .await
            >= 2.0
    );

    // A normal h2 client: spaced requests past the deadline keep their connection (none of
    // them is counted as cut off).
    let cut_before = node
        .metric("imgedge_client_header_timeouts_total", &[])
        .await;
    let h2 = tls_client(certs.path(), false, &[], port);
    for _ in 0..3 {
        let r = h2
            .get(format!("https://localhost:{port}/image/{ID}?size=40x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert_eq!(
        node.metric("imgedge_client_header_timeouts_total", &[])
            .await,
        cut_before
    );
}

/// Issue 13 item 2: with a size policy on, `q`, `bg` and re-encodes without `size` are bounded
/// too (one object for any `q`, only allowed colours, no full-size re-encode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_policy_bounds_quality_background_and_full_size_reencodes() {
    let s3 = s3_with_kite().await;
    let node = Imgedge::start(&s3, "policy:\n  size_ladder: [64, 128, 256, 512]\n").await;
    // The 2560 px original re-encoded as PNG comes at the top step.
    let r = node.get(&format!("/image/{ID}?format=png")).await;
    assert_eq!(r.status(), 200);
    let (w, h, _) = common::dims(&r.bytes().await.unwrap());
    assert!(w <= 512 && h <= 512, "{w}x{h}");
    // Any q is one object.
    let r = node.get(&format!("/image/{ID}?size=100x&q=37")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let r = node.get(&format!("/image/{ID}?size=100x&q=93")).await;
    assert_eq!(r.headers()["x-cache"], "HIT", "q made a second object");
    // Only the configured padding colours.
    let r = node
        .get(&format!("/image/{ID}?size=100x100&fit=contain&bg=123456"))
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(node.transforms().await, 2.0);
}
