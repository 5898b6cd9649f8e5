//! The read model: what status, builds, logs, the notifier (and the console) read. One view
//! per build and one status row per (builder, branch), kept in the store's view trees
//! ([`buildmesh_store::views`]) and brought up to date by the claimer as records change a job.
//! A query reads what it shows, never a walk over every job: a builder's newest builds are one
//! prefix scan, the status one row per (builder, branch).
//!
//! Each changed view is also announced on [`ReadModel::subscribe`], for whoever follows the
//! builds live (the notifier, event streams).

use std::sync::Arc;

use buildmesh_protocol::record::{BuildState, Purpose, StepResult};
use buildmesh_protocol::{Hash, NodeId, Timestamp};
use buildmesh_store::{Listed, Listing, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// One build (a job, in its current attempt) as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BuildView {
    /// `<first 16 hex digits of the job id>-<attempt>`: what `buildmesh log` takes.
    pub id: String,
    /// The full job id.
    pub job: Hash,
    /// Builder.
    pub builder: String,
    /// Repository.
    pub repo: String,
    /// Branch.
    pub branch: String,
    /// Commit.
    pub sha: String,
    /// The worker that runs or ran it (node id).
    pub worker: Option<NodeId>,
    /// The attempt shown.
    pub attempt: u32,
    /// pending, running, success, warnings, failure, flaky, exception, cancelled, skipped.
    pub result: BuildState,
    /// When the build started (claim time for a running build).
    pub started: Option<Timestamp>,
    /// When it finished.
    pub finished: Option<Timestamp>,
    /// The steps that ran, as the worker's signed result names them.
    pub steps: Vec<StepResult>,
    /// When the commit was first announced.
    pub announced: Timestamp,
    /// Every attempt's result, oldest first (attempt, worker, result).
    pub attempts: Vec<AttemptView>,
    /// Why the job exists: left out for an ordinary build; `confirm` (reproducing another
    /// build's red), `revalidate` (a quarantined worker earning its way out) or `rebuild` (a
    /// caller's `buildmesh rebuild`: `announced` is then when it was asked for).
    #[serde(default, skip_serializing_if = "Purpose::is_build")]
    pub purpose: Purpose,
    /// A red's confirmation on another host, once one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmation: Option<ConfirmationView>,
}

/// The confirmation of a red: the other build and how it ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConfirmationView {
    /// The confirmation build's id (what `buildmesh log` takes).
    pub build: String,
    /// Who built it (none while pending).
    pub worker: Option<NodeId>,
    /// Its state: pending, running, failure (reproduced), or the verdict that did not
    /// reproduce the red.
    pub result: BuildState,
    /// Whether it ran on the same machine as the red (no other host was available).
    pub same_host: bool,
}

/// One claimed attempt and how it ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AttemptView {
    /// The attempt.
    pub attempt: u32,
    /// The worker that claimed it.
    pub worker: NodeId,
    /// What it reported; `running` while it runs, `lost` if its worker went silent and a
    /// newer attempt took over without a result from it.
    pub result: String,
    /// Whether this claim won its attempt (crossed claims: only one does).
    pub won: bool,
}

/// One row of `GET /api/v1/status`: the latest verdict of a builder on a branch, with the
/// newer builds still pending or running. (Fields in the order the JSON has always had.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusRow {
    /// Branch.
    pub branch: String,
    /// The build shown (`null` while nothing has a verdict).
    pub build: Option<String>,
    /// Builder.
    pub builder: String,
    /// When it finished.
    pub finished: Option<Timestamp>,
    /// Newer builds not yet settled, newest first.
    pub in_progress: Vec<InProgress>,
    /// Its state: the verdict, or the newest build's state while there is none.
    pub result: BuildState,
    /// Its commit.
    pub sha: Option<String>,
    /// Who built it.
    pub worker: Option<NodeId>,
}

/// A build newer than a status row's verdict, still pending or running.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InProgress {
    /// The build id.
    pub build: String,
    /// Pending or running.
    pub result: BuildState,
    /// Its commit.
    pub sha: String,
    /// Who runs it.
    pub worker: Option<NodeId>,
}

/// The few fields of a build that a grid of builds shows, read from its view without the rest
/// (steps, attempts): the console reads thousands of them.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Cell {
    /// The build id.
    pub id: String,
    /// Builder.
    pub builder: String,
    /// Branch.
    pub branch: String,
    /// Commit.
    pub sha: String,
    /// Its state.
    pub result: BuildState,
    /// When the commit was first announced.
    pub announced: Timestamp,
}

/// A build's id: the first 16 hex digits of its job id, `-`, its attempt.
pub fn build_id(job: &Hash, attempt: u32) -> String {
    format!("{}-{attempt}", &job.to_string()[..16])
}

// A build's summary in its builder's listings: what a cell shows that the listing's key does not
// (short names: one is kept per build in two listings).
#[derive(Serialize, Deserialize)]
struct Summary<'a> {
    r: BuildState,
    a: u32,
    #[serde(borrow)]
    s: &'a str,
    #[serde(borrow)]
    b: &'a str,
}

/// What a build is for, as the listings tag it: a query for one kind reads no other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// An ordinary build.
    Build = 0,
    /// A confirmation of another build's red.
    Confirm = 1,
    /// A quarantined worker's re-validation.
    Revalidate = 2,
    /// A culprit search's probe.
    Probe = 3,
}

fn kind_of(p: &Purpose) -> u8 {
    (match p {
        // A rebuild's result is the commit's result on its builder: listed with the builds.
        Purpose::Build | Purpose::Rebuild { .. } => Kind::Build,
        Purpose::Confirm { .. } => Kind::Confirm,
        Purpose::Revalidate { .. } => Kind::Revalidate,
        Purpose::Probe { .. } => Kind::Probe,
    }) as u8
}

/// What a build id (`<hex prefix of the job>[-<attempt>]`) names.
#[derive(Debug)]
pub enum Found {
    /// One build.
    One(Box<BuildView>),
    /// No build.
    None,
    /// More than one build starts so.
    Ambiguous,
}

/// How many of a (builder, branch)'s newest builds a status row looks through for its verdict:
/// a branch with more unsettled builds than this shows the newest of them.
const STATUS_DEPTH: usize = 1_000;

/// The layout of the stored views: a node that finds another one rebuilds them.
const VIEWS_VERSION: &[u8] = b"3";
/// Set while a claimer keeps the views; cleared when it stopped in order. Found set at start,
/// the views may lag the records (a killed process): every one is rebuilt.
const VIEWS_OPEN_KEY: &str = "views_open";

/// The read model of one node.
#[derive(Debug)]
pub struct ReadModel {
    store: Arc<Store>,
    changes: broadcast::Sender<Arc<BuildView>>,
}

/// Whether the stored views can be trusted as they are, found when the claimer takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Written by this layout and left in order: only views whose job changed are written.
    InOrder,
    /// Left by a process that did not stop in order: every view the claimer looks at is
    /// written again.
    Stale,
    /// Written by another layout, and cleared: every view is written again, from the whole
    /// history.
    Cleared,
}

impl ReadModel {
    /// The read model over `store`.
    pub fn new(store: Arc<Store>) -> Self {
        ReadModel {
            store,
            changes: broadcast::channel(1024).0,
        }
    }

    /// Every view that changes from now on (a receiver that lags misses some: it should read
    /// the views again).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<BuildView>> {
        self.changes.subscribe()
    }

    /// Taken by the claimer before it writes: says whether the stored views are in order, and
    /// marks them open until [`ReadModel::close`].
    pub(crate) fn open(&self) -> Result<Stored, StoreError> {
        let version = self.store.views_layout()?;
        let open = self.store.meta_get(VIEWS_OPEN_KEY)?;
        let stored = if version.as_deref() != Some(VIEWS_VERSION) {
            self.store.views_clear()?;
            self.store.set_views_layout(VIEWS_VERSION)?;
            Stored::Cleared
        } else if open.is_some() {
            Stored::Stale
        } else {
            Stored::InOrder
        };
        self.store.meta_put(VIEWS_OPEN_KEY, b"1")?;
        Ok(stored)
    }

    /// The claimer stopped with every view written.
    pub(crate) fn close(&self) -> Result<(), StoreError> {
        self.store.meta_remove(VIEWS_OPEN_KEY)
    }

    /// Writes builds' views, then the status rows of their (builder, branch), each once;
    /// returns how many views changed.
    pub(crate) fn write(&self, views: Vec<BuildView>) -> Result<usize, StoreError> {
        let mut rows = std::collections::BTreeSet::new();
        let mut changed = 0;
        for view in views {
            let bytes = encode("build view", &view)?;
            let summary = encode(
                "build summary",
                &Summary {
                    r: view.result,
                    a: view.attempt,
                    s: &view.sha,
                    b: &view.branch,
                },
            )?;
            let at = Listed {
                job: &view.job,
                order: view.announced.millis(),
                builder: &view.builder,
                branch: &view.branch,
                sha: &view.sha,
                kind: kind_of(&view.purpose),
                summary: &summary,
            };
            if !self.store.view_put(at, &bytes)? {
                continue;
            }
            changed += 1;
            if view.purpose.is_ordinary() {
                rows.insert((view.builder.clone(), view.branch.clone()));
            }
            let _ = self.changes.send(Arc::new(view));
        }
        for (builder, branch) in rows {
            self.refresh_status(&builder, &branch)?;
        }
        Ok(changed)
    }

    /// A build's view, stored as the claimer last wrote it.
    pub fn build(&self, job: &Hash) -> Result<Option<BuildView>, StoreError> {
        self.store
            .view(job)?
            .map(|b| decode(&job.to_string(), &b))
            .transpose()
    }

    /// The builds listed, newest announcement first, decoded as the caller reads them.
    pub fn newest<'a>(
        &'a self,
        listing: Listing<'a>,
    ) -> impl Iterator<Item = Result<BuildView, StoreError>> + 'a {
        self.store
            .views_newest(listing, None)
            .map(|item| item.and_then(|(job, bytes)| decode(&job.to_string(), &bytes)))
    }

    /// A builder's newest `limit` ordinary builds (on `branch`, or on any), as grid cells: read
    /// from the summaries in its listing, without a view.
    pub fn cells(
        &self,
        builder: &str,
        branch: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Cell>, StoreError> {
        let mut out = Vec::with_capacity(limit);
        for item in self
            .store
            .summaries_newest(builder, branch, Kind::Build as u8)
            .take(limit)
        {
            let (job, order, bytes) = item?;
            let s: Summary<'_> =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    tree: "views_by_builder",
                    key: job.to_string(),
                    reason: e.to_string(),
                })?;
            out.push(Cell {
                id: build_id(&job, s.a),
                builder: builder.to_string(),
                branch: s.b.to_string(),
                sha: s.s.to_string(),
                result: s.r,
                announced: Timestamp(order),
            });
        }
        Ok(out)
    }

    /// The newest `limit` builds listed whose purpose is of `kind` (any, when `None`), as the
    /// JSON array the API answers: the views are stored as that JSON, so nothing is decoded.
    pub fn builds_json(
        &self,
        listing: Listing<'_>,
        kind: Option<Kind>,
        limit: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let mut out = b"[".to_vec();
        for (i, item) in self
            .store
            .views_newest(listing, kind.map(|k| k as u8))
            .take(limit)
            .enumerate()
        {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&item?.1);
        }
        out.push(b']');
        Ok(out)
    }

    /// Every status row, by builder then branch, as the JSON array the API answers.
    pub fn status_json(&self) -> Result<Vec<u8>, StoreError> {
        let rows = self.store.status_rows()?;
        let mut out = Vec::with_capacity(2 + rows.iter().map(|r| r.len() + 1).sum::<usize>());
        out.push(b'[');
        for (i, r) in rows.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(r);
        }
        out.push(b']');
        Ok(out)
    }

    /// The builds listed, newest announcement first, that `keep` keeps, at most `limit`.
    pub fn builds(
        &self,
        listing: Listing<'_>,
        keep: impl Fn(&BuildView) -> bool,
        limit: usize,
    ) -> Result<Vec<BuildView>, StoreError> {
        let mut out = Vec::new();
        for view in self.newest(listing) {
            let view = view?;
            if keep(&view) {
                out.push(view);
                if out.len() >= limit && !matches!(listing, Listing::Commit(_)) {
                    break;
                }
            }
        }
        if matches!(listing, Listing::Commit(_)) {
            // Listed by sha: put them in the order the others come in.
            out.sort_by(|a, b| {
                b.announced
                    .cmp(&a.announced)
                    .then(a.builder.cmp(&b.builder))
            });
            out.truncate(limit);
        }
        Ok(out)
    }

    /// The subject of a commit, from its first announcement, when the announcement carried one.
    pub fn subject(
        &self,
        repo: &str,
        branch: &str,
        sha: &str,
    ) -> Result<Option<String>, StoreError> {
        let Some(at) = self.store.commit_seen(repo, branch, sha)? else {
            return Ok(None);
        };
        Ok(self
            .store
            .record(&at.author, at.seq)?
            .and_then(|r| match r.body() {
                Ok(buildmesh_protocol::record::Body::CommitSeen(c)) => c.subject,
                _ => None,
            }))
    }

    /// Every status row, by builder then branch.
    pub fn status(&self) -> Result<Vec<StatusRow>, StoreError> {
        self.store
            .status_rows()?
            .iter()
            .map(|b| decode("status row", b))
            .collect()
    }

    /// The build `id` names: `<hex prefix of its job id>`, optionally `-<attempt>` (the
    /// attempt is the caller's to check).
    pub fn find(&self, id: &str) -> Result<Found, StoreError> {
        let prefix = match id.rsplit_once('-') {
            Some((p, a)) if a.parse::<u32>().is_ok() => p,
            _ => id,
        };
        let prefix = prefix.to_ascii_lowercase();
        if prefix.is_empty() || !prefix.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Ok(Found::None);
        }
        // Whole bytes for the scan, the odd digit checked after.
        let whole = hex::decode(&prefix[..prefix.len() / 2 * 2]).unwrap_or_default();
        let mut found = Vec::new();
        for (job, bytes) in self.store.views_with_prefix(&whole, 4096)? {
            if job.to_string().starts_with(&prefix) {
                found.push(decode(&job.to_string(), &bytes)?);
                if found.len() > 1 {
                    return Ok(Found::Ambiguous);
                }
            }
        }
        Ok(found.pop().map_or(Found::None, |b| Found::One(Box::new(b))))
    }

    // The status row of (builder, branch): its newest verdict, with the newer builds still
    // pending or running beside it; while nothing has a verdict, the newest build's state.
    fn refresh_status(&self, builder: &str, branch: &str) -> Result<(), StoreError> {
        let mut in_progress = Vec::new();
        let mut row = None;
        for item in self
            .store
            .views_newest(Listing::Branch(builder, branch), Some(Kind::Build as u8))
            .take(STATUS_DEPTH)
        {
            let (job, bytes) = item?;
            let b: BuildView = decode(&job.to_string(), &bytes)?;
            if !b.purpose.is_ordinary() {
                continue;
            }
            if b.result.is_verdict() {
                row = Some(StatusRow {
                    branch: b.branch,
                    build: Some(b.id),
                    builder: b.builder,
                    finished: b.finished,
                    in_progress: std::mem::take(&mut in_progress),
                    result: b.result,
                    sha: Some(b.sha),
                    worker: b.worker,
                });
                break;
            } else if !b.result.is_settled() {
                in_progress.push(InProgress {
                    build: b.id,
                    result: b.result,
                    sha: b.sha,
                    worker: b.worker,
                });
            }
        }
        let row = match row {
            Some(r) => r,
            // Only skipped builds so far: no row.
            None if in_progress.is_empty() => return Ok(()),
            None => {
                let last = in_progress.last();
                StatusRow {
                    branch: branch.to_string(),
                    build: None,
                    builder: builder.to_string(),
                    finished: None,
                    result: last.map_or(BuildState::Pending, |p| p.result),
                    sha: last.map(|p| p.sha.clone()),
                    worker: None,
                    in_progress,
                }
            }
        };
        self.store
            .status_put(builder, branch, &encode("status row", &row)?)?;
        Ok(())
    }
}

// Views and rows are kept as the JSON the API answers with.
fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::WriteFailed {
        reason: format!("{what}: {e}"),
    })
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree: "views",
        key: what.to_string(),
        reason: e.to_string(),
    })
}
