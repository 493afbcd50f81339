//! A primary bucket with a fallback (`origin.s3.fallback`), usually a replica in another
//! region: the fallback is asked when the primary has no such object (NoSuchKey, or
//! AccessDenied taken as not found), fails after its own retries (5xx, throttling, refused),
//! or has not answered within its share of `origin.fetch_timeout` (`after`).
//!
//! Fetches are counted per bucket (`imgedge_source_fetches_by_bucket_total`), so a dashboard
//! shows when the fallback starts carrying traffic.

use std::time::Duration;

use async_trait::async_trait;
use once_cell::sync::Lazy;
use prometheus::{IntCounterVec, Opts};

use super::{Fetched, Source, SourceError};

/// Two sources tried in order; see the module docs for when the second is asked.
pub struct Fallback {
    primary: Box<dyn Source>,
    primary_bucket: String,
    secondary: Box<dyn Source>,
    secondary_bucket: String,
    /// The primary's share of the fetch time.
    after: Duration,
}

static BY_BUCKET: Lazy<IntCounterVec> = Lazy::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "imgedge_source_fetches_by_bucket_total",
            "Source fetches with a fallback bucket, by bucket and result \
             (ok, not_found, too_large, timeout, error)",
        ),
        &["bucket", "result"],
    )
    .expect("static metric");
    crate::metrics::metrics()
        .registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
});

fn label(r: &Result<Fetched, SourceError>) -> &'static str {
    match r {
        Ok(Fetched::Body(_)) => "ok",
        Ok(Fetched::NotModified) => "not_modified",
        Err(SourceError::NotFound) => "not_found",
        Err(SourceError::TooLarge { .. }) => "too_large",
        Err(SourceError::Timeout) => "timeout",
        Err(SourceError::Failed(_)) => "error",
    }
}

impl Fallback {
    /// `primary` (bucket `primary_bucket`) gets `after` to answer; then `secondary` is asked.
    pub fn new(
        primary: Box<dyn Source>,
        primary_bucket: impl Into<String>,
        secondary: Box<dyn Source>,
        secondary_bucket: impl Into<String>,
        after: Duration,
    ) -> Fallback {
        // Registered now, so /metrics lists the family from the start.
        Lazy::force(&BY_BUCKET);
        Fallback {
            primary,
            primary_bucket: primary_bucket.into(),
            secondary,
            secondary_bucket: secondary_bucket.into(),
            after,
        }
    }
}

#[async_trait]
impl Source for Fallback {
    async fn fetch(
        &self,
        key: &str,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched, SourceError> {
        // A replica keeps the object's ETag (S3 replication copies it), so the same
        // validator goes to either bucket.
        let first = tokio::time::timeout(
            self.after,
            self.primary.fetch(key, max_bytes, if_none_match),
        )
        .await
        .unwrap_or(Err(SourceError::Timeout));
        BY_BUCKET
            .with_label_values(&[&self.primary_bucket, label(&first)])
            .inc();
        let first_err = match first {
            // Too large is a property of the object: a copy of it would be too large as well.
            Ok(_) | Err(SourceError::TooLarge { .. }) => return first,
            Err(e) => e,
        };
        if let SourceError::Failed(msg) = &first_err {
            tracing::warn!(bucket = %self.primary_bucket, key, "primary failed, trying the fallback: {msg}");
        }
        let second = self.secondary.fetch(key, max_bytes, if_none_match).await;
        BY_BUCKET
            .with_label_values(&[&self.secondary_bucket, label(&second)])
            .inc();
        match second {
            // Not found is the answer only when both say so: after a primary failure the
            // object may well exist, and a 404 would be cached.
            Err(SourceError::NotFound) => Err(first_err),
            other => other,
        }
    }

    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn probe(&self) -> Result<(), SourceError> {
        // Ready while either bucket answers: that is what the fallback is for.
        match self.primary.probe().await {
            Ok(()) => Ok(()),
            Err(e) => self.secondary.probe().await.map_err(|_| e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Original;
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// A source with a fixed answer that counts its fetches.
    struct Fixed(fn() -> Result<Bytes, SourceError>, Arc<AtomicU32>);

    #[async_trait]
    impl Source for Fixed {
        async fn fetch(&self, _: &str, _: u64, _: Option<&str>) -> Result<Fetched, SourceError> {
            self.1.fetch_add(1, Ordering::Relaxed);
            (self.0)().map(|bytes| Fetched::Body(Original { bytes, etag: None }))
        }
        fn kind(&self) -> &'static str {
            "fixed"
        }
        async fn probe(&self) -> Result<(), SourceError> {
            Ok(())
        }
    }

    fn pair(
        a: fn() -> Result<Bytes, SourceError>,
        b: fn() -> Result<Bytes, SourceError>,
    ) -> (Fallback, Arc<AtomicU32>) {
        let asked = Arc::new(AtomicU32::new(0));
        let f = Fallback::new(
            Box::new(Fixed(a, Arc::new(AtomicU32::new(0)))),
            "a",
            Box::new(Fixed(b, asked.clone())),
            "b",
            Duration::from_secs(1),
        );
        (f, asked)
    }

    #[tokio::test]
    async fn not_found_only_when_both_miss_and_failures_are_not_404() {
        let ok = || Ok(Bytes::from_static(b"x"));
        let missing = || Err(SourceError::NotFound);
        let failing = || Err(SourceError::Failed("500".into()));
        let big = || Err(SourceError::TooLarge { size: 9, limit: 1 });

        let (f, asked) = pair(ok, missing);
        assert!(f.fetch("k", 10, None).await.is_ok());
        assert_eq!(
            asked.load(Ordering::Relaxed),
            0,
            "a primary hit asks no one else"
        );

        let (f, _) = pair(missing, ok);
        assert!(f.fetch("k", 10, None).await.is_ok());
        let (f, _) = pair(failing, ok);
        assert!(f.fetch("k", 10, None).await.is_ok());
        let (f, _) = pair(missing, missing);
        assert!(matches!(
            f.fetch("k", 10, None).await,
            Err(SourceError::NotFound)
        ));
        let (f, _) = pair(failing, missing);
        assert!(matches!(
            f.fetch("k", 10, None).await,
            Err(SourceError::Failed(_))
        ));
        let (f, _) = pair(missing, failing);
        assert!(matches!(
            f.fetch("k", 10, None).await,
            Err(SourceError::Failed(_))
        ));
        let (f, asked) = pair(big, ok);
        assert!(matches!(
            f.fetch("k", 10, None).await,
            Err(SourceError::TooLarge { .. })
        ));
        assert_eq!(asked.load(Ordering::Relaxed), 0);
    }
}
