//! Per-author logs: ingest with chain checks, held records, forks, the version vector, and this
//! node's own appends.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use buildmesh_protocol::record::{Body, Record, RecordError};
use buildmesh_protocol::vv::VersionVector;
use buildmesh_protocol::{Hash, NodeId, SecretKey, Timestamp};
use serde::{Deserialize, Serialize};

use crate::index::IndexTree;
use crate::keys::{self, Key};
use crate::{Store, StoreError, corrupt};

/// How far beyond its contiguous head a record of one author may arrive and be held. Honest
/// gaps are a few gossip messages while sync catches up; a record further ahead is not held
/// (sync brings it in order), so one author can make a node hold at most this many records.
pub const MAX_AHEAD: u64 = 10_000;

/// Fork evidence kept per author: two records for one seq prove the fork; a flood of them must
/// not fill the disk.
pub const MAX_FORK_EVIDENCE: usize = 16;

/// Where a record lives: its author and seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordRef {
    /// The author.
    pub author: NodeId,
    /// The seq.
    pub seq: u64,
}

impl RecordRef {
    pub(crate) fn to_bytes(self) -> Vec<u8> {
        keys::record(&self.author, self.seq)
    }

    pub(crate) fn from_bytes(tree: &'static str, b: &[u8]) -> Result<Self, StoreError> {
        match (keys::split_node(b), b.get(32..).and_then(keys::split_u64)) {
            (Some(author), Some(seq)) if b.len() == 40 => Ok(RecordRef { author, seq }),
            _ => Err(corrupt(tree, b, "not a record reference")),
        }
    }
}

/// What ingesting a record did. Only `Err` is a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ingest {
    /// The record (and any held records it unblocked, in order) now extend their author's log.
    Appended(Vec<Record>),
    /// Already held, byte for byte.
    Duplicate,
    /// Ahead of what is held; kept until the gap below it fills.
    Held {
        /// The highest contiguous seq held of that author.
        have: u64,
    },
    /// Conflicts with the record held at the same (author, seq): kept as evidence, author flagged.
    Fork {
        /// The author.
        author: NodeId,
        /// Where the logs diverge.
        seq: u64,
    },
}

/// Two different records one author signed for the same seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkEvidence {
    /// The author.
    pub author: NodeId,
    /// The seq.
    pub seq: u64,
    /// The record held in the log.
    pub held: Record,
    /// The conflicting record.
    pub other: Record,
}

#[derive(Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: Hash,
}

impl Store {
    fn head(&self, author: &NodeId) -> Result<(u64, Hash), StoreError> {
        match self.heads.get(author.as_bytes())? {
            None => Ok((0, Hash::ZERO)),
            Some(v) => {
                let h: Head = buildmesh_protocol::codec::decode("head", &v)
                    .map_err(|e| corrupt("heads", author.as_bytes(), e))?;
                Ok((h.seq, h.hash))
            }
        }
    }

    /// The highest contiguous seq held of `author` and that record's hash.
    pub fn head_of(&self, author: &NodeId) -> Result<(u64, Hash), StoreError> {
        self.head(author)
    }

    /// {author -> highest contiguous seq} over every author held.
    pub fn version_vector(&self) -> Result<VersionVector, StoreError> {
        let mut vv = VersionVector::default();
        for item in self.heads.iter() {
            let (k, v) = item?;
            let author = keys::split_node(&k).ok_or_else(|| corrupt("heads", &k, "bad author"))?;
            let h: Head = buildmesh_protocol::codec::decode("head", &v)
                .map_err(|e| corrupt("heads", &k, e))?;
            vv.raise(author, h.seq);
        }
        Ok(vv)
    }

    /// Checks and stores a record received from elsewhere. Does not flush: call [`Store::flush`]
    /// after a batch.
    pub fn ingest(&self, bytes: &[u8]) -> Result<Ingest, StoreError> {
        self.ingest_batch(&[bytes])
            .pop()
            .expect("one outcome per record")
    }

    /// Checks and stores many records (a sync batch): signatures are verified on every core,
    /// then the records are placed in order and written in one transaction. One outcome per
    /// record, in order. Does not flush.
    pub fn ingest_batch<B: AsRef<[u8]> + Sync>(
        &self,
        items: &[B],
    ) -> Vec<Result<Ingest, StoreError>> {
        let verified = verify_all(items)
            .into_iter()
            .map(|v| v.map_err(StoreError::from))
            .collect();
        self.ingest_verified(verified)
    }

    /// Stores records whose signatures the caller already checked (with [`verify_all`]),
    /// passing errors through in place. One outcome per record, in order. Does not flush.
    pub fn ingest_verified(
        &self,
        verified: Vec<Result<Record, StoreError>>,
    ) -> Vec<Result<Ingest, StoreError>> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = Batch::default();
        let mut out: Vec<Result<Ingest, StoreError>> = verified
            .into_iter()
            .map(|v| v.and_then(|record| self.place(record, &mut batch)))
            .collect();
        if let Err(e) = self.commit(&batch) {
            let reason = e.to_string();
            let mut first = Some(e);
            for o in out.iter_mut() {
                if matches!(o, Ok(Ingest::Appended(_))) {
                    *o = Err(first.take().unwrap_or_else(|| StoreError::WriteFailed {
                        reason: reason.clone(),
                    }));
                }
            }
        }
        out
    }

    // Decides what to do with a verified record, given what is held and what this batch has
    // placed so far. Appends are only planned here; `commit` writes them.
    fn place(&self, record: Record, batch: &mut Batch) -> Result<Ingest, StoreError> {
        let author = record.author_id();
        let seq = record.seq();
        let (have, head_hash) = match batch.heads.get(&author) {
            Some(h) => *h,
            None => self.head(&author)?,
        };
        if seq <= have {
            let held_hash = match batch.placed.get(&(author, seq)) {
                Some(h) => *h,
                None => {
                    let key = keys::record(&author, seq);
                    let held = self
                        .records
                        .get(&key)?
                        .ok_or_else(|| corrupt("records", &key, "missing below the head"))?;
                    if held.as_ref() == record.bytes.as_slice() {
                        return Ok(Ingest::Duplicate);
                    }
                    Record::from_trusted(&held)
                        .map_err(|e| corrupt("records", &key, e))?
                        .hash
                }
            };
            if held_hash == record.hash {
                return Ok(Ingest::Duplicate);
            }
            self.keep_fork(&record)?;
            return Ok(Ingest::Fork { author, seq });
        }
        if seq > have + 1 {
            if seq - have > MAX_AHEAD {
                return Err(StoreError::TooFarAhead {
                    author,
                    seq,
                    have,
                    limit: MAX_AHEAD,
                });
            }
            let key = keys::record(&author, seq);
            match self.pending.get(&key)? {
                Some(v) if v.as_ref() == record.bytes.as_slice() => return Ok(Ingest::Duplicate),
                Some(_) => {
                    // Two different held records for one seq: the author signed both.
                    self.keep_fork(&record)?;
                    return Ok(Ingest::Fork { author, seq });
                }
                None => {
                    self.pending.insert(key, record.bytes.as_slice())?;
                }
            }
            return Ok(Ingest::Held { have });
        }
        if record.envelope.prev != head_hash {
            return Err(StoreError::ChainBreak {
                author,
                seq,
                expected: head_hash,
                found: record.envelope.prev,
            });
        }
        let mut appended = vec![record];
        // Release held records that now connect.
        while !self.pending.is_empty() {
            let last = appended.last().expect("not empty");
            let next_key = keys::record(&author, last.seq() + 1);
            let Some(bytes) = self.pending.remove(&next_key)? else {
                break;
            };
            let next = match Record::from_trusted(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(author = %author, error = %e, "dropping unreadable held record");
                    break;
                }
            };
            if next.envelope.prev != last.hash {
                tracing::warn!(
                    author = %author,
                    seq = next.seq(),
                    "held record does not link to its predecessor; kept as fork evidence"
                );
                self.keep_fork(&next)?;
                break;
            }
            appended.push(next);
        }
        let last = appended.last().expect("not empty");
        batch.heads.insert(author, (last.seq(), last.hash));
        for r in &appended {
            batch.placed.insert((author, r.seq()), r.hash);
            batch.appends.push(r.clone());
        }
        Ok(Ingest::Appended(appended))
    }

    fn keep_fork(&self, other: &Record) -> Result<(), StoreError> {
        let author = other.author_id();
        let key = Key::new()
            .node(&author)
            .u64(other.seq())
            .hash(&other.hash)
            .build();
        let kept = self
            .forks
            .scan_prefix(Key::new().node(&author).build())
            .take(MAX_FORK_EVIDENCE)
            .count();
        if kept < MAX_FORK_EVIDENCE {
            self.forks.insert(key, other.bytes.as_slice())?;
        }
        let reason = format!("two records signed for seq {}", other.seq());
        self.flags.insert(
            author.as_bytes(),
            buildmesh_protocol::codec::encode("flag", &reason)
                .map_err(|e| corrupt("flags", author.as_bytes(), e))?,
        )?;
        tracing::warn!(author = %author, seq = other.seq(), "fork detected: author flagged");
        Ok(())
    }

    // Writes the planned appends with their index entries and the new heads, atomically.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.appends.is_empty() {
            return Ok(());
        }
        let mut heads = Vec::with_capacity(batch.heads.len());
        for (author, (seq, hash)) in &batch.heads {
            let head = buildmesh_protocol::codec::encode(
                "head",
                &Head {
                    seq: *seq,
                    hash: *hash,
                },
            )
            .map_err(|e| corrupt("heads", author.as_bytes(), e))?;
            heads.push((*author, head));
        }
        let mut writes = Vec::with_capacity(batch.appends.len());
        for record in &batch.appends {
            let rref = RecordRef {
                author: record.author_id(),
                seq: record.seq(),
            };
            let entries = match record.body() {
                Ok(b) => crate::index::entries(rref, record, &b),
                Err(e) => {
                    // Signed by its author, so it stays in the chain; it just indexes nothing.
                    tracing::warn!(author = %rref.author, seq = rref.seq, error = %e, "record body does not decode");
                    Vec::new()
                }
            };
            writes.push((rref.to_bytes(), record.bytes.as_slice(), entries));
        }
        // Written tree by tree, each batch atomic, in an order that a crash can only leave
        // behind, never ahead: index entries (idempotent), then records, then heads. `open`
        // moves a head forward over records that were written without it.
        let mut index: HashMap<IndexTree, sled::Batch> = HashMap::new();
        let mut seen_now: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
        let mut records = sled::Batch::default();
        for (key, bytes, entries) in &writes {
            records.insert(key.as_slice(), *bytes);
            // Announcements of one commit collapse: only the first is indexed.
            let mut repeated = false;
            for e in entries {
                if e.tree == IndexTree::CommitSeen
                    && (seen_now.contains(e.key.as_slice())
                        || self.commit_seen.contains_key(&e.key)?)
                {
                    repeated = true;
                }
            }
            for e in entries {
                match e.tree {
                    IndexTree::Commits | IndexTree::CommitSeen if repeated => continue,
                    IndexTree::CommitSeen => {
                        seen_now.insert(e.key.as_slice());
                    }
                    _ => {}
                }
                index
                    .entry(e.tree)
                    .or_default()
                    .insert(e.key.as_slice(), e.value.as_slice());
            }
        }
        for (tree, b) in index {
            self.index_tree(tree).apply_batch(b)?;
        }
        self.records.apply_batch(records)?;
        let mut head_batch = sled::Batch::default();
        for (author, head) in &heads {
            head_batch.insert(author.as_bytes().as_slice(), head.as_slice());
        }
        self.heads.apply_batch(head_batch)?;
        Ok(())
    }

    fn index_tree(&self, tree: IndexTree) -> &sled::Tree {
        match tree {
            IndexTree::Commits => &self.commits,
            IndexTree::CommitSeen => &self.commit_seen,
            IndexTree::ResultsByJob => &self.results_by_job,
            IndexTree::ResultsByBuilder => &self.results_by_builder,
            IndexTree::ClaimsByJob => &self.claims_by_job,
            IndexTree::Docs => &self.docs,
            IndexTree::Kinds => &self.kinds,
        }
    }

    /// Moves every author's head forward over records written before a crash cut the head's
    /// update short. Run once when the store opens.
    pub(crate) fn repair_heads(&self) -> Result<u64, StoreError> {
        let mut repaired = 0;
        let mut cursor: Vec<u8> = Vec::new();
        while let Some(item) = self.records.range(cursor.clone()..).next() {
            let (k, _) = item?;
            let author =
                keys::split_node(&k).ok_or_else(|| corrupt("records", &k, "bad author"))?;
            let (mut seq, mut hash) = self.head(&author)?;
            let start = seq;
            while let Some(r) = self.record(&author, seq + 1)? {
                if r.envelope.prev != hash {
                    break;
                }
                seq = r.seq();
                hash = r.hash;
            }
            if seq > start {
                let head = buildmesh_protocol::codec::encode("head", &Head { seq, hash })
                    .map_err(|e| corrupt("heads", author.as_bytes(), e))?;
                self.heads.insert(author.as_bytes(), head)?;
                tracing::info!(author = %author, from = start, to = seq, "head moved over records written before a crash");
                repaired += seq - start;
            }
            cursor = next_prefix(author.as_bytes());
        }
        Ok(repaired)
    }

    /// Writes, signs, stores and flushes this node's next record. The record is on disk before
    /// this returns, so it can be handed to anyone.
    pub fn append_own(
        &self,
        key: &SecretKey,
        time: Timestamp,
        body: &Body,
    ) -> Result<Record, StoreError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (seq, prev) = self.head(&key.id())?;
        let record = Record::author(key, seq + 1, prev, time, body)?;
        let mut batch = Batch::default();
        batch
            .heads
            .insert(record.author_id(), (record.seq(), record.hash));
        batch.appends.push(record.clone());
        self.commit(&batch)?;
        self.flush()?;
        Ok(record)
    }

    /// The record at (author, seq), if held in the log.
    pub fn record(&self, author: &NodeId, seq: u64) -> Result<Option<Record>, StoreError> {
        let key = keys::record(author, seq);
        match self.records.get(&key)? {
            None => Ok(None),
            Some(v) => Record::from_trusted(&v)
                .map(Some)
                .map_err(|e| corrupt("records", &key, e)),
        }
    }

    /// The raw bytes of `author`'s records in `range`, at most `max` of them, in order.
    pub fn records_in(
        &self,
        author: &NodeId,
        range: RangeInclusive<u64>,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let from = keys::record(author, *range.start());
        let to = keys::record(author, *range.end());
        let mut out = Vec::new();
        for item in self.records.range(from..=to).take(max) {
            let (_, v) = item?;
            out.push(v.to_vec());
        }
        Ok(out)
    }

    /// `author`'s records after `seq`, at most `max`, in order.
    pub fn records_after(
        &self,
        author: &NodeId,
        seq: u64,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.records_in(author, seq.saturating_add(1)..=u64::MAX, max)
    }

    /// Every record held, in (author, seq) order, decoded.
    pub fn all_records(&self) -> impl Iterator<Item = Result<Record, StoreError>> + '_ {
        self.records.iter().map(|item| {
            let (k, v) = item?;
            Record::from_trusted(&v).map_err(|e| corrupt("records", &k, e))
        })
    }

    /// Number of records held in logs.
    pub fn record_count(&self) -> usize {
        // Logs are contiguous from seq 1: the heads add up to the count without walking every
        // record (sled's `len` does).
        self.version_vector().map_or(0, |vv| vv.total() as usize)
    }

    /// Number of records held back waiting for a gap to fill.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Authors caught signing two records for one seq, with the reason.
    pub fn flagged(&self) -> Result<Vec<(NodeId, String)>, StoreError> {
        let mut out = Vec::new();
        for item in self.flags.iter() {
            let (k, v) = item?;
            let author = keys::split_node(&k).ok_or_else(|| corrupt("flags", &k, "bad author"))?;
            let reason: String = buildmesh_protocol::codec::decode("flag", &v)
                .map_err(|e| corrupt("flags", &k, e))?;
            out.push((author, reason));
        }
        Ok(out)
    }

    /// The fork evidence kept for `author`.
    pub fn forks_of(&self, author: &NodeId) -> Result<Vec<ForkEvidence>, StoreError> {
        let mut out = Vec::new();
        for item in self.forks.scan_prefix(author.as_bytes()) {
            let (k, v) = item?;
            let other = Record::from_trusted(&v).map_err(|e| corrupt("forks", &k, e))?;
            let seq = other.seq();
            let held = match self.record(author, seq)? {
                Some(h) => h,
                None => continue,
            };
            out.push(ForkEvidence {
                author: *author,
                seq,
                held,
                other,
            });
        }
        Ok(out)
    }
}

// What one ingest batch has decided so far.
#[derive(Default)]
struct Batch {
    heads: HashMap<NodeId, (u64, Hash)>,
    placed: HashMap<(NodeId, u64), Hash>,
    appends: Vec<Record>,
}

/// Verifies records' signatures, on every core for large batches. One result per item, in order.
pub fn verify_all<B: AsRef<[u8]> + Sync>(items: &[B]) -> Vec<Result<Record, RecordError>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if items.len() < 64 || threads < 2 {
        return items.iter().map(|b| Record::verify(b.as_ref())).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|b| Record::verify(b.as_ref()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("verification does not panic"))
            .collect()
    })
}

// The smallest key after every key that starts with `prefix`.
fn next_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < u8::MAX {
            next.push(last + 1);
            return next;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}
