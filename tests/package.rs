//! The Debian package: built by cargo-deb from the release binary under test, its contents and
//! maintainer scripts checked, and (as root on a dpkg machine, in CI or with
//! `IMGEDGE_TEST_DEB_INSTALL=1`) installed, checked with `imgedge check` as the `imgedge` user and
//! `systemd-analyze verify`, upgraded in place (config edits and the disk cache survive) and
//! purged again, leaving the machine as it was.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The target directory the binary under test was built in (`…/release/imgedge` → `…`).
fn target_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_imgedge"));
    bin.parent()
        .and_then(Path::parent)
        .expect("binary lives in <target>/release")
        .to_path_buf()
}

/// Build the package from the already built binary into `out`; its path.
fn build_deb(out: &Path) -> PathBuf {
    run(Command::new("cargo")
        .args(["deb", "--no-build", "--fast", "--output"])
        .arg(out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target_dir()));
    std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("cargo deb wrote a .deb")
}

#[test]
fn debian_package_contents_scripts_and_install() {
    if !have("dpkg-deb", "--version") {
        eprintln!("SKIP: no dpkg-deb on this machine (not Debian-based): the package is not built");
        return;
    }
    assert!(
        Command::new("cargo")
            .args(["deb", "--version"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "cargo-deb is missing: `./dev test` installs it (or `cargo install cargo-deb`)"
    );
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path());

    // Contents: binary, unit, config, docs.
    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for path in [
        "./usr/bin/imgedge",
        "./lib/systemd/system/imgedge.service",
        "./etc/imgedge/imgedge.yaml",
        "./usr/share/doc/imgedge/README.md",
    ] {
        assert!(
            listing.contains(path),
            "{path} missing from the package:\n{listing}"
        );
    }
    let conffiles = text(&run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles")));
    assert!(
        conffiles.contains("/etc/imgedge/imgedge.yaml"),
        "{conffiles}"
    );
    let control = text(&run(Command::new("dpkg-deb")
        .arg("-f")
        .arg(&deb)
        .arg("Depends")));
    assert!(control.contains("adduser"), "Depends: {control}");

    // Maintainer scripts: present, valid sh, and none starts or enables the service.
    let control_dir = dir.path().join("control");
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(&control_dir));
    for script in ["postinst", "prerm", "postrm"] {
        let path = control_dir.join(script);
        let body = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{script}: {e}"));
        run(Command::new("sh").arg("-n").arg(&path));
        // Commands only: messages (`echo`) and comments may tell the operator what to run.
        let commands: Vec<&str> = body
            .lines()
            .map(str::trim_start)
            .filter(|l| !l.starts_with('#') && !l.starts_with("echo"))
            .collect();
        for verb in ["systemctl start", "systemctl enable", "systemctl restart"] {
            assert!(
                !commands.iter().any(|l| l.contains(verb)),
                "{script} must not `{verb}`"
            );
        }
    }
    let postinst = std::fs::read_to_string(control_dir.join("postinst")).unwrap();
    assert!(
        postinst.contains("systemctl reload"),
        "upgrades reload, never restart"
    );

    // The shipped config passes `imgedge check` once its secrets exist (postinst makes them).
    let yaml =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/imgedge.yaml"))
            .unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("purge_token"), "p".repeat(64)).unwrap();
    std::fs::write(secrets.join("signing_key"), "s".repeat(64)).unwrap();
    let local = dir.path().join("imgedge.yaml");
    std::fs::write(
        &local,
        yaml.replace("/etc/imgedge/secrets", &secrets.to_string_lossy()),
    )
    .unwrap();
    let check = text(&run(Command::new(env!("CARGO_BIN_EXE_imgedge"))
        .args(["check", "-c"])
        .arg(&local)));
    assert!(check.contains("admin.purge_token: from file"), "{check}");
    assert!(!check.contains(&"p".repeat(64)), "check printed a secret");

    install_upgrade_purge(&deb);
}

/// Install into this machine, check, upgrade in place, purge. Only as root on a dpkg machine
/// where the package is not already installed, and only in CI or when asked.
fn install_upgrade_purge(deb: &Path) {
    let asked =
        std::env::var_os("CI").is_some() || std::env::var_os("IMGEDGE_TEST_DEB_INSTALL").is_some();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let installed = Command::new("dpkg")
        .args(["-s", "imgedge"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !(asked && root && have("dpkg", "--version")) || installed {
        eprintln!("SKIP install: needs root and CI=1 or IMGEDGE_TEST_DEB_INSTALL=1 (and no installed imgedge)");
        return;
    }
    let user_existed = Command::new("id")
        .arg("imgedge")
        .output()
        .is_ok_and(|o| o.status.success());
    struct Cleanup(bool);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("dpkg").args(["--purge", "imgedge"]).output();
            if !self.0 {
                let _ = Command::new("userdel").arg("imgedge").output();
                let _ = Command::new("groupdel").arg("imgedge").output();
            }
        }
    }
    let _cleanup = Cleanup(user_existed);

    let out = text(&run(Command::new("dpkg").arg("-i").arg(deb)));
    assert!(
        out.contains("systemctl enable --now imgedge"),
        "first install explains how to start:\n{out}"
    );
    run(Command::new("id").arg("imgedge"));
    for dir in ["/var/cache/imgedge", "/var/log/imgedge"] {
        assert!(Path::new(dir).is_dir(), "{dir} not created");
    }
    let token = std::fs::read_to_string("/etc/imgedge/secrets/purge_token").unwrap();
    assert!(token.len() >= 32, "generated token too short");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata("/etc/imgedge/secrets/purge_token")
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o007, 0, "secret readable by others: {mode:o}");
    }
    // As the service user, as systemd's ExecStartPre runs it.
    let check = text(&run(Command::new("runuser").args([
        "-u",
        "imgedge",
        "--",
        "/usr/bin/imgedge",
        "check",
        "-c",
        "/etc/imgedge/imgedge.yaml",
    ])));
    assert!(
        check.contains("from file /etc/imgedge/secrets/purge_token"),
        "{check}"
    );
    if have("systemd-analyze", "--version") {
        // As installed (binary at /usr/bin/imgedge): not a single complaint.
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no", "/lib/systemd/system/imgedge.service"])
            .output()
            .unwrap();
        let msgs = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && msgs.trim().is_empty(),
            "systemd-analyze verify:\n{msgs}"
        );
    }

    // Upgrade in place: the operator's config edit, the secrets and the disk cache survive.
    let edited =
        std::fs::read_to_string("/etc/imgedge/imgedge.yaml").unwrap() + "# operator edit\n";
    std::fs::write("/etc/imgedge/imgedge.yaml", &edited).unwrap();
    std::fs::write("/var/cache/imgedge/probe", b"cached").unwrap();
    run(Command::new("dpkg")
        .args(["-i", "--force-confold"])
        .arg(deb)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert_eq!(
        std::fs::read_to_string("/etc/imgedge/imgedge.yaml").unwrap(),
        edited
    );
    assert_eq!(
        std::fs::read("/var/cache/imgedge/probe").unwrap(),
        b"cached"
    );
    assert_eq!(
        std::fs::read_to_string("/etc/imgedge/secrets/purge_token").unwrap(),
        token,
        "upgrade regenerated a secret"
    );

    run(Command::new("dpkg").args(["--purge", "imgedge"]));
    assert!(!Path::new("/usr/bin/imgedge").exists());
    assert!(
        !Path::new("/var/cache/imgedge").exists(),
        "purge keeps the cache"
    );
}
