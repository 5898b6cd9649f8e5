//! Liveness: who was heard from lately, and what that means for connections.
//!
//! Every node gossips a signed heartbeat each `heartbeat_interval`; a node heard from within
//! `liveness_window` (by this node's clock) is live. A heartbeat also names the admitted peers
//! whose every connection to the sender closed and that it has not heard from since (a reset
//! or a killed process: the claim machine takes a worker that most live nodes lost as gone at
//! once, without waiting for its lease). Heartbeats are ordered per sender by the
//! sender's clock, so an older one replayed is refused. The same heartbeats say where a node
//! listens, which is how a node finds peers beyond its bootstrap list.
//!
//! Everything here is decisions over explicit times; the replica owns the [`Liveness`] table,
//! feeds it heartbeats and carries out the drops and dials. [`Membership`] is what the replica
//! publishes of trust and liveness to the services that only read them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use buildmesh_protocol::trust::Trust;
use buildmesh_protocol::wire::Heartbeat;
use buildmesh_protocol::{Hash, NodeId, Timestamp};
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

/// Trust and the live set, as the replica last published them: when trust changes or a node
/// goes live or missing, not on every heartbeat.
#[derive(Clone, Debug)]
pub(crate) struct Membership {
    /// The fold of genesis, admissions, revocations and the builder configuration.
    pub trust: Trust,
    /// Nodes heard from within the liveness window (revoked ones included until their
    /// revocation reaches this node; read `trust` for that).
    pub live: BTreeSet<NodeId>,
}

/// What was last heard from one node.
#[derive(Clone, Debug)]
pub(crate) struct Live {
    /// When, by this node's monotonic clock.
    pub heard: Instant,
    /// When, by this node's wall clock (what the API shows).
    pub heard_at: Timestamp,
    /// The sender's clock in its newest heartbeat: an older one is a replay.
    pub last_time: Timestamp,
    pub running: u32,
    pub capacity: u32,
    /// Why its worker claims nothing, as it says.
    pub paused: Option<String>,
    /// Where it listens, as it says.
    pub addrs: Vec<Multiaddr>,
    /// How long after this heartbeat it counts as live: the window, longer for a node that
    /// beats less often than this one ([`Heartbeat::live_for`]).
    pub window: Duration,
}

/// The newest heartbeat of every node heard from.
#[derive(Debug)]
pub(crate) struct Liveness {
    nodes: HashMap<NodeId, Live>,
    window: Duration,
    // This node's own heartbeat interval (configured, not stretched).
    every: Duration,
    // Admitted peers whose last connection closed, and when; until they connect again or are
    // heard from well after (a heartbeat already on its way when they died does not count).
    lost: HashMap<NodeId, Instant>,
}

/// How long after a peer's connections closed a heartbeat of it still proves nothing: one
/// already on its way through the mesh when it died arrives within this.
const LOST_GRACE: Duration = Duration::from_millis(500);

impl Liveness {
    pub(crate) fn new(window: Duration) -> Self {
        Liveness {
            nodes: HashMap::new(),
            window,
            every: Duration::from_secs(1),
            lost: HashMap::new(),
        }
    }

    /// With this node's configured heartbeat interval (1 s unless told).
    pub(crate) fn beating_every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// Every connection to the admitted peer `node` closed at `at`. Returns whether it was not
    /// lost already.
    pub(crate) fn lost(&mut self, node: NodeId, at: Instant) -> bool {
        self.lost.insert(node, at).is_none()
    }

    /// Connected to `node` again.
    pub(crate) fn reconnected(&mut self, node: &NodeId) {
        self.lost.remove(node);
    }

    /// The peers lost and not heard from since, for the heartbeat.
    pub(crate) fn lost_peers(&self) -> Vec<NodeId> {
        let mut lost: Vec<NodeId> = self.lost.keys().copied().collect();
        lost.sort();
        lost
    }

    /// What was last heard from `node`.
    pub(crate) fn get(&self, node: &NodeId) -> Option<&Live> {
        self.nodes.get(node)
    }

    /// Whether `node` was heard from within the window before `now`.
    pub(crate) fn is_live(&self, node: &NodeId, now: Instant) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|l| now.duration_since(l.heard) <= l.window)
    }

    /// Every node heard from within the window before `now`.
    pub(crate) fn live_at(&self, now: Instant) -> BTreeSet<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, l)| now.duration_since(l.heard) <= l.window)
            .map(|(n, _)| *n)
            .collect()
    }

    /// Whether a heartbeat of `sender` dated `time` is older than (or as old as) the newest
    /// one heard.
    pub(crate) fn is_replay(&self, sender: &NodeId, time: Timestamp) -> bool {
        self.nodes.get(sender).is_some_and(|l| l.last_time >= time)
    }

    /// Takes in a heartbeat heard at `heard` (`heard_at` by the wall clock). Returns whether
    /// its sender just went live.
    pub(crate) fn heard(&mut self, h: &Heartbeat, heard: Instant, heard_at: Timestamp) -> bool {
        let was_live = self.is_live(&h.node, heard);
        if self
            .lost
            .get(&h.node)
            .is_some_and(|at| heard.saturating_duration_since(*at) > LOST_GRACE)
        {
            // Alive after all (a connection that flapped): heard through the mesh.
            self.lost.remove(&h.node);
        }
        let addrs = h.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        self.nodes.insert(
            h.node,
            Live {
                heard,
                heard_at,
                last_time: h.time,
                running: h.running,
                capacity: h.capacity,
                paused: h.paused.clone(),
                addrs,
                window: h.live_for(self.every, self.window),
            },
        );
        !was_live
    }

    /// Forgets a node (revoked). Returns whether it was live.
    pub(crate) fn forget(&mut self, node: &NodeId, now: Instant) -> bool {
        let was_live = self.is_live(node, now);
        self.nodes.remove(node);
        self.lost.remove(node);
        was_live
    }

    /// Nodes that are live and say where they listen, with those addresses.
    pub(crate) fn reachable(&self, now: Instant) -> impl Iterator<Item = (NodeId, &[Multiaddr])> {
        self.nodes
            .iter()
            .filter(move |(_, l)| !l.addrs.is_empty() && now.duration_since(l.heard) <= l.window)
            .map(|(n, l)| (*n, l.addrs.as_slice()))
    }
}

/// An admitted connection, as the silence check sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Connection {
    pub peer: PeerId,
    pub node: Option<NodeId>,
    /// When it was made.
    pub since: Instant,
}

/// Admitted connections over which nothing was heard for `silent_for` (or for two of the
/// peer's own windows, if it beats less often): a cut cable does not close a connection, so
/// these are dropped and redialling replaces them.
pub(crate) fn silent(
    connections: impl IntoIterator<Item = Connection>,
    liveness: &Liveness,
    now: Instant,
    silent_for: Duration,
) -> Vec<PeerId> {
    connections
        .into_iter()
        .filter(|c| now.duration_since(c.since) > silent_for)
        .filter(|c| {
            c.node
                .and_then(|n| liveness.get(&n))
                .is_none_or(|l| now.duration_since(l.heard) > silent_for.max(l.window * 2))
        })
        .map(|c| c.peer)
        .collect()
}

/// What the dialler knows of the connections this node has.
#[derive(Debug)]
pub(crate) struct Dialling<'a> {
    /// This node.
    pub me: NodeId,
    /// Addresses to keep a connection to whenever it is gone.
    pub bootstrap: &'a [Multiaddr],
    /// Every connected peer, at the door or admitted.
    pub connected: &'a HashSet<PeerId>,
    /// How many of them are admitted.
    pub admitted: usize,
    /// Peers cut off on purpose: never dialled.
    pub cut: &'a HashSet<PeerId>,
    /// Up to how many admitted peers the node dials on its own.
    pub max_peers: usize,
    /// How many times the node has looked for peers to dial (see [`to_dial`]).
    pub round: u64,
}

/// One dial: a peer by its addresses, tried one after another (the network makes one
/// connection, and none while one is open or being made), or an address whose peer is unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dial {
    Peer(PeerId, Vec<Multiaddr>),
    Addr(Multiaddr),
}

/// Of two nodes that learn of each other from heartbeats, the one with the lower id dials at
/// once; the other only every this many rounds, in case the first cannot reach it (a NAT) or
/// has all the peers it dials. Two nodes dialling each other at the same moment would otherwise
/// keep two connections, each with its own streams, pings and gossip.
pub(crate) const HIGHER_ID_DIALS_EVERY: u64 = 4;

/// What to dial: bootstrap peers whose connection is gone, then live nodes learnt from
/// heartbeats, up to `max_peers` admitted connections (a node of higher id than this one only
/// every [`HIGHER_ID_DIALS_EVERY`] rounds).
pub(crate) fn to_dial(d: &Dialling<'_>, liveness: &Liveness, now: Instant) -> Vec<Dial> {
    let mut out = Vec::new();
    for addr in d.bootstrap {
        let peer = addr.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        });
        match peer {
            Some(p) if !d.connected.contains(&p) && !d.cut.contains(&p) => {
                out.push(Dial::Peer(p, vec![addr.clone()]));
            }
            None if d.connected.is_empty() => out.push(Dial::Addr(addr.clone())),
            _ => {}
        }
    }
    if d.admitted < d.max_peers {
        let higher_too = d.round % HIGHER_ID_DIALS_EVERY == HIGHER_ID_DIALS_EVERY - 1;
        let candidates = liveness
            .reachable(now)
            .filter(|(n, _)| *n != d.me && (d.me < *n || higher_too))
            .filter(|(n, _)| {
                let p = n.to_peer_id();
                !d.connected.contains(&p) && !d.cut.contains(&p)
            })
            .take(d.max_peers - d.admitted);
        for (node, addrs) in candidates {
            if !addrs.is_empty() {
                out.push(Dial::Peer(node.to_peer_id(), addrs.to_vec()));
            }
        }
    }
    out
}

/// Signals other than heartbeats (build progress, the notifier holder's word), each kept in
/// order per sender and subject: one no newer than the newest taken is a replay, and has no
/// effect beyond its first delivery. Gossip drops exact copies from the same publisher, but
/// another peer can publish the same signed bytes again; without this a replayed progress
/// signal would keep a dead worker's lease alive for as long as the clock-skew window.
#[derive(Debug, Default)]
pub(crate) struct SignalOrder {
    newest: HashMap<(NodeId, Hash, u32), Timestamp>,
}

impl SignalOrder {
    /// The most subjects remembered; past it the oldest half is forgotten (their signals are
    /// older than the skew window by then in any real mesh, and refused as stale anyway).
    const MAX: usize = 65_536;

    /// Takes a signal of `sender` about `subject` dated `time` if it is newer than the newest
    /// taken; returns whether it was taken.
    pub(crate) fn take(&mut self, sender: NodeId, subject: (Hash, u32), time: Timestamp) -> bool {
        let key = (sender, subject.0, subject.1);
        if self.newest.get(&key).is_some_and(|t| *t >= time) {
            return false;
        }
        if self.newest.len() >= Self::MAX {
            let mut times: Vec<Timestamp> = self.newest.values().copied().collect();
            times.sort_unstable();
            let cut = times[times.len() / 2];
            self.newest.retain(|_, t| *t > cut);
        }
        self.newest.insert(key, time);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildmesh_protocol::SecretKey;

    fn node(n: u8) -> NodeId {
        SecretKey::from_seed([n; 32]).id()
    }

    fn beat(node: NodeId, time: u64, addrs: &[&str]) -> Heartbeat {
        Heartbeat {
            node,
            time: Timestamp(time),
            running: 0,
            capacity: 1,
            head: 0,
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            paused: None,
            lost: Vec::new(),
            every_ms: None,
        }
    }

    #[test]
    fn a_lost_peer_is_named_until_it_reconnects_or_is_heard_well_after() {
        let mut l = Liveness::new(Duration::from_secs(3));
        let t0 = Instant::now();
        assert!(l.lost(node(2), t0));
        assert!(!l.lost(node(2), t0), "lost once");
        l.lost(node(3), t0);
        assert_eq!(l.lost_peers().len(), 2);
        // A heartbeat it sent before it died, arriving just after: still lost.
        l.heard(
            &beat(node(2), 10, &[]),
            t0 + Duration::from_millis(50),
            Timestamp(10),
        );
        assert!(l.lost_peers().contains(&node(2)));
        // Heard through the mesh a second later: alive, its connection only flapped.
        l.heard(
            &beat(node(2), 20, &[]),
            t0 + Duration::from_secs(1),
            Timestamp(20),
        );
        assert_eq!(l.lost_peers(), [node(3)]);
        l.reconnected(&node(3));
        assert!(l.lost_peers().is_empty());
    }

    const WINDOW: Duration = Duration::from_secs(3);

    #[test]
    fn a_node_is_live_within_the_window_and_missing_after() {
        let mut l = Liveness::new(WINDOW);
        let t0 = Instant::now();
        let a = node(2);
        assert!(l.heard(&beat(a, 1, &[]), t0, Timestamp(1)));
        assert!(!l.heard(&beat(a, 2, &[]), t0 + Duration::from_secs(1), Timestamp(2)));
        assert!(l.is_live(&a, t0 + Duration::from_secs(4)));
        assert_eq!(l.live_at(t0 + Duration::from_secs(4)), BTreeSet::from([a]));
        assert!(!l.is_live(&a, t0 + Duration::from_secs(5)));
        assert!(l.live_at(t0 + Duration::from_secs(5)).is_empty());
        // Heard again after going missing: it goes live again.
        assert!(l.heard(&beat(a, 9, &[]), t0 + Duration::from_secs(9), Timestamp(9)));
    }

    #[test]
    fn a_node_that_beats_less_often_is_live_for_as_much_longer() {
        let mut l = Liveness::new(WINDOW).beating_every(Duration::from_secs(1));
        let t0 = Instant::now();
        let (slow, plain) = (node(2), node(3));
        let mut b = beat(slow, 1, &["/ip4/127.0.0.2/tcp/1"]);
        b.every_ms = Some(4000);
        l.heard(&b, t0, Timestamp(1));
        l.heard(&beat(plain, 1, &[]), t0, Timestamp(1));
        let at = t0 + Duration::from_secs(11);
        assert!(l.is_live(&slow, at));
        assert!(!l.is_live(&plain, at));
        assert_eq!(l.live_at(at), BTreeSet::from([slow]));
        assert_eq!(l.reachable(at).count(), 1);
        assert!(!l.is_live(&slow, t0 + Duration::from_secs(13)));
        // Its connection is not silent until two of its own windows pass.
        let c = Connection {
            peer: slow.to_peer_id(),
            node: Some(slow),
            since: t0,
        };
        assert!(silent([c], &l, t0 + Duration::from_secs(20), WINDOW * 2).is_empty());
        assert_eq!(
            silent([c], &l, t0 + Duration::from_secs(25), WINDOW * 2),
            [c.peer]
        );
    }

    #[test]
    fn an_older_heartbeat_is_a_replay() {
        let mut l = Liveness::new(WINDOW);
        let a = node(2);
        assert!(!l.is_replay(&a, Timestamp(10)));
        l.heard(&beat(a, 10, &[]), Instant::now(), Timestamp(10));
        assert!(l.is_replay(&a, Timestamp(10)));
        assert!(l.is_replay(&a, Timestamp(9)));
        assert!(!l.is_replay(&a, Timestamp(11)));
    }

    #[test]
    fn a_forgotten_node_is_not_live() {
        let mut l = Liveness::new(WINDOW);
        let t0 = Instant::now();
        let a = node(2);
        l.heard(&beat(a, 1, &[]), t0, Timestamp(1));
        assert!(l.forget(&a, t0));
        assert!(!l.is_live(&a, t0));
        assert!(!l.forget(&a, t0));
    }

    #[test]
    fn a_connection_is_dropped_once_silent_for_long_enough() {
        let mut l = Liveness::new(WINDOW);
        let t0 = Instant::now();
        let (a, b) = (node(2), node(3));
        l.heard(&beat(a, 1, &[]), t0 + Duration::from_secs(5), Timestamp(1));
        let conns = [
            Connection {
                peer: a.to_peer_id(),
                node: Some(a),
                since: t0,
            },
            Connection {
                peer: b.to_peer_id(),
                node: Some(b),
                since: t0,
            },
            Connection {
                peer: node(4).to_peer_id(),
                node: Some(node(4)),
                since: t0 + Duration::from_secs(5),
            },
        ];
        let silent_for = WINDOW * 2;
        let now = t0 + Duration::from_secs(7);
        // `a` was heard lately, `b` never, the third connected too recently to judge.
        assert_eq!(silent(conns, &l, now, silent_for), vec![b.to_peer_id()]);
    }

    #[test]
    fn dials_lost_bootstrap_peers_and_live_nodes_up_to_the_limit() {
        let mut l = Liveness::new(WINDOW);
        let now = Instant::now();
        let (me, boot, c, d, cut) = (node(1), node(2), node(3), node(4), node(5));
        for n in [me, c, d, cut] {
            l.heard(&beat(n, 1, &["/ip4/127.0.0.1/tcp/4000"]), now, Timestamp(1));
        }
        let boot_addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{}", boot.to_peer_id())
            .parse()
            .unwrap();
        let bootstrap = [boot_addr.clone()];
        let connected = HashSet::from([d.to_peer_id()]);
        let cut_set = HashSet::from([cut.to_peer_id()]);
        // Every node here has a higher id than `me` or not: the round where both dial.
        let dialling = Dialling {
            me,
            bootstrap: &bootstrap,
            connected: &connected,
            admitted: 1,
            cut: &cut_set,
            max_peers: 2,
            round: HIGHER_ID_DIALS_EVERY - 1,
        };
        let want_c = Dial::Peer(
            c.to_peer_id(),
            vec!["/ip4/127.0.0.1/tcp/4000".parse().unwrap()],
        );
        assert_eq!(
            to_dial(&dialling, &l, now),
            vec![Dial::Peer(boot.to_peer_id(), vec![boot_addr]), want_c]
        );
        let full = Dialling {
            admitted: 2,
            connected: &HashSet::from([boot.to_peer_id(), d.to_peer_id()]),
            ..dialling
        };
        assert!(to_dial(&full, &l, now).is_empty());
    }

    #[test]
    fn of_two_nodes_the_lower_id_dials_first_and_the_higher_only_now_and_then() {
        let mut l = Liveness::new(WINDOW);
        let now = Instant::now();
        let (a, b) = (node(1), node(2));
        let (low, high) = if a < b { (a, b) } else { (b, a) };
        for n in [low, high] {
            l.heard(&beat(n, 1, &["/ip4/127.0.0.1/tcp/4000"]), now, Timestamp(1));
        }
        let none = HashSet::new();
        let dialling = |me, round| Dialling {
            me,
            bootstrap: &[],
            connected: &none,
            admitted: 0,
            cut: &none,
            max_peers: 4,
            round,
        };
        let dialled = |me, round| {
            to_dial(&dialling(me, round), &l, now)
                .into_iter()
                .map(|d| match d {
                    Dial::Peer(p, _) => p,
                    Dial::Addr(a) => panic!("dialled {a} without its peer"),
                })
                .collect::<Vec<_>>()
        };
        for round in 0..2 * HIGHER_ID_DIALS_EVERY {
            assert_eq!(
                dialled(low, round),
                vec![high.to_peer_id()],
                "round {round}"
            );
            let higher_dials = round % HIGHER_ID_DIALS_EVERY == HIGHER_ID_DIALS_EVERY - 1;
            assert_eq!(
                dialled(high, round),
                if higher_dials {
                    vec![low.to_peer_id()]
                } else {
                    vec![]
                },
                "round {round}"
            );
        }
    }

    #[test]
    fn a_replayed_progress_signal_is_taken_once() {
        let mut order = SignalOrder::default();
        let w = buildmesh_protocol::SecretKey::from_seed([9; 32]).id();
        let job = (Hash::of(b"job"), 1);
        assert!(order.take(w, job, Timestamp(10)));
        assert!(!order.take(w, job, Timestamp(10)), "the same signal again");
        assert!(!order.take(w, job, Timestamp(5)), "an older one");
        assert!(order.take(w, job, Timestamp(11)));
        // Another subject of the same sender is ordered on its own.
        assert!(order.take(w, (Hash::of(b"job"), 2), Timestamp(3)));
    }
}
