//! Mirror mode end to end: node A mirrors what it serves to node B (both the real binary); B
//! gets warm. A target that hangs or refuses never fails A's responses; what cannot be queued
//! is dropped and counted.

mod common;

use common::*;

const KITE: &str = "3972b16287e5kite.jpg";

fn mirror_yaml(target: &str, extra: &str) -> String {
    format!("mirror:\n  target: {target}\n  sample: 1.0\n{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrors_to_b_and_b_gets_warm() {
    let s3 = S3Server::start().await;
    s3.put(KITE, &read("kite.jpg"));
    let b = Imgedge::start(&s3, "").await;
    let a = Imgedge::start(&s3, &mirror_yaml(&b.base, "")).await;

    let sizes = ["120x", "130x90", "140x"];
    for s in sizes {
        let r = a
            .get(&format!("/image/{KITE}?size={s}&utm_source=live"))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(x_cache(&r), "MISS");
        r.bytes().await.unwrap();
    }
    eventually("B to have filled the mirrored variants", || async {
        b.origin_requests().await == 3.0
    })
    .await;
    eventually("A to count the mirrored requests", || async {
        a.metric("imgedge_mirror_requests_total", &[("result", "ok")])
            .await
            == 3.0
    })
    .await;
    // B serves them as hits now: warm before any client asked it.
    let gets = s3.gets(KITE);
    for s in sizes {
        let r = b.get(&format!("/image/{KITE}?size={s}")).await;
        assert_eq!(x_cache(&r), "HIT", "{s}");
    }
    assert_eq!(s3.gets(KITE), gets);
    assert_eq!(
        a.metric("imgedge_mirror_requests_total", &[("result", "dropped")])
            .await,
        0.0
    );

    // Errors are not mirrored; nor is a request that is itself a mirror (no loops).
    assert_eq!(a.get("/image/nope.jpg?size=1x").await.status(), 404);
    let r = a
        .client
        .get(a.url(&format!("/image/{KITE}?size=150x")))
        .header("x-imgedge-mirror", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The edge offers in its logging phase, after the response: reading the counter now could
    // come before the two requests above were offered and pass whatever they did. One more
    // mirrored request after them, waited for, then the exact count.
    let r = a.get(&format!("/image/{KITE}?size=160x")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    eventually("A to queue the sentinel request", || async {
        a.metric("imgedge_mirror_requests_total", &[("result", "queued")])
            .await
            >= 4.0
    })
    .await;
    assert_eq!(
        a.metric("imgedge_mirror_requests_total", &[("result", "queued")])
            .await,
        4.0,
        "the 404 or the mirrored request was mirrored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_or_dead_target_never_fails_a_and_drops_are_counted() {
    let s3 = S3Server::start().await;
    s3.put(KITE, &read("kite.jpg"));
    // A target that accepts connections and never answers: the one mirrored request in flight
    // hangs, the queue (one slot) fills, and everything after is dropped.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
        }
    });
    let a = Imgedge::start(
        &s3,
        &mirror_yaml(
            &format!("http://{hung_addr}"),
            "  queue_len: 1\n  concurrency: 1\n  timeout: 60s\n",
        ),
    )
    .await;
    for i in 0..10 {
        let r = a.get(&format!("/image/{KITE}?size={}x", 100 + i)).await;
        assert_eq!(r.status(), 200, "request {i}");
        r.bytes().await.unwrap();
    }
    // Repeats are hits; still answered while the target hangs.
    for _ in 0..20 {
        let r = a.get(&format!("/image/{KITE}?size=100x")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(x_cache(&r), "HIT");
    }
    // Offers are counted in the logging phase, after each response: wait for all 30.
    eventually("A to count 30 offers", || async {
        a.metric("imgedge_mirror_requests_total", &[("result", "dropped")])
            .await
            + a.metric("imgedge_mirror_requests_total", &[("result", "queued")])
                .await
            >= 30.0
    })
    .await;
    let dropped = a
        .metric("imgedge_mirror_requests_total", &[("result", "dropped")])
        .await;
    let queued = a
        .metric("imgedge_mirror_requests_total", &[("result", "queued")])
        .await;
    assert_eq!(dropped + queued, 30.0);
    assert!(dropped >= 28.0, "dropped {dropped}, queued {queued}");
    holder.abort();

    // A refusing target: every mirrored request fails, every response still succeeds.
    let dead = Imgedge::start(&s3, &mirror_yaml("http://127.0.0.1:1", "  timeout: 2s\n")).await;
    for i in 0..5 {
        let r = dead.get(&format!("/image/{KITE}?size={}x", 300 + i)).await;
        assert_eq!(r.status(), 200);
    }
    eventually("the failed mirror requests to be counted", || async {
        dead.metric("imgedge_mirror_requests_total", &[("result", "error")])
            .await
            == 5.0
    })
    .await;
}

/// Issue 13 item 3: `mirror.target: https://…` works in the shipped binary (rustls with ring,
/// `mirror.ca_file` trusted instead of the system roots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrors_to_an_https_target_with_its_ca() {
    let s3 = S3Server::start().await;
    s3.put(KITE, &read("kite.jpg"));
    let certs = dev_certs();
    let d = certs.path().display();
    let port = free_port();
    let b = Imgedge::start(
        &s3,
        &format!(
            "edge:\n  tls:\n    listen: [\"127.0.0.1:{port}\"]\n    certificates:\n      - cert: {d}/dev.pem\n        key: {d}/dev.key\n"
        ),
    )
    .await;
    let a = Imgedge::start(
        &s3,
        &mirror_yaml(
            &format!("https://localhost:{port}"),
            &format!("  ca_file: {d}/dev-ca.pem\n"),
        ),
    )
    .await;
    let r = a.get(&format!("/image/{KITE}?size=121x")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    eventually("A to count the mirrored request as ok", || async {
        a.metric("imgedge_mirror_requests_total", &[("result", "ok")])
            .await
            == 1.0
    })
    .await;
    assert_eq!(b.origin_requests().await, 1.0);
    assert_eq!(
        a.metric("imgedge_mirror_requests_total", &[("result", "error")])
            .await,
        0.0
    );
}
