//! The replica's periodic work: this node's heartbeat, the door's deadlines, dropping silent
//! connections and redialling (decided in [`crate::liveness`]), and anti-entropy rounds.

use std::collections::HashSet;
use std::time::Duration;

use buildmesh_protocol::Timestamp;
use buildmesh_protocol::wire::{Gossip, Heartbeat, Signal, SignedSignal};
use libp2p::PeerId;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Command, Replica, sync};
use crate::liveness;

impl Replica {
    // How often this node beats now: its configured interval, stretched in a large mesh. Every
    // node counts the same admissions, so the nodes of one mesh agree on it.
    pub(super) fn beat_every(&self) -> Duration {
        let admitted = self
            .trust
            .admissions()
            .filter(|a| self.trust.revocation(&a.node).is_none())
            .count();
        buildmesh_protocol::wire::beat_interval(self.settings.heartbeat_interval, admitted)
    }

    pub(super) async fn heartbeat(&mut self) {
        let every = self.beat_every();
        let now = Timestamp::now();
        let head = self.store.head_of(&self.me).map(|(s, _)| s).unwrap_or(0);
        let (running, capacity, paused) = (self.load)();
        let h = Heartbeat {
            node: self.me,
            time: now,
            running,
            capacity,
            head,
            addrs: self.listen.iter().map(|a| a.to_string()).collect(),
            paused,
            lost: self.liveness.lost_peers(),
            every_ms: (every != Duration::from_secs(1)).then_some(every.as_millis() as u64),
        };
        // This node is live to itself; the addresses it gossips are for others to dial. Its
        // services hear its own heartbeat too (the claim machine counts what it lost).
        let own = Heartbeat {
            addrs: Vec::new(),
            ..h.clone()
        };
        if self.liveness.heard(&own, Instant::now(), now) {
            self.publish_membership();
        }
        let _ = self.signals.send(Signal::Heartbeat(own));
        if self.revoked {
            return;
        }
        let signed = SignedSignal::sign(&self.key, &Signal::Heartbeat(h));
        let _ = self.net.publish(Gossip::Signal(signed).to_bytes()).await;
    }

    // ---- periodic work ----------------------------------------------------------------------

    pub(super) async fn housekeeping(&mut self) {
        let now = Instant::now();
        for peer in self.door.late(now) {
            self.refuse(Some(peer), "no-admission", "no valid admission in time");
            let _ = self.net.disconnect(peer).await;
        }
        if self.liveness.live_at(now) != self.membership.borrow().live {
            self.publish_membership();
        }
        if now.duration_since(self.last_redial) < Duration::from_secs(2) {
            return;
        }
        self.last_redial = now;
        self.redial_round += 1;
        let connections = self.door.admitted().map(|(peer, p)| liveness::Connection {
            peer: *peer,
            node: p.node,
            since: p.since,
        });
        let silent_for = self.settings.liveness_window * 2;
        for peer in liveness::silent(connections, &self.liveness, now, silent_for) {
            tracing::info!(%peer, "dropping a connection that has been silent");
            self.door.remove(&peer);
            let _ = self.net.disconnect(peer).await;
        }
        let connected: HashSet<PeerId> = self.door.all().map(|(id, _)| *id).collect();
        let dialling = liveness::Dialling {
            me: self.me,
            bootstrap: &self.bootstrap,
            connected: &connected,
            admitted: self.door.admitted().count(),
            cut: &self.cut,
            max_peers: self.settings.max_peers,
            round: self.redial_round,
        };
        for dial in liveness::to_dial(&dialling, &self.liveness, now) {
            let _ = match dial {
                liveness::Dial::Peer(peer, addrs) => self.net.dial_peer(peer, addrs).await,
                liveness::Dial::Addr(addr) => self.net.dial(addr).await,
            };
        }
    }

    pub(super) fn anti_entropy(&mut self) {
        // A couple of random admitted peers per round: every pair meets often enough.
        let mut candidates: Vec<PeerId> = self
            .door
            .admitted()
            .filter(|(_, p)| !p.syncing)
            .map(|(id, _)| *id)
            .collect();
        let n = candidates.len();
        if n == 0 {
            return;
        }
        let start = (Timestamp::now().millis() as usize) % n;
        candidates.rotate_left(start);
        for peer in candidates.into_iter().take(2) {
            self.start_sync(peer);
        }
    }

    pub(super) fn start_sync(&mut self, peer: PeerId) {
        if !self.door.begin_sync(&peer) {
            return;
        }
        let net = self.net.clone();
        let store = self.store.clone();
        let tx = self.self_tx.clone();
        let skip = self.refused_from.clone();
        tokio::spawn(
            async move {
                let theirs = sync::with_peer(peer, &net, &store, &tx, &skip).await;
                let _ = tx.send(Command::SyncDone { peer, theirs }).await;
            }
            .in_current_span(),
        );
    }
}
