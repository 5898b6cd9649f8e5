//! Culprit searches across the mesh: which commit of a range first turned a builder red.
//!
//! A search starts as a `Bisect` record (on a caller's `buildmesh bisect`, with the range read
//! from a mirror of the repository, [`range`]). The rules — which commits to build, on which
//! idle workers, when the culprit is found — are [`buildmesh_protocol::bisect`]; one node
//! decides, the notifier holder (it holds a lease already), and records each decision as a
//! `Probes` record: the outcomes it learnt, the idle workers and the time it decided at, the
//! probes it started. Every node replays those steps in order and reaches the same search, so
//! a new holder goes on where the last one stopped, and every node can show its progress. Each
//! probe is an ordinary job, taken only by the worker the step chose (the claimer derives it
//! from the step), and its result is that job's.
//!
//! One module for one state, the searches this node replays: learning their records, driving
//! them while holding the lease, starting them (a caller's, or after a red) and the board the
//! notifier reads all turn on it; the git reading is `range`. Hence its length.

pub mod range;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use buildmesh_protocol::bisect::{Bisection, Outcome};
use buildmesh_protocol::docs::Role;
use buildmesh_protocol::entitle;
use buildmesh_protocol::record::{Bisect, Body, JobKey, Probes, Purpose, Record};
use buildmesh_protocol::wire::SignedRequest;
use buildmesh_protocol::{Hash, NodeId, Timestamp};
use buildmesh_store::{Listing, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::NodeError;
use crate::claimer::ClaimerClient;
use crate::liveness::Membership;
use crate::notifier::NotifierClient;
use crate::replica::ReplicaClient;

/// How often the holder looks at its searches.
const DRIVE_EVERY: Duration = Duration::from_millis(500);

/// Searches kept (finished ones are dropped oldest first beyond this).
const KEEP_SEARCHES: usize = 200;

/// Steps held for a search not known yet.
const MAX_EARLY_STEPS: usize = 4_096;

/// A culprit search as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchView {
    /// Its id: the hash of its `Bisect` record.
    pub id: Hash,
    /// Builder.
    pub builder: String,
    /// Repository.
    pub repo: String,
    /// Branch.
    pub branch: String,
    /// The good end.
    pub good: String,
    /// The bad end.
    pub bad: String,
    /// Commits in the range, both ends included.
    pub commits: usize,
    /// Who asked for it (none: the notifier holder started it).
    pub asked_by: Option<NodeId>,
    /// When it started.
    pub started: Timestamp,
    /// Steps recorded.
    pub steps: u32,
    /// Split rounds so far.
    pub rounds: u32,
    /// What is still open: the highest good commit and the lowest bad one.
    pub open: (String, String),
    /// Every probe asked for, in order, with how it came out once it did.
    pub probes: Vec<ProbeView>,
    /// The first bad commit, once named.
    pub culprit: Option<CulpritView>,
}

/// One probe of a search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeView {
    /// Position in the range (0: the good end).
    pub index: usize,
    /// Its commit.
    pub sha: String,
    /// Who builds it.
    pub worker: NodeId,
    /// The probe's build id.
    pub build: String,
    /// How it came out, once the search learnt it.
    pub outcome: Option<Outcome>,
}

/// The culprit of a search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CulpritView {
    /// Its commit.
    pub sha: String,
    /// Its position in the range.
    pub index: usize,
    /// Whether the worker that failed it built the last good commit again and passed it.
    pub rechecked: bool,
    /// Its author, where this node holds a mirror of the repository.
    pub author: Option<String>,
    /// Its subject, likewise.
    pub subject: Option<String>,
}

/// A caller's search, as the API takes it.
#[derive(Clone, Debug)]
pub struct Ask {
    /// The builder, as written.
    pub builder: String,
    /// Its branch, if named.
    pub branch: Option<String>,
    /// The good commit, as typed.
    pub good: String,
    /// The bad commit, as typed.
    pub bad: String,
    /// The caller's signed request.
    pub request: SignedRequest,
}

/// Why a search cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The request names something that does not exist or does not fit.
    #[error("{0}")]
    Refused(String),
    /// The range could not be read.
    #[error(transparent)]
    Range(#[from] range::RangeError),
    /// The node is stopping.
    #[error(transparent)]
    Node(#[from] NodeError),
}

enum Query {
    List(oneshot::Sender<Vec<SearchView>>),
}

/// A red as the notifier names it: (builder, branch, commit).
pub type Red = (String, String, String);

/// What the notifier reads of the culprit searches, without waiting on the bisector: the search
/// for each red (its bad end), or that none will run for it.
#[derive(Debug, Default)]
pub struct Board(std::sync::Mutex<BoardInner>);

#[derive(Debug, Default)]
struct BoardInner {
    searches: HashMap<Red, SearchView>,
    none: std::collections::HashSet<Red>,
    waits: HashMap<Red, Duration>,
}

/// Where a red stands with its culprit search.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// Not known yet whether a search runs (the holder is reading the range).
    Undecided,
    /// No search: its builder built every commit since its last green, or the range cannot be
    /// read.
    NoSearch,
    /// The search.
    Search(Box<SearchView>),
}

impl Board {
    /// Where the red `red` stands.
    pub fn lookup(&self, red: &Red) -> Lookup {
        let b = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(v) = b.searches.get(red) {
            Lookup::Search(Box::new(v.clone()))
        } else if b.none.contains(red) {
            Lookup::NoSearch
        } else {
            Lookup::Undecided
        }
    }

    /// How long a mail about `red` may wait for its culprit by default: two builds of its
    /// builder, as long as its red build took (known once the search started here).
    pub fn wait(&self, red: &Red) -> Option<Duration> {
        let b = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        b.waits.get(red).copied()
    }

    fn put(&self, v: &SearchView) {
        let mut b = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let red = (v.builder.clone(), v.branch.clone(), v.bad.clone());
        b.none.remove(&red);
        b.searches.insert(red, v.clone());
    }

    fn no_search(&self, red: Red) {
        let mut b = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !b.searches.contains_key(&red) {
            b.none.insert(red);
        }
    }

    fn set_wait(&self, red: Red, wait: Duration) {
        let mut b = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        b.waits.insert(red, wait);
    }
}

/// A handle on the bisector.
#[derive(Clone, Debug)]
pub struct BisectorClient {
    tx: mpsc::Sender<Query>,
    starter: Arc<Starter>,
}

impl BisectorClient {
    /// Every search this node knows, newest first.
    pub async fn list(&self) -> Result<Vec<SearchView>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Query::List(reply))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Starts a caller's search: reads the range, finds the red it starts from, records it.
    /// Returns the search's id and its number of commits.
    pub async fn start(&self, ask: Ask) -> Result<(Hash, usize), StartError> {
        self.starter.start(ask).await
    }
}

// What starting a search needs; used from the API's task, not the bisector's.
#[derive(Debug)]
struct Starter {
    replica: ReplicaClient,
    claimer: ClaimerClient,
    cache: PathBuf,
    board: Arc<Board>,
}

impl Starter {
    // The notifier holder's search after a red: from the builder's last green commit on the
    // branch to the red one, when the builder did not build every commit between them. Says on
    // the board when no search will run.
    async fn auto(&self, red: Red) {
        match self.try_auto(&red).await {
            Ok(true) => {}
            Ok(false) => self.board.no_search(red),
            Err(e) => {
                tracing::warn!(builder = %red.0, sha = %red.2, error = %e, "no culprit search for this red");
                self.board.no_search(red);
            }
        }
    }

    async fn try_auto(&self, red: &Red) -> Result<bool, StartError> {
        let (builder, branch, sha) = red.clone();
        let Some(config) = self.replica.config().await? else {
            return Ok(false);
        };
        let Some(b) = config.builder(&builder).cloned() else {
            return Ok(false);
        };
        let views = self.claimer.views().clone();
        let (name, br) = (builder.clone(), branch.clone());
        let history = tokio::task::spawn_blocking(move || {
            views.builds(
                Listing::Branch(&name, &br),
                |v| v.purpose.is_ordinary(),
                500,
            )
        })
        .await
        .map_err(|_| NodeError::Stopped)?
        .map_err(|e| StartError::Refused(e.to_string()))?;
        // Newest first: the red, then back to the newest green before it.
        let Some(at) = history.iter().position(|v| {
            v.sha == sha && v.result == buildmesh_protocol::record::BuildState::Failure
        }) else {
            return Ok(false);
        };
        let red_build = &history[at];
        let Some(good) = history[at + 1..].iter().find(|v| {
            v.sha != sha
                && matches!(
                    v.result.result(),
                    Some(
                        buildmesh_protocol::record::ResultCode::Success
                            | buildmesh_protocol::record::ResultCode::Warnings
                            | buildmesh_protocol::record::ResultCode::Flaky
                    )
                )
        }) else {
            return Ok(false);
        };
        let Some(worker) = red_build.worker else {
            return Ok(false);
        };
        if let (Some(s), Some(f)) = (red_build.started, red_build.finished) {
            let wait = (f.since(s) * 2).max(crate::config::MIN_CULPRIT_WAIT);
            self.board.set_wait(red.clone(), wait);
        }
        let mirror = range::mirror(&self.cache, &b.repo).await?;
        let shas = range::first_parent_line(&mirror, &good.sha, &sha).await?;
        if shas.len() <= 2 {
            // Nothing between the last green and the red: the red commit is the culprit.
            return Ok(false);
        }
        tracing::info!(builder = %builder, branch = %branch, commits = shas.len(), "starting a culprit search for a red after skipped commits");
        let body = Bisect {
            builder,
            repo: b.repo.clone(),
            branch,
            shas,
            red_worker: worker,
            max_split: None,
            request: None,
        };
        self.replica.author(Body::Bisect(body)).await?;
        Ok(true)
    }

    async fn start(&self, ask: Ask) -> Result<(Hash, usize), StartError> {
        let refused = |s: String| StartError::Refused(s);
        let config = self
            .replica
            .config()
            .await?
            .ok_or_else(|| refused("no builder configuration is in force".into()))?;
        let builder = config
            .builder(&ask.builder)
            .ok_or_else(|| {
                refused(format!(
                    "no builder is named {:?} in the configuration in force",
                    ask.builder
                ))
            })?
            .clone();
        // The red it starts from: a failing build of the bad commit on this builder.
        let (views, bad, name, branch) = (
            self.claimer.views().clone(),
            ask.bad.to_ascii_lowercase(),
            builder.name.clone(),
            ask.branch.clone(),
        );
        let reds = tokio::task::spawn_blocking(move || {
            views.builds(
                Listing::Commit(&bad),
                |b| {
                    b.builder == name
                        && b.purpose.is_ordinary()
                        && branch.as_ref().is_none_or(|br| *br == b.branch)
                        && b.result == buildmesh_protocol::record::BuildState::Failure
                },
                100,
            )
        })
        .await
        .map_err(|_| NodeError::Stopped)?
        .map_err(|e| refused(e.to_string()))?;
        let Some(red) = reds.first() else {
            return Err(refused(format!(
                "no red build of {} at {} is known here: a search starts from a commit the builder failed",
                ask.builder, ask.bad
            )));
        };
        if reds.iter().any(|b| b.branch != red.branch) {
            return Err(refused(format!(
                "{} was built red on several branches; name one with --branch",
                ask.bad
            )));
        }
        let mirror = range::mirror(&self.cache, &builder.repo).await?;
        let shas = range::first_parent_line(&mirror, &ask.good, &red.sha).await?;
        let n = shas.len();
        let body = Bisect {
            builder: builder.name.clone(),
            repo: builder.repo.clone(),
            branch: red.branch.clone(),
            shas,
            red_worker: red
                .worker
                .ok_or_else(|| refused("the red build names no worker".into()))?,
            max_split: None,
            request: Some(ask.request),
        };
        let record = self.replica.author(Body::Bisect(body)).await?;
        Ok((record.hash, n))
    }
}

/// What the bisector needs.
pub(crate) struct BisectorParts {
    pub board: Arc<Board>,
    pub starts: mpsc::Receiver<Red>,
    pub store: Arc<Store>,
    pub replica: ReplicaClient,
    pub claimer: ClaimerClient,
    pub notifier: NotifierClient,
    pub records: broadcast::Receiver<Arc<Record>>,
    pub membership: watch::Receiver<Membership>,
    pub cache: PathBuf,
    pub cancel: CancellationToken,
}

struct Search {
    id: Hash,
    bisect: Bisect,
    started: Timestamp,
    asked_by: Option<NodeId>,
    // Every version of every step seen: (term, record hash, step).
    steps: BTreeMap<u32, Vec<(u64, Hash, Probes)>>,
    // The search replayed from its steps, and how many steps that took.
    state: Bisection,
    applied: u32,
    probes: Vec<ProbeView>,
    // The step this node authored last, while holding (not authored twice).
    authored: Option<u32>,
    described: Option<(String, String)>,
}

/// The bisector task.
pub(crate) struct Bisector {
    board: Arc<Board>,
    starter: Arc<Starter>,
    starts: mpsc::Receiver<Red>,
    // Reds whose search this node started or decided against (a start is asked again and
    // again while the mail waits).
    started: std::collections::HashSet<Red>,
    store: Arc<Store>,
    replica: ReplicaClient,
    claimer: ClaimerClient,
    notifier: NotifierClient,
    records: broadcast::Receiver<Arc<Record>>,
    membership: watch::Receiver<Membership>,
    queries: mpsc::Receiver<Query>,
    cache: PathBuf,
    cancel: CancellationToken,
    searches: HashMap<Hash, Search>,
    early: HashMap<Hash, Vec<(Hash, Probes)>>,
    // Builds as they change: a probe that ended is the next step's input, at once.
    views: broadcast::Receiver<Arc<crate::claimer::BuildView>>,
    // A search started: its first step need not wait for the tick.
    kick: bool,
}

impl Bisector {
    pub(crate) fn new(parts: BisectorParts) -> (Self, BisectorClient) {
        let (tx, queries) = mpsc::channel(16);
        let starter = Arc::new(Starter {
            replica: parts.replica.clone(),
            claimer: parts.claimer.clone(),
            cache: parts.cache.clone(),
            board: parts.board.clone(),
        });
        let client = BisectorClient {
            tx,
            starter: starter.clone(),
        };
        let views = parts.claimer.views().subscribe();
        let b = Bisector {
            board: parts.board.clone(),
            starter,
            starts: parts.starts,
            started: Default::default(),
            store: parts.store,
            replica: parts.replica,
            claimer: parts.claimer,
            notifier: parts.notifier,
            records: parts.records,
            membership: parts.membership,
            queries,
            cache: parts.cache,
            cancel: parts.cancel,
            searches: HashMap::new(),
            early: HashMap::new(),
            views,
            kick: false,
        };
        (b, client)
    }

    pub(crate) async fn run(mut self) {
        self.load_all();
        self.describe_named().await;
        let mut tick = tokio::time::interval(DRIVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                r = self.records.recv() => match r {
                    Ok(record) => {
                        self.learn(&record);
                        self.describe_named().await;
                        if std::mem::take(&mut self.kick) {
                            self.drive().await;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.load_all(),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                Some(red) = self.starts.recv() => self.start_for(red),
                v = self.views.recv() => match v {
                    Ok(b) if matches!(b.purpose, Purpose::Probe { .. }) && b.result.is_settled() => {
                        self.drive().await;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => self.drive().await,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                Some(q) = self.queries.recv() => match q {
                    Query::List(reply) => {
                        let _ = reply.send(self.views());
                    }
                },
                _ = tick.tick() => self.drive().await,
            }
        }
    }

    // The notifier holder asks for a red's search (again and again while its mail waits): once.
    fn start_for(&mut self, red: Red) {
        let known = self.searches.values().any(|s| {
            s.bisect.builder == red.0
                && s.bisect.branch == red.1
                && s.bisect.shas.last() == Some(&red.2)
        });
        if known || !self.started.insert(red.clone()) {
            return;
        }
        let starter = self.starter.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            starter.auto(red).await;
        }));
    }

    // The searches and steps the store holds (at start, or after falling behind the feed).
    fn load_all(&mut self) {
        use buildmesh_protocol::record::RecordKind;
        let store = self.store.clone();
        for kind in [RecordKind::Bisect, RecordKind::Probes] {
            for r in store.records_of_kind(&kind).flatten() {
                self.learn(&r);
            }
        }
    }

    fn learn(&mut self, record: &Record) {
        let author = record.author_id();
        let time = record.envelope.time;
        match record.body() {
            Ok(Body::Bisect(b)) => {
                if self.searches.contains_key(&record.hash)
                    || entitle::bisect(&self.membership.borrow().trust, &author, time, &b).is_err()
                {
                    return;
                }
                let asked_by = b
                    .request
                    .as_ref()
                    .and_then(|r| r.verify().ok())
                    .map(|r| r.key);
                let Ok(state) = Bisection::new(b.shas.clone(), b.red_worker, b.settings()) else {
                    return;
                };
                let mut search = Search {
                    id: record.hash,
                    bisect: b,
                    started: time,
                    asked_by,
                    steps: BTreeMap::new(),
                    state,
                    applied: 0,
                    probes: Vec::new(),
                    authored: None,
                    described: None,
                };
                for (hash, p) in self.early.remove(&record.hash).unwrap_or_default() {
                    search
                        .steps
                        .entry(p.step)
                        .or_default()
                        .push((p.term, hash, p));
                }
                search.replay();
                search.publish(&self.board);
                self.kick = true;
                tracing::info!(search = %search.id.short(), builder = %search.bisect.builder, commits = search.bisect.shas.len(), "culprit search started");
                self.searches.insert(record.hash, search);
                self.trim();
            }
            Ok(Body::Probes(p)) => {
                let notifier = self
                    .membership
                    .borrow()
                    .trust
                    .may_act(&author, Role::Notifier, time)
                    .is_ok();
                if !notifier {
                    return;
                }
                match self.searches.get_mut(&p.bisection) {
                    Some(s) => {
                        let versions = s.steps.entry(p.step).or_default();
                        if versions.iter().any(|(_, h, _)| *h == record.hash) {
                            return;
                        }
                        versions.push((p.term, record.hash, p));
                        let before = s.state.culprit().is_some();
                        s.replay();
                        s.publish(&self.board);
                        if !before && let Some(c) = s.state.culprit() {
                            tracing::info!(search = %s.id.short(), culprit = %c.sha, "culprit named");
                        }
                    }
                    None => {
                        if self.early.values().map(Vec::len).sum::<usize>() < MAX_EARLY_STEPS {
                            self.early
                                .entry(p.bisection)
                                .or_default()
                                .push((record.hash, p));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    // Finished searches beyond the kept number go, oldest first.
    fn trim(&mut self) {
        if self.searches.len() <= KEEP_SEARCHES {
            return;
        }
        let mut done: Vec<(Timestamp, Hash)> = self
            .searches
            .values()
            .filter(|s| s.state.culprit().is_some())
            .map(|s| (s.started, s.id))
            .collect();
        done.sort();
        for (_, id) in done.into_iter().take(self.searches.len() - KEEP_SEARCHES) {
            self.searches.remove(&id);
        }
    }

    // While this node holds the notifier lease: the next step of every open search.
    // Names each new culprit's author and subject where this node has the repository: in the
    // same turn as the step that named it, so that no query sees the culprit without them.
    async fn describe_named(&mut self) {
        let named: Vec<Hash> = self
            .searches
            .values()
            .filter(|s| s.state.culprit().is_some() && s.described.is_none())
            .map(|s| s.id)
            .collect();
        for id in named {
            self.describe(id).await;
        }
    }

    async fn drive(&mut self) {
        if self.searches.values().all(|s| s.state.culprit().is_some()) {
            return;
        }
        let Ok(holder) = self.notifier.view().await else {
            return;
        };
        if !holder.holding {
            return;
        }
        let live = self.claimer.live_workers().await.unwrap_or_default();
        let open: Vec<Hash> = self
            .searches
            .values()
            .filter(|s| s.state.culprit().is_none())
            .map(|s| s.id)
            .collect();
        for id in open {
            let Some(s) = self.searches.get(&id) else {
                continue;
            };
            // A gap in the steps (a step still on its way): wait for it.
            if s.steps.keys().next_back().is_some_and(|k| *k >= s.applied)
                || s.authored.is_some_and(|a| a >= s.applied)
            {
                continue;
            }
            let mut reports = Vec::new();
            for (index, worker) in s.state.outstanding() {
                let job = probe_job(&s.bisect, id, index, worker);
                let view = self.claimer.views().build(&job).ok().flatten();
                let outcome = match view.map(|v| v.result) {
                    Some(state) => match state.result() {
                        Some(code) => Some(Outcome::of(code)),
                        // Still pending or running: says nothing until its worker is gone.
                        None => (!live.contains(&worker)).then_some(Outcome::NoVerdict),
                    },
                    None => (!live.contains(&worker)).then_some(Outcome::NoVerdict),
                };
                if let Some(o) = outcome {
                    reports.push((index, worker, o));
                }
            }
            let idle = self
                .claimer
                .idle_workers(&s.bisect.builder)
                .await
                .unwrap_or_default();
            let now = Timestamp::now();
            let mut next = s.state.clone();
            let probes = next.step(&reports, &idle, now);
            if reports.is_empty()
                && probes.is_empty()
                && next.culprit() == s.state.culprit()
                && next.waiting_since() == s.state.waiting_since()
            {
                continue;
            }
            let step = Probes {
                bisection: id,
                step: s.applied,
                term: holder.term,
                reports: reports
                    .iter()
                    .map(|(i, w, o)| (*i as u32, *w, *o))
                    .collect(),
                idle,
                now,
                probes: probes.iter().map(|p| (p.index as u32, p.worker)).collect(),
                culprit: next.culprit().cloned(),
            };
            let applied = s.applied;
            match self.replica.author(Body::Probes(step)).await {
                Ok(_) => {
                    if let Some(s) = self.searches.get_mut(&id) {
                        s.authored = Some(applied);
                    }
                }
                Err(e) => {
                    tracing::warn!(search = %id.short(), error = %e, "cannot record a search step")
                }
            }
        }
    }

    async fn describe(&mut self, id: Hash) {
        let Some(s) = self.searches.get(&id) else {
            return;
        };
        let Some(c) = s.state.culprit() else {
            return;
        };
        let name = &Hash::of(s.bisect.repo.as_bytes()).to_string()[..16];
        let mirror = self.cache.join(name);
        let found = if mirror.join("HEAD").exists() {
            range::describe(&mirror, &c.sha).await
        } else {
            None
        };
        if let Some(s) = self.searches.get_mut(&id) {
            s.described = Some(found.unwrap_or_default());
            s.publish(&self.board);
        }
    }

    fn views(&self) -> Vec<SearchView> {
        let mut out: Vec<SearchView> = self.searches.values().map(Search::view).collect();
        out.sort_by(|a, b| b.started.cmp(&a.started).then(a.id.cmp(&b.id)));
        out
    }
}

/// The job of a search's probe of commit `index` on `worker`.
pub fn probe_job(search: &Bisect, id: Hash, index: usize, worker: NodeId) -> Hash {
    JobKey {
        builder: search.builder.clone(),
        repo: search.repo.clone(),
        branch: search.branch.clone(),
        sha: search.shas.get(index).cloned().unwrap_or_default(),
        purpose: Purpose::Probe {
            bisection: id,
            worker,
        },
    }
    .id()
}

impl Search {
    // The search again from its steps, in order, each step the version of the latest term
    // (then the lowest record hash): the same on every node that holds the same steps.
    fn replay(&mut self) {
        let Ok(mut state) = Bisection::new(
            self.bisect.shas.clone(),
            self.bisect.red_worker,
            self.bisect.settings(),
        ) else {
            return;
        };
        let mut probes: Vec<ProbeView> = Vec::new();
        let mut applied = 0;
        while let Some(versions) = self.steps.get(&applied) {
            let Some((_, _, p)) = versions
                .iter()
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            else {
                break;
            };
            let reports: Vec<(usize, NodeId, Outcome)> = p
                .reports
                .iter()
                .map(|(i, w, o)| (*i as usize, *w, *o))
                .collect();
            for (i, w, o) in &reports {
                if let Some(v) = probes
                    .iter_mut()
                    .find(|v| v.index == *i && v.worker == *w && v.outcome.is_none())
                {
                    v.outcome = Some(*o);
                }
            }
            let got: Vec<(u32, NodeId)> = state
                .step(&reports, &p.idle, p.now)
                .iter()
                .map(|x| (x.index as u32, x.worker))
                .collect();
            if got != p.probes {
                tracing::warn!(search = %self.id.short(), step = applied, "a search step replays differently from how it was recorded; the record stands");
            }
            for (i, w) in &p.probes {
                let index = *i as usize;
                probes.push(ProbeView {
                    index,
                    sha: self.bisect.shas.get(index).cloned().unwrap_or_default(),
                    worker: *w,
                    build: crate::readmodel::build_id(
                        &probe_job(&self.bisect, self.id, index, *w),
                        1,
                    ),
                    outcome: None,
                });
            }
            applied += 1;
        }
        self.state = state;
        self.applied = applied;
        self.probes = probes;
    }

    // Puts the search on the board; a culprit only once its author and subject were looked
    // up, so that no mail names it without them.
    fn publish(&self, board: &Board) {
        let mut v = self.view();
        if self.described.is_none() {
            v.culprit = None;
        }
        board.put(&v);
    }

    fn view(&self) -> SearchView {
        let shas = &self.bisect.shas;
        let (g, b) = self.state.open();
        SearchView {
            id: self.id,
            builder: self.bisect.builder.clone(),
            repo: self.bisect.repo.clone(),
            branch: self.bisect.branch.clone(),
            good: shas[0].clone(),
            bad: shas[shas.len() - 1].clone(),
            commits: shas.len(),
            asked_by: self.asked_by,
            started: self.started,
            steps: self.applied,
            rounds: self.state.rounds(),
            open: (shas[g].clone(), shas[b].clone()),
            probes: self.probes.clone(),
            culprit: self.state.culprit().map(|c| CulpritView {
                sha: c.sha.clone(),
                index: c.index,
                rechecked: c.rechecked,
                author: self
                    .described
                    .as_ref()
                    .map(|d| d.0.clone())
                    .filter(|s| !s.is_empty()),
                subject: self
                    .described
                    .as_ref()
                    .map(|d| d.1.clone())
                    .filter(|s| !s.is_empty()),
            }),
        }
    }
}
