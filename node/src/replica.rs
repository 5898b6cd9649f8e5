//! The replica: the one task that decides what enters this node's store and what the node knows
//! of the mesh. It owns the trust fold, the peers' door state, the live set and the counters of
//! refusals; it answers the network's gossip and requests, runs anti-entropy with peers, and
//! authors this node's records.
//!
//! Every record, whether it came by gossip or by sync, passes the same gate: signature (on every
//! core for large batches), author admitted and not revoked at the record's time, then the
//! store's chain checks. Nothing is forwarded or stored before it passed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use buildmesh_protocol::builders::BuilderConfig;
use buildmesh_protocol::docs::{Admission, DocKind, Role, SignedDoc};
use buildmesh_protocol::record::{Body, Publish, Record, RecordError, ResultCode};
use buildmesh_protocol::trust::{Applied, Trust, TrustError};
use buildmesh_protocol::vv::VersionVector;
use buildmesh_protocol::wire::{
    Gossip, Heartbeat, Hello, MAX_PULL_BYTES, MAX_PULL_RECORDS, Request, Response, Signal,
    SignedSignal,
};
use buildmesh_protocol::{Hash, NodeId, SecretKey, Timestamp};
use buildmesh_store::{Ingest, Store, StoreError};
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::NodeError;
use crate::config::MeshSettings;
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

    /// Cuts (or restores) every connection with the given nodes, as a cable cut would.
    pub async fn isolate(&self, from: Vec<NodeId>, cut: bool) -> Result<(), NodeError> {
        self.ask(|reply| Command::Isolate { from, cut, reply })
            .await
    }
}

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

#[derive(Debug)]
struct Peer {
    node: Option<NodeId>,
    admitted: bool,
    door_deadline: Instant,
    syncing: bool,
    since: Instant,
}

#[derive(Debug)]
struct Live {
    heard: Instant,
    heard_at: Timestamp,
    last_time: Timestamp,
    running: u32,
    capacity: u32,
    addrs: Vec<Multiaddr>,
}

enum AuthorCheck {
    Ok,
    Unknown,
    Refuse(&'static str, String),
}

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
    peers: HashMap<PeerId, Peer>,
    live: HashMap<NodeId, Live>,
    cut: HashSet<PeerId>,
    listen: Vec<Multiaddr>,
    caught_up: bool,
    revoked: bool,
    refused: BTreeMap<&'static str, u64>,
    logged: HashSet<(Option<PeerId>, &'static str)>,
    refused_from: HashMap<NodeId, u64>,
    metrics: Metrics,
    last_redial: Instant,
    feed: tokio::sync::broadcast::Sender<Arc<Record>>,
    signals: tokio::sync::broadcast::Sender<Signal>,
    load: tokio::sync::watch::Receiver<Load>,
    ballots: mpsc::Sender<crate::notifier::BallotIn>,
    cancel: CancellationToken,
}

/// What this node's worker is doing, for its heartbeats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Builds running.
    pub running: u32,
    /// Builds it may run at once.
    pub capacity: u32,
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
    pub load: tokio::sync::watch::Receiver<Load>,
    pub ballots: mpsc::Sender<crate::notifier::BallotIn>,
    pub cancel: CancellationToken,
}

impl Replica {
    pub(crate) fn new(parts: ReplicaParts) -> (Self, ReplicaClient) {
        let (tx, commands) = mpsc::channel(1024);
        let me = parts.key.id();
        let own_log_empty = parts
            .store
            .head_of(&me)
            .map(|(s, _)| s == 0)
            .unwrap_or(true);
        // A node whose store holds nothing of its own log may have lost its disk: it authors
        // nothing until a peer told it what it had (unless it is alone, with no one to ask).
        let caught_up = !own_log_empty || parts.bootstrap.is_empty();
        let replica = Replica {
            key: parts.key,
            me,
            store: parts.store,
            trust: parts.trust,
            admission: parts.admission,
            settings: parts.settings,
            bootstrap: parts.bootstrap,
            net: parts.net,
            events: parts.events,
            commands,
            self_tx: tx.clone(),
            peers: HashMap::new(),
            live: HashMap::new(),
            cut: HashSet::new(),
            listen: Vec::new(),
            caught_up,
            revoked: false,
            refused: BTreeMap::new(),
            logged: HashSet::new(),
            refused_from: HashMap::new(),
            metrics: Metrics::default(),
            last_redial: Instant::now() - Duration::from_secs(60),
            feed: parts.feed,
            signals: parts.signals,
            load: parts.load,
            ballots: parts.ballots,
            cancel: parts.cancel,
        };
        (replica, ReplicaClient { tx })
    }

    /// Runs until the node shuts down.
    pub(crate) async fn run(mut self) {
        if self.caught_up {
            self.on_caught_up().await;
        } else {
            tracing::info!("own log is empty here: recovering it from peers before authoring");
        }
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat_interval);
        let mut housekeeping = tokio::time::interval(Duration::from_millis(250));
        let mut anti_entropy = tokio::time::interval(self.settings.sync_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        anti_entropy.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(event) = self.events.recv() => self.on_network(event).await,
                Some(command) = self.commands.recv() => self.on_command(command).await,
                _ = heartbeat.tick() => self.heartbeat().await,
                _ = housekeeping.tick() => self.housekeeping().await,
                _ = anti_entropy.tick() => self.anti_entropy(),
            }
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "store flush at shutdown failed");
        }
        tracing::debug!("replica stopped");
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

    fn is_admitted(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.admitted)
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
                request: Request::Ballot(ballot),
                channel,
            } => {
                // The election answers on its own task; the answer goes back when it comes.
                let from = self
                    .peers
                    .get(&peer)
                    .filter(|p| p.admitted)
                    .and_then(|p| p.node);
                let net = self.net.clone();
                let ballots = self.ballots.clone();
                tokio::spawn(async move {
                    let answers = match from {
                        Some(node) => {
                            let (reply, rx) = oneshot::channel();
                            if ballots.send((node, ballot, reply)).await.is_ok() {
                                rx.await.unwrap_or_default()
                            } else {
                                Vec::new()
                            }
                        }
                        None => Vec::new(),
                    };
                    let _ = net.respond(channel, Response::Ballots(answers)).await;
                });
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
                if let Some(p) = self.peers.remove(&peer)
                    && p.admitted
                {
                    tracing::info!(%peer, "peer disconnected");
                }
            }
            network::Event::Listening { addr } => {
                tracing::info!(%addr, "listening");
                self.listen.push(addr);
            }
        }
    }

    async fn on_connected(&mut self, peer: PeerId, addr: Multiaddr) {
        let revoked = NodeId::from_peer_id(&peer)
            .ok()
            .and_then(|n| self.trust.revoked_at(&n, Timestamp::now()).map(|_| ()))
            .is_some();
        if self.cut.contains(&peer) || revoked {
            let _ = self.net.disconnect(peer).await;
            return;
        }
        tracing::debug!(%peer, %addr, "connected; waiting for its admission");
        self.peers.insert(
            peer,
            Peer {
                node: None,
                admitted: false,
                door_deadline: Instant::now() + self.settings.door_timeout,
                syncing: false,
                since: Instant::now(),
            },
        );
        let hello = Request::Hello(Hello {
            mesh: self.trust.mesh(),
            admission: self.admission.clone(),
        });
        let net = self.net.clone();
        let tx = self.self_tx.clone();
        tokio::spawn(async move {
            let answer = net.request(peer, hello).await.map_err(|e| e.to_string());
            let _ = tx.send(Command::HelloAnswer { peer, answer }).await;
        });
    }

    // Checks a peer's hello; on success the peer is admitted and synced with.
    fn check_hello(
        &mut self,
        peer: PeerId,
        hello: &Hello,
    ) -> Result<NodeId, (&'static str, String)> {
        if hello.mesh != self.trust.mesh() {
            return Err(("wrong-mesh", format!("peer is in mesh {}", hello.mesh)));
        }
        let admission = self
            .trust
            .check_admission(&hello.admission)
            .map_err(|e| ("bad-admission", e.to_string()))?;
        if admission.node.to_peer_id() != peer {
            return Err((
                "bad-admission",
                format!(
                    "admission is for {}, not for the connected key",
                    admission.node
                ),
            ));
        }
        let _ = self.trust.apply(&hello.admission);
        self.trust
            .check_member(&admission.node, Timestamp::now())
            .map_err(|e| match e {
                TrustError::Revoked { .. } => ("revoked", e.to_string()),
                TrustError::Expired { .. } => ("expired", e.to_string()),
                _ => ("bad-admission", e.to_string()),
            })?;
        Ok(admission.node)
    }

    fn admit_peer(&mut self, peer: PeerId, node: NodeId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.admitted {
            return;
        }
        p.admitted = true;
        p.node = Some(node);
        let name = self
            .trust
            .admission(&node)
            .map(|a| a.name.clone())
            .unwrap_or_default();
        tracing::info!(peer = %node, name, "peer admitted");
        self.start_sync(peer);
    }

    async fn refuse_at_door(&mut self, peer: PeerId, reason: &'static str, detail: String) {
        self.refuse(Some(peer), reason, &detail);
        // Let the refusal reach the peer before the connection closes.
        let net = self.net.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = net.disconnect(peer).await;
        });
    }

    async fn on_request(&mut self, peer: PeerId, request: Request) -> Response {
        if let Request::Hello(hello) = &request {
            return match self.check_hello(peer, hello) {
                Ok(node) => {
                    self.admit_peer(peer, node);
                    Response::Hello(Hello {
                        mesh: self.trust.mesh(),
                        admission: self.admission.clone(),
                    })
                }
                Err((reason, detail)) => {
                    self.refuse_at_door(peer, reason, detail.clone()).await;
                    Response::Refused(detail)
                }
            };
        }
        if !self.is_admitted(&peer) {
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
                self.note_peer_vv(&theirs);
                self.store.version_vector().map(Response::VersionVector)
            }
            Request::Pull { author, from, max } => self.pull_answer(&author, from, max),
            Request::Blob(hash) => self
                .store
                .blob(&hash)
                .map(|b| Response::Blob(b.map(serde_bytes::ByteBuf::from))),
            Request::Ballot(_) => unreachable!("answered on its own task"),
        };
        result.unwrap_or_else(|e| {
            tracing::error!(error = %e, "store failed while answering a peer");
            Response::Refused(format!("store error: {e}"))
        })
    }

    fn pull_answer(&self, author: &NodeId, from: u64, max: u32) -> Result<Response, StoreError> {
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

    fn note_peer_vv(&mut self, _theirs: &VersionVector) {
        // Peers' version vectors tell which of this node's records another node holds; the
        // executor uses that to know a result is safe.
    }

    async fn on_gossip(&mut self, source: PeerId, data: &[u8]) -> Verdict {
        if !self.is_admitted(&source) {
            // A peer still at the door may gossip before its hello is through: that is the
            // order libp2p delivers things in, not misbehaviour. Anti-entropy brings it later.
            if !self.peers.contains_key(&source) {
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

    fn on_signal(&mut self, source: PeerId, signed: &SignedSignal) -> Verdict {
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
        // Heartbeats are ordered per sender; other signals are told apart by content (gossip
        // drops exact copies) and bounded by the clock-skew window above.
        if matches!(signal, Signal::Heartbeat(_))
            && let Some(l) = self.live.get(&sender)
            && l.last_time >= time
        {
            self.refuse(
                Some(source),
                "replayed-signal",
                format!("signal from {sender} dated {time}"),
            );
            return Verdict::Ignore;
        }
        match &signal {
            Signal::Heartbeat(h) => self.heard(h.clone()),
            Signal::Progress(_) | Signal::Holder(_) => {}
        }
        let _ = self.signals.send(signal);
        Verdict::Accept
    }

    fn heard(&mut self, h: Heartbeat) {
        let addrs = h.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        self.live.insert(
            h.node,
            Live {
                heard: Instant::now(),
                heard_at: Timestamp::now(),
                last_time: h.time,
                running: h.running,
                capacity: h.capacity,
                addrs,
            },
        );
        let held = self.store.head_of(&h.node).map(|(s, _)| s).unwrap_or(0);
        if h.head > held && !self.refused_from.contains_key(&h.node) {
            // Its log is ahead of what reached us by gossip: ask someone.
            if let Some(peer) = self
                .peers
                .iter()
                .find(|(_, p)| p.node == Some(h.node) && p.admitted)
                .map(|(id, _)| *id)
            {
                self.start_sync(peer);
            }
        }
    }

    // ---- the gate ---------------------------------------------------------------------------

    fn check_author(&mut self, record: &Record) -> AuthorCheck {
        let author = record.author_id();
        if let Ok(Body::Publish(Publish { doc })) = record.body()
            && doc.kind == DocKind::Admission
            && let Ok(a) = self.trust.check_admission(&doc)
            && a.node == author
        {
            // A node's own admission, in its own log: it speaks for itself.
            let _ = self.trust.apply(&doc);
            return AuthorCheck::Ok;
        }
        match self.trust.may_author(&author, record.envelope.time) {
            Ok(()) => AuthorCheck::Ok,
            Err(TrustError::NotAdmitted { .. }) => AuthorCheck::Unknown,
            Err(e @ TrustError::Revoked { .. }) => AuthorCheck::Refuse("revoked", e.to_string()),
            Err(e @ TrustError::Expired { .. }) => AuthorCheck::Refuse("expired", e.to_string()),
            Err(e) => AuthorCheck::Refuse("not-admitted", e.to_string()),
        }
    }

    /// Checks and stores records, in order; one verdict per record.
    fn ingest(&mut self, items: Vec<Vec<u8>>, source: Option<PeerId>) -> Vec<Verdict> {
        let verified = buildmesh_store::verify_all(&items);
        let mut verdicts = vec![Verdict::Reject; items.len()];
        let mut to_store = Vec::with_capacity(items.len());
        let mut slots = Vec::with_capacity(items.len());
        let mut unknown_authors = HashSet::new();
        for (i, v) in verified.into_iter().enumerate() {
            match v {
                Err(RecordError::Codec(e)) => {
                    let reason = match &e {
                        buildmesh_protocol::codec::CodecError::TooLarge { .. } => "oversized",
                        _ => "malformed",
                    };
                    self.refuse(source, reason, e);
                }
                Err(e @ RecordError::BadSignature(_)) => self.refuse(source, "bad-signature", e),
                Err(e) => self.refuse(source, "malformed", e),
                Ok(record) => match self.check_author(&record) {
                    AuthorCheck::Ok => {
                        slots.push(i);
                        to_store.push(Ok(record));
                    }
                    AuthorCheck::Unknown => {
                        verdicts[i] = Verdict::Ignore;
                        unknown_authors.insert(record.author_id());
                    }
                    AuthorCheck::Refuse(reason, detail) => {
                        let author = record.author_id();
                        let e = self.refused_from.entry(author).or_insert(record.seq());
                        *e = (*e).min(record.seq());
                        self.refuse(source, reason, detail);
                    }
                },
            }
        }
        let mut gap = false;
        if !to_store.is_empty() {
            let outcomes = tokio::task::block_in_place(|| self.store.ingest_verified(to_store));
            for (slot, outcome) in slots.into_iter().zip(outcomes) {
                verdicts[slot] = match outcome {
                    Ok(Ingest::Appended(records)) => {
                        for r in &records {
                            self.after_append(r);
                        }
                        Verdict::Accept
                    }
                    Ok(Ingest::Duplicate) => {
                        *self.refused.entry("duplicate").or_insert(0) += 1;
                        Verdict::Ignore
                    }
                    Ok(Ingest::Held { .. }) => {
                        gap = true;
                        Verdict::Accept
                    }
                    Ok(Ingest::Fork { author, seq }) => {
                        self.refuse(source, "fork", format!("{author} signed two records {seq}"));
                        Verdict::Accept
                    }
                    Err(e @ StoreError::ChainBreak { .. }) => {
                        self.refuse(source, "chain-break", e);
                        Verdict::Reject
                    }
                    Err(e @ StoreError::TooFarAhead { .. }) => {
                        self.refuse(source, "too-far-ahead", e);
                        Verdict::Ignore
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store failed to take a record");
                        Verdict::Ignore
                    }
                };
            }
        }
        if (gap || !unknown_authors.is_empty())
            && let Some(peer) = source
        {
            self.start_sync(peer);
        }
        verdicts
    }

    // What a newly stored record changes here.
    fn after_append(&mut self, record: &Record) {
        match record.body() {
            Ok(Body::Publish(Publish { doc })) => self.apply_doc(&doc, record.author_id()),
            Ok(Body::BuildResult(r)) if record.author_id() != self.me => {
                // Logs of red builds are copied here at once, so that they stay readable when
                // the worker that ran them is gone.
                if matches!(r.result, ResultCode::Failure | ResultCode::Flaky) {
                    let missing: Vec<Hash> = r
                        .steps
                        .iter()
                        .filter_map(|s| s.log)
                        .filter(|h| !self.store.has_blob(h).unwrap_or(true))
                        .collect();
                    if !missing.is_empty() {
                        let peers = self.blob_sources(Some(record.author_id()));
                        let net = self.net.clone();
                        let store = self.store.clone();
                        tokio::spawn(async move {
                            for h in missing {
                                if fetch_blob(&net, &store, h, peers.clone()).await.is_none() {
                                    tracing::warn!(log = %h.short(), "log of a red build not found on any peer");
                                }
                            }
                        });
                    }
                }
            }
            _ => {}
        }
        // Nobody listening is fine.
        let _ = self.feed.send(Arc::new(record.clone()));
    }

    fn apply_doc(&mut self, doc: &SignedDoc, publisher: NodeId) {
        match self.trust.apply(doc) {
            Ok(Applied::Revoked(subject, reason)) => {
                tracing::warn!(subject = %subject, %reason, by = %publisher, "key revoked");
                let peer = subject.to_peer_id();
                self.peers.remove(&peer);
                self.live.remove(&subject);
                let net = self.net.clone();
                tokio::spawn(async move {
                    let _ = net.block(peer).await;
                    let _ = net.disconnect(peer).await;
                });
                if subject == self.me {
                    tracing::error!(%reason, "this node's own key was revoked: it authors nothing more");
                    self.revoked = true;
                }
            }
            Ok(Applied::Admitted(node)) => tracing::debug!(%node, "admission applied"),
            Ok(Applied::Config(v)) => tracing::info!(version = v, "builder configuration applied"),
            Ok(_) => {}
            Err(TrustError::StaleConfig { .. }) => {}
            Err(e) => self.refuse(
                None,
                "bad-document",
                format!("published by {publisher}: {e}"),
            ),
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
            Command::HelloAnswer { peer, answer } => match answer {
                Ok(Response::Hello(hello)) => match self.check_hello(peer, &hello) {
                    Ok(node) => self.admit_peer(peer, node),
                    Err((reason, detail)) => self.refuse_at_door(peer, reason, detail).await,
                },
                Ok(Response::Refused(why)) => {
                    tracing::warn!(%peer, %why, "peer refused this node's admission");
                }
                Ok(other) => self.refuse(Some(peer), "malformed", format!("{other:?} to a hello")),
                Err(e) => tracing::debug!(%peer, error = %e, "hello not answered"),
            },
            Command::SyncDone { peer, theirs } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.syncing = false;
                }
                if theirs.is_some() {
                    self.metrics.syncs += 1;
                    if !self.caught_up {
                        self.caught_up = true;
                        let own = self.store.head_of(&self.me).map(|(s, _)| s).unwrap_or(0);
                        tracing::info!(own_records = own, "caught up with the mesh");
                        self.on_caught_up().await;
                    }
                }
            }
            Command::Nodes { reply } => {
                let _ = reply.send(self.nodes());
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
                let peers = self.blob_sources(from);
                let net = self.net.clone();
                let store = self.store.clone();
                tokio::spawn(async move {
                    let _ = reply.send(fetch_blob(&net, &store, hash, peers).await);
                });
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
            Command::SyncAll { reply } => {
                let peers: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.admitted)
                    .map(|(id, _)| *id)
                    .collect();
                let (net, store, tx) = (self.net.clone(), self.store.clone(), self.self_tx.clone());
                let skip = self.refused_from.clone();
                tokio::spawn(async move {
                    let rounds = peers
                        .into_iter()
                        .map(|peer| crate::sync::with_peer(peer, &net, &store, &tx, &skip));
                    futures::future::join_all(rounds).await;
                    let _ = reply.send(());
                });
            }
            Command::Isolate { from, cut, reply } => {
                for node in from {
                    let peer = node.to_peer_id();
                    if cut {
                        self.cut.insert(peer);
                        self.peers.remove(&peer);
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

    async fn author(&mut self, body: Body) -> Result<Record, NodeError> {
        if self.revoked {
            return Err(NodeError::Revoked);
        }
        if !self.caught_up {
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

    // ---- periodic work ----------------------------------------------------------------------

    async fn heartbeat(&mut self) {
        let now = Timestamp::now();
        let head = self.store.head_of(&self.me).map(|(s, _)| s).unwrap_or(0);
        let load = *self.load.borrow();
        let h = Heartbeat {
            node: self.me,
            time: now,
            running: load.running,
            capacity: load.capacity,
            head,
            addrs: self.listen.iter().map(|a| a.to_string()).collect(),
        };
        self.live.insert(
            self.me,
            Live {
                heard: Instant::now(),
                heard_at: now,
                last_time: now,
                running: h.running,
                capacity: h.capacity,
                addrs: Vec::new(),
            },
        );
        if self.revoked {
            return;
        }
        let signed = SignedSignal::sign(&self.key, &Signal::Heartbeat(h));
        let _ = self.net.publish(Gossip::Signal(signed).to_bytes()).await;
    }

    async fn housekeeping(&mut self) {
        let now = Instant::now();
        let late: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.admitted && p.door_deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for peer in late {
            self.refuse(Some(peer), "no-admission", "no valid admission in time");
            self.peers.remove(&peer);
            let _ = self.net.disconnect(peer).await;
        }
        if now.duration_since(self.last_redial) < Duration::from_secs(2) {
            return;
        }
        self.last_redial = now;
        // A connection over which nothing was heard for two liveness windows is dead (a cut
        // cable does not close it); drop it so that redialling can replace it.
        let silent_for = self.settings.liveness_window * 2;
        let dead: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.admitted && now.duration_since(p.since) > silent_for)
            .filter(|(_, p)| {
                p.node
                    .and_then(|n| self.live.get(&n))
                    .is_none_or(|l| now.duration_since(l.heard) > silent_for)
            })
            .map(|(id, _)| *id)
            .collect();
        for peer in dead {
            tracing::info!(%peer, "dropping a connection that has been silent");
            self.peers.remove(&peer);
            let _ = self.net.disconnect(peer).await;
        }
        // Bootstrap peers, whenever their connection is gone.
        for addr in self.bootstrap.clone() {
            let peer = addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                _ => None,
            });
            let wanted = match peer {
                Some(p) => !self.peers.contains_key(&p) && !self.cut.contains(&p),
                None => self.peers.is_empty(),
            };
            if wanted {
                let _ = self.net.dial(addr).await;
            }
        }
        // Other live nodes, learnt from heartbeats, up to `max_peers`.
        let connected = self.peers.values().filter(|p| p.admitted).count();
        if connected < self.settings.max_peers {
            let candidates: Vec<(NodeId, Vec<Multiaddr>)> = self
                .live
                .iter()
                .filter(|(n, l)| {
                    **n != self.me
                        && !l.addrs.is_empty()
                        && now.duration_since(l.heard) <= self.settings.liveness_window
                })
                .map(|(n, l)| (*n, l.addrs.clone()))
                .filter(|(n, _)| {
                    let p = n.to_peer_id();
                    !self.peers.contains_key(&p) && !self.cut.contains(&p)
                })
                .take(self.settings.max_peers - connected)
                .collect();
            for (node, addrs) in candidates {
                for addr in addrs {
                    let addr = network::with_peer(&addr, node.to_peer_id());
                    let _ = self.net.dial(addr).await;
                }
            }
        }
    }

    fn anti_entropy(&mut self) {
        // A couple of random admitted peers per round: every pair meets often enough.
        let mut candidates: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.admitted && !p.syncing)
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

    fn start_sync(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.syncing || !p.admitted {
            return;
        }
        p.syncing = true;
        let net = self.net.clone();
        let store = self.store.clone();
        let tx = self.self_tx.clone();
        let skip = self.refused_from.clone();
        tokio::spawn(async move {
            let theirs = crate::sync::with_peer(peer, &net, &store, &tx, &skip).await;
            let _ = tx.send(Command::SyncDone { peer, theirs }).await;
        });
    }

    // Peers to ask for a blob: `first` (its author) if connected, then every admitted peer.
    fn blob_sources(&self, first: Option<NodeId>) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.admitted)
            .map(|(id, _)| *id)
            .collect();
        if let Some(f) = first {
            let f = f.to_peer_id();
            if let Some(i) = peers.iter().position(|p| *p == f) {
                peers.swap(0, i);
            }
        }
        peers
    }

    // ---- views ------------------------------------------------------------------------------

    fn nodes(&self) -> Vec<NodeView> {
        let now = Instant::now();
        let at = Timestamp::now();
        let flagged: HashSet<NodeId> = self
            .store
            .flagged()
            .unwrap_or_default()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let connected: HashSet<NodeId> = self
            .peers
            .values()
            .filter(|p| p.admitted)
            .filter_map(|p| p.node)
            .collect();
        self.trust
            .admissions()
            .map(|a: &Admission| {
                let live = self.live.get(&a.node);
                let revocation = self.trust.revocation(&a.node);
                let revoked_now = self.trust.revoked_at(&a.node, at).is_some();
                NodeView {
                    id: a.node,
                    name: a.name.clone(),
                    labels: a.labels.clone(),
                    roles: a.roles.iter().copied().collect(),
                    live: !revoked_now
                        && live.is_some_and(|l| {
                            now.duration_since(l.heard) <= self.settings.liveness_window
                        }),
                    last_heard: live.map(|l| l.heard_at),
                    revoked: revocation.is_some(),
                    revocation_reason: revocation.map(|r| r.reason.to_string()),
                    running: live.map_or(0, |l| l.running),
                    capacity: live.map_or(0, |l| l.capacity),
                    records: self.store.head_of(&a.node).map(|(s, _)| s).unwrap_or(0),
                    connected: connected.contains(&a.node),
                    flagged: flagged.contains(&a.node),
                    owner: a.owner.clone(),
                }
            })
            .collect()
    }

    fn metrics(&self) -> Metrics {
        Metrics {
            id: Some(self.me),
            records: self.store.record_count() as u64,
            pending: self.store.pending_count() as u64,
            peers_connected: self.peers.len() as u64,
            peers_admitted: self.peers.values().filter(|p| p.admitted).count() as u64,
            caught_up: self.caught_up,
            refused: self
                .refused
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            ..self.metrics.clone()
        }
    }
}

/// Asks `peers` in turn for a blob; keeps and returns the first copy that matches its hash.
async fn fetch_blob(
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
