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
use bytes::{Bytes, BytesMut};
use tokio::sync::OnceCell;

use super::{Source, SourceError};
use crate::config::{ChecksumMode, S3Config};

/// An S3 bucket as a source of originals.
pub struct S3Source {
    config: S3Config,
    client: OnceCell<Client>,
}

impl S3Source {
    /// A source for the configured bucket; no network I/O until the first fetch.
    pub fn new(config: S3Config) -> Self {
        S3Source {
            config,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &Client {
        self.client.get_or_init(|| build_client(&self.config)).await
    }
}

async fn build_client(c: &S3Config) -> Client {
    let region = if c.region.is_empty() {
        RegionProviderChain::default_provider().or_else(Region::new("us-east-1"))
    } else {
        RegionProviderChain::first_try(Region::new(c.region.clone()))
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
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

fn map_error(err: SdkError<GetObjectError>) -> SourceError {
    match err {
        SdkError::TimeoutError(_) => SourceError::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => SourceError::Timeout,
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let e = se.into_err();
            if e.is_no_such_key() || status == 404 {
                SourceError::NotFound
            } else {
                SourceError::Failed(format!("s3 status {status}: {e}"))
            }
        }
        other => SourceError::Failed(format!(
            "s3: {}",
            aws_smithy_types::error::display::DisplayErrorContext(&other)
        )),
    }
}

#[async_trait]
impl Source for S3Source {
    async fn fetch(&self, key: &str, max_bytes: u64) -> Result<Bytes, SourceError> {
        let out = self
            .client()
            .await
            .get_object()
            .bucket(&self.config.bucket)
            .key(key)
            .send()
            .await
            .map_err(map_error)?;
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
        Ok(buf.freeze())
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
