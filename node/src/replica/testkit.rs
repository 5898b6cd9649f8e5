//! A small mesh of keys, documents and records for the replica's unit tests.

use std::collections::{BTreeMap, BTreeSet};

use buildmesh_protocol::docs::{
    Admission, DocBody, Genesis, Revocation, RevocationReason, Role, SignedDoc,
};
use buildmesh_protocol::record::{Body, Publish, Record};
use buildmesh_protocol::trust::Trust;
use buildmesh_protocol::{Hash, SecretKey, Timestamp};

pub(crate) const T0: Timestamp = Timestamp(1_800_000_000_000);

pub(crate) fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

pub(crate) fn signed<T: DocBody>(body: &T, by: &SecretKey) -> SignedDoc {
    let mut doc = SignedDoc::new(body).unwrap();
    doc.sign(by);
    doc
}

/// One maintainer (`key(1)`), threshold one.
pub(crate) fn trust() -> (Trust, SecretKey) {
    let maintainer = key(1);
    let g = Genesis {
        name: "unit-mesh".into(),
        maintainers: vec![maintainer.id()],
        threshold: 1,
        created: T0,
    };
    let doc = signed(&g, &maintainer);
    (Trust::new(Genesis::verify(&doc).unwrap()), maintainer)
}

pub(crate) fn admission(
    trust: &Trust,
    maintainer: &SecretKey,
    node: &SecretKey,
    expires: Option<Timestamp>,
) -> SignedDoc {
    let a = Admission {
        mesh: trust.mesh(),
        node: node.id(),
        name: format!("node-{}", node.id().short()),
        roles: BTreeSet::from([Role::Worker]),
        labels: BTreeMap::new(),
        owner: None,
        issued: T0,
        expires,
    };
    signed(&a, maintainer)
}

pub(crate) fn revocation(
    trust: &Trust,
    maintainer: &SecretKey,
    node: &SecretKey,
    effective: Timestamp,
) -> SignedDoc {
    let r = Revocation {
        mesh: trust.mesh(),
        subject: node.id(),
        reason: RevocationReason::Retired,
        effective,
        issued: effective,
    };
    signed(&r, maintainer)
}

/// A record of `author`'s that is not its own admission: it publishes a third node's. (Its
/// body does not matter to the gate, and documents change less often than record bodies.)
pub(crate) fn some_record(author: &SecretKey, seq: u64, time: Timestamp) -> Record {
    let (t, m) = trust();
    let doc = admission(&t, &m, &key(7), None);
    Record::author(
        author,
        seq,
        Hash::of(b"prev"),
        time,
        &Body::Publish(Publish { doc }),
    )
    .unwrap()
}

pub(crate) fn publish_record(author: &SecretKey, doc: SignedDoc, time: Timestamp) -> Record {
    Record::author(
        author,
        1,
        Hash::of(b"genesis"),
        time,
        &Body::Publish(Publish { doc }),
    )
    .unwrap()
}
