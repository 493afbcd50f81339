//! Membership from DNS: `cluster.peers_dns` (`host:port`) names the POP's nodes, one address
//! record per node, re-resolved every `cluster.dns_interval` (autoscaling adds and replaces
//! nodes; their records follow).
//!
//! [`DnsDiscovery`] is a pingora-load-balancing `ServiceDiscovery`: the ring's `LoadBalancer`
//! calls it every `update_frequency` from its background service (the one that also runs the
//! health checks) and rebuilds the Ketama ring only when the set of nodes differs from the last
//! one (`Backends::update`). A health change never rebuilds the ring, and Ketama moves only the
//! keys of a node that joined or left.
//!
//! What a production POP needs from it:
//! - **Never an empty ring.** A failed resolution, a timed-out one (bounded by the interval) or
//!   an empty answer keeps the last good membership; it is logged (once per outage) and counted
//!   in `imgedge_cluster_dns_resolutions_total{result}`.
//! - **This node is always on its own ring**, listed by DNS or not (its record may not be
//!   registered yet), so it can always fill locally and never asks itself over the network.
//! - **At most one lookup in flight**: the system resolver (`getaddrinfo`, so `/etc/hosts` and
//!   `nsswitch.conf` apply) blocks a thread; a lookup that outlives its interval is awaited
//!   again next time instead of starting another, so a hung resolver never piles up threads.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::{Backend, Extensions};
use tokio::task::JoinHandle;

use super::metrics::cluster_metrics;

/// Resolves `host:port` to socket addresses (blocking; run on a blocking thread).
pub type Resolve = Arc<dyn Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

/// The system resolver (`getaddrinfo`), as `std::net::ToSocketAddrs` uses it.
pub fn system_resolver() -> Resolve {
    Arc::new(|name: &str| Ok(name.to_socket_addrs()?.collect()))
}

type Lookup = JoinHandle<io::Result<Vec<SocketAddr>>>;

/// The POP's nodes: the addresses `name` resolves to, plus this node.
pub struct DnsDiscovery {
    name: String,
    me: SocketAddr,
    resolve: Resolve,
    timeout: Duration,
    state: Mutex<State>,
    // A lookup that outlived its timeout, awaited again by the next discovery.
    inflight: tokio::sync::Mutex<Option<Lookup>>,
}

struct State {
    /// The last good membership (this node included); never empty.
    members: BTreeSet<Backend>,
    /// Whether the last resolution failed (the outage is logged once).
    failing: bool,
}

fn backend(addr: SocketAddr) -> Backend {
    Backend {
        addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(addr),
        weight: 1,
        ext: Extensions::new(),
    }
}

/// Why one resolution gave no membership.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Error(String),
    #[error("no addresses in the answer")]
    Empty,
    #[error("no answer in time")]
    Timeout,
}

impl DnsDiscovery {
    /// Discovery of `name` (`host:port`) for the node `me`; one lookup may take `timeout`.
    /// Until the first good answer the membership is this node alone.
    pub fn new(name: &str, me: SocketAddr, resolve: Resolve, timeout: Duration) -> DnsDiscovery {
        DnsDiscovery {
            name: name.to_string(),
            me,
            resolve,
            timeout,
            state: Mutex::new(State {
                members: BTreeSet::from([backend(me)]),
                failing: false,
            }),
            inflight: tokio::sync::Mutex::new(None),
        }
    }

    /// One lookup of the name, at most `timeout` long.
    async fn lookup(&self) -> Result<Vec<SocketAddr>, Failure> {
        let mut slot = self.inflight.lock().await;
        let mut lookup = match slot.take() {
            Some(pending) => pending,
            None => {
                let (resolve, name) = (self.resolve.clone(), self.name.clone());
                tokio::task::spawn_blocking(move || resolve(&name))
            }
        };
        match tokio::time::timeout(self.timeout, &mut lookup).await {
            Err(_) => {
                *slot = Some(lookup);
                Err(Failure::Timeout)
            }
            Ok(Err(join)) => Err(Failure::Error(join.to_string())),
            Ok(Ok(Err(e))) => Err(Failure::Error(e.to_string())),
            Ok(Ok(Ok(addrs))) if addrs.is_empty() => Err(Failure::Empty),
            Ok(Ok(Ok(addrs))) => Ok(addrs),
        }
    }

    /// Resolve once and fold the answer into the membership; returns the membership.
    pub async fn refresh(&self) -> BTreeSet<Backend> {
        let answer = self.lookup().await;
        let result = match &answer {
            Ok(_) => "ok",
            Err(Failure::Error(_)) => "error",
            Err(Failure::Empty) => "empty",
            Err(Failure::Timeout) => "timeout",
        };
        cluster_metrics()
            .dns_resolutions
            .with_label_values(&[result])
            .inc();
        let mut state = self.state.lock();
        match answer {
            Ok(addrs) => {
                if state.failing {
                    tracing::info!("cluster: {} resolves again", self.name);
                    state.failing = false;
                }
                let listed = addrs.contains(&self.me);
                let mut members: BTreeSet<Backend> = addrs.into_iter().map(backend).collect();
                members.insert(backend(self.me));
                if members != state.members {
                    tracing::info!(
                        "cluster: {} now names {} nodes: {}{}",
                        self.name,
                        members.len(),
                        list(&members),
                        if listed {
                            String::new()
                        } else {
                            format!(" ({} added: not in the answer yet)", self.me)
                        }
                    );
                    cluster_metrics().membership_changes.inc();
                    state.members = members;
                }
            }
            Err(failure) => {
                if !state.failing {
                    tracing::warn!(
                        "cluster: resolving {} failed ({failure}); keeping the last membership: {}",
                        self.name,
                        list(&state.members)
                    );
                    state.failing = true;
                }
            }
        }
        state.members.clone()
    }

    /// The current membership (this node included).
    pub fn members(&self) -> BTreeSet<Backend> {
        self.state.lock().members.clone()
    }
}

fn list(members: &BTreeSet<Backend>) -> String {
    members
        .iter()
        .map(|b| b.addr.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> pingora_error::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        // Never an error: a failed resolution answers the last membership, which leaves the
        // ring as it is (the load balancer rebuilds only on a change).
        Ok((self.refresh().await, HashMap::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ring::{Owner, PeerRing, Ring};
    use pingora_load_balancing::Backends;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn addrs(members: &BTreeSet<Backend>) -> Vec<SocketAddr> {
        members
            .iter()
            .filter_map(|b| b.addr.as_inet().copied())
            .collect()
    }

    /// A resolver whose answer the test sets.
    fn scripted() -> (Resolve, Arc<Mutex<io::Result<Vec<SocketAddr>>>>) {
        let answer: Arc<Mutex<io::Result<Vec<SocketAddr>>>> = Arc::new(Mutex::new(Ok(Vec::new())));
        let a = answer.clone();
        let resolve: Resolve = Arc::new(move |name: &str| {
            assert_eq!(name, "pop-a.internal:9092");
            match &*a.lock() {
                Ok(v) => Ok(v.clone()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            }
        });
        (resolve, answer)
    }

    fn set(answer: &Mutex<io::Result<Vec<SocketAddr>>>, to: io::Result<Vec<&str>>) {
        *answer.lock() = to.map(|v| v.into_iter().map(addr).collect());
    }

    #[tokio::test]
    async fn a_failed_or_empty_answer_keeps_the_last_membership_and_self_is_always_there() {
        let me = addr("10.0.1.5:9092");
        let (resolve, answer) = scripted();
        let d = DnsDiscovery::new("pop-a.internal:9092", me, resolve, Duration::from_secs(5));
        // Before any answer, and after a failing first one: this node alone, never empty.
        assert_eq!(addrs(&d.members()), [me]);
        set(&answer, Err(io::Error::other("SERVFAIL")));
        assert_eq!(addrs(&d.refresh().await), [me]);

        // DNS does not list this node yet: it is on its own ring anyway.
        set(&answer, Ok(vec!["10.0.1.6:9092", "10.0.1.7:9092"]));
        let three = vec![me, addr("10.0.1.6:9092"), addr("10.0.1.7:9092")];
        assert_eq!(addrs(&d.refresh().await), three);

        // A failure, then an empty answer: the last good membership stays, counted.
        let errors = cluster_metrics()
            .dns_resolutions
            .with_label_values(&["error"]);
        let empties = cluster_metrics()
            .dns_resolutions
            .with_label_values(&["empty"]);
        let (e0, m0) = (errors.get(), empties.get());
        set(
            &answer,
            Err(io::Error::new(io::ErrorKind::NotFound, "NXDOMAIN")),
        );
        assert_eq!(addrs(&d.refresh().await), three);
        set(&answer, Ok(vec![]));
        assert_eq!(addrs(&d.refresh().await), three);
        assert!(errors.get() > e0 && empties.get() > m0);

        // A node leaves (scale-in), another is listed with this one: the answer wins.
        set(&answer, Ok(vec!["10.0.1.5:9092", "10.0.1.8:9092"]));
        assert_eq!(addrs(&d.refresh().await), [me, addr("10.0.1.8:9092")]);
    }

    #[tokio::test]
    async fn a_hung_resolver_times_out_and_is_awaited_again_not_restarted() {
        let me = addr("10.0.1.5:9092");
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let c = calls.clone();
        let resolve: Resolve = Arc::new(move |_: &str| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Blocks until the test lets it answer.
            let _ = rx.lock().unwrap().recv();
            Ok(vec!["10.0.1.6:9092".parse().unwrap()])
        });
        let d = DnsDiscovery::new(
            "pop-a.internal:9092",
            me,
            resolve,
            Duration::from_millis(20),
        );
        assert_eq!(addrs(&d.refresh().await), [me]);
        assert_eq!(addrs(&d.refresh().await), [me]);
        tx.send(()).unwrap();
        // The same lookup finishes and is taken up; no second one was started meanwhile.
        loop {
            let m = d.refresh().await;
            if m.len() == 2 {
                break;
            }
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_walk_past_down_nodes_is_bounded_by_the_current_ring_not_the_first() {
        // The ring starts with this node alone and grows to 200 nodes, of which only this one
        // and X stay up. Ketama's points depend on each node's address only, so the owner
        // must be who a two-node ring of {me, X} names: the walk past down nodes has to be
        // allowed as many steps as the grown ring has points (gaps here exceed 160 points).
        let me = addr("10.0.0.1:9092");
        let x = addr("10.0.0.2:9092");
        let (resolve, answer) = scripted();
        let d = DnsDiscovery::new("pop-a.internal:9092", me, resolve, Duration::from_secs(5));
        let lb = Arc::new(PeerRing::from_backends(Backends::new(Box::new(d))));
        lb.update().await.unwrap();
        let ring = Ring::new(lb.clone(), me);
        assert_eq!(ring.members().len(), 1);
        *answer.lock() = Ok((0..200u32)
            .map(|i| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250 + 1) as u8], 9092)))
            .collect());
        lb.update().await.unwrap();
        assert_eq!(ring.members().len(), 200);
        for b in lb.backends().get_backend().iter() {
            let a = b.addr.as_inet().copied();
            if a != Some(me) && a != Some(x) {
                lb.backends().set_enable(b, false);
            }
        }
        let two = Ring::new(Arc::new(PeerRing::try_from_iter([me, x]).unwrap()), me);
        let mut peer = 0;
        for i in 0..3000 {
            let id = format!("{i:08x}photo.jpg");
            assert_eq!(ring.owner(&id), two.owner(&id), "{id}");
            peer += usize::from(two.owner(&id) == Owner::Peer(x));
        }
        assert!(peer > 1000, "{peer} of 3000 owned by X");
    }

    #[tokio::test]
    async fn the_ring_follows_membership_and_only_a_joining_node_takes_keys() {
        let me = addr("10.0.1.5:9092");
        let (resolve, answer) = scripted();
        let d = DnsDiscovery::new("pop-a.internal:9092", me, resolve, Duration::from_secs(5));
        let lb = Arc::new(PeerRing::from_backends(Backends::new(Box::new(d))));
        set(&answer, Ok(vec!["10.0.1.5:9092"]));
        lb.update().await.unwrap();
        let ring = Ring::new(lb.clone(), me);
        assert_eq!(ring.members().len(), 1);
        assert_eq!(ring.owner("abc"), Owner::Me);

        // Scale out to three: the same ring (no restart) now spreads ids over all three,
        // reaching the last points of a bigger ring (max_steps follows the membership).
        set(
            &answer,
            Ok(vec!["10.0.1.5:9092", "10.0.1.6:9092", "10.0.1.7:9092"]),
        );
        lb.update().await.unwrap();
        assert_eq!(ring.members().len(), 3);
        let ids: Vec<String> = (0..3000).map(|i| format!("{i:08x}photo.jpg")).collect();
        let before: Vec<SocketAddr> = ids.iter().map(|id| ring.home(id).unwrap()).collect();
        let owners: std::collections::HashSet<_> = before.iter().collect();
        assert_eq!(owners.len(), 3);

        // A fourth node joins: every id that moves, moves to it; the others keep their owner.
        set(
            &answer,
            Ok(vec![
                "10.0.1.5:9092",
                "10.0.1.6:9092",
                "10.0.1.7:9092",
                "10.0.1.9:9092",
            ]),
        );
        lb.update().await.unwrap();
        let new = addr("10.0.1.9:9092");
        let mut moved = 0;
        for (id, old) in ids.iter().zip(&before) {
            let now = ring.home(id).unwrap();
            if now != *old {
                assert_eq!(now, new, "{id} moved from {old} to {now}");
                moved += 1;
            }
        }
        // About a quarter moves (160 points per node); nowhere near all of them.
        assert!((300..1200).contains(&moved), "{moved} of 3000 moved");

        // DNS fails: the ring is left as it is.
        set(&answer, Err(io::Error::other("timeout")));
        lb.update().await.unwrap();
        assert_eq!(ring.members().len(), 4);
        assert!(ids.iter().all(|id| ring.home(id).is_some()));
    }
}
