//! Rebuild, cancel and culprit searches on a mesh of real nodes: signed requests through the
//! API and the CLI, carried inside the records they cause, checked on every node. One file for
//! the requests a caller signs about builds, sharing their fixtures (the builders, the pushed
//! regression, signed posts, the mail sink); hence its length.

use std::path::Path;
use std::time::{Duration, Instant};

use buildmesh_node::BuildView;
use buildmesh_node::smtp_sink;
use buildmesh_protocol::SecretKey;
use buildmesh_protocol::record::Purpose;
use buildmesh_protocol::wire::{ApiAction, SignedRequest};
use buildmesh_tests::{GitRepo, Mesh, wait_for};

const LONG: Duration = Duration::from_secs(90);

/// A builder whose step fails once `$MARKERS/red` exists, a builder whose step records its pid
/// and sleeps (on `main` only), and a builder no worker can run.
fn builders(repo: &str, markers: &Path) -> String {
    let m = markers.display();
    format!(
        r#"
version = 1

[[builder]]
name = "marker"
repo = "{repo}"
branches = ["*"]
env = {{ MARKERS = "{m}" }}
[[builder.step]]
name = "test"
run = "test ! -e $MARKERS/red"

[[builder]]
name = "slow"
repo = "{repo}"
branches = ["main"]
env = {{ MARKERS = "{m}" }}
[[builder.step]]
name = "sleep"
run = "echo $$ > $MARKERS/pid-$BUILDMESH_JOB; exec sleep 300"
timeout = "10m"

[[builder]]
name = "plan9"
repo = "{repo}"
branches = ["*"]
requires = {{ os = "plan9" }}
[[builder.step]]
name = "never"
run = "true"
"#
    )
}

fn signed(key: &SecretKey, action: ApiAction) -> Vec<u8> {
    SignedRequest::sign(key, action, buildmesh_protocol::Timestamp::now()).to_bytes()
}

async fn post(api: std::net::SocketAddr, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{api}{path}"))
        .body(body)
        .send()
        .await
        .expect("the API answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

// Node `i`'s view of the build whose id starts with `id`'s job part.
async fn build(mesh: &Mesh, i: usize, id: &str) -> Option<BuildView> {
    let job = id.split_once('-').map_or(id, |(j, _)| j);
    mesh.node(i)
        .builds()
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|b| b.id.starts_with(job))
}

async fn wait_everywhere(mesh: &Mesh, id: &str, what: &str, state: &str) {
    wait_for(what, LONG, || async {
        for i in 0..mesh.nodes.len() {
            if build(mesh, i, id).await.is_none_or(|b| b.result != state) {
                return false;
            }
        }
        true
    })
    .await;
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(buildmesh_tests::binary())
        .args(args)
        .output()
        .expect("buildmesh runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_is_a_new_build_that_becomes_the_current_result() {
    let mesh = Mesh::start(3).await;
    mesh.wait_ready().await;
    let markers = mesh.dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    mesh.publish_builders(0, &builders(&repo.url(), &markers))
        .await;
    // On `dev`, where nothing sleeps.
    repo.commit("main", &[("README", "base")], "base");
    let sha = repo.commit("dev", &[("README", "x")], "first");
    mesh.announce(0, &repo.url(), "dev", &sha).await;
    let first = mesh
        .wait_build(1, "marker", &sha, LONG, |r| r == "success")
        .await;

    // The same commit now fails on this builder (the host changed, say): a rebuild shows it.
    std::fs::write(markers.join("red"), "").unwrap();
    let api = mesh.node(1).api;
    let ask = |key: &SecretKey, builder: Option<&str>| {
        signed(
            key,
            ApiAction::Rebuild {
                sha: sha[..10].to_string(),
                branch: None,
                builder: builder.map(Into::into),
            },
        )
    };
    // A worker's key may not ask; an unknown builder or commit is refused with a reason.
    let (code, body) = post(api, "/api/v1/rebuild", ask(&mesh.key(1), Some("marker"))).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = post(
        api,
        "/api/v1/rebuild",
        ask(&mesh.maintainer(), Some("nope")),
    )
    .await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nope"), "{body}");

    // Through the CLI, with the maintainer's key file.
    let key_file = mesh.testnet.maintainer_key.display().to_string();
    let out = cli(&[
        "rebuild",
        "--node",
        &api.to_string(),
        "--key",
        &key_file,
        "--builder",
        "marker",
        "--sha",
        &sha[..10],
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout
        .lines()
        .find(|l| l.contains("marker") && !l.starts_with("rebuilding"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the new build's id")
        .to_string();
    assert_ne!(id, first.id, "a new build, not the old one again");
    wait_everywhere(&mesh, &id, "the rebuild red on every node", "failure").await;
    for i in 0..3 {
        let b = build(&mesh, i, &id).await.unwrap();
        assert!(matches!(b.purpose, Purpose::Rebuild { by, .. } if by == mesh.maintainer().id()));
        assert_eq!(b.sha, sha);
        // The first build stands as it was; the builder's current result is the rebuild's.
        assert_eq!(build(&mesh, i, &first.id).await.unwrap().result, "success");
        let row = status_row(&mesh, i, "marker").await;
        assert_eq!(row["build"], id.as_str(), "node {i}");
        assert_eq!(row["result"], "failure");
    }

    // `--all`: every builder of the commit, each a new build.
    std::fs::remove_file(markers.join("red")).unwrap();
    let (code, body) = post(api, "/api/v1/rebuild", ask(&mesh.maintainer(), None)).await;
    assert_eq!(code, 200, "{body}");
    let mut names: Vec<&str> = body["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["builder"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["marker", "plan9"]);
    let again = body["builds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["builder"] == "marker")
        .unwrap()["build"]
        .as_str()
        .unwrap()
        .to_string();
    wait_everywhere(&mesh, &again, "the second rebuild green", "success").await;
    assert_eq!(
        status_row(&mesh, 2, "marker").await["build"],
        again.as_str()
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_stops_a_running_build_for_good_and_a_pending_one_before_it_starts() {
    let mut mesh = Mesh::start(3).await;
    mesh.wait_ready().await;
    mesh.wait_workers_known().await;
    let markers = mesh.dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    mesh.publish_builders(0, &builders(&repo.url(), &markers))
        .await;
    // Announced on the request of the first node's key (an announcer's): it started the builds.
    let sha = repo.commit("main", &[("README", "x")], "first");
    let api = mesh.node(0).api;
    let starter = mesh.key(0);
    let (code, body) = post(
        api,
        "/api/v1/submit",
        signed(
            &starter,
            ApiAction::Submit {
                repo: repo.url(),
                branch: "main".into(),
                sha: sha.clone(),
            },
        ),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let running = mesh.wait_settled_runner("slow", &sha, LONG).await;
    let job = running.job.to_string();
    let pid_file = markers.join(format!("pid-{job}"));
    // The shell creates the file before it writes the pid into it.
    let read_pid = || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
    };
    wait_for("the step's pid", LONG, || async { read_pid().is_some() }).await;
    let pid = read_pid().unwrap();
    let alive = |pid: i32| Path::new(&format!("/proc/{pid}")).exists();
    assert!(alive(pid));

    let stop = |key: &SecretKey, build: &str| {
        signed(
            key,
            ApiAction::Cancel {
                build: build.to_string(),
            },
        )
    };
    // Another worker's key neither started it nor maintains the mesh.
    let (code, body) = post(api, "/api/v1/cancel", stop(&mesh.key(2), &running.id)).await;
    assert_eq!(code, 403, "{body}");
    // The key whose submit started it may, through any node.
    let asked = Instant::now();
    let (code, body) = post(
        mesh.node(2).api,
        "/api/v1/cancel",
        stop(&starter, &running.id),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["was"], "running");
    wait_everywhere(
        &mesh,
        &running.id,
        "the build cancelled everywhere",
        "cancelled",
    )
    .await;
    wait_for("the step's process gone", LONG, || async { !alive(pid) }).await;
    println!(
        "cancel → step killed and cancelled on every node: {:?}",
        asked.elapsed()
    );
    // Cancelled is final: not retried elsewhere, and a second cancel is refused.
    let (code, body) = post(api, "/api/v1/cancel", stop(&mesh.maintainer(), &running.id)).await;
    assert_eq!(code, 409, "{body}");

    // A pending build (no worker runs plan9) is cancelled before anyone claims it.
    let pending = build_of(&mesh, "plan9", &sha).await;
    assert_eq!(pending.result, "pending");
    let (code, body) = post(api, "/api/v1/cancel", stop(&mesh.maintainer(), &pending.id)).await;
    assert_eq!(code, 200, "{body}");
    wait_everywhere(
        &mesh,
        &pending.id,
        "the pending build cancelled",
        "cancelled",
    )
    .await;

    // A cancel whose worker is then killed: the build stays cancelled on the others.
    let sha2 = repo.commit("main", &[("README", "y")], "second");
    mesh.announce(0, &repo.url(), "main", &sha2).await;
    let second = mesh.wait_settled_runner("slow", &sha2, LONG).await;
    let worker = second.worker.unwrap();
    let victim = (0..3).find(|i| mesh.id(*i) == worker).unwrap();
    let via = (victim + 1) % 3;
    let (code, body) = post(
        mesh.node(via).api,
        "/api/v1/cancel",
        stop(&mesh.maintainer(), &second.id),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    mesh.stop_node(victim).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    wait_for(
        "the killed worker's build cancelled on the others",
        LONG,
        || async {
            for &i in &others {
                if build(&mesh, i, &second.id)
                    .await
                    .is_none_or(|b| b.result != "cancelled")
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
    // Later work gets done, and neither cancelled build was claimed again meanwhile.
    let sha3 = repo.commit("main", &[("README", "z")], "third");
    mesh.announce(via, &repo.url(), "main", &sha3).await;
    mesh.wait_build(via, "marker", &sha3, LONG, |r| r == "success")
        .await;
    for &i in &others {
        for id in [&running.id, &second.id] {
            let b = build(&mesh, i, id).await.unwrap();
            assert_eq!(b.result, "cancelled", "node {i}");
            assert_eq!(b.attempts.len(), 1, "node {i}: {:?}", b.attempts);
        }
    }
    mesh.shutdown().await;
}

async fn build_of(mesh: &Mesh, builder: &str, sha: &str) -> BuildView {
    let found = std::sync::Mutex::new(None);
    wait_for("the build listed", LONG, || async {
        let b = mesh
            .node(0)
            .builds()
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|b| b.builder == builder && b.sha == sha && b.purpose.is_build());
        let listed = b.is_some();
        *found.lock().unwrap() = b;
        listed
    })
    .await;
    found.into_inner().unwrap().expect("found above")
}

// Node `i`'s status row of `builder`, as `GET /api/v1/status` answers it.
async fn status_row(mesh: &Mesh, i: usize, builder: &str) -> serde_json::Value {
    let rows: Vec<serde_json::Value> =
        reqwest::get(format!("http://{}/api/v1/status", mesh.node(i).api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    rows.into_iter()
        .find(|r| r["builder"] == builder)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bisect_names_the_commit_that_broke_a_builder_among_thirty_it_skipped() {
    let mesh = Mesh::start(3).await;
    mesh.wait_ready().await;
    mesh.wait_workers_known().await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    let config = format!(
        "version = 1\n[[builder]]\nname = \"tests\"\nrepo = \"{}\"\nbranches = [\"main\"]\n[[builder.step]]\nname = \"test\"\nrun = \"test ! -e broken\"\n",
        repo.url()
    );
    mesh.publish_builders(0, &config).await;
    // The last green commit, 30 more in one push (never announced), the regression among them.
    let (good, culprit, bad) = pushed_regression(&repo);
    mesh.announce(0, &repo.url(), "main", &good).await;
    mesh.wait_build(0, "tests", &good, LONG, |r| r == "success")
        .await;
    mesh.announce(0, &repo.url(), "main", &bad).await;
    mesh.wait_build(0, "tests", &bad, LONG, |r| r == "failure")
        .await;

    // A worker's key may not start a search.
    let api = mesh.node(1).api;
    let ask = |key: &SecretKey| {
        signed(
            key,
            ApiAction::Bisect {
                builder: "tests".into(),
                branch: None,
                good: good[..12].to_string(),
                bad: bad[..12].to_string(),
            },
        )
    };
    let (code, body) = post(api, "/api/v1/bisect", ask(&mesh.key(1))).await;
    assert_eq!(code, 403, "{body}");

    let asked = Instant::now();
    let key_file = mesh.testnet.maintainer_key.display().to_string();
    let (api_s, good_s, bad_s) = (
        api.to_string(),
        good[..10].to_string(),
        bad[..10].to_string(),
    );
    let out = tokio::task::spawn_blocking(move || {
        cli(&[
            "bisect",
            "--node",
            &api_s,
            "--key",
            &key_file,
            "--builder",
            "tests",
            "--good",
            &good_s,
            "--bad",
            &bad_s,
        ])
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}red → culprit named: {:?}", asked.elapsed());
    assert!(
        stdout.contains(&format!("first bad commit: {culprit}")),
        "{stdout}"
    );
    assert!(stdout.contains("subject: change 19"), "{stdout}");
    // Every node replays the same search to the same culprit; no worker built a commit twice.
    for i in 0..3 {
        let list: Vec<serde_json::Value> =
            reqwest::get(format!("http://{}/api/v1/bisections", mesh.node(i).api))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        assert_eq!(list.len(), 1, "node {i}");
        let url = format!(
            "http://{}/api/v1/bisections/{}",
            mesh.node(i).api,
            list[0]["id"].as_str().unwrap()
        );
        let named = std::sync::Mutex::new(serde_json::Value::Null);
        wait_for("every node naming the culprit", LONG, || async {
            let Ok(resp) = reqwest::get(&url).await else {
                return false;
            };
            let v: serde_json::Value = resp.json().await.unwrap_or_default();
            let done = !v["culprit"].is_null();
            *named.lock().unwrap() = v;
            done
        })
        .await;
        let s = named.into_inner().unwrap();
        assert_eq!(s["culprit"]["sha"], culprit.as_str(), "node {i}");
        assert_eq!(s["commits"], 31);
        let mut pairs: Vec<(String, String)> = s["probes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["sha"].to_string(), p["worker"].to_string()))
            .collect();
        let n = pairs.len();
        pairs.sort();
        pairs.dedup();
        assert_eq!(pairs.len(), n, "a probe ran twice on one worker");
    }
    mesh.shutdown().await;
}

// A stable builder that fails once `broken` exists, on a mesh that mails `list@localhost`
// through a real SMTP server and waits `culprit_wait` for a red's culprit; the last green
// commit, 30 commits in one push (the 19th breaks it), the red announced: the list's mails.
async fn red_after_a_push(wait: Duration) -> (Mesh, smtp_sink::Mailbox, String, String) {
    let (addr, mailbox) = smtp_sink::bind(([127, 0, 0, 1], 0).into()).unwrap();
    let mesh = Mesh::start_with(3, |_, c| {
        c.notifier.smtp = Some(("127.0.0.1".into(), addr.port()));
        c.notifier.to = vec!["list@localhost".into()];
        c.notifier.culprit_wait = Some(wait);
    })
    .await;
    mesh.wait_ready().await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    let config = format!(
        "version = 1\n[[builder]]\nname = \"tests\"\nrepo = \"{}\"\nbranches = [\"main\"]\ntags = [\"stable\"]\n[[builder.step]]\nname = \"test\"\nrun = \"test ! -e broken\"\n",
        repo.url()
    );
    mesh.publish_builders(0, &config).await;
    let (good, culprit, bad) = pushed_regression(&repo);
    mesh.announce(0, &repo.url(), "main", &good).await;
    mesh.wait_build(0, "tests", &good, LONG, |r| r == "success")
        .await;
    mesh.announce(0, &repo.url(), "main", &bad).await;
    (mesh, mailbox, culprit, bad)
}

// A commit on `main`, then 30 more as one push would bring them, the 19th adding `broken`:
// (the good commit, the culprit, the last one).
fn pushed_regression(repo: &GitRepo) -> (String, String, String) {
    let good = repo.commit("main", &[("README", "0")], "good");
    let mut shas = Vec::new();
    for i in 1..=30 {
        let text = format!("{i}");
        let mut files = vec![("README", text.as_str())];
        if i == 19 {
            files.push(("broken", "yes"));
        }
        shas.push(repo.commit("main", &files, &format!("change {i}")));
    }
    (good, shas[18].clone(), shas[29].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_red_after_skipped_commits_is_mailed_once_naming_the_first_bad_commit() {
    let (mesh, mailbox, culprit, bad) = red_after_a_push(Duration::from_secs(60)).await;
    let red = Instant::now();
    wait_for("the red's mail", LONG, || async { !mailbox.is_empty() }).await;
    println!(
        "red announced → mail naming the culprit: {:?}",
        red.elapsed()
    );
    let mails = mailbox.all();
    assert_eq!(
        mails.len(),
        1,
        "{:?}",
        mails.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    let m = &mails[0];
    assert!(m.subject.contains(&bad[..12]), "{}", m.subject);
    assert!(
        m.subject
            .ends_with(&format!("first bad commit {}", &culprit[..12])),
        "{}",
        m.subject
    );
    assert!(
        m.body.contains(&format!("First bad commit: {culprit}")),
        "{}",
        m.body
    );
    assert!(m.body.contains("Subject: change 19"), "{}", m.body);
    assert!(m.body.contains("Author:  buildmesh-test"), "{}", m.body);
    assert!(m.body.contains("Found among the 31 commits"), "{}", m.body);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_red_whose_culprit_comes_late_gets_the_range_then_a_follow_up_in_its_thread() {
    let (mesh, mailbox, culprit, bad) = red_after_a_push(Duration::ZERO).await;
    wait_for("the red's mail and its follow-up", LONG, || async {
        mailbox.len() >= 2
    })
    .await;
    let mails = mailbox.all();
    let first = mails
        .iter()
        .find(|m| !m.subject.starts_with("Re:"))
        .unwrap();
    assert!(first.subject.contains(&bad[..12]), "{}", first.subject);
    assert!(first.body.contains("31 commits from"), "{}", first.body);
    assert!(
        first.body.contains("follow-up in this thread"),
        "{}",
        first.body
    );
    let follow = mails.iter().find(|m| m.subject.starts_with("Re:")).unwrap();
    assert!(
        follow
            .subject
            .ends_with(&format!("first bad commit {}", &culprit[..12])),
        "{}",
        follow.subject
    );
    assert!(
        follow
            .raw
            .contains(&format!("In-Reply-To: {}", first.message_id)),
        "{}",
        follow.raw
    );
    assert!(
        follow.body.contains("Subject: change 19"),
        "{}",
        follow.body
    );
    assert_eq!(mails.len(), 2);
    mesh.shutdown().await;
}
