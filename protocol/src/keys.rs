//! Keys, node ids, signatures, content hashes and the domain tags that keep one kind of signature
//! from passing for another.
//!
//! A node's ed25519 key is also its libp2p identity: [`NodeId`] prints as the libp2p peer id of the
//! same key (`12D3KooW…`), so logs, the CLI and the API all name a node the same way.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A key, id, signature or hash could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not a libp2p peer id of an ed25519 key.
    #[error("`{text}` is not a node id (an ed25519 libp2p peer id such as 12D3KooW…): {reason}")]
    BadId {
        /// The text given.
        text: String,
        /// Why it was refused.
        reason: String,
    },
    /// 32 bytes that are not an ed25519 public key.
    #[error("not an ed25519 public key")]
    BadPublicKey,
    /// A secret key file that does not hold a buildmesh key.
    #[error("not a buildmesh secret key: {0}")]
    BadSecretKey(String),
    /// A signature that does not verify.
    #[error("signature by {signer} does not verify as {domain}")]
    BadSignature {
        /// The key that supposedly signed.
        signer: NodeId,
        /// The domain tag it was checked under.
        domain: String,
    },
    /// The operating system gave no randomness.
    #[error("no randomness from the operating system: {0}")]
    NoRandomness(String),
}

/// What a signature is for. The tag is signed together with the bytes, so a signature made for
/// one kind of document or record never verifies as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Domain {
    /// A [`crate::docs::Genesis`] document.
    Genesis,
    /// A [`crate::docs::Admission`] document.
    Admission,
    /// A [`crate::docs::Revocation`] document.
    Revocation,
    /// A [`crate::builders::BuilderConfig`] document.
    BuilderConfig,
    /// A record of kind `CommitSeen`.
    CommitSeen,
    /// A record of kind `Claim`.
    Claim,
    /// A record of kind `BuildResult`.
    BuildResult,
    /// A record of kind `NotificationSent`.
    NotificationSent,
    /// A record of kind `Publish`.
    Publish,
    /// Ephemeral, unstored messages (heartbeats, progress, votes, hello).
    Ephemeral,
    /// Requests that a client signs for a node's write API.
    Request,
    /// A [`crate::docs::Release`] document.
    Release,
    /// A record of kind `Rebuild`.
    Rebuild,
    /// A record of kind `Cancel`.
    Cancel,
    /// A record of kind `Bisect`.
    Bisect,
    /// A record of kind `Probes`.
    Probes,
}

impl Domain {
    /// The tag that is signed before the bytes.
    pub fn tag(self) -> &'static [u8] {
        match self {
            Domain::Genesis => b"buildmesh/v1/doc/genesis",
            Domain::Admission => b"buildmesh/v1/doc/admission",
            Domain::Revocation => b"buildmesh/v1/doc/revocation",
            Domain::BuilderConfig => b"buildmesh/v1/doc/builder-config",
            Domain::CommitSeen => b"buildmesh/v1/record/commit-seen",
            Domain::Claim => b"buildmesh/v1/record/claim",
            Domain::BuildResult => b"buildmesh/v1/record/build-result",
            Domain::NotificationSent => b"buildmesh/v1/record/notification-sent",
            Domain::Publish => b"buildmesh/v1/record/publish",
            Domain::Ephemeral => b"buildmesh/v1/ephemeral",
            Domain::Request => b"buildmesh/v1/request",
            Domain::Release => b"buildmesh/v1/doc/release",
            Domain::Rebuild => b"buildmesh/v1/record/rebuild",
            Domain::Cancel => b"buildmesh/v1/record/cancel",
            Domain::Bisect => b"buildmesh/v1/record/bisect",
            Domain::Probes => b"buildmesh/v1/record/probes",
        }
    }

    fn message(self, bytes: &[u8]) -> Vec<u8> {
        tagged_message(self.tag(), bytes)
    }
}

// What is signed: the domain tag, a zero byte, the bytes.
fn tagged_message(tag: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(tag.len() + 1 + bytes.len());
    msg.extend_from_slice(tag);
    msg.push(0);
    msg.extend_from_slice(bytes);
    msg
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(self.tag()).unwrap_or("?"))
    }
}

// Decompressing a public key costs about as much as a third of a signature check, and a mesh
// has few authors whose records arrive by the thousand: each thread keeps the keys it has
// decompressed (bounded; only valid keys are kept).
const KEY_CACHE: usize = 4096;

thread_local! {
    static KEYS: std::cell::RefCell<std::collections::HashMap<[u8; 32], VerifyingKey>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

// A node id's text (its peer id) goes through the key's point too, both ways (libp2p checks the
// key when it makes or reads a peer id), and the read model's JSON, the events and the logs
// print and read the same few ids thousands of times: each thread keeps the texts it made and
// the ids it read (bounded as above; only valid ids are kept).
thread_local! {
    static TEXTS: std::cell::RefCell<std::collections::HashMap<[u8; 32], String>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
    static PARSED: std::cell::RefCell<std::collections::HashMap<String, NodeId>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

fn verifying_key(bytes: &[u8; 32]) -> Result<VerifyingKey, KeyError> {
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        if let Some(k) = keys.get(bytes) {
            return Ok(*k);
        }
        let k = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::BadPublicKey)?;
        if keys.len() >= KEY_CACHE {
            keys.clear();
        }
        keys.insert(*bytes, k);
        Ok(k)
    })
}

/// A participant's public key, shown as its libp2p peer id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// The id of a 32-byte ed25519 public key; refuses bytes that are not one.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, KeyError> {
        verifying_key(&bytes)?;
        Ok(NodeId(bytes))
    }

    /// The raw public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The libp2p peer id of this key.
    pub fn to_peer_id(&self) -> libp2p_identity::PeerId {
        let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(&self.0)
            .expect("NodeId holds a valid ed25519 key by construction");
        libp2p_identity::PublicKey::from(key).to_peer_id()
    }

    /// The id of a libp2p peer id, if that peer id embeds an ed25519 key.
    pub fn from_peer_id(peer: &libp2p_identity::PeerId) -> Result<Self, KeyError> {
        let bad = |reason: &str| KeyError::BadId {
            text: peer.to_base58(),
            reason: reason.to_string(),
        };
        let key = libp2p_identity::PublicKey::try_decode_protobuf(peer.as_ref().digest())
            .map_err(|_| bad("it does not embed a public key"))?;
        let key = key
            .try_into_ed25519()
            .map_err(|_| bad("its key is not ed25519"))?;
        NodeId::from_bytes(key.to_bytes())
    }

    /// Checks `sig` over `bytes` under `domain` (strict verification: no malleable signatures).
    pub fn verify(&self, domain: Domain, bytes: &[u8], sig: &Signature) -> Result<(), KeyError> {
        self.verify_tagged(domain.tag(), bytes, sig)
    }

    /// Checks `sig` over `bytes` under a domain tag given as bytes (a record kind's, which may
    /// be one a newer node added).
    pub fn verify_tagged(&self, tag: &[u8], bytes: &[u8], sig: &Signature) -> Result<(), KeyError> {
        let key = verifying_key(&self.0)?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        key.verify_strict(&tagged_message(tag, bytes), &sig)
            .map_err(|_| KeyError::BadSignature {
                signer: *self,
                domain: String::from_utf8_lossy(tag).into_owned(),
            })
    }

    /// A short form for logs and tables: the last 8 characters of the peer id.
    pub fn short(&self) -> String {
        let s = self.to_string();
        s[s.len().saturating_sub(8)..].to_string()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        TEXTS.with(|texts| {
            let mut texts = texts.borrow_mut();
            if let Some(text) = texts.get(&self.0) {
                return f.write_str(text);
            }
            let text = self.to_peer_id().to_base58();
            f.write_str(&text)?;
            if texts.len() >= KEY_CACHE {
                texts.clear();
            }
            texts.insert(self.0, text);
            Ok(())
        })
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(id) = PARSED.with(|p| p.borrow().get(text).copied()) {
            return Ok(id);
        }
        let id = Self::parse(text)?;
        PARSED.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() >= KEY_CACHE {
                p.clear();
            }
            p.insert(text.to_string(), id);
        });
        Ok(id)
    }
}

impl NodeId {
    fn parse(text: &str) -> Result<Self, KeyError> {
        let peer = libp2p_identity::PeerId::from_str(text.trim()).map_err(|e| KeyError::BadId {
            text: text.to_string(),
            reason: e.to_string(),
        })?;
        NodeId::from_peer_id(&peer).map_err(|e| match e {
            KeyError::BadId { reason, .. } => KeyError::BadId {
                text: text.to_string(),
                reason,
            },
            other => other,
        })
    }
}

/// The secret half of a participant's key. Never serialized except by [`SecretKey::to_file_text`].
pub struct SecretKey(SigningKey);

const SECRET_KEY_PREFIX: &str = "buildmesh-secret-key-v1:";

impl SecretKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::NoRandomness(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// The key whose secret bytes are `seed` (tests derive keys this way, reproducibly).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    /// The secret bytes, for handing the same key to libp2p.
    pub fn to_seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// This key's id.
    pub fn id(&self) -> NodeId {
        NodeId(self.0.verifying_key().to_bytes())
    }

    /// Signs `bytes` under `domain`.
    pub fn sign(&self, domain: Domain, bytes: &[u8]) -> Signature {
        Signature(self.0.sign(&domain.message(bytes)).to_bytes())
    }

    /// Signs `bytes` under a domain tag given as bytes (see [`NodeId::verify_tagged`]).
    pub fn sign_tagged(&self, tag: &[u8], bytes: &[u8]) -> Signature {
        Signature(self.0.sign(&tagged_message(tag, bytes)).to_bytes())
    }

    /// The text of a key file: one line, prefix and hex.
    pub fn to_file_text(&self) -> String {
        format!("{SECRET_KEY_PREFIX}{}\n", hex::encode(self.0.to_bytes()))
    }

    /// Reads the text of a key file.
    pub fn from_file_text(text: &str) -> Result<Self, KeyError> {
        let hex_part = text.trim().strip_prefix(SECRET_KEY_PREFIX).ok_or_else(|| {
            KeyError::BadSecretKey(format!("it does not start with `{SECRET_KEY_PREFIX}`"))
        })?;
        let bytes =
            hex::decode(hex_part).map_err(|e| KeyError::BadSecretKey(format!("bad hex: {e}")))?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::BadSecretKey("the key is not 32 bytes".into()))?;
        Ok(Self::from_seed(seed))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.id())
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..8]))
    }
}

/// A BLAKE3 content hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The all-zero hash: the `prev` of a log's first record.
    pub const ZERO: Hash = Hash([0; 32]);

    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// The hash of `bytes` under a domain tag (ids of documents and jobs).
    pub fn of_tagged(domain: Domain, bytes: &[u8]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(domain.tag());
        h.update(&[0]);
        h.update(bytes);
        Hash(*h.finalize().as_bytes())
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

impl FromStr for Hash {
    type Err = hex::FromHexError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out)?;
        Ok(Hash(out))
    }
}

// Binary encodings (CBOR) carry raw bytes; human-readable ones (JSON) carry the printed forms.
fn ser_bytes<S: Serializer>(
    s: S,
    bytes: &[u8],
    text: impl FnOnce() -> String,
) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&text())
    } else {
        s.serialize_bytes(bytes)
    }
}

fn de_bytes<'de, D: Deserializer<'de>, const N: usize>(
    d: D,
) -> Result<Result<[u8; N], String>, D::Error> {
    if d.is_human_readable() {
        let text = String::deserialize(d)?;
        Ok(Err(text))
    } else {
        let bytes: serde_bytes::ByteBuf = serde_bytes::ByteBuf::deserialize(d)?;
        let len = bytes.len();
        let arr: [u8; N] = bytes
            .into_vec()
            .try_into()
            .map_err(|_| de::Error::invalid_length(len, &"a fixed-length byte string"))?;
        Ok(Ok(arr))
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_bytes(s, &self.0, || self.to_string())
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match de_bytes::<D, 32>(d)? {
            Ok(bytes) => NodeId::from_bytes(bytes).map_err(de::Error::custom),
            Err(text) => text.parse().map_err(de::Error::custom),
        }
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_bytes(s, &self.0, || self.to_string())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match de_bytes::<D, 32>(d)? {
            Ok(bytes) => Ok(Hash(bytes)),
            Err(text) => text.parse().map_err(de::Error::custom),
        }
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_bytes(s, &self.0, || hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match de_bytes::<D, 64>(d)? {
            Ok(bytes) => Ok(Signature(bytes)),
            Err(text) => {
                let mut out = [0u8; 64];
                hex::decode_to_slice(text.trim(), &mut out).map_err(de::Error::custom)?;
                Ok(Signature(out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trips_through_peer_id_text() {
        let key = SecretKey::from_seed([7; 32]);
        let id = key.id();
        let text = id.to_string();
        assert!(text.starts_with("12D3KooW"), "{text}");
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
        // Again, from what each thread remembers: the same answers.
        assert_eq!(id.to_string(), text);
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
        let other = SecretKey::from_seed([8; 32]).id();
        assert_ne!(other.to_string(), text);
        assert_eq!(other.to_string().parse::<NodeId>().unwrap(), other);
        // A text that is not an id (`0` is not base58) is refused every time, never remembered.
        let bad = format!("{}0", &text[..text.len() - 1]);
        assert!(bad.parse::<NodeId>().is_err());
        assert!(bad.parse::<NodeId>().is_err());
    }

    #[test]
    fn signature_is_bound_to_its_domain() {
        let key = SecretKey::from_seed([1; 32]);
        let sig = key.sign(Domain::Admission, b"hello");
        key.id().verify(Domain::Admission, b"hello", &sig).unwrap();
        assert!(key.id().verify(Domain::Revocation, b"hello", &sig).is_err());
        assert!(key.id().verify(Domain::Admission, b"hellp", &sig).is_err());
    }

    #[test]
    fn key_file_round_trips() {
        let key = SecretKey::from_seed([9; 32]);
        let again = SecretKey::from_file_text(&key.to_file_text()).unwrap();
        assert_eq!(again.id(), key.id());
        assert!(SecretKey::from_file_text("nonsense").is_err());
    }

    #[test]
    fn garbage_ids_are_refused() {
        assert!("hello".parse::<NodeId>().is_err());
        assert!("".parse::<NodeId>().is_err());
    }
}
