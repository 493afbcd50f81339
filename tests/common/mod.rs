//! Test harness: a real S3-protocol server (s3s + s3s-fs, SigV4-verifying) on loopback, and the
//! real `imgedge` binary started against it with a per-test config, ports and directories.
//!
//! The S3 server counts GetObject calls per key, which is how tests prove coalescing and that
//! hits never reach the origin. It answers a conditional GetObject (`If-None-Match`) as S3
//! does, 304 without a body while the object's ETag matches, and counts those answers. Two fault switches exist for what a real server will not do on
//! demand: a key containing `slow` answers after [`S3Server::set_delay`], and a key containing
//! `fail` answers 500.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use s3s::dto::{GetObjectInput, GetObjectOutput};
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};

pub const BUCKET: &str = "originals";
pub const ACCESS_KEY: &str = "imgedge-test";
pub const SECRET_KEY: &str = "imgedge-test-secret";
/// The seeds' layout, used by every S3 test.
pub const KEY_TEMPLATE: &str = "{id:0:4}/{id:4:2}/{id}";

/// The `imgedge` binary under test: the one cargo built, or `IMGEDGE_TEST_BIN` when set (to
/// run a regression test against an older build and watch it fail).
pub fn bin() -> PathBuf {
    std::env::var_os("IMGEDGE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_imgedge")))
}

/// Path of a file in `tests/data` or `conf/samples`.
pub fn data(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let t = root.join("tests/data").join(name);
    if t.exists() {
        t
    } else {
        root.join("conf/samples").join(name)
    }
}

pub fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[derive(Default)]
struct Counters {
    gets: Mutex<HashMap<String, u64>>,
    not_modified: AtomicU64,
    delay_ms: AtomicU64,
    failing: Mutex<Vec<String>>,
    denied: Mutex<Vec<String>>,
}

struct CountingFs {
    inner: s3s_fs::FileSystem,
    counters: Arc<Counters>,
}

#[async_trait]
impl S3 for CountingFs {
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let key = req.input.key.clone();
        *self
            .counters
            .gets
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default() += 1;
        if key.contains("slow") {
            let ms = self.counters.delay_ms.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let failing = self.counters.failing.lock().unwrap().clone();
        if key.contains("fail") || failing.iter().any(|id| key.ends_with(&format!("/{id}"))) {
            return Err(s3_error!(InternalError, "injected failure"));
        }
        let denied = self.counters.denied.lock().unwrap().clone();
        if denied.iter().any(|id| key.ends_with(&format!("/{id}"))) {
            // What S3 answers for a missing key to a role without s3:ListBucket.
            return Err(s3_error!(AccessDenied, "Access Denied"));
        }
        // s3s-fs ignores If-None-Match; S3 answers 304 while the ETag matches.
        let condition = req.input.if_none_match.clone();
        let out = self.inner.get_object(req).await?;
        let unchanged = match (&condition, &out.output.e_tag) {
            (Some(c), Some(tag)) => c.is_any() || c.as_etag().is_some_and(|e| e.weak_cmp(tag)),
            _ => false,
        };
        if unchanged {
            self.counters.not_modified.fetch_add(1, Ordering::Relaxed);
            return Err(s3_error!(NotModified));
        }
        Ok(out)
    }

    async fn head_bucket(
        &self,
        req: S3Request<s3s::dto::HeadBucketInput>,
    ) -> S3Result<S3Response<s3s::dto::HeadBucketOutput>> {
        self.inner.head_bucket(req).await
    }

    // Writes and listings (purge records, results): served as stored, not counted as GETs.
    async fn put_object(
        &self,
        req: S3Request<s3s::dto::PutObjectInput>,
    ) -> S3Result<S3Response<s3s::dto::PutObjectOutput>> {
        self.inner.put_object(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<s3s::dto::ListObjectsV2Input>,
    ) -> S3Result<S3Response<s3s::dto::ListObjectsV2Output>> {
        self.inner.list_objects_v2(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<s3s::dto::DeleteObjectInput>,
    ) -> S3Result<S3Response<s3s::dto::DeleteObjectOutput>> {
        self.inner.delete_object(req).await
    }
}

/// An S3-protocol server on 127.0.0.1 serving a temp directory.
pub struct S3Server {
    pub addr: SocketAddr,
    /// The bucket [`S3Server::put`] stores originals in.
    pub bucket: String,
    root: tempfile::TempDir,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl S3Server {
    /// Start on the current tokio runtime, originals in [`BUCKET`].
    pub async fn start() -> S3Server {
        Self::start_with_bucket(BUCKET).await
    }

    /// Start on the current tokio runtime, originals in `bucket`.
    pub async fn start_with_bucket(bucket: &str) -> S3Server {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(bucket)).unwrap();
        let counters = Arc::new(Counters::default());
        let fs = CountingFs {
            inner: s3s_fs::FileSystem::new(root.path()).unwrap(),
            counters: counters.clone(),
        };
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
        b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = b.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        S3Server {
            addr,
            bucket: bucket.to_string(),
            root,
            counters,
            task,
        }
    }

    /// Store `bytes` as the original of `id` (laid out with [`KEY_TEMPLATE`]).
    pub fn put(&self, id: &str, bytes: &[u8]) {
        let key = format!(
            "{}/{}/{}",
            &id[..4.min(id.len())],
            &id[4.min(id.len())..6.min(id.len())],
            id
        );
        let path = self.root.path().join(&self.bucket).join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// Create another (empty) bucket.
    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.root.path().join(bucket)).unwrap();
    }

    /// The file holding object `key` of `bucket` (tests age or restore objects through it).
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(key)
    }

    /// Keys of the objects in `bucket`, sorted.
    pub fn objects(&self, bucket: &str) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else if let Ok(rel) = p.strip_prefix(base) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        let base = self.root.path().join(bucket);
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.sort();
        out
    }

    /// GetObject calls so far for the object of `id`.
    pub fn gets(&self, id: &str) -> u64 {
        let gets = self.counters.gets.lock().unwrap();
        gets.iter()
            .filter(|(k, _)| k.ends_with(&format!("/{id}")))
            .map(|(_, n)| n)
            .sum()
    }

    /// Conditional GetObject calls answered 304 Not Modified, all keys.
    pub fn not_modified(&self) -> u64 {
        self.counters.not_modified.load(Ordering::Relaxed)
    }

    /// GetObject calls so far, all keys.
    pub fn total_gets(&self) -> u64 {
        self.counters.gets.lock().unwrap().values().sum()
    }

    /// Make GetObject for `id` answer 500 (or work again).
    pub fn set_failing(&self, id: &str, failing: bool) {
        let mut f = self.counters.failing.lock().unwrap();
        f.retain(|x| x != id);
        if failing {
            f.push(id.to_string());
        }
    }

    /// Make GetObject for `id` answer 403 AccessDenied (as S3 does for a missing key when the
    /// role lacks `s3:ListBucket`), or stop.
    pub fn set_denied(&self, id: &str, denied: bool) {
        let mut d = self.counters.denied.lock().unwrap();
        d.retain(|x| x != id);
        if denied {
            d.push(id.to_string());
        }
    }

    /// How long keys containing `slow` take to answer.
    pub fn set_delay(&self, d: Duration) {
        self.counters
            .delay_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port for a child process to listen on. Not one the kernel handed out and took back
/// (binding port 0 and releasing it races with every outgoing connection of the parallel tests,
/// which draw from the same ephemeral range): ports come from a per-process sequence below the
/// ephemeral range (32768..), checked free by a bind. Another process may still take one before
/// the child binds it; [`Imgedge::start_with`] retries then.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    const LOW: u32 = 20000;
    const SPAN: u32 = 12000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The real binary, running with a generated config.
pub struct Imgedge {
    child: Child,
    pub base: String,
    pub admin: String,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

/// Config for an imgedge pointed at `s3`; `extra` is YAML merged in by section (it replaces the
/// named top-level sections' keys listed in it).
pub fn s3_config(s3: &S3Server, secret: &str) -> String {
    format!(
        "origin:\n  source: s3\n  key_template: \"{KEY_TEMPLATE}\"\n  fetch_timeout: 3s\n  s3:\n    bucket: {BUCKET}\n    region: us-east-1\n    endpoint: http://{}\n    force_path_style: true\n    access_key_id: {ACCESS_KEY}\n    secret_access_key: {secret}\n    checksums: when_required\n    max_attempts: 2\n    attempt_timeout: 2s\n",
        s3.addr
    )
}

/// Split the indented body of top-level `section:` out of `yaml` (so tests can add keys to a
/// section the harness writes itself).
fn take_section(yaml: &str, section: &str) -> (String, String) {
    let (mut body, mut rest, mut inside) = (String::new(), String::new(), false);
    for line in yaml.lines() {
        if line == format!("{section}:") {
            inside = true;
            continue;
        }
        if inside && !line.starts_with(' ') {
            inside = false;
        }
        let out = if inside { &mut body } else { &mut rest };
        out.push_str(line);
        out.push('\n');
    }
    (body, rest)
}

impl Imgedge {
    /// Start against `s3` with valid credentials and `extra` top-level YAML sections appended.
    pub async fn start(s3: &S3Server, extra: &str) -> Imgedge {
        Self::start_with(&s3_config(s3, SECRET_KEY), extra).await
    }

    /// Start with an origin section and extra sections. When the process exits before it is
    /// ready (a port taken between [`free_port`] and its bind), it is started again on new
    /// ports, up to three times.
    pub async fn start_with(origin_yaml: &str, extra: &str) -> Imgedge {
        Self::start_wrapped(&[], origin_yaml, extra).await
    }

    /// As [`Imgedge::start_with`], with the binary run by `wrapper` (a command and its
    /// arguments, the binary and its own arguments appended), e.g. in its own mount namespace.
    pub async fn start_wrapped(wrapper: &[String], origin_yaml: &str, extra: &str) -> Imgedge {
        for attempt in 1.. {
            match Self::try_start(wrapper, origin_yaml, extra).await {
                Ok(node) => return node,
                Err(status) if attempt < 3 => {
                    eprintln!("imgedge exited before ready ({status}); retrying on new ports")
                }
                Err(status) => panic!("imgedge exited before ready: {status}"),
            }
        }
        unreachable!()
    }

    async fn try_start(
        wrapper: &[String],
        origin_yaml: &str,
        extra: &str,
    ) -> Result<Imgedge, std::process::ExitStatus> {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let d = dir.path().display();
        let (admin_extra, extra) = take_section(extra, "admin");
        let (edge_extra, extra) = take_section(&extra, "edge");
        let extra = extra.as_str();
        let yaml = format!(
            "server:\n  threads: 2\n  grace_period: 1s\n  graceful_shutdown_timeout: 1s\n  pid_file: {d}/imgedge.pid\n  upgrade_sock: {d}/upgrade.sock\nedge:\n  listen: [\"127.0.0.1:{port}\"]\n{edge_extra}admin:\n  listen: 127.0.0.1:{admin_port}\n{admin_extra}{}{extra}",
            origin_yaml.replace("origin:\n", &format!("origin:\n  socket: {d}/origin.sock\n"))
        );
        let conf = dir.path().join("imgedge.yaml");
        std::fs::write(&conf, &yaml).unwrap();
        let mut command = match wrapper.split_first() {
            None => Command::new(bin()),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin());
                c
            }
        };
        let child = command
            .args(["serve", "-c"])
            .arg(&conf)
            .env(
                "IMGEDGE_LOG",
                "warn,pingora_cache::meta=error,pingora_core::apps::http_app=off",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn imgedge");
        let client = http_client();
        let mut node = Imgedge {
            child,
            base: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            dir,
            client,
        };
        node.wait_ready().await?;
        Ok(node)
    }

    async fn wait_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(status);
            }
            let admin = self
                .client
                .get(format!("{}/healthz", self.admin))
                .send()
                .await;
            // A TCP connect, not a request: with edge.proxy_protocol a bare request is refused.
            let edge =
                tokio::net::TcpStream::connect(self.base.trim_start_matches("http://")).await;
            if matches!(admin, Ok(ref r) if r.status() == 200) && edge.is_ok() {
                // Answered by this child, not by whoever else holds the port.
                return match self.child.try_wait() {
                    Ok(Some(status)) => Err(status),
                    _ => Ok(()),
                };
            }
            assert!(Instant::now() < deadline, "imgedge did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The config file the node runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("imgedge.yaml")
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }

    pub async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.client
            .get(self.url(path_and_query))
            .send()
            .await
            .unwrap()
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The metrics text once it contains `needle`. Requests are counted in Pingora's logging
    /// phase, after the response has gone out, so a client can read /metrics before its own
    /// last request is counted; wait (up to 5 s) instead of racing it.
    pub async fn metrics_text_with(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = self.metrics_text().await;
            if text.contains(needle) || std::time::Instant::now() > deadline {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Sum of the samples of one metric whose label set contains every `labels` pair.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Variants the origin has produced (all formats).
    pub async fn transforms(&self) -> f64 {
        self.metric("imgedge_transforms_total", &[]).await
    }

    /// Requests the origin service has answered.
    pub async fn origin_requests(&self) -> f64 {
        self.metric("imgedge_origin_requests_total", &[]).await
    }

    /// Graceful stop (SIGTERM), waiting for the process to exit.
    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.alive() {
            assert!(Instant::now() < deadline, "imgedge did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Hard kill (SIGKILL), as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait until `metric` (summed over `labels`) reaches `want`.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.metric(name, labels).await;
            if v >= want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} stuck at {v}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's process id (tests watch its memory in /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Imgedge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait for a condition (a liveness bound of 30 s, not a speed assertion).
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP client. reqwest has rustls (for [`tls_client`]) without a built-in crypto
/// provider, so ring is installed as the process default first, as the binary does.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Development certificates made by `certs/make-dev-cert.sh` (the script operators use) in a
/// temp dir: `dev.pem`/`dev.key` (localhost, 127.0.0.1), `alt.pem`/`alt.key`
/// (images.example.test, *.cdn.example.test), and the CA `dev-ca.pem`.
pub fn dev_certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/make-dev-cert.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(dir.path())
        .output()
        .expect("bash certs/make-dev-cert.sh");
    assert!(
        out.status.success(),
        "make-dev-cert.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// An HTTPS client trusting only the dev CA in `certs`, offering h2 and http/1.1 (or only
/// http/1.1), with `names` resolved to 127.0.0.1.
pub fn tls_client(certs: &Path, http1_only: bool, names: &[&str], port: u16) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(certs.join("dev-ca.pem")).unwrap();
    let ca = rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = if http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(tls);
    if http1_only {
        b = b.http1_only();
    }
    for n in names {
        b = b.resolve(n, SocketAddr::from(([127, 0, 0, 1], port)));
    }
    b.build().unwrap()
}

/// Header `name` of `r` as text, or "" without one.
pub fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The `X-Cache` header, or "" without one.
pub fn x_cache(r: &reqwest::Response) -> String {
    header(r, "x-cache")
}

/// Decode an image response body and return its dimensions and format.
pub fn dims(bytes: &[u8]) -> (u32, u32, image::ImageFormat) {
    let fmt = image::guess_format(bytes).expect("an image");
    let img = image::load_from_memory(bytes).expect("decodable");
    (img.width(), img.height(), fmt)
}
