//! Purge of every variant of an image id, without scanning the cache.
//!
//! Pingora purges exact keys only, and an id has as many keys as sizes were ever asked for.
//! Instead of an id → keys index, we record when each id was purged; a hit on an object created
//! at or before that time is forced expired (and refetched) by the edge's hit filter. The record
//! is appended to `purges.log` in the disk tier's directory (fsynced) so a restart does not
//! bring purged objects back from disk.
//!
//! A record matters only while an object created before it can still be served: after the
//! longest time an object is kept (its TTL plus the stale windows: the `horizon`), it is
//! dropped, so the map holds at most the ids purged within one horizon. The fsync runs on a
//! blocking thread, outside the lock that orders appends ([`PurgeLog::purge_async`]).
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

const FILE: &str = "purges.log";

/// Purge times by id.
pub struct PurgeLog {
    file: Option<Mutex<File>>,
    times: RwLock<HashMap<String, SystemTime>>,
    // Lets hits skip the lock entirely until the first purge.
    any: AtomicBool,
    /// Records older than this are dropped (no object created before them is still served).
    horizon: Duration,
    /// Map size after the last prune; the next one runs when it has doubled.
    pruned_at_len: AtomicUsize,
}

fn parse_line(line: &str) -> Option<(SystemTime, &str)> {
    let (ts, id) = line.split_once('\t')?;
    let (secs, nanos) = ts.split_once('.')?;
    let t = UNIX_EPOCH + Duration::new(secs.parse().ok()?, nanos.parse().ok()?);
    (!id.is_empty()).then_some((t, id))
}

impl PurgeLog {
    /// A log kept in memory only (no disk tier); records are kept for `horizon`.
    pub fn in_memory(horizon: Duration) -> PurgeLog {
        PurgeLog {
            file: None,
            times: RwLock::new(HashMap::new()),
            any: AtomicBool::new(false),
            horizon,
            pruned_at_len: AtomicUsize::new(0),
        }
    }

    /// Load (and compact) the log in `dir`, then keep appending to it. Records older than
    /// `horizon` are dropped.
    pub fn open(dir: &Path, horizon: Duration) -> io::Result<PurgeLog> {
        let path = dir.join(FILE);
        let mut times = HashMap::new();
        let mut lines = 0usize;
        let oldest = SystemTime::now().checked_sub(horizon).unwrap_or(UNIX_EPOCH);
        match fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines() {
                    lines += 1;
                    match parse_line(line) {
                        Some((t, _)) if t < oldest => {}
                        Some((t, id)) => {
                            let e = times.entry(id.to_string()).or_insert(t);
                            *e = (*e).max(t);
                        }
                        None => tracing::warn!("{}: skipping bad line {lines}", path.display()),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if lines > 2 * times.len() + 64 {
            compact(&path, &times)?;
        }
        let file = File::options().create(true).append(true).open(&path)?;
        Ok(PurgeLog {
            file: Some(Mutex::new(file)),
            any: AtomicBool::new(!times.is_empty()),
            pruned_at_len: AtomicUsize::new(times.len()),
            times: RwLock::new(times),
            horizon,
        })
    }

    /// Record that every variant of `id` cached until now is purged. It takes effect in memory
    /// at once; the append and fsync of the record happen before this returns (blocking I/O:
    /// call [`Self::purge_async`] from async code).
    pub fn purge(&self, id: &str) -> io::Result<SystemTime> {
        self.purge_at(id, SystemTime::now())
    }

    /// Record a purge of `id` made at `at` (by another node: a durable record read back from
    /// S3). An earlier record than the one held changes nothing.
    pub fn purge_at(&self, id: &str, at: SystemTime) -> io::Result<SystemTime> {
        let now = at;
        {
            let mut times = self.times.write();
            if times.get(id).is_some_and(|t| *t >= at) {
                return Ok(at);
            }
            times.insert(id.to_string(), now);
            self.any.store(true, Ordering::Release);
            // Amortised: prune when the map has doubled since the last prune.
            if times.len() >= 2 * self.pruned_at_len.load(Ordering::Relaxed).max(64) {
                let oldest = now.checked_sub(self.horizon).unwrap_or(UNIX_EPOCH);
                times.retain(|_, t| *t >= oldest);
                self.pruned_at_len.store(times.len(), Ordering::Relaxed);
            }
        }
        if let Some(file) = &self.file {
            let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            // The lock orders appends; the fsync runs on a handle of our own, outside it.
            let handle = {
                let mut f = file.lock();
                writeln!(f, "{}.{:09}\t{id}", since.as_secs(), since.subsec_nanos())?;
                f.try_clone()?
            };
            handle.sync_data()?;
        }
        Ok(now)
    }

    /// [`Self::purge`] on tokio's blocking pool, off the caller's runtime threads.
    pub async fn purge_async(&'static self, id: String) -> io::Result<SystemTime> {
        self.purge_at_async(id, SystemTime::now()).await
    }

    /// [`Self::purge_at`] on tokio's blocking pool.
    pub async fn purge_at_async(
        &'static self,
        id: String,
        at: SystemTime,
    ) -> io::Result<SystemTime> {
        tokio::task::spawn_blocking(move || self.purge_at(&id, at))
            .await
            .map_err(io::Error::other)?
    }

    /// How long a record matters (the longest an object is kept, stale windows included).
    pub fn horizon(&self) -> Duration {
        self.horizon
    }

    /// Ids with a purge record (at most those purged within one horizon).
    pub fn len(&self) -> usize {
        self.times.read().len()
    }

    /// Whether no id has a purge record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an object of `id` created at `created` has been purged since.
    pub fn is_purged(&self, id: &str, created: SystemTime) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        // Pingora stores creation times with nanosecond precision.
        self.times
            .read()
            .get(id)
            .is_some_and(|&purged| created <= purged)
    }
}

fn compact(path: &PathBuf, times: &HashMap<String, SystemTime>) -> io::Result<()> {
    let tmp = path.with_extension(format!("compact.{}", std::process::id()));
    let mut f = File::create(&tmp)?;
    for (id, t) in times {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        writeln!(f, "{}.{:09}\t{id}", since.as_secs(), since.subsec_nanos())?;
    }
    f.sync_data()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn purges_survive_reopen_and_only_hit_older_objects() {
        let dir = tempfile::tempdir().unwrap();
        let before = SystemTime::now() - Duration::from_secs(10);
        {
            let log = PurgeLog::open(dir.path(), HOUR).unwrap();
            assert!(!log.is_purged("a", before));
            log.purge("a").unwrap();
            assert!(log.is_purged("a", before));
            assert!(!log.is_purged("b", before));
        }
        fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap()
            .write_all(b"garbage line\n")
            .unwrap();
        let log = PurgeLog::open(dir.path(), HOUR).unwrap();
        assert!(log.is_purged("a", before), "purge forgotten on restart");
        assert!(!log.is_purged("a", SystemTime::now() + Duration::from_secs(5)));
        assert!(!log.is_purged("b", before));
    }

    #[test]
    fn records_older_than_the_horizon_are_dropped() {
        // In memory: 1,000 purges with a zero horizon never hold more than the prune threshold.
        let log = PurgeLog::in_memory(Duration::ZERO);
        for i in 0..1000 {
            log.purge(&format!("id{i}")).unwrap();
            assert!(log.len() <= 128, "{} records after {i} purges", log.len());
        }
        // With an hour, all are kept.
        let log = PurgeLog::in_memory(HOUR);
        for i in 0..1000 {
            log.purge(&format!("id{i}")).unwrap();
        }
        assert_eq!(log.len(), 1000);
        // On disk: a record older than the horizon is not loaded back.
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - 2 * HOUR;
        let since = old.duration_since(UNIX_EPOCH).unwrap();
        fs::write(
            dir.path().join(FILE),
            format!("{}.{:09}\told\n", since.as_secs(), since.subsec_nanos()),
        )
        .unwrap();
        let log = PurgeLog::open(dir.path(), HOUR).unwrap();
        assert!(!log.is_purged("old", old - HOUR));
        assert!(log.is_empty());
    }
}
