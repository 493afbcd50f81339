//! The configuration: one YAML file, one struct, validated at start-up.
//!
//! Every key has a default (so an empty file, or no file at all, is the embedded demo: the sample
//! photos in `conf/samples` on 127.0.0.1:8080). Unknown keys are rejected, and every error names
//! the key it is about, e.g. `origin.s3.bucket: must be set when origin.source is s3`.
//! `conf/imgedge.yaml` documents every key with its default; keep the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::secret::Secret;
use crate::variant::{parse_box, parse_rgb, DefaultFormat, ParseOptions};

/// A configuration problem, always naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML does not match the schema (unknown key, wrong type).
    #[error("{key}: {message}")]
    Parse {
        /// Dotted path of the key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A certificate or key file named by the key is unusable.
    #[error("{key}: {message}")]
    Certificate {
        /// Dotted path of the key, e.g. `edge.tls.certificates[0].cert`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted path of the key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The process: threads, pid file, upgrade socket.
    pub server: ServerConfig,
    /// The public listener and its cache.
    pub edge: EdgeConfig,
    /// The admin listener.
    pub admin: AdminConfig,
    /// Where originals come from and how answers are labelled.
    pub origin: OriginConfig,
    /// Limits on sources and outputs.
    pub limits: LimitsConfig,
    /// The resize pool and encoder defaults.
    pub transform: TransformConfig,
    /// The cache.
    pub cache: CacheConfig,
    /// Mirroring a sample of live requests to another node (off by default).
    pub mirror: MirrorConfig,
    /// Signed URLs, size policy, miss rate limit.
    pub policy: PolicyConfig,
    /// The POP as one cache: ownership by image id, peer fill, purge everywhere (off by default).
    pub cluster: ClusterConfig,
}

/// Process-wide settings (mapped onto Pingora's `ServerConf`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Worker threads of the edge service (serving hits and proxying misses).
    pub threads: usize,
    /// Pid file; absolute path.
    pub pid_file: PathBuf,
    /// Socket the old process hands its listeners over on during a graceful upgrade; absolute.
    pub upgrade_sock: PathBuf,
    /// How long an old process keeps serving after SIGQUIT before it stops accepting.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// How long in-flight requests get to finish at shutdown.
    #[serde(with = "humantime_serde")]
    pub graceful_shutdown_timeout: Duration,
    /// Where standard error goes in daemon mode (`serve -d`); empty: discarded.
    pub error_log: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            threads: 2,
            pid_file: "/tmp/imgedge.pid".into(),
            upgrade_sock: "/tmp/imgedge_upgrade.sock".into(),
            grace_period: Duration::from_secs(30),
            graceful_shutdown_timeout: Duration::from_secs(10),
            error_log: PathBuf::new(),
        }
    }
}

/// The public listeners and how they treat clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Plain-HTTP addresses (may be empty when `edge.tls.listen` is set).
    pub listen: Vec<SocketAddr>,
    /// TLS listeners and their certificates.
    pub tls: TlsConfig,
    /// One line per request.
    pub access_log: AccessLogConfig,
    /// A client must send a whole request header within this long (slowloris guard).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this long.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Requests served on one connection before it is closed (0: no limit).
    pub keepalive_requests: u32,
    /// One write to a client may take at most this long (slow readers cannot hold a response).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Longest request target (path and query) accepted; longer → 414.
    pub max_uri_bytes: usize,
    /// Most bytes of request header fields accepted; more → 431.
    pub max_header_bytes: usize,
    /// Write buffer per client connection. A response whose header and body fit is sent in
    /// one write (one segment train) instead of two; larger bodies are written straight
    /// through. Pingora's default is 1460 bytes, which sends every header on its own.
    pub write_buffer: ByteSize,
    /// Every connection to `edge.listen` and `edge.tls.listen` opens with a PROXY protocol
    /// header (v1 or v2, as an AWS NLB sends): its source address is the client's. Connections
    /// without one are closed. Off: headers are not parsed (a forged one is a bad request).
    pub proxy_protocol: bool,
    /// Answer fresh memory hits on HTTP/1 connections before Pingora's per-request session
    /// (`edge::hit_loop`); off, every request takes Pingora's session.
    pub hit_loop: bool,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            tls: TlsConfig::default(),
            access_log: AccessLogConfig::default(),
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            keepalive_requests: 1000,
            write_timeout: Duration::from_secs(30),
            max_uri_bytes: 2048,
            max_header_bytes: 16 * 1024,
            write_buffer: ByteSize::kib(64),
            proxy_protocol: false,
            hit_loop: true,
        }
    }
}

/// TLS listeners. Certificates are chosen by SNI from the names in each certificate; the
/// first one also answers clients that send no name or an unknown one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// TLS addresses, e.g. `0.0.0.0:443`.
    pub listen: Vec<SocketAddr>,
    /// Certificate chains and keys (PEM).
    pub certificates: Vec<CertificateConfig>,
    /// Offer HTTP/2 over ALPN (HTTP/1.1 always stays available).
    pub h2: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            listen: Vec::new(),
            certificates: Vec::new(),
            h2: true,
        }
    }
}

/// One certificate chain and its private key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file: the leaf certificate first, then intermediates.
    pub cert: PathBuf,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Access-log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// NCSA combined, with imgedge's fields appended as `key=value`.
    Combined,
    /// No access log.
    Off,
}

/// The access log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// `json`, `combined` or `off`.
    pub format: AccessLogFormat,
    /// File appended to (absolute); empty writes to standard output.
    pub path: PathBuf,
    /// Lines waiting for the writer thread; when full, lines are dropped and counted.
    pub queue: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            format: AccessLogFormat::Json,
            path: PathBuf::new(),
            queue: 16384,
        }
    }
}

/// What requests are allowed: signed URLs, size policy and the miss rate limit.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// HMAC-SHA256 keys for signed URLs; the first signs, any verifies. Empty: URLs are not signed.
    /// Each may come from the environment or a file (see [`crate::secret`]).
    pub signing_keys: Vec<Secret>,
    /// Allowed output boxes (`WxH`, `Wx`, `xH`, in output pixels); empty allows any size.
    pub sizes: Vec<String>,
    /// Widths (and heights) requested sizes are rounded up to; empty keeps sizes as asked.
    pub size_ladder: Vec<u32>,
    /// With `sizes` or `size_ladder`: the qualities served (`q` snaps to the nearest); empty:
    /// `transform.default_quality` only.
    pub qualities: Vec<u8>,
    /// With `sizes` or `size_ladder`: the `fit=contain` padding colours (`RRGGBB`) served
    /// (others are refused); empty: `transform.background` only.
    pub backgrounds: Vec<String>,
    /// Misses one client IP may cause per second (hits are never counted); 0 = no limit.
    pub misses_per_ip: u32,
    /// Header holding the client IP as set by a trusted load balancer (its last entry is
    /// used), e.g. `x-forwarded-for`; empty uses the connection's address.
    pub client_ip_header: String,
}

/// The admin listener: health and metrics, never exposed publicly.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener.
    pub listen: SocketAddr,
    /// Bearer token for the purge endpoints; empty disables purging.
    pub purge_token: Secret,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            purge_token: Secret::default(),
        }
    }
}

/// Which kind of source holds the originals.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A directory on this machine.
    Local,
    /// An S3 bucket (or an S3-compatible store).
    S3,
}

/// The origin service: source of originals and response labelling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginConfig {
    /// Unix socket the edge reaches the origin service on; absolute path.
    pub socket: PathBuf,
    /// Worker threads of the origin service's own runtime (I/O only; resizing has its pool).
    pub threads: usize,
    /// `local` or `s3`.
    pub source: SourceKind,
    /// Maps an id to an object key: `{id}`, or slices of it as `{id:START:LEN}` (bytes).
    pub key_template: String,
    /// The local-directory source.
    pub local: LocalConfig,
    /// The S3 source.
    pub s3: S3Config,
    /// The shared result tier (`origin.results`): resized variants kept in S3 for every node.
    pub results: Option<ResultsConfig>,
    /// Longest a source fetch may take, retries included; past it the answer is 504.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// Source fetches in flight at most (their memory: this x `limits.max_source_bytes`); past
    /// it a miss is answered 503. Separate from the resize pool, so a slow source cannot fill
    /// the pool while its threads idle.
    pub max_fetches: usize,
    /// Bytes of recently fetched originals kept in memory by id, so new sizes of one image cost
    /// one source GET (in a cluster: one per POP, at the id's owner); 0 disables it.
    pub source_cache_bytes: ByteSize,
    /// Longest an original stays in the source cache (an original replaced at the source
    /// without a purge is picked up after this).
    #[serde(with = "humantime_serde")]
    pub source_cache_ttl: Duration,
    /// `Cache-Control` sent with successful images (browsers and the edge's own TTL).
    pub cache_control: String,
    /// How long a 404 (missing original) or 422 (bad original) is cached.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            socket: "/tmp/imgedge-origin.sock".into(),
            threads: 2,
            source: SourceKind::Local,
            key_template: "{id}".into(),
            local: LocalConfig::default(),
            s3: S3Config::default(),
            results: None,
            fetch_timeout: Duration::from_secs(10),
            max_fetches: 32,
            source_cache_bytes: ByteSize::mib(256),
            source_cache_ttl: Duration::from_secs(3600),
            cache_control: "public, max-age=31536000, immutable".into(),
            negative_ttl: Duration::from_secs(60),
        }
    }
}

/// The local-directory source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// Directory the object keys are relative to (relative paths are from the working directory).
    pub root: PathBuf,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            root: "conf/samples".into(),
        }
    }
}

/// When the S3 client adds or checks payload checksums.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumMode {
    /// Always (AWS default; some S3-compatible stores reject it).
    WhenSupported,
    /// Only when the operation demands it (for S3-compatible stores).
    WhenRequired,
}

/// The S3 source. Credentials come from the default AWS chain (env, profile, IMDS on EC2)
/// unless both static keys are set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Bucket holding the originals.
    pub bucket: String,
    /// Region; empty means the default chain's region.
    pub region: String,
    /// Custom endpoint for S3-compatible stores (e.g. `http://127.0.0.1:9000`); empty for AWS.
    pub endpoint: String,
    /// Path-style addressing (`endpoint/bucket/key`); needed by most S3-compatible stores.
    pub force_path_style: bool,
    /// Static access key id (optional; prefer the default chain or an instance role).
    pub access_key_id: Secret,
    /// Static secret key (optional).
    pub secret_access_key: Secret,
    /// Attempts per fetch, first try included, on throttling, 5xx and connection errors.
    pub max_attempts: u32,
    /// Connect timeout of one attempt.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout of one attempt, body included.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// Checksum behaviour; `when_required` for S3-compatible stores.
    pub checksums: ChecksumMode,
    /// Treat `403 AccessDenied` on GetObject as a missing original (404, negatively cached).
    /// S3 answers a missing key so when the role lacks `s3:ListBucket`; without this, every
    /// request for a missing id would reach S3 again (an uncached 502).
    pub access_denied_is_not_found: bool,
    /// A second bucket (usually another region) tried when this one misses, fails or is slow.
    pub fallback: Option<S3FallbackConfig>,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            region: String::new(),
            endpoint: String::new(),
            force_path_style: false,
            access_key_id: Secret::default(),
            secret_access_key: Secret::default(),
            max_attempts: 3,
            connect_timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(4),
            checksums: ChecksumMode::WhenSupported,
            access_denied_is_not_found: true,
            fallback: None,
        }
    }
}

/// `origin.s3.fallback`: the bucket tried when the primary answers NoSuchKey (or AccessDenied
/// taken as not found), 5xx/throttling after its retries, or does not answer within `after`.
/// Empty fields take the primary's value; the other S3 settings (timeouts, attempts,
/// checksums, path style) are the primary's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3FallbackConfig {
    /// Bucket holding the copies (required).
    pub bucket: String,
    /// Region; empty: the primary's.
    pub region: String,
    /// Endpoint; empty: the primary's.
    pub endpoint: String,
    /// Static access key id; empty (with the secret): the primary's credentials.
    pub access_key_id: Secret,
    /// Static secret key.
    pub secret_access_key: Secret,
    /// How long the primary may take before the fallback is asked; the rest of
    /// `origin.fetch_timeout` is the fallback's. Empty: half of `origin.fetch_timeout`.
    #[serde(with = "humantime_serde")]
    pub after: Option<Duration>,
}

impl S3FallbackConfig {
    /// The full S3 settings of the fallback bucket: the primary's, with this section's fields.
    pub fn resolve(&self, primary: &S3Config) -> S3Config {
        S3Config {
            bucket: self.bucket.clone(),
            fallback: None,
            ..overlay(
                primary,
                &self.region,
                &self.endpoint,
                &self.access_key_id,
                &self.secret_access_key,
            )
        }
    }

    /// The primary's share of `fetch_timeout`.
    pub fn primary_share(&self, fetch_timeout: Duration) -> Duration {
        self.after.unwrap_or(fetch_timeout / 2)
    }
}

/// `origin.results`: the shared result tier, a bucket of resized variants that every node
/// (and every POP) reads before fetching an original and resizing, and that a node writes
/// after producing a variant. Region, endpoint and credentials default to `origin.s3`'s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResultsConfig {
    /// Bucket for results (required).
    pub bucket: String,
    /// Key prefix, e.g. `v1/`: objects are `{prefix}{id}/!/{hash of the variant}`.
    pub prefix: String,
    /// Results waiting to be written; past it a new one is dropped (counted).
    pub queue: usize,
    /// Longest a lookup may take before the node renders the variant itself.
    #[serde(with = "humantime_serde")]
    pub lookup_timeout: Duration,
    /// Region; empty: `origin.s3.region`.
    pub region: String,
    /// Endpoint; empty: `origin.s3.endpoint`.
    pub endpoint: String,
    /// Static access key id; empty (with the secret): `origin.s3`'s credentials.
    pub access_key_id: Secret,
    /// Static secret key.
    pub secret_access_key: Secret,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        ResultsConfig {
            bucket: String::new(),
            prefix: "v1/".into(),
            queue: 256,
            lookup_timeout: Duration::from_secs(1),
            region: String::new(),
            endpoint: String::new(),
            access_key_id: Secret::default(),
            secret_access_key: Secret::default(),
        }
    }
}

impl ResultsConfig {
    /// The S3 settings of the results bucket: `origin.s3`'s, with this section's fields.
    pub fn resolve(&self, primary: &S3Config) -> S3Config {
        S3Config {
            bucket: self.bucket.clone(),
            fallback: None,
            access_denied_is_not_found: false,
            ..overlay(
                primary,
                &self.region,
                &self.endpoint,
                &self.access_key_id,
                &self.secret_access_key,
            )
        }
    }
}

/// `base` with the non-empty of region, endpoint and the static key pair put over it.
fn overlay(
    base: &S3Config,
    region: &str,
    endpoint: &str,
    key: &Secret,
    secret: &Secret,
) -> S3Config {
    let mut c = base.clone();
    if !region.is_empty() {
        c.region = region.to_string();
    }
    if !endpoint.is_empty() {
        c.endpoint = endpoint.to_string();
    }
    if !key.is_empty() {
        c.access_key_id = key.clone();
        c.secret_access_key = secret.clone();
    }
    c
}

/// Checks of a bucket section that names its own endpoint and keys (`origin.s3.fallback`,
/// `origin.results`).
fn validate_bucket_section(
    bucket: &str,
    endpoint: &str,
    key: &Secret,
    secret: &Secret,
    keys: [&'static str; 3],
) -> Result<(), ConfigError> {
    let [bucket_key, endpoint_key, secret_key] = keys;
    if bucket.is_empty() {
        return Err(invalid(bucket_key, "must be set"));
    }
    if !endpoint.is_empty() && !endpoint.starts_with("http://") && !endpoint.starts_with("https://")
    {
        return Err(invalid(endpoint_key, "must start with http:// or https://"));
    }
    if key.is_empty() != secret.is_empty() {
        return Err(invalid(
            secret_key,
            "access_key_id and secret_access_key must be set together",
        ));
    }
    Ok(())
}

/// Limits that keep hostile originals and greedy requests bounded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest requested box side, before and after `dpr`.
    pub max_dimension: u32,
    /// Largest original accepted, in bytes.
    pub max_source_bytes: ByteSize,
    /// Largest original accepted, in pixels (width x height from the header).
    pub max_source_pixels: u64,
    /// Most animation frames an original may have (counted before any is decoded).
    pub max_frames: u32,
    /// Most metadata (PNG text chunks, once inflated) an original may carry.
    pub max_metadata_bytes: ByteSize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_dimension: 4096,
            max_source_bytes: ByteSize::mib(32),
            max_source_pixels: 50_000_000,
            max_frames: 1000,
            max_metadata_bytes: ByteSize::mib(1),
        }
    }
}

/// The resize pool and encoder defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformConfig {
    /// Resize threads; one image per thread at a time. 0 means one per CPU.
    pub workers: usize,
    /// Fetched originals allowed to wait for a worker; past it the answer is 503. (Fetches in
    /// flight are bounded by `origin.max_fetches`.)
    pub queue: usize,
    /// `Retry-After` sent with a 503.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Quality when `q` is absent.
    pub default_quality: u8,
    /// Background that transparent pixels are flattened onto for JPEG output, as `RRGGBB`.
    pub background: String,
    /// Bytes of decoded originals kept so further sizes of a hot image skip the decode
    /// ("mezzanines"); 0 turns it off.
    pub mezzanine_bytes: ByteSize,
    /// JPEG → JPEG variants resized in the decoder's Y'CbCr planes (faster, mezzanines half
    /// the size; within ~40-49 dB of the RGB path). Off: through RGB, libvips' output sample
    /// for sample.
    pub planar_jpeg: bool,
    /// The format of a transform whose URL has no `format=`: `original` (the original's
    /// format, what v1 URLs meant) or `auto` (negotiated from `Accept`, as `format=auto`).
    pub default_format: DefaultFormatConfig,
    /// How an AVIF answer for a negotiated (`format=auto`) request is made: `deferred` answers
    /// a cold miss with the WebP of the same geometry (short `Cache-Control`, not cached) and
    /// encodes the AVIF in the background; `inline` makes the client wait for the AVIF.
    pub avif: AvifMode,
    /// Threads that encode AVIF, apart from `workers`, so AVIF encodes can never take the
    /// threads JPEG and WebP misses need. They run at a lower CPU priority (nice 10).
    pub avif_workers: usize,
    /// AVIF encodes allowed to wait for an AVIF thread (inline answers and deferred upgrades
    /// together). Full: a deferred upgrade is skipped (the WebP stays until a later request
    /// tries again) and an inline negotiated answer is the WebP; `format=avif` answers 503.
    pub avif_queue: usize,
    /// libaom's speed (libavif's 0..=10 scale: higher is faster and larger).
    pub avif_speed: u8,
    /// `Cache-Control: max-age` of the WebP answered while its AVIF is being made.
    #[serde(with = "humantime_serde")]
    pub avif_interim_ttl: Duration,
}

/// `transform.default_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DefaultFormatConfig {
    /// The original's format.
    #[default]
    Original,
    /// Negotiated from `Accept`.
    Auto,
}

/// `transform.avif`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AvifMode {
    /// The client waits for the AVIF.
    Inline,
    /// WebP now, AVIF once the background encode lands.
    #[default]
    Deferred,
}

impl Default for TransformConfig {
    fn default() -> Self {
        TransformConfig {
            workers: 0,
            queue: 64,
            retry_after: Duration::from_secs(1),
            default_quality: 80,
            background: "ffffff".into(),
            mezzanine_bytes: ByteSize::mib(256),
            planar_jpeg: true,
            default_format: DefaultFormatConfig::Original,
            avif: AvifMode::Deferred,
            avif_workers: 1,
            avif_queue: 32,
            avif_speed: 8,
            avif_interim_ttl: Duration::from_secs(30),
        }
    }
}

impl TransformConfig {
    /// The number of resize threads, with 0 resolved to the CPU count.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        }
    }

    /// The background as RGB. Valid after [`Config::validate`].
    pub fn background_rgb(&self) -> [u8; 3] {
        parse_rgb(&self.background).unwrap_or([255, 255, 255])
    }
}

/// The cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Memory tier size, in bytes.
    pub memory_bytes: ByteSize,
    /// Largest object admitted to the cache; larger answers are served but not kept.
    pub max_object_bytes: ByteSize,
    /// How long a fill may hold the lock for its key before waiters give up on it.
    #[serde(with = "humantime_serde")]
    pub lock_age_timeout: Duration,
    /// How long a request waits for another request's fill before going to the origin itself.
    #[serde(with = "humantime_serde")]
    pub lock_wait_timeout: Duration,
    /// How long the edge waits for the origin service to answer one miss.
    #[serde(with = "humantime_serde")]
    pub origin_read_timeout: Duration,
    /// How long a stale object may be served while the origin fails.
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Duration,
    /// How long an expired object may be served while one background request refreshes it;
    /// zero turns stale-while-revalidate off.
    #[serde(with = "humantime_serde")]
    pub stale_while_revalidate: Duration,
    /// The persistent disk tier under the memory tier.
    pub disk: DiskConfig,
}

/// The disk tier: a directory bounded in bytes that survives restarts and upgrades.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskConfig {
    /// Directory of the tier (created if missing); empty keeps the cache in memory only.
    pub dir: PathBuf,
    /// Bytes the tier may hold on disk (files' contents).
    pub max_bytes: ByteSize,
    /// fsync each object before it becomes visible (crash safety on power loss, not just kill -9).
    pub fsync: bool,
    /// Disk writes allowed in flight; a fill that finds the queue full is kept in memory only.
    pub write_queue: usize,
    /// Disk reads allowed in flight (each a blocking thread); more wait their turn.
    pub read_concurrency: usize,
    /// How often the eviction state is saved (it is also saved at shutdown).
    #[serde(with = "humantime_serde")]
    pub save_interval: Duration,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            dir: PathBuf::new(),
            max_bytes: ByteSize::gib(10),
            fsync: true,
            write_queue: 256,
            read_concurrency: 64,
            save_interval: Duration::from_secs(60),
        }
    }
}

impl DiskConfig {
    /// Whether a disk tier is configured.
    pub fn enabled(&self) -> bool {
        !self.dir.as_os_str().is_empty()
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_bytes: ByteSize::mib(512),
            max_object_bytes: ByteSize::mib(16),
            lock_age_timeout: Duration::from_secs(30),
            lock_wait_timeout: Duration::from_secs(30),
            origin_read_timeout: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(86400),
            stale_while_revalidate: Duration::ZERO,
            disk: DiskConfig::default(),
        }
    }
}

/// Mirror mode: after each response, a sample of image requests is replayed (fire and forget)
/// to another node to warm it. See [`crate::mirror`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    /// Base URL of the node to warm (`http://host:port` or `https://host:port`, its edge
    /// listener); empty: off.
    pub target: String,
    /// PEM CA certificates trusted for an https:// target instead of the system's roots; empty:
    /// the system's roots.
    pub ca_file: PathBuf,
    /// Fraction of image requests mirrored, 0..=1.
    pub sample: f64,
    /// Requests waiting to be sent; when full, new ones are dropped (and counted).
    pub queue_len: usize,
    /// Timeout of one mirrored request, body included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Mirrored requests in flight at most.
    pub concurrency: usize,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            target: String::new(),
            ca_file: PathBuf::new(),
            sample: 1.0,
            queue_len: 1024,
            timeout: Duration::from_secs(10),
            concurrency: 4,
        }
    }
}

impl MirrorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.target;
        if !(t.is_empty() || t.starts_with("http://") || t.starts_with("https://")) {
            return Err(invalid(
                "mirror.target",
                "must be empty or an http:// or https:// URL",
            ));
        }
        if !self.ca_file.as_os_str().is_empty() && !self.ca_file.is_file() {
            return Err(invalid(
                "mirror.ca_file",
                format!("{}: not a readable file", self.ca_file.display()),
            ));
        }
        if !(0.0..=1.0).contains(&self.sample) {
            return Err(invalid("mirror.sample", "must be in 0..=1"));
        }
        if self.queue_len == 0 {
            return Err(invalid("mirror.queue_len", "must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(invalid("mirror.timeout", "must be positive"));
        }
        if self.concurrency == 0 {
            return Err(invalid("mirror.concurrency", "must be at least 1"));
        }
        Ok(())
    }
}

/// The POP as one cache (see [`crate::cluster`]): every node lists the same peers; each image id
/// has one owner on a Ketama ring, and a node that misses asks the owner over its peer listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The peer listener (node-to-node HTTP); `None` keeps the node alone (no cluster).
    pub listen: Option<SocketAddr>,
    /// This node's entry on the ring (the address the others reach its peer listener at);
    /// defaults to `listen`.
    #[serde(rename = "self")]
    pub self_addr: Option<SocketAddr>,
    /// Every node's peer listener, this one included; the same list on every node. Exactly one
    /// of `peers` and `peers_dns` is set.
    pub peers: Vec<SocketAddr>,
    /// `host:port`: a DNS name whose addresses are the POP's nodes (each at `port`), re-resolved
    /// every `dns_interval` (see [`crate::cluster::discovery`]).
    pub peers_dns: Option<String>,
    /// How often `peers_dns` is resolved again; one resolution may take this long at most.
    #[serde(with = "humantime_serde")]
    pub dns_interval: Duration,
    /// Shared secret authenticating node-to-node requests (at least 32 characters); inline or
    /// from the environment or a file (see [`crate::secret`]).
    pub secret: Secret,
    /// Connecting to an owner may take this long; past it the node fills the object itself.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often each peer's listener is probed (TCP connect); a failed probe marks it down.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// Longest a purge fan-out waits for one peer's confirmation.
    #[serde(with = "humantime_serde")]
    pub purge_timeout: Duration,
    /// Durable purge records in S3, read by every node at start and periodically (see
    /// [`crate::cluster::records`]); off while `bucket` is empty.
    pub purge_records: PurgeRecordsConfig,
}

/// `cluster.purge_records`: where purges are recorded for nodes that missed the fan-out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PurgeRecordsConfig {
    /// Bucket of the records (reached with `origin.s3`'s region, endpoint and credentials);
    /// empty: no records.
    pub bucket: String,
    /// Key prefix of the records.
    pub prefix: String,
    /// How often every node reads new records.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// At start, the listeners wait this long at most for the first read.
    #[serde(with = "humantime_serde")]
    pub startup_wait: Duration,
}

impl Default for PurgeRecordsConfig {
    fn default() -> Self {
        PurgeRecordsConfig {
            bucket: String::new(),
            prefix: "imgedge/purges/".into(),
            poll_interval: Duration::from_secs(10),
            startup_wait: Duration::from_secs(10),
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: None,
            self_addr: None,
            peers: Vec::new(),
            peers_dns: None,
            dns_interval: Duration::from_secs(10),
            secret: Secret::default(),
            connect_timeout: Duration::from_millis(500),
            health_check_interval: Duration::from_secs(1),
            purge_timeout: Duration::from_secs(5),
            purge_records: PurgeRecordsConfig::default(),
        }
    }
}

impl ClusterConfig {
    /// Whether this node is part of a cluster.
    pub fn enabled(&self) -> bool {
        self.listen.is_some()
    }

    /// This node's address on the ring. Valid after [`Config::validate`].
    pub fn me(&self) -> Option<SocketAddr> {
        self.self_addr.or(self.listen)
    }

    /// The port of `peers_dns` (`host:port`), when it has one.
    fn dns_port(&self) -> Option<u16> {
        let (host, port) = self.peers_dns.as_deref()?.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        (!host.is_empty() && !host.contains(':') && port != 0).then_some(port)
    }

    fn validate(&self, taken: &[SocketAddr], source: SourceKind) -> Result<(), ConfigError> {
        let r = &self.purge_records;
        if !r.bucket.is_empty() {
            if source != SourceKind::S3 {
                return Err(invalid(
                    "cluster.purge_records.bucket",
                    "needs origin.source: s3 (the records are reached with origin.s3's endpoint and credentials)",
                ));
            }
            if r.prefix.is_empty() || r.prefix.starts_with('/') {
                return Err(invalid(
                    "cluster.purge_records.prefix",
                    "must be a non-empty key prefix not starting with '/' (e.g. imgedge/purges/)",
                ));
            }
            if r.poll_interval.is_zero() {
                return Err(invalid(
                    "cluster.purge_records.poll_interval",
                    "must be positive",
                ));
            }
        }
        let Some(listen) = self.listen else {
            if !self.peers.is_empty()
                || self.peers_dns.is_some()
                || self.self_addr.is_some()
                || !self.secret.is_empty()
            {
                return Err(invalid(
                    "cluster.listen",
                    "must be set when cluster.peers, cluster.peers_dns, cluster.self or cluster.secret is",
                ));
            }
            return Ok(());
        };
        if taken.contains(&listen) {
            return Err(invalid(
                "cluster.listen",
                "must differ from every edge and admin address (the peer listener is never public)",
            ));
        }
        if self.self_addr.is_none() && listen.ip().is_unspecified() {
            return Err(invalid(
                "cluster.self",
                "must be set when cluster.listen is a wildcard address",
            ));
        }
        let me = self.me().unwrap_or(listen);
        match (&self.peers_dns, self.peers.is_empty()) {
            (Some(_), false) => {
                return Err(invalid(
                    "cluster.peers_dns",
                    "set either cluster.peers or cluster.peers_dns, not both",
                ))
            }
            (None, true) => {
                return Err(invalid(
                    "cluster.peers",
                    "must list every node's peer listener (this one included), or set cluster.peers_dns",
                ))
            }
            (Some(_), true) => {
                let Some(port) = self.dns_port() else {
                    return Err(invalid(
                        "cluster.peers_dns",
                        "must be host:port, a DNS name and the peer listeners' port (e.g. pop-a.internal:9092)",
                    ));
                };
                // The others reach this node at its DNS address and the name's port: an entry
                // on another port would put this node on its own ring twice.
                if me.port() != port {
                    return Err(invalid(
                        "cluster.self",
                        format!("{me} must use cluster.peers_dns's port {port} (the address the other nodes see)"),
                    ));
                }
                if self.dns_interval < Duration::from_millis(100) {
                    return Err(invalid("cluster.dns_interval", "must be at least 100ms"));
                }
            }
            (None, false) => {
                if !self.peers.contains(&me) {
                    return Err(invalid(
                        "cluster.self",
                        format!("{me} must be one of cluster.peers"),
                    ));
                }
                let unique: std::collections::HashSet<_> = self.peers.iter().collect();
                if unique.len() != self.peers.len() {
                    return Err(invalid("cluster.peers", "lists an address twice"));
                }
            }
        }
        if self.secret.len() < 32 {
            return Err(invalid(
                "cluster.secret",
                "must be at least 32 characters when cluster.listen is set",
            ));
        }
        for (key, t) in [
            ("cluster.connect_timeout", self.connect_timeout),
            ("cluster.health_check_interval", self.health_check_interval),
            ("cluster.purge_timeout", self.purge_timeout),
        ] {
            if t.is_zero() {
                return Err(invalid(key, "must be positive"));
            }
        }
        Ok(())
    }
}

impl Config {
    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_yaml(&text)
    }

    /// Parse and validate YAML text. An empty document is the default config.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            let de = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let key = e.path().to_string();
                ConfigError::Parse {
                    key: if key == "." {
                        "(top level)".into()
                    } else {
                        key
                    },
                    message: e.into_inner().to_string(),
                }
            })?
        };
        let mut config = config;
        config.validate()?;
        config.resolve_paths()?;
        Ok(config)
    }

    /// Make relative paths absolute now: daemon mode changes the working directory to `/`.
    fn resolve_paths(&mut self) -> Result<(), ConfigError> {
        // Relative certificate paths are from the working directory at start-up.
        if let Ok(cwd) = std::env::current_dir() {
            for c in &mut self.edge.tls.certificates {
                c.cert = cwd.join(&c.cert);
                c.key = cwd.join(&c.key);
            }
        }
        if self.origin.source == SourceKind::Local {
            self.origin.local.root = self.origin.local.root.canonicalize().map_err(|e| {
                invalid(
                    "origin.local.root",
                    format!("{}: {e}", self.origin.local.root.display()),
                )
            })?;
        }
        Ok(())
    }

    /// Check ranges and cross-key consistency. Errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.threads == 0 {
            return Err(invalid("server.threads", "must be at least 1"));
        }
        if !self.server.pid_file.is_absolute() {
            return Err(invalid("server.pid_file", "must be an absolute path"));
        }
        if !self.server.upgrade_sock.is_absolute() {
            return Err(invalid("server.upgrade_sock", "must be an absolute path"));
        }
        if !self.server.error_log.as_os_str().is_empty() && !self.server.error_log.is_absolute() {
            return Err(invalid("server.error_log", "must be an absolute path"));
        }
        self.validate_edge()?;
        self.validate_policy()?;
        if !self.origin.socket.is_absolute() {
            return Err(invalid("origin.socket", "must be an absolute path"));
        }
        if self.origin.threads == 0 {
            return Err(invalid("origin.threads", "must be at least 1"));
        }
        crate::origin::source::KeyTemplate::parse(&self.origin.key_template)
            .map_err(|m| invalid("origin.key_template", m))?;
        match self.origin.source {
            SourceKind::Local => {
                if !self.origin.local.root.is_dir() {
                    return Err(invalid(
                        "origin.local.root",
                        format!("{} is not a directory", self.origin.local.root.display()),
                    ));
                }
            }
            SourceKind::S3 => {
                let s3 = &self.origin.s3;
                if s3.bucket.is_empty() {
                    return Err(invalid(
                        "origin.s3.bucket",
                        "must be set when origin.source is s3",
                    ));
                }
                let scheme_ok =
                    s3.endpoint.starts_with("http://") || s3.endpoint.starts_with("https://");
                if !s3.endpoint.is_empty() && !scheme_ok {
                    return Err(invalid(
                        "origin.s3.endpoint",
                        "must start with http:// or https://",
                    ));
                }
                if s3.access_key_id.is_empty() != s3.secret_access_key.is_empty() {
                    return Err(invalid(
                        "origin.s3.secret_access_key",
                        "access_key_id and secret_access_key must be set together",
                    ));
                }
                if s3.max_attempts == 0 {
                    return Err(invalid("origin.s3.max_attempts", "must be at least 1"));
                }
                if s3.connect_timeout.is_zero() {
                    return Err(invalid("origin.s3.connect_timeout", "must be positive"));
                }
                if s3.attempt_timeout.is_zero() {
                    return Err(invalid("origin.s3.attempt_timeout", "must be positive"));
                }
                if let Some(f) = &s3.fallback {
                    validate_bucket_section(
                        &f.bucket,
                        &f.endpoint,
                        &f.access_key_id,
                        &f.secret_access_key,
                        [
                            "origin.s3.fallback.bucket",
                            "origin.s3.fallback.endpoint",
                            "origin.s3.fallback.secret_access_key",
                        ],
                    )?;
                    let share = f.primary_share(self.origin.fetch_timeout);
                    if share.is_zero() || share >= self.origin.fetch_timeout {
                        return Err(invalid(
                            "origin.s3.fallback.after",
                            format!(
                                "must be positive and less than origin.fetch_timeout ({:?}), \
                                 which also bounds the fallback's fetch",
                                self.origin.fetch_timeout
                            ),
                        ));
                    }
                }
            }
        }
        if self.origin.source != SourceKind::S3 && self.origin.s3.fallback.is_some() {
            return Err(invalid(
                "origin.s3.fallback",
                "needs origin.source: s3 (a fallback backs up an S3 bucket)",
            ));
        }
        if let Some(r) = &self.origin.results {
            validate_bucket_section(
                &r.bucket,
                &r.endpoint,
                &r.access_key_id,
                &r.secret_access_key,
                [
                    "origin.results.bucket",
                    "origin.results.endpoint",
                    "origin.results.secret_access_key",
                ],
            )?;
            if r.prefix.starts_with('/') || r.prefix.split('/').any(|s| s == "..") {
                return Err(invalid(
                    "origin.results.prefix",
                    "must not start with '/' or contain a '..' segment",
                ));
            }
            if r.queue == 0 {
                return Err(invalid("origin.results.queue", "must be at least 1"));
            }
            if r.lookup_timeout.is_zero() {
                return Err(invalid("origin.results.lookup_timeout", "must be positive"));
            }
        }
        if self.origin.max_fetches == 0 {
            return Err(invalid("origin.max_fetches", "must be at least 1"));
        }
        if self.origin.source_cache_bytes.as_u64() > 0 && self.origin.source_cache_ttl.is_zero() {
            return Err(invalid(
                "origin.source_cache_ttl",
                "must be positive when origin.source_cache_bytes is (set the bytes to 0 to disable)",
            ));
        }
        if self.origin.fetch_timeout.is_zero() {
            return Err(invalid("origin.fetch_timeout", "must be positive"));
        }
        if http::HeaderValue::from_str(&self.origin.cache_control).is_err() {
            return Err(invalid(
                "origin.cache_control",
                "is not a valid header value",
            ));
        }
        if !(1..=65500).contains(&self.limits.max_dimension) {
            return Err(invalid("limits.max_dimension", "must be in 1..=65500"));
        }
        if self.limits.max_source_bytes.as_u64() == 0 {
            return Err(invalid("limits.max_source_bytes", "must be positive"));
        }
        if self.limits.max_source_pixels == 0 {
            return Err(invalid("limits.max_source_pixels", "must be positive"));
        }
        if self.limits.max_frames == 0 {
            return Err(invalid("limits.max_frames", "must be positive"));
        }
        if !(1..=100).contains(&self.transform.default_quality) {
            return Err(invalid("transform.default_quality", "must be in 1..=100"));
        }
        if parse_rgb(&self.transform.background).is_none() {
            return Err(invalid(
                "transform.background",
                "must be RRGGBB hex, e.g. ffffff",
            ));
        }
        let mezzanine = self.transform.mezzanine_bytes.as_u64();
        if mezzanine != 0 && mezzanine < 16 * 1024 * 1024 {
            return Err(invalid(
                "transform.mezzanine_bytes",
                "must be 0 (off) or at least 16 MiB (one decoded 2 MP original is 6 MB)",
            ));
        }
        if self.transform.avif_workers == 0 {
            return Err(invalid("transform.avif_workers", "must be at least 1"));
        }
        if self.transform.avif_queue == 0 {
            return Err(invalid(
                "transform.avif_queue",
                "must be at least 1 (deferred upgrades wait there)",
            ));
        }
        if self.transform.avif_speed > 10 {
            return Err(invalid("transform.avif_speed", "must be in 0..=10"));
        }
        if self.transform.avif_interim_ttl.is_zero()
            || self.transform.avif_interim_ttl > Duration::from_secs(300)
        {
            return Err(invalid(
                "transform.avif_interim_ttl",
                "must be between 1s and 5m (the WebP stands in for the AVIF only briefly)",
            ));
        }
        if self.cache.memory_bytes.as_u64() < 1024 * 1024 {
            return Err(invalid("cache.memory_bytes", "must be at least 1 MiB"));
        }
        if self.cache.max_object_bytes.as_u64() == 0
            || self.cache.max_object_bytes > self.cache.memory_bytes
        {
            return Err(invalid(
                "cache.max_object_bytes",
                "must be positive and no larger than cache.memory_bytes",
            ));
        }
        let disk = &self.cache.disk;
        if disk.enabled() {
            if !disk.dir.is_absolute() {
                return Err(invalid("cache.disk.dir", "must be an absolute path"));
            }
            if disk.max_bytes < self.cache.max_object_bytes {
                return Err(invalid(
                    "cache.disk.max_bytes",
                    "must be at least cache.max_object_bytes",
                ));
            }
            if disk.write_queue == 0 {
                return Err(invalid("cache.disk.write_queue", "must be at least 1"));
            }
            if disk.read_concurrency == 0 || disk.read_concurrency > 1024 {
                return Err(invalid(
                    "cache.disk.read_concurrency",
                    "must be in 1..=1024",
                ));
            }
            if disk.save_interval < Duration::from_secs(1) {
                return Err(invalid("cache.disk.save_interval", "must be at least 1s"));
            }
        }
        if !self.admin.purge_token.is_empty() && self.admin.purge_token.len() < 16 {
            return Err(invalid(
                "admin.purge_token",
                "must be at least 16 characters (or empty to disable purging)",
            ));
        }
        self.mirror.validate()?;
        let mut taken: Vec<SocketAddr> = self.edge.listen.clone();
        taken.extend(&self.edge.tls.listen);
        taken.push(self.admin.listen);
        self.cluster.validate(&taken, self.origin.source)?;
        // A waiter that gives up before the worst miss finishes turns coalescing into a stampede.
        let worst_miss = self.origin.fetch_timeout;
        for (key, t) in [
            ("cache.lock_age_timeout", self.cache.lock_age_timeout),
            ("cache.lock_wait_timeout", self.cache.lock_wait_timeout),
            ("cache.origin_read_timeout", self.cache.origin_read_timeout),
        ] {
            if t <= worst_miss {
                return Err(invalid(
                    key,
                    format!("must exceed origin.fetch_timeout ({worst_miss:?}) plus resize time"),
                ));
            }
        }
        Ok(())
    }

    fn validate_edge(&self) -> Result<(), ConfigError> {
        let edge = &self.edge;
        if edge.listen.is_empty() && edge.tls.listen.is_empty() {
            return Err(invalid(
                "edge.listen",
                "needs at least one address (or set edge.tls.listen)",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for addr in edge.listen.iter().chain(&edge.tls.listen) {
            if !seen.insert(*addr) {
                return Err(invalid(
                    "edge.tls.listen",
                    format!("{addr} is listed twice (edge.listen and edge.tls.listen)"),
                ));
            }
        }
        if seen.contains(&self.admin.listen) {
            return Err(invalid(
                "admin.listen",
                "must differ from every edge.listen and edge.tls.listen address",
            ));
        }
        if !edge.tls.listen.is_empty() && edge.tls.certificates.is_empty() {
            return Err(invalid(
                "edge.tls.certificates",
                "needs at least one cert/key pair when edge.tls.listen is set",
            ));
        }
        for (key, t) in [
            ("edge.header_timeout", edge.header_timeout),
            ("edge.keepalive_timeout", edge.keepalive_timeout),
            ("edge.write_timeout", edge.write_timeout),
        ] {
            if t.is_zero() {
                return Err(invalid(key, "must be positive"));
            }
        }
        if edge.max_uri_bytes < 64 {
            return Err(invalid("edge.max_uri_bytes", "must be at least 64"));
        }
        if edge.max_header_bytes < 1024 {
            return Err(invalid("edge.max_header_bytes", "must be at least 1024"));
        }
        if edge.write_buffer.as_u64() > 1024 * 1024 {
            return Err(invalid("edge.write_buffer", "must be at most 1 MiB"));
        }
        let log = &edge.access_log;
        if !log.path.as_os_str().is_empty() && !log.path.is_absolute() {
            return Err(invalid("edge.access_log.path", "must be an absolute path"));
        }
        if log.queue == 0 {
            return Err(invalid("edge.access_log.queue", "must be at least 1"));
        }
        Ok(())
    }

    fn validate_policy(&self) -> Result<(), ConfigError> {
        let p = &self.policy;
        if p.signing_keys.iter().any(|k| k.len() < 32) {
            return Err(invalid(
                "policy.signing_keys",
                "every key must be at least 32 characters",
            ));
        }
        for s in &p.sizes {
            parse_box(s, self.limits.max_dimension)
                .map_err(|m| invalid("policy.sizes", format!("{s:?}: {m}")))?;
        }
        if !p.sizes.is_empty() && !p.size_ladder.is_empty() {
            return Err(invalid(
                "policy.size_ladder",
                "use either policy.sizes (an allow-list) or a ladder, not both",
            ));
        }
        if p.size_ladder.windows(2).any(|w| w[0] >= w[1])
            || p.size_ladder.first() == Some(&0)
            || p.size_ladder.last() > Some(&self.limits.max_dimension)
        {
            return Err(invalid(
                "policy.size_ladder",
                "must be strictly increasing steps in 1..=limits.max_dimension",
            ));
        }
        if p.qualities.windows(2).any(|w| w[0] >= w[1])
            || p.qualities.iter().any(|q| !(1..=100).contains(q))
        {
            return Err(invalid(
                "policy.qualities",
                "must be strictly increasing qualities in 1..=100",
            ));
        }
        if let Some(b) = p.backgrounds.iter().find(|b| parse_rgb(b).is_none()) {
            return Err(invalid(
                "policy.backgrounds",
                format!("{b:?}: must be RRGGBB hex"),
            ));
        }
        if !p.client_ip_header.is_empty()
            && http::HeaderName::from_bytes(p.client_ip_header.as_bytes()).is_err()
        {
            return Err(invalid("policy.client_ip_header", "is not a header name"));
        }
        Ok(())
    }

    /// The values of `policy.signing_keys`, in order.
    pub fn signing_keys(&self) -> Vec<String> {
        self.policy
            .signing_keys
            .iter()
            .map(|k| k.expose().to_string())
            .collect()
    }

    /// Every secret the config holds that is set, with its key, for `imgedge check`.
    pub fn secrets(&self) -> Vec<(String, &Secret)> {
        let mut out: Vec<(String, &Secret)> = self
            .policy
            .signing_keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("policy.signing_keys[{i}]"), k))
            .collect();
        out.push(("admin.purge_token".into(), &self.admin.purge_token));
        out.push(("cluster.secret".into(), &self.cluster.secret));
        out.push((
            "origin.s3.access_key_id".into(),
            &self.origin.s3.access_key_id,
        ));
        out.push((
            "origin.s3.secret_access_key".into(),
            &self.origin.s3.secret_access_key,
        ));
        if let Some(f) = &self.origin.s3.fallback {
            out.push(("origin.s3.fallback.access_key_id".into(), &f.access_key_id));
            out.push((
                "origin.s3.fallback.secret_access_key".into(),
                &f.secret_access_key,
            ));
        }
        if let Some(r) = &self.origin.results {
            out.push(("origin.results.access_key_id".into(), &r.access_key_id));
            out.push((
                "origin.results.secret_access_key".into(),
                &r.secret_access_key,
            ));
        }
        out.retain(|(_, s)| !s.is_empty());
        out
    }

    /// The URL parser's options.
    pub fn parse_options(&self) -> ParseOptions {
        ParseOptions {
            max_dimension: self.limits.max_dimension,
            default_quality: self.transform.default_quality,
            background: self.transform.background_rgb(),
            default_format: match self.transform.default_format {
                DefaultFormatConfig::Original => DefaultFormat::Original,
                DefaultFormatConfig::Auto => DefaultFormat::Auto,
            },
        }
    }

    /// The longest an object can be served after it was created: the longer of the TTLs the
    /// origin sets (`origin.cache_control`'s `s-maxage`/`max-age`, `origin.negative_ttl`) plus
    /// both stale windows. A purge record older than this can no longer match anything.
    pub fn longest_keep(&self) -> Duration {
        let directive = |name: &str| {
            self.origin
                .cache_control
                .split(',')
                .filter_map(|d| d.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.trim().trim_matches('"').parse::<u64>().ok())
        };
        let ttl = directive("s-maxage")
            .or_else(|| directive("max-age"))
            .unwrap_or(0);
        Duration::from_secs(ttl).max(self.origin.negative_ttl)
            + self.cache.stale_if_error
            + self.cache.stale_while_revalidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_keep_adds_the_stale_windows_to_the_longest_ttl() {
        let cfg = Config::from_yaml(
            "origin:\n  cache_control: \"public, max-age=600, s-maxage=3600\"\n  negative_ttl: 60s\ncache:\n  stale_if_error: 100s\n  stale_while_revalidate: 10s\n",
        )
        .unwrap();
        assert_eq!(cfg.longest_keep(), Duration::from_secs(3600 + 110));
        let cfg = Config::from_yaml("origin:\n  cache_control: no-store\n  negative_ttl: 60s\ncache:\n  stale_if_error: 0s\n").unwrap();
        assert_eq!(cfg.longest_keep(), Duration::from_secs(60));
    }

    fn err(yaml: &str) -> String {
        Config::from_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn unknown_and_mistyped_keys_are_named() {
        assert!(err("cache:\n  memory_byts: 1GiB\n").starts_with("cache.memory_byts:"));
        assert!(err("limits:\n  max_dimension: lots\n").starts_with("limits.max_dimension:"));
        assert!(err("origin:\n  fetch_timeout: soon\n").starts_with("origin.fetch_timeout:"));
    }

    #[test]
    fn invalid_values_are_named() {
        assert!(err("origin:\n  source: s3\n").starts_with("origin.s3.bucket:"));
        assert!(err("transform:\n  background: white\n").starts_with("transform.background:"));
        assert!(
            err("transform:\n  mezzanine_bytes: 1 MiB\n").starts_with("transform.mezzanine_bytes:")
        );
        assert!(err("limits:\n  max_frames: 0\n").starts_with("limits.max_frames:"));
        assert!(
            err("limits:\n  max_metadata_bytes: lots\n").starts_with("limits.max_metadata_bytes:")
        );
        assert!(err("origin:\n  local:\n    root: /nonexistent/dir\n")
            .starts_with("origin.local.root:"));
        assert!(err("cache:\n  lock_wait_timeout: 1s\n").starts_with("cache.lock_wait_timeout:"));
        assert!(err("server:\n  pid_file: rel.pid\n").starts_with("server.pid_file:"));
        assert!(err("origin:\n  key_template: \"{id:0:}\"\n").starts_with("origin.key_template:"));
        assert!(err("mirror:\n  sample: 1.5\n").starts_with("mirror.sample:"));
        let s3 = "origin:\n  source: s3\n  fetch_timeout: 4s\n  s3:\n    bucket: a\n";
        assert!(err(&format!("{s3}    fallback: {{ region: us-west-2 }}\n"))
            .starts_with("origin.s3.fallback.bucket:"));
        assert!(
            err(&format!("{s3}    fallback: {{ bucket: b, after: 4s }}\n"))
                .starts_with("origin.s3.fallback.after:")
        );
        assert!(
            err(&format!("{s3}    fallback: {{ bucket: b, endpoint: x }}\n"))
                .starts_with("origin.s3.fallback.endpoint:")
        );
        assert!(
            err("origin:\n  s3:\n    fallback: { bucket: b }\n").starts_with("origin.s3.fallback:")
        );
        assert!(err("origin:\n  results: { prefix: v1/ }\n").starts_with("origin.results.bucket:"));
        assert!(err("origin:\n  results: { bucket: r, queue: 0 }\n")
            .starts_with("origin.results.queue:"));
        assert!(err("origin:\n  results: { bucket: r, prefix: /v1/ }\n")
            .starts_with("origin.results.prefix:"));
        let ok = Config::from_yaml(&format!(
            "{s3}    region: eu-west-1\n    fallback: {{ bucket: b, region: us-west-2 }}\n  results: {{ bucket: r }}\n"
        ))
        .unwrap();
        let f = ok.origin.s3.fallback.as_ref().unwrap();
        let resolved = f.resolve(&ok.origin.s3);
        assert_eq!(
            (resolved.bucket.as_str(), resolved.region.as_str()),
            ("b", "us-west-2")
        );
        assert_eq!(
            f.primary_share(ok.origin.fetch_timeout),
            Duration::from_secs(2)
        );
        let r = ok.origin.results.as_ref().unwrap().resolve(&ok.origin.s3);
        assert_eq!((r.bucket.as_str(), r.region.as_str()), ("r", "eu-west-1"));
        assert!(err("policy:\n  qualities: [80, 50]\n").starts_with("policy.qualities:"));
        assert!(err("policy:\n  qualities: [0]\n").starts_with("policy.qualities:"));
        assert!(err("policy:\n  backgrounds: [white]\n").starts_with("policy.backgrounds:"));
        assert!(err("mirror:\n  target: node-b:8080\n").starts_with("mirror.target:"));
        let cluster =
            "cluster:\n  listen: 127.0.0.1:9092\n  peers: [127.0.0.1:9092, 127.0.0.1:9093]\n";
        assert!(err(cluster).starts_with("cluster.secret:"));
        assert!(err("cluster:\n  listen: 127.0.0.1:9092\n").starts_with("cluster.peers:"));
        assert!(
            err("cluster:\n  listen: 127.0.0.1:9092\n  peers: [127.0.0.1:9093]\n")
                .starts_with("cluster.self:")
        );
        assert!(err("cluster:\n  listen: 127.0.0.1:9091\n").starts_with("cluster.listen:"));
        assert!(err("cluster:\n  peers: [127.0.0.1:9093]\n").starts_with("cluster.listen:"));
        let ok = format!("{cluster}  secret: {}\n", "s".repeat(32));
        assert!(Config::from_yaml(&ok).unwrap().cluster.enabled());

        // Peers from DNS: exactly one of peers / peers_dns, host:port, self on the name's port.
        let secret = format!("  secret: {}\n", "s".repeat(32));
        let dns = |rest: &str| format!("cluster:\n  listen: 127.0.0.1:9092\n{secret}{rest}");
        let ok = Config::from_yaml(&dns("  peers_dns: pop-a.internal:9092\n")).unwrap();
        assert_eq!(ok.cluster.peers_dns.as_deref(), Some("pop-a.internal:9092"));
        assert_eq!(ok.cluster.dns_interval, Duration::from_secs(10));
        assert!(err(&dns(
            "  peers_dns: pop-a.internal:9092\n  peers: [127.0.0.1:9092]\n"
        ))
        .starts_with("cluster.peers_dns:"));
        for bad in [
            "pop-a.internal",
            ":9092",
            "pop-a.internal:0",
            "pop-a.internal:x",
        ] {
            assert!(
                err(&dns(&format!("  peers_dns: \"{bad}\"\n"))).starts_with("cluster.peers_dns:"),
                "{bad}"
            );
        }
        assert!(err(&dns("  peers_dns: pop-a.internal:9093\n")).starts_with("cluster.self:"));
        assert!(err(&dns(
            "  peers_dns: pop-a.internal:9092\n  dns_interval: 10ms\n"
        ))
        .starts_with("cluster.dns_interval:"));
        let wildcard =
            format!("cluster:\n  listen: 0.0.0.0:9092\n{secret}  peers_dns: pop-a.internal:9092\n");
        assert!(err(&wildcard).starts_with("cluster.self:"));
        let with_self = format!("{wildcard}  self: 10.0.1.5:9092\n");
        let c = Config::from_yaml(&with_self).unwrap().cluster;
        assert_eq!(c.me(), Some("10.0.1.5:9092".parse().unwrap()));
        assert!(err("cluster:\n  peers_dns: pop-a.internal:9092\n").starts_with("cluster.listen:"));
    }

    #[test]
    fn sizes_accept_units() {
        let c = Config::from_yaml("cache:\n  memory_bytes: 64 MiB\n  max_object_bytes: 1048576\n")
            .unwrap();
        assert_eq!(c.cache.memory_bytes.as_u64(), 64 << 20);
        assert_eq!(c.cache.max_object_bytes.as_u64(), 1 << 20);
    }
}
