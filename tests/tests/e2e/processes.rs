//! Real `buildmesh` processes: killed with SIGKILL and restarted on the same directory.

use std::time::Duration;

use buildmesh_tests::procs::{Proc, json, run};
use buildmesh_tests::{free_port_base, wait_for};

async fn vv_of(api: &str, id: &str) -> Option<u64> {
    let v: serde_json::Value = reqwest::get(format!("http://{api}/api/v1/vv"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(v.get(id).and_then(|x| x.as_u64()).unwrap_or(0))
}

// Publishes, through the node at `api`, the maintainer's admission of a spare worker key (seed
// byte `k`); returns the seq of the record that carries it, once the node has flushed it.
async fn publish_spare_admission(t: &buildmesh_node::testnet::Testnet, api: &str, k: u8) -> u64 {
    let maintainer = buildmesh_protocol::SecretKey::from_file_text(
        &std::fs::read_to_string(&t.maintainer_key).unwrap(),
    )
    .unwrap();
    let genesis = buildmesh_protocol::docs::Genesis::verify(
        &buildmesh_protocol::docs::SignedDoc::from_bytes(&std::fs::read(&t.genesis).unwrap())
            .unwrap(),
    )
    .unwrap();
    let key = buildmesh_protocol::SecretKey::from_seed([k; 32]);
    let a = buildmesh_protocol::docs::Admission {
        mesh: genesis.mesh,
        node: key.id(),
        name: format!("spare-{k}"),
        roles: [buildmesh_protocol::docs::Role::Worker].into(),
        labels: Default::default(),
        owner: None,
        issued: buildmesh_protocol::Timestamp::now(),
        expires: None,
    };
    let mut doc = buildmesh_protocol::docs::SignedDoc::new(&a).unwrap();
    doc.sign(&maintainer);
    let v = buildmesh_tests::post_accepted(&format!("http://{api}/api/v1/publish"), doc.to_bytes())
        .await;
    v["record"]["seq"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_record_it_had_flushed() {
    buildmesh_tests::logs();
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_base(2);
    let t = buildmesh_node::testnet::generate(&dir.path().join("mesh"), 2, base).unwrap();
    let n0 = &t.nodes[0];
    let id = n0.id.to_string();
    let mut p0 = run(&n0.config);
    let _p1 = run(&t.nodes[1].config);
    wait_for(
        "node 1 to publish its admission",
        Duration::from_secs(60),
        || async { vv_of(&n0.api, &id).await.unwrap_or(0) >= 1 },
    )
    .await;
    // Acknowledged writes: each publish answers after the record is flushed.
    let mut acked = 0;
    for k in 0..20u8 {
        acked = publish_spare_admission(&t, &n0.api, 100 + k).await;
    }
    // Pull the plug.
    p0.0.kill().unwrap();
    p0.0.wait().unwrap();
    let _p0 = run(&n0.config);
    wait_for("node 1 back", Duration::from_secs(60), || async {
        vv_of(&n0.api, &id).await.is_some()
    })
    .await;
    let held = vv_of(&n0.api, &id).await.unwrap();
    assert!(
        held >= acked,
        "node 1 holds {held} of its own records after the kill, acknowledged {acked}"
    );
    // And it carries on from there without a fork.
    let nodes: serde_json::Value = reqwest::get(format!("http://{}/api/v1/nodes", n0.api))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["flagged"] == false),
        "{nodes}"
    );
}

// A killed process's connections close (unlike a frozen host's): the nodes that lose them
// say so in their heartbeats, and the job moves at once, long before the lease — here 60 s,
// so a re-claim by the lease alone would miss the 30 s this test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_mid_step_moves_the_job_before_its_lease_and_leaves_no_process() {
    buildmesh_tests::logs();
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_base(3);
    let t = buildmesh_node::testnet::generate(&dir.path().join("mesh"), 3, base).unwrap();
    for n in &t.nodes {
        let mut text = std::fs::read_to_string(&n.config).unwrap();
        assert!(
            text.trim_end().ends_with("min_free_disk = \"64MiB\""),
            "{text}"
        );
        text.push_str("lease = \"60s\"\n");
        // The test finds the step's processes by the pids they write outside their workspace:
        // a sandbox would keep them from writing there, and show them other pids.
        text.push_str("sandbox = \"none\"\n");
        std::fs::write(&n.config, text).unwrap();
    }
    let mut procs: Vec<Option<Proc>> = t.nodes.iter().map(|n| Some(run(&n.config))).collect();
    let apis: Vec<String> = t.nodes.iter().map(|n| n.api.clone()).collect();
    for api in &apis {
        wait_for("three live nodes", Duration::from_secs(60), || async {
            json(format!("http://{api}/api/v1/nodes"))
                .await
                .and_then(|v| {
                    v.as_array()
                        .map(|a| a.len() == 3 && a.iter().all(|n| n["live"] == true))
                })
                .unwrap_or(false)
        })
        .await;
    }
    let repo = buildmesh_tests::GitRepo::new(dir.path().join("repo"));
    let pids = dir.path().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let sha = repo.commit(
        "main",
        &[(
            "slow.sh",
            "sleep 30 &\necho $! > \"$PIDS/$BUILDMESH_WORKER_NAME-$BUILDMESH_ATTEMPT\"\nwait\n",
        )],
        "slow",
    );
    let toml = format!(
        "version = 1\n[[builder]]\nname = \"slow\"\nrepo = \"{}\"\nbranches = [\"main\"]\nenv = {{ PIDS = \"{}\" }}\n[[builder.step]]\nname = \"sleep\"\nrun = \"sh slow.sh\"\ntimeout = \"2m\"\n",
        repo.url(),
        pids.display()
    );
    let maintainer = buildmesh_protocol::SecretKey::from_file_text(
        &std::fs::read_to_string(&t.maintainer_key).unwrap(),
    )
    .unwrap();
    let genesis = buildmesh_protocol::docs::Genesis::verify(
        &buildmesh_protocol::docs::SignedDoc::from_bytes(&std::fs::read(&t.genesis).unwrap())
            .unwrap(),
    )
    .unwrap();
    let config =
        buildmesh_protocol::builders::BuilderConfig::from_toml(genesis.mesh, &toml).unwrap();
    let mut doc = buildmesh_protocol::docs::SignedDoc::new(&config).unwrap();
    doc.sign(&maintainer);
    buildmesh_tests::post_accepted(
        &format!("http://{}/api/v1/publish", apis[0]),
        doc.to_bytes(),
    )
    .await;
    // Let the configuration reach every node, every node recover its own log (it takes no
    // submission before), and the workers' views settle.
    for api in &apis {
        wait_for(
            "the configuration everywhere",
            Duration::from_secs(60),
            || async {
                json(format!("http://{api}/api/v1/health"))
                    .await
                    .is_some_and(|h| h["config_version"] == 1 && h["caught_up"] == true)
            },
        )
        .await;
    }
    let req = buildmesh_protocol::wire::SignedRequest::sign(
        &maintainer,
        buildmesh_protocol::wire::ApiAction::Submit {
            repo: repo.url(),
            branch: "main".into(),
            sha: sha.clone(),
        },
        buildmesh_protocol::Timestamp::now(),
    );
    buildmesh_tests::post_accepted(&format!("http://{}/api/v1/submit", apis[1]), req.to_bytes())
        .await;

    // Find who runs it once the runner is settled: all three nodes show it running by the same
    // worker with the same claims for its attempt (a crossed claim's loser would stop).
    let settled = std::sync::Mutex::new(None::<(String, u64)>);
    wait_for("the build to start", Duration::from_secs(60), || async {
        let mut views = Vec::new();
        for api in &apis {
            let builds = json(format!("http://{api}/api/v1/builds?commit={sha}"))
                .await
                .unwrap_or_default();
            let Some(b) = builds.as_array().and_then(|a| a.first()).cloned() else {
                return false;
            };
            if b["result"] != "running" {
                return false;
            }
            let attempt = b["attempt"].clone();
            let mut claims: Vec<String> = b["attempts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["attempt"] == attempt)
                .map(|a| a["worker"].to_string())
                .collect();
            claims.sort();
            views.push((
                b["worker"].as_str().map(str::to_string),
                attempt.as_u64(),
                claims,
            ));
        }
        if views.windows(2).all(|w| w[0] == w[1])
            && let Some((Some(worker), Some(attempt), _)) = views.first().cloned()
        {
            *settled.lock().unwrap() = Some((worker, attempt));
        }
        settled.lock().unwrap().is_some()
    })
    .await;
    let (worker, attempt) = settled.into_inner().unwrap().unwrap();
    let victim = t
        .nodes
        .iter()
        .position(|n| n.id.to_string() == worker)
        .unwrap();
    let pid_file = pids.join(format!("{}-{attempt}", t.nodes[victim].name));
    wait_for("the step's process", Duration::from_secs(60), || async {
        pid_file.exists()
            && std::fs::read_to_string(&pid_file)
                .map(|s| !s.trim().is_empty())
                .unwrap_or(false)
    })
    .await;
    let step_pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{step_pid}")).exists());

    // Pull the plug on the worker.
    let killed_at = std::time::Instant::now();
    if let Some(mut p) = procs[victim].take() {
        p.0.kill().unwrap();
        p.0.wait().unwrap();
    }
    let survivor = (0..3).find(|i| *i != victim).unwrap();
    wait_for(
        "another worker to re-claim, well before the 60 s lease",
        Duration::from_secs(30),
        || async {
            let builds = json(format!(
                "http://{}/api/v1/builds?commit={sha}",
                apis[survivor]
            ))
            .await
            .unwrap_or_default();
            let b = builds
                .as_array()
                .and_then(|a| a.first())
                .cloned()
                .unwrap_or_default();
            b["attempt"].as_u64() > Some(attempt)
                && (b["result"] == "running" || b["result"] == "success")
        },
    )
    .await;
    println!(
        "worker killed -> job re-claimed by another worker within {:?}",
        killed_at.elapsed()
    );
    // The dead attempt's processes are gone.
    wait_for(
        "the dead attempt's step process to be gone",
        Duration::from_secs(30),
        || async { !std::path::Path::new(&format!("/proc/{step_pid}")).exists() },
    )
    .await;
    // The attempt record shows the lost attempt.
    let builds = json(format!(
        "http://{}/api/v1/builds?commit={sha}",
        apis[survivor]
    ))
    .await
    .unwrap();
    let b = &builds.as_array().unwrap()[0];
    let attempts = b["attempts"].as_array().unwrap();
    assert!(
        attempts.iter().any(|a| a["attempt"] == attempt
            && a["worker"] == worker.as_str()
            && a["result"] == "lost"),
        "{b}"
    );
    assert_ne!(b["worker"], worker.as_str());
    drop(procs);
}

// Gossipsub's default peer scoring graylists peers that share an IP past a dozen or so: on one
// address a mesh of 17 stopped gossiping. Admitted peers on one address must all be heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_five_node_processes_on_one_address_all_hear_each_other() {
    buildmesh_tests::logs();
    const N: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_base(N);
    let t = buildmesh_node::testnet::generate(&dir.path().join("mesh"), N, base).unwrap();
    let _procs: Vec<Proc> = t.nodes.iter().map(|n| run(&n.config)).collect();
    let apis: Vec<String> = t.nodes.iter().map(|n| n.api.clone()).collect();
    // Liveness comes from heartbeats, which only travel by gossip.
    for api in &apis {
        wait_for(
            "every node to hear all 25 as live",
            Duration::from_secs(120),
            || async {
                json(format!("http://{api}/api/v1/nodes"))
                    .await
                    .and_then(|v| {
                        v.as_array()
                            .map(|a| a.len() == N && a.iter().all(|n| n["live"] == true))
                    })
                    .unwrap_or(false)
            },
        )
        .await;
    }
    // And records move by gossip too, not only by the periodic sync: one published through
    // node 1 now reaches the others by gossip.
    publish_spare_admission(&t, &apis[0], 7).await;
    for api in &apis[1..] {
        wait_for(
            "records accepted from gossip on every node",
            Duration::from_secs(60),
            || async {
                let Ok(r) = reqwest::get(format!("http://{api}/metrics")).await else {
                    return false;
                };
                let text = r.text().await.unwrap_or_default();
                text.lines()
                    .find_map(|l| l.strip_prefix("buildmesh_records_gossiped_total "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            },
        )
        .await;
    }
}
