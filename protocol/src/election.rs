//! Electing the one notifier: term-numbered, majority-voted leases (a raft-style election
//! without a log), as a sans-IO state machine. Time comes in as `now` on the node's own clock;
//! messages go out as values.
//!
//! Safety rests on leases measured by each node's own clock:
//! - a voter grants one candidate per term, and grants no one else while a lease it granted
//!   is unexpired (`lease` after it granted, on its clock);
//! - a candidate becomes holder with a majority of grants, and holds until
//!   `sent + lease × (1 − 2ρ)` on its clock, where `sent` is when it asked and ρ the bound on
//!   clock-rate drift; renewals move that end forward the same way.
//!
//! Every grant a holder counts was made after `sent`, so every voter's grant outlasts the
//! holder's lease while clocks drift apart by less than ρ; two majorities share a voter, so two
//! holders' leases never overlap. A node cut off from a majority cannot renew and stops holding
//! when its lease ends. With drift beyond ρ the guarantee is gone (the simulator shows how).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::keys::NodeId;
use crate::time::Timestamp;

/// Timing of the election.
#[derive(Clone, Debug, PartialEq)]
pub struct ElectionSettings {
    /// How long a grant holds. Default 2 s.
    pub lease: Duration,
    /// How often the holder renews. Default 500 ms.
    pub renew_every: Duration,
    /// Least wait before a node stands for election once no holder is heard. Default 300 ms.
    pub election_timeout: Duration,
    /// Bound on the relative drift of clock rates (0.01 = 1 %). Default 0.01.
    pub max_drift: f64,
}

impl Default for ElectionSettings {
    fn default() -> Self {
        ElectionSettings {
            lease: Duration::from_secs(2),
            renew_every: Duration::from_millis(500),
            election_timeout: Duration::from_millis(300),
            max_drift: 0.01,
        }
    }
}

/// What voters and candidates say to each other.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ballot {
    /// "Grant me (or renew) the lease for `term`."
    Ask {
        /// The term.
        term: u64,
        /// The asking node.
        candidate: NodeId,
        /// Identifies the round, so that late answers to an old round are not counted.
        round: u64,
    },
    /// "Would you grant me `term`?" — asked before standing, so that a node cut off from the
    /// majority cannot push the term up and unsettle the holder when it comes back.
    PreAsk {
        /// The term it would stand for.
        term: u64,
        /// The asking node.
        candidate: NodeId,
        /// Identifies the round.
        round: u64,
    },
    /// The answer to a pre-vote; it changes nothing on the voter.
    PreAnswer {
        /// The voter.
        voter: NodeId,
        /// Whether it would grant.
        granted: bool,
        /// The round answered.
        round: u64,
    },
    /// The answer.
    Answer {
        /// The voter's term after the ask.
        term: u64,
        /// The voter.
        voter: NodeId,
        /// Whether it granted.
        granted: bool,
        /// The round answered.
        round: u64,
    },
}

/// Where this node stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Not holding, not standing.
    Follower,
    /// Asking for votes.
    Candidate {
        /// The term stood for.
        term: u64,
    },
    /// Holding the notifier lease.
    Holder {
        /// The term.
        term: u64,
        /// The lease's end, on this node's clock.
        until: Timestamp,
        /// When it won this term, on this node's clock.
        since: Timestamp,
    },
}

#[derive(Clone, Debug)]
struct Round {
    id: u64,
    term: u64,
    sent: Timestamp,
    grants: BTreeSet<NodeId>,
}

/// One notifier-role node's part of the election.
#[derive(Clone, Debug)]
pub struct Election {
    me: NodeId,
    voters: BTreeSet<NodeId>,
    s: ElectionSettings,
    term: u64,
    voted: BTreeMap<u64, NodeId>,
    granted: Option<(NodeId, Timestamp)>,
    standing: Standing,
    round: Option<Round>,
    next_round: u64,
    last_renew: Timestamp,
    heard_holder: Option<(NodeId, u64, Timestamp)>,
    next_election: Timestamp,
    // A (re)started node grants nothing for a lease: grants it made before it stopped are
    // forgotten but may still be counted by a holder.
    quiet_until: Timestamp,
    // The pre-vote under way: round id, the term it is for, who would grant.
    pre: Option<(u64, u64, BTreeSet<NodeId>)>,
}

impl Election {
    /// This node's machine; `voters` are every notifier-role node (this one included).
    pub fn new(me: NodeId, voters: BTreeSet<NodeId>, s: ElectionSettings, now: Timestamp) -> Self {
        let mut e = Election {
            me,
            voters,
            s,
            term: 0,
            voted: BTreeMap::new(),
            granted: None,
            standing: Standing::Follower,
            round: None,
            next_round: 1,
            last_renew: now,
            heard_holder: None,
            next_election: now,
            quiet_until: now,
            pre: None,
        };
        e.quiet_until = now.plus(e.s.lease);
        // A fresh node waits a full lease first: grants it made before a restart may live on.
        e.next_election = now.plus(e.s.lease + e.jitter());
        e
    }

    /// Replaces the voter set (an admission or revocation changed it).
    pub fn set_voters(&mut self, voters: BTreeSet<NodeId>) {
        self.voters = voters;
    }

    /// The voters.
    pub fn voters(&self) -> &BTreeSet<NodeId> {
        &self.voters
    }

    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    // A wait that differs per node and term, so that candidates rarely collide; derived, not
    // random, so that runs replay.
    fn jitter(&self) -> Duration {
        let mut h = blake3::Hasher::new();
        h.update(self.me.as_bytes());
        h.update(&self.term.to_be_bytes());
        let x = u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
        self.s.election_timeout
            + Duration::from_millis(x % (self.s.election_timeout.as_millis() as u64 * 2 + 1))
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Where this node stands.
    pub fn standing(&self) -> &Standing {
        &self.standing
    }

    /// How long this node has held the lease at `now` (zero when it does not hold it).
    pub fn held_for(&self, now: Timestamp) -> Duration {
        match self.standing {
            Standing::Holder { since, until, .. } if now < until => now.since(since),
            _ => Duration::ZERO,
        }
    }

    /// The term this node holds the lease for at `now`, if it does.
    pub fn holding(&self, now: Timestamp) -> Option<u64> {
        match self.standing {
            Standing::Holder { term, until, .. } if now < until => Some(term),
            _ => None,
        }
    }

    /// The holder this node knows of (itself, or the one it last granted or heard), with term
    /// and when it was last heard from, on this node's clock.
    pub fn holder(&self, now: Timestamp) -> Option<(NodeId, u64, Timestamp)> {
        if let Some(term) = self.holding(now) {
            return Some((self.me, term, now));
        }
        self.heard_holder
            .filter(|(_, _, at)| now.since(*at) <= self.s.lease)
    }

    /// Another node's word that `holder` holds `term` (a signal on the gossip topic).
    pub fn heard(&mut self, holder: NodeId, term: u64, now: Timestamp) {
        if term >= self.term && holder != self.me {
            self.heard_holder = Some((holder, term, now));
        }
    }

    fn grant_free(&self, candidate: &NodeId, now: Timestamp) -> bool {
        if now < self.quiet_until {
            return false;
        }
        match &self.granted {
            Some((to, until)) => to == candidate || now >= *until,
            None => true,
        }
    }

    fn step_down(&mut self, term: u64) {
        if term > self.term {
            self.term = term;
        }
        if !matches!(self.standing, Standing::Follower) {
            self.standing = Standing::Follower;
            self.round = None;
        }
        // A grant to itself only ever counts in its own round, which is gone now: release it
        // so that it does not block the next candidate.
        if self.granted.is_some_and(|(to, _)| to == self.me) {
            self.granted = None;
        }
    }

    fn ask_all(&mut self, now: Timestamp) -> Vec<(NodeId, Ballot)> {
        let id = self.next_round;
        self.next_round = self.next_round.wrapping_add(1);
        let mut grants = BTreeSet::new();
        // The node votes for itself when it may.
        if self.grant_free(&self.me, now) {
            self.granted = Some((self.me, now.plus(self.s.lease)));
            self.voted.insert(self.term, self.me);
            grants.insert(self.me);
        }
        self.round = Some(Round {
            id,
            term: self.term,
            sent: now,
            grants,
        });
        let ask = Ballot::Ask {
            term: self.term,
            candidate: self.me,
            round: id,
        };
        self.voters
            .iter()
            .filter(|v| **v != self.me)
            .map(|v| (*v, ask.clone()))
            .collect()
    }

    fn lease_end(&self, sent: Timestamp) -> Timestamp {
        let l = self.s.lease.as_secs_f64() * (1.0 - 2.0 * self.s.max_drift);
        sent.plus(Duration::from_secs_f64(l.max(0.0)))
    }

    fn count(&mut self) {
        let majority = self.majority();
        let Some(r) = &self.round else {
            return;
        };
        if r.grants.len() < majority || r.term != self.term {
            return;
        }
        let until = self.lease_end(r.sent);
        match self.standing {
            Standing::Candidate { term } if term == r.term => {
                self.standing = Standing::Holder {
                    term,
                    until,
                    since: r.sent,
                };
            }
            Standing::Holder { term, since, .. } if term == r.term => {
                self.standing = Standing::Holder { term, until, since };
            }
            _ => {}
        }
    }

    /// Advances time: the lease ends, renewals go out, elections start. Returns messages to
    /// send.
    pub fn tick(&mut self, now: Timestamp) -> Vec<(NodeId, Ballot)> {
        if !self.voters.contains(&self.me) {
            return Vec::new();
        }
        if let Standing::Holder { until, .. } = self.standing
            && now >= until
        {
            self.standing = Standing::Follower;
            self.round = None;
            self.next_election = now.plus(self.jitter());
        }
        match self.standing {
            Standing::Holder { .. } => {
                if now.since(self.last_renew) >= self.s.renew_every {
                    self.last_renew = now;
                    return self.ask_all(now);
                }
                Vec::new()
            }
            Standing::Candidate { .. } | Standing::Follower => {
                // Once the holder falls silent, each node waits its own jittered time from that
                // moment, so that they do not all stand at once and split the vote.
                let due = match self.heard_holder {
                    Some((_, _, at)) => self
                        .next_election
                        .max(at.plus(self.s.lease + self.jitter())),
                    None => self.next_election,
                };
                if now < due {
                    return Vec::new();
                }
                // A failed attempt retries only after every grant of this round has run out,
                // so that the next round does not meet voters still bound to a loser.
                self.next_election = now.plus(self.s.lease + self.jitter());
                let id = self.next_round;
                self.next_round = self.next_round.wrapping_add(1);
                let mut would = BTreeSet::new();
                if self.grant_free(&self.me, now) {
                    would.insert(self.me);
                }
                self.pre = Some((id, self.term.saturating_add(1), would));
                let ask = Ballot::PreAsk {
                    term: self.term.saturating_add(1),
                    candidate: self.me,
                    round: id,
                };
                let mut out: Vec<(NodeId, Ballot)> = self
                    .voters
                    .iter()
                    .filter(|v| **v != self.me)
                    .map(|v| (*v, ask.clone()))
                    .collect();
                out.extend(self.stand_if_backed(now));
                out
            }
        }
    }

    // Stands for election once a majority said it would grant.
    fn stand_if_backed(&mut self, now: Timestamp) -> Vec<(NodeId, Ballot)> {
        let majority = self.majority();
        let Some((_, term, would)) = &self.pre else {
            return Vec::new();
        };
        if would.len() < majority || *term != self.term.saturating_add(1) {
            return Vec::new();
        }
        self.pre = None;
        self.term = self.term.saturating_add(1);
        self.standing = Standing::Candidate { term: self.term };
        self.last_renew = now;
        let out = self.ask_all(now);
        self.count();
        out
    }

    /// Takes a ballot from `from`; returns the answer to send, if any.
    pub fn receive(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        now: Timestamp,
    ) -> Vec<(NodeId, Ballot)> {
        if !self.voters.contains(&from) {
            return Vec::new();
        }
        match ballot {
            Ballot::Ask {
                term,
                candidate,
                round,
            } => {
                if term > self.term {
                    self.step_down(term);
                }
                let granted = term == self.term
                    && candidate == from
                    && self.voted.get(&term).is_none_or(|v| *v == candidate)
                    && self.grant_free(&candidate, now);
                if granted {
                    self.voted.insert(term, candidate);
                    self.granted = Some((candidate, now.plus(self.s.lease)));
                    if candidate != self.me {
                        self.heard_holder = Some((candidate, term, now));
                    }
                }
                // Old votes are no longer needed.
                let keep = self.term.saturating_sub(4);
                self.voted.retain(|t, _| *t >= keep);
                vec![(
                    from,
                    Ballot::Answer {
                        term: self.term,
                        voter: self.me,
                        granted,
                        round,
                    },
                )]
            }
            Ballot::PreAsk {
                term,
                candidate,
                round,
            } => {
                let holder_alive = self
                    .heard_holder
                    .is_some_and(|(h, _, at)| h != candidate && now.since(at) <= self.s.lease)
                    || self.holding(now).is_some();
                let granted = candidate == from
                    && term > self.term
                    && !holder_alive
                    && self.grant_free(&candidate, now);
                vec![(
                    from,
                    Ballot::PreAnswer {
                        voter: self.me,
                        granted,
                        round,
                    },
                )]
            }
            Ballot::PreAnswer {
                voter,
                granted,
                round,
            } => {
                if voter != from || !granted {
                    return Vec::new();
                }
                match &mut self.pre {
                    Some((id, _, would)) if *id == round => {
                        would.insert(voter);
                    }
                    _ => return Vec::new(),
                }
                self.stand_if_backed(now)
            }
            Ballot::Answer {
                term,
                voter,
                granted,
                round,
            } => {
                if voter != from {
                    return Vec::new();
                }
                if term > self.term {
                    self.step_down(term);
                    self.next_election = now.plus(self.jitter());
                    return Vec::new();
                }
                if let Some(r) = &mut self.round
                    && r.id == round
                    && granted
                {
                    r.grants.insert(voter);
                }
                self.count();
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    fn ids(n: u8) -> Vec<NodeId> {
        (1..=n)
            .map(|i| SecretKey::from_seed([i + 40; 32]).id())
            .collect()
    }

    /// Delivers every message at once, `rounds` times, at time `now`.
    fn settle(es: &mut [Election], now: Timestamp, cut: &dyn Fn(usize, usize) -> bool) {
        let idx: BTreeMap<NodeId, usize> = es.iter().enumerate().map(|(i, e)| (e.me, i)).collect();
        let mut queue: Vec<(usize, NodeId, Ballot)> = Vec::new();
        for (i, e) in es.iter_mut().enumerate() {
            for (to, b) in e.tick(now) {
                queue.push((i, to, b));
            }
        }
        while let Some((from, to, b)) = queue.pop() {
            let t = idx[&to];
            if cut(from, t) {
                continue;
            }
            let me = es[from].me;
            for (back, ans) in es[t].receive(me, b, now) {
                queue.push((t, back, ans));
            }
        }
    }

    fn machines(n: u8) -> Vec<Election> {
        let v = ids(n);
        let set: BTreeSet<NodeId> = v.iter().copied().collect();
        v.iter()
            .map(|me| Election::new(*me, set.clone(), ElectionSettings::default(), Timestamp(0)))
            .collect()
    }

    #[test]
    fn three_voters_elect_exactly_one_holder_who_keeps_renewing() {
        let mut es = machines(3);
        let mut t = 0;
        let holders = |es: &[Election], t: u64| {
            es.iter()
                .filter(|e| e.holding(Timestamp(t)).is_some())
                .count()
        };
        while holders(&es, t) == 0 {
            t += 100;
            settle(&mut es, Timestamp(t), &|_, _| false);
            assert!(t < 10_000, "no holder elected");
        }
        for _ in 0..100 {
            t += 100;
            settle(&mut es, Timestamp(t), &|_, _| false);
            assert_eq!(holders(&es, t), 1);
        }
    }

    #[test]
    fn a_holder_cut_off_from_the_majority_stops_and_the_majority_elects_another() {
        let mut es = machines(3);
        let mut t = 0;
        let holder = loop {
            t += 100;
            settle(&mut es, Timestamp(t), &|_, _| false);
            if let Some(i) = es.iter().position(|e| e.holding(Timestamp(t)).is_some()) {
                break i;
            }
        };
        let cut = move |a: usize, b: usize| (a == holder) != (b == holder);
        let mut old_until = None;
        for _ in 0..60 {
            t += 100;
            settle(&mut es, Timestamp(t), &cut);
            let holding: Vec<usize> = (0..3)
                .filter(|i| es[*i].holding(Timestamp(t)).is_some())
                .collect();
            assert!(holding.len() <= 1, "two holders at {t}: {holding:?}");
            if holding == vec![holder] {
                old_until = Some(t);
            }
        }
        let new = (0..3)
            .find(|i| es[*i].holding(Timestamp(t)).is_some())
            .expect("a new holder");
        assert_ne!(new, holder);
        assert!(old_until.is_some_and(|u| u < t - 2_000));
        assert!(es[new].term() > 1);
        // Cut off, the old holder never got a pre-vote: its term did not run away.
        assert_eq!(es[holder].term(), 1);
        // Back in touch, it does not unseat the new holder.
        for _ in 0..60 {
            t += 100;
            settle(&mut es, Timestamp(t), &|_, _| false);
        }
        assert!(es[new].holding(Timestamp(t)).is_some());
    }
}
