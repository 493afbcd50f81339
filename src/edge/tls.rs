//! TLS for the public listeners: certificates from PEM files, chosen by SNI, HTTP/2 over ALPN.
//!
//! Pingora's `rustls` backend is used (see the README for why not OpenSSL). Each configured
//! certificate answers the DNS names in its subjectAltName (exact, or `*.example.com`
//! wildcards for one label); the first certificate also answers handshakes with no SNI or an
//! unknown name, so a client that asks for an IP address still gets a certificate.
//!
//! [`load`] is also what `imgedge check` runs: it fails, naming the key, on an unreadable or
//! empty file, a key that does not belong to its certificate, a certificate that is expired or
//! not yet valid, or one without any name.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pingora_core::listeners::tls::TlsSettings;
use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{ClientHello, CryptoProvider, ResolvesServerCert};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{CertificateConfig, ConfigError, TlsConfig};

/// A loaded certificate and what it is for.
pub struct LoadedCert {
    /// The chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// DNS names (lower case; wildcards as `*.example.com`).
    pub names: Vec<String>,
    /// End of validity.
    pub not_after: SystemTime,
}

/// Picks a certificate by SNI.
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SniResolver {
    /// The certificate for a server name (`None`: no SNI).
    pub fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
            .clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

fn key_of(index: usize, field: &str) -> String {
    format!("edge.tls.certificates[{index}].{field}")
}

fn bad(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Certificate {
        key,
        message: message.into(),
    }
}

/// Load and check one certificate.
pub fn load_one(
    index: usize,
    c: &CertificateConfig,
    now: SystemTime,
) -> Result<LoadedCert, ConfigError> {
    pingora_rustls::install_default_crypto_provider();
    let cert_path = c.cert.to_string_lossy().into_owned();
    let key_path = c.key.to_string_lossy().into_owned();
    for (field, path) in [("cert", &c.cert), ("key", &c.key)] {
        std::fs::metadata(path)
            .map_err(|e| bad(key_of(index, field), format!("{}: {e}", path.display())))?;
    }
    let (certs, key) = pingora_rustls::load_certs_and_key_files(&cert_path, &key_path)
        .map_err(|e| bad(key_of(index, "cert"), e.to_string()))?
        .ok_or_else(|| {
            bad(
                key_of(index, "key"),
                format!(
                    "{} has no certificate or {} has no private key (PEM expected)",
                    c.cert.display(),
                    c.key.display()
                ),
            )
        })?;
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| bad(key_of(index, "key"), "no TLS crypto provider"))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(key_of(index, "key"), format!("{}: {e}", c.key.display())))?;
    let (_, leaf) = X509Certificate::from_der(&certs[0])
        .map_err(|e| bad(key_of(index, "cert"), format!("{}: {e}", c.cert.display())))?;
    let from =
        UNIX_EPOCH + Duration::from_secs(leaf.validity().not_before.timestamp().max(0) as u64);
    let not_after =
        UNIX_EPOCH + Duration::from_secs(leaf.validity().not_after.timestamp().max(0) as u64);
    if now < from {
        return Err(bad(
            key_of(index, "cert"),
            format!("{}: not valid yet", c.cert.display()),
        ));
    }
    if now > not_after {
        return Err(bad(
            key_of(index, "cert"),
            format!("{}: expired", c.cert.display()),
        ));
    }
    let (mut names, mut ips) = (Vec::new(), 0);
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(_) => ips += 1,
                _ => {}
            }
        }
    }
    if names.is_empty() && ips == 0 {
        return Err(bad(
            key_of(index, "cert"),
            format!(
                "{}: no DNS name or IP address in subjectAltName",
                c.cert.display()
            ),
        ));
    }
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| {
        bad(
            key_of(index, "key"),
            format!(
                "{} does not belong to {}: {e}",
                c.key.display(),
                c.cert.display()
            ),
        )
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_after,
    })
}

/// The resolver for the listeners and what it was built from (for `imgedge check`).
pub type Loaded = (Arc<SniResolver>, Vec<LoadedCert>);

/// Load every configured certificate into a resolver. `None` when TLS is not configured.
pub fn load(cfg: &TlsConfig) -> Result<Option<Loaded>, ConfigError> {
    if cfg.certificates.is_empty() {
        return Ok(None);
    }
    let now = SystemTime::now();
    let loaded = cfg
        .certificates
        .iter()
        .enumerate()
        .map(|(i, c)| load_one(i, c, now))
        .collect::<Result<Vec<_>, _>>()?;
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    // Earlier certificates win a name listed twice, like the default does.
    for c in loaded.iter().rev() {
        for n in &c.names {
            match n.strip_prefix("*.") {
                Some(parent) => wildcard.insert(parent.to_string(), c.key.clone()),
                None => exact.insert(n.clone(), c.key.clone()),
            };
        }
    }
    let resolver = SniResolver {
        exact,
        wildcard,
        default: loaded[0].key.clone(),
    };
    Ok(Some((Arc::new(resolver), loaded)))
}

/// Pingora's listener settings for a resolver.
pub fn settings(resolver: Arc<SniResolver>, h2: bool) -> pingora_error::Result<TlsSettings> {
    let mut s = TlsSettings::intermediate("", "")?;
    s.set_cert_resolver(resolver);
    if h2 {
        s.enable_h2();
    }
    Ok(s)
}
