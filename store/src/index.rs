//! Indexes over the logs: commits by repo/branch/time, results by job and by builder/branch,
//! claims by job, trust documents, and the records of the rarer kinds by kind (mails sent,
//! rebuilds, cancels, culprit searches: what a start reads without going through every
//! record). Entries are written in the same transaction as the record.

use buildmesh_protocol::docs::{DocKind, SignedDoc};
use buildmesh_protocol::record::{Body, Record, RecordKind};
use buildmesh_protocol::{Hash, NodeId};

use crate::keys::{self, Key};
use crate::{RecordRef, Store, StoreError, corrupt};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum IndexTree {
    Commits,
    CommitSeen,
    ResultsByJob,
    ResultsByBuilder,
    ClaimsByJob,
    Docs,
    Kinds,
}

/// Whether records of `kind` are listed in the `kinds` index: the kinds a history holds few
/// of. Commits, claims, results and documents have indexes of their own.
pub(crate) fn listed_by_kind(kind: &RecordKind) -> bool {
    matches!(
        kind,
        RecordKind::NotificationSent
            | RecordKind::Rebuild
            | RecordKind::Cancel
            | RecordKind::Bisect
            | RecordKind::Probes
    )
}

/// The `kinds` index's key of a record.
pub(crate) fn kind_key(kind: &RecordKind, rref: &RecordRef) -> Vec<u8> {
    Key::new().str(kind.name()).bytes(&rref.to_bytes()).build()
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) tree: IndexTree,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Vec<u8>,
}

// Documents are kept in the order a trust fold should apply them: revocations first (so a
// revoked maintainer's later signatures never count), then admissions, then configurations.
fn doc_order(kind: DocKind) -> u8 {
    match kind {
        DocKind::Revocation => 0,
        DocKind::Admission => 1,
        DocKind::BuilderConfig => 2,
        DocKind::Genesis => 3,
        DocKind::Release => 4,
    }
}

pub(crate) fn entries(rref: RecordRef, record: &Record, body: &Body) -> Vec<Entry> {
    let r = rref.to_bytes();
    match body {
        Body::CommitSeen(c) => vec![
            Entry {
                tree: IndexTree::CommitSeen,
                key: Key::new().str(&c.repo).str(&c.branch).str(&c.sha).build(),
                value: r.clone(),
            },
            Entry {
                tree: IndexTree::Commits,
                key: Key::new()
                    .str(&c.repo)
                    .str(&c.branch)
                    .time(record.envelope.time)
                    .str(&c.sha)
                    .build(),
                value: r,
            },
        ],
        Body::BuildResult(b) => vec![
            Entry {
                tree: IndexTree::ResultsByJob,
                key: Key::new().hash(&b.job).bytes(&r).build(),
                value: Vec::new(),
            },
            Entry {
                tree: IndexTree::ResultsByBuilder,
                key: Key::new()
                    .str(&b.key.builder)
                    .str(&b.key.branch)
                    .time(b.finished)
                    .hash(&b.job)
                    .bytes(&r)
                    .build(),
                value: r,
            },
        ],
        Body::Claim(c) => vec![Entry {
            tree: IndexTree::ClaimsByJob,
            key: Key::new().hash(&c.job).u32(c.attempt).bytes(&r).build(),
            value: Vec::new(),
        }],
        Body::Publish(p) => vec![Entry {
            tree: IndexTree::Docs,
            key: Key::new()
                .bytes(&[doc_order(p.doc.kind)])
                .hash(&p.doc.id())
                .build(),
            value: p.doc.to_bytes(),
        }],
        Body::NotificationSent(_)
        | Body::Rebuild(_)
        | Body::Cancel(_)
        | Body::Bisect(_)
        | Body::Probes(_) => vec![Entry {
            tree: IndexTree::Kinds,
            key: kind_key(&record.envelope.kind, &rref),
            value: Vec::new(),
        }],
    }
}

fn tail_ref(tree: &'static str, key: &[u8]) -> Result<RecordRef, StoreError> {
    if key.len() < 40 {
        return Err(corrupt(tree, key, "key too short"));
    }
    RecordRef::from_bytes(tree, &key[key.len() - 40..])
}

impl Store {
    /// Every record of `kind` held, in (author, seq) order. Only the kinds the index lists
    /// (mails sent, rebuilds, cancels, culprit searches and their steps) are found here.
    pub fn records_of_kind<'a>(
        &'a self,
        kind: &RecordKind,
    ) -> impl Iterator<Item = Result<Record, StoreError>> + 'a {
        let prefix = Key::new().str(kind.name()).build();
        self.kinds.scan_prefix(prefix).filter_map(move |item| {
            let rref = match item {
                Ok((k, _)) => tail_ref("kinds", &k),
                Err(e) => return Some(Err(e.into())),
            };
            match rref.and_then(|r| self.record(&r.author, r.seq)) {
                Ok(Some(r)) => Some(Ok(r)),
                // Index entries are written before their record (see `ingest`): one without its
                // record is a crash's leftover, written again with the record.
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            }
        })
    }

    /// Lists the records of a store written before the `kinds` index in it, once.
    pub(crate) fn index_kinds(&self) -> Result<(), StoreError> {
        const DONE: &[u8] = b"kinds_indexed";
        if self.meta.contains_key(DONE)? {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut listed = 0usize;
        for item in self.records.iter() {
            let (k, v) = item?;
            let record = Record::from_trusted(&v).map_err(|e| corrupt("records", &k, e))?;
            if listed_by_kind(&record.envelope.kind) {
                let rref = RecordRef {
                    author: record.author_id(),
                    seq: record.seq(),
                };
                batch.insert(kind_key(&record.envelope.kind, &rref), Vec::new());
                listed += 1;
            }
        }
        self.kinds.apply_batch(batch)?;
        self.meta.insert(DONE, b"1".as_slice())?;
        self.flush()?;
        if listed > 0 {
            tracing::info!(
                records = listed,
                "records of the rarer kinds indexed by kind"
            );
        }
        Ok(())
    }

    /// Every published trust document, in the order a trust fold should apply them.
    pub fn docs(&self) -> Result<Vec<SignedDoc>, StoreError> {
        let mut out = Vec::new();
        for item in self.docs.iter() {
            let (k, v) = item?;
            out.push(SignedDoc::from_bytes(&v).map_err(|e| corrupt("docs", &k, e))?);
        }
        Ok(out)
    }

    /// Whether a document with this id was published by anyone.
    pub fn has_doc(&self, kind: DocKind, id: &Hash) -> Result<bool, StoreError> {
        let key = Key::new().bytes(&[doc_order(kind)]).hash(id).build();
        Ok(self.docs.contains_key(key)?)
    }

    /// The first announcement of (repo, branch, sha), if any.
    pub fn commit_seen(
        &self,
        repo: &str,
        branch: &str,
        sha: &str,
    ) -> Result<Option<RecordRef>, StoreError> {
        let key = Key::new().str(repo).str(branch).str(sha).build();
        self.commit_seen
            .get(&key)?
            .map(|v| RecordRef::from_bytes("commit_seen", &v))
            .transpose()
    }

    /// Announcements on (repo, branch), newest first, at most `max`.
    pub fn commits(
        &self,
        repo: &str,
        branch: &str,
        max: usize,
    ) -> Result<Vec<RecordRef>, StoreError> {
        let prefix = Key::new().str(repo).str(branch).build();
        let mut out = Vec::new();
        for item in self.commits.scan_prefix(prefix).rev().take(max) {
            let (_, v) = item?;
            out.push(RecordRef::from_bytes("commits", &v)?);
        }
        Ok(out)
    }

    /// Every result recorded for `job`.
    pub fn results_for_job(&self, job: &Hash) -> Result<Vec<RecordRef>, StoreError> {
        let mut out = Vec::new();
        for item in self.results_by_job.scan_prefix(job.0) {
            let (k, _) = item?;
            out.push(tail_ref("results_by_job", &k)?);
        }
        Ok(out)
    }

    /// Results of (builder, branch), newest finish first, at most `max`.
    pub fn results_for_builder(
        &self,
        builder: &str,
        branch: &str,
        max: usize,
    ) -> Result<Vec<RecordRef>, StoreError> {
        let prefix = Key::new().str(builder).str(branch).build();
        let mut out = Vec::new();
        for item in self.results_by_builder.scan_prefix(prefix).rev().take(max) {
            let (_, v) = item?;
            out.push(RecordRef::from_bytes("results_by_builder", &v)?);
        }
        Ok(out)
    }

    /// Every claim on `job`: (attempt, where the claim record is).
    pub fn claims_for_job(&self, job: &Hash) -> Result<Vec<(u32, RecordRef)>, StoreError> {
        let mut out = Vec::new();
        for item in self.claims_by_job.scan_prefix(job.0) {
            let (k, _) = item?;
            let attempt = k
                .get(32..36)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| corrupt("claims_by_job", &k, "no attempt"))?;
            out.push((attempt, tail_ref("claims_by_job", &k)?));
        }
        Ok(out)
    }

    /// The authors with at least one record held.
    pub fn authors(&self) -> Result<Vec<NodeId>, StoreError> {
        let mut out = Vec::new();
        for item in self.heads.iter() {
            let (k, _) = item?;
            out.push(keys::split_node(&k).ok_or_else(|| corrupt("heads", &k, "bad author"))?);
        }
        Ok(out)
    }
}
