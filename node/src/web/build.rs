//! One build's page (`/builds/{id}`) with its steps' logs, and the raw log
//! (`/builds/{id}/raw?step=`), fetched from whichever node holds it.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Served, config, html, nodes, pages, problem, read};
use crate::api::ApiState;
use crate::readmodel::{BuildView, Found};

#[derive(Deserialize)]
pub(super) struct BuildQuery {
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

pub(super) async fn build(
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
pub(super) struct RawQuery {
    step: String,
}

pub(super) async fn raw_log(
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
                // What a build printed is never to be taken for markup or a script.
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            ],
            text,
        )
            .into_response(),
        Err(why) => problem(StatusCode::NOT_FOUND, "No log", why),
    }
}
