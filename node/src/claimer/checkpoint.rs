//! The claimer's checkpoint: what it learnt, kept in the store so that a start goes on from
//! it instead of learning the whole history again.
//!
//! It holds the claim machine ([`Claims::checkpoint`]), the claimer's own memory of commits,
//! callers, rebuilds, cancels and searches, and how far it learnt each author's log. A start
//! reads it back and learns only the records after that point; without one (a first start,
//! another layout, a damaged one, views written by another layout) it learns every record, as
//! before. It is written at every stop and every [`CHECKPOINT_EVERY`] while running, so a node
//! that crashed learns again at most that much besides what it had not learnt.
//!
//! Records of one author reach the claimer in the order of their log (the store keeps each
//! author's log contiguous, and the feed follows the store), so "learnt up to seq n" means
//! every record before it was learnt too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use buildmesh_protocol::claims::Claims;
use buildmesh_protocol::record::{Bisect, Probes, Rebuild, Record};
use buildmesh_protocol::vv::VersionVector;
use buildmesh_protocol::{Hash, NodeId, Timestamp};
use serde::{Deserialize, Serialize};

use super::{Claimer, PendingCancel};

/// Where the checkpoint is kept (the store's `meta`); the name carries its layout, so a
/// version that changes the layout finds none and learns the whole history once.
const CHECKPOINT_KEY: &str = "claimer_checkpoint_v1";

/// How often a running claimer writes its checkpoint.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_secs(300);

/// Records learnt between two writes of the views while going through the store.
const BATCH: usize = 10_000;

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    #[serde(with = "serde_bytes")]
    machine: Vec<u8>,
    learnt: BTreeMap<NodeId, u64>,
    config_version: Option<u64>,
    commits: BTreeMap<(String, String, String), Timestamp>,
    vouched: BTreeSet<(String, String, String)>,
    requesters: HashMap<(String, String, String), Vec<NodeId>>,
    rebuilds: Vec<(Rebuild, Timestamp)>,
    cancels: HashMap<Hash, Vec<PendingCancel>>,
    searches: HashMap<Hash, Bisect>,
    early_steps: HashMap<Hash, Vec<(Probes, Timestamp)>>,
    distrusted: BTreeSet<NodeId>,
}

impl Claimer {
    /// Writes the checkpoint (the views must be written: a start trusts them for every job
    /// the machine let go of).
    pub(super) fn save_checkpoint(&self) {
        let at = std::time::Instant::now();
        let c = Checkpoint {
            machine: self.machine.checkpoint(),
            learnt: self.learnt.0.clone(),
            config_version: self.config.as_ref().map(|c| c.version),
            commits: self.commits.clone(),
            vouched: self.vouched.clone(),
            requesters: self.requesters.clone(),
            rebuilds: self.rebuilds.clone(),
            cancels: self.cancels.clone(),
            searches: self.searches.clone(),
            early_steps: self.early_steps.clone(),
            distrusted: self.distrusted.clone(),
        };
        let bytes = match serde_cbor::to_vec(&c) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the claimer's checkpoint");
                return;
            }
        };
        match self.store.meta_put(CHECKPOINT_KEY, &bytes) {
            Ok(()) => tracing::debug!(
                bytes = bytes.len(),
                jobs = self.machine.job_count(),
                took = ?at.elapsed(),
                "claimer checkpoint written"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot write the claimer's checkpoint"),
        }
    }

    /// Takes up the checkpoint, if there is one this version reads; returns the configuration
    /// version it was taken under (`Some(None)` for none), or `None` without a checkpoint.
    pub(super) fn resume(&mut self) -> Option<Option<u64>> {
        let bytes = match self.store.meta_get(CHECKPOINT_KEY) {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the claimer's checkpoint; learning every record");
                return None;
            }
        };
        let c: Checkpoint = match serde_cbor::from_slice(&bytes) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the claimer's checkpoint does not decode; learning every record");
                return None;
            }
        };
        let settings = self.machine.settings().clone();
        let capacity = self.machine.capacity();
        let machine = match Claims::from_checkpoint(&c.machine, settings, capacity) {
            Ok(m) if m.me() == self.me => m,
            Ok(_) => {
                tracing::warn!("the claimer's checkpoint is another key's; learning every record");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "learning every record");
                return None;
            }
        };
        self.machine = machine;
        self.learnt = VersionVector(c.learnt);
        self.commits = c.commits;
        self.vouched = c.vouched;
        self.requesters = c.requesters;
        self.rebuilds = c.rebuilds;
        self.cancels = c.cancels;
        self.searches = c.searches;
        self.early_steps = c.early_steps;
        self.distrusted = c.distrusted;
        Some(c.config_version)
    }

    /// Learns every record the store holds beyond what was learnt (all of them after no
    /// checkpoint); returns how many.
    pub(super) fn learn_stored(&mut self) -> usize {
        let heads = match self.store.version_vector() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the store's heads");
                return 0;
            }
        };
        let mut n: usize = 0;
        for (author, head) in heads.0 {
            loop {
                let from = self.learnt.get(&author);
                if from >= head {
                    break;
                }
                let batch = match self.store.records_after(&author, from, 1_000) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read records to learn");
                        break;
                    }
                };
                if batch.is_empty() {
                    break;
                }
                for bytes in batch {
                    match Record::from_trusted(&bytes) {
                        Ok(r) => {
                            self.learn(&r);
                            // Past an unreadable one too: learning it again would not help.
                            self.learnt.raise(author, r.seq());
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "unreadable record while learning the store");
                            self.learnt.raise(author, self.learnt.get(&author) + 1);
                        }
                    }
                    n += 1;
                    if n.is_multiple_of(BATCH) {
                        // Memory follows the open work while going through the store too.
                        self.write_views();
                        self.let_go();
                    }
                }
            }
        }
        n
    }
}
