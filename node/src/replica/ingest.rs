//! Records in: every record, from gossip or sync, through the gate into the store, and what a
//! stored record changes here (trust, the copy of red builds' logs, the record feed).

use std::collections::HashSet;
use std::sync::Arc;

use buildmesh_protocol::NodeId;
use buildmesh_protocol::Timestamp;
use buildmesh_protocol::docs::SignedDoc;
use buildmesh_protocol::record::{Body, Publish, Record, RecordError};
use buildmesh_protocol::trust::{Applied, TrustError};
use buildmesh_store::{Ingest, StoreError};
use libp2p::PeerId;
use tokio::time::Instant;
use tracing::Instrument;

use super::gate::{self, GateInput, GateVerdict};
use super::{Replica, blobs};
use crate::network::Verdict;
use buildmesh_protocol::entitle::Refusal;

impl Replica {
    pub(super) fn apply_trusted(&mut self, doc: &SignedDoc) -> Result<Applied, TrustError> {
        let applied = self.trust.apply(doc);
        if matches!(
            applied,
            Ok(Applied::Admitted(_) | Applied::Revoked(..) | Applied::Config(_))
        ) {
            self.publish_membership();
        }
        applied
    }

    /// Checks and stores records, in order; one verdict per record.
    pub(super) fn ingest(&mut self, items: Vec<Vec<u8>>, source: Option<PeerId>) -> Vec<Verdict> {
        let verified = buildmesh_store::verify_all(&items);
        let mut verdicts = vec![Verdict::Reject; items.len()];
        let mut to_store = Vec::with_capacity(items.len());
        let mut slots = Vec::with_capacity(items.len());
        let mut unknown_authors = HashSet::new();
        for (i, v) in verified.into_iter().enumerate() {
            let record = match v {
                Ok(record) => record,
                Err(RecordError::Codec(e)) => {
                    let reason = match &e {
                        buildmesh_protocol::codec::CodecError::TooLarge { .. } => "oversized",
                        _ => "malformed",
                    };
                    self.refuse(source, reason, e);
                    continue;
                }
                Err(e @ RecordError::BadSignature(_)) => {
                    self.refuse(source, "bad-signature", e);
                    continue;
                }
                Err(e) => {
                    self.refuse(source, "malformed", e);
                    continue;
                }
            };
            let input = GateInput {
                trust: &self.trust,
                now: Timestamp::now(),
            };
            match gate::judge(&input, &record) {
                GateVerdict::Count => {
                    slots.push(i);
                    to_store.push(Ok(record));
                }
                GateVerdict::CountAndAdmit(doc) => {
                    let _ = self.apply_trusted(&doc);
                    slots.push(i);
                    to_store.push(Ok(record));
                }
                GateVerdict::Kept(refusal) => {
                    // In its author's chain it stays (refusing it would stall the author's later
                    // records); the views count it for nothing and report its author, except for
                    // what no view reads.
                    match refusal {
                        Refusal::UnknownKind => {
                            *self.refused.entry(refusal.reason()).or_insert(0) += 1;
                        }
                        Refusal::Malformed => self.note_misbehaviour(
                            record.author_id(),
                            refusal.reason(),
                            record.hash,
                        ),
                        _ => {}
                    }
                    slots.push(i);
                    to_store.push(Ok(record));
                }
                GateVerdict::NotYet => {
                    verdicts[i] = Verdict::Ignore;
                    self.refuse(
                        source,
                        "future",
                        format!(
                            "record {} of {} dated {}",
                            record.seq(),
                            record.author_id(),
                            record.envelope.time
                        ),
                    );
                }
                GateVerdict::UnknownAuthor => {
                    verdicts[i] = Verdict::Ignore;
                    unknown_authors.insert(record.author_id());
                }
                GateVerdict::Refuse { reason, detail } => {
                    let author = record.author_id();
                    let e = self.refused_from.entry(author).or_insert(record.seq());
                    *e = (*e).min(record.seq());
                    self.refuse(source, reason, detail);
                }
            }
        }
        let mut gap = false;
        if !to_store.is_empty() {
            let outcomes = tokio::task::block_in_place(|| self.store.ingest_verified(to_store));
            for (slot, outcome) in slots.into_iter().zip(outcomes) {
                verdicts[slot] = match outcome {
                    Ok(Ingest::Appended(records)) => {
                        for r in &records {
                            self.after_append(r);
                        }
                        Verdict::Accept
                    }
                    Ok(Ingest::Duplicate) => {
                        *self.refused.entry("duplicate").or_insert(0) += 1;
                        Verdict::Ignore
                    }
                    Ok(Ingest::Held { .. }) => {
                        gap = true;
                        Verdict::Accept
                    }
                    Ok(Ingest::Fork { author, seq }) => {
                        self.refuse(source, "fork", format!("{author} signed two records {seq}"));
                        Verdict::Accept
                    }
                    Err(e @ StoreError::ChainBreak { .. }) => {
                        self.refuse(source, "chain-break", e);
                        Verdict::Reject
                    }
                    Err(e @ StoreError::TooFarAhead { .. }) => {
                        self.refuse(source, "too-far-ahead", e);
                        Verdict::Ignore
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store failed to take a record");
                        Verdict::Ignore
                    }
                };
            }
        }
        if (gap || !unknown_authors.is_empty())
            && let Some(peer) = source
        {
            self.start_sync(peer);
        }
        verdicts
    }

    // What a newly stored record changes here.
    pub(super) fn after_append(&mut self, record: &Record) {
        // When each record reached this node's store, for measuring propagation across
        // processes (`RUST_LOG=buildmesh::stored=trace`).
        tracing::trace!(target: "buildmesh::stored", author = %record.author_id(), seq = record.seq(), kind = record.envelope.kind.name(), "record stored");
        match record.body() {
            Ok(Body::Publish(Publish { doc })) => self.apply_doc(&doc, record.author_id()),
            Ok(Body::BuildResult(r)) if record.author_id() != self.me => {
                let worker = record.author_id();
                let now = buildmesh_protocol::Timestamp::now();
                let mut missing = blobs::missing_red_logs(&self.store, &r);
                missing.retain(|log| {
                    let nodes = self
                        .trust
                        .admissions()
                        .filter(|a| self.trust.check_member(&a.node, now).is_ok())
                        .map(|a| a.node);
                    blobs::holds_red_log(
                        log,
                        &self.me,
                        &worker,
                        nodes,
                        self.settings.red_log_copies,
                    )
                });
                if !missing.is_empty() {
                    let peers = blobs::sources(&self.door, Some(record.author_id()));
                    blobs::copy(&self.net, &self.store, missing, peers);
                }
            }
            _ => {}
        }
        // Nobody listening is fine.
        let _ = self.feed.send(Arc::new(record.clone()));
    }

    pub(super) fn apply_doc(&mut self, doc: &SignedDoc, publisher: NodeId) {
        match self.apply_trusted(doc) {
            Ok(Applied::Revoked(subject, reason)) => {
                tracing::warn!(subject = %subject, %reason, by = %publisher, "key revoked");
                let peer = subject.to_peer_id();
                self.door.remove(&peer);
                if self.liveness.forget(&subject, Instant::now()) {
                    self.publish_membership();
                }
                let net = self.net.clone();
                tokio::spawn(
                    async move {
                        let _ = net.block(peer).await;
                        let _ = net.disconnect(peer).await;
                    }
                    .in_current_span(),
                );
                if subject == self.me {
                    tracing::error!(%reason, "this node's own key was revoked: it authors nothing more");
                    self.revoked = true;
                }
            }
            Ok(Applied::Admitted(node)) => tracing::debug!(%node, "admission applied"),
            Ok(Applied::Config(v)) => tracing::info!(version = v, "builder configuration applied"),
            Ok(_) => {}
            Err(TrustError::StaleConfig { .. }) => {}
            Err(e) => self.refuse(
                None,
                "bad-document",
                format!("published by {publisher}: {e}"),
            ),
        }
    }
}
