//! The peer listener's door: node-to-node requests and how they are authenticated.
//!
//! The peer listener (`cluster.listen`) is a second instance of the edge proxy on the same
//! cache, in "from a peer" mode: it serves every request locally (a hit, or a fill from this
//! node's own origin), never forwards it again, and skips the public policy (signatures, size
//! policy, miss budget), which the asking node already applied. So it only answers requests
//! that prove they come from a node of the POP: each carries [`AUTH_HEADER`], an HMAC-SHA256 of
//! the method and request target under `cluster.secret` (so the secret itself never travels,
//! and a header seen for one URL is worth nothing for another). Anything else is 403.
//!
//! Two kinds of request come in: a fill (`GET /image/...`, the canonical variant URI) and a
//! purge fan-out (`POST /_cluster/purge/...`, see [`super::purge`]). The public listener never
//! looks at these headers: a client sending them gains nothing.

use hmac::{Hmac, Mac};
use pingora_http::RequestHeader;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header carrying a node's proof (hex HMAC-SHA256 of `METHOD path?query`).
pub const AUTH_HEADER: &str = "x-imgedge-peer-auth";

/// Path prefix of purge fan-out requests on the peer listener.
pub const PURGE_PREFIX: &str = "/_cluster/purge";

/// Signs and checks node-to-node requests with the shared secret.
pub struct PeerAuth {
    key: HmacSha256,
}

/// What a request on the peer listener is.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerRequest {
    /// A fill: serve it locally like any GET/HEAD.
    Fill,
    /// A purge fan-out: apply it locally; the path after [`PURGE_PREFIX`] is the admin's.
    Purge(String),
    /// Not from a node of the POP: 403.
    Refused,
}

impl PeerAuth {
    /// Keyed once with `cluster.secret`.
    pub fn new(secret: &str) -> PeerAuth {
        PeerAuth {
            // HMAC accepts keys of any length.
            key: <HmacSha256 as Mac>::new_from_slice(secret.as_bytes())
                .expect("HMAC takes any key length"),
        }
    }

    fn mac(&self, method: &str, target: &str) -> HmacSha256 {
        let mut mac = self.key.clone();
        mac.update(method.as_bytes());
        mac.update(b" ");
        mac.update(target.as_bytes());
        mac
    }

    /// The header value for a request (`target` is the path and query).
    pub fn sign(&self, method: &str, target: &str) -> String {
        hex::encode(self.mac(method, target).finalize().into_bytes())
    }

    /// Whether `req` carries a valid proof (compared in constant time).
    pub fn verify(&self, req: &RequestHeader) -> bool {
        let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let Some(given) = req
            .headers
            .get(AUTH_HEADER)
            .and_then(|v| hex::decode(v.as_bytes()).ok())
        else {
            return false;
        };
        self.mac(req.method.as_str(), target)
            .verify_slice(&given)
            .is_ok()
    }

    /// Classify a request arriving on the peer listener.
    pub fn classify(&self, req: &RequestHeader) -> PeerRequest {
        if !self.verify(req) {
            return PeerRequest::Refused;
        }
        match req.uri.path().strip_prefix(PURGE_PREFIX) {
            Some(rest) if req.method == http::Method::POST => {
                let query = req.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
                PeerRequest::Purge(format!("/purge{rest}{query}"))
            }
            _ => PeerRequest::Fill,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str, auth: Option<String>) -> RequestHeader {
        let mut r = RequestHeader::build(method, target.as_bytes(), None).unwrap();
        if let Some(a) = auth {
            r.insert_header(AUTH_HEADER, a).unwrap();
        }
        r
    }

    #[test]
    fn only_a_signature_for_this_exact_request_passes() {
        let auth = PeerAuth::new("0123456789abcdef0123456789abcdef");
        let other = PeerAuth::new("another secret, also 32 chars long");
        let t = "/image/a.jpg?size=100x";
        let good = auth.sign("GET", t);
        assert_eq!(
            auth.classify(&req("GET", t, Some(good.clone()))),
            PeerRequest::Fill
        );
        assert_eq!(auth.classify(&req("GET", t, None)), PeerRequest::Refused);
        let wrong = Some(other.sign("GET", t));
        assert_eq!(auth.classify(&req("GET", t, wrong)), PeerRequest::Refused);
        let moved = "/image/b.jpg?size=100x";
        assert_eq!(
            auth.classify(&req("GET", moved, Some(good))),
            PeerRequest::Refused
        );
        let secret = Some("0123456789abcdef0123456789abcdef".to_string());
        assert_eq!(auth.classify(&req("GET", t, secret)), PeerRequest::Refused);
        let p = "/_cluster/purge/url/image/a.jpg?size=100x";
        assert_eq!(
            auth.classify(&req("POST", p, Some(auth.sign("POST", p)))),
            PeerRequest::Purge("/purge/url/image/a.jpg?size=100x".into())
        );
    }
}
