//! Durable purge records in S3: what a node that was down, partitioned or in another POP learns
//! of purges it did not receive.
//!
//! The fan-out ([`super::purge`]) reaches the nodes that are up. So that a node which missed it
//! never serves a purged object when it comes back, the node that takes a purge on its admin
//! listener also writes a record to S3 (`cluster.purge_records`): an empty object whose key
//! carries the purge time and the order,
//!
//! ```text
//! {prefix}{unix milliseconds, 13 digits}/purge/image/{id}
//! {prefix}{unix milliseconds, 13 digits}/purge/url/image/{id}?{canonical query}
//! ```
//!
//! so keys sort by time and one ListObjectsV2 from a point in time returns everything since,
//! with no GET per record. Every node reads them at start (before its listeners open: the edge
//! and peer services depend on the first read, bounded by `startup_wait`) and then every
//! `poll_interval`, from its last read minus a margin for clock skew and late writes. An id
//! record is applied with its own time ([`PurgeLog::purge_at`], idempotent); a URL record is
//! applied once (its key is remembered until it leaves the margin). The last read's time is
//! kept in the disk tier's directory, so a restart reads only what it missed; without a disk
//! tier (nothing survives a restart) or without that file, reading starts one purge horizon
//! back. Across POPs this bounds propagation by the polling interval. Records older than the
//! horizon can be expired by an S3 lifecycle rule on the prefix.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::services::ServiceReadyNotifier;
use prometheus::{IntCounterVec, IntGauge, Opts};
use tokio::sync::OnceCell;

use super::purge::PurgeOrder;
use crate::cache::purge::PurgeLog;
use crate::cache::Cache;
use crate::config::{Config, PurgeRecordsConfig, S3Config};
use crate::variant::ParseOptions;

/// Records this close to the last read are read again: a record written late (S3 latency, a
/// writer's clock a little behind ours) is still found.
const MARGIN: Duration = Duration::from_secs(60);
/// The file in the disk tier's directory holding the time of the last complete read.
const SYNCED_FILE: &str = "purge-records.synced";

/// Writes and reads the purge records of one bucket and prefix.
pub struct PurgeRecords {
    s3: S3Config,
    bucket: String,
    prefix: String,
    poll_interval: Duration,
    startup_wait: Duration,
    client: OnceCell<Client>,
    cache: Cache,
    parse: ParseOptions,
    synced_file: Option<PathBuf>,
    /// Start of the last complete read, unix ms (0: none yet).
    synced_ms: AtomicU64,
    /// URL records already applied, by key, until they leave the margin.
    applied: Mutex<HashMap<String, u64>>,
}

/// Why writing or reading records failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The S3 call failed.
    #[error("s3: {0}")]
    S3(String),
    /// Applying a record locally failed (the purge log could not be written).
    #[error("applying: {0}")]
    Apply(#[from] std::io::Error),
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl PurgeRecords {
    /// The records of a validated config, or `None` when `cluster.purge_records.bucket` is unset.
    pub fn from_config(cfg: &Config, cache: Cache) -> Option<PurgeRecords> {
        let r: &PurgeRecordsConfig = &cfg.cluster.purge_records;
        if r.bucket.is_empty() {
            return None;
        }
        let disk = &cfg.cache.disk;
        Some(PurgeRecords {
            s3: cfg.origin.s3.clone(),
            bucket: r.bucket.clone(),
            prefix: r.prefix.clone(),
            poll_interval: r.poll_interval,
            startup_wait: r.startup_wait,
            client: OnceCell::new(),
            cache,
            parse: cfg.parse_options(),
            synced_file: disk.enabled().then(|| disk.dir.join(SYNCED_FILE)),
            synced_ms: AtomicU64::new(0),
            applied: Mutex::new(HashMap::new()),
        })
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| crate::origin::source::build_client(&self.s3))
            .await
    }

    /// Write the record of `order`, made at `at`.
    pub async fn write(&self, order: &PurgeOrder, at: SystemTime) -> Result<(), RecordError> {
        let path = order.path();
        let key = format!(
            "{}{:013}/{}",
            self.prefix,
            unix_ms(at),
            path.trim_start_matches('/')
        );
        let result = self
            .client()
            .await
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(Vec::new().into())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| RecordError::S3(aws_sdk_s3::error::DisplayErrorContext(&e).to_string()));
        let label = if result.is_ok() { "ok" } else { "error" };
        records_metrics()
            .ops
            .with_label_values(&["write", label])
            .inc();
        result
    }

    /// Read every record since the last read (or since `from`) and apply it. Returns how many
    /// records were applied.
    pub async fn read(&self) -> Result<usize, RecordError> {
        let began = unix_ms(SystemTime::now());
        let from = match self.synced_ms.load(Ordering::Acquire) {
            0 => self.first_read_from(),
            ms => ms,
        }
        .saturating_sub(MARGIN.as_millis() as u64);
        let start_after = format!("{}{:013}", self.prefix, from);
        let client = self.client().await;
        let mut token: Option<String> = None;
        let mut applied = 0;
        loop {
            let page = client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .start_after(&start_after)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| {
                    records_metrics()
                        .ops
                        .with_label_values(&["read", "error"])
                        .inc();
                    RecordError::S3(aws_sdk_s3::error::DisplayErrorContext(&e).to_string())
                })?;
            for key in page.contents().iter().filter_map(|o| o.key()) {
                if self.apply(key, from).await? {
                    applied += 1;
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        self.synced_ms.store(began, Ordering::Release);
        // URL records that left the margin cannot be listed again.
        let keep_from = began.saturating_sub(MARGIN.as_millis() as u64);
        self.applied.lock().retain(|_, ms| *ms >= keep_from);
        if let Some(path) = &self.synced_file {
            let tmp = path.with_extension("tmp");
            let saved = tokio::fs::write(&tmp, began.to_string()).await;
            if let Err(e) = match saved {
                Ok(()) => tokio::fs::rename(&tmp, path).await,
                Err(e) => Err(e),
            } {
                tracing::warn!("purge records: saving {}: {e}", path.display());
            }
        }
        let m = records_metrics();
        m.ops.with_label_values(&["read", "ok"]).inc();
        m.last_read.set((began / 1000) as i64);
        Ok(applied)
    }

    /// Where a node with no previous read starts: its last read kept on disk, else one purge
    /// horizon back (any object older than that has expired anyway).
    fn first_read_from(&self) -> u64 {
        let saved = self
            .synced_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse::<u64>().ok());
        saved.unwrap_or_else(|| {
            let horizon = self.cache.purges.horizon();
            unix_ms(SystemTime::now().checked_sub(horizon).unwrap_or(UNIX_EPOCH))
        })
    }

    /// Apply one record; `Ok(false)` when it is not one (a stray key) or was applied already.
    async fn apply(&self, key: &str, from: u64) -> Result<bool, RecordError> {
        let Some((ms, path)) = key
            .strip_prefix(&self.prefix)
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(ms, path)| Some((ms.parse::<u64>().ok()?, path)))
        else {
            return Ok(false);
        };
        if ms < from {
            return Ok(false);
        }
        let path = format!("/{path}");
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path.as_str(), None),
        };
        let order = match PurgeOrder::parse(path, query, &self.parse) {
            Ok(o) => o,
            Err((_, reason)) => {
                tracing::warn!("purge records: skipping {key}: {reason}");
                return Ok(false);
            }
        };
        let at = UNIX_EPOCH + Duration::from_millis(ms);
        match &order {
            PurgeOrder::Id(v) => {
                let purges: &'static PurgeLog = self.cache.purges;
                purges.purge_at_async(v.id.clone(), at).await?;
            }
            PurgeOrder::Url(_) => {
                if self.applied.lock().insert(key.to_string(), ms).is_some() {
                    return Ok(false);
                }
                order.apply(&self.cache).await?;
            }
        }
        records_metrics()
            .ops
            .with_label_values(&["apply", order.scope()])
            .inc();
        Ok(true)
    }
}

/// Reads the records at start (the listeners wait for it, at most `startup_wait`) and then
/// every `poll_interval`.
pub struct RecordsReader(pub &'static PurgeRecords);

#[async_trait]
impl BackgroundService for RecordsReader {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let r = self.0;
        let deadline = tokio::time::Instant::now() + r.startup_wait;
        loop {
            match r.read().await {
                Ok(n) => {
                    tracing::info!("purge records: {n} applied at start");
                    break;
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::error!(
                        "purge records: not read within cluster.purge_records.startup_wait \
                         ({e}); serving anyway, reading again every poll_interval"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!("purge records: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        ready.notify_ready();
        let mut tick = tokio::time::interval(r.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => match r.read().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("purge records: {n} applied"),
                    Err(e) => tracing::warn!("purge records: {e}"),
                },
                _ = shutdown.changed() => break,
            }
        }
    }
}

struct RecordsMetrics {
    ops: IntCounterVec,
    last_read: IntGauge,
}

fn records_metrics() -> &'static RecordsMetrics {
    static M: Lazy<RecordsMetrics> = Lazy::new(|| {
        let r = &crate::metrics::metrics().registry;
        let ops = IntCounterVec::new(
            Opts::new(
                "imgedge_purge_records_total",
                "Durable purge records: writes and reads (ok, error) and records applied (id, url)",
            ),
            &["op", "result"],
        )
        .expect("static metric");
        let last_read = IntGauge::new(
            "imgedge_purge_records_last_read_timestamp_seconds",
            "When the purge records were last read completely (unix seconds)",
        )
        .expect("static metric");
        let _ = r.register(Box::new(ops.clone()));
        let _ = r.register(Box::new(last_read.clone()));
        RecordsMetrics { ops, last_read }
    });
    &M
}
