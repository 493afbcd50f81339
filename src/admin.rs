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
//! - `GET /cluster[?id=...]`: the ring's current members and their health, where the
//!   membership comes from (`cluster.peers` or `cluster.peers_dns`), and an id's owner.
//!
//! With `origin.results`, a purge also deletes the id's results (or the URL's one result) from
//! the shared result tier.
//!
//! In a cluster a purge is applied on every node of the POP ([`crate::cluster::purge`]) and the
//! answer lists which nodes confirmed.
//!
//! Purges need `Authorization: Bearer <admin.purge_token>`; without a configured token they are
//! refused.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cache::Cache;
use crate::cluster::purge::PurgeOrder;
use crate::cluster::records::PurgeRecords;
use crate::config::Config;
use crate::variant::ParseOptions;

/// The admin HTTP app.
pub struct AdminApp {
    cache: Cache,
    draining: crate::edge::drain::Draining,
    origin_socket: std::path::PathBuf,
    parse: ParseOptions,
    purge_token: String,
    cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
    records: Option<&'static PurgeRecords>,
    results: Option<std::sync::Arc<crate::origin::results::Results>>,
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
            purge_token: cfg.admin.purge_token.expose().to_string(),
            cluster: None,
            records: None,
            results: None,
        }
    }

    /// Purges received here also delete the shared result tier's objects of the id.
    pub fn with_results(
        mut self,
        results: Option<std::sync::Arc<crate::origin::results::Results>>,
    ) -> Self {
        self.results = results;
        self
    }

    /// Purges reach every node of `cluster`; `GET /cluster` describes it.
    pub fn with_cluster(
        mut self,
        cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
    ) -> Self {
        self.cluster = cluster;
        self
    }

    /// Purges taken here are also written as durable records (`cluster.purge_records`).
    pub fn with_records(mut self, records: Option<&'static PurgeRecords>) -> Self {
        self.records = records;
        self
    }

    /// Write the durable record of `order` first, so that a node missing the fan-out learns
    /// of it; `,"recorded":true|false` for the answer (nothing when records are off).
    async fn record(&self, order: &PurgeOrder) -> String {
        let Some(records) = self.records else {
            return String::new();
        };
        let recorded = match records.write(order, std::time::SystemTime::now()).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("purge {}: record not written: {e}", order.path());
                false
            }
        };
        format!(",\"recorded\":{recorded}")
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
        let order = match PurgeOrder::parse(uri.path(), uri.query(), &self.parse) {
            Ok(o) => o,
            Err((status, reason)) => return plain(status, &reason),
        };
        let target = json_escape(&match &order {
            PurgeOrder::Url(v) => v.canonical_uri(),
            PurgeOrder::Id(v) => v.id.clone(),
        });
        let scope = order.scope();
        let recorded = self.record(&order).await;
        // The node that received the purge clears the result tier (other nodes of the POP
        // get the purge through the fan-out and only record it).
        if let Some(results) = &self.results {
            match &order {
                PurgeOrder::Url(v) => results.forget_variant(v).await,
                PurgeOrder::Id(v) => results.forget_id(&v.id),
            }
        }
        if let Some(cluster) = &self.cluster {
            let nodes = crate::cluster::purge::fan_out(cluster, &self.cache, &order).await;
            let all = nodes.iter().all(|n| n.result.is_ok());
            let list: Vec<String> = nodes
                .iter()
                .map(|n| {
                    let error = match &n.result {
                        Ok(()) => String::new(),
                        Err(e) => format!(",\"error\":\"{}\"", json_escape(e)),
                    };
                    format!(
                        "{{\"node\":\"{}\",\"self\":{},\"confirmed\":{}{error}}}",
                        n.node,
                        n.me,
                        n.result.is_ok()
                    )
                })
                .collect();
            let body = format!(
                "{{\"purged\":\"{target}\",\"scope\":\"{scope}\",\"all_confirmed\":{all}{recorded},\"nodes\":[{}]}}\n",
                list.join(",")
            );
            return text(StatusCode::OK, "application/json", body);
        }
        match order.apply(&self.cache).await {
            Ok(Some(found)) => text(
                StatusCode::OK,
                "application/json",
                format!("{{\"purged\":\"{target}\",\"scope\":\"{scope}\",\"found\":{found}{recorded}}}\n"),
            ),
            Ok(None) => text(
                StatusCode::OK,
                "application/json",
                format!("{{\"purged\":\"{target}\",\"scope\":\"{scope}\"{recorded}}}\n"),
            ),
            Err(e) => {
                tracing::error!("purge log write failed: {e}");
                plain(StatusCode::INTERNAL_SERVER_ERROR, "purge log write failed")
            }
        }
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
            "/cluster" => match &self.cluster {
                Some(c) => {
                    let id = req.uri.query().and_then(|q| {
                        q.split('&')
                            .find_map(|kv| kv.strip_prefix("id="))
                            .map(|id| {
                                percent_encoding::percent_decode_str(id)
                                    .decode_utf8_lossy()
                                    .into_owned()
                            })
                    });
                    text(
                        StatusCode::OK,
                        "application/json",
                        c.membership_json(id.as_deref()),
                    )
                }
                None => plain(
                    StatusCode::NOT_FOUND,
                    "not in a cluster (cluster.listen is unset)",
                ),
            },
            "/metrics" => {
                self.cache.storage.update_gauges();
                if let Some(c) = &self.cluster {
                    c.update_gauges();
                }
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
