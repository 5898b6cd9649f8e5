//! The door: what a connected peer must show before anything it sends counts, and the table of
//! peers at the door or through it.
//!
//! A peer is `connected` (in the table, not admitted, with a deadline) until its hello checks
//! out (`admitted`, with its node id) or it is refused with a reason; a peer still at the door
//! when its deadline passes is refused with `no-admission`. Both sides send a hello, so a peer
//! is usually admitted by whichever hello arrives first. No I/O here: the replica sends the
//! hellos, disconnects the refused and counts the refusals.

use std::collections::HashMap;
use std::time::Duration;

use buildmesh_protocol::trust::{Applied, Trust, TrustError};
use buildmesh_protocol::wire::Hello;
use buildmesh_protocol::{NodeId, Timestamp};
use libp2p::PeerId;
use tokio::time::Instant;

/// Why a peer is turned away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The refusal counter it goes to.
    pub reason: &'static str,
    /// For the log, and for the peer.
    pub detail: String,
}

impl Refusal {
    fn new(reason: &'static str, detail: impl ToString) -> Self {
        Refusal {
            reason,
            detail: detail.to_string(),
        }
    }
}

/// What the door made of a hello.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HelloCheck {
    /// The node admitted, or why not.
    pub verdict: Result<NodeId, Refusal>,
    /// The admission shown was new to trust (and is folded in now).
    pub learnt: bool,
}

/// Checks a peer's hello: the same mesh, an admission that holds, for the key on the other end
/// of the connection, in force at `now`. The admission shown is folded into `trust` once its
/// signatures hold, even when the node behind it is then refused as revoked or expired: it is
/// what a maintainer signed, and the node list shows it.
pub(crate) fn check_hello(
    trust: &mut Trust,
    peer: PeerId,
    hello: &Hello,
    now: Timestamp,
) -> HelloCheck {
    let mut learnt = false;
    let verdict = check(trust, peer, hello, now, &mut learnt);
    HelloCheck { verdict, learnt }
}

fn check(
    trust: &mut Trust,
    peer: PeerId,
    hello: &Hello,
    now: Timestamp,
    learnt: &mut bool,
) -> Result<NodeId, Refusal> {
    if hello.mesh != trust.mesh() {
        return Err(Refusal::new(
            "wrong-mesh",
            format!("peer is in mesh {}", hello.mesh),
        ));
    }
    let admission = trust
        .check_admission(&hello.admission)
        .map_err(|e| Refusal::new("bad-admission", e))?;
    if admission.node.to_peer_id() != peer {
        return Err(Refusal::new(
            "bad-admission",
            format!(
                "admission is for {}, not for the connected key",
                admission.node
            ),
        ));
    }
    *learnt = matches!(trust.apply(&hello.admission), Ok(Applied::Admitted(_)));
    trust
        .check_member(&admission.node, now)
        .map_err(|e| match e {
            TrustError::Revoked { .. } => Refusal::new("revoked", e),
            TrustError::Expired { .. } => Refusal::new("expired", e),
            _ => Refusal::new("bad-admission", e),
        })?;
    Ok(admission.node)
}

/// A connected peer.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Its node, once admitted.
    pub node: Option<NodeId>,
    pub admitted: bool,
    /// When a peer still at the door is turned away.
    pub deadline: Instant,
    /// A sync round with it is under way.
    pub syncing: bool,
    /// When it connected.
    pub since: Instant,
}

/// Every connected peer, at the door or admitted.
#[derive(Debug)]
pub(crate) struct Door {
    peers: HashMap<PeerId, Peer>,
    timeout: Duration,
}

impl Door {
    /// A door that gives a connected peer `timeout` to show its admission.
    pub(crate) fn new(timeout: Duration) -> Self {
        Door {
            peers: HashMap::new(),
            timeout,
        }
    }

    /// A peer connected: it waits at the door until `now + timeout`.
    pub(crate) fn connected(&mut self, peer: PeerId, now: Instant) {
        self.peers.insert(
            peer,
            Peer {
                node: None,
                admitted: false,
                deadline: now + self.timeout,
                syncing: false,
                since: now,
            },
        );
    }

    /// A peer whose hello checked out goes through. Returns whether it just did (a peer
    /// already through, or one no longer connected, changes nothing).
    pub(crate) fn admit(&mut self, peer: PeerId, node: NodeId) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        if p.admitted {
            return false;
        }
        p.admitted = true;
        p.node = Some(node);
        true
    }

    /// Takes out every peer still at the door after its deadline.
    pub(crate) fn late(&mut self, now: Instant) -> Vec<PeerId> {
        let late: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.admitted && p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for peer in &late {
            self.peers.remove(peer);
        }
        late
    }

    /// The peer left (or was sent away).
    pub(crate) fn remove(&mut self, peer: &PeerId) -> Option<Peer> {
        self.peers.remove(peer)
    }

    pub(crate) fn contains(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    pub(crate) fn is_admitted(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.admitted)
    }

    /// Every connected peer, at the door or not.
    pub(crate) fn all(&self) -> impl Iterator<Item = (&PeerId, &Peer)> {
        self.peers.iter()
    }

    /// Every admitted peer.
    pub(crate) fn admitted(&self) -> impl Iterator<Item = (&PeerId, &Peer)> {
        self.peers.iter().filter(|(_, p)| p.admitted)
    }

    /// The admitted peer behind `node`, if connected.
    pub(crate) fn peer_of(&self, node: &NodeId) -> Option<PeerId> {
        self.admitted()
            .find(|(_, p)| p.node == Some(*node))
            .map(|(id, _)| *id)
    }

    /// Marks a sync round with an admitted peer begun; `false` if the peer is not admitted or
    /// a round with it is already under way.
    pub(crate) fn begin_sync(&mut self, peer: &PeerId) -> bool {
        match self.peers.get_mut(peer) {
            Some(p) if p.admitted && !p.syncing => {
                p.syncing = true;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn end_sync(&mut self, peer: &PeerId) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.syncing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::testkit::{T0, admission, key, revocation, trust};

    fn hello(t: &Trust, doc: buildmesh_protocol::docs::SignedDoc) -> Hello {
        Hello {
            mesh: t.mesh(),
            admission: doc,
        }
    }

    #[test]
    fn a_valid_hello_admits_the_node_and_teaches_its_admission() {
        let (mut t, m) = trust();
        let worker = key(2);
        let h = hello(&t, admission(&t, &m, &worker, None));
        let checked = check_hello(&mut t, worker.id().to_peer_id(), &h, T0);
        assert_eq!(checked.verdict, Ok(worker.id()));
        assert!(checked.learnt);
        assert!(t.admission(&worker.id()).is_some());
        // The same hello again teaches nothing new.
        assert!(!check_hello(&mut t, worker.id().to_peer_id(), &h, T0).learnt);
    }

    #[test]
    fn a_hello_from_another_mesh_is_refused() {
        let (mut t, m) = trust();
        let worker = key(2);
        let mut h = hello(&t, admission(&t, &m, &worker, None));
        h.mesh = buildmesh_protocol::Hash::of(b"another mesh");
        let r = check_hello(&mut t, worker.id().to_peer_id(), &h, T0)
            .verdict
            .unwrap_err();
        assert_eq!(r.reason, "wrong-mesh");
    }

    #[test]
    fn an_admission_for_another_key_is_refused() {
        let (mut t, m) = trust();
        let (worker, thief) = (key(2), key(3));
        let h = hello(&t, admission(&t, &m, &worker, None));
        let r = check_hello(&mut t, thief.id().to_peer_id(), &h, T0)
            .verdict
            .unwrap_err();
        assert_eq!(r.reason, "bad-admission");
    }

    #[test]
    fn an_admission_signed_by_a_stranger_is_refused() {
        let (mut t, _) = trust();
        let worker = key(2);
        let h = hello(&t, admission(&t, &key(9), &worker, None));
        let r = check_hello(&mut t, worker.id().to_peer_id(), &h, T0)
            .verdict
            .unwrap_err();
        assert_eq!(r.reason, "bad-admission");
        assert!(t.admission(&worker.id()).is_none());
    }

    #[test]
    fn a_revoked_node_is_refused() {
        let (mut t, m) = trust();
        let worker = key(2);
        t.apply(&revocation(&t, &m, &worker, T0)).unwrap();
        let h = hello(&t, admission(&t, &m, &worker, None));
        let r = check_hello(&mut t, worker.id().to_peer_id(), &h, T0)
            .verdict
            .unwrap_err();
        assert_eq!(r.reason, "revoked");
    }

    #[test]
    fn an_expired_admission_is_refused() {
        let (mut t, m) = trust();
        let worker = key(2);
        let h = hello(&t, admission(&t, &m, &worker, Some(T0)));
        let r = check_hello(&mut t, worker.id().to_peer_id(), &h, T0)
            .verdict
            .unwrap_err();
        assert_eq!(r.reason, "expired");
    }

    #[test]
    fn a_peer_at_the_door_past_its_deadline_is_late() {
        let mut door = Door::new(Duration::from_secs(5));
        let start = Instant::now();
        let (slow, quick) = (key(2).id(), key(3).id());
        door.connected(slow.to_peer_id(), start);
        door.connected(quick.to_peer_id(), start);
        assert!(door.admit(quick.to_peer_id(), quick));
        assert!(door.late(start + Duration::from_secs(4)).is_empty());
        assert_eq!(
            door.late(start + Duration::from_secs(5)),
            vec![slow.to_peer_id()]
        );
        assert!(!door.contains(&slow.to_peer_id()));
        assert!(door.is_admitted(&quick.to_peer_id()));
        assert_eq!(door.peer_of(&quick), Some(quick.to_peer_id()));
    }

    #[test]
    fn admission_happens_once_and_only_for_connected_peers() {
        let mut door = Door::new(Duration::from_secs(5));
        let node = key(2).id();
        assert!(!door.admit(node.to_peer_id(), node));
        door.connected(node.to_peer_id(), Instant::now());
        assert!(door.admit(node.to_peer_id(), node));
        assert!(!door.admit(node.to_peer_id(), node));
    }

    #[test]
    fn one_sync_round_at_a_time_and_only_with_admitted_peers() {
        let mut door = Door::new(Duration::from_secs(5));
        let node = key(2).id();
        let peer = node.to_peer_id();
        door.connected(peer, Instant::now());
        assert!(!door.begin_sync(&peer));
        door.admit(peer, node);
        assert!(door.begin_sync(&peer));
        assert!(!door.begin_sync(&peer));
        door.end_sync(&peer);
        assert!(door.begin_sync(&peer));
    }
}
