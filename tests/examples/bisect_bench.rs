//! Prints how long a culprit search takes on this machine: from a red to the first bad commit
//! named, over ranges of 30 and 200 commits, with 3 and 10 in-process workers, splitting each
//! round over every idle worker and, on the same mesh, one probe at a time (the classic binary
//! search). Each build sleeps a second before it tests, as a real build spends its time
//! waiting on more than this machine's two cores: the rounds, not the bookkeeping, decide. A
//! first, untimed search warms every worker's clone of the repository.
//!
//! `cargo run --release -p buildmesh-tests --example bisect_bench`

use std::time::{Duration, Instant};

use buildmesh_protocol::record::{Bisect, Body};
use buildmesh_tests::{GitRepo, Mesh, wait_for};

const LONG: Duration = Duration::from_secs(300);

// A mesh of `k` workers, a builder that fails once `broken` exists, the last green commit and
// `n - 1` commits after it (the one at `culprit` breaks it), the red end built: the range.
async fn setup(k: usize, n: usize, culprit: usize) -> (Mesh, Vec<String>) {
    let mesh = Mesh::start_with(k, |_, _| {}).await;
    mesh.wait_ready().await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    let config = format!(
        "version = 1\n[[builder]]\nname = \"tests\"\nrepo = \"{}\"\nbranches = [\"main\"]\nconfirm = \"none\"\n[[builder.step]]\nname = \"test\"\nrun = \"sleep 1; test ! -e broken\"\n",
        repo.url()
    );
    mesh.publish_builders(0, &config).await;
    let mut shas = vec![repo.commit("main", &[("README", "0")], "good")];
    for i in 1..n {
        let text = format!("{i}");
        let mut files = vec![("README", text.as_str())];
        if i == culprit {
            files.push(("broken", "yes"));
        }
        shas.push(repo.commit("main", &files, &format!("change {i}")));
    }
    mesh.announce(0, &repo.url(), "main", &shas[0]).await;
    mesh.wait_build(0, "tests", &shas[0], LONG, |r| r == "success")
        .await;
    mesh.announce(0, &repo.url(), "main", &shas[n - 1]).await;
    mesh.wait_build(0, "tests", &shas[n - 1], LONG, |r| r == "failure")
        .await;
    (mesh, shas)
}

// Starts a search over `shas` (recorded by a notifier-role node, as the holder does after a
// red) and returns how long it took to name the culprit, and how many probes it ran.
async fn search(mesh: &Mesh, shas: &[String], max_split: Option<u32>) -> (Duration, usize, String) {
    let red = mesh
        .wait_build(0, "tests", shas.last().unwrap(), LONG, |r| r == "failure")
        .await;
    let repo = red.repo.clone();
    let t0 = Instant::now();
    let record = mesh
        .node(0)
        .author(Body::Bisect(Bisect {
            builder: "tests".into(),
            repo,
            branch: "main".into(),
            shas: shas.to_vec(),
            red_worker: red.worker.unwrap(),
            max_split,
            request: None,
        }))
        .await
        .unwrap();
    let url = format!(
        "http://{}/api/v1/bisections/{}",
        mesh.node(0).api,
        record.hash
    );
    let found = std::sync::Mutex::new(None);
    wait_for("the culprit", LONG, || async {
        let Ok(resp) = reqwest::get(&url).await else {
            return false;
        };
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        if v["culprit"].is_null() {
            return false;
        }
        *found.lock().unwrap() = Some((
            v["probes"].as_array().map_or(0, Vec::len),
            v["culprit"]["sha"].as_str().unwrap_or_default().to_string(),
        ));
        true
    })
    .await;
    let (probes, sha) = found.into_inner().unwrap().unwrap();
    (t0.elapsed(), probes, sha)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    println!("red -> culprit named (probes), n commits, k workers:");
    println!(
        "{:>5} {:>3} {:>22} {:>22}",
        "n", "k", "n-section", "one at a time"
    );
    for (n, k) in [(30, 3), (30, 10), (200, 3), (200, 10)] {
        let culprit = n * 2 / 3 + 1;
        let (mesh, shas) = setup(k, n, culprit).await;
        // Every worker's clone of the repository warm first: a cold clone is not the search's.
        search(&mesh, &shas, None).await;
        let (fast, fp, fsha) = search(&mesh, &shas, None).await;
        let (slow, sp, ssha) = search(&mesh, &shas, Some(1)).await;
        assert_eq!(fsha, shas[culprit], "n-section named the wrong commit");
        assert_eq!(ssha, shas[culprit], "binary search named the wrong commit");
        println!(
            "{n:>5} {k:>3} {:>15.2} s ({fp:>2}) {:>15.2} s ({sp:>2})",
            fast.as_secs_f64(),
            slow.as_secs_f64()
        );
        mesh.shutdown().await;
    }
}
