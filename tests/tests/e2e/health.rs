//! Bad hardware, end to end with real `buildmesh` processes, a real git repository and a real
//! SMTP server: a worker that fails while the code is fine costs its own coverage, never a mail
//! to the list, and cannot hide a real regression.

use std::time::Duration;

use buildmesh_node::smtp_sink;
use buildmesh_protocol::SecretKey;
use buildmesh_protocol::docs::{Genesis, SignedDoc};
use buildmesh_protocol::wire::{ApiAction, SignedRequest};
use buildmesh_tests::procs::{Proc, json, run};
use buildmesh_tests::{GitRepo, free_port_base, wait_for};

const LONG: Duration = Duration::from_secs(120);

// The step fails on node-2 whatever the commit (its "bad memory"), and everywhere once the
// commit says red: decided by the worker and the commit, so the test itself is not random.
const CI: &str = "if [ \"$BUILDMESH_WORKER_NAME\" = node-2 ] || [ \"$(cat state)\" = red ]; then\n  echo 'FAIL: test_memory'; exit 1\nfi\necho ok\n";

// One builder mails the list; two more confirm their reds without mailing, so that the bad
// worker meets enough builds to show what it is.
fn builders(repo: &str) -> String {
    let mut t = String::from("version = 1\n");
    for (name, extra) in [
        ("stable", "tags = [\"stable\"]\n"),
        ("extra-a", "confirm = \"other-host\"\n"),
        ("extra-b", "confirm = \"other-host\"\n"),
    ] {
        t.push_str(&format!(
            "[[builder]]\nname = \"{name}\"\nrepo = \"{repo}\"\nbranches = [\"main\"]\n{extra}\
             [[builder.step]]\nname = \"test\"\nrun = \"sh ci.sh\"\n"
        ));
    }
    t
}

// The ordinary builds of `sha` on the node at `api`, once all three are settled (no confirmation
// still open): builder → result.
async fn settled(api: &str, sha: &str) -> Option<Vec<(String, String)>> {
    let v = json(format!("http://{api}/api/v1/builds?commit={sha}")).await?;
    let ordinary: Vec<(String, String)> = v
        .as_array()?
        .iter()
        .filter(|b| b.get("purpose").is_none())
        .map(|b| {
            (
                b["builder"].as_str().unwrap_or("").to_string(),
                b["result"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let done = ordinary.len() == 3
        && ordinary.iter().all(|(_, r)| {
            matches!(
                r.as_str(),
                "success" | "warnings" | "failure" | "flaky" | "host-fault"
            )
        });
    done.then_some(ordinary)
}

fn quarantined(nodes: &serde_json::Value, name: &str) -> bool {
    nodes.as_array().is_some_and(|a| {
        a.iter()
            .any(|n| n["name"] == name && n["health"]["state"] == "quarantined")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_worker_is_quarantined_its_owner_told_and_the_list_hears_only_the_regression() {
    buildmesh_tests::logs();
    let (smtp, mailbox) = smtp_sink::bind(([127, 0, 0, 1], 0).into()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_base(4);
    let t = buildmesh_node::testnet::generate(&dir.path().join("mesh"), 4, base).unwrap();
    for n in &t.nodes {
        let mut c = std::fs::read_to_string(&n.config)
            .unwrap()
            .replace("[worker]\n", "[worker]\nconfirm_wait = \"2s\"\n");
        c.push_str(&format!(
            "[notifier]\nsmtp = \"127.0.0.1:{}\"\nto = [\"list@localhost\"]\n",
            smtp.port()
        ));
        std::fs::write(&n.config, c).unwrap();
    }
    let _procs: Vec<Proc> = t.nodes.iter().map(|n| run(&n.config)).collect();
    let apis: Vec<String> = t.nodes.iter().map(|n| n.api.clone()).collect();
    for api in &apis {
        wait_for("four live nodes", LONG, || async {
            json(format!("http://{api}/api/v1/nodes"))
                .await
                .and_then(|v| {
                    v.as_array()
                        .map(|a| a.len() == 4 && a.iter().all(|n| n["live"] == true))
                })
                .unwrap_or(false)
        })
        .await;
    }
    let maintainer =
        SecretKey::from_file_text(&std::fs::read_to_string(&t.maintainer_key).unwrap()).unwrap();
    let genesis =
        Genesis::verify(&SignedDoc::from_bytes(&std::fs::read(&t.genesis).unwrap()).unwrap())
            .unwrap();
    let repo = GitRepo::new(dir.path().join("repo"));
    let config = buildmesh_protocol::builders::BuilderConfig::from_toml(
        genesis.mesh,
        &builders(&repo.url()),
    )
    .unwrap();
    let mut doc = SignedDoc::new(&config).unwrap();
    doc.sign(&maintainer);
    let client = reqwest::Client::new();
    buildmesh_tests::post_accepted(
        &format!("http://{}/api/v1/publish", apis[0]),
        doc.to_bytes(),
    )
    .await;
    for api in &apis {
        wait_for("the configuration everywhere", LONG, || async {
            json(format!("http://{api}/api/v1/health"))
                .await
                .is_some_and(|h| h["config_version"] == 1)
        })
        .await;
    }
    let submit = |sha: String| {
        let req = SignedRequest::sign(
            &maintainer,
            ApiAction::Submit {
                repo: repo.url(),
                branch: "main".into(),
                sha,
            },
            buildmesh_protocol::Timestamp::now(),
        );
        let client = client.clone();
        let api = apis[0].clone();
        async move {
            let r = client
                .post(format!("http://{api}/api/v1/submit"))
                .body(req.to_bytes())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
    };

    // Good commits, one at a time, until every node holds node-2 quarantined.
    let mut faults = 0;
    let mut good = 0;
    loop {
        good += 1;
        assert!(
            good <= 20,
            "node-2 not quarantined after {good} good commits"
        );
        let sha = repo.commit(
            "main",
            &[("ci.sh", CI), ("state", &format!("green {good}"))],
            "fine",
        );
        submit(sha.clone()).await;
        let found = std::sync::Mutex::new(Vec::new());
        wait_for("the commit's builds settled", LONG, || async {
            match settled(&apis[0], &sha).await {
                Some(b) => {
                    *found.lock().unwrap() = b;
                    true
                }
                None => false,
            }
        })
        .await;
        let found = found.into_inner().unwrap();
        // The code is fine: no build of it is red, whoever ran it.
        assert!(
            found.iter().all(|(_, r)| r != "failure"),
            "a red on good code reached the views: {found:?}"
        );
        faults += found.iter().filter(|(_, r)| r == "host-fault").count();
        let nodes = json(format!("http://{}/api/v1/nodes", apis[0]))
            .await
            .unwrap_or_default();
        if quarantined(&nodes, "node-2") {
            break;
        }
    }
    assert!(faults >= 3, "quarantined after {faults} host faults");
    for api in &apis {
        wait_for("node-2 quarantined on every node", LONG, || async {
            json(format!("http://{api}/api/v1/nodes"))
                .await
                .is_some_and(|n| quarantined(&n, "node-2"))
        })
        .await;
    }
    let nodes = json(format!("http://{}/api/v1/nodes", apis[3]))
        .await
        .unwrap();
    let bad = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-2")
        .unwrap();
    let reason = bad["health"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("not reproduced"), "{reason}");
    // The web console says so too: the workers page and the dashboard's workers needing
    // attention.
    for page in ["workers", ""] {
        let html = reqwest::get(format!("http://{}/{page}", apis[3]))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let row = html
            .split("<tr")
            .find(|r| r.contains("<td>node-2</td>"))
            .unwrap_or_else(|| panic!("no row for node-2 on /{page}: {html}"));
        assert!(row.contains("quarantined"), "/{page}: {row}");
    }
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["name"] != "node-2")
            .all(|n| n["health"]["state"] != "quarantined"),
        "{nodes:#}"
    );
    assert!(
        mailbox
            .all()
            .iter()
            .all(|m| m.to != vec!["list@localhost".to_string()])
    );

    // A real regression: red on every worker. The others build it, confirm it, and the list
    // gets one mail; node-2 runs no ordinary build of it.
    let sha = repo.commit("main", &[("ci.sh", CI), ("state", "red")], "break it");
    submit(sha.clone()).await;
    wait_for("the regression's builds settled", LONG, || async {
        settled(&apis[0], &sha)
            .await
            .is_some_and(|b| b.iter().all(|(_, r)| r == "failure"))
    })
    .await;
    let builds = json(format!("http://{}/api/v1/builds?commit={sha}", apis[0]))
        .await
        .unwrap();
    let node2 = t.nodes[1].id.to_string();
    for b in builds.as_array().unwrap() {
        if b.get("purpose").is_none() {
            assert_ne!(b["worker"].as_str(), Some(node2.as_str()), "{b:#}");
            assert_eq!(b["confirmation"]["result"], "failure", "{b:#}");
        }
    }
    wait_for("the list's mail and the owner's", LONG, || async {
        mailbox.len() >= 2
    })
    .await;
    // Let any further mail (there must be none) arrive before counting.
    wait_for("the mail records everywhere", LONG, || async {
        let mut ok = true;
        for api in &apis {
            let n = json(format!("http://{api}/api/v1/notifications"))
                .await
                .and_then(|v| v.as_array().map(|a| a.len()))
                .unwrap_or(0);
            ok &= n == 2;
        }
        ok
    })
    .await;
    // Nothing more is queued anywhere: a duplicate would have to be waiting on some notifier.
    wait_for("no mail waiting on any notifier", LONG, || async {
        let mut idle = true;
        for api in &apis {
            idle &= json(format!("http://{api}/api/v1/notifier"))
                .await
                .is_some_and(|v| v["waiting"] == 0);
        }
        idle
    })
    .await;
    let mails = mailbox.all();
    let subjects: Vec<&String> = mails.iter().map(|m| &m.subject).collect();
    let list: Vec<_> = mails
        .iter()
        .filter(|m| m.to == vec!["list@localhost".to_string()])
        .collect();
    assert_eq!(list.len(), 1, "{subjects:#?}");
    assert!(
        list[0].subject.contains("stable on main is red"),
        "{subjects:#?}"
    );
    assert!(list[0].subject.contains("reproduced on"), "{subjects:#?}");
    assert!(
        list[0]
            .body
            .contains("Confirmed: reproduced on another host"),
        "{}",
        list[0].body
    );
    let owner: Vec<_> = mails
        .iter()
        .filter(|m| m.to == vec!["node-2-owner@localhost".to_string()])
        .collect();
    assert_eq!(owner.len(), 1, "{subjects:#?}");
    assert!(owner[0].subject.contains("worker node-2 is quarantined"));
    assert!(
        owner[0].body.contains("not reproduced"),
        "{}",
        owner[0].body
    );
    assert_eq!(mails.len(), 2, "{subjects:#?}");
    // /metrics counts it.
    let metrics = reqwest::get(format!("http://{}/metrics", apis[0]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("buildmesh_workers_quarantined 1"),
        "{metrics}"
    );

    // A maintainer who knows the host is sound releases it with a signed document: every node
    // shows it healthy again.
    let episode = bad["health"]["quarantines"].as_u64().unwrap() as u32;
    let release = buildmesh_protocol::docs::Release {
        mesh: genesis.mesh,
        subject: t.nodes[1].id,
        episode,
        issued: buildmesh_protocol::Timestamp::now(),
    };
    let mut doc = SignedDoc::new(&release).unwrap();
    doc.sign(&maintainer);
    let r = client
        .post(format!("http://{}/api/v1/publish", apis[2]))
        .body(doc.to_bytes())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    for api in &apis {
        wait_for("node-2 released on every node", LONG, || async {
            json(format!("http://{api}/api/v1/nodes"))
                .await
                .is_some_and(|n| !quarantined(&n, "node-2"))
        })
        .await;
    }
}

// A worker whose check command fails claims nothing and says why in its heartbeat, which every
// node shows; once the check passes it claims again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_failing_its_self_check_stops_claiming_says_why_and_resumes() {
    let mut mesh = buildmesh_tests::Mesh::start_some(2, 0).await;
    let flag = mesh.dir.path().join("healthy");
    for i in 0..2 {
        let c = mesh.config_mut(i);
        // Node 1 (index 0) announces; node 2 is the only worker of the builder and must pass
        // its check to build.
        c.worker.check_command = (i == 1).then(|| format!("test -e {}", flag.display()));
    }
    for i in 0..2 {
        mesh.start_node(i).await;
    }
    let me = mesh.id(1);
    wait_for("node 2 paused, as node 1 sees it", LONG, || async {
        mesh.node(0)
            .nodes()
            .await
            .unwrap_or_default()
            .iter()
            .any(|n| {
                n.id == me
                    && n.paused
                        .as_deref()
                        .is_some_and(|p| p.contains("check command"))
            })
    })
    .await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    // Only node 2 (aarch64) may run it.
    mesh.publish_builders(
        0,
        &format!(
            "version = 1\n[[builder]]\nname = \"arm\"\nrepo = \"{}\"\nbranches = [\"main\"]\nrequires = {{ arch = \"aarch64\" }}\n[[builder.step]]\nname = \"s\"\nrun = \"true\"\n",
            repo.url()
        ),
    )
    .await;
    let sha = repo.commit("main", &[("f", "1")], "one");
    mesh.announce(0, &repo.url(), "main", &sha).await;
    // Node 2 knows the job (it would claim it at its next tick, the only worker that may), and
    // a heartbeat it sent after that, still paused and running nothing, reaches node 1.
    mesh.wait_build(1, "arm", &sha, LONG, |_| true).await;
    let known_at = buildmesh_protocol::Timestamp::now();
    wait_for(
        "a heartbeat of node 2 sent after it knew the job",
        LONG,
        || async {
            mesh.node(0)
                .nodes()
                .await
                .unwrap_or_default()
                .iter()
                .any(|n| {
                    n.id == me
                        && n.last_heard
                            .is_some_and(|t| t > known_at.plus(Duration::from_millis(200)))
                        && n.paused.is_some()
                        && n.running == 0
                })
        },
    )
    .await;
    let b = mesh.wait_build(0, "arm", &sha, LONG, |_| true).await;
    assert_eq!(b.result, "pending", "a paused worker claims nothing: {b:?}");
    std::fs::write(&flag, "").unwrap();
    let b = mesh
        .wait_build(0, "arm", &sha, LONG, |r| r == "success")
        .await;
    assert_eq!(b.worker, Some(me));
    wait_for("the pause gone from node 1's view", LONG, || async {
        mesh.node(0)
            .nodes()
            .await
            .unwrap_or_default()
            .iter()
            .any(|n| n.id == me && n.paused.is_none() && n.live)
    })
    .await;
    mesh.shutdown().await;
}

// A tripped breaker: sled does not fsync every write, so a power cut can take the last records
// off a worker's disk while its peers hold them. Simulated by putting back an older copy of the
// store: the worker learns its own newer records from its peers before it authors anything, so
// it never signs a second record for a sequence number it used, and nobody flags it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_back_from_a_power_cut_with_an_older_store_rejoins_without_a_fork() {
    let mut mesh = buildmesh_tests::Mesh::start(3).await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    // Only node 2 (aarch64) builds: its log grows with every commit.
    mesh.publish_builders(
        0,
        &format!(
            "version = 1\n[[builder]]\nname = \"arm\"\nrepo = \"{}\"\nbranches = [\"main\"]\nrequires = {{ arch = \"aarch64\" }}\n[[builder.step]]\nname = \"s\"\nrun = \"true\"\n",
            repo.url()
        ),
    )
    .await;
    let me = mesh.id(1);
    let build = async |mesh: &buildmesh_tests::Mesh, n: &str| {
        let sha = repo.commit("main", &[("f", n)], n);
        mesh.announce(0, &repo.url(), "main", &sha).await;
        let b = mesh
            .wait_build(0, "arm", &sha, LONG, |r| r == "success")
            .await;
        assert_eq!(b.worker, Some(me));
    };
    build(&mesh, "1").await;
    // The copy a power cut leaves behind: the store as it was then.
    mesh.stop_node(1).await;
    let data = mesh.data_dir(1);
    let old = mesh.dir.path().join("old-store");
    let cp = |from: &std::path::Path, to: &std::path::Path| {
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    cp(&data, &old);
    mesh.start_node(1).await;
    let before = mesh.node(1).version_vector().unwrap().get(&me);
    build(&mesh, "2").await;
    build(&mesh, "3").await;
    let head = mesh.node(1).version_vector().unwrap().get(&me);
    assert!(
        head > before + 2,
        "it authored claims and results: {before} -> {head}"
    );
    mesh.wait_replicated(me, head, LONG).await;
    // The breaker trips: the newest records are gone from its disk, not from its peers'.
    mesh.stop_node(1).await;
    std::fs::remove_dir_all(&data).unwrap();
    cp(&old, &data);
    mesh.start_node(1).await;
    wait_for(
        "its own newer records back from its peers",
        LONG,
        || async {
            mesh.node(1)
                .version_vector()
                .is_ok_and(|v| v.get(&me) >= head)
        },
    )
    .await;
    // Its next records chain on: it builds again, every node takes them, none flags it.
    build(&mesh, "4").await;
    let after = mesh.node(1).version_vector().unwrap().get(&me);
    assert!(after > head);
    mesh.wait_replicated(me, after, LONG).await;
    for i in 0..3 {
        let nodes = mesh.node(i).nodes().await.unwrap();
        let n = nodes.iter().find(|n| n.id == me).unwrap();
        assert!(!n.flagged, "node {i} flags it as an equivocator: {n:?}");
    }
    mesh.shutdown().await;
}
