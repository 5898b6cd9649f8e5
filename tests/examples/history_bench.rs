//! Prints what a long history costs one node: the latency of `GET /api/v1/status` and of
//! `GET /api/v1/builds?builder=` (p50/p99 over 200 requests each), the node's idle RSS, how
//! long a restart takes until its views are in order, and the store's size on disk, with 1,000
//! results held and with many (1,000,000 by default); then the disk 1,000 builds take with
//! their step logs, kept and with retention.
//!
//! The history is written straight into a real node's store — 20 builders on one branch, one
//! commit announcement per commit, one claim and one signed result (three steps) per build,
//! all in the node's own hash-chained log — then a real `buildmesh run` process is started on
//! it and measured over HTTP, after a restart.
//!
//! `cargo build --release -p buildmesh-node --bin buildmesh && \
//!  cargo run --release -p buildmesh-tests --example history_bench [RESULTS...]`
//! (the `buildmesh` binary beside the example's directory is the one measured).

use std::time::{Duration, Instant};

use buildmesh_protocol::record::{
    Body, ChangeSource, CommitSeen, JobKey, Purpose, ResultCode, StepResult,
};
use buildmesh_protocol::{Hash, SecretKey, Timestamp};
use buildmesh_store::Store;
use buildmesh_tests::bench::{History, dir_mib, latencies, metric, rss_mib, setup, start, stop};
use buildmesh_tests::procs::json;
use buildmesh_tests::wait_for;

const BUILDERS: usize = 20;
const REPO: &str = "https://example.org/cpython.git";

// The builders, each with `extra` keys.
fn builders_toml(extra: &str) -> String {
    let mut t = String::from("version = 1\n");
    for b in 0..BUILDERS {
        t.push_str(&format!(
            "[[builder]]\nname = \"b{b:02}\"\nrepo = \"{REPO}\"\nbranches = [\"main\"]\nconfirm = \"none\"\n{extra}[[builder.step]]\nname = \"s\"\nrun = \"true\"\n\n"
        ));
    }
    t
}

// A step's log as a compiler and a test runner write it: about 12 KB.
fn step_log(sha: &str, builder: usize, step: &str) -> Vec<u8> {
    let mut log = format!("=== {step} of {sha} on b{builder:02} ===\n");
    for i in 0..120 {
        log.push_str(&format!(
            "gcc -O2 -Wall -c Objects/obj{i}.c -o Objects/obj{i}.o  # {step} {} ms\n",
            (i * 37 + builder * 11) % 997
        ));
    }
    log.push_str("== Tests result: SUCCESS ==\n");
    log.into_bytes()
}

// Appends `results` builds of history to the node's own log in `store`: a commit
// announcement per commit, then a claim and a result per builder; with `logs`, each step's
// log is stored too, and one build in ten is red.
fn write_history(store: &Store, key: &SecretKey, results: usize, logs: bool) -> usize {
    let from_commit = 0;
    let commits = results / BUILDERS;
    let start = Timestamp::now().0 - (commits as u64 + 10) * 1000;
    let mut history = History::new(store, key);
    for c in from_commit..from_commit + commits {
        let t = Timestamp(start + (c - from_commit) as u64 * 1000);
        let sha = format!("{:040x}", c as u128 * 0x9e37_79b9_7f4a_7c15);
        history.author(
            Body::CommitSeen(CommitSeen {
                repo: REPO.into(),
                branch: "main".into(),
                sha: sha.clone(),
                source: ChangeSource::Poller,
                requested_by: None,
                subject: Some(format!("commit {c}")),
                request: None,
            }),
            t,
        );
        for b in 0..BUILDERS {
            let key_ = JobKey {
                builder: format!("b{b:02}"),
                repo: REPO.into(),
                branch: "main".into(),
                sha: sha.clone(),
                purpose: Purpose::Build,
            };
            let steps = ["checkout", "compile", "test"]
                .iter()
                .enumerate()
                .map(|(i, name)| StepResult {
                    name: name.to_string(),
                    result: ResultCode::Success,
                    exit_code: Some(0),
                    duration_ms: 100 * (i as u64 + 1),
                    warnings: 0,
                    log: Some(if logs {
                        store
                            .put_blob(&step_log(&sha, b, name))
                            .expect("log stored")
                    } else {
                        Hash::of(format!("{sha}{b}{name}").as_bytes())
                    }),
                    failing_lines: Vec::new(),
                })
                .collect();
            let result = if logs && (c + b) % 10 == 0 {
                ResultCode::Failure
            } else if c % 17 == 3 {
                ResultCode::Warnings
            } else {
                ResultCode::Success
            };
            history.build(key_, result, steps, t);
        }
    }
    history.finish();
    commits
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 1_000_000]
    } else {
        sizes
    };
    println!("history_bench: one node, {BUILDERS} builders, results written into its log");
    println!(
        "{:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>10} {:>9} {:>9}",
        "results",
        "status50",
        "status99",
        "bybld50",
        "bybld99",
        "rows",
        "rss MiB",
        "restart s",
        "jobs held",
        "disk MiB"
    );
    for results in sizes {
        let (dir, t, config) = setup(&builders_toml(""), "").await;
        let _keep = dir;
        let node = &t.nodes[0];
        let api = node.api.clone();
        let key = SecretKey::from_file_text(&std::fs::read_to_string(&node.key).unwrap()).unwrap();
        let t0 = Instant::now();
        {
            let store = Store::open(&config.data_dir).unwrap();
            write_history(&store, &key, results, false);
        }
        let wrote = t0.elapsed();
        // The first start views every build once; the restart after it is what a node pays.
        let (p, first) = start(&node.config, &api).await;
        stop(p);
        let (p, restart) = start(&node.config, &api).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (s50, s99, _) = latencies(&api, "/api/v1/status", 200).await;
        let (b50, b99, _) = latencies(&api, "/api/v1/builds?builder=b07", 200).await;
        let rows = json(format!("http://{api}/api/v1/status"))
            .await
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        let rss = rss_mib(p.0.id());
        let held = metric(&api, "buildmesh_jobs_held").await.unwrap_or(0);
        stop(p);
        println!(
            "{results:>10} {s50:>9.2} {s99:>9.2} {b50:>9.2} {b99:>9.2} {rows:>8} {rss:>9.1} {:>10.1} {held:>9} {:>9.0}",
            restart.as_secs_f64(),
            dir_mib(&config.data_dir)
        );
        eprintln!(
            "  ({results} results: written in {:.1} s, first start viewed them in {:.1} s)",
            wrote.as_secs_f64(),
            first.as_secs_f64()
        );
    }
    println!(
        "latencies in ms (status: GET /api/v1/status; bybld: GET /api/v1/builds?builder=, 500 newest)"
    );
    retention(10_000).await;
}

// Disk per 1,000 builds with three ~12 KB step logs each (one build in ten red): logs kept
// (the default 30 days for passing builds), and passing logs kept one second, measured after
// the janitor ran and again after a restart (sled gives space back slowly).
async fn retention(results: usize) {
    println!(
        "\nretention: {results} builds, 3 step logs each, 1 in 10 red; MiB on disk per 1,000 builds"
    );
    println!(
        "{:>28} {:>12} {:>14} {:>14} {:>10}",
        "", "logs held", "after janitor", "after restart", "log MiB"
    );
    for (label, extra) in [
        ("kept (defaults)", ""),
        ("keep_passing_logs = 1s", "keep_passing_logs = \"1s\"\n"),
    ] {
        let (dir, t, config) = setup(&builders_toml(extra), "janitor_interval = \"1s\"\n").await;
        let _keep = dir;
        let node = &t.nodes[0];
        let api = node.api.clone();
        let key = SecretKey::from_file_text(&std::fs::read_to_string(&node.key).unwrap()).unwrap();
        {
            let store = Store::open(&config.data_dir).unwrap();
            write_history(&store, &key, results, true);
        }
        let builds = (results / BUILDERS * BUILDERS) as u64;
        let (p, _) = start(&node.config, &api).await;
        if !extra.is_empty() {
            // Every passing build's three logs (a few are shared by identical content).
            let red = builds / 10;
            wait_for("the janitor", Duration::from_secs(600), || async {
                metric(&api, "buildmesh_logs_expired_total")
                    .await
                    .is_some_and(|n| n >= (builds - red) * 3 * 9 / 10)
            })
            .await;
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        stop(p);
        let after = dir_mib(&config.data_dir);
        let (p, _) = start(&node.config, &api).await;
        stop(p);
        let restarted = dir_mib(&config.data_dir);
        let (held, bytes) = Store::open(&config.data_dir).unwrap().blob_usage().unwrap();
        let per = |mib: f64| mib * 1000.0 / builds as f64;
        println!(
            "{label:>28} {held:>12} {:>14.1} {:>14.1} {:>10.1}",
            per(after),
            per(restarted),
            bytes as f64 / 1048576.0
        );
    }
}
