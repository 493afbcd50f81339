//! Time to ready for the disk tier: how long `DiskTier::open` takes to rebuild its index (saved
//! eviction order + directory scan) before the node serves, with N objects on disk.
//!
//! Run: `cargo bench --bench disk_ready` (optionally `-- OBJECTS DIR`; default 100000 objects
//! in a temp dir). Set DROP_CACHES=1 (as root) to also time a cold page cache.

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use imgedge::cache::disk::DiskTier;
use imgedge::cache::memory::CachedObject;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir: PathBuf = args.get(1).map_or(tmp.path().to_path_buf(), PathBuf::from);
    let max = 64u64 << 30;

    let body = Bytes::from(vec![7u8; 2048]);
    let started = Instant::now();
    {
        let (tier, _) = DiskTier::open(&dir, max, false).expect("open");
        for i in 0..n as u128 {
            let mut key = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)).to_be_bytes();
            key[15] ^= 1;
            tier.write(&CachedObject::new(
                key,
                (vec![0; 64], vec![0; 200]),
                body.clone(),
            ))
            .expect("write");
        }
        tier.save_state().expect("save");
    }
    println!(
        "wrote {n} objects of {} bytes in {:.1?}",
        body.len() + 264,
        started.elapsed()
    );

    let time = |label: &str| {
        let t = Instant::now();
        let (tier, r) = DiskTier::open(&dir, max, false).expect("open");
        println!(
            "{label}: ready in {:.1?} ({} objects, {} from saved state)",
            t.elapsed(),
            r.objects,
            r.from_state
        );
        tier
    };
    time("warm page cache, saved state");
    let _ = std::fs::remove_dir_all(dir.join("state"));
    let tier = time("warm page cache, no saved state (crash before first save)");
    tier.save_state().expect("save");
    drop(tier);
    if std::env::var("DROP_CACHES").is_ok_and(|v| v == "1") {
        let dropped = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
        if dropped {
            time("cold page cache, saved state");
        } else {
            println!("cold page cache: could not drop caches (needs root)");
        }
    }
}
