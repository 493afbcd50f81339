//! PROXY protocol (v1 and v2) on the public listeners, for nodes behind an AWS NLB or HAProxy.
//!
//! With `edge.proxy_protocol: true`, every connection to `edge.listen` and `edge.tls.listen`
//! must open with a PROXY header; its source address replaces the TCP peer's in the connection's
//! socket digest, so the access log and `policy.misses_per_ip` see the real client. A connection
//! without a valid header within `edge.header_timeout` is closed. With the option off (the
//! default) nothing is parsed: a forged header is just a bad request line (400), never trusted.
//!
//! TLS listeners read the header in Pingora's pre-TLS hook ([`PreTlsProcess`]); plain listeners in
//! [`crate::edge::client_limits::ClientLimits`] before HTTP parsing starts. Exactly the header's
//! bytes are consumed (v2: 16 bytes, then its stated length; v1: up to CRLF, at most 107 bytes),
//! so the request that follows is untouched. Parsing is the `ppp` crate's. A `LOCAL` (v2) or
//! `UNKNOWN` (v1) header, which load balancers send for their own health checks, keeps the
//! connection's address.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream};
use ppp::{v1, v2, HeaderResult};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::metrics::metrics;

/// The v2 signature (12 bytes).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (spec: 107 bytes).
const V1_MAX: usize = 107;
/// The longest v2 address + TLV block accepted (an NLB's TLVs are a few dozen bytes).
const V2_MAX_PAYLOAD: usize = 1024;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection closed or failed while the header was read.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
    /// No header arrived in time.
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    /// The bytes are not a PROXY header.
    #[error("connection does not start with a PROXY header")]
    Missing,
    /// A PROXY header that does not parse.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

/// Read one PROXY header from the start of `stream`, consuming exactly its bytes. `Some`: the
/// client's address; `None`: a `LOCAL`/`UNKNOWN` header (keep the connection's own address).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = vec![0u8; 12];
    stream.read_exact(&mut buf).await?;
    if buf.as_slice() == V2_SIGNATURE {
        buf.resize(16, 0);
        stream.read_exact(&mut buf[12..]).await?;
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if len > V2_MAX_PAYLOAD {
            return Err(ProxyHeaderError::Malformed(format!(
                "v2 payload of {len} bytes (at most {V2_MAX_PAYLOAD})"
            )));
        }
        buf.resize(16 + len, 0);
        stream.read_exact(&mut buf[16..]).await?;
    } else if buf.starts_with(b"PROXY ") {
        // One byte at a time up to CRLF, so nothing after the header is consumed (the reads
        // come out of the stream's buffer, not the socket).
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyHeaderError::Malformed("v1 line without CRLF".into()));
            }
            buf.push(stream.read_u8().await?);
        }
    } else {
        return Err(ProxyHeaderError::Missing);
    }
    parse(&buf)
}

/// The client address a complete header names.
fn parse(header: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let bad = |e: &dyn std::fmt::Display| ProxyHeaderError::Malformed(e.to_string());
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V1(Err(e)) => Err(bad(&e)),
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (v2::Command::Local, _) => None,
            (_, v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            (_, v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            _ => None,
        }),
        HeaderResult::V2(Err(e)) => Err(bad(&e)),
    }
}

/// A socket digest for connection `fd` whose peer is `client`.
fn digest_for(fd: i32, client: SocketAddr) -> SocketDigest {
    let digest = SocketDigest::from_raw_fd(fd);
    // A fresh digest's cell is empty, so this cannot fail; ignore rather than unwrap.
    let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(client)));
    digest
}

async fn read_with_deadline<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let result = match tokio::time::timeout(timeout, read_header(stream)).await {
        Ok(r) => r,
        Err(_) => Err(ProxyHeaderError::Timeout(timeout)),
    };
    let outcome = match &result {
        Ok(Some(_)) => "ok",
        Ok(None) => "local",
        Err(ProxyHeaderError::Timeout(_)) => "timeout",
        Err(ProxyHeaderError::Missing) => "missing",
        Err(_) => "malformed",
    };
    metrics().proxy_protocol.with_label_values(&[outcome]).inc();
    if let Err(e) = &result {
        tracing::debug!("closing connection: {e}");
    }
    result
}

/// Read the header off a plain connection and record the client address on it.
pub async fn accept_plain(mut stream: Stream, timeout: Duration) -> Option<Stream> {
    match read_with_deadline(&mut stream, timeout).await {
        Ok(Some(client)) => {
            let digest = digest_for(stream.id(), client);
            stream.set_socket_digest(digest);
            Some(stream)
        }
        Ok(None) => Some(stream),
        Err(_) => None,
    }
}

/// Pingora's pre-TLS hook: the header comes before the TLS handshake.
pub struct PreTls {
    /// How long the header may take (`edge.header_timeout`).
    pub timeout: Duration,
}

#[async_trait]
impl PreTlsProcess for PreTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora_error::Result<()> {
        use std::os::unix::io::AsRawFd;
        match read_with_deadline(stream, self.timeout).await {
            Ok(Some(client)) => {
                let digest = digest_for(stream.as_raw_fd(), client);
                stream.set_socket_digest(digest);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => pingora_error::Error::e_explain(
                pingora_error::ErrorType::InvalidHTTPHeader,
                e.to_string(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let r = read_header(&mut cursor).await;
        let pos = cursor.position() as usize;
        (r, bytes[pos..].to_vec())
    }

    #[tokio::test]
    async fn v1_and_v2_consume_exactly_the_header() {
        let (r, rest) =
            read(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(r.unwrap(), Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");

        let (r, rest) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\nX").await;
        assert_eq!(r.unwrap(), Some("[2001:db8::1]:4000".parse().unwrap()));
        assert_eq!(rest, b"X");

        let (r, rest) = read(b"PROXY UNKNOWN\r\nGET").await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"GET");

        let src: SocketAddr = "198.51.100.9:6000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let mut v2h = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (src, dst),
        )
        .write_tlv(v2::Type::NoOp, &[0; 5])
        .unwrap()
        .build()
        .unwrap();
        v2h.extend_from_slice(b"\x16\x03\x01");
        let (r, rest) = read(&v2h).await;
        assert_eq!(r.unwrap(), Some(src));
        assert_eq!(rest, b"\x16\x03\x01");
    }

    #[tokio::test]
    async fn non_headers_are_refused() {
        assert!(matches!(
            read(b"GET /image/a.jpg HTTP/1.1\r\n\r\n").await.0,
            Err(ProxyHeaderError::Missing)
        ));
        assert!(matches!(
            read(b"PROXY TCP4 nonsense here\r\n").await.0,
            Err(ProxyHeaderError::Malformed(_))
        ));
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(matches!(
            read(long.as_bytes()).await.0,
            Err(ProxyHeaderError::Malformed(_))
        ));
        assert!(matches!(
            read(b"PROXY TCP4 1.2.3.4").await.0,
            Err(ProxyHeaderError::Io(_))
        ));
    }
}
