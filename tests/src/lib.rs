//! The end-to-end harness: real nodes (libp2p over loopback TCP, sled on disk) started in this
//! process from a generated testnet, raw protocol peers to play misbehaving hosts, and condition
//! waits with generous deadlines. One job, a mesh for a test to drive: starting and stopping
//! its nodes, its git repository, publishing builders, announcing commits and waiting on what
//! every node shows, kept in one file because each test uses most of them; hence its length.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use buildmesh_node::config::NodeConfig;
use buildmesh_node::testnet::{self, Testnet};
use buildmesh_node::{NodeHandle, start};
use buildmesh_protocol::docs::SignedDoc;
use buildmesh_protocol::{NodeId, SecretKey};
use libp2p::Multiaddr;

pub mod bench;
pub mod peer;
pub mod procs;
pub mod sim;
pub mod sim_bisect;
pub mod sim_election;
pub mod sim_health;

/// Installs a test log subscriber once (RUST_LOG selects; quiet by default).
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `check` until it returns true, or panics naming `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs `body` to a node's API at `url` until the node takes it, and returns its answer. A
/// node that has not yet recovered its own log answers 503 and authors nothing; any other
/// refusal, or a 503 that lasts a minute, panics with the node's answer.
pub async fn post_accepted(url: &str, body: Vec<u8>) -> serde_json::Value {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = client.post(url).body(body.clone()).send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        if status.is_success() {
            return serde_json::from_str(&text).unwrap_or_default();
        }
        if status != reqwest::StatusCode::SERVICE_UNAVAILABLE
            || tokio::time::Instant::now() >= deadline
        {
            panic!("POST {url}: {status}: {text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A mesh of nodes running in this process.
#[derive(Debug)]
pub struct Mesh {
    /// The directory everything lives in (removed on drop).
    pub dir: tempfile::TempDir,
    /// The generated testnet.
    pub testnet: Testnet,
    /// The running nodes (None: stopped).
    pub nodes: Vec<Option<NodeHandle>>,
    configs: Vec<NodeConfig>,
}

// An address the harness bootstraps other nodes from: TCP, or libp2p's memory transport.
fn dialable(a: &Multiaddr) -> bool {
    let a = a.to_string();
    a.contains("/tcp/") || a.starts_with("/memory/")
}

/// Tunes a node's timing for tests: quick door, quick anti-entropy.
fn tune(c: &mut NodeConfig) {
    c.mesh.door_timeout = Duration::from_secs(2);
    c.mesh.sync_interval = Duration::from_secs(1);
}

impl Mesh {
    /// Generates a testnet of `n` nodes and starts them all; node 1 first, the others
    /// bootstrapping from the nodes already running.
    pub async fn start(n: usize) -> Mesh {
        Self::start_some(n, n).await
    }

    /// Generates a testnet of `n` nodes and starts the first `running` of them.
    pub async fn start_some(n: usize, running: usize) -> Mesh {
        logs();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let testnet = testnet::generate(&dir.path().join("mesh"), n, 0).expect("testnet");
        let configs = testnet
            .nodes
            .iter()
            .map(|node| {
                let mut c = NodeConfig::load(&node.config).expect("testnet config");
                tune(&mut c);
                c
            })
            .collect();
        let mut mesh = Mesh {
            dir,
            testnet,
            nodes: (0..n).map(|_| None).collect(),
            configs,
        };
        for i in 0..running {
            mesh.start_node(i).await;
        }
        mesh
    }

    /// Generates a testnet of `n` nodes, lets `tweak` change each node's configuration, starts
    /// them all and waits until every claimer counts every worker live.
    pub async fn start_with(n: usize, tweak: impl Fn(usize, &mut NodeConfig)) -> Mesh {
        let mut mesh = Self::start_some(n, 0).await;
        for i in 0..n {
            tweak(i, mesh.config_mut(i));
        }
        for i in 0..n {
            mesh.start_node(i).await;
        }
        mesh.wait_workers_known().await;
        mesh
    }

    /// Waits until node `i` has caught up with its peers.
    pub async fn wait_caught_up(&self, i: usize) {
        wait_for("the node to catch up", Duration::from_secs(90), || async {
            self.node(i)
                .metrics()
                .await
                .map(|m| m.caught_up)
                .unwrap_or(false)
        })
        .await;
    }

    /// Waits until every running node has caught up and every claimer counts every worker
    /// live: the mesh is ready for jobs.
    pub async fn wait_ready(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            if n.is_some() {
                self.wait_caught_up(i).await;
            }
        }
        self.wait_workers_known().await;
    }

    /// Waits until every running node's claimer counts every running worker live, so that
    /// rank orders agree before jobs arrive.
    pub async fn wait_workers_known(&self) {
        let running = self.nodes.iter().flatten().count();
        for node in self.nodes.iter().flatten() {
            wait_for(
                "all workers live in the claimer",
                Duration::from_secs(90),
                || async { node.live_workers().await.map(|w| w.len()).unwrap_or(0) == running },
            )
            .await;
        }
    }

    /// Node `i` (from 0); panics if it is stopped.
    pub fn node(&self, i: usize) -> &NodeHandle {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// Node `i`'s id.
    pub fn id(&self, i: usize) -> NodeId {
        self.testnet.nodes[i].id
    }

    /// The configuration node `i` starts with (changes apply at its next start).
    pub fn config_mut(&mut self, i: usize) -> &mut NodeConfig {
        &mut self.configs[i]
    }

    /// Where node `i` keeps its store.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.configs[i].data_dir.clone()
    }

    /// The TCP or memory addresses (with peer ids) of every running node.
    pub async fn addrs(&self) -> Vec<Multiaddr> {
        let mut out = Vec::new();
        for node in self.nodes.iter().flatten() {
            for a in node.listen_addrs().await.unwrap_or_default() {
                if dialable(&a) {
                    out.push(a.with(libp2p::multiaddr::Protocol::P2p(node.id.to_peer_id())));
                }
            }
        }
        out
    }

    /// Starts node `i`, bootstrapping from every running node.
    pub async fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is already running");
        let mut config = self.configs[i].clone();
        config.bootstrap = self.addrs().await;
        // A node stopped in this process lets go of its database's lock a moment later.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let node = loop {
            match start(config.clone()).await {
                Ok(node) => break node,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("node starts: {e}"),
            }
        };
        // Wait until it listens, so that the next node can bootstrap from it.
        wait_for("the node to listen", Duration::from_secs(10), || async {
            node.listen_addrs()
                .await
                .map(|a| a.iter().any(dialable))
                .unwrap_or(false)
        })
        .await;
        self.nodes[i] = Some(node);
    }

    /// Stops node `i` in order.
    pub async fn stop_node(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.shutdown().await;
        }
    }

    /// The secret key of node `i`.
    pub fn key(&self, i: usize) -> SecretKey {
        let text = std::fs::read_to_string(&self.testnet.nodes[i].key).expect("key file");
        SecretKey::from_file_text(&text).expect("key")
    }

    /// The maintainer's secret key.
    pub fn maintainer(&self) -> SecretKey {
        let text = std::fs::read_to_string(&self.testnet.maintainer_key).expect("key file");
        SecretKey::from_file_text(&text).expect("key")
    }

    /// The mesh's verified genesis.
    pub fn genesis(&self) -> buildmesh_protocol::docs::VerifiedGenesis {
        let bytes = std::fs::read(&self.testnet.genesis).expect("genesis file");
        buildmesh_protocol::docs::Genesis::verify(&SignedDoc::from_bytes(&bytes).expect("doc"))
            .expect("genesis")
    }

    /// A revocation of `subject` signed by the maintainer.
    pub fn revocation(
        &self,
        subject: NodeId,
        reason: buildmesh_protocol::docs::RevocationReason,
        effective: buildmesh_protocol::Timestamp,
    ) -> SignedDoc {
        let r = buildmesh_protocol::docs::Revocation {
            mesh: self.genesis().mesh,
            subject,
            reason,
            effective,
            issued: buildmesh_protocol::Timestamp::now(),
        };
        let mut doc = SignedDoc::new(&r).expect("encodable");
        doc.sign(&self.maintainer());
        doc
    }

    /// Waits until every running node holds at least `seq` records of `author`.
    pub async fn wait_replicated(&self, author: NodeId, seq: u64, timeout: Duration) {
        wait_for(
            &format!("record {seq} of {} on every node", author.short()),
            timeout,
            || async {
                self.nodes.iter().flatten().all(|n| {
                    n.version_vector()
                        .map(|v| v.get(&author) >= seq)
                        .unwrap_or(false)
                })
            },
        )
        .await;
    }

    /// Waits until every running node holds the same version vector.
    pub async fn wait_converged(&self, timeout: Duration) {
        wait_for("every node to hold every record", timeout, || async {
            let vvs: Vec<_> = self
                .nodes
                .iter()
                .flatten()
                .map(|n| n.version_vector().expect("vv"))
                .collect();
            vvs.windows(2).all(|w| w[0] == w[1])
        })
        .await;
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i).await;
        }
    }
}

/// A signed admission for a fresh key, as a maintainer of `mesh` would write it.
pub fn admit(
    mesh: &Mesh,
    key: &SecretKey,
    name: &str,
    roles: &[buildmesh_protocol::docs::Role],
    signer: &SecretKey,
) -> SignedDoc {
    let a = buildmesh_protocol::docs::Admission {
        mesh: mesh.genesis().mesh,
        node: key.id(),
        name: name.to_string(),
        roles: roles.iter().copied().collect(),
        labels: Default::default(),
        owner: None,
        issued: buildmesh_protocol::Timestamp::now(),
        expires: None,
    };
    let mut doc = SignedDoc::new(&a).expect("admission encodes");
    doc.sign(signer);
    doc
}

/// The `buildmesh` binary of this workspace, built if missing.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/buildmesh
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("buildmesh");
    if !bin.exists() {
        // The profile this executable was built with (`target/debug` is the `dev` profile).
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let status = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "--profile",
                profile,
                "-p",
                "buildmesh-node",
                "--bin",
                "buildmesh",
            ])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building buildmesh failed");
    }
    bin
}

/// A base port with `n` nodes' worth of free ports above it (API and libp2p per node).
pub fn free_port_base(n: usize) -> u16 {
    'search: for _ in 0..200 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = probe.local_addr().expect("addr").port();
        drop(probe);
        let base = port.saturating_sub(10);
        if base < 1024 || base as usize + 10 * n + 2 > u16::MAX as usize {
            continue;
        }
        for i in 1..=n {
            for off in [0u16, 1] {
                let p = base + 10 * i as u16 + off;
                if std::net::TcpListener::bind(("127.0.0.1", p)).is_err()
                    || std::net::UdpSocket::bind(("127.0.0.1", p)).is_err()
                {
                    continue 'search;
                }
            }
        }
        return base;
    }
    panic!("no free port range found");
}

/// A real git repository in a directory, for builders to build.
#[derive(Debug)]
pub struct GitRepo {
    /// Its path (also its URL for the builders).
    pub path: PathBuf,
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=buildmesh-test",
            "-c",
            "user.email=test@buildmesh.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl GitRepo {
    /// A new repository with one commit on `main`.
    pub fn new(path: PathBuf) -> GitRepo {
        std::fs::create_dir_all(&path).expect("repo dir");
        git(&path, &["init", "-q"]);
        std::fs::write(
            path.join("README"),
            "a repository built by buildmesh's tests\n",
        )
        .expect("write");
        git(&path, &["add", "-A"]);
        git(&path, &["commit", "-qm", "initial"]);
        GitRepo { path }
    }

    /// The repository's URL for builders.
    pub fn url(&self) -> String {
        self.path.display().to_string()
    }

    /// Commits `files` on `branch` (created from main if new) and returns the sha.
    pub fn commit(&self, branch: &str, files: &[(&str, &str)], message: &str) -> String {
        let exists = std::process::Command::new("git")
            .args([
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}"),
            ])
            .current_dir(&self.path)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("git runs")
            .success();
        if exists {
            git(&self.path, &["checkout", "-q", branch]);
        } else {
            git(&self.path, &["checkout", "-q", "-b", branch, "main"]);
        }
        for (name, content) in files {
            let p = self.path.join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("dir");
            }
            std::fs::write(p, content).expect("write");
        }
        git(&self.path, &["add", "-A"]);
        git(&self.path, &["commit", "-qm", message, "--allow-empty"]);
        let sha = git(&self.path, &["rev-parse", "HEAD"]);
        git(&self.path, &["checkout", "-q", "main"]);
        sha
    }
}

impl Mesh {
    /// Signs `toml` as the builder configuration and publishes it through node `via`; waits
    /// until every running node has it in force.
    pub async fn publish_builders(&self, via: usize, toml: &str) {
        let mesh_id = self.genesis().mesh;
        let config = buildmesh_protocol::builders::BuilderConfig::from_toml(mesh_id, toml)
            .unwrap_or_else(|e| panic!("builders TOML: {e}"));
        let version = config.version;
        let mut doc = SignedDoc::new(&config).expect("config encodes");
        doc.sign(&self.maintainer());
        self.node(via)
            .publish_doc(doc)
            .await
            .expect("configuration published");
        wait_for(
            "the configuration everywhere",
            Duration::from_secs(60),
            || async {
                for n in self.nodes.iter().flatten() {
                    match n.replica().config().await {
                        Ok(Some(c)) if c.version >= version => {}
                        _ => return false,
                    }
                }
                true
            },
        )
        .await;
    }

    /// Announces a commit through node `via`, as its poller would.
    pub async fn announce(&self, via: usize, repo: &str, branch: &str, sha: &str) {
        use buildmesh_protocol::record::{Body, ChangeSource, CommitSeen};
        use buildmesh_protocol::wire::{ApiAction, SignedRequest};
        // Any node may announce on a maintainer's signed request (as `buildmesh submit` does);
        // only an announcer may announce on its own.
        let request = SignedRequest::sign(
            &self.maintainer(),
            ApiAction::Submit {
                repo: repo.to_string(),
                branch: branch.to_string(),
                sha: sha.to_string(),
            },
            buildmesh_protocol::Timestamp::now(),
        );
        self.node(via)
            .author(Body::CommitSeen(CommitSeen {
                repo: repo.to_string(),
                branch: branch.to_string(),
                sha: sha.to_string(),
                source: ChangeSource::Submit,
                requested_by: Some(self.maintainer().id()),
                subject: None,
                request: Some(request),
            }))
            .await
            .expect("announced");
    }

    /// Waits until node `i` lists a build of `sha` on `builder` whose result satisfies `done`,
    /// and returns it.
    pub async fn wait_build(
        &self,
        i: usize,
        builder: &str,
        sha: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> buildmesh_node::BuildView {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let builds = self.node(i).builds().await.unwrap_or_default();
            if let Some(b) = builds.into_iter().find(|b| {
                b.purpose.is_build()
                    && b.builder == builder
                    && b.sha == sha
                    && done(b.result.as_str())
            }) {
                return b;
            }
            if tokio::time::Instant::now() >= deadline {
                let seen: Vec<String> = self
                    .node(i)
                    .builds()
                    .await
                    .unwrap_or_default()
                    .iter()
                    .filter(|b| b.sha == sha)
                    .map(|b| format!("{} {}", b.builder, b.result))
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for a build of {builder} at {sha}; node {i} shows {seen:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the build of `builder` at `sha` runs and its runner is settled: every
    /// running node shows it running in the same attempt by the same worker, with the same
    /// claims for that attempt. A claim is stored by its own author before anyone else sees it,
    /// and no node claims an attempt it has seen claimed, so once every node shows the same
    /// claims no other crossed claim exists or can still be made: the worker returned is the
    /// one that keeps running the build.
    pub async fn wait_settled_runner(
        &self,
        builder: &str,
        sha: &str,
        timeout: Duration,
    ) -> buildmesh_node::BuildView {
        let found = std::sync::Mutex::new(None);
        wait_for("one settled runner on every node", timeout, || async {
            let mut agreed: Option<buildmesh_node::BuildView> = None;
            for n in self.nodes.iter().flatten() {
                let builds = n.builds().await.unwrap_or_default();
                let Some(b) = builds
                    .into_iter()
                    .find(|b| b.purpose.is_build() && b.builder == builder && b.sha == sha)
                else {
                    return false;
                };
                if b.result != "running" {
                    return false;
                }
                let claims = |v: &buildmesh_node::BuildView| {
                    let mut w: Vec<_> = v
                        .attempts
                        .iter()
                        .filter(|a| a.attempt == v.attempt)
                        .map(|a| a.worker)
                        .collect();
                    w.sort();
                    w
                };
                if let Some(a) = &agreed
                    && (a.attempt != b.attempt || a.worker != b.worker || claims(a) != claims(&b))
                {
                    return false;
                }
                agreed = Some(b);
            }
            *found.lock().unwrap() = agreed;
            found.lock().unwrap().is_some()
        })
        .await;
        found.into_inner().unwrap().expect("found above")
    }
}

/// Whether a build result is a verdict (green, orange or red).
pub fn is_verdict(result: &str) -> bool {
    matches!(result, "success" | "warnings" | "failure" | "flaky")
}
