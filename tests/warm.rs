//! `imgedge warm` end to end: the real binary reads a log and warms a real node (the real
//! binary again, backed by the S3-protocol test server); then the node must serve those
//! variants as hits without touching S3.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

const KITE: &str = "3972b16287e5kite.jpg";
const ASTRO: &str = "81fe02aa9c01astro.png";

async fn node() -> (S3Server, Imgedge) {
    let s3 = S3Server::start().await;
    s3.put(KITE, &read("kite.jpg"));
    s3.put(ASTRO, &read("astronaut.png"));
    let node = Imgedge::start(&s3, "").await;
    (s3, node)
}

/// Run `imgedge warm ARGS` with `stdin` as its input, off the test's runtime.
async fn warm(args: Vec<String>, stdin: Option<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(bin())
            .arg("warm")
            .args(&args)
            .env("IMGEDGE_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn imgedge warm");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let Output {
            status,
            stdout,
            stderr,
        } = child.wait_with_output().unwrap();
        (
            status.code().unwrap_or(-1),
            String::from_utf8_lossy(&stdout).into_owned(),
            String::from_utf8_lossy(&stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(node: &Imgedge, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--target".into(),
        node.base.clone(),
        "--admin".into(),
        node.admin.clone(),
        "--rate".into(),
        "0".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Every supported format, noisy duplicates, and lines that must be counted as bad or skipped.
fn mixed_log() -> String {
    let k = KITE;
    let a = ASTRO;
    [
        // nginx combined: one variant, written four ways (order, defaults, utm noise, dpr).
        format!(r#"203.0.113.9 - - [22/Nov/2026:05:54:11 +0000] "GET /image/{k}?size=300x200&utm_source=mail HTTP/1.1" 200 18234 "https://shop.example/" "Mozilla/5.0 (iPhone)""#),
        format!(r#"203.0.113.10 - - [22/Nov/2026:05:54:12 +0000] "GET /image/{k}?q=80&size=300x200 HTTP/1.1" 200 18234 "-" "Mozilla/5.0 (X11; Linux)""#),
        format!(r#"203.0.113.11 - - [22/Nov/2026:05:54:13 +0000] "HEAD /image/{k}?fit=cover&size=150x100&dpr=2&cb=123 HTTP/2.0" 200 0 "-" "curl/8""#),
        // imgedge's own access line, URL-encoded id.
        r#"2026-11-22T05:54:14.000001Z  INFO access: method=GET uri=/image/3972b16287e5kite%2Ejpg?size=300x200 status=200 cache="HIT" ms=0.1"#.to_string(),
        // CloudFront: path and query in separate fields.
        format!("2026-11-22\t05:54:15\tFRA56-C1\t9000\t198.51.100.7\tGET\td1.cloudfront.net\t/image/{a}\t200\t-\tMozilla/5.0\tsize=64x64&format=png\t-\tMiss\tid==\timg.example.com\thttps\t300\t0.01"),
        format!("2026-11-22\t05:54:16\tFRA56-C1\t9000\t198.51.100.8\tGET\td1.cloudfront.net\t/image/{a}\t200\t-\tMozilla/5.0\tformat=png&size=64x64&utm_medium=x\t-\tHit\tid==\timg.example.com\thttps\t300\t0.01"),
        // ALB: the full URL in the request field.
        format!(r#"https 2026-11-22T05:54:17.349371Z app/lb/50dc 192.0.2.1:2817 10.0.0.1:80 0.000 0.001 0.000 200 200 34 366 "GET https://img.example.com:443/image/{k}?size=100x HTTP/1.1" "Mozilla/5.0" ECDHE-RSA-AES128-GCM-SHA256 TLSv1.2 arn "Root=1-5" "img.example.com" "-" 0 2026-11-22T05:54:17.348000Z "forward" "-" "-" "10.0.0.1:80" "200" "-" "-""#),
        // One URL per line.
        format!("http://img.example.com/image/{k}?size=100x&fit=fill"),
        format!("/image/{k}?size=100x"),
        // Bad: no format, a URL the server would refuse, a truncated request field.
        "this is not a log line".to_string(),
        format!("/image/{k}?size=0x0"),
        r#"1.2.3.4 - - [22/Nov/2026:05:54:18 +0000] "GET" 400 0 "-" "-""#.to_string(),
        // Skipped: not an image, an error in the log, a POST.
        r#"1.2.3.4 - - [22/Nov/2026:05:54:19 +0000] "GET /favicon.ico HTTP/1.1" 404 0 "-" "-""#.to_string(),
        r#"1.2.3.4 - - [22/Nov/2026:05:54:19 +0000] "GET /image/gone.jpg?size=1x HTTP/1.1" 404 0 "-" "-""#.to_string(),
        format!(r#"1.2.3.4 - - [22/Nov/2026:05:54:19 +0000] "POST /image/{k} HTTP/1.1" 405 0 "-" "-""#),
    ]
    .join("\n")
        + "\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_dedups_a_mixed_log_and_leaves_hits() {
    let (s3, node) = node().await;
    let log = node.dir.path().join("access.log");
    std::fs::write(&log, mixed_log()).unwrap();

    let (code, out, err) = warm(args(&node, &[log.to_str().unwrap()]), None).await;
    assert_eq!(code, 0, "{out}\n{err}");
    for want in [
        "lines:              15 (9 image requests, 3 skipped, bad lines: 3)",
        "distinct variants:  3",
        "requests sent:      3",
        "hits: 0, misses: 3",
        "errors:             0",
        "hit ratio before:   n/a (no lookups yet)",
        "hit ratio after:    0.0% (0 of 3 lookups)",
    ] {
        assert!(out.contains(want), "want {want:?} in\n{out}");
    }
    // One origin request per canonical variant, however often and however written.
    assert_eq!(node.origin_requests().await, 3.0);
    // Two of them are sizes of one image: its original is fetched once (source cache).
    assert_eq!(s3.total_gets(), 2);

    // Every way the log wrote them is now a hit, and S3 is not asked again.
    for q in [
        format!("/image/{KITE}?size=300x200&utm_source=other"),
        format!("/image/{KITE}?size=150x100&dpr=2"),
        format!("/image/{KITE}?size=100x&fit=cover"),
        format!("/image/{ASTRO}?size=64x64&format=png"),
    ] {
        let r = node.get(&q).await;
        assert_eq!(r.status(), 200, "{q}");
        assert_eq!(x_cache(&r), "HIT", "{q}");
    }
    assert_eq!(s3.total_gets(), 2);

    // Warming a warm node: all hits, and the ratio it reports has moved.
    let (code, out, _) = warm(args(&node, &[log.to_str().unwrap()]), None).await;
    assert_eq!(code, 0);
    assert!(out.contains("hits: 3, misses: 0"), "{out}");
    assert!(
        out.contains("hit ratio after:    70.0% (7 of 10 lookups)"),
        "{out}"
    );
    assert_eq!(node.origin_requests().await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_objects_warms_the_most_requested_from_stdin() {
    let (_s3, node) = node().await;
    // C is seen first but asked for least; A most.
    let (a, b, c) = (
        format!("/image/{KITE}?size=101x"),
        format!("/image/{KITE}?size=102x"),
        format!("/image/{KITE}?size=103x"),
    );
    let mut lines = vec![c.clone()];
    for i in 0..5 {
        lines.push(format!("{a}&utm_campaign={i}"));
        if i < 3 {
            lines.push(format!("{b}&cb={i}"));
        }
    }
    let (code, out, err) = warm(
        args(&node, &["--max-objects", "2", "--concurrency", "1", "-"]),
        Some(lines.join("\n")),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("budget reached"), "{out}");
    assert!(out.contains("distinct variants:  3"), "{out}");
    assert!(out.contains("requests sent:      2"), "{out}");
    assert_eq!(node.origin_requests().await, 2.0);
    assert_eq!(x_cache(&node.get(&a).await), "HIT");
    assert_eq!(x_cache(&node.get(&b).await), "HIT");
    assert_eq!(x_cache(&node.get(&c).await), "MISS");

    // A byte budget: one request at a time, so the first answer already exhausts one byte.
    let lines = [
        format!("/image/{KITE}?size=104x"),
        format!("/image/{KITE}?size=105x"),
        format!("/image/{KITE}?size=106x"),
    ];
    let (code, out, _) = warm(
        args(&node, &["--max-bytes", "1", "--concurrency", "1", "-"]),
        Some(lines.join("\n")),
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("budget reached"), "{out}");
    assert!(out.contains("requests sent:      1"), "{out}");
    assert_eq!(node.origin_requests().await, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_tails_a_growing_log_and_ctrl_c_prints_the_report() {
    let (_s3, node) = node().await;
    let log = node.dir.path().join("live.log");
    std::fs::write(&log, format!("/image/{KITE}?size=201x\n")).unwrap();
    let child = Command::new(bin())
        .arg("warm")
        .args(args(&node, &["--follow", log.to_str().unwrap()]))
        .env("IMGEDGE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the backlog to be warmed", || async {
        node.origin_requests().await == 1.0
    })
    .await;

    // New lines, one of them a new variant, appended while it runs; a partial line waits.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(f, "/image/{KITE}?size=201x&utm_source=again").unwrap();
    write!(f, "/image/{KITE}?size=202").unwrap();
    f.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    writeln!(f, "x").unwrap();
    eventually("the appended variant to be warmed", || async {
        node.origin_requests().await == 2.0
    })
    .await;
    assert_eq!(
        x_cache(&node.get(&format!("/image/{KITE}?size=202x")).await),
        "HIT"
    );

    // The shell's builtin kill: no procps needed on a fresh machine.
    let status = Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(text.contains("interrupted (Ctrl-C)"), "{text}");
    assert!(text.contains("distinct variants:  2"), "{text}");
    assert!(text.contains("misses: 2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_are_refused_naming_the_option() {
    let (code, _, err) = warm(
        vec!["--target".into(), "node-b:8080".into(), "-".into()],
        Some(String::new()),
    )
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("--target"), "{err}");
    let (code, _, err) = warm(
        vec![
            "--target".into(),
            "http://127.0.0.1:1".into(),
            "/nonexistent.log".into(),
        ],
        None,
    )
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent.log"), "{err}");
}

/// Issue 13 item 3: the shipped binary's `warm` speaks HTTPS. The binary the tests run is built
/// with the same reqwest features as a release (reqwest is not a dev-dependency:
/// `tests/deps.rs` checks the two feature sets agree), so this proves the release build's TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_reaches_an_https_target_trusting_the_given_ca() {
    let s3 = S3Server::start().await;
    s3.put(KITE, &read("kite.jpg"));
    let certs = dev_certs();
    let d = certs.path().display();
    let port = free_port();
    let node = Imgedge::start(
        &s3,
        &format!(
            "edge:\n  tls:\n    listen: [\"127.0.0.1:{port}\"]\n    certificates:\n      - cert: {d}/dev.pem\n        key: {d}/dev.key\n"
        ),
    )
    .await;
    let target = format!("https://127.0.0.1:{port}");
    let ca = certs.path().join("dev-ca.pem");
    let line = format!("/image/{KITE}?size=111x\n");
    let https = |extra: &[&str]| {
        let mut a: Vec<String> = vec![
            "--target".into(),
            target.clone(),
            "--rate".into(),
            "0".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push("-".into());
        a
    };

    // Without --ca the dev CA is not trusted: the handshake fails, counted as an error.
    let (code, out, err) = warm(https(&[]), Some(line.clone())).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("errors:             1"), "{out}");
    assert_eq!(node.origin_requests().await, 0.0);

    // With it, the variant is warmed over TLS and is a hit afterwards.
    let (code, out, err) = warm(https(&["--ca", ca.to_str().unwrap()]), Some(line.clone())).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("hits: 0, misses: 1"), "{out}");
    assert!(out.contains("errors:             0"), "{out}");
    assert_eq!(node.origin_requests().await, 1.0);
    assert_eq!(
        x_cache(&node.get(&format!("/image/{KITE}?size=111x")).await),
        "HIT"
    );

    // An unreadable CA file is a usage error naming the file.
    let (code, _, err) = warm(https(&["--ca", "/nonexistent/ca.pem"]), Some(line)).await;
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}
