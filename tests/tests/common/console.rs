//! The console tests' fixture, shared by the `e2e` binary's `web` module and the `browser`
//! binary: a three-node mesh (node 1 with a `web` address) with one stable builder named as
//! CPython names them, and a `ci.sh` that prints markup and colours.

use std::time::Duration;

use buildmesh_tests::{GitRepo, Mesh};

pub const LONG: Duration = Duration::from_secs(90);

/// A builder named as CPython names them: spaces, dots.
pub const BUILDER: &str = "AMD64 Debian root 3.x";

/// `ci.sh` prints markup and colours, then passes or fails as the commit's `mode` says.
pub const CI: &str = r#"#!/bin/sh
echo "building $BUILDMESH_SHA"
echo '<script>window.pwned = 1</script><b>bold?</b>'
printf '\033[31mcoloured red\033[0m\n'
if [ "$(cat mode)" = fail ]; then echo "FAIL: test_web (test.test_console)"; exit 1; fi
echo "all tests passed"
"#;

pub fn builders(repo: &str) -> String {
    format!(
        r#"
[[builder]]
name = "{BUILDER}"
repo = "{repo}"
branches = ["main"]
tags = ["stable", "tier-1"]
requires = {{ os = "linux" }}
[[builder.step]]
name = "test suite"
run = "sh ci.sh"
"#
    )
}

pub async fn mesh_with_console() -> (Mesh, GitRepo) {
    let mesh = Mesh::start_with(3, |i, c| {
        c.announcer.poll_interval = None;
        if i == 0 {
            c.web = Some("127.0.0.1:0".parse().unwrap());
        }
    })
    .await;
    mesh.wait_ready().await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    mesh.publish_builders(0, &builders(&repo.url())).await;
    (mesh, repo)
}
