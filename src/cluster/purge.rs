//! Purges: one order, applied here and fanned out to every node of the POP.
//!
//! A [`PurgeOrder`] is what the admin's `POST /purge/...` names: one variant (`/purge/url/...`,
//! removed from storage) or every variant of an id (`/purge/image/{id}`, recorded in the purge
//! log). The admin applies it here and, in a cluster, [`fan_out`] sends it to every other node's
//! peer listener (`POST /_cluster/purge/...`, signed with the shared secret), which applies it
//! locally and never forwards it again.
//!
//! Order matters: a non-owner purged before the owner could refill from the owner's old copy.
//! So the id's owner (its place on the ring) is purged first, then every other node at once.
//! The answer lists each node and whether it confirmed; the time to the last confirmation is
//! `imgedge_cluster_purge_duration_seconds`. A node that is down during the purge is reported
//! as unconfirmed; it learns of the purge from the durable record ([`super::records`]) that the
//! admin writes first, before it opens its listeners again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;
use pingora_cache::key::CacheHashKey;

use super::listener::{AUTH_HEADER, PURGE_PREFIX};
use super::metrics::cluster_metrics;
use super::Cluster;
use crate::cache::Cache;
use crate::metrics::metrics;
use crate::variant::{ParseOptions, Variant};

/// What a purge removes.
#[derive(Debug, Clone)]
pub enum PurgeOrder {
    /// The one variant a public URL names.
    Url(Variant),
    /// Every variant of an id (the variant carries the id, without a transform).
    Id(Variant),
}

/// A purge that could not be applied: the status and reason to answer with.
pub type Refusal = (StatusCode, String);

impl PurgeOrder {
    /// The order named by an admin path (`/purge/url/image/{id}?...` or `/purge/image/{id}`).
    pub fn parse(path: &str, query: Option<&str>, opts: &ParseOptions) -> Result<Self, Refusal> {
        let bad = |e: crate::error::Error| {
            (
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
                e.reason(),
            )
        };
        if let Some(public) = path.strip_prefix("/purge/url") {
            return Variant::parse(public, query, opts)
                .map(PurgeOrder::Url)
                .map_err(bad);
        }
        let Some(public) = path.strip_prefix("/purge") else {
            return Err((StatusCode::NOT_FOUND, "not found".into()));
        };
        if query.is_some_and(|q| !q.is_empty()) {
            return Err((
                StatusCode::BAD_REQUEST,
                "a query purges one variant: use /purge/url/image/{id}?...".into(),
            ));
        }
        Variant::parse(public, None, opts)
            .map(PurgeOrder::Id)
            .map_err(bad)
    }

    /// `url` or `id`, the metrics label.
    pub fn scope(&self) -> &'static str {
        match self {
            PurgeOrder::Url(_) => "url",
            PurgeOrder::Id(_) => "id",
        }
    }

    /// The image id the order is about.
    pub fn id(&self) -> &str {
        match self {
            PurgeOrder::Url(v) | PurgeOrder::Id(v) => &v.id,
        }
    }

    /// The canonical admin path of the order (`/purge/url/image/...?...` or `/purge/image/...`).
    pub fn path(&self) -> String {
        match self {
            PurgeOrder::Url(v) => format!("/purge/url{}", v.canonical_uri()),
            PurgeOrder::Id(v) => format!("/purge{}", v.canonical_uri()),
        }
    }

    /// Apply the order to this node's cache. `Ok(Some(found))` for a variant purge (whether
    /// it was stored), `Ok(None)` for an id purge.
    pub async fn apply(&self, cache: &Cache) -> std::io::Result<Option<bool>> {
        let found = match self {
            PurgeOrder::Url(v) => Some(
                cache
                    .storage
                    .remove(crate::cache::storage_key(v).combined_bin())
                    .await,
            ),
            PurgeOrder::Id(v) => {
                cache.purges.purge_async(v.id.clone()).await?;
                None
            }
        };
        metrics().purges.with_label_values(&[self.scope()]).inc();
        match self {
            PurgeOrder::Url(v) => {
                tracing::info!(target: "access", "purged {} (found: {found:?})", v.canonical_uri())
            }
            PurgeOrder::Id(v) => {
                tracing::info!(target: "access", "purged every variant of {}", v.id)
            }
        }
        Ok(found)
    }
}

/// One node's answer to a purge.
#[derive(Debug, Clone)]
pub struct Confirmation {
    /// The node's peer listener.
    pub node: SocketAddr,
    /// Whether it is this node.
    pub me: bool,
    /// `Ok(())` when it confirmed, else why not.
    pub result: Result<(), String>,
}

async fn ask(cluster: &Cluster, node: SocketAddr, order: &PurgeOrder) -> Confirmation {
    let rest = order.path();
    let target = format!(
        "{PURGE_PREFIX}{}",
        rest.strip_prefix("/purge").unwrap_or(&rest)
    );
    let result = async {
        let client = cluster.client().map_err(|e| e.to_string())?;
        let resp = client
            .post(format!("http://{node}{target}"))
            .header(AUTH_HEADER, cluster.auth.sign("POST", &target))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            s => Err(format!("answered {s}")),
        }
    }
    .await;
    let label = if result.is_ok() { "ok" } else { "error" };
    cluster_metrics()
        .purge_peers
        .with_label_values(&[node.to_string().as_str(), label])
        .inc();
    if let Err(e) = &result {
        tracing::warn!("cluster: purge {rest} not confirmed by {node}: {e}");
    }
    Confirmation {
        node,
        me: false,
        result,
    }
}

async fn here(cluster: &Cluster, cache: &Cache, order: &PurgeOrder) -> Confirmation {
    Confirmation {
        node: cluster.ring.me(),
        me: true,
        result: order.apply(cache).await.map(|_| ()).map_err(|e| {
            tracing::error!("purge log write failed: {e}");
            "purge log write failed".to_string()
        }),
    }
}

/// Apply `order` on every node of the POP: its owner first, then all others at once.
pub async fn fan_out(
    cluster: &Arc<Cluster>,
    cache: &Cache,
    order: &PurgeOrder,
) -> Vec<Confirmation> {
    let started = Instant::now();
    let me = cluster.ring.me();
    let owner = cluster.ring.home(order.id()).unwrap_or(me);
    let first = if owner == me {
        here(cluster, cache, order).await
    } else {
        ask(cluster, owner, order).await
    };
    let mut rest = tokio::task::JoinSet::new();
    for m in cluster
        .ring
        .members()
        .into_iter()
        .filter(|m| m.addr != owner)
    {
        let (cluster, cache, order) = (cluster.clone(), *cache, order.clone());
        rest.spawn(async move {
            if m.me {
                here(&cluster, &cache, &order).await
            } else {
                ask(&cluster, m.addr, &order).await
            }
        });
    }
    let mut all = vec![first];
    while let Some(done) = rest.join_next().await {
        match done {
            Ok(c) => all.push(c),
            Err(e) => tracing::error!("cluster: purge task failed: {e}"),
        }
    }
    all.sort_by_key(|c| c.node);
    cluster_metrics()
        .purge_duration
        .with_label_values(&[order.scope()])
        .observe(started.elapsed().as_secs_f64());
    all
}
