//! What the notifier mails: a builder's transition (to the list), a missing worker or a
//! quarantined worker (to its owner). Each has an identity every notifier derives the same
//! way, which names its `NotificationSent` record and its Message-ID.

use buildmesh_protocol::record::ResultCode;
use buildmesh_protocol::transitions::{Kind, Transition};
use buildmesh_protocol::{Hash, NodeId};

use buildmesh_protocol::health::HealthView;

/// One mail to send.
#[derive(Clone, Debug)]
pub(crate) enum Alert {
    /// A red (or green again) transition of a builder: to the list.
    Transition(Transition),
    /// A worker not heard from for longer than `missing_after`: to its owner, once per
    /// absence (the absence is named by the worker's log head, which every node agrees on).
    Missing {
        name: String,
        id: NodeId,
        owner: String,
        records: u64,
    },
    /// A worker that entered quarantine: to its owner, once per quarantine.
    Quarantined {
        name: String,
        id: NodeId,
        owner: String,
        health: Box<HealthView>,
    },
}

impl Alert {
    // The identity as a transition-shaped triple: what `NotificationSent` records carry (and,
    // for a missing worker, what they always carried, so that older records still count).
    pub(crate) fn as_transition(&self) -> Transition {
        match self {
            Alert::Transition(t) => t.clone(),
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
    pub(crate) fn key(&self) -> Hash {
        self.as_transition().key()
    }

    /// Its Message-ID, the same from every notifier.
    pub(crate) fn message_id(&self) -> String {
        self.as_transition().message_id()
    }

    /// Who gets it: the list for a transition, the owner otherwise.
    pub(crate) fn recipients(&self, list: &[String]) -> Vec<String> {
        match self {
            Alert::Transition(_) => list.to_vec(),
            Alert::Missing { owner, .. } | Alert::Quarantined { owner, .. } => {
                vec![owner.clone()]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildmesh_protocol::keys::SecretKey;

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
        assert_eq!(
            a.recipients(&["list@example.org".into()]),
            ["o@example.org"]
        );
    }
}
