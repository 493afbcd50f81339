//! The cluster's metrics, registered in the process registry ([`crate::metrics`]) the first time
//! a cluster is built, so a single node's `/metrics` does not list them.

use once_cell::sync::Lazy;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

/// Per-peer and purge metrics.
pub struct ClusterMetrics {
    /// Fills asked of a peer, by peer and result (`ok`: it answered; `fallback`: connection
    /// refused, timeout or broken answer, filled locally instead).
    pub peer_requests: IntCounterVec,
    /// Time from asking a peer to its response header, by peer.
    pub peer_duration: HistogramVec,
    /// Whether each peer passed its last health check (set when scraped).
    pub peer_up: IntGaugeVec,
    /// Health flips, by peer and new state (`up`, `down`).
    pub health_changes: IntCounterVec,
    /// Requests refused on the peer listener (no or bad proof).
    pub refused: IntCounterVec,
    /// Purge fan-out confirmations, by peer and result (`ok`, `error`).
    pub purge_peers: IntCounterVec,
    /// From a purge request to the last node's confirmation (or give-up), by scope.
    pub purge_duration: HistogramVec,
    /// Resolutions of `cluster.peers_dns`, by result (`ok`; `error`, `empty`, `timeout`: the
    /// last membership was kept).
    pub dns_resolutions: IntCounterVec,
    /// Times the DNS membership changed (a node joined or left; the first answer counts once).
    pub membership_changes: IntCounter,
    /// Nodes on the ring, this one included.
    pub members: IntGauge,
}

static METRICS: Lazy<ClusterMetrics> = Lazy::new(|| {
    let r = &crate::metrics::metrics().registry;
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric");
        r.register(Box::new(c.clone())).expect("registered once");
        c
    };
    let histogram = |name: &str, help: &str, labels: &[&str]| {
        let buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("static metric");
        r.register(Box::new(h.clone())).expect("registered once");
        h
    };
    let peer_up = IntGaugeVec::new(
        Opts::new(
            "imgedge_cluster_peer_up",
            "1 when the peer passed its last health check",
        ),
        &["peer"],
    )
    .expect("static metric");
    r.register(Box::new(peer_up.clone()))
        .expect("registered once");
    let membership_changes = IntCounter::new(
        "imgedge_cluster_membership_changes_total",
        "Times the ring's membership changed (a node joined or left)",
    )
    .expect("static metric");
    r.register(Box::new(membership_changes.clone()))
        .expect("registered once");
    let members = IntGauge::new(
        "imgedge_cluster_members",
        "Nodes on the ring, this one included",
    )
    .expect("static metric");
    r.register(Box::new(members.clone()))
        .expect("registered once");
    ClusterMetrics {
        peer_requests: counter(
            "imgedge_cluster_peer_requests_total",
            "Misses asked of the owner, by peer and result (ok, fallback)",
            &["peer", "result"],
        ),
        peer_duration: histogram(
            "imgedge_cluster_peer_duration_seconds",
            "Time from asking the owner to its response header",
            &["peer"],
        ),
        peer_up,
        health_changes: counter(
            "imgedge_cluster_health_changes_total",
            "Peer health flips, by peer and new state",
            &["peer", "state"],
        ),
        refused: counter(
            "imgedge_cluster_refused_total",
            "Requests refused on the peer listener, by reason",
            &["reason"],
        ),
        purge_peers: counter(
            "imgedge_cluster_purge_confirmations_total",
            "Purge fan-out answers, by peer and result (ok, error)",
            &["peer", "result"],
        ),
        purge_duration: histogram(
            "imgedge_cluster_purge_duration_seconds",
            "From a purge request to the last node's confirmation",
            &["scope"],
        ),
        dns_resolutions: counter(
            "imgedge_cluster_dns_resolutions_total",
            "Resolutions of cluster.peers_dns, by result (ok, error, empty, timeout)",
            &["result"],
        ),
        membership_changes,
        members,
    }
});

/// The cluster metrics (registered on first use).
pub fn cluster_metrics() -> &'static ClusterMetrics {
    &METRICS
}
