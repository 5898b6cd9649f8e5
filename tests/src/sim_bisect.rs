//! The bisection rules (`buildmesh_protocol::bisect`) under a seeded simulator.
//!
//! Each seed draws a range of 2 to 200 commits with its first bad commit, 1 to 20 idle
//! workers, probes that take 1 to 3 time units and finish in any order, a few exceptions, and
//! for some seeds flakiness (a probe of a bad commit fails with probability `p` in [0.7, 1], one
//! of a good commit with `q` in [0, 0.05]) or a lying worker (it fails every probe; only among
//! four or more workers, so that honest ones can outvote it). Checked for every seed: no worker
//! builds a commit again once it gave it a verdict (an exception may be retried); without flakiness the culprit named is the first bad commit,
//! within ⌈log_{k+1}(n)⌉ split rounds when no worker lies. With flakiness the share of right
//! answers is measured and printed.

use std::collections::BTreeSet;

use buildmesh_protocol::bisect::{BisectSettings, Bisection, Outcome, Probe, round_bound};
use buildmesh_protocol::{NodeId, SecretKey, Timestamp};

use crate::sim::Rng;

/// One seed's world.
#[derive(Clone, Debug)]
pub struct BisectWorld {
    /// The seed.
    pub seed: u64,
    /// Commits after the last green one (the red one last).
    pub n: usize,
    /// Workers.
    pub k: usize,
    /// The first bad commit (1..=n).
    pub culprit: usize,
    /// Probability that a probe of a bad commit fails.
    pub p: f64,
    /// Probability that a probe of a good commit fails.
    pub q: f64,
    /// The lying worker, if any.
    pub liar: Option<usize>,
    /// One probe at a time (the classic binary search), for comparison.
    pub one_at_a_time: bool,
}

/// How one seed went.
#[derive(Clone, Debug)]
pub struct BisectOutcome {
    /// The world.
    pub world: BisectWorld,
    /// The culprit named, if one was.
    pub found: Option<usize>,
    /// Split rounds.
    pub rounds: u32,
    /// Probes started.
    pub probes: usize,
    /// Time units from the red to the culprit.
    pub time: u64,
}

impl BisectOutcome {
    /// Whether the world had flaky probes.
    pub fn flaky(&self) -> bool {
        self.world.p < 1.0 || self.world.q > 0.0
    }
}

impl BisectWorld {
    /// The world of `seed`.
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x00b1_5ec7);
        let n = rng.range(2, 200) as usize;
        let k = rng.range(1, 20) as usize;
        let culprit = rng.range(1, n as u64) as usize;
        let flaky = rng.chance(0.4);
        let (p, q) = if flaky {
            (
                0.7 + rng.range(0, 300) as f64 / 1000.0,
                rng.range(0, 50) as f64 / 1000.0,
            )
        } else {
            (1.0, 0.0)
        };
        let liar = (k >= 4 && rng.chance(0.3)).then(|| rng.range(0, k as u64 - 1) as usize);
        BisectWorld {
            seed,
            n,
            k,
            culprit,
            p,
            q,
            liar,
            one_at_a_time: false,
        }
    }

    /// A world of its own making (the benchmark's fixed cases).
    pub fn fixed(seed: u64, n: usize, k: usize, culprit: usize, one_at_a_time: bool) -> Self {
        BisectWorld {
            seed,
            n,
            k,
            culprit,
            p: 1.0,
            q: 0.0,
            liar: None,
            one_at_a_time,
        }
    }

    /// Runs the search to its end; `Err` names the broken rule and how to replay the seed.
    pub fn run(&self) -> Result<BisectOutcome, String> {
        let mut rng = Rng::new(self.seed ^ 0x5eed);
        let workers: Vec<NodeId> = (0..self.k)
            .map(|i| SecretKey::from_seed([i as u8 + 1; 32]).id())
            .collect();
        let shas: Vec<String> = (0..=self.n).map(|i| format!("{i:040x}")).collect();
        let red_worker = workers[rng.range(0, self.k as u64 - 1) as usize];
        let settings = BisectSettings {
            recheck_wait: std::time::Duration::from_millis(30),
            max_split: if self.one_at_a_time { 1 } else { usize::MAX },
        };
        let mut b = Bisection::new(shas, red_worker, settings)
            .map_err(|e| format!("seed {}: {e}", self.seed))?;
        let fail = |what: String| {
            format!(
                "seed {}: {what} ({self:?}; replay: SIM_BISECT_SEED={} cargo test -p buildmesh-tests --test sim)",
                self.seed, self.seed
            )
        };
        let mut running: Vec<(u64, Probe)> = Vec::new();
        // (commit, worker) pairs that gave a verdict: never asked again (bar a fleet of one).
        let mut judged: BTreeSet<(usize, NodeId)> = BTreeSet::new();
        let mut now: u64 = 0;
        let mut probes = 0;
        for _ in 0..100_000 {
            let busy: BTreeSet<NodeId> = running.iter().map(|(_, p)| p.worker).collect();
            let idle: Vec<NodeId> = workers
                .iter()
                .copied()
                .filter(|w| !busy.contains(w))
                .collect();
            for p in b.next(&idle, Timestamp(now)) {
                if busy.contains(&p.worker) || !idle.contains(&p.worker) {
                    return Err(fail(format!(
                        "probe {p:?} given to a worker that is not idle"
                    )));
                }
                if judged.contains(&(p.index, p.worker)) && self.k > 1 {
                    return Err(fail(format!(
                        "commit {} built again on a worker that gave it a verdict ({:?})",
                        p.index, p.kind
                    )));
                }
                probes += 1;
                running.push((now + rng.range(1, 3), p));
            }
            if b.culprit().is_some() {
                break;
            }
            if running.is_empty() {
                // Nothing runs and nothing was asked: only the recheck's wait passes.
                now += 1;
                continue;
            }
            // The next probe to finish (ties in any order).
            let soonest = running.iter().map(|(t, _)| *t).min().unwrap_or(now);
            let ready: Vec<usize> = (0..running.len())
                .filter(|i| running[*i].0 == soonest)
                .collect();
            let (t, probe) = running.remove(ready[rng.range(0, ready.len() as u64 - 1) as usize]);
            now = t;
            let liar = self.liar.map(|l| workers[l]) == Some(probe.worker);
            let bad = probe.index >= self.culprit;
            let outcome = if rng.chance(0.02) {
                Outcome::NoVerdict
            } else if liar
                || (bad && rng.chance(self.p))
                || (!bad && self.q > 0.0 && rng.chance(self.q))
            {
                Outcome::Fail
            } else {
                Outcome::Pass
            };
            if std::env::var_os("SIM_TRACE").is_some() {
                let who = workers.iter().position(|w| *w == probe.worker).unwrap_or(0);
                println!(
                    "t={now} {:?} commit {} on worker {who}{}: {outcome:?}; open {:?}",
                    probe.kind,
                    probe.index,
                    if liar { " (liar)" } else { "" },
                    b.open()
                );
            }
            if outcome != Outcome::NoVerdict {
                judged.insert((probe.index, probe.worker));
            }
            b.report(probe.index, probe.worker, outcome);
        }
        let found = b.culprit().map(|c| c.index);
        let outcome = BisectOutcome {
            world: self.clone(),
            found,
            rounds: b.rounds(),
            probes,
            time: now,
        };
        if !outcome.flaky() {
            if found != Some(self.culprit) {
                return Err(fail(format!(
                    "named {found:?}, the first bad commit is {} (open range {:?})",
                    self.culprit,
                    b.open()
                )));
            }
            let bound = round_bound(self.n, self.k);
            if self.liar.is_none() && !self.one_at_a_time && b.rounds() > bound {
                return Err(fail(format!(
                    "{} split rounds, more than ⌈log_{}({})⌉ = {bound}",
                    b.rounds(),
                    self.k + 1,
                    self.n
                )));
            }
        }
        Ok(outcome)
    }
}

/// Runs seeds `from..to`.
pub fn run_bisect_seeds(from: u64, to: u64) -> Result<Vec<BisectOutcome>, String> {
    (from..to).map(|s| BisectWorld::new(s).run()).collect()
}
