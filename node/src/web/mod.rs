//! The web console every node serves: server-rendered HTML pages over the read model, a little
//! plain JavaScript that follows `GET /events`, and SVG badges. Nothing is fetched from
//! elsewhere (no CDN, no fonts): a node on an air-gapped network serves all of it.
//!
//! - `/`: the release dashboard — per branch, the stable builders that are red or orange, where
//!   each failing streak began, its age and first failing step; the workers that are missing,
//!   quarantined or paused; one summary line.
//! - `/console?branch=&tag=`: commits × builders, one coloured cell per build.
//! - `/builders/{builder}`, `/builds/{id}` (with `/builds/{id}/raw?step=` for the raw log),
//!   `/workers`, `/notifier`.
//! - `/events`: Server-Sent Events ([`events`]).
//! - `/badge/{builder}/{branch}.svg`, `/badge/{branch}.svg`.
//!
//! `{builder}` is the builder's name percent-encoded or its safe id. Every string from a build,
//! a commit or a configuration is escaped by the templates (maud escapes whatever it is given
//! unless told otherwise; the one exception is the log, converted from ANSI colours to HTML by
//! a converter that escapes it first). Owners' mail addresses show only with
//! `show_owner_addresses = true` in the node's configuration.
//!
//! With JavaScript off every page is complete, and a reload shows the new state.

pub mod events;
mod pages;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use buildmesh_protocol::builders::BuilderConfig;
use buildmesh_protocol::record::BuildState;
use serde::Deserialize;

use crate::api::ApiState;
use crate::readmodel::{BuildView, Cell, Found, ReadModel, StatusRow};
use crate::replica::NodeView;
use buildmesh_store::Listing;

/// The stylesheet and the script, shipped inside the binary.
const STYLE: &str = include_str!("style.css");
const SCRIPT: &str = include_str!("app.js");

/// The read-only pages, `/events` and the badges: what a node serves on its `web` address (and
/// on its API address, beside the API).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/console", get(console))
        .route("/builders/{builder}", get(builder))
        .route("/builds/{id}", get(build))
        .route("/builds/{id}/raw", get(raw_log))
        .route("/workers", get(workers))
        .route("/notifier", get(notifier))
        .route("/events", get(events))
        .route("/badge/{a}", get(branch_badge))
        .route("/badge/{a}/{b}", get(builder_badge))
        .route("/static/style.css", get(style))
        .route("/static/app.js", get(script))
        .with_state(state)
}

/// How a build's state is drawn: the CSS class of its cell and its word.
pub(crate) fn colour(r: BuildState) -> &'static str {
    match r {
        BuildState::Success => "green",
        BuildState::Warnings | BuildState::Flaky => "orange",
        BuildState::Failure => "red",
        BuildState::Exception | BuildState::HostFault => "purple",
        BuildState::Running => "running",
        BuildState::Pending | BuildState::Unconfirmed => "pending",
        BuildState::Skipped | BuildState::Cancelled => "grey",
    }
}

/// Whether a verdict counts against a builder on the dashboard (red or orange).
fn failing(r: BuildState) -> bool {
    matches!(
        r,
        BuildState::Failure | BuildState::Warnings | BuildState::Flaky
    )
}

/// A verdict on the code (not pending, running, skipped, cancelled or a host's fault).
fn verdict(r: BuildState) -> bool {
    matches!(
        r,
        BuildState::Success
            | BuildState::Warnings
            | BuildState::Failure
            | BuildState::Flaky
            | BuildState::Exception
    )
}

/// Percent-encodes one URL path segment (a builder name, a branch).
pub(crate) fn seg(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

fn html(m: maud::Markup) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        m.into_string(),
    )
        .into_response()
}

fn problem(status: StatusCode, title: &str, message: String) -> Response {
    (status, html(pages::problem(title, &message))).into_response()
}

// Reads the read model off the async workers; a failure is an error page.
async fn read<T: Send + 'static>(
    s: &ApiState,
    f: impl FnOnce(&ReadModel) -> Result<T, buildmesh_store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    crate::api::read_views(s, f)
        .await
        .map_err(|(code, e)| problem(code, "Cannot read the builds", e))
}

async fn config(s: &ApiState) -> Option<BuilderConfig> {
    s.replica.config().await.ok().flatten()
}

async fn nodes(s: &ApiState) -> Vec<NodeView> {
    s.replica.nodes().await.unwrap_or_default()
}

/// What every page says about the node serving it.
pub(crate) struct Served {
    /// This node's name (from its admission) or id.
    pub node: String,
    /// Whether owners' mail addresses may be shown.
    pub addresses: bool,
    /// Node id → name, for the workers builds name.
    pub names: std::collections::BTreeMap<buildmesh_protocol::NodeId, String>,
}

impl Served {
    fn of(s: &ApiState, nodes: &[NodeView]) -> Self {
        let names: std::collections::BTreeMap<_, _> =
            nodes.iter().map(|n| (n.id, n.name.clone())).collect();
        Served {
            node: names.get(&s.me).cloned().unwrap_or_else(|| s.me.short()),
            addresses: s.show_owner_addresses,
            names,
        }
    }

    /// A worker's name, or the end of its id.
    pub fn name(&self, id: Option<&buildmesh_protocol::NodeId>) -> String {
        match id {
            Some(id) => self.names.get(id).cloned().unwrap_or_else(|| id.short()),
            None => String::new(),
        }
    }

    /// An owner as the configuration allows: the whole address, or the part before `@`.
    pub fn owner(&self, owner: Option<&str>) -> String {
        match owner {
            Some(o) if self.addresses => o.to_string(),
            Some(o) => o.split('@').next().unwrap_or("").to_string(),
            None => String::new(),
        }
    }
}

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

// How far back a streak is followed.
const STREAK_DEPTH: usize = 200;

async fn dashboard(State(s): State<ApiState>) -> Response {
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
        Ok(by_branch.into_values().collect::<Vec<_>>())
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
        if !b.purpose.is_build() || !verdict(b.result) {
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
struct ConsoleQuery {
    branch: Option<String>,
    tag: Option<String>,
    commits: Option<usize>,
}

/// One row of the console: a commit and its builds by builder.
pub(crate) struct ConsoleRow {
    pub sha: String,
    pub branch: String,
    pub announced: buildmesh_protocol::Timestamp,
    pub cells: std::collections::BTreeMap<String, Cell>,
}

async fn console(State(s): State<ApiState>, Query(q): Query<ConsoleQuery>) -> Response {
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
        Ok(rows)
    })
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    let branches: std::collections::BTreeSet<String> = cfg
        .iter()
        .flat_map(|c| c.builders.iter())
        .flat_map(|b| {
            b.branches
                .iter()
                .filter(|p| !p.contains(['*', '?']))
                .cloned()
        })
        .chain(rows.iter().map(|r| r.branch.clone()))
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

async fn builder(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
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
            if !view.purpose.is_build() {
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

#[derive(Deserialize)]
struct BuildQuery {
    /// Show this step's whole log instead of its tail.
    full: Option<String>,
}

/// A step's log as the build page shows it.
pub(crate) struct StepLog {
    pub step: String,
    /// Lines shown: (line number from 1, text).
    pub lines: Vec<(usize, String)>,
    pub total: usize,
    /// Why there is no log.
    pub missing: Option<String>,
}

// Lines of a log shown before "show all".
const TAIL_LINES: usize = 1_000;

async fn find(s: &ApiState, id: &str) -> Result<BuildView, Response> {
    let wanted = id.to_string();
    match read(s, move |v| v.find(&wanted)).await? {
        Found::One(b) => Ok(*b),
        Found::None => Err(problem(
            StatusCode::NOT_FOUND,
            "No such build",
            format!("no build {id}"),
        )),
        Found::Ambiguous => Err(problem(
            StatusCode::BAD_REQUEST,
            "Ambiguous build id",
            format!("{id} names more than one build"),
        )),
    }
}

async fn build(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<BuildQuery>,
) -> Response {
    let b = match find(&s, &id).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let cfg = config(&s).await;
    let nodes = nodes(&s).await;
    let served = Served::of(&s, &nodes);
    let mut logs = Vec::new();
    for st in &b.steps {
        let mut log = StepLog {
            step: st.name.clone(),
            lines: vec![],
            total: 0,
            missing: None,
        };
        match step_log(&s, &b, st).await {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                log.total = all.len();
                let from = if q.full.as_deref() == Some(st.name.as_str()) {
                    0
                } else {
                    all.len().saturating_sub(TAIL_LINES)
                };
                log.lines = all[from..]
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (from + i + 1, l.to_string()))
                    .collect();
            }
            Err(why) => log.missing = Some(why),
        }
        logs.push(log);
    }
    let step_rules: Vec<(String, Vec<regex::Regex>)> = cfg
        .as_ref()
        .and_then(|c| c.builder(&b.builder))
        .map(|bc| {
            bc.steps
                .iter()
                .map(|st| {
                    let pats = st
                        .warn
                        .iter()
                        .filter_map(|p| regex::Regex::new(p).ok())
                        .collect();
                    (st.name.clone(), pats)
                })
                .collect()
        })
        .unwrap_or_default();
    html(pages::build(&served, &b, &logs, &step_rules))
}

// A step's log as text, or why it cannot be shown.
async fn step_log(
    s: &ApiState,
    b: &BuildView,
    st: &buildmesh_protocol::record::StepResult,
) -> Result<String, String> {
    let Some(h) = st.log else {
        return Err("this step kept no log".into());
    };
    if let Ok(Some(until)) = s.store.kept_until(&h)
        && until < buildmesh_protocol::Timestamp::now()
    {
        return Err(format!(
            "this log expired on {} (the builder's keep_logs / keep_passing_logs)",
            humantime::format_rfc3339_seconds(std::time::SystemTime::from(until))
        ));
    }
    match s.replica.blob(h, b.worker).await {
        Ok(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Ok(None) => Err(format!("the log ({}) is on no reachable node", h.short())),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Deserialize)]
struct RawQuery {
    step: String,
}

async fn raw_log(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<RawQuery>,
) -> Response {
    let b = match find(&s, &id).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(st) = b.steps.iter().find(|st| st.name == q.step) else {
        return problem(
            StatusCode::NOT_FOUND,
            "No such step",
            format!("build {} has no step {:?}", b.id, q.step),
        );
    };
    match step_log(&s, &b, st).await {
        Ok(text) => (
            [
                (
                    header::CONTENT_TYPE,
                    "text/plain; charset=utf-8".to_string(),
                ),
                (
                    header::CONTENT_DISPOSITION,
                    format!(
                        "attachment; filename=\"{}-{}.log\"",
                        b.id,
                        buildmesh_protocol::builders::safe_id(&st.name)
                    ),
                ),
            ],
            text,
        )
            .into_response(),
        Err(why) => problem(StatusCode::NOT_FOUND, "No log", why),
    }
}

async fn workers(State(s): State<ApiState>) -> Response {
    let nodes = nodes(&s).await;
    let served = Served::of(&s, &nodes);
    html(pages::workers(&served, &nodes))
}

/// A mail the notifier sent, as the notifier page lists it.
pub(crate) struct Mail {
    pub time: buildmesh_protocol::Timestamp,
    pub author: buildmesh_protocol::NodeId,
    pub body: buildmesh_protocol::record::NotificationSent,
}

// Mails listed on the notifier page, and how far back each notifier's log is read for them.
const MAILS: usize = 50;
const MAIL_SCAN: u64 = 5_000;

async fn notifier(State(s): State<ApiState>) -> Response {
    let nodes = nodes(&s).await;
    let served = Served::of(&s, &nodes);
    let view = s.notifier.view().await.ok();
    let notifiers: Vec<buildmesh_protocol::NodeId> = nodes
        .iter()
        .filter(|n| n.roles.contains(&buildmesh_protocol::docs::Role::Notifier))
        .map(|n| n.id)
        .collect();
    let store = s.store.clone();
    let mails = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for id in notifiers {
            let Ok((head, _)) = store.head_of(&id) else {
                continue;
            };
            let from = head.saturating_sub(MAIL_SCAN).max(1);
            for bytes in store
                .records_in(&id, from..=head, MAIL_SCAN as usize + 1)
                .unwrap_or_default()
            {
                let Ok(r) = buildmesh_protocol::record::Record::from_trusted(&bytes) else {
                    continue;
                };
                if let Ok(buildmesh_protocol::record::Body::NotificationSent(n)) = r.body() {
                    out.push(Mail {
                        time: r.envelope.time,
                        author: r.envelope.author,
                        body: n,
                    });
                }
            }
        }
        out.sort_by_key(|m| std::cmp::Reverse(m.time));
        out.truncate(MAILS);
        out
    })
    .await
    .unwrap_or_default();
    html(pages::notifier(&served, view.as_ref(), &mails))
}

async fn events(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    s.events.stream(&headers)
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        SCRIPT,
    )
        .into_response()
}

// What a badge says: a verdict word and its colour.
fn badge_of(results: &[BuildState]) -> (&'static str, &'static str) {
    if results.is_empty() {
        return ("unknown", "#9f9f9f");
    }
    if results.contains(&BuildState::Failure) {
        ("failing", "#e05d44")
    } else if results
        .iter()
        .any(|r| matches!(r, BuildState::Exception | BuildState::HostFault))
    {
        ("exception", "#a259c4")
    } else if results
        .iter()
        .any(|r| matches!(r, BuildState::Warnings | BuildState::Flaky))
    {
        ("warnings", "#fe7d37")
    } else if results.iter().all(|r| *r == BuildState::Success) {
        ("passing", "#4c1")
    } else {
        ("building", "#9f9f9f")
    }
}

fn svg(label: &str, (message, fill): (&str, &str)) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        pages::badge(label, message, fill).into_string(),
    )
        .into_response()
}

async fn builder_badge(
    State(s): State<ApiState>,
    Path((builder, branch)): Path<(String, String)>,
) -> Response {
    let Some(branch) = branch.strip_suffix(".svg").map(str::to_string) else {
        return problem(
            StatusCode::NOT_FOUND,
            "Not found",
            "a badge ends in .svg".into(),
        );
    };
    let name = config(&s)
        .await
        .and_then(|c| c.find(&builder).map(|b| b.name.clone()))
        .unwrap_or(builder);
    let (n, br) = (name.clone(), branch.clone());
    let row = match read(&s, move |v| {
        Ok(v.status()?
            .into_iter()
            .find(|r| r.builder == n && r.branch == br))
    })
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    let results: Vec<BuildState> = row
        .map(|r| r.result)
        .filter(|r| verdict(*r))
        .into_iter()
        .collect();
    svg(&format!("{name} {branch}"), badge_of(&results))
}

async fn branch_badge(State(s): State<ApiState>, Path(branch): Path<String>) -> Response {
    let Some(branch) = branch.strip_suffix(".svg").map(str::to_string) else {
        return problem(
            StatusCode::NOT_FOUND,
            "Not found",
            "a badge ends in .svg".into(),
        );
    };
    let stable: std::collections::BTreeSet<String> = config(&s)
        .await
        .iter()
        .flat_map(|c| c.builders.iter())
        .filter(|b| b.is_stable())
        .map(|b| b.name.clone())
        .collect();
    let br = branch.clone();
    let results = match read(&s, move |v| {
        Ok(v.status()?
            .into_iter()
            .filter(|r| r.branch == br && stable.contains(&r.builder) && verdict(r.result))
            .map(|r| r.result)
            .collect::<Vec<_>>())
    })
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    svg(&branch, badge_of(&results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_addresses_show_only_where_the_configuration_allows() {
        let mut served = Served {
            node: "n".into(),
            addresses: false,
            names: Default::default(),
        };
        assert_eq!(served.owner(Some("ada@example.org")), "ada");
        assert_eq!(served.owner(None), "");
        served.addresses = true;
        assert_eq!(served.owner(Some("ada@example.org")), "ada@example.org");
    }

    #[test]
    fn builder_names_and_branches_are_one_path_segment_each() {
        assert_eq!(seg("AMD64 Debian root 3.x"), "AMD64%20Debian%20root%203.x");
        assert_eq!(seg("release/1.0"), "release%2F1.0");
        assert_eq!(seg("a+b<c>"), "a%2Bb%3Cc%3E");
    }

    #[test]
    fn a_badge_fails_on_any_red_and_passes_only_when_all_are_green() {
        use BuildState::*;
        assert_eq!(badge_of(&[]).0, "unknown");
        assert_eq!(badge_of(&[Success, Success]).0, "passing");
        assert_eq!(badge_of(&[Success, Warnings]).0, "warnings");
        assert_eq!(badge_of(&[Warnings, Failure, Exception]).0, "failing");
        let svg = pages::badge("3.x <b>", "passing", "#4c1").into_string();
        assert!(svg.contains("3.x &lt;b&gt;"), "{svg}");
    }
}
