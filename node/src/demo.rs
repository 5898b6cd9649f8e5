//! `buildmesh demo`: a throwaway mesh of three nodes on loopback that builds a small git
//! repository, turns red, and mails the transition to an embedded SMTP sink — everything a
//! newcomer needs to see what buildmesh does, in under a minute, with nothing installed but
//! git.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use buildmesh_protocol::builders::BuilderConfig;
use buildmesh_protocol::docs::SignedDoc;
use buildmesh_protocol::record::{Body, ChangeSource, CommitSeen};
use buildmesh_protocol::{NodeId, SecretKey};

use crate::config::NodeConfig;
use crate::{BuildView, NodeHandle};

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A step of the demo failed.
    #[error("{0}")]
    Step(String),
    /// Writing the demo's output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn step(e: impl std::fmt::Display) -> DemoError {
    DemoError::Step(e.to_string())
}

const CI: &str = r#"#!/bin/sh
# The sample project's test suite: what it does depends on the file `state`.
echo "== running the test suite of $BUILDMESH_SHA on $BUILDMESH_WORKER_NAME"
case "$(cat state)" in
  green)  echo "test_parser ... ok"; echo "test_runtime ... ok"; echo "2 tests passed" ;;
  orange) echo "test_parser ... ok"; echo "DeprecationWarning: frobnicate() is deprecated"; echo "2 tests passed" ;;
  red)    echo "test_parser ... ok"; echo "FAIL: test_runtime (tests.test_runtime)"; echo "AssertionError: 2 != 3"; exit 1 ;;
esac
"#;

fn builders(repo: &str) -> String {
    format!(
        r#"version = 1

# Tagged stable: its red transitions mail the list.
[[builder]]
name = "linux-debug"
repo = "{repo}"
branches = ["main"]
tags = ["stable"]
requires = {{ os = "linux" }}
[[builder.step]]
name = "test"
run = "sh ci.sh"
timeout = "1m"
warn = ["DeprecationWarning"]

# Not stable: it builds, but never mails.
[[builder]]
name = "freebsd-release"
repo = "{repo}"
branches = ["main"]
requires = {{ os = "freebsd" }}
[[builder.step]]
name = "test"
run = "sh ci.sh"
timeout = "1m"
warn = ["DeprecationWarning"]
"#
    )
}

fn git(dir: &Path, args: &[&str]) -> Result<String, DemoError> {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=Demo Developer",
            "-c",
            "user.email=dev@localhost",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| step(format!("cannot run git (is it installed?): {e}")))?;
    if !out.status.success() {
        return Err(step(format!(
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

struct Demo<'w, W: Write> {
    out: &'w mut W,
    started: Instant,
    nodes: Vec<NodeHandle>,
    names: Vec<(NodeId, String)>,
}

impl<W: Write> Demo<'_, W> {
    fn say(&mut self, text: impl AsRef<str>) -> Result<(), DemoError> {
        let t = self.started.elapsed().as_secs_f64();
        writeln!(self.out, "[{t:5.1}s] {}", text.as_ref())?;
        self.out.flush()?;
        Ok(())
    }

    fn name(&self, id: Option<NodeId>) -> String {
        id.and_then(|id| {
            self.names
                .iter()
                .find(|(n, _)| *n == id)
                .map(|(_, name)| name.clone())
        })
        .unwrap_or_else(|| "-".into())
    }

    async fn wait<T>(
        &self,
        what: &str,
        secs: u64,
        mut f: impl AsyncFnMut() -> Option<T>,
    ) -> Result<T, DemoError> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f().await {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(step(format!("timed out waiting for {what}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs the demo, writing what happens to `out`. With `keep`, the mesh's files stay there; with
/// `serve`, the mesh keeps running after it, its web console open, until Ctrl-C.
pub async fn run<W: Write>(keep: Option<&Path>, serve: bool, out: &mut W) -> Result<(), DemoError> {
    let tmp;
    let dir: PathBuf = match keep {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            // The repository's path is its URL for the workers: make it absolute.
            d.canonicalize()?
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let mut demo = Demo {
        out,
        started: Instant::now(),
        nodes: Vec::new(),
        names: Vec::new(),
    };
    let result = go(&mut demo, &dir).await;
    if serve && result.is_ok() {
        for n in &demo.nodes {
            writeln!(demo.out, "{}'s web console: http://{}/", n.name, n.api)?;
        }
        writeln!(demo.out, "The mesh runs until Ctrl-C.")?;
        let _ = tokio::signal::ctrl_c().await;
    }
    for n in demo.nodes.drain(..) {
        n.shutdown().await;
    }
    if keep.is_some() {
        writeln!(
            demo.out,
            "\nThe mesh's files are kept in {}.",
            dir.display()
        )?;
    }
    result
}

async fn go<W: Write>(demo: &mut Demo<'_, W>, dir: &Path) -> Result<(), DemoError> {
    demo.say("creating a throwaway mesh: a maintainer key, a genesis, three node keys and their admissions")?;
    let mesh_dir = dir.join("mesh");
    let t = crate::testnet::generate(&mesh_dir, 3, 0).map_err(step)?;
    let (sink_addr, mailbox) = crate::smtp_sink::bind(([127, 0, 0, 1], 0).into()).map_err(step)?;
    demo.say(format!(
        "an SMTP sink for the mailing list listens on {sink_addr}"
    ))?;

    // The sample project.
    let repo = dir.join("project");
    std::fs::create_dir_all(&repo)?;
    git(&repo, &["init", "-q"])?;
    std::fs::write(repo.join("ci.sh"), CI)?;
    std::fs::write(repo.join("state"), "green\n")?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-qm", "Start the project"])?;
    let repo_url = repo.display().to_string();
    demo.say(format!("a git repository to build: {repo_url}"))?;

    // Start the nodes, each bootstrapping from those already up.
    let mut addrs: Vec<libp2p::Multiaddr> = Vec::new();
    for node in &t.nodes {
        let mut config = NodeConfig::load(&node.config).map_err(step)?;
        config.bootstrap = addrs.clone();
        config.notifier.smtp = Some(("127.0.0.1".into(), sink_addr.port()));
        config.notifier.to = vec!["python-buildbots@localhost".into()];
        config.notifier.from = "buildmesh@localhost".into();
        let handle = crate::start(config).await.map_err(step)?;
        let listen = demo
            .wait("the node to listen", 20, async || {
                let a = handle.listen_addrs().await.ok()?;
                a.into_iter().find(|a| a.to_string().contains("/tcp/"))
            })
            .await?;
        addrs.push(listen.with(libp2p::multiaddr::Protocol::P2p(handle.id.to_peer_id())));
        demo.names.push((handle.id, handle.name.clone()));
        let labels = crate::testnet::roles_and_labels(demo.nodes.len());
        let roles: Vec<String> = labels.0.iter().map(|r| r.to_string()).collect();
        let labs: Vec<String> = labels.1.iter().map(|(k, v)| format!("{k}={v}")).collect();
        demo.say(format!(
            "{} started: {}  roles {}  labels {}  api http://{}",
            handle.name,
            handle.id,
            roles.join(","),
            labs.join(","),
            handle.api
        ))?;
        demo.nodes.push(handle);
    }
    let nodes = &demo.nodes;
    demo.wait("the three nodes to see each other", 30, async || {
        for n in nodes {
            let v = n.nodes().await.ok()?;
            if v.len() != 3 || !v.iter().all(|x| x.live) {
                return None;
            }
            if n.live_workers().await.ok()?.len() != 3 {
                return None;
            }
        }
        Some(())
    })
    .await?;
    demo.say("all three nodes joined: each lists every node as live")?;

    // The builder configuration, signed by the maintainer and published through node 1.
    let key =
        SecretKey::from_file_text(&std::fs::read_to_string(&t.maintainer_key)?).map_err(step)?;
    let gdoc = SignedDoc::from_bytes(&std::fs::read(&t.genesis)?).map_err(step)?;
    let mesh_id = gdoc.id();
    let config = BuilderConfig::from_toml(mesh_id, &builders(&repo_url)).map_err(step)?;
    let mut doc = SignedDoc::new(&config).map_err(step)?;
    doc.sign(&key);
    demo.nodes[0].publish_doc(doc).await.map_err(step)?;
    let nodes = &demo.nodes;
    demo.wait("the builder configuration everywhere", 30, async || {
        for n in nodes {
            n.replica().config().await.ok()??;
        }
        Some(())
    })
    .await?;
    demo.say("builders published: linux-debug (stable, mails the list) and freebsd-release")?;
    let nodes = &demo.nodes;
    let holder = demo
        .wait("a notifier to be elected", 30, async || {
            for n in nodes {
                let v = n.notifier().await.ok()?;
                if v.holding {
                    return Some((n.name.clone(), v.term));
                }
            }
            None
        })
        .await?;
    demo.say(format!(
        "{} holds the notifier lease (term {})",
        holder.0, holder.1
    ))?;

    // Green, orange, red.
    for (state, subject) in [
        ("green", "Add the parser"),
        ("orange", "Use frobnicate() in the runtime"),
        ("red", "Rewrite the runtime"),
    ] {
        std::fs::write(repo.join("state"), format!("{state}\n"))?;
        git(&repo, &["commit", "-qa", "--allow-empty", "-m", subject])?;
        let sha = git(&repo, &["rev-parse", "HEAD"])?;
        demo.nodes[0]
            .author(Body::CommitSeen(CommitSeen {
                repo: repo_url.clone(),
                branch: "main".into(),
                sha: sha.clone(),
                source: ChangeSource::Submit,
                requested_by: None,
                subject: Some(subject.into()),
                request: None,
            }))
            .await
            .map_err(step)?;
        demo.say(format!(
            "pushed {} \"{subject}\" ({state}) and announced it",
            &sha[..10]
        ))?;
        let first = &demo.nodes[1];
        let builds: Vec<BuildView> = demo
            .wait("both builders to finish", 40, async || {
                let all = first.builds().await.ok()?;
                // Ordinary builds only: a red's confirmation is folded into its build.
                let mine: Vec<BuildView> = all
                    .into_iter()
                    .filter(|b| b.sha == sha && b.purpose.is_build())
                    .collect();
                (mine.len() == 2
                    && mine.iter().all(|b| {
                        matches!(
                            b.result.as_str(),
                            "success" | "warnings" | "failure" | "flaky"
                        )
                    }))
                .then_some(mine)
            })
            .await?;
        for b in builds {
            let secs = match (b.started, b.finished) {
                (Some(s), Some(f)) => f.since(s).as_secs_f64(),
                _ => 0.0,
            };
            demo.say(format!(
                "  {:<16} claimed by {} (attempt {}): {} in {secs:.2}s",
                b.builder,
                demo.name(b.worker),
                b.attempt,
                b.result
            ))?;
            if let Some(c) = &b.confirmation {
                demo.say(format!(
                    "  {:<16} reproduced by {} before the list hears of it: {}",
                    "",
                    demo.name(c.worker),
                    c.result
                ))?;
            }
        }
    }

    let mail = demo
        .wait("the red-transition mail", 30, async || {
            mailbox.all().into_iter().next()
        })
        .await?;
    demo.say("the mailing list received:")?;
    writeln!(
        demo.out,
        "\n    To: {}\n    Subject: {}\n    Message-ID: {}\n",
        mail.to.join(", "),
        mail.subject,
        mail.message_id
    )?;
    for line in mail.body.lines() {
        writeln!(demo.out, "    | {line}")?;
    }
    writeln!(demo.out)?;

    demo.say("the same status, read from each node:")?;
    for n in &demo.nodes {
        let builds = n.builds().await.map_err(step)?;
        let mut latest: Vec<(String, String, String)> = Vec::new();
        for b in builds.into_iter().filter(|b| b.purpose.is_build()) {
            if !latest.iter().any(|(name, _, _)| *name == b.builder) {
                latest.push((
                    b.builder.clone(),
                    b.result.to_string(),
                    b.sha[..10].to_string(),
                ));
            }
        }
        latest.sort();
        let row: Vec<String> = latest
            .iter()
            .map(|(b, r, s)| format!("{b} {r} at {s}"))
            .collect();
        writeln!(demo.out, "    {:<7} {}", n.name, row.join("  |  "))?;
    }
    let mails = mailbox.len();
    demo.say(format!(
        "done: {mails} mail for one red transition of a stable builder; the mesh shuts down{}",
        ""
    ))?;
    Ok(())
}
