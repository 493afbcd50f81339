//! What a hit needs from a cached object's meta, parsed once and kept with the object.
//!
//! `CacheMeta::deserialize` decompresses the stored header block (zstd) and parses it; on
//! pingora-cache's hit path that happens on every hit. The edge's memory-hit fast path
//! (`edge::fast_hit`) reads this instead: freshness, the purge reference time, the age reference
//! and the response header, parsed on the object's first fast hit and prepared once as that
//! path sends it.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{StatusCode, Version};
use pingora_cache::CacheMeta;
use pingora_http::ResponseHeader;

/// A cached object's parsed meta.
///
/// The header is kept compact rather than as a `ResponseHeader` (whose `HeaderMap` holds about
/// 2 KiB for an image answer): its names, and all its values in one buffer that every answer's
/// header slices without copying. The memory tier charges this per object (`HEAD_CHARGE`), so
/// its size is hit ratio; building the `ResponseHeader` per answer costs about what cloning a
/// kept one did.
#[derive(Debug)]
pub struct HitHead {
    /// Fresh until then; stale after.
    pub fresh_until: SystemTime,
    /// When the object was admitted (what purges compare against).
    pub created: SystemTime,
    /// The reference point of `Age` (the last revalidation, else `created`).
    pub epoch: SystemTime,
    status: StatusCode,
    version: Version,
    /// Each header's name and the end of its value in `values` (it starts where the previous
    /// one ended).
    fields: Box<[(HeaderName, u32)]>,
    values: Bytes,
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
        let total: usize = full.headers.values().map(|v| v.len()).sum();
        let mut values = Vec::with_capacity(total);
        let mut fields = Vec::with_capacity(full.headers.len());
        for (name, value) in full.headers.iter() {
            values.extend_from_slice(value.as_bytes());
            fields.push((name.clone(), u32::try_from(values.len()).ok()?));
        }
        let values = Bytes::from(values);
        // Make the buffer shared now (the first slice of a `Bytes` made from a `Vec` would do it
        // on the first answer), so what the object holds is settled at parse time.
        drop(values.clone());
        Some(HitHead {
            fresh_until: m.fresh_until(),
            created: m.created(),
            epoch: m.epoch(),
            status: full.status,
            version: full.version,
            fields: fields.into_boxed_slice(),
            values,
        })
    }

    /// The prepared response header, built for one answer (names lowercase, as HTTP/2 sends
    /// them; values share the kept buffer). `None` only if a kept value no longer validates,
    /// which cannot happen for values that came from a `HeaderValue`.
    pub fn header(&self) -> Option<ResponseHeader> {
        let mut h = ResponseHeader::build_no_case(self.status, Some(self.fields.len())).ok()?;
        let mut start = 0usize;
        for (name, end) in self.fields.iter() {
            let end = *end as usize;
            let value = HeaderValue::from_maybe_shared(self.values.slice(start..end)).ok()?;
            h.append_header(name.clone(), value).ok()?;
            start = end;
        }
        h.set_version(self.version);
        Some(h)
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
        let header = head.header().unwrap();
        assert_eq!(header.headers.get("etag").unwrap(), "\"v1\"");
        assert_eq!(header.headers.get("x-a").unwrap(), "1");
        assert_eq!(header.headers.get("content-type").unwrap(), "image/jpeg");
        assert_eq!(header.headers.len(), 3);
        assert_eq!(header.status, 200);
        // Built again, the same.
        assert_eq!(head.header().unwrap().headers, header.headers);
        assert!(head.is_fresh(now + Duration::from_secs(59)));
        assert!(!head.is_fresh(now + Duration::from_secs(61)));
        assert_eq!(head.age(now + Duration::from_secs(7)).as_secs(), 7);
        assert_eq!(head.age(now - Duration::from_secs(7)), Duration::ZERO);
        assert!(HitHead::parse(&(vec![1, 2], vec![3]), |_| Ok(())).is_none());
    }
}
