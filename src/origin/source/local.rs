//! Originals from a directory: the embedded demo and single-node setups.

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::{Source, SourceError};

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
    async fn fetch(&self, key: &str, max_bytes: u64) -> Result<Bytes, SourceError> {
        // Defence in depth behind id and template validation: only plain components, so no key
        // can be absolute or climb out of root.
        if !std::path::Path::new(key)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(SourceError::NotFound);
        }
        let path = self.root.join(key);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SourceError::NotFound)
            }
            Err(e) => return Err(SourceError::Failed(format!("open {}: {e}", path.display()))),
        };
        let meta = file
            .metadata()
            .await
            .map_err(|e| SourceError::Failed(format!("stat {}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(SourceError::NotFound);
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
            .await
            .map_err(|e| SourceError::Failed(format!("read {}: {e}", path.display())))?;
        if buf.len() as u64 > max_bytes {
            return Err(SourceError::TooLarge {
                size: buf.len() as u64,
                limit: max_bytes,
            });
        }
        Ok(Bytes::from(buf))
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
                matches!(src.fetch(key, 1 << 20).await, Err(SourceError::NotFound)),
                "{key}"
            );
        }
        let src = LocalSource::new(dir.path().to_path_buf());
        assert_eq!(src.fetch("in.jpg", 1 << 20).await.unwrap().as_ref(), b"x");
        assert!(matches!(
            src.fetch("in.jpg", 0).await,
            Err(SourceError::TooLarge { .. })
        ));
    }
}
