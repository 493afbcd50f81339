//! Revalidation end to end (issue 13 item 8): the real binary, the S3-protocol server answering
//! conditional GETs as S3 does. An expired variant whose original did not change is refreshed
//! by a 304 from the origin (no resize, the cached bytes served as `X-Cache: REVALIDATED`); one
//! whose original changed is refetched in full with a new `ETag`; a purged one is always
//! refetched in full.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// 512x512 RGBA PNG at first; replaced by a 2560x1600 JPEG under the same id.
const ASTRO: &str = "81fe02aa9c01astro.png";
const TOKEN: &str = "test-purge-token-0123456789";
/// The internal header that must never reach a client.
const SOURCE_ETAG: &str = "x-imgedge-source-etag";

struct Answer {
    status: u16,
    cache: String,
    etag: String,
    internal_header: bool,
    /// `X-Cache-Peer`: the owner asked, in a cluster.
    peer: String,
    body: Vec<u8>,
}

async fn get(node: &Imgedge, url: &str) -> Answer {
    let r = node.get(url).await;
    let h = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (status, cache, etag) = (r.status().as_u16(), h("x-cache"), h("etag"));
    let internal_header = r.headers().contains_key(SOURCE_ETAG);
    let peer = h("x-cache-peer");
    Answer {
        status,
        cache,
        etag,
        internal_header,
        peer,
        body: r.bytes().await.unwrap().to_vec(),
    }
}

/// The first answer for `url` that is not a fresh hit: the object has expired (max-age=1).
async fn after_expiry(node: &Imgedge, url: &str) -> Answer {
    let last = std::cell::RefCell::new(None);
    eventually("the cached variant to expire", || async {
        let a = get(node, url).await;
        let expired = a.cache != "HIT";
        *last.borrow_mut() = Some(a);
        expired
    })
    .await;
    last.into_inner().unwrap()
}

fn short_ttl(s3: &S3Server) -> String {
    format!(
        "{}  cache_control: \"public, max-age=1\"\n",
        s3_config(s3, SECRET_KEY)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_variant_is_revalidated_without_a_resize_until_its_original_changes() {
    let s3 = S3Server::start().await;
    s3.put(ASTRO, &read("astronaut.png"));
    let node = Imgedge::start_with(&short_ttl(&s3), "").await;
    let u = format!("/image/{ASTRO}?size=100x");

    let first = get(&node, &u).await;
    assert_eq!((first.status, first.cache.as_str()), (200, "MISS"));
    assert_eq!(dims(&first.body).1, 100);
    assert!(first.etag.starts_with('"'), "{}", first.etag);
    assert!(!first.internal_header, "{SOURCE_ETAG} reached a client");
    assert_eq!((node.transforms().await, s3.gets(ASTRO)), (1.0, 1));

    // Expired, original unchanged: one conditional GET answered 304 at S3, a 304 from the
    // origin, no resize, the cached bytes served.
    let again = after_expiry(&node, &u).await;
    let revalidated_at = Instant::now();
    assert_eq!((again.status, again.cache.as_str()), (200, "REVALIDATED"));
    assert!(again.body == first.body, "the cached bytes");
    assert_eq!(again.etag, first.etag);
    assert!(!again.internal_header, "{SOURCE_ETAG} reached a client");
    assert_eq!(s3.not_modified(), 1);
    assert_eq!(s3.gets(ASTRO), 2);
    assert_eq!(node.transforms().await, 1.0, "no resize on revalidation");
    node.wait_metric("imgedge_origin_requests_total", &[("status", "304")], 1.0)
        .await;
    assert_eq!(
        node.metric(
            "imgedge_source_fetches_total",
            &[("result", "not_modified")]
        )
        .await,
        1.0
    );
    node.wait_metric("imgedge_requests_total", &[("cache", "revalidated")], 1.0)
        .await;

    // The 304 restarted the object's TTL: at once, a hit. (Only asserted when "at once" is
    // well inside the second of max-age on this machine, so a stalled runner cannot fail it.)
    let next = get(&node, &u).await;
    if revalidated_at.elapsed() < Duration::from_millis(500) {
        assert_eq!(next.cache, "HIT");
    }
    // A client's own conditional request still gets its 304 from the cache.
    let r = node
        .client
        .get(node.url(&u))
        .header("if-none-match", &first.etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // The original changes under the same id: the next expiry refetches and resizes it.
    s3.put(ASTRO, &read("kite.jpg"));
    let changed = after_expiry(&node, &u).await;
    assert_eq!(changed.status, 200);
    assert!(
        ["EXPIRED", "MISS"].contains(&changed.cache.as_str()),
        "{}",
        changed.cache
    );
    let (w, h, _) = dims(&changed.body);
    assert!(
        w == 100 && (62..=63).contains(&h),
        "the new original: {w}x{h}"
    );
    assert_ne!(changed.etag, first.etag);
    assert_eq!(s3.not_modified(), 1, "S3 saw the change");
    assert_eq!(node.transforms().await, 2.0);

    // And the new variant revalidates under its new tag.
    let third = after_expiry(&node, &u).await;
    assert_eq!(third.cache, "REVALIDATED");
    assert_eq!(third.etag, changed.etag);
    assert!(third.body == changed.body);
    assert_eq!(s3.not_modified(), 2);
    assert_eq!(node.transforms().await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_variant_is_refetched_in_full_not_revalidated() {
    let s3 = S3Server::start().await;
    s3.put(ASTRO, &read("astronaut.png"));
    let node = Imgedge::start(&s3, &format!("admin:\n  purge_token: {TOKEN}\n")).await;
    let u = format!("/image/{ASTRO}?size=64x");
    let first = get(&node, &u).await;
    assert_eq!(first.cache, "MISS");
    assert_eq!(get(&node, &u).await.cache, "HIT");

    let r = node
        .client
        .post(format!("{}/purge/image/{ASTRO}", node.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The original did not change, but a purge takes every earlier copy out of service: a
    // full fetch and resize, never a 304 that would serve the purged bytes again.
    let after = get(&node, &u).await;
    assert_eq!(after.status, 200);
    assert_ne!(after.cache, "HIT");
    assert_ne!(after.cache, "REVALIDATED");
    assert_eq!(
        s3.not_modified(),
        0,
        "no conditional GET for a purged object"
    );
    assert_eq!(node.transforms().await, 2.0);
    assert_eq!(
        after.etag, first.etag,
        "same original, same variant, same tag"
    );
    assert_eq!(get(&node, &u).await.cache, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_owner_revalidates_through_the_owner_without_a_resize() {
    const SECRET: &str = "cluster-test-secret-0123456789abcdef";
    let s3 = S3Server::start().await;
    s3.put(ASTRO, &read("astronaut.png"));
    let peers: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut nodes = Vec::new();
    for me in &peers {
        let cluster = format!(
            "cluster:\n  listen: {me}\n  peers: [{}]\n  secret: {SECRET}\n  health_check_interval: 100ms\n  connect_timeout: 300ms\n",
            peers.join(", ")
        );
        nodes.push(Imgedge::start_with(&short_ttl(&s3), &cluster).await);
    }
    let owner_of = |node: &Imgedge| {
        let req = node
            .client
            .get(format!("{}/cluster?id={ASTRO}", node.admin));
        async move {
            let ring: serde_json::Value =
                serde_json::from_slice(&req.send().await.unwrap().bytes().await.unwrap()).unwrap();
            let healthy = ring["members"]
                .as_array()
                .is_some_and(|m| m.len() == 2 && m.iter().all(|m| m["healthy"] == true));
            (healthy, ring["owner"].as_str().unwrap_or("").to_string())
        }
    };
    for node in &nodes {
        eventually("every peer healthy", || async { owner_of(node).await.0 }).await;
    }
    let owner = owner_of(&nodes[0]).await.1;
    let other = &nodes[peers.iter().position(|p| *p != owner).unwrap()];
    let u = format!("/image/{ASTRO}?size=100x");

    let first = get(other, &u).await;
    assert_eq!((first.status, first.cache.as_str()), (200, "MISS"));
    assert!(
        first.peer.starts_with(&owner),
        "filled by the owner: {}",
        first.peer
    );
    assert!(!first.internal_header, "{SOURCE_ETAG} reached a client");
    let transforms = || async {
        let mut sum = 0.0;
        for n in &nodes {
            sum += n.transforms().await;
        }
        sum
    };
    assert_eq!(transforms().await, 1.0);

    // Expired on the non-owner: it asks the owner with its tags; the owner revalidates its
    // own copy (or still has it fresh) and answers 304. No resize anywhere in the POP.
    let again = after_expiry(other, &u).await;
    assert_eq!((again.status, again.cache.as_str()), (200, "REVALIDATED"));
    assert!(
        again.peer.starts_with(&owner),
        "asked the owner: {}",
        again.peer
    );
    assert!(again.body == first.body);
    assert_eq!(again.etag, first.etag);
    assert!(!again.internal_header, "{SOURCE_ETAG} reached a client");
    assert_eq!(transforms().await, 1.0, "no resize in the POP");
    assert_eq!(
        s3.gets(ASTRO) - s3.not_modified(),
        1,
        "one full GET in the POP"
    );
}
