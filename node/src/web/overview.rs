//! The overview pages: the release dashboard (`/`), the console grid (`/console`) and a builder's
//! history (`/builders/{builder}`), each gathered from the read model in a bounded number of
//! reads whatever the history: the status rows and the failing builders' streaks, each
//! builder's newest summaries, one builder's newest builds.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use buildmesh_protocol::record::BuildState;
use buildmesh_store::Listing;
use serde::Deserialize;

use super::{Served, colour, config, failing, html, nodes, pages, problem, read, verdict};
use crate::api::ApiState;
use crate::readmodel::{BuildView, Cell, ReadModel, StatusRow};

/// One stable builder that is red or orange on a branch.
pub(crate) struct Failing {
    pub builder: String,
    pub tier: Option<String>,
    pub now: BuildView,
    /// The oldest build of the streak of failing verdicts the current one ends.
    pub began: BuildView,
    /// Failing verdicts in the streak.
    pub length: usize,
}

/// One branch of the dashboard.
pub(crate) struct BranchHealth {
    pub branch: String,
    pub stable: usize,
    pub green: usize,
    pub failing: Vec<Failing>,
}

impl BranchHealth {
    /// A short token of what the branch's badge draws: it changes whenever the badge may.
    pub fn drawn(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.stable, self.green).hash(&mut h);
        for f in &self.failing {
            (&f.builder, f.now.result.as_str()).hash(&mut h);
        }
        format!("{:08x}", h.finish() as u32)
    }
}

// How far back a streak is followed.
const STREAK_DEPTH: usize = 200;

pub(super) async fn dashboard(State(s): State<ApiState>) -> Response {
    let cfg = config(&s).await;
    let nodes = nodes(&s).await;
    let served = Served::of(&s, &nodes);
    let stable: Vec<(String, Option<String>)> = cfg
        .iter()
        .flat_map(|c| c.builders.iter())
        .filter(|b| b.is_stable())
        .map(|b| {
            let tier = b.tags.iter().find(|t| t.starts_with("tier")).cloned();
            (b.name.clone(), tier)
        })
        .collect();
    let branches = match read(&s, move |v| {
        let rows = v.status()?;
        let mut by_branch: std::collections::BTreeMap<String, BranchHealth> = Default::default();
        for row in rows {
            let Some((_, tier)) = stable.iter().find(|(n, _)| *n == row.builder) else {
                continue;
            };
            let h = by_branch
                .entry(row.branch.clone())
                .or_insert_with(|| BranchHealth {
                    branch: row.branch.clone(),
                    stable: 0,
                    green: 0,
                    failing: vec![],
                });
            h.stable += 1;
            if row.result == BuildState::Success {
                h.green += 1;
            }
            if failing(row.result) {
                h.failing.push(streak(v, &row, tier.clone())?);
            }
        }
        // Tier by tier (`tier-1` first; builders without a tier last), then by name.
        let mut branches: Vec<BranchHealth> = by_branch.into_values().collect();
        branches.sort_by(|a, b| super::branch_order(&a.branch, &b.branch));
        for b in &mut branches {
            b.failing.sort_by(|x, y| {
                (x.tier.is_none(), &x.tier, &x.builder).cmp(&(
                    y.tier.is_none(),
                    &y.tier,
                    &y.builder,
                ))
            });
        }
        Ok(branches)
    })
    .await
    {
        Ok(b) => b,
        Err(r) => return r,
    };
    html(pages::dashboard(&served, &branches, &nodes))
}

// The failing streak a status row ends: its builds newest first, back to the first verdict
// that does not fail.
fn streak(
    v: &ReadModel,
    row: &StatusRow,
    tier: Option<String>,
) -> Result<Failing, buildmesh_store::StoreError> {
    let mut now: Option<BuildView> = None;
    let mut began: Option<BuildView> = None;
    let mut length = 0;
    for b in v
        .newest(Listing::Branch(&row.builder, &row.branch))
        .take(STREAK_DEPTH)
    {
        let b = b?;
        if !b.purpose.is_ordinary() || !verdict(b.result) {
            continue;
        }
        // The streak is of the current colour: a red that followed an orange began at the red.
        if !failing(b.result)
            || now
                .as_ref()
                .is_some_and(|n| colour(n.result) != colour(b.result))
        {
            break;
        }
        length += 1;
        if now.is_none() {
            now = Some(b.clone());
        }
        began = Some(b);
    }
    let now = now.unwrap_or_else(|| placeholder(row));
    Ok(Failing {
        builder: row.builder.clone(),
        tier,
        began: began.unwrap_or_else(|| now.clone()),
        now,
        length: length.max(1),
    })
}

// A status row whose builds are no longer listed (cannot happen while views are kept; shown
// rather than dropped).
fn placeholder(row: &StatusRow) -> BuildView {
    BuildView {
        id: row.build.clone().unwrap_or_default(),
        job: buildmesh_protocol::Hash::of(row.builder.as_bytes()),
        builder: row.builder.clone(),
        repo: String::new(),
        branch: row.branch.clone(),
        sha: row.sha.clone().unwrap_or_default(),
        worker: row.worker,
        attempt: 0,
        result: row.result,
        started: None,
        finished: row.finished,
        steps: vec![],
        announced: row.finished.unwrap_or(buildmesh_protocol::Timestamp(0)),
        attempts: vec![],
        purpose: Default::default(),
        confirmation: None,
    }
}

#[derive(Deserialize)]
pub(super) struct ConsoleQuery {
    branch: Option<String>,
    tag: Option<String>,
    commits: Option<usize>,
}

/// One row of the console: a commit and its builds by builder.
pub(crate) struct ConsoleRow {
    pub sha: String,
    pub branch: String,
    /// The commit's first line, when its announcement carried it.
    pub subject: Option<String>,
    pub announced: buildmesh_protocol::Timestamp,
    pub cells: std::collections::BTreeMap<String, Cell>,
}

pub(super) async fn console(State(s): State<ApiState>, Query(q): Query<ConsoleQuery>) -> Response {
    let cfg = config(&s).await;
    let nodes = nodes(&s).await;
    let served = Served::of(&s, &nodes);
    let branch = q.branch.filter(|b| !b.is_empty());
    let tag = q.tag.filter(|t| !t.is_empty());
    let commits = q.commits.unwrap_or(30).clamp(1, 200);
    let builders: Vec<&buildmesh_protocol::builders::Builder> = cfg
        .iter()
        .flat_map(|c| c.builders.iter())
        .filter(|b| tag.as_ref().is_none_or(|t| b.tags.contains(t)))
        .filter(|b| branch.as_ref().is_none_or(|br| b.wants_branch(br)))
        .collect();
    let names: Vec<String> = builders.iter().map(|b| b.name.clone()).collect();
    let repos: std::collections::HashMap<String, String> = builders
        .iter()
        .map(|b| (b.name.clone(), b.repo.clone()))
        .collect();
    let want_branch = branch.clone();
    // Each builder's newest builds (of the branch, if one is asked for): a builder builds a
    // commit once, so the `commits` newest commits' cells are among its `commits` newest
    // builds. Bounded by builders × commits, whatever the history.
    let rows = match read(&s, move |v| {
        let mut by_commit: std::collections::HashMap<(String, String), ConsoleRow> =
            Default::default();
        for name in &names {
            for c in v.cells(name, want_branch.as_deref(), commits)? {
                let row = by_commit
                    .entry((c.branch.clone(), c.sha.clone()))
                    .or_insert_with(|| ConsoleRow {
                        sha: c.sha.clone(),
                        branch: c.branch.clone(),
                        subject: None,
                        announced: c.announced,
                        cells: Default::default(),
                    });
                row.announced = row.announced.min(c.announced);
                row.cells.entry(c.builder.clone()).or_insert(c);
            }
        }
        let mut rows: Vec<ConsoleRow> = by_commit.into_values().collect();
        rows.sort_by(|a, b| {
            b.announced
                .cmp(&a.announced)
                .then_with(|| a.sha.cmp(&b.sha))
        });
        rows.truncate(commits);
        for row in &mut rows {
            let repo = row.cells.keys().find_map(|b| repos.get(b));
            if let Some(repo) = repo {
                row.subject = v.subject(repo, &row.branch, &row.sha)?;
            }
        }
        // Every branch any builder has a result on, for the filter.
        let seen: std::collections::BTreeSet<String> =
            v.status()?.into_iter().map(|r| r.branch).collect();
        Ok((rows, seen))
    })
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    let (rows, seen) = rows;
    let branches: std::collections::BTreeSet<String> = cfg
        .iter()
        .flat_map(|c| c.builders.iter())
        .flat_map(|b| {
            b.branches
                .iter()
                .filter(|p| !p.contains(['*', '?']))
                .cloned()
        })
        .chain(seen)
        .chain(branch.iter().cloned())
        .collect();
    let tags: std::collections::BTreeSet<String> = cfg
        .iter()
        .flat_map(|c| c.builders.iter())
        .flat_map(|b| b.tags.iter().cloned())
        .collect();
    html(pages::console(
        &served,
        &builders,
        &rows,
        &pages::Filters {
            branch: branch.as_deref(),
            tag: tag.as_deref(),
            branches: &branches,
            tags: &tags,
        },
    ))
}

pub(super) async fn builder(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    let cfg = config(&s).await;
    let nodes = nodes(&s).await;
    let served = Served::of(&s, &nodes);
    let Some(b) = cfg.as_ref().and_then(|c| c.find(&name)).cloned() else {
        return problem(
            StatusCode::NOT_FOUND,
            "No such builder",
            format!("no builder is named {name:?} in the configuration in force"),
        );
    };
    let name = b.name.clone();
    let history = match read(&s, move |v| {
        let mut by_branch: std::collections::BTreeMap<String, Vec<BuildView>> = Default::default();
        for view in v.newest(Listing::Builder(&name)).take(2_000) {
            let view = view?;
            if !view.purpose.is_ordinary() {
                continue;
            }
            let list = by_branch.entry(view.branch.clone()).or_default();
            if list.len() < 50 {
                list.push(view);
            }
        }
        Ok(by_branch)
    })
    .await
    {
        Ok(h) => h,
        Err(r) => return r,
    };
    html(pages::builder(&served, &b, &history))
}
