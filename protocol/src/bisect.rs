//! Culprit finding: which commit of a range first turned a builder red, found by building
//! commits of the range on idle workers, several at once.
//!
//! The range is the first-parent line from the builder's last green commit (index 0, good) to
//! its red one (index `n`, bad, already confirmed like any red). With `k` idle workers a round
//! probes `k` commits that split what is still open into `k + 1` parts (n-section), so a range
//! of `n` commits takes at most ⌈log_{k+1}(n)⌉ rounds, plus the probes that confirm.
//!
//! What counts, per commit, from the votes of distinct workers:
//! - **bad**: two workers failed it and fewer passed it (a red is confirmed on another host, as
//!   any red is). Where only one worker exists at all, its own rerun confirms.
//! - **good**: it passed and nobody failed it, or two or more passed it and fewer failed it.
//! - otherwise **undecided**: one fail (confirm it on another worker), or as many fails as
//!   passes (another worker breaks the tie).
//!
//! The open range is (highest good below the lowest bad, lowest bad). No worker builds a commit
//! again once it gave it a verdict. Before a culprit is named, the last good commit must have
//! been built by the worker whose failure made the culprit bad (a changed or bad machine must
//! not mislead the search); if it fails there and others outvote it, that worker counts no
//! more; if the others fail it too, the search goes on below.
//!
//! Flakiness leans the rules one way: a bad commit passes by chance more often than a good one
//! fails, so a commit some worker failed and others have not yet outvoted caps the good end
//! below it, the last good commit needs two passes of other workers besides the recheck, and a
//! tie that no further worker can break counts as bad.
//!
//! The model the simulator (`tests/src/sim_bisect.rs`) checks it against: a probe of a bad
//! commit fails with probability `p`, one of a good commit with probability `q`, a lying worker
//! fails every probe, and 2 % of probes end without a verdict. Without flakiness the culprit
//! named is always the first bad commit (liar or not), within ⌈log_{k+1}(n)⌉ split rounds
//! when no worker lies (10,000 seeds). With `p` in [0.9, 1], `q` in [0, 0.05] and three workers
//! or more it is right 97 % of the time; with `p` in [0.7, 0.9) 86 %; with one or two workers,
//! who cannot outvote each other, 70 %.
//!
//! Sans-IO: [`Bisection::next`] takes the idle workers and the time and returns the probes to
//! start; [`Bisection::report`] takes a probe's outcome. The notifier holder drives it, so that
//! one node decides the probes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::keys::NodeId;
use crate::time::Timestamp;

/// How a probe came out, as the bisection sees it: a flaky build (failed, then passed on a
/// retry) is a pass; exceptions and cancellations say nothing about the commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The build passed.
    Pass,
    /// The build failed.
    Fail,
    /// No verdict: the infrastructure failed, or the build was cancelled.
    NoVerdict,
}

impl Outcome {
    /// How a build's result counts as a probe: a verdict passes or fails, anything else (an
    /// exception, a cancellation) says nothing.
    pub fn of(result: crate::record::ResultCode) -> Outcome {
        use crate::record::ResultCode;
        match result {
            ResultCode::Success | ResultCode::Warnings | ResultCode::Flaky => Outcome::Pass,
            ResultCode::Failure => Outcome::Fail,
            ResultCode::Exception | ResultCode::Cancelled => Outcome::NoVerdict,
        }
    }
}

/// Why a probe is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    /// A split point of a round.
    Split,
    /// Another worker's vote on a commit whose votes disagree or stand alone.
    Confirm,
    /// The last good commit built on the worker that failed the culprit.
    Recheck,
}

/// A build the bisection asks for: commit `index` of the range on `worker`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Position in the range (0: the last green commit).
    pub index: usize,
    /// Its commit.
    pub sha: String,
    /// Who builds it.
    pub worker: NodeId,
    /// Why.
    pub kind: ProbeKind,
}

/// The end of a search.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Culprit {
    /// Position of the first bad commit in the range.
    pub index: usize,
    /// Its commit.
    pub sha: String,
    /// Whether the last good commit was built again on the worker that failed the culprit
    /// (false: that worker did not come back within the recheck wait).
    pub rechecked: bool,
}

/// A range that cannot be searched.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BisectError {
    /// A range needs its good and its bad end.
    #[error("a range needs at least the last good and the first bad commit")]
    TooShort,
}

/// Timing of a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BisectSettings {
    /// How long the recheck waits for the worker that failed the culprit to be idle, before the
    /// culprit is named without it.
    pub recheck_wait: Duration,
    /// The most split points of one round (default: one per idle worker; 1 is the classic
    /// binary search, one probe at a time).
    pub max_split: usize,
}

impl Default for BisectSettings {
    fn default() -> Self {
        BisectSettings {
            recheck_wait: Duration::from_secs(600),
            max_split: usize::MAX,
        }
    }
}

/// One search over one range.
#[derive(Clone, Debug)]
pub struct Bisection {
    shas: Vec<String>,
    settings: BisectSettings,
    /// Votes per commit, in the order they came: (worker, outcome), one per worker and commit.
    votes: BTreeMap<usize, Vec<(NodeId, Outcome)>>,
    /// Workers that failed the last good commit when asked to build it again: their machine
    /// fails good code, so none of their votes counts any more.
    distrusted: BTreeSet<NodeId>,
    /// Probes started and not yet reported.
    outstanding: BTreeMap<(usize, NodeId), ProbeKind>,
    /// Every (commit, worker) ever asked, whatever came of it: a commit is built at most once
    /// per worker (an exception's worker is not asked again either).
    tried: BTreeSet<(usize, NodeId)>,
    /// Every worker seen idle: a fleet of one confirms on itself.
    fleet: BTreeSet<NodeId>,
    rounds: u32,
    /// The split points of the current round: one whose probe came back without a verdict is
    /// asked again of another worker before the next round starts.
    round: BTreeSet<usize>,
    /// When the recheck first waited for its worker.
    recheck_since: Option<Timestamp>,
    culprit: Option<Culprit>,
}

impl Bisection {
    /// A search over `shas` (oldest first: the last green commit, the commits after it on the
    /// first-parent line, the red one last), whose red was reported by `red_worker`.
    pub fn new(
        shas: Vec<String>,
        red_worker: NodeId,
        settings: BisectSettings,
    ) -> Result<Self, BisectError> {
        if shas.len() < 2 {
            return Err(BisectError::TooShort);
        }
        let n = shas.len() - 1;
        let mut b = Bisection {
            shas,
            settings,
            votes: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            tried: BTreeSet::new(),
            distrusted: BTreeSet::new(),
            fleet: BTreeSet::from([red_worker]),
            rounds: 0,
            round: BTreeSet::new(),
            recheck_since: None,
            culprit: None,
        };
        // The red end is confirmed red, as every red the list hears of; the green end is green.
        b.votes.insert(n, vec![(red_worker, Outcome::Fail)]);
        Ok(b)
    }

    /// The culprit, once named.
    pub fn culprit(&self) -> Option<&Culprit> {
        self.culprit.as_ref()
    }

    /// Split rounds started so far.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// The open range: (highest good index below the lowest bad one, lowest bad index). A
    /// commit some worker failed, still undecided, caps the good end below it: a pass above a
    /// fail is the likelier lie (a bad commit passes more often than a good one fails).
    pub fn open(&self) -> (usize, usize) {
        let n = self.shas.len() - 1;
        let bad = (1..=n).find(|i| self.state(*i) == State::Bad).unwrap_or(n);
        let disputed = (1..bad)
            .find(|i| {
                self.state(*i) == State::Undecided
                    && self.counted(*i).any(|(_, o)| *o == Outcome::Fail)
            })
            .unwrap_or(bad);
        let good = (0..disputed)
            .rev()
            .find(|i| self.state(*i) == State::Good)
            .unwrap_or(0);
        (good, bad)
    }

    /// Every vote so far: (index, worker, outcome), distrusted workers' included.
    pub fn votes(&self) -> impl Iterator<Item = (usize, NodeId, Outcome)> + '_ {
        self.votes
            .iter()
            .flat_map(|(i, v)| v.iter().map(move |(w, o)| (*i, *w, *o)))
    }

    /// Workers whose votes no longer count: they failed the last good commit on a recheck.
    pub fn distrusted(&self) -> &BTreeSet<NodeId> {
        &self.distrusted
    }

    /// Records how a probe came out. A report for a probe never asked for still counts as a
    /// vote (a worker may have built the commit anyway), once per worker and commit.
    pub fn report(&mut self, index: usize, worker: NodeId, outcome: Outcome) {
        self.outstanding.remove(&(index, worker));
        if index >= self.shas.len() || self.culprit.is_some() {
            return;
        }
        self.fleet.insert(worker);
        if outcome == Outcome::NoVerdict {
            return;
        }
        let votes = self.votes.entry(index).or_default();
        if votes.iter().any(|(w, _)| *w == worker) {
            return;
        }
        votes.push((worker, outcome));
    }

    /// Since when the search waits for the worker that failed the culprit to build the last
    /// good commit again (a step that starts the wait is recorded, so that replays wait as long).
    pub fn waiting_since(&self) -> Option<Timestamp> {
        self.recheck_since
    }

    /// Probes asked for and not reported yet: (index, worker).
    pub fn outstanding(&self) -> impl Iterator<Item = (usize, NodeId)> + '_ {
        self.outstanding.keys().copied()
    }

    /// Every probe ever asked for: (index, worker).
    pub fn asked_probes(&self) -> impl Iterator<Item = (usize, NodeId)> + '_ {
        self.tried.iter().copied()
    }

    /// The commits of the range, oldest first.
    pub fn shas(&self) -> &[String] {
        &self.shas
    }

    /// One step of a search as the node deciding it records it: the outcomes it learnt since
    /// the last step, then the probes to start now. Every node that replays the same steps
    /// from the same start reaches the same state: [`Bisection::next`] is a function of the
    /// state, the idle workers and the time, all recorded.
    pub fn step(
        &mut self,
        reports: &[(usize, NodeId, Outcome)],
        idle: &[NodeId],
        now: Timestamp,
    ) -> Vec<Probe> {
        for (i, w, o) in reports {
            self.report(*i, *w, *o);
        }
        self.next(idle, now)
    }

    /// The probes to start now, on workers from `idle` (each gets at most one).
    pub fn next(&mut self, idle: &[NodeId], now: Timestamp) -> Vec<Probe> {
        if self.culprit.is_some() {
            return Vec::new();
        }
        self.fleet.extend(idle.iter().copied());
        let busy: BTreeSet<NodeId> = self.outstanding.keys().map(|(_, w)| *w).collect();
        let mut free: Vec<NodeId> = idle
            .iter()
            .copied()
            .filter(|w| !busy.contains(w))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut out = Vec::new();
        let (good, bad) = self.open();

        // Votes that disagree or stand alone inside the open range (and at its bad end) first.
        for i in good + 1..=bad {
            let voted_on = self.counted(i).next().is_some();
            if !voted_on || self.state(i) != State::Undecided || self.asked(i) {
                continue;
            }
            if let Some(w) = self.voter_for(i, &free) {
                free.retain(|x| *x != w);
                out.push(self.ask(i, w, ProbeKind::Confirm));
            }
        }
        // Split points of this round that came back without a verdict (an exception).
        let unanswered: Vec<usize> = self
            .round
            .iter()
            .copied()
            .filter(|i| *i > good && *i < bad && !self.asked(*i))
            .filter(|i| self.counted(*i).next().is_none())
            .collect();
        for i in unanswered {
            if let Some(w) = self.voter_for(i, &free) {
                free.retain(|x| *x != w);
                out.push(self.ask(i, w, ProbeKind::Split));
            }
        }
        if !out.is_empty() || !self.outstanding.is_empty() {
            return out;
        }

        if bad == good + 1 {
            // The culprit is `bad`, once the worker that failed it has built `good` again.
            let Some(failer) = self.first_failer(bad) else {
                // Nobody trusted failed it here: the red end as the list was told of it.
                return self.name(bad, false);
            };
            // The last good commit stands on two passes of other workers besides the
            // recheck: a bad commit passes by chance more often than a good one fails, and a
            // good end that is really bad would name a later commit.
            let others = self
                .counted(good)
                .filter(|(w, o)| *w != failer && *o == Outcome::Pass)
                .count();
            let mut out = Vec::new();
            if good > 0 && others < 2 && !self.asked(good) {
                let without: Vec<NodeId> = free.iter().copied().filter(|w| *w != failer).collect();
                if let Some(w) = self.voter_for(good, &without) {
                    free.retain(|x| *x != w);
                    out.push(self.ask(good, w, ProbeKind::Confirm));
                }
            }
            let failer_vote = self
                .counted(good)
                .find(|(w, _)| *w == failer)
                .map(|(_, o)| *o);
            if good > 0 && others < 2 {
                if free.contains(&failer) && failer_vote.is_none() {
                    out.push(self.ask(good, failer, ProbeKind::Recheck));
                }
                if !out.is_empty() || !self.outstanding.is_empty() || self.can_vote(good) {
                    return out;
                }
                // Nobody else can build it: the recheck alone decides.
            }
            if let Some(vote) = failer_vote {
                if vote == Outcome::Pass {
                    return self.name(bad, true);
                }
                // It failed the last good commit. Either its machine fails good code, or that
                // commit passed by chance and is bad. Only a clear majority of passes (more
                // than twice the fails) keeps it good; until then more workers build it.
                let (fails, passes) = self.tally(good);
                // The last green commit is green by definition (the list was told so).
                if good == 0 || passes > 2 * fails {
                    // Its failure of the culprit proves nothing.
                    self.distrusted.insert(failer);
                    return self.next(idle, now);
                }
                if good > 0
                    && let Some(w) = self.voter_for(good, &free)
                {
                    return vec![self.ask(good, w, ProbeKind::Confirm)];
                }
                return Vec::new();
            }
            if free.contains(&failer) {
                return vec![self.ask(good, failer, ProbeKind::Recheck)];
            }
            let since = *self.recheck_since.get_or_insert(now);
            if now.since(since) >= self.settings.recheck_wait {
                return self.name(bad, false);
            }
            return Vec::new();
        }

        // A round: split the open range into free + 1 parts.
        let k = free.len().min(self.settings.max_split);
        if k == 0 {
            return Vec::new();
        }
        // Evenly over the commits of the open range nobody has built yet.
        let unbuilt: Vec<usize> = (good + 1..bad)
            .filter(|i| self.counted(*i).next().is_none() && !self.asked(*i))
            .collect();
        let m = unbuilt.len() + 1;
        let mut points: Vec<usize> = (1..=k)
            .map(|j| (m * j).div_ceil(k + 1))
            .filter(|j| *j >= 1 && *j < m)
            .map(|j| unbuilt[j - 1])
            .collect();
        points.dedup();
        let mut round = Vec::new();
        for i in points {
            if let Some(w) = self.voter_for(i, &free) {
                free.retain(|x| *x != w);
                round.push(self.ask(i, w, ProbeKind::Split));
            }
        }
        if !round.is_empty() {
            self.rounds += 1;
            self.round = round.iter().map(|p| p.index).collect();
        }
        round
    }

    fn name(&mut self, index: usize, rechecked: bool) -> Vec<Probe> {
        self.culprit = Some(Culprit {
            index,
            sha: self.shas[index].clone(),
            rechecked,
        });
        Vec::new()
    }

    fn ask(&mut self, index: usize, worker: NodeId, kind: ProbeKind) -> Probe {
        self.outstanding.insert((index, worker), kind);
        self.tried.insert((index, worker));
        Probe {
            index,
            sha: self.shas[index].clone(),
            worker,
            kind,
        }
    }

    /// Whether some trusted worker of the fleet could still vote on `index`.
    fn can_vote(&self, index: usize) -> bool {
        self.fleet
            .iter()
            .any(|w| !self.distrusted.contains(w) && !self.voted(index, w))
    }

    fn asked(&self, index: usize) -> bool {
        self.outstanding.keys().any(|(i, _)| *i == index)
    }

    /// The votes on `index` that count (not a distrusted worker's), in the order they came.
    fn counted(&self, index: usize) -> impl Iterator<Item = &(NodeId, Outcome)> {
        self.votes
            .get(&index)
            .into_iter()
            .flatten()
            .filter(|(w, _)| !self.distrusted.contains(w))
    }

    /// (fails, passes) among the counted votes on `index`.
    fn tally(&self, index: usize) -> (usize, usize) {
        self.counted(index).fold((0, 0), |(f, p), (_, o)| match o {
            Outcome::Fail => (f + 1, p),
            Outcome::Pass => (f, p + 1),
            Outcome::NoVerdict => (f, p),
        })
    }

    fn voted(&self, index: usize, worker: &NodeId) -> bool {
        self.tried.contains(&(index, *worker))
            || self
                .votes
                .get(&index)
                .is_some_and(|v| v.iter().any(|(w, _)| w == worker))
    }

    /// A free, trusted worker to build `index`: first one never asked for it, then one whose
    /// build of it gave no verdict (an exception says nothing of the commit), and in a fleet of
    /// one that one for its second vote.
    fn voter_for(&self, index: usize, free: &[NodeId]) -> Option<NodeId> {
        let trusted = |w: &&NodeId| !self.distrusted.contains(*w);
        let has_vote = |w: &NodeId| {
            self.votes
                .get(&index)
                .is_some_and(|v| v.iter().any(|(x, _)| x == w))
        };
        free.iter()
            .filter(trusted)
            .find(|w| !self.voted(index, w))
            .or_else(|| free.iter().filter(trusted).find(|w| !has_vote(w)))
            .or_else(|| {
                let alone = self.fleet.len() == 1 && self.counted(index).count() == 1;
                free.iter().find(|_| alone).filter(trusted)
            })
            .copied()
    }

    /// The trusted worker whose failure of `index` came first.
    fn first_failer(&self, index: usize) -> Option<NodeId> {
        self.counted(index)
            .find(|(_, o)| *o == Outcome::Fail)
            .map(|(w, _)| *w)
    }

    fn state(&self, index: usize) -> State {
        let n = self.shas.len() - 1;
        if index == 0 {
            return State::Good;
        }
        let (fails, passes) = self.tally(index);
        // A fleet of one confirms on itself: its one fail stands.
        let confirmed = if self.fleet.len() == 1 { 1 } else { 2 };
        if index == n && passes == 0 {
            return State::Bad;
        }
        if fails >= confirmed && fails > passes {
            State::Bad
        } else if (passes >= 1 && fails == 0) || (passes >= 2 && passes > fails) {
            State::Good
        } else if fails > 0 && !self.can_vote(index) {
            // Every worker has had its say and the fails hold their ground: a tie is likelier
            // from a bad commit that passes by chance than from a good one that fails.
            if fails >= passes {
                State::Bad
            } else {
                State::Good
            }
        } else {
            State::Undecided
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Good,
    Bad,
    Undecided,
}

/// The most split rounds a range of `n` commits takes with `k` workers: ⌈log_{k+1}(n)⌉.
pub fn round_bound(n: usize, k: usize) -> u32 {
    let mut rounds = 0;
    let mut left = n.max(1);
    while left > 1 {
        left = left.div_ceil(k + 1);
        rounds += 1;
    }
    rounds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(i: u8) -> NodeId {
        crate::SecretKey::from_seed([i; 32]).id()
    }

    fn shas(n: usize) -> Vec<String> {
        (0..=n).map(|i| format!("{i:040x}")).collect()
    }

    /// Runs a search where commits from `culprit` on fail and everything else passes.
    fn run(n: usize, k: u8, culprit: usize) -> Bisection {
        let workers: Vec<NodeId> = (1..=k).map(w).collect();
        let mut b = Bisection::new(shas(n), w(1), BisectSettings::default()).unwrap();
        for _ in 0..1000 {
            let probes = b.next(&workers, Timestamp(0));
            if b.culprit().is_some() {
                break;
            }
            for p in probes {
                let o = if p.index >= culprit {
                    Outcome::Fail
                } else {
                    Outcome::Pass
                };
                b.report(p.index, p.worker, o);
            }
        }
        b
    }

    #[test]
    fn n_section_finds_the_first_bad_commit_within_the_round_bound() {
        for (n, k) in [(2, 1), (30, 3), (30, 10), (200, 3), (200, 10), (7, 20)] {
            for culprit in [1, n / 3 + 1, n] {
                let b = run(n, k, culprit);
                let c = b
                    .culprit()
                    .unwrap_or_else(|| panic!("n={n} k={k} culprit={culprit}: none"));
                assert_eq!(c.index, culprit, "n={n} k={k}");
                assert!(c.rechecked);
                assert!(
                    b.rounds() <= round_bound(n, k as usize),
                    "n={n} k={k}: {} rounds, bound {}",
                    b.rounds(),
                    round_bound(n, k as usize)
                );
            }
        }
    }

    #[test]
    fn one_failure_is_confirmed_on_another_worker_and_a_lone_fail_does_not_convict() {
        let mut b = Bisection::new(shas(4), w(1), BisectSettings::default()).unwrap();
        let probes = b.next(&[w(2)], Timestamp(0));
        assert_eq!(probes.len(), 1);
        let i = probes[0].index;
        b.report(i, w(2), Outcome::Fail);
        // The fail alone is not enough: another worker is asked, never the same one.
        let again = b.next(&[w(2), w(3)], Timestamp(0));
        assert_eq!(again.len(), 1);
        assert_eq!(
            (again[0].index, again[0].worker, again[0].kind),
            (i, w(3), ProbeKind::Confirm)
        );
        b.report(i, w(3), Outcome::Pass);
        // A tie: a third worker decides.
        let third = b.next(&[w(2), w(3), w(4)], Timestamp(0));
        assert_eq!((third[0].index, third[0].worker), (i, w(4)));
    }

    #[test]
    fn the_culprit_waits_for_the_recheck_on_the_failing_worker_then_gives_up() {
        let settings = BisectSettings {
            recheck_wait: Duration::from_secs(60),
            ..Default::default()
        };
        let mut b = Bisection::new(shas(1), w(1), settings).unwrap();
        // Worker 1 failed the red end; it is busy elsewhere.
        assert!(b.next(&[w(2)], Timestamp(0)).is_empty());
        assert!(b.culprit().is_none());
        assert!(b.next(&[w(2)], Timestamp(59_000)).is_empty());
        assert!(b.culprit().is_none());
        b.next(&[w(2)], Timestamp(60_000));
        assert_eq!(
            b.culprit().map(|c| (c.index, c.rechecked)),
            Some((1, false))
        );

        let mut b = Bisection::new(shas(1), w(1), settings).unwrap();
        let p = b.next(&[w(1)], Timestamp(0));
        assert_eq!((p[0].index, p[0].kind), (0, ProbeKind::Recheck));
        b.report(0, w(1), Outcome::Pass);
        b.next(&[w(1)], Timestamp(0));
        assert_eq!(b.culprit().map(|c| (c.index, c.rechecked)), Some((1, true)));
    }

    #[test]
    fn a_worker_that_fails_the_last_good_commit_on_the_recheck_counts_no_more() {
        // Commits 0..=4; worker 9's machine fails everything; the real culprit is 4.
        let mut b = Bisection::new(shas(4), w(1), BisectSettings::default()).unwrap();
        let honest = |i: usize| if i >= 4 { Outcome::Fail } else { Outcome::Pass };
        b.report(3, w(9), Outcome::Fail);
        b.report(3, w(2), Outcome::Fail);
        b.report(2, w(3), Outcome::Pass);
        // 3 looks bad (two fails), 2 good: the recheck of 2 goes to worker 9, which fails it.
        let p = b.next(&[w(9)], Timestamp(0));
        assert_eq!(
            (p[0].index, p[0].worker, p[0].kind),
            (2, w(9), ProbeKind::Recheck)
        );
        b.report(2, w(9), Outcome::Fail);
        // Its fail is one vote against two passes' worth: others are asked, they pass 2, and
        // worker 9 no longer counts.
        for _ in 0..5 {
            for p in b.next(&[w(4), w(5)], Timestamp(0)) {
                b.report(p.index, p.worker, honest(p.index));
            }
        }
        assert!(
            b.distrusted().contains(&w(9)),
            "{:?}",
            b.votes().collect::<Vec<_>>()
        );
        // Now 3 rests on worker 2's fail alone (a flaky one here): others are asked.
        for _ in 0..20 {
            let probes = b.next(&[w(1), w(2), w(3), w(4), w(5), w(9)], Timestamp(0));
            assert!(probes.iter().all(|p| p.worker != w(9)), "{probes:?}");
            if b.culprit().is_some() {
                break;
            }
            for p in probes {
                b.report(p.index, p.worker, honest(p.index));
            }
        }
        assert_eq!(b.culprit().map(|c| c.index), Some(4));
    }

    #[test]
    fn round_bounds() {
        assert_eq!(round_bound(1, 1), 0);
        assert_eq!(round_bound(2, 1), 1);
        assert_eq!(round_bound(30, 3), 3);
        assert_eq!(round_bound(200, 10), 3);
        assert_eq!(round_bound(200, 1), 8);
    }

    #[test]
    fn replaying_the_recorded_steps_reaches_the_same_search() {
        // A search driven as the holder drives it: reports learnt, idle workers varying, the
        // time moving; every step's inputs written down, then replayed on a fresh search.
        let n = 60;
        let culprit = 41;
        let all: Vec<NodeId> = (1..=5).map(w).collect();
        let mut live = Bisection::new(shas(n), w(1), BisectSettings::default()).unwrap();
        let mut steps = Vec::new();
        let mut pending: Vec<Probe> = Vec::new();
        for round in 0..200u64 {
            let reports: Vec<(usize, NodeId, Outcome)> = pending
                .drain(..)
                .map(|p| {
                    let o = if round % 7 == 3 {
                        Outcome::NoVerdict
                    } else if p.index >= culprit {
                        Outcome::Fail
                    } else {
                        Outcome::Pass
                    };
                    (p.index, p.worker, o)
                })
                .collect();
            let idle: Vec<NodeId> = all
                .iter()
                .copied()
                .filter(|x| !(round as usize + x.as_bytes()[0] as usize).is_multiple_of(3))
                .collect();
            let now = Timestamp(round * 1_000);
            let probes = live.step(&reports, &idle, now);
            steps.push((reports, idle, now, probes.clone()));
            pending = probes;
            if live.culprit().is_some() {
                break;
            }
        }
        let named = live.culprit().cloned().expect("a culprit");
        assert_eq!(named.index, culprit);
        let mut again = Bisection::new(shas(n), w(1), BisectSettings::default()).unwrap();
        for (reports, idle, now, probes) in &steps {
            assert_eq!(&again.step(reports, idle, *now), probes);
        }
        assert_eq!(again.culprit(), Some(&named));
        assert_eq!(again.rounds(), live.rounds());
    }
}
