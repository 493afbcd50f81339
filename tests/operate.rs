//! Operating imgedge (issue 12) through the real binary: secrets from the environment and files
//! instead of the YAML (and what `imgedge check` says of them), PROXY protocol v1/v2 on plain and
//! TLS listeners (the client address reaches the access log and the miss budget; connections
//! without a header are closed; a forged header on a listener without the option is refused),
//! and the operator metrics (process, build info, certificate expiry).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{
    dev_certs, eventually, free_port, read, Imgedge, S3Server, BUCKET, KEY_TEMPLATE, SECRET_KEY,
};

const ID: &str = "3972b16287e5.jpg";

async fn s3_with_kite() -> S3Server {
    let s3 = S3Server::start().await;
    s3.put(ID, &read("kite.jpg"));
    s3
}

/// Send raw bytes, then read the whole answer (the request asks to close); the status line.
fn raw_exchange(stream: &mut (impl Read + Write), prefix: &[u8], request: &str) -> String {
    stream.write_all(prefix).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.lines().next().unwrap_or("").to_string()
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: images.test\r\nConnection: close\r\n\r\n")
}

fn v1(client: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 {port} 80\r\n").into_bytes()
}

fn v2(client: SocketAddr) -> Vec<u8> {
    let dst: SocketAddr = "127.0.0.1:443".parse().unwrap();
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (client, dst),
    )
    .build()
    .unwrap()
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// A TLS connection (dev CA, name `localhost`) whose TCP stream first carries `prefix`.
fn tls_exchange(certs: &Path, port: u16, prefix: &[u8], request: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(certs.join("dev-ca.pem")).unwrap();
    roots
        .add(rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = connect(&format!("127.0.0.1:{port}"));
    tcp.write_all(prefix).unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    raw_exchange(&mut tls, b"", request)
}

/// True when the server closed the connection without answering (EOF or reset, not a timeout).
fn closed_without_answer(stream: &mut TcpStream, send: &[u8]) -> bool {
    let _ = stream.write_all(send);
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_the_environment_and_files_and_check_names_their_source() {
    let s3 = s3_with_kite().await;
    let secrets = tempfile::tempdir().unwrap();
    let signing_key = "k".repeat(40);
    let token = "t0ken-from-the-environment-1234";
    let env_token = format!("IMGEDGE_TEST_PURGE_TOKEN_{}", std::process::id());
    let env_key_id = format!("IMGEDGE_TEST_S3_KEY_ID_{}", std::process::id());
    // The child inherits the test process's environment; the names are unique to this test.
    std::env::set_var(&env_token, token);
    std::env::set_var(&env_key_id, common::ACCESS_KEY);
    let key_file = secrets.path().join("signing_key");
    std::fs::write(&key_file, format!("{signing_key}\n")).unwrap();
    let s3_secret_file = secrets.path().join("s3_secret");
    std::fs::write(&s3_secret_file, SECRET_KEY).unwrap();

    // S3 keys from env + file: the S3 server verifies SigV4, so a served image proves them.
    let origin = format!(
        "origin:\n  source: s3\n  key_template: \"{KEY_TEMPLATE}\"\n  fetch_timeout: 3s\n  s3:\n    bucket: {BUCKET}\n    region: us-east-1\n    endpoint: http://{}\n    force_path_style: true\n    access_key_id: {{env: {env_key_id}}}\n    secret_access_key: {{file: {}}}\n    checksums: when_required\n    max_attempts: 2\n",
        s3.addr,
        s3_secret_file.display()
    );
    let node = Imgedge::start_with(
        &origin,
        &format!(
            "admin:\n  purge_token: {{env: {env_token}}}\npolicy:\n  signing_keys:\n    - {{file: {}}}\n",
            key_file.display()
        ),
    )
    .await;

    // Signed URLs verify with the key from the file (`imgedge sign` reads the same config).
    let path = format!("/image/{ID}?size=100x100");
    assert_eq!(node.get(&path).await.status(), 403, "unsigned URL accepted");
    let signed = Command::new(env!("CARGO_BIN_EXE_imgedge"))
        .args(["sign", "-c"])
        .arg(node.config_path())
        .arg(&path)
        .output()
        .unwrap();
    assert!(signed.status.success(), "{signed:?}");
    let signed = String::from_utf8(signed.stdout).unwrap();
    let r = node.get(signed.trim()).await;
    assert_eq!(r.status(), 200, "signed URL with the file key");
    assert_eq!(s3.gets(ID), 1, "the S3 keys from env/file signed the GET");

    // The purge token from the environment.
    let purge = |bearer: &str| {
        node.client
            .post(format!("{}/purge/image/{ID}", node.admin))
            .bearer_auth(bearer)
            .send()
    };
    assert_eq!(
        purge("wrong-token-wrong-token").await.unwrap().status(),
        401
    );
    assert_eq!(purge(token).await.unwrap().status(), 200);

    // `imgedge check` says where each came from and never prints a value.
    let out = Command::new(env!("CARGO_BIN_EXE_imgedge"))
        .args(["check", "-c"])
        .arg(node.config_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "admin.purge_token: from environment variable {env_token}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "policy.signing_keys[0]: from file {}",
            key_file.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("origin.s3.secret_access_key: from file"),
        "{text}"
    );
    for secret in [token, signing_key.as_str(), SECRET_KEY] {
        assert!(!text.contains(secret), "check printed a secret");
    }

    // A variable that is not set fails the check, naming the key.
    std::env::remove_var(&env_token);
    let out = Command::new(env!("CARGO_BIN_EXE_imgedge"))
        .args(["check", "-c"])
        .arg(node.config_path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("admin.purge_token"), "{err}");
    assert!(err.contains(&format!("{env_token} is not set")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_gives_the_client_address_on_plain_and_tls_listeners() {
    let s3 = s3_with_kite().await;
    let certs = dev_certs();
    let d = certs.path().display();
    let tls_port = free_port();
    let log = certs.path().join("access.log");
    let node = Imgedge::start(
        &s3,
        &format!(
            "edge:\n  proxy_protocol: true\n  header_timeout: 2s\n  access_log:\n    format: json\n    path: {}\n  tls:\n    listen: [\"127.0.0.1:{tls_port}\"]\n    certificates:\n      - cert: {d}/dev.pem\n        key: {d}/dev.key\npolicy:\n  misses_per_ip: 1\n",
            log.display()
        ),
    )
    .await;
    let plain = node.base.trim_start_matches("http://").to_string();

    // v1 on the plain listener: served, and the budget (1 miss a second) is the proxied
    // client's: a burst of misses from one client meets 429 (a burst, since the window is a
    // fixed second that may turn between two requests).
    let mut headers_sent = 0;
    let mut statuses = Vec::new();
    for i in 0..5 {
        headers_sent += 1;
        statuses.push(raw_exchange(
            &mut connect(&plain),
            &v1("203.0.113.7", 40001 + i),
            &get_request(&format!("/image/{ID}?size={}x50", 50 + i)),
        ));
    }
    assert!(statuses[0].contains(" 200 "), "{statuses:?}");
    assert!(
        statuses.iter().any(|s| s.contains(" 429 ")),
        "one proxied client, five misses in a burst: {statuses:?}"
    );
    // Another client behind the same balancer (same TCP peer) has its own budget.
    headers_sent += 1;
    let b = raw_exchange(
        &mut connect(&plain),
        &v1("198.51.100.20", 40003),
        &get_request(&format!("/image/{ID}?size=52x52")),
    );
    assert!(b.contains(" 200 "), "{b}");

    // v2 before the TLS handshake.
    headers_sent += 1;
    let c = tls_exchange(
        certs.path(),
        tls_port,
        &v2("192.0.2.44:5000".parse().unwrap()),
        &get_request(&format!("/image/{ID}?size=53x53")),
    );
    assert!(c.contains(" 200 "), "{c}");

    // The access log has the proxied addresses, not 127.0.0.1.
    eventually("an access-log line per request", || {
        let n = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("/image/"))
            .count();
        async move { n >= headers_sent }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    for client in ["203.0.113.7", "198.51.100.20", "192.0.2.44"] {
        assert!(
            text.contains(&format!("\"client\":\"{client}\"")),
            "{client} not logged:\n{text}"
        );
    }
    assert!(!text.contains("\"client\":\"127.0.0.1\""), "{text}");

    // No header: closed without an answer, on both listeners; so is a malformed one.
    assert!(closed_without_answer(
        &mut connect(&plain),
        get_request("/healthz").as_bytes()
    ));
    assert!(closed_without_answer(
        &mut connect(&plain),
        b"PROXY TCP4 not-an-address 127.0.0.1 1 80\r\nGET / HTTP/1.1\r\n\r\n"
    ));
    let mut tls_plain = connect(&format!("127.0.0.1:{tls_port}"));
    assert!(closed_without_answer(
        &mut tls_plain,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x00\x01\x02\x03\x04\x05\x06"
    ));
    // Silence: closed once edge.header_timeout (2 s) passes, well before the client's 10 s.
    let mut silent = connect(&plain);
    assert!(closed_without_answer(&mut silent, b""));

    // The connection counts are in the metrics.
    let m = node
        .metrics_text_with("imgedge_proxy_protocol_headers_total{result=\"missing\"}")
        .await;
    assert!(
        m.contains(&format!(
            "imgedge_proxy_protocol_headers_total{{result=\"ok\"}} {headers_sent}"
        )),
        "{m}"
    );

    // Operator metrics: the process collector, build info, and the certificate's expiry
    // (make-dev-cert.sh issues 30-day certificates).
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(m.contains(&format!("\n{name} ")), "{name} missing");
    }
    assert!(
        m.contains(&format!(
            "imgedge_build_info{{allocator=\"jemalloc\",tls=\"rustls-ring\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{m}"
    );
    let expiry: f64 = m
        .lines()
        .find(|l| {
            l.starts_with("imgedge_tls_certificate_expiry_seconds{certificate=\"0\"")
                && l.contains("localhost")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no expiry gauge:\n{m}"));
    let day = 86400.0;
    assert!(
        (29.0 * day..=30.0 * day).contains(&expiry),
        "expiry {expiry} s for a 30-day certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_proxy_header_is_not_trusted_when_the_option_is_off() {
    let s3 = s3_with_kite().await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let node = Imgedge::start(
        &s3,
        &format!(
            "edge:\n  access_log:\n    format: json\n    path: {}\n",
            log.display()
        ),
    )
    .await;
    let plain = node.base.trim_start_matches("http://").to_string();
    let status = raw_exchange(
        &mut connect(&plain),
        &v1("203.0.113.99", 40001),
        &get_request(&format!("/image/{ID}?size=50x50")),
    );
    assert!(status.contains(" 400 "), "forged header: {status}");
    // A normal request still works and is logged with the real peer.
    assert_eq!(
        node.get(&format!("/image/{ID}?size=50x50")).await.status(),
        200
    );
    eventually("an access-log line", || {
        let ok = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("/image/");
        async move { ok }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("203.0.113.99"),
        "forged address trusted:\n{text}"
    );
    assert_eq!(s3.gets(ID), 1);
}
