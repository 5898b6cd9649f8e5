//! The read-only HTTP JSON API every node serves (loopback by default), plus the write that
//! publishes a maintainer-signed document.
//!
//! - `GET /api/v1/nodes`: every admitted node (id, name, labels, roles, live, last_heard,
//!   revoked, flagged, misbehaving …).
//! - `GET /api/v1/health`: this node's id, peers, records, whether it caught up.
//! - `GET /api/v1/vv`: the version vector {author id -> highest contiguous seq}.
//! - `GET /api/v1/records?author=ID`: an author's records as JSON (hidden when the author's key
//!   was revoked as compromised).
//! - `POST /api/v1/publish`: a signed document (the file's bytes) to publish in this node's log.
//! - `GET /api/v1/status`: the latest result per builder and branch.
//! - `GET /api/v1/builds?commit=SHA&builder=NAME`: builds (one per job, its current attempt);
//!   `NAME` as written (percent-encoded) or the builder's safe id.
//! - `GET /api/v1/builds/{id}/log?step=NAME`: a build's step log, fetched from whoever holds it.
//! - `POST /api/v1/submit`: a commit announcement signed by a key with the announcer or
//!   maintainer role; the signed request travels inside the record it causes.
//! - `POST /api/v1/rebuild`: build a commit again on one builder or all of its builders, signed
//!   by a key with the announcer or maintainer role; answers the new builds' ids.
//! - `POST /api/v1/cancel`: stop a pending or running build, signed by a maintainer or by the key
//!   whose request started it.
//! - `POST /api/v1/bisect`: search for the first bad commit between a good and a bad one on a
//!   builder, signed by a key with the announcer or maintainer role; answers the search's id.
//! - `GET /api/v1/bisections`, `GET /api/v1/bisections/{id}`: culprit searches and their
//!   probes, as this node replays them.
//! - `POST /api/v1/webhook`: GitHub, Gitea or Forgejo push webhooks (HMAC checked).
//! - `GET /api/v1/notifier`: the notifier holder, term and lease as this node sees them.
//! - `GET /api/v1/notifications`: every mail sent (the `NotificationSent` records of notifiers),
//!   as [`Notification`] rows.
//! - `GET /metrics`: Prometheus text.
//!
//! One handler per endpoint, each short; the module is the API's one page, hence its length.
//! Status, builds and logs read the read model ([`crate::readmodel`]): one status row per
//! builder and branch, and builds listed newest first by builder, branch or commit.
//!
//! One module because every route is the same small job — parse the query, ask one service
//! (replica, claimer, notifier, bisector, store), shape the answer — over one shared state;
//! its length is the number of routes, each a few lines, not logic: the logic lives in the
//! services and the read model.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use buildmesh_protocol::docs::SignedDoc;
use buildmesh_protocol::record::CommitSeen;
use buildmesh_protocol::record::Purpose;
use buildmesh_protocol::{NodeId, Timestamp};
use buildmesh_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::claimer::{BuildView, ClaimerClient};
use crate::readmodel::{Found, Kind, ReadModel};
use crate::replica::ReplicaClient;
use buildmesh_store::Listing;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub(crate) replica: ReplicaClient,
    pub(crate) claimer: ClaimerClient,
    pub(crate) notifier: crate::notifier::NotifierClient,
    pub(crate) store: Arc<Store>,
    pub(crate) me: NodeId,
    pub(crate) webhook_secret: Option<Arc<Vec<u8>>>,
    pub(crate) janitor: Arc<crate::janitor::JanitorStats>,
    pub(crate) events: Arc<crate::web::events::EventHub>,
    pub(crate) show_owner_addresses: bool,
    pub(crate) bisector: crate::bisector::BisectorClient,
}

/// The routes: the API and, beside it, the web console ([`crate::web::router`]).
pub fn router(state: ApiState) -> Router {
    let console = crate::web::router(state.clone());
    Router::new()
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/health", get(health))
        .route("/api/v1/vv", get(vv))
        .route("/api/v1/records", get(records))
        .route("/api/v1/publish", post(publish))
        .route("/api/v1/status", get(status))
        .route("/api/v1/builds", get(builds))
        .route("/api/v1/builds/{id}/log", get(log))
        .route("/api/v1/submit", post(submit))
        .route("/api/v1/rebuild", post(rebuild))
        .route("/api/v1/cancel", post(cancel))
        .route("/api/v1/bisect", post(bisect))
        .route("/api/v1/bisections", get(bisections))
        .route("/api/v1/bisections/{id}", get(bisection))
        .route("/api/v1/webhook", post(webhook))
        .route("/api/v1/notifier", get(notifier))
        .route("/api/v1/notifications", get(notifications))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(console)
}

fn error(status: StatusCode, message: impl ToString) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

/// Every node the replica knows, with its health and quarantine from the claimer (which holds
/// the jobs health is derived from): what `/api/v1/nodes` and the console's pages show.
pub(crate) async fn nodes_with_health(
    s: &ApiState,
) -> Result<Vec<crate::replica::NodeView>, crate::NodeError> {
    let mut nodes = s.replica.nodes().await?;
    let mut health = s.claimer.health().await.unwrap_or_default();
    for n in &mut nodes {
        n.health = health.remove(&n.id);
    }
    Ok(nodes)
}

async fn nodes(State(s): State<ApiState>) -> Response {
    match nodes_with_health(&s).await {
        Ok(nodes) => Json(nodes).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn health(State(s): State<ApiState>) -> Response {
    let config_version = s.replica.config().await.ok().flatten().map(|c| c.version);
    match s.replica.metrics().await {
        Ok(m) => Json(json!({
            "id": s.me,
            "records": m.records,
            "peers": m.peers_admitted,
            "caught_up": m.caught_up,
            "config_version": config_version,
        }))
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn vv(State(s): State<ApiState>) -> Response {
    match s.store.version_vector() {
        Ok(v) => {
            let map: BTreeMap<String, u64> = v.0.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            Json(map).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
struct RecordsQuery {
    author: String,
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn records(State(s): State<ApiState>, Query(q): Query<RecordsQuery>) -> Response {
    let author: NodeId = match q.author.parse() {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let nodes = match s.replica.nodes().await {
        Ok(n) => n,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    if nodes
        .iter()
        .any(|n| n.id == author && n.revocation_reason.as_deref() == Some("compromised"))
    {
        return Json(json!([])).into_response();
    }
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let raw = match s.store.records_after(&author, q.after, limit) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let mut out = Vec::new();
    for bytes in raw {
        match buildmesh_protocol::record::Record::from_trusted(&bytes) {
            Ok(r) => {
                let body = r.body().ok().and_then(|b| serde_json::to_value(b).ok());
                out.push(json!({
                    "author": r.envelope.author,
                    "seq": r.envelope.seq,
                    "kind": r.envelope.kind,
                    "time": r.envelope.time,
                    "hash": r.hash,
                    "body": body.map(|b| b["body"].clone()),
                }));
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }
    Json(out).into_response()
}

async fn publish(State(s): State<ApiState>, body: Bytes) -> Response {
    let doc = match SignedDoc::from_bytes(&body) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let kind = doc.kind;
    let id = doc.id();
    match s.replica.publish_doc(doc).await {
        Ok(record) => Json(Published {
            id,
            published: kind,
            record: RecordAt::from(&record),
        })
        .into_response(),
        Err(e @ crate::NodeError::Document(_)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    let m = match s.replica.metrics().await {
        Ok(m) => m,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let mut text = String::new();
    let mut gauge = |name: &str, help: &str, v: u64| {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
        ));
    };
    gauge("buildmesh_records", "Records held in logs.", m.records);
    gauge(
        "buildmesh_records_pending",
        "Records held back for a gap.",
        m.pending,
    );
    gauge(
        "buildmesh_peers_connected",
        "Peers connected.",
        m.peers_connected,
    );
    gauge(
        "buildmesh_peers_admitted",
        "Peers that showed a valid admission.",
        m.peers_admitted,
    );
    gauge(
        "buildmesh_caught_up",
        "1 once the node recovered its own log.",
        m.caught_up as u64,
    );
    gauge(
        "buildmesh_own_records_unacknowledged",
        "Records of this node's own log that no peer is known to hold yet.",
        m.unacknowledged,
    );
    gauge(
        "buildmesh_records_gossiped_total",
        "Records accepted from gossip.",
        m.gossip_records,
    );
    gauge(
        "buildmesh_records_synced_total",
        "Records accepted from sync.",
        m.synced_records,
    );
    gauge(
        "buildmesh_records_authored_total",
        "Records authored here.",
        m.authored,
    );
    gauge(
        "buildmesh_syncs_total",
        "Anti-entropy rounds finished.",
        m.syncs,
    );
    let stats = s.claimer.stats();
    use std::sync::atomic::Ordering::Relaxed;
    gauge(
        "buildmesh_confirmations_total",
        "Confirmation builds opened for reds.",
        stats.confirmations.load(Relaxed),
    );
    gauge(
        "buildmesh_quarantines_total",
        "Workers that entered quarantine.",
        stats.quarantines.load(Relaxed),
    );
    gauge(
        "buildmesh_jobs_held",
        "Jobs the claimer holds in memory.",
        stats.jobs_held.load(Relaxed),
    );
    gauge(
        "buildmesh_claimer_ready",
        "1 once the claimer has read the history at start (its views are in order).",
        stats.ready.load(Relaxed),
    );
    gauge(
        "buildmesh_claimer_start_records",
        "Records the claimer learnt at start: all of them without its checkpoint, only the newer ones with it.",
        stats.start_records.load(Relaxed),
    );
    gauge(
        "buildmesh_claimer_start_milliseconds",
        "How long the claimer's start took.",
        stats.start_ms.load(Relaxed),
    );
    gauge(
        "buildmesh_logs_expired_total",
        "Step logs the janitor deleted (retention or disk budget).",
        s.janitor.logs_expired.load(Relaxed),
    );
    gauge(
        "buildmesh_log_bytes_expired_total",
        "Stored bytes of the step logs the janitor deleted.",
        s.janitor.bytes_expired.load(Relaxed),
    );
    gauge(
        "buildmesh_logs_over_budget_total",
        "Step logs deleted before their date to stay under the disk budget.",
        s.janitor.logs_over_budget.load(Relaxed),
    );
    let health = s.claimer.health().await.unwrap_or_default();
    gauge(
        "buildmesh_workers_quarantined",
        "Workers quarantined now.",
        health.values().filter(|h| h.state == "quarantined").count() as u64,
    );
    let suppressed = s.notifier.view().await.map_or(0, |v| v.suppressed);
    gauge(
        "buildmesh_mails_suppressed_total",
        "Transitions kept from the list because no other host reproduced the red.",
        suppressed,
    );
    text.push_str("# HELP buildmesh_refused_total Messages refused, by reason.\n# TYPE buildmesh_refused_total counter\n");
    for (reason, n) in &m.refused {
        text.push_str(&format!(
            "buildmesh_refused_total{{reason=\"{reason}\"}} {n}\n"
        ));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

/// How far a signed request's clock may be from this node's.
const MAX_REQUEST_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// Where a record stands: its author and its seq in the author's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordAt {
    /// The author.
    pub author: NodeId,
    /// Its seq.
    pub seq: u64,
}

impl From<&buildmesh_protocol::record::Record> for RecordAt {
    fn from(r: &buildmesh_protocol::record::Record) -> Self {
        RecordAt {
            author: r.envelope.author,
            seq: r.envelope.seq,
        }
    }
}

/// The answer to `POST /api/v1/publish`. Fields in the order the JSON always had (sorted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Published {
    /// The document's id.
    pub id: buildmesh_protocol::Hash,
    /// Its kind.
    pub published: buildmesh_protocol::docs::DocKind,
    /// The record that carries it.
    pub record: RecordAt,
}

/// The answer to `POST /api/v1/submit`: announced now (`record`), or an announcement that
/// counts was already held (`already`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Announced {
    /// The announcement already held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub already: Option<RecordAt>,
    /// Whether this request announced it.
    pub announced: bool,
    /// The announcement made now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordAt>,
}

/// One row of `GET /api/v1/notifications`: a mail a notifier recorded as sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The notifier that sent it.
    pub author: NodeId,
    /// Branch (for a worker's alert, its owner).
    pub branch: String,
    /// Builder (for a worker's alert, `worker NAME`).
    pub builder: String,
    /// Its Message-ID.
    pub message_id: String,
    /// The commit (for a worker's alert, the worker and its log head or quarantine).
    pub sha: String,
    /// The notifier's term when it sent it.
    pub term: u64,
    /// When it was recorded.
    pub time: Timestamp,
    /// Recipients.
    pub to: Vec<String>,
    /// The alert's identity.
    pub transition: buildmesh_protocol::Hash,
}

pub use crate::readmodel::{InProgress, StatusRow};

/// Reads the read model off the async workers (sled may touch the disk); a failure comes with
/// the status it answers (500 for the store, 503 when the read could not run).
pub(crate) async fn read_views<T: Send + 'static>(
    s: &ApiState,
    f: impl FnOnce(&ReadModel) -> Result<T, buildmesh_store::StoreError> + Send + 'static,
) -> Result<T, (StatusCode, String)> {
    let views = s.claimer.views().clone();
    match tokio::task::spawn_blocking(move || f(&views)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

async fn read<T: Send + 'static>(
    s: &ApiState,
    f: impl FnOnce(&ReadModel) -> Result<T, buildmesh_store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    read_views(s, f).await.map_err(|(code, e)| error(code, e))
}

fn json_bytes(body: Vec<u8>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn status(State(s): State<ApiState>) -> Response {
    match read(&s, |v| v.status_json()).await {
        Ok(rows) => json_bytes(rows),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct BuildsQuery {
    commit: Option<String>,
    builder: Option<String>,
    branch: Option<String>,
    limit: Option<usize>,
    // Absent: ordinary builds and rebuilds (a red's confirmation is in its `confirmation`);
    // `all`, or `confirm` / `revalidate` / `rebuild` / `probe` for those builds.
    purpose: Option<String>,
}

fn matches(b: &BuildView, q: &BuildsQuery) -> bool {
    let purpose = matches!(
        (&b.purpose, q.purpose.as_deref()),
        (_, Some("all"))
            | (
                Purpose::Build | Purpose::Rebuild { .. },
                None | Some("build")
            )
            | (Purpose::Rebuild { .. }, Some("rebuild"))
            | (Purpose::Confirm { .. }, Some("confirm"))
            | (Purpose::Revalidate { .. }, Some("revalidate"))
            | (Purpose::Probe { .. }, Some("probe"))
    );
    purpose
        && q.commit
            .as_deref()
            .is_none_or(|c| !c.is_empty() && b.sha.starts_with(c))
        && q.builder.as_deref().is_none_or(|x| {
            b.builder == x || buildmesh_protocol::builders::safe_id(&b.builder) == x
        })
        && q.branch.as_deref().is_none_or(|x| b.branch == x)
}

async fn builds(State(s): State<ApiState>, Query(mut q): Query<BuildsQuery>) -> Response {
    if q.commit.as_deref() == Some("") {
        return Json(Vec::<BuildView>::new()).into_response();
    }
    // The builder as named: a safe id stands for the builder it names.
    if let Some(x) = &q.builder
        && let Ok(Some(config)) = s.replica.config().await
        && let Some(b) = config
            .builders
            .iter()
            .find(|b| b.name != *x && buildmesh_protocol::builders::safe_id(&b.name) == *x)
    {
        q.builder = Some(b.name.clone());
    }
    let limit = q.limit.unwrap_or(500);
    let kind = match q.purpose.as_deref() {
        None | Some("build" | "rebuild") => Some(Some(Kind::Build)),
        Some("confirm") => Some(Some(Kind::Confirm)),
        Some("revalidate") => Some(Some(Kind::Revalidate)),
        Some("probe") => Some(Some(Kind::Probe)),
        Some("all") => Some(None),
        Some(_) => None,
    };
    let Some(kind) = kind else {
        return Json(Vec::<BuildView>::new()).into_response();
    };
    // Rebuilds are listed with the builds: asking for them alone filters the listing.
    let whole = q.purpose.as_deref() != Some("rebuild");
    let found = read(&s, move |v| {
        let listing = match (&q.commit, &q.builder, &q.branch) {
            // The listing is the query: the stored JSON as it is.
            (None, Some(b), Some(br)) if whole => {
                return v.builds_json(Listing::Branch(b, br), kind, limit);
            }
            (None, Some(b), None) if whole => {
                return v.builds_json(Listing::Builder(b), kind, limit);
            }
            (None, None, None) if whole => return v.builds_json(Listing::All, kind, limit),
            (Some(c), _, _) => Listing::Commit(c),
            (None, Some(b), Some(br)) => Listing::Branch(b, br),
            (None, Some(b), None) => Listing::Builder(b),
            (None, None, _) => Listing::All,
        };
        let out = v.builds(listing, |b| matches(b, &q), limit)?;
        Ok(serde_json::to_vec(&out).unwrap_or_default())
    })
    .await;
    match found {
        Ok(out) => json_bytes(out),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct LogQuery {
    step: Option<String>,
}

async fn log(
    State(s): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let attempt = id.rsplit_once('-').and_then(|(_, a)| a.parse::<u32>().ok());
    let wanted = id.clone();
    let build = match read(&s, move |v| v.find(&wanted)).await {
        Ok(Found::One(b)) => b,
        Ok(Found::None) => return error(StatusCode::NOT_FOUND, format!("no build {id}")),
        Ok(Found::Ambiguous) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{id} names more than one build"),
            );
        }
        Err(r) => return r,
    };
    if attempt.is_some_and(|a| a != build.attempt) {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "build {id}: attempt {} is the one with a result",
                build.attempt
            ),
        );
    }
    if build.steps.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            format!("build {} has no result yet ({})", build.id, build.result),
        );
    }
    let steps: Vec<_> = match &q.step {
        Some(name) => build.steps.iter().filter(|st| &st.name == name).collect(),
        None => build.steps.iter().collect(),
    };
    if steps.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            format!("build {} has no step {:?}", build.id, q.step),
        );
    }
    let mut text = Vec::new();
    for st in steps {
        if q.step.is_none() {
            text.extend_from_slice(
                format!("=== step {} ({}) ===\n", st.name, st.result).as_bytes(),
            );
        }
        let Some(h) = st.log else {
            continue;
        };
        if let Ok(Some(until)) = s.store.kept_until(&h)
            && until < Timestamp::now()
        {
            return error(
                StatusCode::GONE,
                format!(
                    "the log of step {} of build {} expired on {} (the builder's keep_logs / keep_passing_logs)",
                    st.name,
                    build.id,
                    humantime::format_rfc3339_seconds(std::time::SystemTime::from(until))
                ),
            );
        }
        match s.replica.blob(h, build.worker).await {
            Ok(Some(bytes)) => text.extend_from_slice(&bytes),
            Ok(None) => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "the log of step {} ({}) is on no reachable node",
                        st.name,
                        h.short()
                    ),
                );
            }
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

// A signed request from an HTTP body: it verifies and is dated near this node's clock.
fn signed_request(
    body: &[u8],
) -> Result<
    (
        buildmesh_protocol::wire::SignedRequest,
        buildmesh_protocol::wire::ApiRequest,
    ),
    Box<Response>,
> {
    use buildmesh_protocol::wire::SignedRequest;
    let (signed, req) = SignedRequest::from_bytes(body)
        .map_err(|e| e.to_string())
        .and_then(|r| r.verify().map(|v| (r, v)).map_err(|e| e.to_string()))
        .map_err(|e| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("not a signed request: {e}"),
            ))
        })?;
    let now = buildmesh_protocol::Timestamp::now();
    if req.time.since(now) > MAX_REQUEST_SKEW || now.since(req.time) > MAX_REQUEST_SKEW {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!(
                "request dated {}, more than 5 minutes from this node's clock",
                req.time
            ),
        )));
    }
    Ok((signed, req))
}

async fn submit(State(s): State<ApiState>, body: Bytes) -> Response {
    use buildmesh_protocol::wire::ApiAction;
    let (signed, req) = match signed_request(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match s.replica.may_announce(req.key).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            return error(
                StatusCode::FORBIDDEN,
                format!("{} may not submit: {why}", req.key),
            );
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
    let ApiAction::Submit { repo, branch, sha } = req.action else {
        return error(
            StatusCode::BAD_REQUEST,
            "not a submit request (rebuild and cancel have endpoints of their own)",
        );
    };
    if repo.trim().is_empty() || branch.trim().is_empty() || sha.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "repo, branch and sha must not be empty",
        );
    }
    announce(
        &s,
        CommitSeen {
            repo,
            branch,
            sha,
            source: buildmesh_protocol::record::ChangeSource::Submit,
            requested_by: Some(req.key),
            subject: None,
            // The request travels inside the record: every node checks the caller's role.
            request: Some(signed),
        },
    )
    .await
}

/// The answer to `POST /api/v1/rebuild`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rebuilt {
    /// The rebuild record.
    pub record: RecordAt,
    /// Repository.
    pub repo: String,
    /// Branch.
    pub branch: String,
    /// The full commit id.
    pub sha: String,
    /// The new builds, one per builder: what `buildmesh log` and `buildmesh cancel` take.
    pub builds: Vec<RebuiltBuild>,
}

/// One build a rebuild made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RebuiltBuild {
    /// Builder.
    pub builder: String,
    /// The build id.
    pub build: String,
}

async fn rebuild(State(s): State<ApiState>, body: Bytes) -> Response {
    use buildmesh_protocol::record::{Body, Rebuild};
    use buildmesh_protocol::wire::{ApiAction, MIN_SHA_PREFIX};
    let (signed, req) = match signed_request(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let ApiAction::Rebuild {
        sha,
        branch,
        builder,
    } = req.action.clone()
    else {
        return error(StatusCode::BAD_REQUEST, "not a rebuild request");
    };
    match s.replica.may_announce(req.key).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            return error(
                StatusCode::FORBIDDEN,
                format!("{} may not rebuild: {why}", req.key),
            );
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
    if sha.len() < MIN_SHA_PREFIX || sha.len() > 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("a commit is named by {MIN_SHA_PREFIX} to 64 hex digits, not {sha:?}"),
        );
    }
    let config = match s.replica.config().await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return error(StatusCode::CONFLICT, "no builder configuration is in force");
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    if let Some(name) = &builder {
        match config.find(name) {
            Some(b) if b.name == *name => {}
            Some(b) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("name the builder as written: {:?}", b.name),
                );
            }
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no builder is named {name:?} in the configuration in force"),
                );
            }
        }
    }
    // The commits this names: those with an ordinary build, on the branch asked for.
    let (prefix, want_branch) = (sha.to_ascii_lowercase(), branch.clone());
    let commits = match read(&s, move |v| {
        let builds = v.builds(
            Listing::Commit(&prefix),
            |b| b.purpose.is_ordinary() && want_branch.as_ref().is_none_or(|w| *w == b.branch),
            10_000,
        )?;
        Ok(builds
            .into_iter()
            .map(|b| (b.repo, b.branch, b.sha))
            .collect::<std::collections::BTreeSet<_>>())
    })
    .await
    {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (repo, branch, full) = match commits.len() {
        0 => {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "no build of a commit {sha}… is known here (announce it with `buildmesh submit`)"
                ),
            );
        }
        1 => commits.into_iter().next().expect("one"),
        _ => {
            let on: Vec<String> = commits
                .iter()
                .map(|(_, b, c)| format!("{b} ({})", &c[..c.len().min(12)]))
                .collect();
            return error(
                StatusCode::CONFLICT,
                format!(
                    "{sha} names builds on several branches or commits: {}; name one with --branch or a longer sha",
                    on.join(", ")
                ),
            );
        }
    };
    let r = Rebuild {
        repo: repo.clone(),
        branch: branch.clone(),
        sha: full.clone(),
        builders: builder.into_iter().collect(),
        request: signed,
    };
    let specs = buildmesh_protocol::jobs::rebuild(&config, &r, req.time);
    if specs.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            format!("no builder in force builds {repo} {branch}"),
        );
    }
    match s.replica.author(Body::Rebuild(r)).await {
        Ok(record) => Json(Rebuilt {
            record: RecordAt::from(&record),
            repo,
            branch,
            sha: full,
            builds: specs
                .iter()
                .map(|j| RebuiltBuild {
                    builder: j.key.builder.clone(),
                    build: crate::readmodel::build_id(&j.id, 1),
                })
                .collect(),
        })
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The answer to `POST /api/v1/bisect`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BisectStarted {
    /// The search's id (`GET /api/v1/bisections/{id}`).
    pub id: buildmesh_protocol::Hash,
    /// Commits in its range, both ends included.
    pub commits: usize,
}

async fn bisect(State(s): State<ApiState>, body: Bytes) -> Response {
    use buildmesh_protocol::wire::ApiAction;
    let (signed, req) = match signed_request(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let ApiAction::Bisect {
        builder,
        branch,
        good,
        bad,
    } = req.action.clone()
    else {
        return error(StatusCode::BAD_REQUEST, "not a bisect request");
    };
    match s.replica.may_announce(req.key).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            return error(
                StatusCode::FORBIDDEN,
                format!("{} may not start a search: {why}", req.key),
            );
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
    let min = buildmesh_protocol::wire::MIN_SHA_PREFIX;
    for sha in [&good, &bad] {
        if sha.len() < min || sha.len() > 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("a commit is named by {min} to 64 hex digits, not {sha:?}"),
            );
        }
    }
    let ask = crate::bisector::Ask {
        builder,
        branch,
        good,
        bad,
        request: signed,
    };
    match s.bisector.start(ask).await {
        Ok((id, commits)) => Json(BisectStarted { id, commits }).into_response(),
        Err(crate::bisector::StartError::Node(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

async fn bisections(State(s): State<ApiState>) -> Response {
    match s.bisector.list().await {
        Ok(list) => Json(list).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn bisection(
    State(s): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let id = id.to_ascii_lowercase();
    match s.bisector.list().await {
        Ok(list) => {
            let mut found = list
                .into_iter()
                .filter(|b| !id.is_empty() && b.id.to_string().starts_with(&id));
            match (found.next(), found.next()) {
                (Some(b), None) => Json(b).into_response(),
                (None, _) => error(StatusCode::NOT_FOUND, format!("no search {id}")),
                (Some(_), Some(_)) => error(
                    StatusCode::CONFLICT,
                    format!("{id} names more than one search"),
                ),
            }
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The answer to `POST /api/v1/cancel`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cancelled {
    /// The cancel record.
    pub record: RecordAt,
    /// The build as it stood when the cancel was written.
    pub build: String,
    /// Its state then: pending or running.
    pub was: buildmesh_protocol::record::BuildState,
    /// Its builder.
    pub builder: String,
    /// Its commit.
    pub sha: String,
}

async fn cancel(State(s): State<ApiState>, body: Bytes) -> Response {
    use buildmesh_protocol::record::{Body, Cancel};
    use buildmesh_protocol::wire::ApiAction;
    let (signed, req) = match signed_request(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let ApiAction::Cancel { build } = req.action.clone() else {
        return error(StatusCode::BAD_REQUEST, "not a cancel request");
    };
    let id = build.clone();
    let view = match read(&s, move |v| v.find(&id)).await {
        Ok(Found::One(b)) => b,
        Ok(Found::None) => return error(StatusCode::NOT_FOUND, format!("no build {build}")),
        Ok(Found::Ambiguous) => {
            return error(
                StatusCode::CONFLICT,
                format!("{build} names more than one build; give more of its id"),
            );
        }
        Err(r) => return r,
    };
    if !req.action.asks_cancel(&view.job) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "name the build by at least {} characters of its id",
                buildmesh_protocol::wire::MIN_SHA_PREFIX
            ),
        );
    }
    match s.claimer.may_cancel(view.job, req.key, req.time).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            let code = match why {
                crate::claimer::CancelRefused::NotEntitled(_) => StatusCode::FORBIDDEN,
                crate::claimer::CancelRefused::Ended(_) => StatusCode::CONFLICT,
            };
            return error(code, format!("cannot cancel {}: {why}", view.id));
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
    let body = Body::Cancel(Cancel {
        job: view.job,
        request: signed,
    });
    match s.replica.author(body).await {
        Ok(record) => Json(Cancelled {
            record: RecordAt::from(&record),
            build: view.id,
            was: view.result,
            builder: view.builder,
            sha: view.sha,
        })
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

// Whether an announcement already held counts: one its author was not entitled to (a rogue
// key's, kept in its chain) must not stop the entitled one from being made.
async fn counts(s: &ApiState, seen: &buildmesh_store::RecordRef) -> bool {
    use buildmesh_protocol::record::Body;
    let Ok(Some(record)) = s.store.record(&seen.author, seen.seq) else {
        return false;
    };
    let Ok(Body::CommitSeen(c)) = record.body() else {
        return false;
    };
    if matches!(s.replica.may_announce(seen.author).await, Ok(Ok(()))) {
        return true;
    }
    let Some(req) = c.request.as_ref().and_then(|r| r.verify().ok()) else {
        return false;
    };
    let asked = matches!(&req.action, buildmesh_protocol::wire::ApiAction::Submit { repo, branch, sha }
        if *repo == c.repo && *branch == c.branch && *sha == c.sha);
    asked && matches!(s.replica.may_announce(req.key).await, Ok(Ok(())))
}

async fn announce(s: &ApiState, c: CommitSeen) -> Response {
    use buildmesh_protocol::record::{Body, MAX_REF_CHARS};
    // Names from outside are bounded before anything is signed: a record its peers would refuse
    // would stall every later record of this node.
    if c.repo.chars().count() > MAX_REF_CHARS
        || c.branch.chars().count() > MAX_REF_CHARS
        || c.sha.len() > 64
        || !c.sha.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "refusing to announce: repository and branch names are limited to {MAX_REF_CHARS} characters, a commit id to 64 hex digits"
            ),
        );
    }
    if let Ok(Some(seen)) = s.store.commit_seen(&c.repo, &c.branch, &c.sha)
        && counts(s, &seen).await
    {
        return Json(Announced {
            already: Some(RecordAt {
                author: seen.author,
                seq: seen.seq,
            }),
            announced: false,
            record: None,
        })
        .into_response();
    }
    let body = Body::CommitSeen(c);
    match s.replica.author(body).await {
        Ok(r) => Json(Announced {
            already: None,
            announced: true,
            record: Some(RecordAt::from(&r)),
        })
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn webhook(
    State(s): State<ApiState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    use crate::sources::webhook::{WebhookError, parse_push, url_matches};
    let Some(secret) = s.webhook_secret.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "this node has no webhook secret configured",
        );
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let push = match parse_push(header, &body, &secret) {
        Ok(Some(p)) => p,
        Ok(None) => return Json(json!({"announced": []})).into_response(),
        Err(e @ (WebhookError::BadSignature | WebhookError::MissingSignature)) => {
            tracing::warn!(error = %e, "webhook refused");
            return error(StatusCode::UNAUTHORIZED, e);
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    // The node authors the announcement itself: one without the announcer role would count
    // nowhere, so the forge hears it now instead of the commit vanishing.
    match s.replica.may_announce(s.me).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "this node may not announce commits ({why}); point the webhook at an announcer node"
                ),
            );
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
    let config = match s.replica.config().await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no builder configuration yet",
            );
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let repos: std::collections::BTreeSet<String> = config
        .builders
        .iter()
        .filter(|b| url_matches(&b.repo, &push) && b.wants_branch(&push.branch))
        .map(|b| b.repo.clone())
        .collect();
    let mut out = Vec::new();
    for repo in repos {
        let r = announce(
            &s,
            CommitSeen {
                repo: repo.clone(),
                branch: push.branch.clone(),
                sha: push.sha.clone(),
                source: buildmesh_protocol::record::ChangeSource::Webhook,
                requested_by: None,
                subject: push.subject.as_deref().map(CommitSeen::subject_of),
                request: None,
            },
        )
        .await;
        if !r.status().is_success() {
            return r;
        }
        out.push(repo);
    }
    Json(json!({"announced": out, "branch": push.branch, "sha": push.sha})).into_response()
}

async fn notifier(State(s): State<ApiState>) -> Response {
    match s.notifier.view().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn notifications(State(s): State<ApiState>) -> Response {
    use buildmesh_protocol::record::Body;
    // Only a notifier's notice counts (anyone else's is kept in its chain, not counted).
    let notifiers: std::collections::BTreeSet<NodeId> = match s.replica.nodes().await {
        Ok(nodes) => nodes
            .into_iter()
            .filter(|n| n.roles.contains(&buildmesh_protocol::docs::Role::Notifier))
            .map(|n| n.id)
            .collect(),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let mut out = Vec::new();
    let kind = buildmesh_protocol::record::RecordKind::NotificationSent;
    for r in s.store.records_of_kind(&kind) {
        let r = match r {
            Ok(r) => r,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        };
        if let Ok(Body::NotificationSent(n)) = r.body()
            && notifiers.contains(&r.author_id())
        {
            out.push(Notification {
                author: r.envelope.author,
                branch: n.branch,
                builder: n.builder,
                message_id: n.message_id,
                sha: n.sha,
                term: n.term,
                time: r.envelope.time,
                to: n.to,
                transition: n.transition,
            });
        }
    }
    Json(out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildmesh_protocol::record::BuildState;

    // The status rows used to be built as JSON objects (keys in sorted order); the typed rows
    // must give the same bytes.
    #[test]
    fn a_status_row_is_the_json_it_always_was() {
        let worker = buildmesh_protocol::SecretKey::from_seed([3; 32]).id();
        let row = StatusRow {
            branch: "main".into(),
            build: Some("0123456789abcdef-1".into()),
            builder: "linux".into(),
            finished: Some(Timestamp(1_700_000_000_000)),
            in_progress: vec![InProgress {
                build: "fedcba9876543210-2".into(),
                result: BuildState::Running,
                sha: "b".repeat(40),
                worker: Some(worker),
            }],
            result: BuildState::Failure,
            sha: Some("a".repeat(40)),
            worker: Some(worker),
        };
        let old = json!({
            "builder": "linux", "branch": "main", "result": "failure", "sha": "a".repeat(40),
            "build": "0123456789abcdef-1", "worker": worker, "finished": Timestamp(1_700_000_000_000),
            "in_progress": [json!({"sha": "b".repeat(40), "build": "fedcba9876543210-2", "result": "running", "worker": worker})],
        });
        assert_eq!(
            serde_json::to_string(&row).unwrap(),
            serde_json::to_string(&old).unwrap()
        );
        let pending = StatusRow {
            build: None,
            finished: None,
            worker: None,
            in_progress: vec![],
            result: BuildState::Pending,
            ..row
        };
        let old = json!({
            "builder": "linux", "branch": "main", "result": "pending", "sha": "a".repeat(40),
            "build": null, "worker": null, "finished": null, "in_progress": [],
        });
        assert_eq!(
            serde_json::to_string(&pending).unwrap(),
            serde_json::to_string(&old).unwrap()
        );
    }

    // Publish, submit and notifications answers were JSON objects too: the same bytes, and
    // what the CLI reads back.
    #[test]
    fn the_write_answers_and_notifications_are_the_json_they_always_were() {
        fn same<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
            typed: T,
            old: serde_json::Value,
        ) {
            let bytes = serde_json::to_string(&typed).unwrap();
            assert_eq!(bytes, serde_json::to_string(&old).unwrap());
            assert_eq!(serde_json::from_str::<T>(&bytes).unwrap(), typed);
        }
        let author = buildmesh_protocol::SecretKey::from_seed([4; 32]).id();
        let id = buildmesh_protocol::Hash::of(b"doc");
        let at = RecordAt { author, seq: 7 };
        same(
            Published {
                id,
                published: buildmesh_protocol::docs::DocKind::Revocation,
                record: at,
            },
            json!({"published": buildmesh_protocol::docs::DocKind::Revocation, "id": id,
                   "record": {"author": author, "seq": 7}}),
        );
        same(
            Announced {
                already: None,
                announced: true,
                record: Some(at),
            },
            json!({"announced": true, "record": {"author": author, "seq": 7}}),
        );
        same(
            Announced {
                already: Some(at),
                announced: false,
                record: None,
            },
            json!({"announced": false, "already": {"author": author, "seq": 7}}),
        );
        same(
            Notification {
                author,
                branch: "main".into(),
                builder: "linux".into(),
                message_id: "<k@buildmesh.invalid>".into(),
                sha: "a".repeat(40),
                term: 3,
                time: Timestamp(1_700_000_000_000),
                to: vec!["list@example.org".into()],
                transition: id,
            },
            json!({
                "transition": id, "builder": "linux", "branch": "main", "sha": "a".repeat(40),
                "message_id": "<k@buildmesh.invalid>", "to": ["list@example.org"], "term": 3,
                "author": author, "time": Timestamp(1_700_000_000_000),
            }),
        );
    }
}
