//! The hardware simulator: the real claim machines ([`Claims`], with their confirmation and
//! health rules) and the real transition logic over a lossy, delayed network, with one lying
//! worker (spurious reds at a random rate while the code is fine) among honest ones, and real
//! regressions in the commit history.
//!
//! Model: commits land one after another on one branch, each far enough apart that every
//! builder builds every commit; the code is red over a few seeded ranges of commits (the
//! truth). An honest worker's verdict is the truth; the liar's is red with probability `rate`,
//! whatever the truth. Records are gossiped with loss and delay and filled in by anti-entropy
//! every second; heartbeats go every second; every node ticks every 100 ms.
//!
//! Invariants, checked at the end with every record everywhere:
//! - every node derives the same health for every worker, and the same build states;
//! - the list is mailed (a `problem`-mode transition over the views) exactly for the truth's
//!   green-to-red transitions: no mail for a red no other host reproduced, and every real
//!   regression mailed once;
//! - an honest worker is never quarantined; the liar is quarantined once it has 3 unreproduced
//!   reds among its first 10 results;
//! - every ordinary job ends with a verdict: coverage never stops.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use buildmesh_protocol::claims::{Action, ClaimSettings, Claims, JobSpec, JobState};
use buildmesh_protocol::health::ConfirmMode;
use buildmesh_protocol::record::{BuildState, JobKey, Purpose, ResultCode};
use buildmesh_protocol::transitions::{self, Kind, Mode};
use buildmesh_protocol::{Hash, NodeId, SecretKey, Timestamp};

use crate::sim::Rng;

const TICK_MS: u64 = 100;
const AE_MS: u64 = 1_000;
const HEARTBEAT_MS: u64 = 1_000;
const COMMIT_GAP_MS: u64 = 6_000;
const BUILDERS: usize = 2;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rec {
    Job(usize),
    Claim(NodeId, Hash, u32, Box<JobKey>),
    Result(NodeId, Hash, u32, bool),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Deliver(usize, usize),
    Heartbeat(usize, usize, u32),
    Tick(usize),
    Beat(usize),
    AntiEntropy(usize),
    Commit(usize),
    Done(usize, Hash, u32),
}

/// Figures of one seed.
#[derive(Clone, Debug, Default)]
pub struct HealthOutcome {
    /// Workers.
    pub workers: usize,
    /// The liar's spurious-red rate, in percent.
    pub rate: u32,
    /// Commits.
    pub commits: usize,
    /// Real regressions (green-to-red transitions of the truth, per builder).
    pub regressions: usize,
    /// Mails the list got.
    pub mails: usize,
    /// Reds of the liar that another host did not reproduce.
    pub unreproduced: usize,
    /// Whether the liar ended quarantined (or was at some point).
    pub quarantined: bool,
    /// The liar's results (ordinary and confirmation builds) before it was quarantined, if
    /// it was.
    pub results_before_quarantine: Option<usize>,
}

struct Node {
    id: NodeId,
    machine: Claims,
    store: BTreeSet<usize>,
    running: BTreeMap<(Hash, u32), u64>,
}

/// One seed's world.
#[allow(missing_debug_implementations)]
pub struct HealthWorld {
    seed: u64,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    nodes: Vec<Node>,
    liar: usize,
    rate: f64,
    loss: f64,
    records: Vec<Rec>,
    jobs: Vec<JobSpec>,
    red: Vec<bool>,
    // The liar's verdicts in the order it reported them, and whether each was spurious.
    liar_results: Vec<(Hash, bool)>,
    first_quarantine: Option<usize>,
}

fn ids(seed: u64, n: usize) -> Vec<NodeId> {
    (0..n)
        .map(|i| {
            let mut s = [0x5au8; 32];
            s[..8].copy_from_slice(&seed.to_be_bytes());
            s[8..16].copy_from_slice(&(i as u64).to_be_bytes());
            SecretKey::from_seed(s).id()
        })
        .collect()
}

impl HealthWorld {
    /// The world of `seed`: 3 to 8 workers, one of them lying at 20 to 90 %, 6 to 14 commits
    /// with up to three red ranges.
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x004e_a174);
        let workers = rng.range(3, 8) as usize;
        let commits = rng.range(6, 14) as usize;
        let rate = rng.range(20, 90) as f64 / 100.0;
        let loss = rng.range(0, 10) as f64 / 100.0;
        let mut red = vec![false; commits];
        for _ in 0..rng.range(0, 3) {
            let from = rng.range(1, commits as u64 - 1) as usize;
            let len = rng.range(1, 4) as usize;
            for r in red.iter_mut().skip(from).take(len) {
                *r = true;
            }
        }
        let ids = ids(seed, workers);
        let settings = ClaimSettings {
            confirm_wait: std::time::Duration::from_secs(2),
            ..ClaimSettings::default()
        };
        let nodes = ids
            .iter()
            .map(|me| {
                let mut m = Claims::new(*me, settings.clone(), 1);
                for w in &ids {
                    m.worker(*w, BTreeMap::new());
                }
                Node {
                    id: *me,
                    machine: m,
                    store: BTreeSet::new(),
                    running: BTreeMap::new(),
                }
            })
            .collect();
        let liar = rng.range(0, workers as u64 - 1) as usize;
        let mut w = HealthWorld {
            seed,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            liar,
            rate,
            loss,
            records: Vec::new(),
            jobs: Vec::new(),
            red,
            liar_results: Vec::new(),
            first_quarantine: None,
        };
        for i in 0..workers {
            let t = w.rng.range(0, TICK_MS);
            w.at(t, Ev::Tick(i));
            let t = w.rng.range(0, HEARTBEAT_MS);
            w.at(t, Ev::Beat(i));
            let t = w.rng.range(0, AE_MS);
            w.at(t, Ev::AntiEntropy(i));
        }
        for k in 0..commits {
            w.at(1_000 + k as u64 * COMMIT_GAP_MS, Ev::Commit(k));
        }
        w
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn ts(&self) -> Timestamp {
        Timestamp(10_000_000 + self.now)
    }

    fn publish(&mut self, from: usize, rec: Rec) {
        self.records.push(rec);
        let id = self.records.len() - 1;
        self.apply(from, id);
        for to in 0..self.nodes.len() {
            if to != from && !self.rng.chance(self.loss) {
                let d = self.rng.range(1, 60);
                self.at(self.now + d, Ev::Deliver(to, id));
            }
        }
    }

    fn apply(&mut self, n: usize, id: usize) {
        if !self.nodes[n].store.insert(id) {
            return;
        }
        let now = self.ts();
        let rec = self.records[id].clone();
        let m = &mut self.nodes[n].machine;
        match rec {
            Rec::Job(k) => m.job(self.jobs[k].clone(), now),
            Rec::Claim(w, job, a, key) => m.claim_keyed(w, &key, job, a, now),
            Rec::Result(w, job, a, red) => {
                let code = if red {
                    ResultCode::Failure
                } else {
                    ResultCode::Success
                };
                m.result(w, job, a, code, now)
            }
        }
    }

    // The commit index of a job (its sha encodes it).
    fn commit_of(&self, key: &JobKey) -> usize {
        usize::from_str_radix(&key.sha[32..], 16).unwrap_or(0)
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver(to, id) => self.apply(to, id),
            Ev::Heartbeat(to, from, running) => {
                let id = self.nodes[from].id;
                let now = self.ts();
                self.nodes[to].machine.heartbeat(id, running, 1, now);
            }
            Ev::Beat(n) => {
                let running = self.nodes[n].running.len() as u32;
                let now = self.ts();
                let me = self.nodes[n].id;
                self.nodes[n].machine.heartbeat(me, running, 1, now);
                for to in 0..self.nodes.len() {
                    if to != n {
                        let d = self.rng.range(1, 60);
                        self.at(self.now + d, Ev::Heartbeat(to, n, running));
                    }
                }
                self.at(self.now + HEARTBEAT_MS, Ev::Beat(n));
            }
            Ev::AntiEntropy(n) => {
                let p = self.rng.range(0, self.nodes.len() as u64 - 1) as usize;
                let missing: Vec<usize> = self.nodes[p]
                    .store
                    .difference(&self.nodes[n].store)
                    .copied()
                    .collect();
                for id in missing {
                    self.apply(n, id);
                }
                self.at(self.now + AE_MS, Ev::AntiEntropy(n));
            }
            Ev::Commit(k) => {
                for b in 0..BUILDERS {
                    let key = JobKey {
                        builder: format!("b{b}"),
                        repo: "r".into(),
                        branch: "main".into(),
                        sha: format!("{:032x}{k:08x}", self.seed),
                        purpose: Purpose::Build,
                    };
                    self.jobs.push(JobSpec {
                        id: key.id(),
                        key,
                        requires: BTreeMap::new(),
                        priority: 0,
                        order: self.now,
                        max_attempts: 4,
                        confirm: ConfirmMode::OtherHost,
                    });
                    let from = self.rng.range(0, self.nodes.len() as u64 - 1) as usize;
                    self.publish(from, Rec::Job(self.jobs.len() - 1));
                }
            }
            Ev::Tick(n) => {
                let now = self.ts();
                let actions = self.nodes[n].machine.tick(now);
                for a in actions {
                    match a {
                        Action::Claim {
                            job, attempt, key, ..
                        } => {
                            let me = self.nodes[n].id;
                            self.nodes[n].running.insert((job, attempt), self.now);
                            let d = self.rng.range(200, 2_000);
                            self.at(self.now + d, Ev::Done(n, job, attempt));
                            self.publish(n, Rec::Claim(me, job, attempt, Box::new(key)));
                        }
                        Action::Abandon { job, attempt } => {
                            self.nodes[n].running.remove(&(job, attempt));
                        }
                    }
                }
                if self.first_quarantine.is_none()
                    && self.nodes.iter().any(|x| {
                        x.machine
                            .health()
                            .get(&self.nodes[self.liar].id)
                            .is_some_and(|h| h.episodes > 0)
                    })
                {
                    self.first_quarantine = Some(self.liar_results.len());
                }
                self.at(self.now + TICK_MS, Ev::Tick(n));
            }
            Ev::Done(n, job, attempt) => {
                if self.nodes[n].running.remove(&(job, attempt)).is_none() {
                    return;
                }
                let key = self.nodes[n]
                    .machine
                    .spec(&job)
                    .map(|s| s.key.clone())
                    .expect("a job it ran is known");
                let truth = self.red[self.commit_of(&key)];
                let spurious = n == self.liar && !truth && self.rng.chance(self.rate);
                if n == self.liar && !matches!(key.purpose, Purpose::Revalidate { .. }) {
                    self.liar_results.push((job, spurious));
                }
                let me = self.nodes[n].id;
                self.publish(n, Rec::Result(me, job, attempt, truth || spurious));
            }
        }
    }

    /// Runs the seed; an error names the broken invariant and the seed.
    pub fn run(mut self) -> Result<HealthOutcome, String> {
        let commits = self.red.len();
        let end = 1_000 + commits as u64 * COMMIT_GAP_MS + 20_000;
        while let Some(Reverse((t, _, ev))) = self.queue.pop() {
            if t > end {
                break;
            }
            self.now = t;
            self.handle(ev);
        }
        // Every record everywhere, then one more tick each so that health is current.
        let all: Vec<usize> = (0..self.records.len()).collect();
        for n in 0..self.nodes.len() {
            for id in &all {
                self.apply(n, *id);
            }
            let now = self.ts();
            self.nodes[n].machine.settle_health(now);
        }
        self.check()
    }

    fn check(&self) -> Result<HealthOutcome, String> {
        let fail = |what: String| {
            Err(format!(
                "seed {}: {what} (replay: SIM_HEALTH_SEED={} cargo test -p buildmesh-tests --test sim)",
                self.seed, self.seed
            ))
        };
        let m0 = &self.nodes[0].machine;
        // The same health and states everywhere.
        for n in &self.nodes[1..] {
            if n.machine.health() != m0.health() {
                if std::env::var_os("SIM_TRACE").is_some() {
                    let a: BTreeMap<Hash, String> = m0
                        .jobs()
                        .map(|(s, st)| {
                            (
                                s.id,
                                format!("{:?} {st:?} {:?}", s.key.purpose, m0.confirmation(&s.id)),
                            )
                        })
                        .collect();
                    let b: BTreeMap<Hash, String> = n
                        .machine
                        .jobs()
                        .map(|(s, st)| {
                            (
                                s.id,
                                format!(
                                    "{:?} {st:?} {:?}",
                                    s.key.purpose,
                                    n.machine.confirmation(&s.id)
                                ),
                            )
                        })
                        .collect();
                    for (k, v) in &a {
                        if b.get(k) != Some(v) {
                            eprintln!("node0 {} {v}\n  other {:?}", k.short(), b.get(k));
                        }
                    }
                    for (k, v) in &b {
                        if !a.contains_key(k) {
                            eprintln!("other only {} {v}", k.short());
                        }
                    }
                }
                return fail(format!(
                    "health differs between nodes: {:?} vs {:?}",
                    m0.health(),
                    n.machine.health()
                ));
            }
            for j in &self.jobs {
                if n.machine.build_state(&j.id) != m0.build_state(&j.id) {
                    return fail(format!("build state of {} differs", j.id.short()));
                }
            }
        }
        // Coverage: every ordinary job has a verdict.
        for j in &self.jobs {
            let s = m0.build_state(&j.id);
            if !s.is_some_and(BuildState::is_verdict) {
                return fail(format!(
                    "job {} of commit {} ended {s:?}",
                    j.id.short(),
                    self.commit_of(&j.key)
                ));
            }
        }
        // Mails: exactly the truth's transitions.
        let mut mails = 0;
        let mut regressions = 0;
        for b in 0..BUILDERS {
            let name = format!("b{b}");
            let builds: Vec<transitions::Build> = self
                .jobs
                .iter()
                .filter(|j| j.key.builder == name)
                .map(|j| {
                    let s = m0.build_state(&j.id).expect("known");
                    transitions::Build {
                        sha: j.key.sha.clone(),
                        order: j.order,
                        verdict: s.result(),
                        settled: s.is_settled(),
                    }
                })
                .collect();
            let found: BTreeSet<usize> = transitions::find(&name, "main", &builds, Mode::Problem)
                .into_iter()
                .filter(|t| t.kind == Kind::Broken)
                .map(|t| usize::from_str_radix(&t.sha[32..], 16).unwrap_or(0))
                .collect();
            let truth: BTreeSet<usize> = (1..self.red.len())
                .filter(|&k| self.red[k] && !self.red[k - 1])
                .collect();
            regressions += truth.len();
            mails += found.len();
            if found != truth {
                return fail(format!(
                    "builder {name} mailed commits {found:?}, the real regressions are {truth:?} (liar node {} at {:.0} %)",
                    self.liar,
                    self.rate * 100.0
                ));
            }
        }
        // Quarantine: never an honest worker; the liar by its 3rd unreproduced red in 10.
        let liar = self.nodes[self.liar].id;
        for (w, h) in m0.health() {
            if *w != liar && h.episodes > 0 {
                return fail(format!("honest worker {} quarantined: {h:?}", w.short()));
            }
        }
        let unreproduced = self
            .liar_results
            .iter()
            .filter(|(j, _)| m0.build_state(j) == Some(BuildState::HostFault))
            .count();
        // The liar's results that stand (it won the attempt; a confirmation still asked for),
        // in commit order: its first ten, and the reds among them no other host reproduced.
        let mut stand: Vec<(u64, Hash, bool)> = self
            .liar_results
            .iter()
            .filter_map(|(j, _)| {
                let spec = m0.spec(j)?;
                let won =
                    matches!(m0.state(j), Some(JobState::Done { worker, .. }) if worker == liar);
                let asked = match spec.key.purpose {
                    Purpose::Confirm { job, .. } => m0.confirmation(&job).job() == Some(*j),
                    _ => true,
                };
                (won && asked).then(|| {
                    (
                        spec.order,
                        *j,
                        m0.build_state(j) == Some(BuildState::HostFault),
                    )
                })
            })
            .collect();
        stand.sort();
        let first_ten_faults = stand.iter().take(10).filter(|(.., f)| *f).count();
        let episodes = m0.health().get(&liar).map_or(0, |h| h.episodes);
        if first_ten_faults >= 3 && episodes == 0 {
            return fail(format!(
                "the liar had {first_ten_faults} unreproduced reds in its first 10 results and was never quarantined"
            ));
        }
        Ok(HealthOutcome {
            workers: self.nodes.len(),
            rate: (self.rate * 100.0) as u32,
            commits: self.red.len(),
            regressions,
            mails,
            unreproduced,
            quarantined: episodes > 0,
            results_before_quarantine: self.first_quarantine,
        })
    }
}

/// Runs seeds `from..to` of the hardware simulator.
pub fn run_health_seeds(from: u64, to: u64) -> Result<Vec<HealthOutcome>, String> {
    (from..to).map(|s| HealthWorld::new(s).run()).collect()
}
