//! The store against a real sled directory on disk.
//!
//! One file because every test opens the same kind of real store and shares the chain
//! fixtures; each test is one property of it (reopen, chains, forks, indexes, views, blobs).

use buildmesh_protocol::codec;
use buildmesh_protocol::record::{
    Body, BuildResult, ChangeSource, Claim, CommitSeen, JobKey, Record, ResultCode, SignedRecord,
};
use buildmesh_protocol::{Hash, SecretKey, Timestamp};
use buildmesh_store::{Ingest, Store, StoreError};

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

fn commit(i: u64) -> Body {
    Body::CommitSeen(CommitSeen {
        repo: "https://example.org/p.git".into(),
        branch: "main".into(),
        sha: format!("{i:040x}"),
        source: ChangeSource::Submit,
        requested_by: None,
        subject: None,
        request: None,
    })
}

/// A chain of `n` records by `author`, built without a store.
fn chain(author: &SecretKey, n: u64) -> Vec<Record> {
    let mut prev = Hash::ZERO;
    (1..=n)
        .map(|seq| {
            let r = Record::author(author, seq, prev, Timestamp(1000 + seq), &commit(seq)).unwrap();
            prev = r.hash;
            r
        })
        .collect()
}

#[test]
fn append_close_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let me = key(1);
    let other = key(2);
    let blob;
    {
        let store = Store::open(dir.path()).unwrap();
        for i in 0..50 {
            store.append_own(&me, Timestamp(i), &commit(i)).unwrap();
        }
        for r in chain(&other, 20) {
            assert!(matches!(
                store.ingest(&r.bytes).unwrap(),
                Ingest::Appended(_)
            ));
        }
        blob = store
            .put_blob(b"a build log\n".repeat(1000).as_slice())
            .unwrap();
        store.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let vv = store.version_vector().unwrap();
    assert_eq!(vv.get(&me.id()), 50);
    assert_eq!(vv.get(&other.id()), 20);
    assert_eq!(store.record_count(), 70);
    let r = store.record(&me.id(), 50).unwrap().unwrap();
    assert_eq!(r.body().unwrap(), commit(49));
    assert_eq!(
        store.blob(&blob).unwrap().unwrap(),
        b"a build log\n".repeat(1000)
    );
    // The log continues where it stopped.
    let next = store.append_own(&me, Timestamp(99), &commit(99)).unwrap();
    assert_eq!(next.seq(), 51);
    assert_eq!(next.envelope.prev, r.hash);
}

#[test]
fn chain_break_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = key(3);
    let good = chain(&a, 2);
    store.ingest(&good[0].bytes).unwrap();
    // seq 2 that points at a made-up predecessor.
    let bad = Record::author(&a, 2, Hash::of(b"elsewhere"), Timestamp(5), &commit(2)).unwrap();
    assert!(matches!(
        store.ingest(&bad.bytes),
        Err(StoreError::ChainBreak { seq: 2, .. })
    ));
    assert_eq!(store.version_vector().unwrap().get(&a.id()), 1);
    assert_eq!(store.record_count(), 1);
    // The real seq 2 still goes in.
    assert!(matches!(
        store.ingest(&good[1].bytes).unwrap(),
        Ingest::Appended(_)
    ));
}

#[test]
fn bad_signature_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let r = &chain(&key(4), 1)[0];
    let mut signed: SignedRecord = codec::decode("r", &r.bytes).unwrap();
    signed.sig.0[10] ^= 1;
    let forged = codec::encode("r", &signed).unwrap();
    assert!(matches!(store.ingest(&forged), Err(StoreError::Record(_))));
    // Someone else's signature over the same envelope.
    let signed2 = SignedRecord {
        envelope: codec::decode::<SignedRecord>("r", &r.bytes)
            .unwrap()
            .envelope,
        sig: key(5).sign(buildmesh_protocol::Domain::CommitSeen, b"x"),
    };
    assert!(
        store
            .ingest(&codec::encode("r", &signed2).unwrap())
            .is_err()
    );
    assert!(store.ingest(b"\xa1garbage").is_err());
    assert_eq!(store.record_count(), 0);
    assert_eq!(store.pending_count(), 0);
}

#[test]
fn fork_is_kept_as_evidence_and_the_author_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = key(6);
    let c = chain(&a, 3);
    for r in &c {
        store.ingest(&r.bytes).unwrap();
    }
    assert_eq!(store.ingest(&c[1].bytes).unwrap(), Ingest::Duplicate);
    // A second record 2, as a node that lost its disk would write.
    let other2 = Record::author(&a, 2, c[0].hash, Timestamp(77), &commit(77)).unwrap();
    assert_eq!(
        store.ingest(&other2.bytes).unwrap(),
        Ingest::Fork {
            author: a.id(),
            seq: 2
        }
    );
    let flagged = store.flagged().unwrap();
    assert_eq!(flagged.len(), 1);
    assert_eq!(flagged[0].0, a.id());
    let ev = store.forks_of(&a.id()).unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].held, c[1]);
    assert_eq!(ev[0].other, other2);
    // The log itself is untouched.
    assert_eq!(store.record(&a.id(), 2).unwrap().unwrap(), c[1]);
}

#[test]
fn gap_filled_out_of_order_ends_with_the_right_version_vector() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = key(7);
    let c = chain(&a, 10);
    // Deliver 10, 9, ..., 2 first: all held.
    for r in c[1..].iter().rev() {
        assert!(matches!(
            store.ingest(&r.bytes).unwrap(),
            Ingest::Held { have: 0 }
        ));
    }
    assert_eq!(store.version_vector().unwrap().get(&a.id()), 0);
    assert_eq!(store.pending_count(), 9);
    // Record 1 releases everything, in order.
    match store.ingest(&c[0].bytes).unwrap() {
        Ingest::Appended(rs) => {
            assert_eq!(
                rs.iter().map(|r| r.seq()).collect::<Vec<_>>(),
                (1..=10).collect::<Vec<_>>()
            )
        }
        other => panic!("expected an append, got {other:?}"),
    }
    assert_eq!(store.version_vector().unwrap().get(&a.id()), 10);
    assert_eq!(store.pending_count(), 0);
}

#[test]
fn version_vector_diff_yields_exactly_the_missing_records() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (s1, s2) = (
        Store::open(d1.path()).unwrap(),
        Store::open(d2.path()).unwrap(),
    );
    let authors: Vec<SecretKey> = (10..15).map(key).collect();
    for (i, a) in authors.iter().enumerate() {
        let c = chain(a, 10 + i as u64 * 7);
        for r in &c {
            s1.ingest(&r.bytes).unwrap();
        }
        // s2 holds a prefix of some logs, none of others, and is ahead on none.
        for r in c.iter().take(i * 3) {
            s2.ingest(&r.bytes).unwrap();
        }
    }
    let v1 = s1.version_vector().unwrap();
    let v2 = s2.version_vector().unwrap();
    let missing = v1.ahead_of(&v2);
    assert!(v2.ahead_of(&v1).is_empty());
    let mut sent = 0;
    for (author, range) in missing {
        let expected = (range.end() - range.start() + 1) as usize;
        let batch = s1.records_in(&author, range.clone(), usize::MAX).unwrap();
        assert_eq!(batch.len(), expected, "exactly the range");
        for (i, bytes) in batch.iter().enumerate() {
            let r = Record::verify(bytes).unwrap();
            assert_eq!(r.seq(), range.start() + i as u64);
            assert!(matches!(s2.ingest(bytes).unwrap(), Ingest::Appended(_)));
        }
        sent += batch.len();
    }
    assert_eq!(sent as u64, v1.total() - v2.total());
    assert_eq!(s2.version_vector().unwrap(), v1);
}

#[test]
fn announcements_of_one_commit_collapse_and_indexes_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, b) = (key(20), key(21));
    let first = store.append_own(&a, Timestamp(1), &commit(1)).unwrap();
    store.append_own(&a, Timestamp(2), &commit(2)).unwrap();
    // b announces commit 1 again.
    for r in chain(&b, 1) {
        store.ingest(&r.bytes).unwrap();
    }
    let seen = store
        .commit_seen("https://example.org/p.git", "main", &format!("{:040x}", 1))
        .unwrap()
        .unwrap();
    assert_eq!((seen.author, seen.seq), (a.id(), first.seq()));
    let commits = store
        .commits("https://example.org/p.git", "main", 10)
        .unwrap();
    assert_eq!(
        commits.len(),
        2,
        "the repeated announcement is not a new commit"
    );
    assert_eq!(commits[0].seq, 2, "newest first");

    let job = JobKey {
        builder: "b".into(),
        repo: "r".into(),
        branch: "main".into(),
        sha: "s".into(),
        purpose: Default::default(),
    };
    store
        .append_own(
            &a,
            Timestamp(3),
            &Body::Claim(Claim {
                job: job.id(),
                key: job.clone(),
                attempt: 1,
                lease_ms: 5000,
            }),
        )
        .unwrap();
    store
        .append_own(
            &a,
            Timestamp(4),
            &Body::BuildResult(BuildResult {
                job: job.id(),
                key: job.clone(),
                attempt: 1,
                result: ResultCode::Success,
                steps: vec![],
                started: Timestamp(3),
                finished: Timestamp(4),
                config_version: 1,
            }),
        )
        .unwrap();
    assert_eq!(store.claims_for_job(&job.id()).unwrap().len(), 1);
    assert_eq!(store.claims_for_job(&job.id()).unwrap()[0].0, 1);
    assert_eq!(store.results_for_job(&job.id()).unwrap().len(), 1);
    assert_eq!(store.results_for_builder("b", "main", 5).unwrap().len(), 1);
    assert!(
        store
            .results_for_builder("b", "mainline", 5)
            .unwrap()
            .is_empty()
    );
}

// sled lets go of its directory lock from a background thread after the handle is dropped: a
// reopen right away may find it still held (seen on a loaded 2-core machine).
fn reopen<T, E: std::fmt::Debug>(mut open: impl FnMut() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open() {
            Ok(v) => return v,
            Err(e)
                if std::time::Instant::now() < deadline
                    && format!("{e:?}").contains("acquire lock") =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot reopen the store: {e:?}"),
        }
    }
}

#[test]
fn a_corrupt_value_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let me = key(30);
    let blob;
    {
        let store = Store::open(dir.path()).unwrap();
        store.append_own(&me, Timestamp(1), &commit(1)).unwrap();
        blob = store.put_blob(b"log").unwrap();
        store.flush().unwrap();
    }
    {
        let db = reopen(|| sled::open(dir.path()));
        let records = db.open_tree("records").unwrap();
        let (k, _) = records.first().unwrap().unwrap();
        records.insert(k, &b"\xff\x00truncated"[..]).unwrap();
        let blobs = db.open_tree("blobs").unwrap();
        blobs.insert(blob.0, &b"\xff\xff\xff\xff"[..]).unwrap();
        db.flush().unwrap();
    }
    {
        let store = reopen(|| Store::open(dir.path()));
        let r = store.record(&me.id(), 1);
        assert!(matches!(r, Err(StoreError::Corrupt { .. })), "{r:?}");
        assert!(matches!(store.blob(&blob), Err(StoreError::Corrupt { .. })));
        assert!(
            store
                .all_records()
                .any(|r| matches!(r, Err(StoreError::Corrupt { .. })))
        );
    }
    {
        let db = reopen(|| sled::open(dir.path()));
        let heads = db.open_tree("heads").unwrap();
        heads.insert(me.id().as_bytes(), &b"\x01"[..]).unwrap();
        db.flush().unwrap();
    }
    // A damaged head stops the store from opening, with the tree named.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let opened = loop {
        match Store::open(dir.path()) {
            Err(e)
                if std::time::Instant::now() < deadline
                    && format!("{e:?}").contains("acquire lock") =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other,
        }
    };
    match opened {
        Err(StoreError::Corrupt { tree: "heads", .. }) => {}
        other => panic!("expected a corrupt-heads error, got {other:?}"),
    }
}

#[test]
fn a_head_cut_short_by_a_crash_is_moved_forward_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let me = key(31);
    let head3;
    {
        let store = Store::open(dir.path()).unwrap();
        for i in 1..=5 {
            store.append_own(&me, Timestamp(i), &commit(i)).unwrap();
        }
        head3 = store.record(&me.id(), 3).unwrap().unwrap();
        store.flush().unwrap();
    }
    {
        // As if the process died after writing records 4 and 5 but before their head.
        #[derive(serde::Serialize)]
        struct Head {
            seq: u64,
            hash: Hash,
        }
        let head = Head {
            seq: 3,
            hash: head3.hash,
        };
        let db = reopen(|| sled::open(dir.path()));
        let heads = db.open_tree("heads").unwrap();
        heads
            .insert(me.id().as_bytes(), codec::encode("head", &head).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let store = reopen(|| Store::open(dir.path()));
    assert_eq!(store.version_vector().unwrap().get(&me.id()), 5);
    assert_eq!(
        store
            .append_own(&me, Timestamp(6), &commit(6))
            .unwrap()
            .seq(),
        6
    );
}

#[test]
fn blobs_are_checked_against_their_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let h = Hash::of(b"real content");
    assert!(!store.put_blob_checked(&h, b"other content").unwrap());
    assert!(!store.has_blob(&h).unwrap());
    assert!(store.put_blob_checked(&h, b"real content").unwrap());
    assert_eq!(store.blob(&h).unwrap().unwrap(), b"real content");
}

#[test]
fn views_are_listed_newest_first_by_builder_branch_and_commit_and_survive_a_reopen() {
    use buildmesh_store::{Listed, Listing};
    let dir = tempfile::tempdir().unwrap();
    let job = |i: u8| Hash([i; 32]);
    // (job, order, builder, branch, sha)
    let builds = [
        (1, 10, "linux", "main", "aa11"),
        (2, 30, "linux", "main", "bb22"),
        (3, 20, "linux", "3.13", "cc33"),
        (4, 40, "linux-dbg", "main", "bb22"),
        (5, 50, "freebsd", "main", "bb99"),
    ];
    {
        let store = Store::open(dir.path()).unwrap();
        for (i, order, builder, branch, sha) in builds {
            let cell = format!("cell {i}");
            let at = Listed {
                job: &job(i),
                order,
                builder,
                branch,
                sha,
                kind: (i == 4) as u8,
                summary: cell.as_bytes(),
            };
            assert!(store.view_put(at, format!("view {i}").as_bytes()).unwrap());
            // The same view again changes nothing.
            assert!(!store.view_put(at, format!("view {i}").as_bytes()).unwrap());
        }
        // A newer view of job 1 replaces the old one and is listed once.
        let at = Listed {
            job: &job(1),
            order: 10,
            builder: "linux",
            branch: "main",
            sha: "aa11",
            kind: 0,
            summary: b"cell 1, finished",
        };
        assert!(store.view_put(at, b"view 1, finished").unwrap());
        assert!(store.status_put("linux", "main", b"row").unwrap());
        assert!(!store.status_put("linux", "main", b"row").unwrap());
        store.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let list = |l: Listing| -> Vec<String> {
        store
            .views_newest(l, None)
            .map(|r| String::from_utf8(r.unwrap().1).unwrap())
            .collect()
    };
    assert_eq!(
        list(Listing::All),
        ["view 5", "view 4", "view 2", "view 3", "view 1, finished"]
    );
    // "linux" is not a prefix of "linux-dbg": names are length-prefixed in the keys.
    assert_eq!(
        list(Listing::Builder("linux")),
        ["view 2", "view 3", "view 1, finished"]
    );
    assert_eq!(
        list(Listing::Branch("linux", "main")),
        ["view 2", "view 1, finished"]
    );
    let mut by_commit = list(Listing::Commit("bb"));
    by_commit.sort();
    assert_eq!(by_commit, ["view 2", "view 4", "view 5"]);
    assert_eq!(list(Listing::Commit("bb22")).len(), 2);
    // One kind of build only.
    let kind = |k: u8| -> Vec<String> {
        store
            .views_newest(Listing::Commit("bb22"), Some(k))
            .map(|r| String::from_utf8(r.unwrap().1).unwrap())
            .collect()
    };
    assert_eq!(kind(1), ["view 4"]);
    assert_eq!(kind(0), ["view 2"]);
    // A builder's summaries, without the views: the newest of job 1, with its order.
    let summaries = |branch: Option<&str>, k: u8| -> Vec<(Hash, u64, String)> {
        store
            .summaries_newest("linux", branch, k)
            .map(|r| {
                let (j, o, v) = r.unwrap();
                (j, o, String::from_utf8(v).unwrap())
            })
            .collect()
    };
    assert_eq!(
        summaries(None, 0),
        [
            (job(2), 30, "cell 2".to_string()),
            (job(3), 20, "cell 3".to_string()),
            (job(1), 10, "cell 1, finished".to_string())
        ]
    );
    assert_eq!(
        summaries(Some("3.13"), 0),
        [(job(3), 20, "cell 3".to_string())]
    );
    assert!(summaries(None, 1).is_empty());
    assert_eq!(
        store.views_with_prefix(&[4, 4], 10).unwrap(),
        vec![(job(4), b"view 4".to_vec())]
    );
    assert_eq!(store.status_rows().unwrap(), vec![b"row".to_vec()]);
    assert_eq!(store.view_count(), 5);
    store.views_clear().unwrap();
    assert_eq!(store.view_count(), 0);
    assert!(list(Listing::All).is_empty());
    assert!(store.status_rows().unwrap().is_empty());
}

#[test]
fn blobs_go_when_their_builds_let_them_and_an_expired_blob_is_not_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let short = store.put_blob(b"a passing build's log").unwrap();
    let long = store.put_blob(b"a red build's log").unwrap();
    let shared = store.put_blob(b"the same log, two builds").unwrap();
    let unclaimed = store.put_blob(b"a log no result names yet").unwrap();
    store.keep_blob_until(&short, Timestamp(1_000)).unwrap();
    store.keep_blob_until(&long, Timestamp(9_000)).unwrap();
    // Two builds name the same blob: the later date holds, whatever order they come in.
    store.keep_blob_until(&shared, Timestamp(8_000)).unwrap();
    store.keep_blob_until(&shared, Timestamp(2_000)).unwrap();
    assert_eq!(store.kept_until(&shared).unwrap(), Some(Timestamp(8_000)));

    let e = store.expire_blobs(Timestamp(5_000), 100).unwrap();
    assert_eq!((e.blobs, e.more), (1, false));
    assert!(e.bytes > 0);
    assert!(!store.has_blob(&short).unwrap());
    assert!(store.has_blob(&long).unwrap() && store.has_blob(&shared).unwrap());
    // A peer's copy of the expired blob is not stored again.
    assert!(
        store
            .put_blob_checked(&short, b"a passing build's log")
            .unwrap()
    );
    assert!(!store.has_blob(&short).unwrap());

    // Under a disk budget: the earliest dates go first, a few at a time.
    let e = store.expire_blobs(Timestamp(u64::MAX), 1).unwrap();
    assert_eq!((e.blobs, e.more), (1, true));
    assert!(!store.has_blob(&shared).unwrap() && store.has_blob(&long).unwrap());
    store.expire_blobs(Timestamp(u64::MAX), 10).unwrap();
    assert!(!store.has_blob(&long).unwrap());
    // A blob no build named is never expired.
    assert!(store.has_blob(&unclaimed).unwrap());
    assert_eq!(store.blob_usage().unwrap().0, 1);
}

// The records of the rarer kinds are found by kind, in (author, seq) order, without going
// through the others; commits, claims and results are not listed there (they have indexes of
// their own). Still so after a reopen.
#[test]
fn records_of_the_rarer_kinds_are_found_by_kind() {
    use buildmesh_protocol::record::{NotificationSent, RecordKind};
    let dir = tempfile::tempdir().unwrap();
    let author = key(1);
    let mut prev = Hash::ZERO;
    let mut mails = Vec::new();
    let mut records = Vec::new();
    for seq in 1..=30u64 {
        let body = if seq % 7 == 0 {
            mails.push(seq);
            Body::NotificationSent(NotificationSent {
                transition: Hash::of(&seq.to_be_bytes()),
                builder: "b".into(),
                branch: "main".into(),
                sha: format!("{seq:040x}"),
                message_id: format!("<{seq}@example.org>"),
                to: vec!["list@example.org".into()],
                term: 1,
            })
        } else {
            commit(seq)
        };
        let r = Record::author(&author, seq, prev, Timestamp(1000 + seq), &body).unwrap();
        prev = r.hash;
        records.push(r);
    }
    for reopen in [false, true] {
        let store = Store::open(dir.path()).unwrap();
        if !reopen {
            for r in &records {
                store.ingest(&r.bytes).unwrap();
            }
        }
        let found: Vec<u64> = store
            .records_of_kind(&RecordKind::NotificationSent)
            .map(|r| r.unwrap().seq())
            .collect();
        assert_eq!(found, mails, "reopened: {reopen}");
        assert_eq!(store.records_of_kind(&RecordKind::CommitSeen).count(), 0);
        assert_eq!(store.records_of_kind(&RecordKind::Bisect).count(), 0);
    }
}
