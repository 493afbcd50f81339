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
}
