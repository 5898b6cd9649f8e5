//! Which results are transitions that need a mail, per (builder, branch), in commit order.
//!
//! A pure function of the builds a node knows: every node that holds the same records finds
//! the same transitions, so whichever node holds the notifier lease sends the same mails, and
//! a transition is keyed (and its Message-ID derived) from what it is, never from who saw it.
//!
//! - The previous result skips non-verdicts: an exception, a cancelled or a skipped build
//!   between two reds is not a green, so red, exception, red is one mail, not two.
//! - A build is judged only once every older build of its builder and branch is settled, so a
//!   late result of an older commit cannot turn an already-mailed transition into a
//!   non-transition.
//! - Modes as buildbot's: `problem` (green or orange, then red: the default), `change` (also
//!   red, then green or orange), `failing` (every red). As in buildbot's `problem` mode, a
//!   builder's very first verdict is not a transition.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::keys::{Domain, Hash};
use crate::record::ResultCode;

/// When to mail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Green or orange, then red.
    #[default]
    Problem,
    /// Any change between red and not red.
    Change,
    /// Every red.
    Failing,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "problem" => Ok(Mode::Problem),
            "change" => Ok(Mode::Change),
            "failing" => Ok(Mode::Failing),
            other => Err(format!(
                "unknown mode `{other}` (expected problem, change or failing)"
            )),
        }
    }
}

/// What kind of transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// It turned red.
    Broken,
    /// It turned back from red.
    Fixed,
    /// It is red (mode `failing`).
    StillFailing,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Broken => "broken",
            Kind::Fixed => "fixed",
            Kind::StillFailing => "failing",
        })
    }
}

/// One build as the transition logic needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Build {
    /// Commit.
    pub sha: String,
    /// Commit order (first announcement time): higher is newer.
    pub order: u64,
    /// `Some(verdict)` once it has one; `None` while it is not settled.
    pub verdict: Option<ResultCode>,
    /// Whether it will not change any more (a verdict, skipped, or given up).
    pub settled: bool,
}

/// A transition to mail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Builder.
    pub builder: String,
    /// Branch.
    pub branch: String,
    /// The commit whose build turned.
    pub sha: String,
    /// What happened.
    pub kind: Kind,
    /// The verdict before.
    pub previous: Option<ResultCode>,
    /// The verdict now.
    pub result: ResultCode,
}

impl Transition {
    /// The transition's identity: builder, branch, commit and kind.
    pub fn key(&self) -> Hash {
        let bytes = crate::codec::encode(
            "transition",
            &(&self.builder, &self.branch, &self.sha, self.kind),
        )
        .expect("a transition key encodes");
        Hash::of_tagged(Domain::NotificationSent, &bytes)
    }

    /// The Message-ID every notifier uses for this transition, so that a resend after a crash
    /// is the same message to list software and mail clients.
    pub fn message_id(&self) -> String {
        format!("<{}@buildmesh.invalid>", self.key())
    }
}

fn is_red(r: ResultCode) -> bool {
    r == ResultCode::Failure
}

/// The transitions among `builds` of one builder and branch (in any order), under `mode`.
pub fn find(builder: &str, branch: &str, builds: &[Build], mode: Mode) -> Vec<Transition> {
    let mut sorted: Vec<&Build> = builds.iter().collect();
    sorted.sort_by(|a, b| a.order.cmp(&b.order).then(a.sha.cmp(&b.sha)));
    let mut previous: Option<ResultCode> = None;
    let mut out = Vec::new();
    for b in sorted {
        if !b.settled {
            // Nothing newer can be judged before this one settles.
            break;
        }
        let Some(v) = b.verdict.filter(|v| v.is_verdict()) else {
            continue;
        };
        let kind = match (mode, previous) {
            (Mode::Failing, _) if is_red(v) => Some(Kind::StillFailing),
            (_, Some(p)) if is_red(v) && !is_red(p) => Some(Kind::Broken),
            (Mode::Change, Some(p)) if !is_red(v) && is_red(p) => Some(Kind::Fixed),
            _ => None,
        };
        if let Some(kind) = kind {
            out.push(Transition {
                builder: builder.to_string(),
                branch: branch.to_string(),
                sha: b.sha.clone(),
                kind,
                previous,
                result: v,
            });
        }
        previous = Some(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResultCode::*;

    fn b(order: u64, v: Option<ResultCode>) -> Build {
        Build {
            sha: format!("{order:040x}"),
            order,
            verdict: v,
            settled: true,
        }
    }

    fn kinds(builds: &[Build], mode: Mode) -> Vec<(u64, Kind)> {
        find("x", "main", builds, mode)
            .into_iter()
            .map(|t| (u64::from_str_radix(&t.sha, 16).unwrap(), t.kind))
            .collect()
    }

    #[test]
    fn green_then_red_is_one_mail_and_red_red_none() {
        let builds = [
            b(1, Some(Success)),
            b(2, Some(Failure)),
            b(3, Some(Failure)),
        ];
        assert_eq!(kinds(&builds, Mode::Problem), vec![(2, Kind::Broken)]);
    }

    #[test]
    fn orange_then_red_is_a_mail() {
        let builds = [b(1, Some(Warnings)), b(2, Some(Flaky)), b(3, Some(Failure))];
        assert_eq!(kinds(&builds, Mode::Problem), vec![(3, Kind::Broken)]);
    }

    #[test]
    fn an_exception_between_two_reds_is_not_a_green() {
        let builds = [
            b(1, Some(Success)),
            b(2, Some(Failure)),
            b(3, Some(Exception)),
            b(4, None),
            b(5, Some(Failure)),
        ];
        let mut builds = builds.to_vec();
        builds[3].settled = true; // skipped
        assert_eq!(kinds(&builds, Mode::Problem), vec![(2, Kind::Broken)]);
    }

    #[test]
    fn modes_change_and_failing() {
        let builds = [
            b(1, Some(Success)),
            b(2, Some(Failure)),
            b(3, Some(Failure)),
            b(4, Some(Success)),
        ];
        assert_eq!(
            kinds(&builds, Mode::Change),
            vec![(2, Kind::Broken), (4, Kind::Fixed)]
        );
        assert_eq!(
            kinds(&builds, Mode::Failing),
            vec![(2, Kind::StillFailing), (3, Kind::StillFailing)]
        );
    }

    #[test]
    fn nothing_newer_is_judged_before_an_older_build_settles() {
        let mut builds = vec![b(1, Some(Success)), b(2, None), b(3, Some(Failure))];
        builds[1].settled = false;
        assert!(kinds(&builds, Mode::Problem).is_empty());
        builds[1] = b(2, Some(Failure));
        assert_eq!(kinds(&builds, Mode::Problem), vec![(2, Kind::Broken)]);
    }

    #[test]
    fn the_first_verdict_is_not_a_transition_and_keys_are_stable() {
        assert!(kinds(&[b(1, Some(Failure))], Mode::Problem).is_empty());
        let t = &find(
            "x",
            "main",
            &[b(1, Some(Success)), b(2, Some(Failure))],
            Mode::Problem,
        )[0];
        assert_eq!(t.key(), t.clone().key());
        assert!(t.message_id().starts_with('<') && t.message_id().ends_with('>'));
    }
}
