//! What the machine lets go of: finished jobs beyond a window, so that its memory follows the
//! open work and not the history (the node's views keep every build on disk).
//!
//! A job is let go of with every other job of its commit order (a commit's builds, and the
//! confirmations of their reds, which share the order), oldest order first, once every job of
//! that order is finished or was never claimed, and once the node has looked at its last
//! change ([`Claims::take_touched`]). What the machine still needs of them is kept small:
//! - each worker's health goes on from their events, folded in ([`health::resume`]) in the
//!   order [`Claims::events`] gives them, and from their green re-validations;
//! - collapsing goes on from the newest verdict each (builder, branch) had.
//!
//! A never-claimed job older than the ones let go of stays (it is open work); if a worker
//! claims it after all, its result counts towards its worker's health after the folded ones,
//! not in commit order: a difference no node's claims depend on.

use std::collections::BTreeMap;

use super::Claims;
use crate::health::{self, Fold};
use crate::keys::{Hash, NodeId};

impl Claims {
    /// Lets go of finished jobs beyond the newest `keep` (and a quarter more, so that it
    /// works in batches); returns the jobs let go of. Their claims and results arriving later
    /// are held like those of an unknown job.
    pub fn let_go(&mut self, keep: usize) -> Vec<Hash> {
        let finished = self.jobs.values().filter(|j| j.is_final()).count();
        if finished <= keep.saturating_add(keep / 4) {
            return Vec::new();
        }
        let excess = finished - keep;
        let mut by_order: BTreeMap<u64, Vec<Hash>> = BTreeMap::new();
        for (id, j) in &self.jobs {
            by_order.entry(j.spec.order).or_default().push(*id);
        }
        let mut out = Vec::new();
        for ids in by_order.values() {
            if out.len() >= excess {
                break;
            }
            let blocked = ids.iter().any(|id| {
                let j = &self.jobs[id];
                self.touched.contains(id) || (!j.is_final() && !j.counted.is_empty())
            });
            if blocked {
                break;
            }
            out.extend(ids.iter().filter(|id| self.jobs[*id].is_final()));
        }
        if out.is_empty() {
            return out;
        }
        let going: std::collections::BTreeSet<Hash> = out.iter().copied().collect();
        let settings = self.health_settings;
        // The greens every re-validation held has, as the whole fold sees them.
        let held: BTreeMap<NodeId, BTreeMap<u32, u32>> = self
            .events()
            .into_iter()
            .map(|(w, (_, greens))| (w, greens))
            .collect();
        for (w, (events, greens)) in self.events_of(|id| going.contains(id)) {
            let events: Vec<health::Event> = events.into_iter().map(|(.., e)| e).collect();
            let released = self.released.get(&w).cloned().unwrap_or_default();
            let (fold, all_greens) =
                self.folded_with(&w, held.get(&w).cloned().unwrap_or_default());
            let fold = health::resume(fold, &events, &all_greens, &released, &settings);
            // Kept: the greens of the jobs let go of, now and before.
            let (_, mut kept) = self.folded_with(&w, BTreeMap::new());
            for (episode, n) in greens {
                *kept.entry(episode).or_insert(0) += n;
            }
            self.folded.insert(w, (fold, kept));
        }
        for id in &out {
            if let Some(j) = self.jobs.remove(id)
                && j.current().is_some()
                && j.spec.key.purpose.is_build()
            {
                let k = (j.spec.key.builder.clone(), j.spec.key.branch.clone());
                let e = self.newest_verdict.entry(k).or_insert(0);
                *e = (*e).max(j.spec.order);
            }
        }
        out
    }

    // A worker's folded health and green re-validations of the jobs let go of, with `greens`
    // (of the jobs held) added.
    pub(super) fn folded_with(
        &self,
        w: &NodeId,
        mut greens: BTreeMap<u32, u32>,
    ) -> (Fold, BTreeMap<u32, u32>) {
        match self.folded.get(w) {
            Some((fold, old)) => {
                for (episode, n) in old {
                    *greens.entry(*episode).or_insert(0) += n;
                }
                (fold.clone(), greens)
            }
            None => (Fold::default(), greens),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::tests::spec;
    use super::super::{ClaimSettings, Claims};
    use crate::keys::{NodeId, SecretKey};
    use crate::record::ResultCode;
    use crate::time::Timestamp;

    fn machine(me: NodeId, workers: &[NodeId]) -> Claims {
        let mut m = Claims::new(me, ClaimSettings::default(), 0);
        for w in workers {
            m.worker(*w, BTreeMap::new());
        }
        m
    }

    // Two machines fed the same history, one letting go of finished jobs as it goes: the
    // health of every worker (a quarantine for exceptions in a row among them) and the state
    // of every job still held are the same, and the one that lets go holds few jobs.
    #[test]
    fn letting_go_of_finished_jobs_changes_no_health_and_no_state() {
        let me = SecretKey::from_seed([9; 32]).id();
        let a = SecretKey::from_seed([1; 32]).id();
        let b = SecretKey::from_seed([2; 32]).id();
        let mut keeps = machine(me, &[a, b]);
        let mut lets_go = machine(me, &[a, b]);
        let mut let_go_total = 0;
        for n in 1..=60u64 {
            let t = Timestamp(1_000_000 + n * 1000);
            let job = spec(n);
            // a throws on jobs 20 to 26 (b builds them again), and builds the others; b's
            // builds go red from time to time.
            let throws = (20..=26).contains(&n);
            for m in [&mut keeps, &mut lets_go] {
                m.job(job.clone(), t);
                m.claim(a, job.id, 1, t);
                if throws {
                    m.result(a, job.id, 1, ResultCode::Exception, t);
                    m.claim(b, job.id, 2, t);
                    let code = if n % 3 == 0 {
                        ResultCode::Failure
                    } else {
                        ResultCode::Success
                    };
                    m.result(b, job.id, 2, code, t);
                } else {
                    m.result(a, job.id, 1, ResultCode::Success, t);
                }
                m.settle_health(t);
            }
            lets_go.take_touched();
            let_go_total += lets_go.let_go(8).len();
        }
        assert!(let_go_total >= 45, "let go of {let_go_total}");
        assert!(lets_go.job_count() <= 10, "{}", lets_go.job_count());
        let now = Timestamp(2_000_000);
        keeps.settle_health(now);
        lets_go.health_dirty = true;
        lets_go.settle_health(now);
        assert!(
            keeps.health()[&a].quarantine.is_some(),
            "{:?}",
            keeps.health()
        );
        assert_eq!(keeps.health(), lets_go.health());
        for (spec, state) in lets_go.jobs() {
            assert_eq!(keeps.state(&spec.id), Some(state));
        }
    }
}
