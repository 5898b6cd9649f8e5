//! Replication: gossip, catch-up, partitions, revocation, a wiped disk.

use std::time::Duration;

use buildmesh_protocol::docs::RevocationReason;
use buildmesh_protocol::record::{Body, ChangeSource, CommitSeen};
use buildmesh_protocol::{NodeId, Timestamp};
use buildmesh_tests::{Mesh, wait_for};

const LONG: Duration = Duration::from_secs(60);

pub fn commit(i: u64) -> Body {
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

async fn author_n(mesh: &Mesh, i: usize, n: u64, offset: u64) -> u64 {
    let mut last = 0;
    for k in 0..n {
        last = mesh
            .node(i)
            .author(commit(offset + k))
            .await
            .expect("author")
            .seq();
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_from_one_bootstrap_each_record_reaches_all() {
    let mesh = Mesh::start(5).await;
    for i in 0..5 {
        mesh.wait_caught_up(i).await;
    }
    // Every node's first record is its own admission; it must reach everyone.
    for i in 0..5 {
        mesh.wait_replicated(mesh.id(i), 1, LONG).await;
    }
    for i in [2, 4, 0] {
        let seq = author_n(&mesh, i, 3, 100 * i as u64).await;
        mesh.wait_replicated(mesh.id(i), seq, LONG).await;
    }
    // Every node lists every node as live.
    for i in 0..5 {
        wait_for("all five live", LONG, || async {
            let nodes = mesh.node(i).nodes().await.unwrap();
            nodes.len() == 5 && nodes.iter().all(|n| n.live && !n.revoked)
        })
        .await;
    }
    mesh.shutdown().await;
}

// The transport is injected: nodes listening on `/memory/` addresses run over libp2p's
// in-process transport, with the same Noise, Yamux, door, gossip and sync, and no port.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_on_the_memory_transport_replicate_without_a_port() {
    let mesh = Mesh::start_with(3, |_, c| {
        c.listen = vec!["/memory/0".parse().expect("a memory address")];
    })
    .await;
    for i in 0..3 {
        mesh.wait_caught_up(i).await;
        let addrs = mesh.node(i).listen_addrs().await.expect("listen addresses");
        assert!(
            !addrs.is_empty() && addrs.iter().all(|a| a.to_string().starts_with("/memory/")),
            "node {i} listens on {addrs:?}"
        );
    }
    for i in 0..3 {
        let seq = author_n(&mesh, i, 2, 1_000 * (i as u64 + 1)).await;
        mesh.wait_replicated(mesh.id(i), seq, LONG).await;
    }
    mesh.wait_converged(LONG).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_started_after_ten_thousand_records_catches_up() {
    let mut mesh = Mesh::start_some(3, 2).await;
    mesh.wait_caught_up(0).await;
    let last = author_n(&mesh, 0, 10_000, 0).await;
    assert!(last >= 10_000);
    mesh.start_node(2).await;
    mesh.wait_replicated(mesh.id(0), last, Duration::from_secs(120))
        .await;
    mesh.wait_converged(LONG).await;
    let m = mesh.node(2).metrics().await.unwrap();
    assert!(m.synced_records >= 10_000, "{m:?}");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_heals_and_every_node_ends_with_every_record() {
    let mesh = Mesh::start(4).await;
    for i in 0..4 {
        mesh.wait_caught_up(i).await;
        mesh.wait_replicated(mesh.id(i), 1, LONG).await;
    }
    let left = [mesh.id(0), mesh.id(1)];
    let right = [mesh.id(2), mesh.id(3)];
    for i in 0..2 {
        mesh.node(i).isolate(&right, true).await.unwrap();
    }
    for i in 2..4 {
        mesh.node(i).isolate(&left, true).await.unwrap();
    }
    let a = author_n(&mesh, 0, 20, 0).await;
    let b = author_n(&mesh, 3, 20, 1000).await;
    // Each side sees its own side's records …
    wait_for("left side replicated", LONG, || async {
        mesh.node(1).version_vector().unwrap().get(&mesh.id(0)) >= a
    })
    .await;
    wait_for("right side replicated", LONG, || async {
        mesh.node(2).version_vector().unwrap().get(&mesh.id(3)) >= b
    })
    .await;
    // … and not the other's.
    assert!(mesh.node(2).version_vector().unwrap().get(&mesh.id(0)) < a);
    assert!(mesh.node(1).version_vector().unwrap().get(&mesh.id(3)) < b);
    for i in 0..2 {
        mesh.node(i).isolate(&right, false).await.unwrap();
    }
    for i in 2..4 {
        mesh.node(i).isolate(&left, false).await.unwrap();
    }
    mesh.wait_replicated(mesh.id(0), a, LONG).await;
    mesh.wait_replicated(mesh.id(3), b, LONG).await;
    mesh.wait_converged(LONG).await;
    mesh.shutdown().await;
}

async fn visible_records(mesh: &Mesh, i: usize, author: NodeId) -> usize {
    let url = format!("http://{}/api/v1/records?author={author}", mesh.node(i).api);
    let v: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    v.as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_node_is_cut_off_and_its_later_records_refused() {
    let mesh = Mesh::start(4).await;
    for i in 0..4 {
        mesh.wait_caught_up(i).await;
    }
    let victim = mesh.id(3);
    let before = author_n(&mesh, 3, 3, 0).await;
    mesh.wait_replicated(victim, before, LONG).await;

    // Cut the victim off, revoke it, and let it go on writing, unaware.
    let others = [mesh.id(0), mesh.id(1), mesh.id(2)];
    mesh.node(3).isolate(&others, true).await.unwrap();
    for i in 0..3 {
        mesh.node(i).isolate(&[victim], true).await.unwrap();
    }
    let effective = Timestamp::now();
    mesh.node(0)
        .publish_doc(mesh.revocation(victim, RevocationReason::Retired, effective))
        .await
        .unwrap();
    for i in 0..3 {
        wait_for("the revocation everywhere", LONG, || async {
            mesh.node(i)
                .nodes()
                .await
                .unwrap()
                .iter()
                .any(|n| n.id == victim && n.revoked && !n.live)
        })
        .await;
    }
    tokio::task::yield_now().await;
    let later = author_n(&mesh, 3, 2, 100).await;
    assert_eq!(later, before + 2);

    // Heal the cable: the mesh still refuses the victim, and a relay of its later records by
    // an admitted peer is refused too.
    mesh.node(3).isolate(&others, false).await.unwrap();
    for i in 0..3 {
        mesh.node(i).isolate(&[victim], false).await.unwrap();
    }
    let key = buildmesh_protocol::SecretKey::from_seed([42; 32]);
    let adm = buildmesh_tests::admit(
        &mesh,
        &key,
        "relay",
        &[buildmesh_protocol::docs::Role::Worker],
        &mesh.maintainer(),
    );
    let mut relay =
        buildmesh_tests::peer::Peer::start(&key, mesh.genesis().mesh, Some(adm.clone())).await;
    let target = mesh.id(0).to_peer_id();
    relay
        .connect(
            mesh.addrs()
                .await
                .into_iter()
                .find(|a| a.to_string().contains(&target.to_string()))
                .unwrap(),
            target,
        )
        .await;
    assert!(matches!(
        relay.hello(target, mesh.genesis().mesh, adm).await,
        buildmesh_protocol::wire::Response::Hello(_)
    ));
    for seq in before + 1..=later {
        let r = mesh.node(3).store.record(&victim, seq).unwrap().unwrap();
        let g = buildmesh_protocol::wire::Gossip::Record(serde_bytes_buf(r.bytes));
        // Published to the topic; the node's validation must refuse it.
        relay.client.publish(g.to_bytes()).await.unwrap();
    }
    wait_for("the relayed records refused as revoked", LONG, || async {
        mesh.node(0)
            .metrics()
            .await
            .unwrap()
            .refused
            .get("revoked")
            .copied()
            .unwrap_or(0)
            >= 1
    })
    .await;
    for i in 0..3 {
        assert_eq!(mesh.node(i).version_vector().unwrap().get(&victim), before);
        let view = mesh.node(i).nodes().await.unwrap();
        let v = view.iter().find(|n| n.id == victim).unwrap();
        assert!(v.revoked && !v.connected, "{v:?}");
        // Retired: its earlier records stand.
        assert_eq!(visible_records(&mesh, i, victim).await as u64, before);
    }
    // Compromised: everything it signed is hidden.
    mesh.node(1)
        .publish_doc(mesh.revocation(victim, RevocationReason::Compromised, effective))
        .await
        .unwrap();
    for i in 0..3 {
        wait_for("its records hidden", LONG, || async {
            visible_records(&mesh, i, victim).await == 0
        })
        .await;
    }
    relay.stop();
    mesh.shutdown().await;
}

fn serde_bytes_buf(v: Vec<u8>) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_disk_was_wiped_rejoins_without_a_fork() {
    let mut mesh = Mesh::start(3).await;
    for i in 0..3 {
        mesh.wait_caught_up(i).await;
    }
    let before = author_n(&mesh, 2, 5, 0).await;
    mesh.wait_replicated(mesh.id(2), before, LONG).await;
    mesh.stop_node(2).await;
    std::fs::remove_dir_all(mesh.data_dir(2)).unwrap();
    mesh.start_node(2).await;
    // It authors nothing until it has its log back …
    mesh.wait_caught_up(2).await;
    assert_eq!(
        mesh.node(2).version_vector().unwrap().get(&mesh.id(2)),
        before
    );
    // … then continues it.
    let next = mesh.node(2).author(commit(999)).await.unwrap();
    assert_eq!(next.seq(), before + 1);
    mesh.wait_replicated(mesh.id(2), before + 1, LONG).await;
    for i in 0..3 {
        let view = mesh.node(i).nodes().await.unwrap();
        assert!(
            view.iter().all(|n| !n.flagged),
            "no fork anywhere: {view:?}"
        );
        assert!(mesh.node(i).store.flagged().unwrap().is_empty());
    }
    mesh.shutdown().await;
}
