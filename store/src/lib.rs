//! buildmesh's local store: typed sled trees behind one [`Store`].
//!
//! - [`logs`]: per-author hash-chained logs — ingest with chain checks, out-of-order records held
//!   until their gap fills, fork evidence, the version vector, this node's own appends.
//! - [`blobs`]: content-addressed, compressed blobs (build logs).
//! - [`index`]: what later parts look up — commits by repo/branch/time, results by job and by
//!   builder/branch, claims by job, trust documents.
//! - [`views`]: the read model — each build's view and status row, listed newest first.
//! - `keys`: big-endian, length-prefixed byte keys for every tree.
//!
//! sled's `flush` survives a killed process but does not fsync; a record is safe against a dead
//! disk only once another node holds it (replication is the node's job).

pub mod blobs;
pub mod index;
mod keys;
pub mod logs;
pub mod views;

use std::path::Path;
use std::sync::Mutex;

use buildmesh_protocol::NodeId;
use buildmesh_protocol::record::RecordError;

pub use blobs::Expired;
pub use logs::{Ingest, RecordRef, verify_all};
pub use views::{Listed, Listing};

/// A failure of the database underneath (I/O, corruption sled detected).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DbError(sled::Error);

/// Why a store operation failed. Expected outcomes (duplicate, gap, fork) are not errors: see
/// [`Ingest`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] DbError),
    /// A stored value that does not decode: the store is damaged.
    #[error("corrupt value in tree `{tree}` at key {key}: {reason}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// The key, in hex.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A record that is forged, malformed or badly linked.
    #[error("refused record: {0}")]
    Record(#[from] RecordError),
    /// The record does not link to the record before it.
    #[error("chain break in the log of {author} at seq {seq}: prev is {found}, record {prev_seq} is {expected}", prev_seq = seq - 1)]
    ChainBreak {
        /// The author.
        author: NodeId,
        /// The record's seq.
        seq: u64,
        /// The hash of the record held at seq - 1.
        expected: buildmesh_protocol::Hash,
        /// The prev hash the record names.
        found: buildmesh_protocol::Hash,
    },
    /// The record is further ahead of what is held than the store will keep waiting.
    #[error("record {seq} of {author} is more than {limit} ahead of the {have} held")]
    TooFarAhead {
        /// The author.
        author: NodeId,
        /// The record's seq.
        seq: u64,
        /// The highest contiguous seq held.
        have: u64,
        /// The limit.
        limit: u64,
    },
    /// A batch write failed; the first record of the batch carries the cause.
    #[error("the batch this record was in could not be written: {reason}")]
    WriteFailed {
        /// The cause.
        reason: String,
    },
    /// A blob larger than the store keeps.
    #[error("blob of {len} bytes exceeds the limit of {limit} bytes")]
    BlobTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Db(DbError(e))
    }
}

pub(crate) fn corrupt(tree: &'static str, key: &[u8], reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree,
        key: buildmesh_protocol::keys_hex(key),
        reason: reason.to_string(),
    }
}

/// One node's database: a sled directory with one tree per kind of thing.
#[derive(Debug)]
pub struct Store {
    db: sled::Db,
    /// (author, seq) -> signed record bytes.
    records: sled::Tree,
    /// author -> (seq, hash) of the highest contiguous record.
    heads: sled::Tree,
    /// (author, seq) -> signed record bytes that arrived before their predecessor.
    pending: sled::Tree,
    /// (author, seq, hash) -> a record that conflicts with the one held at (author, seq).
    forks: sled::Tree,
    /// author -> CBOR reason text: authors caught equivocating (or who lost their disk).
    flags: sled::Tree,
    /// hash -> compressed blob.
    blobs: sled::Tree,
    /// hash -> the time (ms) it is kept until, set by the builds that name it.
    blob_keep: sled::Tree,
    /// (time, hash) -> empty: blobs by the time they may go.
    blob_expiry: sled::Tree,
    /// (repo, branch, time, sha) -> record ref of the first announcement.
    commits: sled::Tree,
    /// (repo, branch, sha) -> record ref: announcements collapse here.
    commit_seen: sled::Tree,
    /// (job, author, seq) -> empty: every result of a job.
    results_by_job: sled::Tree,
    /// (builder, branch, finished, job, author) -> record ref.
    results_by_builder: sled::Tree,
    /// (job, attempt, author, seq) -> empty.
    claims_by_job: sled::Tree,
    /// (kind, doc id) -> signed document bytes, in the order they were published.
    docs: sled::Tree,
    // Records of the rarer kinds by kind: (kind name, author, seq).
    kinds: sled::Tree,
    /// Small named values (genesis, node settings).
    meta: sled::Tree,
    /// The read model (see [`views`]): job -> the node's encoded view of the build.
    views: sled::Tree,
    /// (order, job) -> empty.
    views_by_order: sled::Tree,
    /// (builder, order, job) -> empty.
    views_by_builder: sled::Tree,
    /// (builder, branch, order, job) -> empty.
    views_by_branch: sled::Tree,
    /// (sha, job) -> empty.
    views_by_commit: sled::Tree,
    /// (builder, branch) -> the node's encoded status row.
    status: sled::Tree,
    // Appends and ingests of one store run one at a time: each reads a head and writes the next.
    write_lock: Mutex<()>,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir.as_ref())
            .cache_capacity(16 * 1024 * 1024)
            .open()?;
        let store = Store {
            records: db.open_tree("records")?,
            heads: db.open_tree("heads")?,
            pending: db.open_tree("pending")?,
            forks: db.open_tree("forks")?,
            flags: db.open_tree("flags")?,
            blobs: db.open_tree("blobs")?,
            blob_keep: db.open_tree("blob_keep")?,
            blob_expiry: db.open_tree("blob_expiry")?,
            commits: db.open_tree("commits")?,
            commit_seen: db.open_tree("commit_seen")?,
            results_by_job: db.open_tree("results_by_job")?,
            results_by_builder: db.open_tree("results_by_builder")?,
            claims_by_job: db.open_tree("claims_by_job")?,
            docs: db.open_tree("docs")?,
            kinds: db.open_tree("kinds")?,
            meta: db.open_tree("meta")?,
            views: db.open_tree("views")?,
            views_by_order: db.open_tree("views_by_order")?,
            views_by_builder: db.open_tree("views_by_builder")?,
            views_by_branch: db.open_tree("views_by_branch")?,
            views_by_commit: db.open_tree("views_by_commit")?,
            status: db.open_tree("status")?,
            db,
            write_lock: Mutex::new(()),
        };
        store.repair_heads()?;
        store.index_kinds()?;
        Ok(store)
    }

    /// Writes everything to disk (survives a killed process; see the crate docs for power loss).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// A named small value.
    pub fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(name.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Sets a named small value and flushes it.
    pub fn meta_put(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(name.as_bytes(), value)?;
        self.flush()
    }

    /// Removes a named small value and flushes.
    pub fn meta_remove(&self, name: &str) -> Result<(), StoreError> {
        self.meta.remove(name.as_bytes())?;
        self.flush()
    }

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}
