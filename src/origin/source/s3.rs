//! Originals from S3 or an S3-compatible store, through aws-sdk-s3.
//!
//! The client is built lazily on first use: Pingora may daemonize (fork) after the services are
//! created, and a client's connection pool and background tasks must not cross a fork.

use async_trait::async_trait;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::{Credentials, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::Client;
use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

use super::{Fetched, Original, Source, SourceError};
use crate::config::{ChecksumMode, S3Config};

/// An S3 bucket as a source of originals.
pub struct S3Source {
    config: S3Config,
    client: OnceCell<Client>,
    /// When AccessDenied-as-not-found was last logged (`denied_log` ticks), 0: never.
    denied_logged: AtomicU64,
    denied_log: Instant,
}

/// AccessDenied taken as not found is logged at most this often.
const DENIED_LOG_EVERY: Duration = Duration::from_secs(60);

impl S3Source {
    /// A source for the configured bucket; no network I/O until the first fetch.
    pub fn new(config: S3Config) -> Self {
        S3Source {
            config,
            client: OnceCell::new(),
            denied_logged: AtomicU64::new(0),
            denied_log: Instant::now(),
        }
    }

    /// Whether to log now that AccessDenied was taken as not found: at most once per
    /// [`DENIED_LOG_EVERY`] (the first time always).
    fn denied_log_due(&self) -> bool {
        // Milliseconds since `denied_log`, plus one so that 0 means "never logged".
        let now = self.denied_log.elapsed().as_millis() as u64 + 1;
        let last = self.denied_logged.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= DENIED_LOG_EVERY.as_millis() as u64)
            && self
                .denied_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn map_error(&self, key: &str, err: SdkError<GetObjectError>) -> Result<Fetched, SourceError> {
        Err(match classify(err) {
            Classified::NotModified => return Ok(Fetched::NotModified),
            Classified::Denied(_) if self.config.access_denied_is_not_found => {
                if self.denied_log_due() {
                    tracing::warn!(
                        bucket = %self.config.bucket,
                        key,
                        "S3 answered 403 AccessDenied; served as not found \
                         (origin.s3.access_denied_is_not_found). S3 answers AccessDenied for \
                         missing keys when the role lacks s3:ListBucket on the bucket; if the \
                         object exists, check the role's s3:GetObject permission. Logged at most \
                         once a minute."
                    );
                }
                SourceError::NotFound
            }
            Classified::Denied(msg) => SourceError::Failed(msg),
            Classified::Other(e) => e,
        })
    }

    async fn client(&self) -> &Client {
        self.client.get_or_init(|| build_client(&self.config)).await
    }
}

/// An S3 client for `c` (its bucket aside): region, endpoint, credentials, timeouts, retries and
/// the rustls + ring HTTPS client. Call it on the runtime that will use the client.
pub async fn build_client(c: &S3Config) -> Client {
    let region = if c.region.is_empty() {
        RegionProviderChain::default_provider().or_else(Region::new("us-east-1"))
    } else {
        RegionProviderChain::first_try(Region::new(c.region.clone()))
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(https_client())
        .region(region)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(c.connect_timeout)
                .operation_attempt_timeout(c.attempt_timeout)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(c.max_attempts));
    if !c.access_key_id.is_empty() {
        loader = loader.credentials_provider(Credentials::new(
            c.access_key_id.expose().to_string(),
            c.secret_access_key.expose().to_string(),
            None,
            None,
            "imgedge-config",
        ));
    }
    let shared = loader.load().await;
    let mut b = aws_sdk_s3::config::Builder::from(&shared).force_path_style(c.force_path_style);
    if !c.endpoint.is_empty() {
        b = b.endpoint_url(&c.endpoint);
    }
    if c.checksums == ChecksumMode::WhenRequired {
        b = b
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    Client::from_conf(b.build())
}

/// The SDK's HTTP client on rustls with ring, the provider the edge's TLS uses: the SDK's
/// default would link a second C crypto library (aws-lc-sys). System roots, as the default.
fn https_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// A GetObject failure: AccessDenied (decided by config) or anything else.
#[derive(Debug)]
enum Classified {
    /// 304: a conditional GET whose object still has the tag asked about. The SDK reports
    /// every non-2xx status as an error; this one is an answer.
    NotModified,
    /// 403 AccessDenied; the message for when it is not taken as not found.
    Denied(String),
    Other(SourceError),
}

fn classify(err: SdkError<GetObjectError>) -> Classified {
    match err {
        SdkError::TimeoutError(_) => Classified::Other(SourceError::Timeout),
        SdkError::DispatchFailure(d) if d.is_timeout() => Classified::Other(SourceError::Timeout),
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let e = se.into_err();
            if status == 304 {
                Classified::NotModified
            } else if e.is_no_such_key() || status == 404 {
                Classified::Other(SourceError::NotFound)
            } else if status == 403 && e.meta().code() == Some("AccessDenied") {
                Classified::Denied(format!("s3 status {status}: {e}"))
            } else {
                Classified::Other(SourceError::Failed(format!("s3 status {status}: {e}")))
            }
        }
        other => Classified::Other(SourceError::Failed(format!(
            "s3: {}",
            aws_smithy_types::error::display::DisplayErrorContext(&other)
        ))),
    }
}

#[async_trait]
impl Source for S3Source {
    async fn fetch(
        &self,
        key: &str,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched, SourceError> {
        let sent = self
            .client()
            .await
            .get_object()
            .bucket(&self.config.bucket)
            .key(key)
            .set_if_none_match(if_none_match.map(str::to_string))
            .send()
            .await;
        let out = match sent {
            Ok(out) => out,
            Err(e) => return self.map_error(key, e),
        };
        let etag = out.e_tag().map(str::to_string);
        let declared = out.content_length().unwrap_or(0).max(0) as u64;
        if declared > max_bytes {
            return Err(SourceError::TooLarge {
                size: declared,
                limit: max_bytes,
            });
        }
        let mut body = out.body;
        let mut buf = BytesMut::with_capacity(declared as usize);
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| SourceError::Failed(format!("s3 body: {e}")))?
        {
            if (buf.len() + chunk.len()) as u64 > max_bytes {
                return Err(SourceError::TooLarge {
                    size: (buf.len() + chunk.len()) as u64,
                    limit: max_bytes,
                });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Fetched::Body(Original {
            bytes: buf.freeze(),
            etag,
        }))
    }

    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn probe(&self) -> Result<(), SourceError> {
        self.client()
            .await
            .head_bucket()
            .bucket(&self.config.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| SourceError::Failed(format!("head bucket: {}", DisplayErrorContext(&e))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the SDK hands back for S3's answer to a conditional GET of an unchanged object
    /// (304, no body), and for a missing key.
    fn service_error(status: u16) -> SdkError<GetObjectError> {
        use aws_sdk_s3::config::http::HttpResponse;
        use aws_sdk_s3::primitives::SdkBody;
        let err =
            GetObjectError::generic(aws_smithy_types::error::ErrorMetadata::builder().build());
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        SdkError::service_error(err, raw)
    }

    #[test]
    fn a_304_is_an_answer_not_a_failure() {
        assert!(matches!(
            classify(service_error(304)),
            Classified::NotModified
        ));
        assert!(matches!(
            classify(service_error(404)),
            Classified::Other(SourceError::NotFound)
        ));
        let s = S3Source::new(S3Config::default());
        assert!(matches!(
            s.map_error("k", service_error(304)),
            Ok(Fetched::NotModified)
        ));
        assert!(matches!(
            s.map_error("k", service_error(500)),
            Err(SourceError::Failed(_))
        ));
    }

    #[test]
    fn access_denied_is_logged_at_most_once_a_minute() {
        let s = S3Source::new(S3Config::default());
        assert!(s.denied_log_due(), "the first time");
        assert!(!s.denied_log_due(), "again at once");
        // A minute later (moved back, as if the last log was 61 s ago).
        s.denied_logged.store(1, Ordering::Relaxed);
        let s = S3Source {
            denied_log: Instant::now() - Duration::from_secs(61),
            ..s
        };
        assert!(s.denied_log_due());
        assert!(!s.denied_log_due());
    }
}
