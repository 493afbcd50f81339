//! The shipped dependency graph (issue 13, items 3 and 4), checked with `cargo tree`:
//!
//! - one crypto provider: aws-lc-sys (the AWS SDK's default HTTPS client) is not linked, so
//!   ring (the edge's rustls provider) is the only C crypto library;
//! - the tests' features are the release's: dev-dependencies add no feature to reqwest or rustls,
//!   so the binary the tests run (built with dev-dependencies unified) has the TLS stack a
//!   release build has. Before, reqwest's rustls came only from a dev-dependency and `warm
//!   --target https://` worked in tests while the release binary could not connect.

use std::process::Command;

fn cargo_tree(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--offline", "--color", "never"])
        .args(args)
        .output()
        .expect("run cargo tree");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn aws_lc_sys_is_not_in_the_shipped_graph() {
    // `-i` of a package absent from the graph fails with "did not match any packages".
    let (ok, text) = cargo_tree(&["-e", "normal", "-i", "aws-lc-sys"]);
    assert!(!ok, "aws-lc-sys is linked:\n{text}");
    assert!(text.contains("did not match any packages"), "{text}");
    // And ring is (the check above is not just a broken command).
    let (ok, text) = cargo_tree(&["-e", "normal", "-i", "ring", "--depth", "0"]);
    assert!(ok && text.starts_with("ring v"), "{text}");
}

#[test]
fn dev_dependencies_add_no_tls_feature() {
    for krate in ["reqwest", "rustls"] {
        let features = |edges: &str| {
            let (ok, text) =
                cargo_tree(&["-e", edges, "-f", "{p} {f}", "-i", krate, "--depth", "0"]);
            assert!(ok, "{text}");
            text.lines().next().unwrap_or("").to_string()
        };
        let shipped = features("normal");
        assert_eq!(shipped, features("normal,dev"), "{krate}");
        if krate == "reqwest" {
            assert!(shipped.contains("rustls-no-provider"), "{shipped}");
        }
    }
}
