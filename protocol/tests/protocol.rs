//! Encoding, signing and trust, checked from the outside of the crate.

use std::collections::{BTreeMap, BTreeSet};

use buildmesh_protocol::builders::BuilderConfig;
use buildmesh_protocol::codec;
use buildmesh_protocol::docs::{
    Admission, Doc, DocError, Genesis, Revocation, RevocationReason, Role, SignedDoc,
    VerifiedGenesis,
};
use buildmesh_protocol::record::{
    Body, BuildResult, ChangeSource, Claim, CommitSeen, JobKey, NotificationSent, Publish, Record,
    RecordError, ResultCode, StepResult,
};
use buildmesh_protocol::trust::{Applied, Trust, TrustError};
use buildmesh_protocol::{Domain, Hash, SecretKey, Timestamp};
use proptest::prelude::*;

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

const T0: Timestamp = Timestamp(1_800_000_000_000);

fn genesis(maintainers: &[&SecretKey], threshold: u32) -> (SignedDoc, VerifiedGenesis) {
    let g = Genesis {
        name: "test-mesh".into(),
        maintainers: maintainers.iter().map(|k| k.id()).collect(),
        threshold,
        created: T0,
    };
    let mut doc = SignedDoc::new(&g).unwrap();
    for k in maintainers.iter().take(threshold as usize) {
        doc.sign(k);
    }
    let v = Genesis::verify(&doc).unwrap();
    (doc, v)
}

fn admission(
    mesh: Hash,
    node: &SecretKey,
    roles: &[Role],
    expires: Option<Timestamp>,
) -> Admission {
    Admission {
        mesh,
        node: node.id(),
        name: format!("node-{}", node.id().short()),
        roles: roles.iter().copied().collect(),
        labels: BTreeMap::from([("os".to_string(), "linux".to_string())]),
        owner: Some("owner@example.org".into()),
        issued: T0,
        expires,
    }
}

fn signed<T: buildmesh_protocol::docs::DocBody>(body: &T, by: &[&SecretKey]) -> SignedDoc {
    let mut doc = SignedDoc::new(body).unwrap();
    for k in by {
        doc.sign(k);
    }
    doc
}

fn job() -> JobKey {
    JobKey {
        builder: "linux-debug".into(),
        repo: "https://example.org/p.git".into(),
        branch: "main".into(),
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        purpose: Default::default(),
    }
}

fn every_body() -> Vec<Body> {
    let k = job();
    let mesh = Hash::of(b"mesh");
    vec![
        Body::CommitSeen(CommitSeen {
            repo: k.repo.clone(),
            branch: k.branch.clone(),
            sha: k.sha.clone(),
            source: ChangeSource::Poller,
            requested_by: Some(key(4).id()),
            subject: Some("Fix the frobnicator".into()),
            request: None,
        }),
        Body::Claim(Claim {
            job: k.id(),
            key: k.clone(),
            attempt: 2,
            lease_ms: 10_000,
        }),
        Body::BuildResult(BuildResult {
            job: k.id(),
            key: k.clone(),
            attempt: 1,
            result: ResultCode::Flaky,
            steps: vec![StepResult {
                name: "test".into(),
                result: ResultCode::Flaky,
                exit_code: Some(0),
                duration_ms: 1234,
                warnings: 2,
                log: Some(Hash::of(b"log")),
                failing_lines: vec!["FAIL: test_x".into()],
            }],
            started: T0,
            finished: T0.plus(std::time::Duration::from_secs(2)),
            config_version: 3,
        }),
        Body::NotificationSent(NotificationSent {
            transition: Hash::of(b"t"),
            builder: k.builder.clone(),
            branch: k.branch.clone(),
            sha: k.sha.clone(),
            message_id: "<x@buildmesh>".into(),
            to: vec!["list@example.org".into()],
            term: 7,
        }),
        Body::Publish(Publish {
            doc: signed(&admission(mesh, &key(5), &[Role::Worker], None), &[&key(1)]),
        }),
        Body::Rebuild(buildmesh_protocol::record::Rebuild {
            repo: k.repo.clone(),
            branch: k.branch.clone(),
            sha: k.sha.clone(),
            builders: vec![k.builder.clone()],
            request: buildmesh_protocol::wire::SignedRequest::sign(
                &key(4),
                buildmesh_protocol::wire::ApiAction::Rebuild {
                    sha: k.sha.clone(),
                    branch: None,
                    builder: Some(k.builder.clone()),
                },
                T0,
            ),
        }),
        Body::Bisect(buildmesh_protocol::record::Bisect {
            builder: k.builder.clone(),
            repo: k.repo.clone(),
            branch: k.branch.clone(),
            shas: vec!["a".repeat(40), k.sha.clone()],
            red_worker: key(5).id(),
            max_split: Some(1),
            request: None,
        }),
        Body::Probes(buildmesh_protocol::record::Probes {
            bisection: Hash::of(b"search"),
            step: 2,
            term: 3,
            reports: vec![(1, key(5).id(), buildmesh_protocol::bisect::Outcome::Fail)],
            idle: vec![key(5).id(), key(6).id()],
            now: T0,
            probes: vec![(0, key(5).id())],
            culprit: Some(buildmesh_protocol::bisect::Culprit {
                index: 1,
                sha: k.sha.clone(),
                rechecked: true,
            }),
        }),
        Body::Cancel(buildmesh_protocol::record::Cancel {
            job: k.id(),
            request: buildmesh_protocol::wire::SignedRequest::sign(
                &key(4),
                buildmesh_protocol::wire::ApiAction::Cancel {
                    build: k.id().to_string()[..16].to_string(),
                },
                T0,
            ),
        }),
    ]
}

#[test]
fn every_record_kind_round_trips_and_encodes_deterministically() {
    let author = key(3);
    let mut prev = Hash::ZERO;
    for (i, body) in every_body().into_iter().enumerate() {
        let r = Record::author(&author, i as u64 + 1, prev, T0, &body).unwrap();
        let again = Record::author(&author, i as u64 + 1, prev, T0, &body).unwrap();
        assert_eq!(r.bytes, again.bytes, "same value, same bytes");
        let back = Record::verify(&r.bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.body().unwrap(), body);
        prev = r.hash;
    }
}

#[test]
fn every_document_kind_round_trips() {
    let m = key(1);
    let (gdoc, g) = genesis(&[&m], 1);
    let config = BuilderConfig::from_toml(
        g.mesh,
        "version = 2\n[[builder]]\nname = \"b\"\nrepo = \"r\"\nbranches = [\"main\"]\n[[builder.step]]\nname = \"s\"\nrun = \"true\"\n",
    )
    .unwrap();
    let docs = vec![
        gdoc,
        signed(&admission(g.mesh, &key(2), &[Role::Worker], None), &[&m]),
        signed(
            &Revocation {
                mesh: g.mesh,
                subject: key(2).id(),
                reason: RevocationReason::Lost,
                effective: T0,
                issued: T0,
            },
            &[&m],
        ),
        signed(&config, &[&m]),
    ];
    for doc in docs {
        let bytes = doc.to_bytes();
        assert_eq!(bytes, doc.clone().to_bytes());
        let back = SignedDoc::from_bytes(&bytes).unwrap();
        assert_eq!(back, doc);
        assert_eq!(back.id(), doc.id());
        back.verify_signatures().unwrap();
        let parsed = back.parse().unwrap();
        // The JSON view (what `inspect` prints) decodes back to the same value.
        let json = serde_json::to_string(&parsed).unwrap();
        let from_json: Doc = serde_json::from_str(&json).unwrap();
        assert_eq!(from_json, parsed);
    }
}

#[test]
fn a_flipped_bit_anywhere_in_a_record_fails_verification() {
    let author = key(3);
    for body in every_body() {
        let r = Record::author(&author, 1, Hash::ZERO, T0, &body).unwrap();
        for i in 0..r.bytes.len() {
            // Every bit: flipping bit 5 of a CBOR header turns a text key into a byte key, which
            // serde reads the same; only the canonical-form check refuses that.
            for bit in 0u8..8 {
                let mut b = r.bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    Record::verify(&b).is_err(),
                    "flipping bit {bit} of byte {i} of a {:?} record went unnoticed",
                    body.kind()
                );
            }
        }
    }
}

#[test]
fn a_flipped_bit_anywhere_in_a_document_fails_verification() {
    let m = key(1);
    let (_, g) = genesis(&[&m], 1);
    let doc = signed(&admission(g.mesh, &key(2), &[Role::Worker], None), &[&m]);
    let bytes = doc.to_bytes();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        let ok = SignedDoc::from_bytes(&b)
            .ok()
            .and_then(|d| d.verify_signatures().ok().map(|s| (d, s)))
            .filter(|(d, s)| d.kind == doc.kind && s.contains(&m.id()));
        assert!(
            ok.is_none(),
            "flipping byte {i} of a signed admission went unnoticed"
        );
    }
}

#[test]
fn a_signature_for_one_kind_does_not_verify_as_another() {
    let m = key(1);
    let (_, g) = genesis(&[&m], 1);
    let doc = signed(&admission(g.mesh, &key(2), &[Role::Worker], None), &[&m]);
    let mut as_revocation = doc.clone();
    as_revocation.kind = buildmesh_protocol::docs::DocKind::Revocation;
    assert!(matches!(
        as_revocation.verify_signatures(),
        Err(DocError::BadSignature { .. })
    ));

    let sig = m.sign(Domain::Claim, b"bytes");
    m.id().verify(Domain::Claim, b"bytes", &sig).unwrap();
    assert!(m.id().verify(Domain::BuildResult, b"bytes", &sig).is_err());

    // A record re-labelled as another kind: the envelope changes, and so does its domain.
    let r = Record::author(&m, 1, Hash::ZERO, T0, &every_body()[1]).unwrap();
    let signed: buildmesh_protocol::record::SignedRecord = codec::decode("r", &r.bytes).unwrap();
    let mut env = r.envelope.clone();
    env.kind = buildmesh_protocol::record::RecordKind::BuildResult;
    let forged = buildmesh_protocol::record::SignedRecord {
        envelope: codec::encode("e", &env).unwrap(),
        sig: signed.sig,
    };
    let forged = codec::encode("r", &forged).unwrap();
    assert!(matches!(
        Record::verify(&forged),
        Err(RecordError::BadSignature(_))
    ));
}

#[test]
fn trust_accepts_a_proper_admission() {
    let m = key(1);
    let (_, g) = genesis(&[&m], 1);
    let mut trust = Trust::new(g.clone());
    let node = key(2);
    let doc = signed(&admission(g.mesh, &node, &[Role::Worker], None), &[&m]);
    assert_eq!(trust.apply(&doc).unwrap(), Applied::Admitted(node.id()));
    trust.may_act(&node.id(), Role::Worker, T0).unwrap();
    assert!(matches!(
        trust.may_act(&node.id(), Role::Notifier, T0),
        Err(TrustError::MissingRole {
            role: Role::Notifier,
            ..
        })
    ));
    assert!(matches!(
        trust.may_act(&key(9).id(), Role::Worker, T0),
        Err(TrustError::NotAdmitted { .. })
    ));
}

#[test]
fn admission_signed_by_a_non_maintainer_is_refused() {
    let m = key(1);
    let (_, g) = genesis(&[&m], 1);
    let mut trust = Trust::new(g.clone());
    let outsider = key(7);
    let doc = signed(
        &admission(g.mesh, &key(2), &[Role::Worker], None),
        &[&outsider],
    );
    let err = trust.apply(&doc).unwrap_err();
    assert!(
        matches!(err, TrustError::SignerNotMaintainer { signer, .. } if signer == outsider.id()),
        "{err}"
    );
    let unsigned = signed(&admission(g.mesh, &key(2), &[Role::Worker], None), &[]);
    assert!(matches!(
        trust.apply(&unsigned),
        Err(TrustError::NotEnoughSignatures {
            have: 0,
            need: 1,
            ..
        })
    ));
}

#[test]
fn admission_for_another_mesh_is_refused() {
    let m = key(1);
    let (_, g) = genesis(&[&m], 1);
    let mut trust = Trust::new(g);
    let doc = signed(
        &admission(Hash::of(b"other"), &key(2), &[Role::Worker], None),
        &[&m],
    );
    assert!(matches!(
        trust.apply(&doc),
        Err(TrustError::WrongMesh { .. })
    ));
}

#[test]
fn expired_admission_is_refused() {
    let m = key(1);
    let (_, g) = genesis(&[&m], 1);
    let mut trust = Trust::new(g.clone());
    let node = key(2);
    let expires = T0.plus(std::time::Duration::from_secs(60));
    trust
        .apply(&signed(
            &admission(g.mesh, &node, &[Role::Worker], Some(expires)),
            &[&m],
        ))
        .unwrap();
    trust.may_act(&node.id(), Role::Worker, T0).unwrap();
    let later = expires.plus(std::time::Duration::from_millis(1));
    assert!(matches!(
        trust.may_act(&node.id(), Role::Worker, later),
        Err(TrustError::Expired { .. })
    ));
}

#[test]
fn revoked_key_is_refused_from_the_effective_time() {
    let m = key(1);
    let (_, g) = genesis(&[&m], 1);
    let mut trust = Trust::new(g.clone());
    let node = key(2);
    trust
        .apply(&signed(
            &admission(g.mesh, &node, &[Role::Worker], None),
            &[&m],
        ))
        .unwrap();
    let effective = T0.plus(std::time::Duration::from_secs(10));
    let rev = Revocation {
        mesh: g.mesh,
        subject: node.id(),
        reason: RevocationReason::Retired,
        effective,
        issued: effective,
    };
    assert_eq!(
        trust.apply(&signed(&rev, &[&m])).unwrap(),
        Applied::Revoked(node.id(), RevocationReason::Retired)
    );
    trust.may_act(&node.id(), Role::Worker, T0).unwrap();
    assert!(matches!(
        trust.may_act(&node.id(), Role::Worker, effective),
        Err(TrustError::Revoked {
            reason: RevocationReason::Retired,
            ..
        })
    ));
    // A later `compromised` hardens the reason but keeps the earlier effective time.
    let worse = Revocation {
        reason: RevocationReason::Compromised,
        effective: effective.plus(std::time::Duration::from_secs(100)),
        ..rev
    };
    trust.apply(&signed(&worse, &[&m])).unwrap();
    let r = trust.revocation(&node.id()).unwrap();
    assert_eq!(
        (r.reason, r.effective),
        (RevocationReason::Compromised, effective)
    );
}

#[test]
fn maintainer_revocation_needs_k_other_maintainers() {
    let (a, b, c) = (key(1), key(2), key(3));
    let (_, g) = genesis(&[&a, &b, &c], 2);
    let mut trust = Trust::new(g.clone());
    let rev = Revocation {
        mesh: g.mesh,
        subject: c.id(),
        reason: RevocationReason::Compromised,
        effective: T0,
        issued: T0,
    };
    // c's own signature does not count towards its revocation.
    let err = trust.apply(&signed(&rev, &[&a, &c])).unwrap_err();
    assert!(
        matches!(
            err,
            TrustError::MaintainerRevocationNeedsOthers {
                have: 1,
                need: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(trust.is_maintainer(&c.id(), T0));
    trust.apply(&signed(&rev, &[&a, &b])).unwrap();
    assert!(!trust.is_maintainer(&c.id(), T0));
    // Once revoked, c's signature no longer counts for anything.
    let doc = signed(
        &admission(g.mesh, &key(8), &[Role::Worker], None),
        &[&a, &c],
    );
    assert!(trust.apply(&doc).is_err());
}

#[test]
fn threshold_applies_to_admissions() {
    let (a, b) = (key(1), key(2));
    let (_, g) = genesis(&[&a, &b], 2);
    let mut trust = Trust::new(g.clone());
    let adm = admission(g.mesh, &key(5), &[Role::Worker], None);
    assert!(matches!(
        trust.apply(&signed(&adm, &[&a])),
        Err(TrustError::NotEnoughSignatures {
            have: 1,
            need: 2,
            ..
        })
    ));
    trust.apply(&signed(&adm, &[&a, &b])).unwrap();
}

#[test]
fn genesis_checks_itself() {
    let (a, b) = (key(1), key(2));
    let g = Genesis {
        name: "m".into(),
        maintainers: vec![a.id(), b.id()],
        threshold: 2,
        created: T0,
    };
    assert!(
        Genesis::verify(&signed(&g, &[&a])).is_err(),
        "one of two signatures"
    );
    assert!(
        Genesis::verify(&signed(&g, &[&a, &key(3)])).is_err(),
        "an outsider signed"
    );
    Genesis::verify(&signed(&g, &[&a, &b])).unwrap();
    let zero = Genesis {
        threshold: 0,
        ..g.clone()
    };
    assert!(Genesis::verify(&signed(&zero, &[&a, &b])).is_err());
    let too_high = Genesis { threshold: 3, ..g };
    assert!(Genesis::verify(&signed(&too_high, &[&a, &b])).is_err());
}

#[test]
fn newer_builder_config_wins_and_older_is_refused() {
    let m = key(1);
    let (_, g) = genesis(&[&m], 1);
    let mut trust = Trust::new(g.clone());
    let toml = |v: u64| {
        format!(
            "version = {v}\n[[builder]]\nname = \"b\"\nrepo = \"r\"\nbranches = [\"main\"]\n[[builder.step]]\nname = \"s\"\nrun = \"true\"\n"
        )
    };
    let c2 = BuilderConfig::from_toml(g.mesh, &toml(2)).unwrap();
    let c1 = BuilderConfig::from_toml(g.mesh, &toml(1)).unwrap();
    assert_eq!(
        trust.apply(&signed(&c2, &[&m])).unwrap(),
        Applied::Config(2)
    );
    assert!(matches!(
        trust.apply(&signed(&c1, &[&m])),
        Err(TrustError::StaleConfig {
            offered: 1,
            current: 2
        })
    ));
    assert!(trust.apply(&signed(&c2, &[&key(9)])).is_err());
}

#[test]
fn roles_and_labels_survive_json() {
    let a = admission(
        Hash::of(b"m"),
        &key(2),
        &[Role::Worker, Role::Notifier],
        None,
    );
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(json["roles"], serde_json::json!(["worker", "notifier"]));
    assert!(json["node"].as_str().unwrap().starts_with("12D3KooW"));
    let roles: BTreeSet<Role> = serde_json::from_value(json["roles"].clone()).unwrap();
    assert_eq!(roles.len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Record::verify(&bytes);
        let _ = SignedDoc::from_bytes(&bytes).map(|d| (d.verify_signatures().is_ok(), d.parse().is_ok()));
        let _ = SecretKey::from_file_text(&String::from_utf8_lossy(&bytes));
        let _ = BuilderConfig::from_toml(Hash::ZERO, &String::from_utf8_lossy(&bytes));
        for kind in [
            buildmesh_protocol::record::RecordKind::CommitSeen,
            buildmesh_protocol::record::RecordKind::Claim,
            buildmesh_protocol::record::RecordKind::BuildResult,
            buildmesh_protocol::record::RecordKind::NotificationSent,
            buildmesh_protocol::record::RecordKind::Publish,
            buildmesh_protocol::record::RecordKind::Rebuild,
            buildmesh_protocol::record::RecordKind::Cancel,
            buildmesh_protocol::record::RecordKind::Bisect,
            buildmesh_protocol::record::RecordKind::Probes,
        ] {
            let _ = Body::decode(kind, &bytes);
        }
        let _ = codec::decode::<buildmesh_protocol::vv::VersionVector>("vv", &bytes);
    }

    #[test]
    fn mutated_valid_records_never_panic(idx in any::<proptest::sample::Index>(), val in any::<u8>(), which in 0usize..9) {
        let body = every_body().swap_remove(which);
        let r = Record::author(&key(3), 1, Hash::ZERO, T0, &body).unwrap();
        let mut b = r.bytes.clone();
        let i = idx.index(b.len());
        b[i] = val;
        if b != r.bytes {
            prop_assert!(Record::verify(&b).is_err());
        }
    }
}

#[test]
fn a_release_counts_from_maintainers_only() {
    let m = key(1);
    let (_, g) = genesis(&[&m], 1);
    let mut trust = Trust::new(g.clone());
    let release = buildmesh_protocol::docs::Release {
        mesh: g.mesh,
        subject: key(2).id(),
        episode: 1,
        issued: Timestamp::now(),
    };
    let doc = signed(&release, &[&m]);
    assert!(matches!(
        trust.apply(&doc),
        Ok(buildmesh_protocol::trust::Applied::Released(w, 1)) if w == key(2).id()
    ));
    let forged = signed(&release, &[&key(2)]);
    assert!(matches!(
        trust.check_release(&forged),
        Err(TrustError::SignerNotMaintainer { .. })
    ));
    // It round-trips as a document of its own kind.
    let back = SignedDoc::from_bytes(&doc.to_bytes()).unwrap();
    assert_eq!(back.kind, buildmesh_protocol::docs::DocKind::Release);
}
