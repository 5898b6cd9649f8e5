//! The deterministic simulator: many nodes' claim state machines over an in-memory network with
//! seeded message loss and delay, partitions, crashes and restarts, and clock offsets. The
//! invariants are checked after every event; a failing seed names itself and replays exactly.
//!
//! One world, its events and its invariants in one file: every check reads the whole state,
//! hence its length.
//!
//! The model follows the real node: records (jobs, claims, results) are gossiped with loss and
//! delay and filled in by anti-entropy every second between connected nodes; signals
//! (heartbeats, progress) are gossiped with loss and never repeated; each node ticks its
//! machine every 100 ms of its own clock. A crash is a killed process: the nodes connected to it
//! lose their connections and say so in a heartbeat at once (a partition is a silence: no
//! connection closes).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use buildmesh_protocol::builders::{Builder, BuilderConfig, DEFAULT_MAX_ATTEMPTS};
use buildmesh_protocol::claims::{Action, ClaimSettings, Claims, JobSpec, JobState, score};
use buildmesh_protocol::jobs;
use buildmesh_protocol::record::{JobKey, ResultCode};
use buildmesh_protocol::{Hash, NodeId, SecretKey, Timestamp};

/// A small, fast, seeded generator (splitmix64): the simulation's only source of chance.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// What one seed's world looks like.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Workers.
    pub nodes: usize,
    /// Jobs announced during the active phase.
    pub jobs: usize,
    /// Probability that one gossip delivery is lost.
    pub loss: f64,
    /// Largest one-way delay, ms.
    pub max_delay: u64,
    /// Crashes during the active phase.
    pub crashes: usize,
    /// Partitions during the active phase.
    pub partitions: usize,
    /// Whether a restarted node comes back with an empty store (a dead disk).
    pub wipe_on_restart: bool,
    /// Forged records a rogue admitted worker key publishes during the active phase: claims
    /// past the attempt limit, results for attempts it never claimed.
    pub rogue_records: usize,
}

impl Scenario {
    /// A scenario drawn from `seed`: 3 to 20 workers, loss up to 20 %, and so on.
    pub fn from_seed(seed: u64) -> Self {
        let mut r = Rng::new(seed.wrapping_mul(31).wrapping_add(7));
        Scenario {
            nodes: r.range(3, 20) as usize,
            jobs: r.range(3, 25) as usize,
            loss: r.range(0, 20) as f64 / 100.0,
            max_delay: r.range(1, 80),
            crashes: r.range(0, 3) as usize,
            partitions: r.range(0, 2) as usize,
            wipe_on_restart: r.chance(0.3),
            rogue_records: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rec {
    Job(u64, usize),
    Claim(NodeId, Hash, u32),
    Result(NodeId, Hash, u32, u8),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Deliver(usize, usize),
    Signal(usize, Sig),
    Tick(usize),
    Heartbeat(usize),
    AntiEntropy(usize),
    Announce(usize),
    BuildDone(usize, Hash, u32),
    Crash(usize),
    Restart(usize),
    Partition(Vec<usize>),
    Heal,
    SyncPair(usize, usize),
    Rogue(u64),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Sig {
    // Sender, builds running, capacity, the peers it lost the connections to.
    Heartbeat(usize, u32, u32, Vec<usize>),
    Progress(usize, Hash, u32),
}

struct Node {
    id: NodeId,
    up: bool,
    offset: i64,
    machine: Claims,
    store: BTreeMap<usize, u64>,
    labels: BTreeMap<String, String>,
    running: BTreeMap<(Hash, u32), u64>,
    crashed_at: Option<u64>,
    up_since: u64,
    idle_since: u64,
    // Peers whose connections to it closed (they crashed) and that it has not met again.
    lost: BTreeSet<usize>,
}

/// A violated invariant, with the seed that replays it.
#[derive(Debug)]
pub struct Violation {
    /// The seed.
    pub seed: u64,
    /// Simulated time, ms.
    pub at: u64,
    /// What broke.
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} at {} ms: {} (replay: SIM_SEED={} cargo test -p buildmesh-tests --test sim)",
            self.seed, self.at, self.what, self.seed
        )
    }
}

/// Figures of one run, for the benchmark and for sanity checks.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Jobs that ended with a verdict.
    pub done: usize,
    /// Jobs skipped (a newer commit was built).
    pub skipped: usize,
    /// Jobs given up.
    pub given_up: usize,
    /// Claims made.
    pub claims: usize,
    /// Builds abandoned after losing a crossed claim.
    pub abandoned: usize,
    /// Every time from a crash of a running winner to another worker's claim of its job, ms.
    pub reclaims_ms: Vec<u64>,
    /// Announcements lost with the only disk that held them (a node wiped before gossip or
    /// sync reached anyone else).
    pub lost_announcements: usize,
}

const ACTIVE_MS: u64 = 40_000;
const QUIET_MS: u64 = 120_000;
const TICK_MS: u64 = 100;
const AE_MS: u64 = 1_000;
const HEARTBEAT_MS: u64 = 1_000;

/// The simulated world of one seed.
#[allow(missing_debug_implementations)]
pub struct World {
    seed: u64,
    sc: Scenario,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    nodes: Vec<Node>,
    records: Vec<Rec>,
    jobs: Vec<JobSpec>,
    durations: BTreeMap<Hash, u64>,
    verdicts: BTreeMap<Hash, u8>,
    side: Option<BTreeSet<usize>>,
    /// Since when each pair has been connected without interruption (both up, same side).
    together_since: BTreeMap<(usize, usize), u64>,
    settings: ClaimSettings,
    /// Crashes of a running winner, waiting for a re-claim: (job, attempt, crash time).
    awaiting_reclaim: Vec<(Hash, u32, u64, usize)>,
    // The rogue admitted worker: every machine knows it as a linux worker; it never
    // heartbeats, and what it publishes it is not entitled to.
    rogue: NodeId,
    out: Outcome,
    trace: bool,
}

fn code_of(c: u8) -> ResultCode {
    match c {
        0 => ResultCode::Success,
        1 => ResultCode::Failure,
        2 => ResultCode::Warnings,
        3 => ResultCode::Flaky,
        _ => ResultCode::Exception,
    }
}

impl World {
    /// Builds the world of `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with(seed, Scenario::from_seed(seed))
    }

    /// The world of `seed` with a rogue admitted worker publishing 1 to 30 forged records (a
    /// world of its own: the same seed without the rogue is [`World::new`]'s).
    pub fn with_rogue(seed: u64) -> Self {
        let mut sc = Scenario::from_seed(seed);
        sc.rogue_records = Rng::new(seed ^ 0x0bad_5eed).range(1, 30) as usize;
        Self::with(seed, sc)
    }

    fn with(seed: u64, sc: Scenario) -> Self {
        let mut rng = Rng::new(seed);
        let settings = ClaimSettings::default();
        let ids: Vec<NodeId> = (0..sc.nodes)
            .map(|i| {
                let mut s = [0u8; 32];
                s[..8].copy_from_slice(&seed.to_be_bytes());
                s[8..16].copy_from_slice(&(i as u64).to_be_bytes());
                SecretKey::from_seed(s).id()
            })
            .collect();
        let labels: Vec<BTreeMap<String, String>> = (0..sc.nodes)
            .map(|i| {
                let os = if i % 3 == 2 { "freebsd" } else { "linux" };
                BTreeMap::from([("os".to_string(), os.to_string())])
            })
            .collect();
        let rogue = {
            let mut s = [0xee; 32];
            s[..8].copy_from_slice(&seed.to_be_bytes());
            SecretKey::from_seed(s).id()
        };
        let linux = BTreeMap::from([("os".to_string(), "linux".to_string())]);
        let nodes = (0..sc.nodes)
            .map(|i| {
                let capacity = 1 + (rng.next_u64() % 2) as u32;
                let mut m = Claims::new(ids[i], settings.clone(), capacity);
                for (j, id) in ids.iter().enumerate() {
                    m.worker(*id, labels[j].clone());
                }
                m.worker(rogue, linux.clone());
                Node {
                    id: ids[i],
                    up: true,
                    offset: rng.range(0, 4000) as i64 - 2000,
                    machine: m,
                    store: BTreeMap::new(),
                    labels: labels[i].clone(),
                    running: BTreeMap::new(),
                    crashed_at: None,
                    lost: BTreeSet::new(),
                    up_since: 0,
                    idle_since: 0,
                }
            })
            .collect();
        let mut w = World {
            seed,
            sc: sc.clone(),
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            records: Vec::new(),
            jobs: Vec::new(),
            durations: BTreeMap::new(),
            verdicts: BTreeMap::new(),
            side: None,
            together_since: BTreeMap::new(),
            settings,
            awaiting_reclaim: Vec::new(),
            rogue,
            out: Outcome::default(),
            trace: std::env::var_os("SIM_TRACE").is_some(),
        };
        if w.trace {
            println!("{sc:?}");
        }
        for i in 0..sc.nodes {
            let t = w.rng.range(0, TICK_MS);
            w.at(t, Ev::Tick(i));
            let t = w.rng.range(0, HEARTBEAT_MS);
            w.at(t, Ev::Heartbeat(i));
            let t = w.rng.range(0, AE_MS);
            w.at(t, Ev::AntiEntropy(i));
        }
        for k in 0..sc.jobs {
            let t = w.rng.range(500, ACTIVE_MS - 5_000);
            w.at(t, Ev::Announce(k));
        }
        for k in 0..sc.rogue_records {
            let t = w.rng.range(1_000, ACTIVE_MS);
            w.at(t, Ev::Rogue(k as u64));
        }
        for _ in 0..sc.crashes {
            let n = w.rng.range(0, sc.nodes as u64 - 1) as usize;
            let t = w.rng.range(2_000, ACTIVE_MS - 5_000);
            let back = t + w.rng.range(1_000, 15_000);
            w.at(t, Ev::Crash(n));
            w.at(back, Ev::Restart(n));
        }
        for _ in 0..sc.partitions {
            let t = w.rng.range(2_000, ACTIVE_MS - 10_000);
            let members: Vec<usize> = (0..sc.nodes).filter(|_| w.rng.chance(0.5)).collect();
            let heal = t + w.rng.range(2_000, 8_000);
            w.at(t, Ev::Partition(members));
            w.at(heal, Ev::Heal);
        }
        for a in 0..sc.nodes {
            for b in a + 1..sc.nodes {
                w.together_since.insert((a, b), 0);
            }
        }
        w
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn local(&self, n: usize) -> Timestamp {
        Timestamp((10_000_000i64 + self.now as i64 + self.nodes[n].offset) as u64)
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        if !self.nodes[a].up || !self.nodes[b].up {
            return false;
        }
        match &self.side {
            None => true,
            Some(s) => s.contains(&a) == s.contains(&b),
        }
    }

    fn refresh_links(&mut self) {
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                let c = self.connected(a, b);
                let e = self.together_since.get(&(a, b)).copied();
                match (c, e) {
                    (true, None) => {
                        self.together_since.insert((a, b), self.now);
                        self.nodes[a].lost.remove(&b);
                        self.nodes[b].lost.remove(&a);
                        // A new connection starts with a version-vector exchange both ways.
                        let d = self.rng.range(1, self.sc.max_delay) + 20;
                        self.at(self.now + d, Ev::SyncPair(a, b));
                        self.at(self.now + d, Ev::SyncPair(b, a));
                    }
                    (false, Some(_)) => {
                        self.together_since.remove(&(a, b));
                    }
                    _ => {}
                }
            }
        }
    }

    fn publish(&mut self, from: usize, rec: Rec) {
        self.records.push(rec);
        let id = self.records.len() - 1;
        self.apply(from, id);
        for to in 0..self.nodes.len() {
            if to != from && self.connected(from, to) && !self.rng.chance(self.sc.loss) {
                let d = self.rng.range(1, self.sc.max_delay);
                self.at(self.now + d, Ev::Deliver(to, id));
            }
        }
    }

    fn signal(&mut self, from: usize, sig: Sig) {
        for to in 0..self.nodes.len() {
            if to != from && self.connected(from, to) && !self.rng.chance(self.sc.loss) {
                let d = self.rng.range(1, self.sc.max_delay);
                self.at(self.now + d, Ev::Signal(to, sig.clone()));
            }
        }
    }

    // Node n's heartbeat: to its own machine and to every node connected to it.
    fn beat(&mut self, n: usize) {
        let running = self.nodes[n].running.len() as u32;
        let cap = self.nodes[n].machine.capacity();
        let now = self.local(n);
        let me = self.nodes[n].id;
        let lost: Vec<usize> = self.nodes[n].lost.iter().copied().collect();
        let ids = lost.iter().map(|l| self.nodes[*l].id).collect();
        self.nodes[n].machine.heartbeat(me, running, cap, now);
        self.nodes[n].machine.lost_report(me, ids, now);
        self.signal(n, Sig::Heartbeat(n, running, cap, lost));
    }

    fn apply(&mut self, n: usize, id: usize) {
        if self.nodes[n].store.contains_key(&id) {
            return;
        }
        self.nodes[n].store.insert(id, self.now);
        let now = self.local(n);
        let rec = self.records[id].clone();
        let node = &mut self.nodes[n];
        match rec {
            Rec::Job(_, k) => node.machine.job(self.jobs[k].clone(), now),
            Rec::Claim(w, job, a) => node.machine.claim(w, job, a, now),
            Rec::Result(w, job, a, c) => node.machine.result(w, job, a, code_of(c), now),
        }
    }

    // Anti-entropy: node `n` takes every record `p` holds that it lacks.
    fn pull_missing(&mut self, n: usize, p: usize) {
        let missing: Vec<usize> = self.nodes[p]
            .store
            .keys()
            .filter(|k| !self.nodes[n].store.contains_key(k))
            .copied()
            .collect();
        for id in missing {
            self.apply(n, id);
        }
    }

    fn tick(&mut self, n: usize) {
        let now = self.local(n);
        let actions = self.nodes[n].machine.tick(now);
        for a in actions {
            match a {
                Action::Claim { job, attempt, .. } => {
                    if self.trace {
                        println!(
                            "{:>6} node {n} claims {} attempt {attempt}",
                            self.now,
                            job.short()
                        );
                    }
                    self.out.claims += 1;
                    let me = self.nodes[n].id;
                    let d = self.durations[&job];
                    self.nodes[n].running.insert((job, attempt), self.now);
                    self.at(self.now + d, Ev::BuildDone(n, job, attempt));
                    self.publish(n, Rec::Claim(me, job, attempt));
                    for (j, _, crashed, dead) in &self.awaiting_reclaim {
                        if *j == job && *dead != n {
                            self.out.reclaims_ms.push(self.now - crashed);
                        }
                    }
                    self.awaiting_reclaim
                        .retain(|(j, _, _, dead)| !(*j == job && *dead != n));
                }
                Action::Abandon { job, attempt } => {
                    if self.trace {
                        println!(
                            "{:>6} node {n} abandons {} attempt {attempt}",
                            self.now,
                            job.short()
                        );
                    }
                    self.out.abandoned += 1;
                    self.nodes[n].running.remove(&(job, attempt));
                    if self.nodes[n].running.is_empty() {
                        self.nodes[n].idle_since = self.now;
                    }
                    let me = self.nodes[n].id;
                    self.publish(n, Rec::Result(me, job, attempt, 5));
                }
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        if self.trace
            && !matches!(
                ev,
                Ev::Tick(_)
                    | Ev::Heartbeat(_)
                    | Ev::AntiEntropy(_)
                    | Ev::Signal(..)
                    | Ev::Deliver(..)
            )
        {
            println!("{:>6} {:?}", self.now, ev);
        }
        match ev {
            Ev::Deliver(to, id) => {
                if self.nodes[to].up {
                    self.apply(to, id);
                }
            }
            Ev::Signal(to, sig) => {
                if !self.nodes[to].up {
                    return;
                }
                let now = self.local(to);
                match sig {
                    Sig::Heartbeat(from, running, cap, lost) => {
                        let id = self.nodes[from].id;
                        let lost = lost.iter().map(|l| self.nodes[*l].id).collect();
                        let m = &mut self.nodes[to].machine;
                        m.heartbeat(id, running, cap, now);
                        m.lost_report(id, lost, now);
                    }
                    Sig::Progress(from, job, a) => {
                        let id = self.nodes[from].id;
                        self.nodes[to].machine.progress(id, job, a, now);
                    }
                }
            }
            Ev::Tick(n) => {
                if self.nodes[n].up {
                    self.tick(n);
                }
                self.at(self.now + TICK_MS, Ev::Tick(n));
            }
            Ev::Heartbeat(n) => {
                if self.nodes[n].up {
                    self.beat(n);
                    let running: Vec<(Hash, u32)> = self.nodes[n].running.keys().copied().collect();
                    for (job, a) in running {
                        self.signal(n, Sig::Progress(n, job, a));
                    }
                }
                self.at(self.now + HEARTBEAT_MS, Ev::Heartbeat(n));
            }
            Ev::AntiEntropy(n) => {
                if self.nodes[n].up {
                    let peers: Vec<usize> = (0..self.nodes.len())
                        .filter(|p| *p != n && self.connected(n, *p))
                        .collect();
                    if !peers.is_empty() {
                        let p = peers[(self.rng.next_u64() % peers.len() as u64) as usize];
                        self.pull_missing(n, p);
                    }
                }
                self.at(self.now + AE_MS, Ev::AntiEntropy(n));
            }
            Ev::SyncPair(n, p) => {
                if self.connected(n, p) {
                    self.pull_missing(n, p);
                }
            }
            Ev::Rogue(_) => {
                if self.jobs.is_empty() {
                    return;
                }
                let j = self.jobs[self.rng.range(0, self.jobs.len() as u64 - 1) as usize].id;
                // Published through node 0's connections, like any record of an admitted key.
                let rec = match self.rng.range(0, 4) {
                    0 => Rec::Claim(self.rogue, j, 0),
                    1 => Rec::Claim(self.rogue, j, 5),
                    2 => Rec::Claim(self.rogue, j, u32::MAX),
                    3 => Rec::Result(self.rogue, j, self.rng.range(1, 3) as u32, 1),
                    _ => Rec::Result(self.rogue, j, u32::MAX, 0),
                };
                self.publish(0, rec);
            }
            Ev::Announce(k) => {
                let builder = format!("b{}", k % 3);
                let key = JobKey {
                    builder: builder.clone(),
                    repo: "r".into(),
                    branch: "main".into(),
                    sha: format!("{:040x}", self.seed.wrapping_mul(1000) + k as u64),
                    purpose: Default::default(),
                };
                let mut requires = BTreeMap::new();
                if k % 5 == 4 {
                    requires.insert("os".to_string(), "freebsd".to_string());
                }
                // The job as the node derives it, from a configuration with this builder.
                let config = BuilderConfig {
                    mesh: Hash::ZERO,
                    version: 1,
                    builders: vec![Builder {
                        name: builder.clone(),
                        repo: key.repo.clone(),
                        branches: vec!["*".into()],
                        tags: Default::default(),
                        requires,
                        env: Default::default(),
                        priority: 0,
                        steps: Vec::new(),
                        max_attempts: DEFAULT_MAX_ATTEMPTS,
                        confirm: None,
                        keep_logs_ms: None,
                        keep_passing_logs_ms: None,
                    }],
                    health: Default::default(),
                };
                let spec = jobs::derive(
                    &config,
                    &key.repo,
                    &key.branch,
                    &key.sha,
                    Timestamp(self.now),
                )
                .pop()
                .expect("the builder takes the commit");
                self.durations.insert(spec.id, self.rng.range(200, 6_000));
                let v = match self.rng.range(0, 99) {
                    0..=69 => 0,
                    70..=84 => 1,
                    85..=91 => 2,
                    92..=95 => 3,
                    _ => 4,
                };
                self.verdicts.insert(spec.id, v);
                self.jobs.push(spec);
                let up: Vec<usize> = (0..self.nodes.len())
                    .filter(|i| self.nodes[*i].up)
                    .collect();
                if let Some(&n) = up.get((self.rng.next_u64() % up.len().max(1) as u64) as usize) {
                    self.publish(n, Rec::Job(self.now, self.jobs.len() - 1));
                } else {
                    self.jobs.pop();
                }
            }
            Ev::BuildDone(n, job, a) => {
                if self.nodes[n].up && self.nodes[n].running.remove(&(job, a)).is_some() {
                    if self.nodes[n].running.is_empty() {
                        self.nodes[n].idle_since = self.now;
                    }
                    let me = self.nodes[n].id;
                    let mut v = self.verdicts[&job];
                    // An exception is the host's fault: the retry elsewhere succeeds.
                    if v == 4 && a > 1 {
                        v = 0;
                    }
                    self.publish(n, Rec::Result(me, job, a, v));
                }
            }
            Ev::Crash(n) => {
                if !self.nodes[n].up {
                    return;
                }
                let me = self.nodes[n].id;
                for (job, a) in self.nodes[n].running.keys() {
                    if self.nodes[n].machine.winner(job, *a) == Some(me) {
                        self.awaiting_reclaim.push((*job, *a, self.now, n));
                    }
                }
                // Its connections close: every node connected to it says so at once.
                let peers: Vec<usize> = (0..self.nodes.len())
                    .filter(|p| *p != n && self.connected(*p, n))
                    .collect();
                let node = &mut self.nodes[n];
                node.up = false;
                node.running.clear();
                node.crashed_at = Some(self.now);
                self.refresh_links();
                for p in peers {
                    self.nodes[p].lost.insert(n);
                    self.beat(p);
                }
            }
            Ev::Restart(n) => {
                if self.nodes[n].up {
                    return;
                }
                let wipe = self.sc.wipe_on_restart;
                let capacity = self.nodes[n].machine.capacity();
                let me = self.nodes[n].id;
                let mut m = Claims::new(me, self.settings.clone(), capacity);
                for other in &self.nodes {
                    m.worker(other.id, other.labels.clone());
                }
                {
                    let linux = BTreeMap::from([("os".to_string(), "linux".to_string())]);
                    m.worker(self.rogue, linux);
                }
                self.nodes[n].machine = m;
                self.nodes[n].up = true;
                self.nodes[n].crashed_at = None;
                self.nodes[n].up_since = self.now;
                self.nodes[n].idle_since = self.now;
                let kept: Vec<usize> = if wipe {
                    Vec::new()
                } else {
                    std::mem::take(&mut self.nodes[n].store)
                        .into_keys()
                        .collect()
                };
                self.nodes[n].store.clear();
                for id in kept {
                    self.apply(n, id);
                }
                self.refresh_links();
            }
            Ev::Partition(members) => {
                self.side = Some(members.into_iter().collect());
                self.refresh_links();
            }
            Ev::Heal => {
                self.side = None;
                self.refresh_links();
            }
        }
    }

    fn check(&mut self) -> Result<(), String> {
        // Exclusivity among the connected: once the loser of a crossed claim holds the winner's
        // claim, it stops within a tick; and however lossy the gossip, connected nodes never
        // both run one attempt for long.
        let mut by_attempt: BTreeMap<(Hash, u32), Vec<(usize, u64)>> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for (k, started) in &n.running {
                by_attempt.entry(*k).or_default().push((i, *started));
            }
        }
        let claim_ids: BTreeMap<(NodeId, Hash, u32), usize> =
            if by_attempt.values().any(|r| r.len() > 1) {
                self.records
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| match r {
                        Rec::Claim(w, j, a) => Some(((*w, *j, *a), i)),
                        _ => None,
                    })
                    .collect()
            } else {
                BTreeMap::new()
            };
        for ((job, a), runners) in by_attempt {
            for x in 0..runners.len() {
                for y in x + 1..runners.len() {
                    let (p, sp) = runners[x];
                    let (q, sq) = runners[y];
                    let (wp, wq) = (self.nodes[p].id, self.nodes[q].id);
                    let (loser, winner) = if score(&job, &wp) < score(&job, &wq) {
                        (q, wp)
                    } else {
                        (p, wq)
                    };
                    let held = claim_ids
                        .get(&(winner, job, a))
                        .and_then(|id| self.nodes[loser].store.get(id))
                        .copied();
                    if let Some(t) = held
                        && self.now > t.max(sp).max(sq) + 2 * TICK_MS
                    {
                        return Err(format!(
                            "node {loser} holds the winning claim of job {} attempt {a} since {t} ms and still runs it",
                            job.short()
                        ));
                    }
                    let key = (p.min(q), p.max(q));
                    if let Some(&since) = self.together_since.get(&key)
                        && self.now > since.max(sp).max(sq) + 10 * AE_MS
                    {
                        return Err(format!(
                            "nodes {p} and {q}, connected since {since} ms, both run job {} attempt {a} since {sp}/{sq} ms",
                            job.short()
                        ));
                    }
                }
            }
        }
        // A dead winner's job is re-claimed by another worker within lease + one rank step (plus
        // the time signals and records take), counted from when an eligible worker was up and
        // idle to take it.
        let lease = self.settings.lease.as_millis() as u64;
        let step = self.settings.step.as_millis() as u64;
        let slack = HEARTBEAT_MS + step + 2 * AE_MS + 2 * TICK_MS + self.sc.max_delay;
        let mut still = Vec::new();
        for (job, a, crashed, dead) in std::mem::take(&mut self.awaiting_reclaim) {
            let settled = self.nodes.iter().any(|n| {
                matches!(
                    n.machine.state(&job),
                    Some(JobState::Done { .. } | JobState::Skipped | JobState::GivenUp { .. })
                )
            });
            if settled {
                continue;
            }
            // Every disk that held the job died (wiped restarts): no node can know it. The
            // final check counts it as a lost announcement.
            let known = self
                .nodes
                .iter()
                .any(|n| n.up && n.machine.state(&job).is_some());
            if !known && self.sc.wipe_on_restart {
                continue;
            }
            let spec = self.jobs.iter().find(|j| j.id == job);
            // A worker can take the job only once it holds the job and the dead worker's claim
            // (a claim made inside a partition reaches the others only when its worker is back;
            // the lease runs from when a node learnt of it).
            let k = self.jobs.iter().position(|j| j.id == job);
            let dead_id = self.nodes[dead].id;
            let job_rec = self
                .records
                .iter()
                .position(|r| matches!(r, Rec::Job(_, x) if Some(*x) == k));
            let claim_rec = self
                .records
                .iter()
                .position(|r| *r == Rec::Claim(dead_id, job, a));
            let available = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, n)| {
                    *i != dead
                        && n.up
                        && n.running.is_empty()
                        && spec.is_some_and(|j| {
                            j.requires.iter().all(|(k, v)| n.labels.get(k) == Some(v))
                        })
                })
                .filter_map(|(_, n)| {
                    let knows_job = job_rec.and_then(|r| n.store.get(&r).copied())?;
                    let knows_claim = claim_rec
                        .and_then(|r| n.store.get(&r).copied())
                        .unwrap_or(0);
                    Some(n.up_since.max(n.idle_since).max(knows_job).max(knows_claim))
                })
                .min();
            if let Some(since) = available
                && self.now > crashed.max(since) + lease + slack
            {
                return Err(format!(
                    "job {} attempt {a}: its worker (node {dead}) crashed at {crashed} ms, a worker was free from {since} ms, and nobody re-claimed it by {} ms",
                    job.short(),
                    self.now
                ));
            }
            still.push((job, a, crashed, dead));
        }
        self.awaiting_reclaim = still;
        Ok(())
    }

    /// Runs the seed to the end, checking the invariants after every event.
    pub fn run(mut self) -> Result<Outcome, Violation> {
        let end = ACTIVE_MS + QUIET_MS;
        let mut healed = false;
        while let Some(Reverse((t, _, ev))) = self.queue.pop() {
            self.now = t;
            if t >= end {
                break;
            }
            if t >= ACTIVE_MS && !healed {
                // The quiet phase: every fault repaired, no more loss.
                healed = true;
                self.side = None;
                self.sc.loss = 0.0;
                for n in 0..self.nodes.len() {
                    if !self.nodes[n].up {
                        self.handle(Ev::Restart(n));
                    }
                }
                self.refresh_links();
            }
            let ev_kind = matches!(ev, Ev::Tick(0)).then_some(0);
            self.handle(ev);
            self.check().map_err(|what| Violation {
                seed: self.seed,
                at: self.now,
                what,
            })?;
            if healed && matches!(ev_kind, Some(0)) && self.all_settled() {
                break;
            }
        }
        self.final_check().map_err(|what| Violation {
            seed: self.seed,
            at: self.now,
            what,
        })?;
        Ok(self.out)
    }

    fn all_settled(&self) -> bool {
        self.jobs.iter().all(|j| {
            let first = self.nodes[0].machine.state(&j.id);
            matches!(
                first,
                Some(JobState::Done { .. } | JobState::Skipped | JobState::GivenUp { .. })
            ) && self.nodes.iter().all(|n| n.machine.state(&j.id) == first)
        }) && self.nodes.iter().all(|n| n.running.is_empty())
    }

    fn final_check(&mut self) -> Result<(), String> {
        for j in &self.jobs {
            let states: Vec<Option<JobState>> =
                self.nodes.iter().map(|n| n.machine.state(&j.id)).collect();
            let first = &states[0];
            match first {
                Some(JobState::Done { .. }) => self.out.done += 1,
                Some(JobState::Skipped) => self.out.skipped += 1,
                Some(JobState::GivenUp { .. }) => self.out.given_up += 1,
                other => {
                    let k = self.jobs.iter().position(|x| x.id == j.id);
                    let rec = self
                        .records
                        .iter()
                        .position(|r| matches!(r, Rec::Job(_, x) if Some(*x) == k));
                    let holders = rec.map_or(0, |r| {
                        self.nodes
                            .iter()
                            .filter(|n| n.store.contains_key(&r))
                            .count()
                    });
                    if holders == 0 && self.sc.wipe_on_restart {
                        // Its announcer's disk died before any other node held the record:
                        // for the mesh it was never announced (a real announcer announces
                        // the branch head again once it is back; a record is safe only once
                        // another node holds it).
                        self.out.lost_announcements += 1;
                        continue;
                    }
                    return Err(format!(
                        "liveness: job {} still {other:?} at the end, with every worker back \
                         ({holders} of {} nodes hold its announcement)",
                        j.id.short(),
                        self.nodes.len()
                    ));
                }
            }
            // Nothing the rogue published counts: it never wins an attempt nor gives a verdict.
            let rogue = self.rogue;
            if let Some(i) = states.iter().position(|s| {
                matches!(s, Some(JobState::Done { worker, .. } | JobState::Running { worker, .. }) if *worker == rogue)
            }) {
                return Err(format!(
                    "entitlement: node {i} counts the rogue's record for job {}: {:?}",
                    j.id.short(),
                    states[i]
                ));
            }
            if let Some((i, s)) = states.iter().enumerate().find(|(_, s)| *s != first) {
                return Err(format!(
                    "agreement: node 0 says {first:?} of job {}, node {i} says {s:?}",
                    j.id.short()
                ));
            }
        }
        Ok(())
    }
}

/// Runs seeds `from..to`, returning the first violation.
pub fn run_seeds(from: u64, to: u64) -> Result<Vec<Outcome>, Violation> {
    (from..to).map(|s| World::new(s).run()).collect()
}

/// Runs seeds `from..to` with a rogue worker ([`World::with_rogue`]).
pub fn run_rogue_seeds(from: u64, to: u64) -> Result<Vec<Outcome>, Violation> {
    (from..to).map(|s| World::with_rogue(s).run()).collect()
}

/// Lease plus one step: the re-claim bound the design promises.
pub fn promised_reclaim() -> Duration {
    let s = ClaimSettings::default();
    s.lease + s.step
}
