//! What a hit needs from a cached object's meta, parsed once and kept with the object.
//!
//! `CacheMeta::deserialize` decompresses the stored header block (zstd) and parses it; on
//! pingora-cache's hit path that happens on every hit. The edge's memory-hit fast path
//! (`edge::fast_hit`) reads this instead: freshness, the purge reference time, the age reference
//! and the response header, parsed on the object's first fast hit and prepared once as that
//! path sends it.

use std::time::{Duration, SystemTime};

use pingora_cache::CacheMeta;
use pingora_http::ResponseHeader;

/// A cached object's parsed meta.
#[derive(Debug)]
pub struct HitHead {
    /// Fresh until then; stale after.
    pub fresh_until: SystemTime,
    /// When the object was admitted (what purges compare against).
    pub created: SystemTime,
    /// The reference point of `Age` (the last revalidation, else `created`).
    pub epoch: SystemTime,
    /// The stored response header, prepared by the caller of [`HitHead::parse`].
    pub header: ResponseHeader,
}

impl HitHead {
    /// Parse a stored meta pair (`CacheMeta::serialize` output) and `prepare` its header;
    /// `None` if it does not parse or `prepare` fails.
    pub fn parse(
        meta: &(Vec<u8>, Vec<u8>),
        prepare: impl FnOnce(&mut ResponseHeader) -> pingora_error::Result<()>,
    ) -> Option<HitHead> {
        let m = CacheMeta::deserialize(&meta.0, &meta.1).ok()?;
        let mut full = m.response_header_copy();
        prepare(&mut full).ok()?;
        // Kept without the case map (names go out in lowercase, as HTTP/2 sends them): about
        // half the bytes, which the memory tier charges per object (`HEAD_CHARGE`).
        let mut header =
            ResponseHeader::build_no_case(full.status, Some(full.headers.len())).ok()?;
        for (name, value) in full.headers.iter() {
            header.append_header(name.clone(), value.clone()).ok()?;
        }
        header.set_version(full.version);
        Some(HitHead {
            fresh_until: m.fresh_until(),
            created: m.created(),
            epoch: m.epoch(),
            header,
        })
    }

    /// Whether the object may be served without revalidation at `now`. Same rule as
    /// `CacheMeta::is_fresh`.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.fresh_until >= now
    }

    /// The `Age` to send at `now` (RFC 9111 §4: a cache serving a stored response must).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.epoch).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_cache_meta_serializes() {
        let now = SystemTime::now();
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("content-type", "image/jpeg").unwrap();
        h.insert_header("etag", "\"v1\"").unwrap();
        let meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h);
        let head =
            HitHead::parse(&meta.serialize().unwrap(), |h| h.insert_header("x-a", "1")).unwrap();
        assert_eq!(head.header.headers.get("etag").unwrap(), "\"v1\"");
        assert_eq!(head.header.headers.get("x-a").unwrap(), "1");
        assert_eq!(head.header.status, 200);
        assert!(head.is_fresh(now + Duration::from_secs(59)));
        assert!(!head.is_fresh(now + Duration::from_secs(61)));
        assert_eq!(head.age(now + Duration::from_secs(7)).as_secs(), 7);
        assert_eq!(head.age(now - Duration::from_secs(7)), Duration::ZERO);
        assert!(HitHead::parse(&(vec![1, 2], vec![3]), |_| Ok(())).is_none());
    }
}
