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

mod badge;
mod build;
pub mod events;
mod overview;
mod pages;

use badge::{branch_badge, builder_badge};
use build::{StepLog, build, raw_log};
use overview::{BranchHealth, ConsoleRow, builder, console, dashboard};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use buildmesh_protocol::builders::BuilderConfig;
use buildmesh_protocol::record::BuildState;

use crate::api::ApiState;
use crate::readmodel::ReadModel;
use crate::replica::NodeView;

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
        .layer(axum::middleware::from_fn(server_timing))
        .with_state(state)
}

// Says how long the node spent on a page (`Server-Timing: render;dur=<ms>`), for the browser's
// developer tools and the console benchmark.
async fn server_timing(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let t = std::time::Instant::now();
    let mut r = next.run(req).await;
    let value = format!("render;dur={:.2}", t.elapsed().as_secs_f64() * 1e3);
    if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
        r.headers_mut().insert("server-timing", v);
    }
    r
}

/// A build state's tone: green, orange, red, purple, running, pending or grey. Streaks are runs
/// of one tone (a flaky build continues a streak of warnings).
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

/// The CSS classes a build state is drawn with: its tone, and for the states that share a tone
/// with another (flaky, unconfirmed, a host's fault) a class of their own, so that no two
/// states look alike.
pub(crate) fn classes(r: BuildState) -> &'static str {
    match r {
        BuildState::Flaky => "orange flaky",
        BuildState::Unconfirmed => "pending unconfirmed",
        BuildState::HostFault => "purple hostfault",
        BuildState::Cancelled => "grey cancelled",
        other => colour(other),
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

/// The order branches are shown in: named branches (`main`) first, then versions newest first,
/// compared number by number (`3.x`, `3.14`, `3.9`).
pub(crate) fn branch_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn key(s: &str) -> (bool, Vec<(u64, &str)>) {
        let version = s.starts_with(|c: char| c.is_ascii_digit());
        let parts = s
            .split(['.', '-', '/'])
            .map(|p| match p.parse::<u64>() {
                Ok(n) => (n, ""),
                // `3.x` names the newest line: after every number.
                Err(_) => (u64::MAX, p),
            })
            .collect();
        (version, parts)
    }
    let (ka, kb) = (key(a), key(b));
    match (ka.0, kb.0) {
        (true, true) => kb.1.cmp(&ka.1),
        (false, false) => a.cmp(b),
        (va, vb) => va.cmp(&vb),
    }
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
    crate::api::nodes_with_health(s).await.unwrap_or_default()
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
    fn branches_show_named_ones_first_then_versions_newest_first() {
        let mut b = vec!["3.9", "3.10", "main", "3.14", "2.7", "release/1.0", "3.x"];
        b.sort_by(|x, y| branch_order(x, y));
        assert_eq!(
            b,
            ["main", "release/1.0", "3.x", "3.14", "3.10", "3.9", "2.7"]
        );
    }

    #[test]
    fn builder_names_and_branches_are_one_path_segment_each() {
        assert_eq!(seg("AMD64 Debian root 3.x"), "AMD64%20Debian%20root%203.x");
        assert_eq!(seg("release/1.0"), "release%2F1.0");
        assert_eq!(seg("a+b<c>"), "a%2Bb%3Cc%3E");
    }
}
