//! Peer health: pingora-load-balancing's `TcpHealthCheck` on every peer listener, run by the
//! ring's `LoadBalancer` as a Pingora background service every `cluster.health_check_interval`.
//!
//! One failed connect marks a peer down, one success brings it back. Down peers are skipped when
//! an owner is picked ([`super::ring::Ring::owner`]); the ring is not rebuilt. The health check
//! is the slow path: a request that meets a dead owner before the check notices falls back to
//! filling locally at once (the edge's `fail_to_connect` / `error_while_proxy`).

use std::time::Duration;

use async_trait::async_trait;
use pingora_load_balancing::health_check::{HealthObserve, TcpHealthCheck};
use pingora_load_balancing::Backend;

use super::metrics::cluster_metrics;

/// Logs and counts health changes.
struct Observer;

#[async_trait]
impl HealthObserve for Observer {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let peer = target.addr.to_string();
        if healthy {
            tracing::info!("cluster: peer {peer} is up");
        } else {
            tracing::warn!("cluster: peer {peer} is down; its ids are filled by the next node");
        }
        cluster_metrics()
            .health_changes
            .with_label_values(&[peer.as_str(), if healthy { "up" } else { "down" }])
            .inc();
    }
}

/// The check for every peer listener: a TCP connect within `connect_timeout`.
pub fn check(connect_timeout: Duration) -> Box<TcpHealthCheck> {
    let mut hc = TcpHealthCheck::new();
    hc.peer_template.options.connection_timeout = Some(connect_timeout);
    hc.consecutive_failure = 1;
    hc.consecutive_success = 1;
    hc.health_changed_callback = Some(Box::new(Observer));
    hc
}
