//! Blobs (build logs) are not replicated with the logs that name them: a node fetches one from
//! a peer when it is asked for it. The logs of red builds are copied as soon as their result
//! arrives by `[mesh] red_log_copies` nodes besides the worker ([`holds_red_log`]: the same
//! ones on every node), so that they stay readable when the worker that ran them is gone
//! without every node of a large mesh keeping every failure log.

use std::sync::Arc;

use buildmesh_protocol::record::{BuildResult, ResultCode};
use buildmesh_protocol::wire::{MAX_BLOB_PART, Request, Response};
use buildmesh_protocol::{Hash, NodeId};
use buildmesh_store::Store;
use libp2p::PeerId;
use tracing::Instrument;

use super::door::Door;
use crate::network;

/// Peers to ask for a blob: `first` (its author) if connected, then every admitted peer.
pub(super) fn sources(door: &Door, first: Option<NodeId>) -> Vec<PeerId> {
    let mut peers: Vec<PeerId> = door.admitted().map(|(id, _)| *id).collect();
    if let Some(f) = first {
        let f = f.to_peer_id();
        if let Some(i) = peers.iter().position(|p| *p == f) {
            peers.swap(0, i);
        }
    }
    peers
}

/// The largest packed blob fetched: the store's blob limit, compressed (lz4's worst case adds
/// a little over 0.4 %), with room for the size header.
const MAX_PACKED: u64 = buildmesh_store::blobs::MAX_BLOB_BYTES as u64 * 101 / 100 + 1024;

/// Asks `peers` in turn for a blob; keeps and returns the first copy that matches its hash.
/// Blobs move in parts of their packed (compressed) form, so a log of any size up to the step
/// log cap fits the frame limit; a peer that does not know parts is asked for the whole blob.
pub(super) async fn fetch(
    net: &network::Client,
    store: &Store,
    hash: Hash,
    peers: Vec<PeerId>,
) -> Option<Vec<u8>> {
    for peer in peers {
        match fetch_parts(net, store, hash, peer).await {
            Some(Ok(())) => match store.blob(&hash) {
                Ok(Some(content)) => return Some(content),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot read back a fetched blob"),
            },
            Some(Err(())) => continue,
            None => {}
        }
        match net.request(peer, Request::Blob(hash)).await {
            Ok(Response::Blob(Some(bytes))) => {
                let bytes = bytes.into_vec();
                match store.put_blob_checked(&hash, &bytes) {
                    Ok(true) => return Some(bytes),
                    Ok(false) => {
                        tracing::warn!(%peer, blob = %hash.short(), "peer sent a blob that does not match its hash")
                    }
                    Err(e) => tracing::error!(error = %e, "cannot keep a fetched blob"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(%peer, error = %e, "blob fetch failed"),
        }
    }
    None
}

// The blob from one peer in parts. `None`: the peer does not answer parts (ask it the old way);
// `Some(Err)`: it does not hold the blob, or sent a bad one; `Some(Ok)`: kept.
async fn fetch_parts(
    net: &network::Client,
    store: &Store,
    hash: Hash,
    peer: PeerId,
) -> Option<Result<(), ()>> {
    let mut packed: Vec<u8> = Vec::new();
    loop {
        let request = Request::BlobPart {
            hash,
            offset: packed.len() as u64,
            max: MAX_BLOB_PART,
        };
        let part = match net.request(peer, request).await {
            Ok(Response::BlobPart(Some(part))) => part,
            Ok(Response::BlobPart(None)) => return Some(Err(())),
            Ok(_) => return None,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "blob part fetch failed");
                return None;
            }
        };
        let total = part.total;
        if total > MAX_PACKED
            || part.offset != packed.len() as u64
            || part.bytes.is_empty() && (packed.len() as u64) < total
        {
            tracing::warn!(%peer, blob = %hash.short(), "peer sent a blob part out of order or too large");
            return Some(Err(()));
        }
        packed.extend_from_slice(&part.bytes);
        if packed.len() as u64 >= total {
            packed.truncate(total as usize);
            break;
        }
    }
    match store.put_packed_blob(&hash, &packed) {
        Ok(true) => Some(Ok(())),
        Ok(false) => {
            tracing::warn!(%peer, blob = %hash.short(), "peer sent a blob that does not match its hash");
            Some(Err(()))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot keep a fetched blob");
            Some(Err(()))
        }
    }
}

/// Whether `me` is one of the `copies` nodes that copy a red log of `worker`'s at once: the
/// first by a rendezvous hash of the log among `nodes` (the admitted ones, the worker left
/// out), so that every node picks the same ones and each holds its share.
pub(super) fn holds_red_log(
    log: &Hash,
    me: &NodeId,
    worker: &NodeId,
    nodes: impl Iterator<Item = NodeId>,
    copies: usize,
) -> bool {
    let rank = |n: &NodeId| {
        Hash::of(
            &[
                b"buildmesh/v1/red-log-holder\0".as_slice(),
                &log.0,
                n.as_bytes(),
            ]
            .concat(),
        )
        .0
    };
    let mine = rank(me);
    let ahead = nodes
        .filter(|n| n != me && n != worker)
        .filter(|n| rank(n) < mine)
        .count();
    ahead < copies
}

/// The logs of a red build that this node does not hold.
pub(super) fn missing_red_logs(store: &Store, result: &BuildResult) -> Vec<Hash> {
    if !matches!(result.result, ResultCode::Failure | ResultCode::Flaky) {
        return Vec::new();
    }
    result
        .steps
        .iter()
        .filter_map(|s| s.log)
        .filter(|h| !store.has_blob(h).unwrap_or(true))
        .collect()
}

/// How often, and how far apart at most, the copy of a red build's log is tried again while no
/// peer that was asked had it (its worker may be back soon, or reachable through another peer).
const COPY_TRIES: u32 = 8;
const COPY_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Copies `logs` here from `peers`, on a task of its own, trying again with backoff until it
/// holds (a red build's log stays readable when its worker is gone only once it is copied).
pub(super) fn copy(net: &network::Client, store: &Arc<Store>, logs: Vec<Hash>, peers: Vec<PeerId>) {
    if logs.is_empty() {
        return;
    }
    let (net, store) = (net.clone(), store.clone());
    tokio::spawn(
        async move {
            for h in logs {
                let mut wait = std::time::Duration::from_millis(500);
                let mut held = false;
                for _ in 0..COPY_TRIES {
                    if store.has_blob(&h).unwrap_or(false)
                        || fetch(&net, &store, h, peers.clone()).await.is_some()
                    {
                        held = true;
                        break;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(COPY_BACKOFF_MAX);
                }
                if !held {
                    tracing::warn!(log = %h.short(), "log of a red build not found on any peer");
                }
            }
        }
        .in_current_span(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildmesh_protocol::SecretKey;

    // For any log, exactly `copies` nodes besides the worker copy it, every node agrees which,
    // and over many logs each node holds its share.
    #[test]
    fn red_logs_are_copied_by_as_many_nodes_as_configured() {
        let nodes: Vec<NodeId> = (1..=10u8)
            .map(|i| SecretKey::from_seed([i; 32]).id())
            .collect();
        let worker = nodes[0];
        let mut held = std::collections::BTreeMap::<NodeId, usize>::new();
        for l in 0..200u32 {
            let log = Hash::of(&l.to_be_bytes());
            for copies in [0, 2, 3] {
                let holders: Vec<NodeId> = nodes
                    .iter()
                    .filter(|me| {
                        **me != worker
                            && holds_red_log(&log, me, &worker, nodes.iter().copied(), copies)
                    })
                    .copied()
                    .collect();
                assert_eq!(holders.len(), copies, "log {l}");
                if copies == 2 {
                    for h in holders {
                        *held.entry(h).or_default() += 1;
                    }
                }
            }
            // More copies than nodes: every other node copies.
            let all = nodes[1..]
                .iter()
                .filter(|me| holds_red_log(&log, me, &worker, nodes.iter().copied(), 50))
                .count();
            assert_eq!(all, 9);
        }
        // 400 copies over 9 nodes: about 44 each.
        assert_eq!(held.len(), 9);
        assert!(held.values().all(|n| (20..=70).contains(n)), "{held:?}");
    }
}
