//! Entitlement: a signature says who wrote a record; these rules say whether it counts.
//!
//! A record that breaks its rule is **kept, not counted**: it stays in its author's chain
//! (refusing a signed, chained record would stall every later record of that author behind the
//! gap), counts for nothing in any view, is counted by its [`Refusal`] reason, and marks its
//! author as misbehaving. Every rule here is a pure function of the record and the trust fold,
//! so every node that holds the same documents reaches the same answer, whatever order records
//! came in.
//!
//! The rules per kind:
//! - `CommitSeen`: authored by an announcer (or a maintainer), or carrying the signed request of a caller with the
//!   announcer or maintainer role that asks for exactly this commit;
//! - `NotificationSent`: notifier role;
//! - `Claim` and `BuildResult`: worker role here; which attempt a claim may take and which
//!   result becomes current are rules over all the claims of a job, in
//!   [`crate::claims`] (attempts grow one at a time up to the builder's `max_attempts`, the
//!   worker's labels match the builder's, a result counts only from its attempt's winner);
//! - `Publish`: the document's own maintainer signatures (see [`crate::trust`]);
//! - `Rebuild`: the signed request of a caller with the announcer or maintainer role that asks
//!   for exactly these builders of this commit ([`rebuild`]);
//! - `Bisect`: the notifier role, or the signed request of an announcer or a maintainer for
//!   this builder between these commits; `Probes` (a search's steps): the notifier role;
//! - `Cancel`: the signed request of an admitted caller that names this job ([`cancel`]);
//!   whether that caller may stop that job (a maintainer, or the key whose request started it)
//!   is a rule over the job, applied where jobs are known ([`may_cancel`]);
//! - a kind this node does not know: stored and forwarded, never counted.
//!
//! Times: a record dated more than [`MAX_FUTURE`] ahead of the receiver's clock is not yet due;
//! it is taken once it is (old records arriving by sync are normal and always due).

use std::time::Duration;

use crate::docs::Role;
use crate::keys::NodeId;
use crate::record::{Bisect, Body, Cancel, CommitSeen, Envelope, MAX_BISECT_COMMITS, Rebuild};
use crate::time::Timestamp;
use crate::trust::Trust;
use crate::wire::{ApiAction, ApiRequest, SignedRequest};

/// How far ahead of the receiver's clock a record may be dated and still be taken now. Clocks
/// of volunteer hosts drift by seconds, rarely by minutes; a record further ahead waits (it
/// comes again by the next sync round once it is due).
pub const MAX_FUTURE: Duration = Duration::from_secs(5 * 60);

/// How far a request carried inside a record may be dated from the record itself.
pub const MAX_REQUEST_SKEW: Duration = Duration::from_secs(5 * 60);

/// Why a record counts for nothing.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Refusal {
    /// A kind this node does not know (a newer node's): kept, forwarded, not counted.
    UnknownKind,
    /// A commit announced by a key without the announcer role and without a caller's request.
    NotAnnouncer,
    /// A commit announced on a request that does not verify, names another commit, comes from
    /// a caller without the role, or is dated far from the record.
    BadRequest,
    /// A mail notice from a key without the notifier role.
    NotNotifier,
    /// A claim or a result from a key without the worker role.
    NotWorker,
    /// A claim for an attempt out of sequence or past the builder's `max_attempts`.
    BadAttempt,
    /// A claim for a builder whose requirements the worker's labels do not meet.
    WrongLabels,
    /// A result for an attempt its author never claimed.
    Unclaimed,
    /// A claim for another worker's re-validation job (only the quarantined worker runs it).
    OthersRevalidation,
    /// A body that does not decode although its kind is known.
    Malformed,
    /// A cancel from a caller who is neither a maintainer nor the key whose request started
    /// the build.
    NotCanceller,
    /// A claim for a culprit search's probe by another worker than the one it was asked of.
    OthersProbe,
}

impl Refusal {
    /// The reason as `/metrics` and `buildmesh nodes` show it.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::UnknownKind => "unknown-kind",
            Refusal::NotAnnouncer => "unentitled-commit",
            Refusal::BadRequest => "bad-request",
            Refusal::NotNotifier => "unentitled-notice",
            Refusal::NotWorker => "unentitled-worker",
            Refusal::BadAttempt => "unentitled-attempt",
            Refusal::WrongLabels => "unentitled-labels",
            Refusal::Unclaimed => "unclaimed-result",
            Refusal::OthersRevalidation => "unentitled-revalidation",
            Refusal::Malformed => "malformed-body",
            Refusal::NotCanceller => "unentitled-cancel",
            Refusal::OthersProbe => "unentitled-probe",
        }
    }

    /// Whether the refusal marks the author as misbehaving. An unknown kind is an honest
    /// newer node's, not misbehaviour.
    pub fn is_misbehaviour(self) -> bool {
        self != Refusal::UnknownKind
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// What the gate does with a verified record of an admitted author.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entitled {
    /// Store it; it counts.
    Counts,
    /// Store it (it is in its author's chain), but it counts for nothing.
    Kept(Refusal),
    /// Dated too far ahead: do not take it yet.
    NotYet,
}

/// Whether a record dated `time` may be taken at `now` (see [`MAX_FUTURE`]).
pub fn is_due(time: Timestamp, now: Timestamp) -> bool {
    time.since(now) <= MAX_FUTURE
}

/// The rule for one record whose signature was checked and whose author is admitted (`body`
/// is `None` when it does not decode): the record-level part of entitlement (role by kind, due time, known kind). The job-level rules
/// for claims and results are in [`crate::claims`].
pub fn record(trust: &Trust, envelope: &Envelope, body: Option<&Body>, now: Timestamp) -> Entitled {
    if !is_due(envelope.time, now) {
        return Entitled::NotYet;
    }
    if !envelope.kind.is_known() {
        return Entitled::Kept(Refusal::UnknownKind);
    }
    let Some(body) = body else {
        return Entitled::Kept(Refusal::Malformed);
    };
    let verdict = match body {
        Body::CommitSeen(c) => commit_seen(trust, &envelope.author, envelope.time, c),
        Body::NotificationSent(_) => {
            has_role(trust, &envelope.author, Role::Notifier, envelope.time)
                .then_some(())
                .ok_or(Refusal::NotNotifier)
        }
        Body::Claim(_) | Body::BuildResult(_) => {
            has_role(trust, &envelope.author, Role::Worker, envelope.time)
                .then_some(())
                .ok_or(Refusal::NotWorker)
        }
        Body::Publish(_) => Ok(()),
        Body::Rebuild(r) => rebuild(trust, envelope.time, r).map(|_| ()),
        Body::Cancel(c) => cancel(trust, envelope.time, c).map(|_| ()),
        Body::Bisect(b) => bisect(trust, &envelope.author, envelope.time, b),
        Body::Probes(_) => has_role(trust, &envelope.author, Role::Notifier, envelope.time)
            .then_some(())
            .ok_or(Refusal::NotNotifier),
    };
    match verdict {
        Ok(()) => Entitled::Counts,
        Err(r) => Entitled::Kept(r),
    }
}

fn has_role(trust: &Trust, key: &NodeId, role: Role, at: Timestamp) -> bool {
    trust.may_act(key, role, at).is_ok()
}

/// May a caller ask for announcements: an announcer or a maintainer at `at`.
pub fn may_request_announce(trust: &Trust, key: &NodeId, at: Timestamp) -> bool {
    trust.is_maintainer(key, at) || has_role(trust, key, Role::Announcer, at)
}

/// The rule for a `CommitSeen` authored by `author` at `time`.
pub fn commit_seen(
    trust: &Trust,
    author: &NodeId,
    time: Timestamp,
    c: &CommitSeen,
) -> Result<(), Refusal> {
    if may_request_announce(trust, author, time) {
        return Ok(());
    }
    let Some(signed) = &c.request else {
        return Err(Refusal::NotAnnouncer);
    };
    let req = signed.verify().map_err(|_| Refusal::BadRequest)?;
    let skew = if req.time > time {
        req.time.since(time)
    } else {
        time.since(req.time)
    };
    if skew > MAX_REQUEST_SKEW || !may_request_announce(trust, &req.key, req.time) {
        return Err(Refusal::BadRequest);
    }
    match &req.action {
        ApiAction::Submit { repo, branch, sha }
            if *repo == c.repo && *branch == c.branch && *sha == c.sha =>
        {
            Ok(())
        }
        _ => Err(Refusal::BadRequest),
    }
}

// The caller's request a record dated `time` carries: it verifies and is dated near the record.
fn carried(signed: &SignedRequest, time: Timestamp) -> Result<ApiRequest, Refusal> {
    let req = signed.verify().map_err(|_| Refusal::BadRequest)?;
    let skew = if req.time > time {
        req.time.since(time)
    } else {
        time.since(req.time)
    };
    if skew > MAX_REQUEST_SKEW {
        return Err(Refusal::BadRequest);
    }
    Ok(req)
}

/// The rule for a `Rebuild` record dated `time`: its request verifies, comes from an announcer
/// or a maintainer, and asks for exactly these builders of this commit. Returns the caller.
pub fn rebuild(trust: &Trust, time: Timestamp, r: &Rebuild) -> Result<NodeId, Refusal> {
    let req = carried(&r.request, time)?;
    if !may_request_announce(trust, &req.key, req.time)
        || !req.action.asks_rebuild(&r.branch, &r.sha, &r.builders)
    {
        return Err(Refusal::BadRequest);
    }
    Ok(req.key)
}

/// The record-level rule for a `Cancel` dated `time`: its request verifies, comes from an
/// admitted caller, and names this job. Returns the caller and when it asked; whether it may
/// stop this job is [`may_cancel`].
pub fn cancel(trust: &Trust, time: Timestamp, c: &Cancel) -> Result<(NodeId, Timestamp), Refusal> {
    let req = carried(&c.request, time)?;
    if trust.may_author(&req.key, req.time).is_err() || !req.action.asks_cancel(&c.job) {
        return Err(Refusal::BadRequest);
    }
    Ok((req.key, req.time))
}

/// The rule for a `Bisect` record by `author` dated `time`: a range of 2 to
/// [`MAX_BISECT_COMMITS`] commits, started by the notifier holder (notifier role) or on the
/// signed request of an announcer or a maintainer for exactly this builder and range.
pub fn bisect(trust: &Trust, author: &NodeId, time: Timestamp, b: &Bisect) -> Result<(), Refusal> {
    if b.shas.len() < 2 || b.shas.len() > MAX_BISECT_COMMITS {
        return Err(Refusal::Malformed);
    }
    let Some(signed) = &b.request else {
        return has_role(trust, author, Role::Notifier, time)
            .then_some(())
            .ok_or(Refusal::NotNotifier);
    };
    let req = carried(signed, time)?;
    if may_request_announce(trust, &req.key, req.time)
        && req.action.asks_bisect(&b.builder, &b.branch, &b.shas)
    {
        Ok(())
    } else {
        Err(Refusal::BadRequest)
    }
}

/// Whether `caller`, asking at `at`, may stop a job: a maintainer may stop any; anyone else
/// only a job their own request started (`starters`: the rebuild's caller, or the keys whose
/// `submit` announced the commit).
pub fn may_cancel(
    trust: &Trust,
    caller: &NodeId,
    at: Timestamp,
    starters: &[NodeId],
) -> Result<(), Refusal> {
    if trust.is_maintainer(caller, at) || starters.contains(caller) {
        Ok(())
    } else {
        Err(Refusal::NotCanceller)
    }
}

/// Whether a counted `CommitSeen` was asked for by a maintainer: authored by one, or carrying a
/// maintainer's signed request for this very commit. Such a commit is built even when it is not
/// on the branch it names (a maintainer may ask for a fork's commit by its id); any other is
/// built only from its branch.
pub fn vouched_by_maintainer(
    trust: &Trust,
    author: &NodeId,
    time: Timestamp,
    c: &CommitSeen,
) -> bool {
    if trust.is_maintainer(author, time) {
        return true;
    }
    let Some(req) = c.request.as_ref().and_then(|s| s.verify().ok()) else {
        return false;
    };
    let asks_for_this = matches!(
        &req.action,
        ApiAction::Submit { repo, branch, sha }
            if *repo == c.repo && *branch == c.branch && *sha == c.sha
    );
    asks_for_this
        && trust.is_maintainer(&req.key, req.time)
        && commit_seen(trust, author, time, c).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;
    use crate::docs::{Admission, Genesis, SignedDoc};
    use crate::keys::Hash;
    use crate::record::{ChangeSource, NotificationSent, RecordKind};
    use crate::wire::SignedRequest;
    use std::collections::BTreeSet;

    struct Mesh {
        trust: Trust,
        maintainer: SecretKey,
        announcer: SecretKey,
        worker: SecretKey,
        notifier: SecretKey,
    }

    fn mesh() -> Mesh {
        let maintainer = SecretKey::from_seed([1; 32]);
        let g = Genesis {
            name: "t".into(),
            maintainers: vec![maintainer.id()],
            threshold: 1,
            created: Timestamp(0),
        };
        let mut gdoc = SignedDoc::new(&g).unwrap();
        gdoc.sign(&maintainer);
        let genesis = Genesis::verify(&gdoc).unwrap();
        let mesh = genesis.mesh;
        let mut trust = Trust::new(genesis);
        let mut admit = |seed: u8, role: Role| {
            let k = SecretKey::from_seed([seed; 32]);
            let a = Admission {
                mesh,
                node: k.id(),
                name: format!("n{seed}"),
                roles: BTreeSet::from([role]),
                labels: Default::default(),
                owner: None,
                issued: Timestamp(0),
                expires: None,
            };
            let mut d = SignedDoc::new(&a).unwrap();
            d.sign(&maintainer);
            trust.apply(&d).unwrap();
            k
        };
        let announcer = admit(2, Role::Announcer);
        let worker = admit(3, Role::Worker);
        let notifier = admit(4, Role::Notifier);
        Mesh {
            trust,
            maintainer,
            announcer,
            worker,
            notifier,
        }
    }

    fn env(author: &SecretKey, kind: RecordKind, time: u64) -> Envelope {
        Envelope {
            author: author.id(),
            seq: 1,
            prev: Hash::ZERO,
            kind,
            time: Timestamp(time),
            body: Vec::new(),
        }
    }

    fn commit(request: Option<SignedRequest>) -> Body {
        Body::CommitSeen(CommitSeen {
            repo: "r".into(),
            branch: "main".into(),
            sha: "abc".into(),
            source: ChangeSource::Submit,
            requested_by: None,
            subject: None,
            request,
        })
    }

    const NOW: u64 = 1_000_000_000;

    #[test]
    fn commits_count_from_announcers_or_on_a_callers_request() {
        let m = mesh();
        let t = &m.trust;
        let now = Timestamp(NOW);
        let by =
            |k: &SecretKey, b: &Body| record(t, &env(k, RecordKind::CommitSeen, NOW), Some(b), now);
        assert_eq!(by(&m.announcer, &commit(None)), Entitled::Counts);
        assert_eq!(
            by(&m.worker, &commit(None)),
            Entitled::Kept(Refusal::NotAnnouncer)
        );
        let submit = |k: &SecretKey, sha: &str, time: u64| {
            SignedRequest::sign(
                k,
                ApiAction::Submit {
                    repo: "r".into(),
                    branch: "main".into(),
                    sha: sha.into(),
                },
                Timestamp(time),
            )
        };
        // A worker's node took a maintainer's submit: it counts everywhere.
        let asked = commit(Some(submit(&m.maintainer, "abc", NOW)));
        assert_eq!(by(&m.worker, &asked), Entitled::Counts);
        // The request names another commit, comes from a worker, or is old.
        for bad in [
            submit(&m.maintainer, "def", NOW),
            submit(&m.worker, "abc", NOW),
            submit(&m.maintainer, "abc", NOW - 3_600_000),
        ] {
            assert_eq!(
                by(&m.worker, &commit(Some(bad))),
                Entitled::Kept(Refusal::BadRequest)
            );
        }
        // A forged request signature.
        let mut forged = submit(&m.maintainer, "abc", NOW);
        forged.sig = m.worker.sign(crate::Domain::Request, &forged.bytes);
        assert_eq!(
            by(&m.worker, &commit(Some(forged))),
            Entitled::Kept(Refusal::BadRequest)
        );
    }

    #[test]
    fn rebuilds_need_an_announcers_request_for_exactly_them_and_cancels_an_admitted_caller() {
        let m = mesh();
        let t = &m.trust;
        let now = Timestamp(NOW);
        let sha = "abcdef0123456789";
        let ask = |k: &SecretKey, builder: Option<&str>, prefix: &str| {
            SignedRequest::sign(
                k,
                ApiAction::Rebuild {
                    sha: prefix.into(),
                    branch: None,
                    builder: builder.map(Into::into),
                },
                now,
            )
        };
        let rebuild = |request: SignedRequest, builders: &[&str]| {
            Body::Rebuild(Rebuild {
                repo: "r".into(),
                branch: "main".into(),
                sha: sha.into(),
                builders: builders.iter().map(|b| b.to_string()).collect(),
                request,
            })
        };
        let by = |b: &Body| record(t, &env(&m.worker, b.kind(), NOW), Some(b), now);
        assert_eq!(
            by(&rebuild(ask(&m.announcer, Some("b1"), "abcdef0"), &["b1"])),
            Entitled::Counts
        );
        assert_eq!(
            by(&rebuild(ask(&m.maintainer, None, sha), &[])),
            Entitled::Counts
        );
        for bad in [
            // A worker may not ask; the record names another builder, more builders, another
            // commit, or a prefix too short to mean one commit.
            rebuild(ask(&m.worker, Some("b1"), sha), &["b1"]),
            rebuild(ask(&m.announcer, Some("b1"), sha), &["b2"]),
            rebuild(ask(&m.announcer, Some("b1"), sha), &["b1", "b2"]),
            rebuild(ask(&m.announcer, None, "abcdef1"), &[]),
            rebuild(ask(&m.announcer, None, "abc"), &[]),
        ] {
            assert_eq!(by(&bad), Entitled::Kept(Refusal::BadRequest));
        }
        let job = Hash::of(b"job");
        let stop = |k: &SecretKey, build: String| {
            Body::Cancel(Cancel {
                job,
                request: SignedRequest::sign(k, ApiAction::Cancel { build }, now),
            })
        };
        let id = format!("{}-2", &job.to_string()[..16]);
        assert_eq!(by(&stop(&m.worker, id.clone())), Entitled::Counts);
        let stranger = SecretKey::from_seed([9; 32]);
        assert_eq!(
            by(&stop(&stranger, id)),
            Entitled::Kept(Refusal::BadRequest)
        );
        let other = Hash::of(b"other").to_string();
        assert_eq!(
            by(&stop(&m.worker, other[..16].to_string())),
            Entitled::Kept(Refusal::BadRequest)
        );
        // Which job a caller may stop: a maintainer any, others their own.
        assert!(may_cancel(t, &m.maintainer.id(), now, &[]).is_ok());
        assert!(may_cancel(t, &m.announcer.id(), now, &[m.announcer.id()]).is_ok());
        assert_eq!(
            may_cancel(t, &m.announcer.id(), now, &[m.worker.id()]),
            Err(Refusal::NotCanceller)
        );
    }

    #[test]
    fn only_a_maintainers_request_vouches_for_a_commit_off_its_branch() {
        let m = mesh();
        let t = &m.trust;
        let at = Timestamp(NOW);
        let seen = |request: Option<SignedRequest>| match commit(request) {
            Body::CommitSeen(c) => c,
            _ => unreachable!(),
        };
        let submit = |k: &SecretKey, sha: &str| {
            SignedRequest::sign(
                k,
                ApiAction::Submit {
                    repo: "r".into(),
                    branch: "main".into(),
                    sha: sha.into(),
                },
                at,
            )
        };
        // An announcer's own announcement, or one on an announcer's request: from the branch only.
        assert!(!vouched_by_maintainer(
            t,
            &m.announcer.id(),
            at,
            &seen(None)
        ));
        let by_announcer = seen(Some(submit(&m.announcer, "abc")));
        assert!(!vouched_by_maintainer(t, &m.worker.id(), at, &by_announcer));
        // A maintainer's request for this commit, carried by any node, or a maintainer's record.
        let by_maintainer = seen(Some(submit(&m.maintainer, "abc")));
        assert!(vouched_by_maintainer(t, &m.worker.id(), at, &by_maintainer));
        assert!(vouched_by_maintainer(
            t,
            &m.maintainer.id(),
            at,
            &seen(None)
        ));
        // A maintainer's request for another commit vouches for nothing.
        let other = seen(Some(submit(&m.maintainer, "def")));
        assert!(!vouched_by_maintainer(t, &m.worker.id(), at, &other));
    }

    #[test]
    fn notices_need_the_notifier_role_and_results_the_worker_role() {
        let m = mesh();
        let now = Timestamp(NOW);
        let notice = Body::NotificationSent(NotificationSent {
            transition: Hash::ZERO,
            builder: "b".into(),
            branch: "main".into(),
            sha: "abc".into(),
            message_id: "<x>".into(),
            to: vec![],
            term: 1,
        });
        let e = |k: &SecretKey| env(k, RecordKind::NotificationSent, NOW);
        assert_eq!(
            record(&m.trust, &e(&m.notifier), Some(&notice), now),
            Entitled::Counts
        );
        assert_eq!(
            record(&m.trust, &e(&m.worker), Some(&notice), now),
            Entitled::Kept(Refusal::NotNotifier)
        );
        let claim = Body::Claim(crate::record::Claim {
            job: Hash::ZERO,
            key: crate::record::JobKey {
                builder: "b".into(),
                repo: "r".into(),
                branch: "main".into(),
                sha: "abc".into(),
                purpose: Default::default(),
            },
            attempt: 1,
            lease_ms: 3000,
        });
        let c = |k: &SecretKey| env(k, RecordKind::Claim, NOW);
        assert_eq!(
            record(&m.trust, &c(&m.worker), Some(&claim), now),
            Entitled::Counts
        );
        assert_eq!(
            record(&m.trust, &c(&m.announcer), Some(&claim), now),
            Entitled::Kept(Refusal::NotWorker)
        );
    }

    #[test]
    fn future_records_wait_and_unknown_kinds_are_kept() {
        let m = mesh();
        let now = Timestamp(NOW);
        let b = commit(None);
        let ahead = MAX_FUTURE.as_millis() as u64;
        let at = |t: u64| {
            record(
                &m.trust,
                &env(&m.announcer, RecordKind::CommitSeen, t),
                Some(&b),
                now,
            )
        };
        assert_eq!(at(NOW + ahead), Entitled::Counts);
        assert_eq!(at(NOW + ahead + 1), Entitled::NotYet);
        assert_eq!(at(u64::MAX), Entitled::NotYet);
        // Old records are always due.
        assert_eq!(at(0), Entitled::Counts);
        let kind = RecordKind::from_name("confirm-request").unwrap();
        assert!(!kind.is_known());
        assert_eq!(
            record(&m.trust, &env(&m.announcer, kind, NOW), None, now),
            Entitled::Kept(Refusal::UnknownKind)
        );
        assert!(!Refusal::UnknownKind.is_misbehaviour());
    }
}
