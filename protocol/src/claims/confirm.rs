//! Confirmation jobs, host health and re-validation, on the claim machine's job table (the
//! rules are set out in [`crate::health`]).

use std::collections::{BTreeMap, BTreeSet};

use super::{Claims, Job, JobSpec, JobState};
use crate::health::{self, ConfirmMode, Event, Health, HealthSettings};
use crate::keys::{Hash, NodeId};
use crate::record::{BuildState, JobKey, Purpose, ResultCode};
use crate::time::Timestamp;

/// How often a tick recomputes health, at most.
const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A confirmation job goes before every ordinary job.
const CONFIRM_PRIORITY: i32 = 1 << 20;
/// A re-validation job goes after every ordinary job.
const REVALIDATE_PRIORITY: i32 = -(1 << 20);

// A worker's events as (commit order, job, attempt, event), and its green re-validations per
// quarantine episode.
type WorkerEvents = (Vec<(u64, Hash, u32, Event)>, BTreeMap<u32, u32>);

/// Where the confirmation of a job's red stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// Nothing to confirm: not a red, or a builder that does not confirm.
    NotNeeded,
    /// The confirmation job is open or running.
    Waiting {
        /// The confirmation job.
        job: Hash,
    },
    /// The red was reproduced.
    Reproduced {
        /// The confirmation job.
        job: Hash,
        /// Who reproduced it.
        worker: NodeId,
        /// Whether on the same machine (no other host was available).
        same_host: bool,
    },
    /// The red was not reproduced.
    NotReproduced {
        /// The confirmation job.
        job: Hash,
        /// Who built it.
        worker: NodeId,
        /// Its verdict.
        result: ResultCode,
        /// Whether on the same machine: then the red was flaky, not the host's fault.
        same_host: bool,
    },
    /// Every attempt of the confirmation failed to give a verdict: the red stands as it is.
    Unavailable {
        /// The confirmation job.
        job: Hash,
    },
}

impl Confirmation {
    /// The confirmation job, if there is one.
    pub fn job(&self) -> Option<Hash> {
        match self {
            Confirmation::NotNeeded => None,
            Confirmation::Waiting { job }
            | Confirmation::Reproduced { job, .. }
            | Confirmation::NotReproduced { job, .. }
            | Confirmation::Unavailable { job } => Some(*job),
        }
    }
}

impl Claims {
    /// The health settings in force (the builder configuration's `[health]`).
    pub fn set_health_settings(&mut self, settings: HealthSettings) {
        if self.health_settings != settings {
            self.health_settings = settings;
            self.health_dirty = true;
        }
    }

    /// The health settings in force.
    pub fn health_settings(&self) -> &HealthSettings {
        &self.health_settings
    }

    /// A maintainer released `worker` from its quarantine `episode` (a signed release document).
    pub fn release(&mut self, worker: NodeId, episode: u32) {
        if self.released.entry(worker).or_default().insert(episode) {
            self.health_dirty = true;
        }
    }

    /// Every worker's health as of the last tick (workers with no result yet are absent).
    pub fn health(&self) -> &BTreeMap<NodeId, Health> {
        &self.health
    }

    /// Whether `worker` is quarantined (as of the last tick).
    pub fn is_quarantined(&self, worker: &NodeId) -> bool {
        self.health
            .get(worker)
            .is_some_and(|h| h.quarantine.is_some())
    }

    /// Jobs this machine derived since the last call (confirmations and re-validations): the
    /// node replays what it stored of them, as for a job derived from a commit.
    pub fn take_new_jobs(&mut self) -> Vec<Hash> {
        std::mem::take(&mut self.new_jobs)
    }

    /// The spec of a job, if known.
    pub fn spec(&self, job: &Hash) -> Option<&JobSpec> {
        self.jobs.get(job).map(|j| &j.spec)
    }

    // Whether two workers are one machine: the same key, or the same `host` label.
    pub(super) fn same_host(&self, a: &NodeId, b: &NodeId) -> bool {
        if a == b {
            return true;
        }
        let host = |w: &NodeId| self.labels.get(w).and_then(|l| l.get("host"));
        host(a).is_some_and(|h| Some(h) == host(b))
    }

    // Whether `w` may take `spec` at all (counted claims): only its worker takes a
    // re-validation job or a culprit search's probe.
    pub(super) fn may_claim(spec: &JobSpec, w: &NodeId) -> bool {
        match spec.key.purpose {
            Purpose::Revalidate { worker, .. } | Purpose::Probe { worker, .. } => worker == *w,
            _ => true,
        }
    }

    // Whether `w` is ranked for `spec` now: a quarantined worker only for its re-validation.
    pub(super) fn may_rank(&self, spec: &JobSpec, w: &NodeId) -> bool {
        match spec.key.purpose {
            Purpose::Revalidate { worker, .. } => worker == *w,
            Purpose::Probe { worker, .. } => worker == *w && !self.is_quarantined(w),
            _ => !self.is_quarantined(w),
        }
    }

    // Whether `w` goes last for `spec`: for a confirmation on another host, the worker that
    // failed and its machine; for one on the same host, everyone else.
    pub(super) fn is_late(&self, spec: &JobSpec, w: &NodeId) -> bool {
        let Purpose::Confirm { worker, .. } = spec.key.purpose else {
            return false;
        };
        match spec.confirm {
            ConfirmMode::SameHost => *w != worker,
            _ => self.same_host(w, &worker),
        }
    }

    // How long this node waits before it takes `job` as a late claimant: the confirmation
    // wait, unless no other eligible host exists at all (a builder tied to one machine).
    pub(super) fn late_wait(&self, job: &Hash, _now: Timestamp) -> std::time::Duration {
        let Some(j) = self.jobs.get(job) else {
            return std::time::Duration::ZERO;
        };
        if !self.is_late(&j.spec, &self.me) || j.spec.confirm == ConfirmMode::SameHost {
            return std::time::Duration::ZERO;
        }
        let other_exists = self.workers.iter().any(|(id, w)| {
            super::labels_meet(&w.labels, &j.spec.requires)
                && !self.is_late(&j.spec, id)
                && !self.is_quarantined(id)
        });
        if other_exists {
            self.settings.confirm_wait
        } else {
            std::time::Duration::ZERO
        }
    }

    fn confirm_key(j: &Job, attempt: u32, worker: NodeId) -> JobKey {
        JobKey {
            purpose: Purpose::Confirm {
                job: j.spec.id,
                attempt,
                worker,
            },
            ..j.spec.key.clone()
        }
    }

    // After a job's claims or results changed: a red that needs confirming gets its
    // confirmation job (the same on every node: its key names the red it confirms).
    pub(super) fn follow_up(&mut self, id: &Hash, now: Timestamp) {
        let Some(j) = self.jobs.get(id) else {
            return;
        };
        if !j.spec.key.purpose.is_build() || j.spec.confirm == ConfirmMode::None {
            return;
        }
        let Some((attempt, worker, ResultCode::Failure)) = j.current() else {
            return;
        };
        let key = Self::confirm_key(j, attempt, worker);
        let spec = JobSpec {
            id: key.id(),
            key,
            requires: j.spec.requires.clone(),
            priority: j.spec.priority.saturating_add(CONFIRM_PRIORITY),
            order: j.spec.order,
            max_attempts: j.spec.max_attempts,
            confirm: j.spec.confirm,
        };
        if !self.jobs.contains_key(&spec.id) {
            let cid = spec.id;
            self.job(spec, now);
            self.new_jobs.push(cid);
        }
    }

    /// Where the confirmation of `job`'s red stands.
    pub fn confirmation(&self, job: &Hash) -> Confirmation {
        let Some(j) = self.jobs.get(job) else {
            return Confirmation::NotNeeded;
        };
        if !j.spec.key.purpose.is_build() || j.spec.confirm == ConfirmMode::None {
            return Confirmation::NotNeeded;
        }
        let Some((attempt, red_by, ResultCode::Failure)) = j.current() else {
            return Confirmation::NotNeeded;
        };
        let cid = Self::confirm_key(j, attempt, red_by).id();
        let Some(c) = self.jobs.get(&cid) else {
            return Confirmation::Waiting { job: cid };
        };
        match c.current() {
            Some((_, worker, ResultCode::Failure)) => Confirmation::Reproduced {
                job: cid,
                worker,
                same_host: self.same_host(&worker, &red_by),
            },
            Some((_, worker, result)) => Confirmation::NotReproduced {
                job: cid,
                worker,
                result,
                same_host: self.same_host(&worker, &red_by),
            },
            None if c.given_up || c.skipped => Confirmation::Unavailable { job: cid },
            None => Confirmation::Waiting { job: cid },
        }
    }

    /// Where a build stands as the views show it: its state, with a red's confirmation folded
    /// in (unconfirmed while it waits; a suspected host fault, or flaky on the same host, when
    /// it was not reproduced).
    pub fn build_state(&self, job: &Hash) -> Option<BuildState> {
        Some(match self.state(job)? {
            JobState::Pending { .. } => BuildState::Pending,
            JobState::Running { .. } => BuildState::Running,
            JobState::Skipped => BuildState::Skipped,
            JobState::GivenUp { .. } => BuildState::Exception,
            JobState::Cancelled { .. } => BuildState::Cancelled,
            JobState::Done {
                result: ResultCode::Failure,
                ..
            } => match self.confirmation(job) {
                Confirmation::Waiting { .. } => BuildState::Unconfirmed,
                Confirmation::NotReproduced {
                    same_host: false, ..
                } => BuildState::HostFault,
                Confirmation::NotReproduced {
                    same_host: true, ..
                } => BuildState::Flaky,
                _ => BuildState::Failure,
            },
            JobState::Done { result, .. } => result.into(),
        })
    }

    // Each worker's events, in commit order, and its green re-validations per episode.
    pub(super) fn events(&self) -> BTreeMap<NodeId, WorkerEvents> {
        self.events_of(|_| true)
    }

    // The same, from the jobs `of` picks only.
    pub(super) fn events_of(&self, of: impl Fn(&Hash) -> bool) -> BTreeMap<NodeId, WorkerEvents> {
        // Commits on which more than one worker threw: the origin, the configuration or the
        // commit, not a host.
        let mut threw: BTreeMap<(&str, &str), BTreeSet<NodeId>> = BTreeMap::new();
        for j in self.jobs.values() {
            for &a in j.counted.keys() {
                if let Some(w) = j.winner(a)
                    && j.results.get(&(a, w)) == Some(&ResultCode::Exception)
                {
                    threw
                        .entry((&j.spec.key.repo, &j.spec.key.sha))
                        .or_default()
                        .insert(w);
                }
            }
        }
        let mut out: BTreeMap<NodeId, WorkerEvents> = BTreeMap::new();
        for (id, j) in self.jobs.iter().filter(|(id, _)| of(id)) {
            if let Purpose::Revalidate {
                worker, episode, ..
            } = j.spec.key.purpose
            {
                if let Some((_, w, code)) = j.current()
                    && w == worker
                    && code != ResultCode::Failure
                {
                    *out.entry(w).or_default().1.entry(episode).or_insert(0) += 1;
                }
                continue;
            }
            // A confirmation counts only while it is the one its red asks for: a red that a
            // crossed claim later gave to another winner leaves its confirmation job behind,
            // known to some nodes only.
            if let Purpose::Confirm { job: origin, .. } = j.spec.key.purpose
                && self.confirmation(&origin).job() != Some(*id)
            {
                continue;
            }
            let current = j.current();
            for &a in j.counted.keys() {
                let Some(w) = j.winner(a) else {
                    continue;
                };
                let Some(&code) = j.results.get(&(a, w)) else {
                    continue;
                };
                let event = match code {
                    ResultCode::Exception => {
                        let shared = j.given_up
                            || threw
                                .get(&(j.spec.key.repo.as_str(), j.spec.key.sha.as_str()))
                                .is_some_and(|s| s.len() > 1);
                        (!shared).then_some(Event::Exception { job: *id })
                    }
                    ResultCode::Cancelled => None,
                    ResultCode::Failure if current.is_some_and(|(ca, _, _)| ca == a) => {
                        match self.confirmation(id) {
                            Confirmation::NotReproduced {
                                same_host: false, ..
                            } => Some(Event::Unreproduced { job: *id }),
                            // Flaky on its own host, or not known yet: neither way.
                            Confirmation::NotReproduced { .. } | Confirmation::Waiting { .. } => {
                                None
                            }
                            _ => Some(Event::Good),
                        }
                    }
                    // A red that a newer attempt's verdict replaced says nothing either way.
                    ResultCode::Failure => None,
                    ResultCode::Success | ResultCode::Warnings | ResultCode::Flaky => {
                        Some(Event::Good)
                    }
                };
                if let Some(e) = event {
                    out.entry(w).or_default().0.push((j.spec.order, *id, a, e));
                }
            }
        }
        for (events, _) in out.values_mut() {
            events.sort_by_key(|(order, id, a, _)| (*order, *id, *a));
        }
        out
    }

    // Recomputes every worker's health if results changed, and opens the re-validation jobs
    // that quarantined workers need.
    // At a tick: health follows the results at most once a second of this node's clock (it
    // walks every job; a quarantine a second late changes nothing that matters).
    pub(super) fn refresh_health_at_tick(&mut self, now: Timestamp) {
        let due = self
            .health_at
            .is_none_or(|t| now < t || now.since(t) >= HEALTH_EVERY);
        if self.health_dirty && due {
            self.settle_health(now);
        }
    }

    /// Brings every worker's health up to date with the results held now (a tick does it at
    /// most once a second).
    pub fn settle_health(&mut self, now: Timestamp) {
        self.health_at = Some(now);
        // A re-validation job opened here may replay results held for it, which changes the
        // health again: go round until it is still (each round opens at most one job per
        // quarantined worker, so a few rounds suffice).
        for _ in 0..8 {
            if !self.health_dirty {
                return;
            }
            self.health_dirty = false;
            self.refresh_health_once(now);
        }
    }

    fn refresh_health_once(&mut self, now: Timestamp) {
        let settings = self.health_settings;
        let mut events = self.events();
        // Workers whose every result the machine let go of still have a health.
        for w in self.folded.keys() {
            events.entry(*w).or_default();
        }
        self.health = events
            .into_iter()
            .map(|(w, (events, greens))| {
                let events: Vec<Event> = events.into_iter().map(|(.., e)| e).collect();
                let released = self.released.get(&w).cloned().unwrap_or_default();
                let (fold, greens) = self.folded_with(&w, greens);
                let fold = health::resume(fold, &events, &greens, &released, &settings);
                (w, health::health_of(&fold, &greens, &released, &settings))
            })
            .collect();
        let quarantined: Vec<(NodeId, health::Quarantine)> = self
            .health
            .iter()
            .filter_map(|(w, h)| h.quarantine.clone().map(|q| (*w, q)))
            .collect();
        for (w, q) in quarantined {
            self.revalidate(w, &q, now);
        }
    }

    /// A claim record with the job key it names. A re-validation job is chosen by its worker
    /// alone (other nodes may see its quarantine a moment later, with other commits at hand),
    /// so the others learn the job from its worker's claim: its spec follows the ordinary job
    /// of the same builder and commit.
    pub fn claim_keyed(
        &mut self,
        worker: NodeId,
        key: &JobKey,
        job: Hash,
        attempt: u32,
        now: Timestamp,
    ) {
        if !self.jobs.contains_key(&job)
            && key.id() == job
            && matches!(key.purpose, Purpose::Revalidate { worker: w, .. } if w == worker)
        {
            let base = JobKey {
                purpose: Purpose::Build,
                ..key.clone()
            }
            .id();
            if let Some(b) = self.jobs.get(&base) {
                let spec = JobSpec {
                    id: job,
                    key: key.clone(),
                    requires: b.spec.requires.clone(),
                    priority: b.spec.priority.saturating_add(REVALIDATE_PRIORITY),
                    order: b.spec.order,
                    max_attempts: b.spec.max_attempts,
                    confirm: ConfirmMode::None,
                };
                self.job(spec, now);
                self.new_jobs.push(job);
            }
        }
        self.claim(worker, job, attempt, now);
    }

    // Opens the next re-validation job of `worker`'s quarantine `q`, one at a time, until it
    // has enough greens or has tried `max_revalidations`; then it waits for a maintainer. Only
    // the quarantined worker's own machine opens them; the others learn them from its claims.
    fn revalidate(&mut self, worker: NodeId, q: &health::Quarantine, now: Timestamp) {
        if worker != self.me {
            return;
        }
        let settings = self.health_settings;
        if q.revalidated >= settings.revalidations {
            return;
        }
        let mine: Vec<&Job> = self
            .jobs
            .values()
            .filter(|j| {
                matches!(j.spec.key.purpose,
                    Purpose::Revalidate { worker: w, episode, .. }
                        if w == worker && episode == q.episode)
            })
            .collect();
        if mine.iter().any(|j| !j.is_final()) {
            return;
        }
        let n = mine.len() as u32 + 1;
        if n > settings.max_revalidations() {
            return;
        }
        // Known-green commits: the ones that put it here first (another host built them
        // green), else the newest green build it may run.
        let green = |j: &Job| {
            j.spec.key.purpose.is_build()
                && matches!(
                    self.build_state(&j.spec.id),
                    Some(s) if s.is_verdict() && s != BuildState::Failure
                )
        };
        let mut targets: Vec<&Job> = q
            .jobs
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|j| green(j))
            .collect();
        if targets.is_empty() {
            let labels = self.labels.get(&worker).cloned().unwrap_or_default();
            if let Some(j) = self
                .jobs
                .values()
                .filter(|j| green(j) && super::labels_meet(&labels, &j.spec.requires))
                .max_by_key(|j| (j.spec.order, j.spec.id))
            {
                targets.push(j);
            }
        }
        if targets.is_empty() {
            return;
        }
        let t = targets[(n as usize - 1) % targets.len()];
        let key = JobKey {
            purpose: Purpose::Revalidate {
                worker,
                episode: q.episode,
                n,
            },
            ..t.spec.key.clone()
        };
        let spec = JobSpec {
            id: key.id(),
            key,
            requires: t.spec.requires.clone(),
            priority: t.spec.priority.saturating_add(REVALIDATE_PRIORITY),
            order: t.spec.order,
            max_attempts: t.spec.max_attempts,
            confirm: ConfirmMode::None,
        };
        let id = spec.id;
        self.job(spec, now);
        self.new_jobs.push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::{Action, ClaimSettings};
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

    fn spec(n: u64, confirm: ConfirmMode) -> JobSpec {
        let key = JobKey {
            builder: "b".into(),
            repo: "r".into(),
            branch: "main".into(),
            sha: format!("{n:040x}"),
            purpose: Purpose::Build,
        };
        JobSpec {
            id: key.id(),
            key,
            requires: BTreeMap::new(),
            priority: 0,
            order: n,
            max_attempts: 4,
            confirm,
        }
    }

    // A machine for `me` among `workers`, all live with one slot; `hosts` gives `host` labels.
    fn machine(me: NodeId, workers: &[NodeId], hosts: &[&str]) -> Claims {
        let mut c = Claims::new(me, ClaimSettings::default(), 1);
        for (i, w) in workers.iter().enumerate() {
            let mut labels = BTreeMap::new();
            if let Some(h) = hosts.get(i) {
                labels.insert("host".to_string(), h.to_string());
            }
            c.worker(*w, labels);
            c.heartbeat(*w, 0, 1, T);
        }
        c
    }

    fn claims_of(actions: &[Action]) -> Vec<Hash> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Claim { job, .. } => Some(*job),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_red_is_unconfirmed_until_another_host_reproduces_it() {
        let w = ids(3);
        let mut m = machine(w[2], &w, &[]);
        let job = spec(1, ConfirmMode::OtherHost);
        m.job(job.clone(), T);
        m.claim(w[0], job.id, 1, T);
        m.result(w[0], job.id, 1, ResultCode::Failure, at(10));
        assert_eq!(m.build_state(&job.id), Some(BuildState::Unconfirmed));
        let Confirmation::Waiting { job: cid } = m.confirmation(&job.id) else {
            panic!("a confirmation job is open");
        };
        assert_eq!(m.take_new_jobs(), vec![cid]);
        // The worker that failed is ranked last for it, and not at all before the wait.
        let order = m.order(&cid, at(10));
        assert_eq!(order.last(), Some(&w[0]));
        m.claim(w[1], cid, 1, at(20));
        m.result(w[1], cid, 1, ResultCode::Failure, at(30));
        assert_eq!(m.build_state(&job.id), Some(BuildState::Failure));
        assert!(matches!(
            m.confirmation(&job.id),
            Confirmation::Reproduced { worker, same_host: false, .. } if worker == w[1]
        ));
    }

    #[test]
    fn a_red_not_reproduced_elsewhere_is_a_host_fault_and_counts_against_the_host() {
        let w = ids(3);
        // The bad worker's own machine: it alone opens its re-validation jobs.
        let mut m = machine(w[0], &w, &[]);
        let mut other = machine(w[2], &w, &[]);
        for n in 1..=3 {
            let job = spec(n, ConfirmMode::OtherHost);
            m.job(job.clone(), at(n * 100));
            m.claim(w[0], job.id, 1, at(n * 100));
            m.result(w[0], job.id, 1, ResultCode::Failure, at(n * 100 + 1));
            let cid = m.confirmation(&job.id).job().unwrap();
            m.claim(w[1], cid, 1, at(n * 100 + 2));
            m.result(w[1], cid, 1, ResultCode::Success, at(n * 100 + 3));
            assert_eq!(m.build_state(&job.id), Some(BuildState::HostFault));
            m.settle_health(at(n * 100 + 4));
            m.tick(at(n * 100 + 4));
            other.job(job.clone(), at(n * 100));
            other.claim(w[0], job.id, 1, at(n * 100));
            other.result(w[0], job.id, 1, ResultCode::Failure, at(n * 100 + 1));
            other.claim(w[1], cid, 1, at(n * 100 + 2));
            other.result(w[1], cid, 1, ResultCode::Success, at(n * 100 + 3));
            other.settle_health(at(n * 100 + 4));
        }
        assert!(other.is_quarantined(&w[0]), "every node derives the same");
        assert_eq!(other.health(), m.health());
        let h = &m.health()[&w[0]];
        let q = h.quarantine.as_ref().expect("quarantined at the third");
        assert_eq!(q.jobs.len(), 3);
        assert!(m.is_quarantined(&w[0]));
        assert!(!m.is_quarantined(&w[1]));
        // A quarantined worker is ranked for no ordinary job, only for its re-validation.
        let next = spec(10, ConfirmMode::OtherHost);
        m.job(next.clone(), at(1000));
        assert!(!m.order(&next.id, at(1000)).contains(&w[0]));
        let reval: Vec<&JobSpec> = m
            .jobs()
            .map(|(s, _)| s)
            .filter(|s| matches!(s.key.purpose, Purpose::Revalidate { .. }))
            .collect();
        assert_eq!(reval.len(), 1, "one re-validation at a time");
        let rid = reval[0].id;
        let rkey = reval[0].key.clone();
        // Its own machine claimed it in the tick that opened it; others never rank for it.
        assert!(m.running().any(|(j, _)| *j == rid));
        assert!(!other.order(&rid, at(1000)).contains(&w[2]));
        // Another node learns it from the worker's claim, and counts its result the same.
        assert!(!other.knows(&rid));
        other.claim_keyed(w[0], &rkey, rid, 1, at(1500));
        assert!(other.knows(&rid));
        // Three greens let it out.
        let mut rid = rid;
        for k in 0..3 {
            m.claim(w[0], rid, 1, at(2000 + k * 10));
            m.result(w[0], rid, 1, ResultCode::Success, at(2001 + k * 10));
            m.settle_health(at(2002 + k * 10));
            if k < 2 {
                assert!(m.is_quarantined(&w[0]));
                rid = m
                    .jobs()
                    .map(|(s, _)| s)
                    .find(|s| matches!(s.key.purpose, Purpose::Revalidate { n, .. } if n == k as u32 + 2))
                    .expect("the next re-validation")
                    .id;
            }
        }
        assert!(!m.is_quarantined(&w[0]), "released");
    }

    #[test]
    fn the_failing_worker_confirms_itself_only_when_no_other_host_can() {
        let w = ids(3);
        // w0 and w1 share a machine; w2 is elsewhere but not live.
        let mut m = machine(w[1], &w[..2], &["box", "box"]);
        let mut labels = BTreeMap::new();
        labels.insert("host".to_string(), "other".to_string());
        m.worker(w[2], labels);
        let job = spec(1, ConfirmMode::OtherHost);
        m.job(job.clone(), T);
        m.claim(w[0], job.id, 1, T);
        m.result(w[0], job.id, 1, ResultCode::Failure, at(1));
        let cid = m.confirmation(&job.id).job().unwrap();
        // w1, on the same machine, waits for the confirmation wait before it claims.
        assert!(claims_of(&m.tick(at(2))).is_empty());
        let wait = m.settings().confirm_wait.as_millis() as u64;
        assert_eq!(claims_of(&m.tick(at(2 + wait))), vec![cid]);
        m.result(w[1], cid, 1, ResultCode::Failure, at(3 + wait));
        assert!(matches!(
            m.confirmation(&job.id),
            Confirmation::Reproduced {
                same_host: true,
                ..
            }
        ));
        // With no other host known at all, there is nothing to wait for.
        let mut alone = machine(w[0], &w[..1], &[]);
        let job = spec(2, ConfirmMode::OtherHost);
        alone.job(job.clone(), T);
        alone.claim(w[0], job.id, 1, T);
        alone.running.insert((job.id, 1));
        alone.result(w[0], job.id, 1, ResultCode::Failure, at(1));
        let cid = alone.confirmation(&job.id).job().unwrap();
        assert_eq!(claims_of(&alone.tick(at(2))), vec![cid]);
        // Green on the rerun of the same host: flaky, and not against the host.
        alone.result(w[0], cid, 1, ResultCode::Success, at(3));
        assert_eq!(alone.build_state(&job.id), Some(BuildState::Flaky));
        alone.settle_health(at(4));
        assert_eq!(alone.health()[&w[0]].unreproduced, 0);
    }

    #[test]
    fn crossed_confirmation_claims_go_to_the_other_host_and_others_cannot_take_a_revalidation() {
        let w = ids(3);
        let mut m = machine(w[2], &w, &[]);
        let job = spec(1, ConfirmMode::OtherHost);
        m.job(job.clone(), T);
        m.claim(w[0], job.id, 1, T);
        m.result(w[0], job.id, 1, ResultCode::Failure, at(1));
        let cid = m.confirmation(&job.id).job().unwrap();
        m.claim(w[0], cid, 1, at(2));
        m.claim(w[1], cid, 1, at(2));
        assert_eq!(m.winner(&cid, 1), Some(w[1]));
        // A claim of another worker's re-validation job does not count and is reported.
        let key = JobKey {
            purpose: Purpose::Revalidate {
                worker: w[0],
                episode: 1,
                n: 1,
            },
            ..job.key.clone()
        };
        let r = JobSpec {
            id: key.id(),
            key,
            ..job.clone()
        };
        m.job(r.clone(), at(3));
        m.misbehaviour();
        m.claim(w[1], r.id, 1, at(4));
        assert_eq!(m.winner(&r.id, 1), None);
        assert_eq!(m.misbehaviour().len(), 1);
    }

    #[test]
    fn exceptions_on_a_commit_that_others_also_hit_count_against_nobody() {
        let w = ids(3);
        let mut m = machine(w[2], &w, &[]);
        for n in 1..=5 {
            let job = spec(n, ConfirmMode::None);
            m.job(job.clone(), at(n));
            m.claim(w[0], job.id, 1, at(n));
            m.result(w[0], job.id, 1, ResultCode::Exception, at(n));
            m.claim(w[1], job.id, 2, at(n));
            m.result(w[1], job.id, 2, ResultCode::Exception, at(n));
        }
        m.settle_health(at(100));
        assert!(m.health().values().all(|h| h.quarantine.is_none()));
        assert_eq!(m.health().get(&w[0]).map_or(0, |h| h.exceptions_in_row), 0);
        // Alone on its commits, five in a row quarantine it.
        for n in 11..=15 {
            let job = spec(n, ConfirmMode::None);
            m.job(job.clone(), at(n));
            m.claim(w[0], job.id, 1, at(n));
            m.result(w[0], job.id, 1, ResultCode::Exception, at(n));
            m.claim(w[1], job.id, 2, at(n));
            m.result(w[1], job.id, 2, ResultCode::Success, at(n));
        }
        m.settle_health(at(200));
        assert!(m.is_quarantined(&w[0]));
    }
}
