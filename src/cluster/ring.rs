//! Ownership: which node of the POP owns an image id.
//!
//! Every node builds the same Ketama ring (pingora-load-balancing's `KetamaHashing`, nginx's
//! ketama: CRC32, 160 points per node) over the same membership (`cluster.peers`, or the
//! addresses of `cluster.peers_dns`, see [`super::discovery`]), and hashes the **image id** onto
//! it, not the variant, so one node owns every size of an image. Health is applied at pick time
//! with `select_with`: an unhealthy owner is skipped and the walk goes on to the next node on the
//! ring. The ring itself is never rebuilt on a health change, so the keys of healthy nodes never
//! move; only a dead node's keys go (for as long as it is down) to their successors. It is
//! rebuilt (by the load balancer) only when the membership changes, and Ketama then moves only
//! the keys of the node that joined or left. This node is always acceptable: it never asks
//! itself over the network.

use std::net::SocketAddr;
use std::sync::Arc;

use pingora_load_balancing::selection::consistent::KetamaHashing;
use pingora_load_balancing::{Backend, LoadBalancer};

/// The load balancer that holds the ring and the peers' health.
pub type PeerRing = LoadBalancer<KetamaHashing>;

/// Points each node has on the ring (`KetamaHashing`'s v1 ring).
const POINTS_PER_NODE: usize = 160;

/// Who fills a miss for an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// This node (it owns the id, or every node before it on the ring is down).
    Me,
    /// Another node's peer listener.
    Peer(SocketAddr),
}

/// One node of the ring as the admin listener reports it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its peer listener.
    pub addr: SocketAddr,
    /// Whether it is this node.
    pub me: bool,
    /// Its last health-check result (this node is always healthy to itself).
    pub healthy: bool,
}

/// The ring and this node's place on it.
pub struct Ring {
    lb: Arc<PeerRing>,
    me: SocketAddr,
}

fn inet(b: &Backend) -> Option<SocketAddr> {
    b.addr.as_inet().copied()
}

impl Ring {
    /// The ring over `lb`'s backends, seen from `me`.
    pub fn new(lb: Arc<PeerRing>, me: SocketAddr) -> Ring {
        Ring { lb, me }
    }

    /// Enough steps to visit every point of the current ring once, so the walk always reaches
    /// this node. Read at pick time (one atomic load): the membership may change at run time.
    /// During a rebuild the ring can briefly be larger than this count; a walk cut short then
    /// ends in `Owner::Me`, which is always safe.
    fn max_steps(&self) -> usize {
        self.lb.backends().get_backend().len().max(1) * POINTS_PER_NODE + 1
    }

    /// Who fills a miss of `id` now: the first node on the ring from the id's hash that is
    /// healthy (or is this node).
    pub fn owner(&self, id: &str) -> Owner {
        let me = self.me;
        let pick = self
            .lb
            .select_with(id.as_bytes(), self.max_steps(), |b, healthy| {
                healthy || inet(b) == Some(me)
            });
        match pick.as_ref().and_then(inet) {
            Some(addr) if addr != me => Owner::Peer(addr),
            _ => Owner::Me,
        }
    }

    /// The id's owner when every node is healthy (its place on the ring).
    pub fn home(&self, id: &str) -> Option<SocketAddr> {
        self.lb
            .select_with(id.as_bytes(), self.max_steps(), |_, _| true)
            .as_ref()
            .and_then(inet)
    }

    /// Every node, in address order, with its health.
    pub fn members(&self) -> Vec<Member> {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .filter_map(|b| {
                let addr = inet(b)?;
                Some(Member {
                    addr,
                    me: addr == self.me,
                    healthy: addr == self.me || backends.ready(b),
                })
            })
            .collect()
    }

    /// This node's address on the ring.
    pub fn me(&self) -> SocketAddr {
        self.me
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(peers: &[SocketAddr], me: SocketAddr) -> Ring {
        let lb = PeerRing::try_from_iter(peers.iter().copied()).unwrap();
        Ring::new(Arc::new(lb), me)
    }

    #[test]
    fn every_node_agrees_and_every_size_of_an_id_has_one_owner() {
        let peers: Vec<SocketAddr> = (0..3)
            .map(|i| format!("10.0.1.{}:9092", 5 + i).parse().unwrap())
            .collect();
        let rings: Vec<Ring> = peers.iter().map(|&me| ring(&peers, me)).collect();
        let mut per_node = [0usize; 3];
        for i in 0..3000 {
            let id = format!("{i:08x}photo.jpg");
            let home = rings[0].home(&id).unwrap();
            for r in &rings {
                assert_eq!(r.home(&id), Some(home));
                let expect = if home == r.me() {
                    Owner::Me
                } else {
                    Owner::Peer(home)
                };
                assert_eq!(r.owner(&id), expect);
            }
            per_node[peers.iter().position(|p| *p == home).unwrap()] += 1;
        }
        // Ketama spreads ids roughly evenly (160 points per node).
        assert!(per_node.iter().all(|&n| n > 700), "{per_node:?}");
    }
}
