//! Prints how long a CPython-sized fleet takes to build one commit on each branch: 22 node
//! processes, each on its own loopback address as separate hosts are, with labels spread over
//! platforms as `buildmesh testnet` gives them; 160 builders over 7 branches (1,120 trivial
//! jobs, most for Linux x86-64, some for aarch64 or FreeBSD only); a real git repository.
//! It prints when every verdict had reached the first node and every node (from the nodes' own
//! logs of what they stored), builds per second, the results beyond one per job, the nodes'
//! RSS before and after, and `GET /api/v1/status` on a node afterwards. The aim: every node
//! holds every verdict within 30 s.
//!
//! `cargo build --release -p buildmesh-node --bin buildmesh && \
//!  cargo run --release -p buildmesh-tests --example fleet_bench [NODES] [SLOTS]`

use std::time::{Duration, Instant, SystemTime};

use buildmesh_protocol::wire::{ApiAction, SignedRequest};
use buildmesh_protocol::{SecretKey, Timestamp};
use buildmesh_tests::bench::{latencies, publish_builders, rss_mib, wait_all_live};
use buildmesh_tests::procs::{Proc, json, run_logging_stores};
use buildmesh_tests::{GitRepo, free_port_base, is_verdict, wait_for};

const BUILDERS: usize = 160;
const BRANCHES: [&str; 7] = ["main", "3.14", "3.13", "3.12", "3.11", "3.10", "3.9"];

// Six builders in ten are for Linux on x86-64, two for aarch64, one for FreeBSD, one for any
// host; the testnet's labels give 22 nodes 11 Linux x86-64 hosts, 7 aarch64 and 5 FreeBSD.
fn requires(b: usize) -> &'static str {
    match b % 10 {
        0..=5 => "requires = { os = \"linux\", arch = \"x86_64\" }\n",
        6 | 7 => "requires = { arch = \"aarch64\" }\n",
        8 => "requires = { os = \"freebsd\" }\n",
        _ => "",
    }
}

fn builders_toml(repo: &str) -> String {
    let branches = BRANCHES.map(|b| format!("\"{b}\"")).join(", ");
    let mut t = String::from("version = 1\n");
    for b in 0..BUILDERS {
        t.push_str(&format!(
            "[[builder]]\nname = \"builder {b:03}\"\nrepo = \"{repo}\"\nbranches = [{branches}]\ntags = [\"tier-{}\"]\n{}[[builder.step]]\nname = \"test\"\nrun = \"true\"\n\n",
            1 + b % 3,
            requires(b)
        ));
    }
    t
}

// When each node stored each build result: its log's `record stored` lines.
fn results_stored(log: &std::path::Path) -> Vec<SystemTime> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("kind=\"build-result\"") || l.contains("kind=build-result"))
        .filter_map(|l| humantime::parse_rfc3339(l.split_whitespace().next()?).ok())
        .collect()
}

fn secs(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).unwrap_or_default().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(22);
    let slots: u32 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let jobs = BUILDERS * BRANCHES.len();
    let dir = tempfile::tempdir().unwrap();
    let t = buildmesh_node::testnet::generate_with(
        &dir.path().join("mesh"),
        n,
        free_port_base(n),
        true,
    )
    .unwrap();
    for node in &t.nodes {
        let mut text = std::fs::read_to_string(&node.config).unwrap();
        text.push_str(&format!("max_builds = {slots}\n"));
        std::fs::write(&node.config, text).unwrap();
    }
    let repo = GitRepo::new(dir.path().join("cpython"));
    let shas: Vec<String> = BRANCHES
        .iter()
        .map(|b| repo.commit(b, &[("branch", b)], &format!("a change on {b}")))
        .collect();

    let logs: Vec<_> = (0..n)
        .map(|i| dir.path().join(format!("node-{i}.log")))
        .collect();
    let nodes: Vec<Proc> = t
        .nodes
        .iter()
        .zip(&logs)
        .map(|(node, log)| run_logging_stores(&node.config, log))
        .collect();
    let apis: Vec<String> = t.nodes.iter().map(|x| x.api.clone()).collect();
    let started = Instant::now();
    if !wait_all_live(&apis, Duration::from_secs(300)).await {
        println!("fleet: the {n} nodes did not all see each other live within 300 s");
        return;
    }
    println!(
        "fleet: {n} node processes (own addresses, {slots} build slot(s) each) live in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let pids: Vec<u32> = nodes.iter().map(|p| p.0.id()).collect();
    let rss = |pids: &[u32]| {
        let v: Vec<f64> = pids.iter().map(|p| rss_mib(*p)).collect();
        (
            v.iter().sum::<f64>() / v.len() as f64,
            v.iter().cloned().fold(0.0, f64::max),
        )
    };
    let idle = rss(&pids);

    // The builders, signed by the maintainer, in force on every node.
    publish_builders(&t, &apis[0], &builders_toml(&repo.url())).await;
    let maintainer =
        SecretKey::from_file_text(&std::fs::read_to_string(&t.maintainer_key).unwrap()).unwrap();
    let client = reqwest::Client::new();
    wait_for(
        "the builders in force on every node",
        Duration::from_secs(120),
        || async {
            for api in &apis {
                let h = json(format!("http://{api}/api/v1/health")).await;
                if h.is_none_or(|h| h["config_version"] != 1) {
                    return false;
                }
            }
            true
        },
    )
    .await;

    // One commit on each branch, submitted through the first node.
    let submitted = SystemTime::now();
    for (branch, sha) in BRANCHES.iter().zip(&shas) {
        let req = SignedRequest::sign(
            &maintainer,
            ApiAction::Submit {
                repo: repo.url(),
                branch: branch.to_string(),
                sha: sha.clone(),
            },
            Timestamp::now(),
        );
        let answer = client
            .post(format!("http://{}/api/v1/submit", apis[0]))
            .body(req.to_bytes())
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "submit: {}", answer.status());
    }

    // Every node holds a result for every job, or the deadline passes.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_print = Instant::now();
    let done = loop {
        let counts: Vec<usize> = logs.iter().map(|l| results_stored(l).len()).collect();
        if counts.iter().all(|c| *c >= jobs) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            last_print = Instant::now();
            let mut sorted = counts.clone();
            sorted.sort();
            println!(
                "  {:5.1} s: results held, fewest {} / median {} / most {} of {jobs}",
                secs(submitted, SystemTime::now()),
                sorted[0],
                sorted[n / 2],
                sorted[n - 1]
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if !done {
        println!("fleet: not every node held a result for every job within 600 s");
    }
    // Each node's time to its `jobs`-th result; the total it holds.
    let mut to_all = Vec::new();
    let mut extra = 0;
    for log in &logs {
        let mut times = results_stored(log);
        times.sort();
        extra = extra.max(times.len().saturating_sub(jobs));
        if let Some(t) = times.get(jobs - 1) {
            to_all.push(secs(submitted, *t));
        }
    }
    to_all.sort_by(f64::total_cmp);
    // The node's own view: every builder's row on every branch a verdict (a job whose build
    // ended in an exception, a failed checkout say, has a result but runs again).
    let mut others = std::collections::BTreeMap::new();
    let mut verdicts = 0;
    let all_verdicts = Instant::now();
    while all_verdicts.elapsed() < Duration::from_secs(120) {
        let rows = json(format!("http://{}/api/v1/status", apis[0]))
            .await
            .unwrap_or_default();
        others.clear();
        verdicts = 0;
        for r in rows.as_array().into_iter().flatten() {
            match r["result"].as_str() {
                Some(v) if is_verdict(v) => verdicts += 1,
                v => *others.entry(v.unwrap_or("none").to_string()).or_insert(0) += 1,
            }
        }
        if verdicts >= jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let verdicts_at = secs(submitted, SystemTime::now());
    let busy = rss(&pids);
    let (p50, p99, _) = latencies(&apis[0], "/api/v1/status", 50).await;
    if let (Some(first), Some(last)) = (to_all.first(), to_all.last()) {
        println!(
            "fleet: {jobs} jobs ({BUILDERS} builders × {} branches) on {n} nodes: every result on the first node after {first:.1} s, on every node after {last:.1} s ({:.1} builds/s); at most {extra} results beyond one per job on a node; {verdicts} of {jobs} status rows a verdict on node 1 after {verdicts_at:.1} s{}",
            BRANCHES.len(),
            jobs as f64 / last,
            if others.is_empty() {
                String::new()
            } else {
                format!(" (the others: {others:?})")
            }
        );
    }
    println!(
        "fleet: RSS per node idle {:.1} MiB mean / {:.1} max, after the builds {:.1} / {:.1}; GET /api/v1/status p50 {p50:.1} ms, p99 {p99:.1} ms",
        idle.0, idle.1, busy.0, busy.1
    );
    drop(nodes);
}
