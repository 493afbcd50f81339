//! Request policy: what the edge agrees to serve, decided before the cache is consulted.
//!
//! - [`signing`]: signed URLs (HMAC-SHA256 over the canonical variant URI, key rotation).
//! - [`sizes`]: an allow-list of output boxes, or a ladder that rounds sizes up (fewer variants).
//! - [`rate`]: a per-client budget of misses; hits never spend it.
//!
//! Signatures are checked against the variant *as requested*; the size policy then rewrites it,
//! so a signed URL stays valid when the ladder changes.

pub mod rate;
pub mod signing;
pub mod sizes;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::variant::Variant;

/// The edge's request policy, built once from the config.
pub struct Policy {
    /// Signed-URL check, when keys are configured.
    pub signer: Option<signing::Signer>,
    /// Size allow-list or ladder.
    pub sizes: sizes::SizePolicy,
    /// Per-client miss budget, when configured.
    pub misses: Option<rate::MissLimiter>,
}

impl Policy {
    /// The policy of a validated config.
    pub fn from_config(cfg: &Config) -> Policy {
        let p = &cfg.policy;
        Policy {
            signer: signing::Signer::new(&cfg.signing_keys()),
            sizes: sizes::SizePolicy::from_config(cfg),
            misses: rate::MissLimiter::new(p.misses_per_ip, &p.client_ip_header),
        }
    }

    /// Check a parsed request (signature, size policy) and return the variant to serve.
    pub fn admit(&self, query: Option<&str>, variant: Variant) -> Result<Variant> {
        if let Some(signer) = &self.signer {
            let sig = signing::signature_param(query.unwrap_or(""))?;
            if !signer.verify(&variant.signed_uri(), sig) {
                return Err(Error::Forbidden("bad signature"));
            }
        }
        self.sizes.apply(variant)
    }
}
