//! AVIF answers: their own pool, and background upgrades (serve the WebP now, the AVIF later).
//!
//! An AV1 encode costs several times a WebP encode of the same pixels (README: "AVIF encoder"),
//! so AVIF work never runs on the resize pool: it has its own threads
//! (`transform.avif_workers`, at nice 10) and queue (`transform.avif_queue`), and a full AVIF
//! pool can never delay a JPEG or WebP miss.
//!
//! In `deferred` mode (`transform.avif`, the default) a cold miss of the `avif` class is
//! answered at once with the WebP of the same prepared pixels, marked interim: a short
//! `Cache-Control` for clients and downstream caches, and [`INTERIM`] so the edge does not keep
//! it. The AVIF encode is queued here, coalesced per variant; when it lands, the next miss of
//! that variant takes it from here (no fetch, no decode, no encode) and the edge caches it
//! like any answer, so later requests are AVIF hits. A full queue skips the upgrade: the WebP
//! keeps standing in until a later request tries again. Nothing here survives a restart; a lost
//! upgrade is redone by the next request.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use moka::sync::Cache;

use super::pool::{PoolKind, ResizePool, Slot};
use super::transform::Prepared;
use super::Rendered;
use crate::cache::purge::PurgeLog;
use crate::config::{AvifMode, Config};
use crate::error::Result;
use crate::metrics::metrics;

/// Internal header on an interim answer (a WebP standing in for an AVIF being made): the edge
/// does not cache it and removes the header before a client sees it.
pub const INTERIM: http::HeaderName = http::HeaderName::from_static("x-imgedge-interim");

/// Bytes of interim WebPs and finished AVIFs kept (a pending or failed upgrade's WebP answers
/// its misses; a finished AVIF waits for the next one).
const READY_BYTES: u64 = 64 * 1024 * 1024;
/// How long an entry is kept; past it the next request starts over (a failed upgrade is
/// retried then).
const READY_TTL: Duration = Duration::from_secs(600);

/// One variant's upgrade.
#[derive(Clone)]
enum State {
    /// Queued or encoding; the interim WebP answers meanwhile (so requests that arrive before
    /// the AVIF lands cost nothing either).
    Pending(Arc<Rendered>),
    /// The AVIF, for the next miss.
    Ready(Arc<Rendered>),
}

#[derive(Clone)]
struct Entry {
    state: State,
    /// The id, and when its original was fetched: an entry older than a purge of the id is
    /// never served.
    id: String,
    fetched_at: SystemTime,
}

/// What [`Upgrades::lookup`] found for a variant.
pub enum Found {
    /// The AVIF: answer it (the edge caches it).
    Avif(Rendered),
    /// The upgrade is under way: answer this interim WebP.
    Interim(Rendered),
}

/// The AVIF pool and the upgrades in flight or ready.
pub struct Upgrades {
    pool: Arc<ResizePool>,
    mode: AvifMode,
    interim_ttl: Duration,
    entries: Cache<String, Entry>,
    purges: Option<&'static PurgeLog>,
}

impl Upgrades {
    /// From a validated config.
    pub fn from_config(cfg: &Config) -> Self {
        let t = &cfg.transform;
        Upgrades {
            pool: Arc::new(ResizePool::of_kind(
                PoolKind::Avif,
                t.avif_workers,
                t.avif_queue,
                t.retry_after,
            )),
            mode: t.avif,
            interim_ttl: t.avif_interim_ttl,
            entries: Cache::builder()
                .max_capacity(READY_BYTES)
                .weigher(|_, e: &Entry| match &e.state {
                    State::Pending(r) | State::Ready(r) => {
                        u32::try_from(r.body.len() + 256).unwrap_or(u32::MAX)
                    }
                })
                .time_to_live(READY_TTL)
                .build(),
            purges: None,
        }
    }

    /// Check entries against this node's purge records.
    pub fn with_purges(mut self, purges: &'static PurgeLog) -> Self {
        self.purges = Some(purges);
        self
    }

    /// Whether negotiated AVIF answers are deferred.
    pub fn deferred(&self) -> bool {
        self.mode == AvifMode::Deferred
    }

    /// `Cache-Control: max-age` of an interim answer.
    pub fn interim_ttl(&self) -> Duration {
        self.interim_ttl
    }

    /// The pool AVIF encodes run on.
    pub fn pool(&self) -> &ResizePool {
        &self.pool
    }

    /// The finished AVIF or the interim WebP of the variant keyed `key`, if an upgrade exists.
    /// A finished AVIF is handed out once (the edge keeps it from then on).
    pub fn lookup(&self, key: &str) -> Option<Found> {
        let entry = self.entries.get(key)?;
        if self
            .purges
            .is_some_and(|p| p.is_purged(&entry.id, entry.fetched_at))
        {
            self.entries.invalidate(key);
            return None;
        }
        match entry.state {
            State::Pending(interim) => Some(Found::Interim((*interim).clone())),
            State::Ready(avif) => {
                self.entries.invalidate(key);
                metrics().avif_upgrades.with_label_values(&["served"]).inc();
                Some(Found::Avif((*avif).clone()))
            }
        }
    }

    /// Queue the AVIF encode of `prepared` for the variant keyed `key`, while `interim` answers
    /// for it. `label` turns the encoded bytes into the answer (its tags). Skipped, not an
    /// error, when the AVIF pool is full or the variant is already queued.
    pub fn defer(
        &self,
        key: String,
        id: String,
        fetched_at: SystemTime,
        prepared: Prepared,
        interim: Rendered,
        label: impl FnOnce(Vec<u8>) -> Rendered + Send + 'static,
    ) {
        let upgrades = &metrics().avif_upgrades;
        if self.entries.contains_key(&key) {
            return; // coalesced: one encode per variant
        }
        let slot: Slot = match self.pool.admit() {
            Ok(s) => s,
            Err(_) => {
                upgrades.with_label_values(&["skipped"]).inc();
                return;
            }
        };
        let entry = Entry {
            state: State::Pending(Arc::new(interim)),
            id,
            fetched_at,
        };
        self.entries.insert(key.clone(), entry.clone());
        upgrades.with_label_values(&["queued"]).inc();
        let (pool, entries) = (self.pool.clone(), self.entries.clone());
        tokio::spawn(async move {
            // Labelled on the AVIF thread too: a tag may hash the body.
            let encoded: Result<Rendered> = pool
                .run(&slot, move || Ok(label(prepared.encode()?.bytes)))
                .await;
            drop(slot);
            match encoded {
                Ok(avif) => {
                    entries.insert(
                        key,
                        Entry {
                            state: State::Ready(Arc::new(avif)),
                            ..entry
                        },
                    );
                    upgrades.with_label_values(&["done"]).inc();
                }
                Err(e) => {
                    // The pending entry stays until its TTL: its WebP keeps answering, and the
                    // variant is not decoded and encoded again on every request meanwhile.
                    tracing::warn!(key = %key, "AVIF upgrade failed: {e}");
                    upgrades.with_label_values(&["failed"]).inc();
                }
            }
        });
    }
}
