//! Mirror mode: replay a sample of live image requests to another node, to warm it before it
//! takes traffic (the way a new POP is pre-warmed behind a live one).
//!
//! The edge's `logging` phase, which runs after the response is complete, offers each served
//! variant to [`Mirror::offer`]: a sampling decision (an atomic counter, no lock) and a
//! non-blocking `try_send` of the canonical URI onto a bounded queue, dropped and counted when
//! the queue is full. A background service on its own runtime ([`MirrorService`]) drains the
//! queue with fire-and-forget GETs, so neither a slow nor an unreachable target can reach the
//! live request. Mirrored requests carry [`MIRROR_HEADER`] and are never mirrored again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::IntCounter;
use tokio::sync::{mpsc, Semaphore};

use crate::client;
pub use crate::client::MIRROR_HEADER;
use crate::config::MirrorConfig;
use crate::metrics::metrics;
use crate::policy::signing::{self, Signer};
use crate::variant::Variant;

/// The edge's side: sample and enqueue.
pub struct Mirror {
    tx: mpsc::Sender<String>,
    sample: f64,
    seen: AtomicU64,
    // Resolved once: no label lookup on the request path.
    queued: IntCounter,
    dropped: IntCounter,
    // With signed URLs on, the target (same keys) would refuse unsigned requests.
    signer: Option<Signer>,
}

impl Mirror {
    /// Whether the `n`-th request (from 0) is in the sample: an even spread of exactly
    /// `sample` of the requests, without a random number generator on the request path.
    fn sampled(sample: f64, n: u64) -> bool {
        ((n + 1) as f64 * sample).floor() > (n as f64 * sample).floor()
    }

    /// Offer a served variant for mirroring. Never blocks; drops (and counts) when the queue
    /// is full or the sender is gone.
    pub fn offer(&self, variant: &Variant) {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        if !Self::sampled(self.sample, n) {
            return;
        }
        let uri = variant.canonical_uri();
        let uri = match &self.signer {
            Some(s) => signing::append(&uri, &s.sign(&variant.signed_uri())),
            None => uri,
        };
        match self.tx.try_send(uri) {
            Ok(()) => self.queued.inc(),
            Err(_) => self.dropped.inc(),
        }
    }
}

/// The sending side: a background service draining the queue.
pub struct MirrorService {
    rx: Mutex<Option<mpsc::Receiver<String>>>,
    target: String,
    timeout: Duration,
    concurrency: usize,
    ca_file: Option<std::path::PathBuf>,
}

/// The edge's [`Mirror`] and the service that sends, or `None` when mirroring is off.
/// `signing_keys` are `policy.signing_keys`: mirrored URLs are signed like clients' are.
pub fn from_config(cfg: &MirrorConfig, signing_keys: &[String]) -> Option<(Mirror, MirrorService)> {
    if cfg.target.is_empty() || cfg.sample <= 0.0 {
        return None;
    }
    let (tx, rx) = mpsc::channel(cfg.queue_len);
    Some((
        Mirror {
            tx,
            sample: cfg.sample,
            seen: AtomicU64::new(0),
            queued: metrics().mirror.with_label_values(&["queued"]),
            dropped: metrics().mirror.with_label_values(&["dropped"]),
            signer: Signer::new(signing_keys),
        },
        MirrorService {
            rx: Mutex::new(Some(rx)),
            target: cfg.target.trim_end_matches('/').to_string(),
            timeout: cfg.timeout,
            concurrency: cfg.concurrency,
            ca_file: (!cfg.ca_file.as_os_str().is_empty()).then(|| cfg.ca_file.clone()),
        },
    ))
}

#[async_trait]
impl BackgroundService for MirrorService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut rx) = self.rx.lock().take() else {
            return;
        };
        // Created here, on this service's runtime, after any daemon fork.
        let http = match client::client(self.timeout, self.concurrency, self.ca_file.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("mirror disabled: cannot build the HTTP client: {e}");
                return;
            }
        };
        let permits = Arc::new(Semaphore::new(self.concurrency));
        tracing::info!(target = %self.target, "mirroring to another node");
        loop {
            // While all permits are taken the queue fills and the edge drops: bounded work.
            let permit = tokio::select! {
                _ = shutdown.changed() => return,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let uri = tokio::select! {
                _ = shutdown.changed() => return,
                u = rx.recv() => match u {
                    Some(u) => u,
                    None => return,
                },
            };
            let (http, url) = (http.clone(), format!("{}{uri}", self.target));
            tokio::spawn(async move {
                let result = match client::fetch(&http, &url, true).await {
                    Ok(f) if (200..300).contains(&f.status) || f.status == 304 => "ok",
                    Ok(f) => {
                        tracing::debug!(url, status = f.status, "mirror target answered");
                        "error"
                    }
                    Err(e) => {
                        tracing::debug!(url, "mirror request failed: {e}");
                        "error"
                    }
                };
                metrics().mirror.with_label_values(&[result]).inc();
                drop(permit);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_exact_and_even() {
        for (sample, want) in [(1.0, 1000), (0.5, 500), (0.1, 100), (0.0, 0), (0.333, 333)] {
            let n = (0..1000).filter(|&n| Mirror::sampled(sample, n)).count();
            assert_eq!(n, want, "{sample}");
        }
        // Even: with 0.5, every other request.
        let picks: Vec<bool> = (0..6).map(|n| Mirror::sampled(0.5, n)).collect();
        assert_eq!(picks, [false, true, false, true, false, true]);
    }

    #[test]
    fn a_full_queue_drops_without_blocking() {
        let cfg = MirrorConfig {
            target: "http://127.0.0.1:1".into(),
            queue_len: 2,
            ..MirrorConfig::default()
        };
        let (m, svc) = from_config(&cfg, &[]).unwrap();
        let v = Variant::parse("/image/a.jpg", Some("size=1x"), &Default::default()).unwrap();
        let dropped = || metrics().mirror.with_label_values(&["dropped"]).get();
        let before = dropped();
        for _ in 0..5 {
            m.offer(&v);
        }
        assert_eq!(dropped() - before, 3);
        let mut rx = svc.rx.lock().take().unwrap();
        assert_eq!(
            rx.try_recv().unwrap(),
            "/image/a.jpg?size=1x&fit=inside&q=80"
        );
        assert!(
            from_config(&MirrorConfig::default(), &[]).is_none(),
            "off by default"
        );
    }
}
