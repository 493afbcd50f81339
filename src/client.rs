//! The HTTP client of `imgedge warm` and of mirror mode: one GET whose body is read to the end
//! and discarded. It sits below both ([`crate::warm`] is CLI code, [`crate::mirror`] runs in the
//! server), so neither depends on the other.
//!
//! The body is drained because a fill is published only once complete; a client that hangs up
//! after the headers may leave the node cold.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Header a node sets on the requests it mirrors; a node never mirrors a request carrying it,
/// so two nodes mirroring to each other cannot loop.
pub const MIRROR_HEADER: &str = "x-imgedge-mirror";

/// A response, read to the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Status code.
    pub status: u16,
    /// The `X-Cache` header, upper-cased, when present.
    pub x_cache: Option<String>,
    /// Body bytes received.
    pub bytes: u64,
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// No connection could be made.
    #[error("connect")]
    Connect,
    /// The request took longer than the client's timeout.
    #[error("timeout")]
    Timeout,
    /// Anything else (reset mid-body, protocol error).
    #[error("transport")]
    Transport,
}

impl From<reqwest::Error> for FetchError {
    fn from(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            FetchError::Timeout
        } else if e.is_connect() {
            FetchError::Connect
        } else {
            FetchError::Transport
        }
    }
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file could not be read.
    #[error("{path}: {source}")]
    CaRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file holds no usable PEM certificate.
    #[error("{path}: no PEM certificate in it")]
    CaEmpty {
        /// The file.
        path: PathBuf,
    },
    /// reqwest refused the configuration.
    #[error("{0}")]
    Build(#[from] reqwest::Error),
}

/// A client for warming and mirroring: no proxy from the environment (targets are nodes,
/// addressed directly), a whole-request timeout, and a recognisable User-Agent.
///
/// HTTPS goes through rustls with the process's crypto provider (ring, the one the edge's
/// listeners use; installed here too so a library caller gets the same). Server certificates
/// are verified against the system's roots, or only against the PEM certificates in `ca`.
pub fn client(
    timeout: Duration,
    pool_idle: usize,
    ca: Option<&Path>,
) -> Result<reqwest::Client, ClientError> {
    pingora_rustls::install_default_crypto_provider();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(2)))
        .pool_max_idle_per_host(pool_idle)
        .user_agent(concat!("imgedge-warm/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca {
        let pem = std::fs::read(path).map_err(|source| ClientError::CaRead {
            path: path.to_path_buf(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)?;
        if certs.is_empty() {
            return Err(ClientError::CaEmpty {
                path: path.to_path_buf(),
            });
        }
        b = b.tls_certs_only(certs);
    }
    Ok(b.build()?)
}

/// GET `url`, read the body to the end, return what was seen.
pub async fn fetch(
    client: &reqwest::Client,
    url: &str,
    mirror: bool,
) -> Result<Fetched, FetchError> {
    let mut req = client.get(url);
    // A negotiated variant's class is filled by sending an Accept of that class (the node
    // asked negotiates from the header, as for any client).
    if let Some(accept) = crate::variant::AcceptClass::of_uri(url).and_then(|c| c.accept_header()) {
        req = req.header(http::header::ACCEPT, accept);
    }
    if mirror {
        req = req.header(MIRROR_HEADER, "1");
    }
    let mut resp = req.send().await?;
    let status = resp.status().as_u16();
    let x_cache = resp
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_uppercase);
    let mut bytes = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        bytes += chunk.len() as u64;
    }
    Ok(Fetched {
        status,
        x_cache,
        bytes,
    })
}
