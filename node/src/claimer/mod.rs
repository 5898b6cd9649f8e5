//! The claimer: drives [`buildmesh_protocol::claims::Claims`] with what the node learns, and
//! carries out its decisions — authors claims, starts builds on the executor, cancels the ones
//! it lost, authors their results. It also answers the API's questions about jobs.
//!
//! Jobs come from commits: every entitled `CommitSeen` record, crossed with the builder
//! configuration in force, gives one job per matching builder ([`buildmesh_protocol::jobs`]).
//! The machine derives confirmation and re-validation jobs itself
//! ([`buildmesh_protocol::health`]); the claimer replays what the store holds of them, shows
//! every worker's health, and pauses claiming while this worker's self-checks fail
//! ([`crate::selfcheck`]).
//!
//! It also writes the read model ([`crate::readmodel`]): after each record and tick, the view
//! of every job the machine says changed (`BuildView`, built from the store with its attempts
//! and confirmation), the retention date of its logs, and it lets the machine go of finished
//! jobs beyond its window. One module because the driver, the views and the window turn on the
//! same question — which jobs just changed — and the same store reads; the view-building part
//! (`view`, `confirmation_view`) is the piece to move out next if it grows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use buildmesh_protocol::builders::BuilderConfig;
use buildmesh_protocol::claims::{Action, ClaimSettings, Claims, Confirmation, JobSpec, JobState};
use buildmesh_protocol::docs::{DocKind, RevocationReason, Role};
use buildmesh_protocol::entitle::{self, Refusal};
use buildmesh_protocol::health::{HealthView, Incident};
use buildmesh_protocol::jobs;
use buildmesh_protocol::record::{
    Body, BuildResult, BuildState, Claim, CommitSeen, JobKey, Purpose, Record,
};
use buildmesh_protocol::vv::VersionVector;
use buildmesh_protocol::wire::{Progress, Signal};
use buildmesh_protocol::{Hash, NodeId, Timestamp};
use buildmesh_store::Store;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::NodeError;
use crate::executor::{self, BuildSpec, ExecutorConfig};
use crate::liveness::Membership;
use crate::readmodel::{ReadModel, Stored};
use crate::replica::ReplicaClient;
use crate::selfcheck::SelfCheck;

mod checkpoint;

/// How often a worker checks itself (free disk, its check command).
const SELF_CHECK_EVERY: Duration = Duration::from_secs(10);

/// Finished jobs the claim machine holds, beyond the open ones: older ones live in the views
/// on disk (see `claims::let_go`). Two waves of a CPython-sized fleet.
const KEEP_FINISHED: usize = 2_000;

/// The most records taken in between two ticks of the machine.
const MAX_RECORDS_PER_TICK: usize = 256;

/// Commits remembered for deriving jobs when the builder configuration changes: a new builder
/// builds the newest of them (collapsing skips the rest), not years of history.
const KEEP_COMMITS: usize = 10_000;

/// What this node's worker is doing, for its heartbeats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Builds running.
    pub running: u32,
    /// Builds it may run at once (0 while paused).
    pub capacity: u32,
    /// Why it claims nothing now: a self-check failed.
    pub paused: Option<String>,
}

pub use crate::readmodel::{AttemptView, BuildView, ConfirmationView};

pub(crate) enum Query {
    LiveWorkers {
        reply: oneshot::Sender<Vec<NodeId>>,
    },
    Health {
        reply: oneshot::Sender<BTreeMap<NodeId, HealthView>>,
    },
    IdleWorkers {
        builder: String,
        reply: oneshot::Sender<Vec<NodeId>>,
    },
    MayCancel {
        job: Hash,
        caller: NodeId,
        at: Timestamp,
        reply: oneshot::Sender<Result<(), CancelRefused>>,
    },
}

/// Why a build cannot be cancelled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CancelRefused {
    /// The caller is neither a maintainer nor the key whose request started it.
    #[error(
        "{0} may not cancel it: only a maintainer or the key whose request started the build may"
    )]
    NotEntitled(NodeId),
    /// It has ended (its state), or this node let go of it long ago.
    #[error("the build already ended: {0}")]
    Ended(&'static str),
}

/// A handle on the claimer.
#[derive(Clone, Debug)]
pub struct ClaimerClient {
    tx: mpsc::Sender<Query>,
    stats: Arc<ClaimerStats>,
    views: Arc<ReadModel>,
}

/// The claimer's counters (`/metrics`).
#[derive(Debug, Default)]
pub struct ClaimerStats {
    /// Confirmation jobs opened for reds.
    pub confirmations: AtomicU64,
    /// Workers that entered quarantine, as this node saw it.
    pub quarantines: AtomicU64,
    /// Jobs the claim machine holds in memory.
    pub jobs_held: AtomicU64,
    /// 1 once the claimer has read the history at start and its views are in order.
    pub ready: AtomicU64,
    /// Records the claimer learnt at its start: every one held without a checkpoint, only
    /// those after it with one.
    pub start_records: AtomicU64,
    /// How long its start took, in milliseconds.
    pub start_ms: AtomicU64,
}

impl ClaimerClient {
    /// The claimer's counters.
    pub fn stats(&self) -> &ClaimerStats {
        &self.stats
    }

    /// Waits until the claimer has stopped (and handed back its builds).
    pub async fn stopped(&self) {
        self.tx.closed().await;
    }

    /// The workers the claimer counts as live (its own view, which ranks jobs).
    pub async fn live_workers(&self) -> Result<Vec<NodeId>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Query::LiveWorkers { reply })
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// The live workers that could build on `builder` now: labels met, a slot free, not
    /// quarantined.
    pub async fn idle_workers(&self, builder: &str) -> Result<Vec<NodeId>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Query::IdleWorkers {
                builder: builder.to_string(),
                reply,
            })
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Whether `caller`, asking at `at`, may stop `job` now: it is still pending or running, and
    /// the caller is a maintainer or the key whose request started it. `Err` says why not.
    pub async fn may_cancel(
        &self,
        job: Hash,
        caller: NodeId,
        at: Timestamp,
    ) -> Result<Result<(), CancelRefused>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Query::MayCancel {
                job,
                caller,
                at,
                reply,
            })
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Every worker's health (workers with no result yet are absent).
    pub async fn health(&self) -> Result<BTreeMap<NodeId, HealthView>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Query::Health { reply })
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// The views of the jobs, as the claimer keeps them.
    pub fn views(&self) -> &Arc<ReadModel> {
        &self.views
    }

    /// Every job known, newest announcement first (every one: for small meshes and tests;
    /// the API reads [`ClaimerClient::views`] by builder, branch or commit).
    pub async fn builds(&self) -> Result<Vec<BuildView>, NodeError> {
        let views = self.views.clone();
        let all = tokio::task::spawn_blocking(move || {
            views.builds(buildmesh_store::Listing::All, |_| true, usize::MAX)
        })
        .await
        .map_err(|_| NodeError::Stopped)?;
        Ok(all?)
    }
}

struct Running {
    cancel: CancellationToken,
}

/// A counted `Cancel` record waiting for its job.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct PendingCancel {
    caller: NodeId,
    asked: Timestamp,
    author: NodeId,
    record: Hash,
}

/// Rebuilds remembered for deriving again when the configuration changes.
const KEEP_REBUILDS: usize = 1_000;

/// Cancels held for jobs not known yet: cancels of made-up jobs must not grow memory.
const MAX_PENDING_CANCELS: usize = 4_096;

/// What the claimer needs.
pub(crate) struct ClaimerParts {
    pub me: NodeId,
    pub name: String,
    pub capacity: u32,
    pub settings: ClaimSettings,
    /// This node's configured heartbeat interval: a peer that beats less often is live for
    /// longer after each heartbeat.
    pub heartbeat_interval: Duration,
    pub executor: ExecutorConfig,
    pub store: Arc<Store>,
    pub replica: ReplicaClient,
    pub records: broadcast::Receiver<Arc<Record>>,
    pub signals: broadcast::Receiver<Signal>,
    pub load: watch::Sender<Load>,
    pub membership: watch::Receiver<Membership>,
    pub selfcheck: SelfCheck,
    pub views: Arc<ReadModel>,
    pub cancel: CancellationToken,
}

/// The claimer task.
pub(crate) struct Claimer {
    me: NodeId,
    name: String,
    heartbeat_interval: Duration,
    machine: Claims,
    executor: Arc<ExecutorConfig>,
    store: Arc<Store>,
    replica: ReplicaClient,
    records: broadcast::Receiver<Arc<Record>>,
    signals: broadcast::Receiver<Signal>,
    queries: mpsc::Receiver<Query>,
    load: watch::Sender<Load>,
    membership: watch::Receiver<Membership>,
    config: Option<BuilderConfig>,
    // Commits seen, with the time of their first announcement, for deriving jobs when the
    // configuration changes.
    commits: BTreeMap<(String, String, String), Timestamp>,
    // Commits a maintainer asked for by id: built even when their branch does not reach them.
    vouched: BTreeSet<(String, String, String)>,
    // The callers whose `submit` announced a commit: they may cancel its builds.
    requesters: HashMap<(String, String, String), Vec<NodeId>>,
    // Counted rebuilds (with when they were asked), derived again when the configuration
    // changes, as commits are.
    rebuilds: Vec<(buildmesh_protocol::record::Rebuild, Timestamp)>,
    // Cancels of jobs not known yet (records of different authors arrive in any order), applied
    // when the job is derived.
    cancels: HashMap<Hash, Vec<PendingCancel>>,
    // Culprit searches (by their `Bisect` record's hash), and steps that arrived before their
    // search, with their time.
    searches: HashMap<Hash, buildmesh_protocol::record::Bisect>,
    early_steps: HashMap<Hash, Vec<(buildmesh_protocol::record::Probes, Timestamp)>>,
    running: HashMap<(Hash, u32), Running>,
    // Keys revoked as compromised: nothing they claimed or reported counts, in any view.
    distrusted: BTreeSet<NodeId>,
    done_tx: mpsc::Sender<(Hash, u32, bool)>,
    done_rx: mpsc::Receiver<(Hash, u32, bool)>,
    cancel: CancellationToken,
    stats: Arc<ClaimerStats>,
    // The worker's checks of itself, the slots it has when they pass, and why it is paused.
    selfcheck: Arc<SelfCheck>,
    capacity: u32,
    paused: Option<String>,
    checks_tx: mpsc::Sender<Option<String>>,
    checks_rx: mpsc::Receiver<Option<String>>,
    // The views of the jobs (written as jobs change), and whether the stored ones can be
    // trusted where their state matches (left in order at the last stop).
    views: Arc<ReadModel>,
    stored: Stored,
    // When the machine last let go of finished jobs.
    last_let_go: Option<std::time::Instant>,
    rebuilding: bool,
    // How far each author's log was learnt (see `checkpoint`).
    learnt: VersionVector,
}

impl Claimer {
    pub(crate) fn new(parts: ClaimerParts) -> (Self, ClaimerClient) {
        let (tx, queries) = mpsc::channel(64);
        let (done_tx, done_rx) = mpsc::channel(64);
        let machine = Claims::new(parts.me, parts.settings, parts.capacity);
        let (checks_tx, checks_rx) = mpsc::channel(1);
        let claimer = Claimer {
            me: parts.me,
            name: parts.name,
            heartbeat_interval: parts.heartbeat_interval,
            machine,
            executor: Arc::new(parts.executor),
            store: parts.store,
            replica: parts.replica,
            records: parts.records,
            signals: parts.signals,
            queries,
            load: parts.load,
            membership: parts.membership,
            config: None,
            commits: BTreeMap::new(),
            vouched: BTreeSet::new(),
            requesters: HashMap::new(),
            rebuilds: Vec::new(),
            cancels: HashMap::new(),
            searches: HashMap::new(),
            early_steps: HashMap::new(),
            running: HashMap::new(),
            distrusted: BTreeSet::new(),
            done_tx,
            done_rx,
            cancel: parts.cancel,
            stats: Arc::new(ClaimerStats::default()),
            selfcheck: Arc::new(parts.selfcheck),
            capacity: parts.capacity,
            paused: None,
            checks_tx,
            checks_rx,
            views: parts.views.clone(),
            stored: Stored::Stale,
            last_let_go: None,
            rebuilding: false,
            learnt: VersionVector::default(),
        };
        let stats = claimer.stats.clone();
        let client = ClaimerClient {
            tx,
            stats,
            views: parts.views,
        };
        (claimer, client)
    }

    pub(crate) async fn run(mut self) {
        let at = std::time::Instant::now();
        self.stored = match self.views.open() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the build views; writing every one again");
                Stored::Cleared
            }
        };
        // Views of another layout are written again from every record; otherwise the
        // checkpoint, if any, spares the records learnt before it.
        let resumed = if self.stored == Stored::Cleared {
            None
        } else {
            self.resume()
        };
        self.refresh_workers();
        let config = self.replica.config().await.ok().flatten();
        let config_version = config.as_ref().map(|c| c.version);
        if let Some(c) = config {
            self.set_config(c);
        }
        if resumed.is_some_and(|v| v != config_version) {
            // A configuration signed while this node was down: jobs of the commits it knew.
            self.derive_again();
        }
        self.rebuilding = resumed.is_none();
        let learnt = self.learn_stored();
        self.rebuilding = false;
        self.write_views();
        self.let_go();
        self.save_checkpoint();
        self.tidy_work_dir();
        self.stored = Stored::Stale;
        self.stats
            .start_records
            .store(learnt as u64, Ordering::Relaxed);
        self.stats
            .start_ms
            .store(at.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.stats.ready.store(1, Ordering::Relaxed);
        tracing::info!(
            records = learnt,
            from_checkpoint = resumed.is_some(),
            jobs = self.machine.job_count(),
            took = ?at.elapsed(),
            "jobs and build views up to date"
        );
        self.publish_load();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(SELF_CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checkpoint = tokio::time::interval_at(
            tokio::time::Instant::now() + checkpoint::CHECKPOINT_EVERY,
            checkpoint::CHECKPOINT_EVERY,
        );
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = check.tick(), if self.capacity > 0 => self.start_self_check(),
                _ = checkpoint.tick() => self.save_checkpoint(),
                Some(paused) = self.checks_rx.recv() => self.on_self_check(paused),
                r = self.records.recv() => match r {
                    Ok(record) => {
                        self.on_record(&record).await;
                        self.learnt.raise(record.author_id(), record.seq());
                        // The records already waiting are taken in before the machine ticks:
                        // a tick walks every job held, and a busy mesh delivers records in
                        // bursts.
                        if !self.take_waiting_records().await {
                            self.rebuild();
                            continue;
                        }
                        self.tick().await;
                        self.write_views();
                        self.let_go();
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "claimer fell behind the record feed; rebuilding from the store");
                        self.rebuild();
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                s = self.signals.recv() => if let Ok(signal) = s {
                    if let Signal::Heartbeat(h) = &signal
                        && h.node != self.me
                        && !self.machine.has_worker(&h.node)
                    {
                        // A worker admitted since the last refresh: learn its labels now.
                        self.refresh_workers();
                    }
                    self.on_signal(signal);
                },
                Some(q) = self.queries.recv() => self.on_query(q),
                Some((job, attempt, reported)) = self.done_rx.recv() => {
                    self.running.remove(&(job, attempt));
                    if !reported {
                        // No result record will free the slot: free it here, and let the
                        // claim lapse so that another worker runs the job.
                        self.machine.stopped(job, attempt, Timestamp::now());
                        self.publish_load();
                    }
                }
                _ = tick.tick() => {
                    self.tick().await;
                    self.write_views();
                    self.let_go();
                }
                Ok(()) = self.membership.changed() => self.refresh_workers(),
            }
        }
        // Hand running builds back: cancel them and wait for their Cancelled results, which
        // reopen the jobs at once elsewhere.
        for r in self.running.values() {
            r.cancel.cancel();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.done_rx.recv()).await {
                Ok(Some((job, attempt, _))) => {
                    self.running.remove(&(job, attempt));
                }
                _ => break,
            }
        }
        // Whatever records came in meanwhile were stored: the views are in order as far as
        // the machine knows, and say so for the next start, which goes on from here.
        self.write_views();
        self.save_checkpoint();
        if let Err(e) = self.views.close() {
            tracing::warn!(error = %e, "cannot mark the build views in order");
        }
        tracing::debug!("claimer stopped");
    }

    fn set_config(&mut self, c: BuilderConfig) {
        self.machine.set_health_settings(c.health);
        self.config = Some(c);
    }

    // A worker deletes the workspaces and clones no builder of the configuration in force
    // uses (at start, and when a newer configuration comes into force; never for one met
    // while going through the history).
    fn tidy_work_dir(&self) {
        let (Some(config), true) = (self.config.clone(), self.capacity > 0) else {
            return;
        };
        let executor = self.executor.clone();
        tokio::spawn(
            async move {
                executor::tidy(&executor, &config).await;
            }
            .in_current_span(),
        );
    }

    fn publish_load(&self) {
        let _ = self.load.send(Load {
            running: self.machine.running().count() as u32,
            capacity: self.machine.capacity(),
            paused: self.paused.clone(),
        });
    }

    // Runs the self-checks off the loop (a check command may take a while); the answer comes
    // back on `checks_rx`.
    fn start_self_check(&self) {
        let check = self.selfcheck.clone();
        let tx = self.checks_tx.clone();
        tokio::spawn(
            async move {
                let _ = tx.try_send(check.run().await);
            }
            .in_current_span(),
        );
    }

    fn on_self_check(&mut self, paused: Option<String>) {
        if paused == self.paused {
            return;
        }
        match &paused {
            Some(why) => {
                tracing::warn!(reason = %why, "self-check failed: claiming nothing until it passes")
            }
            None => tracing::info!("self-checks pass again: claiming"),
        }
        self.machine
            .set_capacity(if paused.is_some() { 0 } else { self.capacity });
        self.paused = paused;
        self.publish_load();
    }

    // Workers and their labels, and keys revoked as compromised, from the published trust.
    fn refresh_workers(&mut self) {
        // Keys newly revoked as compromised: the older jobs they took part in are learnt again
        // first, so that what they did stops counting there too.
        let compromised: Vec<NodeId> = {
            let membership = self.membership.borrow();
            membership
                .trust
                .admissions()
                .filter(|a| {
                    membership
                        .trust
                        .revocation(&a.node)
                        .is_some_and(|r| r.reason == RevocationReason::Compromised)
                        && !self.distrusted.contains(&a.node)
                })
                .map(|a| a.node)
                .collect()
        };
        for node in &compromised {
            self.relearn_jobs_of(node);
        }
        let membership = self.membership.borrow_and_update();
        let trust = &membership.trust;
        for a in trust.admissions() {
            let revocation = trust.revocation(&a.node);
            if revocation.is_some_and(|r| r.reason == RevocationReason::Compromised)
                && self.distrusted.insert(a.node)
            {
                tracing::warn!(node = %a.node, name = %a.name, "revoked as compromised: its claims and results no longer count; jobs it built open again");
                self.machine.forget(&a.node, Timestamp::now());
            }
            if revocation.is_some() || !a.roles.contains(&Role::Worker) {
                self.machine.remove_worker(&a.node);
            } else {
                self.machine.worker(a.node, a.labels.clone());
            }
        }
    }

    // Rebuilds the machine's knowledge from every record of the store (after missing
    // records from the feed).
    fn rebuild(&mut self) {
        self.rebuilding = true;
        self.learnt = VersionVector::default();
        let n = self.learn_stored();
        self.rebuilding = false;
        tracing::debug!(
            records = n,
            jobs = self.machine.job_count(),
            "jobs rebuilt from the store"
        );
    }

    async fn on_record(&mut self, record: &Record) {
        if let Ok(Body::Publish(p)) = record.body()
            && p.doc.kind == DocKind::BuilderConfig
        {
            if let Ok(Some(c)) = self.replica.config().await {
                let newer = self
                    .config
                    .as_ref()
                    .is_none_or(|old| old.version < c.version);
                if newer {
                    tracing::info!(
                        version = c.version,
                        builders = c.builders.len(),
                        "builder configuration in force"
                    );
                    self.set_config(c);
                    self.derive_again();
                    self.tidy_work_dir();
                }
            }
            return;
        }
        self.learn(record);
    }

    // The jobs of every commit and rebuild remembered, under the configuration in force.
    fn derive_again(&mut self) {
        let commits: Vec<_> = self.commits.iter().map(|(k, t)| (k.clone(), *t)).collect();
        for ((repo, branch, sha), t) in commits {
            self.derive_jobs(&repo, &branch, &sha, t);
        }
        for (r, t) in self.rebuilds.clone() {
            self.derive_rebuild(&r, t);
        }
    }

    fn learn(&mut self, record: &Record) {
        let now = Timestamp::now();
        let author = record.author_id();
        match record.body() {
            Ok(Body::CommitSeen(c)) => {
                if self.distrusted.contains(&author) {
                    return;
                }
                // Only an announcer's announcements, or ones made on an entitled caller's
                // request, make jobs.
                let entitled = entitle::commit_seen(
                    &self.membership.borrow().trust,
                    &author,
                    record.envelope.time,
                    &c,
                );
                if let Err(refusal) = entitled {
                    self.replica
                        .misbehaved(author, refusal.reason(), record.hash);
                    return;
                }
                if entitle::vouched_by_maintainer(
                    &self.membership.borrow().trust,
                    &author,
                    record.envelope.time,
                    &c,
                ) {
                    self.vouched
                        .insert((c.repo.clone(), c.branch.clone(), c.sha.clone()));
                }
                let caller = c
                    .request
                    .as_ref()
                    .and_then(|r| r.verify().ok())
                    .map(|r| r.key);
                let CommitSeen {
                    repo, branch, sha, ..
                } = c;
                let key = (repo.clone(), branch.clone(), sha.clone());
                if let Some(caller) = caller {
                    let by = self.requesters.entry(key.clone()).or_default();
                    if !by.contains(&caller) {
                        by.push(caller);
                    }
                }
                let t = record.envelope.time;
                let first = *self.commits.entry(key).or_insert(t);
                if self.commits.len() > KEEP_COMMITS + KEEP_COMMITS / 4 {
                    let mut times: Vec<Timestamp> = self.commits.values().copied().collect();
                    times.sort_unstable();
                    let cut = times[times.len() - KEEP_COMMITS];
                    self.commits.retain(|_, t| *t >= cut);
                    let commits = &self.commits;
                    self.requesters.retain(|k, _| commits.contains_key(k));
                }
                self.derive_jobs(&repo, &branch, &sha, first);
            }
            // A claim or result of a job the machine let go of changes nothing it holds (and
            // would only wait in its buffer for a job that is not coming back).
            Ok(Body::Claim(Claim { job, .. }))
                if !self.machine.knows(&job) && self.let_go_of(&job) => {}
            Ok(Body::BuildResult(r)) if !self.machine.knows(&r.job) && self.let_go_of(&r.job) => {}
            Ok(Body::Claim(Claim {
                job, attempt, key, ..
            })) if !self.distrusted.contains(&author) => {
                self.note_non_worker(record);
                self.machine.claim_keyed(author, &key, job, attempt, now);
                self.replay_new_jobs();
                self.report_misbehaviour();
            }
            Ok(Body::BuildResult(r)) if !self.distrusted.contains(&author) => {
                self.note_non_worker(record);
                self.machine.result(author, r.job, r.attempt, r.result, now);
                self.report_misbehaviour();
            }
            Ok(Body::Rebuild(r)) if !self.distrusted.contains(&author) => {
                let counted =
                    entitle::rebuild(&self.membership.borrow().trust, record.envelope.time, &r);
                match counted {
                    Ok(caller) => {
                        tracing::info!(caller = %caller, sha = %r.sha, branch = %r.branch, builders = ?r.builders, "rebuild asked for");
                        self.derive_rebuild(&r, record.envelope.time);
                        self.rebuilds.push((r, record.envelope.time));
                        if self.rebuilds.len() > KEEP_REBUILDS + KEEP_REBUILDS / 4 {
                            self.rebuilds.drain(..KEEP_REBUILDS / 4);
                        }
                    }
                    Err(refusal) => self
                        .replica
                        .misbehaved(author, refusal.reason(), record.hash),
                }
            }
            Ok(Body::Bisect(b)) if !self.distrusted.contains(&author) => {
                let counted = entitle::bisect(
                    &self.membership.borrow().trust,
                    &author,
                    record.envelope.time,
                    &b,
                );
                match counted {
                    Ok(()) => {
                        let held = self.early_steps.remove(&record.hash).unwrap_or_default();
                        self.searches.insert(record.hash, b);
                        for (p, t) in held {
                            self.derive_probes(&p, t);
                        }
                    }
                    Err(refusal) => self
                        .replica
                        .misbehaved(author, refusal.reason(), record.hash),
                }
            }
            Ok(Body::Probes(p)) if !self.distrusted.contains(&author) => {
                let notifier = self
                    .membership
                    .borrow()
                    .trust
                    .may_act(&author, Role::Notifier, record.envelope.time)
                    .is_ok();
                if !notifier {
                    self.replica
                        .misbehaved(author, Refusal::NotNotifier.reason(), record.hash);
                } else if self.searches.contains_key(&p.bisection) {
                    self.derive_probes(&p, record.envelope.time);
                } else if self.early_steps.len() < MAX_PENDING_CANCELS {
                    self.early_steps
                        .entry(p.bisection)
                        .or_default()
                        .push((p, record.envelope.time));
                }
            }
            Ok(Body::Cancel(c)) if !self.distrusted.contains(&author) => {
                let counted =
                    entitle::cancel(&self.membership.borrow().trust, record.envelope.time, &c);
                match counted {
                    Ok((caller, asked)) => {
                        let pending = PendingCancel {
                            caller,
                            asked,
                            author,
                            record: record.hash,
                        };
                        if self.machine.knows(&c.job) {
                            self.judge_cancel(c.job, pending);
                        } else if !self.let_go_of(&c.job)
                            && self.cancels.values().map(Vec::len).sum::<usize>()
                                < MAX_PENDING_CANCELS
                        {
                            self.cancels.entry(c.job).or_default().push(pending);
                        }
                    }
                    Err(refusal) => self
                        .replica
                        .misbehaved(author, refusal.reason(), record.hash),
                }
            }
            Ok(Body::Publish(p)) if p.doc.kind == DocKind::Release => {
                match self.membership.borrow().trust.check_release(&p.doc) {
                    Ok(r) => {
                        tracing::info!(worker = %r.subject, episode = r.episode, "a maintainer released a quarantined worker");
                        self.machine.release(r.subject, r.episode);
                    }
                    Err(e) => tracing::warn!(error = %e, "a release that does not verify"),
                }
            }
            Ok(Body::Publish(p)) if p.doc.kind == DocKind::BuilderConfig => {
                if let Ok(c) = p.doc.body::<BuilderConfig>()
                    && self
                        .config
                        .as_ref()
                        .is_none_or(|old| old.version < c.version)
                {
                    // Only trusted configurations reach the store through the replica's gate,
                    // but a newer one may still be refused there: ask the replica on the
                    // live path; at rebuild, the newest stored one is the one in force.
                    self.set_config(c);
                }
            }
            _ => {}
        }
    }

    // A claim or result from a key without the worker role never counts (the machine knows
    // only workers); its author is told about.
    fn note_non_worker(&self, record: &Record) {
        let trust = &self.membership.borrow().trust;
        if trust
            .may_act(&record.author_id(), Role::Worker, record.envelope.time)
            .is_err()
        {
            self.replica
                .misbehaved(record.author_id(), Refusal::NotWorker.reason(), record.hash);
        }
    }

    // Claims and results the machine found can never count: their authors are told about.
    fn report_misbehaviour(&mut self) {
        for (author, job, attempt, refusal) in self.machine.misbehaviour() {
            let mut what = job.0.to_vec();
            what.extend_from_slice(&attempt.to_be_bytes());
            what.extend_from_slice(refusal.reason().as_bytes());
            self.replica
                .misbehaved(author, refusal.reason(), Hash::of(&what));
        }
    }

    fn derive_jobs(&mut self, repo: &str, branch: &str, sha: &str, announced: Timestamp) {
        let Some(config) = &self.config else {
            return;
        };
        let specs = jobs::derive(config, repo, branch, sha, announced);
        self.add_jobs(specs, announced);
    }

    // Jobs derived from a record dated `at`, those the machine does not hold yet.
    fn add_jobs(&mut self, specs: Vec<JobSpec>, at: Timestamp) {
        let now = Timestamp::now();
        for s in specs {
            // Not at a rebuild: the machine then learns every job again, letting go of the
            // finished ones as it goes.
            if !self.machine.knows(&s.id) && (self.rebuilding || !self.let_go_of(&s.id)) {
                // Claims and results of this job already stored (a rebuild, or records that
                // arrived before the configuration) are replayed by the machine itself.
                let id = s.id;
                self.replay(&id, now);
                // Old news (a node back from a partition, or a restart) waits a moment before
                // anyone claims it.
                self.machine.job(s, jobs::opens_at(at, now));
                self.replay_new_jobs();
            }
        }
        self.apply_cancels();
    }

    fn derive_rebuild(&mut self, r: &buildmesh_protocol::record::Rebuild, asked: Timestamp) {
        let Some(config) = &self.config else {
            return;
        };
        let specs = jobs::rebuild(config, r, asked);
        self.add_jobs(specs, asked);
    }

    // The probe jobs of one step of a known search.
    fn derive_probes(&mut self, p: &buildmesh_protocol::record::Probes, at: Timestamp) {
        let (Some(config), Some(search)) = (&self.config, self.searches.get(&p.bisection)) else {
            return;
        };
        let specs = jobs::probes(config, search, p.bisection, &p.probes, at);
        self.add_jobs(specs, at);
    }

    // Whether a counted cancel's caller may stop `job` (a maintainer, or whoever started it),
    // and if so stops it; an unentitled one marks the node that wrote it.
    fn judge_cancel(&mut self, job: Hash, c: PendingCancel) {
        let Some(spec) = self.machine.spec(&job) else {
            return;
        };
        let (builder, sha) = (spec.key.builder.clone(), spec.key.sha.clone());
        let verdict = entitle::may_cancel(
            &self.membership.borrow().trust,
            &c.caller,
            c.asked,
            &self.starters(&job),
        );
        match verdict {
            Ok(()) => {
                tracing::info!(job = %job.short(), builder = %builder, sha = %sha, caller = %c.caller, "build cancelled");
                self.machine.cancel(&job);
            }
            Err(refusal) => self
                .replica
                .misbehaved(c.author, refusal.reason(), c.record),
        }
    }

    // The keys whose request started `job`: a rebuild's caller, or the callers whose `submit`
    // announced an ordinary build's commit.
    fn starters(&self, job: &Hash) -> Vec<NodeId> {
        let Some(k) = self.machine.spec(job).map(|s| &s.key) else {
            return Vec::new();
        };
        match k.purpose {
            Purpose::Rebuild { by, .. } => vec![by],
            Purpose::Build => self
                .requesters
                .get(&(k.repo.clone(), k.branch.clone(), k.sha.clone()))
                .cloned()
                .unwrap_or_default(),
            Purpose::Confirm { .. } | Purpose::Revalidate { .. } | Purpose::Probe { .. } => {
                Vec::new()
            }
        }
    }

    // Cancels held for jobs that are known now.
    fn apply_cancels(&mut self) {
        if self.cancels.is_empty() {
            return;
        }
        let known: Vec<Hash> = self
            .cancels
            .keys()
            .filter(|j| self.machine.knows(j))
            .copied()
            .collect();
        for job in known {
            for c in self.cancels.remove(&job).unwrap_or_default() {
                self.judge_cancel(job, c);
            }
        }
    }

    // Feeds the machine the stored claims and results of `job`; those of a job it does not
    // know yet it holds until the job is known.
    fn replay(&mut self, job: &Hash, now: Timestamp) {
        for (_, rref) in self.store.claims_for_job(job).unwrap_or_default() {
            if self.distrusted.contains(&rref.author) {
                continue;
            }
            if let Ok(Some(r)) = self.store.record(&rref.author, rref.seq)
                && let Ok(Body::Claim(c)) = r.body()
            {
                self.machine.claim(r.author_id(), c.job, c.attempt, now);
            }
        }
        for rref in self.store.results_for_job(job).unwrap_or_default() {
            if self.distrusted.contains(&rref.author) {
                continue;
            }
            if let Ok(Some(r)) = self.store.record(&rref.author, rref.seq)
                && let Ok(Body::BuildResult(b)) = r.body()
            {
                self.machine
                    .result(r.author_id(), b.job, b.attempt, b.result, now);
            }
        }
    }

    // Jobs the machine derived (confirmations, re-validations): what the store holds of them
    // counts at once, whatever order it came in.
    fn replay_new_jobs(&mut self) {
        let now = Timestamp::now();
        loop {
            let new = self.machine.take_new_jobs();
            if new.is_empty() {
                break;
            }
            for id in new {
                if let Some(spec) = self.machine.spec(&id) {
                    tracing::info!(job = %id.short(), builder = %spec.key.builder, sha = %spec.key.sha, purpose = ?spec.key.purpose, "derived a job");
                    if matches!(spec.key.purpose, Purpose::Confirm { .. }) {
                        self.stats.confirmations.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.replay(&id, now);
            }
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        let now = Timestamp::now();
        match signal {
            Signal::Heartbeat(h) => {
                let window = self.machine.settings().liveness_window;
                self.machine
                    .live_for(h.node, h.live_for(self.heartbeat_interval, window));
                self.machine.heartbeat(h.node, h.running, h.capacity, now);
                let lost = h.lost.into_iter().collect();
                self.machine.lost_report(h.node, lost, now);
            }
            Signal::Progress(p) => self.machine.progress(p.node, p.job, p.attempt, now),
            Signal::Holder(_) => {}
        }
    }

    async fn tick(&mut self) {
        let now = Timestamp::now();
        let before = self.quarantined();
        let actions = self.machine.tick(now);
        self.replay_new_jobs();
        let after = self.quarantined();
        for w in after.difference(&before) {
            self.stats.quarantines.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(worker = %w, reason = ?self.machine.health().get(w).and_then(|h| h.quarantine.as_ref()).map(|q| q.reason(self.machine.health_settings())), "worker quarantined");
        }
        for w in before.difference(&after) {
            tracing::info!(worker = %w, "worker out of quarantine");
        }
        if actions.is_empty() {
            return;
        }
        for action in actions {
            match action {
                Action::Claim {
                    job,
                    key,
                    attempt,
                    lease_ms,
                } => self.claim(job, key, attempt, lease_ms).await,
                Action::Abandon { job, attempt } => {
                    tracing::info!(job = %job.short(), attempt, "abandoning a build: another worker won it, a newer attempt took over, or it was cancelled");
                    if let Some(r) = self.running.remove(&(job, attempt)) {
                        r.cancel.cancel();
                    }
                }
            }
        }
        self.publish_load();
    }

    async fn claim(&mut self, job: Hash, key: JobKey, attempt: u32, lease_ms: u64) {
        let builder = self
            .config
            .as_ref()
            .and_then(|c| c.builder(&key.builder))
            .cloned();
        let Some(builder) = builder else {
            self.machine.stopped(job, attempt, Timestamp::now());
            return;
        };
        let body = Body::Claim(Claim {
            job,
            key: key.clone(),
            attempt,
            lease_ms,
        });
        if let Err(e) = self.replica.author(body).await {
            tracing::warn!(job = %job.short(), error = %e, "cannot claim");
            self.machine.stopped(job, attempt, Timestamp::now());
            return;
        }
        tracing::info!(job = %job.short(), builder = %key.builder, sha = %key.sha, attempt, "claimed");
        let cancel = CancellationToken::new();
        self.running.insert(
            (job, attempt),
            Running {
                cancel: cancel.clone(),
            },
        );
        let commit = (key.repo.clone(), key.branch.clone(), key.sha.clone());
        let off_branch_ok = self.vouched.contains(&commit);
        let announced = self
            .commits
            .get(&commit)
            .copied()
            .unwrap_or_else(Timestamp::now);
        let spec = BuildSpec {
            job,
            key,
            attempt,
            builder,
            worker: self.me,
            worker_name: self.name.clone(),
            off_branch_ok,
            announced,
        };
        let version = self.config.as_ref().map_or(0, |c| c.version);
        let exec = self.executor.clone();
        let replica = self.replica.clone();
        let store = self.store.clone();
        let done = self.done_tx.clone();
        let me = self.me;
        tokio::spawn(
            async move {
                let reported =
                    run_and_report(&exec, &spec, cancel, &replica, &store, me, version).await;
                let _ = done.send((spec.job, spec.attempt, reported)).await;
            }
            .in_current_span(),
        );
    }

    fn quarantined(&self) -> BTreeSet<NodeId> {
        self.machine
            .health()
            .iter()
            .filter(|(_, h)| h.quarantine.is_some())
            .map(|(w, _)| *w)
            .collect()
    }

    fn health_views(&self) -> BTreeMap<NodeId, HealthView> {
        let settings = self.machine.health_settings();
        self.machine
            .health()
            .iter()
            .map(|(w, h)| {
                let q = h.quarantine.as_ref();
                let builds = q
                    .map(|q| {
                        q.jobs
                            .iter()
                            .filter_map(|j| {
                                // Held, or let go of: its view is written either way.
                                let view = self.views.build(j).ok().flatten()?;
                                let other = view.confirmation.as_ref();
                                Some(Incident {
                                    build: view.id.clone(),
                                    builder: view.builder.clone(),
                                    branch: view.branch.clone(),
                                    sha: view.sha.clone(),
                                    other_worker: other.and_then(|c| c.worker).or(
                                        // An exception: the worker whose attempt ended it.
                                        view.worker.filter(|v| v != w),
                                    ),
                                    other_result: other.map(|c| c.result).or(Some(view.result)),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let view = HealthView {
                    state: if q.is_some() {
                        "quarantined"
                    } else {
                        "healthy"
                    }
                    .to_string(),
                    reason: q.map(|q| q.reason(settings)),
                    builds,
                    revalidated: q.map_or(0, |q| q.revalidated),
                    revalidations_needed: settings.revalidations,
                    unreproduced: h.unreproduced,
                    exceptions_in_row: h.exceptions_in_row,
                    streak: h.streak,
                    quarantines: h.episodes,
                };
                (*w, view)
            })
            .collect()
    }

    fn on_query(&self, q: Query) {
        match q {
            Query::Health { reply } => {
                let _ = reply.send(self.health_views());
            }
            Query::LiveWorkers { reply } => {
                let _ = reply.send(self.machine.live_workers(Timestamp::now()));
            }
            Query::IdleWorkers { builder, reply } => {
                let idle = match self.config.as_ref().and_then(|c| c.builder(&builder)) {
                    Some(b) => self.machine.idle_workers(&b.requires, Timestamp::now()),
                    None => Vec::new(),
                };
                let _ = reply.send(idle);
            }
            Query::MayCancel {
                job,
                caller,
                at,
                reply,
            } => {
                let answer = match self.machine.state(&job) {
                    None => Err(CancelRefused::Ended("long ago")),
                    Some(JobState::Pending { .. } | JobState::Running { .. }) => {
                        entitle::may_cancel(
                            &self.membership.borrow().trust,
                            &caller,
                            at,
                            &self.starters(&job),
                        )
                        .map_err(|_| CancelRefused::NotEntitled(caller))
                    }
                    Some(_) => Err(CancelRefused::Ended(
                        self.machine
                            .build_state(&job)
                            .map_or("finished", |s| s.as_str()),
                    )),
                };
                let _ = reply.send(answer);
            }
        }
    }

    // The jobs the machine let go of that `who` claimed or reported, learnt again with their
    // claims and results (a key about to be revoked as compromised: what it did must stop
    // counting in them too). Walks the key's own log, once.
    fn relearn_jobs_of(&mut self, who: &NodeId) {
        let Some(config) = self.config.clone() else {
            return;
        };
        let head = self.store.head_of(who).map_or(0, |(seq, _)| seq);
        let mut ids = BTreeSet::new();
        for seq in 1..=head {
            match self.store.record(who, seq).ok().flatten().map(|r| r.body()) {
                Some(Ok(Body::Claim(c))) => ids.insert(c.job),
                Some(Ok(Body::BuildResult(b))) => ids.insert(b.job),
                _ => false,
            };
        }
        let now = Timestamp::now();
        let mut n = 0;
        for id in ids {
            if self.machine.knows(&id) {
                continue;
            }
            let Ok(Some(v)) = self.views.build(&id) else {
                continue;
            };
            let spec = jobs::derive(&config, &v.repo, &v.branch, &v.sha, v.announced)
                .into_iter()
                .find(|s| s.id == id);
            if let Some(spec) = spec {
                self.replay(&id, now);
                self.machine.job(spec, now);
                self.replay_new_jobs();
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(node = %who, jobs = n, "older jobs learnt again to void what a revoked key did in them");
        }
    }

    // Dates the build's step logs by its builder's retention (the janitor deletes them after).
    fn keep_logs_of(&self, view: &BuildView) {
        let Some(finished) = view.finished else {
            return;
        };
        let passing = matches!(view.result, BuildState::Success | BuildState::Warnings);
        let keep = self
            .config
            .as_ref()
            .and_then(|c| c.builder(&view.builder))
            .map_or(buildmesh_protocol::builders::DEFAULT_KEEP_LOGS, |b| {
                b.keep_logs(passing)
            });
        for log in view.steps.iter().filter_map(|s| s.log) {
            if let Err(e) = self.store.keep_blob_until(&log, finished.plus(keep)) {
                tracing::warn!(error = %e, "cannot date a step log");
            }
        }
    }

    // Takes in the records already on the feed, up to a burst's worth. False if the feed
    // dropped some (the claimer fell behind: it rebuilds from the store).
    async fn take_waiting_records(&mut self) -> bool {
        for _ in 0..MAX_RECORDS_PER_TICK {
            match self.records.try_recv() {
                Ok(record) => {
                    self.on_record(&record).await;
                    self.learnt.raise(record.author_id(), record.seq());
                }
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "claimer fell behind the record feed; rebuilding from the store"
                    );
                    return false;
                }
                Err(_) => break,
            }
        }
        true
    }

    // Lets the machine go of finished jobs beyond its window (their views are written): at
    // most once a second, as it walks every job held.
    fn let_go(&mut self) {
        if self
            .last_let_go
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_let_go = Some(std::time::Instant::now());
        let gone = self.machine.let_go(KEEP_FINISHED);
        self.stats
            .jobs_held
            .store(self.machine.job_count() as u64, Ordering::Relaxed);
        if !gone.is_empty() {
            tracing::debug!(
                jobs = gone.len(),
                held = self.machine.job_count(),
                "finished jobs left to the views on disk"
            );
        }
    }

    // Whether the machine let go of this job: it has a settled view. Such a job is not
    // derived again (a configuration change, an announcement repeated).
    fn let_go_of(&self, job: &Hash) -> bool {
        matches!(self.views.build(job), Ok(Some(v)) if v.result.is_settled())
    }

    // Writes the views of the jobs that changed (a confirmation's change shows in the build
    // it confirms). Right after a start whose stored views were left in order, a view whose
    // state matches the machine's is taken as it is.
    fn write_views(&mut self) {
        let mut touched = self.machine.take_touched();
        if touched.is_empty() {
            return;
        }
        let origins: Vec<Hash> = touched
            .iter()
            .filter_map(|id| match self.machine.spec(id)?.key.purpose {
                Purpose::Confirm { job, .. } => Some(job),
                _ => None,
            })
            .collect();
        touched.extend(origins);
        let mut views = Vec::with_capacity(touched.len());
        for id in touched {
            let (Some(spec), Some(state)) = (self.machine.spec(&id), self.machine.state(&id))
            else {
                continue;
            };
            if self.stored == Stored::InOrder
                && let Ok(Some(v)) = self.views.build(&id)
                && Some(v.result) == self.machine.build_state(&id)
                && v.attempt == state.attempt()
            {
                continue;
            }
            let view = self.view(spec, state);
            self.keep_logs_of(&view);
            views.push(view);
        }
        if let Err(e) = self.views.write(views) {
            tracing::error!(error = %e, "cannot write build views");
        }
        self.stats
            .jobs_held
            .store(self.machine.job_count() as u64, Ordering::Relaxed);
    }

    fn view(&self, spec: &JobSpec, state: JobState) -> BuildView {
        let mut results: Vec<(Record, BuildResult)> = self
            .store
            .results_for_job(&spec.id)
            .unwrap_or_default()
            .into_iter()
            .filter(|rref| !self.distrusted.contains(&rref.author))
            .filter_map(|rref| self.store.record(&rref.author, rref.seq).ok().flatten())
            .filter_map(|r| match r.body() {
                Ok(Body::BuildResult(b)) => Some((r, b)),
                _ => None,
            })
            .collect();
        results.sort_by_key(|(r, b)| (b.attempt, r.envelope.time));
        let current_attempt = state.attempt();
        let mut attempts: Vec<AttemptView> = Vec::new();
        for (attempt, rref) in self.store.claims_for_job(&spec.id).unwrap_or_default() {
            let worker = rref.author;
            if self.distrusted.contains(&worker) {
                continue;
            }
            let reported = results
                .iter()
                .find(|(r, b)| b.attempt == attempt && r.author_id() == worker)
                .map(|(_, b)| b.result.to_string());
            let result = reported.unwrap_or_else(|| {
                if matches!(state, JobState::Cancelled { .. }) && attempt == current_attempt {
                    "cancelled".into()
                } else if attempt < current_attempt
                    || matches!(state, JobState::Done { .. } | JobState::GivenUp { .. })
                {
                    "lost".into()
                } else {
                    "running".into()
                }
            });
            attempts.push(AttemptView {
                attempt,
                worker,
                result,
                won: self.machine.winner(&spec.id, attempt) == Some(worker),
            });
        }
        attempts.sort_by_key(|a| (a.attempt, !a.won));
        let claim_time = |attempt: u32, worker: NodeId| {
            self.store
                .claims_for_job(&spec.id)
                .unwrap_or_default()
                .into_iter()
                .filter(|(a, rref)| *a == attempt && rref.author == worker)
                .find_map(|(_, rref)| self.store.record(&rref.author, rref.seq).ok().flatten())
                .map(|r| r.envelope.time)
        };
        let short = &spec.id.to_string()[..16];
        let mut v = BuildView {
            id: String::new(),
            job: spec.id,
            builder: spec.key.builder.clone(),
            repo: spec.key.repo.clone(),
            branch: spec.key.branch.clone(),
            sha: spec.key.sha.clone(),
            worker: None,
            attempt: 1,
            result: BuildState::Pending,
            started: None,
            finished: None,
            steps: Vec::new(),
            announced: Timestamp(spec.order),
            attempts,
            purpose: spec.key.purpose,
            confirmation: None,
        };
        match state {
            JobState::Pending { attempt } => {
                v.attempt = attempt;
                v.result = BuildState::Pending;
            }
            JobState::Running { attempt, worker } => {
                v.attempt = attempt;
                v.worker = Some(worker);
                v.result = BuildState::Running;
                v.started = claim_time(attempt, worker);
            }
            JobState::Done {
                attempt,
                worker,
                result,
            } => {
                v.attempt = attempt;
                v.worker = Some(worker);
                v.result = self
                    .machine
                    .build_state(&spec.id)
                    .unwrap_or_else(|| result.into());
                v.confirmation = self.confirmation_view(&spec.id);
                if let Some((_, b)) = results
                    .iter()
                    .find(|(r, b)| b.attempt == attempt && r.author_id() == worker)
                {
                    v.started = Some(b.started);
                    v.finished = Some(b.finished);
                    v.steps = b.steps.clone();
                }
            }
            JobState::Skipped => v.result = BuildState::Skipped,
            JobState::Cancelled { attempt } => {
                v.attempt = attempt;
                v.result = BuildState::Cancelled;
                v.worker = self.machine.winner(&spec.id, attempt);
                if let Some(w) = v.worker {
                    v.started = claim_time(attempt, w);
                }
                // What ran before it was stopped, as its worker reported it.
                if let Some((_, b)) = results
                    .iter()
                    .find(|(r, b)| b.attempt == attempt && Some(r.author_id()) == v.worker)
                {
                    v.started = Some(b.started);
                    v.finished = Some(b.finished);
                    v.steps = b.steps.clone();
                }
            }
            JobState::GivenUp { attempts } => {
                v.attempt = attempts;
                v.result = BuildState::Exception;
                if let Some((r, b)) = results.last() {
                    v.worker = Some(r.author_id());
                    v.started = Some(b.started);
                    v.finished = Some(b.finished);
                    // Why the last attempt failed (a checkout's message, say).
                    v.steps = b.steps.clone();
                }
            }
        }
        v.id = format!("{short}-{}", v.attempt);
        v
    }

    fn confirmation_view(&self, job: &Hash) -> Option<ConfirmationView> {
        let c = self.machine.confirmation(job);
        let cid = c.job()?;
        let (attempt, worker, state) = match self.machine.state(&cid) {
            None => (1, None, BuildState::Pending),
            Some(JobState::Pending { attempt }) => (attempt, None, BuildState::Pending),
            Some(JobState::Running { attempt, worker }) => {
                (attempt, Some(worker), BuildState::Running)
            }
            Some(JobState::Done {
                attempt,
                worker,
                result,
            }) => (attempt, Some(worker), result.into()),
            Some(JobState::GivenUp { attempts }) => (attempts, None, BuildState::Exception),
            Some(JobState::Cancelled { attempt }) => (attempt, None, BuildState::Cancelled),
            Some(JobState::Skipped) => (1, None, BuildState::Skipped),
        };
        let same_host = matches!(
            c,
            Confirmation::Reproduced {
                same_host: true,
                ..
            } | Confirmation::NotReproduced {
                same_host: true,
                ..
            }
        );
        Some(ConfirmationView {
            build: format!("{}-{attempt}", &cid.to_string()[..16]),
            worker,
            result: state,
            same_host,
        })
    }
}

// Runs one build, signals progress while it runs, stores its logs and authors its result.
async fn run_and_report(
    exec: &ExecutorConfig,
    spec: &BuildSpec,
    cancel: CancellationToken,
    replica: &ReplicaClient,
    store: &Store,
    me: NodeId,
    config_version: u64,
) -> bool {
    let progress = {
        let replica = replica.clone();
        let (job, attempt) = (spec.job, spec.attempt);
        let builder = spec.builder.name.clone();
        let stop = cancel.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => {
                        let p = Progress { node: me, time: Timestamp::now(), job, attempt, step: builder.clone() };
                        if replica.signal(Signal::Progress(p)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }))
    };
    let outcome = executor::run_build(exec, spec, cancel.clone()).await;
    progress.abort();
    let mut steps = Vec::new();
    for s in &outcome.steps {
        let log = match store.put_blob(&s.log) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(error = %e, step = %s.name, "cannot keep a step log");
                None
            }
        };
        steps.push(s.to_result(log));
    }
    let mut result = BuildResult {
        job: spec.job,
        key: spec.key.clone(),
        attempt: spec.attempt,
        result: outcome.result,
        steps,
        started: outcome.started,
        finished: outcome.finished,
        config_version,
    };
    // Whatever the build printed, the result fits in a record its peers take.
    result.fit();
    let code = result.result;
    match replica.author(Body::BuildResult(result)).await {
        Ok(r) => {
            tracing::info!(job = %spec.job.short(), attempt = spec.attempt, result = %code, seq = r.seq(), "build finished");
            true
        }
        Err(e) => {
            tracing::error!(job = %spec.job.short(), error = %e, "cannot record a build result");
            false
        }
    }
}
