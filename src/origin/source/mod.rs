//! Where originals come from: the [`Source`] trait, its S3 and local-directory implementations,
//! the [`KeyTemplate`] that maps an image id to an object key, a primary bucket with a
//! [`Fallback`], and the [`SourceCache`] of recently fetched originals in front of them.

pub mod cache;
mod fallback;
mod local;
mod s3;

pub use cache::{Lookup, SourceCache};
pub use fallback::Fallback;
pub use local::LocalSource;
pub use s3::{build_client, S3Source};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Error;

/// Why a fetch failed. Mapped to the request-path [`Error`] in one place below.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No object at that key.
    #[error("no such object")]
    NotFound,
    /// The object is larger than `limits.max_source_bytes`.
    #[error("original is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the object, as far as known.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The source did not answer within `origin.fetch_timeout`.
    #[error("timed out")]
    Timeout,
    /// Any other failure (throttling or 5xx after retries, connection refused, access denied).
    #[error("{0}")]
    Failed(String),
}

impl From<SourceError> for Error {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::NotFound => Error::NotFound,
            e @ SourceError::TooLarge { .. } => Error::Unprocessable(e.to_string()),
            SourceError::Timeout => Error::Timeout,
            SourceError::Failed(msg) => Error::Upstream(msg),
        }
    }
}

/// An original as fetched: its bytes and the source's validator for them.
#[derive(Debug, Clone)]
pub struct Original {
    /// The whole object.
    pub bytes: Bytes,
    /// The source's entity tag, quoted as in HTTP (S3's `ETag`; a weak tag from a file's size
    /// and mtime). Equal tags mean equal bytes, so a variant's tag can be derived from it
    /// before any work, and a later fetch can ask "changed since?" with it. `None` when the
    /// source gave none.
    pub etag: Option<String>,
}

/// What a fetch found.
#[derive(Debug)]
pub enum Fetched {
    /// The object (it changed, or the fetch was unconditional).
    Body(Original),
    /// The object still has the tag the fetch was conditional on; nothing was transferred.
    NotModified,
}

impl Fetched {
    /// The original, when the fetch brought one.
    pub fn into_body(self) -> Option<Original> {
        match self {
            Fetched::Body(o) => Some(o),
            Fetched::NotModified => None,
        }
    }
}

/// A store of originals, addressed by object key.
#[async_trait]
pub trait Source: Send + Sync {
    /// Fetch the whole object, refusing it when larger than `max_bytes`. With `if_none_match`
    /// (an [`Original::etag`] from an earlier fetch) the source answers
    /// [`Fetched::NotModified`] instead of the bytes when the object still has that tag.
    async fn fetch(
        &self,
        key: &str,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched, SourceError>;

    /// A short name for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Whether the source answers at all (readiness): the bucket or directory is reachable.
    async fn probe(&self) -> Result<(), SourceError>;
}

/// Maps an id to an object key. `{id}` is the whole id; `{id:START:LEN}` is LEN bytes of it from
/// byte START (shorter when the id is shorter), so `{id:0:4}/{id:4:2}/{id}` turns
/// `3972b16287e5.jpg` into `3972/b1/3972b16287e5.jpg`. Other text is copied as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Id,
    Slice(usize, usize),
}

impl KeyTemplate {
    /// Parse a template; the error says what is wrong with it.
    pub fn parse(template: &str) -> Result<KeyTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| "unclosed '{'".to_string())?
                + open;
            let inner = &rest[open + 1..close];
            parts.push(match inner.split(':').collect::<Vec<_>>().as_slice() {
                ["id"] => Part::Id,
                ["id", start, len] => {
                    let n = |s: &str| {
                        s.parse::<usize>()
                            .map_err(|_| format!("bad number in {{{inner}}}"))
                    };
                    let (start, len) = (n(start)?, n(len)?);
                    if len == 0 {
                        return Err(format!("zero length in {{{inner}}}"));
                    }
                    Part::Slice(start, len)
                }
                _ => {
                    return Err(format!(
                        "unknown placeholder {{{inner}}}; use {{id}} or {{id:START:LEN}}"
                    ))
                }
            });
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err("unmatched '}'".into());
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        if !parts
            .iter()
            .any(|p| matches!(p, Part::Id | Part::Slice(..)))
        {
            return Err("must contain {id}".into());
        }
        if parts
            .iter()
            .any(|p| matches!(p, Part::Literal(l) if l.split('/').any(|s| s == "..")))
        {
            return Err("must not contain a '..' segment".into());
        }
        if matches!(parts.first(), Some(Part::Literal(l)) if l.starts_with('/')) {
            return Err("must not start with '/'".into());
        }
        Ok(KeyTemplate { parts })
    }

    /// The object key for a validated id (ASCII, so byte slicing is safe).
    pub fn render(&self, id: &str) -> String {
        let mut out = String::with_capacity(id.len() * 2 + 8);
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Id => out.push_str(id),
                Part::Slice(start, len) => {
                    let s = (*start).min(id.len());
                    let e = start.saturating_add(*len).min(id.len());
                    out.push_str(&id[s..e]);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_hash_prefixed_layout() {
        let t = KeyTemplate::parse("{id:0:4}/{id:4:2}/{id}").unwrap();
        assert_eq!(t.render("3972b16287e5.jpg"), "3972/b1/3972b16287e5.jpg");
        assert_eq!(t.render("ab"), "ab//ab");
        let t = KeyTemplate::parse("originals/{id}").unwrap();
        assert_eq!(t.render("x.jpg"), "originals/x.jpg");
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in [
            "", "static", "{id", "{id:0:}", "{name}", "{id:0:0}", "../{id}", "{id}}", "/{id}",
        ] {
            assert!(KeyTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}
