//! The fold of genesis, admissions and revocations into answers such as "may key K act as role R
//! at time T".
//!
//! Rules:
//! - a maintainer-level document (admission, revocation, builder configuration) is valid once at
//!   least `threshold` distinct maintainers signed it, counting only maintainers not revoked at
//!   the document's issue time;
//! - revoking a maintainer needs `threshold` maintainers *other than* the subject;
//! - the newest admission of a key (by `issued`) is the one that counts;
//! - a revocation applies from its `effective` time on; the earliest one of a key wins, except
//!   that a later `compromised` one replaces a `retired` or `lost` one (it hides more).

use std::collections::{BTreeMap, BTreeSet};

use crate::builders::BuilderConfig;
use crate::docs::{
    Admission, DocError, DocKind, Genesis, Revocation, RevocationReason, Role, SignedDoc,
    VerifiedGenesis,
};
use crate::keys::{Hash, NodeId};
use crate::time::Timestamp;

/// Why a document or an action is refused.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The document itself is broken or forged.
    #[error(transparent)]
    Doc(#[from] DocError),
    /// Made for another mesh.
    #[error("{kind} is for mesh {found}, this mesh is {expected}")]
    WrongMesh {
        /// Document kind.
        kind: DocKind,
        /// This mesh.
        expected: Hash,
        /// The document's.
        found: Hash,
    },
    /// Signed by a key that is not a maintainer.
    #[error("{kind} is signed by {signer}, who is not a maintainer of this mesh")]
    SignerNotMaintainer {
        /// Document kind.
        kind: DocKind,
        /// The outsider.
        signer: NodeId,
    },
    /// Too few maintainer signatures.
    #[error("{kind} carries {have} valid maintainer signature(s), needs {need}")]
    NotEnoughSignatures {
        /// Document kind.
        kind: DocKind,
        /// Signatures that count.
        have: usize,
        /// The genesis threshold.
        need: usize,
    },
    /// Revoking a maintainer needs `threshold` other maintainers.
    #[error(
        "revoking maintainer {subject} needs {need} signature(s) of other maintainers, has {have}"
    )]
    MaintainerRevocationNeedsOthers {
        /// The maintainer being revoked.
        subject: NodeId,
        /// Other maintainers' valid signatures.
        have: usize,
        /// The genesis threshold.
        need: usize,
    },
    /// No admission for this key.
    #[error("{node} is not admitted to this mesh")]
    NotAdmitted {
        /// The key.
        node: NodeId,
    },
    /// The admission ran out.
    #[error("the admission of {node} expired at {expires}")]
    Expired {
        /// The key.
        node: NodeId,
        /// When it expired.
        expires: Timestamp,
    },
    /// The key was revoked.
    #[error("{node} was revoked ({reason}) effective {effective}")]
    Revoked {
        /// The key.
        node: NodeId,
        /// Why.
        reason: RevocationReason,
        /// From when.
        effective: Timestamp,
    },
    /// Admitted, but not for this.
    #[error("{node} is admitted without the {role} role")]
    MissingRole {
        /// The key.
        node: NodeId,
        /// The role it lacks.
        role: Role,
    },
    /// A builder configuration older than (or as old as) the one in force.
    #[error("builder configuration version {offered} is not newer than version {current}")]
    StaleConfig {
        /// The version offered.
        offered: u64,
        /// The version in force.
        current: u64,
    },
    /// A second genesis cannot be applied.
    #[error("a genesis document cannot be published into a running mesh")]
    GenesisNotPublishable,
}

/// What applying a document changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A new admission (or a newer one of a known key).
    Admitted(NodeId),
    /// An admission older than the one held: nothing changed.
    OlderAdmission(NodeId),
    /// A key is now revoked (or its revocation hardened to `compromised`).
    Revoked(NodeId, RevocationReason),
    /// A revocation that changes nothing.
    AlreadyRevoked(NodeId),
    /// A newer builder configuration.
    Config(u64),
    /// A quarantined worker's release (worker, quarantine episode); the claim machine applies
    /// it.
    Released(NodeId, u32),
}

/// Genesis, admissions and revocations, folded.
#[derive(Clone, Debug)]
pub struct Trust {
    genesis: VerifiedGenesis,
    admissions: BTreeMap<NodeId, Admission>,
    revocations: BTreeMap<NodeId, Revocation>,
    config: Option<BuilderConfig>,
}

impl Trust {
    /// Trust as the genesis alone defines it.
    pub fn new(genesis: VerifiedGenesis) -> Self {
        Trust {
            genesis,
            admissions: BTreeMap::new(),
            revocations: BTreeMap::new(),
            config: None,
        }
    }

    /// The mesh id.
    pub fn mesh(&self) -> Hash {
        self.genesis.mesh
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis.genesis
    }

    fn threshold(&self) -> usize {
        self.genesis.genesis.threshold as usize
    }

    /// Whether `key` is a maintainer, not revoked at `at`.
    pub fn is_maintainer(&self, key: &NodeId, at: Timestamp) -> bool {
        self.genesis.genesis.maintainers.contains(key) && self.revoked_at(key, at).is_none()
    }

    /// The revocation of `key` in force at `at`, if any.
    pub fn revoked_at(&self, key: &NodeId, at: Timestamp) -> Option<&Revocation> {
        self.revocations.get(key).filter(|r| r.effective <= at)
    }

    /// The revocation of `key`, whatever its effective time.
    pub fn revocation(&self, key: &NodeId) -> Option<&Revocation> {
        self.revocations.get(key)
    }

    /// The admission of `key` in force (the newest), if any.
    pub fn admission(&self, key: &NodeId) -> Option<&Admission> {
        self.admissions.get(key)
    }

    /// Every admitted key's newest admission.
    pub fn admissions(&self) -> impl Iterator<Item = &Admission> {
        self.admissions.values()
    }

    /// The builder configuration in force.
    pub fn config(&self) -> Option<&BuilderConfig> {
        self.config.as_ref()
    }

    /// Checks that `key` may act as `role` at `at` (its admission holds then, with that role,
    /// and it is not revoked then).
    pub fn may_act(
        &self,
        key: &NodeId,
        role: Role,
        at: Timestamp,
    ) -> Result<&Admission, TrustError> {
        let admission = self.check_member(key, at)?;
        if !admission.roles.contains(&role) {
            return Err(TrustError::MissingRole { node: *key, role });
        }
        Ok(admission)
    }

    /// Checks that `key` holds a valid, unexpired, unrevoked admission at `at`.
    pub fn check_member(&self, key: &NodeId, at: Timestamp) -> Result<&Admission, TrustError> {
        if let Some(r) = self.revoked_at(key, at) {
            return Err(TrustError::Revoked {
                node: *key,
                reason: r.reason,
                effective: r.effective,
            });
        }
        let admission = self
            .admissions
            .get(key)
            .ok_or(TrustError::NotAdmitted { node: *key })?;
        if let Some(expires) = admission.expires
            && expires <= at
        {
            return Err(TrustError::Expired {
                node: *key,
                expires,
            });
        }
        Ok(admission)
    }

    /// Whether `key` may author records at all at `at`: a member, or a maintainer.
    pub fn may_author(&self, key: &NodeId, at: Timestamp) -> Result<(), TrustError> {
        if self.is_maintainer(key, at) {
            return Ok(());
        }
        self.check_member(key, at).map(|_| ())
    }

    // Counts the maintainer signatures that hold for a document issued at `issued`, leaving out
    // `exclude` (the subject of a maintainer revocation).
    fn count_maintainers(
        &self,
        doc: &SignedDoc,
        signers: &BTreeSet<NodeId>,
        issued: Timestamp,
        exclude: Option<&NodeId>,
    ) -> Result<usize, TrustError> {
        let mut count = 0;
        let mut outsider = None;
        for s in signers {
            if Some(s) == exclude {
                continue;
            }
            if self.is_maintainer(s, issued) {
                count += 1;
            } else {
                outsider = outsider.or(Some(*s));
            }
        }
        if count < self.threshold()
            && let Some(signer) = outsider
        {
            return Err(TrustError::SignerNotMaintainer {
                kind: doc.kind,
                signer,
            });
        }
        Ok(count)
    }

    fn check_mesh(&self, kind: DocKind, found: Hash) -> Result<(), TrustError> {
        if found != self.mesh() {
            return Err(TrustError::WrongMesh {
                kind,
                expected: self.mesh(),
                found,
            });
        }
        Ok(())
    }

    fn enough(&self, kind: DocKind, have: usize) -> Result<(), TrustError> {
        let need = self.threshold();
        if have < need {
            return Err(TrustError::NotEnoughSignatures { kind, have, need });
        }
        Ok(())
    }

    /// Checks an admission document against this trust, without applying it.
    pub fn check_admission(&self, doc: &SignedDoc) -> Result<Admission, TrustError> {
        let signers = doc.verify_signatures()?;
        let a: Admission = doc.body()?;
        self.check_mesh(doc.kind, a.mesh)?;
        let have = self.count_maintainers(doc, &signers, a.issued, None)?;
        self.enough(doc.kind, have)?;
        Ok(a)
    }

    /// Checks a revocation document against this trust, without applying it.
    pub fn check_revocation(&self, doc: &SignedDoc) -> Result<Revocation, TrustError> {
        let signers = doc.verify_signatures()?;
        let r: Revocation = doc.body()?;
        self.check_mesh(doc.kind, r.mesh)?;
        if self.genesis.genesis.maintainers.contains(&r.subject) {
            let have = self.count_maintainers(doc, &signers, r.issued, Some(&r.subject))?;
            let need = self.threshold();
            if have < need {
                return Err(TrustError::MaintainerRevocationNeedsOthers {
                    subject: r.subject,
                    have,
                    need,
                });
            }
        } else {
            let have = self.count_maintainers(doc, &signers, r.issued, None)?;
            self.enough(doc.kind, have)?;
        }
        Ok(r)
    }

    /// Checks a release document: maintainers signed it, enough of them, for this mesh, about
    /// an admitted key.
    pub fn check_release(&self, doc: &SignedDoc) -> Result<crate::docs::Release, TrustError> {
        let signers = doc.verify_signatures()?;
        let r: crate::docs::Release = doc.body()?;
        self.check_mesh(doc.kind, r.mesh)?;
        let have = self.count_maintainers(doc, &signers, r.issued, None)?;
        self.enough(doc.kind, have)?;
        Ok(r)
    }

    /// Checks a builder configuration document against this trust, without applying it.
    pub fn check_config(&self, doc: &SignedDoc) -> Result<BuilderConfig, TrustError> {
        let signers = doc.verify_signatures()?;
        let c: BuilderConfig = doc.body()?;
        self.check_mesh(doc.kind, c.mesh)?;
        // A configuration carries no issue time: its signers must be maintainers now (the
        // latest revocation time we know of).
        let have = self.count_maintainers(doc, &signers, Timestamp(u64::MAX), None)?;
        self.enough(doc.kind, have)?;
        Ok(c)
    }

    /// Checks any document and folds it in.
    pub fn apply(&mut self, doc: &SignedDoc) -> Result<Applied, TrustError> {
        match doc.kind {
            DocKind::Genesis => Err(TrustError::GenesisNotPublishable),
            DocKind::Admission => {
                let a = self.check_admission(doc)?;
                let node = a.node;
                match self.admissions.get(&node) {
                    Some(old) if old.issued >= a.issued => Ok(Applied::OlderAdmission(node)),
                    _ => {
                        self.admissions.insert(node, a);
                        Ok(Applied::Admitted(node))
                    }
                }
            }
            DocKind::Revocation => {
                let r = self.check_revocation(doc)?;
                let subject = r.subject;
                let reason = r.reason;
                let replace = match self.revocations.get(&subject) {
                    None => true,
                    Some(old) => {
                        r.effective < old.effective
                            || (r.reason == RevocationReason::Compromised
                                && old.reason != RevocationReason::Compromised)
                    }
                };
                if replace {
                    let merged = match self.revocations.get(&subject) {
                        // Keep the earliest effective time when hardening the reason.
                        Some(old) if old.effective < r.effective => Revocation {
                            effective: old.effective,
                            ..r
                        },
                        _ => r,
                    };
                    self.revocations.insert(subject, merged);
                    Ok(Applied::Revoked(subject, reason))
                } else {
                    Ok(Applied::AlreadyRevoked(subject))
                }
            }
            DocKind::BuilderConfig => {
                let c = self.check_config(doc)?;
                if let Some(cur) = &self.config
                    && cur.version >= c.version
                {
                    return Err(TrustError::StaleConfig {
                        offered: c.version,
                        current: cur.version,
                    });
                }
                let v = c.version;
                self.config = Some(c);
                Ok(Applied::Config(v))
            }
            DocKind::Release => {
                let r = self.check_release(doc)?;
                Ok(Applied::Released(r.subject, r.episode))
            }
        }
    }
}
