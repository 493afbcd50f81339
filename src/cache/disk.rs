//! The disk tier: one file per object in a directory, bounded in bytes, surviving restarts,
//! graceful upgrades and crashes.
//!
//! Layout under `cache.disk.dir`:
//! - `objects/ab/<32 hex>`: one object, named by the hash of its cache key;
//! - `tmp/<hex>.<pid>.<seq>`: writes in progress;
//! - `state/lru.<shard>`: the saved eviction order.
//!
//! A write goes to a temp file named with the writer's pid (an old and a new process share the
//! directory during a graceful upgrade), is fsynced, then renamed into place: readers see a whole
//! old file or a whole new one, never a partial one. Every file carries its key, its meta and a
//! CRC32C over all of it; a file that is short, corrupt, unreadable or holds another key is a
//! miss and is removed, so a bad byte on disk is never served.
//!
//! Eviction is pingora's sharded LRU (`eviction::lru::Manager`) weighted in file bytes. Pingora
//! never persists it for us: [`DiskTier::open`] rebuilds it from the saved order plus a scan of
//! the directory (files the saved order does not know, e.g. written after the last save or by
//! a crashed process, count as most recent), and [`DiskTier::save_state`] is called
//! periodically and at shutdown.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use pingora_cache::eviction::{lru::Manager, CacheEntryKey, CacheEntryKeyRef, EvictionManager};
use pingora_cache::key::{CompactCacheKey, HashBinary};

use super::memory::CachedObject;
use crate::metrics::metrics;

/// File format version 1.
const MAGIC: &[u8; 8] = b"IMGEDGE\x01";
/// magic, key, meta0 len (u32), meta1 len (u32), body len (u64), crc32c (u32).
const HEADER: usize = 8 + 16 + 4 + 4 + 8 + 4;
/// Shards of the LRU: saving one locks only that shard.
const SHARDS: usize = 16;
/// Fan-out directories under `objects/` (first hex byte of the key).
const FANOUT: usize = 256;
/// At most one warning per interval for repeated disk failures (a full disk fails every write).
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// What [`DiskTier::open`] found.
#[derive(Debug, Clone, Copy)]
pub struct OpenReport {
    /// Objects indexed.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// How many of them the saved eviction state knew (the rest were found by the scan).
    pub from_state: u64,
    /// Leftover temp files of dead processes removed.
    pub temps_removed: u64,
    /// Time from start to ready.
    pub elapsed: Duration,
}

/// The disk tier.
pub struct DiskTier {
    objects_dir: PathBuf,
    tmp_dir: PathBuf,
    state_dir: PathBuf,
    lru: Manager<SHARDS>,
    fsync: bool,
    pid: u32,
    seq: AtomicU64,
    last_warn: AtomicU64,
    started: Instant,
}

fn entry(key: &HashBinary) -> CacheEntryKey {
    CacheEntryKey::key_only(CompactCacheKey {
        primary: *key,
        variance: None,
        user_tag: "".into(),
    })
}

fn parse_hex_key(name: &str) -> Option<HashBinary> {
    if name.len() != 32 {
        return None;
    }
    let mut key = [0u8; 16];
    hex::decode_to_slice(name, &mut key).ok()?;
    Some(key)
}

/// Serialize an object: header, meta, body.
pub fn encode_header(obj: &CachedObject) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..24].copy_from_slice(&obj.key);
    h[24..28].copy_from_slice(&(obj.meta.0.len() as u32).to_le_bytes());
    h[28..32].copy_from_slice(&(obj.meta.1.len() as u32).to_le_bytes());
    h[32..40].copy_from_slice(&(obj.body.len() as u64).to_le_bytes());
    let mut crc = crc32c::crc32c(&h[8..40]);
    crc = crc32c::crc32c_append(crc, &obj.meta.0);
    crc = crc32c::crc32c_append(crc, &obj.meta.1);
    crc = crc32c::crc32c_append(crc, &obj.body);
    h[40..44].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a stored file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its header says.
    #[error("short file")]
    Short,
    /// Not our format (or a version we do not read).
    #[error("bad magic")]
    Magic,
    /// Stored under another key's name.
    #[error("key mismatch")]
    Key,
    /// Longer than its header says.
    #[error("trailing bytes")]
    Trailing,
    /// Contents do not match the checksum.
    #[error("checksum mismatch")]
    Checksum,
}

/// Parse and verify a whole file read into `buf`. The body is a slice of `buf` (no copy).
pub fn decode(key: &HashBinary, buf: Bytes) -> Result<CachedObject, DecodeError> {
    if buf.len() < HEADER {
        return Err(DecodeError::Short);
    }
    if &buf[..8] != MAGIC {
        return Err(DecodeError::Magic);
    }
    if &buf[8..24] != key {
        return Err(DecodeError::Key);
    }
    let u32_at = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&buf[at..at + 4]);
        u32::from_le_bytes(b)
    };
    let mut b8 = [0u8; 8];
    b8.copy_from_slice(&buf[32..40]);
    let (m0, m1, body) = (u32_at(24) as u64, u32_at(28) as u64, u64::from_le_bytes(b8));
    let want = HEADER as u64 + m0 + m1 + body;
    match (buf.len() as u64).cmp(&want) {
        std::cmp::Ordering::Less => return Err(DecodeError::Short),
        std::cmp::Ordering::Greater => return Err(DecodeError::Trailing),
        std::cmp::Ordering::Equal => {}
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[8..40]), &buf[HEADER..]);
    if crc != u32_at(40) {
        return Err(DecodeError::Checksum);
    }
    let (m0, m1) = (m0 as usize, m1 as usize);
    let meta = (
        buf[HEADER..HEADER + m0].to_vec(),
        buf[HEADER + m0..HEADER + m0 + m1].to_vec(),
    );
    Ok(CachedObject::new(*key, meta, buf.slice(HEADER + m0 + m1..)))
}

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

impl DiskTier {
    /// Open (creating if needed) the tier in `dir`, bounded to `max_bytes`, and rebuild its
    /// index before anything is served.
    pub fn open(dir: &Path, max_bytes: u64, fsync: bool) -> io::Result<(DiskTier, OpenReport)> {
        let started = Instant::now();
        let tier = DiskTier {
            objects_dir: dir.join("objects"),
            tmp_dir: dir.join("tmp"),
            state_dir: dir.join("state"),
            // Per-shard preallocation for ~16 KiB objects.
            lru: Manager::with_capacity(
                usize::try_from(max_bytes).unwrap_or(usize::MAX),
                (max_bytes / (16 * 1024) / SHARDS as u64).clamp(64, 1 << 20) as usize,
            ),
            fsync,
            pid: std::process::id(),
            seq: AtomicU64::new(0),
            last_warn: AtomicU64::new(0),
            started,
        };
        for d in [&tier.objects_dir, &tier.tmp_dir, &tier.state_dir] {
            fs::create_dir_all(d)?;
        }
        for i in 0..FANOUT {
            fs::create_dir_all(tier.objects_dir.join(format!("{i:02x}")))?;
        }
        let temps_removed = tier.remove_dead_temps();
        let from_state = tier.rebuild_index()?;
        let report = OpenReport {
            objects: tier.lru.total_items() as u64,
            bytes: tier.lru.total_size() as u64,
            from_state,
            temps_removed,
            elapsed: started.elapsed(),
        };
        Ok((tier, report))
    }

    /// Temp files of processes that no longer run are leftovers of a crash; a live process's
    /// (the other side of a graceful upgrade) are its writes in flight.
    fn remove_dead_temps(&self) -> u64 {
        let Ok(entries) = fs::read_dir(&self.tmp_dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let pid = name.split('.').nth(1).and_then(|p| p.parse::<u32>().ok());
            let dead = match pid {
                Some(pid) => pid == self.pid || !pid_alive(pid),
                None => true,
            };
            if dead && fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Index every object file: in the saved LRU order where the saved state knows it, then
    /// the rest as most recent. Returns how many came from the saved state.
    fn rebuild_index(&self) -> io::Result<u64> {
        let mut found: HashMap<HashBinary, usize> = HashMap::new();
        for i in 0..FANOUT {
            let sub = self.objects_dir.join(format!("{i:02x}"));
            for e in fs::read_dir(&sub)?.flatten() {
                let name = e.file_name();
                let Some(key) = name.to_str().and_then(parse_hex_key) else {
                    continue; // not ours; leave it alone
                };
                if let Ok(meta) = e.metadata() {
                    if meta.is_file() {
                        found.insert(key, meta.len() as usize);
                    }
                }
            }
        }

        let saved: Manager<SHARDS> = Manager::with_capacity(usize::MAX, 64);
        for shard in 0..SHARDS {
            let path = self.state_dir.join(format!("lru.{shard}"));
            match fs::read(&path) {
                Ok(buf) => {
                    if let Err(e) = saved.deserialize_shard(&buf) {
                        tracing::warn!(
                            "{}: ignoring unreadable eviction state: {e}",
                            path.display()
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("{}: {e}", path.display()),
            }
        }

        // Least recent first, so the last admitted is the most recent.
        let mut from_state = 0;
        for shard in 0..SHARDS {
            while let Some(k) = saved.peek_lru(shard) {
                saved.remove(CacheEntryKeyRef::from(&k));
                if let Some(size) = found.remove(&k.key().primary) {
                    self.admit(&k.key().primary, size);
                    from_state += 1;
                }
            }
        }
        for (key, size) in found {
            self.admit(&key, size);
        }
        Ok(from_state)
    }

    fn path(&self, key: &HashBinary) -> PathBuf {
        let name = hex::encode(key);
        self.objects_dir.join(&name[..2]).join(name)
    }

    fn admit(&self, key: &HashBinary, size: usize) {
        let evicted = self.lru.admit(entry(key), size, SystemTime::now());
        if evicted.is_empty() {
            return;
        }
        metrics()
            .cache_evictions
            .with_label_values(&["disk"])
            .inc_by(evicted.len() as u64);
        for e in evicted {
            let _ = fs::remove_file(self.path(&e.key().primary));
        }
    }

    /// Whether the index holds `key` (no I/O). Files the index does not know are not read: a
    /// file another process wrote during a graceful upgrade is refilled (overwritten and
    /// indexed) when next requested, or indexed by the next start's directory scan.
    pub fn knows(&self, key: &HashBinary) -> bool {
        self.lru.peek(&entry(key))
    }

    /// Read and verify the object stored under `key`. Blocking: call from a blocking thread.
    /// Anything that does not verify is removed and reported as a miss.
    pub fn read(&self, key: &HashBinary) -> Option<CachedObject> {
        let path = self.path(key);
        let buf = match fs::read(&path) {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Evicted or purged by the other process of an upgrade: forget it too.
                self.lru.remove(CacheEntryKeyRef::from(&entry(key)));
                return None;
            }
            Err(e) => {
                self.discard(key, &path, &e.to_string());
                return None;
            }
        };
        let size = buf.len();
        match decode(key, Bytes::from(buf)) {
            Ok(obj) => {
                self.lru.access(&entry(key), size, SystemTime::now());
                Some(obj)
            }
            Err(e) => {
                self.discard(key, &path, &e.to_string());
                None
            }
        }
    }

    /// A stored file failed verification: remove it so it can be refilled.
    pub fn discard(&self, key: &HashBinary, path: &Path, why: &str) {
        metrics().cache_corrupt.inc();
        tracing::warn!("cache: removing bad disk entry {}: {why}", path.display());
        let _ = fs::remove_file(path);
        self.lru.remove(CacheEntryKeyRef::from(&entry(key)));
    }

    /// Discard the entry for `key` (after its meta failed to parse).
    pub fn discard_key(&self, key: &HashBinary, why: &str) {
        self.discard(key, &self.path(key), why);
    }

    /// Store `obj` atomically. Blocking: call from a blocking thread.
    pub fn write(&self, obj: &CachedObject) -> io::Result<()> {
        let name = hex::encode(obj.key);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp_dir.join(format!("{name}.{}.{seq}", self.pid));
        let result = (|| {
            let mut f = File::options().write(true).create_new(true).open(&tmp)?;
            f.write_all(&encode_header(obj))?;
            f.write_all(&obj.meta.0)?;
            f.write_all(&obj.meta.1)?;
            f.write_all(&obj.body)?;
            if self.fsync {
                f.sync_data()?;
            }
            fs::rename(&tmp, self.path(&obj.key))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        self.admit(&obj.key, HEADER + obj.size() as usize);
        Ok(())
    }

    /// Remove the object under `key`; whether a file was there.
    pub fn remove(&self, key: &HashBinary) -> bool {
        self.lru.remove(CacheEntryKeyRef::from(&entry(key)));
        fs::remove_file(self.path(key)).is_ok()
    }

    /// Save the eviction order (atomically, shard by shard). Blocking.
    pub fn save_state(&self) -> io::Result<()> {
        for shard in 0..SHARDS {
            let data = self
                .lru
                .serialize_shard(shard)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let tmp = self.tmp_dir.join(format!("lru{shard}.{}.{seq}", self.pid));
            let result = (|| {
                let mut f = File::options().write(true).create_new(true).open(&tmp)?;
                f.write_all(&data)?;
                f.sync_data()?;
                fs::rename(&tmp, self.state_dir.join(format!("lru.{shard}")))
            })();
            if result.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            result?;
        }
        Ok(())
    }

    /// Log a disk failure, at most once per interval (a full disk fails every write).
    pub fn warn_throttled(&self, what: &str, err: &dyn std::fmt::Display) {
        let now = self.started.elapsed().as_secs() + 1;
        let last = self.last_warn.load(Ordering::Relaxed);
        if (last == 0 || now >= last + WARN_INTERVAL.as_secs())
            && self
                .last_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                "cache: disk {what} failed: {err} (serving from memory and origin; \
                 further failures are counted in imgedge_cache_write_failures_total)"
            );
        }
    }

    /// Bytes stored.
    pub fn bytes(&self) -> u64 {
        self.lru.total_size() as u64
    }

    /// Objects stored.
    pub fn objects(&self) -> u64 {
        self.lru.total_items() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(k: u8, size: usize) -> CachedObject {
        CachedObject::new(
            [k; 16],
            (vec![1, 2, 3], vec![k; 7]),
            Bytes::from(vec![k; size]),
        )
    }

    #[test]
    fn roundtrip_and_every_corruption_is_refused() {
        let o = obj(7, 1000);
        let mut file = encode_header(&o).to_vec();
        file.extend_from_slice(&o.meta.0);
        file.extend_from_slice(&o.meta.1);
        file.extend_from_slice(&o.body);
        let back = decode(&o.key, Bytes::from(file.clone())).unwrap();
        assert_eq!(back.body, o.body);
        assert_eq!(back.meta, o.meta);

        // Flip each byte in turn (magic, header, meta, body): none may decode.
        for i in (0..file.len()).step_by(7) {
            let mut bad = file.clone();
            bad[i] ^= 0x40;
            assert!(decode(&o.key, Bytes::from(bad)).is_err(), "flip at {i}");
        }
        for cut in [0, 10, HEADER - 1, HEADER, file.len() - 1] {
            assert_eq!(
                decode(&o.key, Bytes::from(file[..cut].to_vec())).err(),
                Some(DecodeError::Short)
            );
        }
        let mut long = file.clone();
        long.push(0);
        assert_eq!(
            decode(&o.key, Bytes::from(long)).err(),
            Some(DecodeError::Trailing)
        );
        assert_eq!(
            decode(&[8; 16], Bytes::from(file)).err(),
            Some(DecodeError::Key)
        );
    }

    #[test]
    fn bounded_persistent_and_self_healing() {
        let dir = tempfile::tempdir().unwrap();
        let size = |n: usize| HEADER + 10 + n;
        let files = |t: &DiskTier| (0..=255u8).filter(|k| t.path(&[*k; 16]).exists()).count();
        let state = |d: &Path| {
            (0..SHARDS)
                .map(|i| fs::read(d.join(format!("state/lru.{i}"))).unwrap())
                .collect::<Vec<_>>()
        };
        {
            let (t, r) = DiskTier::open(dir.path(), 10 * size(1000) as u64, false).unwrap();
            assert_eq!(r.objects, 0);
            for k in 0..15u8 {
                t.write(&obj(k, 1000)).unwrap();
            }
            // Five went to stay under the bound, and their files with them.
            assert_eq!(t.objects(), 10);
            assert_eq!(t.bytes(), 10 * size(1000) as u64);
            assert_eq!(files(&t), 10);
            let readable = (0..15u8).filter(|k| t.read(&[*k; 16]).is_some()).count();
            assert_eq!(readable, 10);
            t.save_state().unwrap();
        }
        let saved = state(dir.path());
        // A dead process's temp file is a crash leftover.
        fs::write(dir.path().join("tmp/abc.999999999.1"), b"partial").unwrap();
        let (t, r) = DiskTier::open(dir.path(), 10 * size(1000) as u64, false).unwrap();
        assert_eq!((r.objects, r.from_state, r.temps_removed), (10, 10, 1));
        // The eviction order came back exactly as saved.
        t.save_state().unwrap();
        assert_eq!(state(dir.path()), saved);

        let live: Vec<u8> = (0..15u8).filter(|k| t.path(&[*k; 16]).exists()).collect();
        let p = t.path(&[live[0]; 16]);
        let mut bytes = fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&p, bytes).unwrap();
        assert!(
            t.read(&[live[0]; 16]).is_none(),
            "a corrupt body is never served"
        );
        assert!(!p.exists(), "and it is removed");
        assert!(t.remove(&[live[1]; 16]));
        assert!(!t.remove(&[live[1]; 16]));
        assert_eq!(t.objects(), 8);

        // Files the saved state does not know (written after the last save) are indexed too.
        drop(t);
        fs::remove_dir_all(dir.path().join("state")).unwrap();
        let (t, r) = DiskTier::open(dir.path(), 10 * size(1000) as u64, false).unwrap();
        assert_eq!((r.objects, r.from_state), (8, 0));
        assert!(t.read(&[live[2]; 16]).is_some());
    }
}
