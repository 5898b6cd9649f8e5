//! Blobs (build logs) are not replicated with the logs that name them: a node fetches one from
//! a peer when it is asked for it, and copies the logs of red builds as soon as their result
//! arrives, so that they stay readable when the worker that ran them is gone.

use std::sync::Arc;

use buildmesh_protocol::record::{BuildResult, ResultCode};
use buildmesh_protocol::wire::{Request, Response};
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

/// Asks `peers` in turn for a blob; keeps and returns the first copy that matches its hash.
pub(super) async fn fetch(
    net: &network::Client,
    store: &Store,
    hash: Hash,
    peers: Vec<PeerId>,
) -> Option<Vec<u8>> {
    for peer in peers {
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

/// Copies `logs` here from `peers`, on a task of its own.
pub(super) fn copy(net: &network::Client, store: &Arc<Store>, logs: Vec<Hash>, peers: Vec<PeerId>) {
    if logs.is_empty() {
        return;
    }
    let (net, store) = (net.clone(), store.clone());
    tokio::spawn(
        async move {
            for h in logs {
                if fetch(&net, &store, h, peers.clone()).await.is_none() {
                    tracing::warn!(log = %h.short(), "log of a red build not found on any peer");
                }
            }
        }
        .in_current_span(),
    );
}
