//! Purge of every variant of an image id, without scanning the cache.
//!
//! Pingora purges exact keys only, and an id has as many keys as sizes were ever asked for.
//! Instead of an id → keys index, we record when each id was purged; a hit on an object created
//! at or before that time is forced expired (and refetched) by the edge's hit filter. The record
//! is appended to `purges.log` in the disk tier's directory (fsynced) so a restart does not
//! bring purged objects back from disk.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

const FILE: &str = "purges.log";

/// Purge times by id.
pub struct PurgeLog {
    file: Option<Mutex<File>>,
    times: RwLock<HashMap<String, SystemTime>>,
    // Lets hits skip the lock entirely until the first purge.
    any: AtomicBool,
}

fn parse_line(line: &str) -> Option<(SystemTime, &str)> {
    let (ts, id) = line.split_once('\t')?;
    let (secs, nanos) = ts.split_once('.')?;
    let t = UNIX_EPOCH + Duration::new(secs.parse().ok()?, nanos.parse().ok()?);
    (!id.is_empty()).then_some((t, id))
}

impl PurgeLog {
    /// A log kept in memory only (no disk tier).
    pub fn in_memory() -> PurgeLog {
        PurgeLog {
            file: None,
            times: RwLock::new(HashMap::new()),
            any: AtomicBool::new(false),
        }
    }

    /// Load (and compact) the log in `dir`, then keep appending to it.
    pub fn open(dir: &Path) -> io::Result<PurgeLog> {
        let path = dir.join(FILE);
        let mut times = HashMap::new();
        let mut lines = 0usize;
        match fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines() {
                    lines += 1;
                    match parse_line(line) {
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
            times: RwLock::new(times),
        })
    }

    /// Record that every variant of `id` cached until now is purged.
    pub fn purge(&self, id: &str) -> io::Result<SystemTime> {
        let now = SystemTime::now();
        if let Some(file) = &self.file {
            let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            let mut f = file.lock();
            writeln!(f, "{}.{:09}\t{id}", since.as_secs(), since.subsec_nanos())?;
            f.sync_data()?;
        }
        self.times.write().insert(id.to_string(), now);
        self.any.store(true, Ordering::Release);
        Ok(now)
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

    #[test]
    fn purges_survive_reopen_and_only_hit_older_objects() {
        let dir = tempfile::tempdir().unwrap();
        let before = SystemTime::now() - Duration::from_secs(10);
        {
            let log = PurgeLog::open(dir.path()).unwrap();
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
        let log = PurgeLog::open(dir.path()).unwrap();
        assert!(log.is_purged("a", before), "purge forgotten on restart");
        assert!(!log.is_purged("a", SystemTime::now() + Duration::from_secs(5)));
        assert!(!log.is_purged("b", before));
    }
}
