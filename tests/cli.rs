//! The binary's CLI: `check` validates configs (every example in conf/ must pass) and names the
//! key in its errors.

mod common;

use std::process::Command;

fn imgedge(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imgedge"))
        .args(args)
        // conf/production.yaml reads the cluster secret from the environment, as the unit's
        // EnvironmentFile= would provide it.
        .env(
            "IMGEDGE_CLUSTER_SECRET",
            "a-cluster-secret-of-at-least-32-characters",
        )
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// A config with its production certificate paths (`/etc/imgedge/tls/*.pem|key`) pointed at
/// development certificates, so `check` can load them here.
fn with_dev_certs(path: &std::path::Path, certs: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(path).unwrap();
    let out: Vec<String> = text
        .lines()
        .map(|l| match l.trim_start().split_once("/etc/imgedge/tls/") {
            Some((before, file)) if file.ends_with(".pem") => {
                format!("{}{before}{}/dev.pem", indent(l), certs.display())
            }
            Some((before, file)) if file.ends_with(".key") => {
                format!("{}{before}{}/dev.key", indent(l), certs.display())
            }
            _ => l.to_string(),
        })
        .collect();
    let copy = certs.join(path.file_name().unwrap());
    std::fs::write(&copy, out.join("\n")).unwrap();
    copy
}

fn indent(l: &str) -> &str {
    &l[..l.len() - l.trim_start().len()]
}

#[test]
fn every_example_config_is_valid() {
    let mut n = 0;
    let certs = common::dev_certs();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/conf")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let path = with_dev_certs(&path, certs.path());
            let (code, text) = imgedge(&["check", "-c", path.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {text}", path.display());
            n += 1;
        }
    }
    assert!(
        n >= 3,
        "conf/ holds the reference, the S3 example and production"
    );
}

#[test]
fn check_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, key) in [
        ("cache:\n  memory_bytes: 1KiB\n", "cache.memory_bytes"),
        ("origin:\n  source: s3\n", "origin.s3.bucket"),
        ("edge:\n  listne: []\n", "edge: unknown field `listne`"),
        ("limits:\n  max_dimension: -1\n", "limits.max_dimension"),
    ] {
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, yaml).unwrap();
        let (code, text) = imgedge(&["check", "-c", p.to_str().unwrap()]);
        assert_eq!(code, 2, "{yaml}");
        assert!(text.contains(key), "{yaml}: {text}");
    }
    let (code, text) = imgedge(&["check", "-c", "/nonexistent.yaml"]);
    assert_eq!(code, 2);
    assert!(text.contains("/nonexistent.yaml"));
}
