//! The POP as one cache: each image id has one owner among the POP's nodes; a node that misses
//! asks the owner, and purges reach every node.
//!
//! ```text
//!             public request (edge.listen) on any node
//!                          │ miss
//!                          ▼
//!   ring.rs   Ketama ring over cluster.peers (or cluster.peers_dns, discovery.rs), keyed by
//!             the image id
//!             (select_with skips peers health.rs marked down; never rebuilt on health)
//!                 │ owner = this node                 │ owner = peer P
//!                 ▼                                   ▼
//!        local origin socket               fill.rs: GET P's peer listener, signed
//!        (S3 + resize pool)                 │ (refused / timeout / broken → local origin)
//!                                           ▼
//!                              listener.rs on P: proof checked (else 403), served from P's
//!                              cache or P's own origin; never forwarded again
//!   the asking node caches the answer too (X-Cache: MISS + X-Cache-Peer: P)
//!
//!   admin POST /purge/... ──► purge.rs: owner first, then every other node's peer listener
//! ```
//!
//! One file per concern: [`ring`] (ownership), [`discovery`] (membership from DNS),
//! [`listener`] (the peer listener's door: auth and request kinds), [`fill`] (the asking side of
//! a peer fill), [`health`] (peer health checks), [`purge`] (purge orders and their fan-out),
//! [`records`] (durable purge records in S3 for nodes that missed a fan-out), [`metrics`].
//! Peers are a static list (`cluster.peers`, the same on every node) or a DNS name
//! (`cluster.peers_dns`) that the ring's load balancer re-resolves every `cluster.dns_interval`
//! through pingora-load-balancing's `ServiceDiscovery`; ownership, purge fan-out and
//! `GET /cluster` always read the current membership.

pub mod discovery;
pub mod fill;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod purge;
pub mod records;
pub mod ring;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use once_cell::sync::OnceCell;
use pingora_core::services::background::{background_service, GenBackgroundService};
use pingora_load_balancing::Backends;

use crate::config::ClusterConfig;
use crate::error::Error;
use discovery::{system_resolver, DnsDiscovery};
use listener::PeerAuth;
use ring::{PeerRing, Ring};

/// This node's view of the POP.
pub struct Cluster {
    /// Ownership and health.
    pub ring: Ring,
    /// Signs and checks node-to-node requests.
    pub auth: PeerAuth,
    /// Connect timeout towards an owner; past it the fill is local.
    pub connect_timeout: Duration,
    purge_timeout: Duration,
    /// Where the membership comes from (`GET /cluster`): `cluster.peers` or the DNS name.
    source: Source,
    // Created on first use: after any daemon fork, on the runtime that uses it.
    client: OnceCell<reqwest::Client>,
}

/// The ring's load balancer as a Pingora background service (it runs the health checks and,
/// with `cluster.peers_dns`, the re-resolution).
pub type HealthService = GenBackgroundService<PeerRing>;

/// Where the ring's membership comes from.
#[derive(Debug, Clone)]
enum Source {
    Static,
    Dns { name: String, interval: Duration },
}

/// Run the load balancer's first discovery to completion, so the ring holds the resolved nodes
/// before any listener opens (a failed resolution leaves this node alone on it, re-resolved at
/// the next interval). On its own thread and runtime: start-up has no runtime yet, and a
/// lookup past its timeout is not waited for.
fn first_update(lb: &PeerRing) -> Result<(), Error> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(|e| Error::Internal(format!("cluster.peers_dns: {e}")))?;
                let done = rt.block_on(lb.update());
                rt.shutdown_background();
                done.map_err(|e| Error::Internal(format!("cluster.peers_dns: {e}")))
            })
            .join()
            .map_err(|_| Error::Internal("cluster.peers_dns: first resolution panicked".into()))?
    })
}

impl Cluster {
    /// The cluster of a validated config and the service running its health checks, or `None`
    /// for a node alone.
    pub fn from_config(c: &ClusterConfig) -> Result<Option<(Arc<Cluster>, HealthService)>, Error> {
        let Some(me) = c.me() else {
            return Ok(None);
        };
        let (mut lb, source) = match &c.peers_dns {
            None => (
                PeerRing::try_from_iter(c.peers.iter().copied())
                    .map_err(|e| Error::Internal(format!("cluster.peers: {e}")))?,
                Source::Static,
            ),
            Some(name) => {
                let dns = DnsDiscovery::new(name, me, system_resolver(), c.dns_interval);
                let mut lb = PeerRing::from_backends(Backends::new(Box::new(dns)));
                lb.update_frequency = Some(c.dns_interval);
                first_update(&lb)?;
                let source = Source::Dns {
                    name: name.clone(),
                    interval: c.dns_interval,
                };
                (lb, source)
            }
        };
        lb.set_health_check(health::check(c.connect_timeout));
        lb.health_check_frequency = Some(c.health_check_interval);
        lb.parallel_health_check = true;
        let svc = background_service("cluster health", lb);
        let cluster = Cluster {
            ring: Ring::new(svc.task(), me),
            auth: PeerAuth::new(c.secret.expose()),
            connect_timeout: c.connect_timeout,
            purge_timeout: c.purge_timeout,
            source,
            client: OnceCell::new(),
        };
        // Registered now, so /metrics lists the cluster's series from the start.
        let _ = metrics::cluster_metrics();
        let nodes: Vec<SocketAddr> = cluster.ring.members().iter().map(|m| m.addr).collect();
        match &cluster.source {
            Source::Static => tracing::info!(
                "cluster: {me} in a POP of {} nodes (cluster.peers): {nodes:?}",
                nodes.len()
            ),
            Source::Dns { name, interval } => tracing::info!(
                "cluster: {me} in a POP of {} nodes (cluster.peers_dns {name}, resolved every {}): {nodes:?}",
                nodes.len(),
                humantime::format_duration(*interval)
            ),
        }
        Ok(Some((Arc::new(cluster), svc)))
    }

    /// The HTTP client for node-to-node calls other than fills (purge fan-out).
    fn client(&self) -> Result<&reqwest::Client, reqwest::Error> {
        self.client.get_or_try_init(|| {
            pingora_rustls::install_default_crypto_provider();
            reqwest::Client::builder()
                .no_proxy()
                .timeout(self.purge_timeout)
                .connect_timeout(self.connect_timeout)
                .user_agent(concat!("imgedge-cluster/", env!("CARGO_PKG_VERSION")))
                .build()
        })
    }

    /// Set the per-peer health gauges and the member count (called when metrics are scraped).
    pub fn update_gauges(&self) {
        let m = metrics::cluster_metrics();
        let members = self.ring.members();
        // Peers that left the ring (DNS membership) drop out of the gauge.
        m.peer_up.reset();
        for p in &members {
            m.peer_up
                .with_label_values(&[&p.addr.to_string()])
                .set(i64::from(p.healthy));
        }
        m.members.set(members.len() as i64);
    }

    /// The ring's membership as JSON (the admin's `GET /cluster`); with an id, also its owner
    /// on the ring (`home`) and who fills it now (`owner`, skipping unhealthy peers).
    pub fn membership_json(&self, id: Option<&str>) -> String {
        let members: Vec<serde_json::Value> = self
            .ring
            .members()
            .iter()
            .map(|m| {
                serde_json::json!({
                    "node": m.addr.to_string(),
                    "self": m.me,
                    "healthy": m.healthy,
                })
            })
            .collect();
        let mut out = serde_json::json!({
            "self": self.ring.me().to_string(),
            "ring": "ketama",
            "key": "image id",
            "members": members,
        });
        match &self.source {
            Source::Static => out["discovery"] = "cluster.peers".into(),
            Source::Dns { name, interval } => {
                out["discovery"] = "cluster.peers_dns".into();
                out["peers_dns"] = name.as_str().into();
                out["dns_interval"] = humantime::format_duration(*interval).to_string().into();
            }
        }
        if let Some(id) = id {
            let owner = match self.ring.owner(id) {
                ring::Owner::Me => self.ring.me(),
                ring::Owner::Peer(a) => a,
            };
            out["id"] = id.into();
            out["home"] = self.ring.home(id).map(|a| a.to_string()).into();
            out["owner"] = owner.to_string().into();
        }
        format!("{out}\n")
    }

    /// This node's peer listener address on the ring.
    pub fn me(&self) -> SocketAddr {
        self.ring.me()
    }
}
