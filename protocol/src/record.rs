//! Records: the signed, hash-chained entries of each node's own log, and their bodies.
//!
//! On the wire and on disk a record is a [`SignedRecord`]: the canonical CBOR of its
//! [`Envelope`] as opaque bytes, and the author's signature over exactly those bytes under the
//! domain tag of the record's kind. [`Record::verify`] refuses outer bytes that are not the one
//! canonical encoding (a relay must not make a second form of a record) and checks the
//! signature before the body is decoded; nothing is re-encoded to check a signature.
//!
//! Every record kind's body is here, with the caps on what they carry, so that the wire format
//! of a record can be read in one place; hence its length.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::docs::SignedDoc;
use crate::keys::{Domain, Hash, KeyError, NodeId, SecretKey, Signature};
use crate::time::Timestamp;

/// The largest record accepted, in bytes (a builder configuration rides in one). A node never
/// authors a larger one ([`Record::author`] refuses it), so its peers never refuse its chain.
pub const MAX_RECORD_BYTES: usize = 640 * 1024;

/// Caps on free text that comes from outside (forges, test output), applied when a record is
/// made so that it always fits: a commit's subject is its first line, at most this many
/// characters.
pub const MAX_SUBJECT_CHARS: usize = 200;
/// At most this many failing-test lines are kept per step ...
pub const MAX_FAILING_LINES: usize = 50;
/// ... each of at most this many characters.
pub const MAX_FAILING_LINE_CHARS: usize = 300;
/// Repository URLs and branch names longer than this are not announced.
pub const MAX_REF_CHARS: usize = 1024;

/// `text` cut to at most `max` characters, with `…` marking a cut.
pub fn cap_text(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A record that cannot be accepted.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not a record, or a body that does not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A kind this node does not know: the record is kept, its body is not read.
    #[error("record kind `{0}` is not known to this node")]
    UnknownKind(String),
    /// The signature does not match the author and bytes.
    #[error("forged or corrupted record: {0}")]
    BadSignature(#[from] KeyError),
    /// Sequence numbers start at 1.
    #[error("record with sequence number 0")]
    ZeroSeq,
    /// The record would be larger than peers accept; it is not written.
    #[error("a {kind} record of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its kind.
        kind: RecordKind,
        /// Its size.
        len: usize,
        /// [`MAX_RECORD_BYTES`].
        limit: usize,
    },
    /// The bytes decode, but are not the one encoding the author's node wrote: a relay changed
    /// them without touching the signed envelope. Refused so that a record has one form only.
    #[error("record bytes are not in canonical form")]
    NotCanonical,
    /// The first record of a log must point at the zero hash.
    #[error("record 1 of {author} has a non-zero prev hash")]
    BadGenesisLink {
        /// The author.
        author: NodeId,
    },
}

/// What a record says.
///
/// A kind this node does not know (a newer node's) is kept as [`RecordKind::Unknown`]: such a
/// record verifies, is stored and forwarded, and counts for nothing here, so that a mesh of
/// volunteer hosts can upgrade one host at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// See [`CommitSeen`].
    CommitSeen,
    /// See [`Claim`].
    Claim,
    /// See [`BuildResult`].
    BuildResult,
    /// See [`NotificationSent`].
    NotificationSent,
    /// See [`Publish`].
    Publish,
    /// See [`Rebuild`].
    Rebuild,
    /// See [`Cancel`].
    Cancel,
    /// See [`Bisect`].
    Bisect,
    /// See [`Probes`].
    Probes,
    /// A kind named by a newer version of the protocol.
    Unknown(KindName),
}

/// The name of a record kind this node does not know: up to [`KindName::MAX`] characters of
/// `a-z`, `0-9` and `-`, the form every kind's name has.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KindName {
    len: u8,
    bytes: [u8; KindName::MAX],
}

impl KindName {
    /// The longest kind name.
    pub const MAX: usize = 48;

    /// The name, if `s` has the form of one.
    pub fn new(s: &str) -> Option<Self> {
        let valid = !s.is_empty()
            && s.len() <= Self::MAX
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return None;
        }
        let mut bytes = [0u8; Self::MAX];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Some(KindName {
            len: s.len() as u8,
            bytes,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("?")
    }
}

impl fmt::Debug for KindName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KindName({})", self.as_str())
    }
}

impl RecordKind {
    const KNOWN: [RecordKind; 9] = [
        RecordKind::CommitSeen,
        RecordKind::Claim,
        RecordKind::BuildResult,
        RecordKind::NotificationSent,
        RecordKind::Publish,
        RecordKind::Rebuild,
        RecordKind::Cancel,
        RecordKind::Bisect,
        RecordKind::Probes,
    ];

    /// The kind's name, as it travels.
    pub fn name(&self) -> &str {
        match self {
            RecordKind::CommitSeen => "commit-seen",
            RecordKind::Claim => "claim",
            RecordKind::BuildResult => "build-result",
            RecordKind::NotificationSent => "notification-sent",
            RecordKind::Publish => "publish",
            RecordKind::Rebuild => "rebuild",
            RecordKind::Cancel => "cancel",
            RecordKind::Bisect => "bisect",
            RecordKind::Probes => "probes",
            RecordKind::Unknown(n) => n.as_str(),
        }
    }

    /// The kind named `name`: a known one, or an unknown one of a valid name.
    pub fn from_name(name: &str) -> Option<RecordKind> {
        Self::KNOWN
            .into_iter()
            .find(|k| k.name() == name)
            .or_else(|| KindName::new(name).map(RecordKind::Unknown))
    }

    /// Whether this node knows the kind.
    pub fn is_known(&self) -> bool {
        !matches!(self, RecordKind::Unknown(_))
    }

    /// The domain tag its signatures are made under: `buildmesh/v1/record/<name>`, for the
    /// kinds known here (their [`Domain`]) and for any kind a newer node adds.
    pub fn tag(&self) -> Vec<u8> {
        match self {
            RecordKind::CommitSeen => Domain::CommitSeen.tag().to_vec(),
            RecordKind::Claim => Domain::Claim.tag().to_vec(),
            RecordKind::BuildResult => Domain::BuildResult.tag().to_vec(),
            RecordKind::NotificationSent => Domain::NotificationSent.tag().to_vec(),
            RecordKind::Publish => Domain::Publish.tag().to_vec(),
            RecordKind::Rebuild => Domain::Rebuild.tag().to_vec(),
            RecordKind::Cancel => Domain::Cancel.tag().to_vec(),
            RecordKind::Bisect => Domain::Bisect.tag().to_vec(),
            RecordKind::Probes => Domain::Probes.tag().to_vec(),
            RecordKind::Unknown(n) => format!("buildmesh/v1/record/{}", n.as_str()).into_bytes(),
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for RecordKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The same bytes as the unit variants of a kebab-case enum: a text string.
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for RecordKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        RecordKind::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("`{name}` is not a record kind name")))
    }
}

/// The signed part of a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Whose log this belongs to.
    pub author: NodeId,
    /// Position in the author's log, from 1.
    pub seq: u64,
    /// Hash of the author's record `seq - 1` ([`Hash::ZERO`] for `seq` 1).
    pub prev: Hash,
    /// What the body is.
    pub kind: RecordKind,
    /// The author's clock when it wrote the record.
    pub time: Timestamp,
    /// Canonical CBOR of the body.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// A record as stored and sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    /// Canonical CBOR of the [`Envelope`].
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
    /// The author's signature over `envelope` under the kind's domain.
    pub sig: Signature,
}

/// A record whose signature was checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The decoded envelope (its body still as bytes).
    pub envelope: Envelope,
    /// The record's hash: of its envelope bytes.
    pub hash: Hash,
    /// The [`SignedRecord`] encoding, as stored and sent.
    pub bytes: Vec<u8>,
}

impl Record {
    /// Writes and signs a record.
    pub fn author(
        key: &SecretKey,
        seq: u64,
        prev: Hash,
        time: Timestamp,
        body: &Body,
    ) -> Result<Record, RecordError> {
        let envelope = Envelope {
            author: key.id(),
            seq,
            prev,
            kind: body.kind(),
            time,
            body: body.encode()?,
        };
        let env_bytes = codec::encode("record envelope", &envelope)?;
        let sig = key.sign_tagged(&envelope.kind.tag(), &env_bytes);
        let hash = Hash::of(&env_bytes);
        let bytes = codec::encode(
            "record",
            &SignedRecord {
                envelope: env_bytes,
                sig,
            },
        )?;
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge {
                kind: envelope.kind,
                len: bytes.len(),
                limit: MAX_RECORD_BYTES,
            });
        }
        Ok(Record {
            envelope,
            hash,
            bytes,
        })
    }

    /// Reads a record and checks its signature and link shape. Does not check the author's
    /// admission or the chain (see `Trust` and the store).
    pub fn verify(bytes: &[u8]) -> Result<Record, RecordError> {
        let signed: SignedRecord = codec::decode_limited("record", bytes, MAX_RECORD_BYTES)?;
        if codec::encode("record", &signed)? != bytes {
            return Err(RecordError::NotCanonical);
        }
        let envelope: Envelope = codec::decode("record envelope", &signed.envelope)?;
        envelope
            .author
            .verify_tagged(&envelope.kind.tag(), &signed.envelope, &signed.sig)?;
        if envelope.seq == 0 {
            return Err(RecordError::ZeroSeq);
        }
        if envelope.seq == 1 && envelope.prev != Hash::ZERO {
            return Err(RecordError::BadGenesisLink {
                author: envelope.author,
            });
        }
        Ok(Record {
            hash: Hash::of(&signed.envelope),
            envelope,
            bytes: bytes.to_vec(),
        })
    }

    /// Reads a record from this node's own store, where it was verified on the way in: decodes
    /// and hashes, skipping the signature check.
    pub fn from_trusted(bytes: &[u8]) -> Result<Record, RecordError> {
        let signed: SignedRecord = codec::decode("stored record", bytes)?;
        let envelope: Envelope = codec::decode("stored record envelope", &signed.envelope)?;
        Ok(Record {
            hash: Hash::of(&signed.envelope),
            envelope,
            bytes: bytes.to_vec(),
        })
    }

    /// The author.
    pub fn author_id(&self) -> NodeId {
        self.envelope.author
    }

    /// The sequence number.
    pub fn seq(&self) -> u64 {
        self.envelope.seq
    }

    /// The body, decoded according to the kind.
    pub fn body(&self) -> Result<Body, RecordError> {
        Body::decode(self.envelope.kind, &self.envelope.body)
    }
}

/// Every kind of record body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "kebab-case")]
pub enum Body {
    /// See [`CommitSeen`].
    CommitSeen(CommitSeen),
    /// See [`Claim`].
    Claim(Claim),
    /// See [`BuildResult`].
    BuildResult(BuildResult),
    /// See [`NotificationSent`].
    NotificationSent(NotificationSent),
    /// See [`Publish`].
    Publish(Publish),
    /// See [`Rebuild`].
    Rebuild(Rebuild),
    /// See [`Cancel`].
    Cancel(Cancel),
    /// See [`Bisect`].
    Bisect(Bisect),
    /// See [`Probes`].
    Probes(Probes),
}

impl Body {
    /// The record kind that carries this body.
    pub fn kind(&self) -> RecordKind {
        match self {
            Body::CommitSeen(_) => RecordKind::CommitSeen,
            Body::Claim(_) => RecordKind::Claim,
            Body::BuildResult(_) => RecordKind::BuildResult,
            Body::NotificationSent(_) => RecordKind::NotificationSent,
            Body::Publish(_) => RecordKind::Publish,
            Body::Rebuild(_) => RecordKind::Rebuild,
            Body::Cancel(_) => RecordKind::Cancel,
            Body::Bisect(_) => RecordKind::Bisect,
            Body::Probes(_) => RecordKind::Probes,
        }
    }

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        match self {
            Body::CommitSeen(b) => codec::encode("commit-seen body", b),
            Body::Claim(b) => codec::encode("claim body", b),
            Body::BuildResult(b) => codec::encode("build-result body", b),
            Body::NotificationSent(b) => codec::encode("notification-sent body", b),
            Body::Publish(b) => codec::encode("publish body", b),
            Body::Rebuild(b) => codec::encode("rebuild body", b),
            Body::Cancel(b) => codec::encode("cancel body", b),
            Body::Bisect(b) => codec::encode("bisect body", b),
            Body::Probes(b) => codec::encode("probes body", b),
        }
    }

    /// Decodes the body bytes of a record of `kind`.
    pub fn decode(kind: RecordKind, bytes: &[u8]) -> Result<Body, RecordError> {
        Ok(match kind {
            RecordKind::CommitSeen => Body::CommitSeen(codec::decode("commit-seen body", bytes)?),
            RecordKind::Claim => Body::Claim(codec::decode("claim body", bytes)?),
            RecordKind::BuildResult => {
                Body::BuildResult(codec::decode("build-result body", bytes)?)
            }
            RecordKind::NotificationSent => {
                Body::NotificationSent(codec::decode("notification-sent body", bytes)?)
            }
            RecordKind::Publish => Body::Publish(codec::decode("publish body", bytes)?),
            RecordKind::Rebuild => Body::Rebuild(codec::decode("rebuild body", bytes)?),
            RecordKind::Cancel => Body::Cancel(codec::decode("cancel body", bytes)?),
            RecordKind::Bisect => Body::Bisect(codec::decode("bisect body", bytes)?),
            RecordKind::Probes => Body::Probes(codec::decode("probes body", bytes)?),
            RecordKind::Unknown(n) => return Err(RecordError::UnknownKind(n.as_str().into())),
        })
    }
}

/// Where an announcement came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeSource {
    /// `buildmesh submit`.
    Submit,
    /// An announcer's git poller.
    Poller,
    /// A push webhook.
    Webhook,
}

/// A commit someone announced. Announcements of the same (repo, branch, sha) collapse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitSeen {
    /// Repository URL as the builders name it.
    pub repo: String,
    /// Branch name.
    pub branch: String,
    /// Full commit id.
    pub sha: String,
    /// Who announced it and how.
    pub source: ChangeSource,
    /// The key that asked for it (a developer's `submit`), when not the record's author.
    pub requested_by: Option<NodeId>,
    /// The commit's first line, when known (at most [`MAX_SUBJECT_CHARS`]).
    pub subject: Option<String>,
    /// The caller's signed request, when the record's author announces on someone's behalf:
    /// every node checks the caller's role from it (see [`crate::entitle`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<crate::wire::SignedRequest>,
}

impl CommitSeen {
    /// The subject as a record carries it: the first line of `message`, capped.
    pub fn subject_of(message: &str) -> String {
        cap_text(
            message.lines().next().unwrap_or("").trim(),
            MAX_SUBJECT_CHARS,
        )
    }
}

/// What a job is: one builder on one commit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobKey {
    /// Builder name.
    pub builder: String,
    /// Repository URL.
    pub repo: String,
    /// Branch.
    pub branch: String,
    /// Commit id.
    pub sha: String,
    /// Why the job exists: an ordinary build (the default, and then not written, so that the
    /// ids of ordinary jobs are what they always were), a confirmation of a red, or a
    /// re-validation of a quarantined worker.
    #[serde(default, skip_serializing_if = "Purpose::is_build")]
    pub purpose: Purpose,
}

/// Why a job exists (see [`crate::health`]).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// An ordinary build of an announced commit.
    #[default]
    Build,
    /// Reproduces the red of `job`'s `attempt`, which `worker` reported, on another host.
    Confirm {
        /// The job whose red it confirms.
        job: Hash,
        /// Its attempt.
        attempt: u32,
        /// Who reported the red.
        worker: NodeId,
    },
    /// Builds a commit again on someone's request (`buildmesh rebuild`): a job of its own,
    /// whatever the commit's other jobs came to, whose result becomes the builder's current one.
    Rebuild {
        /// The hash of the caller's signed request (one rebuild per request).
        request: Hash,
        /// The caller: it may cancel the build.
        by: NodeId,
    },
    /// Builds one commit of a culprit search on the worker the search chose (only that worker
    /// takes it).
    Probe {
        /// The search: the hash of its `Bisect` record.
        bisection: Hash,
        /// The worker.
        worker: NodeId,
    },
    /// Builds a known-green commit on a quarantined worker, so that it can earn its way out.
    Revalidate {
        /// The quarantined worker.
        worker: NodeId,
        /// Which of its quarantines (from 1).
        episode: u32,
        /// Which of this quarantine's re-validation builds (from 1).
        n: u32,
    },
}

impl Purpose {
    /// Whether it is an ordinary build.
    pub fn is_build(&self) -> bool {
        *self == Purpose::Build
    }

    /// Whether its result is the commit's result on its builder, as an ordinary build's is:
    /// an ordinary build or a rebuild (a confirmation or a re-validation is about a host).
    pub fn is_ordinary(&self) -> bool {
        matches!(self, Purpose::Build | Purpose::Rebuild { .. })
    }
}

impl JobKey {
    /// The job id: a hash of builder and commit.
    pub fn id(&self) -> Hash {
        let bytes = codec::encode("job key", self).expect("a job key always encodes");
        Hash::of_tagged(Domain::Ephemeral, &bytes)
    }
}

/// A worker takes a job for one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The job id.
    pub job: Hash,
    /// What the job is.
    pub key: JobKey,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// How long the claim holds without a progress heartbeat, in milliseconds.
    pub lease_ms: u64,
}

/// How a build or step ended, as buildbot users know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultCode {
    /// Green.
    Success,
    /// Orange: a warning pattern matched.
    Warnings,
    /// Red.
    Failure,
    /// Orange: a failing step passed on retry.
    Flaky,
    /// Purple: the infrastructure failed; retried elsewhere, never red.
    Exception,
    /// Stopped before it ended.
    Cancelled,
}

impl ResultCode {
    /// Whether it is a verdict on the code (green, orange or red): an exception or a
    /// cancellation says nothing about the commit.
    pub fn is_verdict(self) -> bool {
        matches!(
            self,
            ResultCode::Success | ResultCode::Warnings | ResultCode::Failure | ResultCode::Flaky
        )
    }
}

/// Where a build stands as the views show it: a result code once it has one, else pending,
/// running or skipped. Serialised as the same words (`success`, `running`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuildState {
    /// Not claimed in its current attempt.
    Pending,
    /// Claimed, running.
    Running,
    /// Never built: a newer commit was built instead.
    Skipped,
    /// Green.
    Success,
    /// Orange: a warning pattern matched.
    Warnings,
    /// Red.
    Failure,
    /// Orange: a failing step passed on retry.
    Flaky,
    /// Purple: the infrastructure failed (or every attempt did).
    Exception,
    /// Stopped before it ended.
    Cancelled,
    /// Red on one worker, waiting for another host to reproduce it before the list hears.
    Unconfirmed,
    /// Red on one worker and not reproduced on another host: a suspected host fault, not a
    /// verdict on the code (the commit's verdict is the other host's).
    HostFault,
}

impl BuildState {
    /// The word the API and the CLI show.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Pending => "pending",
            BuildState::Running => "running",
            BuildState::Skipped => "skipped",
            BuildState::Success => "success",
            BuildState::Warnings => "warnings",
            BuildState::Failure => "failure",
            BuildState::Flaky => "flaky",
            BuildState::Exception => "exception",
            BuildState::Cancelled => "cancelled",
            BuildState::Unconfirmed => "unconfirmed",
            BuildState::HostFault => "host-fault",
        }
    }

    /// The result code, once the build has one.
    pub fn result(self) -> Option<ResultCode> {
        Some(match self {
            BuildState::Success => ResultCode::Success,
            BuildState::Warnings => ResultCode::Warnings,
            BuildState::Failure => ResultCode::Failure,
            BuildState::Flaky => ResultCode::Flaky,
            BuildState::Exception => ResultCode::Exception,
            BuildState::Cancelled => ResultCode::Cancelled,
            // Not reproduced elsewhere: the code is as the other host found it, not red.
            BuildState::HostFault => ResultCode::Success,
            BuildState::Pending
            | BuildState::Running
            | BuildState::Skipped
            | BuildState::Unconfirmed => return None,
        })
    }

    /// Whether it is a verdict on the code (see [`ResultCode::is_verdict`]).
    pub fn is_verdict(self) -> bool {
        self.result().is_some_and(ResultCode::is_verdict)
    }

    /// Whether it will change no more on its own (everything but pending, running and an
    /// unconfirmed red).
    pub fn is_settled(self) -> bool {
        !matches!(
            self,
            BuildState::Pending | BuildState::Running | BuildState::Unconfirmed
        )
    }
}

impl From<ResultCode> for BuildState {
    fn from(c: ResultCode) -> Self {
        match c {
            ResultCode::Success => BuildState::Success,
            ResultCode::Warnings => BuildState::Warnings,
            ResultCode::Failure => BuildState::Failure,
            ResultCode::Flaky => BuildState::Flaky,
            ResultCode::Exception => BuildState::Exception,
            ResultCode::Cancelled => BuildState::Cancelled,
        }
    }
}

impl fmt::Display for BuildState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for BuildState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for BuildState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResultCode::Success => "success",
            ResultCode::Warnings => "warnings",
            ResultCode::Failure => "failure",
            ResultCode::Flaky => "flaky",
            ResultCode::Exception => "exception",
            ResultCode::Cancelled => "cancelled",
        })
    }
}

/// One step's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    /// Step name.
    pub name: String,
    /// How it ended.
    pub result: ResultCode,
    /// The process's exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Wall time.
    pub duration_ms: u64,
    /// Lines that matched a warning pattern.
    pub warnings: u32,
    /// Digest of the step's log blob.
    pub log: Option<Hash>,
    /// For flaky steps: the lines of the failed run that named failures.
    pub failing_lines: Vec<String>,
}

/// A worker's signed verdict on one attempt of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildResult {
    /// The job id.
    pub job: Hash,
    /// What the job is.
    pub key: JobKey,
    /// Which attempt.
    pub attempt: u32,
    /// The overall result.
    pub result: ResultCode,
    /// Each step that ran.
    pub steps: Vec<StepResult>,
    /// When the build started, on the worker's clock.
    pub started: Timestamp,
    /// When it ended.
    pub finished: Timestamp,
    /// The builder configuration version it ran under.
    pub config_version: u64,
}

impl BuildResult {
    /// Caps what came from the build's output (failing-test lines) so that the record fits:
    /// [`MAX_FAILING_LINES`] of [`MAX_FAILING_LINE_CHARS`] per step, then, while the encoded
    /// result is still too large for a record, failing lines are dropped from the last step
    /// back (the step results themselves always stay).
    pub fn fit(&mut self) {
        for s in &mut self.steps {
            s.failing_lines.truncate(MAX_FAILING_LINES);
            for l in &mut s.failing_lines {
                if l.chars().count() > MAX_FAILING_LINE_CHARS {
                    *l = cap_text(l, MAX_FAILING_LINE_CHARS);
                }
            }
        }
        // Room for the envelope and signature around the body.
        let budget = MAX_RECORD_BYTES - 4096;
        while codec::encode("build-result body", self).map_or(0, |b| b.len()) > budget {
            let Some(step) = self
                .steps
                .iter_mut()
                .rev()
                .find(|s| !s.failing_lines.is_empty())
            else {
                break;
            };
            let keep = step.failing_lines.len() / 2;
            step.failing_lines.truncate(keep);
        }
    }
}

/// The notifier sent the mail for one transition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationSent {
    /// The transition's key (builder, branch, commit, kind), hashed.
    pub transition: Hash,
    /// Builder.
    pub builder: String,
    /// Branch.
    pub branch: String,
    /// Commit.
    pub sha: String,
    /// The Message-ID, derived from the transition.
    pub message_id: String,
    /// Recipients.
    pub to: Vec<String>,
    /// The election term of the sender.
    pub term: u64,
}

/// A rebuild a caller asked for: one new job per builder named, each a [`Purpose::Rebuild`]
/// of the commit, ordered after every earlier build of it (by this record's time) so that its
/// result becomes the builder's current one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuild {
    /// Repository.
    pub repo: String,
    /// Branch.
    pub branch: String,
    /// Full commit id.
    pub sha: String,
    /// The builders to build it again; empty for every builder that builds the commit.
    pub builders: Vec<String>,
    /// The caller's signed request ([`crate::wire::ApiAction::Rebuild`]): every node checks
    /// the caller's role from it.
    pub request: crate::wire::SignedRequest,
}

impl Rebuild {
    /// The purpose of its jobs.
    pub fn purpose(&self) -> Option<Purpose> {
        let req = self.request.verify().ok()?;
        Some(Purpose::Rebuild {
            request: Hash::of(&self.request.bytes),
            by: req.key,
        })
    }
}

/// A caller stops a build (`buildmesh cancel`): a running one on whichever worker runs it, a
/// pending one before anyone claims it. The job ends `cancelled`, final, never mailed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The job.
    pub job: Hash,
    /// The caller's signed request ([`crate::wire::ApiAction::Cancel`]).
    pub request: crate::wire::SignedRequest,
}

/// The most commits a culprit search covers.
pub const MAX_BISECT_COMMITS: usize = 1_000;

/// A culprit search over a builder's commits between a good and a bad one: started by the
/// notifier holder after a red that followed commits the builder did not build, or by a
/// caller (`buildmesh bisect`). The node that decides its probes (the notifier holder) records
/// each of its steps as a [`Probes`] record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bisect {
    /// Builder.
    pub builder: String,
    /// Repository.
    pub repo: String,
    /// Branch.
    pub branch: String,
    /// The first-parent line, oldest first: the good commit, every commit after it, the bad
    /// one last (2 to [`MAX_BISECT_COMMITS`]).
    pub shas: Vec<String>,
    /// The worker whose red of the bad commit the search starts from.
    pub red_worker: NodeId,
    /// The most probes of one split round (none: one per idle worker; 1 is the classic binary
    /// search, one probe at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_split: Option<u32>,
    /// The caller's signed request ([`crate::wire::ApiAction::Bisect`]), for a search a caller
    /// asked for; none for one the notifier holder started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<crate::wire::SignedRequest>,
}

impl Bisect {
    /// The rules' settings every node replays this search with.
    pub fn settings(&self) -> crate::bisect::BisectSettings {
        crate::bisect::BisectSettings {
            max_split: self.max_split.map_or(usize::MAX, |m| m.max(1) as usize),
            ..Default::default()
        }
    }
}

/// One step of a culprit search, as the node deciding it (the notifier holder) took it: the
/// probe outcomes it learnt since the last step, the idle workers and the time it decided at,
/// and the probes it started (see [`crate::bisect::Bisection::step`]). Replaying the steps in
/// order gives every node the same search.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probes {
    /// The search: its `Bisect` record's hash.
    pub bisection: Hash,
    /// Which step (from 0): steps apply in order.
    pub step: u32,
    /// The author's notifier term: of two holders' versions of one step, the later term's
    /// counts.
    pub term: u64,
    /// Outcomes learnt since the last step: (commit index, worker, outcome).
    pub reports: Vec<(u32, NodeId, crate::bisect::Outcome)>,
    /// Idle workers the step could use.
    pub idle: Vec<NodeId>,
    /// When it was decided.
    pub now: Timestamp,
    /// The probes it started: (commit index, worker).
    pub probes: Vec<(u32, NodeId)>,
    /// The culprit, once this step named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub culprit: Option<crate::bisect::Culprit>,
}

/// A maintainer-signed document, published through a node's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The document, as signed.
    pub doc: SignedDoc,
}
