//! S3 beyond one bucket: the fallback bucket (`origin.s3.fallback`) and the shared result tier
//! (`origin.results`), against the real binary and real S3-protocol servers on loopback.
//!
//! The fallback tests run two S3 servers (a primary and a "second region" with its own bucket
//! name) and count GETs on each; the result tier tests run two nodes that share only the S3
//! server (no cluster), so whatever the second node serves without a GET of the original came
//! from the results bucket.

mod common;

use std::time::SystemTime;

use common::*;

/// 2560x1600 JPEG.
const KITE: &str = "3972b16287e5kite.jpg";
/// 512x512 RGBA PNG.
const ASTRO: &str = "81fe02aa9c01astro.png";
/// The fallback server's bucket.
const WEST: &str = "originals-west";
/// The results bucket (on the primary server).
const RESULTS: &str = "results";
const TOKEN: &str = "test-purge-token-0123456789";

/// The origin section: `primary` with `fallback` as its fallback bucket.
fn with_fallback(primary: &S3Server, fallback: &S3Server) -> String {
    format!(
        "{}    fallback:\n      bucket: {WEST}\n      region: us-west-2\n      endpoint: http://{}\n",
        s3_config(primary, SECRET_KEY),
        fallback.addr
    )
}

async fn by_bucket(node: &Imgedge, bucket: &str, result: &str) -> f64 {
    node.metric(
        "imgedge_source_fetches_by_bucket_total",
        &[("bucket", bucket), ("result", result)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_original_only_in_the_fallback_bucket_is_served() {
    let primary = S3Server::start().await;
    let west = S3Server::start_with_bucket(WEST).await;
    west.put(KITE, &read("kite.jpg"));
    primary.put(ASTRO, &read("astronaut.png"));
    let node = Imgedge::start_with(&with_fallback(&primary, &west), "").await;

    let r = node.get(&format!("/image/{KITE}?size=200x")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(dims(&r.bytes().await.unwrap()).0, 200);
    assert_eq!((primary.gets(KITE), west.gets(KITE)), (1, 1));
    assert_eq!(by_bucket(&node, BUCKET, "not_found").await, 1.0);
    assert_eq!(by_bucket(&node, WEST, "ok").await, 1.0);

    // An original the primary has never reaches the fallback.
    let r = node.get(&format!("/image/{ASTRO}?size=100x")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(dims(&r.bytes().await.unwrap()).0, 100);
    assert_eq!((primary.gets(ASTRO), west.gets(ASTRO)), (1, 0));
    assert_eq!(by_bucket(&node, BUCKET, "ok").await, 1.0);
    assert_eq!(by_bucket(&node, WEST, "ok").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_primary_falls_over_to_the_fallback() {
    let primary = S3Server::start().await;
    let west = S3Server::start_with_bucket(WEST).await;
    for s3 in [&primary, &west] {
        s3.put(KITE, &read("kite.jpg"));
    }
    primary.set_failing(KITE, true);
    let node = Imgedge::start_with(&with_fallback(&primary, &west), "").await;

    let r = node.get(&format!("/image/{KITE}?size=300x")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(dims(&r.bytes().await.unwrap()).0, 300);
    // The primary answered 500 to each of its attempts (or ran out of its share of the time).
    assert!(primary.gets(KITE) >= 1);
    assert_eq!(west.gets(KITE), 1);
    let primary_failed =
        by_bucket(&node, BUCKET, "error").await + by_bucket(&node, BUCKET, "timeout").await;
    assert_eq!(primary_failed, 1.0);
    assert_eq!(by_bucket(&node, WEST, "ok").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_slower_than_its_share_falls_over_within_the_fetch_timeout() {
    let primary = S3Server::start().await;
    let west = S3Server::start_with_bucket(WEST).await;
    // Keys containing "slow" answer after the primary's delay; the fallback has no delay.
    let id = "slow00aa0000kite.jpg";
    for s3 in [&primary, &west] {
        s3.put(id, &read("kite.jpg"));
    }
    // Past the primary's share (half of fetch_timeout: 1.5 s) and its attempt timeout (2 s).
    primary.set_delay(std::time::Duration::from_secs(10));
    let node = Imgedge::start_with(&with_fallback(&primary, &west), "").await;

    let r = node.get(&format!("/image/{id}?size=120x")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(dims(&r.bytes().await.unwrap()).0, 120);
    assert_eq!(by_bucket(&node, BUCKET, "timeout").await, 1.0);
    assert_eq!(by_bucket(&node, WEST, "ok").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_only_when_both_buckets_miss() {
    let primary = S3Server::start().await;
    let west = S3Server::start_with_bucket(WEST).await;
    let node = Imgedge::start_with(&with_fallback(&primary, &west), "").await;

    let missing = "0000aa0000missing.jpg";
    let r = node.get(&format!("/image/{missing}?size=100x")).await;
    assert_eq!(r.status(), 404);
    assert_eq!((primary.gets(missing), west.gets(missing)), (1, 1));
    assert_eq!(by_bucket(&node, WEST, "not_found").await, 1.0);

    // A primary that fails while the fallback has no copy is an upstream failure, not a
    // (negatively cached) 404: the original may well exist in the primary.
    let flaky = "0000bb0000flaky.jpg";
    primary.put(flaky, &read("kite.jpg"));
    primary.set_failing(flaky, true);
    let r = node.get(&format!("/image/{flaky}?size=100x")).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_eq!(west.gets(flaky), 1);
}

/// The origin section of a node using `s3` for originals and its `results` bucket as the
/// result tier.
fn with_results(s3: &S3Server) -> String {
    s3.create_bucket(RESULTS);
    format!(
        "{}  results:\n    bucket: {RESULTS}\n    prefix: v1/\n",
        s3_config(s3, SECRET_KEY)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_made_by_one_node_is_served_by_a_fresh_node_without_the_original() {
    let s3 = S3Server::start().await;
    s3.put(KITE, &read("kite.jpg"));
    let origin = with_results(&s3);
    let admin = format!("admin:\n  purge_token: {TOKEN}\n");
    let url = format!("/image/{KITE}?size=200x");

    // Node A renders the variant and writes it to the result tier in the background.
    let a = Imgedge::start_with(&origin, &admin).await;
    let r = a.get(&url).await;
    assert_eq!(r.status(), 200);
    let etag = header(&r, "etag");
    let body = r.bytes().await.unwrap();
    assert_eq!(dims(&body).0, 200);
    assert_eq!((a.transforms().await, s3.gets(KITE)), (1.0, 1));
    a.wait_metric("imgedge_results_puts_total", &[("result", "ok")], 1.0)
        .await;
    let stored = s3.objects(RESULTS);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(
        stored[0].starts_with(&format!("v1/{KITE}/!/")),
        "{stored:?}"
    );

    // Node B: empty cache, not clustered with A, same S3 and result tier.
    let b = Imgedge::start_with(&origin, &admin).await;
    let r = b.get(&url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "image/jpeg");
    assert_eq!(header(&r, "etag"), etag);
    assert_eq!(r.bytes().await.unwrap(), body);
    assert_eq!(b.transforms().await, 0.0, "B resized");
    assert_eq!(s3.gets(KITE), 1, "B fetched the original");
    assert_eq!(
        b.metric("imgedge_results_lookups_total", &[("result", "hit")])
            .await,
        1.0
    );
    // Only a node that resized writes.
    assert_eq!(b.metric("imgedge_results_puts_total", &[]).await, 0.0);

    // A purge through B deletes the id's results...
    let path = s3.object_path(RESULTS, &stored[0]);
    let (old_bytes, old_mtime) = (
        std::fs::read(&path).unwrap(),
        std::fs::metadata(&path).unwrap().modified().unwrap(),
    );
    let r = b
        .client
        .post(format!("{}/purge/image/{KITE}", b.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually("the purged id's results deleted", || async {
        s3.objects(RESULTS).is_empty()
    })
    .await;
    // ...and a result made before the purge that the delete missed (a write racing the purge)
    // is not served either: put the old object back as it was.
    std::fs::write(&path, &old_bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old_mtime)
        .unwrap();
    assert!(old_mtime < SystemTime::now());
    let r = b.get(&url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(dims(&r.bytes().await.unwrap()).0, 200);
    assert_eq!(b.transforms().await, 1.0, "B re-renders after the purge");
    assert_eq!(s3.gets(KITE), 2);
    assert_eq!(
        b.metric("imgedge_results_lookups_total", &[("result", "stale")])
            .await,
        1.0
    );
    // B's new result replaces the old one.
    b.wait_metric("imgedge_results_puts_total", &[("result", "ok")], 1.0)
        .await;
    let after = std::fs::metadata(&path).unwrap().modified().unwrap();
    assert!(after > old_mtime);
}
