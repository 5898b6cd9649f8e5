//! What nodes say to each other that is not a log record: the request-response protocol
//! (hello at the door, version vectors, pulls, blobs) and the ephemeral signed gossip
//! (heartbeats). Records themselves travel as their stored bytes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::docs::SignedDoc;
use crate::keys::{Domain, Hash, KeyError, NodeId, SecretKey, Signature};
use crate::time::Timestamp;
use crate::vv::VersionVector;

/// The largest request or response frame, in bytes.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;
/// The largest request frame: requests are small (a hello carries one admission, a version
/// vector some 45 bytes per author), so a peer, admitted or not, never makes a node read and
/// decode more than this before its request is judged.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// The most records one pull answer carries.
pub const MAX_PULL_RECORDS: u32 = 2000;
/// The most bytes of records one pull answer carries (the answer stops before exceeding it).
pub const MAX_PULL_BYTES: usize = 4 * 1024 * 1024;
/// The most bytes of a packed blob one [`Request::BlobPart`] answer carries: a log of any size
/// up to the step log cap moves in parts well under [`MAX_FRAME_BYTES`].
pub const MAX_BLOB_PART: u32 = 4 * 1024 * 1024;

/// A request from one node to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    /// "Here is my admission": the first thing said on a connection.
    Hello(Hello),
    /// "Here is what I hold": answered with the other side's version vector.
    VersionVector(VersionVector),
    /// "Send me `author`'s records from `from` on, at most `max`".
    Pull {
        /// Whose log.
        author: NodeId,
        /// First seq wanted.
        from: u64,
        /// At most this many.
        max: u32,
    },
    /// "Send me this blob" (whole: for small blobs, and peers that do not know parts).
    Blob(Hash),
    /// "Send me `max` bytes (at most [`MAX_BLOB_PART`]) of this blob's packed form from
    /// `offset` on".
    BlobPart {
        /// The blob.
        hash: Hash,
        /// Where in its packed form.
        offset: u64,
        /// How much.
        max: u32,
    },
    /// A notifier-election ballot.
    Ballot(crate::election::Ballot),
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    /// The other side's hello.
    Hello(Hello),
    /// The other side's version vector.
    VersionVector(VersionVector),
    /// Records, in seq order, as stored.
    Records(Vec<serde_bytes::ByteBuf>),
    /// The blob, if held.
    Blob(Option<serde_bytes::ByteBuf>),
    /// A part of a blob's packed form, if held.
    BlobPart(Option<BlobPart>),
    /// The answers to a ballot.
    Ballots(Vec<crate::election::Ballot>),
    /// The request was refused, and why.
    Refused(String),
}

/// A part of a blob as stored: compressed, so that parts move compressed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobPart {
    /// The packed form's whole length.
    pub total: u64,
    /// Where this part starts in it.
    pub offset: u64,
    /// The bytes.
    pub bytes: serde_bytes::ByteBuf,
}

/// A node's pass at the door.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The mesh the node belongs to.
    pub mesh: Hash,
    /// Its admission (the peer id of the connection must be the admitted key).
    pub admission: SignedDoc,
}

/// What is gossiped on the mesh topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gossip {
    /// A new record, as stored.
    Record(serde_bytes::ByteBuf),
    /// A signed ephemeral message.
    Signal(SignedSignal),
}

/// Unstored messages: signed by their sender so they cannot be forged on the way, but never
/// kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Signal {
    /// "I am alive, and this busy".
    Heartbeat(Heartbeat),
    /// "I am still running this build": renews the claim's lease.
    Progress(Progress),
    /// "I hold the notifier lease for this term."
    Holder(HolderSignal),
}

/// The notifier holder's periodic word.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderSignal {
    /// The holder.
    pub node: NodeId,
    /// Its clock.
    pub time: Timestamp,
    /// The term it holds.
    pub term: u64,
    /// How much longer its lease runs, in milliseconds.
    pub lease_ms: u64,
}

/// A running build's sign of life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The worker.
    pub node: NodeId,
    /// The worker's clock.
    pub time: Timestamp,
    /// The job.
    pub job: Hash,
    /// The attempt.
    pub attempt: u32,
    /// The step running now.
    pub step: String,
}

/// Liveness and load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender.
    pub node: NodeId,
    /// The sender's clock.
    pub time: Timestamp,
    /// Builds running now.
    pub running: u32,
    /// Builds it may run at once.
    pub capacity: u32,
    /// The sender's own log head: lets others notice they miss records.
    pub head: u64,
    /// Addresses the sender listens on, so that others can dial it.
    pub addrs: Vec<String>,
    /// Why its worker claims nothing now (a self-check failed: low disk, a failing check
    /// command). Not written when it claims, so heartbeats encode as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// Admitted peers whose every connection to the sender closed (a reset or a killed
    /// process, not a silence) and that it has not heard from since. A worker that a majority
    /// of the live nodes lost is gone: its leases lapse at once ([`crate::claims`]). Not
    /// written when empty, so heartbeats encode as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<NodeId>,
    /// How often the sender beats, in milliseconds, when that is not once a second (it beats
    /// less often in a large mesh: [`beat_interval`]). Receivers stretch the time they count
    /// it live by as much ([`Heartbeat::live_for`]). Not written at once a second, so
    /// heartbeats encode as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
}

/// A mesh of up to this many admitted nodes beats at the configured interval; every further
/// this many stretch it once more.
pub const BEAT_NODES: usize = 25;

/// How far one heartbeat may stretch its sender's liveness: a node that says it beats rarely
/// is not taken as live for longer than this many windows.
pub const MAX_BEAT_STRETCH: u32 = 10;

/// How often a node beats in a mesh of `admitted` nodes, at `base` (its configured interval)
/// in a mesh of up to [`BEAT_NODES`]: every heartbeat reaches every node, so the mesh's idle
/// traffic grows as n² in all and n per node. The interval grows with the mesh (twice the base
/// at 26 to 50 nodes, four times at 76 to 100), which keeps a node's idle load about flat.
/// A lost connection is still told at once, by a heartbeat out of turn.
pub fn beat_interval(base: Duration, admitted: usize) -> Duration {
    let stretch = admitted
        .div_ceil(BEAT_NODES)
        .clamp(1, MAX_BEAT_STRETCH as usize);
    base * stretch as u32
}

impl Heartbeat {
    /// How long after this heartbeat its sender counts as live, for a receiver whose own
    /// interval and window are `every` and `window`: the window stretched as the sender's
    /// interval is stretched against the receiver's, by at most [`MAX_BEAT_STRETCH`].
    pub fn live_for(&self, every: Duration, window: Duration) -> Duration {
        let Some(ms) = self.every_ms else {
            return window;
        };
        let theirs = Duration::from_millis(ms);
        if theirs <= every || every.is_zero() {
            return window;
        }
        let stretch = theirs.as_secs_f64() / every.as_secs_f64();
        window.mul_f64(stretch.min(f64::from(MAX_BEAT_STRETCH)))
    }
}

impl Signal {
    /// Who sent it.
    pub fn sender(&self) -> NodeId {
        match self {
            Signal::Heartbeat(h) => h.node,
            Signal::Progress(p) => p.node,
            Signal::Holder(h) => h.node,
        }
    }

    /// The sender's clock when it was sent.
    pub fn time(&self) -> Timestamp {
        match self {
            Signal::Heartbeat(h) => h.time,
            Signal::Progress(p) => p.time,
            Signal::Holder(h) => h.time,
        }
    }
}

/// A [`Signal`] and its sender's signature over its exact bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedSignal {
    /// Canonical CBOR of the signal.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    /// The sender's signature.
    pub sig: Signature,
}

/// A signal that does not verify.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// It does not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// It is not signed by its sender.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl SignedSignal {
    /// Signs a signal; `key` must be the sender's.
    pub fn sign(key: &SecretKey, signal: &Signal) -> Self {
        let bytes = codec::encode("signal", signal).expect("signals always encode");
        let sig = key.sign(Domain::Ephemeral, &bytes);
        SignedSignal { bytes, sig }
    }

    /// Checks the signature against the sender named inside, and returns the signal.
    pub fn verify(&self) -> Result<Signal, SignalError> {
        let signal: Signal = codec::decode("signal", &self.bytes)?;
        signal
            .sender()
            .verify(Domain::Ephemeral, &self.bytes, &self.sig)?;
        Ok(signal)
    }
}

impl Gossip {
    /// Encodes for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode("gossip", self).expect("gossip always encodes")
    }

    /// Decodes from the wire.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode_limited("gossip", bytes, crate::record::MAX_RECORD_BYTES + 1024)
    }
}

/// A write asked of a node's API by someone holding a key (a developer's `submit`): signed so
/// that the node can check the caller's role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRequest {
    /// Canonical CBOR of the [`ApiRequest`].
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    /// The caller's signature under the request domain.
    pub sig: Signature,
}

/// What a signed request asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiRequest {
    /// Who asks.
    pub key: NodeId,
    /// The caller's clock: a request older than a few minutes is refused (no replays).
    pub time: Timestamp,
    /// What.
    pub action: ApiAction,
}

/// The writes a caller may ask for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiAction {
    /// Announce a commit.
    Submit {
        /// Repository URL as the builders name it.
        repo: String,
        /// Branch.
        branch: String,
        /// Full commit id.
        sha: String,
    },
    /// Build a commit again (`buildmesh rebuild`).
    Rebuild {
        /// The commit, as the caller typed it (a full id or an unambiguous prefix).
        sha: String,
        /// Its branch, when the caller named one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        branch: Option<String>,
        /// The builder; `None` for every builder of the commit (`--all`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        builder: Option<String>,
    },
    /// Search for the first bad commit between two (`buildmesh bisect`).
    Bisect {
        /// The builder.
        builder: String,
        /// Its branch, when the caller named one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        branch: Option<String>,
        /// The good commit, as typed.
        good: String,
        /// The bad commit, as typed.
        bad: String,
    },
    /// Stop a build (`buildmesh cancel`).
    Cancel {
        /// The build as the caller named it: a build id (`<job prefix>[-<attempt>]`).
        build: String,
    },
}

impl ApiAction {
    /// Whether a rebuild record for `builders` of (`branch`, `sha`) is what this asks for.
    pub fn asks_rebuild(&self, r_branch: &str, r_sha: &str, builders: &[String]) -> bool {
        match self {
            ApiAction::Rebuild {
                sha,
                branch,
                builder,
            } => {
                sha.len() >= MIN_SHA_PREFIX
                    && r_sha.starts_with(sha.as_str())
                    && branch.as_deref().is_none_or(|b| b == r_branch)
                    && match builder {
                        Some(b) => builders.len() == 1 && builders[0] == *b,
                        None => builders.is_empty(),
                    }
            }
            _ => false,
        }
    }

    /// Whether a bisect record for `builder` on `r_branch` over `shas` is what this asks for.
    pub fn asks_bisect(&self, r_builder: &str, r_branch: &str, shas: &[String]) -> bool {
        let prefix = |typed: &str, full: Option<&String>| {
            typed.len() >= MIN_SHA_PREFIX && full.is_some_and(|f| f.starts_with(typed))
        };
        match self {
            ApiAction::Bisect {
                builder,
                branch,
                good,
                bad,
            } => {
                builder == r_builder
                    && branch.as_deref().is_none_or(|b| b == r_branch)
                    && prefix(good, shas.first())
                    && prefix(bad, shas.last())
            }
            _ => false,
        }
    }

    /// Whether a cancel record for `job` is what this asks for.
    pub fn asks_cancel(&self, job: &Hash) -> bool {
        match self {
            ApiAction::Cancel { build } => {
                let prefix = build.split_once('-').map_or(build.as_str(), |(p, _)| p);
                prefix.len() >= MIN_SHA_PREFIX
                    && job.to_string().starts_with(&prefix.to_ascii_lowercase())
            }
            _ => false,
        }
    }
}

/// The shortest commit or build id prefix a request may name: what `git log --oneline` shows.
pub const MIN_SHA_PREFIX: usize = 7;

impl SignedRequest {
    /// Signs a request with the caller's key.
    pub fn sign(key: &SecretKey, action: ApiAction, time: Timestamp) -> Self {
        let req = ApiRequest {
            key: key.id(),
            time,
            action,
        };
        let bytes = codec::encode("request", &req).expect("requests always encode");
        let sig = key.sign(Domain::Request, &bytes);
        SignedRequest { bytes, sig }
    }

    /// Checks the signature against the key named inside and returns the request.
    pub fn verify(&self) -> Result<ApiRequest, SignalError> {
        let req: ApiRequest = codec::decode_limited("request", &self.bytes, 64 * 1024)?;
        req.key.verify(Domain::Request, &self.bytes, &self.sig)?;
        Ok(req)
    }

    /// Encodes for the HTTP body.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode("signed request", self).expect("requests always encode")
    }

    /// Decodes an HTTP body.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode_limited("signed request", bytes, 128 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_verify_and_forgeries_do_not() {
        let k = SecretKey::from_seed([4; 32]);
        let hb = Signal::Heartbeat(Heartbeat {
            node: k.id(),
            time: Timestamp(5),
            running: 1,
            capacity: 2,
            head: 9,
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            paused: None,
            lost: Vec::new(),
            every_ms: None,
        });
        let s = SignedSignal::sign(&k, &hb);
        assert_eq!(s.verify().unwrap(), hb);
        // Someone else signing a heartbeat in k's name.
        let other = SecretKey::from_seed([5; 32]);
        let forged = SignedSignal {
            bytes: s.bytes.clone(),
            sig: other.sign(Domain::Ephemeral, &s.bytes),
        };
        assert!(forged.verify().is_err());
        let g = Gossip::Signal(s);
        assert_eq!(Gossip::from_bytes(&g.to_bytes()).unwrap(), g);
    }

    #[test]
    fn signed_requests_verify_and_tampering_does_not() {
        let k = SecretKey::from_seed([6; 32]);
        let action = ApiAction::Submit {
            repo: "r".into(),
            branch: "main".into(),
            sha: "abc".into(),
        };
        let r = SignedRequest::sign(&k, action.clone(), Timestamp(9));
        let back = SignedRequest::from_bytes(&r.to_bytes())
            .unwrap()
            .verify()
            .unwrap();
        assert_eq!((back.key, back.action), (k.id(), action));
        let mut bad = r.clone();
        let last = bad.bytes.len() - 1;
        bad.bytes[last] ^= 1;
        assert!(bad.verify().is_err());
    }

    #[test]
    fn a_large_mesh_beats_less_often_and_is_judged_by_its_own_interval() {
        let base = Duration::from_secs(1);
        assert_eq!(beat_interval(base, 1), base);
        assert_eq!(beat_interval(base, 25), base);
        assert_eq!(beat_interval(base, 26), base * 2);
        assert_eq!(beat_interval(base, 50), base * 2);
        assert_eq!(beat_interval(base, 100), base * 4);
        assert_eq!(beat_interval(base, 1_000_000), base * MAX_BEAT_STRETCH);
        let window = Duration::from_secs(3);
        let k = SecretKey::generate().unwrap();
        let mut h = Heartbeat {
            node: k.id(),
            time: Timestamp(5),
            running: 0,
            capacity: 1,
            head: 0,
            addrs: Vec::new(),
            paused: None,
            lost: Vec::new(),
            every_ms: None,
        };
        assert_eq!(h.live_for(base, window), window);
        h.every_ms = Some(4000);
        assert_eq!(h.live_for(base, window), window * 4);
        // A receiver that itself beats every 4 s already waits long enough.
        assert_eq!(h.live_for(base * 4, window), window);
        // A sender that claims to beat once a day is live for ten windows at most.
        h.every_ms = Some(86_400_000);
        assert_eq!(h.live_for(base, window), window * MAX_BEAT_STRETCH);
        // Written only when stretched: an ordinary heartbeat encodes as before.
        h.every_ms = None;
        let plain = codec::encode("heartbeat", &h).unwrap();
        assert!(!String::from_utf8_lossy(&plain).contains("every_ms"));
    }
}
