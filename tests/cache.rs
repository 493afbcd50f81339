//! The tiered cache end to end: the real binary with a disk tier, restarted gracefully and
//! killed with SIGKILL, its files corrupted behind its back; purges; stale answers; a disk that
//! stops accepting writes. Every body served is compared byte for byte with a fresh resize.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use futures::future::join_all;
use imgedge::cache::memory::{ENTRY_OVERHEAD, HEAD_CHARGE};

/// 2560x1600 JPEG.
const KITE: &str = "3972b16287e5kite.jpg";
/// 512x512 RGBA PNG.
const ASTRO: &str = "81fe02aa9c01astro.png";
const TOKEN: &str = "test-purge-token-0123456789";

fn disk_extra(dir: &Path) -> String {
    format!(
        "admin:\n  purge_token: {TOKEN}\ncache:\n  disk:\n    dir: {}\n    max_bytes: 64 MiB\n    save_interval: 1s\n",
        dir.display()
    )
}

async fn s3_with_samples() -> S3Server {
    let s3 = S3Server::start().await;
    s3.put(KITE, &read("kite.jpg"));
    s3.put(ASTRO, &read("astronaut.png"));
    s3
}

/// (status, x-cache, body)
async fn fetch(node: &Imgedge, url: &str) -> (u16, String, Vec<u8>) {
    let r = node.get(url).await;
    let status = r.status().as_u16();
    let cache = header(&r, "x-cache");
    (status, cache, r.bytes().await.unwrap().to_vec())
}

fn urls(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| match i % 3 {
            0 => format!("/image/{KITE}?size={}x", 100 + i * 7),
            1 => format!("/image/{KITE}?size={}x{}&format=webp", 90 + i * 5, 60 + i),
            _ => format!("/image/{ASTRO}?size={}x&format=png", 40 + i * 3),
        })
        .collect()
}

/// Files under the disk tier's `objects/`.
fn object_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir.join("objects")).unwrap().flatten() {
        for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
            out.push(f.path());
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_serves_from_disk_without_the_origin() {
    let s3 = s3_with_samples().await;
    let cache_dir = tempfile::tempdir().unwrap();
    let extra = disk_extra(cache_dir.path());
    let list = urls(6);

    let mut first = Imgedge::start(&s3, &extra).await;
    let mut bodies = Vec::new();
    for u in &list {
        let (status, cache, body) = fetch(&first, u).await;
        assert_eq!((status, cache.as_str()), (200, "MISS"), "{u}");
        bodies.push(body);
    }
    first
        .wait_metric("imgedge_cache_objects", &[("tier", "disk")], 6.0)
        .await;
    first.terminate();
    let gets = s3.total_gets();

    let node = Imgedge::start(&s3, &extra).await;
    assert_eq!(
        node.metric("imgedge_cache_objects", &[("tier", "disk")])
            .await,
        6.0
    );
    for (u, want) in list.iter().zip(&bodies) {
        let (status, cache, body) = fetch(&node, u).await;
        assert_eq!((status, cache.as_str()), (200, "HIT"), "{u}");
        assert!(body == *want, "{u}: body differs after restart");
    }
    // The disk hits were promoted: the second round is served from memory.
    for u in &list {
        assert_eq!(fetch(&node, u).await.1, "HIT");
    }
    let disk_hits = node
        .metric(
            "imgedge_cache_lookups_total",
            &[("tier", "disk"), ("result", "hit")],
        )
        .await;
    assert_eq!(disk_hits, 6.0);
    assert_eq!(
        s3.total_gets(),
        gets,
        "a restart must not refetch originals"
    );
    assert_eq!(node.transforms().await, 0.0);

    // Range, HEAD and 304 work on a disk-backed hit.
    let (u, whole) = (&list[0], &bodies[0]);
    let r = node
        .client
        .get(node.url(u))
        .header("range", "bytes=10-109")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &whole[10..110]);
    let head = node.client.head(node.url(u)).send().await.unwrap();
    assert_eq!(header(&head, "content-length"), whole.len().to_string());
    let etag = header(&head, "etag");
    let r = node
        .client
        .get(node.url(u))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_crashed_entries_are_never_served() {
    let s3 = s3_with_samples().await;
    let cache_dir = tempfile::tempdir().unwrap();
    let extra = disk_extra(cache_dir.path());
    let list = urls(40);
    // The reference: a memory-only node resizing everything fresh.
    let reference = Imgedge::start(&s3, "").await;
    let mut want = Vec::new();
    for u in &list {
        let (status, _, body) = fetch(&reference, u).await;
        assert_eq!(status, 200);
        want.push(body);
    }

    // Ten objects complete on disk, then thirty fills in flight when the process is killed.
    let mut node = Imgedge::start(&s3, &extra).await;
    for u in &list[..10] {
        fetch(&node, u).await;
    }
    node.wait_metric("imgedge_cache_objects", &[("tier", "disk")], 10.0)
        .await;
    let (client, base) = (node.client.clone(), node.base.clone());
    let inflight: Vec<_> = list[10..]
        .iter()
        .map(|u| {
            let req = client.get(format!("{base}{u}"));
            tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    node.wait_metric("imgedge_transforms_total", &[], 3.0).await;
    node.kill();
    join_all(inflight).await;

    // Damage what is on disk: a truncated file, a flipped body byte, an empty file, another
    // object's file under this name, and a flipped header byte.
    let files = object_files(cache_dir.path());
    assert!(files.len() >= 10, "{} files", files.len());
    let bytes = |p: &PathBuf| std::fs::read(p).unwrap();
    let b0 = bytes(&files[0]);
    std::fs::write(&files[0], &b0[..b0.len() / 2]).unwrap();
    let mut b1 = bytes(&files[1]);
    let last = b1.len() - 1;
    b1[last] ^= 0x01;
    std::fs::write(&files[1], b1).unwrap();
    std::fs::write(&files[2], b"").unwrap();
    std::fs::write(&files[3], bytes(&files[4])).unwrap();
    let mut b5 = bytes(&files[5]);
    b5[30] ^= 0x80;
    std::fs::write(&files[5], b5).unwrap();

    let node = Imgedge::start(&s3, &extra).await;
    let mut hits = 0;
    for (u, want) in list.iter().zip(&want) {
        let (status, cache, body) = fetch(&node, u).await;
        assert_eq!(status, 200, "{u}");
        assert!(
            body == *want,
            "{u}: served bytes differ from a fresh resize ({cache})"
        );
        hits += usize::from(cache == "HIT");
    }
    // The five intact completed objects are hits; the damaged five were refused and removed.
    assert!(hits >= 5, "only {hits} hits after restart");
    assert_eq!(node.metric("imgedge_cache_corrupt_total", &[]).await, 5.0);
    // And the second pass is all hits, with the damaged entries rewritten.
    for u in &list {
        assert_eq!(fetch(&node, u).await.1, "HIT", "{u}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_one_url_or_every_variant_of_an_id() {
    let s3 = s3_with_samples().await;
    let cache_dir = tempfile::tempdir().unwrap();
    let extra = disk_extra(cache_dir.path());
    let mut node = Imgedge::start(&s3, &extra).await;
    let kite = [
        format!("/image/{KITE}?size=120x"),
        format!("/image/{KITE}?size=200x100&format=webp"),
        format!("/image/{KITE}"),
    ];
    let astro = format!("/image/{ASTRO}?size=64x");
    for u in kite.iter().chain([&astro]) {
        assert_eq!(fetch(&node, u).await.1, "MISS");
    }
    let purge = |path: &str, token: Option<&str>| {
        let mut req = node.client.post(format!("{}{path}", node.admin));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap() }
    };
    let one = format!("/purge/url/image/{KITE}?size=120x&utm_source=x");
    assert_eq!(purge(&one, None).await.status(), 401);
    assert_eq!(
        purge(&one, Some("wrong-token-wrong-token")).await.status(),
        401
    );
    assert_eq!(
        node.client
            .get(format!("{}{one}", node.admin))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    assert_eq!(
        purge("/purge/url/image/a%3Cb", Some(TOKEN)).await.status(),
        400
    );

    // One URL (in any equivalent spelling) takes one variant out.
    let gets = s3.gets(KITE);
    let r = purge(&one, Some(TOKEN)).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("\"found\":true"));
    assert_eq!(fetch(&node, &kite[0]).await.1, "MISS");
    assert_eq!(fetch(&node, &kite[1]).await.1, "HIT");
    assert_eq!(
        s3.gets(KITE),
        gets,
        "a URL purge keeps the original: re-made from the source cache"
    );

    // The id takes every variant out, and nothing of another id.
    assert_eq!(
        purge(&format!("/purge/image/{KITE}"), Some(TOKEN))
            .await
            .status(),
        200
    );
    let gets = s3.gets(KITE);
    for u in &kite {
        let (status, cache, _) = fetch(&node, u).await;
        assert_eq!(status, 200);
        assert_ne!(cache, "HIT", "{u} served after its id was purged");
    }
    assert_eq!(
        s3.gets(KITE),
        gets + 1,
        "an id purge drops the original too: fetched again, once for the three"
    );
    assert_eq!(fetch(&node, &astro).await.1, "HIT");
    for u in &kite {
        assert_eq!(fetch(&node, u).await.1, "HIT", "{u} refilled");
    }

    // A purge survives a restart: variants cached before it are not resurrected from disk.
    let before_purge = format!("/image/{ASTRO}?size=80x");
    fetch(&node, &before_purge).await;
    node.wait_metric("imgedge_cache_objects", &[("tier", "disk")], 5.0)
        .await;
    assert_eq!(
        purge(&format!("/purge/image/{ASTRO}"), Some(TOKEN))
            .await
            .status(),
        200
    );
    node.terminate();
    let node = Imgedge::start(&s3, &extra).await;
    assert_ne!(fetch(&node, &before_purge).await.1, "HIT");
    assert_ne!(fetch(&node, &astro).await.1, "HIT");
    assert_eq!(fetch(&node, &kite[1]).await.1, "HIT");
    assert!(
        node.metric("imgedge_cache_lookups_total", &[("tier", "disk")])
            .await
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_is_refused_without_a_configured_token() {
    let s3 = s3_with_samples().await;
    let node = Imgedge::start(&s3, "").await;
    let r = node
        .client
        .post(format!("{}/purge/image/{KITE}", node.admin))
        .bearer_auth("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("admin.purge_token"));
}

fn short_ttl(s3: &S3Server) -> String {
    format!(
        "{}  cache_control: \"public, max-age=1\"\n",
        no_source_cache(s3)
    )
}

/// The S3 origin without its source cache, for tests that count the edge's trips to the
/// origin by S3 GETs.
fn no_source_cache(s3: &S3Server) -> String {
    format!("{}  source_cache_bytes: 0\n", s3_config(s3, SECRET_KEY))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_the_expired_object_while_the_origin_fails() {
    let s3 = s3_with_samples().await;
    let node = Imgedge::start_with(&short_ttl(&s3), "").await;
    let u = format!("/image/{ASTRO}?size=100x");
    let (_, _, body) = fetch(&node, &u).await;
    s3.set_failing(ASTRO, true);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, cache, stale) = fetch(&node, &u).await;
    assert_eq!((status, cache.as_str()), (200, "STALE"));
    assert!(stale == body);
    // Not cached as a failure: once the origin is back, the object is refreshed.
    s3.set_failing(ASTRO, false);
    let (status, cache, _) = fetch(&node, &u).await;
    assert_eq!(status, 200);
    assert_ne!(cache, "STALE");
    // A variant never cached has nothing stale to fall back on.
    s3.set_failing(ASTRO, true);
    assert_eq!(
        fetch(&node, &format!("/image/{ASTRO}?size=99x")).await.0,
        502
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let s3 = s3_with_samples().await;
    let node =
        Imgedge::start_with(&short_ttl(&s3), "cache:\n  stale_while_revalidate: 60s\n").await;
    let u = format!("/image/{ASTRO}?size=100x");
    fetch(&node, &u).await;
    let gets = s3.gets(ASTRO);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Five concurrent requests for the expired object: all stale, at once; one refresh.
    let answers = join_all((0..5).map(|_| fetch(&node, &u))).await;
    for (status, cache, _) in &answers {
        assert_eq!((*status, cache.as_str()), (200, "STALE"));
    }
    node.wait_metric("imgedge_origin_requests_total", &[], 2.0)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s3.gets(ASTRO), gets + 1, "one background refresh");
    assert_eq!(fetch(&node, &u).await.1, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_disk_never_fails_a_request() {
    let s3 = s3_with_samples().await;
    let cache_dir = tempfile::tempdir().unwrap();
    let node = Imgedge::start(&s3, &disk_extra(cache_dir.path())).await;
    // Writes land in tmp/ first; make that impossible (a file where the directory was).
    let tmp = cache_dir.path().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    for u in urls(6) {
        let (status, cache, _) = fetch(&node, &u).await;
        assert_eq!((status, cache.as_str()), (200, "MISS"), "{u}");
        assert_eq!(fetch(&node, &u).await.1, "HIT", "{u} from memory");
    }
    node.wait_metric(
        "imgedge_cache_write_failures_total",
        &[("tier", "disk"), ("reason", "io")],
        6.0,
    )
    .await;
    assert_eq!(
        node.metric("imgedge_cache_objects", &[("tier", "disk")])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_waiters_are_counted() {
    let s3 = s3_with_samples().await;
    let node = Imgedge::start(&s3, "").await;
    let u = format!("/image/{KITE}?size=333x");
    let answers = join_all((0..8).map(|_| fetch(&node, &u))).await;
    assert!(answers.iter().all(|a| a.0 == 200));
    assert_eq!(s3.gets(KITE), 1);
    let waiters = node
        .metric("imgedge_cache_coalesced_waiters_total", &[])
        .await;
    assert!((1.0..=7.0).contains(&waiters), "{waiters}");
}

/// A node whose 1 MiB memory tier is full of small objects that are read often, so that a
/// large object read once is declined by admission. With `disk`, a disk tier under it.
async fn node_with_a_hot_memory_tier(s3: &S3Server, disk: Option<&Path>) -> Imgedge {
    let mut extra = "cache:\n  memory_bytes: 1 MiB\n  max_object_bytes: 1 MiB\n".to_string();
    if let Some(dir) = disk {
        extra += &format!(
            "  disk:\n    dir: {}\n    max_bytes: 64 MiB\n",
            dir.display()
        );
    }
    let node = Imgedge::start_with(&no_source_cache(s3), &extra).await;
    // 140 JPEGs of 5-11 KB: more than the tier's main area holds.
    let small: Vec<String> = (0..140)
        .map(|i| format!("/image/{KITE}?size={}x", 260 + i))
        .collect();
    for u in &small {
        assert_eq!(fetch(&node, u).await.0, 200, "{u}");
    }
    for _ in 0..20 {
        for chunk in small.chunks(10) {
            for (status, _, _) in join_all(chunk.iter().map(|u| fetch(&node, u))).await {
                assert_eq!(status, 200);
            }
        }
    }
    // Full: stored bytes plus what the tier charges per object (entry and parsed head) fill
    // the main area (15/16 of 1 MiB) but for the sketch and about one object.
    let held = node
        .metric("imgedge_cache_bytes", &[("tier", "memory")])
        .await;
    let objects = node
        .metric("imgedge_cache_objects", &[("tier", "memory")])
        .await;
    let charged = held + objects * (ENTRY_OVERHEAD + HEAD_CHARGE) as f64;
    assert!(
        charged > 940_000.0,
        "memory tier charges only {charged} bytes ({held} stored, {objects} objects)"
    );
    eprintln!("hot tier: {charged} bytes charged, {held} stored, {objects} objects");
    if disk.is_some() {
        node.wait_metric("imgedge_cache_objects", &[("tier", "disk")], 140.0)
            .await;
    }
    node
}

/// Eight concurrent requests for a ~45 KB variant: one S3 GET, one resize, eight identical
/// bodies, although admission declines the object.
async fn eight_waiters_one_fill(node: &Imgedge, s3: &S3Server, u: &str) -> Vec<u8> {
    let (gets, transforms) = (s3.gets(KITE), node.transforms().await);
    let answers = join_all((0..8).map(|_| fetch(node, u))).await;
    for (status, _, body) in &answers {
        assert_eq!(*status, 200);
        assert!(*body == answers[0].2, "waiters got different bodies");
    }
    assert!(answers[0].2.len() > 30_000, "{} bytes", answers[0].2.len());
    assert_eq!(s3.gets(KITE), gets + 1, "one S3 GET for eight requests");
    assert_eq!(node.transforms().await, transforms + 1.0);
    answers[0].2.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_fill_serves_its_waiters_then_lives_on_disk() {
    let s3 = s3_with_samples().await;
    let cache_dir = tempfile::tempdir().unwrap();
    let node = node_with_a_hot_memory_tier(&s3, Some(cache_dir.path())).await;
    let large = format!("/image/{KITE}?size=950x");
    let body = eight_waiters_one_fill(&node, &s3, &large).await;
    // Once its disk write lands it leaves memory: the next request is a disk hit, which
    // admission again keeps out of the hot memory tier.
    node.wait_metric("imgedge_cache_objects", &[("tier", "disk")], 141.0)
        .await;
    let disk_hits = || {
        node.metric(
            "imgedge_cache_lookups_total",
            &[("tier", "disk"), ("result", "hit")],
        )
    };
    let (before, gets) = (disk_hits().await, s3.gets(KITE));
    for n in 1..=2 {
        let (status, cache, again) = fetch(&node, &large).await;
        assert_eq!((status, cache.as_str()), (200, "HIT"));
        assert!(again == body);
        assert_eq!(disk_hits().await, before + f64::from(n), "served from disk");
    }
    assert_eq!(s3.gets(KITE), gets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_fill_serves_its_waiters_on_a_memory_only_node() {
    let s3 = s3_with_samples().await;
    let node = node_with_a_hot_memory_tier(&s3, None).await;
    let large = format!("/image/{KITE}?size=950x");
    let body = eight_waiters_one_fill(&node, &s3, &large).await;
    // It was held in the hand-off area, not admitted: two more declined fills push it out, and
    // it has to be fetched again.
    for w in [960, 970] {
        assert_eq!(
            fetch(&node, &format!("/image/{KITE}?size={w}x")).await.1,
            "MISS"
        );
    }
    let gets = s3.gets(KITE);
    let (status, cache, again) = fetch(&node, &large).await;
    assert_eq!((status, cache.as_str()), (200, "MISS"));
    assert!(again == body);
    assert_eq!(s3.gets(KITE), gets + 1);
}

/// Issue 13 item 6: a fill that began before `POST /purge/image/{id}` and finished after it
/// was cached with a creation time after the purge, so the purge missed it and it was served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_running_across_a_purge_is_not_served_after_it() {
    let s3 = S3Server::start().await;
    let slow = "51070wslow.jpg";
    s3.put(slow, &read("kite.jpg"));
    s3.set_delay(Duration::from_millis(1500));
    let node = Imgedge::start(&s3, &format!("admin:\n  purge_token: {TOKEN}\n")).await;
    let url = format!("/image/{slow}?size=100x");

    let fill = {
        let req = node.client.get(node.url(&url));
        tokio::spawn(async move {
            let r = req.send().await.unwrap();
            let cache = header(&r, "x-cache");
            (r.status().as_u16(), cache, r.bytes().await.unwrap())
        })
    };
    // The purge lands while S3 holds the fill's GetObject.
    eventually("the fill to reach S3", || async { s3.gets(slow) == 1 }).await;
    let r = node
        .client
        .post(format!("{}/purge/image/{slow}", node.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, cache, _) = fill.await.unwrap();
    assert_eq!(status, 200, "the asker is answered");
    assert_ne!(cache, "HIT");

    // What that fill produced predates the purge: not served, fetched again.
    let (status, cache, _) = fetch(&node, &url).await;
    assert_eq!(status, 200);
    assert_ne!(
        cache, "HIT",
        "a fill started before the purge was served after it"
    );
    assert_eq!(s3.gets(slow), 2);
    // The fill after the purge is cached as usual.
    assert_eq!(fetch(&node, &url).await.1, "HIT");
}
