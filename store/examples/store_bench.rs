//! Prints what the foundation costs on this machine: signatures made and verified per second,
//! records ingested into sled per second (verify + chain check + indexes), own appends with a
//! flush each, and blob throughput.
//!
//! `cargo run --release -p buildmesh-store --example store_bench [RECORDS]`

use std::time::Instant;

use buildmesh_protocol::docs::{Admission, Genesis, Role, SignedDoc};
use buildmesh_protocol::entitle;
use buildmesh_protocol::record::{Body, ChangeSource, CommitSeen, Record};
use buildmesh_protocol::trust::Trust;
use buildmesh_protocol::{Domain, Hash, SecretKey, Timestamp};
use buildmesh_store::Store;

fn body(i: u64) -> Body {
    Body::CommitSeen(CommitSeen {
        repo: "https://github.com/python/cpython.git".into(),
        branch: "main".into(),
        sha: format!("{i:040x}"),
        source: ChangeSource::Poller,
        requested_by: None,
        subject: Some("gh-12345: Fix a crash in the frobnicator".into()),
        request: None,
    })
}

// A mesh whose genesis admits `key` as an announcer.
fn trust_with_announcer(key: &SecretKey) -> Trust {
    let m = SecretKey::from_seed([9; 32]);
    let mut g = SignedDoc::new(&Genesis {
        name: "bench".into(),
        maintainers: vec![m.id()],
        threshold: 1,
        created: Timestamp(0),
    })
    .unwrap();
    g.sign(&m);
    let genesis = Genesis::verify(&g).unwrap();
    let mesh = genesis.mesh;
    let mut trust = Trust::new(genesis);
    let mut a = SignedDoc::new(&Admission {
        mesh,
        node: key.id(),
        name: "announcer".into(),
        roles: [Role::Announcer].into(),
        labels: Default::default(),
        owner: None,
        issued: Timestamp(0),
        expires: None,
    })
    .unwrap();
    a.sign(&m);
    trust.apply(&a).unwrap();
    trust
}

fn rate(n: usize, t: Instant) -> f64 {
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let key = SecretKey::from_seed([1; 32]);

    let t = Instant::now();
    let mut prev = Hash::ZERO;
    let records: Vec<Record> = (1..=n as u64)
        .map(|seq| {
            let r = Record::author(&key, seq, prev, Timestamp(seq), &body(seq)).unwrap();
            prev = r.hash;
            r
        })
        .collect();
    println!(
        "records encoded + signed:   {:>9.0} /s ({} bytes each)",
        rate(n, t),
        records[0].bytes.len()
    );

    let t = Instant::now();
    for r in &records {
        Record::verify(&r.bytes).unwrap();
    }
    println!("records decoded + verified: {:>9.0} /s", rate(n, t));

    let t = Instant::now();
    std::thread::scope(|scope| {
        for part in records.chunks(n.div_ceil(2)) {
            scope.spawn(move || {
                for r in part {
                    Record::verify(&r.bytes).unwrap();
                }
            });
        }
    });
    println!("records verified, 2 threads:{:>9.0} /s", rate(n, t));

    let sig = key.sign(Domain::Claim, b"x");
    let t = Instant::now();
    for _ in 0..n {
        key.id().verify(Domain::Claim, b"x", &sig).unwrap();
    }
    println!(
        "signatures verified:        {:>9.0} /s (verify_strict)",
        rate(n, t)
    );

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let t = Instant::now();
    for chunk in records.chunks(1000) {
        let bytes: Vec<&[u8]> = chunk.iter().map(|r| r.bytes.as_slice()).collect();
        for outcome in store.ingest_batch(&bytes) {
            outcome.unwrap();
        }
        store.flush().unwrap();
    }
    println!(
        "records ingested into sled: {:>9.0} /s (batches of 1000: verify, chain, indexes, flush)",
        rate(n, t)
    );
    assert_eq!(store.version_vector().unwrap().get(&key.id()), n as u64);

    // The same, with the node's gate before the store: author admitted at the record's time,
    // then entitlement (body decoded, role for the kind, due time).
    let trust = trust_with_announcer(&key);
    let dir2 = tempfile::tempdir().unwrap();
    let gated = Store::open(dir2.path()).unwrap();
    let now = Timestamp(n as u64 + 1);
    let t = Instant::now();
    for chunk in records.chunks(1000) {
        let bytes: Vec<&[u8]> = chunk.iter().map(|r| r.bytes.as_slice()).collect();
        let verified = buildmesh_store::verify_all(&bytes)
            .into_iter()
            .map(|v| {
                let r = v.unwrap();
                trust.may_author(&r.author_id(), r.envelope.time).unwrap();
                let body = r.body().ok();
                let e = entitle::record(&trust, &r.envelope, body.as_ref(), now);
                assert_eq!(e, entitle::Entitled::Counts);
                Ok(r)
            })
            .collect();
        for outcome in gated.ingest_verified(verified) {
            outcome.unwrap();
        }
        gated.flush().unwrap();
    }
    println!(
        "records gated + ingested:   {:>9.0} /s (as above, with admission and entitlement checks)",
        rate(n, t)
    );

    let t = Instant::now();
    let mut total = 0;
    for r in store.records_after(&key.id(), 0, usize::MAX).unwrap() {
        total += r.len();
    }
    println!(
        "records read back in order: {:>9.0} /s ({total} bytes)",
        rate(n, t)
    );

    let own = n.min(5_000);
    let me = SecretKey::from_seed([2; 32]);
    let t = Instant::now();
    for i in 0..own as u64 {
        store.append_own(&me, Timestamp(i), &body(i)).unwrap();
    }
    println!(
        "own records appended:       {:>9.0} /s (signed, flushed each)",
        rate(own, t)
    );

    let log =
        "test_frobnicator (test.test_frob.FrobTests.test_frobnicator) ... ok\n".repeat(15_000);
    let t = Instant::now();
    let h = store.put_blob(log.as_bytes()).unwrap();
    let back = store.blob(&h).unwrap().unwrap();
    assert_eq!(back.len(), log.len());
    println!(
        "blob of {:.1} MiB stored + read back in {:.1} ms",
        log.len() as f64 / 1048576.0,
        t.elapsed().as_secs_f64() * 1000.0
    );
    store.flush().unwrap();
    println!(
        "store on disk: {:.1} MiB for {} records",
        store.size_on_disk().unwrap() as f64 / 1048576.0,
        store.record_count()
    );
}
