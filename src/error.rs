//! Typed errors for the request path and the one place they become HTTP statuses.
//!
//! Every failure a client can cause or observe is an [`Error`]; [`Error::status`] is the single
//! mapping to a status code and [`Error::reason`] the one-line text that goes in the body. The
//! edge and the origin both answer errors through [`Error::status`], so the contract in the
//! README cannot drift between them.

use std::time::Duration;

/// Why a request did not produce an image.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request URL does not follow the URL contract (bad id, bad or repeated parameter).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The path is not one we serve.
    #[error("not found")]
    NoRoute,
    /// A method other than GET or HEAD.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request is refused by policy (bad or missing URL signature).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The request target is longer than `edge.max_uri_bytes`.
    #[error("request URI too long")]
    UriTooLong,
    /// The request's header fields exceed `edge.max_header_bytes`.
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// The client spent its miss budget; retry after the given delay.
    #[error("too many requests for uncached images")]
    TooManyRequests {
        /// How long the client should wait before retrying.
        retry_after: Duration,
    },
    /// The original does not exist at the source.
    #[error("no such image")]
    NotFound,
    /// The original exists but cannot be served: undecodable, not an image, or over a limit.
    #[error("unprocessable image: {0}")]
    Unprocessable(String),
    /// The source failed (S3 5xx, throttling after retries, connection refused, access denied).
    #[error("origin failure: {0}")]
    Upstream(String),
    /// The source did not answer in time.
    #[error("origin timeout")]
    Timeout,
    /// The resize pool and its queue are full; retry after the given delay.
    #[error("busy, retry later")]
    Busy {
        /// How long the client should wait before retrying.
        retry_after: Duration,
    },
    /// A bug or an unexpected state on our side.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status this error is answered with. The only mapping in the code base.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::NoRoute | Error::NotFound => 404,
            Error::MethodNotAllowed => 405,
            Error::Forbidden(_) => 403,
            Error::UriTooLong => 414,
            Error::HeadersTooLarge => 431,
            Error::TooManyRequests { .. } => 429,
            Error::Unprocessable(_) => 422,
            Error::Upstream(_) => 502,
            Error::Busy { .. } => 503,
            Error::Timeout => 504,
            Error::Internal(_) => 500,
        }
    }

    /// One line of text for the response body. Internal details of upstream failures are logged,
    /// not sent to clients.
    pub fn reason(&self) -> String {
        match self {
            Error::Upstream(_) => "origin failure".to_string(),
            Error::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        }
    }

    /// Whether a cache may keep this answer for the short negative TTL. Only answers that are
    /// a property of the original (missing, undecodable) qualify; transient failures never do.
    pub fn is_negative_cacheable(&self) -> bool {
        matches!(self, Error::NotFound | Error::Unprocessable(_))
    }

    /// Shorthand for [`Error::BadRequest`].
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Error::BadRequest(msg.into())
    }

    /// Shorthand for [`Error::Unprocessable`].
    pub fn unprocessable(msg: impl Into<String>) -> Self {
        Error::Unprocessable(msg.into())
    }
}

/// Result alias for the request path.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each variant. The `match` has no wildcard: a new variant does not compile until
    /// it is listed here, and so checked against the README below.
    fn one_of_each() -> Vec<Error> {
        let d = Duration::from_secs(1);
        let all = vec![
            Error::bad_request("x"),
            Error::NoRoute,
            Error::NotFound,
            Error::MethodNotAllowed,
            Error::Forbidden("x"),
            Error::UriTooLong,
            Error::HeadersTooLarge,
            Error::TooManyRequests { retry_after: d },
            Error::unprocessable("x"),
            Error::Upstream("x".into()),
            Error::Busy { retry_after: d },
            Error::Timeout,
            Error::Internal("x".into()),
        ];
        for e in &all {
            match e {
                Error::BadRequest(_)
                | Error::NoRoute
                | Error::NotFound
                | Error::MethodNotAllowed
                | Error::Forbidden(_)
                | Error::UriTooLong
                | Error::HeadersTooLarge
                | Error::TooManyRequests { .. }
                | Error::Unprocessable(_)
                | Error::Upstream(_)
                | Error::Busy { .. }
                | Error::Timeout
                | Error::Internal(_) => {}
            }
        }
        all
    }

    /// The README's status table (`| status | when | cached |`) is the contract: every status
    /// the code answers is documented there and nothing else is, and the negatively cached ones
    /// are exactly those the table says are cached.
    #[test]
    fn statuses_and_caching_match_the_readme_table() {
        let readme = include_str!("../README.md");
        let table: std::collections::BTreeMap<u16, bool> = readme
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let status = cells.get(1)?.parse::<u16>().ok()?;
                Some((status, *cells.get(3)? != "no"))
            })
            .collect();
        let mut from_code = std::collections::BTreeMap::new();
        for e in one_of_each() {
            let cached = from_code.entry(e.status()).or_insert(false);
            *cached |= e.is_negative_cacheable();
        }
        assert_eq!(
            from_code, table,
            "code (left) vs README status table (right)"
        );
    }

    #[test]
    fn upstream_details_stay_out_of_the_body() {
        let e = Error::Upstream("s3 said secret-bucket AccessDenied".into());
        assert!(!e.reason().contains("secret"));
    }
}
