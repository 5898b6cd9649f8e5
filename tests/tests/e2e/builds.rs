//! Builds without a master: real workers build a real git repository. One file for what a
//! build goes through on a mesh — claims, results, retries, crossed claims, logs, their
//! retention, revocation — sharing one `ci.sh` fixture and its builders, hence its length;
//! notifier, health and isolation have files of their own.

use std::collections::BTreeMap;
use std::time::Duration;

use buildmesh_protocol::claims::score;
use buildmesh_protocol::record::JobKey;
use buildmesh_tests::bench::metric;
use buildmesh_tests::{GitRepo, Mesh, is_verdict, wait_for};

const LONG: Duration = Duration::from_secs(90);

/// `ci.sh` behaves as the commit's `mode` file says.
const CI: &str = r#"#!/bin/sh
mode=$(cat mode)
echo "building $BUILDMESH_SHA on $BUILDMESH_WORKER_NAME ($BUILDMESH_BUILDER, $BUILDMESH_BRANCH)"
case "$mode" in
  success) echo "all tests passed" ;;
  warn) echo "warning: deprecated call"; echo "Re-running failed tests in verbose mode" ;;
  fail) echo "FAIL: test_frobnicate (test.test_frob)"; exit 3 ;;
  flaky)
    marker="$MARKERS/$BUILDMESH_JOB"
    if [ ! -e "$marker" ]; then touch "$marker"; echo "FAIL: test_network_timeout"; exit 1; fi
    echo "passed on retry" ;;
  timeout) sleep 60 ;;
esac
"#;

fn builders(repo: &str, markers: &str) -> String {
    format!(
        r#"
version = 1

[[builder]]
name = "linux"
repo = "{repo}"
branches = ["*"]
tags = ["stable"]
requires = {{ os = "linux" }}
env = {{ MARKERS = "{markers}" }}
[[builder.step]]
name = "test"
run = "sh ci.sh"
timeout = "3s"
warn = ["Re-running failed tests"]
retries = 1

[[builder]]
name = "freebsd"
repo = "{repo}"
branches = ["*"]
requires = {{ os = "freebsd" }}
[[builder.step]]
name = "uname"
run = "echo built on $BUILDMESH_WORKER_NAME"

[[builder]]
name = "plan9"
repo = "{repo}"
branches = ["main"]
requires = {{ os = "plan9" }}
[[builder.step]]
name = "never"
run = "true"
"#
    )
}

/// A configuration with one builder of one step, for every branch.
fn one_step_builder(repo: &str, name: &str, run: &str) -> String {
    format!(
        "version = 1\n[[builder]]\nname = \"{name}\"\nrepo = \"{repo}\"\nbranches = [\"*\"]\n[[builder.step]]\nname = \"s\"\nrun = \"{run}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_give_each_commit_the_right_result_and_every_node_agrees() {
    // No poller: the commits built are the ones announced here (a restart below would
    // otherwise have the announcer find `main` and build it).
    let mesh = Mesh::start_with(3, |_, c| c.announcer.poll_interval = None).await;
    mesh.wait_ready().await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    let markers = mesh.dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    mesh.publish_builders(0, &builders(&repo.url(), &markers.display().to_string()))
        .await;

    let modes = [
        ("success", "success"),
        ("warn", "warnings"),
        ("fail", "failure"),
        ("flaky", "flaky"),
        ("timeout", "failure"),
    ];
    let mut shas = BTreeMap::new();
    for (mode, _) in modes {
        let sha = repo.commit(
            &format!("mode-{mode}"),
            &[("ci.sh", CI), ("mode", mode)],
            mode,
        );
        mesh.announce(0, &repo.url(), &format!("mode-{mode}"), &sha)
            .await;
        shas.insert(mode, sha);
    }
    for (mode, want) in modes {
        let b = mesh
            .wait_build(1, "linux", &shas[mode], LONG, is_verdict)
            .await;
        assert_eq!(b.result, want, "mode {mode}: {b:?}");
        let step = &b.steps[0];
        match mode {
            "fail" => assert_eq!(step.exit_code, Some(3)),
            "warn" => assert_eq!(step.warnings, 1),
            "flaky" => assert!(
                step.failing_lines
                    .iter()
                    .any(|l| l.contains("FAIL: test_network_timeout")),
                "{step:?}"
            ),
            "timeout" => assert_eq!(step.exit_code, None),
            _ => assert_eq!(step.exit_code, Some(0)),
        }
        // Labels: the linux builder never runs on the freebsd worker (node 3).
        assert_ne!(b.worker, Some(mesh.id(2)), "{b:?}");
        // The freebsd builder runs only there.
        let f = mesh
            .wait_build(1, "freebsd", &shas[mode], LONG, is_verdict)
            .await;
        assert_eq!((f.result.as_str(), f.worker), ("success", Some(mesh.id(2))));
    }
    // Every node shows the same status.
    let view = |i: usize| {
        let mesh = &mesh;
        async move {
            let builds = mesh.node(i).builds().await.unwrap();
            builds
                .into_iter()
                .filter(|b| b.builder != "plan9")
                .map(|b| (b.builder, b.sha, b.result, b.worker, b.attempt))
                .collect::<Vec<_>>()
        }
    };
    wait_for("every node agreeing", LONG, || async {
        let (a, b, c) = (view(0).await, view(1).await, view(2).await);
        a == b && b == c && a.iter().all(|x| x.2.is_verdict())
    })
    .await;
    // The log of the red build names the failing test, from any node.
    let red = mesh
        .wait_build(2, "linux", &shas["fail"], LONG, is_verdict)
        .await;
    let log = reqwest::get(format!(
        "http://{}/api/v1/builds/{}/log",
        mesh.node(2).api,
        red.id
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(log.contains("FAIL: test_frobnicate"), "{log}");

    // The views kept build by build are the views the records give from scratch: after a
    // restart (views left in order: the claimer goes on from its checkpoint, learning none of
    // the records again), and after a restart with every view forgotten (every record is
    // learnt again).
    let mut mesh = mesh;
    let settled = |b: &buildmesh_node::BuildView| b.builder == "plan9" || b.result.is_settled();
    wait_for("every build settled on node 1", LONG, || async {
        mesh.node(0).builds().await.unwrap().iter().all(settled)
    })
    .await;
    let before = mesh.node(0).builds().await.unwrap();
    let status_before = mesh.node(0).views().status().unwrap();
    assert!(before.len() >= 10, "{before:?}");
    for forget in [false, true] {
        mesh.stop_node(0).await;
        if forget {
            // sled lets go of its lock a moment after the node stopped.
            let deadline = std::time::Instant::now() + LONG;
            let store = loop {
                match buildmesh_store::Store::open(mesh.data_dir(0)) {
                    Ok(s) => break s,
                    Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            store.views_clear().unwrap();
            assert_eq!(store.view_count(), 0);
        }
        mesh.start_node(0).await;
        // The status rows follow the views they come from.
        wait_for("node 1 viewing every build again", LONG, || async {
            mesh.node(0).builds().await.unwrap().len() == before.len()
                && mesh.node(0).views().status().unwrap().len() == status_before.len()
        })
        .await;
        assert_eq!(
            mesh.node(0).builds().await.unwrap(),
            before,
            "forgotten: {forget}"
        );
        assert_eq!(
            mesh.node(0).views().status().unwrap(),
            status_before,
            "forgotten: {forget}"
        );
        let api = mesh.node(0).api.to_string();
        let api = api.as_str();
        let held = metric(api, "buildmesh_records").await.unwrap();
        let learnt = metric(api, "buildmesh_claimer_start_records")
            .await
            .unwrap();
        if forget {
            assert!(learnt >= held, "learnt {learnt} of {held} records");
        } else {
            // The others author nothing while it is down (every build settled, nothing mailed).
            assert!(held > 20 && learnt < 5, "learnt {learnt} of {held} records");
        }
    }
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_no_live_worker_matches_stays_pending() {
    let mesh = Mesh::start(2).await;
    mesh.wait_ready().await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    mesh.publish_builders(0, &builders(&repo.url(), "/nonexistent"))
        .await;
    let sha = repo.commit("main", &[("ci.sh", CI), ("mode", "success")], "main");
    mesh.announce(1, &repo.url(), "main", &sha).await;
    // linux builds; plan9 has no worker and stays pending; freebsd has none in this mesh either.
    mesh.wait_build(0, "linux", &sha, LONG, is_verdict).await;
    for i in 0..2 {
        let b = mesh
            .wait_build(i, "plan9", &sha, LONG, |r| r == "pending")
            .await;
        assert!(b.worker.is_none() && b.attempts.is_empty(), "{b:?}");
    }
    let status: serde_json::Value =
        reqwest::get(format!("http://{}/api/v1/status", mesh.node(0).api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let plan9 = status
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["builder"] == "plan9")
        .unwrap();
    assert_eq!(plan9["result"], "pending", "{status}");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_steady_state_no_job_runs_on_two_workers() {
    let mesh = Mesh::start(3).await;
    mesh.wait_ready().await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    let toml = one_step_builder(&repo.url(), "any", "echo ok");
    mesh.publish_builders(0, &toml).await;
    let mut shas = Vec::new();
    for k in 0..24 {
        let branch = format!("topic-{k}");
        let sha = repo.commit(&branch, &[("n", &k.to_string())], "topic");
        mesh.announce(k % 3, &repo.url(), &branch, &sha).await;
        shas.push(sha);
    }
    // Node 1's listing is read below: wait until it holds every verdict too (node 0 may have
    // a result that is still on its way to node 1).
    for node in [0, 1] {
        for sha in &shas {
            mesh.wait_build(node, "any", sha, LONG, is_verdict).await;
        }
    }
    // Every job ran to the end exactly once. Two workers deciding within the same instant on
    // different views can still cross claims: the loser stops at once (its attempt ends
    // `cancelled`), and that must stay rare.
    let builds = mesh.node(1).builds().await.unwrap();
    let mut crossed = 0;
    for b in &builds {
        assert_eq!(b.attempt, 1, "{b:?}");
        let runs: Vec<_> = b.attempts.iter().filter(|a| a.attempt == 1).collect();
        let finished = runs.iter().filter(|a| a.result == "success").count();
        assert_eq!(finished, 1, "one run to the end: {b:?}");
        for loser in runs.iter().filter(|a| !a.won) {
            assert_eq!(loser.result, "cancelled", "a crossed claim stops: {b:?}");
            crossed += 1;
        }
    }
    eprintln!("crossed claims: {crossed} over {} jobs", builds.len());
    assert!(
        crossed * 10 <= builds.len(),
        "{crossed} crossed claims over {} jobs",
        builds.len()
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exception_is_retried_on_another_worker_and_never_shown_red() {
    let mut mesh = Mesh::start_some(3, 0).await;
    // Node 1's work directory is a file: every checkout there fails, as on a broken disk.
    let broken = mesh.dir.path().join("not-a-dir");
    std::fs::write(&broken, "x").unwrap();
    mesh.config_mut(0).worker.work_dir = broken;
    for i in 0..3 {
        mesh.start_node(i).await;
    }
    mesh.wait_ready().await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    let toml = one_step_builder(&repo.url(), "any", "echo ok");
    mesh.publish_builders(0, &toml).await;
    // Pick branches whose jobs rank the broken worker first.
    let workers = [mesh.id(0), mesh.id(1), mesh.id(2)];
    let mut picked = Vec::new();
    let mut k = 0;
    while picked.len() < 2 {
        k += 1;
        let branch = format!("b{k}");
        let sha = repo.commit(&branch, &[("n", &k.to_string())], "x");
        let job = JobKey {
            builder: "any".into(),
            repo: repo.url(),
            branch: branch.clone(),
            sha: sha.clone(),
            purpose: Default::default(),
        }
        .id();
        let first = workers.iter().min_by_key(|w| score(&job, w)).unwrap();
        if *first == workers[0] {
            mesh.announce(1, &repo.url(), &branch, &sha).await;
            picked.push(sha);
        }
    }
    for sha in &picked {
        let b = mesh.wait_build(2, "any", sha, LONG, is_verdict).await;
        assert_eq!(b.result, "success", "{b:?}");
        assert_eq!(b.attempt, 2, "{b:?}");
        assert_eq!(b.attempts[0].worker, workers[0]);
        assert_eq!(b.attempts[0].result, "exception");
        assert_ne!(b.worker, Some(workers[0]));
        let status: serde_json::Value =
            reqwest::get(format!("http://{}/api/v1/status", mesh.node(1).api))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        assert!(
            status
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["result"] != "failure" && r["result"] != "exception"),
            "{status}"
        );
    }
    mesh.shutdown().await;
}

// A red log larger than one request-response frame (8 MiB) still reaches the other nodes: blobs
// move in parts of their compressed form.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_red_log_over_the_frame_limit_is_copied_to_every_node() {
    let mesh = Mesh::start(2).await;
    mesh.wait_ready().await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    // About 13 MiB of output that lz4 cannot shrink below the frame limit.
    let run = "head -c 10000000 /dev/urandom | base64 -w 100; echo FAIL: test_big; exit 1";
    mesh.publish_builders(0, &one_step_builder(&repo.url(), "big", run))
        .await;
    let sha = repo.commit("main", &[("f", "1")], "big red log");
    mesh.announce(0, &repo.url(), "main", &sha).await;
    let b = mesh.wait_build(0, "big", &sha, LONG, is_verdict).await;
    assert_eq!(b.result, "failure", "{b:?}");
    let worker = (0..2).find(|i| Some(mesh.id(*i)) == b.worker).unwrap();
    let other = 1 - worker;
    let digest = b.steps[0].log.unwrap();
    let packed = mesh
        .node(worker)
        .store
        .packed_blob(&digest)
        .unwrap()
        .unwrap();
    assert!(
        packed.len() > buildmesh_protocol::wire::MAX_FRAME_BYTES,
        "the log packs into {} bytes: the test needs more than one frame",
        packed.len()
    );
    wait_for("the big red log copied", LONG, || async {
        mesh.node(other).store.has_blob(&digest).unwrap()
    })
    .await;
    let log = mesh.node(other).store.blob(&digest).unwrap().unwrap();
    let tail = String::from_utf8_lossy(&log[log.len() - 200..]).into_owned();
    assert!(tail.contains("FAIL: test_big"), "{tail}");
    assert_eq!(
        buildmesh_protocol::Hash::of(&log),
        digest,
        "the copy is the whole log"
    );
    mesh.shutdown().await;
}

// A red build's logs are copied at once by `red_log_copies` (2) of the other nodes, not by all
// four, and stay readable from any node with the worker gone: the others fetch them from a
// node that copied them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_red_builds_log_outlives_its_worker() {
    let mut mesh = Mesh::start(5).await;
    mesh.wait_ready().await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    mesh.publish_builders(0, &builders(&repo.url(), "/nonexistent"))
        .await;
    let sha = repo.commit("red", &[("ci.sh", CI), ("mode", "fail")], "red");
    mesh.announce(0, &repo.url(), "red", &sha).await;
    let b = mesh.wait_build(0, "linux", &sha, LONG, is_verdict).await;
    assert_eq!(b.result, "failure");
    let worker = (0..5).find(|i| Some(mesh.id(*i)) == b.worker).unwrap();
    let others: Vec<usize> = (0..5).filter(|i| *i != worker).collect();
    let digest = b.steps[0].log.unwrap();
    let holders = || {
        others
            .iter()
            .copied()
            .filter(|i| mesh.node(*i).store.has_blob(&digest).unwrap())
            .collect::<Vec<_>>()
    };
    // The copies reach two other nodes on their own …
    wait_for("the red log copied twice", LONG, || async {
        holders().len() >= 2
    })
    .await;
    let copied = holders();
    assert_eq!(copied.len(), 2, "copied by {copied:?}");
    // … and the log stays readable with the worker gone, from a node that did not copy it.
    mesh.stop_node(worker).await;
    let reader = *others.iter().find(|i| !copied.contains(i)).unwrap();
    let log = reqwest::get(format!(
        "http://{}/api/v1/builds/{}/log?step=test",
        mesh.node(reader).api,
        b.id
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(log.contains("FAIL: test_frobnicate"), "{log}");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submit_needs_the_announcer_role_and_webhooks_need_the_secret() {
    let mut mesh = Mesh::start_some(2, 0).await;
    let secret_file = mesh.dir.path().join("webhook.secret");
    std::fs::write(&secret_file, "s3cret\n").unwrap();
    mesh.config_mut(0).announcer.webhook_secret_file = Some(secret_file);
    mesh.start_node(0).await;
    mesh.start_node(1).await;
    mesh.wait_ready().await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    mesh.publish_builders(0, &builders(&repo.url(), "/nonexistent"))
        .await;
    let api = mesh.node(0).api;
    let client = reqwest::Client::new();
    let submit = |key: &buildmesh_protocol::SecretKey, sha: &str| {
        buildmesh_protocol::wire::SignedRequest::sign(
            key,
            buildmesh_protocol::wire::ApiAction::Submit {
                repo: repo.url(),
                branch: "main".into(),
                sha: sha.into(),
            },
            buildmesh_protocol::Timestamp::now(),
        )
        .to_bytes()
    };
    // Node 2 is a worker without the announcer role: refused, nothing stored.
    let sha = repo.commit("main", &[("ci.sh", CI), ("mode", "success")], "x");
    let resp = client
        .post(format!("http://{api}/api/v1/submit"))
        .body(submit(&mesh.key(1), &sha))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "{}", resp.text().await.unwrap());
    assert!(
        mesh.node(0)
            .store
            .commit_seen(&repo.url(), "main", &sha)
            .unwrap()
            .is_none()
    );
    // A stranger's key: refused too.
    let resp = client
        .post(format!("http://{api}/api/v1/submit"))
        .body(submit(
            &buildmesh_protocol::SecretKey::from_seed([77; 32]),
            &sha,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // The maintainer may.
    let resp = client
        .post(format!("http://{api}/api/v1/submit"))
        .body(submit(&mesh.maintainer(), &sha))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert!(
        mesh.node(0)
            .store
            .commit_seen(&repo.url(), "main", &sha)
            .unwrap()
            .is_some()
    );

    // Webhooks: a GitHub push signed with the wrong secret is refused; the right one is taken.
    let sha2 = repo.commit("main", &[("mode", "warn")], "y");
    let payload = serde_json::json!({
        "ref": "refs/heads/main", "after": sha2, "before": sha,
        "repository": { "clone_url": repo.url(), "html_url": repo.url() },
        "head_commit": { "message": "y\n\nbody" },
    })
    .to_string();
    let sign = |secret: &[u8]| {
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(payload.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let post = |sig: String| {
        client
            .post(format!("http://{api}/api/v1/webhook"))
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", sig)
            .header("Content-Type", "application/json")
            .body(payload.clone())
            .send()
    };
    let resp = post(sign(b"wrong")).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        mesh.node(0)
            .store
            .commit_seen(&repo.url(), "main", &sha2)
            .unwrap()
            .is_none()
    );
    let resp = post(sign(b"s3cret")).await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    assert!(
        mesh.node(0)
            .store
            .commit_seen(&repo.url(), "main", &sha2)
            .unwrap()
            .is_some()
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_worker_loses_its_job_to_another_within_the_lease() {
    let mut mesh = Mesh::start_some(3, 0).await;
    for i in 0..3 {
        mesh.config_mut(i).worker.max_builds = Some(4);
        mesh.start_node(i).await;
    }
    mesh.wait_ready().await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    let toml = one_step_builder(&repo.url(), "slow", "sleep 30");
    mesh.publish_builders(0, &toml).await;
    let sha = repo.commit("slow", &[("x", "1")], "slow");
    mesh.announce(0, &repo.url(), "slow", &sha).await;
    let b = mesh.wait_settled_runner("slow", &sha, LONG).await;
    let w = (0..3).find(|i| Some(mesh.id(*i)) == b.worker).unwrap();
    let others: Vec<_> = (0..3).filter(|i| *i != w).map(|i| mesh.id(i)).collect();
    let observer = (0..3).find(|i| *i != w).unwrap();
    let cut = std::time::Instant::now();
    mesh.node(w).isolate(&others, true).await.unwrap();
    for i in (0..3).filter(|i| *i != w) {
        mesh.node(i).isolate(&[mesh.id(w)], true).await.unwrap();
    }
    let job = b.job;
    wait_for("the job running on another worker", LONG, || async {
        mesh.node(observer)
            .builds()
            .await
            .unwrap_or_default()
            .iter()
            .any(|x| {
                x.job == job
                    && x.attempt > b.attempt
                    && x.result == "running"
                    && x.worker != Some(mesh.id(w))
            })
    })
    .await;
    let took = cut.elapsed();
    assert!(took < Duration::from_secs(30), "{took:?}");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_revoked_as_compromised_loses_its_verdicts_and_the_commit_is_built_again() {
    use buildmesh_protocol::docs::RevocationReason;
    let mesh = Mesh::start(3).await;
    mesh.wait_ready().await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    mesh.publish_builders(0, &one_step_builder(&repo.url(), "b", "true"))
        .await;
    let sha = repo.commit("main", &[("x", "1")], "one");
    mesh.announce(0, &repo.url(), "main", &sha).await;
    let mut first = None;
    for i in 0..3 {
        let b = mesh.wait_build(i, "b", &sha, LONG, is_verdict).await;
        assert_eq!(b.result, "success");
        assert!(first.is_none_or(|w| Some(w) == b.worker));
        first = b.worker;
    }
    let bad = first.unwrap();
    let x = (0..3).find(|i| mesh.id(*i) == bad).unwrap();
    let honest: Vec<usize> = (0..3).filter(|i| *i != x).collect();

    mesh.node(honest[0])
        .publish_doc(mesh.revocation(
            bad,
            RevocationReason::Compromised,
            buildmesh_protocol::Timestamp::now(),
        ))
        .await
        .unwrap();
    // Its green no longer counts anywhere: an honest worker builds the commit again, and no
    // view shows anything the compromised key claimed or reported.
    for &i in &honest {
        let found = std::sync::Mutex::new(None);
        wait_for("the rebuild by an honest worker", LONG, || async {
            let builds = mesh.node(i).builds().await.unwrap_or_default();
            *found.lock().unwrap() = builds.into_iter().find(|v| {
                v.sha == sha && v.result == "success" && v.worker.is_some_and(|w| w != bad)
            });
            found.lock().unwrap().is_some()
        })
        .await;
        let b = found.into_inner().unwrap().unwrap();
        assert_ne!(b.worker, Some(bad), "{b:?}");
        assert!(b.attempt >= 2, "a fresh attempt: {b:?}");
        assert!(b.attempts.iter().all(|a| a.worker != bad), "{b:?}");
    }
    mesh.shutdown().await;
}

// Retention: a passing build's log goes once its builder's `keep_passing_logs` passed, on
// every node, and its view says so; a red build's log (`keep_logs`, 180 days by default)
// stays; the records stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_passing_builds_log_expires_on_every_node_and_a_red_ones_stays() {
    let mesh = Mesh::start_with(2, |_, c| {
        c.store.janitor_interval = Duration::from_millis(500);
    })
    .await;
    mesh.wait_ready().await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    let toml = format!(
        "version = 1\n[[builder]]\nname = \"kept\"\nrepo = \"{}\"\nbranches = [\"*\"]\nkeep_passing_logs = \"2s\"\nconfirm = \"none\"\n[[builder.step]]\nname = \"s\"\nrun = \"echo checking; test -f pass\"\n",
        repo.url()
    );
    mesh.publish_builders(0, &toml).await;
    let green = repo.commit("green", &[("pass", "")], "green");
    let red = repo.commit("red", &[("fail", "")], "red");
    mesh.announce(0, &repo.url(), "green", &green).await;
    mesh.announce(0, &repo.url(), "red", &red).await;
    let g = mesh.wait_build(0, "kept", &green, LONG, is_verdict).await;
    let r = mesh.wait_build(0, "kept", &red, LONG, is_verdict).await;
    assert_eq!(
        (g.result.as_str(), r.result.as_str()),
        ("success", "failure")
    );
    let log = |i: usize, id: String| {
        let api = mesh.node(i).api;
        async move {
            let resp = reqwest::get(format!("http://{api}/api/v1/builds/{id}/log"))
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    for i in 0..2 {
        wait_for("the passing build's log to expire", LONG, || async {
            let (status, text) = log(i, g.id.clone()).await;
            status == 410 && text.contains("expired")
        })
        .await;
        let (status, text) = log(i, r.id.clone()).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("checking"), "{text}");
    }
    // The node that built it deleted the log.
    let expired = |i: usize| {
        let api = mesh.node(i).api;
        async move {
            let m = reqwest::get(format!("http://{api}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            m.lines()
                .find_map(|l| l.strip_prefix("buildmesh_logs_expired_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        }
    };
    wait_for("the janitor to delete the log", LONG, || async {
        expired(0).await + expired(1).await > 0
    })
    .await;
    // The build itself is still there, with its steps.
    let b = mesh.wait_build(1, "kept", &green, LONG, is_verdict).await;
    assert_eq!(b.steps.len(), 1);
    mesh.shutdown().await;
}

// A worker deletes the directories of builders the configuration no longer has, and the
// clones of repositories no builder builds, when a newer configuration comes into force; what
// the configured builders use stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workspaces_and_clones_no_builder_uses_are_deleted() {
    use buildmesh_protocol::builders::safe_id;
    let mut mesh = Mesh::start(1).await;
    mesh.wait_ready().await;
    let work_dir = std::path::absolute(&mesh.config_mut(0).worker.work_dir).unwrap();
    let one = GitRepo::new(mesh.dir.path().join("one"));
    let two = GitRepo::new(mesh.dir.path().join("two"));
    let builder = |version: u32, name: &str, repo: &str| {
        format!(
            "version = {version}\n[[builder]]\nname = \"{name}\"\nrepo = \"{repo}\"\nbranches = [\"main\"]\n[[builder.step]]\nname = \"s\"\nrun = \"true\"\n"
        )
    };
    let two_builders = format!(
        "{}[[builder]]\nname = \"Old builder 3.x\"\nrepo = \"{}\"\nbranches = [\"main\"]\n[[builder.step]]\nname = \"s\"\nrun = \"true\"\n",
        builder(1, "kept", &one.url()),
        one.url()
    );
    mesh.publish_builders(0, &two_builders).await;
    let sha = one.commit("main", &[("f", "1")], "one");
    mesh.announce(0, &one.url(), "main", &sha).await;
    for b in ["kept", "Old builder 3.x"] {
        mesh.wait_build(0, b, &sha, LONG, is_verdict).await;
    }
    let dir_of = |b: &str| work_dir.join("builds").join(safe_id(b));
    let clone_of = |url: &str| {
        let hash = buildmesh_protocol::Hash::of(url.as_bytes()).to_string();
        work_dir.join("cache").join(format!("{}.git", &hash[..16]))
    };
    assert!(dir_of("Old builder 3.x").join("src").is_dir());
    assert!(dir_of("kept").join("src").is_dir());
    assert!(clone_of(&one.url()).is_dir());

    mesh.publish_builders(0, &builder(2, "kept", &one.url()))
        .await;
    wait_for("the removed builder's directory deleted", LONG, || async {
        !dir_of("Old builder 3.x").exists()
    })
    .await;
    assert!(dir_of("kept").join("src").is_dir());
    assert!(clone_of(&one.url()).is_dir());

    mesh.publish_builders(0, &builder(3, "other", &two.url()))
        .await;
    wait_for("the unused clone and workspace deleted", LONG, || async {
        !clone_of(&one.url()).exists() && !dir_of("kept").exists()
    })
    .await;
    mesh.shutdown().await;
}
