//! The read-only HTTP JSON API every node serves (loopback by default), plus the write that
//! publishes a maintainer-signed document.
//!
//! - `GET /api/v1/nodes`: every admitted node (id, name, labels, roles, live, last_heard,
//!   revoked …).
//! - `GET /api/v1/health`: this node's id, peers, records, whether it caught up.
//! - `GET /api/v1/vv`: the version vector {author id -> highest contiguous seq}.
//! - `GET /api/v1/records?author=ID`: an author's records as JSON (hidden when the author's key
//!   was revoked as compromised).
//! - `POST /api/v1/publish`: a signed document (the file's bytes) to publish in this node's log.
//! - `GET /metrics`: Prometheus text.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use buildmesh_protocol::NodeId;
use buildmesh_protocol::docs::SignedDoc;
use buildmesh_store::Store;
use serde::Deserialize;
use serde_json::json;

use crate::replica::ReplicaClient;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub(crate) replica: ReplicaClient,
    pub(crate) store: Arc<Store>,
    pub(crate) me: NodeId,
}

/// The routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/health", get(health))
        .route("/api/v1/vv", get(vv))
        .route("/api/v1/records", get(records))
        .route("/api/v1/publish", post(publish))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn error(status: StatusCode, message: impl ToString) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

async fn nodes(State(s): State<ApiState>) -> Response {
    match s.replica.nodes().await {
        Ok(n) => Json(n).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn health(State(s): State<ApiState>) -> Response {
    match s.replica.metrics().await {
        Ok(m) => Json(json!({
            "id": s.me,
            "records": m.records,
            "peers": m.peers_admitted,
            "caught_up": m.caught_up,
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
        Ok(record) => Json(json!({
            "published": kind,
            "id": id,
            "record": { "author": record.envelope.author, "seq": record.envelope.seq },
        }))
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
