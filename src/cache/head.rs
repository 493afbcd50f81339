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
use pingora_http::{IntoCaseHeaderName, ResponseHeader};

/// A cached object's parsed meta.
///
/// The header is kept compact rather than as a `ResponseHeader` (whose `HeaderMap` holds about
/// 2 KiB for an image answer): as HTTP/1.1 writes it (status line and `Name: value` lines,
/// [`Self::wire`]), with each field's place in it. The edge's HTTP/1 hit loop sends that block
/// as it is; other answers build a `ResponseHeader` whose values slice it without copying. The
/// memory tier charges this per object (`HEAD_CHARGE`), so its size is hit ratio.
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
    /// The status line and every field, each line ending in CRLF; no blank line.
    wire: Bytes,
    /// Per field: where its name starts, and where its value starts and ends, in `wire` (the
    /// name ends two bytes before the value, at `": "`).
    fields: Box<[(u32, u32, u32)]>,
}

impl HitHead {
    /// Parse a stored meta pair (`CacheMeta::serialize` output) and `prepare` its header;
    /// `None` if it does not parse, `prepare` fails or the header is not one HTTP/1 can send.
    pub fn parse(
        meta: &(Vec<u8>, Vec<u8>),
        prepare: impl FnOnce(&mut ResponseHeader) -> pingora_error::Result<()>,
    ) -> Option<HitHead> {
        let m = CacheMeta::deserialize(&meta.0, &meta.1).ok()?;
        let mut full = m.response_header_copy();
        prepare(&mut full).ok()?;
        let version = match full.version {
            Version::HTTP_10 => "HTTP/1.0 ",
            Version::HTTP_11 => "HTTP/1.1 ",
            _ => return None,
        };
        // Pingora's H1 writer: the canonical reason phrase, and the names of a header built
        // without a case map (as `Self::header` builds it) in their titled form.
        let reason = full.status.canonical_reason().unwrap_or("");
        let total: usize = full
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        // Exact, so the buffer is not doubled by the last push (the object keeps all of it).
        let mut wire = Vec::with_capacity(version.len() + 4 + reason.len() + 2 + total);
        wire.extend_from_slice(version.as_bytes());
        wire.extend_from_slice(full.status.as_str().as_bytes());
        wire.push(b' ');
        wire.extend_from_slice(reason.as_bytes());
        wire.extend_from_slice(b"\r\n");
        let mut fields = Vec::with_capacity(full.headers.len());
        for (name, value) in full.headers.iter() {
            let at = |w: &Vec<u8>| u32::try_from(w.len()).ok();
            let name_start = at(&wire)?;
            wire.extend_from_slice(name.into_case_header_name().as_slice());
            wire.extend_from_slice(b": ");
            let value_start = at(&wire)?;
            wire.extend_from_slice(value.as_bytes());
            fields.push((name_start, value_start, at(&wire)?));
            wire.extend_from_slice(b"\r\n");
        }
        let wire = Bytes::from(wire);
        // Make the buffer shared now (the first slice of a `Bytes` made from a `Vec` would do it
        // on the first answer), so what the object holds is settled at parse time.
        drop(wire.clone());
        Some(HitHead {
            fresh_until: m.fresh_until(),
            created: m.created(),
            epoch: m.epoch(),
            status: full.status,
            version: full.version,
            wire,
            fields: fields.into_boxed_slice(),
        })
    }

    /// The prepared response header, built for one answer (values share the kept buffer).
    /// `None` only if a kept name or value no longer validates, which cannot happen for ones
    /// that came from a `HeaderName` and a `HeaderValue`.
    pub fn header(&self) -> Option<ResponseHeader> {
        let mut h = ResponseHeader::build_no_case(self.status, Some(self.fields.len())).ok()?;
        for &(name, start, end) in self.fields.iter() {
            let (name, start, end) = (name as usize, start as usize, end as usize);
            let name = HeaderName::from_bytes(self.wire.get(name..start.checked_sub(2)?)?).ok()?;
            let value = HeaderValue::from_maybe_shared(self.wire.slice(start..end)).ok()?;
            h.append_header(name, value).ok()?;
        }
        h.set_version(self.version);
        Some(h)
    }

    /// The prepared header as Pingora's HTTP/1 writer sends [`Self::header`]: the status line
    /// and the fields, each line ending in CRLF, without the blank line that ends a header (an
    /// answer appends its own fields first).
    pub fn wire(&self) -> &[u8] {
        &self.wire
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
        // The kept block is what Pingora's H1 writer makes of the built header (its status
        // line, then `header_to_h1_wire`).
        let mut pingora = bytes::BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        header.header_to_h1_wire(&mut pingora);
        assert_eq!(head.wire(), &pingora[..]);
        assert!(head
            .wire()
            .starts_with(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"));
        assert!(head.wire().ends_with(b"x-a: 1\r\n"));
        assert!(head.is_fresh(now + Duration::from_secs(59)));
        assert!(!head.is_fresh(now + Duration::from_secs(61)));
        assert_eq!(head.age(now + Duration::from_secs(7)).as_secs(), 7);
        assert_eq!(head.age(now - Duration::from_secs(7)), Duration::ZERO);
        assert!(HitHead::parse(&(vec![1, 2], vec![3]), |_| Ok(())).is_none());
    }
}
