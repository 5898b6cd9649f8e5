//! Anti-entropy with one peer: swap version vectors, then pull what the peer holds beyond this
//! node, author by author, in bounded batches, each checked by the replica before it is stored.

use std::collections::HashMap;

use buildmesh_protocol::NodeId;
use buildmesh_protocol::vv::VersionVector;
use buildmesh_protocol::wire::{MAX_PULL_RECORDS, Request, Response};
use buildmesh_store::Store;
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};

use tracing::Instrument;

use super::Command;
use crate::network::Client;

/// Syncs with `peer`; returns the peer's version vector if the exchange worked. `skip` names
/// authors whose records from some seq on this node refuses (revoked keys): they are not pulled.
pub(crate) async fn with_peer(
    peer: PeerId,
    net: &Client,
    store: &Store,
    replica: &mpsc::Sender<Command>,
    skip: &HashMap<NodeId, u64>,
) -> Option<VersionVector> {
    let ours = match store.version_vector() {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the version vector");
            return None;
        }
    };
    let theirs = match net
        .request(peer, Request::VersionVector(ours.clone()))
        .await
    {
        Ok(Response::VersionVector(v)) => v,
        Ok(Response::Refused(why)) => {
            tracing::debug!(%peer, %why, "sync refused");
            return None;
        }
        Ok(_) => return None,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "sync failed");
            return None;
        }
    };
    for (author, range) in theirs.ahead_of(&ours) {
        let end = *range.end();
        let refused = |from: u64| skip.get(&author).is_some_and(|&r| r <= from);
        let pull = |from: u64| {
            let net = net.clone();
            tokio::spawn(
                async move {
                    let request = Request::Pull {
                        author,
                        from,
                        max: MAX_PULL_RECORDS,
                    };
                    net.request(peer, request).await
                }
                .in_current_span(),
            )
        };
        let mut from = *range.start();
        if refused(from) {
            continue;
        }
        let mut pending = Some((from, pull(from)));
        while let Some((asked, request)) = pending.take() {
            let records = match request.await {
                Ok(Ok(Response::Records(r))) if !r.is_empty() => r,
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "pull failed");
                    return Some(theirs);
                }
                Err(_) => return None,
            };
            // While this batch is checked and stored, the next one is on its way: a batch
            // connects when every record of this one is taken, as it is unless something was
            // refused (then the prefetch is dropped and the pull resumes from the head).
            let expected = asked + records.len() as u64;
            if expected <= end && !refused(expected) {
                pending = Some((expected, pull(expected)));
            }
            let (reply, done) = oneshot::channel();
            let records = records.into_iter().map(|b| b.into_vec()).collect();
            if replica
                .send(Command::Ingest {
                    peer,
                    records,
                    reply,
                })
                .await
                .is_err()
                || done.await.is_err()
            {
                return None;
            }
            let head = store.head_of(&author).map(|(s, _)| s).unwrap_or(0);
            if head < from {
                // Nothing connected (refused, or a gap the peer cannot fill): stop here.
                break;
            }
            from = head + 1;
            if pending.as_ref().is_some_and(|(next, _)| *next != from) {
                pending = None;
            }
            if pending.is_none() && from <= end && !refused(from) {
                pending = Some((from, pull(from)));
            }
        }
    }
    Some(theirs)
}
