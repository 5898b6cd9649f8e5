//! The replica: the one task that decides what enters this node's store and what the node knows
//! of the mesh. It owns the trust fold, the door, the live set and the counters of refusals;
//! it answers the network's gossip and requests, runs anti-entropy with peers, and authors this
//! node's records. The decisions are in its parts; this module routes to them and carries out
//! what they decide.
//!
//! - `gate`: whether a verified record may enter the store and counts (sans-IO).
//! - `ingest`: records in, through the gate into the store, and what a stored record changes.
//! - `door`: what a connected peer must show, and the table of connected peers (sans-IO).
//! - `peers`: hellos, peers' requests, gossip and signals.
//! - [`crate::liveness`]: heartbeats, the live set, dropping silent connections and redialling
//!   (sans-IO); `upkeep` carries them out, with this node's heartbeat and anti-entropy rounds.
//! - `sync`: anti-entropy with one peer.
//! - `blobs`: fetching blobs from peers, and copying the logs of red builds.
//! - `views`: the node list and the counters as the API shows them.
//!
//! Every record, whether it came by gossip or by sync, passes the same gate: signature (on every
//! core for large batches), author admitted and not revoked at the record's time, then the
//! store's chain checks. Nothing is forwarded or stored before it passed.

mod blobs;
mod catchup;
mod door;
mod gate;
mod ingest;
mod peers;
mod sync;
#[cfg(test)]
mod testkit;
mod upkeep;
mod views;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use buildmesh_protocol::builders::BuilderConfig;
use buildmesh_protocol::docs::{DocKind, Role, SignedDoc};
use buildmesh_protocol::record::{Body, Publish, Record};
use buildmesh_protocol::trust::{Trust, TrustError};
use buildmesh_protocol::vv::VersionVector;
use buildmesh_protocol::wire::{Gossip, Response, Signal, SignedSignal};
use buildmesh_protocol::{Hash, NodeId, SecretKey, Timestamp};
use buildmesh_store::Store;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use views::{Metrics, NodeView};

use self::door::Door;
use crate::NodeError;
use crate::config::MeshSettings;
use crate::liveness::{Liveness, Membership};
use crate::network::{self, Verdict};

/// How far a signal's clock may be from ours before it is refused as stale.
const MAX_SIGNAL_SKEW: Duration = Duration::from_secs(60);

/// What other parts of the node ask of the replica.
#[derive(Debug)]
pub(crate) enum Command {
    Author {
        body: Body,
        reply: oneshot::Sender<Result<Record, NodeError>>,
    },
    PublishDoc {
        doc: SignedDoc,
        reply: oneshot::Sender<Result<Record, NodeError>>,
    },
    Ingest {
        peer: PeerId,
        records: Vec<Vec<u8>>,
        reply: oneshot::Sender<()>,
    },
    HelloAnswer {
        peer: PeerId,
        answer: Result<Response, String>,
    },
    // A peer that did not answer over its remaining connections after one closed.
    Unreachable {
        peer: PeerId,
    },
    SyncDone {
        peer: PeerId,
        theirs: Option<VersionVector>,
    },
    Nodes {
        reply: oneshot::Sender<Vec<NodeView>>,
    },
    Metrics {
        reply: oneshot::Sender<Metrics>,
    },
    Isolate {
        from: Vec<NodeId>,
        cut: bool,
        reply: oneshot::Sender<()>,
    },
    Signal {
        signal: Signal,
    },
    Config {
        reply: oneshot::Sender<Option<BuilderConfig>>,
    },
    FetchBlob {
        hash: Hash,
        from: Option<NodeId>,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    MayAnnounce {
        key: NodeId,
        reply: oneshot::Sender<Result<(), String>>,
    },
    SyncAll {
        reply: oneshot::Sender<()>,
    },
    Misbehaved {
        author: NodeId,
        reason: &'static str,
        what: Hash,
    },
}

/// A cloneable handle on the replica.
#[derive(Clone, Debug)]
pub struct ReplicaClient {
    tx: mpsc::Sender<Command>,
}

impl ReplicaClient {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Authors, stores (flushed) and gossips this node's next record.
    pub async fn author(&self, body: Body) -> Result<Record, NodeError> {
        self.ask(|reply| Command::Author { body, reply }).await?
    }

    /// Checks a maintainer-signed document and publishes it in this node's log.
    pub async fn publish_doc(&self, doc: SignedDoc) -> Result<Record, NodeError> {
        self.ask(|reply| Command::PublishDoc { doc, reply }).await?
    }

    /// Every admitted node as this node sees it.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, NodeError> {
        self.ask(|reply| Command::Nodes { reply }).await
    }

    /// Counters and state for `/metrics` and health.
    pub async fn metrics(&self) -> Result<Metrics, NodeError> {
        self.ask(|reply| Command::Metrics { reply }).await
    }

    /// Signs and gossips an ephemeral signal of this node's (build progress).
    pub async fn signal(&self, signal: Signal) -> Result<(), NodeError> {
        self.tx
            .send(Command::Signal { signal })
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// The builder configuration in force.
    pub async fn config(&self) -> Result<Option<BuilderConfig>, NodeError> {
        self.ask(|reply| Command::Config { reply }).await
    }

    /// A blob from this node's store, or fetched from a peer (`from` first) and kept.
    pub async fn blob(
        &self,
        hash: Hash,
        from: Option<NodeId>,
    ) -> Result<Option<Vec<u8>>, NodeError> {
        self.ask(|reply| Command::FetchBlob { hash, from, reply })
            .await
    }

    /// Whether `key` may announce commits now (announcer role, or a maintainer).
    pub async fn may_announce(&self, key: NodeId) -> Result<Result<(), String>, NodeError> {
        self.ask(|reply| Command::MayAnnounce { key, reply }).await
    }

    /// Starts a sync round with every admitted peer at once; the receiver fires once every
    /// round has ended (records pulled are stored, and announced on the record feed, before).
    /// `None` if the replica is too busy to take the request now.
    pub(crate) fn sync_all(&self) -> Option<oneshot::Receiver<()>> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Command::SyncAll { reply }).ok()?;
        Some(rx)
    }

    /// A view found a record of `author`'s that it was not entitled to (`what` names the record
    /// or the claim, so that seeing it again counts once).
    pub(crate) fn misbehaved(&self, author: NodeId, reason: &'static str, what: Hash) {
        // A full queue drops the note: the counter is for people, the view already ignores it.
        let _ = self.tx.try_send(Command::Misbehaved {
            author,
            reason,
            what,
        });
    }

    /// Cuts (or restores) every connection with the given nodes, as a cable cut would.
    pub async fn isolate(&self, from: Vec<NodeId>, cut: bool) -> Result<(), NodeError> {
        self.ask(|reply| Command::Isolate { from, cut, reply })
            .await
    }
}

/// This node's worker load for its heartbeats: (builds running, builds it may run at once, why
/// it claims nothing if a self-check failed). Read through a function so that the replica does
/// not name the claimer's types: the claimer talks to the replica, not the other way round.
pub(crate) type LoadGauge = Box<dyn Fn() -> (u32, u32, Option<String>) + Send + Sync>;

/// The replica task. Built by `node::start`, run with [`Replica::run`].
pub(crate) struct Replica {
    key: Arc<SecretKey>,
    me: NodeId,
    store: Arc<Store>,
    trust: Trust,
    admission: SignedDoc,
    settings: MeshSettings,
    bootstrap: Vec<Multiaddr>,
    net: network::Client,
    events: mpsc::Receiver<network::Event>,
    commands: mpsc::Receiver<Command>,
    self_tx: mpsc::Sender<Command>,
    door: Door,
    liveness: Liveness,
    cut: HashSet<PeerId>,
    listen: Vec<Multiaddr>,
    catch_up: catchup::CatchUp,
    revoked: bool,
    refused: BTreeMap<&'static str, u64>,
    logged: HashSet<(Option<PeerId>, &'static str)>,
    // Authors whose records this node refuses from some seq on (revoked keys): sync does not
    // pull them, and a heartbeat ahead of what is held does not start a round for them.
    refused_from: HashMap<NodeId, u64>,
    metrics: Metrics,
    last_redial: Instant,
    // How many times peers to dial were looked for.
    redial_round: u64,
    feed: tokio::sync::broadcast::Sender<Arc<Record>>,
    signals: tokio::sync::broadcast::Sender<Signal>,
    load: LoadGauge,
    membership: watch::Sender<Membership>,
    // Authors of records they were not entitled to, as the views (claimer, notifier) and the
    // gate found them; the views judge every stored record again at start, so this is
    // rebuilt after a restart rather than kept.
    misbehaving: BTreeMap<NodeId, views::Misbehaviour>,
    misbehaviour_seen: HashSet<(NodeId, Hash)>,
    signal_order: crate::liveness::SignalOrder,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("me", &self.me).finish()
    }
}

/// What the replica needs to start.
pub(crate) struct ReplicaParts {
    pub key: Arc<SecretKey>,
    pub store: Arc<Store>,
    pub trust: Trust,
    pub admission: SignedDoc,
    pub settings: MeshSettings,
    pub bootstrap: Vec<Multiaddr>,
    pub net: network::Client,
    pub events: mpsc::Receiver<network::Event>,
    pub feed: tokio::sync::broadcast::Sender<Arc<Record>>,
    pub signals: tokio::sync::broadcast::Sender<Signal>,
    pub load: LoadGauge,
    pub cancel: CancellationToken,
}

impl Replica {
    /// The replica, its handle, and the membership it publishes.
    pub(crate) fn new(parts: ReplicaParts) -> (Self, ReplicaClient, watch::Receiver<Membership>) {
        let (tx, commands) = mpsc::channel(1024);
        let me = parts.key.id();
        // A node's store may be behind what the mesh holds of its own log (a lost disk, a
        // restored copy, a power cut before sled wrote): it authors nothing until a majority
        // of its peers told it what it had (unless it is alone, with no one to ask).
        let catch_up = catchup::CatchUp::new(parts.bootstrap.is_empty());
        let (membership, membership_rx) = watch::channel(Membership {
            trust: parts.trust.clone(),
            live: Default::default(),
        });
        let replica = Replica {
            key: parts.key,
            me,
            store: parts.store,
            trust: parts.trust,
            admission: parts.admission,
            door: Door::new(parts.settings.door_timeout),
            liveness: Liveness::new(parts.settings.liveness_window)
                .beating_every(parts.settings.heartbeat_interval),
            settings: parts.settings,
            bootstrap: parts.bootstrap,
            net: parts.net,
            events: parts.events,
            commands,
            self_tx: tx.clone(),
            cut: HashSet::new(),
            listen: Vec::new(),
            catch_up,
            revoked: false,
            refused: BTreeMap::new(),
            logged: HashSet::new(),
            refused_from: HashMap::new(),
            metrics: Metrics::default(),
            last_redial: Instant::now() - Duration::from_secs(60),
            redial_round: 0,
            feed: parts.feed,
            signals: parts.signals,
            load: parts.load,
            misbehaving: Default::default(),
            misbehaviour_seen: HashSet::new(),
            signal_order: Default::default(),
            membership,
            cancel: parts.cancel,
        };

        (replica, ReplicaClient { tx }, membership_rx)
    }

    /// Runs until the node shuts down.
    pub(crate) async fn run(mut self) -> Result<(), NodeError> {
        if self.catch_up.is_done() {
            self.on_caught_up().await;
        } else {
            tracing::info!("learning this node's own log from its peers before authoring");
        }
        // The heartbeat's interval grows with the mesh (`beat_interval`): the next one is due a
        // whole interval after the last, which a lost peer may also have sent out of turn.
        let mut next_beat = Instant::now();
        let mut housekeeping = tokio::time::interval(Duration::from_millis(250));
        let mut anti_entropy = tokio::time::interval(self.settings.sync_interval);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        anti_entropy.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(event) = self.events.recv() => self.on_network(event).await,
                Some(command) = self.commands.recv() => self.on_command(command).await,
                _ = tokio::time::sleep_until(next_beat) => {
                    self.heartbeat().await;
                    next_beat = Instant::now() + self.beat_every();
                }
                _ = housekeeping.tick() => self.housekeeping().await,
                _ = anti_entropy.tick() => self.anti_entropy(),
            }
        }
        let flushed = self.store.flush();
        tracing::debug!("replica stopped");
        flushed.map_err(NodeError::from)
    }

    fn refuse(
        &mut self,
        peer: Option<PeerId>,
        reason: &'static str,
        detail: impl std::fmt::Display,
    ) {
        *self.refused.entry(reason).or_insert(0) += 1;
        if self.logged.insert((peer, reason)) {
            tracing::warn!(peer = ?peer, reason, %detail, "refused");
        } else {
            tracing::debug!(peer = ?peer, reason, %detail, "refused");
        }
    }

    // An author wrote a record it was not entitled to: counted by reason, and the author shown
    // as misbehaving (each record once).
    fn note_misbehaviour(&mut self, author: NodeId, reason: &'static str, what: Hash) {
        if !self.misbehaviour_seen.insert((author, what)) {
            return;
        }
        if self.misbehaviour_seen.len() > 100_000 {
            self.misbehaviour_seen.clear();
        }
        *self.refused.entry(reason).or_insert(0) += 1;
        let m = self.misbehaving.entry(author).or_default();
        m.count += 1;
        m.last = reason.to_string();
        if self.logged.insert((None, reason)) {
            tracing::warn!(%author, reason, "record kept but not counted: its author was not entitled to it");
        }
    }

    // Tells the services that read membership. Called when trust changes, before the record
    // that changed it goes out on the feed, so that a reader woken by the record sees it.
    fn publish_membership(&mut self) {
        let live = self.liveness.live_at(Instant::now());
        self.membership.send_replace(Membership {
            trust: self.trust.clone(),
            live,
        });
    }

    // ---- network events -------------------------------------------------------------------

    async fn on_network(&mut self, event: network::Event) {
        match event {
            network::Event::Gossip { source, id, data } => {
                let verdict = self.on_gossip(source, &data).await;
                let _ = self.net.validate(id, source, verdict).await;
            }
            network::Event::Request {
                peer,
                request,
                channel,
            } => {
                let response = self.on_request(peer, request).await;
                let _ = self.net.respond(channel, response).await;
            }
            network::Event::Connected { peer, addr } => self.on_connected(peer, addr).await,
            network::Event::Disconnected { peer } => {
                if let Some(p) = self.door.remove(&peer)
                    && p.admitted
                {
                    tracing::info!(%peer, "peer disconnected");
                    // A closed connection (a reset or a killed process, unlike a silence) is
                    // told at once: a worker most live nodes lost loses its leases.
                    if let Ok(node) = NodeId::from_peer_id(&peer)
                        && self.liveness.lost(node, Instant::now())
                    {
                        self.heartbeat().await;
                    }
                }
            }
            network::Event::ConnectionDropped { peer } => {
                if self.door.is_admitted(&peer) {
                    self.probe(peer);
                }
            }
            network::Event::Listening { addr } => {
                tracing::info!(%addr, "listening");
                self.listen.push(addr);
            }
        }
    }

    // ---- commands ---------------------------------------------------------------------------

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Author { body, reply } => {
                let _ = reply.send(self.author(body).await);
            }
            Command::PublishDoc { doc, reply } => {
                let check = match doc.kind {
                    DocKind::Genesis => Err(TrustError::GenesisNotPublishable),
                    _ => self.trust.clone().apply(&doc).map(|_| ()),
                };
                let result = match check {
                    Err(e) => Err(NodeError::Document(e)),
                    Ok(()) => self.author(Body::Publish(Publish { doc })).await,
                };
                let _ = reply.send(result);
            }
            Command::Ingest {
                peer,
                records,
                reply,
            } => {
                let n = records.len();
                let verdicts = self.ingest(records, Some(peer));
                let accepted = verdicts.iter().filter(|v| **v == Verdict::Accept).count();
                self.metrics.synced_records += accepted as u64;
                tracing::debug!(%peer, received = n, accepted, "sync batch");
                let _ = reply.send(());
            }
            Command::Unreachable { peer } => {
                if self.door.is_admitted(&peer)
                    && let Ok(node) = NodeId::from_peer_id(&peer)
                    && self.liveness.lost(node, Instant::now())
                {
                    tracing::info!(%peer, "peer unreachable over its remaining connections");
                    self.heartbeat().await;
                }
            }
            Command::HelloAnswer { peer, answer } => match answer {
                Ok(Response::Hello(hello)) => {
                    let _ = self.at_door(peer, &hello).await;
                }
                Ok(Response::Refused(why)) => {
                    tracing::warn!(%peer, %why, "peer refused this node's admission");
                }
                Ok(other) => self.refuse(Some(peer), "malformed", format!("{other:?} to a hello")),
                Err(e) => tracing::debug!(%peer, error = %e, "hello not answered"),
            },
            Command::SyncDone { peer, theirs } => {
                let node = self
                    .door
                    .all()
                    .find(|(p, _)| **p == peer)
                    .and_then(|(_, p)| p.node);
                self.door.end_sync(&peer);
                if let (Some(theirs), Some(node)) = (theirs, node) {
                    self.metrics.syncs += 1;
                    let ours = self.store.head_of(&self.me).map(|(s, _)| s).unwrap_or(0);
                    let live = self.liveness.live_at(Instant::now());
                    let seen = self.door.admitted().count().max(
                        live.len()
                            .saturating_sub(usize::from(live.contains(&self.me))),
                    );
                    if self.catch_up.synced(node, theirs.get(&self.me), ours, seen) {
                        tracing::info!(own_records = ours, "caught up with the mesh");
                        self.on_caught_up().await;
                    } else if !self.catch_up.is_done() {
                        tracing::info!(waiting_for = %self.catch_up.waiting_for(ours, seen), "not caught up yet");
                    }
                }
            }
            Command::Nodes { reply } => {
                let _ = reply.send(views::nodes(
                    &self.trust,
                    &self.liveness,
                    &self.door,
                    &self.store,
                    &self.misbehaving,
                ));
            }
            Command::Metrics { reply } => {
                let _ = reply.send(self.metrics());
            }
            Command::Signal { signal } => {
                if self.revoked {
                    return;
                }
                let signed = SignedSignal::sign(&self.key, &signal);
                let _ = self.net.publish(Gossip::Signal(signed).to_bytes()).await;
            }
            Command::Config { reply } => {
                let _ = reply.send(self.trust.config().cloned());
            }
            Command::FetchBlob { hash, from, reply } => {
                let local = self.store.blob(&hash).ok().flatten();
                if local.is_some() {
                    let _ = reply.send(local);
                    return;
                }
                let peers = blobs::sources(&self.door, from);
                let (net, store) = (self.net.clone(), self.store.clone());
                tokio::spawn(
                    async move {
                        let _ = reply.send(blobs::fetch(&net, &store, hash, peers).await);
                    }
                    .in_current_span(),
                );
            }
            Command::MayAnnounce { key, reply } => {
                let now = Timestamp::now();
                let answer = if self.trust.is_maintainer(&key, now) {
                    Ok(())
                } else {
                    self.trust
                        .may_act(&key, Role::Announcer, now)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                };
                let _ = reply.send(answer);
            }
            Command::Misbehaved {
                author,
                reason,
                what,
            } => self.note_misbehaviour(author, reason, what),
            Command::SyncAll { reply } => {
                let peers: Vec<PeerId> = self.door.admitted().map(|(id, _)| *id).collect();
                let (net, store, tx) = (self.net.clone(), self.store.clone(), self.self_tx.clone());
                let skip = self.refused_from.clone();
                tokio::spawn(
                    async move {
                        let rounds = peers
                            .into_iter()
                            .map(|peer| sync::with_peer(peer, &net, &store, &tx, &skip));
                        futures::future::join_all(rounds).await;
                        let _ = reply.send(());
                    }
                    .in_current_span(),
                );
            }
            Command::Isolate { from, cut, reply } => {
                for node in from {
                    let peer = node.to_peer_id();
                    if cut {
                        self.cut.insert(peer);
                        self.door.remove(&peer);
                        let _ = self.net.block(peer).await;
                        let _ = self.net.disconnect(peer).await;
                    } else {
                        self.cut.remove(&peer);
                        let _ = self.net.unblock(peer).await;
                    }
                }
                let _ = reply.send(());
            }
        }
    }

    // ---- authoring --------------------------------------------------------------------------

    async fn author(&mut self, body: Body) -> Result<Record, NodeError> {
        if self.revoked {
            return Err(NodeError::Revoked);
        }
        if !self.catch_up.is_done() {
            return Err(NodeError::NotCaughtUp);
        }
        let record = tokio::task::block_in_place(|| {
            self.store.append_own(&self.key, Timestamp::now(), &body)
        })?;
        self.metrics.authored += 1;
        self.after_append(&record);
        let gossip = Gossip::Record(serde_bytes::ByteBuf::from(record.bytes.clone()));
        let _ = self.net.publish(gossip.to_bytes()).await;
        Ok(record)
    }

    // Once the node knows its own log, it makes sure its admission is in it, so that every node
    // that reads the log can check the author.
    async fn on_caught_up(&mut self) {
        let id = self.admission.id();
        match self.store.has_doc(DocKind::Admission, &id) {
            Ok(true) => {}
            Ok(false) => {
                let doc = self.admission.clone();
                if let Err(e) = self.author(Body::Publish(Publish { doc })).await {
                    tracing::error!(error = %e, "cannot publish this node's admission");
                }
            }
            Err(e) => tracing::error!(error = %e, "store failed"),
        }
    }

    fn metrics(&self) -> Metrics {
        Metrics {
            id: Some(self.me),
            records: self.store.record_count() as u64,
            pending: self.store.pending_count() as u64,
            peers_connected: self.door.all().count() as u64,
            peers_admitted: self.door.admitted().count() as u64,
            caught_up: self.catch_up.is_done(),
            unacknowledged: self
                .store
                .head_of(&self.me)
                .map(|(s, _)| s)
                .unwrap_or(0)
                .saturating_sub(self.catch_up.held_by_peers()),
            refused: self
                .refused
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            ..self.metrics.clone()
        }
    }
}
