//! Draining: the flag that is up once the server starts shutting down (SIGQUIT for a graceful
//! upgrade, SIGTERM for a stop).
//!
//! While draining, every edge response carries `Connection: close`, so kept-alive clients move
//! to the new process (or another node) between requests instead of having a pooled connection
//! closed under a request they are sending; `/readyz` answers 503 so a load balancer stops
//! sending new connections. Pingora passes the shutdown signal only to services, so a small
//! background service watches it and raises the flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

/// Shared, cheap to read on every response.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    /// Whether the server is shutting down.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// The background service that raises this flag at shutdown.
    pub fn watcher(&self) -> DrainWatcher {
        DrainWatcher(self.clone())
    }
}

/// Raises [`Draining`] when the shutdown signal comes.
pub struct DrainWatcher(Draining);

#[async_trait]
impl BackgroundService for DrainWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        tracing::info!("draining: closing kept-alive connections after their current response");
        self.0 .0.store(true, Ordering::Relaxed);
    }
}
