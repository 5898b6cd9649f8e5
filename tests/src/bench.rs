//! What the benchmarks share: one real `buildmesh run` process on a one-node testnet with
//! builders published, started and stopped, and measured over HTTP (latency percentiles, RSS,
//! disk, metrics).

use std::path::Path;
use std::time::{Duration, Instant};

use buildmesh_node::config::NodeConfig;
use buildmesh_protocol::SecretKey;
use buildmesh_protocol::docs::{Genesis, SignedDoc};

use crate::procs::{Proc, json, run};
use crate::{free_port_base, wait_for};

/// The `p` percentile of `v`, in milliseconds.
pub fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

/// A process's resident memory, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The share of one core a process used over `over` (user and system time, from /proc).
pub async fn cpu_share(pid: u32, over: Duration) -> f64 {
    let ticks = || -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
        n(11) + n(12)
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let before = ticks();
    tokio::time::sleep(over).await;
    (ticks() - before) / hz / over.as_secs_f64()
}

/// What a directory holds, in MiB.
pub fn dir_mib(p: &Path) -> f64 {
    let mut total = 0u64;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            (dir_mib(&e.path()) * 1024.0 * 1024.0) as u64
        } else {
            m.len()
        };
    }
    total as f64 / 1024.0 / 1024.0
}

/// One of the node's `/metrics`.
pub async fn metric(api: &str, name: &str) -> Option<u64> {
    let text = reqwest::get(format!("http://{api}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// What `n` GETs of one path took.
#[derive(Debug)]
pub struct Timed {
    /// p50 and p99 of the round trip, ms.
    pub client: (f64, f64),
    /// p50 and p99 of the time the server says it spent (its `Server-Timing` header), ms.
    pub server: Option<(f64, f64)>,
    /// Bytes of the last answer.
    pub size: usize,
}

/// `n` GETs of `path`, one after another.
pub async fn timed(api: &str, path: &str, n: usize) -> Timed {
    let client = reqwest::Client::new();
    let mut v = Vec::with_capacity(n);
    let mut server = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let answer = client
            .get(format!("http://{api}{path}"))
            .send()
            .await
            .expect("answer");
        // `Server-Timing: render;dur=1.25`
        let dur = answer
            .headers()
            .get("server-timing")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.split("dur=").nth(1))
            .and_then(|d| d.trim().parse::<f64>().ok());
        let body = answer.bytes().await.expect("body");
        v.push(t.elapsed());
        if let Some(ms) = dur {
            server.push(Duration::from_secs_f64(ms / 1e3));
        }
        size = body.len();
    }
    Timed {
        client: (pct(&mut v, 0.5), pct(&mut v, 0.99)),
        server: (server.len() == n).then(|| (pct(&mut server, 0.5), pct(&mut server, 0.99))),
        size,
    }
}

/// `n` GETs of `path`, one after another: (p50 ms, p99 ms, bytes of the last answer).
pub async fn latencies(api: &str, path: &str, n: usize) -> (f64, f64, usize) {
    let t = timed(api, path, n).await;
    (t.client.0, t.client.1, t.size)
}

/// Waits until the first and the last of these nodes each list all of them live; false if
/// `timeout` passes first.
pub async fn wait_all_live(apis: &[String], timeout: Duration) -> bool {
    let n = apis.len();
    let all_live = || async {
        for api in [&apis[0], &apis[n - 1]] {
            let Some(v) = json(format!("http://{api}/api/v1/nodes")).await else {
                return false;
            };
            let live = v
                .as_array()
                .is_some_and(|a| a.len() == n && a.iter().all(|x| x["live"] == true));
            if !live {
                return false;
            }
        }
        true
    };
    let started = Instant::now();
    while !all_live().await {
        if started.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    true
}

/// Stops a node in order (SIGTERM) and waits for it.
pub fn stop(p: Proc) {
    let pid = nix::unistd::Pid::from_raw(p.0.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let mut p = p;
    let _ = p.0.wait();
}

/// Starts the node and waits until its claimer has read the history (its views in order).
pub async fn start(config: &Path, api: &str) -> (Proc, Duration) {
    let t = Instant::now();
    let p = run(config);
    wait_for(
        "the node to read its history",
        Duration::from_secs(3600),
        || async { metric(api, "buildmesh_claimer_ready").await == Some(1) },
    )
    .await;
    (p, t.elapsed())
}

/// A one-node testnet with these builders published, stopped: (its directory, the testnet,
/// the node's configuration). `store` is the node's `[store]` table.
pub async fn setup(
    builders: &str,
    store: &str,
) -> (
    tempfile::TempDir,
    buildmesh_node::testnet::Testnet,
    NodeConfig,
) {
    let dir = tempfile::tempdir().unwrap();
    let t =
        buildmesh_node::testnet::generate(&dir.path().join("mesh"), 1, free_port_base(1)).unwrap();
    let node = &t.nodes[0];
    if !store.is_empty() {
        let mut text = std::fs::read_to_string(&node.config).unwrap();
        text.push_str(&format!("\n[store]\n{store}"));
        std::fs::write(&node.config, text).unwrap();
    }
    let config = NodeConfig::load(&node.config).unwrap();
    let api = node.api.clone();
    // First start: the node writes its genesis and admission; the builders are published.
    let p = run(&node.config);
    wait_for("the node's API", Duration::from_secs(60), || async {
        json(format!("http://{api}/api/v1/health")).await.is_some()
    })
    .await;
    publish_builders(&t, &api, builders).await;
    stop(p);
    (dir, t, config)
}

/// The maintainer's signature on `builders` (TOML), published through the node at `api`.
pub async fn publish_builders(t: &buildmesh_node::testnet::Testnet, api: &str, builders: &str) {
    let maintainer =
        SecretKey::from_file_text(&std::fs::read_to_string(&t.maintainer_key).unwrap()).unwrap();
    let genesis =
        Genesis::verify(&SignedDoc::from_bytes(&std::fs::read(&t.genesis).unwrap()).unwrap())
            .unwrap();
    let config =
        buildmesh_protocol::builders::BuilderConfig::from_toml(genesis.mesh, builders).unwrap();
    let mut doc = SignedDoc::new(&config).unwrap();
    doc.sign(&maintainer);
    crate::post_accepted(&format!("http://{api}/api/v1/publish"), doc.to_bytes()).await;
}

/// Appends records to a node's own log, straight into its store in batches of 20,000: how the
/// history benchmarks write years of builds before a node is started on them.
#[derive(Debug)]
pub struct History<'a> {
    store: &'a buildmesh_store::Store,
    key: &'a SecretKey,
    seq: u64,
    prev: buildmesh_protocol::Hash,
    batch: Vec<Result<buildmesh_protocol::record::Record, buildmesh_store::StoreError>>,
}

impl<'a> History<'a> {
    const BATCH: usize = 20_000;

    /// Goes on from the head of `key`'s log in `store`.
    pub fn new(store: &'a buildmesh_store::Store, key: &'a SecretKey) -> Self {
        let (seq, prev) = store.head_of(&key.id()).expect("head");
        History {
            store,
            key,
            seq,
            prev,
            batch: Vec::with_capacity(Self::BATCH),
        }
    }

    /// Signs `body` as the next record, dated `t`.
    pub fn author(
        &mut self,
        body: buildmesh_protocol::record::Body,
        t: buildmesh_protocol::Timestamp,
    ) {
        self.seq += 1;
        let r = buildmesh_protocol::record::Record::author(self.key, self.seq, self.prev, t, &body)
            .expect("record");
        self.prev = r.hash;
        self.batch.push(Ok(r));
        if self.batch.len() >= Self::BATCH {
            self.store_batch();
        }
    }

    /// Authors one build of `key` announced at `t`: its claim (attempt 1) 10 ms later and its
    /// result with `steps` 600 ms later.
    pub fn build(
        &mut self,
        key: buildmesh_protocol::record::JobKey,
        result: buildmesh_protocol::record::ResultCode,
        steps: Vec<buildmesh_protocol::record::StepResult>,
        t: buildmesh_protocol::Timestamp,
    ) {
        use buildmesh_protocol::record::{Body, BuildResult, Claim};
        let job = key.id();
        let started = t.plus(Duration::from_millis(10));
        let finished = t.plus(Duration::from_millis(600));
        self.author(
            Body::Claim(Claim {
                job,
                key: key.clone(),
                attempt: 1,
                lease_ms: 3000,
            }),
            started,
        );
        self.author(
            Body::BuildResult(BuildResult {
                job,
                key,
                attempt: 1,
                result,
                steps,
                started,
                finished,
                config_version: 1,
            }),
            finished,
        );
    }

    fn store_batch(&mut self) {
        for o in self.store.ingest_verified(std::mem::take(&mut self.batch)) {
            o.expect("stored");
        }
    }

    /// Stores what is left and flushes.
    pub fn finish(mut self) {
        self.store_batch();
        self.store.flush().expect("flushed");
    }
}
