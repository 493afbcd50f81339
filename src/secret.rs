//! Secrets in the configuration: inline, or from an environment variable, a file or a systemd
//! credential, so the YAML an operator ships (or a package installs) need hold none.
//!
//! Every secret key (`policy.signing_keys`, `admin.purge_token`, `cluster.secret`, `origin.s3.access_key_id`,
//! `origin.s3.secret_access_key`, and the key pairs of `origin.s3.fallback` and `origin.results`)
//! takes one of:
//!
//! ```yaml
//! purge_token: "inline value"                 # in the YAML, as before
//! purge_token: { env: IMGEDGE_PURGE_TOKEN }   # an environment variable (systemd EnvironmentFile=)
//! purge_token: { file: /etc/imgedge/purge }   # a file's contents, one trailing newline dropped
//! purge_token: { credential: purge_token }    # systemd LoadCredential=: $CREDENTIALS_DIRECTORY/NAME
//! ```
//!
//! The value is read once, while the config is parsed, so a missing variable or unreadable file
//! fails start-up (and `imgedge check`) naming the key. [`Secret`]'s `Debug` never prints the
//! value; [`Secret::origin`] says where it came from, which is what `imgedge check` reports.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// Where a secret's value came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SecretOrigin {
    /// Not set (empty).
    #[default]
    Unset,
    /// Written in the YAML.
    Inline,
    /// The named environment variable.
    Env(String),
    /// The file at this path.
    File(PathBuf),
    /// The systemd credential of this name (a file under `$CREDENTIALS_DIRECTORY`).
    Credential(String),
}

impl fmt::Display for SecretOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretOrigin::Unset => write!(f, "not set"),
            SecretOrigin::Inline => write!(f, "inline in the config file"),
            SecretOrigin::Env(name) => write!(f, "environment variable {name}"),
            SecretOrigin::File(path) => write!(f, "file {}", path.display()),
            SecretOrigin::Credential(name) => write!(f, "systemd credential {name}"),
        }
    }
}

/// A secret string and where it came from. Compare with [`Secret::expose`]; never log it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret {
    value: String,
    origin: SecretOrigin,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, {} bytes)", self.origin, self.value.len())
    }
}

impl Secret {
    /// A secret given inline (tests, defaults).
    pub fn inline(value: impl Into<String>) -> Secret {
        let value = value.into();
        let origin = if value.is_empty() {
            SecretOrigin::Unset
        } else {
            SecretOrigin::Inline
        };
        Secret { value, origin }
    }

    /// The value.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// The value's length in bytes.
    pub fn len(&self) -> usize {
        self.value.len()
    }

    /// Where the value came from.
    pub fn origin(&self) -> &SecretOrigin {
        &self.origin
    }
}

/// The YAML forms a secret can take.
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Inline(String),
    From(Source),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum Source {
    Env(String),
    File(PathBuf),
    Credential(String),
}

/// Drop one trailing newline (`echo … > file` writes one); keep everything else as is.
fn trim_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

fn read_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(trim_newline(text))
}

impl Source {
    fn resolve(self) -> Result<Secret, String> {
        let (value, origin) = match self {
            Source::Env(name) => {
                let v = std::env::var(&name)
                    .map_err(|_| format!("environment variable {name} is not set"))?;
                (v, SecretOrigin::Env(name))
            }
            Source::File(path) => (read_file(&path)?, SecretOrigin::File(path)),
            Source::Credential(name) => {
                if name.is_empty() || name.contains('/') {
                    return Err(format!(
                        "credential name {name:?} must be a plain file name"
                    ));
                }
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    format!(
                        "credential {name}: CREDENTIALS_DIRECTORY is not set \
                         (systemd sets it for units with LoadCredential=)"
                    )
                })?;
                let path = PathBuf::from(dir).join(&name);
                (read_file(&path)?, SecretOrigin::Credential(name))
            }
        };
        if value.is_empty() {
            return Err(format!("{origin} is empty"));
        }
        Ok(Secret { value, origin })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Raw::deserialize(d).map_err(|_| {
            de::Error::custom(
                "expected a string, or one of {env: NAME}, {file: PATH}, {credential: NAME}",
            )
        })? {
            Raw::Inline(s) => Ok(Secret::inline(s)),
            Raw::From(source) => source.resolve().map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct Holder {
        s: Secret,
    }

    fn parse(yaml: &str) -> Result<Secret, String> {
        serde_yaml::from_str::<Holder>(yaml)
            .map(|h| h.s)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn inline_env_and_file_forms() {
        let s = parse("s: abc").unwrap();
        assert_eq!((s.expose(), s.origin()), ("abc", &SecretOrigin::Inline));

        std::env::set_var("IMGEDGE_SECRET_UNIT_TEST", "from-env");
        let s = parse("s: {env: IMGEDGE_SECRET_UNIT_TEST}").unwrap();
        assert_eq!(s.expose(), "from-env");
        assert_eq!(
            s.origin().to_string(),
            "environment variable IMGEDGE_SECRET_UNIT_TEST"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").unwrap();
        let s = parse(&format!("s: {{file: {}}}", path.display())).unwrap();
        assert_eq!(s.expose(), "from-file");
        assert!(
            !format!("{s:?}").contains("from-file"),
            "Debug leaks the value"
        );
    }

    #[test]
    fn missing_sources_are_errors() {
        let e = parse("s: {env: IMGEDGE_SECRET_SURELY_UNSET}").unwrap_err();
        assert!(e.contains("IMGEDGE_SECRET_SURELY_UNSET is not set"), "{e}");
        let e = parse("s: {file: /nonexistent/imgedge/secret}").unwrap_err();
        assert!(e.contains("/nonexistent/imgedge/secret"), "{e}");
        let e = parse("s: {vault: x}").unwrap_err();
        assert!(e.contains("{env: NAME}"), "{e}");
        let e = parse("s: {credential: ../x}").unwrap_err();
        assert!(e.contains("plain file name"), "{e}");
    }
}
