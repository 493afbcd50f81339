//! The admin listener: health, metrics and purge. It has its own port, bound to loopback by
//! default, and never shares the public listener.
//!
//! - `GET /healthz`: the process is up (liveness).
//! - `GET /readyz`: ready for traffic: the cache is loaded (it is, before any listener opens),
//!   the origin service answers on its socket and its source (bucket, directory) is reachable;
//!   503 once the process is draining (upgrade or stop).
//! - `GET /metrics`: Prometheus text.
//! - `POST /purge/image/{id}`: every cached variant of an id (recorded in the purge log; no scan).
//! - `POST /purge/url/image/{id}?size=...`: the one variant that public URL names.
//!
//! Purges need `Authorization: Bearer <admin.purge_token>`; without a configured token they are
//! refused.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_cache::key::CacheHashKey;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::metrics;
use crate::variant::{ParseOptions, Variant};

/// The admin HTTP app.
pub struct AdminApp {
    cache: Cache,
    draining: crate::edge::drain::Draining,
    origin_socket: std::path::PathBuf,
    parse: ParseOptions,
    purge_token: String,
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Vec<u8>> {
    let body = body.into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn plain(status: StatusCode, msg: &str) -> Response<Vec<u8>> {
    text(status, "text/plain; charset=utf-8", format!("{msg}\n"))
}

fn json_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl AdminApp {
    /// The admin app for a config and the process's cache.
    pub fn new(cfg: &Config, cache: Cache, draining: crate::edge::drain::Draining) -> AdminApp {
        AdminApp {
            cache,
            draining,
            origin_socket: cfg.origin.socket.clone(),
            parse: cfg.parse_options(),
            purge_token: cfg.admin.purge_token.clone(),
        }
    }

    /// `None` when the request carries the purge token, else the refusal to send.
    fn refusal(&self, session: &ServerSession) -> Option<Response<Vec<u8>>> {
        if self.purge_token.is_empty() {
            return Some(plain(
                StatusCode::FORBIDDEN,
                "purge is disabled: set admin.purge_token",
            ));
        }
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(given.as_bytes().ct_eq(self.purge_token.as_bytes())) {
            None
        } else {
            Some(plain(
                StatusCode::UNAUTHORIZED,
                "bad or missing bearer token",
            ))
        }
    }

    /// Ask the origin service for its source's readiness over its own socket.
    async fn ready(&self) -> Response<Vec<u8>> {
        if self.draining.is_set() {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining");
        }
        let probe = async {
            let mut s = tokio::net::UnixStream::connect(&self.origin_socket).await?;
            let req = format!(
                "GET {} HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n",
                crate::origin::PROBE_PATH
            );
            s.write_all(req.as_bytes()).await?;
            let mut resp = Vec::new();
            s.take(4096).read_to_end(&mut resp).await?;
            Ok::<_, std::io::Error>(resp)
        };
        let resp = match tokio::time::timeout(std::time::Duration::from_secs(3), probe).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("origin service: {e}"),
                )
            }
            Err(_) => return plain(StatusCode::SERVICE_UNAVAILABLE, "origin service: timeout"),
        };
        let text = String::from_utf8_lossy(&resp);
        if text.starts_with("HTTP/1.1 200") {
            return plain(StatusCode::OK, "ready");
        }
        let reason = text.split("\r\n\r\n").nth(1).unwrap_or("no answer").trim();
        plain(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("not ready: {reason}"),
        )
    }

    async fn purge(&self, session: &ServerSession) -> Response<Vec<u8>> {
        if let Some(denied) = self.refusal(session) {
            return denied;
        }
        let uri = &session.req_header().uri;
        let path = uri.path();
        if let Some(public) = path.strip_prefix("/purge/url") {
            let variant = match Variant::parse(public, uri.query(), &self.parse) {
                Ok(v) => v,
                Err(e) => {
                    return plain(
                        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
                        &e.reason(),
                    )
                }
            };
            let found = self
                .cache
                .storage
                .remove(crate::cache::storage_key(&variant).combined_bin())
                .await;
            metrics().purges.with_label_values(&["url"]).inc();
            tracing::info!(target: "access", "purged {} (found: {found})", variant.canonical_uri());
            let body = format!(
                "{{\"purged\":\"{}\",\"scope\":\"url\",\"found\":{found}}}\n",
                json_escape(&variant.canonical_uri())
            );
            return text(StatusCode::OK, "application/json", body);
        }
        if let Some(public) = path.strip_prefix("/purge") {
            if uri.query().is_some_and(|q| !q.is_empty()) {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "a query purges one variant: use /purge/url/image/{id}?...",
                );
            }
            let variant = match Variant::parse(public, None, &self.parse) {
                Ok(v) => v,
                Err(e) => {
                    return plain(
                        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
                        &e.reason(),
                    )
                }
            };
            // The fsync runs on the blocking pool, not on the admin runtime's threads.
            if let Err(e) = self.cache.purges.purge_async(variant.id.clone()).await {
                tracing::error!("purge log write failed: {e}");
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "purge log write failed");
            }
            metrics().purges.with_label_values(&["id"]).inc();
            tracing::info!(target: "access", "purged every variant of {}", variant.id);
            let body = format!(
                "{{\"purged\":\"{}\",\"scope\":\"id\"}}\n",
                json_escape(&variant.id)
            );
            return text(StatusCode::OK, "application/json", body);
        }
        plain(StatusCode::NOT_FOUND, "not found")
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path();
        if path.starts_with("/purge/") {
            if req.method != http::Method::POST {
                return plain(StatusCode::METHOD_NOT_ALLOWED, "purge needs POST");
            }
            return self.purge(session).await;
        }
        if req.method != http::Method::GET {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        match path {
            "/healthz" => plain(StatusCode::OK, "ok"),
            "/readyz" => self.ready().await,
            "/metrics" => {
                self.cache.storage.update_gauges();
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    crate::metrics::render(),
                )
            }
            _ => plain(StatusCode::NOT_FOUND, "not found"),
        }
    }
}
