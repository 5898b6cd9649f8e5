//! The key and admission walk-through from the README, run against the built binary.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn bm(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_buildmesh"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the buildmesh binary runs")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = bm(dir, args);
    assert!(
        out.status.success(),
        "buildmesh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = bm(dir, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "buildmesh {args:?} should exit 1; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn key_genesis_admission_revocation_walk_through() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    // Keys: mode 0600, never overwritten, the id is a libp2p peer id.
    let m = ok(d, &["keygen", "--out", "maintainer.key"])
        .trim()
        .to_string();
    assert!(m.starts_with("12D3KooW"), "{m}");
    let mode = std::fs::metadata(d.join("maintainer.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(ok(d, &["id", "--key", "maintainer.key"]).trim(), m);
    let before = std::fs::read(d.join("maintainer.key")).unwrap();
    assert!(fails(d, &["keygen", "--out", "maintainer.key"]).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(d.join("maintainer.key")).unwrap(), before);
    let w = ok(d, &["keygen", "--out", "worker.key"]).trim().to_string();
    let outsider = ok(d, &["keygen", "--out", "outsider.key"])
        .trim()
        .to_string();

    // Genesis: unsigned until a maintainer signs it.
    ok(
        d,
        &[
            "genesis",
            "--name",
            "cpython-ci",
            "--maintainer",
            &m,
            "--threshold",
            "1",
            "--out",
            "genesis.bm",
        ],
    );
    let err = fails(d, &["verify", "--genesis", "genesis.bm", "genesis.bm"]);
    assert!(err.contains("needs 1"), "{err}");
    assert!(fails(d, &["sign", "--key", "outsider.key", "genesis.bm"]).contains("not one of"));
    ok(d, &["sign", "--key", "maintainer.key", "genesis.bm"]);
    assert!(ok(d, &["verify", "--genesis", "genesis.bm", "genesis.bm"]).contains("ok"));

    // Admission.
    ok(
        d,
        &[
            "admit",
            "--genesis",
            "genesis.bm",
            "--key",
            "maintainer.key",
            "--node",
            &w,
            "--name",
            "debian-amd64",
            "--role",
            "worker",
            "--role",
            "notifier",
            "--label",
            "os=linux",
            "--label",
            "arch=x86_64",
            "--expires",
            "2099-01-01T00:00:00Z",
            "--out",
            "worker.adm",
        ],
    );
    let out = ok(d, &["verify", "--genesis", "genesis.bm", "worker.adm"]);
    assert!(out.contains("admission of debian-amd64"), "{out}");

    // A non-maintainer cannot admit.
    let err = fails(
        d,
        &[
            "admit",
            "--genesis",
            "genesis.bm",
            "--key",
            "outsider.key",
            "--node",
            &outsider,
            "--name",
            "x",
            "--role",
            "worker",
            "--out",
            "outsider.adm",
        ],
    );
    assert!(err.contains("not a maintainer"), "{err}");
    assert!(!d.join("outsider.adm").exists());

    // An outsider's signature added to a valid admission spoils nothing, but an admission
    // carrying only an outsider's signature is refused.
    ok(
        d,
        &[
            "admit",
            "--genesis",
            "genesis.bm",
            "--key",
            "maintainer.key",
            "--node",
            &outsider,
            "--name",
            "x",
            "--role",
            "worker",
            "--out",
            "x.adm",
        ],
    );

    // inspect prints JSON a script can read.
    let json: serde_json::Value = serde_json::from_str(&ok(d, &["inspect", "worker.adm"])).unwrap();
    assert_eq!(json["kind"], "admission");
    assert_eq!(json["body"]["node"], w.as_str());
    assert_eq!(json["body"]["labels"]["arch"], "x86_64");
    assert_eq!(json["signatures"][0]["key"], m.as_str());
    assert_eq!(json["signatures"][0]["valid"], true);
    let json: serde_json::Value = serde_json::from_str(&ok(d, &["inspect", "genesis.bm"])).unwrap();
    assert_eq!(json["body"]["name"], "cpython-ci");

    // A tampered file: one byte of the body changed.
    let mut bytes = std::fs::read(d.join("worker.adm")).unwrap();
    let pos = bytes
        .windows(12)
        .position(|w| w == b"debian-amd64")
        .unwrap();
    bytes[pos] = b'D';
    std::fs::write(d.join("tampered.adm"), &bytes).unwrap();
    let err = fails(
        d,
        &[
            "verify",
            "--genesis",
            "genesis.bm",
            "worker.adm",
            "tampered.adm",
        ],
    );
    assert!(err.contains("tampered.adm"), "{err}");
    assert!(err.contains("signature"), "{err}");
    assert!(
        !err.contains("worker.adm"),
        "the good file is not blamed: {err}"
    );

    // Revocation: given on the same line, it makes the admission invalid.
    ok(
        d,
        &[
            "revoke",
            "--genesis",
            "genesis.bm",
            "--key",
            "maintainer.key",
            "--subject",
            &w,
            "--reason",
            "compromised",
            "--out",
            "worker.rev",
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&ok(d, &["inspect", "worker.rev"])).unwrap();
    assert_eq!(json["body"]["reason"], "compromised");
    let err = fails(
        d,
        &[
            "verify",
            "--genesis",
            "genesis.bm",
            "worker.adm",
            "worker.rev",
        ],
    );
    assert!(
        err.contains("worker.adm") && err.contains("revoked"),
        "{err}"
    );
    ok(d, &["verify", "--genesis", "genesis.bm", "worker.rev"]);

    // A document for another mesh.
    let m2 = ok(d, &["keygen", "--out", "m2.key"]).trim().to_string();
    ok(
        d,
        &[
            "genesis",
            "--name",
            "other",
            "--maintainer",
            &m2,
            "--out",
            "g2.bm",
        ],
    );
    ok(d, &["sign", "--key", "m2.key", "g2.bm"]);
    ok(
        d,
        &[
            "admit",
            "--genesis",
            "g2.bm",
            "--key",
            "m2.key",
            "--node",
            &w,
            "--name",
            "w",
            "--role",
            "worker",
            "--out",
            "foreign.adm",
        ],
    );
    let err = fails(d, &["verify", "--genesis", "genesis.bm", "foreign.adm"]);
    assert!(err.contains("for mesh"), "{err}");
}

#[test]
fn builder_config_is_checked_and_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let m = ok(d, &["keygen", "--out", "m.key"]).trim().to_string();
    ok(
        d,
        &[
            "genesis",
            "--name",
            "x",
            "--maintainer",
            &m,
            "--out",
            "g.bm",
        ],
    );
    ok(d, &["sign", "--key", "m.key", "g.bm"]);
    let good = "version = 1\n\n[[builder]]\nname = \"linux\"\nrepo = \"/tmp/r.git\"\nbranches = [\"main\"]\n\n[[builder.step]]\nname = \"test\"\nrun = \"make test\"\ntimeout = \"10m\"\n";
    std::fs::write(d.join("builders.toml"), good).unwrap();
    ok(
        d,
        &[
            "config",
            "sign",
            "--genesis",
            "g.bm",
            "--key",
            "m.key",
            "builders.toml",
            "--out",
            "builders.bm",
        ],
    );
    assert!(ok(d, &["verify", "--genesis", "g.bm", "builders.bm"]).contains("version 1"));
    let json: serde_json::Value =
        serde_json::from_str(&ok(d, &["inspect", "builders.bm"])).unwrap();
    assert_eq!(
        json["body"]["builders"][0]["steps"][0]["timeout_ms"],
        600_000
    );

    std::fs::write(d.join("bad.toml"), good.replace("\"10m\"", "\"soon\"")).unwrap();
    let err = fails(d, &["config", "check", "bad.toml"]);
    assert!(
        err.contains("bad.toml: line 11") && err.contains("timeout"),
        "{err}"
    );
}

#[test]
fn every_command_has_help() {
    let tmp = tempfile::tempdir().unwrap();
    for cmd in [
        "keygen", "id", "genesis", "sign", "admit", "revoke", "config", "verify", "inspect",
    ] {
        let out = ok(tmp.path(), &[cmd, "--help"]);
        assert!(out.contains("Usage"), "{cmd}: {out}");
    }
}

#[test]
fn the_demo_builds_green_orange_red_and_shows_the_mail() {
    let tmp = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = bm(tmp.path(), &["demo", "--keep", "kept"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{stdout}"
    );
    for want in [
        "all three nodes joined",
        "holds the notifier lease",
        ": success in",
        ": warnings in",
        ": failure in",
        "the mailing list received:",
        "Subject: buildmesh: linux-debug on main is red",
        "FAIL: test_runtime",
        "buildmesh log --node",
        "done: 1 mail",
    ] {
        assert!(
            stdout.contains(want),
            "the demo's output lacks {want:?}:\n{stdout}"
        );
    }
    // The same status from each of the three nodes.
    let status_lines = stdout
        .lines()
        .filter(|l| l.contains("linux-debug failure at"))
        .count();
    assert_eq!(status_lines, 3, "{stdout}");
    // --keep keeps the mesh.
    assert!(tmp.path().join("kept/mesh/testnet.json").exists());
}
