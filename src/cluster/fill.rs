//! Peer fill: on a miss, ask the id's owner instead of the local origin.
//!
//! The edge's `upstream_peer` asks [`FillState::pick`]: the owner's peer listener when another
//! node owns the id and is healthy, else `None` (the local origin socket, as on a single node).
//! pingora-cache, its lock, stale and Range work unchanged on the asking node, which caches the
//! owner's answer like any origin answer; the owner runs its normal fill.
//!
//! Failure never fails the request: a refused or timed-out connect, an owner that breaks off
//! before anything was sent to the client, or an owner answering 5xx (its S3 failing, its
//! resize pool full: [`FillState::refuses`]) marks the attempt failed ([`FillState::failed`]),
//! asks Pingora to retry, and the retry's `upstream_peer` picks the local origin.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};

use super::listener::AUTH_HEADER;
use super::metrics::cluster_metrics;
use super::ring::Owner;
use super::Cluster;

/// The header naming the owner a response was filled from (`<peer listener> <owner's X-Cache>`).
pub const PEER_HEADER: &str = "x-cache-peer";

/// Per-request peer-fill state (part of the edge's request context).
#[derive(Debug, Default)]
pub struct FillState {
    /// The owner asked for this request's fill, and when.
    asked: Option<(SocketAddr, Instant)>,
    /// The owner's `X-Cache` on its answer.
    owner_cache: Option<String>,
    /// Asking the owner failed: fill locally.
    fell_back: bool,
}

impl FillState {
    /// The owner's peer listener to fill `id` from, or `None` to fill from the local origin.
    pub fn pick(
        &mut self,
        cluster: &Cluster,
        id: &str,
        read_timeout: Duration,
    ) -> Option<Box<HttpPeer>> {
        self.asked = None;
        if self.fell_back {
            return None;
        }
        let Owner::Peer(addr) = cluster.ring.owner(id) else {
            return None;
        };
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(cluster.connect_timeout);
        peer.options.total_connection_timeout = Some(cluster.connect_timeout);
        peer.options.read_timeout = Some(read_timeout);
        peer.options.write_timeout = Some(Duration::from_secs(5));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        self.asked = Some((addr, Instant::now()));
        Some(Box::new(peer))
    }

    /// Sign the request to the owner (after the edge has written it).
    pub fn sign(&self, cluster: &Cluster, req: &mut RequestHeader) -> pingora_error::Result<()> {
        if self.asked.is_some() {
            let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let proof = cluster.auth.sign(req.method.as_str(), target);
            req.insert_header(AUTH_HEADER, proof)?;
        }
        Ok(())
    }

    /// The owner answered: count it and take its `X-Cache` off the object.
    pub fn answered(&mut self, resp: &mut ResponseHeader) {
        let Some((addr, asked)) = self.asked else {
            return;
        };
        let peer = addr.to_string();
        let m = cluster_metrics();
        m.peer_requests
            .with_label_values(&[peer.as_str(), "ok"])
            .inc();
        m.peer_duration
            .with_label_values(&[&peer])
            .observe(asked.elapsed().as_secs_f64());
        self.owner_cache = resp
            .remove_header("x-cache")
            .and_then(|v| v.to_str().ok().map(str::to_string));
    }

    /// Whether an answer with `status` from the owner is to be refused and filled locally:
    /// a 5xx says the owner could not make the object (its source failing, its pool busy),
    /// not that the object cannot be made; this node's own origin may well make it.
    pub fn refuses(&self, status: http::StatusCode) -> bool {
        self.asked.is_some() && status.is_server_error()
    }

    /// Asking the owner failed (`nothing_sent`: no response header went to the client yet).
    /// Returns whether to retry, which then fills locally.
    pub fn failed(&mut self, nothing_sent: bool) -> bool {
        let Some((addr, _)) = self.asked.take() else {
            return false;
        };
        cluster_metrics()
            .peer_requests
            .with_label_values(&[addr.to_string().as_str(), "fallback"])
            .inc();
        self.fell_back = true;
        nothing_sent
    }

    /// The `X-Cache-Peer` value for a response filled from the owner.
    pub fn header(&self) -> Option<String> {
        let (addr, _) = self.asked?;
        Some(match &self.owner_cache {
            Some(c) => format!("{addr} {c}"),
            None => addr.to_string(),
        })
    }
}
