//! Trust at use: admitted keys that author what they are not entitled to, records of any
//! fields, and inputs the gate must bound (far-future times, replayed signals, fork floods,
//! unknown kinds). Hosts refused at the door are in `misbehaviour`.

use std::time::Duration;

use buildmesh_protocol::docs::Role;
use buildmesh_protocol::record::Record;
use buildmesh_protocol::wire::{Gossip, Response};
use buildmesh_protocol::{Hash, SecretKey, Timestamp};
use buildmesh_tests::peer::Peer;
use buildmesh_tests::{Mesh, admit, wait_for};

use crate::misbehaviour::{node_addr, refused};

const LONG: Duration = Duration::from_secs(60);

// One admitted worker key authors what it is not entitled to, through its own node (a real
// node, its records signed and chained like any other): results it did not win, claims past
// the limit, an announcement without the role, a notice that would silence a red, an
// oversized record. The honest nodes' status, builds and mail stay as without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rogue_admitted_worker_changes_nothing_anyone_sees() {
    use buildmesh_node::smtp_sink;
    use buildmesh_protocol::record::{
        Body, BuildResult, ChangeSource, Claim, CommitSeen, JobKey, NotificationSent, ResultCode,
    };
    use buildmesh_protocol::transitions::{Kind, Transition};
    use buildmesh_tests::{GitRepo, is_verdict};

    let (smtp, mailbox) = smtp_sink::bind(([127, 0, 0, 1], 0).into()).unwrap();
    // Node 4 (index 3) is the rogue: a worker only, that builds nothing honestly.
    let mesh = Mesh::start_with(4, |i, c| {
        c.notifier.smtp = Some(("127.0.0.1".into(), smtp.port()));
        c.notifier.to = vec!["list@localhost".into()];
        if i == 3 {
            c.worker.max_builds = Some(0);
        }
    })
    .await;
    const ROGUE: usize = 3;
    let honest = [0usize, 1, 2];
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    let ci =
        "case \"$(cat state)\" in green) echo ok ;; red) echo 'FAIL: test_x'; exit 1 ;; esac\n";
    mesh.publish_builders(
        0,
        &format!(
            "version = 1\n[[builder]]\nname = \"linux\"\nrepo = \"{}\"\nbranches = [\"main\"]\ntags = [\"stable\"]\n[[builder.step]]\nname = \"test\"\nrun = \"sh ci.sh\"\n",
            repo.url()
        ),
    )
    .await;
    let job = |sha: &str| JobKey {
        builder: "linux".into(),
        repo: repo.url(),
        branch: "main".into(),
        sha: sha.into(),
        purpose: Default::default(),
    };
    let rogue = mesh.node(ROGUE);

    // A green commit, built honestly; then the rogue reports it red at the last attempt there is.
    let green = repo.commit("main", &[("ci.sh", ci), ("state", "green")], "green");
    mesh.announce(0, &repo.url(), "main", &green).await;
    mesh.wait_build(1, "linux", &green, LONG, is_verdict).await;
    let k = job(&green);
    let now = Timestamp::now();
    rogue
        .author(Body::BuildResult(BuildResult {
            job: k.id(),
            key: k.clone(),
            attempt: u32::MAX,
            result: ResultCode::Failure,
            steps: vec![],
            started: now,
            finished: Timestamp(u64::MAX),
            config_version: 1,
        }))
        .await
        .unwrap();

    // A red commit: before it is built, the rogue says its mail went out.
    let red = repo.commit("main", &[("ci.sh", ci), ("state", "red")], "red");
    let t = Transition {
        builder: "linux".into(),
        branch: "main".into(),
        sha: red.clone(),
        kind: Kind::Broken,
        previous: Some(ResultCode::Success),
        result: ResultCode::Failure,
    };
    rogue
        .author(Body::NotificationSent(NotificationSent {
            transition: t.key(),
            builder: "linux".into(),
            branch: "main".into(),
            sha: red.clone(),
            message_id: t.message_id(),
            to: vec!["list@localhost".into()],
            term: u64::MAX,
        }))
        .await
        .unwrap();
    // And it claims the red commit's job at the last attempt and past it, to have it given up.
    let kr = job(&red);
    for attempt in [4, 5] {
        rogue
            .author(Body::Claim(Claim {
                job: kr.id(),
                key: kr.clone(),
                attempt,
                lease_ms: 1,
            }))
            .await
            .unwrap();
    }
    mesh.announce(0, &repo.url(), "main", &red).await;

    // It announces a commit of its own, without the announcer role.
    let own = repo.commit("main", &[("ci.sh", ci), ("state", "green")], "rogue's own");
    rogue
        .author(Body::CommitSeen(CommitSeen {
            repo: repo.url(),
            branch: "main".into(),
            sha: own.clone(),
            source: ChangeSource::Poller,
            requested_by: None,
            subject: None,
            request: None,
        }))
        .await
        .unwrap();
    // An oversized record is never authored, so its later records are not stalled behind it.
    let huge = rogue
        .author(Body::CommitSeen(CommitSeen {
            repo: repo.url(),
            branch: "main".into(),
            sha: own.clone(),
            source: ChangeSource::Webhook,
            requested_by: None,
            subject: Some("x".repeat(1024 * 1024)),
            request: None,
        }))
        .await;
    assert!(huge.is_err(), "a record over the limit was authored");
    let last = rogue
        .author(Body::Claim(Claim {
            job: kr.id(),
            key: kr.clone(),
            attempt: 9,
            lease_ms: 1,
        }))
        .await
        .unwrap();

    // The honest result stands; the red is mailed once; the rogue's commit makes no job.
    let b = mesh.wait_build(1, "linux", &red, LONG, is_verdict).await;
    assert_eq!((b.result.as_str(), b.attempt), ("failure", 1), "{b:?}");
    wait_for("the red mailed", LONG, || async { !mailbox.is_empty() }).await;
    mesh.wait_replicated(mesh.id(ROGUE), last.seq(), LONG).await;
    for i in honest {
        let node = mesh.node(i);
        let builds = node.builds().await.unwrap();
        let of = |sha: &str| builds.iter().find(|b| b.sha == sha).cloned();
        let g = of(&green).expect("the green build");
        assert_eq!((g.result.as_str(), g.attempt), ("success", 1), "{g:?}");
        assert!(of(&own).is_none(), "the rogue's announcement made a job");
        assert_eq!(of(&red).unwrap().result, "failure");
        let status: serde_json::Value = reqwest::get(format!("http://{}/api/v1/status", node.api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(status[0]["sha"], red.as_str(), "{status}");
        wait_for("the rogue listed as misbehaving", LONG, || async {
            let nodes = node.nodes().await.unwrap();
            let r = nodes.iter().find(|n| n.id == mesh.id(ROGUE)).unwrap();
            r.misbehaving >= 4
        })
        .await;
        let m = node.metrics().await.unwrap();
        for reason in [
            "unclaimed-result",
            "unentitled-notice",
            "unentitled-attempt",
            "unentitled-commit",
        ] {
            assert!(
                m.refused.get(reason).copied().unwrap_or(0) >= 1,
                "{reason}: {:?}",
                m.refused
            );
        }
        // The honest nodes do not count one another.
        let nodes = node.nodes().await.unwrap();
        assert!(
            nodes
                .iter()
                .filter(|n| n.id != mesh.id(ROGUE))
                .all(|n| n.misbehaving == 0),
            "{nodes:?}"
        );
    }
    // Exactly one mail, for the red: the honest notice of it is on every node, the rogue's is
    // not listed.
    for i in honest {
        let api = mesh.node(i).api;
        wait_for("one notice of a mail on every node", LONG, || async {
            let v: serde_json::Value = reqwest::get(format!("http://{api}/api/v1/notifications"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v.as_array().is_some_and(|a| {
                a.len() == 1 && a[0]["author"] != mesh.id(ROGUE).to_string().as_str()
            })
        })
        .await;
    }
    let mails = mailbox.all();
    assert_eq!(
        mails.len(),
        1,
        "{:?}",
        mails.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    assert!(
        mails[0].subject.contains("linux on main is red"),
        "{}",
        mails[0].subject
    );
    mesh.shutdown().await;
}

// Whatever the fields of a record with a valid signature — times past the year 9999, attempts at
// the top of the range, long or odd strings — no view of the API and no command of the CLI
// panics or fails to render it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_signed_record_whatever_its_fields_makes_a_view_or_the_cli_fail() {
    use buildmesh_protocol::record::{
        Body, BuildResult, ChangeSource, Claim, CommitSeen, JobKey, NotificationSent, ResultCode,
        StepResult,
    };
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut mesh = Mesh::start_some(1, 0).await;
    mesh.config_mut(0).worker.max_builds = Some(0);
    mesh.start_node(0).await;
    mesh.publish_builders(
        0,
        "version = 1\n[[builder]]\nname = \"b\"\nrepo = \"r\"\nbranches = [\"*\"]\ntags = [\"stable\"]\n[[builder.step]]\nname = \"s\"\nrun = \"true\"\n",
    )
    .await;
    let node = mesh.node(0);
    let code = prop_oneof![
        Just(ResultCode::Success),
        Just(ResultCode::Warnings),
        Just(ResultCode::Failure),
        Just(ResultCode::Flaky),
        Just(ResultCode::Exception),
        Just(ResultCode::Cancelled),
    ];
    let time = prop_oneof![any::<u64>().prop_map(Timestamp), Just(Timestamp(u64::MAX))];
    let text = "\\PC{0,64}";
    let sha = prop_oneof![Just("a".repeat(40)), Just("b".repeat(40)), "[0-9a-f]{1,64}"];
    let branch = prop_oneof![Just("main".to_string()), text.prop_map(|s| s)];
    let attempt = prop_oneof![1u32..4, any::<u32>()];
    let step = (
        text,
        code.clone(),
        any::<Option<i32>>(),
        any::<u64>(),
        any::<u32>(),
        prop::collection::vec(text, 0..3),
    )
        .prop_map(
            |(name, result, exit_code, duration_ms, warnings, failing_lines)| StepResult {
                name,
                result,
                exit_code,
                duration_ms,
                warnings,
                log: None,
                failing_lines,
            },
        );
    let key = (branch, sha).prop_map(|(branch, sha)| JobKey {
        builder: "b".into(),
        repo: "r".into(),
        branch,
        sha,
        purpose: Default::default(),
    });
    let body = prop_oneof![
        (key.clone(), prop::option::of(text)).prop_map(|(k, subject)| Body::CommitSeen(
            CommitSeen {
                repo: k.repo,
                branch: k.branch,
                sha: k.sha,
                source: ChangeSource::Poller,
                requested_by: None,
                subject,
                request: None,
            }
        )),
        (key.clone(), attempt.clone(), any::<u64>()).prop_map(
            |(k, attempt, lease_ms)| Body::Claim(Claim {
                job: k.id(),
                key: k,
                attempt,
                lease_ms,
            })
        ),
        (
            key.clone(),
            attempt,
            code,
            prop::collection::vec(step, 0..4),
            time.clone(),
            time,
            any::<u64>()
        )
            .prop_map(
                |(k, attempt, result, steps, started, finished, config_version)| {
                    Body::BuildResult(BuildResult {
                        job: k.id(),
                        key: k,
                        attempt,
                        result,
                        steps,
                        started,
                        finished,
                        config_version,
                    })
                }
            ),
        (key, text, any::<u64>()).prop_map(|(k, m, term)| Body::NotificationSent(
            NotificationSent {
                transition: k.id(),
                builder: k.builder,
                branch: k.branch,
                sha: k.sha,
                message_id: m,
                to: vec![],
                term,
            }
        )),
    ];
    let mut runner = TestRunner::deterministic();
    let mut authored = 0;
    for _ in 0..300 {
        let b = body.new_tree(&mut runner).unwrap().current();
        // A record its peers would refuse is not authored; anything else is.
        if node.author(b).await.is_ok() {
            authored += 1;
        }
    }
    assert!(authored > 250, "{authored} of 300 records authored");
    let api = node.api;
    for path in [
        "/api/v1/status",
        "/api/v1/builds",
        "/api/v1/builds?builder=b&limit=1000",
        "/api/v1/nodes",
        "/api/v1/notifications",
        "/api/v1/notifier",
        "/api/v1/health",
        &format!("/api/v1/records?author={}", node.id),
    ] {
        let r = reqwest::get(format!("http://{api}{path}")).await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        let v: serde_json::Value = r.json().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(!v.is_null(), "{path}");
    }
    let metrics = reqwest::get(format!("http://{api}/metrics")).await.unwrap();
    assert!(metrics.status().is_success());
    for args in [&["status"][..], &["builds"], &["nodes"], &["notifier"]] {
        let out = std::process::Command::new(buildmesh_tests::binary())
            .args(args)
            .args(["--node", &api.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "buildmesh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    mesh.shutdown().await;
}

// Admitted raw peers send what the gate must bound: a record and a signal dated in the year
// 10000, a signal replayed by another peer, and a flood of forks of one record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn far_future_records_replayed_signals_fork_floods_and_unknown_kinds_are_bounded() {
    use buildmesh_protocol::wire::{Heartbeat, Progress, Signal, SignedSignal};
    let mesh = Mesh::start(2).await;
    let mesh_id = mesh.genesis().mesh;
    let node = mesh.id(0).to_peer_id();
    let mut peers = Vec::new();
    let mut keys = Vec::new();
    for seed in [21u8, 22] {
        let key = SecretKey::from_seed([seed; 32]);
        let adm = admit(
            &mesh,
            &key,
            &format!("raw-{seed}"),
            &[Role::Worker],
            &mesh.maintainer(),
        );
        let mut peer = Peer::start(&key, mesh_id, Some(adm.clone())).await;
        peer.connect(node_addr(&mesh, 0).await, node).await;
        assert!(matches!(
            peer.hello(node, mesh_id, adm).await,
            Response::Hello(_)
        ));
        peers.push(peer);
        keys.push(key);
    }
    wait_for("both raw peers admitted", LONG, || async {
        mesh.node(0).metrics().await.unwrap().peers_admitted >= 3
    })
    .await;
    let publish = |i: usize, bytes: Vec<u8>| {
        let c = peers[i].client.clone();
        async move {
            let _ = c.publish(bytes).await;
        }
    };
    // Gossipsub grafts its mesh on a heartbeat: publish until the node has heard something.
    let year_10000 = Timestamp(253_402_300_800_000 + 1000);
    let future =
        Record::author(&keys[0], 1, Hash::ZERO, year_10000, &crate::mesh::commit(1)).unwrap();
    wait_for(
        "the far-future record refused as not yet due",
        LONG,
        || async {
            publish(
                0,
                Gossip::Record(serde_bytes::ByteBuf::from(future.bytes.clone())).to_bytes(),
            )
            .await;
            refused(&mesh, 0, "future").await >= 1
        },
    )
    .await;
    assert_eq!(mesh.node(0).version_vector().unwrap().get(&keys[0].id()), 0);
    let hb = SignedSignal::sign(
        &keys[0],
        &Signal::Heartbeat(Heartbeat {
            node: keys[0].id(),
            time: year_10000,
            running: 0,
            capacity: 1,
            head: 0,
            addrs: vec![],
            paused: None,
            lost: Vec::new(),
            every_ms: None,
        }),
    );
    publish(0, Gossip::Signal(hb).to_bytes()).await;
    wait_for("the far-future heartbeat refused", LONG, || async {
        refused(&mesh, 0, "stale-signal").await >= 1
    })
    .await;
    // Peer 0's progress signal, published again by peer 1: it counts once.
    let progress = SignedSignal::sign(
        &keys[0],
        &Signal::Progress(Progress {
            node: keys[0].id(),
            time: Timestamp::now(),
            job: Hash::of(b"some job"),
            attempt: 1,
            step: "test".into(),
        }),
    );
    publish(0, Gossip::Signal(progress.clone()).to_bytes()).await;
    wait_for("the replayed progress refused", LONG, || async {
        publish(1, Gossip::Signal(progress.clone()).to_bytes()).await;
        refused(&mesh, 0, "replayed-signal").await >= 1
    })
    .await;
    // Forty records for peer 0's seq 1: one is its log, the rest are forks, of which a
    // bounded number is kept as evidence.
    for i in 0..40u64 {
        let r = Record::author(
            &keys[0],
            1,
            Hash::ZERO,
            Timestamp::now(),
            &crate::mesh::commit(100 + i),
        )
        .unwrap();
        publish(
            0,
            Gossip::Record(serde_bytes::ByteBuf::from(r.bytes)).to_bytes(),
        )
        .await;
    }
    wait_for("peer 0 flagged for its forks", LONG, || async {
        mesh.node(0)
            .nodes()
            .await
            .unwrap()
            .iter()
            .any(|n| n.id == keys[0].id() && n.flagged)
    })
    .await;
    wait_for("the forks counted", LONG, || async {
        refused(&mesh, 0, "fork").await >= 30
    })
    .await;
    let kept = mesh.node(0).store.forks_of(&keys[0].id()).unwrap().len();
    assert!(
        (1..=buildmesh_store::logs::MAX_FORK_EVIDENCE).contains(&kept),
        "{kept} forks kept"
    );
    // A record of a kind this node does not know (a newer node's): stored, in its author's
    // chain, and forwarded, but not counted.
    let kind = buildmesh_protocol::record::RecordKind::from_name("confirm-request").unwrap();
    let envelope = buildmesh_protocol::record::Envelope {
        author: keys[1].id(),
        seq: 1,
        prev: Hash::ZERO,
        kind,
        time: Timestamp::now(),
        body: b"a body only newer nodes read".to_vec(),
    };
    let env_bytes = buildmesh_protocol::codec::encode("envelope", &envelope).unwrap();
    let signed = buildmesh_protocol::record::SignedRecord {
        sig: keys[1].sign_tagged(&kind.tag(), &env_bytes),
        envelope: env_bytes,
    };
    let bytes = buildmesh_protocol::codec::encode("record", &signed).unwrap();
    wait_for("the unknown kind stored", LONG, || async {
        publish(
            1,
            Gossip::Record(serde_bytes::ByteBuf::from(bytes.clone())).to_bytes(),
        )
        .await;
        mesh.node(0).version_vector().unwrap().get(&keys[1].id()) == 1
    })
    .await;
    assert!(refused(&mesh, 0, "unknown-kind").await >= 1);
    // The author's next record chains on it and is taken: nothing stalls behind it.
    let next = Record::author(
        &keys[1],
        2,
        Hash::of(&signed.envelope),
        Timestamp::now(),
        &crate::mesh::commit(2),
    )
    .unwrap();
    wait_for("the record after it stored", LONG, || async {
        publish(
            1,
            Gossip::Record(serde_bytes::ByteBuf::from(next.bytes.clone())).to_bytes(),
        )
        .await;
        mesh.node(0).version_vector().unwrap().get(&keys[1].id()) == 2
    })
    .await;
    // The node keeps serving.
    let seq = mesh
        .node(0)
        .author(crate::mesh::commit(7))
        .await
        .unwrap()
        .seq();
    mesh.wait_replicated(mesh.id(0), seq, LONG).await;
    for p in peers {
        p.stop();
    }
    mesh.shutdown().await;
}
