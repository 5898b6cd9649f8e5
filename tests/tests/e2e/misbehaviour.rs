//! Hosts that must be refused at the door, and an admitted host sending garbage.

use std::time::Duration;

use buildmesh_protocol::docs::Role;
use buildmesh_protocol::record::Record;
use buildmesh_protocol::wire::{Gossip, Response};
use buildmesh_protocol::{Hash, SecretKey, Timestamp};
use buildmesh_tests::peer::Peer;
use buildmesh_tests::{Mesh, admit, wait_for};

const LONG: Duration = Duration::from_secs(60);

pub(crate) async fn refused(mesh: &Mesh, i: usize, reason: &str) -> u64 {
    mesh.node(i)
        .metrics()
        .await
        .unwrap()
        .refused
        .get(reason)
        .copied()
        .unwrap_or(0)
}

pub(crate) async fn node_addr(mesh: &Mesh, i: usize) -> libp2p::Multiaddr {
    let p = mesh.id(i).to_peer_id().to_string();
    mesh.addrs()
        .await
        .into_iter()
        .find(|a| a.to_string().contains(&p))
        .unwrap()
}

fn own_record(key: &SecretKey, seq: u64, prev: Hash) -> Record {
    Record::author(key, seq, prev, Timestamp::now(), &crate::mesh::commit(seq)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_without_admission_is_dropped_and_nothing_it_sends_is_stored() {
    let mesh = Mesh::start(2).await;
    let mesh_id = mesh.genesis().mesh;
    let node = mesh.id(0).to_peer_id();
    let rogue = SecretKey::from_seed([7; 32]);
    let mut peer = Peer::start(&rogue, mesh_id, None).await;
    peer.connect(node_addr(&mesh, 0).await, node).await;
    // It never says hello, but gossips its own record.
    let r = own_record(&rogue, 1, Hash::ZERO);
    let _ = peer
        .client
        .publish(Gossip::Record(serde_bytes::ByteBuf::from(r.bytes)).to_bytes())
        .await;
    // The node's own records, published while the stranger is at the door, do not reach it.
    for k in 0..5 {
        mesh.node(0)
            .author(crate::mesh::commit(900 + k))
            .await
            .unwrap();
    }
    peer.wait_disconnected(node, Duration::from_secs(30)).await;
    wait_for("the door refusal counted", LONG, || async {
        refused(&mesh, 0, "no-admission").await >= 1
    })
    .await;
    assert_eq!(
        peer.gossip.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a peer at the door was sent gossip"
    );
    assert_eq!(mesh.node(0).version_vector().unwrap().get(&rogue.id()), 0);
    assert_eq!(mesh.node(1).version_vector().unwrap().get(&rogue.id()), 0);
    peer.stop();
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admission_signed_by_a_non_maintainer_is_refused() {
    let mesh = Mesh::start(2).await;
    let mesh_id = mesh.genesis().mesh;
    let node = mesh.id(0).to_peer_id();
    let rogue = SecretKey::from_seed([8; 32]);
    let fake_maintainer = SecretKey::from_seed([9; 32]);
    let forged = admit(&mesh, &rogue, "rogue", &[Role::Worker], &fake_maintainer);
    let mut peer = Peer::start(&rogue, mesh_id, Some(forged.clone())).await;
    peer.connect(node_addr(&mesh, 0).await, node).await;
    match peer.hello(node, mesh_id, forged).await {
        Response::Refused(why) => assert!(why.contains("not a maintainer"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    peer.wait_disconnected(node, Duration::from_secs(30)).await;
    assert!(refused(&mesh, 0, "bad-admission").await >= 1);
    // Someone else's admission does not open the door either.
    let stolen = admit(
        &mesh,
        &SecretKey::from_seed([10; 32]),
        "other",
        &[Role::Worker],
        &mesh.maintainer(),
    );
    let thief = SecretKey::from_seed([11; 32]);
    let mut peer2 = Peer::start(&thief, mesh_id, None).await;
    peer2.connect(node_addr(&mesh, 0).await, node).await;
    assert!(matches!(
        peer2.hello(node, mesh_id, stolen).await,
        Response::Refused(_)
    ));
    peer2.wait_disconnected(node, Duration::from_secs(30)).await;
    for i in 0..2 {
        let vv = mesh.node(i).version_vector().unwrap();
        assert_eq!(vv.get(&rogue.id()) + vv.get(&thief.id()), 0);
    }
    peer.stop();
    peer2.stop();
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_forgeries_replays_and_oversized_messages_are_refused_and_counted() {
    let mesh = Mesh::start(2).await;
    let mesh_id = mesh.genesis().mesh;
    let node = mesh.id(0).to_peer_id();
    let key = SecretKey::from_seed([12; 32]);
    let adm = admit(
        &mesh,
        &key,
        "admitted-but-odd",
        &[Role::Worker],
        &mesh.maintainer(),
    );
    let mut peer = Peer::start(&key, mesh_id, Some(adm.clone())).await;
    peer.connect(node_addr(&mesh, 0).await, node).await;
    assert!(matches!(
        peer.hello(node, mesh_id, adm.clone()).await,
        Response::Hello(_)
    ));
    wait_for("the node's own admission record", LONG, || async {
        mesh.node(0).version_vector().unwrap().get(&mesh.id(0)) >= 1
    })
    .await;
    // Give gossipsub a moment to graft the topic with the new peer: wait until the node counts it.
    wait_for("the peer admitted", LONG, || async {
        mesh.node(0).metrics().await.unwrap().peers_admitted >= 2
    })
    .await;
    // Once admitted, it is in gossip: the node's next records reach it.
    wait_for("gossip reaching the admitted peer", LONG, || async {
        mesh.node(0).author(crate::mesh::commit(800)).await.unwrap();
        peer.gossip.load(std::sync::atomic::Ordering::Relaxed) > 0
    })
    .await;

    let send = |bytes: Vec<u8>| {
        let c = peer.client.clone();
        async move { c.publish(bytes).await.unwrap() }
    };
    // 1. Not CBOR at all.
    send(b"\xff\x00 this is not a buildmesh message".to_vec()).await;
    // 2. A record whose signature was forged (someone else's signature over the bytes).
    let victim = mesh.key(1);
    let mut r = own_record(&victim, 99, Hash::of(b"x"));
    let mut signed: buildmesh_protocol::record::SignedRecord =
        buildmesh_protocol::codec::decode("r", &r.bytes).unwrap();
    signed.sig = key.sign(buildmesh_protocol::Domain::CommitSeen, &signed.envelope);
    r.bytes = buildmesh_protocol::codec::encode("r", &signed).unwrap();
    send(Gossip::Record(serde_bytes::ByteBuf::from(r.bytes)).to_bytes()).await;
    // 3. A replay of a record the node already holds.
    let held = mesh.node(0).store.record(&mesh.id(0), 1).unwrap().unwrap();
    send(Gossip::Record(serde_bytes::ByteBuf::from(held.bytes)).to_bytes()).await;
    // 4. An oversized record (bigger than any record may be).
    let big = vec![0u8; buildmesh_protocol::record::MAX_RECORD_BYTES + 100];
    send(Gossip::Record(serde_bytes::ByteBuf::from(big)).to_bytes()).await;

    for reason in ["malformed", "bad-signature", "duplicate", "oversized"] {
        wait_for(&format!("a `{reason}` refusal"), LONG, || async {
            refused(&mesh, 0, reason).await >= 1
        })
        .await;
    }
    // Nothing of it was stored or forwarded, and the node keeps serving.
    assert_eq!(
        mesh.node(0).version_vector().unwrap().get(&victim.id()),
        mesh.node(1).version_vector().unwrap().get(&victim.id())
    );
    let seq = mesh
        .node(0)
        .author(crate::mesh::commit(5))
        .await
        .unwrap()
        .seq();
    mesh.wait_replicated(mesh.id(0), seq, LONG).await;
    let metrics = reqwest::get(format!("http://{}/metrics", mesh.node(0).api))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("buildmesh_refused_total{reason=\"bad-signature\"}"),
        "{metrics}"
    );
    peer.stop();
    mesh.shutdown().await;
}
