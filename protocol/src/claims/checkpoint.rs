//! A machine written down and read back. A node that stops keeps its machine, and the next
//! start goes on from it with only the records it had not learnt, instead of learning its
//! whole history again (the node's claimer keeps it with the point it reached in every
//! author's log).
//!
//! What belonged to the process that wrote it is not kept: the builds it was running (a new
//! process runs none), what it heard of other nodes (liveness is heard afresh), the
//! misbehaviour it had not reported yet. Its views are written before its checkpoint, so a
//! start looks again only at the jobs that change after it.

use super::{ClaimSettings, Claims};

/// Why a checkpoint cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Not a checkpoint of this version's machine (a newer or older layout, or damage).
    #[error("not a claim machine checkpoint this version reads: {0}")]
    Decode(String),
}

impl Claims {
    /// The machine as bytes, for [`Claims::from_checkpoint`].
    pub fn checkpoint(&self) -> Vec<u8> {
        serde_cbor::to_vec(self).expect("a machine always encodes")
    }

    /// A machine read back from [`Claims::checkpoint`], as a process that has just started
    /// with `settings` and `capacity` holds it: every job, claim, result and health it
    /// learnt; no build running here, no worker heard yet.
    pub fn from_checkpoint(
        bytes: &[u8],
        settings: ClaimSettings,
        capacity: u32,
    ) -> Result<Claims, CheckpointError> {
        let mut m: Claims =
            serde_cbor::from_slice(bytes).map_err(|e| CheckpointError::Decode(e.to_string()))?;
        m.settings = settings;
        m.capacity = capacity;
        m.running.clear();
        m.freed_at = None;
        for w in m.workers.values_mut() {
            w.heard = None;
            w.running = 0;
        }
        m.reports.clear();
        m.gone.clear();
        m.misbehaviour.clear();
        m.new_jobs.clear();
        // The views were written before the checkpoint was: none is behind it.
        m.touched.clear();
        m.health_dirty = true;
        m.health_at = None;
        Ok(m)
    }

    /// The node this machine decides for.
    pub fn me(&self) -> crate::keys::NodeId {
        self.me
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::tests::spec;
    use super::super::{Action, ClaimSettings, Claims};
    use crate::keys::SecretKey;
    use crate::record::ResultCode;
    use crate::time::Timestamp;

    // A machine that goes on from its checkpoint, fed the rest of the history, ends where the
    // machine that never stopped ends: every job's state, every worker's health, and what
    // each decides to do next. A quarantine for exceptions in a row, reds and jobs let go of
    // are part of the history.
    #[test]
    fn a_machine_read_back_goes_on_as_the_one_that_never_stopped() {
        let me = SecretKey::from_seed([9; 32]).id();
        let a = SecretKey::from_seed([1; 32]).id();
        let b = SecretKey::from_seed([2; 32]).id();
        let machine = || {
            let mut m = Claims::new(me, ClaimSettings::default(), 1);
            for w in [me, a, b] {
                m.worker(w, BTreeMap::new());
            }
            m
        };
        let feed = |m: &mut Claims, n: u64| {
            let t = Timestamp(1_000_000 + n * 1000);
            let job = spec(n);
            m.job(job.clone(), t);
            m.claim(a, job.id, 1, t);
            if (20..=26).contains(&n) {
                m.result(a, job.id, 1, ResultCode::Exception, t);
                m.claim(b, job.id, 2, t);
                let code = if n.is_multiple_of(3) {
                    ResultCode::Failure
                } else {
                    ResultCode::Success
                };
                m.result(b, job.id, 2, code, t);
            } else if n < 55 {
                m.result(a, job.id, 1, ResultCode::Success, t);
            }
            m.settle_health(t);
            m.take_touched();
            m.let_go(8);
        };
        let mut never_stopped = machine();
        let mut stopped = machine();
        for n in 1..=40 {
            feed(&mut never_stopped, n);
            feed(&mut stopped, n);
        }
        let bytes = stopped.checkpoint();
        let mut resumed =
            Claims::from_checkpoint(&bytes, ClaimSettings::default(), 1).expect("reads back");
        assert_eq!(resumed.me(), me);
        assert_eq!(resumed.job_count(), stopped.job_count());
        for n in 41..=60 {
            feed(&mut never_stopped, n);
            feed(&mut resumed, n);
        }
        let now = Timestamp(1_100_000);
        for m in [&mut never_stopped, &mut resumed] {
            for w in [me, a, b] {
                m.heartbeat(w, 0, 1, now);
            }
            m.health_dirty = true;
            m.settle_health(now);
        }
        assert!(never_stopped.health()[&a].quarantine.is_some());
        assert_eq!(never_stopped.health(), resumed.health());
        assert_eq!(never_stopped.job_count(), resumed.job_count());
        for (spec, state) in never_stopped.jobs() {
            assert_eq!(resumed.state(&spec.id), Some(state), "job {}", spec.order);
        }
        let claims = |actions: Vec<Action>| {
            actions
                .into_iter()
                .filter(|a| matches!(a, Action::Claim { .. }))
                .count()
        };
        let later = Timestamp(1_200_000);
        let (x, y) = (never_stopped.tick(later), resumed.tick(later));
        assert!(claims(x.clone()) > 0, "open jobs to claim: {x:?}");
        assert_eq!(x, y);
    }

    #[test]
    fn damaged_checkpoints_are_refused() {
        let m = Claims::new(
            SecretKey::from_seed([9; 32]).id(),
            ClaimSettings::default(),
            1,
        );
        let bytes = m.checkpoint();
        assert!(Claims::from_checkpoint(&bytes, ClaimSettings::default(), 1).is_ok());
        assert!(
            Claims::from_checkpoint(&bytes[..bytes.len() / 2], ClaimSettings::default(), 1)
                .is_err()
        );
        assert!(Claims::from_checkpoint(b"\xa1\x61x\x01", ClaimSettings::default(), 1).is_err());
    }
}
