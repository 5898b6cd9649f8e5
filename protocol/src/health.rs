//! Host health: is a red the code's fault or the host's? Derived from signed results the same
//! way on every node, so no node has to author it and every node shows the same state.
//!
//! - **Confirmation.** A red on a builder with `confirm = "other-host"` (the default for
//!   builders that mail the list) is *unconfirmed* until a confirmation job — a job of its own,
//!   [`Purpose::Confirm`](crate::record::Purpose), scheduled at once at high priority — is built
//!   by another key on another machine (a different `host` label, where admissions give one).
//!   Reproduced: the red stands and is mailed. Not reproduced: a suspected host fault, and the
//!   commit's verdict is the other host's. The worker that failed takes the confirmation itself
//!   only when no other eligible worker exists, or none claimed it within
//!   [`ClaimSettings::confirm_wait`](crate::claims::ClaimSettings): then a repeated red is
//!   "confirmed on one host". `same-host` always reruns on the worker that failed; `none`
//!   mails the red as it comes.
//! - **Health.** Each worker's results, in commit order, become [`Event`]s: a good result, a red
//!   another host did not reproduce, or an exception of its own (one that another worker also
//!   hit on the same commit, or that every attempt of the job hit, counts against nobody).
//!   Trust is slow to earn (a streak of good results) and fast to lose (one bad event ends
//!   it). [`assess`] folds them: a worker is **quarantined** after
//!   [`HealthSettings::unreproduced_reds`] unreproduced reds within its last
//!   [`HealthSettings::window`] results, or [`HealthSettings::exceptions_in_row`] exceptions in
//!   a row. Quarantined, it claims no ordinary job, only re-validation jobs (known-green commits,
//!   low priority, [`Purpose::Revalidate`](crate::record::Purpose)), and leaves quarantine once
//!   [`HealthSettings::revalidations`] of them come back green. Flaky and orange results never
//!   count against a host.
//!
//! The claim machine ([`crate::claims`]) holds the jobs and calls this; the simulator drives
//! both.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::keys::{Hash, NodeId};
use crate::record::BuildState;

/// How a builder's reds are confirmed (the builder key `confirm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfirmMode {
    /// Another worker on another machine reproduces the red before the list hears of it.
    OtherHost,
    /// The worker that failed runs the build once more.
    SameHost,
    /// No confirmation: a red is mailed as it comes.
    None,
}

impl ConfirmMode {
    /// The mode of a builder that does not set `confirm`: `other-host` if it mails the list
    /// (`stable`), else `none`. The one place the default is decided.
    pub fn default_for(mails_the_list: bool) -> Self {
        if mails_the_list {
            ConfirmMode::OtherHost
        } else {
            ConfirmMode::None
        }
    }
}

impl std::str::FromStr for ConfirmMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "other-host" => Ok(ConfirmMode::OtherHost),
            "same-host" => Ok(ConfirmMode::SameHost),
            "none" => Ok(ConfirmMode::None),
            other => Err(format!(
                "unknown confirm mode `{other}` (expected other-host, same-host or none)"
            )),
        }
    }
}

impl fmt::Display for ConfirmMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfirmMode::OtherHost => "other-host",
            ConfirmMode::SameHost => "same-host",
            ConfirmMode::None => "none",
        })
    }
}

/// When a worker is quarantined and when it is let out (the builder configuration's
/// `[health]` table; the same on every node, since every node derives the state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSettings {
    /// Unreproduced reds within the window that quarantine a worker. Default 3.
    pub unreproduced_reds: u32,
    /// How many of a worker's latest results the window holds. Default 10.
    pub window: u32,
    /// Exceptions of its own in a row that quarantine a worker. Default 5.
    pub exceptions_in_row: u32,
    /// Green re-validation builds that end a quarantine. Default 3.
    pub revalidations: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            unreproduced_reds: 3,
            window: 10,
            exceptions_in_row: 5,
            revalidations: 3,
        }
    }
}

impl HealthSettings {
    /// Whether these are the defaults (a configuration that does not set them is then written
    /// as it always was).
    pub fn is_default(&self) -> bool {
        *self == HealthSettings::default()
    }

    /// Re-validation builds a quarantine tries before it waits for a maintainer: enough for
    /// every green it needs, and as many again for reds on the way.
    pub fn max_revalidations(&self) -> u32 {
        self.revalidations.max(1).saturating_mul(3)
    }
}

/// What one of a worker's results says about its host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A result nobody questioned: green, orange, flaky, or a red another host reproduced.
    Good,
    /// A red of `job` that another host did not reproduce.
    Unreproduced {
        /// The job.
        job: Hash,
    },
    /// An exception on `job` that no other worker shared.
    Exception {
        /// The job.
        job: Hash,
    },
}

/// Why a worker is quarantined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// Reds that other hosts did not reproduce.
    UnreproducedReds,
    /// Exceptions of its own in a row.
    Exceptions,
}

/// A worker's health as every node derives it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Quarantined now, and why.
    pub quarantine: Option<Quarantine>,
    /// Good results in a row: trust, slow to earn and lost at the first bad event.
    pub streak: u32,
    /// Unreproduced reds within the window.
    pub unreproduced: u32,
    /// Exceptions of its own in a row.
    pub exceptions_in_row: u32,
    /// Quarantines so far, the current one included.
    pub episodes: u32,
}

/// One quarantine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    /// Which of the worker's quarantines (from 1).
    pub episode: u32,
    /// Why.
    pub cause: Cause,
    /// The jobs whose results put it there, oldest first.
    pub jobs: Vec<Hash>,
    /// Green re-validation builds so far.
    pub revalidated: u32,
}

impl Quarantine {
    /// The reason in words, as `nodes` and the owner's mail give it.
    pub fn reason(&self, settings: &HealthSettings) -> String {
        match self.cause {
            Cause::UnreproducedReds => format!(
                "{} reds in its last {} results were not reproduced by other hosts",
                self.jobs.len(),
                settings.window
            ),
            Cause::Exceptions => format!("{} exceptions in a row of its own", self.jobs.len()),
        }
    }
}

/// A worker's health part-way through its events: what [`assess`] carries from one event to
/// the next. A machine that lets go of old jobs keeps their events folded in here and goes on
/// from it ([`resume`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    health: Health,
    // (unreproduced?, job) of the latest results.
    window: VecDeque<(bool, Hash)>,
    exceptions: Vec<Hash>,
}

/// Folds a worker's events (in commit order) into its health. `revalidated` gives, per
/// quarantine episode, how many of its re-validation builds came back green; a quarantine
/// ends, before the next event, once it has [`HealthSettings::revalidations`] of them, or once
/// a maintainer released that episode (`released`, from signed release documents).
/// Events while quarantined (builds it was running when it entered) are not counted, and
/// a worker let out starts with an empty window.
pub fn assess(
    events: &[Event],
    revalidated: &BTreeMap<u32, u32>,
    released: &BTreeSet<u32>,
    settings: &HealthSettings,
) -> Health {
    let fold = resume(Fold::default(), events, revalidated, released, settings);
    health_of(&fold, revalidated, released, settings)
}

/// Goes on folding events into `fold` (see [`assess`]).
pub fn resume(
    fold: Fold,
    events: &[Event],
    revalidated: &BTreeMap<u32, u32>,
    released: &BTreeSet<u32>,
    settings: &HealthSettings,
) -> Fold {
    let Fold {
        health: mut h,
        mut window,
        mut exceptions,
    } = fold;
    for e in events {
        let_out(&mut h, &mut window, revalidated, released, settings);
        if h.quarantine.is_some() {
            continue;
        }
        match *e {
            Event::Good => {
                window.push_back((false, Hash::ZERO));
                exceptions.clear();
                h.streak = h.streak.saturating_add(1);
            }
            Event::Unreproduced { job } => {
                window.push_back((true, job));
                exceptions.clear();
                h.streak = 0;
            }
            Event::Exception { job } => {
                exceptions.push(job);
                h.streak = 0;
            }
        }
        while window.len() > settings.window.max(1) as usize {
            window.pop_front();
        }
        let reds: Vec<Hash> = window.iter().filter(|(u, _)| *u).map(|(_, j)| *j).collect();
        let cause = if reds.len() as u32 >= settings.unreproduced_reds.max(1) {
            Some((Cause::UnreproducedReds, reds))
        } else if exceptions.len() as u32 >= settings.exceptions_in_row.max(1) {
            Some((Cause::Exceptions, exceptions.clone()))
        } else {
            None
        };
        if let Some((cause, jobs)) = cause {
            h.episodes += 1;
            h.quarantine = Some(Quarantine {
                episode: h.episodes,
                cause,
                jobs,
                revalidated: 0,
            });
            window.clear();
            exceptions.clear();
            h.streak = 0;
        }
    }
    Fold {
        health: h,
        window,
        exceptions,
    }
}

/// The health a fold gives now (a quarantine with its greens or a release ends).
pub fn health_of(
    fold: &Fold,
    revalidated: &BTreeMap<u32, u32>,
    released: &BTreeSet<u32>,
    settings: &HealthSettings,
) -> Health {
    let mut h = fold.health.clone();
    let mut window = fold.window.clone();
    let_out(&mut h, &mut window, revalidated, released, settings);
    h.unreproduced = window.iter().filter(|(u, _)| *u).count() as u32;
    h.exceptions_in_row = fold.exceptions.len() as u32;
    h
}

// Ends a quarantine that has its greens or a maintainer's release; the worker starts again
// with an empty window.
fn let_out(
    h: &mut Health,
    window: &mut VecDeque<(bool, Hash)>,
    revalidated: &BTreeMap<u32, u32>,
    released: &BTreeSet<u32>,
    settings: &HealthSettings,
) {
    if let Some(q) = &mut h.quarantine {
        q.revalidated = revalidated.get(&q.episode).copied().unwrap_or(0);
        if q.revalidated >= settings.revalidations.max(1) || released.contains(&q.episode) {
            h.quarantine = None;
            window.clear();
        }
    }
}

/// A worker's health as the views show it (`buildmesh nodes`, `/api/v1/nodes`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HealthView {
    /// `healthy` or `quarantined`.
    pub state: String,
    /// Why it is quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The builds that put it in quarantine, with what the other hosts found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builds: Vec<Incident>,
    /// Green re-validation builds of this quarantine.
    pub revalidated: u32,
    /// Green re-validation builds that end a quarantine.
    pub revalidations_needed: u32,
    /// Reds within its window that other hosts did not reproduce.
    pub unreproduced: u32,
    /// Exceptions of its own in a row.
    pub exceptions_in_row: u32,
    /// Results in a row that nobody questioned (trust: slow to earn, lost at once).
    pub streak: u32,
    /// Quarantines so far.
    pub quarantines: u32,
}

/// One build that counted against a worker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Incident {
    /// The build id.
    pub build: String,
    /// Builder.
    pub builder: String,
    /// Branch.
    pub branch: String,
    /// Commit.
    pub sha: String,
    /// The worker whose build disagreed with it, if another built it.
    pub other_worker: Option<NodeId>,
    /// What that build found.
    pub other_result: Option<BuildState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u8) -> Hash {
        Hash([n; 32])
    }

    fn red(n: u8) -> Event {
        Event::Unreproduced { job: job(n) }
    }

    #[test]
    fn three_unreproduced_reds_in_ten_quarantine_and_not_two() {
        let s = HealthSettings::default();
        let mut events = vec![Event::Good, red(1), Event::Good, red(2)];
        let h = assess(&events, &BTreeMap::new(), &BTreeSet::new(), &s);
        assert_eq!((h.quarantine.is_none(), h.unreproduced), (true, 2));
        events.extend([Event::Good; 3]);
        events.push(red(3));
        let h = assess(&events, &BTreeMap::new(), &BTreeSet::new(), &s);
        let q = h.quarantine.expect("quarantined at the third");
        assert!(q.reason(&s).contains("3 reds in its last 10"));
        assert_eq!(
            (q.cause, q.jobs, q.episode),
            (Cause::UnreproducedReds, vec![job(1), job(2), job(3)], 1)
        );
    }

    #[test]
    fn reds_that_slide_out_of_the_window_are_forgiven() {
        let s = HealthSettings::default();
        let mut events = vec![red(1), red(2)];
        events.extend([Event::Good; 9]);
        events.push(red(3));
        let h = assess(&events, &BTreeMap::new(), &BTreeSet::new(), &s);
        assert!(h.quarantine.is_none());
        assert_eq!(h.unreproduced, 1);
    }

    #[test]
    fn five_own_exceptions_in_a_row_quarantine_and_a_verdict_between_resets() {
        let s = HealthSettings::default();
        let exc = |n| Event::Exception { job: job(n) };
        let h = assess(
            &[exc(1), exc(2), exc(3), exc(4), Event::Good, exc(5)],
            &BTreeMap::new(),
            &BTreeSet::new(),
            &s,
        );
        assert!(h.quarantine.is_none());
        assert_eq!(h.exceptions_in_row, 1);
        let h = assess(
            &[exc(1), exc(2), exc(3), exc(4), exc(5)],
            &BTreeMap::new(),
            &BTreeSet::new(),
            &s,
        );
        assert_eq!(h.quarantine.unwrap().cause, Cause::Exceptions);
    }

    #[test]
    fn trust_is_slow_to_earn_and_fast_to_lose() {
        let s = HealthSettings::default();
        let mut events = vec![Event::Good; 10];
        assert_eq!(
            assess(&events, &BTreeMap::new(), &BTreeSet::new(), &s).streak,
            10
        );
        events.push(red(1));
        assert_eq!(
            assess(&events, &BTreeMap::new(), &BTreeSet::new(), &s).streak,
            0
        );
    }

    #[test]
    fn revalidations_end_a_quarantine_with_an_empty_window() {
        let s = HealthSettings::default();
        let mut events = vec![red(1), red(2), red(3), red(4)];
        let mut greens = BTreeMap::new();
        greens.insert(1, 2);
        let h = assess(&events, &greens, &BTreeSet::new(), &s);
        assert_eq!(h.quarantine.as_ref().map(|q| q.revalidated), Some(2));
        greens.insert(1, 3);
        let h = assess(&events, &greens, &BTreeSet::new(), &s);
        assert!(h.quarantine.is_none(), "released");
        // The greens are not dated: a release takes effect before the next result, so the
        // red after the third counts in the fresh window.
        assert_eq!(h.unreproduced, 1);
        events.push(red(5));
        assert!(
            assess(&events, &greens, &BTreeSet::new(), &s)
                .quarantine
                .is_none()
        );
        events.push(red(6));
        let h = assess(&events, &greens, &BTreeSet::new(), &s);
        assert_eq!(h.quarantine.map(|q| q.episode), Some(2));
    }

    #[test]
    fn a_maintainers_release_ends_that_quarantine_only() {
        let s = HealthSettings::default();
        let mut events = vec![red(1), red(2), red(3)];
        let released = BTreeSet::from([1]);
        let h = assess(&events, &BTreeMap::new(), &released, &s);
        assert!(h.quarantine.is_none());
        events.extend([red(4), red(5), red(6)]);
        let h = assess(&events, &BTreeMap::new(), &released, &s);
        assert_eq!(
            h.quarantine.map(|q| q.episode),
            Some(2),
            "a new quarantine needs its own"
        );
    }

    #[test]
    fn modes_parse_and_default_by_whether_the_builder_mails() {
        assert_eq!(
            "same-host".parse::<ConfirmMode>(),
            Ok(ConfirmMode::SameHost)
        );
        assert!(
            "elsewhere"
                .parse::<ConfirmMode>()
                .unwrap_err()
                .contains("other-host")
        );
        assert_eq!(ConfirmMode::default_for(true), ConfirmMode::OtherHost);
        assert_eq!(ConfirmMode::default_for(false), ConfirmMode::None);
    }
}
