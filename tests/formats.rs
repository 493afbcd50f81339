//! Negotiated formats end to end (issue 16): the real binary, real HTTP on loopback, a real
//! S3-protocol server, and the `Accept` strings real browsers send.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use futures::future::join_all;
use imgedge::origin::transform::decode::decode;
use imgedge::origin::transform::sniff::{sniff, SourceFormat};
use imgedge::origin::transform::TransformLimits;

/// 2560x1600 JPEG.
const KITE: &str = "3972b16287e5kite.jpg";
/// 512x512 RGBA PNG with transparent corners.
const ASTRO: &str = "81fe02aa9c01astro.png";

const CHROME: &str = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8";
const SAFARI: &str = "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5";
const FIREFOX: &str = "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5";
/// Android 7 WebView: WebP, no AVIF.
const OLD_WEBVIEW: &str = "image/webp,image/apng,image/*,*/*;q=0.8";
const CURL: &str = "*/*";
/// AVIF refused outright.
const NO_AVIF: &str = "image/avif;q=0,image/webp,*/*";

async fn s3_with_samples() -> S3Server {
    let s3 = S3Server::start().await;
    s3.put(KITE, &read("kite.jpg"));
    s3.put(ASTRO, &read("astronaut.png"));
    s3
}

async fn get(node: &Imgedge, path: &str, accept: Option<&str>) -> reqwest::Response {
    let mut req = node.client.get(node.url(path));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    req.send().await.unwrap()
}

/// Width, height and whether any pixel is transparent, decoded by the format's own decoder
/// (imgedge's: the `image` crate has no AVIF decoder).
fn decoded(bytes: &[u8]) -> (u32, u32, SourceFormat, bool) {
    let format = sniff(bytes).expect("an image");
    let px = decode(bytes, format, &TransformLimits::default(), None)
        .expect("decodable")
        .pixels;
    let transparent = px.has_alpha && px.data.chunks(4).any(|p| p[3] < 255);
    (px.width, px.height, format, transparent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_get_their_class_and_each_class_is_one_fill() {
    let s3 = s3_with_samples().await;
    let node = Imgedge::start(&s3, "transform:\n  default_format: auto\n  avif: inline\n").await;
    let url = format!("/image/{KITE}?size=300x");
    let cases = [
        (Some(CHROME), "image/avif"),
        (Some(SAFARI), "image/avif"),
        (Some(FIREFOX), "image/avif"),
        (Some(OLD_WEBVIEW), "image/webp"),
        (Some(NO_AVIF), "image/webp"),
        (Some(CURL), "image/jpeg"),
        (None, "image/jpeg"),
    ];
    let mut etags = HashSet::new();
    for (accept, mime) in cases {
        let r = get(&node, &url, accept).await;
        assert_eq!(r.status(), 200, "{accept:?}");
        assert_eq!(header(&r, "content-type"), mime, "{accept:?}");
        assert_eq!(header(&r, "vary"), "Accept", "{accept:?}: negotiated");
        assert!(
            !header(&r, "cache-control").contains("max-age=30"),
            "inline: no interim"
        );
        etags.insert(header(&r, "etag"));
        let (w, h, _, _) = decoded(&r.bytes().await.unwrap());
        assert_eq!((w, h), (300, 188), "{accept:?}");
    }
    // Seven Accept strings, three classes: three fills, three tags; the rest were hits.
    assert_eq!(node.transforms().await, 3.0);
    assert_eq!(etags.len(), 3, "one ETag per class: {etags:?}");
    assert_eq!(s3.gets(KITE), 1);
    let again = get(&node, &url, Some(SAFARI)).await;
    assert_eq!(x_cache(&again), "HIT");
    assert_eq!(
        header(&again, "vary"),
        "Accept",
        "a fast-path hit keeps Vary"
    );

    // An explicit format is not negotiated: no Vary, whatever the Accept.
    for (q, mime) in [("format=webp", "image/webp"), ("format=avif", "image/avif")] {
        let r = get(&node, &format!("/image/{KITE}?size=200x&{q}"), Some(CURL)).await;
        assert_eq!(header(&r, "content-type"), mime);
        assert_eq!(header(&r, "vary"), "", "{q}");
        assert_eq!(decoded(&r.bytes().await.unwrap()).0, 200);
    }
    // The original stays the original.
    let r = get(&node, &format!("/image/{KITE}"), Some(CHROME)).await;
    assert_eq!(header(&r, "content-type"), "image/jpeg");
    assert_eq!(header(&r, "vary"), "");

    // Alpha: kept in AVIF and WebP; legacy clients of a PNG original get a PNG.
    let astro = format!("/image/{ASTRO}?size=128x");
    for (accept, format) in [
        (CHROME, SourceFormat::Avif),
        (OLD_WEBVIEW, SourceFormat::Webp),
        (CURL, SourceFormat::Png),
    ] {
        let r = get(&node, &astro, Some(accept)).await;
        assert_eq!(r.status(), 200);
        let (w, h, f, transparent) = decoded(&r.bytes().await.unwrap());
        assert_eq!((w, h, f), (128, 128, format), "{accept}");
        assert!(transparent, "{accept}: the corners stay transparent");
    }
    // Tiny outputs still answer in AVIF.
    for size in ["1x1", "15x15"] {
        let r = get(&node, &format!("/image/{KITE}?size={size}"), Some(CHROME)).await;
        assert_eq!(r.status(), 200, "{size}");
        assert_eq!(header(&r, "content-type"), "image/avif", "{size}");
        let (w, h, _, _) = decoded(&r.bytes().await.unwrap());
        assert_eq!(format!("{w}x{h}"), size);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_avif_is_a_webp_now_and_an_avif_hit_soon() {
    let s3 = s3_with_samples().await;
    let node = Imgedge::start(&s3, "transform:\n  default_format: auto\n").await;
    let url = format!("/image/{KITE}?size=400x");

    let first = get(&node, &url, Some(CHROME)).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "content-type"), "image/webp");
    assert_eq!(header(&first, "cache-control"), "public, max-age=30");
    assert_eq!(header(&first, "vary"), "Accept");
    assert_eq!(
        header(&first, "x-imgedge-interim"),
        "",
        "internal header never leaves"
    );
    let interim_tag = header(&first, "etag");
    assert_eq!(decoded(&first.bytes().await.unwrap()).0, 400);

    // Within a few seconds the AVIF lands; the miss that finds it is answered with it (and
    // cached), the next request is a hit.
    let mut avif = None;
    for _ in 0..100 {
        let r = get(&node, &url, Some(FIREFOX)).await;
        assert_eq!(r.status(), 200);
        if header(&r, "content-type") == "image/avif" {
            avif = Some(r);
            break;
        }
        assert_eq!(header(&r, "content-type"), "image/webp");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let avif = avif.expect("the AVIF landed within 10 s");
    assert_ne!(header(&avif, "etag"), interim_tag);
    assert!(!header(&avif, "cache-control").contains("max-age=30"));
    let hit = get(&node, &url, Some(SAFARI)).await;
    assert_eq!(x_cache(&hit), "HIT");
    assert_eq!(header(&hit, "content-type"), "image/avif");
    assert_eq!(decoded(&hit.bytes().await.unwrap()).0, 400);
    let upgrades = |r: &'static str| {
        let node = &node;
        async move {
            node.metric("imgedge_avif_upgrades_total", &[("result", r)])
                .await
        }
    };
    assert_eq!(upgrades("queued").await, 1.0);
    assert_eq!(upgrades("done").await, 1.0);
    assert_eq!(upgrades("served").await, 1.0);
    // One fetch for the WebP and the AVIF together; legacy clients were never involved.
    assert_eq!(s3.gets(KITE), 1);
    let legacy = get(&node, &url, None).await;
    assert_eq!(header(&legacy, "content-type"), "image/jpeg");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_upgrade_queue_degrades_to_webp_never_to_an_error() {
    let s3 = s3_with_samples().await;
    let node = Imgedge::start(
        &s3,
        "transform:\n  default_format: auto\n  avif_workers: 1\n  avif_queue: 1\n",
    )
    .await;
    // Twelve new 1000-1200 px variants at once: two fit the AVIF pool (one encoding, one
    // waiting); the others are skipped and stay WebP.
    let urls: Vec<String> = (0..12)
        .map(|i| format!("/image/{KITE}?size={}x", 1000 + 20 * i))
        .collect();
    let answers = join_all(urls.iter().map(|u| get(&node, u, Some(CHROME)))).await;
    for (u, r) in urls.iter().zip(&answers) {
        assert_eq!(r.status(), 200, "{u}");
        assert_eq!(header(r, "content-type"), "image/webp", "{u}");
        assert_eq!(header(r, "cache-control"), "public, max-age=30", "{u}");
    }
    let skipped = node
        .metric("imgedge_avif_upgrades_total", &[("result", "skipped")])
        .await;
    assert!(skipped >= 1.0, "some upgrades were skipped: {skipped}");
    // A skipped variant is tried again by its next request: every one converges on AVIF.
    for u in &urls {
        let mut got = String::new();
        for _ in 0..150 {
            let r = get(&node, u, Some(CHROME)).await;
            assert_eq!(r.status(), 200, "{u}");
            got = header(&r, "content-type");
            if got == "image/avif" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(got, "image/avif", "{u}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_avif_pool_is_503_for_format_avif_and_webp_for_the_avif_class() {
    let s3 = s3_with_samples().await;
    let node = Imgedge::start(
        &s3,
        "transform:\n  default_format: auto\n  avif: inline\n  avif_workers: 1\n  avif_queue: 1\n",
    )
    .await;
    // Explicit AVIF: two fit the pool (one encoding, one waiting); the rest are refused with a
    // clear 503 and Retry-After, never a 5xx of another kind.
    let urls: Vec<String> = (0..12)
        .map(|i| format!("/image/{KITE}?size={}x&format=avif", 1400 + 20 * i))
        .collect();
    let answers = join_all(urls.iter().map(|u| get(&node, u, None))).await;
    let mut refused = 0;
    for (u, r) in urls.iter().zip(&answers) {
        match r.status().as_u16() {
            200 => assert_eq!(header(r, "content-type"), "image/avif", "{u}"),
            503 => {
                refused += 1;
                assert_eq!(header(r, "retry-after"), "1", "{u}");
                assert_eq!(header(r, "cache-control"), "no-store", "{u}");
            }
            s => panic!("{u}: {s}"),
        }
    }
    assert!(refused >= 1, "a full AVIF pool refuses format=avif");
    // The avif class (inline) stands the WebP in instead: every answer is a 200.
    let urls: Vec<String> = (0..12)
        .map(|i| format!("/image/{KITE}?size={}x", 1410 + 20 * i))
        .collect();
    let answers = join_all(urls.iter().map(|u| get(&node, u, Some(CHROME)))).await;
    let mut webp = 0;
    for (u, r) in urls.iter().zip(&answers) {
        assert_eq!(r.status(), 200, "{u}");
        match header(r, "content-type").as_str() {
            "image/avif" => {}
            "image/webp" => {
                webp += 1;
                assert_eq!(header(r, "cache-control"), "public, max-age=30", "{u}");
            }
            other => panic!("{u}: {other}"),
        }
    }
    assert!(webp >= 1, "a full AVIF pool stands the WebP in");
}
