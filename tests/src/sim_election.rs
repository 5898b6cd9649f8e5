//! The notifier election and its mail under the deterministic simulator: voters with clock
//! offsets and drifting clock rates, lossy delayed messages, partitions, crashes and restarts,
//! SMTP outages. Each voter runs the node's own [`Election`] and [`Outbox`] (dedup, the new
//! holder's sync round and settle, backoff). Checked after every event: at most one node holds
//! the lease (in true time), no mail is sent for a transition whose record a connected node has
//! long held; at the end, once every node is back and connected, every transition has been
//! mailed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use buildmesh_protocol::election::{Ballot, Election, ElectionSettings};
use buildmesh_protocol::outbox::{Alert, Outbox};
use buildmesh_protocol::record::ResultCode;
use buildmesh_protocol::transitions::{Kind, Transition};
use buildmesh_protocol::{Hash, NodeId, SecretKey, Timestamp};

use crate::sim::Rng;

const TICK_MS: u64 = 50;
const AE_MS: u64 = 1_000;
const ACTIVE_MS: u64 = 60_000;
const QUIET_MS: u64 = 30_000;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Tick(usize),
    Deliver(usize, usize, Ballot),
    Record(usize, usize),
    AntiEntropy(usize),
    // A new holder's sync round (node, term) has come back.
    SyncRound(usize, u64),
    Transition(usize),
    SmtpDown(bool),
    Crash(usize),
    Restart(usize),
    Partition(Vec<usize>),
    Heal,
}

struct Voter {
    id: NodeId,
    up: bool,
    offset: i64,
    rate: f64,
    machine: Election,
    outbox: Outbox,
    // The holder term whose sync round was started.
    round: Option<u64>,
    // transition -> when this node learnt it was mailed (its store: kept across a crash)
    sent: BTreeMap<usize, u64>,
}

/// One seed's world. `drift` is the largest clock-rate error drawn (the machines assume 1 %).
pub struct ElectionWorld {
    seed: u64,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    voters: Vec<Voter>,
    loss: f64,
    max_delay: u64,
    side: Option<BTreeSet<usize>>,
    known: Vec<u64>,
    // Transition k's alert and its key.
    alerts: Vec<(Alert, Hash)>,
    keys: BTreeMap<Hash, usize>,
    smtp_down: bool,
    refused: usize,
    mails: BTreeMap<usize, Vec<(usize, u64)>>,
    settings: ElectionSettings,
    healed: bool,
    link_since: BTreeMap<(usize, usize), u64>,
}

impl std::fmt::Debug for ElectionWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ElectionWorld(seed {})", self.seed)
    }
}

/// Figures of one run.
#[derive(Debug, Default, Clone)]
pub struct ElectionOutcome {
    /// Transitions mailed.
    pub mailed: usize,
    /// Highest term reached.
    pub max_term: u64,
    /// Mails the SMTP server refused (each tried again later).
    pub refused: usize,
}

impl ElectionWorld {
    /// The world of `seed`, with clock rates drawn within ±`drift`.
    pub fn new(seed: u64, drift: f64) -> Self {
        let mut rng = Rng::new(seed ^ 0x5eed);
        let n = if rng.chance(0.5) { 3 } else { 5 };
        let settings = ElectionSettings::default();
        let ids: Vec<NodeId> = (0..n)
            .map(|i| {
                let mut s = [7u8; 32];
                s[..8].copy_from_slice(&seed.to_be_bytes());
                s[8] = i as u8;
                SecretKey::from_seed(s).id()
            })
            .collect();
        let set: BTreeSet<NodeId> = ids.iter().copied().collect();
        let voters = ids
            .iter()
            .map(|id| {
                let offset = rng.range(0, 10_000) as i64 - 5_000;
                let rate = 1.0 + (rng.range(0, 2000) as f64 / 1000.0 - 1.0) * drift;
                let local = Timestamp((1_000_000 + offset) as u64);
                Voter {
                    id: *id,
                    up: true,
                    offset,
                    rate,
                    machine: Election::new(*id, set.clone(), settings.clone(), local),
                    outbox: Outbox::new(),
                    round: None,
                    sent: BTreeMap::new(),
                }
            })
            .collect();
        let mut w = ElectionWorld {
            seed,
            loss: rng.range(0, 15) as f64 / 100.0,
            max_delay: rng.range(1, 60),
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            voters,
            side: None,
            known: Vec::new(),
            alerts: Vec::new(),
            keys: BTreeMap::new(),
            smtp_down: false,
            refused: 0,
            mails: BTreeMap::new(),
            settings,
            healed: false,
            link_since: BTreeMap::new(),
        };
        for a in 0..n {
            for b in a + 1..n {
                w.link_since.insert((a, b), 0);
            }
        }
        for i in 0..n {
            let t = w.rng.range(0, TICK_MS);
            w.at(t, Ev::Tick(i));
            let t = w.rng.range(0, AE_MS);
            w.at(t, Ev::AntiEntropy(i));
        }
        for k in 0..w.rng.range(3, 12) as usize {
            let t = w.rng.range(1_000, ACTIVE_MS - 5_000);
            w.at(t, Ev::Transition(k));
        }
        for _ in 0..w.rng.range(0, 3) {
            let v = w.rng.range(0, n as u64 - 1) as usize;
            let t = w.rng.range(2_000, ACTIVE_MS - 10_000);
            let back = t + w.rng.range(500, 10_000);
            w.at(t, Ev::Crash(v));
            w.at(back, Ev::Restart(v));
        }
        for _ in 0..w.rng.range(0, 3) {
            let members: Vec<usize> = (0..n).filter(|_| w.rng.chance(0.5)).collect();
            let t = w.rng.range(2_000, ACTIVE_MS - 10_000);
            let heal = t + w.rng.range(1_000, 8_000);
            w.at(t, Ev::Partition(members));
            w.at(heal, Ev::Heal);
        }
        // SMTP outages, over before the last ten seconds of activity so that the backoff
        // (doubling from 1 s) retries well within the quiet time.
        for _ in 0..w.rng.range(0, 2) {
            let t = w.rng.range(2_000, ACTIVE_MS - 20_000);
            let back = t + w.rng.range(1_000, 10_000);
            w.at(t, Ev::SmtpDown(true));
            w.at(back, Ev::SmtpDown(false));
        }
        w
    }

    // Transition k as the notifier mails it.
    fn alert(k: usize) -> Alert {
        Alert::Transition(Transition {
            builder: format!("builder {k}"),
            branch: "main".into(),
            sha: format!("{k:040x}"),
            kind: Kind::Broken,
            previous: Some(ResultCode::Success),
            result: ResultCode::Failure,
        })
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn local(&self, v: usize) -> Timestamp {
        let x = &self.voters[v];
        Timestamp((1_000_000 + x.offset + (self.now as f64 * x.rate) as i64) as u64)
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.voters[a].up
            && self.voters[b].up
            && self
                .side
                .as_ref()
                .is_none_or(|s| s.contains(&a) == s.contains(&b))
    }

    fn refresh_links(&mut self) {
        for a in 0..self.voters.len() {
            for b in a + 1..self.voters.len() {
                let c = self.connected(a, b);
                match (c, self.link_since.contains_key(&(a, b))) {
                    (true, false) => {
                        self.link_since.insert((a, b), self.now);
                    }
                    (false, true) => {
                        self.link_since.remove(&(a, b));
                    }
                    _ => {}
                }
            }
        }
    }

    fn send(&mut self, from: usize, out: Vec<(NodeId, Ballot)>) {
        for (to, ballot) in out {
            let Some(t) = self.voters.iter().position(|v| v.id == to) else {
                continue;
            };
            if self.connected(from, t) && !self.rng.chance(self.loss) {
                let d = self.rng.range(1, self.max_delay);
                self.at(self.now + d, Ev::Deliver(from, t, ballot));
            }
        }
    }

    fn learn_sent(&mut self, v: usize, k: usize) {
        let now = self.now;
        self.voters[v].sent.entry(k).or_insert(now);
        self.voters[v].outbox.recorded(self.alerts[k].1);
    }

    // Node v learns every mail its connected peers hold a record of (a round of anti-entropy).
    fn pull_sent(&mut self, v: usize) {
        let peers: Vec<usize> = (0..self.voters.len())
            .filter(|p| *p != v && self.connected(v, *p))
            .collect();
        for p in peers {
            let theirs: Vec<usize> = self.voters[p].sent.keys().copied().collect();
            for k in theirs {
                self.learn_sent(v, k);
            }
        }
    }

    fn mail_due(&mut self, v: usize) -> Result<(), String> {
        let local = self.local(v);
        let Some(term) = self.voters[v].machine.holding(local) else {
            return Ok(());
        };
        // The holder finds every known transition (the node: from the builds it holds).
        for (alert, key) in &self.alerts {
            if !self.voters[v].outbox.knows(key) {
                self.voters[v].outbox.queue(alert.clone(), local);
            }
        }
        // A new holder's sync round: pulls what its connected peers hold, unless the round is
        // lost (the outbox then goes on after its settle time).
        if self.voters[v].outbox.needs_sync(term) && self.voters[v].round != Some(term) {
            self.voters[v].round = Some(term);
            if !self.rng.chance(self.loss) {
                let d = 2 * self.rng.range(1, self.max_delay);
                self.at(self.now + d, Ev::SyncRound(v, term));
            }
        }
        let held_for = self.voters[v].machine.held_for(local);
        for alert in self.voters[v].outbox.due(local, Some((term, held_for))) {
            let key = alert.key();
            let k = self.keys[&key];
            if self.smtp_down {
                self.refused += 1;
                self.voters[v].outbox.failed(key, local);
                continue;
            }
            // Fail if a node connected all along has long held this transition's record.
            let window = 2 * AE_MS + self.max_delay + TICK_MS;
            for (x, other) in self.voters.iter().enumerate() {
                let since = self.link_since.get(&(v.min(x), v.max(x))).copied();
                if x != v
                    && since.is_some_and(|s| self.now > s + window)
                    && other.sent.get(&k).is_some_and(|t| self.now > t + window)
                {
                    return Err(format!(
                        "node {v} mails transition {k} again although node {x} has held its record since {} ms",
                        other.sent[&k]
                    ));
                }
            }
            self.mails.entry(k).or_default().push((v, self.now));
            self.voters[v].outbox.sent(key);
            self.learn_sent(v, k);
            for to in 0..self.voters.len() {
                if to != v && self.connected(v, to) && !self.rng.chance(self.loss) {
                    let d = self.rng.range(1, self.max_delay);
                    self.at(self.now + d, Ev::Record(to, k));
                }
            }
        }
        Ok(())
    }

    fn handle(&mut self, ev: Ev) -> Result<(), String> {
        match ev {
            Ev::Tick(v) => {
                if self.voters[v].up {
                    let local = self.local(v);
                    let out = self.voters[v].machine.tick(local);
                    self.send(v, out);
                    self.mail_due(v)?;
                }
                self.at(self.now + TICK_MS, Ev::Tick(v));
            }
            Ev::Deliver(from, to, ballot) => {
                if self.connected(from, to) {
                    let local = self.local(to);
                    let sender = self.voters[from].id;
                    let out = self.voters[to].machine.receive(sender, ballot, local);
                    self.send(to, out);
                }
            }
            Ev::Record(to, k) => {
                if self.voters[to].up {
                    self.learn_sent(to, k);
                }
            }
            Ev::AntiEntropy(v) => {
                if self.voters[v].up {
                    self.pull_sent(v);
                }
                self.at(self.now + AE_MS, Ev::AntiEntropy(v));
            }
            Ev::SyncRound(v, term) => {
                if self.voters[v].up && self.voters[v].round == Some(term) {
                    self.pull_sent(v);
                    self.voters[v].outbox.synced(term);
                }
            }
            Ev::Transition(_) => {
                let k = self.known.len();
                self.known.push(self.now);
                let alert = Self::alert(k);
                let key = alert.key();
                self.keys.insert(key, k);
                self.alerts.push((alert, key));
            }
            Ev::SmtpDown(down) => self.smtp_down = down,
            Ev::Crash(v) => {
                self.voters[v].up = false;
                self.refresh_links();
            }
            Ev::Restart(v) => {
                if !self.voters[v].up {
                    let local = self.local(v);
                    let set: BTreeSet<NodeId> = self.voters.iter().map(|x| x.id).collect();
                    let id = self.voters[v].id;
                    self.voters[v].machine = Election::new(id, set, self.settings.clone(), local);
                    // Memory is lost; the store is not: the node learns its records again.
                    self.voters[v].outbox = Outbox::new();
                    self.voters[v].round = None;
                    for k in self.voters[v].sent.keys().copied().collect::<Vec<_>>() {
                        self.voters[v].outbox.recorded(self.alerts[k].1);
                    }
                    self.voters[v].up = true;
                    self.refresh_links();
                }
            }
            Ev::Partition(m) => {
                self.side = Some(m.into_iter().collect());
                self.refresh_links();
            }
            Ev::Heal => {
                self.side = None;
                self.refresh_links();
            }
        }
        Ok(())
    }

    fn holders(&self) -> Vec<usize> {
        (0..self.voters.len())
            .filter(|v| {
                self.voters[*v].up && self.voters[*v].machine.holding(self.local(*v)).is_some()
            })
            .collect()
    }

    /// Runs the seed; an `Err` names the seed and what broke.
    pub fn run(mut self) -> Result<ElectionOutcome, String> {
        let fail = |w: &ElectionWorld, what: String| {
            format!("election seed {} at {} ms: {what}", w.seed, w.now)
        };
        while let Some(Reverse((t, _, ev))) = self.queue.pop() {
            self.now = t;
            if t > ACTIVE_MS + QUIET_MS {
                break;
            }
            if t >= ACTIVE_MS && !self.healed {
                self.healed = true;
                self.side = None;
                self.loss = 0.0;
                self.refresh_links();
                for v in 0..self.voters.len() {
                    if !self.voters[v].up {
                        self.handle(Ev::Restart(v)).map_err(|e| fail(&self, e))?;
                    }
                }
            }
            self.handle(ev).map_err(|e| fail(&self, e))?;
            let h = self.holders();
            if h.len() > 1 {
                return Err(fail(&self, format!("two holders at once: nodes {h:?}")));
            }
        }
        for k in 0..self.known.len() {
            if !self.mails.contains_key(&k) {
                let states: Vec<String> = (0..self.voters.len())
                    .map(|v| {
                        format!(
                            "{v}: up {} term {} {:?} known {}",
                            self.voters[v].up,
                            self.voters[v].machine.term(),
                            self.voters[v].machine.standing(),
                            self.voters[v].sent.len()
                        )
                    })
                    .collect();
                return Err(fail(
                    &self,
                    format!("transition {k} never mailed although every node is back; {states:?}"),
                ));
            }
        }
        Ok(ElectionOutcome {
            mailed: self.mails.len(),
            max_term: self
                .voters
                .iter()
                .map(|v| v.machine.term())
                .max()
                .unwrap_or(0),
            refused: self.refused,
        })
    }
}

/// A crafted run beyond the drift bound: the holder's clock runs at `rate` of real speed, so its lease
/// outlasts the grants behind it. Returns whether two holders overlapped.
pub fn beyond_the_drift_bound(rate: f64) -> bool {
    let mut w = ElectionWorld::new(1, 0.0);
    w.loss = 0.0;
    w.queue
        .retain(|Reverse((_, _, ev))| matches!(ev, Ev::Tick(_) | Ev::AntiEntropy(_)));
    // Run until someone holds, then slow that holder's clock and cut it off.
    let mut holder = None;
    while let Some(Reverse((t, _, ev))) = w.queue.pop() {
        w.now = t;
        if w.handle(ev).is_err() {
            return true;
        }
        if holder.is_none()
            && let Some(&h) = w.holders().first()
        {
            holder = Some(h);
            let before = w.local(h);
            w.voters[h].rate = rate;
            // Keep its local clock continuous at the switch.
            let after = w.local(h);
            w.voters[h].offset += before.0 as i64 - after.0 as i64;
            w.side = Some([h].into_iter().collect());
        }
        if w.holders().len() > 1 {
            return true;
        }
        if std::env::var_os("SIM_TRACE").is_some() && t / 500 != (t.saturating_sub(TICK_MS)) / 500 {
            let st: Vec<String> = (0..w.voters.len())
                .map(|v| format!("{:?}", w.voters[v].machine.standing()))
                .collect();
            println!("{t}: holder {holder:?} {st:?}");
        }
        if t > 30_000 {
            return false;
        }
    }
    false
}
