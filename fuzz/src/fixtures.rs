//! A small mesh from fixed seeds. Signing is deterministic, so these are the same bytes on
//! every run: the committed corpus verifies, and [`Fixtures::genuine`] knows every message that
//! carries a valid signature.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::OnceLock;

use buildmesh_protocol::builders::BuilderConfig;
use buildmesh_protocol::codec;
use buildmesh_protocol::docs::{Admission, Genesis, Revocation, RevocationReason, Role, SignedDoc};
use buildmesh_protocol::election::Ballot;
use buildmesh_protocol::record::{
    Body, BuildResult, ChangeSource, Claim, CommitSeen, Envelope, JobKey, NotificationSent,
    Publish, Record, RecordKind, ResultCode, SignedRecord, StepResult,
};
use buildmesh_protocol::trust::Trust;
use buildmesh_protocol::vv::VersionVector;
use buildmesh_protocol::wire::{
    ApiAction, Heartbeat, Hello, HolderSignal, Progress, Request, Response, Signal, SignedRequest,
    SignedSignal,
};
use buildmesh_protocol::{Hash, SecretKey, Timestamp};

/// The time every fixture is dated.
pub const T0: Timestamp = Timestamp(1_780_000_000_000);

/// A builder configuration using every key the file format has.
pub const BUILDER_TOML: &str = r#"version = 3

[[builder]]
name = "linux-debug"
repo = "https://example.org/project.git"
branches = ["main", "3.*"]
tags = ["stable", "tier-1"]
requires = { os = "linux", arch = "*" }
env = { CFLAGS = "-O0", LANG = "C" }
priority = 10
max_attempts = 3

[[builder.step]]
name = "configure"
run = "./configure --with-pydebug"
timeout = "5m"

[[builder.step]]
name = "test"
run = "make test"
timeout = "1h 30m"
warn = ["Re-running failed tests", "^WARNING: .*"]
retries = 2

[[builder]]
name = "freebsd.release+lto"
repo = "git@example.org:project.git"
branches = ["*"]

[[builder.step]]
name = "build"
run = "gmake -j4"
"#;

/// A GitHub push payload (head commit named).
pub const GITHUB_PUSH: &str = r#"{"ref":"refs/heads/main","before":"0000000000000000000000000000000000000000","after":"0123456789abcdef0123456789abcdef01234567","repository":{"name":"r","clone_url":"https://github.com/o/r.git","html_url":"https://github.com/o/r","ssh_url":"git@github.com:o/r.git","git_url":"git://github.com/o/r.git"},"head_commit":{"id":"0123456789abcdef0123456789abcdef01234567","message":"Fix the parser\n\nLonger text."},"commits":[{"message":"Fix the parser\n\nLonger text."}]}"#;

/// A Gitea push payload in the older form (no head commit, commits oldest first), SHA-256 ids.
pub const GITEA_PUSH: &str = r#"{"ref":"refs/heads/release/1.x","after":"abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd","repository":{"clone_url":"https://gitea.example.org/o/r.git","html_url":"https://gitea.example.org/o/r","ssh_url":"ssh://git@gitea.example.org:2222/o/r.git"},"commits":[{"message":"first"},{"message":"  second, the head  \nbody"}]}"#;

/// A branch deletion: authentic, asks for no build.
pub const DELETE_PUSH: &str = r#"{"ref":"refs/heads/gone","after":"0000000000000000000000000000000000000000","repository":{"clone_url":"https://github.com/o/r.git"}}"#;

/// The fixture mesh.
#[derive(Debug)]
pub struct Fixtures {
    /// Signs the genesis and every maintainer document.
    pub maintainer: SecretKey,
    /// Admitted as worker.
    pub worker: SecretKey,
    /// Admitted as announcer.
    pub announcer: SecretKey,
    /// Admitted as notifier.
    pub notifier: SecretKey,
    /// The genesis document.
    pub genesis: SignedDoc,
    /// Admissions of worker, announcer and notifier.
    pub admissions: Vec<SignedDoc>,
    /// A revocation of a fourth key.
    pub revocation: SignedDoc,
    /// [`BUILDER_TOML`] as signed.
    pub config: SignedDoc,
    /// The genesis with every document above applied.
    pub trust: Trust,
    /// A record of each known kind and one of a kind unknown here.
    pub records: Vec<Record>,
    /// One signal of each kind.
    pub signals: Vec<SignedSignal>,
    /// A signed submit.
    pub request: SignedRequest,
    /// One request of each kind.
    pub wire_requests: Vec<Request>,
    /// One response of each kind.
    pub wire_responses: Vec<Response>,
    genuine: HashSet<Vec<u8>>,
}

impl Fixtures {
    /// Whether `signed` (a record envelope, document body, signal or request, as signed) is one
    /// of the fixtures' signed messages.
    pub fn genuine(&self, signed: &[u8]) -> bool {
        self.genuine.contains(signed)
    }

    /// Every document.
    pub fn docs(&self) -> Vec<&SignedDoc> {
        let mut out = vec![&self.genesis, &self.revocation, &self.config];
        out.extend(self.admissions.iter());
        out
    }
}

/// The fixture mesh, made once per process.
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(make)
}

fn signed<T: buildmesh_protocol::docs::DocBody>(body: &T, key: &SecretKey) -> SignedDoc {
    let mut doc = SignedDoc::new(body).expect("fixture documents encode");
    doc.sign(key);
    doc
}

fn admission(mesh: Hash, key: &SecretKey, name: &str, role: Role, m: &SecretKey) -> SignedDoc {
    let labels: BTreeMap<String, String> = [("os", "linux"), ("arch", "x86_64")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    signed(
        &Admission {
            mesh,
            node: key.id(),
            name: name.into(),
            roles: BTreeSet::from([role]),
            labels,
            owner: Some("ops@example.org".into()),
            issued: T0,
            expires: Some(Timestamp(T0.0 + 86_400_000)),
        },
        m,
    )
}

fn make() -> Fixtures {
    let maintainer = SecretKey::from_seed([1; 32]);
    let worker = SecretKey::from_seed([2; 32]);
    let announcer = SecretKey::from_seed([3; 32]);
    let notifier = SecretKey::from_seed([4; 32]);
    let retired = SecretKey::from_seed([5; 32]);

    let genesis = signed(
        &Genesis {
            name: "fuzz mesh".into(),
            maintainers: vec![maintainer.id()],
            threshold: 1,
            created: T0,
        },
        &maintainer,
    );
    let verified = Genesis::verify(&genesis).expect("fixture genesis verifies");
    let mesh = verified.mesh;
    let admissions = vec![
        admission(mesh, &worker, "w1", Role::Worker, &maintainer),
        admission(mesh, &announcer, "a1", Role::Announcer, &maintainer),
        admission(mesh, &notifier, "n1", Role::Notifier, &maintainer),
    ];
    let revocation = signed(
        &Revocation {
            mesh,
            subject: retired.id(),
            reason: RevocationReason::Retired,
            effective: T0,
            issued: T0,
        },
        &maintainer,
    );
    let config_body =
        BuilderConfig::from_toml(mesh, BUILDER_TOML).expect("fixture configuration parses");
    let config = signed(&config_body, &maintainer);

    let mut trust = Trust::new(verified);
    for d in admissions.iter().chain([&revocation, &config]) {
        trust.apply(d).expect("fixture documents apply");
    }

    let request = SignedRequest::sign(
        &maintainer,
        ApiAction::Submit {
            repo: "https://example.org/project.git".into(),
            branch: "main".into(),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
        },
        T0,
    );
    let key = JobKey {
        builder: "linux-debug".into(),
        repo: "https://example.org/project.git".into(),
        branch: "main".into(),
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        purpose: Default::default(),
    };
    let job = key.id();
    let author = |k: &SecretKey, seq: u64, prev: Hash, body: Body| {
        Record::author(k, seq, prev, Timestamp(T0.0 + seq), &body).expect("fixture records fit")
    };
    let claim = author(
        &worker,
        1,
        Hash::ZERO,
        Body::Claim(Claim {
            job,
            key: key.clone(),
            attempt: 1,
            lease_ms: 30_000,
        }),
    );
    let result = author(
        &worker,
        2,
        claim.hash,
        Body::BuildResult(BuildResult {
            job,
            key: key.clone(),
            attempt: 1,
            result: ResultCode::Flaky,
            steps: vec![StepResult {
                name: "test".into(),
                result: ResultCode::Flaky,
                exit_code: Some(0),
                duration_ms: 61_000,
                warnings: 2,
                log: Some(Hash::of(b"log")),
                failing_lines: vec!["FAIL: test_socket (test.test_socket.Tests)".into()],
            }],
            started: T0,
            finished: Timestamp(T0.0 + 61_000),
            config_version: 3,
        }),
    );
    let seen = author(
        &announcer,
        1,
        Hash::ZERO,
        Body::CommitSeen(CommitSeen {
            repo: key.repo.clone(),
            branch: key.branch.clone(),
            sha: key.sha.clone(),
            source: ChangeSource::Submit,
            requested_by: Some(maintainer.id()),
            subject: Some("Fix the parser".into()),
            request: Some(request.clone()),
        }),
    );
    let sent = author(
        &notifier,
        1,
        Hash::ZERO,
        Body::NotificationSent(NotificationSent {
            transition: Hash::of(b"transition"),
            builder: key.builder.clone(),
            branch: key.branch.clone(),
            sha: key.sha.clone(),
            message_id: "<t.fuzz@buildmesh>".into(),
            to: vec!["list@example.org".into()],
            term: 7,
        }),
    );
    let publish = author(
        &maintainer,
        1,
        Hash::ZERO,
        Body::Publish(Publish {
            doc: config.clone(),
        }),
    );
    let unknown = unknown_kind(&worker, 3, result.hash);
    let records = vec![claim, result, seen, sent, publish, unknown];

    let signals = vec![
        SignedSignal::sign(
            &worker,
            &Signal::Heartbeat(Heartbeat {
                node: worker.id(),
                time: T0,
                running: 1,
                capacity: 2,
                head: 2,
                addrs: vec!["/ip4/127.0.0.1/tcp/7701".into()],
                paused: None,
                lost: Vec::new(),
                // A node of a large mesh, beating every 2 s.
                every_ms: Some(2000),
            }),
        ),
        SignedSignal::sign(
            &worker,
            &Signal::Progress(Progress {
                node: worker.id(),
                time: T0,
                job,
                attempt: 1,
                step: "test".into(),
            }),
        ),
        SignedSignal::sign(
            &notifier,
            &Signal::Holder(HolderSignal {
                node: notifier.id(),
                time: T0,
                term: 7,
                lease_ms: 10_000,
            }),
        ),
    ];

    let mut vv = VersionVector::default();
    vv.0.insert(worker.id(), 2);
    vv.0.insert(announcer.id(), 1);
    let hello = Hello {
        mesh,
        admission: admissions[0].clone(),
    };
    let wire_requests = vec![
        Request::Hello(hello.clone()),
        Request::VersionVector(vv.clone()),
        Request::Pull {
            author: worker.id(),
            from: 1,
            max: 100,
        },
        Request::Blob(Hash::of(b"log")),
        Request::Ballot(Ballot::Ask {
            term: 8,
            candidate: notifier.id(),
            round: 1,
        }),
    ];
    let wire_responses = vec![
        Response::Hello(hello),
        Response::VersionVector(vv),
        Response::Records(
            records
                .iter()
                .map(|r| serde_bytes::ByteBuf::from(r.bytes.clone()))
                .collect(),
        ),
        Response::Blob(Some(serde_bytes::ByteBuf::from(b"log text\n".to_vec()))),
        Response::Ballots(vec![Ballot::PreAsk {
            term: 8,
            candidate: notifier.id(),
            round: 2,
        }]),
        Response::Refused("not admitted".into()),
    ];

    let mut genuine = HashSet::new();
    for r in &records {
        let s: SignedRecord = codec::decode("record", &r.bytes).expect("fixture records decode");
        genuine.insert(s.envelope);
    }
    for d in [&genesis, &revocation, &config]
        .into_iter()
        .chain(&admissions)
    {
        genuine.insert(d.body.clone());
    }
    for s in &signals {
        genuine.insert(s.bytes.clone());
    }
    genuine.insert(request.bytes.clone());

    Fixtures {
        maintainer,
        worker,
        announcer,
        notifier,
        genesis,
        admissions,
        revocation,
        config,
        trust,
        records,
        signals,
        request,
        wire_requests,
        wire_responses,
        genuine,
    }
}

// A record of a kind a newer node would write: this node keeps it without reading its body.
fn unknown_kind(key: &SecretKey, seq: u64, prev: Hash) -> Record {
    let kind = RecordKind::from_name("rebuild-request").expect("a valid kind name");
    let envelope = Envelope {
        author: key.id(),
        seq,
        prev,
        kind,
        time: Timestamp(T0.0 + seq),
        body: codec::encode("future body", &("anything", 42u32)).expect("encodes"),
    };
    let env_bytes = codec::encode("record envelope", &envelope).expect("encodes");
    let sig = key.sign_tagged(&kind.tag(), &env_bytes);
    let bytes = codec::encode(
        "record",
        &SignedRecord {
            envelope: env_bytes,
            sig,
        },
    )
    .expect("encodes");
    Record::verify(&bytes).expect("a record of an unknown kind verifies")
}
