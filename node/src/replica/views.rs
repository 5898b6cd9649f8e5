//! What the replica shows of what it knows: the admitted nodes (`GET /api/v1/nodes`) and its
//! counters (`/metrics`, health).

use std::collections::{BTreeMap, HashSet};

use buildmesh_protocol::docs::{Admission, Role};
use buildmesh_protocol::trust::Trust;
use buildmesh_protocol::{NodeId, Timestamp};
use buildmesh_store::Store;
use serde::Serialize;
use tokio::time::Instant;

use super::door::Door;
use crate::liveness::Liveness;

/// One admitted node, as the API lists it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct NodeView {
    /// Node id.
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its roles.
    pub roles: Vec<Role>,
    /// Heard from within the liveness window.
    pub live: bool,
    /// When it was last heard from (this node's clock).
    pub last_heard: Option<Timestamp>,
    /// Revoked (at any effective time).
    pub revoked: bool,
    /// Why, when revoked.
    pub revocation_reason: Option<String>,
    /// Builds it runs now (from its last heartbeat).
    pub running: u32,
    /// Builds it may run at once.
    pub capacity: u32,
    /// Records of its log held here.
    pub records: u64,
    /// Connected to this node now.
    pub connected: bool,
    /// Flagged for signing two records with one seq.
    pub flagged: bool,
    /// Who to mail when it goes missing (from its admission).
    #[serde(default)]
    pub owner: Option<String>,
    /// Records of its that it was not entitled to (kept in its chain, counted for nothing).
    #[serde(default)]
    pub misbehaving: u64,
    /// The reason of the last of them (`unentitled-commit`, `unclaimed-result`, …).
    #[serde(default)]
    pub misbehaviour: Option<String>,
    /// A worker's health and quarantine, derived from the results every node holds (left out
    /// for a node with no result yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<buildmesh_protocol::health::HealthView>,
    /// Why its worker claims nothing now, from its heartbeat (a self-check failed: low disk,
    /// a failing check command); left out while it claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
}

/// What an author did that it was not entitled to, as far as this node saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Misbehaviour {
    /// How many records.
    pub count: u64,
    /// The last reason.
    pub last: String,
}

/// Counters and state.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Metrics {
    /// This node.
    pub id: Option<NodeId>,
    /// Records held in logs.
    pub records: u64,
    /// Records held back for a gap.
    pub pending: u64,
    /// Peers connected.
    pub peers_connected: u64,
    /// Peers that showed a valid admission.
    pub peers_admitted: u64,
    /// Whether the node caught up with the mesh and may author records.
    pub caught_up: bool,
    /// Records of its own log no peer is known to hold yet (not safe: sled does not fsync
    /// every write; peers pull them by anti-entropy).
    #[serde(default)]
    pub unacknowledged: u64,
    /// Refused messages by reason.
    pub refused: BTreeMap<String, u64>,
    /// Records accepted from gossip.
    pub gossip_records: u64,
    /// Records accepted from sync.
    pub synced_records: u64,
    /// Syncs finished.
    pub syncs: u64,
    /// Records authored here.
    pub authored: u64,
}

/// Every admitted node as this node sees it now.
pub(super) fn nodes(
    trust: &Trust,
    liveness: &Liveness,
    door: &Door,
    store: &Store,
    misbehaving: &BTreeMap<NodeId, Misbehaviour>,
) -> Vec<NodeView> {
    let now = Instant::now();
    let at = Timestamp::now();
    let flagged: HashSet<NodeId> = store
        .flagged()
        .unwrap_or_default()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let connected: HashSet<NodeId> = door.admitted().filter_map(|(_, p)| p.node).collect();
    trust
        .admissions()
        .map(|a: &Admission| {
            let live = liveness.get(&a.node);
            let revocation = trust.revocation(&a.node);
            let revoked_now = trust.revoked_at(&a.node, at).is_some();
            NodeView {
                id: a.node,
                name: a.name.clone(),
                labels: a.labels.clone(),
                roles: a.roles.iter().copied().collect(),
                live: !revoked_now && liveness.is_live(&a.node, now),
                last_heard: live.map(|l| l.heard_at),
                revoked: revocation.is_some(),
                revocation_reason: revocation.map(|r| r.reason.to_string()),
                running: live.map_or(0, |l| l.running),
                capacity: live.map_or(0, |l| l.capacity),
                records: store.head_of(&a.node).map(|(s, _)| s).unwrap_or(0),
                connected: connected.contains(&a.node),
                flagged: flagged.contains(&a.node),
                owner: a.owner.clone(),
                misbehaving: misbehaving.get(&a.node).map_or(0, |m| m.count),
                misbehaviour: misbehaving.get(&a.node).map(|m| m.last.clone()),
                health: None,
                paused: live.and_then(|l| l.paused.clone()),
            }
        })
        .collect()
}
