//! The notifier holder's outbox (sans-IO, explicit `now`): what it mails, to whom, and when.
//!
//! - [`Alert`]: one mail — a builder's transition to the list, a missing or a quarantined worker
//!   to its owner — with the identity every notifier derives the same way: [`Alert::key`] names
//!   its `NotificationSent` record, [`Alert::message_id`] its Message-ID.
//! - [`Outbox`]: the queue. An alert is queued once; a notifier's `NotificationSent` for it, from
//!   any holder of any term, drops it for good. A new holder mails nothing until it has pulled
//!   what its peers hold (its predecessor's last records among them) or [`SETTLE`] has passed
//!   since it took the lease. A mail the server did not take is retried with exponential backoff
//!   from [`BACKOFF_BASE`] up to [`BACKOFF_MAX`], never dropped.
//! - [`is_missing`]: when a worker's owner is told it is missing.
//!
//! The node's notifier (`node/src/notifier/`) feeds it records, ticks and SMTP outcomes; the
//! election simulator drives the same code.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::health::HealthView;
use crate::record::ResultCode;
use crate::transitions::{Kind, Transition};
use crate::{Hash, NodeId, Timestamp};

/// The longest a new holder waits for its sync round before its first mail.
pub const SETTLE: Duration = Duration::from_secs(1);
/// The wait after a mail's first refusal; it doubles with every further refusal.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest wait between two tries of one mail.
pub const BACKOFF_MAX: Duration = Duration::from_secs(64);

/// One mail to send.
#[derive(Clone, Debug, PartialEq)]
pub enum Alert {
    /// A red (or green again) transition of a builder: to the list.
    Transition(Transition),
    /// A worker not heard from for longer than `missing_after`: to its owner, once per
    /// absence (the absence is named by the worker's log head, which every node agrees on).
    Missing {
        /// The worker's admitted name.
        name: String,
        /// Its key.
        id: NodeId,
        /// Its owner's address, from its admission.
        owner: String,
        /// Its log head when it went missing.
        records: u64,
    },
    /// The follow-up to a red's mail that went out before its culprit search ended: names the
    /// first bad commit, in the same thread.
    Culprit {
        /// The red transition whose mail it follows.
        red: Transition,
    },
    /// A worker that entered quarantine: to its owner, once per quarantine.
    Quarantined {
        /// The worker's admitted name.
        name: String,
        /// Its key.
        id: NodeId,
        /// Its owner's address, from its admission.
        owner: String,
        /// Its health as every node derives it.
        health: Box<HealthView>,
    },
}

impl Alert {
    /// The identity in the transition-shaped form `NotificationSent` records carry (builder,
    /// branch, sha). A worker's alert keeps the shape older notifiers recorded — `worker NAME`,
    /// the owner, the worker and its log head or quarantine number — so their records still
    /// count; it is never shown or parsed as a transition.
    pub fn as_transition(&self) -> Transition {
        match self {
            Alert::Transition(t) => t.clone(),
            Alert::Culprit { red } => Transition {
                sha: format!("{}:culprit", red.sha),
                ..red.clone()
            },
            Alert::Missing {
                name,
                id,
                owner,
                records,
            } => Transition {
                builder: format!("worker {name}"),
                branch: owner.clone(),
                sha: format!("{id}:{records}"),
                kind: Kind::Broken,
                previous: None,
                result: ResultCode::Exception,
            },
            Alert::Quarantined {
                name,
                id,
                owner,
                health,
            } => Transition {
                builder: format!("worker {name}"),
                branch: owner.clone(),
                sha: format!("{id}:quarantine:{}", health.quarantines),
                kind: Kind::Broken,
                previous: None,
                result: ResultCode::Failure,
            },
        }
    }

    /// The identity every notifier derives for this mail.
    pub fn key(&self) -> Hash {
        self.as_transition().key()
    }

    /// Its Message-ID, the same from every notifier.
    pub fn message_id(&self) -> String {
        self.as_transition().message_id()
    }

    /// Who gets it: the list for a transition, the owner otherwise.
    pub fn recipients(&self, list: &[String]) -> Vec<String> {
        match self {
            Alert::Transition(_) | Alert::Culprit { .. } => list.to_vec(),
            Alert::Missing { owner, .. } | Alert::Quarantined { owner, .. } => {
                vec![owner.clone()]
            }
        }
    }
}

/// What a node knows of a worker, for [`is_missing`].
#[derive(Clone, Copy, Debug)]
pub struct WorkerSeen {
    /// Heard within the liveness window.
    pub live: bool,
    /// Revoked for any reason.
    pub revoked: bool,
    /// Admitted with the worker role.
    pub worker: bool,
    /// When it was last heard, if ever.
    pub last_heard: Option<Timestamp>,
}

/// Whether a worker's owner is told it is missing: a worker, not revoked, not live, and last
/// heard more than `after` ago (one never heard is not missing: it never joined).
pub fn is_missing(w: WorkerSeen, after: Duration, now: Timestamp) -> bool {
    w.worker && !w.live && !w.revoked && w.last_heard.is_some_and(|t| now.since(t) > after)
}

#[derive(Debug)]
struct Waiting {
    alert: Alert,
    next_try: Timestamp,
    tries: u32,
    in_flight: bool,
}

/// The queue of one notifier (see the module's overview).
#[derive(Debug, Default)]
pub struct Outbox {
    recorded: HashSet<Hash>,
    waiting: BTreeMap<Hash, Waiting>,
    // The holder term whose sync round ended.
    synced: Option<u64>,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// A notifier recorded `key` as mailed: it is never mailed again from here (a copy in
    /// flight still finishes: SMTP cannot be called back).
    pub fn recorded(&mut self, key: Hash) {
        self.recorded.insert(key);
        self.waiting.remove(&key);
    }

    /// Whether `key` was recorded as mailed.
    pub fn is_recorded(&self, key: &Hash) -> bool {
        self.recorded.contains(key)
    }

    /// Whether `key` was recorded or is waiting.
    pub fn knows(&self, key: &Hash) -> bool {
        self.recorded.contains(key) || self.waiting.contains_key(key)
    }

    /// Queues `alert` unless it was mailed or is queued; true when it was newly queued.
    pub fn queue(&mut self, alert: Alert, now: Timestamp) -> bool {
        let key = alert.key();
        if self.knows(&key) {
            return false;
        }
        self.waiting.insert(
            key,
            Waiting {
                alert,
                next_try: now,
                tries: 0,
                in_flight: false,
            },
        );
        true
    }

    /// Whether the holder of `term` still has to pull what its peers hold before mailing.
    pub fn needs_sync(&self, term: u64) -> bool {
        self.synced != Some(term)
    }

    /// The holder of `term` has pulled what its peers hold (and learnt it).
    pub fn synced(&mut self, term: u64) {
        self.synced = Some(term);
    }

    /// The mails to hand to the SMTP server now, marked in flight until [`Outbox::sent`] or
    /// [`Outbox::failed`]. `holding` is this node's term and how long it has held the lease;
    /// `None` sends nothing. A holder sends nothing until its term's sync round ended or
    /// [`SETTLE`] has passed.
    pub fn due(&mut self, now: Timestamp, holding: Option<(u64, Duration)>) -> Vec<Alert> {
        let Some((term, held_for)) = holding else {
            return Vec::new();
        };
        if self.needs_sync(term) && held_for < SETTLE {
            return Vec::new();
        }
        self.waiting
            .values_mut()
            .filter(|w| !w.in_flight && w.next_try <= now)
            .map(|w| {
                w.in_flight = true;
                w.tries += 1;
                w.alert.clone()
            })
            .collect()
    }

    /// The mail for `key` waits until `until` before it is handed out again (a red waiting for
    /// its culprit); this try does not count as one.
    pub fn defer(&mut self, key: Hash, until: Timestamp) {
        if let Some(w) = self.waiting.get_mut(&key) {
            w.in_flight = false;
            w.tries = w.tries.saturating_sub(1);
            w.next_try = until;
        }
    }

    /// The server took the mail for `key` (its record is being written).
    pub fn sent(&mut self, key: Hash) {
        self.recorded(key);
    }

    /// The server did not take the mail for `key`: it is tried again after the returned wait
    /// (`None` when it is no longer waiting, say because another holder recorded it).
    pub fn failed(&mut self, key: Hash, now: Timestamp) -> Option<(u32, Duration)> {
        let w = self.waiting.get_mut(&key)?;
        w.in_flight = false;
        let wait = BACKOFF_BASE
            .saturating_mul(1 << w.tries.saturating_sub(1).min(31))
            .min(BACKOFF_MAX);
        w.next_try = now.plus(wait);
        Some((w.tries, wait))
    }

    /// Drops every waiting mail (a holder with no SMTP server configured); how many.
    pub fn drop_waiting(&mut self) -> usize {
        let n = self.waiting.len();
        self.waiting.clear();
        n
    }

    /// Mails waiting (in flight included).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    fn t(sha: &str) -> Alert {
        Alert::Transition(Transition {
            builder: "linux".into(),
            branch: "main".into(),
            sha: sha.into(),
            kind: Kind::Broken,
            previous: Some(ResultCode::Success),
            result: ResultCode::Failure,
        })
    }

    const T0: Timestamp = Timestamp(1_000_000);
    const SETTLED: Option<(u64, Duration)> = Some((1, SETTLE));

    #[test]
    fn an_alert_is_queued_once_and_a_record_from_anyone_drops_it() {
        let mut o = Outbox::new();
        assert!(o.queue(t("a"), T0));
        assert!(!o.queue(t("a"), T0), "queued twice");
        o.recorded(t("a").key());
        assert_eq!(o.waiting(), 0);
        assert!(!o.queue(t("a"), T0), "mailed again after its record");
        assert!(o.due(T0, SETTLED).is_empty());
    }

    #[test]
    fn nothing_is_sent_without_the_lease_nor_before_the_sync_round_or_settle() {
        let mut o = Outbox::new();
        o.queue(t("a"), T0);
        assert!(o.due(T0, None).is_empty());
        assert!(o.due(T0, Some((3, Duration::from_millis(200)))).is_empty());
        // The round of term 2 does not count for term 3.
        o.synced(2);
        assert!(o.due(T0, Some((3, Duration::from_millis(200)))).is_empty());
        o.synced(3);
        assert_eq!(o.due(T0, Some((3, Duration::from_millis(200)))), [t("a")]);
        // Without a round, the holder goes on once SETTLE has passed.
        let mut o = Outbox::new();
        o.queue(t("a"), T0);
        assert_eq!(o.due(T0, Some((4, SETTLE))), [t("a")]);
    }

    #[test]
    fn a_mail_in_flight_is_not_handed_out_twice_and_a_refusal_backs_off() {
        let mut o = Outbox::new();
        o.queue(t("a"), T0);
        assert_eq!(o.due(T0, SETTLED).len(), 1);
        assert!(o.due(T0, SETTLED).is_empty(), "handed out while in flight");
        let (tries, wait) = o.failed(t("a").key(), T0).expect("waiting");
        assert_eq!((tries, wait), (1, BACKOFF_BASE));
        assert!(o.due(T0.plus(wait / 2), SETTLED).is_empty());
        assert_eq!(o.due(T0.plus(wait), SETTLED).len(), 1);
        let (_, wait2) = o.failed(t("a").key(), T0).expect("waiting");
        assert_eq!(wait2, 2 * BACKOFF_BASE);
        for _ in 0..40 {
            o.due(T0.plus(BACKOFF_MAX), SETTLED);
            let (_, w) = o.failed(t("a").key(), T0).expect("never dropped");
            assert!(w <= BACKOFF_MAX);
        }
        let late = T0.plus(BACKOFF_MAX);
        assert_eq!(
            o.due(late, SETTLED).len(),
            1,
            "a refused mail is never dropped"
        );
        o.sent(t("a").key());
        assert_eq!(o.waiting(), 0);
        assert!(o.failed(t("a").key(), T0).is_none());
        assert!(!o.queue(t("a"), T0));
    }

    #[test]
    fn a_worker_is_missing_only_when_heard_before_and_silent_past_the_bound() {
        let after = Duration::from_secs(60);
        let now = T0.plus(Duration::from_secs(600));
        let seen = WorkerSeen {
            live: false,
            revoked: false,
            worker: true,
            last_heard: Some(T0),
        };
        assert!(is_missing(seen, after, now));
        assert!(!is_missing(seen, after, T0.plus(after)));
        assert!(!is_missing(WorkerSeen { live: true, ..seen }, after, now));
        assert!(!is_missing(
            WorkerSeen {
                revoked: true,
                ..seen
            },
            after,
            now
        ));
        assert!(!is_missing(
            WorkerSeen {
                worker: false,
                ..seen
            },
            after,
            now
        ));
        assert!(!is_missing(
            WorkerSeen {
                last_heard: None,
                ..seen
            },
            after,
            now
        ));
    }

    #[test]
    fn a_missing_worker_keeps_the_identity_older_notifiers_recorded() {
        let id = SecretKey::from_seed([3; 32]).id();
        let a = Alert::Missing {
            name: "w".into(),
            id,
            owner: "o@example.org".into(),
            records: 7,
        };
        let old = Transition {
            builder: "worker w".into(),
            branch: "o@example.org".into(),
            sha: format!("{id}:7"),
            kind: Kind::Broken,
            previous: None,
            result: ResultCode::Exception,
        };
        assert_eq!(a.key(), old.key());
        assert_eq!(a.message_id(), old.message_id());
        assert_eq!(
            a.recipients(&["list@example.org".into()]),
            ["o@example.org"]
        );
        assert_eq!(
            t("a").recipients(&["list@example.org".into()]),
            ["list@example.org"]
        );
    }
}
