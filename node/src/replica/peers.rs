//! The replica's side of the connection with each peer: the door's hellos, the requests peers
//! make (version vectors, pulls, blobs), and what arrives by gossip (records go to the gate,
//! signals are checked here; heartbeats feed liveness).

use std::time::Duration;

use buildmesh_protocol::trust::TrustError;
use buildmesh_protocol::wire::{
    Gossip, Heartbeat, Hello, MAX_PULL_BYTES, MAX_PULL_RECORDS, Request, Response, Signal,
    SignedSignal,
};
use buildmesh_protocol::{NodeId, Timestamp};
use buildmesh_store::StoreError;
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;
use tracing::Instrument;

use super::door::{self, Refusal};
use super::{Command, MAX_SIGNAL_SKEW, Replica};
use crate::network::Verdict;

/// How long a peer that lost one of its connections has to answer over another before it
/// counts as lost: a busy node answers a version-vector request in milliseconds.
const PROBE_TIMEOUT: Duration = Duration::from_millis(750);

impl Replica {
    pub(super) async fn on_connected(&mut self, peer: PeerId, addr: Multiaddr) {
        let revoked = NodeId::from_peer_id(&peer)
            .ok()
            .and_then(|n| self.trust.revoked_at(&n, Timestamp::now()).map(|_| ()))
            .is_some();
        if self.cut.contains(&peer) || revoked {
            let _ = self.net.disconnect(peer).await;
            return;
        }
        tracing::debug!(%peer, %addr, "connected; waiting for its admission");
        self.door.connected(peer, Instant::now());
        let hello = Request::Hello(self.hello());
        let net = self.net.clone();
        let tx = self.self_tx.clone();
        tokio::spawn(
            async move {
                let answer = net.request(peer, hello).await.map_err(|e| e.to_string());
                let _ = tx.send(Command::HelloAnswer { peer, answer }).await;
            }
            .in_current_span(),
        );
    }

    // One of a peer's connections closed and others remain: a killed process's TCP connection
    // closes at once, its QUIC connection only at its idle timeout. Ask over what remains; no
    // answer within PROBE_TIMEOUT counts as every connection closed.
    pub(super) fn probe(&self, peer: PeerId) {
        let Ok(ours) = self.store.version_vector() else {
            return;
        };
        let net = self.net.clone();
        let tx = self.self_tx.clone();
        tokio::spawn(
            async move {
                let asked = net.request(peer, Request::VersionVector(ours));
                let answered = matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, asked).await,
                    Ok(Ok(Response::VersionVector(_)))
                );
                if !answered {
                    let _ = tx.send(Command::Unreachable { peer }).await;
                }
            }
            .in_current_span(),
        );
    }

    pub(super) fn hello(&self) -> Hello {
        Hello {
            mesh: self.trust.mesh(),
            admission: self.admission.clone(),
        }
    }

    // Checks a peer's hello; on success the peer is admitted and synced with, otherwise it is
    // refused and disconnected.
    pub(super) async fn at_door(&mut self, peer: PeerId, hello: &Hello) -> Result<(), Refusal> {
        let checked = door::check_hello(&mut self.trust, peer, hello, Timestamp::now());
        if checked.learnt {
            self.publish_membership();
        }
        match checked.verdict {
            Ok(node) => {
                if self.door.admit(peer, node) {
                    self.liveness.reconnected(&node);
                    let name = self
                        .trust
                        .admission(&node)
                        .map(|a| a.name.clone())
                        .unwrap_or_default();
                    tracing::info!(peer = %node, name, "peer admitted");
                    // Into gossip now that it has shown its admission.
                    let _ = self.net.admit(peer).await;
                    self.start_sync(peer);
                }
                Ok(())
            }
            Err(refusal) => {
                self.refuse(Some(peer), refusal.reason, &refusal.detail);
                // Let the refusal reach the peer before the connection closes.
                let net = self.net.clone();
                tokio::spawn(
                    async move {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = net.disconnect(peer).await;
                    }
                    .in_current_span(),
                );
                Err(refusal)
            }
        }
    }

    pub(super) async fn on_request(&mut self, peer: PeerId, request: Request) -> Response {
        if let Request::Hello(hello) = &request {
            return match self.at_door(peer, hello).await {
                Ok(()) => Response::Hello(self.hello()),
                Err(refusal) => Response::Refused(refusal.detail),
            };
        }
        if !self.door.is_admitted(&peer) {
            self.refuse(
                Some(peer),
                "unadmitted-peer",
                "request before a valid hello",
            );
            return Response::Refused("show your admission first".into());
        }
        let result = match request {
            Request::Hello(_) => unreachable!("answered above"),
            Request::VersionVector(theirs) => {
                // The peer says how much of this node's log it holds.
                self.catch_up.peer_holds(theirs.get(&self.me));
                self.store.version_vector().map(Response::VersionVector)
            }
            Request::Pull { author, from, max } => self.pull_answer(&author, from, max),
            Request::Blob(hash) => self
                .store
                .blob(&hash)
                .map(|b| Response::Blob(b.map(serde_bytes::ByteBuf::from))),
            Request::BlobPart { hash, offset, max } => {
                self.store.packed_blob(&hash).map(|packed| {
                    Response::BlobPart(packed.map(|p| {
                        let start = (offset.min(p.len() as u64)) as usize;
                        let len = max.min(buildmesh_protocol::wire::MAX_BLOB_PART) as usize;
                        let end = start.saturating_add(len).min(p.len());
                        buildmesh_protocol::wire::BlobPart {
                            total: p.len() as u64,
                            offset: start as u64,
                            bytes: serde_bytes::ByteBuf::from(p[start..end].to_vec()),
                        }
                    }))
                })
            }
            // Ballots go from the network straight to the notifier; one that strays here has
            // no election to answer it.
            Request::Ballot(_) => Ok(Response::Ballots(Vec::new())),
        };
        result.unwrap_or_else(|e| {
            tracing::error!(error = %e, "store failed while answering a peer");
            Response::Refused(format!("store error: {e}"))
        })
    }

    pub(super) fn pull_answer(
        &self,
        author: &NodeId,
        from: u64,
        max: u32,
    ) -> Result<Response, StoreError> {
        let max = max.min(MAX_PULL_RECORDS) as usize;
        let records = self
            .store
            .records_after(author, from.saturating_sub(1), max)?;
        let mut total = 0;
        let mut out = Vec::new();
        for r in records {
            total += r.len();
            if total > MAX_PULL_BYTES && !out.is_empty() {
                break;
            }
            out.push(serde_bytes::ByteBuf::from(r));
        }
        Ok(Response::Records(out))
    }

    pub(super) async fn on_gossip(&mut self, source: PeerId, data: &[u8]) -> Verdict {
        if !self.door.is_admitted(&source) {
            // A peer still at the door may gossip before its hello is through: that is the
            // order libp2p delivers things in, not misbehaviour. Anti-entropy brings it later.
            if !self.door.contains(&source) {
                self.refuse(
                    Some(source),
                    "unadmitted-peer",
                    "gossip before a valid hello",
                );
            }
            return Verdict::Ignore;
        }
        match Gossip::from_bytes(data) {
            Err(e) => {
                let reason = match e {
                    buildmesh_protocol::codec::CodecError::TooLarge { .. } => "oversized",
                    _ => "malformed",
                };
                self.refuse(Some(source), reason, e);
                Verdict::Reject
            }
            Ok(Gossip::Record(bytes)) => {
                let verdict = self.ingest(vec![bytes.into_vec()], Some(source))[0];
                if verdict == Verdict::Accept {
                    self.metrics.gossip_records += 1;
                }
                verdict
            }
            Ok(Gossip::Signal(signal)) => self.on_signal(source, &signal),
        }
    }

    pub(super) fn on_signal(&mut self, source: PeerId, signed: &SignedSignal) -> Verdict {
        let signal = match signed.verify() {
            Ok(s) => s,
            Err(e) => {
                self.refuse(Some(source), "bad-signature", e);
                return Verdict::Reject;
            }
        };
        let sender = signal.sender();
        let now = Timestamp::now();
        if let Err(e) = self.trust.check_member(&sender, now) {
            return match e {
                TrustError::NotAdmitted { .. } => Verdict::Ignore,
                other => {
                    self.refuse(Some(source), "revoked", other);
                    Verdict::Reject
                }
            };
        }
        let time = signal.time();
        if time.since(now) > MAX_SIGNAL_SKEW || now.since(time) > MAX_SIGNAL_SKEW {
            self.refuse(
                Some(source),
                "stale-signal",
                format!("signal from {sender} dated {time}"),
            );
            return Verdict::Ignore;
        }
        // Every signal is ordered per sender and subject: a replay (another peer publishing the
        // same signed bytes again) has no effect beyond the first delivery.
        let replay = match &signal {
            Signal::Heartbeat(_) => self.liveness.is_replay(&sender, time),
            Signal::Progress(p) => !self.signal_order.take(sender, (p.job, p.attempt), time),
            Signal::Holder(h) => !self.signal_order.take(
                sender,
                (
                    buildmesh_protocol::Hash::ZERO,
                    h.term.min(u32::MAX as u64) as u32,
                ),
                time,
            ),
        };
        if replay {
            self.refuse(
                Some(source),
                "replayed-signal",
                format!("signal from {sender} dated {time}"),
            );
            return Verdict::Ignore;
        }
        match &signal {
            Signal::Heartbeat(h) => self.heard(h),
            Signal::Progress(_) | Signal::Holder(_) => {}
        }
        let _ = self.signals.send(signal);
        Verdict::Accept
    }

    pub(super) fn heard(&mut self, h: &Heartbeat) {
        if self.liveness.heard(h, Instant::now(), Timestamp::now()) {
            self.publish_membership();
        }
        let held = self.store.head_of(&h.node).map(|(s, _)| s).unwrap_or(0);
        if h.head > held && !self.refused_from.contains_key(&h.node) {
            // Its log is ahead of what reached us by gossip: ask someone.
            if let Some(peer) = self.door.peer_of(&h.node) {
                self.start_sync(peer);
            }
        }
    }
}
