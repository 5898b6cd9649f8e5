//! When a node may author again after a start: never before it knows its own log as the mesh
//! holds it, so that it never signs a second record for a sequence number it already used (a
//! store restored from an older copy, or one that lost its last writes to a power cut, would
//! otherwise fork its own log and flag an honest host as an equivocator).
//!
//! Sans-IO. "Caught up" means: sync rounds finished with a majority of the peers it can see
//! (admitted and connected, or heard live, whichever is more; at least one), and its own log
//! here reaches the highest sequence number any of them holds of it. A first round that fails,
//! or that reaches only peers lacking its newest records, does not count: the next rounds go
//! on until a majority answered. A node configured with no peers to ask is caught up at once;
//! a node whose peers are all unreachable waits, authoring nothing, and says so.
//!
//! It also keeps the highest of its own records any peer said it holds: what is beyond is
//! not yet safe (sled does not fsync every write), and peers keep pulling it by anti-entropy.

use std::collections::BTreeSet;

use buildmesh_protocol::NodeId;

#[derive(Debug)]
pub(crate) struct CatchUp {
    done: bool,
    synced: BTreeSet<NodeId>,
    // The highest seq of this node's log that a peer said it holds.
    held_by_peers: u64,
}

/// How many of `seen` peers make a majority (at least one).
fn majority(seen: usize) -> usize {
    seen / 2 + 1
}

impl CatchUp {
    /// `alone`: no peer is configured to ask.
    pub(crate) fn new(alone: bool) -> Self {
        CatchUp {
            done: alone,
            synced: BTreeSet::new(),
            held_by_peers: 0,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// The highest seq of this node's own log that some peer holds.
    pub(crate) fn held_by_peers(&self) -> u64 {
        self.held_by_peers
    }

    /// A peer said (by its version vector) that it holds this node's log up to `theirs`.
    pub(crate) fn peer_holds(&mut self, theirs: u64) {
        self.held_by_peers = self.held_by_peers.max(theirs);
    }

    /// A sync round with `peer` finished; it holds this node's log up to `theirs`, this node
    /// now holds `ours`, and it sees `seen` peers. Returns true when this makes it caught up.
    pub(crate) fn synced(&mut self, peer: NodeId, theirs: u64, ours: u64, seen: usize) -> bool {
        self.peer_holds(theirs);
        if self.done {
            return false;
        }
        self.synced.insert(peer);
        if ours >= self.held_by_peers && self.synced.len() >= majority(seen.max(1)) {
            self.done = true;
            return true;
        }
        false
    }

    /// Why it is not caught up yet, for the logs and the health endpoint.
    pub(crate) fn waiting_for(&self, ours: u64, seen: usize) -> String {
        if ours < self.held_by_peers {
            format!(
                "peers hold this node's log up to {}, this store up to {ours}",
                self.held_by_peers
            )
        } else {
            format!(
                "synced with {} of the {} peers a majority needs",
                self.synced.len(),
                majority(seen.max(1))
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildmesh_protocol::SecretKey;

    fn id(n: u8) -> NodeId {
        SecretKey::from_seed([n; 32]).id()
    }

    #[test]
    fn alone_by_configuration_it_is_caught_up_at_once() {
        assert!(CatchUp::new(true).is_done());
        assert!(!CatchUp::new(false).is_done());
    }

    #[test]
    fn a_peer_lacking_its_newest_records_is_not_enough_but_a_majority_is() {
        let mut c = CatchUp::new(false);
        // Five peers seen; the first to answer lacks the newest records (holds 5 of 8).
        assert!(!c.synced(id(1), 5, 5, 5));
        assert!(!c.synced(id(2), 8, 5, 5), "behind what a peer holds");
        assert!(c.waiting_for(5, 5).contains("up to 8"));
        // Its records 6 to 8 pulled, the third answer makes a majority of five.
        assert!(!c.synced(id(2), 8, 8, 5));
        assert!(c.synced(id(3), 8, 8, 5));
        assert!(c.is_done());
        assert_eq!(c.held_by_peers(), 8);
    }

    #[test]
    fn one_peer_seen_is_a_majority_of_one() {
        let mut c = CatchUp::new(false);
        assert!(c.synced(id(1), 0, 0, 1));
        // Nothing seen yet counts as one.
        let mut c = CatchUp::new(false);
        assert!(c.synced(id(1), 3, 3, 0));
    }

    #[test]
    fn the_same_peer_twice_is_one_answer() {
        let mut c = CatchUp::new(false);
        assert!(!c.synced(id(1), 2, 2, 3));
        assert!(!c.synced(id(1), 2, 2, 3));
        assert!(c.synced(id(2), 2, 2, 3));
    }
}
