//! Prints the mesh's figures on this machine: propagation latency of a new record to every
//! node (p50/p99) for 10 and 30 nodes in one process, and for 10, 30, 50 and 100 node
//! processes each on its own loopback address (127.0.0.2, …: Linux), the catch-up rate of a
//! node joining late, and the resident memory of idle node processes.
//!
//! Across processes, every node logs when each record reached its store
//! (`buildmesh::stored`), all on this machine's clock; the records are commit announcements
//! submitted through node after node, 300 ms apart.
//!
//! `cargo build --release -p buildmesh-node --bin buildmesh && cargo run --release -p
//! buildmesh-tests --example mesh_bench [RECORDS_FOR_CATCH_UP] [propagation|processes|catch-up|memory]`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use buildmesh_protocol::record::{Body, ChangeSource, CommitSeen};
use buildmesh_tests::procs::{Proc, run_logging_stores};
use buildmesh_tests::{Mesh, binary, free_port_base, wait_for};

fn commit(i: u64) -> Body {
    Body::CommitSeen(CommitSeen {
        repo: "https://example.org/project.git".into(),
        branch: "main".into(),
        sha: format!("{i:040x}"),
        source: ChangeSource::Submit,
        requested_by: None,
        subject: None,
        request: None,
    })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn propagation(n: usize, samples: usize) {
    let mesh = Mesh::start(n).await;
    for i in 0..n {
        mesh.wait_replicated(mesh.id(i), 1, Duration::from_secs(120))
            .await;
    }
    // Let the gossip mesh settle (grafts happen on gossipsub heartbeats).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut feeds: Vec<_> = (0..n).map(|i| mesh.node(i).records()).collect();
    let mut latencies = Vec::new();
    for k in 0..samples {
        let from = k % n;
        let t0 = Instant::now();
        let r = mesh.node(from).author(commit(k as u64)).await.unwrap();
        let key = (r.author_id(), r.seq());
        let mut last = Duration::ZERO;
        for (i, feed) in feeds.iter_mut().enumerate() {
            if i == from {
                continue;
            }
            loop {
                match tokio::time::timeout(Duration::from_secs(30), feed.recv()).await {
                    Ok(Ok(got)) if (got.author_id(), got.seq()) == key => {
                        last = last.max(t0.elapsed());
                        break;
                    }
                    Ok(Ok(_)) => continue,
                    Ok(Err(_)) => continue,
                    Err(_) => panic!("record not delivered to node {i} in 30 s"),
                }
            }
        }
        latencies.push(last);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies.sort();
    println!(
        "propagation to all {n:>2} nodes: p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  ({samples} records)",
        pct(&latencies, 0.5).as_secs_f64() * 1e3,
        pct(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
    mesh.shutdown().await;
}

async fn catch_up(records: u64) {
    let mut mesh = Mesh::start_some(2, 1).await;
    wait_for("node 1 ready", Duration::from_secs(30), || async {
        mesh.node(0)
            .metrics()
            .await
            .map(|m| m.caught_up)
            .unwrap_or(false)
    })
    .await;
    let t = Instant::now();
    let mut last = 0;
    for k in 0..records {
        last = mesh.node(0).author(commit(k)).await.unwrap().seq();
    }
    let author_rate = records as f64 / t.elapsed().as_secs_f64();
    eprintln!("{last} records authored; starting the late node");
    let t = Instant::now();
    mesh.start_node(1).await;
    let author = mesh.id(0);
    // The transfer, from the first stored batch to the last record, and the whole join
    // (opening the store, connecting, the door) apart.
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let have = mesh.node(1).version_vector().unwrap().get(&author);
        if have > 0 && first.is_none() {
            first = Some((Instant::now(), have));
        }
        if have >= last {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "catch-up stalled at {have}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let (t1, n1) = first.expect("records arrived");
    let transfer = t1.elapsed().as_secs_f64();
    println!(
        "catch-up of a late node: {last} records; transfer after the first batch {:.0} records/s; start to caught up {secs:.2} s = {:.0} records/s (authoring ran at {author_rate:.0}/s, flushed each)",
        (last - n1) as f64 / transfer,
        last as f64 / secs
    );
    mesh.shutdown().await;
}

// CPU time of a process so far, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(after.get(11)?.parse::<u64>().ok()? + after.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn idle_memory(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_base(n);
    let t = buildmesh_node::testnet::generate(&dir.path().join("mesh"), n, base).unwrap();
    let mut children: Vec<_> = t
        .nodes
        .iter()
        .map(|node| {
            Command::new(binary())
                .args(["run", "--config"])
                .arg(&node.config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let api = t.nodes[0].api.clone();
    wait_for("all nodes live", Duration::from_secs(60), || async {
        let Ok(r) = reqwest::get(format!("http://{api}/api/v1/nodes")).await else {
            return false;
        };
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        v.as_array()
            .is_some_and(|a| a.len() == n && a.iter().all(|x| x["live"] == true))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rss: Vec<u64> = children.iter().map(|c| rss_kib(c.id())).collect();
    let max = *rss.iter().max().unwrap();
    let mean = rss.iter().sum::<u64>() / n as u64;
    println!(
        "idle node processes ({n}, 10 s after all live): RSS mean {:.1} MiB, max {:.1} MiB",
        mean as f64 / 1024.0,
        max as f64 / 1024.0
    );
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

// Propagation across `n` node processes, each on its own loopback address: for `samples`
// records, the time from the author's store to the last node's.
async fn propagation_processes(n: usize, samples: usize) {
    use std::collections::HashMap;
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_base(n);
    let t =
        buildmesh_node::testnet::generate_with(&dir.path().join("mesh"), n, base, true).unwrap();
    // Mesh settings to try (`MESH_BENCH_MESH_TOML='[mesh] ...'`), appended to every node's file.
    if let Ok(extra) = std::env::var("MESH_BENCH_MESH_TOML") {
        for node in &t.nodes {
            let mut text = std::fs::read_to_string(&node.config).unwrap();
            text.push_str(&format!("\n{extra}\n"));
            std::fs::write(&node.config, text).unwrap();
        }
    }
    let logs: Vec<_> = (0..n)
        .map(|i| dir.path().join(format!("node-{i}.log")))
        .collect();
    // The processes go with this function, however it ends.
    let children: Vec<Proc> = t
        .nodes
        .iter()
        .zip(&logs)
        .map(|(node, log)| run_logging_stores(&node.config, log))
        .collect();
    let apis: Vec<String> = t.nodes.iter().map(|x| x.api.to_string()).collect();
    let started = Instant::now();
    if !buildmesh_tests::bench::wait_all_live(&apis, Duration::from_secs(300)).await {
        println!(
            "propagation to all {n} node processes: the mesh did not see every node live within 300 s"
        );
        return;
    }
    let formed = started.elapsed();
    // Let the gossip mesh settle (grafts happen on gossipsub heartbeats, the last syncs end), and
    // see what the idle mesh costs this machine: in 5 s windows until the load stops falling
    // (at most a minute), the first window (the mesh still forming) and the last one.
    let pids: Vec<u32> = children.iter().map(|c| c.0.id()).collect();
    let ticks = || pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>();
    let mut windows: Vec<f64> = Vec::new();
    while windows.len() < 12 {
        let (t0, c0) = (Instant::now(), ticks());
        tokio::time::sleep(Duration::from_secs(5)).await;
        windows.push((ticks() - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64());
        if let [.., before, last] = windows[..]
            && last > before * 0.9
        {
            break;
        }
    }
    let (forming_cores, idle_cores) = (windows[0], windows[windows.len() - 1]);
    let settled = windows.len() * 5;
    let key = buildmesh_protocol::SecretKey::from_file_text(
        &std::fs::read_to_string(&t.maintainer_key).unwrap(),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let mut sent = Vec::new();
    let mut refused = Vec::new();
    for k in 0..samples {
        let req = buildmesh_protocol::wire::SignedRequest::sign(
            &key,
            buildmesh_protocol::wire::ApiAction::Submit {
                repo: "https://example.org/project.git".into(),
                branch: "main".into(),
                sha: format!("{:040x}", k + 1),
            },
            buildmesh_protocol::Timestamp::now(),
        );
        let api = &apis[k % n];
        let answer: serde_json::Value = match client
            .post(format!("http://{api}/api/v1/submit"))
            .body(req.to_bytes())
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Default::default(),
        };
        let at = &answer["record"];
        match (at["author"].as_str(), at["seq"].as_u64()) {
            (Some(author), Some(seq)) => sent.push((author.to_string(), seq)),
            // A node still catching up with its own log authors nothing yet.
            _ => refused.push(answer.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(children);
    // (author, seq) -> when each node stored it.
    let mut stored: HashMap<(String, u64), Vec<std::time::SystemTime>> = HashMap::new();
    for log in &logs {
        for line in std::fs::read_to_string(log).unwrap().lines() {
            let Some(ts) = line.split_whitespace().next() else {
                continue;
            };
            let (Some(a), Some(s)) = (line.find("author="), line.find("seq=")) else {
                continue;
            };
            let author = line[a + 7..].split_whitespace().next().unwrap().to_string();
            let seq: u64 = line[s + 4..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            if let Ok(ts) = humantime::parse_rfc3339(ts) {
                stored.entry((author, seq)).or_default().push(ts);
            }
        }
    }
    let mut to_all = Vec::new();
    let mut missing = 0;
    for r in &sent {
        let times = stored.get(r).cloned().unwrap_or_default();
        if times.len() < n {
            missing += 1;
            continue;
        }
        let first = times.iter().min().unwrap();
        let last = times.iter().max().unwrap();
        to_all.push(last.duration_since(*first).unwrap_or_default());
    }
    to_all.sort();
    if to_all.is_empty() {
        println!("propagation to all {n} node processes: no record reached every node");
        return;
    }
    println!(
        "propagation to all {n} node processes (own addresses): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} records ({missing} did not reach every node within 5 s); mesh formed in {:.1} s; the idle mesh used {forming_cores:.2} of this machine's cores in the 5 s after, {idle_cores:.2} once settled ({settled} s later)",
        pct(&to_all, 0.5).as_secs_f64() * 1000.0,
        pct(&to_all, 0.99).as_secs_f64() * 1000.0,
        to_all.last().unwrap().as_secs_f64() * 1000.0,
        to_all.len(),
        formed.as_secs_f64()
    );
    if !refused.is_empty() {
        println!(
            "  {} submissions not authored, the first: {}",
            refused.len(),
            refused[0]
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let records: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    // `mesh_bench [RECORDS] [propagation|catch-up|memory]`: one part only, or all of them.
    let only = std::env::args().nth(2);
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    if run("propagation") {
        propagation(10, 200).await;
        propagation(30, 100).await;
    }
    if run("processes") {
        let sizes: Vec<usize> = std::env::var("MESH_BENCH_PROCESSES")
            .ok()
            .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_else(|| vec![10, 30, 50, 100]);
        for n in sizes {
            propagation_processes(n, 60).await;
        }
    }
    if run("catch-up") {
        catch_up(records).await;
    }
    if run("memory") {
        idle_memory(5).await;
    }
}
