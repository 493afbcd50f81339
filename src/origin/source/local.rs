//! Originals from a directory: the embedded demo and single-node setups.

use std::io::Read;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Fetched, Original, Source, SourceError};

/// Reads `root/<key>`. Keys come from validated ids (no `..`, no empty segment) and a validated
/// template, so they cannot leave `root`.
pub struct LocalSource {
    root: PathBuf,
}

impl LocalSource {
    /// A source rooted at `root`.
    pub fn new(root: PathBuf) -> Self {
        LocalSource { root }
    }
}

#[async_trait]
impl Source for LocalSource {
    async fn fetch(
        &self,
        key: &str,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched, SourceError> {
        // Defence in depth behind id and template validation: only plain components, so no key
        // can be absolute or climb out of root.
        if !std::path::Path::new(key)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(SourceError::NotFound);
        }
        let path = self.root.join(key);
        let if_none_match = if_none_match.map(str::to_owned);
        // One hop to the blocking pool for open, stat and read: tokio::fs would take one per
        // call and per 2 MiB chunk, and copy each chunk out of its own buffer.
        tokio::task::spawn_blocking(move || read_file(&path, max_bytes, if_none_match.as_deref()))
            .await
            .map_err(|e| SourceError::Failed(format!("read task: {e}")))?
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    async fn probe(&self) -> Result<(), SourceError> {
        match tokio::fs::metadata(&self.root).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(SourceError::Failed(format!(
                "{} is not a directory",
                self.root.display()
            ))),
            Err(e) => Err(SourceError::Failed(format!("{}: {e}", self.root.display()))),
        }
    }
}

/// Opens, stats and reads `path` on the calling (blocking) thread, straight into a buffer of the
/// file's size.
fn read_file(
    path: &std::path::Path,
    max_bytes: u64,
    if_none_match: Option<&str>,
) -> Result<Fetched, SourceError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SourceError::NotFound),
        Err(e) => return Err(SourceError::Failed(format!("open {}: {e}", path.display()))),
    };
    let meta = file
        .metadata()
        .map_err(|e| SourceError::Failed(format!("stat {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(SourceError::NotFound);
    }
    let etag = file_etag(&meta);
    if if_none_match == Some(etag.as_str()) {
        return Ok(Fetched::NotModified);
    }
    if meta.len() > max_bytes {
        return Err(SourceError::TooLarge {
            size: meta.len(),
            limit: max_bytes,
        });
    }
    // Read at most one byte past the limit, in case the file grew after the stat.
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut buf)
        .map_err(|e| SourceError::Failed(format!("read {}: {e}", path.display())))?;
    if buf.len() as u64 > max_bytes {
        return Err(SourceError::TooLarge {
            size: buf.len() as u64,
            limit: max_bytes,
        });
    }
    Ok(Fetched::Body(Original {
        bytes: Bytes::from(buf),
        etag: Some(etag),
    }))
}

/// A weak validator from the file's size and modification time (nanoseconds where the file
/// system keeps them): cheap (no read), and any rewrite through a normal write changes it.
fn file_etag(meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("W/\"{:x}-{:x}\"", meta.len(), mtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_cannot_leave_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.jpg"), b"x").unwrap();
        let src = LocalSource::new(dir.path().join("sub"));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for key in ["../in.jpg", "/etc/passwd", "a/../../in.jpg", "./../in.jpg"] {
            assert!(
                matches!(
                    src.fetch(key, 1 << 20, None).await,
                    Err(SourceError::NotFound)
                ),
                "{key}"
            );
        }
        let src = LocalSource::new(dir.path().to_path_buf());
        let got = src.fetch("in.jpg", 1 << 20, None).await.unwrap();
        assert_eq!(got.into_body().unwrap().bytes.as_ref(), b"x");
        assert!(matches!(
            src.fetch("in.jpg", 0, None).await,
            Err(SourceError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn a_file_revalidates_until_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jpg");
        std::fs::write(&path, b"one").unwrap();
        let src = LocalSource::new(dir.path().to_path_buf());
        let first = src.fetch("a.jpg", 1 << 20, None).await.unwrap();
        let tag = first.into_body().unwrap().etag.unwrap();
        assert!(tag.starts_with("W/\""), "{tag}");
        assert!(matches!(
            src.fetch("a.jpg", 1 << 20, Some(&tag)).await,
            Ok(Fetched::NotModified)
        ));
        // Another size (whatever the file system's mtime resolution): a new tag and the bytes.
        std::fs::write(&path, b"longer").unwrap();
        let again = src.fetch("a.jpg", 1 << 20, Some(&tag)).await.unwrap();
        let again = again.into_body().expect("changed: the bytes");
        assert_eq!(again.bytes.as_ref(), b"longer");
        assert_ne!(again.etag.as_deref(), Some(tag.as_str()));
    }
}
