//! The notifier: takes part in the election of the one mail-sending node (notifier role), and
//! while it holds the lease, mails every red transition of a stable builder once.
//!
//! - the election is [`buildmesh_protocol::election`], its ballots carried by request-response
//!   between the notifier-role nodes, the holder announcing itself by a signed gossip signal;
//! - transitions are [`buildmesh_protocol::transitions::find`] over each (builder, branch)'s
//!   recent builds in the read model, looked at again when one of them changes;
//! - what is mailed and when is [`buildmesh_protocol::outbox`] (dedup across holders, the new
//!   holder's settle, backoff, missing workers), the code the election simulator drives too; a
//!   mail is sent, then recorded as a `NotificationSent` record keyed by its alert, and its
//!   Message-ID is the alert's, so a resend after a crash between the two steps is the same
//!   message to mail software;
//! - `mail`: building and sending the message with lettre.
//!
//! One task because the election, the scans for what to mail and the sending all turn on one
//! question — does this node hold the lease, for which term — and share the outbox; the rules
//! themselves are in `protocol`. What remains here is I/O: ballots, records, SMTP, queries.
//!
//! One module because the election, the outbox and the mail tasks turn on the same state (the
//! term held, what was mailed, what waits for a culprit) in one task's loop; the mail texts
//! live in `mail.rs`, the rules in the protocol crate.

mod mail;

use buildmesh_protocol::outbox::{self, Alert, Outbox, WorkerSeen};

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use buildmesh_protocol::docs::Role;
use buildmesh_protocol::election::{Ballot, Election, ElectionSettings, Standing};
use buildmesh_protocol::record::{
    Body, BuildState, NotificationSent, Record, RecordKind, ResultCode,
};
use buildmesh_protocol::transitions::{self, Transition};
use buildmesh_protocol::wire::{HolderSignal, Request, Response, Signal};
use buildmesh_protocol::{Hash, NodeId, Timestamp};
use buildmesh_store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::NodeError;
use crate::claimer::{BuildView, ClaimerClient};
use crate::config::NotifierSettings;
use crate::liveness::Membership;
use crate::network::{self, BallotRequest};
use crate::readmodel::ReadModel;
use crate::replica::ReplicaClient;

/// The notifier as a node sees it (`GET /api/v1/notifier`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NotifierView {
    /// The holder, if one is known.
    pub holder: Option<NodeId>,
    /// Its term.
    pub term: u64,
    /// When its lease ends, as far as this node can tell.
    pub lease_expires: Option<Timestamp>,
    /// Whether this node holds it.
    pub holding: bool,
    /// The notifier-role nodes.
    pub voters: Vec<NodeId>,
    /// Mails this node sent since it started.
    pub sent_here: u64,
    /// Transitions waiting for a mail (only on the holder).
    pub waiting: usize,
    /// Transitions kept from the list because their red was not reproduced on another host
    /// (counted by this node while it held the lease).
    #[serde(default)]
    pub suppressed: u64,
}

enum Query {
    View(oneshot::Sender<NotifierView>),
}

/// A handle on the notifier.
#[derive(Clone, Debug)]
pub struct NotifierClient {
    tx: mpsc::Sender<Query>,
}

impl NotifierClient {
    /// The notifier as this node sees it.
    pub async fn view(&self) -> Result<NotifierView, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Query::View(reply))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Query")
    }
}

/// What the notifier needs.
pub(crate) struct NotifierParts {
    pub me: NodeId,
    pub voter: bool,
    pub settings: NotifierSettings,
    pub election: ElectionSettings,
    pub store: Arc<Store>,
    pub replica: ReplicaClient,
    pub claimer: ClaimerClient,
    pub net: network::Client,
    pub ballots: mpsc::Receiver<BallotRequest>,
    pub membership: watch::Receiver<Membership>,
    pub records: broadcast::Receiver<Arc<Record>>,
    pub signals: broadcast::Receiver<Signal>,
    pub api_hint: String,
    pub board: Arc<crate::bisector::Board>,
    pub starts: mpsc::Sender<crate::bisector::Red>,
    pub cancel: CancellationToken,
}

/// The builds a transition of (builder, branch) can turn on: the newest ones, back to the
/// `VERDICTS`-th newest verdict (a transition needs the verdict before it), at most
/// `RECENT` of them.
fn recent_builds(
    views: &ReadModel,
    builder: &str,
    branch: &str,
) -> Result<Vec<BuildView>, buildmesh_store::StoreError> {
    const VERDICTS: usize = 20;
    const RECENT: usize = 200;
    let mut verdicts = 0;
    let mut out = Vec::new();
    let listing = buildmesh_store::Listing::Branch(builder, branch);
    for b in views.newest(listing).take(RECENT) {
        let b = b?;
        if !b.purpose.is_ordinary() {
            continue;
        }
        verdicts += usize::from(b.result.is_verdict());
        out.push(b);
        if verdicts >= VERDICTS {
            break;
        }
    }
    Ok(out)
}

/// The notifier task.
pub(crate) struct Notifier {
    me: NodeId,
    voter: bool,
    settings: NotifierSettings,
    election: Election,
    lease: Duration,
    store: Arc<Store>,
    replica: ReplicaClient,
    claimer: ClaimerClient,
    net: network::Client,
    ballots: mpsc::Receiver<BallotRequest>,
    membership: watch::Receiver<Membership>,
    records: broadcast::Receiver<Arc<Record>>,
    signals: broadcast::Receiver<Signal>,
    queries: mpsc::Receiver<Query>,
    answers_tx: mpsc::Sender<(NodeId, Vec<Ballot>)>,
    answers_rx: mpsc::Receiver<(NodeId, Vec<Ballot>)>,
    sent_tx: mpsc::Sender<(Hash, Result<(), String>)>,
    sent_rx: mpsc::Receiver<(Hash, Result<(), String>)>,
    outbox: Outbox,
    // Transitions that an unreproduced red would have made, and that were not mailed.
    suppressed: HashSet<Hash>,
    sent_here: u64,
    heard: Option<(NodeId, u64, Timestamp, Timestamp)>,
    last_signal: Instant,
    dirty: bool,
    // The sync round under way for a holder term.
    settling: Option<(u64, oneshot::Receiver<()>)>,
    // Builds as they change, and the (builder, branch) pairs changed since the last scan for
    // transitions; every pair is scanned when `rescan` says so (a new term, a configuration,
    // missed changes).
    views: broadcast::Receiver<Arc<BuildView>>,
    changed: BTreeSet<(String, String)>,
    rescan: bool,
    config_version: Option<u64>,
    api_hint: String,
    // Culprit searches, and when each red's mail began to wait for its culprit (by alert).
    board: Arc<crate::bisector::Board>,
    starts: mpsc::Sender<crate::bisector::Red>,
    culprit_since: std::collections::HashMap<Hash, Timestamp>,
    cancel: CancellationToken,
}

// What a red's mail does about its culprit search.
enum Hold {
    // Waits until then.
    Wait(Timestamp),
    // Goes out now, with the search as it stands (none, under way, or done).
    Send(Option<Box<crate::bisector::SearchView>>),
    // Never goes out (a follow-up whose search never named a culprit).
    Drop,
}

/// How long a red's mail waits at most to learn whether a culprit search runs for it.
const DECIDE_WAIT: Duration = Duration::from_secs(60);

/// How long a follow-up waits for its search to name the culprit before it is given up.
const FOLLOW_UP_WAIT: Duration = Duration::from_secs(6 * 3600);

impl Notifier {
    pub(crate) fn new(parts: NotifierParts) -> (Self, NotifierClient) {
        let (tx, queries) = mpsc::channel(16);
        let (answers_tx, answers_rx) = mpsc::channel(256);
        let (sent_tx, sent_rx) = mpsc::channel(64);
        let now = Timestamp::now();
        let voters = BTreeSet::from([parts.me]);
        let lease = parts.election.lease;
        let n = Notifier {
            me: parts.me,
            voter: parts.voter,
            settings: parts.settings,
            election: Election::new(parts.me, voters, parts.election, now),
            lease,
            store: parts.store,
            replica: parts.replica,
            claimer: parts.claimer.clone(),
            net: parts.net,
            ballots: parts.ballots,
            membership: parts.membership,
            records: parts.records,
            signals: parts.signals,
            queries,
            answers_tx,
            answers_rx,
            sent_tx,
            sent_rx,
            outbox: Outbox::new(),
            suppressed: HashSet::new(),
            sent_here: 0,
            heard: None,
            last_signal: Instant::now(),
            dirty: true,
            settling: None,
            views: parts.claimer.views().subscribe(),
            changed: BTreeSet::new(),
            rescan: true,
            config_version: None,
            api_hint: parts.api_hint,
            board: parts.board,
            starts: parts.starts,
            culprit_since: Default::default(),
            cancel: parts.cancel,
        };
        (n, NotifierClient { tx })
    }

    pub(crate) async fn run(mut self) {
        let store = self.store.clone();
        for r in store
            .records_of_kind(&RecordKind::NotificationSent)
            .flatten()
        {
            self.learn(&r);
        }
        self.refresh_voters();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut scan = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(BallotRequest { peer, ballot, channel }) = self.ballots.recv() => {
                    let now = Timestamp::now();
                    // Only admitted nodes vote; the connection proves the key, trust says
                    // whether it is admitted now.
                    let from = NodeId::from_peer_id(&peer)
                        .ok()
                        .filter(|n| self.membership.borrow().trust.check_member(n, now).is_ok());
                    let out = match from {
                        Some(from) if self.voter => self.election.receive(from, ballot, now),
                        _ => Vec::new(),
                    };
                    let answers = out.into_iter().map(|(_, b)| b).collect();
                    let _ = self.net.respond(channel, Response::Ballots(answers)).await;
                    self.after_election().await;
                }
                Some((from, answers)) = self.answers_rx.recv() => {
                    let mut out = Vec::new();
                    for a in answers {
                        out.extend(self.election.receive(from, a, Timestamp::now()));
                    }
                    self.send_ballots(out);
                    self.after_election().await;
                }
                Some((key, outcome)) = self.sent_rx.recv() => self.on_sent(key, outcome).await,
                r = self.records.recv() => match r {
                    Ok(record) => {
                        if self.learn(&record) {
                            self.dirty = true;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let store = self.store.clone();
                        for r in store.records_of_kind(&RecordKind::NotificationSent).flatten() {
                            self.learn(&r);
                        }
                        self.dirty = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                v = self.views.recv() => match v {
                    Ok(b) => if b.purpose.is_ordinary() {
                        self.changed.insert((b.builder.clone(), b.branch.clone()));
                        self.dirty = true;
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.rescan = true;
                        self.dirty = true;
                    }
                    // The claimer holds the sender as long as this task runs.
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                s = self.signals.recv() => if let Ok(Signal::Holder(h)) = s {
                    let now = Timestamp::now();
                    self.election.heard(h.node, h.term, now);
                    self.heard = Some((h.node, h.term, now, now.plus(Duration::from_millis(h.lease_ms))));
                },
                Some(q) = self.queries.recv() => match q {
                    Query::View(reply) => { let _ = reply.send(self.view()); }
                },
                _ = tick.tick() => {
                    if self.voter {
                        let out = self.election.tick(Timestamp::now());
                        self.send_ballots(out);
                        self.after_election().await;
                    }
                    if self.dirty && self.election.holding(Timestamp::now()).is_some() {
                        self.dirty = false;
                        self.find_transitions().await;
                        self.find_missing_workers().await;
                        self.find_quarantined_workers().await;
                    }
                    self.send_due();
                }
                _ = scan.tick() => self.dirty = true,
                Ok(()) = self.membership.changed() => self.refresh_voters(),
            }
        }
        tracing::debug!("notifier stopped");
    }

    // Returns whether the record may change what is to be mailed.
    fn learn(&mut self, record: &Record) -> bool {
        match record.body() {
            Ok(Body::NotificationSent(n)) => {
                // Only a notifier's notice says a mail went out: anyone else's would silence
                // a red transition.
                let entitled = self
                    .membership
                    .borrow()
                    .trust
                    .may_act(&record.author_id(), Role::Notifier, record.envelope.time)
                    .is_ok();
                if !entitled {
                    self.replica.misbehaved(
                        record.author_id(),
                        buildmesh_protocol::entitle::Refusal::NotNotifier.reason(),
                        record.hash,
                    );
                    return false;
                }
                self.outbox.recorded(n.transition);
                true
            }
            Ok(Body::BuildResult(_)) => true,
            _ => false,
        }
    }

    // The notifier-role nodes never revoked, from the published trust.
    fn refresh_voters(&mut self) {
        let voters: BTreeSet<NodeId> = {
            let membership = self.membership.borrow_and_update();
            let trust = &membership.trust;
            trust
                .admissions()
                .filter(|a| {
                    a.roles.contains(&Role::Notifier) && trust.revocation(&a.node).is_none()
                })
                .map(|a| a.node)
                .collect()
        };
        if !voters.is_empty() && &voters != self.election.voters() {
            self.election.set_voters(voters);
        }
    }

    fn send_ballots(&self, out: Vec<(NodeId, Ballot)>) {
        for (to, ballot) in out {
            let net = self.net.clone();
            let tx = self.answers_tx.clone();
            tokio::spawn(
                async move {
                    match net.request(to.to_peer_id(), Request::Ballot(ballot)).await {
                        Ok(Response::Ballots(answers)) => {
                            let _ = tx.send((to, answers)).await;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::trace!(voter = %to.short(), error = %e, "ballot not delivered")
                        }
                    }
                }
                .in_current_span(),
            );
        }
    }

    async fn after_election(&mut self) {
        let now = Timestamp::now();
        if let Some(term) = self.election.holding(now)
            && self.last_signal.elapsed() >= Duration::from_millis(400)
        {
            self.last_signal = Instant::now();
            let until = match self.election.standing() {
                Standing::Holder { until, .. } => *until,
                _ => now,
            };
            let signal = Signal::Holder(HolderSignal {
                node: self.me,
                time: now,
                term,
                lease_ms: until.since(now).as_millis() as u64,
            });
            let _ = self.replica.signal(signal).await;
            if self
                .heard
                .is_none_or(|(n, t, _, _)| n != self.me || t != term)
            {
                tracing::info!(term, "holding the notifier lease");
                self.dirty = true;
                self.rescan = true;
            }
            self.heard = Some((self.me, term, now, until));
        }
    }

    async fn find_transitions(&mut self) {
        let Ok(Some(config)) = self.replica.config().await else {
            return;
        };
        if self.config_version != Some(config.version) {
            self.config_version = Some(config.version);
            self.rescan = true;
        }
        let stable: BTreeSet<String> = config
            .builders
            .iter()
            .filter(|b| b.is_stable())
            .map(|b| b.name.clone())
            .collect();
        let pairs: Vec<(String, String)> = if std::mem::take(&mut self.rescan) {
            self.changed.clear();
            let views = self.claimer.views().clone();
            let rows = tokio::task::spawn_blocking(move || views.status()).await;
            match rows {
                Ok(Ok(rows)) => rows.into_iter().map(|r| (r.builder, r.branch)).collect(),
                _ => {
                    self.rescan = true;
                    return;
                }
            }
        } else {
            std::mem::take(&mut self.changed).into_iter().collect()
        };
        let pairs: Vec<(String, String)> = pairs
            .into_iter()
            .filter(|(b, _)| stable.contains(b))
            .collect();
        if pairs.is_empty() {
            return;
        }
        let views = self.claimer.views().clone();
        let read = tokio::task::spawn_blocking(move || {
            pairs
                .into_iter()
                .map(|(builder, branch)| {
                    let list = recent_builds(&views, &builder, &branch)?;
                    Ok(((builder, branch), list))
                })
                .collect::<Result<Vec<_>, buildmesh_store::StoreError>>()
        })
        .await;
        let groups = match read {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the builds to look for transitions");
                self.rescan = true;
                return;
            }
            Err(_) => return,
        };
        for ((builder, branch), list) in groups {
            let list: Vec<&BuildView> = list.iter().collect();
            let input: Vec<transitions::Build> = list
                .iter()
                .map(|b| transitions::Build {
                    sha: b.sha.clone(),
                    order: b.announced.millis(),
                    verdict: b.result.result(),
                    settled: b.result.is_settled(),
                })
                .collect();
            let found = transitions::find(&builder, &branch, &input, self.settings.mode);
            // What the list would have been sent had every red been believed: the
            // difference is what confirmation kept from it.
            if list.iter().any(|b| b.result == BuildState::HostFault) {
                let believed: Vec<transitions::Build> = list
                    .iter()
                    .zip(&input)
                    .map(|(b, i)| transitions::Build {
                        verdict: if b.result == BuildState::HostFault {
                            Some(ResultCode::Failure)
                        } else {
                            i.verdict
                        },
                        ..i.clone()
                    })
                    .collect();
                let real: HashSet<Hash> = found.iter().map(Transition::key).collect();
                for t in transitions::find(&builder, &branch, &believed, self.settings.mode) {
                    let key = t.key();
                    if !real.contains(&key) && self.suppressed.insert(key) {
                        tracing::info!(builder = %t.builder, branch = %t.branch, sha = %t.sha, "red not reproduced on another host: not mailed to the list");
                    }
                }
            }
            for t in found {
                tracing::info!(builder = %t.builder, branch = %t.branch, sha = %t.sha, kind = %t.kind, "transition to mail");
                // The holder looks for the culprit at once, while the mail settles.
                if t.kind == transitions::Kind::Broken
                    && t.result == ResultCode::Failure
                    && self.election.holding(Timestamp::now()).is_some()
                    && !self.outbox.knows(&t.key())
                {
                    let _ =
                        self.starts
                            .try_send((t.builder.clone(), t.branch.clone(), t.sha.clone()));
                }
                self.outbox.queue(Alert::Transition(t), Timestamp::now());
            }
        }
    }

    // A worker that entered quarantine gets one mail to its owner per quarantine.
    async fn find_quarantined_workers(&mut self) {
        let Ok(health) = self.claimer.health().await else {
            return;
        };
        if !health.values().any(|h| h.state == "quarantined") {
            return;
        }
        let Ok(nodes) = self.replica.nodes().await else {
            return;
        };
        for n in nodes {
            let (Some(owner), Some(h)) = (n.owner.clone(), health.get(&n.id)) else {
                continue;
            };
            if h.state != "quarantined" || n.revoked {
                continue;
            }
            let alert = Alert::Quarantined {
                name: n.name.clone(),
                id: n.id,
                owner,
                health: Box::new(h.clone()),
            };
            if self.outbox.queue(alert, Timestamp::now()) {
                tracing::info!(worker = %n.name, "worker quarantined: mailing its owner");
            }
        }
    }

    // Workers missing longer than `missing_after` get one mail to their owner per absence (the
    // absence is named by the worker's log head, which every node agrees on).
    async fn find_missing_workers(&mut self) {
        let Some(after) = self.settings.missing_after else {
            return;
        };
        let Ok(nodes) = self.replica.nodes().await else {
            return;
        };
        let now = Timestamp::now();
        for n in nodes {
            let Some(owner) = n.owner.clone() else {
                continue;
            };
            let seen = WorkerSeen {
                live: n.live,
                revoked: n.revoked,
                worker: n.roles.contains(&Role::Worker),
                last_heard: n.last_heard,
            };
            if !outbox::is_missing(seen, after, now) {
                continue;
            }
            let alert = Alert::Missing {
                name: n.name.clone(),
                id: n.id,
                owner,
                records: n.records,
            };
            if self.outbox.queue(alert, now) {
                tracing::info!(worker = %n.name, "worker missing: mailing its owner");
            }
        }
    }

    // Drives the sync round of holder term `term`: starts it if none is under way, and once it
    // ended learns the records it pulled and tells the outbox.
    fn settle(&mut self, term: u64) {
        let done = match &mut self.settling {
            Some((t, rx)) if *t == term => {
                !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
            }
            _ => {
                self.settling = self.replica.sync_all().map(|rx| (term, rx));
                false
            }
        };
        if !done {
            return;
        }
        self.settling = None;
        loop {
            match self.records.try_recv() {
                Ok(record) => {
                    if self.learn(&record) {
                        self.dirty = true;
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    let store = self.store.clone();
                    for r in store
                        .records_of_kind(&RecordKind::NotificationSent)
                        .flatten()
                    {
                        self.learn(&r);
                    }
                    self.dirty = true;
                }
                Err(_) => break,
            }
        }
        self.outbox.synced(term);
        tracing::debug!(term, "new holder synced with its peers");
    }

    fn send_due(&mut self) {
        let now = Timestamp::now();
        let Some(term) = self.election.holding(now) else {
            return;
        };
        // A new holder first pulls what every peer holds beyond it (its predecessor's last
        // NotificationSent records among them), so that it does not mail what was mailed.
        if self.outbox.needs_sync(term) {
            self.settle(term);
        }
        if self.settings.smtp.is_none() {
            let dropped = self.outbox.drop_waiting();
            if dropped > 0 {
                tracing::warn!(
                    waiting = dropped,
                    "holding the notifier lease with no SMTP server configured"
                );
            }
            return;
        }
        for alert in self
            .outbox
            .due(now, Some((term, self.election.held_for(now))))
        {
            let note = match self.culprit_hold(&alert, now) {
                Hold::Wait(until) => {
                    self.outbox.defer(alert.key(), until);
                    continue;
                }
                Hold::Drop => {
                    tracing::warn!(key = %alert.key().short(), "the culprit search never named a culprit: no follow-up");
                    self.outbox.recorded(alert.key());
                    continue;
                }
                Hold::Send(note) => note,
            };
            let settings = self.settings.clone();
            let replica = self.replica.clone();
            let claimer = self.claimer.clone();
            let tx = self.sent_tx.clone();
            let me = self.me;
            let hint = self.api_hint.clone();
            let stop = self.cancel.clone();
            tokio::spawn(
                async move {
                // A node that stops sends nothing more: the lease is gone with it, and a mail
                // its server did not take yet is the next holder's to send.
                let outcome = tokio::select! {
                    _ = stop.cancelled() => return,
                    o = mail::send(&settings, &alert, note.as_deref(), &claimer, &replica, &hint) => o,
                };
                let t = alert.as_transition();
                if outcome.is_ok() {
                    let body = Body::NotificationSent(NotificationSent {
                        transition: alert.key(),
                        builder: t.builder.clone(),
                        branch: t.branch.clone(),
                        sha: t.sha.clone(),
                        message_id: alert.message_id(),
                        to: alert.recipients(&settings.to),
                        term,
                    });
                    if let Err(e) = replica.author(body).await {
                        tracing::error!(error = %e, "mail sent but not recorded");
                    }
                    tracing::info!(builder = %t.builder, sha = %t.sha, by = %me.short(), "mailed");
                }
                let _ = tx.send((alert.key(), outcome)).await;
                }
                .in_current_span(),
            );
        }
    }

    // Whether a due mail goes out now: a red waits a while for its culprit search (asking the
    // bisector to start it), then goes out naming the culprit, or the range with a follow-up
    // queued; a follow-up waits for its culprit.
    fn culprit_hold(&mut self, alert: &Alert, now: Timestamp) -> Hold {
        use crate::bisector::Lookup;
        let key = alert.key();
        match alert {
            Alert::Transition(t)
                if t.kind == transitions::Kind::Broken && t.result == ResultCode::Failure =>
            {
                let red = (t.builder.clone(), t.branch.clone(), t.sha.clone());
                let lookup = self.board.lookup(&red);
                if let Lookup::Search(v) = &lookup
                    && v.culprit.is_some()
                {
                    return Hold::Send(Some(v.clone()));
                }
                if matches!(lookup, Lookup::NoSearch) {
                    return Hold::Send(None);
                }
                let wait = self
                    .settings
                    .culprit_wait
                    .or_else(|| self.board.wait(&red))
                    .unwrap_or(crate::config::MIN_CULPRIT_WAIT);
                let since = *self.culprit_since.entry(key).or_insert(now);
                let waited = now.since(since);
                // Whether a search runs is known once the holder read the range: the mail
                // waits for that (a mirror's first clone may take a while) at least.
                let undecided = matches!(lookup, Lookup::Undecided);
                if waited < wait || (undecided && waited < wait.max(DECIDE_WAIT)) {
                    if undecided {
                        let _ = self.starts.try_send(red);
                    }
                    return Hold::Wait(now.plus(Duration::from_millis(250)));
                }
                match lookup {
                    Lookup::Search(v) => {
                        // The range now, the culprit in the same thread once it is found.
                        self.outbox.queue(Alert::Culprit { red: t.clone() }, now);
                        Hold::Send(Some(v))
                    }
                    _ => Hold::Send(None),
                }
            }
            Alert::Culprit { red } => {
                let found = (red.builder.clone(), red.branch.clone(), red.sha.clone());
                match self.board.lookup(&found) {
                    Lookup::Search(v) if v.culprit.is_some() => Hold::Send(Some(v)),
                    _ => {
                        let since = *self.culprit_since.entry(key).or_insert(now);
                        if now.since(since) > FOLLOW_UP_WAIT {
                            Hold::Drop
                        } else {
                            Hold::Wait(now.plus(Duration::from_secs(1)))
                        }
                    }
                }
            }
            _ => Hold::Send(None),
        }
    }

    async fn on_sent(&mut self, key: Hash, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.sent_here += 1;
                self.outbox.sent(key);
            }
            Err(e) => {
                if let Some((tries, backoff)) = self.outbox.failed(key, Timestamp::now()) {
                    tracing::warn!(error = %e, tries, retry_in = ?backoff, "mail not accepted; will retry");
                }
            }
        }
    }

    fn view(&self) -> NotifierView {
        let now = Timestamp::now();
        let (holder, term, expires) = match self.election.holding(now) {
            Some(term) => {
                let until = match self.election.standing() {
                    Standing::Holder { until, .. } => Some(*until),
                    _ => None,
                };
                (Some(self.me), term, until)
            }
            None => match self.heard {
                Some((n, t, _, until)) if now < until.plus(self.lease) => (Some(n), t, Some(until)),
                _ => (None, self.election.term(), None),
            },
        };
        NotifierView {
            holder,
            term,
            lease_expires: expires,
            holding: holder == Some(self.me),
            voters: self.election.voters().iter().copied().collect(),
            sent_here: self.sent_here,
            waiting: self.outbox.waiting(),
            suppressed: self.suppressed.len() as u64,
        }
    }
}
