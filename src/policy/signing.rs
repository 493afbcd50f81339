//! Signed URLs: `sig` = base64url(HMAC-SHA256(key, canonical variant URI)), unpadded.
//!
//! The message is the variant's canonical URI (`/image/{id}?size=…&fit=…&…`), not the raw
//! query: parameter order, `utm_*` noise and equivalent spellings do not break a signature,
//! while every parameter that changes the output is covered. Several keys may be configured
//! for rotation: the first signs, any verifies, each compared in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::percent_decode_str;
use sha2::Sha256;

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// The query parameter carrying the signature.
pub const PARAM: &str = "sig";

/// Signs and verifies with the configured keys.
pub struct Signer {
    // Keyed once at start-up; a clone per request skips re-deriving the HMAC pads.
    keys: Vec<HmacSha256>,
}

impl Signer {
    /// A signer for `keys`, or `None` when there are none (signing off).
    pub fn new(keys: &[String]) -> Option<Signer> {
        // HMAC takes keys of any length, so no configured key is dropped here.
        let keys: Vec<HmacSha256> = keys
            .iter()
            .filter_map(|k| <HmacSha256 as Mac>::new_from_slice(k.as_bytes()).ok())
            .collect();
        (!keys.is_empty()).then_some(Signer { keys })
    }

    fn mac(key: &HmacSha256, message: &str) -> HmacSha256 {
        let mut mac = key.clone();
        mac.update(message.as_bytes());
        mac
    }

    /// The signature of a canonical URI with the first (current) key.
    pub fn sign(&self, canonical_uri: &str) -> String {
        let tag = Self::mac(&self.keys[0], canonical_uri)
            .finalize()
            .into_bytes();
        URL_SAFE_NO_PAD.encode(tag)
    }

    /// Whether `sig` is the signature of `canonical_uri` under any configured key.
    pub fn verify(&self, canonical_uri: &str, sig: &str) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(sig) else {
            return false;
        };
        // Every key is tried, so the time does not tell which key (if any) matched.
        self.keys.iter().fold(false, |ok, key| {
            Self::mac(key, canonical_uri).verify_slice(&raw).is_ok() | ok
        })
    }
}

/// The one `sig` value of a query. Missing or repeated → 403.
pub fn signature_param(query: &str) -> Result<&str> {
    let mut found = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode_str(k).decode_utf8_lossy() == PARAM {
            if found.is_some() {
                return Err(Error::Forbidden("more than one signature"));
            }
            found = Some(v);
        }
    }
    found
        .filter(|v| !v.is_empty())
        .ok_or(Error::Forbidden("missing signature"))
}

/// `uri` with its signature appended (`&sig=…` or `?sig=…`).
pub fn append(uri: &str, sig: &str) -> String {
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{PARAM}={sig}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn signatures_verify_under_any_configured_key_and_nothing_else() {
        let old = Signer::new(&keys(&["old-key-0123456789abcdef0123456789"])).unwrap();
        let both = Signer::new(&keys(&[
            "new-key-0123456789abcdef0123456789",
            "old-key-0123456789abcdef0123456789",
        ]))
        .unwrap();
        let uri = "/image/a.jpg?size=100x100&fit=cover&q=80";
        let sig = old.sign(uri);
        assert_eq!(sig.len(), 43);
        assert!(
            both.verify(uri, &sig),
            "rotation: the old key still verifies"
        );
        assert!(both.verify(uri, &both.sign(uri)));
        assert!(
            !old.verify(uri, &both.sign(uri)),
            "the new key is unknown to old nodes"
        );
        assert!(!both.verify("/image/a.jpg?size=101x100&fit=cover&q=80", &sig));
        let mut tampered = sig.clone().into_bytes();
        tampered[0] ^= 1;
        assert!(!both.verify(uri, &String::from_utf8(tampered).unwrap()));
        assert!(!both.verify(uri, "not base64!"));
        assert!(!both.verify(uri, ""));
        assert!(Signer::new(&[]).is_none());
    }

    #[test]
    fn the_signature_parameter_must_be_there_once() {
        assert_eq!(signature_param("size=1x1&sig=abc").unwrap(), "abc");
        assert_eq!(signature_param("s%69g=abc").unwrap(), "abc");
        assert!(signature_param("size=1x1").is_err());
        assert!(signature_param("sig=").is_err());
        assert!(signature_param("sig=a&sig=b").is_err());
        assert_eq!(append("/image/a", "x"), "/image/a?sig=x");
        assert_eq!(append("/image/a?q=1", "x"), "/image/a?q=1&sig=x");
    }
}
