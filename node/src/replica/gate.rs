//! The record gate: whether a record whose signature holds may enter the store, and whether it
//! counts. Sans-IO: a verified record, `now` and what the gate reads in; a verdict out. The
//! replica carries the verdict out (stores, counts refusals, remembers refused authors); the
//! store's chain checks (gap, fork, chain break) come after and stay in the store.
//!
//! Once the author is known to be admitted, [`buildmesh_protocol::entitle::record`] says
//! whether the record counts: a record its author was not entitled to (a commit announced
//! without the role, a notice from a non-notifier, a kind this node does not know) is stored
//! but counts for nothing, and one dated too far ahead waits until it is due.

use buildmesh_protocol::Timestamp;
use buildmesh_protocol::docs::{DocKind, SignedDoc};
use buildmesh_protocol::entitle::{self, Entitled, Refusal};
use buildmesh_protocol::record::{Body, Publish, Record};
use buildmesh_protocol::trust::{Trust, TrustError};

/// What the gate reads to judge a record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GateInput<'a> {
    /// The fold of genesis, admissions and revocations as this node holds it.
    pub trust: &'a Trust,
    /// This node's clock: records dated too far ahead of it wait.
    pub now: Timestamp,
}

/// What becomes of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GateVerdict {
    /// Store it; it counts.
    Count,
    /// The record is its author's own admission, in its own log: it speaks for itself. Fold the
    /// admission into trust before the next record is judged, then store it.
    CountAndAdmit(SignedDoc),
    /// Store it (it belongs to its author's chain), but it counts for nothing: its author was
    /// not entitled to it.
    Kept(Refusal),
    /// Dated too far ahead of this node's clock: not stored now; sync brings it again.
    NotYet,
    /// Its author is not known here yet: do not store it, ask the peer for more (the
    /// admission may be on its way).
    UnknownAuthor,
    /// Refused for good: the author may not write this record.
    Refuse {
        /// The refusal counter it goes to.
        reason: &'static str,
        /// For the log.
        detail: String,
    },
}

/// Judges one verified record.
pub(crate) fn judge(input: &GateInput<'_>, record: &Record) -> GateVerdict {
    let author = record.author_id();
    if let Ok(Body::Publish(Publish { doc })) = record.body()
        && doc.kind == DocKind::Admission
        && let Ok(a) = input.trust.check_admission(&doc)
        && a.node == author
    {
        return GateVerdict::CountAndAdmit(doc);
    }
    match input.trust.may_author(&author, record.envelope.time) {
        Ok(()) => {
            let body = record.body().ok();
            match entitle::record(input.trust, &record.envelope, body.as_ref(), input.now) {
                Entitled::Counts => GateVerdict::Count,
                Entitled::Kept(r) => GateVerdict::Kept(r),
                Entitled::NotYet => GateVerdict::NotYet,
            }
        }
        Err(TrustError::NotAdmitted { .. }) => GateVerdict::UnknownAuthor,
        Err(e) => GateVerdict::Refuse {
            reason: match e {
                TrustError::Revoked { .. } => "revoked",
                TrustError::Expired { .. } => "expired",
                _ => "not-admitted",
            },
            detail: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::replica::testkit::{
        T0, admission, key, publish_record, revocation, some_record, trust,
    };
    use buildmesh_protocol::SecretKey;

    fn judged(trust: &Trust, record: &Record) -> GateVerdict {
        judge(&GateInput { trust, now: T0 }, record)
    }

    #[test]
    fn an_admitted_author_counts() {
        let (mut t, m) = trust();
        let worker = key(2);
        t.apply(&admission(&t, &m, &worker, None)).unwrap();
        assert_eq!(judged(&t, &some_record(&worker, 2, T0)), GateVerdict::Count);
    }

    #[test]
    fn a_maintainer_counts_without_an_admission() {
        let (t, m) = trust();
        assert_eq!(judged(&t, &some_record(&m, 2, T0)), GateVerdict::Count);
    }

    #[test]
    fn an_unknown_author_is_not_refused_for_good() {
        let (t, _) = trust();
        assert_eq!(
            judged(&t, &some_record(&key(3), 2, T0)),
            GateVerdict::UnknownAuthor
        );
    }

    #[test]
    fn a_record_from_after_the_revocation_is_refused() {
        let (mut t, m) = trust();
        let worker = key(2);
        t.apply(&admission(&t, &m, &worker, None)).unwrap();
        let effective = T0.plus(Duration::from_secs(60));
        t.apply(&revocation(&t, &m, &worker, effective)).unwrap();
        // Before the revocation took effect the record stands; from then on it is refused.
        assert_eq!(judged(&t, &some_record(&worker, 2, T0)), GateVerdict::Count);
        match judged(&t, &some_record(&worker, 3, effective)) {
            GateVerdict::Refuse { reason, .. } => assert_eq!(reason, "revoked"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_record_from_after_the_admission_expired_is_refused() {
        let (mut t, m) = trust();
        let worker = key(2);
        let expires = T0.plus(Duration::from_secs(60));
        t.apply(&admission(&t, &m, &worker, Some(expires))).unwrap();
        assert_eq!(judged(&t, &some_record(&worker, 2, T0)), GateVerdict::Count);
        match judged(&t, &some_record(&worker, 3, expires)) {
            GateVerdict::Refuse { reason, .. } => assert_eq!(reason, "expired"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_nodes_own_admission_in_its_own_log_admits_it() {
        let (t, m) = trust();
        let worker = key(2);
        let doc = admission(&t, &m, &worker, None);
        let record = publish_record(&worker, doc.clone(), T0);
        assert_eq!(judged(&t, &record), GateVerdict::CountAndAdmit(doc));
    }

    #[test]
    fn another_nodes_admission_does_not_admit_its_publisher() {
        let (t, m) = trust();
        let (worker, other) = (key(2), key(3));
        let record = publish_record(&worker, admission(&t, &m, &other, None), T0);
        assert_eq!(judged(&t, &record), GateVerdict::UnknownAuthor);
    }

    fn commit_record(author: &SecretKey, time: Timestamp) -> Record {
        Record::author(
            author,
            2,
            buildmesh_protocol::Hash::of(b"prev"),
            time,
            &Body::CommitSeen(buildmesh_protocol::record::CommitSeen {
                repo: "r".into(),
                branch: "main".into(),
                sha: "ab".repeat(20),
                source: buildmesh_protocol::record::ChangeSource::Submit,
                requested_by: None,
                subject: None,
                request: None,
            }),
        )
        .unwrap()
    }

    #[test]
    fn a_commit_announced_without_the_role_is_kept_but_does_not_count() {
        let (mut t, m) = trust();
        let worker = key(2);
        t.apply(&admission(&t, &m, &worker, None)).unwrap();
        assert_eq!(
            judged(&t, &commit_record(&worker, T0)),
            GateVerdict::Kept(Refusal::NotAnnouncer)
        );
        // A maintainer may announce.
        assert_eq!(judged(&t, &commit_record(&m, T0)), GateVerdict::Count);
    }

    #[test]
    fn a_record_dated_far_ahead_waits() {
        let (t, m) = trust();
        let far = T0.plus(buildmesh_protocol::entitle::MAX_FUTURE * 2);
        assert_eq!(judged(&t, &commit_record(&m, far)), GateVerdict::NotYet);
        assert_eq!(
            judged(&t, &commit_record(&m, Timestamp(u64::MAX))),
            GateVerdict::NotYet
        );
    }
}
