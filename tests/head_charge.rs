//! The memory tier charges each object for the header the fast path keeps parsed with it
//! (`cache::memory::HEAD_CHARGE`): measured here with a counting allocator on a stored header
//! of the shape the origin answers with, so the tier's byte bound holds with fast hits too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, SystemTime};

use imgedge::cache::head::HitHead;
use imgedge::cache::memory::HEAD_CHARGE;
use pingora_cache::CacheMeta;
use pingora_http::ResponseHeader;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::SeqCst);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::SeqCst);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::SeqCst);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn a_parsed_head_fits_its_charge() {
    let now = SystemTime::now();
    // What the origin stores for a variant (as the edge receives it), with long values.
    let mut h = ResponseHeader::build(200, None).unwrap();
    for (k, v) in [
        ("Content-Type", "image/webp"),
        ("Content-Length", "1234567"),
        (
            "etag",
            "\"6e8808f925e69776f32f847abf2884ac6e8808f925e69776\"",
        ),
        ("Cache-Control", "public, max-age=31536000, immutable"),
        (
            "x-imgedge-source-etag",
            "\"0123456789abcdef0123456789abcdef-12\"",
        ),
        ("Date", "Sat, 05 Dec 2026 19:14:24 GMT"),
        ("Last-Modified", "Sat, 05 Dec 2026 19:14:24 GMT"),
    ] {
        h.insert_header(k, v).unwrap();
    }
    let stored = CacheMeta::new(now + Duration::from_secs(60), now, 10, 60, h)
        .serialize()
        .unwrap();
    let before = LIVE.load(Ordering::SeqCst);
    let head = HitHead::parse(&stored, |h| {
        // What the edge's fast path adds.
        h.insert_header("accept-ranges", "bytes")?;
        h.insert_header("x-cache", "HIT")?;
        h.insert_header("x-content-type-options", "nosniff")
    })
    .unwrap();
    // Answers build their header from it and keep nothing.
    let after_parse = LIVE.load(Ordering::SeqCst);
    for _ in 0..3 {
        let h = head.header().unwrap();
        assert_eq!(h.headers.get("x-cache").unwrap(), "HIT");
        assert_eq!(h.headers.len(), 10);
    }
    assert_eq!(
        LIVE.load(Ordering::SeqCst),
        after_parse,
        "an answer's header outlived it"
    );
    let kept = LIVE.load(Ordering::SeqCst) - before;
    assert!(kept > 0);
    assert!(
        kept as u64 + std::mem::size_of::<HitHead>() as u64 <= HEAD_CHARGE,
        "a parsed head keeps {kept} bytes (+{} inline), charged {HEAD_CHARGE}",
        std::mem::size_of::<HitHead>()
    );
    println!(
        "parsed head: {kept} bytes on the heap + {} inline; charged {HEAD_CHARGE}",
        std::mem::size_of::<HitHead>()
    );
    drop(head);
}
