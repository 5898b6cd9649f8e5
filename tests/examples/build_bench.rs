//! Prints the build figures on this machine, with three in-process workers on loopback:
//! commit announced -> build started (p50/p99), -> result held by every node, trivial builds
//! per second end to end, a silent worker's job -> running on another worker, red result ->
//! mail accepted by the SMTP server, and notifier killed -> missing mail sent by a new holder.
//!
//! `cargo run --release -p buildmesh-tests --example build_bench`

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use buildmesh_node::smtp_sink;
use buildmesh_protocol::Hash;
use buildmesh_protocol::record::{Body, Record};
use buildmesh_tests::{GitRepo, Mesh, is_verdict, wait_for};
use tokio::sync::broadcast;

const LONG: Duration = Duration::from_secs(120);

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

async fn mesh(n: usize, smtp_port: u16, max_builds: u32) -> Mesh {
    Mesh::start_with(n, |_, c| {
        c.notifier.smtp = Some(("127.0.0.1".into(), smtp_port));
        c.worker.max_builds = Some(max_builds);
    })
    .await
}

fn toml(repo: &str) -> String {
    format!(
        "version = 1\n[[builder]]\nname = \"trivial\"\nrepo = \"{repo}\"\nbranches = [\"*\"]\n[[builder.step]]\nname = \"s\"\nrun = \"true\"\n\n[[builder]]\nname = \"mailer\"\nrepo = \"{repo}\"\nbranches = [\"red-green\"]\ntags = [\"stable\"]\n[[builder.step]]\nname = \"s\"\nrun = \"test \\\"$(cat state)\\\" = green\"\n\n[[builder]]\nname = \"mailer-none\"\nrepo = \"{repo}\"\nbranches = [\"red-green-none\"]\ntags = [\"stable\"]\nconfirm = \"none\"\n[[builder.step]]\nname = \"s\"\nrun = \"test \\\"$(cat state)\\\" = green\"\n\n[[builder]]\nname = \"slow\"\nrepo = \"{repo}\"\nbranches = [\"slow-*\"]\n[[builder.step]]\nname = \"s\"\nrun = \"sleep 30\"\n"
    )
}

// Waits on a node's record feed for a record matching `want`.
async fn next(feed: &mut broadcast::Receiver<Arc<Record>>, want: impl Fn(&Body) -> bool) {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        match tokio::time::timeout_at(deadline, feed.recv()).await {
            Ok(Ok(r)) => {
                if r.body().map(|b| want(&b)).unwrap_or(false) {
                    return;
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            _ => panic!("record not seen in time"),
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let (addr, mailbox) = smtp_sink::bind(([127, 0, 0, 1], 0).into()).unwrap();
    let m = mesh(3, addr.port(), 4).await;
    let repo = GitRepo::new(m.dir.path().join("repo"));
    m.publish_builders(0, &toml(&repo.url())).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Latency: one commit at a time.
    let mut start_lat = Vec::new();
    let mut everywhere_lat = Vec::new();
    for k in 0..60 {
        let branch = format!("lat-{k}");
        let sha = repo.commit(&branch, &[("n", &k.to_string())], "x");
        let job = buildmesh_protocol::record::JobKey {
            builder: "trivial".into(),
            repo: repo.url(),
            branch: branch.clone(),
            sha: sha.clone(),
            purpose: Default::default(),
        }
        .id();
        let mut feeds: Vec<_> = (0..3).map(|i| m.node(i).records()).collect();
        let t0 = Instant::now();
        m.announce(0, &repo.url(), &branch, &sha).await;
        next(
            &mut feeds[0],
            |b| matches!(b, Body::Claim(c) if c.job == job),
        )
        .await;
        start_lat.push(t0.elapsed());
        for f in feeds.iter_mut() {
            next(f, |b| matches!(b, Body::BuildResult(r) if r.job == job)).await;
        }
        everywhere_lat.push(t0.elapsed());
    }
    println!(
        "commit announced -> build started (claim seen at the announcer): p50 {:.1} ms  p99 {:.1} ms",
        pct(&mut start_lat, 0.5),
        pct(&mut start_lat, 0.99)
    );
    println!(
        "commit announced -> result held by all 3 nodes:                  p50 {:.1} ms  p99 {:.1} ms",
        pct(&mut everywhere_lat, 0.5),
        pct(&mut everywhere_lat, 0.99)
    );

    // Throughput: many trivial builds at once.
    let n = 300;
    let mut jobs: HashMap<Hash, ()> = HashMap::new();
    let mut pending = Vec::new();
    for k in 0..n {
        let branch = format!("tp-{k}");
        let sha = repo.commit(&branch, &[("n", &k.to_string())], "x");
        jobs.insert(
            buildmesh_protocol::record::JobKey {
                builder: "trivial".into(),
                repo: repo.url(),
                branch: branch.clone(),
                sha: sha.clone(),
                purpose: Default::default(),
            }
            .id(),
            (),
        );
        pending.push((branch, sha));
    }
    let mut feed = m.node(0).records();
    let t0 = Instant::now();
    for (k, (branch, sha)) in pending.iter().enumerate() {
        m.announce(k % 3, &repo.url(), branch, sha).await;
    }
    let mut done = 0;
    while done < n {
        match tokio::time::timeout(LONG, feed.recv()).await {
            Ok(Ok(r)) => {
                if let Ok(Body::BuildResult(b)) = r.body()
                    && jobs.remove(&b.job).is_some()
                {
                    done += 1;
                }
            }
            Ok(Err(_)) => {
                // The feed dropped records (a slow machine): ask the store what it holds.
                let store = &m.node(0).store;
                jobs.retain(|job, _| store.results_for_job(job).unwrap_or_default().is_empty());
                done = n - jobs.len();
            }
            Err(_) => panic!("throughput run stalled at {done}"),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "trivial builds end to end, 3 workers x 4 slots: {n} in {secs:.2} s = {:.1} builds/s",
        n as f64 / secs
    );

    // Red result -> mail accepted: confirmed on another host first (a stable builder's default),
    // and with `confirm = "none"` (mailed as it comes) for the difference.
    for (branch, builder, what) in [
        ("red-green", "mailer", "confirmed on another host"),
        (
            "red-green-none",
            "mailer-none",
            "unconfirmed (confirm = \"none\")",
        ),
    ] {
        let mut mail_lat = Vec::new();
        for k in 0..6 {
            for state in ["green", "red"] {
                let sha = repo.commit(branch, &[("state", state), ("k", &k.to_string())], state);
                let job = buildmesh_protocol::record::JobKey {
                    builder: builder.into(),
                    repo: repo.url(),
                    branch: branch.into(),
                    sha: sha.clone(),
                    purpose: Default::default(),
                }
                .id();
                let before = mailbox.len();
                let mut feed = m.node(0).records();
                m.announce(0, &repo.url(), branch, &sha).await;
                if state == "red" {
                    // From the moment the red result record reached node 1 to the SMTP
                    // server's accept (the confirmation build in between, if any).
                    next(
                        &mut feed,
                        |x| matches!(x, Body::BuildResult(r) if r.job == job),
                    )
                    .await;
                    let t0 = Instant::now();
                    // The sink is in this process: look every millisecond, not every 50.
                    while mailbox.len() <= before {
                        assert!(t0.elapsed() < LONG, "no mail");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    mail_lat.push(t0.elapsed());
                }
                m.wait_build(0, builder, &sha, LONG, is_verdict).await;
            }
        }
        println!(
            "red result on a node -> mail accepted by the SMTP server, {what}: p50 {:.1} ms  p99 {:.1} ms ({} mails)",
            pct(&mut mail_lat, 0.5),
            pct(&mut mail_lat, 0.99),
            mail_lat.len()
        );
    }

    // A silent worker (cable cut): its job runs elsewhere.
    let mut failover = Vec::new();
    for k in 0..3 {
        let branch = format!("slow-{k}");
        let sha = repo.commit(&branch, &[("k", &k.to_string())], "slow");
        m.announce(0, &repo.url(), &branch, &sha).await;
        let b = m.wait_settled_runner("slow", &sha, LONG).await;
        let w = (0..3).find(|i| Some(m.id(*i)) == b.worker).unwrap();
        let observer = (0..3).find(|i| *i != w).unwrap();
        let others: Vec<_> = (0..3).filter(|i| *i != w).map(|i| m.id(i)).collect();
        let t0 = Instant::now();
        m.node(w).isolate(&others, true).await.unwrap();
        for i in (0..3).filter(|i| *i != w) {
            m.node(i).isolate(&[m.id(w)], true).await.unwrap();
        }
        let job = b.job;
        wait_for("the job on another worker", LONG, || async {
            m.node(observer)
                .builds()
                .await
                .unwrap_or_default()
                .iter()
                .any(|x| x.job == job && x.attempt > b.attempt && x.result == "running")
        })
        .await;
        failover.push(t0.elapsed());
        m.node(w).isolate(&others, false).await.unwrap();
        for i in (0..3).filter(|i| *i != w) {
            m.node(i).isolate(&[m.id(w)], false).await.unwrap();
        }
    }
    println!(
        "worker silent (cable cut) -> its job running on another worker: p50 {:.0} ms  max {:.0} ms (lease 3 s)",
        pct(&mut failover, 0.5),
        pct(&mut failover, 1.0)
    );
    m.shutdown().await;

    // Notifier killed with a mail waiting -> a new holder sends it.
    let mut notifier_failover = Vec::new();
    for _ in 0..3 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut m = mesh(3, port, 1).await;
        let repo = GitRepo::new(m.dir.path().join("repo"));
        m.publish_builders(0, &toml(&repo.url())).await;
        let mut holder = None;
        while holder.is_none() {
            for i in 0..3 {
                if m.node(i)
                    .notifier()
                    .await
                    .map(|v| v.holding)
                    .unwrap_or(false)
                {
                    holder = Some(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let h = holder.unwrap();
        let via = (h + 1) % 3;
        for state in ["green", "red"] {
            let sha = repo.commit("red-green", &[("state", state)], state);
            m.announce(via, &repo.url(), "red-green", &sha).await;
            m.wait_build(via, "mailer", &sha, LONG, is_verdict).await;
        }
        wait_for("the mail waiting on the holder", LONG, || async {
            m.node(h)
                .notifier()
                .await
                .map(|v| v.waiting == 1)
                .unwrap_or(false)
        })
        .await;
        let t0 = Instant::now();
        m.nodes[h].take().unwrap().abort();
        let sink = smtp_sink::start(TcpListener::bind(("127.0.0.1", port)).unwrap()).unwrap();
        wait_for("the mail from a new holder", LONG, || async {
            sink.len() == 1
        })
        .await;
        notifier_failover.push(t0.elapsed());
        m.shutdown().await;
    }
    println!(
        "notifier killed with a red transition waiting -> mail sent by the new holder: p50 {:.0} ms  max {:.0} ms",
        pct(&mut notifier_failover, 0.5),
        pct(&mut notifier_failover, 1.0)
    );
}
