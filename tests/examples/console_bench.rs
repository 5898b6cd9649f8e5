//! Prints how long the web console's pages take on a CPython-sized history: 160 builders over
//! 7 branches, 50 commits on each branch (56,000 builds), about one builder in twelve red with a
//! streak of a few commits. The history is written straight into a real node's own log, then a
//! real `buildmesh run` process serves it; each page is fetched 50 times over loopback and its
//! p50 and p99 printed (the aim: under 50 ms for `/console` and `/`), then the node's idle RSS
//! and CPU. Every builder is one the node may build: the history is its own.
//!
//! `cargo build --release -p buildmesh-node --bin buildmesh && \
//!  cargo run --release -p buildmesh-tests --example console_bench [COMMITS_PER_BRANCH]`

use std::time::{Duration, Instant};

use buildmesh_protocol::record::{
    Body, ChangeSource, CommitSeen, JobKey, Purpose, ResultCode, StepResult,
};
use buildmesh_protocol::{Hash, SecretKey, Timestamp};
use buildmesh_store::Store;
use buildmesh_tests::bench::{History, cpu_share, rss_mib, setup, start, stop, timed};

const BUILDERS: usize = 160;
const BRANCHES: [&str; 7] = ["main", "3.14", "3.13", "3.12", "3.11", "3.10", "3.9"];
const REPO: &str = "https://example.org/cpython.git";
const PLATFORMS: [&str; 8] = [
    "AMD64 Debian root",
    "AMD64 Fedora Rawhide LTO + PGO",
    "aarch64 Fedora Stable",
    "AMD64 Windows11",
    "ARM64 macOS",
    "s390x RHEL8",
    "PPC64LE Fedora",
    "x86 Gentoo Installed",
];

fn name(b: usize) -> String {
    format!("{} {b:03}", PLATFORMS[b % PLATFORMS.len()])
}

fn builders_toml() -> String {
    let mut t = String::from("version = 1\n");
    for b in 0..BUILDERS {
        let tier = 1 + b % 3;
        let stable = if b.is_multiple_of(3) {
            "\"stable\", "
        } else {
            ""
        };
        t.push_str(&format!(
            "[[builder]]\nname = \"{}\"\nrepo = \"{REPO}\"\nbranches = [\"*\"]\ntags = [{stable}\"tier-{tier}\"]\nconfirm = \"none\"\n[[builder.step]]\nname = \"test\"\nrun = \"true\"\n\n",
            name(b)
        ));
    }
    t
}

// A red streak: builder `b` fails the newest `b % 5 + 1` commits of a branch when b % 12 == 6
// (a stable builder: one in three is).
fn result_of(b: usize, commit: usize, commits: usize) -> ResultCode {
    if b % 12 == 6 && commit + b % 5 + 1 >= commits {
        ResultCode::Failure
    } else if (b + commit).is_multiple_of(29) {
        ResultCode::Warnings
    } else {
        ResultCode::Success
    }
}

fn write_history(store: &Store, key: &SecretKey, commits: usize) -> usize {
    let total = commits * BRANCHES.len();
    let start = Timestamp::now().0 - (total as u64 + 10) * 1000;
    let mut history = History::new(store, key);
    let mut builds = 0;
    for c in 0..commits {
        for (i, branch) in BRANCHES.iter().enumerate() {
            let t = Timestamp(start + (c * BRANCHES.len() + i) as u64 * 1000);
            let sha = Hash::of(format!("commit {c} of {branch}").as_bytes()).to_string()[..40]
                .to_string();
            history.author(
                Body::CommitSeen(CommitSeen {
                    repo: REPO.into(),
                    branch: branch.to_string(),
                    sha: sha.clone(),
                    source: ChangeSource::Poller,
                    requested_by: None,
                    subject: Some(format!("gh-{c}: change {i}")),
                    request: None,
                }),
                t,
            );
            for b in 0..BUILDERS {
                let key_ = JobKey {
                    builder: name(b),
                    repo: REPO.into(),
                    branch: branch.to_string(),
                    sha: sha.clone(),
                    purpose: Purpose::Build,
                };
                let result = result_of(b, c, commits);
                // A red build's log is stored, as its worker and copiers would hold it.
                let log = if result == ResultCode::Failure {
                    let text = format!(
                        "building {sha}\n0:00:01 load avg: 1.2 Run tests in parallel\n\
                         0:00:03 [ 1/40] test_grammar passed\n\
                         \x1b[31m0:00:05 [ 2/40] test_asyncio failed\x1b[0m\n\
                         ERROR: test_timeout (test.test_asyncio.test_tasks)\n\
                         Traceback (most recent call last):\n  File \"test_tasks.py\", line 42\n\
                         AssertionError: 0.2 not less than 0.1\n\
                         == Tests result: FAILURE ==\nbuildmesh: step exited with code 1\n"
                    );
                    store.put_blob(text.as_bytes()).expect("a log stored")
                } else {
                    Hash::of(format!("{sha}{b}").as_bytes())
                };
                let step = StepResult {
                    name: "test".into(),
                    result,
                    exit_code: Some(if result == ResultCode::Failure { 1 } else { 0 }),
                    duration_ms: 600,
                    warnings: 0,
                    log: Some(log),
                    failing_lines: Vec::new(),
                };
                history.build(key_, result, vec![step], t);
                builds += 1;
            }
        }
    }
    history.finish();
    builds
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let commits: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let (dir, t, config) = setup(&builders_toml(), "").await;
    let _keep = dir;
    let node = &t.nodes[0];
    let api = node.api.clone();
    let key = SecretKey::from_file_text(&std::fs::read_to_string(&node.key).unwrap()).unwrap();
    let t0 = Instant::now();
    let builds = {
        let store = Store::open(&config.data_dir).unwrap();
        write_history(&store, &key, commits)
    };
    eprintln!(
        "console_bench: {builds} builds written in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let (p, first) = start(&node.config, &api).await;
    eprintln!(
        "console_bench: the node viewed them in {:.1} s",
        first.as_secs_f64()
    );
    println!(
        "console_bench: {BUILDERS} builders x {} branches x {commits} commits = {builds} builds, one node",
        BRANCHES.len()
    );
    println!(
        "{:<44} {:>9} {:>9} {:>12} {:>12} {:>10}",
        "page", "p50 ms", "p99 ms", "server p50", "server p99", "bytes"
    );
    let red = format!("/builders/{}", name(6).replace(' ', "%20"));
    for path in [
        "/",
        "/console",
        "/console?branch=3.13",
        "/console?tag=stable",
        red.as_str(),
        "/workers",
        "/notifier",
        "/badge/main.svg",
        "/api/v1/status",
    ] {
        // CONSOLE_BENCH_REPEAT raises the 50 requests per page (for a profiler to sample).
        let n = std::env::var("CONSOLE_BENCH_REPEAT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50);
        let t = timed(&api, path, n).await;
        let (p50, p99) = t.client;
        let (s50, s99) = t
            .server
            .map(|(a, b)| (format!("{a:.2}"), format!("{b:.2}")))
            .unwrap_or_default();
        println!(
            "{path:<44} {p50:>9.2} {p99:>9.2} {s50:>12} {s99:>12} {:>10}",
            t.size
        );
    }
    // CONSOLE_BENCH_SCREENSHOTS=DIR: each page of this history, as headless Chromium draws it.
    if let Some(dir) = std::env::var_os("CONSOLE_BENCH_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        // The newest build of a builder with a red streak.
        let red_build = buildmesh_tests::procs::json(format!(
            "http://{api}/api/v1/builds?builder={}&limit=1",
            name(6).replace(' ', "%20").replace('+', "%2B")
        ))
        .await
        .and_then(|v| v[0]["id"].as_str().map(|id| format!("/builds/{id}")))
        .unwrap_or_else(|| "/builds/none".into());
        for (file, path) in [
            ("build", red_build),
            ("dashboard", "/".to_string()),
            ("console", "/console?branch=main".to_string()),
            ("builder", red.clone()),
            ("workers", "/workers".to_string()),
            ("notifier", "/notifier".to_string()),
        ] {
            let out = dir.join(format!("{file}.png"));
            let status = std::process::Command::new("chromium")
                .args([
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    "--window-size=1400,1000",
                ])
                .arg(format!("--screenshot={}", out.display()))
                .arg(format!("http://{api}{path}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            eprintln!("console_bench: {path} -> {} ({status:?})", out.display());
        }
    }
    println!(
        "idle: RSS {:.0} MiB, CPU {:.1} % of a core over 10 s",
        rss_mib(p.0.id()),
        100.0 * cpu_share(p.0.id(), Duration::from_secs(10)).await
    );
    stop(p);
}
