//! Maintainer-signed documents: [`Genesis`], [`Admission`], [`Revocation`] and the builder
//! configuration ([`crate::builders::BuilderConfig`]).
//!
//! A document is a standalone file ([`SignedDoc`]): its kind, its body as canonical CBOR bytes,
//! and any number of signatures over those exact bytes under the kind's domain tag. Signatures are
//! added one at a time (a maintainer can sign offline) and never change the document's id, which
//! is the hash of kind and body. Whether enough of the right keys signed is decided by
//! [`crate::trust::Trust`]; this module only checks that every signature present is genuine.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::builders::BuilderConfig;
use crate::codec::{self, CodecError};
use crate::keys::{Domain, Hash, KeyError, NodeId, SecretKey, Signature};
use crate::time::Timestamp;

/// The largest document file accepted, in bytes.
pub const MAX_DOC_BYTES: usize = 1 << 20;

/// A document could not be read or is not genuine.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    /// Not a document, or a body that does not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A document of another kind than expected.
    #[error("expected a {expected} document, found a {found} document")]
    WrongKind {
        /// The kind wanted.
        expected: DocKind,
        /// The kind found.
        found: DocKind,
    },
    /// A signature does not verify: the document was changed after it was signed, or forged.
    #[error("signature {index} does not verify: {source}")]
    BadSignature {
        /// Position of the signature in the document.
        index: usize,
        /// What failed.
        #[source]
        source: KeyError,
    },
    /// The genesis document contradicts itself.
    #[error("invalid genesis: {0}")]
    InvalidGenesis(String),
}

/// The kinds of signed document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DocKind {
    /// Names the mesh and its maintainers.
    Genesis,
    /// Lets a node join.
    Admission,
    /// Takes a key's rights away.
    Revocation,
    /// The builders every worker runs.
    BuilderConfig,
    /// Lets a quarantined worker out.
    Release,
}

impl DocKind {
    /// The domain its signatures are made under.
    pub fn domain(self) -> Domain {
        match self {
            DocKind::Genesis => Domain::Genesis,
            DocKind::Admission => Domain::Admission,
            DocKind::Revocation => Domain::Revocation,
            DocKind::BuilderConfig => Domain::BuilderConfig,
            DocKind::Release => Domain::Release,
        }
    }
}

impl fmt::Display for DocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DocKind::Genesis => "genesis",
            DocKind::Admission => "admission",
            DocKind::Revocation => "revocation",
            DocKind::BuilderConfig => "builder-config",
            DocKind::Release => "release",
        })
    }
}

/// One signature on a document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocSignature {
    /// Who signed.
    pub key: NodeId,
    /// The signature over the body under the kind's domain.
    pub sig: Signature,
}

/// A document as it is stored in a file and carried in `Publish` records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDoc {
    /// What the body is.
    pub kind: DocKind,
    /// The canonical CBOR of the body.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Signatures over `body`, in the order they were added.
    pub signatures: Vec<DocSignature>,
}

impl SignedDoc {
    /// An unsigned document holding `body`.
    pub fn new<T: DocBody>(body: &T) -> Result<Self, DocError> {
        Ok(SignedDoc {
            kind: T::KIND,
            body: codec::encode(T::NAME, body)?,
            signatures: Vec::new(),
        })
    }

    /// Reads a document file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DocError> {
        Ok(codec::decode_limited("document", bytes, MAX_DOC_BYTES)?)
    }

    /// The document file.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode("document", self).expect("a document always encodes")
    }

    /// The document's id: the hash of its kind and body (signatures excluded).
    pub fn id(&self) -> Hash {
        Hash::of_tagged(self.kind.domain(), &self.body)
    }

    /// Adds `key`'s signature (replacing an earlier one by the same key).
    pub fn sign(&mut self, key: &SecretKey) {
        let sig = key.sign(self.kind.domain(), &self.body);
        let id = key.id();
        self.signatures.retain(|s| s.key != id);
        self.signatures.push(DocSignature { key: id, sig });
    }

    /// Checks every signature; returns the distinct signers. One bad signature spoils the file.
    pub fn verify_signatures(&self) -> Result<BTreeSet<NodeId>, DocError> {
        let domain = self.kind.domain();
        let mut signers = BTreeSet::new();
        for (index, s) in self.signatures.iter().enumerate() {
            s.key
                .verify(domain, &self.body, &s.sig)
                .map_err(|source| DocError::BadSignature { index, source })?;
            signers.insert(s.key);
        }
        Ok(signers)
    }

    /// The body, decoded as `T` (the kind must match).
    pub fn body<T: DocBody>(&self) -> Result<T, DocError> {
        if self.kind != T::KIND {
            return Err(DocError::WrongKind {
                expected: T::KIND,
                found: self.kind,
            });
        }
        Ok(codec::decode(T::NAME, &self.body)?)
    }

    /// The body, decoded according to the document's kind.
    pub fn parse(&self) -> Result<Doc, DocError> {
        Ok(match self.kind {
            DocKind::Genesis => Doc::Genesis(self.body()?),
            DocKind::Admission => Doc::Admission(self.body()?),
            DocKind::Revocation => Doc::Revocation(self.body()?),
            DocKind::BuilderConfig => Doc::BuilderConfig(self.body()?),
            DocKind::Release => Doc::Release(self.body()?),
        })
    }
}

/// A type that is the body of one kind of document.
pub trait DocBody: Serialize + DeserializeOwned {
    /// Its kind.
    const KIND: DocKind;
    /// Its name in error messages.
    const NAME: &'static str;
}

/// Any document body, decoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "kebab-case")]
pub enum Doc {
    /// See [`Genesis`].
    Genesis(Genesis),
    /// See [`Admission`].
    Admission(Admission),
    /// See [`Revocation`].
    Revocation(Revocation),
    /// See [`BuilderConfig`].
    BuilderConfig(BuilderConfig),
    /// See [`Release`].
    Release(Release),
}

/// The founding document of a mesh. Its id is the mesh id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    /// The mesh's name (for people; the id is what is checked).
    pub name: String,
    /// Keys that may admit, revoke and publish the builder configuration.
    pub maintainers: Vec<NodeId>,
    /// How many maintainers must sign a maintainer-level document.
    pub threshold: u32,
    /// When the genesis was written.
    pub created: Timestamp,
}

impl DocBody for Genesis {
    const KIND: DocKind = DocKind::Genesis;
    const NAME: &'static str = "genesis";
}

impl Genesis {
    /// Checks that the genesis is coherent and signed by at least `threshold` of its own
    /// maintainers; returns it with the mesh id.
    pub fn verify(doc: &SignedDoc) -> Result<VerifiedGenesis, DocError> {
        let genesis: Genesis = doc.body()?;
        let signers = doc.verify_signatures()?;
        let invalid = |m: String| Err(DocError::InvalidGenesis(m));
        if genesis.name.trim().is_empty() {
            return invalid("the mesh name is empty".into());
        }
        if genesis.maintainers.is_empty() {
            return invalid("it names no maintainer".into());
        }
        let distinct: BTreeSet<_> = genesis.maintainers.iter().collect();
        if distinct.len() != genesis.maintainers.len() {
            return invalid("a maintainer is named twice".into());
        }
        if genesis.threshold == 0 || genesis.threshold as usize > genesis.maintainers.len() {
            return invalid(format!(
                "threshold {} is not between 1 and the {} maintainers",
                genesis.threshold,
                genesis.maintainers.len()
            ));
        }
        if let Some(outsider) = signers.iter().find(|s| !distinct.contains(s)) {
            return invalid(format!(
                "signed by {outsider}, who is not one of its maintainers"
            ));
        }
        if signers.len() < genesis.threshold as usize {
            return invalid(format!(
                "signed by {} of its maintainers, needs {}",
                signers.len(),
                genesis.threshold
            ));
        }
        Ok(VerifiedGenesis {
            mesh: doc.id(),
            genesis,
        })
    }
}

/// A genesis whose signatures and coherence were checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedGenesis {
    /// The mesh id: the genesis document's id.
    pub mesh: Hash,
    /// The document.
    pub genesis: Genesis,
}

/// What an admitted node may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Claims and runs builds.
    Worker,
    /// Announces commits (git poller, webhook, submit on behalf of others).
    Announcer,
    /// Takes part in the notifier election and may send mail.
    Notifier,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Worker => "worker",
            Role::Announcer => "announcer",
            Role::Notifier => "notifier",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "worker" => Ok(Role::Worker),
            "announcer" => Ok(Role::Announcer),
            "notifier" => Ok(Role::Notifier),
            other => Err(format!(
                "unknown role `{other}` (expected worker, announcer or notifier)"
            )),
        }
    }
}

/// A maintainer's leave for one key to take part in the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The mesh this admission is for.
    pub mesh: Hash,
    /// The admitted key.
    pub node: NodeId,
    /// Its name, for people.
    pub name: String,
    /// What it may do.
    pub roles: BTreeSet<Role>,
    /// Labels that builders' requirements match (os, arch, tags …).
    pub labels: BTreeMap<String, String>,
    /// Who to mail when this node goes missing.
    #[serde(default)]
    pub owner: Option<String>,
    /// When it was issued; a newer admission of the same key replaces an older one.
    pub issued: Timestamp,
    /// When it stops being valid, if ever.
    pub expires: Option<Timestamp>,
}

impl DocBody for Admission {
    const KIND: DocKind = DocKind::Admission;
    const NAME: &'static str = "admission";
}

/// Why a key was revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationReason {
    /// The key leaked: everything it signed is hidden from views.
    Compromised,
    /// The machine was taken out of service: its earlier results stand.
    Retired,
    /// The key was lost (dead disk, no backup): its earlier results stand.
    Lost,
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RevocationReason::Compromised => "compromised",
            RevocationReason::Retired => "retired",
            RevocationReason::Lost => "lost",
        })
    }
}

impl std::str::FromStr for RevocationReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "compromised" => Ok(RevocationReason::Compromised),
            "retired" => Ok(RevocationReason::Retired),
            "lost" => Ok(RevocationReason::Lost),
            other => Err(format!(
                "unknown reason `{other}` (expected compromised, retired or lost)"
            )),
        }
    }
}

/// A maintainer's withdrawal of a key's rights.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The mesh this revocation is for.
    pub mesh: Hash,
    /// The key whose rights end.
    pub subject: NodeId,
    /// Why.
    pub reason: RevocationReason,
    /// Records the subject made from this time on are refused.
    pub effective: Timestamp,
    /// When it was issued.
    pub issued: Timestamp,
}

impl DocBody for Revocation {
    const KIND: DocKind = DocKind::Revocation;
    const NAME: &'static str = "revocation";
}

/// A maintainer's release of a quarantined worker: it ends that quarantine on every node (the
/// worker's health is derived, so no node authors a state; this is the one input a person
/// gives). A later quarantine needs a release of its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The mesh it is for.
    pub mesh: Hash,
    /// The quarantined worker.
    pub subject: NodeId,
    /// Which of its quarantines ends (`quarantines` in `buildmesh nodes`).
    pub episode: u32,
    /// When it was issued.
    pub issued: Timestamp,
}

impl DocBody for Release {
    const KIND: DocKind = DocKind::Release;
    const NAME: &'static str = "release";
}

impl DocBody for BuilderConfig {
    const KIND: DocKind = DocKind::BuilderConfig;
    const NAME: &'static str = "builder configuration";
}
