//! The POP as one cache: three real nodes on loopback, one S3-protocol server, counted.
//!
//! Each node is the real binary with `cluster.peers` listing all three peer listeners. The
//! tests prove ownership and peer fill (one S3 GET and one resize per variant in the whole POP),
//! that a SIGKILLed owner never fails a request, that the peer listener only answers the POP,
//! and that a purge through one node reaches every node. One test takes the membership from a
//! DNS name (`cluster.peers_dns`) served by a private name service ([`NameService`]).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::future::join_all;

/// 2560x1600 JPEG.
const KITE: &str = "3972b16287e5kite.jpg";
/// 512x512 RGBA PNG.
const ASTRO: &str = "81fe02aa9c01astro.png";
const SECRET: &str = "cluster-test-secret-0123456789abcdef";
const TOKEN: &str = "test-purge-token-0123456789";

struct Pop {
    nodes: Vec<Imgedge>,
    /// Each node's peer listener, in node order.
    peers: Vec<String>,
}

/// Start `n` nodes forming one POP against `s3`; `extra` YAML goes to every node. Returns once
/// every node sees every peer healthy.
async fn pop(s3: &S3Server, n: usize, extra: &str) -> Pop {
    let peers: Vec<String> = (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut nodes = Vec::new();
    for me in &peers {
        let cluster = format!(
            "cluster:\n  listen: {me}\n  peers: [{}]\n  secret: {SECRET}\n  health_check_interval: 100ms\n  connect_timeout: 300ms\n",
            peers.join(", ")
        );
        nodes.push(Imgedge::start(s3, &format!("{extra}{cluster}")).await);
    }
    let pop = Pop { nodes, peers };
    for node in &pop.nodes {
        eventually("every peer healthy", || async {
            let ring = membership(node, None).await;
            ring["members"]
                .as_array()
                .is_some_and(|m| m.len() == n && m.iter().all(|m| m["healthy"] == true))
        })
        .await;
    }
    pop
}

/// The node's `GET /cluster[?id=...]`.
async fn membership(node: &Imgedge, id: Option<&str>) -> serde_json::Value {
    let q = id.map(|id| format!("?id={id}")).unwrap_or_default();
    let r = node
        .client
        .get(format!("{}/cluster{q}", node.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

impl Pop {
    async fn transforms(&self) -> f64 {
        let mut sum = 0.0;
        for n in &self.nodes {
            sum += n.transforms().await;
        }
        sum
    }

    /// Index of the node whose peer listener is `addr`.
    fn index(&self, addr: &str) -> usize {
        self.peers.iter().position(|p| p == addr).unwrap()
    }

    async fn home(&self, id: &str) -> usize {
        let ring = membership(&self.nodes[0], Some(id)).await;
        self.index(ring["home"].as_str().unwrap())
    }
}

async fn s3_with_samples() -> S3Server {
    let s3 = S3Server::start().await;
    s3.put(KITE, &read("kite.jpg"));
    s3.put(ASTRO, &read("astronaut.png"));
    s3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_variant_costs_one_get_and_one_resize_in_the_whole_pop() {
    let s3 = s3_with_samples().await;
    let pop = pop(&s3, 3, "").await;
    let owner = pop.home(KITE).await;
    // Every node agrees on the owner.
    for n in &pop.nodes {
        let ring = membership(n, Some(KITE)).await;
        assert_eq!(pop.index(ring["owner"].as_str().unwrap()), owner);
    }

    // Sequentially through every node, non-owners first: each misses, asks the owner.
    let url = format!("/image/{KITE}?size=300x200");
    let mut order: Vec<usize> = (0..3).filter(|&i| i != owner).collect();
    order.push(owner);
    let mut bodies = Vec::new();
    for &i in &order {
        let r = pop.nodes[i].get(&url).await;
        assert_eq!(r.status(), 200);
        let cache = x_cache(&r);
        let peer = header(&r, "x-cache-peer");
        if i == owner {
            // The owner already has it: a peer asked first.
            assert_eq!(cache, "HIT");
            assert_eq!(peer, "");
        } else {
            assert_eq!(cache, "MISS", "node {i}");
            assert!(
                peer.starts_with(&pop.peers[owner]),
                "node {i}: X-Cache-Peer {peer:?}, owner {}",
                pop.peers[owner]
            );
        }
        bodies.push(r.bytes().await.unwrap());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(dims(&bodies[0]).0, 300);
    assert_eq!(s3.gets(KITE), 1);
    assert_eq!(pop.transforms().await, 1.0);
    // Now every node has its own copy: hits everywhere, nothing asked of anyone.
    for n in &pop.nodes {
        let r = n.get(&url).await;
        assert_eq!(x_cache(&r), "HIT");
        assert_eq!(header(&r, "x-cache-peer"), "");
    }

    // Concurrently: 45 requests for one cold variant spread over the three nodes.
    let owner = pop.home(ASTRO).await;
    let asked_by_owner = pop.nodes[owner]
        .metric("imgedge_cluster_peer_requests_total", &[])
        .await;
    let url = format!("/image/{ASTRO}?size=128x&format=webp");
    let results = join_all((0..45).map(|i| {
        let node = &pop.nodes[i % 3];
        let url = url.clone();
        async move {
            let r = node.get(&url).await;
            (r.status().as_u16(), r.bytes().await.unwrap())
        }
    }))
    .await;
    assert!(results.iter().all(|(s, _)| *s == 200));
    assert!(results.windows(2).all(|w| w[0].1 == w[1].1));
    assert_eq!(s3.gets(ASTRO), 1, "one S3 GET in the whole POP");
    assert_eq!(
        pop.transforms().await,
        2.0,
        "one resize per variant in the POP"
    );
    let fills = pop.nodes[owner]
        .metric("imgedge_cluster_peer_requests_total", &[])
        .await;
    assert_eq!(
        fills, asked_by_owner,
        "the owner never asks anyone for its own ids"
    );
    for (i, n) in pop.nodes.iter().enumerate().filter(|(i, _)| *i != owner) {
        let asked = n
            .metric(
                "imgedge_cluster_peer_requests_total",
                &[("peer", &pop.peers[owner]), ("result", "ok")],
            )
            .await;
        assert!(asked >= 1.0, "node {i} filled ASTRO from its owner");
    }

    // Ten new sizes of one image through every node: the owner makes them all from the
    // original its source cache kept, so the POP still has fetched it once.
    let made = pop.transforms().await;
    for w in 0..10u32 {
        let r = pop.nodes[(w % 3) as usize]
            .get(&format!("/image/{KITE}?size={}x", 40 + 10 * w))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(dims(&r.bytes().await.unwrap()).0, 40 + 10 * w);
    }
    assert_eq!(pop.transforms().await, made + 10.0);
    assert_eq!(s3.gets(KITE), 1, "ten sizes, one S3 GET in the POP");
}

/// Small PNG originals under many ids, so the ring spreads them over every node.
fn ids(s3: &S3Server, n: usize) -> Vec<String> {
    let bytes = read("reduce-rgb-120x75.png");
    (0..n)
        .map(|i| {
            let id = format!("{:06x}{i}tile.png", i * 7919);
            s3.put(&id, &bytes);
            id
        })
        .collect()
}

/// `per_node` small PNG originals homed on each node of `pop` (asked of the ring), with their
/// homes.
async fn ids_per_node(s3: &S3Server, pop: &Pop, per_node: usize) -> (Vec<String>, Vec<usize>) {
    let bytes = read("reduce-rgb-120x75.png");
    let mut count = vec![0; pop.nodes.len()];
    let (mut ids, mut homes) = (Vec::new(), Vec::new());
    for i in 0..10_000usize {
        if count.iter().all(|&c| c >= per_node) {
            return (ids, homes);
        }
        let id = format!("{:06x}{i}tile.png", i * 7919);
        let home = pop.home(&id).await;
        if count[home] < per_node {
            count[home] += 1;
            s3.put(&id, &bytes);
            ids.push(id);
            homes.push(home);
        }
    }
    panic!("the ring homes no id on some node: {count:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_never_fails_a_request_and_survivors_keep_their_keys() {
    let s3 = S3Server::start().await;
    let mut pop = pop(&s3, 3, "").await;
    // Eight ids homed on each node, chosen through the ring: the nodes' ports are random, so a
    // fixed list can leave one node's arc empty.
    let (ids, homes) = ids_per_node(&s3, &pop, 8).await;

    // A client spreads requests over nodes 0 and 1: mostly new variants (misses), so many are
    // asked of node 2 while it is killed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let bases = [pop.nodes[0].base.clone(), pop.nodes[1].base.clone()];
    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        let (ids, bases) = (ids.clone(), bases.clone());
        let client = http_client();
        tasks.push(tokio::spawn(async move {
            let mut k = worker;
            while !stop.load(Ordering::Relaxed) {
                k += 4;
                let id = &ids[(k as usize * 7) % ids.len()];
                let url = format!("{}/image/{id}?size={}x", bases[k as usize % 2], 8 + k % 400);
                sent.fetch_add(1, Ordering::Relaxed);
                let ok = match client.get(&url).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed: {url}");
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = sent.load(Ordering::Relaxed);
    pop.nodes[2].kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (total, failures) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "{total} requests ({before_kill} before the kill, {} in the {:?} after), {failures} failed",
        total - before_kill,
        killed_at.elapsed()
    );
    assert_eq!(failures, 0);
    assert!(total - before_kill > 20, "load continued after the kill");
    let asked = pop.nodes[0]
        .metric(
            "imgedge_cluster_peer_requests_total",
            &[("peer", &pop.peers[2]), ("result", "ok")],
        )
        .await;
    assert!(asked > 0.0, "node 0 asked node 2 before it died");
    let mut fell_back = 0.0;
    for n in &pop.nodes[..2] {
        fell_back += n
            .metric(
                "imgedge_cluster_peer_requests_total",
                &[("peer", &pop.peers[2]), ("result", "fallback")],
            )
            .await;
    }
    eprintln!("{fell_back} requests met the dead owner and were filled locally");

    // The health check marked node 2 down; ids owned by the survivors did not move, node 2's
    // went to the next node on the ring.
    for n in &pop.nodes[..2] {
        eventually("node 2 marked down", || async {
            let ring = membership(n, None).await;
            ring["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["node"] == pop.peers[2].as_str() && m["healthy"] == false)
        })
        .await;
        for (id, &home) in ids.iter().zip(&homes) {
            let ring = membership(n, Some(id)).await;
            let owner = pop.index(ring["owner"].as_str().unwrap());
            if home == 2 {
                assert_ne!(owner, 2, "{id}: a dead owner is skipped");
            } else {
                assert_eq!(owner, home, "{id}: a survivor's key moved");
            }
        }
    }
    assert_eq!(
        pop.nodes[0]
            .metric("imgedge_cluster_peer_up", &[("peer", &pop.peers[2])])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_listener_answers_only_the_pop_and_peer_headers_gain_a_client_nothing() {
    let s3 = s3_with_samples().await;
    // Signed URLs on the public listener: a peer's request needs no signature, a client's does.
    let extra = format!("policy:\n  signing_keys: [\"{}\"]\n", "k".repeat(32));
    let pop = pop(&s3, 2, &extra).await;
    let client = http_client();
    let auth = imgedge::cluster::listener::PeerAuth::new(SECRET);
    let target = format!("/image/{KITE}?size=120x");
    let peer_url = format!("http://{}{target}", pop.peers[0]);
    let status = |r: reqwest::Response| r.status().as_u16();

    // No proof, a wrong one, the secret itself, a proof for another URL: 403, and no S3 GET.
    let forged = imgedge::cluster::listener::PeerAuth::new("not-the-secret-but-just-as-long-0123");
    for proof in [
        None,
        Some(forged.sign("GET", &target)),
        Some(SECRET.to_string()),
        Some(auth.sign("GET", &format!("/image/{KITE}?size=121x"))),
    ] {
        let mut req = client.get(&peer_url);
        if let Some(p) = &proof {
            req = req.header("x-imgedge-peer-auth", p);
        }
        assert_eq!(status(req.send().await.unwrap()), 403, "proof {proof:?}");
    }
    let purge = format!("/_cluster/purge/image/{KITE}");
    let r = client
        .post(format!("http://{}{purge}", pop.peers[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 403);
    assert_eq!(s3.total_gets(), 0);

    // With the proof, the peer listener serves (no URL signature needed: the asking node
    // checked it).
    let r = client
        .get(&peer_url)
        .header("x-imgedge-peer-auth", auth.sign("GET", &target))
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 200);

    // The public listener ignores peer headers: an unsigned URL stays 403 even with a valid
    // proof, and nothing is fetched for it.
    let gets = s3.total_gets();
    let other = format!("/image/{ASTRO}?size=64x");
    for node in &pop.nodes {
        let r = client
            .get(node.url(&other))
            .header("x-imgedge-peer-auth", auth.sign("GET", &other))
            .send()
            .await
            .unwrap();
        assert_eq!(status(r), 403);
    }
    assert_eq!(s3.total_gets(), gets);
    assert_eq!(
        pop.nodes[0]
            .metric("imgedge_cluster_refused_total", &[])
            .await,
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_through_one_node_reaches_every_node() {
    let s3 = s3_with_samples().await;
    let extra = format!("admin:\n  purge_token: {TOKEN}\n");
    let pop = pop(&s3, 3, &extra).await;
    let url = format!("/image/{KITE}?size=200x");
    for n in &pop.nodes {
        let r = n.get(&url).await;
        assert_eq!(r.status(), 200);
        assert_eq!(dims(&r.bytes().await.unwrap()).1, 125);
    }
    for n in &pop.nodes {
        assert_eq!(x_cache(&n.get(&url).await), "HIT");
    }

    // The image behind the id changes; the purge goes to one node only.
    s3.put(KITE, &read("astronaut.png"));
    let purger = (pop.home(KITE).await + 1) % 3;
    let started = Instant::now();
    let r = pop.nodes[purger]
        .client
        .post(format!("{}/purge/image/{KITE}", pop.nodes[purger].admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    eprintln!("purge answered in {:?}: {answer}", started.elapsed());
    assert_eq!(answer["all_confirmed"], true);
    let nodes = answer["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for p in &pop.peers {
        assert!(
            nodes
                .iter()
                .any(|n| n["node"] == p.as_str() && n["confirmed"] == true),
            "{p} confirmed: {answer}"
        );
    }
    // No node serves the old object.
    for (i, n) in pop.nodes.iter().enumerate() {
        let r = n.get(&url).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            dims(&r.bytes().await.unwrap()).1,
            200,
            "node {i} served the purged object"
        );
    }
    let m = pop.nodes[purger]
        .metric("imgedge_cluster_purge_duration_seconds_count", &[])
        .await;
    assert_eq!(m, 1.0);

    // A variant purge too: every node drops its copy.
    for n in &pop.nodes {
        assert_eq!(x_cache(&n.get(&url).await), "HIT");
    }
    let r = pop.nodes[0]
        .client
        .post(format!("{}/purge/url{url}", pop.nodes[0].admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["all_confirmed"], true, "{answer}");
    // The owner first: a non-owner's miss refills the owner, which would then be a HIT.
    let owner = pop.home(KITE).await;
    let mut order: Vec<usize> = vec![owner];
    order.extend((0..3).filter(|&i| i != owner));
    for i in order {
        assert_ne!(x_cache(&pop.nodes[i].get(&url).await), "HIT", "node {i}");
    }
}

/// A node down while a purge was fanned out learns of it from the durable record in S3 before
/// it serves again (same disk cache); a node of another POP (not in the ring) learns of it by
/// polling the records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_during_a_purge_does_not_serve_it_when_back() {
    let s3 = s3_with_samples().await;
    let records = format!(
        "  purge_records:\n    bucket: {BUCKET}\n    prefix: imgedge/purges/\n    poll_interval: 200ms\n"
    );
    let peers: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let disks: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let config = |i: usize| {
        let disk = format!(
            "admin:\n  purge_token: {TOKEN}\ncache:\n  disk:\n    dir: {}\n    max_bytes: 64 MiB\n",
            disks[i].path().display()
        );
        if i < 2 {
            format!(
                "{disk}cluster:\n  listen: {}\n  peers: [{}]\n  secret: {SECRET}\n  health_check_interval: 100ms\n  connect_timeout: 300ms\n{records}",
                peers[i],
                peers.join(", ")
            )
        } else {
            // Another POP: no peers, the same records.
            format!("{disk}cluster:\n{records}")
        }
    };
    let a = Imgedge::start(&s3, &config(0)).await;
    let mut b = Imgedge::start(&s3, &config(1)).await;
    let other_pop = Imgedge::start(&s3, &config(2)).await;
    let url = format!("/image/{KITE}?size=200x");
    for n in [&a, &b, &other_pop] {
        let r = n.get(&url).await;
        assert_eq!(r.status(), 200);
        assert_eq!(dims(&r.bytes().await.unwrap()).1, 125);
        n.wait_metric("imgedge_cache_objects", &[("tier", "disk")], 1.0)
            .await;
        assert_eq!(x_cache(&n.get(&url).await), "HIT");
    }

    // B goes down; the image changes; the purge reaches A only (and the records).
    b.terminate();
    s3.put(KITE, &read("astronaut.png"));
    let r = a
        .client
        .post(format!("{}/purge/image/{KITE}", a.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["all_confirmed"], false, "{answer}");
    assert_eq!(answer["recorded"], true, "{answer}");
    let b_entry = answer["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == peers[1].as_str())
        .cloned()
        .unwrap();
    assert_eq!(b_entry["confirmed"], false, "{answer}");

    // B comes back on the same disk: its old copy is not served.
    let b = Imgedge::start(&s3, &config(1)).await;
    let r = b.get(&url).await;
    assert_eq!(r.status(), 200);
    assert_ne!(x_cache(&r), "HIT");
    assert_eq!(
        dims(&r.bytes().await.unwrap()).1,
        200,
        "B served the object purged while it was down"
    );
    assert!(
        b.metric("imgedge_purge_records_total", &[("op", "apply")])
            .await
            >= 1.0
    );

    // The other POP polls the records and stops serving its copy.
    eventually("the other POP to apply the record", || async {
        let r = other_pop.get(&url).await;
        dims(&r.bytes().await.unwrap()).1 == 200
    })
    .await;
}

/// An owner that answers 5xx (here: its S3 credentials are wrong, so every fill of its own is a
/// 502) does not fail a request another node can serve: the asking node fills it itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_answering_5xx_is_filled_around() {
    let s3 = s3_with_samples().await;
    let tiles = ids(&s3, 16);
    let peers: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let cluster = |i: usize| {
        format!(
            "cluster:\n  listen: {}\n  peers: [{}]\n  secret: {SECRET}\n  health_check_interval: 100ms\n  connect_timeout: 300ms\n",
            peers[i],
            peers.join(", ")
        )
    };
    let broken = Imgedge::start_with(&s3_config(&s3, "not-the-secret"), &cluster(0)).await;
    let good = Imgedge::start(&s3, &cluster(1)).await;
    eventually("the broken node healthy on the ring", || async {
        let ring = membership(&good, None).await;
        ring["members"]
            .as_array()
            .is_some_and(|m| m.len() == 2 && m.iter().all(|m| m["healthy"] == true))
    })
    .await;
    let mut owned_by_broken = Vec::new();
    for id in &tiles {
        if membership(&good, Some(id)).await["home"] == peers[0].as_str() {
            owned_by_broken.push(id.clone());
        }
    }
    assert!(
        !owned_by_broken.is_empty(),
        "no id of 16 lands on the first node"
    );
    // The owner really fails them.
    let id = &owned_by_broken[0];
    assert_eq!(
        broken.get(&format!("/image/{id}?size=60x")).await.status(),
        502
    );
    for id in &owned_by_broken {
        let r = good.get(&format!("/image/{id}?size=50x")).await;
        assert_eq!(r.status(), 200, "{id}: {}", x_cache(&r));
        assert_eq!(dims(&r.bytes().await.unwrap()).0, 50);
    }
    let fell_back = good
        .metric(
            "imgedge_cluster_peer_requests_total",
            &[("peer", &peers[0]), ("result", "fallback")],
        )
        .await;
    assert_eq!(fell_back, owned_by_broken.len() as f64);
}

/// The POP's DNS name in [`NameService`].
const POP_NAME: &str = "pop.imgedge.test";

/// A private name service for the nodes of a test: each node runs in its own mount namespace
/// (`unshare`, no root needed) where `/etc/hosts` is this test's file and `nsswitch.conf` says
/// `hosts: files`, so the binary's real resolver (`getaddrinfo`) answers `POP_NAME` with what
/// the test writes, and a name taken out of the file fails at once. Rewriting the file in place
/// is a DNS change the running nodes see at their next resolution; nothing outside changes.
struct NameService {
    dir: tempfile::TempDir,
}

impl NameService {
    fn new() -> NameService {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nsswitch.conf"), "hosts: files\n").unwrap();
        let ns = NameService { dir };
        ns.set(&[]);
        ns
    }

    /// `POP_NAME` now resolves to `addrs` (none: the name does not resolve).
    fn set(&self, addrs: &[&str]) {
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for a in addrs {
            hosts.push_str(&format!("{a} {POP_NAME}\n"));
        }
        // In place (one write on the same inode): the bind mounts see the new contents.
        std::fs::write(self.dir.path().join("hosts"), hosts).unwrap();
    }

    /// The command that runs a binary under this name service.
    fn wrapper(&self) -> Vec<String> {
        let file = |name: &str| self.dir.path().join(name).display().to_string();
        vec![
            "unshare".into(),
            "-rm".into(),
            "sh".into(),
            "-c".into(),
            r#"mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/nsswitch.conf && shift 2 && exec "$@""#.into(),
            "imgedge-ns".into(),
            file("hosts"),
            file("nsswitch.conf"),
        ]
    }
}

/// A port free on both 127.0.0.1 and ::1 (the two nodes share it, as DNS gives one port).
fn port_on_both_loopbacks() -> u16 {
    loop {
        let port = free_port();
        if std::net::TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
}

/// The addresses on the node's ring, sorted.
async fn ring_nodes(node: &Imgedge) -> Vec<String> {
    let ring = membership(node, None).await;
    let mut nodes: Vec<String> = ring["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node"].as_str().unwrap().to_string())
        .collect();
    nodes.sort();
    nodes
}

async fn all_healthy(node: &Imgedge, want: &[String]) -> bool {
    let ring = membership(node, None).await;
    let members = ring["members"].as_array().unwrap();
    ring_nodes(node).await == want && members.iter().all(|m| m["healthy"] == true)
}

/// Membership from a DNS name (`cluster.peers_dns`), through the real resolver: two nodes on
/// 127.0.0.1:P and [::1]:P behind one name. A node is on its own ring before its record exists;
/// a record added or removed at run time joins or leaves the ring of the running nodes; one
/// variant then costs one S3 GET and one resize in the POP; a name that stops resolving keeps
/// the last membership (counted); purges go to the current members only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_from_dns_follow_the_name_at_run_time() {
    let s3 = s3_with_samples().await;
    let ns = NameService::new();
    let port = port_on_both_loopbacks();
    let (a, b) = (format!("127.0.0.1:{port}"), format!("[::1]:{port}"));
    let config = |me: &str| {
        format!(
            "admin:\n  purge_token: {TOKEN}\ncluster:\n  listen: \"{me}\"\n  peers_dns: {POP_NAME}:{port}\n  dns_interval: 100ms\n  secret: {SECRET}\n  health_check_interval: 100ms\n  connect_timeout: 300ms\n"
        )
    };
    let start = |me: String| {
        let (wrapper, s3) = (ns.wrapper(), &s3);
        let extra = config(&me);
        async move { Imgedge::start_wrapped(&wrapper, &s3_config(s3, SECRET_KEY), &extra).await }
    };

    // Only A's record exists: A is alone; B, not listed yet, is on its own ring with A.
    ns.set(&["127.0.0.1"]);
    let na = start(a.clone()).await;
    assert_eq!(ring_nodes(&na).await, [a.as_str()]);
    let mut nb = start(b.clone()).await;
    let both = {
        let mut v = vec![a.clone(), b.clone()];
        v.sort();
        v
    };
    assert_eq!(ring_nodes(&nb).await, both, "B is on its own ring");
    let ring = membership(&na, None).await;
    assert_eq!(ring["discovery"], "cluster.peers_dns");
    assert_eq!(ring["peers_dns"], format!("{POP_NAME}:{port}"));

    // B's record is registered: A's running ring takes it in.
    let changes = na
        .metric("imgedge_cluster_membership_changes_total", &[])
        .await;
    ns.set(&["127.0.0.1", "::1"]);
    for n in [&na, &nb] {
        eventually("both nodes on both rings, healthy", || {
            all_healthy(n, &both)
        })
        .await;
    }
    assert!(
        na.metric("imgedge_cluster_membership_changes_total", &[])
            .await
            > changes
    );
    assert_eq!(na.metric("imgedge_cluster_members", &[]).await, 2.0);
    let home = membership(&na, Some(KITE)).await["home"].clone();
    assert_eq!(membership(&nb, Some(KITE)).await["home"], home);

    // One variant through both nodes, concurrently: one S3 GET and one resize in the POP.
    let url = format!("/image/{KITE}?size=300x200");
    let results = join_all((0..20).map(|i| {
        let node = if i % 2 == 0 { &na } else { &nb };
        let url = url.clone();
        async move {
            let r = node.get(&url).await;
            (r.status().as_u16(), r.bytes().await.unwrap())
        }
    }))
    .await;
    assert!(results.iter().all(|(s, _)| *s == 200));
    assert!(results.windows(2).all(|w| w[0].1 == w[1].1));
    assert_eq!(s3.gets(KITE), 1, "one S3 GET in the POP");
    assert_eq!(
        na.transforms().await + nb.transforms().await,
        1.0,
        "one resize in the POP"
    );

    // The name stops resolving: both keep the last membership, and count the failures.
    let errors_before = na
        .metric(
            "imgedge_cluster_dns_resolutions_total",
            &[("result", "error")],
        )
        .await;
    ns.set(&[]);
    na.wait_metric(
        "imgedge_cluster_dns_resolutions_total",
        &[("result", "error")],
        errors_before + 2.0,
    )
    .await;
    nb.wait_metric(
        "imgedge_cluster_dns_resolutions_total",
        &[("result", "error")],
        2.0,
    )
    .await;
    assert_eq!(ring_nodes(&na).await, both, "A kept the last membership");
    assert_eq!(ring_nodes(&nb).await, both, "B kept the last membership");
    let url = format!("/image/{ASTRO}?size=64x");
    for n in [&na, &nb, &na, &nb] {
        assert_eq!(n.get(&url).await.status(), 200);
    }
    assert_eq!(s3.gets(ASTRO), 1, "still one cache while DNS is down");

    // Scale-in: B goes and its record with it; A's ring shrinks to itself, and a purge
    // through A goes to the current members only.
    nb.kill();
    ns.set(&["127.0.0.1"]);
    eventually("B left A's ring", || async {
        ring_nodes(&na).await == [a.as_str()]
    })
    .await;
    let r = na
        .client
        .post(format!("{}/purge/image/{KITE}", na.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["all_confirmed"], true, "{answer}");
    let nodes = answer["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{answer}");
    assert_eq!(nodes[0]["node"], a.as_str());
}
