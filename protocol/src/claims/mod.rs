//! Claiming jobs without a master: a sans-IO state machine, one per node.
//!
//! Every node feeds it what it learns — jobs, claims, progress, results, heartbeats — with the
//! time it learnt them on its own clock, and calls [`Claims::tick`] for the actions to take.
//! No sockets, no store, no clock inside: the node wires it to the network, and the simulator
//! in the test suite drives many of them over a lossy, partitioned network.
//!
//! The rules:
//! - **Order.** For a job and attempt, every eligible live worker with a free slot is ranked by
//!   a rendezvous hash of (job, worker). Workers that already failed or threw an
//!   exception on this job go to the back. The worker ranked `r` claims once the job has been
//!   open for `r × step` on its clock: the first choice waits no time, and a dead first choice
//!   costs one step, not a timeout. For a moment after one of its builds ends, a worker also
//!   waits its turn among all live workers, busy or not (a tenth of a step per rank): workers
//!   whose builds end together then take different queued jobs instead of crossing claims.
//! - **Crossed claims.** Two claims for one (job, attempt): the one first in rendezvous order
//!   wins on every node; the other worker abandons its build.
//! - **Leases.** A claim holds while its worker shows progress; after `lease` of silence the job
//!   reopens with attempt + 1, and the silent worker goes to the back of the order. A worker
//!   that is **gone** — every connection to it closed (a reset or a killed process, not a
//!   silence) on more than half of the other live nodes, as their heartbeats say
//!   ([`Claims::lost_report`]) — loses its leases at once and is not ranked until they hear it
//!   again. A frozen worker keeps its connections open and waits for its lease.
//! - **Results.** A verdict (success, warnings, failure, flaky) ends the job. An exception or a
//!   cancelled winner reopens it at once with attempt + 1, elsewhere first. After the builder's
//!   `max_attempts` the job is given up. The current result is the verdict of the highest
//!   attempt's winner. A late result of an old attempt is kept but does not override a newer
//!   one.
//! - **Entitlement.** Every claim and result seen is kept, but only some count, and the same
//!   ones on every node whatever order they came in (a rogue admitted key must not be able to
//!   take or end jobs at will): a claim counts if its worker is admitted as a worker with labels
//!   that meet the builder's requirements, and its attempt is 1 or follows an attempt with a
//!   counted claim, up to `max_attempts`; a result counts only from the winner of its attempt.
//!   When a lease lapsed stays each node's own judgement. Claims and results that can never
//!   count (an attempt past the limit, labels that do not match, a result for an attempt its
//!   author never claimed) are reported as misbehaviour ([`Claims::misbehaviour`]).
//! - **Newest first.** Jobs are claimed by priority, then newest commit first; an open job that
//!   was never claimed is skipped once a newer commit of the same builder and branch has a
//!   verdict (buildbot's collapsing). Skipped jobs stay known.
//!
//! - **Confirmation and health** ([`crate::health`]): a red on a builder that confirms opens a
//!   confirmation job, ranked so that the worker that failed (and its machine) comes last and
//!   only after [`ClaimSettings::confirm_wait`]; every worker's health is derived from the
//!   results held, and a quarantined worker is ranked for re-validation jobs only. Those rules
//!   are in `confirm.rs`, beside this table.
//!
//! One module for one state: the ranking, the leases and which claims count all read and
//! write the same per-job table, and splitting them would spread one invariant over files;
//! hence its length.
//!
//! One module for the machine's core (jobs, claims, leases, ranking, results) because every
//! decision reads all of it; what could stand apart does: confirmations and health
//! (`confirm.rs`), the window of finished jobs (`window.rs`), the checkpoint (`checkpoint.rs`).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use crate::entitle::Refusal;
use crate::health::{ConfirmMode, Health, HealthSettings};
use crate::keys::{Hash, NodeId};
use crate::record::{JobKey, ResultCode};
use crate::time::Timestamp;

mod checkpoint;
mod confirm;
mod window;

pub use checkpoint::CheckpointError;
pub use confirm::Confirmation;

/// Timing of the claim protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimSettings {
    /// Silence after which a claim lapses. Default 3 s.
    pub lease: Duration,
    /// Delay per rank. Default 500 ms.
    pub step: Duration,
    /// A worker not heard from for this long is not ranked. Default 3 s.
    pub liveness_window: Duration,
    /// How long a confirmation waits for another host before the worker that failed may run
    /// it itself (when another eligible host exists at all). Default 10 s.
    pub confirm_wait: Duration,
}

impl Default for ClaimSettings {
    fn default() -> Self {
        ClaimSettings {
            lease: Duration::from_secs(3),
            step: Duration::from_millis(500),
            liveness_window: Duration::from_secs(3),
            confirm_wait: Duration::from_secs(10),
        }
    }
}

/// What a job is and who may run it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job id ([`JobKey::id`]).
    pub id: Hash,
    /// Builder and commit.
    pub key: JobKey,
    /// Worker labels required.
    pub requires: BTreeMap<String, String>,
    /// Higher first.
    pub priority: i32,
    /// Commit order within the branch (the first announcement's time): newer is higher.
    pub order: u64,
    /// Attempts before the job is given up (the builder's `max_attempts`).
    pub max_attempts: u32,
    /// How its reds are confirmed (the builder's `confirm`); for a confirmation job, the mode
    /// it applies.
    pub confirm: ConfirmMode,
}

/// What the node must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Author a claim for (job, attempt) and start the build.
    Claim {
        /// The job.
        job: Hash,
        /// Builder and commit.
        key: JobKey,
        /// The attempt claimed.
        attempt: u32,
        /// The lease to announce, in milliseconds.
        lease_ms: u64,
    },
    /// Stop this node's build of (job, attempt): another worker won it, a newer attempt
    /// superseded it, or a caller cancelled the job.
    Abandon {
        /// The job.
        job: Hash,
        /// The attempt.
        attempt: u32,
    },
}

/// Where a job stands, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Not claimed in its current attempt.
    Pending {
        /// The attempt waiting to be claimed.
        attempt: u32,
    },
    /// Claimed; the winner runs it.
    Running {
        /// The attempt.
        attempt: u32,
        /// The winning claimant.
        worker: NodeId,
    },
    /// Finished with a verdict.
    Done {
        /// The attempt whose verdict counts.
        attempt: u32,
        /// Who produced it.
        worker: NodeId,
        /// The verdict.
        result: ResultCode,
    },
    /// Never built: a newer commit was built instead.
    Skipped,
    /// Every attempt ended in an exception or a lost worker.
    GivenUp {
        /// Attempts made.
        attempts: u32,
    },
    /// Stopped on a caller's request before it had a verdict: final, never retried.
    Cancelled {
        /// The attempt it was in.
        attempt: u32,
    },
}

impl JobState {
    /// The attempt a view of the job shows: the current one, the one whose verdict counts, or
    /// the last one given up (1 for a skipped job).
    pub fn attempt(&self) -> u32 {
        match self {
            JobState::Pending { attempt }
            | JobState::Running { attempt, .. }
            | JobState::Done { attempt, .. }
            | JobState::Cancelled { attempt } => *attempt,
            JobState::GivenUp { attempts } => *attempts,
            JobState::Skipped => 1,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Worker {
    labels: BTreeMap<String, String>,
    heard: Option<Timestamp>,
    running: u32,
    capacity: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Job {
    spec: JobSpec,
    attempt: u32,
    open_since: Timestamp,
    // Every claim seen, counted or not, with when it was seen.
    claims: BTreeMap<u32, BTreeMap<NodeId, Timestamp>>,
    // The claims that count (see `Claims::recount`): only these name winners.
    counted: BTreeMap<u32, BTreeSet<NodeId>>,
    // Attempts that a key revoked as compromised claimed: void, but the sequence of attempts
    // goes on past them, and they do not use up `max_attempts`.
    voided: BTreeSet<u32>,
    activity: BTreeMap<(u32, NodeId), Timestamp>,
    avoid: BTreeSet<NodeId>,
    // Claimants ranked last for this job (a confirmation's worker that failed, or its
    // machine): among crossed claims, they win only if no one else claimed.
    late: BTreeSet<NodeId>,
    results: BTreeMap<(u32, NodeId), ResultCode>,
    skipped: bool,
    given_up: bool,
    // A caller stopped it (see `Claims::cancel`).
    cancelled: bool,
}

/// The most claims and results of not-yet-known jobs a machine holds.
pub const MAX_EARLY: usize = 65_536;

/// The rendezvous score of `worker` for `job`: lower goes first. The attempt is left out on
/// purpose: a retry goes to the next worker of the same order, not to a reshuffled one.
pub fn score(job: &Hash, worker: &NodeId) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"buildmesh/v1/rendezvous\0");
    h.update(&job.0);
    h.update(worker.as_bytes());
    let out = h.finalize();
    u64::from_be_bytes(out.as_bytes()[..8].try_into().expect("8 bytes"))
}

fn labels_meet(labels: &BTreeMap<String, String>, requires: &BTreeMap<String, String>) -> bool {
    requires.iter().all(|(k, want)| match labels.get(k) {
        Some(have) => want == "*" || have == want,
        None => false,
    })
}

/// One node's view of every job and every worker, and its decisions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    me: NodeId,
    settings: ClaimSettings,
    capacity: u32,
    workers: BTreeMap<NodeId, Worker>,
    // The labels of every worker ever declared, revoked ones included: whether a claim counts
    // depends on what its worker was admitted as, not on whether it is still ranked (a retired
    // worker's earlier results stand).
    labels: BTreeMap<NodeId, BTreeMap<String, String>>,
    jobs: BTreeMap<Hash, Job>,
    running: BTreeSet<(Hash, u32)>,
    // When a build slot here last came free: for a moment after, claims wait their turn in the
    // order of every live worker, busy or not (see `tick`).
    freed_at: Option<Timestamp>,
    // Claims, progress and results that arrived before their job (records of different authors
    // arrive in any order); applied when the job becomes known.
    early: BTreeMap<Hash, Vec<Early>>,
    early_count: usize,
    // Claims and results that can never count, once each, until `misbehaviour` takes them.
    misbehaved: BTreeSet<(NodeId, Hash, u32, Refusal)>,
    misbehaviour: Vec<(NodeId, Hash, u32, Refusal)>,
    // Every worker's health, derived from the results held (see `confirm.rs`); recomputed
    // at the next tick after a result or a claim changes.
    health_settings: HealthSettings,
    health: BTreeMap<NodeId, Health>,
    health_dirty: bool,
    health_at: Option<Timestamp>,
    // Quarantine episodes maintainers released, per worker.
    released: BTreeMap<NodeId, BTreeSet<u32>>,
    // Jobs this machine derived (confirmations, re-validations) since the last
    // `take_new_jobs`: the node replays their stored claims and results.
    new_jobs: Vec<Hash>,
    // Every node's newest heartbeat (when this node heard it) and the peers it says it lost
    // the connections to; and the workers that more than half of the live nodes lost.
    reports: BTreeMap<NodeId, (Timestamp, BTreeSet<NodeId>)>,
    gone: BTreeSet<NodeId>,
    // The nodes that beat less often than this one (a large mesh: `wire::beat_interval`), and
    // how long each counts as live after its heartbeat; the others, `liveness_window`.
    #[serde(default)]
    windows: BTreeMap<NodeId, Duration>,
    // Jobs whose state or claims may have changed since the last `take_touched`: the node
    // writes their views again.
    touched: BTreeSet<Hash>,
    // What the machine keeps of the finished jobs it let go of (see `window.rs`): each
    // worker's health folded over their events, with their green re-validations per episode,
    // and the newest verdict of each (builder, branch).
    folded: BTreeMap<NodeId, (crate::health::Fold, BTreeMap<u32, u32>)>,
    newest_verdict: BTreeMap<(String, String), u64>,
    // What a tick walks instead of every job held (a CPython-sized fleet holds thousands, and
    // a busy node ticks tens of times a second): the jobs that may still be open, and the
    // newest verdict of each (builder, branch) of the rest. A job joins when touched and
    // leaves once found final; both are made again from every job held every
    // `FULL_WALK_EVERY` ticks and whenever not valid (a start, a key revoked).
    #[serde(skip)]
    open: BTreeSet<Hash>,
    #[serde(skip)]
    newest_held: HashMap<String, HashMap<String, u64>>,
    #[serde(skip)]
    open_valid: bool,
    #[serde(skip)]
    ticks_since_walk: u32,
}

/// How many ticks may pass between two walks of every job held (see `Claims::open`).
const FULL_WALK_EVERY: u32 = 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Early {
    Claim(NodeId, u32, Timestamp),
    Result(NodeId, u32, ResultCode, Timestamp),
}

impl Claims {
    /// The machine of worker `me` that may run `capacity` builds at once (0: not a worker).
    pub fn new(me: NodeId, settings: ClaimSettings, capacity: u32) -> Self {
        Claims {
            me,
            settings,
            capacity,
            workers: BTreeMap::new(),
            labels: BTreeMap::new(),
            jobs: BTreeMap::new(),
            running: BTreeSet::new(),
            freed_at: None,
            early: BTreeMap::new(),
            early_count: 0,
            misbehaved: BTreeSet::new(),
            misbehaviour: Vec::new(),
            health_settings: HealthSettings::default(),
            health: BTreeMap::new(),
            health_dirty: false,
            health_at: None,
            released: BTreeMap::new(),
            new_jobs: Vec::new(),
            reports: BTreeMap::new(),
            gone: BTreeSet::new(),
            windows: BTreeMap::new(),
            touched: BTreeSet::new(),
            folded: BTreeMap::new(),
            newest_verdict: BTreeMap::new(),
            open: BTreeSet::new(),
            newest_held: HashMap::new(),
            open_valid: false,
            ticks_since_walk: 0,
        }
    }

    /// The jobs whose state, claims or results may have changed since the last call (a job
    /// learnt, a claim or result seen, a lease lapsed, a job skipped): what a view of the
    /// jobs must look at again, instead of every job.
    pub fn take_touched(&mut self) -> BTreeSet<Hash> {
        self.keep_open_touched();
        std::mem::take(&mut self.touched)
    }

    /// Claims and results seen since the last call that can never count — (author, job,
    /// attempt, why) — each once. The node counts them and shows their authors as misbehaving.
    pub fn misbehaviour(&mut self) -> Vec<(NodeId, Hash, u32, Refusal)> {
        std::mem::take(&mut self.misbehaviour)
    }

    fn misbehaved(&mut self, who: NodeId, job: Hash, attempt: u32, why: Refusal) {
        // Each once; a flood of distinct ones forgets the older ones rather than grow.
        if self.misbehaved.len() >= MAX_EARLY {
            self.misbehaved.clear();
        }
        if self.misbehaved.insert((who, job, attempt, why)) {
            self.misbehaviour.push((who, job, attempt, why));
        }
    }

    // Which claims of a job count, from scratch: a pure function of the claims held and the
    // workers known, so every node that holds the same records agrees. Then the job follows
    // a newer counted attempt, and a counted winner's exception reopens it.
    fn recount(&mut self, id: &Hash, now: Timestamp) {
        let Some(j) = self.jobs.get(id) else {
            return;
        };
        let limit = j.limit();
        let mut counted: BTreeMap<u32, BTreeSet<NodeId>> = BTreeMap::new();
        let mut bad = Vec::new();
        for (&attempt, by) in &j.claims {
            for w in by.keys() {
                if attempt == 0 || attempt > limit {
                    bad.push((*w, attempt, Refusal::BadAttempt));
                } else if let Some(labels) = self.labels.get(w)
                    && !labels_meet(labels, &j.spec.requires)
                {
                    bad.push((*w, attempt, Refusal::WrongLabels));
                } else if !Self::may_claim(&j.spec, w) {
                    let refusal = match j.spec.key.purpose {
                        crate::record::Purpose::Probe { .. } => Refusal::OthersProbe,
                        _ => Refusal::OthersRevalidation,
                    };
                    bad.push((*w, attempt, refusal));
                }
            }
        }
        for attempt in 1..=limit {
            let follows = attempt == 1
                || counted.contains_key(&(attempt - 1))
                || j.voided.contains(&(attempt - 1));
            if !follows {
                break;
            }
            let Some(by) = j.claims.get(&attempt) else {
                if j.voided.contains(&attempt) {
                    continue;
                }
                break;
            };
            let ws: BTreeSet<NodeId> = by
                .keys()
                .filter(|w| {
                    self.labels
                        .get(w)
                        .is_some_and(|l| labels_meet(l, &j.spec.requires))
                        && Self::may_claim(&j.spec, w)
                })
                .copied()
                .collect();
            if !ws.is_empty() {
                counted.insert(attempt, ws);
            } else if !j.voided.contains(&attempt) {
                break;
            }
        }
        let late: BTreeSet<NodeId> = counted
            .values()
            .flatten()
            .filter(|w| self.is_late(&j.spec, w))
            .copied()
            .collect();
        for (w, attempt, why) in bad {
            self.misbehaved(w, *id, attempt, why);
        }
        let j = self.jobs.get_mut(id).expect("looked up above");
        j.counted = counted;
        j.late = late;
        j.settle(now);
        self.health_dirty = true;
        self.follow_up(id, now);
    }

    // The jobs that may be open: the open set while it is valid, else every job held.
    fn maybe_open(&self) -> Box<dyn Iterator<Item = &Job> + '_> {
        if self.open_valid {
            Box::new(self.open.iter().filter_map(|id| self.jobs.get(id)))
        } else {
            Box::new(self.jobs.values())
        }
    }

    // Touched jobs may be open again (a key revoked voids a verdict; every change touches).
    fn keep_open_touched(&mut self) {
        if self.open_valid {
            for id in &self.touched {
                if self.jobs.contains_key(id) {
                    self.open.insert(*id);
                }
            }
        }
    }

    // Brings the open set up to date: every job held, once every `FULL_WALK_EVERY` ticks or
    // when not valid; else the touched ones. Then the final ones leave it, their verdicts
    // kept as the newest of their lines.
    fn refresh_open(&mut self) {
        self.ticks_since_walk += 1;
        if !self.open_valid || self.ticks_since_walk >= FULL_WALK_EVERY {
            self.open = self.jobs.keys().copied().collect();
            self.newest_held.clear();
            for ((builder, branch), order) in &self.newest_verdict {
                let e = self
                    .newest_held
                    .entry(builder.clone())
                    .or_default()
                    .entry(branch.clone())
                    .or_insert(0);
                *e = (*e).max(*order);
            }
            self.open_valid = true;
            self.ticks_since_walk = 0;
        } else {
            self.keep_open_touched();
        }
        let mut done = Vec::new();
        for id in &self.open {
            let Some(j) = self.jobs.get(id) else {
                done.push(*id);
                continue;
            };
            if !j.is_final() {
                continue;
            }
            done.push(*id);
            if j.current().is_some() && j.spec.key.purpose.is_build() {
                let e = self
                    .newest_held
                    .entry(j.spec.key.builder.clone())
                    .or_default()
                    .entry(j.spec.key.branch.clone())
                    .or_insert(0);
                *e = (*e).max(j.spec.order);
            }
        }
        for id in done {
            self.open.remove(&id);
        }
    }

    /// The settings.
    pub fn settings(&self) -> &ClaimSettings {
        &self.settings
    }

    /// Declares a worker and its labels (from its admission). Also used for `me`.
    pub fn worker(&mut self, id: NodeId, labels: BTreeMap<String, String>) {
        let changed = self.labels.get(&id) != Some(&labels);
        self.labels.insert(id, labels.clone());
        self.workers
            .entry(id)
            .and_modify(|w| w.labels = labels.clone())
            .or_insert(Worker {
                labels,
                heard: None,
                running: 0,
                capacity: 0,
            });
        if changed {
            self.recount_claimed_by(&id);
        }
    }

    // Claims of `id` may count differently now that its labels (or its membership) changed.
    fn recount_claimed_by(&mut self, id: &NodeId) {
        let touched: Vec<Hash> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.claims.values().any(|c| c.contains_key(id)))
            .map(|(h, _)| *h)
            .collect();
        for h in touched {
            let since = self.jobs[&h].open_since;
            self.recount(&h, since);
            self.touched.insert(h);
        }
    }

    /// Whether the worker is known.
    pub fn has_worker(&self, id: &NodeId) -> bool {
        self.workers.contains_key(id)
    }

    /// The workers heard from within the liveness window at `now` (and this node).
    pub fn live_workers(&self, now: Timestamp) -> Vec<NodeId> {
        self.workers
            .iter()
            .filter(|(id, w)| {
                **id == self.me
                    || (!self.gone.contains(id)
                        && w.heard.is_some_and(|h| now.since(h) <= self.window_of(id)))
            })
            .map(|(id, _)| *id)
            .collect()
    }

    // Builds each worker runs, as the records say (a claim that wins the job's current attempt
    // and has no result yet). Fresher than heartbeats: it changes with every claim and result.
    fn busy(&self) -> BTreeMap<NodeId, u32> {
        let mut busy = BTreeMap::new();
        for j in self.maybe_open() {
            if j.is_final() {
                continue;
            }
            if let Some(w) = j.winner(j.attempt)
                && !j.results.contains_key(&(j.attempt, w))
            {
                *busy.entry(w).or_insert(0) += 1;
            }
        }
        busy
    }

    /// The live workers whose labels meet `requires`, with a free slot and not quarantined, now
    /// (this node by its own free slots): the workers a culprit search may ask for probes.
    pub fn idle_workers(&self, requires: &BTreeMap<String, String>, now: Timestamp) -> Vec<NodeId> {
        let busy = self.busy();
        self.workers
            .iter()
            .filter(|(id, w)| {
                if !labels_meet(&w.labels, requires) || self.is_quarantined(id) {
                    return false;
                }
                if **id == self.me {
                    return self.free() > 0;
                }
                w.heard.is_some_and(|h| now.since(h) <= self.window_of(id))
                    && !self.gone.contains(*id)
                    && busy.get(*id).copied().unwrap_or(0) < w.capacity
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Forgets a worker (revoked): it is never ranked again. What it claimed and reported
    /// before stands (see [`Claims::forget`] for a key whose every record must stop counting).
    pub fn remove_worker(&mut self, id: &NodeId) {
        self.workers.remove(id);
    }

    /// Disregards everything `id` ever claimed or reported (a key revoked as compromised):
    /// it is never ranked again, and a job whose claim or result came from it is open again
    /// in a new attempt, unless another worker's verdict stands. Such a job that no one else
    /// ever claimed is skipped like any never-claimed job once a newer commit has a verdict.
    pub fn forget(&mut self, id: &NodeId, now: Timestamp) {
        // Verdicts go: the newest of a line may be older now.
        self.open_valid = false;
        self.workers.remove(id);
        self.labels.remove(id);
        for early in self.early.values_mut() {
            early.retain(|e| match e {
                Early::Claim(w, ..) | Early::Result(w, ..) => w != id,
            });
        }
        self.early_count = self.early.values().map(Vec::len).sum();
        for j in self.jobs.values_mut() {
            let touched = j.claims.values().any(|c| c.contains_key(id))
                || j.results.keys().any(|(_, w)| w == id);
            if !touched {
                continue;
            }
            self.touched.insert(j.spec.id);
            let held_current = j.claims.get(&j.attempt).is_some_and(|c| c.contains_key(id));
            for (attempt, c) in j.claims.iter_mut() {
                if c.remove(id).is_some() {
                    j.voided.insert(*attempt);
                }
            }
            j.claims.retain(|_, c| !c.is_empty());
            j.results.retain(|(_, w), _| w != id);
            j.activity.retain(|(_, w), _| w != id);
            j.avoid.remove(id);
            if j.is_final() {
                continue;
            }
            // Its verdict no longer counts; a job it held or finished goes to a fresh attempt
            // that no node has seen a claim for.
            if held_current {
                let top = j.claims.keys().next_back().copied().unwrap_or(0);
                j.attempt = j.attempt.max(top) + 1;
                j.open_since = now;
                j.given_up = false;
            }
        }
        let ids: Vec<Hash> = self.jobs.keys().copied().collect();
        for h in ids {
            let since = self.jobs[&h].open_since;
            self.recount(&h, since.max(now));
        }
    }

    /// A node's heartbeat (any role, this node's own included) and the peers it lost every
    /// connection to and has not heard from since: see "Leases" above.
    pub fn lost_report(&mut self, reporter: NodeId, lost: BTreeSet<NodeId>, now: Timestamp) {
        let changes = !lost.is_empty()
            || self
                .reports
                .get(&reporter)
                .is_some_and(|(_, l)| !l.is_empty());
        self.reports.insert(reporter, (now, lost));
        if changes {
            self.refresh_gone(now);
        }
    }

    /// The workers that more than half of the other live nodes lost (see "Leases").
    pub fn gone(&self) -> &BTreeSet<NodeId> {
        &self.gone
    }

    fn refresh_gone(&mut self, now: Timestamp) {
        // The common case, and every tick: nobody lost anyone.
        if self.gone.is_empty() && self.reports.values().all(|(_, l)| l.is_empty()) {
            return;
        }
        let live = |r: &NodeId, t: &Timestamp| now.since(*t) <= self.window_of(r);
        let mut gone = BTreeSet::new();
        for (reporter, (t, lost)) in &self.reports {
            if !live(reporter, t) {
                continue;
            }
            for x in lost {
                if *x == self.me || gone.contains(x) || !self.workers.contains_key(x) {
                    continue;
                }
                // Among the live nodes other than x, how many lost it.
                let (mut others, mut losing) = (0usize, 0usize);
                for (r, (t, l)) in &self.reports {
                    if r != x && live(r, t) {
                        others += 1;
                        losing += usize::from(l.contains(x));
                    }
                }
                if losing * 2 > others {
                    gone.insert(*x);
                }
            }
        }
        self.gone = gone;
    }

    /// How long `id` counts as live after each heartbeat, when it beats less often than this
    /// node (see [`crate::wire::Heartbeat::live_for`]).
    pub fn live_for(&mut self, id: NodeId, window: Duration) {
        if window > self.settings.liveness_window {
            self.windows.insert(id, window);
        } else {
            self.windows.remove(&id);
        }
    }

    fn window_of(&self, id: &NodeId) -> Duration {
        self.windows
            .get(id)
            .copied()
            .unwrap_or(self.settings.liveness_window)
    }

    /// A heartbeat: the worker is alive and this busy.
    pub fn heartbeat(&mut self, id: NodeId, running: u32, capacity: u32, now: Timestamp) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.heard = Some(now);
            w.running = running;
            w.capacity = capacity;
        }
    }

    /// A job became known.
    pub fn job(&mut self, spec: JobSpec, now: Timestamp) {
        let id = spec.id;
        if self.jobs.contains_key(&id) {
            return;
        }
        self.jobs.insert(
            id,
            Job {
                spec,
                attempt: 1,
                open_since: now,
                claims: BTreeMap::new(),
                counted: BTreeMap::new(),
                voided: BTreeSet::new(),
                activity: BTreeMap::new(),
                avoid: BTreeSet::new(),
                late: BTreeSet::new(),
                results: BTreeMap::new(),
                skipped: false,
                given_up: false,
                cancelled: false,
            },
        );
        self.touched.insert(id);
        let held = self.early.remove(&id).unwrap_or_default();
        self.early_count = self.early_count.saturating_sub(held.len());
        for e in held {
            match e {
                Early::Claim(w, a, t) => self.claim(w, id, a, t),
                Early::Result(w, a, c, t) => self.result(w, id, a, c, t),
            }
        }
    }

    // Keeps a claim or result of a job not known yet, up to `MAX_EARLY` of them: claims for
    // made-up jobs must not grow memory without bound. Past the cap one is dropped, which
    // costs nothing in the node: a job that becomes known replays its stored claims and
    // results.
    fn hold_early(&mut self, job: Hash, e: Early) {
        if self.early_count >= MAX_EARLY {
            return;
        }
        self.early_count += 1;
        self.early.entry(job).or_default().push(e);
    }

    /// Whether the job is known.
    pub fn knows(&self, job: &Hash) -> bool {
        self.jobs.contains_key(job)
    }

    /// A claim record was seen (this node's own included).
    pub fn claim(&mut self, worker: NodeId, job: Hash, attempt: u32, now: Timestamp) {
        let Some(j) = self.jobs.get_mut(&job) else {
            self.hold_early(job, Early::Claim(worker, attempt, now));
            return;
        };
        j.claims
            .entry(attempt)
            .or_default()
            .entry(worker)
            .or_insert(now);
        self.touched.insert(job);
        // Whether it counts, and whether the job follows it to a newer attempt.
        self.recount(&job, now);
    }

    /// A progress signal: the worker is still running (job, attempt).
    pub fn progress(&mut self, worker: NodeId, job: Hash, attempt: u32, now: Timestamp) {
        if let Some(j) = self.jobs.get_mut(&job) {
            let e = j.activity.entry((attempt, worker)).or_insert(now);
            *e = (*e).max(now);
        }
    }

    /// A result record was seen (this node's own included).
    pub fn result(
        &mut self,
        worker: NodeId,
        job: Hash,
        attempt: u32,
        code: ResultCode,
        now: Timestamp,
    ) {
        if worker == self.me && self.running.remove(&(job, attempt)) {
            self.freed_at = Some(now);
        }
        let Some(j) = self.jobs.get_mut(&job) else {
            self.hold_early(job, Early::Result(worker, attempt, code, now));
            return;
        };
        j.results.insert((attempt, worker), code);
        self.touched.insert(job);
        let claimed = j
            .claims
            .get(&attempt)
            .is_some_and(|c| c.contains_key(&worker));
        if code == ResultCode::Exception && claimed {
            j.avoid.insert(worker);
        }
        if !claimed {
            // An author's own claim always comes before its result in its chain: a result
            // for an attempt it never claimed is made up.
            self.misbehaved(worker, job, attempt, Refusal::Unclaimed);
            return;
        }
        j.settle(now);
        self.health_dirty = true;
        self.follow_up(&job, now);
    }

    /// A caller stopped `job` (an entitled `Cancel` record): unless it has a verdict already,
    /// it ends cancelled, is never claimed or retried again, and this node abandons its build
    /// of it at the next tick. Returns whether the job is known.
    pub fn cancel(&mut self, job: &Hash) -> bool {
        let Some(j) = self.jobs.get_mut(job) else {
            return false;
        };
        if !j.cancelled {
            j.cancelled = true;
            self.touched.insert(*job);
        }
        true
    }

    /// This node stopped running (job, attempt) and no result record of it will come (its claim
    /// or its result could not be written). Its slot is free again; a claim it won and never
    /// reported lapses like any other.
    pub fn stopped(&mut self, job: Hash, attempt: u32, now: Timestamp) {
        if self.running.remove(&(job, attempt)) {
            self.freed_at = Some(now);
        }
    }

    /// Builds this node runs now.
    pub fn running(&self) -> impl Iterator<Item = &(Hash, u32)> {
        self.running.iter()
    }

    /// Free build slots here.
    pub fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.running.len() as u32)
    }

    /// This node's capacity.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Changes this node's capacity (0: claim nothing, as while a self-check fails). Builds
    /// running go on.
    pub fn set_capacity(&mut self, capacity: u32) {
        self.capacity = capacity;
    }

    /// The winner of (job, attempt) among the claims seen.
    pub fn winner(&self, job: &Hash, attempt: u32) -> Option<NodeId> {
        self.jobs.get(job).and_then(|j| j.winner(attempt))
    }

    /// Where a job stands.
    pub fn state(&self, job: &Hash) -> Option<JobState> {
        self.jobs.get(job).map(|j| j.state())
    }

    /// How many jobs the machine holds.
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// Every job known, with its state.
    pub fn jobs(&self) -> impl Iterator<Item = (&JobSpec, JobState)> {
        self.jobs.values().map(|j| (&j.spec, j.state()))
    }

    fn eligible(
        &self,
        spec: &JobSpec,
        now: Timestamp,
        busy: &BTreeMap<NodeId, u32>,
    ) -> Vec<NodeId> {
        self.workers
            .iter()
            .filter(|(id, w)| {
                if !labels_meet(&w.labels, &spec.requires) || !self.may_rank(spec, id) {
                    return false;
                }
                if **id == self.me {
                    return self.free() > 0;
                }
                let live = w.heard.is_some_and(|h| now.since(h) <= self.window_of(id))
                    && !self.gone.contains(id);
                live && busy.get(id).copied().unwrap_or(0) < w.capacity
            })
            .map(|(id, _)| *id)
            .collect()
    }

    // Whether this node's labels and trust let it build `job` (what [`Claims::eligible`] asks
    // of it, without the others).
    fn may_build(&self, job: &Hash) -> bool {
        let (Some(j), Some(me)) = (self.jobs.get(job), self.workers.get(&self.me)) else {
            return false;
        };
        labels_meet(&me.labels, &j.spec.requires) && self.may_rank(&j.spec, &self.me)
    }

    /// The order in which eligible workers take (job, attempt) now.
    pub fn order(&self, job: &Hash, now: Timestamp) -> Vec<NodeId> {
        self.order_with(job, now, &self.busy())
    }

    fn order_with(&self, job: &Hash, now: Timestamp, busy: &BTreeMap<NodeId, u32>) -> Vec<NodeId> {
        let Some(j) = self.jobs.get(job) else {
            return Vec::new();
        };
        let mut order = self.eligible(&j.spec, now, busy);
        order
            .sort_by_cached_key(|w| (self.is_late(&j.spec, w), j.avoid.contains(w), score(job, w)));
        order
    }

    // A slot that has just come free waits its turn in the order of every live worker, busy
    // or not, before it takes `job`: workers whose builds end at the same instant each still
    // count the other busy, and would otherwise all take the newest job. A tenth of a step per
    // rank, at most half a step: long enough for a claim to cross the mesh, short beside a
    // build. Meanwhile the slot takes a job it is first for, so a queue drains as fast. Past
    // half a step no rank can make it wait: nothing to compute.
    fn settled(&self, job: &Hash, now: Timestamp) -> Timestamp {
        let step = self.settings.step;
        let Some(freed) = self.freed_at.filter(|f| now < f.plus(step / 2)) else {
            return now;
        };
        let rank = self
            .order_with(job, now, &BTreeMap::new())
            .iter()
            .position(|w| *w == self.me)
            .unwrap_or(0);
        freed.plus((step / 10 * rank as u32).min(step / 2))
    }

    /// Advances time to `now`: leases lapse, crossed claims resolve, jobs are skipped or
    /// claimed. Returns what this node must do.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Action> {
        let mut actions = Vec::new();
        let lease = self.settings.lease;
        self.refresh_health_at_tick(now);
        self.refresh_gone(now);
        self.refresh_open();

        // Leases and crossed claims.
        for id in &self.open {
            let Some(j) = self.jobs.get_mut(id) else {
                continue;
            };
            if j.is_final() {
                continue;
            }
            let a = j.attempt;
            if let Some(w) = j.winner(a) {
                let running_here = w == self.me && self.running.contains(&(*id, a));
                if !running_here {
                    let claimed = j.claims[&a][&w];
                    let last = j
                        .activity
                        .get(&(a, w))
                        .copied()
                        .unwrap_or(claimed)
                        .max(claimed);
                    if now.since(last) > lease || self.gone.contains(&w) {
                        j.avoid.insert(w);
                        j.reopen(now);
                        self.touched.insert(*id);
                    }
                }
            }
        }
        let mine: Vec<(Hash, u32)> = self.running.iter().copied().collect();
        for (job, attempt) in mine {
            let Some(j) = self.jobs.get(&job) else {
                continue;
            };
            let lost = j.cancelled || j.winner(attempt).is_some_and(|w| w != self.me);
            let superseded = j
                .counted
                .range(attempt + 1..)
                .any(|(_, c)| c.iter().any(|w| *w != self.me));
            if lost || superseded {
                self.running.remove(&(job, attempt));
                self.freed_at = Some(now);
                actions.push(Action::Abandon { job, attempt });
            }
        }

        // Collapsing: never-claimed jobs behind a newer verdict are skipped. Every tick asks
        // this of every open job.
        let skip: Vec<Hash> = self
            .open
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|j| {
                !j.is_final()
                    && j.counted.is_empty()
                    && j.spec.key.purpose.is_build()
                    && self
                        .newest_held
                        .get(&j.spec.key.builder)
                        .and_then(|b| b.get(&j.spec.key.branch))
                        .is_some_and(|&o| o > j.spec.order)
            })
            .map(|j| j.spec.id)
            .collect();
        for id in skip {
            if let Some(j) = self.jobs.get_mut(&id) {
                j.skipped = true;
                self.touched.insert(id);
            }
        }

        // Claims: by priority, then newest commit first.
        if self.free() == 0 {
            return actions;
        }
        let mut open: Vec<(i32, u64, Hash)> = self
            .open
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|j| !j.is_final() && !j.counted.contains_key(&j.attempt))
            .map(|j| (j.spec.priority, j.spec.order, j.spec.id))
            .collect();
        open.sort_by(|a, b| b.cmp(a));
        let busy = self.busy();
        for (_, _, id) in open {
            if self.free() == 0 {
                break;
            }
            // A job this node may not build is not ranked: a builder whose only platform is
            // offline keeps its jobs open for as long, and every tick asks.
            if !self.may_build(&id) {
                continue;
            }
            let order = self.order_with(&id, now, &busy);
            let Some(rank) = order.iter().position(|w| *w == self.me) else {
                continue;
            };
            if now < self.settled(&id, now) {
                continue;
            }
            let wait = self.late_wait(&id, now);
            let j = self.jobs.get_mut(&id).expect("listed above");
            let due = j
                .open_since
                .plus((self.settings.step * rank as u32).max(wait));
            if now < due {
                continue;
            }
            let attempt = j.attempt;
            if attempt > j.limit() {
                continue;
            }
            let key = j.spec.key.clone();
            j.claims.entry(attempt).or_default().insert(self.me, now);
            self.touched.insert(id);
            self.recount(&id, now);
            let j = self.jobs.get_mut(&id).expect("listed above");
            if !j
                .counted
                .get(&attempt)
                .is_some_and(|c| c.contains(&self.me))
            {
                // A claim that would not count (out of sequence) is not made.
                if let Some(c) = j.claims.get_mut(&attempt) {
                    c.remove(&self.me);
                }
                j.claims.retain(|_, c| !c.is_empty());
                continue;
            }
            self.running.insert((id, attempt));
            actions.push(Action::Claim {
                job: id,
                key,
                attempt,
                lease_ms: lease.as_millis() as u64,
            });
        }
        actions
    }
}

impl Job {
    fn winner(&self, attempt: u32) -> Option<NodeId> {
        let claimants = self.counted.get(&attempt)?;
        // One claimant, the common case, wins without a hash: every tick asks of every job.
        if claimants.len() == 1 {
            return claimants.first().copied();
        }
        claimants
            .iter()
            .min_by_key(|w| (self.late.contains(w), score(&self.spec.id, w)))
            .copied()
    }

    // The attempts the job may take: its builder's limit, plus attempts voided by a key
    // revoked as compromised.
    fn limit(&self) -> u32 {
        self.spec
            .max_attempts
            .max(1)
            .saturating_add(self.voided.len() as u32)
    }

    // The verdict that counts: of the highest attempt whose winner reported one.
    fn current(&self) -> Option<(u32, NodeId, ResultCode)> {
        self.counted.keys().rev().find_map(|&a| {
            let w = self.winner(a)?;
            let c = *self.results.get(&(a, w))?;
            c.is_verdict().then_some((a, w, c))
        })
    }

    // After a claim or a result: follow a newer counted attempt; a counted winner's exception
    // or cancellation of the current attempt reopens the job, elsewhere first.
    fn settle(&mut self, now: Timestamp) {
        if self.is_final() {
            return;
        }
        if let Some(&top) = self.counted.keys().next_back()
            && top > self.attempt
        {
            self.attempt = top;
            self.open_since = now;
        }
        while !self.is_final() {
            let a = self.attempt;
            let Some(w) = self.winner(a) else {
                break;
            };
            match self.results.get(&(a, w)) {
                Some(ResultCode::Exception | ResultCode::Cancelled) => {
                    self.avoid.insert(w);
                    self.reopen(now);
                    if self.attempt == a {
                        break;
                    }
                }
                _ => break,
            }
        }
    }

    fn is_final(&self) -> bool {
        self.skipped || self.given_up || self.cancelled || self.current().is_some()
    }

    fn reopen(&mut self, now: Timestamp) {
        if self.attempt >= self.limit() {
            self.given_up = true;
            return;
        }
        self.attempt += 1;
        self.open_since = now;
    }

    fn state(&self) -> JobState {
        if let Some((attempt, worker, result)) = self.current() {
            return JobState::Done {
                attempt,
                worker,
                result,
            };
        }
        if self.cancelled {
            return JobState::Cancelled {
                attempt: self.attempt,
            };
        }
        if self.skipped {
            return JobState::Skipped;
        }
        if self.given_up {
            return JobState::GivenUp {
                attempts: self.attempt,
            };
        }
        match self.winner(self.attempt) {
            Some(worker) => JobState::Running {
                attempt: self.attempt,
                worker,
            },
            None => JobState::Pending {
                attempt: self.attempt,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    const T: Timestamp = Timestamp(1_000_000);

    fn at(ms: u64) -> Timestamp {
        Timestamp(T.0 + ms)
    }

    fn ids(n: u8) -> Vec<NodeId> {
        (1..=n)
            .map(|i| SecretKey::from_seed([i; 32]).id())
            .collect()
    }

    pub(super) fn spec(n: u64) -> JobSpec {
        let key = JobKey {
            builder: "b".into(),
            repo: "r".into(),
            branch: "main".into(),
            sha: format!("{n:040x}"),
            purpose: Default::default(),
        };
        JobSpec {
            id: key.id(),
            key,
            requires: BTreeMap::new(),
            priority: 0,
            order: n,
            max_attempts: 4,
            confirm: ConfirmMode::None,
        }
    }

    // `n` workers' machines that all learnt job 1 at T, and its order.
    fn one_job(n: u8) -> (Vec<Claims>, JobSpec, Vec<NodeId>) {
        let w = ids(n);
        let mut m = machines(&w);
        let job = spec(1);
        for c in m.iter_mut() {
            c.job(job.clone(), T);
        }
        let order = m[0].order(&job.id, T);
        (m, job, order)
    }

    fn machines(workers: &[NodeId]) -> Vec<Claims> {
        workers
            .iter()
            .map(|me| {
                let mut c = Claims::new(*me, ClaimSettings::default(), 1);
                for w in workers {
                    c.worker(*w, BTreeMap::new());
                    c.heartbeat(*w, 0, 1, T);
                }
                c
            })
            .collect()
    }

    #[test]
    fn the_first_in_order_claims_at_once_and_the_others_wait_a_step_each() {
        let (mut m, _, order) = one_job(3);
        assert_eq!(order.len(), 3);
        for c in m.iter_mut() {
            let acts = c.tick(T);
            let claimed = acts.iter().any(|a| matches!(a, Action::Claim { .. }));
            assert_eq!(claimed, c.me == order[0], "only the first claims at once");
        }
        // Without hearing the first's claim, the second claims one step later, the third two.
        let second = m.iter().position(|c| c.me == order[1]).unwrap();
        assert!(m[second].tick(at(499)).is_empty());
        assert!(!m[second].tick(at(500)).is_empty());
    }

    #[test]
    fn crossed_claims_resolve_to_the_same_winner_and_the_loser_abandons() {
        let (mut m, job, order) = one_job(2);
        // Both claim (the second by its own late tick, not having heard the first).
        let first = m.iter().position(|c| c.me == order[0]).unwrap();
        let second = 1 - first;
        assert!(!m[first].tick(T).is_empty());
        assert!(!m[second].tick(at(600)).is_empty());
        for c in m.iter_mut() {
            c.claim(order[0], job.id, 1, at(700));
            c.claim(order[1], job.id, 1, at(700));
        }
        assert_eq!(m[0].winner(&job.id, 1), Some(order[0]));
        assert_eq!(m[1].winner(&job.id, 1), Some(order[0]));
        assert_eq!(
            m[second].tick(at(701)),
            vec![Action::Abandon {
                job: job.id,
                attempt: 1
            }]
        );
        assert!(m[first].tick(at(701)).is_empty());
    }

    #[test]
    fn a_cancelled_job_is_abandoned_by_its_worker_never_retried_and_a_verdict_stands() {
        let (mut m, job, order) = one_job(2);
        let first = m.iter().position(|c| c.me == order[0]).unwrap();
        assert!(!m[first].tick(T).is_empty());
        for c in m.iter_mut() {
            c.claim(order[0], job.id, 1, at(10));
            assert!(c.cancel(&job.id));
        }
        assert_eq!(
            m[first].tick(at(20)),
            vec![Action::Abandon {
                job: job.id,
                attempt: 1
            }]
        );
        // The worker's cancelled result does not reopen it, nor does a lapsed lease.
        for c in m.iter_mut() {
            c.result(order[0], job.id, 1, ResultCode::Cancelled, at(30));
            assert!(c.tick(at(60_000)).is_empty(), "never claimed again");
            assert_eq!(c.state(&job.id), Some(JobState::Cancelled { attempt: 1 }));
        }
        // A pending job cancelled is not claimed; a verdict that came anyway stands.
        let (mut m, job, order) = one_job(2);
        for c in m.iter_mut() {
            c.cancel(&job.id);
            assert!(c.tick(T).is_empty());
            c.claim(order[0], job.id, 1, T);
            c.result(order[0], job.id, 1, ResultCode::Success, T);
            assert!(matches!(c.state(&job.id), Some(JobState::Done { .. })));
        }
        assert!(!m[0].cancel(&Hash::of(b"unknown")));
    }

    // Both workers busy, new jobs queued; both builds end at the same instant and neither has
    // heard the other's result: each counts the other busy and is alone in its order.
    fn two_busy_then_freed_together(queued: &[u64]) -> (Vec<Claims>, Vec<Vec<Hash>>) {
        let w = ids(2);
        let mut m = machines(&w);
        let (p, q) = (spec(1), spec(2));
        for c in m.iter_mut() {
            c.job(p.clone(), T);
            c.job(q.clone(), T);
            c.claim(w[0], p.id, 1, T);
            c.claim(w[1], q.id, 1, T);
        }
        m[0].running.insert((p.id, 1));
        m[1].running.insert((q.id, 1));
        for c in m.iter_mut() {
            for n in queued {
                c.job(spec(*n), at(100));
            }
            assert!(c.tick(at(100)).is_empty(), "both busy");
        }
        m[0].result(w[0], p.id, 1, ResultCode::Success, at(1000));
        m[1].result(w[1], q.id, 1, ResultCode::Success, at(1000));
        let mut claimed = vec![Vec::new(), Vec::new()];
        for t in (1000..=1040).step_by(10) {
            for (i, c) in m.iter_mut().enumerate() {
                for a in c.tick(at(t)) {
                    if let Action::Claim { job, .. } = a {
                        claimed[i].push(job);
                    }
                }
            }
        }
        (m, claimed)
    }

    #[test]
    fn workers_freed_together_take_different_queued_jobs_at_once() {
        let (_, claimed) = two_busy_then_freed_together(&[10, 11, 12, 13, 14, 15]);
        assert_eq!(claimed[0].len(), 1, "{claimed:?}");
        assert_eq!(claimed[1].len(), 1, "{claimed:?}");
        assert_ne!(claimed[0], claimed[1], "no crossed claim");
    }

    #[test]
    fn of_workers_freed_together_only_the_first_in_order_takes_a_lone_job_at_once() {
        let (mut m, claimed) = two_busy_then_freed_together(&[10]);
        let job = spec(10).id;
        let first = m[0].order_with(&job, at(1000), &BTreeMap::new())[0];
        let i = m.iter().position(|c| c.me == first).unwrap();
        assert_eq!(claimed[i], vec![job]);
        assert!(claimed[1 - i].is_empty(), "{claimed:?}");
        // Its claim arrives within the settling time: the other never claims.
        m[1 - i].claim(first, job, 1, at(1045));
        assert!(m[1 - i].tick(at(2000)).is_empty());
    }

    #[test]
    fn a_build_stopped_without_a_result_frees_its_slot_and_its_claim_lapses() {
        let w = ids(2);
        let mut m = machines(&w);
        let (a, b) = (spec(1), spec(2));
        m[0].job(a.clone(), T);
        let first = m[0].order(&a.id, T)[0];
        let i = m.iter().position(|c| c.me == first).unwrap();
        let c = &mut m[i];
        c.job(a.clone(), T);
        assert_eq!(c.tick(T).len(), 1, "claims the job");
        c.job(b.clone(), at(10));
        assert_eq!(c.free(), 0);
        // Its result could not be written: the slot is free again at once...
        c.stopped(a.id, 1, at(20));
        assert_eq!(c.free(), 1);
        // ...and the unreported claim lapses with the lease: the other worker goes first now.
        c.heartbeat(w[1 - i], 0, 1, at(3100));
        c.tick(at(3100));
        assert_eq!(c.state(&a.id), Some(JobState::Pending { attempt: 2 }));
        assert_eq!(c.order(&a.id, at(3100)).first(), Some(&w[1 - i]));
    }

    #[test]
    fn a_silent_winner_loses_its_lease_and_the_next_takes_attempt_two() {
        let (mut m, job, order) = one_job(3);
        let observer = m.iter().position(|c| c.me == order[1]).unwrap();
        let o = &mut m[observer];
        o.claim(order[0], job.id, 1, T);
        o.progress(order[0], job.id, 1, at(1000));
        // Keep the other workers alive; the winner goes silent after 1 s.
        for t in [1000, 2000, 3000, 4000] {
            o.heartbeat(order[1], 0, 1, at(t));
            o.heartbeat(order[2], 0, 1, at(t));
        }
        assert!(
            o.tick(at(4000)).is_empty(),
            "lease holds until 3 s of silence"
        );
        let acts = o.tick(at(4001));
        assert!(
            matches!(acts.as_slice(), [Action::Claim { attempt: 2, .. }]),
            "the silent winner goes to the back; {acts:?}"
        );
    }

    // Four nodes: the winner, the observer (next in order), another worker, and a node that
    // is no worker (an announcer: it counts among the nodes that lost the winner).
    #[test]
    fn a_winner_that_most_live_nodes_lost_is_gone_at_once_and_not_ranked() {
        let (mut m, job, order) = one_job(3);
        let observer = m.iter().position(|c| c.me == order[1]).unwrap();
        let announcer = SecretKey::from_seed([99; 32]).id();
        let o = &mut m[observer];
        o.claim(order[0], job.id, 1, T);
        o.progress(order[0], job.id, 1, at(500));
        let lost = BTreeSet::from([order[0]]);
        for id in [order[0], order[1], order[2], announcer] {
            o.lost_report(id, BTreeSet::new(), at(500));
        }
        // One of the three others lost it: no majority, the lease holds.
        o.lost_report(order[1], lost.clone(), at(600));
        assert!(o.gone().is_empty());
        assert!(
            o.tick(at(700)).is_empty(),
            "one report of three is not a majority"
        );
        // Two of three: gone. Its lease lapses at once, long before 3 s of silence.
        o.lost_report(announcer, lost.clone(), at(700));
        assert_eq!(o.gone(), &lost);
        let acts = o.tick(at(710));
        assert!(
            matches!(acts.as_slice(), [Action::Claim { attempt: 2, .. }]),
            "the gone winner's job goes to the next at once; {acts:?}"
        );
        assert!(!o.live_workers(at(710)).contains(&order[0]));
        // Heard again (the reporters reconnected): ranked again.
        o.lost_report(order[1], BTreeSet::new(), at(900));
        o.lost_report(announcer, BTreeSet::new(), at(900));
        o.heartbeat(order[0], 0, 1, at(900));
        assert!(o.gone().is_empty());
        assert!(o.live_workers(at(900)).contains(&order[0]));
    }

    #[test]
    fn a_worker_that_beats_less_often_stays_ranked_for_its_longer_window() {
        let w = ids(3);
        let mut m = machines(&w);
        let o = &mut m[0];
        o.heartbeat(w[1], 0, 1, T);
        o.heartbeat(w[2], 0, 1, T);
        // w[1] beats every 4 s in a large mesh: live for 12 s after each heartbeat.
        o.live_for(w[1], Duration::from_secs(12));
        o.live_for(w[2], Duration::from_secs(3));
        let live = o.live_workers(at(5_000));
        assert!(live.contains(&w[1]) && !live.contains(&w[2]), "{live:?}");
        assert!(!o.live_workers(at(12_500)).contains(&w[1]));
        // Its reports of lost peers count for as long.
        o.lost_report(w[1], BTreeSet::from([w[2]]), at(5_000));
        assert_eq!(
            o.gone(),
            &BTreeSet::from([w[2]]),
            "the only other live node lost it"
        );
    }

    #[test]
    fn reports_of_nodes_no_longer_live_do_not_count() {
        let w = ids(3);
        let mut m = machines(&w);
        let o = &mut m[0];
        let lost = BTreeSet::from([w[2]]);
        o.lost_report(w[0], lost.clone(), T);
        o.lost_report(w[1], lost.clone(), T);
        assert_eq!(o.gone(), &lost, "both others lost it");
        // Half is not more than half.
        o.lost_report(w[0], BTreeSet::new(), at(100));
        assert!(o.gone().is_empty());
        // Nor does a node count itself gone, whatever the others say.
        o.lost_report(w[1], BTreeSet::from([w[0]]), at(100));
        o.lost_report(w[2], BTreeSet::from([w[0]]), at(100));
        assert!(o.gone().is_empty());
        // A report older than the liveness window counts for nothing: with four nodes, two
        // reports of three would make w3 gone, but one of them is stale.
        let w = ids(4);
        let mut m = machines(&w);
        let o = &mut m[0];
        let lost = BTreeSet::from([w[3]]);
        o.lost_report(w[0], BTreeSet::new(), T);
        o.lost_report(w[1], lost.clone(), T);
        o.lost_report(w[2], lost.clone(), T);
        assert_eq!(o.gone(), &lost);
        o.lost_report(w[0], BTreeSet::new(), at(4_000));
        o.lost_report(w[2], lost.clone(), at(4_000));
        assert!(o.gone().is_empty(), "w1's report is stale: one of two");
    }

    #[test]
    fn exception_retries_elsewhere_and_verdict_ends_the_job() {
        let w = ids(2);
        let mut m = machines(&w);
        let job = spec(1);
        let c = &mut m[0];
        c.job(job.clone(), T);
        let first = c.order(&job.id, T)[0];
        c.claim(first, job.id, 1, T);
        c.result(first, job.id, 1, ResultCode::Exception, at(10));
        assert_eq!(c.state(&job.id), Some(JobState::Pending { attempt: 2 }));
        assert_eq!(c.order(&job.id, at(10)).last(), Some(&first));
        let other = *c.order(&job.id, at(10)).first().unwrap();
        c.claim(other, job.id, 2, at(20));
        c.result(other, job.id, 2, ResultCode::Failure, at(30));
        assert_eq!(
            c.state(&job.id),
            Some(JobState::Done {
                attempt: 2,
                worker: other,
                result: ResultCode::Failure
            })
        );
        // A late verdict of attempt 1 does not override attempt 2's.
        c.result(first, job.id, 1, ResultCode::Success, at(40));
        assert!(matches!(
            c.state(&job.id),
            Some(JobState::Done {
                attempt: 2,
                result: ResultCode::Failure,
                ..
            })
        ));
    }

    #[test]
    fn newest_first_and_older_unclaimed_commits_are_skipped() {
        let w = ids(1);
        let mut m = machines(&w);
        let c = &mut m[0];
        for n in 1..=3 {
            c.job(spec(n), T);
        }
        let acts = c.tick(T);
        assert_eq!(acts.len(), 1);
        assert!(
            matches!(&acts[0], Action::Claim { job, .. } if *job == spec(3).id),
            "newest first"
        );
        c.claim(w[0], spec(3).id, 1, T);
        c.result(w[0], spec(3).id, 1, ResultCode::Success, at(10));
        assert!(c.tick(at(20)).is_empty());
        assert_eq!(c.state(&spec(1).id), Some(JobState::Skipped));
        assert_eq!(c.state(&spec(2).id), Some(JobState::Skipped));
    }

    #[test]
    fn a_compromised_workers_verdicts_are_forgotten_and_only_the_newest_commit_is_rebuilt() {
        let w = ids(2);
        let mut m = machines(&w);
        let c = &mut m[0];
        let bad = w[1];
        for n in 1..=3 {
            c.job(spec(n), T);
        }
        // The bad worker built commits 2 and 3 red; commit 1 went green by the good one.
        c.claim(w[0], spec(1).id, 1, T);
        c.result(w[0], spec(1).id, 1, ResultCode::Success, at(10));
        for n in 2..=3 {
            c.claim(bad, spec(n).id, 1, T);
            c.result(bad, spec(n).id, 1, ResultCode::Failure, at(10));
        }
        assert!(c.tick(at(20)).is_empty());
        c.forget(&bad, at(30));
        // Its verdicts are gone: the newest commit is built again by someone else in a fresh
        // attempt, the older one of the bad worker is skipped behind it once that has a
        // verdict, and the good worker's verdict stands.
        assert_eq!(c.state(&spec(3).id), Some(JobState::Pending { attempt: 2 }));
        assert_eq!(c.order(&spec(3).id, at(30)), vec![w[0]]);
        let acts = c.tick(at(30));
        assert!(
            matches!(acts.as_slice(), [Action::Claim { job, attempt: 2, .. }] if *job == spec(3).id),
            "{acts:?}"
        );
        c.claim(w[0], spec(3).id, 2, at(30));
        c.result(w[0], spec(3).id, 2, ResultCode::Success, at(40));
        assert!(c.tick(at(50)).is_empty());
        assert_eq!(c.state(&spec(2).id), Some(JobState::Skipped));
        assert!(matches!(
            c.state(&spec(1).id),
            Some(JobState::Done {
                result: ResultCode::Success,
                ..
            })
        ));
        // Late records of the forgotten worker still arrive by gossip; the node drops them
        // before they reach the machine, and a forgotten worker is never ranked.
        assert!(!c.has_worker(&bad));
    }

    #[test]
    fn label_requirements_and_capacity_decide_eligibility() {
        let w = ids(2);
        let mut c = Claims::new(w[0], ClaimSettings::default(), 1);
        c.worker(w[0], BTreeMap::from([("os".into(), "linux".into())]));
        c.worker(w[1], BTreeMap::from([("os".into(), "freebsd".into())]));
        c.heartbeat(w[1], 0, 1, T);
        let mut j = spec(1);
        j.requires.insert("os".into(), "freebsd".into());
        c.job(j.clone(), T);
        assert_eq!(c.order(&j.id, T), vec![w[1]]);
        assert!(
            c.tick(at(10_000)).is_empty(),
            "never claims a job it cannot run"
        );
        c.claim(w[1], j.id, 1, T);
        let mut other = spec(2);
        other.requires.insert("os".into(), "freebsd".into());
        c.job(other.clone(), T);
        assert!(
            c.order(&other.id, T).is_empty(),
            "a busy worker is not ranked"
        );
    }

    // A rogue admitted worker (w[2]) tries to take or end a job it is not entitled to.
    fn rogue_setup() -> (Vec<NodeId>, Claims, JobSpec) {
        let w = ids(3);
        let mut c = Claims::new(w[0], ClaimSettings::default(), 1);
        c.worker(w[0], BTreeMap::from([("os".into(), "linux".into())]));
        c.worker(w[1], BTreeMap::from([("os".into(), "linux".into())]));
        c.worker(w[2], BTreeMap::from([("os".into(), "freebsd".into())]));
        for x in &w {
            c.heartbeat(*x, 0, 1, T);
        }
        let mut j = spec(1);
        j.requires.insert("os".into(), "linux".into());
        c.job(j.clone(), T);
        (w, c, j)
    }

    #[test]
    fn a_result_without_a_counted_claim_never_becomes_current() {
        let (w, mut c, j) = rogue_setup();
        // A red at the last attempt there is, for a job nobody claimed.
        c.result(w[2], j.id, u32::MAX, ResultCode::Failure, T);
        assert_eq!(c.state(&j.id), Some(JobState::Pending { attempt: 1 }));
        assert_eq!(
            c.misbehaviour(),
            vec![(w[2], j.id, u32::MAX, Refusal::Unclaimed)]
        );
        // An honest worker builds it green; the rogue's red from a claim it had no right to
        // (its labels do not match) changes nothing either.
        c.claim(w[1], j.id, 1, T);
        c.claim(w[2], j.id, 1, T);
        c.result(w[2], j.id, 1, ResultCode::Failure, at(10));
        assert_eq!(
            c.misbehaviour(),
            vec![(w[2], j.id, 1, Refusal::WrongLabels)]
        );
        assert_eq!(
            c.state(&j.id),
            Some(JobState::Running {
                attempt: 1,
                worker: w[1]
            })
        );
        c.result(w[1], j.id, 1, ResultCode::Success, at(20));
        assert_eq!(
            c.state(&j.id),
            Some(JobState::Done {
                attempt: 1,
                worker: w[1],
                result: ResultCode::Success
            })
        );
    }

    #[test]
    fn claims_out_of_sequence_or_past_the_limit_do_not_give_a_job_up() {
        let (w, mut c, j) = rogue_setup();
        c.worker(w[2], BTreeMap::from([("os".into(), "linux".into())]));
        // The last attempt claimed straight away, and one past the limit: neither counts, so
        // the job is still open at attempt 1 and this node claims it.
        c.claim(w[2], j.id, 4, T);
        c.claim(w[2], j.id, 5, T);
        assert_eq!(c.misbehaviour(), vec![(w[2], j.id, 5, Refusal::BadAttempt)]);
        assert_eq!(c.state(&j.id), Some(JobState::Pending { attempt: 1 }));
        let acts = c.tick(at(5_000));
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::Claim { attempt: 1, .. })),
            "{acts:?}"
        );
        // Far past the lease, the rogue's claims still never end it.
        c.progress(w[0], j.id, 1, at(5_000));
        assert!(matches!(
            c.state(&j.id),
            Some(JobState::Running { attempt: 1, .. })
        ));
    }

    #[test]
    fn which_claims_count_does_not_depend_on_the_order_they_arrive_in() {
        let (w, _, j) = rogue_setup();
        let feed = [(w[1], 1u32), (w[0], 2), (w[1], 3)];
        let mut states = Vec::new();
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let (_, mut c, _) = rogue_setup();
            for i in order {
                let (who, attempt) = feed[i];
                c.claim(who, j.id, attempt, T);
            }
            states.push((c.state(&j.id), c.winner(&j.id, 3)));
        }
        assert!(states.windows(2).all(|p| p[0] == p[1]), "{states:?}");
        assert_eq!(
            states[0].0,
            Some(JobState::Running {
                attempt: 3,
                worker: w[1]
            })
        );
    }

    #[test]
    fn a_retired_workers_earlier_verdict_stands() {
        let (w, mut c, j) = rogue_setup();
        c.claim(w[1], j.id, 1, T);
        c.result(w[1], j.id, 1, ResultCode::Success, at(10));
        // Revoked (retired, not compromised): it is no longer ranked, its result still counts.
        c.remove_worker(&w[1]);
        assert_eq!(
            c.state(&j.id),
            Some(JobState::Done {
                attempt: 1,
                worker: w[1],
                result: ResultCode::Success
            })
        );
        let mut other = spec(2);
        other.requires.insert("os".into(), "linux".into());
        c.job(other.clone(), T);
        assert!(!c.order(&other.id, T).contains(&w[1]));
    }

    #[test]
    fn claims_for_unknown_jobs_are_held_up_to_a_bound() {
        let w = ids(2);
        let mut c = Claims::new(w[0], ClaimSettings::default(), 1);
        c.worker(w[1], BTreeMap::new());
        for i in 0..(MAX_EARLY as u64 + 10) {
            c.claim(w[1], Hash::of(&i.to_be_bytes()), 1, T);
        }
        assert_eq!(c.early_count, MAX_EARLY);
        assert_eq!(c.early.values().map(Vec::len).sum::<usize>(), MAX_EARLY);
        // A job that becomes known takes its held claim, and the count goes down.
        let j = spec(1);
        c.claim(w[1], j.id, 1, T);
        c.job(j.clone(), T);
        assert_eq!(c.early_count, MAX_EARLY);
        let held = Hash::of(&0u64.to_be_bytes());
        let mut known = spec(1);
        known.id = held;
        c.job(known, T);
        assert_eq!(c.early_count, MAX_EARLY - 1);
        assert_eq!(c.winner(&held, 1), Some(w[1]));
    }
}
