//! End-to-end: the real binary, real HTTP on loopback, a real S3-protocol server.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::future::join_all;

/// 2560x1600 JPEG, stored under the seeds' hash-prefixed layout.
const KITE: &str = "3972b16287e5kite.jpg";
/// 512x512 RGBA PNG with transparent corners.
const ASTRO: &str = "81fe02aa9c01astro.png";

async fn node_with_samples(extra: &str) -> (S3Server, Imgedge) {
    let s3 = S3Server::start().await;
    s3.put(KITE, &read("kite.jpg"));
    s3.put(ASTRO, &read("astronaut.png"));
    let node = Imgedge::start(&s3, extra).await;
    (s3, node)
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Mean absolute difference per channel between two RGB images of equal size.
fn mean_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fit_has_the_right_geometry() {
    let (_s3, node) = node_with_samples("").await;
    let cases = [
        ("size=400x400&fit=cover", (400, 400)),
        ("size=400x400", (400, 400)),
        ("size=400x400&fit=inside", (400, 250)),
        ("size=400x400&fit=fill", (400, 400)),
        ("size=400x", (400, 250)),
        ("size=x400", (640, 400)),
        ("size=200x100&dpr=2", (400, 200)),
        // Never enlarged: inside keeps the original, cover/fill keep the box's shape.
        ("size=4000x4000&fit=inside", (2560, 1600)),
        ("size=4000x2000&fit=cover", (2560, 1280)),
        ("size=3000x", (2560, 1600)),
    ];
    for (q, want) in cases {
        let r = node.get(&format!("/image/{KITE}?{q}")).await;
        assert_eq!(r.status(), 200, "{q}");
        assert_eq!(header(&r, "content-type"), "image/jpeg", "{q}");
        let body = r.bytes().await.unwrap();
        let (w, h, fmt) = dims(&body);
        assert_eq!((w, h), want, "{q}");
        assert_eq!(fmt, image::ImageFormat::Jpeg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cover_crops_the_centre_and_fill_stretches() {
    let (_s3, node) = node_with_samples("").await;
    let src = image::load_from_memory(&read("kite.jpg"))
        .unwrap()
        .to_rgb8();
    let lanczos = image::imageops::FilterType::Lanczos3;
    // References computed independently with the image crate.
    let centre = image::imageops::crop_imm(&src, 480, 0, 1600, 1600).to_image();
    let cover_ref = image::imageops::resize(&centre, 200, 200, lanczos);
    let fill_ref = image::imageops::resize(&src, 200, 200, lanczos);

    let get = |fit: &'static str| {
        let url = node.url(&format!("/image/{KITE}?size=200x200&fit={fit}&q=95"));
        let client = node.client.clone();
        async move {
            let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
            image::load_from_memory(&body).unwrap().to_rgb8()
        }
    };
    let cover = get("cover").await;
    let fill = get("fill").await;
    let (cc, cf) = (
        mean_abs_diff(&cover, &cover_ref),
        mean_abs_diff(&cover, &fill_ref),
    );
    let (ff, fc) = (
        mean_abs_diff(&fill, &fill_ref),
        mean_abs_diff(&fill, &cover_ref),
    );
    assert!(cc < 4.0, "cover vs its reference: {cc}");
    assert!(ff < 4.0, "fill vs its reference: {ff}");
    assert!(
        cf > 2.0 * cc && fc > 2.0 * ff,
        "fits are distinguishable: {cc} {cf} {ff} {fc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_quality_and_alpha() {
    let (_s3, node) = node_with_samples("").await;
    let body = |q: String| {
        let client = node.client.clone();
        let url = node.url(&q);
        async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let ct = header(&r, "content-type").to_string();
            (ct, r.bytes().await.unwrap())
        }
    };
    for (fmt, mime, want) in [
        ("png", "image/png", image::ImageFormat::Png),
        ("webp", "image/webp", image::ImageFormat::WebP),
        ("jpg", "image/jpeg", image::ImageFormat::Jpeg),
        ("jpeg", "image/jpeg", image::ImageFormat::Jpeg),
    ] {
        let (ct, b) = body(format!("/image/{KITE}?size=300x&format={fmt}")).await;
        assert_eq!(ct, mime);
        assert_eq!(dims(&b), (300, 188, want));
    }
    let (_, low) = body(format!("/image/{KITE}?size=600x&q=10")).await;
    let (_, high) = body(format!("/image/{KITE}?size=600x&q=95")).await;
    assert!(
        low.len() * 2 < high.len(),
        "q=10 {} vs q=95 {}",
        low.len(),
        high.len()
    );
    let (_, wlow) = body(format!("/image/{KITE}?size=600x&format=webp&q=10")).await;
    let (_, whigh) = body(format!("/image/{KITE}?size=600x&format=webp&q=95")).await;
    assert!(wlow.len() * 2 < whigh.len());

    // PNG source: auto keeps PNG with its alpha; JPEG output flattens onto white.
    let (ct, png) = body(format!("/image/{ASTRO}?size=128x128")).await;
    assert_eq!(ct, "image/png");
    let img = image::load_from_memory(&png).unwrap();
    assert!(img.color().has_alpha());
    assert_eq!(
        img.to_rgba8().get_pixel(0, 0)[3],
        0,
        "corner stays transparent"
    );
    let (ct, jpg) = body(format!("/image/{ASTRO}?size=128x128&format=jpeg")).await;
    assert_eq!(ct, "image/jpeg");
    let corner = *image::load_from_memory(&jpg)
        .unwrap()
        .to_rgb8()
        .get_pixel(0, 0);
    assert!(
        corner.0.iter().all(|&c| c > 240),
        "flattened onto white: {corner:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivalent_urls_and_any_headers_share_one_object() {
    let (s3, node) = node_with_samples("").await;
    let urls = [
        format!("/image/{KITE}?size=100x200"),
        format!("/image/{KITE}?q=80&size=100x200&utm_source=x"),
        format!("/image/{KITE}?fit=cover&utm_campaign=y&size=100x200&cb=1700000000"),
        format!("/image/{KITE}?size=50x100&dpr=2"),
        format!("/image/{KITE}?size=100x200&format=auto_is_not_a_param_but_this_is_unknown&x=1")
            .replace("&format=auto_is_not_a_param_but_this_is_unknown", ""),
    ];
    let agents = [
        "Mozilla/5.0 (iPhone)",
        "curl/8",
        "Googlebot/2.1",
        "",
        "Mozilla/5.0 (Windows)",
    ];
    let mut bodies = Vec::new();
    for (i, (u, ua)) in urls.iter().zip(agents).enumerate() {
        let r = node
            .client
            .get(node.url(u))
            .header("user-agent", ua)
            .header("cookie", format!("session={i}"))
            .header("accept", if i % 2 == 0 { "image/webp,*/*" } else { "*/*" })
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "x-cache"),
            if i == 0 { "MISS" } else { "HIT" },
            "{u}"
        );
        assert!(r.headers().get("vary").is_none());
        bodies.push(r.bytes().await.unwrap());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(s3.gets(KITE), 1);
    assert_eq!(node.transforms().await, 1.0);

    // A different variant is a different object.
    let r = node.get(&format!("/image/{KITE}?size=100x201")).await;
    assert_eq!(header(&r, "x-cache"), "MISS");
    assert_eq!(node.transforms().await, 2.0);
    assert_eq!(s3.gets(KITE), 1, "its original came from the source cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_never_touch_the_origin_or_the_pool() {
    let (s3, node) = node_with_samples("").await;
    let url = format!("/image/{KITE}?size=320x240");
    let first = node.get(&url).await;
    let etag = header(&first, "etag").to_string();
    let body = first.bytes().await.unwrap();
    let (origin, transforms, gets) = (
        node.origin_requests().await,
        node.transforms().await,
        s3.total_gets(),
    );
    assert_eq!((origin, transforms, gets), (1.0, 1.0, 1));

    for i in 0..30 {
        let r = match i % 3 {
            0 => node.client.get(node.url(&url)).send().await.unwrap(),
            1 => node.client.head(node.url(&url)).send().await.unwrap(),
            _ => node
                .client
                .get(node.url(&url))
                .header("if-none-match", &etag)
                .send()
                .await
                .unwrap(),
        };
        assert_eq!(header(&r, "x-cache"), "HIT");
        match i % 3 {
            0 => assert_eq!(r.bytes().await.unwrap(), body),
            1 => assert_eq!(r.status(), 200),
            _ => assert_eq!(r.status(), 304),
        }
    }
    assert_eq!(node.origin_requests().await, origin);
    assert_eq!(node.transforms().await, transforms);
    assert_eq!(s3.total_gets(), gets);
    assert_eq!(node.metric("imgedge_resize_pool_busy", &[]).await, 0.0);
}

/// The headers of an answer, sorted, without `age` (it grows between requests).
fn header_set(r: &reqwest::Response) -> Vec<(String, String)> {
    let mut v: Vec<_> = r
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str() != "age")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_fast_path_answers_as_the_cache_path_does() {
    const TOKEN: &str = "test-purge-token-0123456789";
    let (_s3, node) = node_with_samples(&format!("admin:\n  purge_token: {TOKEN}\n")).await;
    let url = format!("/image/{KITE}?size=300x&format=webp");
    let fast = || node.metric("imgedge_cache_fast_hits_total", &[]);
    let miss = node.get(&url).await;
    assert_eq!(header(&miss, "x-cache"), "MISS");
    let body = miss.bytes().await.unwrap();
    assert_eq!(fast().await, 0.0);

    // A plain GET of a fresh memory object: the fast path.
    let hit = node.get(&url).await;
    assert_eq!(fast().await, 1.0);
    let fast_headers = header_set(&hit);
    let age: u64 = header(&hit, "age").parse().unwrap();
    assert!(age < 60, "age {age}");
    assert_eq!(hit.bytes().await.unwrap(), body);

    // The same object through pingora-cache's hit path (a validator that does not match takes
    // it there): the same status, headers and body.
    let slow = node
        .client
        .get(node.url(&url))
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    assert_eq!(fast().await, 1.0);
    assert_eq!(header_set(&slow), fast_headers);
    assert!(!header(&slow, "age").is_empty());
    assert_eq!(slow.bytes().await.unwrap(), body);
    for (k, v) in [
        ("x-cache", "HIT"),
        ("x-content-type-options", "nosniff"),
        ("content-type", "image/webp"),
    ] {
        assert!(
            fast_headers.contains(&(k.to_string(), v.to_string())),
            "{k} in {fast_headers:?}"
        );
    }
    let len = body.len().to_string();
    assert!(fast_headers.contains(&("content-length".to_string(), len)));
    assert!(fast_headers
        .iter()
        .all(|(k, _)| k != "vary" && !k.starts_with("x-imgedge")));

    // Ranges and HEAD keep pingora-cache's handling.
    let range = node
        .client
        .get(node.url(&url))
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), 206);
    assert_eq!(range.bytes().await.unwrap(), body.slice(0..100));
    let head = node.client.head(node.url(&url)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(fast().await, 1.0);

    // A purged object is never served by the fast path: the next GET refetches.
    let purge = node
        .client
        .post(format!("{}/purge/url{url}", node.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(purge.status().is_success(), "purge: {}", purge.status());
    let after = node.get(&url).await;
    assert_eq!(header(&after, "x-cache"), "MISS");
    assert_eq!(fast().await, 1.0);
    assert_eq!(node.get(&url).await.status(), 200);
    assert_eq!(fast().await, 2.0);
    assert_eq!(
        node.metric("imgedge_cache_lookups_total", &[("tier", "memory"), ("result", "hit")])
            .await,
        5.0,
        "fast hits count as memory hits: 2 fast, then the validator GET, the range GET and the HEAD"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_requests_and_head() {
    let (s3, node) = node_with_samples("").await;
    // HEAD on a cold variant: headers only. Pingora stops reading the origin once a HEAD's
    // headers are out, so the fill may be abandoned; an abandoned fill is never published, so
    // the GET that follows is a hit or a fresh miss, never a truncated object.
    let url = format!("/image/{KITE}?size=250x&format=webp");
    let head = node.client.head(node.url(&url)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-type"), "image/webp");
    let len: usize = header(&head, "content-length").parse().unwrap();
    let etag = header(&head, "etag").to_string();
    assert!(etag.starts_with('"') && etag.len() > 10);
    assert!(head.bytes().await.unwrap().is_empty());

    let get = node.get(&url).await;
    assert!(["HIT", "MISS"].contains(&header(&get, "x-cache")));
    assert_eq!(header(&get, "etag"), etag);
    assert_eq!(header(&get, "x-content-type-options"), "nosniff");
    assert!(header(&get, "cache-control").contains("max-age"));
    let body = get.bytes().await.unwrap();
    assert_eq!(body.len(), len);
    assert_eq!(dims(&body).0, 250);
    assert!(s3.gets(KITE) <= 2);
    let again = node.client.head(node.url(&url)).send().await.unwrap();
    assert_eq!(header(&again, "x-cache"), "HIT");
    assert_eq!(header(&again, "content-length"), len.to_string());

    let inm = |v: &str| {
        let req = node.client.get(node.url(&url)).header("if-none-match", v);
        async move { req.send().await.unwrap() }
    };
    let r = inm(&etag).await;
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(inm("\"something-else\"").await.status(), 200);
    assert_eq!(inm(&format!("\"x\", {etag}")).await.status(), 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn originals_are_served_as_stored_typed_by_magic() {
    let s3 = S3Server::start().await;
    let png = read("astronaut.png");
    // A PNG stored under a .jpg name is still image/png.
    s3.put("5e5e5e5e5e5eliar.jpg", &png);
    let node = Imgedge::start(&s3, "").await;
    let r = node.get("/image/5e5e5e5e5e5eliar.jpg").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "image/png");
    assert_eq!(r.bytes().await.unwrap().as_ref(), png.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_405_404_with_reasons_and_never_reach_s3() {
    let (s3, node) = node_with_samples("").await;
    for u in [
        format!("/image/{KITE}?size=0x10"),
        format!("/image/{KITE}?size=10x10&size=20x20"),
        format!("/image/{KITE}?size=abc"),
        format!("/image/{KITE}?size=5000x10"),
        format!("/image/{KITE}?size=10x10&fit=crop"),
        format!("/image/{KITE}?format=gif"),
        format!("/image/{KITE}?q=0"),
        format!("/image/{KITE}?q=101"),
        format!("/image/{KITE}?dpr=9&size=10x"),
        "/image/..%2f..%2fetc%2fpasswd".to_string(),
        "/image/..%2fx?size=10x".to_string(),
        "/image/a%00b".to_string(),
        "/image/".to_string(),
        format!("/image/{}", "a".repeat(513)),
    ] {
        let r = node.get(&u).await;
        assert_eq!(r.status(), 400, "{u}");
        assert_eq!(header(&r, "content-type"), "text/plain; charset=utf-8");
        let text = r.text().await.unwrap();
        assert!(
            text.starts_with("bad request: ") && text.ends_with('\n'),
            "{u}: {text}"
        );
    }
    // Dot segments as an attacker sends them (HTTP clients normalise them away).
    for raw in [
        "/image/a/../b",
        "/image/./x.jpg",
        "/image/a/%2e%2e/b?size=1x",
    ] {
        assert_eq!(raw_status(&node, raw).await, 400, "{raw}");
    }
    let r = node.get("/favicon.ico").await;
    assert_eq!(r.status(), 404);
    for m in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let r = node
            .client
            .request(m.clone(), node.url(&format!("/image/{KITE}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{m}");
        assert_eq!(header(&r, "allow"), "GET, HEAD");
    }
    assert_eq!(s3.total_gets(), 0, "nothing reached S3");
}

/// Status of a request sent byte for byte, bypassing any client-side URL normalisation.
async fn raw_status(node: &Imgedge, target: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = node.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_ids_are_404_and_cached_briefly() {
    let (s3, node) = node_with_samples("").await;
    for _ in 0..5 {
        let r = node.get("/image/0000000000missing.jpg?size=100x").await;
        assert_eq!(r.status(), 404);
        assert!(header(&r, "cache-control").contains("max-age=60"));
        assert_eq!(r.text().await.unwrap(), "no such image\n");
    }
    assert_eq!(
        s3.gets("0000000000missing.jpg"),
        1,
        "negative answer was cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_hostile_originals_get_422_fast() {
    let s3 = S3Server::start().await;
    let hostile = [
        "random-bytes.jpg",
        "html-named.png",
        "s3-error-accessdenied.jpg",
        "png-bomb-30000x30000.png",
        "webp-bomb-16383x16383.webp",
        "jpeg-declares-65500x65500.jpg",
        "gif-logical-screen-65535x65535.gif",
    ];
    for (i, name) in hostile.iter().enumerate() {
        s3.put(&format!("bad{i:03}x{name}"), &read(name));
    }
    s3.put("bad999xempty.jpg", b"");
    let mut node = Imgedge::start(&s3, "").await;
    let mut ids: Vec<String> = (0..hostile.len())
        .map(|i| format!("bad{i:03}x{}", hostile[i]))
        .collect();
    ids.push("bad999xempty.jpg".into());
    for id in &ids {
        for q in ["?size=200x200", "?format=png", ""] {
            let t = Instant::now();
            let r = node.get(&format!("/image/{id}{q}")).await;
            let status = r.status();
            let text = r.text().await.unwrap();
            assert_eq!(status, 422, "{id}{q}: {text}");
            assert!(text.starts_with("unprocessable image: "), "{id}{q}: {text}");
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{id}{q} took {:?}",
                t.elapsed()
            );
        }
    }
    assert!(node.alive(), "the process survived every hostile file");
    // 422 is a property of the original: cached briefly, like 404.
    let before = s3.total_gets();
    let r = node.get(&format!("/image/{}?size=200x200", ids[0])).await;
    assert_eq!(r.status(), 422);
    assert_eq!(s3.total_gets(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_misses_cost_one_fetch_and_one_resize() {
    let s3 = S3Server::start().await;
    let id = "77aa55slowkite.jpg";
    s3.put(id, &read("kite.jpg"));
    // A slow original keeps the fill in flight while all fifty arrive.
    s3.set_delay(Duration::from_millis(500));
    let node = Imgedge::start(&s3, "").await;
    let url = node.url(&format!("/image/{id}?size=300x300"));
    let responses = join_all((0..50).map(|_| {
        let req = node.client.get(url.clone());
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.bytes().await.unwrap())
        }
    }))
    .await;
    assert!(responses.iter().all(|(s, _)| *s == 200));
    assert!(responses.windows(2).all(|w| w[0].1 == w[1].1));
    assert_eq!(s3.gets(id), 1, "one S3 GET");
    assert_eq!(node.transforms().await, 1.0, "one resize");
    assert_eq!(node.origin_requests().await, 1.0, "one origin request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_failures_map_to_502_and_504() {
    let s3 = S3Server::start().await;
    s3.put("fail00failing.jpg", &read("kite.jpg"));
    s3.put("5104aaslowest.jpg", &read("kite.jpg"));
    s3.set_delay(Duration::from_secs(6));
    let node = Imgedge::start(&s3, "").await;

    // S3 answers 500: retried (max_attempts: 2), then 502, never cached.
    let r = node.get("/image/fail00failing.jpg?size=10x").await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.text().await.unwrap(), "origin failure\n");
    assert_eq!(s3.gets("fail00failing.jpg"), 2);
    let r = node.get("/image/fail00failing.jpg?size=10x").await;
    assert_eq!(r.status(), 502);
    assert_eq!(s3.gets("fail00failing.jpg"), 4, "502 is not cached");

    // S3 too slow: fetch_timeout (3s) → 504.
    let t = Instant::now();
    let r = node.get("/image/5104aaslowest.jpg?size=10x").await;
    assert_eq!(r.status(), 504);
    assert_eq!(r.text().await.unwrap(), "origin timeout\n");
    assert!(t.elapsed() < Duration::from_secs(6));
}

/// Issue 13 item 7: behind a role without `s3:ListBucket`, S3 answers a missing key with 403
/// AccessDenied. That is a 404, negatively cached, so a flood of requests for a missing id
/// reaches S3 once per `negative_ttl`; configurable back to an uncached 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_is_a_cached_404_unless_configured_otherwise() {
    let s3 = S3Server::start().await;
    let gone = "de41edmissing.jpg";
    s3.set_denied(gone, true);
    let node = Imgedge::start(&s3, "").await;
    for _ in 0..5 {
        let r = node.get(&format!("/image/{gone}?size=10x")).await;
        assert_eq!(r.status(), 404);
    }
    assert_eq!(s3.gets(gone), 1, "one GetObject; the 404 is cached");

    let strict = Imgedge::start_with(
        &(s3_config(&s3, SECRET_KEY) + "    access_denied_is_not_found: false\n"),
        "",
    )
    .await;
    let before = s3.gets(gone);
    for _ in 0..2 {
        let r = strict.get(&format!("/image/{gone}?size=11x")).await;
        assert_eq!(r.status(), 502);
    }
    assert!(s3.gets(gone) >= before + 2, "a 502 is not cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_by_s3_and_answered_502() {
    let s3 = S3Server::start().await;
    s3.put(KITE, &read("kite.jpg"));
    // s3s verifies SigV4: a wrong secret gets 403 from the server itself.
    let node = Imgedge::start_with(&s3_config(&s3, "not-the-secret"), "").await;
    let r = node.get(&format!("/image/{KITE}?size=10x")).await;
    assert_eq!(r.status(), 502);
    assert_eq!(
        s3.gets(KITE),
        0,
        "the request was rejected before the handler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_fetches_answer_503_with_retry_after() {
    let s3 = S3Server::start().await;
    for i in 0..4 {
        s3.put(&format!("5103slow{i}.jpg"), &read("kite.jpg"));
    }
    s3.set_delay(Duration::from_millis(1500));
    let origin = s3_config(&s3, SECRET_KEY).replace(
        "  fetch_timeout: 3s\n",
        "  fetch_timeout: 3s\n  max_fetches: 2\n",
    );
    let node = Imgedge::start_with(&origin, "transform:\n  retry_after: 2s\n").await;
    let rs = join_all((0..4).map(|i| {
        let req = node
            .client
            .get(node.url(&format!("/image/5103slow{i}.jpg?size=10x")));
        async move { req.send().await.unwrap() }
    }))
    .await;
    let busy: Vec<_> = rs.iter().filter(|r| r.status() == 503).collect();
    let ok = rs.iter().filter(|r| r.status() == 200).count();
    assert_eq!(
        (ok, busy.len()),
        (2, 2),
        "two fetches at a time, four misses"
    );
    assert!(busy.iter().all(|r| header(r, "retry-after") == "2"));
    assert_eq!(
        node.metric("imgedge_source_fetches_rejected_total", &[])
            .await,
        2.0
    );
}

/// Issue 13 item 9: a pool slot was taken before the fetch, so slow fetches filled the pool
/// and a miss whose original would have come at once was answered 503 while the one resize
/// thread idled. Now a slot is taken only once the original is here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_source_does_not_fill_the_resize_pool() {
    let s3 = S3Server::start().await;
    s3.put("5109slow0.jpg", &read("kite.jpg"));
    s3.put("5109slow1.jpg", &read("kite.jpg"));
    s3.put(KITE, &read("kite.jpg"));
    s3.set_delay(Duration::from_millis(1200));
    let node = Imgedge::start(&s3, "transform:\n  workers: 1\n  queue: 1\n").await;
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let req = node
                .client
                .get(node.url(&format!("/image/5109slow{i}.jpg?size=10x")));
            tokio::spawn(async move { req.send().await.unwrap().status() })
        })
        .collect();
    eventually("both slow fetches to reach S3", || async {
        s3.gets("5109slow0.jpg") == 1 && s3.gets("5109slow1.jpg") == 1
    })
    .await;
    // Two misses wait on S3, as many as the pool has slots; the thread is idle.
    let r = node.get(&format!("/image/{KITE}?size=10x")).await;
    assert_eq!(r.status(), 200, "a fast miss was refused while S3 was slow");
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    assert_eq!(
        node.metric("imgedge_resize_pool_rejected_total", &[]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_origin_serves_the_samples() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/samples");
    let origin = format!(
        "origin:\n  source: local\n  local:\n    root: {}\n",
        root.display()
    );
    let node = Imgedge::start_with(&origin, "").await;
    let r = node.get("/image/kite.jpg?size=300x200").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        dims(&r.bytes().await.unwrap()),
        (300, 200, image::ImageFormat::Jpeg)
    );
    assert_eq!(node.get("/image/nothing-here.jpg").await.status(), 404);
    let r = node.get("/image/path.webp?size=160x").await;
    assert_eq!(header(&r, "content-type"), "image/webp");
}

/// A product page's sizes of one original, through the real binary: the first miss decodes,
/// the first larger size decodes once more (large enough for all), and the rest are resized
/// from the kept pixels, matching what a node without mezzanines answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn further_sizes_of_an_original_reuse_its_decode() {
    let (s3, node) = node_with_samples("").await;
    let off = Imgedge::start(&s3, "transform:\n  mezzanine_bytes: 0\n").await;
    for (i, size) in ["150x150", "1200x", "400x", "300x300", "640x"]
        .iter()
        .enumerate()
    {
        let u = format!("/image/{KITE}?size={size}");
        let (a, b) = (node.get(&u).await, off.get(&u).await);
        assert_eq!(
            (a.status().as_u16(), b.status().as_u16()),
            (200, 200),
            "{u}"
        );
        assert_eq!(x_cache(&a), "MISS", "{u}");
        let (a, b) = (a.bytes().await.unwrap(), b.bytes().await.unwrap());
        if i < 2 {
            // The first decode and the upgrade (in full, as 1200 px needs) are the direct ones.
            assert!(a == b, "{u}: differs from the direct decode");
        } else {
            // From the full decode rather than a 3/8-5/8 one: the same picture.
            let (a, b) = (
                image::load_from_memory(&a).unwrap().to_rgb8(),
                image::load_from_memory(&b).unwrap().to_rgb8(),
            );
            let d = mean_abs_diff(&a, &b);
            assert!(d < 2.0, "{u}: mean difference {d}");
        }
    }
    let n = node.metric("imgedge_mezzanine_lookups_total", &[("result", "miss")]);
    assert_eq!(n.await, 1.0, "miss");
    let n = node.metric("imgedge_mezzanine_lookups_total", &[("result", "upgrade")]);
    assert_eq!(n.await, 1.0, "upgrade");
    let n = node.metric("imgedge_mezzanine_lookups_total", &[("result", "hit")]);
    assert_eq!(n.await, 3.0, "hit");
    assert!(node.metric("imgedge_mezzanine_bytes", &[]).await > 1e6);
    let off_lookups = off.metric("imgedge_mezzanine_lookups_total", &[]).await;
    assert_eq!(off_lookups, 0.0);
    assert_eq!(s3.gets(KITE), 2, "one fetch per node");
}
